//! `GuardLayer`: judges every command unit before any of it goes further in.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use portcullis_core::{
    CommandKind, CommandView, Decision, DecisionLog, Error, Refusal, RefuseInPlace, RefusedInPlace,
    Request, Response, Session, Verdict,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Class, Classified};
use crate::rules::{Judgement, Policy};

/// Applies a [`Policy`] to every command: `Deny` refuses it (in place when the protocol can,
/// so that the client and the database end in the same transaction state), `Approve` puts the
/// verdict in the request's extensions for the approval layer inside, `detect` rules are
/// recorded through the [`DecisionLog`].
#[derive(Debug, Clone)]
pub struct GuardLayer {
    policy: Option<Policy>,
    approvals: bool,
}

impl GuardLayer {
    /// A guard for `policy`. Statements needing approval are refused unless
    /// [`GuardLayer::with_approvals`] says an approval layer sits inside.
    pub fn new(policy: Policy) -> Self {
        GuardLayer {
            policy: Some(policy),
            approvals: false,
        }
    }

    /// A guard that lets everything through (no `[policy]`): costs one branch per command.
    pub fn disabled() -> Self {
        GuardLayer {
            policy: None,
            approvals: false,
        }
    }

    /// An approval layer sits inside this one and handles [`Verdict::Approve`].
    pub fn with_approvals(mut self, yes: bool) -> Self {
        self.approvals = yes;
        self
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            policy: self.policy.clone(),
            approvals: self.approvals,
            prepared: Prepared::default(),
        }
    }
}

/// The service [`GuardLayer`] makes.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    policy: Option<Policy>,
    approvals: bool,
    /// SQL-level `PREPARE`s seen in this session (a layer is made per session).
    prepared: Prepared,
}

/// Most SQL-level prepared statements remembered per session; beyond, the oldest are
/// forgotten (their `EXECUTE` is then judged `admin`).
const MAX_PREPARED: usize = 1000;

/// Name → classification of SQL-level `PREPARE name AS …` statements the guard let through.
#[derive(Debug, Clone, Default)]
struct Prepared(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Classified>>>);

impl Prepared {
    fn get(&self, name: &str) -> Option<Classified> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn remember(&self, found: Vec<Classified>) {
        if found.is_empty() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for s in found {
            if let Some(name) = s.prepares.clone() {
                if map.len() >= MAX_PREPARED && !map.contains_key(&name) {
                    map.clear();
                }
                map.insert(name, s);
            }
        }
    }
}

impl<S> Guard<S> {
    /// The verdict for a command run in `session`, with detect-mode verdicts (allow when the
    /// guard is disabled).
    pub fn judge(&self, session: &Session, command: &impl CommandView) -> Judgement {
        match &self.policy {
            Some(policy) => judge(policy, session, command, &self.prepared),
            None => Judgement::default(),
        }
    }
}

/// Judge `command` in `session` with `policy` (the guard's decision, without enforcing it).
fn judge(
    policy: &Policy,
    session: &Session,
    command: &impl CommandView,
    prepared: &Prepared,
) -> Judgement {
    match command.kind() {
        CommandKind::Statements => {}
        CommandKind::FunctionCall => {
            // The function is named by OID only: not known to be read-only, so `admin`.
            let call = Classified {
                class: Class::Admin,
                classes: [Class::Admin].into_iter().collect(),
                kinds: ["function_call".to_owned()].into_iter().collect(),
                tables: Default::default(),
                functions: Default::default(),
                without_where: false,
                reason: "a FunctionCall message names its function by OID only".into(),
                prepares: None,
                executes_prepared: None,
                text: String::new(),
            };
            return policy.judge_classified(&session.identity, &call);
        }
        _ => return Judgement::default(),
    }
    let statements = command.statements();
    if let Some(refusal) = unreadable(session, &statements) {
        return Judgement {
            verdict: refusal,
            detected: Vec::new(),
        };
    }
    let mut judgement = Judgement::default();
    let mut prepares = Vec::new();
    for statement in &statements {
        let classified = policy.classify(statement.text);
        let list = match &*classified {
            Ok(list) => list,
            Err(e) => {
                let one = policy.judge_unparsed(e);
                raise(&mut judgement, one, true);
                continue;
            }
        };
        for s in list {
            // EXECUTE of a statement prepared in this session: judge what it runs.
            let seen = s.executes_prepared.as_deref().and_then(|n| prepared.get(n));
            let one = policy.judge_classified(&session.identity, seen.as_ref().unwrap_or(s));
            raise(&mut judgement, one, statement.executes);
            if s.prepares.is_some() {
                prepares.push(s.clone());
            }
        }
    }
    if !matches!(judgement.verdict, Verdict::Deny { .. }) {
        prepared.remember(prepares);
    }
    judgement
}

