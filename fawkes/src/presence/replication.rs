//! Replication of the tracker between nodes (PROTOCOL §8.3, §8.4): each
//! shard's replica gossips heartbeats with its delta to every node, pulls
//! full states from peers that know more, and hides then forgets peers that
//! fall silent.
//!
//! Every message names its replica and carries its clock, so any message
//! introduces its sender: a peer that has never heard of this replica, or
//! knows more, is asked for its state at once rather than on the next
//! anti-entropy round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::state::{Changes, Diff, ReplicaId, ReplicaStatus, State};
use super::tracker::{Meta, Shard, Tracker, random_u64};
use super::wire::{self, Clock, Kind, Message};
use crate::pubsub::NodeMessage;

/// Ticks without a heartbeat at most (Phoenix's `max_silent_periods`).
const MAX_SILENT_PERIODS: u32 = 10;

/// Anti-entropy runs every this many ticks (Phoenix's `clock_sample_periods`).
const CLOCK_SAMPLE_PERIODS: u64 = 2;

/// The node-message service of shard `i`'s replicas.
pub(super) fn service(i: usize) -> String {
    format!("presence:{i}")
}

/// A peer replica of the same shard on another node.
struct Peer {
    node: Arc<str>,
    heard: Instant,
    /// Its latest clock since the last anti-entropy sample.
    clock: Option<Clock>,
    /// The tick of the last transfer request sent to it: one per tick at
    /// most, however many of its messages ask for one.
    asked: Option<u64>,
}

/// One shard's replication state, beside its [`State`].
#[derive(Default)]
pub(super) struct Gossip {
    peers: HashMap<ReplicaId, Peer>,
    /// Node name → its current replica: a new one replaces the old at once.
    nodes: HashMap<Arc<str>, ReplicaId>,
    tick: u64,
    silent: u32,
    /// Said goodbye: nothing more is sent or merged.
    closed: bool,
}

/// A message to encode and send once the shard is unlocked (a state
/// transfer may be large).
struct Out {
    to: Option<Arc<str>>,
    kind: Kind,
    replica: ReplicaId,
    clock: Clock,
    changes: Option<Changes<Meta>>,
}

impl Out {
    /// A heartbeat to every node, with `changes` if any.
    fn heartbeat(state: &State<Meta>, changes: Option<Changes<Meta>>) -> Out {
        Out {
            to: None,
            kind: Kind::Heartbeat,
            replica: state.replica(),
            clock: clock_of(state),
            changes,
        }
    }
}

/// What this replica has seen of each replica it counts as up.
fn clock_of(state: &State<Meta>) -> Clock {
    let mut clock: Clock = state
        .replicas()
        .filter(|(_, s)| *s == ReplicaStatus::Up)
        .map(|(r, _)| (r, state.causal().clock(r)))
        .collect();
    clock.sort_unstable();
    clock
}

/// Whether `clock` has seen something of a replica known here that this
/// replica has not.
fn ahead(state: &State<Meta>, clock: &Clock) -> bool {
    clock.iter().any(|&(r, c)| {
        r != state.replica() && state.replica_status(r).is_some() && c > state.causal().clock(r)
    })
}

/// Whether `a` has seen all `b` has of the replicas `known` accepts.
fn dominates(a: &Clock, b: &Clock, known: impl Fn(ReplicaId) -> bool) -> bool {
    b.iter().filter(|(r, _)| known(*r)).all(|&(r, c)| {
        a.iter()
            .find(|(ra, _)| *ra == r)
            .is_some_and(|&(_, ca)| ca >= c)
            || c == 0
    })
}

impl Shard {
    fn gossip(&mut self) -> Option<&mut Gossip> {
        self.gossip.as_mut().filter(|g| !g.closed)
    }
}

impl Tracker {
    /// Registers the shards' services and starts the gossip task.
    pub(super) fn start_replication(self: &Arc<Self>) {
        for i in 0..self.shards.len() {
            let me = Arc::downgrade(self);
            self.pubsub.on_node_message(
                &service(i),
                Arc::new(move |msg| {
                    if let Some(tracker) = me.upgrade() {
                        tracker.receive(i, msg);
                    }
                }),
            );
        }
        let me = Arc::downgrade(self);
        self.pubsub.on_link_up(Arc::new(move || {
            if let Some(tracker) = me.upgrade() {
                tracker.relinked();
            }
        }));
        let (me, cancel) = (Arc::downgrade(self), self.cancel.clone());
        let period = self.config.broadcast_period.max(Duration::from_millis(1));
        self.tasks.spawn(gossip(me, cancel, period));
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, i: usize, out: Vec<Out>) {
        let service = service(i);
        for o in out {
            let body = wire::encode(o.kind, o.replica, &o.clock, o.changes.as_ref());
            self.pubsub
                .send_node_message(o.to.as_deref(), &service, body);
        }
    }

