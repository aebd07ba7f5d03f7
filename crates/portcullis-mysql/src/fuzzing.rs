//! Entry points for the fuzz targets (`fuzz/fuzz_targets/mysql_*.rs`): the decoders the
//! gateway runs on bytes either side sends. Not a stable API.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use portcullis_core::{CommandView, RewriteEvent};

use crate::command::Prepareds;
use crate::event::{Columns, MyEvent, err_fields};
use crate::packet::decode_packet;

/// What a client sends: packets, each built into a command unit (with one statement
/// prepared, so executes decode their parameters).
pub fn client_bytes(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut prepared = Prepareds::default();
    prepared.prepared(1, Arc::from("select ?, ?, ?"), 3);
    while let Ok(Some(p)) = decode_packet(&mut buf, 1 << 20) {
        if let Ok(cmd) = prepared.command(p.payload) {
            let _ = cmd.statements();
            let _ = cmd.params();
        }
    }
}

/// What a database sends: the first packets as column definitions, the rest as rows of
/// them (text, then binary); a row that reads must rebuild to the same values.
pub fn server_bytes(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(rest);
    let mut packets = Vec::new();
    while let Ok(Some(p)) = decode_packet(&mut buf, 1 << 20) {
        packets.push(p.payload);
    }
    let defs = usize::from(split % 8).min(packets.len());
    let (defs, rows): (&[Bytes], &[Bytes]) = packets.split_at(defs);
    for extended in [false, true] {
        for binary in [false, true] {
            let Some(columns) = Columns::parse(defs, binary, extended) else {
                continue;
            };
            let columns = Arc::new(columns);
            for row in rows {
                let _ = err_fields(row);
                let event = MyEvent::row(row.clone(), columns.clone());
                let Some(values) = event.row_values() else {
                    continue;
                };
                if values.is_empty() {
                    continue;
                }
                let owned: Vec<Option<Cow<'_, [u8]>>> =
                    values.iter().map(|v| v.map(Cow::Borrowed)).collect();
                if let Some(rebuilt) = event.with_row_values(&owned) {
                    assert_eq!(rebuilt.row_values(), Some(values.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::packet::{encode_packet, put_lenenc_str};

    /// Found by `cargo fuzz run mysql_server`: a binary row value whose length-encoded
    /// length is 2^64 - 1 overflowed the offset arithmetic (a panic, not an error).
    #[test]
    fn a_binary_value_with_a_huge_length_is_refused_not_a_panic() {
        let mut data = vec![
            65, 17, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 41, 0, 7, 7, 15, 7, 7, 253, 248, 14, 0, 0, 0,
            0, 2, 254,
        ];
        data.extend(std::iter::repeat_n(0xff, 123));
        data.extend([38, 14, 255, 36, 0, 249, 1, 0]);
        super::server_bytes(&data);
    }

    proptest! {
        #[test]
        fn any_client_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            client_bytes(&data);
        }

        #[test]
        fn any_server_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            server_bytes(&data);
        }

        /// Well-formed packets of random values: text rows round-trip.
        #[test]
        fn framed_rows(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6)) {
            let mut wire = BytesMut::new();
            let def = {
                let mut d = Vec::new();
                for s in ["def", "app", "t", "t", "c", "c"] {
                    put_lenenc_str(&mut d, s.as_bytes());
                }
                d.extend_from_slice(&[0x0c, 45, 0, 255, 0, 0, 0, 253, 0, 0, 0, 0, 0]);
                d
            };
            for _ in &values {
                encode_packet(0, &def, &mut wire);
            }
            let mut row = Vec::new();
            for v in &values {
                put_lenenc_str(&mut row, v);
            }
            encode_packet(0, &row, &mut wire);
            let mut data = vec![values.len() as u8];
            data.extend_from_slice(&wire);
            server_bytes(&data);
        }
    }
}
