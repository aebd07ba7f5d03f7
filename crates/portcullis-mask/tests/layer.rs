//! `MaskLayer` over a stand-in protocol: plans from result shapes, implied descriptions,
//! refusals, exemptions, detect mode and the decision it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use portcullis_core::{
    AuthMethod, Column, CommandKind, CommandView, DecisionLog, Error, EventKind, EventView,
    Identity, Protocol, Refusal, ReplyBody, ReplyBodyExt, Request, Response, RewriteEvent, Session,
    SessionId, Statement, ValueKind,
};
use portcullis_mask::{ColumnRule, Detectors, MaskLayer, MaskPolicy, Masker, Strategy};
use tower::{Layer, ServiceExt};

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Columns(Vec<Column>),
    Row(Vec<Option<Vec<u8>>>),
    Text(Vec<u8>),
    Done,
}

impl EventView for Ev {
    fn view(&self) -> EventKind<'_> {
        match self {
            Ev::Columns(c) => EventKind::Columns { count: c.len() },
            Ev::Row(_) => EventKind::Row,
            Ev::Text(_) => EventKind::Notice {
                code: "00000",
                message: "",
            },
            Ev::Done => EventKind::Complete {
                tag: "SELECT",
                rows: None,
            },
        }
    }
}

impl RewriteEvent for Ev {
    fn columns(&self) -> Option<Vec<Column>> {
        match self {
            Ev::Columns(c) => Some(c.clone()),
            _ => None,
        }
    }
    fn row_values(&self) -> Option<Vec<Option<&[u8]>>> {
        match self {
            Ev::Row(v) => Some(v.iter().map(|x| x.as_deref()).collect()),
            _ => None,
        }
    }
    fn with_row_values(&self, values: &[Option<Cow<'_, [u8]>>]) -> Option<Self> {
        Some(Ev::Row(
            values
                .iter()
                .map(|v| v.as_ref().map(|b| b.to_vec()))
                .collect(),
        ))
    }
    fn rewrite_text(&self, f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Option<Self> {
        match self {
            Ev::Text(t) => f(t).map(Ev::Text),
            _ => None,
        }
    }
}

struct Body {
    events: std::vec::IntoIter<Ev>,
    implied: Option<Vec<Column>>,
}

impl ReplyBody for Body {
    type Event = Ev;
    fn poll_event(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Ev, Error>>> {
        Poll::Ready(self.events.next().map(Ok))
    }
    fn implied_columns(&self) -> Option<Vec<Column>> {
        self.implied.clone()
    }
}

struct Sql;
impl CommandView for Sql {
    fn kind(&self) -> CommandKind {
        CommandKind::Statements
    }
    fn statements(&self) -> Vec<Statement<'_>> {
        vec![Statement::text("select")]
    }
}

fn policy() -> MaskPolicy {
    MaskPolicy::new(
        Masker::new(Detectors::all(), Strategy::Partial),
        vec![ColumnRule {
            pattern: "name".into(),
            strategy: Strategy::Redact,
            groups: vec![],
        }],
    )
    .exempt(vec!["compliance".into()])
}

fn cols() -> Vec<Column> {
    vec![
        Column::new("name", ValueKind::Text),
        Column::new("email", ValueKind::Text),
        Column::new("n", ValueKind::Integer),
        Column::new("blob", ValueKind::Opaque),
    ]
}

fn row() -> Ev {
    Ev::Row(vec![
        Some(b"Jane".to_vec()),
        Some(b"jane@example.com".to_vec()),
        Some(4111111111111111i64.to_be_bytes().to_vec()),
        Some(vec![0, 1, 2]),
    ])
}

async fn run(
    layer: MaskLayer,
    groups: &[&str],
    events: Vec<Ev>,
    implied: Option<Vec<Column>>,
) -> (Vec<Result<Ev, String>>, Vec<String>) {
    let decisions = Arc::new(Mutex::new(Vec::new()));
    let seen = decisions.clone();
    let svc = layer.layer(tower::service_fn(move |_req: Request<Sql>| {
        let body = Body {
            events: events.clone().into_iter(),
            implied: implied.clone(),
        };
        async move { Ok::<_, Error>(Response::new(body)) }
    }));
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let who = Identity::new(
        "alice",
        groups.iter().map(|g| (*g).to_owned()).collect(),
        AuthMethod::StaticToken,
    );
    let session = Arc::new(Session::new(
        SessionId(1),
        Protocol::Postgres,
        "t",
        peer,
        who,
    ));
    let mut req = Request::new(session, Sql);
    req.extensions.insert(DecisionLog::new(move |d| {
        seen.lock()
            .unwrap()
            .push(d.detail.clone().unwrap_or_default());
    }));
    let mut body = svc.oneshot(req).await.unwrap().body;
    let mut out = Vec::new();
    while let Some(e) = body.next_event().await {
        out.push(e.map_err(|e| e.to_string()));
    }
    drop(body);
    let decisions = decisions.lock().unwrap().clone();
    (out, decisions)
}

#[tokio::test]
async fn rows_are_masked_by_plan_and_content() {
    let (out, decisions) = run(
        MaskLayer::new(policy()),
        &["dev"],
        vec![
            Ev::Columns(cols()),
            row(),
            Ev::Text(b"call +1 415-555-0132".to_vec()),
            Ev::Done,
        ],
        None,
    )
    .await;
    assert_eq!(
        out[1],
        Ok(Ev::Row(vec![
            Some(b"[redacted]".to_vec()),
            Some(b"j***@example.com".to_vec()),
            None, // a card number in an integer: NULL
            Some(vec![0, 1, 2]),
        ]))
    );
    assert_eq!(out[2], Ok(Ev::Text(b"call +* ***-***-**32".to_vec())));
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert!(
        decisions[0].starts_with("masked 4 value(s)"),
        "{decisions:?}"
    );
}

#[tokio::test]
async fn rows_without_a_description_use_the_implied_one_or_are_refused() {
    let (out, _) = run(
        MaskLayer::new(policy()),
        &["dev"],
        vec![row()],
        Some(cols()),
    )
    .await;
    assert!(matches!(&out[0], Ok(Ev::Row(v)) if v[1].as_deref() == Some(&b"j***@example.com"[..])));
    let (out, _) = run(MaskLayer::new(policy()), &["dev"], vec![row()], None).await;
    assert_eq!(
        out[0],
        Err(Refusal::Masking {
            message: "rows arrived without a description of their columns".into()
        }
        .to_string())
    );
    // After a result ends, the next rows need a description again.
    let (out, _) = run(
        MaskLayer::new(policy()),
        &["dev"],
        vec![Ev::Columns(cols()), row(), Ev::Done, row()],
        None,
    )
    .await;
    assert!(out[3].is_err());
}

#[tokio::test]
async fn exempt_identities_detect_mode_and_disabled_change_nothing() {
    let events = vec![Ev::Columns(cols()), row(), Ev::Done];
    let (out, decisions) = run(
        MaskLayer::new(policy()),
        &["compliance"],
        events.clone(),
        None,
    )
    .await;
    assert_eq!(out, events.iter().cloned().map(Ok).collect::<Vec<_>>());
    assert!(decisions.is_empty());
    let (out, decisions) = run(
        MaskLayer::new(policy().detect_only(true)),
        &["dev"],
        events.clone(),
        None,
    )
    .await;
    assert_eq!(out, events.iter().cloned().map(Ok).collect::<Vec<_>>());
    assert!(
        decisions[0].starts_with("would mask (mode = detect) 3 value(s)"),
        "{decisions:?}"
    );
    let (out, _) = run(MaskLayer::disabled(), &["dev"], vec![row()], None).await;
    assert_eq!(out, vec![Ok(row())]);
}
