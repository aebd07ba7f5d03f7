//! Personal-data detection and masking for the Portcullis gateway.
//!
//! [`MaskLayer`] applies a [`MaskPolicy`] to reply bodies, protocol-agnostically through the
//! core's `RewriteEvent` view: a plan per result shape (column rules by label or source, and
//! content detection), rows rewritten (or passed through as the original bytes when nothing
//! is found), free text of errors, notices, notifications and COPY data scanned, unreadable
//! output refused rather than passed. [`MaskPolicy::redactor`] gives the same detectors to the
//! audit trail and approval listings for statement text and parameters. `COPY` output in
//! text, CSV and binary is read field by field when the protocol knows its columns
//! (`ReplyBody::copy_layout`), so column rules apply to it as to rows.
//!
//! [`JsonMasker`] masks JSON bodies (HTTP APIs) as they stream, in chunks of any size: path
//! rules (`$.items[*].email`, `$..ssn`) with a strategy, and the same detectors over string
//! values; everything else is copied byte for byte.
//!
//! [`Detectors`] scan a value in one pass: a vectorisable check for the bytes that can start
//! a character-triggered detection (digits, `@`, `:`, `+`) and one Aho-Corasick pass for
//! literal triggers (`eyJ`, `AKIA`, `-----BEGIN `, token prefixes, custom terms); detectors
//! run only where those fire, and each validates what it finds — Luhn and issuer ranges for
//! cards, mod-97 for IBANs, area/group/serial for SSNs, a real parse for IP addresses — so
//! look-alikes pass unchanged. Nothing is allocated for a clean value.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use portcullis_mask::{Detectors, Masked, Masker, Strategy};
//!
//! let masker = Masker::new(Detectors::all(), Strategy::Partial);
//! let (mut scratch, mut counts) = (Vec::new(), BTreeMap::new());
//! let out = masker.mask(b"jane@example.com paid with 4242 4242 4242 4242", &mut scratch, &mut counts);
//! assert_eq!(
//!     out,
//!     Masked::Rewritten(b"j***@example.com paid with **** **** **** 4242".to_vec())
//! );
//! // An order number that fails the Luhn check is left alone.
//! assert_eq!(masker.mask(b"order 4242 4242 4242 4241", &mut scratch, &mut counts), Masked::Clean);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod binary;
mod copytext;
mod detect;
mod json;
mod layer;
mod mask;
mod record;
mod scan;
mod statement;

pub use detect::{Finding, Kind};
pub use json::{
    JsonError, JsonErrorKind, JsonLimits, JsonMasker, JsonPath, JsonPathError, JsonPolicy,
    JsonStats,
};
pub use layer::{
    ColumnRule, LineageReader, Mask, MaskBody, MaskLayer, MaskPolicy, OtherBodies, ResponseFuture,
};
pub use mask::{Masked, Masker, MaskerError, Strategy};
pub use scan::{BuildError, Custom, Detectors};

#[cfg(test)]
mod proptests {
    use std::collections::BTreeMap;

    use proptest::prelude::{prop_assert, proptest};

    use super::{Detectors, Masked, Masker, Strategy};

    proptest! {
        /// A value with no detection is never changed; a masked value never still holds
        /// what was found.
        #[test]
        fn masking_changes_only_findings(value in "[ -~]{0,80}") {
            let masker = Masker::new(Detectors::all(), Strategy::Redact);
            let mut found = Vec::new();
            Detectors::all().scan(value.as_bytes(), &mut found);
            let (mut scratch, mut counts) = (Vec::new(), BTreeMap::new());
            match masker.mask(value.as_bytes(), &mut scratch, &mut counts) {
                Masked::Clean => prop_assert!(found.is_empty()),
                Masked::Rewritten(out) => {
                    prop_assert!(!found.is_empty());
                    let out = String::from_utf8(out).unwrap();
                    for f in &found {
                        prop_assert!(!out.contains(&value[f.start..f.end]) || f.end - f.start < 4);
                    }
                }
                Masked::Null => prop_assert!(false, "redact never gives NULL"),
            }
        }

        /// Findings lie inside the value, in order, without overlaps, on char boundaries.
        #[test]
        fn findings_are_well_formed(value in "\\PC{0,120}") {
            let mut found = Vec::new();
            Detectors::all().scan(value.as_bytes(), &mut found);
            let mut last = 0;
            for f in &found {
                prop_assert!(f.start >= last && f.start < f.end && f.end <= value.len());
                prop_assert!(value.is_char_boundary(f.start) && value.is_char_boundary(f.end));
                last = f.end;
            }
        }
    }
}
