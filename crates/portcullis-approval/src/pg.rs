//! [`PostgresStore`]: one approval queue shared by several gateway replicas. A request filed
//! on replica A can be approved through replica B's admin API; waiters learn of decisions
//! through `LISTEN`/`NOTIFY` (with a slow re-read as a safety net).

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::Identity;
use tokio::sync::{Mutex, Notify};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tracing::warn;

use crate::request::{Answer, ApprovalRequest, DecideError, NewRequest, State, apply, new_id};
use crate::store::{ApprovalStore, BoxFuture, StoreError};

/// The `NOTIFY` channel.
const CHANNEL: &str = "portcullis_approvals";
/// Waiters re-read at least this often, in case a notification was missed (listener
/// reconnecting).
const REREAD: Duration = Duration::from_secs(2);

/// Approval requests in a PostgreSQL table (created if missing), shared by replicas.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<PgInner>,
}

struct PgInner {
    url: String,
    table: String,
    client: Mutex<Option<Client>>,
    changed: Notify,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl PostgresStore {
    /// Connect to `url` (a `postgres://` URL), create `table` if missing, and start listening
    /// for decisions. Fails when the database cannot be reached.
    pub async fn connect(url: &str, table: &str) -> Result<Self, StoreError> {
        if table.is_empty()
            || !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(StoreError(format!(
                "table name {table:?}: letters, digits, `_` and `.` only"
            )));
        }
        let store = PostgresStore {
            inner: Arc::new(PgInner {
                url: url.to_owned(),
                table: table.to_owned(),
                client: Mutex::new(None),
                changed: Notify::new(),
            }),
        };
        let client = store.open().await?;
        client
            .batch_execute(&format!(
                "create table if not exists {table} (
                    id text primary key,
                    state text not null,
                    created_at timestamptz not null,
                    body jsonb not null)"
            ))
            .await
            .map_err(err)?;
        *store.inner.client.lock().await = Some(client);
        store.listen().await?;
        Ok(store)
    }

    async fn open(&self) -> Result<Client, StoreError> {
        let (client, conn) = tokio_postgres::connect(&self.inner.url, NoTls)
            .await
            .map_err(err)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                warn!(target: "portcullis::approval", error = %e, "approval store connection ended");
            }
        });
        Ok(client)
    }

    /// A connection of its own that `LISTEN`s and wakes waiters on every notification;
    /// reconnects after a failure, and stops when the store is dropped.
    async fn listen(&self) -> Result<(), StoreError> {
        let first = tokio_postgres::connect(&self.inner.url, NoTls)
            .await
            .map_err(err)?;
        let weak = Arc::downgrade(&self.inner);
        let url = self.inner.url.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                let connected = match next.take() {
                    Some(c) => Ok(c),
                    None => tokio_postgres::connect(&url, NoTls).await,
                };
                match connected {
                    Ok((client, mut conn)) => {
                        let w = weak.clone();
                        let mut driver = tokio::spawn(async move {
                            loop {
                                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                                    Some(Ok(AsyncMessage::Notification(_))) => match w.upgrade() {
                                        Some(inner) => inner.changed.notify_waiters(),
                                        None => return,
                                    },
                                    Some(Ok(_)) => {}
                                    Some(Err(e)) => {
                                        warn!(target: "portcullis::approval", error = %e, "approval store listener failed; reconnecting");
                                        return;
                                    }
                                    None => return,
                                }
                            }
                        });
                        if client
                            .batch_execute(&format!("listen {CHANNEL}"))
                            .await
                            .is_ok()
                            && let Some(inner) = weak.upgrade()
                        {
                            // Anything decided while not listening is re-read now.
                            inner.changed.notify_waiters();
                        }
                        loop {
                            tokio::select! {
                                _ = &mut driver => break,
                                () = tokio::time::sleep(REREAD) => {
                                    if weak.strong_count() == 0 {
                                        driver.abort();
                                        return;
                                    }
                                }
                            }
                        }
                        drop(client);
                    }
                    Err(e) => {
                        warn!(target: "portcullis::approval", error = %e, "approval store listener cannot connect; retrying");
                    }
                }
                tokio::time::sleep(REREAD).await;
                if weak.strong_count() == 0 {
                    return;
                }
            }
        });
        Ok(())
    }

    /// The store's connection in `slot`, opened again when it is missing or closed.
    async fn connected<'a>(
        &self,
        slot: &'a mut Option<Client>,
    ) -> Result<&'a mut Client, StoreError> {
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.open().await?);
        }
        slot.as_mut()
            .ok_or_else(|| StoreError("no connection".into()))
    }

    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = self.inner.client.lock().await;
        let client = self.connected(&mut slot).await?;
        f(client).await.map_err(err)
    }

    fn row(body: serde_json::Value) -> Result<ApprovalRequest, StoreError> {
        serde_json::from_value(body).map_err(|e| StoreError(format!("bad request row: {e}")))
    }
}

