//! Command units: how the client's message stream is cut into the pieces that each get one
//! coherent reply, and what policy layers can read from them.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use portcullis_core::{CommandKind, CommandView, Param, Refusal, RefuseInPlace, Statement, rescue};

use crate::codec::{
    CodecError, Frame, FrontendMessage, Severity, error_message, first_cstr, frame_len,
};

/// A response the server owes for one frontend message of a unit, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Parse,
    Bind,
    Close,
    DescribeStatement,
    DescribePortal,
    Execute,
    Sync,
    /// Simple Query or FunctionCall: everything up to ReadyForQuery.
    UntilReady,
}

#[derive(Debug, Clone)]
struct StatementRef {
    text: Bytes,
    name: Option<Bytes>,
    executes: bool,
    /// The gateway does not know what the server holds under `name`.
    unknown: bool,
}

impl StatementRef {
    fn new(text: Bytes, name: Option<Bytes>, executes: bool) -> Self {
        StatementRef {
            text,
            name,
            executes,
            unknown: false,
        }
    }

    fn unknown(name: &[u8], executes: bool) -> Self {
        StatementRef {
            text: Bytes::new(),
            name: (!name.is_empty()).then(|| Bytes::copy_from_slice(name)),
            executes,
            unknown: true,
        }
    }
}

/// What a unit did to the server's named statements and portals, in order: applied to the
/// gateway's view by [`UnitBuilder::confirm`] once the server answered the whole unit
/// without an error (so every message in it took effect).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger {
    /// The unit's place in the session.
    seq: u64,
    ops: Vec<LedgerOp>,
}

#[derive(Debug, Clone)]
enum LedgerOp {
    Parsed(Bytes, Bytes),
    Bound(Bytes, Vec<Bytes>),
    ClosedStatement(Bytes),
    ClosedPortal(Bytes),
}

/// The texts the server may hold under one name, each with the unit that may have put it
/// there. A `Parse` of a name already held fails on the server (42P05) and the old text
/// stays, unless the old one had failed itself or was closed: until the server confirms, a
/// name may hold any of several texts, and a `Bind` of it is judged as all of them.
type Held = Vec<(u64, Bytes)>;

/// Most texts one name may hold before the gateway refuses another `Parse` of it.
const MAX_TEXTS_PER_NAME: usize = 8;

/// One PostgreSQL command unit: a simple `Query`, an extended-protocol batch up to `Sync` or
/// `Flush`, a `FunctionCall`, `Terminate`, or the session's event stream.
///
/// The unit keeps the client's original bytes, which are forwarded untouched.
#[derive(Debug, Clone)]
pub struct PgCommand {
    kind: CommandKind,
    bytes: Bytes,
    pub(crate) slots: Vec<Slot>,
    statements: Vec<StatementRef>,
    ends_with_sync: bool,
    may_copy_in: bool,
    /// A refusal carried out in place: the database's error in the reply is replaced by this
    /// one (see [`RefuseInPlace`]).
    pub(crate) error_override: Option<Frame>,
    /// What the unit does to named statements and portals, for the driver to confirm once
    /// the server answered it without an error (taken before the unit enters the stack).
    pub(crate) ledger: Option<Ledger>,
}

impl PgCommand {
    /// The request for the session's event stream.
    pub fn session_events() -> Self {
        PgCommand {
            kind: CommandKind::SessionEvents,
            bytes: Bytes::new(),
            slots: Vec::new(),
            statements: Vec::new(),
            ends_with_sync: false,
            may_copy_in: false,
            error_override: None,
            ledger: None,
        }
    }

    /// The client's original bytes for this unit.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Whether the client expects a `ReadyForQuery` at the end of this unit's reply (it ended
    /// with `Sync`, or is a simple `Query` or `FunctionCall`).
    pub fn expects_ready(&self) -> bool {
        self.ends_with_sync
    }

    /// Whether this unit can start `COPY ... FROM STDIN`, so the client may stream data after it.
    pub fn may_copy_in(&self) -> bool {
        self.may_copy_in
    }

    /// Whether how the server reads one of the unit's statements depends on the session's
    /// settings: a backslash (`standard_conforming_strings`) or a byte outside ASCII
    /// (`client_encoding`). Such a unit is judged only once every unit before it has been
    /// answered, so the settings it is judged with are the server's, however they changed
    /// (a `SET`, a function, a trigger, a transaction's end, `DISCARD ALL`).
    pub fn reads_with_settings(&self) -> bool {
        self.statements
            .iter()
            .any(|s| s.text.iter().any(|&b| b == b'\\' || !b.is_ascii()))
    }

