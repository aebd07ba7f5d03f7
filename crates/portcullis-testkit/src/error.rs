//! The kit's error type.

use std::process::ExitStatus;

/// The hint given when PostgreSQL binaries cannot be found.
pub(crate) const INSTALL_HINT: &str = "install the PostgreSQL server and client binaries \
     (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
     macOS: `brew install postgresql`), or set PG_BIN_DIR to the directory holding \
     `initdb`, `postgres` and `psql`";

/// The hint given when MariaDB binaries cannot be found.
pub(crate) const MARIADB_INSTALL_HINT: &str = "install the MariaDB server and client \
     (Debian/Ubuntu: `apt-get install mariadb-server mariadb-client`; Fedora: \
     `dnf install mariadb-server`; macOS: `brew install mariadb`), or set MARIADB_BIN_DIR \
     to the directory holding `mariadbd`, `mariadb-install-db` and `mariadb`";

/// Everything that can go wrong while preparing test fixtures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A PostgreSQL or MariaDB program could not be found.
    #[error("program `{name}` not found: {hint}")]
    MissingBinary {
        /// The program that was looked for (`initdb`, `psql`, `mariadbd`, ...).
        name: String,
        /// How to install it.
        hint: String,
    },
    /// A file-system or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the kit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external command (initdb, postgres, psql, mariadb, ...) failed.
    #[error("{what} failed ({status}):\n{stderr}")]
    Command {
        /// The command, in words.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// Its diagnostic output (or the tail of the server log).
        stderr: String,
    },
    /// Something did not happen in time.
    #[error("timed out: {what}")]
    Timeout {
        /// What was being waited for (with the server log tail, if any).
        what: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The OpenID Connect provider answered something unexpected (or an error).
    #[error("OIDC provider: {0}")]
    Oidc(String),
    /// A TLS configuration (certificate, key) was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// The machine is not set up the way the kit needs (e.g. running as root
    /// without a `postgres` or `mysql` system user).
    #[error("unsupported environment: {0}")]
    Environment(String),
}

impl Error {
    /// Wraps an I/O error with what the kit was doing.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to I/O results.
pub(crate) trait IoContext<T> {
    /// Converts an I/O error into [`Error::Io`] with a lazily built context.
    fn ctx<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, Error>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, Error> {
        self.map_err(|source| Error::io(context(), source))
    }
}
