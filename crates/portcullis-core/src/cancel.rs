use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;

/// A per-session cancel signal: fired when the client asks to cancel (PostgreSQL
/// `CancelRequest`, MySQL `KILL QUERY`, an HTTP client going away).
///
/// Layers that wait (an approval) select on [`CancelSignal::cancelled`] so that a client's
/// Ctrl-C ends the wait. Cloning shares the signal.
#[derive(Clone, Debug)]
pub struct CancelSignal {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for CancelSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelSignal {
    /// A new signal that has never fired.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(0);
        Self { tx: Arc::new(tx) }
    }

    /// Fire the signal: every [`Cancelled`] obtained before this call completes.
    pub fn fire(&self) {
        self.tx.send_modify(|generation| *generation += 1);
    }

    /// How many times the signal fired.
    pub fn generation(&self) -> u64 {
        *self.tx.borrow()
    }

    /// A future that completes at the next [`CancelSignal::fire`].
    pub fn cancelled(&self) -> Cancelled {
        let mut rx = self.tx.subscribe();
        rx.mark_unchanged();
        Cancelled {
            inner: Box::pin(async move {
                // An error means the sender is gone, which cannot happen while `self` lives;
                // either way the wait is over.
                let _ = rx.changed().await;
            }),
        }
    }
}

/// Future returned by [`CancelSignal::cancelled`].
pub struct Cancelled {
    inner: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancelled").finish_non_exhaustive()
    }
}

impl std::future::Future for Cancelled {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_only_after_subscription() {
        let signal = CancelSignal::new();
        signal.fire();
        let wait = signal.cancelled();
        let s2 = signal.clone();
        let handle = tokio::spawn(async move { s2.fire() });
        wait.await;
        handle.await.unwrap();
        assert_eq!(signal.generation(), 2);
    }
}
