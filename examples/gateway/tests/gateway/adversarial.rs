//! The adversarial suite: every attack statement crossed with every way of delivering it on
//! the wire. Each case first runs on a direct connection, where it must do the damage (a
//! table dropped, emptied or changed, a server file read) — a case that does none directly
//! proves nothing and fails the suite — then through the gateway as an identity whose rules
//! forbid it, where it must do none. Benign twins of the same forms must behave through the
//! gateway exactly as they do directly.

use std::time::Duration;

use portcullis_testkit::wire::{BackendMsg, PgWire, msg};

use super::policy::{ALICE, cluster_with_victims, start};

/// The rules of the hostile suites (this one, hostile.rs and the differential fuzzer): drops, TRUNCATE
/// and `admin` denied, unbounded writes held for an approval that times out.
pub(super) const RULES: &str = r#"
[policy]
on_unparsed = "deny"
[[policy.rules]]
name = "no-drops"
statements = ["drop", "truncate"]
action = "deny"
[[policy.rules]]
name = "no-admin"
statements = ["admin"]
action = "deny"
[[policy.rules]]
name = "unbounded-writes"
statements = ["delete", "update"]
without_where = true
action = "approve"
approvers = ["dba"]
[approvals]
timeout = "300ms"
"#;

/// An attack on table `{t}` (`{f}` is a name unique to the case).
struct Attack {
    sql: &'static str,
    /// Several statements: only forms that carry a query string apply.
    multi: bool,
    /// The damage is a server file in the reply, not a changed table.
    reads_file: bool,
}

const fn table(sql: &'static str) -> Attack {
    Attack {
        sql,
        multi: false,
        reads_file: false,
    }
}

const fn multi(sql: &'static str) -> Attack {
    Attack {
        sql,
        multi: true,
        reads_file: false,
    }
}

const fn file(sql: &'static str) -> Attack {
    Attack {
        sql,
        multi: false,
        reads_file: true,
    }
}

const ATTACKS: &[Attack] = &[
    table("DROP TABLE {t}"),
    table("DROP TABLE public.{t}"),
    table("DROP TABLE app.public.\"{t}\""),
    table("TRUNCATE {t}"),
    table("TRUNCATE ONLY public.{t}"),
    table("DELETE FROM {t}"),
    table("DELETE FROM {t} WHERE true"),
    table("DELETE FROM {t} WHERE 1 = 1"),
    table("UPDATE {t} SET name = 'pwned'"),
    table("UPDATE {t} SET name = 'pwned' WHERE 'a' = 'a'"),
    table("INSERT INTO {t} VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET name = 'pwned'"),
    table("ALTER TABLE {t} DROP COLUMN name"),
    table("DO $$BEGIN EXECUTE 'DROP TABLE {t}'; END$$"),
    table("WITH d AS (DELETE FROM {t} RETURNING 1) SELECT count(*) FROM d"),
    table("EXPLAIN ANALYZE DELETE FROM {t}"),
    table("COPY (DELETE FROM {t} RETURNING id) TO STDOUT"),
    multi("PREPARE {f} AS DELETE FROM {t}; EXECUTE {f}"),
    multi(
        "CREATE FUNCTION {f}() RETURNS int LANGUAGE sql AS 'DELETE FROM {t} RETURNING 1'; SELECT {f}()",
    ),
    file("SELECT pg_read_file('PG_VERSION')"),
    file("SELECT pg_catalog.pg_read_file('PG_VERSION')"),
    file("SELECT * FROM pg_read_file('PG_VERSION')"),
];

/// How the attack travels.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// A simple Query.
    Simple,
    /// A simple Query after an allowed statement in the same string.
    AfterAllowed,
    /// A simple Query, one byte per write.
    Bytewise,
    /// Pipelined behind an allowed query still running.
    Pipelined,
    /// Parse/Bind/Execute/Sync.
    Extended,
    /// Parse of a name, then a second Parse of the same name (refused by the server), then
    /// Bind/Execute of the name: the server runs the first text.
    ReusedName,
    /// Parse in one batch, Bind/Execute in a later one.
    BoundLater,
    /// Parse/Bind/Execute, Parse/Bind/Execute COMMIT, Terminate, without Sync.
    BehindTerminate,
    /// Parse/Bind/Execute, Parse/Bind/Execute COMMIT, FunctionCall, without Sync.
    BehindFunctionCall,
}

