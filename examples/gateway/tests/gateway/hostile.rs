//! Hostile raw-protocol cases: each is first run on a direct connection to prove it does the
//! damage (a table dropped, rows deleted), then through the gateway as an identity whose
//! rules forbid it, where it must do none — and the trail must hold what was judged.

use std::time::Duration;

use portcullis_testkit::PgCluster;
use portcullis_testkit::wire::{PgWire, msg};

use super::adversarial::RULES;
use super::policy::{ALICE, DANA, cluster_with_victims, direct, start};
use super::recorded_statements;

/// `RULES` (the hostile suites' rules), and a JSONL trail at `trail` that must hold every
/// record before a command runs.
pub(super) fn rules_with_trail(trail: &std::path::Path) -> String {
    format!(
        "{RULES}\n[audit]\non_failure = \"refuse\"\n[[audit.sinks]]\nkind = \"jsonl\"\npath = \"{}\"\n",
        trail.display()
    )
}

fn exists(cluster: &PgCluster, table: &str) -> bool {
    direct(
        cluster,
        &format!("select to_regclass('public.{table}') is not null"),
    ) == "t"
}

fn direct_wire(cluster: &PgCluster) -> PgWire {
    PgWire::connect_unix(cluster.socket_dir(), cluster.port(), cluster.user(), "app").unwrap()
}

