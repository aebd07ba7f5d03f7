//! The stall detector for HTTP connections: every task a connection runs (the client
//! connection, HTTP/2 streams, request-body uploads, the upstream connection, a spliced
//! upgrade) is watched for lost wake-ups (`portcullis_core::stall`).

use std::future::Future;

use portcullis_core::stall::{StallReport, StallWatch};
use tracing::warn;

/// Spawns a connection's tasks under the stall detector; hyper's executor for the
/// connections of a listener.
#[derive(Clone, Debug, Default)]
pub(crate) struct Watched {
    /// Where stalls are reported; `None` spawns tasks unwatched.
    pub(crate) stalls: Option<StallReport>,
}

impl Watched {
    /// `fut`, watched; `what` names it in a stall report.
    pub(crate) fn watch<F: Future>(
        &self,
        what: &'static str,
        fut: F,
    ) -> StallWatch<F, impl FnMut(std::time::Duration) + use<F>> {
        let stalls = self.stalls.clone();
        StallWatch::new(fut, move |quiet| {
            if let Some(stalls) = &stalls {
                let reason = stalls.stalled(what, quiet, "an HTTP connection's task");
                warn!(target: "portcullis::http", "{reason}");
            }
        })
    }

    /// Spawn `fut` on the current runtime, watched.
    pub(crate) fn spawn<F>(&self, what: &'static str, fut: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.stalls.is_some() {
            tokio::spawn(self.watch(what, fut));
        } else {
            tokio::spawn(fut);
        }
    }
}

impl<F> hyper::rt::Executor<F> for Watched
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.spawn("an HTTP/2 stream", fut);
    }
}
