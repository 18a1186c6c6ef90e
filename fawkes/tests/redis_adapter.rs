//! The Redis adapter against a real Redis: broadcasts between endpoints in
//! this process, routing by topic shard, malformed messages, and a Redis
//! of the test's own that is killed and restarted.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fawkes::pubsub::redis::{RedisAdapter, RedisConfig, Routing};
use fawkes::pubsub::{Broadcast, EncodedBroadcast, Subscriber};
use fawkes::{Endpoint, Payload};
use serde_json::json;
use support::{namespace, redis_url};

struct Node {
    endpoint: Endpoint,
    adapter: RedisAdapter,
}

fn node(config: RedisConfig, name: &str) -> Node {
    let adapter = RedisAdapter::new(config).expect("redis url");
    let (_router, endpoint) = Endpoint::builder()
        .node_name(name)
        .adapter(adapter.clone())
        .build();
    Node { endpoint, adapter }
}

fn nodes(url: &str, ns: &str, routing: Routing, names: &[&str]) -> Vec<Node> {
    names
        .iter()
        .map(|name| node(RedisConfig::new(url).namespace(ns).routing(routing), name))
        .collect()
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connected(nodes: &[Node]) {
    for n in nodes {
        assert!(
            n.endpoint.linked(Duration::from_secs(10)).await,
            "every node connected to redis"
        );
        assert!(n.adapter.is_connected());
    }
}

/// Records the `n` field of every broadcast it gets.
#[derive(Default)]
struct Recorder(Mutex<Vec<i64>>);

impl Subscriber for Recorder {
    fn deliver(&self, msg: &Arc<Broadcast>, _: &mut EncodedBroadcast) {
        if let Payload::Json(v) = &msg.payload {
            self.0.lock().unwrap().push(v["n"].as_i64().unwrap_or(-1));
        }
    }
}

impl Recorder {
    fn got(&self) -> Vec<i64> {
        self.0.lock().unwrap().clone()
    }
}

/// Subscribes a recorder to `topic` on `node`, and waits until broadcasts
/// from other nodes reach it.
async fn subscribe(node: &Node, topic: &str) -> (Arc<Recorder>, fawkes::pubsub::SubscriptionId) {
    let rec = Arc::new(Recorder::default());
    let id = node.endpoint.pubsub().subscribe(topic, rec.clone());
    if let Some(ready) = node.endpoint.pubsub().ready(topic) {
        tokio::time::timeout(Duration::from_secs(5), ready)
            .await
            .expect("subscription confirmed");
    }
    (rec, id)
}

#[tokio::test]
async fn broadcasts_reach_every_node_once_and_in_order() {
    let ns = namespace("test");
    let cluster = nodes(&redis_url(), &ns, Routing::default(), &["a", "b", "c"]);
    connected(&cluster).await;
    let mut recs = Vec::new();
    for n in &cluster {
        recs.push(subscribe(n, "room:1").await);
    }
    for i in 0..200 {
        cluster[0]
            .endpoint
            .broadcast("room:1", "e", json!({"n": i}))
            .unwrap();
    }
    let want: Vec<i64> = (0..200).collect();
    until(
        "200 broadcasts on every node",
        Duration::from_secs(10),
        || recs.iter().all(|(r, _)| r.got().len() >= 200),
    )
    .await;
    // Redis echoes the sender's own messages back: it must not deliver
    // them a second time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, (rec, _)) in recs.iter().enumerate() {
        assert_eq!(rec.got(), want, "node {i}");
    }
    // broadcast_from skips the sender's subscription only: other nodes'
    // subscribers all get it.
    let (_, sender) = &recs[1];
    cluster[1]
        .endpoint
        .pubsub()
        .broadcast_from(*sender, "room:1", "e", json!({"n": 1000}))
        .unwrap();
    until(
        "broadcast_from on the other nodes",
        Duration::from_secs(5),
        || recs[0].0.got().last() == Some(&1000) && recs[2].0.got().last() == Some(&1000),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !recs[1].0.got().contains(&1000),
        "the sender got its own broadcast_from"
    );
    // Binary payloads cross too.
    let bin = Arc::new(Mutex::new(Vec::new()));
    struct Bin(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Subscriber for Bin {
        fn deliver(&self, msg: &Arc<Broadcast>, _: &mut EncodedBroadcast) {
            if let Payload::Binary(b) = &msg.payload {
                self.0.lock().unwrap().push(b.to_vec());
            }
        }
    }
    cluster[2]
        .endpoint
        .pubsub()
        .subscribe("room:bin", Arc::new(Bin(bin.clone())));
    if let Some(ready) = cluster[2].endpoint.pubsub().ready("room:bin") {
        ready.await;
    }
    cluster[0]
        .endpoint
        .broadcast("room:bin", "b", Payload::Binary(vec![0u8, 255, 7].into()))
        .unwrap();
    until("a binary broadcast", Duration::from_secs(5), || {
        bin.lock().unwrap().first() == Some(&vec![0u8, 255, 7])
    })
    .await;
    for n in &cluster {
        n.endpoint.shutdown().await;
    }
}

#[tokio::test]
async fn sharded_routing_reaches_only_nodes_with_subscribers() {
    let url = redis_url();
    for (routing, want_on_c) in [(Routing::default(), 0), (Routing::AllNodes, 50)] {
        let ns = namespace("test");
        let cluster = nodes(&url, &ns, routing, &["a", "b", "c"]);
        connected(&cluster).await;
        let (rec, _) = subscribe(&cluster[0], "room:only-a").await;
        for i in 0..50 {
            cluster[1]
                .endpoint
                .broadcast("room:only-a", "e", json!({"n": i}))
                .unwrap();
        }
        until("50 broadcasts on a", Duration::from_secs(10), || {
            rec.got().len() == 50
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let on_c = cluster[2].adapter.stats().broadcasts_received;
        assert_eq!(on_c, want_on_c, "{routing:?}: broadcasts that reached c");
        for n in &cluster {
            n.endpoint.shutdown().await;
        }
    }
}

#[tokio::test]
async fn a_shard_is_unsubscribed_with_its_last_local_topic() {
    let url = redis_url();
    let ns = namespace("test");
    let cluster = nodes(&url, &ns, Routing::default(), &["a"]);
    connected(&cluster).await;
    let channel = cluster[0].adapter.broadcast_channel("room:x");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut numsub = async || -> i64 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        n
    };
    assert_eq!(numsub().await, 0);
    let (_, id1) = subscribe(&cluster[0], "room:x").await;
    let (_, id2) = subscribe(&cluster[0], "room:x").await;
    assert_eq!(numsub().await, 1);
    let pubsub = cluster[0].endpoint.pubsub();
    pubsub.unsubscribe("room:x", id1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(numsub().await, 1, "one local subscriber is left");
    pubsub.unsubscribe("room:x", id2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while numsub().await != 0 {
        assert!(Instant::now() < deadline, "still subscribed to {channel}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster[0].endpoint.shutdown().await;
}

#[tokio::test]
async fn malformed_messages_from_redis_are_dropped() {
    let url = redis_url();
    let ns = namespace("test");
    let cluster = nodes(&url, &ns, Routing::default(), &["a", "b"]);
    connected(&cluster).await;
    let (rec, _) = subscribe(&cluster[0], "room:m").await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = cluster[0].adapter.broadcast_channel("room:m");
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        b"B".to_vec(),
        b"not a message at all".to_vec(),
        vec![b'B'; 100],
        vec![0xff; 4096],
    ];
    // A well-formed header with an array payload, and one with a huge
    // topic length.
    let mut array = vec![b'B'];
    array.extend(7u64.to_be_bytes());
    array.push(1);
    array.push(b'z');
    array.extend(6u32.to_be_bytes());
    array.extend(b"room:m");
    array.extend(1u32.to_be_bytes());
    array.extend(b"e");
    array.push(0);
    array.extend(b"[1,2]");
    garbage.push(array.clone());
    array[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
    garbage.push(array);
    for body in &garbage {
        for ch in [channel.clone(), format!("{ns}:n"), format!("{ns}:n:a")] {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(&ch)
                .arg(body.as_slice())
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    until("garbage counted", Duration::from_secs(5), || {
        cluster[0].adapter.stats().malformed >= 14
    })
    .await;
    assert!(rec.got().is_empty());
    cluster[1]
        .endpoint
        .broadcast("room:m", "e", json!({"n": 1}))
        .unwrap();
    until(
        "a good broadcast after the garbage",
        Duration::from_secs(5),
        || rec.got() == vec![1],
    )
    .await;
    for n in &cluster {
        n.endpoint.shutdown().await;
    }
}

/// A redis-server of the test's own, on a free port.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        OwnRedis { port, child }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn nodes_survive_a_redis_restart_and_resubscribe() {
    let mut redis = OwnRedis::start(OwnRedis::free_port());
    let ns = namespace("test");
    let fast = |name: &str| {
        node(
            RedisConfig::new(redis.url())
                .namespace(ns.clone())
                .backoff(Duration::from_millis(50), Duration::from_millis(500)),
            name,
        )
    };
    let cluster = vec![fast("a"), fast("b")];
    connected(&cluster).await;
    let (rec_a, _) = subscribe(&cluster[0], "room:r").await;
    let (rec_b, _) = subscribe(&cluster[1], "room:r").await;
    cluster[0]
        .endpoint
        .broadcast("room:r", "e", json!({"n": 1}))
        .unwrap();
    until("before the restart", Duration::from_secs(5), || {
        rec_b.got() == vec![1]
    })
    .await;

    let bot_a = cluster[0].endpoint.presence().owner();
    bot_a.track("room:p", "before", json!({})).unwrap();
    until(
        "presence before the restart",
        Duration::from_secs(5),
        || {
            cluster[1]
                .endpoint
                .presence()
                .get_by_key("room:p", "before")
                .is_some()
        },
    )
    .await;

    redis.kill();
    until("both nodes see redis gone", Duration::from_secs(10), || {
        cluster.iter().all(|n| !n.adapter.is_connected())
    })
    .await;
    // Cut off, each node serves its own subscribers; what it publishes is
    // dropped and counted, never queued without bound.
    let dropped = cluster[0].adapter.stats().dropped;
    for i in 0..100_000 {
        cluster[0]
            .endpoint
            .broadcast("room:r", "e", json!({"n": 2 + i}))
            .unwrap();
    }
    assert_eq!(rec_a.got().len(), 100_001, "local delivery goes on");
    until(
        "the outage's broadcasts dropped",
        Duration::from_secs(10),
        || cluster[0].adapter.stats().dropped >= dropped + 100_000,
    )
    .await;
    // A join while cut off does not wait for Redis.
    let (_, _) = tokio::time::timeout(
        Duration::from_millis(500),
        subscribe(&cluster[1], "room:new"),
    )
    .await
    .expect("no wait while cut off");

    // Tracked while cut off: its delta is lost, and must be caught up on
    // once the link is back, well before the next idle heartbeat (16.5 s).
    bot_a.track("room:p", "during", json!({})).unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;

    let _redis = OwnRedis::start(redis.port);
    connected(&cluster).await;
    let back = Instant::now();
    until(
        "presence caught up after the restart",
        Duration::from_secs(5),
        || {
            cluster[1]
                .endpoint
                .presence()
                .get_by_key("room:p", "during")
                .is_some()
        },
    )
    .await;
    eprintln!(
        "presence caught up {:?} after the link was back",
        back.elapsed()
    );
    for n in &cluster {
        assert!(n.adapter.stats().connects >= 2, "reconnected");
    }
    // Resubscribed: broadcasts cross again, both ways.
    let before = rec_b.got().len();
    cluster[0]
        .endpoint
        .broadcast("room:r", "e", json!({"n": -5}))
        .unwrap();
    until("after the restart, a to b", Duration::from_secs(10), || {
        rec_b.got().len() > before
    })
    .await;
    assert_eq!(
        rec_b.got().last(),
        Some(&-5),
        "nothing from the outage replayed"
    );
    cluster[1]
        .endpoint
        .broadcast("room:r", "e", json!({"n": -6}))
        .unwrap();
    until("after the restart, b to a", Duration::from_secs(10), || {
        rec_a.got().last() == Some(&-6)
    })
    .await;
    for n in &cluster {
        n.endpoint.shutdown().await;
    }
}

#[tokio::test]
async fn an_unreachable_redis_never_stops_a_node() {
    // Nothing listens there: the node starts, serves locally, and retries.
    let port = OwnRedis::free_port();
    let ns = namespace("test");
    let n = node(
        RedisConfig::new(format!("redis://127.0.0.1:{port}")).namespace(ns),
        "lonely",
    );
    let (rec, _) = tokio::time::timeout(Duration::from_secs(1), subscribe(&n, "room:l"))
        .await
        .expect("no wait without redis");
    n.endpoint
        .broadcast("room:l", "e", json!({"n": 3}))
        .unwrap();
    assert_eq!(rec.got(), vec![3]);
    assert!(!n.adapter.is_connected());
    assert!(!n.endpoint.linked(Duration::from_millis(100)).await);
    tokio::time::timeout(Duration::from_secs(5), n.endpoint.shutdown())
        .await
        .expect("shutdown does not wait for redis");
}
