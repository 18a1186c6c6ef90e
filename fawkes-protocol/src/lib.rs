//! The Phoenix Channels wire protocol, as pure functions: no sockets, no tasks.
//!
//! A [`Message`] has five fields (`join_ref`, `ref`, `topic`, `event`,
//! `payload`). A [`Serializer`] turns client frames into messages and
//! server messages into [`Frame`]s, in one of the two versions Phoenix speaks:
//!
//! * V1 (`vsn=1.0.x`): one JSON object per text frame, `join_ref` never sent.
//! * V2 (`vsn=2.0.x`): one JSON array `[join_ref, ref, topic, event, payload]`
//!   per text frame, and binary frames for binary payloads.
//!
//! Refs are opaque: they are kept as the exact JSON value the client sent and
//! echoed back unchanged (a numeric ref comes back as the same number).
//!
//! ```
//! use fawkes_protocol::{Frame, Payload, Reply, Serializer};
//! use serde_json::json;
//!
//! let s = Serializer::negotiate(Some("2.0.0")).unwrap();
//! let msg = s.decode_text(r#"["3","7","room:lobby","echo",{"x":1}]"#).unwrap();
//! assert_eq!(msg.event, "echo");
//!
//! let reply = Reply::new(&msg, msg.join_ref.clone(), "ok", msg.payload.clone());
//! let Frame::Text(bytes) = s.encode_reply(&reply).unwrap() else { unreachable!() };
//! assert_eq!(&bytes[..], br#"["3","7","room:lobby","phx_reply",{"status":"ok","response":{"x":1}}]"#);
//! ```
//!
//! The client's direction is here too, so that a client never writes frame
//! bytes itself: [`Serializer::encode_client`] writes a client message (a
//! V1 object with `join_ref`, a V2 array, or a binary push with its ref),
//! and [`Serializer::decode_server_text`] and
//! [`Serializer::decode_server_binary`] read server frames into a
//! [`ServerMessage`]: a [`Reply`] for a `phx_reply`, a [`Message`] for
//! anything else.
//!
//! ```
//! use fawkes_protocol::{Message, Payload, Serializer, ServerMessage};
//! use serde_json::json;
//!
//! let s = Serializer::V2;
//! let join = Message {
//!     join_ref: Some(json!("3")),
//!     ref_: Some(json!("3")),
//!     topic: "room:lobby".into(),
//!     event: "phx_join".into(),
//!     payload: Payload::empty(),
//! };
//! let frame = s.encode_client(&join).unwrap();
//! assert_eq!(frame.to_bytes(), &br#"["3","3","room:lobby","phx_join",{}]"#[..]);
//!
//! let answer = r#"["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#;
//! let ServerMessage::Reply(reply) = s.decode_server_text(answer).unwrap() else { unreachable!() };
//! assert_eq!((reply.status.as_str(), reply.response), ("ok", Payload::empty()));
//! ```

mod binary;
mod client;
mod error;
mod message;
mod serializer;
#[cfg(test)]
mod test_support;

pub use error::{DecodeError, EncodeError, VsnError};
pub use message::{
    EncodedPayload, Frame, Message, Payload, Ref, Reply, ServerMessage, SharedText, events,
};
pub use serializer::Serializer;
