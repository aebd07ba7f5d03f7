use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Extensions;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::Session;

/// One command unit on its way to the upstream: the session it belongs to, the
/// protocol-specific command (which implements [`crate::CommandView`]), an optional streaming
/// upload, and extensions through which layers pass facts inward.
#[derive(Debug)]
#[non_exhaustive]
pub struct Request<C> {
    /// The session.
    pub session: Arc<Session>,
    /// The command unit.
    pub command: C,
    /// Data the client streams after the command (COPY FROM STDIN, LOCAL INFILE, a request
    /// body); `None` when the command cannot have any.
    pub upload: Option<Upload>,
    /// Facts layers attach for the layers inside them.
    pub extensions: Extensions,
}

impl<C> Request<C> {
    /// A request without upload or extensions.
    pub fn new(session: Arc<Session>, command: C) -> Self {
        Request {
            session,
            command,
            upload: None,
            extensions: Extensions::new(),
        }
    }

    /// With an upload.
    pub fn with_upload(mut self, upload: Upload) -> Self {
        self.upload = Some(upload);
        self
    }
}

/// The reply to one command unit: a body the protocol server pulls events from, and
/// extensions through which inner layers report decisions outward.
#[derive(Debug)]
#[non_exhaustive]
pub struct Response<B> {
    /// The reply's event stream.
    pub body: B,
    /// Decisions and facts reported by inner layers ([`crate::Decision`], ...).
    pub extensions: Extensions,
}

impl<B> Response<B> {
    /// A response around `body`.
    pub fn new(body: B) -> Self {
        Response {
            body,
            extensions: Extensions::new(),
        }
    }

    /// Replace the body, keeping the extensions.
    pub fn map_body<B2>(self, f: impl FnOnce(B) -> B2) -> Response<B2> {
        Response {
            body: f(self.body),
            extensions: self.extensions,
        }
    }
}

type Inspect = Box<dyn FnMut(&Bytes) + Send>;

/// A streaming upload: chunks of protocol data the client sends after a command, delivered
/// in order with bounded buffering (the sender waits when the consumer is behind).
///
/// A chunk is protocol data as the upstream expects it (for PostgreSQL, whole `CopyData` /
/// `CopyDone` / `CopyFail` messages).
pub struct Upload {
    rx: mpsc::Receiver<Bytes>,
    inspect: Vec<Inspect>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("inspectors", &self.inspect.len())
            .finish_non_exhaustive()
    }
}

/// The sending half of an [`Upload`], held by the protocol server.
#[derive(Debug)]
pub struct UploadSender {
    tx: PollSender<Bytes>,
}

/// A bounded upload channel holding at most `chunks` chunks in flight.
pub fn upload_channel(chunks: usize) -> (UploadSender, Upload) {
    let (tx, rx) = mpsc::channel(chunks.max(1));
    (
        UploadSender {
            tx: PollSender::new(tx),
        },
        Upload {
            rx,
            inspect: Vec::new(),
        },
    )
}

impl Upload {
    /// The next chunk, or `None` when the client finished (or the sender is gone).
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                for f in &mut self.inspect {
                    f(&chunk);
                }
                Poll::Ready(Some(chunk))
            }
            other => other,
        }
    }

    /// Observe every chunk as it passes (audit: sizes and digests), without buffering.
    pub fn inspect(mut self, f: impl FnMut(&Bytes) + Send + 'static) -> Self {
        self.inspect.push(Box::new(f));
        self
    }
}

impl UploadSender {
    /// Wait for room for one chunk. `Err` means the consumer is gone.
    pub fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UploadClosed>> {
        self.tx.poll_reserve(cx).map_err(|_| UploadClosed)
    }

    /// Send a chunk after [`UploadSender::poll_reserve`] returned `Ready(Ok)`.
    pub fn send_item(&mut self, chunk: Bytes) -> Result<(), UploadClosed> {
        self.tx.send_item(chunk).map_err(|_| UploadClosed)
    }
}

/// The consumer of an upload is gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the upload's consumer is gone")]
pub struct UploadClosed;
