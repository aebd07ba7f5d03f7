//! The upstream connection at run time, and [`MyUpstream`], the innermost service of a
//! session's stack.
//!
//! The reply body the protocol server pulls is what reads the database socket (in the
//! session's task, nothing in between), so the gateway reads from the database only as fast
//! as the client takes the reply, and memory per session is bounded by the largest packet.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use mysql_common::constants::{CapabilityFlags, MariadbCapabilities, StatusFlags};
use portcullis_core::{Column, Error, Refusal, ReplyBody, Request, Response, Session, Upload};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use crate::command::{MyCommand, com};
use crate::event::{Columns, MyEvent, What};
use crate::packet::{Packet, decode_packet, encode_packet, lenenc_int, lenenc_str};
use crate::upstream::Connected;

const READ_CHUNK: usize = 64 * 1024;

/// Most columns a result may have (MySQL's own limit is 4096).
const MAX_COLUMNS: u64 = 65_535;

/// Session settings that change how SQL is read, re-read after a command that may have
/// changed them.
const SETTINGS_QUERY: &str = "SELECT @@sql_mode, @@character_set_client";

pub(crate) struct Conn {
    io: crate::BoxIo,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes were written since the last flush that finished (a TLS stream holds them until
    /// flushed, so a pending flush must be retried even with nothing new to write).
    unflushed: bool,
    caps: CapabilityFlags,
    /// MariaDB's extended metadata in column definitions.
    extended: bool,
    max_packet: usize,
    /// Open cursors' columns by statement id, for the rows `COM_STMT_FETCH` returns.
    cursors: HashMap<u32, Arc<Columns>>,
    /// The last result's column definitions and what they read as: a session runs the same
    /// queries over and over, so the same definitions usually come again.
    last_columns: Option<(bool, Vec<Bytes>, Arc<Columns>)>,
    failed: Option<String>,
    session: Option<Arc<Session>>,
}

fn lock(conn: &Mutex<Conn>) -> MutexGuard<'_, Conn> {
    conn.lock().unwrap_or_else(|e| e.into_inner())
}

fn lost(message: impl Into<String>) -> Error {
    Box::new(Refusal::UpstreamUnavailable {
        message: message.into(),
    })
}

impl Conn {
    fn poll_packet(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet, Error>> {
        loop {
            match decode_packet(&mut self.rbuf, self.max_packet) {
                Ok(Some(p)) => return Poll::Ready(Ok(p)),
                Ok(None) => {}
                Err(e) => {
                    let why = format!("the database sent an unreadable packet: {e}");
                    self.failed = Some(why.clone());
                    return Poll::Ready(Err(lost(why)));
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            match ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)) {
                Ok(0) => {
                    let why = "the database closed the connection".to_owned();
                    self.failed = Some(why.clone());
                    return Poll::Ready(Err(lost(why)));
                }
                Ok(_) => {}
                Err(e) => {
                    let why = format!("lost the connection to the database: {e}");
                    self.failed = Some(why.clone());
                    return Poll::Ready(Err(lost(why)));
                }
            }
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while !self.wbuf.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf)) {
                Ok(0) | Err(_) => {
                    let why = "lost the connection to the database while writing".to_owned();
                    self.failed = Some(why.clone());
                    return Poll::Ready(Err(lost(why)));
                }
                Ok(n) => {
                    self.wbuf.advance(n);
                    self.unflushed = true;
                }
            }
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx)).map_err(|e| {
            let why = format!("lost the connection to the database: {e}");
            self.failed = Some(why.clone());
            lost(why)
        })?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn deprecate_eof(&self) -> bool {
        self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
    }
}

/// The innermost service of a session's stack: sends each command to the database and
/// returns its reply as a [`MyReply`] body. Clones share the connection.
#[derive(Clone)]
pub struct MyUpstream {
    conn: Arc<Mutex<Conn>>,
}

impl std::fmt::Debug for MyUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyUpstream").finish_non_exhaustive()
    }
}

impl MyUpstream {
    pub(crate) fn new(connected: Connected, max_packet: usize) -> Self {
        MyUpstream {
            conn: Arc::new(Mutex::new(Conn {
                // Reads and writes count as progress for the stall detector.
                io: Box::new(portcullis_core::stall::Metered::new(connected.io)),
                rbuf: connected.rbuf,
                wbuf: BytesMut::with_capacity(16 * 1024),
                unflushed: false,
                caps: connected.caps,
                extended: connected
                    .mariadb_caps
                    .contains(MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA),
                max_packet,
                cursors: HashMap::new(),
                last_columns: None,
                failed: None,
                session: None,
            })),
        }
    }

