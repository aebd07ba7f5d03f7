//! The classifier: PostgreSQL's parser, and a walk over the whole parse tree.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

/// How much a statement can do, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Reads data or session state only.
    Read,
    /// Changes rows.
    Write,
    /// Changes the schema.
    Ddl,
    /// Anything else: runs code the text does not show, touches files or other backends,
    /// changes roles or settings, or is not understood.
    Admin,
}

impl Class {
    /// The class's name in rules: `read`, `write`, `ddl`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Ddl => "ddl",
            Class::Admin => "admin",
        }
    }
}

/// What one statement of a query string does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The strictest class of anything in the statement.
    pub class: Class,
    /// Every class of anything in the statement (a statement belongs to each class of each
    /// statement nested in it).
    pub classes: BTreeSet<Class>,
    /// The kinds of operation in it (`select`, `insert`, `update`, `delete`, `merge`,
    /// `truncate`, `drop`, `create`, `alter`, `copy_from`, `copy_to`, `copy_program`,
    /// `copy_file`, `explain`, `prepare`, `execute`, `do`, `call`, `set`, `grant`, ...).
    pub kinds: BTreeSet<String>,
    /// Relations named (`schema.table` when qualified), as the parser resolved the
    /// identifiers (folded to lower case unless quoted).
    pub tables: BTreeSet<String>,
    /// Functions called (`schema.name` when qualified).
    pub functions: BTreeSet<String>,
    /// Operators used (`=`, `~~~`; the name alone), which may be bound to user-defined
    /// functions.
    pub operators: BTreeSet<String>,
    /// Names that may be calls of functions, read from code the parser cannot read (a
    /// PL/pgSQL body's `name(`): followed through the catalog when a function of that name
    /// exists, ignored otherwise.
    pub maybe_calls: BTreeSet<String>,
    /// An `UPDATE` or `DELETE` anywhere in the statement has no `WHERE`.
    pub without_where: bool,
    /// Why the class is what it is, for the strictest part (`function pg_read_file`,
    /// `DO block`, ...).
    pub reason: String,
    /// For `PREPARE name AS …`: the name (the statement's kinds and classes are those of
    /// what it prepares, plus `prepare`).
    pub prepares: Option<String>,
    /// For `EXECUTE name`: the name (classified `admin`, since the text does not show what
    /// runs; a caller that saw the `PREPARE` can judge that instead).
    pub executes_prepared: Option<String>,
    /// The statement's text, as sliced from the query string.
    pub text: String,
    /// For an HTTP request: its path, decoded (what a rule's `paths` match).
    pub path: Option<String>,
}

impl Classified {
    /// A statement that only reads, so far: the start of a walk over `text`'s tree.
    pub(crate) fn reading(text: String) -> Self {
        Classified {
            class: Class::Read,
            classes: BTreeSet::new(),
            kinds: BTreeSet::new(),
            tables: BTreeSet::new(),
            functions: BTreeSet::new(),
            operators: BTreeSet::new(),
            maybe_calls: BTreeSet::new(),
            without_where: false,
            reason: "reads only".into(),
            prepares: None,
            executes_prepared: None,
            text,
            path: None,
        }
    }

    /// At least `class`, for `reason` (kept when it is the strictest so far).
    pub(crate) fn raise(&mut self, class: Class, reason: impl Into<String>) {
        self.classes.insert(class);
        if class > self.class {
            self.class = class;
            self.reason = reason.into();
        }
    }

    /// An operation of `kind`, of `class`.
    pub(crate) fn kind(&mut self, kind: &str, class: Class, reason: &str) {
        self.kinds.insert(kind.to_owned());
        self.raise(class, reason);
    }

    /// The walk is over: the strictest class is among the classes.
    pub(crate) fn finish(mut self) -> Self {
        self.classes.insert(self.class);
        self
    }

