//! Throwaway MariaDB servers.
//!
//! Made like the PostgreSQL clusters (see the crate docs): a template data directory
//! is built once per machine under a lock (`mariadb-install-db`, then users, the
//! `app` database and the ed25519 plugin set up through a socket-only server that is
//! then shut down cleanly, then a `complete` marker); every [`MariaDb`] copies its
//! data directory into a temporary directory of its own and starts `mariadbd` there
//! on a free port, as the `mysql` system user when the tests run as root, under the
//! same watchdog as the PostgreSQL servers.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tempfile::TempDir;

use crate::bin::{is_executable, on_path};
use crate::certs::{Certs, write_private};
use crate::cluster::{PORT_ATTEMPTS, keep_dirs, percent_encode};
use crate::error::{Error, IoContext, MARIADB_INSTALL_HINT};
use crate::server::{NotReady, START_TIMEOUT, Server, Shutdown, log_tail};
use crate::sys::{
    MARIADB_ACCOUNT, ServerUser, copy_dir, effective_user_name, remove_dir_retrying, server_user,
    temp_base,
};
use crate::template::{MARKER, build_once, fresh_dir, mark_complete};
use crate::{
    MARIADB_ED25519_USER, MARIADB_NATIVE_USER, MARIADB_READONLY_USER, MARIADB_SUPERUSER, free_port,
};

/// Environment variable naming a directory to look for the MariaDB programs
/// (`mariadbd`, `mariadb-install-db`, `mariadb`, ...) in before `PATH` and the
/// usual places (`/usr/sbin`, `/usr/bin`, ...).
pub const MARIADB_BIN_DIR_ENV: &str = "MARIADB_BIN_DIR";

/// Bump when the template recipe changes, so stale templates are not reused.
const RECIPE_TAG: &str = "v1";
/// The address servers listen on.
const HOST: &str = "127.0.0.1";
/// Where MariaDB programs are looked for after [`MARIADB_BIN_DIR_ENV`] and `PATH`.
const USUAL_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/libexec",
    "/opt/homebrew/sbin",
    "/opt/homebrew/bin",
];
/// `CLIENT_SSL` in the server greeting's capability flags.
const CLIENT_SSL: u16 = 0x0800;

/// Settings of every server (the `[mysqld]` group of its `my.cnf`, after the
/// paths): fast to start, small, nothing durable, big packets.
const SETTINGS: &str = "\
skip-name-resolve
character-set-server = utf8mb4
local-infile = ON
max-allowed-packet = 64M
performance-schema = OFF
table-open-cache = 400
innodb-buffer-pool-size = 64M
innodb-log-file-size = 16M
innodb-flush-log-at-trx-commit = 0
innodb-doublewrite = OFF
innodb-use-native-aio = OFF
innodb-buffer-pool-dump-at-shutdown = OFF
innodb-buffer-pool-load-at-startup = OFF
innodb-temp-data-file-path = ibtmp1:1M:autoextend
";

/// A running throwaway MariaDB server, stopped and deleted on drop.
///
/// Every server is a copy of one template made by `mariadb-install-db` once per
/// machine (see the crate docs), listening on `127.0.0.1` on its own port (and on a
/// unix socket in its own directory, [`MariaDb::socket_path`]), with TLS on
/// (certificate signed by [`MariaDb::ca_pem`]; `have_ssl` is `YES`, TLS is
/// optional for clients), `skip-name-resolve`, `local_infile = ON`,
/// `max_allowed_packet = 64M`, `character_set_server = utf8mb4` and small InnoDB
/// buffers. Users (all `@'%'`):
///
/// | user | constant | authentication | privileges |
/// |------|----------|----------------|------------|
/// | `portcullis` | [`MARIADB_SUPERUSER`] | `mysql_native_password` | `ALL PRIVILEGES ON *.* WITH GRANT OPTION` |
/// | `native_user` | [`MARIADB_NATIVE_USER`] | `mysql_native_password` | `ALL PRIVILEGES ON app.*` |
/// | `ed_user` | [`MARIADB_ED25519_USER`] | `ed25519` (plugin `auth_ed25519`) | `ALL PRIVILEGES ON app.*` |
/// | `readonly` | [`MARIADB_READONLY_USER`] | `mysql_native_password` | `SELECT ON app.*` |
///
/// Databases: `app` (empty) and the system ones. `root@localhost` exists too but
/// only for unix-socket connections from the system `root` user.
#[derive(Debug)]
pub struct MariaDb {
    server: Option<Server>,
    dir: Option<TempDir>,
    root: PathBuf,
    data_dir: PathBuf,
    socket_path: PathBuf,
    ca_path: PathBuf,
    port: u16,
    ca_pem: Arc<str>,
    client: PathBuf,
}

