//! The PostgreSQL protocol 3 codec, both directions, zero-copy and pure (no I/O).
//!
//! [`decode_frame`] splits one tagged message off a buffer as a [`Frame`] (the original bytes,
//! which the relay forwards untouched). [`FrontendMessage`] and [`BackendMessage`] decode a
//! frame into fields (which keep `Bytes` slices of the frame) and encode back. Startup-phase
//! packets have no tag and are handled by [`StartupPacket`]. Every length read off the wire is
//! checked against a limit before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
/// The code of an SSLRequest.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// The code of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// The code of a CancelRequest.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Largest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Default largest tagged message accepted.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A decoding error: the peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A message claims a length over the limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The claimed length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message claims a length too small to be valid.
    #[error("invalid message length {0}")]
    BadLength(i64),
    /// A message's body does not match its type.
    #[error("malformed {what} message: {why}")]
    Malformed {
        /// The message type.
        what: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// A message type this side of the protocol never sends.
    #[error("unexpected message type {0:?}")]
    UnknownTag(char),
}

fn malformed(what: &'static str, why: &'static str) -> CodecError {
    CodecError::Malformed { what, why }
}

/// One tagged protocol message: its original bytes (tag, length, body).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame({:?}, {} bytes)",
            self.tag() as char,
            self.bytes.len()
        )
    }
}

impl Frame {
    /// Wrap bytes that hold exactly one message (as produced by an encoder).
    ///
    /// Returns `None` unless `bytes` is exactly one well-framed message.
    pub fn from_bytes(bytes: Bytes) -> Option<Frame> {
        if bytes.len() < 5 {
            return None;
        }
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        (len >= 4 && len as usize + 1 == bytes.len()).then_some(Frame { bytes })
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The body after the tag and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// The body as shared bytes.
    pub fn body_bytes(&self) -> Bytes {
        self.bytes.slice(5..)
    }

    /// The original bytes of the whole message.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The original bytes of the whole message.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// The total length (tag included) of the message at the start of `buf`, once its header is
/// there: `Ok(None)` means fewer than 5 bytes are buffered.
pub fn frame_len(buf: &[u8], max_message: usize) -> Result<Option<usize>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(CodecError::BadLength(len.into()));
    }
    let len = len as usize;
    if len > max_message {
        return Err(CodecError::TooLong {
            len,
            max: max_message,
        });
    }
    Ok(Some(len + 1))
}

/// Split one complete tagged message off the front of `buf`. `Ok(None)`: more bytes needed
/// (the buffer is reserved for the whole message only after its length passed the limit).
pub fn decode_frame(buf: &mut BytesMut, max_message: usize) -> Result<Option<Frame>, CodecError> {
    match frame_len(buf, max_message)? {
        Some(total) if buf.len() >= total => Ok(Some(Frame {
            bytes: buf.split_to(total).freeze(),
        })),
        Some(total) => {
            buf.reserve(total - buf.len());
            Ok(None)
        }
        None => Ok(None),
    }
}

// ---- body readers ---------------------------------------------------------------------

