//! PROTOCOL §7 (checklist 83–87, 90) and CONFORMANCE_APP `presence:*`: the
//! presence channel and `GET /api/presence/TOPIC`, black-box over real
//! sockets.
//!
//! Every client runs a copy of phoenix.js's `Presence` (PROTOCOL §7.4,
//! [`View`]) on the frames it receives; the list it converges on must equal
//! the server's `GET /api/presence/TOPIC`. Channel-level scenarios run over
//! WebSocket and over LongPoll (modules `websocket` and `longpoll`, see
//! [`both_transports!`]); connection-level ones (close frames, TCP drops,
//! the batch window, floods, the HTTP topic encoding) over WebSocket only.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use fawkes_conformance::Options;
use serde_json::{Map, Value, json};
use support::longpoll::{LpClient, NDJSON, encode_component};
use support::{Http, RECV_TIMEOUT, TestServer, WsClient, binary_push, error, ok, options};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The largest `device`, as JSON, the app accepts (CONFORMANCE_APP).
const DEVICE_LIMIT: usize = 1024;

// ---------------------------------------------------------------------------
// Messages in either serializer
// ---------------------------------------------------------------------------

/// A message as a client received it (V1 object or V2 array).
#[derive(Debug, Clone, PartialEq)]
struct Msg {
    join_ref: Value,
    r: Value,
    topic: String,
    event: String,
    payload: Value,
}

impl Msg {
    /// Parses a server frame; V2 frames are exactly five elements, V1 frames
    /// exactly `topic`, `event`, `payload`, `ref` (PROTOCOL §2.1: never a
    /// `join_ref`).
    fn parse(value: &Value, v2: bool) -> Msg {
        let text = |v: &Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("topic and event must be strings: {value}"))
                .to_string()
        };
        if v2 {
            let parts = value
                .as_array()
                .unwrap_or_else(|| panic!("a V2 client got a non-array frame: {value}"));
            assert_eq!(parts.len(), 5, "V2 frames have five elements: {value}");
            Msg {
                join_ref: parts[0].clone(),
                r: parts[1].clone(),
                topic: text(&parts[2]),
                event: text(&parts[3]),
                payload: parts[4].clone(),
            }
        } else {
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("a V1 client got a non-object frame: {value}"));
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                ["event", "payload", "ref", "topic"],
                "V1 frames carry exactly these keys: {value}"
            );
            Msg {
                join_ref: Value::Null,
                r: object["ref"].clone(),
                topic: text(&object["topic"]),
                event: text(&object["event"]),
                payload: object["payload"].clone(),
            }
        }
    }
}

/// A client message in the client's serializer (V1 objects carry `join_ref`
/// as phoenix.js sends it).
fn frame(
    v2: bool,
    join_ref: Option<&str>,
    r: &str,
    topic: &str,
    event: &str,
    payload: Value,
) -> Value {
    if v2 {
        json!([join_ref, r, topic, event, payload])
    } else {
        let mut object = json!({"topic": topic, "event": event, "payload": payload, "ref": r});
        if let Some(join_ref) = join_ref {
            object["join_ref"] = json!(join_ref);
        }
        object
    }
}

// ---------------------------------------------------------------------------
// Presence maps and phoenix.js's sync (PROTOCOL §7.4)
// ---------------------------------------------------------------------------

/// A presence map: key → `{"metas": [...]}`.
type State = Map<String, Value>;

/// The metas of a presence object.
fn metas(presence: &Value) -> &Vec<Value> {
    presence["metas"]
        .as_array()
        .unwrap_or_else(|| panic!("presence without a metas array: {presence}"))
}

/// A meta's `phx_ref`.
fn ref_of(meta: &Value) -> String {
    meta["phx_ref"]
        .as_str()
        .unwrap_or_else(|| panic!("meta without a string phx_ref: {meta}"))
        .to_string()
}

/// The `phx_ref`s of a presence object.
fn refs_of(presence: &Value) -> Vec<String> {
    metas(presence).iter().map(ref_of).collect()
}

/// `presence` with its metas replaced by `metas`.
fn with_metas(presence: &Value, metas: Vec<Value>) -> Value {
    let mut presence = presence.clone();
    presence["metas"] = Value::Array(metas);
    presence
}

/// phoenix.js `Presence.syncState`: the new full state as a diff.
fn sync_state(state: &mut State, new: &State) {
    let mut joins = State::new();
    let mut leaves = State::new();
    for (key, presence) in state.iter() {
        if !new.contains_key(key) {
            leaves.insert(key.clone(), presence.clone());
        }
    }
    for (key, new_presence) in new {
        match state.get(key) {
            Some(current) => {
                let new_refs = refs_of(new_presence);
                let current_refs = refs_of(current);
                let joined: Vec<Value> = metas(new_presence)
                    .iter()
                    .filter(|m| !current_refs.contains(&ref_of(m)))
                    .cloned()
                    .collect();
                let left: Vec<Value> = metas(current)
                    .iter()
                    .filter(|m| !new_refs.contains(&ref_of(m)))
                    .cloned()
                    .collect();
                if !joined.is_empty() {
                    joins.insert(key.clone(), with_metas(new_presence, joined));
                }
                if !left.is_empty() {
                    leaves.insert(key.clone(), with_metas(current, left));
                }
            }
            None => {
                joins.insert(key.clone(), new_presence.clone());
            }
        }
    }
    sync_diff(state, &joins, &leaves);
}

/// phoenix.js `Presence.syncDiff`: joins first (kept metas before the joined
/// ones), then leaves (a key goes with its last meta).
fn sync_diff(state: &mut State, joins: &State, leaves: &State) {
    for (key, joined) in joins {
        let mut presence = joined.clone();
        if let Some(current) = state.get(key) {
            let joined_refs = refs_of(joined);
            let mut all: Vec<Value> = metas(current)
                .iter()
                .filter(|m| !joined_refs.contains(&ref_of(m)))
                .cloned()
                .collect();
            all.extend(metas(joined).iter().cloned());
            presence["metas"] = Value::Array(all);
        }
        state.insert(key.clone(), presence);
    }
    for (key, left) in leaves {
        let Some(current) = state.get(key) else {
            continue;
        };
        let gone = refs_of(left);
        let remaining: Vec<Value> = metas(current)
            .iter()
            .filter(|m| !gone.contains(&ref_of(m)))
            .cloned()
            .collect();
        if remaining.is_empty() {
            state.remove(key);
        } else {
            let presence = with_metas(current, remaining);
            state.insert(key.clone(), presence);
        }
    }
}

/// One channel's phoenix.js `Presence`.
#[derive(Debug, Default)]
struct View {
    /// The channel's current join ref (`channel.joinRef()`); `None` while
    /// the channel is not joined (phoenix.js has dropped it: nothing
    /// reaches the `Presence`).
    channel: Option<String>,
    /// The join ref when the last `presence_state` was applied.
    synced: Option<String>,
    state: State,
    pending: Vec<(State, State)>,
    /// How many `presence_state`s this view applied.
    states: usize,
}

impl View {
    fn apply(&mut self, msg: &Msg) {
        if self.channel.is_none() {
            return;
        }
        match msg.event.as_str() {
            "presence_state" => {
                let new = presence_map(&msg.payload).clone();
                self.synced = self.channel.clone();
                sync_state(&mut self.state, &new);
                for (joins, leaves) in std::mem::take(&mut self.pending) {
                    sync_diff(&mut self.state, &joins, &leaves);
                }
                self.states += 1;
            }
            "presence_diff" => {
                let diff = Diff::of(msg);
                if self.synced.is_none() || self.synced != self.channel {
                    self.pending.push((diff.joins, diff.leaves));
                } else {
                    sync_diff(&mut self.state, &diff.joins, &diff.leaves);
                }
            }
            _ => {}
        }
    }
}

/// A presence map with sorted metas: order carries no meaning (§7.1).
fn normalized(state: &Value) -> Value {
    let mut out = Map::new();
    for (key, presence) in presence_map(state) {
        let mut all = metas(presence).clone();
        all.sort_by_key(ref_of);
        out.insert(key.clone(), with_metas(presence, all));
    }
    Value::Object(out)
}