impl MariaDb {
    /// Starts a fresh server and waits (at most 30 s) until it greets clients on its
    /// TCP port. The first call on a machine also builds the template (under a
    /// second on tmpfs); later calls copy it (about 0.1 s).
    pub fn start() -> Result<MariaDb, Error> {
        MariaDb::start_with_ports(free_port)
    }

    /// [`MariaDb::start`], trying the ports `next_port` returns.
    fn start_with_ports(mut next_port: impl FnMut() -> u16) -> Result<MariaDb, Error> {
        let template = template()?;
        let user = template.user;
        let tmp = tempfile::Builder::new()
            .prefix("portcullis-mariadb-")
            .tempdir_in(&template.base)
            .ctx(|| format!("creating a directory in {}", template.base.display()))?;
        let root = tmp.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod {}", root.display()))?;
        user.chown(&root)?;

        let data_dir = root.join("data");
        copy_dir(&template.dir.join("data"), &data_dir)?;
        let paths = Paths::new(&root, &data_dir);
        paths.write(&template.certs, &user, true)?;

        let keep = keep_dirs();
        let mut attempt = 0;
        let (server, port) = loop {
            attempt += 1;
            let port = next_port();
            let log_start = fs::metadata(&paths.log).map(|m| m.len()).unwrap_or(0);
            let mut cmd = mariadbd_command(&template.mariadbd, &paths);
            cmd.arg(format!("--port={port}"));
            let mut server = Server::spawn_command(
                cmd,
                &paths.log,
                user,
                (!keep).then_some(root.as_path()),
                Shutdown::Kill,
            )?;
            let mut greeting = None;
            let waited = server.wait_until(START_TIMEOUT, || {
                greeting = unix_greeting(&paths.socket).and_then(|_| tcp_greeting(port));
                greeting.is_some()
            });
            match waited {
                Ok(()) => {
                    check_tls(greeting.as_ref(), &paths.log, log_start)?;
                    break (server, port);
                }
                Err(NotReady::Exited(status)) => {
                    let log = log_tail(&paths.log, log_start);
                    let port_taken =
                        log.contains("Address already in use") || log.contains("Bind on TCP/IP");
                    if port_taken && attempt < PORT_ATTEMPTS {
                        continue;
                    }
                    return Err(Error::Command {
                        what: format!(
                            "{} --defaults-file={} --port={port}",
                            template.mariadbd.display(),
                            paths.conf.display()
                        ),
                        status,
                        stderr: log,
                    });
                }
                Err(NotReady::Wait(e)) => return Err(Error::io("waiting for mariadbd", e)),
                Err(NotReady::TimedOut) => {
                    server.stop(Shutdown::Kill);
                    return Err(Error::Timeout {
                        what: format!(
                            "MariaDB ({}, port {port}) did not greet clients within {}s; \
                             server log:\n{}",
                            data_dir.display(),
                            START_TIMEOUT.as_secs(),
                            log_tail(&paths.log, log_start)
                        ),
                    });
                }
            }
        };
        let dir = if keep {
            let _ = tmp.keep();
            None
        } else {
            Some(tmp)
        };
        Ok(MariaDb {
            server: Some(server),
            dir,
            root,
            data_dir,
            socket_path: paths.socket,
            ca_path: paths.ca,
            port,
            ca_pem: Arc::clone(&template.certs.ca_pem),
            client: template.client.clone(),
        })
    }

    /// The host to connect to: `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name, `"portcullis"` ([`MARIADB_SUPERUSER`]).
    pub fn user(&self) -> &str {
        MARIADB_SUPERUSER.0
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        MARIADB_SUPERUSER.1
    }

