//! What every protocol's listener keeps across its connections: session caps (per listener
//! and per identity), counters for `/metrics`, and why a handshake failed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::{ConnectionEventKind, SessionId};

pin_project_lite::pin_project! {
    /// A session's boundary: a panic while `inner` is polled ends it with `Err` (the panic's
    /// message) instead of unwinding into the runtime — which would end the task without a
    /// word to the client, or with `panic = "abort"` the process. The protocol server then
    /// tells its client, counts it in [`ListenerMetrics::session_panics`] and lets the
    /// session end through the normal path (so its end is recorded).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use portcullis_core::listener::catch_panic;
    ///
    /// let end = catch_panic(async {
    ///     if 1 + 1 == 2 {
    ///         panic!("a bug");
    ///     }
    /// })
    /// .await;
    /// assert_eq!(end.unwrap_err(), "a bug");
    /// # });
    /// ```
    #[derive(Debug)]
    pub struct CatchPanic<F> {
        #[pin]
        inner: F,
    }
}

/// `inner`, with a panic caught at its boundary (see [`CatchPanic`]).
pub fn catch_panic<F: std::future::Future>(inner: F) -> CatchPanic<F> {
    CatchPanic { inner }
}

impl<F: std::future::Future> std::future::Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.project().inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(polled) => polled.map(Ok),
            Err(panic) => std::task::Poll::Ready(Err(panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned()))),
        }
    }
}

/// Whether `peer` is on this machine (IPv4 or IPv6 loopback, or IPv4 loopback mapped into
/// IPv6): where `allow_plaintext_tokens_on_loopback` lets a token travel without TLS.
pub fn is_loopback(peer: &SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Counters of a listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    /// Sessions open now.
    pub sessions_active: AtomicUsize,
    /// Sessions opened since start.
    pub sessions_total: AtomicU64,
    /// Logins refused (bad token, refused startup, limits).
    pub logins_refused: AtomicU64,
    /// Command units run.
    pub commands_total: AtomicU64,
    /// Command units refused by a layer or failed in the gateway.
    pub command_errors: AtomicU64,
    /// Bytes from clients to the database.
    pub bytes_from_clients: AtomicU64,
    /// Bytes from the database to clients.
    pub bytes_to_clients: AtomicU64,
    /// Cancel requests (PostgreSQL CancelRequest, MySQL KILL QUERY of a waiting session)
    /// delivered.
    pub cancels_forwarded: AtomicU64,
    /// Sessions ended by a panic in their handler (the process went on).
    pub session_panics: AtomicU64,
    /// Stalls: a session held data a peer could take and did not move it for longer than
    /// the stall threshold (see the protocol server's stall detector).
    pub sessions_stalled: AtomicU64,
    /// The live sessions and what each is doing, for a dump of the gateway's state.
    pub board: SessionBoard,
    /// Connections refused before login because their address had too many connections
    /// still logging in (MySQL opens a database connection for each before its login).
    pub logins_throttled: AtomicU64,
}

/// Connections still logging in, per client address: bounds what one address can make
/// the gateway open before it proves anything (a MySQL greeting is the database's own, so
/// each such connection holds a database connection).
#[derive(Debug, Default)]
pub struct PeerGate {
    waiting: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// A connection's place in its address's count; given back when dropped.
#[derive(Debug)]
pub struct PeerSlot {
    gate: Arc<PeerGate>,
    ip: std::net::IpAddr,
}

impl PeerGate {
    /// Count a connection from `ip` logging in; `None` when that address has `max` already.
    pub fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let n = waiting.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            gate: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut waiting = self.gate.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = waiting.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.ip);
            }
        }
    }
}

/// A listener's live sessions and what each is doing: what an operator (or a soak that
/// found an operation stuck) dumps to see where every session stands.
#[derive(Debug, Default)]
pub struct SessionBoard {
    live: Mutex<HashMap<crate::SessionId, Arc<SessionStatus>>>,
}

/// One live session on a [`SessionBoard`]; taken off the board when dropped.
#[derive(Debug)]
pub struct SessionStatus {
    /// The session.
    pub session: Arc<crate::Session>,
    state: Mutex<std::borrow::Cow<'static, str>>,
    board: std::sync::Weak<ListenerMetrics>,
}

impl SessionStatus {
    /// Say what the session is doing now.
    pub fn set(&self, state: impl Into<std::borrow::Cow<'static, str>>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state.into();
    }

    /// What the session is doing, as last said.
    pub fn state(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .to_string()
    }
}

/// A session's place on its listener's board: taking it off when the session ends.
#[derive(Debug)]
pub struct OnBoard(pub Arc<SessionStatus>);

