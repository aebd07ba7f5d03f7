//! The stall detector: finds a lost wake-up in a session, reports it, and resumes the session.
//!
//! A session is one future. It is polled only when something it waits on wakes it: a socket
//! that became readable or writable, a channel, a timer. A *lost wake-up* is a resource that
//! became ready without waking it (a flush that nothing retries, a waker registered with the
//! wrong task): the data sits in the gateway and both peers wait for ever.
//!
//! [`StallWatch`] wraps the session's future and tells the two apart exactly:
//!
//! - it polls the future with its own waker, which notes every wake-up before passing it on;
//! - a watchdog timer, registered with the task's own waker (so it never counts as the
//!   future's wake-up), polls the future once a [`STALL_TICK`];
//! - data that moves during a poll nobody but the watchdog caused is a wake-up that was lost:
//!   the future could have moved it earlier and was never told. That poll has already got
//!   the session going again; the watch reports the stall (how long the session was quiet)
//!   to its callback, which counts it, logs the session's state and records it in the trail.
//!
//! "Data moves" is measured per thread: the sockets a session reads and writes are wrapped
//! in [`Metered`], and a protocol driver that moves data between its own buffers calls
//! [`progress`]. A session runs on one thread at a time, and a poll runs to its end on that
//! thread, so the count before and after a poll is that poll's progress.
//!
//! A session that is simply idle (its peers send nothing) is polled by the watchdog, moves
//! nothing and reports nothing; one whose database works for minutes reports nothing either.
//!
//! ```
//! use std::time::Duration;
//! use portcullis_core::stall::{StallWatch, progress};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! // A future that loses its wake-up: the data is there at once, but the first poll
//! // returns Pending without arranging to be polled again.
//! let mut polls = 0;
//! let lost = std::future::poll_fn(move |_cx| {
//!     polls += 1;
//!     if polls == 1 {
//!         return std::task::Poll::Pending;
//!     }
//!     progress(); // the second poll moves the data
//!     std::task::Poll::Ready(())
//! });
//! let stalls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let seen = stalls.clone();
//! // A session is a task of its own.
//! tokio::spawn(StallWatch::new(lost, move |quiet: Duration| {
//!     seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!     assert!(quiet >= Duration::from_secs(1));
//! }))
//! .await // without the watch this would never end
//! .unwrap();
//! assert_eq!(stalls.load(std::sync::atomic::Ordering::Relaxed), 1);
//! # });
//! ```

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::listener::ListenerMetrics;
use crate::{ConnectionEvent, ConnectionEventKind, ConnectionObserver, Protocol};
use std::net::SocketAddr;

/// How often the watchdog polls a session. A lost wake-up holds data at most this long
/// before it is found and the session resumed.
pub const STALL_TICK: Duration = Duration::from_secs(1);

thread_local! {
    /// Data moved on this thread (see [`progress`]).
    static MOVED: Cell<u64> = const { Cell::new(0) };
}

/// Note that data moved on this thread: bytes read or written, a message passed between a
/// session's buffers. [`Metered`] calls it for every socket operation that completes.
#[inline]
pub fn progress() {
    MOVED.with(|m| m.set(m.get().wrapping_add(1)));
}

fn moved() -> u64 {
    MOVED.with(Cell::get)
}

/// The waker the watched future sees: it notes that the future was woken, then wakes the
/// task.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Waker>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wake_by_ref();
    }
}

/// The watchdog of one session, for a driver that polls by hand (the future form is
/// [`StallWatch`]). Each poll of the session is a [`Turn`]:
///
/// ```
/// use std::task::{Context, Poll};
/// use portcullis_core::stall::Watchdog;
///
/// fn poll_session(watchdog: &mut Watchdog, cx: &mut Context<'_>) -> Poll<()> {
///     let turn = watchdog.begin(cx);
///     // `turn.watchdog_only()`: snapshot the session's state here for a report.
///     let out = Poll::Pending; // poll the session with `Context::from_waker(turn.waker())`
///     if let Some(quiet) = watchdog.end(turn) {
///         eprintln!("stalled for {quiet:?}");
///     }
///     out
/// }
/// ```
pub struct Watchdog {
    flag: Option<(Arc<Flag>, Waker)>,
    tick: Pin<Box<tokio::time::Sleep>>,
    last_progress: Instant,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("last_progress", &self.last_progress)
            .finish_non_exhaustive()
    }
}