    /// The server's unix socket (in [`MariaDb::dir`]).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's own directory (data, socket, `my.cnf`, log, certificates);
    /// removed on drop.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The server's error log (stdout and stderr of `mariadbd`).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("mariadbd.log")
    }

    /// The PEM of the CA that signed the server's TLS certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A file holding [`MariaDb::ca_pem`] (the server's `ssl_ca`, too).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The `mariadbd` process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server
            .as_ref()
            .filter(|s| !s.exited())
            .map(Server::pid)
    }

    /// `mysql://portcullis:PASSWORD@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        self.url_as(MARIADB_SUPERUSER.0, MARIADB_SUPERUSER.1, database)
    }

    /// A `mysql://` URL for another user, e.g.
    /// `db.url_as(MARIADB_ED25519_USER.0, MARIADB_ED25519_USER.1, "app")`.
    pub fn url_as(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "mysql://{}:{}@{HOST}:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(database)
        )
    }

    /// A `mariadb` client command connected as the superuser over TCP to
    /// `database` (none if empty): `--no-defaults --protocol=tcp --host --port
    /// --user --password [--database]`, stdin closed, `MYSQL_*` variables
    /// removed. Add e.g. `.args(["-N", "-B", "-e", "select 1"])` and run it; for
    /// TLS add `--ssl --ssl-ca=<ca_path> --ssl-verify-server-cert`.
    pub fn mysql(&self, database: &str) -> Command {
        self.mysql_as(MARIADB_SUPERUSER.0, MARIADB_SUPERUSER.1, database)
    }

    /// [`MariaDb::mysql`] as another user.
    pub fn mysql_as(&self, user: &str, password: &str, database: &str) -> Command {
        let mut cmd = Command::new(&self.client);
        clear_mysql_env(&mut cmd);
        cmd.arg("--no-defaults")
            .arg("--protocol=tcp")
            .arg(format!("--host={HOST}"))
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={user}"))
            .arg(format!("--password={password}"));
        if !database.is_empty() {
            cmd.arg(format!("--database={database}"));
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `sql` (one or more `;`-separated statements) as the superuser in
    /// database `app` (`mariadb -N -B -e SQL`) and returns its output, trimmed:
    /// tab-separated columns, one row a line, no column names.
    pub fn sql(&self, sql: &str) -> Result<String, Error> {
        let mut cmd = self.mysql("app");
        cmd.args(["-N", "-B", "-e", sql]);
        let out = cmd
            .output()
            .ctx(|| format!("running {}", self.client.display()))?;
        if !out.status.success() {
            return Err(Error::Command {
                what: format!("mariadb -e {sql:?} (port {})", self.port),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Kills the server at once (SIGKILL) and waits for it to exit, so the port no
    /// longer accepts connections when this returns. For "the database died"
    /// tests. Idempotent; the directory stays until drop.
    pub fn kill(&mut self) {
        if let Some(server) = &mut self.server {
            server.stop(Shutdown::Kill);
        }
    }

    /// Locates a MariaDB program (`mariadb`, `mariadb-dump`, `mariadb-admin`,
    /// `mariadbd`, ...): in `$MARIADB_BIN_DIR`, then on `PATH`, then in
    /// `/usr/sbin`, `/usr/bin`, `/usr/local/{sbin,bin}`, `/usr/libexec` and
    /// `/opt/homebrew/{sbin,bin}`.
    pub fn bin(name: &str) -> Result<PathBuf, Error> {
        find(name)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            // A clean shutdown; SIGKILL if it takes more than 10 s.
            server.stop(Shutdown::Terminate);
        }
        if let Some(dir) = self.dir.take() {
            remove_dir_retrying(dir.path());
            drop(dir);
        }
        // Disarms and reaps the watchdog.
        drop(self.server.take());
    }
}

/// Where one server's files are.
#[derive(Debug)]
struct Paths {
    data: PathBuf,
    conf: PathBuf,
    socket: PathBuf,
    pid: PathBuf,
    tmp: PathBuf,
    log: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Paths {
    fn new(root: &Path, data: &Path) -> Paths {
        Paths {
            data: data.to_path_buf(),
            conf: root.join("my.cnf"),
            socket: root.join("mariadbd.sock"),
            pid: root.join("mariadbd.pid"),
            tmp: root.join("tmp"),
            log: root.join("mariadbd.log"),
            ca: root.join("ca.pem"),
            cert: root.join("server.crt"),
            key: root.join("server.key"),
        }
    }

    /// Writes the certificates (the key readable only by `user`), the `tmp`
    /// directory and `my.cnf`.
    fn write(
        &self,
        certs: &TemplateCerts,
        user: &ServerUser,
        networking: bool,
    ) -> Result<(), Error> {
        fs::write(&self.ca, certs.ca_pem.as_bytes())
            .ctx(|| format!("writing {}", self.ca.display()))?;
        fs::write(&self.cert, certs.cert_pem.as_bytes())
            .ctx(|| format!("writing {}", self.cert.display()))?;
        write_private(&self.key, certs.key_pem.as_bytes())?;
        user.chown(&self.key)?;
        fs::create_dir(&self.tmp).ctx(|| format!("creating {}", self.tmp.display()))?;
        user.chown(&self.tmp)?;
        fs::write(&self.conf, self.conf_text(networking))
            .ctx(|| format!("writing {}", self.conf.display()))
    }

    fn conf_text(&self, networking: bool) -> String {
        let mut text = String::from("# portcullis-testkit\n[mysqld]\n");
        for (name, path) in [
            ("datadir", &self.data),
            ("socket", &self.socket),
            ("pid-file", &self.pid),
            ("tmpdir", &self.tmp),
            ("ssl-ca", &self.ca),
            ("ssl-cert", &self.cert),
            ("ssl-key", &self.key),
        ] {
            text.push_str(&format!("{name} = {}\n", cnf_quote(path)));
        }
        if networking {
            text.push_str("bind-address = 127.0.0.1\n");
        } else {
            text.push_str("skip-networking\n");
        }
        text.push_str(SETTINGS);
        text
    }
}

/// Quotes a path for an option file (which unescapes `\\` and `\"` in quotes).
fn cnf_quote(path: &Path) -> String {
    let s = path.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `mariadbd --defaults-file=…` for `paths`, with a clean environment.
fn mariadbd_command(mariadbd: &Path, paths: &Paths) -> Command {
    let mut cmd = Command::new(mariadbd);
    // Must come first; no other option file is read.
    cmd.arg(format!("--defaults-file={}", paths.conf.display()));
    if let Some(root) = paths.conf.parent() {
        cmd.current_dir(root);
    }
    cmd.env("LC_ALL", "C");
    clear_mysql_env(&mut cmd);
    cmd
}

/// Removes all `MYSQL*` variables (`MYSQL_PWD`, `MYSQL_HOST`, `MYSQL_TCP_PORT`,
/// `MYSQL_UNIX_PORT`, `MYSQL_HOME`, ...) from `cmd`'s environment, so the caller's
/// environment cannot redirect or reconfigure connections.
fn clear_mysql_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MYSQL") {
            cmd.env_remove(name);
        }
    }
}

/// The start of a server's initial handshake packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Greeting {
    /// Whether the server offers TLS (`CLIENT_SSL`).
    tls: bool,
}

/// Parses the payload of an initial handshake packet (protocol version 10).
fn parse_greeting(payload: &[u8]) -> Option<Greeting> {
    let (&version, rest) = payload.split_first()?;
    if version != 10 {
        return None;
    }
    let nul = rest.iter().position(|&b| b == 0)?;
    // After the server version: connection id (4), scramble (8), filler (1),
    // capability flags (lower 2 bytes).
    let rest = rest.get(nul + 1..)?;
    let caps = u16::from_le_bytes([*rest.get(13)?, *rest.get(14)?]);
    Some(Greeting {
        tls: caps & CLIENT_SSL != 0,
    })
}

/// Reads a greeting (one packet) from `stream`.
fn read_greeting(mut stream: impl std::io::Read) -> Option<Greeting> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).ok()?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    if len == 0 || len > 4096 {
        return None;
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).ok()?;
    parse_greeting(&payload)
}

