//! What an approval request is, and the one place its decisions are applied.

use std::time::{Duration, SystemTime};

use portcullis_core::Identity;
use serde::{Deserialize, Serialize};

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Waiting for approvers.
    Pending,
    /// Enough approvers approved; the statement runs.
    Approved,
    /// An approver denied it.
    Denied {
        /// Who.
        by: String,
        /// Why, when they said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Nobody decided in time.
    Expired,
    /// The client gave up (cancel, disconnect).
    Withdrawn,
}

impl State {
    /// The state's name: `pending`, `approved`, `denied`, `expired`, `withdrawn`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied { .. } => "denied",
            State::Expired => "expired",
            State::Withdrawn => "withdrawn",
        }
    }
}

/// The requester as listed to approvers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    /// The identity's subject.
    pub subject: String,
    /// Display name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// How the identity was established (`static_token`, `oidc`); absent in requests filed
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The OpenID Connect issuer, for an OIDC identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl Requester {
    /// The requester `identity`.
    pub fn of(identity: &Identity) -> Self {
        Requester {
            subject: identity.subject.clone(),
            display: identity.display.clone(),
            groups: identity.groups.clone(),
            method: Some(identity.method.to_string()),
            issuer: identity.issuer.clone(),
        }
    }

    /// Whether `who` is this requester: same method, issuer and subject (a static token and
    /// an OIDC subject of the same name are two identities). A request filed before the
    /// method was recorded compares the subject alone.
    pub fn is(&self, who: &Identity) -> bool {
        self.subject == who.subject
            && self
                .method
                .as_ref()
                .is_none_or(|m| *m == who.method.to_string() && self.issuer == who.issuer)
    }
}

/// One statement waiting for approval. Bound to one session and one exact command: the
/// waiting session runs exactly what was approved, once, and nothing else can use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The request id.
    pub id: String,
    /// Who asked (`identity` in `approvals list --json`).
    pub identity: Requester,
    /// The session id; in JSON as the trail writes it (16 hex digits), so that `audit show
    /// --session` finds it (a number, as earlier versions wrote, is read too).
    #[serde(with = "session_hex")]
    pub session: u64,
    /// The gateway target (listener name).
    pub target: String,
    /// The statement text(s), as sent.
    pub statement: String,
    /// Bound parameters, as text (binary ones in hex), when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
    /// The rule that asked for approval.
    pub rule: String,
    /// Groups whose members may approve.
    pub approvers: Vec<String>,
    /// How many different approvers must approve.
    pub min_approvals: u32,
    /// Who approved so far.
    #[serde(default)]
    pub approved_by: Vec<String>,
    /// Filed at (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// The waiting client gives up at (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: time::OffsetDateTime,
    /// Where it stands.
    #[serde(flatten)]
    pub state: State,
}

/// What a new request needs; the store gives it an id.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Who asks.
    pub identity: Requester,
    /// Session id.
    pub session: u64,
    /// Target name.
    pub target: String,
    /// Statement text(s).
    pub statement: String,
    /// Parameters as text.
    pub params: Vec<String>,
    /// The rule.
    pub rule: String,
    /// Approver groups.
    pub approvers: Vec<String>,
    /// Quorum.
    pub min_approvals: u32,
    /// How long the client waits.
    pub timeout: Duration,
}

impl NewRequest {
    /// The request filed now under `id`.
    pub fn filed(self, id: String) -> ApprovalRequest {
        let now = time::OffsetDateTime::from(SystemTime::now());
        let timeout = time::Duration::try_from(self.timeout).unwrap_or(time::Duration::DAY);
        ApprovalRequest {
            id,
            identity: self.identity,
            session: self.session,
            target: self.target,
            statement: self.statement,
            params: self.params,
            rule: self.rule,
            approvers: self.approvers,
            min_approvals: self.min_approvals.max(1),
            approved_by: Vec::new(),
            created_at: now,
            expires_at: now + timeout,
            state: State::Pending,
        }
    }
}

