//! `ApprovalLayer`: holds a command that a rule says needs approval until people decide.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use portcullis_core::{
    ClientNotice, CommandView, Decision, DecisionLog, Decisions, Error, Param, Refusal,
    RefuseInPlace, RefusedInPlace, Request, Response, TextRedactor, Verdict,
};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{info, warn};

use crate::notify::Notifier;
use crate::request::{ApprovalRequest, NewRequest, Requester, State};
use crate::store::{ApprovalStore, wait_decided};

/// Holds commands whose request extensions carry a [`Verdict::Approve`] (put there by the
/// guard) until enough approvers approve, the request is denied, it times out, or the client
/// cancels. While it waits it holds nothing of the inner service: it drives the inner service
/// to readiness only once the decision is in.
#[derive(Clone)]
pub struct ApprovalLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    store: Arc<dyn ApprovalStore>,
    timeout: Duration,
    notifiers: Vec<Arc<dyn Notifier>>,
    how_to_approve: String,
    redactor: Option<TextRedactor>,
}

impl std::fmt::Debug for ApprovalLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalLayer")
            .field("timeout", &self.config.timeout)
            .finish_non_exhaustive()
    }
}

impl ApprovalLayer {
    /// Requests go to `store`; a waiting client gives up after `timeout`.
    pub fn new(store: Arc<dyn ApprovalStore>, timeout: Duration) -> Self {
        ApprovalLayer {
            config: Arc::new(Config {
                store,
                timeout,
                notifiers: Vec::new(),
                how_to_approve: "portcullis approvals approve {id}".into(),
                redactor: None,
            }),
        }
    }

    /// Mask personal data in the statement text and parameters a request shows (listings,
    /// webhooks) with `redactor`; the statement still runs as sent.
    pub fn with_redactor(mut self, redactor: TextRedactor) -> Self {
        self.config_mut().redactor = Some(redactor);
        self
    }

    /// Tell `notifier` about every new request.
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.config_mut().notifiers.push(notifier);
        self
    }

    /// How the waiting client is told to approve; `{id}` is replaced by the request id
    /// (default `portcullis approvals approve {id}`).
    pub fn how_to_approve(mut self, text: impl Into<String>) -> Self {
        self.config_mut().how_to_approve = text.into();
        self
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }
}

impl<S> Layer<S> for ApprovalLayer {
    type Service = Approval<S>;

    fn layer(&self, inner: S) -> Approval<S> {
        Approval {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`ApprovalLayer`] makes.
#[derive(Clone)]
pub struct Approval<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for Approval<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approval").finish_non_exhaustive()
    }
}

type BoxedResponse<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Error>> + Send>>;

pin_project_lite::pin_project! {
    #[allow(missing_docs)]
    /// The [`Approval`] service's future: the inner call at once, or the wait and then the
    /// call.
    #[project = Projected]
    pub enum ResponseFuture<F, B> {
        /// No approval needed.
        Direct {
            #[pin]
            inner: F,
        },
        /// Waiting for people, then calling.
        Held {
            fut: BoxedResponse<B>,
        },
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResponseFuture::Direct { .. } => "ResponseFuture::Direct",
            ResponseFuture::Held { .. } => "ResponseFuture::Held",
        })
    }
}

