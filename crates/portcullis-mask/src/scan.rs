//! One pass over a value: a cheap prefilter first, the detectors only where it fires.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::Regex;

use crate::detect::{self, Finding, Kind, TOKEN_PREFIXES};

/// A user detector.
#[derive(Debug, Clone)]
pub enum Custom {
    /// A regular expression (Rust `regex` syntax), matched on the value's bytes.
    Regex(Regex),
    /// Terms matched case-insensitively as whole words.
    Terms(Vec<String>),
}

/// The detectors to run, built once.
#[derive(Debug, Clone)]
pub struct Detectors {
    enabled: [bool; Kind::ALL.len()],
    /// Literal triggers: JWT, AWS keys, private keys, token prefixes, then custom terms.
    literals: Option<AhoCorasick>,
    /// What each literal pattern stands for.
    literal_kinds: Vec<Literal>,
    /// The first two bytes of every literal (in every case when terms ignore case), as a set
    /// of 65,536 bits; `None` when a literal is a single byte.
    literal_pairs: Option<Arc<[u64; 1024]>>,
    regexes: Vec<(u16, Regex)>,
    /// Whether any character-triggered detector is on (digits, `@`, `:`, `+`).
    char_scan: bool,
}

#[derive(Debug, Clone, Copy)]
enum Literal {
    Jwt,
    AwsKey,
    PrivateKey,
    Token(usize),
    Term(u16),
}

/// A detector list could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

impl Detectors {
    /// Whether any detector is on.
    pub fn any(&self) -> bool {
        self.enabled.iter().any(|&e| e) || self.has_custom()
    }

    /// Whether a custom detector is on (it may match any text, a date's included).
    pub fn has_custom(&self) -> bool {
        !self.regexes.is_empty()
            || self
                .literal_kinds
                .iter()
                .any(|l| matches!(l, Literal::Term(_)))
    }

