//! Source columns of results: a RowDescription names each column's table by OID and the
//! column by attribute number; the catalog resolves them to `schema.table.column` with one
//! query on a side connection of the gateway's own (per database), cached, so masking rules
//! over `[schema.]table.column` follow the source even through aliases.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use portcullis_core::{
    AuthMethod, CatalogLookup, FunctionFacts, Identity, ImplicitCall, LookupFuture, Protocol,
    RelationFacts, ReplyBodyExt as _, Request, RewriteEvent as _, SchemaCatalog, Session,
    SessionId,
};
use tower_service::Service as _;

use crate::codec::Frame;
use crate::codec::FrontendMessage;
use crate::command::{Item, UnitBuilder};
use crate::conn::PgUpstream;
use crate::rows::{Field, fields};
use crate::upstream::{self, UpstreamConfig};

/// Most tables whose names are kept.
const MAX_TABLES: usize = 10_000;

type Names = Arc<HashMap<i16, String>>;
type Fields = Arc<[String]>;

/// The first OID of an object created in a database: types from here on may be a table's
/// row type.
const FIRST_NORMAL_OID: u32 = 16_384;

/// Resolves table OIDs to names; shared by every session of a listener.
#[derive(Clone)]
pub(crate) struct Catalog {
    inner: Arc<Inner>,
}

