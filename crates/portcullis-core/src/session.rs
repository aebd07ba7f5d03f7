use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::CancelSignal;

/// A session's id: unique per gateway process and random across processes, shown as 16 hex
/// digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// PostgreSQL frontend/backend protocol 3.
    Postgres,
    /// MySQL / MariaDB client/server protocol.
    MySql,
    /// HTTP/1.1 or HTTP/2.
    Http,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Postgres => "postgres",
            Protocol::MySql => "mysql",
            Protocol::Http => "http",
        })
    }
}

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A static token from the configuration (service accounts, CI).
    StaticToken,
    /// A token issued by an OpenID Connect provider.
    Oidc,
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::StaticToken => "static_token",
            AuthMethod::Oidc => "oidc",
        })
    }
}

/// A verified identity: who runs the commands of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// Stable subject: the token's name, or the OIDC `sub`.
    pub subject: String,
    /// A name for people to read (display name or email), when known.
    pub display: Option<String>,
    /// Groups, which rules, exemptions and approvers refer to.
    pub groups: Vec<String>,
    /// How the identity was established.
    pub method: AuthMethod,
    /// The token issuer (OIDC), when known.
    pub issuer: Option<String>,
    /// The token's id (`jti`), when known.
    pub token_id: Option<String>,
    /// When the credential stops being valid, if it expires.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    /// An identity with a subject, groups and method; the other fields empty.
    pub fn new(subject: impl Into<String>, groups: Vec<String>, method: AuthMethod) -> Self {
        Identity {
            subject: subject.into(),
            display: None,
            groups,
            method,
            issuer: None,
            token_id: None,
            expires_at: None,
        }
    }

    /// Whether `other` is the same identity: same method, same issuer, same subject. A static
    /// token named `svc` and an OpenID Connect subject `svc` are two identities.
    pub fn same_as(&self, other: &Identity) -> bool {
        self.method == other.method && self.issuer == other.issuer && self.subject == other.subject
    }

    /// A name that tells identities apart where only a name can be kept: the subject for a
    /// static token, `subject@issuer` for an OpenID Connect identity.
    pub fn qualified(&self) -> String {
        match (&self.method, &self.issuer) {
            (AuthMethod::Oidc, Some(issuer)) => format!("{}@{issuer}", self.subject),
            (AuthMethod::Oidc, None) => format!("{}@oidc", self.subject),
            _ => self.subject.clone(),
        }
    }

    /// Whether the identity belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether the identity belongs to any of `groups`.
    pub fn in_any_group<S: AsRef<str>>(&self, groups: &[S]) -> bool {
        groups.iter().any(|g| self.in_group(g.as_ref()))
    }
}

/// Answers whether a database connection id belongs to a session of the same identity
/// ([`Session::own_connections`]).
#[derive(Clone)]
pub struct OwnConnections(std::sync::Arc<dyn Fn(u64) -> bool + Send + Sync>);

impl OwnConnections {
    /// The answer is `owns(id)`.
    pub fn new(owns: impl Fn(u64) -> bool + Send + Sync + 'static) -> Self {
        OwnConnections(std::sync::Arc::new(owns))
    }

    /// Whether connection `id` belongs to a session of this identity.
    pub fn contains(&self, id: u64) -> bool {
        (self.0)(id)
    }
}

impl std::fmt::Debug for OwnConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnConnections").finish_non_exhaustive()
    }
}

