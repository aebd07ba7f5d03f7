//! SQL classification with PostgreSQL's parser (`portcullis-policy`): uncached (parse, walk
//! the whole tree, classify — the cost of a cache miss), cached (the guard's path for a
//! statement seen before with other literals: normalise, look up), and a whole judgement
//! (cached classification + the six rules of INTERFACE.md's example).
//!
//! Run with: `cd benches && cargo bench --bench classify` (add `-- --warm-up-time 1
//! --measurement-time 2` for a quick look).

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use portcullis_core::{AuthMethod, Identity};
use portcullis_policy::{Action, Classifier, Mode, Policy, Rule};

fn classify(c: &mut Criterion) {
    let classifier = Classifier::default();
    let mut group = c.benchmark_group("classify");
    for (name, sql) in [
        (
            "pgbench_select",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        ),
        (
            "pgbench_tpcb_update",
            "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 56789;",
        ),
        (
            "cte_delete",
            "with gone as (delete from orders where created < now() - interval '1 year' returning *) select count(*) from gone",
        ),
        (
            "report_join",
            "select c.name, sum(o.total) from customers c join orders o on o.customer_id = c.id where o.created > $1 group by c.name order by 2 desc limit 20",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(classifier.classify(black_box(sql)).map(|s| s.len())))
        });
    }
    group.finish();
}

include!("../../crates/portcullis-policy/src/example_rules.rs");

fn interface_rules() -> Policy {
    Policy::new(example_rules()).expect("valid rules")
}

fn cached(c: &mut Criterion) {
    let policy = interface_rules();
    let who = Identity::new("bench", vec!["analysts".into()], AuthMethod::StaticToken);
    // pgbench -S sends a new literal every time: 1000 different texts, one cache entry.
    let texts: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                i * 7919 + 1
            )
        })
        .collect();
    let prepared = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    let mut group = c.benchmark_group("policy");
    let mut i = 0;
    group.bench_function("classify_cached_pgbench_select", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            black_box(policy.classify(black_box(&texts[i])))
        })
    });
    group.bench_function("judge_cached_pgbench_select", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            black_box(policy.judge(&who, [black_box(texts[i].as_str())]))
        })
    });
    group.bench_function("judge_cached_prepared", |b| {
        b.iter(|| black_box(policy.judge(&who, [black_box(prepared)])))
    });
    group.finish();
}

/// One SQL statement as a command unit.
struct Sql<'a>(&'a str);

impl portcullis_core::CommandView for Sql<'_> {
    fn kind(&self) -> portcullis_core::CommandKind {
        portcullis_core::CommandKind::Statements
    }
    fn statements(&self) -> Vec<portcullis_core::Statement<'_>> {
        vec![portcullis_core::Statement::text(self.0)]
    }
}

/// The guard's whole judgement of a command whose statement is cached: what a session pays
/// per command (session settings, prepared statements, the policy, settings tracking).
fn guard(c: &mut Criterion) {
    use tower_layer::Layer;
    let guard = portcullis_policy::GuardLayer::new(interface_rules()).layer(());
    let who = Identity::new("bench", vec!["analysts".into()], AuthMethod::StaticToken);
    let session = portcullis_core::Session::new(
        portcullis_core::SessionId(1),
        portcullis_core::Protocol::Postgres,
        "bench",
        "127.0.0.1:1".parse().expect("address"),
        who,
    );
    let texts: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                i * 7919 + 1
            )
        })
        .collect();
    let mut i = 0;
    let mut group = c.benchmark_group("guard");
    group.bench_function("guard_judge_cached_pgbench_select", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            black_box(guard.judge(&session, &Sql(black_box(&texts[i]))))
        })
    });
    // The same with the session's catalog on (every answer cached, as in a session past its
    // first command): the relation look-up, database-wide code and operators are consulted
    // for every statement.
    let mut session = session;
    session.catalog = Some(std::sync::Arc::new(Known));
    group.bench_function("guard_judge_cached_pgbench_select_catalog", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            black_box(guard.judge(&session, &Sql(black_box(&texts[i]))))
        })
    });
    group.finish();
}

/// A catalog that knows everything, and has nothing user-defined: what a session's cached
/// catalog answers in a database without user-defined code attached.
struct Known;

impl portcullis_core::SchemaCatalog for Known {
    fn functions(&self, _: &str) -> Option<std::sync::Arc<[portcullis_core::FunctionFacts]>> {
        Some(std::sync::Arc::from([]))
    }
    fn function(&self, _: u32) -> Option<Option<portcullis_core::FunctionFacts>> {
        Some(None)
    }
    fn relations(&self, name: &str) -> Option<std::sync::Arc<[portcullis_core::RelationFacts]>> {
        Some(std::sync::Arc::from([portcullis_core::RelationFacts {
            schema: "public".into(),
            name: name.into(),
            reads: Vec::new(),
            rules: Vec::new(),
            implicit: Vec::new(),
        }]))
    }
    fn operators(&self, _: &str) -> Option<std::sync::Arc<[portcullis_core::FunctionFacts]>> {
        Some(std::sync::Arc::from([]))
    }
    fn database_code(&self) -> Option<std::sync::Arc<[portcullis_core::ImplicitCall]>> {
        Some(std::sync::Arc::from([]))
    }
    fn look_up(&self, _: portcullis_core::CatalogLookup) -> portcullis_core::LookupFuture {
        Box::pin(std::future::ready(Ok(())))
    }
    fn forget(&self) {}
}

criterion_group!(benches, classify, cached, guard);
criterion_main!(benches);
