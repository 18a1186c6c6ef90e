//! The client's direction of the wire: encoding client messages, decoding
//! server frames. It mirrors the server's direction in `serializer`, so a
//! client (a Rust client, a load tool, a test) never writes frame bytes
//! itself.
//!
//! The forms differ by direction (PROTOCOL §2): a V1 client sends
//! `join_ref`, which a V1 server never does; a client binary push has a ref
//! and a five-byte header, a server push has neither; replies (kind 1) and
//! broadcasts (kind 2) exist only from server to client.

use bytes::Bytes;
use serde_json::Value;

use crate::serializer::{write_ref, write_str, write_value};
use crate::{
    DecodeError, EncodeError, Frame, Message, Payload, Reply, Serializer, ServerMessage, binary,
    events,
};

impl Serializer {
    /// Encodes a client message, as phoenix.js does (binary: kind 0 with a
    /// five-byte header).
    ///
    /// * V1: the object `{"topic","event","payload","ref","join_ref"}`, with
    ///   `join_ref` always written (`null` when `None`) so that a server
    ///   can drop messages of a stale join.
    /// * V2: the array `[join_ref, ref, topic, event, payload]` for a JSON
    ///   payload, a binary frame for a binary one. Binary fields hold text
    ///   only: a string ref is written as its contents, another JSON value
    ///   as its JSON text (`9` → `"9"`), `None` as an empty field.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use fawkes_protocol::{Frame, Message, Payload, Serializer};
    /// use serde_json::json;
    ///
    /// let push = Message {
    ///     join_ref: Some(json!("3")),
    ///     ref_: Some(json!("9")),
    ///     topic: "room:lobby".into(),
    ///     event: "binary".into(),
    ///     payload: Payload::Binary(Bytes::from_static(b"hello")),
    /// };
    /// let Frame::Binary(bytes) = Serializer::V2.encode_client(&push).unwrap() else {
    ///     unreachable!()
    /// };
    /// assert_eq!(&bytes[..], b"\x00\x01\x01\x0a\x0639room:lobbybinaryhello");
    ///
    /// let join = Message {
    ///     event: "phx_join".into(),
    ///     payload: Payload::empty(),
    ///     ..push
    /// };
    /// assert_eq!(
    ///     Serializer::V1.encode_client(&join).unwrap().to_bytes(),
    ///     &br#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"9","join_ref":"3"}"#[..]
    /// );
    /// ```
    ///
    /// # Errors
    ///
    /// A binary payload on V1, or a binary frame field over 255 bytes.
    pub fn encode_client(self, msg: &Message) -> Result<Frame, EncodeError> {
        match (self, &msg.payload) {
            (Serializer::V1, Payload::Json(payload)) => Ok(v1_client_text(msg, payload)),
            // The V2 array has the same shape in both directions.
            (Serializer::V2, Payload::Json(payload)) => Ok(self.text_frame(
                msg.join_ref.as_ref(),
                msg.ref_.as_ref(),
                &msg.topic,
                &msg.event,
                |buf| write_value(buf, payload),
            )),
            (Serializer::V1, Payload::Binary(_)) => Err(EncodeError::BinaryUnsupported),
            (Serializer::V2, Payload::Binary(payload)) => binary::encode_client_push(
                msg.join_ref.as_ref(),
                msg.ref_.as_ref(),
                &msg.topic,
                &msg.event,
                payload,
            )
            .map(Frame::Binary),
        }
    }