/// One write: everything the attack sends, then read until the server closes or goes quiet.
fn attack(wire: &mut PgWire, bytes: &[u8]) {
    wire.send(bytes).unwrap();
    let _ = wire.until_closed(Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_hidden_behind_terminate_function_call_or_a_reused_name_are_judged() {
    let cluster = cluster_with_victims().await;
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let extra = rules_with_trail(&trail);
    let (gateway, gw, _admin, _dir) = start(&cluster, &extra).await;
    let via_gateway = || PgWire::connect(gw, "alice", "app", ALICE).unwrap();

    // 1. A batch ending in Terminate: P/B/E DROP, P/B/E COMMIT, Terminate, in one write.
    let batch = |table: &str| {
        [
            msg::pbe(&format!("DROP TABLE {table}")),
            msg::pbe("COMMIT"),
            msg::terminate(),
        ]
        .concat()
    };
    direct(&cluster, "create table scratch1 (id int)");
    attack(&mut direct_wire(&cluster), &batch("scratch1"));
    assert!(
        !exists(&cluster, "scratch1"),
        "the attack does no damage directly"
    );
    attack(&mut via_gateway(), &batch("victims"));
    assert!(exists(&cluster, "victims"), "DROP behind Terminate ran");
    assert!(
        !recorded_statements(&trail, "DROP TABLE victims").is_empty(),
        "the statement behind Terminate is not in the trail"
    );

    // 2. The same batch followed by a FunctionCall (pg_backend_pid, OID 2026).
    let batch = |table: &str| {
        [
            msg::pbe(&format!("DROP TABLE {table}")),
            msg::pbe("COMMIT"),
            msg::function_call(2026, &[]),
        ]
        .concat()
    };
    direct(&cluster, "create table scratch2 (id int)");
    let mut d = direct_wire(&cluster);
    d.send(&batch("scratch2")).unwrap();
    d.until_ready().unwrap();
    assert!(
        !exists(&cluster, "scratch2"),
        "the attack does no damage directly"
    );
    let mut g = via_gateway();
    g.send(&batch("victims")).unwrap();
    let _ = g.until_closed(Duration::from_secs(3));
    assert!(
        exists(&cluster, "victims"),
        "DROP behind a FunctionCall ran"
    );

    // 3. A statement name re-used: the server keeps the first text (42P05 for the second
    // Parse), so Bind/Execute runs the DELETE the gateway must judge.
    let reuse = [
        msg::parse("s1", "DELETE FROM victims"),
        msg::sync(),
        msg::parse("s1", "SELECT 1"),
        msg::sync(),
        msg::bind("", "s1", &[]),
        msg::execute(""),
        msg::sync(),
    ];
    direct(
        &cluster,
        "create table scratch3 (id int); insert into scratch3 values (1)",
    );
    let mut d = direct_wire(&cluster);
    for m in [
        msg::parse("s1", "DELETE FROM scratch3"),
        msg::sync(),
        msg::parse("s1", "SELECT 1"),
        msg::sync(),
        msg::bind("", "s1", &[]),
        msg::execute(""),
        msg::sync(),
    ] {
        d.send(&m).unwrap();
    }
    for _ in 0..3 {
        d.until_ready().unwrap();
    }
    assert_eq!(direct(&cluster, "select count(*) from scratch3"), "0");
    let mut g = via_gateway();
    for m in &reuse {
        g.send(m).unwrap();
    }
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.extend(g.until_ready().unwrap());
    }
    assert_eq!(
        direct(&cluster, "select count(*) from victims"),
        "3",
        "the DELETE ran without approval: {replies:?}"
    );

    // 4. The Close of a statement name inside a refused unit never reaches the server, so
    // the name still holds the DELETE; re-Parse it (42P05 on the server) and execute it.
    let mut g = via_gateway();
    g.send(&[msg::parse("s2", "DELETE FROM victims"), msg::sync()].concat())
        .unwrap();
    g.until_ready().unwrap();
    g.send(
        &[
            msg::close(b'S', "s2"),
            msg::pbe("DROP TABLE victims"),
            msg::sync(),
        ]
        .concat(),
    )
    .unwrap();
    let refused = g.until_ready().unwrap();
    assert!(refused.iter().any(|m| m.tag == b'E'), "{refused:?}");
    g.send(
        &[
            msg::parse("s2", "SELECT 1"),
            msg::sync(),
            msg::bind("", "s2", &[]),
            msg::execute(""),
            msg::sync(),
        ]
        .concat(),
    )
    .unwrap();
    let mut replies = g.until_ready().unwrap();
    replies.extend(g.until_ready().unwrap());
    assert_eq!(
        direct(&cluster, "select count(*) from victims"),
        "3",
        "the DELETE ran: {replies:?}"
    );

    // 5. Execute of a portal bound in an earlier unit to a statement the gateway never saw
    // (prepared at SQL level): refused, not judged as nothing.
    let mut g = via_gateway();
    let replies = g.simple("BEGIN").unwrap();
    assert!(replies.iter().all(|m| m.tag != b'E'), "{replies:?}");
    g.send(
        &[
            msg::bind("p", "never_prepared", &[]),
            msg::execute("p"),
            msg::sync(),
        ]
        .concat(),
    )
    .unwrap();
    let replies = g.until_ready().unwrap();
    let e = replies.iter().find(|m| m.tag == b'E').expect("an error");
    assert!(
        e.field(b'M')
            .unwrap_or_default()
            .contains("unknown-statement")
            || e.sqlstate().as_deref() == Some("26000"),
        "{e:?}"
    );

    // 6. One write holding a Query with a DROP between allowed ones, then Terminate.
    let mut g = via_gateway();
    g.send(
        &[
            msg::query("SELECT 1; DROP TABLE victims; SELECT 2"),
            msg::terminate(),
        ]
        .concat(),
    )
    .unwrap();
    let _ = g.until_closed(Duration::from_secs(3));
    assert!(
        exists(&cluster, "victims"),
        "DROP inside a Query before Terminate ran"
    );

    // 7. A Flush-ended batch (no Sync) with the DROP, then Terminate.
    let mut g = via_gateway();
    g.send(
        &[
            msg::pbe("DROP TABLE victims"),
            msg::flush(),
            msg::terminate(),
        ]
        .concat(),
    )
    .unwrap();
    let _ = g.until_closed(Duration::from_secs(3));
    assert!(
        exists(&cluster, "victims"),
        "DROP in a flushed batch before Terminate ran"
    );
    drop(gateway);
}

/// Issue 16: a 2,500-level statement (which once overflowed a session thread's stack and
/// aborted the process) is refused with 54001 for that one statement; the session and the
/// gateway go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_nested_2500_deep_is_refused_and_the_gateway_keeps_serving() {
    let cluster = cluster_with_victims().await;
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let extra = rules_with_trail(&trail);
    let (gateway, gw, _admin, _dir) = start(&cluster, &extra).await;
    let deep = format!("SELECT {}1{}", "(SELECT ".repeat(2500), ")".repeat(2500));
    let plus = format!("SELECT 1{}", "+1".repeat(100_000));
    let mut wire = PgWire::connect(gw, "alice", "app", ALICE).unwrap();
    for sql in [&deep, &plus] {
        let replies = wire.simple(sql).unwrap();
        let error = replies.iter().find(|m| m.tag == b'E').expect("an error");
        assert_eq!(error.sqlstate().as_deref(), Some("54001"), "{error:?}");
        assert!(
            error.field(b'M').unwrap().contains("too complex"),
            "{error:?}"
        );
    }
    // The same session goes on, and so does a new one.
    let replies = wire.simple("select 7").unwrap();
    assert!(replies.iter().any(|m| m.tag == b'D'), "{replies:?}");
    let mut other = PgWire::connect(gw, "alice", "app", ALICE).unwrap();
    assert!(
        other
            .simple("select 8")
            .unwrap()
            .iter()
            .any(|m| m.tag == b'D')
    );
    drop(wire);
    drop(other);
    drop(gateway);
    assert!(
        !recorded_statements(&trail, "(SELECT (SELECT (SELECT").is_empty(),
        "the refused statement is not in the trail"
    );
}