    /// Ticks without a heartbeat at most: ten, or fewer when `down_period`
    /// is under twenty periods, so that a live but idle replica is heard
    /// from about twice per `down_period`.
    fn max_silent(&self) -> u32 {
        let period = self.config.broadcast_period.max(Duration::from_millis(1));
        let ticks = self.config.down_period.as_nanos() / (2 * period.as_nanos());
        (ticks.min(u128::from(MAX_SILENT_PERIODS)) as u32).max(1)
    }

    /// One gossip round of every shard (PROTOCOL §8.3).
    fn tick(&self) {
        let now = Instant::now();
        let max_silent = self.max_silent();
        self.each_replica(|state, g, out| {
            g.tick += 1;
            // 1. Heartbeat: the delta, or proof of life now and then. A
            // replica that knows no peer yet calls every tick, so that a
            // node whose link came up late is found within a period.
            let delta = state.take_delta();
            if delta.is_some() || g.silent >= max_silent || g.peers.is_empty() {
                out.push(Out::heartbeat(state, delta.map(|d| d.changes)));
                g.silent = 0;
            } else {
                g.silent += 1;
            }
            // 2. Anti-entropy: ask the peers whose clocks no other clock
            // (this replica's included) dominates.
            if g.tick % CLOCK_SAMPLE_PERIODS == 0 {
                let own = clock_of(state);
                let mut clocks: Vec<(Option<ReplicaId>, Clock)> = vec![(None, own.clone())];
                for (&r, peer) in &mut g.peers {
                    if let Some(clock) = peer.clock.take() {
                        clocks.push((Some(r), clock));
                    }
                }
                let known =
                    |r: ReplicaId| r != state.replica() && state.replica_status(r).is_some();
                let kept: Vec<ReplicaId> = clocks
                    .iter()
                    .enumerate()
                    .filter(|(i, (_, c))| {
                        !clocks.iter().enumerate().any(|(j, (_, d))| {
                            j != *i && dominates(d, c, known) && (j < *i || !dominates(c, d, known))
                        })
                    })
                    .filter_map(|(_, (r, _))| *r)
                    .collect();
                for r in kept {
                    request(g, r, state.replica(), &own, out);
                }
            }
            // 3. Failure detection.
            let (down, permdown) = (self.config.down_period, self.config.permdown_period);
            let mut diffs = Vec::new();
            g.peers.retain(|&r, peer| {
                let silent = now.saturating_duration_since(peer.heard);
                if silent > permdown.max(down) {
                    tracing::info!(target: "fawkes::presence", node = %peer.node, replica = r.0, "replica silent past permdown_period, removed");
                    diffs.push(state.remove_replica(r));
                    if g.nodes.get(&peer.node) == Some(&r) {
                        g.nodes.remove(&peer.node);
                    }
                    return false;
                }
                if silent > down && state.replica_status(r) == Some(ReplicaStatus::Up) {
                    tracing::info!(target: "fawkes::presence", node = %peer.node, replica = r.0, "replica silent past down_period, down");
                    diffs.push(state.replica_down(r));
                }
                true
            });
            diffs
        });
    }

    /// Runs `f` on every shard's open replica, emits the diffs it returns
    /// to local subscribers, then sends what it queued (outside the lock:
    /// a full state can be large to encode).
    fn each_replica(
        &self,
        mut f: impl FnMut(&mut State<Meta>, &mut Gossip, &mut Vec<Out>) -> Vec<Diff<Meta>>,
    ) {
        for i in 0..self.shards.len() {
            let mut out = Vec::new();
            {
                let mut shard = self.lock(i);
                let Shard { state, gossip, .. } = &mut *shard;
                let Some(g) = gossip.as_mut().filter(|g| !g.closed) else {
                    continue;
                };
                for diff in f(state, g, &mut out) {
                    self.emit(&mut shard, diff);
                }
            }
            self.send(i, out);
        }
    }

