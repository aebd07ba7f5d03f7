//! The template data directory: initdb'ed, configured and stopped once per machine,
//! then copied by every [`crate::PgCluster::start`]. Also the once-per-machine
//! machinery (lock file, `complete` marker) that [`crate::MariaDb`]'s template shares.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use crate::bin::{find, server_bin_dir, server_major};
use crate::certs::{Certs, write_private};
use crate::error::{Error, IoContext};
use crate::server::{Server, Shutdown, Spec, StartFailure, log_tail};
use crate::sys::{POSTGRES_ACCOUNT, ServerUser, server_user, temp_base};
use crate::{MD5_USER, PLAIN_USER, SCRAM_USER, SUPERUSER};

/// Bump when the recipe below changes, so stale templates are not reused.
const RECIPE_TAG: &str = "v1";
/// Written last; its presence means the template is complete.
pub(crate) const MARKER: &str = "complete";
/// The port the template server uses while being set up (unix socket only).
const SETUP_PORT: u16 = 5432;

/// Settings appended to the template's `postgresql.conf`. The port and the socket
/// directory are given on each server's command line.
const CONF: &str = "
# --- portcullis-testkit ---
listen_addresses = '127.0.0.1'
max_connections = 100
shared_buffers = 32MB
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_destination = 'stderr'
";

/// The template's `pg_hba.conf`: per-user methods first, then SCRAM for everyone.
const HBA: &str = "\
# portcullis-testkit
local all all trust
host all md5user 127.0.0.1/32 md5
host all md5user ::1/128 md5
host all plainuser 127.0.0.1/32 password
host all plainuser ::1/128 password
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
";

/// A ready template.
#[derive(Debug)]
pub(crate) struct Template {
    /// The template's directory (holds `data/`, `ca.pem`, ...).
    pub(crate) dir: PathBuf,
    /// The `postgres` program.
    pub(crate) postgres: PathBuf,
    /// Who the servers run as.
    pub(crate) user: ServerUser,
    /// Where cluster directories are created.
    pub(crate) base: PathBuf,
    /// The CA that signed the (shared) server certificate.
    pub(crate) ca_pem: Arc<str>,
}

