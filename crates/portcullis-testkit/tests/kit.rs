//! Integration tests: real PostgreSQL and MariaDB servers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_testkit::{
    MARIADB_ED25519_USER, MARIADB_NATIVE_USER, MARIADB_READONLY_USER, MARIADB_SUPERUSER, MD5_USER,
    MariaDb, PLAIN_USER, PgCluster, SCRAM_USER, SUPERUSER,
};

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Runs `cmd` and returns trimmed stdout, failing the test with stderr otherwise.
fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn query(cluster: &PgCluster, database: &str, sql: &str) -> String {
    let mut cmd = cluster.psql(database);
    cmd.args(["-At", "-c", sql]);
    run(cmd)
}

#[test]
fn two_clusters_in_parallel() {
    let started = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let t = Instant::now();
                let c = PgCluster::start().unwrap();
                (c, t.elapsed())
            })
        })
        .collect();
    let clusters: Vec<(PgCluster, Duration)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!(
        "two clusters started in {:?} ({:?}, {:?})",
        started.elapsed(),
        clusters[0].1,
        clusters[1].1
    );
    let (a, b) = (&clusters[0].0, &clusters[1].0);
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    for c in [a, b] {
        assert_eq!(c.host(), "127.0.0.1");
        assert_eq!(c.user(), "portcullis");
        assert!(accepts(c.port()));
        assert_eq!(query(c, "app", "select 1"), "1");
        assert_eq!(query(c, "app", "select current_database()"), "app");
        assert_eq!(
            query(c, "postgres", "show port"),
            c.port().to_string(),
            "psql must reach this cluster"
        );
        assert!(
            c.socket_dir()
                .join(format!(".s.PGSQL.{}", c.port()))
                .exists()
        );
        assert!(
            c.url("app")
                .ends_with(&format!("@127.0.0.1:{}/app", c.port()))
        );
    }
    // Each cluster has its own data.
    query(a, "app", "create table only_in_a (x int)");
    assert_eq!(
        query(
            b,
            "app",
            "select count(*) from pg_tables where tablename = 'only_in_a'"
        ),
        "0"
    );
}

#[test]
fn settings_roles_and_tls() {
    let c = PgCluster::start().unwrap();
    assert_eq!(query(&c, "postgres", "show ssl"), "on");
    assert_eq!(query(&c, "postgres", "show fsync"), "off");
    assert_eq!(
        query(&c, "postgres", "show password_encryption"),
        "scram-sha-256"
    );
    assert_eq!(query(&c, "postgres", "show listen_addresses"), "127.0.0.1");
    // Stored password formats: MD5 for md5user, SCRAM for everyone else.
    assert_eq!(
        query(
            &c,
            "postgres",
            "select string_agg(rolname || ':' || split_part(rolpassword, '$', 1), ',' \
             order by rolname) from pg_authid \
             where rolname in ('md5user', 'plainuser', 'scramuser', 'portcullis')"
        ),
        "md5user:md5,plainuser:SCRAM-SHA-256,portcullis:SCRAM-SHA-256,scramuser:SCRAM-SHA-256"
            .replace("md5user:md5,", &format!("md5user:md5{},", md5_hex(&c)))
    );
    assert_eq!(
        query(
            &c,
            "postgres",
            "select string_agg(datname, ',' order by datname) from pg_database"
        ),
        "app,postgres,template0,template1"
    );

    // Every role can log in over TCP with its method (pg_hba decides which).
    for (user, password) in [SUPERUSER, MD5_USER, PLAIN_USER, SCRAM_USER] {
        let mut cmd = c.psql("app");
        cmd.env("PGUSER", user).env("PGPASSWORD", password).args([
            "-At",
            "-c",
            "select current_user",
        ]);
        assert_eq!(run(cmd), user);
        // A wrong password is rejected.
        let mut cmd = c.psql("app");
        cmd.env("PGUSER", user)
            .env("PGPASSWORD", "wrong")
            .args(["-At", "-c", "select 1"]);
        assert!(
            !cmd.output().unwrap().status.success(),
            "{user} with a wrong password"
        );
    }

    // TLS with full verification against the kit's CA.
    let mut cmd = c.psql("app");
    cmd.env("PGSSLMODE", "verify-full").args([
        "-At",
        "-c",
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    ]);
    assert_eq!(run(cmd), "t");
    assert_eq!(
        std::fs::read_to_string(c.ca_path()).unwrap(),
        c.ca_pem(),
        "ca_path holds ca_pem"
    );

    // The unix socket trusts everyone.
    let mut cmd = c.psql("postgres");
    cmd.env("PGHOST", c.socket_dir())
        .env_remove("PGPASSWORD")
        .args(["-At", "-c", "select 1"]);
    assert_eq!(run(cmd), "1");

    // The config string works with psql too.
    let mut cmd = Command::new(PgCluster::bin("psql").unwrap());
    cmd.args([
        "-X",
        "-At",
        "-c",
        "select current_user",
        &c.config_string_as(MD5_USER.0, MD5_USER.1, "app"),
    ]);
    assert_eq!(run(cmd), "md5user");
    let mut cmd = Command::new(PgCluster::bin("psql").unwrap());
    cmd.args([
        "-X",
        "-At",
        "-c",
        "select current_database()",
        &c.url("app"),
    ]);
    assert_eq!(run(cmd), "app");
}

