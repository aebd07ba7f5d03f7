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
    /// A description with a shape key (like PostgreSQL's RowDescription bytes).
    Shaped(Vec<Column>, Vec<u8>),
    /// The start of output in a binary format (PostgreSQL binary COPY).
    CopyOut,
    /// A chunk of that output.
    Copy(Vec<u8>),
    Row(Vec<Option<Vec<u8>>>),
    Text(Vec<u8>),
    Done,
}

impl EventView for Ev {
    fn view(&self) -> EventKind<'_> {
        match self {
            Ev::Columns(c) | Ev::Shaped(c, _) => EventKind::Columns { count: c.len() },
            Ev::Row(_) => EventKind::Row,
            Ev::Text(_) => EventKind::Notice {
                code: "00000",
                message: "",
            },
            Ev::CopyOut => EventKind::Other,
            Ev::Copy(c) => EventKind::CopyData(c),
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
            Ev::Columns(c) | Ev::Shaped(c, _) => Some(c.clone()),
            _ => None,
        }
    }
    fn shape(&self) -> Option<&[u8]> {
        match self {
            Ev::Shaped(_, key) => Some(key),
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
            Ev::Copy(c) => f(c).map(Ev::Copy),
            _ => None,
        }
    }
    fn opaque_output(&self) -> bool {
        matches!(self, Ev::CopyOut)
    }
}

struct Body {
    events: std::vec::IntoIter<Ev>,
    implied: Option<Vec<Column>>,
    asked: Option<Arc<std::sync::atomic::AtomicUsize>>,
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
        if let Some(asked) = &self.asked {
            asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
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
            asked: None,
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
            None, // a value no detector can read: NULL (fail closed)
        ]))
    );
    assert_eq!(out[2], Ok(Ev::Text(b"call +* ***-***-**32".to_vec())));
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert!(
        decisions[0].starts_with("masked 5 value(s)") && decisions[0].contains("unreadable=1"),
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
        decisions[0].starts_with("would mask (mode = detect) 4 value(s)")
            && decisions[0].contains("unreadable=1"),
        "{decisions:?}"
    );
    let (out, _) = run(MaskLayer::disabled(), &["dev"], vec![row()], None).await;
    assert_eq!(out, vec![Ok(row())]);
}

/// A session's plans are kept by result shape: the same description again is not planned
/// again (the protocol is not asked for the columns' sources), another shape is.
#[tokio::test]
async fn plans_are_reused_per_shape_within_a_session() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::Service;
    let asked = Arc::new(AtomicUsize::new(0));
    let script: Arc<Mutex<Vec<Vec<Ev>>>> = Arc::new(Mutex::new(Vec::new()));
    let (a, s) = (asked.clone(), script.clone());
    let mut svc = MaskLayer::new(policy()).layer(tower::service_fn(move |_req: Request<Sql>| {
        let events = s.lock().unwrap().remove(0);
        let body = Body {
            events: events.into_iter(),
            implied: None,
            asked: Some(a.clone()),
        };
        async move { Ok::<_, Error>(Response::new(body)) }
    }));
    let who = Identity::new("alice", vec!["dev".into()], AuthMethod::StaticToken);
    let session = Arc::new(Session::new(
        SessionId(1),
        Protocol::Postgres,
        "t",
        "127.0.0.1:1".parse().unwrap(),
        who,
    ));
    let shaped = |key: &[u8]| Ev::Shaped(cols(), key.to_vec());
    let mut results = Vec::new();
    for key in [&b"shape-1"[..], b"shape-1", b"shape-2", b"shape-1"] {
        script
            .lock()
            .unwrap()
            .push(vec![shaped(key), row(), Ev::Done]);
        let req = Request::new(session.clone(), Sql);
        let mut body = svc.ready().await.unwrap().call(req).await.unwrap().body;
        let mut out = Vec::new();
        while let Some(e) = body.next_event().await {
            out.push(e.unwrap());
        }
        results.push(out);
    }
    assert_eq!(asked.load(Ordering::Relaxed), 2, "planned once per shape");
    for out in &results {
        assert_eq!(
            out[1],
            Ev::Row(vec![
                Some(b"[redacted]".to_vec()),
                Some(b"j***@example.com".to_vec()),
                None,
                None, // a value no detector can read: NULL (fail closed)
            ]),
            "a reused plan masks the same"
        );
    }
}

/// Binary COPY: with the columns known, each tuple is rewritten field by field (text masked,
/// an integer holding a card number NULL, other binary values kept); without them, refused.
#[tokio::test]
async fn binary_copy_is_rewritten_with_known_columns() {
    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out
    }
    let card = 4111111111111111i64.to_be_bytes();
    let header = [&b"PGCOPY\n\xff\r\n\0"[..], &[0; 8]].concat();
    let first = [
        header,
        tuple(&[
            Some(b"Jane"),
            Some(b"jane@example.com"),
            Some(&card),
            Some(&[0, 1, 2]),
        ]),
    ]
    .concat();
    let events = vec![
        Ev::CopyOut,
        Ev::Copy(first),
        Ev::Copy(tuple(&[
            None,
            Some(b"nobody"),
            Some(&7i64.to_be_bytes()),
            None,
        ])),
        Ev::Copy((-1i16).to_be_bytes().to_vec()),
        Ev::Done,
    ];
    let (out, _) = run(
        MaskLayer::new(policy()),
        &["dev"],
        events.clone(),
        Some(cols()),
    )
    .await;
    let want_first = [
        &b"PGCOPY\n\xff\r\n\0"[..],
        &[0; 8],
        &tuple(&[
            Some(b"[redacted]"),
            Some(b"j***@example.com"),
            None,
            None, // unreadable: NULL
        ]),
    ]
    .concat();
    assert_eq!(out[1], Ok(Ev::Copy(want_first)));
    assert_eq!(out[2], Ok(events[2].clone()), "nothing to mask: unchanged");
    assert_eq!(out[3], Ok(events[3].clone()));

    // Without a description of the columns: refused before any data passes.
    let (out, _) = run(MaskLayer::new(policy()), &["dev"], events.clone(), None).await;
    assert!(
        matches!(&out[0], Err(e) if e.contains("binary COPY")),
        "{out:?}"
    );

    // A tuple cut short or with the wrong field count fails the command, never passes.
    let cut = vec![
        Ev::CopyOut,
        Ev::Copy(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0\x04".to_vec()),
        Ev::Done,
    ];
    let (out, _) = run(MaskLayer::new(policy()), &["dev"], cut, Some(cols())).await;
    assert!(
        matches!(&out[1], Err(e) if e.contains("binary COPY")),
        "{out:?}"
    );
}

proptest::proptest! {
    /// Any bytes as binary COPY data: masked or refused, never a panic.
    #[test]
    fn binary_copy_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 1..4)) {
        let mut events = vec![Ev::CopyOut];
        events.extend(chunks.into_iter().map(Ev::Copy));
        events.push(Ev::Done);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (out, _) = runtime.block_on(run(MaskLayer::new(policy()), &["dev"], events, Some(cols())));
        proptest::prop_assert!(!out.is_empty());
    }
}
