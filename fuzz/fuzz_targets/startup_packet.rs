//! Bytes a client sends first: decode startup packets (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage) one after another; a packet that decodes must encode back to
//! exactly the bytes it was decoded from. Any input may be refused; none may panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_postgres::codec::StartupPacket;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut out = BytesMut::new();
    loop {
        let start = data.len() - buf.len();
        match StartupPacket::decode(&mut buf) {
            Ok(Some(packet)) => {
                let end = data.len() - buf.len();
                out.clear();
                packet.encode(&mut out);
                assert_eq!(
                    &out[..],
                    &data[start..end],
                    "re-encoding {packet:?} changed the bytes"
                );
            }
            Ok(None) | Err(_) => break,
        }
    }
});