/// Asserts the presence map shape of §7.1 (the app adds nothing next to
/// `metas`): every key → exactly `{"metas": [...]}`, non-empty, every meta an
/// object with a non-empty string `phx_ref`. Returns the map.
fn presence_map(value: &Value) -> &State {
    let map = value
        .as_object()
        .unwrap_or_else(|| panic!("a presence map must be an object: {value}"));
    for (key, presence) in map {
        let object = presence
            .as_object()
            .unwrap_or_else(|| panic!("presence of {key:?} is not an object: {value}"));
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            ["metas"],
            "presence of {key:?}: {value}"
        );
        let all = metas(presence);
        assert!(
            !all.is_empty(),
            "presence of {key:?} without metas: {value}"
        );
        for meta in all {
            assert!(meta.is_object(), "meta of {key:?} not an object: {value}");
            assert!(
                meta["phx_ref"].as_str().is_some_and(|r| !r.is_empty()),
                "meta of {key:?} without a string phx_ref: {value}"
            );
        }
    }
    map
}

/// A `presence_diff`, checked (§7.2): a broadcast (join_ref and ref null)
/// whose payload is exactly `{"joins": map, "leaves": map}`.
#[derive(Debug, Clone, PartialEq)]
struct Diff {
    joins: State,
    leaves: State,
}

impl Diff {
    fn of(msg: &Msg) -> Diff {
        assert_eq!(msg.event, "presence_diff", "not a diff: {msg:?}");
        assert_eq!(
            (&msg.join_ref, &msg.r),
            (&Value::Null, &Value::Null),
            "presence_diff is a broadcast (join_ref and ref null): {msg:?}"
        );
        let payload = msg
            .payload
            .as_object()
            .unwrap_or_else(|| panic!("diff payload not an object: {msg:?}"));
        let mut keys: Vec<&str> = payload.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["joins", "leaves"], "diff payload: {msg:?}");
        Diff {
            joins: presence_map(&payload["joins"]).clone(),
            leaves: presence_map(&payload["leaves"]).clone(),
        }
    }
}

/// The only meta of `key` in `map`.
fn only_meta<'a>(map: &'a State, key: &str) -> &'a Value {
    let presence = map
        .get(key)
        .unwrap_or_else(|| panic!("no {key:?} in {map:?}"));
    let all = metas(presence);
    assert_eq!(all.len(), 1, "{key:?} should have one meta: {map:?}");
    &all[0]
}

