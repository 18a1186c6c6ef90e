//! PubSub: topic → local subscribers, and the fast lane that encodes a
//! broadcast once per serializer however many subscribers it has.
//!
//! Owns `broadcast`, `broadcast_from` and broadcasts from outside any
//! channel, and the [`Adapter`] seam through which a cluster backend carries
//! broadcasts, and the framework's [`NodeMessage`]s (presence replication,
//! LongPoll routing), to other nodes: the [`redis`] module (feature
//! `redis`) is one. Knows nothing of channels' callbacks: a subscriber is
//! anything implementing [`Subscriber`].
//!
//! ```
//! use fawkes::pubsub::PubSub;
//! use serde_json::json;
//!
//! let pubsub = PubSub::new();
//! // Reaches every subscriber of the topic on every node.
//! pubsub.broadcast("room:lobby", "new_msg", json!({"body": "hi"})).unwrap();
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use bytes::Bytes;
use fawkes_protocol::{Frame, Payload, Serializer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::{ChannelError, valid_payload};

/// Identifies one subscription, so `broadcast_from` can skip its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// A broadcast on a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// The topic.
    pub topic: String,
    /// The event.
    pub event: String,
    /// An object or bytes.
    pub payload: Payload,
    /// The subscription that must not receive it (`broadcast_from`).
    pub from: Option<SubscriptionId>,
}

/// The frames of one broadcast, encoded at most once per serializer.
#[derive(Default)]
pub struct EncodedBroadcast {
    v1: Option<Option<Frame>>,
    v2: Option<Option<Frame>>,
}

impl EncodedBroadcast {
    /// The fast-lane frame of `msg` for `serializer`, encoded on first use;
    /// `None` when it has no form there (bytes on V1).
    pub fn frame(&mut self, serializer: Serializer, msg: &Broadcast) -> Option<Frame> {
        let slot = match serializer {
            Serializer::V1 => &mut self.v1,
            Serializer::V2 => &mut self.v2,
        };
        slot.get_or_insert_with(|| {
            match serializer.encode_broadcast(&msg.topic, &msg.event, &msg.payload) {
                Ok(frame) => Some(frame),
                Err(err) => {
                    tracing::warn!(target: "fawkes::pubsub", topic = %msg.topic, event = %msg.event, %err, "broadcast not deliverable");
                    None
                }
            }
        })
        .clone()
    }
}

/// A local receiver of broadcasts.
pub trait Subscriber: Send + Sync + 'static {
    /// Delivers one broadcast. Runs on the broadcaster's task, so it must not
    /// block: queue the frame (`encoded` gives the shared bytes) or a message.
    fn deliver(&self, msg: &Arc<Broadcast>, encoded: &mut EncodedBroadcast);
}

/// Carries broadcasts and node messages between nodes. The local fan-out
/// is the [`PubSub`]'s; an adapter publishes what this node broadcasts and
/// feeds what other nodes broadcast into [`Link::deliver`].
///
/// The endpoint calls [`start`](Self::start) once, when it is built, with
/// the [`Link`] to deliver into. The `redis` feature provides one adapter:
/// [`redis::RedisAdapter`].
pub trait Adapter: Send + Sync + 'static {
    /// Starts the adapter's work (connections, tasks) for the node `link`
    /// names. Runs inside the endpoint's runtime.
    fn start(&self, link: Link) {
        let _ = link;
    }
    /// Whether the link to the other nodes is up (what is published now
    /// reaches them).
    fn is_connected(&self) -> bool {
        true
    }
    /// Publishes a broadcast made on this node to the other nodes. Must not
    /// block: queue it. Its `from` is a subscription of this node: other
    /// nodes deliver to all their subscribers.
    fn publish(&self, msg: &Arc<Broadcast>);
    /// The topic gained its first local subscriber.
    fn subscribed(&self, topic: &str) {
        let _ = topic;
    }
    /// The topic lost its last local subscriber.
    fn unsubscribed(&self, topic: &str) {
        let _ = topic;
    }
    /// Resolves once broadcasts on `topic` from other nodes reach this node,
    /// if they may not yet (a subscription on its way); `None` if they do.
    /// A join waits for it, up to a bound, before its ok reply.
    fn ready(&self, topic: &str) -> Option<BoxFuture<'static, ()>> {
        let _ = topic;
        None
    }
    /// Sends a node message to the node named `to`, or to every other node.
    /// Must not block.
    fn send(&self, to: Option<&str>, msg: NodeMessage) {
        let _ = (to, msg);
    }
}

