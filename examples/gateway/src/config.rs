//! The configuration file (`portcullis.toml`): its schema as INTERFACE.md defines it,
//! `${NAME}` substitution, validation that reports every problem with its line, and the
//! resolved [`Config`] the gateway runs.
//!
//! Reading happens in two passes. The TOML is first deserialized into a *raw* schema whose
//! leaves keep their byte spans (`toml::Spanned`); a syntax error, an unknown key, a missing
//! key or a wrong type stops there, because nothing after it can be read reliably. The
//! second pass resolves the raw values (environment variables, addresses, durations,
//! digests, TLS files, duplicates) and collects *every* problem it finds, each mapped to
//! its line, so that one `portcullis check` shows all that needs fixing.
//!
//! Sections that INTERFACE.md documents but this build does not implement yet (`[policy]`,
//! `[masking]`, ...) are accepted by the schema, so the documented example parses, and then
//! reported as errors: a gateway that silently ignored `[masking]` would let its operator
//! believe data is masked when it is not.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use portcullis_audit::{Fsync, OnFailure, PostgresOptions, SigningKey};
use portcullis_http::{HttpUpstreamConfig, ServeHttpConfig};
use portcullis_identity::oidc::Trust;
use portcullis_identity::{OidcConfig, OnExpiry, StaticTokens, TokenEntry};
use portcullis_mask::{ColumnRule, Custom, Detectors, Kind, MaskPolicy, Masker, Strategy};
use portcullis_mysql::ServeMySqlConfig;
use portcullis_policy::{Action, Classifier, Mode, OnUnparsed, Policy, Rule};
use portcullis_postgres::{
    ServePgConfig, UpstreamConfig, UpstreamRole, UpstreamTls, UpstreamTlsMode,
};
use serde::Deserialize;
use toml::Spanned;

use crate::revoke::TokenDigests;

/// Default for `[approvals] timeout`.
const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);
/// Default for `[approvals] table`.
const DEFAULT_APPROVAL_TABLE: &str = "portcullis_approvals";

/// Default for `[gateway] drain_timeout`.
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Default for `[[postgres]] handshake_timeout`.
const DEFAULT_HANDSHAKE: Duration = Duration::from_secs(10);
/// Default for `[postgres.upstream] connect_timeout`.
const DEFAULT_CONNECT: Duration = Duration::from_secs(10);
/// Default for `[[postgres]] max_message_bytes`: 64 MiB.
const DEFAULT_MAX_MESSAGE: u64 = 64 << 20;
/// Bounds for `max_message_bytes`: below a few KiB ordinary startup and query messages fail;
/// PostgreSQL itself refuses messages above 1 GiB.
const MESSAGE_BYTES: Range<u64> = 4096..(1 << 30) + 1;

// ---------------------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------------------

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The 1-based line it is on, when it is at a place in the file.
    pub(crate) line: Option<usize>,
    /// What is wrong, and where it helps, what to do.
    pub(crate) message: String,
}

/// Everything wrong with a configuration file, in file order. Displays one problem per line
/// as `FILE:LINE: message`.
#[derive(Debug, Clone)]
pub(crate) struct Problems {
    /// The file as the user named it.
    pub(crate) file: String,
    /// The problems, sorted by line (problems without a line last).
    pub(crate) list: Vec<Problem>,
}

impl Problems {
    fn one(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        Problems {
            file: file.to_owned(),
            list: vec![Problem {
                line,
                message: message.into(),
            }],
        }
    }

    /// Each problem as `FILE:LINE: message` (or `FILE: message`).
    pub(crate) fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.list.iter().map(|p| match p.line {
            Some(line) => format!("{}:{line}: {}", self.file, p.message),
            None => format!("{}: {}", self.file, p.message),
        })
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&line)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The resolved configuration
// ---------------------------------------------------------------------------------------

/// A validated configuration: everything the gateway needs, with files already read (TLS
/// certificates are loaded here, so what `check` accepted is exactly what `run` uses).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `[gateway] drain_timeout`: how long shutdown waits for sessions to end.
    pub(crate) drain_timeout: Duration,
    /// `[gateway] session_threads`: threads that run sessions (`None` = one per core). Read
    /// at start; a reload does not change it.
    pub(crate) session_threads: Option<usize>,
    /// `[admin] listen`.
    pub(crate) admin: Option<SocketAddr>,
    /// `[admin] metrics_token`: `/metrics` needs a token, like the approval API.
    pub(crate) metrics_token: bool,
    /// `[[identity.tokens]]`, in file order.
    pub(crate) tokens: Vec<Token>,
    /// `[identity.oidc]`, when configured.
    pub(crate) oidc: Option<OidcSettings>,
    /// `[[postgres]]`, in file order.
    pub(crate) postgres: Vec<PgListener>,
    /// `[[mysql]]`, in file order.
    pub(crate) mysql: Vec<MyListener>,
    /// `[[http]]`, in file order.
    pub(crate) http: Vec<HttpListener>,
    /// `[audit]`, when configured.
    pub(crate) audit: Option<AuditConfig>,
    /// `[policy]`, when configured.
    pub(crate) policy: Option<Policy>,
    /// `[masking]`, when configured.
    pub(crate) masking: Option<MaskPolicy>,
    /// `[approvals]` (defaults when absent).
    pub(crate) approvals: ApprovalsConfig,
}

/// `[approvals]`: read once at start; a reload that changes it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApprovalsConfig {
    /// How long a waiting client waits.
    pub(crate) timeout: Duration,
    /// Where requests live.
    pub(crate) store: ApprovalStoreConfig,
    /// `[[approvals.notify]]`: (name, webhook URL). The name (default `webhook-N`) is what
    /// logs and `/metrics` show; the URL may hold a secret and is never shown.
    pub(crate) webhooks: Vec<(String, String)>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            timeout: DEFAULT_APPROVAL_TIMEOUT,
            store: ApprovalStoreConfig::Memory,
            webhooks: Vec::new(),
        }
    }
}

/// `[approvals] store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApprovalStoreConfig {
    /// `"memory"`.
    Memory,
    /// A `postgres://` URL, and the table.
    Postgres { url: String, table: String },
}

/// `[audit]`: read once at start; a reload that changes it is refused.
#[derive(Debug, Clone)]
pub(crate) struct AuditConfig {
    /// `on_failure`.
    pub(crate) on_failure: OnFailure,
    /// `record_results = "summary"` (`true`) or `"none"`.
    pub(crate) record_results: bool,
    /// `signing_key`, loaded.
    pub(crate) key: Option<Arc<SigningKey>>,
    /// `checkpoint_interval`.
    pub(crate) checkpoint_interval: Duration,
    /// `[[audit.sinks]]`, in file order.
    pub(crate) sinks: Vec<AuditSink>,
}

impl PartialEq for AuditConfig {
    fn eq(&self, other: &Self) -> bool {
        self.on_failure == other.on_failure
            && self.record_results == other.record_results
            && self.key.as_ref().map(|k| k.public_hex().to_owned())
                == other.key.as_ref().map(|k| k.public_hex().to_owned())
            && self.checkpoint_interval == other.checkpoint_interval
            && self.sinks == other.sinks
    }
}

/// One `[[audit.sinks]]` block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AuditSink {
    /// What it writes to.
    pub(crate) kind: AuditSinkKind,
    /// `required`: commands wait for it (default true, false for stdout).
    pub(crate) required: bool,
    /// `timeout`: the longest a command waits for it.
    pub(crate) timeout: Duration,
    /// `queue`: records it may hold before it counts as stalled.
    pub(crate) queue: usize,
}

/// The kind of an audit sink.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AuditSinkKind {
    /// `kind = "jsonl"`.
    Jsonl {
        path: PathBuf,
        fsync: Fsync,
        rotate_bytes: Option<u64>,
        checkpoint_copy: Option<PathBuf>,
        /// `writer = "inline"`: sessions append on their own thread when the file is free.
        inline: bool,
    },
    /// `kind = "postgres"`.
    Postgres { url: String, table: String },
    /// `kind = "stdout"`.
    Stdout,
}

impl AuditSink {
    /// A name for logs: `jsonl:audit/portcullis.jsonl`.
    pub(crate) fn name(&self) -> String {
        match &self.kind {
            AuditSinkKind::Jsonl { path, .. } => format!("jsonl:{}", path.display()),
            AuditSinkKind::Postgres { table, .. } => format!("postgres:{table}"),
            AuditSinkKind::Stdout => "stdout".into(),
        }
    }
}

/// `[identity.oidc]`. Equal settings (same provider, same checks): a reload keeps the keys
/// already fetched.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OidcSettings {
    /// The provider and how its tokens are checked.
    pub(crate) config: OidcConfig,
    /// `on_expiry`: what happens to a session whose token expires.
    pub(crate) on_expiry: OnExpiry,
    /// `startup = "retry"`: start without the provider and keep trying (default: the
    /// gateway does not start while the provider is unreachable).
    pub(crate) retry_startup: bool,
}

/// One `[[identity.tokens]]` entry.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    /// The identity's name.
    pub(crate) name: String,
    /// The token's SHA-256.
    pub(crate) digest: [u8; 32],
    /// The authenticator's entry.
    pub(crate) entry: TokenEntry,
}

/// One `[[postgres]]` listener.
#[derive(Debug, Clone)]
pub(crate) struct PgListener {
    /// Where clients connect.
    pub(crate) listen: SocketAddr,
    /// The protocol server's settings (name, TLS, limits, upstream).
    pub(crate) serve: ServePgConfig,
}

/// One `[[mysql]]` listener.
#[derive(Debug, Clone)]
pub(crate) struct MyListener {
    /// Where clients connect.
    pub(crate) listen: SocketAddr,
    /// The protocol server's settings (name, TLS, limits, upstream).
    pub(crate) serve: ServeMySqlConfig,
}

/// One `[[http]]` listener.
#[derive(Debug, Clone)]
pub(crate) struct HttpListener {
    /// Where clients connect.
    pub(crate) listen: SocketAddr,
    /// The protocol server's settings.
    pub(crate) serve: ServeHttpConfig,
}

/// A `[[http]]` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    name: Text,
    listen: Text,
    tls: Option<Spanned<RawServerTls>>,
    #[serde(default)]
    allow_plaintext_tokens_on_loopback: bool,
    max_sessions: Option<Spanned<u64>>,
    max_sessions_per_identity: Option<Spanned<u64>>,
    upgrades: Option<Text>,
    override_headers: Option<Text>,
    upstream: RawHttpUpstream,
}

/// `[http.upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpUpstream {
    url: Text,
    tls: Option<Text>,
    ca: Option<Text>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, Text>,
    basic: Option<RawBasic>,
    connect_timeout: Option<Text>,
    #[serde(default)]
    http2: bool,
}

/// `[http.upstream] basic = { user, password }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    user: Text,
    password: Text,
}

/// What `[[postgres]]` and `[[mysql]]` blocks share, resolved.
struct Common {
    tls: Option<Arc<rustls::ServerConfig>>,
    databases: Option<Vec<String>>,
    max_sessions: Option<usize>,
    max_sessions_per_identity: Option<usize>,
    handshake_timeout: Duration,
    max_message: usize,
    upstream: UpstreamConfig,
}

/// The protocol of a listener block, for messages and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Postgres,
    MySql,
}

impl Proto {
    fn block(self) -> &'static str {
        match self {
            Proto::Postgres => "[[postgres]]",
            Proto::MySql => "[[mysql]]",
        }
    }
    fn upstream(self) -> &'static str {
        match self {
            Proto::Postgres => "[postgres.upstream]",
            Proto::MySql => "[mysql.upstream]",
        }
    }
    fn roles(self) -> &'static str {
        match self {
            Proto::Postgres => "[[postgres.upstream.roles]]",
            Proto::MySql => "[[mysql.upstream.roles]]",
        }
    }
    fn default_port(self) -> u16 {
        match self {
            Proto::Postgres => 5432,
            Proto::MySql => 3306,
        }
    }
}

