//! Sessions outliving their token: [`ExpiryLayer`] checks before every command unit that the
//! identity's credential has not expired.
//!
//! Authentication happens once, at login; a session then lives as long as the client keeps
//! it. A token from an identity provider is short-lived on purpose (a contractor's access ends
//! when the provider stops issuing tokens and the current one expires), so the session must
//! not outlive it. When the token has expired, the next command unit is refused, by
//! configuration either
//! - [`OnExpiry::Close`]: with a fatal authentication error (PostgreSQL `FATAL 28P01`) that
//!   ends the session, or
//! - [`OnExpiry::Refuse`]: with an authentication error for that command (`ERROR 28P01`,
//!   refused in place so a transaction block fails as after any error) and every later one,
//!   leaving the client to reconnect with a fresh token.
//!
//! Either way the audit trail records the refused command. The session's event stream and
//! its goodbye pass, so a refused session still ends cleanly. The check is one clock read
//! per command.

use std::task::{Context, Poll};
use std::time::SystemTime;

use portcullis_core::{CommandView, Error, Refusal, RefuseInPlace, Refusing, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

/// What happens to a session whose token has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExpiry {
    /// End the session at its next command with a fatal error.
    #[default]
    Close,
    /// Refuse each command with an error; the session stays open for the client to close.
    Refuse,
}

/// Refuses commands of sessions whose identity has expired.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExpiryLayer {
    on_expiry: OnExpiry,
}

impl ExpiryLayer {
    /// A layer doing `on_expiry`.
    pub fn new(on_expiry: OnExpiry) -> Self {
        ExpiryLayer { on_expiry }
    }
}

impl<S> Layer<S> for ExpiryLayer {
    type Service = Expiry<S>;

    fn layer(&self, inner: S) -> Expiry<S> {
        Expiry {
            inner,
            on_expiry: self.on_expiry,
        }
    }
}

/// The service of [`ExpiryLayer`].
#[derive(Debug, Clone)]
pub struct Expiry<S> {
    inner: S,
    on_expiry: OnExpiry,
}

impl<S, C, B> Service<Request<C>> for Expiry<S>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error>,
    C: CommandView + RefuseInPlace,
{
    type Response = Response<B>;
    type Error = Error;
    type Future = Refusing<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<C>) -> Self::Future {
        let expired = req
            .session
            .identity
            .expires_at
            .and_then(|at| SystemTime::now().duration_since(at).ok());
        let exempt = req.command.kind().is_session_lifecycle();
        let Some(ago) = expired.filter(|_| !exempt) else {
            return Refusing::pass(self.inner.call(req));
        };
        let reason = format!(
            "the session's token expired {} s ago; reconnect with a fresh token",
            ago.as_secs()
        );
        match self.on_expiry {
            OnExpiry::Close => Refusing::refuse_now(Refusal::Unauthenticated { reason }),
            OnExpiry::Refuse => Refusing::refuse(&mut self.inner, req, Refusal::Expired { reason }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use portcullis_core::{
        AuthMethod, CommandKind, Identity, Protocol, Session, SessionId, Statement,
    };
    use tower::ServiceExt as _;

    use super::*;

    struct Cmd(CommandKind);
    impl CommandView for Cmd {
        fn kind(&self) -> CommandKind {
            self.0
        }
        fn statements(&self) -> Vec<Statement<'_>> {
            vec![Statement::text("select 1")]
        }
    }
    impl RefuseInPlace for Cmd {
        fn refuse_in_place(&self, _refusal: &Refusal) -> Option<Self> {
            None // answered by the layer itself
        }
    }

    async fn run(
        on_expiry: OnExpiry,
        expires_in: Option<i64>,
        kind: CommandKind,
    ) -> Result<(), Error> {
        let mut who = Identity::new("alice", vec![], AuthMethod::Oidc);
        who.expires_at = expires_in.map(|s| {
            let now = SystemTime::now();
            if s >= 0 {
                now + Duration::from_secs(s.unsigned_abs())
            } else {
                now - Duration::from_secs(s.unsigned_abs())
            }
        });
        let session = Arc::new(Session::new(
            SessionId(1),
            Protocol::Postgres,
            "t",
            "127.0.0.1:1".parse().unwrap(),
            who,
        ));
        let inner =
            tower::service_fn(|_req: Request<Cmd>| async { Ok::<_, Error>(Response::new(())) });
        ExpiryLayer::new(on_expiry)
            .layer(inner)
            .oneshot(Request::new(session, Cmd(kind)))
            .await
            .map(|_| ())
    }

    fn refusal(r: Result<(), Error>) -> Refusal {
        Refusal::find(&r.expect_err("refused"))
            .cloned()
            .expect("a refusal")
    }

    #[tokio::test]
    async fn expired_sessions_are_closed_or_refused() {
        let closed = refusal(run(OnExpiry::Close, Some(-5), CommandKind::Statements).await);
        assert!(
            matches!(&closed, Refusal::Unauthenticated { reason } if reason.contains("token expired")),
            "{closed:?}"
        );
        let refused = refusal(run(OnExpiry::Refuse, Some(-5), CommandKind::Statements).await);
        assert!(
            matches!(&refused, Refusal::Expired { reason } if reason.contains("reconnect")),
            "{refused:?}"
        );
        // Valid, or without expiry (static tokens): through.
        run(OnExpiry::Close, Some(60), CommandKind::Statements)
            .await
            .unwrap();
        run(OnExpiry::Close, None, CommandKind::Statements)
            .await
            .unwrap();
        // The session's events and goodbye always pass.
        run(OnExpiry::Close, Some(-5), CommandKind::SessionEvents)
            .await
            .unwrap();
        run(OnExpiry::Close, Some(-5), CommandKind::Terminate)
            .await
            .unwrap();
    }
}
