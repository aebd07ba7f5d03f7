//! The upstream connection at run time, and [`PgUpstream`], the innermost service of a
//! session's stack.
//!
//! Everything runs in the session's task: the reply body that the protocol server pulls is
//! what reads the database socket, so nothing is read faster than the client takes it, and no
//! message crosses a channel or another task. Writes of pipelined units queue in order
//! behind any COPY upload still streaming.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use portcullis_core::{
    CommandKind, CommandView, Error, EventKind, EventView, Refusal, ReplyBody, Request, Response,
    Upload,
};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;
use tracing::warn;

use crate::catalog::Catalog;
use crate::codec::{Frame, FrontendMessage, decode_frame, first_cstr, response_field};
use crate::command::{PgCommand, Slot};
use crate::rows::{Field, columns, fields};
use crate::upstream::Connected;
use crate::upstream::UpstreamConfig;
use portcullis_core::io::BoxIo;

const READ_CHUNK: usize = 64 * 1024;

/// The upstream ended the session or failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The database closed the connection after sending a FATAL error (already forwarded).
    #[error("the database ended the session")]
    EndedAfterFatal,
    /// The connection broke or the database closed it without a word.
    #[error("lost the connection to the database: {0}")]
    Lost(String),
    /// The database sent something that breaks the protocol.
    #[error("the database sent an invalid message: {0}")]
    Protocol(String),
}

impl UpstreamError {
    fn into_error(self) -> Error {
        match self {
            UpstreamError::EndedAfterFatal => Box::new(self),
            other => Box::new(Refusal::UpstreamUnavailable {
                message: other.to_string(),
            }),
        }
    }
}

enum Segment {
    Data(BytesMut),
    Upload(Upload),
}

/// What a slot of a unit refers to, for the descriptions kept for masking.
#[derive(Debug, Clone)]
enum Detail {
    /// `Describe` of a prepared statement: its RowDescription is remembered.
    DescribeStatement(Bytes),
    /// `Describe` of a portal: its RowDescription (with formats) is remembered.
    DescribePortal(Bytes),
    /// `Execute` of a portal.
    Execute(Bytes),
    /// Anything else.
    Other,
}

struct Unit {
    id: u64,
    slots: VecDeque<Slot>,
    /// One per slot, in the same order.
    details: VecDeque<Detail>,
    /// Progress inside the current `DescribeStatement` slot (ParameterDescription seen).
    described: bool,
    /// The reply body was dropped before the end: discard the rest of its reply.
    abandoned: bool,
    /// The unit came with an upload (it may start `COPY … FROM STDIN`).
    upload: bool,
}

struct Conn {
    io: BoxIo,
    rbuf: BytesMut,
    writes: VecDeque<Segment>,
    units: VecDeque<Unit>,
    next_id: u64,
    /// After an error in an extended-protocol batch the server skips to the next Sync.
    skipping: bool,
    failed: Option<UpstreamError>,
    saw_fatal: bool,
    max_message: usize,
    idle_waker: Option<Waker>,
    /// Bytes were written since the last flush that finished.
    unflushed: bool,
    /// Ids of units whose reply has fully arrived (the newest few).
    finished_below: u64,
    /// What the database described, so rows of a prepared statement executed again (which
    /// come with no RowDescription) can still be read by a masking layer.
    described: Described,
    /// RowDescription bodies whose tables' sources were already looked up: the same result
    /// shape again needs no catalog check (a session runs the same queries over and over).
    resolved_shapes: HashSet<Bytes>,
}

/// Most result shapes remembered as resolved per session.
const MAX_RESOLVED_SHAPES: usize = 256;

/// Most statements and portals whose descriptions are kept per session.
const MAX_DESCRIBED: usize = 10_000;

#[derive(Default)]
struct Described {
    /// Statement name → its fields (formats as described: text).
    statements: HashMap<Bytes, Vec<Field>>,
    /// Portal name → (statement name, result formats from Bind).
    portals: HashMap<Bytes, (Bytes, Vec<i16>)>,
    /// Portal name → its fields as described with their formats.
    portal_fields: HashMap<Bytes, Vec<Field>>,
}