/// The hex part of md5user's stored password (it has no `$`, so split_part keeps it all).
fn md5_hex(c: &PgCluster) -> String {
    let stored = query(
        c,
        "postgres",
        "select rolpassword from pg_authid where rolname = 'md5user'",
    );
    assert_eq!(stored.len(), 35, "{stored}");
    stored[3..].to_owned()
}

#[test]
fn kill_stops_accepting_and_drop_removes_the_directory() {
    let mut c = PgCluster::start().unwrap();
    let port = c.port();
    let dir: PathBuf = c.dir().to_path_buf();
    let pid = c.pid().unwrap();
    assert!(accepts(port));
    assert!(dir.exists());

    // A client connected while the database dies sees its connection fail.
    let mut session = c.psql("app");
    session
        .args(["-At", "-c", "select pg_sleep(30)"])
        .stderr(std::process::Stdio::piped());
    let child = session.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    c.kill();
    eprintln!("kill took {:?}", t.elapsed());
    assert!(!accepts(port), "port {port} still accepts after kill()");
    assert_eq!(c.pid(), None);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    c.kill(); // idempotent

    let t = Instant::now();
    drop(c);
    eprintln!("drop took {:?}", t.elapsed());
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[test]
fn drop_stops_the_server() {
    let c = PgCluster::start().unwrap();
    let port = c.port();
    let dir = c.dir().to_path_buf();
    let pid = c.pid().unwrap();
    drop(c);
    assert!(!accepts(port));
    assert!(!dir.exists());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// Environment variable that makes `child_process_exits_without_drop` act.
const CHILD_ENV: &str = "PORTCULLIS_TESTKIT_TEST_CHILD";

/// Run as a child of `watchdog_cleans_up_after_a_dead_process`: starts a cluster,
/// prints its port and directory, and exits without dropping it.
#[test]
fn child_process_exits_without_drop() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let c = PgCluster::start().unwrap();
    println!("CLUSTER {} {}", c.port(), c.dir().display());
    std::process::exit(0);
}

#[test]
fn watchdog_cleans_up_after_a_dead_process() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_exits_without_drop", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CLUSTER "))
        .unwrap_or_else(|| {
            panic!(
                "child printed no cluster: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (port, dir) = line.split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    let dir = PathBuf::from(dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (accepts(port) || dir.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!accepts(port), "orphaned server still listening on {port}");
    assert!(!dir.exists(), "orphaned {} not removed", dir.display());
}

// ---- MariaDB ---------------------------------------------------------------------------

fn maria_query(db: &MariaDb, sql: &str) -> String {
    let mut cmd = db.mysql("app");
    cmd.args(["-N", "-B", "-e", sql]);
    run(cmd)
}

#[test]
fn two_mariadb_servers_in_parallel() {
    let started = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let t = Instant::now();
                let db = MariaDb::start().unwrap();
                (db, t.elapsed())
            })
        })
        .collect();
    let servers: Vec<(MariaDb, Duration)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!(
        "two MariaDB servers started in {:?} ({:?}, {:?})",
        started.elapsed(),
        servers[0].1,
        servers[1].1
    );
    let (a, b) = (&servers[0].0, &servers[1].0);
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert_ne!(a.port(), 3306);
    for db in [a, b] {
        assert_eq!(db.host(), "127.0.0.1");
        assert_eq!((db.user(), db.password()), MARIADB_SUPERUSER);
        assert!(accepts(db.port()));
        assert!(db.pid().is_some());
        assert!(db.data_dir().starts_with(db.dir()));
        assert!(db.socket_path().starts_with(db.dir()));
        assert_eq!(maria_query(db, "select 1"), "1");
        assert_eq!(maria_query(db, "select database()"), "app");
        assert_eq!(
            db.sql("select @@port").unwrap(),
            db.port().to_string(),
            "the client must reach this server"
        );
        assert_eq!(db.sql("select current_user()").unwrap(), "portcullis@%");
        assert_eq!(
            db.url("app"),
            format!(
                "mysql://portcullis:portcullis-secret@127.0.0.1:{}/app",
                db.port()
            )
        );
    }
    // Each server has its own data.
    a.sql("create table only_in_a (x int)").unwrap();
    assert_eq!(
        b.sql("select count(*) from information_schema.tables where table_name = 'only_in_a'")
            .unwrap(),
        "0"
    );
    // sql() reports failures with the client's message.
    match b.sql("select * from only_in_a") {
        Err(portcullis_testkit::Error::Command { stderr, .. }) => {
            assert!(stderr.contains("only_in_a"), "{stderr}")
        }
        other => panic!("unexpected: {other:?}"),
    }

    let dirs: Vec<PathBuf> = servers
        .iter()
        .map(|(db, _)| db.dir().to_path_buf())
        .collect();
    let ports: Vec<u16> = servers.iter().map(|(db, _)| db.port()).collect();
    let t = Instant::now();
    drop(servers);
    eprintln!("dropping two MariaDB servers took {:?}", t.elapsed());
    for (dir, port) in dirs.iter().zip(ports) {
        assert!(!dir.exists(), "{} still exists after drop", dir.display());
        assert!(!accepts(port), "port {port} still accepts after drop");
    }
}

