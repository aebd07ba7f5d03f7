//! Locating PostgreSQL programs.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::error::{Error, INSTALL_HINT, IoContext};

/// Environment variable naming the directory with the PostgreSQL programs.
pub const PG_BIN_DIR_ENV: &str = "PG_BIN_DIR";

/// Debian/Ubuntu keep each major version's programs in `/usr/lib/postgresql/<major>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The directory with `postgres` and `initdb`.
///
/// Looked up in this order: `$PG_BIN_DIR`; `pg_config --bindir` (if it has the
/// server programs); the newest `/usr/lib/postgresql/*/bin`; a `PATH` directory
/// holding both `postgres` and `initdb` (symlinks resolved, so
/// `/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb` finds the real dir).
pub(crate) fn server_bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(PG_BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        for name in ["postgres", "initdb"] {
            if !is_executable(&dir.join(name)) {
                return Err(missing(name, Some(&dir)));
            }
        }
        return Ok(dir);
    }
    static DETECTED: OnceLock<Option<PathBuf>> = OnceLock::new();
    DETECTED
        .get_or_init(detect_server_dir)
        .clone()
        .ok_or_else(|| missing("postgres", None))
}

/// Locates the PostgreSQL program `name` (`psql`, `pgbench`, `pg_dump`, ...): first
/// in the server's directory (see [`crate::PgCluster::bin`]), then on `PATH`.
pub(crate) fn find(name: &str) -> Result<PathBuf, Error> {
    let pg_bin_dir = std::env::var_os(PG_BIN_DIR_ENV).filter(|d| !d.is_empty());
    if let Ok(dir) = server_bin_dir() {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    } else if let Some(dir) = &pg_bin_dir {
        // PG_BIN_DIR may point at a client-only directory.
        let candidate = Path::new(dir).join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    on_path(name).ok_or_else(|| missing(name, pg_bin_dir.as_deref().map(Path::new)))
}

fn missing(name: &str, dir: Option<&Path>) -> Error {
    let hint = match dir {
        Some(dir) => format!(
            "{PG_BIN_DIR_ENV}={} does not contain it; {INSTALL_HINT}",
            dir.display()
        ),
        None => INSTALL_HINT.to_owned(),
    };
    Error::MissingBinary {
        name: name.to_owned(),
        hint,
    }
}

fn detect_server_dir() -> Option<PathBuf> {
    from_pg_config()
        .or_else(newest_debian_dir)
        .or_else(from_path)
}

fn has_server(dir: &Path) -> bool {
    is_executable(&dir.join("postgres")) && is_executable(&dir.join("initdb"))
}

fn from_pg_config() -> Option<PathBuf> {
    let pg_config = on_path("pg_config")?;
    let out = Command::new(pg_config)
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    has_server(&dir).then_some(dir)
}

fn newest_debian_dir() -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(DEBIAN_ROOT)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|part| part.parse().ok()).collect()
}

fn from_path() -> Option<PathBuf> {
    path_dirs().find_map(|dir| {
        if !has_server(&dir) {
            return None;
        }
        let real = fs::canonicalize(dir.join("postgres")).ok()?;
        match real.parent() {
            Some(parent) if has_server(parent) => Some(parent.to_path_buf()),
            _ => Some(dir),
        }
    })
}

fn path_dirs() -> impl Iterator<Item = PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .collect::<Vec<_>>()
        .into_iter()
}

pub(crate) fn on_path(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = name.as_ref();
    path_dirs()
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The major version of the server programs in `dir` (`postgres --version`).
pub(crate) fn server_major(dir: &Path) -> Result<u32, Error> {
    let postgres = dir.join("postgres");
    let out = Command::new(&postgres)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("running {} --version", postgres.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Command {
            what: format!("{} --version", postgres.display()),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    parse_major(&text).ok_or_else(|| {
        Error::Environment(format!(
            "cannot parse the version printed by {} --version: {text:?}",
            postgres.display()
        ))
    })
}

/// Parses `postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` into `15`.
fn parse_major(text: &str) -> Option<u32> {
    let rest = text.split(')').nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_major() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17devel\n"), Some(17));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("foo"), None);
        assert!(parse_version("9.6") < parse_version("15"));
    }

    #[test]
    fn finds_programs() {
        let dir = server_bin_dir().unwrap();
        assert!(has_server(&dir), "{}", dir.display());
        assert!(find("psql").unwrap().ends_with("psql"));
        match find("surely-not-a-postgres-program") {
            Err(Error::MissingBinary { hint, .. }) => {
                assert!(hint.contains("apt-get install postgresql"))
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
}