    /// Keep `session`'s settings (`sql_mode`, `character_set_client`) in step with the
    /// database's, reading them now.
    pub(crate) async fn track_settings(&self, session: Arc<Session>) -> Result<(), Error> {
        lock(&self.conn).session = Some(session);
        let mut reply = MyReply::new(self.conn.clone(), &MyCommand::query(SETTINGS_QUERY), None);
        reply.internal = true;
        let mut reply = std::pin::pin!(reply);
        while let Some(event) = std::future::poll_fn(|cx| reply.as_mut().poll_event(cx)).await {
            event?;
        }
        Ok(())
    }
}

impl tower_service::Service<Request<MyCommand>> for MyUpstream {
    type Response = Response<MyReply>;
    type Error = Error;
    type Future = std::future::Ready<Result<Response<MyReply>, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<MyCommand>) -> Self::Future {
        let reply = MyReply::new(self.conn.clone(), &req.command, req.upload);
        std::future::ready(Ok(Response::new(reply)))
    }
}

#[derive(Debug)]
enum St {
    /// Send what is in the write buffer, then go to the state.
    Write(Box<St>),
    /// The first packet of a result.
    First,
    /// Column definitions of a result; `left` still to come.
    Defs {
        left: u64,
        packets: Vec<Bytes>,
    },
    /// The EOF after the definitions (without `CLIENT_DEPRECATE_EOF`).
    DefsEof {
        packets: Vec<Bytes>,
    },
    Rows {
        columns: Arc<Columns>,
        count: u64,
    },
    /// `COM_STMT_PREPARE`'s answer.
    Prepare,
    PrepareDefs {
        left: usize,
        packets: Vec<Bytes>,
    },
    /// `COM_FIELD_LIST`: definitions until EOF.
    FieldList,
    /// One packet answers.
    Single,
    /// `LOAD DATA LOCAL INFILE`: the client's file goes up.
    Upload,
    /// The session's events while idle.
    Watch,
    Done,
}

/// The reply to one command: the database's packets as [`MyEvent`]s, read as the client
/// takes them.
pub struct MyReply {
    conn: Arc<Mutex<Conn>>,
    com: u8,
    stmt: Option<u32>,
    upload: Option<Upload>,
    state: St,
    /// Sequence id of the last packet read from the database.
    seq: u8,
    binary: bool,
    /// Column definitions carry MariaDB's extended metadata.
    extended: bool,
    /// Read the session settings again once the reply is over.
    recheck: bool,
    /// An internal query of the gateway's (the settings): events are consumed, not returned.
    internal: bool,
    captured: Option<Vec<Option<String>>>,
    implied: Option<Arc<Columns>>,
}

