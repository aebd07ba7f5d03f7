//! [`ServeMySql`]: the client side of the gateway for MySQL and MariaDB clients. It reads the
//! database's greeting first (its version and connection id go to the client, so
//! `CONNECTION_ID()`, `SHOW PROCESSLIST` and `KILL` agree with what the client was told),
//! greets the client, takes its token through an authentication switch to
//! `mysql_clear_password` (over TLS, or on loopback when allowed), authenticates it, logs in
//! to the database with the credentials the gateway holds for that identity, then runs the
//! session: each client packet is one command unit through the session's stack, and the reply
//! streams back packet by packet.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use mysql_common::constants::CapabilityFlags;
use mysql_common::constants::StatusFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use portcullis_core::listener::{
    HandshakeError, IdentitySlot, ListenerMetrics, OnBoard, PeerGate, SessionBoard, SessionCaps,
    SessionSlot, catch_panic, is_loopback,
};
use portcullis_core::stall::{StallReport, StallWatch};
use portcullis_core::upstream::UpstreamConfig;
use portcullis_core::{
    CancelSignal, CommandKind, CommandView, ConnectionEvent, ConnectionEventKind,
    ConnectionObserver, Credentials, Error, Identity, NewService, Protocol, ReplyBody, Request,
    RescueKind, Response, Session, Target, UploadSender, rescue, upload_channel,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_service::Service;
use tracing::{info, warn};

use crate::command::{MyCommand, Prepareds, Unrunnable, com};
use crate::conn::MyUpstream;
use crate::event::{MyEvent, What, err_payload};
use crate::packet::{
    DEFAULT_MAX_PACKET, Packet, PacketError, ReadError, encode_packet, read_packet,
};
use crate::upstream::{self, ConnectError, Login, carried};
use crate::{BoxIo, Io};

/// Settings of one MySQL listener (`[[mysql]]`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeMySqlConfig {
    /// The target's name, recorded on every session.
    pub name: String,
    /// TLS for clients; `None` = no TLS offered.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accept tokens without TLS from loopback peers.
    pub allow_plaintext_tokens_on_loopback: bool,
    /// Databases clients may open at login or with `COM_INIT_DB`; `None` = any.
    pub databases: Option<Vec<String>>,
    /// Most sessions at once on this listener.
    pub max_sessions: Option<usize>,
    /// Most sessions at once per identity.
    pub max_sessions_per_identity: Option<usize>,
    /// Login must finish within this.
    pub handshake_timeout: Duration,
    /// Largest packet accepted from either side.
    pub max_packet: usize,
    /// The database.
    pub upstream: UpstreamConfig,
    /// Let clients run `LOAD DATA LOCAL INFILE` (their file streams to the database and is
    /// recorded as the command's upload). Off by default: the database then refuses it.
    pub local_infile: bool,
    /// End a session whose identity's credential expires as soon as it is idle.
    pub close_when_expired: bool,
    /// Most connections from one client address still logging in at once; more are refused
    /// with 1040 before a database connection is opened for them.
    pub max_unauthenticated_per_peer: usize,
}

/// Default for [`ServeMySqlConfig::max_unauthenticated_per_peer`].
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_PEER: usize = 256;

impl ServeMySqlConfig {
    /// Defaults: no TLS, no plaintext tokens, 10 s handshake, 64 MiB packets.
    pub fn new(name: impl Into<String>, upstream: UpstreamConfig) -> Self {
        ServeMySqlConfig {
            name: name.into(),
            tls: None,
            allow_plaintext_tokens_on_loopback: false,
            databases: None,
            max_sessions: None,
            max_sessions_per_identity: None,
            handshake_timeout: Duration::from_secs(10),
            max_packet: DEFAULT_MAX_PACKET,
            upstream,
            local_infile: false,
            close_when_expired: false,
            max_unauthenticated_per_peer: DEFAULT_MAX_UNAUTHENTICATED_PER_PEER,
        }
    }
}

/// Counters of a MySQL listener.
pub type MyMetrics = ListenerMetrics;

/// Largest authentication packet read: a token up to 1 MiB.
const MAX_TOKEN_PACKET: usize = 1024 * 1024 + 1024;

/// Flush what is buffered for the client beyond this many bytes.
const WRITE_HIGH: usize = 64 * 1024;

#[derive(Debug)]
struct Shared {
    caps: Arc<SessionCaps>,
    metrics: Arc<MyMetrics>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Open sessions by the database connection id they were given, with their identity's
    /// subject, so a `KILL` of one also ends what it waits for in the gateway (an approval),
    /// and an identity may `KILL` its own sessions.
    sessions: Mutex<HashMap<u32, (CancelSignal, String)>>,
    /// Connections still logging in, per client address.
    peers: Arc<PeerGate>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            caps: Arc::default(),
            metrics: Arc::default(),
            shutdown: tokio::sync::watch::channel(false).0,
            sessions: Mutex::default(),
            peers: Arc::default(),
        }
    }
}

/// The MySQL protocol server: one per listener, shared by its connections.
///
/// `A` authenticates (`Service<Credentials, Response = Identity>`), `N` builds each
/// session's command stack around its [`MyUpstream`].
pub struct ServeMySql<A, N> {
    config: Arc<ServeMySqlConfig>,
    auth: A,
    stack: Arc<N>,
    shared: Arc<Shared>,
    observer: Option<ConnectionObserver>,
}

