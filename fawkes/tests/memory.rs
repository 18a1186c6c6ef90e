//! The in-memory transport (`fawkes::transport::memory`): connect, join,
//! push and reply, broadcasts, binary frames, heartbeats and every way a
//! connection ends, with its close code.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fawkes::protocol::Frame;
use fawkes::transport::memory::{
    FrameSink, MemoryClient, MemoryConfig, MemoryError, MemoryTransport, Overflow,
};
use fawkes::{
    Assigns, Channel, ConnectInfo, Context, Endpoint, HandleResult, Params, Payload, Refused,
    Socket, StopReason, Transport, TransportError,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct UserId(String);

/// `reject=true` refuses; `user_id=U` names the socket `user:U`.
struct UserSocket;

impl Socket for UserSocket {
    async fn connect(&self, params: &Params, info: &ConnectInfo) -> Result<Assigns, Refused> {
        if params.get_str("reject") == Some("true") {
            return Err(Refused::with_status(http::StatusCode::TOO_MANY_REQUESTS));
        }
        assert_eq!(info.transport, Transport::WebSocket);
        let mut assigns = Assigns::new();
        if let Some(id) = params.get_str("user_id") {
            assigns.insert(UserId(id.to_owned()));
        }
        Ok(assigns)
    }

    fn id(&self, assigns: &Assigns) -> Option<String> {
        assigns.get::<UserId>().map(|u| format!("user:{}", u.0))
    }
}

/// `room:denied` refuses; `echo` replies with its payload (binary too),
/// `shout` broadcasts it; terminate reasons are recorded.
#[derive(Clone)]
struct Room(Arc<Mutex<Vec<String>>>);

impl Channel for Room {
    type Info = ();

    async fn join(
        &mut self,
        topic: &str,
        _: Value,
        ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        if topic == "room:denied" {
            return Err(json!({"reason": "unauthorized"}));
        }
        ctx.push("welcome", json!({"transport": ctx.transport().as_str()}));
        Ok(json!({"joined": topic}))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        match event {
            "echo" => HandleResult::ok(payload),
            "shout" => {
                ctx.broadcast("shout", payload);
                HandleResult::NoReply
            }
            _ => HandleResult::error(json!({"reason": "unknown event"})),
        }
    }

    async fn terminate(&mut self, reason: &StopReason, ctx: &mut Context<Self>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {reason:?}", ctx.topic()));
    }
}

struct Fixture {
    endpoint: Endpoint,
    transport: MemoryTransport,
    terminated: Arc<Mutex<Vec<String>>>,
}

fn fixture() -> Fixture {
    fixture_with(|s| s)
}

fn fixture_with(configure: impl FnOnce(fawkes::SocketBuilder) -> fawkes::SocketBuilder) -> Fixture {
    let terminated = Arc::new(Mutex::new(Vec::new()));
    let builder = Endpoint::builder()
        .socket("/socket", UserSocket)
        .channel("room:*", Room(terminated.clone()));
    let (_router, endpoint) = configure(builder).build();
    let transport = MemoryTransport::new(&endpoint, "/socket/").unwrap();
    Fixture {
        endpoint,
        transport,
        terminated,
    }
}

async fn recv(client: &mut MemoryClient) -> Frame {
    tokio::time::timeout(TIMEOUT, client.recv())
        .await
        .expect("a frame in time")
        .expect("the connection is open")
}

async fn recv_json(client: &mut MemoryClient) -> Value {
    match recv(client).await {
        Frame::Binary(b) => panic!("binary frame {b:?}"),
        text => serde_json::from_slice(&text.to_bytes()).unwrap(),
    }
}

/// Waits for the end of the connection; its close code.
async fn closed(client: &mut MemoryClient) -> u16 {
    let end = tokio::time::timeout(TIMEOUT, async { while client.recv().await.is_some() {} });
    end.await.expect("the connection ends in time");
    client.close_code().expect("a close code")
}

async fn join(client: &mut MemoryClient, topic: &str) -> Value {
    client
        .send_text(json!(["1", "1", topic, "phx_join", {}]).to_string())
        .await
        .unwrap();
    recv_json(client).await
}

async fn wait_stats(endpoint: &Endpoint, sockets: usize, channels: usize) {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let stats = endpoint.stats();
            if (stats.sockets, stats.channels) == (sockets, channels) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stats {:?}", endpoint.stats()));
}

#[tokio::test]
async fn connect_is_refused_by_the_handler_the_vsn_or_the_path() {
    let f = fixture();
    match f.transport.connect("reject=true&vsn=2.0.0").await {
        Err(MemoryError::Refused(refused)) => assert_eq!(refused.status, 429),
        other => panic!("{other:?}"),
    }
    match f.transport.connect("vsn=3.0.0").await {
        Err(MemoryError::Transport(TransportError::Vsn(_))) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        MemoryTransport::new(&f.endpoint, "/nowhere"),
        Err(MemoryError::NotMounted(p)) if p == "/nowhere"
    ));
    assert_eq!(f.endpoint.stats().sockets, 0);
}

