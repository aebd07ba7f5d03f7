//! [`MyEvent`]: what a MySQL reply is made of, as the policy layers see it. Packets that
//! belong together for a reader are one event: a result set's column count and column
//! definitions (and the EOF after them) form one [`EventKind::Columns`] event, so a masking
//! layer gets the whole shape at once; each row is one event that knows its columns (binary
//! rows cannot be read without their types).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use mysql_common::constants::{ColumnType, StatusFlags};
use portcullis_core::{Column, EventKind, EventView, RewriteEvent, ValueKind};

use crate::packet::{lenenc_int, lenenc_str, put_lenenc_str};

/// A result set's columns, as the database described them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// Per column: its description for policy, and its wire type.
    pub columns: Vec<(Column, ColumnType)>,
    /// Rows come in the binary protocol (a prepared statement's result).
    pub binary: bool,
    /// Bytes that identify the shape (the definitions' payloads and the protocol).
    shape: Vec<u8>,
}

impl Columns {
    /// Read column definition packets (`extended`: with MariaDB's extended type metadata).
    pub(crate) fn parse(defs: &[Bytes], binary: bool, extended: bool) -> Option<Columns> {
        let mut columns = Vec::with_capacity(defs.len());
        let mut shape = Vec::with_capacity(defs.iter().map(|d| d.len() + 4).sum::<usize>() + 1);
        shape.push(u8::from(binary));
        for def in defs {
            let parsed = ColumnDef::parse(def, extended)?;
            let kind = if binary {
                binary_value_kind(parsed.ty)
            } else {
                ValueKind::Text
            };
            let mut column = Column::new(String::from_utf8_lossy(parsed.name), kind);
            // Numbers sent as text (every number in the text protocol, DECIMAL in both): a
            // masked value must stay a number.
            if kind == ValueKind::Text && is_number(parsed.ty) {
                column = column.number();
            }
            if kind == ValueKind::Text && parsed.json {
                column = column.json();
            }
            if !parsed.org_table.is_empty() && !parsed.org_name.is_empty() {
                let (schema, table, name) = (
                    String::from_utf8_lossy(parsed.schema),
                    String::from_utf8_lossy(parsed.org_table),
                    String::from_utf8_lossy(parsed.org_name),
                );
                let source = if schema.is_empty() {
                    format!("{table}.{name}")
                } else {
                    format!("{schema}.{table}.{name}")
                };
                // MariaDB reports a derived table, a CTE or a view as its own `org_table`,
                // exactly like an unaliased base table: only an alias that differs from
                // `org_table` proves the column comes from a base table.
                column = if parsed.table == parsed.org_table {
                    column.with_uncertain_source(source)
                } else {
                    column.with_source(source)
                };
            }
            columns.push((column, parsed.ty));
            shape.extend_from_slice(&(def.len() as u32).to_le_bytes());
            shape.extend_from_slice(def);
        }
        Some(Columns {
            columns,
            binary,
            shape,
        })
    }

    /// Columns of rows whose description is unknown (a `COM_STMT_FETCH` of a cursor the
    /// gateway did not see open): such rows never match a masking plan, so they fail rather
    /// than pass unread.
    pub(crate) fn unknown() -> Columns {
        Columns {
            columns: Vec::new(),
            binary: true,
            shape: Vec::new(),
        }
    }

    /// The columns for policy.
    pub fn for_policy(&self) -> Vec<Column> {
        self.columns.iter().map(|(c, _)| c.clone()).collect()
    }
}

/// A column definition (protocol 4.1), as far as the gateway reads it.
struct ColumnDef<'a> {
    schema: &'a [u8],
    /// The table as the query names it (an alias, a derived table, a CTE, a view).
    table: &'a [u8],
    org_table: &'a [u8],
    name: &'a [u8],
    org_name: &'a [u8],
    ty: ColumnType,
    /// A JSON value (type `JSON`, or MariaDB's extended metadata format `json`).
    json: bool,
}