struct Reader<'a> {
    what: &'static str,
    whole: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, whole: &'a Bytes, start: usize) -> Self {
        Reader {
            what,
            whole,
            pos: start,
        }
    }
    fn rest(&self) -> &[u8] {
        &self.whole[self.pos..]
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .rest()
            .first()
            .ok_or(malformed(self.what, "truncated"))?;
        self.pos += 1;
        Ok(b)
    }
    fn i16(&mut self) -> Result<i16, CodecError> {
        let v = self
            .rest()
            .get(..2)
            .map(|mut b| b.get_i16())
            .ok_or(malformed(self.what, "truncated"))?;
        self.pos += 2;
        Ok(v)
    }
    fn i32(&mut self) -> Result<i32, CodecError> {
        let v = self
            .rest()
            .get(..4)
            .map(|mut b| b.get_i32())
            .ok_or(malformed(self.what, "truncated"))?;
        self.pos += 4;
        Ok(v)
    }
    fn count(&mut self, elem_size: usize) -> Result<usize, CodecError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(malformed(self.what, "negative count"));
        }
        let n = n as usize;
        // Each element needs at least `elem_size` bytes: refuse counts the body cannot hold
        // before allocating for them.
        if n * elem_size > self.rest().len() {
            return Err(malformed(self.what, "count exceeds message"));
        }
        Ok(n)
    }
    fn cstr(&mut self) -> Result<Bytes, CodecError> {
        let rest = self.rest();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(malformed(self.what, "unterminated string"))?;
        let s = self.whole.slice(self.pos..self.pos + nul);
        self.pos += nul + 1;
        Ok(s)
    }
    fn take(&mut self, n: usize) -> Result<Bytes, CodecError> {
        if self.rest().len() < n {
            return Err(malformed(self.what, "truncated"));
        }
        let s = self.whole.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(s)
    }
    fn value(&mut self) -> Result<Option<Bytes>, CodecError> {
        let len = self.i32()?;
        match len {
            -1 => Ok(None),
            l if l < 0 => Err(malformed(self.what, "negative value length")),
            l => self.take(l as usize).map(Some),
        }
    }
    /// A list of `i16`-counted elements of at least `elem_size` bytes each.
    fn list<T>(
        &mut self,
        elem_size: usize,
        mut read: impl FnMut(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Vec<T>, CodecError> {
        let n = self.count(elem_size)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(read(self)?);
        }
        Ok(items)
    }
    fn i16s(&mut self) -> Result<Vec<i16>, CodecError> {
        self.list(2, Self::i16)
    }
    fn u32s(&mut self) -> Result<Vec<u32>, CodecError> {
        self.list(4, |r| r.i32().map(|v| v as u32))
    }
    fn values(&mut self) -> Result<Vec<Option<Bytes>>, CodecError> {
        self.list(4, Self::value)
    }
    fn rest_bytes(&mut self) -> Bytes {
        let s = self.whole.slice(self.pos..);
        self.pos = self.whole.len();
        s
    }
    fn finish(self) -> Result<(), CodecError> {
        if self.pos == self.whole.len() {
            Ok(())
        } else {
            Err(malformed(self.what, "trailing bytes"))
        }
    }
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

fn put_value(buf: &mut BytesMut, v: &Option<Bytes>) {
    match v {
        None => buf.put_i32(-1),
        Some(v) => {
            buf.put_i32(v.len() as i32);
            buf.put_slice(v);
        }
    }
}

fn put_i16s(buf: &mut BytesMut, items: &[i16]) {
    buf.put_i16(items.len() as i16);
    for i in items {
        buf.put_i16(*i);
    }
}

fn put_u32s(buf: &mut BytesMut, items: &[u32]) {
    buf.put_i16(items.len() as i16);
    for i in items {
        buf.put_u32(*i);
    }
}

fn put_values(buf: &mut BytesMut, values: &[Option<Bytes>]) {
    buf.put_i16(values.len() as i16);
    for v in values {
        put_value(buf, v);
    }
}

/// Write a message: tag, a length placeholder, the body written by `body`, then the length.
fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

// ---- startup packets --------------------------------------------------------------------

/// An untagged packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartupPacket {
    /// StartupMessage: protocol version and parameters in order.
    Startup {
        /// Major protocol version.
        major: u16,
        /// Minor protocol version.
        minor: u16,
        /// Parameters (name, value).
        params: Vec<(String, String)>,
    },
    /// SSLRequest.
    SslRequest,
    /// GSSENCRequest.
    GssEncRequest,
    /// CancelRequest.
    CancelRequest {
        /// Process id.
        pid: i32,
        /// Secret key.
        key: i32,
    },
}

