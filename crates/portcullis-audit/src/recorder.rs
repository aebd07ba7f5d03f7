//! The [`Recorder`]: one bounded queue and one writer thread per sink, write-ahead
//! acknowledgements, and gap accounting.
//!
//! Every sink runs on its own thread (a current-thread tokio runtime), so a sink that does
//! blocking file I/O or stalls never holds up a session thread: the data path only puts
//! records in the sink's queue and, for write-ahead, waits for the acknowledgement — never
//! longer than the sink's `timeout`.
//!
//! A record that cannot be queued (full queue) or written (the sink failed) is counted; the
//! next batch the sink writes successfully starts with a [`Gap`] record saying how many were
//! lost and since when. Nothing is lost silently.
//!
//! The queue's bound applies to what *starts*: commands (which wait for room, or are refused,
//! under write-ahead) and events. What *ends* something already recorded — a command's
//! outcome, a session's end — always goes in, from a `Drop` if need be: those are bounded by
//! the sessions and their in-flight commands, which are capped themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use portcullis_core::{ConnectionEvent, ConnectionObserver, Error};
use tokio::sync::{Notify, mpsc, oneshot};
use tower_service::Service;
use tracing::{error, info, warn};

use crate::chain::rfc3339;
use crate::event::{AuditEvent, Connection, Gap};

/// Most records a sink gets in one batch.
const MAX_BATCH: usize = 512;

/// One event with the time it was made.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// When the event happened.
    pub at: SystemTime,
    /// The event.
    pub event: Arc<AuditEvent>,
}

/// What a sink should do besides writing the batch's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flush {
    /// Nothing special.
    None,
    /// A periodic tick (about once a second, also when idle): time to sync to disk or write
    /// a checkpoint if the sink's interval has passed.
    Tick,
    /// The recorder is closing: seal the trail (final checkpoint) and sync.
    Shutdown,
}

/// What a sink service is called with: records in the order they were made.
#[derive(Debug, Clone)]
pub struct AuditBatch {
    /// The records.
    pub records: Vec<Stamped>,
    /// What to do after writing them.
    pub flush: Flush,
}

/// What the recorder does when a required sink cannot record a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// The command is not run; the client gets the audit-failure error (PostgreSQL 58000).
    #[default]
    Refuse,
    /// The command runs; the gap is recorded when the sink recovers.
    Continue,
}

/// How the recorder treats one sink.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// A name for logs and gap records (`jsonl:audit/portcullis.jsonl`).
    pub name: String,
    /// Whether commands wait for this sink (with [`OnFailure::Refuse`]).
    pub required: bool,
    /// The longest a command waits for this sink to accept its record.
    pub timeout: Duration,
    /// Records the queue holds before the sink is considered stalled.
    pub queue: usize,
}

impl SinkOptions {
    /// A required sink with a 2 s bound and a queue of 16384 records.
    pub fn new(name: impl Into<String>) -> Self {
        SinkOptions {
            name: name.into(),
            required: true,
            timeout: Duration::from_secs(2),
            queue: 16384,
        }
    }
}

type Ack = oneshot::Sender<Result<(), Arc<str>>>;
type AckWait = oneshot::Receiver<Result<(), Arc<str>>>;

struct Entry {
    record: Stamped,
    ack: Option<Ack>,
}

/// A type-erased sink service.
type SinkFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

trait DynSink: Send {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>>;
    fn call(&mut self, batch: AuditBatch) -> SinkFuture;
}

impl<S> DynSink for S
where
    S: Service<AuditBatch, Response = (), Error = Error> + Send,
    S::Future: Send + 'static,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Service::poll_ready(self, cx)
    }
    fn call(&mut self, batch: AuditBatch) -> SinkFuture {
        Box::pin(Service::call(self, batch))
    }
}

/// Records a sink lost, until the next successful write reports them.
#[derive(Debug, Default)]
struct Lost {
    count: u64,
    since: Option<SystemTime>,
    reason: String,
}