    /// Take in what `other` (a statement this one runs: a function body's, EXECUTE
    /// IMMEDIATE's or PREPARE's argument) does: its classes (with its reason), kinds, tables,
    /// calls, operators and unbounded writes.
    pub(crate) fn absorb(&mut self, other: &Classified) {
        for class in &other.classes {
            self.raise(*class, other.reason.clone());
        }
        self.kinds.extend(other.kinds.iter().cloned());
        self.tables.extend(other.tables.iter().cloned());
        self.functions.extend(other.functions.iter().cloned());
        self.operators.extend(other.operators.iter().cloned());
        self.without_where |= other.without_where;
    }

    /// Whether the statement contains an operation of `kind`.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.kinds.contains(kind)
    }
}

/// A query string the parser could not read: never classified by guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the statement could not be parsed: {message}")]
pub struct Unparsed {
    /// The parser's message.
    pub message: String,
    /// The statement is too deep or too long to be read safely (PostgreSQL `54001`): refused
    /// whatever `on_unparsed` says.
    pub too_complex: bool,
}

impl Unparsed {
    /// A parser's error; one that says the statement nests too deeply is [`too_complex`].
    ///
    /// [`too_complex`]: Unparsed::too_complex
    pub fn new(message: impl Into<String>) -> Self {
        let message = message.into();
        let too_complex = [
            "recursion limit",
            "failed to decode Protobuf message",
            "memory exhausted",
            "stack depth limit exceeded",
        ]
        .iter()
        .any(|m| message.contains(m));
        if too_complex {
            // The parsers' own words name internals (a protobuf path, bison's stack).
            return Unparsed::too_complex(
                "the statement nests more deeply than the gateway reads (about 50 levels of subqueries, parentheses with operators, or chained operators such as + or ||); split it or simplify it",
            );
        }
        Unparsed {
            message,
            too_complex,
        }
    }

    /// A statement refused as too deep or too long to read safely.
    pub fn too_complex(message: impl Into<String>) -> Self {
        Unparsed {
            message: message.into(),
            too_complex: true,
        }
    }
}

/// Functions classified `admin` by [`Classifier::default`]: server file access, large
/// objects that read or write server files, other backends, settings and configuration,
/// remote databases, and functions that run SQL held in a string.
pub const DANGEROUS_FUNCTIONS: &[&str] = &[
    // server files
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir",
    "pg_ls_replslotdir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "lo_import",
    "lo_export",
    // other backends, the server
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_log_backend_memory_contexts",
    // settings (e.g. standard_conforming_strings, which changes how SQL is read)
    "set_config",
    // remote databases and SQL in strings
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_fetch",
    "dblink_send_query",
    "dblink_connect",
    "dblink_connect_u",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
];

/// Functions with side effects, classified `write` (kind `function:<name>`) even inside a
/// SELECT: large objects, sequences, advisory locks, notifications. (`set_config` and the
/// remote-database functions are in [`DANGEROUS_FUNCTIONS`].)
pub const SIDE_EFFECT_FUNCTIONS: &[&str] = &[
    "lo_unlink",
    "lo_put",
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "lo_truncate",
    "lo_truncate64",
    "lowrite",
    "lo_open",
    "setval",
    "nextval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
];

/// Whether `v` (part of a parse tree) refers to a column: a condition that refers to none
/// is the same for every row (`WHERE true`, `WHERE 1 = 1`), so it bounds nothing.
fn mentions_column(v: &Value) -> bool {
    match v {
        Value::Object(map) => map
            .iter()
            .any(|(k, inner)| k == "ColumnRef" || mentions_column(inner)),
        Value::Array(items) => items.iter().any(mentions_column),
        _ => false,
    }
}

/// Classifies SQL with PostgreSQL's own parser.
#[derive(Debug, Clone)]
pub struct Classifier {
    dangerous: HashSet<String>,
}

impl Default for Classifier {
    /// With [`DANGEROUS_FUNCTIONS`].
    fn default() -> Self {
        Classifier::with_dangerous_functions(DANGEROUS_FUNCTIONS.iter().copied())
    }
}