impl Described {
    fn bound(&mut self, portal: Bytes, statement: Bytes, formats: Vec<i16>) {
        if self.portals.len() >= MAX_DESCRIBED {
            self.portals.clear();
            self.portal_fields.clear();
        }
        self.portal_fields.remove(&portal);
        self.portals.insert(portal, (statement, formats));
    }

    fn columns(
        &self,
        portal: &[u8],
        sources: Option<&Sources>,
    ) -> Option<Vec<portcullis_core::Column>> {
        let (fields, cols) = match self.portal_fields.get(portal) {
            Some(fields) => (fields, columns(fields, None)),
            None => {
                let (statement, formats) = self.portals.get(portal)?;
                let fields = self.statements.get(statement)?;
                (fields, columns(fields, Some(formats)))
            }
        };
        Some(match sources {
            Some(s) => s.add(fields, cols),
            None => cols,
        })
    }
}

/// The slot details of a unit's frames, and what its Binds bind.
fn details(command: &PgCommand, described: &mut Described) -> VecDeque<Detail> {
    let mut out = VecDeque::new();
    for frame in command.frames() {
        let body = frame.body();
        let name = || {
            Bytes::copy_from_slice(
                first_cstr(body.get(1..).unwrap_or_default()).unwrap_or_default(),
            )
        };
        match frame.tag() {
            b'D' => out.push_back(if body.first() == Some(&b'S') {
                Detail::DescribeStatement(name())
            } else {
                Detail::DescribePortal(name())
            }),
            b'E' => out.push_back(Detail::Execute(Bytes::copy_from_slice(
                first_cstr(body).unwrap_or_default(),
            ))),
            b'B' => {
                if let Ok(FrontendMessage::Bind {
                    portal,
                    statement,
                    result_formats,
                    ..
                }) = FrontendMessage::decode(&frame)
                {
                    described.bound(portal, statement, result_formats);
                }
                out.push_back(Detail::Other);
            }
            b'C' => {
                if body.first() == Some(&b'S') {
                    described.statements.remove(&name()[..]);
                }
                out.push_back(Detail::Other);
            }
            b'P' | b'S' | b'Q' | b'F' => out.push_back(Detail::Other),
            _ => {}
        }
    }
    out
}

/// The innermost service of a PostgreSQL session: sends each command unit to the database
/// and returns a body that streams the database's reply.
///
/// Clones share the connection.
#[derive(Clone)]
pub struct PgUpstream {
    conn: Arc<Mutex<Conn>>,
    sources: Option<Sources>,
}

/// A catalog lookup in flight: tables' names, or (binary COPY) the copied columns.
type Lookup =
    Pin<Box<dyn Future<Output = Result<Option<Vec<portcullis_core::Column>>, String>> + Send>>;

/// Where result columns' sources are looked up (when the listener resolves them).
#[derive(Clone)]
pub(crate) struct Sources {
    pub(crate) catalog: Catalog,
    pub(crate) config: Arc<UpstreamConfig>,
    pub(crate) max_message: usize,
    pub(crate) database: String,
}

impl Sources {
    fn add(
        &self,
        fields: &[Field],
        mut cols: Vec<portcullis_core::Column>,
    ) -> Vec<portcullis_core::Column> {
        for (col, field) in cols.iter_mut().zip(fields) {
            if let Some(source) = self.catalog.source(&self.database, field) {
                col.source = Some(source);
            }
            // A table's row type: its fields' sources, and in binary format the record the
            // value is (rather than a value of a type the gateway cannot read).
            if let Some(sources) = self.catalog.fields(&self.database, field.type_oid) {
                col.fields = Some(sources);
                if col.kind == portcullis_core::ValueKind::Opaque {
                    col.kind = portcullis_core::ValueKind::PgRecord;
                }
            }
        }
        cols
    }
}

impl std::fmt::Debug for PgUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgUpstream").finish_non_exhaustive()
    }
}