impl<'a> ColumnDef<'a> {
    fn parse(mut buf: &'a [u8], extended: bool) -> Option<ColumnDef<'a>> {
        let _catalog = lenenc_str(&mut buf)?;
        let schema = lenenc_str(&mut buf)?;
        let table = lenenc_str(&mut buf)?;
        let org_table = lenenc_str(&mut buf)?;
        let name = lenenc_str(&mut buf)?;
        let org_name = lenenc_str(&mut buf)?;
        // MariaDB's extended metadata: entries of a kind byte (0 type name, 1 format) and a
        // length-encoded string; format `json` marks a JSON value.
        let mut json = false;
        if extended {
            let mut metadata = lenenc_str(&mut buf)?;
            while let Some((&kind, rest)) = metadata.split_first() {
                metadata = rest;
                let value = lenenc_str(&mut metadata)?;
                json |= kind == 1 && value.eq_ignore_ascii_case(b"json");
            }
        }
        // Fixed-length fields: charset (2), length (4), type (1), flags (2), decimals (1).
        let fixed = lenenc_int(&mut buf)?;
        if fixed < 10 {
            return None;
        }
        let ty = ColumnType::try_from(*buf.get(6)?).ok()?;
        json |= ty == ColumnType::MYSQL_TYPE_JSON;
        Some(ColumnDef {
            schema,
            table,
            org_table,
            name,
            org_name,
            ty,
            json,
        })
    }
}

/// How a binary-protocol value of `ty` reads: the string-like types travel as their text.
/// Whether a column of `ty` holds numbers.
fn is_number(ty: ColumnType) -> bool {
    use ColumnType::*;
    matches!(
        ty,
        MYSQL_TYPE_TINY
            | MYSQL_TYPE_SHORT
            | MYSQL_TYPE_LONG
            | MYSQL_TYPE_INT24
            | MYSQL_TYPE_LONGLONG
            | MYSQL_TYPE_YEAR
            | MYSQL_TYPE_FLOAT
            | MYSQL_TYPE_DOUBLE
            | MYSQL_TYPE_DECIMAL
            | MYSQL_TYPE_NEWDECIMAL
    )
}

fn binary_value_kind(ty: ColumnType) -> ValueKind {
    use ColumnType::*;
    match ty {
        MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET
        | MYSQL_TYPE_JSON
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_DECIMAL
        | MYSQL_TYPE_NEWDECIMAL => ValueKind::Text,
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_INT24
        | MYSQL_TYPE_LONGLONG | MYSQL_TYPE_YEAR => ValueKind::LeInteger,
        MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => ValueKind::LeFloat,
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_TIME
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2 => ValueKind::Inert,
        _ => ValueKind::Opaque,
    }
}

/// The wire size of a binary-protocol value of `ty` at the front of `buf`: fixed sizes,
/// a one-byte length for temporal types, a length-encoded string for the rest.
fn binary_value_len(ty: ColumnType, buf: &[u8]) -> Option<usize> {
    use ColumnType::*;
    let fixed = match ty {
        MYSQL_TYPE_NULL => Some(0),
        MYSQL_TYPE_TINY => Some(1),
        MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR => Some(2),
        MYSQL_TYPE_LONG | MYSQL_TYPE_INT24 | MYSQL_TYPE_FLOAT => Some(4),
        MYSQL_TYPE_LONGLONG | MYSQL_TYPE_DOUBLE => Some(8),
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_NEWDATE => {
            return Some(1 + usize::from(*buf.first()?));
        }
        _ => None,
    };
    match fixed {
        Some(n) => Some(n),
        None => {
            let mut rest = buf;
            let len = usize::try_from(lenenc_int(&mut rest)?).ok()?;
            (buf.len() - rest.len()).checked_add(len)
        }
    }
}

/// What a packet of a reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum What {
    /// An OK packet (the end of a statement without rows).
    Ok,
    /// An ERR packet.
    Err,
    /// The end of a result set's rows (EOF, or OK with the 0xFE header).
    EndOfRows,
    /// The server asks the client for a local file (`LOAD DATA LOCAL INFILE`).
    LocalInfile,
    /// `COM_STMT_PREPARE`'s answer: statement id, column and parameter counts, definitions.
    Prepared,
    /// Anything else forwarded as it came (`COM_STATISTICS`' text, `COM_FIELD_LIST`'s
    /// definitions, ...).
    Other,
}