impl<A: Clone, N> Clone for ServeMySql<A, N> {
    fn clone(&self) -> Self {
        ServeMySql {
            config: self.config.clone(),
            auth: self.auth.clone(),
            stack: self.stack.clone(),
            shared: self.shared.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<A, N> std::fmt::Debug for ServeMySql<A, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeMySql")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// The MySQL errno and SQLSTATE for a refusal of `kind` (`sql`: the statement refused).
///
/// A rule's refusal is `1142` (`ER_TABLEACCESS_DENIED_ERROR`) for a statement on tables
/// (SELECT, INSERT, UPDATE, DELETE, REPLACE, CREATE, ALTER, DROP, TRUNCATE, RENAME, LOAD,
/// HANDLER, WITH, TABLE, VALUES) and `1227` (`ER_SPECIFIC_ACCESS_DENIED_ERROR`) for anything
/// else (KILL, SET, GRANT, CALL, PREPARE, administrative statements), both with SQLSTATE
/// `42000`.
pub fn errno(kind: RescueKind, sql: Option<&str>) -> (u16, &'static str) {
    match kind {
        RescueKind::AuthenticationFailed => (1045, "28000"),
        RescueKind::Forbidden if sql.is_some_and(is_table_command) => (1142, "42000"),
        RescueKind::Forbidden => (1227, "42000"),
        RescueKind::TimedOut => (3024, "HY000"),
        RescueKind::Cancelled => (1317, "70100"),
        RescueKind::AuditFailure => (1290, "HY000"),
        RescueKind::ProtocolViolation => (1047, "08S01"),
        RescueKind::UpstreamUnavailable => (1927, "08S01"),
        RescueKind::Limit => (1040, "08004"),
        RescueKind::TooComplex => (1436, "HY000"),
        _ => (1105, "HY000"),
    }
}

fn is_table_command(sql: &str) -> bool {
    let word: String = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(
        word.as_str(),
        "SELECT"
            | "INSERT"
            | "UPDATE"
            | "DELETE"
            | "REPLACE"
            | "CREATE"
            | "ALTER"
            | "DROP"
            | "TRUNCATE"
            | "RENAME"
            | "LOAD"
            | "HANDLER"
            | "WITH"
            | "TABLE"
            | "VALUES"
    )
}

/// The client connection.
struct Client {
    io: BoxIo,
    rbuf: BytesMut,
    wbuf: BytesMut,
    tls: bool,
    claimed_user: Option<String>,
    /// The ERR that ends a refused handshake, sent once the refusal is recorded.
    last_word: Option<BytesMut>,
    /// Sequence id of the next packet to the client.
    seq: u8,
}

impl Client {
    async fn read_packet(&mut self, max: usize) -> Result<Packet, ReadError> {
        read_packet(&mut self.io, &mut self.rbuf, max).await
    }

    fn push(&mut self, payload: &[u8]) {
        self.seq = encode_packet(self.seq, payload, &mut self.wbuf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.io.flush().await
    }

    /// End the handshake with an ERR — kept until [`Client::say_last_word`], after the
    /// refusal is recorded.
    fn refuse(&mut self, code: u16, state: &str, message: &str) {
        let mut buf = BytesMut::new();
        self.seq = encode_packet(self.seq, &err_payload(code, state, message), &mut buf);
        self.last_word
            .get_or_insert_with(BytesMut::new)
            .extend_from_slice(&buf);
    }

    async fn say_last_word(&mut self) {
        if let Some(buf) = self.last_word.take() {
            let _ = self.io.write_all(&buf).await;
            let _ = self.io.flush().await;
        }
    }
}

impl From<ReadError> for HandshakeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => HandshakeError::Io(e),
            ReadError::Packet(e) => HandshakeError::Protocol(e.to_string()),
        }
    }
}

struct Established {
    session: Arc<Session>,
    upstream: MyUpstream,
    _guards: (KillGuard, IdentitySlot, SessionSlot),
}

/// Removes a session from the listener's connection-id map.
struct KillGuard {
    shared: Arc<Shared>,
    id: u32,
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A scramble of printable bytes (some clients treat a NUL as its end).
fn scramble() -> [u8; 20] {
    let mut out = [0u8; 20];
    for b in &mut out {
        *b = rand::random_range(0x21u8..0x7f);
    }
    out
}

/// The connection id a `KILL` statement names, if it is one.
fn kill_target(sql: &str) -> Option<u32> {
    let mut words = sql.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("kill") {
        return None;
    }
    let mut word = words.next()?;
    while ["hard", "soft", "query", "connection"]
        .iter()
        .any(|m| word.eq_ignore_ascii_case(m))
    {
        word = words.next()?;
    }
    word.trim_end_matches(';').parse().ok()
}

/// Errnos with which a database refuses `LOAD DATA LOCAL INFILE` for a client without the
/// capability (MySQL 1148 and 3948, MariaDB 4166).
const LOCAL_INFILE_REFUSED: [u16; 3] = [1148, 3948, 4166];

impl<A, N, S, B> ServeMySql<A, N>
where
    A: Service<Credentials, Response = Identity, Error = Error> + Clone + Send + Sync + 'static,
    A::Future: Send,
    N: NewService<Target<MyUpstream>, Service = S> + Send + Sync + 'static,
    S: Service<Request<MyCommand>, Response = Response<B>, Error = Error> + Send + 'static,
    S::Future: Send + 'static,
    B: ReplyBody<Event = MyEvent> + Send + 'static,
{
    /// A server for one listener.
    pub fn new(config: ServeMySqlConfig, auth: A, stack: N) -> Self {
        ServeMySql {
            config: Arc::new(config),
            auth,
            stack: Arc::new(stack),
            shared: Arc::default(),
            observer: None,
        }
    }

    /// Report every connection that does not become a session to `observer`.
    pub fn with_connection_observer(mut self, observer: ConnectionObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// A server with another configuration, authenticator and stack sharing this one's live
    /// state (session caps, metrics, shutdown, connection ids): a configuration reload.
    pub fn reconfigure<A2, N2>(
        &self,
        config: ServeMySqlConfig,
        auth: A2,
        stack: N2,
    ) -> ServeMySql<A2, N2> {
        ServeMySql {
            config: Arc::new(config),
            auth,
            stack: Arc::new(stack),
            shared: self.shared.clone(),
            observer: self.observer.clone(),
        }
    }

    /// End every open session of this listener: each idle client gets `ERROR 1053` and its
    /// connection closes, in the middle of a result if need be.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// The listener's counters.
    pub fn metrics(&self) -> Arc<MyMetrics> {
        self.shared.metrics.clone()
    }

    /// The listener's configuration.
    pub fn config(&self) -> &ServeMySqlConfig {
        &self.config
    }

    /// Serve one client connection to its end. Never panics; failures are logged and told
    /// to the client where the protocol allows.
    pub fn serve_connection<I: Io>(
        &self,
        io: I,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let mut client = Client {
                io: Box::new(portcullis_core::stall::Metered::new(io)),
                rbuf: BytesMut::with_capacity(8192),
                wbuf: BytesMut::with_capacity(16 * 1024),
                tls: false,
                claimed_user: None,
                last_word: None,
                seq: 0,
            };
            let deadline = this.config.handshake_timeout;
            let handshake = tokio::time::timeout(deadline, this.handshake(&mut client, peer)).await;
            let established = match handshake {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => {
                    this.shared
                        .metrics
                        .logins_refused
                        .fetch_add(1, Ordering::Relaxed);
                    info!(target: "portcullis::mysql", %peer, listener = %this.config.name, error = %e, "connection refused");
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
                    info!(target: "portcullis::mysql", %peer, listener = %this.config.name, "handshake timed out");
                    this.observe(
                        ConnectionEventKind::HandshakeTimeout,
                        peer,
                        client.claimed_user.take(),
                        "the handshake deadline passed before authentication finished".into(),
                    );
                    client.last_word = None;
                    client.refuse(
                        1043,
                        "08S01",
                        "the gateway's handshake deadline passed before authentication finished",
                    );
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
                ConnectionEvent::new(kind, Protocol::MySql, &self.config.name, peer, reason)
                    .claimed_user(claimed_user),
            );
        }
    }

    async fn handshake(
        &self,
        client: &mut Client,
        peer: SocketAddr,
    ) -> Result<Established, HandshakeError> {
        let cfg = &self.config;
        let Some(session_slot) = self.shared.caps.reserve(cfg.max_sessions) else {
            let msg = "Too many connections (the gateway's max_sessions)";
            client.refuse(1040, "08004", msg);
            return Err(HandshakeError::Refused(msg.into()));
        };
        // One address may hold only so many database connections before it logs in.
        let Some(_waiting) = self
            .shared
            .peers
            .enter(peer.ip(), cfg.max_unauthenticated_per_peer)
        else {
            self.shared
                .metrics
                .logins_throttled
                .fetch_add(1, Ordering::Relaxed);
            let msg = "Too many connections from this address waiting to log in (the gateway's max_unauthenticated_per_peer)";
            client.refuse(1040, "08004", msg);
            return Err(HandshakeError::Refused(msg.into()));
        };
        // The database's greeting first: its version and connection id are the client's.
        let opened = match upstream::open(&cfg.upstream).await {
            Ok(o) => o,
            Err(ConnectError::Refused(payload)) => {
                client.last_word = Some({
                    let mut b = BytesMut::new();
                    encode_packet(0, &payload, &mut b);
                    b
                });
                return Err(HandshakeError::Upstream(
                    "the database refused the connection".into(),
                ));
            }
            Err(e) => {
                warn!(target: "portcullis::mysql", listener = %cfg.name, error = %e, "upstream connection failed");
                client.refuse(1927, "08S01", &format!("the gateway {e}"));
                return Err(HandshakeError::Upstream(e.to_string()));
            }
        };
        let g = opened.greeting.clone();
        let nonce = scramble();
        let mut caps = (g.capabilities & carried())
            | CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        if cfg.tls.is_some() {
            caps |= CapabilityFlags::CLIENT_SSL;
        }
        let mut tail = nonce[8..].to_vec();
        tail.push(0);
        let hello = HandshakePacket::new(
            10,
            g.server_version.clone(),
            g.connection_id,
            nonce[..8].try_into().unwrap_or_default(),
            Some(tail),
            caps,
            g.collation,
            StatusFlags::from_bits_truncate(g.status),
            // With TLS, caching_sha2_password, whose full authentication sends the token
            // inside TLS (a client answering with it saves a round trip); without,
            // mysql_native_password, as the database's own greeting would say.
            Some(if cfg.tls.is_some() {
                &b"caching_sha2_password"[..]
            } else {
                &b"mysql_native_password"[..]
            }),
        )
        .with_mariadb_ext_capabilities(g.mariadb_capabilities & crate::upstream::carried_mariadb());
        let mut payload = Vec::new();
        hello.serialize(&mut payload);
        client.push(&payload);
        client.flush().await?;

        let mut p = client.read_packet(MAX_TOKEN_PACKET).await?;
        client.seq = p.last_seq.wrapping_add(1);
        let short_caps = |p: &Packet| {
            p.payload
                .get(..4)
                .map(|b| {
                    CapabilityFlags::from_bits_truncate(u32::from_le_bytes([
                        b[0], b[1], b[2], b[3],
                    ]))
                })
                .unwrap_or_else(CapabilityFlags::empty)
        };
        if p.payload.len() == 32 && short_caps(&p).contains(CapabilityFlags::CLIENT_SSL) {
            let Some(tls) = &cfg.tls else {
                return Err(HandshakeError::Protocol(
                    "the client asked for TLS, which this listener does not offer".into(),
                ));
            };
            // The client starts TLS right after its request, without an answer: what it sent
            // already is the start of its TLS handshake.
            let prefix = std::mem::take(&mut client.rbuf).freeze();
            let io = std::mem::replace(&mut client.io, Box::new(tokio::io::empty()));
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            client.io = Box::new(
                acceptor
                    .accept(portcullis_core::io::Prefixed::new(prefix, io))
                    .await
                    .map_err(HandshakeError::Tls)?,
            );
            client.tls = true;
            p = client.read_packet(MAX_TOKEN_PACKET).await?;
            client.seq = p.last_seq.wrapping_add(1);
        }
        let response: HandshakeResponse<'_> = match ParseBuf(&p.payload).parse(()) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("unreadable handshake response: {e}");
                client.refuse(1043, "08S01", &msg);
                return Err(HandshakeError::Protocol(msg));
            }
        };
        let client_caps = response.capabilities();
        let user = String::from_utf8_lossy(response.user()).into_owned();
        client.claimed_user = Some(user.clone());
        if !client_caps.contains(CapabilityFlags::CLIENT_PROTOCOL_41)
            || !client_caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH)
        {
            let msg = "the gateway needs a client with protocol 4.1 and pluggable authentication";
            client.refuse(1043, "08S01", msg);
            return Err(HandshakeError::Refused(msg.into()));
        }
        if client_caps.contains(CapabilityFlags::CLIENT_COMPRESS) {
            let msg = "compression is not supported by the gateway: connect without it";
            client.refuse(1043, "08S01", msg);
            return Err(HandshakeError::Refused(msg.into()));
        }
        // A token is a secret in clear: refuse before asking for it where it would travel
        // unencrypted, unless the config allows loopback.
        let plaintext_allowed = is_loopback(&peer) && cfg.allow_plaintext_tokens_on_loopback;
        if !(client.tls || plaintext_allowed) {
            let msg = if cfg.tls.is_some() {
                "Connections using insecure transport are prohibited: this gateway accepts tokens only over TLS (connect with --ssl)"
            } else {
                "Connections using insecure transport are prohibited: this gateway accepts tokens only over TLS, and this listener has no TLS configured"
            };
            client.refuse(3159, "HY000", msg);
            return Err(HandshakeError::Refused(msg.into()));
        }
        let database = response
            .db_name()
            .filter(|d| !d.is_empty())
            .map(|d| String::from_utf8_lossy(d).into_owned());
        if let (Some(allowed), Some(db)) = (&cfg.databases, &database)
            && !allowed.contains(db)
        {
            let msg = format!(
                "Access denied for user '{user}' to database '{db}' (not available through the gateway)"
            );
            client.refuse(1044, "42000", &msg);
            return Err(HandshakeError::Refused(msg));
        }

