//! [`AuditLayer`]: the outermost layer of a session's command stack.
//!
//! Per session it records the start (when the stack is built) and the end (when the stack
//! is dropped, with the reason the protocol server gave). Per command it records the command
//! before it goes further in — with [`OnFailure::Refuse`](crate::OnFailure::Refuse) the
//! command waits until every required sink wrote it, and is refused if one cannot — and
//! exactly one outcome, whether the reply ends, fails, is refused or is dropped: an outcome
//! (like a session's end) is always queued, even from a `Drop`, which cannot wait for room. The session's event stream (notifications, notices, parameter
//! changes, a fatal error) is recorded as it passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use portcullis_core::{
    CommandKind, CommandView, DecisionLog, Decisions, Error, EventKind, EventView, Refusal,
    RefusedInPlace, ReplyBody, Request, Response, Session, TextRedactor, rescue,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::event::{
    AuditEvent, Command, DecisionEvent, DecisionRecord, ErrorRecord, Outcome, SessionEnd,
    SessionEvent, SessionRef, SessionStart, Status,
};
use crate::recorder::{Bound, Pending, Recorder};

/// The audit state of one session, shared by its layer, service and reply bodies. Dropping
/// the last of them records the session's end.
#[derive(Debug)]
struct SessionAudit {
    recorder: Recorder,
    session: Arc<Session>,
    id: Arc<str>,
    identity: Arc<str>,
    target: Arc<str>,
    sseq: AtomicU64,
    commands: AtomicU64,
    /// The start record's acknowledgement, which the first command waits for.
    start: Mutex<Option<Pending>>,
    /// Masks personal data in statement text and parameters before they are recorded.
    redactor: Option<TextRedactor>,
}

impl SessionAudit {
    fn next_sseq(&self) -> u64 {
        self.sseq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn next_ref(&self) -> SessionRef {
        self.session_ref(self.next_sseq())
    }

    fn session_ref(&self, sseq: u64) -> SessionRef {
        SessionRef {
            session: self.id.clone(),
            sseq,
            identity: self.identity.clone(),
            peer: self.session.peer,
            target: self.target.clone(),
        }
    }
}

impl Drop for SessionAudit {
    fn drop(&mut self) {
        let event = AuditEvent::SessionEnd(SessionEnd {
            session: self.next_ref(),
            reason: self
                .session
                .end_reason()
                .unwrap_or("the session's command stack was dropped")
                .to_owned(),
            commands: self.commands.load(Ordering::Relaxed),
        });
        self.recorder.send(event, Bound::Exempt, false);
    }
}

/// Records a session: build one per session with [`AuditLayer::new`], outermost in the
/// command stack.
#[derive(Debug, Clone)]
pub struct AuditLayer {
    audit: Option<Arc<SessionAudit>>,
}

impl AuditLayer {
    /// Mask personal data in the statement text and parameters this layer records (with the
    /// masking layer's detectors). Call right after [`AuditLayer::new`].
    pub fn redacting(mut self, redactor: TextRedactor) -> Self {
        if let Some(audit) = self.audit.as_mut().and_then(Arc::get_mut) {
            audit.redactor = Some(redactor);
        }
        self
    }

    /// The layer for `session`; records the session's start now.
    pub fn new(recorder: &Recorder, session: &Arc<Session>) -> Self {
        let audit = SessionAudit {
            recorder: recorder.clone(),
            session: session.clone(),
            id: Arc::from(session.id.to_string()),
            identity: Arc::from(session.identity.subject.as_str()),
            target: Arc::from(session.target.as_str()),
            sseq: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            start: Mutex::new(None),
            redactor: None,
        };
        let start = SessionStart::of(audit.next_ref(), session);
        // Exempt from the queue's bound like an outcome: sessions are capped, and the first
        // command waits for this record to be written.
        let pending = recorder.send(AuditEvent::SessionStart(start), Bound::Exempt, true);
        *audit.start.lock().unwrap_or_else(|p| p.into_inner()) = Some(pending);
        AuditLayer {
            audit: Some(Arc::new(audit)),
        }
    }

    /// A layer that records nothing (no `[audit]` configured): commands and replies pass
    /// through at no cost beyond a branch.
    pub fn disabled() -> Self {
        AuditLayer { audit: None }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            audit: self.audit.clone(),
        }
    }
}

/// The service [`AuditLayer`] builds.
#[derive(Debug, Clone)]
pub struct Audit<S> {
    inner: S,
    audit: Option<Arc<SessionAudit>>,
}

