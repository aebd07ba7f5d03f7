//! [`ServePg`]: the client side of the gateway. It runs the handshake (TLS, startup,
//! authentication through an `Authenticate` service), opens the upstream with the gateway's
//! credentials, builds the session's command stack, then drives the session: client frames
//! are cut into command units, each unit goes through the stack, and the replies stream back.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use portcullis_core::listener::{
    HandshakeError, IdentitySlot, SessionCaps, SessionSlot, is_loopback,
};
use portcullis_core::{
    CommandKind, ConnectionEvent, ConnectionEventKind, ConnectionObserver, Credentials, Error,
    Identity, NewService, Protocol, Refusal, ReplyBody, Request, RescueKind, Response, Session,
    Target, UploadSender, rescue, upload_channel,
};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::cancel::{CancelRegistry, CancelTarget};
use crate::codec::{
    AuthRequest, BackendMessage, CodecError, Frame, Severity, StartupPacket, decode_frame,
    error_message,
};
use crate::command::{Item, PgCommand, UnitBuilder};
use crate::conn::{PgUpstream, UpstreamError};
use crate::upstream::{self, ConnectError, UpstreamConfig};
use portcullis_core::io::{BoxIo, Prefixed};
use portcullis_core::listener::{SessionBoard, SessionStatus};
use portcullis_core::stall::{StallReport, Watchdog};

/// Settings of one PostgreSQL listener (`[[postgres]]`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServePgConfig {
    /// The target's name, recorded on every session.
    pub name: String,
    /// TLS for clients (SSLRequest and direct TLS); `None` answers SSLRequest with `N`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accept tokens without TLS from loopback peers.
    pub allow_plaintext_tokens_on_loopback: bool,
    /// Databases clients may ask for; `None` = any.
    pub databases: Option<Vec<String>>,
    /// Accept the `options` startup parameter (passed to the database).
    pub allow_startup_options: bool,
    /// Most sessions at once on this listener.
    pub max_sessions: Option<usize>,
    /// Most sessions at once per identity.
    pub max_sessions_per_identity: Option<usize>,
    /// Startup and authentication must finish within this.
    pub handshake_timeout: Duration,
    /// Largest message accepted from either side.
    pub max_message: usize,
    /// Most command units in flight per session (pipelining depth).
    pub max_pipeline: usize,
    /// The database.
    pub upstream: UpstreamConfig,
    /// Resolve result columns to their source `schema.table.column` (one catalog query per
    /// new table, on a side connection per database), for masking rules over source
    /// columns. Off by default: it costs a connection to the database per listener and
    /// database.
    pub resolve_column_sources: bool,
    /// Let policy ask the database's catalog about the functions a command calls (is it
    /// user-defined and volatile; which function a `FunctionCall` OID names), through the
    /// same side connection, opened on first need. On by default: without it, a
    /// `FunctionCall` is `admin` and a user-defined function cannot be told from a
    /// read-only one.
    pub resolve_functions: bool,
    /// End a session whose identity's credential expires (`Identity::expires_at`) as soon
    /// as it is idle (`FATAL 28P01`), rather than only refusing its next command (which an
    /// expiry layer does). Off by default.
    pub close_when_expired: bool,
}

impl ServePgConfig {
    /// Defaults: no TLS, no plaintext tokens, 10 s handshake, 64 MiB messages.
    pub fn new(name: impl Into<String>, upstream: UpstreamConfig) -> Self {
        ServePgConfig {
            name: name.into(),
            tls: None,
            allow_plaintext_tokens_on_loopback: false,
            databases: None,
            allow_startup_options: false,
            max_sessions: None,
            max_sessions_per_identity: None,
            handshake_timeout: Duration::from_secs(10),
            max_message: crate::codec::DEFAULT_MAX_MESSAGE,
            max_pipeline: 256,
            upstream,
            resolve_column_sources: false,
            resolve_functions: true,
            close_when_expired: false,
        }
    }
}

/// Largest password message read: a token up to 1 MiB is read and refused by the
/// authenticator with its own reason (28P01); a larger one is refused from its length alone.
const MAX_PASSWORD_MESSAGE: usize = 1024 * 1024 + 1024;

/// Counters of a PostgreSQL listener.
pub type PgMetrics = portcullis_core::listener::ListenerMetrics;

/// A listener's live state, kept across reconfigurations ([`ServePg::reconfigure`]).
#[derive(Debug)]
struct Shared {
    cancel: CancelRegistry,
    metrics: Arc<PgMetrics>,
    /// Sessions counted against `max_sessions` (including those still logging in) and
    /// `max_sessions_per_identity`.
    caps: Arc<SessionCaps>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Source columns of results, for every session of the listener.
    catalog: crate::catalog::Catalog,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            cancel: CancelRegistry::default(),
            metrics: Arc::default(),
            caps: Arc::default(),
            shutdown: tokio::sync::watch::channel(false).0,
            catalog: crate::catalog::Catalog::default(),
        }
    }
}

/// The PostgreSQL protocol server: one per listener, shared by its connections.
///
/// `A` authenticates (`Service<Credentials, Response = Identity>`), `N` builds each
/// session's command stack around its [`PgUpstream`].
pub struct ServePg<A, N> {
    config: Arc<ServePgConfig>,
    auth: A,
    stack: Arc<N>,
    shared: Arc<Shared>,
    observer: Option<ConnectionObserver>,
}

