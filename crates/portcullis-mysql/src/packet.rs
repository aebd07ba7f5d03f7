//! MySQL packets on the wire: a 3-byte little-endian length, a sequence id, the payload. A
//! payload of 16 MiB − 1 bytes or more travels in several chunks (the last one shorter, empty
//! if need be); [`decode_packet`] joins them and [`encode_packet`] splits them (both with
//! `mysql_common`'s chunk codec).
//!
//! The gateway renumbers what it sends: the sequence ids of a reply it forwards continue the
//! client's command, whatever the database numbered, so a rewritten (masked) row that needs a
//! different number of chunks never desynchronises the client.

use bytes::{Bytes, BytesMut};
use mysql_common::proto::codec::{ChunkDecoder, ChunkInfo, packet_to_chunks};

/// Largest payload of one chunk.
pub const MAX_CHUNK: usize = 0x00ff_ffff;

/// Default largest logical packet accepted from either side (64 MiB).
pub const DEFAULT_MAX_PACKET: usize = 64 * 1024 * 1024;

/// One logical packet: the sequence id of its first chunk and its whole payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id (of the first chunk).
    pub seq: u8,
    /// Sequence id of the last chunk (`seq` for a packet of one chunk): the reply to it
    /// continues from `last_seq + 1`.
    pub last_seq: u8,
    /// The payload, chunks joined.
    pub payload: Bytes,
}

/// A packet that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Larger than the limit.
    #[error("packet of at least {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Bytes announced so far.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The chunk decoder refused the input.
    #[error("invalid packet: {0}")]
    Invalid(String),
}

/// Cut one logical packet off the front of `src`, or `None` when it is not complete yet.
/// Nothing is consumed until the whole packet is there; the size is checked from the chunk
/// headers before any payload is buffered beyond `max`.
pub fn decode_packet(src: &mut BytesMut, max: usize) -> Result<Option<Packet>, PacketError> {
    // Walk the chunk headers first: is the whole packet here, and how large is it?
    let mut at = 0usize;
    let mut total = 0usize;
    let mut chunks = 0usize;
    loop {
        let Some(header) = src.get(at..at + 4) else {
            return Ok(None);
        };
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        total += len;
        if total > max {
            return Err(PacketError::TooLarge { len: total, max });
        }
        chunks += 1;
        if src.len() < at + 4 + len {
            return Ok(None);
        }
        at += 4 + len;
        if len < MAX_CHUNK {
            break;
        }
    }
    let seq = src[3];
    if chunks == 1 {
        let mut whole = src.split_to(at);
        let _ = whole.split_to(4);
        return Ok(Some(Packet {
            seq,
            last_seq: seq,
            payload: whole.freeze(),
        }));
    }
    let mut decoder = ChunkDecoder::default();
    let mut payload = BytesMut::with_capacity(total);
    loop {
        match decoder.decode(src, &mut payload, max) {
            Ok(Some(ChunkInfo::Last(_))) => break,
            Ok(Some(ChunkInfo::Middle(_))) => {}
            Ok(None) => {
                return Err(PacketError::Invalid(
                    "a chunk ended before its announced length".into(),
                ));
            }
            Err(e) => return Err(PacketError::Invalid(e.to_string())),
        }
    }
    Ok(Some(Packet {
        seq,
        last_seq: seq.wrapping_add((chunks - 1) as u8),
        payload: payload.freeze(),
    }))
}

/// Append `payload` as a packet (chunks numbered from `seq`) to `dst`; returns the next
/// sequence id.
pub fn encode_packet(seq: u8, payload: &[u8], dst: &mut BytesMut) -> u8 {
    let mut buf = payload;
    packet_to_chunks(seq, &mut buf, dst)
}

/// Why a packet could not be read from a stream.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream failed or ended (`UnexpectedEof`).
    Io(std::io::Error),
    /// The bytes are not a packet within the limit.
    Packet(PacketError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => e.fmt(f),
            ReadError::Packet(e) => e.fmt(f),
        }
    }
}