    /// The unit's frames, decoded lazily.
    pub fn frames(&self) -> impl Iterator<Item = Frame> + '_ {
        let mut rest = self.bytes.clone();
        std::iter::from_fn(move || {
            let len = frame_len(&rest, usize::MAX).ok()??;
            if rest.len() < len {
                return None;
            }
            Frame::from_bytes(rest.split_to(len))
        })
    }
}

impl RefuseInPlace for PgCommand {
    /// A unit that fails in the database the way the refused one would have — an error,
    /// then (with `Sync`) `ReadyForQuery` with the database's real transaction status, or
    /// (without) the database skipping to the client's next `Sync` — and runs nothing. The
    /// database's error is replaced by the gateway's in the reply.
    fn refuse_in_place(&self, refusal: &Refusal) -> Option<Self> {
        if !matches!(
            self.kind,
            CommandKind::Statements | CommandKind::FunctionCall | CommandKind::Control
        ) {
            return None;
        }
        let error: portcullis_core::Error = Box::new(refusal.clone());
        let rescued = rescue(&error);
        if rescued.close {
            return None;
        }
        let code = crate::serve::sqlstate(rescued.kind);
        let sql = failing_statement(code, &rescued.message);
        let mut bytes = BytesMut::new();
        let slots = if self.ends_with_sync {
            FrontendMessage::Query {
                sql: sql.clone().into(),
            }
            .encode(&mut bytes);
            vec![Slot::UntilReady]
        } else {
            for m in [
                FrontendMessage::Parse {
                    name: Bytes::new(),
                    query: sql.clone().into(),
                    param_types: Vec::new(),
                },
                FrontendMessage::Bind {
                    portal: Bytes::new(),
                    statement: Bytes::new(),
                    param_formats: Vec::new(),
                    params: Vec::new(),
                    result_formats: Vec::new(),
                },
                FrontendMessage::Execute {
                    portal: Bytes::new(),
                    max_rows: 0,
                },
                FrontendMessage::Flush,
            ] {
                m.encode(&mut bytes);
            }
            vec![Slot::Parse, Slot::Bind, Slot::Execute]
        };
        Some(PgCommand {
            kind: CommandKind::Control,
            bytes: bytes.freeze(),
            slots,
            statements: Vec::new(),
            ends_with_sync: self.ends_with_sync,
            may_copy_in: false,
            error_override: Some(error_message(Severity::Error, code, &rescued.message).to_frame()),
            ledger: None,
        })
    }
}

/// A statement that fails at once with SQLSTATE `code` and (for the server's log) `message`,
/// and does nothing else. Without PL/pgSQL it still fails (the language is missing), which is
/// all the session state needs.
fn failing_statement(code: &str, message: &str) -> String {
    let message: String = message
        .chars()
        .take(200)
        .map(|c| {
            if c.is_alphanumeric() || " -_.,:;()\"/=<>*@".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    let code: String = code.chars().filter(char::is_ascii_alphanumeric).collect();
    format!(
        "DO $portcullis$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = 'portcullis: {message}'; END$portcullis$"
    )
}

fn text_of(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap_or("\u{FFFD}<statement text is not valid UTF-8>")
}

impl CommandView for PgCommand {
    fn kind(&self) -> CommandKind {
        self.kind
    }

    fn statements(&self) -> Vec<Statement<'_>> {
        self.statements
            .iter()
            .map(|s| {
                let mut st = Statement::text(text_of(&s.text)).executes(s.executes);
                if s.unknown {
                    st = st.unknown();
                }
                match &s.name {
                    Some(n) => st.prepared(text_of(n)),
                    None => st,
                }
            })
            .collect()
    }

    fn function_oid(&self) -> Option<u32> {
        if self.kind != CommandKind::FunctionCall {
            return None;
        }
        let mut rest: &[u8] = &self.bytes;
        while rest.len() >= 5 {
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize + 1;
            if len > rest.len() || len < 5 {
                return None;
            }
            let (frame, tail) = rest.split_at(len);
            if frame[0] == b'F' {
                let oid = frame.get(5..9)?;
                return Some(u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]));
            }
            rest = tail;
        }
        None
    }

    fn params(&self) -> Vec<Param<'_>> {
        let mut out = Vec::new();
        let mut rest: &[u8] = &self.bytes;
        while rest.len() >= 5 {
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize + 1;
            if len > rest.len() || len < 5 {
                break;
            }
            let (frame, tail) = rest.split_at(len);
            rest = tail;
            if frame[0] == b'B' {
                bind_params(&frame[5..], &mut out);
            }
        }
        out
    }
}