/// Asserts the app's meta (CONFORMANCE_APP): exactly `online_at` (unix ms,
/// about now), `device` and `phx_ref`, plus `phx_ref_prev` after an update.
/// Returns the `phx_ref`.
fn check_meta(meta: &Value, device: &Value, updated: bool) -> String {
    let object = meta
        .as_object()
        .unwrap_or_else(|| panic!("meta not an object: {meta}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if updated {
        assert_eq!(
            keys,
            ["device", "online_at", "phx_ref", "phx_ref_prev"],
            "{meta}"
        );
    } else {
        assert_eq!(keys, ["device", "online_at", "phx_ref"], "{meta}");
    }
    assert_eq!(&meta["device"], device, "device of {meta}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let online_at = meta["online_at"]
        .as_u64()
        .unwrap_or_else(|| panic!("online_at must be unix ms: {meta}"));
    assert!(
        online_at.abs_diff(now) < 600_000,
        "online_at {online_at} is not about now ({now}): {meta}"
    );
    ref_of(meta)
}

/// `GET /api/presence/<topic, percent-encoded>`: 200, JSON, a presence map.
async fn presence_of(http: &Http, topic: &str) -> Value {
    presence_at(http, &format!("/api/presence/{}", encode_component(topic))).await
}

/// `GET path`, which must answer a presence map.
async fn presence_at(http: &Http, path: &str) -> Value {
    let raw = http.request(http::Method::GET, path, &[], None).await;
    assert_eq!(raw.status, 200, "GET {path}: {raw:?}");
    let content_type = raw
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "GET {path}: content-type {content_type:?}"
    );
    let body: Value = serde_json::from_str(&raw.body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {:?}", raw.body));
    presence_map(&body);
    body
}

/// Asserts that every view equals the server's list of `topic`.
async fn assert_converged(http: &Http, topic: &str, views: &[&State]) {
    let want = normalized(&presence_of(http, topic).await);
    for (i, view) in views.iter().enumerate() {
        let got = normalized(&Value::Object((*view).clone()));
        assert_eq!(
            got, want,
            "client #{i}'s list of {topic} differs from GET /api/presence"
        );
    }
}

/// Asserts `GET /api/presence/TOPIC` is `{}` for every topic and the stats
/// are `(sockets, 0)`: presences never outlive their channels.
async fn assert_baseline(http: &Http, sockets: u64, topics: &[&str]) {
    http.wait_stats((sockets, 0)).await;
    for topic in topics {
        assert_eq!(presence_of(http, topic).await, json!({}), "{topic}");
    }
    http.assert_healthy().await;
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// What the scenarios need of a transport's client.
trait Client: Sized {
    /// Connects with the given query (`vsn` and params).
    async fn open(server: &TestServer, query: &str) -> Self;
    /// V2 (arrays) rather than V1 (objects).
    fn v2(&self) -> bool;
    fn fresh_ref(&mut self) -> String;
    async fn send_value(&mut self, value: Value);
    /// Sends a V2 binary push (WebSocket binary frame, LongPoll base64 line).
    async fn send_binary_push(&mut self, frame: Vec<u8>);
    /// The next JSON message; fails the test after a timeout.
    async fn recv_value(&mut self) -> Value;
    /// After `/api/disconnect` (and once the server has dropped the socket):
    /// the connection has ended.
    async fn assert_disconnected(&mut self);
}

impl Client for WsClient {
    async fn open(server: &TestServer, query: &str) -> Self {
        server.ws(query).await
    }

    fn v2(&self) -> bool {
        self.v2
    }

    fn fresh_ref(&mut self) -> String {
        self.next_ref()
    }

    async fn send_value(&mut self, value: Value) {
        self.send(value).await;
    }

    async fn send_binary_push(&mut self, frame: Vec<u8>) {
        self.send_binary(frame).await;
    }

    async fn recv_value(&mut self) -> Value {
        self.recv_json().await
    }

    async fn assert_disconnected(&mut self) {
        // PROTOCOL §4.11: the close frame with 1001.
        assert_eq!(self.expect_close().await, 1001);
    }
}

impl Client for LpClient {
    async fn open(server: &TestServer, query: &str) -> Self {
        server.lp(query).await
    }

    fn v2(&self) -> bool {
        self.v2
    }

    fn fresh_ref(&mut self) -> String {
        self.next_ref()
    }

    async fn send_value(&mut self, value: Value) {
        self.send(value).await;
    }

    async fn send_binary_push(&mut self, frame: Vec<u8>) {
        self.send_binary(&[frame]).await;
    }

    async fn recv_value(&mut self) -> Value {
        self.recv().await
    }

    async fn assert_disconnected(&mut self) {
        // The session is gone: a POST is 410 (a GET would open a new one).
        let hb = self.heartbeat("gone?").to_string().into_bytes();
        let content_type = if self.v2 { NDJSON } else { "application/json" };
        self.post(Some(content_type), hb).await.assert_status(410);
    }
}

/// What a successful presence join produced.
#[derive(Debug)]
struct Joined {
    join_ref: String,
    /// The `presence_state` payload.
    state: State,
    /// This client's own meta, from the diff of its own join.
    meta: Value,
}

/// A client with a phoenix.js `Presence` per topic.
struct Peer<C> {
    c: C,
    v2: bool,
    /// The presence key, learnt from the diff of the first own join.
    key: Option<String>,
    /// Topic → current join ref.
    joins: BTreeMap<String, String>,
    views: BTreeMap<String, View>,
}

impl<C: Client> Peer<C> {
    async fn open(server: &TestServer, query: &str) -> Peer<C> {
        let c = C::open(server, query).await;
        Peer {
            v2: c.v2(),
            c,
            key: None,
            joins: BTreeMap::new(),
            views: BTreeMap::new(),
        }
    }

    /// This client's presence key.
    fn key(&self) -> String {
        self.key.clone().expect("presence key known after a join")
    }

    /// The list this client's `Presence` of `topic` shows.
    fn state(&self, topic: &str) -> &State {
        &self.views[topic].state
    }

    fn join_ref(&self, topic: &str) -> String {
        self.joins
            .get(topic)
            .unwrap_or_else(|| panic!("not joined to {topic}"))
            .clone()
    }

    /// The next message, fed to the `Presence`s.
    async fn next(&mut self) -> Msg {
        let value = self.c.recv_value().await;
        let msg = Msg::parse(&value, self.v2);
        if let Some(view) = self.views.get_mut(&msg.topic) {
            view.apply(&msg);
        }
        msg
    }

    async fn send(&mut self, join_ref: Option<&str>, r: &str, topic: &str, event: &str, p: Value) {
        let value = frame(self.v2, join_ref, r, topic, event, p);
        self.c.send_value(value).await;
    }

    /// Sends `event` on the joined `topic`; returns its ref.
    async fn push(&mut self, topic: &str, event: &str, payload: Value) -> String {
        let join_ref = self.join_ref(topic);
        let r = self.c.fresh_ref();
        self.send(Some(&join_ref), &r, topic, event, payload).await;
        r
    }

    /// Sends `phx_join` (`join_ref == ref`, as phoenix.js does) without
    /// waiting; returns the join ref.
    async fn send_join(&mut self, topic: &str, payload: Value) -> String {
        let r = self.c.fresh_ref();
        self.joins.insert(topic.to_string(), r.clone());
        self.views.entry(topic.to_string()).or_default().channel = Some(r.clone());
        self.send(Some(&r), &r, topic, "phx_join", payload).await;
        r
    }

    /// Asserts that `msg` is the reply to `r` on `topic` (with the channel's
    /// join ref in V2); returns its `{"status", "response"}`.
    fn check_reply(&self, msg: &Msg, topic: &str, r: &str, join_ref: &str) -> Value {
        assert_eq!(
            (msg.topic.as_str(), msg.event.as_str(), &msg.r),
            (topic, "phx_reply", &json!(r)),
            "expected the reply to {r} on {topic}: {msg:?}"
        );
        let want_join_ref = if self.v2 {
            json!(join_ref)
        } else {
            Value::Null
        };
        assert_eq!(msg.join_ref, want_join_ref, "join_ref of reply {msg:?}");
        msg.payload.clone()
    }

    /// The next message must be the reply to `r` on `topic`.
    async fn expect_reply(&mut self, topic: &str, r: &str) -> Value {
        let join_ref = self.join_ref(topic);
        let msg = self.next().await;
        self.check_reply(&msg, topic, r, &join_ref)
    }

    /// Reads up to the reply to `r` on `topic`, which may come after
    /// diffs (an update's diff is a broadcast, its reply is not: either may
    /// come first); returns the reply's status and the diffs before it.
    async fn reply_after_diffs(&mut self, topic: &str, r: &str) -> (Value, Vec<Msg>) {
        let join_ref = self.join_ref(topic);
        let mut diffs = Vec::new();
        loop {
            let msg = self.next().await;
            if msg.event == "presence_diff" {
                diffs.push(msg);
            } else {
                return (self.check_reply(&msg, topic, r, &join_ref), diffs);
            }
        }
    }

    /// A refused join: the error reply, and the channel is not joined.
    async fn join_refused(&mut self, topic: &str, payload: Value) -> Value {
        let join_ref = self.send_join(topic, payload).await;
        let status = self.expect_reply(topic, &join_ref).await;
        self.joins.remove(topic);
        self.views.remove(topic);
        status
    }

    /// Joins `topic`: the ok reply `{}`, then (either order) the
    /// `presence_state` for this join and the diff of its own join.
    async fn join(&mut self, topic: &str, payload: Value) -> Joined {
        let join_ref = self.send_join(topic, payload).await;
        let status = self.expect_reply(topic, &join_ref).await;
        assert_eq!(status, ok(json!({})), "join {topic}");
        self.after_join(topic, &join_ref, &[]).await
    }

    /// Reads what follows a join reply: the `presence_state` of `join_ref`
    /// and the diff of the own join, and nothing else but diffs that only
    /// take away the `phx_ref`s in `may_leave`.
    async fn after_join(&mut self, topic: &str, join_ref: &str, may_leave: &[String]) -> Joined {
        let mut state = None;
        let mut own = None;
        while state.is_none() || own.is_none() {
            let msg = self.next().await;
            assert_eq!(msg.topic, topic, "after joining {topic}: {msg:?}");
            match msg.event.as_str() {
                "presence_state" if state.is_none() => {
                    // Checklist 83 / 90: a push for this join.
                    let want_join_ref = if self.v2 {
                        json!(join_ref)
                    } else {
                        Value::Null
                    };
                    assert_eq!(
                        (&msg.join_ref, &msg.r),
                        (&want_join_ref, &Value::Null),
                        "presence_state is a push of join {join_ref}: {msg:?}"
                    );
                    state = Some(presence_map(&msg.payload).clone());
                }
                "presence_diff" => {
                    let diff = Diff::of(&msg);
                    if diff.joins.is_empty() {
                        let left: Vec<String> = diff.leaves.values().flat_map(refs_of).collect();
                        assert!(
                            !left.is_empty() && left.iter().all(|r| may_leave.contains(r)),
                            "after joining {topic}, an unexpected diff: {msg:?}"
                        );
                        continue;
                    }
                    assert!(own.is_none(), "a second join diff: {msg:?}");
                    // Checklist 84: the own track, alone.
                    assert!(diff.leaves.is_empty(), "own join diff: {msg:?}");
                    assert_eq!(diff.joins.len(), 1, "own join diff: {msg:?}");
                    let (key, _) = diff.joins.iter().next().expect("one key");
                    match &self.key {
                        Some(known) => assert_eq!(known, key, "presence key changed: {msg:?}"),
                        None => self.key = Some(key.clone()),
                    }
                    own = Some(only_meta(&diff.joins, key).clone());
                }
                _ => panic!("after joining {topic}, an unexpected message: {msg:?}"),
            }
        }
        let (state, meta) = (state.expect("state"), own.expect("own diff"));
        let key = self.key();
        assert!(
            state.get(&key).is_some_and(|p| metas(p).contains(&meta)),
            "the presence_state of {join_ref} lacks the joiner's own meta {meta}: {state:?}"
        );
        Joined {
            join_ref: join_ref.to_string(),
            state,
            meta,
        }
    }

    /// The next message must be a `presence_diff` on `topic`; returns it
    /// and its payload.
    async fn expect_diff(&mut self, topic: &str) -> (Diff, Value) {
        let msg = self.next().await;
        assert_eq!(msg.topic, topic, "expected a diff on {topic}: {msg:?}");
        (Diff::of(&msg), msg.payload)
    }

    /// A heartbeat round trip: returns every message read before its reply
    /// (all fed to the `Presence`s).
    async fn settle(&mut self) -> Vec<Msg> {
        let r = format!("settle-{}", self.c.fresh_ref());
        self.send(None, &r, "phoenix", "heartbeat", json!({})).await;
        let mut before = Vec::new();
        loop {
            let msg = self.next().await;
            if msg.topic == "phoenix" && msg.event == "phx_reply" && msg.r == json!(r) {
                assert_eq!(msg.payload, ok(json!({})), "heartbeat reply");
                return before;
            }
            before.push(msg);
        }
    }

    /// Asserts that nothing is waiting for this client.
    async fn quiet(&mut self) {
        let before = self.settle().await;
        assert!(before.is_empty(), "unexpected messages: {before:?}");
    }

    /// Leaves `topic`: the ok reply, then `phx_close` (diffs of others
    /// before the reply are fed to the `Presence` and returned).
    async fn leave(&mut self, topic: &str) -> Vec<Msg> {
        let join_ref = self.join_ref(topic);
        let r = self.push(topic, "phx_leave", json!({})).await;
        let mut before = Vec::new();
        let reply = loop {
            let msg = self.next().await;
            if msg.event == "presence_diff" {
                before.push(msg);
            } else {
                break msg;
            }
        };
        let status = self.check_reply(&reply, topic, &r, &join_ref);
        assert_eq!(status, ok(json!({})), "leave {topic}");
        let close = self.next().await;
        let want = if self.v2 {
            (json!(join_ref), json!(join_ref))
        } else {
            (Value::Null, json!(join_ref))
        };
        assert_eq!(
            (
                close.topic.as_str(),
                close.event.as_str(),
                close.payload.clone()
            ),
            (topic, "phx_close", json!({})),
            "after leaving {topic}: {close:?}"
        );
        assert_eq!((close.join_ref, close.r), want, "phx_close of {join_ref}");
        self.joins.remove(topic);
        if let Some(view) = self.views.get_mut(topic) {
            view.channel = None;
        }
        before
    }

    /// Reads and applies messages until this client's list of `topic`
    /// equals the server's, or fails after `RECV_TIMEOUT`. For the batch
    /// window, where diffs come later than the change.
    async fn converge(&mut self, http: &Http, topic: &str) {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut interval = tokio::time::interval(Duration::from_millis(20));
        loop {
            interval.tick().await;
            let want = normalized(&presence_of(http, topic).await);
            // Everything sent before the GET's answer is applied by now.
            self.settle().await;
            let got = normalized(&Value::Object(self.state(topic).clone()));
            if got == want && self.views[topic].pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: this client shows {got} but the server {want}"
            );
        }
    }
}

/// Runs each scenario over WebSocket (module `websocket`) and over LongPoll
/// (module `longpoll`).
macro_rules! both_transports {
    ($($name:ident => $scenario:ident;)*) => {
        mod websocket {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $scenario::<WsClient>().await;
                }
            )*
        }
        mod longpoll {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $scenario::<LpClient>().await;
                }
            )*
        }
    };
}

