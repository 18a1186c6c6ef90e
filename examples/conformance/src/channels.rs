//! The app's channels: Room, Chat (as in the talk), Presence and Bench.

use bytes::{BufMut, BytesMut};
use fawkes::{Channel, Context, HandleResult, Payload, StopReason, Transport};
use serde_json::{Value, json};

/// The socket's user, from the `user_id` connect param.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(pub String);

/// An anonymous socket's presence key, `anon-<n>`, unique per socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonId(pub u64);

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

/// `presence:*`: tracks each joiner and pushes the topic's presence list.
///
/// The key is the socket's `user_id` (`anon-<n>` for anonymous sockets), the
/// meta `{"online_at": <unix ms>, "device": <join param "device" or null>}`.
#[derive(Clone, Default)]
pub struct Presence {
    key: String,
    online_at: u64,
}

/// The largest `device` a client may give, as JSON: it is copied into every
/// joiner's presence list.
pub const MAX_DEVICE_BYTES: usize = 1024;

/// What a [`Presence`] channel does right after its join reply.
#[derive(Debug)]
pub struct Track {
    device: Value,
}

fn device_of(payload: &Value) -> Result<Value, Value> {
    let device = payload.get("device").cloned().unwrap_or(Value::Null);
    if device.to_string().len() > MAX_DEVICE_BYTES {
        return Err(json!({"reason": "device too large"}));
    }
    Ok(device)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Channel for Presence {
    type Info = Track;

    async fn join(
        &mut self,
        _topic: &str,
        payload: Value,
        ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        let device = device_of(&payload)?;
        self.key = match (user_id(ctx), ctx.assigns().get::<AnonId>()) {
            (Some(user), _) => user.to_owned(),
            (None, Some(anon)) => format!("anon-{}", anon.0),
            (None, None) => format!("anon-{}", next_anon_id()),
        };
        self.online_at = unix_ms();
        // After the join reply, so the joiner gets the diff of its own join.
        ctx.send_info(Track { device });
        Ok(json!({}))
    }

    async fn handle_info(&mut self, msg: Track, ctx: &mut Context<Self>) -> HandleResult {
        let meta = json!({"online_at": self.online_at, "device": msg.device});
        if let Err(err) = ctx.presence().track(&self.key, meta) {
            return HandleResult::stop(StopReason::Error(format!("cannot track: {err}")));
        }
        ctx.push_presence_state();
        HandleResult::NoReply
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        match (event, payload) {
            ("update_meta", Payload::Json(payload)) if payload.is_object() => {
                let device = match device_of(&payload) {
                    Ok(device) => device,
                    Err(reason) => return HandleResult::error(reason),
                };
                let meta = json!({"online_at": self.online_at, "device": device});
                match ctx.presence().update(&self.key, meta) {
                    Ok(_) => HandleResult::ok(json!({})),
                    Err(err) => HandleResult::error(json!({"reason": err.to_string()})),
                }
            }
            ("update_meta", Payload::Binary(_)) => {
                HandleResult::error(json!({"reason": "json payload expected"}))
            }
            ("update_meta", Payload::Json(_)) => {
                HandleResult::error(json!({"reason": "payload must be an object"}))
            }
            _ => HandleResult::error(json!({"reason": "unknown event"})),
        }
    }
}

/// The next anonymous id of this process.
pub fn next_anon_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