    /// Decodes a server text frame.
    ///
    /// A `phx_reply` whose payload is an object with a string `status` is a
    /// [`ServerMessage::Reply`]: its `response` becomes a JSON response
    /// (`null` when absent; other keys are ignored, as phoenix.js reads only
    /// these two). Anything else, including a `phx_reply` of another shape,
    /// is a [`ServerMessage::Message`] as sent. Refs are the JSON values
    /// sent; a V1 server sends no `join_ref`, so it is `None`.
    ///
    /// ```
    /// use fawkes_protocol::{Payload, Serializer, ServerMessage};
    /// use serde_json::json;
    ///
    /// let frame = r#"["3","7","room:lobby","phx_reply",{"status":"ok","response":{"n":1}}]"#;
    /// let ServerMessage::Reply(reply) = Serializer::V2.decode_server_text(frame).unwrap() else {
    ///     unreachable!()
    /// };
    /// assert_eq!((reply.ref_, reply.status.as_str()), (Some(json!("7")), "ok"));
    /// assert_eq!(reply.response, Payload::Json(json!({"n": 1})));
    ///
    /// let frame = r#"{"topic":"room:lobby","event":"new_msg","payload":{"body":"hi"},"ref":null}"#;
    /// let ServerMessage::Message(msg) = Serializer::V1.decode_server_text(frame).unwrap() else {
    ///     unreachable!()
    /// };
    /// assert_eq!((msg.join_ref, msg.event.as_str()), (None, "new_msg"));
    /// ```
    ///
    /// # Errors
    ///
    /// As [`decode_text`](Self::decode_text): invalid JSON, the wrong shape,
    /// a missing key, or a topic or event that is not a string.
    pub fn decode_server_text(self, text: &str) -> Result<ServerMessage, DecodeError> {
        // A server's text frame has the shape a client's has, less V1's
        // join_ref, which the client decoder already treats as optional.
        self.decode_text(text).map(lift_reply)
    }

    /// Decodes a server binary frame (V2 only): a push (kind 0, no ref), a
    /// reply (kind 1) or a broadcast (kind 2, no refs).
    ///
    /// A reply is a [`ServerMessage::Reply`] whose response is
    /// [`Payload::Binary`]; the others are [`ServerMessage::Message`]s with a
    /// binary payload. A payload is a slice of `frame`, not a copy. An empty
    /// ref field is `None`, any other a JSON string.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use fawkes_protocol::{Payload, Serializer, ServerMessage};
    /// use serde_json::json;
    ///
    /// let frame = Bytes::from_static(b"\x01\x01\x01\x0a\x0239room:lobbyokhello world");
    /// let ServerMessage::Reply(reply) = Serializer::V2.decode_server_binary(frame).unwrap() else {
    ///     unreachable!()
    /// };
    /// assert_eq!((reply.join_ref, reply.ref_), (Some(json!("3")), Some(json!("9"))));
    /// assert_eq!(reply.status, "ok");
    /// assert_eq!(reply.response, Payload::Binary(Bytes::from_static(b"hello world")));
    /// ```
    ///
    /// # Errors
    ///
    /// Any V1 frame; a first byte other than 0, 1 or 2; a header or fields
    /// longer than the frame; a string field that is not UTF-8.
    pub fn decode_server_binary(self, frame: Bytes) -> Result<ServerMessage, DecodeError> {
        match self {
            Serializer::V1 => Err(DecodeError::BinaryUnsupported),
            Serializer::V2 => binary::decode_server(frame),
        }
    }
}

