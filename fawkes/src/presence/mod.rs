//! Presence: who is on a topic, in Phoenix's `presence_state` /
//! `presence_diff` format (PROTOCOL §7), on a tracker whose state is a CRDT
//! (§8) so that nodes of a cluster can share it.
//!
//! A channel **tracks** a key (a user id, say) with a **meta** (a JSON
//! object: the device, when they came online) on its topic. One key groups
//! every entry tracked under it, one per channel (one user on two devices
//! is one key with two metas), and each meta carries a `phx_ref` the
//! tracker assigns, unique to that version of that entry. An entry lives as
//! long as the channel that tracked it: it goes when the channel leaves,
//! stops, crashes or its socket closes, and `untrack` removes it earlier.
//!
//! Every change reaches the topic's subscribers as a `presence_diff`
//! broadcast, `{"joins": {…}, "leaves": {…}}`, with only the metas that came
//! or went; an [`update`](ChannelPresence::update) is one diff holding the
//! key in both, the new meta carrying `phx_ref_prev`. A client that joins
//! needs the whole list once: push it with
//! [`Context::push_presence_state`](crate::Context::push_presence_state)
//! after tracking, as phoenix.js's `Presence` expects after every join.
//!
//! ```
//! use fawkes::{Channel, Context, HandleResult, Payload};
//! use serde_json::{json, Value};
//!
//! /// `room:*`, with who is in the room.
//! #[derive(Clone)]
//! struct Room;
//!
//! struct AfterJoin(String);
//!
//! impl Channel for Room {
//!     type Info = AfterJoin;
//!
//!     async fn join(&mut self, _topic: &str, payload: Value, ctx: &mut Context<Self>) -> Result<Value, Value> {
//!         let user = payload["user"].as_str().unwrap_or("anonymous").to_owned();
//!         // Track after the join reply: the diff then reaches this client too.
//!         ctx.send_info(AfterJoin(user));
//!         Ok(json!({}))
//!     }
//!
//!     async fn handle_info(&mut self, AfterJoin(user): AfterJoin, ctx: &mut Context<Self>) -> HandleResult {
//!         if let Err(err) = ctx.presence().track(&user, json!({"online_at": 1_760_000_000_000u64})) {
//!             return HandleResult::stop(fawkes::StopReason::Error(err.to_string()));
//!         }
//!         ctx.push_presence_state();
//!         HandleResult::NoReply
//!     }
//!
//!     async fn handle_in(&mut self, _event: &str, _payload: Payload, _ctx: &mut Context<Self>) -> HandleResult {
//!         HandleResult::NoReply
//!     }
//! }
//! ```
//!
//! Code outside channels reads presence with [`Endpoint::presence`](crate::Endpoint::presence)
//! and tracks with a [`PresenceOwner`], whose entries go when it is dropped.
//!
//! **Large rooms.** Each change is one diff to every subscriber, so a storm
//! of N joins into one topic sends on the order of N² diff frames, and every
//! joiner's list is as long as the room. Lists of large topics are encoded
//! once and shared by every joiner until the topic changes. With
//! [`PresenceConfig::diff_batch_window`] the changes of each window go out
//! as one diff per topic: far fewer frames, and joiners within a window
//! share one encoded list. `docs/BENCHMARKS.md` has the figures.
//!
//! **Nodes.** Each node keeps its replica of the tracker's [`state`] (one
//! per shard, named by the node and a random id per start) and sends diffs
//! to its own subscribers only, so every subscriber in the cluster sees
//! each change once. With a cluster adapter
//! ([`EndpointBuilder::adapter`](crate::EndpointBuilder::adapter)) the
//! replicas gossip over node messages (PROTOCOL §8) every
//! [`broadcast_period`](PresenceConfig::broadcast_period) (1.5 s):
//!
//! - a heartbeat to every node, with the changes since the last one, or
//!   with nothing after ten silent ticks (fewer when `down_period` is under
//!   twenty periods, so that an idle node is heard from about twice per
//!   `down_period`);
//! - every second tick, a request for the full state to each peer whose
//!   clock shows it knows more; and such a request at once to a node heard
//!   of for the first time, or found to know more, or not to know this
//!   node. The answer is always the full state of the replicas the
//!   requester knows, without its own entries: no history of deltas is
//!   kept.
//!
//! What the other nodes observe:
//!
//! - a track, update or untrack reaches them within about one period;
//! - a node that starts has everyone's entries, and they its, within about
//!   one period once its link is up;
//! - a node that shuts down in order
//!   ([`Endpoint::shutdown`](crate::Endpoint::shutdown)) says goodbye: its
//!   entries leave at once;
//! - a node that dies or is cut off is counted down once silent for
//!   [`down_period`](PresenceConfig::down_period) (30 s, checked every
//!   tick, so between about 14 s and 31.5 s after a crash): its entries
//!   leave, and join again with the same `phx_ref`s if it is heard from
//!   again; after [`permdown_period`](PresenceConfig::permdown_period)
//!   (20 min) they are purged;
//! - a node restarted under the same name is a new replica: the old one's
//!   entries leave when the new one is first heard.
//!
//! Messages from other nodes are untrusted: a malformed one is logged and
//! dropped. A state transfer is one message holding a whole shard: with
//! Redis, keep it well under the server's pub/sub output buffer limit
//! (32 MB by default), with more shards
//! ([`pool_size`](PresenceConfig::pool_size)) if need be.

