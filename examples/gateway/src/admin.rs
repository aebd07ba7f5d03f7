//! The admin listener (`[admin] listen`): `GET /healthz` and `GET /metrics` (Prometheus
//! text format; with `[admin] metrics_token = true` it needs `Authorization: Bearer <token>`
//! of any configured identity), and the approvals API.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use portcullis_approval::WebhookStats;
use portcullis_approval::admin::Authenticator;
use portcullis_audit::Recorder;
use portcullis_identity::Oidc;
use portcullis_postgres::PgMetrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Everything `/metrics` reports, shared by the gateway and the admin server.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Listener name → the counters of every protocol server built for it. A reload builds
    /// new servers; the old ones keep counting for their sessions, so all are summed.
    listeners: Mutex<BTreeMap<String, Vec<Arc<PgMetrics>>>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_failed: AtomicBool,
    /// Set when shutdown begins: `/healthz` then answers 503 so load balancers stop
    /// sending clients while sessions drain.
    draining: AtomicBool,
    /// The audit recorder, when `[audit]` is configured.
    audit: Mutex<Option<Recorder>>,
    /// Webhook name → its delivery counters (never the URL: it may hold a secret).
    webhooks: Mutex<Vec<(String, Arc<WebhookStats>)>>,
    /// With `[admin] metrics_token`: how `/metrics` checks the caller's token.
    metrics_auth: Mutex<Option<MetricsAuth>>,
    /// The OpenID Connect provider in force, when `[identity.oidc]` is configured.
    oidc: Mutex<Option<Oidc>>,
}

/// How `/metrics` checks a token (`[admin] metrics_token`).
#[derive(Clone)]
struct MetricsAuth(Authenticator);

impl std::fmt::Debug for MetricsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsAuth")
    }
}

/// One family of per-listener counters: name, type, help, and how to read it.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    read: fn(&PgMetrics) -> u64,
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

const FAMILIES: &[Family] = &[
    Family {
        name: "portcullis_sessions_active",
        kind: "gauge",
        help: "Client sessions open now.",
        read: |m| m.sessions_active.load(Ordering::Relaxed) as u64,
    },
    Family {
        name: "portcullis_sessions_total",
        kind: "counter",
        help: "Client sessions opened (authenticated and connected upstream).",
        read: |m| load(&m.sessions_total),
    },
    Family {
        name: "portcullis_logins_refused_total",
        kind: "counter",
        help: "Connections refused before a session began (bad token, refused startup, limits, upstream failure).",
        read: |m| load(&m.logins_refused),
    },
    Family {
        name: "portcullis_commands_total",
        kind: "counter",
        help: "Command units received from clients.",
        read: |m| load(&m.commands_total),
    },
    Family {
        name: "portcullis_command_errors_total",
        kind: "counter",
        help: "Command units refused by the gateway or failed in it.",
        read: |m| load(&m.command_errors),
    },
    Family {
        name: "portcullis_bytes_from_clients_total",
        kind: "counter",
        help: "Bytes of client commands forwarded to the database.",
        read: |m| load(&m.bytes_from_clients),
    },
    Family {
        name: "portcullis_bytes_to_clients_total",
        kind: "counter",
        help: "Bytes written to clients.",
        read: |m| load(&m.bytes_to_clients),
    },
    Family {
        name: "portcullis_cancels_forwarded_total",
        kind: "counter",
        help: "Cancel requests forwarded to the database.",
        read: |m| load(&m.cancels_forwarded),
    },
    Family {
        name: "portcullis_session_panics_total",
        kind: "counter",
        help: "Sessions ended by a panic in the gateway (the process goes on serving).",
        read: |m| load(&m.session_panics),
    },
    Family {
        name: "portcullis_logins_throttled_total",
        kind: "counter",
        help: "Connections refused before login because their address had too many connections still logging in.",
        read: |m| load(&m.logins_throttled),
    },
    Family {
        name: "portcullis_sessions_stalled_total",
        kind: "counter",
        help: "Stalls: a session held data a peer could take and did not move it for longer than the stall threshold.",
        read: |m| load(&m.sessions_stalled),
    },
];

