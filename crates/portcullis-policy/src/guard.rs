//! `GuardLayer`: judges every command unit before any of it goes further in.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use portcullis_core::{
    CatalogLookup, CommandKind, CommandView, Decision, DecisionLog, Error, Protocol, Refusal,
    RefuseInPlace, Refusing, Request, Response, SchemaCatalog, Session, Verdict,
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
    /// guard is disabled). What the session's function catalog does not know yet is judged
    /// as unknown (the layer itself looks it up first).
    pub fn judge(&self, session: &Session, command: &impl CommandView) -> Judgement {
        match &self.policy {
            Some(policy) => judge(policy, session, command, &self.prepared, None),
            None => Judgement::default(),
        }
    }
}

/// Judge `command` in `session` with `policy` (the guard's decision, without enforcing it).
/// With `missing`, functions the session's catalog has no answer for are collected there
/// (and the judgement is to be made again once they are looked up); without, they are
/// judged as unknown.
fn judge(
    policy: &Policy,
    session: &Session,
    command: &impl CommandView,
    prepared: &Prepared,
    mut missing: Option<&mut CatalogLookup>,
) -> Judgement {
    let catalog = session.catalog.as_deref();
    match command.kind() {
        CommandKind::Statements => {}
        CommandKind::FunctionCall => {
            let call = match (catalog, command.function_oid()) {
                (Some(catalog), Some(oid)) => match catalog.function(oid) {
                    None if missing.is_some() => {
                        if let Some(m) = missing.as_deref_mut() {
                            m.oids.push(oid);
                        }
                        return Judgement::default();
                    }
                    Some(Some(facts)) => resolved_call(policy, &facts),
                    None | Some(None) => None,
                },
                _ => None,
            };
            let call = call.unwrap_or_else(|| {
                // Named by OID only, and the OID is not resolved: not known to be
                // read-only, so `admin`.
                let mut call = Classified::reading(String::new());
                call.kind(
                    "function_call",
                    Class::Admin,
                    "a FunctionCall message names its function by an OID the catalog does not resolve",
                );
                call.finish()
            });
            // What its body does counts too (a user-defined function), and what the
            // database runs for it.
            let call =
                with_implicit(policy, &call, catalog, missing.as_deref_mut()).unwrap_or(call);
            if missing.as_ref().is_some_and(|m| !m.is_empty()) {
                return Judgement::default();
            }
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
    // A statement of class `ddl` or more may create, replace or drop functions.
    let mut changes_catalog = false;
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
            let s = seen.as_ref().unwrap_or(s);
            let expanded = with_implicit(policy, s, catalog, missing.as_deref_mut());
            let s = expanded.as_ref().unwrap_or(s);
            changes_catalog |= s.class >= Class::Ddl;
            let one = policy.judge_classified(&session.identity, s);
            raise(&mut judgement, one, statement.executes);
            if s.prepares.is_some() {
                prepares.push(s.clone());
            }
        }
    }
    let judged = missing.is_none_or(|m| m.is_empty());
    if judged && !matches!(judgement.verdict, Verdict::Deny { .. }) {
        prepared.remember(prepares);
        if may_change_reading || changes_catalog {
            session.settings_may_change();
        }
        if changes_catalog && let Some(catalog) = catalog {
            // It may create, replace or drop functions: the next command is judged once
            // this one is answered (above), against a fresh catalog.
            catalog.forget();
        }
    }
    judgement
}

/// A `FunctionCall` of a function the catalog names: judged as a call of it by name, so the
/// dangerous and side-effect tables and `functions` rules apply; a user-defined volatile
/// function is at least `write`.
fn resolved_call(policy: &Policy, facts: &portcullis_core::FunctionFacts) -> Option<Classified> {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let sql = format!("SELECT {}.{}()", quote(&facts.schema), quote(&facts.name));
    let classified = policy.classify_in(Dialect::Postgres, &sql);
    let mut call = classified.as_ref().as_ref().ok()?.first()?.clone();
    call.kinds.insert("function_call".into());
    call.text = format!("FunctionCall {}.{}", facts.schema, facts.name);
    if facts.user_defined && facts.volatile {
        call.raise(
            Class::Write,
            format!(
                "function {}.{} is user-defined and volatile: it may change data",
                facts.schema, facts.name
            ),
        );
    }
    Some(call.finish())
}

/// Most rounds of following what the database runs for a statement (function bodies,
/// rules, triggers and what they call in turn).
const MAX_IMPLICIT_ROUNDS: usize = 6;

/// `s` with everything the database runs for it that its text does not show, followed
/// until nothing new is found: the bodies of the functions it calls ([`with_catalog`]), the
/// relations its views read, the rules, triggers, constraints, defaults, index expressions
/// and row-security policies of the relations it names ([`with_relations`]), and the
/// database-wide code — user-defined casts and domain constraints for every statement,
/// event triggers for DDL ([`with_database_code`]). What that code names is followed in
/// turn. Without a catalog, `None` (`s` as it is).
fn with_implicit(
    policy: &Policy,
    s: &Classified,
    catalog: Option<&dyn SchemaCatalog>,
    mut missing: Option<&mut CatalogLookup>,
) -> Option<Classified> {
    catalog?;
    let footprint = |c: &Classified| {
        (
            c.class,
            c.classes.len(),
            c.kinds.len(),
            c.tables.len(),
            c.functions.len(),
            c.maybe_calls.len(),
            c.without_where,
        )
    };
    let mut current: Option<Classified> = None;
    for _ in 0..MAX_IMPLICIT_ROUNDS {
        let base = current.as_ref().unwrap_or(s);
        let before = footprint(base);
        let mut next = with_catalog(policy, base, catalog, missing.as_deref_mut());
        if let Some(more) = with_relations(
            policy,
            next.as_ref().unwrap_or(base),
            catalog,
            missing.as_deref_mut(),
        ) {
            next = Some(more);
        }
        if let Some(more) = with_database_code(
            policy,
            next.as_ref().unwrap_or(base),
            catalog,
            missing.as_deref_mut(),
        ) {
            next = Some(more);
        }
        let Some(next) = next else {
            break;
        };
        let done = footprint(&next) == before;
        current = Some(next);
        if done {
            break;
        }
    }
    current
}

