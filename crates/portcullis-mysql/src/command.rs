//! [`MyCommand`]: one client `COM_*` packet as a command unit, with what policy layers read
//! from it — the SQL text (for `COM_STMT_EXECUTE`, the text prepared earlier in the session),
//! and the bound parameters decoded for the audit trail.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use mysql_common::constants::ColumnType;
use portcullis_core::{CommandKind, CommandView, Param, Refusal, RefuseInPlace, Statement};

use crate::packet::lenenc_str;

/// `COM_*` command bytes the gateway handles by name.
pub(crate) mod com {
    pub(crate) const QUIT: u8 = 0x01;
    pub(crate) const INIT_DB: u8 = 0x02;
    pub(crate) const QUERY: u8 = 0x03;
    pub(crate) const FIELD_LIST: u8 = 0x04;
    pub(crate) const STATISTICS: u8 = 0x09;
    pub(crate) const PROCESS_KILL: u8 = 0x0c;
    pub(crate) const DEBUG: u8 = 0x0d;
    pub(crate) const PING: u8 = 0x0e;
    pub(crate) const CHANGE_USER: u8 = 0x11;
    pub(crate) const STMT_PREPARE: u8 = 0x16;
    pub(crate) const STMT_EXECUTE: u8 = 0x17;
    pub(crate) const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub(crate) const STMT_CLOSE: u8 = 0x19;
    pub(crate) const STMT_RESET: u8 = 0x1a;
    pub(crate) const SET_OPTION: u8 = 0x1b;
    pub(crate) const STMT_FETCH: u8 = 0x1c;
    pub(crate) const RESET_CONNECTION: u8 = 0x1f;
    /// Not a client command: the session's event stream (what the database sends while the
    /// client is idle).
    pub(crate) const SESSION_EVENTS: u8 = 0x00;
}

/// Whether running `sql` may change how the session reads SQL (`sql_mode`, the character
/// set): the gateway then reads the settings again. `EXECUTE` is included because the
/// statement it runs is not in the text.
pub(crate) fn may_change_settings(sql: &str) -> bool {
    static WORDS: std::sync::LazyLock<Option<aho_corasick::AhoCorasick>> =
        std::sync::LazyLock::new(|| {
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(["sql_mode", "names", "character_set", "charset", "execute"])
                .ok()
        });
    match &*WORDS {
        Some(words) => words.is_match(sql),
        // Cannot happen (a fixed pattern set); reading again is the safe side.
        None => true,
    }
}

/// A decoded parameter value, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Null,
    Text(Vec<u8>),
}

/// One client command unit.
#[derive(Debug, Clone)]
pub struct MyCommand {
    payload: Bytes,
    kind: CommandKind,
    sql: Option<Arc<str>>,
    executes: bool,
    statement: Option<String>,
    params: Vec<Value>,
    changes_settings: bool,
}

impl MyCommand {
    /// A command from a client packet's payload (`sql`: the text it runs, when known).
    pub(crate) fn new(payload: Bytes, kind: CommandKind, sql: Option<Arc<str>>) -> Self {
        MyCommand {
            payload,
            kind,
            sql,
            executes: true,
            statement: None,
            params: Vec::new(),
            changes_settings: false,
        }
    }

    /// The session's event stream.
    pub(crate) fn session_events() -> Self {
        MyCommand::new(
            Bytes::from_static(&[com::SESSION_EVENTS]),
            CommandKind::SessionEvents,
            None,
        )
    }

    /// A `COM_QUERY` with `sql` (for embedding and tests).
    pub fn query(sql: &str) -> Self {
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(com::QUERY);
        payload.extend_from_slice(sql.as_bytes());
        MyCommand::new(
            Bytes::from(payload),
            CommandKind::Statements,
            Some(Arc::from(sql)),
        )
    }

    fn not_executing(mut self) -> Self {
        self.executes = false;
        self
    }

    /// The `COM_*` byte.
    pub fn com(&self) -> u8 {
        self.payload.first().copied().unwrap_or_default()
    }