impl Metrics {
    /// Count `metrics` (a new protocol server's) under listener `name`.
    pub(crate) fn register(&self, name: &str, metrics: Arc<PgMetrics>) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .and_modify(|servers| {
                // Reconfigured servers share their listener's counters: count them once.
                if !servers.iter().any(|m| Arc::ptr_eq(m, &metrics)) {
                    servers.push(metrics.clone());
                }
            })
            .or_insert_with(|| vec![metrics]);
    }

    /// Log every live session of every listener with what it is doing (`SIGUSR1`): where
    /// each session stands when something seems stuck.
    pub(crate) fn dump_sessions(&self) {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut count = 0usize;
        for (name, servers) in &listeners {
            for server in servers {
                for status in server.board.snapshot() {
                    count += 1;
                    let s = &status.session;
                    let age = s.started_at.elapsed().unwrap_or_default().as_secs();
                    warn!(
                        target: "portcullis::sessions",
                        listener = %name,
                        session = %s.id,
                        protocol = %s.protocol,
                        identity = %s.identity.subject,
                        peer = %s.peer,
                        age_s = age,
                        state = %status.state(),
                        "session state"
                    );
                }
            }
        }
        warn!(target: "portcullis::sessions", sessions = count, "session states dumped (SIGUSR1)");
    }

    /// Record a configuration reload's outcome.
    pub(crate) fn reloaded(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.last_reload_failed.store(!ok, Ordering::Relaxed);
    }

    /// Report the audit sinks of `recorder` too.
    pub(crate) fn set_audit(&self, recorder: Recorder) {
        *self.audit.lock().unwrap_or_else(|p| p.into_inner()) = Some(recorder);
    }

    /// Shutdown has begun.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub(crate) fn render(&self) -> String {
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for family in FAMILIES {
            header(&mut out, family.name, family.kind, family.help);
            for (name, servers) in listeners.iter() {
                let value: u64 = servers.iter().map(|m| (family.read)(m)).sum();
                let _ = writeln!(
                    out,
                    "{}{{listener=\"{}\"}} {value}",
                    family.name,
                    escape_label(name)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_config_reloads_total Configuration reloads (SIGHUP), by result.\n\
             # TYPE portcullis_config_reloads_total counter\n\
             portcullis_config_reloads_total{{result=\"success\"}} {}\n\
             portcullis_config_reloads_total{{result=\"failure\"}} {}",
            load(&self.reloads_ok),
            load(&self.reloads_failed),
        );
        let _ = writeln!(
            out,
            "# HELP portcullis_config_last_reload_successful 1 unless the last reload was refused (the previous configuration stays in force).\n\
             # TYPE portcullis_config_last_reload_successful gauge\n\
             portcullis_config_last_reload_successful {}",
            u8::from(!self.last_reload_failed.load(Ordering::Relaxed)),
        );
        if let Some(recorder) = self
            .audit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            render_audit(&mut out, &recorder.stats());
        }
        if let Some(oidc) = self.oidc.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let stats = oidc.stats();
            for (name, help, value) in [
                (
                    "portcullis_oidc_tokens_accepted_total",
                    "OpenID Connect tokens accepted.",
                    load(&stats.accepted),
                ),
                (
                    "portcullis_oidc_tokens_refused_total",
                    "OpenID Connect tokens refused (any reason).",
                    load(&stats.refused),
                ),
                (
                    "portcullis_oidc_key_fetches_total",
                    "Successful fetches of the provider's signing keys.",
                    load(&stats.key_fetches),
                ),
                (
                    "portcullis_oidc_fetch_failures_total",
                    "Failed requests for the provider's discovery document or keys.",
                    load(&stats.fetch_failures),
                ),
            ] {
                header(&mut out, name, "counter", help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        let webhooks = self.webhooks.lock().unwrap_or_else(|p| p.into_inner());
        if !webhooks.is_empty() {
            let families: [WebhookFamily; 3] = [
                (
                    "portcullis_approval_webhooks_delivered_total",
                    "Approval webhook messages delivered, by webhook name.",
                    |s| load(&s.delivered),
                ),
                (
                    "portcullis_approval_webhook_failed_attempts_total",
                    "Approval webhook delivery attempts that failed (each retry counts), by webhook name.",
                    |s| load(&s.failed_attempts),
                ),
                (
                    "portcullis_approval_webhooks_dropped_total",
                    "Approval webhook messages given up after every retry, by webhook name.",
                    |s| load(&s.dropped),
                ),
            ];
            for (name, help, read) in families {
                header(&mut out, name, "counter", help);
                for (webhook, stats) in webhooks.iter() {
                    let _ = writeln!(
                        out,
                        "{name}{{webhook=\"{}\"}} {}",
                        escape_label(webhook),
                        read(stats)
                    );
                }
            }
        }
        out
    }

    /// Report the counters of `oidc` (the provider now in force).
    pub(crate) fn set_oidc(&self, oidc: Oidc) {
        *self.oidc.lock().unwrap_or_else(|p| p.into_inner()) = Some(oidc);
    }

    /// `/metrics` needs a token checked by `auth` (`None`: open, the default).
    pub(crate) fn set_metrics_auth(&self, auth: Option<Authenticator>) {
        *self.metrics_auth.lock().unwrap_or_else(|p| p.into_inner()) = auth.map(MetricsAuth);
    }

    /// Count deliveries of the webhook named `name`.
    pub(crate) fn add_webhook(&self, name: &str, stats: Arc<WebhookStats>) {
        self.webhooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), stats));
    }
}

