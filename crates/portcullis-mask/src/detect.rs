//! The detectors: each finds candidates in one value and validates them, so look-alikes
//! (a 16-digit order number that fails Luhn, `999-12-3456`, `300.1.2.3`) are left alone.

use std::net::{Ipv4Addr, Ipv6Addr};

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    /// An e-mail address.
    Email,
    /// A payment card number (Luhn-valid, known IIN range).
    CreditCard,
    /// An IBAN (mod-97 valid).
    Iban,
    /// A US social security number (`AAA-GG-SSSS`, valid area/group/serial).
    UsSsn,
    /// A phone number in international format (`+CC …`).
    Phone,
    /// An IPv4 address.
    Ipv4,
    /// An IPv6 address.
    Ipv6,
    /// A JSON Web Token.
    Jwt,
    /// An AWS access key id (`AKIA…`, `ASIA…`).
    AwsAccessKey,
    /// An AWS secret access key (40 base64 characters, mixed).
    AwsSecret,
    /// A PEM private key block.
    PrivateKey,
    /// An API token with a known prefix (`ghp_`, `glpat-`, `xoxb-`, `sk_live_`, …).
    ApiToken,
    /// A user-defined detector (regex or terms), by its index in the configuration.
    Custom(u16),
}

impl Kind {
    /// The detector's configuration name (`email`, `credit_card`, …; `custom`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::CreditCard => "credit_card",
            Kind::Iban => "iban",
            Kind::UsSsn => "us_ssn",
            Kind::Phone => "phone",
            Kind::Ipv4 => "ipv4",
            Kind::Ipv6 => "ipv6",
            Kind::Jwt => "jwt",
            Kind::AwsAccessKey => "aws_access_key",
            Kind::AwsSecret => "aws_secret",
            Kind::PrivateKey => "private_key",
            Kind::ApiToken => "api_token",
            Kind::Custom(_) => "custom",
        }
    }

    /// The built-in detector named `name`.
    pub fn builtin(name: &str) -> Option<Kind> {
        Some(match name {
            "email" => Kind::Email,
            "credit_card" => Kind::CreditCard,
            "iban" => Kind::Iban,
            "us_ssn" => Kind::UsSsn,
            "phone" => Kind::Phone,
            "ipv4" => Kind::Ipv4,
            "ipv6" => Kind::Ipv6,
            "jwt" => Kind::Jwt,
            "aws_access_key" => Kind::AwsAccessKey,
            "aws_secret" => Kind::AwsSecret,
            "private_key" => Kind::PrivateKey,
            "api_token" => Kind::ApiToken,
            _ => return None,
        })
    }

    /// Whether the detector starts at a character the vectorised prefilter looks for (a
    /// digit, `@`, `:`, `+`) rather than at a literal.
    pub(crate) fn char_triggered(self) -> bool {
        matches!(
            self,
            Kind::Email
                | Kind::CreditCard
                | Kind::Iban
                | Kind::UsSsn
                | Kind::Phone
                | Kind::Ipv4
                | Kind::Ipv6
                | Kind::AwsSecret
        )
    }

    /// Every built-in detector.
    pub const ALL: [Kind; 12] = [
        Kind::Email,
        Kind::CreditCard,
        Kind::Iban,
        Kind::UsSsn,
        Kind::Phone,
        Kind::Ipv4,
        Kind::Ipv6,
        Kind::Jwt,
        Kind::AwsAccessKey,
        Kind::AwsSecret,
        Kind::PrivateKey,
        Kind::ApiToken,
    ];
}

/// One detection: `kind` at `start..end` of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// What it is.
    pub kind: Kind,
    /// Byte offset of its start.
    pub start: usize,
    /// Byte offset just past its end.
    pub end: usize,
}

/// Prefixes of API tokens whose rest is at least 16 token characters.
pub(crate) const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxs-",
    "sk_live_",
    "rk_live_",
    "sk_test_",
    "sk-ant-",
    "sk-proj-",
    "AIza",
    "npm_",
    "hf_",
    "SG.",
];

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The byte before `at` is not a word character (or there is none).
fn boundary_before(v: &[u8], at: usize) -> bool {
    at == 0 || !is_word(v[at - 1])
}