#[derive(Debug, Default)]
struct SinkShared {
    lost: Mutex<Lost>,
    /// Records in the queue.
    queued: AtomicUsize,
    /// Records written since start.
    written: AtomicU64,
    /// Records lost since start (reported or not yet).
    lost_total: AtomicU64,
    /// Whether the last write failed.
    failing: AtomicBool,
    /// Signalled when the writer takes records off the queue.
    room: Notify,
}

impl SinkShared {
    fn lose(&self, count: u64, since: SystemTime, reason: &str) {
        if count == 0 {
            return;
        }
        self.lost_total.fetch_add(count, Ordering::Relaxed);
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        lost.count += count;
        if lost.since.is_none_or(|s| since < s) {
            lost.since = Some(since);
        }
        if lost.reason.is_empty() {
            lost.reason = reason.to_owned();
        }
    }

    /// Put back losses taken for a gap record that could not be written.
    fn unreport(&self, back: Lost) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        lost.count += back.count;
        if let Some(since) = back.since
            && lost.since.is_none_or(|s| since < s)
        {
            lost.since = Some(since);
        }
        if lost.reason.is_empty() {
            lost.reason = back.reason;
        }
    }

    fn take(&self) -> Option<Lost> {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        (lost.count > 0).then(|| std::mem::take(&mut *lost))
    }

    fn total(&self) -> u64 {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).count
    }

    /// Wait until fewer than `limit` records are queued. Subscribes before it looks, so room
    /// made between the look and the wait is not missed.
    async fn room_for(&self, limit: usize) {
        loop {
            let notified = self.room.notified();
            if self.queued.load(Ordering::Acquire) < limit {
                return;
            }
            notified.await;
        }
    }

    /// The writer took `count` records off the queue (written or failed): wake every wait
    /// for room.
    fn taken(&self, count: usize) {
        self.queued.fetch_sub(count, Ordering::AcqRel);
        self.room.notify_waiters();
    }
}

struct SinkHandle {
    options: SinkOptions,
    /// Writes on the caller's thread when the sink is free and nothing is queued.
    inline: Option<Arc<dyn InlineSink>>,
    tx: mpsc::UnboundedSender<Entry>,
    shared: Arc<SinkShared>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

struct Inner {
    sinks: Vec<SinkHandle>,
    on_failure: OnFailure,
    record_results: bool,
}

/// The audit recorder: fans events out to the sinks. Cheap to clone; every clone feeds the
/// same sinks.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field(
                "sinks",
                &self
                    .inner
                    .sinks
                    .iter()
                    .map(|s| s.options.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("on_failure", &self.inner.on_failure)
            .finish()
    }
}

/// Builds a [`Recorder`].
pub struct RecorderBuilder {
    on_failure: OnFailure,
    record_results: bool,
    sinks: Vec<SinkParts>,
}

/// A sink given to the builder, not started yet.
struct SinkParts {
    options: SinkOptions,
    service: Box<dyn DynSink>,
    inline: Option<Arc<dyn InlineSink>>,
}

