//! Reading and rewriting backend messages for masking: RowDescription, DataRow, the text
//! fields of errors and notices, notification payloads, COPY data.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use portcullis_core::{Column, RewriteEvent, ValueKind};

use crate::codec::{Frame, first_cstr};

/// The `record` type.
const RECORD: u32 = 2249;
/// The first OID of an object created in a database (PostgreSQL's `FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16_384;

/// How a value of type `oid` in `format` (0 text, 1 binary) reads.
/// `bytea`'s type OID.
const BYTEA: u32 = 17;

pub(crate) fn value_kind(oid: u32, format: i16) -> ValueKind {
    if format == 0 && oid == BYTEA {
        ValueKind::HexText
    } else if format == 0 {
        ValueKind::Text
    } else {
        ValueKind::postgres_binary(oid)
    }
}

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: String,
    pub(crate) table_oid: u32,
    pub(crate) attnum: i16,
    pub(crate) type_oid: u32,
    pub(crate) format: i16,
}

/// The fields of a RowDescription body; `None` when malformed.
pub(crate) fn fields(body: &[u8]) -> Option<Vec<Field>> {
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = body.get(2..)?;
    let mut out = Vec::with_capacity(usize::try_from(n).ok()?);
    for _ in 0..n {
        let name = first_cstr(rest)?;
        let name_len = name.len();
        let name = String::from_utf8_lossy(name).into_owned();
        rest = rest.get(name_len + 1..)?;
        let f = rest.get(..18)?;
        out.push(Field {
            name,
            table_oid: u32::from_be_bytes(f[0..4].try_into().ok()?),
            attnum: i16::from_be_bytes(f[4..6].try_into().ok()?),
            type_oid: u32::from_be_bytes(f[6..10].try_into().ok()?),
            format: i16::from_be_bytes(f[16..18].try_into().ok()?),
        });
        rest = &rest[18..];
    }
    Some(out)
}

/// Columns from fields, with result `formats` from Bind applied when given (`[]` = all
/// text, one = all that, else one per column).
pub(crate) fn columns(fields: &[Field], formats: Option<&[i16]>) -> Vec<Column> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let format = match formats {
                None => f.format,
                Some([]) => 0,
                Some([one]) => *one,
                Some(all) => all.get(i).copied().unwrap_or(0),
            };
            let mut column = Column::new(f.name.clone(), value_kind(f.type_oid, format));
            // int2, int4, int8, oid, float4, float8, numeric in text form, and arrays of them:
            // read as numbers (an array masked in part is NULL as a whole).
            if format == 0
                && matches!(
                    f.type_oid,
                    20 | 21
                        | 23
                        | 26
                        | 700
                        | 701
                        | 1700
                        | 1005
                        | 1007
                        | 1016
                        | 1021
                        | 1022
                        | 1028
                        | 1231
                )
            {
                column = column.number();
            }
            // json, and jsonb (in text form, or after its version byte in binary).
            if f.type_oid == 114 || f.type_oid == 3802 {
                column = column.json();
            }
            // `record`, and any type created in the database (OIDs from 16384 on): a table's
            // row type in a whole-row reference (`SELECT c FROM customers c`), a composite.
            if f.type_oid == RECORD || f.type_oid >= FIRST_NORMAL_OID {
                column.composite()
            } else {
                column
            }
        })
        .collect()
}

fn frame(tag: u8, body: &[u8]) -> Option<Frame> {
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    buf.put_u8(tag);
    buf.put_i32(i32::try_from(body.len() + 4).ok()?);
    buf.put_slice(body);
    Frame::from_bytes(buf.freeze())
}

impl RewriteEvent for Frame {
    fn columns(&self) -> Option<Vec<Column>> {
        if self.tag() != b'T' {
            return None;
        }
        fields(self.body()).map(|f| columns(&f, None))
    }

