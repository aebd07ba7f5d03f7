//! Revocation on reload: a token removed from the configuration ends its sessions at their
//! next command.
//!
//! Authentication happens once, at login; a session then lives as long as the client keeps
//! it. So that `SIGHUP` after removing (or replacing) a token also reaches sessions opened
//! with it, every session's stack starts with [`RevokeCheck`]: before each command unit it
//! checks that the token the session logged in with is still configured — same name *and*
//! same digest, so rotating a token's value under the same name also ends the sessions of
//! the old value. Otherwise the unit is refused with [`Refusal::Unauthenticated`], which the
//! protocol server turns into its native fatal error (PostgreSQL `FATAL 28P01`) and closes
//! the session.
//!
//! The identity carries only the token's name, so the digest is taken, when the session's
//! stack is built, from the configuration that authenticated it ([`RevokeLayer::new`]).
//! The check costs one atomic load per command while the configuration does not change.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use portcullis_core::{
    AuthMethod, CommandView, Error, Refusal, Refusing, Request, Response, Session,
};
use tower::{Layer, Service};

/// The static tokens of one configuration: name → SHA-256 of the token and the groups it
/// grants (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TokenDigests(HashMap<String, ([u8; 32], Vec<String>)>);

impl TokenDigests {
    /// From `(name, digest)` pairs, granting no groups.
    #[cfg(test)]
    pub(crate) fn new(entries: impl IntoIterator<Item = (String, [u8; 32])>) -> Self {
        Self::with_groups(entries.into_iter().map(|(n, d)| (n, d, Vec::new())))
    }

