//! Presence (PROTOCOL §7): what channels and owners track reaches every
//! subscriber as `presence_diff`s that phoenix.js's algorithm (§7.4) turns
//! back into the tracker's list, entries go however their channel ends, and
//! the batch window and list cache keep that true.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fawkes::protocol::Message;
use fawkes::pubsub::{Broadcast, EncodedBroadcast, Subscriber};
use fawkes::testing::TestSocket;
use fawkes::{
    Assigns, Channel, ConnectInfo, Context, Endpoint, HandleResult, Params, Payload,
    PresenceConfig, PresenceError, PresenceOwner, Refused, Reply, Socket, StopReason,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use support::{Client, TIMEOUT, ok, serve};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// ---------------------------------------------------------------------------
// The application under test
// ---------------------------------------------------------------------------

/// Names the socket from its `id` param.
struct UserSocket;

#[derive(Clone)]
struct SocketId(Option<String>);

impl Socket for UserSocket {
    async fn connect(&self, params: &Params, _: &ConnectInfo) -> Result<Assigns, Refused> {
        Ok(Assigns::new().with(SocketId(params.get_str("id").map(str::to_owned))))
    }

    fn id(&self, assigns: &Assigns) -> Option<String> {
        assigns.get::<SocketId>().and_then(|s| s.0.clone())
    }
}

/// `room:*`, driven by its join payload and the events it receives.
///
/// Join payload: `key` (+ `meta`) tracks inside `join`; `state: "join"`
/// pushes `presence_state` inside `join` (after tracking); then `refuse`
/// refuses and `panic` panics; `after_key` (+ `meta`) tracks right after the
/// join and `state: "after"` pushes the state then (after tracking);
/// `terminate_key` tracks inside `terminate`.
///
/// Events (replies `{"ref"}` / `{"error": "<PresenceError as Debug>"}`):
/// `track {key, meta}`, `update {key, meta}`, `update_with {key, set,
/// unset}` (also replies what the closure saw), `untrack {key}` (`{removed}`),
/// `list`, `get {key}`, `state`, `stop`, `crash`.
#[derive(Clone, Default)]
struct Room {
    terminate_key: Option<String>,
}

struct AfterJoin {
    key: Option<String>,
    meta: Value,
    state: bool,
}

fn error_reply(err: PresenceError) -> HandleResult {
    HandleResult::error(json!({"error": format!("{err:?}")}))
}

fn ref_reply(result: Result<String, PresenceError>) -> HandleResult {
    match result {
        Ok(r) => HandleResult::ok(json!({"ref": r})),
        Err(err) => error_reply(err),
    }
}

impl Channel for Room {
    type Info = AfterJoin;

    async fn join(
        &mut self,
        _topic: &str,
        p: Value,
        ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        let meta = if p["meta"].is_null() {
            json!({})
        } else {
            p["meta"].clone()
        };
        if let Some(key) = p["key"].as_str() {
            ctx.presence()
                .track(key, &meta)
                .map_err(|e| json!({"error": format!("{e:?}")}))?;
        }
        if p["state"] == "join" {
            ctx.push_presence_state();
        }
        if p["refuse"] == true {
            return Err(json!({"reason": "refused"}));
        }
        if p["panic"] == true {
            panic!("room panics in join");
        }
        self.terminate_key = p["terminate_key"].as_str().map(str::to_owned);
        if p["state"] == "after" || p["after_key"].is_string() {
            ctx.send_info(AfterJoin {
                key: p["after_key"].as_str().map(str::to_owned),
                meta,
                state: p["state"] == "after",
            });
        }
        Ok(json!({}))
    }

    async fn handle_info(&mut self, msg: AfterJoin, ctx: &mut Context<Self>) -> HandleResult {
        if let Some(key) = &msg.key {
            ctx.presence()
                .track(key, &msg.meta)
                .expect("track after join");
        }
        if msg.state {
            ctx.push_presence_state();
        }
        HandleResult::NoReply
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        let p = payload.as_json().cloned().unwrap_or(Value::Null);
        let key = p["key"].as_str().unwrap_or_default();
        match event {
            "track" => ref_reply(ctx.presence().track(key, &p["meta"])),
            "update" => ref_reply(ctx.presence().update(key, &p["meta"])),
            "update_with" => {
                let mut saw = None;
                let result = ctx.presence().update_with(key, |mut meta| {
                    saw = Some(meta.clone());
                    if let Some(set) = p["set"].as_object() {
                        meta.extend(set.clone());
                    }
                    for field in p["unset"].as_array().into_iter().flatten() {
                        meta.remove(field.as_str().unwrap_or_default());
                    }
                    meta
                });
                match result {
                    Ok(r) => HandleResult::ok(json!({"ref": r, "saw": saw})),
                    Err(err) => error_reply(err),
                }
            }
            "untrack" => HandleResult::ok(json!({"removed": ctx.presence().untrack(key)})),
            "list" => HandleResult::ok(serde_json::to_value(ctx.presence().list()).unwrap()),
            "get" => HandleResult::ok(json!({"found": ctx.presence().get_by_key(key)})),
            "state" => {
                ctx.push_presence_state();
                HandleResult::ok(json!({}))
            }
            "stop" => HandleResult::Stop(StopReason::Normal, Some(Reply::ok(json!({})))),
            "crash" => panic!("room panics in handle_in"),
            _ => HandleResult::error(json!({"reason": "unknown event"})),
        }
    }

    async fn terminate(&mut self, _reason: &StopReason, ctx: &mut Context<Self>) {
        if let Some(key) = &self.terminate_key {
            ctx.presence()
                .track(key, json!({"in": "terminate"}))
                .expect("track in terminate");
        }
    }
}

fn build(config: PresenceConfig) -> (axum::Router, Endpoint) {
    Endpoint::builder()
        .presence(config)
        .socket("/socket", UserSocket)
        .channel("room:*", Room::default())
        .build()
}

fn endpoint(config: PresenceConfig) -> Endpoint {
    build(config).1
}

async fn serve_room(config: PresenceConfig) -> support::TestServer {
    let (router, endpoint) = build(config);
    serve(router, endpoint).await
}

// ---------------------------------------------------------------------------
// Observing diffs
// ---------------------------------------------------------------------------

/// A pubsub subscriber that keeps every `presence_diff` of a topic: a
/// subscriber of the topic that is no channel, so it sees the diffs of
/// every ending, shutdown included.
struct SpySub(mpsc::UnboundedSender<Value>);

impl Subscriber for SpySub {
    fn deliver(&self, msg: &Arc<Broadcast>, _: &mut EncodedBroadcast) {
        assert_eq!(msg.from, None, "presence diffs are not broadcast_from");
        if msg.event == "presence_diff" {
            let _ = self
                .0
                .send(msg.payload.as_json().cloned().expect("json diff"));
        } else {
            panic!("unexpected broadcast {msg:?}");
        }
    }
}

struct Spy {
    topic: String,
    rx: mpsc::UnboundedReceiver<Value>,
}

fn spy(endpoint: &Endpoint, topic: &str) -> Spy {
    let (tx, rx) = mpsc::unbounded_channel();
    endpoint.pubsub().subscribe(topic, Arc::new(SpySub(tx)));
    Spy {
        topic: topic.to_owned(),
        rx,
    }
}

impl Spy {
    /// The next diff; fails after [`TIMEOUT`].
    async fn next(&mut self) -> Value {
        let diff = tokio::time::timeout(TIMEOUT, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no presence_diff on {} within {TIMEOUT:?}", self.topic))
            .expect("spy closed");
        assert_diff_shape(&diff);
        diff
    }

    fn try_next(&mut self) -> Option<Value> {
        self.rx.try_recv().ok()
    }

    /// Nothing was broadcast (diffs of unbatched changes are broadcast
    /// before the change returns, so this is no race).
    fn assert_quiet(&mut self) {
        if let Some(diff) = self.try_next() {
            panic!("unexpected presence_diff on {}: {diff}", self.topic);
        }
    }
}

/// PROTOCOL §7.2: both keys always present; presences hold `metas` whose
/// elements carry a `phx_ref`.
fn assert_diff_shape(diff: &Value) {
    let obj = diff.as_object().expect("diff object");
    assert_eq!(obj.len(), 2, "diff has joins and leaves only: {diff}");
    for side in ["joins", "leaves"] {
        assert_map_shape(&diff[side]);
    }
}

fn assert_map_shape(map: &Value) {
    for (key, presence) in map.as_object().expect("presence map") {
        let metas = presence["metas"].as_array().unwrap_or_else(|| {
            panic!("presence {key} has no metas: {presence}");
        });
        assert!(!metas.is_empty(), "presence {key} with no metas");
        for meta in metas {
            assert!(meta["phx_ref"].is_string(), "meta without phx_ref: {meta}");
        }
    }
}

/// The `phx_ref`s of `key` on one side of a diff.
fn refs(diff: &Value, side: &str, key: &str) -> Vec<String> {
    diff[side][key]["metas"]
        .as_array()
        .map(|metas| {
            metas
                .iter()
                .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn keys(map: &Value) -> Vec<String> {
    map.as_object().unwrap().keys().cloned().collect()
}

fn list(endpoint: &Endpoint, topic: &str) -> Value {
    serde_json::to_value(endpoint.presence().list(topic)).unwrap()
}

/// A presence map with each key's metas in `phx_ref` order: key and meta
/// order carry no meaning (PROTOCOL §7.1).
fn normalized(map: &Value) -> BTreeMap<String, Vec<Value>> {
    map.as_object()
        .expect("presence map")
        .iter()
        .map(|(key, presence)| {
            let mut metas = presence["metas"].as_array().expect("metas").clone();
            metas.sort_by_key(|m| m["phx_ref"].as_str().unwrap_or_default().to_owned());
            (key.clone(), metas)
        })
        .collect()
}

fn with_ref(meta: Value, phx_ref: &str) -> Value {
    let mut meta = meta;
    meta["phx_ref"] = json!(phx_ref);
    meta
}

/// `{"joins": {}, "leaves": {key: {"metas": [meta]}}}`.
fn leave_of(key: &str, meta: Value) -> Value {
    json!({"joins": {}, "leaves": {key: {"metas": [meta]}}})
}

fn join_of(key: &str, meta: Value) -> Value {
    json!({"joins": {key: {"metas": [meta]}}, "leaves": {}})
}

// ---------------------------------------------------------------------------
// phoenix.js's Presence (PROTOCOL §7.4)
// ---------------------------------------------------------------------------

/// A client's view of a topic, kept as phoenix.js's `Presence` does.
#[derive(Debug, Default)]
struct JsPresence {
    state: Map<String, Value>,
    pending: Vec<Value>,
    /// A `presence_state` arrived since the last (re)join.
    synced: bool,
}

fn meta_refs(presence: &Value) -> Vec<String> {
    presence["metas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["phx_ref"].as_str().unwrap_or_default().to_owned())
        .collect()
}

impl JsPresence {
    /// Feeds one message the client received; others topics and events
    /// are ignored.
    fn feed(&mut self, msg: &Message, topic: &str) {
        if msg.topic != topic {
            return;
        }
        let payload = msg.payload.as_json().cloned().unwrap_or(Value::Null);
        match msg.event.as_str() {
            "presence_state" => {
                assert!(msg.join_ref.is_some(), "presence_state is a push: {msg:?}");
                assert_map_shape(&payload);
                self.on_state(&payload);
            }
            "presence_diff" => {
                assert_eq!(msg.join_ref, None, "presence_diff is a broadcast: {msg:?}");
                assert_diff_shape(&payload);
                self.on_diff(&payload);
            }
            _ => {}
        }
    }

    fn on_state(&mut self, state: &Value) {
        self.synced = true;
        self.sync_state(state);
        for diff in std::mem::take(&mut self.pending) {
            self.sync_diff(&diff);
        }
    }

    fn on_diff(&mut self, diff: &Value) {
        if self.synced {
            self.sync_diff(diff);
        } else {
            self.pending.push(diff.clone());
        }
    }

    /// The channel rejoined: diffs wait for its next state.
    fn rejoin(&mut self) {
        self.synced = false;
    }

    fn sync_state(&mut self, new: &Value) {
        let new = new.as_object().expect("state object");
        let mut joins = Map::new();
        let mut leaves = Map::new();
        for (key, presence) in &self.state {
            if !new.contains_key(key) {
                leaves.insert(key.clone(), presence.clone());
            }
        }
        for (key, new_presence) in new {
            match self.state.get(key) {
                Some(current) => {
                    let new_refs = meta_refs(new_presence);
                    let cur_refs = meta_refs(current);
                    let joined: Vec<Value> = new_presence["metas"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|m| !cur_refs.iter().any(|r| m["phx_ref"] == *r))
                        .cloned()
                        .collect();
                    let left: Vec<Value> = current["metas"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|m| !new_refs.iter().any(|r| m["phx_ref"] == *r))
                        .cloned()
                        .collect();
                    if !joined.is_empty() {
                        let mut p = new_presence.clone();
                        p["metas"] = Value::Array(joined);
                        joins.insert(key.clone(), p);
                    }
                    if !left.is_empty() {
                        let mut p = current.clone();
                        p["metas"] = Value::Array(left);
                        leaves.insert(key.clone(), p);
                    }
                }
                None => {
                    joins.insert(key.clone(), new_presence.clone());
                }
            }
        }
        self.sync_diff(&json!({"joins": joins, "leaves": leaves}));
    }

    fn sync_diff(&mut self, diff: &Value) {
        for (key, new_presence) in diff["joins"].as_object().unwrap() {
            let mut presence = new_presence.clone();
            if let Some(current) = self.state.get(key) {
                let joined_refs = meta_refs(&presence);
                let mut metas: Vec<Value> = current["metas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| !joined_refs.iter().any(|r| m["phx_ref"] == *r))
                    .cloned()
                    .collect();
                metas.extend(presence["metas"].as_array().unwrap().iter().cloned());
                presence["metas"] = Value::Array(metas);
            }
            self.state.insert(key.clone(), presence);
        }
        for (key, left) in diff["leaves"].as_object().unwrap() {
            let Some(current) = self.state.get_mut(key) else {
                continue;
            };
            let gone = meta_refs(left);
            current["metas"]
                .as_array_mut()
                .unwrap()
                .retain(|m| !gone.iter().any(|r| m["phx_ref"] == *r));
            if current["metas"].as_array().unwrap().is_empty() {
                self.state.remove(key);
            }
        }
    }

    fn view(&self) -> BTreeMap<String, Vec<Value>> {
        normalized(&Value::Object(self.state.clone()))
    }
}

/// Reads `socket`'s messages into `model` until `done` accepts one (or the
/// model), failing after the socket's timeout.
async fn pump(
    socket: &mut TestSocket,
    topic: &str,
    model: &mut JsPresence,
    mut done: impl FnMut(Option<&Message>, &JsPresence) -> bool,
) {
    if done(None, model) {
        return;
    }
    loop {
        let msg = socket.next_message().await.unwrap_or_else(|| {
            panic!(
                "client on {topic} stuck at {:?} (pending {:?})",
                model.state, model.pending
            )
        });
        model.feed(&msg, topic);
        if done(Some(&msg), model) {
            return;
        }
    }
}

/// Pumps until the model is synced and `key` is in it.
async fn pump_until_key(socket: &mut TestSocket, topic: &str, model: &mut JsPresence, key: &str) {
    pump(socket, topic, model, |_, m| {
        m.synced && m.state.contains_key(key)
    })
    .await;
}

// ---------------------------------------------------------------------------
// TestSocket helpers
// ---------------------------------------------------------------------------

async fn connect(endpoint: &Endpoint, params: &[(&str, &str)]) -> TestSocket {
    TestSocket::connect(endpoint, "/socket", params)
        .await
        .unwrap_or_else(|_| panic!("connect refused"))
}

/// A socket joined to `topic` with `payload`.
async fn joined(endpoint: &Endpoint, topic: &str, payload: Value) -> TestSocket {
    let mut socket = connect(endpoint, &[]).await;
    assert_eq!(socket.join(topic, payload).await, Ok(json!({})));
    socket
}

fn json_of(payload: Payload) -> Value {
    payload.as_json().cloned().expect("json payload")
}

/// Pushes `event` and returns the reply.
async fn call(socket: &mut TestSocket, topic: &str, event: &str, payload: Value) -> Reply {
    let r = socket.push(topic, event, payload).await;
    socket.assert_reply(&r).await
}

/// Pushes `event` and returns the `ok` reply's response.
async fn call_ok(socket: &mut TestSocket, topic: &str, event: &str, payload: Value) -> Value {
    let reply = call(socket, topic, event, payload).await;
    assert_eq!(reply.status, "ok", "{event}: {reply:?}");
    json_of(reply.response)
}

/// Pushes `event`, which must fail with `err`.
async fn call_err(
    socket: &mut TestSocket,
    topic: &str,
    event: &str,
    payload: Value,
    err: PresenceError,
) {
    let reply = call(socket, topic, event, payload).await;
    assert_eq!(
        reply,
        Reply::error(json!({"error": format!("{err:?}")})),
        "{event}"
    );
}

/// Everything the socket sent before this point is in its inbox: the reply
/// to a heartbeat follows every frame queued before it.
async fn barrier(socket: &mut TestSocket) {
    let r = json!("barrier");
    socket
        .send(Message {
            join_ref: None,
            ref_: Some(r.clone()),
            topic: "phoenix".into(),
            event: "heartbeat".into(),
            payload: Payload::Json(json!({})),
        })
        .await;
    socket.assert_reply(&r).await;
}

async fn track(socket: &mut TestSocket, topic: &str, key: &str, meta: Value) -> String {
    let r = call_ok(socket, topic, "track", json!({"key": key, "meta": meta})).await;
    r["ref"].as_str().expect("ref").to_owned()
}

// ---------------------------------------------------------------------------
// Every way a channel ends removes its entries
// ---------------------------------------------------------------------------

/// A socket on `topic` that tracked `key` (meta `{"n": key}`) inside its
/// join; the spy saw the join. Returns the socket and the entry's meta.
async fn tracking(
    endpoint: &Endpoint,
    spy: &mut Spy,
    params: &[(&str, &str)],
    topic: &str,
    key: &str,
) -> (TestSocket, Value) {
    let mut socket = connect(endpoint, params).await;
    assert_eq!(
        socket
            .join(topic, json!({"key": key, "meta": {"n": key}}))
            .await,
        Ok(json!({}))
    );
    let diff = spy.next().await;
    let phx_ref = refs(&diff, "joins", key);
    assert_eq!(phx_ref.len(), 1, "{diff}");
    let meta = json!({"n": key, "phx_ref": phx_ref[0]});
    assert_eq!(diff, join_of(key, meta.clone()));
    assert_eq!(list(endpoint, topic)[key]["metas"], json!([meta]));
    (socket, meta)
}

/// The spy's next diff is the leave of `meta`, and `key` is gone.
async fn assert_left(endpoint: &Endpoint, spy: &mut Spy, topic: &str, key: &str, meta: &Value) {
    assert_eq!(spy.next().await, leave_of(key, meta.clone()));
    assert_eq!(endpoint.presence().get_by_key(topic, key), None);
}

#[tokio::test]
async fn leave_removes_the_entries_and_every_subscriber_sees_the_leave() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let mut watcher = joined(&endpoint, "room:1", json!({})).await;
    let (mut ann, meta) = tracking(&endpoint, &mut spy, &[], "room:1", "ann").await;
    let bob_ref = track(&mut ann, "room:1", "bob", json!({"n": "bob"})).await;
    let bob = json!({"n": "bob", "phx_ref": bob_ref});
    assert_eq!(spy.next().await, join_of("bob", bob.clone()));

    assert_eq!(ann.leave("room:1").await, Reply::status("ok"));
    let diff = spy.next().await;
    assert_eq!(
        normalized(&diff["leaves"]),
        normalized(&json!({"ann": {"metas": [meta]}, "bob": {"metas": [bob]}}))
    );
    assert_eq!(diff["joins"], json!({}));
    assert_eq!(list(&endpoint, "room:1"), json!({}));
    spy.assert_quiet();

    // A client on the topic saw the same diffs, as fast-lane broadcasts.
    for expected in [
        json!({"joins": {"ann": {"metas": [meta]}}, "leaves": {}}),
        json!({"joins": {"bob": {"metas": [bob]}}, "leaves": {}}),
        diff,
    ] {
        assert_eq!(
            json_of(watcher.assert_broadcast("room:1", "presence_diff").await),
            expected
        );
    }
}

#[tokio::test]
async fn stop_removes_the_entries() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let (mut ann, meta) = tracking(&endpoint, &mut spy, &[], "room:1", "ann").await;
    assert_eq!(
        call_ok(&mut ann, "room:1", "stop", json!({})).await,
        json!({})
    );
    assert_left(&endpoint, &mut spy, "room:1", "ann", &meta).await;
}

#[tokio::test]
async fn crash_in_handle_in_removes_the_entries() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let (mut ann, meta) = tracking(&endpoint, &mut spy, &[], "room:1", "ann").await;
    ann.push("room:1", "crash", json!({})).await;
    assert_left(&endpoint, &mut spy, "room:1", "ann", &meta).await;
    // The topic can be joined and tracked again.
    assert_eq!(
        ann.join("room:1", json!({"key": "ann"})).await,
        Ok(json!({}))
    );
    assert_eq!(keys(&spy.next().await["joins"]), ["ann"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_close_removes_the_entries() {
    let server = serve_room(PresenceConfig::default()).await;
    let mut spy = spy(&server.endpoint, "room:1");

    // A WebSocket client goes away without a close frame.
    let mut ws = server.client().await;
    ws.join("room:1", json!({"key": "ws", "meta": {"n": "ws"}}))
        .await;
    let diff = spy.next().await;
    let meta = diff["joins"]["ws"]["metas"][0].clone();
    assert_eq!(diff, join_of("ws", meta.clone()));
    drop(ws);
    assert_left(&server.endpoint, &mut spy, "room:1", "ws", &meta).await;

    // An in-memory socket is dropped.
    let (mem, meta) = tracking(&server.endpoint, &mut spy, &[], "room:1", "mem").await;
    drop(mem);
    assert_left(&server.endpoint, &mut spy, "room:1", "mem", &meta).await;
    assert_eq!(list(&server.endpoint, "room:1"), json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_disconnect_removes_the_entries() {
    let server = serve_room(PresenceConfig::default()).await;
    let mut spy = spy(&server.endpoint, "room:1");
    let mut ws = Client::connect(server.addr, "id=user:1").await;
    ws.join("room:1", json!({"key": "u1", "meta": {"n": "u1"}}))
        .await;
    let ws_meta = spy.next().await["joins"]["u1"]["metas"][0].clone();
    let (_mem, mem_meta) = tracking(
        &server.endpoint,
        &mut spy,
        &[("id", "user:2")],
        "room:1",
        "u2",
    )
    .await;

    server.endpoint.disconnect("user:1");
    assert_eq!(ws.drain_until_close().await, Some(1001));
    assert_left(&server.endpoint, &mut spy, "room:1", "u1", &ws_meta).await;
    server.endpoint.disconnect("user:2");
    assert_left(&server.endpoint, &mut spy, "room:1", "u2", &mem_meta).await;
    assert_eq!(list(&server.endpoint, "room:1"), json!({}));
}

#[tokio::test]
async fn duplicate_join_removes_the_replaced_instance_entries() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let (mut ann, old) = tracking(&endpoint, &mut spy, &[], "room:1", "ann").await;

    // The same socket joins the topic again; the new instance tracks the
    // same key: the old entry leaves, the new one joins, in either order.
    assert_eq!(
        ann.join("room:1", json!({"key": "ann", "meta": {"n": "new"}}))
            .await,
        Ok(json!({}))
    );
    let mut model = JsPresence {
        synced: true,
        ..JsPresence::default()
    };
    model.sync_diff(&join_of("ann", old.clone()));
    let (a, b) = (spy.next().await, spy.next().await);
    let (leave, join) = if a["leaves"] == json!({}) {
        (b, a)
    } else {
        (a, b)
    };
    assert_eq!(leave, leave_of("ann", old.clone()));
    let new = join["joins"]["ann"]["metas"][0].clone();
    assert_eq!(join, join_of("ann", new.clone()));
    assert_eq!(new["n"], "new");
    assert_ne!(new["phx_ref"], old["phx_ref"]);
    model.sync_diff(&leave);
    model.sync_diff(&join);
    assert_eq!(list(&endpoint, "room:1"), json!({"ann": {"metas": [new]}}));
    assert_eq!(model.view(), normalized(&list(&endpoint, "room:1")));
    spy.assert_quiet();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_shutdown_removes_every_entry() {
    let server = serve_room(PresenceConfig::default()).await;
    let mut spies = [
        spy(&server.endpoint, "room:1"),
        spy(&server.endpoint, "room:2"),
    ];
    let mut clients = Vec::new();
    let mut metas = Vec::new();
    for (i, topic) in ["room:1", "room:2", "room:1"].into_iter().enumerate() {
        let key = format!("u{i}");
        let mut c = server.client().await;
        c.join(topic, json!({"key": key, "meta": {"n": key}})).await;
        let spy = &mut spies[usize::from(topic == "room:2")];
        let meta = spy.next().await["joins"][&key]["metas"][0].clone();
        metas.push((topic, key, meta));
        clients.push(c);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.drain_until_close().await }))
        .collect();

    tokio::time::timeout(TIMEOUT, server.endpoint.shutdown())
        .await
        .expect("shutdown did not return");
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(1012));
    }
    // Every channel has ended by now: every leave was sent, once.
    let diffs: Vec<Vec<Value>> = spies
        .iter_mut()
        .map(|spy| std::iter::from_fn(|| spy.try_next()).collect())
        .collect();
    for (topic, key, meta) in metas {
        assert_eq!(server.endpoint.presence().get_by_key(topic, &key), None);
        let diffs = &diffs[usize::from(topic == "room:2")];
        let seen = diffs
            .iter()
            .filter(|d| d["leaves"][&key]["metas"] == json!([meta]))
            .count();
        assert_eq!(seen, 1, "leave of {key} on {topic}: {diffs:?}");
    }
    assert_eq!(list(&server.endpoint, "room:1"), json!({}));
    assert_eq!(list(&server.endpoint, "room:2"), json!({}));
}

#[tokio::test]
async fn join_that_tracks_then_refuses_or_panics_leaves_nothing_behind() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let mut watcher = joined(&endpoint, "room:1", json!({})).await;
    let mut socket = connect(&endpoint, &[]).await;
    for (how, response) in [
        ("refuse", json!({"reason": "refused"})),
        ("panic", json!({"reason": "join crashed"})),
    ] {
        assert_eq!(
            socket
                .join(
                    "room:1",
                    json!({"key": "ghost", how: true, "state": "join"})
                )
                .await,
            Err(response),
            "{how}"
        );
        let join = spy.next().await;
        let meta = join["joins"]["ghost"]["metas"][0].clone();
        assert_eq!(join, join_of("ghost", meta.clone()));
        assert_eq!(spy.next().await, leave_of("ghost", meta.clone()));
        assert_eq!(list(&endpoint, "room:1"), json!({}), "{how}");
        // Other subscribers saw it come and go.
        assert_eq!(
            json_of(watcher.assert_broadcast("room:1", "presence_diff").await),
            join_of("ghost", meta.clone())
        );
        assert_eq!(
            json_of(watcher.assert_broadcast("room:1", "presence_diff").await),
            leave_of("ghost", meta)
        );
    }
    // No presence_state was sent for the refused joins.
    barrier(&mut socket).await;
    let pushed: Vec<_> = socket.unmatched().collect();
    assert!(pushed.is_empty(), "{pushed:?}");
    // The socket can still join the topic and track the key.
    assert_eq!(
        socket.join("room:1", json!({"key": "ghost"})).await,
        Ok(json!({}))
    );
    assert_eq!(keys(&spy.next().await["joins"]), ["ghost"]);
}

#[tokio::test]
async fn entries_tracked_in_terminate_are_removed() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    for end in ["leave", "stop", "crash", "close"] {
        let mut socket = joined(&endpoint, "room:1", json!({"terminate_key": end})).await;
        match end {
            "leave" => assert_eq!(socket.leave("room:1").await, Reply::status("ok")),
            "stop" => {
                call_ok(&mut socket, "room:1", "stop", json!({})).await;
            }
            "crash" => {
                socket.push("room:1", "crash", json!({})).await;
            }
            _ => drop(socket),
        }
        let join = spy.next().await;
        let meta = join["joins"][end]["metas"][0].clone();
        assert_eq!(join, join_of(end, meta.clone()), "{end}");
        assert_eq!(meta["in"], "terminate");
        assert_eq!(spy.next().await, leave_of(end, meta), "{end}");
        assert_eq!(list(&endpoint, "room:1"), json!({}), "{end}");
    }
}

#[tokio::test]
async fn an_untracked_entry_is_not_left_again_when_the_channel_ends() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let (mut ann, meta) = tracking(&endpoint, &mut spy, &[], "room:1", "ann").await;
    assert_eq!(
        call_ok(&mut ann, "room:1", "untrack", json!({"key": "ann"})).await,
        json!({"removed": true})
    );
    assert_eq!(spy.next().await, leave_of("ann", meta));
    assert_eq!(
        call_ok(&mut ann, "room:1", "untrack", json!({"key": "ann"})).await,
        json!({"removed": false})
    );
    spy.assert_quiet();
    assert_eq!(ann.leave("room:1").await, Reply::status("ok"));
    // Once every channel task has ended: the end made no empty or repeated diff.
    tokio::time::timeout(TIMEOUT, endpoint.shutdown())
        .await
        .expect("shutdown did not return");
    spy.assert_quiet();
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tracking_a_key_twice_on_one_channel_is_already_tracked() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let mut a = joined(&endpoint, "room:1", json!({})).await;
    let mut b = joined(&endpoint, "room:1", json!({})).await;
    let first = track(&mut a, "room:1", "k", json!({"n": 1})).await;
    spy.next().await;
    call_err(
        &mut a,
        "room:1",
        "track",
        json!({"key": "k", "meta": {"n": 2}}),
        PresenceError::AlreadyTracked,
    )
    .await;
    spy.assert_quiet();
    assert_eq!(
        list(&endpoint, "room:1"),
        json!({"k": {"metas": [{"n": 1, "phx_ref": first}]}})
    );
    // The same channel under another key, another channel under the same key.
    let other_key = track(&mut a, "room:1", "k2", json!({})).await;
    let other_channel = track(&mut b, "room:1", "k", json!({"n": 3})).await;
    assert_eq!(
        spy.next().await,
        join_of("k2", json!({"phx_ref": other_key}))
    );
    assert_eq!(
        spy.next().await,
        join_of("k", json!({"n": 3, "phx_ref": other_channel}))
    );
    assert_eq!(
        list(&endpoint, "room:1")["k"]["metas"],
        json!([{"n": 1, "phx_ref": first}, {"n": 3, "phx_ref": other_channel}])
    );
    // A key tracked inside join is the channel's: tracking it again conflicts.
    let mut c = connect(&endpoint, &[]).await;
    assert_eq!(c.join("room:1", json!({"key": "k"})).await, Ok(json!({})));
    spy.next().await;
    call_err(
        &mut c,
        "room:1",
        "track",
        json!({"key": "k", "meta": {}}),
        PresenceError::AlreadyTracked,
    )
    .await;
    spy.assert_quiet();
}

#[tokio::test]
async fn updating_an_untracked_key_is_not_tracked() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let mut a = joined(&endpoint, "room:1", json!({})).await;
    let mut b = joined(&endpoint, "room:1", json!({})).await;
    // Tracked by another channel is not tracked by this one.
    track(&mut b, "room:1", "k", json!({"n": 1})).await;
    spy.next().await;
    let before = list(&endpoint, "room:1");
    for key in ["k", "nobody"] {
        call_err(
            &mut a,
            "room:1",
            "update",
            json!({"key": key, "meta": {"n": 2}}),
            PresenceError::NotTracked,
        )
        .await;
        call_err(
            &mut a,
            "room:1",
            "update_with",
            json!({"key": key, "set": {"n": 2}}),
            PresenceError::NotTracked,
        )
        .await;
        assert_eq!(
            call_ok(&mut a, "room:1", "untrack", json!({"key": key})).await,
            json!({"removed": false})
        );
    }
    spy.assert_quiet();
    assert_eq!(list(&endpoint, "room:1"), before);
    // After an untrack the key is not tracked any more.
    track(&mut a, "room:1", "mine", json!({})).await;
    call_ok(&mut a, "room:1", "untrack", json!({"key": "mine"})).await;
    spy.next().await;
    spy.next().await;
    call_err(
        &mut a,
        "room:1",
        "update",
        json!({"key": "mine", "meta": {}}),
        PresenceError::NotTracked,
    )
    .await;
    spy.assert_quiet();
}

#[tokio::test]
async fn metas_that_are_not_objects_are_invalid() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let mut a = joined(&endpoint, "room:1", json!({})).await;
    track(&mut a, "room:1", "k", json!({"n": 1})).await;
    spy.next().await;
    let before = list(&endpoint, "room:1");
    for meta in [
        json!([1]),
        json!("string"),
        json!(7),
        json!(null),
        json!(true),
    ] {
        call_err(
            &mut a,
            "room:1",
            "track",
            json!({"key": "new", "meta": meta}),
            PresenceError::InvalidMeta,
        )
        .await;
        call_err(
            &mut a,
            "room:1",
            "update",
            json!({"key": "k", "meta": meta}),
            PresenceError::InvalidMeta,
        )
        .await;
    }
    spy.assert_quiet();
    assert_eq!(list(&endpoint, "room:1"), before);

    // The same from an owner.
    let owner = endpoint.presence().owner();
    assert_eq!(
        owner.track("room:1", "o", json!([1])),
        Err(PresenceError::InvalidMeta)
    );
    assert_eq!(
        owner.track("room:1", "o", "string"),
        Err(PresenceError::InvalidMeta)
    );
    owner.track("room:1", "o", json!({})).unwrap();
    spy.next().await;
    assert_eq!(
        owner.update("room:1", "o", vec![1, 2]),
        Err(PresenceError::InvalidMeta)
    );
    spy.assert_quiet();
}

