//! A PostgreSQL row in text format (`(1,"Jane Doe",jane@example.com,)`), masked field by field
//! so that column rules apply to a whole-row reference's fields: a ruled field is masked
//! whole, the others go through the detectors, unchanged fields keep their bytes.

use std::collections::BTreeMap;

use crate::detect::{Finding, Kind};
use crate::mask::{Masked, Masker, Strategy};

/// One field: its bytes as written (quotes included) and its value (`None`: NULL).
struct Field<'a> {
    raw: &'a [u8],
    value: Option<Vec<u8>>,
}

/// The fields of a row's text form, or `None` when `v` is not one.
fn fields(v: &[u8]) -> Option<Vec<Field<'_>>> {
    let inner = v.strip_prefix(b"(")?.strip_suffix(b")")?;
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let start = at;
        let mut value = Vec::new();
        let mut quoted = false;
        while at < inner.len() && (quoted || inner[at] != b',') {
            match inner[at] {
                b'"' if quoted && inner.get(at + 1) == Some(&b'"') => {
                    value.push(b'"');
                    at += 2;
                }
                b'"' => {
                    quoted = !quoted;
                    at += 1;
                }
                b'\\' => {
                    value.push(*inner.get(at + 1)?);
                    at += 2;
                }
                b => {
                    value.push(b);
                    at += 1;
                }
            }
        }
        if quoted {
            return None;
        }
        let raw = inner.get(start..at)?;
        out.push(Field {
            raw,
            value: (!raw.is_empty()).then_some(value),
        });
        if at >= inner.len() {
            return Some(out);
        }
        at += 1; // the comma
    }
}

/// `v` (a row's text form) masked by `rules`, one per field; `Masked::Rewritten("[redacted]")`
/// when it does not read as a row of that many fields (fail closed).
pub(crate) fn mask_row(
    v: &[u8],
    rules: &[Option<Strategy>],
    masker: &Masker,
    scratch: &mut Vec<Finding>,
    counts: &mut BTreeMap<Kind, u64>,
) -> Masked {
    let Some(fields) = fields(v).filter(|f| f.len() == rules.len()) else {
        return masker.mask_whole(v, Strategy::Redact);
    };
    let mut out = Vec::with_capacity(v.len() + 16);
    out.push(b'(');
    let mut changed = false;
    for (i, (field, rule)) in fields.iter().zip(rules).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let Some(value) = &field.value else {
            continue; // NULL stays NULL
        };
        let masked = match rule {
            Some(strategy) => masker.mask_whole(value, *strategy),
            None => masker.mask(value, scratch, counts),
        };
        match masked {
            Masked::Clean => out.extend_from_slice(field.raw),
            Masked::Null => changed = true,
            Masked::Rewritten(new) => {
                changed = true;
                out.push(b'"');
                for b in new {
                    if b == b'"' || b == b'\\' {
                        out.push(b);
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
        }
    }
    out.push(b')');
    if changed {
        Masked::Rewritten(out)
    } else {
        Masked::Clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::Detectors;

    fn run(v: &str, rules: &[Option<Strategy>]) -> String {
        let m = Masker::new(Detectors::all(), Strategy::Partial);
        let (mut scratch, mut counts) = (Vec::new(), BTreeMap::new());
        match mask_row(v.as_bytes(), rules, &m, &mut scratch, &mut counts) {
            Masked::Clean => v.to_owned(),
            Masked::Rewritten(out) => String::from_utf8(out).unwrap(),
            Masked::Null => "NULL".into(),
        }
    }

    #[test]
    fn ruled_fields_are_masked_whole_and_the_rest_by_content() {
        let rules = [None, Some(Strategy::Redact), None, Some(Strategy::Null)];
        assert_eq!(
            run("(1,\"Jane Doe\",jane@example.com,123-45-6789)", &rules),
            "(1,\"[redacted]\",\"j***@example.com\",)"
        );
        // NULL fields stay NULL; clean fields keep their bytes, quotes and escapes included.
        assert_eq!(
            run("(7,,\"a \"\"b\"\" \\\\c\",x)", &[None, None, None, None]),
            "(7,,\"a \"\"b\"\" \\\\c\",x)"
        );
        // A rewritten value with quotes and backslashes is quoted back validly.
        let m = Masker::new(Detectors::all(), Strategy::Partial);
        assert_eq!(
            m.mask_whole(b"x", Strategy::Redact),
            Masked::Rewritten(b"[redacted]".to_vec())
        );
    }

    #[test]
    fn what_does_not_read_as_a_row_of_that_shape_is_masked_whole() {
        assert_eq!(run("(1,2)", &[None, None, None]), "[redacted]");
        assert_eq!(run("(1,\"open)", &[None, None]), "[redacted]");
        assert_eq!(run("not a row", &[None]), "[redacted]");
    }
}
