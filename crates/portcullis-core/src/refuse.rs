use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{CommandView, Error, Refusal, Request, Response};

/// Commands a layer can refuse *in place*: instead of answering the client itself, the layer
/// sends the database a substitute that fails the same way, so that the client and the
/// database end in the same state (ARCHITECTURE.md, principle 5) — inside a transaction block
/// both are in the failed-transaction state afterwards, and a later `COMMIT` rolls back.
///
/// The substitute runs none of the original statements. Its reply carries the refusal as the
/// protocol's native error (the database's own error replaced by the gateway's). A protocol
/// without transactions to keep in step (HTTP) returns `None`, and the layer answers with the
/// [`Refusal`] as an error.
pub trait RefuseInPlace: Sized {
    /// A command that fails upstream with `refusal`'s error and runs nothing else, or `None`
    /// when the refusal is better answered by the gateway alone.
    fn refuse_in_place(&self, refusal: &Refusal) -> Option<Self>;
}

/// Put in a response's extensions by a layer that refused its command in place
/// ([`RefuseInPlace`]): the reply is the refusal, so the audit trail records the command as
/// refused rather than as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedInPlace(pub Refusal);

pin_project! {
    /// The future of a layer that may refuse its command: the inner service's answer, the
    /// answer to a substitute that refused in place (marked [`RefusedInPlace`]), or the
    /// refusal itself. Built by [`Refusing::pass`] and [`Refusing::refuse`].
    #[derive(Debug)]
    pub struct Refusing<F> {
        #[pin]
        inner: Option<F>,
        refusal: Option<Refusal>,
    }
}

impl<F> Refusing<F> {
    /// The command goes on unchanged.
    pub fn pass(inner: F) -> Self {
        Refusing {
            inner: Some(inner),
            refusal: None,
        }
    }

    /// Answer at once with `refusal` as the error; nothing reaches the inner service.
    pub fn refuse_now(refusal: Refusal) -> Self {
        Refusing {
            inner: None,
            refusal: Some(refusal),
        }
    }

    /// Refuse `req` with `refusal`: in place when the command can be ([`RefuseInPlace`] —
    /// the substitute is sent to `service`, its upload dropped), else answered at once with
    /// the refusal as the error.
    pub fn refuse<S, C>(service: &mut S, mut req: Request<C>, refusal: Refusal) -> Self
    where
        S: Service<Request<C>, Future = F>,
        C: CommandView + RefuseInPlace,
    {
        match req.command.refuse_in_place(&refusal) {
            Some(substitute) => {
                req.command = substitute;
                req.upload = None;
                Refusing {
                    inner: Some(service.call(req)),
                    refusal: Some(refusal),
                }
            }
            None => Refusing::refuse_now(refusal),
        }
    }
}

impl<F, B> Future for Refusing<F>
where
    F: Future<Output = Result<Response<B>, Error>>,
{
    type Output = Result<Response<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(match this.refusal.take() {
                Some(refusal) => Box::new(refusal),
                None => "a refusing future was polled after completion".into(),
            }));
        };
        let mut response = ready!(inner.poll(cx))?;
        if let Some(refusal) = this.refusal.take() {
            // The audit layer records the refusal (and its rule) from this marker.
            response.extensions.insert(RefusedInPlace(refusal));
        }
        Poll::Ready(Ok(response))
    }
}