/// A V1 client frame: phoenix.js sends the whole message object, in this
/// key order.
fn v1_client_text(msg: &Message, payload: &Value) -> Frame {
    let mut buf = Vec::with_capacity(96 + msg.topic.len() + msg.event.len());
    buf.extend_from_slice(br#"{"topic":"#);
    write_str(&mut buf, &msg.topic);
    buf.extend_from_slice(br#","event":"#);
    write_str(&mut buf, &msg.event);
    buf.extend_from_slice(br#","payload":"#);
    write_value(&mut buf, payload);
    buf.extend_from_slice(br#","ref":"#);
    write_ref(&mut buf, msg.ref_.as_ref());
    buf.extend_from_slice(br#","join_ref":"#);
    write_ref(&mut buf, msg.join_ref.as_ref());
    buf.push(b'}');
    Frame::Text(Bytes::from(buf))
}

/// Turns a well-formed text `phx_reply` into a [`Reply`]; leaves any other
/// message as it is.
fn lift_reply(msg: Message) -> ServerMessage {
    if msg.event != events::REPLY {
        return ServerMessage::Message(msg);
    }
    match msg.payload {
        Payload::Json(Value::Object(mut obj)) => {
            if let Some(Value::String(status)) = obj.get_mut("status") {
                let status = std::mem::take(status);
                return ServerMessage::Reply(Reply {
                    join_ref: msg.join_ref,
                    ref_: msg.ref_,
                    topic: msg.topic,
                    status,
                    response: Payload::Json(obj.remove("response").unwrap_or(Value::Null)),
                });
            }
            ServerMessage::Message(Message {
                payload: Payload::Json(Value::Object(obj)),
                ..msg
            })
        }
        payload => ServerMessage::Message(Message { payload, ..msg }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::test_support::{binary, field, json_value, msg, reply, text};

    const V1: Serializer = Serializer::V1;
    const V2: Serializer = Serializer::V2;

    // The worked examples of PROTOCOL §2.3, copied as printed there.
    const CLIENT_PUSH: &str =
        "00 01 01 0A 06 33 39 72 6F 6F 6D 3A 6C 6F 62 62 79 62 69 6E 61 72 79 68 65 6C 6C 6F";
    const REPLY_FRAME: &str =
        "01 01 01 0A 02 33 39 72 6F 6F 6D 3A 6C 6F 62 62 79 6F 6B 68 65 6C 6C 6F 20 77 6F 72 6C 64";
    const SERVER_PUSH: &str = "00 01 0A 04 33 72 6F 6F 6D 3A 6C 6F 62 62 79 62 6C 6F 62 00 01";
    const BROADCAST_FRAME: &str = "02 0A 04 72 6F 6F 6D 3A 6C 6F 62 62 79 62 6C 6F 62 00 01";

    fn hex(s: &str) -> Bytes {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    /// What a client decodes from a server frame of either kind.
    fn client_decodes(s: Serializer, frame: Frame) -> ServerMessage {
        match frame {
            Frame::Binary(bytes) => s.decode_server_binary(bytes).unwrap(),
            // A pre-encoded push is a shared text frame: read it whole.
            text_frame => {
                assert!(text_frame.is_text(), "{text_frame:?}");
                let bytes = text_frame.to_bytes();
                s.decode_server_text(std::str::from_utf8(&bytes).unwrap())
                    .unwrap()
            }
        }
    }

    /// What a server decodes from a client frame of either kind.
    fn server_decodes(s: Serializer, frame: Frame) -> Message {
        match frame {
            Frame::Binary(bytes) => s.decode_binary(bytes).unwrap(),
            text_frame => s.decode_text(&text(text_frame)).unwrap(),
        }
    }

    /// A message of join "3" on `room:lobby`, the topic of most examples.
    fn lobby(ref_: &str, event: &str, payload: impl Into<Payload>) -> Message {
        msg(
            Some(json!("3")),
            Some(json!(ref_)),
            "room:lobby",
            event,
            payload,
        )
    }

    fn hello_push() -> Message {
        lobby("9", "binary", Bytes::from_static(b"hello"))
    }

    // --- §2.3 worked examples ---

    #[test]
    fn worked_examples_have_their_stated_lengths() {
        let lens = [CLIENT_PUSH, REPLY_FRAME, SERVER_PUSH, BROADCAST_FRAME].map(|h| hex(h).len());
        assert_eq!(lens, [28, 30, 21, 19]);
    }

    #[test]
    fn client_encodes_the_worked_push_and_the_server_decodes_it() {
        let frame = binary(V2.encode_client(&hello_push()).unwrap());
        assert_eq!(frame, hex(CLIENT_PUSH));
        assert_eq!(V2.decode_binary(frame).unwrap(), hello_push());
    }

    #[test]
    fn client_decodes_the_worked_reply() {
        let want = reply(
            Some(json!("3")),
            Some(json!("9")),
            "room:lobby",
            "ok",
            Bytes::from_static(b"hello world"),
        );
        let frame = hex(REPLY_FRAME);
        let got = V2.decode_server_binary(frame.clone()).unwrap();
        assert_eq!(got, ServerMessage::Reply(want.clone()));
        assert_eq!(binary(V2.encode_reply(&want).unwrap()), frame);
        // The response is a slice of the frame, not a copy.
        let ServerMessage::Reply(r) = got else {
            unreachable!()
        };
        assert_eq!(
            r.response.as_binary().unwrap().as_ptr(),
            frame[19..].as_ptr()
        );
    }

    #[test]
    fn client_decodes_the_worked_server_push() {
        let want = msg(
            Some(json!("3")),
            None,
            "room:lobby",
            "blob",
            Bytes::from_static(&[0, 1]),
        );
        let frame = hex(SERVER_PUSH);
        assert_eq!(
            V2.decode_server_binary(frame.clone()).unwrap(),
            ServerMessage::Message(want.clone())
        );
        assert_eq!(binary(V2.encode_push(&want).unwrap()), frame);
    }

    #[test]
    fn client_decodes_the_worked_broadcast() {
        let want = msg(
            None,
            None,
            "room:lobby",
            "blob",
            Bytes::from_static(&[0, 1]),
        );
        let frame = hex(BROADCAST_FRAME);
        assert_eq!(
            V2.decode_server_binary(frame.clone()).unwrap(),
            ServerMessage::Message(want.clone())
        );
        let bytes = V2
            .encode_broadcast("room:lobby", "blob", &want.payload)
            .unwrap();
        assert_eq!(binary(bytes), frame);
    }

    // --- client encode → server decode ---

    /// Messages a client sends: join, heartbeat, push, leave, odd refs.
    fn client_messages() -> Vec<Message> {
        vec![
            lobby("3", events::JOIN, json!({"user": "ann"})),
            msg(
                None,
                Some(json!("40")),
                events::PHOENIX_TOPIC,
                events::HEARTBEAT,
                json!({}),
            ),
            lobby("11", "new_msg", json!({"body": "hi \"you\" </script>"})),
            lobby("12", events::LEAVE, json!({})),
            msg(
                Some(json!(1)),
                Some(json!(2.5)),
                "room:café",
                "ünï\ncode",
                json!([1, null, "s"]),
            ),
            msg(None, None, "t", "e", json!(null)),
        ]
    }

    #[test]
    fn client_text_round_trips_through_the_server_decoder() {
        for m in client_messages() {
            for s in [V1, V2] {
                let frame = s.encode_client(&m).unwrap();
                assert!(matches!(frame, Frame::Text(_)), "{s:?} {m:?}");
                // Unlike the server's V1 frames, the client's keep join_ref.
                assert_eq!(server_decodes(s, frame), m, "{s:?}");
            }
        }
    }

    #[test]
    fn v1_client_text_is_phoenix_js_object() {
        let m = &client_messages()[0];
        assert_eq!(
            text(V1.encode_client(m).unwrap()),
            r#"{"topic":"room:lobby","event":"phx_join","payload":{"user":"ann"},"ref":"3","join_ref":"3"}"#
        );
        // A heartbeat's null join_ref is written, not left out.
        assert_eq!(
            text(V1.encode_client(&client_messages()[1]).unwrap()),
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"40","join_ref":null}"#
        );
    }

    #[test]
    fn v2_client_text_is_the_array() {
        assert_eq!(
            text(V2.encode_client(&client_messages()[0]).unwrap()),
            r#"["3","3","room:lobby","phx_join",{"user":"ann"}]"#
        );
        assert_eq!(
            text(V2.encode_client(&client_messages()[1]).unwrap()),
            r#"[null,"40","phoenix","heartbeat",{}]"#
        );
    }

    #[test]
    fn client_binary_round_trips_through_the_server_decoder() {
        let m = msg(None, None, "t", "e", Bytes::new());
        let frame = binary(V2.encode_client(&m).unwrap());
        assert_eq!(&frame[..], b"\x00\x00\x00\x01\x01te");
        assert_eq!(V2.decode_binary(frame).unwrap(), m);

        // Binary fields are text: a numeric ref arrives as a string.
        let m = msg(Some(json!(3)), Some(json!(9)), "t", "e", vec![0xFF]);
        let got = V2
            .decode_binary(binary(V2.encode_client(&m).unwrap()))
            .unwrap();
        assert_eq!(
            (got.join_ref, got.ref_),
            (Some(json!("3")), Some(json!("9")))
        );
        assert_eq!(got.payload, m.payload);
    }

    #[test]
    fn client_binary_needs_v2_and_short_fields() {
        assert_eq!(
            V1.encode_client(&hello_push()),
            Err(EncodeError::BinaryUnsupported)
        );
        let ok = "a".repeat(255);
        let long = "a".repeat(256);
        let full = msg(Some(json!(ok)), Some(json!(ok)), &ok, &ok, vec![1]);
        let frame = binary(V2.encode_client(&full).unwrap());
        assert_eq!(V2.decode_binary(frame).unwrap(), full);

        let too_long = |field| Err(EncodeError::FieldTooLong { field, len: 256 });
        let b = || Payload::Binary(Bytes::new());
        let cases = [
            (msg(Some(json!(long)), None, "t", "e", b()), "join_ref"),
            (msg(None, Some(json!(long)), "t", "e", b()), "ref"),
            (msg(None, None, &long, "e", b()), "topic"),
            (msg(None, None, "t", &long, b()), "event"),
        ];
        for (m, field) in cases {
            assert_eq!(V2.encode_client(&m), too_long(field));
            // JSON frames have no field limit.
            let json_msg = Message {
                payload: Payload::empty(),
                ..m
            };
            assert!(V2.encode_client(&json_msg).unwrap().is_text());
        }
    }

    // --- server encode → client decode ---

    #[test]
    fn server_text_round_trips_through_the_client_decoder() {
        let pushes = [
            msg(
                Some(json!("3")),
                None,
                "room:lobby",
                "you_left",
                json!({"message": "bye!"}),
            ),
            lobby("3", events::CLOSE, json!({})),
            msg(
                Some(json!(7)),
                Some(json!(7)),
                "room:café",
                events::ERROR,
                json!({"reason": "channel_crash"}),
            ),
        ];
        let replies = [
            reply(
                Some(json!("3")),
                Some(json!("3")),
                "room:lobby",
                "ok",
                json!({}),
            ),
            reply(
                None,
                Some(json!("5")),
                "nope:1",
                "error",
                json!({"reason": "unmatched topic"}),
            ),
            reply(None, Some(json!(40)), "phoenix", "noop", json!([1, "x"])),
        ];
        for s in [V1, V2] {
            // V1 never sends a join_ref.
            let seen = |jr: &Option<Value>| if s == V1 { None } else { jr.clone() };
            for m in &pushes {
                let want = Message {
                    join_ref: seen(&m.join_ref),
                    ..m.clone()
                };
                let frame = s.encode_push(m).unwrap();
                assert_eq!(client_decodes(s, frame), ServerMessage::Message(want));
            }
            for r in &replies {
                let want = Reply {
                    join_ref: seen(&r.join_ref),
                    ..r.clone()
                };
                let frame = s.encode_reply(r).unwrap();
                assert_eq!(client_decodes(s, frame), ServerMessage::Reply(want));
            }
            let frame = s
                .encode_broadcast("bench:1", "msg", &json!({"n": 1}).into())
                .unwrap();
            assert_eq!(
                client_decodes(s, frame),
                ServerMessage::Message(msg(None, None, "bench:1", "msg", json!({"n": 1})))
            );
        }
    }

    #[test]
    fn pre_encoded_pushes_decode_like_pushes() {
        let payload = json!({"42": {"metas": [{"phx_ref": "x".repeat(5000)}]}});
        let encoded = crate::EncodedPayload::from_serialize(&payload).unwrap();
        let frame = V2.encode_push_encoded(Some(&json!("3")), "p:1", "presence_state", &encoded);
        assert!(matches!(frame, Frame::SharedText(_)));
        assert_eq!(
            client_decodes(V2, frame),
            ServerMessage::Message(msg(
                Some(json!("3")),
                None,
                "p:1",
                "presence_state",
                payload
            ))
        );
    }

    #[test]
    fn server_binary_round_trips_through_the_client_decoder() {
        let blob = || Payload::Binary(Bytes::from_static(b"\x00\xFFbytes"));
        // A server push has no ref field: the ref is dropped on the wire.
        let push = msg(Some(json!("3")), Some(json!("9")), "t", "e", blob());
        assert_eq!(
            client_decodes(V2, V2.encode_push(&push).unwrap()),
            ServerMessage::Message(Message { ref_: None, ..push })
        );
        let r = reply(Some(json!("3")), Some(json!("9")), "t", "error", blob());
        assert_eq!(
            client_decodes(V2, V2.encode_reply(&r).unwrap()),
            ServerMessage::Reply(r)
        );
        // Null refs are empty fields, which decode as `None`.
        let r = reply(None, None, "t", "ok", Bytes::new());
        assert_eq!(
            client_decodes(V2, V2.encode_reply(&r).unwrap()),
            ServerMessage::Reply(r)
        );
        let frame = V2.encode_broadcast("t", "e", &blob()).unwrap();
        assert_eq!(
            client_decodes(V2, frame),
            ServerMessage::Message(msg(None, None, "t", "e", blob()))
        );
    }

    #[test]
    fn replies_of_another_shape_stay_messages() {
        for payload in [
            r#"{"response":{}}"#,
            r#"{"status":1,"response":{}}"#,
            r#"{"status":null}"#,
            r#"[]"#,
            r#""ok""#,
            r#"null"#,
        ] {
            let frame = format!(r#"["3","4","t","phx_reply",{payload}]"#);
            let payload: Value = serde_json::from_str(payload).unwrap();
            assert_eq!(
                V2.decode_server_text(&frame).unwrap(),
                ServerMessage::Message(msg(
                    Some(json!("3")),
                    Some(json!("4")),
                    "t",
                    "phx_reply",
                    payload
                )),
                "{frame}"
            );
        }
        // phoenix.js reads only status and response: a missing response is null.
        let got = V2
            .decode_server_text(r#"[null,"4","t","phx_reply",{"status":"ok","x":1}]"#)
            .unwrap();
        assert_eq!(
            got,
            ServerMessage::Reply(reply(None, Some(json!("4")), "t", "ok", Value::Null))
        );
        assert_eq!(got.topic(), "t");
    }

    // --- malformed server frames ---

    #[test]
    fn malformed_server_text_is_an_error() {
        for (s, frame) in [
            (V2, ""),
            (V2, "[null,null,\"t\",\"e\""),
            (V2, "[null,null,\"t\",\"e\"]"),
            (V2, "{\"topic\":\"t\"}"),
            (V2, "[null,null,1,\"e\",{}]"),
            (V1, "[null,null,\"t\",\"e\",{}]"),
            (V1, "{\"topic\":\"t\",\"event\":\"e\",\"payload\":{}}"),
            (
                V1,
                "{\"topic\":\"t\",\"event\":null,\"payload\":{},\"ref\":null}",
            ),
        ] {
            assert!(s.decode_server_text(frame).is_err(), "{s:?} {frame}");
        }
    }

    #[test]
    fn empty_and_v1_binary_frames_are_errors() {
        assert!(matches!(
            V2.decode_server_binary(Bytes::new()),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            V1.decode_server_binary(hex(SERVER_PUSH)),
            Err(DecodeError::BinaryUnsupported)
        ));
    }

    #[test]
    fn every_cut_through_a_server_header_or_its_fields_is_truncated() {
        // Where the payload starts in each worked example.
        for (frame, payload_start) in [(REPLY_FRAME, 19), (SERVER_PUSH, 19), (BROADCAST_FRAME, 17)]
        {
            let frame = hex(frame);
            for len in 0..payload_start {
                let got = V2.decode_server_binary(frame.slice(..len));
                assert!(
                    matches!(got, Err(DecodeError::Truncated)),
                    "len {len}: {got:?}"
                );
            }
            // Cuts through the payload only shorten it.
            for len in payload_start..=frame.len() {
                let got = V2.decode_server_binary(frame.slice(..len)).unwrap();
                let payload = match got {
                    ServerMessage::Message(m) => m.payload,
                    ServerMessage::Reply(r) => r.response,
                };
                assert_eq!(payload.as_binary().unwrap(), &frame[payload_start..len]);
            }
        }
    }

    #[test]
    fn server_lengths_beyond_the_frame_are_truncated() {
        for frame in [
            &[0, 0, 0, 1][..],
            &[0, 255, 255, 255, b'a'],
            &[1, 0, 0, 1, 2, b't', b'o'],
            &[1, 255, 0, 0, 0],
            &[2, 9, 9, b'a'],
            &[2, 0, 1],
        ] {
            let got = V2.decode_server_binary(Bytes::copy_from_slice(frame));
            assert!(
                matches!(got, Err(DecodeError::Truncated)),
                "{frame:?}: {got:?}"
            );
        }
    }

    #[test]
    fn unknown_server_kinds_are_errors() {
        for kind in 3..=255u8 {
            let mut frame = hex(BROADCAST_FRAME).to_vec();
            frame[0] = kind;
            let got = V2.decode_server_binary(frame.into());
            assert!(matches!(got, Err(DecodeError::UnknownKind(k)) if k == kind));
            let got = V2.decode_server_binary(Bytes::from(vec![kind]));
            assert!(matches!(got, Err(DecodeError::UnknownKind(k)) if k == kind));
        }
    }

    #[test]
    fn invalid_utf8_is_reported_per_server_field() {
        // The first byte of each field, per worked example.
        let cases = [
            (REPLY_FRAME, 5, "join_ref"),
            (REPLY_FRAME, 6, "ref"),
            (REPLY_FRAME, 7, "topic"),
            (REPLY_FRAME, 17, "status"),
            (SERVER_PUSH, 4, "join_ref"),
            (SERVER_PUSH, 5, "topic"),
            (SERVER_PUSH, 15, "event"),
            (BROADCAST_FRAME, 3, "topic"),
            (BROADCAST_FRAME, 13, "event"),
        ];
        for (frame, offset, field) in cases {
            let mut frame = hex(frame).to_vec();
            frame[offset] = 0xFF;
            let got = V2.decode_server_binary(frame.into());
            assert!(
                matches!(got, Err(DecodeError::InvalidUtf8(f)) if f == field),
                "{field}: {got:?}"
            );
        }
    }

    // --- properties ---

    /// A string ref, or none.
    fn opt_str_ref() -> impl Strategy<Value = Option<Value>> {
        proptest::option::of(".{1,63}".prop_map(Value::String))
    }

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    proptest! {
        #[test]
        fn random_binary_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = V1.decode_server_binary(Bytes::from(frame.clone()));
            let _ = V2.decode_server_binary(Bytes::from(frame));
        }

        #[test]
        fn random_headers_never_panic(
            kind in 0u8..4,
            lens in proptest::array::uniform4(any::<u8>()),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut frame = vec![kind];
            frame.extend_from_slice(&lens);
            frame.extend_from_slice(&body);
            let _ = V2.decode_server_binary(Bytes::from(frame));
        }

        #[test]
        fn random_text_never_panics(text in "\\PC{0,64}") {
            let _ = V1.decode_server_text(&text);
            let _ = V2.decode_server_text(&text);
        }

        #[test]
        fn client_messages_round_trip(
            join_ref in proptest::option::of(json_value()),
            ref_ in proptest::option::of(json_value()),
            topic in "\\PC{0,16}",
            event in "\\PC{0,16}",
            payload in json_value(),
        ) {
            // JSON null is no ref.
            let join_ref = join_ref.filter(|v| !v.is_null());
            let ref_ = ref_.filter(|v| !v.is_null());
            let m = msg(join_ref, ref_, &topic, &event, payload);
            for s in [V1, V2] {
                prop_assert_eq!(server_decodes(s, s.encode_client(&m).unwrap()), m.clone());
            }
        }

        #[test]
        fn client_binary_pushes_round_trip(
            join_ref in opt_str_ref(),
            ref_ in opt_str_ref(),
            topic in field(),
            event in field(),
            payload in bytes(),
        ) {
            let m = msg(join_ref, ref_, &topic, &event, payload);
            prop_assert_eq!(server_decodes(V2, V2.encode_client(&m).unwrap()), m);
        }

        #[test]
        fn server_binary_frames_round_trip(
            join_ref in opt_str_ref(),
            ref_ in opt_str_ref(),
            topic in field(),
            event in field(),
            payload in bytes(),
        ) {
            let push = msg(join_ref.clone(), None, &topic, &event, payload.clone());
            prop_assert_eq!(
                client_decodes(V2, V2.encode_push(&push).unwrap()),
                ServerMessage::Message(push)
            );
            let r = reply(join_ref, ref_, &topic, &event, payload.clone());
            prop_assert_eq!(
                client_decodes(V2, V2.encode_reply(&r).unwrap()),
                ServerMessage::Reply(r)
            );
            let payload = Payload::Binary(payload);
            let frame = V2.encode_broadcast(&topic, &event, &payload).unwrap();
            prop_assert_eq!(
                client_decodes(V2, frame),
                ServerMessage::Message(msg(None, None, &topic, &event, payload))
            );
        }

        #[test]
        fn server_text_frames_round_trip(
            join_ref in opt_str_ref(),
            ref_ in opt_str_ref(),
            topic in "\\PC{0,16}",
            event in "\\PC{0,16}",
            payload in json_value(),
        ) {
            for s in [V1, V2] {
                let seen = if s == V1 { None } else { join_ref.clone() };
                let push = msg(join_ref.clone(), ref_.clone(), &topic, &event, payload.clone());
                // A push named phx_reply is a reply on the wire; skip it.
                if event != events::REPLY {
                    prop_assert_eq!(
                        client_decodes(s, s.encode_push(&push).unwrap()),
                        ServerMessage::Message(Message { join_ref: seen.clone(), ..push })
                    );
                }
                let r = reply(join_ref.clone(), ref_.clone(), &topic, &event, payload.clone());
                prop_assert_eq!(
                    client_decodes(s, s.encode_reply(&r).unwrap()),
                    ServerMessage::Reply(Reply { join_ref: seen, ..r })
                );
            }
        }
    }
}
