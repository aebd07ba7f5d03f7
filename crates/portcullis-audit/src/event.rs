//! The audit event schema (version [`SCHEMA_VERSION`]), documented in `docs/audit.md`.
//!
//! Every record of a trail is one [`AuditEvent`] plus the chain fields the sinks add
//! (`v`, `seq`, `ts`, `prev`, `hash`; see [`crate::chain`]). Events that belong to a session
//! carry a [`SessionRef`]: the session id, the event's sequence number within the session,
//! and who, from where, to which target — so that no record needs another one to say whose
//! it is.

use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_core::{
    CommandKind, CommandView, ConnectionEvent, Decision, Identity, Param, Refusal, Session,
    TextRedactor, Verdict,
};
use serde::{Deserialize, Serialize};

/// The schema version written in every record's `v` field.
pub const SCHEMA_VERSION: u32 = 1;

/// Bound parameter values longer than this are recorded cut, with their full length.
pub const MAX_PARAM_BYTES: usize = 4096;

/// Statement text longer than this is recorded as its first bytes (cut at a character
/// boundary), its length and its SHA-256: a 10 MB literal costs the trail 64 KiB, not a
/// 10 MB line that every later record waits behind.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The first [`MAX_TEXT_BYTES`] of `text`, at most, cut at a character boundary.
fn cut_text(text: &str) -> &str {
    if text.len() <= MAX_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// A writer opened the trail: the first record of a trail, of each gateway run, and of
    /// each file after a rotation.
    TrailStart(TrailStart),
    /// A session was established (authenticated, upstream open).
    SessionStart(SessionStart),
    /// A command unit arrived; written before the command reaches the database.
    Command(Command),
    /// A decision a layer made about a command while it was in flight (e.g. an approval
    /// requested, before the person answers); the outcome repeats the final decisions.
    Decision(DecisionEvent),
    /// How a command ended: exactly one per command.
    Outcome(Outcome),
    /// Something the database sent outside any command (notification, notice, parameter
    /// change, fatal error).
    SessionEvent(SessionEvent),
    /// A session ended.
    SessionEnd(SessionEnd),
    /// A connection that never became a session.
    Connection(Connection),
    /// Records that could not be written (sink failure with `on_failure = "continue"`, or
    /// a full queue): how many, and since when.
    Gap(Gap),
    /// A signed checkpoint over the chain so far.
    Checkpoint(Checkpoint),
}

impl AuditEvent {
    /// The session this event belongs to, if any.
    pub fn session(&self) -> Option<&SessionRef> {
        match self {
            AuditEvent::SessionStart(e) => Some(&e.session),
            AuditEvent::Command(e) => Some(&e.session),
            AuditEvent::Decision(e) => Some(&e.session),
            AuditEvent::Outcome(e) => Some(&e.session),
            AuditEvent::SessionEvent(e) => Some(&e.session),
            AuditEvent::SessionEnd(e) => Some(&e.session),
            AuditEvent::TrailStart(_)
            | AuditEvent::Connection(_)
            | AuditEvent::Gap(_)
            | AuditEvent::Checkpoint(_) => None,
        }
    }

    /// The record type as written in the `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::TrailStart(_) => "trail_start",
            AuditEvent::SessionStart(_) => "session_start",
            AuditEvent::Command(_) => "command",
            AuditEvent::Decision(_) => "decision",
            AuditEvent::Outcome(_) => "outcome",
            AuditEvent::SessionEvent(_) => "session_event",
            AuditEvent::SessionEnd(_) => "session_end",
            AuditEvent::Connection(_) => "connection",
            AuditEvent::Gap(_) => "gap",
            AuditEvent::Checkpoint(_) => "checkpoint",
        }
    }
}

/// Whose a session event is: on every session record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The session id, 16 hex digits.
    pub session: Arc<str>,
    /// This event's number within the session, from 1, without gaps.
    pub sseq: u64,
    /// The identity's subject.
    pub identity: Arc<str>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The target (listener) name.
    pub target: Arc<str>,
}

/// The first record of a trail, of a gateway run, or of a rotated file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailStart {
    /// Why the writer opened the trail: `new` (no earlier record), `restart`, `rotate`,
    /// `recover` (after a write error).
    pub reason: String,
    /// The gateway's version.
    pub writer: String,
    /// The writer's process id.
    pub pid: u32,
    /// Whether the records before this one ended with a `shutdown` checkpoint. `false` after
    /// a crash: the run before ended without sealing its tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_sealed: Option<bool>,
    /// Bytes of a record cut off by a crash that were left in the file just before this
    /// record (they are not part of the chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded_bytes: Option<u64>,
}

