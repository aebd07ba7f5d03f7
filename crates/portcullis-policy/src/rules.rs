//! Rules, and the policy that judges a command's statements with them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_core::{Identity, Verdict, wildcard};

use crate::classify::{Class, Classified, Classifier, Unparsed};
use crate::normalize::cache_key;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Refuse the command (`ERROR 42501 blocked by rule "…"`).
    Deny,
    /// Hold the command until a person approves it.
    Approve,
    /// Let it through and stop matching: an exception to the rules below.
    Allow,
}

impl Action {
    /// The action's name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Approve => "approve",
            Action::Allow => "allow",
        }
    }
}

/// Whether a rule acts or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The rule acts, and matching stops.
    #[default]
    Enforce,
    /// The would-be verdict is recorded (audit trail), nothing is enforced, and matching goes
    /// on — to trial a rule.
    Detect,
}

/// What to do with a statement the parser cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnparsed {
    /// Refuse it (the default: fail closed).
    #[default]
    Deny,
    /// Let it through; the database will most likely reject it too.
    Allow,
}

/// One `[[policy.rules]]` entry. Every criterion given must match (an empty list matches
/// anything); a statement matches when one of its classes or kinds is in `statements`, one of
/// its tables matches a glob in `tables`, one of its functions is in `functions`, the
/// identity is in one of `groups`, and (with `without_where`) it updates or deletes without
/// `WHERE`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rule {
    /// The rule's name, shown to the client and in the audit trail.
    pub name: String,
    /// Classes (`read`, `write`, `ddl`, `admin`) and kinds (`select`, `delete`, `drop`, …).
    pub statements: Vec<String>,
    /// Table globs (`billing.*`, `*.cards`, `customers`). An unqualified table in a statement
    /// matches a qualified glob by its name alone (its schema depends on the `search_path`).
    pub tables: Vec<String>,
    /// Function names; a bare name matches any schema, spelled any way the parser accepts.
    pub functions: Vec<String>,
    /// HTTP path globs (`/v1/indices/*`, `/admin/**`): `*` within a segment, `**` any
    /// number of segments. A rule with paths matches HTTP requests only.
    pub paths: Vec<String>,
    /// The identity's groups the rule applies to (empty: everyone).
    pub groups: Vec<String>,
    /// Only `UPDATE`/`DELETE` without `WHERE`.
    pub without_where: bool,
    /// What a match does.
    pub action: Action,
    /// For `approve`: groups whose members may approve.
    pub approvers: Vec<String>,
    /// For `approve`: how many different approvers must approve.
    pub min_approvals: u32,
    /// Enforce or only detect.
    pub mode: Mode,
    /// The message for the client (a default says what the rule matched).
    pub message: Option<String>,
}

/// Kinds a rule's `statements` may name, besides the four classes and parse-node kinds
/// (`alter_system_stmt`, …).
pub const KINDS: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "truncate",
    "copy",
    "copy_from",
    "copy_to",
    "copy_program",
    "copy_file",
    "create",
    "alter",
    "drop",
    "grant",
    "explain",
    "explain_analyze",
    "prepare",
    "execute",
    "do",
    "call",
    "set",
    "lock",
    "cursor",
    "fetch",
    "show",
    "transaction",
    "discard",
    "listen",
    "deallocate",
    "refresh",
    "notify",
    "function_call",
    "signal_other_backend",
    "dynamic",
    // HTTP methods (the request's kind; `delete` above is DELETE too).
    "get",
    "head",
    "options",
    "post",
    "put",
    "patch",
];

impl Rule {
    /// A rule named `name` doing `action`, matching everything until criteria are added.
    pub fn new(name: impl Into<String>, action: Action) -> Self {
        Rule {
            name: name.into(),
            statements: Vec::new(),
            tables: Vec::new(),
            functions: Vec::new(),
            paths: Vec::new(),
            groups: Vec::new(),
            without_where: false,
            action,
            approvers: Vec::new(),
            min_approvals: 1,
            mode: Mode::Enforce,
            message: None,
        }
    }

    /// Matching these classes and kinds.
    pub fn statements<S: Into<String>>(mut self, s: impl IntoIterator<Item = S>) -> Self {
        self.statements = s.into_iter().map(Into::into).collect();
        self
    }

    /// Matching these table globs.
    pub fn tables<S: Into<String>>(mut self, s: impl IntoIterator<Item = S>) -> Self {
        self.tables = s.into_iter().map(Into::into).collect();
        self
    }

