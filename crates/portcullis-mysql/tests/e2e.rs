//! End to end: a real MariaDB (started by the test kit), the gateway in front, and real
//! clients — the mariadb CLI, PyMySQL, mysql-connector-python, mysql2, MariaDB Connector/J,
//! sysbench — talking through it, their results compared with a direct connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mysql_common::constants::CapabilityFlags;
use mysql_common::packets::{AuthPlugin, HandshakeResponse};
use mysql_common::proto::MySerialize;
use portcullis_core::tls::{UpstreamTls, UpstreamTlsMode};
use portcullis_core::upstream::{UpstreamConfig, UpstreamRole};
use portcullis_core::{Target, new_service_fn};
use portcullis_identity::{StaticTokens, TokenEntry, hash_token};
use portcullis_mysql::packet::{decode_packet, encode_packet};
use portcullis_mysql::{MyMetrics, MyUpstream, ServeMySql, ServeMySqlConfig};
use portcullis_testkit::{
    Certs, MARIADB_ED25519_USER, MARIADB_NATIVE_USER, MARIADB_READONLY_USER, MariaDb,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "mysql-test-token-0123456789";
const DBA_TOKEN: &str = "mysql-dba-token-9876543210";

struct Gateway {
    db: MariaDb,
    addr: SocketAddr,
    metrics: Arc<MyMetrics>,
    shutdown: Box<dyn Fn() + Send + Sync>,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
struct Options {
    no_loopback_plaintext: bool,
    upstream_user: Option<(&'static str, &'static str)>,
    upstream_tls: Option<UpstreamTlsMode>,
    local_infile: bool,
    databases: Option<Vec<String>>,
    roles: bool,
}

async fn mariadb() -> MariaDb {
    tokio::task::spawn_blocking(MariaDb::start)
        .await
        .unwrap()
        .expect("start MariaDB")
}

async fn gateway(opts: Options) -> Gateway {
    let db = mariadb().await;
    let (user, password) = opts.upstream_user.unwrap_or((db.user(), db.password()));
    let mut upstream = UpstreamConfig::new(db.host(), db.port(), user, password);
    if let Some(mode) = opts.upstream_tls {
        upstream = upstream.tls(UpstreamTls::new(mode, Some(db.ca_path())).unwrap());
    }
    if opts.roles {
        upstream.roles = vec![UpstreamRole {
            groups: vec!["analysts".into()],
            user: MARIADB_READONLY_USER.0.into(),
            password: MARIADB_READONLY_USER.1.into(),
        }];
    }
    let mut config = ServeMySqlConfig::new("test", upstream);
    config.allow_plaintext_tokens_on_loopback = !opts.no_loopback_plaintext;
    config.local_infile = opts.local_infile;
    config.databases = opts.databases;
    let dir = tempfile::tempdir().unwrap();
    let files = Certs::generate().unwrap().write_to(dir.path()).unwrap();
    config.tls = Some(portcullis_core::tls::server_config(&files.cert, &files.key).unwrap());
    let tokens = StaticTokens::new(vec![
        TokenEntry::new("alice", &hash_token(TOKEN), vec!["analysts".into()]).unwrap(),
        TokenEntry::new("dana", &hash_token(DBA_TOKEN), vec!["dba".into()]).unwrap(),
    ]);
    let server = ServeMySql::new(
        config,
        tokens,
        new_service_fn(|t: Target<MyUpstream>| t.upstream),
    );
    let metrics = server.metrics();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = server.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            tcp.set_nodelay(true).unwrap();
            tokio::spawn(accept.serve_connection(tcp, peer));
        }
    });
    Gateway {
        db,
        addr,
        metrics,
        shutdown: Box::new(move || server.shutdown()),
        ca: files.ca,
        _dir: dir,
    }
}