/// One poll of a watched session: poll it with [`Turn::waker`], then hand the turn back to
/// [`Watchdog::end`].
#[derive(Debug)]
pub struct Turn {
    waker: Waker,
    watchdog_only: bool,
    ticked: bool,
    before: u64,
}

impl Turn {
    /// The waker to poll the session with: it notes wake-ups before passing them on.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Nothing the session waits on woke it: only the watchdog's tick did. Data that moves
    /// in this turn is a lost wake-up.
    pub fn watchdog_only(&self) -> bool {
        self.watchdog_only
    }

    /// The watchdog's tick came round in this turn (once a [`STALL_TICK`]): a moment to
    /// refresh what the session says it is doing.
    pub fn ticked(&self) -> bool {
        self.ticked
    }
}

impl Default for Watchdog {
    fn default() -> Self {
        Self::new()
    }
}

impl Watchdog {
    /// A watchdog. Must be created inside a tokio runtime with the time driver enabled.
    pub fn new() -> Self {
        Watchdog {
            flag: None,
            tick: Box::pin(tokio::time::sleep(STALL_TICK)),
            last_progress: Instant::now(),
        }
    }

    /// Start a poll of the session; `cx` is the task's context.
    pub fn begin(&mut self, cx: &mut Context<'_>) -> Turn {
        // Whether something the session waits on woke it since the last poll. The first
        // poll, and a poll with a new task waker, count as woken.
        let (woken, waker) = match &self.flag {
            Some((flag, waker)) => {
                let mut task = flag.task.lock().unwrap_or_else(|p| p.into_inner());
                let same = task.will_wake(cx.waker());
                if !same {
                    *task = cx.waker().clone();
                }
                drop(task);
                (
                    flag.woken.swap(false, Ordering::AcqRel) || !same,
                    waker.clone(),
                )
            }
            None => {
                let flag = Arc::new(Flag {
                    woken: AtomicBool::new(false),
                    task: Mutex::new(cx.waker().clone()),
                });
                let waker = Waker::from(flag.clone());
                self.flag = Some((flag, waker.clone()));
                (true, waker)
            }
        };
        // The tick: registered with the task's waker, never the session's.
        let ticked = self.tick.as_mut().poll(cx).is_ready();
        if ticked {
            self.tick.as_mut().reset(Instant::now() + STALL_TICK);
            let _ = self.tick.as_mut().poll(cx);
        }
        Turn {
            waker,
            watchdog_only: !woken,
            ticked,
            before: moved(),
        }
    }

    /// End a poll: `Some(quiet)` when it was a lost wake-up (data moved in a turn only the
    /// watchdog caused), with how long the session had been quiet.
    pub fn end(&mut self, turn: Turn) -> Option<Duration> {
        if moved() == turn.before {
            return None;
        }
        let now = Instant::now();
        let quiet = now.saturating_duration_since(self.last_progress);
        self.last_progress = now;
        turn.watchdog_only.then_some(quiet)
    }
}

pin_project_lite::pin_project! {
    /// A future watched for lost wake-ups (see the [module docs](self)). Its output is the
    /// inner future's.
    pub struct StallWatch<F, R> {
        #[pin]
        inner: F,
        watchdog: Watchdog,
        on_stall: R,
    }
}

impl<F, R> StallWatch<F, R>
where
    F: Future,
    R: FnMut(Duration),
{
    /// Watch `inner`; `on_stall(quiet)` is called for each lost wake-up found, with how long
    /// the future had been quiet (the watchdog's poll has already resumed it).
    ///
    /// Must be created inside a tokio runtime with the time driver enabled.
    pub fn new(inner: F, on_stall: R) -> Self {
        StallWatch {
            inner,
            watchdog: Watchdog::new(),
            on_stall,
        }
    }
}

impl<F, R> Future for StallWatch<F, R>
where
    F: Future,
    R: FnMut(Duration),
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let turn = this.watchdog.begin(cx);
        let out = this.inner.poll(&mut Context::from_waker(turn.waker()));
        if let Some(quiet) = this.watchdog.end(turn) {
            (this.on_stall)(quiet);
        }
        out
    }
}

