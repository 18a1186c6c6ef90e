//! The socket and the three channels of `docs/TAPRACER.md`: [`PlayerSocket`]
//! (who is a player, who a viewer), [`Play`] (racing), [`Console`] (the big
//! screen) and [`Chat`] (the talk's ChatChannel).

use std::sync::Arc;

use axum::http::StatusCode;
use fawkes::{
    Assigns, Channel, ConnectInfo, Context, HandleResult, Params, Payload, PresenceOwner, Refused,
    Socket, StopReason,
};
use serde_json::{Value, json};

use crate::hub::{CONSOLE, Hub, PLAY};

/// Longest player name, in characters (after trimming).
pub const MAX_NAME_CHARS: usize = 24;
/// Longest chat message, in characters (after trimming).
pub const MAX_BODY_CHARS: usize = 280;

/// A player socket's identity: its random id and the name it connected with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Player {
    /// 16 hex digits, chosen by the server.
    pub id: String,
    /// The trimmed `name` connect param.
    pub name: String,
}

/// The player's name from a raw `name` param: trimmed, 1 to
/// [`MAX_NAME_CHARS`] characters, no control characters (it is shown on
/// every screen).
pub fn valid_name(raw: &str) -> Option<String> {
    let name = raw.trim();
    let chars = name.chars().count();
    let ok = (1..=MAX_NAME_CHARS).contains(&chars) && !name.chars().any(char::is_control);
    ok.then(|| name.to_owned())
}

/// A random player id: 16 hex digits.
pub fn random_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The socket at `/socket`: a valid `name` makes a player, no `name` a
/// viewer, anything else is refused (403).
pub struct PlayerSocket;

impl Socket for PlayerSocket {
    async fn connect(&self, params: &Params, info: &ConnectInfo) -> Result<Assigns, Refused> {
        let raw = match params.get("name") {
            None => return Ok(Assigns::new()),
            Some(Value::String(raw)) => raw,
            Some(_) => {
                tracing::info!(peer = ?info.peer, "connect refused: name is not a string");
                return Err(Refused::new());
            }
        };
        let Some(name) = valid_name(raw) else {
            tracing::info!(peer = ?info.peer, len = raw.len(), "connect refused: bad name");
            return Err(Refused::new());
        };
        let id = random_id().map_err(|err| {
            tracing::error!(%err, "connect refused: no random id");
            Refused::with_status(StatusCode::SERVICE_UNAVAILABLE)
        })?;
        tracing::debug!(%id, %name, transport = info.transport.as_str(), "player connected");
        Ok(Assigns::new().with(Player { id, name }))
    }
}

fn player<C: Channel>(ctx: &Context<C>) -> Option<&Player> {
    ctx.assigns().get::<Player>()
}

fn pick_a_name() -> Value {
    json!({"reason": "pick a name first"})
}

fn unknown_event(topic: &str, event: &str) -> HandleResult {
    tracing::debug!(topic, event, "unknown event");
    HandleResult::error(json!({"reason": "unknown event"}))
}

/// `start`, from `play` or `console`.
fn start(hub: &Hub) -> HandleResult {
    match hub.with_game(|game, now| game.start(now)) {
        Ok(()) => HandleResult::ok(json!({})),
        Err(err) => {
            tracing::debug!(reason = err.reason(), "start refused");
            HandleResult::error(json!({"reason": err.reason()}))
        }
    }
}

/// Takes a player off the game when its `play` channel ends, however it
/// ends (leave, closed socket, crash): the channel drops it.
struct Seat {
    hub: Arc<Hub>,
    id: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.hub.with_game(|game, now| game.leave(&self.id, now));
    }
}

/// `play`: players race. Join `{}` → `{"you": ID, "race": RACE}`; events
/// `tap` (never answered) and `start`.
#[derive(Clone)]
pub struct Play {
    hub: Arc<Hub>,
    seat: Option<Arc<Seat>>,
    /// The player's entry in `console`'s presence, gone with the channel.
    console: Option<Arc<PresenceOwner>>,
}

impl Play {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Play {
            hub,
            seat: None,
            console: None,
        }
    }
}

/// Work a [`Play`] channel does right after its join reply.
#[derive(Debug)]
pub struct Track;

impl Channel for Play {
    type Info = Track;

    async fn join(
        &mut self,
        topic: &str,
        _payload: Value,
        ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        let Some(Player { id, name }) = player(ctx).cloned() else {
            tracing::info!(topic, "join refused: viewer on play");
            return Err(pick_a_name());
        };
        let race = self.hub.with_game(|game, now| {
            game.join(&id, &name, now);
            game.race_json(now)
        });
        self.seat = Some(Arc::new(Seat {
            hub: self.hub.clone(),
            id: id.clone(),
        }));
        // After the reply, so the joiner gets its own presence diff too.
        ctx.send_info(Track);
        Ok(json!({"you": id, "race": race}))
    }

