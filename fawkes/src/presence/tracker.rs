//! The node's tracker: shards of [`State`] behind locks, metas as JSON with
//! their `phx_ref`, and the `presence_diff` of every change broadcast to the
//! topic's local subscribers, at once or merged over a batch window, whether
//! the change was made here or merged from another node (`replication`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fawkes_protocol::EncodedPayload;
use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::replication::Gossip;
use super::state::{Conflict, Diff, Dot, Entry, Metas, OwnerId, ReplicaId, State};
use super::{PresenceConfig, PresenceError, PresenceMap, PresenceMetas};
use crate::pubsub::{PubSub, stable_hash};

/// A meta as stored: the application's object plus `phx_ref` (and
/// `phx_ref_prev` after an update), encoded once.
pub(crate) type Meta = Arc<RawValue>;

/// Lists at least this long are kept encoded until the topic changes, so
/// that joiners of a large topic share one encoding; shorter ones cost less
/// to encode again than to keep.
const SNAPSHOT_MIN_BYTES: usize = 4096;

/// The presence event names (PROTOCOL §7.2).
pub(crate) const PRESENCE_DIFF: &str = "presence_diff";

pub(super) struct Shard {
    pub(super) state: State<Meta>,
    /// Replication with the other nodes' replicas, when clustered.
    pub(super) gossip: Option<Gossip>,
    /// Diffs waiting for the batch window, by topic.
    pending: HashMap<Arc<str>, Batch>,
    /// Encoded lists of large topics, dropped when the topic's next diff
    /// goes out (PROTOCOL §7.4: a list as of then plus the diffs after it
    /// is what a client converges on).
    snapshots: HashMap<Arc<str>, EncodedPayload>,
}

/// One topic's changes of a window, as one diff. Clients apply a diff's
/// joins before its leaves, so an entry that joins and leaves within the
/// window is in both and ends up gone; a leave and a later join of the same
/// dot (a replica down then up) cannot share a diff.
#[derive(Default)]
struct Batch {
    diff: Diff<Meta>,
    left: HashSet<Dot>,
}

impl Batch {
    fn add(&mut self, diff: Diff<Meta>) {
        self.left.extend(diff.leaves.iter().map(|(d, _)| *d));
        self.diff.joins.extend(diff.joins);
        self.diff.leaves.extend(diff.leaves);
    }

    fn rejoins(&self, diff: &Diff<Meta>) -> bool {
        !self.left.is_empty() && diff.joins.iter().any(|(d, _)| self.left.contains(d))
    }
}

pub(crate) struct Tracker {
    pub(super) shards: Box<[Mutex<Shard>]>,
    pub(super) pubsub: PubSub,
    pub(super) config: PresenceConfig,
    /// This node's name: messages claiming it come from a misconfigured peer.
    pub(super) node: Arc<str>,
    next_owner: AtomicU64,
    /// Wakes the flush task when a batch starts.
    batch_started: Arc<Notify>,
    flusher: OnceLock<()>,
    pub(super) tasks: TaskTracker,
    pub(super) cancel: CancellationToken,
    me: Weak<Tracker>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // Lets the flush task see that the tracker is gone.
        self.batch_started.notify_one();
    }
}

pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // Without OS randomness, a clock-derived id still differs per start.
    if getrandom::fill(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        buf = (nanos ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(buf)
}

/// The `phx_ref` of an entry version: 16 characters of URL-safe base64 of
/// its replica and clock, unique across nodes since replicas are.
pub(crate) fn phx_ref(dot: Dot) -> String {
    let mut bytes = [0u8; 12];
    bytes[..6].copy_from_slice(&dot.replica.0.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&dot.clock.to_be_bytes()[2..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Counts the bytes of an encoding without keeping them.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Tracker {
    /// The tracker of the node named `node`; replicated to the other nodes
    /// (PROTOCOL §8) when `pubsub` is clustered, by tasks on `tasks` that
    /// say goodbye when `cancel` fires.
    pub(crate) fn new(
        pubsub: PubSub,
        config: PresenceConfig,
        tasks: TaskTracker,
        cancel: CancellationToken,
        node: &str,
    ) -> Arc<Tracker> {
        // Replicated only where a runtime runs the gossip task: otherwise
        // nobody would take the deltas.
        let clustered = pubsub.is_clustered() && tokio::runtime::Handle::try_current().is_ok();
        let shards = (0..config.pool_size.max(1))
            .map(|_| {
                let replica = ReplicaId(random_u64());
                Mutex::new(Shard {
                    state: if clustered {
                        State::with_deltas(replica)
                    } else {
                        State::new(replica)
                    },
                    gossip: clustered.then(Gossip::default),
                    pending: HashMap::new(),
                    snapshots: HashMap::new(),
                })
            })
            .collect();
        let tracker = Arc::new_cyclic(|me| Tracker {
            shards,
            pubsub,
            config,
            node: node.into(),
            next_owner: AtomicU64::new(1),
            batch_started: Arc::new(Notify::new()),
            flusher: OnceLock::new(),
            tasks,
            cancel,
            me: me.clone(),
        });
        if clustered {
            tracker.start_replication();
        }
        tracker
    }

    fn shard(&self, topic: &str) -> MutexGuard<'_, Shard> {
        let i = (stable_hash(topic) % self.shards.len() as u64) as usize;
        // Nothing panics while a shard is locked; recover anyway.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn new_owner(&self) -> OwnerId {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// The application's meta as an object, without the tracker's fields.
    fn user_meta(&self, meta: impl Serialize) -> Result<Map<String, Value>, PresenceError> {
        let Ok(Value::Object(mut map)) = serde_json::to_value(meta) else {
            return Err(PresenceError::InvalidMeta);
        };
        map.remove("phx_ref");
        map.remove("phx_ref_prev");
        let mut count = Count(0);
        serde_json::to_writer(&mut count, &map).map_err(|_| PresenceError::InvalidMeta)?;
        if count.0 > self.config.max_meta_size {
            return Err(PresenceError::MetaTooLarge {
                size: count.0,
                max: self.config.max_meta_size,
            });
        }
        Ok(map)
    }

    pub(crate) fn track(
        &self,
        owner: OwnerId,
        topic: &str,
        key: &str,
        meta: impl Serialize,
    ) -> Result<String, PresenceError> {
        let meta = self.user_meta(meta)?;
        self.change(topic, |state| {
            state.add(topic, owner, key, |dot| encode_meta(meta, dot, None))
        })
    }

    pub(crate) fn update(
        &self,
        owner: OwnerId,
        topic: &str,
        key: &str,
        meta: impl Serialize,
    ) -> Result<String, PresenceError> {
        let meta = self.user_meta(meta)?;
        self.change(topic, |state| {
            state.update(owner, topic, key, |_, old, new| {
                encode_meta(meta, new, Some(old))
            })
        })
    }

    /// Applies a local change to `topic`'s shard and emits its diff; the
    /// `phx_ref` of the entry it added.
    fn change(
        &self,
        topic: &str,
        op: impl FnOnce(&mut State<Meta>) -> Result<Diff<Meta>, Conflict>,
    ) -> Result<String, PresenceError> {
        let mut shard = self.shard(topic);
        let diff = op(&mut shard.state).map_err(conflict)?;
        let phx_ref = diff
            .joins
            .first()
            .map(|(d, _)| phx_ref(*d))
            .unwrap_or_default();
        self.emit(&mut shard, diff);
        Ok(phx_ref)
    }

    /// The current meta of an entry, without the tracker's fields.
    pub(crate) fn meta_of(
        &self,
        owner: OwnerId,
        topic: &str,
        key: &str,
    ) -> Result<Map<String, Value>, PresenceError> {
        let meta = {
            let shard = self.shard(topic);
            let dot = shard
                .state
                .find(owner, topic, key)
                .ok_or(PresenceError::NotTracked)?;
            shard.state.get(&dot).map(|e| e.meta.clone())
        };
        let mut map = meta.map(|m| parse_meta(&m)).unwrap_or_default();
        map.remove("phx_ref");
        map.remove("phx_ref_prev");
        Ok(map)
    }

    pub(crate) fn untrack(&self, owner: OwnerId, topic: &str, key: &str) -> bool {
        let mut shard = self.shard(topic);
        let diff = shard.state.remove(owner, topic, key);
        let removed = !diff.is_empty();
        self.emit(&mut shard, diff);
        removed
    }

    /// Removes everything `owner` tracks, on every shard.
    pub(crate) fn untrack_owner(&self, owner: OwnerId) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let diff = shard.state.remove_owner(owner);
            self.emit(&mut shard, diff);
        }
    }

    pub(crate) fn list(&self, topic: &str) -> PresenceMap {
        let shard = self.shard(topic);
        shard
            .state
            .list(topic)
            .map(|(key, metas)| (key.to_string(), presence_metas(metas)))
            .collect()
    }

    pub(crate) fn get_by_key(&self, topic: &str, key: &str) -> Option<PresenceMetas> {
        let shard = self.shard(topic);
        let metas = shard.state.get_by_key(topic, key);
        metas
            .clone()
            .next()
            .is_some()
            .then(|| presence_metas(metas))
    }

    /// The topic's presence map, encoded: shared by every caller until the
    /// topic's next diff goes out.
    pub(crate) fn list_encoded(&self, topic: &str) -> EncodedPayload {
        let mut shard = self.shard(topic);
        if let Some(snapshot) = shard.snapshots.get(topic) {
            return snapshot.clone();
        }
        let encoded = EncodedPayload::from_serialize(&ListView(shard.state.list(topic)))
            .unwrap_or_else(|err| {
                // Metas are JSON objects and keys strings: nothing can fail.
                tracing::error!(target: "fawkes::presence", topic, %err, "cannot encode a presence list");
                EncodedPayload::from_serialize(&Map::new()).expect("{} encodes")
            });
        if encoded.as_bytes().len() >= SNAPSHOT_MIN_BYTES {
            shard.snapshots.insert(topic.into(), encoded.clone());
        }
        encoded
    }

    /// Sends what `diff` changed to the local subscribers of its topics, now
    /// or at the end of the batch window.
    pub(super) fn emit(&self, shard: &mut Shard, diff: Diff<Meta>) {
        if diff.is_empty() {
            return;
        }
        for (topic, diff) in by_topic(diff) {
            if shard.pending.get(&topic).is_some_and(|b| b.rejoins(&diff))
                && let Some(batch) = shard.pending.remove(&topic)
            {
                self.broadcast(shard, &topic, &batch.diff);
            }
            let batching = self.config.diff_batch_window.is_some() && !self.cancel.is_cancelled();
            if batching && self.start_flusher() {
                let first = shard.pending.is_empty();
                shard.pending.entry(topic).or_default().add(diff);
                if first {
                    self.batch_started.notify_one();
                }
            } else {
                // What is still batched for the topic (at shutdown) goes
                // first, in the same diff.
                let diff = match shard.pending.remove(&topic) {
                    Some(mut batch) => {
                        batch.add(diff);
                        batch.diff
                    }
                    None => diff,
                };
                self.broadcast(shard, &topic, &diff);
            }
        }
    }

    fn broadcast(&self, shard: &mut Shard, topic: &str, diff: &Diff<Meta>) {
        shard.snapshots.remove(topic);
        if self.pubsub.subscriber_count(topic) == 0 {
            return;
        }
        let payload = serde_json::to_value(DiffView(diff)).unwrap_or_else(|err| {
            tracing::error!(target: "fawkes::presence", topic, %err, "cannot encode a presence diff");
            Value::Null
        });
        if let Err(err) = self.pubsub.local_broadcast(topic, PRESENCE_DIFF, payload) {
            tracing::error!(target: "fawkes::presence", topic, %err, "presence diff dropped");
        }
    }

    /// Sends every batched diff.
    fn flush(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (topic, batch) in std::mem::take(&mut shard.pending) {
                self.broadcast(&mut shard, &topic, &batch.diff);
            }
        }
    }

    /// Starts the task that flushes batches, once; `false` where there is
    /// no runtime to run it (the diff is then sent at once).
    fn start_flusher(&self) -> bool {
        let Some(window) = self.config.diff_batch_window else {
            return false;
        };
        if self.flusher.get().is_some() {
            return true;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return false;
        }
        self.flusher.get_or_init(|| {
            let (me, started, cancel) = (
                self.me.clone(),
                self.batch_started.clone(),
                self.cancel.clone(),
            );
            self.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = started.notified() => {}
                        _ = cancel.cancelled() => {}
                    }
                    if !cancel.is_cancelled() {
                        tokio::select! {
                            _ = tokio::time::sleep(window) => {}
                            _ = cancel.cancelled() => {}
                        }
                    }
                    let Some(tracker) = me.upgrade() else { return };
                    tracker.flush();
                    if cancel.is_cancelled() {
                        return;
                    }
                }
            });
        });
        true
    }
}

