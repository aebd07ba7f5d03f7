use std::borrow::Cow;

/// The error type at layer boundaries: any typed leaf error, boxed.
///
/// Protocol servers call [`rescue`] on it to decide what the client sees.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A refusal a layer returns instead of a reply. The protocol server's rescue step turns it
/// into the client's native error (SQLSTATE, MySQL errno, HTTP status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The client could not be authenticated (bad, unknown, expired token).
    #[error("authentication failed: {reason}")]
    Unauthenticated {
        /// Why, in words the client may see.
        reason: String,
    },
    /// The session's credential expired: this command is refused (in place, so a
    /// transaction block fails as after any error), and the session stays open for the
    /// client to reconnect with a fresh one. PostgreSQL `ERROR 28P01`.
    #[error("authentication failed: {reason}")]
    Expired {
        /// Why, in words the client may see.
        reason: String,
    },
    /// A rule blocked the command.
    #[error("blocked by rule \"{rule}\": {message}")]
    Blocked {
        /// The rule's name.
        rule: String,
        /// The rule's message.
        message: String,
    },
    /// A person denied the approval request.
    #[error("approval request {request} was denied by {by}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    ApprovalDenied {
        /// The request id.
        request: String,
        /// Who denied it.
        by: String,
        /// Why, when they said (`approvals deny --reason`).
        reason: Option<String>,
    },
    /// Nobody approved in time.
    #[error("approval request {request} timed out")]
    ApprovalTimeout {
        /// The request id.
        request: String,
    },
    /// The client cancelled while the command waited in the gateway.
    #[error("canceling statement due to user request")]
    Cancelled,
    /// The audit trail could not record the command, so it was not run.
    #[error("the audit trail could not record this command, so it was not run: {reason}")]
    AuditUnavailable {
        /// What failed.
        reason: String,
    },
    /// The client broke the protocol; the session ends.
    #[error("protocol violation: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// The upstream cannot be reached or went away; the session ends.
    #[error("upstream unavailable: {message}")]
    UpstreamUnavailable {
        /// What happened.
        message: String,
    },
    /// A result could not be masked (its shape is unknown, or its format cannot be read), so
    /// it is not sent; the session goes on.
    #[error("masking: {message}")]
    Masking {
        /// Why.
        message: String,
    },
    /// The gateway refuses for a resource limit (too many sessions, too large a message).
    #[error("{message}")]
    Limit {
        /// What limit.
        message: String,
    },
    /// The statement nests too deeply or is too long to be read safely; this one statement
    /// is refused and the session goes on. PostgreSQL `54001`, MySQL `1436`, HTTP 413.
    #[error("statement too complex: {message}")]
    TooComplex {
        /// Why.
        message: String,
    },
}

/// What kind of reply a refusal becomes; protocol crates map it to their own codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RescueKind {
    /// PostgreSQL 28P01, MySQL 1045, HTTP 401.
    AuthenticationFailed,
    /// PostgreSQL 42501, MySQL 1142/1227, HTTP 403.
    Forbidden,
    /// PostgreSQL 57014, MySQL 3024, HTTP 504.
    TimedOut,
    /// PostgreSQL 57014 (user request), MySQL 1317, HTTP 499.
    Cancelled,
    /// PostgreSQL 58000, MySQL 1290, HTTP 503.
    AuditFailure,
    /// PostgreSQL 08P01, MySQL 1047, HTTP 400.
    ProtocolViolation,
    /// PostgreSQL 08006, MySQL 2013, HTTP 502.
    UpstreamUnavailable,
    /// PostgreSQL 53300/54000, MySQL 1040, HTTP 503.
    Limit,
    /// PostgreSQL 54001, MySQL 1436, HTTP 413: too deep or too long to read safely.
    TooComplex,
    /// PostgreSQL XX000, MySQL 1105, HTTP 500: an error that is not a refusal.
    Internal,
}

/// The outcome of [`rescue`]: what to tell the client and whether the session must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescue {
    /// The kind of native error to send.
    pub kind: RescueKind,
    /// The message for the client.
    pub message: Cow<'static, str>,
    /// `true` when the session cannot continue after this error.
    pub close: bool,
}

impl Refusal {
    /// The refusal anywhere in `error`'s source chain, if there is one.
    pub fn find(error: &Error) -> Option<&Refusal> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
        while let Some(err) = cause {
            if let Some(refusal) = err.downcast_ref::<Refusal>() {
                return Some(refusal);
            }
            cause = err.source();
        }
        None
    }
}

/// The rescue step: turn any layer error into what the client should see.
///
/// A [`Refusal`] anywhere in the error's source chain decides the kind; anything else is an
/// internal error that ends the session (the gateway cannot know the session's state after
/// an unexpected failure).
pub fn rescue(error: &Error) -> Rescue {
    if let Some(refusal) = Refusal::find(error) {
        let (kind, close) = match refusal {
            Refusal::Unauthenticated { .. } => (RescueKind::AuthenticationFailed, true),
            Refusal::Expired { .. } => (RescueKind::AuthenticationFailed, false),
            Refusal::Blocked { .. } | Refusal::ApprovalDenied { .. } | Refusal::Masking { .. } => {
                (RescueKind::Forbidden, false)
            }
            Refusal::ApprovalTimeout { .. } => (RescueKind::TimedOut, false),
            Refusal::Cancelled => (RescueKind::Cancelled, false),
            Refusal::AuditUnavailable { .. } => (RescueKind::AuditFailure, false),
            Refusal::Protocol { .. } => (RescueKind::ProtocolViolation, true),
            Refusal::UpstreamUnavailable { .. } => (RescueKind::UpstreamUnavailable, true),
            Refusal::Limit { .. } => (RescueKind::Limit, false),
            Refusal::TooComplex { .. } => (RescueKind::TooComplex, false),
        };
        return Rescue {
            kind,
            message: Cow::Owned(refusal.to_string()),
            close,
        };
    }
    Rescue {
        kind: RescueKind::Internal,
        message: Cow::Owned(format!("internal gateway error: {error}")),
        close: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapper(#[source] Refusal);

    #[test]
    fn rescue_finds_refusal_in_source_chain() {
        let err: Error = Box::new(Wrapper(Refusal::Blocked {
            rule: "no-drop".into(),
            message: "nope".into(),
        }));
        let r = rescue(&err);
        assert_eq!(r.kind, RescueKind::Forbidden);
        assert_eq!(r.message, "blocked by rule \"no-drop\": nope");
        assert!(!r.close);
    }

    #[test]
    fn unknown_errors_close_the_session() {
        let err: Error = "boom".into();
        let r = rescue(&err);
        assert_eq!(r.kind, RescueKind::Internal);
        assert!(r.close);
    }
}
