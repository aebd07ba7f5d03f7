//! HTTP APIs for the Portcullis gateway: [`ServeHttp`] (HTTP/1.1 and HTTP/2, TLS, the
//! caller's `Authorization: Bearer` token authenticated and never forwarded), the upstream
//! client [`HttpUpstream`] (the gateway's own credential injected, bodies streamed both ways),
//! and the views the policy layers read: each request is the statement `METHOD /path?query`,
//! each response a head and body pieces ([`HttpEvent`]). Refusals are RFC 9457 problem
//! documents with the protocol's status (401, 403, 504, 503).
//!
//! # Example
//!
//! A request as the guard reads it:
//!
//! ```
//! use http::{HeaderMap, Method, Uri, Version};
//! use portcullis_core::CommandView;
//! use portcullis_http::HttpCommand;
//!
//! let uri: Uri = "/v1/indices/logs?refresh=true".parse().unwrap();
//! let mut headers = HeaderMap::new();
//! headers.insert("authorization", "Bearer secret".parse().unwrap());
//! let command = HttpCommand::new(Method::DELETE, &uri, Version::HTTP_11, headers);
//! assert_eq!(command.statements()[0].text, "DELETE /v1/indices/logs?refresh=true");
//! assert!(command.headers().get("authorization").is_none()); // never forwarded
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod command;
mod event;
pub mod problem;
mod serve;
mod upstream;
mod watch;

pub use command::HttpCommand;
pub use event::HttpEvent;
pub use serve::{
    HttpMetrics, OVERRIDE_HEADERS, OutBody, OverrideHeaders, ServeHttp, ServeHttpConfig,
};
pub use upstream::{HttpReply, HttpUpstream, HttpUpstreamConfig, UpstreamUpgrade};