fn lock(conn: &Mutex<Conn>) -> MutexGuard<'_, Conn> {
    // A panic while holding the lock would be a bug; the state is still consistent enough
    // to fail the session cleanly, so recover the guard.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PgUpstream {
    /// Wrap an open connection. `max_message` bounds each message the database may send.
    pub fn new(connected: Connected, max_message: usize) -> Self {
        let mut rbuf = connected.leftover;
        rbuf.reserve(READ_CHUNK);
        PgUpstream {
            conn: Arc::new(Mutex::new(Conn {
                // Reads and writes count as progress for the stall detector.
                io: Box::new(portcullis_core::stall::Metered::new(connected.io)),
                rbuf,
                writes: VecDeque::new(),
                units: VecDeque::new(),
                next_id: 1,
                skipping: false,
                failed: None,
                saw_fatal: false,
                max_message,
                idle_waker: None,
                unflushed: false,
                finished_below: 1,
                described: Described::default(),
                resolved_shapes: HashSet::new(),
            })),
            sources: None,
        }
    }

    /// Resolve the source columns of results through `sources`.
    pub(crate) fn with_sources(mut self, sources: Sources) -> Self {
        self.sources = Some(sources);
        self
    }
}

impl tower_service::Service<Request<PgCommand>> for PgUpstream {
    type Response = Response<PgReply>;
    type Error = Error;
    type Future = std::future::Ready<Result<Response<PgReply>, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let conn = lock(&self.conn);
        match &conn.failed {
            Some(e) => Poll::Ready(Err(e.clone().into_error())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<PgCommand>) -> Self::Future {
        let mut conn = lock(&self.conn);
        if let Some(e) = &conn.failed {
            return std::future::ready(Err(e.clone().into_error()));
        }
        if req.command.kind() == CommandKind::SessionEvents {
            return std::future::ready(Ok(Response::new(PgReply {
                conn: self.conn.clone(),
                unit: None,
                done: false,
                error_override: None,
                sources: None,
                held: None,
                lookup: None,
                shape: None,
                copy_out: None,
                copy_columns: None,
            })));
        }
        let id = conn.next_id;
        conn.next_id += 1;
        match conn.writes.back_mut() {
            Some(Segment::Data(buf)) => buf.extend_from_slice(req.command.bytes()),
            _ => conn
                .writes
                .push_back(Segment::Data(BytesMut::from(&req.command.bytes()[..]))),
        }
        let upload = req.upload.is_some();
        if let Some(upload) = req.upload {
            conn.writes.push_back(Segment::Upload(upload));
        }
        let details = details(&req.command, &mut conn.described);
        let copy_out = self.sources.as_ref().and_then(|_| copy_out(&req.command));
        conn.units.push_back(Unit {
            id,
            slots: req.command.slots.iter().copied().collect(),
            details,
            described: false,
            abandoned: false,
            upload,
        });
        std::future::ready(Ok(Response::new(PgReply {
            conn: self.conn.clone(),
            unit: Some(id),
            done: false,
            error_override: req.command.error_override,
            sources: self.sources.clone(),
            held: None,
            lookup: None,
            shape: None,
            copy_out,
            copy_columns: None,
        })))
    }
}

/// Whether `tag` is a message type the PostgreSQL backend sends (protocol 3.0).
fn is_backend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'R' | b'K'
            | b'S'
            | b'Z'
            | b'E'
            | b'N'
            | b'A'
            | b'C'
            | b'T'
            | b'D'
            | b'I'
            | b'1'
            | b'2'
            | b'3'
            | b'n'
            | b's'
            | b't'
            | b'G'
            | b'H'
            | b'W'
            | b'd'
            | b'c'
            | b'V'
            | b'v'
    )
}

/// What a frame means for the unit being answered.
enum Step {
    /// Part of the reply; the unit goes on.
    More,
    /// The last frame of the unit's reply.
    Last,
}