impl Default for Catalog {
    /// A catalog whose side connections live on the current runtime, if any.
    fn default() -> Self {
        Catalog {
            inner: Arc::new(Inner {
                home: tokio::runtime::Handle::try_current().ok(),
                ..Inner::default()
            }),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// The runtime the side connections live on (see [`Catalog::side_run`]).
    home: Option<tokio::runtime::Handle>,
    /// Database → table OID → attribute number → `schema.table.column`.
    names: Mutex<HashMap<String, HashMap<u32, Names>>>,
    /// Database → type OID → the sources of a row type's fields, in order (empty: not a
    /// table's row type).
    types: Mutex<HashMap<String, HashMap<u32, Fields>>>,
    /// Database → what the function catalog said, and when.
    functions: Mutex<HashMap<String, FunctionCache>>,
    /// Catalog look-ups take turns: one that waited finds what the one before it brought
    /// in and asks only for the rest (when cached answers expire, many sessions miss at once;
    /// they must not queue one query each).
    lookups: tokio::sync::Mutex<()>,
    /// Database → the side connection.
    side: tokio::sync::Mutex<HashMap<String, PgUpstream>>,
}

/// Cached function facts of one database.
#[derive(Default)]
struct FunctionCache {
    /// Bare name → every function of that name, in any schema.
    by_name: HashMap<String, (Instant, Arc<[FunctionFacts]>)>,
    /// OID → the function.
    by_oid: HashMap<u32, (Instant, Option<FunctionFacts>)>,
    /// Bare relation name → every relation of that name, in any schema, with what it reads.
    by_relation: HashMap<String, (Instant, Arc<[RelationFacts]>)>,
    /// Operator name → the functions behind the user-defined operators of that name.
    by_operator: HashMap<String, (Instant, Arc<[FunctionFacts]>)>,
    /// The database-wide implicit code (casts, domain constraints, event triggers).
    database: Option<(Instant, Arc<[ImplicitCall]>)>,
}

/// How long a function catalog answer is trusted: a function replaced outside the gateway
/// is seen within this time (one replaced through the gateway at once: the guard forgets
/// every answer when it lets DDL through).
const FUNCTION_FACTS_FOR: Duration = Duration::from_secs(10);

/// How long a catalog query may take before it is given up (and the command waiting for it
/// refused).
const SIDE_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Most names or OIDs asked in one catalog query.
const MAX_LOOKUP: usize = 256;

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u32, Names>>> {
        self.inner.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The source of a field, when its table is known.
    pub(crate) fn source(&self, database: &str, field: &Field) -> Option<String> {
        if field.table_oid == 0 {
            return None;
        }
        self.names()
            .get(database)?
            .get(&field.table_oid)
            .and_then(|cols| cols.get(&field.attnum).cloned())
    }

    fn types(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u32, Fields>>> {
        self.inner.types.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sources of the fields of row type `type_oid`, when it is a table's row type.
    pub(crate) fn fields(&self, database: &str, type_oid: u32) -> Option<Fields> {
        self.types()
            .get(database)?
            .get(&type_oid)
            .filter(|f| !f.is_empty())
            .cloned()
    }

    /// Type OIDs of `fields` that may be a table's row type, not resolved yet.
    pub(crate) fn missing_types(&self, database: &str, fields: &[Field]) -> Vec<u32> {
        let types = self.types();
        let known = types.get(database);
        let mut out: Vec<u32> = fields
            .iter()
            .map(|f| f.type_oid)
            .filter(|&oid| oid >= FIRST_NORMAL_OID && !known.is_some_and(|k| k.contains_key(&oid)))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Look the types `oids` up in `database`: which are a table's row type, and the
    /// sources of their fields.
    pub(crate) async fn resolve_types(
        &self,
        config: Arc<UpstreamConfig>,
        max_message: usize,
        database: String,
        oids: Vec<u32>,
    ) -> Result<(), String> {
        let list = oids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "select t.oid, n.nspname, c.relname, a.attname \
             from pg_catalog.pg_type t \
             join pg_catalog.pg_class c on c.oid = t.typrelid \
             join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
             join pg_catalog.pg_attribute a on a.attrelid = c.oid \
             where t.oid in ({list}) and a.attnum > 0 and not a.attisdropped \
             order by t.oid, a.attnum"
        );
        let mut buf = BytesMut::new();
        FrontendMessage::Query { sql: sql.into() }.encode(&mut buf);
        let frames = self.side_run(&config, max_message, &database, buf).await?;
        let mut found: HashMap<u32, Vec<String>> = oids.iter().map(|&o| (o, Vec::new())).collect();
        for values in frames
            .iter()
            .filter(|f| f.tag() == b'D')
            .filter_map(|f| f.row_values())
        {
            let row: Vec<String> = values
                .into_iter()
                .map(|v| String::from_utf8_lossy(v.unwrap_or_default()).into_owned())
                .collect();
            let [oid, schema, table, column] = row.as_slice() else {
                continue;
            };
            if let Ok(oid) = oid.parse::<u32>() {
                found
                    .entry(oid)
                    .or_default()
                    .push(format!("{schema}.{table}.{column}"));
            }
        }
        let mut types = self.types();
        let known = types.entry(database).or_default();
        if known.len() + found.len() > MAX_TABLES {
            known.clear();
        }
        for (oid, fields) in found {
            known.insert(oid, fields.into());
        }
        Ok(())
    }

    /// Table OIDs of `fields` not resolved yet.
    pub(crate) fn missing(&self, database: &str, fields: &[Field]) -> Vec<u32> {
        let names = self.names();
        let known = names.get(database);
        let mut out: Vec<u32> = fields
            .iter()
            .map(|f| f.table_oid)
            .filter(|&oid| oid != 0 && !known.is_some_and(|k| k.contains_key(&oid)))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Look the tables `oids` up in `database` through the side connection (opened on first
    /// use with the listener's upstream settings).
    pub(crate) async fn resolve(
        &self,
        config: Arc<UpstreamConfig>,
        max_message: usize,
        database: String,
        oids: Vec<u32>,
    ) -> Result<(), String> {
        let list = oids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "select c.oid, n.nspname, c.relname, a.attnum, a.attname \
             from pg_catalog.pg_class c \
             join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
             join pg_catalog.pg_attribute a on a.attrelid = c.oid \
             where c.oid in ({list}) and a.attnum > 0 and not a.attisdropped"
        );
        let mut buf = BytesMut::new();
        FrontendMessage::Query { sql: sql.into() }.encode(&mut buf);
        let frames = self.side_run(&config, max_message, &database, buf).await?;
        let rows: Vec<Vec<String>> = frames
            .iter()
            .filter(|f| f.tag() == b'D')
            .filter_map(|f| f.row_values())
            .map(|values| {
                values
                    .into_iter()
                    .map(|v| String::from_utf8_lossy(v.unwrap_or_default()).into_owned())
                    .collect()
            })
            .collect();
        let mut found: HashMap<u32, HashMap<i16, String>> =
            oids.iter().map(|&o| (o, HashMap::new())).collect();
        for row in rows {
            let [oid, schema, table, attnum, column] = row.as_slice() else {
                continue;
            };
            let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<i16>()) else {
                continue;
            };
            found
                .entry(oid)
                .or_default()
                .insert(attnum, format!("{schema}.{table}.{column}"));
        }
        let mut names = self.names();
        let tables = names.entry(database).or_default();
        if tables.len() + found.len() > MAX_TABLES {
            tables.clear();
        }
        for (oid, cols) in found {
            tables.insert(oid, Arc::new(cols));
        }
        Ok(())
    }
}

/// The function catalog of one database, through a listener's [`Catalog`] (its cache and
/// side connection): what a session's guard asks ([`portcullis_core::Session::functions`]).
#[derive(Clone)]
pub(crate) struct Functions {
    pub(crate) catalog: Catalog,
    pub(crate) config: Arc<UpstreamConfig>,
    pub(crate) max_message: usize,
    pub(crate) database: String,
}

impl Catalog {
    fn function_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, FunctionCache>> {
        self.inner
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// `name` as the cache keys it: the bare name, and the schema when qualified (a database
/// qualifier, `db.schema.f`, is dropped).
fn split_name(name: &str) -> (Option<&str>, &str) {
    let mut parts = name.rsplitn(3, '.');
    let bare = parts.next().unwrap_or(name);
    (parts.next(), bare)
}

/// `s` as a SQL string expression whatever the server's settings: hex-decoded, so no quote
/// or backslash of `s` is ever read as SQL.
fn sql_text(s: &str) -> String {
    use std::fmt::Write as _;
    let mut hex = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        let _ = write!(hex, "{b:02x}");
    }
    format!("convert_from(decode('{hex}', 'hex'), 'UTF8')")
}

impl SchemaCatalog for Functions {
    fn functions(&self, name: &str) -> Option<Arc<[FunctionFacts]>> {
        let (schema, bare) = split_name(name);
        let cache = self.catalog.function_cache();
        let (at, all) = cache.get(&self.database)?.by_name.get(bare)?;
        if at.elapsed() > FUNCTION_FACTS_FOR {
            return None;
        }
        Some(match schema {
            None => all.clone(),
            Some(schema) => all.iter().filter(|f| f.schema == schema).cloned().collect(),
        })
    }

    fn function(&self, oid: u32) -> Option<Option<FunctionFacts>> {
        let cache = self.catalog.function_cache();
        let (at, facts) = cache.get(&self.database)?.by_oid.get(&oid)?;
        (at.elapsed() <= FUNCTION_FACTS_FOR).then(|| facts.clone())
    }

    fn operators(&self, op: &str) -> Option<Arc<[FunctionFacts]>> {
        let cache = self.catalog.function_cache();
        let (at, all) = cache.get(&self.database)?.by_operator.get(op)?;
        (at.elapsed() <= FUNCTION_FACTS_FOR).then(|| all.clone())
    }

    fn relations(&self, name: &str) -> Option<Arc<[RelationFacts]>> {
        let (schema, bare) = split_name(name);
        let cache = self.catalog.function_cache();
        let (at, all) = cache.get(&self.database)?.by_relation.get(bare)?;
        if at.elapsed() > FUNCTION_FACTS_FOR {
            return None;
        }
        Some(match schema {
            None => all.clone(),
            Some(schema) => all.iter().filter(|r| r.schema == schema).cloned().collect(),
        })
    }

    fn database_code(&self) -> Option<Arc<[ImplicitCall]>> {
        let cache = self.catalog.function_cache();
        let (at, all) = cache.get(&self.database)?.database.as_ref()?;
        (at.elapsed() <= FUNCTION_FACTS_FOR).then(|| all.clone())
    }

    fn look_up(&self, missing: CatalogLookup) -> LookupFuture {
        let this = self.clone();
        Box::pin(async move {
            let catalog = this.catalog.clone();
            let _turn = catalog.inner.lookups.lock().await;
            let mut names: Vec<String> = missing
                .names
                .iter()
                .filter(|n| this.functions(n).is_none())
                .map(|n| split_name(n).1.to_owned())
                .collect();
            names.sort_unstable();
            names.dedup();
            let mut oids = missing.oids;
            oids.retain(|&o| this.function(o).is_none());
            oids.sort_unstable();
            oids.dedup();
            while !names.is_empty() || !oids.is_empty() {
                let these: Vec<String> = names.drain(..names.len().min(MAX_LOOKUP)).collect();
                let those: Vec<u32> = oids.drain(..oids.len().min(MAX_LOOKUP)).collect();
                this.look_up_some(these, those).await?;
            }
            let mut relations: Vec<String> = missing
                .relations
                .iter()
                .filter(|n| this.relations(n).is_none())
                .map(|n| split_name(n).1.to_owned())
                .collect();
            relations.sort_unstable();
            relations.dedup();
            while !relations.is_empty() {
                let these: Vec<String> =
                    relations.drain(..relations.len().min(MAX_LOOKUP)).collect();
                this.look_up_relations(these).await?;
            }
            let mut operators = missing.operators;
            operators.retain(|o| this.operators(o).is_none());
            operators.sort_unstable();
            operators.dedup();
            while !operators.is_empty() {
                let these: Vec<String> =
                    operators.drain(..operators.len().min(MAX_LOOKUP)).collect();
                this.look_up_operators(these).await?;
            }
            if missing.database && this.database_code().is_none() {
                this.look_up_database_code().await?;
            }
            Ok(())
        })
    }

    fn forget(&self) {
        self.catalog.function_cache().remove(&self.database);
    }
}

/// The columns every function query selects (see [`function_facts`]): OID, schema, name,
/// volatility, language, a user-defined function's body (OID ≥ 16384,
/// [`FIRST_NORMAL_OID`]), for a user-defined aggregate the functions it runs, and a
/// user-defined PL/pgSQL function's whole definition.
const FUNCTION_COLUMNS: &str = "p.oid, n.nspname, p.proname, p.provolatile, l.lanname, \
     case when p.oid >= 16384 then \
       case when p.prosrc <> '' then p.prosrc \
       else pg_catalog.pg_get_functiondef(p.oid) end \
     end, \
     case when p.oid >= 16384 and p.prokind = 'a' then \
       (select pg_catalog.string_agg(sn.nspname || '.' || sp.proname, pg_catalog.chr(30)) \
        from pg_catalog.pg_aggregate ag \
        join pg_catalog.pg_proc sp on sp.oid in (ag.aggtransfn::oid, ag.aggfinalfn::oid, \
          ag.aggcombinefn::oid, ag.aggserialfn::oid, ag.aggdeserialfn::oid, \
          ag.aggmtransfn::oid, ag.aggminvtransfn::oid, ag.aggmfinalfn::oid) \
        join pg_catalog.pg_namespace sn on sn.oid = sp.pronamespace \
        where ag.aggfnoid = p.oid) \
     end, \
     case when p.oid >= 16384 and l.lanname = 'plpgsql' then \
       pg_catalog.pg_get_functiondef(p.oid) \
     end";

/// The joins [`FUNCTION_COLUMNS`] need, for `pg_proc p`.
const FUNCTION_JOINS: &str = "join pg_catalog.pg_namespace n on n.oid = p.pronamespace \
     join pg_catalog.pg_language l on l.oid = p.prolang";

/// The values of every DataRow of `frames`.
fn data_rows(frames: &[Frame]) -> impl Iterator<Item = Vec<Option<&[u8]>>> {
    frames
        .iter()
        .filter(|f| f.tag() == b'D')
        .filter_map(|f| f.row_values())
}

/// Value `i` of a row as text; `None` when NULL or absent.
fn value_text(values: &[Option<&[u8]>], i: usize) -> Option<String> {
    values
        .get(i)
        .copied()
        .flatten()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// A function's OID and facts from the [`FUNCTION_COLUMNS`] of a row.
fn function_facts(values: &[Option<&[u8]>]) -> Option<(u32, FunctionFacts)> {
    let text = |i: usize| value_text(values, i);
    let oid = text(0)?.parse::<u32>().ok()?;
    let facts = FunctionFacts {
        schema: text(1)?,
        name: text(2)?,
        user_defined: oid >= FIRST_NORMAL_OID,
        volatile: text(3)? == "v",
        language: text(4)?,
        body: text(5).map(Arc::from),
        definition: text(7).map(Arc::from),
        calls: text(6)
            .map(|calls| {
                calls
                    .split('\u{1e}')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    };
    Some((oid, facts))
}

/// The statement kinds that fire what [`Functions::look_up_implicit`] found, from its
/// `events` column: a trigger's `tgtype` bits (insert 4, delete 8, update 16, truncate 32),
/// `-1` inserts and updates, `-2` any statement naming the relation.
fn fired_by(events: i32) -> Vec<String> {
    let on: &[&str] = match events {
        -1 => &["insert", "update"],
        -2 => &["select"],
        bits => {
            return [
                (4, "insert"),
                (8, "delete"),
                (16, "update"),
                (32, "truncate"),
            ]
            .into_iter()
            .filter(|(bit, _)| bits & bit != 0)
            .map(|(_, on)| on.to_owned())
            .collect();
        }
    };
    on.iter().map(|&s| s.to_owned()).collect()
}

impl Functions {
    /// Run `sql` on the side connection; the reply's frames.
    async fn query(&self, sql: String) -> Result<Vec<Frame>, String> {
        let mut buf = BytesMut::new();
        FrontendMessage::Query { sql: sql.into() }.encode(&mut buf);
        self.catalog
            .side_run(&self.config, self.max_message, &self.database, buf)
            .await
    }

    /// One catalog query for the user-defined operators named `ops` and the functions
    /// behind them; every name asked is cached.
    async fn look_up_operators(&self, ops: Vec<String>) -> Result<(), String> {
        let op_list = ops
            .iter()
            .map(|n| sql_text(n))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "select o.oprname, {FUNCTION_COLUMNS} from pg_catalog.pg_operator o \
             join pg_catalog.pg_proc p on p.oid = o.oprcode {FUNCTION_JOINS} \
             where o.oid >= {FIRST_NORMAL_OID} \
             and o.oprname::text = any(array[{op_list}]::text[])"
        );
        let frames = self.query(sql).await?;
        let mut found: HashMap<String, Vec<FunctionFacts>> =
            ops.into_iter().map(|o| (o, Vec::new())).collect();
        for values in data_rows(&frames) {
            let op = values
                .first()
                .copied()
                .flatten()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            if let (Some(list), Some((_, facts))) =
                (found.get_mut(op.as_ref()), function_facts(&values[1..]))
            {
                list.push(facts);
            }
        }
        let now = Instant::now();
        let mut cache = self.catalog.function_cache();
        let db = cache.entry(self.database.clone()).or_default();
        if db.by_operator.len() + found.len() > MAX_TABLES {
            db.by_operator.clear();
        }
        for (op, list) in found {
            db.by_operator.insert(op, (now, list.into()));
        }
        Ok(())
    }

    /// One catalog query for the relations named `names` (bare), in every schema, and
    /// every relation each reads through views (recursively); every name asked is cached.
    async fn look_up_relations(&self, names: Vec<String>) -> Result<(), String> {
        let name_list = names
            .iter()
            .map(|n| sql_text(n))
            .collect::<Vec<_>>()
            .join(", ");
        // A view's rewrite rule depends on every relation its query reads; `union` ends
        // cycles.
        let sql = format!(
            "with recursive reach(root, rel) as ( \
               select c.oid, c.oid from pg_catalog.pg_class c \
               where c.relname::text = any(array[{name_list}]::text[]) \
               union \
               select reach.root, d.refobjid from reach \
               join pg_catalog.pg_rewrite r on r.ev_class = reach.rel \
               join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                 and d.objid = r.oid \
                 and d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                 and d.refobjid <> reach.rel \
             ) \
             select rn.nspname, rc.relname, bn.nspname, bc.relname, \
               (select pg_catalog.string_agg(pg_catalog.pg_get_ruledef(w.oid), pg_catalog.chr(30)) \
                from pg_catalog.pg_rewrite w \
                where w.ev_class = reach.rel and w.ev_type <> '1'), \
               reach.rel \
             from reach \
             join pg_catalog.pg_class rc on rc.oid = reach.root \
             join pg_catalog.pg_namespace rn on rn.oid = rc.relnamespace \
             join pg_catalog.pg_class bc on bc.oid = reach.rel \
             join pg_catalog.pg_namespace bn on bn.oid = bc.relnamespace"
        );
        let frames = self.query(sql).await?;
        // Bare name → (schema, name) → (what it reads, the rules that rewrite its writes,
        // the OIDs of it and of what it reads).
        type Reach = (Vec<String>, Vec<String>, Vec<u32>);
        let mut found: HashMap<String, HashMap<(String, String), Reach>> =
            names.into_iter().map(|n| (n, HashMap::new())).collect();
        for values in data_rows(&frames) {
            let row: Vec<String> = values
                .into_iter()
                .map(|v| String::from_utf8_lossy(v.unwrap_or_default()).into_owned())
                .collect();
            let [schema, name, read_schema, read_name, rules, rel] = row.as_slice() else {
                continue;
            };
            let Some(roots) = found.get_mut(name) else {
                continue;
            };
            let (reads, rewrites, rels) = roots.entry((schema.clone(), name.clone())).or_default();
            rels.extend(rel.parse::<u32>().ok());
            if (read_schema, read_name) != (schema, name) {
                reads.push(format!("{read_schema}.{read_name}"));
            }
            rewrites.extend(
                rules
                    .split('\u{1e}')
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned),
            );
        }
        let mut oids: Vec<u32> = found
            .values()
            .flat_map(|roots| roots.values())
            .flat_map(|(_, _, rels)| rels.iter().copied())
            .collect();
        oids.sort_unstable();
        oids.dedup();
        let mut implicit = HashMap::new();
        for some in oids.chunks(MAX_LOOKUP) {
            implicit.extend(self.look_up_implicit(some).await?);
        }
        let now = Instant::now();
        let mut cache = self.catalog.function_cache();
        let db = cache.entry(self.database.clone()).or_default();
        if db.by_relation.len() + found.len() > MAX_TABLES {
            db.by_relation.clear();
        }
        for (bare, roots) in found {
            let facts: Vec<RelationFacts> = roots
                .into_iter()
                .map(|((schema, name), (mut reads, mut rules, rels))| {
                    reads.sort_unstable();
                    reads.dedup();
                    rules.sort_unstable();
                    rules.dedup();
                    let mut calls: Vec<ImplicitCall> = rels
                        .iter()
                        .filter_map(|r| implicit.get(r))
                        .flatten()
                        .cloned()
                        .collect();
                    calls.dedup();
                    RelationFacts {
                        schema,
                        name,
                        reads,
                        rules,
                        implicit: calls,
                    }
                })
                .collect();
            db.by_relation.insert(bare, (now, facts.into()));
        }
        Ok(())
    }

    /// The user-defined functions attached to the relations `rels` (by OID): triggers
    /// (fired by their events), check constraints, defaults and generated columns, index
    /// expressions (fired by inserts and updates), row-security policies (by any statement
    /// naming the relation). What the server records in `pg_depend` for each is what it
    /// runs.
    async fn look_up_implicit(
        &self,
        rels: &[u32],
    ) -> Result<HashMap<u32, Vec<ImplicitCall>>, String> {
        let list = rels
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let any = format!("any('{{{list}}}'::pg_catalog.oid[])");
        let sql = format!(
            "with objs(rel, what, label, obj, cat, events) as ( \
               select t.tgrelid, 'trigger', t.tgname::text, t.oid, \
                 'pg_catalog.pg_trigger'::pg_catalog.regclass, t.tgtype::int \
               from pg_catalog.pg_trigger t where not t.tgisinternal and t.tgrelid = {any} \
               union all \
               select k.conrelid, 'constraint', k.conname::text, k.oid, \
                 'pg_catalog.pg_constraint'::pg_catalog.regclass, -1 \
               from pg_catalog.pg_constraint k where k.conrelid = {any} \
               union all \
               select a.adrelid, 'default of column', a.adnum::text, a.oid, \
                 'pg_catalog.pg_attrdef'::pg_catalog.regclass, -1 \
               from pg_catalog.pg_attrdef a where a.adrelid = {any} \
               union all \
               select i.indrelid, 'index', i.indexrelid::text, i.indexrelid, \
                 'pg_catalog.pg_class'::pg_catalog.regclass, -1 \
               from pg_catalog.pg_index i where i.indrelid = {any} \
               union all \
               select y.polrelid, 'policy', y.polname::text, y.oid, \
                 'pg_catalog.pg_policy'::pg_catalog.regclass, -2 \
               from pg_catalog.pg_policy y where y.polrelid = {any} \
             ) \
             select distinct o.rel, o.what || ' ' || o.label || ' on ' \
               || o.rel::pg_catalog.regclass::text, o.events, {FUNCTION_COLUMNS} \
             from objs o \
             join pg_catalog.pg_depend d on d.classid = o.cat and d.objid = o.obj \
               and d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
             join pg_catalog.pg_proc p on p.oid = d.refobjid {FUNCTION_JOINS} \
             where p.oid >= {FIRST_NORMAL_OID}"
        );
        let frames = self.query(sql).await?;
        let mut found: HashMap<u32, Vec<ImplicitCall>> = HashMap::new();
        for values in data_rows(&frames) {
            let text = |i: usize| value_text(&values, i).unwrap_or_default();
            let (Ok(rel), Ok(events)) = (text(0).parse::<u32>(), text(2).parse::<i32>()) else {
                continue;
            };
            let Some((_, function)) = function_facts(&values[3..]) else {
                continue;
            };
            found.entry(rel).or_default().push(ImplicitCall {
                on: fired_by(events),
                by: text(1),
                function,
            });
        }
        Ok(found)
    }

    /// One catalog query for the database-wide implicit code: user-defined casts (not an
    /// extension's) and domain constraints and defaults, which may run for any statement,
    /// and event triggers, which run for DDL.
    async fn look_up_database_code(&self) -> Result<(), String> {
        let sql = format!(
            "select 'ddl', 'event trigger ' || e.evtname, {FUNCTION_COLUMNS} \
             from pg_catalog.pg_event_trigger e \
             join pg_catalog.pg_proc p on p.oid = e.evtfoid {FUNCTION_JOINS} \
             union all \
             select 'any', 'cast from ' || pg_catalog.format_type(c.castsource, null) \
               || ' to ' || pg_catalog.format_type(c.casttarget, null), {FUNCTION_COLUMNS} \
             from pg_catalog.pg_cast c \
             join pg_catalog.pg_proc p on p.oid = c.castfunc {FUNCTION_JOINS} \
             where c.oid >= {FIRST_NORMAL_OID} and not exists ( \
               select 1 from pg_catalog.pg_depend x \
               where x.classid = 'pg_catalog.pg_cast'::pg_catalog.regclass \
                 and x.objid = c.oid and x.deptype = 'e') \
             union all \
             select 'any', 'domain ' || pg_catalog.format_type(t.oid, null), {FUNCTION_COLUMNS} \
             from pg_catalog.pg_type t \
             join pg_catalog.pg_constraint k on k.contypid = t.oid \
             join pg_catalog.pg_depend d on d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
               and ((d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass and d.objid = k.oid) \
                 or (d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass and d.objid = t.oid)) \
             join pg_catalog.pg_proc p on p.oid = d.refobjid {FUNCTION_JOINS} \
             where t.typtype = 'd' and p.oid >= {FIRST_NORMAL_OID}"
        );
        let frames = self.query(sql).await?;
        let mut found = Vec::new();
        for values in data_rows(&frames) {
            let text = |i: usize| value_text(&values, i).unwrap_or_default();
            let Some((_, function)) = function_facts(&values[2..]) else {
                continue;
            };
            let call = ImplicitCall {
                on: vec![text(0)],
                by: text(1),
                function,
            };
            if !found.contains(&call) {
                found.push(call);
            }
        }
        let mut cache = self.catalog.function_cache();
        let db = cache.entry(self.database.clone()).or_default();
        db.database = Some((Instant::now(), found.into()));
        Ok(())
    }

    /// One catalog query for `names` (bare) and `oids`; every one asked is cached, found or
    /// not.
    async fn look_up_some(&self, names: Vec<String>, oids: Vec<u32>) -> Result<(), String> {
        let name_list = names
            .iter()
            .map(|n| sql_text(n))
            .collect::<Vec<_>>()
            .join(", ");
        let oid_list = oids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "select {FUNCTION_COLUMNS} from pg_catalog.pg_proc p {FUNCTION_JOINS} \
             where p.proname::text = any(array[{name_list}]::text[]) \
             or p.oid = any('{{{oid_list}}}'::oid[])"
        );
        let frames = self.query(sql).await?;
        let mut by_name: HashMap<String, Vec<FunctionFacts>> =
            names.into_iter().map(|n| (n, Vec::new())).collect();
        let mut by_oid: HashMap<u32, Option<FunctionFacts>> =
            oids.into_iter().map(|o| (o, None)).collect();
        for values in data_rows(&frames) {
            let Some((oid, facts)) = function_facts(&values) else {
                continue;
            };
            if let Some(slot) = by_oid.get_mut(&oid) {
                *slot = Some(facts.clone());
            }
            if let Some(list) = by_name.get_mut(&facts.name) {
                list.push(facts);
            }
        }
        let now = Instant::now();
        let mut cache = self.catalog.function_cache();
        let db = cache.entry(self.database.clone()).or_default();
        if db.by_name.len() + by_name.len() > MAX_TABLES {
            db.by_name.clear();
        }
        if db.by_oid.len() + by_oid.len() > MAX_TABLES {
            db.by_oid.clear();
        }
        for (name, list) in by_name {
            db.by_name.insert(name, (now, list.into()));
        }
        for (oid, facts) in by_oid {
            db.by_oid.insert(oid, (now, facts));
        }
        Ok(())
    }
}

impl Catalog {
    /// The columns of `select` as the database describes them (Parse + Describe, nothing
    /// run), on the side connection to `database`.
    pub(crate) async fn describe(
        &self,
        config: &UpstreamConfig,
        max_message: usize,
        database: &str,
        select: &str,
    ) -> Result<Vec<Field>, String> {
        let mut buf = BytesMut::new();
        for m in [
            FrontendMessage::Parse {
                name: Bytes::new(),
                query: select.to_owned().into(),
                param_types: Vec::new(),
            },
            FrontendMessage::Describe {
                target: b'S',
                name: Bytes::new(),
            },
            FrontendMessage::Sync,
        ] {
            m.encode(&mut buf);
        }
        let frames = self.side_run(config, max_message, database, buf).await?;
        frames
            .iter()
            .find(|f| f.tag() == b'T')
            .and_then(|f| fields(f.body()))
            .ok_or_else(|| "the copied columns could not be described".to_owned())
    }

    /// Send `unit` (one command unit's bytes) on the side connection to `database` (opened
    /// on first use with the listener's upstream settings) and collect the reply's frames;
    /// an error reply is an error.
    ///
    /// The side connection lives on the runtime the catalog was made on (the listener's,
    /// multi-threaded: its sockets are always driven), never on a session thread: a session
    /// thread's single-threaded runtime drives its sockets only when that thread is free,
    /// so a connection opened there and used from every other session thread would wait on
    /// whatever that one thread was busy with.
    async fn side_run(
        &self,
        config: &UpstreamConfig,
        max_message: usize,
        database: &str,
        unit: BytesMut,
    ) -> Result<Vec<Frame>, String> {
        let this = self.clone();
        let config = config.clone();
        let database = database.to_owned();
        // A database that stops answering must not hold the commands waiting for it: after
        // the bound the query is given up, its connection dropped (opened again next time).
        let bounded = async move {
            let asked = this.side_run_here(&config, max_message, &database, unit);
            match tokio::time::timeout(SIDE_QUERY_TIMEOUT, asked).await {
                Ok(answer) => answer,
                Err(_) => {
                    this.inner.side.lock().await.remove(&database);
                    Err(format!(
                        "the database did not answer the catalog query within {SIDE_QUERY_TIMEOUT:?}"
                    ))
                }
            }
        };
        match self.inner.home.clone() {
            Some(home) => home
                .spawn(bounded)
                .await
                .map_err(|e| format!("the catalog query failed: {e}"))?,
            None => bounded.await,
        }
    }

    /// [`Catalog::side_run`] on the current runtime.
    async fn side_run_here(
        &self,
        config: &UpstreamConfig,
        max_message: usize,
        database: &str,
        mut unit: BytesMut,
    ) -> Result<Vec<Frame>, String> {
        let Ok(Some(Item::Unit(command))) = UnitBuilder::new(max_message).next(&mut unit) else {
            return Err("could not build the catalog query".into());
        };
        let mut side = self.inner.side.lock().await;
        let mut upstream = match side.get(database) {
            Some(u) => u.clone(),
            None => {
                let connected =
                    upstream::connect(config, &config.user, &config.password, database, &[])
                        .await
                        .map_err(|e| e.to_string())?;
                let u = PgUpstream::new(connected, max_message);
                side.insert(database.to_owned(), u.clone());
                u
            }
        };
        match run(&mut upstream, command).await {
            Ok(frames) => Ok(frames),
            Err(e) => {
                // A broken side connection is opened again next time.
                side.remove(database);
                Err(e)
            }
        }
    }
}

/// Run one command unit and return its reply's frames.
async fn run(
    upstream: &mut PgUpstream,
    command: crate::command::PgCommand,
) -> Result<Vec<Frame>, String> {
    let peer = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let who = Identity::new("portcullis-catalog", Vec::new(), AuthMethod::StaticToken);
    let session = Arc::new(Session::new(
        SessionId(0),
        Protocol::Postgres,
        "catalog",
        peer,
        who,
    ));
    let response = upstream
        .call(Request::new(session, command))
        .await
        .map_err(|e| e.to_string())?;
    let mut body = response.body;
    let mut frames = Vec::new();
    while let Some(frame) = body.next_event().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if frame.tag() == b'E' {
            let why = crate::codec::response_field(frame.body(), b'M')
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            return Err(format!("the catalog query failed: {why}"));
        }
        frames.push(frame);
    }
    Ok(frames)
}