/// The byte at `at` is not a word character (or there is none).
fn boundary_after(v: &[u8], at: usize) -> bool {
    v.get(at).is_none_or(|&b| !is_word(b))
}

// ---- e-mail -------------------------------------------------------------------------------

/// A character of an address's local part as people write addresses: RFC 5322 allows
/// `= / ' { }` and more, but text around an address uses them too (`val=vince@…`,
/// `'bob@…'`), and taking them would eat the text before the address.
fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"%+_.-".contains(&b)
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
}

/// The e-mail address around the `@` at `at`, if it is one.
pub(crate) fn email_at(v: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut start = at;
    while start > 0 && is_local(v[start - 1]) && at - start < 64 {
        start -= 1;
    }
    while start < at && v[start] == b'.' {
        start += 1;
    }
    if start == at {
        return None;
    }
    let mut end = at + 1;
    while end < v.len() && is_domain(v[end]) && end - at < 255 {
        end += 1;
    }
    while end > at + 1 && matches!(v[end - 1], b'.' | b'-') {
        end -= 1;
    }
    let domain = &v[at + 1..end];
    let last_dot = domain.iter().rposition(|&b| b == b'.')?;
    let tld = &domain[last_dot + 1..];
    if last_dot == 0 || tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    if domain.windows(2).any(|w| w == b"..") {
        return None;
    }
    Some((start, end))
}

// ---- numbers: cards, SSNs, phones -----------------------------------------------------------

/// The Luhn check over the digits of `s`.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut n = u32::from(d - b'0');
        if i % 2 == 1 {
            n *= 2;
            if n > 9 {
                n -= 9;
            }
        }
        sum += n;
    }
    sum.is_multiple_of(10)
}

/// Whether a card number's issuer prefix and length are those of a known network.
pub(crate) fn known_iin(d: &[u8]) -> bool {
    let n = d.len();
    let prefix = |k: usize| -> u32 {
        d[..k.min(n)]
            .iter()
            .fold(0, |acc, &b| acc * 10 + u32::from(b - b'0'))
    };
    let p1 = prefix(1);
    let p2 = prefix(2);
    let p3 = prefix(3);
    let p4 = prefix(4);
    let p6 = prefix(6);
    (p1 == 4 && matches!(n, 13 | 16 | 19))                                   // Visa
        || ((51..=55).contains(&p2) || (222_100..=272_099).contains(&p6)) && n == 16 // Mastercard
        || matches!(p2, 34 | 37) && n == 15                                  // Amex
        || (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3)) && (16..=19).contains(&n) // Discover
        || (3528..=3589).contains(&p4) && (16..=19).contains(&n)             // JCB
        || (p2 == 36 || (300..=305).contains(&p3)) && (14..=19).contains(&n) // Diners
        || p2 == 62 && (16..=19).contains(&n)                                // UnionPay
        || matches!(p2, 50 | 56..=69) && (12..=19).contains(&n) && p1 != 6 // Maestro
}

/// Up to 19 digits, on the stack.
pub(crate) struct Digits {
    buf: [u8; 34],
    len: usize,
}

