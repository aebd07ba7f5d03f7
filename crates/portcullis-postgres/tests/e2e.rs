//! End to end: real PostgreSQL servers (started by the test kit), the gateway in front, and
//! real clients (tokio-postgres, psql, pgbench) talking through it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt, TryStreamExt, pin_mut};
use portcullis_core::{Target, new_service_fn};
use portcullis_identity::{StaticTokens, TokenEntry, hash_token};
use portcullis_postgres::codec::{BackendMessage, Frame, StartupPacket, decode_frame};
use portcullis_postgres::{
    PgMetrics, PgUpstream, ServePg, ServePgConfig, UpstreamConfig, UpstreamTls, UpstreamTlsMode,
};
use portcullis_testkit::{Certs, PgCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const TOKEN: &str = "test-token-0123456789";

struct Gateway {
    cluster: PgCluster,
    addr: SocketAddr,
    metrics: Arc<PgMetrics>,
    shutdown: Box<dyn Fn() + Send + Sync>,
    _certs_dir: Option<tempfile::TempDir>,
    ca_path: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Options {
    tls: bool,
    no_loopback_plaintext: bool,
    upstream_user: Option<(&'static str, &'static str)>,
    upstream_tls: Option<UpstreamTlsMode>,
    databases: Option<Vec<String>>,
    max_sessions_per_identity: Option<usize>,
}

async fn cluster() -> PgCluster {
    tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
}

async fn gateway(opts: Options) -> Gateway {
    let cluster = cluster().await;
    gateway_for(cluster, opts).await
}

async fn gateway_for(cluster: PgCluster, opts: Options) -> Gateway {
    let (user, password) = opts
        .upstream_user
        .unwrap_or((cluster.user(), cluster.password()));
    let mut upstream = UpstreamConfig::new(cluster.host(), cluster.port(), user, password);
    if let Some(mode) = opts.upstream_tls {
        upstream = upstream.tls(UpstreamTls::new(mode, Some(cluster.ca_path())).unwrap());
    }
    let mut config = ServePgConfig::new("test", upstream);
    config.allow_plaintext_tokens_on_loopback = !opts.no_loopback_plaintext;
    config.databases = opts.databases;
    config.max_sessions_per_identity = opts.max_sessions_per_identity;
    let (mut certs_dir, mut ca_path) = (None, None);
    if opts.tls {
        let dir = tempfile::tempdir().unwrap();
        let files = Certs::generate().unwrap().write_to(dir.path()).unwrap();
        config.tls =
            Some(portcullis_postgres::tls::server_config(&files.cert, &files.key).unwrap());
        ca_path = Some(files.ca.clone());
        certs_dir = Some(dir);
    }
    let tokens = StaticTokens::new(vec![
        TokenEntry::new("alice-token", &hash_token(TOKEN), vec!["analysts".into()]).unwrap(),
    ]);
    let server = ServePg::new(
        config,
        tokens,
        new_service_fn(|t: Target<PgUpstream>| t.upstream),
    );
    let metrics = server.metrics();
    let shutdown = {
        let server = server.clone();
        Box::new(move || server.shutdown())
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            tcp.set_nodelay(true).unwrap();
            // The per-connection tier as a tower service.
            let mut per_connection = server.clone();
            tokio::spawn(tower_service::Service::call(
                &mut per_connection,
                (tcp, peer),
            ));
        }
    });
    Gateway {
        cluster,
        addr,
        metrics,
        shutdown,
        _certs_dir: certs_dir,
        ca_path,
    }
}

impl Gateway {
    fn config(&self, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=alice password={token} dbname=app",
            self.addr.port()
        )
    }

    async fn client(&self) -> Client {
        connect(&self.config(TOKEN)).await
    }

    async fn direct(&self) -> Client {
        connect(&self.cluster.config_string("app")).await
    }

    /// psql through the gateway.
    fn psql(&self) -> Command {
        let mut cmd = clean_command(PgCluster::bin("psql").unwrap());
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.addr.port().to_string())
            .env("PGUSER", "alice")
            .env("PGPASSWORD", TOKEN)
            .env("PGDATABASE", "app")
            .env("PGSSLMODE", "disable")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
        cmd
    }
}