impl Classifier {
    /// A classifier that treats calls of `functions` (bare names; matched whatever the
    /// schema, so a same-named wrapper in another schema counts too) as `admin`.
    pub fn with_dangerous_functions<'a>(functions: impl IntoIterator<Item = &'a str>) -> Self {
        Classifier {
            dangerous: functions.into_iter().map(str::to_owned).collect(),
        }
    }

    /// Whether calls of `name` (bare) are classified `admin`.
    pub fn is_dangerous(&self, name: &str) -> bool {
        self.dangerous.contains(name)
    }

    /// Classify every statement of `sql` (a query string may hold several, separated by
    /// `;`). An empty string gives no statements.
    pub fn classify(&self, sql: &str) -> Result<Vec<Classified>, Unparsed> {
        if sql.len() <= crate::stack::INLINE_PARSE {
            return self.classify_here(sql);
        }
        let this = self.clone();
        crate::stack::parse_safely(sql, move |sql| this.classify_here(sql))
    }

    /// Classify what a PL/pgSQL function runs, from its whole definition (`CREATE FUNCTION …
    /// LANGUAGE plpgsql AS $$ … $$`, as `pg_get_functiondef` prints it), with PostgreSQL's
    /// own PL/pgSQL parser: every SQL statement and expression in it (`PERFORM`, `IF`
    /// conditions, assignments, `FOR … IN SELECT`, cursor queries, `RETURN QUERY`) is
    /// classified as SQL, and each `EXECUTE` of a string (dynamic SQL the gateway cannot see)
    /// is one statement of kind `dynamic`, class `admin`. An error when the definition or
    /// one of its parts cannot be read.
    pub fn classify_plpgsql(&self, definition: &str) -> Result<Vec<Classified>, Unparsed> {
        let this = self.clone();
        crate::stack::parse_safely(definition, move |definition| {
            this.classify_plpgsql_here(definition)
        })
    }

    fn classify_plpgsql_here(&self, definition: &str) -> Result<Vec<Classified>, Unparsed> {
        let tree = pg_query::parse_plpgsql(definition).map_err(|e| Unparsed::new(e.to_string()))?;
        let mut queries = Vec::new();
        let mut dynamic = 0usize;
        plpgsql_parts(&tree, &mut queries, &mut dynamic);
        let mut out = Vec::new();
        for query in queries {
            let query = query.trim();
            // A statement, an expression (`x > 1`, read as `SELECT x > 1`), or an
            // assignment (`x := expr`, `x.f[1] = expr`).
            let assigned = query
                .split_once(":=")
                .map(|(_, expr)| expr)
                .or_else(|| query.split_once('=').map(|(_, expr)| expr));
            let read = self
                .classify_here(query)
                .or_else(|e| {
                    self.classify_here(&format!("SELECT {query}"))
                        .map_err(|_| e)
                })
                .or_else(|e| match assigned {
                    Some(expr) => self.classify_here(&format!("SELECT {expr}")).map_err(|_| e),
                    None => Err(e),
                })?;
            out.extend(read);
        }
        for _ in 0..dynamic {
            let mut run = Classified::reading("EXECUTE".into());
            run.kind(
                "dynamic",
                Class::Admin,
                "a PL/pgSQL EXECUTE runs SQL held in a string, which the gateway cannot see",
            );
            out.push(run.finish());
        }
        Ok(out)
    }

    /// [`Classifier::classify`] on this thread (`sql` is short enough for any stack).
    fn classify_here(&self, sql: &str) -> Result<Vec<Classified>, Unparsed> {
        let parsed = pg_query::parse(sql).map_err(|e| Unparsed::new(e.to_string()))?;
        let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
        for raw in &parsed.protobuf.stmts {
            let text = slice(sql, raw.stmt_location, raw.stmt_len);
            let tree = serde_json::to_value(&raw.stmt)
                .map_err(|e| Unparsed::new(format!("parse tree not readable: {e}")))?;
            let typed = raw
                .stmt
                .as_ref()
                .and_then(|s| s.node.as_ref())
                .and_then(crate::statements::statement_type_of);
            let mut walk = Walk {
                classifier: self,
                found: Classified::reading(text.trim().to_owned()),
            };
            walk.top(&tree, typed.is_some());
            out.push(walk.found.finish());
        }
        Ok(out)
    }
}

