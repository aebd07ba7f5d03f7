/// What kind of command unit a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommandKind {
    /// Statements to run (SQL text, an HTTP method and path).
    Statements,
    /// A call of a server function by id (PostgreSQL `FunctionCall`).
    FunctionCall,
    /// Protocol bookkeeping with no statement (a bare `Sync`, `Describe`, `Close`, ping).
    Control,
    /// The session's own event stream: what the upstream sends outside any command
    /// (notifications, notices, parameter changes, a fatal error). Requested once per session;
    /// its reply lasts as long as the session.
    SessionEvents,
    /// The client ends the session.
    Terminate,
}

impl CommandKind {
    /// The session's event stream or its goodbye: no command runs, so a check that refuses
    /// commands (a revoked or expired credential) lets these through — a refused session
    /// still hears what the database says and can end cleanly.
    pub fn is_session_lifecycle(self) -> bool {
        matches!(self, CommandKind::SessionEvents | CommandKind::Terminate)
    }
}

/// One statement in a command unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statement<'a> {
    /// The statement text as the client sent it (SQL; for HTTP, `METHOD path`).
    pub text: &'a str,
    /// The prepared statement's name, when the text was prepared earlier under a name.
    pub prepared_name: Option<&'a str>,
    /// Whether the unit executes the statement (as opposed to only preparing or describing it).
    pub executes: bool,
    /// The gateway does not know the text: the unit names a prepared statement (or portal)
    /// it did not see prepared, or whose text it cannot tell; `text` is empty. Policy must
    /// not take such a statement for harmless.
    pub unknown: bool,
}

impl<'a> Statement<'a> {
    /// A statement that is executed, with no prepared name.
    pub fn text(text: &'a str) -> Self {
        Statement {
            text,
            prepared_name: None,
            executes: true,
            unknown: false,
        }
    }

    /// Mark the statement's text as unknown to the gateway.
    pub fn unknown(mut self) -> Self {
        self.unknown = true;
        self
    }

    /// With a prepared statement name.
    pub fn prepared(mut self, name: &'a str) -> Self {
        self.prepared_name = Some(name);
        self
    }

    /// Mark whether the unit executes it.
    pub fn executes(mut self, executes: bool) -> Self {
        self.executes = executes;
        self
    }
}

/// A bound parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Param<'a> {
    /// SQL NULL.
    Null,
    /// A value in text format.
    Text(&'a [u8]),
    /// A value in the protocol's binary format.
    Binary(&'a [u8]),
}

/// What policy layers read from a command unit, whatever the protocol.
pub trait CommandView {
    /// The kind of unit.
    fn kind(&self) -> CommandKind;

    /// The statements the unit carries, in order (empty for control units).
    fn statements(&self) -> Vec<Statement<'_>>;

    /// Bound parameters of the unit, in order (empty when there are none).
    fn params(&self) -> Vec<Param<'_>> {
        Vec::new()
    }

    /// For a PostgreSQL `FunctionCall` unit: the OID of the function it calls.
    fn function_oid(&self) -> Option<u32> {
        None
    }
}

/// The kind of a reply event, as policy layers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind<'a> {
    /// A result's shape (PostgreSQL `RowDescription`), with the number of columns.
    Columns {
        /// Number of columns.
        count: usize,
    },
    /// One result row.
    Row,
    /// A chunk of COPY data going to the client.
    CopyData(&'a [u8]),
    /// A statement finished (`CommandComplete`), with its tag and row count when known.
    Complete {
        /// The command tag (`SELECT 3`).
        tag: &'a str,
        /// Rows affected or returned, when the tag has a count.
        rows: Option<u64>,
    },
    /// An error from the upstream.
    Error {
        /// SQLSTATE or errno as text.
        code: &'a str,
        /// The message.
        message: &'a str,
        /// Whether it ends the session.
        fatal: bool,
    },
    /// A notice / warning.
    Notice {
        /// Its code.
        code: &'a str,
        /// Its message.
        message: &'a str,
    },
    /// An asynchronous notification (PostgreSQL `NOTIFY`).
    Notification {
        /// The channel.
        channel: &'a str,
        /// The payload.
        payload: &'a str,
    },
    /// A session parameter changed.
    Parameter {
        /// Its name.
        name: &'a str,
        /// Its new value.
        value: &'a str,
    },
    /// The upstream is ready for the next command.
    Ready,
    /// Anything else (protocol bookkeeping).
    Other,
}

/// What policy layers read from a reply event.
pub trait EventView {
    /// The event's kind and the fields policy cares about.
    fn view(&self) -> EventKind<'_>;

    /// The event's size on the wire in bytes, for byte counts (0 when unknown).
    fn wire_len(&self) -> usize {
        0
    }
}