impl<A: Clone, N> Clone for ServePg<A, N> {
    fn clone(&self) -> Self {
        ServePg {
            config: self.config.clone(),
            auth: self.auth.clone(),
            stack: self.stack.clone(),
            shared: self.shared.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<A, N> std::fmt::Debug for ServePg<A, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServePg")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl<A, N, S, B> ServePg<A, N>
where
    A: Service<Credentials, Response = Identity, Error = Error> + Clone + Send + Sync + 'static,
    A::Future: Send,
    N: NewService<Target<PgUpstream>, Service = S> + Send + Sync + 'static,
    S: Service<Request<PgCommand>, Response = Response<B>, Error = Error> + Send + 'static,
    S::Future: Send + 'static,
    B: ReplyBody<Event = Frame> + Send + 'static,
{
    /// A server for one listener.
    pub fn new(config: ServePgConfig, auth: A, stack: N) -> Self {
        ServePg {
            config: Arc::new(config),
            auth,
            stack: Arc::new(stack),
            shared: Arc::default(),
            observer: None,
        }
    }

    /// Report every connection that does not become a session (refused login or startup,
    /// handshake timeout, TLS failure, ...) to `observer`, e.g. the audit trail.
    pub fn with_connection_observer(mut self, observer: ConnectionObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// A server with another configuration, authenticator and stack that shares this one's
    /// live state: cancel keys (a client of an older session can still cancel), session
    /// counts and caps, metrics, and shutdown. This is how a configuration reload replaces a
    /// listener's server without losing track of its open sessions.
    pub fn reconfigure<A2, N2>(
        &self,
        config: ServePgConfig,
        auth: A2,
        stack: N2,
    ) -> ServePg<A2, N2> {
        ServePg {
            config: Arc::new(config),
            auth,
            stack: Arc::new(stack),
            shared: self.shared.clone(),
            observer: self.observer.clone(),
        }
    }

    /// End every open session of this listener (and of the servers sharing its state): each
    /// client gets `FATAL 57P01` (as from a database shutdown) and its connection closes, in
    /// the middle of a result if need be. For the end of a drain deadline.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// The listener's counters.
    pub fn metrics(&self) -> Arc<PgMetrics> {
        self.shared.metrics.clone()
    }

    /// The listener's configuration.
    pub fn config(&self) -> &ServePgConfig {
        &self.config
    }

    /// Serve one client connection to its end. Never panics; every failure is logged and,
    /// where the protocol allows, told to the client.
    pub fn serve_connection<I: portcullis_core::io::Io>(
        &self,
        io: I,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let mut client = Client {
                io: Box::new(portcullis_core::stall::Metered::new(io)),
                rbuf: BytesMut::with_capacity(8192),
                tls: false,
                claimed_user: None,
                last_word: None,
            };
            let deadline = this.config.handshake_timeout;
            let handshake = tokio::time::timeout(deadline, this.handshake(&mut client, peer)).await;
            let established = match handshake {
                Ok(Ok(Some(e))) => e,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    this.shared
                        .metrics
                        .logins_refused
                        .fetch_add(1, Ordering::Relaxed);
                    info!(target: "portcullis::postgres", %peer, listener = %this.config.name, error = %e, "connection refused");
                    // A client that connects and leaves without a word (a health check) is
                    // not an event worth a record.
                    let silent = matches!(&e, HandshakeError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
                        && client.claimed_user.is_none();
                    if !silent {
                        this.observe(e.kind(), peer, client.claimed_user.take(), e.to_string());
                    }
                    client.say_last_word().await;
                    return;
                }
                Err(_) => {
                    this.shared
                        .metrics
                        .logins_refused
                        .fetch_add(1, Ordering::Relaxed);
                    info!(target: "portcullis::postgres", %peer, listener = %this.config.name, "handshake timed out");
                    this.observe(
                        ConnectionEventKind::HandshakeTimeout,
                        peer,
                        client.claimed_user.take(),
                        "the handshake deadline passed before authentication finished".into(),
                    );
                    client.last_word = None;
                    let _ = client
                        .fatal("08006", "the gateway's handshake deadline passed before authentication finished")
                        .await;
                    client.say_last_word().await;
                    return;
                }
            };
            this.run_session(client, established).await;
        }
    }

    fn observe(
        &self,
        kind: ConnectionEventKind,
        peer: SocketAddr,
        claimed_user: Option<String>,
        reason: String,
    ) {
        if let Some(observer) = &self.observer {
            observer(
                ConnectionEvent::new(kind, Protocol::Postgres, &self.config.name, peer, reason)
                    .claimed_user(claimed_user),
            );
        }
    }

    async fn handshake(
        &self,
        client: &mut Client,
        peer: SocketAddr,
    ) -> Result<Option<Established>, HandshakeError> {
        let cfg = &self.config;
        let mut negotiations = 0;
        let (major, minor, params) = loop {
            if client.rbuf.is_empty() && client.io.read_buf(&mut client.rbuf).await? == 0 {
                return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            // A TLS ClientHello instead of a startup packet: PostgreSQL 17 direct TLS.
            if !client.tls && client.rbuf[0] == 0x16 {
                let Some(tls) = &cfg.tls else {
                    return Err(HandshakeError::Protocol(
                        "direct TLS attempted but the listener has no TLS configured".into(),
                    ));
                };
                let prefix = std::mem::take(&mut client.rbuf).freeze();
                let io = std::mem::replace(&mut client.io, Box::new(tokio::io::empty()));
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                let stream = acceptor
                    .accept(Prefixed::new(prefix, io))
                    .await
                    .map_err(HandshakeError::Tls)?;
                if stream.get_ref().1.alpn_protocol() != Some(b"postgresql") {
                    return Err(HandshakeError::Protocol(
                        "direct TLS requires ALPN \"postgresql\"".into(),
                    ));
                }
                client.io = Box::new(stream);
                client.tls = true;
                continue;
            }
            let packet = match StartupPacket::decode(&mut client.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    if client.io.read_buf(&mut client.rbuf).await? == 0 {
                        return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    continue;
                }
                // A length no startup packet has (a Terminate sent before the startup packet,
                // as node-postgres' quick connect-and-end does; an HTTP request): PostgreSQL
                // closes such a connection without a word, and so does the gateway (the
                // connection event is recorded).
                Err(e @ (CodecError::BadLength(_) | CodecError::TooLong { .. })) => {
                    return Err(HandshakeError::Protocol(format!(
                        "invalid length of startup packet: {e}"
                    )));
                }
                Err(e) => {
                    let msg = format!("invalid startup packet: {e}");
                    let _ = client.fatal("08P01", &msg).await;
                    return Err(HandshakeError::Protocol(msg));
                }
            };
            match packet {
                StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                    negotiations += 1;
                    if negotiations > 2 {
                        return Err(HandshakeError::Protocol(
                            "too many negotiation requests".into(),
                        ));
                    }
                    if !client.rbuf.is_empty() {
                        // Bytes sent before the answer could be injected by a man in the
                        // middle (CVE-2021-23214): refuse.
                        return Err(HandshakeError::Protocol(
                            "unexpected data after SSLRequest or GSSENCRequest".into(),
                        ));
                    }
                    let is_ssl = packet == StartupPacket::SslRequest;
                    match (&cfg.tls, is_ssl, client.tls) {
                        (Some(tls), true, false) => {
                            client.io.write_all(b"S").await?;
                            let io =
                                std::mem::replace(&mut client.io, Box::new(tokio::io::empty()));
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                            client.io =
                                Box::new(acceptor.accept(io).await.map_err(HandshakeError::Tls)?);
                            client.tls = true;
                        }
                        _ => client.io.write_all(b"N").await?,
                    }
                }
                StartupPacket::CancelRequest { pid, key } => {
                    self.forward_cancel(pid, key).await;
                    return Ok(None);
                }
                StartupPacket::Startup {
                    major,
                    minor,
                    params,
                } => break (major, minor, params),
            }
        };

        if major != 3 {
            let msg =
                format!("unsupported frontend protocol {major}.{minor}: the gateway supports 3.0");
            let _ = client.fatal("0A000", &msg).await;
            return Err(HandshakeError::Refused(msg));
        }
        let (pq_options, params): (Vec<_>, Vec<_>) = params
            .into_iter()
            .partition(|(k, _)| k.starts_with("_pq_."));
        if minor > 0 || !pq_options.is_empty() {
            let msg = BackendMessage::NegotiateProtocolVersion {
                minor: 0,
                options: pq_options
                    .iter()
                    .map(|(k, _)| Bytes::from(k.clone()))
                    .collect(),
            };
            client.send(&msg).await?;
        }
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let Some(user) = param("user").filter(|u| !u.is_empty()) else {
            let msg = "no PostgreSQL user name specified in startup packet";
            let _ = client.fatal("28000", msg).await;
            return Err(HandshakeError::Refused(msg.into()));
        };
        client.claimed_user = Some(user.clone());
        let database = param("database")
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone());
        if let Some(r) = param("replication")
            && !matches!(
                r.to_ascii_lowercase().as_str(),
                "false" | "off" | "no" | "0"
            )
        {
            let msg = "replication connections are not allowed through the gateway";
            let _ = client.fatal("42501", msg).await;
            return Err(HandshakeError::Refused(msg.into()));
        }
        // Startup parameters set session state before any statement is judged: a `role` would
        // give the session a role `SET ROLE` is refused for, a `search_path` would change what
        // names resolve to, and PostgreSQL uses the last of two same-named ones. Only these
        // pass; anything else is refused (set it with SET, which the guard judges).
        for (i, (k, _)) in params.iter().enumerate() {
            if params[..i].iter().any(|(p, _)| p.eq_ignore_ascii_case(k)) {
                let msg = format!("the startup parameter \"{k}\" is given twice");
                let _ = client.fatal("08P01", &msg).await;
                return Err(HandshakeError::Refused(msg));
            }
            if !STARTUP_PARAMETERS.iter().any(|p| p.eq_ignore_ascii_case(k)) {
                let msg = format!(
                    "the startup parameter \"{k}\" is not allowed through the gateway (allowed: {}); set it with SET after connecting",
                    STARTUP_PARAMETERS.join(", ")
                );
                let _ = client.fatal("42501", &msg).await;
                return Err(HandshakeError::Refused(msg));
            }
        }
        if param("options").is_some_and(|o| !o.trim().is_empty()) && !cfg.allow_startup_options {
            let msg = "the startup parameter \"options\" is not allowed by this gateway listener";
            let _ = client.fatal("42501", msg).await;
            return Err(HandshakeError::Refused(msg.into()));
        }
        if let Some(allowed) = &cfg.databases
            && !allowed.contains(&database)
        {
            let msg = format!("database \"{database}\" is not available through the gateway");
            let _ = client.fatal("3D000", &msg).await;
            return Err(HandshakeError::Refused(msg));
        }
        // A token is a secret in clear: refuse before asking for it where it would travel
        // unencrypted, unless the config allows loopback.
        let plaintext_allowed = is_loopback(&peer) && cfg.allow_plaintext_tokens_on_loopback;
        if !(client.tls || plaintext_allowed) {
            let msg = if cfg.tls.is_some() {
                "this gateway accepts tokens only over TLS: connect with sslmode=require"
            } else {
                "this gateway accepts tokens only over TLS, and this listener has no TLS configured"
            };
            let _ = client.fatal("28000", msg).await;
            return Err(HandshakeError::Refused(msg.into()));
        }
        let Some(session_slot) = self.shared.caps.reserve(cfg.max_sessions) else {
            let msg = "sorry, too many clients already (the gateway's max_sessions)";
            let _ = client.fatal("53300", msg).await;
            return Err(HandshakeError::Refused(msg.into()));
        };

        client
            .send(&BackendMessage::Authentication(
                AuthRequest::CleartextPassword,
            ))
            .await?;
        let token = loop {
            match decode_frame(&mut client.rbuf, MAX_PASSWORD_MESSAGE) {
                Ok(Some(frame)) if frame.tag() == b'p' => {
                    let body = frame.body();
                    let token = body.strip_suffix(&[0]).unwrap_or(body);
                    break String::from_utf8_lossy(token).into_owned();
                }
                Ok(Some(frame)) => {
                    let msg = format!(
                        "expected a password message, got message type {:?}",
                        frame.tag() as char
                    );
                    let _ = client.fatal("08P01", &msg).await;
                    return Err(HandshakeError::Protocol(msg));
                }
                Ok(None) => {
                    if client.io.read_buf(&mut client.rbuf).await? == 0 {
                        return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Err(CodecError::TooLong { len, max }) => {
                    // Not a protocol error from the client's point of view: its token is
                    // too large. Refused before the body is read.
                    let msg = format!(
                        "authentication failed: token too large ({len} bytes; the limit is {max})"
                    );
                    let _ = client.fatal("28P01", &msg).await;
                    return Err(HandshakeError::Unauthenticated(msg));
                }
                Err(e) => {
                    let msg = format!("invalid password message: {e}");
                    let _ = client.fatal("08P01", &msg).await;
                    return Err(HandshakeError::Protocol(msg));
                }
            }
        };

        let mut auth = self.auth.clone();
        let credentials = Credentials::new(user.clone(), token).with_peer(peer);
        let identity = match std::future::poll_fn(|cx| auth.poll_ready(cx)).await {
            Ok(()) => auth.call(credentials).await,
            Err(e) => Err(e),
        };
        let identity = match identity {
            Ok(identity) => identity,
            Err(e) => {
                let r = rescue(&e);
                let msg = match r.kind {
                    RescueKind::AuthenticationFailed => r.message.into_owned(),
                    _ => format!("authentication failed: {}", r.message),
                };
                let _ = client.fatal("28P01", &msg).await;
                return Err(HandshakeError::Unauthenticated(msg));
            }
        };
        let identity_slot = self
            .shared
            .caps
            .acquire(&identity.subject, cfg.max_sessions_per_identity);
        let Some(identity_slot) = identity_slot else {
            let msg = format!(
                "too many sessions for identity \"{}\" (the gateway's max_sessions_per_identity)",
                identity.subject
            );
            let _ = client.fatal("53300", &msg).await;
            return Err(HandshakeError::Refused(msg));
        };

        let forwarded: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "replication"))
            .cloned()
            .collect();
        let up = &cfg.upstream;
        let up_db = up.database.clone().unwrap_or_else(|| database.clone());
        let Some((up_user, up_password)) = up.login_for(&identity.groups) else {
            let msg = format!(
                "identity \"{}\" is in none of the groups mapped to a database role",
                identity.subject
            );
            let _ = client.fatal("28000", &msg).await;
            return Err(HandshakeError::Refused(msg));
        };
        let connected = match upstream::connect(up, up_user, up_password, &up_db, &forwarded).await
        {
            Ok(c) => c,
            Err(ConnectError::Refused(frame)) => {
                // The database's own FATAL (database does not exist, too many connections...).
                client
                    .last_word
                    .get_or_insert_with(BytesMut::new)
                    .extend_from_slice(frame.as_bytes());
                return Err(HandshakeError::Upstream(
                    "the database refused the login".into(),
                ));
            }
            Err(e) => {
                warn!(target: "portcullis::postgres", listener = %cfg.name, error = %e, "upstream connection failed");
                let _ = client.fatal("08006", &format!("the gateway {e}")).await;
                return Err(HandshakeError::Upstream(e.to_string()));
            }
        };

        let id = self.shared.caps.new_session_id();
        let mut session = Session::new(id, Protocol::Postgres, cfg.name.clone(), peer, identity);
        session.claimed_user = user;
        session.database = Some(database);
        session.upstream = up.address();
        session.upstream_user = up_user.to_owned();
        session.application = param("application_name");
        session.startup_params = params;
        session.tls = client.tls;
        if cfg.resolve_functions {
            session.catalog = Some(Arc::new(crate::catalog::Functions {
                catalog: self.shared.catalog.clone(),
                config: Arc::new(up.clone()),
                max_message: cfg.max_message,
                database: up_db.clone(),
            }));
        }
        let session = Arc::new(session);
        for p in &connected.parameters {
            note_parameter(&session, p);
        }

        let (secret, cancel_guard) = self.shared.cancel.register(CancelTarget {
            host: up.host.clone(),
            port: up.port,
            pid: connected.pid,
            key: connected.key,
            signal: session.cancel.clone(),
        });
        let mut out = BytesMut::new();
        BackendMessage::Authentication(AuthRequest::Ok).encode(&mut out);
        for p in &connected.parameters {
            out.extend_from_slice(p.as_bytes());
        }
        BackendMessage::BackendKeyData {
            pid: connected.pid,
            key: secret,
        }
        .encode(&mut out);
        BackendMessage::ReadyForQuery { status: b'I' }.encode(&mut out);
        let mut upstream = PgUpstream::new(connected, cfg.max_message);
        if cfg.resolve_column_sources {
            upstream = upstream.with_sources(crate::conn::Sources {
                catalog: self.shared.catalog.clone(),
                config: Arc::new(up.clone()),
                max_message: cfg.max_message,
                database: up_db.clone(),
            });
        }
        client.io.write_all(&out).await?;
        client.io.flush().await?;
        Ok(Some(Established {
            session,
            upstream,
            _guards: (cancel_guard, identity_slot, session_slot),
        }))
    }

    async fn forward_cancel(&self, pid: i32, secret: i32) {
        match self.shared.cancel.find(pid, secret) {
            Some(target) => {
                target.signal.fire();
                self.shared
                    .metrics
                    .cancels_forwarded
                    .fetch_add(1, Ordering::Relaxed);
                if let Err(e) =
                    upstream::send_cancel(&target.host, target.port, target.pid, target.key).await
                {
                    warn!(target: "portcullis::postgres", error = %e, "could not forward a cancel request");
                }
            }
            None => {
                debug!(target: "portcullis::postgres", pid, "cancel request with an unknown key ignored")
            }
        }
    }

    async fn run_session(&self, client: Client, est: Established) {
        let metrics = self.shared.metrics.clone();
        metrics.sessions_active.fetch_add(1, Ordering::Relaxed);
        metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        let session = est.session.clone();
        info!(target: "portcullis::postgres", session = %session.id, identity = %session.identity.subject,
              peer = %session.peer, database = session.database.as_deref().unwrap_or(""), "session started");
        let service = self
            .stack
            .new_service(Target::new(est.session.clone(), est.upstream));
        let on_board = SessionBoard::enter(&metrics, session.clone(), "starting");
        let mut driver = Driver {
            status: on_board.0.clone(),
            session: est.session,
            client: client.io,
            rbuf: client.rbuf,
            wbuf: BytesMut::with_capacity(16 * 1024),
            client_unflushed: false,
            service,
            builder: UnitBuilder::new(self.config.max_message),
            call: None,
            replies: VecDeque::new(),
            events: None,
            events_call: None,
            events_requested: false,
            waiting: None,
            terminated: false,
            upload: None,
            pending_copy: None,
            skip_until_sync: false,
            tx_status: b'I',
            closing: false,
            max_pipeline: self.config.max_pipeline.max(1),
            metrics: metrics.clone(),
            end: None,
            notices: session.notices.take_receiver(),
            client_eof: false,
            call_cancelled: false,
            watchdog: Watchdog::new(),
            stalls: StallReport::new(
                metrics.clone(),
                self.observer.clone(),
                Protocol::Postgres,
                &session.target,
                session.peer,
            ),
            shutdown: {
                let mut rx = self.shared.shutdown.subscribe();
                Box::pin(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
            },
            expiry: session
                .identity
                .expires_at
                .filter(|_| self.config.close_when_expired)
                .map(|at| {
                    let left = at
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default();
                    Box::pin(tokio::time::sleep(left))
                }),
        };
        // The session boundary: a panic anywhere in this session's stack ends this session
        // (with an error to its client and its end in the trail), never the process or the
        // other sessions on its thread.
        let mut panicked = false;
        let end = std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.poll(cx))) {
                Ok(polled) => polled,
                Err(_) => {
                    panicked = true;
                    Poll::Ready("internal gateway error: the session's handler panicked".into())
                }
            }
        })
        .await;
        if panicked {
            metrics.session_panics.fetch_add(1, Ordering::Relaxed);
            warn!(target: "portcullis::postgres", session = %session.id, "a panic ended the session");
            let mut fatal = BytesMut::new();
            error_message(
                Severity::Fatal,
                "XX000",
                "internal gateway error: this session was ended (the gateway goes on serving others)",
            )
            .encode(&mut fatal);
            let _ =
                tokio::time::timeout(Duration::from_secs(1), driver.client.write_all(&fatal)).await;
        }
        // Before the stack is dropped, so layers that observe the drop can say why.
        session.set_end_reason(end.to_string());
        let _ = driver.client.shutdown().await;
        metrics.sessions_active.fetch_sub(1, Ordering::Relaxed);
        info!(target: "portcullis::postgres", session = %session.id, reason = %end, "session ended");
        drop(on_board);
        drop(est._guards);
    }
}

