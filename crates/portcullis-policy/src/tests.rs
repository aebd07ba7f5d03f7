//! The bypass corpus: statements a "no deletes, no drops, no file access" policy must catch,
//! and statements it must let through, classified by the real parser.

use super::*;

/// The test policy: no DELETE or TRUNCATE, no DROP, nothing `admin` (file access, code the
/// text does not show, settings that change how SQL is read).
fn blocked(sql: &str) -> Result<bool, Unparsed> {
    let statements = Classifier::default().classify(sql)?;
    Ok(statements.iter().any(|s| {
        s.has_kind("delete")
            || s.has_kind("truncate")
            || s.has_kind("drop")
            || s.has_kind("grant")
            || s.class == Class::Admin
    }))
}

use crate::corpus::{MUST_BLOCK, MUST_PASS};

#[test]
fn the_corpus_is_large_enough() {
    assert!(MUST_BLOCK.len() >= 60, "{}", MUST_BLOCK.len());
    assert!(MUST_PASS.len() >= 60, "{}", MUST_PASS.len());
}

#[test]
fn every_bypass_style_is_caught() {
    let missed: Vec<&str> = MUST_BLOCK
        .iter()
        .copied()
        .filter(|sql| !blocked(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}")))
        .collect();
    assert!(missed.is_empty(), "not blocked: {missed:#?}");
}

#[test]
fn benign_statements_pass() {
    let wrongly: Vec<(&str, String)> = MUST_PASS
        .iter()
        .copied()
        .filter_map(|sql| {
            let statements = Classifier::default()
                .classify(sql)
                .unwrap_or_else(|e| panic!("{sql:?}: {e}"));
            blocked(sql)
                .unwrap_or(true)
                .then(|| (sql, format!("{statements:?}")))
        })
        .collect();
    assert!(wrongly.is_empty(), "blocked: {wrongly:#?}");
}

#[test]
fn what_cannot_be_parsed_is_an_error() {
    for sql in [
        "selec 1",
        "delete victims",
        "select 'unterminated",
        "select $$ unterminated",
        "/* unterminated comment delete from victims",
    ] {
        assert!(Classifier::default().classify(sql).is_err(), "{sql:?}");
    }
}

#[test]
fn statements_are_split_and_described() {
    let c = Classifier::default();
    let s = c
        .classify(
            "select * from a.b join c on true; update t set x = 1; delete from u where id = 2",
        )
        .unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].class, Class::Read);
    assert_eq!(
        s[0].tables.iter().map(String::as_str).collect::<Vec<_>>(),
        ["a.b", "c"]
    );
    assert_eq!(s[0].text, "select * from a.b join c on true");
    assert_eq!(s[1].class, Class::Write);
    assert!(s[1].has_kind("update") && s[1].without_where);
    assert_eq!(s[1].text, "update t set x = 1");
    assert_eq!(s[1].tables.iter().collect::<Vec<_>>(), ["t"]);
    assert!(s[2].has_kind("delete") && !s[2].without_where);
    assert_eq!(s[2].text, "delete from u where id = 2");
    // The reason names the strictest part.
    let s = c
        .classify("select 1 from t where pg_ls_dir('/') is null")
        .unwrap();
    assert_eq!(s[0].reason, "function pg_ls_dir");
    // A function list of one's own.
    let only = Classifier::with_dangerous_functions(["my_exec"]);
    assert_eq!(
        only.classify("select my_exec('x')").unwrap()[0].class,
        Class::Admin
    );
    assert_eq!(
        only.classify("select pg_read_file('x')").unwrap()[0].class,
        Class::Read
    );
}

/// Issue 16: statements deep enough to overflow a thread's stack in the parsers (libpg_query
/// recurses per level in C, sqlparser in Rust) are refused as too complex, on a thread with
/// the ordinary 2 MiB stack, and the thread lives on.
#[test]
fn deep_statements_are_refused_as_too_complex_without_exhausting_the_stack() {
    let forms: Vec<String> = vec![
        format!("SELECT {}1{}", "(SELECT ".repeat(2500), ")".repeat(2500)),
        format!("SELECT {}1{}", "(SELECT ".repeat(9000), ")".repeat(9000)),
        format!("SELECT 1{}", "+1".repeat(60_000)),
        format!("SELECT 'a'{}", "||'a'".repeat(30_000)),
        format!("SELECT {} true", "NOT ".repeat(12_000)),
        format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(5_000)),
    ];
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let classifier = Classifier::default();
            let mut out = Vec::new();
            for sql in &forms {
                let pg = classifier.classify(sql);
                let my = crate::mysql::classify_mysql(sql, MySqlMode::default());
                out.push((
                    sql.len(),
                    pg.map(|v| v.len()).map_err(|e| e.too_complex),
                    my.map(|v| v.len()).map_err(|e| e.too_complex),
                ));
            }
            out
        })
        .unwrap();
    for (len, pg, my) in handle.join().expect("the parsing thread survived") {
        assert_eq!(pg, Err(true), "PostgreSQL, {len} bytes");
        // sqlparser reads some deep forms (a flat UNION chain), refuses others as too deep.
        assert!(
            my == Err(true) || my == Ok(1) || my == Err(false),
            "MySQL, {len} bytes: {my:?}"
        );
    }
    let huge = format!("SELECT 1{}", ",1".repeat(crate::MAX_PARSED));
    let e = Classifier::default().classify(&huge).unwrap_err();
    assert!(e.too_complex && e.message.contains("MiB"), "{e:?}");
    // Ordinary long statements still parse (on the parser thread).
    let long = format!("SELECT 1 WHERE 1 IN (1{})", ",1".repeat(20_000));
    assert_eq!(
        Classifier::default().classify(&long).map(|v| v.len()),
        Ok(1)
    );
}