/// A fresh request id: 16 hex digits, random.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What an approver does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Approve.
    Approve,
    /// Deny, with an optional reason.
    Deny(Option<String>),
}

/// Why a decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// No such request.
    #[error("no approval request {0}")]
    NotFound(String),
    /// The request was already decided (or expired, or withdrawn).
    #[error("approval request {id} is already {state}")]
    NotPending {
        /// The request.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// The approver asked for it themselves.
    #[error("nobody approves their own request")]
    OwnRequest,
    /// The approver is not in an approver group.
    #[error("{who} is not in an approver group of this request ({groups})")]
    NotAnApprover {
        /// Who tried.
        who: String,
        /// The request's approver groups.
        groups: String,
    },
    /// The approver already approved.
    #[error("{0} already approved this request")]
    AlreadyApproved(String),
    /// The store failed.
    #[error("approval store: {0}")]
    Store(String),
}

/// Whether `who` may decide `request` at all (an approver, not the requester).
pub fn may_decide(request: &ApprovalRequest, who: &Identity) -> Result<(), DecideError> {
    if request.identity.is(who) {
        return Err(DecideError::OwnRequest);
    }
    if !who.in_any_group(&request.approvers) {
        return Err(DecideError::NotAnApprover {
            who: who.qualified(),
            groups: request.approvers.join(", "),
        });
    }
    Ok(())
}

/// Apply `answer` by `who` to `request` (every store calls this under its own lock or
/// transaction, so the rules are the same everywhere).
pub fn apply(
    request: &mut ApprovalRequest,
    who: &Identity,
    answer: &Answer,
) -> Result<(), DecideError> {
    if request.state != State::Pending {
        return Err(DecideError::NotPending {
            id: request.id.clone(),
            state: request.state.name(),
        });
    }
    // A request nobody closed in time (its gateway stopped while it waited) is expired.
    if request.expires_at < time::OffsetDateTime::now_utc() {
        return Err(DecideError::NotPending {
            id: request.id.clone(),
            state: State::Expired.name(),
        });
    }
    may_decide(request, who)?;
    match answer {
        Answer::Deny(reason) => {
            request.state = State::Denied {
                by: who.qualified(),
                reason: reason.clone(),
            };
        }
        Answer::Approve => {
            // Approvers are told apart by method and issuer too: `svc@issuer` (OIDC) is not
            // static `svc`.
            let me = who.qualified();
            if request.approved_by.contains(&me) {
                return Err(DecideError::AlreadyApproved(me));
            }
            request.approved_by.push(me);
            if request.approved_by.len() >= request.min_approvals as usize {
                request.state = State::Approved;
            }
        }
    }
    Ok(())
}