/// Remember a ParameterStatus the database sent, as policy must read SQL the way the
/// database will (`standard_conforming_strings`, `client_encoding`).
fn note_parameter(session: &Session, frame: &Frame) {
    if let portcullis_core::EventKind::Parameter { name, value } =
        portcullis_core::EventView::view(frame)
        && !name.is_empty()
    {
        session.set_server_param(name, value);
    }
}

/// The per-connection tier as a tower service: `call((io, peer))` serves the connection to its
/// end. The future never fails; every failure is told to the client and logged.
impl<A, N, S, B, I> Service<(I, SocketAddr)> for ServePg<A, N>
where
    A: Service<Credentials, Response = Identity, Error = Error> + Clone + Send + Sync + 'static,
    A::Future: Send,
    N: NewService<Target<PgUpstream>, Service = S> + Send + Sync + 'static,
    S: Service<Request<PgCommand>, Response = Response<B>, Error = Error> + Send + 'static,
    S::Future: Send + 'static,
    B: ReplyBody<Event = Frame> + Send + 'static,
    I: portcullis_core::io::Io,
{
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (io, peer): (I, SocketAddr)) -> Self::Future {
        let serve = self.serve_connection(io, peer);
        Box::pin(async move {
            serve.await;
            Ok(())
        })
    }
}