type Boxed<B> = Pin<Box<dyn Future<Output = Result<Response<AuditBody<B>>, Error>> + Send>>;

pin_project! {
    /// [`Audit`]'s future: the inner call's future directly, or — when the command must
    /// first be recorded (write-ahead) — a boxed wait-then-call.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Direct {
            #[pin]
            fut: F,
            watch: Option<Watch>,
        },
        WriteAhead {
            fut: Boxed<B>,
        },
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, Error>>,
{
    type Output = Result<Response<AuditBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Direct { fut, watch } => {
                let result = std::task::ready!(fut.poll(cx));
                let watch = watch.take().unwrap_or(Watch::Nothing);
                Poll::Ready(finish_call(result, watch))
            }
            StateProj::WriteAhead { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn direct(fut: F, watch: Watch) -> Self {
        ResponseFuture {
            state: State::Direct {
                fut,
                watch: Some(watch),
            },
        }
    }
}

impl<S, C, B> Service<Request<C>> for Audit<S>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    C: CommandView + Send + 'static,
    B: ReplyBody + Send + 'static,
    B::Event: EventView,
{
    type Response = Response<AuditBody<B>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<C>) -> Self::Future {
        let Some(audit) = self.audit.clone() else {
            return ResponseFuture::direct(self.inner.call(req), Watch::Nothing);
        };
        match req.command.kind() {
            CommandKind::SessionEvents => {
                return ResponseFuture::direct(self.inner.call(req), Watch::Events(audit));
            }
            // Not a command: the session's end record covers it.
            CommandKind::Terminate => {
                return ResponseFuture::direct(self.inner.call(req), Watch::Nothing);
            }
            _ => {}
        }
        let number = audit.commands.fetch_add(1, Ordering::Relaxed) + 1;
        let mut req = req;
        req.extensions.insert(decision_log(&audit, number));
        // What the client streams with the command is counted and digested as it passes.
        let upload = req.upload.take().map(|u| {
            let digest = Arc::new(Mutex::new(UploadDigest::default()));
            let seen = digest.clone();
            req.upload = Some(u.inspect(move |chunk| {
                seen.lock().unwrap_or_else(|p| p.into_inner()).add(chunk);
            }));
            digest
        });
        // Numbered when sent (below), so a session's records appear in `sseq` order.
        let mut command = Command::of(audit.session_ref(0), number, &req.command);
        if let Some(redactor) = &audit.redactor {
            command.redact(redactor, req.session.protocol);
        }
        let recorder = audit.recorder.clone();
        let mut outcome = OutcomeRecorder {
            audit: audit.clone(),
            number,
            started: Instant::now(),
            done: false,
            sent: false,
            rows: 0,
            row_events: 0,
            bytes: 0,
            tag: None,
            error: None,
            cancelled: false,
            decisions: Vec::new(),
            refusal: None,
            upload,
        };
        if !recorder.write_ahead() {
            outcome.sent = true;
            command.session.sseq = audit.next_sseq();
            recorder.send(AuditEvent::Command(command), Bound::Queue, false);
            return ResponseFuture::direct(self.inner.call(req), Watch::Command(outcome));
        }
        // Write-ahead: the command goes in only once it is recorded. Take the ready inner
        // service and leave a clone behind (tower's "be careful when cloning" rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let since = outcome.started;
        let fut: Boxed<B> = Box::pin(async move {
            let start = audit.start.lock().unwrap_or_else(|p| p.into_inner()).take();
            let mut written = match start {
                Some(pending) => recorder.confirm(pending, since).await,
                None => Ok(()),
            };
            let mut event = Some(command);
            if written.is_ok() {
                written = recorder.room(since).await;
                if let (Ok(()), Some(mut command)) = (&written, event.take()) {
                    outcome.sent = true;
                    command.session.sseq = audit.next_sseq();
                    let pending = recorder.send(AuditEvent::Command(command), Bound::Exempt, true);
                    written = recorder.confirm(pending, since).await;
                }
            }
            if let Err(reason) = written {
                // Nothing ran. Record the command (without waiting) so that the trail shows
                // it was refused, if the sink recovers in time to take it.
                if let Some(mut command) = event.take() {
                    command.session.sseq = audit.next_sseq();
                    recorder.send(AuditEvent::Command(command), Bound::Queue, false);
                    outcome.sent = true;
                }
                let refusal = Refusal::AuditUnavailable { reason };
                let error: Error = Box::new(refusal);
                outcome.refused(&error);
                return Err(error);
            }
            if let Err(e) = std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
                outcome.refused(&e);
                return Err(e);
            }
            finish_call(inner.call(req).await, Watch::Command(outcome))
        });
        ResponseFuture {
            state: State::WriteAhead { fut },
        }
    }
}

