use std::borrow::Cow;

/// How a column's values read in the format they travel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueKind {
    /// Text: the bytes are the value's characters (a text-format value of any type, or a
    /// binary-format value of a text-like type).
    Text,
    /// A binary-format JSON value with a one-byte version prefix (PostgreSQL `jsonb`): the
    /// rest is text.
    PrefixedText,
    /// A binary-format integer (two, four or eight bytes, big-endian).
    Integer,
    /// A binary-format IEEE float (four or eight bytes, big-endian).
    Float,
    /// A PostgreSQL binary `numeric`.
    Numeric,
    /// A PostgreSQL binary `inet` or `cidr`.
    Inet,
    /// A PostgreSQL binary array: its element type is in the value.
    PgArray,
    /// A PostgreSQL binary record (`ROW(…)`): each field's type is in the value.
    PgRecord,
    /// A binary-protocol integer, little-endian (MySQL), one to eight bytes (read both as
    /// signed and as unsigned).
    LeInteger,
    /// A binary-protocol IEEE float, little-endian (MySQL `FLOAT`, `DOUBLE`).
    LeFloat,
    /// Bytes in text form: `\x` and two hex digits per byte (PostgreSQL `bytea`'s text
    /// output): the detectors read the bytes, and a masked value is written back in the same
    /// form. A value not in that form (`bytea_output = escape`) reads as text.
    HexText,
    /// A binary value of a type no built-in detector reads (a date, a time, a boolean, a
    /// UUID): passed unless a custom detector (which may match anything) is on.
    Inert,
    /// Anything else in binary format: not readable, so masked whole (NULL) wherever
    /// masking applies.
    Opaque,
}

impl ValueKind {
    /// How a PostgreSQL binary-format value of type `oid` reads (built-in types only: a type
    /// created in the database has an OID the gateway does not know, so it is opaque).
    pub fn postgres_binary(oid: u32) -> ValueKind {
        match oid {
            // text, varchar, bpchar, name, char, json, xml, unknown, bytea (raw bytes)
            25 | 1043 | 1042 | 19 | 18 | 114 | 142 | 705 | 17 => ValueKind::Text,
            // jsonb, jsonpath: a version byte, then text
            3802 | 4072 => ValueKind::PrefixedText,
            // int2, int4, int8, oid, xid, cid, money, regproc, regclass, regtype, …
            21 | 23 | 20 | 26 | 28 | 29 | 790 | 24 | 2202 | 2203 | 2204 | 2205 | 2206 | 4089
            | 4096 | 3734 | 3769 => ValueKind::Integer,
            700 | 701 => ValueKind::Float,
            1700 => ValueKind::Numeric,
            869 | 650 => ValueKind::Inet,
            // bool, date, time, timetz, timestamp, timestamptz, interval, uuid, macaddr,
            // macaddr8
            16 | 1082 | 1083 | 1266 | 1114 | 1184 | 1186 | 2950 | 829 | 774 => ValueKind::Inert,
            // record
            2249 => ValueKind::PgRecord,
            // arrays of the types above (and of record)
            1009 | 1015 | 1014 | 1003 | 1002 | 199 | 143 | 1001 | 3807 | 4073 | 1005 | 1007
            | 1016 | 1028 | 1021 | 1022 | 1231 | 1041 | 651 | 1000 | 1182 | 1183 | 1270 | 1115
            | 1185 | 1187 | 2951 | 2287 => ValueKind::PgArray,
            _ => ValueKind::Opaque,
        }
    }
}

