//! PostgreSQL for the Portcullis gateway: the protocol 3 codec (both directions), the
//! client-side server [`ServePg`] (TLS, startup, token authentication, cancel), the upstream
//! connector (TLS modes, SCRAM-SHA-256, MD5, cleartext) and [`PgUpstream`], the innermost
//! service of each session's command stack.
//!
//! Frames no layer changes are forwarded as the client's or database's original bytes;
//! memory per session is bounded by the largest message; the gateway reads from the database
//! only as fast as the client takes the reply.
//!
//! # Example
//!
//! Decoding what a client sends, as the gateway does:
//!
//! ```
//! use bytes::BytesMut;
//! use portcullis_postgres::codec::{decode_frame, FrontendMessage, DEFAULT_MAX_MESSAGE};
//!
//! let mut wire = BytesMut::new();
//! FrontendMessage::Query { sql: "select 1".into() }.encode(&mut wire);
//!
//! let frame = decode_frame(&mut wire, DEFAULT_MAX_MESSAGE).unwrap().unwrap();
//! assert_eq!(frame.tag(), b'Q');
//! assert_eq!(
//!     FrontendMessage::decode(&frame).unwrap(),
//!     FrontendMessage::Query { sql: "select 1".into() },
//! );
//! ```
//!
//! Running a listener (see `examples/gateway` for the full wiring):
//!
//! ```no_run
//! use portcullis_core::new_service_fn;
//! use portcullis_identity::{StaticTokens, TokenEntry, hash_token};
//! use portcullis_postgres::{ServePg, ServePgConfig, UpstreamConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let tokens = StaticTokens::new(vec![
//!     TokenEntry::new("ci-bot", &hash_token("t0ken"), vec![]).unwrap(),
//! ]);
//! let upstream = UpstreamConfig::new("127.0.0.1", 5432, "app", "secret");
//! let mut config = ServePgConfig::new("main", upstream);
//! config.allow_plaintext_tokens_on_loopback = true;
//! // No policy layers: each session's stack is just its upstream.
//! let server = ServePg::new(config, tokens, new_service_fn(|t: portcullis_core::Target<_>| t.upstream));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6432").await?;
//! loop {
//!     let (tcp, peer) = listener.accept().await?;
//!     tcp.set_nodelay(true)?;
//!     tokio::spawn(server.serve_connection(tcp, peer));
//! }
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod cancel;
mod catalog;
pub mod codec;
mod command;
mod conn;
mod copy;
mod rows;
mod serve;
mod upstream;

pub use command::PgCommand;
pub use conn::{PgReply, PgUpstream, UpstreamError};
pub use portcullis_core::io::{BoxIo, Io};
pub use portcullis_core::listener::HandshakeError;
pub use portcullis_core::tls::{self, UpstreamTls, UpstreamTlsMode};
pub use serve::{PgMetrics, STARTUP_PARAMETERS, ServePg, ServePgConfig, sqlstate};
pub use upstream::{ConnectError, Connected, UpstreamConfig, UpstreamRole, connect, send_cancel};
