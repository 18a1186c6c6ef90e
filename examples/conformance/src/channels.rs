//! The app's channels: Room, Chat (as in the talk) and Bench.

use bytes::{BufMut, BytesMut};
use fawkes::{Channel, Context, HandleResult, Payload, StopReason, Transport};
use serde_json::{Value, json};

/// The socket's user, from the `user_id` connect param.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(pub String);

fn user_id<C: Channel>(ctx: &Context<C>) -> Option<&str> {
    ctx.assigns().get::<UserId>().map(|u| u.0.as_str())
}

/// `room:*`: the full tour of channel callbacks.
#[derive(Clone)]
pub struct Room;

/// Work a [`Room`] does right after its join reply.
#[derive(Debug)]
pub struct AfterJoin {
    user: Value,
}

impl Channel for Room {
    type Info = AfterJoin;
    const INTERCEPT: &'static [&'static str] = &["new_msg"];

    async fn join(
        &mut self,
        topic: &str,
        payload: Value,
        ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        match topic {
            "room:denied" => Err(json!({"reason": "unauthorized"})),
            "room:join_crash" => panic!("join crashed on purpose"),
            _ => {
                let user = payload.get("user").cloned().unwrap_or(Value::Null);
                ctx.send_info(AfterJoin { user });
                Ok(json!({}))
            }
        }
    }

    async fn handle_info(&mut self, msg: AfterJoin, ctx: &mut Context<Self>) -> HandleResult {
        ctx.broadcast("user_entered", json!({"user": msg.user}));
        let user_id = user_id(ctx).map(str::to_owned);
        ctx.push("joined", json!({"status": "connected", "user_id": user_id}));
        HandleResult::NoReply
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        match event {
            "new_msg" => {
                ctx.broadcast("new_msg", payload);
                HandleResult::ok(json!({}))
            }
            "new_msg_from" => {
                ctx.broadcast_from("new_msg", payload);
                HandleResult::ok(json!({}))
            }
            "echo" => HandleResult::ok(payload),
            "error" => HandleResult::error(json!({"reason": "requested"})),
            "noreply" => HandleResult::NoReply,
            "boom" => panic!("boom requested"),
            "stop" => HandleResult::Stop(StopReason::Normal, Some(fawkes::Reply::status("ok"))),
            "binary" => match (ctx.transport(), payload) {
                (Transport::LongPoll, _) => {
                    HandleResult::error(json!({"reason": "binary not supported on longpoll"}))
                }
                (_, Payload::Binary(bytes)) => {
                    let mut out = BytesMut::with_capacity(bytes.len() + 6);
                    out.put_slice(&bytes);
                    out.put_slice(b" world");
                    HandleResult::ok(out.freeze())
                }
                (_, Payload::Json(_)) => {
                    HandleResult::error(json!({"reason": "binary payload expected"}))
                }
            },
            _ => HandleResult::error(json!({"reason": "unknown event"})),
        }
    }

    async fn handle_out(
        &mut self,
        event: &str,
        payload: &Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        match payload {
            Payload::Json(Value::Object(map)) => {
                // Addressed to someone else: not for this subscriber.
                let me = user_id(ctx).map_or(Value::Null, |u| Value::String(u.to_owned()));
                if map.get("to").is_some_and(|to| *to != me) {
                    return HandleResult::NoReply;
                }
                let mut map = map.clone();
                map.insert("transport".into(), json!(ctx.transport().as_str()));
                ctx.push(event, Value::Object(map));
            }
            other => ctx.push(event, other.clone()),
        }
        HandleResult::NoReply
    }

    async fn terminate(&mut self, _reason: &StopReason, ctx: &mut Context<Self>) {
        ctx.push("you_left", json!({"message": "bye!"}));
    }
}

/// `chat:*`: the talk's ChatChannel.
#[derive(Clone)]
pub struct Chat;

impl Channel for Chat {
    type Info = ();
    const INTERCEPT: &'static [&'static str] = &["new_msg"];

    async fn join(
        &mut self,
        topic: &str,
        _payload: Value,
        _ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        if topic == "chat:secret" {
            Err(json!({"reason": "You don't have permission!"}))
        } else {
            Ok(json!({}))
        }
    }

    async fn handle_in(
        &mut self,
        _event: &str,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        ctx.broadcast("new_msg", payload);
        HandleResult::NoReply
    }
}

/// `bench:*`: probes for load tools.
#[derive(Clone)]
pub struct Bench;

impl Channel for Bench {
    type Info = ();

    async fn join(
        &mut self,
        _topic: &str,
        _payload: Value,
        _ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        Ok(json!({}))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        match event {
            "ping" => HandleResult::ok(payload),
            "broadcast" => {
                ctx.broadcast("msg", payload);
                HandleResult::ok(json!({}))
            }
            _ => HandleResult::error(json!({"reason": "unknown event"})),
        }
    }
}
