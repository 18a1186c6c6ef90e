//! A cluster of nodes over Redis pub/sub (feature `redis`): the
//! [`Adapter`] that carries broadcasts, presence replication, forced
//! disconnects and LongPoll requests between the nodes of one cluster.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use fawkes::pubsub::redis::{RedisAdapter, RedisConfig};
//!
//! let adapter = RedisAdapter::new(RedisConfig::new("redis://127.0.0.1:6379"))?;
//! let (router, endpoint) = fawkes::Endpoint::builder()
//!     .node_name("node-a")
//!     .adapter(adapter)
//!     .build();
//! # let _ = (router, endpoint);
//! # Ok(())
//! # }
//! ```
//!
//! **Routing.** A broadcast leaves its node once, as one `PUBLISH`, and is
//! encoded for clients on each receiving node as a local broadcast is (once
//! per serializer). With [`Routing::Sharded`] (the default) topics hash to
//! shards, one Redis channel each, and a node subscribes to a shard only
//! while it has local subscribers of a topic in it, so a broadcast reaches
//! only the nodes that may want it; [`Routing::AllNodes`] sends every
//! broadcast to every node, as Phoenix's Redis adapter does. A node drops
//! its own messages when Redis echoes them, so it never delivers a
//! broadcast twice.
//!
//! **Delivery guarantee.** At most once, in order per sending node: what a
//! node publishes reaches every node subscribed at that moment, in the
//! order it was published. While Redis is unreachable each node goes on
//! serving its own clients (local broadcasts, presence) and reconnects with
//! backoff; broadcasts published meanwhile do not reach other nodes and are
//! not replayed (each node logs how many it dropped and for how long it was
//! cut off). Presence converges again after the link is back, through the
//! tracker's anti-entropy. The outgoing queue is bounded
//! ([`RedisConfig::queue`]): beyond it messages are dropped and counted,
//! never buffered without bound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fawkes_protocol::Payload;
use futures_util::StreamExt;
use redis::AsyncConnectionConfig;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::{Adapter, BoxFuture, Broadcast, Link, NodeMessage, stable_hash};
use crate::channel::valid_payload;

/// How broadcasts are routed between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Routing {
    /// Every broadcast goes to every node (one Redis channel), as Phoenix's
    /// adapter does.
    AllNodes,
    /// Topics hash to this many shards (1 to 65,536), one Redis channel
    /// each; a node subscribes to the shards of its local topics only.
    Sharded(u32),
}

impl Default for Routing {
    fn default() -> Self {
        Routing::Sharded(1024)
    }
}

/// Settings of a [`RedisAdapter`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://HOST:PORT` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// Prefix of every Redis channel: clusters on one Redis with different
    /// namespaces never hear each other. Default `fawkes`.
    pub namespace: String,
    /// Default [`Routing::Sharded`] with 1,024 shards.
    pub routing: Routing,
    /// Outgoing messages that may wait for Redis; beyond, messages are
    /// dropped and counted. Default 65,536.
    pub queue: usize,
    /// First wait before reconnecting; doubled each failure up to
    /// `max_backoff`, with jitter. Default 100 ms.
    pub min_backoff: Duration,
    /// Longest wait between reconnection attempts. Default 5 s.
    pub max_backoff: Duration,
    /// A silent connection is checked with a `PING` this often, and given as
    /// long to answer (or to connect). Default 5 s.
    pub keepalive: Duration,
}

impl RedisConfig {
    /// The defaults, for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            namespace: "fawkes".into(),
            routing: Routing::default(),
            queue: 65_536,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            keepalive: Duration::from_secs(5),
        }
    }

    /// Sets [`namespace`](Self::namespace).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`routing`](Self::routing).
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = match routing {
            Routing::Sharded(n) => Routing::Sharded(n.clamp(1, MAX_SHARDS)),
            other => other,
        };
        self
    }

    /// Sets [`queue`](Self::queue) (at least 1).
    pub fn queue(mut self, messages: usize) -> Self {
        self.queue = messages.max(1);
        self
    }

    /// Sets [`min_backoff`](Self::min_backoff) and
    /// [`max_backoff`](Self::max_backoff).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }
}