    /// Matching calls of these functions.
    pub fn functions<S: Into<String>>(mut self, s: impl IntoIterator<Item = S>) -> Self {
        self.functions = s.into_iter().map(Into::into).collect();
        self
    }

    /// Matching HTTP requests whose path matches one of these globs.
    pub fn paths<S: Into<String>>(mut self, s: impl IntoIterator<Item = S>) -> Self {
        self.paths = s.into_iter().map(Into::into).collect();
        self
    }

    /// Applying to these groups only.
    pub fn groups<S: Into<String>>(mut self, s: impl IntoIterator<Item = S>) -> Self {
        self.groups = s.into_iter().map(Into::into).collect();
        self
    }

    /// Only statements that update or delete without `WHERE`.
    pub fn without_where(mut self, yes: bool) -> Self {
        self.without_where = yes;
        self
    }

    /// Approvers and quorum, for [`Action::Approve`].
    pub fn approvers<S: Into<String>>(
        mut self,
        groups: impl IntoIterator<Item = S>,
        min_approvals: u32,
    ) -> Self {
        self.approvers = groups.into_iter().map(Into::into).collect();
        self.min_approvals = min_approvals;
        self
    }

    /// Detect only.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The client's message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// What is wrong with the rule, in words for `portcullis check` (empty when nothing).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push("a rule needs a name".to_owned());
        }
        for s in &self.statements {
            let known = matches!(s.as_str(), "read" | "write" | "ddl" | "admin")
                || KINDS.contains(&s.as_str())
                || s.ends_with("_stmt");
            if !known {
                out.push(format!(
                    "unknown statement class or kind \"{s}\" (classes: read, write, ddl, admin; kinds: {})",
                    KINDS.join(", ")
                ));
            }
        }
        for p in &self.paths {
            if !p.starts_with('/') {
                out.push(format!("path glob \"{p}\" must start with /"));
            }
        }
        for list in [&self.tables, &self.functions, &self.groups, &self.approvers] {
            if list.iter().any(|s| s.trim().is_empty()) {
                out.push("an empty name in a list".to_owned());
            }
        }
        match self.action {
            Action::Approve => {
                if self.approvers.is_empty() {
                    out.push("action = \"approve\" needs `approvers` (groups)".to_owned());
                }
                if self.min_approvals == 0 {
                    out.push("min_approvals must be at least 1".to_owned());
                }
            }
            _ => {
                if !self.approvers.is_empty() {
                    out.push(format!(
                        "`approvers` only applies to action = \"approve\", not \"{}\"",
                        self.action.as_str()
                    ));
                }
            }
        }
        if self.action == Action::Allow && self.mode == Mode::Detect {
            out.push("mode = \"detect\" with action = \"allow\" would record nothing".to_owned());
        }
        out
    }

    fn matches(&self, identity: &Identity, s: &Classified) -> bool {
        if !self.groups.is_empty() && !identity.in_any_group(&self.groups) {
            return false;
        }
        if self.without_where && !s.without_where {
            return false;
        }
        if !self.statements.is_empty()
            && !self
                .statements
                .iter()
                .any(|want| statement_matches(want, s))
        {
            return false;
        }
        // Names are matched as the server may resolve them. A deny or approve rule matches
        // broadly — any table or function the statement may reach under that name, whatever
        // the schema or the search_path; an allow rule (an exception) only where it is sure,
        // and only when every table the statement touches is one it names.
        let broad = self.action != Action::Allow;
        if !self.tables.is_empty() {
            let named = |t: &String| self.tables.iter().any(|g| table_matches(g, t, broad));
            let hit = if broad {
                s.tables.iter().any(named)
            } else {
                !s.tables.is_empty() && s.tables.iter().all(named)
            };
            if !hit {
                return false;
            }
        }
        if !self.functions.is_empty()
            && !s.functions.iter().any(|f| {
                self.functions
                    .iter()
                    .any(|want| function_matches(want, f, broad))
            })
        {
            return false;
        }
        if !self.paths.is_empty()
            && !s
                .path
                .as_deref()
                .is_some_and(|p| self.paths.iter().any(|g| crate::http::path_matches(g, p)))
        {
            return false;
        }
        true
    }

    fn verdict(&self, s: &Classified) -> Verdict {
        match self.action {
            Action::Allow => Verdict::Allow,
            Action::Deny => Verdict::deny(
                self.name.clone(),
                self.message
                    .clone()
                    .unwrap_or_else(|| format!("{} is not allowed here", describe(self, s))),
            ),
            Action::Approve => Verdict::approve(
                self.name.clone(),
                self.approvers.clone(),
                self.min_approvals,
            ),
        }
    }
}