mod replication;
pub mod state;
mod tracker;
mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub(crate) use tracker::{Tracker, random_u64};

/// A topic's presences: key → the metas tracked under it, as Phoenix's
/// `Presence.list/1` returns and `presence_state` carries.
pub type PresenceMap = BTreeMap<String, PresenceMetas>;

/// One key's entries: `{"metas": [...]}`, each meta with its `phx_ref`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceMetas {
    /// The metas, oldest first.
    pub metas: Vec<Map<String, Value>>,
}

/// Why a presence operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// This owner already tracks the key on the topic.
    #[error("already tracked")]
    AlreadyTracked,
    /// This owner does not track the key on the topic.
    #[error("not tracked")]
    NotTracked,
    /// Metas must serialize to a JSON object.
    #[error("meta must be a json object")]
    InvalidMeta,
    /// The meta's JSON exceeds [`PresenceConfig::max_meta_size`].
    #[error("meta is {size} bytes, over the limit of {max}")]
    MetaTooLarge {
        /// The meta's size as JSON.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// How the endpoint's tracker runs
/// ([`EndpointBuilder::presence`](crate::EndpointBuilder::presence)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PresenceConfig {
    /// Merge the changes of each window into one `presence_diff` per topic,
    /// sent at the window's end, instead of one diff per change. Clients
    /// converge on the same list; they see a change up to one window later.
    /// Default `None` (one diff per change, as Phoenix).
    pub diff_batch_window: Option<Duration>,
    /// Largest meta, as JSON without `phx_ref`; tracking or updating with a
    /// larger one fails with [`PresenceError::MetaTooLarge`], so a client
    /// cannot make every joiner's list huge. Default 16 KiB.
    pub max_meta_size: usize,
    /// Independent shards of the tracker, by topic (Phoenix's `pool_size`).
    /// Changes on one shard wait for each other. Every node of a cluster
    /// needs the same value. Default 1.
    pub pool_size: usize,
    /// How often each shard gossips with the other nodes (PROTOCOL §8.3):
    /// its changes since the last tick, and an anti-entropy round every
    /// second tick. Other nodes see a change within about one period.
    /// Default 1.5 s.
    pub broadcast_period: Duration,
    /// A node not heard from for longer is counted down: its entries leave
    /// (a diff to local subscribers) but are kept, and come back if it is
    /// heard again. Default 30 s: with the default period, an idle node
    /// is heard from every 16.5 s.
    pub down_period: Duration,
    /// A node not heard from for longer is forgotten, its entries purged
    /// (never before `down_period`). Default 20 min.
    pub permdown_period: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            diff_batch_window: None,
            max_meta_size: 16 * 1024,
            pool_size: 1,
            broadcast_period: Duration::from_millis(1500),
            down_period: Duration::from_secs(30),
            permdown_period: Duration::from_secs(20 * 60),
        }
    }
}

