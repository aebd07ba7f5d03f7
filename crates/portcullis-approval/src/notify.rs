//! Telling people a request waits: [`WebhookNotifier`] posts JSON (with a Slack-compatible
//! `text` field), retrying with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use tracing::{debug, warn};

use crate::request::ApprovalRequest;
use portcullis_core::http_client::{Body, Trust, send};

/// Told about every new request. Must not block: deliver in the background.
pub trait Notifier: Send + Sync + 'static {
    /// A request was filed.
    fn notify(&self, request: &ApprovalRequest);
}

/// Delivery counters of a [`WebhookNotifier`].
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Messages delivered (2xx).
    pub delivered: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Messages given up after every retry.
    pub dropped: AtomicU64,
}

/// Posts each new request to a URL: `{"text": "...", "request": {...}}`. A failed delivery is
/// retried (1 s, 2 s, 4 s, … up to `attempts`), logged, and counted in [`WebhookStats`].
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    /// What logs and counters call it: never the URL, which may hold a secret (user
    /// information, a path or query token).
    name: String,
    url: String,
    attempts: u32,
    timeout: Duration,
    first_backoff: Duration,
    stats: Arc<WebhookStats>,
}

impl WebhookNotifier {
    /// Post to `url` (http or https), 5 attempts, 10 s each. Logs name it by its scheme and
    /// host only, until [`WebhookNotifier::named`] gives it a name.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        WebhookNotifier {
            name: origin(&url),
            url,
            attempts: 5,
            timeout: Duration::from_secs(10),
            first_backoff: Duration::from_secs(1),
            stats: Arc::default(),
        }
    }

    /// Name it `name` in logs (the URL never appears there).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The name logs give it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attempts per message and the first backoff (doubling after each failure).
    pub fn retries(mut self, attempts: u32, first_backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.first_backoff = first_backoff;
        self
    }

    /// The delivery counters.
    pub fn stats(&self) -> Arc<WebhookStats> {
        self.stats.clone()
    }

    /// The message posted for `request`.
    pub fn message(request: &ApprovalRequest) -> serde_json::Value {
        let who = request
            .identity
            .display
            .as_deref()
            .unwrap_or(&request.identity.subject);
        let text = format!(
            "Approval needed: {who} wants to run `{}` on {} (rule \"{}\"). Approvers: {}. Approve with `portcullis approvals approve {}` before {}.",
            request.statement,
            request.target,
            request.rule,
            request.approvers.join(", "),
            request.id,
            request
                .expires_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        );
        serde_json::json!({ "text": text, "request": request })
    }
}

impl Notifier for WebhookNotifier {
    fn notify(&self, request: &ApprovalRequest) {
        let body = match serde_json::to_vec(&Self::message(request)) {
            Ok(b) => b,
            Err(e) => {
                warn!(target: "portcullis::approval", error = %e, "webhook message not encodable");
                return;
            }
        };
        let this = self.clone();
        let id = request.id.clone();
        tokio::spawn(async move {
            let mut backoff = this.first_backoff;
            for attempt in 1..=this.attempts {
                let sent = send(
                    Method::POST,
                    &this.url,
                    &[],
                    Some(Body::json(body.clone())),
                    &Trust::WebPki,
                    this.timeout,
                )
                .await;
                match sent {
                    Ok((status, _)) if status.is_success() => {
                        this.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        debug!(target: "portcullis::approval", request = %id, webhook = %this.name, "webhook delivered");
                        return;
                    }
                    Ok((status, _)) => {
                        this.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        warn!(target: "portcullis::approval", request = %id, attempt, %status, webhook = %this.name, "webhook refused");
                    }
                    Err(e) => {
                        this.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        warn!(target: "portcullis::approval", request = %id, attempt, error = %e.message, webhook = %this.name, "webhook failed");
                    }
                }
                if attempt < this.attempts {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
            }
            this.stats.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(target: "portcullis::approval", request = %id, webhook = %this.name, "webhook given up after every retry");
        });
    }
}

/// `scheme://host[:port]` of `url`, without user information, path or query (which may hold
/// a secret).
pub fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod origin_tests {
    #[test]
    fn the_origin_holds_no_secret() {
        for (url, want) in [
            (
                "https://user:pw@hooks.example.com/T0/B1/secret?token=x",
                "https://hooks.example.com",
            ),
            ("http://127.0.0.1:9000/hook", "http://127.0.0.1:9000"),
            ("https://a:b@c@host:8443?k=v", "https://host:8443"),
            ("https://host#frag", "https://host"),
        ] {
            assert_eq!(super::origin(url), want);
        }
    }
}
