//! SQL classification, rules and the guard layer for the Portcullis gateway.
//!
//! [`Policy`] holds the rules (`[[policy.rules]]`: classes and kinds, tables, functions,
//! groups, `without_where`; `deny`, `approve`, `allow`; `detect` mode) and judges statements
//! with a bounded cache of classifications keyed by the statement with its literals
//! normalised ([`cache_key`]). [`GuardLayer`] applies it to every command unit, refusing in
//! place (`RefuseInPlace`) so that a transaction block fails on both sides, and passing
//! approvals on to the approval layer. MySQL text is classified with `sqlparser`'s MySQL
//! dialect ([`classify_mysql`]) in the session's `sql_mode` ([`MySqlMode`]), executable
//! comments included.
//!
//! [`Classifier::classify`] parses a query string with `libpg_query` (the PostgreSQL 17
//! parser, through the `pg_query` crate) and walks the *whole* parse tree of every statement
//! in it — every node, at any depth: DML inside CTEs, `EXPLAIN ANALYZE`, `COPY (…)`, `PREPARE`,
//! sub-selects, function calls in any expression — and reports for each statement its
//! [`Class`] (read < write < ddl < admin), the kinds of operation it contains, the tables and
//! functions it names, and whether it updates or deletes without `WHERE`. Regular expressions
//! are never used: comments inside keywords, case, whitespace, dollar quoting, `E''` strings
//! and `U&` identifiers are the parser's business, exactly as the server's.
//!
//! What cannot be known from the text is classified `admin` (fail closed): `DO` and `CALL`
//! (their bodies run code the text does not show), `EXECUTE` of a prepared statement by name,
//! function and trigger definitions, statements this crate does not know, and calls of
//! [dangerous functions](Classifier::default) — file access, large objects, `dblink`,
//! backends, settings, and functions that run SQL held in strings (`query_to_xml`, …).
//! Text that does not parse is an error, never a guess.
//!
//! # Example
//!
//! ```
//! use portcullis_policy::{Class, Classifier};
//!
//! let classifier = Classifier::default();
//! let statements = classifier
//!     .classify("with gone as (delete from orders returning *) select count(*) from gone")
//!     .unwrap();
//! assert_eq!(statements.len(), 1);
//! assert_eq!(statements[0].class, Class::Write);
//! assert!(statements[0].has_kind("delete"));
//! assert!(statements[0].without_where);
//!
//! let file = classifier.classify("select pg_catalog.pg_read_file('/etc/passwd')").unwrap();
//! assert_eq!(file[0].class, Class::Admin);
//! assert!(file[0].functions.contains(&"pg_catalog.pg_read_file".to_owned()));
//!
//! assert!(classifier.classify("selec 1").is_err());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod classify;
mod guard;
mod http;
mod lineage;
mod mysql;
mod normalize;
mod rules;
mod stack;
mod statements;

pub use classify::{
    Class, Classified, Classifier, DANGEROUS_FUNCTIONS, SIDE_EFFECT_FUNCTIONS, Unparsed,
};
pub use guard::{Guard, GuardLayer};
pub use http::{classify_http, path_matches};
pub use lineage::{Lineage, mysql_lineage};
pub use mysql::{MYSQL_DANGEROUS_FUNCTIONS, MySqlMode, classify_mysql};
pub use normalize::cache_key;
pub use rules::{
    Action, DYNAMIC_SQL_RULE, Dialect, Judgement, KINDS, Mode, OWN_BACKEND_RULE, OnUnparsed,
    Policy, PolicyError, Rule,
};
pub use stack::{INLINE_PARSE, MAX_PARSED};
pub use statements::{STATEMENT_TYPES, StatementType, statement_type};

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod tests;