both_transports! {
    c83_presence_state_maps_every_key_to_metas_with_string_phx_refs => c83_state_shape;
    c84_track_sends_the_new_meta_to_every_subscriber => c84_track_diff;
    c85_leave_untracks => c85_leave;
    c85_disconnect_untracks_and_the_user_comes_back_with_a_fresh_state => c85_disconnect;
    c86_update_is_one_diff_with_the_key_in_joins_and_leaves => c86_update;
    c86_update_sent_right_after_the_join_applies => c86_update_pipelined;
    c87_one_key_on_two_sockets_is_two_metas_and_each_leaves_alone => c87_two_sockets;
    c90_every_rejoin_after_a_leave_gets_a_fresh_presence_state => c90_rejoin_after_leave;
    c90_duplicate_join_replaces_the_entry_and_gets_a_fresh_presence_state => c90_duplicate_join;
    v1_presence_frames_are_objects_without_join_ref => v1_frames;
    anonymous_keys_are_distinct_per_socket_and_shared_across_topics => anonymous_keys;
    bad_input_is_refused_and_every_list_stays_right => bad_input;
}

// ---------------------------------------------------------------------------
// Scenarios over both transports
// ---------------------------------------------------------------------------

async fn c83_state_shape<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:c83";
    let mut alice = Peer::<C>::open(&server, "vsn=2.0.0&user_id=alice").await;
    let ja = alice.join(topic, json!({"device": "web"})).await;
    assert_eq!(alice.key(), "alice");
    // Only the joiner so far, with the app's meta.
    assert_eq!(ja.state.keys().collect::<Vec<_>>(), ["alice"]);
    check_meta(only_meta(&ja.state, "alice"), &json!("web"), false);

    let mut anon = Peer::<C>::open(&server, "vsn=2.0.0").await;
    let jb = anon.join(topic, json!({})).await;
    let kb = anon.key();
    assert_eq!(jb.state.len(), 2, "{:?}", jb.state);
    // The earlier member's meta exactly as it was announced.
    assert_eq!(jb.state["alice"], json!({"metas": [ja.meta]}));
    check_meta(only_meta(&jb.state, &kb), &Value::Null, false);
    assert_ne!(ref_of(&ja.meta), ref_of(&jb.meta), "phx_refs are unique");

    let (_, payload) = alice.expect_diff(topic).await;
    assert_eq!(
        payload,
        json!({"joins": {kb.clone(): {"metas": [jb.meta]}}, "leaves": {}})
    );
    alice.quiet().await;
    anon.quiet().await;
    assert_converged(&http, topic, &[alice.state(topic), anon.state(topic)]).await;

    alice.leave(topic).await;
    anon.expect_diff(topic).await;
    anon.leave(topic).await;
    assert_baseline(&http, 2, &[topic]).await;
}

async fn c84_track_diff<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:c84";
    let mut peers: Vec<Peer<C>> = Vec::new();
    for (user, device) in [
        ("a", json!("web")),
        ("b", json!({"os": "ios", "v": 17})),
        ("c", Value::Null),
    ] {
        let mut peer = Peer::<C>::open(&server, &format!("vsn=2.0.0&user_id={user}")).await;
        let payload = if device.is_null() {
            json!({})
        } else {
            json!({"device": device})
        };
        let joined = peer.join(topic, payload).await;
        assert_eq!(peer.key(), user);
        check_meta(&joined.meta, &device, false);
        // Every earlier subscriber gets exactly the new meta, nothing more.
        let want = json!({"joins": {user: {"metas": [joined.meta]}}, "leaves": {}});
        for earlier in &mut peers {
            let (_, payload) = earlier.expect_diff(topic).await;
            assert_eq!(payload, want, "diff of {user}'s join");
        }
        assert_eq!(joined.state.len(), peers.len() + 1, "{:?}", joined.state);
        peers.push(peer);
    }
    for peer in &mut peers {
        peer.quiet().await;
    }
    let views: Vec<&State> = peers.iter().map(|p| p.state(topic)).collect();
    assert_converged(&http, topic, &views).await;
    assert_eq!(
        presence_of(&http, topic).await.as_object().map(Map::len),
        Some(3)
    );
    for peer in &mut peers {
        peer.leave(topic).await;
    }
    assert_baseline(&http, 3, &[topic]).await;
}

async fn c85_leave<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:c85";
    let mut a = Peer::<C>::open(&server, "vsn=2.0.0&user_id=a").await;
    let mut b = Peer::<C>::open(&server, "vsn=2.0.0&user_id=b").await;
    a.join(topic, json!({"device": "a"})).await;
    let jb = b.join(topic, json!({"device": "b"})).await;
    a.expect_diff(topic).await;

    b.leave(topic).await;
    let (_, payload) = a.expect_diff(topic).await;
    assert_eq!(
        payload,
        json!({"joins": {}, "leaves": {"b": {"metas": [jb.meta]}}})
    );
    a.quiet().await;
    b.quiet().await;
    assert_converged(&http, topic, &[a.state(topic)]).await;
    assert_eq!(
        presence_of(&http, topic)
            .await
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["a".to_string()])
    );
    http.wait_stats((2, 1)).await;
    a.leave(topic).await;
    b.quiet().await;
    assert_baseline(&http, 2, &[topic]).await;
}

async fn c85_disconnect<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:c85d";
    let mut a = Peer::<C>::open(&server, "vsn=2.0.0&user_id=a").await;
    let mut bob = Peer::<C>::open(&server, "vsn=2.0.0&user_id=bob").await;
    a.join(topic, json!({"device": "a"})).await;
    let jb = bob.join(topic, json!({"device": "b"})).await;
    a.expect_diff(topic).await;

    let body = json!({"socket_id": "user_socket:bob"});
    assert_eq!(
        http.post_json("/api/disconnect", &body).await,
        (200, json!({"ok": true}))
    );
    let (_, payload) = a.expect_diff(topic).await;
    assert_eq!(
        payload,
        json!({"joins": {}, "leaves": {"bob": {"metas": [jb.meta]}}})
    );
    a.quiet().await;
    http.wait_stats((1, 1)).await;
    bob.c.assert_disconnected().await;
    assert_converged(&http, topic, &[a.state(topic)]).await;

    // The user comes back on a new socket: a fresh state, a fresh entry.
    let mut again = Peer::<C>::open(&server, "vsn=2.0.0&user_id=bob").await;
    let j2 = again.join(topic, json!({"device": "b2"})).await;
    assert_eq!(j2.state.len(), 2, "{:?}", j2.state);
    assert_ne!(ref_of(&j2.meta), ref_of(&jb.meta));
    let (_, payload) = a.expect_diff(topic).await;
    assert_eq!(
        payload,
        json!({"joins": {"bob": {"metas": [j2.meta]}}, "leaves": {}})
    );
    again.quiet().await;
    assert_converged(&http, topic, &[a.state(topic), again.state(topic)]).await;
    again.leave(topic).await;
    a.expect_diff(topic).await;
    a.leave(topic).await;
    assert_baseline(&http, 2, &[topic]).await;
}