impl Config {
    /// The authenticator for this configuration's tokens.
    pub(crate) fn static_tokens(&self) -> StaticTokens {
        StaticTokens::new(self.tokens.iter().map(|t| t.entry.clone()).collect())
    }

    /// The name → digest map that session revocation compares against.
    pub(crate) fn token_digests(&self) -> TokenDigests {
        TokenDigests::with_groups(
            self.tokens
                .iter()
                .map(|t| (t.name.clone(), t.digest, t.entry.groups().to_vec())),
        )
    }

    /// `ok: N listener(s), M token(s)`.
    pub(crate) fn summary(&self) -> String {
        let audit = match &self.audit {
            Some(a) => format!(
                ", audit to {}",
                a.sinks
                    .iter()
                    .map(AuditSink::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        let policy = match &self.policy {
            // The built-in own-backend rule is not the user's.
            Some(p) => format!(
                ", {} policy rule(s)",
                p.rules()
                    .iter()
                    .filter(|r| r.name != portcullis_policy::OWN_BACKEND_RULE)
                    .count()
            ),
            None => String::new(),
        };
        let oidc = match &self.oidc {
            Some(o) => format!(", OIDC issuer {}", o.config.issuer),
            None => String::new(),
        };
        format!(
            "{} listener(s), {} token(s){oidc}{policy}{audit}",
            self.postgres.len() + self.mysql.len() + self.http.len(),
            self.tokens.len()
        )
    }
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// Read and validate the file at `path`; environment variables come from the process.
/// Relative file names in the configuration are resolved against the file's directory.
pub(crate) fn load(path: &Path) -> Result<Config, Problems> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path)
        .map_err(|e| Problems::one(&file, None, format!("cannot read the file: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&source, &file, base, &|name| std::env::var(name).ok())
}

/// Validate configuration text. `file` names it in problems, relative paths are resolved
/// against `base`, and `env` looks up `${NAME}` variables.
pub(crate) fn parse(
    source: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Problems> {
    let raw: RawConfig = toml::from_str(source).map_err(|e| {
        let line = e.span().map(|s| line_of(source, s.start));
        // toml's messages may span lines ("invalid table header\nexpected ..."): keep one
        // problem per line of output.
        let message = e.message().trim().replace('\n', ": ");
        Problems::one(file, line, message)
    })?;
    let mut cx = Resolver {
        source,
        base,
        env,
        problems: Vec::new(),
    };
    let config = cx.config(&raw);
    if cx.problems.is_empty() {
        Ok(config)
    } else {
        let mut list = cx.problems;
        // Stable: problems on one line keep the order they were found in.
        list.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(Problems {
            file: file.to_owned(),
            list,
        })
    }
}

/// The 1-based line holding byte `offset`.
fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

// ---------------------------------------------------------------------------------------
// The raw schema: what the TOML may contain, with spans for every value validated later
// ---------------------------------------------------------------------------------------

/// A string value with its place in the file; `${NAME}` is expanded during resolution.
type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: Option<RawGateway>,
    admin: Option<RawAdmin>,
    identity: Option<RawIdentity>,
    #[serde(default)]
    postgres: Vec<RawListener>,
    #[serde(default)]
    mysql: Vec<RawListener>,
    #[serde(default)]
    http: Vec<RawHttp>,
    // Not `Spanned`: toml cannot span a table made implicitly by `[[policy.rules]]` alone.
    policy: Option<RawPolicy>,
    masking: Option<RawMasking>,
    approvals: Option<RawApprovals>,
    audit: Option<RawAudit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    on_failure: Option<Text>,
    record_results: Option<Text>,
    signing_key: Option<Text>,
    checkpoint_interval: Option<Text>,
    #[serde(default)]
    sinks: Vec<Spanned<RawAuditSink>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuditSink {
    kind: Text,
    required: Option<bool>,
    timeout: Option<Text>,
    queue: Option<Spanned<u64>>,
    // jsonl
    path: Option<Text>,
    fsync: Option<Text>,
    fsync_interval: Option<Text>,
    rotate_bytes: Option<Spanned<u64>>,
    checkpoint_copy: Option<Text>,
    writer: Option<Text>,
    // postgres
    url: Option<Text>,
    table: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    on_unparsed: Option<Text>,
    default_rules: Option<bool>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Text,
    #[serde(default)]
    statements: Vec<Text>,
    #[serde(default)]
    tables: Vec<Text>,
    #[serde(default)]
    functions: Vec<Text>,
    #[serde(default)]
    paths: Vec<Text>,
    #[serde(default)]
    groups: Vec<Text>,
    #[serde(default)]
    without_where: bool,
    action: Text,
    #[serde(default)]
    approvers: Vec<Text>,
    min_approvals: Option<Spanned<u64>>,
    mode: Option<Text>,
    message: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMasking {
    detectors: Option<Vec<Text>>,
    #[serde(default)]
    exempt_groups: Vec<Text>,
    hash_key: Option<Text>,
    strategy: Option<Text>,
    mode: Option<Text>,
    #[serde(default)]
    custom: Vec<Spanned<RawCustomDetector>>,
    #[serde(default)]
    columns: Vec<Spanned<RawColumnRule>>,
    #[serde(default)]
    json: Vec<Spanned<RawJsonRule>>,
    other_bodies: Option<Text>,
}

/// `[[masking.json]]`: a JSON path in HTTP bodies, masked whatever its content.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJsonRule {
    path: Text,
    strategy: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustomDetector {
    name: Text,
    terms: Option<Vec<Text>>,
    regex: Option<Text>,
    strategy: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumnRule {
    #[serde(rename = "match")]
    pattern: Text,
    strategy: Option<Text>,
    #[serde(default)]
    groups: Vec<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    timeout: Option<Text>,
    store: Option<Text>,
    table: Option<Text>,
    #[serde(default)]
    notify: Vec<RawNotify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook: Text,
    name: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    drain_timeout: Option<Text>,
    session_threads: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Text,
    metrics_token: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    tokens: Vec<RawToken>,
    oidc: Option<RawOidc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: Text,
    #[serde(default)]
    audiences: Vec<Text>,
    groups_claim: Option<Text>,
    accept: Option<Vec<Text>>,
    leeway: Option<Text>,
    on_expiry: Option<Text>,
    startup: Option<Text>,
    ca: Option<Text>,
    refresh_interval: Option<Text>,
    min_refetch_interval: Option<Text>,
    max_token_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    groups: Spanned<Vec<Text>>,
    user: Text,
    password: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Text,
    sha256: Text,
    #[serde(default)]
    groups: Vec<Text>,
}

/// A `[[postgres]]` or `[[mysql]]` block (the same shape; `allow_startup_options` is
/// PostgreSQL's, `local_infile` MySQL's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Text,
    listen: Text,
    tls: Option<Spanned<RawServerTls>>,
    #[serde(default)]
    allow_plaintext_tokens_on_loopback: bool,
    databases: Option<Spanned<Vec<Text>>>,
    max_sessions: Option<Spanned<u64>>,
    max_sessions_per_identity: Option<Spanned<u64>>,
    handshake_timeout: Option<Text>,
    #[serde(default)]
    allow_startup_options: bool,
    max_message_bytes: Option<Spanned<u64>>,
    local_infile: Option<Spanned<bool>>,
    max_unauthenticated_per_peer: Option<Spanned<u64>>,
    upstream: RawUpstream,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: Text,
    key: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    host: Text,
    port: Option<Spanned<u16>>,
    user: Text,
    password: Text,
    database: Option<Text>,
    tls: Option<Text>,
    ca: Option<Text>,
    connect_timeout: Option<Text>,
    #[serde(default)]
    roles: Vec<Spanned<RawRole>>,
    roles_unmatched: Option<Text>,
}

// ---------------------------------------------------------------------------------------
// Resolution: raw values to a Config, collecting every problem
// ---------------------------------------------------------------------------------------

struct Resolver<'a> {
    source: &'a str,
    base: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<Problem>,
}

impl Resolver<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = line_of(self.source, span.start);
        self.problems.push(Problem {
            line: Some(line),
            message: message.into(),
        });
    }

    fn general(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            line: None,
            message: message.into(),
        });
    }

    /// A string with `${NAME}` expanded; `None` (and a problem) when a variable is missing.
    fn text(&mut self, what: &str, value: &Text) -> Option<String> {
        match expand(value.get_ref(), self.env) {
            Ok(s) => Some(s),
            Err(e) => {
                self.at(value.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    /// A string that must not be empty.
    fn required_text(&mut self, what: &str, value: &Text) -> Option<String> {
        let s = self.text(what, value)?;
        if s.trim().is_empty() {
            self.at(value.span(), format!("{what}: must not be empty"));
            return None;
        }
        Some(s)
    }

    fn socket_addr(&mut self, what: &str, value: &Text) -> Option<SocketAddr> {
        let s = self.text(what, value)?;
        match s.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.at(
                    value.span(),
                    format!(
                        "{what}: invalid socket address \"{s}\" (expected IP:PORT, e.g. \"127.0.0.1:6432\" or \"[::1]:6432\")"
                    ),
                );
                None
            }
        }
    }

    /// A duration, `default` when absent; `positive` refuses zero.
    fn duration(
        &mut self,
        what: &str,
        value: Option<&Text>,
        default: Duration,
        positive: bool,
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        let Some(s) = self.text(what, value) else {
            return default;
        };
        match parse_duration(&s) {
            Ok(d) if positive && d.is_zero() => {
                self.at(value.span(), format!("{what}: must be longer than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.at(value.span(), format!("{what}: {e}"));
                default
            }
        }
    }

    /// A file name, resolved against the configuration file's directory.
    fn path(&mut self, what: &str, value: &Text) -> Option<PathBuf> {
        let s = self.required_text(what, value)?;
        Some(self.base.join(s))
    }

    /// Report `path` (a file a sink will write, its directories created as needed) when it
    /// cannot be: its nearest existing ancestor is not a directory, or is read-only, or the
    /// path itself is a directory.
    fn writable_place(&mut self, what: &str, path: &Path, span: Range<usize>) {
        if path.is_dir() {
            self.at(
                span,
                format!("{what}: {} is a directory, not a file", path.display()),
            );
            return;
        }
        let mut dir = path.parent();
        while let Some(d) = dir {
            match std::fs::metadata(if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }) {
                Ok(m) if !m.is_dir() => {
                    self.at(
                        span,
                        format!(
                            "{what}: {} cannot be created: {} is not a directory",
                            path.display(),
                            d.display()
                        ),
                    );
                    return;
                }
                Ok(m) if m.permissions().readonly() => {
                    self.at(
                        span,
                        format!(
                            "{what}: {} cannot be created: {} is read-only",
                            path.display(),
                            d.display()
                        ),
                    );
                    return;
                }
                Ok(_) => return,
                Err(_) => dir = d.parent(),
            }
        }
    }

    /// Report `name` if an earlier block of `section` already used it; remember it otherwise.
    fn unique_name(
        &mut self,
        section: &str,
        kind: &str,
        name: &str,
        value: &Text,
        seen: &mut HashMap<String, usize>,
    ) {
        match seen.entry(name.to_owned()) {
            Entry::Occupied(first) => {
                let first = *first.get();
                self.at(
                    value.span(),
                    format!(
                        "{section} name: duplicate {kind} name \"{name}\" (also on line {first})"
                    ),
                );
            }
            Entry::Vacant(slot) => {
                slot.insert(self.line(value));
            }
        }
    }

    /// A positive count.
    fn count(&mut self, what: &str, value: Option<&Spanned<u64>>) -> Option<usize> {
        let value = value?;
        match usize::try_from(*value.get_ref()) {
            Ok(0) | Err(_) => {
                self.at(value.span(), format!("{what}: must be at least 1"));
                None
            }
            Ok(n) => Some(n),
        }
    }

    fn config(&mut self, raw: &RawConfig) -> Config {
        let drain_timeout = self.duration(
            "[gateway] drain_timeout",
            raw.gateway.as_ref().and_then(|g| g.drain_timeout.as_ref()),
            DEFAULT_DRAIN,
            false,
        );
        let session_threads = self.count(
            "[gateway] session_threads",
            raw.gateway
                .as_ref()
                .and_then(|g| g.session_threads.as_ref()),
        );
        let admin = raw
            .admin
            .as_ref()
            .and_then(|a| self.socket_addr("[admin] listen", &a.listen));
        let tokens = match &raw.identity {
            Some(identity) => self.tokens(&identity.tokens),
            None => Vec::new(),
        };
        let oidc = raw
            .identity
            .as_ref()
            .and_then(|i| i.oidc.as_ref())
            .and_then(|o| self.oidc(o));

        let mut postgres = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        if let (Some(addr), Some(raw_admin)) = (admin, &raw.admin) {
            addrs.insert(
                addr,
                format!("[admin] on line {}", self.line(&raw_admin.listen)),
            );
        }
        let mut mysql = Vec::new();
        let blocks = raw
            .postgres
            .iter()
            .map(|b| (Proto::Postgres, b))
            .chain(raw.mysql.iter().map(|b| (Proto::MySql, b)));
        for (proto, block) in blocks {
            let (name, listen) = self.listener_identity(
                proto.block(),
                &block.name,
                &block.listen,
                &mut names,
                &mut addrs,
            );
            let name = name.as_deref().unwrap_or_default();
            match proto {
                Proto::Postgres => {
                    if let (Some(listen), Some(serve)) = (listen, self.postgres(block, name)) {
                        postgres.push(PgListener { listen, serve });
                    }
                }
                Proto::MySql => {
                    if let (Some(listen), Some(serve)) = (listen, self.mysql(block, name)) {
                        mysql.push(MyListener { listen, serve });
                    }
                }
            }
        }
        let mut http = Vec::new();
        for block in &raw.http {
            let (name, listen) = self.listener_identity(
                "[[http]]",
                &block.name,
                &block.listen,
                &mut names,
                &mut addrs,
            );
            let name = name.as_deref().unwrap_or_default();
            if let (Some(listen), Some(serve)) = (listen, self.http(block, name)) {
                http.push(HttpListener { listen, serve });
            }
        }
        if raw.postgres.is_empty() && raw.mysql.is_empty() && raw.http.is_empty() {
            self.general(
                "no listener: add a [[postgres]], [[mysql]] or [[http]] block (see examples/gateway/portcullis.toml)",
            );
        }
        let audit = raw.audit.as_ref().and_then(|a| self.audit(a));
        let policy = raw.policy.as_ref().and_then(|p| self.policy(p));
        let masking = raw.masking.as_ref().and_then(|m| self.masking(m));
        // With on_expiry = "close", an idle session ends when its token expires (a busy one at
        // its next command, through the expiry layer).
        if oidc
            .as_ref()
            .is_some_and(|o| o.on_expiry == OnExpiry::Close)
        {
            for listener in &mut postgres {
                listener.serve.close_when_expired = true;
            }
            for listener in &mut mysql {
                listener.serve.close_when_expired = true;
            }
        }
        // Column rules follow source columns, and binary COPY output is read with the types
        // of its columns: both come from the catalog, on a side connection.
        if masking.is_some() {
            for listener in &mut postgres {
                listener.serve.resolve_column_sources = true;
            }
        }
        let approvals = match &raw.approvals {
            Some(a) => self.approvals(a),
            None => ApprovalsConfig::default(),
        };
        if let Some(p) = &raw.policy
            && admin.is_none()
            && let Some(rule) = p
                .rules
                .iter()
                .find(|r| r.get_ref().action.get_ref().trim() == "approve")
        {
            self.at(
                rule.span(),
                "[[policy.rules]] action = \"approve\" needs [admin] listen: approvers decide through the admin API",
            );
        }
        Config {
            drain_timeout,
            session_threads,
            admin,
            metrics_token: raw
                .admin
                .as_ref()
                .and_then(|a| a.metrics_token)
                .unwrap_or(false),
            tokens,
            oidc,
            postgres,
            mysql,
            http,
            audit,
            policy,
            masking,
            approvals,
        }
    }

    /// One of `choices`, or a problem naming them.
    fn choice<'c>(&mut self, what: &str, value: &Text, choices: &[&'c str]) -> Option<&'c str> {
        let s = self.text(what, value)?;
        let found = choices.iter().find(|c| **c == s.trim()).copied();
        if found.is_none() {
            self.at(
                value.span(),
                format!("{what}: \"{s}\" is not one of {}", choices.join(", ")),
            );
        }
        found
    }

    fn policy(&mut self, raw: &RawPolicy) -> Option<Policy> {
        let before = self.problems.len();
        let p = raw;
        let on_unparsed = match &p.on_unparsed {
            Some(v) => match self.choice("[policy] on_unparsed", v, &["deny", "allow"]) {
                Some("allow") => OnUnparsed::Allow,
                _ => OnUnparsed::Deny,
            },
            None => OnUnparsed::Deny,
        };
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::new();
        for spanned in &p.rules {
            let r = spanned.get_ref();
            let Some(name) = self.required_text("[[policy.rules]] name", &r.name) else {
                continue;
            };
            self.unique_name("[[policy.rules]]", "rule", &name, &r.name, &mut names);
            let action = match self.choice(
                "[[policy.rules]] action",
                &r.action,
                &["deny", "approve", "allow"],
            ) {
                Some("approve") => Action::Approve,
                Some("allow") => Action::Allow,
                Some(_) => Action::Deny,
                None => continue,
            };
            let list = |this: &mut Self, what: &str, values: &[Text]| -> Vec<String> {
                values
                    .iter()
                    .filter_map(|v| this.text(what, v))
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            let mut rule = Rule::new(name.clone(), action)
                .statements(list(self, "[[policy.rules]] statements", &r.statements))
                .tables(list(self, "[[policy.rules]] tables", &r.tables))
                .functions(list(self, "[[policy.rules]] functions", &r.functions))
                .paths(list(self, "[[policy.rules]] paths", &r.paths))
                .groups(list(self, "[[policy.rules]] groups", &r.groups))
                .without_where(r.without_where);
            let min = match &r.min_approvals {
                Some(m) => u32::try_from(*m.get_ref()).unwrap_or(u32::MAX),
                None => 1,
            };
            let approvers = list(self, "[[policy.rules]] approvers", &r.approvers);
            if !approvers.is_empty() || action == Action::Approve {
                rule = rule.approvers(approvers, min);
            }
            if let Some(mode) = &r.mode {
                match self.choice("[[policy.rules]] mode", mode, &["enforce", "detect"]) {
                    Some("detect") => rule = rule.mode(Mode::Detect),
                    Some(_) => {}
                    None => continue,
                }
            }
            if let Some(message) = r
                .message
                .as_ref()
                .and_then(|m| self.text("[[policy.rules]] message", m))
            {
                rule = rule.message(message);
            }
            for problem in rule.problems() {
                self.at(
                    spanned.span(),
                    format!("[[policy.rules]] \"{name}\": {problem}"),
                );
            }
            rules.push(rule);
        }
        if self.problems.len() != before {
            return None;
        }
        match Policy::with_options(
            rules,
            on_unparsed,
            Classifier::default(),
            p.default_rules.unwrap_or(true),
        ) {
            Ok(policy) => Some(policy),
            Err(e) => {
                self.general(format!("[policy]: {e}"));
                None
            }
        }
    }

    fn strategy(&mut self, what: &str, value: Option<&Text>) -> Strategy {
        match value {
            None => Strategy::Partial,
            Some(v) => match self.choice(what, v, &["redact", "partial", "hash", "null"]) {
                Some(name) => Strategy::from_name(name).unwrap_or_default(),
                None => Strategy::Partial,
            },
        }
    }

    fn masking(&mut self, raw: &RawMasking) -> Option<MaskPolicy> {
        let before = self.problems.len();
        let m = raw;
        let mut kinds = Vec::new();
        match &m.detectors {
            None => kinds.extend(Kind::ALL),
            Some(list) => {
                for d in list {
                    let Some(name) = self.text("[masking] detectors", d) else {
                        continue;
                    };
                    match Kind::builtin(name.trim()) {
                        Some(kind) => kinds.push(kind),
                        None => self.at(
                            d.span(),
                            format!(
                                "[masking] detectors: unknown detector \"{name}\" (known: {}; add your own with [[masking.custom]])",
                                Kind::ALL.map(Kind::name).join(", ")
                            ),
                        ),
                    }
                }
            }
        }
        let default = self.strategy("[masking] strategy", m.strategy.as_ref());
        let mut custom = Vec::new();
        let mut custom_strategies = Vec::new();
        for (n, c) in m.custom.iter().enumerate() {
            let c = c.get_ref();
            let _ = self.required_text("[[masking.custom]] name", &c.name);
            let detector = match (&c.terms, &c.regex) {
                (Some(terms), None) => {
                    let terms: Vec<String> = terms
                        .iter()
                        .filter_map(|t| self.text("[[masking.custom]] terms", t))
                        .filter(|t| !t.is_empty())
                        .collect();
                    Some(Custom::Terms(terms))
                }
                (None, Some(re)) => match self.text("[[masking.custom]] regex", re) {
                    Some(text) => match regex::bytes::Regex::new(&text) {
                        Ok(r) => Some(Custom::Regex(r)),
                        Err(e) => {
                            self.at(re.span(), format!("[[masking.custom]] regex: {e}"));
                            None
                        }
                    },
                    None => None,
                },
                _ => {
                    self.at(
                        c.name.span(),
                        "[[masking.custom]]: give either `terms` or `regex`",
                    );
                    None
                }
            };
            if let Some(d) = detector {
                custom.push(d);
                if let Some(s) = &c.strategy {
                    let strategy = self.strategy("[[masking.custom]] strategy", Some(s));
                    custom_strategies.push((n, strategy));
                }
            }
        }
        let mut columns = Vec::new();
        for c in &m.columns {
            let c = c.get_ref();
            let Some(pattern) = self.required_text("[[masking.columns]] match", &c.pattern) else {
                continue;
            };
            columns.push(ColumnRule {
                pattern: pattern.trim().to_owned(),
                strategy: self.strategy("[[masking.columns]] strategy", c.strategy.as_ref()),
                groups: c
                    .groups
                    .iter()
                    .filter_map(|g| self.text("[[masking.columns]] groups", g))
                    .collect(),
            });
        }
        let detect_only = match &m.mode {
            Some(v) => self.choice("[masking] mode", v, &["enforce", "detect"]) == Some("detect"),
            None => false,
        };
        let mut json_rules = Vec::new();
        for rule in &m.json {
            let r = rule.get_ref();
            let Some(path) = self.required_text("[[masking.json]] path", &r.path) else {
                continue;
            };
            match path.trim().parse::<portcullis_mask::JsonPath>() {
                Ok(p) => json_rules.push((
                    p,
                    self.strategy("[[masking.json]] strategy", r.strategy.as_ref()),
                )),
                Err(e) => self.at(r.path.span(), format!("[[masking.json]] path: {e}")),
            }
        }
        let other_bodies = match &m.other_bodies {
            Some(v) => {
                if self.choice("[masking] other_bodies", v, &["pass", "block"]) == Some("block") {
                    portcullis_mask::OtherBodies::Block
                } else {
                    portcullis_mask::OtherBodies::Pass
                }
            }
            None => portcullis_mask::OtherBodies::Pass,
        };
        let exempt: Vec<String> = m
            .exempt_groups
            .iter()
            .filter_map(|g| self.text("[masking] exempt_groups", g))
            .collect();
        if self.problems.len() != before {
            return None;
        }
        let detectors = match Detectors::new(&kinds, custom) {
            Ok(d) => d,
            Err(e) => {
                self.general(format!("[masking]: {e}"));
                return None;
            }
        };
        let mut masker = Masker::new(detectors, default);
        for (n, strategy) in custom_strategies {
            masker =
                masker.with_strategy(Kind::Custom(u16::try_from(n).unwrap_or(u16::MAX)), strategy);
        }
        let uses_hash = masker.missing_key()
            || columns.iter().any(|c| c.strategy == Strategy::Hash)
            || json_rules.iter().any(|(_, s)| *s == Strategy::Hash);
        match &m.hash_key {
            Some(key) => {
                let text = self.text("[masking] hash_key", key)?;
                match masker.with_hash_key(text.as_bytes()) {
                    Ok(keyed) => masker = keyed,
                    Err(e) => {
                        self.at(key.span(), format!("[masking] hash_key: {e}"));
                        return None;
                    }
                }
            }
            None if uses_hash => {
                self.general("[masking]: strategy \"hash\" needs hash_key (at least 16 bytes; e.g. \"${MASK_HASH_KEY}\")",
                );
                return None;
            }
            None => {}
        }
        Some(
            MaskPolicy::new(masker, columns)
                .exempt(exempt)
                .detect_only(detect_only)
                .json_rules(json_rules)
                .other_bodies(other_bodies)
                // MariaDB names a derived table, a CTE or a view as a column's source:
                // follow the column through the statement to its base columns.
                .with_lineage(portcullis_mask::LineageReader::new(
                    portcullis_core::Protocol::MySql,
                    |session, sql| {
                        let mode = portcullis_policy::MySqlMode::from_sql_mode(
                            &session.server_param("sql_mode").unwrap_or_default(),
                        );
                        portcullis_policy::mysql_lineage(sql, mode, session.database.as_deref())
                    },
                )),
        )
    }

    fn approvals(&mut self, raw: &RawApprovals) -> ApprovalsConfig {
        let a = raw;
        let timeout = self.duration(
            "[approvals] timeout",
            a.timeout.as_ref(),
            DEFAULT_APPROVAL_TIMEOUT,
            true,
        );
        let table = match &a.table {
            Some(t) => self
                .text("[approvals] table", t)
                .unwrap_or_else(|| DEFAULT_APPROVAL_TABLE.to_owned()),
            None => DEFAULT_APPROVAL_TABLE.to_owned(),
        };
        let store = match &a.store {
            None => ApprovalStoreConfig::Memory,
            Some(v) => {
                match self.text("[approvals] store", v) {
                    Some(s) if s.trim() == "memory" => ApprovalStoreConfig::Memory,
                    Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                        ApprovalStoreConfig::Postgres { url: s, table }
                    }
                    Some(s) => {
                        self.at(
                        v.span(),
                        format!("[approvals] store: \"{s}\" is neither \"memory\" nor a postgres:// URL"),
                    );
                        ApprovalStoreConfig::Memory
                    }
                    None => ApprovalStoreConfig::Memory,
                }
            }
        };
        let mut webhooks: Vec<(String, String)> = Vec::new();
        for (i, n) in a.notify.iter().enumerate() {
            let name = match &n.name {
                Some(name) => self.text("[[approvals.notify]] name", name),
                None => Some(format!("webhook-{}", i + 1)),
            };
            if let (Some(name), Some(span)) = (&name, n.name.as_ref().map(|t| t.span()))
                && (name.is_empty() || webhooks.iter().any(|(n, _)| n == name))
            {
                self.at(
                    span,
                    format!("[[approvals.notify]] name: \"{name}\" is empty or names another webhook too"),
                );
            }
            if let Some(url) = self.text("[[approvals.notify]] webhook", &n.webhook) {
                if url.starts_with("http://") || url.starts_with("https://") {
                    webhooks.push((name.unwrap_or_default(), url));
                } else {
                    // The URL may hold a secret: the error names its scheme and host only.
                    self.at(
                        n.webhook.span(),
                        format!(
                            "[[approvals.notify]] webhook: \"{}\" is not an http:// or https:// URL",
                            portcullis_approval::origin(&url)
                        ),
                    );
                }
            }
        }
        ApprovalsConfig {
            timeout,
            store,
            webhooks,
        }
    }

    fn audit(&mut self, raw: &RawAudit) -> Option<AuditConfig> {
        let before = self.problems.len();
        let a = raw;
        let on_failure = match &a.on_failure {
            Some(v) => match self.choice("[audit] on_failure", v, &["refuse", "continue"]) {
                Some("continue") => OnFailure::Continue,
                _ => OnFailure::Refuse,
            },
            None => OnFailure::Refuse,
        };
        let record_results = match &a.record_results {
            Some(v) => match self.choice(
                "[audit] record_results",
                v,
                &["none", "summary", "digest", "rows"],
            ) {
                Some("none") => false,
                Some("digest" | "rows") => {
                    self.at(
                        v.span(),
                        "[audit] record_results: \"digest\" and \"rows\" are not implemented yet in this build; use \"summary\" or \"none\"",
                    );
                    true
                }
                _ => true,
            },
            None => true,
        };
        let key = a.signing_key.as_ref().and_then(|v| {
            let path = self.path("[audit] signing_key", v)?;
            match SigningKey::load(&path) {
                Ok(key) => Some(Arc::new(key)),
                Err(e) => {
                    self.at(
                        v.span(),
                        format!(
                            "[audit] signing_key: {e} (make one with `portcullis audit keygen`)"
                        ),
                    );
                    None
                }
            }
        });
        let checkpoint_interval = self.duration(
            "[audit] checkpoint_interval",
            a.checkpoint_interval.as_ref(),
            Duration::from_secs(10),
            true,
        );
        let mut sinks = Vec::new();
        for block in &a.sinks {
            if let Some(sink) = self.audit_sink(block) {
                sinks.push(sink);
            }
        }
        if a.sinks.is_empty() {
            self.general("[audit]: no [[audit.sinks]]: add at least one (kind = \"jsonl\", \"postgres\" or \"stdout\")",
            );
        }
        (self.problems.len() == before).then_some(AuditConfig {
            on_failure,
            record_results,
            key,
            checkpoint_interval,
            sinks,
        })
    }

    fn audit_sink(&mut self, raw: &Spanned<RawAuditSink>) -> Option<AuditSink> {
        let b = raw.get_ref();
        let kind = self.choice(
            "[[audit.sinks]] kind",
            &b.kind,
            &["jsonl", "postgres", "stdout"],
        )?;
        let only = |key: &str, present: bool, this: &mut Self, span: Range<usize>| {
            if present {
                this.at(
                    span,
                    format!("[[audit.sinks]] {key}: not a setting of kind = \"{kind}\""),
                );
            }
        };
        let kind = match kind {
            "jsonl" => {
                only("url", b.url.is_some(), self, raw.span());
                only("table", b.table.is_some(), self, raw.span());
                let Some(path) = &b.path else {
                    self.at(raw.span(), "[[audit.sinks]] kind = \"jsonl\" needs a path");
                    return None;
                };
                let path = self.path("[[audit.sinks]] path", path)?;
                self.writable_place("[[audit.sinks]] path", &path, raw.span());
                let every = self.duration(
                    "[[audit.sinks]] fsync_interval",
                    b.fsync_interval.as_ref(),
                    Duration::from_secs(1),
                    true,
                );
                let fsync = match &b.fsync {
                    Some(v) => {
                        match self.choice("[[audit.sinks]] fsync", v, &["always", "interval"])? {
                            "always" => Fsync::Always,
                            _ => Fsync::Interval(every),
                        }
                    }
                    None => Fsync::Interval(every),
                };
                let rotate_bytes = match &b.rotate_bytes {
                    Some(v) if *v.get_ref() < 4096 => {
                        self.at(
                            v.span(),
                            "[[audit.sinks]] rotate_bytes: must be at least 4096",
                        );
                        None
                    }
                    Some(v) => Some(*v.get_ref()),
                    None => None,
                };
                let checkpoint_copy = match &b.checkpoint_copy {
                    Some(v) => {
                        let copy = self.path("[[audit.sinks]] checkpoint_copy", v)?;
                        self.writable_place("[[audit.sinks]] checkpoint_copy", &copy, v.span());
                        Some(copy)
                    }
                    None => None,
                };
                let inline = match &b.writer {
                    Some(v) => {
                        let inline =
                            self.choice("[[audit.sinks]] writer", v, &["thread", "inline"])?
                                == "inline";
                        if inline && fsync == Fsync::Always {
                            self.at(
                                v.span(),
                                "[[audit.sinks]] writer = \"inline\" cannot sync every write without making sessions wait for the disk: use fsync = \"interval\", or writer = \"thread\"",
                            );
                            return None;
                        }
                        inline
                    }
                    None => false,
                };
                AuditSinkKind::Jsonl {
                    path,
                    fsync,
                    rotate_bytes,
                    checkpoint_copy,
                    inline,
                }
            }
            "postgres" => {
                for (key, present) in [
                    ("path", b.path.is_some()),
                    ("fsync", b.fsync.is_some()),
                    ("fsync_interval", b.fsync_interval.is_some()),
                    ("rotate_bytes", b.rotate_bytes.is_some()),
                    ("checkpoint_copy", b.checkpoint_copy.is_some()),
                    ("writer", b.writer.is_some()),
                ] {
                    only(key, present, self, raw.span());
                }
                let Some(url) = &b.url else {
                    self.at(
                        raw.span(),
                        "[[audit.sinks]] kind = \"postgres\" needs a url",
                    );
                    return None;
                };
                let url = self.required_text("[[audit.sinks]] url", url)?;
                let table = match &b.table {
                    Some(t) => {
                        let table = self.required_text("[[audit.sinks]] table", t)?;
                        if let Err(e) = PostgresOptions::check_table(&table) {
                            self.at(t.span(), format!("[[audit.sinks]] table: {e}"));
                            return None;
                        }
                        table
                    }
                    None => "portcullis_audit".into(),
                };
                AuditSinkKind::Postgres { url, table }
            }
            _ => AuditSinkKind::Stdout,
        };
        let required = b.required.unwrap_or(!matches!(kind, AuditSinkKind::Stdout));
        let timeout = self.duration(
            "[[audit.sinks]] timeout",
            b.timeout.as_ref(),
            Duration::from_secs(2),
            true,
        );
        let queue = self
            .count("[[audit.sinks]] queue", b.queue.as_ref())
            .unwrap_or(16384);
        Some(AuditSink {
            kind,
            required,
            timeout,
            queue,
        })
    }

    fn line<T>(&self, value: &Spanned<T>) -> usize {
        line_of(self.source, value.span().start)
    }

    fn oidc(&mut self, raw: &RawOidc) -> Option<OidcSettings> {
        let before = self.problems.len();
        let o = raw;
        let issuer = self.required_text("[identity.oidc] issuer", &o.issuer);
        let audiences: Vec<String> = o
            .audiences
            .iter()
            .filter_map(|a| self.required_text("[identity.oidc] audiences", a))
            .collect();
        if o.audiences.is_empty() {
            self.general("[identity.oidc] audiences: list the audiences a token must carry (e.g. the client id of `portcullis login` and the API's audience)",
            );
        }
        let mut config = OidcConfig::new(issuer.clone().unwrap_or_default(), audiences);
        if let Some(claim) = &o.groups_claim
            && let Some(claim) = self.required_text("[identity.oidc] groups_claim", claim)
        {
            config.groups_claim = claim;
        }
        if let Some(accept) = &o.accept {
            config.accept_id_tokens = false;
            config.accept_access_tokens = false;
            for kind in accept {
                match self.choice(
                    "[identity.oidc] accept",
                    kind,
                    &["id_token", "access_token"],
                ) {
                    Some("id_token") => config.accept_id_tokens = true,
                    Some(_) => config.accept_access_tokens = true,
                    None => {}
                }
            }
            if accept.is_empty() {
                self.general("[identity.oidc] accept: an empty list accepts no token");
            }
        }
        config.leeway = self.duration(
            "[identity.oidc] leeway",
            o.leeway.as_ref(),
            config.leeway,
            false,
        );
        if config.leeway > Duration::from_secs(300) {
            let span = o.leeway.as_ref().map(|l| l.span()).unwrap_or_default();
            self.at(
                span,
                "[identity.oidc] leeway: at most 5m (clock skew, not a grace period)",
            );
        }
        config.refresh_interval = self.duration(
            "[identity.oidc] refresh_interval",
            o.refresh_interval.as_ref(),
            config.refresh_interval,
            true,
        );
        config.min_refetch_interval = self.duration(
            "[identity.oidc] min_refetch_interval",
            o.min_refetch_interval.as_ref(),
            config.min_refetch_interval,
            false,
        );
        if let Some(max) = &o.max_token_bytes {
            match usize::try_from(*max.get_ref()) {
                Ok(n) if (1024..=65_536).contains(&n) => config.max_token_bytes = n,
                _ => self.at(
                    max.span(),
                    "[identity.oidc] max_token_bytes: must be between 1024 and 65536",
                ),
            }
        }
        let on_expiry = match &o.on_expiry {
            None => OnExpiry::Close,
            Some(v) => match self.choice("[identity.oidc] on_expiry", v, &["close", "refuse"]) {
                Some("refuse") => OnExpiry::Refuse,
                _ => OnExpiry::Close,
            },
        };
        let retry_startup = match &o.startup {
            None => false,
            Some(v) => {
                self.choice("[identity.oidc] startup", v, &["fail", "retry"]) == Some("retry")
            }
        };
        if let Some(ca) = &o.ca
            && let Some(path) = self.path("[identity.oidc] ca", ca)
        {
            match std::fs::read(&path) {
                Ok(pem) => config.trust = Trust::Pem(pem),
                Err(e) => self.at(
                    ca.span(),
                    format!("[identity.oidc] ca: cannot read {}: {e}", path.display()),
                ),
            }
        }
        if issuer.is_some()
            && !config.audiences.is_empty()
            && let Err(e) = config.validate()
        {
            self.at(o.issuer.span(), format!("[identity.oidc] {e}"));
        }
        if self.problems.len() > before {
            return None;
        }
        Some(OidcSettings {
            config,
            on_expiry,
            retry_startup,
        })
    }

    fn tokens(&mut self, raw: &[RawToken]) -> Vec<Token> {
        let mut tokens = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut digests: HashMap<[u8; 32], String> = HashMap::new();
        for t in raw {
            let name = self.required_text("[[identity.tokens]] name", &t.name);
            if let Some(name) = &name {
                self.unique_name("[[identity.tokens]]", "token", name, &t.name, &mut names);
            }
            let digest = self.digest(&t.sha256);
            if let (Some(digest), Some(name)) = (digest, &name) {
                if let Entry::Occupied(first) = digests.entry(digest) {
                    let first = first.get().clone();
                    self.at(
                        t.sha256.span(),
                        format!(
                            "[[identity.tokens]] sha256: the same token is configured for \"{first}\"; each token must map to one identity"
                        ),
                    );
                } else {
                    digests.insert(digest, name.clone());
                }
            }
            let mut groups = Vec::new();
            for g in &t.groups {
                if let Some(g) = self.required_text("[[identity.tokens]] groups", g) {
                    groups.push(g);
                }
            }
            let (Some(name), Some(digest)) = (name, digest) else {
                continue;
            };
            match TokenEntry::new(&name, &hex::encode(digest), groups) {
                Ok(entry) => tokens.push(Token {
                    name,
                    digest,
                    entry,
                }),
                Err(e) => self.at(t.sha256.span(), format!("[[identity.tokens]] sha256: {e}")),
            }
        }
        tokens
    }

    fn digest(&mut self, value: &Text) -> Option<[u8; 32]> {
        let what = "[[identity.tokens]] sha256";
        let s = self.text(what, value)?;
        let mut digest = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(&s, &mut digest).is_err() {
            self.at(
                value.span(),
                format!(
                    "{what}: must be 64 hexadecimal digits (the output of `portcullis token hash`), got \"{s}\""
                ),
            );
            return None;
        }
        Some(digest)
    }

    /// A listener block's `name` (unique) and `listen` (valid, not taken by another
    /// listener or the admin server).
    fn listener_identity(
        &mut self,
        section: &str,
        name_value: &Text,
        listen_value: &Text,
        names: &mut HashMap<String, usize>,
        addrs: &mut HashMap<SocketAddr, String>,
    ) -> (Option<String>, Option<SocketAddr>) {
        let name = self.required_text(&format!("{section} name"), name_value);
        if let Some(name) = &name {
            self.unique_name(section, "listener", name, name_value, names);
        }
        let listen = self.socket_addr(&format!("{section} listen"), listen_value);
        if let Some(addr) = listen {
            let here = format!("{section} on line {}", self.line(listen_value));
            match addrs.entry(addr) {
                Entry::Occupied(first) => self.at(
                    listen_value.span(),
                    format!(
                        "{section} listen: address {addr} is already used by {}",
                        first.get()
                    ),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(here);
                }
            }
        }
        (name, listen)
    }

    /// A listener's client TLS (`tls = { cert, key }`), and the check that without it tokens
    /// are allowed at all (on loopback).
    fn server_tls(
        &mut self,
        section: &str,
        name: &str,
        name_value: &Text,
        tls: Option<&Spanned<RawServerTls>>,
        allow_plaintext_on_loopback: bool,
    ) -> Option<Arc<rustls::ServerConfig>> {
        if tls.is_none() && !allow_plaintext_on_loopback {
            self.at(
                name_value.span(),
                format!(
                    "{section} \"{name}\": without `tls`, every token would be refused; configure tls = {{ cert, key }} or set allow_plaintext_tokens_on_loopback = true for loopback clients"
                ),
            );
        }
        let tls = tls?;
        let cert = self.path(&format!("{section} tls.cert"), &tls.get_ref().cert);
        let key = self.path(&format!("{section} tls.key"), &tls.get_ref().key);
        let (cert, key) = (cert?, key?);
        match portcullis_postgres::tls::server_config(&cert, &key) {
            Ok(config) => Some(config),
            Err(e) => {
                self.at(tls.span(), format!("{section} tls: {e}"));
                None
            }
        }
    }

    /// What every listener block has, `None` if any part of it is wrong (every problem is
    /// recorded).
    fn listener(&mut self, proto: Proto, block: &RawListener, name: &str) -> Option<Common> {
        let section = proto.block();
        let before = self.problems.len();
        let tls = self.server_tls(
            section,
            name,
            &block.name,
            block.tls.as_ref(),
            block.allow_plaintext_tokens_on_loopback,
        );
        let databases = block.databases.as_ref().and_then(|list| {
            if list.get_ref().is_empty() {
                self.at(
                    list.span(),
                    format!("{section} databases: an empty list refuses every database; remove the key to allow any"),
                );
                return None;
            }
            let names: Vec<String> = list
                .get_ref()
                .iter()
                .filter_map(|d| self.required_text(&format!("{section} databases"), d))
                .collect();
            Some(names)
        });
        let max_sessions = self.count(
            &format!("{section} max_sessions"),
            block.max_sessions.as_ref(),
        );
        let max_sessions_per_identity = self.count(
            &format!("{section} max_sessions_per_identity"),
            block.max_sessions_per_identity.as_ref(),
        );
        let handshake_timeout = self.duration(
            &format!("{section} handshake_timeout"),
            block.handshake_timeout.as_ref(),
            DEFAULT_HANDSHAKE,
            true,
        );
        let max_message = match &block.max_message_bytes {
            None => DEFAULT_MAX_MESSAGE,
            Some(v) if MESSAGE_BYTES.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.at(
                    v.span(),
                    format!(
                        "{section} max_message_bytes: must be between 4096 and 1073741824 (1 GiB)"
                    ),
                );
                DEFAULT_MAX_MESSAGE
            }
        };
        let upstream = self.upstream(proto, &block.upstream);
        if self.problems.len() > before {
            return None;
        }
        Some(Common {
            tls,
            databases,
            max_sessions,
            max_sessions_per_identity,
            handshake_timeout,
            max_message: usize::try_from(max_message).ok()?,
            upstream: upstream?,
        })
    }

    /// The protocol server's settings for one `[[postgres]]` block.
    fn postgres(&mut self, block: &RawListener, name: &str) -> Option<ServePgConfig> {
        if let Some(v) = &block.local_infile {
            self.at(v.span(), "[[postgres]] local_infile: a [[mysql]] setting (PostgreSQL's COPY FROM STDIN is always streamed)");
        }
        if let Some(v) = &block.max_unauthenticated_per_peer {
            self.at(v.span(), "[[postgres]] max_unauthenticated_per_peer: a [[mysql]] setting (a PostgreSQL client logs in before the gateway opens a database connection)");
        }
        let c = self.listener(Proto::Postgres, block, name)?;
        let mut serve = ServePgConfig::new(name, c.upstream);
        serve.tls = c.tls;
        serve.allow_plaintext_tokens_on_loopback = block.allow_plaintext_tokens_on_loopback;
        serve.databases = c.databases;
        serve.allow_startup_options = block.allow_startup_options;
        serve.max_sessions = c.max_sessions;
        serve.max_sessions_per_identity = c.max_sessions_per_identity;
        serve.handshake_timeout = c.handshake_timeout;
        serve.max_message = c.max_message;
        Some(serve)
    }

    /// The protocol server's settings for one `[[http]]` block.
    fn http(&mut self, block: &RawHttp, name: &str) -> Option<ServeHttpConfig> {
        let before = self.problems.len();
        let tls = self.server_tls(
            "[[http]]",
            name,
            &block.name,
            block.tls.as_ref(),
            block.allow_plaintext_tokens_on_loopback,
        );
        let max_sessions = self.count("[[http]] max_sessions", block.max_sessions.as_ref());
        let max_sessions_per_identity = self.count(
            "[[http]] max_sessions_per_identity",
            block.max_sessions_per_identity.as_ref(),
        );
        let upgrades = match &block.upgrades {
            Some(v) => self.choice("[[http]] upgrades", v, &["refuse", "pass"]) == Some("pass"),
            None => false,
        };
        let override_headers = match &block.override_headers {
            Some(v) => {
                match self.choice("[[http]] override_headers", v, &["strip", "refuse", "pass"]) {
                    Some("refuse") => portcullis_http::OverrideHeaders::Refuse,
                    Some("pass") => portcullis_http::OverrideHeaders::Pass,
                    _ => portcullis_http::OverrideHeaders::Strip,
                }
            }
            None => portcullis_http::OverrideHeaders::Strip,
        };
        let up = &block.upstream;
        let url = self.required_text("[http.upstream] url", &up.url).and_then(|u| {
            match u.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some()
                        && uri.query().is_none() =>
                {
                    Some(uri)
                }
                _ => {
                    self.at(
                        up.url.span(),
                        format!("[http.upstream] url: \"{u}\" is not an http:// or https:// URL with a host (and no query)"),
                    );
                    None
                }
            }
        });
        let https = url
            .as_ref()
            .is_some_and(|u| u.scheme_str() == Some("https"));
        let mode = match &up.tls {
            None if https => Some(UpstreamTlsMode::VerifyFull),
            None => Some(UpstreamTlsMode::Disable),
            Some(t) => {
                let s = self.text("[http.upstream] tls", t)?;
                match s.parse::<UpstreamTlsMode>() {
                    Ok(UpstreamTlsMode::Prefer) => {
                        self.at(t.span(), "[http.upstream] tls: \"prefer\" has no meaning for HTTP: the url's scheme decides; use \"require\" or \"verify-full\" with https");
                        None
                    }
                    Ok(m) if (m == UpstreamTlsMode::Disable) == https => {
                        self.at(t.span(), "[http.upstream] tls: does not match the url's scheme (https needs \"require\" or \"verify-full\"; http needs \"disable\" or no tls key)");
                        None
                    }
                    Ok(m) => Some(m),
                    Err(e) => {
                        self.at(t.span(), format!("[http.upstream] tls: {e}"));
                        None
                    }
                }
            }
        };
        let ca = match &up.ca {
            Some(ca) => self.path("[http.upstream] ca", ca).map(Some),
            None => Some(None),
        };
        let upstream_tls = match (mode, ca) {
            (Some(mode), Some(ca)) => match UpstreamTls::new(mode, ca.as_deref()) {
                Ok(t) => Some(t),
                Err(e) => {
                    let span = up
                        .ca
                        .as_ref()
                        .or(up.tls.as_ref())
                        .map(|v| v.span())
                        .unwrap_or_else(|| up.url.span());
                    self.at(span, format!("[http.upstream] tls: {e}"));
                    None
                }
            },
            _ => None,
        };
        let mut headers = Vec::new();
        for (name, value) in &up.headers {
            let Some(v) = self.text(&format!("[http.upstream] headers.{name}"), value) else {
                continue;
            };
            match (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(&v),
            ) {
                (Ok(n), Ok(mut hv)) => {
                    hv.set_sensitive(true);
                    headers.push((n, hv));
                }
                _ => self.at(
                    value.span(),
                    format!(
                        "[http.upstream] headers: \"{name}\" is not a valid header name and value"
                    ),
                ),
            }
        }
        if let Some(basic) = &up.basic {
            let user = self.required_text("[http.upstream] basic.user", &basic.user);
            let password = self.text("[http.upstream] basic.password", &basic.password);
            if let (Some(user), Some(password)) = (user, password) {
                use base64::Engine as _;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                if let Ok(mut v) = http::HeaderValue::from_str(&format!("Basic {token}")) {
                    v.set_sensitive(true);
                    headers.push((http::header::AUTHORIZATION, v));
                }
            }
        }
        let connect_timeout = self.duration(
            "[http.upstream] connect_timeout",
            up.connect_timeout.as_ref(),
            DEFAULT_CONNECT,
            true,
        );
        if self.problems.len() > before {
            return None;
        }
        let mut upstream = HttpUpstreamConfig::new(url?);
        upstream.tls = upstream_tls?;
        upstream.headers = headers;
        upstream.connect_timeout = connect_timeout;
        upstream.http2 = up.http2;
        let mut serve = ServeHttpConfig::new(name, upstream);
        serve.tls = tls;
        serve.allow_plaintext_tokens_on_loopback = block.allow_plaintext_tokens_on_loopback;
        serve.max_sessions = max_sessions;
        serve.max_sessions_per_identity = max_sessions_per_identity;
        serve.allow_upgrades = upgrades;
        serve.override_headers = override_headers;
        Some(serve)
    }