fn conflict(c: Conflict) -> PresenceError {
    match c {
        Conflict::AlreadyTracked => PresenceError::AlreadyTracked,
        _ => PresenceError::NotTracked,
    }
}

fn encode_meta(mut meta: Map<String, Value>, dot: Dot, prev: Option<Dot>) -> Meta {
    meta.insert("phx_ref".into(), phx_ref(dot).into());
    if let Some(prev) = prev {
        meta.insert("phx_ref_prev".into(), phx_ref(prev).into());
    }
    match serde_json::value::to_raw_value(&meta) {
        Ok(raw) => Arc::from(raw),
        // A map of JSON values always encodes.
        Err(_) => Arc::from(RawValue::NULL.to_owned()),
    }
}

fn parse_meta(meta: &RawValue) -> Map<String, Value> {
    serde_json::from_str(meta.get()).unwrap_or_default()
}

fn presence_metas(metas: Metas<'_, Meta>) -> PresenceMetas {
    PresenceMetas {
        metas: metas.map(|(_, m)| parse_meta(m)).collect(),
    }
}

/// Splits a diff by topic, keeping the order of events within each.
fn by_topic(diff: Diff<Meta>) -> Vec<(Arc<str>, Diff<Meta>)> {
    let mut out: Vec<(Arc<str>, Diff<Meta>)> = Vec::new();
    let mut slot = |topic: &Arc<str>| match out.iter().position(|(t, _)| t == topic) {
        Some(i) => i,
        None => {
            out.push((topic.clone(), Diff::default()));
            out.len() - 1
        }
    };
    let mut joins = Vec::new();
    for (dot, entry) in diff.joins {
        joins.push((slot(&entry.topic), dot, entry));
    }
    let mut leaves = Vec::new();
    for (dot, entry) in diff.leaves {
        leaves.push((slot(&entry.topic), dot, entry));
    }
    for (i, dot, entry) in joins {
        out[i].1.joins.push((dot, entry));
    }
    for (i, dot, entry) in leaves {
        out[i].1.leaves.push((dot, entry));
    }
    out
}

