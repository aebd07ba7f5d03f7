//! `portcullis run`: bind the listeners, serve sessions, reload on `SIGHUP`, drain on
//! `SIGTERM`/`SIGINT`.
//!
//! A [`Gateway`] is the set of running listeners. [`Gateway::apply`] moves it to a new
//! configuration — at startup from nothing, on reload from the previous one — in two steps:
//! first everything that can fail (binding new addresses), then the switch, so a reload
//! that cannot complete changes nothing.
//!
//! Each configuration builds a new protocol server (`ServePg`) per listener, a *generation*:
//! new connections go to the newest; sessions stay with the generation that authenticated
//! them until they end. All generations of a listener share its live state (cancel keys,
//! session caps, metrics, shutdown). Listeners whose address did not change keep their socket, so no
//! connection attempt is refused during a reload.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_approval::admin::{Authenticator, routes as approval_routes};
use portcullis_approval::{
    ApprovalLayer, ApprovalStore, MemoryStore, PostgresStore, WebhookNotifier,
};
use portcullis_audit::{
    AuditLayer, JsonlOptions, JsonlSink, PostgresOptions, PostgresSink, Recorder, SinkOptions,
    StdoutSink,
};
use portcullis_core::listener::ListenerMetrics;
use portcullis_core::{NewLayered, Session};
use portcullis_http::ServeHttp;
use portcullis_identity::{ExpiryLayer, Oidc, OnExpiry, TokenAuth};
use portcullis_mask::{MaskLayer, MaskPolicy};
use portcullis_mysql::ServeMySql;
use portcullis_policy::{GuardLayer, Policy};
use portcullis_postgres::ServePg;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::layer::util::Stack;
use tracing::{debug, error, info, warn};

use crate::admin::{self, Metrics};
use crate::config::{
    self, ApprovalStoreConfig, ApprovalsConfig, AuditConfig, AuditSinkKind, Config, HttpListener,
    MyListener, OidcSettings, PgListener,
};
use crate::revoke::{LiveTokens, RevokeLayer, TokenDigests};
use crate::threads::SessionThreads;

/// Each session's layers, outermost last: audit, revoke check, guard, approval, mask.
type Layers = Stack<
    MaskLayer,
    Stack<ApprovalLayer, Stack<GuardLayer, Stack<ExpiryLayer, Stack<RevokeLayer, AuditLayer>>>>,
>;

/// Builds each session's command stack: the audit layer outermost, then
/// [`RevokeCheck`](crate::revoke::RevokeCheck), the token expiry check, the guard, the
/// approval layer, the masking layer, then the upstream.
type SessionLayers = Box<dyn Fn(&Arc<Session>) -> Layers + Send + Sync>;

/// The PostgreSQL protocol server of one listener for one configuration.
type PgServer = ServePg<TokenAuth, NewLayered<SessionLayers>>;

/// The MySQL protocol server of one listener for one configuration.
type MyServer = ServeMySql<TokenAuth, NewLayered<SessionLayers>>;

/// The HTTP protocol server of one listener for one configuration.
type HttpServer = ServeHttp<TokenAuth, NewLayered<SessionLayers>>;

/// A listener's protocol server.
enum Server {
    Postgres(PgServer),
    MySql(MyServer),
    Http(HttpServer),
}

impl Server {
    fn serve(
        &self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        match self {
            Server::Postgres(s) => Box::pin(s.serve_connection(tcp, peer)),
            Server::MySql(s) => Box::pin(s.serve_connection(tcp, peer)),
            Server::Http(s) => Box::pin(s.serve_connection(tcp, peer)),
        }
    }

    fn shutdown(&self) {
        match self {
            Server::Postgres(s) => s.shutdown(),
            Server::MySql(s) => s.shutdown(),
            // HTTP sessions end with their connections; the drain deadline closes them.
            Server::Http(_) => {}
        }
    }

    fn metrics(&self) -> Arc<ListenerMetrics> {
        match self {
            Server::Postgres(s) => s.metrics(),
            Server::MySql(s) => s.metrics(),
            Server::Http(s) => s.metrics(),
        }
    }
}

