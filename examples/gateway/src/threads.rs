//! Session threads: each runs a single-threaded tokio runtime, and a session lives on one of
//! them for its whole life.
//!
//! A session's work is a strict request/reply relay between two sockets. On a work-stealing
//! runtime its wake-ups hop between threads (cross-thread wake-ups, futex calls, more context
//! switches); on its own thread both sockets are polled by the thread that runs the session,
//! as in an event-loop proxy. Measured on two cores with `pgbench -S -c 8`: 0.88 context
//! switches and 40–44 µs of gateway CPU per transaction on the work-stealing runtime, 0.61
//! and 33–34 µs on one session thread (docs/benchmarks.md).
//! The control plane (accept loops, admin API, reload, signals) stays on the main runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// The session threads; dropping this stops them (and the sessions still on them).
pub(crate) struct SessionThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stop: Vec<oneshot::Sender<()>>,
}

impl SessionThreads {
    /// Start `n` threads (at least one).
    pub(crate) fn start(n: usize) -> std::io::Result<SessionThreads> {
        let mut handles = Vec::new();
        let mut stop = Vec::new();
        for i in 0..n.max(1) {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("portcullis-session-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = handle_tx.send(Ok(runtime.handle().clone()));
                            // Runs the sessions spawned onto this thread until told to stop.
                            let _ = runtime.block_on(stop_rx);
                        }
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                        }
                    }
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| std::io::Error::other("a session thread died while starting"))??;
            handles.push(handle);
            stop.push(stop_tx);
        }
        Ok(SessionThreads {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// How many threads run sessions.
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Serve an accepted connection on the next thread (round robin), tracked by `tracker`.
    pub(crate) fn spawn<F, Fut>(&self, tracker: &TaskTracker, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        // The socket moves to the thread's own I/O driver.
        let std = match tcp.into_std() {
            Ok(std) => std,
            Err(e) => {
                warn!(error = %e, "could not hand a connection to a session thread");
                return;
            }
        };
        self.handles[i].spawn(tracker.track_future(async move {
            match TcpStream::from_std(std) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => warn!(error = %e, "could not register a connection on a session thread"),
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_run_on_the_threads_and_are_tracked() {
        let threads = SessionThreads::start(2).unwrap();
        assert_eq!(threads.len(), 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tracker = TaskTracker::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let _client = TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            threads.spawn(&tracker, tcp, move |_tcp| async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send(name);
            });
        }
        tracker.close();
        tracker.wait().await;
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(rx.recv().await.unwrap().unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "portcullis-session-0",
                "portcullis-session-0",
                "portcullis-session-1",
                "portcullis-session-1"
            ]
        );
    }
}