impl std::fmt::Debug for RecorderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderBuilder")
            .field("on_failure", &self.on_failure)
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl RecorderBuilder {
    /// Whether outcomes carry result summaries (rows, bytes, tag); `true` by default.
    pub fn record_results(mut self, yes: bool) -> Self {
        self.record_results = yes;
        self
    }

    /// Add a sink.
    pub fn sink<S>(mut self, options: SinkOptions, sink: S) -> Self
    where
        S: Service<AuditBatch, Response = (), Error = Error> + Send + 'static,
        S::Future: Send + 'static,
    {
        self.sinks.push(SinkParts {
            options,
            service: Box::new(sink),
            inline: None,
        });
        self
    }

    /// Add a sink that can also write on the caller's thread ([`InlineSink`]): `sink` is
    /// the writer thread's service over the same state.
    pub fn inline_sink<S>(
        mut self,
        options: SinkOptions,
        sink: S,
        inline: Arc<dyn InlineSink>,
    ) -> Self
    where
        S: Service<AuditBatch, Response = (), Error = Error> + Send + 'static,
        S::Future: Send + 'static,
    {
        self.sinks.push(SinkParts {
            options,
            service: Box::new(sink),
            inline: Some(inline),
        });
        self
    }

    /// Start one writer thread per sink.
    pub fn start(self) -> std::io::Result<Recorder> {
        let mut sinks = Vec::new();
        for SinkParts {
            options,
            service,
            inline,
        } in self.sinks
        {
            let (tx, rx) = mpsc::unbounded_channel();
            let shared = Arc::new(SinkShared::default());
            let (stop_tx, stop_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread_shared = shared.clone();
            let name = options.name.clone();
            std::thread::Builder::new()
                .name("portcullis-audit".into())
                .spawn(move || {
                    runtime.block_on(run_sink(name, service, rx, thread_shared, stop_rx));
                    let _ = done_tx.send(());
                })?;
            sinks.push(SinkHandle {
                options,
                inline,
                tx,
                shared,
                stop: Mutex::new(Some(stop_tx)),
                done: Mutex::new(Some(done_rx)),
            });
        }
        Ok(Recorder {
            inner: Arc::new(Inner {
                sinks,
                on_failure: self.on_failure,
                record_results: self.record_results,
            }),
        })
    }
}

/// A sink's counters ([`Recorder::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkStats {
    /// The sink's name.
    pub name: String,
    /// Records waiting in its queue now.
    pub queued: u64,
    /// Records written since start.
    pub written: u64,
    /// Records lost since start (each reported by a gap record once the sink recovers).
    pub lost: u64,
    /// `false` while its last write failed.
    pub up: bool,
}

/// Whether a record may be dropped when its sink's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Counted as lost when the queue is full (events, commands without write-ahead).
    Queue,
    /// Always queued: it ends something already recorded (outcome, session end), or its
    /// room was waited for ([`Recorder::room`]).
    Exempt,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("type", &self.record.event.kind())
            .finish_non_exhaustive()
    }
}

/// Acknowledgements a command waits for (write-ahead).
#[derive(Debug, Default)]
pub(crate) struct Pending(Vec<(usize, Ack2)>);

/// What a command waits for from one sink.
#[derive(Debug)]
enum Ack2 {
    /// The writer thread will say.
    Waiting(AckWait),
    /// Written inline already, or failed.
    Done(Result<(), Arc<str>>),
    /// Could not even be queued.
    Missing,
}

impl Recorder {
    /// A recorder with no sinks yet.
    pub fn builder(on_failure: OnFailure) -> RecorderBuilder {
        RecorderBuilder {
            on_failure,
            record_results: true,
            sinks: Vec::new(),
        }
    }

    /// What happens when a required sink cannot record a command.
    pub fn on_failure(&self) -> OnFailure {
        self.inner.on_failure
    }

    pub(crate) fn record_results(&self) -> bool {
        self.inner.record_results
    }

    /// Whether commands must wait for a sink before they run.
    pub(crate) fn write_ahead(&self) -> bool {
        self.inner.on_failure == OnFailure::Refuse
            && self.inner.sinks.iter().any(|s| s.options.required)
    }

