//! OpenID Connect: tokens issued by the company's identity provider.
//!
//! [`Oidc`] discovers the provider (`/.well-known/openid-configuration`), fetches its signing
//! keys (JWKS) and keeps them: refreshed every [`OidcConfig::refresh_interval`], and again
//! when a token names a key it does not know (key rotation) — at most once per
//! [`OidcConfig::min_refetch_interval`], so a flood of tokens with made-up key ids cannot
//! make it hammer the provider. When the provider is unreachable the keys already held keep
//! working; a token is never accepted unverified.
//!
//! A token is checked in this order, refusing at the first failure with a reason the client
//! sees (PostgreSQL `28P01`): size; three base64url parts; the header (`alg` never `none`
//! nor HMAC, no `crit` — none is supported —, no `jku`/`x5u`/`jwk`/`x5c`: keys come only
//! from the provider's JWKS; a plain `kid`); claim nesting; the key named by `kid`; `alg`
//! allowed for that key's type (RSA: RS/PS; EC P-256: ES256; P-384: ES384; Ed25519: EdDSA —
//! or only the `alg` the JWK names); the signature (verified by `jsonwebtoken`, on ring);
//! then the claims: token kind (ID or access token) accepted, `iss` exactly the issuer,
//! `aud` one of the audiences (and `azp`, when an ID token has several audiences), `exp`,
//! `nbf` and `iat` within the leeway, `sub` present.

mod keys;
pub mod login;
mod token;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;
pub use portcullis_core::http_client::Trust;
use portcullis_core::http_client::send;
use portcullis_core::{AuthMethod, Credentials, Error, Identity, Refusal};
use serde_json::{Map, Value};
use tracing::{info, warn};

use keys::KeySet;
pub use token::{TokenKind, decode_unverified};

/// How to trust an OpenID Connect provider's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OidcConfig {
    /// The issuer, exactly as tokens carry it in `iss` (`https://idp.example.com/realms/x`).
    pub issuer: String,
    /// Accepted audiences: a token's `aud` must hold one of them.
    pub audiences: Vec<String>,
    /// The claim holding the groups: a top-level name, or a dotted path into nested objects
    /// (`realm_access.roles`). An array of strings, or one string.
    pub groups_claim: String,
    /// Accept ID tokens (people signed in with `portcullis login`).
    pub accept_id_tokens: bool,
    /// Accept access tokens in JWT form (service accounts, client credentials).
    pub accept_access_tokens: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Deepest nesting of arrays/objects in the claims.
    pub max_claims_depth: usize,
    /// How often the keys are fetched again (rotation at the provider).
    pub refresh_interval: Duration,
    /// Least time between two fetches caused by tokens naming unknown keys.
    pub min_refetch_interval: Duration,
    /// Limit for each request to the provider.
    pub http_timeout: Duration,
    /// Trust roots for an `https` provider.
    pub trust: Trust,
}

