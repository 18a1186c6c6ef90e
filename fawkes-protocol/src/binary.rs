//! V2 binary frames (PROTOCOL §2.3), in both directions: client pushes
//! (decoded by a server, encoded by a client) and server pushes, replies and
//! broadcasts (encoded by a server, decoded by a client).
//!
//! A frame is a kind byte, one length byte per string field, the fields, and
//! then the payload, which runs to the end of the frame. Length bytes limit
//! every field to 255 bytes of UTF-8. A null ref or join ref is an empty
//! field.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::Value;

use crate::{DecodeError, EncodeError, Message, Payload, Ref, Reply, ServerMessage};

/// Kind byte of a push: client to server with five length bytes, server to
/// client with four (no ref).
const PUSH: u8 = 0;
/// Kind byte of a server reply; the event is implicitly `phx_reply`.
const REPLY: u8 = 1;
/// Kind byte of a server broadcast, which carries no refs.
const BROADCAST: u8 = 2;

/// Decodes a client push (kind 0, five-byte header).
///
/// The payload is a slice of `frame`, so no payload bytes are copied.
pub(crate) fn decode_push(frame: Bytes) -> Result<Message, DecodeError> {
    let &kind = frame.first().ok_or(DecodeError::Truncated)?;
    if kind != PUSH {
        // Clients send only kind 0; kinds 1 and 2 exist server to client only.
        return Err(DecodeError::UnknownKind(kind));
    }
    let ([join_ref, ref_, topic, event], payload_start) =
        read_fields(&frame, ["join_ref", "ref", "topic", "event"])?;
    Ok(Message {
        join_ref: decode_ref(join_ref),
        ref_: decode_ref(ref_),
        topic: topic.to_owned(),
        event: event.to_owned(),
        payload: Payload::Binary(frame.slice(payload_start..)),
    })
}