    /// The link to the other nodes is up, at first or after an outage in
    /// which messages were lost: each replica heartbeats at once and asks
    /// every peer it knows for its state, rather than waiting for the next
    /// idle heartbeats (up to 16.5 s).
    fn relinked(&self) {
        self.each_replica(|state, g, out| {
            let changes = state.take_delta().map(|d| d.changes);
            out.push(Out::heartbeat(state, changes));
            g.silent = 0;
            // Not counted as this tick's request: a peer whose link comes
            // up after ours has not heard this one, and its heartbeat must
            // be able to prompt another.
            let own = clock_of(state);
            for peer in g.peers.values() {
                out.push(Out {
                    to: Some(peer.node.clone()),
                    kind: Kind::TransferReq,
                    replica: state.replica(),
                    clock: own.clone(),
                    changes: None,
                });
            }
            Vec::new()
        });
    }

    /// On orderly shutdown: each replica's last delta, then its goodbye, so
    /// that peers drop its entries now rather than after `down_period`.
    fn goodbye(&self) {
        self.each_replica(|state, g, out| {
            g.closed = true;
            if let Some(delta) = state.take_delta() {
                out.push(Out::heartbeat(state, Some(delta.changes)));
            }
            out.push(Out {
                to: None,
                kind: Kind::Goodbye,
                replica: state.replica(),
                clock: Clock::new(),
                changes: None,
            });
            Vec::new()
        });
    }

    /// Handles a message from shard `i`'s replica on another node.
    fn receive(&self, i: usize, msg: NodeMessage) {
        static MALFORMED: AtomicU64 = AtomicU64::new(0);
        let decoded = match wire::decode(&msg.body) {
            Ok(decoded) => decoded,
            Err(why) => {
                let n = MALFORMED.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(target: "fawkes::presence", from = %msg.from, service = %msg.service, why, malformed = n, "malformed presence message, dropped");
                }
                return;
            }
        };
        if *msg.from == *self.node {
            static SAME_NAME: AtomicU64 = AtomicU64::new(0);
            if SAME_NAME.fetch_add(1, Ordering::Relaxed).is_power_of_two() {
                tracing::warn!(target: "fawkes::presence", node = %msg.from, "presence message from another node with this node's name, dropped; node names must be distinct");
            }
            return;
        }
        let mut out = Vec::new();
        let mut shard = self.lock(i);
        if shard.gossip().is_none() || decoded.replica == shard.state.replica() {
            return;
        }
        self.handle(&mut shard, &msg.from, decoded, &mut out);
        drop(shard);
        self.send(i, out);
    }

    fn handle(&self, shard: &mut Shard, node: &Arc<str>, msg: Message, out: &mut Vec<Out>) {
        let Message {
            kind,
            replica,
            clock,
            changes,
        } = msg;
        if kind == Kind::Goodbye {
            let Some(g) = shard.gossip() else { return };
            if g.peers.remove(&replica).is_some() {
                if g.nodes.get(node) == Some(&replica) {
                    g.nodes.remove(node);
                }
                tracing::info!(target: "fawkes::presence", %node, replica = replica.0, "replica said goodbye, removed");
                let diff = shard.state.remove_replica(replica);
                self.emit(shard, diff);
            }
            return;
        }
        let fresh = self.hear(shard, node, replica);
        if let Some(mut changes) = changes {
            // Only this replica speaks for its own entries.
            let me = shard.state.replica();
            changes.values.retain(|d, _| d.replica != me);
            let diff = shard.state.merge(&changes);
            self.emit(shard, diff);
        }
        let Shard { state, gossip, .. } = shard;
        let Some(g) = gossip.as_mut() else { return };
        let me = state.replica();
        let own = clock_of(state);
        if kind == Kind::TransferReq {
            // The full state, of the replicas the requester knows, without
            // its own entries (PROTOCOL §8.4; no delta history is kept).
            let known = |r: ReplicaId| r == replica || clock.iter().any(|(k, _)| *k == r);
            out.push(Out {
                to: Some(node.clone()),
                kind: Kind::TransferAck,
                replica: me,
                clock: own.clone(),
                changes: Some(state.extract(replica, known)),
            });
        }
        let unaware = !clock.iter().any(|(r, _)| *r == me);
        if fresh || unaware || ahead(state, &clock) {
            request(g, replica, me, &own, out);
        }
        if kind == Kind::Heartbeat
            && let Some(peer) = g.peers.get_mut(&replica)
        {
            peer.clock = Some(clock);
        }
    }

    /// Replica bookkeeping for a message from `replica` on `node`: a new
    /// replica of a node replaces its old one, a down one is up again.
    /// Whether it was unknown or down.
    fn hear(&self, shard: &mut Shard, node: &Arc<str>, replica: ReplicaId) -> bool {
        let now = Instant::now();
        let Some(g) = shard.gossip() else {
            return false;
        };
        let old = g
            .nodes
            .insert(node.clone(), replica)
            .filter(|&r| r != replica);
        if let Some(old) = old {
            g.peers.remove(&old);
        }
        let fresh = match g.peers.get_mut(&replica) {
            Some(peer) => {
                peer.heard = now;
                false
            }
            None => {
                g.peers.insert(
                    replica,
                    Peer {
                        node: node.clone(),
                        heard: now,
                        clock: None,
                        asked: None,
                    },
                );
                true
            }
        };
        if let Some(old) = old {
            tracing::info!(target: "fawkes::presence", %node, old = old.0, new = replica.0, "node restarted, its old replica removed");
            let diff = shard.state.remove_replica(old);
            self.emit(shard, diff);
        }
        let down = shard.state.replica_status(replica) == Some(ReplicaStatus::Down);
        if fresh {
            tracing::debug!(target: "fawkes::presence", %node, replica = replica.0, "new replica");
        } else if down {
            tracing::info!(target: "fawkes::presence", %node, replica = replica.0, "replica heard again, up");
        }
        let diff = shard.state.replica_up(replica);
        self.emit(shard, diff);
        fresh || down
    }
}