    /// Each sink's counters, for metrics.
    pub fn stats(&self) -> Vec<SinkStats> {
        self.inner
            .sinks
            .iter()
            .map(|s| SinkStats {
                name: s.options.name.clone(),
                queued: s.shared.queued.load(Ordering::Relaxed) as u64,
                written: s.shared.written.load(Ordering::Relaxed),
                lost: s.shared.lost_total.load(Ordering::Relaxed),
                up: !s.shared.failing.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Records lost so far and not yet reported in a gap record, over all sinks.
    pub fn unreported_losses(&self) -> u64 {
        self.inner.sinks.iter().map(|s| s.shared.total()).sum()
    }

    /// Record `event` without waiting; a full queue counts it as lost (reported as a gap).
    pub fn emit(&self, event: AuditEvent) {
        let record = Stamped {
            at: SystemTime::now(),
            event: Arc::new(event),
        };
        for sink in &self.inner.sinks {
            if write_inline(sink, &record, true).is_none() {
                push(sink, record.clone(), None, Bound::Queue);
            }
        }
    }

    /// A [`ConnectionObserver`] that records connection events.
    pub fn connection_observer(&self) -> ConnectionObserver {
        let recorder = self.clone();
        Arc::new(move |event: ConnectionEvent| {
            recorder.emit(AuditEvent::Connection(Connection::from(&event)));
        })
    }

    /// Wait until every required sink's queue has room, at most each sink's bound. `Err`
    /// names a sink that had no room in time.
    /// `since` is when the command arrived: the whole wait for a sink, room and
    /// confirmation together, stays within that sink's bound.
    pub(crate) async fn room(&self, since: Instant) -> Result<(), String> {
        for sink in self.inner.sinks.iter().filter(|s| s.options.required) {
            let wait = sink.shared.room_for(sink.options.queue);
            let deadline = tokio::time::Instant::from_std(since + sink.options.timeout);
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                return Err(format!(
                    "audit sink {} accepted nothing for {:?} (stalled)",
                    sink.options.name, sink.options.timeout
                ));
            }
        }
        Ok(())
    }

    /// Queue `event` in every sink. With `ack`, returns what to wait for before the event
    /// counts as recorded by the required sinks.
    pub(crate) fn send(&self, event: AuditEvent, bound: Bound, ack: bool) -> Pending {
        let record = Stamped {
            at: SystemTime::now(),
            event: Arc::new(event),
        };
        let mut pending = Pending::default();
        for (i, sink) in self.inner.sinks.iter().enumerate() {
            let wait = ack && sink.options.required;
            let (ack_tx, ack_rx) = if wait {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            if let Some(written) = write_inline(sink, &record, !ack) {
                if wait {
                    pending.0.push((i, Ack2::Done(written)));
                }
                continue;
            }
            let queued = push(sink, record.clone(), ack_tx, bound);
            if wait {
                pending.0.push((
                    i,
                    match (queued, ack_rx) {
                        (true, Some(rx)) => Ack2::Waiting(rx),
                        _ => Ack2::Missing,
                    },
                ));
            }
        }
        pending
    }

    /// Wait until every sink in `pending` wrote its record, at most each sink's bound.
    /// Within each sink's bound counted from `since`.
    pub(crate) async fn confirm(&self, pending: Pending, since: Instant) -> Result<(), String> {
        for (i, rx) in pending.0 {
            let Some(sink) = self.inner.sinks.get(i) else {
                continue;
            };
            let name = &sink.options.name;
            let rx = match rx {
                Ack2::Waiting(rx) => rx,
                Ack2::Done(Ok(())) => continue,
                Ack2::Done(Err(reason)) => {
                    return Err(format!("audit sink {name} failed: {reason}"));
                }
                Ack2::Missing => return Err(format!("audit sink {name} is full (stalled)")),
            };
            let deadline = tokio::time::Instant::from_std(since + sink.options.timeout);
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(reason))) => return Err(format!("audit sink {name} failed: {reason}")),
                Ok(Err(_)) => return Err(format!("audit sink {name} is closed")),
                Err(_) => {
                    return Err(format!(
                        "audit sink {name} did not confirm within {:?} (stalled)",
                        sink.options.timeout
                    ));
                }
            }
        }
        Ok(())
    }