struct Client {
    io: BoxIo,
    rbuf: BytesMut,
    tls: bool,
    /// The user name from the startup packet, once read (for connection events).
    claimed_user: Option<String>,
    /// The FATAL that ends a refused handshake, sent once the refusal is recorded: a client
    /// never hears of a refusal the audit trail could miss.
    last_word: Option<BytesMut>,
}

impl Client {
    async fn send(&mut self, msg: &BackendMessage) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        self.io.write_all(&buf).await?;
        self.io.flush().await
    }

    /// End the handshake with a FATAL — kept until [`Client::say_last_word`], after the
    /// refusal is recorded.
    async fn fatal(&mut self, code: &str, message: &str) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        error_message(Severity::Fatal, code, message).encode(&mut buf);
        self.last_word
            .get_or_insert_with(BytesMut::new)
            .extend_from_slice(&buf);
        Ok(())
    }

    /// Send the FATAL kept by [`Client::fatal`], if any.
    async fn say_last_word(&mut self) {
        if let Some(buf) = self.last_word.take() {
            let _ = self.io.write_all(&buf).await;
            let _ = self.io.flush().await;
        }
    }
}

struct Established {
    session: Arc<Session>,
    upstream: PgUpstream,
    _guards: (crate::cancel::CancelKeyGuard, IdentitySlot, SessionSlot),
}

