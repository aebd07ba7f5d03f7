//! The `portcullis` binary, end to end: `token hash`, `check`, and `run` in front of a real
//! PostgreSQL with real clients (tokio-postgres), signals included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use portcullis_identity::hash_token;
use portcullis_testkit::{PgCluster, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

#[path = "gateway/adversarial.rs"]
mod adversarial;
#[path = "../../../crates/portcullis-policy/src/corpus.rs"]
#[allow(dead_code, unreachable_pub)]
mod corpus;
#[path = "gateway/differential.rs"]
mod differential;
#[path = "gateway/docs.rs"]
mod docs;
#[path = "gateway/hostile.rs"]
mod hostile;
#[path = "gateway/http.rs"]
mod http;
#[path = "gateway/mask.rs"]
mod mask;
#[path = "gateway/mysql.rs"]
mod mysql;
#[path = "gateway/oidc.rs"]
mod oidc;
#[path = "gateway/policy.rs"]
mod policy;
#[path = "gateway/soak.rs"]
mod soak;

// ---------------------------------------------------------------------------------------
// token hash
// ---------------------------------------------------------------------------------------

fn token_hash(stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(["token", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn token_hash_prints_the_sha256_of_stdin_without_its_newline() {
    let out = token_hash(b"abc\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
    // Without a newline, the same; only one newline is trimmed.
    assert_eq!(token_hash(b"abc").stdout, token_hash(b"abc\n").stdout);
    assert_ne!(token_hash(b"abc\n\n").stdout, token_hash(b"abc\n").stdout);
}

#[test]
fn token_hash_refuses_an_empty_token() {
    for input in [&b""[..], b"\n"] {
        let out = token_hash(input);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("empty token"));
    }
}

// ---------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------

fn check(path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_accepts_the_example_file() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("portcullis.toml");
    let (code, stdout, stderr) = check(&example, &[("PG_PASSWORD", "x")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "ok: 1 listener(s), 1 token(s), 3 policy rule(s)\n");

    // The variable it references is required.
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&example)
        .env_remove("PG_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("environment variable PG_PASSWORD is not set"),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_problem_with_its_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        r#"[[identity.tokens]]
name = "ci"
sha256 = "not-a-digest"

[[postgres]]
name = "main"
listen = "x"
allow_plaintext_tokens_on_loopback = true
handshake_timeout = "soon"
[postgres.upstream]
host = "127.0.0.1"
user = "app"
tls = "maybe"
password = ""

[masking]
detectors = ["emial"]
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = check(&path, &[]);
    assert_eq!(code, Some(2));
    assert_eq!(stdout, "");
    let file = path.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        format!("{file}:3: [[identity.tokens]] sha256: must be 64 hexadecimal digits"),
        format!("{file}:7: [[postgres]] listen: invalid socket address \"x\""),
        format!("{file}:9: [[postgres]] handshake_timeout: invalid duration \"soon\""),
        format!("{file}:13: [postgres.upstream] tls: unknown upstream tls mode \"maybe\""),
        format!("{file}:17: [masking] detectors: unknown detector \"emial\""),
        format!("{file}: 5 problems"),
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, prefix) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(prefix.as_str()),
            "{line:?} should start with {prefix:?}"
        );
    }

    // A syntax error stops reading: one problem, with its line.
    std::fs::write(&path, "[admin]\nlisten = \"127.0.0.1:1\"\n[[postgres]\n").unwrap();
    let (code, _, stderr) = check(&path, &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.starts_with(&format!("{file}:3: ")), "{stderr}");

    // A missing file is a problem too.
    let (code, _, stderr) = check(&dir.path().join("nope.toml"), &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cannot read the file"), "{stderr}");
}

#[test]
fn run_refuses_an_invalid_configuration_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, "[admin]\nlisten = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("no listener"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// run, end to end
// ---------------------------------------------------------------------------------------

/// The gateway as a child process, killed if the test fails.
struct Gateway {
    child: Child,
    dir: PathBuf,
}

impl Gateway {
    fn spawn(config: &Path, dir: &Path, upstream_password: &str) -> Gateway {
        Gateway::spawn_with_env(config, dir, upstream_password, &[])
    }

    fn spawn_with_env(
        config: &Path,
        dir: &Path,
        upstream_password: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let stdout = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("PG_PASSWORD", upstream_password)
            .env("PORTCULLIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Gateway {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "--- stdout\n{}--- stderr\n{}",
            read("stdout.log"),
            read("stderr.log")
        )
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Spawn the gateway and wait until its admin server answers `/healthz` with 200.
    async fn started(config: &Path, dir: &Path, upstream_password: &str, admin: u16) -> Gateway {
        Gateway::started_with_env(config, dir, upstream_password, admin, &[]).await
    }

    /// [`Gateway::started`], with `env` added to the process's environment.
    async fn started_with_env(
        config: &Path,
        dir: &Path,
        upstream_password: &str,
        admin: u16,
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut gateway = Gateway::spawn_with_env(config, dir, upstream_password, env);
        wait_for(&mut gateway, "/healthz", || async {
            matches!(http_get(admin, "/healthz").await, Ok((200, _)))
        })
        .await;
        gateway
    }

    /// Wait until the process exits, at most `within` (else fail with `what` and the logs).
    async fn wait_exit(&mut self, within: Duration, what: &str) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` over plain HTTP/1.1: `(status, body)`.
async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_as(port, path, None).await
}

/// `GET path` over plain HTTP/1.1, with `Authorization: Bearer TOKEN` when given.
async fn http_get_as(port: u16, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Poll until `ready` holds (short sleeps, a deadline), failing with the gateway's logs.
async fn wait_for<F, Fut>(gateway: &mut Gateway, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ready().await {
            return;
        }
        if let Some(status) = gateway.exited() {
            panic!(
                "the gateway exited ({status}) while waiting for {what}\n{}",
                gateway.logs()
            );
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", gateway.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(admin: u16, line_prefix: &str) -> Option<u64> {
    let (status, body) = http_get(admin, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn connect(port: u16, token: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conninfo = format!("host=127.0.0.1 port={port} user=alice password={token} dbname=app");
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn config_text(gw: u16, admin: u16, cluster: &PgCluster, tokens: &[(&str, &str)]) -> String {
    let mut text = format!(
        r#"[gateway]
drain_timeout = "3s"

[admin]
listen = "127.0.0.1:{admin}"

[[postgres]]
name = "main"
listen = "127.0.0.1:{gw}"
allow_plaintext_tokens_on_loopback = true
[postgres.upstream]
host = "{host}"
port = {port}
user = "{user}"
password = "${{PG_PASSWORD}}"
"#,
        host = cluster.host(),
        port = cluster.port(),
        user = cluster.user(),
    );
    for (name, token) in tokens {
        text += &format!(
            "\n[[identity.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\n",
            hash_token(token)
        );
    }
    text
}

/// Wait until the client has noticed that its connection closed (it learns asynchronously).
async fn wait_closed(client: &tokio_postgres::Client, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !client.is_closed() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_reloads_revokes_and_drains() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    let (gw, admin) = (free_port(), free_port());
    let (alice, bob) = ("alice-token-1f3a", "bob-token-9c2e");
    std::fs::write(
        &path,
        config_text(gw, admin, &cluster, &[("alice", alice), ("bob", bob)]),
    )
    .unwrap();

    let mut gateway = Gateway::spawn(&path, dir.path(), cluster.password());
    wait_for(&mut gateway, "/healthz", || async {
        matches!(http_get(admin, "/healthz").await, Ok((200, body)) if body == "ok\n")
    })
    .await;
    let stdout = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert!(
        stdout.contains(&format!(
            "listening name=main addr=127.0.0.1:{gw} upstream=127.0.0.1:{}\n",
            cluster.port()
        )),
        "{stdout}"
    );

    // A session per token; queries go through.
    let alice_session = connect(gw, alice).await.unwrap();
    let row = alice_session
        .query_one("select 1::int4", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    let bob_session = connect(gw, bob).await.unwrap();
    bob_session.simple_query("select 1").await.unwrap();

    // A wrong token is refused with 28P01.
    let err = connect(gw, "wrong-token").await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");

    // Metrics. The refusal is counted once the gateway has finished with that connection,
    // which can be just after the client read its FATAL: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = http_get(admin, "/metrics").await.unwrap();
        if body.contains("portcullis_logins_refused_total{listener=\"main\"} 1\n")
            || Instant::now() > deadline
        {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE portcullis_sessions_active gauge\n"),
        "{body}"
    );
    assert!(
        body.contains("portcullis_sessions_active{listener=\"main\"} 2\n"),
        "{body}"
    );
    assert!(
        body.contains("portcullis_sessions_total{listener=\"main\"} 2\n"),
        "{body}"
    );
    assert!(
        body.contains("portcullis_logins_refused_total{listener=\"main\"} 1\n"),
        "{body}"
    );
    for family in [
        "portcullis_commands_total",
        "portcullis_command_errors_total",
        "portcullis_bytes_from_clients_total",
        "portcullis_bytes_to_clients_total",
        "portcullis_cancels_forwarded_total",
    ] {
        assert!(
            body.contains(&format!("# HELP {family} ")),
            "{family}\n{body}"
        );
        assert!(
            body.contains(&format!("{family}{{listener=\"main\"}} ")),
            "{family}\n{body}"
        );
    }

    // An invalid file on SIGHUP keeps the running configuration.
    std::fs::write(&path, "[[postgres]]\nname = \n").unwrap();
    gateway.signal("HUP");
    wait_for(&mut gateway, "the refused reload", || async {
        metric(admin, "portcullis_config_reloads_total{result=\"failure\"}").await == Some(1)
    })
    .await;
    connect(gw, alice).await.unwrap();

    // Remove alice's token and reload.
    std::fs::write(&path, config_text(gw, admin, &cluster, &[("bob", bob)])).unwrap();
    gateway.signal("HUP");
    wait_for(&mut gateway, "the reload", || async {
        metric(admin, "portcullis_config_reloads_total{result=\"success\"}").await == Some(1)
    })
    .await;
    assert_eq!(
        metric(admin, "portcullis_config_last_reload_successful").await,
        Some(1)
    );

    // New logins with the removed token are refused...
    let err = connect(gw, alice).await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
    // ...and the open session ends at its next command.
    let err = alice_session.simple_query("select 1").await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(
        db.message(),
        "authentication failed: token \"alice\" was removed from the configuration"
    );
    wait_closed(
        &alice_session,
        Duration::from_secs(5),
        "alice's session was not closed",
    )
    .await;

    // Bob's session, opened before the reload, goes on, and can still cancel a query
    // (its cancel key belongs to the previous generation of the listener).
    bob_session.simple_query("select 1").await.unwrap();
    let cancel = bob_session.cancel_token();
    let started = Instant::now();
    let mut sleeper = tokio::spawn(async move {
        bob_session
            .simple_query("select pg_sleep(30)")
            .await
            .map(drop)
    });
    // A cancel that arrives before the query starts cancels nothing: repeat until it ends.
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel_query(NoTls).await.unwrap();
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(500), &mut sleeper).await {
            break done.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cancel request did not reach the session\n{}",
            gateway.logs()
        );
    };
    let err = outcome.expect_err("the sleep should be cancelled");
    assert_eq!(code(&err), Some(&SqlState::QUERY_CANCELED), "{err}");
    let forwarded = metric(
        admin,
        "portcullis_cancels_forwarded_total{listener=\"main\"}",
    )
    .await;
    assert!(forwarded >= Some(1), "{forwarded:?}");

    // A new session with bob's token, from the new generation: open during shutdown, so the
    // gateway has to wait for the drain deadline.
    let lingering = connect(gw, bob).await.unwrap();
    lingering.simple_query("select 1").await.unwrap();

    gateway.signal("TERM");
    let signalled = Instant::now();
    let status = gateway
        .wait_exit(
            Duration::from_secs(3 + 5),
            "the gateway did not exit within the drain deadline",
        )
        .await;
    assert!(status.success(), "{status}\n{}", gateway.logs());
    // It waited for the open session, up to the deadline.
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "{:?}",
        signalled.elapsed()
    );
    let logs = gateway.logs();
    assert!(logs.contains("drain deadline passed"), "{logs}");
    // The session was told (FATAL 57P01) and closed, not left hanging.
    assert!(lingering.simple_query("select 1").await.is_err());
    wait_closed(
        &lingering,
        Duration::from_secs(10),
        "the lingering session stayed open",
    )
    .await;
}

/// A throwaway cluster and a gateway in front of it with `tokens`, nothing else configured:
/// the cluster, the gateway's directory, its PostgreSQL port, the gateway.
async fn simple_gateway(tokens: &[(&str, &str)]) -> (PgCluster, tempfile::TempDir, u16, Gateway) {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    let (gw, admin) = (free_port(), free_port());
    std::fs::write(&path, config_text(gw, admin, &cluster, tokens)).unwrap();
    let gateway = Gateway::started(&path, dir.path(), cluster.password(), admin).await;
    (cluster, dir, gw, gateway)
}

/// `SIGUSR1` logs every live session with what it is doing (the soak does this when an
/// operation is stuck); a session that ended is gone from the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_dumps_every_live_session_and_its_state() {
    let (_cluster, dir, gw, mut gateway) = simple_gateway(&[("bob", "t"), ("carol", "u")]).await;
    let bob = connect(gw, "t").await.unwrap();
    bob.simple_query("select 1").await.unwrap();
    let carol = connect(gw, "u").await.unwrap();
    carol.simple_query("select 1").await.unwrap();
    drop(carol);
    // A tick (once a second) refreshes a session's state.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gateway.signal("USR1");
    wait_for(&mut gateway, "the dump", || {
        let logs = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        async move { logs.contains("session states dumped") }
    })
    .await;
    let logs = gateway.logs();
    let states: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("session state") && !l.contains("dumped"))
        .collect();
    assert_eq!(states.len(), 1, "{logs}");
    assert!(
        states[0].contains("identity=bob") && states[0].contains("replies=0"),
        "{}",
        states[0]
    );
    assert!(logs.contains("sessions=1"), "{logs}");
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_no_sessions_exits_at_once() {
    let (_cluster, _dir, gw, mut gateway) = simple_gateway(&[("bob", "t")]).await;
    let session = connect(gw, "t").await.unwrap();
    session.simple_query("select 1").await.unwrap();
    drop(session);

    gateway.signal("INT");
    let signalled = Instant::now();
    let status = gateway
        .wait_exit(Duration::from_secs(5), "no exit after SIGINT")
        .await;
    assert!(status.success(), "{}", gateway.logs());
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "{:?}",
        signalled.elapsed()
    );
}

/// Run a command the demo printed, through `sh`: `(success, stdout, stderr)`.
async fn shell(command: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The README's first command: `portcullis demo` starts PostgreSQL and the gateway, prints a
/// command for each outcome — masked, clear, blocked, approved, audited — each of which works
/// as printed (run here with real psql and the `portcullis` CLI), and Ctrl-C stops both and
/// removes the temporary data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tour_commands_work_as_printed_and_ctrl_c_cleans_up() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["demo", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("Press Ctrl-C") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the demo is ready within 60 s");
    assert!(ready, "the demo exited early:\n{printed}");
    for step in [
        "starting PostgreSQL",
        "loading sample data",
        "starting the gateway",
    ] {
        assert!(
            printed.contains(step),
            "no progress line {step:?}:\n{printed}"
        );
    }
    let commands: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("$ "))
        .collect();
    let find = |needle: &str| -> String {
        commands
            .iter()
            .find(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no command with {needle:?} printed:\n{printed}"))
            .to_string()
    };
    let pg_port: u16 = printed
        .lines()
        .find(|l| l.contains("PostgreSQL (throwaway"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PostgreSQL address printed:\n{printed}"));

    // 1. Masked for the analyst, 2. clear for the DBA.
    let select = "select name, email, phone, card_number";
    let analyst_select = commands
        .iter()
        .find(|c| c.contains(select) && c.contains("user=alice"))
        .unwrap();
    let (ok, out, err) = shell(analyst_select).await;
    assert!(ok, "{err}");
    assert!(out.contains("Ada Lovelace"), "{out}");
    for clear in [
        "ada.lovelace@example.com",
        "4111 1111 1111 1111",
        "202-555-0101",
    ] {
        assert!(!out.contains(clear), "the analyst saw {clear}:\n{out}");
    }
    let dba_select = commands
        .iter()
        .find(|c| c.contains(select) && c.contains("user=bob"))
        .unwrap();
    let (ok, out, err) = shell(dba_select).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("ada.lovelace@example.com") && out.contains("4111 1111 1111 1111"),
        "{out}"
    );

    // 3. Blocked.
    let (ok, _, err) = shell(&find("drop table orders")).await;
    assert!(!ok && err.contains("blocked by rule \"no-drop\""), "{err}");

    // 4. Held for approval, approved by the DBA with the printed commands, then run.
    let mut held = tokio::process::Command::new("sh")
        .args(["-c", &find("delete from orders")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut held_err = held.stderr.take().unwrap();
    let mut notice = Vec::new();
    let id = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut chunk = [0u8; 512];
            let n = held_err.read(&mut chunk).await.unwrap();
            assert!(n > 0, "psql ended: {}", String::from_utf8_lossy(&notice));
            notice.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&notice);
            if let Some(rest) = text.split("held for approval: request ").nth(1)
                && let Some(id) = rest.split_whitespace().next()
                && rest.contains('\n')
            {
                return id.to_owned();
            }
        }
    })
    .await
    .expect("the NOTICE naming the request");
    let (ok, out, err) = shell(&find("approvals list")).await;
    assert!(ok && out.contains(&id), "{out}{err}");
    let (ok, out, err) = shell(&find("approvals approve").replace("<ID>", &id)).await;
    assert!(ok, "{out}{err}");
    let done = tokio::time::timeout(Duration::from_secs(30), held.wait_with_output())
        .await
        .expect("the held DELETE runs once approved")
        .unwrap();
    assert!(done.status.success());
    assert!(String::from_utf8_lossy(&done.stdout).contains("DELETE 40"));

    // 5. Audited: the trail verifies and shows what happened.
    let (ok, out, err) = shell(&find("audit verify")).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = shell(&find("audit show")).await;
    assert!(
        ok && out.contains("delete from orders") && out.contains("drop table orders"),
        "{out}{err}"
    );

    // A wrong token.
    let (ok, _, err) = shell(&find("PGPASSWORD=wrong")).await;
    assert!(!ok && err.contains("authentication failed"), "{err}");

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the demo stops within 30 s")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push_str(&line);
    }
    assert!(rest.contains("stopped; temporary data removed"), "{rest}");
    // The throwaway PostgreSQL and the trail are gone.
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", pg_port))
            .await
            .is_err()
    );
    let trail = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("audit trail: "))
        .unwrap();
    assert!(!Path::new(trail).exists(), "{trail} left behind");
}

// ---------------------------------------------------------------------------------------
// audit trail
// ---------------------------------------------------------------------------------------

/// Run `portcullis ARGS`: `(exit code, stdout, stderr)`.
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `portcullis audit verify` on `files` (and extra args): `(exit code, stdout)`.
fn verify(files: &[&Path], extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["audit", "verify"];
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = cli(&args);
    (code, format!("{stdout}{stderr}"))
}

/// A config with an `[audit]` section writing to `trail` (and `copies`), signed by `key`.
fn audit_config(base: String, key: &Path, trail: &Path, copies: &Path, extra: &str) -> String {
    format!(
        "{base}\n[audit]\non_failure = \"refuse\"\nsigning_key = \"{}\"\ncheckpoint_interval = \"1s\"\n[[audit.sinks]]\nkind = \"jsonl\"\npath = \"{}\"\ncheckpoint_copy = \"{}\"\nfsync = \"interval\"\n{extra}",
        key.display(),
        trail.display(),
        copies.display()
    )
}

async fn run_until_stopped(gateway: &mut Gateway) {
    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(20), "no exit").await;
    assert!(status.success(), "{status}\n{}", gateway.logs());
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Recompute a line's own hash after its body changed (what a forger with the format but
/// without the signing key can do).
fn rehash(body: &str) -> String {
    let hash = portcullis_audit::chain::sha256(body.as_bytes());
    format!("{body},\"hash\":\"{}\"}}", hex_lower(&hash))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `body` with its `prev` field set to `prev`.
fn with_prev(body: &str, prev: &str) -> String {
    let at = body.rfind("\"prev\":\"").unwrap() + 8;
    format!("{}{prev}{}", &body[..at], &body[at + 64..])
}

/// A line's `seq`.
fn seq_of(line: &str) -> u64 {
    line.split("\"seq\":")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap()
}

/// `(body without the hash suffix, hash)` of a line.
fn split_hash(line: &str) -> (&str, &str) {
    let at = line.rfind(",\"hash\":\"").unwrap();
    (&line[..at], &line[at + 9..at + 9 + 64])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_records_sessions_and_names_every_kind_of_tampering() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let dir = tempfile::tempdir().unwrap();
    // `--out` in a directory that does not exist yet: made.
    let key = dir.path().join("keys").join("audit.key");
    let (code, out, err) = cli(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("public key:"), "{out}");
    let public = dir.path().join("keys").join("audit.key.pub");
    // A second keygen does not overwrite the key.
    assert_eq!(
        cli(&["audit", "keygen", "--out", key.to_str().unwrap()]).0,
        Some(2)
    );

    let trail = dir.path().join("audit").join("trail.jsonl");
    // The checkpoint copies in a directory of their own that does not exist yet: made at
    // start, like the trail's (it once failed every checkpoint, and the trail then verified
    // as tampered with).
    let copies = dir.path().join("trail-copy").join("checkpoints.jsonl");
    let path = dir.path().join("portcullis.toml");
    let (gw, admin) = (free_port(), free_port());
    let alice = "alice-token-audit";
    let base = config_text(gw, admin, &cluster, &[("alice", alice)]);
    std::fs::write(&path, audit_config(base, &key, &trail, &copies, "")).unwrap();
    let (code, out, err) = check(&path, &[("PG_PASSWORD", cluster.password())]);
    assert_eq!(code, Some(0), "{out}{err}");
    // A copy that could never be written is refused by check, naming the key.
    let blocked = dir.path().join("blocked.toml");
    let base = config_text(gw, admin, &cluster, &[("alice", alice)]);
    let not_a_dir = path.join("checkpoints.jsonl");
    std::fs::write(&blocked, audit_config(base, &key, &trail, &not_a_dir, "")).unwrap();
    let (code, out, err) = check(&blocked, &[("PG_PASSWORD", cluster.password())]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        format!("{out}{err}").contains("checkpoint_copy")
            && format!("{out}{err}").contains("is not a directory"),
        "{out}{err}"
    );

    // First run: a session with simple and extended queries, an error, a refused login.
    let mut gateway = Gateway::started(&path, dir.path(), cluster.password(), admin).await;
    let client = connect(gw, alice).await.unwrap();
    client
        .batch_execute("create table audited (x int4)")
        .await
        .unwrap();
    client
        .execute("insert into audited values ($1)", &[&42i32])
        .await
        .unwrap();
    let rows = client.query("select x from audited", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    let err = client.simple_query("select 1/0").await.unwrap_err();
    assert_eq!(code_of(&err), Some(&SqlState::DIVISION_BY_ZERO));
    drop(client);
    let err = connect(gw, "not-a-token").await.unwrap_err();
    assert_eq!(code_of(&err), Some(&SqlState::INVALID_PASSWORD));
    // The sink's counters are on /metrics.
    let sink_label = format!("{{sink=\"jsonl:{}\"}} ", trail.display());
    // session start, 7 commands and their outcomes, session end, the refused login
    let written_name = format!("portcullis_audit_records_written_total{sink_label}");
    wait_for(&mut gateway, "17 records written", || async {
        metric(admin, &written_name).await.is_some_and(|n| n >= 17)
    })
    .await;
    assert_eq!(
        metric(
            admin,
            &format!("portcullis_audit_records_lost_total{sink_label}")
        )
        .await,
        Some(0)
    );
    assert_eq!(
        metric(admin, &format!("portcullis_audit_sink_up{sink_label}")).await,
        Some(1)
    );
    run_until_stopped(&mut gateway).await;

    let (code, out) = verify(&[&trail], &["--key", public.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("intact:"), "{out}");
    assert!(
        out.contains("1 sessions, 7 commands, 1 refused connections"),
        "{out}"
    );
    assert!(
        out.contains("signed by") && out.contains("(the expected key)"),
        "{out}"
    );
    assert!(
        out.contains("sealed: ends with the gateway's shutdown checkpoint"),
        "{out}"
    );

    let (code, shown, err) = cli(&["audit", "show", trail.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    for expected in [
        "session start: alice [] via static_token from 127.0.0.1:",
        "> insert into audited values ($1)",
        // (tokio-postgres numbers its statements per process: s0, s1, ...)
        "> insert into audited values ($1)  [prepared s",
        "]  [not executed]",
        "params: x'0000002a'",
        "→ ok INSERT 0 1 · 1 rows",
        "→ ok SELECT 1 · 1 rows",
        "→ error · 0 rows",
        "· 22012 division by zero",
        "connection refused_login from 127.0.0.1:",
        "user=alice",
        "session end after 7 commands",
        "checkpoint (shutdown), signed",
    ] {
        assert!(shown.contains(expected), "missing {expected:?} in\n{shown}");
    }
    let session = shown
        .lines()
        .find(|l| l.contains("session start: alice"))
        .and_then(|l| l.split('[').nth(1))
        .map(|s| s[..16].to_owned())
        .unwrap();
    let (code, one, _) = cli(&[
        "audit",
        "show",
        trail.to_str().unwrap(),
        "--session",
        &session,
        "--json",
    ]);
    assert_eq!(code, Some(0));
    let records: Vec<&str> = one.lines().collect();
    // start, 7 × (command, outcome), end — and nothing from other sessions. (tokio-postgres
    // prepares in one unit and executes in another.)
    assert_eq!(records.len(), 16, "{one}");
    assert!(
        records
            .iter()
            .all(|r| r.contains(&format!("\"session\":\"{session}\"")))
    );
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(i, r)| r.contains(&format!("\"sseq\":{},", i + 1))),
        "{one}"
    );

    // Second run on the same trail: the chain continues across the restart.
    let first_run = lines_of(&trail).len();
    let mut gateway = Gateway::started(&path, dir.path(), cluster.password(), admin).await;
    let client = connect(gw, alice).await.unwrap();
    client
        .simple_query("select count(*) from audited")
        .await
        .unwrap();
    drop(client);
    run_until_stopped(&mut gateway).await;
    let (code, out) = verify(
        &[&trail],
        &[
            "--key",
            public.to_str().unwrap(),
            "--checkpoints",
            copies.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 sessions, 8 commands"), "{out}");
    let lines = lines_of(&trail);
    assert!(
        lines[first_run].contains("\"type\":\"trail_start\",\"reason\":\"restart\""),
        "{}",
        lines[first_run]
    );
    assert!(lines[first_run].contains("\"previous_sealed\":true"));

    // The tamper matrix: each edit is caught, and the first bad record is named by line.
    let tampered = dir.path().join("tampered.jsonl");
    let check = |lines: &[String], extra: &[&str], line: usize, words: &str| {
        write_lines(&tampered, lines);
        let mut args = vec!["--key", public.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (code, out) = verify(&[&tampered], &args);
        assert_eq!(code, Some(1), "{words}: {out}");
        assert!(
            out.contains(&format!("NOT INTACT: {}:{line}: ", tampered.display())),
            "{words}: expected line {line}: {out}"
        );
        assert!(out.contains(words), "{words}: {out}");
    };
    let k = lines
        .iter()
        .position(|l| l.contains("\"type\":\"command\""))
        .unwrap()
        + 1; // a record in the middle, after the first command
    // Flip one byte.
    let mut edit = lines.clone();
    edit[k] = edit[k].replacen("\"sseq\":", "\"sseq\" :", 1);
    check(&edit, &[], k + 1, "does not match its hash");
    // Delete a record.
    let mut edit = lines.clone();
    edit.remove(k);
    check(&edit, &[], k + 1, "missing before this one");
    // Swap two records.
    let mut edit = lines.clone();
    edit.swap(k, k + 1);
    check(&edit, &[], k + 1, "reordered");
    // Insert a forged record that hashes correctly and links to the one before it.
    // (a command nobody ran, after the first command).
    let mut edit = lines.clone();
    let c = k - 1;
    let (body, hash) = split_hash(&lines[c]);
    let seq = seq_of(&lines[c]);
    let body = body
        .replacen(
            &format!("\"seq\":{seq},"),
            &format!("\"seq\":{},", seq + 1),
            1,
        )
        .replacen("\"command\":1,", "\"command\":99,", 1)
        .replace("create table audited", "drop table audited");
    edit.insert(c + 1, rehash(&with_prev(&body, hash)));
    check(&edit, &[], c + 3, "appears twice");
    // Truncate the tail (whole records; then mid-record).
    let mut edit = lines.clone();
    edit.truncate(lines.len() - 2);
    check(&edit, &[], lines.len() - 2, "unsealed tail");
    write_lines(&tampered, &lines);
    let text = std::fs::read(&tampered).unwrap();
    std::fs::write(&tampered, &text[..text.len() - 20]).unwrap();
    let (code, out) = verify(&[&tampered], &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(":{}: the last record is cut off", lines.len())),
        "{out}"
    );
    // With the published checkpoints, a cut at a record boundary is named as truncation.
    let mut edit = lines.clone();
    edit.truncate(lines.len() - 1);
    check(
        &edit,
        &["--checkpoints", copies.to_str().unwrap()],
        lines.len() - 1,
        "truncated: a checkpoint published at",
    );
    // Splice: the first run's records, then the second run's from another trail copy
    // whose chain was rebuilt (as if another gateway had written it).
    let mut other = lines.clone();
    let mut prev = "1".repeat(64);
    for line in other.iter_mut() {
        *line = rehash(&with_prev(split_hash(line).0, &prev));
        prev = split_hash(line).1.to_owned();
    }
    let mut edit: Vec<String> = lines[..first_run].to_vec();
    edit.extend_from_slice(&other[first_run..]);
    check(&edit, &[], first_run + 1, "spliced");
    // Rewrite: edit a statement and rebuild every hash after it. Only the signing key could
    // make the checkpoints agree.
    let mut edit = lines.clone();
    let target = lines
        .iter()
        .position(|l| l.contains("insert into audited"))
        .unwrap();
    let mut prev = split_hash(&lines[target - 1]).1.to_owned();
    for line in edit.iter_mut().skip(target) {
        let body = split_hash(line)
            .0
            .replace("insert into audited", "select 1 from audited");
        *line = rehash(&with_prev(&body, &prev));
        prev = split_hash(line).1.to_owned();
    }
    let first_checkpoint = edit
        .iter()
        .enumerate()
        .skip(target)
        .find(|(_, l)| l.contains("\"type\":\"checkpoint\""))
        .map(|(i, _)| i + 1)
        .unwrap();
    check(&edit, &[], first_checkpoint, "signature does not verify");
}

fn code_of(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

/// The statements PostgreSQL logged (`log_statement = 'all'`) that mention `needle`.
fn logged_statements(log: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("statement: ").map(|(_, s)| s.to_owned()))
        .filter(|s| s.contains(needle))
        .collect()
}

/// The statement texts of the trail's command records that mention `needle`.
fn recorded_statements(trail: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines_of(trail) {
        let Ok(parsed) = portcullis_audit::chain::parse_line(line.as_bytes()) else {
            continue;
        };
        if let portcullis_audit::AuditEvent::Command(c) = parsed.event {
            out.extend(
                c.statements
                    .into_iter()
                    .map(|s| s.text)
                    .filter(|t| t.contains(needle)),
            );
        }
    }
    out
}

/// A throwaway cluster with pgbench's tables at `scale`, and the pgbench binary.
async fn pgbench_cluster(scale: u32) -> (PgCluster, PathBuf) {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let pgbench = PgCluster::bin("pgbench").expect("pgbench is needed for this test");
    let superuser = portcullis_testkit::SUPERUSER;
    let init = Command::new(&pgbench)
        .args(["-i", "-s", &scale.to_string(), "-q", "-h", cluster.host()])
        .args(["-p", &cluster.port().to_string(), "-U", superuser.0, "app"])
        .env("PGPASSWORD", superuser.1)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    (cluster, pgbench)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_pgbench_loses_no_statement_the_database_ran() {
    let (cluster, pgbench) = pgbench_cluster(1).await;
    let status = cluster
        .psql("app")
        .args([
            "-c",
            "alter system set log_statement = 'all'",
            "-c",
            "select pg_reload_conf()",
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit.key");
    assert_eq!(
        cli(&["audit", "keygen", "--out", key.to_str().unwrap()]).0,
        Some(0)
    );
    let trail = dir.path().join("trail.jsonl");
    let copies = dir.path().join("checkpoints.jsonl");
    let path = dir.path().join("portcullis.toml");
    let (gw, admin) = (free_port(), free_port());
    let token = "bench-token-audit";
    let base = config_text(gw, admin, &cluster, &[("alice", token)]);
    // Sessions append inline here (the tamper test above uses the writer thread): the
    // guarantee is the same.
    std::fs::write(
        &path,
        audit_config(base, &key, &trail, &copies, "writer = \"inline\"\n"),
    )
    .unwrap();
    let mut gateway = Gateway::started(&path, dir.path(), cluster.password(), admin).await;

    let mut bench = Command::new(&pgbench)
        .args([
            "-S",
            "-n",
            "-c",
            "4",
            "-T",
            "30",
            "-M",
            "simple",
            "-h",
            "127.0.0.1",
            "-p",
            &gw.to_string(),
            "-U",
            "alice",
            "app",
        ])
        .env("PGPASSWORD", token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the gateway mid-run, once a good number of commands went through.
    wait_for(&mut gateway, "commands in the trail", || async {
        recorded_statements(&trail, "pgbench_accounts").len() > 2000
    })
    .await;
    gateway.signal("KILL");
    let _ = gateway.child.wait();
    let _ = bench.wait();
    // The database notices its clients are gone; then its log holds everything it ran.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cluster
            .psql("app")
            .args(["-At", "-c", "select count(*) from pg_stat_activity where usename = current_user and pid <> pg_backend_pid() and backend_type = 'client backend'"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway's backends linger");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ran = logged_statements(&cluster.log_path(), "pgbench_accounts");
    let recorded = recorded_statements(&trail, "pgbench_accounts");
    assert!(ran.len() > 2000, "{} statements ran", ran.len());
    let mut left: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for s in &recorded {
        *left.entry(s.as_str()).or_default() += 1;
    }
    for s in &ran {
        let n = left.get_mut(s.as_str()).filter(|n| **n > 0);
        assert!(
            n.is_some(),
            "the database ran {s:?} but the trail has no command record for it"
        );
        if let Some(n) = n {
            *n -= 1;
        }
    }

    // The crash left an unsealed tail; a restart continues the chain and says so.
    let (code, out) = verify(&[&trail], &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unsealed tail"), "{out}");
    let mut gateway = Gateway::started(&path, dir.path(), cluster.password(), admin).await;
    let client = connect(gw, token).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    drop(client);
    run_until_stopped(&mut gateway).await;
    let public = dir.path().join("audit.key.pub");
    let (code, out) = verify(
        &[&trail],
        &[
            "--key",
            public.to_str().unwrap(),
            "--checkpoints",
            copies.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ended without closing the trail (crash or kill)"),
        "{out}"
    );
}

/// `portcullis demo --port N` with the port taken fails at once, before it starts
/// PostgreSQL, and says why.
#[test]
fn demo_on_a_taken_port_fails_before_starting_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, out, err) = cli(&["demo", "--port", &port]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains(&format!("port {port} cannot be used")),
        "{err}"
    );
    assert!(!out.contains("starting PostgreSQL"), "{out}");
}