async fn c86_update<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:c86";
    let mut a = Peer::<C>::open(&server, "vsn=2.0.0&user_id=a").await;
    let mut b = Peer::<C>::open(&server, "vsn=2.0.0&user_id=b").await;
    let ja = a.join(topic, json!({"device": "web"})).await;
    let jb = b.join(topic, json!({"device": "tv"})).await;
    a.expect_diff(topic).await;

    let mut old = ja.meta.clone();
    let mut seen_refs = vec![ref_of(&ja.meta), ref_of(&jb.meta)];
    for device in ["ios", "android"] {
        let r = a
            .push(topic, "update_meta", json!({"device": device}))
            .await;
        // The updater: its ok reply and the diff, either order.
        let join_ref = a.join_ref(topic);
        let mut reply = None;
        let mut diff = None;
        while reply.is_none() || diff.is_none() {
            let msg = a.next().await;
            if msg.event == "presence_diff" && diff.is_none() {
                diff = Some(Diff::of(&msg));
            } else {
                reply = Some(a.check_reply(&msg, topic, &r, &join_ref));
            }
        }
        assert_eq!(reply, Some(ok(json!({}))));
        let diff = diff.expect("diff");
        // Exactly one diff, the same for every subscriber.
        let (other, payload) = b.expect_diff(topic).await;
        assert_eq!(other, diff);
        a.quiet().await;
        b.quiet().await;

        // The old meta leaves, the new one (with phx_ref_prev) joins.
        assert_eq!(payload["leaves"], json!({"a": {"metas": [old]}}));
        assert_eq!(diff.joins.len(), 1, "{payload}");
        let new = only_meta(&diff.joins, "a").clone();
        let new_ref = check_meta(&new, &json!(device), true);
        assert_eq!(new["online_at"], old["online_at"], "online_at is kept");
        assert_eq!(new["phx_ref_prev"], json!(ref_of(&old)), "phx_ref_prev");
        assert!(!seen_refs.contains(&new_ref), "a new phx_ref: {payload}");
        seen_refs.push(new_ref);

        assert_converged(&http, topic, &[a.state(topic), b.state(topic)]).await;
        let listed = presence_of(&http, topic).await;
        assert_eq!(listed["a"], json!({"metas": [new]}));
        assert_eq!(listed["b"], json!({"metas": [jb.meta]}), "b is untouched");
        old = new;
    }
    a.leave(topic).await;
    b.expect_diff(topic).await;
    b.leave(topic).await;
    assert_baseline(&http, 2, &[topic]).await;
}

/// phoenix.js flushes the pushes buffered while joining as soon as the join
/// reply arrives: an `update_meta` may reach the channel before its
/// post-join track has gone out. It must still apply.
async fn c86_update_pipelined<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:c86p";
    let mut obs = Peer::<C>::open(&server, "vsn=2.0.0&user_id=obs").await;
    obs.join(topic, json!({})).await;
    let mut a = Peer::<C>::open(&server, "vsn=2.0.0&user_id=a").await;
    let join_ref = a.send_join(topic, json!({"device": "before"})).await;
    let r = a
        .push(topic, "update_meta", json!({"device": "after"}))
        .await;
    let first = a.next().await;
    assert_eq!(
        a.check_reply(&first, topic, &join_ref, &join_ref),
        ok(json!({}))
    );
    let mut log = Vec::new();
    let mut update = None;
    let mut states = 0;
    while update.is_none() || states == 0 {
        let msg = a.next().await;
        match msg.event.as_str() {
            "phx_reply" => update = Some(a.check_reply(&msg, topic, &r, &join_ref)),
            "presence_state" => states += 1,
            "presence_diff" => {}
            _ => panic!("unexpected {msg:?} after {log:?}"),
        }
        log.push(msg);
    }
    log.extend(a.settle().await);
    assert_eq!(
        update,
        Some(ok(json!({}))),
        "update_meta right after the join: {log:?}"
    );
    assert_eq!(states, 1, "{log:?}");
    let listed = presence_of(&http, topic).await;
    check_meta(only_meta(presence_map(&listed), "a"), &json!("after"), true);
    obs.converge(&http, topic).await;
    assert_converged(&http, topic, &[a.state(topic), obs.state(topic)]).await;
    a.leave(topic).await;
    obs.expect_diff(topic).await;
    obs.leave(topic).await;
    assert_baseline(&http, 2, &[topic]).await;
}

async fn c87_two_sockets<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:c87";
    let mut obs = Peer::<C>::open(&server, "vsn=2.0.0&user_id=obs").await;
    obs.join(topic, json!({})).await;
    let mut s1 = Peer::<C>::open(&server, "vsn=2.0.0&user_id=u").await;
    let mut s2 = Peer::<C>::open(&server, "vsn=2.0.0&user_id=u").await;
    let j1 = s1.join(topic, json!({"device": "web"})).await;
    obs.expect_diff(topic).await;
    let j2 = s2.join(topic, json!({"device": "ios"})).await;
    assert_eq!(s2.key(), "u");
    // The state holds both metas under one key; the diffs only the new one.
    let mut both: Vec<String> = refs_of(&j2.state["u"]);
    both.sort();
    let mut want = vec![ref_of(&j1.meta), ref_of(&j2.meta)];
    want.sort();
    assert_eq!(both, want, "{:?}", j2.state);
    let join2 = json!({"joins": {"u": {"metas": [j2.meta]}}, "leaves": {}});
    for peer in [&mut obs, &mut s1] {
        let (_, payload) = peer.expect_diff(topic).await;
        assert_eq!(payload, join2);
        peer.quiet().await;
    }
    s2.quiet().await;
    let listed = presence_of(&http, topic).await;
    assert_eq!(metas(&listed["u"]).len(), 2, "{listed}");
    assert_converged(
        &http,
        topic,
        &[obs.state(topic), s1.state(topic), s2.state(topic)],
    )
    .await;

    // One socket leaves: only its meta goes.
    s1.leave(topic).await;
    let leave1 = json!({"joins": {}, "leaves": {"u": {"metas": [j1.meta]}}});
    for peer in [&mut obs, &mut s2] {
        let (_, payload) = peer.expect_diff(topic).await;
        assert_eq!(payload, leave1);
        peer.quiet().await;
        assert_eq!(peer.state(topic)["u"], json!({"metas": [j2.meta]}));
    }
    assert_eq!(
        presence_of(&http, topic).await["u"],
        json!({"metas": [j2.meta]})
    );
    assert_converged(&http, topic, &[obs.state(topic), s2.state(topic)]).await;

    // The last one: the key goes.
    s2.leave(topic).await;
    let (_, payload) = obs.expect_diff(topic).await;
    assert_eq!(
        payload,
        json!({"joins": {}, "leaves": {"u": {"metas": [j2.meta]}}})
    );
    assert!(!obs.state(topic).contains_key("u"));
    assert_converged(&http, topic, &[obs.state(topic)]).await;
    obs.leave(topic).await;
    assert_baseline(&http, 3, &[topic]).await;
}

async fn c90_rejoin_after_leave<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:c90";
    let mut obs = Peer::<C>::open(&server, "vsn=2.0.0&user_id=obs").await;
    let jo = obs.join(topic, json!({})).await;
    let mut a = Peer::<C>::open(&server, "vsn=2.0.0&user_id=a").await;
    let mut last = a.join(topic, json!({"device": "d0"})).await;
    obs.expect_diff(topic).await;
    let mut join_refs = vec![last.join_ref.clone()];
    for n in 1..=3 {
        a.leave(topic).await;
        let (_, payload) = obs.expect_diff(topic).await;
        assert_eq!(
            payload,
            json!({"joins": {}, "leaves": {"a": {"metas": [last.meta]}}})
        );
        let device = json!(format!("d{n}"));
        let joined = a.join(topic, json!({"device": device})).await;
        // A fresh state for this join ref (checked by `after_join`), with
        // the new entry and the others.
        assert!(!join_refs.contains(&joined.join_ref));
        join_refs.push(joined.join_ref.clone());
        assert_eq!(joined.state.len(), 2, "{:?}", joined.state);
        assert_eq!(joined.state["obs"], json!({"metas": [jo.meta]}));
        assert_eq!(joined.state["a"], json!({"metas": [joined.meta]}));
        assert_ne!(ref_of(&joined.meta), ref_of(&last.meta));
        let (_, payload) = obs.expect_diff(topic).await;
        assert_eq!(
            payload,
            json!({"joins": {"a": {"metas": [joined.meta]}}, "leaves": {}})
        );
        a.quiet().await;
        obs.quiet().await;
        assert_eq!(a.views[topic].states, n + 1, "one presence_state per join");
        assert_converged(&http, topic, &[obs.state(topic), a.state(topic)]).await;
        last = joined;
    }
    a.leave(topic).await;
    obs.expect_diff(topic).await;
    obs.leave(topic).await;
    assert_baseline(&http, 2, &[topic]).await;
}

