//! MySQL and MariaDB for the Portcullis gateway: packets (split and joined past 16 MiB), the
//! client-side server [`ServeMySql`] (TLS, the token through an authentication switch to
//! `mysql_clear_password`, capability negotiation), the upstream connector (native password,
//! MariaDB's ed25519, caching_sha2 over TLS or RSA) and [`MyUpstream`], the innermost
//! service of each session's stack.
//!
//! Every `COM_*` packet is one command unit; `COM_STMT_EXECUTE` carries the SQL text the
//! session prepared earlier, so guard and audit see what really runs. Replies stream packet
//! by packet as [`MyEvent`]s: a result's column count and definitions are one event, each row
//! another, in the text or the binary protocol — both readable and rewritable by a masking
//! layer.
//!
//! # Example
//!
//! Packets as the gateway reads and writes them:
//!
//! ```
//! use bytes::BytesMut;
//! use portcullis_mysql::packet::{decode_packet, encode_packet};
//!
//! let mut wire = BytesMut::new();
//! encode_packet(0, b"\x03select 1", &mut wire); // COM_QUERY
//! let packet = decode_packet(&mut wire, 1 << 20).unwrap().unwrap();
//! assert_eq!((packet.seq, &packet.payload[..]), (0, &b"\x03select 1"[..]));
//! ```
//!
//! Running a listener (see `examples/gateway` for the full wiring):
//!
//! ```no_run
//! use portcullis_core::new_service_fn;
//! use portcullis_core::upstream::UpstreamConfig;
//! use portcullis_identity::{StaticTokens, TokenEntry, hash_token};
//! use portcullis_mysql::{ServeMySql, ServeMySqlConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let tokens = StaticTokens::new(vec![
//!     TokenEntry::new("ci-bot", &hash_token("t0ken"), vec![]).unwrap(),
//! ]);
//! let upstream = UpstreamConfig::new("127.0.0.1", 3306, "app", "secret");
//! let mut config = ServeMySqlConfig::new("main", upstream);
//! config.allow_plaintext_tokens_on_loopback = true;
//! let server = ServeMySql::new(config, tokens, new_service_fn(|t: portcullis_core::Target<_>| t.upstream));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3307").await?;
//! loop {
//!     let (tcp, peer) = listener.accept().await?;
//!     tcp.set_nodelay(true)?;
//!     tokio::spawn(server.serve_connection(tcp, peer));
//! }
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod charset;
mod command;
mod conn;
mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod packet;
mod serve;
mod upstream;

pub use command::MyCommand;
pub use conn::{MyReply, MyUpstream};
pub use event::{Columns, MyEvent, What};
pub use serve::{
    DEFAULT_MAX_UNAUTHENTICATED_PER_PEER, MyMetrics, ServeMySql, ServeMySqlConfig, errno,
};
pub use upstream::{ConnectError, Connected, Greeting, Login, Opened, open};

pub use portcullis_core::io::{BoxIo, Io};