/// One column of a result, as the protocol describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Column {
    /// The output label (`email`, or `e` for `email AS e`).
    pub label: String,
    /// The source column as `[schema.]table.column`, when the protocol (or a catalog lookup)
    /// knows it; `None` for computed expressions.
    pub source: Option<String>,
    /// The source's table may not be a base table (MySQL names a derived table, a CTE or a
    /// view the same way as a table): a rule naming a table's column then matches by the
    /// column's name alone (masking more rather than less).
    pub source_uncertain: bool,
    /// The value may be a whole row (a record, a table's row type, a type created in the
    /// database): column rules cannot be checked on its fields, so under any column rule a
    /// value that reads as a row is masked whole.
    pub composite: bool,
    /// For a row type the catalog resolved (a table's row type): the source of each field,
    /// in order (`schema.table.column`), so column rules apply to the row's fields.
    pub fields: Option<std::sync::Arc<[String]>>,
    /// How values read.
    pub kind: ValueKind,
    /// A text value the client reads as a number (an integer, float or decimal column in
    /// text form): a masked value must stay a number, so one that cannot is NULL.
    pub number: bool,
    /// A text value the client reads as JSON (PostgreSQL `json`/`jsonb`, MySQL `JSON`):
    /// masked as JSON (values inside it), and NULL when masked whole.
    pub json: bool,
}

impl Column {
    /// A column labelled `label`, values read as `kind`, source unknown.
    pub fn new(label: impl Into<String>, kind: ValueKind) -> Self {
        Column {
            label: label.into(),
            source: None,
            source_uncertain: false,
            composite: false,
            fields: None,
            kind,
            number: false,
            json: false,
        }
    }

    /// Its values are JSON documents to the client (see [`Column::json`]).
    pub fn json(mut self) -> Self {
        self.json = true;
        self
    }

    /// Its text values are numbers to the client (see [`Column::number`]).
    pub fn number(mut self) -> Self {
        self.number = true;
        self
    }

    /// With its source column.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Its values may be whole rows (see [`Column::composite`]).
    pub fn composite(mut self) -> Self {
        self.composite = true;
        self
    }

    /// With a source whose table may be a derived table, a CTE or a view.
    pub fn with_uncertain_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self.source_uncertain = true;
        self
    }
}

/// Reply events a masking layer can read and rewrite, whatever the protocol. Every method
/// has a default that says "not this kind of event", so a protocol implements what it has.
pub trait RewriteEvent: Sized {
    /// On a result-shape event: its columns.
    fn columns(&self) -> Option<Vec<Column>> {
        None
    }

    /// On a description of columns: bytes that identify the result's shape, so that a layer
    /// may reuse what it derived from an identical description earlier in the session
    /// (PostgreSQL: the RowDescription's body — names, table OIDs, attribute numbers, types,
    /// formats). `None` when the protocol has no such key.
    fn shape(&self) -> Option<&[u8]> {
        None
    }

    /// On a row: its values in order (`None` = NULL).
    fn row_values(&self) -> Option<Vec<Option<&[u8]>>> {
        None
    }

    /// This row with `values` instead (same count, same order).
    fn with_row_values(&self, _values: &[Option<Cow<'_, [u8]>>]) -> Option<Self> {
        None
    }

    /// Free text the event carries besides rows — an error's or notice's message, detail and
    /// hint, a notification's payload, a chunk of COPY text — rewritten by `f` (which returns
    /// `None` when it changes nothing). `None` when nothing changed.
    fn rewrite_text(&self, _f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Option<Self> {
        None
    }

    /// Whether the event starts output the layer cannot read as text or rows (PostgreSQL
    /// binary `COPY`): a masking layer must then refuse rather than pass it through.
    fn opaque_output(&self) -> bool {
        false
    }

    /// On the start of a reply that carries a body (HTTP response headers): what the body
    /// is — its media type (`application/json`, lower case, without parameters) and content
    /// encoding (`None` for identity). `None` when the event starts no body.
    fn body_start(&self) -> Option<BodyStart<'_>> {
        None
    }

    /// On a piece of a body started by [`RewriteEvent::body_start`]: its bytes. The end of the
    /// body is a piece too (usually empty) with `last = true`, so a layer that holds bytes back
    /// (a value split across pieces) can write them out.
    fn body_piece(&self) -> Option<BodyPiece<'_>> {
        None
    }

