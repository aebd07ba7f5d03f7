//! `MaskLayer`: rewrites reply bodies so personal data never reaches a client the policy
//! does not exempt.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use portcullis_core::{
    Column, CommandView, CopyLayout, Decision, DecisionLog, Error, EventKind, EventView, Identity,
    Protocol, Refusal, ReplyBody, Request, Response, RewriteEvent, Session, TextRedactor,
    ValueKind, Verdict, wildcard,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::detect::{Finding, Kind};
use crate::mask::{Masked, Masker, Strategy};

/// A column rule: values of matching columns are masked whatever their content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRule {
    /// A glob over `[schema.]table.column` (matched against the column's source when known)
    /// or a bare column name (matched against the source column's name and the output label).
    pub pattern: String,
    /// How.
    pub strategy: Strategy,
    /// The rule applies to these groups only (empty: everyone not exempt).
    pub groups: Vec<String>,
}

/// What to do with an HTTP body that is not JSON (the only body format masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtherBodies {
    /// Pass it unchanged (the default): images, files, HTML are not scanned.
    #[default]
    Pass,
    /// Refuse the response (`403` before its head reaches the client).
    Block,
}

/// What to mask and for whom.
#[derive(Debug, Clone)]
pub struct MaskPolicy {
    masker: Masker,
    columns: Vec<ColumnRule>,
    exempt_groups: Vec<String>,
    detect_only: bool,
    json: Arc<crate::json::JsonPolicy>,
    other_bodies: OtherBodies,
    lineage: Option<LineageReader>,
}

/// Reads where a statement's result columns come from, for protocols whose column
/// descriptions name a derived table, a CTE or a view rather than the base table (MySQL):
/// for each output column name (lower case), the base columns (`[schema.]table.column`)
/// its value is made of. `portcullis_policy::mysql_lineage` is one.
#[derive(Clone)]
pub struct LineageReader {
    protocol: Protocol,
    read: Arc<LineageFn>,
}

type LineageFn = dyn Fn(&Session, &str) -> Vec<(String, Vec<String>)> + Send + Sync;

impl LineageReader {
    /// A reader for sessions of `protocol`, calling `read(session, statements)`.
    pub fn new(
        protocol: Protocol,
        read: impl Fn(&Session, &str) -> Vec<(String, Vec<String>)> + Send + Sync + 'static,
    ) -> Self {
        LineageReader {
            protocol,
            read: Arc::new(read),
        }
    }
}

impl std::fmt::Debug for LineageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineageReader").finish_non_exhaustive()
    }
}

impl MaskPolicy {
    /// Content detection with `masker`, plus `columns` rules.
    pub fn new(masker: Masker, columns: Vec<ColumnRule>) -> Self {
        MaskPolicy {
            json: Arc::new(crate::json::JsonPolicy::new(masker.clone())),
            masker,
            columns,
            exempt_groups: Vec::new(),
            detect_only: false,
            other_bodies: OtherBodies::Pass,
            lineage: None,
        }
    }

    /// Follow result columns whose reported source is not proven a base table (a derived
    /// table, a CTE or a view: [`Column::source_uncertain`]) or unknown (a computed value)
    /// through the statement with `reader`: a column rule then also matches a column made of
    /// a base column it names (`SELECT n FROM (SELECT full_name AS n FROM customers) x` under
    /// a rule on `customers.full_name`).
    pub fn with_lineage(mut self, reader: LineageReader) -> Self {
        self.lineage = Some(reader);
        self
    }

    /// Rules on JSON paths for HTTP bodies (`$..email`, `$.items[*].card`), with the
    /// strategy each masks with; the detectors apply to every string value as well.
    pub fn json_rules(mut self, rules: Vec<(crate::json::JsonPath, Strategy)>) -> Self {
        let mut policy =
            crate::json::JsonPolicy::new(self.masker.clone()).detect_only(self.detect_only);
        for (path, strategy) in rules {
            policy = policy.with_rule(path, strategy);
        }
        self.json = Arc::new(policy);
        self
    }

    /// What to do with HTTP bodies that are not JSON.
    pub fn other_bodies(mut self, other: OtherBodies) -> Self {
        self.other_bodies = other;
        self
    }

    /// Whether any column rule exists (then a protocol should resolve columns' sources).
    pub fn has_column_rules(&self) -> bool {
        !self.columns.is_empty()
    }

    /// Identities in these groups see clear values.
    pub fn exempt(mut self, groups: Vec<String>) -> Self {
        self.exempt_groups = groups;
        self
    }

    /// Count what would be masked, change nothing (`mode = "detect"`).
    pub fn detect_only(mut self, yes: bool) -> Self {
        self.detect_only = yes;
        let mut json = (*self.json).clone();
        json = json.detect_only(yes);
        self.json = Arc::new(json);
        self
    }