        // The token, in clear. Over TLS through `caching_sha2_password`'s full authentication
        // (MySQL 8's default, which every current client implements: asked for it, the client
        // sends the password inside TLS with no option to set); a client that chose
        // `mysql_clear_password` gives it directly; otherwise (plain TCP to loopback, where
        // allowed) through a switch to `mysql_clear_password`.
        let token = if response.auth_plugin() == Some(&AuthPlugin::MysqlClearPassword) {
            response.scramble_buf().to_vec()
        } else {
            let sha2 = client.tls;
            // A client that answered the greeting with caching_sha2_password is already in
            // it; any other is switched (to caching_sha2_password over TLS, else to
            // mysql_clear_password).
            let mut answer = Vec::new();
            if !sha2 || response.auth_plugin() != Some(&AuthPlugin::CachingSha2Password) {
                client.push(&auth_switch(sha2, &nonce));
                answer = auth_answer(client, &user).await?;
            }
            if sha2 {
                // The client's fast-auth scramble cannot be checked (the gateway keeps no
                // password): "perform_full_authentication", and the client answers with
                // the password itself.
                client.push(&[0x01, 0x04]);
                answer = auth_answer(client, &user).await?;
            }
            answer
        };
        let token = token.strip_suffix(&[0]).unwrap_or(&token);
        let token = String::from_utf8_lossy(token).into_owned();

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
                let why = match r.kind {
                    RescueKind::AuthenticationFailed => r.message.into_owned(),
                    _ => format!("authentication failed: {}", r.message),
                };
                let msg = format!("Access denied for user '{user}' (gateway): {why}");
                client.refuse(1045, "28000", &msg);
                return Err(HandshakeError::Unauthenticated(why));
            }
        };
        let Some(identity_slot) = self
            .shared
            .caps
            .acquire(&identity.subject, cfg.max_sessions_per_identity)
        else {
            let msg = format!(
                "User '{}' has too many sessions (the gateway's max_sessions_per_identity)",
                identity.subject
            );
            client.refuse(1203, "42000", &msg);
            return Err(HandshakeError::Refused(msg));
        };
        let up = &cfg.upstream;
        let Some((up_user, up_password)) = up.login_for(&identity.groups) else {
            let msg = format!(
                "Access denied: identity \"{}\" is in none of the groups mapped to a database user",
                identity.subject
            );
            client.refuse(1045, "28000", &msg);
            return Err(HandshakeError::Refused(msg));
        };
        let up_db = up.database.clone().or_else(|| database.clone());
        let mut client_caps = client_caps;
        if !cfg.local_infile {
            client_caps.remove(CapabilityFlags::CLIENT_LOCAL_FILES);
        }
        let mut attributes = response.connect_attributes().unwrap_or_default();
        attributes.insert("portcullis_identity".into(), identity.subject.clone());
        let application = attributes.get("program_name").cloned();
        let login = Login {
            capabilities: client_caps,
            mariadb_capabilities: response.mariadb_ext_capabilities(),
            collation: response.collation(),
            database: up_db.as_deref(),
            attributes: Some(attributes),
            max_packet: u32::try_from(cfg.max_packet).unwrap_or(u32::MAX),
        };
        let connected = match opened.login(up, up_user, up_password, &login).await {
            Ok(c) => c,
            Err(ConnectError::Refused(payload)) => {
                // The database's own error (unknown database, access denied...).
                let mut b = BytesMut::new();
                client.seq = encode_packet(client.seq, &payload, &mut b);
                client.last_word = Some(b);
                return Err(HandshakeError::Upstream(format!(
                    "the database refused the login: {}",
                    crate::event::err_fields(&payload)
                        .map(|(c, s, m)| format!("ERROR {c} ({s}): {m}"))
                        .unwrap_or_default()
                )));
            }
            Err(e) => {
                warn!(target: "portcullis::mysql", listener = %cfg.name, error = %e, "upstream login failed");
                client.refuse(
                    1927,
                    "08S01",
                    &format!("the gateway could not log in to the database: {e}"),
                );
                return Err(HandshakeError::Upstream(e.to_string()));
            }
        };

        let id = self.shared.caps.new_session_id();
        let connection_id = connected.greeting.connection_id;
        let mut session = Session::new(id, Protocol::MySql, cfg.name.clone(), peer, identity);
        session.claimed_user = user;
        session.database = database;
        session.upstream = up.address();
        session.upstream_user = up_user.to_owned();
        session.application = application;
        session.tls = client.tls;
        let table = Arc::downgrade(&self.shared);
        let subject = session.identity.subject.clone();
        session.own_connections = Some(portcullis_core::OwnConnections::new(move |id| {
            let Some(shared) = table.upgrade() else {
                return false;
            };
            u32::try_from(id).is_ok_and(|id| {
                shared
                    .sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .is_some_and(|(_, owner)| *owner == subject)
            })
        }));
        let session = Arc::new(session);
        session.set_server_param("connection_id", &connection_id.to_string());
        let ok = connected.ok.clone();
        let upstream = MyUpstream::new(connected, cfg.max_packet);
        if let Err(e) = upstream.track_settings(session.clone()).await {
            let msg = format!("the gateway could not read the session's settings: {e}");
            client.refuse(1927, "08S01", &msg);
            return Err(HandshakeError::Upstream(msg));
        }
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                connection_id,
                (session.cancel.clone(), session.identity.subject.clone()),
            );
        let kill_guard = KillGuard {
            shared: self.shared.clone(),
            id: connection_id,
        };
        client.push(&ok);
        client.flush().await?;
        Ok(Established {
            session,
            upstream,
            _guards: (kill_guard, identity_slot, session_slot),
        })
    }

    async fn run_session(&self, mut client: Client, est: Established) {
        let metrics = self.shared.metrics.clone();
        metrics.sessions_active.fetch_add(1, Ordering::Relaxed);
        metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        let session = est.session.clone();
        info!(target: "portcullis::mysql", session = %session.id, identity = %session.identity.subject,
              peer = %session.peer, database = session.database.as_deref().unwrap_or(""), "session started");
        let service = self
            .stack
            .new_service(Target::new(est.session.clone(), est.upstream));
        let mut driver = Driver {
            server: self,
            session: session.clone(),
            service,
            prepared: Prepareds::default(),
            metrics: metrics.clone(),
            shutdown: self.shared.shutdown.subscribe(),
            status: SessionBoard::enter(&metrics, session.clone(), PHASES[0]),
        };
        let stalls = StallReport::new(
            metrics.clone(),
            self.observer.clone(),
            Protocol::MySql,
            &session.target,
            session.peer,
        );
        let status = driver.status.0.clone();
        let id = session.id;
        let end = catch_panic(StallWatch::new(driver.run(&mut client), |quiet| {
            let reason = stalls.stalled(&format!("session {id}"), quiet, &status.state());
            warn!(target: "portcullis::mysql", session = %id, "{reason}");
        }))
        .await;
        let end = match end {
            Ok(end) => end,
            Err(panic) => {
                // The session boundary: this session ends with an error to its client; the
                // process and the other sessions on this thread go on.
                metrics.session_panics.fetch_add(1, Ordering::Relaxed);
                warn!(target: "portcullis::mysql", session = %id, panic = %panic, "a panic ended the session");
                client.seq = 1;
                client.wbuf.clear();
                client.push(&err_payload(
                    1105,
                    "HY000",
                    "internal gateway error: this session was ended (the gateway goes on serving others)",
                ));
                let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
                "internal gateway error: the session's handler panicked".to_owned()
            }
        };
        session.set_end_reason(end.clone());
        drop(driver);
        let _ = client.io.shutdown().await;
        metrics.sessions_active.fetch_sub(1, Ordering::Relaxed);
        info!(target: "portcullis::mysql", session = %session.id, reason = %end, "session ended");
        drop(est._guards);
    }
}