/// The [`DecisionLog`] inner layers find in the request: decisions become `decision`
/// records at once.
fn decision_log(audit: &Arc<SessionAudit>, command: u64) -> DecisionLog {
    let audit = Arc::downgrade(audit);
    DecisionLog::new(move |decision| {
        if let Some(audit) = audit.upgrade() {
            let event = AuditEvent::Decision(DecisionEvent {
                session: audit.next_ref(),
                command,
                decision: DecisionRecord::from(decision),
            });
            // Bounded by the commands in flight, like outcomes.
            audit.recorder.send(event, Bound::Exempt, false);
        }
    })
}

fn finish_call<B>(
    result: Result<Response<B>, Error>,
    mut watch: Watch,
) -> Result<Response<AuditBody<B>>, Error> {
    match result {
        Ok(response) => {
            if let Watch::Command(outcome) = &mut watch {
                outcome.decisions.extend(
                    Decisions::of(&response.extensions)
                        .iter()
                        .map(DecisionRecord::from),
                );
                if let Some(RefusedInPlace(refusal)) = response.extensions.get::<RefusedInPlace>() {
                    outcome.refused_in_place(refusal);
                }
            }
            Ok(response.map_body(|body| AuditBody::new(body, watch)))
        }
        Err(e) => {
            if let Watch::Command(outcome) = &mut watch {
                outcome.refused(&e);
            }
            Err(e)
        }
    }
}

/// Everything needed to record a command's outcome; records it exactly once — when told,
/// or when dropped (as abandoned).
#[derive(Debug)]
struct OutcomeRecorder {
    audit: Arc<SessionAudit>,
    number: u64,
    started: Instant,
    /// Whether the outcome was recorded.
    done: bool,
    /// Whether the command record was sent (no outcome without a command).
    sent: bool,
    rows: u64,
    row_events: u64,
    bytes: u64,
    tag: Option<String>,
    error: Option<ErrorRecord>,
    cancelled: bool,
    decisions: Vec<DecisionRecord>,
    /// Set when a layer refused the command in place.
    refusal: Option<Status>,
    /// The command's upload, counted as it passes.
    upload: Option<Arc<Mutex<UploadDigest>>>,
}

/// Size and running SHA-256 of an upload.
struct UploadDigest {
    bytes: u64,
    chunks: u64,
    sha: ring::digest::Context,
}

impl std::fmt::Debug for UploadDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadDigest")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Default for UploadDigest {
    fn default() -> Self {
        UploadDigest {
            bytes: 0,
            chunks: 0,
            sha: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }
}

impl UploadDigest {
    fn add(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.chunks += 1;
        self.sha.update(chunk);
    }

    /// The record, when anything was streamed.
    fn record(digest: &Arc<Mutex<UploadDigest>>) -> Option<crate::event::UploadRecord> {
        let d = digest.lock().unwrap_or_else(|p| p.into_inner());
        (d.chunks > 0).then(|| crate::event::UploadRecord {
            bytes: d.bytes,
            sha256: hex::encode(d.sha.clone().finish().as_ref()),
        })
    }
}

impl OutcomeRecorder {
    fn observe(&mut self, kind: EventKind<'_>, len: usize) {
        self.bytes += len as u64;
        match kind {
            EventKind::Row => self.row_events += 1,
            EventKind::Complete { tag, rows } => {
                self.rows += rows.unwrap_or(0);
                if self.audit.recorder.record_results() {
                    self.tag = Some(tag.to_owned());
                }
            }
            EventKind::Error { code, message, .. } if self.error.is_none() => {
                self.cancelled = code == "57014";
                self.error = Some(ErrorRecord {
                    code: code.to_owned(),
                    message: message.to_owned(),
                });
            }
            _ => {}
        }
    }

