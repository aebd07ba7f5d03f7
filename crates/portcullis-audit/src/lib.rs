//! Session recording that proves it is complete and unaltered: the audit event schema,
//! [`AuditLayer`], hash-chained sinks with signed checkpoints, and offline verification.
//!
//! - [`AuditLayer`] sits outermost in a session's command stack: it records the session's
//!   start and end, every command *before* it runs (write-ahead, with
//!   [`OnFailure::Refuse`]), exactly one outcome per command, the decisions inner layers
//!   report, and the session's event stream.
//! - A [`Recorder`] fans records out to sinks — tower `Service<AuditBatch>`s, each on its
//!   own thread behind a bounded queue: [`JsonlSink`] (append-only file, SHA-256 chain,
//!   Ed25519 checkpoints, rotation, restart continuity), [`PostgresSink`] (a table you can
//!   query), [`StdoutSink`].
//! - [`verify_files`] checks a trail offline and names the first record that was altered,
//!   removed, reordered, inserted or cut off; [`show`] renders it as a timeline.
//!
//! The record format is documented in `docs/audit.md`.
//!
//! # Example
//!
//! Record into a JSONL file, then verify it:
//!
//! ```
//! use portcullis_audit::{
//!     AuditEvent, JsonlOptions, JsonlSink, OnFailure, Recorder, SinkOptions, SigningKey,
//!     VerifyOptions, trail_files, verify_files,
//! };
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("audit.jsonl");
//! let (key, _seed_hex) = SigningKey::generate()?;
//! let public = key.public_hex().to_owned();
//!
//! let mut options = JsonlOptions::new(&path);
//! options.key = Some(Arc::new(key));
//! let recorder = Recorder::builder(OnFailure::Refuse)
//!     .sink(SinkOptions::new("jsonl"), JsonlSink::open(options)?)
//!     .start()?;
//! // The gateway wires `AuditLayer::new(&recorder, &session)` into each session's stack and
//! // `recorder.connection_observer()` into each listener; here, one event by hand.
//! recorder.emit(AuditEvent::Gap(portcullis_audit::event::Gap {
//!     lost: 0,
//!     since: "2026-11-28T00:00:00Z".into(),
//!     reason: "example".into(),
//! }));
//! recorder.close(Duration::from_secs(5)).await; // seals the trail
//!
//! let report = verify_files(
//!     &trail_files(&path)?,
//!     &VerifyOptions { key: Some(public), ..VerifyOptions::default() },
//! )?;
//! assert!(report.intact(), "{:?}", report.problem);
//! assert!(report.sealed);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod chain;
pub mod event;
mod jsonl;
mod layer;
mod recorder;
mod show;
mod sinks;
mod verify;

pub use chain::{KeyError, SigningKey};
pub use event::AuditEvent;
pub use jsonl::{Fsync, JsonlOptions, JsonlSink, LostRecords, OpenError, SharedJsonl, trail_files};
pub use layer::{Audit, AuditBody, AuditLayer, ResponseFuture};
pub use recorder::{
    AuditBatch, Flush, InlineSink, OnFailure, Recorder, RecorderBuilder, SinkOptions, SinkStats,
    Stamped,
};
pub use show::{ShowOptions, show};
pub use sinks::{PostgresOptions, PostgresSink, StdoutSink, TableNameError};
pub use verify::{Location, Problem, Report, VerifyOptions, verify_files, verify_records};
