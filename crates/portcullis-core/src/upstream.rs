//! Where and how a protocol crate connects to its database: address, the gateway's
//! credentials, TLS, and role mapping (which database user an identity logs in as).
//! Feature `tls`.

use std::time::Duration;

use crate::tls::UpstreamTls;

/// Where and how the gateway connects to the database.
#[derive(Clone)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The user the gateway logs in as.
    pub user: String,
    /// Its password (used with whatever authentication the server asks for).
    pub password: String,
    /// The database to use; `None` = the one the client asks for.
    pub database: Option<String>,
    /// TLS settings.
    pub tls: UpstreamTls,
    /// Deadline for connecting and logging in.
    pub connect_timeout: Duration,
    /// Role mapping: an identity in one of a role's groups logs in as that role's user;
    /// first match wins.
    pub roles: Vec<UpstreamRole>,
    /// With role mapping, refuse an identity no role matches (instead of logging it in as
    /// [`UpstreamConfig::user`]).
    pub refuse_unmatched: bool,
}

/// One `[[postgres.upstream.roles]]` (or `[[mysql.upstream.roles]]`) entry: the database user for identities in `groups`.
#[derive(Clone)]
pub struct UpstreamRole {
    /// Any of these groups selects the role.
    pub groups: Vec<String>,
    /// The database user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for UpstreamRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRole")
            .field("groups", &self.groups)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("tls", &self.tls.mode)
            .field("connect_timeout", &self.connect_timeout)
            .field("roles", &self.roles)
            .field("refuse_unmatched", &self.refuse_unmatched)
            .finish()
    }
}

impl UpstreamConfig {
    /// A plain-TCP upstream with a 10 s connect timeout.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        UpstreamConfig {
            host: host.into(),
            port,
            user: user.into(),
            password: password.into(),
            database: None,
            tls: UpstreamTls::disabled(),
            connect_timeout: Duration::from_secs(10),
            roles: Vec::new(),
            refuse_unmatched: false,
        }
    }

    /// The `(user, password)` an identity in `groups` logs in as: the first role with one
    /// of its groups, else the default user — or `None` when roles are configured, none
    /// matches and unmatched identities are refused.
    pub fn login_for<S: AsRef<str>>(&self, groups: &[S]) -> Option<(&str, &str)> {
        let matched = self.roles.iter().find(|role| {
            role.groups
                .iter()
                .any(|g| groups.iter().any(|have| have.as_ref() == g))
        });
        match matched {
            Some(role) => Some((&role.user, &role.password)),
            None if self.refuse_unmatched && !self.roles.is_empty() => None,
            None => Some((&self.user, &self.password)),
        }
    }

    /// With a fixed database.
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// With TLS settings.
    pub fn tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = tls;
        self
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