#[derive(Debug, Clone)]
enum Inner {
    /// One packet.
    Packet {
        what: What,
        payload: Bytes,
        /// For `Ok` and `EndOfRows`: affected rows (or the result's row count) and status.
        rows: Option<u64>,
        status: u16,
        /// For `Err`: the errno as text, and the message.
        code: String,
        message: String,
    },
    /// Several packets that belong together (column count + definitions [+ EOF], or a
    /// prepare answer and its definitions).
    Group {
        what: What,
        packets: Vec<Bytes>,
        columns: Option<Arc<Columns>>,
    },
    /// A row.
    Row {
        payload: Bytes,
        columns: Arc<Columns>,
    },
}

/// One event of a MySQL reply.
#[derive(Debug, Clone)]
pub struct MyEvent {
    inner: Inner,
}

/// Status flags of an OK or EOF payload.
pub(crate) fn ok_status(payload: &[u8]) -> Option<(u64, u16)> {
    let (&header, mut rest) = payload.split_first()?;
    match header {
        0x00 | 0xfe if payload.len() >= 7 || header == 0x00 => {
            let affected = lenenc_int(&mut rest)?;
            let _last_insert = lenenc_int(&mut rest)?;
            let status = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?);
            Some((affected, status))
        }
        0xfe => {
            // Old EOF: warnings, status.
            let status = u16::from_le_bytes(rest.get(2..4)?.try_into().ok()?);
            Some((0, status))
        }
        _ => None,
    }
}

/// Errno, SQLSTATE and message of an ERR payload (protocol 4.1).
pub(crate) fn err_fields(payload: &[u8]) -> Option<(u16, String, String)> {
    let rest = payload.strip_prefix(&[0xff])?;
    let code = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?);
    let rest = &rest[2..];
    let (state, message) = match rest.strip_prefix(b"#") {
        Some(r) if r.len() >= 5 => (String::from_utf8_lossy(&r[..5]).into_owned(), &r[5..]),
        _ => ("HY000".to_owned(), rest),
    };
    Some((code, state, String::from_utf8_lossy(message).into_owned()))
}

/// An ERR payload.
pub(crate) fn err_payload(code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + message.len());
    out.push(0xff);
    out.extend_from_slice(&code.to_le_bytes());
    out.push(b'#');
    let state = state.as_bytes();
    out.extend((0..5).map(|i| state.get(i).copied().unwrap_or(b'0')));
    out.extend_from_slice(message.as_bytes());
    out
}

impl MyEvent {
    pub(crate) fn packet(what: What, payload: Bytes) -> MyEvent {
        let (mut rows, mut status, mut code, mut message) = (None, 0, String::new(), String::new());
        match what {
            What::Ok | What::EndOfRows => {
                if let Some((affected, s)) = ok_status(&payload) {
                    rows = Some(affected);
                    status = s;
                }
            }
            What::Err => {
                if let Some((errno, _state, msg)) = err_fields(&payload) {
                    code = errno.to_string();
                    message = msg;
                }
            }
            _ => {}
        }
        MyEvent {
            inner: Inner::Packet {
                what,
                payload,
                rows,
                status,
                code,
                message,
            },
        }
    }

    /// The end of a result set with `count` rows.
    pub(crate) fn end_of_rows(payload: Bytes, count: u64) -> MyEvent {
        let mut event = MyEvent::packet(What::EndOfRows, payload);
        if let Inner::Packet { rows, .. } = &mut event.inner {
            *rows = Some(count);
        }
        event
    }

    pub(crate) fn group(what: What, packets: Vec<Bytes>, columns: Option<Arc<Columns>>) -> MyEvent {
        MyEvent {
            inner: Inner::Group {
                what,
                packets,
                columns,
            },
        }
    }

