//! `ApprovalLayer` with a stand-in command type and inner service: the wait, the decisions,
//! the refusals, and that the inner service is only called once people have decided.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis_approval::{
    Answer, ApprovalLayer, ApprovalStore, MemoryStore, Notifier, State, WebhookNotifier,
};
use portcullis_core::{
    AuthMethod, CommandKind, CommandView, Decisions, Empty, Error, Identity, Protocol, Refusal,
    RefuseInPlace, RefusedInPlace, Request, Response, Session, SessionId, Statement, Verdict,
};
use tower::{Layer, ServiceExt};

#[derive(Debug, Clone)]
struct Sql {
    text: String,
    refused: bool,
}

impl CommandView for Sql {
    fn kind(&self) -> CommandKind {
        CommandKind::Statements
    }
    fn statements(&self) -> Vec<Statement<'_>> {
        vec![Statement::text(&self.text)]
    }
}

impl RefuseInPlace for Sql {
    fn refuse_in_place(&self, _refusal: &Refusal) -> Option<Self> {
        Some(Sql {
            text: "fail".into(),
            refused: true,
        })
    }
}

/// An inner service that counts calls of original (not substituted) commands.
fn inner(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<Request<Sql>, Response = Response<Empty<()>>, Error = Error, Future = impl Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Request<Sql>| {
        let calls = calls.clone();
        async move {
            if !req.command.refused {
                calls.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, Error>(Response::new(Empty::<()>::default()))
        }
    })
}

fn session(subject: &str) -> Arc<Session> {
    let identity = Identity::new(subject, vec!["dev".into()], AuthMethod::StaticToken);
    let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let session = Session::new(SessionId(1), Protocol::Postgres, "main", peer, identity);
    // Take the notice channel as a protocol server would.
    let _ = session.notices.take_receiver();
    Arc::new(session)
}

fn held(session: &Arc<Session>, text: &str) -> Request<Sql> {
    let mut req = Request::new(
        session.clone(),
        Sql {
            text: text.into(),
            refused: false,
        },
    );
    req.extensions
        .insert(Verdict::approve("unbounded-writes", vec!["dba".into()], 2));
    req
}

fn dba(name: &str) -> Identity {
    Identity::new(name, vec!["dba".into()], AuthMethod::StaticToken)
}