    /// The protocol server's settings for one `[[mysql]]` block.
    fn mysql(&mut self, block: &RawListener, name: &str) -> Option<ServeMySqlConfig> {
        if block.allow_startup_options {
            self.at(
                block.name.span(),
                "[[mysql]] allow_startup_options: a [[postgres]] setting (MySQL has no startup options)",
            );
        }
        let c = self.listener(Proto::MySql, block, name)?;
        let mut serve = ServeMySqlConfig::new(name, c.upstream);
        serve.tls = c.tls;
        serve.allow_plaintext_tokens_on_loopback = block.allow_plaintext_tokens_on_loopback;
        serve.databases = c.databases;
        serve.max_sessions = c.max_sessions;
        serve.max_sessions_per_identity = c.max_sessions_per_identity;
        serve.handshake_timeout = c.handshake_timeout;
        serve.max_packet = c.max_message;
        serve.local_infile = block.local_infile.as_ref().is_some_and(|v| *v.get_ref());
        if let Some(v) = &block.max_unauthenticated_per_peer {
            match usize::try_from(*v.get_ref()) {
                Ok(n) if n > 0 => serve.max_unauthenticated_per_peer = n,
                _ => self.at(
                    v.span(),
                    "[[mysql]] max_unauthenticated_per_peer: must be at least 1",
                ),
            }
        }
        Some(serve)
    }