    fn record(&mut self, status: Status) {
        if std::mem::replace(&mut self.done, true) || !self.sent {
            return;
        }
        let results = self.audit.recorder.record_results();
        let event = AuditEvent::Outcome(Outcome {
            session: self.audit.next_ref(),
            command: self.number,
            status,
            rows: if results {
                self.rows.max(self.row_events)
            } else {
                0
            },
            bytes: if results { self.bytes } else { 0 },
            duration_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            tag: self.tag.take(),
            error: self.error.take(),
            decisions: std::mem::take(&mut self.decisions),
            masking: None,
            upload: self.upload.as_ref().and_then(UploadDigest::record),
        });
        self.audit.recorder.send(event, Bound::Exempt, false);
    }

    /// The command never got a reply: a layer refused it or the gateway failed.
    fn refused(&mut self, error: &Error) {
        let refusal = Refusal::find(error);
        let rescue = rescue(error);
        self.error = Some(ErrorRecord {
            code: format!("{:?}", rescue.kind),
            message: rescue.message.into_owned(),
        });
        let status = match refusal {
            Some(Refusal::Cancelled) => Status::Cancelled,
            Some(r) => {
                if let Some(d) = DecisionRecord::of_refusal(r) {
                    self.decisions.push(d);
                }
                Status::Refused
            }
            None => Status::Failed,
        };
        self.record(status);
    }

    /// A layer refused the command in place: the reply's error is the refusal.
    fn refused_in_place(&mut self, refusal: &Refusal) {
        self.refusal = Some(if matches!(refusal, Refusal::Cancelled) {
            Status::Cancelled
        } else {
            Status::Refused
        });
        if let Some(d) = DecisionRecord::of_refusal(refusal) {
            self.decisions.push(d);
        }
    }

    fn ended(&mut self) {
        let status = match (self.refusal, &self.error, self.cancelled) {
            (Some(status), _, _) => status,
            (None, _, true) => Status::Cancelled,
            (None, Some(_), false) => Status::Error,
            (None, None, false) => Status::Ok,
        };
        self.record(status);
    }
}

impl Drop for OutcomeRecorder {
    fn drop(&mut self) {
        self.record(Status::Abandoned);
    }
}

/// What an [`AuditBody`] watches.
#[derive(Debug)]
enum Watch {
    /// A command's reply: counts, then its outcome.
    Command(OutcomeRecorder),
    /// The session's event stream.
    Events(Arc<SessionAudit>),
    /// Nothing to record.
    Nothing,
}

pin_project! {
    /// The reply body of an audited command: passes every event through unchanged and
    /// records the outcome at its end, on error, or when dropped.
    #[derive(Debug)]
    pub struct AuditBody<B> {
        #[pin]
        inner: B,
        watch: Watch,
    }
}

impl<B> AuditBody<B> {
    fn new(inner: B, watch: Watch) -> Self {
        AuditBody { inner, watch }
    }
}

impl<B> ReplyBody for AuditBody<B>
where
    B: ReplyBody,
    B::Event: EventView,
{
    type Event = B::Event;

    fn poll_event(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<B::Event, Error>>> {
        let this = self.project();
        let polled = this.inner.poll_event(cx);
        match (&polled, this.watch) {
            (Poll::Ready(Some(Ok(event))), Watch::Command(outcome)) => {
                outcome.observe(event.view(), event.wire_len());
            }
            (Poll::Ready(Some(Ok(event))), Watch::Events(audit)) => {
                record_session_event(audit, event.view());
            }
            (Poll::Ready(None), Watch::Command(outcome)) => outcome.ended(),
            (Poll::Ready(Some(Err(e))), Watch::Command(outcome)) => {
                outcome.error.get_or_insert_with(|| ErrorRecord {
                    code: String::new(),
                    message: e.to_string(),
                });
                outcome.record(Status::Failed);
            }
            _ => {}
        }
        polled
    }
}

fn record_session_event(audit: &SessionAudit, kind: EventKind<'_>) {
    let (event, code, message, name) = match kind {
        EventKind::Notification { channel, payload } => {
            ("notification", None, Some(payload), Some(channel))
        }
        EventKind::Notice { code, message } => ("notice", Some(code), Some(message), None),
        EventKind::Parameter { name, value } => ("parameter", None, Some(value), Some(name)),
        EventKind::Error { code, message, .. } => ("error", Some(code), Some(message), None),
        _ => return,
    };
    audit.recorder.emit(AuditEvent::SessionEvent(SessionEvent {
        session: audit.next_ref(),
        event: event.to_owned(),
        code: code.map(str::to_owned),
        message: message.map(str::to_owned),
        name: name.map(str::to_owned),
    }));
}
