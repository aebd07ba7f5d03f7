//! MySQL / MariaDB classification with `sqlparser`'s MySQL dialect, producing the same
//! [`Classified`] the PostgreSQL classifier does, so rules apply unchanged.
//!
//! The parser reads the text as the server would under the session's `sql_mode`
//! ([`MySqlMode`]): with `ANSI_QUOTES`, `"…"` is an identifier; with `NO_BACKSLASH_ESCAPES`,
//! a backslash in a string is a plain character. Executable comments run on the server, so
//! they are read as SQL: `/*! … */` and `/*!50000 … */` (the parser does this itself) and
//! MariaDB's `/*M! … */` (rewritten to `/*! … */` first — the parser alone would hide it).
//! What the parser cannot read is an error (then `on_unparsed` decides), never a guess.

use std::borrow::Cow;
use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectName, Statement, Visit, Visitor};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use crate::classify::{Class, Classified, Unparsed};

/// The parts of a MySQL session's `sql_mode` that change how SQL is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MySqlMode {
    /// `ANSI_QUOTES`: `"…"` quotes identifiers, not strings.
    pub ansi_quotes: bool,
    /// `NO_BACKSLASH_ESCAPES`: `\` in a string is an ordinary character.
    pub no_backslash_escapes: bool,
}

impl MySqlMode {
    /// The mode a `sql_mode` value (`'STRICT_TRANS_TABLES,ANSI_QUOTES'`, or `ANSI`, which
    /// includes `ANSI_QUOTES`) gives.
    pub fn from_sql_mode(sql_mode: &str) -> Self {
        let mut mode = MySqlMode::default();
        for flag in sql_mode.split(',').map(str::trim) {
            if flag.eq_ignore_ascii_case("ANSI_QUOTES") || flag.eq_ignore_ascii_case("ANSI") {
                mode.ansi_quotes = true;
            }
            if flag.eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES") {
                mode.no_backslash_escapes = true;
            }
        }
        mode
    }
}

/// Functions classified `admin` in MySQL: server files and user-defined functions that run
/// commands.
pub const MYSQL_DANGEROUS_FUNCTIONS: &[&str] = &["load_file", "sys_exec", "sys_eval"];

/// Classify every statement of `sql` as a MySQL server in `mode` would read it.
pub fn classify_mysql(sql: &str, mode: MySqlMode) -> Result<Vec<Classified>, Unparsed> {
    if sql.len() <= crate::stack::INLINE_PARSE {
        return classify_mysql_here(sql, mode);
    }
    crate::stack::parse_safely(sql, move |sql| classify_mysql_here(sql, mode))
}

/// [`classify_mysql`] on this thread (`sql` is short enough for any stack).
fn classify_mysql_here(sql: &str, mode: MySqlMode) -> Result<Vec<Classified>, Unparsed> {
    let text = rewrite(sql, mode)?;
    if let Some(load) = load_data(&text) {
        return load.map(|c| vec![c]);
    }
    if let Some(prepare) = prepare_from(&text, mode) {
        return prepare.map(|c| vec![c]);
    }
    let statements =
        Parser::parse_sql(&MySqlDialect {}, &text).map_err(|e| Unparsed::new(e.to_string()))?;
    // A change to how SQL is read, followed by more in the same packet: the server reads
    // the rest with the new setting, which this reading did not. Only text whose reading no
    // such setting changes (ASCII, no backslash, no double quote) may follow it.
    if let Some(at) = statements.iter().position(changes_reading)
        && at + 1 < statements.len()
        && (!sql.is_ascii() || sql.contains('\\') || sql.contains('"'))
    {
        return Err(Unparsed::new(
            "a statement that changes how SQL is read (sql_mode, the character set) is followed by more statements in the same query, which the server reads with the new setting: send it alone",
        ));
    }
    let mut out = Vec::with_capacity(statements.len());
    for statement in &statements {
        let mut walk = MyWalk(Classified::reading(statement.to_string()), mode, None);
        let _ = statement.visit(&mut walk);
        if let Some(why) = walk.2 {
            return Err(Unparsed::new(why));
        }
        out.push(walk.0.finish());
    }
    Ok(out)
}