    fn upstream(&mut self, proto: Proto, raw: &RawUpstream) -> Option<UpstreamConfig> {
        let (section, roles_section) = (proto.upstream(), proto.roles());
        let host = self.required_text(&format!("{section} host"), &raw.host);
        let port = match &raw.port {
            None => proto.default_port(),
            Some(p) if *p.get_ref() == 0 => {
                self.at(p.span(), format!("{section} port: must not be 0"));
                proto.default_port()
            }
            Some(p) => *p.get_ref(),
        };
        let user = self.required_text(&format!("{section} user"), &raw.user);
        // May be empty (a `trust` database), but must be written: forgetting it is likelier.
        let password = self.text(&format!("{section} password"), &raw.password);
        let database = match &raw.database {
            Some(d) => self
                .required_text(&format!("{section} database"), d)
                .map(Some),
            None => Some(None),
        };
        let mode = match &raw.tls {
            None => Some(UpstreamTlsMode::default()),
            Some(t) => {
                let s = self.text(&format!("{section} tls"), t)?;
                match s.parse::<UpstreamTlsMode>() {
                    Ok(mode) => Some(mode),
                    Err(e) => {
                        self.at(t.span(), format!("{section} tls: {e}"));
                        None
                    }
                }
            }
        };
        let ca = match &raw.ca {
            Some(ca) => self.path(&format!("{section} ca"), ca).map(Some),
            None => Some(None),
        };
        let connect_timeout = self.duration(
            &format!("{section} connect_timeout"),
            raw.connect_timeout.as_ref(),
            DEFAULT_CONNECT,
            true,
        );
        let tls = match (mode, &ca) {
            (Some(UpstreamTlsMode::VerifyFull), Some(None)) => {
                let span = raw.tls.as_ref().map(|t| t.span()).unwrap_or_default();
                self.at(
                    span,
                    format!("{section} tls = \"verify-full\" needs `ca`, a PEM file of the roots to trust"),
                );
                None
            }
            (Some(mode), Some(Some(_))) if mode != UpstreamTlsMode::VerifyFull => {
                let span = raw.ca.as_ref().map(|c| c.span()).unwrap_or_default();
                self.at(
                    span,
                    format!("{section} ca: used only with tls = \"verify-full\"; with other modes the database's certificate is not verified"),
                );
                None
            }
            (Some(mode), Some(ca)) => match UpstreamTls::new(mode, ca.as_deref()) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    let span = raw
                        .ca
                        .as_ref()
                        .or(raw.tls.as_ref())
                        .map(|v| v.span())
                        .unwrap_or_default();
                    self.at(span, format!("{section} ca: {e}"));
                    None
                }
            },
            _ => None,
        };
        let mut roles = Vec::new();
        for role in &raw.roles {
            let r = role.get_ref();
            let groups: Vec<String> = r
                .groups
                .get_ref()
                .iter()
                .filter_map(|g| self.required_text(&format!("{roles_section} groups"), g))
                .collect();
            if r.groups.get_ref().is_empty() {
                self.at(
                    r.groups.span(),
                    format!("{roles_section} groups: list the groups that use this role"),
                );
            }
            let user = self.required_text(&format!("{roles_section} user"), &r.user);
            let password = self.text(&format!("{roles_section} password"), &r.password);
            if let (Some(user), Some(password)) = (user, password) {
                roles.push(UpstreamRole {
                    groups,
                    user,
                    password,
                });
            }
        }
        let refuse_unmatched = match &raw.roles_unmatched {
            None => false,
            Some(v) => {
                if raw.roles.is_empty() {
                    self.at(
                        v.span(),
                        format!("{section} roles_unmatched: used only with {roles_section}"),
                    );
                }
                self.choice(
                    &format!("{section} roles_unmatched"),
                    v,
                    &["default", "refuse"],
                ) == Some("refuse")
            }
        };
        let mut upstream = UpstreamConfig::new(host?, port, user?, password?).tls(tls?);
        if let Some(database) = database? {
            upstream = upstream.database(database);
        }
        upstream.connect_timeout = connect_timeout;
        upstream.roles = roles;
        upstream.refuse_unmatched = refuse_unmatched;
        Some(upstream)
    }
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