/// The greeting on the unix socket `path`, if a server sends one within a second.
fn unix_greeting(path: &Path) -> Option<Greeting> {
    let stream = UnixStream::connect(path).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    read_greeting(stream)
}

/// The greeting on 127.0.0.1:`port`, if a server sends one within a second.
fn tcp_greeting(port: u16) -> Option<Greeting> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    read_greeting(stream)
}

/// Fails unless `greeting` offers TLS (MariaDB starts without TLS, with only a
/// warning in its log, when it cannot load the certificate).
fn check_tls(greeting: Option<&Greeting>, log: &Path, log_start: u64) -> Result<(), Error> {
    if greeting.is_some_and(|g| g.tls) {
        return Ok(());
    }
    Err(Error::Environment(format!(
        "MariaDB started without TLS; server log:\n{}",
        log_tail(log, log_start)
    )))
}

// ---- the template --------------------------------------------------------------

/// The PEM texts every server gets.
#[derive(Debug)]
struct TemplateCerts {
    ca_pem: Arc<str>,
    cert_pem: String,
    key_pem: String,
}

/// A ready template.
#[derive(Debug)]
struct Template {
    /// The template's directory (holds `data/`, `ca.pem`, ...).
    dir: PathBuf,
    mariadbd: PathBuf,
    client: PathBuf,
    user: ServerUser,
    /// Where server directories are created.
    base: PathBuf,
    certs: TemplateCerts,
}

