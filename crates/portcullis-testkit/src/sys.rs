//! Operating-system helpers: who we are, who the server runs as, where temp files go,
//! copying and removing directories.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::Duration;

use crate::error::{Error, IoContext};

/// The system account a database server runs as when the tests run as root (both
/// PostgreSQL and MariaDB refuse to run as root).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SystemAccount {
    /// The account's name in `/etc/passwd`.
    pub(crate) name: &'static str,
    /// The product, for messages (`PostgreSQL`).
    pub(crate) product: &'static str,
    /// The Debian package that creates the account.
    pub(crate) package: &'static str,
    /// The account's usual home directory, for the `useradd` hint.
    pub(crate) home: &'static str,
}

/// The account PostgreSQL runs as when the tests run as root.
pub(crate) const POSTGRES_ACCOUNT: SystemAccount = SystemAccount {
    name: "postgres",
    product: "PostgreSQL",
    package: "postgresql",
    home: "/var/lib/postgresql",
};

/// The account MariaDB runs as when the tests run as root.
pub(crate) const MARIADB_ACCOUNT: SystemAccount = SystemAccount {
    name: "mysql",
    product: "MariaDB",
    package: "mariadb-server",
    home: "/var/lib/mysql",
};

/// The account a server (and its setup programs) run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServerUser {
    /// Numeric user id.
    pub(crate) uid: u32,
    /// Numeric primary group id.
    pub(crate) gid: u32,
    /// Whether this is a different user from the one running the tests (we are root).
    pub(crate) switch: bool,
    /// The account's name (when `switch`), for messages.
    pub(crate) name: &'static str,
}

impl ServerUser {
    /// Makes `cmd` run as this user (a no-op unless we are root).
    pub(crate) fn apply(&self, cmd: &mut Command) {
        if self.switch {
            // std drops supplementary groups (setgroups(0)) when it changes uid as root.
            cmd.uid(self.uid).gid(self.gid);
        }
    }

    /// Gives `path` to this user (a no-op unless we are root).
    pub(crate) fn chown(&self, path: &Path) -> Result<(), Error> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .ctx(|| format!("chown {} to the `{}` user", path.display(), self.name))?;
        }
        Ok(())
    }
}

/// The effective user id of this process.
pub(crate) fn effective_uid() -> u32 {
    static EUID: OnceLock<u32> = OnceLock::new();
    *EUID.get_or_init(|| {
        proc_status_euid()
            .or_else(id_u)
            // /proc/self is owned by the process's effective uid on Linux.
            .or_else(|| fs::metadata("/proc/self").ok().map(|m| m.uid()))
            .unwrap_or(u32::MAX)
    })
}

fn proc_status_euid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn id_u() -> Option<u32> {
    let out = Command::new("id").arg("-u").output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Who a server's processes run as: `account` (e.g. the `postgres` system user) when
/// we are root (the servers refuse to run as root), the current user otherwise.
pub(crate) fn server_user(account: &SystemAccount) -> Result<ServerUser, Error> {
    let euid = effective_uid();
    if euid != 0 {
        return Ok(ServerUser {
            uid: euid,
            gid: 0,
            switch: false,
            name: "",
        });
    }
    let passwd = fs::read_to_string("/etc/passwd").ctx(|| "reading /etc/passwd")?;
    lookup_passwd(&passwd, account.name).ok_or_else(|| {
        let SystemAccount {
            name,
            product,
            package,
            home,
        } = account;
        Error::Environment(format!(
            "running as root, and {product} refuses to run as root, but there is no \
             `{name}` system user in /etc/passwd to run it as; install the \
             server package (`apt-get install {package}` creates the user) or create one \
             (`useradd --system --user-group --home-dir {home} {name}`), \
             or run the tests as an ordinary user"
        ))
    })
}

/// Finds `name` in /etc/passwd text.
fn lookup_passwd(passwd: &str, name: &'static str) -> Option<ServerUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.trim().parse().ok()?;
        let gid = fields.next()?.trim().parse().ok()?;
        Some(ServerUser {
            uid,
            gid,
            switch: true,
            name,
        })
    })
}

