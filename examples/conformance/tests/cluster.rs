//! PROTOCOL §4.8, §4.11, §7, §8.5 (checklist 49, 63, 88, 89) and
//! CONFORMANCE_APP `--pubsub`: clusters of three `fawkes-conformance`
//! processes over a real Redis, black box.
//!
//! - broadcasts from the HTTP API and from clients reach every node exactly
//!   once, sender's node included (both routings), and do so from the moment
//!   a node logs `listening on`;
//! - `broadcast_from` skips the sender only, on every node;
//! - `handle_out` (`to` filtering, `transport`) runs on each remote node;
//! - presence is the union over the nodes, every change reaches every
//!   subscriber once within 3 s, on any node's `GET /api/presence`;
//! - a forced disconnect closes the socket id on every node;
//! - a LongPoll session is served whichever node each request reaches;
//! - a node killed with SIGKILL has its presences leave within 35 s;
//! - while Redis is down each node serves its own clients, and the cluster
//!   recovers once Redis is back;
//! - idle nodes keep their Redis subscription.
//!
//! Every test starts its own nodes in a Redis namespace of its own (so tests
//! in parallel on one Redis never hear each other), on free ports. The Redis
//! at `REDIS_URL` (default `redis://127.0.0.1:6379`) is required: without
//! it the tests fail, they are never skipped. The Redis-restart test runs a
//! `redis-server` of its own.
//!
//! "Exactly once" is checked with a flush: after every client has its copy,
//! a marker is broadcast from another node through the same path (fast lane
//! or `handle_out`); Redis delivers in order on each subscription, so a
//! duplicate (a node delivering its own message again from Redis's echo)
//! would reach the client before the marker.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use support::cluster::{Cluster, Node, RedisServer, RoamingLp, redis_command, redis_url, unique};
use support::cluster_presence::{
    Change, DIFF_WITHIN, Entries, Presence, check_change, converge_on, listed, listen, pump_all,
    summary, want_summary,
};
use support::longpoll::{LpClient, NDJSON};
use support::{Frame, RECV_TIMEOUT, WsClient, ok};
use tokio::time::Instant;

/// How long presence may take to settle right after the nodes start (the
/// replicas first have to hear of each other).
const CONVERGE_WITHIN: Duration = Duration::from_secs(5);

/// CONFORMANCE_APP: a dead node's entries leave within 35 s.
const DOWN_WITHIN: Duration = Duration::from_secs(35);

/// How long the idle test leaves the nodes alone: more than two of their
/// keepalive periods (5 s).
const IDLE: Duration = Duration::from_secs(12);

/// How long Redis stays down: long enough for the nodes to notice and back
/// off between reconnection attempts.
const OUTAGE: Duration = Duration::from_secs(3);

/// After Redis is back, a cross-node broadcast gets through within this.
const RECOVER_WITHIN: Duration = Duration::from_secs(15);

/// After Redis is back, presence converges through anti-entropy within
/// this (an idle replica is heard from every ~16.5 s, PROTOCOL §8.3).
const RECONVERGE_WITHIN: Duration = Duration::from_secs(30);

/// Longer than a gossip round and an anti-entropy round (PROTOCOL §8.3):
/// a duplicate diff would have arrived by then.
const QUIET: Duration = Duration::from_millis(3500);

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// A V2 frame's event.
fn event(frame: &Value) -> &str {
    frame[3].as_str().unwrap_or_default()
}

/// A Room's `handle_out` copy of `new_msg` for one subscriber.
fn room_copy(join_ref: &str, topic: &str, payload: &Value, transport: &str) -> Value {
    let mut payload = payload.clone();
    payload["transport"] = json!(transport);
    json!([join_ref, null, topic, "new_msg", payload])
}

/// A fast-lane broadcast frame.
fn fast(topic: &str, event: &str, payload: &Value) -> Value {
    json!([null, null, topic, event, payload])
}

