//! The client's side of the wire, in the driver's own types.
//!
//! `fawkes-protocol` writes and reads every frame, in the client's direction
//! ([`Serializer::encode_client`], [`Serializer::decode_server_text`],
//! [`Serializer::decode_server_binary`]); this module only maps its messages
//! to and from what the driver uses: refs as strings, and a reply's status
//! and response apart.

use bytes::Bytes;
use fawkes_protocol::{
    DecodeError, EncodeError, Frame, Message, Payload, Serializer, ServerMessage, events,
};
use serde_json::{Value, json};

/// One decoded server message, refs as strings (phoenix.js compares refs as
/// strings, and an empty binary ref field means none).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Incoming {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    body: Body,
}

/// What a message carries: a payload, or a well-formed reply's parts.
#[derive(Debug, Clone, PartialEq)]
enum Body {
    Payload(Payload),
    Reply(ReplyParts),
}

/// The status and response of a `phx_reply`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplyParts {
    pub status: String,
    pub response: Payload,
}

impl Incoming {
    /// The status and response, if this is a well-formed `phx_reply`.
    pub fn reply(&self) -> Option<&ReplyParts> {
        match &self.body {
            Body::Reply(parts) => Some(parts),
            Body::Payload(_) => None,
        }
    }

    /// The payload as phoenix.js hands it on: a JSON reply's is
    /// `{"status","response"}`, a binary reply's is its response bytes.
    pub fn payload(&self) -> Payload {
        match &self.body {
            Body::Payload(p) => p.clone(),
            Body::Reply(ReplyParts {
                status,
                response: Payload::Json(response),
            }) => Payload::Json(json!({"status": status, "response": response})),
            Body::Reply(ReplyParts { response, .. }) => response.clone(),
        }
    }
}

/// A ref as phoenix.js sees it: a string, with `""` meaning none.
fn ref_string(value: Option<Value>) -> Option<String> {
    match value? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Decodes a text frame from the server.
pub(crate) fn decode_text(serializer: Serializer, text: &str) -> Result<Incoming, DecodeError> {
    serializer.decode_server_text(text).map(incoming)
}

/// Decodes a V2 binary frame from the server (kinds 0, 1, 2).
pub(crate) fn decode_binary(frame: Bytes) -> Result<Incoming, DecodeError> {
    Serializer::V2.decode_server_binary(frame).map(incoming)
}

fn incoming(msg: ServerMessage) -> Incoming {
    match msg {
        ServerMessage::Message(m) => Incoming {
            join_ref: ref_string(m.join_ref),
            ref_: ref_string(m.ref_),
            topic: m.topic,
            event: m.event,
            body: Body::Payload(m.payload),
        },
        ServerMessage::Reply(r) => Incoming {
            join_ref: ref_string(r.join_ref),
            ref_: ref_string(r.ref_),
            topic: r.topic,
            event: events::REPLY.to_owned(),
            body: Body::Reply(ReplyParts {
                status: r.status,
                response: r.response,
            }),
        },
    }
}

/// One client message to encode.
pub(crate) struct Outgoing<'a> {
    pub join_ref: Option<&'a str>,
    pub ref_: Option<&'a str>,
    pub topic: &'a str,
    pub event: &'a str,
    pub payload: &'a Payload,
}