    async fn handle_info(&mut self, _msg: Track, ctx: &mut Context<Self>) -> HandleResult {
        let Some(Player { id, name }) = player(ctx).cloned() else {
            return HandleResult::NoReply;
        };
        let meta = json!({"name": name, "online_at": unix_ms()});
        if let Err(err) = ctx.presence().track(&id, &meta) {
            return HandleResult::stop(StopReason::Error(format!("cannot track on play: {err}")));
        }
        if let Some(presence) = self.hub.presence() {
            let owner = presence.owner();
            if let Err(err) = owner.track(CONSOLE, &id, &meta) {
                tracing::warn!(%err, "cannot track on console");
            }
            self.console = Some(Arc::new(owner));
        }
        ctx.push_presence_state();
        HandleResult::NoReply
    }

    async fn handle_in(
        &mut self,
        event: &str,
        _payload: Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        match event {
            "tap" => {
                if let Some(p) = player(ctx) {
                    self.hub.with_game(|game, now| game.tap(&p.id, now));
                }
                HandleResult::NoReply
            }
            "start" => start(&self.hub),
            _ => unknown_event(PLAY, event),
        }
    }

    async fn terminate(&mut self, _reason: &StopReason, _ctx: &mut Context<Self>) {
        // Off the track and out of console's list now, not when the task
        // is dropped.
        self.seat = None;
        self.console = None;
    }
}

/// `console`: the big screen. Anyone joins; `{"race": RACE}`, then the
/// lobby's presence; event `start`.
#[derive(Clone)]
pub struct Console {
    hub: Arc<Hub>,
}

impl Console {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Console { hub }
    }
}

/// Work a [`Console`] channel does right after its join reply.
#[derive(Debug)]
pub struct PushState;

impl Channel for Console {
    type Info = PushState;

    async fn join(
        &mut self,
        _topic: &str,
        _payload: Value,
        ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        let race = self.hub.with_game(|game, now| game.race_json(now));
        ctx.send_info(PushState);
        Ok(json!({"race": race}))
    }

    async fn handle_info(&mut self, _msg: PushState, ctx: &mut Context<Self>) -> HandleResult {
        ctx.push_presence_state();
        HandleResult::NoReply
    }

    async fn handle_in(
        &mut self,
        event: &str,
        _payload: Payload,
        _ctx: &mut Context<Self>,
    ) -> HandleResult {
        match event {
            "start" => start(&self.hub),
            _ => unknown_event(CONSOLE, event),
        }
    }
}

/// `chat:*`: the talk's ChatChannel. `chat:secret` is refused; `new_msg`
/// `{"body"}` is broadcast with the socket's name.
#[derive(Clone)]
pub struct Chat;

impl Channel for Chat {
    type Info = ();

    async fn join(
        &mut self,
        topic: &str,
        _payload: Value,
        _ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        if topic == "chat:secret" {
            tracing::info!(topic, "join refused: secret room");
            Err(json!({"reason": "You don't have permission!"}))
        } else {
            Ok(json!({}))
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        if event != "new_msg" {
            return unknown_event(ctx.topic(), event);
        }
        let refuse = |reason: &str| {
            tracing::info!(topic = %ctx.topic(), reason, "message refused");
            HandleResult::error(json!({"reason": reason}))
        };
        let Some(user) = player(ctx).map(|p| p.name.clone()) else {
            return refuse("pick a name first");
        };
        let body = match &payload {
            Payload::Json(v) => v.get("body").and_then(Value::as_str),
            Payload::Binary(_) => None,
        };
        let Some(body) = body.map(str::trim) else {
            return refuse("bad payload");
        };
        if body.is_empty() {
            return refuse("empty message");
        }
        if body.chars().count() > MAX_BODY_CHARS {
            return refuse("message too long");
        }
        ctx.broadcast(
            "new_msg",
            json!({"user": user, "body": body, "at": unix_ms()}),
        );
        HandleResult::ok(json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(valid_name("  ann  ").as_deref(), Some("ann"));
        assert_eq!(valid_name(""), None);
        assert_eq!(valid_name("   "), None);
        let long = "é".repeat(MAX_NAME_CHARS);
        assert_eq!(valid_name(&long), Some(long.clone()));
        assert_eq!(valid_name(&format!("{long}x")), None);
        assert_eq!(valid_name("a\u{0}b"), None);
        assert_eq!(valid_name("a\nb"), None);
    }

    #[test]
    fn ids_are_16_hex_digits() {
        let a = random_id().unwrap();
        let b = random_id().unwrap();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
