use std::net::SocketAddr;

/// What a client presents to authenticate; the request of every `Authenticate` service
/// (`Service<Credentials, Response = Identity>`).
#[derive(Clone)]
#[non_exhaustive]
pub struct Credentials {
    /// The user name the client asked for (recorded; not trusted).
    pub user: String,
    /// The token (sent as the password).
    pub token: String,
    /// The client's address, when known.
    pub peer: Option<SocketAddr>,
}

impl Credentials {
    /// Credentials without a peer address.
    pub fn new(user: impl Into<String>, token: impl Into<String>) -> Self {
        Credentials {
            user: user.into(),
            token: token.into(),
            peer: None,
        }
    }

    /// With the client's address.
    pub fn with_peer(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .field("peer", &self.peer)
            .finish()
    }
}

/// The token of an `Authorization` header value `Bearer <token>` (the scheme in either
/// case the clients send, surrounding spaces trimmed), when there is a non-empty one. The
/// one reading of bearer tokens for every HTTP surface (the HTTP listener, the admin API).
///
/// ```
/// use portcullis_core::bearer_token;
/// assert_eq!(bearer_token("Bearer abc "), Some("abc"));
/// assert_eq!(bearer_token("bearer abc"), Some("abc"));
/// assert_eq!(bearer_token("Basic abc"), None);
/// assert_eq!(bearer_token("Bearer  "), None);
/// ```
pub fn bearer_token(authorization: &str) -> Option<&str> {
    authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