impl ApprovalStore for PostgresStore {
    fn file(&self, request: NewRequest) -> BoxFuture<'_, Result<ApprovalRequest, StoreError>> {
        Box::pin(async move {
            let filed = request.filed(new_id());
            let body = serde_json::to_value(&filed).map_err(err)?;
            let sql = format!(
                "insert into {} (id, state, created_at, body) values ($1, $2, now(), $3)",
                self.inner.table
            );
            self.with_client(async |c| {
                c.execute(&sql, &[&filed.id, &filed.state.name(), &body])
                    .await
            })
            .await?;
            Ok(filed)
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ApprovalRequest>, StoreError>> {
        Box::pin(async move {
            let sql = format!("select body from {} where id = $1", self.inner.table);
            let row = self
                .with_client(async |c| c.query_opt(&sql, &[&id]).await)
                .await?;
            row.map(|r| Self::row(r.get(0))).transpose()
        })
    }

    fn list(&self, pending_only: bool) -> BoxFuture<'_, Result<Vec<ApprovalRequest>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "select body from {} where $1 = false or (state = 'pending' and (body->>'expires_at')::timestamptz >= now()) order by created_at, id",
                self.inner.table
            );
            let rows = self
                .with_client(async |c| c.query(&sql, &[&pending_only]).await)
                .await?;
            rows.into_iter().map(|r| Self::row(r.get(0))).collect()
        })
    }

    fn decide<'a>(
        &'a self,
        id: &'a str,
        who: &'a Identity,
        answer: Answer,
    ) -> BoxFuture<'a, Result<ApprovalRequest, DecideError>> {
        Box::pin(async move {
            let result = self.update(id, |r| apply(r, who, &answer)).await;
            match result {
                Ok(Some(Ok(r))) => Ok(r),
                Ok(Some(Err(e))) => Err(e),
                Ok(None) => Err(DecideError::NotFound(id.to_owned())),
                Err(e) => Err(DecideError::Store(e.0)),
            }
        })
    }

    fn close<'a>(
        &'a self,
        id: &'a str,
        state: State,
    ) -> BoxFuture<'a, Result<ApprovalRequest, StoreError>> {
        Box::pin(async move {
            let updated = self
                .update(id, |r| {
                    if r.state == State::Pending {
                        r.state = state.clone();
                    }
                    Ok::<(), DecideError>(())
                })
                .await?;
            match updated {
                Some(Ok(r)) => Ok(r),
                Some(Err(e)) => Err(StoreError(e.to_string())),
                None => Err(StoreError(format!("no approval request {id}"))),
            }
        })
    }

    fn changed<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, ()> {
        let notified = self.inner.changed.notified();
        Box::pin(async move {
            // The listener wakes us; the timeout covers a notification lost while it
            // reconnects.
            let _ = tokio::time::timeout(REREAD, notified).await;
        })
    }
}

impl PostgresStore {
    /// Read, change and write one request in a transaction (`for update`), then notify
    /// every replica. `None` when there is no such request.
    async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut ApprovalRequest) -> Result<(), DecideError>,
    ) -> Result<Option<Result<ApprovalRequest, DecideError>>, StoreError> {
        let table = &self.inner.table;
        let mut slot = self.inner.client.lock().await;
        let client = self.connected(&mut slot).await?;
        let tx = client.transaction().await.map_err(err)?;
        let row = tx
            .query_opt(
                &format!("select body from {table} where id = $1 for update"),
                &[&id],
            )
            .await
            .map_err(err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut request = Self::row(row.get(0))?;
        if let Err(e) = change(&mut request) {
            tx.rollback().await.map_err(err)?;
            return Ok(Some(Err(e)));
        }
        let body = serde_json::to_value(&request).map_err(err)?;
        tx.execute(
            &format!("update {table} set state = $2, body = $3 where id = $1"),
            &[&id, &request.state.name(), &body],
        )
        .await
        .map_err(err)?;
        tx.execute("select pg_notify($1, $2)", &[&CHANNEL, &id])
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        self.inner.changed.notify_waiters();
        Ok(Some(Ok(request)))
    }
}