/// An authentication switch to the plugin that gets the token: `caching_sha2_password`
/// (whose full authentication sends it inside TLS) over TLS, `mysql_clear_password`
/// otherwise; `nonce` is the plugin's data.
fn auth_switch(tls: bool, nonce: &[u8]) -> Vec<u8> {
    let mut switch = vec![0xfe];
    switch.extend_from_slice(if tls {
        b"caching_sha2_password\0"
    } else {
        b"mysql_clear_password\0"
    });
    switch.extend_from_slice(nonce);
    switch.push(0);
    switch
}

/// Send what is pushed and read the client's answer in an authentication exchange (for
/// `user`); an answer over the token size limit is refused (1045).
async fn auth_answer(client: &mut Client, user: &str) -> Result<Vec<u8>, HandshakeError> {
    client.flush().await?;
    match client.read_packet(MAX_TOKEN_PACKET).await {
        Ok(p) => {
            client.seq = p.last_seq.wrapping_add(1);
            Ok(p.payload.to_vec())
        }
        Err(ReadError::Packet(PacketError::TooLarge { len, max })) => {
            let msg = format!(
                "Access denied for user '{user}': token too large ({len} bytes; the limit is {max})"
            );
            client.refuse(1045, "28000", &msg);
            Err(HandshakeError::Unauthenticated(msg))
        }
        Err(e) => Err(e.into()),
    }
}