/// The frames of `ws` up to and including the first for which `last`
/// holds; fails after `RECV_TIMEOUT`.
async fn read_until(ws: &mut WsClient, who: &str, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + RECV_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match ws.recv_within(wait).await {
            Some(Frame::Json(frame)) => {
                let done = last(&frame);
                seen.push(frame);
                if done {
                    return seen;
                }
            }
            Some(other) => panic!("{who}: expected JSON frames, got {other:?} after {seen:?}"),
            None => panic!("{who}: still waiting after {RECV_TIMEOUT:?}; frames so far: {seen:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket members of a topic
// ---------------------------------------------------------------------------

/// A WebSocket client on one node, with the join refs of its topics.
struct Member {
    /// A name for messages; also the `user_id` when it has one.
    name: String,
    node: usize,
    ws: WsClient,
    refs: HashMap<String, String>,
    /// The `user` of every `user_entered` seen, in order.
    entered: Vec<String>,
}

impl Member {
    /// Connects a V2 client to `node`, with `user_id=name` when `named`.
    async fn connect(nodes: &[Node], node: usize, name: &str, named: bool) -> Member {
        let query = if named {
            format!("vsn=2.0.0&user_id={name}")
        } else {
            "vsn=2.0.0".to_string()
        };
        Member {
            name: name.to_string(),
            node,
            ws: nodes[node].ws(&query).await,
            refs: HashMap::new(),
            entered: Vec::new(),
        }
    }

    fn who(&self) -> String {
        format!("{} (node {})", self.name, self.node)
    }

    fn join_ref(&self, topic: &str) -> &str {
        &self.refs[topic]
    }

    /// Joins a topic without post-join pushes (`bench:*`, `chat:*`).
    async fn join(&mut self, topic: &str) {
        let join_ref = self.ws.join(topic, json!({})).await;
        self.refs.insert(topic.to_string(), join_ref);
    }

    /// Joins a `room:*` topic with `{"user": name}` and reads up to its
    /// `joined` push. `user_entered` of members who joined just before on
    /// other nodes may still be on their way through Redis when this join
    /// subscribes, so those are tolerated here (and counted in `entered`).
    async fn join_room(&mut self, topic: &str, user_id: Value) {
        let r = self.ws.next_ref();
        self.ws
            .send(json!([r, r, topic, "phx_join", {"user": self.name}]))
            .await;
        let joined = json!([r, null, topic, "joined", {"status": "connected", "user_id": user_id}]);
        let who = self.who();
        let frames = read_until(&mut self.ws, &who, |f| *f == joined).await;
        let mut own: Vec<Value> = Vec::new();
        for frame in frames {
            if event(&frame) == "user_entered" {
                let user = frame[4]["user"].as_str().unwrap_or_default().to_string();
                assert_eq!(
                    (&frame[0], &frame[1], &frame[2]),
                    (&Value::Null, &Value::Null, &json!(topic)),
                    "{who}: user_entered is a broadcast: {frame}"
                );
                if user == self.name {
                    own.push(frame);
                }
                self.entered.push(user);
            } else {
                own.push(frame);
            }
        }
        let want = vec![
            json!([r, r, topic, "phx_reply", ok(json!({}))]),
            fast(topic, "user_entered", &json!({"user": self.name})),
            joined,
        ];
        assert_eq!(own, want, "{who}: the join's own frames, in order");
        self.refs.insert(topic.to_string(), r);
    }

    /// Pushes `event` on a joined topic; returns the ref.
    async fn push(&mut self, topic: &str, event: &str, payload: Value) -> String {
        let join_ref = self.refs[topic].clone();
        self.ws.push(&join_ref, topic, event, payload).await
    }

    /// The ok reply `{}` to `r` on `topic`.
    fn ok_reply(&self, topic: &str, r: &str) -> Value {
        json!([self.refs[topic], r, topic, "phx_reply", ok(json!({}))])
    }

    /// Reads until every frame of `wants` has arrived, in any order; any
    /// other frame fails the test.
    async fn expect_all(&mut self, wants: Vec<Value>) {
        let who = self.who();
        let mut missing = wants;
        let deadline = Instant::now() + RECV_TIMEOUT;
        while !missing.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            let frame = match self.ws.recv_within(wait).await {
                Some(Frame::Json(frame)) => frame,
                Some(other) => panic!("{who}: expected {missing:?}, got {other:?}"),
                None => panic!("{who}: never got {missing:?} (waited {RECV_TIMEOUT:?})"),
            };
            let at = missing.iter().position(|w| *w == frame);
            let at = at.unwrap_or_else(|| {
                panic!("{who}: unexpected frame {frame} while waiting for {missing:?}")
            });
            missing.remove(at);
        }
    }

    /// Reads frames in order: exactly `wants`.
    async fn expect_seq(&mut self, wants: Vec<Value>) {
        for want in wants {
            self.ws.expect(want).await;
        }
    }
}

/// Broadcasts a marker from `node` through the API and asserts that the
/// marker (`marker(member)`) is the very next frame of every member: no
/// duplicate of what they were sent before is still on its way.
async fn flush(
    nodes: &[Node],
    node: usize,
    members: &mut [Member],
    topic: &str,
    event: &str,
    marker: impl Fn(&Member, &Value) -> Value,
) {
    let payload = json!({"flush": unique("marker")});
    nodes[node]
        .http()
        .broadcast(topic, event, payload.clone())
        .await;
    for member in members.iter_mut() {
        let want = marker(member, &payload);
        let who = member.who();
        let frames = read_until(&mut member.ws, &who, |f| *f == want).await;
        assert_eq!(
            frames.len(),
            1,
            "{who}: frames before the flush marker from node {node} (a duplicate delivery?): {frames:?}"
        );
    }
}

/// Every member gets exactly one frame, `copy(member, payload)` (a
/// `new_msg` its node's `handle_out` pushed), then nothing before a `new_msg`
/// marker from `node` ([`flush`]).
async fn copies_then_flush(
    nodes: &[Node],
    node: usize,
    members: &mut [Member],
    topic: &str,
    payload: &Value,
    copy: impl Fn(&Member, &Value) -> Value,
) {
    for member in members.iter_mut() {
        let want = copy(member, payload);
        member.expect_all(vec![want]).await;
    }
    flush(nodes, node, members, topic, "new_msg", copy).await;
}

/// A barrier on every member: no frame is left unread.
async fn barrier_all(members: &mut [Member]) {
    for member in members {
        member.ws.barrier().await;
    }
}

/// [`flush`] with a fast-lane marker (event `flush`).
async fn flush_fast(nodes: &[Node], node: usize, members: &mut [Member], topic: &str) {
    flush(nodes, node, members, topic, "flush", |_, p| {
        fast(topic, "flush", p)
    })
    .await;
}

// ---------------------------------------------------------------------------
// 1. Broadcasts across nodes (checklist 49)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c49_broadcasts_reach_every_node_exactly_once_sharded() {
    broadcasts_reach_every_node_exactly_once("sharded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c49_broadcasts_reach_every_node_exactly_once_routing_all() {
    broadcasts_reach_every_node_exactly_once("all").await;
}

/// Two clients per node on a `bench:*` and a `chat:*` topic; every node in
/// turn is the origin of an API broadcast, a fast-lane client broadcast and
/// an intercepted client broadcast.
async fn broadcasts_reach_every_node_exactly_once(routing: &str) {
    let cluster = Cluster::start_with(&redis_url(), 3, routing).await;
    let nodes = &cluster.nodes;
    let bench = format!("bench:{}", unique("x"));
    let chat = format!("chat:{}", unique("x"));
    let mut members = Vec::new();
    for node in 0..3 {
        for i in 0..2 {
            let mut member = Member::connect(nodes, node, &format!("m{node}{i}"), false).await;
            member.join(&bench).await;
            member.join(&chat).await;
            members.push(member);
        }
    }

    for origin in 0..3 {
        // Server-side broadcast (fast lane).
        let payload = json!({"via": "api", "origin": origin});
        nodes[origin]
            .http()
            .broadcast(&bench, "from_api", payload.clone())
            .await;
        for member in &mut members {
            member
                .expect_all(vec![fast(&bench, "from_api", &payload)])
                .await;
        }
        flush_fast(nodes, (origin + 1) % 3, &mut members, &bench).await;

        // A client's `broadcast` (fast lane: `msg` before the reply).
        let sender = origin * 2;
        let payload = json!({"from": members[sender].name});
        let r = members[sender]
            .push(&bench, "broadcast", payload.clone())
            .await;
        let msg = fast(&bench, "msg", &payload);
        for (i, member) in members.iter_mut().enumerate() {
            if i == sender {
                let reply = member.ok_reply(&bench, &r);
                member.expect_seq(vec![msg.clone(), reply]).await;
            } else {
                member.expect_all(vec![msg.clone()]).await;
            }
        }
        flush_fast(nodes, (origin + 2) % 3, &mut members, &bench).await;

        // A chat message: intercepted, each node's `handle_out` pushes it
        // unchanged with the subscriber's join ref; no reply.
        let sender = origin * 2 + 1;
        let payload = json!({"body": format!("hi from {}", members[sender].name)});
        members[sender]
            .push(&chat, "new_msg", payload.clone())
            .await;
        let chat_copy =
            |m: &Member, p: &Value| json!([m.join_ref(&chat), null, chat, "new_msg", p]);
        let flusher = (origin + 1) % 3;
        copies_then_flush(nodes, flusher, &mut members, &chat, &payload, chat_copy).await;

        // Checklist 49: a server-side broadcast of an intercepted event runs
        // `handle_out` on every node.
        let payload = json!({"body": "from the api", "origin": origin});
        nodes[origin]
            .http()
            .broadcast(&chat, "new_msg", payload.clone())
            .await;
        let flusher = (origin + 2) % 3;
        copies_then_flush(nodes, flusher, &mut members, &chat, &payload, chat_copy).await;
    }
    barrier_all(&mut members).await;
}

/// PROTOCOL §4.8 from the first moment: once a node has logged `listening
/// on` (all an outside harness waits for), a client that has its join reply
/// gets every later broadcast, from any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c49_a_node_is_in_the_cluster_once_it_listens() {
    let cluster = Cluster::spawn(&redis_url(), 2, "sharded").await;
    let nodes = &cluster.nodes;
    let topic = format!("bench:{}", unique("early"));
    let mut a = nodes[0].ws("vsn=2.0.0").await;
    a.join(&topic, json!({})).await;
    let mut b = nodes[1].ws("vsn=2.0.0").await;
    b.join(&topic, json!({})).await;
    for (i, node) in nodes.iter().enumerate() {
        node.http()
            .broadcast(&topic, "early", json!({"from": i}))
            .await;
    }
    for (i, client) in [&mut a, &mut b].into_iter().enumerate() {
        let mut want: Vec<Value> = (0..2)
            .map(|from| fast(&topic, "early", &json!({"from": from})))
            .collect();
        let deadline = Instant::now() + RECV_TIMEOUT;
        while !want.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match client.recv_within(wait).await {
                Some(Frame::Json(frame)) if want.contains(&frame) => want.retain(|w| *w != frame),
                other => panic!(
                    "client on node {i}, joined right after its node logged `listening on`: \
                     still missing {want:?}, got {other:?}"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 2. broadcast_from across nodes
// ---------------------------------------------------------------------------

/// Joins two named members per node to `room`, then checks and flushes the
/// `user_entered` broadcasts: each member sees every later joiner's exactly
/// once, and an earlier joiner's at most once (one published just before it
/// subscribed may or may not reach it, PROTOCOL §4.8).
async fn room_of_six(nodes: &[Node], room: &str, prefix: &str) -> Vec<Member> {
    let mut members: Vec<Member> = Vec::new();
    for node in 0..3 {
        for i in 0..2 {
            let name = format!("{prefix}{node}{i}");
            let mut member = Member::connect(nodes, node, &name, true).await;
            member.join_room(room, json!(name)).await;
            members.push(member);
        }
    }
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    for (i, member) in members.iter_mut().enumerate() {
        let who = member.who();
        let later = &names[i..];
        let deadline = Instant::now() + RECV_TIMEOUT;
        while !later.iter().all(|n| member.entered.contains(n)) {
            let wait = deadline.saturating_duration_since(Instant::now());
            match member.ws.recv_within(wait).await {
                Some(Frame::Json(f)) if event(&f) == "user_entered" && f[1].is_null() => {
                    member
                        .entered
                        .push(f[4]["user"].as_str().unwrap_or_default().to_string());
                }
                other => panic!(
                    "{who}: waiting for user_entered of {later:?} (seen {:?}), got {other:?}",
                    member.entered
                ),
            }
        }
    }
    // A straggler from before a join, or a duplicate, is still counted.
    let payload = json!({"flush": unique("marker")});
    nodes[0]
        .http()
        .broadcast(room, "flush", payload.clone())
        .await;
    let marker = fast(room, "flush", &payload);
    for member in &mut members {
        let who = member.who();
        for frame in read_until(&mut member.ws, &who, |f| *f == marker).await {
            if frame == marker {
                break;
            }
            assert_eq!(event(&frame), "user_entered", "{who}: unexpected {frame}");
            let user = frame[4]["user"].as_str().unwrap_or_default();
            member.entered.push(user.to_string());
        }
    }
    for (i, member) in members.iter().enumerate() {
        for (j, name) in names.iter().enumerate() {
            let count = member.entered.iter().filter(|n| *n == name).count();
            let want = if j >= i { 1..=1 } else { 0..=1 };
            assert!(
                want.contains(&count),
                "{}: user_entered of {name} seen {count} times (want {want:?}): {:?}",
                member.who(),
                member.entered
            );
        }
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c49_broadcast_from_reaches_every_node_but_the_sender() {
    let cluster = Cluster::start(3).await;
    let nodes = &cluster.nodes;
    let room = format!("room:{}", unique("from"));
    let mut members = room_of_six(nodes, &room, "u").await;

    for origin in 0..3 {
        let sender = origin * 2 + origin % 2;
        let payload = json!({"body": format!("psst from {}", members[sender].name)});
        let r = members[sender]
            .push(&room, "new_msg_from", payload.clone())
            .await;
        for (i, member) in members.iter_mut().enumerate() {
            if i == sender {
                let reply = member.ok_reply(&room, &r);
                member.expect_seq(vec![reply]).await;
            } else {
                let copy = room_copy(member.join_ref(&room), &room, &payload, "websocket");
                member.expect_all(vec![copy]).await;
            }
        }
        // The sender's next frame is a later `new_msg` to everyone: it never
        // got its own, from its node or from another.
        let marker = |m: &Member, p: &Value| room_copy(m.join_ref(&room), &room, p, "websocket");
        flush(
            nodes,
            (origin + 1) % 3,
            &mut members,
            &room,
            "new_msg",
            marker,
        )
        .await;
    }
    barrier_all(&mut members).await;
}

// ---------------------------------------------------------------------------
// 3. Interception on remote nodes (checklist 49)
// ---------------------------------------------------------------------------

/// Reads a LongPoll client until `last`, dropping `user_entered` broadcasts.
async fn lp_read_until(lp: &mut LpClient, last: &Value) -> Vec<Value> {
    let mut seen = lp.recv_until(|m| m == last).await;
    seen.retain(|m| event(m) != "user_entered");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c49_handle_out_filters_and_rewrites_on_each_remote_node() {
    let cluster = Cluster::start(3).await;
    let nodes = &cluster.nodes;
    let room = format!("room:{}", unique("out"));

    // carol: LongPoll on node C, joined first (nothing earlier can reach her).
    let mut carol = nodes[2].lp("vsn=2.0.0&user_id=carol").await;
    let carol_ref = carol.join_room(&room, json!("carol"), json!("carol")).await;

    // alice on A (the sender), bob and an anonymous client on B, dave on C.
    let mut ws: Vec<Member> = Vec::new();
    for (node, name, named) in [
        (0, "alice", true),
        (1, "bob", true),
        (1, "anon", false),
        (2, "dave", true),
    ] {
        let mut member = Member::connect(nodes, node, name, named).await;
        let user_id = if named { json!(name) } else { Value::Null };
        member.join_room(&room, user_id).await;
        ws.push(member);
    }
    let mut audience = Audience {
        room: room.clone(),
        ws,
        carol,
        carol_ref,
    };

    // alice sends to bob, to carol, then to everyone.
    let to_bob = json!({"body": "for bob", "to": "bob"});
    let to_carol = json!({"body": "for carol", "to": "carol"});
    let all = json!({"body": "for all"});
    let mut refs = Vec::new();
    for payload in [&to_bob, &to_carol, &all] {
        let r = audience.ws[0].push(&room, "new_msg", payload.clone()).await;
        refs.push(r);
    }
    let wants = [
        ("alice", vec![]),
        ("bob", vec![&to_bob]),
        ("anon", vec![]),
        ("dave", vec![]),
        ("carol", vec![&to_carol]),
    ];
    audience.check_copies(&wants, &all, Some(&refs)).await;

    // The API on node B sends to dave, then to everyone.
    let to_dave = json!({"body": "for dave", "to": "dave", "via": "api"});
    let all = json!({"body": "for all", "via": "api"});
    for payload in [&to_dave, &all] {
        nodes[1]
            .http()
            .broadcast(&room, "new_msg", payload.clone())
            .await;
    }
    let wants = [
        ("alice", vec![]),
        ("bob", vec![]),
        ("anon", vec![]),
        ("dave", vec![&to_dave]),
        ("carol", vec![]),
    ];
    audience.check_copies(&wants, &all, None).await;

    barrier_all(&mut audience.ws).await;
    audience.carol.barrier().await;
}

/// The clients of the `handle_out` test on `room`: WebSocket members, and
/// carol on LongPoll (node C) with her join ref.
struct Audience {
    room: String,
    ws: Vec<Member>,
    carol: LpClient,
    carol_ref: String,
}

impl Audience {
    /// Each client must get exactly its `(name, payloads)` copies, then its copy
    /// of `all` (which comes last from the same origin, so it flushes the
    /// rest); `user_entered` frames are not this test's business and are
    /// dropped. With `replies`, `ws[0]` sent the three messages and gets their
    /// replies first (PROTOCOL §4.8: an intercepted sender sees its reply
    /// before its copy).
    async fn check_copies(
        &mut self,
        wants: &[(&str, Vec<&Value>)],
        all: &Value,
        replies: Option<&[String]>,
    ) {
        let (room, carol_ref) = (self.room.as_str(), self.carol_ref.as_str());
        for (i, member) in self.ws.iter_mut().enumerate() {
            let join_ref = member.join_ref(room).to_string();
            let mut want: Vec<Value> = match (i, replies) {
                (0, Some(refs)) => refs.iter().map(|r| member.ok_reply(room, r)).collect(),
                _ => Vec::new(),
            };
            let (_, copies) = wants
                .iter()
                .find(|(name, _)| *name == member.name)
                .expect("wanted copies");
            want.extend(
                copies
                    .iter()
                    .map(|p| room_copy(&join_ref, room, p, "websocket")),
            );
            let last = room_copy(&join_ref, room, all, "websocket");
            want.push(last.clone());
            let who = member.who();
            let mut got = read_until(&mut member.ws, &who, |f| *f == last).await;
            got.retain(|f| event(f) != "user_entered");
            if replies.is_some() && i == 0 {
                assert_eq!(got, want, "{who}: replies, then only its copy for everyone");
            } else {
                got.sort_by_key(Value::to_string);
                want.sort_by_key(Value::to_string);
                assert_eq!(got, want, "{who}: its copies, filtered by `to`");
            }
        }
        let (_, copies) = wants
            .iter()
            .find(|(name, _)| *name == "carol")
            .expect("carol's copies");
        let mut want: Vec<Value> = copies
            .iter()
            .map(|p| room_copy(carol_ref, room, p, "longpoll"))
            .collect();
        let last = room_copy(carol_ref, room, all, "longpoll");
        want.push(last.clone());
        let got = lp_read_until(&mut self.carol, &last).await;
        assert_eq!(got, want, "carol (LongPoll, node 2): her copies");
    }
}

// ---------------------------------------------------------------------------
// 4. Presence: the union, and every diff once (checklist 88)
// ---------------------------------------------------------------------------

/// A presence change that [`Lobby::step`] makes happen.
#[derive(Clone, Copy)]
enum Act {
    /// A client of `key` with `device` joins on `node`.
    Join {
        node: usize,
        key: &'static str,
        device: &'static str,
    },
    /// `clients[client]`, of `key` with device `from`, updates it to `to`.
    Update {
        client: usize,
        key: &'static str,
        from: &'static str,
        to: &'static str,
    },
    /// `clients[client]`, the only client of `key`, leaves.
    Leave { client: usize, key: &'static str },
}

/// The presence test's state: its clients, the `(key, device)`s they must
/// show, the union they last converged on and every change so far.
struct Lobby<'a> {
    nodes: &'a [Node],
    all_nodes: Vec<&'a Node>,
    topic: String,
    clients: Vec<Presence>,
    /// Clients that left the topic (still connected, no longer read).
    gone: Vec<Presence>,
    pairs: Vec<(&'static str, &'static str)>,
    union: Entries,
    changes: Vec<Change>,
}

impl<'a> Lobby<'a> {
    fn new(nodes: &'a [Node], topic: String) -> Lobby<'a> {
        Lobby {
            nodes,
            all_nodes: nodes.iter().collect(),
            topic,
            clients: Vec::new(),
            gone: Vec::new(),
            pairs: Vec::new(),
            union: Entries::new(),
            changes: Vec::new(),
        }
    }

    /// Makes `act` happen, then waits (up to `within`) until every view and
    /// every node's list hold the new `(key, device)`s and the same entries,
    /// and asserts how many are new to the union: one after a join or an
    /// update, none after a leave. Checks the change on every client there
    /// before it (the updater included, the leaver not): its joins (the new
    /// entries) and leaves (the update's old entry, the leaver's entries),
    /// each in exactly one diff, within [`DIFF_WITHIN`]. Records the change
    /// and returns it; the new union is `self.union`.
    async fn step(&mut self, what: &str, act: Act, within: Duration) -> &Change {
        let leaves: Vec<String> = match act {
            Act::Join { .. } => Vec::new(),
            Act::Update { key, from, .. } => {
                let old: Vec<String> = self
                    .union
                    .iter()
                    .filter(|(_, (k, meta))| k == key && meta["device"] == json!(from))
                    .map(|(r, _)| r.clone())
                    .collect();
                assert_eq!(old.len(), 1, "{what}: {key}'s entry: {:?}", self.union);
                old
            }
            Act::Leave { client, key } => {
                self.gone.push(self.clients.remove(client));
                self.union
                    .iter()
                    .filter(|(_, (k, _))| k == key)
                    .map(|(r, _)| r.clone())
                    .collect()
            }
        };
        let observers: Vec<String> = self.clients.iter().map(|c| c.name.clone()).collect();
        let t0 = Instant::now();
        match act {
            Act::Join { node, key, device } => {
                let client = Presence::join(self.nodes, node, &self.topic, key, device).await;
                self.clients.push(client);
                self.pairs.push((key, device));
            }
            Act::Update {
                client,
                key,
                from,
                to,
            } => {
                self.clients[client].update(to).await;
                self.pairs.retain(|p| *p != (key, from));
                self.pairs.push((key, to));
            }
            Act::Leave { key, .. } => {
                self.gone.last_mut().expect("the leaver").leave().await;
                self.pairs.retain(|p| p.0 != key);
            }
        }
        let now = converge_on(
            &self.all_nodes,
            &mut self.clients,
            &self.topic,
            &self.pairs,
            within,
        )
        .await;
        let joins: Vec<String> = now
            .keys()
            .filter(|r| !self.union.contains_key(*r))
            .cloned()
            .collect();
        let new_entries = usize::from(!matches!(act, Act::Leave { .. }));
        assert_eq!(
            joins.len(),
            new_entries,
            "{what}: entries new to the union: {now:?}"
        );
        let change = Change {
            what: what.to_string(),
            t0,
            joins,
            leaves,
            observers,
        };
        check_change(&self.clients.iter().collect::<Vec<_>>(), &change);
        self.union = now;
        self.changes.push(change);
        self.changes.last().expect("the change")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c88_presence_is_the_union_and_every_diff_arrives_once() {
    let cluster = Cluster::start(3).await;
    let nodes = &cluster.nodes;
    let topic = format!("presence:{}", unique("lobby"));
    let mut lobby = Lobby::new(nodes, topic.clone());

    // One joiner per node, in turn: each earlier subscriber sees each later
    // join once; each view and each node's list converge on the union.
    for (node, key, device) in [(0, "ua", "web"), (1, "ub", "ios"), (2, "uc", "android")] {
        let what = format!("{key} joining on node {node}");
        let act = Act::Join { node, key, device };
        lobby.step(&what, act, CONVERGE_WITHIN).await;
    }

    // A second socket of `ua`, on node C: its presence_state already holds
    // everyone (node C has converged), and `ua` has two metas everywhere.
    let before = lobby.union.clone();
    let act = Act::Join {
        node: 2,
        key: "ua",
        device: "tablet",
    };
    let what = "ua's second socket joining on node 2";
    lobby.step(what, act, DIFF_WITHIN).await;
    let tablet = lobby.clients.last().expect("the tablet");
    let state = tablet.state.as_ref().expect("state");
    for (phx_ref, entry) in &before {
        assert_eq!(
            state.get(phx_ref),
            Some(entry),
            "{}: presence_state lacks an entry of the converged union: {state:?}",
            tablet.name
        );
    }

    // An update on node B: one diff with the new meta (phx_ref_prev) in
    // joins and the old one in leaves, everywhere, the updater included.
    let act = Act::Update {
        client: 1,
        key: "ub",
        from: "ios",
        to: "car",
    };
    let change = lobby.step("ub's update on node 1", act, DIFF_WITHIN).await;
    let (new_ref, old_ref) = (change.joins[0].clone(), change.leaves[0].clone());
    let (_, new_meta) = &lobby.union[&new_ref];
    assert_eq!(
        new_meta["phx_ref_prev"],
        json!(old_ref),
        "the updated meta's phx_ref_prev: {new_meta}"
    );
    for client in &lobby.clients {
        let diff = client.joins_of(&new_ref)[0];
        assert!(
            diff.leaves.contains_key(&old_ref),
            "{}: an update is one diff with both joins and leaves: {diff:?}",
            client.name
        );
    }

    // uc leaves on node C: the others see the leave once.
    let act = Act::Leave {
        client: 2,
        key: "uc",
    };
    lobby.step("uc leaving on node 2", act, DIFF_WITHIN).await;

    // Nothing arrives twice later (gossip, anti-entropy), and the lists
    // still agree.
    let mut refs: Vec<&mut Presence> = lobby.clients.iter_mut().collect();
    listen(&mut refs, QUIET).await;
    let readers: Vec<&Presence> = lobby.clients.iter().collect();
    for change in &lobby.changes {
        check_change(&readers, change);
    }
    for node in nodes {
        let list = listed(node, &topic).await;
        assert_eq!(list, lobby.union, "GET on {}", node.name);
    }
    for client in &lobby.clients {
        assert_eq!(client.view, lobby.union, "{}: final view", client.name);
        assert!(
            client.other.is_empty(),
            "{}: frames other than presence events: {:?}",
            client.name,
            client.other
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Forced disconnect by socket id (checklist 63)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c63_disconnect_closes_the_socket_id_on_every_node() {
    let cluster = Cluster::start(3).await;
    let nodes = &cluster.nodes;
    let user = unique("doomed");
    let bench = format!("bench:{}", unique("dis"));
    let mut doomed = Vec::new();
    let mut bystanders = Vec::new();
    for node in nodes {
        let mut client = node.ws(&format!("vsn=2.0.0&user_id={user}")).await;
        client.join(&bench, json!({})).await;
        doomed.push(client);
        let mut other = node.ws(&format!("vsn=2.0.0&user_id={user}-not")).await;
        other.join(&bench, json!({})).await;
        bystanders.push(other);
    }
    let mut lp = nodes[2].lp(&format!("vsn=2.0.0&user_id={user}")).await;
    lp.join(&bench, json!({})).await;

    let body = json!({"socket_id": format!("user_socket:{user}")});
    let answer = nodes[1].http().post_json("/api/disconnect", &body).await;
    assert_eq!(
        answer,
        (200, json!({"ok": true})),
        "POST /api/disconnect {body}"
    );
    for (node, client) in doomed.iter_mut().enumerate() {
        assert_eq!(
            client.expect_close().await,
            1001,
            "close code of user_socket:{user} on node {node}"
        );
    }
    // The LongPoll session with that id, on node C, ends too.
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let hb = lp.heartbeat("alive?").to_string().into_bytes();
        let answer = lp.post(Some(NDJSON), hb).await;
        match answer.status() {
            410 => break,
            200 => assert!(
                Instant::now() < deadline,
                "LongPoll session of user_socket:{user} on node 2 still alive {RECV_TIMEOUT:?} after the disconnect"
            ),
            other => panic!("LongPoll POST answered {other}: {}", answer.text()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Other ids live on, and still hear cluster broadcasts.
    nodes[0]
        .http()
        .broadcast(&bench, "still_here", json!({}))
        .await;
    for client in &mut bystanders {
        client.expect(fast(&bench, "still_here", &json!({}))).await;
        client.barrier().await;
    }
}

// ---------------------------------------------------------------------------
// 6. LongPoll across nodes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longpoll_session_works_whichever_node_each_request_reaches() {
    let cluster = Cluster::start(3).await;
    let nodes = &cluster.nodes;
    let room = format!("room:{}", unique("lp"));
    let bench = format!("bench:{}", unique("lp"));
    let user = unique("roamer");

    // Opened on node A; every later request goes to B or C, alternately.
    let mut lp = RoamingLp::open(
        nodes[0].addr,
        &[nodes[1].addr, nodes[2].addr],
        &format!("vsn=2.0.0&user_id={user}"),
    )
    .await;
    lp.barrier().await;
    let jr = lp.join_room(&room, json!(user), json!(user)).await;
    let jb = lp.join(&bench, json!({})).await;

    // A WebSocket member on node B joins after: the session hears it.
    let mut watcher = Member::connect(nodes, 1, "watcher", true).await;
    watcher.join_room(&room, json!("watcher")).await;
    watcher.join(&bench).await;
    lp.expect(fast(&room, "user_entered", &json!({"user": "watcher"})))
        .await;

    // Push with reply, and an intercepted broadcast both ways.
    lp.echo(&jr, &room).await;
    let payload = json!({"body": "hello from longpoll"});
    let r = lp.push(&jr, &room, "new_msg", payload.clone()).await;
    lp.expect(json!([jr, r, room, "phx_reply", ok(json!({}))]))
        .await;
    lp.expect(room_copy(&jr, &room, &payload, "longpoll")).await;
    let copy = room_copy(watcher.join_ref(&room), &room, &payload, "websocket");
    watcher.expect_all(vec![copy]).await;

    let payload = json!({"body": "hello from websocket"});
    let r = watcher.push(&room, "new_msg", payload.clone()).await;
    let reply = watcher.ok_reply(&room, &r);
    let copy = room_copy(watcher.join_ref(&room), &room, &payload, "websocket");
    watcher.expect_seq(vec![reply, copy]).await;
    lp.expect(room_copy(&jr, &room, &payload, "longpoll")).await;

    // Server broadcasts from every node, and a client broadcast from B.
    for (i, node) in nodes.iter().enumerate() {
        let payload = json!({"from_node": i});
        node.http().broadcast(&bench, "news", payload.clone()).await;
        lp.expect(fast(&bench, "news", &payload)).await;
        watcher
            .expect_all(vec![fast(&bench, "news", &payload)])
            .await;
    }
    let payload = json!({"from": "watcher"});
    let r = watcher.push(&bench, "broadcast", payload.clone()).await;
    let reply = watcher.ok_reply(&bench, &r);
    watcher
        .expect_seq(vec![fast(&bench, "msg", &payload), reply])
        .await;
    lp.expect(fast(&bench, "msg", &payload)).await;
    let r = lp.push(&jb, &bench, "ping", json!({"n": 1})).await;
    lp.expect(json!([jb, r, bench, "phx_reply", ok(json!({"n": 1}))]))
        .await;
    lp.barrier().await;
    watcher.ws.barrier().await;

    // The requests really went to both other nodes, polls and posts alike.
    for addr in [nodes[1].addr, nodes[2].addr] {
        for method in [http::Method::GET, http::Method::POST] {
            assert!(
                lp.trail.contains(&(addr, method.clone())),
                "no {method} went to {addr}: {:?}",
                lp.trail
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 7. A node dies (checklist 89)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c89_presences_of_a_killed_node_leave_the_others() {
    let mut cluster = Cluster::start(3).await;
    let topic = format!("presence:{}", unique("doom"));
    let mut clients: Vec<Presence> = Vec::new();
    let mut pairs = Vec::new();
    for (node, key, device) in [
        (0, "ua", "web"),
        (1, "ub", "ios"),
        (2, "uc", "android"),
        (2, "ud", "tv"),
    ] {
        clients.push(Presence::join(&cluster.nodes, node, &topic, key, device).await);
        pairs.push((key, device));
    }
    let all_nodes: Vec<&Node> = cluster.nodes.iter().collect();
    let union = converge_on(&all_nodes, &mut clients, &topic, &pairs, CONVERGE_WITHIN).await;
    let doomed: Vec<String> = union
        .iter()
        .filter(|(_, (key, _))| key == "uc" || key == "ud")
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(doomed.len(), 2, "node C's entries: {union:?}");

    // SIGKILL: no goodbye (its clients go after it, so that it never sees
    // them leave).
    let t0 = Instant::now();
    cluster.nodes[2].kill();
    clients.truncate(2);
    let survivors: Vec<&Node> = cluster.nodes[..2].iter().collect();
    let left = want_summary(&pairs[..2]);
    let lists = async {
        loop {
            let lists = join_all(survivors.iter().map(|n| listed(n, &topic))).await;
            if lists.iter().all(|l| summary(l) == left) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < DOWN_WITHIN,
                "GET /api/presence on the survivors {DOWN_WITHIN:?} after the kill: {:?}",
                lists.iter().map(summary).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let mut refs: Vec<&mut Presence> = clients.iter_mut().collect();
    let views = pump_all(&mut refs, DOWN_WITHIN, |c| summary(&c.view) == left);
    let (listed_after, ()) = tokio::join!(lists, views);
    eprintln!("c89: the killed node's presences left the lists after {listed_after:?}");
    for client in &clients {
        for phx_ref in &doomed {
            let diffs = client.leaves_of(phx_ref);
            assert_eq!(
                diffs.len(),
                1,
                "{}: the leave of {phx_ref} in exactly one diff: {diffs:#?}",
                client.name
            );
            eprintln!(
                "c89: {} got the leave of {phx_ref} after {:?}",
                client.name,
                diffs[0].at.duration_since(t0)
            );
        }
    }

    // The survivors still replicate each other's changes.
    let t0 = Instant::now();
    clients[1].update("car").await;
    let mut refs: Vec<&mut Presence> = clients.iter_mut().collect();
    let left = want_summary(&[("ua", "web"), ("ub", "car")]);
    pump_all(&mut refs, DIFF_WITHIN, |c| summary(&c.view) == left).await;
    eprintln!(
        "c89: an update after the death reached both in {:?}",
        t0.elapsed()
    );
    let mut refs: Vec<&mut Presence> = clients.iter_mut().collect();
    listen(&mut refs, Duration::from_millis(1600)).await;
    for client in &clients {
        for phx_ref in &doomed {
            assert_eq!(
                client.leaves_of(phx_ref).len(),
                1,
                "{}: one leave of {phx_ref}",
                client.name
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 8. Redis goes away and comes back
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_nodes_serve_locally_then_the_cluster_recovers() {
    let mut redis = RedisServer::start().await;
    let cluster = Cluster::start_with(&redis.url(), 3, "sharded").await;
    let nodes = &cluster.nodes;
    let all_nodes: Vec<&Node> = nodes.iter().collect();
    let bench = format!("bench:{}", unique("r"));
    let topic = format!("presence:{}", unique("r"));

    // Per node: a sender and a receiver on `bench`, and a presence.
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut clients = Vec::new();
    for node in 0..3 {
        let mut sender = Member::connect(nodes, node, &format!("s{node}"), true).await;
        sender.join(&bench).await;
        senders.push(sender);
        let mut receiver = Member::connect(nodes, node, &format!("r{node}"), true).await;
        receiver.join(&bench).await;
        receivers.push(receiver);
        let key = format!("p{node}");
        clients.push(Presence::join(nodes, node, &topic, &key, "web").await);
    }
    let pairs = [("p0", "web"), ("p1", "web"), ("p2", "web")];
    converge_on(&all_nodes, &mut clients, &topic, &pairs, CONVERGE_WITHIN).await;
    nodes[0].http().broadcast(&bench, "before", json!({})).await;
    for member in senders.iter_mut().chain(receivers.iter_mut()) {
        member
            .expect_all(vec![fast(&bench, "before", &json!({}))])
            .await;
    }

    // Redis dies. Each node goes on serving its own clients, right away and
    // until the outage has lasted long enough for the nodes to notice and
    // back off between reconnection attempts.
    redis.kill();
    let outage = Instant::now();
    let mut round = 0;
    while round == 0 || outage.elapsed() < OUTAGE {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        round += 1;
        for node in nodes {
            node.assert_healthy().await;
        }
        for node in 0..3 {
            let payload = json!({"local": node, "round": round});
            let r = senders[node]
                .push(&bench, "broadcast", payload.clone())
                .await;
            let msg = fast(&bench, "msg", &payload);
            let reply = senders[node].ok_reply(&bench, &r);
            senders[node].expect_seq(vec![msg.clone(), reply]).await;
            receivers[node].expect_all(vec![msg]).await;
        }
        for node in 0..3 {
            // Joins work, on a topic the node already has and on a new one.
            let name = format!("f{node}-{round}");
            let mut fresh = Member::connect(nodes, node, &name, true).await;
            fresh.join(&bench).await;
            let room = format!("room:{}", unique("outage"));
            fresh.join_room(&room, json!(name)).await;
            fresh.ws.barrier().await;
        }
    }
    // Local presence: a new joiner on A sees the known state plus itself,
    // and A's subscriber gets the diff; p1 leaves on B.
    let late = Presence::join(nodes, 0, &topic, "q0", "phone").await;
    let state = summary(late.state.as_ref().expect("state"));
    assert_eq!(
        state,
        want_summary(&[("p0", "web"), ("p1", "web"), ("p2", "web"), ("q0", "phone")]),
        "presence_state on node A while Redis is down"
    );
    clients[1].leave().await;
    let left = clients.remove(1);
    drop(left);
    let mut local: Vec<&mut Presence> = vec![&mut clients[0]];
    pump_all(&mut local, DIFF_WITHIN, |c| {
        c.view.values().any(|(k, _)| k == "q0")
    })
    .await;
    let on_b = summary(&listed(&nodes[1], &topic).await);
    assert!(
        !on_b.iter().any(|(k, _)| k == "p1"),
        "node B still lists p1 after it left (Redis down): {on_b:?}"
    );
    clients.push(late);
    eprintln!(
        "redis: {round} rounds of local checks, Redis down for {:?}",
        outage.elapsed()
    );

    // Redis is back on the same port: broadcasts cross nodes again.
    redis.restart().await;
    let back = Instant::now();
    for (origin, origin_node) in nodes.iter().enumerate() {
        let mut attempt = 0;
        'retry: loop {
            attempt += 1;
            assert!(
                back.elapsed() < RECOVER_WITHIN,
                "a broadcast from node {origin} did not reach the other nodes within {RECOVER_WITHIN:?} of Redis' restart (after {attempt} attempts)\n{}",
                cluster.logs()
            );
            let payload = json!({"origin": origin, "attempt": attempt});
            origin_node
                .http()
                .broadcast(&bench, "recovered", payload.clone())
                .await;
            let want = fast(&bench, "recovered", &payload);
            for (at, receiver) in receivers.iter_mut().enumerate() {
                if at == origin {
                    continue;
                }
                let deadline = Instant::now() + Duration::from_millis(500);
                loop {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match receiver.ws.recv_within(wait).await {
                        None => continue 'retry,
                        Some(Frame::Json(f)) if f == want => break,
                        Some(Frame::Json(_)) => {}
                        Some(other) => panic!("{}: {other:?}", receiver.who()),
                    }
                }
            }
            break;
        }
        eprintln!(
            "redis: node {origin} reaches the others again {:?} after the restart",
            back.elapsed()
        );
    }

    // And presence converges again: q0 joined and p1 left during the outage.
    let pairs = [("p0", "web"), ("p2", "web"), ("q0", "phone")];
    converge_on(&all_nodes, &mut clients, &topic, &pairs, RECONVERGE_WITHIN).await;
    eprintln!(
        "redis: presence converged {:?} after the restart",
        back.elapsed()
    );
}

/// An idle node stays subscribed: nothing on its Redis connections for
/// two of its keepalive periods (5 s) is no reason to drop them (each
/// reconnection is a window in which broadcasts between nodes are lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_nodes_keep_their_redis_subscription() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start_with(&redis.url(), 2, "sharded").await;
    let nodes = &cluster.nodes;
    let topic = format!("bench:{}", unique("idle"));
    let mut a = nodes[0].ws("vsn=2.0.0").await;
    a.join(&topic, json!({})).await;
    let started = Instant::now();
    // Idleness is the condition under test: nothing to wait for but time.
    tokio::time::sleep(IDLE).await;
    let list = redis_command(&redis.url(), &["CLIENT", "LIST", "TYPE", "pubsub"]).await;
    let ages: Vec<u64> = list
        .lines()
        .filter_map(|line| {
            let age = line.split(' ').find_map(|f| f.strip_prefix("age="))?;
            age.parse().ok()
        })
        .collect();
    let idle = started.elapsed().as_secs();
    assert!(
        ages.len() == nodes.len() && ages.iter().all(|age| *age >= idle),
        "after {idle} s of idleness, the nodes' subscription connections are {ages:?} s old \
         (want {} connections at least {idle} s old): they were dropped and made again\n{list}\n{}",
        nodes.len(),
        cluster.logs()
    );
    nodes[1]
        .http()
        .broadcast(&topic, "still_there", json!({}))
        .await;
    a.expect(fast(&topic, "still_there", &json!({}))).await;
}