impl TrailStart {
    /// This process opening a trail for `reason`.
    pub fn opened(
        reason: &str,
        previous_sealed: Option<bool>,
        discarded_bytes: Option<u64>,
    ) -> Self {
        TrailStart {
            reason: reason.to_owned(),
            writer: format!("portcullis {}", env!("CARGO_PKG_VERSION")),
            pid: std::process::id(),
            previous_sealed,
            discarded_bytes,
        }
    }
}

impl AuditEvent {
    /// Whether this record closes a trail cleanly: a `shutdown` or `rotate` checkpoint.
    pub fn closes_trail(&self) -> bool {
        matches!(self, AuditEvent::Checkpoint(c) if c.reason == "shutdown" || c.reason == "rotate")
    }
}

/// The identity on a session's start record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The stable subject.
    pub subject: String,
    /// Display name or email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// `static_token` or `oidc`.
    pub method: String,
    /// The token issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
}

impl From<&Identity> for IdentityRecord {
    fn from(id: &Identity) -> Self {
        IdentityRecord {
            subject: id.subject.clone(),
            display: id.display.clone(),
            groups: id.groups.clone(),
            method: id.method.to_string(),
            issuer: id.issuer.clone(),
            token_id: id.token_id.clone(),
        }
    }
}

/// A session was established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStart {
    /// Whose.
    #[serde(flatten)]
    pub session: SessionRef,
    /// The verified identity.
    pub who: IdentityRecord,
    /// `postgres`, `mysql`, `http`.
    pub protocol: String,
    /// The user name the client claimed.
    pub claimed_user: String,
    /// The database asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The upstream address.
    pub upstream: String,
    /// The user the gateway logged in as upstream.
    pub upstream_user: String,
    /// The client's application name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// Startup parameters as the client asked for them.
    pub startup_params: Vec<(String, String)>,
    /// Whether the client's connection is encrypted.
    pub tls: bool,
}

impl SessionStart {
    /// The start record of `session`.
    pub fn of(session: SessionRef, s: &Session) -> Self {
        SessionStart {
            session,
            who: IdentityRecord::from(&s.identity),
            protocol: s.protocol.to_string(),
            claimed_user: s.claimed_user.clone(),
            database: s.database.clone(),
            upstream: s.upstream.clone(),
            upstream_user: s.upstream_user.clone(),
            application: s.application.clone(),
            startup_params: s.startup_params.clone(),
            tls: s.tls,
        }
    }
}

/// One statement of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementRecord {
    /// The text as the client sent it — its first [`MAX_TEXT_BYTES`] when longer (then
    /// `bytes` and `sha256` describe the whole).
    pub text: String,
    /// A text longer than [`MAX_TEXT_BYTES`]: its full length in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// A text longer than [`MAX_TEXT_BYTES`]: the SHA-256 (hex) of the whole text as the
    /// client sent it, to match against the database's own log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The prepared statement's name, when it was prepared under one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<String>,
    /// Whether the command executes it (rather than only preparing or describing it).
    pub executes: bool,
}

impl StatementRecord {
    /// The record of a statement: `text` cut to [`MAX_TEXT_BYTES`] when longer, with its
    /// length and SHA-256.
    pub fn new(text: &str, prepared: Option<&str>, executes: bool) -> Self {
        let long = text.len() > MAX_TEXT_BYTES;
        StatementRecord {
            text: cut_text(text).to_owned(),
            bytes: long.then_some(text.len() as u64),
            sha256: long
                .then(|| hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))),
            prepared: prepared.map(str::to_owned),
            executes,
        }
    }
}

/// A bound parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamRecord {
    /// SQL NULL.
    Null,
    /// A text value.
    Text(String),
    /// A binary value, hex-encoded.
    Binary {
        /// The bytes in hex.
        binary: String,
    },
    /// A value longer than [`MAX_PARAM_BYTES`]: its first bytes (text, lossy) and its length.
    Cut {
        /// The first bytes.
        prefix: String,
        /// The full length in bytes.
        bytes: u64,
    },
}

impl From<&Param<'_>> for ParamRecord {
    fn from(p: &Param<'_>) -> Self {
        match p {
            Param::Null => ParamRecord::Null,
            Param::Text(v) | Param::Binary(v) if v.len() > MAX_PARAM_BYTES => ParamRecord::Cut {
                prefix: String::from_utf8_lossy(&v[..MAX_PARAM_BYTES]).into_owned(),
                bytes: v.len() as u64,
            },
            Param::Text(v) => ParamRecord::Text(String::from_utf8_lossy(v).into_owned()),
            Param::Binary(v) => ParamRecord::Binary {
                binary: hex::encode(v),
            },
            _ => ParamRecord::Null,
        }
    }
}

