use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use portcullis_core::{Credentials, Error, Identity, Refusal};

use crate::{Oidc, StaticTokens};

/// The gateway's authenticator: static tokens first, then — for a token shaped like a JWT —
/// the OpenID Connect provider, when one is configured.
///
/// Static tokens are checked first because the check is cheap and constant-time; a JWT that
/// is not a configured static token goes to [`Oidc`], whose reason for a refusal is the one
/// the client sees.
#[derive(Clone, Debug, Default)]
pub struct TokenAuth {
    static_tokens: StaticTokens,
    oidc: Option<Oidc>,
}

impl TokenAuth {
    /// Static tokens only.
    pub fn new(static_tokens: StaticTokens) -> Self {
        TokenAuth {
            static_tokens,
            oidc: None,
        }
    }

    /// Also accept tokens from `oidc`.
    pub fn with_oidc(mut self, oidc: Oidc) -> Self {
        self.oidc = Some(oidc);
        self
    }

    /// The static tokens.
    pub fn static_tokens(&self) -> &StaticTokens {
        &self.static_tokens
    }

    /// The OpenID Connect provider, if any.
    pub fn oidc(&self) -> Option<&Oidc> {
        self.oidc.as_ref()
    }

    fn oidc_for(&self, token: &str) -> Option<&Oidc> {
        self.oidc.as_ref().filter(|_| looks_like_jwt(token))
    }

    /// Check `token`, fetching the provider's keys if it names an unknown one.
    pub async fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        match self.static_tokens.verify(token) {
            Ok(identity) => Ok(identity),
            Err(refusal) => match self.oidc_for(token) {
                Some(oidc) => oidc.verify(token).await,
                None => Err(refusal),
            },
        }
    }

    /// Check `token` without network access (the provider's keys held now).
    pub fn verify_now(&self, token: &str) -> Result<Identity, Refusal> {
        match self.static_tokens.verify(token) {
            Ok(identity) => Ok(identity),
            Err(refusal) => match self.oidc_for(token) {
                Some(oidc) => oidc.verify_cached(token),
                None => Err(refusal),
            },
        }
    }
}

/// Three dot-separated parts (five: an encrypted JWT, which [`Oidc`] refuses clearly).
fn looks_like_jwt(token: &str) -> bool {
    matches!(token.trim().bytes().filter(|&b| b == b'.').count(), 2 | 4)
}

impl tower_service::Service<Credentials> for TokenAuth {
    type Response = Identity;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Identity, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, credentials: Credentials) -> Self::Future {
        // The common case answers without a task hop or an allocation beyond the box.
        let this = self.clone();
        Box::pin(async move { this.verify(&credentials.token).await.map_err(Error::from) })
    }
}