/// One listener's server for one configuration.
struct Generation {
    server: Server,
}

/// A listener block of the configuration, whatever its protocol.
#[derive(Clone, Copy)]
enum ListenerConf<'a> {
    Postgres(&'a PgListener),
    MySql(&'a MyListener),
    Http(&'a HttpListener),
}

impl ListenerConf<'_> {
    fn listen(&self) -> SocketAddr {
        match self {
            ListenerConf::Postgres(l) => l.listen,
            ListenerConf::MySql(l) => l.listen,
            ListenerConf::Http(l) => l.listen,
        }
    }
    fn name(&self) -> &str {
        match self {
            ListenerConf::Postgres(l) => &l.serve.name,
            ListenerConf::MySql(l) => &l.serve.name,
            ListenerConf::Http(l) => &l.serve.name,
        }
    }
    fn section(&self) -> &'static str {
        match self {
            ListenerConf::Postgres(_) => "[[postgres]]",
            ListenerConf::MySql(_) => "[[mysql]]",
            ListenerConf::Http(_) => "[[http]]",
        }
    }
    fn upstream(&self) -> String {
        match self {
            ListenerConf::Postgres(l) => l.serve.upstream.address(),
            ListenerConf::MySql(l) => l.serve.upstream.address(),
            ListenerConf::Http(l) => l.serve.upstream.url.to_string(),
        }
    }
}

fn listener_confs(config: &Config) -> Vec<ListenerConf<'_>> {
    config
        .postgres
        .iter()
        .map(ListenerConf::Postgres)
        .chain(config.mysql.iter().map(ListenerConf::MySql))
        .chain(config.http.iter().map(ListenerConf::Http))
        .collect()
}

/// The current generation of one listener: it takes new connections. Older generations
/// live on in the sessions they authenticated; all generations of a listener share its live
/// state (`ServePg::reconfigure`): cancel keys, session caps, metrics, shutdown.
struct Generations {
    current: RwLock<Arc<Generation>>,
}

impl Generations {
    fn new(generation: Arc<Generation>) -> Self {
        Generations {
            current: RwLock::new(generation),
        }
    }

    fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, generation: Arc<Generation>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = generation;
    }
}

/// A bound listener and its accept loop.
struct Listener {
    name: String,
    generations: Arc<Generations>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The admin server.
struct AdminServer {
    configured: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A listener bound by [`Gateway::apply`], announced on stdout.
#[derive(Debug, Clone)]
pub(crate) enum Bound {
    /// A PostgreSQL or MySQL listener.
    Postgres {
        /// `[[postgres]]` or `[[mysql]] name`.
        name: String,
        /// The bound address.
        addr: SocketAddr,
        /// `host:port` of the database.
        upstream: String,
    },
    /// The admin listener.
    Admin {
        /// The bound address.
        addr: SocketAddr,
    },
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Postgres {
                name,
                addr,
                upstream,
            } => write!(f, "listening name={name} addr={addr} upstream={upstream}"),
            Bound::Admin { addr } => {
                write!(
                    f,
                    "listening admin addr={addr} (/healthz, /metrics, /approvals)"
                )
            }
        }
    }
}

/// A configuration could not be put in force; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// An address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The OpenID Connect provider could not be reached (with `startup = "fail"`).
    #[error("[identity.oidc]: {0}")]
    Identity(String),
}

/// An address could not be bound; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub(crate) struct BindError {
    what: String,
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// An address could not be bound, or the identity provider not reached.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The session threads could not be started.
    #[error("cannot start the session threads: {0}")]
    Threads(std::io::Error),
    /// The audit trail could not be opened.
    #[error("{0}")]
    Audit(String),
    /// The approval store could not be opened.
    #[error("{0}")]
    Approvals(String),
}