const FORMS: &[Form] = &[
    Form::Simple,
    Form::AfterAllowed,
    Form::Bytewise,
    Form::Pipelined,
    Form::Extended,
    Form::ReusedName,
    Form::BoundLater,
    Form::BehindTerminate,
    Form::BehindFunctionCall,
];

impl Form {
    fn carries_query_strings(self) -> bool {
        matches!(
            self,
            Form::Simple | Form::AfterAllowed | Form::Bytewise | Form::Pipelined
        )
    }

    /// The writes, and where the reply ends.
    fn writes(self, sql: &str, name: &str) -> (Vec<Vec<u8>>, Finish) {
        match self {
            Form::Simple => (vec![msg::query(sql)], Finish::Ready(1)),
            Form::AfterAllowed => (
                vec![msg::query(&format!("SELECT 1; {sql}"))],
                Finish::Ready(1),
            ),
            Form::Bytewise => (
                msg::query(sql).into_iter().map(|b| vec![b]).collect(),
                Finish::Ready(1),
            ),
            Form::Pipelined => (
                vec![[msg::query("SELECT pg_sleep(0.1)"), msg::query(sql)].concat()],
                Finish::Ready(2),
            ),
            Form::Extended => (
                vec![[msg::pbe(sql), msg::sync()].concat()],
                Finish::Ready(1),
            ),
            Form::ReusedName => (
                vec![
                    [
                        msg::parse(name, sql),
                        msg::sync(),
                        msg::parse(name, "SELECT 1"),
                        msg::sync(),
                        msg::bind("", name, &[]),
                        msg::execute(""),
                        msg::sync(),
                    ]
                    .concat(),
                ],
                Finish::Ready(3),
            ),
            Form::BoundLater => (
                vec![
                    [msg::parse(name, sql), msg::sync()].concat(),
                    [msg::bind("", name, &[]), msg::execute(""), msg::sync()].concat(),
                ],
                Finish::Ready(2),
            ),
            Form::BehindTerminate => (
                vec![[msg::pbe(sql), msg::pbe("COMMIT"), msg::terminate()].concat()],
                Finish::Closed,
            ),
            Form::BehindFunctionCall => (
                vec![
                    [
                        msg::pbe(sql),
                        msg::pbe("COMMIT"),
                        msg::function_call(2026, &[]),
                    ]
                    .concat(),
                ],
                Finish::ReadyUnsynced,
            ),
        }
    }
}

/// Where a reply ends.
#[derive(Debug, Clone, Copy)]
enum Finish {
    /// After this many ReadyForQuery.
    Ready(usize),
    /// After one ReadyForQuery, or at an error: the batch before it has no Sync, so after an
    /// error the server skips everything until one (a FunctionCall too), exactly as on a
    /// direct connection.
    ReadyUnsynced,
    /// When the other side closes.
    Closed,
}