    /// A redactor for statement text and parameters (audit trail, approval listings) with
    /// the same detectors as results. In detect mode nothing is changed.
    pub fn redactor(&self) -> TextRedactor {
        let masker = self.masker.clone();
        let for_statements = self.masker.clone();
        let detect_only = self.detect_only;
        TextRedactor::new(move |text| {
            if detect_only {
                return None;
            }
            let (mut scratch, mut counts) = (Vec::new(), BTreeMap::new());
            match masker.mask(text.as_bytes(), &mut scratch, &mut counts) {
                Masked::Clean => None,
                Masked::Rewritten(out) => Some(String::from_utf8_lossy(&out).into_owned()),
                Masked::Null => Some("[redacted]".to_owned()),
            }
        })
        .with_statements(move |protocol, text| {
            if detect_only {
                return None;
            }
            crate::statement::mask_statement(&for_statements, protocol, text)
        })
    }

    fn exempt_for(&self, identity: &Identity) -> bool {
        identity.in_any_group(&self.exempt_groups)
    }

    /// The plan for a result with `columns`, for `identity`.
    fn plan(&self, columns: Vec<Column>, identity: &Identity) -> Vec<Action> {
        self.plan_with(columns, identity, &[])
    }

    /// [`MaskPolicy::plan`], with the statement's `lineage` for columns whose source is not
    /// proven.
    fn plan_with(
        &self,
        columns: Vec<Column>,
        identity: &Identity,
        lineage: &[(String, Vec<String>)],
    ) -> Vec<Action> {
        let ruled = self
            .columns
            .iter()
            .any(|r| r.groups.is_empty() || identity.in_any_group(&r.groups));
        columns
            .into_iter()
            .map(|c| {
                // What the value is made of, when the reported source does not prove it.
                let made_of: Vec<Column> = if c.source.is_none() || c.source_uncertain {
                    let label = c.label.to_lowercase();
                    lineage
                        .iter()
                        .filter(|(name, _)| *name == label)
                        .flat_map(|(_, sources)| sources)
                        .map(|source| Column::new(&c.label, c.kind).with_source(source.clone()))
                        .collect()
                } else {
                    Vec::new()
                };
                let rule = self.columns.iter().find(|r| {
                    (r.groups.is_empty() || identity.in_any_group(&r.groups))
                        && (column_matches(&r.pattern, &c)
                            || made_of.iter().any(|m| column_matches(&r.pattern, m)))
                });
                // A table's row type the catalog resolved: the column rules of its fields.
                let fields = c.fields.as_ref().map(|sources| {
                    sources
                        .iter()
                        .map(|source| {
                            let name = source.rsplit('.').next().unwrap_or(source);
                            let field =
                                Column::new(name, ValueKind::Text).with_source(source.clone());
                            self.columns
                                .iter()
                                .find(|r| {
                                    (r.groups.is_empty() || identity.in_any_group(&r.groups))
                                        && column_matches(&r.pattern, &field)
                                })
                                .map(|r| r.strategy)
                        })
                        .collect::<Vec<_>>()
                });
                Action {
                    kind: c.kind,
                    number: c.number,
                    json: c.json,
                    whole: rule.map(|r| r.strategy),
                    // Column rules cannot be checked on the fields of a row whose type the
                    // catalog did not resolve: under any rule, a value that reads as a row is
                    // masked whole.
                    rows_whole: ruled && c.composite && fields.is_none(),
                    fields,
                    label: c.label,
                }
            })
            .collect()
    }
}

fn column_matches(pattern: &str, c: &Column) -> bool {
    if let Some((_, column)) = pattern.rsplit_once('.') {
        return match c.source.as_deref() {
            Some(source) => {
                wildcard(pattern, source)
                    || source
                        .split_once('.')
                        .is_some_and(|(_, rest)| wildcard(pattern, rest))
                    // The table may be a derived table, a CTE or a view over the rule's
                    // table: the column part against the source column's name.
                    || (c.source_uncertain
                        && source
                            .rsplit_once('.')
                            .is_some_and(|(_, name)| wildcard(column, name)))
            }
            // Source unknown (a computed value, or not resolved): the column part of the
            // pattern against the label — masking more rather than less.
            None => wildcard(column, &c.label),
        };
    }
    let source_name = c.source.as_deref().and_then(|s| s.rsplit('.').next());
    wildcard(pattern, &c.label) || source_name.is_some_and(|n| wildcard(pattern, n))
}

/// The bytes of a `\x…` hex text value; `None` when `v` is not in that form.
fn decode_hex(v: &[u8]) -> Option<Vec<u8>> {
    let hex = v.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    hex.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// `bytes` as a `\x…` hex text value.
fn encode_hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(2 + bytes.len() * 2);
    out.extend_from_slice(b"\\x");
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
    out
}