/// Issue 17, class 3: a setting that changes how SQL is read, changed by one command and
/// followed — pipelined, before the server reported the change — by a statement that reads
/// as a harmless string with `standard_conforming_strings = on` and as a DROP with `off`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_pipelined_behind_a_settings_change_is_read_with_the_new_setting() {
    let cluster = cluster_with_victims().await;
    let rules = r#"
[policy]
on_unparsed = "deny"
[[policy.rules]]
name = "dba-may-set"
groups = ["dba"]
statements = ["set"]
action = "allow"
[[policy.rules]]
name = "no-drops"
statements = ["drop"]
action = "deny"
[[policy.rules]]
name = "no-admin"
statements = ["admin"]
action = "deny"
"#;
    let (_gateway, gw, _admin, _dir) = start(&cluster, rules).await;

    // The setting changed by a SET the guard sees, and where no statement text shows it: a
    // view that calls set_config. The statement pipelined after it reads differently.
    direct(
        &cluster,
        "create view sneaky as select set_config('standard_conforming_strings', 'off', false) as s, pg_sleep(0.3)::text as p",
    );
    for (first, scratch) in [
        (
            "SET standard_conforming_strings = off; SELECT pg_sleep(0.3)",
            "scratch4",
        ),
        ("SELECT * FROM sneaky", "scratch5"),
    ] {
        let attack = |table: &str| {
            [
                msg::query(first),
                msg::query(&format!("SELECT 'x\\'\n'; DROP TABLE {table}; --'")),
            ]
            .concat()
        };
        direct(&cluster, &format!("create table {scratch} (id int)"));
        let mut d = direct_wire(&cluster);
        d.send(&attack(scratch)).unwrap();
        d.until_ready().unwrap();
        d.until_ready().unwrap();
        assert!(
            !exists(&cluster, scratch),
            "{first}: the attack does no damage directly"
        );
        let mut g = PgWire::connect(gw, "dana", "app", DANA).unwrap();
        g.send(&attack("victims")).unwrap();
        let before = g.until_ready().unwrap();
        let after = g.until_ready().unwrap();
        assert!(
            exists(&cluster, "victims"),
            "{first}: the DROP ran: {before:?} {after:?}"
        );
        let refused = after
            .iter()
            .find(|m| m.tag == b'E')
            .expect("the second is refused");
        assert!(
            refused
                .field(b'M')
                .unwrap_or_default()
                .contains("standard_conforming_strings"),
            "{first}: {refused:?}"
        );
    }

    // The pause after a settings change lets the COPY data of the same command through
    // (a `SET …; COPY … FROM STDIN` query waits for that data).
    let mut g = PgWire::connect(gw, "dana", "app", DANA).unwrap();
    g.send(&msg::query(
        "SET application_name = 'copy-after-set'; COPY staging FROM STDIN",
    ))
    .unwrap();
    loop {
        let m = g.recv().unwrap();
        assert_ne!(m.tag, b'E', "{m:?}");
        if m.tag == b'G' {
            break;
        }
    }
    g.send(&[msg::copy_data(b"7\tseven\n"), msg::copy_done()].concat())
        .unwrap();
    let done = g.until_ready().unwrap();
    assert!(done.iter().all(|m| m.tag != b'E'), "{done:?}");
    assert_eq!(
        direct(&cluster, "select name from staging where id = 7"),
        "seven"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_after_terminate_whatever_came_unsynced_before_it() {
    let cluster = cluster_with_victims().await;
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let extra = rules_with_trail(&trail);
    let (_gateway, gw, _admin, _dir) = start(&cluster, &extra).await;
    // Batches without Sync or Flush, cut by Terminate or a FunctionCall: the server keeps its
    // replies to them buffered, so the gateway must not wait for those replies forever. The
    // client keeps its socket open: only Terminate says the session is over.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Parse, Terminate",
            [
                msg::parse("s1", "SELECT 'parse-then-terminate'"),
                msg::terminate(),
            ]
            .concat(),
        ),
        (
            // A function call: the gateway waits for the replies before judging what follows.
            "Parse of a call, Terminate",
            [
                msg::parse(
                    "s1",
                    "SELECT set_config('application_name', 'parse-call', false)",
                ),
                msg::terminate(),
            ]
            .concat(),
        ),
        (
            "Parse/Bind/Execute, Terminate",
            [msg::pbe("SELECT 'pbe-then-terminate'"), msg::terminate()].concat(),
        ),
        (
            "Parse, FunctionCall, Bind, Terminate",
            [
                msg::parse("s2", "SELECT 'parse-then-call'"),
                msg::function_call(2026, &[]),
                msg::bind("p1", "s2", &[]),
                msg::terminate(),
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut g = PgWire::connect(gw, "alice", "app", ALICE).unwrap();
        g.send(&bytes).unwrap();
        let replies = g.until_closed(Duration::from_secs(20));
        // Closed, not timed out: the read after the end of the stream finds it again.
        let end = g.recv().map(|m| m.tag).map_err(|e| e.kind());
        assert_eq!(
            end,
            Err(std::io::ErrorKind::UnexpectedEof),
            "{what}: the session did not end after Terminate: {replies:?}"
        );
    }
    for text in [
        "parse-then-terminate",
        "parse-call",
        "pbe-then-terminate",
        "parse-then-call",
    ] {
        assert!(
            !recorded_statements(&trail, text).is_empty(),
            "{text} is not in the trail"
        );
    }
}

/// Rules for the catalog case: dba may run code and DDL, dev only reads.
const CATALOG_RULES: &str = r#"
[policy]
[[policy.rules]]
name = "dba-code"
groups = ["dba"]
statements = ["dynamic", "ddl", "admin", "write"]
action = "allow"
[[policy.rules]]
name = "dev-reads-only"
groups = ["dev"]
statements = ["write", "ddl", "admin"]
action = "deny"
"#;

/// Whether a wire reply holds an error.
fn refused(replies: &[portcullis_testkit::wire::BackendMsg]) -> bool {
    replies.iter().any(|m| m.tag == b'E')
}

/// `replies` (to `sql`) hold an error naming `rule`.
fn refused_by(replies: &[portcullis_testkit::wire::BackendMsg], sql: &str, rule: &str) {
    let e = replies
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("{sql} was let through: {replies:?}"));
    assert!(
        e.field(b'M').unwrap_or_default().contains(rule),
        "{sql}: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_defined_volatile_functions_and_function_calls_are_judged_from_the_catalog() {
    let cluster = cluster_with_victims().await;
    let wipe = |name: &str, table: &str, volatility: &str| {
        format!(
            "create or replace function {name}() returns bigint language sql {volatility} as \
             $$ with d as (delete from {table} returning 1) select count(*) from d $$"
        )
    };
    direct(
        &cluster,
        "create table scratch (id int); insert into scratch values (1), (2);
         create function f_count() returns bigint language sql stable as $$ select count(*) from victims $$",
    );
    direct(&cluster, &wipe("f_wipe_scratch", "scratch", "volatile"));
    direct(&cluster, &wipe("f_wipe", "victims", "volatile"));
    // The damage, directly: a SELECT of a user-defined volatile function deletes rows, and
    // so does a FunctionCall of it by OID.
    assert_eq!(direct(&cluster, "select f_wipe_scratch()"), "2");
    direct(&cluster, "insert into scratch values (1), (2)");
    let scratch_oid: u32 = direct(&cluster, "select 'f_wipe_scratch'::regproc::oid")
        .parse()
        .unwrap();
    let mut d = direct_wire(&cluster);
    d.send(&msg::function_call(scratch_oid, &[])).unwrap();
    assert!(!refused(&d.until_ready().unwrap()));
    assert_eq!(direct(&cluster, "select count(*) from scratch"), "0");

    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let extra = format!(
        "{CATALOG_RULES}\n[[audit.sinks]]\nkind = \"jsonl\"\npath = \"{}\"\n",
        trail.display()
    );
    let (_gateway, gw, _admin, _dir) = start(&cluster, &extra).await;
    let alice = || PgWire::connect(gw, "alice", "app", ALICE).unwrap();
    let victims = || direct(&cluster, "select count(*) from victims");

    // Through the gateway, the reader's calls of it are `write`, however spelled or nested.
    for sql in [
        "select f_wipe()",
        "select public.f_wipe()",
        "select \"F_WIPE\"()",
        "select n from (select f_wipe() as n) s",
        "select 1 where f_wipe() > 0",
    ] {
        let replies = alice().simple(sql).unwrap();
        if sql.contains("F_WIPE") {
            // Quoted upper case names another function: none exists, so it is unknown.
            assert!(refused(&replies), "{sql}: {replies:?}");
            continue;
        }
        refused_by(&replies, sql, "dev-reads-only");
        assert_eq!(victims(), "3", "{sql} deleted rows");
    }
    // A stable function and the server's own functions are reads, as directly.
    let mut a = alice();
    let replies = a
        .simple("select f_count(), lower('A'), now() is not null")
        .unwrap();
    assert!(!refused(&replies), "{replies:?}");
    let row = replies.iter().find(|m| m.tag == b'D').expect("a row");
    assert!(String::from_utf8_lossy(&row.body).contains('3'), "{row:?}");
    // A function that does not exist is not judged a read.
    assert!(refused(&a.simple("select f_nowhere()").unwrap()));

    // Replaced through the gateway (by a dba) with a volatile body that deletes: the
    // reader's very next call is judged against the new definition.
    let mut dana = PgWire::connect(gw, "dana", "app", DANA).unwrap();
    let replies = dana
        .simple(&wipe("f_count", "victims", "volatile"))
        .unwrap();
    assert!(!refused(&replies), "{replies:?}");
    assert!(refused(&a.simple("select f_count()").unwrap()));
    assert_eq!(victims(), "3", "the replaced function ran for a reader");

    // FunctionCall messages are judged as the function their OID names.
    let oid = |name: &str| -> u32 {
        direct(&cluster, &format!("select '{name}'::regproc::oid"))
            .parse()
            .unwrap()
    };
    let mut a = alice();
    a.send(&msg::function_call(oid("f_wipe"), &[])).unwrap();
    assert!(refused(&a.until_ready().unwrap()));
    assert_eq!(victims(), "3", "a FunctionCall of f_wipe ran");
    // lo_unlink has side effects (write); pg_read_file is admin.
    a.send(&msg::function_call(oid("lo_unlink"), &["1"]))
        .unwrap();
    assert!(refused(&a.until_ready().unwrap()));
    a.send(&msg::function_call(2624, &["PG_VERSION"])).unwrap();
    let replies = a.until_ready().unwrap();
    let e = replies.iter().find(|m| m.tag == b'E').expect("refused");
    assert!(
        e.field(b'M').unwrap_or_default().contains("dev-reads-only"),
        "{e:?}"
    );
    // A read-only function by OID works as directly: pg_backend_pid (2026).
    a.send(&msg::function_call(2026, &[])).unwrap();
    let replies = a.until_ready().unwrap();
    assert!(replies.iter().any(|m| m.tag == b'V'), "{replies:?}");
    assert!(!refused(&replies), "{replies:?}");

    // The trail names each FunctionCall's function.
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(text.contains("public.f_wipe"), "{text}");
}

/// Issue 17, class 4: a table rule matches what the server reads — through views, views of
/// views and materialized views, including one created through the gateway just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_count_as_the_tables_they_read() {
    let cluster = cluster_with_victims().await;
    direct(
        &cluster,
        "create table secret_t (card text); insert into secret_t values ('4111111111111111');
         create view v1 as select * from secret_t;
         create view v2 as select card from v1;
         create materialized view mv as select * from secret_t;
         create schema other; create view other.fine as select 1 as one",
    );
    // Directly, each view hands out the protected table's rows.
    for view in ["v1", "v2", "mv"] {
        assert_eq!(
            direct(&cluster, &format!("select card from {view}")),
            "4111111111111111"
        );
    }
    let rules = r#"
[policy]
[[policy.rules]]
name = "no-secret"
groups = ["dev"]
tables = ["secret_t"]
action = "deny"
"#;
    let (_gateway, gw, _admin, _dir) = start(&cluster, rules).await;
    let alice = || PgWire::connect(gw, "alice", "app", ALICE).unwrap();
    for sql in [
        "select card from secret_t",
        "select card from v1",
        "select card from public.v2",
        "select card from app.public.v2",
        "select * from mv",
        "select (select count(*) from v2) as n",
    ] {
        let replies = alice().simple(sql).unwrap();
        refused_by(&replies, sql, "no-secret");
    }
    // Benign twins: a view over other tables, a table of its own.
    for sql in ["select * from other.fine", "select count(*) from victims"] {
        let replies = alice().simple(sql).unwrap();
        assert!(!refused(&replies), "{sql}: {replies:?}");
    }
    // A view made through the gateway (by a dba) is judged at the reader's next command.
    let mut dana = PgWire::connect(gw, "dana", "app", DANA).unwrap();
    let replies = dana
        .simple("create view v3 as select card from secret_t")
        .unwrap();
    assert!(!refused(&replies), "{replies:?}");
    let replies = alice().simple("select card from v3").unwrap();
    assert!(refused(&replies), "{replies:?}");
}