async fn bind(what: String, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

/// One session thread per two cores: the database and the clients need the rest. On two
/// cores, one thread spent 33 µs of CPU per `pgbench -S -c 8` transaction and two threads
/// 44–49 µs (more context switches, fewer events per wake-up); see docs/benchmarks.md.
fn default_session_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The running gateway: listeners, admin server, the sessions they serve.
pub(crate) struct Gateway {
    live_tokens: LiveTokens,
    metrics: Arc<Metrics>,
    /// Keyed by the configured `listen` address.
    listeners: HashMap<SocketAddr, Listener>,
    admin: Option<AdminServer>,
    /// Every connection task, so shutdown can wait for them.
    sessions: TaskTracker,
    /// Where sessions run.
    threads: Arc<SessionThreads>,
    drain_timeout: Duration,
    /// The audit recorder and the `[audit]` it was built from (fixed for the process).
    audit: Option<(Recorder, AuditConfig)>,
    /// The approval layer and the `[approvals]` it was built from (fixed for the process).
    approvals: (ApprovalLayer, Arc<dyn ApprovalStore>, ApprovalsConfig),
    /// The tokens the admin API accepts (the current configuration's).
    admin_tokens: Arc<RwLock<TokenAuth>>,
    /// The OpenID Connect provider in force and the `[identity.oidc]` it was built from:
    /// kept across reloads that do not change it, so its keys stay cached.
    oidc: Option<(OidcSettings, Oidc)>,
}

/// Open the approval store and build the approval layer for `[approvals]`.
async fn start_approvals(
    config: &ApprovalsConfig,
    metrics: &Metrics,
) -> Result<(ApprovalLayer, Arc<dyn ApprovalStore>), String> {
    let store: Arc<dyn ApprovalStore> = match &config.store {
        ApprovalStoreConfig::Memory => Arc::new(MemoryStore::new()),
        ApprovalStoreConfig::Postgres { url, table } => Arc::new(
            PostgresStore::connect(url, table)
                .await
                .map_err(|e| format!("[approvals] store: {e}"))?,
        ),
    };
    let mut layer = ApprovalLayer::new(store.clone(), config.timeout);
    for (name, url) in &config.webhooks {
        let webhook = WebhookNotifier::new(url.clone()).named(name.clone());
        metrics.add_webhook(name, webhook.stats());
        layer = layer.with_notifier(Arc::new(webhook));
    }
    Ok((layer, store))
}

/// Start the audit recorder for `[audit]`: opens (and continues) the trail files now, so a
/// damaged trail stops the start.
pub(crate) fn start_recorder(config: &AuditConfig) -> Result<Recorder, String> {
    let mut builder = Recorder::builder(config.on_failure).record_results(config.record_results);
    if config.key.is_none() {
        warn!(
            "[audit] has no signing_key: checkpoints are not signed, so a rewrite of the whole trail would go unnoticed"
        );
    }
    for sink in &config.sinks {
        let options = SinkOptions {
            name: sink.name(),
            required: sink.required,
            timeout: sink.timeout,
            queue: sink.queue,
        };
        builder = match &sink.kind {
            AuditSinkKind::Jsonl {
                path,
                fsync,
                rotate_bytes,
                checkpoint_copy,
                inline,
            } => {
                let mut o = JsonlOptions::new(path);
                o.fsync = *fsync;
                o.rotate_bytes = *rotate_bytes;
                o.checkpoint_interval = config.checkpoint_interval;
                o.checkpoint_copy = checkpoint_copy.clone();
                o.key = config.key.clone();
                let sink = JsonlSink::open(o).map_err(|e| format!("[audit] {e}"))?;
                if *inline {
                    let (service, inline) = sink.shared();
                    builder.inline_sink(options, service, inline)
                } else {
                    builder.sink(options, sink)
                }
            }
            AuditSinkKind::Postgres { url, table } => {
                let mut o = PostgresOptions::new(url);
                o.table = table.clone();
                o.checkpoint_interval = config.checkpoint_interval;
                o.key = config.key.clone();
                let sink = PostgresSink::new(o).map_err(|e| format!("[audit] {e}"))?;
                builder.sink(options, sink)
            }
            AuditSinkKind::Stdout => builder.sink(options, StdoutSink::default()),
        };
    }
    builder
        .start()
        .map_err(|e| format!("[audit] cannot start the audit writers: {e}"))
}

impl Gateway {
    /// Start serving `config`. Returns what was bound, to announce.
    pub(crate) async fn start(config: &Config) -> Result<(Gateway, Vec<Bound>), StartError> {
        let n = config
            .session_threads
            .unwrap_or_else(default_session_threads);
        let threads = SessionThreads::start(n).map_err(StartError::Threads)?;
        info!(threads = threads.len(), "session threads started");
        let audit = match &config.audit {
            Some(audit) => {
                let recorder = start_recorder(audit).map_err(StartError::Audit)?;
                info!(sinks = audit.sinks.len(), on_failure = ?audit.on_failure, "audit trail open");
                Some((recorder, audit.clone()))
            }
            None => None,
        };
        let metrics: Arc<Metrics> = Arc::default();
        let (layer, store) = start_approvals(&config.approvals, &metrics)
            .await
            .map_err(StartError::Approvals)?;
        let mut gateway = Gateway {
            approvals: (layer, store, config.approvals.clone()),
            admin_tokens: Arc::new(RwLock::new(TokenAuth::default())),
            oidc: None,
            audit,
            threads: Arc::new(threads),
            live_tokens: LiveTokens::default(),
            metrics,
            listeners: HashMap::new(),
            admin: None,
            sessions: TaskTracker::new(),
            drain_timeout: config.drain_timeout,
        };
        if let Some((recorder, _)) = &gateway.audit {
            gateway.metrics.set_audit(recorder.clone());
        }
        let bound = gateway.apply(config).await?;
        Ok((gateway, bound))
    }

    /// The counters `/metrics` shows.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Move to `config`. New connections use it at once; open sessions keep the server that
    /// authenticated them, but a token that `config` no longer holds (or holds with another
    /// digest) ends its sessions at their next command. Returns what was newly bound.
    pub(crate) async fn apply(&mut self, config: &Config) -> Result<Vec<Bound>, ApplyError> {
        // 1. Everything that can fail, before anything changes.
        let oidc = match (&config.oidc, &self.oidc) {
            (None, _) => None,
            (Some(want), Some((have, oidc))) if want == have => Some((have.clone(), oidc.clone())),
            (Some(want), _) => {
                let oidc = if want.retry_startup {
                    Oidc::start_in_background(want.config.clone())
                } else {
                    Oidc::discover(want.config.clone()).await
                }
                .map_err(|e| ApplyError::Identity(e.to_string()))?;
                info!(issuer = %want.config.issuer, keys = %oidc.key_ids().join(", "), "OpenID Connect provider in force");
                self.metrics.set_oidc(oidc.clone());
                Some((want.clone(), oidc))
            }
        };
        let mut fresh = HashMap::new();
        let confs = listener_confs(config);
        for l in &confs {
            let listen = l.listen();
            if !self.listeners.contains_key(&listen) && !fresh.contains_key(&listen) {
                let what = format!("{} \"{}\"", l.section(), l.name());
                fresh.insert(listen, bind(what, listen).await?);
            }
        }
        let running_admin = self.admin.as_ref().map(|a| a.configured);
        let fresh_admin = match config.admin {
            Some(addr) if running_admin != Some(addr) => {
                Some((addr, bind("[admin]".into(), addr).await?))
            }
            _ => None,
        };

        // 2. The switch. Tokens first: a session authenticated by an old generation from
        // here on is still checked against the new set at its first command.
        self.live_tokens.replace(config.token_digests());
        self.drain_timeout = config.drain_timeout;
        self.oidc = oidc;
        let mut tokens = TokenAuth::new(config.static_tokens());
        if let Some((_, oidc)) = &self.oidc {
            tokens = tokens.with_oidc(oidc.clone());
        }
        *self.admin_tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens.clone();
        let granted = Arc::new(config.token_digests());
        let mut bound = Vec::new();
        for l in confs.iter().copied() {
            let listen = l.listen();
            let previous = self.listeners.get(&listen).map(|l| l.generations.current());
            let generation = Arc::new(self.generation(
                l,
                &tokens,
                &granted,
                config.policy.as_ref(),
                config.masking.as_ref(),
                previous.as_deref(),
            ));
            self.metrics.register(l.name(), generation.server.metrics());
            if let Some(listener) = self.listeners.get_mut(&listen) {
                listener.generations.replace(generation);
                if listener.name != l.name() {
                    info!(addr = %listen, from = %listener.name, to = %l.name(), "listener renamed");
                    listener.name = l.name().to_owned();
                }
                continue;
            }
            let Some(socket) = fresh.remove(&listen) else {
                continue;
            };
            let addr = socket.local_addr().unwrap_or(listen);
            let generations = Arc::new(Generations::new(generation));
            let stop = CancellationToken::new();
            let task = tokio::spawn(accept_loop(
                socket,
                generations.clone(),
                stop.clone(),
                self.sessions.clone(),
                self.threads.clone(),
            ));
            bound.push(Bound::Postgres {
                name: l.name().to_owned(),
                addr,
                upstream: l.upstream(),
            });
            self.listeners.insert(
                listen,
                Listener {
                    name: l.name().to_owned(),
                    generations,
                    stop,
                    task,
                },
            );
        }
        let keep: HashSet<SocketAddr> = confs.iter().map(ListenerConf::listen).collect();
        let removed: Vec<SocketAddr> = self
            .listeners
            .keys()
            .filter(|addr| !keep.contains(addr))
            .copied()
            .collect();
        for addr in removed {
            if let Some(listener) = self.listeners.remove(&addr) {
                info!(name = %listener.name, %addr, "listener closed; its open sessions continue");
                listener.close().await;
            }
        }

        if running_admin != config.admin
            && let Some(old) = self.admin.take()
        {
            old.stop.cancel();
            let _ = old.task.await;
        }
        let admin_tokens = self.admin_tokens.clone();
        let authenticate: Authenticator = Arc::new(move |token: &str| {
            admin_tokens
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .verify_now(token)
                .map_err(|e| e.to_string())
        });
        self.metrics
            .set_metrics_auth(config.metrics_token.then(|| authenticate.clone()));
        if let Some((configured, socket)) = fresh_admin {
            let addr = socket.local_addr().unwrap_or(configured);
            let stop = CancellationToken::new();
            let approvals = approval_routes(self.approvals.1.clone(), authenticate);
            let task = tokio::spawn(admin::serve(
                socket,
                self.metrics.clone(),
                approvals,
                stop.clone(),
            ));
            self.admin = Some(AdminServer {
                configured,
                stop,
                task,
            });
            bound.push(Bound::Admin { addr });
        }
        Ok(bound)
    }

    fn generation(
        &self,
        listener: ListenerConf<'_>,
        tokens: &TokenAuth,
        granted: &Arc<TokenDigests>,
        policy: Option<&Policy>,
        masking: Option<&MaskPolicy>,
        previous: Option<&Generation>,
    ) -> Generation {
        let mask = match masking {
            Some(m) => MaskLayer::new(m.clone()),
            None => MaskLayer::disabled(),
        };
        let redactor = masking.map(MaskPolicy::redactor);
        let granted = granted.clone();
        let on_expiry = self
            .oidc
            .as_ref()
            .map_or(OnExpiry::Close, |(settings, _)| settings.on_expiry);
        let guard = match policy {
            Some(policy) => GuardLayer::new(policy.clone()).with_approvals(true),
            None => GuardLayer::disabled(),
        };
        let approval = match &redactor {
            Some(r) => self.approvals.0.clone().with_redactor(r.clone()),
            None => self.approvals.0.clone(),
        };
        let live = self.live_tokens.clone();
        let recorder = self.audit.as_ref().map(|(r, _)| r.clone());
        let layers: SessionLayers = Box::new(move |session| {
            let audit = match (&recorder, &redactor) {
                (Some(recorder), Some(r)) => {
                    AuditLayer::new(recorder, session).redacting(r.clone())
                }
                (Some(recorder), None) => AuditLayer::new(recorder, session),
                (None, _) => AuditLayer::disabled(),
            };
            let outer = Stack::new(
                ExpiryLayer::new(on_expiry),
                Stack::new(RevokeLayer::new(session, &granted, live.clone()), audit),
            );
            Stack::new(
                mask.clone(),
                Stack::new(approval.clone(), Stack::new(guard.clone(), outer)),
            )
        });
        let stack = NewLayered::new(layers);
        let observer = self.audit.as_ref().map(|(r, _)| r.connection_observer());
        let server = match (listener, previous.map(|p| &p.server)) {
            (ListenerConf::Postgres(l), Some(Server::Postgres(previous))) => {
                Server::Postgres(previous.reconfigure(l.serve.clone(), tokens.clone(), stack))
            }
            (ListenerConf::Postgres(l), _) => {
                let server = ServePg::new(l.serve.clone(), tokens.clone(), stack);
                Server::Postgres(match observer {
                    Some(o) => server.with_connection_observer(o),
                    None => server,
                })
            }
            (ListenerConf::MySql(l), Some(Server::MySql(previous))) => {
                Server::MySql(previous.reconfigure(l.serve.clone(), tokens.clone(), stack))
            }
            (ListenerConf::MySql(l), _) => {
                let server = ServeMySql::new(l.serve.clone(), tokens.clone(), stack);
                Server::MySql(match observer {
                    Some(o) => server.with_connection_observer(o),
                    None => server,
                })
            }
            (ListenerConf::Http(l), Some(Server::Http(previous))) => {
                Server::Http(previous.reconfigure(l.serve.clone(), tokens.clone(), stack))
            }
            (ListenerConf::Http(l), _) => {
                let server = ServeHttp::new(l.serve.clone(), tokens.clone(), stack);
                Server::Http(match observer {
                    Some(o) => server.with_connection_observer(o),
                    None => server,
                })
            }
        };
        Generation { server }
    }

    /// Stop accepting, wait for open sessions to end — at most the drain timeout, or until
    /// `hurry` completes (a second signal) — then stop the admin server.
    pub(crate) async fn shutdown(mut self, hurry: impl std::future::Future<Output = ()>) {
        self.metrics.set_draining();
        let mut servers = Vec::new();
        for (_, listener) in self.listeners.drain() {
            servers.push(listener.generations.current());
            listener.close().await;
        }
        self.sessions.close();
        let open = self.sessions.len();
        if open > 0 {
            info!(
                sessions = open,
                deadline = ?self.drain_timeout,
                "waiting for open sessions to end"
            );
            tokio::select! {
                () = self.sessions.wait() => info!("all sessions ended"),
                () = tokio::time::sleep(self.drain_timeout) => warn!(
                    sessions = self.sessions.len(),
                    "drain deadline passed; closing the remaining sessions"
                ),
                () = hurry => warn!(
                    sessions = self.sessions.len(),
                    "second signal; closing the remaining sessions"
                ),
            }
            // Tell the remaining clients (FATAL 57P01) rather than dropping their connections.
            for generation in &servers {
                generation.server.shutdown();
            }
            if tokio::time::timeout(Duration::from_secs(5), self.sessions.wait())
                .await
                .is_err()
            {
                warn!(
                    sessions = self.sessions.len(),
                    "sessions still open after shutdown; exiting"
                );
            }
        }
        if let Some(admin) = self.admin.take() {
            admin.stop.cancel();
            // Admin requests are short; do not let a stuck client hold the exit.
            let _ = tokio::time::timeout(Duration::from_secs(2), admin.task).await;
        }
        // Last: every session's end is recorded by now; seal the trail.
        if let Some((recorder, _)) = self.audit.take() {
            recorder.close(Duration::from_secs(10)).await;
            info!("audit trail sealed");
        }
    }

    /// Whether `config` keeps the `[audit]` this process runs with.
    pub(crate) fn audit_unchanged(&self, config: &Config) -> bool {
        self.audit.as_ref().map(|(_, c)| c) == config.audit.as_ref()
    }

    /// Whether `config` keeps the `[approvals]` this process started with.
    pub(crate) fn approvals_unchanged(&self, config: &Config) -> bool {
        self.approvals.2 == config.approvals
    }
}

impl Listener {
    /// Stop accepting and close the socket (when this returns, the port is free).
    async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    socket: TcpListener,
    generations: Arc<Generations>,
    stop: CancellationToken,
    sessions: TaskTracker,
    threads: Arc<SessionThreads>,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay failed");
        }
        let current = generations.current();
        threads.spawn(&sessions, tcp, move |tcp| async move {
            current.server.serve(tcp, peer).await
        });
    }
}

