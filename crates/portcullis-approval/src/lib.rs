//! Per-statement human approval for the Portcullis gateway.
//!
//! A guard rule with `action = "approve"` puts a [`Verdict::Approve`] in the command's
//! request extensions; the [`ApprovalLayer`] (inside the guard) then files an
//! [`ApprovalRequest`] in an [`ApprovalStore`], tells the waiting client (PostgreSQL:
//! a `NOTICE` with the request id and how to approve), notifies people ([`WebhookNotifier`]),
//! and waits — for enough approvers, a denial, the timeout, or the client's cancel — holding
//! nothing of the inner service meanwhile. Approved, the exact command runs once; otherwise it
//! is refused (`42501` naming who denied, `57014` on timeout or cancel), in place when the
//! protocol can, so the database's transaction state follows.
//!
//! Requests are bound to one session and one exact command; nobody approves their own; an
//! approver must be in one of the rule's `approvers` groups; `min_approvals` sets a quorum.
//! [`MemoryStore`] serves one gateway; [`PostgresStore`] lets several replicas share a queue.
//! [`admin::routes`] serves the approvals API; [`AdminClient`] calls it.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use portcullis_approval::{Answer, ApprovalStore, MemoryStore, NewRequest, Requester, State};
//! use portcullis_core::{AuthMethod, Identity};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let filed = store
//!     .file(NewRequest {
//!         identity: Requester::of(&Identity::new("alice", vec![], AuthMethod::StaticToken)),
//!         session: 7,
//!         target: "app".into(),
//!         statement: "delete from orders".into(),
//!         params: vec![],
//!         rule: "unbounded-writes".into(),
//!         approvers: vec!["dba".into()],
//!         min_approvals: 1,
//!         timeout: Duration::from_secs(300),
//!     })
//!     .await
//!     .unwrap();
//! let dana = Identity::new("dana", vec!["dba".into()], AuthMethod::StaticToken);
//! let decided = store.decide(&filed.id, &dana, Answer::Approve).await.unwrap();
//! assert_eq!(decided.state, State::Approved);
//! # });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
mod client;
mod layer;
mod notify;
mod pg;
mod request;
mod store;

pub use client::{AdminClient, AdminError};
pub use layer::{Approval, ApprovalLayer, ResponseFuture};
pub use notify::{Notifier, WebhookNotifier, WebhookStats, origin};
pub use pg::PostgresStore;
pub use portcullis_core::Verdict;
pub use portcullis_core::http_client::{ClientError, Trust};
pub use request::{
    Answer, ApprovalRequest, DecideError, NewRequest, Requester, State, apply, may_decide, new_id,
};
pub use store::{ApprovalStore, BoxFuture, MemoryStore, StoreError, wait_decided};
