//! The PostgreSQL codec's hot paths.
//!
//! - `split/*`: [`decode_frame`] alone over a buffer as one socket read leaves it — the relay's
//!   hot path (a frame no layer changes is forwarded as these original bytes, zero-copy).
//! - `datarow/*`: a DataRow frame decoded into [`BackendMessage::DataRow`] and encoded back
//!   (what the mask layer does to a row it rewrites).
//! - `query/*`: a client's Query (and an extended-protocol batch) decoded into
//!   [`FrontendMessage`] and encoded back (what the gateway does to every command unit).
//!
//! Run with: `cd benches && cargo bench --bench codec` (add `-- --warm-up-time 1
//! --measurement-time 2` for a quick look). Throughput is reported in bytes of wire frames.

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use portcullis_postgres::codec::{
    BackendMessage, DEFAULT_MAX_MESSAGE, FrontendMessage, decode_frame,
};

/// pgbench's `-S` statement (simple protocol).
const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
/// The same statement as pgbench `-M extended` / `-M prepared` sends it.
const PGBENCH_SELECT_EXT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
/// About what one socket read holds when a result streams (the upstream reads 16-64 KiB).
const READ_BUFFER: usize = 64 * 1024;

fn encode_backend(msgs: &[BackendMessage]) -> Bytes {
    let mut buf = BytesMut::new();
    for m in msgs {
        m.encode(&mut buf);
    }
    buf.freeze()
}

fn encode_frontend(msgs: &[FrontendMessage]) -> Bytes {
    let mut buf = BytesMut::new();
    for m in msgs {
        m.encode(&mut buf);
    }
    buf.freeze()
}