impl StartupPacket {
    /// Decode one startup packet off `buf` (`Ok(None)`: need more bytes).
    pub fn decode(buf: &mut BytesMut) -> Result<Option<StartupPacket>, CodecError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 8 {
            return Err(CodecError::BadLength(len.into()));
        }
        let len = len as usize;
        if len > MAX_STARTUP_PACKET {
            return Err(CodecError::TooLong {
                len,
                max: MAX_STARTUP_PACKET,
            });
        }
        if buf.len() < len {
            return Ok(None);
        }
        let whole = buf.split_to(len).freeze();
        let mut r = Reader::new("startup", &whole, 4);
        let code = r.i32()?;
        let packet = match code {
            SSL_REQUEST_CODE => StartupPacket::SslRequest,
            GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
            CANCEL_REQUEST_CODE => StartupPacket::CancelRequest {
                pid: r.i32()?,
                key: r.i32()?,
            },
            version => {
                let mut params = Vec::new();
                loop {
                    let name = r.cstr()?;
                    if name.is_empty() {
                        break;
                    }
                    let value = r.cstr()?;
                    params.push((utf8(name, "startup")?, utf8(value, "startup")?));
                }
                StartupPacket::Startup {
                    major: (version >> 16) as u16,
                    minor: (version & 0xffff) as u16,
                    params,
                }
            }
        };
        r.finish()?;
        Ok(Some(packet))
    }

    /// Encode the packet.
    pub fn encode(&self, buf: &mut BytesMut) {
        let at = buf.len();
        buf.put_i32(0);
        match self {
            StartupPacket::SslRequest => buf.put_i32(SSL_REQUEST_CODE),
            StartupPacket::GssEncRequest => buf.put_i32(GSSENC_REQUEST_CODE),
            StartupPacket::CancelRequest { pid, key } => {
                buf.put_i32(CANCEL_REQUEST_CODE);
                buf.put_i32(*pid);
                buf.put_i32(*key);
            }
            StartupPacket::Startup {
                major,
                minor,
                params,
            } => {
                buf.put_u16(*major);
                buf.put_u16(*minor);
                for (k, v) in params {
                    put_cstr(buf, k.as_bytes());
                    put_cstr(buf, v.as_bytes());
                }
                buf.put_u8(0);
            }
        }
        let len = (buf.len() - at) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn utf8(b: Bytes, what: &'static str) -> Result<String, CodecError> {
    String::from_utf8(b.to_vec()).map_err(|_| malformed(what, "invalid UTF-8"))
}

// ---- frontend ---------------------------------------------------------------------------

/// A tagged message from the client (after startup).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrontendMessage {
    /// Simple query.
    Query {
        /// SQL text (without the terminating NUL).
        sql: Bytes,
    },
    /// Parse.
    Parse {
        /// Statement name ("" = unnamed).
        name: Bytes,
        /// SQL text.
        query: Bytes,
        /// Parameter type OIDs.
        param_types: Vec<u32>,
    },
    /// Bind.
    Bind {
        /// Portal name.
        portal: Bytes,
        /// Statement name.
        statement: Bytes,
        /// Parameter format codes.
        param_formats: Vec<i16>,
        /// Parameter values (`None` = NULL).
        params: Vec<Option<Bytes>>,
        /// Result format codes.
        result_formats: Vec<i16>,
    },
    /// Describe a statement (`b'S'`) or portal (`b'P'`).
    Describe {
        /// `b'S'` or `b'P'`.
        target: u8,
        /// Name.
        name: Bytes,
    },
    /// Execute a portal.
    Execute {
        /// Portal name.
        portal: Bytes,
        /// Row limit (0 = none).
        max_rows: i32,
    },
    /// Close a statement (`b'S'`) or portal (`b'P'`).
    Close {
        /// `b'S'` or `b'P'`.
        target: u8,
        /// Name.
        name: Bytes,
    },
    /// Sync.
    Sync,
    /// Flush.
    Flush,
    /// COPY data.
    CopyData(Bytes),
    /// COPY done.
    CopyDone,
    /// COPY failed, with the client's message.
    CopyFail {
        /// Message.
        message: Bytes,
    },
    /// FunctionCall.
    FunctionCall {
        /// Function OID.
        oid: u32,
        /// Argument format codes.
        arg_formats: Vec<i16>,
        /// Arguments.
        args: Vec<Option<Bytes>>,
        /// Result format.
        result_format: i16,
    },
    /// Terminate.
    Terminate,
    /// PasswordMessage / SASLInitialResponse / SASLResponse / GSSResponse: the body, whose
    /// meaning depends on the authentication exchange in progress.
    Password(Bytes),
}