async fn pending_id(store: &MemoryStore) -> String {
    for _ in 0..200 {
        if let Some(r) = store.list(true).await.unwrap().into_iter().next() {
            return r.id;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no request was filed");
}

#[tokio::test]
async fn a_quorum_approves_and_only_then_the_command_runs() {
    let store = MemoryStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ApprovalLayer::new(Arc::new(store.clone()), Duration::from_secs(60))
        .layer(inner(calls.clone()));
    let identity = Identity::new("alice", vec!["dev".into()], AuthMethod::StaticToken);
    let peer: SocketAddr = "127.0.0.1:5001".parse().unwrap();
    let s = Arc::new(Session::new(
        SessionId(2),
        Protocol::Postgres,
        "main",
        peer,
        identity,
    ));
    let mut notices = s.notices.take_receiver().unwrap();

    let call = tokio::spawn(svc.oneshot(held(&s, "delete from t")));
    let notice = rx_recv(&mut notices).await;
    let id = pending_id(&store).await;
    assert_eq!(
        notice.message,
        format!("statement held for approval: request {id} (rule \"unbounded-writes\")")
    );
    assert!(notice.detail.unwrap().contains("2 approval(s) needed"));
    assert!(
        notice
            .hint
            .unwrap()
            .contains(&format!("portcullis approvals approve {id}"))
    );
    let filed = store.get(&id).await.unwrap().unwrap();
    assert_eq!(filed.statement, "delete from t");
    assert_eq!(filed.identity.subject, "alice");

    store
        .decide(&id, &dba("dana"), Answer::Approve)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0, "ran before the quorum");
    assert!(!call.is_finished());
    store
        .decide(&id, &dba("bob"), Answer::Approve)
        .await
        .unwrap();
    let response = call.await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let decisions = Decisions::of(&response.extensions);
    assert!(
        decisions[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("approved by dana, bob")
    );
}

async fn rx_recv(
    rx: &mut tokio::sync::mpsc::Receiver<portcullis_core::ClientNotice>,
) -> portcullis_core::ClientNotice {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn denial_timeout_and_cancel_are_refused_in_place() {
    let store = MemoryStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ApprovalLayer::new(Arc::new(store.clone()), Duration::from_millis(300));
    let svc = layer.layer(inner(calls.clone()));
    let s = session("alice");

    let call = tokio::spawn(svc.clone().oneshot(held(&s, "delete from t")));
    let id = pending_id(&store).await;
    store
        .decide(&id, &dba("dana"), Answer::Deny(Some("not today".into())))
        .await
        .unwrap();
    let response = call.await.unwrap().unwrap();
    assert_eq!(
        response.extensions.get::<RefusedInPlace>(),
        Some(&RefusedInPlace(Refusal::ApprovalDenied {
            request: id,
            by: "dana".into(),
            reason: Some("not today".into()),
        }))
    );

    // Timeout: the request expires.
    let response = svc
        .clone()
        .oneshot(held(&s, "delete from t"))
        .await
        .unwrap();
    let Some(RefusedInPlace(Refusal::ApprovalTimeout { request })) =
        response.extensions.get::<RefusedInPlace>()
    else {
        panic!("not a timeout");
    };
    assert_eq!(
        store.get(request).await.unwrap().unwrap().state,
        State::Expired
    );

    // Cancel: the request is withdrawn.
    let call = tokio::spawn(svc.clone().oneshot(held(&s, "delete from t")));
    let id = pending_id(&store).await;
    s.cancel.fire();
    let response = call.await.unwrap().unwrap();
    assert_eq!(
        response.extensions.get::<RefusedInPlace>(),
        Some(&RefusedInPlace(Refusal::Cancelled))
    );
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().state,
        State::Withdrawn
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // The client goes away while waiting: the request is withdrawn.
    let call = tokio::spawn(svc.clone().oneshot(held(&s, "delete from t")));
    let id = pending_id(&store).await;
    call.abort();
    let mut state = State::Pending;
    for _ in 0..200 {
        state = store.get(&id).await.unwrap().unwrap().state;
        if state != State::Pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state, State::Withdrawn);

    // Without a verdict, commands pass straight through.
    let mut req = held(&s, "select 1");
    req.extensions.remove::<Verdict>();
    svc.oneshot(req).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn webhook_failures_are_retried_and_counted() {
    // Nothing listens on this port: every attempt fails.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let hook = WebhookNotifier::new(format!("http://127.0.0.1:{port}/hook"))
        .retries(3, Duration::from_millis(10));
    let stats = hook.stats();
    let store = MemoryStore::new();
    let request = store
        .file(portcullis_approval::NewRequest {
            identity: portcullis_approval::Requester::of(&portcullis_core::Identity::new(
                "alice",
                vec![],
                portcullis_core::AuthMethod::StaticToken,
            )),
            session: 1,
            target: "main".into(),
            statement: "delete from t".into(),
            params: vec![],
            rule: "r".into(),
            approvers: vec!["dba".into()],
            min_approvals: 1,
            timeout: Duration::from_secs(60),
        })
        .await
        .unwrap();
    hook.notify(&request);
    for _ in 0..500 {
        if stats.dropped.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
    assert_eq!(stats.failed_attempts.load(Ordering::Relaxed), 3);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
    let message = WebhookNotifier::message(&request);
    assert!(message["text"].as_str().unwrap().contains(&request.id));
}

#[tokio::test]
async fn listings_show_statements_redacted() {
    let store = MemoryStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let redactor = portcullis_core::TextRedactor::new(|t| {
        t.contains("jane@example.com")
            .then(|| t.replace("jane@example.com", "j***@example.com"))
    });
    let svc = ApprovalLayer::new(Arc::new(store.clone()), Duration::from_secs(60))
        .with_redactor(redactor)
        .layer(inner(calls.clone()));
    let s = session("alice");
    let call =
        tokio::spawn(svc.oneshot(held(&s, "delete from t where email = 'jane@example.com'")));
    let id = pending_id(&store).await;
    let filed = store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        filed.statement,
        "delete from t where email = 'j***@example.com'"
    );
    store
        .decide(&id, &dba("dana"), Answer::Approve)
        .await
        .unwrap();
    store
        .decide(&id, &dba("bob"), Answer::Approve)
        .await
        .unwrap();
    call.await.unwrap().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the statement itself runs as sent"
    );
}