impl PresenceConfig {
    /// Sets [`diff_batch_window`](Self::diff_batch_window).
    pub fn diff_batch_window(mut self, window: Duration) -> Self {
        self.diff_batch_window = Some(window);
        self
    }

    /// Sets [`max_meta_size`](Self::max_meta_size).
    pub fn max_meta_size(mut self, bytes: usize) -> Self {
        self.max_meta_size = bytes;
        self
    }

    /// Sets [`pool_size`](Self::pool_size) (at least 1).
    pub fn pool_size(mut self, shards: usize) -> Self {
        self.pool_size = shards.max(1);
        self
    }

    /// Sets [`broadcast_period`](Self::broadcast_period) (at least 1 ms).
    pub fn broadcast_period(mut self, period: Duration) -> Self {
        self.broadcast_period = period.max(Duration::from_millis(1));
        self
    }

    /// Sets [`down_period`](Self::down_period).
    pub fn down_period(mut self, period: Duration) -> Self {
        self.down_period = period;
        self
    }

    /// Sets [`permdown_period`](Self::permdown_period) (a node is down
    /// before it is forgotten: never shorter than `down_period`).
    pub fn permdown_period(mut self, period: Duration) -> Self {
        self.permdown_period = period;
        self
    }
}

/// The node's presence: lists of any topic, and owners to track from code
/// outside channels. Cheap to clone; from [`Endpoint::presence`](crate::Endpoint::presence)
/// or [`Context::presence`](crate::Context::presence).
#[derive(Clone)]
pub struct Presence {
    tracker: Arc<Tracker>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

impl Presence {
    pub(crate) fn new(tracker: Arc<Tracker>) -> Self {
        Presence { tracker }
    }

    pub(crate) fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// Everyone on `topic`.
    pub fn list(&self, topic: &str) -> PresenceMap {
        self.tracker.list(topic)
    }

    /// [`list`](Self::list) as compact JSON, the payload of
    /// `presence_state`. Large topics are encoded once and shared until the
    /// topic's next diff goes out, so with a batch window this may lag
    /// `list` by up to one window (the diffs that follow bring a client up
    /// to date).
    pub fn list_json(&self, topic: &str) -> bytes::Bytes {
        self.tracker.list_encoded(topic).as_bytes().clone()
    }

    /// The metas of `key` on `topic`, if it is there.
    pub fn get_by_key(&self, topic: &str, key: &str) -> Option<PresenceMetas> {
        self.tracker.get_by_key(topic, key)
    }

    /// A new owner for code outside channels to track with.
    pub fn owner(&self) -> PresenceOwner {
        PresenceOwner {
            tracker: self.tracker.clone(),
            id: self.tracker.new_owner(),
        }
    }
}

/// Tracks presences from code outside channels (a bot in a room, a
/// background job). Its entries are removed when it is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use serde_json::json;
///
/// let (_router, endpoint) = fawkes::Endpoint::builder().build();
/// let bot = endpoint.presence().owner();
/// bot.track("room:lobby", "bot", json!({"kind": "helper"})).unwrap();
/// assert!(endpoint.presence().get_by_key("room:lobby", "bot").is_some());
/// drop(bot);
/// assert!(endpoint.presence().list("room:lobby").is_empty());
/// # }
/// ```
pub struct PresenceOwner {
    tracker: Arc<Tracker>,
    id: state::OwnerId,
}

impl std::fmt::Debug for PresenceOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceOwner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PresenceOwner {
    /// Tracks `key` on `topic` with `meta` (a JSON object); returns the
    /// entry's `phx_ref`. Subscribers get the join in a diff.
    ///
    /// # Errors
    ///
    /// [`PresenceError::AlreadyTracked`] if this owner tracks `key` on
    /// `topic`; [`PresenceError::InvalidMeta`] or
    /// [`PresenceError::MetaTooLarge`] for a bad meta.
    pub fn track(
        &self,
        topic: &str,
        key: &str,
        meta: impl Serialize,
    ) -> Result<String, PresenceError> {
        self.tracker.track(self.id, topic, key, meta)
    }