#[tokio::test]
async fn joins_pushes_and_gets_replies() {
    let f = fixture();
    let mut client = f.transport.connect("vsn=2.0.0").await.unwrap();
    assert_eq!(f.endpoint.stats().sockets, 1);
    assert_eq!(
        join(&mut client, "room:1").await,
        json!(["1", "1", "room:1", "phx_reply", {"status": "ok", "response": {"joined": "room:1"}}])
    );
    assert_eq!(
        recv_json(&mut client).await,
        json!(["1", null, "room:1", "welcome", {"transport": "websocket"}])
    );
    client
        .send_text(r#"["1","2","room:1","echo",{"x":1}]"#)
        .await
        .unwrap();
    assert_eq!(
        recv_json(&mut client).await,
        json!(["1", "2", "room:1", "phx_reply", {"status": "ok", "response": {"x": 1}}])
    );
    // Refused join, unmatched topic, heartbeat.
    assert_eq!(
        join(&mut client, "room:denied").await,
        json!(["1", "1", "room:denied", "phx_reply", {"status": "error", "response": {"reason": "unauthorized"}}])
    );
    client
        .send_text(r#"[null,"3","nope","echo",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        recv_json(&mut client).await,
        json!([null, "3", "nope", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    client
        .send_text(r#"[null,"4","phoenix","heartbeat",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        recv_json(&mut client).await,
        json!([null, "4", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    wait_stats(&f.endpoint, 1, 1).await;
}

#[tokio::test]
async fn v1_clients_speak_objects() {
    let f = fixture();
    let mut client = f.transport.connect("").await.unwrap();
    client
        .send_text(r#"{"topic":"room:1","event":"phx_join","payload":{},"ref":"1"}"#)
        .await
        .unwrap();
    assert_eq!(
        recv_json(&mut client).await,
        json!({"topic": "room:1", "event": "phx_reply", "ref": "1", "payload": {"status": "ok", "response": {"joined": "room:1"}}})
    );
}

#[tokio::test]
async fn broadcasts_reach_every_subscriber() {
    let f = fixture();
    let mut a = f.transport.connect("vsn=2.0.0").await.unwrap();
    let mut b = f.transport.connect("vsn=2.0.0").await.unwrap();
    for c in [&mut a, &mut b] {
        join(c, "room:1").await;
        recv_json(c).await; // welcome
    }
    f.endpoint
        .broadcast("room:1", "news", json!({"n": 1}))
        .unwrap();
    a.send_text(r#"["1","2","room:1","shout",{"n":2}]"#)
        .await
        .unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(
            recv_json(c).await,
            json!([null, null, "room:1", "news", {"n": 1}])
        );
        assert_eq!(
            recv_json(c).await,
            json!([null, null, "room:1", "shout", {"n": 2}])
        );
    }
}

#[tokio::test]
async fn binary_pushes_and_replies() {
    let f = fixture();
    let mut client = f.transport.connect("vsn=2.0.0").await.unwrap();
    join(&mut client, "room:1").await;
    recv_json(&mut client).await;
    // Kind 0 push: join_ref "1", ref "2", topic, event, then the payload.
    let mut push = vec![0u8, 1, 1, 6, 4];
    push.extend_from_slice(b"12room:1echo");
    push.extend_from_slice(&[0, 1, 255]);
    client.send_binary(push).await.unwrap();
    // Kind 1 reply: join_ref, ref, topic, status, then the response.
    let mut want = vec![1u8, 1, 1, 6, 2];
    want.extend_from_slice(b"12room:1ok");
    want.extend_from_slice(&[0, 1, 255]);
    assert_eq!(recv(&mut client).await, Frame::Binary(want.into()));
    // A binary broadcast is a kind 2 frame.
    f.endpoint.broadcast("room:1", "blob", vec![7u8]).unwrap();
    let mut want = vec![2u8, 6, 4];
    want.extend_from_slice(b"room:1blob");
    want.push(7);
    assert_eq!(recv(&mut client).await, Frame::Binary(want.into()));
}

#[tokio::test]
async fn client_close_terminates_the_channels_with_1000() {
    let f = fixture();
    let mut client = f.transport.connect("vsn=2.0.0").await.unwrap();
    join(&mut client, "room:1").await;
    wait_stats(&f.endpoint, 1, 1).await;
    client.close();
    assert!(client.sender().is_closed());
    assert_eq!(closed(&mut client).await, 1000);
    wait_stats(&f.endpoint, 0, 0).await;
    assert_eq!(
        *f.terminated.lock().unwrap(),
        vec![r#"room:1 Shutdown("closed")"#]
    );
    assert!(client.send_text("[]").await.is_err());

    // Dropping the client closes as well.
    let mut dropped = f.transport.connect("vsn=2.0.0").await.unwrap();
    join(&mut dropped, "room:2").await;
    drop(dropped);
    wait_stats(&f.endpoint, 0, 0).await;
}

#[tokio::test]
async fn disconnect_and_shutdown_close_with_their_codes() {
    let f = fixture();
    let mut named = f.transport.connect("vsn=2.0.0&user_id=7").await.unwrap();
    let mut other = f.transport.connect("vsn=2.0.0").await.unwrap();
    join(&mut named, "room:1").await;
    join(&mut other, "room:1").await;
    f.endpoint.disconnect("user:7");
    assert_eq!(closed(&mut named).await, 1001);
    wait_stats(&f.endpoint, 1, 1).await;
    f.endpoint.shutdown().await;
    assert_eq!(closed(&mut other).await, 1012);
    assert!(matches!(
        f.transport.connect("vsn=2.0.0").await,
        Err(MemoryError::Transport(TransportError::ShuttingDown))
    ));
    let terminated = f.terminated.lock().unwrap();
    assert!(terminated.contains(&r#"room:1 Shutdown("disconnected")"#.to_owned()));
    assert!(terminated.contains(&r#"room:1 Shutdown("draining")"#.to_owned()));
}

#[tokio::test]
async fn bad_large_and_idle_connections_are_closed() {
    let f = fixture();
    let mut bad = f.transport.connect("vsn=2.0.0").await.unwrap();
    bad.send_text("not json").await.unwrap();
    assert_eq!(closed(&mut bad).await, 1007);

    let small = f
        .transport
        .clone()
        .with_config(MemoryConfig::default().max_frame_size(16));
    let mut large = small.connect("vsn=2.0.0").await.unwrap();
    large
        .send_text(json!(["1", "1", "room:1", "phx_join", {"pad": "x".repeat(32)}]).to_string())
        .await
        .unwrap();
    assert_eq!(closed(&mut large).await, 1009);

    let idle = f
        .transport
        .clone()
        .with_config(MemoryConfig::default().idle_timeout(Some(Duration::from_millis(50))));
    let mut quiet = idle.connect("vsn=2.0.0").await.unwrap();
    assert_eq!(closed(&mut quiet).await, 1002);
    wait_stats(&f.endpoint, 0, 0).await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_with_1013() {
    let f = fixture_with(|s| s.outbox_limits(8, 1 << 20));
    let mut slow = f.transport.connect("vsn=2.0.0").await.unwrap();
    join(&mut slow, "room:1").await;
    for n in 0..20 {
        f.endpoint
            .broadcast("room:1", "news", json!({"n": n}))
            .unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(closed(&mut slow).await, 1013);
}

/// Counts frames and records the close code.
#[derive(Clone, Default)]
struct Counter(Arc<Mutex<(usize, Option<u16>)>>);

impl FrameSink for Counter {
    fn send(&mut self, frames: VecDeque<Frame>) -> Result<(), Overflow> {
        self.0.lock().unwrap().0 += frames.len();
        Ok(())
    }

    fn closed(&mut self, code: u16) {
        self.0.lock().unwrap().1 = Some(code);
    }
}

#[tokio::test]
async fn a_custom_sink_gets_every_frame_and_the_close() {
    let f = fixture();
    let counter = Counter::default();
    let sender = f
        .transport
        .connect_with("vsn=2.0.0", counter.clone())
        .await
        .unwrap();
    sender
        .send_text(r#"["1","1","room:1","phx_join",{}]"#)
        .await
        .unwrap();
    wait_stats(&f.endpoint, 1, 1).await;
    f.endpoint.broadcast("room:1", "news", json!({})).unwrap();
    drop(sender);
    wait_stats(&f.endpoint, 0, 0).await;
    tokio::time::timeout(TIMEOUT, async {
        while counter.0.lock().unwrap().1.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    // Join reply, welcome, broadcast.
    assert_eq!(*counter.0.lock().unwrap(), (3, Some(1000)));
}