/// One client session through the gateway, shared (as `Arc<Session>`) by every layer.
#[derive(Debug)]
#[non_exhaustive]
pub struct Session {
    /// Unique id, recorded on every audit event.
    pub id: SessionId,
    /// Protocol spoken.
    pub protocol: Protocol,
    /// The configured target's name (`[[postgres]] name`).
    pub target: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// Who this is.
    pub identity: Identity,
    /// The user name the client asked for (recorded, never trusted).
    pub claimed_user: String,
    /// The database asked for, when the protocol has one.
    pub database: Option<String>,
    /// The upstream address, `host:port` or URL.
    pub upstream: String,
    /// The user the gateway logs in as upstream.
    pub upstream_user: String,
    /// The client's application name, when it sent one.
    pub application: Option<String>,
    /// Startup parameters the client asked for (name, value), as asked.
    pub startup_params: Vec<(String, String)>,
    /// Whether the client's connection is encrypted.
    pub tls: bool,
    /// When the session started.
    pub started_at: SystemTime,
    /// Fired when the client asks to cancel the running command.
    pub cancel: CancelSignal,
    /// Messages for the client that are not replies (an approval wait's notice).
    pub notices: crate::Notices,
    /// Which database connection ids belong to sessions of this identity through the same
    /// listener (MySQL: a `KILL <id>` of one is the identity signalling itself). Set by a
    /// protocol server that keeps such a table; `None` elsewhere.
    pub own_connections: Option<OwnConnections>,
    /// The database's catalog, where the protocol server can ask it (PostgreSQL): what a
    /// called function is, which function a `FunctionCall` OID names, which tables a view
    /// reads. `None` elsewhere.
    pub catalog: Option<std::sync::Arc<dyn crate::SchemaCatalog>>,
    /// Why the session ended, set once by the protocol server as it closes.
    end_reason: std::sync::OnceLock<String>,
    /// Run-time parameters as the database last reported them.
    server_params: std::sync::RwLock<Vec<(String, String)>>,
    /// A command that may change how SQL is read is in flight (see
    /// [`Session::settings_may_change`]).
    settings_barrier: std::sync::atomic::AtomicBool,
    /// The reported settings that change how SQL is read, folded into bits as they are
    /// reported ([`READ_BACKSLASHES`], [`READ_NOT_UTF8`]): read on every command without a
    /// lock.
    reading: std::sync::atomic::AtomicU8,
}

/// `standard_conforming_strings` is `off`: backslashes escape in plain strings.
const READ_BACKSLASHES: u8 = 1;
/// The client encoding (`client_encoding`, MySQL `character_set_client`) is not UTF-8.
const READ_NOT_UTF8: u8 = 2;