/// Counters of a [`RedisAdapter`], since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Messages handed to Redis.
    pub published: u64,
    /// Messages dropped on the way out: Redis unreachable or queue full.
    pub dropped: u64,
    /// Broadcasts from other nodes received.
    pub broadcasts_received: u64,
    /// Node messages (presence, LongPoll) from other nodes received.
    pub node_messages_received: u64,
    /// Received messages that did not decode (logged and dropped).
    pub malformed: u64,
    /// Times the subscription connection was (re)established.
    pub connects: u64,
}

/// Carries a node's broadcasts and node messages over Redis pub/sub.
/// Cheap to clone: clones share one adapter.
#[derive(Clone)]
pub struct RedisAdapter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdapter")
            .field("namespace", &self.inner.config.namespace)
            .field("routing", &self.inner.config.routing)
            .finish_non_exhaustive()
    }
}

/// A message on its way to Redis.
struct Outgoing {
    channel: Arc<str>,
    body: Bytes,
}

/// The Redis channels this node wants, and which of them Redis confirmed.
#[derive(Default)]
struct Subscriptions {
    /// Broadcast channel → local topics routed to it (may dip below zero
    /// for a moment when a subscribe and an unsubscribe race).
    wanted: HashMap<Arc<str>, i64>,
    confirmed: HashSet<Arc<str>>,
    /// Joins waiting for a channel's confirmation.
    waiters: HashMap<Arc<str>, Vec<oneshot::Sender<()>>>,
}

struct Inner {
    config: RedisConfig,
    client: redis::Client,
    /// Tells this run of this node's messages from others'.
    instance: u64,
    node: OnceLock<Arc<str>>,
    out: mpsc::Sender<Outgoing>,
    out_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    subs: Mutex<Subscriptions>,
    subs_changed: Notify,
    /// Tells the publisher that the subscription connection broke.
    sub_lost: Notify,
    /// The publishing connection is up.
    publishing: AtomicBool,
    /// The subscribing connection is up.
    subscribed: AtomicBool,
    all_channel: Arc<str>,
    direct_channel: OnceLock<Arc<str>>,
    broadcast_all: Arc<str>,
    /// The shards' channel names, made once rather than per broadcast.
    shard_channels: Box<[Arc<str>]>,
    published: AtomicU64,
    dropped: AtomicU64,
    broadcasts_received: AtomicU64,
    node_messages_received: AtomicU64,
    malformed: AtomicU64,
    connects: AtomicU64,
}