/// What ends a wait for the client's next command.
enum Idle {
    Packet(Result<Packet, ReadError>),
    Event(Option<Result<MyEvent, Error>>),
    Shutdown,
    Expired,
}

struct Driver<'a, A, N, S> {
    server: &'a ServeMySql<A, N>,
    session: Arc<Session>,
    service: S,
    prepared: Prepareds,
    metrics: Arc<MyMetrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// What the session is doing (one of [`PHASES`]), on the listener's board of live
    /// sessions and in a stall report.
    status: OnBoard,
}

/// What a MySQL session can be doing, for a stall report.
const PHASES: [&str; 4] = [
    "waiting for the client's next command",
    "the command is in the stack (judged, held for approval, or sent)",
    "streaming the reply to the client",
    "forwarding the client's LOAD DATA LOCAL file",
];

impl<A, N, S> Driver<'_, A, N, S> {
    fn set_phase(&self, phase: usize) {
        self.status.0.set(PHASES[phase.min(PHASES.len() - 1)]);
    }
}

impl<A, N, S, B> Driver<'_, A, N, S>
where
    A: Service<Credentials, Response = Identity, Error = Error> + Clone + Send + Sync + 'static,
    A::Future: Send,
    S: Service<Request<MyCommand>, Response = Response<B>, Error = Error> + Send + 'static,
    S::Future: Send + 'static,
    B: ReplyBody<Event = MyEvent> + Send + 'static,
{
    async fn call(&mut self, req: Request<MyCommand>) -> Result<Response<B>, Error> {
        std::future::poll_fn(|cx| self.service.poll_ready(cx)).await?;
        self.service.call(req).await
    }

    /// Drive the session to its end; returns why it ended.
    async fn run(&mut self, client: &mut Client) -> String {
        let cfg = self.server.config.clone();
        // What the database says while the client is idle.
        let mut events: Option<Pin<Box<B>>> = match self
            .call(Request::new(
                self.session.clone(),
                MyCommand::session_events(),
            ))
            .await
        {
            Ok(r) => Some(Box::pin(r.body)),
            Err(_) => None,
        };
        let expiry = self
            .session
            .identity
            .expires_at
            .filter(|_| cfg.close_when_expired)
            .map(|at| {
                at.duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
            });
        let mut expiry = expiry.map(|left| Box::pin(tokio::time::sleep(left)));
        loop {
            self.set_phase(0);
            let idle = {
                let shutdown = self.shutdown.wait_for(|stop| *stop);
                let event = async {
                    match &mut events {
                        Some(body) => std::future::poll_fn(|cx| body.as_mut().poll_event(cx)).await,
                        None => std::future::pending().await,
                    }
                };
                let expired = async {
                    match &mut expiry {
                        Some(sleep) => sleep.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    p = read_packet(&mut client.io, &mut client.rbuf, cfg.max_packet) => Idle::Packet(p),
                    e = event => Idle::Event(e),
                    _ = shutdown => Idle::Shutdown,
                    _ = expired => Idle::Expired,
                }
            };
            let packet = match idle {
                Idle::Packet(Ok(p)) => p,
                Idle::Packet(Err(ReadError::Io(e))) => {
                    return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        "the client closed the connection".into()
                    } else {
                        format!("client connection error: {e}")
                    };
                }
                Idle::Packet(Err(ReadError::Packet(e))) => {
                    client.seq = 1;
                    client.push(&err_payload(
                        1153,
                        "08S01",
                        &format!("Got a packet bigger than the gateway allows: {e}"),
                    ));
                    let _ = client.flush().await;
                    return format!("client packet refused: {e}");
                }
                Idle::Event(event) => {
                    // The database ended the session (wait_timeout, KILL, shutdown).
                    // The connection is gone, and so is the client's: it sees that at its
                    // next query (2006 / 2013), as it would directly, where a reconnecting
                    // pool expects it. The packet a server may send first (MariaDB's 1927
                    // "Connection was killed") does not reach a direct client either — its
                    // next write meets a reset — and passed on here it would read as the
                    // answer to that next query.
                    return match event {
                        Some(Ok(_)) => "the database ended the session".to_owned(),
                        _ => "the database closed the connection".to_owned(),
                    };
                }
                Idle::Shutdown => {
                    client.seq = 1;
                    client.push(&err_payload(
                        1053,
                        "08S01",
                        "Server shutdown in progress (the gateway is stopping)",
                    ));
                    let _ = client.flush().await;
                    return "the gateway shut down".into();
                }
                Idle::Expired => {
                    client.seq = 1;
                    client.push(&err_payload(
                        1045,
                        "28000",
                        "the session's token expired: reconnect with a fresh one",
                    ));
                    let _ = client.flush().await;
                    return "the identity's credential expired".into();
                }
            };
            self.metrics
                .bytes_from_clients
                .fetch_add(packet.payload.len() as u64 + 4, Ordering::Relaxed);
            client.seq = packet.last_seq.wrapping_add(1);
            let mut com_byte = packet.payload.first().copied().unwrap_or_default();
            let mut payload = packet.payload;
            if com_byte == com::CHANGE_USER {
                // The same identity again (a pool's reset, mysql-connector's
                // reset_session()): the session is reset, as COM_RESET_CONNECTION.
                if let Err(why) = self.change_user(client, &payload).await {
                    return why;
                }
                payload = bytes::Bytes::from_static(&[com::RESET_CONNECTION]);
                com_byte = com::RESET_CONNECTION;
            }
            self.prepared.follow_charset(&self.session);
            let command = match self.prepared.command(payload) {
                Ok(c) => c,
                Err(Unrunnable::Error {
                    code,
                    state,
                    message,
                }) => {
                    self.metrics.command_errors.fetch_add(1, Ordering::Relaxed);
                    client.push(&err_payload(code, state, &message));
                    if client.flush().await.is_err() {
                        return "the client went away".into();
                    }
                    continue;
                }
            };
            if com_byte == com::INIT_DB
                && let Some(allowed) = &cfg.databases
            {
                let db = command
                    .payload()
                    .get(1..)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                if !allowed.contains(&db) {
                    client.push(&err_payload(
                        1044,
                        "42000",
                        &format!(
                            "Access denied to database '{db}' (not available through the gateway)"
                        ),
                    ));
                    if client.flush().await.is_err() {
                        return "the client went away".into();
                    }
                    continue;
                }
            }
            self.metrics.commands_total.fetch_add(1, Ordering::Relaxed);
            let sql = command.sql().map(str::to_owned);
            let quit = command.kind() == CommandKind::Terminate;
            let mut req = Request::new(self.session.clone(), command);
            let mut upload_tx = None;
            if cfg.local_infile && com_byte == com::QUERY {
                let (tx, upload) = upload_channel(4);
                req = req.with_upload(upload);
                upload_tx = Some(tx);
            }
            self.set_phase(1);
            let response = self.call_watching(client, req).await;
            let outcome = match response {
                Ok(r) => {
                    self.set_phase(2);
                    self.stream(client, r.body, upload_tx, sql.as_deref()).await
                }
                Err(e) => Err(e),
            };
            if quit {
                return "the client ended the session".into();
            }
            if let Err(e) = outcome {
                self.metrics.command_errors.fetch_add(1, Ordering::Relaxed);
                let r = rescue(&e);
                if r.kind == RescueKind::UpstreamUnavailable && r.close {
                    // The database connection broke during the command: the client's
                    // connection ends with it, as a direct one would (2013 at the client).
                    return r.message.into_owned();
                }
                let (code, state) = errno(r.kind, sql.as_deref());
                client.push(&err_payload(code, state, &r.message));
                let _ = client.flush().await;
                if r.close {
                    return r.message.into_owned();
                }
            } else if let Some(id) = sql.as_deref().and_then(kill_target)
                && let Some(signal) = self
                    .server
                    .shared
                    .sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .map(|(signal, _)| signal.clone())
            {
                // The database ended what that session ran; end what it waits for here.
                signal.fire();
                self.metrics
                    .cancels_forwarded
                    .fetch_add(1, Ordering::Relaxed);
            }
            if com_byte == com::RESET_CONNECTION {
                self.prepared.clear();
            }
            if *self.shutdown.borrow() {
                return "the gateway shut down".into();
            }
        }
    }

    /// `COM_CHANGE_USER`: ask for the token as at login (caching_sha2_password's full
    /// authentication over TLS, mysql_clear_password otherwise) and authenticate it. The
    /// same identity may go on (the caller resets the session); another identity, or a token
    /// that does not authenticate, ends the connection (`Err`: why) — a session keeps the
    /// identity it logged in with, and the trail attributes it to that one.
    async fn change_user(&mut self, client: &mut Client, payload: &[u8]) -> Result<(), String> {
        // COM_CHANGE_USER: user NUL, auth-response (length byte + bytes), database NUL, …
        let body = payload.get(1..).unwrap_or_default();
        let user_end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        let user = String::from_utf8_lossy(&body[..user_end]).into_owned();
        let nonce = scramble();
        let ask = |e: HandshakeError| format!("COM_CHANGE_USER: {e}");
        client.push(&auth_switch(client.tls, &nonce));
        let mut answer = auth_answer(client, &user).await.map_err(ask)?;
        if client.tls {
            // The scramble cannot be checked: ask for the password itself (inside TLS).
            client.push(&[0x01, 0x04]);
            answer = auth_answer(client, &user).await.map_err(ask)?;
        }
        let token = answer.strip_suffix(&[0]).unwrap_or(&answer);
        let token = String::from_utf8_lossy(token).into_owned();
        let mut auth = self.server.auth.clone();
        let credentials = Credentials::new(user.clone(), token).with_peer(self.session.peer);
        let identity = match std::future::poll_fn(|cx| auth.poll_ready(cx)).await {
            Ok(()) => auth.call(credentials).await,
            Err(e) => Err(e),
        };
        let refused = match identity {
            Ok(identity) if identity.same_as(&self.session.identity) => return Ok(()),
            Ok(identity) => format!(
                "COM_CHANGE_USER to another identity (\"{}\"): a session keeps the identity it logged in with; open a new connection with the other token",
                identity.subject
            ),
            Err(e) => format!("authentication failed: {}", rescue(&e).message),
        };
        client.push(&err_payload(
            1045,
            "28000",
            &format!("Access denied for user '{user}' (gateway): {refused}"),
        ));
        let _ = client.flush().await;
        Err(format!("COM_CHANGE_USER refused: {refused}"))
    }

    /// Call the stack; a client that disconnects meanwhile (while its command waits for an
    /// approval, say) cancels the wait.
    async fn call_watching(
        &mut self,
        client: &mut Client,
        req: Request<MyCommand>,
    ) -> Result<Response<B>, Error> {
        let cancel = self.session.cancel.clone();
        let max = self.server.config.max_packet;
        let call = self.call(req);
        tokio::pin!(call);
        // Most commands are answered at once (nothing waits in the stack): no read of the
        // client for them.
        if let Poll::Ready(r) = futures_poll_once(call.as_mut()).await {
            return r;
        }
        let mut gone = false;
        loop {
            if gone || client.rbuf.len() > max {
                return call.await;
            }
            tokio::select! {
                biased;
                r = &mut call => return r,
                n = client.io.read_buf(&mut client.rbuf) => {
                    if !matches!(n, Ok(n) if n > 0) {
                        cancel.fire();
                        gone = true;
                    }
                }
            }
        }
    }

    /// Stream a reply to the client. `Err` when the reply failed in the gateway (the rest of
    /// it has been read and dropped; the caller tells the client).
    async fn stream(
        &mut self,
        client: &mut Client,
        body: B,
        mut upload_tx: Option<UploadSender>,
        sql: Option<&str>,
    ) -> Result<(), Error> {
        let mut body = Box::pin(body);
        let mut failed: Option<Error> = None;
        let mut sent = 0u64;
        loop {
            let next = {
                let wbuf_len = client.wbuf.len();
                std::future::poll_fn(|cx| match body.as_mut().poll_event(cx) {
                    Poll::Ready(ev) => Poll::Ready(Some(ev)),
                    Poll::Pending if wbuf_len > 0 => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                })
                .await
            };
            let event = match next {
                None => {
                    // Nothing ready: send what is buffered while the database works.
                    let n = client.wbuf.len();
                    if client.flush().await.is_err() {
                        return Err(Box::new(portcullis_core::Refusal::Protocol {
                            message: "the client went away".into(),
                        }));
                    }
                    sent += n as u64;
                    continue;
                }
                Some(None) => break,
                Some(Some(Err(e))) => {
                    if failed.is_none() {
                        let close = rescue(&e).close;
                        failed = Some(e);
                        if close {
                            break;
                        }
                    }
                    continue;
                }
                Some(Some(Ok(event))) => event,
            };
            if failed.is_some() {
                continue;
            }
            if let Some(id) = event.prepared_statement_id()
                && let Some(sql) = sql
            {
                let params = event
                    .payloads()
                    .next()
                    .and_then(|p| p.get(7..9))
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .unwrap_or(0);
                self.prepared.prepared(id, Arc::from(sql), params);
            }
            if event.what() == Some(What::Err)
                && !self.server.config.local_infile
                && event
                    .errno()
                    .is_some_and(|n| LOCAL_INFILE_REFUSED.contains(&n))
            {
                client.push(&err_payload(
                    event.errno().unwrap_or(1148),
                    "42000",
                    "LOAD DATA LOCAL INFILE is not allowed through this gateway (set local_infile = true on the [[mysql]] listener to allow it; the file is then recorded as the command's upload)",
                ));
                continue;
            }
            for p in event.payloads() {
                client.push(p);
            }
            if event.what() == Some(What::LocalInfile) {
                let Some(tx) = upload_tx.take() else {
                    // The stack dropped the upload: the reply sends the database an empty
                    // file; the client must not be asked for one.
                    continue;
                };
                if client.flush().await.is_err() {
                    return Err("the client went away during LOAD DATA LOCAL INFILE".into());
                }
                self.set_phase(3);
                let max = self.server.config.max_packet;
                let forward = forward_file(&mut client.io, &mut client.rbuf, tx, max);
                let (sent_file, next) = tokio::join!(
                    forward,
                    std::future::poll_fn(|cx| body.as_mut().poll_event(cx))
                );
                let seq = match sent_file {
                    Ok(seq) => seq,
                    Err(e) => return Err(e),
                };
                client.seq = seq.wrapping_add(1);
                self.set_phase(2);
                match next {
                    Some(Ok(event)) => {
                        for p in event.payloads() {
                            client.push(p);
                        }
                    }
                    Some(Err(e)) => {
                        failed = Some(e);
                    }
                    None => break,
                }
                continue;
            }
            if client.wbuf.len() >= WRITE_HIGH {
                let n = client.wbuf.len();
                if client.flush().await.is_err() {
                    return Err("the client went away".into());
                }
                sent += n as u64;
            }
        }
        let n = client.wbuf.len();
        sent += n as u64;
        self.metrics
            .bytes_to_clients
            .fetch_add(sent, Ordering::Relaxed);
        match failed {
            Some(e) => {
                client.wbuf.clear();
                Err(e)
            }
            None => {
                if client.flush().await.is_err() {
                    return Err("the client went away".into());
                }
                Ok(())
            }
        }
    }
}