/// Returns the template, building it first if no process has yet.
fn template() -> Result<Arc<Template>, Error> {
    static CACHE: Mutex<Option<Arc<Template>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(template) = &*cache {
        return Ok(Arc::clone(template));
    }

    let mariadbd = find("mariadbd")?;
    let client = find("mariadb")?;
    let version = server_version(&mariadbd)?;
    let user = server_user(&MARIADB_ACCOUNT)?;
    let base = temp_base(&user)?;
    let name = format!(
        "portcullis-testkit-mariadb-template-{version}-{RECIPE_TAG}-u{}",
        user.uid
    );
    let dir = build_once(&base, &name, is_complete, |dir| {
        build(dir, &mariadbd, &client, &user)
    })?;
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))
    };
    let certs = TemplateCerts {
        ca_pem: read("ca.pem")?.into(),
        cert_pem: read("server.crt")?,
        key_pem: read("server.key")?,
    };
    let template = Arc::new(Template {
        dir,
        mariadbd,
        client,
        user,
        base,
        certs,
    });
    *cache = Some(Arc::clone(&template));
    Ok(template)
}

/// Whether `dir` holds a finished template (and nothing essential was since
/// removed, e.g. by a tmp cleaner).
fn is_complete(dir: &Path) -> bool {
    [
        MARKER,
        "ca.pem",
        "server.crt",
        "server.key",
        "data/ibdata1",
        "data/aria_log_control",
        "data/mysql/global_priv.frm",
        "data/mysql/plugin.frm",
    ]
    .iter()
    .all(|f| dir.join(f).is_file())
}

fn build(dir: &Path, mariadbd: &Path, client: &Path, user: &ServerUser) -> Result<(), Error> {
    fresh_dir(dir, user)?;
    let data = dir.join("data");
    let paths = Paths::new(dir, &data);
    let certs = Certs::generate()?;
    let certs = TemplateCerts {
        ca_pem: certs.ca_pem.into(),
        cert_pem: certs.cert_pem,
        key_pem: certs.key_pem,
    };
    // Only unix-socket connections while the template is set up.
    paths.write(&certs, user, false)?;

    // The OS user whose unix-socket logins MariaDB accepts as `<name>@localhost`.
    let socket_user = if user.switch {
        "root".to_owned()
    } else {
        effective_user_name().ok_or_else(|| {
            Error::Environment(
                "cannot tell this process's user name (not in /etc/passwd, no $USER), \
                 which the MariaDB template setup logs in as"
                    .to_owned(),
            )
        })?
    };
    install_db(dir, &paths, user, &socket_user)?;

    let log = dir.join("setup.log");
    let mut server = Server::spawn_command(
        mariadbd_command(mariadbd, &paths),
        &log,
        *user,
        None,
        Shutdown::Kill,
    )?;
    let mut greeting = None;
    match server.wait_until(START_TIMEOUT, || {
        greeting = unix_greeting(&paths.socket);
        greeting.is_some()
    }) {
        Ok(()) => {}
        Err(NotReady::Exited(status)) => {
            return Err(Error::Command {
                what: format!(
                    "{} --defaults-file={}",
                    mariadbd.display(),
                    paths.conf.display()
                ),
                status,
                stderr: log_tail(&log, 0),
            });
        }
        Err(NotReady::Wait(e)) => return Err(Error::io("waiting for mariadbd", e)),
        Err(NotReady::TimedOut) => {
            return Err(Error::Timeout {
                what: format!(
                    "the MariaDB template server ({}) did not greet clients within {}s; \
                     server log:\n{}",
                    data.display(),
                    START_TIMEOUT.as_secs(),
                    log_tail(&log, 0)
                ),
            });
        }
    }
    check_tls(greeting.as_ref(), &log, 0)?;
    setup_sql(dir, client, &paths.socket, &socket_user)?;

    let status = server.stop(Shutdown::Terminate);
    if !status.is_some_and(|s| s.success()) {
        return Err(Error::Environment(format!(
            "the MariaDB template server did not shut down cleanly ({status:?}); server log:\n{}",
            log_tail(&log, 0)
        )));
    }
    drop(server);
    mark_complete(dir)
}

