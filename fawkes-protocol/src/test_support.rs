//! Builders and strategies the unit tests of both directions share.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;

use crate::{Frame, Message, Payload, Reply};

pub(crate) fn msg(
    join_ref: Option<Value>,
    ref_: Option<Value>,
    topic: &str,
    event: &str,
    payload: impl Into<Payload>,
) -> Message {
    Message {
        join_ref,
        ref_,
        topic: topic.into(),
        event: event.into(),
        payload: payload.into(),
    }
}

pub(crate) fn reply(
    join_ref: Option<Value>,
    ref_: Option<Value>,
    topic: &str,
    status: &str,
    response: impl Into<Payload>,
) -> Reply {
    Reply {
        join_ref,
        ref_,
        topic: topic.into(),
        status: status.into(),
        response: response.into(),
    }
}

/// The text of a frame, checking that it is a text frame of valid UTF-8.
pub(crate) fn text(frame: Frame) -> String {
    let Frame::Text(bytes) = frame else {
        panic!("expected a text frame, got {frame:?}");
    };
    String::from_utf8(bytes.to_vec()).expect("text frames are UTF-8")
}

pub(crate) fn binary(frame: Frame) -> Bytes {
    let Frame::Binary(bytes) = frame else {
        panic!("expected a binary frame, got {frame:?}");
    };
    bytes
}

/// Any JSON value, nested a little.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(".{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A string that fits a binary field: 63 characters are at most 252 bytes.
pub(crate) fn field() -> impl Strategy<Value = String> {
    ".{0,63}"
}