/// Parameters of a Bind body, borrowed. Stops quietly at malformed input (the server rejects
/// such a Bind anyway).
fn bind_params<'a>(mut body: &'a [u8], out: &mut Vec<Param<'a>>) {
    fn skip_cstr(b: &mut &[u8]) -> Option<()> {
        let n = b.iter().position(|&c| c == 0)?;
        *b = &b[n + 1..];
        Some(())
    }
    let mut go = || -> Option<()> {
        skip_cstr(&mut body)?;
        skip_cstr(&mut body)?;
        let nf = body.get(..2)?.get_i16() as usize;
        body = body.get(2..)?;
        let formats: Vec<i16> = (0..nf)
            .map(|i| body.get(i * 2..i * 2 + 2).map(|mut b| b.get_i16()))
            .collect::<Option<_>>()?;
        body = body.get(nf * 2..)?;
        let np = body.get(..2)?.get_i16() as usize;
        body = body.get(2..)?;
        for i in 0..np {
            let len = body.get(..4)?.get_i32();
            body = body.get(4..)?;
            let binary = match formats.len() {
                0 => false,
                1 => formats[0] == 1,
                _ => formats.get(i).copied() == Some(1),
            };
            if len < 0 {
                out.push(Param::Null);
                continue;
            }
            let v = body.get(..len as usize)?;
            body = body.get(len as usize..)?;
            out.push(if binary {
                Param::Binary(v)
            } else {
                Param::Text(v)
            });
        }
        Some(())
    };
    let _ = go();
}

/// What the client sent next.
#[derive(Debug)]
pub(crate) enum Item {
    /// A command unit.
    Unit(PgCommand),
    /// COPY data, done or fail (belongs to the COPY in progress).
    Copy(Frame),
}

/// Cuts the client's byte stream into command units, remembering prepared statements so that
/// a later `Bind` names its statement's text.
#[derive(Debug)]
pub(crate) struct UnitBuilder {
    max_message: usize,
    max_unit: usize,
    /// Bytes of the buffer already scanned into the unit being built.
    scanned: usize,
    slots: Vec<Slot>,
    statements: Vec<StatementRef>,
    executes: bool,
    /// Statement name → the texts the server may hold under it.
    prepared: HashMap<Bytes, Held>,
    /// Portal name → the statement texts it may run, so an `Execute` in a later unit than
    /// its `Bind` still names what it runs.
    portals: HashMap<Bytes, Held>,
    /// Portals bound in the unit being built → indexes in `statements`.
    bound_here: Vec<(Bytes, Vec<usize>)>,
    /// The unit being built's place in the session.
    seq: u64,
    ledger: Vec<LedgerOp>,
}

/// Most named statements (or portals) a session may hold at once, as far as the gateway
/// knows (closes the server confirmed free their places); a `Parse` of one more is refused.
const MAX_PREPARED: usize = 10_000;

/// Add `text` (from unit `seq`) to what `name` may hold: a `Parse`/`Bind` of the unnamed
/// statement or portal replaces it (or destroys it when it fails); of a named one, adds a
/// possibility until the server confirms.
fn hold(
    map: &mut HashMap<Bytes, Held>,
    name: &[u8],
    texts: impl IntoIterator<Item = Bytes>,
    seq: u64,
    what: &'static str,
) -> Result<(), CodecError> {
    if name.is_empty() {
        map.insert(Bytes::new(), texts.into_iter().map(|t| (seq, t)).collect());
        return Ok(());
    }
    if !map.contains_key(name) && map.len() >= MAX_PREPARED {
        return Err(CodecError::Malformed {
            what,
            why: "more than 10000 named prepared statements or portals open in one session; close some",
        });
    }
    let held = map.entry(Bytes::copy_from_slice(name)).or_default();
    for text in texts {
        if !held.iter().any(|(_, t)| *t == text) {
            held.push((seq, text));
        }
    }
    if held.len() > MAX_TEXTS_PER_NAME {
        return Err(CodecError::Malformed {
            what,
            why: "one name re-used for too many different statements without the server confirming which it holds; close it first",
        });
    }
    Ok(())
}