    /// From `(name, digest, groups)`.
    pub(crate) fn with_groups(
        entries: impl IntoIterator<Item = (String, [u8; 32], Vec<String>)>,
    ) -> Self {
        TokenDigests(
            entries
                .into_iter()
                .map(|(name, digest, mut groups)| {
                    groups.sort_unstable();
                    groups.dedup();
                    (name, (digest, groups))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&([u8; 32], Vec<String>)> {
        self.0.get(name)
    }
}

/// The token set in force now, shared by every session and replaced on reload.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveTokens(Arc<Live>);

#[derive(Debug, Default)]
struct Live {
    /// Bumped after every replacement, so sessions re-check only when something changed.
    generation: AtomicU64,
    digests: RwLock<Arc<TokenDigests>>,
    /// Wakes commands waiting in the stack (for approval) after a replacement, so that a
    /// revoked session's held statement is dropped (and its request withdrawn) at once.
    replaced: Arc<tokio::sync::Notify>,
}

impl LiveTokens {
    /// Put `digests` in force; sessions compare against them from their next command.
    pub(crate) fn replace(&self, digests: TokenDigests) {
        *self.0.digests.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(digests);
        // After the write: a reader that sees the new generation also sees the new set.
        self.0.generation.fetch_add(1, Ordering::Release);
        self.0.replaced.notify_waiters();
    }

    fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<TokenDigests> {
        self.0
            .digests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a session was granted at login.
#[derive(Debug)]
enum Grant {
    /// A static token: its name, digest and groups.
    Token {
        name: String,
        digest: [u8; 32],
        groups: Vec<String>,
    },
    /// A static token whose name the authenticating configuration does not hold (cannot
    /// happen unless the two disagree): refused at the first command, failing closed.
    Unknown { name: String },
    /// Not a static token (OIDC): its validity is not a matter of this configuration.
    Other,
}

/// Builds a [`RevokeCheck`] for one session.
#[derive(Debug, Clone)]
pub(crate) struct RevokeLayer {
    grant: Arc<Grant>,
    live: LiveTokens,
}

impl RevokeLayer {
    /// The layer for `session`, authenticated by the configuration whose tokens are
    /// `granted_by`, checked against `live`.
    pub(crate) fn new(session: &Session, granted_by: &TokenDigests, live: LiveTokens) -> Self {
        let identity = &session.identity;
        let grant = match identity.method {
            AuthMethod::StaticToken => match granted_by.get(&identity.subject) {
                Some((digest, groups)) => Grant::Token {
                    name: identity.subject.clone(),
                    digest: *digest,
                    groups: groups.clone(),
                },
                None => Grant::Unknown {
                    name: identity.subject.clone(),
                },
            },
            _ => Grant::Other,
        };
        RevokeLayer {
            grant: Arc::new(grant),
            live,
        }
    }
}

impl<S> Layer<S> for RevokeLayer {
    type Service = RevokeCheck<S>;

    fn layer(&self, inner: S) -> RevokeCheck<S> {
        RevokeCheck {
            inner,
            grant: self.grant.clone(),
            live: self.live.clone(),
            checked: None,
        }
    }
}

/// Refuses every command unit once the session's token is no longer configured.
#[derive(Debug, Clone)]
pub(crate) struct RevokeCheck<S> {
    inner: S,
    grant: Arc<Grant>,
    live: LiveTokens,
    /// The token-set generation last found to still hold the grant.
    checked: Option<u64>,
}

/// Why `grant` no longer holds under `live`'s token set, if it does not.
fn revoked(grant: &Grant, live: &LiveTokens) -> Option<String> {
    match grant {
        Grant::Other => None,
        Grant::Unknown { name } => Some(format!(
            "token \"{name}\" is not in the gateway's configuration"
        )),
        Grant::Token {
            name,
            digest,
            groups,
        } => match live.current().get(name) {
            Some((current, now)) if current == digest && now == groups => None,
            Some((current, _)) if current == digest => Some(format!(
                "token \"{name}\" now grants other groups; reconnect to take them"
            )),
            Some(_) => Some(format!(
                "token \"{name}\" was replaced in the configuration"
            )),
            None => Some(format!(
                "token \"{name}\" was removed from the configuration"
            )),
        },
    }
}

impl<S> RevokeCheck<S> {
    fn check(&mut self) -> Result<(), Refusal> {
        let generation = self.live.generation();
        if self.checked == Some(generation) {
            return Ok(());
        }
        match revoked(&self.grant, &self.live) {
            None => {
                self.checked = Some(generation);
                Ok(())
            }
            Some(reason) => Err(Refusal::Unauthenticated { reason }),
        }
    }
}

impl<S, C, B> Service<Request<C>> for RevokeCheck<S>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error>,
    C: CommandView,
{
    type Response = Response<B>;
    type Error = Error;
    type Future = Revocable<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<C>) -> Self::Future {
        // Every kind but the session's events and goodbye, including kinds added later, is
        // checked.
        if req.command.kind().is_session_lifecycle() || matches!(*self.grant, Grant::Other) {
            return Revocable::unwatched(Refusing::pass(self.inner.call(req)));
        }
        if let Err(refusal) = self.check() {
            return Revocable::unwatched(Refusing::refuse_now(refusal));
        }
        Revocable {
            inner: Refusing::pass(self.inner.call(req)),
            watch: Some(Watch {
                grant: self.grant.clone(),
                live: self.live.clone(),
                generation: self.checked.unwrap_or_default(),
                replaced: None,
            }),
        }
    }
}

/// What a command in the stack watches: a reload that revokes the session's grant.
struct Watch {
    grant: Arc<Grant>,
    live: LiveTokens,
    /// The generation last found to hold the grant.
    generation: u64,
    /// Wakes on the next replacement (made once the command first waits).
    replaced: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
}

pin_project_lite::pin_project! {
    /// A command in the stack, dropped (and refused with `Unauthenticated`) if a reload
    /// revokes the session's token while it waits — a statement held for approval then never
    /// runs, and its request is withdrawn.
    pub(crate) struct Revocable<F> {
        #[pin]
        inner: Refusing<F>,
        watch: Option<Watch>,
    }
}

impl<F> Revocable<F> {
    fn unwatched(inner: Refusing<F>) -> Self {
        Revocable { inner, watch: None }
    }
}

impl<F, B> Future for Revocable<F>
where
    F: Future<Output = Result<Response<B>, Error>>,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.inner.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        let Some(watch) = this.watch.as_mut() else {
            return Poll::Pending;
        };
        loop {
            let replaced = watch.replaced.get_or_insert_with(|| {
                let mut n = Box::pin(watch.live.0.replaced.clone().notified_owned());
                // Registered before the generation is read: no replacement is missed.
                n.as_mut().enable();
                n
            });
            let now = watch.live.generation();
            if now != watch.generation {
                if let Some(reason) = revoked(&watch.grant, &watch.live) {
                    *this.watch = None;
                    this.inner
                        .set(Refusing::refuse_now(Refusal::Unauthenticated { reason }));
                    return this.inner.poll(cx);
                }
                watch.generation = now;
            }
            match replaced.as_mut().poll(cx) {
                Poll::Ready(()) => watch.replaced = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Ready, poll_fn, ready};

    use portcullis_core::{
        CommandKind, Identity, Protocol, RescueKind, SessionId, Statement, rescue,
    };

    use super::*;

    struct Cmd(CommandKind);
    impl CommandView for Cmd {
        fn kind(&self) -> CommandKind {
            self.0
        }
        fn statements(&self) -> Vec<Statement<'_>> {
            Vec::new()
        }
    }

    /// Counts the commands that reach it.
    #[derive(Default)]
    struct Counter(usize);
    impl Service<Request<Cmd>> for Counter {
        type Response = Response<()>;
        type Error = Error;
        type Future = Ready<Result<Response<()>, Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Cmd>) -> Self::Future {
            self.0 += 1;
            ready(Ok(Response::new(())))
        }
    }

    fn session(subject: &str, method: AuthMethod) -> Arc<Session> {
        let identity = Identity::new(subject, vec![], method);
        let peer = "127.0.0.1:5000".parse().unwrap();
        Arc::new(Session::new(
            SessionId(1),
            Protocol::Postgres,
            "main",
            peer,
            identity,
        ))
    }

    fn digests(entries: &[(&str, u8)]) -> TokenDigests {
        TokenDigests::new(entries.iter().map(|(n, d)| (n.to_string(), [*d; 32])))
    }

    async fn send(
        svc: &mut RevokeCheck<Counter>,
        session: &Arc<Session>,
        kind: CommandKind,
    ) -> Result<(), Error> {
        poll_fn(|cx| svc.poll_ready(cx)).await?;
        svc.call(Request::new(session.clone(), Cmd(kind)))
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn removed_token_refuses_commands_but_not_events_or_terminate() {
        let config = digests(&[("alice", 1), ("bob", 2)]);
        let live = LiveTokens::default();
        live.replace(config.clone());
        let s = session("alice", AuthMethod::StaticToken);
        let mut svc = RevokeLayer::new(&s, &config, live.clone()).layer(Counter::default());

        send(&mut svc, &s, CommandKind::SessionEvents)
            .await
            .unwrap();
        send(&mut svc, &s, CommandKind::Statements).await.unwrap();
        assert_eq!(svc.inner.0, 2);

        live.replace(digests(&[("bob", 2)]));
        for kind in [
            CommandKind::Statements,
            CommandKind::FunctionCall,
            CommandKind::Control,
        ] {
            let err = send(&mut svc, &s, kind).await.unwrap_err();
            let r = rescue(&err);
            assert_eq!(r.kind, RescueKind::AuthenticationFailed);
            assert!(r.close);
            assert_eq!(
                r.message,
                "authentication failed: token \"alice\" was removed from the configuration"
            );
        }
        assert_eq!(svc.inner.0, 2);
        send(&mut svc, &s, CommandKind::Terminate).await.unwrap();
        send(&mut svc, &s, CommandKind::SessionEvents)
            .await
            .unwrap();
        assert_eq!(svc.inner.0, 4);
    }

    #[tokio::test]
    async fn a_replaced_digest_revokes_and_unrelated_changes_do_not() {
        let config = digests(&[("alice", 1)]);
        let live = LiveTokens::default();
        live.replace(config.clone());
        let s = session("alice", AuthMethod::StaticToken);
        let mut svc = RevokeLayer::new(&s, &config, live.clone()).layer(Counter::default());

        live.replace(digests(&[("alice", 1), ("carol", 3)]));
        send(&mut svc, &s, CommandKind::Statements).await.unwrap();

        live.replace(digests(&[("alice", 9), ("carol", 3)]));
        let err = send(&mut svc, &s, CommandKind::Statements)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "authentication failed: token \"alice\" was replaced in the configuration"
        );
    }

    #[tokio::test]
    async fn a_token_restored_before_the_next_command_keeps_the_session() {
        let config = digests(&[("alice", 1)]);
        let live = LiveTokens::default();
        live.replace(config.clone());
        let s = session("alice", AuthMethod::StaticToken);
        let mut svc = RevokeLayer::new(&s, &config, live.clone()).layer(Counter::default());
        live.replace(TokenDigests::default());
        live.replace(config.clone());
        send(&mut svc, &s, CommandKind::Statements).await.unwrap();
    }

    #[tokio::test]
    async fn unknown_grants_fail_closed_and_other_methods_pass() {
        let live = LiveTokens::default();
        live.replace(digests(&[("alice", 1)]));
        let s = session("mallory", AuthMethod::StaticToken);
        let mut svc =
            RevokeLayer::new(&s, &TokenDigests::default(), live.clone()).layer(Counter::default());
        assert!(send(&mut svc, &s, CommandKind::Statements).await.is_err());

        let s = session("someone@idp", AuthMethod::Oidc);
        let mut svc =
            RevokeLayer::new(&s, &TokenDigests::default(), live.clone()).layer(Counter::default());
        send(&mut svc, &s, CommandKind::Statements).await.unwrap();
    }
}