/// Issue 17, classes 6 and 8: statement meaning and side effects.
#[test]
fn side_effects_and_unbounded_writes_are_classified_as_what_they_do() {
    let one = |sql: &str| {
        let mut v = Classifier::default().classify(sql).unwrap();
        assert_eq!(v.len(), 1, "{sql}");
        v.remove(0)
    };
    for sql in [
        "select lo_unlink(16385)",
        "select lo_put(16385, 0, '\\x00')",
        "select setval('s', 1)",
        "select nextval('s')",
        "select pg_advisory_lock(1)",
        "select pg_notify('c', 'x')",
    ] {
        assert!(one(sql).class >= Class::Write, "{sql}: {:?}", one(sql));
    }
    for sql in [
        "select pg_ls_logicalsnapdir()",
        "select pg_ls_logicalmapdir()",
        "select * from pg_ls_replslotdir('s')",
    ] {
        assert_eq!(one(sql).class, Class::Admin, "{sql}");
    }
    for sql in [
        "delete from t where true",
        "delete from t where 1 = 1",
        "update t set a = 1 where 'x' = 'x'",
        "update t set a = 1 where exists (select 1)",
        "insert into t values (1) on conflict (id) do update set a = 2",
    ] {
        assert!(one(sql).without_where, "{sql}");
    }
    for sql in [
        "delete from t where id = 1",
        "update t set a = 1 where id in (select id from u)",
        "insert into t values (1) on conflict (id) do update set a = 2 where t.a < 5",
    ] {
        assert!(!one(sql).without_where, "{sql}");
    }
    assert!(
        one("insert into t values (1) on conflict (id) do update set a = 2").has_kind("update")
    );
    assert!(!one("insert into t values (1) on conflict do nothing").has_kind("update"));
    assert!(one("create index i on t (a)").class >= Class::Ddl);
    assert!(one("alter table t drop column a").has_kind("drop"));
    assert!(one("alter table t drop constraint c").has_kind("drop"));
    assert!(!one("alter table t add column b int").has_kind("drop"));
}

/// Issue 17, class 5: code whose statements the gateway cannot see is denied unless a rule
/// allows it explicitly — under a policy whose only rule is no-drop, as in the example file.
#[test]
fn dynamic_sql_is_denied_unless_a_rule_allows_it() {
    use crate::rules::{Action, Policy, Rule};
    use portcullis_core::{AuthMethod, Identity, Verdict};
    let p = Policy::new(vec![
        Rule::new("dba-code", Action::Allow)
            .groups(["dba"])
            .statements(["dynamic"]),
        Rule::new("no-drop", Action::Deny).statements(["drop", "truncate"]),
    ])
    .unwrap();
    let analyst = Identity::new("a", vec!["analyst".into()], AuthMethod::StaticToken);
    let dba = Identity::new("d", vec!["dba".into()], AuthMethod::StaticToken);
    for sql in [
        "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$",
        "CALL p()",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'TRUNCATE t'",
        "CREATE OPERATOR ~~~ (RIGHTARG = text, FUNCTION = pg_read_file)",
        "CREATE AGGREGATE a (int) (SFUNC = int4pl, STYPE = int)",
        "CREATE CAST (text AS int) WITH FUNCTION f(text)",
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM u",
    ] {
        let j = p.judge(&analyst, [sql]);
        assert!(
            matches!(&j.verdict, Verdict::Deny { rule, .. } if rule == crate::DYNAMIC_SQL_RULE),
            "{sql}: {:?}",
            j.verdict
        );
        assert_eq!(p.judge(&dba, [sql]).verdict, Verdict::Allow, "{sql}");
    }
    assert_eq!(p.judge(&analyst, ["select 1"]).verdict, Verdict::Allow);
}

/// Issue 17, class 9: benign statements are judged as what they run.
#[test]
fn harmless_settings_through_set_config_are_a_set_not_admin() {
    let one = |sql: &str| Classifier::default().classify(sql).unwrap().remove(0);
    let c = one("select set_config('application_name', 'x', false)");
    assert!(c.has_kind("set") && c.class < Class::Admin, "{c:?}");
    for sql in [
        "select set_config('standard_conforming_strings', 'off', false)",
        "select set_config('ROLE', 'app_priv', false)",
        "select set_config(current_setting('x'), 'off', false)",
    ] {
        assert_eq!(one(sql).class, Class::Admin, "{sql}");
    }
}

/// Issue 21: a rule's default message reads naturally — the kind the rule names, then why
/// only when the reason says more.
#[test]
fn default_messages_read_naturally() {
    use portcullis_core::{AuthMethod, Identity, Verdict};
    let who = Identity::new("alice", vec![], AuthMethod::StaticToken);
    let policy = Policy::new(vec![
        Rule::new("no-drop", Action::Deny).statements(["drop"]),
        Rule::new("no-files", Action::Deny).functions(["pg_read_file"]),
        Rule::new("no-copy", Action::Deny).statements(["copy_from"]),
    ])
    .unwrap();
    let message = |sql: &str| match policy.judge(&who, [sql]).verdict {
        Verdict::Deny { message, .. } => message,
        other => panic!("{sql}: {other:?}"),
    };
    for (sql, want) in [
        ("drop table t", "DROP is not allowed here"),
        (
            "select pg_read_file('x')",
            "calling pg_read_file is not allowed here",
        ),
        ("copy t from stdin", "COPY FROM is not allowed here"),
    ] {
        assert_eq!(message(sql), want, "{sql}");
    }
}