/// A presence map as JSON, straight from the state: `{key: {"metas": […]}}`.
struct ListView<'a, I>(I)
where
    I: Iterator<Item = (&'a Arc<str>, Metas<'a, Meta>)>;

impl<'a, I> Serialize for ListView<'a, I>
where
    I: Iterator<Item = (&'a Arc<str>, Metas<'a, Meta>)> + Clone,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .clone()
                .map(|(key, metas)| (&**key, MetasView(metas))),
        )
    }
}

/// `{"metas": […]}`.
struct MetasView<I>(I);

impl<'a, I> Serialize for MetasView<I>
where
    I: Iterator<Item = (Dot, &'a Meta)> + Clone,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Seq<I>(I);
        impl<'a, I> Serialize for Seq<I>
        where
            I: Iterator<Item = (Dot, &'a Meta)> + Clone,
        {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.clone().map(|(_, m)| &**m))
            }
        }
        let mut st = s.serialize_struct("Presence", 1)?;
        st.serialize_field("metas", &Seq(self.0.clone()))?;
        st.end()
    }
}

/// `{"joins": {…}, "leaves": {…}}` of one topic's diff (PROTOCOL §7.2).
struct DiffView<'a>(&'a Diff<Meta>);

impl Serialize for DiffView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Diff", 2)?;
        st.serialize_field("joins", &Grouped(&self.0.joins))?;
        st.serialize_field("leaves", &Grouped(&self.0.leaves))?;
        st.end()
    }
}

