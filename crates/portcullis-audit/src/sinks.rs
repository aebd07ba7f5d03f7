//! The PostgreSQL sink (queryable with SQL) and the stdout sink (development).

use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use portcullis_core::Error;
use tokio::sync::Mutex;
use tower_service::Service;
use tracing::{info, warn};

use crate::chain::{ChainState, SigningKey, parse_line};
use crate::event::{AuditEvent, TrailStart};
use crate::recorder::{AuditBatch, Flush};

/// Settings of a [`PostgresSink`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// A libpq-style URL or key-value string (`postgres://audit@127.0.0.1/audit`).
    pub url: String,
    /// The table (`name` or `schema.name`), created if absent.
    pub table: String,
    /// How often to write a checkpoint while records arrive.
    pub checkpoint_interval: Duration,
    /// The key that signs checkpoints.
    pub key: Option<Arc<SigningKey>>,
}

/// A table name is not `name` or `schema.name` of plain identifiers.
#[derive(Debug, thiserror::Error)]
#[error("invalid table name \"{0}\": use letters, digits and _ (optionally schema.table)")]
pub struct TableNameError(String);

impl PostgresOptions {
    /// Options for `url`, table `portcullis_audit`, checkpoints every 10 s.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            table: "portcullis_audit".into(),
            checkpoint_interval: Duration::from_secs(10),
            key: None,
        }
    }

    /// Check a table name: it is spliced into SQL, so only plain identifiers pass.
    pub fn check_table(table: &str) -> Result<(), TableNameError> {
        let ident = |s: &str| {
            let mut chars = s.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && s.len() <= 63
        };
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() <= 2 && parts.iter().all(|p| ident(p)) {
            Ok(())
        } else {
            Err(TableNameError(table.to_owned()))
        }
    }
}

struct PgState {
    options: PostgresOptions,
    client: Option<tokio_postgres::Client>,
    chain: ChainState,
    opening: Option<AuditEvent>,
    last_seal: Instant,
}

/// The PostgreSQL sink: batched inserts, over its own connection, into a table with the
/// same chain fields as the JSONL file (`seq`, `ts`, `type`, `session`, `sseq`, the record
/// as `jsonb`, and the exact `line` the hashes cover, so `verify_records` can check it).
///
/// TLS to the audit database is not supported yet: use a local or otherwise protected link.
#[derive(Clone)]
pub struct PostgresSink {
    state: Arc<Mutex<PgState>>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink").finish_non_exhaustive()
    }
}

impl PostgresSink {
    /// A sink; it connects (and creates its table) at its first batch, and again after a
    /// failure.
    pub fn new(options: PostgresOptions) -> Result<Self, TableNameError> {
        PostgresOptions::check_table(&options.table)?;
        Ok(PostgresSink {
            state: Arc::new(Mutex::new(PgState {
                options,
                client: None,
                chain: ChainState::genesis(),
                opening: None,
                last_seal: Instant::now(),
            })),
        })
    }
}

