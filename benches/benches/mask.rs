//! Personal-data detection and masking (`portcullis-mask`): the scan over clean ASCII text,
//! over text dense with personal data, over numeric table data without any, and one short
//! clean value; and the streaming JSON masker over a ~10 MB array of objects (clean, and
//! dense with e-mails and cards) against passing the same bytes through.
//!
//! Run with: `cd benches && cargo bench --bench mask` (add `-- --warm-up-time 1
//! --measurement-time 3` for a quick look; `-- json` for the JSON benches only).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use portcullis_mask::{Detectors, JsonMasker, JsonPolicy, Kind, Masked, Masker, Strategy};

/// ~1 MiB of prose: words, spaces and punctuation, no digits.
fn clean_text() -> Vec<u8> {
    let words = [
        "the",
        "gateway",
        "masks",
        "personal",
        "data",
        "before",
        "it",
        "reaches",
        "a",
        "client",
        "and",
        "records",
        "every",
        "session",
        "in",
        "an",
        "audit",
        "trail,",
        "which",
        "outlives",
        "job.",
        "approvals",
        "hold",
        "risky",
        "statements;",
    ];
    let mut out = Vec::with_capacity(1 << 20);
    let mut i = 0usize;
    while out.len() < 1 << 20 {
        out.extend_from_slice(words[i % words.len()].as_bytes());
        out.push(b' ');
        i = i.wrapping_mul(7).wrapping_add(3);
    }
    out
}

/// ~1 MiB where most lines carry personal data.
fn dense_text() -> Vec<u8> {
    let lines = [
        "jane.doe@example.com paid 4242 4242 4242 4242 from 10.20.30.40",
        "ssn 123-45-6789 phone +1 415-555-0132 iban DE89 3704 0044 0532 0130 00",
        "token ghp_abcdefghijklmnopqrstuvwxyz0123456789 key AKIAIOSFODNN7EXAMPLE",
        "order 88213 shipped to john.smith@mail.example.org on 2026-11-28",
    ];
    let mut out = Vec::with_capacity(1 << 20);
    let mut i = 0;
    while out.len() < 1 << 20 {
        out.extend_from_slice(lines[i % lines.len()].as_bytes());
        out.push(b'\n');
        i += 1;
    }
    out
}

/// Rows of a typical table without personal data: ids, amounts, dates, status words.
fn numeric_rows() -> Vec<Vec<u8>> {
    (0..20_000)
        .map(|i| {
            format!(
                "{i}\t{}.{:02}\t2026-11-{:02}\tshipped\tstandard",
                i * 37 % 10_000,
                i % 100,
                i % 28 + 1
            )
            .into_bytes()
        })
        .collect()
}

