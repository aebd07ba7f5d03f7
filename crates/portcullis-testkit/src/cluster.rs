//! Throwaway PostgreSQL clusters.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tempfile::TempDir;

use crate::error::{Error, IoContext};
use crate::server::{Server, Shutdown, Spec, StartFailure, log_path};
use crate::sys::{copy_dir, remove_dir_retrying};
use crate::template::template;
use crate::{SUPERUSER, free_port};

/// Set this environment variable (to anything non-empty) to keep cluster
/// directories after the test, for post-mortems.
pub const KEEP_ENV: &str = "PORTCULLIS_TESTKIT_KEEP";

/// Whether [`KEEP_ENV`] asks to keep server directories.
pub(crate) fn keep_dirs() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty())
}

/// How many ports `start` tries when the chosen one is taken before the server binds it.
pub(crate) const PORT_ATTEMPTS: u32 = 5;

/// The address clusters listen on.
const HOST: &str = "127.0.0.1";

/// A running throwaway PostgreSQL server, stopped and deleted on drop.
///
/// Every cluster is a copy of one template made by `initdb` once per machine (see
/// the crate docs), listening on `127.0.0.1` on its own port and on a unix socket
/// in its own directory, with TLS on (certificate signed by [`PgCluster::ca_pem`]),
/// and with these roles (all `LOGIN`):
///
/// | role | constant | password auth over TCP |
/// |------|----------|------------------------|
/// | `portcullis` (superuser) | [`SUPERUSER`] | SCRAM-SHA-256 |
/// | `md5user` | [`crate::MD5_USER`] | MD5 |
/// | `plainuser` | [`crate::PLAIN_USER`] | cleartext `password` |
/// | `scramuser` | [`crate::SCRAM_USER`] | SCRAM-SHA-256 |
///
/// Unix-socket connections are `trust`ed. Databases: `postgres` and `app` (whose
/// `public` schema everyone may create in).
#[derive(Debug)]
pub struct PgCluster {
    server: Option<Server>,
    dir: Option<TempDir>,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    ca_path: PathBuf,
    port: u16,
    ca_pem: Arc<str>,
}

impl PgCluster {
    /// Starts a fresh cluster and waits (at most 30 s) until it accepts TCP
    /// connections. The first call on a machine also builds the template (a few
    /// seconds); later calls copy it (a few hundred milliseconds).
    pub fn start() -> Result<PgCluster, Error> {
        PgCluster::start_with_ports(free_port)
    }

    /// [`PgCluster::start`], trying the ports `next_port` returns.
    fn start_with_ports(mut next_port: impl FnMut() -> u16) -> Result<PgCluster, Error> {
        let template = template()?;
        let tmp = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir_in(&template.base)
            .ctx(|| format!("creating a directory in {}", template.base.display()))?;
        let root = tmp.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod {}", root.display()))?;
        template.user.chown(&root)?;

        let data_dir = root.join("data");
        copy_dir(&template.data_dir(), &data_dir)?;
        let socket_dir = root.join("sock");
        fs::create_dir(&socket_dir).ctx(|| format!("creating {}", socket_dir.display()))?;
        template.user.chown(&socket_dir)?;
        let ca_path = root.join("ca.pem");
        fs::write(&ca_path, template.ca_pem.as_bytes())
            .ctx(|| format!("writing {}", ca_path.display()))?;

        let keep = keep_dirs();
        let log = log_path(&root);
        let mut attempt = 0;
        let (server, port) = loop {
            attempt += 1;
            let port = next_port();
            let spec = Spec {
                postgres: &template.postgres,
                data_dir: &data_dir,
                port,
                socket_dir: &socket_dir,
                settings: &[],
                log: &log,
                cwd: &root,
                user: template.user,
                cleanup_dir: (!keep).then_some(root.as_path()),
                tcp: true,
            };
            match Server::start(&spec) {
                Ok(server) => break (server, port),
                Err(StartFailure::PortInUse(_)) if attempt < PORT_ATTEMPTS => continue,
                Err(StartFailure::PortInUse(e) | StartFailure::Other(e)) => return Err(e),
            }
        };
        let dir = if keep {
            let _ = tmp.keep();
            None
        } else {
            Some(tmp)
        };
        Ok(PgCluster {
            server: Some(server),
            dir,
            root,
            data_dir,
            socket_dir,
            ca_path,
            port,
            ca_pem: Arc::clone(&template.ca_pem),
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

    /// The superuser's name, `"portcullis"`.
    pub fn user(&self) -> &str {
        SUPERUSER.0
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        SUPERUSER.1
    }

    /// The directory holding the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The cluster's own directory (data, socket, log, `ca.pem`); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The server log (stdout and stderr of the postmaster).
    pub fn log_path(&self) -> PathBuf {
        log_path(&self.root)
    }

    /// The PEM of the CA that signed the server's TLS certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A file holding [`PgCluster::ca_pem`].
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server
            .as_ref()
            .filter(|s| !s.exited())
            .map(Server::pid)
    }

    /// `postgres://portcullis:PASSWORD@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        self.url_as(SUPERUSER.0, SUPERUSER.1, database)
    }

    /// A `postgres://` URL for another role, e.g. `cluster.url_as(MD5_USER.0, MD5_USER.1, "app")`.
    pub fn url_as(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{}:{}@{HOST}:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(database)
        )
    }

