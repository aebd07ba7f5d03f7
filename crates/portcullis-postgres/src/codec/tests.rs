use super::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn cstring() -> impl Strategy<Value = Bytes> {
    vec(1u8..=255, 0..24).prop_map(Bytes::from)
}
fn value() -> impl Strategy<Value = Option<Bytes>> {
    proptest::option::of(vec(any::<u8>(), 0..32).prop_map(Bytes::from))
}
fn target() -> impl Strategy<Value = u8> {
    prop_oneof![Just(b'S'), Just(b'P')]
}

fn frontend() -> impl Strategy<Value = FrontendMessage> {
    prop_oneof![
        cstring().prop_map(|sql| FrontendMessage::Query { sql }),
        (cstring(), cstring(), vec(any::<u32>(), 0..4)).prop_map(|(name, query, param_types)| {
            FrontendMessage::Parse {
                name,
                query,
                param_types,
            }
        }),
        (
            cstring(),
            cstring(),
            vec(0i16..2, 0..4),
            vec(value(), 0..4),
            vec(0i16..2, 0..4)
        )
            .prop_map(
                |(portal, statement, param_formats, params, result_formats)| {
                    FrontendMessage::Bind {
                        portal,
                        statement,
                        param_formats,
                        params,
                        result_formats,
                    }
                }
            ),
        (target(), cstring()).prop_map(|(target, name)| FrontendMessage::Describe { target, name }),
        (target(), cstring()).prop_map(|(target, name)| FrontendMessage::Close { target, name }),
        (cstring(), any::<i32>())
            .prop_map(|(portal, max_rows)| FrontendMessage::Execute { portal, max_rows }),
        Just(FrontendMessage::Sync),
        Just(FrontendMessage::Flush),
        vec(any::<u8>(), 0..64).prop_map(|d| FrontendMessage::CopyData(d.into())),
        Just(FrontendMessage::CopyDone),
        cstring().prop_map(|message| FrontendMessage::CopyFail { message }),
        (
            any::<u32>(),
            vec(0i16..2, 0..3),
            vec(value(), 0..3),
            0i16..2
        )
            .prop_map(|(oid, arg_formats, args, result_format)| {
                FrontendMessage::FunctionCall {
                    oid,
                    arg_formats,
                    args,
                    result_format,
                }
            }),
        Just(FrontendMessage::Terminate),
        vec(any::<u8>(), 0..40).prop_map(|d| FrontendMessage::Password(d.into())),
    ]
}

fn fields() -> impl Strategy<Value = Vec<(u8, Bytes)>> {
    vec((1u8..=255, cstring()), 0..5)
}

fn backend() -> impl Strategy<Value = BackendMessage> {
    let auth = prop_oneof![
        Just(AuthRequest::Ok),
        Just(AuthRequest::CleartextPassword),
        any::<[u8; 4]>().prop_map(|salt| AuthRequest::Md5Password { salt }),
        vec(vec(1u8..=255, 1..12).prop_map(Bytes::from), 0..3)
            .prop_map(|mechanisms| AuthRequest::Sasl { mechanisms }),
        vec(any::<u8>(), 0..30).prop_map(|d| AuthRequest::SaslContinue(d.into())),
        vec(any::<u8>(), 0..30).prop_map(|d| AuthRequest::SaslFinal(d.into())),
    ];
    prop_oneof![
        auth.prop_map(BackendMessage::Authentication),
        (any::<i32>(), any::<i32>())
            .prop_map(|(pid, key)| BackendMessage::BackendKeyData { pid, key }),
        (cstring(), cstring())
            .prop_map(|(name, value)| BackendMessage::ParameterStatus { name, value }),
        prop_oneof![Just(b'I'), Just(b'T'), Just(b'E')]
            .prop_map(|status| BackendMessage::ReadyForQuery { status }),
        fields().prop_map(|fields| BackendMessage::ErrorResponse { fields }),
        fields().prop_map(|fields| BackendMessage::NoticeResponse { fields }),
        (any::<i32>(), cstring(), cstring()).prop_map(|(pid, channel, payload)| {
            BackendMessage::NotificationResponse {
                pid,
                channel,
                payload,
            }
        }),
        cstring().prop_map(|tag| BackendMessage::CommandComplete { tag }),
        vec(any::<u8>(), 0..40).prop_map(|d| BackendMessage::RowDescription(d.into())),
        vec(value(), 0..6).prop_map(BackendMessage::DataRow),
        Just(BackendMessage::EmptyQueryResponse),
        Just(BackendMessage::ParseComplete),
        Just(BackendMessage::BindComplete),
        Just(BackendMessage::CloseComplete),
        Just(BackendMessage::NoData),
        Just(BackendMessage::PortalSuspended),
        vec(any::<u32>(), 0..4).prop_map(BackendMessage::ParameterDescription),
        (
            prop_oneof![Just(b'G'), Just(b'H'), Just(b'W')],
            0u8..2,
            vec(0i16..2, 0..4)
        )
            .prop_map(
                |(kind, format, column_formats)| BackendMessage::CopyResponse {
                    kind,
                    format,
                    column_formats,
                }
            ),
        vec(any::<u8>(), 0..40).prop_map(|d| BackendMessage::CopyData(d.into())),
        Just(BackendMessage::CopyDone),
        value().prop_map(BackendMessage::FunctionCallResponse),
        (any::<i32>(), vec(cstring(), 0..3)).prop_map(|(minor, options)| {
            BackendMessage::NegotiateProtocolVersion { minor, options }
        }),
    ]
}