impl<F, B> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, Error>>,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Direct { inner } => inner.poll(cx),
            Projected::Held { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S, C, B> Service<Request<C>> for Approval<S>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    C: CommandView + RefuseInPlace + Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<C>) -> Self::Future {
        let Some(Verdict::Approve {
            rule,
            approvers,
            min_approvals,
        }) = req.extensions.remove::<Verdict>()
        else {
            return ResponseFuture::Direct {
                inner: self.inner.call(req),
            };
        };
        // A fresh clone waits; it is driven to readiness only once people have decided.
        let inner = self.inner.clone();
        let config = self.config.clone();
        let new = NewRequest {
            identity: Requester::of(&req.session.identity),
            session: req.session.id.0,
            target: req.session.target.clone(),
            // Every statement of the unit, each masked on its own (literals and comments,
            // never the code around them: the approver sees what will run).
            statement: req
                .command
                .statements()
                .iter()
                .map(|s| match &config.redactor {
                    Some(r) => r
                        .redact_statement(req.session.protocol, s.text)
                        .unwrap_or_else(|| s.text.to_owned()),
                    None => s.text.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(";\n"),
            params: req.command.params().iter().map(param_text).collect(),
            rule,
            approvers,
            min_approvals,
            timeout: config.timeout,
        };
        let mut new = new;
        if let Some(r) = &config.redactor {
            for p in &mut new.params {
                if let Some(masked) = r.redact(p) {
                    *p = masked;
                }
            }
        }
        ResponseFuture::Held {
            fut: Box::pin(held(config, inner, req, new)),
        }
    }
}

fn param_text(p: &Param<'_>) -> String {
    match p {
        Param::Null => "NULL".into(),
        Param::Text(b) => String::from_utf8_lossy(b).into_owned(),
        Param::Binary(b) => format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
        _ => "?".into(),
    }
}

/// The wait, then the call (or the refusal).
async fn held<S, C, B>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<C>,
    new: NewRequest,
) -> Result<Response<B>, Error>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error>,
    C: CommandView + RefuseInPlace,
{
    // Subscribed before anything is filed, so an early Ctrl-C is not missed.
    let cancelled = req.session.cancel.cancelled();
    let verdict = Verdict::approve(new.rule.clone(), new.approvers.clone(), new.min_approvals);
    let store = config.store.clone();
    let filed = match store.file(new).await {
        Ok(r) => r,
        Err(e) => {
            warn!(target: "portcullis::approval", error = %e, "cannot file an approval request");
            let refusal = Refusal::Blocked {
                rule: match &verdict {
                    Verdict::Approve { rule, .. } => rule.clone(),
                    _ => String::new(),
                },
                message: format!(
                    "the statement needs approval, and the approval queue is unavailable ({e})"
                ),
            };
            return refuse(inner, req, refusal).await;
        }
    };
    let id = filed.id.clone();
    // If the client goes away (or the session ends) while waiting, the request is withdrawn.
    let mut withdraw = WithdrawOnDrop {
        store: Some(store.clone()),
        id: id.clone(),
    };
    DecisionLog::record_in(
        &req.extensions,
        &Decision::new("approval", verdict).with_detail(format!(
            "request {id} filed; approvers: {}; min_approvals: {}",
            filed.approvers.join(", "),
            filed.min_approvals
        )),
    );
    info!(target: "portcullis::approval", request = %id, rule = %filed.rule,
          identity = %filed.identity.subject, "statement held for approval");
    let how = config.how_to_approve.replace("{id}", &id);
    req.session.notices.send(
        ClientNotice::new(
            "01000",
            format!(
                "statement held for approval: request {id} (rule \"{}\")",
                filed.rule
            ),
        )
        .with_detail(format!(
            "approvers: group {}; {} approval(s) needed; waiting up to {}",
            filed.approvers.join(", "),
            filed.min_approvals,
            human(config.timeout)
        ))
        .with_hint(format!(
            "an approver runs: {how}   (Ctrl-C gives up waiting)"
        )),
    );
    for notifier in &config.notifiers {
        notifier.notify(&filed);
    }

    let outcome = tokio::select! {
        decided = wait_decided(store.as_ref(), &id) => decided,
        () = tokio::time::sleep(config.timeout) => store.close(&id, State::Expired).await,
        () = cancelled => store.close(&id, State::Withdrawn).await,
    };
    withdraw.store = None;
    let decided = match outcome {
        Ok(r) => r,
        Err(e) => {
            let refusal = Refusal::Blocked {
                rule: filed.rule.clone(),
                message: format!("approval request {id} could not be followed ({e})"),
            };
            return refuse(inner, req, refusal).await;
        }
    };
    match decided.state {
        State::Approved => {
            info!(target: "portcullis::approval", request = %id, by = %decided.approved_by.join(", "), "approved");
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let mut response = inner.call(req).await?;
            Decisions::record(&mut response.extensions, approved_decision(&decided));
            Ok(response)
        }
        State::Denied { by, reason } => {
            refuse(
                inner,
                req,
                Refusal::ApprovalDenied {
                    request: id,
                    by,
                    reason,
                },
            )
            .await
        }
        State::Expired => refuse(inner, req, Refusal::ApprovalTimeout { request: id }).await,
        State::Withdrawn | State::Pending => refuse(inner, req, Refusal::Cancelled).await,
    }
}

/// Withdraws a pending request when the wait is dropped before it ends.
struct WithdrawOnDrop {
    store: Option<Arc<dyn ApprovalStore>>,
    id: String,
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.close(&id, State::Withdrawn).await {
                    warn!(target: "portcullis::approval", request = %id, error = %e, "could not withdraw an abandoned request");
                }
            });
        }
    }
}

fn approved_decision(r: &ApprovalRequest) -> Decision {
    Decision::new("approval", Verdict::Allow).with_detail(format!(
        "request {} approved by {}",
        r.id,
        r.approved_by.join(", ")
    ))
}

/// Refuse in place when the protocol can (so the database's transaction state follows),
/// else answer with the refusal.
async fn refuse<S, C, B>(
    mut inner: S,
    mut req: Request<C>,
    refusal: Refusal,
) -> Result<Response<B>, Error>
where
    S: Service<Request<C>, Response = Response<B>, Error = Error>,
    C: RefuseInPlace,
{
    let Some(substitute) = req.command.refuse_in_place(&refusal) else {
        return Err(Box::new(refusal));
    };
    req.command = substitute;
    req.upload = None;
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    let mut response = inner.call(req).await?;
    response.extensions.insert(RefusedInPlace(refusal));
    Ok(response)
}

/// `300s` → `5m`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{}s", s.max(1))
    }
}