#[test]
fn mariadb_settings_users_and_tls() {
    let db = MariaDb::start().unwrap();
    let var = |name: &str| db.sql(&format!("select @@{name}")).unwrap();
    assert_eq!(
        db.sql("show variables like 'have_ssl'").unwrap(),
        "have_ssl\tYES"
    );
    assert_eq!(var("local_infile"), "1");
    assert_eq!(var("max_allowed_packet"), (64 << 20).to_string());
    assert_eq!(var("character_set_server"), "utf8mb4");
    assert_eq!(var("skip_name_resolve"), "1");
    assert_eq!(var("bind_address"), "127.0.0.1");
    assert_eq!(var("socket"), db.socket_path().to_str().unwrap());
    assert_eq!(var("datadir"), format!("{}/", db.data_dir().display()));
    assert_eq!(
        db.sql(
            "select concat(user, ':', plugin) from mysql.user \
             where user in ('portcullis', 'native_user', 'ed_user', 'readonly') order by user"
        )
        .unwrap(),
        "ed_user:ed25519\nnative_user:mysql_native_password\n\
         portcullis:mysql_native_password\nreadonly:mysql_native_password"
    );

    // TLS verified against the kit's CA.
    assert_eq!(std::fs::read_to_string(db.ca_path()).unwrap(), db.ca_pem());
    let mut cmd = db.mysql("app");
    cmd.arg("--ssl")
        .arg(format!("--ssl-ca={}", db.ca_path().display()))
        .arg("--ssl-verify-server-cert")
        .args(["-N", "-B", "-e", "show status like 'Ssl_cipher'"]);
    let cipher = run(cmd);
    let cipher = cipher.strip_prefix("Ssl_cipher\t").unwrap_or("");
    assert!(!cipher.is_empty(), "no TLS cipher: {cipher:?}");
    // A CA that did not sign the server's certificate is refused.
    let other_ca = tempfile::NamedTempFile::new().unwrap();
    let other = portcullis_testkit::Certs::generate().unwrap();
    std::fs::write(other_ca.path(), other.ca_pem).unwrap();
    let mut cmd = db.mysql("app");
    cmd.arg("--ssl")
        .arg(format!("--ssl-ca={}", other_ca.path().display()))
        .arg("--ssl-verify-server-cert")
        .args(["-e", "select 1"]);
    assert!(!cmd.output().unwrap().status.success(), "wrong CA accepted");

    // Every user logs in over TCP with its password, and not with a wrong one.
    for (user, password) in [
        MARIADB_SUPERUSER,
        MARIADB_NATIVE_USER,
        MARIADB_ED25519_USER,
        MARIADB_READONLY_USER,
    ] {
        let mut cmd = db.mysql_as(user, password, "app");
        cmd.args(["-N", "-B", "-e", "select current_user()"]);
        assert_eq!(run(cmd), format!("{user}@%"));
        let mut cmd = db.mysql_as(user, "wrong", "app");
        cmd.args(["-e", "select 1"]);
        assert!(
            !cmd.output().unwrap().status.success(),
            "{user} with a wrong password"
        );
    }
    let mut cmd = db.mysql_as(MARIADB_ED25519_USER.0, MARIADB_ED25519_USER.1, "app");
    cmd.args([
        "-N",
        "-B",
        "-e",
        "create table ed_made (x int); insert into ed_made values (7); select x from ed_made",
    ]);
    assert_eq!(run(cmd), "7");
    // readonly may read app but not write it.
    let (ro, ro_password) = MARIADB_READONLY_USER;
    let mut cmd = db.mysql_as(ro, ro_password, "app");
    cmd.args(["-N", "-B", "-e", "select x from ed_made"]);
    assert_eq!(run(cmd), "7");
    let mut cmd = db.mysql_as(ro, ro_password, "app");
    cmd.args(["-e", "insert into ed_made values (8)"]);
    assert!(!cmd.output().unwrap().status.success(), "readonly wrote");

    // A 10 MB BLOB fits (max_allowed_packet, redo log).
    db.sql(
        "create table blobs (b longblob); \
         insert into blobs values (repeat('x', 10 * 1024 * 1024)); \
         select length(b) from blobs",
    )
    .unwrap();
    assert_eq!(db.sql("select length(b) from blobs").unwrap(), "10485760");
}