/// Fold what implicit code `call` may do into `into`: its function is called (its name
/// joins the calls, so `functions` rules and the next round see it), its body's effects,
/// its support functions; a user-defined volatile one is at least `write`.
fn merge_implicit(policy: &Policy, into: &mut Classified, call: &portcullis_core::ImplicitCall) {
    let f = &call.function;
    let full = format!("{}.{}", f.schema, f.name);
    into.functions.insert(full.clone());
    into.maybe_calls.extend(f.calls.iter().cloned());
    if f.user_defined && f.volatile {
        into.raise(
            Class::Write,
            format!(
                "{} runs {full}, user-defined and volatile: it may change data",
                call.by
            ),
        );
    }
    if let Some(body) = body_effects(policy, f) {
        merge_effects(into, &body, &format!("{} runs {full}", call.by));
    }
}

/// `s` with the database-wide implicit code that fires for it: user-defined casts and
/// domain constraints for any statement, event triggers for one of class `ddl` or more.
fn with_database_code(
    policy: &Policy,
    s: &Classified,
    catalog: Option<&dyn SchemaCatalog>,
    missing: Option<&mut CatalogLookup>,
) -> Option<Classified> {
    let catalog = catalog?;
    let Some(code) = catalog.database_code() else {
        match missing {
            Some(m) => m.database = true,
            None => {
                let mut out = s.clone();
                out.raise(
                    Class::Write,
                    "the database's casts, domains and event triggers could not be looked up in the catalog",
                );
                return Some(out);
            }
        }
        return None;
    };
    let ddl = s.class >= Class::Ddl;
    let fired: Vec<_> = code
        .iter()
        .filter(|c| c.fires(|k| s.has_kind(k), ddl))
        .collect();
    if fired.is_empty() {
        return None;
    }
    let mut out = s.clone();
    for call in fired {
        merge_implicit(policy, &mut out, call);
    }
    Some(out.finish())
}

/// `s` with the relations its views read (recursively, through views and materialized
/// views) added to its tables, so that table rules match what the server reads: a rule on
/// `protected` matches `SELECT * FROM v` when view `v` reads `protected`. A name the cache
/// cannot answer is put in `missing` when given; a name the catalog does not know (a CTE, a
/// table created in the same command) is matched as written. Without a catalog, `s` as it is.
fn with_relations(
    policy: &Policy,
    s: &Classified,
    catalog: Option<&dyn SchemaCatalog>,
    mut missing: Option<&mut CatalogLookup>,
) -> Option<Classified> {
    let catalog = catalog?;
    let mut reached = Vec::new();
    let mut rules = Vec::new();
    let mut implicit = Vec::new();
    let ddl = s.class >= Class::Ddl;
    for name in &s.tables {
        match catalog.relations(name) {
            None => {
                if let Some(m) = missing.as_deref_mut() {
                    m.relations.push(name.clone());
                }
            }
            Some(found) => {
                for r in found.iter() {
                    reached.extend(r.reads.iter().cloned());
                    rules.extend(r.rules.iter().cloned());
                    implicit.extend(
                        r.implicit
                            .iter()
                            .filter(|c| c.fires(|k| s.has_kind(k), ddl))
                            .cloned(),
                    );
                }
            }
        }
    }
    reached.retain(|t| !s.tables.contains(t));
    // A rule fires on its event only: `ON INSERT` for a statement that inserts, and so on.
    let fired: Vec<(String, Classified)> = rules
        .iter()
        .filter_map(|def| rule_action(def).map(|(event, action)| (def, event, action)))
        .filter(|(_, event, _)| s.has_kind(event))
        .map(|(def, _, action)| {
            let effects = match policy.classify_in(Dialect::Postgres, action).as_ref() {
                Ok(list) => {
                    let mut all = Classified::reading(String::new());
                    for c in list {
                        merge_effects(&mut all, c, "it runs");
                    }
                    all.finish()
                }
                Err(_) => scan_body(policy, action),
            };
            (def.split(" AS").next().unwrap_or(def).to_owned(), effects)
        })
        .collect();
    if reached.is_empty() && fired.is_empty() && implicit.is_empty() {
        return None;
    }
    let mut expanded = s.clone();
    expanded.tables.extend(reached);
    for (rule, effects) in &fired {
        merge_effects(&mut expanded, effects, rule);
    }
    for call in &implicit {
        merge_implicit(policy, &mut expanded, call);
    }
    Some(expanded.finish())
}

/// The event (`insert`, `update`, `delete`) and the action of a rule as PostgreSQL prints it
/// (`CREATE RULE r AS ON INSERT TO public.t [WHERE …] DO [ALSO|INSTEAD] action;`); `None`
/// for `DO NOTHING` or a text not of that form.
fn rule_action(def: &str) -> Option<(&'static str, &str)> {
    let upper = def.to_ascii_uppercase();
    let event = ["INSERT", "UPDATE", "DELETE"]
        .into_iter()
        .find(|e| upper.contains(&format!("ON {e} TO ")))?;
    let at = upper.find(" DO ")? + " DO ".len();
    let mut action = def.get(at..)?.trim();
    for word in ["ALSO ", "INSTEAD "] {
        if action.len() >= word.len() && action[..word.len()].eq_ignore_ascii_case(word) {
            action = action[word.len()..].trim();
        }
    }
    let action = action.trim_end_matches(';').trim();
    let action = action
        .strip_prefix('(')
        .and_then(|a| a.strip_suffix(')'))
        .unwrap_or(action)
        .trim();
    if action.is_empty() || action.eq_ignore_ascii_case("NOTHING") {
        return None;
    }
    Some((
        match event {
            "INSERT" => "insert",
            "UPDATE" => "update",
            _ => "delete",
        },
        action,
    ))
}