    pub(crate) fn row(payload: Bytes, columns: Arc<Columns>) -> MyEvent {
        MyEvent {
            inner: Inner::Row { payload, columns },
        }
    }

    /// An ERR event made by the gateway.
    pub fn error(code: u16, state: &str, message: &str) -> MyEvent {
        MyEvent::packet(What::Err, Bytes::from(err_payload(code, state, message)))
    }

    /// What the event is (`None` for a row or a result's columns).
    pub fn what(&self) -> Option<What> {
        match &self.inner {
            Inner::Packet { what, .. } => Some(*what),
            Inner::Group { what, columns, .. } => columns.is_none().then_some(*what),
            Inner::Row { .. } => None,
        }
    }

    /// The server status flags of an OK or end-of-rows packet.
    pub fn status(&self) -> Option<StatusFlags> {
        match &self.inner {
            Inner::Packet {
                what: What::Ok | What::EndOfRows,
                status,
                ..
            } => Some(StatusFlags::from_bits_truncate(*status)),
            _ => None,
        }
    }

    /// The statement id of a `COM_STMT_PREPARE` answer.
    pub fn prepared_statement_id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Group {
                what: What::Prepared,
                packets,
                ..
            } => Some(u32::from_le_bytes(
                packets.first()?.get(1..5)?.try_into().ok()?,
            )),
            _ => None,
        }
    }

    /// The errno of an ERR packet.
    pub fn errno(&self) -> Option<u16> {
        match &self.inner {
            Inner::Packet {
                what: What::Err,
                payload,
                ..
            } => err_fields(payload).map(|(code, ..)| code),
            _ => None,
        }
    }

    /// The payloads of the event's packets, in order.
    pub fn payloads(&self) -> impl Iterator<Item = &Bytes> {
        let (one, many): (Option<&Bytes>, &[Bytes]) = match &self.inner {
            Inner::Packet { payload, .. } | Inner::Row { payload, .. } => (Some(payload), &[]),
            Inner::Group { packets, .. } => (None, packets),
        };
        one.into_iter().chain(many.iter())
    }

    fn binary_row_values<'a>(
        payload: &'a [u8],
        columns: &Columns,
    ) -> Option<Vec<Option<&'a [u8]>>> {
        let n = columns.columns.len();
        let bitmap_len = (n + 7 + 2) / 8;
        let rest = payload.strip_prefix(&[0x00])?;
        let bitmap = rest.get(..bitmap_len)?;
        let mut at = bitmap_len;
        let mut out = Vec::with_capacity(n);
        for (i, (_, ty)) in columns.columns.iter().enumerate() {
            let bit = i + 2;
            if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
                out.push(None);
                continue;
            }
            let len = binary_value_len(*ty, rest.get(at..)?)?;
            let end = at.checked_add(len)?;
            let whole = rest.get(at..end)?;
            at = end;
            // String-like values are read without their length prefix.
            let value = match binary_value_kind(*ty) {
                ValueKind::Text => {
                    let mut s = whole;
                    lenenc_str(&mut s)?
                }
                _ => whole,
            };
            out.push(Some(value));
        }
        (at == rest.len()).then_some(out)
    }
}

impl EventView for MyEvent {
    fn view(&self) -> EventKind<'_> {
        match &self.inner {
            Inner::Packet {
                what,
                rows,
                code,
                message,
                ..
            } => match what {
                What::Ok => EventKind::Complete {
                    tag: "OK",
                    rows: *rows,
                },
                What::EndOfRows => EventKind::Complete {
                    tag: "SELECT",
                    rows: *rows,
                },
                What::Err => EventKind::Error {
                    code,
                    message,
                    fatal: false,
                },
                _ => EventKind::Other,
            },
            Inner::Group {
                columns: Some(c), ..
            } => EventKind::Columns {
                count: c.columns.len(),
            },
            Inner::Group { .. } => EventKind::Other,
            Inner::Row { .. } => EventKind::Row,
        }
    }

    fn wire_len(&self) -> usize {
        self.payloads().map(|p| p.len() + 4).sum()
    }
}

