//! An in-house service that builds its own PostgreSQL proxy from the Portcullis crates: only
//! identity (static tokens) and the audit trail, nothing else — no policy, no masking. Each
//! session's stack is put together with tower's `ServiceBuilder`; add any layer of your own.
//!
//! Run with (a PostgreSQL on 127.0.0.1:5432 that `app`/`secret` can log in to):
//!
//! ```text
//! EMBED_UPSTREAM=127.0.0.1:5432 EMBED_USER=app EMBED_PASSWORD=secret EMBED_TOKEN=let-me-in \
//!     cargo run -p portcullis-example-embed
//! PGPASSWORD=let-me-in psql "host=127.0.0.1 port=6543 dbname=app user=me" -c "select 1"
//! ```
//!
//! Expected output: a `listening` line on stderr, then one hash-chained JSON audit record per
//! line on stdout (session start, the command, its outcome, session end; a sealing checkpoint
//! on Ctrl-C):
//!
//! ```text
//! embed: listening on 127.0.0.1:6543, upstream 127.0.0.1:5432
//! {"v":1,"seq":0,"ts":"…","type":"session_start","session":"bc28f78f71cc0000","sseq":1,"identity":"embed-client",…}
//! {"v":1,"seq":1,"ts":"…","type":"command",…,"kind":"statements","statements":[{"text":"select 1"}],…}
//! {"v":1,"seq":2,"ts":"…","type":"outcome",…,"status":"ok","rows":1,"tag":"SELECT 1",…}
//! {"v":1,"seq":3,"ts":"…","type":"session_end",…,"reason":"the client terminated the session",…}
//! {"v":1,"seq":4,"ts":"…","type":"checkpoint","reason":"shutdown",…}
//! ```
#![forbid(unsafe_code)]

use std::sync::Arc;

use portcullis_audit::{AuditLayer, OnFailure, Recorder, SinkOptions, StdoutSink};
use portcullis_core::{NewLayered, Session};
use portcullis_identity::{StaticTokens, TokenEntry, hash_token};
use portcullis_postgres::{ServePg, ServePgConfig, UpstreamConfig};
use tower::ServiceBuilder;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = env("EMBED_LISTEN", "127.0.0.1:6543");
    let upstream = env("EMBED_UPSTREAM", "127.0.0.1:5432");
    let (host, port) = upstream
        .rsplit_once(':')
        .ok_or("EMBED_UPSTREAM must be HOST:PORT")?;
    let token = std::env::var("EMBED_TOKEN").map_err(|_| "set EMBED_TOKEN, the clients' token")?;

    // Who may connect: one static token, recorded as identity "embed-client".
    let tokens = StaticTokens::new(vec![TokenEntry::new(
        "embed-client",
        &hash_token(&token),
        vec!["apps".into()],
    )?]);

    // Where to: the database, with credentials only this service holds.
    let database = UpstreamConfig::new(
        host,
        port.parse()?,
        env("EMBED_USER", "app"),
        env("EMBED_PASSWORD", ""),
    );
    let mut config = ServePgConfig::new("embedded", database);
    config.allow_plaintext_tokens_on_loopback = true; // add `config.tls` for remote clients

    // The audit trail: hash-chained JSON lines on stdout (JsonlSink or PostgresSink in production).
    let recorder = Recorder::builder(OnFailure::Refuse)
        .sink(SinkOptions::new("stdout"), StdoutSink::default())
        .start()?;

    // Each session's command stack, outermost first. Add your own layers here.
    let audit = recorder.clone();
    let stack = NewLayered::new(move |session: &Arc<Session>| {
        ServiceBuilder::new().layer(AuditLayer::new(&audit, session))
    });
    let server = ServePg::new(config, tokens, stack)
        .with_connection_observer(recorder.connection_observer());

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!(
        "embed: listening on {}, upstream {upstream}",
        listener.local_addr()?
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = accepted?;
                tcp.set_nodelay(true)?;
                tokio::spawn(server.serve_connection(tcp, peer));
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Seal the trail before leaving.
    recorder.close(std::time::Duration::from_secs(5)).await;
    Ok(())
}