    /// The built-in detectors in `kinds` and the `custom` ones (numbered in order, as
    /// [`Kind::Custom`]).
    pub fn new(kinds: &[Kind], custom: Vec<Custom>) -> Result<Self, BuildError> {
        let mut enabled = [false; Kind::ALL.len()];
        for kind in kinds {
            if let Some(i) = Kind::ALL.iter().position(|k| k == kind) {
                enabled[i] = true;
            }
        }
        let on = |k: Kind| enabled[Kind::ALL.iter().position(|x| *x == k).unwrap_or(0)];
        let mut patterns: Vec<String> = Vec::new();
        let mut literal_kinds = Vec::new();
        if on(Kind::Jwt) {
            patterns.push("eyJ".into());
            literal_kinds.push(Literal::Jwt);
        }
        if on(Kind::AwsAccessKey) {
            for p in ["AKIA", "ASIA"] {
                patterns.push(p.into());
                literal_kinds.push(Literal::AwsKey);
            }
        }
        if on(Kind::PrivateKey) {
            patterns.push("-----BEGIN ".into());
            literal_kinds.push(Literal::PrivateKey);
        }
        if on(Kind::ApiToken) {
            for (i, p) in TOKEN_PREFIXES.iter().enumerate() {
                patterns.push((*p).into());
                literal_kinds.push(Literal::Token(i));
            }
        }
        let mut regexes = Vec::new();
        for (n, c) in custom.into_iter().enumerate() {
            let id =
                u16::try_from(n).map_err(|_| BuildError("too many custom detectors".into()))?;
            match c {
                Custom::Regex(r) => regexes.push((id, r)),
                Custom::Terms(terms) => {
                    for t in terms {
                        if t.is_empty() {
                            return Err(BuildError("an empty term".into()));
                        }
                        patterns.push(t);
                        literal_kinds.push(Literal::Term(id));
                    }
                }
            }
        }
        // Terms match case-insensitively; the built-in literals are then checked exactly by
        // their detectors.
        let has_terms = literal_kinds.iter().any(|l| matches!(l, Literal::Term(_)));
        let literals = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(has_terms)
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(&patterns)
                    .map_err(|e| BuildError(e.to_string()))?,
            )
        };
        let literal_pairs = if patterns.iter().any(|p| p.len() < 2) {
            None
        } else {
            let mut set = [0u64; 1024];
            let cases = |c: u8| {
                if has_terms {
                    [c.to_ascii_lowercase(), c.to_ascii_uppercase()]
                } else {
                    [c, c]
                }
            };
            for p in &patterns {
                let p = p.as_bytes();
                for a in cases(p[0]) {
                    for b in cases(p[1]) {
                        set[usize::from(a) << 2 | usize::from(b) >> 6] |= 1 << (b & 63);
                    }
                }
            }
            Some(Arc::new(set))
        };
        let char_scan = Kind::ALL.into_iter().any(|k| k.char_triggered() && on(k));
        Ok(Detectors {
            enabled,
            literals,
            literal_kinds,
            literal_pairs,
            regexes,
            char_scan,
        })
    }

    /// Every built-in detector, no custom ones.
    pub fn all() -> Self {
        match Detectors::new(&Kind::ALL, Vec::new()) {
            Ok(d) => d,
            // Built-in patterns always build.
            Err(_) => Detectors {
                enabled: [false; Kind::ALL.len()],
                literals: None,
                literal_kinds: Vec::new(),
                literal_pairs: None,
                regexes: Vec::new(),
                char_scan: false,
            },
        }
    }

    fn on(&self, kind: Kind) -> bool {
        Kind::ALL
            .iter()
            .position(|k| *k == kind)
            .is_some_and(|i| self.enabled[i])
    }

    /// Find everything in `v`, appended to `out` in order, without overlaps. Allocates
    /// nothing when nothing is found (and `out` has room).
    pub fn scan(&self, v: &[u8], out: &mut Vec<Finding>) {
        let first = out.len();
        if let Some(ac) = &self.literals
            && self.may_hold_literal(v)
        {
            for m in ac.find_iter(v) {
                let at = m.start();
                let kind = self.literal_kinds[m.pattern().as_usize()];
                let found = match kind {
                    Literal::Jwt if v[at..].starts_with(b"eyJ") => {
                        detect::jwt_at(v, at).map(|e| (Kind::Jwt, e))
                    }
                    Literal::Jwt => None,
                    Literal::AwsKey => detect::aws_key_at(v, at).map(|e| (Kind::AwsAccessKey, e)),
                    Literal::PrivateKey => {
                        detect::private_key_at(v, at).map(|e| (Kind::PrivateKey, e))
                    }
                    Literal::Token(i) => {
                        let prefix = TOKEN_PREFIXES[i].as_bytes();
                        if v[at..].starts_with(prefix) {
                            detect::api_token_at(v, at, prefix).map(|e| (Kind::ApiToken, e))
                        } else {
                            None
                        }
                    }
                    Literal::Term(id) => {
                        let whole = (at == 0 || !v[at - 1].is_ascii_alphanumeric())
                            && v.get(m.end()).is_none_or(|b| !b.is_ascii_alphanumeric());
                        whole.then_some((Kind::Custom(id), m.end()))
                    }
                };
                if let Some((kind, end)) = found {
                    out.push(Finding {
                        kind,
                        start: at,
                        end,
                    });
                }
            }
        }
        if self.char_scan && has_trigger(v) {
            self.scan_chars(v, out);
        }
        for (id, re) in &self.regexes {
            for m in re.find_iter(v) {
                if m.end() > m.start() {
                    out.push(Finding {
                        kind: Kind::Custom(*id),
                        start: m.start(),
                        end: m.end(),
                    });
                }
            }
        }
        if out.len() - first > 1 {
            settle(&mut out[first..]);
            dedup_overlaps(out, first);
        }
    }

    /// Whether a literal can start in `v`: for a short value, whether two adjacent bytes
    /// begin one — a table lookup per byte, cheaper than starting the automaton on the many
    /// short values of rows and JSON documents. Longer values go to the automaton directly.
    fn may_hold_literal(&self, v: &[u8]) -> bool {
        match &self.literal_pairs {
            Some(set) if v.len() <= PAIR_CHECK_MAX => v.windows(2).any(|w| {
                let k = usize::from(w[0]) << 2 | usize::from(w[1]) >> 6;
                set[k] >> (w[1] & 63) & 1 == 1
            }),
            _ => true,
        }
    }

    fn scan_chars(&self, v: &[u8], out: &mut Vec<Finding>) {
        let (email, card, iban, ssn, phone, ipv4, ipv6, secret) = (
            self.on(Kind::Email),
            self.on(Kind::CreditCard),
            self.on(Kind::Iban),
            self.on(Kind::UsSsn),
            self.on(Kind::Phone),
            self.on(Kind::Ipv4),
            self.on(Kind::Ipv6),
            self.on(Kind::AwsSecret),
        );
        let mut i = 0;
        let mut push = |kind, start, end| {
            out.push(Finding { kind, start, end });
        };
        while i < v.len() {
            let b = v[i];
            let word_start = i == 0 || !(v[i - 1].is_ascii_alphanumeric() || v[i - 1] == b'_');
            match b {
                b'0'..=b'9' if word_start => {
                    if ssn && let Some(end) = detect::ssn_at(v, i) {
                        push(Kind::UsSsn, i, end);
                        i = end;
                        continue;
                    }
                    if card && let Some(end) = detect::card_at(v, i) {
                        push(Kind::CreditCard, i, end);
                        i = end;
                        continue;
                    }
                    if ipv4 && let Some(end) = detect::ipv4_at(v, i) {
                        push(Kind::Ipv4, i, end);
                        i = end;
                        continue;
                    }
                    // Skip the rest of this number.
                    while i < v.len() && v[i].is_ascii_alphanumeric() {
                        i += 1;
                    }
                    continue;
                }
                b'@' if email => {
                    if let Some((start, end)) = detect::email_at(v, i) {
                        push(Kind::Email, start, end);
                        i = end;
                        continue;
                    }
                }
                b'+' if phone => {
                    if let Some(end) = detect::phone_at(v, i) {
                        push(Kind::Phone, i, end);
                        i = end;
                        continue;
                    }
                }
                b':' if ipv6 => {
                    if let Some((start, end)) = detect::ipv6_around(v, i) {
                        push(Kind::Ipv6, start, end);
                        i = end;
                        continue;
                    }
                }
                b'A'..=b'Z' if iban && word_start => {
                    if let Some(end) = detect::iban_at(v, i) {
                        push(Kind::Iban, i, end);
                        i = end;
                        continue;
                    }
                }
                _ => {}
            }
            if secret
                && word_start
                && b.is_ascii_alphanumeric()
                && v.get(i + 39)
                    .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'/' || c == b'+')
            {
                let run = v[i..]
                    .iter()
                    .take(41)
                    .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'/' || c == b'+')
                    .count();
                if run == 40
                    && let Some(end) = detect::aws_secret_at(v, i)
                {
                    push(Kind::AwsSecret, i, end);
                    i = end;
                    continue;
                }
            }
            i += 1;
            // Nothing starts inside a word (digits, capitals and secrets need a word start;
            // `@`, `+` and `:` are not word bytes): skip to its end.
            if b.is_ascii_alphanumeric() || b == b'_' {
                while i < v.len() && (v[i].is_ascii_alphanumeric() || v[i] == b'_') {
                    i += 1;
                }
            }
        }
    }
}

