//! Shared fixture: the app served in-process on `127.0.0.1:0`, clients of
//! `fawkes-client` for players and viewers, and waits that fail the test
//! after a timeout instead of sleeping.
//!
//! Each test file compiles this module on its own and uses a subset of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use fawkes_client::{Channel, ChannelEvent, Events, Payload, Socket, SocketBuilder};
use serde_json::{Value, json};
use tapracer::game::Rules;
use tapracer::{Options, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any single wait may take: generous for a loaded machine,
/// and each wait ends as soon as its event comes.
pub const WAIT: Duration = Duration::from_secs(15);

/// Fails the test if `fut` takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Short races: 5 taps to the line, a 150 ms countdown, 20 ms ticks.
pub fn quick() -> Options {
    quick_with(Rules {
        track: 5,
        countdown: Duration::from_millis(150),
        max_race: Duration::from_secs(60),
    })
}

/// [`quick`]'s 20 ms ticks with other rules.
pub fn quick_with(rules: Rules) -> Options {
    Options {
        rules,
        tick: Duration::from_millis(20),
    }
}

/// The app running in the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    pub http: reqwest::Client,
}

impl TestServer {
    /// Starts the app with `opts` on `127.0.0.1:0`.
    pub async fn start(opts: Options) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, opts, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
            http: reqwest::Client::new(),
        }
    }

    /// `ws://ADDR/socket`.
    pub fn endpoint(&self) -> String {
        format!("ws://{}/socket", self.addr)
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        within(&format!("GET {path}"), self.http.get(self.url(path)).send())
            .await
            .expect("request")
    }

    /// A socket builder with short timers.
    pub fn socket(&self, params: Value) -> SocketBuilder {
        Socket::builder(self.endpoint())
            .params(params)
            .reconnect_after(|_| Duration::from_millis(50))
            .rejoin_after(|_| Duration::from_millis(50))
            .timeout(Duration::from_secs(5))
            .event_capacity(4096)
    }

    /// A connected socket with `name` (a player), or none (a viewer).
    pub fn connect(&self, name: Option<&str>) -> Socket {
        let params = match name {
            Some(name) => json!({"name": name}),
            None => json!({}),
        };
        let socket = self.socket(params).build().expect("socket");
        socket.connect();
        socket
    }

    /// Shuts the server down and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let result = within("server shutdown", handle).await;
            result.expect("serve task").expect("serve");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// A player on `play`: its socket, channel, id, and streams of `race`,
/// `tick` and every event, subscribed before the join.
pub struct Racer {
    pub socket: Socket,
    pub play: Channel,
    pub id: String,
    pub join: Value,
    pub races: Events,
    pub ticks: Events,
    pub events: Events,
}

impl Racer {
    /// Connects as `name` and joins `play`.
    pub async fn join(server: &TestServer, name: &str) -> Racer {
        let socket = server.connect(Some(name));
        let play = socket.channel("play", json!({}));
        let races = play.on("race");
        let ticks = play.on("tick");
        let events = play.events();
        let reply = within("play join", play.join()).await.expect("play join");
        let join = json_of(&reply);
        let id = join["you"].as_str().expect("you").to_owned();
        Racer {
            socket,
            play,
            id,
            join,
            races,
            ticks,
            events,
        }
    }

    /// Sends `n` taps (never answered: the pushes are not awaited).
    pub fn tap(&self, n: usize) {
        for _ in 0..n {
            drop(
                self.play
                    .push_with_timeout("tap", json!({}), Duration::from_millis(100)),
            );
        }
    }
}

/// A viewer on `console`, with streams subscribed before the join.
pub struct Viewer {
    pub socket: Socket,
    pub console: Channel,
    pub join: Value,
    pub races: Events,
    pub ticks: Events,
    pub events: Events,
}

impl Viewer {
    /// Connects without a name and joins `console`.
    pub async fn join(server: &TestServer) -> Viewer {
        let socket = server.connect(None);
        let console = socket.channel("console", json!({}));
        let races = console.on("race");
        let ticks = console.on("tick");
        let events = console.events();
        let reply = within("console join", console.join())
            .await
            .expect("console join");
        Viewer {
            socket,
            console,
            join: json_of(&reply),
            races,
            ticks,
            events,
        }
    }
}

/// The JSON of a payload.
pub fn json_of(payload: &Payload) -> Value {
    payload.as_json().cloned().expect("a json payload")
}

/// The next event of `events` whose JSON payload satisfies `pred`.
pub async fn next_matching(
    events: &mut Events,
    what: &str,
    pred: impl Fn(&ChannelEvent, &Value) -> bool,
) -> Value {
    within(what, async {
        loop {
            let ev = events.recv().await.expect("event stream ended");
            let Some(v) = ev.payload.as_json() else {
                continue;
            };
            if pred(&ev, v) {
                return v.clone();
            }
        }
    })
    .await
}

/// The next `race` in `phase`.
pub async fn race_in(races: &mut Events, phase: &str) -> Value {
    next_matching(races, &format!("race in phase {phase}"), |_, v| {
        v["phase"] == phase
    })
    .await
}

/// The keys and names of a presence list: `{key: name}`.
pub fn names(presence: &fawkes_client::Presence) -> std::collections::BTreeMap<String, String> {
    presence
        .state()
        .iter()
        .map(|(key, v)| {
            let name = v["metas"][0]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (key.clone(), name)
        })
        .collect()
}

/// Feeds `presence` from `events` until `done` holds.
pub async fn pump(
    events: &mut Events,
    presence: &mut fawkes_client::Presence,
    what: &str,
    done: impl Fn(&fawkes_client::Presence) -> bool,
) {
    within(what, async {
        while !done(presence) {
            let ev = events.recv().await.expect("event stream ended");
            presence.handle(&ev);
        }
    })
    .await;
}

/// The `reason` of an error reply.
pub fn reason(result: Result<Payload, fawkes_client::PushError>) -> String {
    match result {
        Err(fawkes_client::PushError::Reply { status, response }) => {
            assert_eq!(status, "error");
            json_of(&response)["reason"]
                .as_str()
                .expect("reason")
                .to_owned()
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
}
