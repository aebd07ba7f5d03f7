//! A policy layer of your own, in one file: "no queries on weekends for group `contractors`",
//! stacked with Portcullis' own layers — audit outermost, then this rule, the guard (a no-DROP
//! rule) and masking — in front of PostgreSQL.
//!
//! The layer refuses *in place* (`Refusing::refuse`): the database runs a failing substitute
//! instead, so inside a transaction both sides end in the same failed state, and the audit
//! trail records the command as refused by rule "no-weekends".
//!
//! Run with (a PostgreSQL on 127.0.0.1:5432 that `app`/`secret` can log in to):
//!
//! ```text
//! LAYER_UPSTREAM=127.0.0.1:5432 LAYER_USER=app LAYER_PASSWORD=secret LAYER_TODAY=saturday \
//!     cargo run -p portcullis-example-custom-layer
//! PGPASSWORD=contractor-token psql "host=127.0.0.1 port=6544 dbname=app user=c" -c "select 1"
//! PGPASSWORD=staff-token psql "host=127.0.0.1 port=6544 dbname=app user=s" -c "select 1"
//! ```
//!
//! Expected output: the contractor gets
//! `ERROR:  blocked by rule "no-weekends": contractors do not query on weekends (today is Saturday)`,
//! the staff member gets `1`. Without `LAYER_TODAY` the real day (UTC) decides.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_audit::{AuditLayer, OnFailure, Recorder, SinkOptions, StdoutSink};
use portcullis_core::{
    CommandKind, CommandView, Error, NewLayered, Refusal, RefuseInPlace, Refusing, Request,
    Response, Session,
};
use portcullis_identity::{StaticTokens, TokenEntry, hash_token};
use portcullis_mask::{Detectors, MaskLayer, MaskPolicy, Masker, Strategy};
use portcullis_policy::{Action, GuardLayer, Policy, Rule};
use portcullis_postgres::{ServePg, ServePgConfig, UpstreamConfig};
use tower::{Layer, Service, ServiceBuilder};

const DAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// Today's name: `LAYER_TODAY` if set (for trying it out on a weekday), else from the clock.
fn today() -> String {
    if let Ok(day) = std::env::var("LAYER_TODAY") {
        let mut chars = day.chars();
        return chars
            .next()
            .map_or(String::new(), |c| c.to_uppercase().chain(chars).collect());
    }
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    DAYS[(days % 7) as usize].to_owned() // 1970-01-01 was a Thursday
}

/// The rule: commands of identities in `group` are refused on Saturdays and Sundays.
#[derive(Clone)]
struct NoWeekendsLayer {
    group: String,
}

impl<S> Layer<S> for NoWeekendsLayer {
    type Service = NoWeekends<S>;
    fn layer(&self, inner: S) -> NoWeekends<S> {
        NoWeekends {
            inner,
            group: self.group.clone(),
        }
    }
}

#[derive(Clone)]
struct NoWeekends<S> {
    inner: S,
    group: String,
}

impl<S, C, B> Service<Request<C>> for NoWeekends<S>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error>,
    C: CommandView + RefuseInPlace,
{
    type Response = Response<B>;
    type Error = Error;
    type Future = Refusing<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<C>) -> Self::Future {
        // Only statements: the session's events and its goodbye always pass.
        let statement = matches!(req.command.kind(), CommandKind::Statements);
        let day = today();
        if statement
            && req.session.identity.in_group(&self.group)
            && matches!(day.as_str(), "Saturday" | "Sunday")
        {
            let refusal = Refusal::Blocked {
                rule: "no-weekends".into(),
                message: format!("{} do not query on weekends (today is {day})", self.group),
            };
            return Refusing::refuse(&mut self.inner, req, refusal);
        }
        Refusing::pass(self.inner.call(req))
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = env("LAYER_LISTEN", "127.0.0.1:6544");
    let upstream = env("LAYER_UPSTREAM", "127.0.0.1:5432");
    let (host, port) = upstream
        .rsplit_once(':')
        .ok_or("LAYER_UPSTREAM must be HOST:PORT")?;
    let tokens = StaticTokens::new(vec![
        TokenEntry::new(
            "carol",
            &hash_token(&env("LAYER_CONTRACTOR_TOKEN", "contractor-token")),
            vec!["contractors".into()],
        )?,
        TokenEntry::new(
            "sam",
            &hash_token(&env("LAYER_STAFF_TOKEN", "staff-token")),
            vec!["staff".into()],
        )?,
    ]);
    let database = UpstreamConfig::new(
        host,
        port.parse()?,
        env("LAYER_USER", "app"),
        env("LAYER_PASSWORD", ""),
    );
    let mut config = ServePgConfig::new("custom", database);
    config.allow_plaintext_tokens_on_loopback = true;

    let recorder = Recorder::builder(OnFailure::Refuse)
        .sink(SinkOptions::new("stdout"), StdoutSink::default())
        .start()?;
    let guard = GuardLayer::new(Policy::new(vec![
        Rule::new("no-drop", Action::Deny).statements(["drop"]),
    ])?);
    let mask = MaskLayer::new(MaskPolicy::new(
        Masker::new(Detectors::all(), Strategy::Partial),
        Vec::new(),
    ));
    let no_weekends = NoWeekendsLayer {
        group: "contractors".into(),
    };

    // Outermost first: audit sees every command and every refusal, including this rule's.
    let audit = recorder.clone();
    let stack = NewLayered::new(move |session: &Arc<Session>| {
        ServiceBuilder::new()
            .layer(AuditLayer::new(&audit, session))
            .layer(no_weekends.clone())
            .layer(guard.clone())
            .layer(mask.clone())
    });
    let server = ServePg::new(config, tokens, stack);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!(
        "custom-layer: listening on {}, today is {}",
        listener.local_addr()?,
        today()
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = accepted?;
                tokio::spawn(server.serve_connection(tcp, peer));
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    recorder.close(std::time::Duration::from_secs(5)).await;
    Ok(())
}