/// Why a [`RedisAdapter`] could not be made.
#[derive(Debug, thiserror::Error)]
#[error("invalid redis url: {0}")]
pub struct RedisUrlError(#[source] redis::RedisError);

impl RedisAdapter {
    /// An adapter for the Redis of `config`. Checks the URL only: the
    /// connection is made once the endpoint starts the adapter, and retried
    /// for as long as Redis is unreachable.
    ///
    /// # Errors
    ///
    /// [`RedisUrlError`] if the URL is not a Redis URL.
    pub fn new(mut config: RedisConfig) -> Result<Self, RedisUrlError> {
        let client = redis::Client::open(config.url.as_str()).map_err(RedisUrlError)?;
        let routing = config.routing;
        config = config.routing(routing);
        let shard_channels = match config.routing {
            Routing::Sharded(n) => (0..n)
                .map(|shard| Arc::from(format!("{}:b:{shard}", config.namespace)))
                .collect(),
            Routing::AllNodes => Box::default(),
        };
        let (out, out_rx) = mpsc::channel(config.queue.max(1));
        let ns = config.namespace.clone();
        Ok(RedisAdapter {
            inner: Arc::new(Inner {
                client,
                instance: crate::presence::random_u64(),
                node: OnceLock::new(),
                out,
                out_rx: Mutex::new(Some(out_rx)),
                subs: Mutex::new(Subscriptions::default()),
                subs_changed: Notify::new(),
                sub_lost: Notify::new(),
                publishing: AtomicBool::new(false),
                subscribed: AtomicBool::new(false),
                all_channel: format!("{ns}:n").into(),
                direct_channel: OnceLock::new(),
                broadcast_all: format!("{ns}:b").into(),
                shard_channels,
                published: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                broadcasts_received: AtomicU64::new(0),
                node_messages_received: AtomicU64::new(0),
                malformed: AtomicU64::new(0),
                connects: AtomicU64::new(0),
                config,
            }),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> RedisStats {
        let i = &self.inner;
        RedisStats {
            published: i.published.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            broadcasts_received: i.broadcasts_received.load(Ordering::Relaxed),
            node_messages_received: i.node_messages_received.load(Ordering::Relaxed),
            malformed: i.malformed.load(Ordering::Relaxed),
            connects: i.connects.load(Ordering::Relaxed),
        }
    }

    /// The Redis channel that carries `topic`'s broadcasts.
    pub fn broadcast_channel(&self, topic: &str) -> String {
        self.inner.broadcast_channel(topic).to_string()
    }

    /// Whether both connections to Redis are up.
    pub fn is_connected(&self) -> bool {
        self.inner.publishing.load(Ordering::Relaxed)
            && self.inner.subscribed.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn lock_subs(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Redis channel of `topic`'s broadcasts.
    fn broadcast_channel(&self, topic: &str) -> Arc<str> {
        match self.config.routing {
            Routing::AllNodes => self.broadcast_all.clone(),
            Routing::Sharded(_) => {
                let shard = stable_hash(topic) % self.shard_channels.len() as u64;
                self.shard_channels[shard as usize].clone()
            }
        }
    }

    fn node_channel(&self, node: &str) -> Arc<str> {
        format!("{}:n:{node}", self.config.namespace).into()
    }

    fn enqueue(&self, channel: Arc<str>, body: Bytes) {
        if !self.publishing.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.out.try_send(Outgoing { channel, body }).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(target: "fawkes::pubsub::redis", dropped, "outgoing queue full, messages to other nodes dropped");
            }
        }
    }

    /// The channels to be subscribed to now: the node's own, and the
    /// broadcast channels of its topics.
    fn wanted_channels(&self) -> HashSet<Arc<str>> {
        let mut wanted: HashSet<Arc<str>> = self
            .lock_subs()
            .wanted
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(c, _)| c.clone())
            .collect();
        wanted.insert(self.all_channel.clone());
        if let Some(direct) = self.direct_channel.get() {
            wanted.insert(direct.clone());
        }
        if self.config.routing == Routing::AllNodes {
            wanted.insert(self.broadcast_all.clone());
        }
        wanted
    }
}

impl Adapter for RedisAdapter {
    fn start(&self, link: Link) {
        let inner = &self.inner;
        let _ = inner.node.set(link.node().into());
        let _ = inner.direct_channel.set(inner.node_channel(link.node()));
        let Some(out_rx) = inner
            .out_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            tracing::error!(target: "fawkes::pubsub::redis", "adapter started twice; ignored");
            return;
        };
        link.spawn(publisher(inner.clone(), out_rx, link.clone()));
        link.clone().spawn(subscriber(inner.clone(), link));
    }

    fn is_connected(&self) -> bool {
        RedisAdapter::is_connected(self)
    }

    fn publish(&self, msg: &Arc<Broadcast>) {
        let Some(node) = self.inner.node.get() else {
            return;
        };
        let body = encode_broadcast(self.inner.instance, node, msg);
        self.inner
            .enqueue(self.inner.broadcast_channel(&msg.topic), body);
    }

    fn subscribed(&self, topic: &str) {
        if self.inner.config.routing == Routing::AllNodes {
            return;
        }
        let channel = self.inner.broadcast_channel(topic);
        let mut subs = self.inner.lock_subs();
        let count = subs.wanted.entry(channel.clone()).or_insert(0);
        *count += 1;
        let count = *count;
        if count == 0 {
            subs.wanted.remove(&channel);
        } else if count == 1 {
            // Even if confirmed: a reconcile under way may be dropping it.
            drop(subs);
            self.inner.subs_changed.notify_one();
        }
    }

    fn unsubscribed(&self, topic: &str) {
        if self.inner.config.routing == Routing::AllNodes {
            return;
        }
        let channel = self.inner.broadcast_channel(topic);
        let mut subs = self.inner.lock_subs();
        let count = subs.wanted.entry(channel.clone()).or_insert(0);
        *count -= 1;
        if *count == 0 {
            subs.wanted.remove(&channel);
            drop(subs);
            self.inner.subs_changed.notify_one();
        }
    }

    fn ready(&self, topic: &str) -> Option<BoxFuture<'static, ()>> {
        // Cut off from Redis, a join must not wait for it.
        if !self.inner.subscribed.load(Ordering::Relaxed) {
            return None;
        }
        let channel = self.inner.broadcast_channel(topic);
        let mut subs = self.inner.lock_subs();
        if subs.confirmed.contains(&channel) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let waiters = subs.waiters.entry(channel).or_default();
        // Waiters whose joins gave up are dropped here, so the list stays
        // as long as the joins in flight.
        waiters.retain(|w| !w.is_closed());
        waiters.push(tx);
        drop(subs);
        self.inner.subs_changed.notify_one();
        Some(Box::pin(async move {
            let _ = rx.await;
        }))
    }

    fn send(&self, to: Option<&str>, msg: NodeMessage) {
        let Some(node) = self.inner.node.get() else {
            return;
        };
        let channel = match to {
            Some(to) => self.inner.node_channel(to),
            None => self.inner.all_channel.clone(),
        };
        let body = encode_node_message(self.inner.instance, node, &msg.service, &msg.body);
        self.inner.enqueue(channel, body);
    }
}

/// The wait before reconnection attempt `attempt` (from 0): doubling from
/// the minimum up to the maximum, then between half and all of it.
fn backoff(config: &RedisConfig, attempt: u32) -> Duration {
    let base = config
        .min_backoff
        .saturating_mul(1u32 << attempt.min(16))
        .min(config.max_backoff);
    let jitter = (crate::presence::random_u64() % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + 0.5 * jitter)
}

/// Sleeps `wait`; `false` if the endpoint shut down meanwhile.
async fn sleep_or_cancel(link: &Link, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = link.cancelled().cancelled() => false,
    }
}