#[tokio::test]
async fn metas_over_max_meta_size_are_too_large() {
    const MAX: usize = 64;
    let endpoint = endpoint(PresenceConfig::default().max_meta_size(MAX));
    let mut spy = spy(&endpoint, "room:1");
    let mut a = joined(&endpoint, "room:1", json!({})).await;
    // `{"s":"…"}` is 8 bytes plus the string.
    let sized = |n: usize| json!({"s": "x".repeat(n - 8)});
    assert_eq!(sized(MAX).to_string().len(), MAX);

    let at_limit = track(&mut a, "room:1", "k", sized(MAX)).await;
    spy.next().await;
    for (event, key) in [("track", "other"), ("update", "k")] {
        call_err(
            &mut a,
            "room:1",
            event,
            json!({"key": key, "meta": sized(MAX + 1)}),
            PresenceError::MetaTooLarge {
                size: MAX + 1,
                max: MAX,
            },
        )
        .await;
    }
    call_err(
        &mut a,
        "room:1",
        "update_with",
        json!({"key": "k", "set": {"more": 1}}),
        PresenceError::MetaTooLarge {
            size: MAX + 9,
            max: MAX,
        },
    )
    .await;
    spy.assert_quiet();
    assert_eq!(
        list(&endpoint, "room:1"),
        json!({"k": {"metas": [with_ref(sized(MAX), &at_limit)]}})
    );
    // The tracker's own fields do not count.
    let mut forged = sized(MAX);
    forged["phx_ref"] = json!("forged");
    forged["phx_ref_prev"] = json!("forged");
    call_ok(
        &mut a,
        "room:1",
        "update",
        json!({"key": "k", "meta": forged}),
    )
    .await;
    spy.next().await;

    let owner = endpoint.presence().owner();
    assert_eq!(
        owner.track("room:1", "o", sized(MAX + 1)),
        Err(PresenceError::MetaTooLarge {
            size: MAX + 1,
            max: MAX
        })
    );
    spy.assert_quiet();
}

