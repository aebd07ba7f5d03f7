//! Statement text as the server reads it in the session's client character set.
//!
//! MariaDB's lexer walks a statement in `character_set_client`: where a multi-byte character
//! starts (the character set's lead byte followed by one of its trail bytes), the two bytes
//! are one character — even when the second is `\` or `'` — and any other byte is one
//! character by itself. In GBK, `0xBF 0x5C` is one character, so `'\xBF\x5C'; DROP …` is a
//! string followed by a DROP, where a byte-wise (or UTF-8) reading sees an escaped quote. So
//! the gateway reads a statement the same way before it judges it: [`read_text`] splits the
//! bytes with the server's own lead/trail ranges (MySQL's `ismbchar` for each set), and turns
//! each character into its Unicode equivalent (through `encoding_rs`), or U+FFFD where it has
//! none. Every byte the server reads as ASCII stays that byte; nothing else becomes ASCII.
//! The judged text therefore has the server's structure (quotes, escapes, comments,
//! statement ends), whatever the character set.

use std::borrow::Cow;

use encoding_rs::{BIG5, Encoding, GBK, SHIFT_JIS, WINDOWS_1252};

/// How a character set splits bytes into characters.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// UTF-8 (`utf8mb3`, `utf8mb4`): an invalid sequence is one character per byte.
    Utf8,
    /// One byte, one character (`latin1`, `ascii`, `binary`), decoded with the encoding
    /// when given.
    Single(Option<&'static Encoding>),
    /// Two-byte characters: lead and trail ranges, and the encoding that decodes them.
    Double {
        lead: fn(u8) -> bool,
        trail: fn(u8) -> bool,
        encoding: &'static Encoding,
    },
}

fn gbk_lead(b: u8) -> bool {
    (0x81..=0xfe).contains(&b)
}
fn gbk_trail(b: u8) -> bool {
    (0x40..=0x7e).contains(&b) || (0x80..=0xfe).contains(&b)
}
fn sjis_lead(b: u8) -> bool {
    (0x81..=0x9f).contains(&b) || (0xe0..=0xfc).contains(&b)
}
fn sjis_trail(b: u8) -> bool {
    (0x40..=0x7e).contains(&b) || (0x80..=0xfc).contains(&b)
}
fn big5_lead(b: u8) -> bool {
    (0xa1..=0xf9).contains(&b)
}
fn big5_trail(b: u8) -> bool {
    (0x40..=0x7e).contains(&b) || (0xa1..=0xfe).contains(&b)
}

fn kind(charset: &str) -> Option<Kind> {
    Some(match charset.to_ascii_lowercase().as_str() {
        "" | "utf8" | "utf8mb3" | "utf8mb4" => Kind::Utf8,
        "latin1" => Kind::Single(Some(WINDOWS_1252)),
        "ascii" | "binary" => Kind::Single(None),
        "gbk" => Kind::Double {
            lead: gbk_lead,
            trail: gbk_trail,
            encoding: GBK,
        },
        "sjis" | "cp932" => Kind::Double {
            lead: sjis_lead,
            trail: sjis_trail,
            encoding: SHIFT_JIS,
        },
        "big5" => Kind::Double {
            lead: big5_lead,
            trail: big5_trail,
            encoding: BIG5,
        },
        _ => return None,
    })
}

/// Whether [`read_text`] reads statements in `charset` as the server does.
pub fn reads(charset: &str) -> bool {
    kind(charset).is_some()
}

/// `bytes` as the server reads them in `charset`; `None` for a character set the gateway
/// does not read (its statements are then judged only when ASCII).
pub fn read_text<'a>(bytes: &'a [u8], charset: &str) -> Option<Cow<'a, str>> {
    if bytes.is_ascii() {
        // ASCII is ASCII in every client character set MariaDB accepts.
        return std::str::from_utf8(bytes).ok().map(Cow::Borrowed);
    }
    Some(match kind(charset)? {
        Kind::Utf8 => String::from_utf8_lossy(bytes),
        Kind::Single(encoding) => {
            let mut out = String::with_capacity(bytes.len());
            for &b in bytes {
                out.push(match (b.is_ascii(), encoding) {
                    (true, _) => char::from(b),
                    (false, Some(e)) => one(e, &[b]),
                    (false, None) => char::REPLACEMENT_CHARACTER,
                });
            }
            Cow::Owned(out)
        }
        Kind::Double {
            lead,
            trail,
            encoding,
        } => {
            let mut out = String::with_capacity(bytes.len() * 2);
            let mut i = 0;
            while i < bytes.len() {
                let b = bytes[i];
                if lead(b) && bytes.get(i + 1).copied().is_some_and(trail) {
                    out.push(one(encoding, &bytes[i..i + 2]));
                    i += 2;
                } else if b.is_ascii() {
                    out.push(char::from(b));
                    i += 1;
                } else {
                    // A byte that starts no character of the set is one by itself (SJIS's
                    // half-width katakana, or a stray byte).
                    out.push(one(encoding, &[b]));
                    i += 1;
                }
            }
            Cow::Owned(out)
        }
    })
}