    /// Replaces the meta of `key` on `topic`; returns the new `phx_ref`.
    ///
    /// # Errors
    ///
    /// [`PresenceError::NotTracked`] if this owner does not track it, or a
    /// bad meta.
    pub fn update(
        &self,
        topic: &str,
        key: &str,
        meta: impl Serialize,
    ) -> Result<String, PresenceError> {
        self.tracker.update(self.id, topic, key, meta)
    }

    /// Stops tracking `key` on `topic`; `false` if it was not tracked.
    pub fn untrack(&self, topic: &str, key: &str) -> bool {
        self.tracker.untrack(self.id, topic, key)
    }

    /// Stops tracking everything.
    pub fn untrack_all(&self) {
        self.tracker.untrack_owner(self.id);
    }
}

impl Drop for PresenceOwner {
    fn drop(&mut self) {
        self.tracker.untrack_owner(self.id);
    }
}

/// Presence on a channel's topic, tracked by that channel: from
/// [`Context::presence`](crate::Context::presence). Entries go when the
/// channel ends.
pub struct ChannelPresence<'a> {
    pub(crate) tracker: &'a Arc<Tracker>,
    pub(crate) topic: &'a str,
    pub(crate) owner: state::OwnerId,
}

impl std::fmt::Debug for ChannelPresence<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelPresence")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ChannelPresence<'_> {
    /// Tracks `key` on the topic with `meta` (a JSON object); returns the
    /// entry's `phx_ref`. Every subscriber gets the join in a diff.
    ///
    /// # Errors
    ///
    /// [`PresenceError::AlreadyTracked`] if this channel tracks `key`;
    /// [`PresenceError::InvalidMeta`] or [`PresenceError::MetaTooLarge`] for
    /// a bad meta.
    pub fn track(&self, key: &str, meta: impl Serialize) -> Result<String, PresenceError> {
        self.tracker.track(self.owner, self.topic, key, meta)
    }

    /// Replaces this channel's meta of `key`; returns the new `phx_ref`.
    /// Subscribers get one diff with the old meta in `leaves` and the new
    /// one, carrying `phx_ref_prev`, in `joins`.
    ///
    /// # Errors
    ///
    /// [`PresenceError::NotTracked`] if this channel does not track `key`,
    /// or a bad meta.
    pub fn update(&self, key: &str, meta: impl Serialize) -> Result<String, PresenceError> {
        self.tracker.update(self.owner, self.topic, key, meta)
    }

    /// Like [`update`](Self::update), with the new meta made from the
    /// current one (without `phx_ref`).
    ///
    /// # Errors
    ///
    /// As [`update`](Self::update).
    pub fn update_with(
        &self,
        key: &str,
        f: impl FnOnce(Map<String, Value>) -> Map<String, Value>,
    ) -> Result<String, PresenceError> {
        let meta = self.tracker.meta_of(self.owner, self.topic, key)?;
        self.update(key, f(meta))
    }

    /// Stops tracking `key`; `false` if this channel did not track it.
    pub fn untrack(&self, key: &str) -> bool {
        self.tracker.untrack(self.owner, self.topic, key)
    }

    /// Everyone on the topic.
    pub fn list(&self) -> PresenceMap {
        self.tracker.list(self.topic)
    }

    /// The metas of `key` on the topic, if it is there.
    pub fn get_by_key(&self, key: &str) -> Option<PresenceMetas> {
        self.tracker.get_by_key(self.topic, key)
    }
}