/// COPY output read row by row.
#[derive(Debug, Clone)]
enum Copying {
    /// PostgreSQL's binary format.
    Binary { plan: Plan, header_seen: bool },
    /// Text or CSV; `header`: the next row is the column names.
    Text { plan: Plan, csv: bool, header: bool },
}

/// What to do with one column.
#[derive(Debug, Clone)]
struct Action {
    label: String,
    kind: ValueKind,
    /// Its text values are numbers to the client: a masked one is NULL.
    number: bool,
    /// Its values are JSON to the client: masked as JSON, NULL when masked whole.
    json: bool,
    whole: Option<Strategy>,
    /// A value that reads as a row (`(…)` in text, any binary value) is masked whole.
    rows_whole: bool,
    /// For a table's row type: each field's column rule.
    fields: Option<Vec<Option<Strategy>>>,
}

/// Masks reply bodies ([`MaskPolicy`]); `MaskLayer::disabled()` costs one branch.
#[derive(Debug, Clone, Default)]
pub struct MaskLayer {
    policy: Option<Arc<MaskPolicy>>,
}

impl MaskLayer {
    /// Mask with `policy`.
    pub fn new(policy: MaskPolicy) -> Self {
        MaskLayer {
            policy: Some(Arc::new(policy)),
        }
    }

    /// Mask nothing.
    pub fn disabled() -> Self {
        MaskLayer { policy: None }
    }
}

impl<S> Layer<S> for MaskLayer {
    type Service = Mask<S>;
    fn layer(&self, inner: S) -> Mask<S> {
        Mask {
            inner,
            policy: self.policy.clone(),
            plans: Arc::default(),
        }
    }
}

/// The service [`MaskLayer`] makes (one per session).
#[derive(Debug, Clone)]
pub struct Mask<S> {
    inner: S,
    policy: Option<Arc<MaskPolicy>>,
    /// Plans already made in this session, by result shape.
    plans: Arc<Mutex<Plans>>,
}

/// A result's plan: what to do with each column.
type Plan = Arc<[Action]>;

/// The plans of one session by result shape ([`RewriteEvent::shape`]): a session runs the
/// same queries again and again, and an identical description gives an identical plan.
#[derive(Debug, Default)]
struct Plans(HashMap<Box<[u8]>, Plan>);

fn lock(plans: &Mutex<Plans>) -> MutexGuard<'_, Plans> {
    // Nothing can panic while the lock is held; recover the guard anyway.
    plans.lock().unwrap_or_else(|p| p.into_inner())
}

/// Most shapes remembered per session.
const MAX_PLANS: usize = 256;

impl Plans {
    fn get(&self, shape: &[u8]) -> Option<Plan> {
        self.0.get(shape).cloned()
    }

    fn put(&mut self, shape: &[u8], plan: &Plan) {
        if self.0.len() >= MAX_PLANS {
            self.0.clear();
        }
        self.0.insert(shape.into(), plan.clone());
    }
}

impl<S, C, B> Service<Request<C>> for Mask<S>
where
    C: CommandView,
    S: Service<Request<C>, Response = Response<B>, Error = Error>,
    B: ReplyBody,
    B::Event: EventView + RewriteEvent,
{
    type Response = Response<MaskBody<B>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<C>) -> Self::Future {
        let watch = match &self.policy {
            Some(p) if !p.exempt_for(&req.session.identity) => Some(Watch {
                policy: p.clone(),
                session: req.session.clone(),
                log: req.extensions.get::<DecisionLog>().cloned(),
                plans: self.plans.clone(),
                // Kept only where the lineage may be read: column rules and a reader.
                statements: (p.has_column_rules()
                    && p.lineage
                        .as_ref()
                        .is_some_and(|l| l.protocol == req.session.protocol))
                .then(|| {
                    req.command
                        .statements()
                        .iter()
                        .map(|s| s.text.to_owned())
                        .collect::<Vec<_>>()
                        .join(";\n")
                }),
            }),
            _ => None,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            watch,
        }
    }
}

#[derive(Debug)]
struct Watch {
    policy: Arc<MaskPolicy>,
    session: Arc<Session>,
    log: Option<DecisionLog>,
    plans: Arc<Mutex<Plans>>,
    /// The command's statements, when their lineage may be read.
    statements: Option<String>,
}

impl Watch {
    /// The lineage of the command's result columns, when the policy reads it and `columns`
    /// has one whose source is not proven.
    fn lineage(&self, columns: &[Column]) -> Vec<(String, Vec<String>)> {
        let (Some(reader), Some(text)) = (&self.policy.lineage, &self.statements) else {
            return Vec::new();
        };
        if !columns
            .iter()
            .any(|c| c.source.is_none() || c.source_uncertain)
        {
            return Vec::new();
        }
        (reader.read)(&self.session, text)
    }
}

pin_project! {
    /// The [`Mask`] service's future.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        watch: Option<Watch>,
    }
}