async fn c90_duplicate_join<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:c90d";
    let mut obs = Peer::<C>::open(&server, "vsn=2.0.0&user_id=obs").await;
    obs.join(topic, json!({})).await;
    let mut a = Peer::<C>::open(&server, "vsn=2.0.0&user_id=a").await;
    let mut old = a.join(topic, json!({"device": "first"})).await;
    obs.expect_diff(topic).await;

    for n in 0..2 {
        // A second phx_join of a joined topic, without a leave.
        let device = json!(format!("dup{n}"));
        let new_ref = a.send_join(topic, json!({"device": device})).await;
        let reply = a.next().await;
        assert_eq!(
            a.check_reply(&reply, topic, &new_ref, &new_ref),
            ok(json!({}))
        );
        // PROTOCOL §4.6: then phx_close for the old join ref.
        let close = a.next().await;
        assert_eq!(
            close,
            Msg {
                join_ref: json!(old.join_ref),
                r: json!(old.join_ref),
                topic: topic.into(),
                event: "phx_close".into(),
                payload: json!({}),
            }
        );
        // Then a fresh presence_state for the new join ref.
        // (The old entry may still be in it if its leave diff follows.)
        let old_ref = ref_of(&old.meta);
        let joined = a
            .after_join(topic, &new_ref, std::slice::from_ref(&old_ref))
            .await;
        for msg in a.settle().await {
            let diff = Diff::of(&msg);
            let left: Vec<String> = diff.leaves.values().flat_map(refs_of).collect();
            assert!(
                diff.joins.is_empty() && left == [old_ref.clone()],
                "after the duplicate join: {msg:?}"
            );
        }

        // The others: the old entry leaves, the new one joins.
        let (mut left, mut came) = (Vec::new(), Vec::new());
        while left.is_empty() || came.is_empty() {
            let (diff, payload) = obs.expect_diff(topic).await;
            for (key, presence) in &diff.leaves {
                assert_eq!(key, "a", "{payload}");
                left.extend(metas(presence).iter().cloned());
            }
            for (key, presence) in &diff.joins {
                assert_eq!(key, "a", "{payload}");
                came.extend(metas(presence).iter().cloned());
            }
        }
        assert_eq!(left, vec![old.meta.clone()], "the old entry leaves");
        assert_eq!(came, vec![joined.meta.clone()], "the new entry joins");
        obs.quiet().await;

        // Exactly one meta for that socket, everywhere.
        for view in [a.state(topic), obs.state(topic)] {
            assert_eq!(view["a"], json!({"metas": [joined.meta]}));
        }
        assert_eq!(
            presence_of(&http, topic).await["a"],
            json!({"metas": [joined.meta]})
        );
        assert_converged(&http, topic, &[a.state(topic), obs.state(topic)]).await;
        http.wait_stats((2, 2)).await;
        old = joined;
    }
    a.leave(topic).await;
    obs.expect_diff(topic).await;
    obs.leave(topic).await;
    assert_baseline(&http, 2, &[topic]).await;
}

async fn v1_frames<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:v1";
    let mut obs = Peer::<C>::open(&server, "vsn=2.0.0&user_id=obs").await;
    obs.join(topic, json!({})).await;
    let mut sockets = Vec::new();
    for query in ["vsn=1.0.0&user_id=v1", "user_id=v1"] {
        let mut v1 = Peer::<C>::open(&server, query).await;
        assert!(!v1.v2);
        // `Msg::parse` asserts the V1 shape of every frame: exactly topic,
        // event, payload, ref; pushes and broadcasts with a null ref.
        let joined = v1.join(topic, json!({"device": "v1"})).await;
        assert_eq!(v1.key(), "v1");
        assert_eq!(joined.state.len(), 2, "{:?}", joined.state);
        check_meta(&joined.meta, &json!("v1"), false);
        let (_, payload) = obs.expect_diff(topic).await;
        assert_eq!(
            payload,
            json!({"joins": {"v1": {"metas": [joined.meta]}}, "leaves": {}})
        );

        let r = v1
            .push(topic, "update_meta", json!({"device": "v1b"}))
            .await;
        let mut got = vec![v1.next().await, v1.next().await];
        got.sort_by_key(|m| m.event.clone());
        assert_eq!(got[0].event, "phx_reply", "{got:?}");
        assert_eq!(got[0].r, json!(r));
        assert_eq!(got[0].payload, ok(json!({})));
        let (_, payload) = obs.expect_diff(topic).await;
        assert_eq!(got[1].payload, payload);
        assert_eq!(got[1].r, Value::Null);
        v1.quiet().await;
        obs.quiet().await;
        assert_converged(&http, topic, &[obs.state(topic), v1.state(topic)]).await;

        v1.leave(topic).await;
        let (diff, _) = obs.expect_diff(topic).await;
        assert!(diff.joins.is_empty() && diff.leaves.contains_key("v1"));
        obs.quiet().await;
        v1.quiet().await;
        assert_converged(&http, topic, &[obs.state(topic)]).await;
        sockets.push(v1);
    }
    obs.leave(topic).await;
    assert_baseline(&http, 3, &[topic]).await;
}

/// Whether `key` is `anon-<n>`.
fn is_anon(key: &str) -> bool {
    key.strip_prefix("anon-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

async fn anonymous_keys<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let (t1, t2) = ("presence:anon-1", "presence:anon-2");
    let mut p = Peer::<C>::open(&server, "vsn=2.0.0").await;
    let mut q = Peer::<C>::open(&server, "vsn=2.0.0").await;
    p.join(t1, json!({})).await;
    q.join(t1, json!({})).await;
    p.expect_diff(t1).await;
    let (kp, kq) = (p.key(), q.key());
    assert!(is_anon(&kp) && is_anon(&kq), "{kp:?} {kq:?}");
    assert_ne!(kp, kq, "anonymous keys are unique per socket");
    // The same socket on another topic: the same key (`after_join` checks
    // it), and nothing reaches subscribers of the first topic.
    let j2 = p.join(t2, json!({})).await;
    assert_eq!(j2.state.keys().collect::<Vec<_>>(), [&kp]);
    p.quiet().await;
    q.quiet().await;
    let listed = presence_of(&http, t1).await;
    let mut keys: Vec<&String> = listed.as_object().expect("map").keys().collect();
    keys.sort();
    let mut want = vec![&kp, &kq];
    want.sort();
    assert_eq!(keys, want);
    assert_converged(&http, t1, &[p.state(t1), q.state(t1)]).await;
    assert_converged(&http, t2, &[p.state(t2)]).await;
    // A new anonymous socket gets yet another key.
    let mut r = Peer::<C>::open(&server, "vsn=2.0.0").await;
    r.join(t2, json!({})).await;
    assert!(is_anon(&r.key()) && r.key() != kp && r.key() != kq);
    p.expect_diff(t2).await;
    for peer in [&mut p, &mut q] {
        peer.leave(t1).await;
    }
    p.leave(t2).await;
    r.expect_diff(t2).await;
    r.leave(t2).await;
    assert_baseline(&http, 3, &[t1, t2]).await;
}

async fn bad_input<C: Client>() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:bad";
    let mut obs = Peer::<C>::open(&server, "vsn=2.0.0&user_id=obs").await;
    obs.join(topic, json!({"device": "obs"})).await;
    let mut x = Peer::<C>::open(&server, "vsn=2.0.0&user_id=x").await;

    // After each bad input: the server is up, nothing reached the others,
    // and every list matches the server's.
    async fn fine<C: Client>(http: &Http, topic: &str, obs: &mut Peer<C>) {
        http.assert_healthy().await;
        obs.quiet().await;
        assert_converged(http, topic, &[obs.state(topic)]).await;
    }

    // A device over the limit refuses the join (a string, then an object).
    let too_large = [
        json!("x".repeat(DEVICE_LIMIT - 1)),
        json!({"blob": "y".repeat(4 * DEVICE_LIMIT)}),
    ];
    for device in &too_large {
        assert!(device.to_string().len() > DEVICE_LIMIT);
        let status = x.join_refused(topic, json!({"device": device})).await;
        assert_eq!(status, error("device too large"));
        x.quiet().await;
        fine(&http, topic, &mut obs).await;
    }
    http.wait_stats((2, 1)).await;

    // Exactly at the limit: accepted.
    let at_limit = json!("z".repeat(DEVICE_LIMIT - 2));
    assert_eq!(at_limit.to_string().len(), DEVICE_LIMIT);
    let jx = x.join(topic, json!({"device": at_limit})).await;
    check_meta(&jx.meta, &at_limit, false);
    obs.expect_diff(topic).await;
    fine(&http, topic, &mut obs).await;

    // update_meta with a device over the limit: an error, no change.
    for device in &too_large {
        let r = x
            .push(topic, "update_meta", json!({"device": device}))
            .await;
        assert_eq!(x.expect_reply(topic, &r).await, error("device too large"));
        x.quiet().await;
        fine(&http, topic, &mut obs).await;
        assert_eq!(
            presence_of(&http, topic).await["x"],
            json!({"metas": [jx.meta]})
        );
    }

    // update_meta with a binary payload: an error, no change.
    let join_ref = x.join_ref(topic);
    let r = x.c.fresh_ref();
    x.c.send_binary_push(binary_push(
        &join_ref,
        &r,
        topic,
        "update_meta",
        b"\x00\xffdevice",
    ))
    .await;
    assert_eq!(
        x.expect_reply(topic, &r).await,
        error("json payload expected")
    );
    x.quiet().await;
    fine(&http, topic, &mut obs).await;

    // An unknown event: an error, no change.
    let r = x.push(topic, "nope", json!({"device": "sneaky"})).await;
    assert_eq!(x.expect_reply(topic, &r).await, error("unknown event"));
    x.quiet().await;
    fine(&http, topic, &mut obs).await;
    assert_eq!(
        presence_of(&http, topic).await["x"],
        json!({"metas": [jx.meta]})
    );

    // update_meta with a payload that is not an object is refused and
    // changes nothing; `{}` is an update to `device: null`.
    for (payload, answered_ok) in [
        (json!("device"), false),
        (json!([1, 2]), false),
        (json!(42), false),
        (Value::Null, false),
        (json!({}), true),
    ] {
        let r = x.push(topic, "update_meta", payload.clone()).await;
        let (status, mut mine) = x.reply_after_diffs(topic, &r).await;
        if answered_ok {
            assert_eq!(status, ok(json!({})), "update_meta {payload}");
        } else {
            assert_eq!(
                status,
                error("payload must be an object"),
                "update_meta {payload}"
            );
        }
        mine.extend(x.settle().await);
        let theirs = obs.settle().await;
        let want = usize::from(answered_ok);
        assert_eq!(mine.len(), want, "update_meta {payload}: {mine:?}");
        assert_eq!(theirs.len(), want, "update_meta {payload}: {theirs:?}");
        for msg in mine.iter().chain(&theirs) {
            let diff = Diff::of(msg);
            assert!(diff.joins.contains_key("x") && diff.leaves.contains_key("x"));
        }
        fine(&http, topic, &mut obs).await;
        assert_converged(&http, topic, &[obs.state(topic), x.state(topic)]).await;
    }

    // The channel still works.
    let r = x
        .push(topic, "update_meta", json!({"device": "fine"}))
        .await;
    let mut got = vec![x.next().await, x.next().await];
    got.sort_by_key(|m| m.event.clone());
    assert_eq!(got[0].payload, ok(json!({})), "{got:?}");
    assert_eq!(got[0].r, json!(r));
    let (diff, _) = obs.expect_diff(topic).await;
    check_meta(only_meta(&diff.joins, "x"), &json!("fine"), true);
    x.quiet().await;
    fine(&http, topic, &mut obs).await;
    assert_converged(&http, topic, &[x.state(topic)]).await;

    x.leave(topic).await;
    obs.expect_diff(topic).await;
    obs.leave(topic).await;
    assert_baseline(&http, 2, &[topic]).await;
}