/// Where a listener's sessions report the stalls their watchdogs find: each is counted in
/// [`ListenerMetrics::sessions_stalled`] (`portcullis_sessions_stalled_total`) and sent to
/// the connection observer as a `stalled` event (the audit trail records it).
#[derive(Clone)]
pub struct StallReport {
    metrics: Arc<ListenerMetrics>,
    observer: Option<ConnectionObserver>,
    protocol: Protocol,
    listener: Arc<str>,
    peer: SocketAddr,
}

impl std::fmt::Debug for StallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StallReport")
            .field("protocol", &self.protocol)
            .field("listener", &self.listener)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl StallReport {
    /// Stalls of the connection from `peer` on `listener`.
    pub fn new(
        metrics: Arc<ListenerMetrics>,
        observer: Option<ConnectionObserver>,
        protocol: Protocol,
        listener: &str,
        peer: SocketAddr,
    ) -> Self {
        StallReport {
            metrics,
            observer,
            protocol,
            listener: listener.into(),
            peer,
        }
    }

    /// Count and record a stall of `what` (a session, its upload, its upstream connection)
    /// that had been quiet for `quiet`, in `state`; returns the sentence recorded, for the
    /// caller's log.
    pub fn stalled(&self, what: &str, quiet: Duration, state: &str) -> String {
        self.metrics
            .sessions_stalled
            .fetch_add(1, Ordering::Relaxed);
        let reason = format!(
            "{what} stalled for {} ms: data could move but it was not woken; the watchdog resumed it ({state})",
            quiet.as_millis()
        );
        if let Some(observer) = &self.observer {
            observer(ConnectionEvent::new(
                ConnectionEventKind::Stalled,
                self.protocol,
                &*self.listener,
                self.peer,
                reason.clone(),
            ));
        }
        reason
    }
}

/// A socket (or any [`AsyncRead`] + [`AsyncWrite`]) whose completed reads and writes count
/// as [`progress`] for the stall detector.
#[derive(Debug)]
pub struct Metered<T> {
    inner: T,
    /// Written since the last flush that finished: a finished flush then moved data.
    unflushed: bool,
}

impl<T> Metered<T> {
    /// Meter `inner`.
    pub fn new(inner: T) -> Self {
        Metered {
            inner,
            unflushed: false,
        }
    }

    /// The metered stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The metered stream, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The stream, unmetered.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let out = Pin::new(&mut self.inner).poll_read(cx, buf);
        // Bytes, an end of stream or an error: each is news the session acts on.
        if out.is_ready() {
            progress();
        }
        out
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let out = Pin::new(&mut self.inner).poll_write(cx, buf);
        if out.is_ready() && !buf.is_empty() {
            self.unflushed = true;
            progress();
        }
        out
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let out = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if out.is_ready() && bufs.iter().any(|b| !b.is_empty()) {
            self.unflushed = true;
            progress();
        }
        out
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let out = Pin::new(&mut self.inner).poll_flush(cx);
        // A finished flush after writes moved data (a TLS stream's buffered records); one
        // with nothing written since did not.
        if out.is_ready() && std::mem::take(&mut self.unflushed) {
            progress();
        }
        out
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let out = Pin::new(&mut self.inner).poll_shutdown(cx);
        if out.is_ready() {
            progress();
        }
        out
    }
}