#[test]
fn mariadb_kill_and_drop() {
    let mut db = MariaDb::start().unwrap();
    let port = db.port();
    let dir = db.dir().to_path_buf();
    let pid = db.pid().unwrap();
    assert!(accepts(port));

    // A client connected while the database dies sees its connection fail.
    let mut session = db.mysql("app");
    session
        .args(["-e", "select sleep(30)"])
        .stderr(std::process::Stdio::piped());
    let child = session.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    db.kill();
    eprintln!("MariaDB kill took {:?}", t.elapsed());
    assert!(!accepts(port), "port {port} still accepts after kill()");
    assert_eq!(db.pid(), None);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    db.kill(); // idempotent
    assert!(dir.exists());
    assert!(db.sql("select 1").is_err());

    drop(db);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

/// Run as a child of `mariadb_watchdog_cleans_up_after_a_dead_process`: starts a
/// server, prints its port and directory, and exits without dropping it.
#[test]
fn mariadb_child_process_exits_without_drop() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let db = MariaDb::start().unwrap();
    println!("SERVER {} {}", db.port(), db.dir().display());
    std::process::exit(0);
}

#[test]
fn mariadb_watchdog_cleans_up_after_a_dead_process() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "mariadb_child_process_exits_without_drop",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SERVER "))
        .unwrap_or_else(|| {
            panic!(
                "child printed no server: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (port, dir) = line.split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    let dir = PathBuf::from(dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (accepts(port) || dir.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!accepts(port), "orphaned server still listening on {port}");
    assert!(!dir.exists(), "orphaned {} not removed", dir.display());
}