/// Decodes a server frame: a push (kind 0, four-byte header, no ref), a
/// reply (kind 1) or a broadcast (kind 2, no refs).
///
/// The payload is a slice of `frame`, so no payload bytes are copied.
pub(crate) fn decode_server(frame: Bytes) -> Result<ServerMessage, DecodeError> {
    let &kind = frame.first().ok_or(DecodeError::Truncated)?;
    match kind {
        PUSH => {
            let ([join_ref, topic, event], start) =
                read_fields(&frame, ["join_ref", "topic", "event"])?;
            Ok(ServerMessage::Message(Message {
                join_ref: decode_ref(join_ref),
                ref_: None,
                topic: topic.to_owned(),
                event: event.to_owned(),
                payload: Payload::Binary(frame.slice(start..)),
            }))
        }
        REPLY => {
            let ([join_ref, ref_, topic, status], start) =
                read_fields(&frame, ["join_ref", "ref", "topic", "status"])?;
            Ok(ServerMessage::Reply(Reply {
                join_ref: decode_ref(join_ref),
                ref_: decode_ref(ref_),
                topic: topic.to_owned(),
                status: status.to_owned(),
                response: Payload::Binary(frame.slice(start..)),
            }))
        }
        BROADCAST => {
            let ([topic, event], start) = read_fields(&frame, ["topic", "event"])?;
            Ok(ServerMessage::Message(Message {
                join_ref: None,
                ref_: None,
                topic: topic.to_owned(),
                event: event.to_owned(),
                payload: Payload::Binary(frame.slice(start..)),
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Reads the `N` string fields after the kind byte of `frame`, named
/// `names` for errors; returns them and where the payload starts.
fn read_fields<'a, const N: usize>(
    frame: &'a [u8],
    names: [&'static str; N],
) -> Result<([&'a str; N], usize), DecodeError> {
    let header_len = 1 + N;
    let lens = frame.get(1..header_len).ok_or(DecodeError::Truncated)?;
    let payload_start = header_len + lens.iter().map(|&l| usize::from(l)).sum::<usize>();
    // Truncation is checked before any UTF-8, so a short frame is always
    // reported as such, whichever field it cuts.
    if payload_start > frame.len() {
        return Err(DecodeError::Truncated);
    }
    let mut rest = &frame[header_len..payload_start];
    let mut strs = [""; N];
    for ((slot, &len), name) in strs.iter_mut().zip(lens).zip(names) {
        let (field, tail) = rest
            .split_at_checked(usize::from(len))
            .ok_or(DecodeError::Truncated)?;
        rest = tail;
        *slot = std::str::from_utf8(field).map_err(|_| DecodeError::InvalidUtf8(name))?;
    }
    Ok((strs, payload_start))
}

/// An empty ref field is a null ref (phoenix.js treats `""` like null).
fn decode_ref(field: &str) -> Option<Ref> {
    (!field.is_empty()).then(|| Value::String(field.to_owned()))
}

/// Encodes a server push (kind 0, four-byte header, no ref).
pub(crate) fn encode_push(
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<Bytes, EncodeError> {
    let join_ref = ref_text(join_ref);
    encode(
        PUSH,
        &[("join_ref", &join_ref), ("topic", topic), ("event", event)],
        payload,
    )
}

/// Encodes a server reply (kind 1): the status takes the place of the event.
pub(crate) fn encode_reply(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    response: &[u8],
) -> Result<Bytes, EncodeError> {
    encode_with_refs(REPLY, join_ref, ref_, topic, ("status", status), response)
}

/// Encodes a server broadcast (kind 2, no refs).
pub(crate) fn encode_broadcast(
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<Bytes, EncodeError> {
    encode(BROADCAST, &[("topic", topic), ("event", event)], payload)
}

/// The text a ref is written as in a binary frame.
///
/// Binary fields hold strings only: a string ref is written as its contents,
/// any other value as its JSON text (`9` → `"9"`), and null as empty.
fn ref_text(r: Option<&Ref>) -> Cow<'_, str> {
    match r {
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

/// Writes a frame: kind, one length byte per field, the fields, the payload.
///
/// Every length is checked before anything is written.
fn encode(kind: u8, fields: &[(&'static str, &str)], payload: &[u8]) -> Result<Bytes, EncodeError> {
    let mut strings_len = 0;
    for &(field, value) in fields {
        if u8::try_from(value.len()).is_err() {
            return Err(EncodeError::FieldTooLong {
                field,
                len: value.len(),
            });
        }
        strings_len += value.len();
    }
    let mut buf = Vec::with_capacity(1 + fields.len() + strings_len + payload.len());
    buf.push(kind);
    // Lengths were checked above, so the casts cannot truncate.
    buf.extend(fields.iter().map(|(_, value)| value.len() as u8));
    for (_, value) in fields {
        buf.extend_from_slice(value.as_bytes());
    }
    buf.extend_from_slice(payload);
    Ok(Bytes::from(buf))
}

/// Encodes a client push (kind 0, five-byte header), as phoenix.js does.
pub(crate) fn encode_client_push(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<Bytes, EncodeError> {
    encode_with_refs(PUSH, join_ref, ref_, topic, ("event", event), payload)
}

/// Writes a frame with both refs (a reply, a client push): join_ref, ref,
/// topic, then `last` (a reply's status, a push's event).
fn encode_with_refs(
    kind: u8,
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    last: (&'static str, &str),
    payload: &[u8],
) -> Result<Bytes, EncodeError> {
    let join_ref = ref_text(join_ref);
    let ref_ = ref_text(ref_);
    encode(
        kind,
        &[
            ("join_ref", &join_ref),
            ("ref", &ref_),
            ("topic", topic),
            last,
        ],
        payload,
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::test_support::field;

    /// PROTOCOL §2.3 client push: join_ref "3", ref "9", topic "room:lobby",
    /// event "binary", payload "hello".
    const CLIENT_PUSH: &[u8] = &[
        0x00, 0x01, 0x01, 0x0A, 0x06, 0x33, 0x39, 0x72, 0x6F, 0x6F, 0x6D, 0x3A, 0x6C, 0x6F, 0x62,
        0x62, 0x79, 0x62, 0x69, 0x6E, 0x61, 0x72, 0x79, 0x68, 0x65, 0x6C, 0x6C, 0x6F,
    ];
    /// PROTOCOL §2.3 reply: status "ok", payload "hello world".
    const REPLY_FRAME: &[u8] = &[
        0x01, 0x01, 0x01, 0x0A, 0x02, 0x33, 0x39, 0x72, 0x6F, 0x6F, 0x6D, 0x3A, 0x6C, 0x6F, 0x62,
        0x62, 0x79, 0x6F, 0x6B, 0x68, 0x65, 0x6C, 0x6C, 0x6F, 0x20, 0x77, 0x6F, 0x72, 0x6C, 0x64,
    ];
    /// PROTOCOL §2.3 server push: join_ref "3", event "blob", payload 00 01.
    const SERVER_PUSH: &[u8] = &[
        0x00, 0x01, 0x0A, 0x04, 0x33, 0x72, 0x6F, 0x6F, 0x6D, 0x3A, 0x6C, 0x6F, 0x62, 0x62, 0x79,
        0x62, 0x6C, 0x6F, 0x62, 0x00, 0x01,
    ];
    /// PROTOCOL §2.3 broadcast: event "blob", payload 00 01.
    const BROADCAST_FRAME: &[u8] = &[
        0x02, 0x0A, 0x04, 0x72, 0x6F, 0x6F, 0x6D, 0x3A, 0x6C, 0x6F, 0x62, 0x62, 0x79, 0x62, 0x6C,
        0x6F, 0x62, 0x00, 0x01,
    ];
    /// Where the payload starts in [`CLIENT_PUSH`].
    const CLIENT_PUSH_PAYLOAD: usize = 23;

    fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        decode_push(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn worked_examples_have_their_stated_lengths() {
        assert_eq!(CLIENT_PUSH.len(), 28);
        assert_eq!(REPLY_FRAME.len(), 30);
        assert_eq!(SERVER_PUSH.len(), 21);
        assert_eq!(BROADCAST_FRAME.len(), 19);
    }

    #[test]
    fn decodes_the_worked_client_push() {
        let msg = decode(CLIENT_PUSH).unwrap();
        assert_eq!(msg.join_ref, Some(json!("3")));
        assert_eq!(msg.ref_, Some(json!("9")));
        assert_eq!(msg.topic, "room:lobby");
        assert_eq!(msg.event, "binary");
        assert_eq!(msg.payload, Payload::Binary(Bytes::from_static(b"hello")));
    }

    #[test]
    fn decoded_payload_is_a_slice_of_the_frame() {
        let frame = Bytes::from_static(CLIENT_PUSH);
        let msg = decode_push(frame.clone()).unwrap();
        let payload = msg.payload.as_binary().unwrap();
        assert_eq!(payload.as_ptr(), frame[CLIENT_PUSH_PAYLOAD..].as_ptr());
    }

    #[test]
    fn encodes_the_worked_reply() {
        let frame = encode_reply(
            Some(&json!("3")),
            Some(&json!("9")),
            "room:lobby",
            "ok",
            b"hello world",
        )
        .unwrap();
        assert_eq!(&frame[..], REPLY_FRAME);
    }

    #[test]
    fn encodes_the_worked_server_push() {
        let frame = encode_push(Some(&json!("3")), "room:lobby", "blob", &[0, 1]).unwrap();
        assert_eq!(&frame[..], SERVER_PUSH);
    }

    #[test]
    fn encodes_the_worked_broadcast() {
        let frame = encode_broadcast("room:lobby", "blob", &[0, 1]).unwrap();
        assert_eq!(&frame[..], BROADCAST_FRAME);
    }

    #[test]
    fn encodes_the_worked_client_push() {
        let frame = encode_client_push(
            Some(&json!("3")),
            Some(&json!("9")),
            "room:lobby",
            "binary",
            b"hello",
        )
        .unwrap();
        assert_eq!(&frame[..], CLIENT_PUSH);
    }

    #[test]
    fn empty_frame_is_truncated() {
        assert!(matches!(decode(&[]), Err(DecodeError::Truncated)));
    }

    #[test]
    fn every_cut_through_the_header_or_fields_is_truncated() {
        for len in 0..CLIENT_PUSH_PAYLOAD {
            let err = decode(&CLIENT_PUSH[..len]).unwrap_err();
            assert!(matches!(err, DecodeError::Truncated), "len {len}: {err:?}");
        }
    }

    #[test]
    fn every_cut_through_the_payload_shortens_the_payload() {
        for len in CLIENT_PUSH_PAYLOAD..=CLIENT_PUSH.len() {
            let msg = decode(&CLIENT_PUSH[..len]).unwrap();
            assert_eq!(msg.topic, "room:lobby");
            assert_eq!(
                msg.payload.as_binary().unwrap(),
                &b"hello"[..len - CLIENT_PUSH_PAYLOAD]
            );
        }
    }

    #[test]
    fn header_lengths_past_the_end_are_truncated() {
        assert!(matches!(
            decode(&[0, 0, 0, 0, 1]),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            decode(&[0, 255, 255, 255, 255, b'a']),
            Err(DecodeError::Truncated)
        ));
    }

    #[test]
    fn kinds_other_than_client_push_are_unknown() {
        for kind in [1, 2, 3, 255] {
            let mut frame = CLIENT_PUSH.to_vec();
            frame[0] = kind;
            assert!(matches!(decode(&frame), Err(DecodeError::UnknownKind(k)) if k == kind));
            assert!(matches!(decode(&[kind]), Err(DecodeError::UnknownKind(k)) if k == kind));
        }
        // Server frames echoed back by a client are not pushes either.
        assert!(matches!(
            decode(REPLY_FRAME),
            Err(DecodeError::UnknownKind(1))
        ));
        assert!(matches!(
            decode(BROADCAST_FRAME),
            Err(DecodeError::UnknownKind(2))
        ));
    }

    #[test]
    fn invalid_utf8_is_reported_per_field() {
        // Offsets of the first byte of join_ref, ref, topic and event.
        for (offset, field) in [(5, "join_ref"), (6, "ref"), (7, "topic"), (17, "event")] {
            let mut frame = CLIENT_PUSH.to_vec();
            frame[offset] = 0xFF;
            let err = decode(&frame).unwrap_err();
            assert!(
                matches!(err, DecodeError::InvalidUtf8(f) if f == field),
                "{field}: {err:?}"
            );
        }
    }

    #[test]
    fn payload_need_not_be_utf8() {
        let mut frame = CLIENT_PUSH.to_vec();
        frame.extend_from_slice(&[0xFF, 0xFE]);
        let msg = decode(&frame).unwrap();
        assert_eq!(msg.payload.as_binary().unwrap(), &b"hello\xFF\xFE"[..]);
    }

    #[test]
    fn empty_refs_decode_as_none_and_empty_payload_is_allowed() {
        let frame = [0, 0, 0, 1, 1, b't', b'e'];
        let msg = decode(&frame).unwrap();
        assert_eq!(msg.join_ref, None);
        assert_eq!(msg.ref_, None);
        assert_eq!(msg.topic, "t");
        assert_eq!(msg.event, "e");
        assert_eq!(msg.payload, Payload::Binary(Bytes::new()));
    }

    #[test]
    fn refs_are_written_as_text() {
        // A string ref is its contents, a number its JSON text, null empty.
        let frame = encode_reply(Some(&json!(3)), Some(&json!("9")), "t", "ok", b"").unwrap();
        assert_eq!(&frame[..], b"\x01\x01\x01\x01\x0239tok");
        let frame = encode_reply(None, Some(&json!(9)), "t", "ok", b"").unwrap();
        assert_eq!(&frame[..], b"\x01\x00\x01\x01\x029tok");
        let frame = encode_push(Some(&Value::Null), "t", "e", b"").unwrap();
        assert_eq!(&frame[..], b"\x00\x00\x01\x01te");
        let frame = encode_push(None, "t", "e", b"x").unwrap();
        assert_eq!(&frame[..], b"\x00\x00\x01\x01tex");
    }

    #[test]
    fn lengths_count_utf8_bytes() {
        // PROTOCOL checklist 21: `room:café` is 10 bytes, not 9 characters.
        let frame = encode_broadcast("room:café", "e", b"").unwrap();
        assert_eq!(frame[1], 10);
    }

    #[test]
    fn fields_of_255_bytes_fit_and_256_do_not() {
        let ok = "a".repeat(255);
        let long = "a".repeat(256);
        let frame = encode_client_push(Some(&json!(ok)), Some(&json!(ok)), &ok, &ok, b"p").unwrap();
        let msg = decode_push(frame).unwrap();
        assert_eq!(msg.topic, ok);
        assert_eq!(msg.event, ok);
        assert_eq!(msg.payload.as_binary().unwrap(), &b"p"[..]);

        encode_push(Some(&json!(ok)), &ok, &ok, b"").unwrap();
        encode_reply(Some(&json!(ok)), Some(&json!(ok)), &ok, &ok, b"").unwrap();
        encode_broadcast(&ok, &ok, b"").unwrap();

        let too_long = |field| EncodeError::FieldTooLong { field, len: 256 };
        let j = json!(long);
        assert_eq!(
            encode_push(Some(&j), "t", "e", b""),
            Err(too_long("join_ref"))
        );
        assert_eq!(encode_push(None, &long, "e", b""), Err(too_long("topic")));
        assert_eq!(encode_push(None, "t", &long, b""), Err(too_long("event")));
        assert_eq!(
            encode_reply(Some(&j), None, "t", "ok", b""),
            Err(too_long("join_ref"))
        );
        assert_eq!(
            encode_reply(None, Some(&j), "t", "ok", b""),
            Err(too_long("ref"))
        );
        assert_eq!(
            encode_reply(None, None, &long, "ok", b""),
            Err(too_long("topic"))
        );
        assert_eq!(
            encode_reply(None, None, "t", &long, b""),
            Err(too_long("status"))
        );
        assert_eq!(encode_broadcast(&long, "e", b""), Err(too_long("topic")));
        assert_eq!(encode_broadcast("t", &long, b""), Err(too_long("event")));
        // 128 two-byte characters are 256 bytes.
        assert_eq!(
            encode_broadcast(&"é".repeat(128), "e", b""),
            Err(too_long("topic"))
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn random_pushes_never_panic(
            lens in proptest::array::uniform4(any::<u8>()),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut frame = vec![PUSH];
            frame.extend_from_slice(&lens);
            frame.extend_from_slice(&body);
            let _ = decode(&frame);
        }

        #[test]
        fn client_pushes_round_trip(
            join_ref in field(),
            ref_ in field(),
            topic in field(),
            event in field(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let join_ref = (!join_ref.is_empty()).then_some(Value::String(join_ref));
            let ref_ = (!ref_.is_empty()).then_some(Value::String(ref_));
            let frame =
                encode_client_push(join_ref.as_ref(), ref_.as_ref(), &topic, &event, &payload)
                    .unwrap();
            let msg = decode_push(frame).unwrap();
            prop_assert_eq!(msg, Message {
                join_ref,
                ref_,
                topic,
                event,
                payload: Payload::Binary(Bytes::from(payload)),
            });
        }
    }
}
