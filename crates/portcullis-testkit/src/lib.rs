//! Throwaway PostgreSQL and MariaDB servers, an OpenID Connect provider, an HTTP
//! upstream, TLS certificates and free ports for Portcullis tests.
//!
//! ```
//! use portcullis_testkit::{Certs, free_port};
//!
//! let port = free_port();
//! assert_ne!(port, 0);
//!
//! // A CA and a server certificate for localhost / 127.0.0.1 / ::1, signed by it.
//! let certs = Certs::generate()?;
//! assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(certs.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
//! # Ok::<(), portcullis_testkit::Error>(())
//! ```
//!
//! Starting a server (needs PostgreSQL installed):
//!
//! ```no_run
//! use portcullis_testkit::{MD5_USER, PgCluster};
//!
//! let cluster = PgCluster::start()?;
//! let out = cluster.psql("app").args(["-At", "-c", "select 1"]).output()?;
//! assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
//! let _superuser = cluster.url("app"); // postgres://portcullis:…@127.0.0.1:PORT/app
//! let _md5 = cluster.config_string_as(MD5_USER.0, MD5_USER.1, "app");
//! // Dropping the cluster stops the server and deletes its directory.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Starting a MariaDB server (needs `mariadbd`, `mariadb-install-db` and the
//! `mariadb` client, e.g. Debian's `mariadb-server`):
//!
//! ```no_run
//! use portcullis_testkit::{MARIADB_ED25519_USER, MariaDb};
//!
//! let db = MariaDb::start()?;
//! assert_eq!(db.sql("select 1")?, "1");
//! let out = db.mysql("app").args(["-N", "-B", "-e", "select database()"]).output()?;
//! assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");
//! let _superuser = db.url("app"); // mysql://portcullis:…@127.0.0.1:PORT/app
//! let (user, password) = MARIADB_ED25519_USER; // authenticated with ed25519
//! let _ed = db.mysql_as(user, password, "app");
//! // Dropping the server stops it and deletes its directory.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! An OpenID Connect provider (needs Node.js and `npm install --prefix
//! crates/portcullis-testkit/oidc`, which `scripts/test` runs):
//!
//! ```no_run
//! use portcullis_testkit::OidcProvider;
//!
//! let idp = OidcProvider::start()?;
//! let _issuer = idp.issuer(); // http://127.0.0.1:PORT, discovery at /.well-known/openid-configuration
//! let _service_jwt = idp.client_credentials()?; // aud "portcullis", groups ["reporting"]
//! let _alice_id_token = idp.device_login("alice")?; // or approve_device(user_code, "alice")
//! let _new_kid = idp.rotate(false)?;
//! # Ok::<(), portcullis_testkit::Error>(())
//! ```
//!
//! An HTTP/1.1 upstream in the test's own tokio runtime (HTTPS with
//! [`HttpUpstream::start_tls`]), with planted personal data and a record of every
//! request it received:
//!
//! ```
//! use portcullis_testkit::{HttpUpstream, PLANTED_EMAIL, stream_digest};
//!
//! # async fn demo() -> Result<(), portcullis_testkit::Error> {
//! let upstream = HttpUpstream::start().await?;
//! let _base = upstream.url(); // http://127.0.0.1:PORT; GET /v1/users, /v1/stream?n=N, ...
//! // ... send requests through the gateway ...
//! for request in upstream.requests() {
//!     let _credential = request.header("authorization");
//!     let _body = (request.body_digest.len, &request.body_digest.sha256);
//! }
//! let _expected = stream_digest(1000); // what GET /v1/stream?n=1000 serves
//! assert_eq!(PLANTED_EMAIL, "jane.doe@example.com");
//! upstream.shutdown().await; // or drop it
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! # How clusters are made
//!
//! `initdb` takes seconds, so it runs once per machine: the first
//! [`PgCluster::start`] builds a *template* in
//! `<base>/portcullis-testkit-template-<major>-<recipe tag>-u<server uid>/`
//! (roles, databases, `pg_hba.conf`, TLS certificate, settings), stops it cleanly and
//! writes a `complete` marker. `<base>` is `$PORTCULLIS_TESTKIT_DIR` if set; else,
//! unless `TMPDIR` is set, `/dev/shm` when it is a tmpfs with at least 1 GiB free
//! (copying ~1300 files is far faster there on some disks); else the system temp
//! directory. A lock file next to it keeps concurrent test
//! processes from building it twice; an incomplete template (a crashed build) is
//! rebuilt. Each cluster is a copy of the template's data directory in its own
//! temporary directory, started on a free port as a child process.
//!
//! PostgreSQL refuses to run as root. When the tests run as root, `initdb` and
//! `postgres` run as the `postgres` system user (from `/etc/passwd`); otherwise as
//! the current user. Programs are found via `$PG_BIN_DIR`, `pg_config --bindir`,
//! `/usr/lib/postgresql/<newest>/bin` or `PATH` (see [`PgCluster::bin`]).
//!
//! Each server is watched by a small `sh` process: if the test process dies
//! without dropping the cluster (Ctrl-C, `std::process::exit`, a cluster kept in a
//! `static`), the watchdog shuts the server down and deletes its directory. Set
//! `PORTCULLIS_TESTKIT_KEEP=1` to keep cluster directories for inspection.
//!
//! # How MariaDB servers are made
//!
//! The same way: the first [`MariaDb::start`] builds a template in
//! `<base>/portcullis-testkit-mariadb-template-<version>-<recipe tag>-u<server uid>/`
//! under a lock: `mariadb-install-db`, then a socket-only server creates the `app`
//! database and the users (installing the `auth_ed25519` plugin), shuts down
//! cleanly, and a `complete` marker is written. Each [`MariaDb`] copies the
//! template's data directory into its own temporary directory, writes its `my.cnf`
//! (read with `--defaults-file`, so no system option file applies), unix socket
//! path and TLS files (`ca.pem`, `server.crt`, `server.key`) there, and starts
//! `mariadbd` on a free port on 127.0.0.1. It is ready when it sends its greeting on
//! both the socket and the port (and the greeting must offer TLS). `mariadbd` runs as
//! the `mysql` system user when the tests run as root, as the current user
//! otherwise; programs are found via `$MARIADB_BIN_DIR`, `PATH` and the usual
//! directories (see [`MariaDb::bin`]). The watchdog and `PORTCULLIS_TESTKIT_KEEP`
//! work as for PostgreSQL. The system's own MariaDB server (port 3306, its socket,
//! `/etc/mysql`) is never used.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod bin;
mod certs;
mod cluster;
mod error;
mod http;
mod mariadb;
mod oidc;
mod server;
mod sys;
mod template;
pub mod wire;