/// The login name of this process's effective user: from `/etc/passwd`, else
/// `$USER` / `$LOGNAME`.
pub(crate) fn effective_user_name() -> Option<String> {
    let euid = effective_uid();
    fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| name_of_uid(&passwd, euid))
        .or_else(|| {
            ["USER", "LOGNAME"]
                .iter()
                .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        })
}

/// Finds the name of `uid` in /etc/passwd text.
fn name_of_uid(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.trim().parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// Copies a directory tree preserving modes (and owners, when root).
pub(crate) fn copy_dir(from: &Path, to: &Path) -> Result<(), Error> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .ctx(|| "running cp")?;
    if !out.status.success() {
        return Err(Error::Command {
            what: format!("cp -a {} {}", from.display(), to.display()),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Removes a directory tree, retrying a few times (a server that just exited may
/// still be deleting files in it). Errors are ignored.
pub(crate) fn remove_dir_retrying(path: &Path) {
    for _ in 0..5 {
        match fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                sleep(Duration::from_millis(50));
            }
            _ => break,
        }
    }
}

/// Environment variable naming the directory for the template and the clusters.
pub const DIR_ENV: &str = "PORTCULLIS_TESTKIT_DIR";

/// Shared memory, a tmpfs on Linux: creating files there is much faster than on
/// some disks, and the clusters run with `fsync = off` anyway.
const SHM: &str = "/dev/shm";
/// How much room [`SHM`] must have to be used (PostgreSQL clusters take ~40 MB
/// each, MariaDB servers ~40 MB).
const SHM_MIN_AVAILABLE_KB: u64 = 1 << 20;

/// The directory the template and the throwaway clusters live in:
///
/// 1. `$PORTCULLIS_TESTKIT_DIR`, if set;
/// 2. else, unless `TMPDIR` is set, `/dev/shm` if it is a tmpfs with at least
///    1 GiB available (Docker's default 64 MB is not enough);
/// 3. else [`std::env::temp_dir`], or `/tmp` if the server user (when it is
///    another user) cannot reach that directory (e.g. `TMPDIR=/root/tmp`).
pub(crate) fn temp_base(user: &ServerUser) -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        fs::create_dir_all(&dir).ctx(|| format!("creating {DIR_ENV}={}", dir.display()))?;
        return Ok(dir);
    }
    if std::env::var_os("TMPDIR").is_none() && shm_is_roomy() && reachable_by(Path::new(SHM), user)
    {
        return Ok(PathBuf::from(SHM));
    }
    let base = std::env::temp_dir();
    if !user.switch || reachable_by(&base, user) {
        Ok(base)
    } else {
        Ok(PathBuf::from("/tmp"))
    }
}

/// Whether [`SHM`] is a writable tmpfs with enough room.
fn shm_is_roomy() -> bool {
    let is_tmpfs = fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(SHM) && fields.next() == Some("tmpfs")
        })
    });
    if !is_tmpfs {
        return false;
    }
    let Ok(out) = Command::new("df").args(["-Pk", SHM]).output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let available_kb = text
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|kb| kb.parse::<u64>().ok());
    out.status.success() && available_kb.is_some_and(|kb| kb >= SHM_MIN_AVAILABLE_KB)
}

/// Whether `user` can traverse every directory from `/` down to `dir`.
fn reachable_by(dir: &Path, user: &ServerUser) -> bool {
    if !user.switch {
        return true;
    }
    dir.ancestors().all(|d| match fs::metadata(d) {
        Ok(m) => m.mode() & 0o001 != 0 || (m.uid() == user.uid && m.mode() & 0o100 != 0),
        Err(_) => false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            lookup_passwd(passwd, "postgres"),
            Some(ServerUser {
                uid: 101,
                gid: 104,
                switch: true,
                name: "postgres",
            })
        );
        assert_eq!(lookup_passwd(passwd, "postgre"), None);
        assert_eq!(lookup_passwd("broken", "broken"), None);
        assert_eq!(name_of_uid(passwd, 101).as_deref(), Some("postgres"));
        assert_eq!(name_of_uid(passwd, 0).as_deref(), Some("root"));
        assert_eq!(name_of_uid(passwd, 7), None);
    }

    #[test]
    fn euid_is_known() {
        assert_ne!(effective_uid(), u32::MAX);
    }
}
