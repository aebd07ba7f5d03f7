//! Strategies, and the [`Masker`] that applies them to a value.

use std::collections::BTreeMap;

use ring::hmac;

use crate::detect::{Finding, Kind};
use crate::scan::Detectors;

/// How a detected (or column-ruled) value is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// A typed placeholder: `[email]`, `[credit_card]`.
    Redact,
    /// Keep what the detector says is safe: `j***@example.com`, `**** **** **** 4242`,
    /// `***-**-6789`; detectors with nothing safe to keep are redacted.
    #[default]
    Partial,
    /// A keyed HMAC of the value as a stable token (`tok_3f9a…`), so joins and group-bys
    /// still work; needs a key.
    Hash,
    /// The whole value becomes NULL.
    Null,
}

impl Strategy {
    /// The strategy named in the configuration: `redact`, `partial`, `hash`, `null`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "redact" => Strategy::Redact,
            "partial" => Strategy::Partial,
            "hash" => Strategy::Hash,
            "null" => Strategy::Null,
            _ => return None,
        })
    }
}

/// What masking a value gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    /// Nothing found: the value goes through as it is (no allocation was made).
    Clean,
    /// The value rewritten.
    Rewritten(Vec<u8>),
    /// The value becomes NULL.
    Null,
}

/// Detectors plus how each kind is masked.
#[derive(Debug, Clone)]
pub struct Masker {
    detectors: Detectors,
    strategy: Strategy,
    per_kind: BTreeMap<Kind, Strategy>,
    key: Option<hmac::Key>,
}

/// A masker could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MaskerError(pub String);

impl Masker {
    /// Mask what `detectors` find with `strategy`.
    pub fn new(detectors: Detectors, strategy: Strategy) -> Self {
        Masker {
            detectors,
            strategy,
            per_kind: BTreeMap::new(),
            key: None,
        }
    }

    /// Mask `kind` with `strategy` instead of the default.
    pub fn with_strategy(mut self, kind: Kind, strategy: Strategy) -> Self {
        self.per_kind.insert(kind, strategy);
        self
    }

    /// The key for [`Strategy::Hash`] (at least 16 bytes).
    pub fn with_hash_key(mut self, key: &[u8]) -> Result<Self, MaskerError> {
        if key.len() < 16 {
            return Err(MaskerError("the hash key must be at least 16 bytes".into()));
        }
        self.key = Some(hmac::Key::new(hmac::HMAC_SHA256, key));
        Ok(self)
    }

    /// Whether a strategy in use needs a hash key that is missing.
    pub fn missing_key(&self) -> bool {
        let uses_hash =
            self.strategy == Strategy::Hash || self.per_kind.values().any(|s| *s == Strategy::Hash);
        uses_hash && self.key.is_none()
    }

    /// The detectors.
    pub fn detectors(&self) -> &Detectors {
        &self.detectors
    }

    fn strategy_for(&self, kind: Kind) -> Strategy {
        self.per_kind.get(&kind).copied().unwrap_or(self.strategy)
    }

    /// Mask what the detectors find in `value`. `scratch` is reused between calls (no
    /// allocation when nothing is found); `counts` gets one per masked finding.
    pub fn mask(
        &self,
        value: &[u8],
        scratch: &mut Vec<Finding>,
        counts: &mut BTreeMap<Kind, u64>,
    ) -> Masked {
        scratch.clear();
        self.detectors.scan(value, scratch);
        if scratch.is_empty() {
            return Masked::Clean;
        }
        for f in scratch.iter() {
            *counts.entry(f.kind).or_default() += 1;
        }
        if scratch
            .iter()
            .any(|f| self.strategy_for(f.kind) == Strategy::Null)
        {
            return Masked::Null;
        }
        let mut out = Vec::with_capacity(value.len() + 16);
        let mut at = 0;
        for f in scratch.iter() {
            out.extend_from_slice(&value[at..f.start]);
            self.render(
                f.kind,
                &value[f.start..f.end],
                self.strategy_for(f.kind),
                &mut out,
            );
            at = f.end;
        }
        out.extend_from_slice(&value[at..]);
        Masked::Rewritten(out)
    }