fn scan(c: &mut Criterion) {
    let detectors = Detectors::all();
    let masker = Masker::new(Detectors::all(), Strategy::Partial);
    let mut group = c.benchmark_group("mask");

    let clean = clean_text();
    group.throughput(Throughput::Bytes(clean.len() as u64));
    group.bench_function("scan_clean_ascii_1mib", |b| {
        let mut found = Vec::new();
        b.iter(|| {
            found.clear();
            detectors.scan(black_box(&clean), &mut found);
            black_box(found.len())
        })
    });

    // The two halves of the clean scan: the character prefilter alone (e-mail only) and the
    // literal pass alone (JWT, keys, tokens).
    let chars_only = Detectors::new(&[Kind::Email], Vec::new()).expect("detectors");
    group.bench_function("scan_clean_ascii_1mib_chars_only", |b| {
        let mut found = Vec::new();
        b.iter(|| {
            found.clear();
            chars_only.scan(black_box(&clean), &mut found);
            black_box(found.len())
        })
    });
    let literals_only = Detectors::new(
        &[
            Kind::Jwt,
            Kind::AwsAccessKey,
            Kind::PrivateKey,
            Kind::ApiToken,
        ],
        Vec::new(),
    )
    .expect("detectors");
    group.bench_function("scan_clean_ascii_1mib_literals_only", |b| {
        let mut found = Vec::new();
        b.iter(|| {
            found.clear();
            literals_only.scan(black_box(&clean), &mut found);
            black_box(found.len())
        })
    });

    let dense = dense_text();
    group.throughput(Throughput::Bytes(dense.len() as u64));
    group.bench_function("scan_dense_pii_1mib", |b| {
        let mut found = Vec::new();
        b.iter(|| {
            found.clear();
            detectors.scan(black_box(&dense), &mut found);
            black_box(found.len())
        })
    });
    group.bench_function("mask_dense_pii_1mib", |b| {
        let (mut scratch, mut counts) = (Vec::new(), BTreeMap::new());
        b.iter(
            || match masker.mask(black_box(&dense), &mut scratch, &mut counts) {
                Masked::Rewritten(v) => black_box(v.len()),
                _ => 0,
            },
        )
    });

    let rows = numeric_rows();
    let bytes: usize = rows.iter().map(Vec::len).sum();
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("scan_numeric_rows_no_pii", |b| {
        let mut found = Vec::new();
        b.iter(|| {
            for row in &rows {
                found.clear();
                detectors.scan(black_box(row), &mut found);
            }
            black_box(found.len())
        })
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function("scan_short_clean_value", |b| {
        let mut found = Vec::new();
        b.iter(|| {
            found.clear();
            detectors.scan(black_box(b"Jane Doe-Smith"), &mut found);
            black_box(found.len())
        })
    });
    group.finish();
}

/// A ~10 MB JSON array of API-like objects (one per line, as a pretty-ish API would send
/// them). `dense`: every object carries e-mails, a card and a phone number; otherwise the
/// values are clean (with the digits of ids, dates and amounts the detectors must look at).
fn json_array(dense: bool) -> Vec<u8> {
    let names = [
        "Alice Martin",
        "Bob Lefebvre",
        "Chloé Durand",
        "David Okafor",
        "Eve Nakamura",
    ];
    let cities = ["Lyon", "Paris", "Nantes", "Lille", "Bordeaux", "Zürich"];
    let mut out = Vec::with_capacity(10_500_000);
    out.extend_from_slice(b"[\n");
    let mut i = 0usize;
    while out.len() < 10_000_000 {
        if i > 0 {
            out.extend_from_slice(b",\n");
        }
        let name = names[i % names.len()];
        let city = cities[i % cities.len()];
        let object = if dense {
            format!(
                r#"  {{"id":{i},"name":"{name}","email":"user{i}@example.com","card":"4242 4242 4242 4242","phone":"+1 415-555-0132","city":"{city}","note":"contact jane.doe{i}@mail.example.org or pay with 4111 1111 1111 1111","amount":{}.{:02},"active":true}}"#,
                i * 37 % 10_000,
                i % 100
            )
        } else {
            format!(
                r#"  {{"id":{i},"name":"{name}","login":"user_{i}","city":"{city}","status":"shipped","created":"2026-11-{:02}T10:15:00Z","note":"the gateway masks personal data before it reaches a client","amount":{}.{:02},"active":true,"tags":["standard","priority"]}}"#,
                i % 28 + 1,
                i * 37 % 10_000,
                i % 100
            )
        };
        out.extend_from_slice(object.as_bytes());
        i += 1;
    }
    out.extend_from_slice(b"\n]\n");
    out
}

/// 16 KiB chunks, as an HTTP body arrives.
const CHUNK: usize = 16 << 10;

fn json(c: &mut Criterion) {
    let detect = Arc::new(JsonPolicy::new(Masker::new(
        Detectors::all(),
        Strategy::Partial,
    )));
    let rules = Arc::new(
        JsonPolicy::new(Masker::new(Detectors::all(), Strategy::Partial))
            .rule("$[*].email", Strategy::Redact)
            .expect("path")
            .rule("$..card", Strategy::Partial)
            .expect("path")
            .rule("$..ssn", Strategy::Null)
            .expect("path"),
    );
    // Parsed and copied, nothing to look for: the masker's own cost.
    let nothing = Arc::new(JsonPolicy::new(Masker::new(
        Detectors::new(&[], Vec::new()).expect("detectors"),
        Strategy::Partial,
    )));
    let mut group = c.benchmark_group("mask_json");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (label, doc) in [("clean", json_array(false)), ("dense", json_array(true))] {
        group.throughput(Throughput::Bytes(doc.len() as u64));
        // Passing the body through: each chunk copied once.
        group.bench_function(format!("{label}_10mb_passthrough_copy"), |b| {
            let mut out = Vec::with_capacity(doc.len() + (1 << 20));
            b.iter(|| {
                out.clear();
                for chunk in doc.chunks(CHUNK) {
                    out.extend_from_slice(black_box(chunk));
                }
                black_box(out.len())
            })
        });
        for (what, policy) in [
            ("parse_only", &nothing),
            ("detectors", &detect),
            ("detectors_and_rules", &rules),
        ] {
            group.bench_function(format!("{label}_10mb_{what}"), |b| {
                let mut out = Vec::with_capacity(doc.len() + (1 << 20));
                b.iter(|| {
                    out.clear();
                    let mut m = JsonMasker::new(policy.clone());
                    for chunk in doc.chunks(CHUNK) {
                        m.feed(black_box(chunk), &mut out).expect("valid");
                    }
                    m.finish(&mut out).expect("complete");
                    black_box(out.len())
                })
            });
        }
        // For scale: a full parse into a tree.
        group.bench_function(format!("{label}_10mb_serde_json_value"), |b| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_slice(black_box(&doc)).expect("valid");
                black_box(v.as_array().map(Vec::len))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scan, json);
criterion_main!(benches);