fn connection_config(config: &RedisConfig) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.keepalive))
        .set_response_timeout(Some(config.keepalive))
}

/// Most shards of [`Routing::Sharded`].
const MAX_SHARDS: u32 = 65_536;

/// Most messages sent to Redis in one pipeline.
const BATCH: usize = 256;

/// Publishes the queued messages, in order, pipelined; reconnects when the
/// connection fails, dropping what is queued meanwhile.
async fn publisher(inner: Arc<Inner>, mut rx: mpsc::Receiver<Outgoing>, link: Link) {
    let config = &inner.config;
    let mut attempt = 0;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let conn_config = connection_config(config);
        let connect = inner
            .client
            .get_multiplexed_async_connection_with_config(&conn_config);
        let conn = tokio::select! {
            conn = connect => conn,
            _ = link.cancelled().cancelled() => return,
        };
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(err) => {
                if attempt == 0 {
                    tracing::warn!(target: "fawkes::pubsub::redis", %err, url = %config.url, "cannot connect to redis for publishing; retrying");
                }
                let wait = backoff(config, attempt);
                attempt += 1;
                if !sleep_or_cancel(&link, wait).await {
                    return;
                }
                continue;
            }
        };
        attempt = 0;
        inner.publishing.store(true, Ordering::Relaxed);
        // Runs until the connection fails; after shutdown, until the queue
        // is drained (the tracker's goodbye among it).
        let mut keepalive = tokio::time::interval(config.keepalive);
        keepalive.reset();
        let failed: Option<String> = loop {
            let n = if link.cancelled().is_cancelled() {
                tokio::time::timeout(DRAIN_IDLE, rx.recv_many(&mut batch, BATCH))
                    .await
                    .unwrap_or(0)
            } else {
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => n,
                    _ = link.cancelled().cancelled() => continue,
                    // The subscription connection broke: this one most
                    // likely too, and the next message must not be the
                    // one to find out.
                    _ = inner.sub_lost.notified() => break Some("the subscription connection was lost".into()),
                    _ = keepalive.tick() => {
                        match redis::cmd("PING").query_async::<String>(&mut conn).await {
                            Ok(_) => continue,
                            Err(err) => break Some(err.to_string()),
                        }
                    }
                }
            };
            if n == 0 {
                break None;
            }
            keepalive.reset();
            let mut pipe = redis::pipe();
            for msg in &batch {
                pipe.cmd("PUBLISH")
                    .arg(&*msg.channel)
                    .arg(msg.body.as_ref())
                    .ignore();
            }
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => {
                    inner.published.fetch_add(n as u64, Ordering::Relaxed);
                    batch.clear();
                }
                Err(err) => {
                    inner.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    batch.clear();
                    break Some(err.to_string());
                }
            }
        };
        inner.publishing.store(false, Ordering::Relaxed);
        let Some(err) = failed else {
            return;
        };
        // Nothing queued while cut off is sent later: drop it now.
        let mut lost = 0u64;
        while rx.try_recv().is_ok() {
            lost += 1;
        }
        let dropped = inner.dropped.fetch_add(lost, Ordering::Relaxed) + lost;
        tracing::warn!(target: "fawkes::pubsub::redis", %err, dropped, "lost the redis publishing connection; messages to other nodes are dropped until it is back");
        if !sleep_or_cancel(&link, backoff(config, 0)).await {
            return;
        }
    }
}