impl FrontendMessage {
    /// Decode a frame from the client.
    pub fn decode(frame: &Frame) -> Result<FrontendMessage, CodecError> {
        let whole = frame.as_bytes();
        let tag = frame.tag();
        let what = frontend_name(tag);
        let mut r = Reader::new(what, whole, 5);
        let msg = match tag {
            b'Q' => FrontendMessage::Query { sql: r.cstr()? },
            b'P' => {
                let name = r.cstr()?;
                let query = r.cstr()?;
                let param_types = r.u32s()?;
                FrontendMessage::Parse {
                    name,
                    query,
                    param_types,
                }
            }
            b'B' => {
                let portal = r.cstr()?;
                let statement = r.cstr()?;
                let param_formats = r.i16s()?;
                let params = r.values()?;
                let result_formats = r.i16s()?;
                FrontendMessage::Bind {
                    portal,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                }
            }
            b'D' | b'C' => {
                let target = r.u8()?;
                if target != b'S' && target != b'P' {
                    return Err(malformed(what, "target must be 'S' or 'P'"));
                }
                let name = r.cstr()?;
                if tag == b'D' {
                    FrontendMessage::Describe { target, name }
                } else {
                    FrontendMessage::Close { target, name }
                }
            }
            b'E' => FrontendMessage::Execute {
                portal: r.cstr()?,
                max_rows: r.i32()?,
            },
            b'S' => FrontendMessage::Sync,
            b'H' => FrontendMessage::Flush,
            b'd' => FrontendMessage::CopyData(r.rest_bytes()),
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail { message: r.cstr()? },
            b'F' => {
                let oid = r.i32()? as u32;
                let arg_formats = r.i16s()?;
                let args = r.values()?;
                FrontendMessage::FunctionCall {
                    oid,
                    arg_formats,
                    args,
                    result_format: r.i16()?,
                }
            }
            b'X' => FrontendMessage::Terminate,
            b'p' => FrontendMessage::Password(r.rest_bytes()),
            other => return Err(CodecError::UnknownTag(other as char)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Encode the message.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            FrontendMessage::Query { sql } => message(buf, b'Q', |b| put_cstr(b, sql)),
            FrontendMessage::Parse {
                name,
                query,
                param_types,
            } => message(buf, b'P', |b| {
                put_cstr(b, name);
                put_cstr(b, query);
                put_u32s(b, param_types);
            }),
            FrontendMessage::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            } => message(buf, b'B', |b| {
                put_cstr(b, portal);
                put_cstr(b, statement);
                put_i16s(b, param_formats);
                put_values(b, params);
                put_i16s(b, result_formats);
            }),
            FrontendMessage::Describe { target, name } => message(buf, b'D', |b| {
                b.put_u8(*target);
                put_cstr(b, name);
            }),
            FrontendMessage::Close { target, name } => message(buf, b'C', |b| {
                b.put_u8(*target);
                put_cstr(b, name);
            }),
            FrontendMessage::Execute { portal, max_rows } => message(buf, b'E', |b| {
                put_cstr(b, portal);
                b.put_i32(*max_rows);
            }),
            FrontendMessage::Sync => message(buf, b'S', |_| {}),
            FrontendMessage::Flush => message(buf, b'H', |_| {}),
            FrontendMessage::CopyData(data) => message(buf, b'd', |b| b.put_slice(data)),
            FrontendMessage::CopyDone => message(buf, b'c', |_| {}),
            FrontendMessage::CopyFail { message: m } => message(buf, b'f', |b| put_cstr(b, m)),
            FrontendMessage::FunctionCall {
                oid,
                arg_formats,
                args,
                result_format,
            } => message(buf, b'F', |b| {
                b.put_u32(*oid);
                put_i16s(b, arg_formats);
                put_values(b, args);
                b.put_i16(*result_format);
            }),
            FrontendMessage::Terminate => message(buf, b'X', |_| {}),
            FrontendMessage::Password(body) => message(buf, b'p', |b| b.put_slice(body)),
        }
    }
}

fn frontend_name(tag: u8) -> &'static str {
    match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        b'B' => "Bind",
        b'D' => "Describe",
        b'E' => "Execute",
        b'C' => "Close",
        b'S' => "Sync",
        b'H' => "Flush",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        b'F' => "FunctionCall",
        b'X' => "Terminate",
        b'p' => "PasswordMessage",
        _ => "frontend",
    }
}

// ---- backend ----------------------------------------------------------------------------