#[tokio::test]
async fn owner_errors_match_channel_errors() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let owner = endpoint.presence().owner();
    let other = endpoint.presence().owner();
    owner.track("room:1", "k", json!({})).unwrap();
    spy.next().await;
    assert_eq!(
        owner.track("room:1", "k", json!({})),
        Err(PresenceError::AlreadyTracked)
    );
    assert_eq!(
        other.update("room:1", "k", json!({})),
        Err(PresenceError::NotTracked)
    );
    assert_eq!(
        owner.update("room:2", "k", json!({})),
        Err(PresenceError::NotTracked)
    );
    assert!(!other.untrack("room:1", "k"));
    assert!(!owner.untrack("room:2", "k"));
    spy.assert_quiet();
    // Another owner, or another topic, is fine.
    other.track("room:1", "k", json!({})).unwrap();
    owner.track("room:2", "k", json!({})).unwrap();
    assert_eq!(keys(&spy.next().await["joins"]), ["k"]);
    assert_eq!(endpoint.presence().list("room:1")["k"].metas.len(), 2);
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

#[tokio::test]
async fn update_with_keeps_other_fields_and_sets_phx_ref_prev() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let mut a = joined(&endpoint, "room:1", json!({})).await;
    let r1 = track(
        &mut a,
        "room:1",
        "ann",
        json!({"device": "web", "status": "away", "n": 1}),
    )
    .await;
    let v1 = json!({"device": "web", "status": "away", "n": 1, "phx_ref": r1});
    assert_eq!(spy.next().await, join_of("ann", v1.clone()));

    let reply = call_ok(
        &mut a,
        "room:1",
        "update_with",
        json!({"key": "ann", "set": {"status": "online"}, "unset": ["n"]}),
    )
    .await;
    // The closure gets the meta without the tracker's fields.
    assert_eq!(
        reply["saw"],
        json!({"device": "web", "status": "away", "n": 1})
    );
    let r2 = reply["ref"].as_str().unwrap().to_owned();
    assert_ne!(r2, r1);
    let v2 = json!({"device": "web", "status": "online", "phx_ref": r2, "phx_ref_prev": r1});
    assert_eq!(
        spy.next().await,
        json!({"joins": {"ann": {"metas": [v2]}}, "leaves": {"ann": {"metas": [v1]}}})
    );
    assert_eq!(list(&endpoint, "room:1"), json!({"ann": {"metas": [v2]}}));

    // Again: phx_ref_prev is the version just replaced, and is not passed on.
    let reply = call_ok(
        &mut a,
        "room:1",
        "update_with",
        json!({"key": "ann", "set": {"device": "ios"}}),
    )
    .await;
    assert_eq!(reply["saw"], json!({"device": "web", "status": "online"}));
    let r3 = reply["ref"].as_str().unwrap().to_owned();
    let v3 = json!({"device": "ios", "status": "online", "phx_ref": r3, "phx_ref_prev": r2});
    assert_eq!(
        spy.next().await,
        json!({"joins": {"ann": {"metas": [v3]}}, "leaves": {"ann": {"metas": [v2]}}})
    );

    // A plain update replaces the whole meta.
    let r4 = call_ok(
        &mut a,
        "room:1",
        "update",
        json!({"key": "ann", "meta": {"only": true}}),
    )
    .await["ref"]
        .as_str()
        .unwrap()
        .to_owned();
    let v4 = json!({"only": true, "phx_ref": r4, "phx_ref_prev": r3});
    assert_eq!(
        spy.next().await,
        json!({"joins": {"ann": {"metas": [v4]}}, "leaves": {"ann": {"metas": [v3]}}})
    );
    assert_eq!(list(&endpoint, "room:1"), json!({"ann": {"metas": [v4]}}));
    let refs: HashSet<_> = [&r1, &r2, &r3, &r4].into_iter().collect();
    assert_eq!(refs.len(), 4);
    for r in refs {
        assert_eq!(r.len(), 16, "{r}");
    }
}

