//! `GuardLayer`: judges every command unit before any of it goes further in.

use std::task::{Context, Poll};

use portcullis_core::{
    CommandKind, CommandView, Decision, DecisionLog, Error, Protocol, Refusal, RefuseInPlace,
    Refusing, Request, Response, Session, Verdict,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Class, Classified};
use crate::mysql::MySqlMode;
use crate::rules::{Dialect, Judgement, Policy};

/// Applies a [`Policy`] to every command: `Deny` refuses it (in place when the protocol can,
/// so that the client and the database end in the same transaction state), `Approve` puts the
/// verdict in the request's extensions for the approval layer inside, `detect` rules are
/// recorded through the [`DecisionLog`].
#[derive(Debug, Clone)]
pub struct GuardLayer {
    policy: Option<Policy>,
    approvals: bool,
}

impl GuardLayer {
    /// A guard for `policy`. Statements needing approval are refused unless
    /// [`GuardLayer::with_approvals`] says an approval layer sits inside.
    pub fn new(policy: Policy) -> Self {
        GuardLayer {
            policy: Some(policy),
            approvals: false,
        }
    }

    /// A guard that lets everything through (no `[policy]`): costs one branch per command.
    pub fn disabled() -> Self {
        GuardLayer {
            policy: None,
            approvals: false,
        }
    }

    /// An approval layer sits inside this one and handles [`Verdict::Approve`].
    pub fn with_approvals(mut self, yes: bool) -> Self {
        self.approvals = yes;
        self
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            policy: self.policy.clone(),
            approvals: self.approvals,
            prepared: Prepared::default(),
        }
    }
}

/// The service [`GuardLayer`] makes.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    policy: Option<Policy>,
    approvals: bool,
    /// SQL-level `PREPARE`s seen in this session (a layer is made per session).
    prepared: Prepared,
}

/// Most SQL-level prepared statements remembered per session; beyond, the oldest are
/// forgotten (their `EXECUTE` is then judged `admin`).
const MAX_PREPARED: usize = 1000;

/// Name → classification of SQL-level `PREPARE name AS …` statements the guard let through.
#[derive(Debug, Clone, Default)]
struct Prepared(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Classified>>>);

impl Prepared {
    fn get(&self, name: &str) -> Option<Classified> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn remember(&self, found: Vec<Classified>) {
        if found.is_empty() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for s in found {
            if let Some(name) = s.prepares.clone() {
                if map.len() >= MAX_PREPARED && !map.contains_key(&name) {
                    map.clear();
                }
                map.insert(name, s);
            }
        }
    }
}

impl<S> Guard<S> {
    /// The verdict for a command run in `session`, with detect-mode verdicts (allow when the
    /// guard is disabled).
    pub fn judge(&self, session: &Session, command: &impl CommandView) -> Judgement {
        match &self.policy {
            Some(policy) => judge(policy, session, command, &self.prepared),
            None => Judgement::default(),
        }
    }
}

/// Judge `command` in `session` with `policy` (the guard's decision, without enforcing it).
fn judge(
    policy: &Policy,
    session: &Session,
    command: &impl CommandView,
    prepared: &Prepared,
) -> Judgement {
    match command.kind() {
        CommandKind::Statements => {}
        CommandKind::FunctionCall => {
            // The function is named by OID only: not known to be read-only, so `admin`.
            let mut call = Classified::reading(String::new());
            call.kind(
                "function_call",
                Class::Admin,
                "a FunctionCall message names its function by OID only",
            );
            let call = call.finish();
            return policy.judge_classified(&session.identity, &call);
        }
        _ => return Judgement::default(),
    }
    let statements = command.statements();
    if let Some(refusal) = unreadable(session, &statements) {
        return Judgement {
            verdict: refusal,
            ..Judgement::default()
        };
    }
    let mut judgement = Judgement::default();
    let mut prepares = Vec::new();
    let mut may_change_reading = false;
    let dialect = match session.protocol {
        Protocol::MySql => Dialect::MySql(MySqlMode::from_sql_mode(
            &session.server_param("sql_mode").unwrap_or_default(),
        )),
        Protocol::Http => Dialect::Http,
        _ => Dialect::Postgres,
    };
    // MySQL only: no other protocol reports a connection id.
    let own_id: Option<u64> = (session.protocol == Protocol::MySql)
        .then(|| session.server_param("connection_id"))
        .flatten()
        .and_then(|id| id.parse().ok());
    for statement in &statements {
        if statement.unknown {
            // Nothing runs unless the unit executes it; then the gateway must know what.
            if statement.executes {
                let known = statement.prepared_name.and_then(|n| prepared.get(n));
                let one = match known {
                    Some(c) => policy.judge_classified(&session.identity, &c),
                    None => unknown_statement(statement.prepared_name),
                };
                raise(&mut judgement, one, true);
            }
            continue;
        }
        let classified = policy.classify_in(dialect, statement.text);
        let list = match &*classified {
            Ok(list) => list,
            Err(e) if e.too_complex => {
                judgement
                    .too_complex
                    .get_or_insert_with(|| e.message.clone());
                continue;
            }
            Err(e) => {
                let one = policy.judge_unparsed(e);
                raise(&mut judgement, one, true);
                continue;
            }
        };
        for s in list {
            may_change_reading |= changes_reading(s);
            // EXECUTE of a statement prepared in this session (earlier in this unit, or in
            // an earlier one): judge what it runs; of one the guard never saw: refuse.
            let mut seen = s.executes_prepared.as_deref().and_then(|n| {
                prepares
                    .iter()
                    .rev()
                    .find(|p: &&Classified| p.prepares.as_deref() == Some(n))
                    .cloned()
                    .or_else(|| prepared.get(n))
            });
            if let Some(name) = s.executes_prepared.as_deref()
                && seen.is_none()
            {
                raise(&mut judgement, unknown_statement(Some(name)), true);
                continue;
            }
            // MySQL `KILL <id>` of the session's own connection, or of another session of
            // the same identity through this listener, is not another's backend.
            let kills_own = |s: &Classified| {
                s.kinds
                    .iter()
                    .filter_map(|k| k.strip_prefix("kill:"))
                    .filter_map(|id| id.parse::<u64>().ok())
                    .any(|id| {
                        own_id == Some(id)
                            || session
                                .own_connections
                                .as_ref()
                                .is_some_and(|own| own.contains(id))
                    })
            };
            if s.has_kind("signal_other_backend") && kills_own(s) {
                let mut mine = s.clone();
                mine.kinds.remove("signal_other_backend");
                seen = Some(mine);
            }
            let one = policy.judge_classified(&session.identity, seen.as_ref().unwrap_or(s));
            raise(&mut judgement, one, statement.executes);
            if s.prepares.is_some() {
                prepares.push(s.clone());
            }
        }
    }
    if !matches!(judgement.verdict, Verdict::Deny { .. }) {
        prepared.remember(prepares);
        if may_change_reading {
            session.settings_may_change();
        }
    }
    judgement
}

