/// What a policy decided about one command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Verdict {
    /// Let it through.
    #[default]
    Allow,
    /// Refuse it with a native error naming the rule.
    Deny {
        /// The rule's name.
        rule: String,
        /// Its message to the client.
        message: String,
    },
    /// Hold it until enough of `approvers` approve.
    Approve {
        /// The rule's name.
        rule: String,
        /// Groups whose members may approve.
        approvers: Vec<String>,
        /// How many different approvers must approve (at least 1).
        min_approvals: u32,
    },
}

impl Verdict {
    /// A [`Verdict::Deny`].
    pub fn deny(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Verdict::Deny {
            rule: rule.into(),
            message: message.into(),
        }
    }

    /// A [`Verdict::Approve`].
    pub fn approve(rule: impl Into<String>, approvers: Vec<String>, min_approvals: u32) -> Self {
        Verdict::Approve {
            rule: rule.into(),
            approvers,
            min_approvals: min_approvals.max(1),
        }
    }

    /// How strict this verdict is: `Allow` < `Approve` < `Deny`. A command made of several
    /// statements takes the strictest verdict of its statements.
    pub fn strictness(&self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::Approve { .. } => 1,
            Verdict::Deny { .. } => 2,
        }
    }
}

/// A decision an inner layer reports outward, through the response (or error) extensions, so
/// that the audit layer records it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Which layer decided (`"guard"`, `"approval"`, `"mask"`, ...).
    pub layer: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// Free-form detail (approval id and approver, masked columns, ...).
    pub detail: Option<String>,
}

impl Decision {
    /// A decision by `layer`.
    pub fn new(layer: &'static str, verdict: Verdict) -> Self {
        Decision {
            layer,
            verdict,
            detail: None,
        }
    }

    /// With a detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Every [`Decision`] reported for one command, in the order the layers made them. Inner
/// layers add theirs with [`Decisions::record`]; the audit layer reads them from the
/// response's (or the error's) extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions(pub Vec<Decision>);

impl Decisions {
    /// Add `decision` to the decisions in `extensions`.
    pub fn record(extensions: &mut http::Extensions, decision: Decision) {
        match extensions.get_mut::<Decisions>() {
            Some(list) => list.0.push(decision),
            None => {
                extensions.insert(Decisions(vec![decision]));
            }
        }
    }

    /// The decisions in `extensions` (empty when no layer reported one).
    pub fn of(extensions: &http::Extensions) -> &[Decision] {
        extensions
            .get::<Decisions>()
            .map_or(&[], |d| d.0.as_slice())
    }
}

/// Where a layer reports a decision *as it is made* — e.g. "approval requested" while the
/// command waits for a person — rather than only with the command's outcome. The audit layer
/// puts one in each request's extensions; a layer that finds it calls [`DecisionLog::record`].
#[derive(Clone)]
pub struct DecisionLog(std::sync::Arc<dyn Fn(&Decision) + Send + Sync>);

impl DecisionLog {
    /// A log that hands each decision to `record` (which must not block).
    pub fn new(record: impl Fn(&Decision) + Send + Sync + 'static) -> Self {
        DecisionLog(std::sync::Arc::new(record))
    }

    /// Record `decision` now.
    pub fn record(&self, decision: &Decision) {
        (self.0)(decision)
    }

    /// Record `decision` through the log in `extensions`, if there is one.
    pub fn record_in(extensions: &http::Extensions, decision: &Decision) {
        if let Some(log) = extensions.get::<DecisionLog>() {
            log.record(decision);
        }
    }
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DecisionLog").finish_non_exhaustive()
    }
}
