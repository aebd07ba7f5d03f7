//! Who is connecting: the `Authenticate` services of the Portcullis gateway turn the token a
//! client presents into a verified [`Identity`].
//!
//! Every authenticator is a tower `Service<Credentials, Response = Identity>`, so `Timeout`,
//! `Buffer` or a cache compose with it: [`StaticTokens`] (service accounts, CI, development),
//! [`Oidc`] (tokens from an OpenID Connect provider: discovery, cached and rotated keys,
//! strict validation — see the [`oidc`] module), and [`TokenAuth`], which tries the first
//! and then the second. [`ExpiryLayer`] ends (or refuses the commands of) sessions whose
//! token has expired; [`oidc::login`] gets tokens for `portcullis login`.
//!
//! # Example
//!
//! ```
//! use portcullis_identity::{Credentials, StaticTokens, TokenEntry, hash_token};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let tokens = StaticTokens::new(vec![TokenEntry::new(
//!     "ci-bot",
//!     &hash_token("s3cret-token"),
//!     vec!["engineering".into()],
//! ).unwrap()]);
//!
//! let who = tokens.clone().oneshot(Credentials::new("alice", "s3cret-token")).await.unwrap();
//! assert_eq!(who.subject, "ci-bot");
//! assert!(who.in_group("engineering"));
//!
//! let err = tokens.oneshot(Credentials::new("alice", "guess")).await.unwrap_err();
//! assert_eq!(err.to_string(), "authentication failed: unknown token");
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod expiry;
pub mod oidc;
mod static_tokens;
mod tokens;

pub use expiry::{Expiry, ExpiryLayer, OnExpiry};
pub use oidc::{Oidc, OidcConfig, OidcError, OidcStats, TokenKind};
pub use static_tokens::{InvalidDigest, StaticTokens, TokenEntry, hash_token};
pub use tokens::TokenAuth;

pub use portcullis_core::{Credentials, Identity};