/// After shutdown, the publisher stops once the queue was empty this long.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// Keeps the subscription connection up and its channels as wanted, and
/// delivers what arrives.
async fn subscriber(inner: Arc<Inner>, link: Link) {
    let config = &inner.config;
    let mut attempt = 0u32;
    let mut lost_at: Option<Instant> = None;
    loop {
        let connect = tokio::time::timeout(config.keepalive, inner.client.get_async_pubsub());
        let pubsub = tokio::select! {
            pubsub = connect => pubsub,
            _ = link.cancelled().cancelled() => return,
        };
        let pubsub = match pubsub {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                if attempt == 0 && lost_at.is_none() {
                    let err = match failed {
                        Ok(Err(err)) => err.to_string(),
                        _ => "connection timed out".to_owned(),
                    };
                    tracing::warn!(target: "fawkes::pubsub::redis", %err, url = %config.url, "cannot connect to redis; serving local clients only, retrying");
                }
                let wait = backoff(config, attempt);
                attempt += 1;
                if !sleep_or_cancel(&link, wait).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut actual: HashSet<Arc<str>> = HashSet::new();
        if let Err(err) = reconcile(&inner, &mut sink, &mut actual).await {
            tracing::warn!(target: "fawkes::pubsub::redis", %err, "cannot subscribe; reconnecting");
            if !sleep_or_cancel(&link, backoff(config, attempt)).await {
                return;
            }
            attempt += 1;
            continue;
        }
        attempt = 0;
        inner.subscribed.store(true, Ordering::Relaxed);
        inner.connects.fetch_add(1, Ordering::Relaxed);
        match lost_at.take() {
            Some(at) => {
                tracing::warn!(target: "fawkes::pubsub::redis", cut_off_ms = at.elapsed().as_millis() as u64, dropped = inner.dropped.load(Ordering::Relaxed), channels = actual.len(), "reconnected to redis and resubscribed; broadcasts between nodes while cut off were missed")
            }
            None => {
                tracing::info!(target: "fawkes::pubsub::redis", channels = actual.len(), node = link.node(), "connected to redis")
            }
        }
        // Once both connections are up, the node's services may catch up
        // on what they missed (presence asks its peers).
        let (up, link_up) = (inner.clone(), link.clone());
        link.spawn(async move {
            let deadline = Instant::now() + up.config.keepalive;
            while !up.publishing.load(Ordering::Relaxed) && Instant::now() < deadline {
                if !sleep_or_cancel(&link_up, Duration::from_millis(10)).await {
                    return;
                }
            }
            link_up.link_up();
        });
        let mut keepalive = tokio::time::interval(config.keepalive);
        keepalive.reset();
        let mut heard = true;
        let why: String = loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        heard = true;
                        receive(&inner, &link, msg.get_payload_bytes());
                    }
                    None => break "connection closed".into(),
                },
                _ = inner.subs_changed.notified() => {
                    if let Err(err) = reconcile(&inner, &mut sink, &mut actual).await {
                        break err.to_string();
                    }
                }
                _ = keepalive.tick() => {
                    if !heard {
                        // Subscribed, Redis answers `["pong", ""]`, not a string.
                        let ping = tokio::time::timeout(config.keepalive, sink.ping::<redis::Value>()).await;
                        if !matches!(ping, Ok(Ok(_))) {
                            break "no answer to ping".into();
                        }
                    }
                    heard = false;
                }
                _ = link.cancelled().cancelled() => return,
            }
        };
        inner.subscribed.store(false, Ordering::Relaxed);
        inner.sub_lost.notify_one();
        {
            let mut subs = inner.lock_subs();
            subs.confirmed.clear();
            // Joins waiting for a subscription go ahead.
            subs.waiters.clear();
        }
        lost_at = Some(Instant::now());
        tracing::warn!(target: "fawkes::pubsub::redis", why, "lost the redis subscription connection; serving local clients only, reconnecting");
        if !sleep_or_cancel(&link, backoff(config, 0)).await {
            return;
        }
    }
}