/// A boxed future, as [`Adapter::ready`] returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A message from one node's framework part to another's (presence
/// replication, LongPoll requests that landed on another node), carried by
/// the adapter beside broadcasts. Handlers register by service name with
/// [`PubSub::on_node_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMessage {
    /// The service it is for (`"presence"`, say).
    pub service: Arc<str>,
    /// The name of the node that sent it (filled in on receipt).
    pub from: Arc<str>,
    /// What the service makes of it.
    pub body: Bytes,
}

/// What an adapter delivers into: the node's pubsub, its name, and the
/// endpoint's shutdown, which the adapter's tasks follow.
#[derive(Clone)]
pub struct Link {
    pubsub: Weak<Inner>,
    node: Arc<str>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link for `pubsub` on the node named `node`, with the tasks of an
    /// adapter tracked by `tasks` and stopped by `cancel`.
    pub fn new(pubsub: &PubSub, node: &str, cancel: CancellationToken, tasks: TaskTracker) -> Link {
        Link {
            pubsub: Arc::downgrade(&pubsub.inner),
            node: node.into(),
            cancel,
            tasks,
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Delivers another node's broadcast to this node's subscribers;
    /// `false` once the pubsub is gone.
    pub fn deliver(&self, msg: &Arc<Broadcast>) -> bool {
        match self.pubsub.upgrade() {
            Some(inner) => {
                PubSub { inner }.deliver_local(msg);
                true
            }
            None => false,
        }
    }

    /// Hands another node's message to the handler of its service (dropped,
    /// and logged, when there is none); `false` once the pubsub is gone.
    pub fn deliver_node_message(&self, msg: NodeMessage) -> bool {
        match self.pubsub.upgrade() {
            Some(inner) => {
                PubSub { inner }.deliver_node_message(msg);
                true
            }
            None => false,
        }
    }

    /// Tells the node's services that the link to the other nodes is up
    /// (again): what was sent meanwhile was lost, and they may catch up (the
    /// presence tracker asks its peers for their state).
    pub fn link_up(&self) {
        if let Some(inner) = self.pubsub.upgrade() {
            PubSub { inner }.link_up();
        }
    }

    /// Cancelled when the endpoint shuts down.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Spawns one of the adapter's tasks; the endpoint's shutdown waits for
    /// it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task)
    }
}

/// Runs when the adapter's link to the other nodes comes up
/// ([`PubSub::on_link_up`]); must not block.
pub type LinkUpHandler = Arc<dyn Fn() + Send + Sync>;

/// Handles the node messages of one service; runs on the adapter's receive
/// task, so it must not block.
pub type NodeMessageHandler = Arc<dyn Fn(NodeMessage) + Send + Sync>;

#[cfg(feature = "redis")]
pub mod redis;

/// A hash that never changes between builds or nodes (FNV-1a), so every
/// node maps a topic to the same shard.
pub(crate) fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const SHARDS: usize = 16;

/// A topic's subscribers, in subscription order: sorted by id, since ids
/// are taken under the shard's write lock. Unsubscribing leaves a hole
/// (found by binary search, so closing a million sockets is not O(n²)),
/// and the holes are swept once they outnumber the live entries: delivery
/// stays a scan of one array, at 24 bytes per entry.
#[derive(Default)]
struct Subscribers {
    entries: Vec<(SubscriptionId, Option<Arc<dyn Subscriber>>)>,
    live: usize,
}

impl Subscribers {
    /// Removes `id`; whether it was there.
    fn remove(&mut self, id: SubscriptionId) -> bool {
        let Ok(pos) = self.entries.binary_search_by_key(&id.0, |(s, _)| s.0) else {
            return false;
        };
        if self.entries[pos].1.take().is_none() {
            return false;
        }
        self.live -= 1;
        let holes = self.entries.len() - self.live;
        if holes > self.live {
            self.entries.retain(|(_, sub)| sub.is_some());
            if self.entries.capacity() > 2 * self.entries.len() + 8 {
                self.entries.shrink_to_fit();
            }
        }
        true
    }
}

struct Inner {
    shards: [RwLock<HashMap<Box<str>, Subscribers>>; SHARDS],
    hasher: RandomState,
    next_id: AtomicU64,
    adapter: RwLock<Option<Arc<dyn Adapter>>>,
    handlers: RwLock<HashMap<Arc<str>, NodeMessageHandler>>,
    link_up: RwLock<Vec<LinkUpHandler>>,
}

/// The node's publish/subscribe hub. Cheap to clone.
#[derive(Clone)]
pub struct PubSub {
    inner: Arc<Inner>,
}

impl Default for PubSub {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub").finish_non_exhaustive()
    }
}