/// An authentication request from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthRequest {
    /// AuthenticationOk.
    Ok,
    /// AuthenticationCleartextPassword.
    CleartextPassword,
    /// AuthenticationMD5Password.
    Md5Password {
        /// Salt.
        salt: [u8; 4],
    },
    /// AuthenticationSASL with the mechanisms offered.
    Sasl {
        /// Mechanism names.
        mechanisms: Vec<Bytes>,
    },
    /// AuthenticationSASLContinue.
    SaslContinue(Bytes),
    /// AuthenticationSASLFinal.
    SaslFinal(Bytes),
    /// Another method (code, data): Kerberos, GSS, SSPI.
    Other {
        /// Method code.
        code: i32,
        /// The rest of the body.
        data: Bytes,
    },
}

/// A tagged message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendMessage {
    /// Authentication exchange.
    Authentication(AuthRequest),
    /// BackendKeyData.
    BackendKeyData {
        /// Process id.
        pid: i32,
        /// Secret key.
        key: i32,
    },
    /// ParameterStatus.
    ParameterStatus {
        /// Name.
        name: Bytes,
        /// Value.
        value: Bytes,
    },
    /// ReadyForQuery with the transaction status (`I`, `T` or `E`).
    ReadyForQuery {
        /// Transaction status byte.
        status: u8,
    },
    /// ErrorResponse: (field code, value) pairs.
    ErrorResponse {
        /// Fields.
        fields: Vec<(u8, Bytes)>,
    },
    /// NoticeResponse: (field code, value) pairs.
    NoticeResponse {
        /// Fields.
        fields: Vec<(u8, Bytes)>,
    },
    /// NotificationResponse.
    NotificationResponse {
        /// Sender's process id.
        pid: i32,
        /// Channel.
        channel: Bytes,
        /// Payload.
        payload: Bytes,
    },
    /// CommandComplete.
    CommandComplete {
        /// Tag.
        tag: Bytes,
    },
    /// RowDescription: the raw body (field count + fields), decoded on demand.
    RowDescription(Bytes),
    /// DataRow: column values (`None` = NULL).
    DataRow(Vec<Option<Bytes>>),
    /// EmptyQueryResponse.
    EmptyQueryResponse,
    /// ParseComplete.
    ParseComplete,
    /// BindComplete.
    BindComplete,
    /// CloseComplete.
    CloseComplete,
    /// NoData.
    NoData,
    /// PortalSuspended.
    PortalSuspended,
    /// ParameterDescription.
    ParameterDescription(Vec<u32>),
    /// CopyInResponse (`G`), CopyOutResponse (`H`) or CopyBothResponse (`W`).
    CopyResponse {
        /// `b'G'`, `b'H'` or `b'W'`.
        kind: u8,
        /// Overall format.
        format: u8,
        /// Column formats.
        column_formats: Vec<i16>,
    },
    /// CopyData.
    CopyData(Bytes),
    /// CopyDone.
    CopyDone,
    /// FunctionCallResponse.
    FunctionCallResponse(Option<Bytes>),
    /// NegotiateProtocolVersion.
    NegotiateProtocolVersion {
        /// Newest minor version supported.
        minor: i32,
        /// Options not recognised.
        options: Vec<Bytes>,
    },
}

fn backend_name(tag: u8) -> &'static str {
    match tag {
        b'R' => "Authentication",
        b'K' => "BackendKeyData",
        b'S' => "ParameterStatus",
        b'Z' => "ReadyForQuery",
        b'E' => "ErrorResponse",
        b'N' => "NoticeResponse",
        b'A' => "NotificationResponse",
        b'C' => "CommandComplete",
        b'T' => "RowDescription",
        b'D' => "DataRow",
        b'G' | b'H' | b'W' => "CopyResponse",
        b'V' => "FunctionCallResponse",
        b'v' => "NegotiateProtocolVersion",
        b't' => "ParameterDescription",
        _ => "backend",
    }
}

fn read_fields(r: &mut Reader<'_>) -> Result<Vec<(u8, Bytes)>, CodecError> {
    let mut fields = Vec::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            return Ok(fields);
        }
        fields.push((code, r.cstr()?));
    }
}

fn put_fields(b: &mut BytesMut, fields: &[(u8, Bytes)]) {
    for (code, value) in fields {
        b.put_u8(*code);
        put_cstr(b, value);
    }
    b.put_u8(0);
}