impl Conn {
    fn fail(&mut self, e: UpstreamError) -> UpstreamError {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    /// Push queued writes (unit bytes, upload chunks) to the database as far as it takes them.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), UpstreamError> {
        let mut wrote = false;
        loop {
            match self.writes.front_mut() {
                None => break,
                Some(Segment::Data(buf)) => {
                    if buf.is_empty() {
                        self.writes.pop_front();
                        continue;
                    }
                    match Pin::new(&mut self.io).poll_write(cx, buf) {
                        Poll::Ready(Ok(0)) => {
                            return Err(self.fail(UpstreamError::Lost("write returned 0".into())));
                        }
                        Poll::Ready(Ok(n)) => {
                            buf.advance(n);
                            wrote = true;
                        }
                        Poll::Ready(Err(e)) => {
                            return Err(self.fail(UpstreamError::Lost(e.to_string())));
                        }
                        Poll::Pending => break,
                    }
                }
                Some(Segment::Upload(upload)) => match upload.poll_chunk(cx) {
                    Poll::Ready(Some(chunk)) => {
                        self.writes
                            .push_front(Segment::Data(BytesMut::from(&chunk[..])));
                    }
                    Poll::Ready(None) => {
                        self.writes.pop_front();
                    }
                    Poll::Pending => break,
                },
            }
        }
        // A TLS stream takes bytes into its own buffer and writes them out on flush; a flush
        // that could not finish must be retried on every later pull, whether or not that
        // pull writes anything itself, or the bytes stay in the buffer for ever (the lost
        // COPY of issue 16: the database waits for data the gateway holds).
        self.unflushed |= wrote;
        if self.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(self.fail(UpstreamError::Lost(e.to_string()))),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// The next frame from the database, reading as needed.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, UpstreamError>> {
        loop {
            match decode_frame(&mut self.rbuf, self.max_message) {
                Ok(Some(frame)) => {
                    match frame.tag() {
                        b'E' if response_field(frame.body(), b'V') == Some(b"FATAL") => {
                            self.saw_fatal = true;
                        }
                        tag if !is_backend_tag(tag) => {
                            // Fail closed: a message the gateway cannot place is not passed on.
                            let e = UpstreamError::Protocol(format!(
                                "unknown message type {:?}",
                                tag as char
                            ));
                            return Poll::Ready(Err(self.fail(e)));
                        }
                        _ => {}
                    }
                    return Poll::Ready(Ok(frame));
                }
                Ok(None) => {}
                Err(e) => {
                    return Poll::Ready(Err(self.fail(UpstreamError::Protocol(e.to_string()))));
                }
            }
            if let Some(e) = &self.failed {
                return Poll::Ready(Err(e.clone()));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(READ_CHUNK);
            }
            match ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)) {
                Ok(0) => {
                    let e = if self.saw_fatal {
                        UpstreamError::EndedAfterFatal
                    } else {
                        UpstreamError::Lost("the database closed the connection".into())
                    };
                    return Poll::Ready(Err(self.fail(e)));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(self.fail(UpstreamError::Lost(e.to_string())))),
            }
        }
    }

    /// Drop slots the server will not answer (skipped after an error until Sync). Returns
    /// whether the front unit has nothing more to receive.
    fn settle_front(&mut self) -> bool {
        let skipping = self.skipping;
        let Some(unit) = self.units.front_mut() else {
            return true;
        };
        while let Some(slot) = unit.slots.front() {
            if skipping && *slot != Slot::Sync {
                unit.slots.pop_front();
            } else {
                break;
            }
        }
        unit.slots.is_empty()
    }

    /// Account one frame of the front unit's reply.
    fn step(&mut self, frame: &Frame) -> Step {
        let tag = frame.tag();
        if matches!(tag, b'N' | b'A' | b'S') {
            // Asynchronous messages may arrive at any point of a reply.
            return Step::More;
        }
        let Some(unit) = self.units.front_mut() else {
            return Step::More;
        };
        let Some(slot) = unit.slots.front().copied() else {
            return Step::Last;
        };
        if tag == b'T' {
            match unit.details.front() {
                Some(Detail::DescribeStatement(name)) => {
                    if let Some(f) = fields(frame.body()) {
                        if self.described.statements.len() >= MAX_DESCRIBED {
                            self.described.statements.clear();
                        }
                        self.described.statements.insert(name.clone(), f);
                    }
                }
                Some(Detail::DescribePortal(name)) => {
                    if let Some(f) = fields(frame.body()) {
                        self.described.portal_fields.insert(name.clone(), f);
                    }
                }
                _ => {}
            }
        }
        let slot_done = match (slot, tag) {
            (Slot::UntilReady, b'Z') => true,
            (Slot::UntilReady, _) => false,
            (_, b'E') => {
                if slot == Slot::Sync {
                    false
                } else {
                    self.skipping = true;
                    true
                }
            }
            (Slot::Sync, b'Z') => {
                self.skipping = false;
                true
            }
            (Slot::Parse, b'1') | (Slot::Bind, b'2') | (Slot::Close, b'3') => true,
            (Slot::DescribeStatement, b't') => {
                unit.described = true;
                false
            }
            (Slot::DescribeStatement | Slot::DescribePortal, b'T' | b'n') => true,
            (Slot::Execute, b'C' | b'I' | b's') => true,
            (Slot::Execute, b'G' | b'W') => {
                // COPY FROM STDIN in an extended batch: the server ignores the Sync and Flush
                // messages it reads during COPY, so the rest of this batch gets no answers;
                // the client sends another Sync after CopyDone.
                unit.slots.truncate(1);
                unit.details.truncate(1);
                false
            }
            _ => false,
        };
        if slot_done {
            unit.slots.pop_front();
            unit.details.pop_front();
            unit.described = false;
        }
        if self.settle_front() {
            Step::Last
        } else {
            Step::More
        }
    }

    fn finish_front(&mut self) {
        if let Some(unit) = self.units.pop_front() {
            self.finished_below = unit.id + 1;
        }
        if self.units.is_empty()
            && let Some(w) = self.idle_waker.take()
        {
            w.wake();
        }
    }

    /// Discard replies of abandoned units at the front.
    fn poll_discard_abandoned(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        while self.units.front().is_some_and(|u| u.abandoned) {
            if self.settle_front() {
                self.finish_front();
                continue;
            }
            let frame = ready!(self.poll_frame(cx))?;
            if let Step::Last = self.step(&frame) {
                self.finish_front();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// What every pull does first: push queued writes, and drain the replies of abandoned
    /// units ahead of the caller's.
    fn poll_prelude(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        self.poll_write(cx)?;
        self.poll_discard_abandoned(cx)
    }

    fn poll_unit_event(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, UpstreamError>>> {
        if let Err(e) = ready!(self.poll_prelude(cx)) {
            return Poll::Ready(Some(Err(e)));
        }
        match self.units.front() {
            Some(u) if u.id == id => {}
            _ if id < self.finished_below => return Poll::Ready(None),
            // Not this unit's turn: the protocol server pulls replies in order, so this only
            // happens when a body is polled early; it is woken by the unit before it.
            _ => {
                self.idle_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        if self.settle_front() {
            self.finish_front();
            return Poll::Ready(None);
        }
        let frame = match ready!(self.poll_frame(cx)) {
            Ok(f) => f,
            Err(e) => return Poll::Ready(Some(Err(e))),
        };
        if frame.tag() == b'G' && !self.units.front().is_some_and(|u| u.upload) {
            // The database waits for COPY data the gateway has no upload for: it would wait
            // for ever. Fail closed rather than hang.
            let e = UpstreamError::Protocol(
                "the database started COPY FROM STDIN for a command the gateway did not read as a COPY".into(),
            );
            return Poll::Ready(Some(Err(self.fail(e))));
        }
        if let Step::Last = self.step(&frame) {
            self.finish_front();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn poll_idle_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, UpstreamError>>> {
        if let Err(e) = ready!(self.poll_prelude(cx)) {
            return Poll::Ready(Some(Err(e)));
        }
        if !self.units.is_empty() {
            self.idle_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        match ready!(self.poll_frame(cx)) {
            Ok(f) => Poll::Ready(Some(Ok(f))),
            Err(UpstreamError::EndedAfterFatal) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// The reply to one command unit (or, for the session-events request, the database's
/// messages while no command runs), pulled frame by frame.
pub struct PgReply {
    conn: Arc<Mutex<Conn>>,
    unit: Option<u64>,
    done: bool,
    /// A refusal carried out in place: replaces the database's (non-fatal) error.
    error_override: Option<Frame>,
    /// Where source columns are resolved, when the listener does.
    sources: Option<Sources>,
    /// A RowDescription held while its tables are looked up.
    held: Option<Frame>,
    lookup: Option<Lookup>,
    /// The RowDescription of the result now streaming, whose columns (with sources) are
    /// computed only if a layer asks ([`PgReply::implied`]).
    shape: Option<Frame>,
    /// For a unit that is one `COPY … TO STDOUT`: a query with the same columns (described
    /// when the output starts) and the rows' layout.
    copy_out: Option<crate::copy::CopyOut>,
    /// The columns of the binary COPY output now streaming.
    copy_columns: Option<Vec<portcullis_core::Column>>,
}

impl std::fmt::Debug for PgReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReply")
            .field("unit", &self.unit)
            .field("done", &self.done)
            .finish()
    }
}

impl ReplyBody for PgReply {
    type Event = Frame;

    fn copy_layout(&self) -> Option<portcullis_core::CopyLayout> {
        self.copy_columns.as_ref()?;
        self.copy_out.as_ref().map(|c| c.layout)
    }

    fn implied_columns(&self) -> Option<Vec<portcullis_core::Column>> {
        self.implied()
    }

    fn poll_event(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(lookup) = self.lookup.as_mut() {
            let copied = match ready!(lookup.as_mut().poll(cx)) {
                Ok(copied) => copied,
                Err(e) => {
                    warn!(target: "portcullis::postgres", error = %e, "source columns could not be looked up; masking rules by table match labels only, binary COPY output is refused");
                    None
                }
            };
            self.lookup = None;
            if let Some(frame) = self.held.take() {
                if frame.tag() == b'H' {
                    self.copy_columns = copied;
                } else {
                    self.remember_resolved(&frame);
                    self.shape = Some(frame.clone());
                }
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        let polled = {
            let mut conn = lock(&self.conn);
            match self.unit {
                Some(id) => conn.poll_unit_event(id, cx),
                None => conn.poll_idle_event(cx),
            }
        };
        match ready!(polled) {
            Some(Ok(frame)) => {
                let frame = match self.note(frame) {
                    Ok(frame) => frame,
                    // Held while its tables are looked up.
                    Err(()) => return self.poll_event(cx),
                };
                if frame.tag() == b'E'
                    && response_field(frame.body(), b'V') != Some(b"FATAL")
                    && let Some(ours) = self.error_override.take()
                {
                    return Poll::Ready(Some(Ok(ours)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(e.into_error())))
            }
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}

impl PgReply {
    /// The columns of the rows now arriving for this unit, from the descriptions the
    /// database gave earlier (a prepared statement executed again).
    fn implied(&self) -> Option<Vec<portcullis_core::Column>> {
        if let Some(copied) = &self.copy_columns {
            return Some(copied.clone());
        }
        if let (Some(src), Some(shape)) = (&self.sources, &self.shape) {
            let f = fields(shape.body())?;
            return Some(src.add(&f, columns(&f, None)));
        }
        let id = self.unit?;
        let conn = lock(&self.conn);
        let unit = conn.units.front().filter(|u| u.id == id)?;
        match unit.details.front()? {
            Detail::Execute(portal) => conn.described.columns(portal, self.sources.as_ref()),
            _ => None,
        }
    }

    /// A frame about to be handed out: note the result it starts or ends; a RowDescription
    /// whose tables are not resolved yet is held (`Err`) while they are looked up.
    fn note(&mut self, frame: Frame) -> Result<Frame, ()> {
        match frame.tag() {
            b'T' => {
                self.shape = None;
                if self.sources.is_some() && lock(&self.conn).resolved_shapes.contains(frame.body())
                {
                    self.shape = Some(frame.clone());
                    return Ok(frame);
                }
                if let (Some(src), Some(f)) = (&self.sources, fields(frame.body())) {
                    let missing = src.catalog.missing(&src.database, &f);
                    let types = src.catalog.missing_types(&src.database, &f);
                    if !missing.is_empty() || !types.is_empty() {
                        let src = src.clone();
                        self.lookup = Some(Box::pin(async move {
                            if !missing.is_empty() {
                                src.catalog
                                    .clone()
                                    .resolve(
                                        src.config.clone(),
                                        src.max_message,
                                        src.database.clone(),
                                        missing,
                                    )
                                    .await?;
                            }
                            if !types.is_empty() {
                                src.catalog
                                    .clone()
                                    .resolve_types(
                                        src.config.clone(),
                                        src.max_message,
                                        src.database.clone(),
                                        types,
                                    )
                                    .await?;
                            }
                            Ok(None)
                        }));
                        self.held = Some(frame);
                        return Err(());
                    }
                    self.remember_resolved(&frame);
                    self.shape = Some(frame.clone());
                }
            }
            // CopyOutResponse: its columns (types, sources) come from describing the COPY's
            // query, while the frame waits.
            b'H' => {
                self.copy_columns = None;
                let count = frame
                    .body()
                    .get(1..3)
                    .map(|n| i16::from_be_bytes([n[0], n[1]]));
                let format: i16 = frame.body().first().map_or(0, |f| i16::from(*f));
                let select = self.copy_out.as_ref().map(|c| c.select.clone());
                if let (Some(src), Some(select), Some(count)) =
                    (self.sources.clone(), select, count)
                {
                    self.lookup = Some(Box::pin(async move {
                        let fields = src
                            .catalog
                            .describe(&src.config, src.max_message, &src.database, &select)
                            .await?;
                        if i16::try_from(fields.len()).ok() != Some(count) {
                            return Err("the described columns do not match the COPY output".into());
                        }
                        let missing = src.catalog.missing(&src.database, &fields);
                        if !missing.is_empty() {
                            src.catalog
                                .resolve(
                                    src.config.clone(),
                                    src.max_message,
                                    src.database.clone(),
                                    missing,
                                )
                                .await?;
                        }
                        Ok(Some(src.add(&fields, columns(&fields, Some(&[format])))))
                    }));
                    self.held = Some(frame);
                    return Err(());
                }
            }
            b'C' | b's' | b'I' | b'E' | b'Z' | b'c' => {
                self.shape = None;
                self.copy_columns = None;
            }
            _ => {}
        }
        Ok(frame)
    }
}

/// What `command` copies out, when it is one `COPY … TO STDOUT`.
fn copy_out(command: &PgCommand) -> Option<crate::copy::CopyOut> {
    let bytes = command.bytes();
    if !bytes.windows(4).any(|w| w.eq_ignore_ascii_case(b"copy")) {
        return None;
    }
    match command.statements().as_slice() {
        [one] => crate::copy::copy_out(one.text),
        _ => None,
    }
}

impl PgReply {
    /// Remember that `description`'s sources are looked up, for the session's next result
    /// of the same shape.
    fn remember_resolved(&self, description: &Frame) {
        let mut conn = lock(&self.conn);
        if conn.resolved_shapes.len() >= MAX_RESOLVED_SHAPES {
            conn.resolved_shapes.clear();
        }
        conn.resolved_shapes
            .insert(Bytes::copy_from_slice(description.body()));
    }
}

impl Drop for PgReply {
    fn drop(&mut self) {
        if let (false, Some(id)) = (self.done, self.unit) {
            let mut conn = lock(&self.conn);
            if let Some(unit) = conn.units.iter_mut().find(|u| u.id == id) {
                unit.abandoned = true;
            }
        }
    }
}

fn s(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

impl EventView for Frame {
    fn view(&self) -> EventKind<'_> {
        let body = self.body();
        match self.tag() {
            b'T' => EventKind::Columns {
                count: body.get(..2).map_or(0, |mut b| b.get_i16().max(0) as usize),
            },
            b'D' => EventKind::Row,
            b'd' => EventKind::CopyData(body),
            b'C' => {
                let tag = s(first_cstr(body).unwrap_or_default());
                let rows = tag.rsplit(' ').next().and_then(|n| n.parse().ok());
                EventKind::Complete { tag, rows }
            }
            b'E' => EventKind::Error {
                code: s(response_field(body, b'C').unwrap_or_default()),
                message: s(response_field(body, b'M').unwrap_or_default()),
                fatal: matches!(response_field(body, b'V'), Some(b"FATAL") | Some(b"PANIC")),
            },
            b'N' => EventKind::Notice {
                code: s(response_field(body, b'C').unwrap_or_default()),
                message: s(response_field(body, b'M').unwrap_or_default()),
            },
            b'A' => {
                let rest = body.get(4..).unwrap_or_default();
                let channel = first_cstr(rest).unwrap_or_default();
                let payload = first_cstr(rest.get(channel.len() + 1..).unwrap_or_default())
                    .unwrap_or_default();
                EventKind::Notification {
                    channel: s(channel),
                    payload: s(payload),
                }
            }
            b'S' => {
                let name = first_cstr(body).unwrap_or_default();
                let value =
                    first_cstr(body.get(name.len() + 1..).unwrap_or_default()).unwrap_or_default();
                EventKind::Parameter {
                    name: s(name),
                    value: s(value),
                }
            }
            b'Z' => EventKind::Ready,
            _ => EventKind::Other,
        }
    }
    fn wire_len(&self) -> usize {
        self.as_bytes().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Item, UnitBuilder};
    use portcullis_core::{AuthMethod, Identity, Protocol, Session, SessionId};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use tokio::io::{AsyncRead, ReadBuf};
    use tower_service::Service as _;

    /// A stream that behaves as a TLS stream over a full socket: writes are taken into its
    /// own buffer and reach the peer only on a flush, and the first `blocked` flushes cannot
    /// finish (they will be woken, as a socket's write readiness would).
    struct TlsLike {
        buffered: Vec<u8>,
        delivered: Arc<Mutex<Vec<u8>>>,
        blocked: usize,
    }

    impl AsyncRead for TlsLike {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for TlsLike {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.buffered.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            if self.blocked > 0 {
                self.blocked -= 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let bytes = std::mem::take(&mut self.buffered);
            self.delivered.lock().unwrap().extend_from_slice(&bytes);
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn unit(bytes: &[u8]) -> PgCommand {
        let mut buf = BytesMut::from(bytes);
        match UnitBuilder::new(1 << 20).next(&mut buf).unwrap() {
            Some(Item::Unit(u)) => u,
            other => panic!("not a unit: {other:?}"),
        }
    }

    /// Issue 16's lost COPY: a flush that could not finish was only retried after another
    /// write, so the last bytes of an upload stayed in the TLS buffer while the database
    /// waited for them. Every pull now retries it.
    #[test]
    fn a_pending_flush_is_retried_on_the_next_pull_without_new_writes() {
        for blocked in 1..4 {
            let delivered = Arc::new(Mutex::new(Vec::new()));
            let io = TlsLike {
                buffered: Vec::new(),
                delivered: delivered.clone(),
                blocked,
            };
            let mut upstream = PgUpstream::new(
                Connected {
                    io: Box::new(io),
                    leftover: BytesMut::new(),
                    pid: 1,
                    key: 1,
                    parameters: Vec::new(),
                    tls: true,
                },
                1 << 20,
            );
            let session = Arc::new(Session::new(
                SessionId(1),
                Protocol::Postgres,
                "t",
                "127.0.0.1:1".parse().unwrap(),
                Identity::new("a", Vec::new(), AuthMethod::StaticToken),
            ));
            let query = b"Q\0\0\0\x0dselect 1\0";
            let response = upstream
                .call(Request::new(session, unit(query)))
                .into_inner()
                .unwrap();
            let mut body = Box::pin(response.body);
            let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
            let waker = Waker::from(wakes.clone());
            let mut cx = Context::from_waker(&waker);
            let mut polls = 0;
            // Poll only when woken, as an executor would.
            while delivered.lock().unwrap().is_empty() {
                assert!(body.as_mut().poll_event(&mut cx).is_pending());
                polls += 1;
                assert!(
                    wakes.0.swap(0, Ordering::SeqCst) > 0 || !delivered.lock().unwrap().is_empty(),
                    "blocked {blocked}: no wake-up and nothing delivered after poll {polls}"
                );
            }
            assert_eq!(&delivered.lock().unwrap()[..], &query[..]);
            assert_eq!(polls, blocked + 1);
        }
    }
}