/// Asks `replica` for its state, once per tick at most.
fn request(g: &mut Gossip, replica: ReplicaId, me: ReplicaId, own: &Clock, out: &mut Vec<Out>) {
    let tick = g.tick;
    let Some(peer) = g.peers.get_mut(&replica) else {
        return;
    };
    if peer.asked == Some(tick) {
        return;
    }
    peer.asked = Some(tick);
    out.push(Out {
        to: Some(peer.node.clone()),
        kind: Kind::TransferReq,
        replica: me,
        clock: own.clone(),
        changes: None,
    });
}

/// The gossip task: a tick every `period`, the first one delayed randomly
/// by up to a quarter of it so that nodes started together spread out; a
/// goodbye as soon as the endpoint shuts down.
async fn gossip(me: Weak<Tracker>, cancel: CancellationToken, period: Duration) {
    let first = period.mul_f64((random_u64() % 1000) as f64 / 4000.0);
    let mut ticks = tokio::time::interval_at(Instant::now() + first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                if let Some(tracker) = me.upgrade() {
                    tracker.goodbye();
                }
                return;
            }
            _ = ticks.tick() => {
                let Some(tracker) = me.upgrade() else { return };
                tracker.tick();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use serde_json::json;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::presence::PresenceConfig;
    use crate::pubsub::{Adapter, Broadcast, PubSub};

    /// Keeps what the tracker sends.
    #[derive(Default)]
    struct Sent(Mutex<Vec<(Option<String>, Message)>>);

    impl Adapter for Arc<Sent> {
        fn publish(&self, _: &Arc<Broadcast>) {}
        fn send(&self, to: Option<&str>, msg: NodeMessage) {
            let decoded = wire::decode(&msg.body).expect("the tracker sends what it reads");
            self.0
                .lock()
                .unwrap()
                .push((to.map(str::to_owned), decoded));
        }
    }

    impl Sent {
        fn take(&self) -> Vec<(Option<String>, Kind)> {
            let sent = std::mem::take(&mut *self.0.lock().unwrap());
            sent.into_iter().map(|(to, m)| (to, m.kind)).collect()
        }
    }

    fn tracker() -> (Arc<Tracker>, Arc<Sent>, CancellationToken) {
        let sent = Arc::new(Sent::default());
        let pubsub = PubSub::new();
        pubsub.set_adapter(Arc::new(sent.clone()));
        let config = PresenceConfig::default()
            .broadcast_period(Duration::from_millis(100))
            .down_period(Duration::from_secs(1))
            .permdown_period(Duration::from_secs(3));
        let cancel = CancellationToken::new();
        let tracker = Tracker::new(pubsub, config, TaskTracker::new(), cancel.clone(), "a");
        (tracker, sent, cancel)
    }

    /// A peer replica that knows the tracker's.
    fn peer(tracker: &Tracker, id: u64) -> State<Meta> {
        let mut state = State::with_deltas(ReplicaId(id));
        state.replica_up(tracker.lock(0).state.replica());
        state
    }

    fn deliver(tracker: &Tracker, node: &str, body: Bytes) {
        tracker.receive(
            0,
            NodeMessage {
                service: service(0).into(),
                from: node.into(),
                body,
            },
        );
    }

    fn heartbeat(tracker: &Tracker, node: &str, state: &mut State<Meta>) {
        let delta = state.take_delta();
        let body = wire::encode(
            Kind::Heartbeat,
            state.replica(),
            &clock_of(state),
            delta.as_ref().map(|d| &d.changes),
        );
        deliver(tracker, node, body);
    }

    fn meta() -> Meta {
        Arc::from(serde_json::value::to_raw_value(&json!({"phx_ref": "r"})).unwrap())
    }

    fn status(tracker: &Tracker, id: u64) -> Option<ReplicaStatus> {
        tracker.lock(0).state.replica_status(ReplicaId(id))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_goes_down_comes_back_and_is_purged() {
        let (tracker, sent, _cancel) = tracker();
        let mut b = peer(&tracker, 7);
        b.add("t", 1, "bob", |_| meta()).unwrap();
        heartbeat(&tracker, "b", &mut b);
        assert_eq!(tracker.list("t").len(), 1);
        // A new replica is asked for its state at once.
        assert!(sent.take().contains(&(Some("b".into()), Kind::TransferReq)));

        tokio::time::sleep(Duration::from_millis(1150)).await;
        assert_eq!(status(&tracker, 7), Some(ReplicaStatus::Down));
        assert!(tracker.list("t").is_empty());
        heartbeat(&tracker, "b", &mut b);
        assert_eq!(status(&tracker, 7), Some(ReplicaStatus::Up));
        assert_eq!(tracker.list("t").len(), 1, "shown again");

        tokio::time::sleep(Duration::from_millis(3150)).await;
        assert_eq!(status(&tracker, 7), None, "purged");
        assert!(tracker.lock(0).state.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn goodbyes_and_restarts_remove_a_replica_at_once() {
        let (tracker, _sent, _cancel) = tracker();
        let mut b = peer(&tracker, 7);
        b.add("t", 1, "bob", |_| meta()).unwrap();
        heartbeat(&tracker, "b", &mut b);
        let mut b2 = peer(&tracker, 8);
        b2.add("t", 1, "bob", |_| meta()).unwrap();
        heartbeat(&tracker, "b", &mut b2);
        assert_eq!(
            status(&tracker, 7),
            None,
            "replaced by the node's new replica"
        );
        assert_eq!(tracker.list("t")["bob"].metas.len(), 1);

        deliver(
            &tracker,
            "b",
            wire::encode(Kind::Goodbye, ReplicaId(8), &[], None),
        );
        assert_eq!(status(&tracker, 8), None);
        assert!(tracker.list("t").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_answered_with_the_state_and_shutdown_says_goodbye() {
        let (tracker, sent, cancel) = tracker();
        let owner = tracker.new_owner();
        tracker.track(owner, "t", "ann", json!({})).unwrap();
        let b = peer(&tracker, 7);
        deliver(
            &tracker,
            "b",
            wire::encode(Kind::TransferReq, ReplicaId(7), &clock_of(&b), None),
        );
        let acks: Vec<_> = std::mem::take(&mut *sent.0.lock().unwrap())
            .into_iter()
            .filter(|(_, m)| m.kind == Kind::TransferAck)
            .collect();
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].0.as_deref(), Some("b"));
        assert_eq!(acks[0].1.changes.as_ref().unwrap().values.len(), 1);

        // An idle replica that knows a peer heartbeats after ten silent
        // ticks at most (here five: the down period is 1 s).
        tokio::time::sleep(Duration::from_millis(50)).await;
        sent.take();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let beats = sent
            .take()
            .iter()
            .filter(|(_, k)| *k == Kind::Heartbeat)
            .count();
        assert!((1..=2).contains(&beats), "{beats} heartbeats");

        tracker.untrack_owner(owner);
        cancel.cancel();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let sent = std::mem::take(&mut *sent.0.lock().unwrap());
        let kinds: Vec<_> = sent.iter().map(|(to, m)| (to.clone(), m.kind)).collect();
        assert_eq!(kinds, [(None, Kind::Heartbeat), (None, Kind::Goodbye)]);
        assert!(sent[0].1.changes.is_some(), "the last delta goes first");
    }
}
