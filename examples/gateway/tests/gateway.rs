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
    assert_eq!(stdout, "ok: 1 listener(s), 1 token(s)\n");

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
detectors = ["email"]
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
        format!("{file}:16: [masking] is not implemented yet in this build (see CHANGELOG)"),
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
        let stdout = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
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
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
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
    let status = loop {
        if let Some(status) = gateway.exited() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(3 + 5),
            "the gateway did not exit within the drain deadline\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_no_sessions_exits_at_once() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    let (gw, admin) = (free_port(), free_port());
    std::fs::write(&path, config_text(gw, admin, &cluster, &[("bob", "t")])).unwrap();
    let mut gateway = Gateway::spawn(&path, dir.path(), cluster.password());
    wait_for(&mut gateway, "/healthz", || async {
        matches!(http_get(admin, "/healthz").await, Ok((200, _)))
    })
    .await;
    let session = connect(gw, "t").await.unwrap();
    session.simple_query("select 1").await.unwrap();
    drop(session);

    gateway.signal("INT");
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = gateway.exited() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{}", gateway.logs());
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "{:?}",
        signalled.elapsed()
    );
}

/// The README's first command: `portcullis demo` starts PostgreSQL and the gateway, prints a
/// psql command that works, and Ctrl-C stops both and removes the temporary data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_working_command_and_cleans_up_on_ctrl_c() {
    use tokio::io::AsyncBufReadExt;
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
    // The analyst's command, as printed: PGPASSWORD=<token> psql "host=... port=... ...".
    let line = printed
        .lines()
        .find(|l| l.contains("PGPASSWORD=") && l.contains("user=alice"))
        .unwrap_or_else(|| panic!("no psql command printed:\n{printed}"));
    let token = line
        .split("PGPASSWORD=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let conninfo = line.split('"').nth(1).unwrap();
    assert!(conninfo.contains(&format!("port={port}")), "{conninfo}");
    let pg_port: u16 = printed
        .lines()
        .find(|l| l.contains("PostgreSQL (throwaway"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PostgreSQL address printed:\n{printed}"));
    let (client, connection) =
        tokio_postgres::connect(&format!("{conninfo} password={token}"), NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let n: i64 = client
        .query_one("select count(*) from customers", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0);
    drop(client);

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
    // The throwaway PostgreSQL is gone.
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", pg_port))
            .await
            .is_err()
    );
}