#[tokio::test]
async fn metas_cannot_forge_the_tracker_fields() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let owner = endpoint.presence().owner();
    let r = owner
        .track(
            "room:1",
            "k",
            json!({"phx_ref": "forged", "phx_ref_prev": "forged", "x": 1}),
        )
        .unwrap();
    assert_ne!(r, "forged");
    assert_eq!(
        spy.next().await,
        join_of("k", json!({"x": 1, "phx_ref": r}))
    );
    let r2 = owner
        .update("room:1", "k", json!({"phx_ref_prev": "forged"}))
        .unwrap();
    assert_eq!(
        list(&endpoint, "room:1"),
        json!({"k": {"metas": [{"phx_ref": r2, "phx_ref_prev": r}]}})
    );
}

#[tokio::test]
async fn list_list_json_and_get_by_key_agree() {
    let endpoint = endpoint(PresenceConfig::default());
    let presence = endpoint.presence();
    let mut spy = spy(&endpoint, "room:1");
    assert_eq!(&presence.list_json("room:nobody")[..], b"{}");
    assert!(presence.list("room:nobody").is_empty());
    assert_eq!(presence.get_by_key("room:nobody", "k"), None);

    let mut a = joined(
        &endpoint,
        "room:1",
        json!({"key": "ann", "meta": {"d": "web"}}),
    )
    .await;
    let mut b = joined(
        &endpoint,
        "room:1",
        json!({"key": "ann", "meta": {"d": "ios"}}),
    )
    .await;
    track(
        &mut b,
        "room:1",
        "bob",
        json!({"nested": {"a": [1, 2]}, "u": "é\"\\"}),
    )
    .await;
    let owner = presence.owner();
    owner.track("room:1", "bot", json!({})).unwrap();
    owner
        .track("room:2", "bot", json!({"other": "topic"}))
        .unwrap();

    let listed = presence.list("room:1");
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["ann", "bob", "bot"]);
    // Metas in tracking order.
    let devices: Vec<_> = listed["ann"].metas.iter().map(|m| m["d"].clone()).collect();
    assert_eq!(devices, [json!("web"), json!("ios")]);
    let as_json: Value = serde_json::from_slice(&presence.list_json("room:1")).unwrap();
    assert_eq!(as_json, serde_json::to_value(&listed).unwrap());
    for (key, metas) in &listed {
        assert_eq!(presence.get_by_key("room:1", key).as_ref(), Some(metas));
        // A channel reads the same.
        assert_eq!(
            call_ok(&mut a, "room:1", "get", json!({"key": key})).await,
            json!({"found": metas})
        );
    }
    assert_eq!(presence.get_by_key("room:1", "nobody"), None);
    assert_eq!(
        call_ok(&mut a, "room:1", "get", json!({"key": "nobody"})).await,
        json!({"found": null})
    );
    assert_eq!(
        call_ok(&mut a, "room:1", "list", json!({})).await,
        serde_json::to_value(&listed).unwrap()
    );
    assert_eq!(
        list(&endpoint, "room:2")["bot"]["metas"][0]["other"],
        "topic"
    );

    // Emptied topics list as `{}` again.
    drop(owner);
    drop(a);
    drop(b);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !presence.list("room:1").is_empty() {
        spy.next().await;
        assert!(tokio::time::Instant::now() < deadline);
    }
    assert_eq!(&presence.list_json("room:1")[..], b"{}");
    assert_eq!(&presence.list_json("room:2")[..], b"{}");
}