impl OidcConfig {
    /// A configuration with defaults: ID and access tokens accepted, groups from `groups`,
    /// 30 s leeway, tokens up to 16 KiB nested at most 10 deep, keys refreshed every 10
    /// minutes and at most every 10 s on unknown key ids, 10 s per request, web PKI roots.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        OidcConfig {
            issuer: issuer.into(),
            audiences,
            groups_claim: "groups".into(),
            accept_id_tokens: true,
            accept_access_tokens: true,
            leeway: Duration::from_secs(30),
            max_token_bytes: 16 * 1024,
            max_claims_depth: 10,
            refresh_interval: Duration::from_secs(600),
            min_refetch_interval: Duration::from_secs(10),
            http_timeout: Duration::from_secs(10),
            trust: Trust::WebPki,
        }
    }

    /// Mistakes in the configuration, in words for `portcullis check`.
    pub fn validate(&self) -> Result<(), String> {
        let url: http::Uri = self
            .issuer
            .parse()
            .map_err(|e| format!("issuer {:?} is not a URL: {e}", self.issuer))?;
        match url.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback(url.host().unwrap_or_default()) => {}
            Some("http") => {
                return Err(format!(
                    "issuer {:?}: plain http is allowed only on loopback; use https",
                    self.issuer
                ));
            }
            _ => return Err(format!("issuer {:?} must be an https URL", self.issuer)),
        }
        if self.audiences.is_empty() {
            return Err("audiences is empty: list the audiences tokens must carry".into());
        }
        if !(self.accept_id_tokens || self.accept_access_tokens) {
            return Err("accept lists no token kind".into());
        }
        if self.groups_claim.is_empty() {
            return Err("groups_claim is empty".into());
        }
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The provider could not be used at start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("OpenID Connect provider {issuer}: {message}")]
pub struct OidcError {
    /// The configured issuer.
    pub issuer: String,
    /// What went wrong.
    pub message: String,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct OidcStats {
    /// Key fetches (JWKS) that succeeded.
    pub key_fetches: AtomicU64,
    /// Discovery or key fetches that failed.
    pub fetch_failures: AtomicU64,
    /// Tokens accepted.
    pub accepted: AtomicU64,
    /// Tokens refused.
    pub refused: AtomicU64,
}

struct Inner {
    config: OidcConfig,
    keys: RwLock<Arc<KeySet>>,
    /// From discovery; `None` until the provider has answered once.
    jwks_uri: RwLock<Option<String>>,
    /// When keys were last fetched because of an unknown `kid` (single flight, rate limit).
    refetched: tokio::sync::Mutex<Option<Instant>>,
    /// Keys given by the caller ([`Oidc::from_jwks`]): never fetched.
    fixed: bool,
    stats: OidcStats,
}

/// Validates tokens of one OpenID Connect provider: a tower
/// `Service<Credentials, Response = Identity>`. Cheap to clone.
#[derive(Clone)]
pub struct Oidc {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.inner.config.issuer)
            .field("keys", &self.keys())
            .finish()
    }
}

impl Oidc {
    /// Discover the provider and fetch its keys now; an error if it cannot be reached or
    /// answers nonsense. Keys are then refreshed in the background (a tokio task that ends
    /// with the last clone).
    pub async fn discover(config: OidcConfig) -> Result<Oidc, OidcError> {
        let oidc = Oidc::unstarted(config)?;
        oidc.fetch_keys().await.map_err(|message| OidcError {
            issuer: oidc.inner.config.issuer.clone(),
            message,
        })?;
        oidc.spawn_refresher();
        Ok(oidc)
    }

    /// Start without waiting for the provider: keys are fetched in the background, retried
    /// with backoff until the provider answers. Until then every token is refused.
    pub fn start_in_background(config: OidcConfig) -> Result<Oidc, OidcError> {
        let oidc = Oidc::unstarted(config)?;
        oidc.spawn_refresher();
        Ok(oidc)
    }

    /// Trust the keys of `jwks` (a JWKS document) and never contact the provider: for
    /// air-gapped deployments with a pinned key set, and for tests and benchmarks. A token
    /// naming another key is refused.
    pub fn from_jwks(config: OidcConfig, jwks: &[u8]) -> Result<Oidc, OidcError> {
        let fail = |message: String| OidcError {
            issuer: config.issuer.clone(),
            message,
        };
        let set = KeySet::parse(jwks).map_err(fail)?;
        if set.keys.is_empty() {
            return Err(fail("the JWKS has no usable signing key".into()));
        }
        let mut oidc = Oidc::unstarted(config.clone())?;
        if let Some(inner) = Arc::get_mut(&mut oidc.inner) {
            inner.fixed = true;
            inner.keys = RwLock::new(Arc::new(set));
        }
        Ok(oidc)
    }

