//! Integration tests: real PostgreSQL and MariaDB servers, the HTTP upstream.

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

// ---------------------------------------------------------------------------------------
// HttpUpstream
// ---------------------------------------------------------------------------------------

mod upstream {
    use std::io::Read as _;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode, header};
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::TokioIo;
    use portcullis_testkit::{
        BodyDigest, Certs, ERROR_JSON, HttpUpstream, PLANTED_EMAIL, SHUTDOWN_GRACE,
        STREAM_DEFAULT_N, TEXT_BODY, USERS_JSON, binary_body, fail_mid_prefix_len, sha256_hex,
        stream_bytes, stream_digest, stream_email,
    };
    use serde_json::{Value, json};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio::net::TcpStream;

    /// A response as the client saw it; `error` is set when the body broke off.
    #[derive(Debug)]
    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
        error: Option<String>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(|v| v.to_str().unwrap())
        }

        fn json(&self) -> Value {
            assert_eq!(self.header("content-type"), Some("application/json"));
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// One request on a fresh connection (HTTPS when `certs` is given).
    async fn send(
        up: &HttpUpstream,
        certs: Option<&Certs>,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        let tcp = TcpStream::connect(up.addr()).await.unwrap();
        match certs {
            None => exchange(tcp, up, method, path, headers, body).await,
            Some(certs) => {
                let tls = tls_connector(certs)
                    .connect("127.0.0.1".try_into().unwrap(), tcp)
                    .await
                    .unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
                exchange(tls, up, method, path, headers, body).await
            }
        }
    }

    async fn get(up: &HttpUpstream, path: &str, headers: &[(&str, &str)]) -> Answer {
        send(up, None, Method::GET, path, headers, Vec::new()).await
    }

    fn tls_connector(certs: &Certs) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(certs.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    async fn exchange<I>(
        io: I,
        up: &HttpUpstream,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, up.addr().to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let (parts, mut incoming) = response.into_parts();
        let (mut body, mut error) = (Vec::new(), None);
        while let Some(frame) = incoming.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        body.extend_from_slice(&data);
                    }
                }
                Err(e) => {
                    error = Some(format!("{e:?}"));
                    break;
                }
            }
        }
        drop(sender);
        let _ = conn.await;
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
            error,
        }
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[tokio::test]
    async fn serves_every_endpoint_and_records_requests() {
        let up = HttpUpstream::start().await.unwrap();
        assert_eq!(up.url(), format!("http://127.0.0.1:{}", up.port()));
        assert!(!up.is_tls());
        assert!(up.requests().is_empty());

        // The users document, and the request as the upstream saw it.
        let auth = [
            ("Authorization", "Bearer client-token"),
            ("X-Upstream-Key", "injected-credential"),
        ];
        let users = get(&up, "/v1/users?page=1&q=a%20b", &auth).await;
        assert_eq!(users.status, 200);
        assert_eq!(users.body, USERS_JSON.as_bytes());
        assert_eq!(
            users.header("content-length"),
            Some(USERS_JSON.len().to_string().as_str())
        );
        assert_eq!(users.json()["users"][0]["email"], PLANTED_EMAIL);
        let seen = up.last_request().unwrap();
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.path, "/v1/users");
        assert_eq!(seen.query.as_deref(), Some("page=1&q=a%20b"));
        assert_eq!(seen.version, http::Version::HTTP_11);
        assert_eq!(seen.header("authorization"), Some("Bearer client-token"));
        assert_eq!(seen.header("x-upstream-key"), Some("injected-credential"));
        assert_eq!(seen.header_all("Authorization"), ["Bearer client-token"]);
        assert_eq!(seen.header("host"), Some(up.addr().to_string().as_str()));
        assert_eq!(seen.body_digest, BodyDigest::of(b""));
        assert_eq!(seen.body.as_deref(), Some(&b""[..]));
        assert!(seen.body_complete);
        assert_eq!(seen.peer.ip(), up.addr().ip());

        // The stream: chunked, exactly stream_bytes(n).
        for (path, n) in [
            ("/v1/stream?n=5000", 5000),
            ("/v1/stream", STREAM_DEFAULT_N),
            ("/v1/stream?n=0", 0),
        ] {
            let answer = get(&up, path, &[]).await;
            assert_eq!((answer.status, &answer.error), (StatusCode::OK, &None));
            assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
            assert_eq!(answer.header("content-length"), None);
            assert_eq!(answer.header("content-type"), Some("application/json"));
            assert_eq!(BodyDigest::of(&answer.body), stream_digest(n), "{path}");
            assert_eq!(answer.body, stream_bytes(n), "{path}");
        }
        let big = get(&up, "/v1/stream?n=150000", &[]).await;
        assert_eq!(big.error, None);
        assert!(big.body.len() > 10_000_000);
        assert_eq!(BodyDigest::of(&big.body), stream_digest(150_000));
        let items: Value = serde_json::from_slice(&big.body).unwrap();
        assert_eq!(items[149_999]["email"], json!(stream_email(150_000)));
        assert_eq!(get(&up, "/v1/stream?n=many", &[]).await.status, 400);

        // fail-mid: headers and half the body, then the connection breaks.
        let broken = get(&up, "/v1/fail-mid?n=5000", &[]).await;
        assert_eq!(broken.status, 200);
        assert_eq!(broken.header("transfer-encoding"), Some("chunked"));
        let error = broken.error.as_deref().expect("fail-mid must break off");
        let full = stream_bytes(5000);
        let prefix = usize::try_from(fail_mid_prefix_len(5000)).unwrap();
        assert!(prefix > 64 * 1024 && prefix < full.len());
        assert_eq!(broken.body.len(), prefix, "{error}");
        assert_eq!(broken.body, full[..prefix]);
        let tiny = get(&up, "/v1/fail-mid?n=0", &[]).await;
        assert!(tiny.error.is_some());
        assert_eq!(tiny.body, b"[");

        // slow
        let started = Instant::now();
        let slow = get(&up, "/v1/slow?ms=300", &[]).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(slow.json(), json!({"slept_ms": 300}));

        // error, text, binary
        let error = get(&up, "/v1/error", &[]).await;
        assert_eq!(error.status, 500);
        assert_eq!(error.body, ERROR_JSON.as_bytes());
        assert!(
            error.json()["message"]
                .as_str()
                .unwrap()
                .contains(PLANTED_EMAIL)
        );
        let text = get(&up, "/v1/text", &[]).await;
        assert_eq!(
            text.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(text.body, TEXT_BODY.as_bytes());
        let binary = get(&up, "/v1/binary", &[]).await;
        assert_eq!(
            binary.header("content-type"),
            Some("application/octet-stream")
        );
        assert_eq!(binary.body, binary_body());

        // gzip only when asked for.
        for (accept, gzipped) in [
            (None, false),
            (Some("gzip"), true),
            (Some("br, gzip;q=0.8, deflate"), true),
            (Some("*"), true),
            (Some("identity"), false),
            (Some("gzip;q=0"), false),
            (Some("br"), false),
        ] {
            let headers: Vec<(&str, &str)> =
                accept.iter().map(|a| ("accept-encoding", *a)).collect();
            let answer = get(&up, "/v1/gzip", &headers).await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.header("vary"), Some("accept-encoding"));
            assert_eq!(answer.header("content-type"), Some("application/json"));
            if gzipped {
                assert_eq!(
                    answer.header("content-encoding"),
                    Some("gzip"),
                    "{accept:?}"
                );
                assert_eq!(&answer.body[..2], [0x1f, 0x8b]);
                assert_eq!(gunzip(&answer.body), USERS_JSON.as_bytes());
            } else {
                assert_eq!(answer.header("content-encoding"), None, "{accept:?}");
                assert_eq!(answer.body, USERS_JSON.as_bytes());
            }
        }

        // echo: small body kept whole in the record, big one digested only.
        up.take_requests();
        for len in [100_000, 2 * 1024 * 1024 + 3] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let headers = [
                ("Authorization", "Basic Z2F0ZXdheQ=="),
                ("X-Multi", "one"),
                ("X-Multi", "two"),
                ("Content-Type", "application/octet-stream"),
            ];
            let echo = send(&up, None, Method::POST, "/v1/echo", &headers, body.clone()).await;
            let echoed = echo.json();
            assert_eq!(echoed["len"], json!(len));
            assert_eq!(echoed["sha256"], json!(sha256_hex(&body)));
            assert_eq!(echoed["headers"]["authorization"], "Basic Z2F0ZXdheQ==");
            assert_eq!(echoed["headers"]["x-multi"], "one, two");
            assert_eq!(echoed["headers"]["content-length"], json!(len.to_string()));
            let seen = up.last_request().unwrap();
            assert_eq!(seen.body_digest, BodyDigest::of(&body));
            assert_eq!(seen.header_all("x-multi"), ["one", "two"]);
            if len <= portcullis_testkit::RECORDED_BODY_LIMIT {
                assert_eq!(seen.body.as_deref(), Some(&body[..]));
            } else {
                assert_eq!(seen.body, None);
            }
        }

        // DELETE, admin, status, unknown paths and methods.
        let deleted = send(
            &up,
            None,
            Method::DELETE,
            "/v1/indices/logs%202024",
            &[],
            vec![],
        )
        .await;
        assert_eq!(deleted.json(), json!({"deleted": "logs 2024"}));
        let admin = send(
            &up,
            None,
            Method::POST,
            "/admin/_cluster/settings",
            &[],
            vec![],
        )
        .await;
        assert_eq!(admin.json(), json!({"admin": "_cluster/settings"}));
        assert_eq!(get(&up, "/admin/x", &[]).await.status, 405);
        assert_eq!(get(&up, "/v1/indices/logs", &[]).await.status, 405);
        let teapot = send(&up, None, Method::PUT, "/v1/status/418", &[], vec![]).await;
        assert_eq!(teapot.status, 418);
        assert_eq!(teapot.json(), json!({"status": 418}));
        let missing = get(&up, "/nope?x=1", &[]).await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.json()["path"], "/nope");

        let seen: Vec<(Method, String)> = up
            .requests()
            .into_iter()
            .map(|r| (r.method, r.path))
            .collect();
        assert_eq!(seen.len(), 8, "{seen:?}");
        assert_eq!(
            seen[2],
            (Method::DELETE, "/v1/indices/logs%202024".to_owned())
        );
        assert_eq!(up.take_requests().len(), 8);
        assert!(up.requests().is_empty());
    }

    #[tokio::test]
    async fn serves_https() {
        let certs = Certs::generate().unwrap();
        let up = HttpUpstream::start_tls(&certs).await.unwrap();
        assert!(up.is_tls());
        assert_eq!(up.url(), format!("https://127.0.0.1:{}", up.port()));
        let users = send(&up, Some(&certs), Method::GET, "/v1/users", &[], vec![]).await;
        assert_eq!(users.body, USERS_JSON.as_bytes());
        let stream = send(
            &up,
            Some(&certs),
            Method::GET,
            "/v1/stream?n=3000",
            &[],
            vec![],
        )
        .await;
        assert_eq!(BodyDigest::of(&stream.body), stream_digest(3000));
        let broken = send(
            &up,
            Some(&certs),
            Method::GET,
            "/v1/fail-mid?n=3000",
            &[],
            vec![],
        )
        .await;
        assert!(broken.error.is_some());
        assert_eq!(
            broken.body.len() as u64,
            fail_mid_prefix_len(3000),
            "{:?}",
            broken.error
        );
        assert_eq!(up.requests().len(), 3);
        // Plain HTTP to the TLS port gets no answer.
        let tcp = TcpStream::connect(up.addr()).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get("/v1/users")
            .header(header::HOST, "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert!(sender.send_request(request).await.is_err());
        assert_eq!(up.requests().len(), 3);
    }

    #[tokio::test]
    async fn shutdown_and_drop_stop_the_server() {
        // An answer in flight is cut after the grace period; the port closes.
        let up = HttpUpstream::start().await.unwrap();
        let addr = up.addr();
        let client = {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let request = http::Request::get("/v1/slow?ms=60000")
                .header(header::HOST, addr.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            tokio::spawn(async move { sender.send_request(request).await })
        };
        while up.requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        up.shutdown().await;
        let took = started.elapsed();
        assert!(
            took >= SHUTDOWN_GRACE && took < SHUTDOWN_GRACE + Duration::from_secs(2),
            "{took:?}"
        );
        assert!(
            client.await.unwrap().is_err(),
            "the slow answer must be cut"
        );
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");

        // Idle: shutdown is immediate.
        let up = HttpUpstream::start().await.unwrap();
        let addr = up.addr();
        assert_eq!(get(&up, "/v1/users", &[]).await.status, 200);
        let started = Instant::now();
        up.shutdown().await;
        assert!(started.elapsed() < SHUTDOWN_GRACE);
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");

        // Dropping closes the listener too.
        let up = HttpUpstream::start().await.unwrap();
        let addr = up.addr();
        drop(up);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still listening after drop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