fn split_all(mut buf: BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(f) = decode_frame(&mut buf, DEFAULT_MAX_MESSAGE).unwrap() {
        frames.push(f);
    }
    assert!(buf.is_empty());
    frames
}

/// Feed `stream` in pieces cut at `cuts` and collect the frames.
fn split_in_pieces(stream: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(stream.len());
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    for cut in cuts {
        buf.extend_from_slice(&stream[at..cut]);
        at = cut;
        while let Some(f) = decode_frame(&mut buf, DEFAULT_MAX_MESSAGE).unwrap() {
            frames.push(f);
        }
    }
    assert!(buf.is_empty());
    frames
}

proptest! {
    #[test]
    fn frontend_round_trip(msgs in vec(frontend(), 1..8)) {
        let mut buf = BytesMut::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        let decoded: Vec<_> = split_all(buf)
            .iter()
            .map(|f| FrontendMessage::decode(f).unwrap())
            .collect();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn backend_round_trip(msgs in vec(backend(), 1..8)) {
        let mut buf = BytesMut::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        let frames = split_all(buf);
        let decoded: Vec<_> = frames.iter().map(|f| BackendMessage::decode(f).unwrap()).collect();
        prop_assert_eq!(&decoded, &msgs);
        // Re-encoding a decoded frame gives the original bytes.
        for (f, m) in frames.iter().zip(&msgs) {
            let encoded = m.to_frame();
            prop_assert_eq!(f.as_bytes(), encoded.as_bytes());
        }
    }

    #[test]
    fn same_messages_for_any_split(
        msgs in vec(backend(), 1..10),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let mut buf = BytesMut::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        let stream = buf.freeze();
        let whole = split_all(BytesMut::from(&stream[..]));
        let pieces = split_in_pieces(&stream, &cuts);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn startup_round_trip(
        major in 2u16..4, minor in any::<u16>(),
        params in vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..6),
    ) {
        let p = StartupPacket::Startup { major, minor, params };
        let mut buf = BytesMut::new();
        p.encode(&mut buf);
        prop_assert_eq!(StartupPacket::decode(&mut buf).unwrap(), Some(p));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(f)) = decode_frame(&mut buf, 1 << 16) {
            let _ = FrontendMessage::decode(&f);
            let _ = BackendMessage::decode(&f);
        }
        let mut buf = BytesMut::from(&data[..]);
        let _ = StartupPacket::decode(&mut buf);
    }
}

#[test]
fn huge_claimed_length_is_refused_before_allocating() {
    let mut buf = BytesMut::new();
    buf.put_u8(b'Q');
    buf.put_i32(1 << 30);
    let err = decode_frame(&mut buf, DEFAULT_MAX_MESSAGE).unwrap_err();
    assert!(matches!(err, CodecError::TooLong { .. }), "{err}");
    assert!(buf.capacity() < 1 << 20);
}

#[test]
fn short_lengths_are_refused() {
    let mut buf = BytesMut::from(&b"Q\0\0\0\x02"[..]);
    assert_eq!(decode_frame(&mut buf, 100), Err(CodecError::BadLength(2)));
    let mut buf = BytesMut::from(&b"\0\0\0\x04"[..]);
    assert_eq!(
        StartupPacket::decode(&mut buf),
        Err(CodecError::BadLength(4))
    );
}

#[test]
fn counts_larger_than_the_body_are_refused() {
    // A DataRow that claims 30000 columns in a 2-byte body.
    let mut buf = BytesMut::new();
    buf.put_u8(b'D');
    buf.put_i32(6);
    buf.put_i16(30000);
    let f = decode_frame(&mut buf, 1024).unwrap().unwrap();
    assert!(matches!(
        BackendMessage::decode(&f),
        Err(CodecError::Malformed { .. })
    ));
}

#[test]
fn response_fields_are_found() {
    let m = error_message(Severity::Error, "42501", "blocked");
    let f = m.to_frame();
    assert_eq!(response_field(f.body(), b'C'), Some(&b"42501"[..]));
    assert_eq!(response_field(f.body(), b'M'), Some(&b"blocked"[..]));
    assert_eq!(response_field(f.body(), b'D'), None);
}