/// Most catalog lookups for one command (each may find more to look up).
const MAX_LOOKUP_ROUNDS: usize = 8;

/// How deep calls from function bodies into other user-defined functions are followed.
const MAX_BODY_DEPTH: usize = 4;

/// `s` with what the session's catalog says of the functions it calls, when that changes it.
/// A call that may resolve to a user-defined volatile function, or to no function the
/// catalog knows, is at least `write` (the server's own functions are judged by the tables
/// in [`crate::classify`]). A user-defined function's body counts as part of the statement:
/// a SQL body's statements are classified (their kinds, classes, tables and calls, followed
/// into the functions they call), another language's body is read for its words
/// ([`scan_body`]). A name the cache cannot answer is put in `missing` when given, else
/// judged as unknown. Without a catalog, `s` as it is.
fn with_catalog(
    policy: &Policy,
    s: &Classified,
    catalog: Option<&dyn SchemaCatalog>,
    mut missing: Option<&mut CatalogLookup>,
) -> Option<Classified> {
    let catalog = catalog?;
    if s.functions.is_empty() && s.operators.is_empty() && s.maybe_calls.is_empty() {
        return None;
    }
    let mut out: Option<Classified> = None;
    let raise = |out: &mut Option<Classified>, class: Class, why: String| {
        out.get_or_insert_with(|| s.clone()).raise(class, why);
    };
    // (name, depth, certain): a name read from code the parser cannot read may not be a
    // call at all (`IF (`), so one the catalog does not know is not held against it.
    let mut queue: Vec<(String, usize, bool)> = s
        .functions
        .iter()
        .map(|n| (n.clone(), 0, true))
        .chain(s.maybe_calls.iter().map(|n| (n.clone(), 1, false)))
        .collect();
    // An operator is a call of the function behind it: a user-defined operator bound to
    // `pg_read_file` reads files (`CREATE OPERATOR ~~~ (RIGHTARG = text, FUNCTION =
    // pg_read_file)`, then `SELECT ~~~ 'PG_VERSION'`).
    for op in &s.operators {
        let Some(behind) = catalog.operators(op) else {
            match missing.as_deref_mut() {
                Some(m) => m.operators.push(op.clone()),
                None => raise(
                    &mut out,
                    Class::Write,
                    format!("operator {op} could not be looked up in the catalog"),
                ),
            }
            continue;
        };
        for f in behind.iter() {
            let merged = out.get_or_insert_with(|| s.clone());
            let full = format!("{}.{}", f.schema, f.name);
            merged.functions.insert(full.clone());
            if policy.dangerous_function(&f.name) {
                merged.kind(
                    &format!("function:{}", f.name),
                    Class::Admin,
                    &format!("operator {op} calls {}", f.name),
                );
            } else if crate::classify::SIDE_EFFECT_FUNCTIONS.contains(&f.name.as_str()) {
                merged.kind(
                    &format!("function:{}", f.name),
                    Class::Write,
                    &format!("operator {op} calls {}, which has side effects", f.name),
                );
            }
            if f.name == "pg_terminate_backend" || f.name == "pg_cancel_backend" {
                merged.kinds.insert("signal_other_backend".into());
            }
            queue.push((full, 0, true));
        }
    }
    let mut seen = std::collections::HashSet::new();
    while let Some((name, depth, certain)) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let found = match catalog.functions(&name) {
            Some(found) => found,
            None => {
                match missing.as_deref_mut() {
                    Some(m) => m.names.push(name),
                    None => raise(
                        &mut out,
                        Class::Write,
                        format!("function {name} could not be looked up in the catalog"),
                    ),
                }
                continue;
            }
        };
        if found.is_empty() {
            // A call in a body that names no function fails when it runs (a body cannot
            // call a function created by the statement that runs it).
            if depth == 0 {
                raise(
                    &mut out,
                    Class::Write,
                    format!("function {name} is not in the database's catalog"),
                );
            }
            continue;
        }
        if !certain && found.iter().any(|f| f.user_defined) {
            out.get_or_insert_with(|| s.clone())
                .functions
                .insert(name.clone());
        }
        for f in found.iter().filter(|f| f.user_defined) {
            if f.volatile {
                raise(
                    &mut out,
                    Class::Write,
                    format!(
                        "function {name} may resolve to {}.{}, user-defined and volatile: it may change data",
                        f.schema, f.name
                    ),
                );
            }
            // An aggregate runs its support functions.
            if depth < MAX_BODY_DEPTH {
                queue.extend(f.calls.iter().map(|n| (n.clone(), depth + 1, true)));
            }
            let Some(body) = body_effects(policy, f) else {
                continue;
            };
            merge_effects(
                out.get_or_insert_with(|| s.clone()),
                &body,
                &format!("function {}.{}'s body", f.schema, f.name),
            );
            if depth < MAX_BODY_DEPTH {
                queue.extend(body.functions.iter().map(|n| (n.clone(), depth + 1, true)));
                queue.extend(
                    body.maybe_calls
                        .iter()
                        .map(|n| (n.clone(), depth + 1, false)),
                );
            }
        }
    }
    out.map(Classified::finish)
}

/// Fold what `effects` does (a function body, a rule's action) into `into`: its classes
/// (with `why` in the reason), kinds, tables, calls and unbounded writes.
fn merge_effects(into: &mut Classified, effects: &Classified, why: &str) {
    for class in &effects.classes {
        into.raise(*class, format!("{why}: {}", effects.reason));
    }
    into.kinds.extend(effects.kinds.iter().cloned());
    into.tables.extend(effects.tables.iter().cloned());
    into.functions.extend(effects.functions.iter().cloned());
    into.maybe_calls.extend(effects.maybe_calls.iter().cloned());
    into.operators.extend(effects.operators.iter().cloned());
    into.without_where |= effects.without_where;
}