/// Entries as a presence map, grouped by key in order of first appearance.
struct Grouped<'a>(&'a [(Dot, Entry<Meta>)]);

impl Serialize for Grouped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut keys: Vec<&Arc<str>> = Vec::new();
        for (_, e) in self.0 {
            if !keys.contains(&&e.key) {
                keys.push(&e.key);
            }
        }
        s.collect_map(keys.into_iter().map(|key| {
            let metas = self
                .0
                .iter()
                .filter(move |(_, e)| e.key == *key)
                .map(|(d, e)| (*d, &e.meta));
            (&**key, MetasView(metas))
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pubsub::{Broadcast, EncodedBroadcast, Subscriber};

    #[derive(Default)]
    struct Diffs(Mutex<Vec<Value>>);

    impl Subscriber for Diffs {
        fn deliver(&self, msg: &Arc<Broadcast>, _: &mut EncodedBroadcast) {
            if let fawkes_protocol::Payload::Json(v) = &msg.payload {
                self.0.lock().unwrap().push(v.clone());
            }
        }
    }

    #[tokio::test]
    async fn a_batch_never_holds_a_leave_and_a_later_join_of_one_dot() {
        let pubsub = PubSub::new();
        let diffs = Arc::new(Diffs::default());
        pubsub.subscribe("t", diffs.clone());
        let config = PresenceConfig::default().diff_batch_window(Duration::from_secs(3600));
        let tracker = Tracker::new(
            pubsub,
            config,
            TaskTracker::new(),
            CancellationToken::new(),
            "test",
        );
        tracker.track(1, "t", "ann", serde_json::json!({})).unwrap();
        let mut shard = tracker.shard("t");
        let entry = |shard: &Shard| {
            let dot = shard.state.find(1, "t", "ann").unwrap();
            (dot, shard.state.get(&dot).unwrap().clone())
        };
        // As a replica going down then up would report its entries.
        let e = entry(&shard);
        let leave = Diff {
            joins: vec![],
            leaves: vec![e.clone()],
        };
        let rejoin = Diff {
            joins: vec![e],
            leaves: vec![],
        };
        tracker.emit(&mut shard, leave);
        assert!(diffs.0.lock().unwrap().is_empty(), "batched");
        tracker.emit(&mut shard, rejoin);
        let sent = diffs.0.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "the batch with the leave went out first");
        assert!(sent[0]["leaves"]["ann"].is_object() && sent[0]["joins"]["ann"].is_object());
        let batch = &shard.pending[&*Arc::<str>::from("t")];
        assert_eq!((batch.diff.joins.len(), batch.diff.leaves.len()), (1, 0));
    }

    #[test]
    fn phx_refs_are_16_url_safe_characters_unique_per_dot() {
        let a = phx_ref(Dot {
            replica: ReplicaId(u64::MAX),
            clock: 1,
        });
        let b = phx_ref(Dot {
            replica: ReplicaId(u64::MAX),
            clock: 2,
        });
        assert_eq!(a.len(), 16);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a, b);
    }

    #[test]
    fn shards_are_the_same_on_every_node() {
        // FNV-1a test vectors: the hash must never change between builds.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