impl Drop for OnBoard {
    fn drop(&mut self) {
        if let Some(metrics) = self.0.board.upgrade() {
            metrics
                .board
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.0.session.id);
        }
    }
}

impl SessionBoard {
    /// Put `session` on the board of `metrics` (its listener), in `state`.
    pub fn enter(
        metrics: &Arc<ListenerMetrics>,
        session: Arc<crate::Session>,
        state: impl Into<std::borrow::Cow<'static, str>>,
    ) -> OnBoard {
        let status = Arc::new(SessionStatus {
            session,
            state: Mutex::new(state.into()),
            board: Arc::downgrade(metrics),
        });
        metrics
            .board
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(status.session.id, status.clone());
        OnBoard(status)
    }

    /// The live sessions, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<SessionStatus>> {
        let mut all: Vec<_> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|s| s.session.started_at);
        all
    }
}

/// Open sessions of a listener, counted against its caps, and the ids they get.
#[derive(Debug, Default)]
pub struct SessionCaps {
    slots: AtomicUsize,
    per_identity: Mutex<HashMap<String, usize>>,
    next_id: AtomicU64,
}

impl SessionCaps {
    /// A new session's id: random across processes, its low 16 bits counting up within the
    /// listener (so two sessions of one listener never share an id).
    pub fn new_session_id(&self) -> SessionId {
        SessionId(
            rand::random::<u64>() & !0xffff
                | (self.next_id.fetch_add(1, Ordering::Relaxed) & 0xffff),
        )
    }

    /// Count a session (or a login in progress) against `max`: `None` when the listener is
    /// full.
    pub fn reserve(self: &Arc<Self>, max: Option<usize>) -> Option<SessionSlot> {
        let before = self.slots.fetch_add(1, Ordering::AcqRel);
        let slot = SessionSlot { caps: self.clone() };
        // Dropping the slot gives the place back when over the cap.
        max.is_none_or(|max| before < max).then_some(slot)
    }

    /// Count a session of `subject` against `max`: `None` when the identity has that many.
    pub fn acquire(self: &Arc<Self>, subject: &str, max: Option<usize>) -> Option<IdentitySlot> {
        let mut map = self.per_identity.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(subject.to_owned()).or_insert(0);
        if max.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(IdentitySlot {
            caps: self.clone(),
            subject: subject.to_owned(),
        })
    }
}

/// A session counted against its listener's cap; released on drop.
#[derive(Debug)]
pub struct SessionSlot {
    caps: Arc<SessionCaps>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.caps.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A session counted against its identity's cap; released on drop.
#[derive(Debug)]
pub struct IdentitySlot {
    caps: Arc<SessionCaps>,
    subject: String,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut map = self
            .caps
            .per_identity
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.subject);
            }
        }
    }
}

/// Why a connection never became a session (the client was told with its protocol's error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The client broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// I/O failure or the client left.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The startup was refused (parameters, TLS policy, limits).
    #[error("{0}")]
    Refused(String),
    /// The token was refused (the message says why).
    #[error("{0}")]
    Unauthenticated(String),
    /// The database could not be reached or refused the gateway.
    #[error("{0}")]
    Upstream(String),
    /// The handshake took too long.
    #[error("handshake timed out")]
    Timeout,
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

impl HandshakeError {
    /// The kind of connection event this failure is recorded as.
    pub fn kind(&self) -> ConnectionEventKind {
        match self {
            HandshakeError::Protocol(_) | HandshakeError::Io(_) => {
                ConnectionEventKind::ProtocolError
            }
            HandshakeError::Refused(_) => ConnectionEventKind::RefusedStartup,
            HandshakeError::Unauthenticated(_) => ConnectionEventKind::RefusedLogin,
            HandshakeError::Upstream(_) => ConnectionEventKind::UpstreamFailure,
            HandshakeError::Timeout => ConnectionEventKind::HandshakeTimeout,
            HandshakeError::Tls(_) => ConnectionEventKind::TlsFailure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_and_release() {
        let caps = Arc::new(SessionCaps::default());
        let a = caps.reserve(Some(1));
        assert!(a.is_some());
        assert!(caps.reserve(Some(1)).is_none());
        drop(a);
        assert!(caps.reserve(Some(1)).is_some());
        let x = caps.acquire("alice", Some(1));
        assert!(x.is_some());
        assert!(caps.acquire("alice", Some(1)).is_none());
        assert!(caps.acquire("bob", Some(1)).is_some());
        drop(x);
        assert!(caps.acquire("alice", Some(1)).is_some());
    }
}