impl std::fmt::Debug for MyReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyReply")
            .field("com", &self.com)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl MyReply {
    fn new(conn: Arc<Mutex<Conn>>, command: &MyCommand, upload: Option<Upload>) -> Self {
        let com = command.com();
        let stmt = command.statement_id();
        let mut guard = lock(&conn);
        let state = match com {
            com::SESSION_EVENTS => St::Watch,
            _ => {
                encode_packet(0, command.payload(), &mut guard.wbuf);
                let next = match com {
                    com::QUIT | com::STMT_CLOSE | com::STMT_SEND_LONG_DATA => St::Done,
                    com::QUERY | com::STMT_EXECUTE => St::First,
                    com::STMT_PREPARE => St::Prepare,
                    com::STMT_FETCH => {
                        let columns = stmt.and_then(|id| guard.cursors.get(&id).cloned());
                        St::Rows {
                            columns: columns.unwrap_or_else(|| Arc::new(Columns::unknown())),
                            count: 0,
                        }
                    }
                    com::FIELD_LIST => St::FieldList,
                    _ => St::Single,
                };
                St::Write(Box::new(next))
            }
        };
        if (com == com::STMT_CLOSE || com == com::STMT_RESET)
            && let Some(id) = stmt
        {
            guard.cursors.remove(&id);
        }
        if com == com::RESET_CONNECTION {
            guard.cursors.clear();
        }
        let implied = match &state {
            St::Write(next) => match &**next {
                St::Rows { columns, .. }
                    if com == com::STMT_FETCH && !columns.columns.is_empty() =>
                {
                    Some(columns.clone())
                }
                _ => None,
            },
            _ => None,
        };
        let extended = guard.extended;
        let recheck = guard.session.is_some()
            && (com == com::RESET_CONNECTION
                || (matches!(com, com::QUERY | com::STMT_EXECUTE) && command.changes_settings()));
        drop(guard);
        MyReply {
            conn,
            com,
            stmt,
            upload,
            state,
            seq: 0,
            binary: com == com::STMT_EXECUTE,
            extended,
            recheck,
            internal: false,
            captured: None,
            implied,
        }
    }

    /// Start the internal settings query once the reply proper is over.
    fn start_recheck(&mut self, conn: &mut Conn) {
        self.recheck = false;
        self.internal = true;
        self.com = com::QUERY;
        self.binary = false;
        self.captured = None;
        let q = MyCommand::query(SETTINGS_QUERY);
        encode_packet(0, q.payload(), &mut conn.wbuf);
        self.state = St::Write(Box::new(St::First));
    }

    fn finish_internal(&mut self, conn: &Conn) {
        if let (Some(session), Some(values)) = (&conn.session, self.captured.take()) {
            let mut values = values.into_iter();
            if let Some(Some(mode)) = values.next() {
                session.set_server_param("sql_mode", &mode);
            }
            if let Some(Some(charset)) = values.next() {
                session.set_server_param("character_set_client", &charset);
            }
        }
    }

    /// After an OK or end of rows: another result follows, or the reply is over.
    fn after(status: Option<StatusFlags>) -> St {
        match status {
            Some(s) if s.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS) => St::First,
            _ => St::Done,
        }
    }

    /// Handle one packet in the current state: the event to return, if any.
    fn on_packet(&mut self, conn: &mut Conn, p: Packet) -> Result<Option<MyEvent>, Error> {
        self.seq = p.last_seq;
        let payload = p.payload;
        let head = payload.first().copied();
        let bad = |what: &str| lost(format!("the database sent an unexpected packet ({what})"));
        let is_terminator = |conn: &Conn, payload: &Bytes| {
            payload.first() == Some(&0xfe)
                && if conn.deprecate_eof() {
                    payload.len() < 0xff_ffff
                } else {
                    payload.len() < 9
                }
        };
        // The hot path: a row of the result being read.
        if let St::Rows { columns, count } = &mut self.state
            && head != Some(0xff)
            && !is_terminator(conn, &payload)
        {
            if self.internal && self.captured.is_none() {
                self.captured = Some(text_values(&payload));
            }
            *count += 1;
            return Ok(Some(MyEvent::row(payload, columns.clone())));
        }
        let state = std::mem::replace(&mut self.state, St::Done);
        let event = match state {
            St::First => match head {
                Some(0x00) => {
                    let event = MyEvent::packet(What::Ok, payload);
                    self.state = MyReply::after(event.status());
                    event
                }
                Some(0xff) => MyEvent::packet(What::Err, payload),
                Some(0xfb) if self.com == com::QUERY => {
                    self.state = St::Upload;
                    MyEvent::packet(What::LocalInfile, payload)
                }
                Some(_) => {
                    let mut rest = &payload[..];
                    let n = lenenc_int(&mut rest).ok_or_else(|| bad("column count"))?;
                    if n == 0 || n > MAX_COLUMNS || !rest.is_empty() {
                        return Err(bad("column count"));
                    }
                    self.state = St::Defs {
                        left: n,
                        packets: vec![payload],
                    };
                    return Ok(None);
                }
                None => return Err(bad("empty packet")),
            },
            St::Defs { left, mut packets } => {
                if head == Some(0xff) {
                    return Ok(Some(MyEvent::packet(What::Err, payload)));
                }
                packets.push(payload);
                if left > 1 {
                    self.state = St::Defs {
                        left: left - 1,
                        packets,
                    };
                    return Ok(None);
                }
                if !conn.deprecate_eof() {
                    self.state = St::DefsEof { packets };
                    return Ok(None);
                }
                let columns = self.columns(conn, &packets[1..])?;
                self.state = St::Rows {
                    columns: columns.clone(),
                    count: 0,
                };
                MyEvent::group(What::Other, packets, Some(columns))
            }
            St::DefsEof { mut packets } => {
                if !is_terminator(conn, &payload) {
                    return Err(bad("no EOF after column definitions"));
                }
                let status = crate::event::ok_status(&payload)
                    .map(|(_, s)| StatusFlags::from_bits_truncate(s));
                let columns = self.columns(conn, &packets[1..])?;
                packets.push(payload);
                let cursor =
                    status.is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS));
                if cursor && self.com == com::STMT_EXECUTE {
                    // Rows come later, through COM_STMT_FETCH.
                    if let Some(id) = self.stmt {
                        conn.cursors.insert(id, columns.clone());
                    }
                    self.state = St::Done;
                } else {
                    self.state = St::Rows {
                        columns: columns.clone(),
                        count: 0,
                    };
                }
                MyEvent::group(What::Other, packets, Some(columns))
            }
            St::Rows { columns, count } => {
                if head == Some(0xff) {
                    MyEvent::packet(What::Err, payload)
                } else if is_terminator(conn, &payload) {
                    let event = MyEvent::end_of_rows(payload, count);
                    let status = event.status();
                    if self.com == com::STMT_EXECUTE
                        && status
                            .is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS))
                        && let Some(id) = self.stmt
                    {
                        conn.cursors.insert(id, columns);
                    }
                    self.state = if self.com == com::STMT_FETCH {
                        St::Done
                    } else {
                        MyReply::after(status)
                    };
                    event
                } else {
                    // Rows are handled above.
                    return Err(bad("row"));
                }
            }
            St::Prepare => match head {
                Some(0x00) => {
                    let g = |i: usize| payload.get(i).copied().unwrap_or(0);
                    let columns = usize::from(u16::from_le_bytes([g(5), g(6)]));
                    let params = usize::from(u16::from_le_bytes([g(7), g(8)]));
                    let eofs = if conn.deprecate_eof() {
                        0
                    } else {
                        usize::from(columns > 0) + usize::from(params > 0)
                    };
                    let left = columns + params + eofs;
                    if left == 0 {
                        MyEvent::group(What::Prepared, vec![payload], None)
                    } else {
                        self.state = St::PrepareDefs {
                            left,
                            packets: vec![payload],
                        };
                        return Ok(None);
                    }
                }
                Some(0xff) => MyEvent::packet(What::Err, payload),
                _ => return Err(bad("prepare answer")),
            },
            St::PrepareDefs { left, mut packets } => {
                packets.push(payload);
                if left > 1 {
                    self.state = St::PrepareDefs {
                        left: left - 1,
                        packets,
                    };
                    return Ok(None);
                }
                MyEvent::group(What::Prepared, packets, None)
            }
            St::FieldList => match head {
                Some(0xff) => MyEvent::packet(What::Err, payload),
                _ if is_terminator(conn, &payload) => MyEvent::packet(What::EndOfRows, payload),
                _ => {
                    self.state = St::FieldList;
                    MyEvent::packet(What::Other, payload)
                }
            },
            St::Single => match head {
                Some(0x00) => MyEvent::packet(What::Ok, payload),
                Some(0xff) => MyEvent::packet(What::Err, payload),
                _ => MyEvent::packet(What::Other, payload),
            },
            St::Watch => {
                // Something arrived while the client was idle: the database ends the session
                // (an error before closing, e.g. a wait_timeout), or breaks the protocol.
                conn.failed = Some("the database ended the session".into());
                match head {
                    Some(0xff) => MyEvent::packet(What::Err, payload),
                    _ => MyEvent::error(
                        1927,
                        "08S01",
                        "Lost connection: the database sent an unexpected packet while the session was idle",
                    ),
                }
            }
            St::Write(_) | St::Upload | St::Done => return Err(bad("no reply expected")),
        };
        Ok(Some(event))
    }

    fn columns(&self, conn: &mut Conn, defs: &[Bytes]) -> Result<Arc<Columns>, Error> {
        if let Some((binary, last, columns)) = &conn.last_columns
            && *binary == self.binary
            && last.as_slice() == defs
        {
            return Ok(columns.clone());
        }
        let columns = Columns::parse(defs, self.binary, self.extended)
            .map(Arc::new)
            .ok_or_else(|| lost("the database sent an unreadable column definition"))?;
        conn.last_columns = Some((self.binary, defs.to_vec(), columns.clone()));
        Ok(columns)
    }
}