    /// Flush and seal every sink (final checkpoint), then stop the writer threads. Waits at
    /// most `deadline`. Records emitted afterwards are lost (and logged).
    pub async fn close(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        for sink in &self.inner.sinks {
            if let Some(stop) = sink.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = stop.send(());
            }
        }
        for sink in &self.inner.sinks {
            let done = sink.done.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(done) = done
                && tokio::time::timeout_at(until.into(), done).await.is_err()
            {
                error!(target: "portcullis::audit", sink = %sink.options.name, "the audit sink did not finish in time; its tail may be unsealed");
            }
        }
    }
}

/// A sink that can write a record on the caller's thread, without waiting: the JSONL sink
/// with `writer = "inline"`.
pub trait InlineSink: Send + Sync {
    /// Write `record` now if the sink is free (never waits for it), after checking with
    /// `nothing_queued` — called while the sink is held — that no queued record would be
    /// overtaken. `None`: busy, or records are queued; the caller queues it instead.
    ///
    /// With `defer` nobody waits for the record: the sink may keep it in memory and write it
    /// with the next one (reporting it in [`crate::LostRecords`] if that write fails).
    fn try_write(
        &self,
        record: &Stamped,
        defer: bool,
        nothing_queued: &dyn Fn() -> bool,
    ) -> Option<Result<(), Error>>;
}

/// Write `record` inline where the sink allows it; `None` when it must be queued.
fn write_inline(sink: &SinkHandle, record: &Stamped, defer: bool) -> Option<Result<(), Arc<str>>> {
    let inline = sink.inline.as_ref()?;
    let shared = &sink.shared;
    // Unreported losses go first, through the writer thread's gap record.
    if shared.queued.load(Ordering::Acquire) > 0 || shared.total() > 0 {
        return None;
    }
    let nothing_queued = || shared.queued.load(Ordering::Acquire) == 0 && shared.total() == 0;
    match inline.try_write(record, defer, &nothing_queued)? {
        Ok(()) => {
            shared.written.fetch_add(1, Ordering::Relaxed);
            Some(Ok(()))
        }
        Err(e) => {
            let lost = lost_count(&e, 1);
            // Deferred records were counted as written when they were taken.
            shared
                .written
                .fetch_sub(lost.saturating_sub(1), Ordering::Relaxed);
            shared.lose(lost, record.at, &e.to_string());
            Some(Err(Arc::from(e.to_string())))
        }
    }
}

/// How many records a sink error stands for: [`crate::LostRecords`] says, else `given`.
fn lost_count(error: &Error, given: u64) -> u64 {
    match error.downcast_ref::<crate::jsonl::LostRecords>() {
        Some(lost) => lost.records.max(given),
        None => given,
    }
}

/// Queue a record in `sink`; `false` (and counted as lost) when it could not be.
fn push(sink: &SinkHandle, record: Stamped, ack: Option<Ack>, bound: Bound) -> bool {
    let at = record.at;
    let shared = &sink.shared;
    // Counted before it is sent, so the writer never takes off more than was counted.
    let before = shared.queued.fetch_add(1, Ordering::AcqRel);
    if bound == Bound::Queue && before >= sink.options.queue {
        shared.queued.fetch_sub(1, Ordering::AcqRel);
        shared.lose(1, at, "the sink's queue was full (stalled sink)");
        return false;
    }
    if sink.tx.send(Entry { record, ack }).is_err() {
        shared.queued.fetch_sub(1, Ordering::AcqRel);
        shared.lose(1, at, "the sink was closed");
        return false;
    }
    true
}