impl Digits {
    fn new() -> Self {
        Digits {
            buf: [0; 34],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A run of digits with single spaces or dashes between groups, starting at `start`:
/// `(end, digits)`.
fn digit_run(v: &[u8], start: usize, max_digits: usize) -> (usize, Digits) {
    let mut digits = Digits::new();
    let mut i = start;
    let mut end = start;
    while i < v.len() && digits.len < max_digits {
        let b = v[i];
        if b.is_ascii_digit() {
            digits.push(b);
            i += 1;
            end = i;
        } else if matches!(b, b' ' | b'-')
            && v.get(i + 1).is_some_and(u8::is_ascii_digit)
            && end == i
        {
            i += 1;
        } else {
            break;
        }
    }
    (end, digits)
}

/// A payment card starting at `start` (a digit at a word boundary).
pub(crate) fn card_at(v: &[u8], start: usize) -> Option<usize> {
    let (end, digits) = digit_run(v, start, 19);
    let digits = digits.as_slice();
    if !(12..=19).contains(&digits.len()) || !boundary_after(v, end) {
        return None;
    }
    if v.get(end).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    (luhn(digits) && known_iin(digits)).then_some(end)
}

/// A US SSN `AAA-GG-SSSS` starting at `start`.
pub(crate) fn ssn_at(v: &[u8], start: usize) -> Option<usize> {
    let s = v.get(start..start + 11)?;
    let shape = s.iter().enumerate().all(|(i, &b)| match i {
        3 | 6 => b == b'-',
        _ => b.is_ascii_digit(),
    });
    if !shape || !boundary_after(v, start + 11) || v.get(start + 11) == Some(&b'-') {
        return None;
    }
    let num =
        |r: std::ops::Range<usize>| s[r].iter().fold(0u32, |a, &b| a * 10 + u32::from(b - b'0'));
    let (area, group, serial) = (num(0..3), num(4..6), num(7..11));
    let valid = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    valid.then_some(start + 11)
}

fn is_phone_sep(b: u8) -> bool {
    matches!(b, b' ' | b'-' | b'.' | b'(' | b')')
}

/// An international phone number starting at the `+` at `start`: `+` then 8–15 digits with
/// spaces, dashes, dots or one pair of parentheses between groups.
pub(crate) fn phone_at(v: &[u8], start: usize) -> Option<usize> {
    if v.get(start) != Some(&b'+') || !v.get(start + 1).is_some_and(|b| (b'1'..=b'9').contains(b)) {
        return None;
    }
    if start > 0 && (is_word(v[start - 1]) || v[start - 1] == b'+') {
        return None;
    }
    let mut digits = 0;
    let mut i = start + 1;
    let mut end = i;
    while i < v.len() {
        let b = v[i];
        if b.is_ascii_digit() {
            digits += 1;
            i += 1;
            end = i;
            if digits > 15 {
                return None;
            }
        } else if is_phone_sep(b) {
            // Up to two separators (`) `, ` (`) between digit groups.
            let mut j = i + 1;
            if v.get(j).copied().is_some_and(is_phone_sep) {
                j += 1;
            }
            if !v.get(j).is_some_and(u8::is_ascii_digit) {
                break;
            }
            i = j;
        } else {
            break;
        }
    }
    ((8..=15).contains(&digits) && boundary_after(v, end)).then_some(end)
}

// ---- IBAN ----------------------------------------------------------------------------------

/// An IBAN starting at `start` (two capital letters, two digits, 11–30 more letters or
/// digits, optionally grouped by single spaces), mod-97 valid.
pub(crate) fn iban_at(v: &[u8], start: usize) -> Option<usize> {
    let head = v.get(start..start + 4)?;
    let shape = head[0].is_ascii_uppercase()
        && head[1].is_ascii_uppercase()
        && head[2].is_ascii_digit()
        && head[3].is_ascii_digit();
    if !shape || !boundary_before(v, start) {
        return None;
    }
    let mut chars = Digits::new();
    let mut i = start;
    let mut end = start;
    while i < v.len() && chars.len < 34 {
        let b = v[i];
        if b.is_ascii_digit() || b.is_ascii_uppercase() {
            chars.push(b);
            i += 1;
            end = i;
        } else if b == b' '
            && end == i
            && v.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.len.is_multiple_of(4)
        {
            i += 1;
        } else {
            break;
        }
    }
    let chars = chars.as_slice();
    if !(15..=34).contains(&chars.len()) || !boundary_after(v, end) {
        return None;
    }
    // Move the first four characters to the end, letters to numbers, mod 97 == 1.
    let mut rem = 0u32;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        if c.is_ascii_digit() {
            rem = (rem * 10 + u32::from(c - b'0')) % 97;
        } else {
            let n = u32::from(c - b'A') + 10;
            rem = (rem * 100 + n) % 97;
        }
    }
    (rem == 1).then_some(end)
}

// ---- IP addresses --------------------------------------------------------------------------

/// An IPv4 address starting at `start`.
pub(crate) fn ipv4_at(v: &[u8], start: usize) -> Option<usize> {
    if !boundary_before(v, start) || (start > 0 && v[start - 1] == b'.') {
        return None;
    }
    let mut end = start;
    while end < v.len() && (v[end].is_ascii_digit() || v[end] == b'.') && end - start < 15 {
        end += 1;
    }
    while end > start && v[end - 1] == b'.' {
        end -= 1;
    }
    if !boundary_after(v, end)
        || v.get(end) == Some(&b'.') && v.get(end + 1).is_some_and(u8::is_ascii_digit)
    {
        return None;
    }
    // Most numbers are not dotted quads: cheap to tell before parsing.
    if v[start..end].iter().filter(|&&b| b == b'.').count() != 3 {
        return None;
    }
    let text = std::str::from_utf8(&v[start..end]).ok()?;
    text.parse::<Ipv4Addr>().ok().map(|_| end)
}

/// An IPv6 address around the `:` at `at` (at least two colons, parsed).
pub(crate) fn ipv6_around(v: &[u8], at: usize) -> Option<(usize, usize)> {
    let hexish = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
    let mut start = at;
    while start > 0 && hexish(v[start - 1]) && at - start < 45 {
        start -= 1;
    }
    let mut end = at;
    while end < v.len() && hexish(v[end]) && end - start < 45 {
        end += 1;
    }
    while end > at + 1 && v[end - 1] == b'.' {
        end -= 1;
    }
    if !boundary_before(v, start) || !boundary_after(v, end) {
        return None;
    }
    let text = std::str::from_utf8(&v[start..end]).ok()?;
    if text.bytes().filter(|&b| b == b':').count() < 2 {
        return None;
    }
    text.parse::<Ipv6Addr>().ok().map(|_| (start, end))
}

// ---- tokens and keys -----------------------------------------------------------------------

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A JWT starting at `eyJ` at `start`: three base64url segments, the first two JSON.
pub(crate) fn jwt_at(v: &[u8], start: usize) -> Option<usize> {
    if !boundary_before(v, start) {
        return None;
    }
    let mut i = start;
    let mut segments = 0;
    loop {
        let seg = i;
        while i < v.len() && is_b64url(v[i]) {
            i += 1;
        }
        if i - seg < if segments < 2 { 10 } else { 0 } {
            return None;
        }
        segments += 1;
        if segments == 3 || v.get(i) != Some(&b'.') {
            break;
        }
        i += 1;
    }
    (segments == 3).then_some(i)
}

/// An AWS access key id at `start` (`AKIA`/`ASIA` + 16 upper-case letters or digits).
pub(crate) fn aws_key_at(v: &[u8], start: usize) -> Option<usize> {
    let end = start + 20;
    let s = v.get(start..end)?;
    let ok = (s.starts_with(b"AKIA") || s.starts_with(b"ASIA"))
        && s[4..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && boundary_before(v, start)
        && boundary_after(v, end);
    ok.then_some(end)
}

/// An AWS secret access key: exactly 40 characters of `[A-Za-z0-9/+]` with upper, lower and
/// digits, standing alone.
pub(crate) fn aws_secret_at(v: &[u8], start: usize) -> Option<usize> {
    let c = |b: u8| b.is_ascii_alphanumeric() || b == b'/' || b == b'+';
    if start > 0 && (c(v[start - 1]) || v[start - 1] == b'=') {
        return None;
    }
    let end = start + 40;
    let s = v.get(start..end)?;
    if !s.iter().all(|&b| c(b)) || v.get(end).is_some_and(|&b| c(b) || b == b'=') {
        return None;
    }
    let upper = s.iter().filter(|b| b.is_ascii_uppercase()).count();
    let lower = s.iter().filter(|b| b.is_ascii_lowercase()).count();
    let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
    (upper >= 4 && lower >= 4 && digits >= 1).then_some(end)
}

/// A PEM private key block starting at `-----BEGIN` at `start`; to its END line, or to the
/// end of the value when cut off.
pub(crate) fn private_key_at(v: &[u8], start: usize) -> Option<usize> {
    let rest = &v[start..];
    let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let header = &rest[..line_end];
    if !(header.starts_with(b"-----BEGIN ") && contains(header, b"PRIVATE KEY-----")) {
        return None;
    }
    match find(rest, b"-----END ") {
        Some(e) => {
            let after = &rest[e..];
            let close = find(&after[9..], b"-----").map_or(after.len(), |k| 9 + k + 5);
            Some(start + e + close)
        }
        None => Some(v.len()),
    }
}

/// An API token with a known prefix at `start`.
pub(crate) fn api_token_at(v: &[u8], start: usize, prefix: &[u8]) -> Option<usize> {
    if !boundary_before(v, start) {
        return None;
    }
    let mut end = start + prefix.len();
    while end < v.len() && is_token_char(v[end]) {
        end += 1;
    }
    (end - start - prefix.len() >= 16).then_some(end)
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_tell_real_from_look_alike() {
        assert!(luhn(b"4242424242424242") && known_iin(b"4242424242424242"));
        assert!(!luhn(b"4242424242424241"));
        assert!(card_at(b"4242 4242 4242 4242", 0).is_some());
        assert!(card_at(b"4242-4242-4242-4242", 0).is_some());
        assert!(
            card_at(b"1234567812345670", 0).is_none(),
            "Luhn-valid, unknown IIN"
        );
        assert!(card_at(b"4242424242424241", 0).is_none());
        assert!(ssn_at(b"123-45-6789", 0).is_some());
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(ssn_at(bad.as_bytes(), 0).is_none(), "{bad}");
        }
        assert!(iban_at(b"DE89370400440532013000", 0).is_some());
        assert!(iban_at(b"GB82 WEST 1234 5698 7654 32", 0).is_some());
        assert!(iban_at(b"DE89370400440532013001", 0).is_none());
        assert!(ipv4_at(b"192.168.1.20", 0).is_some());
        assert!(ipv4_at(b"300.1.2.3", 0).is_none());
        assert!(ipv4_at(b"1.2.3", 0).is_none());
        assert!(
            ipv4_at(b"1.2.3.4.5", 0).is_none(),
            "a version number, not an address"
        );
        assert_eq!(ipv6_around(b"addr 2001:db8::1 end", 9), Some((5, 16)));
        assert!(ipv6_around(b"12:30", 2).is_none());
        assert_eq!(email_at(b"mail j.doe@example.com now", 10), Some((5, 22)));
        // The address, not the text around it.
        assert_eq!(email_at(b"row 1 val=vince@example.com", 15), Some((10, 27)));
        assert_eq!(email_at(b"'bob+x@example.com'", 6), Some((1, 18)));
        assert!(email_at(b"user@localhost", 4).is_none());
        assert!(email_at(b"@example.com", 0).is_none());
        assert!(phone_at(b"+1 415-555-0132", 0).is_some());
        assert!(phone_at(b"+44 (20) 7946 0958", 0).is_some());
        assert!(phone_at(b"+12", 0).is_none());
        assert!(aws_key_at(b"AKIAIOSFODNN7EXAMPLE", 0).is_some());
        assert!(aws_secret_at(b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", 0).is_some());
        assert!(aws_secret_at(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0).is_none());
        let jwt = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(jwt_at(jwt, 0), Some(jwt.len()));
        assert!(jwt_at(b"eyJ.short", 0).is_none());
        let key = b"x -----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- y";
        assert_eq!(private_key_at(key, 2), Some(key.len() - 2));
        assert!(api_token_at(b"ghp_abcdefghijklmnopqrstuvwxyz0123456789", 0, b"ghp_").is_some());
        assert!(api_token_at(b"ghp_short", 0, b"ghp_").is_none());
    }
}