// ---------------------------------------------------------------------------
// PresenceOwner
// ---------------------------------------------------------------------------

#[tokio::test]
async fn dropping_an_owner_removes_its_entries_on_every_topic() {
    let endpoint = endpoint(PresenceConfig::default());
    let topics = ["room:a", "room:b", "room:c"];
    let mut spies: Vec<Spy> = topics.iter().map(|t| spy(&endpoint, t)).collect();
    let owner = endpoint.presence().owner();
    let keep = endpoint.presence().owner();
    let mut metas = Vec::new();
    for (topic, spy) in topics.iter().zip(&mut spies) {
        let r = owner.track(topic, "bot", json!({"t": topic})).unwrap();
        let r2 = owner.track(topic, "bot2", json!({})).unwrap();
        keep.track(topic, "stays", json!({})).unwrap();
        let meta = json!({"t": topic, "phx_ref": r});
        assert_eq!(spy.next().await, join_of("bot", meta.clone()));
        assert_eq!(spy.next().await, join_of("bot2", json!({"phx_ref": r2})));
        spy.next().await;
        metas.push((meta, r2));
    }

    drop(owner);
    for ((topic, spy), (meta, r2)) in topics.iter().zip(&mut spies).zip(metas) {
        let diff = spy.next().await;
        assert_eq!(
            normalized(&diff["leaves"]),
            normalized(&json!({"bot": {"metas": [meta]}, "bot2": {"metas": [{"phx_ref": r2}]}}))
        );
        assert_eq!(diff["joins"], json!({}));
        spy.assert_quiet();
        assert_eq!(keys(&list(&endpoint, topic)), ["stays"]);
    }
}

#[tokio::test]
async fn untrack_all_removes_everything_and_the_owner_stays_usable() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy_a = spy(&endpoint, "room:a");
    let mut spy_b = spy(&endpoint, "room:b");
    let owner = endpoint.presence().owner();
    let ra = owner.track("room:a", "bot", json!({})).unwrap();
    let rb = owner.track("room:b", "bot", json!({})).unwrap();
    spy_a.next().await;
    spy_b.next().await;

    owner.untrack_all();
    assert_eq!(spy_a.next().await, leave_of("bot", json!({"phx_ref": ra})));
    assert_eq!(spy_b.next().await, leave_of("bot", json!({"phx_ref": rb})));
    assert!(endpoint.presence().list("room:a").is_empty());
    assert!(endpoint.presence().list("room:b").is_empty());
    owner.untrack_all();
    spy_a.assert_quiet();
    spy_b.assert_quiet();

    let again = owner.track("room:a", "bot", json!({})).unwrap();
    assert_eq!(
        spy_a.next().await,
        join_of("bot", json!({"phx_ref": again}))
    );
    assert!(owner.untrack("room:a", "bot"));
    assert_eq!(
        spy_a.next().await,
        leave_of("bot", json!({"phx_ref": again}))
    );
    assert!(!owner.untrack("room:a", "bot"));
    drop(owner);
    spy_a.assert_quiet();
    spy_b.assert_quiet();
}

// ---------------------------------------------------------------------------
// presence_state
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_state_pushed_in_join_follows_the_join_reply() {
    let server = serve_room(PresenceConfig::default()).await;
    let bot = server.endpoint.presence().owner();
    bot.track("room:j", "bot", json!({"kind": "bot"})).unwrap();
    let mut c = server.client().await;
    let (jr, reply) = c
        .join_raw(
            "room:j",
            json!({"key": "ann", "meta": {"d": "web"}, "state": "join"}),
        )
        .await;
    assert_eq!(reply, ok(json!({})));
    let state = c.recv().await;
    assert_eq!(
        state,
        json!([
            jr,
            null,
            "room:j",
            "presence_state",
            list(&server.endpoint, "room:j")
        ])
    );
    assert_eq!(keys(&state[4]), ["ann", "bot"]);
    // Tracked before it subscribed: no diff of its own join.
    c.barrier().await;

    // Later changes arrive as diffs.
    let r = bot.track("room:j", "bot2", json!({})).unwrap();
    assert_eq!(
        c.recv().await,
        json!([
            null,
            null,
            "room:j",
            "presence_diff",
            join_of("bot2", json!({"phx_ref": r}))
        ])
    );
    // A push from handle_in goes out at once, before the event's reply.
    let r = c.push(Some(&jr), "room:j", "state", json!({})).await;
    assert_eq!(
        c.recv().await,
        json!([
            jr,
            null,
            "room:j",
            "presence_state",
            list(&server.endpoint, "room:j")
        ])
    );
    assert_eq!(
        c.recv().await,
        json!([jr, r, "room:j", "phx_reply", ok(json!({}))])
    );
    c.barrier().await;
}

#[tokio::test]
async fn tracking_after_the_join_gives_the_joiner_its_state_and_its_own_diff() {
    let endpoint = endpoint(PresenceConfig::default());
    let owner = endpoint.presence().owner();
    owner.track("room:1", "bot", json!({})).unwrap();
    let mut socket = joined(
        &endpoint,
        "room:1",
        json!({"after_key": "ann", "meta": {"d": "web"}, "state": "after"}),
    )
    .await;
    // The diff of its own join, then the state that already holds it: the
    // client algorithm makes the order harmless.
    let diff = json_of(socket.assert_broadcast("room:1", "presence_diff").await);
    assert_eq!(keys(&diff["joins"]), ["ann"]);
    let state = json_of(socket.assert_push("room:1", "presence_state").await);
    assert_eq!(state, list(&endpoint, "room:1"));
    let mut model = JsPresence::default();
    model.on_diff(&diff);
    assert!(model.state.is_empty(), "diffs wait for the state");
    model.on_state(&state);
    assert_eq!(model.view(), normalized(&list(&endpoint, "room:1")));
}

// ---------------------------------------------------------------------------
// Large topics: the list is encoded once until the topic changes
// ---------------------------------------------------------------------------