/// What `rule` refuses in `s`, as a person would say it: the kind the rule names (`DROP`,
/// `COPY FROM`, `calling pg_read_file`), then why the statement is that, when it says more
/// (`DELETE (trigger t on public.t_log runs public.f_wipe: …)`).
fn describe(rule: &Rule, s: &Classified) -> String {
    let shown = |k: &&String| !k.starts_with("kill:");
    let kind = s
        .kinds
        .iter()
        .filter(shown)
        .find(|k| rule.statements.iter().any(|w| w == *k))
        .or_else(|| {
            (!rule.functions.is_empty())
                .then(|| s.kinds.iter().find(|k| k.starts_with("function:")))
                .flatten()
        })
        .or_else(|| {
            s.kinds
                .iter()
                .filter(shown)
                .find(|k| !matches!(k.as_str(), "select" | "explain"))
        })
        .or_else(|| s.kinds.iter().find(shown));
    let what = match kind {
        Some(k) => match k.strip_prefix("function:") {
            Some(f) => format!("calling {f}"),
            None => k.to_uppercase().replace('_', " "),
        },
        None => "this statement".to_owned(),
    };
    let reason = s.reason.trim().to_lowercase();
    // Said already: the reason starts with the kind (`DROP TABLE` for DROP) or names the
    // function called.
    let key = what
        .strip_prefix("calling ")
        .unwrap_or(&what)
        .to_lowercase();
    let said = reason.is_empty()
        || reason == "reads only"
        || reason.starts_with(&key)
        || (what.starts_with("calling ") && reason.contains(&key));
    if !said {
        format!("{what} ({})", s.reason.trim())
    } else {
        what
    }
}

fn statement_matches(want: &str, s: &Classified) -> bool {
    let class = match want {
        "read" => Some(Class::Read),
        "write" => Some(Class::Write),
        "ddl" => Some(Class::Ddl),
        "admin" => Some(Class::Admin),
        _ => None,
    };
    match class {
        Some(c) => s.classes.contains(&c),
        None if want == "copy" => s.kinds.iter().any(|k| k.starts_with("copy")),
        None => s.kinds.contains(want),
    }
}

/// `name` as `(schema, name)`: a database qualifier is dropped (PostgreSQL refuses
/// references to another database), and so are identifier quotes.
fn split_name(name: &str) -> (Option<&str>, &str) {
    let mut parts = name.rsplit('.').map(|p| p.trim_matches('"'));
    let last = parts.next().unwrap_or_default();
    (parts.next(), last)
}

/// `s` in ASCII lower case, borrowed when it already is (rules and unquoted names usually
/// are: the judgement of a cached statement allocates nothing).
fn lower(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// `glob` (`*` any run, `?` one character) against a table name. Broadly (deny and approve
/// rules): the names match ignoring case, and the schemas too when both name one — an
/// unqualified name on either side may resolve to any schema through the search_path, and
/// `app.public.t` is `public.t`. Narrowly (allow rules): the whole names match, schema
/// included, and an unqualified glob matches only unqualified names.
fn table_matches(glob: &str, table: &str, broad: bool) -> bool {
    let (gs, gn) = split_name(glob);
    let (ts, tn) = split_name(table);
    if broad {
        return wildcard(&lower(gn), &lower(tn))
            && match (gs, ts) {
                (Some(gs), Some(ts)) => wildcard(&lower(gs), &lower(ts)),
                _ => true,
            };
    }
    wildcard(gn, tn)
        && match (gs, ts) {
            (Some(gs), Some(ts)) => wildcard(gs, ts),
            (None, None) => true,
            _ => false,
        }
}

/// A function a rule names against one a statement calls, as [`table_matches`] (no
/// wildcards): broadly, `public.f` matches a call of `f` (resolved through the search_path)
/// and `f` matches `any_schema.f`.
fn function_matches(want: &str, called: &str, broad: bool) -> bool {
    let (ws, wn) = split_name(want);
    let (cs, cn) = split_name(called);
    if broad {
        return wn.eq_ignore_ascii_case(cn)
            && match (ws, cs) {
                (Some(ws), Some(cs)) => ws.eq_ignore_ascii_case(cs),
                _ => true,
            };
    }
    wn == cn && (ws.is_none() || ws == cs)
}

/// A rule's configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule \"{rule}\": {problem}")]
pub struct PolicyError {
    /// The rule's name.
    pub rule: String,
    /// What is wrong.
    pub problem: String,
}

/// What the policy decided for one command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Judgement {
    /// The enforced verdict: the strictest over the command's statements.
    pub verdict: Verdict,
    /// Verdicts of `detect` rules that matched, not enforced.
    pub detected: Vec<Verdict>,
    /// A statement is too deep or too long to read safely: the command is refused as such
    /// (PostgreSQL `54001`), whatever the verdict.
    pub too_complex: Option<String>,
}