impl<F, B> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, Error>>,
{
    type Output = Result<Response<MaskBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let watch = this.watch.take();
        Poll::Ready(Ok(response.map_body(|inner| MaskBody {
            inner,
            state: watch.map(|w| Box::new(State::new(w))),
        })))
    }
}

#[derive(Debug)]
struct State {
    watch: Watch,
    /// An HTTP JSON body being masked as it streams.
    json: Option<crate::json::JsonMasker>,
    plan: Option<Plan>,
    /// COPY output being rewritten row by row.
    copy: Option<Copying>,
    /// Whether the COPY output now streaming was already looked at.
    copy_checked: bool,
    scratch: Vec<Finding>,
    kinds: BTreeMap<Kind, u64>,
    columns: BTreeMap<String, u64>,
    values: u64,
    /// Values replaced whole because they could not be read (binary values of types no
    /// detector reads).
    unreadable: u64,
}

impl State {
    fn new(watch: Watch) -> Self {
        State {
            watch,
            json: None,
            plan: None,
            copy: None,
            copy_checked: false,
            scratch: Vec::new(),
            kinds: BTreeMap::new(),
            columns: BTreeMap::new(),
            values: 0,
            unreadable: 0,
        }
    }

    /// Mask free text with the detectors.
    fn text(&mut self, v: &[u8]) -> Option<Vec<u8>> {
        match self
            .watch
            .policy
            .masker
            .mask(v, &mut self.scratch, &mut self.kinds)
        {
            Masked::Clean => None,
            _ if self.watch.policy.detect_only => {
                self.values += 1;
                None
            }
            Masked::Rewritten(out) => {
                self.values += 1;
                Some(out)
            }
            Masked::Null => {
                self.values += 1;
                Some(b"[redacted]".to_vec())
            }
        }
    }

    /// One CopyData message of COPY output being read row by row: the rewritten message,
    /// `Ok(None)` when nothing changed, `Err` when it cannot be read (then nothing of it is
    /// passed).
    fn copy_row(&mut self, payload: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
        match self.copy.clone() {
            Some(Copying::Binary { plan, header_seen }) => {
                self.binary_copy(payload, &plan, header_seen)
            }
            Some(Copying::Text { plan, csv, header }) => {
                if header {
                    // The column names: not data.
                    self.copy = Some(Copying::Text {
                        plan,
                        csv,
                        header: false,
                    });
                    return Ok(None);
                }
                self.text_copy(payload, &plan, csv)
            }
            None => Ok(None),
        }
    }