/// A layer's notice as a `NoticeResponse`.
fn notice_message(notice: &portcullis_core::ClientNotice) -> BackendMessage {
    let severity = bytes::Bytes::from_static(b"NOTICE");
    let mut fields = vec![
        (b'S', severity.clone()),
        (b'V', severity),
        (b'C', bytes::Bytes::copy_from_slice(notice.code.as_bytes())),
        (
            b'M',
            bytes::Bytes::copy_from_slice(notice.message.as_bytes()),
        ),
    ];
    if let Some(detail) = &notice.detail {
        fields.push((b'D', bytes::Bytes::copy_from_slice(detail.as_bytes())));
    }
    if let Some(hint) = &notice.hint {
        fields.push((b'H', bytes::Bytes::copy_from_slice(hint.as_bytes())));
    }
    BackendMessage::NoticeResponse { fields }
}

/// The SQLSTATE of a rescued error.
pub fn sqlstate(kind: RescueKind) -> &'static str {
    match kind {
        RescueKind::AuthenticationFailed => "28P01",
        RescueKind::Forbidden => "42501",
        RescueKind::TimedOut | RescueKind::Cancelled => "57014",
        RescueKind::AuditFailure => "58000",
        RescueKind::ProtocolViolation => "08P01",
        RescueKind::UpstreamUnavailable => "08006",
        RescueKind::Limit => "53300",
        RescueKind::TooComplex => "54001",
        _ => "XX000",
    }
}

