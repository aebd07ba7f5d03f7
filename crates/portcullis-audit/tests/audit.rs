//! The audit layer and sinks with a real PostgreSQL, a real client (tokio-postgres) and the
//! real protocol server: write-ahead refusal, gaps, the PostgreSQL sink, rotation, crashes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use portcullis_audit::event::Gap;
use portcullis_audit::{
    AuditBatch, AuditEvent, AuditLayer, JsonlOptions, JsonlSink, Location, OnFailure,
    PostgresOptions, PostgresSink, Recorder, ShowOptions, SigningKey, SinkOptions, VerifyOptions,
    show, trail_files, verify_files, verify_records,
};
use portcullis_core::{Error, NewLayered, ReplyBody, Request, Response, Session};
use portcullis_identity::{StaticTokens, TokenEntry, hash_token};
use portcullis_postgres::{ServePg, ServePgConfig, UpstreamConfig};
use portcullis_testkit::PgCluster;
use tokio::net::TcpListener;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tower_layer::Layer;
use tower_service::Service;

const TOKEN: &str = "audit-test-token";

async fn cluster() -> PgCluster {
    tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for these tests")
}

/// A protocol server for `cluster` whose sessions are audited by `recorder`.
async fn serve(cluster: &PgCluster, recorder: &Recorder) -> SocketAddr {
    let upstream = UpstreamConfig::new(
        cluster.host(),
        cluster.port(),
        cluster.user(),
        cluster.password(),
    );
    let mut config = ServePgConfig::new("audited", upstream);
    config.allow_plaintext_tokens_on_loopback = true;
    let tokens = StaticTokens::new(vec![
        TokenEntry::new("alice", &hash_token(TOKEN), vec!["analysts".into()]).unwrap(),
    ]);
    let layer_recorder = recorder.clone();
    let stack =
        NewLayered::new(move |session: &Arc<Session>| AuditLayer::new(&layer_recorder, session));
    let server = ServePg::new(config, tokens, stack)
        .with_connection_observer(recorder.connection_observer());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            tokio::spawn(server.serve_connection(tcp, peer));
        }
    });
    addr
}