/// Which SQL a statement is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL (PostgreSQL's own parser).
    #[default]
    Postgres,
    /// MySQL / MariaDB, read in this `sql_mode` (`sqlparser`'s MySQL dialect).
    MySql(crate::mysql::MySqlMode),
    /// An HTTP request, `METHOD /path?query` ([`crate::classify_http`]).
    Http,
}

/// Most classifications kept; the cache starts over when full.
const CACHE_ENTRIES: usize = 8192;

type Classification = Arc<Result<Vec<Classified>, Unparsed>>;

/// Rules plus the classifier and its cache: judges the statements of a command for an
/// identity. Cheap to share (`Arc` inside); one per configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rules: Vec<Rule>,
    on_unparsed: OnUnparsed,
    classifier: Classifier,
    cache: Mutex<HashMap<String, Classification>>,
    /// Some rule names tables (so the relations a view reads matter).
    names_tables: bool,
}

/// The built-in rule ahead of the configured ones: `pg_terminate_backend` and
/// `pg_cancel_backend` only for the caller's own backend, since identities sharing an
/// upstream role could otherwise end each other's sessions.
pub const OWN_BACKEND_RULE: &str = "own-backend-only";

/// The built-in verdict for code the gateway cannot see (kind `dynamic`: `DO`, `CALL`,
/// defining functions, procedures, operators, casts, aggregates, triggers, rules) when no
/// enforcing rule matched it: denied.
pub const DYNAMIC_SQL_RULE: &str = "dynamic-sql";

impl Policy {
    /// A policy with `rules` in order, the built-in [`OWN_BACKEND_RULE`] first, the default
    /// classifier, and `on_unparsed = deny`.
    pub fn new(rules: Vec<Rule>) -> Result<Self, PolicyError> {
        Policy::with_options(rules, OnUnparsed::Deny, Classifier::default(), true)
    }