/// Subscribes to the wanted channels not yet subscribed, unsubscribes from
/// the others, and releases the joins waiting for them.
async fn reconcile(
    inner: &Inner,
    sink: &mut redis::aio::PubSubSink,
    actual: &mut HashSet<Arc<str>>,
) -> redis::RedisResult<()> {
    // Changes made while this runs notify again, so nothing is missed.
    let wanted = inner.wanted_channels();
    let add: Vec<Arc<str>> = wanted.difference(actual).cloned().collect();
    let remove: Vec<Arc<str>> = actual.difference(&wanted).cloned().collect();
    if !add.is_empty() {
        let names: Vec<&str> = add.iter().map(|c| &**c).collect();
        sink.subscribe(&names).await?;
        actual.extend(add.iter().cloned());
    }
    if !remove.is_empty() {
        let names: Vec<&str> = remove.iter().map(|c| &**c).collect();
        sink.unsubscribe(&names).await?;
        for c in &remove {
            actual.remove(c);
        }
    }
    let mut subs = inner.lock_subs();
    for c in &remove {
        subs.confirmed.remove(c);
    }
    for c in add {
        if let Some(waiters) = subs.waiters.remove(&c) {
            for w in waiters {
                let _ = w.send(());
            }
        }
        subs.confirmed.insert(c);
    }
    // Waiters of channels subscribed before they asked.
    let ready: Vec<Arc<str>> = subs
        .waiters
        .keys()
        .filter(|c| subs.confirmed.contains(*c))
        .cloned()
        .collect();
    for c in ready {
        for w in subs.waiters.remove(&c).unwrap_or_default() {
            let _ = w.send(());
        }
    }
    Ok(())
}