/// `mariadb-install-db` into `paths.data`, as `user`.
fn install_db(
    dir: &Path,
    paths: &Paths,
    user: &ServerUser,
    socket_user: &str,
) -> Result<(), Error> {
    let install_db = find("mariadb-install-db")?;
    let log_path = dir.join("install-db.log");
    let log = fs::File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .ctx(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(&install_db);
    cmd.arg(format!("--defaults-file={}", paths.conf.display()))
        .arg(format!("--datadir={}", paths.data.display()))
        .arg(format!("--auth-root-socket-user={socket_user}"))
        .args(["--skip-test-db", "--skip-name-resolve"])
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    clear_mysql_env(&mut cmd);
    user.apply(&mut cmd);
    let status = cmd
        .status()
        .ctx(|| format!("running {}", install_db.display()))?;
    if !status.success() {
        return Err(Error::Command {
            what: format!(
                "{} --datadir={}",
                install_db.display(),
                paths.data.display()
            ),
            status,
            stderr: log_tail(&log_path, 0),
        });
    }
    Ok(())
}

/// A single-quoted SQL string literal.
fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The template's database and users.
fn setup_script() -> String {
    let user = |(name, password): (&str, &str), via: &str| {
        format!(
            "CREATE USER {}@'%' IDENTIFIED VIA {via} USING PASSWORD({});\n",
            sql_quote(name),
            sql_quote(password)
        )
    };
    let mut sql = String::from("CREATE DATABASE app;\n");
    sql.push_str(&user(MARIADB_SUPERUSER, "mysql_native_password"));
    sql.push_str(&format!(
        "GRANT ALL PRIVILEGES ON *.* TO {}@'%' WITH GRANT OPTION;\n",
        sql_quote(MARIADB_SUPERUSER.0)
    ));
    sql.push_str(&user(MARIADB_NATIVE_USER, "mysql_native_password"));
    sql.push_str(&format!(
        "GRANT ALL PRIVILEGES ON app.* TO {}@'%';\n",
        sql_quote(MARIADB_NATIVE_USER.0)
    ));
    sql.push_str("INSTALL SONAME 'auth_ed25519';\n");
    sql.push_str(&user(MARIADB_ED25519_USER, "ed25519"));
    sql.push_str(&format!(
        "GRANT ALL PRIVILEGES ON app.* TO {}@'%';\n",
        sql_quote(MARIADB_ED25519_USER.0)
    ));
    sql.push_str(&user(MARIADB_READONLY_USER, "mysql_native_password"));
    sql.push_str(&format!(
        "GRANT SELECT ON app.* TO {}@'%';\n",
        sql_quote(MARIADB_READONLY_USER.0)
    ));
    sql
}

/// Creates the database and the users, over the unix socket.
fn setup_sql(dir: &Path, client: &Path, socket: &Path, socket_user: &str) -> Result<(), Error> {
    let script = dir.join("setup.sql");
    fs::write(&script, setup_script()).ctx(|| format!("writing {}", script.display()))?;
    let input = fs::File::open(&script).ctx(|| format!("opening {}", script.display()))?;
    let mut cmd = Command::new(client);
    clear_mysql_env(&mut cmd);
    let out = cmd
        .arg("--no-defaults")
        .arg("--protocol=socket")
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--user={socket_user}"))
        .arg("--batch")
        .stdin(input)
        .output()
        .ctx(|| format!("running {} for the template setup", client.display()))?;
    if !out.status.success() {
        return Err(Error::Command {
            what: format!("{} < {}", client.display(), script.display()),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Locates the MariaDB program `name` (see [`MariaDb::bin`]).
fn find(name: &str) -> Result<PathBuf, Error> {
    let env_dir = std::env::var_os(MARIADB_BIN_DIR_ENV).filter(|d| !d.is_empty());
    env_dir
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| is_executable(p))
        .or_else(|| on_path(name))
        .or_else(|| {
            USUAL_DIRS
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|p| is_executable(p))
        })
        .ok_or_else(|| Error::MissingBinary {
            name: name.to_owned(),
            hint: MARIADB_INSTALL_HINT.to_owned(),
        })
}

/// The server's version (`10.11.19` of
/// `mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64`).
fn server_version(mariadbd: &Path) -> Result<String, Error> {
    let out = Command::new(mariadbd)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("running {} --version", mariadbd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Command {
            what: format!("{} --version", mariadbd.display()),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    parse_version(&text).ok_or_else(|| {
        Error::Environment(format!(
            "cannot parse the version printed by {} --version: {text:?}",
            mariadbd.display()
        ))
    })
}

/// `10.11.19` from `… Ver 10.11.19-MariaDB-0+deb12u1 for …`.
fn parse_version(text: &str) -> Option<String> {
    let rest = text.split(" Ver ").nth(1)?;
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!version.is_empty() && version.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .then_some(version)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version(
                "/usr/sbin/mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)\n"
            )
            .as_deref(),
            Some("10.11.19")
        );
        assert_eq!(
            parse_version("mariadbd  Ver 11.4.2-MariaDB for Linux").as_deref(),
            Some("11.4.2")
        );
        assert_eq!(parse_version("nonsense"), None);
        assert_eq!(parse_version("x Ver -beta"), None);
    }

    #[test]
    fn parses_greetings() {
        let mut payload = vec![10];
        payload.extend_from_slice(b"10.11.19-MariaDB\0");
        payload.extend_from_slice(&[1, 0, 0, 0]); // connection id
        payload.extend_from_slice(b"abcdefgh"); // scramble
        payload.push(0); // filler
        payload.extend_from_slice(&0xfffeu16.to_le_bytes());
        assert_eq!(parse_greeting(&payload), Some(Greeting { tls: true }));
        let n = payload.len();
        payload[n - 2..].copy_from_slice(&(0xfffe & !CLIENT_SSL).to_le_bytes());
        assert_eq!(parse_greeting(&payload), Some(Greeting { tls: false }));
        assert_eq!(parse_greeting(&payload[..n - 1]), None);
        // An error packet (e.g. "Too many connections").
        assert_eq!(parse_greeting(b"\xff\x10\x04Too many"), None);

        let mut packet = vec![u8::try_from(payload.len()).unwrap(), 0, 0, 0];
        packet.extend_from_slice(&payload);
        assert_eq!(read_greeting(&packet[..]), Some(Greeting { tls: false }));
        assert_eq!(read_greeting(&packet[..10]), None);
    }

    #[test]
    fn quotes() {
        assert_eq!(sql_quote("it's"), "'it''s'");
        assert_eq!(sql_quote(r"a\b"), r"'a\\b'");
        assert_eq!(cnf_quote(Path::new("/tmp/a b")), "\"/tmp/a b\"");
        assert_eq!(cnf_quote(Path::new(r#"/x"y\z"#)), r#""/x\"y\\z""#);
        let script = setup_script();
        assert!(
            script.contains("INSTALL SONAME 'auth_ed25519';"),
            "{script}"
        );
        assert!(
            script.contains("CREATE USER 'ed_user'@'%' IDENTIFIED VIA ed25519 USING PASSWORD("),
            "{script}"
        );
    }

    #[test]
    fn finds_programs() {
        assert!(find("mariadbd").unwrap().ends_with("mariadbd"));
        match find("surely-not-a-mariadb-program") {
            Err(Error::MissingBinary { hint, .. }) => assert!(hint.contains("mariadb-server")),
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn retries_when_the_port_is_taken() {
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut ports = vec![free_port(), taken_port];
        let db = MariaDb::start_with_ports(|| ports.pop().unwrap_or_else(free_port)).unwrap();
        assert_ne!(db.port(), taken_port);
        let log = fs::read_to_string(db.log_path()).unwrap();
        assert!(log.contains("Address already in use"), "{log}");
        assert_eq!(db.sql("select 1").unwrap(), "1");
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MariaDb>();
    }
}