impl BackendMessage {
    /// Decode a frame from the server.
    pub fn decode(frame: &Frame) -> Result<BackendMessage, CodecError> {
        let whole = frame.as_bytes();
        let tag = frame.tag();
        let what = backend_name(tag);
        let mut r = Reader::new(what, whole, 5);
        let msg = match tag {
            b'R' => BackendMessage::Authentication(match r.i32()? {
                0 => AuthRequest::Ok,
                3 => AuthRequest::CleartextPassword,
                5 => {
                    let s = r.take(4)?;
                    AuthRequest::Md5Password {
                        salt: [s[0], s[1], s[2], s[3]],
                    }
                }
                10 => {
                    let mut mechanisms = Vec::new();
                    loop {
                        let m = r.cstr()?;
                        if m.is_empty() {
                            break;
                        }
                        mechanisms.push(m);
                    }
                    AuthRequest::Sasl { mechanisms }
                }
                11 => AuthRequest::SaslContinue(r.rest_bytes()),
                12 => AuthRequest::SaslFinal(r.rest_bytes()),
                code => AuthRequest::Other {
                    code,
                    data: r.rest_bytes(),
                },
            }),
            b'K' => BackendMessage::BackendKeyData {
                pid: r.i32()?,
                key: r.i32()?,
            },
            b'S' => BackendMessage::ParameterStatus {
                name: r.cstr()?,
                value: r.cstr()?,
            },
            b'Z' => {
                let status = r.u8()?;
                if !matches!(status, b'I' | b'T' | b'E') {
                    return Err(malformed(what, "unknown transaction status"));
                }
                BackendMessage::ReadyForQuery { status }
            }
            b'E' => BackendMessage::ErrorResponse {
                fields: read_fields(&mut r)?,
            },
            b'N' => BackendMessage::NoticeResponse {
                fields: read_fields(&mut r)?,
            },
            b'A' => BackendMessage::NotificationResponse {
                pid: r.i32()?,
                channel: r.cstr()?,
                payload: r.cstr()?,
            },
            b'C' => BackendMessage::CommandComplete { tag: r.cstr()? },
            b'T' => BackendMessage::RowDescription(r.rest_bytes()),
            b'D' => BackendMessage::DataRow(r.values()?),
            b'I' => BackendMessage::EmptyQueryResponse,
            b'1' => BackendMessage::ParseComplete,
            b'2' => BackendMessage::BindComplete,
            b'3' => BackendMessage::CloseComplete,
            b'n' => BackendMessage::NoData,
            b's' => BackendMessage::PortalSuspended,
            b't' => BackendMessage::ParameterDescription(r.u32s()?),
            b'G' | b'H' | b'W' => {
                let format = r.u8()?;
                let column_formats = r.i16s()?;
                BackendMessage::CopyResponse {
                    kind: tag,
                    format,
                    column_formats,
                }
            }
            b'd' => BackendMessage::CopyData(r.rest_bytes()),
            b'c' => BackendMessage::CopyDone,
            b'V' => BackendMessage::FunctionCallResponse(r.value()?),
            b'v' => {
                let minor = r.i32()?;
                let n = r.i32()?;
                if n < 0 || n as usize > r.rest().len() {
                    return Err(malformed(what, "bad option count"));
                }
                let mut options = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    options.push(r.cstr()?);
                }
                BackendMessage::NegotiateProtocolVersion { minor, options }
            }
            other => return Err(CodecError::UnknownTag(other as char)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Encode the message.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            BackendMessage::Authentication(auth) => message(buf, b'R', |b| match auth {
                AuthRequest::Ok => b.put_i32(0),
                AuthRequest::CleartextPassword => b.put_i32(3),
                AuthRequest::Md5Password { salt } => {
                    b.put_i32(5);
                    b.put_slice(salt);
                }
                AuthRequest::Sasl { mechanisms } => {
                    b.put_i32(10);
                    for m in mechanisms {
                        put_cstr(b, m);
                    }
                    b.put_u8(0);
                }
                AuthRequest::SaslContinue(d) => {
                    b.put_i32(11);
                    b.put_slice(d);
                }
                AuthRequest::SaslFinal(d) => {
                    b.put_i32(12);
                    b.put_slice(d);
                }
                AuthRequest::Other { code, data } => {
                    b.put_i32(*code);
                    b.put_slice(data);
                }
            }),
            BackendMessage::BackendKeyData { pid, key } => message(buf, b'K', |b| {
                b.put_i32(*pid);
                b.put_i32(*key);
            }),
            BackendMessage::ParameterStatus { name, value } => message(buf, b'S', |b| {
                put_cstr(b, name);
                put_cstr(b, value);
            }),
            BackendMessage::ReadyForQuery { status } => message(buf, b'Z', |b| b.put_u8(*status)),
            BackendMessage::ErrorResponse { fields } => {
                message(buf, b'E', |b| put_fields(b, fields))
            }
            BackendMessage::NoticeResponse { fields } => {
                message(buf, b'N', |b| put_fields(b, fields))
            }
            BackendMessage::NotificationResponse {
                pid,
                channel,
                payload,
            } => message(buf, b'A', |b| {
                b.put_i32(*pid);
                put_cstr(b, channel);
                put_cstr(b, payload);
            }),
            BackendMessage::CommandComplete { tag } => message(buf, b'C', |b| put_cstr(b, tag)),
            BackendMessage::RowDescription(body) => message(buf, b'T', |b| b.put_slice(body)),
            BackendMessage::DataRow(values) => message(buf, b'D', |b| put_values(b, values)),
            BackendMessage::EmptyQueryResponse => message(buf, b'I', |_| {}),
            BackendMessage::ParseComplete => message(buf, b'1', |_| {}),
            BackendMessage::BindComplete => message(buf, b'2', |_| {}),
            BackendMessage::CloseComplete => message(buf, b'3', |_| {}),
            BackendMessage::NoData => message(buf, b'n', |_| {}),
            BackendMessage::PortalSuspended => message(buf, b's', |_| {}),
            BackendMessage::ParameterDescription(types) => {
                message(buf, b't', |b| put_u32s(b, types))
            }
            BackendMessage::CopyResponse {
                kind,
                format,
                column_formats,
            } => message(buf, *kind, |b| {
                b.put_u8(*format);
                put_i16s(b, column_formats);
            }),
            BackendMessage::CopyData(d) => message(buf, b'd', |b| b.put_slice(d)),
            BackendMessage::CopyDone => message(buf, b'c', |_| {}),
            BackendMessage::FunctionCallResponse(v) => message(buf, b'V', |b| put_value(b, v)),
            BackendMessage::NegotiateProtocolVersion { minor, options } => {
                message(buf, b'v', |b| {
                    b.put_i32(*minor);
                    b.put_i32(options.len() as i32);
                    for o in options {
                        put_cstr(b, o);
                    }
                })
            }
        }
    }