    /// The packet payload sent upstream.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The SQL text the command runs or prepares, when known.
    pub fn sql(&self) -> Option<&str> {
        self.sql.as_deref()
    }

    /// Whether running it may change how the session reads SQL.
    pub(crate) fn changes_settings(&self) -> bool {
        self.changes_settings
    }

    /// The statement id of a `COM_STMT_*` command.
    pub fn statement_id(&self) -> Option<u32> {
        matches!(
            self.com(),
            com::STMT_EXECUTE
                | com::STMT_SEND_LONG_DATA
                | com::STMT_CLOSE
                | com::STMT_RESET
                | com::STMT_FETCH
        )
        .then(|| Some(u32::from_le_bytes(self.payload.get(1..5)?.try_into().ok()?)))
        .flatten()
    }
}

impl CommandView for MyCommand {
    fn kind(&self) -> CommandKind {
        self.kind
    }

    fn statements(&self) -> Vec<Statement<'_>> {
        let Some(sql) = &self.sql else {
            return Vec::new();
        };
        let mut s = Statement::text(sql).executes(self.executes);
        if let Some(name) = &self.statement {
            s = s.prepared(name);
        }
        vec![s]
    }

    fn params(&self) -> Vec<Param<'_>> {
        self.params
            .iter()
            .map(|v| match v {
                Value::Null => Param::Null,
                Value::Text(t) => Param::Text(t),
            })
            .collect()
    }
}

impl RefuseInPlace for MyCommand {
    /// MySQL keeps no failed-transaction state: a statement that fails inside a transaction
    /// leaves the transaction open and its earlier work intact, so the gateway's own error
    /// leaves client and database in the same state. Nothing is sent upstream.
    fn refuse_in_place(&self, _refusal: &Refusal) -> Option<Self> {
        None
    }
}

/// A statement prepared in the session.
#[derive(Debug, Clone)]
struct Prepared {
    sql: Arc<str>,
    /// Executing it may change the session's settings.
    changes_settings: bool,
    params: u16,
    /// Parameter types bound by the last execute (type, unsigned).
    types: Vec<(u8, bool)>,
    /// `COM_STMT_SEND_LONG_DATA` was used since the last execute: values are not all in it.
    long_data: bool,
}

/// Most prepared statements remembered per session (the server's own limit,
/// `max_prepared_stmt_count`, is 16382 by default).
const MAX_PREPARED: usize = 65_536;

/// The statements prepared in a session: statement id → SQL text, so that guard and audit
/// see what an execute runs.
#[derive(Debug, Default)]
pub(crate) struct Prepareds {
    map: HashMap<u32, Prepared>,
    last: Option<u32>,
    /// The session's `character_set_client`: statements are read in it
    /// ([`crate::charset::read_text`]).
    charset: Arc<str>,
}

/// Why a client packet is not a command the gateway runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unrunnable {
    /// Answer with this error and go on.
    Error {
        code: u16,
        state: &'static str,
        message: String,
    },
}

impl Prepareds {
    /// Remember a prepared statement (from the database's answer to `COM_STMT_PREPARE`).
    pub(crate) fn prepared(&mut self, id: u32, sql: Arc<str>, params: u16) {
        if self.map.len() >= MAX_PREPARED && !self.map.contains_key(&id) {
            // The statement stays unknown: executing it is refused (fail closed).
            return;
        }
        self.map.insert(
            id,
            Prepared {
                changes_settings: may_change_settings(&sql),
                sql,
                params,
                types: Vec::new(),
                long_data: false,
            },
        );
        self.last = Some(id);
    }

    /// Read the statements of the next commands in `session`'s `character_set_client`, as
    /// the database last reported it (copied only when it changed).
    pub(crate) fn follow_charset(&mut self, session: &portcullis_core::Session) {
        const NAME: &str = "character_set_client";
        if !session.server_param_is(NAME, |c| c == &*self.charset)
            && let Some(charset) = session.server_param(NAME)
        {
            self.charset = Arc::from(charset);
        }
    }