impl RewriteEvent for MyEvent {
    fn columns(&self) -> Option<Vec<Column>> {
        match &self.inner {
            Inner::Group {
                columns: Some(c), ..
            } => Some(c.for_policy()),
            _ => None,
        }
    }

    fn shape(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Group {
                columns: Some(c), ..
            } => Some(&c.shape),
            _ => None,
        }
    }

    fn row_values(&self) -> Option<Vec<Option<&[u8]>>> {
        let Inner::Row { payload, columns } = &self.inner else {
            return None;
        };
        // A row that cannot be read is reported with no values: it never matches a
        // description, so a masking layer refuses it rather than let it pass unread.
        if columns.binary {
            return Some(MyEvent::binary_row_values(payload, columns).unwrap_or_default());
        }
        let mut rest = &payload[..];
        let mut out = Vec::with_capacity(columns.columns.len());
        while !rest.is_empty() {
            if rest[0] == 0xfb {
                out.push(None);
                rest = &rest[1..];
            } else {
                match lenenc_str(&mut rest) {
                    Some(v) => out.push(Some(v)),
                    None => return Some(Vec::new()),
                }
            }
        }
        if out.len() != columns.columns.len() {
            out.clear();
        }
        Some(out)
    }

    fn with_row_values(&self, values: &[Option<Cow<'_, [u8]>>]) -> Option<Self> {
        let Inner::Row { payload, columns } = &self.inner else {
            return None;
        };
        if values.len() != columns.columns.len() {
            return None;
        }
        let mut out = Vec::with_capacity(payload.len() + 16);
        if !columns.binary {
            for v in values {
                match v {
                    None => out.push(0xfb),
                    Some(v) => put_lenenc_str(&mut out, v),
                }
            }
        } else {
            // Values that keep their bytes are copied with their wire form; a changed value
            // of a string-like type gets a new length; NULL sets its bitmap bit.
            let old = MyEvent::binary_row_values(payload, columns)?;
            let n = values.len();
            let bitmap_len = (n + 7 + 2) / 8;
            out.push(0x00);
            let bitmap_at = out.len();
            out.resize(bitmap_at + bitmap_len, 0);
            for (i, (v, (_, ty))) in values.iter().zip(&columns.columns).enumerate() {
                let Some(v) = v else {
                    let bit = i + 2;
                    out[bitmap_at + bit / 8] |= 1 << (bit % 8);
                    continue;
                };
                match binary_value_kind(*ty) {
                    ValueKind::Text => put_lenenc_str(&mut out, v),
                    _ => {
                        // Not readable as text: only its original bytes can be written back.
                        if old.get(i).copied().flatten() != Some(&v[..]) {
                            return None;
                        }
                        out.extend_from_slice(v);
                    }
                }
            }
        }
        Some(MyEvent::row(Bytes::from(out), columns.clone()))
    }

    fn rewrite_text(&self, f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Option<Self> {
        let Inner::Packet {
            what: What::Err,
            payload,
            ..
        } = &self.inner
        else {
            return None;
        };
        let (code, state, message) = err_fields(payload)?;
        let masked = f(message.as_bytes())?;
        Some(MyEvent::error(
            code,
            &state,
            &String::from_utf8_lossy(&masked),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use mysql_common::proto::MySerialize;

    use super::*;

    fn def(name: &str, ty: ColumnType) -> Bytes {
        let col = mysql_common::packets::Column::new(ty)
            .with_schema(b"app")
            .with_table(b"c")
            .with_org_table(b"customers")
            .with_name(name.as_bytes())
            .with_org_name(name.as_bytes())
            .with_character_set(45);
        let mut out = Vec::new();
        col.serialize(&mut out);
        Bytes::from(out)
    }

    #[test]
    fn text_rows_read_and_rebuild() {
        let cols = Arc::new(
            Columns::parse(
                &[
                    def("id", ColumnType::MYSQL_TYPE_LONG),
                    def("email", ColumnType::MYSQL_TYPE_VAR_STRING),
                ],
                false,
                false,
            )
            .unwrap(),
        );
        assert_eq!(
            cols.columns[1].0.source.as_deref(),
            Some("app.customers.email")
        );
        let mut payload = Vec::new();
        put_lenenc_str(&mut payload, b"1");
        payload.push(0xfb);
        let row = MyEvent::row(Bytes::from(payload), cols.clone());
        assert_eq!(row.row_values().unwrap(), vec![Some(&b"1"[..]), None]);
        let new = row
            .with_row_values(&[
                Some(Cow::Borrowed(&b"1"[..])),
                Some(Cow::Borrowed(&b"x@y.z"[..])),
            ])
            .unwrap();
        assert_eq!(
            new.row_values().unwrap(),
            vec![Some(&b"1"[..]), Some(&b"x@y.z"[..])]
        );
    }

    #[test]
    fn binary_rows_read_and_rebuild() {
        let cols = Arc::new(
            Columns::parse(
                &[
                    def("id", ColumnType::MYSQL_TYPE_LONGLONG),
                    def("email", ColumnType::MYSQL_TYPE_VAR_STRING),
                    def("at", ColumnType::MYSQL_TYPE_DATETIME),
                    def("n", ColumnType::MYSQL_TYPE_LONG),
                ],
                true,
                false,
            )
            .unwrap(),
        );
        assert_eq!(cols.columns[0].0.kind, ValueKind::LeInteger);
        assert_eq!(cols.columns[2].0.kind, ValueKind::Inert);
        assert_eq!(cols.columns[1].0.kind, ValueKind::Text);
        // id = 7, email = "a@b.co", at = 2024-02-29 (4 bytes), n = NULL (bit 3 + 2 = 5).
        let mut payload = vec![0x00, 1 << 5];
        payload.extend_from_slice(&7u64.to_le_bytes());
        put_lenenc_str(&mut payload, b"a@b.co");
        payload.extend_from_slice(&[4, 0xe8, 0x07, 2, 29]);
        let row = MyEvent::row(Bytes::from(payload), cols.clone());
        let values = row.row_values().unwrap();
        assert_eq!(values[1], Some(&b"a@b.co"[..]));
        assert_eq!(values[3], None);
        let masked = row
            .with_row_values(&[
                values[0].map(Cow::Borrowed),
                Some(Cow::Borrowed(&b"***"[..])),
                None,
                None,
            ])
            .unwrap();
        let again = masked.row_values().unwrap();
        assert_eq!(
            again,
            vec![Some(&7u64.to_le_bytes()[..]), Some(&b"***"[..]), None, None]
        );
        // An opaque value cannot be replaced by other bytes.
        assert!(
            row.with_row_values(&[Some(Cow::Borrowed(&b"x"[..])), None, None, None])
                .is_none()
        );
        // Truncated rows are read as no values.
        let short = MyEvent::row(Bytes::from_static(&[0x00, 0x00, 1, 2]), cols);
        assert_eq!(short.row_values(), Some(Vec::new()));
    }

    #[test]
    fn errors_and_oks_are_read() {
        let e = MyEvent::error(1146, "42S02", "Table 'app.nope' doesn't exist");
        assert_eq!(e.errno(), Some(1146));
        assert!(matches!(e.view(), EventKind::Error { code: "1146", .. }));
        let ok = MyEvent::packet(What::Ok, Bytes::from_static(&[0, 3, 0, 2, 0, 0, 0]));
        assert!(matches!(
            ok.view(),
            EventKind::Complete {
                tag: "OK",
                rows: Some(3)
            }
        ));
        assert_eq!(ok.status().unwrap().bits(), 2);
        let eof = MyEvent::end_of_rows(Bytes::from_static(&[0xfe, 0, 0, 0x22, 0]), 5);
        assert!(matches!(
            eof.view(),
            EventKind::Complete { rows: Some(5), .. }
        ));
        assert_eq!(eof.status().unwrap().bits(), 0x22);
    }
}
