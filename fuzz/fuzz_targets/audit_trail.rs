//! An audit trail file as `portcullis audit verify` and `audit show` read it: lines that may
//! have been edited by anyone. Each line goes through `parse_line`; the whole input through
//! `verify_records` (chain, checkpoints, sessions). Any input may be refused; none may panic
//! or hang. A line that parses must re-hash to the hash it claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_audit::chain::{parse_line, sha256};
use portcullis_audit::{Location, VerifyOptions, verify_records};

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    for line in &lines {
        if let Ok(parsed) = parse_line(line) {
            let body = &line[..line.len() - 75];
            assert_eq!(sha256(body), parsed.hash);
        }
    }
    let records = lines.iter().enumerate().map(|(i, l)| {
        (
            Location {
                file: "fuzz".into(),
                line: i as u64 + 1,
            },
            l.to_vec(),
        )
    });
    let _ = verify_records(records, &VerifyOptions::default());
});