fn text(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

/// The one row of pgbench `-S`: `abalance`.
fn row_pgbench_s() -> BackendMessage {
    BackendMessage::DataRow(vec![text("-4211")])
}

/// A narrow row of five columns, about 100 bytes on the wire (a `pgbench_accounts` row:
/// aid, bid, abalance, filler, plus a NULL).
fn row_5_cols() -> BackendMessage {
    BackendMessage::DataRow(vec![
        text("12345"),
        text("1"),
        text("-4211"),
        text(&" ".repeat(60)),
        None,
    ])
}

/// A wide row: 20 columns of mixed ints, text, timestamps, NULLs (~400 bytes).
fn row_20_cols() -> BackendMessage {
    let mut cols = Vec::with_capacity(20);
    for i in 0..20 {
        cols.push(match i % 5 {
            0 => text(&format!("{}", 1_000_000 + i)),
            1 => text("alice@example.com"),
            2 => text("2024-05-17 09:21:44.123456+00"),
            3 => None,
            _ => text("a somewhat longer free-text value of a column"),
        });
    }
    BackendMessage::DataRow(cols)
}

/// A row of the 1M-row throughput select: `g, md5(g::text)`.
fn row_md5() -> BackendMessage {
    BackendMessage::DataRow(vec![
        text("123456"),
        text("e10adc3949ba59abbe56e057f20f883e"),
    ])
}

/// The whole reply to one pgbench `-S` in simple mode: RowDescription, DataRow,
/// CommandComplete, ReadyForQuery.
fn pgbench_s_reply() -> Bytes {
    let mut desc = BytesMut::new();
    // One field "abalance", int4, text format.
    desc.extend_from_slice(&1i16.to_be_bytes());
    desc.extend_from_slice(b"abalance\0");
    desc.extend_from_slice(&16_400u32.to_be_bytes()); // table oid
    desc.extend_from_slice(&3i16.to_be_bytes()); // column number
    desc.extend_from_slice(&23u32.to_be_bytes()); // int4
    desc.extend_from_slice(&4i16.to_be_bytes());
    desc.extend_from_slice(&(-1i32).to_be_bytes());
    desc.extend_from_slice(&0i16.to_be_bytes());
    encode_backend(&[
        BackendMessage::RowDescription(desc.freeze()),
        row_pgbench_s(),
        BackendMessage::CommandComplete {
            tag: Bytes::from_static(b"SELECT 1"),
        },
        BackendMessage::ReadyForQuery { status: b'I' },
    ])
}

/// Back-to-back copies of `one` filling about [`READ_BUFFER`] bytes.
fn read_buffer_of(one: &Bytes) -> Bytes {
    let n = (READ_BUFFER / one.len()).max(1);
    let mut buf = BytesMut::with_capacity(n * one.len());
    for _ in 0..n {
        buf.extend_from_slice(one);
    }
    buf.freeze()
}

/// Split every frame off `wire`; returns how many (so the work cannot be optimised away).
fn split_all(mut buf: BytesMut) -> usize {
    let mut n = 0;
    while let Ok(Some(frame)) = decode_frame(&mut buf, DEFAULT_MAX_MESSAGE) {
        black_box(&frame);
        n += 1;
    }
    assert!(buf.is_empty(), "benchmark input must be whole frames");
    n
}

fn bench_split(c: &mut Criterion) {
    let mut g = c.benchmark_group("split");
    let inputs = [
        ("pgbench_S_reply", pgbench_s_reply()),
        (
            "datarow_5col_64KiB",
            read_buffer_of(&encode_backend(&[row_5_cols()])),
        ),
        (
            "datarow_20col_64KiB",
            read_buffer_of(&encode_backend(&[row_20_cols()])),
        ),
        (
            "datarow_md5_64KiB",
            read_buffer_of(&encode_backend(&[row_md5()])),
        ),
    ];
    for (name, wire) in inputs {
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(name, |b| {
            // Copying the socket bytes into the buffer is the read's cost, not the codec's.
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                split_all,
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_datarow(c: &mut Criterion) {
    let mut g = c.benchmark_group("datarow");
    let rows = [
        ("1col_pgbench_S", row_pgbench_s()),
        ("5col_100B", row_5_cols()),
        ("20col", row_20_cols()),
        ("2col_md5", row_md5()),
    ];
    for (name, row) in rows {
        let wire = encode_backend(std::slice::from_ref(&row));
        let frame = decode_frame(&mut BytesMut::from(&wire[..]), DEFAULT_MAX_MESSAGE)
            .ok()
            .flatten()
            .unwrap_or_else(|| unreachable!("an encoded DataRow is one whole frame"));
        assert_eq!(BackendMessage::decode(&frame).ok(), Some(row));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("{name}/decode"), |b| {
            b.iter(|| BackendMessage::decode(black_box(&frame)))
        });
        let mut out = BytesMut::with_capacity(2 * wire.len());
        g.bench_function(format!("{name}/decode_encode"), |b| {
            b.iter(|| {
                out.clear();
                if let Ok(msg) = BackendMessage::decode(black_box(&frame)) {
                    msg.encode(&mut out);
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn bench_query(c: &mut Criterion) {
    let mut g = c.benchmark_group("query");
    let simple = encode_frontend(&[FrontendMessage::Query {
        sql: Bytes::from_static(PGBENCH_SELECT.as_bytes()),
    }]);
    // pgbench -M extended: Parse, Bind, Describe portal, Execute, Sync.
    let extended = encode_frontend(&[
        FrontendMessage::Parse {
            name: Bytes::new(),
            query: Bytes::from_static(PGBENCH_SELECT_EXT.as_bytes()),
            param_types: vec![],
        },
        FrontendMessage::Bind {
            portal: Bytes::new(),
            statement: Bytes::new(),
            param_formats: vec![],
            params: vec![text("12345")],
            result_formats: vec![],
        },
        FrontendMessage::Describe {
            target: b'P',
            name: Bytes::new(),
        },
        FrontendMessage::Execute {
            portal: Bytes::new(),
            max_rows: 0,
        },
        FrontendMessage::Sync,
    ]);
    for (name, wire) in [
        ("simple_pgbench_S", simple),
        ("extended_pgbench_S", extended),
    ] {
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("{name}/split"), |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                split_all,
                BatchSize::SmallInput,
            )
        });
        let mut out = BytesMut::with_capacity(2 * wire.len());
        g.bench_function(format!("{name}/split_decode_encode"), |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| {
                    out.clear();
                    while let Ok(Some(frame)) = decode_frame(&mut buf, DEFAULT_MAX_MESSAGE) {
                        if let Ok(msg) = FrontendMessage::decode(&frame) {
                            msg.encode(&mut out);
                        }
                    }
                    assert_eq!(out.len(), wire.len(), "re-encoding changed the frames");
                    black_box(out.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_split, bench_datarow, bench_query);
criterion_main!(benches);
