//! Presence across the nodes of a cluster (PROTOCOL §8), over a real Redis
//! at `REDIS_URL`: several endpoints in this process, each with its own
//! adapter and node name, on a namespace of the test's own.
//!
//! - every node lists the union, and each subscriber sees each join, leave
//!   and update exactly once;
//! - a node that joins late gets the full state within about a period;
//! - a node that dies without a goodbye leaves after `down_period`, and
//!   nothing more is reported when it is purged after `permdown_period`;
//! - a node restarted under the same name replaces its old replica at once;
//! - a node that shuts down in order takes its entries with it at once;
//! - malformed presence messages are dropped and break nothing.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fawkes::presence::PresenceMap;
use fawkes::pubsub::redis::{RedisAdapter, RedisConfig};
use fawkes::pubsub::{Broadcast, EncodedBroadcast, Link, PubSub, Subscriber};
use fawkes::{Endpoint, Payload, PresenceConfig, PresenceOwner};
use serde_json::{Value, json};
use support::{namespace, redis_url};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TOPIC: &str = "room:1";

/// Short periods: gossip every 100 ms, down after 1.5 s, purged after 4 s.
fn fast() -> PresenceConfig {
    PresenceConfig::default()
        .broadcast_period(Duration::from_millis(100))
        .down_period(Duration::from_millis(1500))
        .permdown_period(Duration::from_secs(4))
}

struct Node {
    endpoint: Endpoint,
    adapter: RedisAdapter,
    diffs: Arc<Diffs>,
}

/// A node named `name`, with a subscriber of [`TOPIC`]. Must run inside a
/// runtime.
fn node(ns: &str, name: &str, presence: PresenceConfig) -> Node {
    let adapter = RedisAdapter::new(RedisConfig::new(redis_url()).namespace(ns)).unwrap();
    let (_router, endpoint) = Endpoint::builder()
        .node_name(name)
        .adapter(adapter.clone())
        .presence(presence)
        .build();
    let diffs = Arc::new(Diffs::default());
    endpoint.pubsub().subscribe(TOPIC, diffs.clone());
    Node {
        endpoint,
        adapter,
        diffs,
    }
}

/// A node on a runtime of its own, which the test can kill: its tasks then
/// stop without a goodbye, as when a process dies.
struct Doomed {
    runtime: Option<tokio::runtime::Runtime>,
    node: Node,
    _owner: PresenceOwner,
}

async fn doomed(ns: &str, name: &str, presence: PresenceConfig, key: &str) -> Doomed {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (ns, name, key) = (ns.to_owned(), name.to_owned(), key.to_owned());
    let (node, owner) = runtime
        .spawn(async move {
            let node = node(&ns, &name, presence);
            connected(std::slice::from_ref(&node)).await;
            let owner = node.endpoint.presence().owner();
            owner.track(TOPIC, &key, json!({"on": name})).unwrap();
            (node, owner)
        })
        .await
        .unwrap();
    Doomed {
        runtime: Some(runtime),
        node,
        _owner: owner,
    }
}