    /// A policy with every option: `default_rules = false` leaves out the built-in rule.
    pub fn with_options(
        rules: Vec<Rule>,
        on_unparsed: OnUnparsed,
        classifier: Classifier,
        default_rules: bool,
    ) -> Result<Self, PolicyError> {
        for rule in &rules {
            if let Some(problem) = rule.problems().into_iter().next() {
                return Err(PolicyError {
                    rule: rule.name.clone(),
                    problem,
                });
            }
        }
        let mut all = Vec::with_capacity(rules.len() + 1);
        if default_rules {
            all.push(
                Rule::new(OWN_BACKEND_RULE, Action::Deny)
                    .statements(["signal_other_backend"])
                    .message(
                        "a session may only signal its own identity's sessions: PostgreSQL pg_terminate_backend / pg_cancel_backend only of this session's backend (pg_backend_pid()), MySQL KILL only of a connection of one of your sessions through this gateway",
                    ),
            );
        }
        all.extend(rules);
        Ok(Policy {
            inner: Arc::new(Inner {
                names_tables: all.iter().any(|r| !r.tables.is_empty()),
                rules: all,
                on_unparsed,
                classifier,
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether the classifier takes calls of `name` (bare) as `admin`.
    pub fn dangerous_function(&self, name: &str) -> bool {
        self.inner.classifier.is_dangerous(name)
    }

    /// Whether some rule names tables.
    pub fn names_tables(&self) -> bool {
        self.inner.names_tables
    }

    /// The rules, the built-in one included.
    pub fn rules(&self) -> &[Rule] {
        &self.inner.rules
    }

    /// Classify a PL/pgSQL function's definition ([`crate::Classifier::classify_plpgsql`]),
    /// through the cache.
    pub fn classify_plpgsql(&self, definition: &str) -> Classification {
        let key = format!("\u{3}plpgsql:{definition}");
        if let Some(hit) = self.lock_cache().get(&key) {
            return hit.clone();
        }
        let classified = Arc::new(self.inner.classifier.classify_plpgsql(definition));
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, classified.clone());
        classified
    }

    /// Classify PostgreSQL `sql`, through the cache when the text has a [`cache_key`].
    pub fn classify(&self, sql: &str) -> Classification {
        self.classify_in(Dialect::Postgres, sql)
    }

    /// Classify `sql` written in `dialect`, through the cache when possible.
    pub fn classify_in(&self, dialect: Dialect, sql: &str) -> Classification {
        let fresh = || match dialect {
            Dialect::Postgres => self.inner.classifier.classify(sql),
            Dialect::MySql(mode) => crate::mysql::classify_mysql(sql, mode),
            Dialect::Http => crate::http::classify_http(sql),
        };
        let key = match dialect {
            Dialect::Postgres => cache_key(sql),
            Dialect::Http => Some(format!("\u{2}http:{sql}")),
            // MySQL reads `#`, backticks, `"`, `--` and comments its own way: only plain texts
            // share the PostgreSQL normaliser's key, prefixed by the mode.
            Dialect::MySql(mode) => {
                let plain = !sql.contains(['#', '`', '"', '\\'])
                    && !sql.contains("/*")
                    && !sql.contains("--");
                plain.then(|| cache_key(sql)).flatten().map(|k| {
                    format!(
                        "\u{1}mysql{}{}:{k}",
                        u8::from(mode.ansi_quotes),
                        u8::from(mode.no_backslash_escapes)
                    )
                })
            }
        };
        let Some(key) = key else {
            return Arc::new(fresh());
        };
        if let Some(hit) = self.lock_cache().get(&key) {
            return hit.clone();
        }
        let classified = Arc::new(fresh());
        // A classification that names a literal (MySQL `KILL 42`) is not shared.
        let literal = classified.as_ref().as_ref().is_ok_and(|list| {
            list.iter()
                .any(|s| s.kinds.iter().any(|k| k.starts_with("kill:")))
        });
        if literal {
            return classified;
        }
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, classified.clone());
        classified
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Classification>> {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Judge statements (SQL texts) run by `identity`: each is classified, the rules are
    /// matched in order, the strictest verdict over all statements wins.
    pub fn judge<'a>(
        &self,
        identity: &Identity,
        statements: impl IntoIterator<Item = &'a str>,
    ) -> Judgement {
        let mut judgement = Judgement::default();
        for sql in statements {
            match &*self.classify(sql) {
                Ok(classified) => {
                    for s in classified {
                        self.judge_one(identity, s, &mut judgement);
                    }
                }
                Err(e) => raise(&mut judgement.verdict, self.judge_unparsed(e).verdict),
            }
        }
        judgement
    }

    /// The judgement for text the parser could not read (`on_unparsed`).
    pub fn judge_unparsed(&self, error: &Unparsed) -> Judgement {
        let mut judgement = Judgement::default();
        if error.too_complex {
            judgement.too_complex = Some(error.message.clone());
            judgement.verdict = Verdict::deny("too-complex", error.to_string());
        } else if self.inner.on_unparsed == OnUnparsed::Deny {
            judgement.verdict = Verdict::deny("on_unparsed", error.to_string());
        }
        judgement
    }

    /// Judge an already classified statement.
    pub fn judge_classified(&self, identity: &Identity, s: &Classified) -> Judgement {
        let mut judgement = Judgement::default();
        self.judge_one(identity, s, &mut judgement);
        judgement
    }

    fn judge_one(&self, identity: &Identity, s: &Classified, judgement: &mut Judgement) {
        for rule in &self.inner.rules {
            if !rule.matches(identity, s) {
                continue;
            }
            let verdict = rule.verdict(s);
            match rule.mode {
                Mode::Detect => judgement.detected.push(verdict),
                Mode::Enforce => {
                    raise(&mut judgement.verdict, verdict);
                    return;
                }
            }
        }
        // Code whose statements the gateway cannot see (a DO block, a procedure, a function
        // or operator being defined) takes the strictest verdict unless a rule above
        // explicitly let it through.
        if s.has_kind("dynamic") {
            raise(
                &mut judgement.verdict,
                Verdict::deny(
                    DYNAMIC_SQL_RULE,
                    format!(
                        "{} runs or defines code whose statements the gateway cannot see; a rule must allow it explicitly (for example statements = [\"dynamic\"], action = \"allow\", for the groups that may)",
                        s.reason
                    ),
                ),
            );
        }
    }
}

/// Keep the stricter of two verdicts (the first of equals).
fn raise(current: &mut Verdict, new: Verdict) {
    if new.strictness() > current.strictness() {
        *current = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AuthMethod;

    fn who(groups: &[&str]) -> Identity {
        Identity::new(
            "alice",
            groups.iter().map(|g| (*g).to_owned()).collect(),
            AuthMethod::StaticToken,
        )
    }

    include!("example_rules.rs");

    fn interface_rules() -> Policy {
        Policy::new(example_rules()).unwrap()
    }

    fn rule_of(v: &Verdict) -> Option<&str> {
        match v {
            Verdict::Deny { rule, .. } | Verdict::Approve { rule, .. } => Some(rule),
            _ => None,
        }
    }

    #[test]
    fn the_interface_example_rules() {
        let p = interface_rules();
        let anyone = who(&[]);
        let j = p.judge(&anyone, ["drop table t"]);
        assert_eq!(rule_of(&j.verdict), Some("no-drop"));
        let j = p.judge(&anyone, ["TRUNCATE t"]);
        assert_eq!(rule_of(&j.verdict), Some("no-drop"));
        let j = p.judge(&anyone, ["delete from t"]);
        assert!(
            matches!(&j.verdict, Verdict::Approve { rule, approvers, min_approvals: 1 }
            if rule == "unbounded-writes" && approvers == &["dba".to_owned()])
        );
        assert_eq!(
            p.judge(&anyone, ["delete from t where id = 1"]).verdict,
            Verdict::Allow
        );
        // Analysts are read-only.
        let analyst = who(&["analysts"]);
        assert_eq!(
            p.judge(&analyst, ["select * from t"]).verdict,
            Verdict::Allow
        );
        let j = p.judge(&analyst, ["insert into t values (1)"]);
        assert_eq!(rule_of(&j.verdict), Some("analysts-read-only"));
        let j = p.judge(
            &analyst,
            ["with x as (delete from t where a = 1 returning *) select 1"],
        );
        assert_eq!(rule_of(&j.verdict), Some("analysts-read-only"));
        // The dba exception ends matching before the deny below it.
        let dba = who(&["dba"]);
        assert_eq!(
            p.judge(&dba, ["select pg_read_file('/etc/hostname')"])
                .verdict,
            Verdict::Allow
        );
        let j = p.judge(
            &anyone,
            ["select \"pg_catalog\".\"pg_read_file\"('/etc/hostname')"],
        );
        assert_eq!(rule_of(&j.verdict), Some("no-file-access"));
        let j = p.judge(&anyone, [r#"select U&"\0070g_read_file"('x')"#]);
        assert_eq!(rule_of(&j.verdict), Some("no-file-access"));
        // Detect: recorded, not enforced, matching goes on.
        let j = p.judge(
            &anyone,
            ["update billing.invoices set paid = true where id = 3"],
        );
        assert_eq!(j.verdict, Verdict::Allow);
        assert_eq!(j.detected.len(), 1);
        assert_eq!(rule_of(&j.detected[0]), Some("payments-approval"));
        // Unqualified tables match a qualified glob by name: the schema depends on the
        // search_path, which the gateway does not know (fail closed).
        let j = p.judge(&anyone, ["update invoices set paid = true where id = 3"]);
        assert_eq!(j.detected.len(), 1);
        let j = p.judge(
            &anyone,
            ["update sales.invoices set paid = true where id = 3"],
        );
        assert_eq!(j.detected.len(), 0);
        // The strictest statement of several wins.
        let j = p.judge(&anyone, ["select 1; delete from t; drop table u"]);
        assert_eq!(rule_of(&j.verdict), Some("no-drop"));
        // Unparsable: denied by default.
        let j = p.judge(&anyone, ["selec 1"]);
        assert_eq!(rule_of(&j.verdict), Some("on_unparsed"));
    }

    /// Issue 17, class 4: names match as the server may resolve them.
    #[test]
    fn deny_rules_match_qualified_quoted_and_unqualified_names() {
        let p = Policy::new(vec![
            Rule::new("reports-ok", Action::Allow)
                .tables(["public.reports"])
                .statements(["delete"]),
            Rule::new("protect", Action::Deny).tables(["protected"]),
            Rule::new("secret-fn", Action::Deny).functions(["public.f_secret"]),
            Rule::new("no-deletes", Action::Deny).statements(["delete"]),
        ])
        .unwrap();
        let anyone = who(&[]);
        for sql in [
            "select * from protected",
            "select * from public.protected",
            "select * from app.public.protected",
            "select * from \"public\".\"protected\"",
            "select * from other.protected",
            "select * from PROTECTED",
        ] {
            assert_eq!(
                rule_of(&p.judge(&anyone, [sql]).verdict),
                Some("protect"),
                "{sql}"
            );
        }
        for sql in [
            "select f_secret()",
            "select public.f_secret()",
            "select F_SECRET()",
        ] {
            assert_eq!(
                rule_of(&p.judge(&anyone, [sql]).verdict),
                Some("secret-fn"),
                "{sql}"
            );
        }
        assert_eq!(
            p.judge(&anyone, ["select other.f_secret()"]).verdict,
            Verdict::Allow
        );
        // The allow rule is an exception only where it is sure: the qualified table, and
        // every table the statement touches.
        assert_eq!(
            p.judge(&anyone, ["delete from public.reports where id = 1"])
                .verdict,
            Verdict::Allow
        );
        for sql in [
            "delete from reports where id = 1",
            "delete from public.reports where id in (select id from public.secrets)",
        ] {
            assert_eq!(
                rule_of(&p.judge(&anyone, [sql]).verdict),
                Some("no-deletes"),
                "{sql}"
            );
        }
    }

    #[test]
    fn own_backend_only_by_default() {
        let p = Policy::new(Vec::new()).unwrap();
        let anyone = who(&[]);
        assert_eq!(
            p.judge(&anyone, ["select pg_cancel_backend(pg_backend_pid())"])
                .verdict,
            Verdict::Allow
        );
        for sql in [
            "select pg_terminate_backend(4242)",
            "select pg_catalog.pg_cancel_backend(pid) from pg_stat_activity",
            "select pg_terminate_backend(pg_backend_pid() + 1)",
        ] {
            let j = p.judge(&anyone, [sql]);
            assert_eq!(rule_of(&j.verdict), Some(OWN_BACKEND_RULE), "{sql}");
        }
        let p = Policy::with_options(Vec::new(), OnUnparsed::Allow, Classifier::default(), false)
            .unwrap();
        assert_eq!(
            p.judge(&anyone, ["select pg_terminate_backend(1)"]).verdict,
            Verdict::Allow
        );
        assert_eq!(p.judge(&anyone, ["selec 1"]).verdict, Verdict::Allow);
    }

    #[test]
    fn rule_problems_are_reported() {
        let bad = Rule::new("x", Action::Approve).statements(["delet"]);
        let problems = bad.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("unknown statement class or kind \"delet\""))
        );
        assert!(problems.iter().any(|p| p.contains("needs `approvers`")));
        let err = Policy::new(vec![bad]).unwrap_err();
        assert_eq!(err.rule, "x");
        assert!(
            Rule::new("y", Action::Deny)
                .approvers(["dba"], 1)
                .problems()[0]
                .contains("only applies")
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("billing.*", "billing.invoices"));
        assert!(wildcard("*.cards", "pay.cards"));
        assert!(wildcard("a?c*", "abcdef"));
        assert!(!wildcard("billing.*", "billingx"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("a*b", "acbx"));
        assert!(wildcard("a*b*c", "axxbyyc"));
    }

    #[test]
    fn cached_and_uncached_classifications_agree() {
        let p = Policy::new(Vec::new()).unwrap();
        for sql in ["select * from t where a = 1", "select * from t where a = 2"] {
            let cached = p.classify(sql);
            let fresh = Classifier::default().classify(sql);
            let classes = |r: &Result<Vec<Classified>, Unparsed>| {
                r.as_ref()
                    .map(|v| {
                        v.iter()
                            .map(|s| (s.class, s.kinds.clone()))
                            .collect::<Vec<_>>()
                    })
                    .ok()
            };
            assert_eq!(classes(&cached), classes(&fresh));
        }
        assert_eq!(p.lock_cache().len(), 1);
    }
}