/// One family of webhook counters: name, help, and how to read it.
type WebhookFamily = (&'static str, &'static str, fn(&WebhookStats) -> u64);

/// One family of per-sink audit counters: name, type, help, and how to read it.
type AuditFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&portcullis_audit::SinkStats) -> u64,
);

fn render_audit(out: &mut String, sinks: &[portcullis_audit::SinkStats]) {
    let families: [AuditFamily; 4] = [
        (
            "portcullis_audit_records_written_total",
            "counter",
            "Audit records written, by sink.",
            |s| s.written,
        ),
        (
            "portcullis_audit_records_lost_total",
            "counter",
            "Audit records that could not be queued or written, by sink (each reported by a gap record once the sink recovers).",
            |s| s.lost,
        ),
        (
            "portcullis_audit_queue_records",
            "gauge",
            "Audit records waiting in the sink's queue.",
            |s| s.queued,
        ),
        (
            "portcullis_audit_sink_up",
            "gauge",
            "1 unless the sink's last write failed.",
            |s| u64::from(s.up),
        ),
    ];
    for (name, kind, help, read) in families {
        header(out, name, kind, help);
        for sink in sinks {
            let _ = writeln!(
                out,
                "{name}{{sink=\"{}\"}} {}",
                escape_label(&sink.name),
                read(sink)
            );
        }
    }
}

/// A metric family's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escape a label value as the text format requires.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The admin routes.
pub(crate) fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
}

async fn healthz(State(metrics): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if metrics.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn render_metrics(
    State(metrics): State<Arc<Metrics>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let auth = metrics
        .metrics_auth
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(MetricsAuth(authenticate)) = auth {
        let refused = match portcullis_approval::admin::bearer_token(&headers) {
            None => Some("an `Authorization: Bearer <token>` header is required ([admin] metrics_token = true)\n".to_owned()),
            Some(t) => authenticate(t).err().map(|why| format!("{why}\n")),
        };
        if let Some(why) = refused {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                why,
            )
                .into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// Serve the admin routes on `listener` until `stop` fires.
///
/// Each connection is HTTP/1.1 with half-closed reads allowed: a client that pipelines
/// several requests and then shuts its side down gets every answer (a server that closes
/// at the read's end drops the requests still in its buffer). At `stop`, connections finish
/// the request in hand (2 s at most) and close.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    approvals: Router,
    stop: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let app = router(metrics).merge(approvals);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    warn!(error = %e, "the admin listener could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("admin connections still open at shutdown were closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_summed_over_servers() {
        let metrics = Metrics::default();
        let a = Arc::new(PgMetrics::default());
        let b = Arc::new(PgMetrics::default());
        a.sessions_total.store(2, Ordering::Relaxed);
        b.sessions_total.store(3, Ordering::Relaxed);
        b.sessions_active.store(1, Ordering::Relaxed);
        metrics.register("main", a);
        metrics.register("main", b);
        metrics.register("odd\"name", Arc::new(PgMetrics::default()));
        metrics.reloaded(true);
        metrics.reloaded(false);
        let text = metrics.render();
        assert!(text.contains("# TYPE portcullis_sessions_total counter\n"));
        assert!(text.contains("portcullis_sessions_total{listener=\"main\"} 5\n"));
        assert!(text.contains("portcullis_sessions_active{listener=\"main\"} 1\n"));
        assert!(text.contains("portcullis_sessions_active{listener=\"odd\\\"name\"} 0\n"));
        assert!(text.contains("portcullis_config_reloads_total{result=\"success\"} 1\n"));
        assert!(text.contains("portcullis_config_reloads_total{result=\"failure\"} 1\n"));
        assert!(text.contains("portcullis_config_last_reload_successful 0\n"));
        for family in FAMILIES {
            assert!(text.contains(&format!("# HELP {} ", family.name)));
        }
    }
}