/// Fold one statement's judgement into the command's. A statement only prepared or described
/// here (not executed) is not held for approval: its execution is.
fn raise(judgement: &mut Judgement, mut one: Judgement, executes: bool) {
    if !executes && matches!(one.verdict, Verdict::Approve { .. }) {
        one.verdict = Verdict::Allow;
    }
    if one.verdict.strictness() > judgement.verdict.strictness() {
        judgement.verdict = one.verdict;
    }
    judgement.detected.extend(one.detected);
}

/// Session settings under which the database would read a statement differently from the
/// classifier: refuse rather than guess.
fn unreadable(session: &Session, statements: &[portcullis_core::Statement<'_>]) -> Option<Verdict> {
    let scs_off = session.server_param_is("standard_conforming_strings", |v| {
        v.eq_ignore_ascii_case("off")
    });
    if scs_off && statements.iter().any(|s| s.text.contains('\\')) {
        return Some(Verdict::deny(
            "standard_conforming_strings",
            "with standard_conforming_strings = off a backslash in a string changes how the statement is read; run SET standard_conforming_strings = on",
        ));
    }
    let not_utf8 = session.server_param_is("client_encoding", |enc| {
        !["UTF8", "UNICODE", "UTF-8"]
            .iter()
            .any(|u| enc.eq_ignore_ascii_case(u))
    });
    if not_utf8 && statements.iter().any(|s| !s.text.is_ascii()) {
        let enc = session.server_param("client_encoding").unwrap_or_default();
        return Some(Verdict::deny(
            "client_encoding",
            format!(
                "client_encoding {enc}: only ASCII statements are read safely; set client_encoding to UTF8"
            ),
        ));
    }
    None
}

impl<S, C, B> Service<Request<C>> for Guard<S>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error>,
    C: CommandView + RefuseInPlace,
{
    type Response = Response<B>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<C>) -> Self::Future {
        let Some(policy) = &self.policy else {
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        let judgement = judge(policy, &req.session, &req.command, &self.prepared);
        for detected in &judgement.detected {
            DecisionLog::record_in(
                &req.extensions,
                &Decision::new("guard", detected.clone())
                    .with_detail("mode = detect: recorded, not enforced"),
            );
        }
        let refusal = match judgement.verdict {
            Verdict::Deny { rule, message } => Refusal::Blocked { rule, message },
            Verdict::Approve {
                rule,
                approvers,
                min_approvals,
            } if self.approvals => {
                req.extensions.insert(Verdict::Approve {
                    rule,
                    approvers,
                    min_approvals,
                });
                return ResponseFuture::inner(self.inner.call(req), None);
            }
            Verdict::Approve { rule, .. } => Refusal::Blocked {
                message: "the statement needs approval, and this gateway has no approval layer"
                    .into(),
                rule,
            },
            _ => return ResponseFuture::inner(self.inner.call(req), None),
        };
        match req.command.refuse_in_place(&refusal) {
            Some(substitute) => {
                req.command = substitute;
                req.upload = None;
                ResponseFuture::inner(self.inner.call(req), Some(refusal))
            }
            None => ResponseFuture::refused(refusal),
        }
    }
}

pin_project! {
    /// The [`Guard`]'s future.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        refusal: Option<Refusal>,
    }
}

impl<F> ResponseFuture<F> {
    fn inner(inner: F, refused_in_place: Option<Refusal>) -> Self {
        ResponseFuture {
            inner: Some(inner),
            refusal: refused_in_place,
        }
    }

    fn refused(refusal: Refusal) -> Self {
        ResponseFuture {
            inner: None,
            refusal: Some(refusal),
        }
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, Error>>,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let refusal = this.refusal.take().unwrap_or(Refusal::Blocked {
                rule: "guard".into(),
                message: "refused".into(),
            });
            return Poll::Ready(Err(Box::new(refusal)));
        };
        let mut response = ready!(inner.poll(cx))?;
        if let Some(refusal) = this.refusal.take() {
            // The audit layer records the refusal (and its rule) from this marker.
            response.extensions.insert(RefusedInPlace(refusal));
        }
        Poll::Ready(Ok(response))
    }
}