    fn unstarted(config: OidcConfig) -> Result<Oidc, OidcError> {
        config.validate().map_err(|message| OidcError {
            issuer: config.issuer.clone(),
            message,
        })?;
        Ok(Oidc {
            inner: Arc::new(Inner {
                config,
                keys: RwLock::default(),
                jwks_uri: RwLock::default(),
                refetched: tokio::sync::Mutex::new(None),
                fixed: false,
                stats: OidcStats::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OidcConfig {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> &OidcStats {
        &self.inner.stats
    }

    /// The `kid`s of the keys held now.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys().kids().into_iter().map(str::to_owned).collect()
    }

    fn keys(&self) -> Arc<KeySet> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Validate `token`, fetching the provider's keys again if it names an unknown one
    /// (rate-limited).
    pub async fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        let outcome = self.verify_inner(token).await;
        self.count(outcome)
    }

    /// Validate `token` with the keys held now, without network access (for synchronous
    /// callers such as the admin API); an unknown key is refused.
    pub fn verify_cached(&self, token: &str) -> Result<Identity, Refusal> {
        let outcome = self.read(token).and_then(|u| self.check(&self.keys(), u));
        self.count(outcome)
    }

    fn count(&self, outcome: Result<Identity, String>) -> Result<Identity, Refusal> {
        let counter = match outcome {
            Ok(_) => &self.inner.stats.accepted,
            Err(_) => &self.inner.stats.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome.map_err(|reason| Refusal::Unauthenticated { reason })
    }

    fn read<'t>(&self, token: &'t str) -> Result<token::Unverified<'t>, String> {
        let c = &self.inner.config;
        token::read(
            token,
            token::Limits {
                max_bytes: c.max_token_bytes,
                max_depth: c.max_claims_depth,
            },
        )
    }

    async fn verify_inner(&self, token: &str) -> Result<Identity, String> {
        let unverified = self.read(token)?;
        let mut keys = self.keys();
        if keys.find(unverified.kid.as_deref()).is_none() && !self.inner.fixed {
            self.refetch_for(unverified.kid.as_deref()).await;
            keys = self.keys();
        }
        self.check(&keys, unverified)
    }

    /// Fetch the keys again for a token naming an unknown `kid`, unless someone just did.
    async fn refetch_for(&self, kid: Option<&str>) {
        let mut last = self.inner.refetched.lock().await;
        if self.keys().find(kid).is_some() {
            return; // fetched while this one waited for the lock
        }
        let min = self.inner.config.min_refetch_interval;
        if last.is_some_and(|t| t.elapsed() < min) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch_keys().await {
            warn!(target: "portcullis::identity", issuer = %self.inner.config.issuer, error = %e, "fetching the provider's keys failed; the keys held are kept");
        }
    }

    fn check(&self, keys: &KeySet, u: token::Unverified<'_>) -> Result<Identity, String> {
        let c = &self.inner.config;
        let Some(key) = keys.find(u.kid.as_deref()) else {
            if keys.keys.is_empty() && self.jwks_uri().is_none() {
                return Err("the identity provider has not been reached yet".into());
            }
            return Err(match &u.kid {
                Some(kid) => format!("unknown signing key (kid {kid:?})"),
                None => "the token names no signing key (kid) and the provider has several".into(),
            });
        };
        if !key.algorithms.contains(&u.alg) {
            return Err(format!(
                "algorithm {:?} does not fit the signing key {:?} ({})",
                u.alg,
                key.kid.as_deref().unwrap_or_default(),
                key.kind
            ));
        }
        match jsonwebtoken::crypto::verify(u.signature, u.signing_input.as_bytes(), &key.key, u.alg)
        {
            Ok(true) => {}
            Ok(false) => return Err("invalid signature".into()),
            Err(e) => return Err(format!("malformed signature: {e}")),
        }
        let accepted = match u.kind {
            TokenKind::IdToken => c.accept_id_tokens,
            TokenKind::AccessToken => c.accept_access_tokens,
        };
        if !accepted {
            return Err(format!("{}s are not accepted here", u.kind));
        }
        check_claims(c, u.kind, &u.claims, now_secs())
    }

    fn jwks_uri(&self) -> Option<String> {
        self.inner
            .jwks_uri
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Discover (once) and fetch the keys; on success they replace the keys held.
    async fn fetch_keys(&self) -> Result<(), String> {
        let result = self.fetch_keys_inner().await;
        if result.is_err() {
            self.inner
                .stats
                .fetch_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn fetch_keys_inner(&self) -> Result<(), String> {
        let c = &self.inner.config;
        let jwks_uri = match self.jwks_uri() {
            Some(uri) => uri,
            None => {
                let doc = Discovery::fetch(&c.issuer, &c.trust, c.http_timeout).await?;
                *self
                    .inner
                    .jwks_uri
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Some(doc.jwks_uri.clone());
                doc.jwks_uri
            }
        };
        let body = get(&jwks_uri, &c.trust, c.http_timeout).await?;
        let set = KeySet::parse(&body).map_err(|e| format!("{jwks_uri}: {e}"))?;
        if set.keys.is_empty() {
            return Err(format!("{jwks_uri}: no usable signing key"));
        }
        let before = self.keys().kids().join(",");
        let after = set.kids().join(",");
        if before != after {
            info!(target: "portcullis::identity", issuer = %c.issuer, keys = %after, "signing keys loaded");
        }
        *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        self.inner.stats.key_fetches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Refresh the keys periodically; before the first success, retry with backoff.
    fn spawn_refresher(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = self.inner.config.refresh_interval;
        let held = !self.keys().keys.is_empty();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            let mut loaded = held;
            loop {
                tokio::time::sleep(if loaded { every } else { backoff }).await;
                let Some(inner) = weak.upgrade() else { return };
                let oidc = Oidc { inner };
                match oidc.fetch_keys().await {
                    Ok(()) => loaded = true,
                    Err(e) => {
                        warn!(target: "portcullis::identity", issuer = %oidc.inner.config.issuer, error = %e, "fetching the provider's keys failed; the keys held are kept");
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A numeric date claim, in whole seconds.
fn date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            #[allow(clippy::cast_possible_truncation)]
            Some(f) if f.is_finite() => Ok(Some(f.floor() as i64)),
            _ => Err(format!("the {name} claim is not a number")),
        },
    }
}

fn strings(v: &Value) -> Option<Vec<&str>> {
    match v {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// The value at `path`: a top-level claim of that exact name, else a dotted path.
fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut at = claims.get(parts.next()?)?;
    for part in parts {
        at = at.as_object()?.get(part)?;
    }
    Some(at)
}

/// Check the claims of a token whose signature verified; the identity they name.
fn check_claims(
    c: &OidcConfig,
    kind: TokenKind,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<Identity, String> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    match text("iss") {
        Some(iss) if iss == c.issuer => {}
        Some(iss) => {
            return Err(format!("wrong issuer {iss:?} (expected {:?})", c.issuer));
        }
        None => return Err("the token has no iss claim".into()),
    }
    let aud = claims.get("aud").ok_or("the token has no aud claim")?;
    let aud = strings(aud).ok_or("the aud claim is not a string or a list of strings")?;
    if !aud.iter().any(|a| c.audiences.iter().any(|want| want == a)) {
        return Err(format!(
            "wrong audience {aud:?} (expected one of {:?})",
            c.audiences
        ));
    }
    if kind == TokenKind::IdToken
        && aud.len() > 1
        && let Some(azp) = text("azp")
        && !c.audiences.iter().any(|a| a == azp)
    {
        return Err(format!(
            "the token has several audiences and its azp {azp:?} is not one of {:?}",
            c.audiences
        ));
    }
    let leeway = i64::try_from(c.leeway.as_secs()).unwrap_or(i64::MAX);
    let exp = date(claims, "exp")?.ok_or("the token has no exp claim")?;
    if now > exp.saturating_add(leeway) {
        return Err(format!("token expired {} s ago", now - exp));
    }
    if let Some(nbf) = date(claims, "nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(format!(
            "token not valid yet (nbf is {} s ahead)",
            nbf - now
        ));
    }
    if let Some(iat) = date(claims, "iat")?
        && now.saturating_add(leeway) < iat
    {
        return Err(format!(
            "token issued in the future (iat is {} s ahead)",
            iat - now
        ));
    }
    // A `sub` that is not a string is refused, never replaced by another claim; only a
    // token with no `sub` at all (OAuth client credentials) falls back to `client_id`.
    let subject = match claims.get("sub") {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("the token's sub claim is not a string".into()),
        None => text("client_id"),
    }
    .filter(|s| !s.is_empty())
    .ok_or("the token has no sub claim")?;
    let groups = match claim_at(claims, &c.groups_claim) {
        None => Vec::new(),
        Some(v) => strings(v)
            .ok_or_else(|| {
                format!(
                    "the groups claim {:?} is not a string or a list of strings",
                    c.groups_claim
                )
            })?
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    let mut identity = Identity::new(subject, groups, AuthMethod::Oidc);
    identity.display = ["name", "preferred_username", "email", "client_id"]
        .iter()
        .find_map(|n| text(n))
        .map(str::to_owned);
    identity.issuer = Some(c.issuer.clone());
    identity.token_id = text("jti").map(str::to_owned);
    // One rule for login and for the session: the token holds until `exp` plus the leeway.
    identity.expires_at = u64::try_from(exp.saturating_add(leeway))
        .ok()
        .map(|e| UNIX_EPOCH + Duration::from_secs(e));
    Ok(identity)
}

/// GET `url`; the body of a 2xx answer.
async fn get(url: &str, trust: &Trust, timeout: Duration) -> Result<bytes::Bytes, String> {
    let (status, body) = send(
        Method::GET,
        url,
        &[("accept", "application/json".into())],
        None,
        trust,
        timeout,
    )
    .await
    .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    Ok(body)
}

/// The parts of a provider's discovery document the gateway and `portcullis login` use.
#[derive(Debug, Clone, serde::Deserialize)]
#[non_exhaustive]
pub struct Discovery {
    /// The issuer, which must equal the configured one.
    pub issuer: String,
    /// Where the signing keys are.
    pub jwks_uri: String,
    /// The token endpoint.
    pub token_endpoint: Option<String>,
    /// The device authorization endpoint (RFC 8628), if the provider has one.
    pub device_authorization_endpoint: Option<String>,
}

impl Discovery {
    /// Fetch `issuer`'s discovery document and check that it names the same issuer.
    pub async fn fetch(issuer: &str, trust: &Trust, timeout: Duration) -> Result<Self, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = get(&url, trust, timeout).await?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("{url}: not a discovery document: {e}"))?;
        if doc.issuer != issuer {
            return Err(format!(
                "{url} names the issuer {:?}, not {issuer:?}",
                doc.issuer
            ));
        }
        for (field, value) in [
            ("jwks_uri", Some(&doc.jwks_uri)),
            ("token_endpoint", doc.token_endpoint.as_ref()),
            (
                "device_authorization_endpoint",
                doc.device_authorization_endpoint.as_ref(),
            ),
        ] {
            if let Some(value) = value {
                derived_url_allowed(issuer, value)
                    .map_err(|why| format!("{url}: {field} {value:?} {why}"))?;
            }
        }
        Ok(doc)
    }
}

/// Whether `url`, named by the discovery document of `issuer`, may be used: https always;
/// plain http only when the issuer itself is plain http on loopback (a test provider) and
/// `url` is on loopback too — keys fetched in clear for an https issuer would let anyone on
/// the path sign tokens.
fn derived_url_allowed(issuer: &str, url: &str) -> Result<(), String> {
    let parsed: http::Uri = url.parse().map_err(|e| format!("is not a URL: {e}"))?;
    let issuer_on_loopback_http = issuer
        .parse::<http::Uri>()
        .is_ok_and(|i| i.scheme_str() == Some("http") && is_loopback(i.host().unwrap_or_default()));
    match parsed.scheme_str() {
        Some("https") => Ok(()),
        Some("http")
            if issuer_on_loopback_http && is_loopback(parsed.host().unwrap_or_default()) =>
        {
            Ok(())
        }
        Some("http") => Err("is plain http: every URL an https issuer names must be https".into()),
        _ => Err("must be an https URL".into()),
    }
}

impl tower_service::Service<Credentials> for Oidc {
    type Response = Identity;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Identity, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, credentials: Credentials) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.verify(&credentials.token).await.map_err(Error::from) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        let mut c = OidcConfig::new("https://idp.example", vec!["portcullis".into()]);
        c.groups_claim = "realm_access.roles".into();
        c
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn good() -> Value {
        serde_json::json!({
            "iss": "https://idp.example", "aud": "portcullis", "sub": "u1",
            "exp": NOW + 60, "iat": NOW, "jti": "t1", "name": "Alice",
            "realm_access": {"roles": ["analysts", "dev"]},
        })
    }

    fn with(key: &str, v: Value) -> Map<String, Value> {
        let mut m = claims(good());
        m.insert(key.into(), v);
        m
    }

    #[test]
    fn good_claims_make_an_identity() {
        let id = check_claims(&config(), TokenKind::IdToken, &claims(good()), NOW).unwrap();
        assert_eq!(id.subject, "u1");
        assert_eq!(id.groups, vec!["analysts", "dev"]);
        assert_eq!(id.display.as_deref(), Some("Alice"));
        assert_eq!(id.token_id.as_deref(), Some("t1"));
        assert_eq!(id.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(id.method, AuthMethod::Oidc);
        assert!(id.expires_at.is_some());
    }

    #[test]
    fn bad_claims_are_refused_with_reasons() {
        let c = config();
        let r = |m: Map<String, Value>| check_claims(&c, TokenKind::IdToken, &m, NOW).unwrap_err();
        assert!(r(with("iss", "https://idp.example/".into())).contains("wrong issuer"));
        assert!(r(with("aud", "other".into())).contains("wrong audience"));
        assert!(r(with("aud", serde_json::json!(["other", "x"]))).contains("wrong audience"));
        assert!(r(with("exp", (NOW - 31).into())).contains("expired"));
        assert!(r(with("nbf", (NOW + 31).into())).contains("not valid yet"));
        assert!(r(with("iat", (NOW + 31).into())).contains("future"));
        assert!(r(with("exp", "soon".into())).contains("not a number"));
        let mut azp = with("aud", serde_json::json!(["portcullis", "other"]));
        azp.insert("azp".into(), "other".into());
        assert!(r(azp).contains("azp"));
        let mut no_sub = claims(good());
        no_sub.remove("sub");
        assert!(r(no_sub).contains("sub"));
        // A sub that is not a string is refused, not replaced by client_id.
        let mut odd_sub = with("sub", serde_json::json!(42));
        odd_sub.insert("client_id".into(), "svc".into());
        assert!(r(odd_sub).contains("sub claim is not a string"));
        let mut no_exp = claims(good());
        no_exp.remove("exp");
        assert!(r(no_exp).contains("exp"));
        assert!(r(with("realm_access", serde_json::json!({"roles": 5}))).contains("groups claim"));
    }

    #[test]
    fn leeway_and_audience_lists() {
        let c = config();
        let ok = |m: Map<String, Value>| check_claims(&c, TokenKind::IdToken, &m, NOW).is_ok();
        assert!(ok(with("exp", (NOW - 29).into())));
        // One rule for login and session: a token inside the leeway expires at exp + leeway.
        let id =
            check_claims(&c, TokenKind::IdToken, &with("exp", (NOW - 29).into()), NOW).unwrap();
        let until = id
            .expires_at
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(until, (NOW - 29 + 30) as u64);
        assert!(ok(with("nbf", (NOW + 29).into())));
        assert!(ok(with("aud", serde_json::json!(["x", "portcullis"]))));
        assert!(ok(with("exp", serde_json::json!(NOW as f64 + 0.5))));
    }

    #[test]
    fn groups_paths() {
        let m = claims(serde_json::json!({
            "groups": ["a"], "https://ns.example/groups": ["n"], "x": {"y": {"z": "deep"}},
        }));
        assert_eq!(claim_at(&m, "groups"), Some(&serde_json::json!(["a"])));
        assert_eq!(
            claim_at(&m, "https://ns.example/groups"),
            Some(&serde_json::json!(["n"]))
        );
        assert_eq!(claim_at(&m, "x.y.z"), Some(&serde_json::json!("deep")));
        assert_eq!(claim_at(&m, "x.q"), None);
    }

    #[test]
    fn config_validation() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.issuer = "http://idp.example".into();
        assert!(c.validate().unwrap_err().contains("loopback"));
        // URLs a discovery document names: https, or loopback http for a loopback-http issuer.
        let ok = |issuer: &str, url: &str| super::derived_url_allowed(issuer, url).is_ok();
        assert!(ok("https://idp.example", "https://keys.example/jwks"));
        assert!(!ok("https://idp.example", "http://idp.example/jwks"));
        assert!(!ok("https://127.0.0.1:8443", "http://127.0.0.1:8443/jwks"));
        assert!(ok("http://127.0.0.1:8080", "http://127.0.0.1:8080/jwks"));
        assert!(!ok("http://127.0.0.1:8080", "http://evil.example/jwks"));
        assert!(!ok("https://idp.example", "file:///etc/keys"));
        c.issuer = "http://127.0.0.1:8080".into();
        assert!(c.validate().is_ok());
        c.audiences.clear();
        assert!(c.validate().unwrap_err().contains("audiences"));
    }
}
