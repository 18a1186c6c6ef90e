//! The game as the server runs it: one [`Game`] behind a lock, shared by
//! the channels and the ticker, with the broadcasts its changes cause.
//!
//! Broadcasts go out while the lock is held, so every client sees the
//! game's changes in the order they happened.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use fawkes::Presence;
use fawkes::pubsub::PubSub;
use serde_json::Value;

use crate::game::Game;

/// The players' topic.
pub const PLAY: &str = "play";
/// The big screen's topic.
pub const CONSOLE: &str = "console";

/// The shared game and the endpoint's pubsub and presence (known once the
/// endpoint is built, after the channels that hold the hub).
pub struct Hub {
    game: Mutex<Game>,
    net: OnceLock<(PubSub, Presence)>,
}

impl Hub {
    pub(crate) fn new(game: Game) -> Self {
        Hub {
            game: Mutex::new(game),
            net: OnceLock::new(),
        }
    }

    pub(crate) fn connect(&self, pubsub: PubSub, presence: Presence) {
        let _ = self.net.set((pubsub, presence));
    }

    pub(crate) fn presence(&self) -> Option<&Presence> {
        self.net.get().map(|(_, p)| p)
    }

    /// Runs `f` on the game at the current time, then broadcasts `race` if
    /// the race's JSON changed.
    pub fn with_game<T>(&self, f: impl FnOnce(&mut Game, Instant) -> T) -> T {
        // The game's methods do not panic; if one did, its state is still
        // whole (each change is one assignment), so go on with it.
        let mut game = self.game.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let out = f(&mut game, now);
        if game.take_dirty() {
            let race = game.race_json(now);
            self.broadcast("race", &race);
        }
        out
    }

    /// Sends `event` to `play` and `console`.
    fn broadcast(&self, event: &str, payload: &Value) {
        let Some((pubsub, _)) = self.net.get() else {
            return;
        };
        for topic in [PLAY, CONSOLE] {
            if let Err(err) = pubsub.broadcast(topic, event, payload.clone()) {
                tracing::warn!(topic, event, %err, "broadcast failed");
            }
        }
    }

    /// One tick: phase changes due by now, and the positions if they moved.
    fn tick(&self) {
        self.with_game(|game, now| {
            if let Some(tick) = game.tick(now) {
                self.broadcast("tick", &tick.to_json());
            }
        });
    }
}

/// Ticks the game every `period` until the hub is gone (the app dropped).
pub(crate) async fn run_ticker(hub: Weak<Hub>, period: Duration) {
    let mut interval = tokio::time::interval(period.max(Duration::from_millis(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let Some(hub) = hub.upgrade() else { break };
        hub.tick();
        drop::<Arc<Hub>>(hub);
    }
}
