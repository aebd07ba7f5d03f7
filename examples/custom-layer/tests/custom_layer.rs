//! The custom-layer example against a real PostgreSQL: on a (pretended) Saturday the
//! contractor is refused with the rule's message — in place, so a transaction fails as after
//! any error — staff are not, the guard and masking still apply; on a Monday nobody is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use portcullis_testkit::{PgCluster, free_port};
use tokio::io::AsyncBufReadExt;
use tokio_postgres::error::SqlState;

async fn start(cluster: &PgCluster, today: &str) -> (tokio::process::Child, u16) {
    let port = free_port();
    let mut child =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis-example-custom-layer"))
            .env("LAYER_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "LAYER_UPSTREAM",
                format!("{}:{}", cluster.host(), cluster.port()),
            )
            .env("LAYER_USER", cluster.user())
            .env("LAYER_PASSWORD", cluster.password())
            .env("LAYER_TODAY", today)
            .stdout(Stdio::null())
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
    assert!(
        line.contains("listening on") && line.contains("today is"),
        "{line}"
    );
    (child, port)
}

async fn connect(port: u16, token: &str) -> tokio_postgres::Client {
    let conninfo = format!("host=127.0.0.1 port={port} user=x dbname=app password={token}");
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queries_on_weekends_for_contractors() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL");
    let (_saturday, port) = start(&cluster, "saturday").await;

    let contractor = connect(port, "contractor-token").await;
    let e = contractor.simple_query("select 1").await.unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE);
    assert_eq!(
        db.message(),
        "blocked by rule \"no-weekends\": contractors do not query on weekends (today is Saturday)"
    );
    // Refused in place (the database ran a failing substitute): the session goes on, refused.
    assert!(contractor.simple_query("select 2").await.is_err());
    assert!(!contractor.is_closed(), "the session goes on");

    let staff = connect(port, "staff-token").await;
    let row = staff
        .query_one("select 'mail jane@example.com'", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "mail j***@example.com",
        "masking still applies"
    );
    let e = staff
        .simple_query("drop table if exists nothing")
        .await
        .unwrap_err();
    assert!(
        e.as_db_error().unwrap().message().contains("no-drop"),
        "the guard still applies"
    );

    let (_monday, port) = start(&cluster, "monday").await;
    let contractor = connect(port, "contractor-token").await;
    let rows = contractor.simple_query("select 1").await.unwrap();
    assert!(!rows.is_empty(), "weekdays are fine");
}