/// A WebSocket client reading raw text frames.
struct Raw(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Raw {
    async fn connect(addr: SocketAddr, vsn: &str) -> Raw {
        let url = format!("ws://{addr}/socket/websocket?vsn={vsn}");
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        Raw(ws)
    }

    async fn send(&mut self, frame: Value) {
        self.0
            .send(WsMessage::text(frame.to_string()))
            .await
            .expect("send");
    }

    async fn text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.0.next())
                .await
                .expect("no frame in time")
                .expect("connection ended")
                .expect("websocket error");
            match msg {
                WsMessage::Text(text) => return text.as_str().to_owned(),
                WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    async fn json(&mut self) -> Value {
        serde_json::from_str(&self.text().await).expect("json frame")
    }

    /// Joins `topic` (V2) and returns the raw payload of the
    /// `presence_state` that follows the reply.
    async fn join_for_state(&mut self, topic: &str, join_ref: &str) -> String {
        self.send(json!([join_ref, join_ref, topic, "phx_join", {"state": "join"}]))
            .await;
        assert_eq!(
            self.json().await,
            json!([join_ref, join_ref, topic, "phx_reply", ok(json!({}))])
        );
        let text = self.text().await;
        let prefix = format!("[\"{join_ref}\",null,\"{topic}\",\"presence_state\",");
        assert!(text.starts_with(&prefix), "{text}");
        assert!(text.ends_with(']'));
        text[prefix.len()..text.len() - 1].to_owned()
    }
}

/// Tracks enough entries on `topic` that its list exceeds 4 KiB.
fn fill_large(owner: &PresenceOwner, topic: &str) {
    for i in 0..60 {
        owner
            .track(
                topic,
                &format!("user-{i:02}"),
                json!({"name": format!("{i}-{}", "x".repeat(80)), "i": i}),
            )
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_topic_joiners_share_one_encoded_list_until_it_changes() {
    let server = serve_room(PresenceConfig::default()).await;
    let presence = server.endpoint.presence();
    let owner = presence.owner();
    fill_large(&owner, "room:big");
    let cached = presence.list_json("room:big");
    assert!(cached.len() >= 4096, "{} bytes", cached.len());
    // The same encoding, not an equal one.
    assert_eq!(presence.list_json("room:big").as_ptr(), cached.as_ptr());

    let mut c1 = Raw::connect(server.addr, "2.0.0").await;
    let mut c2 = Raw::connect(server.addr, "2.0.0").await;
    let s1 = c1.join_for_state("room:big", "1").await;
    let s2 = c2.join_for_state("room:big", "7").await;
    assert_eq!(s1, s2);
    assert_eq!(s1.as_bytes(), &cached[..]);
    assert_eq!(
        serde_json::from_str::<Value>(&s1).unwrap(),
        list(&server.endpoint, "room:big")
    );

    // A change: the next joiner's list holds it.
    let r = owner.track("room:big", "newcomer", json!({})).unwrap();
    for c in [&mut c1, &mut c2] {
        assert_eq!(
            c.json().await,
            json!([
                null,
                null,
                "room:big",
                "presence_diff",
                join_of("newcomer", json!({"phx_ref": r}))
            ])
        );
    }
    let fresh = presence.list_json("room:big");
    assert_ne!(fresh.as_ptr(), cached.as_ptr());
    let mut c3 = Raw::connect(server.addr, "2.0.0").await;
    let s3 = c3.join_for_state("room:big", "1").await;
    let state: Value = serde_json::from_str(&s3).unwrap();
    assert_eq!(state, list(&server.endpoint, "room:big"));
    assert_eq!(state["newcomer"]["metas"], json!([{"phx_ref": r}]));
    assert_eq!(s3.as_bytes(), &fresh[..]);
    // No change since: the next joiner gets the very same bytes.
    let mut c4 = Raw::connect(server.addr, "2.0.0").await;
    assert_eq!(c4.join_for_state("room:big", "2").await, s3);

    // An untrack invalidates as well.
    assert!(owner.untrack("room:big", "user-00"));
    let mut c5 = Raw::connect(server.addr, "2.0.0").await;
    let s5: Value = serde_json::from_str(&c5.join_for_state("room:big", "1").await).unwrap();
    assert_eq!(s5, list(&server.endpoint, "room:big"));
    assert!(s5.get("user-00").is_none());
}

#[tokio::test(start_paused = true)]
async fn large_topic_with_batching_converges_from_a_cached_list() {
    const WINDOW: Duration = Duration::from_millis(50);
    let endpoint = endpoint(PresenceConfig::default().diff_batch_window(WINDOW));
    let presence = endpoint.presence();
    let mut spy = spy(&endpoint, "room:big");
    let owner = presence.owner();
    fill_large(&owner, "room:big");
    assert_eq!(spy.next().await["joins"].as_object().unwrap().len(), 60);
    let cached = presence.list_json("room:big");
    assert!(cached.len() >= 4096);

    // Changes within the next window: the cached list stays until their
    // diff goes out, and joiners get it; the diff brings them up to date.
    let late = owner.track("room:big", "late", json!({})).unwrap();
    assert!(owner.untrack("room:big", "user-03"));
    owner
        .update("room:big", "user-04", json!({"updated": true}))
        .unwrap();
    assert!(presence.get_by_key("room:big", "late").is_some());
    assert_eq!(presence.list_json("room:big").as_ptr(), cached.as_ptr());

    let mut joiners = Vec::new();
    for _ in 0..2 {
        let mut socket = joined(&endpoint, "room:big", json!({"state": "after"})).await;
        let state = json_of(socket.assert_push("room:big", "presence_state").await);
        assert_eq!(state, serde_json::from_slice::<Value>(&cached).unwrap());
        let mut model = JsPresence::default();
        model.on_state(&state);
        joiners.push((socket, model));
    }
    // The window's diff goes out: it drops the cached list, and a joiner
    // now gets the fresh one.
    let diff = spy.next().await;
    assert_eq!(keys(&diff["joins"]), ["late", "user-04"]);
    assert_eq!(keys(&diff["leaves"]), ["user-03", "user-04"]);
    assert_eq!(refs(&diff, "joins", "late"), [late]);
    let fresh = presence.list_json("room:big");
    assert_ne!(fresh.as_ptr(), cached.as_ptr());
    assert_eq!(
        serde_json::from_slice::<Value>(&fresh).unwrap(),
        list(&endpoint, "room:big")
    );
    let mut after = joined(&endpoint, "room:big", json!({"state": "after"})).await;
    let mut model = JsPresence::default();
    pump_until_key(&mut after, "room:big", &mut model, "late").await;
    joiners.push((after, model));

    // More changes, over several windows.
    owner.track("room:big", "later", json!({})).unwrap();
    tokio::time::advance(WINDOW * 2).await;
    assert!(owner.untrack("room:big", "late"));
    owner.track("room:big", "last", json!({})).unwrap();
    for (socket, model) in &mut joiners {
        pump_until_key(socket, "room:big", model, "last").await;
        assert!(!model.state.contains_key("late"));
        assert_eq!(model.view(), normalized(&list(&endpoint, "room:big")));
    }
}

// ---------------------------------------------------------------------------
// Batching
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn changes_within_a_window_arrive_as_one_diff_per_topic() {
    const WINDOW: Duration = Duration::from_millis(40);
    let endpoint = endpoint(PresenceConfig::default().diff_batch_window(WINDOW));
    let mut spy1 = spy(&endpoint, "room:1");
    let mut spy2 = spy(&endpoint, "room:2");
    let mut watcher = joined(&endpoint, "room:1", json!({})).await;
    let owner = endpoint.presence().owner();
    let mut sockets = Vec::new();

    let start = tokio::time::Instant::now();
    let mut expected = Map::new();
    for i in 0..5 {
        let key = format!("o{i}");
        let r = owner.track("room:1", &key, json!({"i": i})).unwrap();
        expected.insert(key, json!({"metas": [{"i": i, "phx_ref": r}]}));
    }
    // Channels' changes batch together with the owner's.
    for i in 0..3 {
        let key = format!("c{i}");
        let mut socket = joined(&endpoint, "room:1", json!({})).await;
        let r = track(&mut socket, "room:1", &key, json!({})).await;
        expected.insert(key, json!({"metas": [{"phx_ref": r}]}));
        sockets.push(socket);
    }
    owner.track("room:2", "elsewhere", json!({})).unwrap();
    spy1.assert_quiet();
    spy2.assert_quiet();

    let diff = spy1.next().await;
    assert!(
        start.elapsed() >= WINDOW,
        "sent after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < WINDOW * 2,
        "sent after {:?}",
        start.elapsed()
    );
    assert_eq!(diff, json!({"joins": expected, "leaves": {}}));
    assert_eq!(keys(&spy2.next().await["joins"]), ["elsewhere"]);
    assert_eq!(
        json_of(watcher.assert_broadcast("room:1", "presence_diff").await),
        diff
    );
    for socket in &mut sockets {
        assert_eq!(
            json_of(socket.assert_broadcast("room:1", "presence_diff").await),
            diff
        );
    }
    spy1.assert_quiet();

    // The next window starts with the next change.
    tokio::time::advance(WINDOW * 3).await;
    let start = tokio::time::Instant::now();
    let r = owner.track("room:1", "next", json!({})).unwrap();
    assert_eq!(spy1.next().await, join_of("next", json!({"phx_ref": r})));
    assert!(start.elapsed() >= WINDOW);
    spy1.assert_quiet();
    spy2.assert_quiet();
}

#[tokio::test(start_paused = true)]
async fn a_track_and_untrack_within_a_window_appear_in_both() {
    let endpoint = endpoint(PresenceConfig::default().diff_batch_window(Duration::from_millis(30)));
    let mut spy = spy(&endpoint, "room:1");
    let mut watcher = joined(&endpoint, "room:1", json!({"state": "after"})).await;
    let mut model = JsPresence::default();
    pump(&mut watcher, "room:1", &mut model, |_, m| m.synced).await;
    let owner = endpoint.presence().owner();

    let brief = owner.track("room:1", "brief", json!({"n": 1})).unwrap();
    assert!(owner.untrack("room:1", "brief"));
    // An update chain: every version joins, all but the last leave.
    let a = owner.track("room:1", "k", json!({"v": 1})).unwrap();
    let b = owner.update("room:1", "k", json!({"v": 2})).unwrap();
    let c = owner.update("room:1", "k", json!({"v": 3})).unwrap();
    spy.assert_quiet();

    let diff = spy.next().await;
    let brief_meta = json!({"n": 1, "phx_ref": brief});
    assert_eq!(
        diff,
        json!({
            "joins": {
                "brief": {"metas": [brief_meta]},
                "k": {"metas": [
                    {"v": 1, "phx_ref": a},
                    {"v": 2, "phx_ref": b, "phx_ref_prev": a},
                    {"v": 3, "phx_ref": c, "phx_ref_prev": b},
                ]},
            },
            "leaves": {
                "brief": {"metas": [brief_meta]},
                "k": {"metas": [
                    {"v": 1, "phx_ref": a},
                    {"v": 2, "phx_ref": b, "phx_ref_prev": a},
                ]},
            },
        })
    );
    spy.assert_quiet();
    pump_until_key(&mut watcher, "room:1", &mut model, "k").await;
    assert_eq!(model.view(), normalized(&list(&endpoint, "room:1")));
    assert_eq!(
        list(&endpoint, "room:1"),
        json!({"k": {"metas": [{"v": 3, "phx_ref": c, "phx_ref_prev": b}]}})
    );
}

#[tokio::test]
async fn without_a_window_every_change_is_its_own_diff() {
    let endpoint = endpoint(PresenceConfig::default());
    let mut spy = spy(&endpoint, "room:1");
    let owner = endpoint.presence().owner();
    let mut rs = Vec::new();
    for i in 0..3 {
        let key = format!("k{i}");
        let r = owner.track("room:1", &key, json!({})).unwrap();
        // Sent before track returns.
        assert_eq!(spy.try_next(), Some(join_of(&key, json!({"phx_ref": r}))));
        rs.push(r);
    }
    let r = owner.update("room:1", "k0", json!({"u": 1})).unwrap();
    assert_eq!(
        spy.try_next(),
        Some(json!({
            "joins": {"k0": {"metas": [{"u": 1, "phx_ref": r, "phx_ref_prev": rs[0]}]}},
            "leaves": {"k0": {"metas": [{"phx_ref": rs[0]}]}},
        }))
    );
    assert!(owner.untrack("room:1", "k1"));
    assert_eq!(
        spy.try_next(),
        Some(leave_of("k1", json!({"phx_ref": rs[1]})))
    );
    spy.assert_quiet();
}

/// At shutdown, a batched diff still waiting for its window is flushed, and
/// the leaves of the ending channels go out at once: a subscriber must still
/// get them in event order (PROTOCOL §7.3), or its view keeps a ghost.
#[tokio::test]
async fn shutdown_keeps_batched_diffs_in_event_order() {
    let endpoint = endpoint(PresenceConfig::default().diff_batch_window(Duration::from_secs(60)));
    let mut spy = spy(&endpoint, "room:1");
    let mut socket = joined(&endpoint, "room:1", json!({})).await;
    track(&mut socket, "room:1", "ann", json!({})).await;
    spy.assert_quiet();

    tokio::time::timeout(TIMEOUT, endpoint.shutdown())
        .await
        .expect("shutdown did not return");
    assert!(endpoint.presence().list("room:1").is_empty());
    let mut view = JsPresence {
        synced: true,
        ..JsPresence::default()
    };
    let mut diffs = Vec::new();
    while let Some(diff) = spy.try_next() {
        view.on_diff(&diff);
        diffs.push(diff);
    }
    assert!(
        view.state.is_empty(),
        "the subscriber's view keeps {:?} after the diffs {diffs:?}",
        view.state
    );
}

// ---------------------------------------------------------------------------
// Randomized convergence
// ---------------------------------------------------------------------------

/// SplitMix64: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const TOPICS: [&str; 3] = ["room:r0", "room:r1", "room:r2"];
const KEYS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// What one tracker (a channel or an owner) tracks: (topic, key) → the
/// full meta the list must show.
type Tracked = HashMap<(String, String), Value>;

/// A client with a channel on one topic, and its phoenix.js view.
struct ClientActor {
    socket: TestSocket,
    topic: &'static str,
    model: JsPresence,
    tracked: Tracked,
    /// Joined without a `presence_state` yet: diffs wait in the model.
    awaiting_state: bool,
}

struct OwnerActor {
    owner: PresenceOwner,
    tracked: Tracked,
}

/// Every diff of a topic, to wait for the leaves of an ending channel.
struct TopicLog {
    spy: Spy,
    left: HashSet<String>,
}

impl TopicLog {
    async fn wait_left(&mut self, refs: &[String]) {
        while !refs.iter().all(|r| self.left.contains(r)) {
            let diff = self.spy.next().await;
            for presence in diff["leaves"].as_object().unwrap().values() {
                self.left.extend(meta_refs(presence));
            }
        }
    }

    async fn wait_key(&mut self, key: &str) {
        loop {
            let diff = self.spy.next().await;
            for presence in diff["leaves"].as_object().unwrap().values() {
                self.left.extend(meta_refs(presence));
            }
            if diff["joins"].get(key).is_some() {
                return;
            }
        }
    }
}

fn user_meta(meta: &Value) -> Value {
    let mut meta = meta.clone();
    let map = meta.as_object_mut().unwrap();
    map.remove("phx_ref");
    map.remove("phx_ref_prev");
    meta
}

fn tracked_refs(tracked: &Tracked) -> Vec<String> {
    tracked
        .values()
        .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
        .collect()
}

/// Joins `topic` as phoenix.js's client would see it, in one of three ways:
/// with the state pushed after the join; with the state left for a later
/// `state` event (diffs wait for it); or tracking a key right after the
/// join, then pushing the state (the client gets its own diff first).
async fn join_actor(
    rng: &mut Rng,
    endpoint: &Endpoint,
    topic: &'static str,
    id: usize,
) -> ClientActor {
    let mut actor = ClientActor {
        socket: connect(endpoint, &[]).await,
        topic,
        model: JsPresence::default(),
        tracked: Tracked::new(),
        awaiting_state: false,
    };
    rejoin_actor(rng, endpoint, &mut actor, id).await;
    actor
}

async fn rejoin_actor(rng: &mut Rng, endpoint: &Endpoint, actor: &mut ClientActor, id: usize) {
    let topic = actor.topic;
    match rng.below(3) {
        0 => {
            let joined = actor.socket.join(topic, json!({"state": "after"})).await;
            assert_eq!(joined, Ok(json!({})));
        }
        1 => {
            assert_eq!(actor.socket.join(topic, json!({})).await, Ok(json!({})));
            actor.awaiting_state = true;
        }
        _ => {
            let key = KEYS[rng.below(KEYS.len())];
            let meta = json!({"joiner": id, "pad": "j".repeat(250 + rng.below(400))});
            let payload = json!({"after_key": key, "meta": meta, "state": "after"});
            assert_eq!(actor.socket.join(topic, payload).await, Ok(json!({})));
            // The state follows the track: once it is in, the entry is.
            pump(&mut actor.socket, topic, &mut actor.model, |_, m| m.synced).await;
            let metas = endpoint.presence().get_by_key(topic, key).expect("tracked");
            let mine = metas
                .metas
                .into_iter()
                .find(|m| m.get("joiner") == Some(&json!(id)))
                .expect("own entry");
            actor
                .tracked
                .insert((topic.to_owned(), key.to_owned()), Value::Object(mine));
        }
    }
}

/// The client's channel crashes, its entries go, and it rejoins (phoenix.js
/// keeps its Presence across the rejoin).
async fn crash_and_rejoin(
    rng: &mut Rng,
    endpoint: &Endpoint,
    actor: &mut ClientActor,
    log: &mut TopicLog,
    id: usize,
) {
    let topic = actor.topic;
    // phoenix.js replays diffs still waiting from the previous join after
    // the next state, which is only right if that join got its state:
    // servers push one after every join.
    send_state(actor).await;
    actor.socket.push(topic, "crash", json!({})).await;
    pump(&mut actor.socket, topic, &mut actor.model, |msg, _| {
        msg.is_some_and(|m| m.topic == topic && m.event == "phx_error")
    })
    .await;
    let refs = tracked_refs(&actor.tracked);
    actor.tracked.clear();
    log.wait_left(&refs).await;
    actor.model.rejoin();
    rejoin_actor(rng, endpoint, actor, id).await;
}

/// Pushes the state to a client that joined without it.
async fn send_state(actor: &mut ClientActor) {
    if std::mem::take(&mut actor.awaiting_state) {
        call_ok(&mut actor.socket, actor.topic, "state", json!({})).await;
    }
}

/// One random track / update / update_with / untrack by a channel.
async fn channel_op(rng: &mut Rng, actor: &mut ClientActor, step: usize) {
    let key = KEYS[rng.below(KEYS.len())];
    let topic = actor.topic;
    let slot = (topic.to_owned(), key.to_owned());
    let current = actor.tracked.get(&slot).cloned();
    let pad = "p".repeat(250 + rng.below(400));
    match rng.below(4) {
        0 => {
            let meta = json!({"step": step, "pad": pad});
            let payload = json!({"key": key, "meta": meta});
            if current.is_some() {
                call_err(
                    &mut actor.socket,
                    topic,
                    "track",
                    payload,
                    PresenceError::AlreadyTracked,
                )
                .await;
            } else {
                let r = call_ok(&mut actor.socket, topic, "track", payload).await;
                actor
                    .tracked
                    .insert(slot, with_ref(meta, r["ref"].as_str().unwrap()));
            }
        }
        1 => {
            let meta = json!({"step": step, "updated": true, "pad": pad});
            let payload = json!({"key": key, "meta": meta});
            match current {
                None => {
                    call_err(
                        &mut actor.socket,
                        topic,
                        "update",
                        payload,
                        PresenceError::NotTracked,
                    )
                    .await
                }
                Some(old) => {
                    let r = call_ok(&mut actor.socket, topic, "update", payload).await;
                    let mut meta = with_ref(meta, r["ref"].as_str().unwrap());
                    meta["phx_ref_prev"] = old["phx_ref"].clone();
                    actor.tracked.insert(slot, meta);
                }
            }
        }
        2 => {
            let payload = json!({"key": key, "set": {"with": step}});
            match current {
                None => {
                    call_err(
                        &mut actor.socket,
                        topic,
                        "update_with",
                        payload,
                        PresenceError::NotTracked,
                    )
                    .await
                }
                Some(old) => {
                    let r = call_ok(&mut actor.socket, topic, "update_with", payload).await;
                    assert_eq!(r["saw"], user_meta(&old));
                    let mut meta = user_meta(&old);
                    meta["with"] = json!(step);
                    let mut meta = with_ref(meta, r["ref"].as_str().unwrap());
                    meta["phx_ref_prev"] = old["phx_ref"].clone();
                    actor.tracked.insert(slot, meta);
                }
            }
        }
        _ => {
            let r = call_ok(&mut actor.socket, topic, "untrack", json!({"key": key})).await;
            assert_eq!(r, json!({"removed": current.is_some()}));
            actor.tracked.remove(&slot);
        }
    }
}

/// One random operation of an owner.
fn owner_op(rng: &mut Rng, actor: &mut OwnerActor, step: usize) {
    let topic = TOPICS[rng.below(TOPICS.len())];
    let key = KEYS[rng.below(KEYS.len())];
    let slot = (topic.to_owned(), key.to_owned());
    let current = actor.tracked.get(&slot).cloned();
    let meta = json!({"owner_step": step, "pad": "o".repeat(250 + rng.below(400))});
    match rng.below(4) {
        0 | 1 => match (actor.owner.track(topic, key, &meta), current) {
            (Ok(r), None) => {
                actor.tracked.insert(slot, with_ref(meta, &r));
            }
            (Err(PresenceError::AlreadyTracked), Some(_)) => {}
            (result, current) => panic!("track {topic} {key}: {result:?} with {current:?}"),
        },
        2 => match (actor.owner.update(topic, key, &meta), current) {
            (Ok(r), Some(old)) => {
                let mut meta = with_ref(meta, &r);
                meta["phx_ref_prev"] = old["phx_ref"].clone();
                actor.tracked.insert(slot, meta);
            }
            (Err(PresenceError::NotTracked), None) => {}
            (result, current) => panic!("update {topic} {key}: {result:?} with {current:?}"),
        },
        _ => {
            assert_eq!(actor.owner.untrack(topic, key), current.is_some());
            actor.tracked.remove(&slot);
        }
    }
}

/// The list every tracker's records say each topic must show.
fn expected_lists<'a>(trackers: impl Iterator<Item = &'a Tracked>) -> HashMap<String, Value> {
    let mut lists: HashMap<String, Map<String, Value>> = HashMap::new();
    for tracked in trackers {
        for ((topic, key), meta) in tracked {
            let presence = lists
                .entry(topic.clone())
                .or_default()
                .entry(key.clone())
                .or_insert_with(|| json!({"metas": []}));
            presence["metas"].as_array_mut().unwrap().push(meta.clone());
        }
    }
    lists
        .into_iter()
        .map(|(t, m)| (t, Value::Object(m)))
        .collect()
}

async fn random_run(seed: u64, window: Option<Duration>) {
    const STEPS: usize = 250;
    eprintln!("presence random run: seed {seed}, window {window:?}");
    let mut rng = Rng(seed);
    let mut config = PresenceConfig::default().pool_size(2);
    if let Some(window) = window {
        config = config.diff_batch_window(window);
    }
    let endpoint = endpoint(config);
    let mut logs: HashMap<&str, TopicLog> = TOPICS
        .iter()
        .map(|t| {
            (
                *t,
                TopicLog {
                    spy: spy(&endpoint, t),
                    left: HashSet::new(),
                },
            )
        })
        .collect();
    let mut clients = Vec::new();
    let mut ids = 0..;
    for topic in TOPICS.iter().chain(&TOPICS[..2]) {
        let id = ids.next().unwrap();
        clients.push(join_actor(&mut rng, &endpoint, topic, id).await);
    }
    let mut owners: Vec<OwnerActor> = (0..2)
        .map(|_| OwnerActor {
            owner: endpoint.presence().owner(),
            tracked: Tracked::new(),
        })
        .collect();

    for step in 0..STEPS {
        match rng.below(100) {
            0..=41 if !clients.is_empty() => {
                let i = rng.below(clients.len());
                channel_op(&mut rng, &mut clients[i], step).await;
            }
            42..=69 => {
                let i = rng.below(owners.len());
                owner_op(&mut rng, &mut owners[i], step);
            }
            70..=74 => {
                let topic = TOPICS[rng.below(TOPICS.len())];
                let id = ids.next().unwrap();
                clients.push(join_actor(&mut rng, &endpoint, topic, id).await);
            }
            75..=76 if !clients.is_empty() => {
                // A client leaves: its entries go.
                let mut actor = clients.swap_remove(rng.below(clients.len()));
                assert_eq!(actor.socket.leave(actor.topic).await, Reply::status("ok"));
                let refs = tracked_refs(&actor.tracked);
                logs.get_mut(actor.topic).unwrap().wait_left(&refs).await;
            }
            77..=80 if !clients.is_empty() => {
                let i = rng.below(clients.len());
                let log = logs.get_mut(clients[i].topic).unwrap();
                let id = ids.next().unwrap();
                crash_and_rejoin(&mut rng, &endpoint, &mut clients[i], log, id).await;
            }
            81..=82 => {
                let i = rng.below(owners.len());
                if rng.below(2) == 0 {
                    owners[i].owner.untrack_all();
                } else {
                    owners[i].owner = endpoint.presence().owner();
                }
                owners[i].tracked.clear();
            }
            83..=87 if !clients.is_empty() => {
                let i = rng.below(clients.len());
                send_state(&mut clients[i]).await;
            }
            _ => {
                if let Some(window) = window {
                    let ms = rng.below(2 * window.as_millis() as usize + 1);
                    tokio::time::advance(Duration::from_millis(ms as u64)).await;
                } else {
                    // Unbatched, the encoded list (cached once large) is
                    // always the list; joiners get it.
                    let topic = TOPICS[rng.below(TOPICS.len())];
                    let encoded = endpoint.presence().list_json(topic);
                    let encoded: Value = serde_json::from_slice(&encoded).unwrap();
                    assert_eq!(encoded, list(&endpoint, topic), "seed {seed}");
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    for actor in &mut clients {
        send_state(actor).await;
    }
    // A last change on every topic: once a view has it, it has every change.
    let marker = endpoint.presence().owner();
    for topic in TOPICS {
        marker.track(topic, "~marker", json!({})).unwrap();
        logs.get_mut(topic).unwrap().wait_key("~marker").await;
    }
    let mut expected = expected_lists(
        clients
            .iter()
            .map(|c| &c.tracked)
            .chain(owners.iter().map(|o| &o.tracked)),
    );
    let mut all_refs = HashSet::new();
    for topic in TOPICS {
        let listed = list(&endpoint, topic);
        let mut want = expected.remove(topic).unwrap_or_else(|| json!({}));
        want["~marker"] = listed["~marker"].clone();
        assert_eq!(
            normalized(&listed),
            normalized(&want),
            "{topic}, seed {seed}"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&endpoint.presence().list_json(topic)).unwrap(),
            listed,
            "{topic}, seed {seed}"
        );
        for presence in listed.as_object().unwrap().values() {
            for r in meta_refs(presence) {
                assert!(all_refs.insert(r), "phx_ref reused, seed {seed}");
            }
        }
    }
    for actor in &mut clients {
        pump_until_key(&mut actor.socket, actor.topic, &mut actor.model, "~marker").await;
        assert_eq!(
            actor.model.view(),
            normalized(&list(&endpoint, actor.topic)),
            "client on {}, seed {seed}",
            actor.topic
        );
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("PRESENCE_SEED") {
        Ok(s) => vec![s.parse().expect("PRESENCE_SEED")],
        Err(_) => vec![1, 2, 3, 0xfa3e5],
    }
}

#[tokio::test]
async fn random_operations_converge_without_batching() {
    for seed in seeds() {
        random_run(seed, None).await;
    }
}

#[tokio::test(start_paused = true)]
async fn random_operations_converge_with_batching() {
    for seed in seeds() {
        random_run(seed, Some(Duration::from_millis(30))).await;
    }
}

/// Owners and clients acting at once from several threads, clients joining
/// while others change the topic: every view still converges.
async fn concurrent_run(seed: u64, window: Option<Duration>) {
    eprintln!("presence concurrent run: seed {seed}, window {window:?}");
    let mut config = PresenceConfig::default().pool_size(2);
    if let Some(window) = window {
        config = config.diff_batch_window(window);
    }
    let endpoint = endpoint(config);
    let topics = &TOPICS[..2];
    let mut marker_logs: Vec<TopicLog> = topics
        .iter()
        .map(|t| TopicLog {
            spy: spy(&endpoint, t),
            left: HashSet::new(),
        })
        .collect();
    let owners: Vec<_> = (0..3u64)
        .map(|task| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ (task << 32));
                let mut actor = OwnerActor {
                    owner: endpoint.presence().owner(),
                    tracked: Tracked::new(),
                };
                for step in 0..60 {
                    owner_op(&mut rng, &mut actor, step);
                    tokio::task::yield_now().await;
                }
                actor
            })
        })
        .collect();
    let clients: Vec<_> = (0..6u64)
        .map(|task| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ ((task + 8) << 32));
                let topic = TOPICS[task as usize % 2];
                let mut log = TopicLog {
                    spy: spy(&endpoint, topic),
                    left: HashSet::new(),
                };
                let mut ids = (task as usize * 1000)..;
                // Join while the others are at work.
                for _ in 0..rng.below(20) {
                    tokio::task::yield_now().await;
                }
                let id = ids.next().unwrap();
                let mut actor = join_actor(&mut rng, &endpoint, topic, id).await;
                for step in 0..40 {
                    match rng.below(20) {
                        0 => {
                            let id = ids.next().unwrap();
                            crash_and_rejoin(&mut rng, &endpoint, &mut actor, &mut log, id).await;
                        }
                        1 | 2 => send_state(&mut actor).await,
                        _ => channel_op(&mut rng, &mut actor, step).await,
                    }
                }
                send_state(&mut actor).await;
                actor
            })
        })
        .collect();
    let mut owner_actors = Vec::new();
    for owner in owners {
        owner_actors.push(owner.await.expect("owner task"));
    }
    let mut client_actors = Vec::new();
    for client in clients {
        client_actors.push(client.await.expect("client task"));
    }

    let marker = endpoint.presence().owner();
    for (topic, log) in topics.iter().zip(&mut marker_logs) {
        marker.track(topic, "~marker", json!({})).unwrap();
        log.wait_key("~marker").await;
    }
    let mut expected = expected_lists(
        client_actors
            .iter()
            .map(|c| &c.tracked)
            .chain(owner_actors.iter().map(|o| &o.tracked)),
    );
    for topic in topics {
        let listed = list(&endpoint, topic);
        let mut want = expected.remove(*topic).unwrap_or_else(|| json!({}));
        want["~marker"] = listed["~marker"].clone();
        assert_eq!(
            normalized(&listed),
            normalized(&want),
            "{topic}, seed {seed}"
        );
    }
    for actor in &mut client_actors {
        pump_until_key(&mut actor.socket, actor.topic, &mut actor.model, "~marker").await;
        assert_eq!(
            actor.model.view(),
            normalized(&list(&endpoint, actor.topic)),
            "client on {}, seed {seed}",
            actor.topic
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_converge_without_batching() {
    for seed in seeds() {
        concurrent_run(seed, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_converge_with_batching() {
    for seed in seeds() {
        concurrent_run(seed, Some(Duration::from_millis(20))).await;
    }
}

// ---------------------------------------------------------------------------
// Shards
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_pool_of_shards_serves_many_topics() {
    let endpoint = endpoint(PresenceConfig::default().pool_size(4));
    let presence = endpoint.presence();
    let topics: Vec<String> = (0..8).map(|i| format!("room:t{i}")).collect();
    let mut spies: Vec<Spy> = topics.iter().map(|t| spy(&endpoint, t)).collect();
    let owner = presence.owner();
    let mut sockets = Vec::new();
    let mut bots = Vec::new();
    for (i, (topic, spy)) in topics.iter().zip(&mut spies).enumerate() {
        let r = owner.track(topic, "bot", json!({"i": i})).unwrap();
        assert_eq!(
            spy.next().await,
            join_of("bot", json!({"i": i, "phx_ref": r}))
        );
        bots.push(r);
        if i % 2 == 0 {
            let socket = joined(
                &endpoint,
                topic,
                json!({"key": "user", "meta": {"t": topic}}),
            )
            .await;
            assert_eq!(keys(&spy.next().await["joins"]), ["user"]);
            sockets.push((i, socket));
        }
    }
    for (i, topic) in topics.iter().enumerate() {
        let listed = list(&endpoint, topic);
        let want: Vec<&str> = if i % 2 == 0 {
            vec!["bot", "user"]
        } else {
            vec!["bot"]
        };
        assert_eq!(keys(&listed), want, "{topic}");
        assert_eq!(listed["bot"]["metas"][0]["i"], i);
        assert_eq!(
            serde_json::from_slice::<Value>(&presence.list_json(topic)).unwrap(),
            listed
        );
        assert_eq!(
            presence.get_by_key(topic, "bot").unwrap().metas[0]["phx_ref"],
            bots[i]
        );
    }
    // Updates land on their topic only.
    let r = owner
        .update("room:t3", "bot", json!({"moved": true}))
        .unwrap();
    assert_eq!(refs(&spies[3].next().await, "joins", "bot"), [r]);
    for (i, spy) in spies.iter_mut().enumerate() {
        if i != 3 {
            spy.assert_quiet();
        }
    }
    // An owner's entries go on every shard.
    owner.untrack_all();
    for (i, spy) in spies.iter_mut().enumerate() {
        let diff = spy.next().await;
        assert_eq!(keys(&diff["leaves"]), ["bot"], "room:t{i}");
        spy.assert_quiet();
    }
    for (i, topic) in topics.iter().enumerate() {
        let want: Vec<&str> = if i % 2 == 0 { vec!["user"] } else { vec![] };
        assert_eq!(keys(&list(&endpoint, topic)), want, "{topic}");
    }
    // And a channel's with its channel.
    let (i, mut socket) = sockets.remove(1);
    assert_eq!(socket.leave(&topics[i]).await, Reply::status("ok"));
    assert_eq!(keys(&spies[i].next().await["leaves"]), ["user"]);
    assert!(presence.list(&topics[i]).is_empty());
    for (j, _) in &sockets {
        assert_eq!(keys(&list(&endpoint, &topics[*j])), ["user"]);
    }
}

// ---------------------------------------------------------------------------
// V1 clients
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_clients_get_presence_frames_in_the_v1_format() {
    let server = serve_room(PresenceConfig::default()).await;
    let owner = server.endpoint.presence().owner();
    let bot = owner
        .track("room:v1", "bot", json!({"kind": "bot"}))
        .unwrap();
    let mut v1 = Raw::connect(server.addr, "1.0.0").await;
    v1.send(json!({
        "topic": "room:v1", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"key": "ann", "meta": {"d": "web"}, "state": "join"},
    }))
    .await;
    assert_eq!(
        v1.json().await,
        json!({"topic": "room:v1", "event": "phx_reply", "payload": ok(json!({})), "ref": "1"})
    );
    let state = v1.json().await;
    assert_eq!(
        state,
        json!({
            "topic": "room:v1", "event": "presence_state", "ref": null,
            "payload": list(&server.endpoint, "room:v1"),
        })
    );
    assert_eq!(keys(&state["payload"]), ["ann", "bot"]);
    assert_eq!(state["payload"]["bot"]["metas"][0]["phx_ref"], bot);

    let r = owner
        .update("room:v1", "bot", json!({"kind": "robot"}))
        .unwrap();
    assert_eq!(
        v1.json().await,
        json!({
            "topic": "room:v1", "event": "presence_diff", "ref": null,
            "payload": {
                "joins": {"bot": {"metas": [{"kind": "robot", "phx_ref": r, "phx_ref_prev": bot}]}},
                "leaves": {"bot": {"metas": [{"kind": "bot", "phx_ref": bot}]}},
            },
        })
    );

    // A V2 client on the same topic gets the same diff as a V2 frame.
    let mut v2 = server.client().await;
    v2.join("room:v1", json!({})).await;
    assert!(owner.untrack("room:v1", "bot"));
    let leave = leave_of(
        "bot",
        json!({"kind": "robot", "phx_ref": r, "phx_ref_prev": bot}),
    );
    assert_eq!(
        v1.json().await,
        json!({"topic": "room:v1", "event": "presence_diff", "ref": null, "payload": leave})
    );
    assert_eq!(
        v2.recv().await,
        json!([null, null, "room:v1", "presence_diff", leave])
    );
    v2.barrier().await;
}