/// The SQL a PL/pgSQL parse tree (libpg_query's JSON) holds: every `PLpgSQL_expr`'s query
/// into `queries`; every dynamic statement (`EXECUTE`, `FOR … IN EXECUTE`, `OPEN … FOR
/// EXECUTE`, `RETURN QUERY EXECUTE`) counted in `dynamic`.
fn plpgsql_parts(tree: &serde_json::Value, queries: &mut Vec<String>, dynamic: &mut usize) {
    match tree {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key.starts_with("PLpgSQL_stmt_dyn") || key == "dynquery" {
                    *dynamic += 1;
                }
                if key == "PLpgSQL_expr"
                    && let Some(query) = value.get("query").and_then(|q| q.as_str())
                {
                    queries.push(query.to_owned());
                }
                plpgsql_parts(value, queries, dynamic);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                plpgsql_parts(item, queries, dynamic);
            }
        }
        _ => {}
    }
}

/// The statement's text: `stmt_len` 0 means "to the end".
fn slice(sql: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0).min(sql.len());
    let end = match usize::try_from(len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(n) => start.saturating_add(n).min(sql.len()),
    };
    sql.get(start..end).unwrap_or(sql)
}

struct Walk<'a> {
    classifier: &'a Classifier,
    found: Classified,
}

impl std::ops::Deref for Walk<'_> {
    type Target = Classified;
    fn deref(&self) -> &Classified {
        &self.found
    }
}

impl std::ops::DerefMut for Walk<'_> {
    fn deref_mut(&mut self) -> &mut Classified {
        &mut self.found
    }
}