/// Whether running `s` may change a setting that changes how later SQL is read: a `SET`, any
/// function call (`set_config`, or a function that calls it), code (`DO`, `CALL`, EXECUTE),
/// `pg_settings`. The protocol server then answers it before judging the next command.
fn changes_reading(s: &Classified) -> bool {
    s.has_kind("set")
        || s.class == Class::Admin
        || !s.functions.is_empty()
        || s.executes_prepared.is_some()
        || s.tables
            .iter()
            .any(|t| t == "pg_settings" || t.ends_with(".pg_settings"))
}

/// The judgement for executing a prepared statement whose text the gateway does not know.
fn unknown_statement(name: Option<&str>) -> Judgement {
    Judgement {
        verdict: Verdict::deny(
            "unknown-statement",
            format!(
                "the command runs prepared statement {:?}, which the gateway did not see prepared (or cannot tell which text it holds); prepare it again through the gateway",
                name.unwrap_or("")
            ),
        ),
        ..Judgement::default()
    }
}

/// Fold one statement's judgement into the command's. A statement only prepared or described
/// here (not executed) is not held for approval: its execution is.
fn raise(judgement: &mut Judgement, mut one: Judgement, executes: bool) {
    if !executes && matches!(one.verdict, Verdict::Approve { .. }) {
        one.verdict = Verdict::Allow;
    }
    if one.verdict.strictness() > judgement.verdict.strictness() {
        judgement.verdict = one.verdict;
    }
    judgement.detected.extend(one.detected);
}