/// The server confirmed that unit `seq` set `name` to exactly `texts`: what later units
/// (not yet confirmed) may have added stays possible.
fn settle(map: &mut HashMap<Bytes, Held>, name: &Bytes, texts: Option<&[Bytes]>, seq: u64) {
    let mut held: Held = map
        .remove(name)
        .unwrap_or_default()
        .into_iter()
        .filter(|(s, _)| *s > seq)
        .collect();
    for text in texts.unwrap_or_default() {
        if !held.iter().any(|(_, t)| t == text) {
            held.push((seq, text.clone()));
        }
    }
    if !held.is_empty() {
        map.insert(name.clone(), held);
    }
}

impl UnitBuilder {
    pub(crate) fn new(max_message: usize) -> Self {
        UnitBuilder {
            max_message,
            max_unit: max_message.saturating_mul(2),
            scanned: 0,
            slots: Vec::new(),
            statements: Vec::new(),
            executes: false,
            prepared: HashMap::new(),
            portals: HashMap::new(),
            bound_here: Vec::new(),
            seq: 0,
            ledger: Vec::new(),
        }
    }

    /// The server answered unit `ledger` without an error: every Parse, Bind and Close in
    /// it took effect, so the names it touched hold exactly what it put there.
    pub(crate) fn confirm(&mut self, ledger: Ledger) {
        for op in ledger.ops {
            match op {
                LedgerOp::Parsed(name, text) => {
                    settle(&mut self.prepared, &name, Some(&[text]), ledger.seq);
                }
                LedgerOp::Bound(portal, texts) => {
                    settle(&mut self.portals, &portal, Some(&texts), ledger.seq);
                }
                LedgerOp::ClosedStatement(name) => {
                    settle(&mut self.prepared, &name, None, ledger.seq);
                }
                LedgerOp::ClosedPortal(name) => settle(&mut self.portals, &name, None, ledger.seq),
            }
        }
    }

    /// Nothing of unit `ledger` reached the server (a layer refused it): the texts it added
    /// as possible are not.
    pub(crate) fn withdraw(&mut self, ledger: &Ledger) {
        let drop_added = |map: &mut HashMap<Bytes, Held>, name: &Bytes| {
            if let Some(held) = map.get_mut(name) {
                held.retain(|(seq, _)| *seq != ledger.seq);
                if held.is_empty() {
                    map.remove(name);
                }
            }
        };
        for op in &ledger.ops {
            match op {
                LedgerOp::Parsed(name, _) => drop_added(&mut self.prepared, name),
                LedgerOp::Bound(portal, _) => drop_added(&mut self.portals, portal),
                LedgerOp::ClosedStatement(_) | LedgerOp::ClosedPortal(_) => {}
            }
        }
    }

    /// Statement refs for what `name` may hold, reusing this unit's refs to the same text;
    /// their indexes in `statements`.
    fn refs_for(&mut self, name: &[u8], executes: bool, from_portal: bool) -> Vec<usize> {
        let map = if from_portal {
            &self.portals
        } else {
            &self.prepared
        };
        let Some(held) = map.get(name) else {
            self.statements.push(StatementRef::unknown(name, executes));
            return vec![self.statements.len() - 1];
        };
        let texts: Vec<Bytes> = held.iter().map(|(_, t)| t.clone()).collect();
        let name = (!name.is_empty() && !from_portal).then(|| Bytes::copy_from_slice(name));
        let mut out = Vec::new();
        for text in texts {
            let found = self
                .statements
                .iter()
                .position(|s| !s.unknown && s.text == text && s.name == name);
            match found {
                Some(i) => {
                    self.statements[i].executes |= executes;
                    out.push(i);
                }
                None => {
                    self.statements
                        .push(StatementRef::new(text, name.clone(), executes));
                    out.push(self.statements.len() - 1);
                }
            }
        }
        out
    }

    fn cstr_at(frame: &Bytes, at: usize) -> Result<(Bytes, usize), CodecError> {
        let s = first_cstr(&frame[at..]).ok_or(CodecError::Malformed {
            what: "frontend",
            why: "unterminated string",
        })?;
        let n = s.len();
        Ok((frame.slice(at..at + n), at + n + 1))
    }