/// The longest value checked for literal starts before the literal pass.
const PAIR_CHECK_MAX: usize = 64;

/// Whether `v` holds a byte that starts a character-triggered detection: a digit, `@`, `:`
/// or `+`. Chunked without early exits so the compiler vectorises it.
fn has_trigger(v: &[u8]) -> bool {
    let hit = |b: u8| (b.wrapping_sub(b'0') < 10) | (b == b'@') | (b == b':') | (b == b'+');
    let mut chunks = v.chunks_exact(32);
    for chunk in &mut chunks {
        let mut any = false;
        for &b in chunk {
            any |= hit(b);
        }
        if any {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| hit(b))
}

/// Order findings by start (the longest first at the same start). They arrive as a few
/// already-ordered runs (literal matches, character-triggered detections, each regex): the
/// stable sort finds those runs and merges them in linear time, where an unstable sort would
/// sort from scratch.
fn settle(found: &mut [Finding]) {
    found.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
}

/// Drop findings that overlap an earlier one (the earliest, longest wins).
fn dedup_overlaps(out: &mut Vec<Finding>, first: usize) {
    let mut keep = first;
    for i in first..out.len() {
        if keep > first && out[i].start < out[keep - 1].end {
            continue;
        }
        out[keep] = out[i];
        keep += 1;
    }
    out.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: &str) -> Vec<(Kind, String)> {
        let d = Detectors::new(
            &Kind::ALL,
            vec![
                Custom::Terms(vec!["bluebird".into(), "Nightjar".into()]),
                Custom::Regex(Regex::new(r"EMP-\d{6}").unwrap()),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        d.scan(v.as_bytes(), &mut out);
        out.iter()
            .map(|f| (f.kind, v[f.start..f.end].to_owned()))
            .collect()
    }

    #[test]
    fn finds_every_kind_in_context() {
        let text = "mail jane.doe@example.com, card 4111 1111 1111 1111, ssn 123-45-6789, \
                    tel +1 415-555-0132, iban DE89 3704 0044 0532 0130 00, ip 10.0.0.7 \
                    and 2001:db8::7, key AKIAIOSFODNN7EXAMPLE secret \
                    wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY token ghp_abcdefghijklmnopqrstuvwxyz012345 \
                    jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU project BLUEBIRD id EMP-004211";
        let found = kinds(text);
        let names: Vec<Kind> = found.iter().map(|(k, _)| *k).collect();
        for k in [
            Kind::Email,
            Kind::CreditCard,
            Kind::UsSsn,
            Kind::Phone,
            Kind::Iban,
            Kind::Ipv4,
            Kind::Ipv6,
            Kind::AwsAccessKey,
            Kind::AwsSecret,
            Kind::ApiToken,
            Kind::Jwt,
            Kind::Custom(0),
            Kind::Custom(1),
        ] {
            assert!(names.contains(&k), "{k:?} not found in {found:#?}");
        }
        assert!(found.contains(&(Kind::Email, "jane.doe@example.com".into())));
        assert!(found.contains(&(Kind::CreditCard, "4111 1111 1111 1111".into())));
        assert!(found.contains(&(Kind::Custom(0), "BLUEBIRD".into())));
    }

    #[test]
    fn near_misses_are_left_alone() {
        for clean in [
            "order 4111 1111 1111 1112 shipped",    // fails Luhn
            "ref 1234567812345670",                 // Luhn-valid, unknown issuer
            "ssn-like 666-12-3456 and 123-00-4567", // invalid area / group
            "version 1.2.3.4.5 and 300.1.2.3",      // not addresses
            "time 12:30:45",                        // not IPv6
            "user@localhost has no domain",         // no TLD
            "DE89370400440532013001 bad check",     // IBAN mod-97 fails
            "score +12 points",                     // too short for a phone
            "bluebirds are not the term",           // not a whole word
            "plain prose with nothing in it at all",
        ] {
            assert_eq!(kinds(clean), Vec::new(), "{clean}");
        }
    }

    #[test]
    fn literals_in_short_values() {
        for (v, kind) in [
            ("AKIAIOSFODNN7EXAMPLE", Kind::AwsAccessKey),
            ("key AKIAIOSFODNN7EXAMPLE", Kind::AwsAccessKey),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU",
                Kind::Jwt,
            ),
            ("ghp_abcdefghijklmnopqrstuvwxyz012345", Kind::ApiToken),
            ("x SG.abcdefghijklmnopqrstuv", Kind::ApiToken),
            ("BluEbird", Kind::Custom(0)),
            ("the NIGHTJAR", Kind::Custom(0)),
        ] {
            assert_eq!(kinds(v).first().map(|(k, _)| *k), Some(kind), "{v}");
        }
        assert_eq!(kinds("Lyon"), Vec::new());
        // A one-byte term: no pair set, every value goes to the automaton.
        let d = Detectors::new(&[], vec![Custom::Terms(vec!["x".into()])]).unwrap();
        assert!(d.literal_pairs.is_none());
        let mut out = Vec::new();
        d.scan(b"a x b", &mut out);
        assert_eq!(out.len(), 1);
        // Without terms, the built-in literals are matched in their case only.
        let d = Detectors::all();
        assert!(!d.may_hold_literal(b"akia"));
        assert!(d.may_hold_literal(b"AKIA"));
        assert!(
            d.may_hold_literal(&[b'z'; 65]),
            "long values skip the check"
        );
    }

    proptest::proptest! {
        /// The pair check only skips the literal pass where it would find nothing.
        #[test]
        fn pair_check_changes_nothing(
            v in "(AKIA|ASIA|eyJ|ghp_|SG\\.|sk-|BlueBird|NIGHT|[a-zA-Z0-9 ._-]){0,24}"
        ) {
            let d = Detectors::new(
                &Kind::ALL,
                vec![Custom::Terms(vec!["bluebird".into(), "Nightjar".into()])],
            )
            .unwrap();
            let mut plain = d.clone();
            plain.literal_pairs = None;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            d.scan(v.as_bytes(), &mut a);
            plain.scan(v.as_bytes(), &mut b);
            proptest::prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn prefilter() {
        assert!(!has_trigger(
            b"nothing to see here, just words and more words; long enough."
        ));
        assert!(has_trigger(
            b"nothing to see here, just words and more words; long enough 1"
        ));
        assert!(has_trigger(b"a@b"));
    }
}