/// A command unit, recorded before it reaches the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Whose.
    #[serde(flatten)]
    pub session: SessionRef,
    /// The command's number within the session, from 1.
    pub command: u64,
    /// `statements`, `function_call`, `control`.
    pub kind: String,
    /// The statements, in order.
    pub statements: Vec<StatementRecord>,
    /// Bound parameters, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamRecord>,
    /// Whether personal data in the text and parameters was masked before recording
    /// (filled by the masking layer; `false` until then).
    #[serde(default)]
    pub masked: bool,
}

/// The record name of a command kind.
pub fn kind_name(kind: CommandKind) -> &'static str {
    match kind {
        CommandKind::Statements => "statements",
        CommandKind::FunctionCall => "function_call",
        CommandKind::Control => "control",
        CommandKind::SessionEvents => "session_events",
        CommandKind::Terminate => "terminate",
        _ => "other",
    }
}

impl Command {
    /// The record of `command`.
    pub fn of(session: SessionRef, number: u64, command: &impl CommandView) -> Self {
        Command {
            session,
            command: number,
            kind: kind_name(command.kind()).to_owned(),
            statements: command
                .statements()
                .iter()
                .map(|s| StatementRecord::new(s.text, s.prepared_name, s.executes))
                .collect(),
            params: command.params().iter().map(ParamRecord::from).collect(),
            masked: false,
        }
    }

    /// Mask personal data in the statements' text and the text parameters with `redactor`;
    /// `masked` says whether anything changed.
    pub fn redact(&mut self, redactor: &TextRedactor, protocol: portcullis_core::Protocol) {
        for s in &mut self.statements {
            if let Some(masked) = redactor.redact_statement(protocol, &s.text) {
                s.text = masked;
                self.masked = true;
            }
        }
        for p in &mut self.params {
            let text = match p {
                ParamRecord::Text(t) => t,
                ParamRecord::Cut { prefix, .. } => prefix,
                _ => continue,
            };
            if let Some(masked) = redactor.redact(text) {
                *text = masked;
                self.masked = true;
            }
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The reply ended without an error.
    Ok,
    /// The database answered with an error.
    Error,
    /// A layer refused the command (blocked, approval denied or timed out, audit
    /// unavailable); it never reached the database.
    Refused,
    /// The client cancelled it.
    Cancelled,
    /// The gateway failed while relaying the reply (the session ends).
    Failed,
    /// The reply was dropped before its end (the client or the session went away).
    Abandoned,
}

/// An error code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// SQLSTATE, errno or HTTP status as text; empty when the gateway failed.
    pub code: String,
    /// The message.
    pub message: String,
}

/// What a layer decided about a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The deciding layer (`guard`, `approval`, `mask`, `audit`...).
    pub layer: String,
    /// `allow`, `deny`, `approval_requested`, `approved`, `approval_denied`,
    /// `approval_timed_out`, `cancelled`, `unrecorded`.
    pub verdict: String,
    /// The rule that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Who decided (the approver), when a person did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Anything else the layer said (approval request id, approvers...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<&Decision> for DecisionRecord {
    fn from(d: &Decision) -> Self {
        let (verdict, rule, detail) = match &d.verdict {
            Verdict::Allow => ("allow", None, None),
            Verdict::Deny { rule, message } => ("deny", Some(rule.clone()), Some(message.clone())),
            Verdict::Approve {
                rule, approvers, ..
            } => (
                "approval_requested",
                Some(rule.clone()),
                Some(format!("approvers: {}", approvers.join(", "))),
            ),
            _ => ("other", None, None),
        };
        DecisionRecord {
            layer: d.layer.to_owned(),
            verdict: verdict.to_owned(),
            rule,
            by: None,
            detail: d.detail.clone().or(detail),
        }
    }
}

impl DecisionRecord {
    /// The decision a refusal stands for, if it is one.
    pub fn of_refusal(refusal: &Refusal) -> Option<Self> {
        let record = |layer: &str, verdict: &str| DecisionRecord {
            layer: layer.to_owned(),
            verdict: verdict.to_owned(),
            rule: None,
            by: None,
            detail: None,
        };
        Some(match refusal {
            Refusal::Blocked { rule, message } => DecisionRecord {
                rule: Some(rule.clone()),
                detail: Some(message.clone()),
                ..record("guard", "deny")
            },
            Refusal::ApprovalDenied {
                request,
                by,
                reason,
            } => DecisionRecord {
                by: Some(by.clone()),
                detail: Some(match reason {
                    Some(reason) => format!("request {request}: {reason}"),
                    None => format!("request {request}"),
                }),
                ..record("approval", "approval_denied")
            },
            Refusal::ApprovalTimeout { request } => DecisionRecord {
                detail: Some(format!("request {request}")),
                ..record("approval", "approval_timed_out")
            },
            Refusal::Cancelled => record("gateway", "cancelled"),
            Refusal::AuditUnavailable { reason } => DecisionRecord {
                detail: Some(reason.clone()),
                ..record("audit", "unrecorded")
            },
            _ => return None,
        })
    }
}

