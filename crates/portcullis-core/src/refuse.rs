use crate::Refusal;

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
