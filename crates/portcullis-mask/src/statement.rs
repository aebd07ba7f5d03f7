//! Masking statement text (for the audit trail and approval listings) without hiding what
//! runs: the detectors run on pieces of the statement that each lie inside one literal or
//! comment, or on one line of code, so a finding can never swallow a line break or a quote
//! that the server reads as the end of a literal. (`SELECT 1; -- -----BEGIN PRIVATE KEY-----`
//! then a new line with `DELETE …` masks the comment's line, and the DELETE stays visible.)
//!
//! Where a literal ends depends on the dialect (backslash escapes, dollar quotes, nested
//! comments, `#` comments): a PostgreSQL statement is lexed as PostgreSQL reads it (with
//! `standard_conforming_strings` on: the guard refuses a backslash when it is off); a MySQL
//! one both with and without `NO_BACKSLASH_ESCAPES`, and cut wherever either would end a
//! piece; anything else in all three ways.

use std::collections::BTreeMap;

use portcullis_core::Protocol;

use crate::mask::{Masked, Masker};

#[derive(Clone, Copy)]
struct Dialect {
    backslash: bool,
    dollar_quotes: bool,
    nested_comments: bool,
    hash_comments: bool,
}

const POSTGRES: Dialect = DIALECTS[0];

const DIALECTS: [Dialect; 3] = [
    // PostgreSQL (standard_conforming_strings on; E'…' escapes with backslashes).
    Dialect {
        backslash: false,
        dollar_quotes: true,
        nested_comments: true,
        hash_comments: false,
    },
    // MySQL / MariaDB.
    Dialect {
        backslash: true,
        dollar_quotes: false,
        nested_comments: false,
        hash_comments: true,
    },
    // MySQL / MariaDB with NO_BACKSLASH_ESCAPES.
    Dialect {
        backslash: false,
        dollar_quotes: false,
        nested_comments: false,
        hash_comments: true,
    },
];

/// Where `text` must be cut in `dialect`: the start and end of every literal and comment,
/// and every line end outside them.
fn cuts(text: &[u8], d: Dialect, out: &mut Vec<usize>) {
    let n = text.len();
    let mut i = 0;
    while i < n {
        let b = text[i];
        let start = i;
        match b {
            b'\n' => {
                out.push(i + 1);
                i += 1;
                continue;
            }
            b'\'' | b'"' | b'`' => {
                let escapes = d.backslash
                    || (b == b'\''
                        && i > 0
                        && matches!(text[i - 1], b'e' | b'E')
                        && (i < 2 || !is_ident(text[i - 2])));
                i += 1;
                while i < n {
                    if escapes && text[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if text[i] == b {
                        if text.get(i + 1) == Some(&b) {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            }
            b'-' if text.get(i + 1) == Some(&b'-') => {
                while i < n && text[i] != b'\n' {
                    i += 1;
                }
            }
            b'#' if d.hash_comments => {
                while i < n && text[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if text.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < n && depth > 0 {
                    if text[i] == b'*' && text.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else if d.nested_comments && text[i] == b'/' && text.get(i + 1) == Some(&b'*')
                    {
                        depth += 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' if d.dollar_quotes && (i == 0 || !is_ident(text[i - 1])) => {
                // `$tag$ … $tag$` (the tag may be empty; `$1` is a parameter).
                let tag_end = text[i + 1..]
                    .iter()
                    .position(|&c| !is_ident(c) || c == b'$')
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e)
                        if text[e] == b'$'
                            && text.get(i + 1).is_none_or(|c| !c.is_ascii_digit()) =>
                    {
                        let tag = &text[i..=e];
                        let body = e + 1;
                        i = match find(&text[body..], tag) {
                            Some(p) => body + p + tag.len(),
                            None => n,
                        };
                    }
                    _ => {
                        i += 1;
                        continue;
                    }
                }
            }
            _ => {
                i += 1;
                continue;
            }
        }
        out.push(start);
        out.push(i.min(n));
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `text` (one statement) masked piece by piece; `None` when nothing was found.
pub(crate) fn mask_statement(masker: &Masker, protocol: Protocol, text: &str) -> Option<String> {
    let (mut scratch, mut counts) = (Vec::new(), BTreeMap::new());
    let bytes = text.as_bytes();
    // Nothing anywhere: nothing in any piece (the common case, one scan).
    if masker.mask(bytes, &mut scratch, &mut counts) == Masked::Clean {
        return None;
    }
    let mut at = Vec::new();
    let dialects: &[Dialect] = match protocol {
        Protocol::Postgres => &[POSTGRES],
        Protocol::MySql => &DIALECTS[1..],
        _ => &DIALECTS,
    };
    for d in dialects {
        cuts(bytes, *d, &mut at);
    }
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    for w in at.windows(2) {
        let piece = &bytes[w[0]..w[1]];
        match masker.mask(piece, &mut scratch, &mut counts) {
            Masked::Clean => out.extend_from_slice(piece),
            Masked::Rewritten(new) => {
                changed = true;
                out.extend_from_slice(&new);
            }
            Masked::Null => {
                changed = true;
                out.extend_from_slice(b"[redacted]");
            }
        }
    }
    changed.then(|| String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::Strategy;
    use crate::scan::Detectors;

    fn masked_as(protocol: Protocol, text: &str) -> String {
        let m = Masker::new(Detectors::all(), Strategy::Redact);
        mask_statement(&m, protocol, text).unwrap_or_else(|| text.to_owned())
    }

    fn masked(text: &str) -> String {
        masked_as(Protocol::Http, text)
    }

    #[test]
    fn a_finding_never_swallows_the_next_line_of_code() {
        let sql = "SELECT 1; -- -----BEGIN PRIVATE KEY-----\nDELETE FROM t WHERE true";
        let out = masked(sql);
        assert!(out.contains("\nDELETE FROM t WHERE true"), "{out}");
        assert!(!out.contains("BEGIN PRIVATE KEY"), "{out}");
        // Split one token per line: every line is still there.
        let sql = "SELECT 1 /* -----BEGIN PRIVATE KEY----- */\nDROP\nTABLE\nt";
        let out = masked(sql);
        assert!(out.ends_with("\nDROP\nTABLE\nt"), "{out}");
    }

    #[test]
    fn a_key_inside_one_literal_is_masked_whole() {
        let sql = "INSERT INTO k VALUES ($$-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----$$)";
        let out = masked_as(Protocol::Postgres, sql);
        assert!(!out.contains("MIIEvQ"), "{out}");
        assert!(out.starts_with("INSERT INTO k VALUES ("), "{out}");
        assert!(out.ends_with(')'), "{out}");
    }

    #[test]
    fn literals_are_cut_where_any_dialect_ends_them() {
        // In PostgreSQL 'a\' is a whole string and `; DROP…` is code; in MySQL it is not.
        let sql = "SELECT 'a\\'; DROP TABLE t; -- jane@example.com'";
        let out = masked(sql);
        assert!(out.contains("; DROP TABLE t; -- "), "{out}");
        assert!(!out.contains("jane@example.com"), "{out}");
        assert_eq!(masked("SELECT 'bob@example.com'"), "SELECT '[email]'");
        assert_eq!(masked("SELECT 1"), "SELECT 1");
    }
}