async fn connect(addr: SocketAddr) -> tokio_postgres::Client {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=alice password={TOKEN} dbname=app",
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

fn count_rows(cluster: &PgCluster, table: &str) -> String {
    let out = cluster
        .psql("app")
        .args(["-At", "-c", &format!("select count(*) from {table}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Wait until the trail file holds `records` records (the writer caught up).
async fn wait_written(path: &std::path::Path, records: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
        < records
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn shown(path: &std::path::Path) -> String {
    let mut out = Vec::new();
    show(
        &trail_files(path).unwrap(),
        &ShowOptions::default(),
        &mut out,
    )
    .unwrap();
    String::from_utf8(out).unwrap()
}

/// A sink that works, fails, or stalls, as the test says.
#[derive(Clone)]
struct Switch(Arc<AtomicU8>);

const WORK: u8 = 0;
const FAIL: u8 = 1;
const STALL: u8 = 2;

impl Switch {
    fn set(&self, mode: u8) {
        self.0.store(mode, Ordering::SeqCst);
    }
}

struct Switched {
    mode: Switch,
    inner: Arc<Mutex<JsonlSink>>,
}

impl Service<AuditBatch> for Switched {
    type Response = ();
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: AuditBatch) -> Self::Future {
        let (mode, inner) = (self.mode.0.clone(), self.inner.clone());
        Box::pin(async move {
            while mode.load(Ordering::SeqCst) == STALL {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if mode.load(Ordering::SeqCst) == FAIL {
                return Err("the disk is on fire".into());
            }
            let fut = inner.lock().unwrap().call(batch);
            fut.await
        })
    }
}

fn switched_recorder(path: &std::path::Path, on_failure: OnFailure) -> (Recorder, Switch) {
    let switch = Switch(Arc::new(AtomicU8::new(WORK)));
    let sink = Switched {
        mode: switch.clone(),
        inner: Arc::new(Mutex::new(
            JsonlSink::open(JsonlOptions::new(path)).unwrap(),
        )),
    };
    let mut options = SinkOptions::new("switched");
    options.timeout = Duration::from_millis(300);
    let recorder = Recorder::builder(on_failure)
        .sink(options, sink)
        .start()
        .unwrap();
    (recorder, switch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_stops_commands_with_58000_and_continue_records_the_gap() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().unwrap();

    // on_failure = refuse: nothing runs unless it was recorded first.
    let path = dir.path().join("refuse.jsonl");
    let (recorder, switch) = switched_recorder(&path, OnFailure::Refuse);
    let addr = serve(&cluster, &recorder).await;
    let client = connect(addr).await;
    client
        .batch_execute("create table refused (x int4)")
        .await
        .unwrap();
    // trail_start, session_start, command, outcome: then the failure hits only what follows.
    wait_written(&path, 4).await;
    switch.set(FAIL);
    let err = client
        .batch_execute("insert into refused values (1)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::SYSTEM_ERROR), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("the audit trail could not record this command, so it was not run"),
        "{message}"
    );
    assert!(message.contains("the disk is on fire"), "{message}");
    switch.set(STALL);
    let err = client
        .batch_execute("insert into refused values (2)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::SYSTEM_ERROR), "{err}");
    assert!(
        err.as_db_error().unwrap().message().contains("stalled"),
        "{err}"
    );
    assert_eq!(
        count_rows(&cluster, "refused"),
        "0",
        "a refused command reached the database"
    );
    switch.set(WORK);
    client
        .batch_execute("insert into refused values (3)")
        .await
        .unwrap();
    assert_eq!(count_rows(&cluster, "refused"), "1");
    drop(client);
    recorder.close(Duration::from_secs(5)).await;
    let report = verify_files(&trail_files(&path).unwrap(), &VerifyOptions::default()).unwrap();
    assert!(report.intact(), "{:?}", report.problem);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("record(s) lost since")),
        "{:?}",
        report.warnings
    );
    let text = shown(&path);
    // The failed command's record is lost (its refused outcome too, unless it reached the
    // writer after the failure cleared): the gap says so.
    assert!(
        text.contains("records lost since") && text.contains("(the disk is on fire)"),
        "{text}"
    );
    // The stalled command was recorded once the sink moved again, with why it did not run.
    assert!(text.contains("> insert into refused values (2)"), "{text}");
    assert!(text.contains("→ REFUSED"), "{text}");
    assert!(text.contains("decision: audit unrecorded"), "{text}");
    assert!(text.contains("> insert into refused values (3)"), "{text}");
    assert!(!text.contains("> insert into refused values (1)"), "{text}");

    // on_failure = continue: commands run; the trail says what it missed.
    let path = dir.path().join("continue.jsonl");
    let (recorder, switch) = switched_recorder(&path, OnFailure::Continue);
    let addr = serve(&cluster, &recorder).await;
    let client = connect(addr).await;
    client
        .batch_execute("create table continued (x int4)")
        .await
        .unwrap();
    wait_written(&path, 4).await;
    switch.set(FAIL);
    client
        .batch_execute("insert into continued values (1)")
        .await
        .unwrap();
    // The writer met the failure with both of the insert's records.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while recorder.unreported_losses() < 2 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    switch.set(WORK);
    client.batch_execute("select 1").await.unwrap();
    assert_eq!(count_rows(&cluster, "continued"), "1");
    drop(client);
    recorder.close(Duration::from_secs(5)).await;
    let report = verify_files(&trail_files(&path).unwrap(), &VerifyOptions::default()).unwrap();
    assert!(report.intact(), "{:?}", report.problem);
    let text = shown(&path);
    assert!(text.contains("GAP: 2 records lost"), "{text}");
    assert!(text.contains("the disk is on fire"), "{text}");
    assert!(text.contains("> select 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_round_trip_and_restart() {
    let cluster = cluster().await;
    let (key, _) = SigningKey::generate().unwrap();
    let key = Arc::new(key);
    let public = key.public_hex().to_owned();
    let sink = || {
        let mut o = PostgresOptions::new(cluster.config_string("postgres"));
        o.table = "audit.trail".into();
        o.key = Some(key.clone());
        PostgresSink::new(o).unwrap()
    };
    let status = cluster
        .psql("postgres")
        .args(["-c", "create schema audit"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        PostgresSink::new(PostgresOptions {
            table: "x; drop table y".into(),
            ..PostgresOptions::new("postgres://x")
        })
        .is_err()
    );

    // Two sinks at once: the table and a file, each its own chain.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("both.jsonl");
    for run in 0..2 {
        let recorder = Recorder::builder(OnFailure::Refuse)
            .sink(SinkOptions::new("postgres"), sink())
            .sink(
                SinkOptions::new("jsonl"),
                JsonlSink::open(JsonlOptions::new(&file)).unwrap(),
            )
            .start()
            .unwrap();
        let addr = serve(&cluster, &recorder).await;
        let client = connect(addr).await;
        client
            .query("select $1::text", &[&format!("run {run}")])
            .await
            .unwrap();
        drop(client);
        // A refused login is recorded too.
        let bad = format!(
            "host=127.0.0.1 port={} user=mallory password=nope dbname=app",
            addr.port()
        );
        assert!(tokio_postgres::connect(&bad, NoTls).await.is_err());
        // So is a refused startup (the listener does not allow the `options` parameter).
        let options = format!(
            "host=127.0.0.1 port={} user=alice password={TOKEN} dbname=app options='-c work_mem=1GB'",
            addr.port()
        );
        assert!(tokio_postgres::connect(&options, NoTls).await.is_err());
        // The gateway records a refusal before the client hears its FATAL; the JSONL sink
        // writes on its own thread: wait for both refusals of this run in the file, and for
        // the end of the session the client dropped (its last records come after the drop:
        // closing the recorder before them would leave them in one sink and not the other).
        let want = 2 * (run + 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.matches("\"type\":\"connection\"").count() >= want
                && text.matches("\"type\":\"session_end\"").count() > run
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "connection records missing:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recorder.close(Duration::from_secs(5)).await;
    }

    let (client, connection) = tokio_postgres::connect(&cluster.config_string("postgres"), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let lines: Vec<(i64, String)> = client
        .query("select seq, line from audit.trail order by seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(lines[0].0, 0);
    assert!(
        lines.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "seq has holes"
    );
    let report = verify_records(
        lines.iter().map(|(seq, line)| {
            (
                Location {
                    file: "audit.trail".into(),
                    line: *seq as u64 + 1,
                },
                line.clone().into_bytes(),
            )
        }),
        &VerifyOptions {
            key: Some(public),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(report.intact(), "{:?}", report.problem);
    assert!(report.sealed);
    assert_eq!(report.sessions, 2);
    assert_eq!(report.connections, 4);
    let refused: Vec<(String, String, String)> = client
        .query(
            "select record->>'event', record->>'claimed_user', record->>'reason'
             from audit.trail where type = 'connection' order by seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert_eq!(
        (refused[0].0.as_str(), refused[0].1.as_str()),
        ("refused_login", "mallory")
    );
    assert_eq!(
        (refused[1].0.as_str(), refused[1].1.as_str()),
        ("refused_startup", "alice")
    );
    assert!(
        refused[1].2.contains("\"options\" is not allowed"),
        "{refused:?}"
    );
    // Queryable with SQL: who ran what.
    let rows = client
        .query(
            "select record->>'identity', record->'statements'->0->>'text',
                    convert_from(decode(record->'params'->0->>'binary', 'hex'), 'utf8')
             from audit.trail where type = 'command' and record->'statements'->0->>'executes' = 'true'
             order by seq",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("alice".into(), "select $1::text".into(), "run 0".into()),
            ("alice".into(), "select $1::text".into(), "run 1".into()),
        ]
    );
    let restarts: i64 = client
        .query_one(
            "select count(*) from audit.trail where type = 'trail_start' and record->>'reason' = 'restart' and record->>'previous_sealed' = 'true'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(restarts, 1);
    let report = verify_files(&trail_files(&file).unwrap(), &VerifyOptions::default()).unwrap();
    assert!(report.intact(), "{:?}", report.problem);
    assert_eq!((report.sessions, report.connections), (2, 4));
    // The same commands in both sinks.
    let in_table: i64 = client
        .query_one(
            "select count(*) from audit.trail where type = 'command'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(report.commands, in_table as u64);
    assert!(report.commands >= 4, "{}", report.commands);
}

fn gap(n: u64) -> AuditEvent {
    AuditEvent::Gap(Gap {
        lost: 0,
        since: format!("filler {n}"),
        reason: "x".repeat(200),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_restarts_and_crash_remnants_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rot.jsonl");
    let (key, _) = SigningKey::generate().unwrap();
    let key = Arc::new(key);
    let start = |path: &std::path::Path| {
        let mut o = JsonlOptions::new(path);
        o.rotate_bytes = Some(4096);
        o.key = Some(key.clone());
        Recorder::builder(OnFailure::Refuse)
            .sink(SinkOptions::new("jsonl"), JsonlSink::open(o).unwrap())
            .start()
            .unwrap()
    };
    let recorder = start(&path);
    for n in 0..100 {
        recorder.emit(gap(n));
    }
    recorder.close(Duration::from_secs(5)).await;
    let files = trail_files(&path).unwrap();
    assert!(files.len() > 3, "{files:?}");
    assert!(files[0].ends_with("rot.000001.jsonl"), "{files:?}");
    let options = VerifyOptions {
        key: Some(key.public_hex().to_owned()),
        ..VerifyOptions::default()
    };
    let report = verify_files(&files, &options).unwrap();
    assert!(report.intact(), "{:?}", report.problem);
    assert_eq!(report.seq.unwrap().0, 0);
    // A segment alone starts mid-chain: said, not failed.
    let report = verify_files(
        &files[1..2],
        &VerifyOptions {
            live: true,
            ..options.clone()
        },
    )
    .unwrap();
    assert!(report.intact(), "{:?}", report.problem);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("earlier records not given"))
    );
    // With --live the unsealed tail is expected: said, without telling to pass --live.
    assert!(
        report.warnings.iter().all(|w| !w.contains("pass --live")),
        "{:?}",
        report.warnings
    );
    // Segments out of order are not one chain.
    let swapped = vec![files[1].clone(), files[0].clone()];
    let report = verify_files(&swapped, &options).unwrap();
    assert!(!report.intact());

    // A crash in the middle of a record: the next writer closes the line and declares it.
    use std::io::Write as _;
    let mut live = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    live.write_all(b"{\"v\":1,\"seq\":99999,\"ts\":\"cut")
        .unwrap();
    drop(live);
    let report = verify_files(&trail_files(&path).unwrap(), &options).unwrap();
    assert!(report.problem.unwrap().message.contains("cut off"));
    let recorder = start(&path);
    recorder.emit(gap(1000));
    recorder.close(Duration::from_secs(5)).await;
    let report = verify_files(&trail_files(&path).unwrap(), &options).unwrap();
    assert!(report.intact(), "{:?}", report.problem);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("cut off by a crash")),
        "{:?}",
        report.warnings
    );
    let text = shown(&path);
    assert!(
        text.contains("bytes of a record cut off by a crash discarded"),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_reply_still_gets_exactly_one_outcome() {
    use unit::{Row, Sql, reply, session};

    /// A reply that fails after one row.
    struct Broken(bool);
    impl ReplyBody for Broken {
        type Event = Row;
        fn poll_event(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Row, Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Ready(Some(Err("the database connection broke".into())))
            } else {
                Poll::Ready(Some(Ok(Row)))
            }
        }
    }
    /// A reply that never ends.
    struct Endless;
    impl ReplyBody for Endless {
        type Event = Row;
        fn poll_event(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Row, Error>>> {
            Poll::Ready(Some(Ok(Row)))
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drop.jsonl");
    let recorder = unit::jsonl_recorder(&path);
    let alice = session(7, "alice");
    let upstream =
        tower::service_fn(|_: Request<Sql>| async { Ok::<_, Error>(Response::new(Endless)) });
    let mut service = AuditLayer::new(&recorder, &alice).layer(upstream);
    let mut body = reply(&mut service, &alice, Sql("select * from endless")).await;
    for _ in 0..3 {
        unit::next(&mut body).await.unwrap().unwrap();
    }
    drop((body, service, alice));

    // A reply that fails: one outcome, `failed`, with the error; polling on after the end
    // records nothing more.
    let bob = session(8, "bob");
    let upstream =
        tower::service_fn(|_: Request<Sql>| async { Ok::<_, Error>(Response::new(Broken(false))) });
    let mut service = AuditLayer::new(&recorder, &bob).layer(upstream);
    let mut body = reply(&mut service, &bob, Sql("select * from endless")).await;
    assert!(matches!(unit::next(&mut body).await, Some(Ok(_))));
    assert!(matches!(unit::next(&mut body).await, Some(Err(_))));
    drop((body, service, bob));

    recorder.close(Duration::from_secs(5)).await;
    let text = shown(&path);
    assert_eq!(
        text.matches("→ failed · 1 rows · 10 bytes").count(),
        1,
        "{text}"
    );
    assert!(text.contains("the database connection broke"), "{text}");
    assert_eq!(text.matches("→ ").count(), 2, "{text}");
    assert_eq!(
        text.matches("→ abandoned · 3 rows · 30 bytes").count(),
        1,
        "{text}"
    );
    assert!(text.contains("session end after 1 commands"), "{text}");
    let report = verify_files(&trail_files(&path).unwrap(), &VerifyOptions::default()).unwrap();
    assert!(report.intact(), "{:?}", report.problem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_event_stream_is_recorded() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let recorder = unit::jsonl_recorder(&path);
    let addr = serve(&cluster, &recorder).await;
    let listener = connect(addr).await;
    listener
        .batch_execute("listen audit_channel")
        .await
        .unwrap();
    let notifier = connect(addr).await;
    notifier
        .batch_execute("notify audit_channel, 'hello from the other session'")
        .await
        .unwrap();
    // The listening session is idle: the notification arrives on its event stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains("\"event\":\"notification\"")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no notification recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((listener, notifier));
    recorder.close(Duration::from_secs(5)).await;
    let text = shown(&path);
    assert!(
        text.contains("notification audit_channel hello from the other session"),
        "{text}"
    );
    let report = verify_files(&trail_files(&path).unwrap(), &VerifyOptions::default()).unwrap();
    assert!(report.intact(), "{:?}", report.problem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_writes_and_the_writer_thread_keep_one_chain() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inline.jsonl");
    let (key, _) = SigningKey::generate().unwrap();
    let key = Arc::new(key);
    let mut o = JsonlOptions::new(&path);
    o.rotate_bytes = Some(64 * 1024);
    o.checkpoint_interval = Duration::from_millis(100);
    o.key = Some(key.clone());
    let (service, inline) = JsonlSink::open(o).unwrap().shared();
    let recorder = Recorder::builder(OnFailure::Refuse)
        .inline_sink(SinkOptions::new("jsonl-inline"), service, inline)
        .start()
        .unwrap();
    let addr = serve(&cluster, &recorder).await;
    let mut tasks = Vec::new();
    for client in 0..4 {
        tasks.push(tokio::spawn(async move {
            let c = connect(addr).await;
            for n in 0..150 {
                let row = c
                    .query_one("select $1::int4 + 1", &[&(client * 1000 + n)])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), client * 1000 + n + 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    recorder.close(Duration::from_secs(5)).await;
    let files = trail_files(&path).unwrap();
    assert!(files.len() > 1, "expected rotation: {files:?}");
    let report = verify_files(
        &files,
        &VerifyOptions {
            key: Some(key.public_hex().to_owned()),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(report.intact(), "{:?}", report.problem);
    assert!(report.sealed);
    assert_eq!(report.sessions, 4);
    // tokio-postgres prepares, executes and closes: at least two units per query; verify
    // checked that each has its outcome.
    assert!(report.commands >= 4 * 150 * 2, "{}", report.commands);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[tokio::test(flavor = "current_thread")]
async fn records_deferred_by_inline_writers_are_counted_when_their_write_fails() {
    // Every write to /dev/full fails (ENOSPC), after the open succeeded.
    let (service, inline) = JsonlSink::open(JsonlOptions::new("/dev/full"))
        .unwrap()
        .shared();
    let recorder = Recorder::builder(OnFailure::Refuse)
        .inline_sink(SinkOptions::new("full"), service, inline)
        .start()
        .unwrap();
    // Three records nobody waits for: kept in memory, counted as written for now.
    for n in 0..3 {
        recorder.emit(gap(n));
    }
    let stats = recorder.stats();
    assert_eq!((stats[0].written, stats[0].lost), (3, 0), "{stats:?}");
    // A session's start is waited for: its write carries the three and fails with them.
    let session = unit::session(9, "carol");
    let layer = AuditLayer::new(&recorder, &session);
    let stats = recorder.stats();
    assert_eq!((stats[0].written, stats[0].lost), (0, 4), "{stats:?}");
    drop(layer);
    drop(session);
    recorder.close(Duration::from_secs(5)).await;
    assert!(recorder.stats()[0].lost >= 5, "{:?}", recorder.stats());
}

#[tokio::test(flavor = "current_thread")]
async fn inner_layers_record_decisions_as_they_make_them() {
    use portcullis_core::{Decision, DecisionLog, Decisions, Empty, Verdict};
    use unit::{Row, Sql, reply};

    // Asks for an approval (recorded at once), "gets" it, then answers with an empty reply
    // that reports the final decision with the response.
    let approving = tower::service_fn(|req: Request<Sql>| async move {
        let asked = Decision::new(
            "approval",
            Verdict::approve("dba-approval", vec!["dba".into()], 1),
        )
        .with_detail("request 7 filed");
        DecisionLog::record_in(&req.extensions, &asked);
        let mut response = Response::new(Empty::<Row>::default());
        Decisions::record(
            &mut response.extensions,
            Decision::new("approval", Verdict::Allow).with_detail("approved by dana"),
        );
        Ok::<_, Error>(response)
    });

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let recorder = unit::jsonl_recorder(&path);
    let session = unit::session(10, "erin");
    let mut service = AuditLayer::new(&recorder, &session).layer(approving);
    let mut body = reply(&mut service, &session, Sql("delete from orders")).await;
    assert!(unit::next(&mut body).await.is_none());
    drop((body, service, session));
    recorder.close(Duration::from_secs(5)).await;
    let text = shown(&path);
    let asked = text
        .find("#1 decision: approval approval_requested rule \"dba-approval\" (request 7 filed)")
        .unwrap_or_else(|| panic!("{text}"));
    let outcome = text.find("#1 → ok").unwrap_or_else(|| panic!("{text}"));
    assert!(asked < outcome, "{text}");
    assert!(
        text.contains("decision: approval allow (approved by dana)"),
        "{text}"
    );
    let report = verify_files(&trail_files(&path).unwrap(), &VerifyOptions::default()).unwrap();
    assert!(report.intact(), "{:?}", report.problem);
}

/// Fixtures for the layer tests that need no database: a command, a row, sessions, a
/// recorder writing one JSONL file, and calling a service once.
mod unit {
    use super::*;
    use portcullis_core::{
        AuthMethod, CommandKind, CommandView, EventKind, EventView, Identity, Protocol, SessionId,
        Statement,
    };

    /// One SQL statement.
    pub(super) struct Sql(pub(super) &'static str);
    impl CommandView for Sql {
        fn kind(&self) -> CommandKind {
            CommandKind::Statements
        }
        fn statements(&self) -> Vec<Statement<'_>> {
            vec![Statement::text(self.0)]
        }
    }

    /// A row of 10 bytes.
    pub(super) struct Row;
    impl EventView for Row {
        fn view(&self) -> EventKind<'_> {
            EventKind::Row
        }
        fn wire_len(&self) -> usize {
            10
        }
    }

    pub(super) fn session(id: u64, subject: &str) -> Arc<Session> {
        Arc::new(Session::new(
            SessionId(id),
            Protocol::Postgres,
            "unit",
            format!("127.0.0.1:{id}").parse().unwrap(),
            Identity::new(subject, vec![], AuthMethod::StaticToken),
        ))
    }

    pub(super) fn jsonl_recorder(path: &std::path::Path) -> Recorder {
        Recorder::builder(OnFailure::Refuse)
            .sink(
                SinkOptions::new("jsonl"),
                JsonlSink::open(JsonlOptions::new(path)).unwrap(),
            )
            .start()
            .unwrap()
    }

    /// Call `service` once with `command`; the reply's body.
    pub(super) async fn reply<S, B>(
        service: &mut S,
        session: &Arc<Session>,
        command: Sql,
    ) -> Pin<Box<B>>
    where
        S: Service<Request<Sql>, Response = Response<B>, Error = Error>,
    {
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        let response = service
            .call(Request::new(session.clone(), command))
            .await
            .unwrap();
        Box::pin(response.body)
    }

    pub(super) async fn next<B: ReplyBody>(
        body: &mut Pin<Box<B>>,
    ) -> Option<Result<B::Event, Error>> {
        std::future::poll_fn(|cx| body.as_mut().poll_event(cx)).await
    }
}