/// Poll `fut` once: its output if it is ready now.
async fn futures_poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Forward the client's file for `LOAD DATA LOCAL INFILE` (packets until an empty one) into
/// the upload; returns the sequence id of the last packet.
///
/// A client that stops sending its file (it closed the connection, or broke the stream) is
/// the client going away — the session ends as it would for any other command — not an
/// internal error of the gateway.
async fn forward_file(
    io: &mut BoxIo,
    rbuf: &mut BytesMut,
    mut tx: UploadSender,
    max: usize,
) -> Result<u8, Error> {
    loop {
        let p = read_packet(io, rbuf, max).await.map_err(|e| -> Error {
            Box::new(portcullis_core::Refusal::Protocol {
                message: match e {
                    ReadError::Io(e) => format!(
                        "the client went away during LOAD DATA LOCAL INFILE (its file was cut off: {e})"
                    ),
                    ReadError::Packet(e) => {
                        format!("the client's LOAD DATA LOCAL INFILE file is not readable: {e}")
                    }
                },
            })
        })?;
        let end = p.payload.is_empty();
        std::future::poll_fn(|cx| tx.poll_reserve(cx))
            .await
            .map_err(|e| -> Error { e.to_string().into() })?;
        tx.send_item(p.payload)
            .map_err(|e| -> Error { e.to_string().into() })?;
        if end {
            return Ok(p.last_seq);
        }
    }
}

