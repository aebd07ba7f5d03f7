//! Getting a token from the provider, for `portcullis login`: the OAuth device authorization
//! grant (RFC 8628) for people, the client credentials grant for service accounts.

use std::time::Duration;

use http::Method;
use portcullis_core::http_client::{Body, Trust, send};
use serde::Deserialize;

use super::Discovery;

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct LoginClient {
    /// The provider's endpoints.
    pub discovery: Discovery,
    /// The OAuth client id.
    pub client_id: String,
    /// The client secret, for confidential clients.
    pub client_secret: Option<String>,
    /// Trust roots for https.
    pub trust: Trust,
    /// Limit for each request.
    pub timeout: Duration,
}

/// What the user must do to approve a device login.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct DeviceAuthorization {
    /// Secret for polling.
    pub device_code: String,
    /// The code the user types.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: String,
    /// The same with the code filled in, when the provider gives it.
    pub verification_uri_complete: Option<String>,
    /// Seconds until the codes expire.
    pub expires_in: u64,
    /// Seconds between polls (default 5).
    #[serde(default = "five")]
    pub interval: u64,
}

fn five() -> u64 {
    5
}

/// Tokens from the token endpoint.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Tokens {
    /// The access token.
    pub access_token: String,
    /// The ID token (device flow with scope `openid`).
    pub id_token: Option<String>,
    /// Seconds the access token lives.
    pub expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
}

impl LoginClient {
    /// A client of the provider at `issuer` (its discovery document is fetched).
    pub async fn discover(
        issuer: &str,
        client_id: &str,
        client_secret: Option<String>,
        trust: Trust,
    ) -> Result<LoginClient, String> {
        let timeout = Duration::from_secs(15);
        let discovery = Discovery::fetch(issuer, &trust, timeout).await?;
        Ok(LoginClient {
            discovery,
            client_id: client_id.to_owned(),
            client_secret,
            trust,
            timeout,
        })
    }

    async fn post(&self, url: &str, mut form: Vec<(&str, String)>) -> Result<Post, String> {
        form.push(("client_id", self.client_id.clone()));
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.clone()));
        }
        let body = serde_urlencoded::to_string(&form).map_err(|e| e.to_string())?;
        let (status, answer) = send(
            Method::POST,
            url,
            &[("accept", "application/json".into())],
            Some(Body::form(body)),
            &self.trust,
            self.timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
        if status.is_success() {
            return Ok(Post::Ok(answer));
        }
        match serde_json::from_slice::<OAuthError>(&answer) {
            Ok(e) => Ok(Post::OAuth(e)),
            Err(_) => Err(format!(
                "{url}: HTTP {status}: {}",
                String::from_utf8_lossy(&answer)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )),
        }
    }

    fn token_endpoint(&self) -> Result<&str, String> {
        self.discovery
            .token_endpoint
            .as_deref()
            .ok_or_else(|| "the provider's discovery document has no token_endpoint".into())
    }

    /// Start a device login for `scope`.
    pub async fn start_device(&self, scope: &str) -> Result<DeviceAuthorization, String> {
        let url = self
            .discovery
            .device_authorization_endpoint
            .as_deref()
            .ok_or("the provider does not offer the device authorization grant")?;
        match self.post(url, vec![("scope", scope.to_owned())]).await? {
            Post::Ok(body) => {
                serde_json::from_slice(&body).map_err(|e| format!("{url}: unexpected answer: {e}"))
            }
            Post::OAuth(e) => Err(describe(&e)),
        }
    }

    /// Poll until the user approves (the tokens), denies or the code expires (an error).
    pub async fn finish_device(&self, auth: &DeviceAuthorization) -> Result<Tokens, String> {
        let url = self.token_endpoint()?.to_owned();
        let mut interval = Duration::from_secs(auth.interval.max(1));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(auth.expires_in);
        loop {
            tokio::time::sleep(interval).await;
            if tokio::time::Instant::now() > deadline {
                return Err("the login code expired before it was approved".into());
            }
            let form = vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:device_code".to_owned(),
                ),
                ("device_code", auth.device_code.clone()),
            ];
            match self.post(&url, form).await? {
                Post::Ok(body) => {
                    return serde_json::from_slice(&body)
                        .map_err(|e| format!("{url}: unexpected answer: {e}"));
                }
                Post::OAuth(e) if e.error == "authorization_pending" => {}
                Post::OAuth(e) if e.error == "slow_down" => interval += Duration::from_secs(5),
                Post::OAuth(e) => return Err(describe(&e)),
            }
        }
    }

    /// The client credentials grant: an access token for this (confidential) client.
    /// `resource` (RFC 8707) names the API the token is for, when the provider needs it.
    pub async fn client_credentials(
        &self,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Result<Tokens, String> {
        let url = self.token_endpoint()?.to_owned();
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if let Some(scope) = scope {
            form.push(("scope", scope.to_owned()));
        }
        if let Some(resource) = resource {
            form.push(("resource", resource.to_owned()));
        }
        match self.post(&url, form).await? {
            Post::Ok(body) => {
                serde_json::from_slice(&body).map_err(|e| format!("{url}: unexpected answer: {e}"))
            }
            Post::OAuth(e) => Err(describe(&e)),
        }
    }
}

enum Post {
    Ok(bytes::Bytes),
    OAuth(OAuthError),
}

fn describe(e: &OAuthError) -> String {
    match &e.error_description {
        Some(d) => format!("the provider refused: {} ({d})", e.error),
        None => format!("the provider refused: {}", e.error),
    }
}
