//! The `portcullis` binary in front of a real MariaDB: the same guard, approval, masking and
//! audit layers as for PostgreSQL, through the mariadb CLI (text protocol) and
//! mysql-connector-python (binary protocol).

use std::process::{Command, Output, Stdio};

use portcullis_identity::hash_token;
use portcullis_testkit::{CertFiles, Certs, MariaDb, free_port};

use super::corpus::{MYSQL_MUST_BLOCK, MYSQL_MUST_PASS};
use super::policy::{ALICE, DANA, approvals, first_pending};
use super::{Gateway, cli, verify};

/// An application identity: not exempt from masking, allowed the `SET NAMES` its driver
/// sends at connect.
const CAROL: &str = "carol-token-0123456789";
const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4242 4242 4242 4242";
const SSN: &str = "123-45-6789";

async fn mariadb() -> MariaDb {
    let db = tokio::task::spawn_blocking(MariaDb::start)
        .await
        .unwrap()
        .expect("MariaDB is needed for this test");
    db.sql(&format!(
        "CREATE TABLE customers (id INT PRIMARY KEY, name TEXT, email VARCHAR(100) UNIQUE, card TEXT, ssn TEXT);
         INSERT INTO customers VALUES (1, 'Jane Doe', '{EMAIL}', '{CARD}', '{SSN}'), (2, 'Near Miss', 'not an email', '4242 4242 4242 4241', 'none');
         CREATE TABLE victims (id INT PRIMARY KEY, name TEXT);
         INSERT INTO victims VALUES (1, 'a'), (2, 'b'), (3, 'c');
         CREATE TABLE other (id INT); CREATE TABLE t (id INT); CREATE TABLE odd (`delete` INT);"
    ))
    .unwrap();
    db
}

fn config(gw: u16, admin: u16, db: &MariaDb, certs: &CertFiles, extra: &str) -> String {
    let mut text = format!(
        r#"[gateway]
drain_timeout = "3s"

[admin]
listen = "127.0.0.1:{admin}"

[[mysql]]
name = "maria"
listen = "127.0.0.1:{gw}"
allow_plaintext_tokens_on_loopback = true
tls = {{ cert = "{cert}", key = "{key}" }}
[mysql.upstream]
host = "{host}"
port = {port}
user = "{user}"
password = "{password}"
"#,
        host = db.host(),
        port = db.port(),
        user = db.user(),
        password = db.password(),
        cert = certs.cert.display(),
        key = certs.key.display(),
    );
    for (name, token, group) in [
        ("alice", ALICE, "dev"),
        ("dana", DANA, "dba"),
        ("carol", CAROL, "app"),
    ] {
        text += &format!(
            "\n[[identity.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\ngroups = [\"{group}\"]\n",
            hash_token(token)
        );
    }
    text + "\n" + extra
}

async fn start(db: &MariaDb, extra: &str) -> (Gateway, u16, u16, tempfile::TempDir) {
    start_with(db, "", extra).await
}