/// The mariadb CLI with no option files and no MYSQL_* environment.
fn cli() -> Command {
    let mut cmd = Command::new("mariadb");
    cmd.args(["--no-defaults", "--default-character-set=utf8mb4"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("MYSQL_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

impl Gateway {
    /// The CLI through the gateway, over verified TLS, as `token`.
    fn mysql_as(&self, token: &str) -> Command {
        let mut cmd = cli();
        cmd.args([
            "--protocol=tcp",
            "-h127.0.0.1",
            &format!("-P{}", self.addr.port()),
            "-ualice",
            &format!("-p{token}"),
            "--ssl-ca",
        ])
        .arg(&self.ca)
        .args([
            "--ssl-verify-server-cert",
            "--max-allowed-packet=64M",
            "-Dapp",
        ]);
        cmd
    }

    fn mysql(&self) -> Command {
        self.mysql_as(TOKEN)
    }

    /// The CLI straight to the database, as its superuser.
    fn direct(&self) -> Command {
        let mut cmd = cli();
        cmd.args([
            "--protocol=tcp",
            "-h127.0.0.1",
            &format!("-P{}", self.db.port()),
            &format!("-u{}", self.db.user()),
            &format!("-p{}", self.db.password()),
            "--max-allowed-packet=64M",
            "-Dapp",
        ]);
        cmd
    }
}

fn run(mut cmd: Command, sql: &str) -> Output {
    let mut child = cmd
        .args(["-N", "-B"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let sql = sql.to_owned();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(sql.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        text(&out)
    );
    text(&out)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_basics_multi_statements_and_emoji_match_direct() {
    let gw = Arc::new(gateway(Options::default()).await);
    let script = "CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(50) CHARACTER SET utf8mb4, d DECIMAL(10,2), ts DATETIME(6));\n\
        INSERT INTO t VALUES (1, 'héllo 🦀', 12.5, '2024-02-29 13:14:15.123456'), (2, NULL, NULL, NULL);\n\
        SELECT * FROM t ORDER BY id; SELECT 1 + 1, 'two'; SELECT connection_id() = connection_id();\n\
        DROP TABLE t;\n";
    let g = gw.clone();
    let through = blocking(move || ok(run(g.mysql(), script))).await;
    let g = gw.clone();
    let direct = blocking(move || ok(run(g.direct(), script))).await;
    assert_eq!(through, direct);
    assert!(through.contains("héllo 🦀"), "{through}");
    // Multi-statements in one COM_QUERY (several result sets).
    let g = gw.clone();
    let multi = blocking(move || {
        let mut cmd = g.mysql();
        cmd.args(["-e", "SELECT 1; SELECT 2; SELECT 3"]);
        ok(run(cmd, ""))
    })
    .await;
    assert_eq!(multi, "1\n2\n3\n");
    assert!(
        gw.metrics
            .commands_total
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_match_direct_and_bad_tokens_get_1045() {
    let gw = Arc::new(gateway(Options::default()).await);
    let g = gw.clone();
    let (through, direct) = blocking(move || {
        (
            run(g.mysql(), "SELECT * FROM nope;"),
            run(g.direct(), "SELECT * FROM nope;"),
        )
    })
    .await;
    assert!(!through.status.success());
    assert_eq!(
        String::from_utf8_lossy(&through.stderr),
        String::from_utf8_lossy(&direct.stderr)
    );
    assert!(String::from_utf8_lossy(&through.stderr).contains("ERROR 1146 (42S02)"));
    let g = gw.clone();
    let bad = blocking(move || run(g.mysql_as("wrong-token"), "SELECT 1;")).await;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("ERROR 1045 (28000)"), "{err}");
    assert!(err.contains("gateway"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_logins_native_ed25519_and_tls() {
    // MariaDB's ed25519 plugin (an auth switch from the greeting's native password), over
    // verified TLS to the database.
    let gw = Arc::new(
        gateway(Options {
            upstream_user: Some(MARIADB_ED25519_USER),
            upstream_tls: Some(UpstreamTlsMode::VerifyFull),
            ..Options::default()
        })
        .await,
    );
    let g = gw.clone();
    let out = blocking(move || {
        ok(run(
            g.mysql(),
            "SELECT current_user(); SELECT variable_value <> '' FROM information_schema.session_status WHERE variable_name = 'Ssl_cipher';",
        ))
    })
    .await;
    assert_eq!(out, "ed_user@%\n1\n");
    // mysql_native_password, plain TCP; role mapping sends analysts to the read-only user.
    let gw = Arc::new(
        gateway(Options {
            upstream_user: Some(MARIADB_NATIVE_USER),
            roles: true,
            ..Options::default()
        })
        .await,
    );
    let g = gw.clone();
    let (alice, dana) = blocking(move || {
        (
            ok(run(g.mysql(), "SELECT current_user();")),
            ok(run(g.mysql_as(DBA_TOKEN), "SELECT current_user();")),
        )
    })
    .await;
    assert_eq!(alice, "readonly@%\n");
    assert_eq!(dana, "native_user@%\n");
}

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// Run a driver check script with `env`; its stdout.
fn driver(program: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(drivers_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("MYSQL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        text(&out)
    );
    text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_text_and_binary_protocols_match_direct() {
    let gw = Arc::new(gateway(Options::default()).await);
    let through = vec![
        ("MYSQL_HOST", "127.0.0.1".to_owned()),
        ("MYSQL_PORT", gw.addr.port().to_string()),
        ("MYSQL_USER", "alice".to_owned()),
        ("MYSQL_PASSWORD", TOKEN.to_owned()),
        ("MYSQL_DATABASE", "app".to_owned()),
        ("MYSQL_SSL_CA", gw.ca.display().to_string()),
    ];
    let direct = vec![
        ("MYSQL_HOST", "127.0.0.1".to_owned()),
        ("MYSQL_PORT", gw.db.port().to_string()),
        ("MYSQL_USER", gw.db.user().to_owned()),
        ("MYSQL_PASSWORD", gw.db.password().to_owned()),
        ("MYSQL_DATABASE", "app".to_owned()),
    ];
    const JAR: &str = "/usr/share/java/mariadb-java-client.jar";
    // Each with its default options plus TLS: over TLS the gateway authenticates the token
    // with caching_sha2_password's full authentication, which every one of them answers.
    let checks: [(&str, &[&str], &str); 5] = [
        ("python3", &["pymysql_check.py"], "1"),
        ("python3", &["connector_check.py"], "1"),
        ("python3", &["connector_check.py"], "0"),
        ("node", &["mysql2_check.js"], "1"),
        ("java", &["-cp", JAR, "ConnJCheck.java"], "1"),
    ];
    for (program, args, pure) in checks {
        let (mut t, mut d) = (through.clone(), direct.clone());
        t.push(("MYSQL_PURE", pure.to_owned()));
        d.push(("MYSQL_PURE", pure.to_owned()));
        let (a, b) = blocking(move || (driver(program, args, &t), driver(program, args, &d))).await;
        assert_eq!(a, b, "{program} {args:?}: through the gateway vs direct");
        assert!(a.ends_with("OK\n"), "{a}");
    }
    // Prepared statements went through as the binary protocol.
    assert!(
        gw.metrics
            .commands_total
            .load(std::sync::atomic::Ordering::Relaxed)
            > 20
    );
}

/// sysbench (`oltp_read_only`, 8 threads) and mysqlslap connect through the gateway with their
/// default options plus TLS — libmariadb answers caching_sha2_password's full authentication
/// inside TLS — and run without errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_and_mysqlslap_connect_with_default_options_and_tls() {
    let gw = Arc::new(gateway(Options::default()).await);
    let port = gw.addr.port().to_string();
    let ca = gw.ca.display().to_string();
    // sysbench 1.0 with `--mysql-ssl=on` loads `cacert.pem`, `client-cert.pem` and
    // `client-key.pem` from its working directory (names it does not let one change): the
    // CA, and a client certificate the gateway does not ask for.
    let work = tempfile::tempdir().unwrap();
    let client = Certs::generate().unwrap().write_to(work.path()).unwrap();
    std::fs::copy(&gw.ca, work.path().join("cacert.pem")).unwrap();
    std::fs::copy(&client.cert, work.path().join("client-cert.pem")).unwrap();
    std::fs::copy(&client.key, work.path().join("client-key.pem")).unwrap();
    let cwd = work.path().to_owned();
    let out = blocking(move || {
        let sysbench = |step: &str| {
            let mut cmd = Command::new("sysbench");
            cmd.current_dir(&cwd).args([
                "oltp_read_only",
                "--db-driver=mysql",
                "--mysql-host=127.0.0.1",
                &format!("--mysql-port={port}"),
                "--mysql-user=alice",
                &format!("--mysql-password={TOKEN}"),
                "--mysql-db=app",
                "--mysql-ssl=on",
                "--tables=1",
                "--table-size=1000",
                "--threads=8",
                "--time=3",
                "--report-interval=0",
                step,
            ]);
            cmd.output().unwrap()
        };
        let prepared = sysbench("prepare");
        let ran = sysbench("run");
        let slap = Command::new("mysqlslap")
            .args([
                "--no-defaults",
                "--protocol=tcp",
                "-h127.0.0.1",
                &format!("-P{port}"),
                "-ualice",
                &format!("-p{TOKEN}"),
                &format!("--ssl-ca={ca}"),
                "--concurrency=4",
                "--iterations=3",
                "--create-schema=app",
                "--no-drop",
                "--query=SELECT 1",
            ])
            .output()
            .unwrap();
        (prepared, ran, slap)
    })
    .await;
    for (what, out) in [
        ("sysbench prepare", &out.0),
        ("sysbench run", &out.1),
        ("mysqlslap", &out.2),
    ] {
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            text(out),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report = text(&out.1);
    assert!(
        report.contains("transactions:")
            && report.contains("ignored errors:                      0"),
        "{report}"
    );
    assert!(
        text(&out.2).contains("Average number of seconds"),
        "{}",
        text(&out.2)
    );
}

/// `COM_CHANGE_USER`, as mysql-connector's `reset_session()` sends it to a MariaDB (pure and
/// C extension, TLS, default options): the same token again resets the session (a user
/// variable is gone, the database stays) and the connection goes on; a token that does not
/// authenticate is refused with 1045 and ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_user_with_the_same_identity_resets_the_session() {
    let gw = Arc::new(gateway(Options::default()).await);
    for pure in ["True", "False"] {
        let script = format!(
            r#"
import mysql.connector
c = mysql.connector.connect(host="127.0.0.1", port={port}, user="alice", password="{TOKEN}",
    database="app", ssl_ca={ca:?}, use_pure={pure}, collation="utf8mb4_general_ci")
cur = c.cursor()
cur.execute("SET @x = 42")
cur.execute("SELECT @x")
print(cur.fetchall())
c.reset_session()
cur = c.cursor()
cur.execute("SELECT @x, DATABASE()")
print(cur.fetchall())
try:
    c.cmd_change_user(username="alice", password="not-a-token", database="app")
    print("changed")
except mysql.connector.Error as e:
    print("refused", e.errno)
"#,
            port = gw.addr.port(),
            ca = gw.ca.display().to_string(),
        );
        let out = blocking(move || {
            Command::new("python3")
                .args(["-c", &script])
                .output()
                .unwrap()
        })
        .await;
        assert!(
            out.status.success(),
            "{}{}",
            text(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            text(&out),
            "[(42,)]\n[(None, 'app')]\nrefused 1045\n",
            "use_pure={pure}"
        );
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_and_large_packets_both_ways_match_direct() {
    let gw = Arc::new(gateway(Options::default()).await);
    let q = "SELECT seq, concat('row-', seq, '-', repeat('x', seq % 17)) FROM seq_1_to_1000000;";
    let g = gw.clone();
    let (through, direct) = blocking(move || {
        let mut a = g.mysql();
        a.arg("--quick");
        let mut b = g.direct();
        b.arg("--quick");
        (run(a, q), run(b, q))
    })
    .await;
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    assert_eq!(through.stdout.len(), direct.stdout.len());
    assert_eq!(sha256(&through.stdout), sha256(&direct.stdout));
    assert_eq!(
        through.stdout.iter().filter(|&&b| b == b'\n').count(),
        1_000_000
    );

    // A 10 MB BLOB round trip, and a 20 MB statement (a client packet split in two) with a
    // 20 MB result value (a server packet split in two).
    let big: String = "0123456789abcdef".repeat(20 * 1024 * 1024 / 16);
    let script = format!(
        "CREATE TABLE b (id INT PRIMARY KEY, v LONGBLOB);\n\
         INSERT INTO b VALUES (1, REPEAT(X'00FF10', 3495254));\n\
         SELECT LENGTH(v), SHA2(v, 256) FROM b;\n\
         SELECT HEX(v) = REPEAT('00FF10', 3495254) FROM b;\n\
         SELECT LENGTH('{big}'), SHA2('{big}', 256);\n\
         SELECT REPEAT('{big}', 1);\n\
         DROP TABLE b;\n"
    );
    let g = gw.clone();
    let s2 = script.clone();
    let (through, direct) =
        blocking(move || (ok(run(g.mysql(), &script)), ok(run(g.direct(), &s2)))).await;
    assert_eq!(through.len(), direct.len());
    assert!(through == direct, "large values differ through the gateway");
    assert!(
        through.starts_with("10485762\t"),
        "{}",
        &through[..80.min(through.len())]
    );
    assert!(through.contains(&big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_reaches_the_session_the_client_was_told_about() {
    let gw = Arc::new(gateway(Options::default()).await);
    let g = gw.clone();
    let sleeper = std::thread::spawn(move || {
        run(
            g.mysql(),
            "SELECT 'id', connection_id(); SELECT 'slept', SLEEP(60);",
        )
    });
    // Find the sleeping session from another one, then kill its query.
    let g = gw.clone();
    let killed = blocking(move || {
        for _ in 0..600 {
            let id = ok(run(
                g.mysql(),
                "SELECT id FROM information_schema.processlist WHERE info LIKE 'SELECT \\'slept\\'%';",
            ));
            let id = id.trim().to_owned();
            if !id.is_empty() {
                ok(run(g.mysql(), &format!("KILL QUERY {id};")));
                return id;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the sleeping query never showed up in the process list");
    })
    .await;
    let out = sleeper.join().unwrap();
    // The client was told the database's connection id; MariaDB ends the killed SLEEP with
    // ERROR 1317.
    assert_eq!(text(&out), format!("id\t{killed}\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ERROR 1317 (70100)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_read_only_through_the_gateway() {
    let gw = Arc::new(gateway(Options::default()).await);
    let g = gw.clone();
    blocking(move || {
        let base = |port: u16, user: &str, password: &str| {
            vec![
                "--mysql-host=127.0.0.1".to_owned(),
                format!("--mysql-port={port}"),
                format!("--mysql-user={user}"),
                format!("--mysql-password={password}"),
                "--mysql-db=app".to_owned(),
                "--tables=1".to_owned(),
                "--table-size=1000".to_owned(),
            ]
        };
        let sysbench = |args: Vec<String>, extra: &[&str]| {
            let out = Command::new("sysbench")
                .arg("oltp_read_only")
                .args(args)
                .args(extra)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "sysbench {extra:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                text(&out)
            );
            text(&out)
        };
        sysbench(
            base(g.db.port(), g.db.user(), g.db.password()),
            &["prepare"],
        );
        let through = base(g.addr.port(), "alice", TOKEN);
        for mode in [
            &["--events=200", "--time=0", "run"][..],
            &["--events=200", "--time=0", "--db-ps-mode=disable", "run"],
        ] {
            let out = sysbench(through.clone(), mode);
            assert!(
                out.contains("transactions:                        200"),
                "{out}"
            );
            assert!(
                out.contains("ignored errors:                      0"),
                "{out}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_data_local_infile_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.csv");
    std::fs::write(&file, "1,alice@example.com\n2,bob@example.com\n").unwrap();
    let sql = format!(
        "CREATE TABLE l (id INT, email TEXT); LOAD DATA LOCAL INFILE '{}' INTO TABLE l FIELDS TERMINATED BY ','; SELECT COUNT(*) FROM l;",
        file.display()
    );
    let gw = Arc::new(gateway(Options::default()).await);
    let g = gw.clone();
    let s = sql.clone();
    let refused = blocking(move || {
        let mut cmd = g.mysql();
        cmd.arg("--local-infile=1");
        run(cmd, &s)
    })
    .await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("LOAD DATA LOCAL INFILE is not allowed through this gateway"),
        "{err}"
    );
    let gw = Arc::new(
        gateway(Options {
            local_infile: true,
            ..Options::default()
        })
        .await,
    );
    let g = gw.clone();
    let loaded = blocking(move || {
        let mut cmd = g.mysql();
        cmd.arg("--local-infile=1");
        ok(run(cmd, &sql))
    })
    .await;
    assert_eq!(loaded, "2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_and_database_policies_are_enforced_before_the_token_is_asked() {
    let gw = Arc::new(
        gateway(Options {
            no_loopback_plaintext: true,
            databases: Some(vec!["app".into()]),
            ..Options::default()
        })
        .await,
    );
    let g = gw.clone();
    let (plain, other_db, fine) = blocking(move || {
        let mut plain = cli();
        plain.args([
            "--protocol=tcp",
            "-h127.0.0.1",
            &format!("-P{}", g.addr.port()),
            "-ualice",
            &format!("-p{TOKEN}"),
            "--skip-ssl",
        ]);
        let mut other = g.mysql();
        other.arg("-Dmysql");
        (
            run(plain, "SELECT 1;"),
            run(other, "SELECT 1;"),
            run(g.mysql(), "SELECT 1;"),
        )
    })
    .await;
    let e = String::from_utf8_lossy(&plain.stderr);
    assert!(e.contains("3159") && e.contains("only over TLS"), "{e}");
    let e = String::from_utf8_lossy(&other_db.stderr);
    assert!(e.contains("1044") && e.contains("mysql"), "{e}");
    assert_eq!(ok(fine), "1\n");
}

/// A minimal client on raw packets, for what no library sends: garbage, huge headers, a
/// session left idle until the database ends it.
struct Raw {
    tcp: TcpStream,
    rbuf: BytesMut,
}

impl Raw {
    async fn login(addr: SocketAddr, token: &str) -> Raw {
        let mut raw = Raw {
            tcp: TcpStream::connect(addr).await.unwrap(),
            rbuf: BytesMut::new(),
        };
        let greeting = raw.read().await;
        assert_eq!(greeting[0], 10);
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_DEPRECATE_EOF
            | CapabilityFlags::CLIENT_MULTI_RESULTS;
        let mut pass = token.as_bytes().to_vec();
        pass.push(0);
        let response = HandshakeResponse::new(
            Some(pass),
            (10, 11, 0),
            Some(&b"raw"[..]),
            Some(&b"app"[..]),
            Some(AuthPlugin::MysqlClearPassword),
            caps,
            None,
            1 << 24,
        );
        let mut payload = Vec::new();
        response.serialize(&mut payload);
        raw.send(1, &payload).await;
        let ok = raw.read().await;
        assert_eq!(ok[0], 0, "login: {:?}", String::from_utf8_lossy(&ok));
        raw
    }

    async fn send(&mut self, seq: u8, payload: &[u8]) {
        let mut out = BytesMut::new();
        encode_packet(seq, payload, &mut out);
        self.tcp.write_all(&out).await.unwrap();
    }

    /// The next packet's payload; empty at EOF.
    async fn read(&mut self) -> Vec<u8> {
        loop {
            if let Some(p) = decode_packet(&mut self.rbuf, 1 << 26).unwrap() {
                return p.payload.to_vec();
            }
            if self.tcp.read_buf(&mut self.rbuf).await.unwrap_or(0) == 0 {
                return Vec::new();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_side_disconnect_reaches_the_idle_client() {
    let gw = gateway(Options::default()).await;
    let mut raw = Raw::login(gw.addr, TOKEN).await;
    raw.send(0, b"\x03SET SESSION wait_timeout = 1").await;
    assert_eq!(raw.read().await[0], 0);
    // Idle: the database closes the session after a second; the gateway closes the client's
    // connection too — no hang, and no error packet the client would take for the answer to
    // its next query (directly, it sees the connection gone: 2006 / 2013).
    let eof = tokio::time::timeout(Duration::from_secs(30), raw.read())
        .await
        .expect("the disconnect never reached the client");
    assert!(eof.is_empty(), "{:?}", String::from_utf8_lossy(&eof));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_not_panics_or_hangs() {
    let gw = gateway(Options::default()).await;
    // Garbage instead of a handshake response.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let _ = tcp.read(&mut buf).await.unwrap();
    tcp.write_all(&[5, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut rest))
        .await
        .expect("the gateway hung on a bad handshake");
    // A change of user to a token that does not authenticate: asked for the token (an
    // authentication switch), refused with 1045, the connection ended.
    let mut changing = Raw::login(gw.addr, TOKEN).await;
    changing.send(0, b"\x11bob\x00").await;
    let switch = changing.read().await;
    assert_eq!(switch[0], 0xfe, "{switch:?}");
    changing.send(2, b"not-a-token\x00").await;
    let err = changing.read().await;
    assert_eq!(err[0], 0xff);
    assert_eq!(u16::from_le_bytes([err[1], err[2]]), 1045);
    assert!(changing.read().await.is_empty(), "the connection ended");
    // In a session: an unknown command, an execute of a statement never prepared, and a
    // packet header announcing more than the limit.
    let mut raw = Raw::login(gw.addr, TOKEN).await;
    for (payload, errno) in [
        (&b"\x7f"[..], 1047u16),
        (&b"\x17\x09\x00\x00\x00\x00\x01\x00\x00\x00"[..], 1243),
    ] {
        raw.send(0, payload).await;
        let err = raw.read().await;
        assert_eq!(err[0], 0xff);
        assert_eq!(u16::from_le_bytes([err[1], err[2]]), errno);
    }
    raw.send(0, b"\x03SELECT 1").await;
    assert_eq!(raw.read().await, vec![1], "the session still works");
    loop {
        let p = raw.read().await;
        assert!(!p.is_empty(), "the session ended");
        if p[0] == 0xfe {
            break;
        }
    }
    // 64 MiB and more, announced in chunk headers: refused without reading it all.
    let mut header = Vec::new();
    for _ in 0..5 {
        header.extend_from_slice(&[0xff, 0xff, 0xff, 0]);
        header.extend(std::iter::repeat_n(0u8, 0xff_ffff));
    }
    let _ = raw.tcp.write_all(&header).await;
    let err = tokio::time::timeout(Duration::from_secs(30), raw.read())
        .await
        .unwrap();
    assert_eq!(err.first(), Some(&0xff));
    assert_eq!(u16::from_le_bytes([err[1], err[2]]), 1153);
    drop(raw);
    // The gateway still serves.
    let mut again = Raw::login(gw.addr, TOKEN).await;
    again.send(0, b"\x0e").await;
    assert_eq!(again.read().await[0], 0);
    (gw.shutdown)();
}

// ---------------------------------------------------------------------------------------
// caching_sha2_password (MySQL 8's default), against scripted servers: no MySQL 8 here.
// ---------------------------------------------------------------------------------------

const NONCE: &[u8; 20] = b"abcdefghij0123456789";
const SHA2_PASSWORD: &str = "s3cret-sha2";

enum Sha2 {
    /// The server has the password cached: the scramble is enough.
    Fast,
    /// Full authentication over TLS: the password in clear.
    FullTls(Arc<rustls::ServerConfig>),
    /// Full authentication in plain TCP: the client asks for the server's RSA key and sends
    /// the password encrypted with it.
    FullRsa(String),
}

/// A scripted caching_sha2_password server; returns what the client finally sent.
async fn sha2_server(mode: Sha2) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
    use mysql_common::constants::StatusFlags;
    use mysql_common::io::ParseBuf;
    use mysql_common::packets::HandshakePacket;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut io: portcullis_core::io::BoxIo = Box::new(tcp);
        let mut rbuf = BytesMut::new();
        async fn read(io: &mut portcullis_core::io::BoxIo, rbuf: &mut BytesMut) -> Vec<u8> {
            loop {
                if let Some(p) = decode_packet(rbuf, 1 << 20).unwrap() {
                    return p.payload.to_vec();
                }
                assert!(io.read_buf(rbuf).await.unwrap() > 0, "the client left");
            }
        }
        async fn send(io: &mut portcullis_core::io::BoxIo, seq: u8, payload: &[u8]) {
            let mut out = BytesMut::new();
            encode_packet(seq, payload, &mut out);
            io.write_all(&out).await.unwrap();
        }
        let tls = matches!(mode, Sha2::FullTls(_));
        let mut caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_DEPRECATE_EOF;
        if tls {
            caps |= CapabilityFlags::CLIENT_SSL;
        }
        let mut tail = NONCE[8..].to_vec();
        tail.push(0);
        let hello = HandshakePacket::new(
            10,
            &b"8.0.36"[..],
            42,
            NONCE[..8].try_into().unwrap(),
            Some(tail),
            caps,
            45,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            Some(&b"caching_sha2_password"[..]),
        );
        let mut payload = Vec::new();
        hello.serialize(&mut payload);
        send(&mut io, 0, &payload).await;
        let mut response = read(&mut io, &mut rbuf).await;
        let mut seq = 2;
        if let Sha2::FullTls(config) = &mode {
            assert_eq!(response.len(), 32, "an SSL request");
            let prefix = std::mem::take(&mut rbuf).freeze();
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            io = Box::new(
                acceptor
                    .accept(portcullis_core::io::Prefixed::new(prefix, io))
                    .await
                    .unwrap(),
            );
            response = read(&mut io, &mut rbuf).await;
            seq = 3;
        }
        let parsed: HandshakeResponse<'_> = ParseBuf(&response).parse(()).unwrap();
        assert_eq!(parsed.user(), b"app");
        assert_eq!(parsed.auth_plugin(), Some(&AuthPlugin::CachingSha2Password));
        let expected = scramble_sha256(NONCE, SHA2_PASSWORD.as_bytes()).unwrap();
        assert_eq!(
            parsed.scramble_buf(),
            &expected[..],
            "the fast-path scramble"
        );
        let ok = [0u8, 0, 0, 2, 0, 0, 0];
        match mode {
            Sha2::Fast => {
                send(&mut io, seq, &[0x01, 0x03]).await;
                send(&mut io, seq + 1, &ok).await;
                Vec::new()
            }
            Sha2::FullTls(_) => {
                send(&mut io, seq, &[0x01, 0x04]).await;
                let password = read(&mut io, &mut rbuf).await;
                send(&mut io, seq + 2, &ok).await;
                password
            }
            Sha2::FullRsa(pem) => {
                send(&mut io, seq, &[0x01, 0x04]).await;
                assert_eq!(read(&mut io, &mut rbuf).await, vec![0x02], "a key request");
                let mut key = vec![0x01];
                key.extend_from_slice(pem.as_bytes());
                send(&mut io, seq + 2, &key).await;
                let encrypted = read(&mut io, &mut rbuf).await;
                send(&mut io, seq + 4, &ok).await;
                encrypted
            }
        }
    });
    (addr, task)
}

async fn sha2_login(addr: SocketAddr, tls: UpstreamTls) -> portcullis_mysql::Connected {
    let upstream = UpstreamConfig::new("127.0.0.1", addr.port(), "app", SHA2_PASSWORD).tls(tls);
    let opened = portcullis_mysql::open(&upstream).await.unwrap();
    let login = portcullis_mysql::Login {
        capabilities: CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_DEPRECATE_EOF,
        mariadb_capabilities: mysql_common::constants::MariadbCapabilities::empty(),
        collation: 45,
        database: None,
        attributes: None,
        max_packet: 1 << 24,
    };
    opened
        .login(&upstream, "app", SHA2_PASSWORD, &login)
        .await
        .unwrap()
}

#[tokio::test]
async fn caching_sha2_fast_path_full_over_tls_and_full_with_rsa() {
    // Fast path.
    let (addr, server) = sha2_server(Sha2::Fast).await;
    let connected = sha2_login(addr, UpstreamTls::disabled()).await;
    assert_eq!(connected.greeting.connection_id, 42);
    server.await.unwrap();

    // Full authentication over TLS: the password in clear, NUL-terminated.
    let dir = tempfile::tempdir().unwrap();
    let files = Certs::generate().unwrap().write_to(dir.path()).unwrap();
    let config = portcullis_core::tls::server_config(&files.cert, &files.key).unwrap();
    let (addr, server) = sha2_server(Sha2::FullTls(config)).await;
    let tls = UpstreamTls::new(UpstreamTlsMode::VerifyFull, Some(&files.ca)).unwrap();
    let connected = sha2_login(addr, tls).await;
    assert!(connected.tls);
    assert_eq!(
        server.await.unwrap(),
        format!("{SHA2_PASSWORD}\0").into_bytes()
    );

    // Full authentication without TLS: RSA-OAEP with the server's key; decrypted with the
    // private key, XORed with the nonce, it is the password.
    let key = dir.path().join("rsa.pem");
    let public = dir.path().join("rsa.pub");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let pem = std::fs::read_to_string(&public).unwrap();
    let (addr, server) = sha2_server(Sha2::FullRsa(pem)).await;
    sha2_login(addr, UpstreamTls::disabled()).await;
    let encrypted = server.await.unwrap();
    assert_eq!(encrypted.len(), 256);
    let cipher = dir.path().join("cipher.bin");
    std::fs::write(&cipher, &encrypted).unwrap();
    let plain = openssl(&[
        "pkeyutl",
        "-decrypt",
        "-inkey",
        key.to_str().unwrap(),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-in",
        cipher.to_str().unwrap(),
    ]);
    let unmasked: Vec<u8> = plain
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ NONCE[i % NONCE.len()])
        .collect();
    assert_eq!(unmasked, format!("{SHA2_PASSWORD}\0").into_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_cursors_fetch_through_the_gateway() {
    let gw = gateway(Options::default()).await;
    let mut raw = Raw::login(gw.addr, TOKEN).await;
    // COM_STMT_PREPARE.
    raw.send(0, b"\x16SELECT seq, concat('row', seq) FROM seq_1_to_10")
        .await;
    let ok = raw.read().await;
    assert_eq!(ok[0], 0, "{:?}", String::from_utf8_lossy(&ok));
    let id = u32::from_le_bytes(ok[1..5].try_into().unwrap());
    let columns = u16::from_le_bytes([ok[5], ok[6]]);
    assert_eq!(columns, 2);
    for _ in 0..columns {
        raw.read().await;
    }
    // COM_STMT_EXECUTE with CURSOR_TYPE_READ_ONLY: metadata, then an end with
    // SERVER_STATUS_CURSOR_EXISTS and no rows.
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id.to_le_bytes());
    exec.extend_from_slice(&[1, 1, 0, 0, 0]);
    raw.send(0, &exec).await;
    assert_eq!(raw.read().await, vec![2]);
    raw.read().await;
    raw.read().await;
    let end = raw.read().await;
    assert_eq!(end[0], 0xfe);
    let status = u16::from_le_bytes([end[end.len() - 4], end[end.len() - 3]]);
    assert!(status & 0x0040 != 0, "no cursor: {end:?}");
    // COM_STMT_FETCH 4 rows at a time until the last row is sent.
    let mut rows = 0;
    for _ in 0..5 {
        let mut fetch = vec![0x1c];
        fetch.extend_from_slice(&id.to_le_bytes());
        fetch.extend_from_slice(&4u32.to_le_bytes());
        raw.send(0, &fetch).await;
        loop {
            let p = raw.read().await;
            assert!(!p.is_empty(), "the session ended");
            match p[0] {
                0x00 => rows += 1,
                0xfe => break,
                other => panic!("unexpected packet {other:#x}: {p:?}"),
            }
        }
        if rows == 10 {
            break;
        }
    }
    assert_eq!(rows, 10);
    // The session goes on.
    raw.send(0, b"\x0e").await;
    assert_eq!(raw.read().await[0], 0);
}