/// Handles one message from Redis.
fn receive(inner: &Inner, link: &Link, body: &[u8]) {
    match decode(body) {
        Ok(Decoded::Broadcast(msg)) if msg.1 == inner.instance => {}
        Ok(Decoded::Broadcast((msg, _))) => {
            inner.broadcasts_received.fetch_add(1, Ordering::Relaxed);
            link.deliver(&Arc::new(msg));
        }
        Ok(Decoded::Node(msg, instance)) => {
            if instance != inner.instance {
                inner.node_messages_received.fetch_add(1, Ordering::Relaxed);
                link.deliver_node_message(msg);
            }
        }
        Err(why) => {
            let malformed = inner.malformed.fetch_add(1, Ordering::Relaxed) + 1;
            if malformed.is_power_of_two() {
                tracing::warn!(target: "fawkes::pubsub::redis", why, malformed, "malformed message from redis, dropped");
            }
        }
    }
}

const KIND_BROADCAST: u8 = b'B';
const KIND_NODE: u8 = b'N';
const PAYLOAD_JSON: u8 = 0;
const PAYLOAD_BINARY: u8 = 1;

/// `[kind][instance: u64][node: u8 len][...]`.
fn header(kind: u8, instance: u64, node: &str, capacity: usize) -> BytesMut {
    let node = &node.as_bytes()[..node.len().min(255)];
    let mut buf = BytesMut::with_capacity(10 + node.len() + capacity);
    buf.put_u8(kind);
    buf.put_u64(instance);
    buf.put_u8(node.len() as u8);
    buf.put_slice(node);
    buf
}

/// `header, [topic: u32 len][event: u32 len][payload kind][payload]`.
fn encode_broadcast(instance: u64, node: &str, msg: &Broadcast) -> Bytes {
    let mut buf = header(KIND_BROADCAST, instance, node, msg.topic.len() + 64);
    buf.put_u32(msg.topic.len() as u32);
    buf.put_slice(msg.topic.as_bytes());
    buf.put_u32(msg.event.len() as u32);
    buf.put_slice(msg.event.as_bytes());
    match &msg.payload {
        Payload::Json(value) => {
            buf.put_u8(PAYLOAD_JSON);
            let mut w = buf.writer();
            // A JSON value always encodes.
            let _ = serde_json::to_writer(&mut w, value);
            buf = w.into_inner();
        }
        Payload::Binary(bytes) => {
            buf.put_u8(PAYLOAD_BINARY);
            buf.put_slice(bytes);
        }
    }
    buf.freeze()
}

/// `header, [service: u8 len][body]`.
fn encode_node_message(instance: u64, node: &str, service: &str, body: &[u8]) -> Bytes {
    let service = &service.as_bytes()[..service.len().min(255)];
    let mut buf = header(KIND_NODE, instance, node, 1 + service.len() + body.len());
    buf.put_u8(service.len() as u8);
    buf.put_slice(service);
    buf.put_slice(body);
    buf.freeze()
}

enum Decoded {
    Broadcast((Broadcast, u64)),
    Node(NodeMessage, u64),
}

fn take_str(buf: &mut &[u8], len: usize) -> Result<String, &'static str> {
    if buf.len() < len {
        return Err("truncated");
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    String::from_utf8(s.to_vec()).map_err(|_| "invalid utf-8")
}

fn take_u32(buf: &mut &[u8]) -> Result<usize, &'static str> {
    if buf.len() < 4 {
        return Err("truncated");
    }
    Ok(buf.get_u32() as usize)
}