    /// Forget everything (`COM_RESET_CONNECTION`).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.last = None;
    }

    /// `0xffffffff` is MariaDB's "the statement prepared last" (pipelined prepare + execute).
    fn resolve(&self, id: u32) -> Option<u32> {
        if id == u32::MAX { self.last } else { Some(id) }
    }

    /// Build the command unit for a client packet.
    pub(crate) fn command(&mut self, payload: Bytes) -> Result<MyCommand, Unrunnable> {
        let com_byte = payload.first().copied().unwrap_or_default();
        // As the server reads it in the session's character set; in one the gateway does not
        // read, as UTF-8 (the guard then judges only ASCII statements).
        let charset = self.charset.clone();
        let text = |b: &[u8]| -> Arc<str> {
            match crate::charset::read_text(b, &charset) {
                Some(t) => Arc::from(t.as_ref()),
                None => Arc::from(String::from_utf8_lossy(b).as_ref()),
            }
        };
        let body = payload.get(1..).unwrap_or_default();
        let stmt_id = || {
            body.get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let unknown = |id: u32| Unrunnable::Error {
            code: 1243,
            state: "HY000",
            message: format!("Unknown prepared statement handler ({id}) given to the gateway"),
        };
        let cmd = match com_byte {
            com::QUERY => {
                let sql = text(body);
                let changes = may_change_settings(&sql);
                let mut cmd = MyCommand::new(payload, CommandKind::Statements, Some(sql));
                cmd.changes_settings = changes;
                cmd
            }
            com::STMT_PREPARE => {
                let sql = text(body);
                MyCommand::new(payload, CommandKind::Statements, Some(sql)).not_executing()
            }
            com::STMT_EXECUTE => {
                let id = stmt_id().ok_or_else(|| unknown(0))?;
                let real = self.resolve(id).ok_or_else(|| unknown(id))?;
                let prepared = self.map.get_mut(&real).ok_or_else(|| unknown(id))?;
                let params = decode_params(body, prepared).unwrap_or_default();
                prepared.long_data = false;
                let mut cmd =
                    MyCommand::new(payload, CommandKind::Statements, Some(prepared.sql.clone()));
                cmd.statement = Some(real.to_string());
                cmd.params = params;
                cmd.changes_settings = prepared.changes_settings;
                cmd
            }
            com::STMT_SEND_LONG_DATA | com::STMT_FETCH | com::STMT_RESET | com::STMT_CLOSE => {
                let id = stmt_id().ok_or_else(|| unknown(0))?;
                let real = self.resolve(id);
                let known = real.and_then(|r| self.map.get_mut(&r));
                let sql = match known {
                    Some(p) => {
                        if com_byte == com::STMT_SEND_LONG_DATA {
                            p.long_data = true;
                        }
                        Some(p.sql.clone())
                    }
                    None => None,
                };
                if com_byte == com::STMT_CLOSE
                    && let Some(r) = real
                {
                    self.map.remove(&r);
                }
                let mut cmd = MyCommand::new(payload, CommandKind::Control, sql).not_executing();
                cmd.statement = real.map(|r| r.to_string());
                cmd
            }
            com::INIT_DB => {
                let sql = format!("USE `{}`", String::from_utf8_lossy(body).replace('`', "``"));
                MyCommand::new(payload, CommandKind::Control, Some(Arc::from(sql))).not_executing()
            }
            com::FIELD_LIST => {
                let table = body.split(|&b| b == 0).next().unwrap_or_default();
                let sql = format!(
                    "SHOW COLUMNS FROM `{}`",
                    String::from_utf8_lossy(table).replace('`', "``")
                );
                MyCommand::new(payload, CommandKind::Control, Some(Arc::from(sql))).not_executing()
            }
            com::PROCESS_KILL => {
                let id = stmt_id().ok_or_else(|| Unrunnable::Error {
                    code: 1047,
                    state: "08S01",
                    message: "COM_PROCESS_KILL without a connection id".into(),
                })?;
                MyCommand::new(
                    payload,
                    CommandKind::Statements,
                    Some(Arc::from(format!("KILL {id}"))),
                )
            }
            com::QUIT => MyCommand::new(payload, CommandKind::Terminate, None),
            com::PING | com::STATISTICS | com::DEBUG | com::SET_OPTION | com::RESET_CONNECTION => {
                MyCommand::new(payload, CommandKind::Control, None)
            }
            // Answered by the protocol server (an authentication exchange, then a reset of
            // the session); never sent on as it is.
            com::CHANGE_USER => {
                return Err(Unrunnable::Error {
                    code: 1227,
                    state: "42000",
                    message: "COM_CHANGE_USER is answered by the gateway's session, not forwarded"
                        .into(),
                });
            }
            0x12 | 0x14 | 0x15 | 0x1e => {
                return Err(Unrunnable::Error {
                    code: 1227,
                    state: "42000",
                    message: "replication commands are not allowed through the gateway".into(),
                });
            }
            other => {
                return Err(Unrunnable::Error {
                    code: 1047,
                    state: "08S01",
                    message: format!("the gateway does not support command 0x{other:02x}"),
                });
            }
        };
        Ok(cmd)
    }
}

