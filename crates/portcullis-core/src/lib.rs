//! The shared vocabulary of the Portcullis gateway: who is connected ([`Session`],
//! [`Identity`]), what they asked ([`Request`], [`CommandView`]), what came back
//! ([`Response`], [`ReplyBody`], [`EventView`]), what policy decided ([`Verdict`]) and how a
//! refusal becomes the client's own error ([`Refusal`], [`rescue`]).
//!
//! Protocol crates (PostgreSQL, MySQL, HTTP) produce these types; policy layers (identity,
//! guard, approval, mask, audit) consume them. Neither side knows the other: a policy layer is
//! written once against the views here and works for every protocol.
//!
//! This crate does no I/O.
//!
//! # Example
//!
//! A policy layer reads the statements of a command through [`CommandView`], whatever the
//! protocol:
//!
//! ```
//! use portcullis_core::{CommandKind, CommandView, Statement, Verdict};
//!
//! // A protocol crate's command type; here a minimal one for the example.
//! struct Sql(String);
//! impl CommandView for Sql {
//!     fn kind(&self) -> CommandKind { CommandKind::Statements }
//!     fn statements(&self) -> Vec<Statement<'_>> { vec![Statement::text(&self.0)] }
//! }
//!
//! fn no_drop(command: &impl CommandView) -> Verdict {
//!     let drops = command
//!         .statements()
//!         .iter()
//!         .any(|s| s.text.trim_start().to_ascii_lowercase().starts_with("drop"));
//!     if drops {
//!         Verdict::deny("no-drop", "DROP is not allowed through the gateway")
//!     } else {
//!         Verdict::Allow
//!     }
//! }
//!
//! assert_eq!(no_drop(&Sql("select 1".into())), Verdict::Allow);
//! assert!(matches!(no_drop(&Sql("DROP TABLE t".into())), Verdict::Deny { .. }));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod cancel;
mod catalog;
mod credentials;
mod error;
mod glob;
#[cfg(feature = "http-client")]
pub mod http_client;
pub mod io;
pub mod listener;
mod message;
mod notice;
mod refuse;
mod reply;
mod rows;
mod session;
mod stack;
pub mod stall;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "tls")]
pub mod upstream;
mod verdict;
mod view;

pub use cancel::{CancelSignal, Cancelled};
pub use catalog::{
    CatalogLookup, FunctionFacts, ImplicitCall, LookupFuture, RelationFacts, SchemaCatalog,
};
pub use credentials::{Credentials, bearer_token};
pub use error::{Error, Refusal, Rescue, RescueKind, rescue};
pub use glob::wildcard;
pub use message::{Request, Response, Upload, UploadSender, upload_channel};
pub use notice::{ClientNotice, Notices};
pub use refuse::{RefuseInPlace, RefusedInPlace, Refusing};
pub use reply::{BoxReply, Empty, ReplyBody, ReplyBodyExt};
pub use rows::{BodyPiece, BodyStart, Column, CopyLayout, RewriteEvent, TextRedactor, ValueKind};
pub use session::{
    AuthMethod, ConnectionEvent, ConnectionEventKind, ConnectionObserver, Identity, OwnConnections,
    Protocol, Session, SessionId,
};
pub use stack::{NewLayered, NewService, NewServiceFn, Target, new_service_fn};
pub use verdict::{Decision, DecisionLog, Decisions, Verdict};
pub use view::{CommandKind, CommandView, EventKind, EventView, Param, Statement};

/// Re-exported so layers can name the extension map of [`Request`] and [`Response`].
pub use http::Extensions;