impl PubSub {
    /// An in-memory pubsub for one node.
    pub fn new() -> Self {
        PubSub {
            inner: Arc::new(Inner {
                shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
                hasher: RandomState::new(),
                next_id: AtomicU64::new(1),
                adapter: RwLock::new(None),
                handlers: RwLock::new(HashMap::new()),
                link_up: RwLock::new(Vec::new()),
            }),
        }
    }

    /// Installs the adapter that links this node to others; the endpoint
    /// built with this pubsub starts it
    /// ([`EndpointBuilder::adapter`](crate::EndpointBuilder::adapter) does both).
    pub fn set_adapter(&self, adapter: Arc<dyn Adapter>) {
        *self
            .inner
            .adapter
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(adapter);
    }

    /// Whether an adapter links this node to others.
    pub fn is_clustered(&self) -> bool {
        self.adapter().is_some()
    }

    /// Whether broadcasts made now reach the other nodes: `true` alone or
    /// with an adapter whose link is up.
    pub fn is_linked(&self) -> bool {
        self.adapter().is_none_or(|a| a.is_connected())
    }

    /// Registers the handler of `service`'s node messages (replacing any).
    pub fn on_node_message(&self, service: &str, handler: NodeMessageHandler) {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.into(), handler);
    }

    /// Registers `handler` to run each time the adapter's link to the other
    /// nodes comes up, at first and after every outage.
    pub fn on_link_up(&self, handler: LinkUpHandler) {
        self.inner
            .link_up
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(handler);
    }

    fn link_up(&self) {
        let handlers = self
            .inner
            .link_up
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for handler in handlers {
            handler();
        }
    }

    /// Sends `body` to `service` on the node named `to`, or on every other
    /// node; nothing without an adapter.
    pub fn send_node_message(&self, to: Option<&str>, service: &str, body: Bytes) {
        if let Some(adapter) = self.adapter() {
            adapter.send(
                to,
                NodeMessage {
                    service: service.into(),
                    from: Arc::from(""),
                    body,
                },
            );
        }
    }

    /// Hands a node message to its service's handler.
    pub fn deliver_node_message(&self, msg: NodeMessage) {
        let handler = self
            .inner
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&msg.service)
            .cloned();
        match handler {
            Some(handler) => handler(msg),
            None => {
                tracing::debug!(target: "fawkes::pubsub", service = %msg.service, from = %msg.from, "node message for no service, dropped");
            }
        }
    }

    /// Resolves once broadcasts on `topic` from other nodes reach this node
    /// ([`Adapter::ready`]); at once without an adapter.
    pub fn ready(&self, topic: &str) -> Option<BoxFuture<'static, ()>> {
        self.adapter()?.ready(topic)
    }

    pub(crate) fn adapter(&self) -> Option<Arc<dyn Adapter>> {
        self.inner
            .adapter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn shard(&self, topic: &str) -> &RwLock<HashMap<Box<str>, Subscribers>> {
        let i = self.inner.hasher.hash_one(topic) as usize % SHARDS;
        &self.inner.shards[i]
    }

    /// Subscribes `subscriber` to `topic`.
    pub fn subscribe(&self, topic: &str, subscriber: Arc<dyn Subscriber>) -> SubscriptionId {
        let (id, first) = {
            let mut shard = self.shard(topic).write().unwrap_or_else(|e| e.into_inner());
            // Under the lock, so that each topic's entries stay sorted by id.
            let id = SubscriptionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
            let subs = shard.entry(topic.into()).or_default();
            subs.entries.push((id, Some(subscriber)));
            subs.live += 1;
            (id, subs.live == 1)
        };
        if first && let Some(adapter) = self.adapter() {
            adapter.subscribed(topic);
        }
        id
    }

    /// Removes a subscription; the topic's entry goes with its last subscriber.
    /// Once this returns, no broadcast reaches the subscription.
    pub fn unsubscribe(&self, topic: &str, id: SubscriptionId) {
        let last = {
            let mut shard = self.shard(topic).write().unwrap_or_else(|e| e.into_inner());
            let Some(subs) = shard.get_mut(topic) else {
                return;
            };
            if !subs.remove(id) {
                return;
            }
            if subs.live == 0 {
                shard.remove(topic);
                true
            } else {
                false
            }
        };
        if last && let Some(adapter) = self.adapter() {
            adapter.unsubscribed(topic);
        }
    }

    /// The number of local subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        let shard = self.shard(topic).read().unwrap_or_else(|e| e.into_inner());
        shard.get(topic).map_or(0, |subs| subs.live)
    }

    /// Broadcasts to every subscriber of `topic` on every node.
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<(), ChannelError> {
        self.publish(topic, event, payload.into(), None, true)
    }

    /// Broadcasts to every subscriber of `topic` but `from`, on every node.
    pub fn broadcast_from(
        &self,
        from: SubscriptionId,
        topic: &str,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<(), ChannelError> {
        self.publish(topic, event, payload.into(), Some(from), true)
    }

    /// Broadcasts to the subscribers of `topic` on this node only.
    pub fn local_broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<(), ChannelError> {
        self.publish(topic, event, payload.into(), None, false)
    }

    fn publish(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        from: Option<SubscriptionId>,
        cluster: bool,
    ) -> Result<(), ChannelError> {
        if !valid_payload(&payload) {
            return Err(ChannelError::InvalidPayload);
        }
        let msg = Arc::new(Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
            from,
        });
        self.deliver_local(&msg);
        if cluster && let Some(adapter) = self.adapter() {
            adapter.publish(&msg);
        }
        Ok(())
    }

    /// Delivers a broadcast to this node's subscribers (adapters call this
    /// for broadcasts from other nodes).
    pub fn deliver_local(&self, msg: &Arc<Broadcast>) {
        let mut encoded = EncodedBroadcast::default();
        let shard = self
            .shard(&msg.topic)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let Some(subs) = shard.get(msg.topic.as_str()) else {
            return;
        };
        for (id, sub) in &subs.entries {
            if let Some(sub) = sub
                && Some(*id) != msg.from
            {
                sub.deliver(msg, &mut encoded);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Option<Frame>)>>);

    impl Subscriber for Recorder {
        fn deliver(&self, msg: &Arc<Broadcast>, encoded: &mut EncodedBroadcast) {
            let frame = encoded.frame(Serializer::V2, msg);
            self.0.lock().unwrap().push((msg.event.clone(), frame));
        }
    }

    #[test]
    fn broadcast_reaches_subscribers_and_from_skips_sender() {
        let ps = PubSub::new();
        let a = Arc::new(Recorder::default());
        let b = Arc::new(Recorder::default());
        let ida = ps.subscribe("t", a.clone());
        ps.subscribe("t", b.clone());
        ps.broadcast("t", "e1", serde_json::json!({})).unwrap();
        ps.broadcast_from(ida, "t", "e2", serde_json::json!({}))
            .unwrap();
        assert_eq!(a.0.lock().unwrap().len(), 1);
        assert_eq!(b.0.lock().unwrap().len(), 2);
        let frames = b.0.lock().unwrap();
        assert_eq!(
            frames[0].1.as_ref().unwrap().to_bytes().as_ref(),
            br#"[null,null,"t","e1",{}]"#
        );
    }

    #[test]
    fn encodes_once_per_serializer() {
        let msg = Arc::new(Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: serde_json::json!({"a": 1}).into(),
            from: None,
        });
        let mut enc = EncodedBroadcast::default();
        let f1 = enc.frame(Serializer::V2, &msg).unwrap();
        let f2 = enc.frame(Serializer::V2, &msg).unwrap();
        // Same allocation: the second call reuses the first encoding.
        assert_eq!(f1.parts()[0].as_ptr(), f2.parts()[0].as_ptr());
    }

    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl Subscriber for Count {
        fn deliver(&self, _msg: &Arc<Broadcast>, _encoded: &mut EncodedBroadcast) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn unsubscribe_in_any_order_keeps_the_others_and_sweeps_holes() {
        let ps = PubSub::new();
        let subs: Vec<_> = (0..100).map(|_| Arc::new(Count::default())).collect();
        let ids: Vec<_> = subs.iter().map(|s| ps.subscribe("t", s.clone())).collect();
        // Every third, then from the back: holes in the middle and at the end.
        let mut gone: Vec<usize> = (0..100).step_by(3).collect();
        gone.extend((60..100).rev().filter(|i| i % 3 != 0));
        for &i in &gone {
            ps.unsubscribe("t", ids[i]);
            // Twice is harmless.
            ps.unsubscribe("t", ids[i]);
        }
        let left = 100 - gone.len();
        assert_eq!(ps.subscriber_count("t"), left);
        {
            let shard = ps.shard("t").read().unwrap();
            let entries = &shard.get("t").unwrap().entries;
            assert!(entries.len() <= 2 * left);
            assert!(entries.windows(2).all(|w| w[0].0.0 < w[1].0.0));
        }
        // New subscriptions keep the order; a left one receives nothing.
        let late = Arc::new(Count::default());
        ps.subscribe("t", late.clone());
        ps.broadcast("t", "e", serde_json::json!({})).unwrap();
        for (i, sub) in subs.iter().enumerate() {
            let want = usize::from(!gone.contains(&i));
            assert_eq!(sub.0.load(Ordering::Relaxed), want, "subscriber {i}");
        }
        assert_eq!(late.0.load(Ordering::Relaxed), 1);
        assert_eq!(
            std::mem::size_of::<(SubscriptionId, Option<Arc<dyn Subscriber>>)>(),
            24
        );
    }

    #[test]
    fn unsubscribe_removes_topic_and_rejects_non_objects() {
        let ps = PubSub::new();
        let a = Arc::new(Recorder::default());
        let id = ps.subscribe("t", a.clone());
        assert_eq!(ps.subscriber_count("t"), 1);
        ps.unsubscribe("t", id);
        assert_eq!(ps.subscriber_count("t"), 0);
        assert!(ps.inner.shards.iter().all(|s| s.read().unwrap().is_empty()));
        assert_eq!(
            ps.broadcast("t", "e", serde_json::json!([1])),
            Err(ChannelError::InvalidPayload)
        );
    }
}