/// A text row's values as strings (for the gateway's own queries).
fn text_values(payload: &[u8]) -> Vec<Option<String>> {
    let mut rest = payload;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest[0] == 0xfb {
            out.push(None);
            rest = &rest[1..];
        } else {
            match lenenc_str(&mut rest) {
                Some(v) => out.push(Some(String::from_utf8_lossy(v).into_owned())),
                None => break,
            }
        }
    }
    out
}

impl ReplyBody for MyReply {
    type Event = MyEvent;

    fn poll_event(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<MyEvent, Error>>> {
        let this = self.get_mut();
        let conn_arc = this.conn.clone();
        let mut conn = lock(&conn_arc);
        loop {
            if let Some(why) = &conn.failed
                && !matches!(this.state, St::Done)
            {
                let why = why.clone();
                this.state = St::Done;
                this.recheck = false;
                if this.com == com::SESSION_EVENTS {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(lost(why))));
            }
            match &mut this.state {
                St::Write(_) => {
                    if let Err(e) = ready!(conn.poll_flush(cx)) {
                        this.state = St::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    if let St::Write(next) = std::mem::replace(&mut this.state, St::Done) {
                        this.state = *next;
                    }
                }
                St::Upload => {
                    // The client's file, chunk by chunk (an empty chunk ends it); without an
                    // upload the database gets an empty file.
                    let chunk = match &mut this.upload {
                        Some(upload) => match upload.poll_chunk(cx) {
                            Poll::Ready(Some(chunk)) => chunk,
                            Poll::Ready(None) => {
                                // The file ended without its last (empty) packet: the client
                                // broke it off. Ending it here would make the server keep
                                // the rows read so far; instead the statement is abandoned
                                // (the session ends, and the server, whose read of the file
                                // fails when the connection closes, rolls it back).
                                this.state = St::Done;
                                return Poll::Ready(Some(Err(lost(
                                    "the client's LOAD DATA LOCAL INFILE file was cut off: the statement is abandoned, not completed",
                                ))));
                            }
                            Poll::Pending => {
                                if !conn.wbuf.is_empty() || conn.unflushed {
                                    if let Err(e) = ready!(conn.poll_flush(cx)) {
                                        this.state = St::Done;
                                        return Poll::Ready(Some(Err(e)));
                                    }
                                    continue;
                                }
                                return Poll::Pending;
                            }
                        },
                        None => Bytes::new(),
                    };
                    this.seq = this.seq.wrapping_add(1);
                    let end = chunk.is_empty();
                    this.seq = encode_packet(this.seq, &chunk, &mut conn.wbuf).wrapping_sub(1);
                    if end {
                        this.upload = None;
                        this.state = St::Write(Box::new(St::First));
                    } else if conn.wbuf.len() >= READ_CHUNK
                        && let Err(e) = ready!(conn.poll_flush(cx))
                    {
                        this.state = St::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                St::Done => {
                    if this.recheck {
                        this.start_recheck(&mut conn);
                        continue;
                    }
                    if this.internal {
                        this.finish_internal(&conn);
                        this.internal = false;
                    }
                    return Poll::Ready(None);
                }
                _ => {
                    let packet = match ready!(conn.poll_packet(cx)) {
                        Ok(p) => p,
                        Err(e) => {
                            this.state = St::Done;
                            this.recheck = false;
                            if this.com == com::SESSION_EVENTS {
                                return Poll::Ready(Some(Ok(MyEvent::error(
                                    1927,
                                    "08S01",
                                    "Lost connection: the database closed the session",
                                ))));
                            }
                            return Poll::Ready(Some(Err(e)));
                        }
                    };
                    match this.on_packet(&mut conn, packet) {
                        Ok(Some(event)) => {
                            if this.internal {
                                continue;
                            }
                            return Poll::Ready(Some(Ok(event)));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            conn.failed = Some(e.to_string());
                            this.state = St::Done;
                            this.recheck = false;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
            }
        }
    }

    fn implied_columns(&self) -> Option<Vec<Column>> {
        self.implied.as_ref().map(|c| c.for_policy())
    }
}

impl Future for MyReply {
    type Output = ();
    /// Drain the reply (what a dropped command still owes the connection).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match ready!(self.as_mut().poll_event(cx)) {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Poll::Ready(()),
            }
        }
    }
}