impl Walk<'_> {
    /// The statement's own node (`{"node": {"SelectStmt": {...}}}`).
    fn top(&mut self, tree: &Value, is_statement: bool) {
        let node = tree.get("node").and_then(Value::as_object);
        let Some((name, inner)) = node.and_then(|n| n.iter().next()) else {
            return;
        };
        let named = || inner.get("name").and_then(Value::as_str).map(str::to_owned);
        match name.as_str() {
            "PrepareStmt" => self.prepares = named(),
            "ExecuteStmt" => self.executes_prepared = named(),
            _ => {}
        }
        if !is_statement {
            self.kind(
                &snake(name),
                Class::Admin,
                &format!("{name} is not a statement the classifier knows"),
            );
        }
        self.value(tree);
        // Writing pg_settings is set_config: it changes settings, some of which change how
        // SQL is read.
        if self
            .tables
            .iter()
            .any(|t| t == "pg_settings" || t.ends_with(".pg_settings"))
            && ["update", "insert", "delete", "merge"]
                .iter()
                .any(|k| self.has_kind(k))
        {
            self.kind("set", Class::Admin, "writing pg_settings changes settings");
        }
    }

    /// What every statement of type `t` is.
    fn statement_type(&mut self, t: &crate::statements::StatementType) {
        let reason = match t.reason {
            "administration" => format!("{} is administration", t.node),
            "changes the schema" => format!("{} changes the schema", t.node),
            other => other.to_owned(),
        };
        if !t.kind.is_empty() {
            self.kinds.insert(t.kind.to_owned());
        }
        self.raise(t.class, reason);
        if t.dynamic {
            self.kinds.insert("dynamic".into());
        }
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                // Typed fields hold some nodes without their type's name (an UPDATE's
                // `relation`, a CALL's `funccall`): recognise them by their shape.
                if map.contains_key("relname") {
                    self.node("RangeVar", v);
                } else if map.contains_key("funcname") && map.contains_key("funcformat") {
                    self.node("FuncCall", v);
                }
                for (key, inner) in map {
                    if key.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                        self.node(key, inner);
                    }
                    self.value(inner);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| self.value(i)),
            _ => {}
        }
    }

    /// One parse node, by its type name; its children are walked by the caller.
    fn node(&mut self, name: &str, n: &Value) {
        let flag = |key: &str| n.get(key).and_then(Value::as_bool).unwrap_or(false);
        let has = |key: &str| n.get(key).is_some_and(|v| !v.is_null());
        if let Some(t) = crate::statements::statement_type(name) {
            self.statement_type(&t);
        }
        match name {
            "SelectStmt" => {
                if has("into_clause") {
                    self.kind("create", Class::Ddl, "SELECT INTO creates a table");
                }
                if n.get("locking_clause")
                    .and_then(Value::as_array)
                    .is_some_and(|l| !l.is_empty())
                {
                    self.kind(
                        "lock",
                        Class::Write,
                        "SELECT ... FOR UPDATE/SHARE locks rows",
                    );
                }
            }
            "InsertStmt" => {
                let conflict = n.get("on_conflict_clause");
                if conflict
                    .and_then(|c| c.get("action"))
                    .and_then(Value::as_i64)
                    == Some(pg_query::protobuf::OnConflictAction::OnconflictUpdate as i64)
                {
                    self.kind("update", Class::Write, "INSERT ... ON CONFLICT DO UPDATE");
                    // Every conflicting row is updated unless the clause's WHERE bounds it.
                    if !conflict
                        .and_then(|c| c.get("where_clause"))
                        .is_some_and(mentions_column)
                    {
                        self.without_where = true;
                    }
                }
            }
            // Every row is touched unless the WHERE refers to a column.
            "UpdateStmt" | "DeleteStmt" if !n.get("where_clause").is_some_and(mentions_column) => {
                self.without_where = true;
            }
            "AlterTableCmd" => {
                let subtype = n.get("subtype").and_then(Value::as_i64);
                use pg_query::protobuf::AlterTableType as T;
                if [T::AtDropColumn, T::AtDropConstraint, T::AtDropExpression]
                    .iter()
                    .any(|t| subtype == Some(*t as i64))
                {
                    self.kind("drop", Class::Ddl, "ALTER TABLE ... DROP");
                }
            }
            "MergeWhenClause" => {
                let command = n.get("command_type").and_then(Value::as_i64);
                if command == Some(pg_query::protobuf::CmdType::CmdDelete as i64) {
                    self.kind("delete", Class::Write, "MERGE ... THEN DELETE");
                } else if command == Some(pg_query::protobuf::CmdType::CmdUpdate as i64) {
                    self.kind("update", Class::Write, "MERGE ... THEN UPDATE");
                } else if command == Some(pg_query::protobuf::CmdType::CmdInsert as i64) {
                    self.kind("insert", Class::Write, "MERGE ... THEN INSERT");
                }
            }
            "CopyStmt" => {
                if flag("is_program") {
                    self.kind(
                        "copy_program",
                        Class::Admin,
                        "COPY ... PROGRAM runs a shell command",
                    );
                } else if n
                    .get("filename")
                    .and_then(Value::as_str)
                    .is_some_and(|f| !f.is_empty())
                {
                    self.kind("copy_file", Class::Admin, "COPY with a server file");
                }
                if flag("is_from") {
                    self.kind("copy_from", Class::Write, "COPY FROM");
                } else {
                    self.kind("copy_to", Class::Read, "COPY TO");
                }
            }
            "ExplainStmt" => {
                // Plain EXPLAIN does not run its statement; the statement is classified
                // anyway (fail closed: EXPLAIN ANALYZE runs it).
                let analyze = n
                    .get("options")
                    .and_then(Value::as_array)
                    .is_some_and(|opts| {
                        opts.iter().any(|o| {
                            o.pointer("/node/DefElem/defname").and_then(Value::as_str)
                                == Some("analyze")
                        })
                    });
                self.kind(
                    if analyze {
                        "explain_analyze"
                    } else {
                        "explain"
                    },
                    Class::Read,
                    "EXPLAIN",
                );
            }
            "VariableSetStmt" => {
                let setting = n.get("name").and_then(Value::as_str).unwrap_or_default();
                // Settings that change how later SQL is read or who runs it.
                if READING_SETTINGS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(setting))
                    || setting.is_empty()
                {
                    let what = if setting.is_empty() {
                        "RESET ALL"
                    } else {
                        setting
                    };
                    self.raise(
                        Class::Admin,
                        format!("SET {what} changes how SQL is read or who runs it"),
                    );
                }
            }
            "RangeVar" => {
                let rel = n.get("relname").and_then(Value::as_str).unwrap_or_default();
                let schema = n
                    .get("schemaname")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !rel.is_empty() {
                    self.tables.insert(if schema.is_empty() {
                        rel.to_owned()
                    } else {
                        format!("{schema}.{rel}")
                    });
                }
            }
            "AExpr" => {
                if let Some(op) = func_name_at(n, "name").last() {
                    self.operators.insert((*op).to_owned());
                }
            }
            "FuncCall" => {
                let parts = func_name(n);
                let full = parts.join(".");
                // set_config of a constant, harmless setting is the SET it is; of a setting
                // that changes how SQL is read or who runs it, or of a name the text does not
                // show, it stays `admin`.
                let harmless_setting = parts.last() == Some(&"set_config")
                    && first_string_arg(n).is_some_and(|name| {
                        !READING_SETTINGS
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(name))
                    });
                if harmless_setting {
                    self.kinds.insert("set".into());
                } else if let Some(bare) = parts.last()
                    && self.classifier.dangerous.contains(*bare)
                {
                    self.kinds.insert(format!("function:{bare}"));
                    self.raise(Class::Admin, format!("function {bare}"));
                }
                if let Some(bare) = parts.last()
                    && SIDE_EFFECT_FUNCTIONS.contains(bare)
                {
                    self.kinds.insert(format!("function:{bare}"));
                    self.raise(Class::Write, format!("function {bare} has side effects"));
                }
                if matches!(
                    parts.last().copied(),
                    Some("pg_terminate_backend" | "pg_cancel_backend")
                ) && !signals_own_backend(n)
                {
                    self.kinds.insert("signal_other_backend".into());
                }
                if !full.is_empty() {
                    self.functions.insert(full);
                }
            }
            _ => {}
        }
    }
}

