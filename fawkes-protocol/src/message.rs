//! The protocol's data: messages in, replies and frames out.

use bytes::Bytes;
use serde_json::Value;

/// Event names the protocol reserves (PROTOCOL §3).
pub mod events {
    /// Client asks to join a topic.
    pub const JOIN: &str = "phx_join";
    /// Client leaves a topic.
    pub const LEAVE: &str = "phx_leave";
    /// Server answer to a client message.
    pub const REPLY: &str = "phx_reply";
    /// Server closed a channel for good.
    pub const CLOSE: &str = "phx_close";
    /// Server channel crashed; the client may rejoin.
    pub const ERROR: &str = "phx_error";
    /// Client keep-alive on the [`PHOENIX_TOPIC`].
    pub const HEARTBEAT: &str = "heartbeat";
    /// The socket-level topic heartbeats travel on.
    pub const PHOENIX_TOPIC: &str = "phoenix";
}

/// An opaque ref or join ref: the exact JSON value the client sent.
///
/// phoenix.js sends decimal strings, but a server must echo any value
/// unchanged, so refs are compared and written as JSON values.
pub type Ref = Value;

/// A message payload: a JSON value, or bytes (V2 binary frames only).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON payload (an object for every event Phoenix defines).
    Json(Value),
    /// A binary payload, carried in a V2 binary frame.
    Binary(Bytes),
}

impl Payload {
    /// The empty object `{}`, the payload of `phx_close` and bare replies.
    pub fn empty() -> Self {
        Payload::Json(Value::Object(Default::default()))
    }

    /// The JSON value, if this is a JSON payload.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Payload::Json(v) => Some(v),
            Payload::Binary(_) => None,
        }
    }

    /// The bytes, if this is a binary payload.
    pub fn as_binary(&self) -> Option<&Bytes> {
        match self {
            Payload::Binary(b) => Some(b),
            Payload::Json(_) => None,
        }
    }

    /// Whether the payload is binary.
    pub fn is_binary(&self) -> bool {
        matches!(self, Payload::Binary(_))
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Payload::Json(v)
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::Binary(b)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(b: Vec<u8>) -> Self {
        Payload::Binary(Bytes::from(b))
    }
}

/// A JSON payload serialized ahead of time, to send the same large payload
/// in many frames without encoding it again (a topic's presence list pushed
/// to every joiner, say). Cheap to clone: the bytes are shared.
///
/// ```
/// use fawkes_protocol::{EncodedPayload, Frame, Serializer};
/// use serde_json::json;
///
/// let payload = EncodedPayload::from_serialize(&json!({"42": {"metas": []}})).unwrap();
/// let frame = Serializer::V2.encode_push_encoded(Some(&json!("3")), "presence:lobby", "presence_state", &payload);
/// assert_eq!(
///     frame.to_bytes().as_ref(),
///     br#"["3",null,"presence:lobby","presence_state",{"42":{"metas":[]}}]"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPayload(Bytes);

impl EncodedPayload {
    /// Serializes `value` as compact JSON.
    ///
    /// # Errors
    ///
    /// What `serde_json` fails on: a map with non-string keys, or a
    /// `Serialize` implementation that fails.
    pub fn from_serialize<T: serde::Serialize + ?Sized>(
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        serde_json::to_vec(value).map(|v| EncodedPayload(Bytes::from(v)))
    }

    /// The JSON text, as bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

/// One protocol message, in either direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The join this message belongs to; `None` is JSON `null`.
    pub join_ref: Option<Ref>,
    /// Correlation id of a client message; `None` for server pushes.
    pub ref_: Option<Ref>,
    /// The topic, e.g. `room:lobby`.
    pub topic: String,
    /// The event, e.g. `phx_join` or an application event.
    pub event: String,
    /// The payload.
    pub payload: Payload,
}

/// A `phx_reply` to a client message: `{"status": S, "response": R}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The join ref the reply carries (the channel's, or `None`).
    pub join_ref: Option<Ref>,
    /// The ref of the message answered.
    pub ref_: Option<Ref>,
    /// The topic of the message answered.
    pub topic: String,
    /// `ok`, `error`, or an application status.
    pub status: String,
    /// The response: JSON (usually an object) or bytes.
    pub response: Payload,
}

impl Reply {
    /// A reply to `request` carrying `join_ref`.
    pub fn new(
        request: &Message,
        join_ref: Option<Ref>,
        status: impl Into<String>,
        response: Payload,
    ) -> Self {
        Reply {
            join_ref,
            ref_: request.ref_.clone(),
            topic: request.topic.clone(),
            status: status.into(),
            response,
        }
    }
}

/// A server frame as a client decodes it: a reply, or any other message.
///
/// A reply gets its own variant because its binary form (kind 1) has no
/// event and no JSON payload: its status sits in the header and its
/// response is the rest of the frame. A [`Message`] cannot hold both, so
/// every reply, text or binary, decodes to a [`Reply`]: the text payload
/// `{"status": S, "response": R}` becomes `status` S and response
/// [`Payload::Json`] R, a binary reply's bytes become [`Payload::Binary`].
/// Decoding is thus the inverse of [`Serializer::encode_reply`] and
/// [`Serializer::encode_push`](crate::Serializer::encode_push), up to what
/// the wire drops (see
/// [`Serializer::decode_server_text`](crate::Serializer::decode_server_text)
/// and [`Serializer::decode_server_binary`](crate::Serializer::decode_server_binary)).
///
/// [`Serializer::encode_reply`]: crate::Serializer::encode_reply
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// A push, broadcast, `phx_close` or `phx_error`: anything but a
    /// well-formed `phx_reply`.
    Message(Message),
    /// A `phx_reply`.
    Reply(Reply),
}

impl ServerMessage {
    /// The topic, whichever the variant.
    pub fn topic(&self) -> &str {
        match self {
            ServerMessage::Message(m) => &m.topic,
            ServerMessage::Reply(r) => &r.topic,
        }
    }
}

/// An encoded frame, ready for a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame; the bytes are always valid UTF-8.
    Text(Bytes),
    /// A binary frame (V2 only).
    Binary(Bytes),
    /// A text frame whose large payload is shared with other frames rather
    /// than copied into each (see [`Serializer::encode_push_encoded`](crate::Serializer::encode_push_encoded)).
    SharedText(Box<SharedText>),
}

/// The parts of a [`Frame::SharedText`]: its own head, the shared payload,
/// its tail. Each part is valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedText([Bytes; 3]);

impl SharedText {
    /// A frame made of `head`, `body` and `tail`, in that order.
    pub fn new(head: Bytes, body: Bytes, tail: Bytes) -> Self {
        SharedText([head, body, tail])
    }
}

impl Frame {
    /// The frame's bytes, in order: one part, or three for a shared text.
    pub fn parts(&self) -> &[Bytes] {
        match self {
            Frame::Text(b) | Frame::Binary(b) => std::slice::from_ref(b),
            Frame::SharedText(s) => &s.0,
        }
    }

    /// The frame's bytes in one piece (a copy only for a shared text).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts() {
            [one] => one.clone(),
            parts => Bytes::from(parts.concat()),
        }
    }

    /// Whether this is a text frame.
    pub fn is_text(&self) -> bool {
        !matches!(self, Frame::Binary(_))
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.parts().iter().map(Bytes::len).sum()
    }

    /// Whether the frame is empty (never true for an encoded message).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