    /// A libpq / tokio-postgres key-value connection string:
    /// `host=127.0.0.1 port=PORT user=portcullis password=PASSWORD dbname=DATABASE`.
    pub fn config_string(&self, database: &str) -> String {
        self.config_string_as(SUPERUSER.0, SUPERUSER.1, database)
    }

    /// [`PgCluster::config_string`] for another role.
    pub fn config_string_as(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "host={HOST} port={} user={} password={} dbname={}",
            self.port,
            conninfo_value(user),
            conninfo_value(password),
            conninfo_value(database)
        )
    }

    /// A `psql` command connected (as the superuser, over TCP) to `database`, via
    /// `PGHOST`/`PGPORT`/`PGUSER`/`PGPASSWORD`/`PGDATABASE` (other `PG*` variables
    /// are removed; `PGSSLROOTCERT` is [`PgCluster::ca_path`], so adding
    /// `PGSSLMODE=verify-full` works), with `-X -v ON_ERROR_STOP=1 -q`. Add e.g.
    /// `.args(["-At", "-c", "select 1"])` and run it.
    pub fn psql(&self, database: &str) -> Command {
        let program = PgCluster::bin("psql").unwrap_or_else(|_| PathBuf::from("psql"));
        let mut cmd = Command::new(program);
        clear_pg_env(&mut cmd);
        cmd.env("PGHOST", HOST)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER.0)
            .env("PGPASSWORD", SUPERUSER.1)
            .env("PGDATABASE", database)
            .env("PGSSLROOTCERT", &self.ca_path)
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-q"])
            .stdin(Stdio::null());
        cmd
    }

    /// Stops the server at once (SIGQUIT, i.e. `pg_ctl stop -m immediate`; SIGKILL
    /// if it lingers) and waits for the postmaster to exit, so the port no longer
    /// accepts connections when this returns. For "the database died" tests.
    /// Idempotent; the directory stays until drop.
    pub fn kill(&mut self) {
        if let Some(server) = &mut self.server {
            server.stop(Shutdown::Immediate);
        }
    }

    /// Locates a PostgreSQL program (`psql`, `pgbench`, `pg_dump`, ...).
    ///
    /// Programs are looked for in the server's directory, which is `$PG_BIN_DIR`
    /// if set, else `pg_config --bindir` if that has `postgres` and `initdb`, else
    /// the newest `/usr/lib/postgresql/*/bin` (Debian/Ubuntu), else the `PATH`
    /// directory holding `postgres` and `initdb`; then on `PATH`.
    pub fn bin(name: &str) -> Result<PathBuf, Error> {
        crate::bin::find(name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            server.stop(Shutdown::Immediate);
        }
        if let Some(dir) = self.dir.take() {
            remove_dir_retrying(dir.path());
            drop(dir);
        }
        // Disarms and reaps the watchdog.
        drop(self.server.take());
    }
}

/// Removes all `PG*` variables from `cmd`'s environment, so the caller's
/// environment cannot redirect or reconfigure connections.
pub(crate) fn clear_pg_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            cmd.env_remove(name);
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Quotes a conninfo value if needed (empty, or containing space, `'` or `\`).
fn conninfo_value(s: &str) -> String {
    if !s.is_empty() && !s.contains([' ', '\'', '\\']) {
        return s.to_owned();
    }
    let escaped = s.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn retries_when_the_port_is_taken() {
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut ports = vec![free_port(), taken_port];
        let cluster =
            PgCluster::start_with_ports(|| ports.pop().unwrap_or_else(free_port)).unwrap();
        assert_ne!(cluster.port(), taken_port);
        let log = fs::read_to_string(cluster.log_path()).unwrap();
        assert!(log.contains("could not bind"), "{log}");
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PgCluster>();
        check::<Error>();
    }

    #[test]
    fn encodes() {
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
        assert_eq!(conninfo_value("app"), "app");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value("it's a\\b"), r"'it\'s a\\b'");
    }
}
