use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

/// A message for the waiting client that is not a reply (PostgreSQL `NoticeResponse`): an
/// approval layer tells the client its statement waits, under which request id, and how to
/// approve it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientNotice {
    /// A code in the protocol's vocabulary (a SQLSTATE for PostgreSQL: `01000` warning).
    pub code: String,
    /// The message.
    pub message: String,
    /// More detail, when there is some.
    pub detail: Option<String>,
    /// What the client can do about it.
    pub hint: Option<String>,
}

impl ClientNotice {
    /// A notice with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ClientNotice {
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// With a detail line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// With a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Most notices queued for one client; more are dropped (and [`Notices::send`] says so).
const NOTICE_QUEUE: usize = 32;

/// A session's channel of [`ClientNotice`]s to its client. The protocol server takes the
/// receiving end once ([`Notices::take_receiver`]); a protocol with no such channel (MySQL,
/// HTTP) never does, and [`Notices::send`] then reports that nothing was delivered.
#[derive(Debug)]
pub struct Notices {
    tx: mpsc::Sender<ClientNotice>,
    rx: Mutex<Option<mpsc::Receiver<ClientNotice>>>,
    taken: AtomicBool,
}

impl Default for Notices {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        Notices {
            tx,
            rx: Mutex::new(Some(rx)),
            taken: AtomicBool::new(false),
        }
    }
}

impl Notices {
    /// Queue `notice` for the client. `false` when the protocol has no notice channel, the
    /// client is gone, or too many notices are queued.
    pub fn send(&self, notice: ClientNotice) -> bool {
        self.taken.load(Ordering::Acquire) && self.tx.try_send(notice).is_ok()
    }

    /// The receiving end, for the protocol server (once; `None` afterwards).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<ClientNotice>> {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if rx.is_some() {
            self.taken.store(true, Ordering::Release);
        }
        rx
    }
}