/// Send `writes` and read the reply: `ready` ReadyForQuery messages, or until the other side
/// closes (a refusal may also close the session early).
fn exchange(wire: &mut PgWire, writes: &[Vec<u8>], ready: Finish) -> Vec<BackendMsg> {
    for w in writes {
        if wire.send(w).is_err() {
            break;
        }
    }
    let (n, unsynced) = match ready {
        Finish::Closed => return wire.until_closed(Duration::from_secs(10)),
        Finish::Ready(n) => (n, false),
        Finish::ReadyUnsynced => (1, true),
    };
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < n {
        match wire.recv() {
            Ok(m) => {
                seen += usize::from(m.tag == b'Z');
                let unsynced_error = unsynced && m.tag == b'E';
                out.push(m);
                if unsynced_error {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

/// A trusted connection straight to the server.
struct Direct(PgWire);

impl Direct {
    fn value(&mut self, sql: &str) -> String {
        let messages = self.0.simple(sql).unwrap();
        if let Some(e) = messages.iter().find(|m| m.tag == b'E') {
            panic!("{sql}: {:?}", e.field(b'M'));
        }
        let Some(row) = messages.iter().find(|m| m.tag == b'D') else {
            return String::new();
        };
        let body = &row.body;
        let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
        if len < 0 {
            return "null".into();
        }
        String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
    }

    /// The table's rows, or `gone`.
    fn state(&mut self, table: &str) -> String {
        if self.value(&format!("select to_regclass('public.{table}') is not null")) != "t" {
            return "gone".into();
        }
        self.value(&format!(
            "select string_agg(to_jsonb(r)::text, ',' order by r.id) from {table} r"
        ))
    }
}

fn fill(template: &str, table: &str, name: &str) -> String {
    template.replace("{t}", table).replace("{f}", name)
}

fn reads_file(replies: &[BackendMsg], content: &str) -> bool {
    replies.iter().any(|m| {
        m.tag == b'D'
            && m.body
                .windows(content.len())
                .any(|w| w == content.as_bytes())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_in_every_form_does_damage_directly_and_none_through_the_gateway() {
    let cluster = cluster_with_victims().await;
    let connect_direct = || {
        PgWire::connect_unix(cluster.socket_dir(), cluster.port(), cluster.user(), "app").unwrap()
    };
    let mut direct = Direct(connect_direct());
    let version_file = direct.value("select pg_read_file('PG_VERSION')");

    let cases: Vec<(usize, &Attack, Form)> = ATTACKS
        .iter()
        .flat_map(|a| FORMS.iter().map(move |f| (a, *f)))
        .filter(|(a, f)| !a.multi || f.carries_query_strings())
        // Behind Terminate the server drops its buffered replies: a file read there reaches
        // no client, directly or not.
        .filter(|(a, f)| !(a.reads_file && matches!(f, Form::BehindTerminate)))
        .enumerate()
        .map(|(i, (a, f))| (i, a, f))
        .collect();
    let mut setup = String::new();
    for (i, _, _) in &cases {
        for side in ["d", "g"] {
            setup += &format!(
                "create table {side}{i} (id int primary key, name text); \
                 insert into {side}{i} values (1, 'a'), (2, 'b'), (3, 'c');"
            );
        }
    }
    direct.value(&setup);
    let whole = direct.state("d0");

    let (_gateway, gw, _admin, _dir) = start(&cluster, RULES).await;
    let mut failures = Vec::new();
    for (i, attack, form) in &cases {
        let started = std::time::Instant::now();
        // Directly: the damage is done.
        let (table, name) = (format!("d{i}"), format!("fd{i}"));
        let sql = fill(attack.sql, &table, &name);
        let (writes, ready) = form.writes(&sql, &name);
        let replies = exchange(&mut connect_direct(), &writes, ready);
        let damaged = if attack.reads_file {
            reads_file(&replies, &version_file)
        } else {
            direct.state(&table) != whole
        };
        if !damaged {
            failures.push(format!(
                "case {i} {form:?} {sql:?}: no damage on a direct connection (the case proves nothing): {:?}",
                replies.iter().map(|m| (m.tag as char, m.field(b'M'))).collect::<Vec<_>>()
            ));
            continue;
        }

        // Through the gateway: none.
        let (table, name) = (format!("g{i}"), format!("fg{i}"));
        let sql = fill(attack.sql, &table, &name);
        let (writes, ready) = form.writes(&sql, &name);
        let mut wire = PgWire::connect(gw, "alice", "app", ALICE).unwrap();
        let replies = exchange(&mut wire, &writes, ready);
        let damaged = if attack.reads_file {
            reads_file(&replies, &version_file)
        } else {
            let now = direct.state(&table);
            (now != whole).then_some(now).is_some()
        };
        if damaged {
            failures.push(format!(
                "case {i} {form:?} {sql:?}: damage through the gateway (table now {})",
                direct.state(&table)
            ));
        }
        if started.elapsed() > Duration::from_secs(2) {
            eprintln!("slow case {i} {form:?} {sql:?}: {:?}", started.elapsed());
        }
    }
    eprintln!(
        "adversarial suite: {} cases, {} failures",
        cases.len(),
        failures.len()
    );
    assert!(cases.len() >= 150, "{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What a reply says, without what legitimately differs between a direct connection and the
/// gateway (parameter reports, notices, key data, the table OIDs of a row description, an
/// error's text beyond its code).
fn gist(replies: &[BackendMsg]) -> Vec<String> {
    replies
        .iter()
        .filter(|m| !matches!(m.tag, b'S' | b'N' | b'K'))
        .map(|m| match m.tag {
            b'E' => format!("E {}", m.sqlstate().unwrap_or_default()),
            b'T' => "T".into(),
            _ => format!("{} {:?}", m.tag as char, String::from_utf8_lossy(&m.body)),
        })
        .collect()
}

const BENIGN: &[Attack] = &[
    table("SELECT name FROM {t} WHERE id = 2"),
    table("UPDATE {t} SET name = 'b' WHERE id = 2"),
    table("DELETE FROM {t} WHERE id = 99"),
    table("INSERT INTO {t} VALUES (1, 'a') ON CONFLICT (id) DO NOTHING"),
    table("SELECT set_config('application_name', 'twin', false)"),
    table("SET application_name = 'twin'"),
    multi("PREPARE {f} AS SELECT name FROM {t} WHERE id = 3; EXECUTE {f}; DEALLOCATE {f}"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benign_twins_behave_through_the_gateway_exactly_as_directly() {
    let cluster = cluster_with_victims().await;
    let connect_direct = || {
        PgWire::connect_unix(cluster.socket_dir(), cluster.port(), cluster.user(), "app").unwrap()
    };
    let mut direct = Direct(connect_direct());
    let cases: Vec<(usize, &Attack, Form)> = BENIGN
        .iter()
        .flat_map(|a| FORMS.iter().map(move |f| (a, *f)))
        // A FunctionCall is `admin` for this identity: not a benign form here.
        .filter(|(a, f)| {
            (!a.multi || f.carries_query_strings()) && !matches!(f, Form::BehindFunctionCall)
        })
        .enumerate()
        .map(|(i, (a, f))| (i, a, f))
        .collect();
    let mut setup = String::new();
    for (i, _, _) in &cases {
        setup += &format!(
            "create table t{i} (id int primary key, name text); \
             insert into t{i} values (1, 'a'), (2, 'b'), (3, 'c');"
        );
    }
    direct.value(&setup);
    let (_gateway, gw, _admin, _dir) = start(&cluster, RULES).await;
    let mut failures = Vec::new();
    for (i, twin, form) in &cases {
        let (table, name) = (format!("t{i}"), format!("q{i}"));
        let sql = fill(twin.sql, &table, &name);
        let (writes, ready) = form.writes(&sql, &name);
        let there = gist(&exchange(&mut connect_direct(), &writes, ready));
        let mut wire = PgWire::connect(gw, "alice", "app", ALICE).unwrap();
        let here = gist(&exchange(&mut wire, &writes, ready));
        // Behind Terminate the gateway flushes the batch before it (the server would keep its
        // last replies buffered and drop them): the client, which reads nothing after
        // Terminate, may be sent more than directly, never anything else.
        let same = match form {
            Form::BehindTerminate => {
                here.starts_with(&there) && !here[there.len()..].iter().any(|m| m.starts_with('E'))
            }
            _ => here == there,
        };
        if !same {
            failures.push(format!(
                "case {i} {form:?} {sql:?}:\n  direct  {there:?}\n  gateway {here:?}"
            ));
        }
    }
    eprintln!(
        "benign twins: {} cases, {} differ",
        cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
