//! The verdict cache's key: a statement with its literals replaced, so that pgbench's
//! `... WHERE aid = 48213` and `... WHERE aid = 9051` share one classification.
//!
//! Two texts with the same key must classify the same. The key keeps everything verbatim
//! except non-empty single-quoted string literals and plain decimal numbers, whose values
//! never change a classification; anything the scanner is not sure about gives no key, and
//! the statement is classified without the cache:
//!
//! - a backslash anywhere (`E''` escapes, `standard_conforming_strings = off`, `U&` escapes),
//! - a dollar sign that is not a parameter (`$1`) or inside an identifier (dollar quoting),
//! - a number run into letters (`1e`, `0x1f`, `1from`), an unterminated quote or comment.
//!
//! The empty string `''` stays as it is (`COPY t FROM ''` is not `COPY t FROM '/etc/x'` to
//! the parse tree's reader).

/// The cache key of `sql`, or `None` when the text must be classified without the cache.
pub fn cache_key(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    // Start of the verbatim run not yet copied.
    let mut copied = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\\' => return None,
            b'\'' => {
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None | Some(b'\\') => return None,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                if i - start > 2 {
                    out.push_str(&sql[copied..start]);
                    out.push('?');
                    copied = i;
                }
            }
            b'"' => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                loop {
                    match (b.get(i), b.get(i + 1)) {
                        (None, _) => return None,
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => i += 1,
                    }
                }
            }
            b'$' => {
                // A parameter reference ($1) stays; anything else may be dollar quoting.
                i += 1;
                if !b.get(i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            b'0'..=b'9' => {
                let start = i;
                i = number_end(b, i)?;
                out.push_str(&sql[copied..start]);
                out.push('?');
                copied = i;
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i;
                i = number_end(b, i)?;
                out.push_str(&sql[copied..start]);
                out.push('?');
                copied = i;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                // An identifier or keyword, digits and dollars included.
                while b.get(i).is_some_and(|&c| {
                    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
                }) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

/// The end of a decimal number starting at `i` (`12`, `1.5`, `.5`, `1e-3`); `None` when
/// letters follow it.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: &mut usize| {
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
    };
    digits(&mut i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        digits(&mut i);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !b.get(i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        digits(&mut i);
    }
    if b.get(i).is_some_and(|&c| {
        c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 || c == b'.'
    }) {
        return None;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::cache_key;

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            cache_key("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")
        );
        assert_eq!(
            cache_key("select * from t where a = 'x''y' and b = 1.5e3 and c = $1").as_deref(),
            Some("select * from t where a = ? and b = ? and c = $1")
        );
        assert_eq!(
            cache_key("select t1.c2 from t1").as_deref(),
            Some("select t1.c2 from t1")
        );
        assert_eq!(
            cache_key("copy t from ''").as_deref(),
            Some("copy t from ''")
        );
        assert_eq!(
            cache_key("select 1 -- it's 2\n, \"a\"\"1\" /* '3' /* 4 */ */").as_deref(),
            Some("select ? -- it's 2\n, \"a\"\"1\" /* '3' /* 4 */ */")
        );
    }

    #[test]
    fn unsure_texts_get_no_key() {
        for sql in [
            r"select E'\''; delete from t; --'",
            "select $$ ' $$",
            "select $a$x$a$",
            "select 0x1f",
            "select 1from t",
            "select 1e",
            "select 'open",
            "select /* open",
            "select \"open",
        ] {
            assert_eq!(cache_key(sql), None, "{sql}");
        }
    }
}