impl Doomed {
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Doomed {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connected(nodes: &[Node]) {
    until("connected to redis", Duration::from_secs(10), || {
        nodes.iter().all(|n| n.adapter.is_connected())
    })
    .await;
}

/// What a subscriber was told, applied as phoenix.js does (joins, then
/// leaves), with every meta that joined twice or left unseen noted.
#[derive(Default)]
struct Diffs(Mutex<View>);

#[derive(Default)]
struct View {
    /// (key, phx_ref) of what the diffs add up to.
    refs: BTreeSet<(String, String)>,
    errors: Vec<String>,
    diffs: Vec<Value>,
}

fn metas(side: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (key, presence) in side.as_object().into_iter().flatten() {
        for meta in presence["metas"].as_array().into_iter().flatten() {
            out.push((key.clone(), meta.clone()));
        }
    }
    out
}

impl Subscriber for Diffs {
    fn deliver(&self, msg: &Arc<Broadcast>, _: &mut EncodedBroadcast) {
        let Payload::Json(diff) = &msg.payload else {
            return;
        };
        if msg.event != "presence_diff" {
            return;
        }
        let mut view = self.0.lock().unwrap();
        for (key, meta) in metas(&diff["joins"]) {
            let r = (key, meta["phx_ref"].as_str().unwrap_or_default().to_owned());
            if !view.refs.insert(r.clone()) {
                view.errors.push(format!("joined twice: {r:?}"));
            }
        }
        for (key, meta) in metas(&diff["leaves"]) {
            let r = (key, meta["phx_ref"].as_str().unwrap_or_default().to_owned());
            if !view.refs.remove(&r) {
                view.errors.push(format!("left unseen: {r:?}"));
            }
        }
        view.diffs.push(diff.clone());
    }
}

fn refs(list: &PresenceMap) -> BTreeSet<(String, String)> {
    list.iter()
        .flat_map(|(key, p)| {
            p.metas
                .iter()
                .map(move |m| (key.clone(), m["phx_ref"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// (key, meta "on") of a node's list.
fn who(node: &Node) -> BTreeSet<(String, String)> {
    node.endpoint
        .presence()
        .list(TOPIC)
        .iter()
        .flat_map(|(key, p)| {
            p.metas
                .iter()
                .map(move |m| (key.clone(), m["on"].as_str().unwrap_or_default().to_owned()))
        })
        .collect()
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Waits until every node lists `expected` and every subscriber's diffs
/// add up to its node's list, then checks that no diff repeated a change.
async fn converged(nodes: &[&Node], expected: &BTreeSet<(String, String)>, within: Duration) {
    until("every node lists the union", within, || {
        nodes.iter().all(|n| {
            let list = refs(&n.endpoint.presence().list(TOPIC));
            who(n) == *expected && n.diffs.0.lock().unwrap().refs == list
        })
    })
    .await;
    for n in nodes {
        let view = n.diffs.0.lock().unwrap();
        assert!(
            view.errors.is_empty(),
            "{}: {:?}",
            n.endpoint.node_name(),
            view.errors
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_the_union_and_each_change_reaches_each_subscriber_once() {
    let ns = namespace("presence");
    // Shards replicate independently: spread topics over four.
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|name| node(&ns, name, fast().pool_size(4)))
        .collect();
    connected(&nodes).await;
    let owners: Vec<_> = nodes
        .iter()
        .map(|n| n.endpoint.presence().owner())
        .collect();
    owners[0].track(TOPIC, "ann", json!({"on": "a"})).unwrap();
    owners[1].track(TOPIC, "bob", json!({"on": "b"})).unwrap();
    owners[2].track(TOPIC, "ann", json!({"on": "c"})).unwrap();
    for i in 2..10 {
        let topic = format!("room:{i}");
        owners[i % 3].track(&topic, "cat", json!({})).unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let within = Duration::from_secs(3);
    converged(
        &all,
        &set(&[("ann", "a"), ("bob", "b"), ("ann", "c")]),
        within,
    )
    .await;
    for n in &nodes {
        for i in 2..10 {
            let list = n.endpoint.presence().list(&format!("room:{i}"));
            assert_eq!(list["cat"].metas.len(), 1, "room:{i}");
        }
    }

    owners[1].update(TOPIC, "bob", json!({"on": "b2"})).unwrap();
    owners[0].untrack(TOPIC, "ann");
    converged(&all, &set(&[("bob", "b2"), ("ann", "c")]), within).await;

    // On another node the update is one diff: the old meta leaves, the new
    // one, naming it, joins.
    let view = nodes[2].diffs.0.lock().unwrap();
    let update = view
        .diffs
        .iter()
        .find(|d| d["joins"]["bob"]["metas"][0]["on"] == "b2")
        .expect("the update's diff");
    let old = &update["leaves"]["bob"]["metas"][0];
    assert_eq!(old["on"], "b");
    assert_eq!(
        update["joins"]["bob"]["metas"][0]["phx_ref_prev"],
        old["phx_ref"]
    );
    // Three joins, one update, one leave: five diffs, no more.
    assert_eq!(view.diffs.len(), 5, "{:#?}", view.diffs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_late_gets_the_full_state_within_a_period_or_so() {
    let ns = namespace("presence");
    // Batched diffs add up to the same lists.
    let batched = fast().diff_batch_window(Duration::from_millis(50));
    let a = node(&ns, "a", batched.clone());
    let b = node(&ns, "b", batched.clone());
    connected(std::slice::from_ref(&a)).await;
    connected(std::slice::from_ref(&b)).await;
    let (oa, ob) = (a.endpoint.presence().owner(), b.endpoint.presence().owner());
    for i in 0..20 {
        oa.track(TOPIC, &format!("a{i}"), json!({"on": "a"}))
            .unwrap();
    }
    ob.track(TOPIC, "b0", json!({"on": "b"})).unwrap();
    ob.untrack(TOPIC, "b0");
    ob.track(TOPIC, "b1", json!({"on": "b"})).unwrap();
    let mut expected: BTreeSet<_> = (0..20).map(|i| (format!("a{i}"), "a".to_owned())).collect();
    expected.insert(("b1".into(), "b".into()));
    converged(&[&a, &b], &expected, Duration::from_secs(3)).await;

    // Both have sent their deltas: the newcomer must pull the state.
    let c = node(&ns, "c", batched);
    let started = Instant::now();
    connected(std::slice::from_ref(&c)).await;
    converged(&[&a, &b, &c], &expected, Duration::from_secs(2)).await;
    eprintln!("late node converged after {:?}", started.elapsed());
    assert_eq!(c.diffs.0.lock().unwrap().refs.len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_silently_leaves_after_down_period_and_is_then_purged() {
    let ns = namespace("presence");
    let a = node(&ns, "a", fast());
    connected(std::slice::from_ref(&a)).await;
    let owner = a.endpoint.presence().owner();
    owner.track(TOPIC, "ann", json!({"on": "a"})).unwrap();
    let mut c = doomed(&ns, "c", fast(), "cat").await;
    converged(
        &[&a, &c.node],
        &set(&[("ann", "a"), ("cat", "c")]),
        Duration::from_secs(3),
    )
    .await;

    c.kill();
    let died = Instant::now();
    until(
        "the dead node's entry leaves",
        Duration::from_secs(5),
        || who(&a) == set(&[("ann", "a")]),
    )
    .await;
    let after = died.elapsed();
    // Not at once (no goodbye), and about a down_period (1.5 s) after it was
    // last heard from (at most ~0.8 s before it died, when idle).
    assert!(after >= Duration::from_millis(500), "left after {after:?}");
    let leaves = a.diffs.0.lock().unwrap().diffs.len();
    until(
        "the subscriber saw the leave",
        Duration::from_secs(1),
        || {
            let view = a.diffs.0.lock().unwrap();
            view.refs == refs(&a.endpoint.presence().list(TOPIC))
        },
    )
    .await;

    // Past permdown_period (4 s) it is forgotten: no second leave, nothing
    // back, and the survivor goes on working.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let view = a.diffs.0.lock().unwrap();
    assert!(view.errors.is_empty(), "{:?}", view.errors);
    assert_eq!(view.diffs.len(), leaves, "{:#?}", view.diffs);
    drop(view);
    assert_eq!(who(&a), set(&[("ann", "a")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_its_name_replaces_its_old_replica_at_once() {
    // A long down_period: the old replica's entries must go because the
    // new one speaks, not because the old one fell silent.
    let slow_down = fast()
        .down_period(Duration::from_secs(20))
        .permdown_period(Duration::from_secs(60));
    let ns = namespace("presence");
    let a = node(&ns, "a", slow_down.clone());
    connected(std::slice::from_ref(&a)).await;
    let mut c = doomed(&ns, "c", slow_down.clone(), "cat").await;
    converged(
        &[&a, &c.node],
        &set(&[("cat", "c")]),
        Duration::from_secs(3),
    )
    .await;

    c.kill();
    let restarted = Instant::now();
    let c2 = node(&ns, "c", slow_down);
    connected(std::slice::from_ref(&c2)).await;
    let owner = c2.endpoint.presence().owner();
    owner.track(TOPIC, "cat2", json!({"on": "c"})).unwrap();
    converged(&[&a, &c2], &set(&[("cat2", "c")]), Duration::from_secs(3)).await;
    eprintln!("old replica replaced after {:?}", restarted.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_in_order_takes_its_entries_at_once() {
    let slow_down = fast()
        .down_period(Duration::from_secs(20))
        .permdown_period(Duration::from_secs(60));
    let ns = namespace("presence");
    let a = node(&ns, "a", slow_down.clone());
    let c = node(&ns, "c", slow_down);
    connected(std::slice::from_ref(&a)).await;
    connected(std::slice::from_ref(&c)).await;
    let owner = c.endpoint.presence().owner();
    owner.track(TOPIC, "cat", json!({"on": "c"})).unwrap();
    owner.track(TOPIC, "cow", json!({"on": "c"})).unwrap();
    converged(
        &[&a, &c],
        &set(&[("cat", "c"), ("cow", "c")]),
        Duration::from_secs(3),
    )
    .await;

    let stopped = Instant::now();
    c.endpoint.shutdown().await;
    converged(&[&a], &BTreeSet::new(), Duration::from_secs(2)).await;
    eprintln!("entries gone {:?} after shutdown began", stopped.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_presence_messages_are_dropped_and_break_nothing() {
    let ns = namespace("presence");
    let a = node(&ns, "a", fast());
    let b = node(&ns, "b", fast());
    connected(std::slice::from_ref(&a)).await;
    connected(std::slice::from_ref(&b)).await;
    let (oa, ob) = (a.endpoint.presence().owner(), b.endpoint.presence().owner());
    oa.track(TOPIC, "ann", json!({"on": "a"})).unwrap();
    converged(&[&a, &b], &set(&[("ann", "a")]), Duration::from_secs(3)).await;

    // A raw node, with no tracker of its own, sending garbage to every node
    // and to each by name.
    let pubsub = PubSub::new();
    let adapter = RedisAdapter::new(RedisConfig::new(redis_url()).namespace(&ns)).unwrap();
    pubsub.set_adapter(Arc::new(adapter.clone()));
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
    fawkes::pubsub::Adapter::start(&adapter, Link::new(&pubsub, "x", cancel.clone(), tasks));
    until("the raw node connected", Duration::from_secs(10), || {
        adapter.is_connected()
    })
    .await;
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        b"garbage".to_vec(),
        vec![1],
        vec![1, b'H'],
        vec![
            1, b'H', 0, 0, 0, 0, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff, 0x0f,
        ],
        vec![1, b'A', 0, 0, 0, 0, 0, 0, 0, 9, 0],
        vec![1, b'Z', 0, 0, 0, 0, 0, 0, 0, 9, 0],
        vec![0xff; 4096],
    ];
    // A heartbeat whose delta holds a meta that is not JSON.
    let mut forged = vec![1, b'H', 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 4];
    forged.extend(b"room");
    forged.extend([1, 0, 0, 0, 0, 0, 0, 0, 9, 1, 0, 1, b'k', 3]);
    forged.extend(b"{x}");
    garbage.push(forged);
    for body in &garbage {
        for service in ["presence:0", "presence:1", "presence:x"] {
            let body = Bytes::from(body.clone());
            pubsub.send_node_message(None, service, body.clone());
            pubsub.send_node_message(Some("a"), service, body);
        }
    }

    ob.track(TOPIC, "bob", json!({"on": "b"})).unwrap();
    oa.update(TOPIC, "ann", json!({"on": "a2"})).unwrap();
    converged(
        &[&a, &b],
        &set(&[("ann", "a2"), ("bob", "b")]),
        Duration::from_secs(3),
    )
    .await;
    cancel.cancel();
}
