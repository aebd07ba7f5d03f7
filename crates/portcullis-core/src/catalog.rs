//! What the database's catalog says where a statement's text alone cannot tell: whether a
//! called function is the server's own or user-defined and whether it is volatile (may
//! change data), which function a PostgreSQL `FunctionCall` message's OID names, and which
//! tables a view reads. A protocol server that can ask its database sets
//! [`Session::catalog`](crate::Session::catalog); policy layers read the cached answers
//! synchronously and ask for a lookup ([`SchemaCatalog::look_up`]) when one is missing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One function as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionFacts {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Created in the database (PostgreSQL: OID ≥ 16384), not the server's own.
    pub user_defined: bool,
    /// Declared volatile (PostgreSQL `provolatile = 'v'`): it may change data. A function
    /// declared stable or immutable cannot (the server refuses data-changing statements in
    /// it).
    pub volatile: bool,
    /// Its language (`sql`, `plpgsql`, `internal`, `c`, …).
    pub language: String,
    /// The source of a user-defined function's body (PostgreSQL `prosrc`, or the whole
    /// definition for a SQL-standard body); `None` for the server's own functions.
    pub body: Option<Arc<str>>,
    /// A user-defined PL/pgSQL function's whole definition (`CREATE FUNCTION …`, PostgreSQL
    /// `pg_get_functiondef`), which its language's parser reads.
    pub definition: Option<Arc<str>>,
    /// Functions it runs besides its body, `schema.name` (PostgreSQL: an aggregate's
    /// transition, final, combine, serial and moving-aggregate functions).
    pub calls: Vec<String>,
}

/// A function the database runs without the statement naming it: a trigger, a check
/// constraint, a column default or generated column, an index expression or a row-security
/// policy attached to a relation; a user-defined cast or domain constraint; an event trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImplicitCall {
    /// When it runs: the statement kinds that fire it (`insert`, `update`, `delete`,
    /// `truncate`; `select` for any statement naming the relation; `ddl` for an event
    /// trigger; `any` for every statement).
    pub on: Vec<String>,
    /// What runs it, for the trail (`trigger t_audit on public.t`, `cast`, …).
    pub by: String,
    /// The function.
    pub function: FunctionFacts,
}

impl ImplicitCall {
    /// Whether a statement with kinds `has(kind)` and of DDL class (`ddl`) fires it.
    pub fn fires(&self, has: impl Fn(&str) -> bool, ddl: bool) -> bool {
        self.on.iter().any(|on| match on.as_str() {
            "any" | "select" => true,
            "ddl" => ddl,
            "insert" => has("insert") || has("merge") || has("copy_from"),
            "update" => has("update") || has("merge"),
            "delete" => has("delete") || has("merge"),
            other => has(other),
        })
    }
}

/// One relation (table, view, …) as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationFacts {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Every relation it reads, through views and materialized views, recursively
    /// (`schema.name`); empty for a table.
    pub reads: Vec<String>,
    /// The rules that rewrite writes to it or to a relation it reads (PostgreSQL
    /// `CREATE RULE … ON INSERT|UPDATE|DELETE … DO [ALSO|INSTEAD] …`, as the server prints
    /// them): a write to it also runs their actions.
    pub rules: Vec<String>,
    /// The functions it runs when named or written ([`ImplicitCall`]): triggers, check
    /// constraints, defaults, index expressions, row-security policies.
    pub implicit: Vec<ImplicitCall>,
}

/// What a command names that the cache does not answer yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogLookup {
    /// Function names as the parser gives them (`f`, `schema.f`), folded as the server
    /// folds them.
    pub names: Vec<String>,
    /// PostgreSQL `FunctionCall` OIDs.
    pub oids: Vec<u32>,
    /// Relation names as the parser gives them (`t`, `schema.t`, `db.schema.t`).
    pub relations: Vec<String>,
    /// Operator names (`~~~`).
    pub operators: Vec<String>,
    /// The database-wide implicit code ([`SchemaCatalog::database_code`]).
    pub database: bool,
}

impl CatalogLookup {
    /// Nothing to look up.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
            && self.oids.is_empty()
            && self.relations.is_empty()
            && self.operators.is_empty()
            && !self.database
    }
}

/// A lookup in flight: `Err` says why the catalog could not answer.
pub type LookupFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A cache of the database's function catalog, filled on demand.
pub trait SchemaCatalog: Send + Sync {
    /// Every function a call of `name` (`f`, or `schema.f`) may resolve to, in any schema
    /// (an unqualified name may resolve to any schema on the session's `search_path`, and
    /// argument types choose between overloads across schemas); empty when there is none.
    /// `None` when the cache does not know (never asked, or the answer is too old).
    fn functions(&self, name: &str) -> Option<Arc<[FunctionFacts]>>;

    /// The function with OID `oid`: `Some(None)` when there is none, `None` when the cache
    /// does not know.
    fn function(&self, oid: u32) -> Option<Option<FunctionFacts>>;

    /// Every relation a name (`t`, `schema.t`) may resolve to, in any schema (unqualified:
    /// whatever the `search_path`); empty when there is none. `None` when the cache does
    /// not know.
    fn relations(&self, name: &str) -> Option<Arc<[RelationFacts]>>;

    /// The functions behind the user-defined operators named `op` (any schema, any operand
    /// types); empty when there is none (the server's own operators are not listed: none is
    /// bound to a dangerous function). `None` when the cache does not know.
    fn operators(&self, op: &str) -> Option<Arc<[FunctionFacts]>>;

    /// The functions the database may run for any statement ([`ImplicitCall`]s on `any`:
    /// user-defined casts and domain constraints) or for DDL (`ddl`: event triggers); `None`
    /// when the cache does not know.
    fn database_code(&self) -> Option<Arc<[ImplicitCall]>>;

    /// Ask the database for what `missing` names, so that [`SchemaCatalog::functions`],
    /// [`SchemaCatalog::function`], [`SchemaCatalog::relations`],
    /// [`SchemaCatalog::operators`] and [`SchemaCatalog::database_code`] answer for them.
    fn look_up(&self, missing: CatalogLookup) -> LookupFuture;

    /// Forget every answer (a command that may have created, replaced or dropped functions
    /// or views was let through).
    fn forget(&self);
}

impl std::fmt::Debug for dyn SchemaCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaCatalog").finish_non_exhaustive()
    }
}
