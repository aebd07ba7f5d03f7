//! What a MySQL server sends the gateway: column definitions (with and without MariaDB's
//! extended metadata) and rows in the text and binary protocols, read as a masking layer
//! reads them. A row that reads must rebuild to the same values; none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_mysql::fuzzing::server_bytes(data));