use std::net::{Ipv4Addr, TcpListener};

pub use bin::PG_BIN_DIR_ENV;
pub use certs::{CertFiles, Certs};
pub use cluster::{KEEP_ENV, PgCluster};
pub use error::Error;
pub use http::{
    BodyDigest, ERROR_JSON, FAIL_MID_DEFAULT_N, HttpUpstream, NEAR_MISS_CARD, NEAR_MISS_EMAIL,
    NEAR_MISS_SSN, NEAR_MISSES, PLANTED, PLANTED_CARD, PLANTED_CARD_2, PLANTED_EMAIL,
    PLANTED_EMAIL_2, PLANTED_NOTES, PLANTED_PHONE, PLANTED_PHONE_2, PLANTED_SSN, PLANTED_SSN_2,
    RECORDED_BODY_LIMIT, RecordedRequest, SHUTDOWN_GRACE, SLOW_DEFAULT_MS, STREAM_CHUNK,
    STREAM_DEFAULT_N, STREAM_FILLER, TEXT_BODY, USERS_JSON, binary_body, fail_mid_prefix_len,
    sha256_hex, stream_bytes, stream_digest, stream_email, stream_len,
};
pub use mariadb::{MARIADB_BIN_DIR_ENV, MariaDb};
pub use oidc::{
    ACCOUNTS, AUDIENCE, Account, DEVICE_CLIENT, DEVICE_SCOPE, OidcProvider, RESOURCE,
    SERVICE_CLIENT, SERVICE_GROUPS, SigningKey, TOKEN_TTL,
};
pub use sys::DIR_ENV;

/// The superuser of every cluster: `(name, password)`; SCRAM-SHA-256 over TCP.
pub const SUPERUSER: (&str, &str) = ("portcullis", "portcullis-secret");
/// A role whose password is stored as MD5 and that `pg_hba.conf` authenticates
/// with `md5` over TCP: `(name, password)`.
pub const MD5_USER: (&str, &str) = ("md5user", "md5user-secret");
/// A role that `pg_hba.conf` authenticates with cleartext `password` over TCP:
/// `(name, password)`.
pub const PLAIN_USER: (&str, &str) = ("plainuser", "plainuser-secret");
/// An ordinary (non-superuser) role authenticated with SCRAM-SHA-256 over TCP:
/// `(name, password)`.
pub const SCRAM_USER: (&str, &str) = ("scramuser", "scramuser-secret");

/// The superuser of every [`MariaDb`] server: `(name, password)`;
/// `'portcullis'@'%'` with `ALL PRIVILEGES ON *.* WITH GRANT OPTION`, authenticated
/// with `mysql_native_password`.
pub const MARIADB_SUPERUSER: (&str, &str) = ("portcullis", "portcullis-secret");
/// A [`MariaDb`] user authenticated with `mysql_native_password`, with all
/// privileges on `app.*`: `(name, password)`.
pub const MARIADB_NATIVE_USER: (&str, &str) = ("native_user", "native_user-secret");
/// A [`MariaDb`] user authenticated with MariaDB's `ed25519` plugin
/// (`client_ed25519` on the client side), with all privileges on `app.*`:
/// `(name, password)`.
pub const MARIADB_ED25519_USER: (&str, &str) = ("ed_user", "ed_user-secret");
/// A [`MariaDb`] user authenticated with `mysql_native_password` that may only
/// `SELECT` from `app.*`: `(name, password)`.
pub const MARIADB_READONLY_USER: (&str, &str) = ("readonly", "readonly-secret");

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read the
/// port, close). Someone else may take it before you bind it; be ready to retry.
/// Never the same port twice in one process (the kernel readily hands a just-closed
/// port out again, so two calls in a row could otherwise agree).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..64 {
        let port = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(_) => fallback_port(),
        };
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    fallback_port()
}

/// A pseudo-random port in 20000..60000 for when binding port 0 fails.
fn fallback_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = nanos ^ std::process::id().rotate_left(16);
    20_000 + u16::try_from(mixed % 40_000).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        assert!((20_000..60_000).contains(&fallback_port()));
    }
}