    /// One row of text or CSV COPY output (PostgreSQL sends one row per message).
    fn text_copy(
        &mut self,
        payload: &[u8],
        plan: &Plan,
        csv: bool,
    ) -> Result<Option<Vec<u8>>, &'static str> {
        const BAD: &str = "a COPY row could not be read as its columns";
        let fields = if csv {
            crate::copytext::csv_fields(payload)
        } else {
            crate::copytext::text_fields(payload)
        }
        .ok_or(BAD)?;
        if fields.len() != plan.len() {
            return Err(BAD);
        }
        // (field, its new value) for the fields that change; the row is rebuilt only then.
        let mut changes: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
        for (i, (field, action)) in fields.iter().zip(plan.iter()).enumerate() {
            if let Some(value) = field
                && let Some(new) = self.value(action, value)
            {
                changes.push((i, new));
            }
        }
        if changes.is_empty() {
            return Ok(None);
        }
        let mut out: Vec<Option<Vec<u8>>> = fields
            .iter()
            .map(|f| f.as_ref().map(|v| v.to_vec()))
            .collect();
        for (i, new) in changes {
            out[i] = new;
        }
        Ok(Some(if csv {
            crate::copytext::csv_row(&out)
        } else {
            crate::copytext::text_row(&out)
        }))
    }

    /// One CopyData message of binary COPY output (the header, then one tuple per message,
    /// then the trailer — as PostgreSQL sends it).
    fn binary_copy(
        &mut self,
        payload: &[u8],
        plan: &Plan,
        header_seen: bool,
    ) -> Result<Option<Vec<u8>>, &'static str> {
        const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
        const SPLIT: &str = "a binary COPY message could not be read (cut or malformed)";
        let take = |at: usize, n: usize| payload.get(at..at.checked_add(n)?);
        let mut at = 0;
        if !header_seen {
            if take(0, SIGNATURE.len()) != Some(SIGNATURE) {
                return Err("binary COPY output without its signature");
            }
            let ext = take(15, 4).ok_or(SPLIT)?;
            let ext = usize::try_from(u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]))
                .map_err(|_| SPLIT)?;
            at = 19usize.checked_add(ext).ok_or(SPLIT)?;
            if at > payload.len() {
                return Err(SPLIT);
            }
            self.copy = Some(Copying::Binary {
                plan: plan.clone(),
                header_seen: true,
            });
        }
        // (start, end) of a value in `payload`, and what replaces it (None = NULL).
        let mut changes: Vec<(usize, usize, Option<Vec<u8>>)> = Vec::new();
        while at < payload.len() {
            let n = take(at, 2).ok_or(SPLIT)?;
            let n = i16::from_be_bytes([n[0], n[1]]);
            at += 2;
            if n == -1 {
                break; // the trailer
            }
            if usize::try_from(n).ok() != Some(plan.len()) {
                return Err("a binary COPY row does not match its columns");
            }
            for action in plan.iter() {
                let len = take(at, 4).ok_or(SPLIT)?;
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                let start = at;
                at += 4;
                let Ok(len) = usize::try_from(len) else {
                    continue; // -1: NULL
                };
                let value = take(at, len).ok_or(SPLIT)?;
                at += len;
                if let Some(changed) = self.value(action, value) {
                    changes.push((start, at, changed));
                }
            }
        }
        if at != payload.len() {
            return Err(SPLIT);
        }
        if changes.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(payload.len());
        let mut from = 0;
        for (start, end, value) in changes {
            out.extend_from_slice(&payload[from..start]);
            match value {
                Some(v) => {
                    let len = i32::try_from(v.len()).map_err(|_| SPLIT)?;
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
            from = end;
        }
        out.extend_from_slice(&payload[from..]);
        Ok(Some(out))
    }

    /// One value of a column: `Ok(None)` unchanged, `Ok(Some(None))` NULL.
    #[allow(clippy::type_complexity)]
    fn value(&mut self, action: &Action, v: &[u8]) -> Option<Option<Vec<u8>>> {
        let policy = &self.watch.policy;
        // A whole row of a table: its fields' column rules, field by field.
        if let (None, Some(rules)) = (action.whole, &action.fields) {
            let masked = match action.kind {
                ValueKind::Text => Some(crate::record::mask_row(
                    v,
                    rules,
                    &policy.masker,
                    &mut self.scratch,
                    &mut self.kinds,
                )),
                ValueKind::PgRecord => Some(
                    crate::binary::Scan {
                        masker: &policy.masker,
                        scratch: &mut self.scratch,
                        counts: &mut self.kinds,
                        found: false,
                    }
                    .ruled_record(v, rules),
                ),
                _ => None,
            };
            if let Some(masked) = masked {
                return self.count(action, masked);
            }
        }
        let whole = match action.whole {
            None if action.rows_whole
                && (action.kind != ValueKind::Text
                    || (v.first() == Some(&b'(') && v.last() == Some(&b')'))) =>
            {
                Some(Strategy::Redact)
            }
            other => other,
        };
        if action.json && matches!(action.kind, ValueKind::Text | ValueKind::PrefixedText) {
            let masked = match whole {
                // Masked whole, a JSON value is no JSON: NULL.
                Some(_) => Masked::Null,
                None => {
                    let (head, doc) = match action.kind {
                        ValueKind::PrefixedText => v.split_at(v.len().min(1)),
                        _ => (&[][..], v),
                    };
                    self.json_value(head, doc)
                }
            };
            return self.count(action, masked);
        }
        let masked = match (action.kind, whole) {
            (ValueKind::HexText, whole) => match decode_hex(v) {
                Some(bytes) => {
                    let masked = match whole {
                        Some(strategy) => policy.masker.mask_whole(&bytes, strategy),
                        None => policy
                            .masker
                            .mask(&bytes, &mut self.scratch, &mut self.kinds),
                    };
                    match masked {
                        Masked::Rewritten(out) => Masked::Rewritten(encode_hex(&out)),
                        other => other,
                    }
                }
                None => match whole {
                    Some(strategy) => policy.masker.mask_whole(v, strategy),
                    None => policy.masker.mask(v, &mut self.scratch, &mut self.kinds),
                },
            },
            (ValueKind::Text, Some(strategy)) => policy.masker.mask_whole(v, strategy),
            // A number in text form: as written, and as plain digits (`4.111111111111111e+15`
            // is a card number to whoever reads it); a finding makes it NULL.
            (ValueKind::Text, None) if action.number => {
                let mut scan = crate::binary::Scan {
                    masker: &policy.masker,
                    scratch: &mut self.scratch,
                    counts: &mut self.kinds,
                    found: false,
                };
                // The digits in it are read as written; an exponent hides them
                // (`4.111111111111111e+15`): spelled again as plain digits.
                let plain = v
                    .iter()
                    .any(|b| matches!(b, b'e' | b'E'))
                    .then(|| std::str::from_utf8(v).ok()?.trim().parse::<f64>().ok())
                    .flatten()
                    .filter(|x| x.is_finite());
                match scan.numbers_in(v) {
                    Masked::Clean => match plain {
                        Some(x) => scan.numbers(&[x.to_string()]),
                        None => Masked::Clean,
                    },
                    _ => Masked::Null,
                }
            }
            (ValueKind::Text, None) => policy.masker.mask(v, &mut self.scratch, &mut self.kinds),
            (ValueKind::PrefixedText, whole) => {
                let (head, rest) = v.split_at(v.len().min(1));
                let inner = match whole {
                    Some(strategy) => policy.masker.mask_whole(rest, strategy),
                    None => policy.masker.mask(rest, &mut self.scratch, &mut self.kinds),
                };
                match inner {
                    Masked::Rewritten(out) => Masked::Rewritten([head, &out].concat()),
                    other => other,
                }
            }
            // A value of another type under a column rule cannot keep its type masked: NULL.
            (_, Some(_)) => Masked::Null,
            // Without a column rule: what the detectors can read in it; what they cannot
            // read is NULL (fail closed) — unless no detector is on, when nothing applies.
            (kind, None) => {
                if policy.masker.detectors().any() {
                    let mut scan = crate::binary::Scan {
                        masker: &policy.masker,
                        scratch: &mut self.scratch,
                        counts: &mut self.kinds,
                        found: false,
                    };
                    let masked = scan.value(kind, v);
                    if masked == Masked::Null && !scan.found {
                        self.unreadable += 1;
                    }
                    masked
                } else {
                    Masked::Clean
                }
            }
        };
        // A number masked in part (`************4242`) is no number: the client could not
        // read it.
        let masked = match masked {
            Masked::Rewritten(_) if action.number => Masked::Null,
            other => other,
        };
        self.count(action, masked)
    }

    /// A JSON document `doc` (after `head`, jsonb's version byte) masked as JSON: the
    /// values in it through the detectors and the JSON rules, structure kept. One the JSON
    /// reader cannot read is masked as text.
    fn json_value(&mut self, head: &[u8], doc: &[u8]) -> Masked {
        let policy = &self.watch.policy;
        let mut json = crate::json::JsonMasker::new(policy.json.clone());
        let mut out = head.to_vec();
        let read = json
            .feed(doc, &mut out)
            .and_then(|()| json.finish(&mut out));
        match read {
            Ok(()) if out[head.len()..] == *doc => Masked::Clean,
            Ok(()) => {
                for (kind, n) in json.take_stats().kinds {
                    *self.kinds.entry(kind).or_default() += n;
                }
                Masked::Rewritten(out)
            }
            Err(_) => match policy.masker.mask(doc, &mut self.scratch, &mut self.kinds) {
                Masked::Rewritten(text) => Masked::Rewritten([head, &text].concat()),
                other => other,
            },
        }
    }

    /// Count a masked value of `action`'s column, and say what replaces it (`None`:
    /// unchanged, `Some(None)`: NULL).
    #[allow(clippy::type_complexity)]
    fn count(&mut self, action: &Action, masked: Masked) -> Option<Option<Vec<u8>>> {
        match masked {
            Masked::Clean => None,
            changed => {
                self.values += 1;
                *self.columns.entry(action.label.clone()).or_default() += 1;
                if self.watch.policy.detect_only {
                    return None;
                }
                match changed {
                    Masked::Rewritten(out) => Some(Some(out)),
                    _ => Some(None),
                }
            }
        }
    }

    fn finish(&mut self) {
        if self.values == 0 {
            return;
        }
        let mut kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, n)| format!("{}={n}", k.name()))
            .collect();
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        let verb = if self.watch.policy.detect_only {
            "would mask (mode = detect)"
        } else {
            "masked"
        };
        if self.unreadable > 0 {
            kinds.push(format!("unreadable={}", self.unreadable));
        }
        let detail = format!(
            "{verb} {} value(s); detectors: {}; columns: {}",
            self.values,
            if kinds.is_empty() {
                "-".into()
            } else {
                kinds.join(", ")
            },
            if columns.is_empty() {
                "-".into()
            } else {
                columns.join(", ")
            },
        );
        if let Some(log) = &self.watch.log {
            log.record(&Decision::new("mask", Verdict::Allow).with_detail(detail));
        }
        self.values = 0;
        self.kinds.clear();
        self.columns.clear();
        self.unreadable = 0;
    }
}

