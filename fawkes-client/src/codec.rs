//! The client's side of the wire: client messages out, server frames in.
//!
//! Text frames go through [`fawkes_protocol::Serializer`], whose decoder
//! reads the shape a server writes too. The V2 binary forms differ by
//! direction (PROTOCOL §2.3: a client push carries a ref, server pushes do
//! not, replies and broadcasts are kinds 1 and 2), so they are written here.

use bytes::Bytes;
use fawkes_protocol::{DecodeError, EncodeError, Frame, Message, Payload, Serializer, events};
use serde_json::{Value, json};

/// One decoded server message, refs as strings (phoenix.js compares refs as
/// strings, and an empty binary ref field means none).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Incoming {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// The status and response of a `phx_reply`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplyParts {
    pub status: String,
    pub response: Payload,
}

impl Incoming {
    /// The status and response, if this is a well-formed JSON `phx_reply`
    /// (a binary reply's status comes from [`decode_binary`] instead).
    pub fn reply(&self) -> Option<ReplyParts> {
        if self.event != events::REPLY {
            return None;
        }
        let obj = self.payload.as_json()?.as_object()?;
        let status = obj.get("status")?.as_str()?.to_owned();
        let response = obj.get("response").cloned().unwrap_or(Value::Null);
        Some(ReplyParts {
            status,
            response: Payload::Json(response),
        })
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
    let msg = serializer.decode_text(text)?;
    Ok(from_message(msg))
}

fn from_message(msg: Message) -> Incoming {
    Incoming {
        join_ref: ref_string(msg.join_ref),
        ref_: ref_string(msg.ref_),
        topic: msg.topic,
        event: msg.event,
        payload: msg.payload,
    }
}

/// A decoded binary frame: a message, and for a reply (kind 1) its status.
pub(crate) struct BinaryIn {
    pub msg: Incoming,
    pub reply_status: Option<String>,
}

/// Decodes a V2 binary frame from the server (kinds 0, 1, 2).
pub(crate) fn decode_binary(frame: Bytes) -> Result<BinaryIn, DecodeError> {
    let &kind = frame.first().ok_or(DecodeError::Truncated)?;
    // Field names per kind; the header holds one length byte per field.
    let names: &[&'static str] = match kind {
        0 => &["join_ref", "topic", "event"],
        1 => &["join_ref", "ref", "topic", "status"],
        2 => &["topic", "event"],
        other => return Err(DecodeError::UnknownKind(other)),
    };
    let header_len = 1 + names.len();
    let lens = frame.get(1..header_len).ok_or(DecodeError::Truncated)?;
    let payload_start = header_len + lens.iter().map(|&l| usize::from(l)).sum::<usize>();
    if payload_start > frame.len() {
        return Err(DecodeError::Truncated);
    }
    let mut at = header_len;
    let mut fields = Vec::with_capacity(names.len());
    for (&len, &name) in lens.iter().zip(names) {
        let end = at + usize::from(len);
        let text =
            std::str::from_utf8(&frame[at..end]).map_err(|_| DecodeError::InvalidUtf8(name))?;
        fields.push(text.to_owned());
        at = end;
    }
    let payload = Payload::Binary(frame.slice(payload_start..));
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    Ok(match kind {
        0 => BinaryIn {
            msg: Incoming {
                join_ref: some(&fields[0]),
                ref_: None,
                topic: fields[1].clone(),
                event: fields[2].clone(),
                payload,
            },
            reply_status: None,
        },
        1 => BinaryIn {
            msg: Incoming {
                join_ref: some(&fields[0]),
                ref_: some(&fields[1]),
                topic: fields[2].clone(),
                event: events::REPLY.to_owned(),
                payload,
            },
            reply_status: Some(fields[3].clone()),
        },
        _ => BinaryIn {
            msg: Incoming {
                join_ref: None,
                ref_: None,
                topic: fields[0].clone(),
                event: fields[1].clone(),
                payload,
            },
            reply_status: None,
        },
    })
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
    match (serializer, out.payload) {
        (Serializer::V1, Payload::Binary(_)) => Err(EncodeError::BinaryUnsupported),
        (Serializer::V1, Payload::Json(payload)) => {
            // phoenix.js with a V1 encoder sends the whole message object,
            // join_ref included, so the server can drop stale messages.
            let obj = json!({
                "topic": out.topic,
                "event": out.event,
                "payload": payload,
                "ref": out.ref_,
                "join_ref": out.join_ref,
            });
            Ok(Frame::Text(Bytes::from(obj.to_string())))
        }
        (Serializer::V2, Payload::Json(_)) => {
            // The V2 text array is symmetric, so the server encoder writes it.
            let msg = Message {
                join_ref: out.join_ref.map(|r| Value::String(r.to_owned())),
                ref_: out.ref_.map(|r| Value::String(r.to_owned())),
                topic: out.topic.to_owned(),
                event: out.event.to_owned(),
                payload: out.payload.clone(),
            };
            Serializer::V2.encode_push(&msg)
        }
        (Serializer::V2, Payload::Binary(bytes)) => {
            encode_binary_push(out, bytes).map(Frame::Binary)
        }
    }
}

/// A kind 0 client push: five length bytes, the strings, the payload.
fn encode_binary_push(out: &Outgoing<'_>, payload: &[u8]) -> Result<Bytes, EncodeError> {
    let fields = [
        ("join_ref", out.join_ref.unwrap_or("")),
        ("ref", out.ref_.unwrap_or("")),
        ("topic", out.topic),
        ("event", out.event),
    ];
    let mut buf =
        Vec::with_capacity(5 + fields.iter().map(|f| f.1.len()).sum::<usize>() + payload.len());
    buf.push(0);
    for (field, value) in fields {
        let len = u8::try_from(value.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: value.len(),
        })?;
        buf.push(len);
    }
    for (_, value) in fields {
        buf.extend_from_slice(value.as_bytes());
    }
    buf.extend_from_slice(payload);
    Ok(Bytes::from(buf))
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
        assert_eq!(got.reply_status.as_deref(), Some("ok"));
        assert_eq!(got.msg.ref_.as_deref(), Some("9"));
        assert_eq!(
            got.msg.payload,
            Payload::Binary(Bytes::from_static(b"hello world"))
        );

        let mut push = vec![0, 0, 10, 3];
        push.extend_from_slice(b"room:lobbyevtxy");
        let got = decode_binary(Bytes::from(push)).unwrap();
        assert_eq!((got.msg.join_ref, got.msg.event.as_str()), (None, "evt"));

        let mut bcast = vec![2, 10, 3];
        bcast.extend_from_slice(b"room:lobbyevt");
        let got = decode_binary(Bytes::from(bcast)).unwrap();
        assert_eq!(got.msg.payload, Payload::Binary(Bytes::new()));
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
    }
}