/// A decision about a command, recorded as it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionEvent {
    /// Whose.
    #[serde(flatten)]
    pub session: SessionRef,
    /// The command's number within the session.
    pub command: u64,
    /// The decision.
    #[serde(flatten)]
    pub decision: DecisionRecord,
}

/// What the masking layer did to a reply (filled by the masking layer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskingRecord {
    /// The columns it masked.
    pub columns: Vec<String>,
    /// How many values it masked.
    pub values: u64,
}

/// How a command ended: exactly one per [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Whose.
    #[serde(flatten)]
    pub session: SessionRef,
    /// The command's number within the session.
    pub command: u64,
    /// How it ended.
    pub status: Status,
    /// Rows returned or affected (the sum over the command's statements).
    pub rows: u64,
    /// Bytes of the reply sent to the client.
    pub bytes: u64,
    /// Microseconds from the command's arrival to the end of its reply.
    pub duration_us: u64,
    /// The last command tag (`SELECT 3`), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The first error, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRecord>,
    /// What the layers decided, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<DecisionRecord>,
    /// What masking did (filled by the masking layer).
    #[serde(default)]
    pub masking: Option<MaskingRecord>,
    /// Data the client streamed with the command (PostgreSQL `COPY … FROM STDIN`, MySQL
    /// `LOAD DATA LOCAL INFILE`), when it sent any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadRecord>,
}

/// Data a client streamed with a command: its size and digest (never its contents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Bytes as the protocol carried them (PostgreSQL: the `CopyData` messages; MySQL: the
    /// file's contents).
    pub bytes: u64,
    /// SHA-256 of those bytes, hex.
    pub sha256: String,
}

/// Something the database sent outside any command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    /// Whose.
    #[serde(flatten)]
    pub session: SessionRef,
    /// `notification`, `notice`, `parameter`, `error`.
    pub event: String,
    /// Notice or error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Message, notification payload or parameter value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Notification channel or parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnd {
    /// Whose.
    #[serde(flatten)]
    pub session: SessionRef,
    /// Why, as the protocol server said.
    pub reason: String,
    /// How many commands the session ran.
    pub commands: u64,
}

/// A connection that never became a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// `refused_login`, `refused_startup`, `handshake_timeout`, `tls_failure`,
    /// `protocol_error`, `upstream_failure`.
    pub event: String,
    /// Protocol.
    pub protocol: String,
    /// The listener's name.
    pub target: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The user name claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_user: Option<String>,
    /// Why.
    pub reason: String,
}

impl From<&ConnectionEvent> for Connection {
    fn from(e: &ConnectionEvent) -> Self {
        Connection {
            event: e.kind.to_string(),
            protocol: e.protocol.to_string(),
            target: e.target.clone(),
            peer: e.peer,
            claimed_user: e.claimed_user.clone(),
            reason: e.reason.clone(),
        }
    }
}

/// Records lost before this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// How many records were lost.
    pub lost: u64,
    /// When the first of them was made (RFC 3339).
    pub since: String,
    /// Why.
    pub reason: String,
}

/// A signed checkpoint: it seals every record before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// `interval`, `shutdown`, `rotate`.
    pub reason: String,
    /// The Ed25519 public key (hex) that signed it, `null` when the trail is not signed.
    pub key: Option<String>,
    /// The signature (hex) over this record's `seq` and `prev` (see [`crate::chain`]).
    pub sig: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_statement_is_recorded_as_its_start_length_and_digest() {
        let short = StatementRecord::new("select 1", None, true);
        assert_eq!(
            (short.text.as_str(), short.bytes, short.sha256.as_deref()),
            ("select 1", None, None)
        );
        // A multi-byte character across the cut: the text ends before it.
        let long = format!(
            "insert into t values ('{}é{}')",
            "x".repeat(MAX_TEXT_BYTES - 25),
            "y".repeat(1 << 20)
        );
        let r = StatementRecord::new(&long, Some("s1"), true);
        assert!(r.text.len() <= MAX_TEXT_BYTES && long.starts_with(&r.text));
        assert!(r.text.len() >= MAX_TEXT_BYTES - 1);
        assert_eq!(r.bytes, Some(long.len() as u64));
        assert_eq!(
            r.sha256.as_deref(),
            Some(
                hex::encode(ring::digest::digest(&ring::digest::SHA256, long.as_bytes())).as_str()
            )
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"bytes\":") && json.contains("\"sha256\":"));
        assert!(!serde_json::to_string(&short).unwrap().contains("sha256"));
    }
}
