//! Shared fixture: the conformance app served in-process on a real port,
//! its HTTP API, a client socket with short timers, waits with timeouts,
//! and a TCP relay that can hold back the server's bytes.
//!
//! Each test file compiles this module on its own and uses a subset of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fawkes_client::{
    Channel, ChannelEvent, ChannelState, ConnectionState, Events, Payload, Socket, SocketBuilder,
    SocketEvent,
};
use fawkes_conformance::{Options, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

/// How long any single wait may take before the test fails: generous, as a
/// loaded 2-core machine is slow, but the waits end as soon as the event
/// happens.
pub const WAIT: Duration = Duration::from_secs(15);

/// Fails the test if `fut` takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A conformance server running in the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    http: reqwest::Client,
}

impl TestServer {
    /// Starts the app on `127.0.0.1:0`.
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve_on(listener)
    }

    /// Starts the app on `addr` (a port a stopped server used), retrying the
    /// bind while the old listener is still going away.
    pub async fn start_on(addr: SocketAddr) -> TestServer {
        let listener = within("rebinding the port", async {
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        Self::serve_on(listener)
    }

    fn serve_on(listener: TcpListener) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let opts = Options {
            node_name: "client-test".into(),
            ..Options::default()
        };
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

    /// The socket endpoint, `ws://ADDR/socket`.
    pub fn endpoint(&self) -> String {
        format!("ws://{}/socket", self.addr)
    }

    /// Shuts the server down (sockets get close 1012) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let result = within("server shutdown", handle).await;
            result.expect("serve task").expect("serve");
        }
    }

    /// `POST /api/broadcast`.
    pub async fn broadcast(&self, topic: &str, event: &str, payload: Value) {
        let body = json!({"topic": topic, "event": event, "payload": payload});
        let resp = within(
            "POST /api/broadcast",
            self.http
                .post(format!("http://{}/api/broadcast", self.addr))
                .json(&body)
                .send(),
        )
        .await
        .expect("broadcast request");
        assert_eq!(resp.status().as_u16(), 200);
    }

    /// `GET /api/stats` as `(sockets, channels)`.
    pub async fn stats(&self) -> (u64, u64) {
        let resp = within(
            "GET /api/stats",
            self.http
                .get(format!("http://{}/api/stats", self.addr))
                .send(),
        )
        .await
        .expect("stats request");
        let body: Value = within("stats body", resp.json()).await.expect("stats json");
        (
            body["sockets"].as_u64().expect("sockets"),
            body["channels"].as_u64().expect("channels"),
        )
    }

    /// Polls `/api/stats` until it reports `want`.
    pub async fn wait_stats(&self, want: (u64, u64)) {
        within("server stats", async {
            while self.stats().await != want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// A client socket for `endpoint` with short timers, so that reconnects
/// and rejoins happen quickly in tests.
pub fn fast_socket(endpoint: &str) -> SocketBuilder {
    Socket::builder(endpoint)
        .reconnect_after(|_| Duration::from_millis(20))
        .rejoin_after(|_| Duration::from_millis(20))
        .timeout(Duration::from_secs(5))
}

/// A [`fast_socket`] to `server`, connecting.
pub fn connected(server: &TestServer) -> Socket {
    let socket = fast_socket(&server.endpoint()).build().unwrap();
    socket.connect();
    socket
}

/// `topic` on `socket` with empty params, joined.
pub async fn joined(socket: &Socket, topic: &str) -> Channel {
    let chan = socket.channel(topic, json!({}));
    within("join", chan.join()).await.unwrap();
    chan
}

/// Pushes `echo` and checks that the app answers with the same payload.
pub async fn assert_echo(chan: &Channel, payload: Value) {
    let got = within("echo", chan.push("echo", payload.clone())).await;
    assert_eq!(got, Ok(Payload::Json(payload)));
}

/// Connects `socket`, which the server refuses: waits for `errors` socket
/// errors (the refusal, then each retry's), then disconnects.
pub async fn assert_refused(socket: &Socket, errors: usize) {
    let mut events = socket.events();
    socket.connect();
    for _ in 0..errors {
        next_socket_event(&mut events, |e| matches!(e, SocketEvent::Error(_))).await;
    }
    assert_ne!(socket.state(), ConnectionState::Open);
    socket.disconnect().await;
}

/// Waits until `rx` holds a value that satisfies `pred`.
pub async fn wait_until<T: Clone + std::fmt::Debug>(
    what: &str,
    rx: &mut watch::Receiver<T>,
    pred: impl Fn(&T) -> bool,
) -> T {
    within(what, async {
        loop {
            let now = rx.borrow_and_update().clone();
            if pred(&now) {
                return now;
            }
            if rx.changed().await.is_err() {
                panic!("{what}: watch closed at {now:?}");
            }
        }
    })
    .await
}

/// Waits for a channel state.
pub async fn wait_channel(rx: &mut watch::Receiver<ChannelState>, want: ChannelState) {
    wait_until(&format!("channel state {want:?}"), rx, |s| *s == want).await;
}

/// Waits until `chan` is joined again with a join ref other than `old`.
pub async fn wait_rejoined(chan: &fawkes_client::Channel, old: Option<String>) {
    let mut rx = chan.state_changes();
    wait_until("rejoined with a new join ref", &mut rx, |s| {
        *s == ChannelState::Joined && chan.join_ref() != old
    })
    .await;
}

/// The next event of a stream.
pub async fn next_event(events: &mut Events) -> ChannelEvent {
    within("a channel event", events.recv())
        .await
        .expect("event stream ended")
}

/// The next event of a stream with this name, skipping others.
pub async fn next_named(events: &mut Events, name: &str) -> ChannelEvent {
    within(&format!("event {name}"), async {
        loop {
            let ev = events.recv().await.expect("event stream ended");
            if ev.event == name {
                return ev;
            }
        }
    })
    .await
}

/// The next socket event that satisfies `pred`, skipping others.
pub async fn next_socket_event(
    rx: &mut broadcast::Receiver<SocketEvent>,
    pred: impl Fn(&SocketEvent) -> bool,
) -> SocketEvent {
    within("a socket event", async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("socket events closed"),
            }
        }
    })
    .await
}

/// A TCP relay in front of a server whose server-to-client direction can be
/// held back, so that the client sees a live connection that stopped
/// answering.
pub struct Relay {
    pub addr: SocketAddr,
    hold: Arc<watch::Sender<bool>>,
}

impl Relay {
    /// Relays every connection on a new port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let hold = Arc::new(watch::channel(false).0);
        let h = hold.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut hold = h.subscribe();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        // While held, bytes wait here; the connection stays up.
                        if hold.wait_for(|held| !*held).await.is_err() {
                            break;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Relay { addr, hold }
    }

    /// The socket endpoint through the relay.
    pub fn endpoint(&self) -> String {
        format!("ws://{}/socket", self.addr)
    }

    /// Holds back (true) or lets through (false) the server's bytes.
    pub fn hold(&self, held: bool) {
        self.hold.send_replace(held);
    }
}
