//! TapRacer: a multiplayer tapping race in the browser, on Fawkes
//! (`docs/TAPRACER.md` is the contract). Players tap to move their racer,
//! the server counts, and a big-screen console shows the track.
//!
//! One socket at `/socket` (WebSocket and LongPoll; `name` connect param,
//! none for a viewer), three channels:
//!
//! | topic | channel |
//! | --- | --- |
//! | `play` | [`Play`]: players join the lobby, `tap`, `start` |
//! | `console` | [`Console`]: anyone watches; `start` |
//! | `chat:*` | [`Chat`]: the talk's ChatChannel |
//!
//! The rules are in [`game`], pure code with time passed in; a ticker
//! task advances the game every `tick` and broadcasts `race` and `tick` to
//! `play` and `console`. The pages are embedded (`/`, `/console`,
//! `/assets/*`), with Fawkes's JavaScript client at `/socket/fawkes.js`
//! and `/healthz`.
//!
//! [`app`] builds the router and endpoint (tests run it in-process on
//! port 0); [`serve`] serves it until shutdown.

mod channels;
pub mod game;
mod hub;
mod pages;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fawkes::{Endpoint, LongPollConfig, WebSocketConfig};

pub use channels::{
    Chat, Console, MAX_BODY_CHARS, MAX_NAME_CHARS, Play, Player, PlayerSocket, PushState, Track,
    random_id, valid_name,
};
use hub::Hub;
pub use hub::{CONSOLE, PLAY};
pub use pages::FILES;

/// Largest WebSocket frame a client may send: every message of the app is
/// small (a chat body is at most 280 characters).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// How the app runs: the CLI's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Taps to the line, the countdown and the maximum race time.
    pub rules: game::Rules,
    /// How often the game ticks (positions are broadcast at most this often).
    pub tick: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rules: game::Rules::default(),
            tick: Duration::from_millis(50),
        }
    }
}

/// Builds the app: the router to serve and the endpoint handle, and starts
/// the game's ticker (which stops once both, and every connection, are
/// gone). Call it inside a tokio runtime.
pub fn app(opts: &Options) -> (axum::Router, Endpoint) {
    let hub = Arc::new(Hub::new(game::Game::new(opts.rules)));
    let (socket_router, endpoint) = Endpoint::builder()
        .socket("/socket", PlayerSocket)
        .channel(PLAY, Play::new(hub.clone()))
        .channel(CONSOLE, Console::new(hub.clone()))
        .channel("chat:*", Chat)
        .websocket(WebSocketConfig::default().max_frame_size(MAX_FRAME_BYTES))
        .longpoll(LongPollConfig::default())
        .client_js()
        .build();
    hub.connect(endpoint.pubsub().clone(), endpoint.presence().clone());
    tokio::spawn(hub::run_ticker(Arc::downgrade(&hub), opts.tick));
    (socket_router.merge(pages::router()), endpoint)
}

/// Serves the app on `listener`, logging `listening on http://HOST:PORT`,
/// until `shutdown` resolves; then closes every socket (code 1012) after
/// running their channels' terminate, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, endpoint) = app(&opts);
    tracing::info!("listening on http://{}", listener.local_addr()?);
    endpoint.serve(listener, router, shutdown).await
}