// ---------------------------------------------------------------------------
// WebSocket only: connection ends, HTTP API, batch window, flood
// ---------------------------------------------------------------------------

/// A WebSocket peer.
type Ws = Peer<WsClient>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c85_close_frame_untracks() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:close";
    let mut a = Ws::open(&server, "vsn=2.0.0&user_id=a").await;
    let mut b = Ws::open(&server, "vsn=2.0.0&user_id=b").await;
    a.join(topic, json!({})).await;
    let jb = b.join(topic, json!({})).await;
    a.expect_diff(topic).await;
    http.wait_stats((2, 2)).await;

    b.c.try_send(Message::Close(None))
        .await
        .expect("close frame");
    b.c.expect_ended().await;
    let (_, payload) = a.expect_diff(topic).await;
    assert_eq!(
        payload,
        json!({"joins": {}, "leaves": {"b": {"metas": [jb.meta]}}})
    );
    a.quiet().await;
    http.wait_stats((1, 1)).await;
    assert_converged(&http, topic, &[a.state(topic)]).await;
    drop(a);
    assert_baseline(&http, 0, &[topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c85_tcp_drop_and_reset_untrack() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:drop";
    let mut a = Ws::open(&server, "vsn=2.0.0&user_id=a").await;
    a.join(topic, json!({})).await;
    let mut gone = Vec::new();
    for user in ["fin", "rst"] {
        let mut peer = Ws::open(&server, &format!("vsn=2.0.0&user_id={user}")).await;
        let joined = peer.join(topic, json!({"device": user})).await;
        a.expect_diff(topic).await;
        gone.push((peer, joined));
    }
    http.wait_stats((3, 3)).await;

    let (rst, jr) = gone.pop().expect("rst");
    let (fin, jf) = gone.pop().expect("fin");
    // No close frame: the TCP connection just ends (FIN), then one is reset.
    drop(fin);
    let (_, payload) = a.expect_diff(topic).await;
    assert_eq!(
        payload,
        json!({"joins": {}, "leaves": {"fin": {"metas": [jf.meta]}}})
    );
    rst.c.reset();
    let (_, payload) = a.expect_diff(topic).await;
    assert_eq!(
        payload,
        json!({"joins": {}, "leaves": {"rst": {"metas": [jr.meta]}}})
    );
    a.quiet().await;
    http.wait_stats((1, 1)).await;
    assert_converged(&http, topic, &[a.state(topic)]).await;
    drop(a);
    assert_baseline(&http, 0, &[topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_presence_answers_for_encoded_and_unknown_topics() {
    let server = TestServer::start().await;
    let http = server.http();
    // Unknown topics (and topics of other channels): `{}`.
    for path in [
        "/api/presence/presence:nobody",
        "/api/presence/room:lobby",
        "/api/presence/presence%3Anobody",
        "/api/presence/x/y/z",
    ] {
        assert_eq!(presence_at(&http, path).await, json!({}), "{path}");
    }

    let topic = "presence:room 1/ü+é?&#";
    let mut a = Ws::open(&server, "vsn=2.0.0&user_id=a").await;
    let mut b = Ws::open(&server, "vsn=2.0.0").await;
    a.join(topic, json!({"device": "a"})).await;
    b.join(topic, json!({})).await;
    a.expect_diff(topic).await;
    a.quiet().await;
    b.quiet().await;
    // Fully percent-encoded (what `presence_of` does), and with the `:` and
    // `/` left as they are.
    assert_converged(&http, topic, &[a.state(topic), b.state(topic)]).await;
    let partly = "/api/presence/presence:room%201/%C3%BC%2B%C3%A9%3F%26%23";
    assert_eq!(
        normalized(&presence_at(&http, partly).await),
        normalized(&Value::Object(a.state(topic).clone()))
    );
    // Another topic that shares a prefix is not this one.
    assert_eq!(presence_of(&http, "presence:room 1").await, json!({}));

    a.leave(topic).await;
    b.expect_diff(topic).await;
    b.leave(topic).await;
    assert_baseline(&http, 2, &[topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_window_merges_the_changes_of_one_window_into_one_diff() {
    let window = Duration::from_millis(300);
    let server = TestServer::start_with(Options {
        presence_batch_window: Some(window),
        ..options()
    })
    .await;
    let http = server.http();
    let topic = "presence:batch";
    let mut obs = Ws::open(&server, "vsn=2.0.0&user_id=obs").await;
    // The joiner's own diff comes at the end of the window.
    obs.join(topic, json!({})).await;
    obs.quiet().await;

    // Three joins at once: one diff with all of them.
    let users = ["j1", "j2", "j3"];
    let mut peers = Vec::new();
    for user in users {
        peers.push(Ws::open(&server, &format!("vsn=2.0.0&user_id={user}")).await);
    }
    let mut join_refs = Vec::new();
    for peer in &mut peers {
        join_refs.push(peer.send_join(topic, json!({"device": "batch"})).await);
    }
    for (peer, join_ref) in peers.iter_mut().zip(&join_refs) {
        assert_eq!(peer.expect_reply(topic, join_ref).await, ok(json!({})));
    }
    let (diff, payload) = obs.expect_diff(topic).await;
    assert!(diff.leaves.is_empty(), "{payload}");
    assert_eq!(diff.joins.keys().collect::<Vec<_>>(), users, "{payload}");
    for user in users {
        check_meta(only_meta(&diff.joins, user), &json!("batch"), false);
    }
    obs.c
        .expect_silence(window + Duration::from_millis(200))
        .await;
    // Each joiner: its presence_state, then the same batched diff.
    for (peer, join_ref) in peers.iter_mut().zip(&join_refs) {
        let mut state = false;
        let mut batched = false;
        while !(state && batched) {
            let msg = peer.next().await;
            match msg.event.as_str() {
                "presence_state" => {
                    assert_eq!(msg.join_ref, json!(join_ref));
                    state = true;
                }
                "presence_diff" => {
                    assert_eq!(msg.payload, payload, "the batched diff");
                    batched = true;
                }
                _ => panic!("unexpected {msg:?}"),
            }
        }
        peer.quiet().await;
    }
    let mut views = vec![obs.state(topic)];
    views.extend(peers.iter().map(|p| p.state(topic)));
    assert_converged(&http, topic, &views).await;

    // A leave, an update and a socket close at once: one diff again.
    let j3 = peers.pop().expect("j3");
    let j1_meta = only_meta(obs.state(topic), "j1").clone();
    let j2_meta = only_meta(obs.state(topic), "j2").clone();
    let j3_meta = only_meta(obs.state(topic), "j3").clone();
    peers[0].leave(topic).await;
    let r = peers[1]
        .push(topic, "update_meta", json!({"device": "moved"}))
        .await;
    assert_eq!(peers[1].expect_reply(topic, &r).await, ok(json!({})));
    drop(j3);
    let (diff, payload) = obs.expect_diff(topic).await;
    let mut leaves = diff.leaves.clone();
    leaves
        .values_mut()
        .for_each(|p| *p = normalized_presence(p));
    let mut want_leaves = json!({
        "j1": {"metas": [j1_meta]},
        "j2": {"metas": [j2_meta]},
        "j3": {"metas": [j3_meta]},
    });
    want_leaves
        .as_object_mut()
        .expect("map")
        .values_mut()
        .for_each(|p| *p = normalized_presence(p));
    assert_eq!(Value::Object(leaves), want_leaves, "{payload}");
    assert_eq!(diff.joins.keys().collect::<Vec<_>>(), ["j2"], "{payload}");
    let moved = only_meta(&diff.joins, "j2");
    check_meta(moved, &json!("moved"), true);
    assert_eq!(moved["phx_ref_prev"], json!(ref_of(&j2_meta)));
    obs.c
        .expect_silence(window + Duration::from_millis(200))
        .await;
    // Clients converge: the observer, and the updater (which gets the
    // batched diff too).
    obs.converge(&http, topic).await;
    peers[1].converge(&http, topic).await;
    assert_converged(&http, topic, &[obs.state(topic), peers[1].state(topic)]).await;
    let listed = presence_of(&http, topic).await;
    assert_eq!(
        listed
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["j2".to_string(), "obs".to_string()])
    );

    drop(peers);
    drop(obs);
    assert_baseline(&http, 0, &[topic]).await;
}

/// A presence object with its metas sorted by `phx_ref`.
fn normalized_presence(presence: &Value) -> Value {
    let mut all = metas(presence).clone();
    all.sort_by_key(ref_of);
    with_metas(presence, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_joins_and_leaves_on_one_socket_leaves_nothing_behind() {
    let server = TestServer::start().await;
    let http = server.http();
    let topic = "presence:flood";
    let mut obs = Ws::open(&server, "vsn=2.0.0&user_id=obs").await;
    obs.join(topic, json!({})).await;
    let mut flooder = server.ws_v2().await;

    // 200 joins and leaves, sent in bursts of 20 without waiting.
    let mut n = 0;
    for _burst in 0..10 {
        let mut last = String::new();
        for _ in 0..20 {
            n += 1;
            let jr = format!("j{n}");
            // Some joins are refused (never the last of a burst).
            let device = if n % 10 == 5 {
                json!("x".repeat(2 * DEVICE_LIMIT))
            } else {
                json!(n)
            };
            flooder
                .send(json!([jr, jr, topic, "phx_join", {"device": device}]))
                .await;
            flooder
                .send(json!([jr, format!("l{n}"), topic, "phx_leave", {}]))
                .await;
            last = jr;
        }
        // Read the burst's answers up to the last leave's phx_close.
        loop {
            let msg = Msg::parse(&flooder.recv_json().await, true);
            assert_eq!(msg.topic, topic, "{msg:?}");
            if msg.event == "phx_reply" {
                let status = &msg.payload["status"];
                assert!(
                    status == "ok" || msg.payload == error("device too large"),
                    "{msg:?}"
                );
            }
            if msg.event == "phx_close" && msg.join_ref == json!(last) {
                break;
            }
        }
        http.assert_healthy().await;
    }

    // The observer's list ends as the server's: only itself.
    obs.converge(&http, topic).await;
    let listed = presence_of(&http, topic).await;
    assert_eq!(
        listed
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["obs".to_string()])
    );
    http.wait_stats((2, 1)).await;
    // The flooder's socket still works.
    flooder.barrier().await;
    let joined_at_last = flooder.join("bench:1", json!({})).await;
    assert!(!joined_at_last.is_empty());
    drop(flooder);
    drop(obs);
    assert_baseline(&http, 0, &[topic]).await;
}

// ---------------------------------------------------------------------------
// The client model itself
// ---------------------------------------------------------------------------

/// The model follows phoenix.js (PROTOCOL §7.4) on small cases: kept metas
/// before joined ones, leaves of unknown keys ignored, syncState as a diff,
/// diffs before the first state held back.
#[test]
fn the_sync_model_follows_phoenix_js() {
    let meta = |r: &str| json!({"phx_ref": r});
    let map = |v: Value| v.as_object().cloned().expect("object");
    let mut state = map(json!({"u": {"metas": [meta("1")]}}));
    sync_diff(
        &mut state,
        &map(json!({"u": {"metas": [meta("2")]}, "v": {"metas": [meta("3")]}})),
        &map(json!({"nobody": {"metas": [meta("9")]}})),
    );
    assert_eq!(
        Value::Object(state.clone()),
        json!({"u": {"metas": [meta("1"), meta("2")]}, "v": {"metas": [meta("3")]}})
    );
    sync_diff(
        &mut state,
        &State::new(),
        &map(json!({"u": {"metas": [meta("1")]}, "v": {"metas": [meta("3")]}})),
    );
    assert_eq!(
        Value::Object(state.clone()),
        json!({"u": {"metas": [meta("2")]}})
    );
    sync_state(
        &mut state,
        &map(json!({"u": {"metas": [meta("4"), meta("2")]}, "w": {"metas": [meta("5")]}})),
    );
    assert_eq!(
        Value::Object(state),
        json!({"u": {"metas": [meta("2"), meta("4")]}, "w": {"metas": [meta("5")]}})
    );

    let msg = |event: &str, join_ref: Value, payload: Value| Msg {
        join_ref,
        r: Value::Null,
        topic: "presence:t".into(),
        event: event.into(),
        payload,
    };
    let mut view = View {
        channel: Some("7".into()),
        ..View::default()
    };
    let early = json!({"joins": {"x": {"metas": [meta("8")]}}, "leaves": {}});
    view.apply(&msg("presence_diff", Value::Null, early));
    assert!(view.state.is_empty(), "a diff before the state waits");
    view.apply(&msg(
        "presence_state",
        json!("7"),
        json!({"y": {"metas": [meta("6")]}}),
    ));
    assert_eq!(
        Value::Object(view.state.clone()),
        json!({"x": {"metas": [meta("8")]}, "y": {"metas": [meta("6")]}})
    );
    // A rejoin: diffs wait again until its state.
    view.channel = Some("9".into());
    let gone = json!({"joins": {}, "leaves": {"x": {"metas": [meta("8")]}}});
    view.apply(&msg("presence_diff", Value::Null, gone));
    assert!(view.state.contains_key("x"));
    view.apply(&msg(
        "presence_state",
        json!("9"),
        json!({"y": {"metas": [meta("6")]}}),
    ));
    assert_eq!(
        Value::Object(view.state),
        json!({"y": {"metas": [meta("6")]}})
    );
}
