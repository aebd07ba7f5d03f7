//! Guardrails and approvals through the `portcullis` binary, against a real PostgreSQL, with
//! psql and tokio-postgres.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use portcullis_identity::hash_token;
use portcullis_testkit::{PgCluster, free_port};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::corpus::{MUST_BLOCK, MUST_PASS};
use super::{Gateway, cli, code_of};

pub(super) const ALICE: &str = "alice-token-0123456789";
pub(super) const DANA: &str = "dana-token-0123456789";
const BOB: &str = "bob-token-0123456789";

pub(super) async fn cluster_with_victims() -> PgCluster {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let out = cluster
        .psql("app")
        .args([
            "-c",
            "create table victims (id int primary key, name text);
             insert into victims values (1, 'a'), (2, 'b'), (3, 'c');
             create table other (id int); create table staging (id int, name text);
             create table src (id int); create table log (line text);",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
}

/// A gateway config for `cluster` with alice (dev), dana and bob (dba), and `extra`.
fn config(gw: u16, admin: u16, cluster: &PgCluster, extra: &str) -> String {
    let mut text = super::config_text(gw, admin, cluster, &[]);
    for (name, token, group) in [
        ("alice", ALICE, "dev"),
        ("dana", DANA, "dba"),
        ("bob", BOB, "dba"),
    ] {
        text += &format!(
            "\n[[identity.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\ngroups = [\"{group}\"]\n",
            hash_token(token)
        );
    }
    text + "\n" + extra
}

pub(super) async fn start(
    cluster: &PgCluster,
    extra: &str,
) -> (Gateway, u16, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (gw, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, config(gw, admin, cluster, extra)).unwrap();
    let gateway = Gateway::started(&path, dir.path(), cluster.password(), admin).await;
    (gateway, gw, admin, dir)
}

/// psql through the gateway as `user`.
pub(super) fn psql(cluster: &PgCluster, port: u16, user: &str, token: &str) -> Command {
    let mut cmd = cluster.psql("app");
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", user)
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "disable");
    cmd
}

/// Rows of `sql` straight from the database (not through the gateway).
pub(super) fn direct(cluster: &PgCluster, sql: &str) -> String {
    let out = cluster
        .psql("app")
        .args(["-At", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A tokio-postgres client through the gateway, and the notices it receives.
async fn connect_watching(
    port: u16,
    user: &str,
    token: &str,
) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<String>) {
    let conninfo = format!("host=127.0.0.1 port={port} user={user} password={token} dbname=app");
    let (client, mut connection) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notice(n)) => {
                    let _ = tx.send(format!(
                        "{} | {}",
                        n.message(),
                        n.hint().unwrap_or_default()
                    ));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

/// The request id in an approval notice.
fn request_id(notice: &str) -> String {
    let rest = notice
        .split("request ")
        .nth(1)
        .unwrap_or_else(|| panic!("no request id in {notice:?}"));
    rest.split_whitespace().next().unwrap().to_owned()
}

async fn next_notice(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no approval notice within 20 s")
        .expect("the connection ended")
}

pub(super) fn approvals(admin: u16, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let url = format!("http://127.0.0.1:{admin}");
    let mut all = vec!["approvals"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--admin", &url, "--token", token]);
    cli(&all)
}

fn listed(admin: u16, token: &str, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["list", "--json"];
    if all {
        args.push("--all");
    }
    let (code, out, err) = approvals(admin, token, &args);
    assert_eq!(code, Some(0), "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// The first pending approval request `token` can see, once there is one (30 s at most).
pub(super) async fn first_pending(
    gateway: &mut Gateway,
    admin: u16,
    token: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = listed(admin, token, false).into_iter().next() {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no approval request\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_blocks_the_corpus_and_keeps_transactions_in_step() {
    let cluster = cluster_with_victims().await;
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let rules = format!(
        r#"
[policy]
on_unparsed = "deny"
[[policy.rules]]
name = "watch-victims"
tables = ["public.victims"]
statements = ["write"]
action = "deny"
mode = "detect"
[[policy.rules]]
name = "dba-may-set"
groups = ["dba"]
statements = ["set"]
action = "allow"
[[policy.rules]]
name = "no-deletes"
statements = ["delete", "truncate"]
action = "deny"
[[policy.rules]]
name = "no-drops"
statements = ["drop", "grant"]
action = "deny"
[[policy.rules]]
name = "no-admin"
statements = ["admin"]
action = "deny"
message = "administration is not allowed through the gateway"

[audit]
on_failure = "refuse"
[[audit.sinks]]
kind = "jsonl"
path = "{}"
"#,
        trail.display()
    );
    let (mut gateway, gw, admin, _dir) = start(&cluster, &rules).await;

    // Simple protocol, with psql: every bypass style is blocked, every benign statement passes.
    let mut missed = Vec::new();
    for sql in MUST_BLOCK {
        let out = psql(&cluster, gw, "alice", ALICE)
            .args(["-c", sql])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("blocked by rule") {
            missed.push(format!("{sql:?}: {err}"));
        }
    }
    assert!(
        missed.is_empty(),
        "not blocked through the gateway:\n{}",
        missed.join("\n")
    );
    // Each refusal counts as a command error, as MySQL's do.
    let errors = super::metric(admin, "portcullis_command_errors_total{listener=\"main\"} ")
        .await
        .unwrap_or_default();
    assert!(
        errors >= MUST_BLOCK.len() as u64,
        "{errors} command errors for {} refused statements",
        MUST_BLOCK.len()
    );
    let mut wrongly = Vec::new();
    for sql in MUST_PASS {
        let out = psql(&cluster, gw, "alice", ALICE)
            .args(["-c", sql])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("blocked by rule") {
            wrongly.push(format!("{sql:?}: {err}"));
        }
    }
    assert!(
        wrongly.is_empty(),
        "blocked through the gateway:\n{}",
        wrongly.join("\n")
    );

    // Extended protocol (Parse/Bind/Execute), with tokio-postgres.
    let (client, _notices) = connect_watching(gw, "alice", ALICE).await;
    for sql in MUST_BLOCK {
        match client.execute(*sql, &[]).await {
            Err(e)
                if code_of(&e)
                    == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {}
            other => panic!("{sql:?} through the extended protocol: {other:?}"),
        }
    }
    // A blocked statement reads as "blocked by rule" with the rule's message.
    let e = client.batch_execute("vacuum victims").await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(
        db.message(),
        "blocked by rule \"no-admin\": administration is not allowed through the gateway"
    );

    // SQL-level PREPARE / EXECUTE: EXECUTE is judged as what it runs when the PREPARE was
    // seen in this session, and refused (rule `unknown-statement`) otherwise.
    client
        .batch_execute("prepare sel as select * from victims")
        .await
        .unwrap();
    client.batch_execute("execute sel").await.unwrap();
    let e = client
        .batch_execute("prepare del as delete from victims")
        .await
        .unwrap_err();
    assert!(
        e.as_db_error().unwrap().message().contains("no-deletes"),
        "{e:?}"
    );
    let e = client.batch_execute("execute del").await.unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("unknown-statement"),
        "{e:?}"
    );

    // The victims are all there.
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");
    assert_eq!(
        direct(
            &cluster,
            "select count(*) from pg_namespace where nspname = 'public'"
        ),
        "1"
    );

    // Inside a transaction block, a blocked statement fails the transaction on both sides:
    // the database refuses what follows, and COMMIT rolls back.
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute("insert into victims values (10, 'x')")
        .await
        .unwrap();
    let e = client
        .batch_execute("drop table victims")
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&e),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let e = client.batch_execute("select 1").await.unwrap_err();
    assert_eq!(
        code_of(&e),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    client.batch_execute("commit").await.unwrap();
    assert_eq!(
        direct(&cluster, "select count(*) from victims where id = 10"),
        "0"
    );
    // The same with the extended protocol.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    tx.execute("insert into victims values (11, 'y')", &[])
        .await
        .unwrap();
    let e = tx
        .execute("delete from victims where id = 1", &[])
        .await
        .unwrap_err();
    assert_eq!(
        code_of(&e),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let e = tx.execute("select 1", &[]).await.unwrap_err();
    assert_eq!(
        code_of(&e),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    let _ = tx.commit().await;
    assert_eq!(
        direct(&cluster, "select count(*) from victims where id = 11"),
        "0"
    );
    // Outside a block the session goes on normally.
    client.batch_execute("select 1").await.unwrap();

    // standard_conforming_strings = off is followed: a backslash could hide a statement.
    let (dana, _) = connect_watching(gw, "dana", DANA).await;
    dana.batch_execute("set standard_conforming_strings = off")
        .await
        .unwrap();
    let e = dana
        .batch_execute(r"select '\''; delete from victims; --'")
        .await
        .unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("standard_conforming_strings"),
        "{e:?}"
    );
    dana.batch_execute("select 'no backslash here'")
        .await
        .unwrap();
    dana.batch_execute("set standard_conforming_strings = on")
        .await
        .unwrap();
    dana.batch_execute(r"select '\'").await.unwrap();
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");

    // The trail: refusals are recorded as refused, with the rule; detect rules as decisions.
    gateway.signal("TERM");
    gateway.wait_exit(Duration::from_secs(20), "no exit").await;
    let text = std::fs::read_to_string(&trail).unwrap();
    let refused = text
        .lines()
        .filter(|l| l.contains("\"type\":\"outcome\"") && l.contains("\"status\":\"refused\""))
        .count();
    assert!(
        refused >= MUST_BLOCK.len() * 2,
        "{refused} refused outcomes"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("\"type\":\"outcome\"") && l.contains("\"rule\":\"no-drops\""))
    );
    assert!(
        text.lines().any(|l| l.contains("\"type\":\"decision\"")
            && l.contains("watch-victims")
            && l.contains("mode = detect")),
        "no detect decision in the trail"
    );
}

/// A tiny HTTP server that takes webhook posts.
async fn webhook_receiver() -> (u16, mpsc::UnboundedReceiver<serde_json::Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    let _ = tx.send(v);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, rx)
}

const APPROVAL_RULES: &str = r#"
[policy]
[[policy.rules]]
name = "unbounded-writes"
statements = ["delete", "update"]
without_where = true
action = "approve"
approvers = ["dba"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_end_to_end_approve_deny_cancel_self_approval_and_webhook() {
    let cluster = cluster_with_victims().await;
    let (hook, mut hooks) = webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let extra = format!(
        "{APPROVAL_RULES}\n[approvals]\ntimeout = \"2m\"\n[[approvals.notify]]\nwebhook = \"http://127.0.0.1:{hook}/hook\"\n\n[audit]\n[[audit.sinks]]\nkind = \"jsonl\"\npath = \"{}\"\n",
        trail.display()
    );
    let (mut gateway, gw, admin, _dir) = start(&cluster, &extra).await;

    // 1. psql waits with a NOTICE; a DBA approves with the CLI; the DELETE runs.
    let mut child = psql(&cluster, gw, "alice", ALICE)
        .args(["-c", "delete from victims"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let notice = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("psql printed no approval NOTICE");
            if line.contains("NOTICE") {
                return (line, rx);
            }
        }
    })
    .await
    .unwrap();
    let (notice, rest) = notice;
    assert!(
        notice.contains("statement held for approval: request "),
        "{notice}"
    );
    let id = request_id(&notice);
    // Hint line: how to approve.
    let hint = rest
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    let hint = if hint.contains("HINT") {
        hint
    } else {
        rest.recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
    };
    assert!(
        hint.contains(&format!("portcullis approvals approve {id}")),
        "{hint}"
    );
    // Listed for the approver and for the requester, with the INTERFACE.md fields.
    let list = listed(admin, DANA, false);
    let entry = list
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{list:?}"));
    for key in [
        "id",
        "identity",
        "statement",
        "rule",
        "target",
        "created_at",
        "expires_at",
    ] {
        assert!(entry.get(key).is_some(), "{key} missing: {entry}");
    }
    assert_eq!(entry["statement"], "delete from victims");
    assert_eq!(entry["rule"], "unbounded-writes");
    assert_eq!(entry["identity"]["subject"], "alice");
    assert!(
        listed(admin, ALICE, false)
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
    // The webhook got it, with a Slack-style text.
    let posted = tokio::time::timeout(Duration::from_secs(20), hooks.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(posted["text"].as_str().unwrap().contains(&id), "{posted}");
    assert_eq!(posted["request"]["id"], id.as_str());
    // Alice asked: she cannot approve.
    let (code, _, err) = approvals(admin, ALICE, &["approve", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nobody approves their own request"), "{err}");
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");
    // Dana approves.
    let (code, out, err) = approvals(admin, DANA, &["approve", &id]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("approved request {id}")), "{out}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "psql failed after approval\n{}",
        gateway.logs()
    );
    assert_eq!(direct(&cluster, "select count(*) from victims"), "0");
    direct(
        &cluster,
        "insert into victims values (1, 'a'), (2, 'b'), (3, 'c')",
    );
    // Decided requests cannot be decided again.
    let (code, _, err) = approvals(admin, BOB, &["deny", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already approved"), "{err}");

    // 2. Denied: ERROR 42501 naming the request and who denied it.
    let (client, mut notices) = connect_watching(gw, "alice", ALICE).await;
    let waiting = tokio::spawn(async move {
        let r = client.batch_execute("update victims set name = 'z'").await;
        (client, r)
    });
    let id = request_id(&next_notice(&mut notices).await);
    let (code, out, err) = approvals(admin, BOB, &["deny", &id, "--reason", "not today"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (client, result) = waiting.await.unwrap();
    let e = result.unwrap_err();
    assert_eq!(
        code_of(&e),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    // The approver's reason reaches the waiting client.
    assert_eq!(
        e.as_db_error().unwrap().message(),
        format!("approval request {id} was denied by bob: not today")
    );
    assert_eq!(
        direct(&cluster, "select count(*) from victims where name = 'z'"),
        "0"
    );

    // 3. Cancelled: Ctrl-C (a CancelRequest) ends the wait with 57014.
    let cancel = client.cancel_token();
    let waiting = tokio::spawn(async move { client.batch_execute("delete from victims").await });
    let id = request_id(&next_notice(&mut notices).await);
    cancel.cancel_query(NoTls).await.unwrap();
    let e = waiting.await.unwrap().unwrap_err();
    assert_eq!(
        code_of(&e),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    let all = listed(admin, DANA, true);
    let entry = all.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(entry["state"], "withdrawn");
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");

    // 4. Nobody approves their own request; another approver can.
    let (dana, mut dana_notices) = connect_watching(gw, "dana", DANA).await;
    let waiting = tokio::spawn(async move { dana.batch_execute("delete from victims").await });
    let id = request_id(&next_notice(&mut dana_notices).await);
    let (code, _, err) = approvals(admin, DANA, &["approve", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nobody approves their own request"), "{err}");
    let (code, out, err) = approvals(admin, BOB, &["approve", &id]);
    assert_eq!(code, Some(0), "{out}{err}");
    waiting.await.unwrap().unwrap();
    assert_eq!(direct(&cluster, "select count(*) from victims"), "0");

    // The API wants a token.
    let (code, _, err) = approvals(admin, "not-a-token", &["list"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");

    // The trail: requested, approved by, denied by.
    gateway.signal("TERM");
    gateway.wait_exit(Duration::from_secs(20), "no exit").await;
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(
        text.contains("approval_requested"),
        "no approval request in the trail"
    );
    assert!(
        text.contains("approved by dana"),
        "no approval in the trail"
    );
    assert!(text.contains("approval_denied"), "no denial in the trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_time_out_and_replicas_share_a_postgres_store() {
    let cluster = cluster_with_victims().await;
    // Timeout (memory store, short timeout).
    let (_gateway, gw, _admin, _dir) = start(
        &cluster,
        &format!("{APPROVAL_RULES}\n[approvals]\ntimeout = \"1s\"\n"),
    )
    .await;
    let (client, mut notices) = connect_watching(gw, "alice", ALICE).await;
    let waiting = tokio::spawn(async move { client.batch_execute("delete from victims").await });
    let notice = next_notice(&mut notices).await;
    assert!(notice.contains("statement held for approval"), "{notice}");
    let e = waiting.await.unwrap().unwrap_err();
    assert_eq!(
        code_of(&e),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(
        e.as_db_error().unwrap().message().contains("timed out"),
        "{e:?}"
    );
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");

    // Two replicas, one PostgreSQL store: filed on A, approved through B.
    let store = format!(
        "{APPROVAL_RULES}\n[approvals]\ntimeout = \"2m\"\nstore = \"{}\"\n",
        cluster.url("app")
    );
    let (_a, gw_a, admin_a, _dir_a) = start(&cluster, &store).await;
    let (_b, _gw_b, admin_b, _dir_b) = start(&cluster, &store).await;
    let (client, mut notices) = connect_watching(gw_a, "alice", ALICE).await;
    let waiting = tokio::spawn(async move { client.batch_execute("delete from victims").await });
    let id = request_id(&next_notice(&mut notices).await);
    assert!(
        listed(admin_b, DANA, false)
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
    let (code, out, err) = approvals(admin_b, DANA, &["approve", &id]);
    assert_eq!(code, Some(0), "{out}{err}");
    waiting.await.unwrap().unwrap();
    assert_eq!(direct(&cluster, "select count(*) from victims"), "0");
    let on_a = listed(admin_a, DANA, true);
    assert_eq!(
        on_a.iter().find(|r| r["id"] == id.as_str()).unwrap()["state"],
        "approved"
    );
}

/// Issue 20: psql killed (SIGKILL) while its DELETE waits for approval. The gateway notices
/// the socket closing during the wait (it does not wait for a next read), withdraws the
/// request, and an approval that comes after changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_while_its_statement_waits_withdraws_the_request() {
    let cluster = cluster_with_victims().await;
    let extra = format!("{APPROVAL_RULES}\n[approvals]\ntimeout = \"2m\"\n");
    let (mut gateway, gw, admin, _dir) = start(&cluster, &extra).await;
    let child = psql(&cluster, gw, "alice", ALICE)
        .args(["-c", "delete from victims"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let took = killed_while_held(&mut gateway, admin, child).await;
    eprintln!("withdrawn {took:?} after the kill");
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");
}

/// Issue 20: a statement held for approval when a reload changes its token's groups (same
/// digest) is dropped at the reload — request withdrawn, session closed — and an approval
/// after the reload runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_the_requesters_token_withdraws_the_held_statement() {
    let cluster = cluster_with_victims().await;
    let extra = format!("{APPROVAL_RULES}\n[approvals]\ntimeout = \"2m\"\n");
    let (mut gateway, gw, admin, dir) = start(&cluster, &extra).await;
    let child = psql(&cluster, gw, "alice", ALICE)
        .args(["-c", "delete from victims"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pending = first_pending(&mut gateway, admin, DANA).await;
    let id = pending["id"].as_str().unwrap().to_owned();
    // Same token, other groups.
    let path = dir.path().join("portcullis.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replacen("groups = [\"dev\"]", "groups = [\"dev\", \"ops\"]", 1);
    assert_ne!(text, changed);
    std::fs::write(&path, changed).unwrap();
    gateway.signal("HUP");
    super::wait_for(&mut gateway, "the reload", || async {
        super::metric(admin, "portcullis_config_reloads_total{result=\"success\"}").await == Some(1)
    })
    .await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("now grants other groups"), "{stderr}");
    until_withdrawn(&mut gateway, admin, &id).await;
    let (code, out, err) = approvals(admin, DANA, &["approve", &id]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(direct(&cluster, "select count(*) from victims"), "3");
}

/// `child`'s statement is held for approval: kill the client (SIGKILL), wait until its
/// request is withdrawn, check that an approval after that is refused. How long the
/// withdrawal took.
pub(super) async fn killed_while_held(
    gateway: &mut Gateway,
    admin: u16,
    mut child: std::process::Child,
) -> Duration {
    let pending = first_pending(gateway, admin, DANA).await;
    let id = pending["id"].as_str().unwrap().to_owned();
    child.kill().unwrap();
    child.wait().unwrap();
    let took = until_withdrawn(gateway, admin, &id).await;
    let (code, out, err) = approvals(admin, DANA, &["approve", &id]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("withdrawn"), "{err}");
    took
}

/// Wait (10 s at most) until request `id` is withdrawn; how long that took.
async fn until_withdrawn(gateway: &mut Gateway, admin: u16, id: &str) -> Duration {
    let since = Instant::now();
    loop {
        let all = listed(admin, DANA, true);
        let state = all
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["state"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        if state == "withdrawn" {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "request {id} still {state} after {:?}\n{}",
            since.elapsed(),
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 20: no configured webhook secret appears in `/metrics` or a log line, and with
/// `[admin] metrics_token = true` `/metrics` needs a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_never_reach_metrics_or_logs_and_metrics_can_need_a_token() {
    let cluster = cluster_with_victims().await;
    let dead = free_port();
    let secrets = ["s3cretpw", "T0SECRET", "hooksecret", "qsecret"];
    let extra = format!(
        "{APPROVAL_RULES}\n[approvals]\ntimeout = \"1s\"\n\
         [[approvals.notify]]\nwebhook = \"http://user:s3cretpw@127.0.0.1:{dead}/T0SECRET/hooksecret?token=qsecret\"\n\
         [[approvals.notify]]\nname = \"slack\"\nwebhook = \"http://127.0.0.1:{dead}/services/hooksecret\"\n"
    );
    let (mut gateway, gw, admin, dir) = start(&cluster, &extra).await;
    // A held statement: both webhooks are tried, fail (nothing listens) and are counted.
    let out = psql(&cluster, gw, "alice", ALICE)
        .args(["-c", "delete from victims"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    super::wait_for(&mut gateway, "the failed deliveries", || async {
        super::metric(
            admin,
            "portcullis_approval_webhook_failed_attempts_total{webhook=\"slack\"}",
        )
        .await
        .is_some_and(|n| n > 0)
    })
    .await;
    let (status, body) = super::http_get(admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("portcullis_approval_webhooks_delivered_total{webhook=\"webhook-1\"} 0"),
        "{body}"
    );
    let logs = gateway.logs();
    assert!(logs.contains("webhook failed"), "{logs}");
    for secret in secrets {
        assert!(!body.contains(secret), "{secret} in /metrics:\n{body}");
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }

    // metrics_token = true, applied on reload: 401 without a token, 200 with any identity's.
    let path = dir.path().join("portcullis.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let with_token = text.replacen("[admin]\n", "[admin]\nmetrics_token = true\n", 1);
    assert_ne!(text, with_token);
    std::fs::write(&path, with_token).unwrap();
    gateway.signal("HUP");
    super::wait_for(&mut gateway, "the reload", || async {
        super::http_get(admin, "/metrics")
            .await
            .is_ok_and(|(status, _)| status == 401)
    })
    .await;
    let (status, body) = super::http_get_as(admin, "/metrics", Some("not-a-token"))
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = super::http_get_as(admin, "/metrics", Some(ALICE))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("portcullis_sessions_total"), "{body}");
    let (status, _) = super::http_get(admin, "/healthz").await.unwrap();
    assert_eq!(status, 200);

    // The admin listener answers every request pipelined on one connection (here three, the
    // last an approvals call refused 401), also when the client half-closes after them.
    for half_close in [false, true] {
        let answers = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut tcp = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let metrics = format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n\r\n"
            );
            let pipelined = format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{metrics}GET /approvals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n"
            );
            tcp.write_all(pipelined.as_bytes()).unwrap();
            if half_close {
                tcp.shutdown(std::net::Shutdown::Write).unwrap();
            }
            let mut all = Vec::new();
            let _ = tcp.read_to_end(&mut all);
            String::from_utf8_lossy(&all).into_owned()
        })
        .await
        .unwrap();
        let statuses: Vec<&str> = answers
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &answers[i + 9..i + 12])
            .collect();
        assert_eq!(statuses, ["200", "200", "401"], "{answers}");
    }
}