    fn row_values(&self) -> Option<Vec<Option<&[u8]>>> {
        if self.tag() != b'D' {
            return None;
        }
        let body = self.body();
        let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
        let mut at = 2;
        let mut out = Vec::with_capacity(usize::try_from(n).ok()?);
        for _ in 0..n {
            let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                let len = usize::try_from(len).ok()?;
                out.push(Some(body.get(at..at + len)?));
                at += len;
            }
        }
        (at == body.len()).then_some(out)
    }

    fn with_row_values(&self, values: &[Option<Cow<'_, [u8]>>]) -> Option<Self> {
        let mut body = Vec::with_capacity(self.body().len() + 16);
        body.extend_from_slice(&i16::try_from(values.len()).ok()?.to_be_bytes());
        for v in values {
            match v {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    body.extend_from_slice(&i32::try_from(v.len()).ok()?.to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
        }
        frame(b'D', &body)
    }

    fn rewrite_text(&self, f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Option<Self> {
        match self.tag() {
            b'E' | b'N' => {
                // Field code, NUL-terminated value; every field is rewritten but the SQLSTATE
                // and the severities (message, detail, hint, context, query, and the schema,
                // table, column, data type and constraint names alike).
                let mut out = Vec::with_capacity(self.body().len());
                let mut changed = false;
                let mut rest = self.body();
                while let Some((&code, tail)) = rest.split_first() {
                    if code == 0 {
                        break;
                    }
                    let value = first_cstr(tail)?;
                    rest = &tail[value.len() + 1..];
                    out.push(code);
                    match (!matches!(code, b'C' | b'S' | b'V'))
                        .then(|| f(value))
                        .flatten()
                    {
                        Some(new) => {
                            changed = true;
                            // A NUL would end the field early: never write one inside.
                            out.extend(new.iter().map(|&b| if b == 0 { b' ' } else { b }));
                        }
                        None => out.extend_from_slice(value),
                    }
                    out.push(0);
                }
                out.push(0);
                changed.then(|| frame(self.tag(), &out)).flatten()
            }
            b'A' => {
                let body = self.body();
                let channel = first_cstr(body.get(4..)?)?;
                let payload_at = 4 + channel.len() + 1;
                let payload = first_cstr(body.get(payload_at..)?)?;
                let new = f(payload)?;
                let mut out = Vec::with_capacity(body.len() + new.len());
                out.extend_from_slice(&body[..payload_at]);
                out.extend(new.iter().map(|&b| if b == 0 { b' ' } else { b }));
                out.push(0);
                frame(b'A', &out)
            }
            b'S' => {
                // ParameterStatus: a setting's value can carry anything a session set
                // (`application_name` by `set_config`).
                let body = self.body();
                let name = first_cstr(body)?;
                let value = first_cstr(body.get(name.len() + 1..)?)?;
                let new = f(value)?;
                let mut out = Vec::with_capacity(body.len() + new.len());
                out.extend_from_slice(&body[..name.len() + 1]);
                out.extend(new.iter().map(|&b| if b == 0 { b' ' } else { b }));
                out.push(0);
                frame(b'S', &out)
            }
            b'd' => f(self.body()).and_then(|new| frame(b'd', &new)),
            _ => None,
        }
    }

    fn shape(&self) -> Option<&[u8]> {
        (self.tag() == b'T').then(|| self.body())
    }

    fn opaque_output(&self) -> bool {
        // CopyOutResponse with the binary overall format.
        self.tag() == b'H' && self.body().first() == Some(&1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{BackendMessage, Severity, error_message};

    fn row(values: &[Option<&[u8]>]) -> Frame {
        let owned: Vec<Option<Cow<'_, [u8]>>> =
            values.iter().map(|v| v.map(Cow::Borrowed)).collect();
        // Any frame will do to build from.
        let seed = frame(b'D', &[0, 0]).unwrap();
        seed.with_row_values(&owned).unwrap()
    }

    #[test]
    fn rows_round_trip() {
        let r = row(&[Some(b"jane@example.com"), None, Some(b"")]);
        assert_eq!(
            r.row_values().unwrap(),
            vec![Some(&b"jane@example.com"[..]), None, Some(&b""[..])]
        );
        assert!(
            frame(b'D', &[0, 1, 0, 0, 0, 9, b'x'])
                .unwrap()
                .row_values()
                .is_none(),
            "cut short"
        );
    }

    #[test]
    fn row_descriptions_and_kinds() {
        let mut body = vec![0, 2];
        for (name, oid, format) in [("email", 25u32, 1i16), ("id", 23, 1)] {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&16384u32.to_be_bytes());
            body.extend_from_slice(&1i16.to_be_bytes());
            body.extend_from_slice(&oid.to_be_bytes());
            body.extend_from_slice(&(-1i16).to_be_bytes());
            body.extend_from_slice(&(-1i32).to_be_bytes());
            body.extend_from_slice(&format.to_be_bytes());
        }
        let t = frame(b'T', &body).unwrap();
        let cols = t.columns().unwrap();
        assert_eq!(cols[0].label, "email");
        assert_eq!(cols[0].kind, ValueKind::Text);
        assert_eq!(cols[1].kind, ValueKind::Integer);
        let f = fields(t.body()).unwrap();
        assert_eq!(columns(&f, Some(&[0]))[1].kind, ValueKind::Text);
        assert_eq!(value_kind(17, 1), ValueKind::Text);
        assert_eq!(value_kind(3802, 1), ValueKind::PrefixedText);
        assert_eq!(value_kind(600, 1), ValueKind::Opaque);
    }

    #[test]
    fn text_fields_are_rewritten() {
        let mut e = BytesMut::new();
        error_message(Severity::Error, "23505", "duplicate key").encode(&mut e);
        let e = Frame::from_bytes(e.freeze()).unwrap();
        let new = e
            .rewrite_text(&mut |v| (v == b"duplicate key").then(|| b"dup [email]".to_vec()))
            .unwrap();
        match BackendMessage::decode(&new).unwrap() {
            BackendMessage::ErrorResponse { fields } => {
                assert!(
                    fields
                        .iter()
                        .any(|(c, v)| *c == b'M' && &v[..] == b"dup [email]")
                );
                assert!(fields.iter().any(|(c, v)| *c == b'C' && &v[..] == b"23505"));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.rewrite_text(&mut |_| None).is_none());
        let a = frame(b'A', b"\0\0\0\x07ch\0jane@example.com\0").unwrap();
        let new = a.rewrite_text(&mut |_| Some(b"[email]".to_vec())).unwrap();
        assert_eq!(new.body(), b"\0\0\0\x07ch\0[email]\0");
        assert!(frame(b'H', &[1, 0, 0]).unwrap().opaque_output());
        // Every field but the code and severities: a constraint or column name too.
        let n = frame(
            b'N',
            b"SNOTICE\0VNOTICE\0C00000\0Mhi\0ncheck_jane@example.com\0cjane@example.com\0\0",
        )
        .unwrap();
        let new = n
            .rewrite_text(&mut |v| {
                v.windows(4)
                    .any(|w| w == b"jane")
                    .then(|| b"[email]".to_vec())
            })
            .unwrap();
        assert_eq!(
            new.body(),
            b"SNOTICE\0VNOTICE\0C00000\0Mhi\0n[email]\0c[email]\0\0"
        );
        // A ParameterStatus value.
        let s = frame(b'S', b"application_name\0jane@example.com\0").unwrap();
        let new = s.rewrite_text(&mut |_| Some(b"[email]".to_vec())).unwrap();
        assert_eq!(new.body(), b"application_name\0[email]\0");
    }

    proptest::proptest! {
        /// Any row survives rebuilding, and a rebuilt row is a valid DataRow.
        #[test]
        fn rebuilt_rows_are_valid(values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 0..12)) {
            let r = row(&values.iter().map(|v| v.as_deref()).collect::<Vec<_>>());
            let back: Vec<Option<Vec<u8>>> = r.row_values().unwrap().into_iter().map(|v| v.map(<[u8]>::to_vec)).collect();
            proptest::prop_assert_eq!(back, values);
            proptest::prop_assert!(BackendMessage::decode(&r).is_ok());
        }

        /// Rewriting the text of an error with any bytes (NULs included) keeps a valid
        /// ErrorResponse whose untouched fields are unchanged.
        #[test]
        fn rewritten_errors_are_valid(message in "[^\\x00]{0,40}", replacement in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let mut e = BytesMut::new();
            error_message(Severity::Error, "23505", &message).encode(&mut e);
            let e = Frame::from_bytes(e.freeze()).unwrap();
            let new = e.rewrite_text(&mut |_| Some(replacement.clone())).unwrap_or(e);
            match BackendMessage::decode(&new) {
                Ok(BackendMessage::ErrorResponse { fields }) => {
                    proptest::prop_assert!(fields.iter().any(|(c, v)| *c == b'C' && &v[..] == b"23505"));
                }
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }
}