/// The one non-ASCII character `bytes` encode in `encoding`, or U+FFFD.
fn one(encoding: &'static Encoding, bytes: &[u8]) -> char {
    let decoded = encoding.decode_without_bom_handling_and_without_replacement(bytes);
    let mut chars = decoded.as_deref().unwrap_or_default().chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if !c.is_ascii() => c,
        _ => char::REPLACEMENT_CHARACTER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trail_byte_that_is_a_backslash_or_quote_stays_in_its_character() {
        // GBK 0xBF 0x5C is one character: the quote after it closes the string.
        let gbk = b"SELECT '\xbf\x5c'; DROP TABLE t; -- '";
        let text = read_text(gbk, "gbk").unwrap();
        assert_eq!(text, "SELECT '\u{7E17}'; DROP TABLE t; -- '");
        // SJIS 0x83 0x5C (ソ) likewise; 0xA6 alone is a half-width katakana.
        let sjis = b"SELECT '\x83\x5c', '\xa6'";
        assert_eq!(
            read_text(sjis, "sjis").unwrap(),
            "SELECT '\u{30BD}', '\u{FF66}'"
        );
        assert_eq!(
            read_text(sjis, "cp932").unwrap(),
            read_text(sjis, "sjis").unwrap()
        );
        // Big5 0xA4 0x5C (么).
        assert_eq!(
            read_text(b"SELECT '\xa4\x5c'", "big5").unwrap(),
            "SELECT '\u{4E48}'"
        );
        // A lead byte before a byte that is no trail is one character, and the next byte
        // is read as itself: here a quote.
        assert_eq!(
            read_text(b"SELECT '\x81'; DROP", "gbk").unwrap(),
            "SELECT '\u{FFFD}'; DROP"
        );
        assert_eq!(
            read_text(b"SELECT '\xa1\x27'", "big5").unwrap(),
            "SELECT '\u{FFFD}''"
        );
    }

    #[test]
    fn every_ascii_byte_the_server_reads_stays_and_nothing_else_becomes_ascii() {
        // Random bytes in every set: the ASCII characters of the text are exactly the bytes
        // the server reads as ASCII (not the second byte of a character).
        let mut seed = 0x2545_f491_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for charset in ["gbk", "sjis", "cp932", "big5", "latin1", "ascii", "utf8mb4"] {
            for _ in 0..2000 {
                let bytes: Vec<u8> = (0..24)
                    .map(|_| {
                        let r = next();
                        if r % 3 == 0 {
                            b"'\\\";-/*# "[(r >> 8) as usize % 9]
                        } else {
                            (r >> 8) as u8
                        }
                    })
                    .collect();
                let text = read_text(&bytes, charset).unwrap();
                let server: Vec<u8> = match kind(charset).unwrap() {
                    Kind::Double { lead, trail, .. } => {
                        let mut out = Vec::new();
                        let mut i = 0;
                        while i < bytes.len() {
                            if lead(bytes[i]) && bytes.get(i + 1).copied().is_some_and(trail) {
                                i += 2;
                            } else {
                                if bytes[i].is_ascii() {
                                    out.push(bytes[i]);
                                }
                                i += 1;
                            }
                        }
                        out
                    }
                    _ => bytes.iter().copied().filter(u8::is_ascii).collect(),
                };
                let ours: Vec<u8> = text.bytes().filter(u8::is_ascii).collect();
                assert_eq!(ours, server, "{charset}: {bytes:02x?}");
            }
        }
        assert!(read_text(b"\xff", "euckr").is_none());
        assert!(reads("GBK") && !reads("ujis"));
    }
}