/// What running user-defined function `f` may do, from its body: a SQL body's statements
/// classified together; a PL/pgSQL body's statements and expressions, read with its own
/// parser from the function's definition ([`Policy::classify_plpgsql`]); another
/// language's, or code the parsers cannot read, by its words ([`scan_body`]).
fn body_effects(policy: &Policy, f: &portcullis_core::FunctionFacts) -> Option<Classified> {
    let body = f.body.as_deref()?;
    // A C or internal function's "body" is the name of its symbol, not code.
    if f.language == "c" || f.language == "internal" {
        return None;
    }
    let parsed = match (f.language.as_str(), f.definition.as_deref()) {
        ("sql", _) => policy.classify_in(Dialect::Postgres, body),
        ("plpgsql", Some(definition)) => policy.classify_plpgsql(definition),
        _ => return Some(scan_body(policy, body)),
    };
    let Ok(list) = parsed.as_ref() else {
        // What the parser cannot read is read by its words.
        return Some(scan_body(policy, body));
    };
    let mut all = Classified::reading(String::new());
    for c in list {
        all.absorb(c);
    }
    Some(all.finish())
}

/// Words in a function body that say what it may do, when the body cannot be parsed as SQL
/// (PL/pgSQL and other languages): (word, kind, class). `execute` is dynamic SQL, which the
/// gateway cannot see: kind `dynamic` takes the strictest verdict unless a rule allows it.
/// The words are read anywhere (a comment or a string too): this can only make a function
/// stricter than it is.
const BODY_WORDS: &[(&str, &str, Class)] = &[
    ("drop", "drop", Class::Ddl),
    ("truncate", "truncate", Class::Write),
    ("delete", "delete", Class::Write),
    ("update", "update", Class::Write),
    ("insert", "insert", Class::Write),
    ("merge", "merge", Class::Write),
    ("alter", "alter", Class::Ddl),
    ("create", "create", Class::Ddl),
    ("grant", "grant", Class::Ddl),
    ("revoke", "grant", Class::Ddl),
    ("copy", "copy", Class::Admin),
    ("lock", "lock", Class::Write),
    ("notify", "notify", Class::Write),
    ("call", "call", Class::Admin),
    ("execute", "dynamic", Class::Admin),
];

/// A body read by its words ([`BODY_WORDS`], the dangerous and side-effect functions).
fn scan_body(policy: &Policy, body: &str) -> Classified {
    let mut found = Classified::reading(String::new());
    let words = body
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty());
    found.maybe_calls = called_names(body);
    for word in words {
        let word = word.to_ascii_lowercase();
        if let Some((_, kind, class)) = BODY_WORDS.iter().find(|(w, ..)| *w == word) {
            found.kind(kind, *class, &format!("it says {word}"));
        }
        if policy.dangerous_function(&word) {
            found.kind(
                &format!("function:{word}"),
                Class::Admin,
                &format!("it calls {word}"),
            );
            found.functions.insert(word.clone());
        } else if crate::classify::SIDE_EFFECT_FUNCTIONS.contains(&word.as_str()) {
            found.kind(
                &format!("function:{word}"),
                Class::Write,
                &format!("it calls {word}"),
            );
            found.functions.insert(word);
        }
    }
    found.finish()
}

/// Words that come before `(` in code without being function calls.
const NOT_CALLS: &[&str] = &[
    "if", "elsif", "while", "return", "exists", "in", "and", "or", "not", "values", "select",
    "when", "then", "else", "case", "using", "into", "array", "row", "cast", "from", "where", "on",
    "as", "loop", "perform", "query", "execute", "format", "coalesce", "any", "all",
];

/// The names followed by `(` in `code` (`f(`, `s.f (`), folded to lower case: calls, as far
/// as words tell.
fn called_names(code: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let bytes = code.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.';
    let mut i = 0;
    while i < bytes.len() {
        if !word(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && word(bytes[i]) {
            i += 1;
        }
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let name = code[start..i].trim_matches('.').to_ascii_lowercase();
        if bytes.get(j) == Some(&b'(')
            && !name.is_empty()
            && !name.as_bytes()[0].is_ascii_digit()
            && !NOT_CALLS.contains(&name.as_str())
        {
            out.insert(name);
        }
    }
    out
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
    S: Service<Request<C>, Response = Response<B>, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    C: CommandView + RefuseInPlace + Send + 'static,
    B: 'static,
{
    type Response = Response<B>;
    type Error = Error;
    type Future = Guarding<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<C>) -> Self::Future {
        let Some(policy) = &self.policy else {
            return Guarding::now(Refusing::pass(self.inner.call(req)));
        };
        let mut missing = CatalogLookup::default();
        let judgement = judge(
            policy,
            &req.session,
            &req.command,
            &self.prepared,
            Some(&mut missing),
        );
        let catalog = req.session.catalog.clone();
        let (false, Some(catalog)) = (missing.is_empty(), catalog) else {
            return Guarding::now(enforce(&mut self.inner, req, judgement, self.approvals));
        };
        // The catalog must answer first: the command waits (nothing of it has gone
        // further in, and the protocol server hands in no later command meanwhile), then is
        // judged again with the answers. The service that was made ready goes with it.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let policy = policy.clone();
        let prepared = self.prepared.clone();
        let approvals = self.approvals;
        Guarding::later(Box::pin(async move {
            // Each round's answers may name more to look up (a function body calling
            // another function): a few rounds, then what is still unknown is judged so.
            let mut missing = missing;
            for _ in 0..MAX_LOOKUP_ROUNDS {
                if let Err(e) = catalog.look_up(missing).await {
                    let refusal = Refusal::Blocked {
                        rule: "catalog".into(),
                        message: format!(
                            "the gateway could not look up what the command calls or reads in the database's catalog, so cannot judge it: {e}"
                        ),
                    };
                    return Refusing::refuse(&mut inner, req, refusal).await;
                }
                let mut more = CatalogLookup::default();
                let judgement = judge(
                    &policy,
                    &req.session,
                    &req.command,
                    &prepared,
                    Some(&mut more),
                );
                if more.is_empty() {
                    return enforce(&mut inner, req, judgement, approvals).await;
                }
                missing = more;
            }
            let judgement = judge(&policy, &req.session, &req.command, &prepared, None);
            enforce(&mut inner, req, judgement, approvals).await
        }))
    }
}

/// Apply `judgement` to `req`: record detect-mode findings, refuse, or hand it in (with an
/// approval verdict in its extensions when an approval layer sits inside).
fn enforce<S, C, B>(
    inner: &mut S,
    mut req: Request<C>,
    judgement: Judgement,
    approvals: bool,
) -> Refusing<S::Future>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error>,
    C: CommandView + RefuseInPlace,
{
    // A FunctionCall names its function by OID: the trail says which function that was.
    if let (Some(oid), Some(catalog)) = (req.command.function_oid(), &req.session.catalog)
        && let Some(Some(f)) = catalog.function(oid)
    {
        DecisionLog::record_in(
            &req.extensions,
            &Decision::new("guard", judgement.verdict.clone()).with_detail(format!(
                "FunctionCall of {}.{} (OID {oid})",
                f.schema, f.name
            )),
        );
    }
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
        } if approvals => {
            req.extensions.insert(Verdict::Approve {
                rule,
                approvers,
                min_approvals,
            });
            return Refusing::pass(inner.call(req));
        }
        Verdict::Approve { rule, .. } => Refusal::Blocked {
            message: "the statement needs approval, and this gateway has no approval layer".into(),
            rule,
        },
        _ => return Refusing::pass(inner.call(req)),
    };
    Refusing::refuse(inner, req, refusal)
}

