//! The audit trail's per-record cost: what the JSONL writer does for every command and
//! outcome (serialize, hash-chain, timestamp), and what `audit verify` does per record.
//!
//! Run with: `cd benches && cargo bench --bench audit` (add `-- --warm-up-time 1
//! --measurement-time 2` for a quick look).

use std::sync::Arc;
use std::time::SystemTime;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use portcullis_audit::AuditEvent;
use portcullis_audit::chain::{ChainState, parse_line};
use portcullis_audit::event::{Command, Outcome, ParamRecord, SessionRef, StatementRecord, Status};

fn session() -> SessionRef {
    SessionRef {
        session: Arc::from("1db41b1641b00000"),
        sseq: 12,
        identity: Arc::from("alice"),
        peer: "127.0.0.1:51234"
            .parse()
            .unwrap_or_else(|_| std::process::abort()),
        target: Arc::from("main"),
    }
}

/// pgbench -S -M extended's command.
fn command() -> AuditEvent {
    AuditEvent::Command(Command {
        session: session(),
        command: 6,
        kind: "statements".into(),
        statements: vec![StatementRecord {
            text: "SELECT abalance FROM pgbench_accounts WHERE aid = $1;".into(),
            prepared: None,
            executes: true,
        }],
        params: vec![ParamRecord::Text("48213".into())],
        masked: false,
    })
}

fn outcome() -> AuditEvent {
    AuditEvent::Outcome(Outcome {
        session: session(),
        command: 6,
        status: Status::Ok,
        rows: 1,
        bytes: 79,
        duration_us: 61,
        tag: Some("SELECT 1".into()),
        error: None,
        decisions: Vec::new(),
        masking: None,
    })
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    let at = SystemTime::now();
    for (name, event) in [("command", command()), ("outcome", outcome())] {
        let mut chain = ChainState::genesis();
        let mut out = Vec::with_capacity(1024);
        group.bench_function(format!("append/{name}"), |b| {
            b.iter(|| {
                out.clear();
                chain.append(&mut out, at, black_box(&event));
                black_box(out.len())
            })
        });
        let mut line = Vec::new();
        ChainState::genesis().append(&mut line, at, &event);
        line.pop();
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| black_box(parse_line(black_box(&line)).is_ok()))
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
