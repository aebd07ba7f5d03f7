//! What a MySQL client sends the gateway: packets (split or joined past 16 MiB, lying about
//! their length), each built into a command unit — COM_QUERY, prepared-statement executes
//! with their parameters decoded for the audit, everything else. Any input may be refused;
//! none may panic, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_mysql::fuzzing::client_bytes(data));