/// The startup parameters a client may send (matched ignoring case); the session settings
/// among them do not change how SQL is read or what names resolve to (`client_encoding` does,
/// and the guard follows the value the database reports).
pub const STARTUP_PARAMETERS: &[&str] = &[
    "user",
    "database",
    "replication",
    "options",
    "application_name",
    "fallback_application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "bytea_output",
    "geqo",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// Stop pulling replies into the client buffer above this; write first.
const HIGH_WATER: usize = 256 * 1024;

type CallFuture<S> = Pin<Box<<S as Service<Request<PgCommand>>>::Future>>;

struct Reply<B> {
    /// The reply's body, or the error that replaced it (a refusal queued behind earlier
    /// replies, so the client sees answers in order).
    body: Result<Pin<Box<B>>, Option<Error>>,
    expects_ready: bool,
    /// What the unit did to named statements and portals, confirmed to the unit builder if
    /// the reply ends without an error.
    ledger: Option<crate::command::Ledger>,
    /// The reply carried an error.
    failed: bool,
}

/// Most bytes of later units read from the client while a unit is in the stack (read only
/// to notice the client going away).
const WATCH_BUFFER: usize = 1024 * 1024;

/// A unit handed to the stack: its call, whether it expects ReadyForQuery, its ledger.
type Call<S> = (CallFuture<S>, bool, Option<crate::command::Ledger>);

struct Driver<S: Service<Request<PgCommand>>, B> {
    session: Arc<Session>,
    client: BoxIo,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes were written to the client since the last flush that finished.
    client_unflushed: bool,
    service: S,
    builder: UnitBuilder,
    /// The unit being handed to the stack (at most one: units enter in order).
    call: Option<Call<S>>,
    replies: VecDeque<Reply<B>>,
    events: Option<Pin<Box<B>>>,
    events_call: Option<CallFuture<S>>,
    events_requested: bool,
    /// A unit waiting for the stack to be ready.
    waiting: Option<PgCommand>,
    /// The client sent Terminate.
    terminated: bool,
    upload: Option<UploadSender>,
    /// A COPY frame from the client waiting for room in the upload.
    pending_copy: Option<Frame>,
    /// A unit without Sync was refused: drop the client's messages up to the next Sync, as
    /// the database would after an error.
    skip_until_sync: bool,
    tx_status: u8,
    closing: bool,
    max_pipeline: usize,
    metrics: Arc<PgMetrics>,
    end: Option<String>,
    /// Completes when the listener shuts its sessions down.
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Fires when the identity's credential expires (with `close_when_expired`).
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Notices layers send the client outside any reply (an approval wait).
    notices: Option<tokio::sync::mpsc::Receiver<portcullis_core::ClientNotice>>,
    /// The client's side of the connection ended (read while a unit was in the stack).
    client_eof: bool,
    /// The unit in the stack was cancelled because the client is gone.
    call_cancelled: bool,
    /// The stall detector (`portcullis_core::stall`).
    watchdog: Watchdog,
    /// Where stalls are reported.
    stalls: StallReport,
    /// What the session says it is doing, on its listener's board (refreshed each tick).
    status: Arc<SessionStatus>,
}

impl<S, B> Driver<S, B>
where
    S: Service<Request<PgCommand>, Response = Response<B>, Error = Error>,
    B: ReplyBody<Event = Frame>,
{
    fn push_frame(&mut self, frame: &Frame) {
        match frame.tag() {
            b'Z' => {
                if let Some(&s) = frame.body().first() {
                    self.tx_status = s;
                }
            }
            b'S' => note_parameter(&self.session, frame),
            _ => {}
        }
        self.wbuf.extend_from_slice(frame.as_bytes());
    }

    /// Tell the client about a failed unit in its own protocol.
    fn push_rescue(&mut self, error: &Error, expects_ready: bool) {
        if let Some(UpstreamError::EndedAfterFatal) = error.downcast_ref::<UpstreamError>() {
            self.closing = true;
            self.end
                .get_or_insert_with(|| "the database ended the session".into());
            return;
        }
        if self.terminated {
            // The client said goodbye and reads nothing more: the database closing the
            // connection after Terminate is no error to report.
            self.closing = true;
            return;
        }
        let r = rescue(error);
        self.metrics.command_errors.fetch_add(1, Ordering::Relaxed);
        let severity = if r.close {
            Severity::Fatal
        } else {
            Severity::Error
        };
        error_message(severity, sqlstate(r.kind), &r.message).encode(&mut self.wbuf);
        if r.close {
            self.closing = true;
            self.end
                .get_or_insert_with(|| r.message.clone().into_owned());
        } else if expects_ready {
            BackendMessage::ReadyForQuery {
                status: self.tx_status,
            }
            .encode(&mut self.wbuf);
        } else {
            self.skip_until_sync = true;
        }
    }

    fn protocol_error(&mut self, e: CodecError) {
        let err: Error = Box::new(Refusal::Protocol {
            message: e.to_string(),
        });
        self.push_rescue(&err, false);
    }

    /// The stall detector around [`Driver::poll_session`] (`portcullis_core::stall`): a
    /// poll that only the watchdog caused and that moves data is a lost wake-up. It is
    /// counted, logged with the session's state before the poll and reported as a `stalled`
    /// connection event; the watchdog's poll has already got the session going again.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<String> {
        let turn = self.watchdog.begin(cx);
        let state = turn.watchdog_only().then(|| self.state());
        if turn.ticked() {
            self.status
                .set(state.clone().unwrap_or_else(|| self.state()));
        }
        let out = self.poll_session(&mut Context::from_waker(turn.waker()));
        if let Some(quiet) = self.watchdog.end(turn) {
            let reason = self.stalls.stalled(
                &format!("session {}", self.session.id),
                quiet,
                &state.unwrap_or_default(),
            );
            warn!(target: "portcullis::postgres", session = %self.session.id, "{reason}");
        }
        out
    }

    /// The session's state, for a stall report.
    fn state(&self) -> String {
        format!(
            "replies={} call={} copy_frame={} upload={} client_buffer={} unflushed={} closing={}",
            self.replies.len(),
            self.call.is_some(),
            self.pending_copy.is_some(),
            self.upload.is_some(),
            self.wbuf.len(),
            self.client_unflushed,
            self.closing
        )
    }

    fn poll_session(&mut self, cx: &mut Context<'_>) -> Poll<String> {
        if !self.closing && self.shutdown.as_mut().poll(cx).is_ready() {
            // Whole frames only are ever buffered, so the FATAL can follow whatever is there.
            self.replies.clear();
            self.call = None;
            error_message(
                Severity::Fatal,
                "57P01",
                "terminating connection due to administrator command (the gateway is shutting down)",
            )
            .encode(&mut self.wbuf);
            self.closing = true;
            self.end = Some("the gateway shut the session down".into());
        }
        if !self.closing
            && let Some(expiry) = self.expiry.as_mut()
            && expiry.as_mut().poll(cx).is_ready()
        {
            let idle = self.call.is_none()
                && self.replies.is_empty()
                && self.waiting.is_none()
                && self.upload.is_none();
            if idle {
                // An idle session whose token expired ends now; a busy one at its next
                // command (the expiry layer refuses it) or when this check comes round again.
                error_message(
                    Severity::Fatal,
                    "28P01",
                    "authentication failed: the session's token expired; reconnect with a fresh token",
                )
                .encode(&mut self.wbuf);
                self.closing = true;
                self.end = Some("the session's token expired".into());
            } else {
                expiry
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_secs(1));
                let _ = expiry.as_mut().poll(cx);
            }
        }
        loop {
            let mut progress = false;

            // Replies, in order, into the client buffer.
            while self.wbuf.len() < HIGH_WATER {
                let Some(front) = self.replies.front_mut() else {
                    break;
                };
                let body = match &mut front.body {
                    Ok(body) => body,
                    Err(error) => {
                        let expects_ready = front.expects_ready;
                        let error = error.take();
                        self.replies.pop_front();
                        if let Some(e) = error {
                            self.push_rescue(&e, expects_ready);
                        }
                        progress = true;
                        continue;
                    }
                };
                match body.as_mut().poll_event(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        front.failed |= frame.tag() == b'E';
                        self.push_frame(&frame);
                        progress = true;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let expects_ready = front.expects_ready;
                        self.replies.pop_front();
                        self.push_rescue(&e, expects_ready);
                        progress = true;
                    }
                    Poll::Ready(None) => {
                        if let Some(done) = self.replies.pop_front()
                            && !done.failed
                            && let Some(ledger) = done.ledger
                        {
                            self.builder.confirm(ledger);
                        }
                        progress = true;
                    }
                    Poll::Pending => break,
                }
            }

            // What the database says while no command runs.
            if self.replies.is_empty()
                && self.call.is_none()
                && !self.closing
                && let Some(events) = self.events.as_mut()
            {
                match events.as_mut().poll_event(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        self.push_frame(&frame);
                        progress = true;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.events = None;
                        self.push_rescue(&e, false);
                        progress = true;
                    }
                    Poll::Ready(None) => {
                        self.events = None;
                        self.closing = true;
                        self.end
                            .get_or_insert_with(|| "the database ended the session".into());
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }

            // Notices from layers (asynchronous messages may come between any two frames).
            if let Some(rx) = self.notices.as_mut() {
                while let Poll::Ready(Some(notice)) = rx.poll_recv(cx) {
                    notice_message(&notice).encode(&mut self.wbuf);
                    progress = true;
                }
            }

            // Client writes.
            if !self.wbuf.is_empty() {
                match Pin::new(&mut self.client).poll_write(cx, &self.wbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready("the client went away".into()),
                    Poll::Ready(Ok(n)) => {
                        self.metrics
                            .bytes_to_clients
                            .fetch_add(n as u64, Ordering::Relaxed);
                        self.wbuf.advance(n);
                        self.client_unflushed = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(format!("client write failed: {e}")),
                    Poll::Pending => {}
                }
            }
            // A TLS stream holds written bytes until flushed; a flush that could not finish is
            // retried on every later poll until it does, not only after the next write.
            if self.wbuf.is_empty() && self.client_unflushed {
                match Pin::new(&mut self.client).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.client_unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(format!("client write failed: {e}")),
                    Poll::Pending => {}
                }
            }

            if self.closing {
                if self.wbuf.is_empty() && !self.client_unflushed {
                    return Poll::Ready(self.end.take().unwrap_or_else(|| "closed".into()));
                }
                if !progress {
                    return Poll::Pending;
                }
                continue;
            }

            // The unit being handed to the stack.
            if let Some((fut, _, _)) = self.call.as_mut() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        if let Some((_, expects_ready, ledger)) = self.call.take() {
                            let refused = result.as_ref().is_ok_and(|r| {
                                r.extensions
                                    .get::<portcullis_core::RefusedInPlace>()
                                    .is_some()
                            });
                            // Refused by a layer: nothing of it reached the server. A refusal
                            // is a command error, as a failure is.
                            if refused {
                                self.metrics.command_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            if (refused || result.is_err())
                                && let Some(ledger) = &ledger
                            {
                                self.builder.withdraw(ledger);
                            }
                            // Replies before this unit go first; a refusal is queued after them.
                            self.replies.push_back(Reply {
                                body: result.map(|r| Box::pin(r.body)).map_err(Some),
                                expects_ready,
                                // A unit refused in place never reached the server as sent.
                                ledger: ledger.filter(|_| !refused),
                                failed: false,
                            });
                        }
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }

            // While a unit is in the stack (an approval wait, a catalog lookup) the client is
            // not read for its next unit; watch it anyway, so that a client that goes away is
            // noticed at once: what waits for it is cancelled as by a Ctrl-C (an approval
            // request is withdrawn and its statement never runs). What it sent before going
            // is still run, in order, as the database itself would (it reads a closed
            // connection's last messages before it ends the session); each later unit that
            // waits is cancelled the same way. What the client sends meanwhile is kept, up to
            // a bound, for when the unit is done.
            if self.call.is_some() && self.end.is_none() {
                if self.client_eof {
                    if !self.call_cancelled {
                        self.call_cancelled = true;
                        self.session.cancel.fire();
                    }
                } else if self.rbuf.len() < WATCH_BUFFER {
                    if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                        self.rbuf.reserve(16 * 1024);
                    }
                    match poll_read_buf(Pin::new(&mut self.client), cx, &mut self.rbuf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            self.client_eof = true;
                            progress = true;
                        }
                        Poll::Ready(Ok(_)) => progress = true,
                        Poll::Pending => {}
                    }
                }
            }

            // COPY data waiting for room in the upload.
            if let Some(frame) = self.pending_copy.take() {
                let ends = matches!(frame.tag(), b'c' | b'f');
                match self.upload.as_mut() {
                    None => {
                        // No COPY in progress: the database ignores stray COPY messages.
                        progress = true;
                    }
                    Some(up) => match up.poll_reserve(cx) {
                        Poll::Ready(Ok(())) => {
                            let n = frame.as_bytes().len() as u64;
                            let _ = up.send_item(frame.into_bytes());
                            self.metrics
                                .bytes_from_clients
                                .fetch_add(n, Ordering::Relaxed);
                            if ends {
                                self.upload = None;
                            }
                            progress = true;
                        }
                        Poll::Ready(Err(_)) => {
                            // The unit finished without consuming it (COPY refused).
                            self.upload = None;
                            progress = true;
                        }
                        Poll::Pending => self.pending_copy = Some(frame),
                    },
                }
            }

            // Ask for the session's event stream once, before the first command.
            if !self.events_requested {
                match self.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.events_requested = true;
                        let req = Request::new(self.session.clone(), PgCommand::session_events());
                        self.events_call = Some(Box::pin(self.service.call(req)));
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.push_rescue(&e, false);
                        self.closing = true;
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(fut) = self.events_call.as_mut() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok(r)) => {
                        self.events_call = None;
                        self.events = Some(Box::pin(r.body));
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.events_call = None;
                        warn!(target: "portcullis::postgres", error = %e, "the stack refused the session event stream");
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }

            // A command that may change how SQL is read is answered (with its parameter
            // reports) before the next one is judged.
            if self.replies.is_empty() && self.call.is_none() && self.session.settings_unsettled() {
                self.session.settings_settled();
            }

            // The next unit from the client (while a settings change is unanswered, only the
            // COPY data of an upload in progress: the command waits for that data).
            if self.call.is_none()
                && (!self.session.settings_unsettled() || self.upload.is_some())
                && self.pending_copy.is_none()
                && self.events_requested
                && self.events_call.is_none()
                && self.replies.len() < self.max_pipeline
                && self.wbuf.len() < HIGH_WATER
            {
                match self.next_unit(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(end)) => {
                        if self.replies.is_empty() && self.wbuf.is_empty() {
                            return Poll::Ready(end);
                        }
                        self.end.get_or_insert(end);
                        self.closing = true;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }

            if !progress {
                return Poll::Pending;
            }
            portcullis_core::stall::progress();
        }
    }

    /// Whether `unit` must wait for the replies before it to be judged: after a command that
    /// may change how SQL is read, and whenever the unit's own reading depends on a setting
    /// (a backslash, a byte outside ASCII) while earlier units are unanswered — a setting can
    /// change in ways no statement text shows (a function, a trigger, a transaction's end).
    fn must_wait(&self, unit: &PgCommand) -> bool {
        self.session.settings_unsettled()
            || (!(self.replies.is_empty() && self.call.is_none()) && unit.reads_with_settings())
    }

    /// Take the next item off the client's stream and start it. `Err` ends the session.
    fn next_unit(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        loop {
            if self.waiting.as_ref().is_some_and(|u| self.must_wait(u)) {
                // Judged once the replies before it are in.
                return Poll::Pending;
            }
            if let Some(unit) = self.waiting.take() {
                return self.start_unit(unit, cx);
            }
            match self.builder.next(&mut self.rbuf) {
                Ok(Some(Item::Copy(frame))) => {
                    self.pending_copy = Some(frame);
                    return Poll::Ready(Ok(()));
                }
                Ok(Some(Item::Unit(unit))) => {
                    if self.skip_until_sync {
                        if !unit.slots.contains(&crate::command::Slot::Sync) {
                            continue;
                        }
                        self.skip_until_sync = false;
                        // The database never saw the refused batch: answer its Sync here.
                        BackendMessage::ReadyForQuery {
                            status: self.tx_status,
                        }
                        .encode(&mut self.wbuf);
                        return Poll::Ready(Ok(()));
                    }
                    // A new unit ends any COPY upload still open.
                    self.upload = None;
                    if self.must_wait(&unit) {
                        self.waiting = Some(unit);
                        return Poll::Ready(Ok(()));
                    }
                    return self.start_unit(unit, cx);
                }
                Ok(None) => {
                    if self.end.is_some() {
                        // Terminate was sent: close once its reply is done.
                        if self.replies.is_empty() {
                            self.closing = true;
                            return Poll::Ready(Ok(()));
                        }
                        return Poll::Pending;
                    }
                    if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                        self.rbuf.reserve(16 * 1024);
                    }
                    match poll_read_buf(Pin::new(&mut self.client), cx, &mut self.rbuf) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err("the client closed the connection".into()));
                        }
                        Poll::Ready(Ok(_)) => continue,
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Err(format!("client read failed: {e}")));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => {
                    warn!(target: "portcullis::postgres", session = %self.session.id, error = %e, "client protocol error");
                    self.protocol_error(e);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    fn start_unit(&mut self, unit: PgCommand, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        match self.service.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => {
                self.push_rescue(&e, unit.expects_ready());
                return Poll::Ready(Ok(()));
            }
            Poll::Pending => {
                self.waiting = Some(unit);
                return Poll::Pending;
            }
        }
        let terminate = portcullis_core::CommandView::kind(&unit) == CommandKind::Terminate;
        self.metrics.commands_total.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes_from_clients
            .fetch_add(unit.bytes().len() as u64, Ordering::Relaxed);
        let expects_ready = unit.expects_ready();
        let mut unit = unit;
        let ledger = unit.ledger.take();
        let mut req = Request::new(self.session.clone(), unit);
        if req.command.may_copy_in() {
            let (tx, rx) = upload_channel(16);
            self.upload = Some(tx);
            req = req.with_upload(rx);
        }
        self.call = Some((Box::pin(self.service.call(req)), expects_ready, ledger));
        self.call_cancelled = false;
        if terminate {
            self.terminated = true;
            self.end = Some("the client terminated the session".into());
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::new_service_fn;
    use tokio_test::io::Builder;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        StartupPacket::Startup {
            major: 3,
            minor: 0,
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
        .encode(&mut buf);
        buf.to_vec()
    }

    fn fatal(code: &str, message: &str) -> Vec<u8> {
        error_message(Severity::Fatal, code, message)
            .to_frame()
            .as_bytes()
            .to_vec()
    }

    type Server = ServePg<
        portcullis_identity::StaticTokens,
        portcullis_core::NewServiceFn<fn(Target<PgUpstream>) -> PgUpstream>,
    >;

    fn server(configure: impl FnOnce(&mut ServePgConfig)) -> Server {
        // Port 9 (discard) on loopback: these tests never reach the upstream.
        let mut config = ServePgConfig::new("t", UpstreamConfig::new("127.0.0.1", 9, "u", "p"));
        configure(&mut config);
        let stack: fn(Target<PgUpstream>) -> PgUpstream = |t| t.upstream;
        ServePg::new(
            config,
            portcullis_identity::StaticTokens::default(),
            new_service_fn(stack),
        )
    }

    const REMOTE: &str = "10.1.2.3:50000";
    const LOCAL: &str = "127.0.0.1:50000";

    #[tokio::test]
    async fn tokens_in_clear_are_refused_before_the_password_is_asked() {
        let io = Builder::new()
            .read(&startup(&[("user", "alice")]))
            .write(&fatal(
                "28000",
                "this gateway accepts tokens only over TLS, and this listener has no TLS configured",
            ))
            .build();
        // Loopback plaintext allowed, but the peer is remote.
        let s = server(|c| c.allow_plaintext_tokens_on_loopback = true);
        s.serve_connection(io, REMOTE.parse().unwrap()).await;
        assert_eq!(s.metrics().logins_refused.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn ssl_request_without_tls_is_answered_n_then_startup_goes_on() {
        let mut ssl = BytesMut::new();
        StartupPacket::SslRequest.encode(&mut ssl);
        let mut gss = BytesMut::new();
        StartupPacket::GssEncRequest.encode(&mut gss);
        let io = Builder::new()
            .read(&gss)
            .write(b"N")
            .read(&ssl)
            .write(b"N")
            .read(&startup(&[("user", "alice"), ("database", "secret")]))
            .write(&fatal(
                "3D000",
                "database \"secret\" is not available through the gateway",
            ))
            .build();
        let s = server(|c| {
            c.allow_plaintext_tokens_on_loopback = true;
            c.databases = Some(vec!["app".into()]);
        });
        s.serve_connection(io, LOCAL.parse().unwrap()).await;
    }

    #[tokio::test]
    async fn bytes_behind_an_ssl_request_end_the_connection() {
        let mut ssl = BytesMut::new();
        StartupPacket::SslRequest.encode(&mut ssl);
        ssl.extend_from_slice(&startup(&[("user", "alice")]));
        // Nothing is written: no 'N', no startup processing.
        let io = Builder::new().read(&ssl).build();
        server(|_| {})
            .serve_connection(io, LOCAL.parse().unwrap())
            .await;
    }

    #[tokio::test]
    async fn missing_user_replication_and_options_are_refused() {
        for (params, code, message) in [
            (
                vec![("database", "app")],
                "28000",
                "no PostgreSQL user name specified in startup packet",
            ),
            (
                vec![("user", "a"), ("replication", "database")],
                "42501",
                "replication connections are not allowed through the gateway",
            ),
            (
                vec![("user", "a"), ("options", "-c search_path=evil")],
                "42501",
                "the startup parameter \"options\" is not allowed by this gateway listener",
            ),
        ] {
            let io = Builder::new()
                .read(&startup(&params))
                .write(&fatal(code, message))
                .build();
            server(|c| c.allow_plaintext_tokens_on_loopback = true)
                .serve_connection(io, LOCAL.parse().unwrap())
                .await;
        }
    }

    /// Issue 17, class 7: startup parameters are an allow-list, and duplicates (PostgreSQL
    /// uses the last one: an empty first `options` hid the second) are refused.
    #[tokio::test]
    async fn startup_parameters_outside_the_allow_list_or_given_twice_are_refused() {
        let not_allowed = |k: &str| {
            format!(
                "the startup parameter \"{k}\" is not allowed through the gateway (allowed: {}); set it with SET after connecting",
                STARTUP_PARAMETERS.join(", ")
            )
        };
        for (params, code, message) in [
            (
                vec![("user", "a"), ("role", "app_priv")],
                "42501",
                not_allowed("role"),
            ),
            (
                vec![("user", "a"), ("search_path", "evil,public")],
                "42501",
                not_allowed("search_path"),
            ),
            (
                vec![("user", "a"), ("session_authorization", "postgres")],
                "42501",
                not_allowed("session_authorization"),
            ),
            (
                vec![
                    ("user", "a"),
                    ("options", ""),
                    ("options", "-c role=app_priv"),
                ],
                "08P01",
                "the startup parameter \"options\" is given twice".to_owned(),
            ),
            (
                vec![
                    ("user", "a"),
                    ("application_name", "x"),
                    ("APPLICATION_NAME", "y"),
                ],
                "08P01",
                "the startup parameter \"APPLICATION_NAME\" is given twice".to_owned(),
            ),
        ] {
            let io = Builder::new()
                .read(&startup(&params))
                .write(&fatal(code, &message))
                .build();
            server(|c| c.allow_plaintext_tokens_on_loopback = true)
                .serve_connection(io, LOCAL.parse().unwrap())
                .await;
        }
    }

    #[tokio::test]
    async fn an_unknown_token_gets_28p01() {
        let mut cleartext = BytesMut::new();
        BackendMessage::Authentication(AuthRequest::CleartextPassword).encode(&mut cleartext);
        let mut password = BytesMut::new();
        crate::codec::FrontendMessage::Password(Bytes::from_static(b"guess\0"))
            .encode(&mut password);
        let io = Builder::new()
            .read(&startup(&[("user", "alice")]))
            .write(&cleartext)
            .read(&password)
            .write(&fatal("28P01", "authentication failed: unknown token"))
            .build();
        server(|c| c.allow_plaintext_tokens_on_loopback = true)
            .serve_connection(io, LOCAL.parse().unwrap())
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_hits_the_handshake_deadline() {
        let io = Builder::new()
            .wait(Duration::from_secs(60))
            .write(&fatal(
                "08006",
                "the gateway's handshake deadline passed before authentication finished",
            ))
            .build();
        let s = server(|c| c.handshake_timeout = Duration::from_secs(2));
        s.serve_connection(io, LOCAL.parse().unwrap()).await;
        assert_eq!(s.metrics().logins_refused.load(Ordering::Relaxed), 1);
    }
}