/// Replace `${NAME}` with the environment variable NAME. `$${` stands for a literal `${`;
/// any other `$` is kept as it is (passwords may contain one).
pub(crate) fn expand(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err("unterminated \"${\" (write $${ for a literal ${)".into());
            };
            let name = &after[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "invalid variable name \"${{{name}}}\" (letters, digits and _ only)"
                ));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable {name} is not set")),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A duration: a whole number and a unit, `ms`, `s`, `m` or `h` (`"250ms"`, `"30s"`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration \"{s}\" (expected e.g. \"250ms\", \"30s\", \"5m\", \"1h\")");
    let trimmed = s.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = |factor: u64| n.checked_mul(factor).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => return Err(bad()),
    };
    d.ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn env(name: &str) -> Option<String> {
        match name {
            "PG_PASSWORD" => Some("s3cret".into()),
            "LISTEN" => Some("127.0.0.1:7000".into()),
            _ => None,
        }
    }

    fn parse_str(source: &str) -> Result<Config, Problems> {
        parse(source, "portcullis.toml", Path::new("/nonexistent"), &env)
    }

    /// The problems of `source`, as `(line, message)`.
    fn problems(source: &str) -> Vec<(Option<usize>, String)> {
        match parse_str(source) {
            Ok(_) => panic!("expected problems in:\n{source}"),
            Err(p) => p.list.into_iter().map(|p| (p.line, p.message)).collect(),
        }
    }

    fn minimal() -> String {
        format!(
            r#"[[identity.tokens]]
name = "ci-bot"
sha256 = "{TOKEN_SHA}"
groups = ["engineering"]

[[postgres]]
name = "main"
listen = "127.0.0.1:6432"
allow_plaintext_tokens_on_loopback = true
[postgres.upstream]
host = "127.0.0.1"
user = "app"
password = "${{PG_PASSWORD}}"
"#
        )
    }

    #[test]
    fn mysql_listeners_share_the_shape_of_postgres_ones() {
        let source = minimal()
            + r#"
[[mysql]]
name = "maria"
listen = "127.0.0.1:3307"
allow_plaintext_tokens_on_loopback = true
local_infile = true
databases = ["app"]
max_message_bytes = 1048576
[mysql.upstream]
host = "db"
user = "app"
password = "x"
tls = "disable"
[[mysql.upstream.roles]]
groups = ["analysts"]
user = "ro"
password = "y"
"#;
        let config = parse_str(&source).unwrap();
        assert_eq!(config.postgres.len(), 1);
        let my = &config.mysql[0];
        assert_eq!(my.listen.port(), 3307);
        assert_eq!(my.serve.name, "maria");
        assert!(my.serve.local_infile);
        assert_eq!(my.serve.max_packet, 1 << 20);
        assert_eq!(my.serve.databases.as_deref(), Some(&["app".to_owned()][..]));
        assert_eq!(my.serve.upstream.port, 3306, "MySQL's default port");
        assert_eq!(
            my.serve.upstream.login_for(&["analysts"]),
            Some(("ro", "y"))
        );
        assert!(
            config.summary().starts_with("2 listener(s)"),
            "{}",
            config.summary()
        );
        // A MySQL-only configuration is a configuration.
        let only = source
            .replace("[[postgres]]", "[[mysql]]")
            .replace("[postgres.upstream]", "[mysql.upstream]")
            .replace(
                "\nlisten = \"127.0.0.1:3307\"",
                "\nlisten = \"127.0.0.1:3308\"",
            );
        assert_eq!(parse_str(&only).unwrap().mysql.len(), 2);
    }

    #[test]
    fn mysql_problems_are_named_in_mysql_terms() {
        let source = minimal().replace(
            "allow_plaintext_tokens_on_loopback = true",
            "allow_plaintext_tokens_on_loopback = true\nlocal_infile = true",
        ) + r#"
[[mysql]]
name = "maria"
listen = "127.0.0.1:6432"
allow_startup_options = true
[mysql.upstream]
host = "db"
port = 0
user = "app"
password = "x"
roles_unmatched = "refuse"
"#;
        let p = problems(&source);
        let text: Vec<&str> = p.iter().map(|(_, m)| m.as_str()).collect();
        let has = |needle: &str| text.iter().any(|m| m.contains(needle));
        assert!(
            has("[[postgres]] local_infile: a [[mysql]] setting"),
            "{p:?}"
        );
        assert!(
            has("[[mysql]] listen: address 127.0.0.1:6432 is already used by [[postgres]]"),
            "{p:?}"
        );
        assert!(
            has("[[mysql]] allow_startup_options: a [[postgres]] setting"),
            "{p:?}"
        );
        assert!(has("[[mysql]] \"maria\": without `tls`"), "{p:?}");
        assert!(has("[mysql.upstream] port: must not be 0"), "{p:?}");
        assert!(
            has("[mysql.upstream] roles_unmatched: used only with [[mysql.upstream.roles]]"),
            "{p:?}"
        );
    }

    #[test]
    fn the_example_file_parses() {
        let source = include_str!("../portcullis.toml");
        let config = parse_str(source).unwrap();
        assert_eq!(config.postgres.len(), 1);
        assert_eq!(config.tokens.len(), 1);
        let pg = &config.postgres[0];
        assert_eq!(pg.listen, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(pg.serve.upstream.address(), "127.0.0.1:5432");
        assert_eq!(pg.serve.upstream.password, "s3cret");
        assert_eq!(config.admin, Some("127.0.0.1:9480".parse().unwrap()));
    }

    #[test]
    fn defaults_and_env_substitution() {
        let config = parse_str(&minimal()).unwrap();
        assert_eq!(config.drain_timeout, Duration::from_secs(30));
        let pg = &config.postgres[0].serve;
        assert_eq!(pg.name, "main");
        assert_eq!(pg.handshake_timeout, Duration::from_secs(10));
        assert_eq!(pg.max_message, 64 << 20);
        assert!(!pg.allow_startup_options);
        assert_eq!(pg.upstream.port, 5432);
        assert_eq!(pg.upstream.password, "s3cret");
        assert_eq!(pg.upstream.tls.mode, UpstreamTlsMode::Prefer);
        assert_eq!(pg.upstream.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.tokens[0].name, "ci-bot");
        assert_eq!(config.summary(), "1 listener(s), 1 token(s)");
    }

    #[test]
    fn additive_keys() {
        let source = minimal().replace(
            "allow_plaintext_tokens_on_loopback = true\n",
            "allow_plaintext_tokens_on_loopback = true\nallow_startup_options = true\nmax_message_bytes = 1048576\nhandshake_timeout = \"250ms\"\ndatabases = [\"app\"]\nmax_sessions = 5\nmax_sessions_per_identity = 2\n",
        ) + "connect_timeout = \"2s\"\ndatabase = \"app\"\ntls = \"disable\"\n\n[gateway]\ndrain_timeout = \"5m\"\nsession_threads = 3\n";
        let config = parse_str(&source).unwrap();
        let pg = &config.postgres[0].serve;
        assert!(pg.allow_startup_options);
        assert_eq!(pg.max_message, 1 << 20);
        assert_eq!(pg.handshake_timeout, Duration::from_millis(250));
        assert_eq!(pg.databases, Some(vec!["app".to_string()]));
        assert_eq!(pg.max_sessions, Some(5));
        assert_eq!(pg.max_sessions_per_identity, Some(2));
        assert_eq!(pg.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(pg.upstream.database.as_deref(), Some("app"));
        assert_eq!(pg.upstream.tls.mode, UpstreamTlsMode::Disable);
        assert_eq!(config.drain_timeout, Duration::from_secs(300));
        assert_eq!(config.session_threads, Some(3));
    }

    #[test]
    fn syntax_error_has_its_line() {
        let source = minimal() + "\n[admin\nlisten = 1\n";
        let p = problems(&source);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, Some(15), "{p:?}");
        assert!(p[0].1.contains("invalid table header"), "{p:?}");
        assert!(!p[0].1.contains('\n'));
    }

    #[test]
    fn unknown_key_has_its_line() {
        let source = minimal().replace("name = \"main\"", "name = \"main\"\nlisen = \"x\"");
        let p = problems(&source);
        assert_eq!(p[0].0, Some(8));
        assert!(p[0].1.contains("unknown field `lisen`"), "{p:?}");
    }

    #[test]
    fn missing_key_points_at_its_table() {
        let source = minimal().replace("user = \"app\"\n", "");
        let p = problems(&source);
        assert_eq!(p, vec![(Some(10), "missing field `user`".to_string())]);
    }

    #[test]
    fn wrong_type_has_its_line() {
        let source =
            minimal().replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nport = 70000");
        let p = problems(&source);
        assert_eq!(p[0].0, Some(12));
        assert!(p[0].1.contains("expected u16"), "{p:?}");
    }

    #[test]
    fn invalid_address() {
        let source = minimal().replace("listen = \"127.0.0.1:6432\"", "listen = \"x\"");
        assert_eq!(
            problems(&source),
            vec![(
                Some(8),
                "[[postgres]] listen: invalid socket address \"x\" (expected IP:PORT, e.g. \"127.0.0.1:6432\" or \"[::1]:6432\")".to_string()
            )]
        );
    }

    #[test]
    fn bad_durations() {
        let source = minimal().replace(
            "allow_plaintext_tokens_on_loopback = true",
            "allow_plaintext_tokens_on_loopback = true\nhandshake_timeout = \"10 parsecs\"",
        ) + "connect_timeout = \"0s\"\n[gateway]\ndrain_timeout = \"soon\"\n";
        let p = problems(&source);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(p[0].0, Some(10));
        assert!(
            p[0].1
                .starts_with("[[postgres]] handshake_timeout: invalid duration \"10 parsecs\"")
        );
        assert_eq!(
            p[1],
            (
                Some(15),
                "[postgres.upstream] connect_timeout: must be longer than zero".into()
            )
        );
        assert_eq!(p[2].0, Some(17));
        assert!(
            p[2].1
                .starts_with("[gateway] drain_timeout: invalid duration")
        );
    }

    #[test]
    fn bad_sha256() {
        let source = minimal().replace(TOKEN_SHA, "abc");
        let p = problems(&source);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, Some(3));
        assert!(p[0].1.contains("64 hexadecimal digits"), "{p:?}");
        let source = minimal().replace(TOKEN_SHA, &"zz".repeat(32));
        assert_eq!(problems(&source)[0].0, Some(3));
    }

    #[test]
    fn unknown_upstream_tls_mode() {
        let source = minimal() + "tls = \"sometimes\"\n";
        let p = problems(&source);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, Some(14));
        assert!(
            p[0].1.contains("unknown upstream tls mode \"sometimes\""),
            "{p:?}"
        );
    }

    #[test]
    fn verify_full_needs_a_ca_and_ca_needs_verify_full() {
        let p = problems(&(minimal() + "tls = \"verify-full\"\n"));
        assert_eq!(p[0].0, Some(14));
        assert!(p[0].1.contains("needs `ca`"));
        let p = problems(&(minimal() + "tls = \"require\"\nca = \"ca.pem\"\n"));
        assert_eq!(p[0].0, Some(15));
        assert!(p[0].1.contains("used only with tls = \"verify-full\""));
        let p = problems(&(minimal() + "tls = \"verify-full\"\nca = \"missing-ca.pem\"\n"));
        assert_eq!(p[0].0, Some(15));
        assert!(p[0].1.contains("missing-ca.pem"), "{p:?}");
    }

    #[test]
    fn missing_env_var_names_it() {
        let source = minimal().replace("${PG_PASSWORD}", "${NOPE_PASSWORD}");
        assert_eq!(
            problems(&source),
            vec![(
                Some(13),
                "[postgres.upstream] password: environment variable NOPE_PASSWORD is not set"
                    .to_string()
            )]
        );
    }

    #[test]
    fn env_substitution_in_any_string() {
        let source = minimal().replace("\"127.0.0.1:6432\"", "\"${LISTEN}\"");
        let config = parse_str(&source).unwrap();
        assert_eq!(config.postgres[0].listen, "127.0.0.1:7000".parse().unwrap());
    }

    #[test]
    fn expand_rules() {
        let e = |s: &str| expand(s, &env);
        assert_eq!(e("a${PG_PASSWORD}b").unwrap(), "as3cretb");
        assert_eq!(e("pa$$word $x").unwrap(), "pa$$word $x");
        assert_eq!(e("$${PG_PASSWORD}").unwrap(), "${PG_PASSWORD}");
        assert!(e("${PG_PASSWORD").unwrap_err().contains("unterminated"));
        assert!(e("${}").unwrap_err().contains("invalid variable name"));
        assert!(e("${A-B}").unwrap_err().contains("invalid variable name"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "s", "10", "1.5s", "-1s", "10d", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_files_must_exist_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
        let source = minimal().replace(
            "allow_plaintext_tokens_on_loopback = true",
            "tls = { cert = \"missing.pem\", key = \"missing.key\" }",
        );
        let parse_in = |s: &str| parse(s, "portcullis.toml", dir.path(), &env);
        let p = parse_in(&source).unwrap_err().list;
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, Some(9));
        assert!(p[0].message.contains("missing.pem"), "{p:?}");

        let source = source.replace("missing.pem", "bad.pem");
        let p = parse_in(&source).unwrap_err().list;
        assert_eq!(p[0].line, Some(9));
        assert!(p[0].message.contains("bad.pem"), "{p:?}");

        let certs = portcullis_testkit::Certs::generate().unwrap();
        let files = certs.write_to(dir.path()).unwrap();
        let source = source
            .replace("bad.pem", "server.crt")
            .replace("missing.key", "server.key");
        let config = parse_in(&source).unwrap();
        assert!(config.postgres[0].serve.tls.is_some());
        assert!(files.cert.exists());
    }

    #[test]
    fn duplicates_are_reported_with_both_lines() {
        let source = minimal()
            + &format!(
                r#"
[[identity.tokens]]
name = "ci-bot"
sha256 = "{TOKEN_SHA}"

[[postgres]]
name = "main"
listen = "127.0.0.1:6432"
allow_plaintext_tokens_on_loopback = true
[postgres.upstream]
host = "127.0.0.1"
user = "app"
password = ""

[admin]
listen = "127.0.0.1:6432"
"#
            );
        let p = problems(&source);
        let msgs: Vec<String> = p
            .iter()
            .map(|(l, m)| format!("{}: {m}", l.unwrap_or(0)))
            .collect();
        assert!(
            msgs.iter().any(|m| m.starts_with(
                "16: [[identity.tokens]] name: duplicate token name \"ci-bot\" (also on line 2)"
            )),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("17: [[identity.tokens]] sha256: the same token")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with(
                "20: [[postgres]] name: duplicate listener name \"main\" (also on line 7)"
            )),
            "{msgs:#?}"
        );
        assert!(msgs.iter().any(|m| m.starts_with("21: [[postgres]] listen: address 127.0.0.1:6432 is already used by [admin] on line 29")), "{msgs:#?}");
        assert!(
            msgs.iter().any(|m| m.starts_with(
                "8: [[postgres]] listen: address 127.0.0.1:6432 is already used by [admin]"
            )),
            "{msgs:#?}"
        );
    }

    #[test]
    fn no_listener() {
        let p = problems("[admin]\nlisten = \"127.0.0.1:9480\"\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, None);
        assert!(p[0].1.starts_with("no listener"));
    }

    #[test]
    fn arrays_of_tables_need_no_parent_table() {
        // `[[policy.rules]]` alone makes `[policy]` implicitly; that must parse.
        let source = minimal()
            + "\n[[policy.rules]]\nname = \"no-drop\"\nstatements = [\"drop\"]\naction = \"deny\"\n\n[[masking.columns]]\nmatch = \"*.email\"\n\n[[audit.sinks]]\nkind = \"stdout\"\n";
        let config = parse_str(&source).unwrap();
        assert!(config.policy.is_some() && config.masking.is_some() && config.audit.is_some());
    }

    #[test]
    fn oidc_and_roles_are_read() {
        let source = minimal()
            + "roles_unmatched = \"refuse\"\n[[postgres.upstream.roles]]\ngroups = [\"analysts\", \"bi\"]\nuser = \"readonly\"\npassword = \"ro\"\n\n[identity.oidc]\nissuer = \"https://idp.example\"\naudiences = [\"portcullis\"]\ngroups_claim = \"realm_access.roles\"\naccept = [\"access_token\"]\nleeway = \"10s\"\non_expiry = \"refuse\"\nstartup = \"retry\"\n";
        let config = parse_str(&source).unwrap();
        let oidc = config.oidc.unwrap();
        assert_eq!(oidc.config.issuer, "https://idp.example");
        assert_eq!(oidc.config.groups_claim, "realm_access.roles");
        assert!(oidc.config.accept_access_tokens && !oidc.config.accept_id_tokens);
        assert_eq!(oidc.config.leeway, Duration::from_secs(10));
        assert_eq!(oidc.on_expiry, OnExpiry::Refuse);
        assert!(oidc.retry_startup);
        let up = &config.postgres[0].serve.upstream;
        assert_eq!(up.roles.len(), 1);
        assert!(up.refuse_unmatched);
        assert_eq!(up.login_for(&["bi"]), Some(("readonly", "ro")));
        assert_eq!(up.login_for(&["other"]), None);
    }

    #[test]
    fn oidc_and_roles_mistakes_are_reported_with_their_line() {
        let source = minimal()
            + "roles_unmatched = \"maybe\"\n[[postgres.upstream.roles]]\ngroups = []\nuser = \"ro\"\npassword = \"\"\n\n[identity.oidc]\nissuer = \"http://idp.example\"\naudiences = [\"p\"]\naccept = [\"saml\"]\non_expiry = \"later\"\n";
        let p = problems(&source);
        let text = format!("{p:?}");
        assert_eq!(p.len(), 5, "{text}");
        assert!(
            text.contains("roles_unmatched: \\\"maybe\\\" is not one of default, refuse"),
            "{text}"
        );
        assert!(text.contains("groups: list the groups"), "{text}");
        assert!(
            text.contains("accept: \\\"saml\\\" is not one of"),
            "{text}"
        );
        assert!(text.contains("on_expiry: \\\"later\\\""), "{text}");
        assert!(
            text.contains("plain http is allowed only on loopback"),
            "{text}"
        );
        assert!(p.iter().all(|(line, _)| line.is_some()), "{text}");
    }

    #[test]
    fn masking_resolves_and_its_mistakes_have_lines() {
        let source = minimal()
            + "[masking]\ndetectors = [\"email\", \"credit_card\"]\nexempt_groups = [\"compliance\"]\nhash_key = \"0123456789abcdef0123\"\n[[masking.custom]]\nname = \"codename\"\nterms = [\"bluebird\"]\n[[masking.custom]]\nname = \"emp\"\nregex = 'EMP-\\d{6}'\nstrategy = \"hash\"\n[[masking.columns]]\nmatch = \"*.email\"\nstrategy = \"redact\"\n";
        let config = parse_str(&source).unwrap();
        assert!(config.masking.is_some());

        let bad = minimal()
            + "[masking]\ndetectors = [\"emial\"]\nstrategy = \"blur\"\n[[masking.custom]]\nname = \"x\"\nregex = \"(\"\n[[masking.custom]]\nname = \"y\"\n[[masking.columns]]\nmatch = \"ssn\"\nstrategy = \"hash\"\n";
        let p = problems(&bad);
        let text: Vec<String> = p.iter().map(|(l, m)| format!("{l:?} {m}")).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(has("unknown detector \"emial\""), "{text:#?}");
        assert!(
            has("[masking] strategy: \"blur\" is not one of"),
            "{text:#?}"
        );
        assert!(has("[[masking.custom]] regex:"), "{text:#?}");
        assert!(has("give either `terms` or `regex`"), "{text:#?}");
        assert!(p.iter().all(|(line, _)| line.is_some()), "{text:#?}");
        let no_key =
            minimal() + "[masking]\n[[masking.columns]]\nmatch = \"ssn\"\nstrategy = \"hash\"\n";
        let p = problems(&no_key);
        assert!(p.iter().any(|(_, m)| m.contains("needs hash_key")), "{p:?}");
    }

    #[test]
    fn policy_rules_resolve_and_their_mistakes_have_lines() {
        let source = minimal()
            + "[admin]\nlisten = \"127.0.0.1:9480\"\n\n[policy]\n[[policy.rules]]\nname = \"no-drop\"\nstatements = [\"drop\"]\naction = \"deny\"\n[[policy.rules]]\nname = \"ok\"\nstatements = [\"delete\"]\nwithout_where = true\naction = \"approve\"\napprovers = [\"dba\"]\nmin_approvals = 2\nmode = \"detect\"\n\n[approvals]\ntimeout = \"30s\"\nstore = \"postgres://a@b/c\"\n[[approvals.notify]]\nwebhook = \"https://hooks.example.com/x\"\n";
        let config = parse_str(&source).unwrap();
        let policy = config.policy.unwrap();
        assert_eq!(policy.rules().len(), 3, "the built-in rule and two");
        assert_eq!(policy.rules()[2].min_approvals, 2);
        assert_eq!(policy.rules()[2].mode, Mode::Detect);
        assert_eq!(config.approvals.timeout, Duration::from_secs(30));
        assert_eq!(
            config.approvals.store,
            ApprovalStoreConfig::Postgres {
                url: "postgres://a@b/c".into(),
                table: "portcullis_approvals".into()
            }
        );
        assert_eq!(
            config.approvals.webhooks,
            [(
                "webhook-1".to_owned(),
                "https://hooks.example.com/x".to_owned()
            )]
        );

        let bad = minimal()
            + "[policy]\non_unparsed = \"maybe\"\n[[policy.rules]]\nname = \"a\"\nstatements = [\"delet\"]\naction = \"deny\"\n[[policy.rules]]\nname = \"a\"\naction = \"approve\"\n[[policy.rules]]\nname = \"c\"\naction = \"block\"\n\n[approvals]\nstore = \"redis://x\"\n[[approvals.notify]]\nwebhook = \"ftp://x\"\n";
        let p = problems(&bad);
        let text: Vec<String> = p.iter().map(|(l, m)| format!("{l:?} {m}")).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(
            has("[policy] on_unparsed: \"maybe\" is not one of deny, allow"),
            "{text:#?}"
        );
        assert!(
            has("unknown statement class or kind \"delet\""),
            "{text:#?}"
        );
        assert!(has("duplicate rule name \"a\""), "{text:#?}");
        assert!(has("needs `approvers`"), "{text:#?}");
        assert!(
            has("action: \"block\" is not one of deny, approve, allow"),
            "{text:#?}"
        );
        assert!(has("needs [admin] listen"), "{text:#?}");
        assert!(has("[approvals] store: \"redis://x\""), "{text:#?}");
        assert!(has("webhook: \"ftp://x\""), "{text:#?}");
        assert!(p.iter().all(|(line, _)| line.is_some()), "{text:#?}");
    }

    #[test]
    fn a_listener_nobody_can_use_is_an_error() {
        let source = minimal().replace("allow_plaintext_tokens_on_loopback = true\n", "");
        let p = problems(&source);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, Some(7));
        assert!(p[0].1.contains("every token would be refused"));
    }

    #[test]
    fn every_problem_is_reported_in_file_order() {
        let source = minimal()
            .replace(TOKEN_SHA, "nope")
            .replace("listen = \"127.0.0.1:6432\"", "listen = \"x\"")
            .replace("${PG_PASSWORD}", "${MISSING}");
        let p = problems(&source);
        let lines: Vec<_> = p.iter().map(|p| p.0).collect();
        assert_eq!(lines, vec![Some(3), Some(8), Some(13)]);
        let rendered = Problems {
            file: "portcullis.toml".into(),
            list: parse_str(&source).unwrap_err().list,
        }
        .to_string();
        assert!(rendered.starts_with("portcullis.toml:3: [[identity.tokens]] sha256"));
        assert!(
            rendered
                .contains("\nportcullis.toml:8: [[postgres]] listen: invalid socket address \"x\"")
        );
    }

    #[test]
    fn audit_section_resolves_with_defaults() {
        let source = minimal()
            + "\n[audit]\non_failure = \"continue\"\nrecord_results = \"none\"\n[[audit.sinks]]\nkind = \"jsonl\"\npath = \"audit/trail.jsonl\"\nfsync = \"always\"\nrotate_bytes = 65536\n[[audit.sinks]]\nkind = \"postgres\"\nurl = \"postgres://audit@db/audit\"\ntable = \"audit.trail\"\n[[audit.sinks]]\nkind = \"stdout\"\n";
        let config = parse_str(&source).unwrap();
        let audit = config.audit.unwrap();
        assert_eq!(audit.on_failure, OnFailure::Continue);
        assert!(!audit.record_results);
        assert!(audit.key.is_none());
        assert_eq!(audit.checkpoint_interval, Duration::from_secs(10));
        assert_eq!(audit.sinks.len(), 3);
        assert_eq!(
            audit.sinks[0].kind,
            AuditSinkKind::Jsonl {
                path: PathBuf::from("/nonexistent/audit/trail.jsonl"),
                fsync: Fsync::Always,
                rotate_bytes: Some(65536),
                checkpoint_copy: None,
                inline: false,
            }
        );
        assert!(audit.sinks[0].required && audit.sinks[1].required && !audit.sinks[2].required);
        assert_eq!(audit.sinks[0].timeout, Duration::from_secs(2));
        assert_eq!(audit.sinks[1].name(), "postgres:audit.trail");
    }

    #[test]
    fn audit_mistakes_are_reported_with_their_line() {
        let source = minimal()
            + "\n[audit]\non_failure = \"maybe\"\nrecord_results = \"rows\"\nsigning_key = \"missing.key\"\n[[audit.sinks]]\nkind = \"jsonl\"\nurl = \"postgres://x\"\n[[audit.sinks]]\nkind = \"postgres\"\nurl = \"postgres://x\"\ntable = \"t; drop table x\"\n[[audit.sinks]]\nkind = \"kafka\"\n";
        let p = problems(&source);
        let text = format!("{p:?}");
        assert!(
            p.iter()
                .any(|(_, m)| m == "[audit] on_failure: \"maybe\" is not one of refuse, continue"),
            "{text}"
        );
        assert!(
            p.iter().any(|(_, m)| m.starts_with(
                "[audit] record_results: \"digest\" and \"rows\" are not implemented yet"
            )),
            "{text}"
        );
        assert!(
            p.iter().any(
                |(_, m)| m.starts_with("[audit] signing_key: /nonexistent/missing.key:")
                    && m.ends_with("(make one with `portcullis audit keygen`)")
            ),
            "{text}"
        );
        assert!(
            p.iter()
                .any(|(_, m)| m == "[[audit.sinks]] url: not a setting of kind = \"jsonl\""),
            "{text}"
        );
        assert!(
            p.iter()
                .any(|(_, m)| m == "[[audit.sinks]] kind = \"jsonl\" needs a path"),
            "{text}"
        );
        assert!(
            p.iter()
                .any(|(_, m)| m.starts_with("[[audit.sinks]] table: invalid table name")),
            "{text}"
        );
        assert!(
            p.iter().any(|(_, m)| m
                == "[[audit.sinks]] kind: \"kafka\" is not one of jsonl, postgres, stdout"),
            "{text}"
        );
        assert!(p.iter().all(|(line, _)| line.is_some()), "{text}");
        // Inline writes cannot sync every batch.
        let p = problems(
            &(minimal()
                + "\n[audit]\n[[audit.sinks]]\nkind = \"jsonl\"\npath = \"a.jsonl\"\nfsync = \"always\"\nwriter = \"inline\"\n"),
        );
        assert!(
            p[0].1
                .contains("writer = \"inline\" cannot sync every write"),
            "{p:?}"
        );
        // An [audit] without sinks records nothing: an error, not a silent no-op.
        let p = problems(&(minimal() + "\n[audit]\non_failure = \"refuse\"\n"));
        assert!(p[0].1.starts_with("[audit]: no [[audit.sinks]]"), "{p:?}");
    }
}
