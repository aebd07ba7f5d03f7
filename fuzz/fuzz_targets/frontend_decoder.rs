//! Client bytes after startup: split frames with a 1 MiB limit, decode each as a
//! `FrontendMessage`; a message that decodes must encode back to exactly its frame's bytes.
//! Any input may be refused with an error; none may panic, hang or allocate past the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_postgres::codec::{FrontendMessage, decode_frame};

const LIMIT: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut out = BytesMut::new();
    while let Ok(Some(frame)) = decode_frame(&mut buf, LIMIT) {
        assert!(frame.as_bytes().len() <= LIMIT + 1, "frame over the limit");
        if let Ok(msg) = FrontendMessage::decode(&frame) {
            out.clear();
            msg.encode(&mut out);
            assert_eq!(
                &out[..],
                &frame.as_bytes()[..],
                "re-encoding {msg:?} changed the bytes"
            );
        }
    }
});