/// Make the text say, in the parser's default MySQL reading, what the server reads in
/// `mode`: MariaDB's `/*M!` becomes `/*!`; with `NO_BACKSLASH_ESCAPES` a backslash in a
/// string is doubled; with `ANSI_QUOTES` `"…"` becomes `` `…` ``.
pub(crate) fn rewrite(sql: &str, mode: MySqlMode) -> Result<Cow<'_, str>, Unparsed> {
    let needs = sql.contains("/*M!")
        || sql.contains("--")
        || (mode.no_backslash_escapes && sql.contains('\\'))
        || (mode.ansi_quotes && sql.contains('"'));
    if !needs {
        return Ok(Cow::Borrowed(sql));
    }
    let unterminated = |what: &str| Unparsed::new(format!("unterminated {what}"));
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\'' | '"' if !(c == '"' && mode.ansi_quotes) => {
                // A string literal.
                out.push(c);
                i += 1;
                loop {
                    let Some(&d) = chars.get(i) else {
                        return Err(unterminated("string"));
                    };
                    if d == '\\' {
                        if mode.no_backslash_escapes {
                            out.push_str("\\\\");
                            i += 1;
                        } else {
                            out.push(d);
                            if let Some(&e) = chars.get(i + 1) {
                                out.push(e);
                            }
                            i += 2;
                        }
                        continue;
                    }
                    out.push(d);
                    i += 1;
                    if d == c {
                        if chars.get(i) == Some(&c) {
                            out.push(c);
                            i += 1;
                            continue;
                        }
                        break;
                    }
                }
            }
            '"' => {
                // ANSI_QUOTES: an identifier.
                out.push('`');
                i += 1;
                loop {
                    let Some(&d) = chars.get(i) else {
                        return Err(unterminated("identifier"));
                    };
                    i += 1;
                    if d == '"' {
                        if chars.get(i) == Some(&'"') {
                            out.push('"');
                            i += 1;
                            continue;
                        }
                        break;
                    }
                    if d == '`' {
                        out.push('`');
                    }
                    out.push(d);
                }
                out.push('`');
            }
            '`' => {
                out.push(c);
                i += 1;
                loop {
                    let Some(&d) = chars.get(i) else {
                        return Err(unterminated("identifier"));
                    };
                    out.push(d);
                    i += 1;
                    if d == '`' {
                        if chars.get(i) == Some(&'`') {
                            out.push('`');
                            i += 1;
                            continue;
                        }
                        break;
                    }
                }
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            // MariaDB starts a `--` comment only before an ASCII space or control character
            // (or the end); the parser also before any Unicode whitespace (U+00A0, U+3000,
            // U+0085), where the server reads two minus signs and goes on.
            '-' if next == Some('-') && chars.get(i + 2).is_none_or(|c| is_comment_space(*c)) => {
                // Written so the parser reads a comment too (it wants whitespace after the
                // dashes, where the server takes any control character or the end).
                out.push_str("-- ");
                i += 2;
                while i < chars.len() && chars[i] != '\n' {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            '-' if next == Some('-') => {
                out.push_str("- ");
                i += 1;
            }
            '/' if next == Some('*') => {
                let executable = chars.get(i + 2) == Some(&'!')
                    || (chars.get(i + 2) == Some(&'M') && chars.get(i + 3) == Some(&'!'));
                if executable {
                    // Its content is SQL: keep the marker (as `/*!`) and go on reading.
                    out.push_str("/*!");
                    i += if chars[i + 2] == 'M' { 4 } else { 3 };
                } else {
                    let Some(end) = (i + 2..chars.len().saturating_sub(1))
                        .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                    else {
                        return Err(unterminated("comment"));
                    };
                    out.extend(&chars[i..end + 2]);
                    i = end + 2;
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// What follows `--` for MariaDB to read a comment: an ASCII space or control character.
fn is_comment_space(c: char) -> bool {
    c == ' ' || c.is_ascii_control()
}

/// Whether a statement changes how the server reads the statements after it (`sql_mode`:
/// backslashes, `"`; the client character set: multi-byte sequences).
fn changes_reading(s: &Statement) -> bool {
    let Statement::Set(set) = s else {
        return false;
    };
    let text = set.to_string().to_ascii_lowercase();
    [
        "sql_mode",
        "names",
        "character set",
        "charset",
        "character_set",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// The walk over one statement: what it found so far.
#[derive(Debug)]
struct MyWalk(
    Classified,
    MySqlMode,
    /// Why the statement cannot be read after all (dynamic SQL the text does not show).
    Option<String>,
);

impl std::ops::Deref for MyWalk {
    type Target = Classified;
    fn deref(&self) -> &Classified {
        &self.0
    }
}

impl std::ops::DerefMut for MyWalk {
    fn deref_mut(&mut self) -> &mut Classified {
        &mut self.0
    }
}

/// `LOAD DATA` / `LOAD XML`, which the parser does not read: recognised from the
/// tokens (as the parser's tokenizer reads them, executable comments included) when it has
/// the shape the server accepts:
///
/// `LOAD {DATA | XML} [LOW_PRIORITY | CONCURRENT] [LOCAL] INFILE 'file' [REPLACE | IGNORE]
/// INTO TABLE name …` — the options after the name (`FIELDS`, `LINES`, `IGNORE n LINES`,
/// `CHARACTER SET`, a column list) only say how to read the file.
///
/// It is an `insert` into `name` (kinds `insert` and `load_data`); without `LOCAL` the
/// server reads a file of its own, which is `admin` (like `COPY … FROM 'file'`). A `SET`
/// clause (expressions run per row), a second statement, or any other shape is not read:
/// `Some(Err)`, and `on_unparsed` decides. `None`: not a `LOAD` statement.
fn load_data(text: &str) -> Option<Result<Classified, Unparsed>> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&MySqlDialect {}, text).tokenize().ok()?;
    let mut words = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .peekable();
    let keyword = |t: Option<&Token>, k: &str| matches!(t, Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    if !keyword(words.next(), "load") {
        return None;
    }
    let unread = |why: &str| Some(Err(Unparsed::new(format!("LOAD: {why}"))));
    let what = match words.next() {
        Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("data") => "LOAD DATA",
        Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("xml") => "LOAD XML",
        _ => return unread("only LOAD DATA and LOAD XML are read"),
    };
    if keyword(words.peek().copied(), "low_priority")
        || keyword(words.peek().copied(), "concurrent")
    {
        words.next();
    }
    let local = keyword(words.peek().copied(), "local");
    if local {
        words.next();
    }
    if !keyword(words.next(), "infile") {
        return unread("INFILE expected");
    }
    if !matches!(
        words.next(),
        Some(Token::SingleQuotedString(_) | Token::DoubleQuotedString(_))
    ) {
        return unread("a file name expected after INFILE");
    }
    if keyword(words.peek().copied(), "replace") || keyword(words.peek().copied(), "ignore") {
        words.next();
    }
    if !keyword(words.next(), "into") || !keyword(words.next(), "table") {
        return unread("INTO TABLE expected");
    }
    let mut name = Vec::new();
    loop {
        match words.next() {
            Some(Token::Word(w)) => name.push(sqlparser::ast::Ident {
                value: w.value.clone(),
                quote_style: w.quote_style,
                span: sqlparser::tokenizer::Span::empty(),
            }),
            _ => return unread("a table name expected after INTO TABLE"),
        }
        if words.peek() == Some(&&Token::Period) {
            words.next();
        } else {
            break;
        }
    }
    let mut previous: Option<&Token> = None;
    while let Some(t) = words.next() {
        match t {
            Token::Word(w)
                if w.quote_style.is_none()
                    && w.value.eq_ignore_ascii_case("set")
                    && !keyword(previous, "character") =>
            {
                return unread("a SET clause runs expressions the classifier does not read");
            }
            Token::SemiColon if words.next().is_some() => {
                return unread("more than one statement");
            }
            _ => {}
        }
        previous = Some(t);
    }
    let mut c = Classified::reading(text.trim().trim_end_matches(';').trim_end().to_owned());
    c.kinds.insert("load_data".to_owned());
    c.tables.insert(name_of(&ObjectName::from(name)));
    if local {
        c.kind("insert", Class::Write, &format!("{what} LOCAL INFILE"));
    } else {
        c.kind("insert", Class::Write, &format!("{what} INFILE"));
        c.raise(
            Class::Admin,
            format!("{what} INFILE reads a file on the database server"),
        );
    }
    Some(Ok(c.finish()))
}

/// MySQL's `PREPARE name FROM …` (which the parser does not read): from a string literal,
/// the statement it prepares, classified (kinds, classes, tables) with kind `prepare` and
/// [`Classified::prepares`], so an `EXECUTE name` later is judged as what it runs; from
/// anything else (`@var`, an expression), SQL the gateway cannot see: kind `dynamic`, class
/// `admin` (refused unless a rule allows it), and an `EXECUTE name` later likewise. Only as
/// the query's one statement: `None` when the text is not a `PREPARE … FROM`.
fn prepare_from(text: &str, mode: MySqlMode) -> Option<Result<Classified, Unparsed>> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&MySqlDialect {}, text).tokenize().ok()?;
    let mut significant = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect::<Vec<_>>();
    let word = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w) && x.quote_style.is_none());
    if !(significant.len() >= 4
        && word(&significant[0], "prepare")
        && word(&significant[2], "from"))
    {
        return None;
    }
    let Token::Word(name) = &significant[1] else {
        return None;
    };
    let name = name.value.clone();
    while matches!(significant.last(), Some(Token::SemiColon)) {
        significant.pop();
    }
    if significant.iter().any(|t| matches!(t, Token::SemiColon)) {
        return Some(Err(Unparsed::new(
            "PREPARE … FROM followed by more statements in the same query: send it alone",
        )));
    }
    let mut c = Classified::reading(text.trim().to_owned());
    match &significant[3..] {
        [Token::SingleQuotedString(inner)] | [Token::DoubleQuotedString(inner)] => {
            let inner = match classify_mysql_here(inner.as_str(), mode) {
                Ok(inner) => inner,
                Err(e) => return Some(Err(e)),
            };
            c.kind("prepare", Class::Read, "PREPARE");
            for s in &inner {
                c.absorb(s);
            }
        }
        _ => c.kind(
            "dynamic",
            Class::Admin,
            "PREPARE … FROM an expression prepares SQL the gateway cannot see",
        ),
    }
    c.prepares = Some(name);
    Some(Ok(c.finish()))
}

fn name_of(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => ident.value.clone(),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl MyWalk {
    fn statement(&mut self, s: &Statement) {
        use Statement as S;
        match s {
            S::Query(q) => {
                self.kind("select", Class::Read, "reads only");
                if let sqlparser::ast::SetExpr::Select(select) = q.body.as_ref()
                    && select.into.is_some()
                {
                    // MySQL's SELECT … INTO @variable: still a read.
                    self.kinds.insert("select_into".into());
                }
                if !q.locks.is_empty() {
                    self.kind(
                        "lock",
                        Class::Write,
                        "SELECT ... FOR UPDATE/SHARE locks rows",
                    );
                }
            }
            S::Insert(insert) => {
                self.kind("insert", Class::Write, "INSERT");
                if insert.replace_into {
                    // REPLACE deletes the rows whose keys the new ones take.
                    self.kind(
                        "delete",
                        Class::Write,
                        "REPLACE deletes the rows it replaces",
                    );
                }
                if let Some(sqlparser::ast::OnInsert::DuplicateKeyUpdate(_)) = &insert.on {
                    self.kind(
                        "update",
                        Class::Write,
                        "INSERT … ON DUPLICATE KEY UPDATE updates existing rows",
                    );
                }
            }
            S::Update(u) => {
                self.kind("update", Class::Write, "UPDATE");
                if u.selection.is_none() {
                    self.without_where = true;
                }
            }
            S::Delete(d) => {
                self.kind("delete", Class::Write, "DELETE");
                if d.selection.is_none() {
                    self.without_where = true;
                }
            }
            S::Merge(_) => self.kind("merge", Class::Write, "MERGE"),
            S::Truncate(_) => self.kind("truncate", Class::Write, "TRUNCATE"),
            S::Drop { .. }
            | S::DropFunction(_)
            | S::DropProcedure { .. }
            | S::DropTrigger(_)
            | S::DropDomain(_)
            | S::DropExtension(_)
            | S::DropPolicy(_) => {
                self.kind("drop", Class::Ddl, "DROP");
                // The names a DROP takes are its tables, for table rules.
                if let S::Drop { names, .. } = s {
                    for name in names {
                        self.tables.insert(name_of(name));
                    }
                }
            }
            S::CreateView(_)
            | S::CreateTable(_)
            | S::CreateIndex(_)
            | S::CreateSchema { .. }
            | S::CreateDatabase { .. }
            | S::CreateSequence { .. }
            | S::CreateType { .. } => self.kind("create", Class::Ddl, "CREATE"),
            S::AlterTable(alter) => {
                self.kind("alter", Class::Ddl, "ALTER");
                use sqlparser::ast::AlterTableOperation as Op;
                if alter.operations.iter().any(|op| {
                    matches!(
                        op,
                        Op::DropColumn { .. }
                            | Op::DropConstraint { .. }
                            | Op::DropPrimaryKey { .. }
                            | Op::DropForeignKey { .. }
                            | Op::DropIndex { .. }
                            | Op::DropPartitions { .. }
                            | Op::DropProjection { .. }
                    )
                }) {
                    self.kind(
                        "drop",
                        Class::Ddl,
                        "ALTER TABLE … DROP drops part of a table",
                    );
                }
            }
            S::RenameTable(_) => {
                // The old name is gone, as after a DROP.
                self.kind("alter", Class::Ddl, "RENAME TABLE");
                self.kind("drop", Class::Ddl, "RENAME TABLE takes a table's name away");
            }
            S::AlterView(_) | S::AlterIndex { .. } | S::Comment { .. } => {
                self.kind("alter", Class::Ddl, "ALTER")
            }
            S::Grant(_) | S::Revoke(_) => self.kind("grant", Class::Ddl, "GRANT / REVOKE"),
            S::Set(set) => {
                self.kinds.insert("set".into());
                // Settings that change how later SQL is read, or the server for everyone.
                let text = set.to_string().to_ascii_lowercase();
                if changes_reading(s) || ["global", "persist"].iter().any(|w| text.contains(w)) {
                    self.kind(
                        "set",
                        Class::Admin,
                        "SET of sql_mode, the character set or a global changes how SQL is read",
                    );
                }
            }
            S::ShowFunctions { .. }
            | S::ShowVariable { .. }
            | S::ShowStatus { .. }
            | S::ShowVariables { .. }
            | S::ShowCreate { .. }
            | S::ShowColumns { .. }
            | S::ShowDatabases { .. }
            | S::ShowProcessList { .. }
            | S::ShowSchemas { .. }
            | S::ShowCharset(_)
            | S::ShowTables { .. }
            | S::ShowViews { .. }
            | S::ShowCollation { .. }
            | S::ExplainTable { .. } => self.kind("show", Class::Read, "SHOW"),
            S::Explain { analyze, .. } => self.kind(
                if *analyze {
                    "explain_analyze"
                } else {
                    "explain"
                },
                Class::Read,
                "EXPLAIN",
            ),
            S::Use(_)
            | S::StartTransaction { .. }
            | S::Commit { .. }
            | S::Rollback { .. }
            | S::Savepoint { .. }
            | S::ReleaseSavepoint { .. }
            | S::UnlockTables
            | S::Deallocate { .. } => self.kind("transaction", Class::Read, "session control"),
            S::LockTables { .. } | S::Lock(_) => self.kind("lock", Class::Write, "LOCK TABLES"),
            S::Prepare { .. } => self.kind("prepare", Class::Read, "PREPARE"),
            S::Execute {
                immediate,
                name,
                parameters,
                ..
            } if *immediate
                || name.is_none()
                || name
                    .as_ref()
                    .is_some_and(|n| n.to_string().eq_ignore_ascii_case("immediate")) =>
            {
                // EXECUTE IMMEDIATE runs the SQL in its argument (the parser may read
                // IMMEDIATE as a statement's name): a literal is read as what it runs;
                // anything else (a variable, an expression) the gateway cannot see.
                match parameters.first().and_then(string_literal) {
                    Some(inner) => match classify_mysql_here(&inner, self.1) {
                        Ok(inner) => {
                            self.kind("execute", Class::Read, "EXECUTE IMMEDIATE");
                            for c in inner {
                                self.0.absorb(&c);
                            }
                        }
                        // Dynamic SQL the gateway cannot read or see takes the strictest
                        // verdict unless a rule allows it (kind `dynamic`).
                        Err(e) => self.kind(
                            "dynamic",
                            Class::Admin,
                            &format!(
                                "EXECUTE IMMEDIATE of SQL the gateway cannot read ({})",
                                e.message
                            ),
                        ),
                    },
                    None => self.kind(
                        "dynamic",
                        Class::Admin,
                        "EXECUTE IMMEDIATE of an expression runs SQL the gateway cannot see",
                    ),
                }
            }
            S::Execute { name, .. } => {
                self.executes_prepared = name.as_ref().map(name_of);
                self.kind(
                    "execute",
                    Class::Admin,
                    "EXECUTE of a prepared statement the classifier cannot see",
                );
            }
            S::Kill { id, .. } => {
                self.kinds.insert(format!("kill:{id}"));
                self.kinds.insert("signal_other_backend".into());
                self.kind(
                    "kill",
                    Class::Admin,
                    "KILL ends another connection or query",
                );
            }
            S::Call(_) => self.kind("call", Class::Admin, "CALL runs a procedure"),
            S::CreateFunction(_) | S::CreateProcedure { .. } | S::CreateTrigger(_) => {
                self.kind("create", Class::Admin, "defines code that runs later")
            }
            S::CreateUser(_) | S::AlterUser(_) | S::CreateRole(_) | S::AlterRole { .. } => {
                self.kind("role", Class::Admin, "users and roles are administration")
            }
            S::GrantRole(_) | S::RevokeRole(_) => {
                self.kind("grant", Class::Admin, "GRANT / REVOKE of a role")
            }
            other => {
                let name = format!("{other}")
                    .split_whitespace()
                    .next()
                    .unwrap_or("statement")
                    .to_ascii_lowercase();
                self.kind(
                    &name,
                    Class::Admin,
                    &format!(
                        "{} is administration or not a statement the classifier knows",
                        name.to_uppercase()
                    ),
                );
            }
        }
    }
}

/// The text of a string literal.
fn string_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::SingleQuotedString(s)
            | sqlparser::ast::Value::DoubleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

impl Visitor for MyWalk {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.statement(statement);
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.tables.insert(name_of(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            let full = name_of(&f.name).to_ascii_lowercase();
            let bare = full.rsplit('.').next().unwrap_or_default().to_owned();
            if MYSQL_DANGEROUS_FUNCTIONS.contains(&bare.as_str()) {
                self.kinds.insert(format!("function:{bare}"));
                self.kind(
                    &format!("function:{bare}"),
                    Class::Admin,
                    &format!("function {bare}"),
                );
            }
            self.functions.insert(full);
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(sql: &str, mode: MySqlMode) -> bool {
        match classify_mysql(sql, mode) {
            // Unparsable text is denied by default (`on_unparsed`).
            Err(_) => true,
            Ok(list) => list.iter().any(|s| {
                s.has_kind("delete")
                    || s.has_kind("truncate")
                    || s.has_kind("drop")
                    || s.has_kind("grant")
                    || s.class == Class::Admin
            }),
        }
    }

    use crate::corpus::{MYSQL_MUST_BLOCK as MUST_BLOCK, MYSQL_MUST_PASS as MUST_PASS};

    #[test]
    fn the_mysql_corpus() {
        let mode = MySqlMode::default();
        let missed: Vec<_> = MUST_BLOCK.iter().filter(|s| !blocked(s, mode)).collect();
        assert!(missed.is_empty(), "not blocked: {missed:#?}");
        let wrong: Vec<_> = MUST_PASS
            .iter()
            .filter(|s| blocked(s, mode))
            .map(|s| (s, classify_mysql(s, mode)))
            .collect();
        assert!(wrong.is_empty(), "blocked: {wrong:#?}");
    }

    #[test]
    fn sql_mode_changes_how_text_is_read() {
        // Default mode: the backslash escapes the quote, so the DELETE is inside the string.
        let default = MySqlMode::default();
        let sql = "select 'a\\' ; delete from victims; -- '";
        assert!(
            !classify_mysql(sql, default)
                .unwrap()
                .iter()
                .any(|s| s.has_kind("delete"))
        );
        // NO_BACKSLASH_ESCAPES: the string ends at the second quote: a DELETE follows.
        let nbe = MySqlMode::from_sql_mode("STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES");
        assert!(nbe.no_backslash_escapes);
        assert!(
            classify_mysql(sql, nbe)
                .unwrap()
                .iter()
                .any(|s| s.has_kind("delete"))
        );
        // ANSI_QUOTES: "victims" is a table, not a string.
        let ansi = MySqlMode::from_sql_mode("ANSI");
        let s = classify_mysql("delete from \"victims\" where id = 1", ansi).unwrap();
        assert!(s[0].tables.contains("victims"), "{s:?}");
        let s = classify_mysql("select \"a\"\"b\" from t", ansi).unwrap();
        assert!(s[0].text.contains("`a\"b`"), "{s:?}");
    }

    #[test]
    fn described_like_postgres() {
        let s = classify_mysql(
            "update t set a = 1; delete from u where id = 2",
            MySqlMode::default(),
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].has_kind("update") && s[0].without_where);
        assert_eq!(s[0].tables.iter().collect::<Vec<_>>(), ["t"]);
        assert!(s[1].has_kind("delete") && !s[1].without_where);
        let k = classify_mysql("kill 42", MySqlMode::default()).unwrap();
        assert!(k[0].has_kind("kill:42") && k[0].has_kind("signal_other_backend"));
    }

    /// Issue 19, class 1: MariaDB reads `--` as a comment only before an ASCII space or
    /// control character; before U+00A0, U+3000 or U+0085 it reads two minus signs, and the
    /// statements after them run.
    #[test]
    fn a_double_dash_before_unicode_space_is_no_comment() {
        let mode = MySqlMode::default();
        for space in ['\u{a0}', '\u{3000}', '\u{85}'] {
            let sql = format!("SELECT 1 --{space} FROM (SELECT 2 AS `{space}`) x; DROP TABLE t");
            // Read with its DROP, or unread (which `on_unparsed` refuses by default).
            assert!(
                !classify_mysql(&sql, mode).is_ok_and(|s| !s.iter().any(|s| s.has_kind("drop"))),
                "{sql:?} read without its DROP"
            );
        }
        // An ASCII space or control character, or the end: a comment, as on the server.
        for sql in [
            "SELECT 1 -- ; DROP TABLE t",
            "SELECT 1 --\t; DROP TABLE t",
            "SELECT 1 --",
        ] {
            let s = classify_mysql(sql, mode).unwrap();
            assert!(!s.iter().any(|s| s.has_kind("drop")), "{sql:?}");
        }
        // Not a comment: two minus signs.
        let s = classify_mysql("SELECT 1 --1", mode).unwrap();
        assert_eq!(s.len(), 1);
    }

    /// Issue 19, class 2: a setting that changes how SQL is read, then more in one packet.
    #[test]
    fn a_reading_change_followed_by_more_in_one_packet_is_unread() {
        let mode = MySqlMode::default();
        for sql in [
            "SET sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'x\\'; DROP TABLE t; -- '",
            "SET NAMES gbk; SELECT '中\\'; DROP TABLE t; -- '",
            "SET @@session.sql_mode = 'ANSI_QUOTES'; SELECT \"a\" FROM t",
            "SET character_set_client = sjis; SELECT 'ソ'",
        ] {
            assert!(classify_mysql(sql, mode).is_err(), "{sql} was read");
        }
        // Alone, or followed by text no setting reads differently: read.
        for sql in [
            "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
            "SET NAMES utf8mb4; SELECT 1",
            "SET autocommit = 1; SELECT 'x\\n'",
        ] {
            assert!(classify_mysql(sql, mode).is_ok(), "{sql} was not read");
        }
    }

    /// Issue 19, class 3, and the statement kinds MySQL adds.
    #[test]
    fn dynamic_sql_replace_upserts_renames_and_alter_drops() {
        let mode = MySqlMode::default();
        let s = classify_mysql("EXECUTE IMMEDIATE 'DROP TABLE t'", mode).unwrap();
        assert!(s[0].has_kind("drop") && s[0].tables.contains("t"), "{s:?}");
        // SQL the gateway cannot see: kind `dynamic`, refused unless a rule allows it.
        for sql in [
            "EXECUTE IMMEDIATE @sql",
            "EXECUTE IMMEDIATE CONCAT('DROP ', 'TABLE t')",
            "PREPARE s FROM @sql",
            "prepare s from concat('DROP ', 'TABLE t');",
        ] {
            let s = classify_mysql(sql, mode).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert!(
                s[0].has_kind("dynamic") && s[0].class == Class::Admin,
                "{sql}: {s:?}"
            );
        }
        // PREPARE … FROM a literal: what it prepares, remembered by name.
        let s = classify_mysql("PREPARE s FROM 'DROP TABLE t'", mode).unwrap();
        assert!(s[0].has_kind("drop") && s[0].has_kind("prepare"), "{s:?}");
        assert_eq!(s[0].prepares.as_deref(), Some("s"));
        // Not alone: unread.
        assert!(classify_mysql("PREPARE s FROM @v; EXECUTE s", mode).is_err());
        let s = classify_mysql("REPLACE INTO t VALUES (1)", mode).unwrap();
        assert!(s[0].has_kind("insert") && s[0].has_kind("delete"));
        let s = classify_mysql(
            "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 2",
            mode,
        )
        .unwrap();
        assert!(s[0].has_kind("insert") && s[0].has_kind("update"));
        let s = classify_mysql("RENAME TABLE t TO gone", mode).unwrap();
        assert!(s[0].has_kind("drop"));
        let s = classify_mysql("ALTER TABLE t DROP COLUMN a", mode).unwrap();
        assert!(s[0].has_kind("drop") && s[0].has_kind("alter"));
        let s = classify_mysql("ALTER TABLE t ADD COLUMN b INT", mode).unwrap();
        assert!(!s[0].has_kind("drop"));
    }

    #[test]
    fn load_data_is_an_insert_into_its_table_or_unread() {
        let mode = MySqlMode::default();
        for sql in [
            "LOAD DATA LOCAL INFILE '/tmp/rows.txt' INTO TABLE soak_load",
            "load data low_priority local infile \"f.csv\" replace into table app.soak_load character set utf8mb4 fields terminated by ',' ignore 1 lines (id, @x);",
            "LOAD XML LOCAL INFILE 'p.xml' INTO TABLE `soak_load` ROWS IDENTIFIED BY '<row>'",
            "/*!50000 LOAD DATA LOCAL INFILE 'f' INTO TABLE soak_load */",
        ] {
            let s = classify_mysql(sql, mode).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(s.len(), 1, "{sql}");
            assert!(
                s[0].has_kind("insert") && s[0].has_kind("load_data"),
                "{sql}: {s:?}"
            );
            assert_eq!(s[0].class, Class::Write, "{sql}");
            let table = s[0].tables.iter().next().unwrap();
            assert!(table.ends_with("soak_load"), "{sql}: {table}");
        }
        // The server reads a file of its own: admin.
        let s = classify_mysql("LOAD DATA INFILE '/etc/passwd' INTO TABLE t", mode).unwrap();
        assert_eq!(s[0].class, Class::Admin);
        // Expressions, a second statement, odd shapes: not read (on_unparsed decides).
        for sql in [
            "LOAD DATA LOCAL INFILE 'f' INTO TABLE t (a, @b) SET c = sys_exec(@b)",
            "LOAD DATA LOCAL INFILE 'f' INTO TABLE t; DROP TABLE victims",
            "LOAD DATA LOCAL INFILE 'f' INTO TABLE t /*! SET c = 1 */",
            "LOAD INDEX INTO CACHE t",
            "LOAD DATA LOCAL 'f' INTO TABLE t",
        ] {
            assert!(classify_mysql(sql, mode).is_err(), "{sql} was read");
        }
    }
}