    /// Encode into a standalone [`Frame`].
    pub fn to_frame(&self) -> Frame {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        Frame {
            bytes: buf.freeze(),
        }
    }
}

/// Severity and fields of an error or notice the gateway itself sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// ERROR: the command failed, the session goes on.
    Error,
    /// FATAL: the session ends.
    Fatal,
    /// NOTICE.
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
        }
    }
}

/// An ErrorResponse (or NoticeResponse) of the gateway's own, with SQLSTATE `code`.
pub fn error_message(severity: Severity, code: &str, message: &str) -> BackendMessage {
    let s = Bytes::from_static(severity.as_str().as_bytes());
    let fields = vec![
        (b'S', s.clone()),
        (b'V', s),
        (b'C', Bytes::copy_from_slice(code.as_bytes())),
        (b'M', Bytes::copy_from_slice(message.as_bytes())),
    ];
    match severity {
        Severity::Notice => BackendMessage::NoticeResponse { fields },
        _ => BackendMessage::ErrorResponse { fields },
    }
}

/// A field of an ErrorResponse or NoticeResponse body, by code (`b'C'` SQLSTATE, `b'M'`
/// message, `b'V'` severity), without allocating.
pub fn response_field(body: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&c, tail)) = rest.split_first() {
        if c == 0 {
            return None;
        }
        let nul = tail.iter().position(|&b| b == 0)?;
        if c == code {
            return Some(&tail[..nul]);
        }
        rest = &tail[nul + 1..];
    }
    None
}

/// The first NUL-terminated string of a body (CommandComplete tag, Query text).
pub fn first_cstr(body: &[u8]) -> Option<&[u8]> {
    body.iter().position(|&b| b == 0).map(|n| &body[..n])
}

#[cfg(test)]
mod tests;