pin_project! {
    /// A reply body with personal data masked.
    #[derive(Debug)]
    pub struct MaskBody<B> {
        #[pin]
        inner: B,
        state: Option<Box<State>>,
    }

    impl<B> PinnedDrop for MaskBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // A reply dropped before its end still reports what it masked.
            if let Some(state) = this.project().state.as_mut() {
                state.finish();
            }
        }
    }
}

impl<B> ReplyBody for MaskBody<B>
where
    B: ReplyBody,
    B::Event: EventView + RewriteEvent,
{
    type Event = B::Event;

    fn poll_event(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<B::Event, Error>>> {
        let mut this = self.project();
        let event = match ready!(this.inner.as_mut().poll_event(cx)) {
            Some(Ok(event)) => event,
            other => {
                if let Some(state) = this.state.as_mut() {
                    state.finish();
                }
                return Poll::Ready(other);
            }
        };
        let Some(state) = this.state.as_mut() else {
            return Poll::Ready(Some(Ok(event)));
        };
        let fail = |why: &str| -> Poll<Option<Result<B::Event, Error>>> {
            // The command fails rather than leak (ERROR 42501); the session goes on.
            Poll::Ready(Some(Err(Box::new(Refusal::Masking {
                message: why.to_owned(),
            }))))
        };
        // HTTP: a response's head says what its body is; JSON is masked as it streams,
        // anything the layer cannot read is refused or passed as the policy says.
        if let Some(start) = event.body_start() {
            state.json = None;
            let policy = &state.watch.policy;
            if start.is_json() {
                if let Some(encoding) = start.encoding {
                    if !policy.detect_only {
                        return fail(&format!(
                            "the upstream sent a {encoding}-encoded JSON body, which cannot be masked (the gateway asks for identity encoding)"
                        ));
                    }
                } else {
                    state.json = Some(crate::json::JsonMasker::new(policy.json.clone()));
                }
            } else if policy.other_bodies == OtherBodies::Block && !policy.detect_only {
                return fail(&format!(
                    "a {} body cannot be masked, and [masking] other_bodies = \"block\"",
                    start.media_type.unwrap_or("untyped")
                ));
            }
            // The head's header values pass the detectors too.
            if let Some(masked) = event.rewrite_text(&mut |v| state.text(v)) {
                return Poll::Ready(Some(Ok(masked)));
            }
            return Poll::Ready(Some(Ok(event)));
        }
        if let Some(piece) = event.body_piece() {
            let Some(json) = state.json.as_mut() else {
                return Poll::Ready(Some(Ok(event)));
            };
            let mut out = Vec::with_capacity(piece.bytes.len() + 64);
            let mut result = json.feed(piece.bytes, &mut out);
            if piece.last && result.is_ok() {
                result = json.finish(&mut out);
            }
            if piece.last || result.is_err() {
                let stats = json.take_stats();
                state.values += stats.values;
                for (kind, n) in stats.kinds {
                    *state.kinds.entry(kind).or_default() += n;
                }
                for (path, n) in stats.paths {
                    *state.columns.entry(path).or_default() += n;
                }
            }
            if let Err(e) = result {
                state.json = None;
                return fail(&format!("the JSON body cannot be read to be masked: {e}"));
            }
            if piece.last {
                state.json = None;
            }
            if out.as_slice() == piece.bytes {
                return Poll::Ready(Some(Ok(event)));
            }
            return match event.with_body_piece(bytes::Bytes::from(out)) {
                Some(masked) => Poll::Ready(Some(Ok(masked))),
                None => fail("a masked body could not be rebuilt"),
            };
        }
        // Where the statement's lineage is read, one description may need different plans
        // for different statements (`SELECT n FROM (SELECT city AS n …) x` and `… full_name
        // AS n …` are described alike): such plans are not shared.
        let by_shape = state.watch.statements.is_none();
        if by_shape && let Some(shape) = event.shape() {
            let known = lock(&state.watch.plans).get(shape);
            if let Some(plan) = known {
                state.plan = Some(plan);
                return Poll::Ready(Some(Ok(event)));
            }
        }
        if let Some(columns) = event.columns() {
            // The protocol may know more (the columns' sources): prefer what it says.
            let columns = this
                .inner
                .as_ref()
                .get_ref()
                .implied_columns()
                .filter(|known| known.len() == columns.len())
                .unwrap_or(columns);
            let lineage = state.watch.lineage(&columns);
            let plan: Plan = state
                .watch
                .policy
                .plan_with(columns, &state.watch.session.identity, &lineage)
                .into();
            if by_shape && let Some(shape) = event.shape() {
                lock(&state.watch.plans).put(shape, &plan);
            }
            state.plan = Some(plan);
            return Poll::Ready(Some(Ok(event)));
        }
        if let Some(values) = event.row_values() {
            let plan = match state.plan.take() {
                Some(plan) => plan,
                None => match this.inner.as_ref().get_ref().implied_columns() {
                    Some(columns) => state
                        .watch
                        .policy
                        .plan(columns, &state.watch.session.identity)
                        .into(),
                    None => return fail("rows arrived without a description of their columns"),
                },
            };
            if plan.len() != values.len() {
                return fail("a row does not match its description");
            }
            let mut rewritten: Option<Vec<Option<Cow<'_, [u8]>>>> = None;
            for (i, (value, action)) in values.iter().zip(plan.iter()).enumerate() {
                let Some(value) = value else { continue };
                if let Some(changed) = state.value(action, value) {
                    let row = rewritten.get_or_insert_with(|| {
                        values.iter().map(|v| v.map(Cow::Borrowed)).collect()
                    });
                    row[i] = changed.map(Cow::Owned);
                }
            }
            state.plan = Some(plan);
            return match rewritten {
                None => Poll::Ready(Some(Ok(event))),
                Some(row) => match event.with_row_values(&row) {
                    Some(masked) => Poll::Ready(Some(Ok(masked))),
                    None => fail("a masked row could not be rebuilt"),
                },
            };
        }
        if event.opaque_output() {
            // Binary COPY: readable only with its columns' types, which the protocol may know.
            match this.inner.as_ref().get_ref().implied_columns() {
                Some(columns) => {
                    let plan: Plan = state
                        .watch
                        .policy
                        .plan(columns, &state.watch.session.identity)
                        .into();
                    state.copy = Some(Copying::Binary {
                        plan,
                        header_seen: false,
                    });
                    state.copy_checked = true;
                    return Poll::Ready(Some(Ok(event)));
                }
                None if !state.watch.policy.detect_only => {
                    return fail(
                        "binary COPY output cannot be masked here (its columns could not be described); use COPY ... TO STDOUT in text or CSV format",
                    );
                }
                None => {}
            }
        }
        if !state.copy_checked && matches!(event.view(), EventKind::CopyData(_)) {
            // Text or CSV COPY output: read field by field when its layout and columns are
            // known (column rules then apply); else its lines are scanned as free text.
            state.copy_checked = true;
            let body = this.inner.as_ref().get_ref();
            match (body.copy_layout(), body.implied_columns()) {
                (
                    Some(layout @ (CopyLayout::Text { .. } | CopyLayout::Csv { .. })),
                    Some(columns),
                ) => {
                    let plan: Plan = state
                        .watch
                        .policy
                        .plan(columns, &state.watch.session.identity)
                        .into();
                    let (csv, header) = match layout {
                        CopyLayout::Csv { header } => (true, header),
                        CopyLayout::Text { header } => (false, header),
                        _ => (false, false),
                    };
                    state.copy = Some(Copying::Text { plan, csv, header });
                }
                (Some(CopyLayout::Custom), Some(columns)) => {
                    let plan = state
                        .watch
                        .policy
                        .plan(columns, &state.watch.session.identity);
                    if plan.iter().any(|a| a.whole.is_some()) && !state.watch.policy.detect_only {
                        return fail(
                            "COPY output with DELIMITER, NULL, QUOTE or ESCAPE options cannot be masked by column; use the default text or CSV options",
                        );
                    }
                }
                _ => {}
            }
        }
        if state.copy.is_some() && matches!(event.view(), EventKind::CopyData(_)) {
            let mut failed = None;
            let masked = event.rewrite_text(&mut |payload| match state.copy_row(payload) {
                Ok(changed) => changed,
                Err(why) => {
                    failed = Some(why);
                    None
                }
            });
            if let Some(why) = failed {
                return fail(why);
            }
            return Poll::Ready(Some(Ok(masked.unwrap_or(event))));
        }
        // A result ends (or something else comes): the next rows need a description again.
        let keeps_plan = matches!(
            event.view(),
            EventKind::Row
                | EventKind::Notice { .. }
                | EventKind::Notification { .. }
                | EventKind::Parameter { .. }
                | EventKind::CopyData(_)
        );
        if !keeps_plan {
            state.plan = None;
            state.copy = None;
            state.copy_checked = false;
        }
        if let Some(masked) = event.rewrite_text(&mut |v| state.text(v)) {
            return Poll::Ready(Some(Ok(masked)));
        }
        Poll::Ready(Some(Ok(event)))
    }

    fn implied_columns(&self) -> Option<Vec<Column>> {
        self.inner.implied_columns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_patterns() {
        let label = Column::new("email", ValueKind::Text);
        let sourced = Column::new("e", ValueKind::Text).with_source("public.customers.email");
        assert!(column_matches("email", &label));
        assert!(
            column_matches("*.email", &label),
            "source unknown: the column part"
        );
        assert!(column_matches("customers.email", &sourced));
        assert!(column_matches("public.customers.*", &sourced));
        assert!(
            column_matches("email", &sourced),
            "a bare name matches the source column"
        );
        assert!(!column_matches("orders.email", &sourced));
        assert!(!column_matches("name", &label));
        // MySQL `SELECT full_name FROM (SELECT full_name FROM customers) x`: the source says
        // `x`, which may be a derived table: the rule's column name decides.
        let derived =
            Column::new("full_name", ValueKind::Text).with_uncertain_source("app.x.full_name");
        assert!(column_matches("customers.full_name", &derived));
        assert!(!column_matches("customers.email", &derived));
    }
}