/// Read the next packet from `io`, buffering in `rbuf` (what follows the packet stays there).
pub(crate) async fn read_packet(
    io: &mut crate::BoxIo,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Packet, ReadError> {
    use tokio::io::AsyncReadExt;
    loop {
        match decode_packet(rbuf, max) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(ReadError::Packet(e)),
        }
        rbuf.reserve(8192);
        if io.read_buf(rbuf).await.map_err(ReadError::Io)? == 0 {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Append a length-encoded integer.
pub(crate) fn put_lenenc_int(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Append a length-encoded string.
pub(crate) fn put_lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Read a length-encoded integer at the front of `buf`, advancing it.
pub(crate) fn lenenc_int(buf: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = buf.split_first()?;
    let (n, used) = match first {
        0..=250 => (u64::from(first), 0),
        0xfc => (
            u64::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?)),
            2,
        ),
        0xfd => {
            let b = rest.get(..3)?;
            (
                u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16,
                3,
            )
        }
        0xfe => (u64::from_le_bytes(rest.get(..8)?.try_into().ok()?), 8),
        _ => return None,
    };
    *buf = &rest[used..];
    Some(n)
}

/// Read a length-encoded string at the front of `buf`, advancing it.
pub(crate) fn lenenc_str<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut rest = *buf;
    let len = usize::try_from(lenenc_int(&mut rest)?).ok()?;
    let s = rest.get(..len)?;
    *buf = &rest[len..];
    Some(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn small_packets_round_trip() {
        let mut wire = BytesMut::new();
        assert_eq!(encode_packet(3, b"\x03select 1", &mut wire), 4);
        encode_packet(4, b"", &mut wire);
        let p = decode_packet(&mut wire, 1024).unwrap().unwrap();
        assert_eq!((p.seq, &p.payload[..]), (3, &b"\x03select 1"[..]));
        let p = decode_packet(&mut wire, 1024).unwrap().unwrap();
        assert_eq!((p.seq, p.payload.len()), (4, 0));
        assert!(decode_packet(&mut wire, 1024).unwrap().is_none());
    }

    #[test]
    fn large_packets_are_split_and_joined() {
        for len in [MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, 2 * MAX_CHUNK] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = BytesMut::new();
            let next = encode_packet(0, &payload, &mut wire);
            assert_eq!(usize::from(next), len / MAX_CHUNK + 1, "len {len}");
            // Incomplete input is not consumed.
            let mut partial = BytesMut::from(&wire[..wire.len() - 1]);
            assert!(decode_packet(&mut partial, usize::MAX).unwrap().is_none());
            assert_eq!(partial.len(), wire.len() - 1);
            let p = decode_packet(&mut wire, usize::MAX).unwrap().unwrap();
            assert_eq!(p.payload.len(), len);
            // The reply continues after the last chunk's sequence id (a client that split
            // its statement expects the answer numbered after its last chunk).
            assert_eq!((p.seq, p.last_seq.wrapping_add(1)), (0, next), "len {len}");
            assert!(p.payload[..] == payload[..]);
            assert!(wire.is_empty());
        }
    }

    #[test]
    fn the_limit_is_checked_from_the_headers() {
        let mut wire = BytesMut::from(&[0xff, 0xff, 0xff, 0][..]);
        assert_eq!(
            decode_packet(&mut wire, 1000),
            Err(PacketError::TooLarge {
                len: MAX_CHUNK,
                max: 1000
            })
        );
    }

    #[test]
    fn lenenc_round_trip() {
        for n in [
            0u64,
            250,
            251,
            65535,
            65536,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, n);
            let mut buf = &out[..];
            assert_eq!(lenenc_int(&mut buf), Some(n));
            assert!(buf.is_empty());
        }
        let mut bad: &[u8] = &[0xfc, 1];
        assert_eq!(lenenc_int(&mut bad), None);
        let mut null: &[u8] = &[0xfb];
        assert_eq!(lenenc_int(&mut null), None);
    }
}