/// A request by alice (group `dba`) for `delete from t`, for tests: `min` approvals from
/// `dba`.
#[cfg(test)]
pub(crate) fn test_request(min: u32) -> NewRequest {
    NewRequest {
        identity: Requester::of(&Identity::new(
            "alice",
            vec!["dba".into()],
            portcullis_core::AuthMethod::StaticToken,
        )),
        session: 1,
        target: "pg".into(),
        statement: "delete from t".into(),
        params: Vec::new(),
        rule: "unbounded-writes".into(),
        approvers: vec!["dba".into()],
        min_approvals: min,
        timeout: Duration::from_secs(60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AuthMethod;

    fn who(subject: &str, groups: &[&str]) -> Identity {
        Identity::new(
            subject,
            groups.iter().map(|g| (*g).to_owned()).collect(),
            AuthMethod::StaticToken,
        )
    }

    fn request(min: u32) -> ApprovalRequest {
        test_request(min).filed("r1".into())
    }

    /// Session ids in JSON are the trail's form (hex), and earlier numbers still read.
    #[test]
    fn session_ids_are_written_as_the_trail_writes_them() {
        let r = request(1);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["session"], "0000000000000001");
        let back: ApprovalRequest = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, r);
        let mut old = json;
        old["session"] = serde_json::json!(1);
        let back: ApprovalRequest = serde_json::from_value(old).unwrap();
        assert_eq!(back.session, 1);
    }

    #[test]
    fn quorum_self_approval_and_groups() {
        let mut r = request(2);
        assert_eq!(
            apply(&mut r, &who("alice", &["dba"]), &Answer::Approve),
            Err(DecideError::OwnRequest)
        );
        assert!(matches!(
            apply(&mut r, &who("eve", &["analysts"]), &Answer::Approve),
            Err(DecideError::NotAnApprover { .. })
        ));
        apply(&mut r, &who("bob", &["dba"]), &Answer::Approve).unwrap();
        assert_eq!(r.state, State::Pending);
        assert_eq!(
            apply(&mut r, &who("bob", &["dba"]), &Answer::Approve),
            Err(DecideError::AlreadyApproved("bob".into()))
        );
        apply(&mut r, &who("carol", &["dba"]), &Answer::Approve).unwrap();
        assert_eq!(r.state, State::Approved);
        assert!(matches!(
            apply(&mut r, &who("dan", &["dba"]), &Answer::Deny(None)),
            Err(DecideError::NotPending {
                state: "approved",
                ..
            })
        ));
        let mut r = request(1);
        apply(
            &mut r,
            &who("bob", &["dba"]),
            &Answer::Deny(Some("no".into())),
        )
        .unwrap();
        assert_eq!(
            r.state,
            State::Denied {
                by: "bob".into(),
                reason: Some("no".into())
            }
        );
    }

    #[test]
    fn identities_are_method_issuer_and_subject() {
        // Static "alice" asked. An OIDC subject "alice" is someone else: not the requester
        // (so may approve when an approver), and a quorum of two needs two identities.
        let mut oidc = who("alice", &["dba"]);
        oidc.method = AuthMethod::Oidc;
        oidc.issuer = Some("https://idp.example".into());
        let mut r = request(2);
        assert!(!r.identity.is(&oidc));
        assert!(r.identity.is(&who("alice", &[])));
        assert_eq!(
            apply(&mut r, &who("alice", &["dba"]), &Answer::Approve),
            Err(DecideError::OwnRequest)
        );
        apply(&mut r, &oidc, &Answer::Approve).unwrap();
        assert_eq!(r.approved_by, ["alice@https://idp.example"]);
        // Static "alice@https://idp.example" (a token may be named so) cannot count twice.
        let mut spoof = who("alice@https://idp.example", &["dba"]);
        assert!(matches!(
            apply(&mut r, &spoof, &Answer::Approve),
            Err(DecideError::AlreadyApproved(_))
        ));
        spoof.subject = "bob".into();
        apply(&mut r, &spoof, &Answer::Approve).unwrap();
        assert_eq!(r.state, State::Approved);
        // A request filed before the method was recorded compares subjects alone.
        let mut old = request(1);
        old.identity.method = None;
        old.identity.issuer = None;
        assert!(old.identity.is(&oidc));
    }

    #[test]
    fn json_has_the_listed_fields() {
        let v = serde_json::to_value(request(1)).unwrap();
        for key in [
            "id",
            "identity",
            "statement",
            "rule",
            "target",
            "created_at",
            "expires_at",
            "state",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        let back: ApprovalRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, request(1).clone_with_times(&back));
    }

    impl ApprovalRequest {
        fn clone_with_times(mut self, other: &ApprovalRequest) -> Self {
            self.created_at = other.created_at;
            self.expires_at = other.expires_at;
            self
        }
    }
}

/// A session id in JSON as the audit trail writes it: 16 lower-case hex digits. A number
/// (what earlier versions stored) reads as well.
mod session_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{id:016x}"))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Hex(String),
        Number(u64),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(n),
            Either::Hex(h) => u64::from_str_radix(&h, 16).map_err(serde::de::Error::custom),
        }
    }
}