type Later<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Error>> + Send>>;

pin_project! {
    /// The guard's future: the command judged at once, or after a catalog lookup.
    pub struct Guarding<F, B> {
        #[pin]
        now: Option<Refusing<F>>,
        later: Option<Later<B>>,
    }
}

impl<F, B> Guarding<F, B> {
    fn now(f: Refusing<F>) -> Self {
        Guarding {
            now: Some(f),
            later: None,
        }
    }

    fn later(f: Later<B>) -> Self {
        Guarding {
            now: None,
            later: Some(f),
        }
    }
}

impl<F, B> Future for Guarding<F, B>
where
    F: Future<Output = Result<Response<B>, Error>>,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(now) = this.now.as_pin_mut() {
            return now.poll(cx);
        }
        let Some(later) = this.later else {
            return Poll::Ready(Err("the guard's future was polled after completion".into()));
        };
        let out = std::task::ready!(later.as_mut().poll(cx));
        *this.later = None;
        Poll::Ready(out)
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
        // A character set the MySQL protocol server does not read: only ASCII statements.
        let euckr = session(Protocol::MySql, &[("character_set_client", "euckr")]);
        assert_eq!(g.judge(&euckr, &Sql("select 1")).verdict, Verdict::Allow);
        assert_eq!(
            rule(&g.judge(&euckr, &Sql("select '\u{8868}'"))),
            Some("character_set_client")
        );
        // One it reads (multi-byte characters whole): the statement as read.
        let sjis = session(Protocol::MySql, &[("character_set_client", "sjis")]);
        assert_eq!(
            g.judge(&sjis, &Sql("select '\u{8868}'")).verdict,
            Verdict::Allow
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

    /// A function catalog answering from a fixed list, once asked.
    #[derive(Default)]
    struct FakeCatalog {
        db: Vec<(u32, portcullis_core::FunctionFacts)>,
        views: Vec<portcullis_core::RelationFacts>,
        ops: Vec<(String, portcullis_core::FunctionFacts)>,
        code: Vec<portcullis_core::ImplicitCall>,
        asked: std::sync::Mutex<bool>,
    }

    impl SchemaCatalog for FakeCatalog {
        fn functions(
            &self,
            name: &str,
        ) -> Option<std::sync::Arc<[portcullis_core::FunctionFacts]>> {
            if !*self.asked.lock().unwrap() {
                return None;
            }
            let bare = name.rsplit('.').next().unwrap_or(name);
            Some(
                self.db
                    .iter()
                    .filter(|(_, f)| f.name == bare)
                    .map(|(_, f)| f.clone())
                    .collect(),
            )
        }
        fn function(&self, oid: u32) -> Option<Option<portcullis_core::FunctionFacts>> {
            if !*self.asked.lock().unwrap() {
                return None;
            }
            Some(
                self.db
                    .iter()
                    .find(|(o, _)| *o == oid)
                    .map(|(_, f)| f.clone()),
            )
        }
        fn relations(
            &self,
            name: &str,
        ) -> Option<std::sync::Arc<[portcullis_core::RelationFacts]>> {
            if !*self.asked.lock().unwrap() {
                return None;
            }
            let mut parts = name.rsplitn(2, '.');
            let bare = parts.next().unwrap_or(name);
            let schema = parts.next();
            Some(
                self.views
                    .iter()
                    .filter(|r| r.name == bare && schema.is_none_or(|s| r.schema == s))
                    .cloned()
                    .collect(),
            )
        }
        fn operators(&self, op: &str) -> Option<std::sync::Arc<[portcullis_core::FunctionFacts]>> {
            if !*self.asked.lock().unwrap() {
                return None;
            }
            Some(
                self.ops
                    .iter()
                    .filter(|(o, _)| o == op)
                    .map(|(_, f)| f.clone())
                    .collect(),
            )
        }
        fn database_code(&self) -> Option<std::sync::Arc<[portcullis_core::ImplicitCall]>> {
            if !*self.asked.lock().unwrap() {
                return None;
            }
            Some(self.code.clone().into())
        }
        fn look_up(&self, _: CatalogLookup) -> portcullis_core::LookupFuture {
            *self.asked.lock().unwrap() = true;
            Box::pin(std::future::ready(Ok(())))
        }
        fn forget(&self) {
            *self.asked.lock().unwrap() = false;
        }
    }

    /// A PostgreSQL session whose catalog is `catalog`.
    fn asking(catalog: &std::sync::Arc<FakeCatalog>) -> Session {
        let mut s = session(Protocol::Postgres, &[]);
        s.catalog = Some(catalog.clone());
        s
    }

    fn facts(
        schema: &str,
        name: &str,
        user_defined: bool,
        volatile: bool,
    ) -> portcullis_core::FunctionFacts {
        portcullis_core::FunctionFacts {
            schema: schema.into(),
            name: name.into(),
            user_defined,
            volatile,
            language: if user_defined { "sql" } else { "internal" }.into(),
            body: None,
            definition: None,
            calls: Vec::new(),
        }
    }

    struct Call(u32);
    impl CommandView for Call {
        fn kind(&self) -> CommandKind {
            CommandKind::FunctionCall
        }
        fn statements(&self) -> Vec<Statement<'_>> {
            Vec::new()
        }
        fn function_oid(&self) -> Option<u32> {
            Some(self.0)
        }
    }

    #[test]
    fn functions_are_judged_by_what_the_catalog_says() {
        let policy = Policy::new(vec![
            Rule::new("reads-only", Action::Deny).statements(["write", "ddl", "admin"]),
        ])
        .unwrap();
        let catalog = std::sync::Arc::new(FakeCatalog {
            db: vec![
                (16400, facts("public", "f_wipe", true, true)),
                (16401, facts("public", "f_count", true, false)),
                (870, facts("pg_catalog", "lower", false, false)),
                (1480, facts("pg_catalog", "random", false, true)),
                (964, facts("pg_catalog", "lo_unlink", false, true)),
                (2026, facts("pg_catalog", "pg_backend_pid", false, false)),
            ],
            ..FakeCatalog::default()
        });
        let s = asking(&catalog);
        let prepared = Prepared::default();
        // Not asked yet: the names are collected for a lookup.
        let mut missing = CatalogLookup::default();
        judge(
            &policy,
            &s,
            &Sql("select f_wipe(), lower('a')"),
            &prepared,
            Some(&mut missing),
        );
        missing.names.sort();
        assert_eq!(missing.names, ["f_wipe", "lower"]);
        let mut missing = CatalogLookup::default();
        judge(&policy, &s, &Call(964), &prepared, Some(&mut missing));
        assert_eq!(missing.oids, [964]);
        // Looked up: judged.
        drop(catalog.look_up(CatalogLookup::default()));
        let verdict = |c: &dyn Fn() -> Judgement| rule(&c()).map(str::to_owned);
        let sql = |text: &'static str| judge(&policy, &s, &Sql(text), &prepared, None);
        assert_eq!(
            verdict(&|| sql("select f_wipe()")).as_deref(),
            Some("reads-only")
        );
        assert_eq!(
            verdict(&|| sql("select public.f_wipe()")).as_deref(),
            Some("reads-only")
        );
        assert_eq!(
            verdict(&|| sql("select f_nowhere()")).as_deref(),
            Some("reads-only")
        );
        assert_eq!(
            sql("select f_count(), lower('A'), random()").verdict,
            Verdict::Allow
        );
        let call = |oid| judge(&policy, &s, &Call(oid), &prepared, None);
        assert_eq!(rule(&call(964)), Some("reads-only"));
        assert_eq!(rule(&call(16400)), Some("reads-only"));
        assert_eq!(call(2026).verdict, Verdict::Allow);
        assert_eq!(
            rule(&call(1)),
            Some("reads-only"),
            "an unknown OID is admin"
        );
        // Bodies: a stable SQL function reading a table, a PL/pgSQL function running dynamic
        // SQL, a SQL function that drops and calls another that deletes without WHERE.
        let body = |name: &str, language: &str, volatile: bool, body: &str| {
            let mut f = facts("public", name, true, volatile);
            f.language = language.into();
            f.body = Some(body.into());
            f
        };
        let policy = Policy::new(vec![
            Rule::new("no-drop", Action::Deny).statements(["drop"]),
            Rule::new("no-secret", Action::Deny).tables(["secret_t"]),
            Rule::new("no-files", Action::Deny).functions(["pg_read_file"]),
            Rule::new("unbounded", Action::Deny)
                .statements(["delete"])
                .without_where(true),
        ])
        .unwrap();
        let catalog = std::sync::Arc::new(FakeCatalog {
            db: vec![
                (
                    16500,
                    body("f_peek", "sql", false, "select card from secret_t"),
                ),
                (
                    16501,
                    body(
                        "f_exec",
                        "plpgsql",
                        true,
                        "begin execute 'dr' || 'op table t'; end",
                    ),
                ),
                (
                    16502,
                    body(
                        "f_drop",
                        "sql",
                        true,
                        "drop table victims; select f_wipe2()",
                    ),
                ),
                (16503, body("f_wipe2", "sql", true, "delete from victims")),
                (
                    16504,
                    body(
                        "f_file",
                        "plpgsql",
                        false,
                        "begin return pg_read_file('x'); end",
                    ),
                ),
                (
                    16505,
                    body("f_fine", "plpgsql", false, "begin return 1; end"),
                ),
            ],
            ..FakeCatalog::default()
        });
        let s = asking(&catalog);
        drop(catalog.look_up(CatalogLookup::default()));
        let sql = |text: &'static str| judge(&policy, &s, &Sql(text), &prepared, None);
        assert_eq!(rule(&sql("select f_peek()")), Some("no-secret"));
        assert_eq!(
            rule(&sql("select f_exec()")),
            Some(crate::rules::DYNAMIC_SQL_RULE)
        );
        assert_eq!(rule(&sql("select f_drop()")), Some("no-drop"));
        assert_eq!(rule(&sql("select f_wipe2()")), Some("unbounded"));
        assert_eq!(rule(&sql("select f_file()")), Some("no-files"));
        let call = |oid| judge(&policy, &s, &Call(oid), &prepared, None);
        assert_eq!(rule(&call(16504)), Some("no-files"));
        assert_eq!(sql("select f_fine()").verdict, Verdict::Allow);

        // Operators: the function behind a user-defined operator counts as called.
        let catalog = std::sync::Arc::new(FakeCatalog {
            db: vec![
                (2624, facts("pg_catalog", "pg_read_file", false, true)),
                (
                    2096,
                    facts("pg_catalog", "pg_terminate_backend", false, true),
                ),
            ],
            ops: vec![
                (
                    "~~~".into(),
                    facts("pg_catalog", "pg_read_file", false, true),
                ),
                (
                    "@@@".into(),
                    facts("pg_catalog", "pg_terminate_backend", false, true),
                ),
            ],
            ..FakeCatalog::default()
        });
        let s = asking(&catalog);
        let mut missing = CatalogLookup::default();
        judge(
            &policy,
            &s,
            &Sql("select ~~~ 'PG_VERSION'"),
            &prepared,
            Some(&mut missing),
        );
        assert_eq!(missing.operators, ["~~~"]);
        drop(catalog.look_up(CatalogLookup::default()));
        let sql = |text: &'static str| judge(&policy, &s, &Sql(text), &prepared, None);
        assert_eq!(rule(&sql("select ~~~ 'PG_VERSION'")), Some("no-files"));
        assert_eq!(
            rule(&sql("select 1 @@@ 2")),
            Some(crate::rules::OWN_BACKEND_RULE)
        );
        assert_eq!(sql("select 1 = 1").verdict, Verdict::Allow);

        // Views: a table rule matches the tables a view reads.
        let policy = Policy::new(vec![
            Rule::new("protected", Action::Deny).tables(["protected"]),
        ])
        .unwrap();
        let catalog = std::sync::Arc::new(FakeCatalog {
            views: vec![
                portcullis_core::RelationFacts {
                    schema: "public".into(),
                    name: "v".into(),
                    reads: vec!["public.inner_v".into(), "secret.protected".into()],
                    rules: Vec::new(),
                    implicit: Vec::new(),
                },
                portcullis_core::RelationFacts {
                    schema: "public".into(),
                    name: "open".into(),
                    reads: Vec::new(),
                    rules: vec![
                        "CREATE RULE r AS\n    ON INSERT TO public.open DO  DELETE FROM protected;"
                            .into(),
                        "CREATE RULE q AS\n    ON UPDATE TO public.open DO INSTEAD NOTHING;".into(),
                    ],
                    implicit: Vec::new(),
                },
            ],
            ..FakeCatalog::default()
        });
        let s = asking(&catalog);
        let mut missing = CatalogLookup::default();
        judge(
            &policy,
            &s,
            &Sql("select * from v join open using (id)"),
            &prepared,
            Some(&mut missing),
        );
        assert_eq!(missing.relations, ["open", "v"]);
        drop(catalog.look_up(CatalogLookup::default()));
        let sql = |text: &'static str| judge(&policy, &s, &Sql(text), &prepared, None);
        assert_eq!(rule(&sql("select * from v")), Some("protected"));
        assert_eq!(rule(&sql("select * from public.v")), Some("protected"));
        assert_eq!(sql("select * from open").verdict, Verdict::Allow);
        assert_eq!(
            sql("select * from other.v").verdict,
            Verdict::Allow,
            "no view other.v"
        );
        // A rule on `open` deletes from `protected` on every insert (an update does nothing).
        assert_eq!(rule(&sql("insert into open values (1)")), Some("protected"));
        assert_eq!(
            sql("update open set id = 2 where id = 1").verdict,
            Verdict::Allow
        );
        // Without a catalog, a FunctionCall stays admin and functions are read by text.
        let policy = Policy::new(vec![
            Rule::new("reads-only", Action::Deny).statements(["write", "ddl", "admin"]),
        ])
        .unwrap();
        let plain = session(Protocol::Postgres, &[]);
        assert_eq!(
            rule(&judge(&policy, &plain, &Call(2026), &prepared, None)),
            Some("reads-only")
        );
        assert_eq!(
            judge(&policy, &plain, &Sql("select f_wipe()"), &prepared, None).verdict,
            Verdict::Allow
        );
    }

    fn plpgsql(name: &str, returns: &str, body: &str) -> portcullis_core::FunctionFacts {
        portcullis_core::FunctionFacts {
            language: "plpgsql".into(),
            body: Some(body.into()),
            definition: Some(
                format!(
                    "CREATE OR REPLACE FUNCTION public.{name}()\n RETURNS {returns}\n LANGUAGE plpgsql\nAS $function${body}$function$\n"
                )
                .into(),
            ),
            ..facts("public", name, true, true)
        }
    }

    /// Issue 17, class 5: code the database runs without the statement naming it — a
    /// trigger on the table written, a row-security policy on the table read, a cast, an
    /// event trigger, an aggregate's support function, a function a PL/pgSQL body calls —
    /// counts as part of the statement.
    #[test]
    fn implicit_code_counts_as_part_of_the_statement() {
        let policy = Policy::new(vec![
            Rule::new("no-deletes", Action::Deny).statements(["delete"]),
            Rule::new("no-files", Action::Deny).functions(["pg_read_file"]),
            Rule::new("protected", Action::Deny).tables(["protected"]),
        ])
        .unwrap();
        let prepared = Prepared::default();
        let implicit = |on: &[&str], by: &str, function| portcullis_core::ImplicitCall {
            on: on.iter().map(|s| s.to_string()).collect(),
            by: by.into(),
            function,
        };
        let relation = |name: &str, implicit| portcullis_core::RelationFacts {
            schema: "public".into(),
            name: name.into(),
            reads: Vec::new(),
            rules: Vec::new(),
            implicit,
        };
        let wipe = plpgsql(
            "f_wipe",
            "trigger",
            "\nbegin\n  if tg_op = 'INSERT' then\n    perform f_helper(new.id);\n  end if;\n  return new;\nend\n",
        );
        let helper = plpgsql(
            "f_helper",
            "void",
            "\ndeclare n int := (select count(*) from protected);\nbegin\n  delete from victims where id = n;\nend\n",
        );
        let mut aggregate = facts("public", "f_agg", true, false);
        aggregate.language = "internal".into();
        aggregate.calls = vec!["public.f_step".into()];
        let mut step = facts("public", "f_step", true, false);
        step.body = Some("select pg_read_file('PG_VERSION')".into());
        let catalog = std::sync::Arc::new(FakeCatalog {
            db: vec![
                (16_400, wipe.clone()),
                (16_401, helper.clone()),
                (16_402, aggregate),
                (16_403, step),
            ],
            views: vec![
                relation(
                    "t_log",
                    vec![implicit(&["insert"], "trigger t on public.t_log", wipe)],
                ),
                relation(
                    "ruled",
                    vec![implicit(
                        &["select"],
                        "policy p on public.ruled",
                        helper.clone(),
                    )],
                ),
                relation("victims", Vec::new()),
                relation("protected", Vec::new()),
                relation("plain", Vec::new()),
            ],
            ..FakeCatalog::default()
        });
        let s = asking(&catalog);
        let mut missing = CatalogLookup::default();
        judge(
            &policy,
            &s,
            &Sql("insert into t_log values (1)"),
            &prepared,
            Some(&mut missing),
        );
        assert!(missing.database, "{missing:?}");
        assert_eq!(missing.relations, ["t_log"]);
        drop(catalog.look_up(CatalogLookup::default()));
        let sql = |text: &'static str| judge(&policy, &s, &Sql(text), &prepared, None);
        // The trigger calls f_helper (followed through PL/pgSQL), which deletes and reads
        // `protected`: the strictest rule names the table.
        let j = sql("insert into t_log values (1)");
        assert!(
            matches!(rule(&j), Some("no-deletes" | "protected")),
            "{j:?}"
        );
        // Not fired by an UPDATE.
        assert_eq!(
            sql("update t_log set id = 2 where id = 1").verdict,
            Verdict::Allow
        );
        // A row-security policy's function runs for any statement naming the table.
        let j = sql("select * from ruled");
        assert!(
            matches!(rule(&j), Some("no-deletes" | "protected")),
            "{j:?}"
        );
        assert_eq!(rule(&sql("select f_agg(id) from plain")), Some("no-files"));
        assert_eq!(sql("select count(id) from plain").verdict, Verdict::Allow);

        // Database-wide code: a cast for every statement, an event trigger for DDL.
        let mut cast = facts("public", "f_cast", true, false);
        cast.body = Some("select pg_read_file('PG_VERSION')".into());
        let event = plpgsql(
            "f_event",
            "event_trigger",
            "\nbegin\n  delete from victims;\nend\n",
        );
        let catalog = std::sync::Arc::new(FakeCatalog {
            code: vec![implicit(&["ddl"], "event trigger e", event)],
            ..FakeCatalog::default()
        });
        let s = asking(&catalog);
        drop(catalog.look_up(CatalogLookup::default()));
        let sql = |text: &'static str| judge(&policy, &s, &Sql(text), &prepared, None);
        assert_eq!(rule(&sql("create table x (id int)")), Some("no-deletes"));
        assert_eq!(sql("select 1").verdict, Verdict::Allow);
        let catalog = std::sync::Arc::new(FakeCatalog {
            code: vec![implicit(&["any"], "cast from text to t", cast)],
            ..FakeCatalog::default()
        });
        let s = asking(&catalog);
        drop(catalog.look_up(CatalogLookup::default()));
        assert_eq!(
            rule(&judge(
                &policy,
                &s,
                &Sql("select 'x'::text"),
                &prepared,
                None
            )),
            Some("no-files")
        );
    }

    /// A PL/pgSQL definition is read with its own parser: statements, expressions,
    /// assignments and declarations are classified as SQL; `EXECUTE` is dynamic.
    #[test]
    fn plpgsql_bodies_are_read_with_their_parser() {
        let classifier = crate::Classifier::default();
        let definition = "CREATE FUNCTION public.f(t text) RETURNS trigger LANGUAGE plpgsql AS $$
declare
  n int := (select count(*) from counted);
  r record;
begin
  if exists (select 1 from checked where id = new.id) then
    perform f_other(n);
  end if;
  n := f_assigned(n) + 1;
  for r in select * from looped loop
    update updated set x = r.x where id = r.id;
  end loop;
  execute 'drop table ' || t;
  return new;
end $$";
        let list = classifier.classify_plpgsql(definition).unwrap();
        let all = |f: fn(&Classified) -> Vec<String>| -> Vec<String> {
            let mut v: Vec<String> = list.iter().flat_map(f).collect();
            v.sort();
            v.dedup();
            v
        };
        assert_eq!(
            all(|c| c.tables.iter().cloned().collect()),
            ["checked", "counted", "looped", "updated"]
        );
        let functions = all(|c| c.functions.iter().cloned().collect());
        assert!(
            functions.contains(&"f_other".to_string())
                && functions.contains(&"f_assigned".to_string()),
            "{functions:?}"
        );
        let kinds = all(|c| c.kinds.iter().cloned().collect());
        assert!(
            kinds.contains(&"update".to_string()) && kinds.contains(&"dynamic".to_string()),
            "{kinds:?}"
        );
        assert!(list.iter().any(|c| c.class == Class::Admin));
        assert!(
            classifier
                .classify_plpgsql(
                    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ begin retur 1; end $$"
                )
                .is_err()
        );
    }
}