/// `portcullis run`.
pub(crate) async fn run(path: PathBuf) -> ExitCode {
    let config = match load(path.clone()).await {
        Ok(config) => config,
        Err(problems) => {
            for line in problems.lines() {
                eprintln!("{line}");
            }
            eprintln!("portcullis: the configuration has problems; not starting");
            return ExitCode::from(2);
        }
    };
    // Install the handlers before binding, so a signal sent as soon as the ports accept is
    // handled rather than killing the process.
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    );
    let (mut term, mut int, mut hup, mut usr1) = match signals {
        (Ok(t), Ok(i), Ok(h), Ok(u)) => (t, i, h, u),
        (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
            eprintln!("portcullis: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut gateway, bound) = match Gateway::start(&config).await {
        Ok(started) => started,
        Err(e) => {
            error!("{e}");
            eprintln!("portcullis: {e}");
            return ExitCode::FAILURE;
        }
    };
    announce(&bound);
    if config.tokens.is_empty() && config.oidc.is_none() {
        warn!(
            "no [[identity.tokens]] and no [identity.oidc] configured: every login will be refused"
        );
    }
    info!(config = %path.display(), "gateway started: {}", config.summary());

    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: draining"); break; }
            _ = int.recv() => { info!("SIGINT: draining"); break; }
            _ = hup.recv() => reload(&mut gateway, &path).await,
            _ = usr1.recv() => gateway.metrics.dump_sessions(),
        }
    }
    gateway
        .shutdown(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await;
    info!("stopped");
    ExitCode::SUCCESS
}