    /// Mask a whole value under a column rule with `strategy` (whatever its content):
    /// detections inside keep their detector's partial form; otherwise `partial` keeps the
    /// last four characters.
    pub fn mask_whole(&self, value: &[u8], strategy: Strategy) -> Masked {
        match strategy {
            Strategy::Null => Masked::Null,
            Strategy::Redact => Masked::Rewritten(b"[redacted]".to_vec()),
            Strategy::Hash => {
                let mut out = Vec::new();
                self.token(value, &mut out);
                Masked::Rewritten(out)
            }
            Strategy::Partial => {
                let mut scratch = Vec::new();
                self.detectors.scan(value, &mut scratch);
                if let [f] = scratch.as_slice()
                    && f.start == 0
                    && f.end == value.len()
                {
                    let mut out = Vec::new();
                    self.render(f.kind, value, Strategy::Partial, &mut out);
                    return Masked::Rewritten(out);
                }
                let text = String::from_utf8_lossy(value);
                let n = text.chars().count();
                let keep = if n > 8 { 4 } else { 0 };
                let masked: String = text
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if i + keep >= n || c.is_whitespace() {
                            c
                        } else {
                            '*'
                        }
                    })
                    .collect();
                Masked::Rewritten(masked.into_bytes())
            }
        }
    }

    fn token(&self, value: &[u8], out: &mut Vec<u8>) {
        match &self.key {
            Some(key) => {
                let tag = hmac::sign(key, value);
                out.extend_from_slice(b"tok_");
                for b in &tag.as_ref()[..12] {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
            }
            // Without a key (refused at configuration), never the value itself.
            None => out.extend_from_slice(b"[redacted]"),
        }
    }

    fn render(&self, kind: Kind, v: &[u8], strategy: Strategy, out: &mut Vec<u8>) {
        match strategy {
            Strategy::Hash => return self.token(v, out),
            Strategy::Redact | Strategy::Null => return redact(kind, out),
            Strategy::Partial => {}
        }
        match kind {
            Kind::Email => {
                let at = v.iter().position(|&b| b == b'@').unwrap_or(0);
                out.push(v[0]);
                out.extend_from_slice(b"***");
                out.extend_from_slice(&v[at..]);
            }
            Kind::CreditCard | Kind::UsSsn | Kind::Phone | Kind::Iban => {
                // Keep the shape (separators), the last four digits (cards, SSNs, IBANs) or
                // two (phones), and an IBAN's country code.
                let keep = if kind == Kind::Phone { 2 } else { 4 };
                let total = v.iter().filter(|b| b.is_ascii_alphanumeric()).count();
                let mut seen = 0;
                for (i, &b) in v.iter().enumerate() {
                    if b.is_ascii_alphanumeric() {
                        seen += 1;
                        let country = kind == Kind::Iban && i < 2;
                        out.push(if seen + keep > total || country {
                            b
                        } else {
                            b'*'
                        });
                    } else {
                        out.push(b);
                    }
                }
            }
            Kind::Ipv4 => {
                let first = v.iter().position(|&b| b == b'.').unwrap_or(v.len());
                out.extend_from_slice(&v[..first]);
                out.extend_from_slice(b".x.x.x");
            }
            Kind::Ipv6 => {
                let first = v.iter().position(|&b| b == b':').unwrap_or(v.len());
                out.extend_from_slice(&v[..first]);
                out.extend_from_slice(b":x:x:x");
            }
            _ => redact(kind, out),
        }
    }
}

fn redact(kind: Kind, out: &mut Vec<u8>) {
    out.push(b'[');
    out.extend_from_slice(kind.name().as_bytes());
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(m: &Masker, v: &str) -> String {
        let mut scratch = Vec::new();
        let mut counts = BTreeMap::new();
        match m.mask(v.as_bytes(), &mut scratch, &mut counts) {
            Masked::Clean => v.to_owned(),
            Masked::Rewritten(b) => String::from_utf8(b).unwrap(),
            Masked::Null => "NULL".into(),
        }
    }

    #[test]
    fn partial_keeps_what_is_safe() {
        let m = Masker::new(Detectors::all(), Strategy::Partial);
        assert_eq!(masked(&m, "jane@example.com"), "j***@example.com");
        assert_eq!(masked(&m, "4242 4242 4242 4242"), "**** **** **** 4242");
        assert_eq!(masked(&m, "123-45-6789"), "***-**-6789");
        assert_eq!(masked(&m, "call +1 415-555-0132"), "call +* ***-***-**32");
        assert_eq!(
            masked(&m, "DE89 3704 0044 0532 0130 00"),
            "DE** **** **** **** **30 00"
        );
        assert_eq!(masked(&m, "from 10.1.2.3"), "from 10.x.x.x");
        assert_eq!(masked(&m, "AKIAIOSFODNN7EXAMPLE"), "[aws_access_key]");
        assert_eq!(masked(&m, "nothing here 12"), "nothing here 12");
    }

    #[test]
    fn redact_hash_and_null() {
        let m = Masker::new(Detectors::all(), Strategy::Redact);
        assert_eq!(masked(&m, "mail jane@example.com now"), "mail [email] now");
        let h = Masker::new(Detectors::all(), Strategy::Hash)
            .with_hash_key(b"0123456789abcdef0123")
            .unwrap();
        let a = masked(&h, "jane@example.com");
        assert!(a.starts_with("tok_") && a.len() == 28, "{a}");
        assert_eq!(a, masked(&h, "jane@example.com"), "stable");
        assert_ne!(a, masked(&h, "john@example.com"));
        let n = Masker::new(Detectors::all(), Strategy::Partial)
            .with_strategy(Kind::UsSsn, Strategy::Null);
        assert_eq!(masked(&n, "ssn 123-45-6789"), "NULL");
        assert!(Masker::new(Detectors::all(), Strategy::Hash).missing_key());
    }

    #[test]
    fn whole_values_under_column_rules() {
        let m = Masker::new(Detectors::all(), Strategy::Partial);
        let w = |v: &str, s| match m.mask_whole(v.as_bytes(), s) {
            Masked::Rewritten(b) => String::from_utf8(b).unwrap(),
            Masked::Null => "NULL".into(),
            Masked::Clean => v.into(),
        };
        assert_eq!(w("Jane Doe-Smith", Strategy::Partial), "**** *****mith");
        assert_eq!(w("jane@example.com", Strategy::Partial), "j***@example.com");
        assert_eq!(w("x", Strategy::Redact), "[redacted]");
        assert_eq!(w("x", Strategy::Null), "NULL");
    }
}