/// Settings that change how later SQL is read or who runs it: a `SET` or `set_config` of
/// these is `admin`. (`search_path` is not among them: deny rules match names whatever the
/// schema they resolve to.)
const READING_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "client_encoding",
    "role",
    "session_authorization",
    "backslash_quote",
];

/// A call's first argument, when it is a string constant.
fn first_string_arg(call: &Value) -> Option<&str> {
    let arg = call.get("args")?.as_array()?.first()?;
    let konst = arg.pointer("/node/AConst")?;
    ["/sval/sval", "/val/Sval/sval", "/val/sval/sval"]
        .iter()
        .find_map(|p| konst.pointer(p).and_then(Value::as_str))
}

/// The parts of a `FuncCall` node's name (`["pg_catalog", "pg_read_file"]`).
fn func_name(call: &Value) -> Vec<&str> {
    func_name_at(call, "funcname")
}

/// The parts of a qualified name held in `n[key]` (a list of `String` nodes).
fn func_name_at<'a>(n: &'a Value, key: &str) -> Vec<&'a str> {
    n.get(key)
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|p| p.pointer("/node/String/sval").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a `pg_terminate_backend` / `pg_cancel_backend` call's only argument is
/// `pg_backend_pid()`: the caller's own backend.
fn signals_own_backend(call: &Value) -> bool {
    let Some(args) = call.get("args").and_then(Value::as_array) else {
        return false;
    };
    let [arg] = args.as_slice() else {
        return false;
    };
    let Some(inner) = arg.pointer("/node/FuncCall") else {
        return false;
    };
    let names = func_name(inner);
    let no_args = inner
        .get("args")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    no_args
        && matches!(
            names.as_slice(),
            ["pg_backend_pid"] | ["pg_catalog", "pg_backend_pid"]
        )
}

/// `DeleteStmt` → `delete_stmt`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