fn decode(mut buf: &[u8]) -> Result<Decoded, &'static str> {
    if buf.len() < 10 {
        return Err("truncated");
    }
    let kind = buf.get_u8();
    let instance = buf.get_u64();
    let node_len = usize::from(buf.get_u8());
    let node = take_str(&mut buf, node_len)?;
    match kind {
        KIND_BROADCAST => {
            let len = take_u32(&mut buf)?;
            let topic = take_str(&mut buf, len)?;
            let len = take_u32(&mut buf)?;
            let event = take_str(&mut buf, len)?;
            if buf.is_empty() {
                return Err("truncated");
            }
            let payload = match buf.get_u8() {
                PAYLOAD_JSON => Payload::Json(serde_json::from_slice(buf).map_err(|_| "bad json")?),
                PAYLOAD_BINARY => Payload::Binary(Bytes::copy_from_slice(buf)),
                _ => return Err("unknown payload kind"),
            };
            if !valid_payload(&payload) {
                return Err("payload not an object");
            }
            Ok(Decoded::Broadcast((
                Broadcast {
                    topic,
                    event,
                    payload,
                    from: None,
                },
                instance,
            )))
        }
        KIND_NODE => {
            if buf.is_empty() {
                return Err("truncated");
            }
            let len = usize::from(buf.get_u8());
            let service = take_str(&mut buf, len)?;
            Ok(Decoded::Node(
                NodeMessage {
                    service: service.into(),
                    from: node.into(),
                    body: Bytes::copy_from_slice(buf),
                },
                instance,
            ))
        }
        _ => Err("unknown message kind"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn broadcasts_and_node_messages_round_trip() {
        let msg = Broadcast {
            topic: "room:1".into(),
            event: "new_msg".into(),
            payload: json!({"body": "hé"}).into(),
            from: None,
        };
        let Ok(Decoded::Broadcast((back, 7))) = decode(&encode_broadcast(7, "a", &msg)) else {
            panic!("not a broadcast");
        };
        assert_eq!(back, msg);
        let bin = Broadcast {
            payload: Payload::Binary(Bytes::from_static(&[0, 1, 2])),
            ..msg
        };
        let Ok(Decoded::Broadcast((back, _))) = decode(&encode_broadcast(7, "a", &bin)) else {
            panic!("not a broadcast");
        };
        assert_eq!(back, bin);
        let Ok(Decoded::Node(node, 9)) =
            decode(&encode_node_message(9, "node-b", "presence", b"x"))
        else {
            panic!("not a node message");
        };
        assert_eq!(
            (&*node.service, &*node.from, &node.body[..]),
            ("presence", "node-b", &b"x"[..])
        );
    }

    #[test]
    fn malformed_messages_are_errors_never_panics() {
        let good = encode_broadcast(
            1,
            "a",
            &Broadcast {
                topic: "t".into(),
                event: "e".into(),
                payload: json!({}).into(),
                from: None,
            },
        );
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut array = good.to_vec();
        let n = array.len();
        array[n - 2..].copy_from_slice(b"[]");
        assert!(decode(&array).is_err(), "a non-object payload");
        assert!(decode(b"Xgarbage-garbage").is_err());
        assert!(decode(&[b'B'; 64]).is_err());
    }

    #[test]
    fn sharded_routing_is_stable_and_all_nodes_is_one_channel() {
        let a = RedisAdapter::new(RedisConfig::new("redis://127.0.0.1:1").namespace("x")).unwrap();
        let c1 = a.inner.broadcast_channel("room:1");
        assert!(c1.starts_with("x:b:"));
        assert_eq!(c1, a.inner.broadcast_channel("room:1"));
        let b =
            RedisAdapter::new(RedisConfig::new("redis://127.0.0.1:1").routing(Routing::AllNodes))
                .unwrap();
        assert_eq!(&*b.inner.broadcast_channel("room:1"), "fawkes:b");
        assert!(RedisAdapter::new(RedisConfig::new("http://nope")).is_err());
    }
}
