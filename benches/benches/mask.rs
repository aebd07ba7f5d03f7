//! Personal-data detection and masking (`portcullis-mask`): the scan over clean ASCII text,
//! over text dense with personal data, over numeric table data without any, and one short
//! clean value.
//!
//! Run with: `cd benches && cargo bench --bench mask` (add `-- --warm-up-time 1
//! --measurement-time 3` for a quick look).

use std::collections::BTreeMap;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use portcullis_mask::{Detectors, Kind, Masked, Masker, Strategy};

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

criterion_group!(benches, scan);
criterion_main!(benches);