/// With `listener` keys added to the `[[mysql]]` block.
async fn start_with(
    db: &MariaDb,
    listener: &str,
    extra: &str,
) -> (Gateway, u16, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (gw, admin) = (free_port(), free_port());
    let path = dir.path().join("portcullis.toml");
    let certs = Certs::generate().unwrap().write_to(dir.path()).unwrap();
    let text = config(gw, admin, db, &certs, extra).replacen(
        "allow_plaintext_tokens_on_loopback = true\n",
        &format!("allow_plaintext_tokens_on_loopback = true\n{listener}\n"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let gateway = Gateway::started(&path, dir.path(), db.password(), admin).await;
    (gateway, gw, admin, dir)
}

/// The mariadb CLI through the gateway as `token`, running `sql`.
fn mysql(gw: u16, token: &str, sql: &str) -> Output {
    mysql_command(gw, token, sql).output().unwrap()
}

/// The `mariadb` client running `sql` through the gateway as alice.
fn mysql_command(gw: u16, token: &str, sql: &str) -> Command {
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "--no-defaults",
        "--default-character-set=utf8mb4",
        "--protocol=tcp",
        "-h127.0.0.1",
    ])
    .arg(format!("-P{gw}"))
    .args([
        "-ualice",
        &format!("-p{token}"),
        "--skip-ssl",
        "-Dapp",
        "-N",
        "-B",
        "-e",
        sql,
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("MYSQL_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A prepared SELECT through mysql-connector-python (the binary protocol), over TLS (it
/// sends a cleartext token only over TLS) verified with `ca`.
fn prepared_select(gw: u16, ca: &std::path::Path, token: &str, sql: &str) -> Output {
    let script = format!(
        "import mysql.connector\n\
         c = mysql.connector.connect(host='127.0.0.1', port={gw}, user='alice', password='{token}', database='app', use_pure=True, ssl_ca={ca:?}, ssl_verify_cert=True, collation='utf8mb4_general_ci')\n\
         cur = c.cursor(prepared=True)\n\
         cur.execute({sql:?}, (0,))\n\
         for row in cur.fetchall():\n    print('|'.join('NULL' if v is None else (v.decode() if isinstance(v, (bytes, bytearray)) else str(v)) for v in row))\n"
    );
    Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sessions_get_the_same_guard_masking_approvals_and_audit() {
    let db = mariadb().await;
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let extra = format!(
        r#"
[policy]
on_unparsed = "deny"
[[policy.rules]]
name = "dba-may-set"
groups = ["dba", "app"]
statements = ["set"]
action = "allow"
[[policy.rules]]
name = "unbounded-writes"
statements = ["update"]
without_where = true
action = "approve"
approvers = ["dba"]
[[policy.rules]]
name = "no-deletes"
statements = ["delete", "truncate"]
action = "deny"
[[policy.rules]]
name = "no-drops"
statements = ["drop", "grant"]
action = "deny"
message = "DROP is not allowed through the gateway"
[[policy.rules]]
name = "no-admin"
statements = ["admin"]
action = "deny"

[masking]
detectors = ["email", "credit_card"]
exempt_groups = ["dba"]
[[masking.columns]]
match = "customers.ssn"
strategy = "redact"

[approvals]
timeout = "2m"

[audit]
on_failure = "refuse"
[[audit.sinks]]
kind = "jsonl"
path = "{}"
"#,
        trail.display()
    );
    let (mut gateway, gw, admin, gw_dir) = start(&db, &extra).await;
    let ca = gw_dir.path().join("ca.pem");

    // The guard: the MySQL bypass corpus is refused with 1142/1227 naming the rule; the
    // benign statements pass.
    let results = tokio::task::spawn_blocking(move || {
        let mut missed = Vec::new();
        for sql in MYSQL_MUST_BLOCK {
            let out = mysql(gw, ALICE, sql);
            let err = stderr(&out);
            let native = err.contains("(42000)")
                && (err.contains("ERROR 1142") || err.contains("ERROR 1227"));
            if out.status.success() || !err.contains("blocked by rule") || !native {
                missed.push(format!("{sql:?}: {err}"));
            }
        }
        let mut wrongly = Vec::new();
        for sql in MYSQL_MUST_PASS {
            let out = mysql(gw, ALICE, sql);
            if stderr(&out).contains("blocked by rule") {
                wrongly.push(format!("{sql:?}: {}", stderr(&out)));
            }
        }
        (missed, wrongly)
    })
    .await
    .unwrap();
    assert!(
        results.0.is_empty(),
        "not blocked:\n{}",
        results.0.join("\n")
    );
    assert!(results.1.is_empty(), "blocked:\n{}", results.1.join("\n"));
    assert_eq!(db.sql("SELECT COUNT(*) FROM victims").unwrap(), "3");
    let out = mysql(gw, ALICE, "DROP TABLE victims");
    assert!(
        stderr(&out).contains("ERROR 1142 (42000)")
            && stderr(&out).contains("blocked by rule \"no-drops\": DROP is not allowed"),
        "{}",
        stderr(&out)
    );

    // Masking, text protocol: detectors and the column rule; near-misses pass unchanged.
    let out = mysql(
        gw,
        ALICE,
        "SELECT id, name, email, card, ssn FROM customers ORDER BY id",
    );
    let rows = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for planted in [EMAIL, CARD, SSN] {
        assert!(!rows.contains(planted), "{planted} leaked: {rows}");
    }
    assert!(
        rows.contains("Jane Doe") && rows.contains("4242 4242 4242 4241"),
        "{rows}"
    );
    let first: Vec<&str> = rows
        .lines()
        .next()
        .unwrap_or_default()
        .split('\t')
        .collect();
    assert_eq!(first.len(), 5, "{rows}");
    assert!(
        first[2].ends_with("@example.com") && first[2] != EMAIL,
        "{rows}"
    );
    // An exempt identity sees clear values.
    let clear = stdout(&mysql(
        gw,
        DANA,
        "SELECT email, ssn FROM customers WHERE id = 1",
    ));
    assert_eq!(clear, format!("{EMAIL}\t{SSN}\n"));
    // A column rule on customers.ssn holds through a derived table and a CTE (MariaDB names
    // them as the column's table).
    // Renamed on the way, the column is followed through the statement to customers.ssn
    // (issue 18, class 5): directly each of these returns the SSN.
    let renamed = [
        "SELECT n FROM (SELECT ssn AS n FROM customers) x",
        "SELECT n FROM (SELECT ssn AS n FROM customers) AS customers",
        "WITH c (n) AS (SELECT ssn FROM customers) SELECT n FROM c",
        "SELECT x.n FROM (SELECT m AS n FROM (SELECT ssn AS m FROM customers) y) x",
        "SELECT concat('', n) AS m FROM (SELECT ssn AS n FROM customers) x",
        "SELECT n FROM (SELECT name AS n FROM customers WHERE 0 UNION SELECT ssn FROM customers) x",
    ];
    for sql in renamed {
        assert!(
            db.sql(sql).unwrap().contains(SSN),
            "{sql} does not return the SSN directly"
        );
    }
    for sql in [
        "SELECT ssn FROM (SELECT ssn FROM customers) x",
        "WITH c AS (SELECT ssn FROM customers) SELECT ssn FROM c",
    ]
    .into_iter()
    .chain(renamed)
    {
        let out = mysql(gw, ALICE, sql);
        let rows = stdout(&out);
        assert!(out.status.success(), "{sql}: {}", stderr(&out));
        assert!(
            !rows.contains(SSN),
            "{sql}: the column rule did not hold: {rows}"
        );
    }
    // PyMySQL (text protocol) and node mysql2's execute() (prepared, binary protocol), as
    // the application identity (its drivers send SET NAMES): the values applications
    // receive hold no planted value; the masked forms arrive.
    let leak_queries = [
        "SELECT id, name, email, card, ssn FROM customers ORDER BY id",
        "SELECT CAST(REPLACE(card, ' ', '') AS UNSIGNED) AS c, CAST(REPLACE(card, ' ', '') AS DOUBLE) AS d FROM customers",
        "SELECT n FROM (SELECT ssn AS n FROM customers) x",
        "SELECT JSON_OBJECT('e', email, 's', ssn) AS j FROM customers",
    ];
    let pymysql = format!(
        r#"
import pymysql
conn = pymysql.connect(host="127.0.0.1", port={gw}, user="carol", password="{CAROL}", database="app")
with conn.cursor() as cur:
    for q in {leak_queries:?}:
        cur.execute(q)
        print("pymysql", repr(cur.fetchall()))
"#
    );
    let mysql2 = format!(
        r#"
const mysql = require("mysql2/promise");
(async () => {{
  const conn = await mysql.createConnection({{ host: "127.0.0.1", port: {gw}, user: "carol",
    password: "{CAROL}", database: "app", enableCleartextPlugin: true, supportBigNumbers: true,
    bigNumberStrings: true }});
  for (const q of {leak_queries:?}) {{
    const [rows] = await conn.execute(q, []);
    console.log("mysql2", JSON.stringify(rows));
  }}
  await conn.end();
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#
    );
    let drivers = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/portcullis-mysql/tests/drivers");
    let out = tokio::task::spawn_blocking(move || {
        let py = Command::new("python3")
            .args(["-c", &pymysql])
            .output()
            .unwrap();
        let js = Command::new("node")
            .current_dir(&drivers)
            .args(["-e", &mysql2])
            .output()
            .unwrap();
        (py, js)
    })
    .await
    .unwrap();
    for (what, out) in [("PyMySQL", &out.0), ("mysql2 execute", &out.1)] {
        let rows = stdout(out);
        assert!(out.status.success(), "{what}: {rows}{}", stderr(out));
        assert_eq!(rows.lines().count(), leak_queries.len(), "{what}: {rows}");
        for planted in [EMAIL, CARD, SSN, "4242424242424242"] {
            assert!(!rows.contains(planted), "{what}: {planted} leaked: {rows}");
        }
        assert!(rows.contains("@example.com"), "{what}: {rows}");
    }

    // GBK (issue 19): 0xBF 0x5C is one character, so `'\xBF\x5C'; DROP …` is a string and
    // then a DROP to the server. Directly it drops; through the gateway the statement is
    // read as the server reads it and refused by the rule, and a GBK statement works.
    db.sql("CREATE TABLE scratch_gbk (id INT)").unwrap();
    let gbk = |port: u16, user: &str, password: &str, table: &str| {
        format!(
            r#"
import pymysql
from pymysql.constants import CLIENT
conn = pymysql.connect(host="127.0.0.1", port={port}, user="{user}", password="{password}",
    database="app", charset="gbk", client_flag=CLIENT.MULTI_STATEMENTS)
cur = conn.cursor()
cur.execute("SELECT @@character_set_client")
print(cur.fetchall())
try:
    conn.query(b"SELECT '\xbf\x5c'; DROP TABLE {table}; -- '")
    print("ran")
except pymysql.err.MySQLError as e:
    print("refused", e.args[0], "no-drops" in e.args[1])
cur = conn.cursor()
cur.execute("SELECT '\u4e2d\u6587'")
print(cur.fetchall())
"#
        )
    };
    let (direct_script, gw_script) = (
        gbk(db.port(), db.user(), db.password(), "scratch_gbk"),
        gbk(gw, "carol", CAROL, "victims"),
    );
    let out = tokio::task::spawn_blocking(move || {
        let run = |script: &str| {
            Command::new("python3")
                .args(["-c", script])
                .output()
                .unwrap()
        };
        (run(&direct_script), run(&gw_script))
    })
    .await
    .unwrap();
    assert!(
        out.0.status.success(),
        "{}{}",
        stdout(&out.0),
        stderr(&out.0)
    );
    assert_eq!(
        stdout(&out.0),
        "(('gbk',),)\nran\n(('中文',),)\n",
        "directly"
    );
    assert!(
        !db.sql("SHOW TABLES LIKE 'scratch_gbk'")
            .unwrap()
            .contains("scratch_gbk"),
        "the GBK statement did no damage directly"
    );
    assert!(
        out.1.status.success(),
        "{}{}",
        stdout(&out.1),
        stderr(&out.1)
    );
    assert_eq!(
        stdout(&out.1),
        "(('gbk',),)\nrefused 1142 True\n(('中文',),)\n",
        "through the gateway"
    );
    assert_eq!(db.sql("SELECT COUNT(*) FROM victims").unwrap(), "3");

    // Binary protocol (a prepared statement): masked the same way.
    let ca2 = ca.clone();
    let out = tokio::task::spawn_blocking(move || {
        prepared_select(
            gw,
            &ca,
            CAROL,
            "SELECT id, email, card, ssn FROM customers WHERE id > ? ORDER BY id",
        )
    })
    .await
    .unwrap();
    let rows = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows.lines().count(), 2, "{rows}");
    for planted in [EMAIL, CARD, SSN] {
        assert!(
            !rows.contains(planted),
            "{planted} leaked in the binary protocol: {rows}"
        );
    }
    // A renamed derived column in the binary protocol: followed the same way.
    let ca3 = ca2.clone();
    let out = tokio::task::spawn_blocking(move || {
        prepared_select(
            gw,
            &ca3,
            CAROL,
            "SELECT n FROM (SELECT ssn AS n FROM customers WHERE id > ?) x",
        )
    })
    .await
    .unwrap();
    let rows = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows.lines().count(), 2, "{rows}");
    assert!(
        !rows.contains(SSN),
        "a renamed derived column leaked in the binary protocol: {rows}"
    );
    // Numbers in the binary protocol (BIGINT UNSIGNED, DOUBLE) go through the detectors too:
    // the card as a number is NULL, the near-miss passes.
    let out = tokio::task::spawn_blocking(move || {
        prepared_select(
            gw,
            &ca2,
            CAROL,
            "SELECT CAST(REPLACE(card, ' ', '') AS UNSIGNED), CAST(REPLACE(card, ' ', '') AS DOUBLE) FROM customers WHERE id > ? ORDER BY id",
        )
    })
    .await
    .unwrap();
    let rows = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !rows.contains("4242424242424242"),
        "a card number as a number leaked in the binary protocol: {rows}"
    );
    assert!(rows.contains("4242424242424241"), "{rows}");
    // A value echoed in an error message (a duplicate key) is masked too.
    let out = mysql(
        gw,
        ALICE,
        &format!("INSERT INTO customers (id, email) VALUES (9, '{EMAIL}')"),
    );
    // (The CLI prints the statement it sent; the database's message is the ERROR line.)
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("ERROR 1062"))
        .unwrap_or_default();
    assert!(line.contains("Duplicate entry"), "{err}");
    assert!(!line.contains(EMAIL), "{err}");

    // A value echoed in a warning, read back with SHOW WARNINGS (rows), is masked.
    let out = mysql(
        gw,
        ALICE,
        &format!("SELECT CAST('{EMAIL}' AS INTEGER); SHOW WARNINGS"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Truncated incorrect"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains(EMAIL), "{}", stdout(&out));

    // The client killed while its UPDATE waits: the request is withdrawn, and an approval
    // after that runs nothing (issue 20).
    let child = mysql_command(gw, ALICE, "UPDATE victims SET name = 'killed'")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    super::policy::killed_while_held(&mut gateway, admin, child).await;
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM victims WHERE name = 'killed'")
            .unwrap(),
        "0"
    );

    // Approvals: an UPDATE without WHERE waits (no notice channel in MySQL: the client just
    // waits) until a DBA approves, then completes.
    let waiting = std::thread::spawn(move || mysql(gw, ALICE, "UPDATE victims SET name = 'x'"));
    let r = first_pending(&mut gateway, admin, DANA).await;
    assert_eq!(r["statement"], "UPDATE victims SET name = 'x'", "{r}");
    let id = r["id"].as_str().unwrap();
    let (code, out, err) = approvals(admin, DANA, &["approve", id]);
    assert_eq!(code, Some(0), "{out}{err}");
    let done = waiting.join().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM victims WHERE name = 'x'")
            .unwrap(),
        "3"
    );

    // The audit trail records MySQL sessions like PostgreSQL ones, masked, and verifies.
    super::run_until_stopped(&mut gateway).await;
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(text.contains("\"protocol\":\"mysql\""), "{text}");
    assert!(text.contains("UPDATE victims SET name = 'x'"));
    assert!(text.contains("no-drops"));
    assert!(!text.contains(EMAIL), "the trail holds a planted email");
    let (code, out) = verify(&[&trail], &[]);
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_timeout_is_a_clear_mysql_error() {
    let db = mariadb().await;
    let extra = r#"
[policy]
[[policy.rules]]
name = "unbounded-writes"
statements = ["update"]
without_where = true
action = "approve"
approvers = ["dba"]
[approvals]
timeout = "1s"
"#;
    let (_gateway, gw, _admin, _dir) = start(&db, extra).await;
    let out =
        tokio::task::spawn_blocking(move || mysql(gw, ALICE, "UPDATE victims SET name = 'y'"))
            .await
            .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("ERROR 3024 (HY000)") && err.contains("timed out"),
        "{err}"
    );
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM victims WHERE name = 'y'")
            .unwrap(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_from_another_session_ends_an_approval_wait() {
    use std::io::BufRead as _;
    let db = mariadb().await;
    let extra = r#"
[policy]
[[policy.rules]]
name = "unbounded-writes"
statements = ["update"]
without_where = true
action = "approve"
approvers = ["dba"]
[approvals]
timeout = "2m"
"#;
    let (mut gateway, gw, admin, _dir) = start(&db, extra).await;
    // alice's session says its connection id, then waits for an approval.
    let mut child = Command::new("mariadb")
        .args([
            "--no-defaults",
            "--protocol=tcp",
            "-h127.0.0.1",
            "--unbuffered",
        ])
        .arg(format!("-P{gw}"))
        .args([
            "-ualice",
            &format!("-p{ALICE}"),
            "--skip-ssl",
            "-Dapp",
            "-N",
            "-B",
            "-e",
        ])
        .arg("SELECT connection_id(); UPDATE victims SET name = 'z'")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let id = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    let r = first_pending(&mut gateway, admin, DANA).await;
    assert_eq!(r["statement"], "UPDATE victims SET name = 'z'", "{r}");
    // Another identity may not signal alice's session (the built-in rule, in MySQL's words).
    let out = mysql(gw, DANA, &format!("KILL QUERY {id}"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("MySQL KILL only of a connection of one of your sessions"),
        "{}",
        stderr(&out)
    );
    // alice, from a second session (as the mariadb CLI does on Ctrl-C), kills her own query:
    // the database has nothing running for it, the gateway ends the wait.
    let out = mysql(gw, ALICE, &format!("KILL QUERY {id}"));
    assert!(out.status.success(), "{}", stderr(&out));
    let done = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = stderr(&done);
    assert!(err.contains("ERROR 1317 (70100)"), "{err}");
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM victims WHERE name = 'z'")
            .unwrap(),
        "0"
    );
}

/// A raw MySQL session (for what no CLI does: a server-side cursor).
struct Raw {
    tcp: tokio::net::TcpStream,
    rbuf: bytes::BytesMut,
}

impl Raw {
    async fn login(gw: u16, user: &str, token: &str) -> Raw {
        let mut raw = Raw {
            tcp: tokio::net::TcpStream::connect(("127.0.0.1", gw))
                .await
                .unwrap(),
            rbuf: bytes::BytesMut::new(),
        };
        assert_eq!(raw.read().await[0], 10, "a greeting");
        // Protocol 4.1, secure connection, plugin auth, connect with db, deprecate EOF,
        // local files.
        let caps: u32 = 0x0200 | 0x8000 | 0x0008_0000 | 0x0008 | 0x0100_0000 | 0x0080;
        let mut p = Vec::new();
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&(1u32 << 24).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(u8::try_from(token.len() + 1).unwrap());
        p.extend_from_slice(token.as_bytes());
        p.push(0);
        p.extend_from_slice(b"app\0mysql_clear_password\0");
        raw.send(1, &p).await;
        assert_eq!(raw.read().await[0], 0, "logged in");
        raw
    }

    async fn send(&mut self, seq: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        let mut out = bytes::BytesMut::new();
        portcullis_mysql::packet::encode_packet(seq, payload, &mut out);
        self.tcp.write_all(&out).await.unwrap();
    }

    async fn read(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        loop {
            if let Some(p) =
                portcullis_mysql::packet::decode_packet(&mut self.rbuf, 1 << 24).unwrap()
            {
                return p.payload.to_vec();
            }
            assert!(
                self.tcp.read_buf(&mut self.rbuf).await.unwrap() > 0,
                "the gateway closed"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_fetched_from_a_cursor_are_masked_too() {
    let db = mariadb().await;
    let extra = "[masking]\ndetectors = [\"email\"]\nexempt_groups = [\"dba\"]\n";
    let (_gateway, gw, _admin, _dir) = start(&db, extra).await;
    let mut raw = Raw::login(gw, "carol", CAROL).await;
    raw.send(0, b"\x16SELECT id, email FROM customers ORDER BY id")
        .await;
    let ok = raw.read().await;
    assert_eq!(ok[0], 0);
    let id = u32::from_le_bytes(ok[1..5].try_into().unwrap());
    for _ in 0..2 {
        raw.read().await;
    }
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id.to_le_bytes());
    exec.extend_from_slice(&[1, 1, 0, 0, 0]);
    raw.send(0, &exec).await;
    for _ in 0..4 {
        raw.read().await; // column count, two definitions, the end with the cursor open
    }
    let mut fetch = vec![0x1c];
    fetch.extend_from_slice(&id.to_le_bytes());
    fetch.extend_from_slice(&10u32.to_le_bytes());
    raw.send(0, &fetch).await;
    let mut rows = Vec::new();
    loop {
        let p = raw.read().await;
        if p[0] == 0xfe {
            break;
        }
        assert_eq!(p[0], 0, "a binary row: {p:?}");
        rows.push(String::from_utf8_lossy(&p).into_owned());
    }
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| !r.contains(EMAIL)), "{rows:?}");
    assert!(
        rows[0].contains("@example.com"),
        "masked, not dropped: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_local_infile_is_streamed_and_recorded() {
    use sha2::Digest as _;
    let db = mariadb().await;
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let file = dir.path().join("rows.csv");
    let contents: String = (1..=2000).map(|i| format!("{i},row {i}\n")).collect();
    std::fs::write(&file, &contents).unwrap();
    let extra = format!(
        "[audit]\n[[audit.sinks]]\nkind = \"jsonl\"\npath = \"{}\"\n",
        trail.display()
    );
    let (mut gateway, gw, _admin, _dir) = start_with(&db, "local_infile = true", &extra).await;
    let sql = format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE victims FIELDS TERMINATED BY ',' IGNORE 3 LINES",
        file.display()
    );
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("mariadb");
        cmd.args([
            "--no-defaults",
            "--protocol=tcp",
            "-h127.0.0.1",
            "--local-infile=1",
        ])
        .arg(format!("-P{gw}"))
        .args([
            "-ualice",
            &format!("-p{ALICE}"),
            "--skip-ssl",
            "-Dapp",
            "-e",
            &sql,
        ]);
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.sql("SELECT COUNT(*) FROM victims").unwrap(), "2000");
    super::run_until_stopped(&mut gateway).await;
    let text = std::fs::read_to_string(&trail).unwrap();
    let expected = format!(
        "\"upload\":{{\"bytes\":{},\"sha256\":\"{}\"}}",
        contents.len(),
        hex::encode(sha2::Sha256::digest(contents.as_bytes()))
    );
    assert!(text.contains(&expected), "no {expected} in:\n{text}");
}

/// Issue 16: a 2,500-level statement is refused with 1436 for that one statement, a
/// 50,000-term sum is read on the parser thread; the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_statement_is_refused_and_the_gateway_keeps_serving() {
    let db = mariadb().await;
    let rules = "[policy]\non_unparsed = \"deny\"\n[[policy.rules]]\nname = \"no-drops\"\nstatements = [\"drop\"]\naction = \"deny\"\n";
    let (_gateway, gw, _admin, _dir) = start(&db, rules).await;
    let deep = format!("SELECT {}1{}", "(SELECT ".repeat(2500), ")".repeat(2500));
    let plus = format!("SELECT 1{}", "+1".repeat(50_000));
    let out = mysql(gw, ALICE, &deep);
    assert!(!out.status.success());
    let err = stderr(&out);
    let tail: String = err
        .lines()
        .last()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    assert!(
        err.contains("1436") && err.contains("too complex"),
        "{tail}"
    );
    // sqlparser reads a flat chain however long (on the parser thread, whose stack holds
    // it); the server then answers as it does.
    let _ = mysql(gw, ALICE, &plus);
    let out = mysql(gw, ALICE, "SELECT 41 + 1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "42");
}

/// A 10 MB BLOB written and read back by PyMySQL with masking on: the bytes come back as
/// they went in, in well-formed packets. PyMySQL sends the BLOB as hex, a 20 MB statement
/// split in two chunks: the answer must be numbered after the last one (it was numbered
/// after the first: "Packet sequence number wrong - got 1 expected 2").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_blob_round_trips_through_pymysql_with_masking_on() {
    let db = mariadb().await;
    db.sql("CREATE TABLE blobs (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB)")
        .unwrap();
    let masking = "[masking]\n[[masking.columns]]\nmatch = \"email\"\nstrategy = \"partial\"\n";
    let (gateway, gw, _admin, _dir) = start(&db, masking).await;
    let script = format!(
        r#"
import hashlib, pymysql
data = bytes(i % 251 for i in range(10 << 20))
conn = pymysql.connect(host="127.0.0.1", port={gw}, user="alice", password="{ALICE}", database="app")
with conn.cursor() as c:
    c.execute("INSERT INTO blobs (b) VALUES (%s)", (data,))
    rid = c.lastrowid
    c.execute("SELECT b FROM blobs WHERE id = %s", (rid,))
    got = c.fetchone()[0]
conn.commit()
print(len(got), hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest())
"#
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}{}",
        stdout(&out),
        stderr(&out),
        gateway.logs()
    );
    assert_eq!(stdout(&out).trim(), "10485760 True");
}

/// Rules for the attacks below: an identity (carol, group `app`) allowed to `SET`, denied
/// deletes and drops; whatever the parser cannot read is refused.
const ATTACK_RULES: &str = r#"
[policy]
on_unparsed = "deny"
[[policy.rules]]
name = "app-may-set"
groups = ["app"]
statements = ["set"]
action = "allow"
[[policy.rules]]
name = "no-deletes"
statements = ["delete", "truncate"]
action = "deny"
[[policy.rules]]
name = "no-drops"
statements = ["drop"]
action = "deny"
"#;

/// Issue 19: statements MariaDB reads differently from a naive parser, or whose damage hides
/// in another kind — each proven to do its damage on a direct connection, then refused
/// through the gateway for an identity allowed to `SET` but denied drops and deletes. Sent
/// with PyMySQL as one COM_QUERY each (multi-statements on), as an attacker would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_mariadb_reads_otherwise_are_refused_where_they_would_do_damage() {
    let db = mariadb().await;
    let (gateway, gw, _admin, _dir) = start(&db, ATTACK_RULES).await;
    let attacks = [
        "SELECT 1 --\u{a0} FROM (SELECT 2 AS `\u{a0}`) x; DROP TABLE victims",
        "SELECT 1 --\u{3000} FROM (SELECT 2 AS `\u{3000}`) x; DROP TABLE victims",
        "SET sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'x\\'; DROP TABLE victims; -- '",
        "EXECUTE IMMEDIATE 'DROP TABLE victims'",
        "REPLACE INTO victims VALUES (1, 'z')",
        "RENAME TABLE victims TO gone",
        "ALTER TABLE victims DROP COLUMN name",
    ];
    let script = r#"
import json, sys, pymysql
from pymysql.constants import CLIENT
host, port, user, password, attacks = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
def run(sql):
    conn = pymysql.connect(host=host, port=port, user=user, password=password, database="app",
                           autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with conn.cursor() as c:
            c.execute(sql)
            while c.nextset():
                pass
        return "ran"
    except pymysql.err.MySQLError as e:
        return "refused %s" % (e.args[0],)
    finally:
        conn.close()
print(json.dumps([run(sql) for sql in attacks]))
"#;
    let intact = |db: &MariaDb| {
        db.sql(
            "SELECT CONCAT((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = 'app' AND table_name = 'victims'), ':', (SELECT name FROM victims WHERE id = 1))",
        )
        .unwrap_or_default()
            == "2:a"
    };
    let reset = |db: &MariaDb| {
        db.sql(
            "DROP TABLE IF EXISTS victims, gone; CREATE TABLE victims (id INT PRIMARY KEY, name TEXT); INSERT INTO victims VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        )
        .unwrap();
    };
    let run = |port: u16, user: String, password: String, sql: &str| {
        let out = Command::new("python3")
            .args([
                "-c",
                script,
                "127.0.0.1",
                &port.to_string(),
                &user,
                &password,
            ])
            .arg(serde_json::to_string(&[sql]).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        let got: Vec<String> = serde_json::from_str(stdout(&out).trim()).unwrap();
        got.into_iter().next().unwrap()
    };
    for sql in attacks {
        reset(&db);
        assert!(intact(&db));
        // Directly (the gateway's own upstream account): the damage is done.
        let direct = run(
            db.port(),
            db.user().to_owned(),
            db.password().to_owned(),
            sql,
        );
        assert_eq!(direct, "ran", "{sql:?} directly");
        assert!(!intact(&db), "{sql:?} did no damage directly: not a test");
        reset(&db);
        // Through the gateway: refused, nothing changed.
        let through = run(gw, "carol".to_owned(), CAROL.to_owned(), sql);
        assert!(
            through.starts_with("refused"),
            "{sql:?} ran through the gateway\n{}",
            gateway.logs()
        );
        assert!(intact(&db), "{sql:?} did damage through the gateway");
    }
}

/// The MySQL differential fuzzer (issue 19): queries built from denied, context-setting and
/// benign statements, hidden behind every comment, quote and whitespace form MariaDB reads
/// differently from a naive parser, joined into multi-statement queries and sent through the
/// gateway (PyMySQL, one connection per sequence of 1–3 queries, so a setting carries
/// across queries) to a MariaDB with its general log on. After each batch:
///
/// - nothing was damaged: `victims` has its columns and rows, and no table took its name;
/// - every query the server logged from the gateway's connections is a judged command in the
///   trail.
///
/// The suite runs a short batch; `PORTCULLIS_MY_FUZZ_CASES=N` runs N sequences and
/// `PORTCULLIS_MY_FUZZ_SEED=S` replays a seed (printed on every run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_mariadb_ran_is_what_the_gateway_judged_and_recorded() {
    use super::differential::Rng;
    const DENIED: &[&str] = &[
        "DROP TABLE victims",
        "DROP TABLE app.victims",
        "DROP TABLE `victims`",
        "DELETE FROM victims",
        "DELETE FROM app.`victims` WHERE 1",
        "TRUNCATE victims",
        "TRUNCATE TABLE app.victims",
        "ALTER TABLE victims DROP COLUMN name",
        "RENAME TABLE victims TO gone",
        "REPLACE INTO victims VALUES (1, 'z')",
        "INSERT INTO victims VALUES (1, 'z') ON DUPLICATE KEY UPDATE name = 'z'",
        "UPDATE victims SET name = 'z'",
        "EXECUTE IMMEDIATE 'DROP TABLE victims'",
        "EXECUTE IMMEDIATE 'DELETE FROM victims'",
    ];
    const CONTEXTUAL: &[&str] = &[
        "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "SET sql_mode = 'ANSI_QUOTES'",
        "SET sql_mode = ''",
        "SET NAMES utf8mb4",
        "SET NAMES gbk",
        "SET NAMES sjis",
        "SET NAMES big5",
        "SET @q = 'DROP TABLE victims'",
        "PREPARE s FROM @q",
        "EXECUTE s",
        "EXECUTE IMMEDIATE @q",
        "PREPARE s FROM 'DELETE FROM victims'",
    ];
    const BENIGN: &[&str] = &[
        "SELECT 1",
        "SELECT name FROM victims WHERE id = 1",
        "SELECT COUNT(*) FROM victims",
        "INSERT INTO other VALUES (1)",
        "UPDATE t SET id = 2 WHERE id = 1",
        "SELECT 'a;b' AS `x;y`",
        "SELECT \"q\"",
    ];
    // Ways to hide `{}` (a denied statement) from a reader that lexes differently.
    const HIDES: &[&str] = &[
        "{}",
        "SELECT 'x\\'; {}; -- '",
        "SELECT \"x\\\"; {}; -- \"",
        "SELECT 1 --\u{a0} FROM (SELECT 2 AS `\u{a0}`) x; {}",
        "SELECT 1 --\u{3000} FROM (SELECT 2 AS `\u{3000}`) x; {}",
        "SELECT 1 --\u{85} FROM (SELECT 2 AS `\u{85}`) x; {}",
        "SELECT 1 --\t; {}",
        "SELECT 1 # ; \n; {}",
        "SELECT 1 /* ; */; {}",
        "/*!{}*/",
        "/*!50000 {}*/",
        "/*M!100100 {}*/",
        "SELECT 1 /*! ; {} */",
        "SELECT `a``b` FROM (SELECT 1 AS `a``b`) t; {}",
        // Sent as UTF-8 by the client: in GBK, SJIS or Big5 the last byte of `中` (E4 B8
        // AD) or `表` (E8 A1 A8) may start a character that swallows the backslash.
        "SELECT '中\\'; {}; -- '",
        "SELECT '表\\'; {}; -- '",
        "SELECT '中\\\\'; {}; -- '",
    ];
    const JOINS: &[&str] = &[";", "; ", ";\n", " ;", ";/* */", "; -- \n", ";#\n"];

    let cases: usize = std::env::var("PORTCULLIS_MY_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("PORTCULLIS_MY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("MySQL differential fuzzer: {cases} sequences, PORTCULLIS_MY_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let statement = |rng: &mut Rng| -> String {
        match rng.below(10) {
            0..=3 => (*rng.pick(BENIGN)).to_owned(),
            4..=5 => (*rng.pick(CONTEXTUAL)).to_owned(),
            _ => {
                let hide = *rng.pick(HIDES);
                let denied = *rng.pick(DENIED);
                hide.replace("{}", denied)
            }
        }
    };
    let sequences: Vec<Vec<String>> = (0..cases)
        .map(|_| {
            (0..1 + rng.below(3))
                .map(|_| {
                    let n = 1 + rng.below(3);
                    let mut q = statement(&mut rng);
                    for _ in 1..n {
                        let join = *rng.pick(JOINS);
                        q += join;
                        q += &statement(&mut rng);
                    }
                    q
                })
                .collect()
        })
        .collect();

    let db = mariadb().await;
    db.sql(
        "SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = 1; TRUNCATE mysql.general_log",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let rules = format!(
        r#"{ATTACK_RULES}[[policy.rules]]
name = "victims-read-only"
statements = ["update"]
tables = ["victims"]
action = "deny"
[audit]
[[audit.sinks]]
kind = "jsonl"
path = "{}"
"#,
        trail.display()
    );
    let (gateway, gw, _admin, _dir) = start(&db, &rules).await;
    let script = r#"
import json, sys, pymysql
from pymysql.constants import CLIENT
port, token, sequences = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
out = []
for seq in sequences:
    results = []
    try:
        conn = pymysql.connect(host="127.0.0.1", port=port, user="carol", password=token,
                               database="app", autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS)
    except pymysql.err.MySQLError as e:
        out.append(["connect refused %s" % (e.args[0],)])
        continue
    for q in seq:
        try:
            with conn.cursor() as c:
                c.execute(q)
                while c.nextset():
                    pass
            results.append("ran")
        except pymysql.err.MySQLError as e:
            results.append("refused %s" % (e.args[0],))
            if not conn.open:
                break
    try:
        conn.close()
    except Exception:
        pass
    out.append(results)
print(json.dumps(out))
"#;
    let intact = |db: &MariaDb| {
        db.sql(
            "SELECT CONCAT((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = 'app' AND table_name = 'victims'), ':', (SELECT GROUP_CONCAT(name ORDER BY id) FROM victims), ':', (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'app' AND table_name = 'gone')) FROM DUAL WHERE 'fuzz-check' IS NOT NULL",
        )
        .unwrap_or_default()
    };
    let whole = "2:a,b,c:0";
    assert_eq!(intact(&db), whole);
    let mut ran = 0;
    let mut refused = 0;
    for batch in sequences.chunks(20) {
        let out = {
            let json = serde_json::to_string(batch).unwrap();
            let script = script.to_owned();
            tokio::task::spawn_blocking(move || {
                Command::new("python3")
                    .args(["-c", &script, &gw.to_string(), CAROL, &json])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        };
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        let results: Vec<Vec<String>> = serde_json::from_str(stdout(&out).trim()).unwrap();
        for r in results.iter().flatten() {
            if r == "ran" {
                ran += 1;
            } else {
                refused += 1;
            }
        }
        let state = intact(&db);
        assert_eq!(
            state,
            whole,
            "damage through the gateway (seed {seed}) in one of:\n{:#?}\nresults {results:?}\n{}",
            batch,
            gateway.logs()
        );
        // Every query the server logged from the gateway's connections was judged.
        let logged = db
            .sql(&format!(
                "SELECT HEX(argument) FROM mysql.general_log WHERE command_type = 'Query' AND user_host LIKE '{}%' AND argument NOT LIKE '%fuzz-check%'; TRUNCATE mysql.general_log",
                db.user()
            ))
            .unwrap_or_default();
        let recorded: std::collections::HashSet<String> = super::recorded_statements(&trail, "")
            .into_iter()
            .map(|t| hex::encode_upper(t.as_bytes()))
            .collect();
        let own = hex::encode_upper("SELECT @@sql_mode, @@character_set_client");
        for line in logged.lines().filter(|l| !l.is_empty() && *l != own) {
            let text = String::from_utf8_lossy(&hex::decode(line).unwrap_or_default()).into_owned();
            assert!(
                recorded.contains(line),
                "MariaDB ran {text:?}, which the trail has no record of (seed {seed})\n{}",
                gateway.logs()
            );
        }
    }
    eprintln!(
        "MySQL differential fuzzer: {ran} queries ran, {refused} refused, no damage, every logged query recorded"
    );
    assert!(ran > 0 && refused > 0);
}

/// A client that breaks off its LOAD DATA LOCAL INFILE mid-file went away: the session ends
/// as for any client that leaves (logged as such, not as an internal error), nothing of the
/// partial file is kept, and the gateway goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_breaks_off_its_local_file_went_away() {
    let db = mariadb().await;
    let (gateway, gw, _admin, _dir) = start_with(&db, "local_infile = true", "").await;
    let mut raw = Raw::login(gw, "alice", ALICE).await;
    raw.send(
        0,
        b"\x03LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE victims FIELDS TERMINATED BY ','",
    )
    .await;
    let request = raw.read().await;
    assert_eq!(
        request[0], 0xfb,
        "the server asks for the file: {request:?}"
    );
    raw.send(2, b"9,z\n10,y\n").await;
    drop(raw);
    let ok = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let logs = gateway.logs();
            if logs.contains("went away during LOAD DATA LOCAL INFILE") {
                return (logs, gateway);
            }
            assert!(std::time::Instant::now() < deadline, "{logs}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let (logs, _gateway) = ok;
    assert!(!logs.contains("internal gateway error"), "{logs}");
    // The server saw its file cut off (not ended) and kept none of it; a cut file must never
    // be completed on the client's behalf (it was: the rows read so far were committed).
    for _ in 0..50 {
        if db
            .sql("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'LOAD DATA%'")
            .unwrap()
            == "0"
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM victims WHERE id >= 9")
            .unwrap(),
        "0"
    );
    let out = mysql(gw, ALICE, "SELECT 1");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A connection the server ends while the client is idle (`wait_timeout`, KILL) reaches the
/// client as it would directly: PyMySQL's own `test_connection_gone_away` expects a lost
/// connection (2006 or 2013) at its next query, not an error the gateway made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_ends_is_gone_as_it_would_be_directly() {
    let db = mariadb().await;
    let (_gateway, gw, _admin, _dir) = start(&db, "").await;
    let script = r#"
import sys, time, pymysql
port, user, password, how = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
con = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password, database="app")
cur = con.cursor()
if how == "timeout":
    cur.execute("SET wait_timeout=1")
    time.sleep(2.5)
else:
    cur.execute("SELECT CONNECTION_ID()")
    cid = cur.fetchone()[0]
    k = pymysql.connect(host="127.0.0.1", port=int(sys.argv[5]), user=sys.argv[6], password=sys.argv[7])
    k.cursor().execute("KILL CONNECTION %d" % cid)
    time.sleep(0.5)
try:
    cur.execute("SELECT 1+1")
    print("answered")
except pymysql.err.OperationalError as e:
    print(e.args[0])
"#;
    for how in ["timeout", "kill"] {
        let run = |port: u16, user: &str, password: &str| {
            let out = Command::new("python3")
                .args(["-c", script, &port.to_string(), user, password, how])
                .args([&db.port().to_string(), db.user(), db.password()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
            stdout(&out).trim().to_owned()
        };
        let direct = run(db.port(), db.user(), db.password());
        assert!(
            direct == "2013" || direct == "2006",
            "{how}: directly {direct}"
        );
        let through = run(gw, "alice", ALICE);
        assert!(
            through == "2013" || through == "2006",
            "{how}: directly {direct}, through the gateway {through}"
        );
    }
}

/// Each MySQL connection holds a database connection before its client proves anything:
/// one address may keep only `max_unauthenticated_per_peer` of them waiting; the next is
/// refused with 1040 before the gateway opens another, counted, and a login works again
/// once the waiting ones are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_may_keep_only_so_many_connections_waiting_to_log_in() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;
    let db = mariadb().await;
    let (_gateway, gw, admin, _dir) = start_with(&db, "max_unauthenticated_per_peer = 3", "").await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw))
            .await
            .unwrap();
        let mut greeting = [0u8; 5];
        tcp.read_exact(&mut greeting).await.unwrap();
        assert_eq!(greeting[4], 10, "a greeting");
        waiting.push(tcp);
    }
    let mut fourth = tokio::net::TcpStream::connect(("127.0.0.1", gw))
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), fourth.read_to_end(&mut answer))
        .await
        .expect("refused at once")
        .unwrap();
    assert_eq!(answer.get(4), Some(&0xff), "an error packet: {answer:?}");
    assert_eq!(u16::from_le_bytes([answer[5], answer[6]]), 1040);
    assert!(String::from_utf8_lossy(&answer).contains("max_unauthenticated_per_peer"));
    assert_eq!(
        super::metric(
            admin,
            "portcullis_logins_throttled_total{listener=\"maria\"}"
        )
        .await,
        Some(1)
    );
    drop(waiting);
    let mut logged_in = false;
    for _ in 0..100 {
        let out = tokio::task::spawn_blocking(move || mysql(gw, ALICE, "SELECT 1"))
            .await
            .unwrap();
        if out.status.success() {
            logged_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged_in, "no login once the waiting connections were gone");
}

/// Issue 19, class 3: dynamic SQL the gateway cannot see (`EXECUTE IMMEDIATE @v`, `PREPARE s
/// FROM @v`) takes the strictest verdict — the built-in `dynamic-sql` rule — even where
/// `on_unparsed = "allow"` would let an unread statement through; directly each drops a
/// table. A rule allowing `dynamic` lets it run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_sql_the_gateway_cannot_see_is_refused_unless_allowed() {
    let db = mariadb().await;
    let extra = r#"
[policy]
on_unparsed = "allow"
[[policy.rules]]
name = "no-drops"
statements = ["drop"]
action = "deny"
[[policy.rules]]
name = "dba-dynamic"
groups = ["dba"]
statements = ["dynamic"]
action = "allow"
"#;
    let (_gateway, gw, _admin, _dir) = start(&db, extra).await;
    let attacks = [
        "SET @v = 'DROP TABLE {t}'; EXECUTE IMMEDIATE @v",
        "SET @v = 'DROP TABLE {t}'; PREPARE s FROM @v; EXECUTE s",
    ];
    for attack in attacks {
        db.sql("CREATE TABLE scratch_dyn (id INT)").unwrap();
        db.sql(&attack.replace("{t}", "scratch_dyn")).unwrap();
        assert!(
            !db.sql("SHOW TABLES LIKE 'scratch_dyn'")
                .unwrap()
                .contains("scratch_dyn"),
            "{attack} did no damage directly"
        );
        let sql = attack.replace("{t}", "victims");
        let out = mysql(gw, ALICE, &sql);
        assert!(
            !out.status.success() && stderr(&out).contains("dynamic-sql"),
            "{sql}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(db.sql("SELECT COUNT(*) FROM victims").unwrap(), "3");
    }
    // Allowed by a rule: it runs.
    let out = mysql(gw, DANA, "SET @v = 'SELECT 42'; EXECUTE IMMEDIATE @v");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "42\n");
}