async fn run_sink(
    name: String,
    mut sink: Box<dyn DynSink>,
    mut rx: mpsc::UnboundedReceiver<Entry>,
    shared: Arc<SinkShared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let flush = tokio::select! {
            n = rx.recv_many(&mut buf, MAX_BATCH) => if n == 0 { Flush::Shutdown } else { Flush::None },
            _ = tick.tick() => Flush::Tick,
            _ = &mut stop => {
                rx.close();
                while let Ok(entry) = rx.try_recv() {
                    buf.push(entry);
                }
                Flush::Shutdown
            }
        };
        let mut records = Vec::with_capacity(buf.len() + 1);
        let gap = shared.take();
        if let Some(lost) = &gap {
            let at = SystemTime::now();
            records.push(Stamped {
                at,
                event: Arc::new(AuditEvent::Gap(Gap {
                    lost: lost.count,
                    since: rfc3339(lost.since.unwrap_or(at)),
                    reason: lost.reason.clone(),
                })),
            });
        }
        let mut acks = Vec::new();
        let first = buf.first().map(|e| e.record.at);
        let count = buf.len() as u64;
        for entry in buf.drain(..) {
            records.push(entry.record);
            if let Some(ack) = entry.ack {
                acks.push(ack);
            }
        }
        let batch = AuditBatch { records, flush };
        let result = match std::future::poll_fn(|cx| sink.poll_ready(cx)).await {
            Ok(()) => sink.call(batch).await,
            Err(e) => Err(e),
        };
        // Counted off only once written (or failed): inline writers rely on "nothing queued"
        // meaning "nothing waiting to be written".
        if count > 0 {
            shared.taken(count as usize);
        }
        shared.failing.store(result.is_err(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                shared.written.fetch_add(count, Ordering::Relaxed);
                if failing {
                    info!(target: "portcullis::audit", sink = %name, "audit sink recovered");
                    failing = false;
                }
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                let reason: Arc<str> = Arc::from(e.to_string());
                if !failing {
                    error!(target: "portcullis::audit", sink = %name, error = %e, "audit sink failed; records are being lost");
                    failing = true;
                }
                if let Some(lost) = gap {
                    shared.unreport(lost);
                }
                let lost = lost_count(&e, count);
                shared
                    .written
                    .fetch_sub(lost.saturating_sub(count), Ordering::Relaxed);
                shared.lose(lost, first.unwrap_or_else(SystemTime::now), &reason);
                for ack in acks {
                    let _ = ack.send(Err(reason.clone()));
                }
            }
        }
        if flush == Flush::Shutdown {
            let lost = shared.total();
            if lost > 0 {
                warn!(target: "portcullis::audit", sink = %name, lost, "audit sink closed with records it could not write");
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::stall::every_poll_order;

    /// A command waits for room in a full required sink while the writer takes records off:
    /// every waiter gets through, whatever the order of polls (two sessions waiting, the
    /// writer taking one record, then another).
    #[test]
    fn waits_for_room_end_when_the_writer_takes_records_under_every_poll_order() {
        let schedules = every_poll_order(
            || {
                let shared = Arc::new(SinkShared::default());
                shared.queued.store(3, Ordering::Release);
                let (a, b, writer) = (shared.clone(), shared.clone(), shared);
                vec![
                    Box::pin(async move { a.room_for(3).await }),
                    Box::pin(async move { b.room_for(2).await }),
                    Box::pin(async move {
                        writer.taken(1);
                        tokio::task::yield_now().await;
                        writer.taken(1);
                    }),
                ]
            },
            50,
        );
        assert!(schedules > 3, "{schedules}");
    }

    /// The statement waits for its record's acknowledgement (`Pending`/`confirm`): a written
    /// record, a failed write, and a writer that went away all end the wait.
    #[test]
    fn acknowledgements_end_the_wait_under_every_poll_order() {
        for outcome in [Some(Ok(())), Some(Err(Arc::from("disk full"))), None] {
            every_poll_order(
                || {
                    let (tx, rx): (Ack, AckWait) = oneshot::channel();
                    let sent = outcome.clone();
                    let expected = outcome.clone();
                    vec![
                        Box::pin(async move {
                            match sent {
                                Some(result) => {
                                    let _ = tx.send(result);
                                }
                                None => drop(tx),
                            }
                        }),
                        Box::pin(async move {
                            let got = rx.await.ok();
                            assert_eq!(got, expected);
                        }),
                    ]
                },
                20,
            );
        }
    }
}
