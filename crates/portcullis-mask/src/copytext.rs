//! Rows of PostgreSQL `COPY … TO STDOUT` output in the text and CSV formats with their
//! default options, read into values and written back — so column rules apply to COPY as to
//! result rows.

use std::borrow::Cow;

/// The fields of one text-format row (tab-separated, `\N` for NULL, backslash escapes,
/// ending in a newline); `None` when it is not such a row.
pub(crate) fn text_fields(row: &[u8]) -> Option<Vec<Option<Cow<'_, [u8]>>>> {
    let row = row.strip_suffix(b"\n")?;
    Some(
        row.split(|&b| b == b'\t')
            .map(|raw| (raw != b"\\N").then(|| unescape(raw)))
            .collect(),
    )
}

/// A text-format field's value.
fn unescape(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' || i == raw.len() {
            out.push(b);
            continue;
        }
        let c = raw[i];
        i += 1;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(v & 0xff).unwrap_or(0));
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u8;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v
                                .wrapping_mul(16)
                                .wrapping_add(u8::try_from(d).unwrap_or(0));
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v);
            }
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

/// A text-format row from values.
pub(crate) fn text_row(values: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match v {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => {
                for &b in v {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        _ => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
    out
}

/// The fields of one CSV row (`,`, `"` quoting with `""`, an unquoted empty field for NULL,
/// ending in a newline); `None` when it is not such a row.
pub(crate) fn csv_fields(row: &[u8]) -> Option<Vec<Option<Cow<'_, [u8]>>>> {
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        if row.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            let mut value: Option<Vec<u8>> = None;
            loop {
                match row.get(i)? {
                    b'"' if row.get(i + 1) == Some(&b'"') => {
                        let v = value.get_or_insert_with(|| row[start..i].to_vec());
                        v.push(b'"');
                        i += 2;
                    }
                    b'"' => break,
                    &b => {
                        if let Some(v) = value.as_mut() {
                            v.push(b);
                        }
                        i += 1;
                    }
                }
            }
            fields.push(Some(match value {
                Some(v) => Cow::Owned(v),
                None => Cow::Borrowed(&row[start..i]),
            }));
            i += 1; // the closing quote
        } else {
            let start = i;
            while !matches!(row.get(i), None | Some(b',' | b'\n')) {
                i += 1;
            }
            let raw = &row[start..i];
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            fields.push((!raw.is_empty()).then_some(Cow::Borrowed(raw)));
        }
        match row.get(i) {
            Some(b',') => i += 1,
            Some(b'\n') if i + 1 == row.len() => return Some(fields),
            Some(b'\r') if row.get(i + 1..) == Some(b"\n") => return Some(fields),
            _ => return None,
        }
    }
}

/// A CSV row from values.
pub(crate) fn csv_row(values: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(v) = v {
            let quote = v.is_empty() || v.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
            if quote {
                out.push(b'"');
                for &b in v {
                    if b == b'"' {
                        out.push(b'"');
                    }
                    out.push(b);
                }
                out.push(b'"');
            } else {
                out.extend_from_slice(v);
            }
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(fields: Option<Vec<Option<Cow<'_, [u8]>>>>) -> Option<Vec<Option<Vec<u8>>>> {
        fields.map(|f| f.into_iter().map(|v| v.map(|c| c.into_owned())).collect())
    }

    #[test]
    fn text_rows_round_trip() {
        let row = b"1\tJane\\tDoe\t\\N\ta\\\\b\\nc\t\\101\\x42\n";
        let fields = owned(text_fields(row)).unwrap();
        assert_eq!(
            fields,
            vec![
                Some(b"1".to_vec()),
                Some(b"Jane\tDoe".to_vec()),
                None,
                Some(b"a\\b\nc".to_vec()),
                Some(b"AB".to_vec()),
            ]
        );
        let back = text_row(&fields);
        assert_eq!(owned(text_fields(&back)).unwrap(), fields);
        assert!(text_fields(b"no newline").is_none());
    }

    #[test]
    fn csv_rows_round_trip() {
        let row = b"1,\"Doe, Jane\",,\"\",\"say \"\"hi\"\"\nthere\",x\n";
        let fields = owned(csv_fields(row)).unwrap();
        assert_eq!(
            fields,
            vec![
                Some(b"1".to_vec()),
                Some(b"Doe, Jane".to_vec()),
                None,
                Some(b"".to_vec()),
                Some(b"say \"hi\"\nthere".to_vec()),
                Some(b"x".to_vec()),
            ]
        );
        let back = csv_row(&fields);
        assert_eq!(owned(csv_fields(&back)).unwrap(), fields);
        for bad in [&b"\"open\n"[..], b"a,b", b"\"x\"y\n"] {
            assert!(
                csv_fields(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_values_round_trip(values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)), 1..6)) {
            let text = text_row(&values);
            proptest::prop_assert_eq!(owned(text_fields(&text)).unwrap(), values.clone());
            // CSV has no NULL/empty distinction problem: empty values are quoted.
            let csv = csv_row(&values);
            proptest::prop_assert_eq!(owned(csv_fields(&csv)).unwrap(), values);
        }

        #[test]
        fn any_bytes_never_panic(row in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = text_fields(&row);
            let _ = csv_fields(&row);
        }
    }
}