impl Template {
    /// The template data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// Returns the template, building it first if no process has yet.
pub(crate) fn template() -> Result<Arc<Template>, Error> {
    static CACHE: Mutex<Option<Arc<Template>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(template) = &*cache {
        return Ok(Arc::clone(template));
    }

    let bin_dir = server_bin_dir()?;
    let major = server_major(&bin_dir)?;
    let user = server_user(&POSTGRES_ACCOUNT)?;
    let base = temp_base(&user)?;
    let name = format!(
        "portcullis-testkit-template-{major}-{RECIPE_TAG}-u{}",
        user.uid
    );
    let dir = build_once(&base, &name, is_complete, |dir| {
        build(dir, &bin_dir, major, &user)
    })?;
    let ca_path = dir.join("ca.pem");
    let ca_pem = fs::read_to_string(&ca_path).ctx(|| format!("reading {}", ca_path.display()))?;
    let template = Arc::new(Template {
        dir,
        postgres: bin_dir.join("postgres"),
        user,
        base,
        ca_pem: ca_pem.into(),
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
        "data/PG_VERSION",
        "data/global/pg_control",
        "data/postgresql.conf",
        "data/server.key",
    ]
    .iter()
    .all(|f| dir.join(f).is_file())
}

/// Returns `base/name`, first building it with `build` unless `is_complete` says it
/// is ready. Builds happen under the lock file `base/name.lock`, so concurrent test
/// processes build a template once; `build` must finish with [`mark_complete`].
pub(crate) fn build_once(
    base: &Path,
    name: &str,
    is_complete: impl Fn(&Path) -> bool,
    build: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<PathBuf, Error> {
    let dir = base.join(name);
    if !is_complete(&dir) {
        let lock_path = base.join(format!("{name}.lock"));
        let lock = open_lock(&lock_path)?;
        lock.lock()
            .ctx(|| format!("locking {}", lock_path.display()))?;
        if !is_complete(&dir) {
            build(&dir)?;
        }
        drop(lock);
    }
    Ok(dir)
}

/// Creates `dir` afresh (removing a half-made template from a crashed run), mode
/// 0755, owned by `user`.
pub(crate) fn fresh_dir(dir: &Path, user: &ServerUser) -> Result<(), Error> {
    if fs::symlink_metadata(dir).is_ok() {
        fs::remove_dir_all(dir).ctx(|| format!("removing stale {}", dir.display()))?;
    }
    fs::create_dir(dir).ctx(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .ctx(|| format!("chmod {}", dir.display()))?;
    user.chown(dir)
}

/// Writes (and syncs) the [`MARKER`] that says the template in `dir` is complete.
pub(crate) fn mark_complete(dir: &Path) -> Result<(), Error> {
    let marker = dir.join(MARKER);
    let file = File::create(&marker).ctx(|| format!("creating {}", marker.display()))?;
    file.sync_all()
        .ctx(|| format!("syncing {}", marker.display()))
}

fn open_lock(path: &Path) -> Result<File, Error> {
    let context = || format!("opening lock file {}", path.display());
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(file) => Ok(file),
        // Made by another user: a read-only descriptor can be locked too.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => File::open(path).ctx(context),
        Err(e) => Err(Error::io(context(), e)),
    }
}

fn build(dir: &Path, bin_dir: &Path, major: u32, user: &ServerUser) -> Result<(), Error> {
    fresh_dir(dir, user)?;

    let data = dir.join("data");
    initdb(dir, &data, bin_dir, major, user)?;

    // TLS: the server's files live in the data directory, so every copy has them.
    let certs = Certs::generate()?;
    let crt = data.join("server.crt");
    let key = data.join("server.key");
    fs::write(&crt, &certs.cert_pem).ctx(|| format!("writing {}", crt.display()))?;
    write_private(&key, certs.key_pem.as_bytes())?;
    user.chown(&crt)?;
    user.chown(&key)?;
    let ca = dir.join("ca.pem");
    fs::write(&ca, &certs.ca_pem).ctx(|| format!("writing {}", ca.display()))?;

    let conf = data.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf).ctx(|| format!("reading {}", conf.display()))?;
    text.push_str(CONF);
    fs::write(&conf, text).ctx(|| format!("writing {}", conf.display()))?;
    let hba = data.join("pg_hba.conf");
    fs::write(&hba, HBA).ctx(|| format!("writing {}", hba.display()))?;

    let sock = dir.join("sock");
    fs::create_dir(&sock).ctx(|| format!("creating {}", sock.display()))?;
    user.chown(&sock)?;
    let log = dir.join("setup.log");
    let postgres = bin_dir.join("postgres");
    let mut server = Server::start(&Spec {
        postgres: &postgres,
        data_dir: &data,
        port: SETUP_PORT,
        socket_dir: &sock,
        settings: &["listen_addresses="],
        log: &log,
        cwd: dir,
        user: *user,
        cleanup_dir: None,
        tcp: false,
    })
    .map_err(|(StartFailure::PortInUse(e) | StartFailure::Other(e))| e)?;

    setup_sql(dir, &sock)?;

    let status = server.stop(Shutdown::Fast);
    if !status.is_some_and(|s| s.success()) {
        return Err(Error::Environment(format!(
            "the template server did not shut down cleanly ({status:?}); server log:\n{}",
            log_tail(&log, 0)
        )));
    }
    drop(server);
    let _ = fs::remove_dir_all(&sock);

    mark_complete(dir)
}

fn initdb(
    dir: &Path,
    data: &Path,
    bin_dir: &Path,
    major: u32,
    user: &ServerUser,
) -> Result<(), Error> {
    let initdb = bin_dir.join("initdb");
    let log_path = dir.join("initdb.log");
    let log = File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .ctx(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(&initdb);
    cmd.arg("-D")
        .arg(data)
        .args([
            "-U",
            SUPERUSER.0,
            "-E",
            "UTF8",
            "--no-locale",
            "-A",
            "trust",
        ])
        // No fsync, and 1 MB WAL segments: a smaller directory is faster to copy.
        .args(["--no-sync", "--wal-segsize=1"]);
    if major >= 14 {
        cmd.arg("--no-instructions");
    }
    cmd.current_dir(dir)
        .env("LC_ALL", "C")
        .env_remove("PGDATA")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    user.apply(&mut cmd);
    let status = cmd
        .status()
        .ctx(|| format!("running {}", initdb.display()))?;
    if !status.success() {
        return Err(Error::Command {
            what: format!("{} -D {}", initdb.display(), data.display()),
            status,
            stderr: log_tail(&log_path, 0),
        });
    }
    Ok(())
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Creates the roles and databases, over the unix socket as the superuser.
fn setup_sql(dir: &Path, sock: &Path) -> Result<(), Error> {
    let sql = format!(
        "ALTER ROLE {su} PASSWORD {su_pw};\n\
         SET password_encryption = 'md5';\n\
         CREATE ROLE {md5} LOGIN PASSWORD {md5_pw};\n\
         SET password_encryption = 'scram-sha-256';\n\
         CREATE ROLE {plain} LOGIN PASSWORD {plain_pw};\n\
         CREATE ROLE {scram} LOGIN PASSWORD {scram_pw};\n\
         CREATE DATABASE app;\n\
         \\connect app\n\
         GRANT ALL ON SCHEMA public TO PUBLIC;\n",
        su = SUPERUSER.0,
        su_pw = quote(SUPERUSER.1),
        md5 = MD5_USER.0,
        md5_pw = quote(MD5_USER.1),
        plain = PLAIN_USER.0,
        plain_pw = quote(PLAIN_USER.1),
        scram = SCRAM_USER.0,
        scram_pw = quote(SCRAM_USER.1),
    );
    let script = dir.join("setup.sql");
    fs::write(&script, sql).ctx(|| format!("writing {}", script.display()))?;
    let psql = find("psql")?;
    let mut cmd = Command::new(&psql);
    crate::cluster::clear_pg_env(&mut cmd);
    let out = cmd
        .arg("-h")
        .arg(sock)
        .args([
            "-p",
            &SETUP_PORT.to_string(),
            "-U",
            SUPERUSER.0,
            "-d",
            "postgres",
        ])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("running {}", psql.display()))?;
    if !out.status.success() {
        return Err(Error::Command {
            what: format!("{} -f {}", psql.display(), script.display()),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}