/// Decode `COM_STMT_EXECUTE`'s parameters to text for the audit trail (`None` when they
/// cannot be read: long data, or types never bound).
fn decode_params(body: &[u8], prepared: &mut Prepared) -> Option<Vec<Value>> {
    let n = usize::from(prepared.params);
    if n == 0 {
        return Some(Vec::new());
    }
    // stmt id (4), flags (1), iteration count (4), NULL bitmap, new-params-bound flag.
    let mut rest = body.get(9..)?;
    let bitmap_len = n.div_ceil(8);
    let bitmap = rest.get(..bitmap_len)?;
    rest = &rest[bitmap_len..];
    let bound = *rest.first()?;
    rest = &rest[1..];
    if bound == 1 {
        let types = rest.get(..2 * n)?;
        prepared.types = types
            .chunks_exact(2)
            .map(|t| (t[0], t[1] & 0x80 != 0))
            .collect();
        rest = &rest[2 * n..];
    }
    if prepared.types.len() != n || prepared.long_data {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for (i, &(ty, unsigned)) in prepared.types.iter().enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            out.push(Value::Null);
            continue;
        }
        let (value, used) = decode_value(ty, unsigned, rest)?;
        rest = &rest[used..];
        out.push(value);
    }
    Some(out)
}

fn decode_value(ty: u8, unsigned: bool, buf: &[u8]) -> Option<(Value, usize)> {
    let text = |s: String| Value::Text(s.into_bytes());
    let int = |n: usize| -> Option<[u8; 8]> {
        let b = buf.get(..n)?;
        let mut out = [0u8; 8];
        out[..n].copy_from_slice(b);
        // Sign-extend.
        if !unsigned && b[n - 1] & 0x80 != 0 {
            out[n..].fill(0xff);
        }
        Some(out)
    };
    let ty = ColumnType::try_from(ty).ok()?;
    use ColumnType::*;
    Some(match ty {
        MYSQL_TYPE_NULL => (Value::Null, 0),
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR | MYSQL_TYPE_LONG
        | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONGLONG => {
            let n = match ty {
                MYSQL_TYPE_TINY => 1,
                MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR => 2,
                MYSQL_TYPE_LONGLONG => 8,
                _ => 4,
            };
            let raw = int(n)?;
            let s = if unsigned {
                u64::from_le_bytes(raw).to_string()
            } else {
                i64::from_le_bytes(raw).to_string()
            };
            (text(s), n)
        }
        MYSQL_TYPE_FLOAT => (
            text(f32::from_le_bytes(buf.get(..4)?.try_into().ok()?).to_string()),
            4,
        ),
        MYSQL_TYPE_DOUBLE => (
            text(f64::from_le_bytes(buf.get(..8)?.try_into().ok()?).to_string()),
            8,
        ),
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_NEWDATE => {
            let len = usize::from(*buf.first()?);
            let b = buf.get(1..1 + len)?;
            let g = |i: usize| b.get(i).copied().unwrap_or(0);
            let year = u16::from_le_bytes([g(0), g(1)]);
            let mut s = format!("{year:04}-{:02}-{:02}", g(2), g(3));
            if len >= 7 {
                s.push_str(&format!(" {:02}:{:02}:{:02}", g(4), g(5), g(6)));
            }
            if len >= 11 {
                let micros = u32::from_le_bytes([g(7), g(8), g(9), g(10)]);
                s.push_str(&format!(".{micros:06}"));
            }
            (text(s), 1 + len)
        }
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => {
            let len = usize::from(*buf.first()?);
            let b = buf.get(1..1 + len)?;
            let g = |i: usize| b.get(i).copied().unwrap_or(0);
            let days = u32::from_le_bytes([g(1), g(2), g(3), g(4)]);
            let hours = u64::from(days) * 24 + u64::from(g(5));
            let sign = if g(0) == 1 { "-" } else { "" };
            let mut s = format!("{sign}{hours:02}:{:02}:{:02}", g(6), g(7));
            if len >= 12 {
                let micros = u32::from_le_bytes([g(8), g(9), g(10), g(11)]);
                s.push_str(&format!(".{micros:06}"));
            }
            (text(s), 1 + len)
        }
        _ => {
            let mut rest = buf;
            let s = lenenc_str(&mut rest)?;
            (Value::Text(s.to_vec()), buf.len() - rest.len())
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::packet::put_lenenc_str;

    #[test]
    fn executes_carry_their_prepared_text_and_params() {
        let mut p = Prepareds::default();
        p.prepared(
            7,
            Arc::from("select * from t where a = ? and b = ? and c = ?"),
            3,
        );
        let mut payload = vec![com::STMT_EXECUTE];
        payload.extend_from_slice(&7u32.to_le_bytes());
        payload.push(0);
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.push(0b100); // third is NULL
        payload.push(1);
        payload.extend_from_slice(&[8, 0, 253, 0, 6, 0]);
        payload.extend_from_slice(&(-5i64).to_le_bytes());
        put_lenenc_str(&mut payload, b"x@y.z");
        let cmd = p.command(Bytes::from(payload)).unwrap();
        assert_eq!(cmd.kind(), CommandKind::Statements);
        let s = cmd.statements();
        assert_eq!(s[0].text, "select * from t where a = ? and b = ? and c = ?");
        assert_eq!(s[0].prepared_name, Some("7"));
        assert_eq!(
            cmd.params(),
            vec![Param::Text(b"-5"), Param::Text(b"x@y.z"), Param::Null]
        );
        // MariaDB's "last prepared" id.
        let mut again = vec![com::STMT_EXECUTE];
        again.extend_from_slice(&u32::MAX.to_le_bytes());
        again.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0]);
        let cmd = p.command(Bytes::from(again)).unwrap();
        assert_eq!(cmd.statements()[0].prepared_name, Some("7"));
    }

    #[test]
    fn unknown_statements_and_commands_are_refused() {
        let mut p = Prepareds::default();
        let mut payload = vec![com::STMT_EXECUTE];
        payload.extend_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            p.command(Bytes::from(payload)),
            Err(Unrunnable::Error { code: 1243, .. })
        ));
        // Answered by the session (an authentication exchange), never forwarded as is.
        assert!(matches!(
            p.command(Bytes::from_static(&[com::CHANGE_USER, 0])),
            Err(Unrunnable::Error { code: 1227, .. })
        ));
        assert!(matches!(
            p.command(Bytes::from_static(&[0x12])),
            Err(Unrunnable::Error { code: 1227, .. })
        ));
        assert!(matches!(
            p.command(Bytes::new()),
            Err(Unrunnable::Error { code: 1047, .. })
        ));
        let kill = p
            .command(Bytes::from_static(&[com::PROCESS_KILL, 5, 0, 0, 0]))
            .unwrap();
        assert_eq!(kill.statements()[0].text, "KILL 5");
    }
}
