//! Errors of decoding, encoding and version negotiation.

use thiserror::Error;

/// A frame that is not a valid protocol message.
///
/// For a server every variant is fatal for the connection that sent it
/// (PROTOCOL §4.3); a client decoding server frames gets the same errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The text frame is not valid JSON.
    #[error("invalid json")]
    Json(#[source] serde_json::Error),
    /// A V1 frame that is not a JSON object.
    #[error("v1 frame is not a json object")]
    NotAnObject,
    /// A V2 text frame that is not a JSON array.
    #[error("v2 frame is not a json array")]
    NotAnArray,
    /// A V2 array with fewer than five elements.
    #[error("v2 frame has {0} elements, expected 5")]
    TooFewElements(usize),
    /// A V1 object lacks a required key.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong JSON type (topic and event must be strings).
    #[error("field `{0}` has the wrong type")]
    WrongType(&'static str),
    /// A binary frame shorter than its header says.
    #[error("binary frame truncated")]
    Truncated,
    /// A binary frame whose first byte is not a kind of its direction: a
    /// client sends only pushes (kind 0), a server pushes, replies and
    /// broadcasts (kinds 0, 1 and 2).
    #[error("unknown binary frame kind {0}")]
    UnknownKind(u8),
    /// A string field of a binary frame is not UTF-8.
    #[error("field `{0}` is not utf-8")]
    InvalidUtf8(&'static str),
    /// A binary frame on a V1 socket, which has no binary form.
    #[error("binary frames need serializer 2.0.0")]
    BinaryUnsupported,
}

/// A message that cannot be put on the wire.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A binary payload on a V1 socket.
    #[error("binary payloads need serializer 2.0.0")]
    BinaryUnsupported,
    /// A string field of a binary frame exceeds 255 bytes.
    #[error("field `{field}` is {len} bytes, binary frames allow 255")]
    FieldTooLong {
        /// The field's name.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

/// A `vsn` the server does not speak (PROTOCOL §1.3).
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VsnError {
    /// Not of the form `MAJOR.MINOR.PATCH`.
    #[error("malformed vsn `{0}`")]
    Malformed(String),
    /// A well-formed version other than `1.0.x` or `2.0.x`.
    #[error("unsupported vsn `{0}`")]
    Unsupported(String),
}
