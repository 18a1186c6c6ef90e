//! V1 and V2 serializers: negotiation, decoding of client frames, encoding of
//! server messages.

use bytes::Bytes;
use serde_json::Value;

use crate::{
    DecodeError, EncodeError, EncodedPayload, Frame, Message, Payload, Ref, Reply, SharedText,
    VsnError, binary, events,
};

/// A serializer version, chosen per socket by the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `1.0.x`: JSON objects, no binary frames, `join_ref` never sent.
    V1,
    /// `2.0.x`: JSON arrays, and binary frames for binary payloads.
    V2,
}

impl Serializer {
    /// Picks the serializer for a `vsn` parameter; `None` means `1.0.0`.
    ///
    /// Any `1.0.x` or `2.0.x` is accepted; anything else is refused.
    pub fn negotiate(vsn: Option<&str>) -> Result<Serializer, VsnError> {
        let Some(vsn) = vsn else {
            return Ok(Serializer::V1);
        };
        let malformed = || VsnError::Malformed(vsn.to_owned());
        let mut parts = vsn.split('.');
        let (Some(major), Some(minor), Some(patch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        if ![major, minor, patch].into_iter().all(is_version_number) {
            return Err(malformed());
        }
        // Phoenix's requirements are `~> 1.0.0` and `~> 2.0.0`: any patch level.
        match (major, minor) {
            ("1", "0") => Ok(Serializer::V1),
            ("2", "0") => Ok(Serializer::V2),
            _ => Err(VsnError::Unsupported(vsn.to_owned())),
        }
    }

    /// The canonical version string, `"1.0.0"` or `"2.0.0"`.
    pub fn vsn(self) -> &'static str {
        match self {
            Serializer::V1 => "1.0.0",
            Serializer::V2 => "2.0.0",
        }
    }

    /// Decodes a client text frame.
    ///
    /// V1 expects an object with `topic`, `event`, `payload` and `ref` (which
    /// may be null) and an optional `join_ref`; V2 expects an array of at
    /// least five elements. Refs are kept as the JSON values sent; null is
    /// `None`.
    ///
    /// # Errors
    ///
    /// Invalid JSON, the wrong shape, a missing key, or a topic or event that
    /// is not a string.
    pub fn decode_text(self, text: &str) -> Result<Message, DecodeError> {
        let value: Value = serde_json::from_str(text).map_err(DecodeError::Json)?;
        match self {
            Serializer::V1 => decode_v1(value),
            Serializer::V2 => decode_v2(value),
        }
    }

    /// Decodes a client binary frame (V2 kind 0 push; V1 has none).
    ///
    /// The payload is a slice of `frame`, not a copy. An empty `join_ref` or
    /// `ref` field is `None`; any other is a JSON string.
    ///
    /// # Errors
    ///
    /// Any V1 frame; a first byte other than 0; a header or fields longer
    /// than the frame; a string field that is not UTF-8.
    pub fn decode_binary(self, frame: Bytes) -> Result<Message, DecodeError> {
        match self {
            Serializer::V1 => Err(DecodeError::BinaryUnsupported),
            Serializer::V2 => binary::decode_push(frame),
        }
    }

    /// Encodes a server push, `phx_close` or `phx_error` (binary: kind 0).
    ///
    /// The message's refs are written as given (V1 writes no `join_ref`).
    /// A binary kind 0 frame has no ref field, so `ref_` is not sent.
    ///
    /// # Errors
    ///
    /// A binary payload on V1, or a binary frame field over 255 bytes.
    pub fn encode_push(self, msg: &Message) -> Result<Frame, EncodeError> {
        match &msg.payload {
            Payload::Json(payload) => Ok(self.text_frame(
                msg.join_ref.as_ref(),
                msg.ref_.as_ref(),
                &msg.topic,
                &msg.event,
                |buf| write_value(buf, payload),
            )),
            Payload::Binary(payload) => {
                self.require_binary()?;
                binary::encode_push(msg.join_ref.as_ref(), &msg.topic, &msg.event, payload)
                    .map(Frame::Binary)
            }
        }
    }

    /// Encodes a `phx_reply` (binary response: kind 1).
    ///
    /// A JSON response is sent as the payload `{"status":S,"response":R}`.
    ///
    /// # Errors
    ///
    /// A binary response on V1, or a binary frame field over 255 bytes.
    pub fn encode_reply(self, reply: &Reply) -> Result<Frame, EncodeError> {
        match &reply.response {
            Payload::Json(response) => Ok(self.text_frame(
                reply.join_ref.as_ref(),
                reply.ref_.as_ref(),
                &reply.topic,
                events::REPLY,
                |buf| {
                    buf.extend_from_slice(br#"{"status":"#);
                    write_str(buf, &reply.status);
                    buf.extend_from_slice(br#","response":"#);
                    write_value(buf, response);
                    buf.push(b'}');
                },
            )),
            Payload::Binary(response) => {
                self.require_binary()?;
                binary::encode_reply(
                    reply.join_ref.as_ref(),
                    reply.ref_.as_ref(),
                    &reply.topic,
                    &reply.status,
                    response,
                )
                .map(Frame::Binary)
            }
        }
    }

    /// Encodes a fast-lane broadcast: no refs (binary: kind 2).
    ///
    /// Call it once per serializer and share the frame among subscribers.
    ///
    /// # Errors
    ///
    /// A binary payload on V1, or a binary frame field over 255 bytes.
    pub fn encode_broadcast(
        self,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<Frame, EncodeError> {
        match payload {
            Payload::Json(payload) => {
                Ok(self.text_frame(None, None, topic, event, |buf| write_value(buf, payload)))
            }
            Payload::Binary(payload) => {
                self.require_binary()?;
                binary::encode_broadcast(topic, event, payload).map(Frame::Binary)
            }
        }
    }

    /// Encodes a push whose JSON payload was serialized ahead of time: the
    /// same text as [`encode_push`](Self::encode_push) writes for that
    /// payload, with no ref. A large payload is not copied: the frame is a
    /// [`Frame::SharedText`] holding it, so pushing it to many clients costs
    /// each of them a few dozen bytes.
    pub fn encode_push_encoded(
        self,
        join_ref: Option<&Ref>,
        topic: &str,
        event: &str,
        payload: &EncodedPayload,
    ) -> Frame {
        let body = payload.as_bytes();
        if body.len() < SHARE_MIN_BYTES {
            return self.text_frame(join_ref, None, topic, event, |buf| {
                buf.extend_from_slice(body)
            });
        }
        let mut head = Vec::with_capacity(TEXT_FRAME_OVERHEAD + topic.len() + event.len());
        self.write_head(&mut head, join_ref, None, topic, event);
        let mut tail = Vec::with_capacity(16);
        self.write_tail(&mut tail, None);
        Frame::SharedText(Box::new(SharedText::new(
            Bytes::from(head),
            body.clone(),
            Bytes::from(tail),
        )))
    }

    /// Fails unless this version has binary frames (V1 has none).
    fn require_binary(self) -> Result<(), EncodeError> {
        match self {
            Serializer::V1 => Err(EncodeError::BinaryUnsupported),
            Serializer::V2 => Ok(()),
        }
    }

    /// Writes a JSON text frame; `payload` writes the payload's JSON.
    ///
    /// The frame goes straight into one buffer, with no intermediate
    /// [`Value`], because broadcasts make this the hot path.
    pub(crate) fn text_frame(
        self,
        join_ref: Option<&Ref>,
        ref_: Option<&Ref>,
        topic: &str,
        event: &str,
        payload: impl FnOnce(&mut Vec<u8>),
    ) -> Frame {
        let mut buf = Vec::with_capacity(TEXT_FRAME_OVERHEAD + topic.len() + event.len());
        self.write_head(&mut buf, join_ref, ref_, topic, event);
        payload(&mut buf);
        self.write_tail(&mut buf, ref_);
        Frame::Text(Bytes::from(buf))
    }

    /// What precedes the payload in a text frame.
    fn write_head(
        self,
        buf: &mut Vec<u8>,
        join_ref: Option<&Ref>,
        ref_: Option<&Ref>,
        topic: &str,
        event: &str,
    ) {
        match self {
            Serializer::V1 => {
                // PROTOCOL §2.1: exactly these four keys; join_ref is never sent.
                buf.extend_from_slice(br#"{"topic":"#);
                write_str(buf, topic);
                buf.extend_from_slice(br#","event":"#);
                write_str(buf, event);
                buf.extend_from_slice(br#","payload":"#);
            }
            Serializer::V2 => {
                buf.push(b'[');
                write_ref(buf, join_ref);
                buf.push(b',');
                write_ref(buf, ref_);
                buf.push(b',');
                write_str(buf, topic);
                buf.push(b',');
                write_str(buf, event);
                buf.push(b',');
            }
        }
    }

    /// What follows the payload in a text frame (V1 writes the ref here).
    fn write_tail(self, buf: &mut Vec<u8>, ref_: Option<&Ref>) {
        match self {
            Serializer::V1 => {
                buf.extend_from_slice(br#","ref":"#);
                write_ref(buf, ref_);
                buf.push(b'}');
            }
            Serializer::V2 => buf.push(b']'),
        }
    }
}

/// Pre-encoded payloads at least this long are shared, not copied, by the
/// frames that carry them.
const SHARE_MIN_BYTES: usize = 4096;

/// Initial room in a text frame buffer beyond topic and event: the fixed
/// syntax, two short refs and a small payload fit without growing.
const TEXT_FRAME_OVERHEAD: usize = 96;

/// Whether `part` is a semver number: decimal digits, no leading zero.
fn is_version_number(part: &str) -> bool {
    !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
        && (part == "0" || !part.starts_with('0'))
}

/// Decodes a V1 object (PROTOCOL §2.1).
fn decode_v1(value: Value) -> Result<Message, DecodeError> {
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let mut take = |key: &'static str| obj.remove(key).ok_or(DecodeError::MissingField(key));
    let topic = take("topic")?;
    let event = take("event")?;
    let payload = take("payload")?;
    // `ref` must be present even though it may be null.
    let ref_ = take("ref")?;
    let join_ref = obj.remove("join_ref").unwrap_or(Value::Null);
    Ok(Message {
        join_ref: non_null(join_ref),
        ref_: non_null(ref_),
        topic: string_field(topic, "topic")?,
        event: string_field(event, "event")?,
        payload: Payload::Json(payload),
    })
}

/// Decodes a V2 array (PROTOCOL §2.2); elements past the fifth are ignored.
fn decode_v2(value: Value) -> Result<Message, DecodeError> {
    let Value::Array(elements) = value else {
        return Err(DecodeError::NotAnArray);
    };
    let len = elements.len();
    let mut elements = elements.into_iter();
    let (Some(join_ref), Some(ref_), Some(topic), Some(event), Some(payload)) = (
        elements.next(),
        elements.next(),
        elements.next(),
        elements.next(),
        elements.next(),
    ) else {
        return Err(DecodeError::TooFewElements(len));
    };
    Ok(Message {
        join_ref: non_null(join_ref),
        ref_: non_null(ref_),
        topic: string_field(topic, "topic")?,
        event: string_field(event, "event")?,
        payload: Payload::Json(payload),
    })
}

/// A ref as the client sent it; JSON null is no ref.
fn non_null(value: Value) -> Option<Ref> {
    (!value.is_null()).then_some(value)
}

/// The string inside a field that must be one (topic, event).
fn string_field(value: Value, field: &'static str) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(DecodeError::WrongType(field)),
    }
}

/// Writes a ref as its exact JSON value, or `null`.
pub(crate) fn write_ref(buf: &mut Vec<u8>, r: Option<&Ref>) {
    match r {
        Some(r) => write_value(buf, r),
        None => buf.extend_from_slice(b"null"),
    }
}

/// Writes a JSON string, escaped.
pub(crate) fn write_str(buf: &mut Vec<u8>, s: &str) {
    // Serializing a str into a Vec has no failure path.
    serde_json::to_writer(buf, s).expect("a str always serializes into a Vec");
}

/// Writes a JSON value, compact.
pub(crate) fn write_value(buf: &mut Vec<u8>, value: &Value) {
    // A Value has string keys and finite numbers only, and a Vec never fails
    // to grow, so serializing cannot fail.
    serde_json::to_writer(buf, value).expect("a Value always serializes into a Vec");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::test_support::{binary, json_value, msg, reply, text};

    const V1: Serializer = Serializer::V1;
    const V2: Serializer = Serializer::V2;

    // --- §1.3 vsn negotiation ---

    #[test]
    fn missing_vsn_selects_v1() {
        assert_eq!(Serializer::negotiate(None), Ok(V1));
    }

    #[test]
    fn any_patch_of_1_0_and_2_0_is_accepted() {
        for vsn in ["1.0.0", "1.0.1", "1.0.99"] {
            assert_eq!(Serializer::negotiate(Some(vsn)), Ok(V1), "{vsn}");
        }
        for vsn in ["2.0.0", "2.0.7", "2.0.10"] {
            assert_eq!(Serializer::negotiate(Some(vsn)), Ok(V2), "{vsn}");
        }
    }

    #[test]
    fn other_versions_are_unsupported() {
        for vsn in [
            "2.1.0",
            "3.0.0",
            "1.1.0",
            "0.0.1",
            "0.2.0",
            "20.0.0",
            "99999999999999999999.0.0",
        ] {
            assert_eq!(
                Serializer::negotiate(Some(vsn)),
                Err(VsnError::Unsupported(vsn.into())),
                "{vsn}"
            );
        }
    }

    #[test]
    fn malformed_versions_are_refused() {
        for vsn in [
            "",
            "2",
            "abc",
            "2.0",
            "2.0.0.1",
            "2.0.x",
            "2..0",
            ".2.0",
            "2.0.",
            "+2.0.0",
            "2.+0.0",
            "-1.0.0",
            " 2.0.0",
            "2.0.0 ",
            "02.0.0",
            "2.00.0",
            "2.0.01",
            "2.0.0-rc.1",
            "2.0.0+b",
            "２.0.0",
        ] {
            assert_eq!(
                Serializer::negotiate(Some(vsn)),
                Err(VsnError::Malformed(vsn.into())),
                "{vsn:?}"
            );
        }
    }

    #[test]
    fn canonical_vsn_negotiates_back() {
        for s in [V1, V2] {
            assert_eq!(Serializer::negotiate(Some(s.vsn())), Ok(s));
        }
    }

    // --- §2.1 V1 JSON ---

    #[test]
    fn v1_examples() {
        let join = V1
            .decode_text(r#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1"}"#)
            .unwrap();
        assert_eq!(
            join,
            msg(None, Some(json!("1")), "room:lobby", "phx_join", json!({}))
        );

        let r = Reply::new(&join, Some(json!("1")), "ok", Payload::empty());
        assert_eq!(
            text(V1.encode_reply(&r).unwrap()),
            r#"{"topic":"room:lobby","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}"#
        );

        let push = msg(
            Some(json!("1")),
            None,
            "room:lobby",
            "user_entered",
            json!({"user": null}),
        );
        assert_eq!(
            text(V1.encode_push(&push).unwrap()),
            r#"{"topic":"room:lobby","event":"user_entered","payload":{"user":null},"ref":null}"#
        );
    }

    #[test]
    fn v1_never_writes_join_ref() {
        let push = msg(
            Some(json!("3")),
            Some(json!("3")),
            "room:lobby",
            "phx_close",
            Payload::empty(),
        );
        let close = text(V1.encode_push(&push).unwrap());
        assert_eq!(
            close,
            r#"{"topic":"room:lobby","event":"phx_close","payload":{},"ref":"3"}"#
        );

        let r = reply(
            Some(json!("3")),
            Some(json!("7")),
            "room:lobby",
            "ok",
            json!({"x": 1}),
        );
        let reply = text(V1.encode_reply(&r).unwrap());
        assert_eq!(
            reply,
            r#"{"topic":"room:lobby","event":"phx_reply","payload":{"status":"ok","response":{"x":1}},"ref":"7"}"#
        );

        let broadcast = text(
            V1.encode_broadcast("room:lobby", "new_msg", &json!({"a": 1}).into())
                .unwrap(),
        );
        assert_eq!(
            broadcast,
            r#"{"topic":"room:lobby","event":"new_msg","payload":{"a":1},"ref":null}"#
        );
        for frame in [close, reply, broadcast] {
            assert!(!frame.contains("join_ref"), "{frame}");
        }
    }

    #[test]
    fn v1_join_ref_is_optional() {
        let base = r#""topic":"t","event":"e","payload":{},"ref":"2""#;
        let with = V1
            .decode_text(&format!(r#"{{"join_ref":"1",{base}}}"#))
            .unwrap();
        assert_eq!(with.join_ref, Some(json!("1")));
        let null = V1
            .decode_text(&format!(r#"{{"join_ref":null,{base}}}"#))
            .unwrap();
        assert_eq!(null.join_ref, None);
        let absent = V1.decode_text(&format!("{{{base}}}")).unwrap();
        assert_eq!(absent.join_ref, None);
        assert_eq!(absent.ref_, Some(json!("2")));
    }

    #[test]
    fn v1_ref_must_be_present_but_may_be_null() {
        let msg = V1
            .decode_text(r#"{"topic":"t","event":"e","payload":{},"ref":null}"#)
            .unwrap();
        assert_eq!(msg.ref_, None);
        let err = V1
            .decode_text(r#"{"topic":"t","event":"e","payload":{}}"#)
            .unwrap_err();
        assert!(matches!(err, DecodeError::MissingField("ref")), "{err:?}");
    }

    #[test]
    fn v1_missing_required_keys() {
        let all = [
            ("topic", r#""t""#),
            ("event", r#""e""#),
            ("payload", "{}"),
            ("ref", r#""1""#),
        ];
        for missing in ["topic", "event", "payload", "ref"] {
            let fields: Vec<String> = all
                .iter()
                .filter(|(k, _)| *k != missing)
                .map(|(k, v)| format!(r#""{k}":{v}"#))
                .collect();
            let frame = format!("{{{}}}", fields.join(","));
            let err = V1.decode_text(&frame).unwrap_err();
            assert!(
                matches!(err, DecodeError::MissingField(f) if f == missing),
                "{frame}: {err:?}"
            );
        }
    }

    #[test]
    fn v1_topic_and_event_must_be_strings() {
        for bad in ["1", "null", "{}", "[]", "true"] {
            let frame = format!(r#"{{"topic":{bad},"event":"e","payload":{{}},"ref":null}}"#);
            assert!(
                matches!(V1.decode_text(&frame), Err(DecodeError::WrongType("topic"))),
                "{frame}"
            );
            let frame = format!(r#"{{"topic":"t","event":{bad},"payload":{{}},"ref":null}}"#);
            assert!(
                matches!(V1.decode_text(&frame), Err(DecodeError::WrongType("event"))),
                "{frame}"
            );
        }
    }

    #[test]
    fn v1_non_objects_are_refused() {
        for frame in [r#"["3","3","t","e",{}]"#, r#""x""#, "1", "null", "true"] {
            assert!(
                matches!(V1.decode_text(frame), Err(DecodeError::NotAnObject)),
                "{frame}"
            );
        }
    }

    #[test]
    fn v1_payload_may_be_any_json() {
        let msg = V1
            .decode_text(r#"{"topic":"t","event":"e","payload":[1,"a"],"ref":"1"}"#)
            .unwrap();
        assert_eq!(msg.payload, Payload::Json(json!([1, "a"])));
    }

    #[test]
    fn v1_numeric_refs_are_echoed_as_numbers() {
        let m = V1
            .decode_text(r#"{"topic":"t","event":"e","payload":{},"ref":7,"join_ref":7}"#)
            .unwrap();
        assert_eq!(m.ref_, Some(json!(7)));
        let r = Reply::new(&m, m.join_ref.clone(), "ok", Payload::empty());
        assert_eq!(
            text(V1.encode_reply(&r).unwrap()),
            r#"{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":7}"#
        );
    }

    #[test]
    fn v1_has_no_binary_frames() {
        assert!(matches!(
            V1.decode_binary(Bytes::new()),
            Err(DecodeError::BinaryUnsupported)
        ));
        let frame = Bytes::from_static(b"\x00\x01\x01\x01\x0139te");
        assert!(matches!(
            V1.decode_binary(frame),
            Err(DecodeError::BinaryUnsupported)
        ));

        let bytes = Payload::Binary(Bytes::from_static(b"x"));
        let push = msg(None, None, "t", "e", bytes.clone());
        assert_eq!(V1.encode_push(&push), Err(EncodeError::BinaryUnsupported));
        let r = reply(None, Some(json!("1")), "t", "ok", bytes.clone());
        assert_eq!(V1.encode_reply(&r), Err(EncodeError::BinaryUnsupported));
        assert_eq!(
            V1.encode_broadcast("t", "e", &bytes),
            Err(EncodeError::BinaryUnsupported)
        );
    }

    // --- §2.2 V2 JSON ---

    #[test]
    fn v2_examples() {
        let join = V2
            .decode_text(r#"["3","3","room:lobby","phx_join",{"user":"ann"}]"#)
            .unwrap();
        assert_eq!(
            join,
            msg(
                Some(json!("3")),
                Some(json!("3")),
                "room:lobby",
                "phx_join",
                json!({"user": "ann"})
            )
        );

        let r = Reply::new(&join, join.join_ref.clone(), "ok", Payload::empty());
        assert_eq!(
            text(V2.encode_reply(&r).unwrap()),
            r#"["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            text(
                V2.encode_broadcast("room:lobby", "user_entered", &json!({"user": "ann"}).into())
                    .unwrap()
            ),
            r#"[null,null,"room:lobby","user_entered",{"user":"ann"}]"#
        );
        let push = msg(
            Some(json!("3")),
            None,
            "room:lobby",
            "joined",
            json!({"status": "connected", "user_id": null}),
        );
        assert_eq!(
            text(V2.encode_push(&push).unwrap()),
            r#"["3",null,"room:lobby","joined",{"status":"connected","user_id":null}]"#
        );
    }

    #[test]
    fn v2_extra_elements_are_ignored() {
        let m = V2
            .decode_text(r#"["3","4","t","e",{"a":1},"extra",[1,2],null]"#)
            .unwrap();
        assert_eq!(
            m,
            msg(
                Some(json!("3")),
                Some(json!("4")),
                "t",
                "e",
                json!({"a": 1})
            )
        );
    }

    #[test]
    fn v2_refs_keep_their_json_type() {
        let m = V2.decode_text(r#"[1,2.5,"t","e",{}]"#).unwrap();
        assert_eq!(m.join_ref, Some(json!(1)));
        assert_eq!(m.ref_, Some(json!(2.5)));
        let r = Reply::new(&m, m.join_ref.clone(), "ok", Payload::empty());
        assert_eq!(
            text(V2.encode_reply(&r).unwrap()),
            r#"[1,2.5,"t","phx_reply",{"status":"ok","response":{}}]"#
        );

        let m = V2
            .decode_text(r#"[{"j":[true]},false,"t","e",{}]"#)
            .unwrap();
        assert_eq!(m.join_ref, Some(json!({"j": [true]})));
        assert_eq!(m.ref_, Some(json!(false)));
        assert_eq!(
            text(V2.encode_push(&m).unwrap()),
            r#"[{"j":[true]},false,"t","e",{}]"#
        );
    }

    #[test]
    fn v2_null_refs_are_none() {
        let m = V2
            .decode_text(r#"[null,null,"phoenix","heartbeat",{}]"#)
            .unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.ref_, None);
    }

    #[test]
    fn v2_payload_may_be_any_json() {
        for payload in ["5", r#""s""#, "null", "[1]", "true"] {
            let m = V2
                .decode_text(&format!(r#"[null,"1","t","e",{payload}]"#))
                .unwrap();
            assert_eq!(
                m.payload,
                Payload::Json(serde_json::from_str(payload).unwrap())
            );
        }
    }

    #[test]
    fn v2_non_arrays_are_refused() {
        for frame in [
            r#"{"topic":"t","event":"e","payload":{},"ref":"1"}"#,
            r#""x""#,
            "1",
            "null",
        ] {
            assert!(
                matches!(V2.decode_text(frame), Err(DecodeError::NotAnArray)),
                "{frame}"
            );
        }
    }

    #[test]
    fn v2_too_few_elements() {
        for (frame, n) in [("[]", 0), (r#"["3"]"#, 1), (r#"["3","3","t","e"]"#, 4)] {
            let err = V2.decode_text(frame).unwrap_err();
            assert!(
                matches!(err, DecodeError::TooFewElements(k) if k == n),
                "{frame}: {err:?}"
            );
        }
    }

    #[test]
    fn v2_topic_and_event_must_be_strings() {
        for bad in ["1", "null", "{}", "[]", "false"] {
            let frame = format!(r#"["3","3",{bad},"e",{{}}]"#);
            assert!(
                matches!(V2.decode_text(&frame), Err(DecodeError::WrongType("topic"))),
                "{frame}"
            );
            let frame = format!(r#"["3","3","t",{bad},{{}}]"#);
            assert!(
                matches!(V2.decode_text(&frame), Err(DecodeError::WrongType("event"))),
                "{frame}"
            );
        }
    }

    #[test]
    fn invalid_json_is_refused() {
        for s in [V1, V2] {
            for frame in [
                "",
                " ",
                "[",
                "{",
                r#"["3","3","t","e",{}"#,
                "nope",
                r#"["3","3","t","e",{}]x"#,
            ] {
                assert!(
                    matches!(s.decode_text(frame), Err(DecodeError::Json(_))),
                    "{s:?} {frame:?}"
                );
            }
        }
    }

    #[test]
    fn strings_are_escaped() {
        let topic = "room:\"café\"\\\n\u{1}";
        let push = msg(None, None, topic, "é", json!({"k": "</script>"}));
        let out = text(V2.encode_push(&push).unwrap());
        assert_eq!(
            out,
            r#"[null,null,"room:\"café\"\\\n\u0001","é",{"k":"</script>"}]"#
        );
        assert_eq!(V2.decode_text(&out).unwrap(), push);
    }

    // --- §5 lifecycle frames ---

    #[test]
    fn lifecycle_frames() {
        let close = msg(
            Some(json!("3")),
            Some(json!("3")),
            "room:lobby",
            events::CLOSE,
            Payload::empty(),
        );
        assert_eq!(
            text(V2.encode_push(&close).unwrap()),
            r#"["3","3","room:lobby","phx_close",{}]"#
        );

        let error = msg(
            Some(json!("3")),
            Some(json!("3")),
            "room:lobby",
            events::ERROR,
            json!({"reason": "channel_crash"}),
        );
        assert_eq!(
            text(V2.encode_push(&error).unwrap()),
            r#"["3","3","room:lobby","phx_error",{"reason":"channel_crash"}]"#
        );

        // Unmatched topic: the reply's join_ref is null whatever the request's.
        let req = V2
            .decode_text(r#"["5","5","nope:1","phx_join",{}]"#)
            .unwrap();
        let r = Reply::new(
            &req,
            None,
            "error",
            json!({"reason": "unmatched topic"}).into(),
        );
        assert_eq!(
            text(V2.encode_reply(&r).unwrap()),
            r#"[null,"5","nope:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );

        let hb = V2
            .decode_text(r#"[null,"40","phoenix","heartbeat",{}]"#)
            .unwrap();
        assert_eq!(
            (hb.topic.as_str(), hb.event.as_str()),
            (events::PHOENIX_TOPIC, events::HEARTBEAT)
        );
        let r = Reply::new(&hb, None, "ok", Payload::empty());
        assert_eq!(
            text(V2.encode_reply(&r).unwrap()),
            r#"[null,"40","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );

        // Null join_ref on the request; the reply carries the channel's.
        let echo = V2
            .decode_text(r#"[null,"10","room:lobby","echo",{}]"#)
            .unwrap();
        let r = Reply::new(&echo, Some(json!("3")), "ok", Payload::empty());
        assert_eq!(
            text(V2.encode_reply(&r).unwrap()),
            r#"["3","10","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
        );

        let bcast = V2
            .encode_broadcast("bench:1", "msg", &json!({"n": 1}).into())
            .unwrap();
        assert_eq!(text(bcast), r#"[null,null,"bench:1","msg",{"n":1}]"#);

        let push = msg(
            Some(json!("3")),
            None,
            "room:lobby",
            "you_left",
            json!({"message": "bye!"}),
        );
        assert_eq!(
            text(V2.encode_push(&push).unwrap()),
            r#"["3",null,"room:lobby","you_left",{"message":"bye!"}]"#
        );
    }

    // --- §2.3 binary frames through the serializer ---

    #[test]
    fn v2_binary_worked_examples() {
        let frame = Bytes::from_static(&[
            0x00, 0x01, 0x01, 0x0A, 0x06, 0x33, 0x39, 0x72, 0x6F, 0x6F, 0x6D, 0x3A, 0x6C, 0x6F,
            0x62, 0x62, 0x79, 0x62, 0x69, 0x6E, 0x61, 0x72, 0x79, 0x68, 0x65, 0x6C, 0x6C, 0x6F,
        ]);
        let m = V2.decode_binary(frame.clone()).unwrap();
        let hello = Bytes::from_static(b"hello");
        assert_eq!(
            m,
            msg(
                Some(json!("3")),
                Some(json!("9")),
                "room:lobby",
                "binary",
                hello
            )
        );
        assert_eq!(
            m.payload.as_binary().unwrap().as_ptr(),
            frame[23..].as_ptr()
        );

        let r = Reply::new(
            &m,
            m.join_ref.clone(),
            "ok",
            Bytes::from_static(b"hello world").into(),
        );
        assert_eq!(
            &binary(V2.encode_reply(&r).unwrap())[..],
            &[
                0x01, 0x01, 0x01, 0x0A, 0x02, 0x33, 0x39, 0x72, 0x6F, 0x6F, 0x6D, 0x3A, 0x6C, 0x6F,
                0x62, 0x62, 0x79, 0x6F, 0x6B, 0x68, 0x65, 0x6C, 0x6C, 0x6F, 0x20, 0x77, 0x6F, 0x72,
                0x6C, 0x64,
            ]
        );

        let blob = Payload::Binary(Bytes::from_static(&[0, 1]));
        // A server push has no ref field, whatever the message holds.
        let push = msg(
            Some(json!("3")),
            Some(json!("9")),
            "room:lobby",
            "blob",
            blob.clone(),
        );
        assert_eq!(
            &binary(V2.encode_push(&push).unwrap())[..],
            &[
                0x00, 0x01, 0x0A, 0x04, 0x33, 0x72, 0x6F, 0x6F, 0x6D, 0x3A, 0x6C, 0x6F, 0x62, 0x62,
                0x79, 0x62, 0x6C, 0x6F, 0x62, 0x00, 0x01,
            ]
        );
        assert_eq!(
            &binary(V2.encode_broadcast("room:lobby", "blob", &blob).unwrap())[..],
            &[
                0x02, 0x0A, 0x04, 0x72, 0x6F, 0x6F, 0x6D, 0x3A, 0x6C, 0x6F, 0x62, 0x62, 0x79, 0x62,
                0x6C, 0x6F, 0x62, 0x00, 0x01,
            ]
        );
    }

    #[test]
    fn v2_binary_decode_errors() {
        assert!(matches!(
            V2.decode_binary(Bytes::new()),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            V2.decode_binary(Bytes::from_static(&[1])),
            Err(DecodeError::UnknownKind(1))
        ));
        assert!(matches!(
            V2.decode_binary(Bytes::from_static(&[0, 0, 0, 9, 0, b't'])),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            V2.decode_binary(Bytes::from_static(&[0, 0, 0, 1, 1, 0xC3, b'e'])),
            Err(DecodeError::InvalidUtf8("topic"))
        ));
    }

    #[test]
    fn v2_binary_refs_are_written_as_text() {
        let r = reply(Some(json!(3)), Some(json!(9)), "t", "ok", Bytes::new());
        assert_eq!(
            &binary(V2.encode_reply(&r).unwrap())[..],
            b"\x01\x01\x01\x01\x0239tok"
        );
        let push = msg(None, None, "t", "e", Bytes::from_static(b"p"));
        assert_eq!(
            &binary(V2.encode_push(&push).unwrap())[..],
            b"\x00\x00\x01\x01tep"
        );
    }

    #[test]
    fn v2_binary_field_limits() {
        let ok = "a".repeat(255);
        let long = "a".repeat(256);
        let bytes = Payload::Binary(Bytes::from_static(b"x"));
        assert!(V2.encode_broadcast(&ok, &ok, &bytes).is_ok());
        assert_eq!(
            V2.encode_broadcast(&long, "e", &bytes),
            Err(EncodeError::FieldTooLong {
                field: "topic",
                len: 256
            })
        );
        let r = reply(None, Some(json!(ok)), &ok, &ok, bytes.clone());
        assert!(V2.encode_reply(&r).is_ok());
        let r = reply(None, Some(json!(long)), "t", "ok", bytes.clone());
        assert_eq!(
            V2.encode_reply(&r),
            Err(EncodeError::FieldTooLong {
                field: "ref",
                len: 256
            })
        );
        let push = msg(Some(json!(long)), None, "t", "e", bytes);
        assert_eq!(
            V2.encode_push(&push),
            Err(EncodeError::FieldTooLong {
                field: "join_ref",
                len: 256
            })
        );
        // JSON frames have no field limit.
        let push = msg(Some(json!(long)), None, &long, &long, Payload::empty());
        assert!(matches!(V2.encode_push(&push), Ok(Frame::Text(_))));
    }

    #[test]
    fn json_payloads_never_make_binary_frames() {
        let push = msg(Some(json!("3")), None, "t", "e", json!({"a": 1}));
        assert!(matches!(V2.encode_push(&push), Ok(Frame::Text(_))));
        let r = reply(
            Some(json!("3")),
            Some(json!("4")),
            "t",
            "ok",
            json!("bytes?"),
        );
        assert!(matches!(V2.encode_reply(&r), Ok(Frame::Text(_))));
        assert!(matches!(
            V2.encode_broadcast("t", "e", &json!([0, 1]).into()),
            Ok(Frame::Text(_))
        ));
    }

    // --- round trips and robustness ---

    #[test]
    fn client_shaped_messages_round_trip() {
        let messages = [
            msg(
                Some(json!("3")),
                Some(json!("3")),
                "room:lobby",
                "phx_join",
                json!({"user": "ann"}),
            ),
            msg(None, Some(json!("40")), "phoenix", "heartbeat", json!({})),
            msg(
                Some(json!(1)),
                Some(json!(2)),
                "t",
                "e",
                json!([1, {"a": null}]),
            ),
            msg(None, None, "room:café", "ünïcode", json!("s")),
        ];
        for m in messages {
            assert_eq!(
                V2.decode_text(&text(V2.encode_push(&m).unwrap())).unwrap(),
                m
            );
            // V1 drops join_ref on the way out.
            let v1 = Message {
                join_ref: None,
                ..m.clone()
            };
            assert_eq!(
                V1.decode_text(&text(V1.encode_push(&m).unwrap())).unwrap(),
                v1
            );
        }
    }

    fn opt_ref() -> impl Strategy<Value = Option<Value>> {
        json_value().prop_map(non_null)
    }

    proptest! {
        #[test]
        fn random_text_never_panics(text in "\\PC{0,64}") {
            let _ = V1.decode_text(&text);
            let _ = V2.decode_text(&text);
        }

        #[test]
        fn random_json_never_panics(value in json_value()) {
            let text = value.to_string();
            let _ = V1.decode_text(&text);
            let _ = V2.decode_text(&text);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = V1.decode_binary(Bytes::from(bytes.clone()));
            let _ = V2.decode_binary(Bytes::from(bytes.clone()));
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = V2.decode_text(text);
            }
        }

        #[test]
        fn json_messages_round_trip(
            join_ref in opt_ref(),
            ref_ in opt_ref(),
            topic in "\\PC{0,16}",
            event in "\\PC{0,16}",
            payload in json_value(),
        ) {
            let m = msg(join_ref, ref_, &topic, &event, payload);
            prop_assert_eq!(V2.decode_text(&text(V2.encode_push(&m).unwrap())).unwrap(), m.clone());
            let v1 = Message { join_ref: None, ..m.clone() };
            prop_assert_eq!(V1.decode_text(&text(V1.encode_push(&m).unwrap())).unwrap(), v1);
        }

        #[test]
        fn pre_encoded_pushes_equal_encoded_pushes(
            join_ref in opt_ref(),
            topic in "\\PC{0,16}",
            event in "\\PC{0,16}",
            payload in json_value(),
        ) {
            let encoded = EncodedPayload::from_serialize(&payload).unwrap();
            let m = msg(join_ref.clone(), None, &topic, &event, payload);
            for s in [V1, V2] {
                prop_assert_eq!(
                    s.encode_push_encoded(join_ref.as_ref(), &topic, &event, &encoded),
                    s.encode_push(&m).unwrap()
                );
            }
        }

        #[test]
        fn large_pre_encoded_pushes_share_their_payload(
            join_ref in opt_ref(),
            topic in "\\PC{0,16}",
            filler in "\\PC{4096,4200}",
        ) {
            let payload = serde_json::json!({"filler": filler});
            let encoded = EncodedPayload::from_serialize(&payload).unwrap();
            let m = msg(join_ref.clone(), None, &topic, "presence_state", payload);
            for s in [V1, V2] {
                let frame = s.encode_push_encoded(join_ref.as_ref(), &topic, "presence_state", &encoded);
                let Frame::SharedText(_) = &frame else { panic!("not shared: {frame:?}") };
                prop_assert!(frame.is_text());
                prop_assert_eq!(frame.parts()[1].as_ptr(), encoded.as_bytes().as_ptr());
                prop_assert_eq!(frame.to_bytes(), s.encode_push(&m).unwrap().to_bytes());
                prop_assert_eq!(frame.len(), frame.to_bytes().len());
            }
        }

        #[test]
        fn binary_pushes_round_trip(
            join_ref in ".{0,63}",
            ref_ in ".{0,63}",
            topic in ".{0,63}",
            event in ".{0,63}",
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let join_ref = (!join_ref.is_empty()).then_some(Value::String(join_ref));
            let ref_ = (!ref_.is_empty()).then_some(Value::String(ref_));
            let frame = binary::encode_client_push(
                join_ref.as_ref(), ref_.as_ref(), &topic, &event, &payload,
            ).unwrap();
            let m = msg(join_ref, ref_, &topic, &event, payload);
            prop_assert_eq!(V2.decode_binary(frame).unwrap(), m);
        }
    }
}