/// Read the configuration file off the async threads (it may read TLS files).
async fn load(path: PathBuf) -> Result<Config, config::Problems> {
    let file = path.display().to_string();
    match tokio::task::spawn_blocking(move || config::load(&path)).await {
        Ok(result) => result,
        Err(e) => Err(config::Problems {
            file,
            list: vec![config::Problem {
                line: None,
                message: format!("loading failed: {e}"),
            }],
        }),
    }
}

async fn reload(gateway: &mut Gateway, path: &std::path::Path) {
    info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let config = match load(path.to_path_buf()).await {
        Ok(config) => config,
        Err(problems) => {
            for line in problems.lines() {
                error!("{line}");
            }
            error!("configuration not reloaded; the previous one stays in force");
            gateway.metrics().reloaded(false);
            return;
        }
    };
    if !gateway.approvals_unchanged(&config) {
        error!(
            "[approvals] changed: approval settings take effect only at a restart; configuration not reloaded, the previous one stays in force"
        );
        gateway.metrics().reloaded(false);
        return;
    }
    if !gateway.audit_unchanged(&config) {
        error!(
            "[audit] changed: audit settings take effect only at a restart; configuration not reloaded, the previous one stays in force"
        );
        gateway.metrics().reloaded(false);
        return;
    }
    match gateway.apply(&config).await {
        Ok(bound) => {
            announce(&bound);
            gateway.metrics().reloaded(true);
            info!("configuration reloaded: {}", config.summary());
        }
        Err(e) => {
            error!("{e}; configuration not reloaded, the previous one stays in force");
            gateway.metrics().reloaded(false);
        }
    }
}

fn announce(bound: &[Bound]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for b in bound {
        let _ = writeln!(out, "{b}");
    }
    let _ = out.flush();
}