/// A command that does not inherit the caller's `PG*` environment.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Wait until the client has noticed that its connection closed (it learns asynchronously).
async fn wait_closed(client: &Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.is_closed() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(config: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(config, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- tokio-postgres ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_with_binary_values() {
    let gw = gateway(Options::default()).await;
    let client = gw.client().await;
    let rows = client.simple_query("select 1; select 'two'").await.unwrap();
    let values: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);

    let row = client
        .query_one(
            "select $1::int4, $2::int8, $3::text, $4::float8, $5::bool, $6::bytea, \
             now()::timestamptz, '{1,2,3}'::int4[], null::text, 'é✓'::text",
            &[
                &7i32,
                &-9_000_000_000i64,
                &"hé",
                &1.5f64,
                &true,
                &vec![0u8, 255, 3],
            ],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    assert_eq!(row.get::<_, i64>(1), -9_000_000_000);
    assert_eq!(row.get::<_, &str>(2), "hé");
    assert_eq!(row.get::<_, f64>(3), 1.5);
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Vec<u8>>(5), vec![0, 255, 3]);
    let _: std::time::SystemTime = row.get(6);
    assert_eq!(row.get::<_, Vec<i32>>(7), vec![1, 2, 3]);
    assert_eq!(row.get::<_, Option<&str>>(8), None);
    assert_eq!(row.get::<_, &str>(9), "é✓");

    // A prepared statement reused many times.
    let stmt = client.prepare("select $1::int4 * 2").await.unwrap();
    for i in 0..50 {
        let r = client.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), i * 2);
    }
    // Errors pass through with their SQLSTATE, and the session goes on.
    let err = client.simple_query("select 1/0").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    let err = client.query("select nonsense(", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42601");
    assert_eq!(
        client
            .query_one("select 3", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );
    assert!(
        gw.metrics
            .commands_total
            .load(std::sync::atomic::Ordering::Relaxed)
            > 50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_keep_their_order() {
    let gw = gateway(Options::default()).await;
    let client = gw.client().await;
    let stmt = client
        .prepare("select $1::int4, pg_sleep(0)")
        .await
        .unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let futures = (0..200).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move {
            client
                .query_one(stmt, &[&i])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    });
    let got = futures_util::future::join_all(futures).await;
    assert_eq!(got, (0..200).collect::<Vec<i32>>());
    // An error in the middle of a pipeline fails only its own query.
    let ok1 = client.query_one("select 1", &[]);
    let bad = client.query_one("select 1/0", &[]);
    let ok2 = client.query_one("select 2", &[]);
    let (a, b, c) = tokio::join!(ok1, bad, ok2);
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap_err().code().unwrap().code(), "22012");
    assert_eq!(c.unwrap().get::<_, i32>(0), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_stream_through() {
    let gw = gateway(Options::default()).await;
    let client = gw.client().await;
    client
        .batch_execute("create table copy_t (id int primary key, body text)")
        .await
        .unwrap();
    let sink = client.copy_in("copy copy_t from stdin").await.unwrap();
    pin_mut!(sink);
    let mut expected = String::new();
    for chunk in 0..20 {
        let mut buf = BytesMut::new();
        for i in 0..1000 {
            let id = chunk * 1000 + i;
            let line = format!("{id}\tline {id} with some text\n");
            expected.push_str(&line);
            buf.put_slice(line.as_bytes());
        }
        sink.send(buf.freeze()).await.unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 20_000);
    let stream = client
        .copy_out("copy (select * from copy_t order by id) to stdout")
        .await
        .unwrap();
    let chunks: Vec<_> = stream.try_collect().await.unwrap();
    let got: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(String::from_utf8(got).unwrap(), expected);
    // A failing COPY (bad data) errors and the session goes on.
    let sink = client.copy_in("copy copy_t from stdin").await.unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22P02");
    assert_eq!(
        client
            .query_one("select count(*) from copy_t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        20_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_across_sessions() {
    let gw = gateway(Options::default()).await;
    let (listener, mut connection) = tokio_postgres::connect(&gw.config(TOKEN), NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        pin_mut!(stream);
        while let Some(Ok(msg)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send((
                    n.channel().to_owned(),
                    n.payload().to_owned(),
                    n.process_id(),
                ));
            }
        }
    });
    listener.batch_execute("listen jobs").await.unwrap();
    let listener_pid: i32 = listener
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sender = gw.client().await;
    let sender_pid: i32 = sender
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(listener_pid, sender_pid);
    sender.batch_execute("notify jobs, 'hello'").await.unwrap();
    // Delivered while the listening session is idle.
    let (channel, payload, pid) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("notification within 10 s")
        .unwrap();
    assert_eq!((channel.as_str(), payload.as_str()), ("jobs", "hello"));
    // The sender pid is the database's own pid, as the sender saw it.
    assert_eq!(pid, sender_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_database_and_forged_keys_do_nothing() {
    let gw = gateway(Options::default()).await;
    let client = gw.client().await;
    let token = client.cancel_token();
    let started = Instant::now();
    let query = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("cancelled within seconds")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A forged key for a real pid cancels nothing.
    let client = gw.client().await;
    let pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(1.5)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = BytesMut::new();
    StartupPacket::CancelRequest { pid, key: 12345 }.encode(&mut buf);
    tcp.write_all(&buf).await.unwrap();
    drop(tcp);
    assert!(
        sleeper.await.unwrap().is_ok(),
        "a forged key must not cancel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_select_matches_direct() {
    let gw = gateway(Options::default()).await;
    let sql = "select g, md5(g::text) from generate_series(1, 1000000) g";
    async fn checksum(client: &Client, sql: &str) -> (usize, u64) {
        let stream = client.query_raw(sql, Vec::<i32>::new()).await.unwrap();
        pin_mut!(stream);
        let (mut n, mut sum) = (0usize, 0u64);
        while let Some(row) = stream.try_next().await.unwrap() {
            let g: i32 = row.get(0);
            let h: &str = row.get(1);
            n += 1;
            sum = sum
                .wrapping_mul(31)
                .wrapping_add(g as u64)
                .wrapping_add(h.bytes().map(u64::from).sum::<u64>());
        }
        (n, sum)
    }
    let through = checksum(&gw.client().await, sql).await;
    let direct = checksum(&gw.direct().await, sql).await;
    assert_eq!(through.0, 1_000_000);
    assert_eq!(through, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_refused_startups() {
    let gw = gateway(Options {
        databases: Some(vec!["app".into()]),
        max_sessions_per_identity: Some(1),
        ..Options::default()
    })
    .await;
    // One session per identity: the second is refused while the first lives.
    let first = gw.client().await;
    let err = tokio_postgres::connect(&gw.config(TOKEN), NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code().unwrap().code(), "53300");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw
        .metrics
        .sessions_active
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        assert!(Instant::now() < deadline, "the first session never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.client().await.simple_query("select 1").await.unwrap();
    let err = tokio_postgres::connect(&gw.config("wrong"), NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code().unwrap().code(), "28P01", "{err}");
    let db = err.as_db_error().unwrap();
    assert_eq!(db.message(), "authentication failed: unknown token");
    assert_eq!(db.severity(), "FATAL");
    let err = tokio_postgres::connect(&gw.config("\"\""), NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code().unwrap().code(), "28P01");
    let cfg = format!(
        "host=127.0.0.1 port={} user=alice password={TOKEN} dbname=postgres",
        gw.addr.port()
    );
    let err = tokio_postgres::connect(&cfg, NoTls).await.err().unwrap();
    assert_eq!(err.code().unwrap().code(), "3D000");
    let cfg = format!(
        "host=127.0.0.1 port={} user=alice password={TOKEN} dbname=app options='-c work_mem=1MB'",
        gw.addr.port()
    );
    let err = tokio_postgres::connect(&cfg, NoTls).await.err().unwrap();
    assert_eq!(err.code().unwrap().code(), "42501");
    assert!(
        gw.metrics
            .logins_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 4
    );
}

// ---- psql and pgbench -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sessions_behave_as_direct() {
    let gw = gateway(Options::default()).await;
    let out = run(gw.psql().args([
        "-A",
        "-t",
        "-c",
        "create table items (id int primary key, name text); \
         insert into items select g, 'item ' || g from generate_series(1, 500) g; \
         select count(*), sum(id) from items",
    ]));
    assert_eq!(stdout(&out).trim(), "500|125250");

    // \copy out and in, with a checksum of the data.
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("items.tsv");
    run(gw.psql().arg("-c").arg(format!(
        "\\copy (select * from items order by id) to '{}'",
        out_file.display()
    )));
    let data = std::fs::read(&out_file).unwrap();
    assert_eq!(data.iter().filter(|&&b| b == b'\n').count(), 500);
    run(gw
        .psql()
        .args(["-c", "create table items2 (id int primary key, name text)"]));
    run(gw
        .psql()
        .arg("-c")
        .arg(format!("\\copy items2 from '{}'", out_file.display())));
    let out = run(gw.psql().args([
        "-A",
        "-t",
        "-c",
        "select md5(string_agg(id || ':' || name, ',' order by id)) from items",
    ]));
    let out2 = run(gw.psql().args([
        "-A",
        "-t",
        "-c",
        "select md5(string_agg(id || ':' || name, ',' order by id)) from items2",
    ]));
    assert_eq!(stdout(&out), stdout(&out2));

    // Errors: SQLSTATE and message identical to a direct connection.
    let verbose = |mut cmd: Command| {
        cmd.env_remove("PGOPTIONS").args([
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "insert into items values (1, 'dup')",
            "-c",
            "selec 1",
        ]);
        cmd.args(["-v", "ON_ERROR_STOP=0"]);
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let through = verbose(gw.psql());
    let mut direct_cmd = gw.cluster.psql("app");
    direct_cmd.args(["-X", "-q"]);
    let direct = verbose(direct_cmd);
    assert!(through.contains("23505"), "{through}");
    assert!(through.contains("42601"), "{through}");
    assert_eq!(through, direct);

    // RAISE NOTICE reaches psql; savepoints and rollback work.
    let out = run(gw.psql().args([
        "-c",
        "do $$ begin raise notice 'hello from plpgsql'; end $$",
    ]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOTICE:  hello from plpgsql"));
    let script = "begin;
insert into items values (1001, 'a');
savepoint s1;
insert into items values (1002, 'b');
rollback to savepoint s1;
insert into items values (1003, 'c');
commit;
begin;
insert into items values (1004, 'd');
rollback;
select string_agg(id::text, ',' order by id) from items where id > 1000;";
    let out = run(gw.psql().args(["-A", "-t", "-c", script]));
    assert_eq!(stdout(&out).trim(), "1001,1003");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_every_query_mode_has_no_failures() {
    let gw = gateway(Options::default()).await;
    let port = gw.addr.port().to_string();
    let pgbench = || {
        let mut cmd = clean_command(PgCluster::bin("pgbench").unwrap());
        cmd.env("PGPASSWORD", TOKEN)
            .env("PGSSLMODE", "disable")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "alice"]);
        cmd
    };
    run(pgbench().args(["-i", "-s", "1", "-q", "app"]));
    for mode in ["simple", "extended", "prepared"] {
        let out = run(pgbench().args(["-M", mode, "-c", "4", "-j", "2", "-t", "200", "app"]));
        let text = stdout(&out);
        assert!(
            text.contains("number of transactions actually processed: 800/800"),
            "{mode}: {text}"
        );
        assert!(
            text.contains("number of failed transactions: 0"),
            "{mode}: {text}"
        );
    }
}

// ---- TLS and upstream authentication ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_clients_and_plaintext_refusal() {
    let gw = gateway(Options {
        tls: true,
        no_loopback_plaintext: true,
        ..Options::default()
    })
    .await;
    let out = run(gw
        .psql()
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", gw.ca_path.as_ref().unwrap())
        .env("PGHOST", "localhost")
        .args(["-A", "-t", "-c", "select 'over tls'"]));
    assert_eq!(stdout(&out).trim(), "over tls");
    // Without TLS the token is refused before psql is asked for it.
    let out = gw.psql().args(["-c", "select 1"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accepts tokens only over TLS"), "{err}");

    // Bytes sent right behind an SSLRequest are refused (CVE-2021-23214 class).
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = BytesMut::new();
    StartupPacket::SslRequest.encode(&mut buf);
    buf.extend_from_slice(&startup_packet(0, &[("user", "alice")]));
    tcp.write_all(&buf).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "connection must be closed");
    assert!(
        !answer.starts_with(b"S"),
        "must not start TLS after injected bytes"
    );

    // Direct TLS (PostgreSQL 17 clients) with ALPN "postgresql".
    let mut roots = rustls::RootCertStore::empty();
    for cert in portcullis_postgres::tls::load_certs(gw.ca_path.as_ref().unwrap()).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let buf = startup_packet(0, &[("user", "alice"), ("database", "app")]);
    tls.write_all(&buf).await.unwrap();
    let frame = read_frame(&mut tls).await;
    assert_eq!(
        BackendMessage::decode(&frame).unwrap(),
        BackendMessage::Authentication(portcullis_postgres::codec::AuthRequest::CleartextPassword)
    );
}

/// A StartupMessage for protocol 3.`minor` with `params`.
fn startup_packet(minor: u16, params: &[(&str, &str)]) -> BytesMut {
    let mut buf = BytesMut::new();
    StartupPacket::Startup {
        major: 3,
        minor,
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
    .encode(&mut buf);
    buf
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Frame {
    read_frame_buffered(r, &mut BytesMut::new()).await
}

async fn read_frame_buffered<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Frame {
    loop {
        if let Some(f) = decode_frame(buf, 1 << 20).unwrap() {
            return f;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), r.read_buf(buf))
            .await
            .expect("a message within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_md5_cleartext_and_tls_modes() {
    use portcullis_testkit::{MD5_USER, PLAIN_USER, SUPERUSER};
    // (upstream role and its password, TLS mode, whether the session must be encrypted)
    let cases = [
        (MD5_USER, UpstreamTlsMode::VerifyFull, true),
        (PLAIN_USER, UpstreamTlsMode::Disable, false),
        // SCRAM; `prefer` uses TLS because the server offers it.
        (SUPERUSER, UpstreamTlsMode::Prefer, true),
        (SUPERUSER, UpstreamTlsMode::Require, true),
    ];
    let mut cluster = cluster().await;
    for (user, mode, encrypted) in cases {
        let gw = gateway_for(
            cluster,
            Options {
                upstream_user: Some(user),
                upstream_tls: Some(mode),
                ..Options::default()
            },
        )
        .await;
        let row = gw
            .client()
            .await
            .query_one(
                "select current_user::text, ssl from pg_stat_ssl where pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), user.0, "{mode:?}");
        assert_eq!(row.get::<_, bool>(1), encrypted, "{user:?} {mode:?}");
        cluster = gw.cluster;
    }
}

// ---- the database ending sessions, bad input ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_reaches_the_client_as_fatal() {
    let gw = gateway(Options::default()).await;
    let victim = gw.client().await;
    let pid: i32 = victim
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let killer = gw.direct().await;
    killer
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), victim.simple_query("select 1"))
        .await
        .expect("no hang")
        .unwrap_err();
    // Either the FATAL arrived while idle (then the connection is closed) or with this query.
    let text = format!("{err:?}");
    assert!(
        err.code().map(|c| c.code()) == Some("57P01") || victim.is_closed(),
        "{text}"
    );
    // And the gateway closes the connection.
    wait_closed(&victim, "the connection stayed open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_result_is_a_clean_error() {
    let mut gw = gateway(Options::default()).await;
    let client = gw.client().await;
    let stream = client
        .query_raw(
            "select g, repeat('x', 200) from generate_series(1, 5000000) g",
            Vec::<i32>::new(),
        )
        .await
        .unwrap();
    pin_mut!(stream);
    for _ in 0..1000 {
        stream.try_next().await.unwrap().unwrap();
    }
    tokio::task::block_in_place(|| gw.cluster.kill());
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.try_next().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("no hang after the database died");
    assert!(result.is_err(), "the stream must fail, not end cleanly");
    assert!(client.is_closed() || client.simple_query("select 1").await.is_err());
}

/// Send frontend messages on a raw session and collect the reply's message tags (plus the
/// DataRow values as text) up to `until` ReadyForQuery messages, or until `quiet` passes
/// without a message when `until` is 0.
async fn exchange(
    tcp: &mut TcpStream,
    rbuf: &mut BytesMut,
    msgs: &[portcullis_postgres::codec::FrontendMessage],
    until: usize,
) -> Vec<String> {
    let mut buf = BytesMut::new();
    for m in msgs {
        m.encode(&mut buf);
    }
    tcp.write_all(&buf).await.unwrap();
    let mut got = Vec::new();
    let mut ready = 0;
    loop {
        if until == 0 {
            match tokio::time::timeout(Duration::from_millis(500), read_frame_buffered(tcp, rbuf))
                .await
            {
                Ok(f) => got.push(describe(&f)),
                Err(_) => return got,
            }
            continue;
        }
        let f = read_frame_buffered(tcp, rbuf).await;
        got.push(describe(&f));
        if f.tag() == b'Z' {
            ready += 1;
            if ready == until {
                return got;
            }
        }
    }
}

fn describe(f: &Frame) -> String {
    match BackendMessage::decode(f).unwrap() {
        BackendMessage::DataRow(values) => format!(
            "D:{}",
            values
                .iter()
                .map(|v| v
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or("NULL".into()))
                .collect::<Vec<_>>()
                .join(",")
        ),
        BackendMessage::FunctionCallResponse(v) => format!("V:{:?}", v.map(|v| v.to_vec())),
        BackendMessage::ErrorResponse { fields } => format!(
            "E:{}",
            fields
                .iter()
                .find(|(k, _)| *k == b'C')
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        ),
        _ => (f.tag() as char).to_string(),
    }
}

/// Bind the unnamed portal to `statement` with one text parameter, and execute it.
fn bind_execute(
    statement: &'static str,
    param: &'static str,
) -> Vec<portcullis_postgres::codec::FrontendMessage> {
    use portcullis_postgres::codec::FrontendMessage as F;
    vec![
        F::Bind {
            portal: "".into(),
            statement: statement.into(),
            param_formats: vec![],
            params: vec![Some(param.into())],
            result_formats: vec![],
        },
        F::Execute {
            portal: "".into(),
            max_rows: 0,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_batches_errors_skip_to_sync_and_function_calls() {
    use portcullis_postgres::codec::FrontendMessage as F;
    let gw = gateway(Options::default()).await;
    let (mut tcp, mut rbuf) = raw_session_buffered(&gw).await;
    // Parse + Describe + Flush: answered without a Sync (pipelining clients rely on it).
    let got = exchange(
        &mut tcp,
        &mut rbuf,
        &[
            F::Parse {
                name: "s1".into(),
                query: "select $1::int + 1".into(),
                param_types: vec![],
            },
            F::Describe {
                target: b'S',
                name: "s1".into(),
            },
            F::Flush,
        ],
        0,
    )
    .await;
    assert_eq!(got, ["1", "t", "T"]);
    let got = exchange(
        &mut tcp,
        &mut rbuf,
        &[bind_execute("s1", "41"), vec![F::Sync]].concat(),
        1,
    )
    .await;
    assert_eq!(got, ["2", "D:42", "C", "Z"]);
    // An error in a Flush batch: the database skips everything up to the next Sync.
    let got = exchange(
        &mut tcp,
        &mut rbuf,
        &[
            F::Parse {
                name: "".into(),
                query: "selec broken".into(),
                param_types: vec![],
            },
            F::Flush,
        ],
        0,
    )
    .await;
    assert_eq!(got, ["E:42601"]);
    let got = exchange(
        &mut tcp,
        &mut rbuf,
        &[bind_execute("s1", "1"), vec![F::Flush, F::Sync]].concat(),
        1,
    )
    .await;
    assert_eq!(got, ["Z"]);
    // Portal suspension with max_rows, then the rest.
    let got = exchange(
        &mut tcp,
        &mut rbuf,
        &[
            F::Query {
                sql: "begin".into(),
            },
            F::Parse {
                name: "".into(),
                query: "select g from generate_series(1, 3) g".into(),
                param_types: vec![],
            },
            F::Bind {
                portal: "p".into(),
                statement: "".into(),
                param_formats: vec![],
                params: vec![],
                result_formats: vec![],
            },
            F::Execute {
                portal: "p".into(),
                max_rows: 2,
            },
            F::Execute {
                portal: "p".into(),
                max_rows: 0,
            },
            F::Sync,
            F::Query {
                sql: "commit".into(),
            },
        ],
        3,
    )
    .await;
    assert_eq!(
        got,
        [
            "C", "Z", "1", "2", "D:1", "D:2", "s", "D:3", "C", "Z", "C", "Z"
        ]
    );
    // FunctionCall by OID.
    let oid: u32 = gw
        .direct()
        .await
        .query_one("select 'int4pl'::regproc::oid", &[])
        .await
        .unwrap()
        .get(0);
    let got = exchange(
        &mut tcp,
        &mut rbuf,
        &[F::FunctionCall {
            oid,
            arg_formats: vec![1],
            args: vec![
                Some(2i32.to_be_bytes().to_vec().into()),
                Some(3i32.to_be_bytes().to_vec().into()),
            ],
            result_format: 1,
        }],
        1,
    )
    .await;
    assert_eq!(
        got,
        [
            format!("V:Some({:?})", 5i32.to_be_bytes().to_vec()),
            "Z".into()
        ]
    );
}

async fn raw_session(gw: &Gateway) -> TcpStream {
    raw_session_buffered(gw).await.0
}

async fn raw_session_buffered(gw: &Gateway) -> (TcpStream, BytesMut) {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let buf = startup_packet(0, &[("user", "alice"), ("database", "app")]);
    tcp.write_all(&buf).await.unwrap();
    let mut rbuf = BytesMut::new();
    let f = read_frame_buffered(&mut tcp, &mut rbuf).await;
    assert_eq!(f.tag(), b'R');
    let mut buf = BytesMut::new();
    portcullis_postgres::codec::FrontendMessage::Password(format!("{TOKEN}\0").into_bytes().into())
        .encode(&mut buf);
    tcp.write_all(&buf).await.unwrap();
    loop {
        let f = read_frame_buffered(&mut tcp, &mut rbuf).await;
        if f.tag() == b'Z' {
            return (tcp, rbuf);
        }
    }
}

/// Read until the connection closes; return the error frames received.
async fn errors_until_close(tcp: &mut TcpStream) -> Vec<(String, String)> {
    let mut buf = BytesMut::new();
    let mut errors = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Ok(Some(f)) = decode_frame(&mut buf, 1 << 24) {
            if let Ok(BackendMessage::ErrorResponse { fields }) = BackendMessage::decode(&f) {
                let get = |c| {
                    fields
                        .iter()
                        .find(|(k, _)| *k == c)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                errors.push((get(b'V'), get(b'C')));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return errors,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the gateway did not close the connection; errors: {errors:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_input_gets_clear_errors() {
    let gw = gateway(Options::default()).await;

    // A length no startup packet has — garbage, or a Terminate before the startup packet
    // (node-postgres' connect() then end() in quick succession): PostgreSQL closes without
    // a word, and so does the gateway.
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"X\x00\x00\x00\x04"[..],
    ] {
        for addr in [
            gw.addr,
            SocketAddr::from(([127, 0, 0, 1], gw.cluster.port())),
        ] {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(bytes).await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
                .await
                .expect("the connection was closed");
            assert!(
                read.is_err() || rest.is_empty(),
                "{addr}: {bytes:?} got {rest:?}"
            );
        }
    }

    // Protocol 2 is refused clearly.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = BytesMut::new();
    StartupPacket::Startup {
        major: 2,
        minor: 0,
        params: vec![("user".into(), "alice".into())],
    }
    .encode(&mut buf);
    tcp.write_all(&buf).await.unwrap();
    assert_eq!(
        errors_until_close(&mut tcp).await,
        [("FATAL".to_owned(), "0A000".to_owned())]
    );

    // A newer minor version gets NegotiateProtocolVersion, then the session works.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let buf = startup_packet(2, &[("user", "alice"), ("_pq_.future_feature", "on")]);
    tcp.write_all(&buf).await.unwrap();
    let f = read_frame(&mut tcp).await;
    assert_eq!(
        BackendMessage::decode(&f).unwrap(),
        BackendMessage::NegotiateProtocolVersion {
            minor: 0,
            options: vec!["_pq_.future_feature".into()]
        }
    );

    // Inside a session: an unknown message type, a 1 GiB claimed length, a truncated frame.
    for bad in [
        &b"Z\0\0\0\x04"[..],
        &b"Q\x40\0\0\0select"[..],
        &b"Q\0\0\0\x02"[..],
    ] {
        let mut tcp = raw_session(&gw).await;
        tcp.write_all(bad).await.unwrap();
        let errors = errors_until_close(&mut tcp).await;
        assert_eq!(
            errors,
            [("FATAL".to_owned(), "08P01".to_owned())],
            "{bad:?}"
        );
    }
    // A frame cut short by the client closing: the session just ends.
    let mut tcp = raw_session(&gw).await;
    tcp.write_all(b"Q\0\0\0\x20sel").await.unwrap();
    tcp.shutdown().await.unwrap();
    assert!(errors_until_close(&mut tcp).await.is_empty());

    // A client that disconnects mid-result does not disturb the gateway.
    let mut tcp = raw_session(&gw).await;
    let mut buf = BytesMut::new();
    portcullis_postgres::codec::FrontendMessage::Query {
        sql: "select repeat('y', 1000) from generate_series(1, 2000000)".into(),
    }
    .encode(&mut buf);
    tcp.write_all(&buf).await.unwrap();
    let mut sink = vec![0u8; 65536];
    let _ = tcp.read(&mut sink).await.unwrap();
    drop(tcp);
    let client = gw.client().await;
    assert_eq!(
        client
            .query_one("select 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
    // The abandoned session's backend goes away.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = gw
            .direct()
            .await
            .query_one(
                "select count(*) from pg_stat_activity where query like 'select repeat(''y''%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backend still running the abandoned query"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_ctrl_c_cancels_the_running_statement() {
    let gw = gateway(Options::default()).await;
    let child = gw
        .psql()
        .args(["-c", "select pg_sleep(30)"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the statement runs in the database, then press Ctrl-C (SIGINT).
    let direct = gw.direct().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while direct
        .query_one(
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < deadline, "psql's query never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    run(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_sessions_with_57p01() {
    let gw = gateway(Options::default()).await;
    let idle = gw.client().await;
    let busy = gw.client().await;
    let running = tokio::spawn(async move { busy.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    (gw.shutdown)();
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the busy session ends at once")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57P01", "{err:?}");
    let err = tokio::time::timeout(Duration::from_secs(10), idle.simple_query("select 1"))
        .await
        .expect("no hang")
        .unwrap_err();
    wait_closed(&idle, &format!("the idle session stayed open: {err:?}")).await;
}

// ---- other drivers ----------------------------------------------------------------------

/// psycopg, asyncpg, node-postgres and pgJDBC run their checks through the gateway.
/// `scripts/test` installs them; a missing one fails here with what to install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_node_and_java_drivers_work_unchanged() {
    let gw = gateway(Options::default()).await;
    let drivers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers");
    let checks: [(&str, Vec<&str>, &str); 4] = [
        ("python3", vec!["psycopg_check.py"], "ok psycopg"),
        ("python3", vec!["asyncpg_check.py"], "ok asyncpg"),
        ("node", vec!["pg_check.js"], "ok node-postgres"),
        (
            "java",
            vec!["-cp", "/usr/share/java/postgresql.jar", "JdbcCheck.java"],
            "ok jdbc",
        ),
    ];
    let port = gw.addr.port().to_string();
    let tasks = checks.map(|(program, args, expect)| {
        let (drivers, port) = (drivers.clone(), port.clone());
        tokio::task::spawn_blocking(move || {
            let out = clean_command(program)
                .current_dir(&drivers)
                .args(&args)
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", &port)
                .env("PGUSER", "alice")
                .env("PGPASSWORD", TOKEN)
                .env("PGDATABASE", "app")
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e} (run scripts/test to install it)"));
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && text.contains(expect),
                "{program} {args:?} failed (scripts/test installs the drivers):\n{text}"
            );
        })
    });
    for t in tasks {
        t.await.unwrap();
    }
}

/// A scripted "database": logs the gateway in, then answers the first query with `reply`
/// and, with `close`, closes the connection.
async fn fake_database(reply: &'static [u8], close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                // The startup packet.
                while StartupPacket::decode(&mut buf).unwrap().is_none() {
                    if tcp.read_buf(&mut buf).await.unwrap() == 0 {
                        return;
                    }
                }
                let mut out = BytesMut::new();
                BackendMessage::Authentication(portcullis_postgres::codec::AuthRequest::Ok)
                    .encode(&mut out);
                BackendMessage::BackendKeyData { pid: 4242, key: 7 }.encode(&mut out);
                BackendMessage::ReadyForQuery { status: b'I' }.encode(&mut out);
                tcp.write_all(&out).await.unwrap();
                // The first query, then the scripted reply.
                let _ = read_frame_buffered(&mut tcp, &mut buf).await;
                let _ = tcp.write_all(reply).await;
                if close {
                    return;
                }
                let mut sink = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut sink).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_database_input_gets_clear_errors() {
    for (what, reply, close) in [
        ("a 1 GiB claimed length", &b"D\x40\0\0\0\0\x01"[..], false),
        (
            "an unknown message type",
            &b"C\0\0\0\x0dSELECT 1\0Y\0\0\0\x04"[..],
            false,
        ),
        ("a short length", &b"Z\0\0\0\x02"[..], false),
        (
            "a reply cut short by a closed connection",
            &b"T\0\0\0\x40\0\x01"[..],
            true,
        ),
    ] {
        let db = fake_database(reply, close).await;
        let config = ServePgConfig::new(
            "fake",
            UpstreamConfig::new("127.0.0.1", db.port(), "u", "p"),
        );
        let mut config = config;
        config.allow_plaintext_tokens_on_loopback = true;
        config.max_message = 1 << 20;
        let tokens = StaticTokens::new(vec![
            TokenEntry::new("t", &hash_token(TOKEN), vec![]).unwrap(),
        ]);
        let server = ServePg::new(
            config,
            tokens,
            new_service_fn(|t: Target<PgUpstream>| t.upstream),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                tokio::spawn(server.serve_connection(tcp, peer));
            }
        });
        let mut buf = startup_packet(0, &[("user", "alice"), ("database", "app")]);
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&buf).await.unwrap();
        let mut rbuf = BytesMut::new();
        assert_eq!(read_frame_buffered(&mut tcp, &mut rbuf).await.tag(), b'R');
        buf.clear();
        portcullis_postgres::codec::FrontendMessage::Password(
            format!("{TOKEN}\0").into_bytes().into(),
        )
        .encode(&mut buf);
        tcp.write_all(&buf).await.unwrap();
        while read_frame_buffered(&mut tcp, &mut rbuf).await.tag() != b'Z' {}
        buf.clear();
        portcullis_postgres::codec::FrontendMessage::Query {
            sql: "select 1".into(),
        }
        .encode(&mut buf);
        tcp.write_all(&buf).await.unwrap();
        let errors = tokio::time::timeout(Duration::from_secs(10), errors_until_close(&mut tcp))
            .await
            .unwrap_or_else(|_| panic!("{what}: the gateway hung"));
        assert_eq!(errors, [("FATAL".to_owned(), "08006".to_owned())], "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_follows_the_parameters_the_database_reports() {
    let cluster = cluster().await;
    let mut config = ServePgConfig::new(
        "params",
        UpstreamConfig::new(
            cluster.host(),
            cluster.port(),
            cluster.user(),
            cluster.password(),
        ),
    );
    config.allow_plaintext_tokens_on_loopback = true;
    let tokens = StaticTokens::new(vec![
        TokenEntry::new("alice-token", &hash_token(TOKEN), vec![]).unwrap(),
    ]);
    let seen: Arc<std::sync::Mutex<Option<Arc<portcullis_core::Session>>>> = Arc::default();
    let slot = seen.clone();
    let server = ServePg::new(
        config,
        tokens,
        new_service_fn(move |t: Target<PgUpstream>| {
            *slot.lock().unwrap() = Some(t.session.clone());
            t.upstream
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            tokio::spawn(server.serve_connection(tcp, peer));
        }
    });
    let conninfo = format!(
        "host=127.0.0.1 port={} user=alice password={TOKEN} dbname=app",
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
    tokio::spawn(connection);
    let session = seen.lock().unwrap().clone().unwrap();
    // Reported at login.
    assert_eq!(
        session
            .server_param("standard_conforming_strings")
            .as_deref(),
        Some("on")
    );
    assert_eq!(
        session.server_param("client_encoding").as_deref(),
        Some("UTF8")
    );
    // And followed when a command changes them.
    client
        .batch_execute("set standard_conforming_strings = off; set application_name = 'changed'")
        .await
        .unwrap();
    assert_eq!(
        session
            .server_param("standard_conforming_strings")
            .as_deref(),
        Some("off")
    );
    assert_eq!(
        session.server_param("application_name").as_deref(),
        Some("changed")
    );
    assert_eq!(session.server_param("no_such_parameter"), None);
}