impl<A, N, S, B, I> Service<(I, SocketAddr)> for ServeMySql<A, N>
where
    A: Service<Credentials, Response = Identity, Error = Error> + Clone + Send + Sync + 'static,
    A::Future: Send,
    N: NewService<Target<MyUpstream>, Service = S> + Send + Sync + 'static,
    S: Service<Request<MyCommand>, Response = Response<B>, Error = Error> + Send + 'static,
    S::Future: Send + 'static,
    B: ReplyBody<Event = MyEvent> + Send + 'static,
    I: Io,
{
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (io, peer): (I, SocketAddr)) -> Self::Future {
        let fut = self.serve_connection(io, peer);
        Box::pin(async move {
            fut.await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_targets() {
        assert_eq!(kill_target("KILL 5"), Some(5));
        assert_eq!(kill_target("kill query 17;"), Some(17));
        assert_eq!(kill_target("KILL HARD CONNECTION 3"), Some(3));
        assert_eq!(kill_target("select 1"), None);
        assert_eq!(kill_target("KILL USER bob"), None);
    }

    #[test]
    fn refusals_pick_table_or_privilege_errnos() {
        assert_eq!(
            errno(RescueKind::Forbidden, Some("  DROP TABLE t")),
            (1142, "42000")
        );
        assert_eq!(
            errno(RescueKind::Forbidden, Some("(select 1)")),
            (1142, "42000")
        );
        assert_eq!(
            errno(RescueKind::Forbidden, Some("KILL 3")),
            (1227, "42000")
        );
        assert_eq!(errno(RescueKind::Forbidden, None), (1227, "42000"));
        assert_eq!(errno(RescueKind::TimedOut, None), (3024, "HY000"));
        assert_eq!(errno(RescueKind::AuditFailure, None), (1290, "HY000"));
    }
}