/// Session settings under which the database would read a statement differently from the
/// classifier: refuse rather than guess.
fn unreadable(session: &Session, statements: &[portcullis_core::Statement<'_>]) -> Option<Verdict> {
    if session.reads_backslash_escapes() && statements.iter().any(|s| s.text.contains('\\')) {
        return Some(Verdict::deny(
            "standard_conforming_strings",
            "with standard_conforming_strings = off a backslash in a string changes how the statement is read; run SET standard_conforming_strings = on",
        ));
    }
    // PostgreSQL reports `client_encoding`; a MySQL session reports `character_set_client`.
    let charset = match session.protocol {
        Protocol::MySql => "character_set_client",
        _ => "client_encoding",
    };
    if session.client_encoding_not_utf8() && statements.iter().any(|s| !s.text.is_ascii()) {
        let enc = session.server_param(charset).unwrap_or_default();
        return Some(Verdict::deny(
            charset,
            format!("{charset} {enc}: only ASCII statements are read safely; use UTF-8"),
        ));
    }
    None
}

impl<S, C, B> Service<Request<C>> for Guard<S>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error>,
    C: CommandView + RefuseInPlace,
{
    type Response = Response<B>;
    type Error = Error;
    type Future = Refusing<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<C>) -> Self::Future {
        let Some(policy) = &self.policy else {
            return Refusing::pass(self.inner.call(req));
        };
        let judgement = judge(policy, &req.session, &req.command, &self.prepared);
        for detected in &judgement.detected {
            DecisionLog::record_in(
                &req.extensions,
                &Decision::new("guard", detected.clone())
                    .with_detail("mode = detect: recorded, not enforced"),
            );
        }
        let refusal = match judgement.verdict {
            _ if judgement.too_complex.is_some() => Refusal::TooComplex {
                message: judgement.too_complex.unwrap_or_default(),
            },
            Verdict::Deny { rule, message } => Refusal::Blocked { rule, message },
            Verdict::Approve {
                rule,
                approvers,
                min_approvals,
            } if self.approvals => {
                req.extensions.insert(Verdict::Approve {
                    rule,
                    approvers,
                    min_approvals,
                });
                return Refusing::pass(self.inner.call(req));
            }
            Verdict::Approve { rule, .. } => Refusal::Blocked {
                message: "the statement needs approval, and this gateway has no approval layer"
                    .into(),
                rule,
            },
            _ => return Refusing::pass(self.inner.call(req)),
        };
        Refusing::refuse(&mut self.inner, req, refusal)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use portcullis_core::{AuthMethod, Identity, SessionId, Statement};

    use super::*;
    use crate::rules::{Action, Rule};

    struct Sql(&'static str);

    impl CommandView for Sql {
        fn kind(&self) -> CommandKind {
            CommandKind::Statements
        }
        fn statements(&self) -> Vec<Statement<'_>> {
            vec![Statement::text(self.0)]
        }
    }

    fn guard() -> Guard<()> {
        let policy = Policy::new(vec![
            Rule::new("no-deletes", Action::Deny).statements(["delete"]),
        ])
        .unwrap();
        GuardLayer::new(policy).layer(())
    }

    fn session(protocol: Protocol, params: &[(&str, &str)]) -> Session {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let who = Identity::new("alice", vec![], AuthMethod::StaticToken);
        let s = Session::new(SessionId(1), protocol, "t", peer, who);
        for (name, value) in params {
            s.set_server_param(name, value);
        }
        s
    }

    fn rule(j: &Judgement) -> Option<&str> {
        match &j.verdict {
            Verdict::Deny { rule, .. } => Some(rule),
            _ => None,
        }
    }

    #[test]
    fn mysql_sessions_are_read_in_their_sql_mode() {
        let g = guard();
        let hidden = Sql("select 'a\\' ; delete from victims; -- '");
        let plain = session(Protocol::MySql, &[("sql_mode", "STRICT_TRANS_TABLES")]);
        assert_eq!(g.judge(&plain, &hidden).verdict, Verdict::Allow);
        let nbe = session(Protocol::MySql, &[("sql_mode", "NO_BACKSLASH_ESCAPES")]);
        assert_eq!(rule(&g.judge(&nbe, &hidden)), Some("no-deletes"));
        // MariaDB executable comments are read.
        assert_eq!(
            rule(&g.judge(&plain, &Sql("/*M!100100 delete from victims */"))),
            Some("no-deletes")
        );
        // KILL: only the session's own connection.
        let own = session(Protocol::MySql, &[("connection_id", "42")]);
        assert_eq!(g.judge(&own, &Sql("kill 42")).verdict, Verdict::Allow);
        assert_eq!(
            rule(&g.judge(&own, &Sql("kill 43"))),
            Some(crate::rules::OWN_BACKEND_RULE)
        );
        // ...or a connection of another session of the same identity (issue 19).
        let mut mine = session(Protocol::MySql, &[("connection_id", "42")]);
        mine.own_connections = Some(portcullis_core::OwnConnections::new(|id| id == 43));
        assert_eq!(
            g.judge(&mine, &Sql("kill query 43")).verdict,
            Verdict::Allow
        );
        assert_eq!(
            rule(&g.judge(&mine, &Sql("kill 44"))),
            Some(crate::rules::OWN_BACKEND_RULE)
        );
        // A non-UTF-8 character set: only ASCII statements.
        let sjis = session(Protocol::MySql, &[("character_set_client", "sjis")]);
        assert_eq!(g.judge(&sjis, &Sql("select 1")).verdict, Verdict::Allow);
        assert_eq!(
            rule(&g.judge(&sjis, &Sql("select '\u{8868}'"))),
            Some("character_set_client")
        );
    }

    #[test]
    fn postgres_sessions_follow_standard_conforming_strings() {
        let g = guard();
        let hidden = Sql("select '\\''; delete from victims; --'");
        let off = session(
            Protocol::Postgres,
            &[("standard_conforming_strings", "off")],
        );
        assert_eq!(
            rule(&g.judge(&off, &hidden)),
            Some("standard_conforming_strings")
        );
        let on = session(Protocol::Postgres, &[("standard_conforming_strings", "on")]);
        // With the setting on, the whole text after SELECT is one string.
        assert_eq!(g.judge(&on, &hidden).verdict, Verdict::Allow);
        let latin = session(Protocol::Postgres, &[("client_encoding", "LATIN1")]);
        assert_eq!(
            rule(&g.judge(&latin, &Sql("select 'é'"))),
            Some("client_encoding")
        );
        assert_eq!(g.judge(&latin, &Sql("select 'e'")).verdict, Verdict::Allow);
    }
}