impl Session {
    /// A session for `identity` on `target`; fill the other public fields as known.
    pub fn new(
        id: SessionId,
        protocol: Protocol,
        target: impl Into<String>,
        peer: SocketAddr,
        identity: Identity,
    ) -> Self {
        Session {
            id,
            protocol,
            target: target.into(),
            peer,
            identity,
            claimed_user: String::new(),
            database: None,
            upstream: String::new(),
            upstream_user: String::new(),
            application: None,
            startup_params: Vec::new(),
            tls: false,
            started_at: SystemTime::now(),
            cancel: CancelSignal::new(),
            notices: crate::Notices::default(),
            own_connections: None,
            catalog: None,
            end_reason: std::sync::OnceLock::new(),
            server_params: std::sync::RwLock::new(Vec::new()),
            settings_barrier: std::sync::atomic::AtomicBool::new(false),
            reading: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// A layer let through a command that may change a setting which changes how SQL is
    /// read (`standard_conforming_strings`, `client_encoding`, …): the database reports the
    /// change only at the end of that command, so commands after it must not be judged
    /// until it is answered. The protocol server holds the next command until every reply
    /// before it is complete, then calls [`Session::settings_settled`].
    pub fn settings_may_change(&self) {
        self.settings_barrier
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a command that may change how SQL is read is still unanswered.
    pub fn settings_unsettled(&self) -> bool {
        self.settings_barrier
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every command before now is answered, with its parameter reports.
    pub fn settings_settled(&self) {
        self.settings_barrier
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// A run-time parameter as the database last reported it (PostgreSQL `ParameterStatus`
    /// at login and whenever it changes: `standard_conforming_strings`, `client_encoding`,
    /// ...), so that policy reads SQL the way the database will.
    pub fn server_param(&self, name: &str) -> Option<String> {
        self.server_params
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// Whether the parameter `name`, as last reported, satisfies `test` (`false` when never
    /// reported) — without copying it.
    pub fn server_param_is(&self, name: &str, test: impl FnOnce(&str) -> bool) -> bool {
        self.server_params
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, v)| test(v))
    }

    /// Record a parameter the database reported (the protocol server does, as the report
    /// passes to the client).
    pub fn set_server_param(&self, name: &str, value: &str) {
        let bit = match name {
            "standard_conforming_strings" => {
                Some((READ_BACKSLASHES, value.eq_ignore_ascii_case("off")))
            }
            "client_encoding" => Some((
                READ_NOT_UTF8,
                !["UTF8", "UNICODE", "UTF-8"]
                    .iter()
                    .any(|u| value.eq_ignore_ascii_case(u)),
            )),
            // The MySQL protocol server hands statements over as the server reads them in
            // these character sets (multi-byte characters whole: `portcullis_mysql::charset`);
            // in any other, only ASCII statements are judged.
            "character_set_client" => Some((
                READ_NOT_UTF8,
                ![
                    "utf8mb4", "utf8mb3", "utf8", "latin1", "ascii", "binary", "gbk", "sjis",
                    "cp932", "big5",
                ]
                .iter()
                .any(|u| value.eq_ignore_ascii_case(u)),
            )),
            _ => None,
        };
        if let Some((bit, on)) = bit {
            use std::sync::atomic::Ordering::Release;
            if on {
                self.reading.fetch_or(bit, Release);
            } else {
                self.reading.fetch_and(!bit, Release);
            }
        }
        let mut params = self
            .server_params
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match params.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => {
                v.clear();
                v.push_str(value);
            }
            None => params.push((name.to_owned(), value.to_owned())),
        }
    }

    /// Whether the database reported `standard_conforming_strings = off` (a backslash in a
    /// plain string literal escapes), without a lock.
    pub fn reads_backslash_escapes(&self) -> bool {
        self.reading.load(std::sync::atomic::Ordering::Acquire) & READ_BACKSLASHES != 0
    }

    /// Whether the database reported a client encoding other than UTF-8 (PostgreSQL
    /// `client_encoding`, MySQL `character_set_client`), without a lock.
    pub fn client_encoding_not_utf8(&self) -> bool {
        self.reading.load(std::sync::atomic::Ordering::Acquire) & READ_NOT_UTF8 != 0
    }

    /// Record why the session ended (the protocol server does, before it drops the session's
    /// command stack, so that layers observing the drop can read it). Only the first reason
    /// is kept.
    pub fn set_end_reason(&self, reason: impl Into<String>) {
        let _ = self.end_reason.set(reason.into());
    }

    /// Why the session ended, once the protocol server said.
    pub fn end_reason(&self) -> Option<&str> {
        self.end_reason.get().map(String::as_str)
    }
}

/// What happened to a connection that never became a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionEventKind {
    /// The credential was refused.
    RefusedLogin,
    /// The startup was refused (parameters, database, limits, TLS policy).
    RefusedStartup,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The TLS handshake failed.
    TlsFailure,
    /// The client broke the protocol before it had a session.
    ProtocolError,
    /// The database could not be reached or refused the gateway's login.
    UpstreamFailure,
    /// A live session stalled: the gateway held data a peer could take and did not move it
    /// for longer than the stall threshold (a lost wake-up; the session's state is in the
    /// reason). Counted in `portcullis_sessions_stalled_total`.
    Stalled,
}

impl fmt::Display for ConnectionEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionEventKind::RefusedLogin => "refused_login",
            ConnectionEventKind::RefusedStartup => "refused_startup",
            ConnectionEventKind::HandshakeTimeout => "handshake_timeout",
            ConnectionEventKind::TlsFailure => "tls_failure",
            ConnectionEventKind::ProtocolError => "protocol_error",
            ConnectionEventKind::UpstreamFailure => "upstream_failure",
            ConnectionEventKind::Stalled => "stalled",
        })
    }
}

/// A connection that never became a session, as the protocol server reports it to a
/// [`ConnectionObserver`] (the audit trail records these).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionEvent {
    /// What happened.
    pub kind: ConnectionEventKind,
    /// Protocol spoken.
    pub protocol: Protocol,
    /// The listener's name.
    pub target: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The user name the client claimed, when it got that far.
    pub claimed_user: Option<String>,
    /// The reason, as the client was told (or as logged).
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

impl ConnectionEvent {
    /// An event now.
    pub fn new(
        kind: ConnectionEventKind,
        protocol: Protocol,
        target: impl Into<String>,
        peer: SocketAddr,
        reason: impl Into<String>,
    ) -> Self {
        ConnectionEvent {
            kind,
            protocol,
            target: target.into(),
            peer,
            claimed_user: None,
            reason: reason.into(),
            at: SystemTime::now(),
        }
    }

    /// With the user name the client claimed.
    pub fn claimed_user(mut self, user: Option<String>) -> Self {
        self.claimed_user = user;
        self
    }
}

/// Receives [`ConnectionEvent`]s from protocol servers. Must not block: it is called on the
/// connection's task.
pub type ConnectionObserver = std::sync::Arc<dyn Fn(ConnectionEvent) + Send + Sync>;
