//! SQL classification with PostgreSQL's parser (`portcullis-policy`), uncached: parse, walk
//! the whole tree, classify. The guard will cache verdicts by normalised statement; this is
//! the cost of a miss.
//!
//! Run with: `cd benches && cargo bench --bench classify` (add `-- --warm-up-time 1
//! --measurement-time 2` for a quick look).

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use portcullis_policy::Classifier;

fn classify(c: &mut Criterion) {
    let classifier = Classifier::default();
    let mut group = c.benchmark_group("classify");
    for (name, sql) in [
        ("pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"),
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

criterion_group!(benches, classify);
criterion_main!(benches);