/// Encodes a client message: JSON text, or a kind 0 binary push (V2 only).
pub(crate) fn encode(serializer: Serializer, out: &Outgoing<'_>) -> Result<Frame, EncodeError> {
    let string = |r: &str| Value::String(r.to_owned());
    let msg = Message {
        join_ref: out.join_ref.map(string),
        ref_: out.ref_.map(string),
        topic: out.topic.to_owned(),
        event: out.event.to_owned(),
        payload: out.payload.clone(),
    };
    serializer.encode_client(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_push_matches_the_protocol_example() {
        let payload = Payload::Binary(Bytes::from_static(b"hello"));
        let out = Outgoing {
            join_ref: Some("3"),
            ref_: Some("9"),
            topic: "room:lobby",
            event: "binary",
            payload: &payload,
        };
        let Frame::Binary(bytes) = encode(Serializer::V2, &out).unwrap() else {
            panic!("expected a binary frame");
        };
        let mut want = vec![0, 1, 1, 10, 6];
        want.extend_from_slice(b"39room:lobbybinaryhello");
        assert_eq!(&bytes[..], &want[..]);
    }

    #[test]
    fn decodes_server_binary_kinds() {
        let mut reply = vec![1, 1, 1, 10, 2];
        reply.extend_from_slice(b"39room:lobbyokhello world");
        let got = decode_binary(Bytes::from(reply)).unwrap();
        let hello = Payload::Binary(Bytes::from_static(b"hello world"));
        assert_eq!(
            got.reply(),
            Some(&ReplyParts {
                status: "ok".into(),
                response: hello.clone(),
            })
        );
        assert_eq!(got.ref_.as_deref(), Some("9"));
        assert_eq!(got.event, events::REPLY);
        // phoenix.js hands a binary reply on as its response bytes.
        assert_eq!(got.payload(), hello);

        let mut push = vec![0, 0, 10, 3];
        push.extend_from_slice(b"room:lobbyevtxy");
        let got = decode_binary(Bytes::from(push)).unwrap();
        assert_eq!((got.join_ref, got.event.as_str()), (None, "evt"));

        let mut bcast = vec![2, 10, 3];
        bcast.extend_from_slice(b"room:lobbyevt");
        let got = decode_binary(Bytes::from(bcast)).unwrap();
        assert_eq!(got.payload(), Payload::Binary(Bytes::new()));
        assert_eq!(got.reply(), None);
    }

    #[test]
    fn bad_binary_frames_are_errors() {
        assert!(matches!(
            decode_binary(Bytes::new()),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            decode_binary(Bytes::from_static(&[7])),
            Err(DecodeError::UnknownKind(7))
        ));
        assert!(matches!(
            decode_binary(Bytes::from_static(&[2, 9, 9, b'a'])),
            Err(DecodeError::Truncated)
        ));
    }

    #[test]
    fn v1_text_carries_join_ref_and_decodes_replies() {
        let payload = Payload::Json(json!({"a": 1}));
        let out = Outgoing {
            join_ref: Some("1"),
            ref_: Some("2"),
            topic: "t",
            event: "e",
            payload: &payload,
        };
        let frame = encode(Serializer::V1, &out).unwrap();
        let v: Value = serde_json::from_slice(&frame.to_bytes()).unwrap();
        assert_eq!(
            v,
            json!({"topic":"t","event":"e","payload":{"a":1},"ref":"2","join_ref":"1"})
        );

        let msg = decode_text(
            Serializer::V1,
            r#"{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}"#,
        )
        .unwrap();
        let reply = msg.reply().unwrap();
        assert_eq!(reply.status, "ok");
        assert_eq!(msg.ref_.as_deref(), Some("2"));
        assert_eq!(
            msg.payload(),
            Payload::Json(json!({"status": "ok", "response": {}}))
        );
    }

    #[test]
    fn malformed_replies_keep_their_payload() {
        let msg = decode_text(Serializer::V2, r#"["1","2","t","phx_reply",{"oops":1}]"#).unwrap();
        assert_eq!(msg.reply(), None);
        assert_eq!(msg.event, events::REPLY);
        assert_eq!(msg.payload(), Payload::Json(json!({"oops": 1})));
    }

    #[test]
    fn numeric_and_empty_refs_become_strings_or_none() {
        let msg = decode_text(Serializer::V2, r#"[7,"","t","e",{}]"#).unwrap();
        assert_eq!((msg.join_ref.as_deref(), msg.ref_), (Some("7"), None));
    }
}
