//! The embed example, run as its README says against a real PostgreSQL: a client gets through
//! with the token, and the audit records arrive on stdout, sealed on Ctrl-C.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use portcullis_testkit::{PgCluster, free_port};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_audit_in_front_of_postgresql() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis-example-embed"))
        .env("EMBED_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "EMBED_UPSTREAM",
            format!("{}:{}", cluster.host(), cluster.port()),
        )
        .env("EMBED_USER", cluster.user())
        .env("EMBED_PASSWORD", cluster.password())
        .env("EMBED_TOKEN", "let-me-in")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
        .await
        .expect("the example starts")
        .unwrap()
        .unwrap();
    assert!(line.starts_with("embed: listening on 127.0.0.1:"), "{line}");

    let conninfo = format!("host=127.0.0.1 port={port} user=me dbname=app");
    let (client, connection) = tokio_postgres::connect(
        &format!("{conninfo} password=let-me-in"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let driver = tokio::spawn(connection);
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    driver.await.unwrap().unwrap();
    let wrong =
        tokio_postgres::connect(&format!("{conninfo} password=nope"), tokio_postgres::NoTls)
            .await
            .err()
            .expect("a wrong token is refused");
    assert_eq!(
        wrong.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("Ctrl-C stops the example")
        .unwrap();
    assert!(status.success(), "{status}");

    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    for kind in [
        "session_start",
        "command",
        "outcome",
        "session_end",
        "connection",
    ] {
        assert!(kinds.contains(&kind), "no {kind} record in {kinds:?}");
    }
    let start = records
        .iter()
        .find(|r| r["type"] == "session_start")
        .unwrap();
    assert_eq!(start["identity"], "embed-client");
    assert!(out.contains("select 1"), "{out}");
    assert_eq!(
        kinds.last(),
        Some(&"checkpoint"),
        "the trail is sealed: {kinds:?}"
    );
}