impl PgState {
    async fn connect(&mut self) -> Result<(), Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.options.url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(target: "portcullis::audit", error = %e, "audit database connection ended");
            }
        });
        let table = &self.options.table;
        client
            .batch_execute(&format!(
                "create table if not exists {table} (
                    seq bigint primary key,
                    ts timestamptz not null,
                    type text not null,
                    session text,
                    sseq bigint,
                    record jsonb not null,
                    line text not null
                )"
            ))
            .await?;
        let last = client
            .query_opt(
                &format!("select line from {table} order by seq desc limit 1"),
                &[],
            )
            .await?;
        let (chain, previous_sealed) = match last {
            None => (ChainState::genesis(), None),
            Some(row) => {
                let line: String = row.try_get(0)?;
                let parsed = parse_line(line.as_bytes())
                    .map_err(|e| format!("the last record in {table} cannot be continued: {e}"))?;
                (
                    ChainState::after(&parsed),
                    Some(parsed.event.closes_trail()),
                )
            }
        };
        let reason = if chain.next_seq == 0 {
            "new"
        } else {
            "restart"
        };
        self.opening = Some(AuditEvent::TrailStart(TrailStart::opened(
            reason,
            previous_sealed,
            None,
        )));
        self.chain = chain;
        self.client = Some(client);
        info!(target: "portcullis::audit", table = %table, next_seq = self.chain.next_seq, "audit table ready");
        Ok(())
    }

    async fn write(&mut self, batch: AuditBatch) -> Result<(), Error> {
        if self.client.is_none() {
            self.connect().await?;
        }
        let before = self.chain.clone();
        let opening = self.opening.clone();
        let result = self.insert(&batch).await;
        if result.is_err() {
            // Nothing was inserted (one statement): roll the chain back and reconnect next time.
            self.chain = before;
            self.opening = opening;
            self.client = None;
        }
        result
    }

    async fn insert(&mut self, batch: &AuditBatch) -> Result<(), Error> {
        let mut rows = Rows::default();
        let now = SystemTime::now();
        if let Some(opening) = self.opening.take() {
            rows.push(&mut self.chain, now, &opening)?;
        }
        for r in &batch.records {
            rows.push(&mut self.chain, r.at, &r.event)?;
        }
        let seal = if batch.flush == Flush::Shutdown {
            Some("shutdown")
        } else if self.chain.unsealed > 0
            && self.last_seal.elapsed() >= self.options.checkpoint_interval
        {
            Some("interval")
        } else {
            None
        };
        if let Some(reason) = seal {
            let mut line = Vec::new();
            let seq = self.chain.next_seq;
            let ts = self
                .chain
                .seal(&mut line, now, reason, self.options.key.as_deref());
            rows.push_line(seq, ts, "checkpoint", None, line)?;
        }
        if rows.seq.is_empty() {
            return Ok(());
        }
        let Some(client) = &self.client else {
            return Err("not connected to the audit database".into());
        };
        let table = &self.options.table;
        client
            .execute(
                &format!(
                    "insert into {table} (seq, ts, type, session, sseq, record, line)
                     select s, t::timestamptz, ty, se, ss, l::jsonb, l
                     from unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[])
                       as u(s, t, ty, se, ss, l)"
                ),
                &[&rows.seq, &rows.ts, &rows.kind, &rows.session, &rows.sseq, &rows.line],
            )
            .await?;
        if seal.is_some() {
            self.last_seal = Instant::now();
        }
        Ok(())
    }
}

#[derive(Default)]
struct Rows {
    seq: Vec<i64>,
    ts: Vec<String>,
    kind: Vec<String>,
    session: Vec<Option<String>>,
    sseq: Vec<Option<i64>>,
    line: Vec<String>,
}

impl Rows {
    fn push(
        &mut self,
        chain: &mut ChainState,
        at: SystemTime,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        let seq = chain.next_seq;
        let mut line = Vec::new();
        let ts = chain.append(&mut line, at, event);
        let session = event.session().map(|s| (s.session.to_string(), s.sseq));
        self.push_line(seq, ts, event.kind(), session, line)
    }

    fn push_line(
        &mut self,
        seq: u64,
        ts: String,
        kind: &str,
        session: Option<(String, u64)>,
        mut line: Vec<u8>,
    ) -> Result<(), Error> {
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        self.seq.push(i64::try_from(seq)?);
        self.ts.push(ts);
        self.kind.push(kind.to_owned());
        self.sseq.push(
            session
                .as_ref()
                .map(|(_, n)| i64::try_from(*n).unwrap_or(i64::MAX)),
        );
        self.session.push(session.map(|(s, _)| s));
        self.line.push(String::from_utf8(line)?);
        Ok(())
    }
}

impl Service<AuditBatch> for PostgresSink {
    type Response = ();
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: AuditBatch) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { state.lock().await.write(batch).await })
    }
}

/// Writes chained records to standard output, for development.
#[derive(Debug)]
pub struct StdoutSink {
    chain: ChainState,
    buf: Vec<u8>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink {
            chain: ChainState::genesis(),
            buf: Vec::new(),
        }
    }
}

impl Service<AuditBatch> for StdoutSink {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<(), Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: AuditBatch) -> Self::Future {
        self.buf.clear();
        for r in &batch.records {
            self.chain.append(&mut self.buf, r.at, &r.event);
        }
        if batch.flush == Flush::Shutdown {
            self.chain
                .seal(&mut self.buf, SystemTime::now(), "shutdown", None);
        }
        let result = if self.buf.is_empty() {
            Ok(())
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&self.buf).and_then(|()| out.flush())
        };
        std::future::ready(result.map_err(Error::from))
    }
}