    /// This piece with `bytes` instead.
    fn with_body_piece(&self, _bytes: bytes::Bytes) -> Option<Self> {
        None
    }
}

/// What a reply's body is ([`RewriteEvent::body_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodyStart<'a> {
    /// The media type, lower case, without parameters (`application/json`); `None` when the
    /// reply does not say.
    pub media_type: Option<&'a str>,
    /// The content encoding (`gzip`, `br`, ...); `None` for identity.
    pub encoding: Option<&'a str>,
}

impl<'a> BodyStart<'a> {
    /// A body of `media_type`, encoded with `encoding`.
    pub fn new(media_type: Option<&'a str>, encoding: Option<&'a str>) -> Self {
        BodyStart {
            media_type,
            encoding,
        }
    }

    /// Whether the media type is JSON (`application/json`, `application/*+json`,
    /// `application/x-ndjson`).
    pub fn is_json(&self) -> bool {
        self.media_type.is_some_and(|t| {
            t == "application/json"
                || t == "application/x-ndjson"
                || (t.starts_with("application/") && t.ends_with("+json"))
        })
    }
}

/// A piece of a body ([`RewriteEvent::body_piece`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodyPiece<'a> {
    /// Its bytes.
    pub bytes: &'a [u8],
    /// The body ends with this piece.
    pub last: bool,
}

impl<'a> BodyPiece<'a> {
    /// A piece.
    pub fn new(bytes: &'a [u8], last: bool) -> Self {
        BodyPiece { bytes, last }
    }
}

/// How `COPY`-style output writes its rows, as the statement asked
/// ([`crate::ReplyBody::copy_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CopyLayout {
    /// PostgreSQL's text format: tab-separated, `\N` for NULL, backslash escapes; one row
    /// per message; `header`: the first row holds the column names.
    Text {
        /// A header row comes first.
        header: bool,
    },
    /// CSV: comma-separated, `"` quoting, an unquoted empty field for NULL.
    Csv {
        /// A header row comes first.
        header: bool,
    },
    /// PostgreSQL's binary COPY format.
    Binary,
    /// Options (delimiter, NULL string, quoting…) a layer cannot be sure to read right.
    Custom,
}

/// Masks personal data in free text (statement text and parameters recorded in the audit
/// trail or shown in approval listings): returns the masked text, or `None` when there is
/// nothing to mask. Built by a masking layer from the same detectors as results.
#[derive(Clone)]
pub struct TextRedactor {
    values: std::sync::Arc<RedactFn>,
    statements: Option<std::sync::Arc<StatementFn>>,
}

/// The function inside a [`TextRedactor`].
type RedactFn = dyn Fn(&str) -> Option<String> + Send + Sync;
/// The function a [`TextRedactor`] masks statement text with, given the session's protocol.
type StatementFn = dyn Fn(crate::Protocol, &str) -> Option<String> + Send + Sync;

impl TextRedactor {
    /// A redactor calling `f` (for statement text too).
    pub fn new(f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        TextRedactor {
            values: std::sync::Arc::new(f),
            statements: None,
        }
    }

    /// Statement text is masked with `f` instead, given the session's protocol: a statement
    /// must stay readable as what it runs (literals and comments masked, never the code
    /// around them).
    pub fn with_statements(
        mut self,
        f: impl Fn(crate::Protocol, &str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.statements = Some(std::sync::Arc::new(f));
        self
    }

    /// `text` (a value: a parameter) masked, or `None` when nothing in it is personal data.
    pub fn redact(&self, text: &str) -> Option<String> {
        (self.values)(text)
    }

    /// `text` (one statement of a `protocol` session) masked, or `None` when nothing in it
    /// is personal data.
    pub fn redact_statement(&self, protocol: crate::Protocol, text: &str) -> Option<String> {
        match &self.statements {
            Some(f) => f(protocol, text),
            None => (self.values)(text),
        }
    }
}

impl std::fmt::Debug for TextRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TextRedactor").finish_non_exhaustive()
    }
}
