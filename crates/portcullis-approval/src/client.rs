//! [`AdminClient`]: the approvals API from the outside (the `portcullis approvals` CLI).

use std::time::Duration;

use http::{Method, StatusCode};

use crate::request::ApprovalRequest;
use portcullis_core::http_client::{Body, Trust, send};

/// A call to the approvals API failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No answer (connection, TLS, timeout).
    #[error("{0}")]
    Unreachable(#[from] portcullis_core::http_client::ClientError),
    /// The API said no: its status and message.
    #[error("{status}: {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The API's `error` message.
        message: String,
    },
    /// The answer was not what the API sends.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Talks to a gateway's approvals API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    trust: Trust,
    timeout: Duration,
}

impl AdminClient {
    /// The API at `base` (`http://127.0.0.1:9480`; a bare `host:port` means `http://`),
    /// calling as the holder of `token`.
    pub fn new(base: &str, token: impl Into<String>) -> Self {
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        AdminClient {
            base,
            token: token.into(),
            trust: Trust::WebPki,
            timeout: Duration::from_secs(30),
        }
    }

    /// Trust these PEM CA certificates for `https://` (instead of the web PKI).
    pub fn with_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.trust = Trust::Pem(pem);
        self
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<bytes::Bytes, AdminError> {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| Body::json(b.to_string().into_bytes()));
        let (status, answer) = send(
            method,
            &url,
            &[("authorization", format!("Bearer {}", self.token))],
            body,
            &self.trust,
            self.timeout,
        )
        .await?;
        if status.is_success() {
            return Ok(answer);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
        Err(AdminError::Refused { status, message })
    }

    /// Requests the caller may decide or filed (pending only unless `all`).
    pub async fn list(&self, all: bool) -> Result<Vec<ApprovalRequest>, AdminError> {
        let path = if all {
            "/approvals?all=true"
        } else {
            "/approvals"
        };
        let body = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&body).map_err(|e| AdminError::Unexpected(e.to_string()))
    }

    /// Approve request `id`.
    pub async fn approve(&self, id: &str) -> Result<ApprovalRequest, AdminError> {
        let body = self
            .call(Method::POST, &format!("/approvals/{id}/approve"), None)
            .await?;
        serde_json::from_slice(&body).map_err(|e| AdminError::Unexpected(e.to_string()))
    }

    /// Deny request `id`, optionally saying why.
    pub async fn deny(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<ApprovalRequest, AdminError> {
        let body = reason.map(|r| serde_json::json!({ "reason": r }));
        let body = self
            .call(Method::POST, &format!("/approvals/{id}/deny"), body)
            .await?;
        serde_json::from_slice(&body).map_err(|e| AdminError::Unexpected(e.to_string()))
    }
}