    /// The next item, `Ok(None)` when more bytes are needed.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        loop {
            let Some(len) = frame_len(&buf[self.scanned..], self.max_message)? else {
                return Ok(None);
            };
            let end = self.scanned + len;
            if buf.len() < end {
                buf.reserve(end - buf.len());
                return Ok(None);
            }
            if end > self.max_unit {
                return Err(CodecError::TooLong {
                    len: end,
                    max: self.max_unit,
                });
            }
            let tag = buf[self.scanned];
            match tag {
                b'd' | b'c' | b'f' => {
                    if self.scanned != 0 {
                        return Err(CodecError::Malformed {
                            what: "CopyData",
                            why: "COPY data inside an extended-query batch",
                        });
                    }
                    let frame = buf.split_to(len).freeze();
                    return Ok(Frame::from_bytes(frame).map(Item::Copy));
                }
                b'F' | b'X' if self.scanned != 0 => {
                    // Terminate and FunctionCall never share a unit with the messages before
                    // them: those end here as a unit of their own (judged and recorded as
                    // what they are), and the Terminate or FunctionCall comes next. The unit
                    // gets a Flush the client did not send: without it the server keeps its
                    // replies buffered (and drops them at Terminate), and the gateway would
                    // wait for them forever.
                    // (A unit ended by Sync or Flush never reaches here: it ended there.)
                    let mut unit = self.finish(buf, b'H');
                    let mut bytes = BytesMut::with_capacity(unit.bytes.len() + 5);
                    bytes.extend_from_slice(&unit.bytes);
                    FrontendMessage::Flush.encode(&mut bytes);
                    unit.bytes = bytes.freeze();
                    return Ok(Some(Item::Unit(unit)));
                }
                b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H' | b'Q' | b'F' | b'X' => {}
                other => return Err(CodecError::UnknownTag(other as char)),
            }
            // Only the frames that carry SQL are decoded; the rest are just counted.
            let body_at = self.scanned + 5;
            let unit_end = match tag {
                b'P' => {
                    let f = Bytes::copy_from_slice(&buf[body_at..end]);
                    let (name, at) = Self::cstr_at(&f, 0)?;
                    let (query, _) = Self::cstr_at(&f, at)?;
                    hold(
                        &mut self.prepared,
                        &name,
                        [query.clone()],
                        self.seq,
                        "Parse",
                    )?;
                    self.ledger
                        .push(LedgerOp::Parsed(name.clone(), query.clone()));
                    self.statements.push(StatementRef::new(
                        query,
                        (!name.is_empty()).then_some(name),
                        false,
                    ));
                    self.slots.push(Slot::Parse);
                    false
                }
                b'B' => {
                    let f = &buf[body_at..end];
                    let portal = first_cstr(f).unwrap_or_default();
                    let rest = f.get(portal.len() + 1..).unwrap_or_default();
                    let stmt = first_cstr(rest).unwrap_or_default();
                    let portal = Bytes::copy_from_slice(portal);
                    let stmt = Bytes::copy_from_slice(stmt);
                    let indexes = self.refs_for(&stmt, false, false);
                    let texts: Vec<Bytes> = indexes
                        .iter()
                        .filter(|&&i| !self.statements[i].unknown)
                        .map(|&i| self.statements[i].text.clone())
                        .collect();
                    if texts.len() == indexes.len() {
                        hold(
                            &mut self.portals,
                            &portal,
                            texts.iter().cloned(),
                            self.seq,
                            "Bind",
                        )?;
                    } else {
                        // Bound to a statement the gateway does not know: the portal too.
                        self.portals.remove(&portal);
                    }
                    self.ledger.push(LedgerOp::Bound(portal.clone(), texts));
                    self.bound_here.retain(|(p, _)| *p != portal);
                    self.bound_here.push((portal, indexes));
                    self.slots.push(Slot::Bind);
                    false
                }
                b'D' => {
                    self.slots.push(if buf.get(body_at) == Some(&b'S') {
                        Slot::DescribeStatement
                    } else {
                        Slot::DescribePortal
                    });
                    false
                }
                b'C' => {
                    // The server drops the name only if this unit goes through: the gateway
                    // forgets it when the server confirms (see `confirm`).
                    if let Some(name) = first_cstr(&buf[body_at + 1..end]) {
                        let name = Bytes::copy_from_slice(name);
                        self.ledger.push(if buf.get(body_at) == Some(&b'S') {
                            LedgerOp::ClosedStatement(name)
                        } else {
                            LedgerOp::ClosedPortal(name)
                        });
                    }
                    self.slots.push(Slot::Close);
                    false
                }
                b'E' => {
                    self.executes = true;
                    let portal = first_cstr(&buf[body_at..end]).unwrap_or_default();
                    let here = self
                        .bound_here
                        .iter()
                        .find(|(p, _)| p.as_ref() == portal)
                        .map(|(_, i)| i.clone());
                    match here {
                        Some(indexes) => {
                            for i in indexes {
                                if let Some(s) = self.statements.get_mut(i) {
                                    s.executes = true;
                                }
                            }
                        }
                        // Bound in an earlier unit: the statements it may run, as bound.
                        None => {
                            let portal = portal.to_vec();
                            self.refs_for(&portal, true, true);
                        }
                    }
                    self.slots.push(Slot::Execute);
                    false
                }
                b'S' => {
                    self.slots.push(Slot::Sync);
                    true
                }
                b'H' => true,
                b'Q' => {
                    let sql = first_cstr(&buf[body_at..end]).unwrap_or_default();
                    self.statements.push(StatementRef::new(
                        Bytes::copy_from_slice(sql),
                        None,
                        true,
                    ));
                    self.executes = true;
                    self.slots.push(Slot::UntilReady);
                    true
                }
                b'F' => {
                    self.executes = true;
                    self.slots.push(Slot::UntilReady);
                    true
                }
                _ => true, // Terminate
            };
            self.scanned = end;
            if unit_end {
                return Ok(Some(Item::Unit(self.finish(buf, tag))));
            }
        }
    }

    fn finish(&mut self, buf: &mut BytesMut, last: u8) -> PgCommand {
        let bytes = buf.split_to(self.scanned).freeze();
        self.scanned = 0;
        let ledger = Ledger {
            seq: self.seq,
            ops: std::mem::take(&mut self.ledger),
        };
        self.seq += 1;
        let statements = std::mem::take(&mut self.statements);
        self.bound_here.clear();
        let executes = std::mem::replace(&mut self.executes, false);
        let may_copy_in = executes
            && statements
                .iter()
                .any(|s| contains_ignore_ascii_case(&s.text, b"copy"));
        let kind = match last {
            b'X' => CommandKind::Terminate,
            b'F' => CommandKind::FunctionCall,
            _ if statements.is_empty() => CommandKind::Control,
            _ => CommandKind::Statements,
        };
        PgCommand {
            kind,
            bytes,
            slots: std::mem::take(&mut self.slots),
            statements,
            ends_with_sync: matches!(last, b'S' | b'Q' | b'F'),
            may_copy_in,
            error_override: None,
            ledger: Some(ledger),
        }
    }
}

fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::FrontendMessage;

    fn encode(msgs: &[FrontendMessage]) -> BytesMut {
        let mut b = BytesMut::new();
        for m in msgs {
            m.encode(&mut b);
        }
        b
    }

    fn units(buf: &mut BytesMut, builder: &mut UnitBuilder) -> Vec<PgCommand> {
        let mut out = Vec::new();
        while let Some(item) = builder.next(buf).unwrap() {
            match item {
                Item::Unit(u) => out.push(u),
                Item::Copy(_) => panic!("unexpected copy"),
            }
        }
        out
    }

    #[test]
    fn extended_batches_end_at_sync_and_flush() {
        let mut b = UnitBuilder::new(1 << 20);
        let mut buf = encode(&[
            FrontendMessage::Parse {
                name: "s1".into(),
                query: "select $1".into(),
                param_types: vec![],
            },
            FrontendMessage::Describe {
                target: b'S',
                name: "s1".into(),
            },
            FrontendMessage::Flush,
            FrontendMessage::Bind {
                portal: "".into(),
                statement: "s1".into(),
                param_formats: vec![],
                params: vec![Some("42".into()), None],
                result_formats: vec![],
            },
            FrontendMessage::Execute {
                portal: "".into(),
                max_rows: 0,
            },
            FrontendMessage::Sync,
            FrontendMessage::Query {
                sql: "COPY t FROM STDIN".into(),
            },
        ]);
        let us = units(&mut buf, &mut b);
        assert_eq!(us.len(), 3);
        assert_eq!(us[0].slots, vec![Slot::Parse, Slot::DescribeStatement]);
        assert!(!us[0].expects_ready());
        let st = us[0].statements();
        assert_eq!(st[0].text, "select $1");
        assert!(!st[0].executes);
        // The second unit's Bind names the statement prepared by the first.
        let st = us[1].statements();
        assert_eq!(st[0].text, "select $1");
        assert_eq!(st[0].prepared_name, Some("s1"));
        assert!(st[0].executes);
        assert_eq!(us[1].params(), vec![Param::Text(b"42"), Param::Null]);
        assert!(us[1].expects_ready());
        assert!(!us[1].may_copy_in());
        assert!(us[2].may_copy_in());
        assert!(buf.is_empty());
    }

    /// Issue 17, class 2: a name holds what the server confirmed; until then every text
    /// it may hold; a refused unit adds nothing.
    #[test]
    fn statement_names_follow_what_the_server_confirmed() {
        let parse = |name: &str, sql: &str| FrontendMessage::Parse {
            name: name.to_owned().into(),
            query: sql.to_owned().into(),
            param_types: vec![],
        };
        let bind_exec = |name: &str| {
            vec![
                FrontendMessage::Bind {
                    portal: "".into(),
                    statement: name.to_owned().into(),
                    param_formats: vec![],
                    params: vec![],
                    result_formats: vec![],
                },
                FrontendMessage::Execute {
                    portal: "".into(),
                    max_rows: 0,
                },
                FrontendMessage::Sync,
            ]
        };
        let texts = |u: &PgCommand| -> Vec<String> {
            u.statements()
                .iter()
                .filter(|s| s.executes)
                .map(|s| {
                    if s.unknown {
                        "?".into()
                    } else {
                        s.text.to_owned()
                    }
                })
                .collect()
        };
        let mut b = UnitBuilder::new(1 << 20);
        let mut take = |msgs: &[FrontendMessage]| {
            let mut buf = encode(msgs);
            let mut us = units(&mut buf, &mut b);
            assert_eq!(us.len(), 1);
            us.remove(0)
        };
        let mut first = take(&[parse("s1", "DELETE FROM v"), FrontendMessage::Sync]);
        // Confirmed by the server (answered without an error): exactly its text.
        b.confirm(first.ledger.take().unwrap());
        let mut buf = encode(&bind_exec("s1"));
        assert_eq!(texts(&units(&mut buf, &mut b).remove(0)), ["DELETE FROM v"]);
        // Parsed again under the same name, not confirmed (the server refuses it with 42P05
        // unless the first was gone): either text may run.
        let mut buf = encode(&[parse("s1", "SELECT 1"), FrontendMessage::Sync]);
        let mut again = units(&mut buf, &mut b).remove(0);
        let mut buf = encode(&bind_exec("s1"));
        assert_eq!(
            texts(&units(&mut buf, &mut b).remove(0)),
            ["DELETE FROM v", "SELECT 1"]
        );
        // Had a layer refused that unit, it would add nothing.
        b.withdraw(&again.ledger.take().unwrap());
        let mut buf = encode(&bind_exec("s1"));
        assert_eq!(texts(&units(&mut buf, &mut b).remove(0)), ["DELETE FROM v"]);
        // A name never prepared is unknown.
        let mut buf = encode(&bind_exec("nope"));
        assert_eq!(texts(&units(&mut buf, &mut b).remove(0)), ["?"]);
    }

    #[test]
    fn incomplete_units_wait_for_more_bytes() {
        let mut b = UnitBuilder::new(1 << 20);
        let whole = encode(&[
            FrontendMessage::Parse {
                name: "".into(),
                query: "select 1".into(),
                param_types: vec![],
            },
            FrontendMessage::Sync,
        ]);
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let got = b.next(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == whole.len() - 1);
        }
    }

    #[test]
    fn unknown_tags_and_copy_inside_batches_are_errors() {
        let mut b = UnitBuilder::new(1 << 20);
        let mut buf = BytesMut::from(&b"Z\0\0\0\x04"[..]);
        assert!(b.next(&mut buf).is_err());
        let mut b = UnitBuilder::new(1 << 20);
        let mut buf = encode(&[
            FrontendMessage::Execute {
                portal: "".into(),
                max_rows: 0,
            },
            FrontendMessage::CopyDone,
        ]);
        assert!(b.next(&mut buf).is_err());
    }
}
