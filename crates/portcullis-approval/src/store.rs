//! Where approval requests live: [`MemoryStore`] (one gateway) and, in [`crate::pg`],
//! [`PostgresStore`](crate::PostgresStore) (several replicas share one queue).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_core::Identity;
use tokio::sync::Notify;

use crate::request::{Answer, ApprovalRequest, DecideError, NewRequest, State, apply, new_id};

/// A boxed future, as the store trait returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The store failed (unreachable database, bad row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("approval store: {0}")]
pub struct StoreError(pub String);

/// An approval queue. Every implementation applies decisions with
/// [`apply`](crate::request::apply) atomically, so the rules (quorum, no self-approval,
/// approver groups) are the same for all.
pub trait ApprovalStore: Send + Sync + 'static {
    /// File a request; it gets its id here.
    fn file(&self, request: NewRequest) -> BoxFuture<'_, Result<ApprovalRequest, StoreError>>;

    /// One request by id.
    fn get<'a>(&'a self, id: &'a str)
    -> BoxFuture<'a, Result<Option<ApprovalRequest>, StoreError>>;

    /// Requests, oldest first: pending ones only, or everything still kept.
    fn list(&self, pending_only: bool) -> BoxFuture<'_, Result<Vec<ApprovalRequest>, StoreError>>;

    /// An approver's answer.
    fn decide<'a>(
        &'a self,
        id: &'a str,
        who: &'a Identity,
        answer: Answer,
    ) -> BoxFuture<'a, Result<ApprovalRequest, DecideError>>;

    /// End a pending request as `state` (expired, withdrawn); returns the request as it is
    /// afterwards — already decided if an approver was faster.
    fn close<'a>(
        &'a self,
        id: &'a str,
        state: State,
    ) -> BoxFuture<'a, Result<ApprovalRequest, StoreError>>;

    /// Completes when request `id` may have changed (a hint: callers re-read it).
    fn changed<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()>;
}

/// Wait until request `id` is no longer pending and return it.
pub async fn wait_decided(
    store: &dyn ApprovalStore,
    id: &str,
) -> Result<ApprovalRequest, StoreError> {
    loop {
        // Subscribe before reading, so a change between the read and the wait is not lost.
        let changed = store.changed(id);
        match store.get(id).await? {
            None => return Err(StoreError(format!("request {id} disappeared"))),
            Some(r) if r.state != State::Pending => return Ok(r),
            Some(_) => changed.await,
        }
    }
}

/// How long decided requests stay listable in the memory store.
const KEEP_DECIDED: Duration = Duration::from_secs(3600);

/// Requests in this process's memory: one gateway, lost at restart.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    requests: Mutex<HashMap<String, ApprovalRequest>>,
    changed: Notify,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ApprovalRequest>> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl ApprovalStore for MemoryStore {
    fn file(&self, request: NewRequest) -> BoxFuture<'_, Result<ApprovalRequest, StoreError>> {
        let filed = request.filed(new_id());
        let mut all = self.lock();
        let horizon = time::OffsetDateTime::now_utc() - KEEP_DECIDED;
        all.retain(|_, r| r.state == State::Pending || r.expires_at > horizon);
        all.insert(filed.id.clone(), filed.clone());
        Box::pin(std::future::ready(Ok(filed)))
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ApprovalRequest>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.lock().get(id).cloned())))
    }

    fn list(&self, pending_only: bool) -> BoxFuture<'_, Result<Vec<ApprovalRequest>, StoreError>> {
        let now = time::OffsetDateTime::now_utc();
        let mut out: Vec<ApprovalRequest> = self
            .lock()
            .values()
            .filter(|r| !pending_only || (r.state == State::Pending && r.expires_at >= now))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Box::pin(std::future::ready(Ok(out)))
    }

    fn decide<'a>(
        &'a self,
        id: &'a str,
        who: &'a Identity,
        answer: Answer,
    ) -> BoxFuture<'a, Result<ApprovalRequest, DecideError>> {
        let result = {
            let mut all = self.lock();
            match all.get_mut(id) {
                None => Err(DecideError::NotFound(id.to_owned())),
                Some(r) => apply(r, who, &answer).map(|()| r.clone()),
            }
        };
        self.inner.changed.notify_waiters();
        Box::pin(std::future::ready(result))
    }

    fn close<'a>(
        &'a self,
        id: &'a str,
        state: State,
    ) -> BoxFuture<'a, Result<ApprovalRequest, StoreError>> {
        let result = {
            let mut all = self.lock();
            match all.get_mut(id) {
                None => Err(StoreError(format!("no approval request {id}"))),
                Some(r) => {
                    if r.state == State::Pending {
                        r.state = state;
                    }
                    Ok(r.clone())
                }
            }
        };
        self.inner.changed.notify_waiters();
        Box::pin(std::future::ready(result))
    }

    fn changed<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, ()> {
        let notified = self.inner.changed.notified();
        Box::pin(async move {
            notified.await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Answer;
    use portcullis_core::AuthMethod;
    use portcullis_core::stall::every_poll_order;

    fn filed(store: &MemoryStore, min: u32) -> String {
        let new = crate::request::test_request(min);
        let mut filing = store.file(new);
        match filing
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(r) => r.unwrap().id,
            std::task::Poll::Pending => unreachable!("the memory store files at once"),
        }
    }

    /// A held statement's wait sees every decision, whatever the order of polls between the
    /// waiting session and the approvers (two approvals for a quorum of two, or an approval
    /// racing the request's expiry).
    #[test]
    fn a_held_statement_sees_its_decision_under_every_poll_order() {
        let approver =
            |name: &str| Identity::new(name, vec!["dba".to_owned()], AuthMethod::StaticToken);
        let schedules = every_poll_order(
            || {
                let store = MemoryStore::new();
                let id = filed(&store, 2);
                let (waiter, id_w) = (store.clone(), id.clone());
                let (first, id_1) = (store.clone(), id.clone());
                let (second, id_2) = (store, id);
                let (bob, carol) = (approver("bob"), approver("carol"));
                vec![
                    Box::pin(async move {
                        let r = wait_decided(&waiter, &id_w).await.unwrap();
                        assert_eq!(r.state, State::Approved);
                    }),
                    Box::pin(async move {
                        tokio::task::yield_now().await;
                        first.decide(&id_1, &bob, Answer::Approve).await.unwrap();
                    }),
                    Box::pin(async move {
                        second.decide(&id_2, &carol, Answer::Approve).await.unwrap();
                    }),
                ]
            },
            50,
        );
        assert!(schedules > 3, "{schedules}");
        every_poll_order(
            || {
                let store = MemoryStore::new();
                let id = filed(&store, 1);
                let (waiter, id_w) = (store.clone(), id.clone());
                let (decider, id_d) = (store.clone(), id.clone());
                let (closer, id_c) = (store, id);
                let bob = approver("bob");
                vec![
                    Box::pin(async move {
                        let r = wait_decided(&waiter, &id_w).await.unwrap();
                        assert!(matches!(r.state, State::Approved | State::Expired));
                    }),
                    Box::pin(async move {
                        let _ = decider.decide(&id_d, &bob, Answer::Approve).await;
                    }),
                    Box::pin(async move {
                        closer.close(&id_c, State::Expired).await.unwrap();
                    }),
                ]
            },
            50,
        );
    }
}