/// A future for [`every_poll_order`]: one party of a hand-off.
pub type Party<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// A flag waker for [`every_poll_order`]: notes that its party was woken.
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Checks a hand-off between futures under every order of polls a scheduler may choose: a
/// deterministic test that no party loses a wake-up.
///
/// `make` builds the parties afresh for each schedule (a producer and a consumer sharing a
/// channel, a waiter and the one who decides). At every step, any party woken since its
/// last poll (or never polled) may be polled next; every choice is explored, depth first.
/// It panics, naming the schedule, when unfinished parties all wait and none was woken (a
/// lost wake-up: in a real runtime they would wait for ever), or when a schedule runs
/// longer than `max_steps`. Returns how many schedules ran.
///
/// tokio's channels, `Notify` and `watch` work outside a runtime; for a party that creates
/// timers, enter a runtime with a paused clock first (its timers then never fire).
///
/// ```
/// use portcullis_core::stall::every_poll_order;
/// use portcullis_core::upload_channel;
///
/// let schedules = every_poll_order(
///     || {
///         let (mut tx, mut upload) = upload_channel(1);
///         vec![
///             Box::pin(async move {
///                 for chunk in ["a", "b", "c"] {
///                     std::future::poll_fn(|cx| tx.poll_reserve(cx)).await.unwrap();
///                     tx.send_item(chunk.into()).unwrap();
///                 }
///             }),
///             Box::pin(async move {
///                 let mut got = Vec::new();
///                 while let Some(c) = std::future::poll_fn(|cx| upload.poll_chunk(cx)).await {
///                     got.push(c);
///                 }
///                 assert_eq!(got, ["a", "b", "c"]);
///             }),
///         ]
///     },
///     100,
/// );
/// assert!(schedules > 1);
/// ```
pub fn every_poll_order<'a>(make: impl Fn() -> Vec<Party<'a>>, max_steps: usize) -> usize {
    let mut todo: Vec<Vec<usize>> = vec![Vec::new()];
    let mut schedules = 0;
    while let Some(prefix) = todo.pop() {
        let mut parties: Vec<Option<Party<'a>>> = make().into_iter().map(Some).collect();
        let flags: Vec<Arc<Woken>> = parties
            .iter()
            .map(|_| Arc::new(Woken(AtomicBool::new(true))))
            .collect();
        let wakers: Vec<Waker> = flags.iter().map(|f| Waker::from(f.clone())).collect();
        let mut taken = Vec::new();
        loop {
            let runnable: Vec<usize> = (0..parties.len())
                .filter(|&i| parties[i].is_some() && flags[i].0.load(Ordering::Acquire))
                .collect();
            if parties.iter().all(Option::is_none) {
                break;
            }
            assert!(
                !runnable.is_empty(),
                "lost wake-up: parties {:?} wait and none was woken (schedule {taken:?}; each number picks among the parties woken at that step)",
                (0..parties.len())
                    .filter(|&i| parties[i].is_some())
                    .collect::<Vec<_>>()
            );
            assert!(
                taken.len() < max_steps,
                "a schedule ran past {max_steps} polls: {taken:?}"
            );
            let choice = match prefix.get(taken.len()) {
                Some(&c) => c,
                None => {
                    for alt in 1..runnable.len() {
                        let mut next = taken.clone();
                        next.push(alt);
                        todo.push(next);
                    }
                    0
                }
            };
            taken.push(choice);
            let i = runnable[choice];
            flags[i].0.store(false, Ordering::Release);
            let finished = match parties[i].as_mut() {
                Some(party) => party
                    .as_mut()
                    .poll(&mut Context::from_waker(&wakers[i]))
                    .is_ready(),
                None => false,
            };
            if finished {
                parties[i] = None;
            }
        }
        schedules += 1;
    }
    schedules
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn counter() -> (Arc<AtomicUsize>, impl FnMut(Duration) + Send + 'static) {
        let n = Arc::new(AtomicUsize::new(0));
        let seen = n.clone();
        (n, move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// A one-slot hand-off whose sender can "forget" to wake the receiver: the class of bug
    /// the watch exists to find.
    #[derive(Default)]
    struct Slot {
        value: Mutex<Option<u32>>,
        waker: Mutex<Option<Waker>>,
    }

    impl Slot {
        fn put(&self, v: u32, wake: bool) {
            *self.value.lock().unwrap() = Some(v);
            if wake && let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }

        fn poll_take(&self, cx: &mut Context<'_>) -> Poll<u32> {
            match self.value.lock().unwrap().take() {
                Some(v) => {
                    progress();
                    Poll::Ready(v)
                }
                None => {
                    *self.waker.lock().unwrap() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    /// A task that takes one value from `slot`, watched, reporting stalls to `on_stall`.
    fn watched_reader(
        slot: &Arc<Slot>,
        on_stall: impl FnMut(Duration) + Send + 'static,
    ) -> tokio::task::JoinHandle<u32> {
        let slot = slot.clone();
        tokio::spawn(StallWatch::new(
            std::future::poll_fn(move |cx| slot.poll_take(cx)),
            on_stall,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_wake_up_is_reported_once_and_the_future_resumes() {
        let slot = Arc::new(Slot::default());
        let (stalls, on_stall) = counter();
        let quiet = Arc::new(Mutex::new(Duration::ZERO));
        let q = quiet.clone();
        let mut on_stall = on_stall;
        let reader = watched_reader(&slot, move |d| {
            *q.lock().unwrap() = d;
            on_stall(d)
        });
        tokio::task::yield_now().await; // the reader waits
        slot.put(7, false); // ...and is never told
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(!reader.is_finished(), "nothing else polls the reader");
        let got = reader.await.unwrap();
        assert_eq!(got, 7);
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
        assert!(*quiet.lock().unwrap() >= STALL_TICK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_woken_future_is_no_stall_however_late_its_data() {
        let slot = Arc::new(Slot::default());
        let (stalls, on_stall) = counter();
        let reader = watched_reader(&slot, on_stall);
        // Quiet for a long time (many watchdog ticks, each polling and moving nothing),
        // then the data comes with its wake-up.
        tokio::time::sleep(Duration::from_secs(30)).await;
        slot.put(1, true);
        assert_eq!(reader.await.unwrap(), 1);
        assert_eq!(stalls.load(Ordering::Relaxed), 0);
    }

    /// The two ways a wake-up and the watchdog's tick can meet: the data arrives (with its
    /// wake-up) just before, at, or just after the tick. None is a stall.
    #[tokio::test(start_paused = true)]
    async fn a_wake_up_at_the_tick_is_no_stall() {
        for offset_ms in [999u64, 1000, 1001] {
            let slot = Arc::new(Slot::default());
            let (stalls, on_stall) = counter();
            let reader = watched_reader(&slot, on_stall);
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(offset_ms)).await;
            slot.put(2, true);
            assert_eq!(reader.await.unwrap(), 2);
            assert_eq!(stalls.load(Ordering::Relaxed), 0, "offset {offset_ms} ms");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn metered_streams_count_reads_writes_and_finished_flushes() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Metered::new(a);
        let before = moved();
        a.write_all(b"hello").await.unwrap();
        assert!(moved() > before);
        let before = moved();
        a.flush().await.unwrap();
        assert!(moved() > before, "a flush after a write moved data");
        let before = moved();
        a.flush().await.unwrap();
        assert_eq!(moved(), before, "a flush with nothing written did not");
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.unwrap();
        b.write_all(b"x").await.unwrap();
        let before = moved();
        let mut one = [0u8; 1];
        a.read_exact(&mut one).await.unwrap();
        assert!(moved() > before);
    }

    /// The watch over a real lost wake-up in a stream: a writer whose flush is refused once
    /// and never retried unless polled again (the COPY hang of issue 16, in miniature).
    #[tokio::test(start_paused = true)]
    async fn an_unretried_flush_is_found_by_the_watchdog() {
        struct LazyFlush {
            refused: bool,
            flushed: bool,
        }
        impl AsyncWrite for LazyFlush {
            fn poll_write(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                // The first flush says "later" and registers no waker: a lost wake-up.
                if !self.refused {
                    self.refused = true;
                    return Poll::Pending;
                }
                self.flushed = true;
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        impl AsyncRead for LazyFlush {
            fn poll_read(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                _buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Pending
            }
        }
        let (stalls, on_stall) = counter();
        let writer = tokio::spawn(StallWatch::new(
            async {
                let mut w = Metered::new(LazyFlush {
                    refused: false,
                    flushed: false,
                });
                w.write_all(b"CopyDone").await.unwrap();
                w.flush().await.unwrap();
                w.get_ref().flushed
            },
            on_stall,
        ));
        assert!(writer.await.unwrap());
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
    }

    // ---- the hand-offs, under every poll order ------------------------------------------

    /// Let the other parties run: pending once, woken at once (a party busy with other
    /// work between its steps), so the explorer can interleave more orders.
    async fn pause() {
        let mut paused = false;
        std::future::poll_fn(|cx| {
            if std::mem::replace(&mut paused, true) {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await
    }

    fn producer<'a>(mut tx: crate::UploadSender, chunks: &'a [&'a str]) -> Party<'a> {
        Box::pin(async move {
            for c in chunks {
                pause().await;
                if std::future::poll_fn(|cx| tx.poll_reserve(cx))
                    .await
                    .is_err()
                {
                    return; // the consumer is gone: the producer must learn it, not wait
                }
                if tx.send_item(Bytes::copy_from_slice(c.as_bytes())).is_err() {
                    return;
                }
            }
        })
    }

    /// PostgreSQL COPY FROM STDIN, MySQL LOAD DATA LOCAL INFILE and HTTP request bodies all
    /// pass the client's data through an upload channel: every chunk arrives, in order,
    /// whatever the order of polls, with room for one or two chunks.
    #[test]
    fn an_upload_delivers_every_chunk_in_order_under_every_poll_order() {
        const CHUNKS: [&str; 4] = ["CopyData 1", "CopyData 2", "CopyData 3", "CopyDone"];
        for room in [1, 2] {
            let schedules = every_poll_order(
                || {
                    let (tx, mut upload) = crate::upload_channel(room);
                    vec![
                        producer(tx, &CHUNKS),
                        Box::pin(async move {
                            let mut got = Vec::new();
                            while let Some(c) =
                                std::future::poll_fn(|cx| upload.poll_chunk(cx)).await
                            {
                                got.push(c);
                                pause().await;
                            }
                            assert_eq!(got, CHUNKS);
                        }),
                    ]
                },
                100,
            );
            assert!(schedules > 10, "{schedules} schedules with room {room}");
        }
    }

    /// A consumer that stops early (the database refused the COPY): the producer is told,
    /// never left waiting for room.
    #[test]
    fn an_upload_whose_consumer_leaves_ends_its_producer_under_every_poll_order() {
        const CHUNKS: [&str; 4] = ["a", "b", "c", "d"];
        every_poll_order(
            || {
                let (tx, mut upload) = crate::upload_channel(1);
                vec![
                    producer(tx, &CHUNKS),
                    Box::pin(async move {
                        let first = std::future::poll_fn(|cx| upload.poll_chunk(cx)).await;
                        assert_eq!(first.as_deref(), Some(&b"a"[..]));
                        drop(upload);
                    }),
                ]
            },
            100,
        );
    }

    /// A producer that stops early (the client went away mid-upload): the consumer sees the
    /// end, never waits for a chunk that cannot come.
    #[test]
    fn an_upload_whose_producer_leaves_ends_its_consumer_under_every_poll_order() {
        every_poll_order(
            || {
                let (tx, mut upload) = crate::upload_channel(2);
                vec![
                    producer(tx, &["a"]),
                    Box::pin(async move {
                        let mut n = 0;
                        while std::future::poll_fn(|cx| upload.poll_chunk(cx))
                            .await
                            .is_some()
                        {
                            n += 1;
                        }
                        assert_eq!(n, 1);
                    }),
                ]
            },
            100,
        );
    }

    /// A client's cancel (PostgreSQL CancelRequest, MySQL KILL QUERY) ends a wait (an
    /// approval) that subscribed before it, whatever the order.
    #[test]
    fn a_cancel_reaches_a_waiter_under_every_poll_order() {
        every_poll_order(
            || {
                let signal = crate::CancelSignal::new();
                let wait = signal.cancelled();
                vec![
                    Box::pin(async move {
                        signal.fire();
                    }),
                    Box::pin(wait),
                ]
            },
            20,
        );
    }

    /// Notices a layer sends while a command waits (an approval's "waiting for approval")
    /// reach the driver, all of them, in order.
    #[test]
    fn notices_reach_the_driver_under_every_poll_order() {
        every_poll_order(
            || {
                let notices = crate::Notices::default();
                let mut rx = notices.take_receiver().expect("the receiver, once");
                vec![
                    Box::pin(async move {
                        for i in 0..3 {
                            assert!(notices.send(crate::ClientNotice::new("01000", i.to_string())));
                            pause().await;
                        }
                    }),
                    Box::pin(async move {
                        for i in 0..3 {
                            let n = std::future::poll_fn(|cx| rx.poll_recv(cx)).await.unwrap();
                            assert_eq!(n.message, i.to_string());
                        }
                    }),
                ]
            },
            50,
        );
    }

    /// The explorer itself finds a lost wake-up: a party that never wakes the other.
    #[test]
    #[should_panic(expected = "lost wake-up")]
    fn the_explorer_finds_a_lost_wake_up() {
        every_poll_order(
            || {
                let slot = Arc::new(Slot::default());
                let taker = slot.clone();
                vec![
                    Box::pin(async move { slot.put(1, false) }),
                    Box::pin(async move {
                        std::future::poll_fn(|cx| taker.poll_take(cx)).await;
                    }),
                ]
            },
            20,
        );
    }
}