/// Issue 17, class 5: a function that already exists runs what its body says. Under a rule
/// denying DROP and TRUNCATE (the shipped example's `no-drop`) a SQL function that drops, a
/// PL/pgSQL function running dynamic SQL, one that truncates and one that reads a server
/// file each do their damage directly, and none through the gateway; a harmless PL/pgSQL
/// function works as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_bodies_count_as_part_of_the_statement() {
    let cluster = cluster_with_victims().await;
    let define = |table: &str, suffix: &str| {
        format!(
            "create function f_drop{suffix}() returns int language sql as $$ drop table {table}; select 1 $$;
             create function f_exec{suffix}(t text) returns int language plpgsql as $$ begin execute 'dr' || 'op table ' || t; return 1; end $$;
             create function f_trunc{suffix}() returns int language sql as $$ truncate {table}; select 1 $$;"
        )
    };
    direct(
        &cluster,
        &(define("scratch_a", "_s")
            + "create function f_read() returns text language plpgsql stable as $$ begin return pg_read_file('PG_VERSION'); end $$;
               create function f_count() returns bigint language plpgsql stable as $$ begin return (select count(*) from victims); end $$;"),
    );
    direct(&cluster, &define("victims", ""));
    // The damage, directly.
    direct(
        &cluster,
        "create table scratch_a (id int); create table scratch_b (id int)",
    );
    direct(&cluster, "select f_drop_s()");
    assert!(
        !exists(&cluster, "scratch_a"),
        "f_drop_s did no damage directly"
    );
    direct(&cluster, "select f_exec_s('scratch_b')");
    assert!(
        !exists(&cluster, "scratch_b"),
        "f_exec_s did no damage directly"
    );
    direct(
        &cluster,
        "create table scratch_a (id int); insert into scratch_a values (1)",
    );
    direct(&cluster, "select f_trunc_s()");
    assert_eq!(direct(&cluster, "select count(*) from scratch_a"), "0");
    assert!(
        !direct(&cluster, "select f_read()").is_empty(),
        "no file read directly"
    );

    let rules = r#"
[policy]
[[policy.rules]]
name = "no-drop"
statements = ["drop", "truncate"]
action = "deny"
[[policy.rules]]
name = "no-files"
functions = ["pg_read_file"]
action = "deny"
"#;
    let (_gateway, gw, _admin, _dir) = start(&cluster, rules).await;
    let alice = || PgWire::connect(gw, "alice", "app", ALICE).unwrap();
    for (sql, rule) in [
        ("select f_drop()", "no-drop"),
        ("select f_exec('victims')", "dynamic-sql"),
        ("select f_trunc()", "no-drop"),
        ("select f_read()", "no-files"),
        ("select 1 from (select f_drop()) s", "no-drop"),
    ] {
        let replies = alice().simple(sql).unwrap();
        refused_by(&replies, sql, rule);
    }
    assert!(exists(&cluster, "victims"), "victims was dropped");
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");
    // A harmless PL/pgSQL function: as directly.
    let replies = alice().simple("select f_count()").unwrap();
    assert!(!refused(&replies), "{replies:?}");

    // Operators bound to a file read and to pg_terminate_backend(int, bigint): the damage
    // directly, none through the gateway.
    direct(
        &cluster,
        "create operator ~~~ (rightarg = text, function = pg_read_file);
         create operator @@@ (leftarg = int, rightarg = bigint, function = pg_terminate_backend)",
    );
    assert!(!direct(&cluster, "select ~~~ 'PG_VERSION'").is_empty());
    // The child is handed back to the caller, which waits for it (or kills and waits).
    #[allow(clippy::zombie_processes)]
    let sleeper = || {
        let mut child = cluster
            .psql("app")
            .args(["-c", "select pg_sleep(60)"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pid = direct(
                &cluster,
                "select pid from pg_stat_activity where query = 'select pg_sleep(60)' limit 1",
            );
            if !pid.is_empty() {
                return (child, pid);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the sleeper never started");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (mut first, pid) = sleeper();
    assert_eq!(direct(&cluster, &format!("select {pid} @@@ 0")), "t");
    assert!(
        !first.wait().unwrap().success(),
        "the sleeper was not ended directly"
    );
    let (mut second, pid) = sleeper();
    for (sql, rule) in [
        ("select ~~~ 'PG_VERSION'".to_owned(), "no-files"),
        (format!("select {pid} @@@ 0"), "own-backend-only"),
    ] {
        let replies = alice().simple(&sql).unwrap();
        refused_by(&replies, &sql, rule);
    }
    assert!(
        second.try_wait().unwrap().is_none(),
        "the sleeper was ended"
    );
    let _ = second.kill();
    let _ = second.wait();
}

/// Issue 17, class 5: a rule on a table rewrites writes to it. `CREATE RULE … ON INSERT TO
/// t_log DO ALSO DELETE FROM victims` (made by a DBA) turns an INSERT into a DELETE too:
/// directly it deletes; through the gateway the INSERT is judged with the rule's action and
/// refused under a rule denying deletes, while an INSERT into a table without rules works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_tables_count_as_part_of_the_write() {
    let cluster = cluster_with_victims().await;
    direct(
        &cluster,
        "create table t_log (id int); create table scratch_r (id int);
         insert into scratch_r values (1), (2);
         create rule r_scratch as on insert to t_log do also delete from scratch_r",
    );
    direct(&cluster, "insert into t_log values (1)");
    assert_eq!(
        direct(&cluster, "select count(*) from scratch_r"),
        "0",
        "the rule did no damage directly"
    );
    direct(
        &cluster,
        "drop rule r_scratch on t_log;
         create rule r_wipe as on insert to t_log do also delete from victims",
    );
    let rules = r#"
[policy]
[[policy.rules]]
name = "no-deletes"
statements = ["delete"]
action = "deny"
"#;
    let (_gateway, gw, _admin, _dir) = start(&cluster, rules).await;
    let alice = || PgWire::connect(gw, "alice", "app", ALICE).unwrap();
    let replies = alice().simple("insert into t_log values (2)").unwrap();
    refused_by(&replies, "insert into t_log values (2)", "no-deletes");
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");
    let replies = alice().simple("insert into other values (1)").unwrap();
    assert!(!refused(&replies), "{replies:?}");
}

/// Issue 17, class 5: code the database runs without the statement naming it. A trigger
/// whose PL/pgSQL function calls another that deletes, an aggregate whose transition
/// function reads a server file, a cast and a domain check bound to such functions, and an
/// event trigger that deletes on every DDL each do their damage directly; through the
/// gateway each statement is judged with that code and refused, while the same statements
/// without it work as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_the_database_runs_implicitly_counts_as_part_of_the_statement() {
    let cluster = cluster_with_victims().await;
    direct(
        &cluster,
        "create table scratch_t (id int); insert into scratch_t values (1), (2);
         create table t_trig (id int); create table t_plain (id int);
         create function f_inner() returns void language plpgsql as $$ begin delete from scratch_t; end $$;
         create function f_trig() returns trigger language plpgsql as $$ begin perform f_inner(); return new; end $$;
         create trigger t_wipe after insert on t_trig for each row execute function f_trig();
         create function f_step(state text, v text) returns text language sql
           as $$ select coalesce(state, '') || pg_read_file(v) $$;
         create aggregate f_agg(text) (sfunc = f_step, stype = text);
         create type t_secret as (v text);
         create function f_cast(text) returns t_secret language sql
           as $$ select row(pg_read_file($1))::t_secret $$;
         create cast (text as t_secret) with function f_cast(text);",
    );
    // The damage, directly.
    direct(&cluster, "insert into t_trig values (1)");
    assert_eq!(
        direct(&cluster, "select count(*) from scratch_t"),
        "0",
        "the trigger did no damage directly"
    );
    let version = direct(&cluster, "show server_version_num");
    let major = &version[..2];
    assert!(
        direct(&cluster, "select f_agg('PG_VERSION')").starts_with(major),
        "the aggregate read no file directly"
    );
    assert!(
        direct(&cluster, "select ('PG_VERSION'::text)::t_secret").contains(major),
        "the cast read no file directly"
    );
    direct(
        &cluster,
        "insert into scratch_t values (1);
         create function f_check(v text) returns bool language plpgsql as $$ begin delete from scratch_t; return true; end $$;
         create domain d_checked as text check (f_check(value))",
    );
    direct(&cluster, "select 'x'::d_checked");
    assert_eq!(
        direct(&cluster, "select count(*) from scratch_t"),
        "0",
        "the domain check did no damage directly"
    );
    direct(
        &cluster,
        "insert into scratch_t values (1);
         create function f_evt() returns event_trigger language plpgsql as $$ begin delete from scratch_t; end $$;
         create event trigger e_wipe on ddl_command_end execute function f_evt();
         create table scratch_ddl (id int)",
    );
    assert_eq!(
        direct(&cluster, "select count(*) from scratch_t"),
        "0",
        "the event trigger did no damage directly"
    );
    // Now aimed at the victims.
    direct(
        &cluster,
        "drop event trigger e_wipe; drop domain d_checked; drop cast (text as t_secret);
         create or replace function f_inner() returns void language plpgsql as $$ begin delete from victims; end $$;
         create or replace function f_check(v text) returns bool language plpgsql as $$ begin delete from victims; return true; end $$;
         create or replace function f_evt() returns event_trigger language plpgsql as $$ begin delete from victims; end $$",
    );
    let rules = r#"
[policy]
[[policy.rules]]
name = "no-deletes"
statements = ["delete"]
action = "deny"
[[policy.rules]]
name = "no-files"
functions = ["pg_read_file"]
action = "deny"
"#;
    // Each kind of code on its own (a cast or domain check applies to every statement, so
    // each phase has a gateway of its own, with a catalog read afresh).
    let phase = |denied: &'static [(&'static str, &'static str)],
                 allowed: &'static [&'static str]| {
        let cluster = &cluster;
        async move {
            let (_gateway, gw, _admin, _dir) = start(cluster, rules).await;
            let alice = || PgWire::connect(gw, "alice", "app", ALICE).unwrap();
            for (sql, rule) in denied {
                let replies = alice().simple(sql).unwrap();
                refused_by(&replies, sql, rule);
            }
            for sql in allowed {
                let replies = alice().simple(sql).unwrap();
                assert!(!refused(&replies), "{sql}: {replies:?}");
            }
        }
    };
    phase(
        &[
            ("insert into t_trig values (2)", "no-deletes"),
            ("select f_agg('PG_VERSION')", "no-files"),
        ],
        &[
            "insert into t_plain values (2)",
            "select count(id) from t_plain",
            "select 'PG_VERSION'::text",
            "create table scratch_gw (id int)",
        ],
    )
    .await;
    assert!(exists(&cluster, "scratch_gw"));
    direct(
        &cluster,
        "create event trigger e_wipe on ddl_command_end execute function f_evt()",
    );
    phase(
        &[("create table scratch_gw2 (id int)", "no-deletes")],
        &["insert into t_plain values (3)"],
    )
    .await;
    direct(
        &cluster,
        "drop event trigger e_wipe; create cast (text as t_secret) with function f_cast(text)",
    );
    phase(
        &[("select ('PG_VERSION'::text)::t_secret", "no-files")],
        &[],
    )
    .await;
    direct(
        &cluster,
        "drop cast (text as t_secret); create domain d_checked as text check (f_check(value))",
    );
    phase(&[("select 'x'::d_checked", "no-deletes")], &[]).await;
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");
    assert!(!exists(&cluster, "scratch_gw2"));
}

/// A catalog the database does not answer holds no command for long: with `pg_aggregate` locked
/// by another session, a statement calling a function the gateway has not looked up yet is
/// refused (rule `catalog`) once the catalog query is given up, the session stays usable, and
/// once the lock is gone the same statement runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_the_database_does_not_answer_refuses_the_command_and_recovers() {
    let cluster = cluster_with_victims().await;
    direct(
        &cluster,
        "create function f_plain() returns int language sql stable as $$ select 1 $$",
    );
    let rules = "[policy]\n[[policy.rules]]\nname = \"no-deletes\"\nstatements = [\"delete\"]\naction = \"deny\"\n";
    let (_gateway, gw, _admin, _dir) = start(&cluster, rules).await;
    let mut alice = PgWire::connect(gw, "alice", "app", ALICE).unwrap();
    assert!(!refused(&alice.simple("select 1").unwrap()));
    let mut locker = direct_wire(&cluster);
    let replies = locker
        .simple("begin; lock table pg_catalog.pg_aggregate in access exclusive mode")
        .unwrap();
    assert!(!refused(&replies), "{replies:?}");
    let replies = tokio::task::spawn_blocking(move || {
        let replies = alice.simple("select f_plain()").unwrap();
        (alice, replies)
    })
    .await
    .unwrap();
    let (mut alice, replies) = replies;
    refused_by(&replies, "select f_plain()", "catalog");
    drop(locker);
    let replies = alice.simple("select f_plain()").unwrap();
    assert!(!refused(&replies), "{replies:?}");
}
