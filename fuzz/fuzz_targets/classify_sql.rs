//! Any query string through the SQL classifier: PostgreSQL's parser, then the walk over the
//! whole tree. Any input may be refused as unparsable; none may panic or hang, and every
//! statement reported must come with a reason and lie inside the input. The same input also
//! goes through the MySQL classifier in each `sql_mode` reading.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{Classifier, MySqlMode, classify_mysql};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    // libpg_query reads a C string: an interior NUL ends it, as it would for the server.
    if sql.contains('\0') {
        return;
    }
    for (ansi_quotes, no_backslash_escapes) in [(false, false), (true, false), (false, true)] {
        let mode = MySqlMode {
            ansi_quotes,
            no_backslash_escapes,
        };
        if let Ok(statements) = classify_mysql(sql, mode) {
            assert!(statements.iter().all(|s| !s.reason.is_empty()));
        }
    }
    if let Ok(statements) = Classifier::default().classify(sql) {
        for s in statements {
            assert!(!s.reason.is_empty());
            assert!(sql.contains(s.text.as_str()), "{:?} not in the input", s.text);
        }
    }
});
