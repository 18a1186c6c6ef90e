//! The tracker's state: an add-wins observed-remove set with a causal
//! context (PROTOCOL §8.2), the CRDT that keeps presence consistent between
//! replicas.
//!
//! Pure data: no I/O, no time, no JSON; a meta is any `M: Clone`. Each
//! replica (one tracker shard on one node, for one run of it) changes only
//! its own entries, with local operations that each take the next event
//! number of the replica: its next [`Dot`]. Other replicas learn of them
//! through [`merge`](State::merge) of a [`Delta`] (the replica's events since
//! it last published one) or of a full [`extract`](State::extract). What a
//! replica has seen is its [`Causal`] context, so a merge tells an entry that
//! is new (its dot unseen) from one that is gone (its dot seen, the entry
//! absent), whatever order, however often, messages arrive in.
//!
//! Every change returns a [`Diff`]: the entries that became visible and those
//! that stopped being visible, from which presence diffs are made.
//!
//! ```
//! use fawkes::presence::state::{ReplicaId, State};
//!
//! let mut a: State<&str> = State::with_deltas(ReplicaId(1));
//! let mut b: State<&str> = State::with_deltas(ReplicaId(2));
//! b.replica_up(ReplicaId(1));
//!
//! a.add("room:1", 7, "ann", |_dot| "web").unwrap();
//! let diff = b.merge(&a.take_delta().unwrap().changes);
//! assert_eq!(diff.joins.len(), 1);
//!
//! a.remove_owner(7);
//! let diff = b.merge(&a.take_delta().unwrap().changes);
//! assert_eq!(diff.leaves.len(), 1);
//! assert_eq!(b.list("room:1").count(), 0);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// One replica: a tracker shard on one node, for one run of it (a restarted
/// node is a new replica). Chosen at random, so replicas never share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(pub u64);

/// An event of a replica, its `clock`-th change; the dot of an entry names
/// the version of the entry that event created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dot {
    /// The replica whose event it is.
    pub replica: ReplicaId,
    /// The event's number on that replica, from 1.
    pub clock: u64,
}

/// Who tracks an entry, on the entry's replica: a channel instance, or an
/// owner created for code outside channels. Its entries go when it does.
pub type OwnerId = u64;

/// One tracked presence: `key` on `topic`, tracked by `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<M> {
    /// The topic.
    pub topic: Arc<str>,
    /// The owner, unique on the entry's replica.
    pub owner: OwnerId,
    /// The presence key (a user id, say).
    pub key: Arc<str>,
    /// The application's metadata.
    pub meta: M,
}

/// Whether a replica's entries are visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaStatus {
    /// Heard from recently: its entries are listed.
    Up,
    /// Silent too long: its entries are kept but hidden.
    Down,
}

/// What a replica has seen: per replica, every event up to a clock (the
/// context), and the events seen beyond it (the cloud), so that a dot once
/// seen is never mistaken for a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Causal {
    context: BTreeMap<ReplicaId, u64>,
    clouds: BTreeMap<ReplicaId, BTreeSet<u64>>,
}

impl Causal {
    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.clock <= self.clock(dot.replica)
            || self
                .clouds
                .get(&dot.replica)
                .is_some_and(|c| c.contains(&dot.clock))
    }

    /// The clock up to which every event of `replica` has been seen.
    pub fn clock(&self, replica: ReplicaId) -> u64 {
        self.context.get(&replica).copied().unwrap_or(0)
    }

    /// Records `dot` as seen, folding it into the context when contiguous.
    pub fn insert(&mut self, dot: Dot) {
        let clock = self.clock(dot.replica);
        if dot.clock <= clock {
            return;
        }
        if dot.clock == clock + 1 {
            self.context.insert(dot.replica, dot.clock);
            self.fold(dot.replica);
        } else {
            self.clouds
                .entry(dot.replica)
                .or_default()
                .insert(dot.clock);
        }
    }

    /// The dots seen beyond the context, of every replica.
    pub fn cloud_dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.clouds
            .iter()
            .flat_map(|(&replica, cloud)| cloud.iter().map(move |&clock| Dot { replica, clock }))
    }

    /// The clock of every replica with one, in replica order.
    pub fn clocks(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.context.iter().map(|(&r, &c)| (r, c))
    }

    /// Records every event of `replica` up to `clock` as seen.
    pub fn insert_up_to(&mut self, replica: ReplicaId, clock: u64) {
        if clock > self.clock(replica) {
            self.context.insert(replica, clock);
            self.fold(replica);
        }
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.context.values().all(|&c| c == 0) && self.clouds.is_empty()
    }

    /// Moves the cloud's events that now continue the context into it.
    fn fold(&mut self, replica: ReplicaId) {
        let Some(cloud) = self.clouds.get_mut(&replica) else {
            return;
        };
        let mut clock = self.context.get(&replica).copied().unwrap_or(0);
        while let Some(&first) = cloud.first() {
            if first <= clock {
                cloud.pop_first();
            } else if first == clock + 1 {
                cloud.pop_first();
                clock = first;
            } else {
                break;
            }
        }
        if cloud.is_empty() {
            self.clouds.remove(&replica);
        }
        if clock > 0 {
            self.context.insert(replica, clock);
        }
    }

    /// Adds what `other` has seen of the replicas `keep` accepts.
    fn union(&mut self, other: &Causal, keep: impl Fn(ReplicaId) -> bool) {
        for (&replica, &clock) in &other.context {
            if keep(replica) && clock > self.clock(replica) {
                self.context.insert(replica, clock);
                self.fold(replica);
            }
        }
        for dot in other.cloud_dots() {
            if keep(dot.replica) {
                self.insert(dot);
            }
        }
    }

    /// What is seen of the replicas `keep` accepts.
    fn restricted(&self, keep: impl Fn(ReplicaId) -> bool) -> Causal {
        Causal {
            context: self
                .context
                .iter()
                .filter(|(r, _)| keep(**r))
                .map(|(r, c)| (*r, *c))
                .collect(),
            clouds: self
                .clouds
                .iter()
                .filter(|(r, _)| keep(**r))
                .map(|(r, c)| (*r, c.clone()))
                .collect(),
        }
    }

    /// Forgets everything about `replica`.
    fn forget(&mut self, replica: ReplicaId) {
        self.context.remove(&replica);
        self.clouds.remove(&replica);
    }
}

/// Entries with what their sender had seen: a replica's [`Delta`], or its
/// full state ([`State::extract`]). Merged with [`State::merge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<M> {
    /// The dots the sender had seen. An entry whose dot is seen here but
    /// that is absent from `values` is gone.
    pub causal: Causal,
    /// Entries by dot.
    pub values: HashMap<Dot, Entry<M>>,
}

impl<M> Default for Changes<M> {
    fn default() -> Self {
        Changes {
            causal: Causal::default(),
            values: HashMap::new(),
        }
    }
}

/// A replica's own events since its last delta: the entries it added and
/// still has, and the dots of every event and of every entry it removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta<M> {
    /// The replica whose events these are.
    pub replica: ReplicaId,
    /// The replica's clocks the delta covers: after `start`, up to `end`.
    pub start: u64,
    /// See `start`.
    pub end: u64,
    /// The events.
    pub changes: Changes<M>,
}

/// What a change made visible and what it hid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<M> {
    /// Entries now listed.
    pub joins: Vec<(Dot, Entry<M>)>,
    /// Entries no longer listed.
    pub leaves: Vec<(Dot, Entry<M>)>,
}

impl<M> Default for Diff<M> {
    fn default() -> Self {
        Diff {
            joins: Vec::new(),
            leaves: Vec::new(),
        }
    }
}

impl<M> Diff<M> {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }
}

/// Why a local operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Conflict {
    /// The owner already tracks this key on this topic.
    #[error("already tracked")]
    AlreadyTracked,
    /// The owner does not track this key on this topic.
    #[error("not tracked")]
    NotTracked,
}

/// One replica's view of every entry: its own and the ones merged from
/// others.
#[derive(Debug, Clone)]
pub struct State<M> {
    replica: ReplicaId,
    clock: u64,
    causal: Causal,
    values: HashMap<Dot, Entry<M>>,
    /// topic → key → dots, in the order they arrived.
    topics: HashMap<Arc<str>, BTreeMap<Arc<str>, Vec<Dot>>>,
    /// This replica's entries by owner.
    owners: HashMap<OwnerId, Vec<Dot>>,
    /// Known replicas, this one included.
    replicas: HashMap<ReplicaId, ReplicaStatus>,
    down: usize,
    /// Recorded only when replicated: otherwise nobody would take it.
    delta: Option<Delta<M>>,
}

impl<M> State<M> {
    fn visible(&self, dot: &Dot) -> bool {
        self.down == 0 || self.replicas.get(&dot.replica) == Some(&ReplicaStatus::Up)
    }
}

impl<M: Clone> State<M> {
    /// The state of a replica that nobody replicates: no delta is recorded.
    pub fn new(replica: ReplicaId) -> Self {
        State {
            replica,
            clock: 0,
            causal: Causal::default(),
            values: HashMap::new(),
            topics: HashMap::new(),
            owners: HashMap::new(),
            replicas: HashMap::from([(replica, ReplicaStatus::Up)]),
            down: 0,
            delta: None,
        }
    }

    /// The state of a replica whose events are published: every local
    /// change is also recorded in the delta that
    /// [`take_delta`](Self::take_delta) hands out.
    pub fn with_deltas(replica: ReplicaId) -> Self {
        let mut state = State::new(replica);
        state.delta = Some(state.empty_delta());
        state
    }

    fn empty_delta(&self) -> Delta<M> {
        Delta {
            replica: self.replica,
            start: self.clock,
            end: self.clock,
            changes: Changes::default(),
        }
    }

    /// This replica.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// What this replica has seen.
    pub fn causal(&self) -> &Causal {
        &self.causal
    }

    /// The number of entries held, hidden ones included.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every known replica, this one included, with its status.
    pub fn replicas(&self) -> impl Iterator<Item = (ReplicaId, ReplicaStatus)> + '_ {
        self.replicas.iter().map(|(&r, &s)| (r, s))
    }

    /// A replica's status; `None` if it is not known.
    pub fn replica_status(&self, replica: ReplicaId) -> Option<ReplicaStatus> {
        self.replicas.get(&replica).copied()
    }

    /// The entry of `dot`, visible or not.
    pub fn get(&self, dot: &Dot) -> Option<&Entry<M>> {
        self.values.get(dot)
    }

    /// The visible entries of `topic`, grouped by key (in key order; a key's
    /// entries in the order they arrived).
    pub fn list<'a>(
        &'a self,
        topic: &str,
    ) -> impl Iterator<Item = (&'a Arc<str>, Metas<'a, M>)> + Clone + use<'a, M> {
        self.topics.get(topic).into_iter().flat_map(move |keys| {
            keys.iter().filter_map(move |(key, dots)| {
                let metas = Metas { state: self, dots };
                metas.clone().next().is_some().then_some((key, metas))
            })
        })
    }

    /// The visible entries of `key` on `topic`.
    pub fn get_by_key<'a>(&'a self, topic: &str, key: &str) -> Metas<'a, M> {
        static NONE: Vec<Dot> = Vec::new();
        let dots = self
            .topics
            .get(topic)
            .and_then(|keys| keys.get(key))
            .unwrap_or(&NONE);
        Metas { state: self, dots }
    }

    /// The topics with entries, visible or not.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<str>> + Clone {
        self.topics.keys()
    }

    /// The dot of `owner`'s entry for `key` on `topic`.
    pub fn find(&self, owner: OwnerId, topic: &str, key: &str) -> Option<Dot> {
        self.owners.get(&owner)?.iter().copied().find(|d| {
            let e = &self.values[d];
            &*e.topic == topic && &*e.key == key
        })
    }

    fn next_dot(&mut self) -> Dot {
        self.clock += 1;
        let dot = Dot {
            replica: self.replica,
            clock: self.clock,
        };
        self.causal.insert(dot);
        if let Some(delta) = &mut self.delta {
            delta.changes.causal.insert(dot);
            delta.end = self.clock;
        }
        dot
    }

    /// Stores an entry and indexes it, sharing one allocation of its topic
    /// and key with the other entries of the same.
    fn insert(&mut self, dot: Dot, mut entry: Entry<M>) {
        if let Some((topic, _)) = self.topics.get_key_value(&*entry.topic) {
            entry.topic = topic.clone();
        }
        let keys = self.topics.entry(entry.topic.clone()).or_default();
        if let Some((key, _)) = keys.get_key_value(&*entry.key) {
            entry.key = key.clone();
        }
        keys.entry(entry.key.clone()).or_default().push(dot);
        if dot.replica == self.replica {
            self.owners.entry(entry.owner).or_default().push(dot);
        }
        self.values.insert(dot, entry);
    }

    /// Removes an entry and its index entries.
    fn take(&mut self, dot: Dot) -> Option<Entry<M>> {
        let entry = self.values.remove(&dot)?;
        if let Some(keys) = self.topics.get_mut(&*entry.topic) {
            if let Some(dots) = keys.get_mut(&*entry.key) {
                dots.retain(|d| *d != dot);
                if dots.is_empty() {
                    keys.remove(&*entry.key);
                }
            }
            if keys.is_empty() {
                self.topics.remove(&*entry.topic);
            }
        }
        if dot.replica == self.replica
            && let Some(dots) = self.owners.get_mut(&entry.owner)
        {
            dots.retain(|d| *d != dot);
            if dots.is_empty() {
                self.owners.remove(&entry.owner);
            }
        }
        Some(entry)
    }

    /// Tracks `key` on `topic` for `owner`, with the meta `meta` makes from
    /// the entry's dot.
    ///
    /// # Errors
    ///
    /// [`Conflict::AlreadyTracked`] if `owner` tracks `key` on `topic`.
    pub fn add(
        &mut self,
        topic: &str,
        owner: OwnerId,
        key: &str,
        meta: impl FnOnce(Dot) -> M,
    ) -> Result<Diff<M>, Conflict> {
        if self.find(owner, topic, key).is_some() {
            return Err(Conflict::AlreadyTracked);
        }
        let entry = Entry {
            topic: topic.into(),
            owner,
            key: key.into(),
            meta: (),
        };
        Ok(self.add_entry(entry, meta))
    }

    fn add_entry(&mut self, entry: Entry<()>, meta: impl FnOnce(Dot) -> M) -> Diff<M> {
        let dot = self.next_dot();
        let entry = Entry {
            topic: entry.topic,
            owner: entry.owner,
            key: entry.key,
            meta: meta(dot),
        };
        if let Some(delta) = &mut self.delta {
            delta.changes.values.insert(dot, entry.clone());
        }
        self.insert(dot, entry.clone());
        Diff {
            joins: vec![(dot, entry)],
            leaves: Vec::new(),
        }
    }

    /// Removes a local entry: its dot stays seen ("seen and gone"), and the
    /// removal is an event of its own.
    fn remove_local(&mut self, dot: Dot) -> Option<Entry<M>> {
        let entry = self.take(dot)?;
        if let Some(delta) = &mut self.delta {
            delta.changes.values.remove(&dot);
            delta.changes.causal.insert(dot);
        }
        self.next_dot();
        Some(entry)
    }

    /// Stops tracking `owner`'s `key` on `topic`.
    pub fn remove(&mut self, owner: OwnerId, topic: &str, key: &str) -> Diff<M> {
        let mut diff = Diff::default();
        if let Some(dot) = self.find(owner, topic, key)
            && let Some(entry) = self.remove_local(dot)
        {
            diff.leaves.push((dot, entry));
        }
        diff
    }

    /// Stops tracking everything `owner` tracks.
    pub fn remove_owner(&mut self, owner: OwnerId) -> Diff<M> {
        let mut diff = Diff::default();
        for dot in self.owners.get(&owner).cloned().unwrap_or_default() {
            if let Some(entry) = self.remove_local(dot) {
                diff.leaves.push((dot, entry));
            }
        }
        diff
    }

    /// Replaces the meta of `owner`'s `key` on `topic`: a removal of the old
    /// version and an add of the new one, reported together. `meta` gets
    /// the old meta, the old dot and the new dot.
    ///
    /// # Errors
    ///
    /// [`Conflict::NotTracked`] if `owner` does not track `key` on `topic`.
    pub fn update(
        &mut self,
        owner: OwnerId,
        topic: &str,
        key: &str,
        meta: impl FnOnce(&M, Dot, Dot) -> M,
    ) -> Result<Diff<M>, Conflict> {
        let old_dot = self.find(owner, topic, key).ok_or(Conflict::NotTracked)?;
        let old = self.remove_local(old_dot).ok_or(Conflict::NotTracked)?;
        let entry = Entry {
            topic: old.topic.clone(),
            owner,
            key: old.key.clone(),
            meta: (),
        };
        let mut diff = self.add_entry(entry, |new_dot| meta(&old.meta, old_dot, new_dot));
        diff.leaves.push((old_dot, old));
        Ok(diff)
    }

    /// Hands out the events since the last delta and starts a new one;
    /// `None` if there were none or deltas are not recorded.
    pub fn take_delta(&mut self) -> Option<Delta<M>> {
        let fresh = self.empty_delta();
        let delta = self.delta.as_mut()?;
        if delta.changes.causal.is_empty() {
            return None;
        }
        Some(std::mem::replace(delta, fresh))
    }

    /// Merges another replica's delta or full state (PROTOCOL §8.2): its
    /// entries this replica has not seen join (if their replica is known),
    /// and entries of other replicas it saw and no longer has leave.
    /// Merging the same changes again, or in another order, ends in the
    /// same state.
    pub fn merge(&mut self, remote: &Changes<M>) -> Diff<M> {
        let mut diff = Diff::default();
        for (&dot, entry) in &remote.values {
            if !self.replicas.contains_key(&dot.replica) || self.causal.contains(dot) {
                continue;
            }
            self.insert(dot, entry.clone());
            if self.visible(&dot) {
                let entry = self.values[&dot].clone();
                diff.joins.push((dot, entry));
            }
        }
        let gone = |dot: &Dot| {
            dot.replica != self.replica
                && remote.causal.contains(*dot)
                && !remote.values.contains_key(dot)
        };
        // A delta's causal information is only its own dots: look those up
        // rather than scanning every entry.
        let gone: Vec<Dot> = if remote.causal.context.is_empty() {
            remote
                .causal
                .cloud_dots()
                .filter(|d| self.values.contains_key(d) && gone(d))
                .collect()
        } else {
            self.values.keys().copied().filter(gone).collect()
        };
        for dot in gone {
            let visible = self.visible(&dot);
            if let Some(entry) = self.take(dot)
                && visible
            {
                diff.leaves.push((dot, entry));
            }
        }
        let replicas = &self.replicas;
        self.causal
            .union(&remote.causal, |r| replicas.contains_key(&r));
        diff
    }

    /// The full state for `requester` to merge: entries and causal
    /// information of the replicas it knows (`known`), without its own
    /// entries.
    pub fn extract(&self, requester: ReplicaId, known: impl Fn(ReplicaId) -> bool) -> Changes<M> {
        Changes {
            causal: self.causal.restricted(&known),
            values: self
                .values
                .iter()
                .filter(|(d, _)| d.replica != requester && known(d.replica))
                .map(|(d, e)| (*d, e.clone()))
                .collect(),
        }
    }

    fn entries_of(&self, replica: ReplicaId) -> Vec<(Dot, Entry<M>)> {
        let mut entries: Vec<_> = self
            .values
            .iter()
            .filter(|(d, _)| d.replica == replica)
            .map(|(d, e)| (*d, e.clone()))
            .collect();
        entries.sort_by_key(|(d, _)| *d);
        entries
    }

    /// Marks `replica` up: known from now on (its entries merge), and the
    /// entries held for it are visible again.
    pub fn replica_up(&mut self, replica: ReplicaId) -> Diff<M> {
        match self.replicas.insert(replica, ReplicaStatus::Up) {
            Some(ReplicaStatus::Down) => {
                self.down -= 1;
                Diff {
                    joins: self.entries_of(replica),
                    leaves: Vec::new(),
                }
            }
            _ => Diff::default(),
        }
    }

    /// Marks `replica` down: its entries are kept but hidden. This replica
    /// never goes down.
    pub fn replica_down(&mut self, replica: ReplicaId) -> Diff<M> {
        if replica == self.replica || self.replicas.get(&replica) != Some(&ReplicaStatus::Up) {
            return Diff::default();
        }
        self.replicas.insert(replica, ReplicaStatus::Down);
        self.down += 1;
        Diff {
            joins: Vec::new(),
            leaves: self.entries_of(replica),
        }
    }

    /// Forgets `replica` for good: its entries and what was seen of it. The
    /// leaves are the entries that were still visible.
    pub fn remove_replica(&mut self, replica: ReplicaId) -> Diff<M> {
        if replica == self.replica {
            return Diff::default();
        }
        let visible = match self.replicas.remove(&replica) {
            None => return Diff::default(),
            Some(ReplicaStatus::Down) => {
                self.down -= 1;
                false
            }
            Some(ReplicaStatus::Up) => true,
        };
        let mut diff = Diff::default();
        for (dot, _) in self.entries_of(replica) {
            if let Some(entry) = self.take(dot)
                && visible
            {
                diff.leaves.push((dot, entry));
            }
        }
        self.causal.forget(replica);
        diff
    }
}

/// The visible metas of one key, from [`State::list`] or
/// [`State::get_by_key`].
#[derive(Debug)]
pub struct Metas<'a, M> {
    state: &'a State<M>,
    dots: &'a [Dot],
}

impl<M> Clone for Metas<'_, M> {
    fn clone(&self) -> Self {
        Metas {
            state: self.state,
            dots: self.dots,
        }
    }
}

impl<'a, M> Iterator for Metas<'a, M> {
    type Item = (Dot, &'a M);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some((dot, rest)) = self.dots.split_first() {
            self.dots = rest;
            if self.state.visible(dot) {
                return Some((*dot, &self.state.values[dot].meta));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const A: ReplicaId = ReplicaId(1);
    const B: ReplicaId = ReplicaId(2);
    const C: ReplicaId = ReplicaId(3);

    /// Replicas that know each other.
    fn cluster(ids: &[ReplicaId]) -> Vec<State<u32>> {
        ids.iter()
            .map(|&id| {
                let mut s = State::with_deltas(id);
                for &other in ids {
                    s.replica_up(other);
                }
                s
            })
            .collect()
    }

    /// Visible entries as (topic, key, meta, dot).
    fn visible(s: &State<u32>) -> BTreeSet<(String, String, u32, Dot)> {
        let mut out = BTreeSet::new();
        for topic in s.topics() {
            for (key, metas) in s.list(topic) {
                for (dot, meta) in metas {
                    out.insert((topic.to_string(), key.to_string(), *meta, dot));
                }
            }
        }
        out
    }

    fn dots(diff: &[(Dot, Entry<u32>)]) -> Vec<Dot> {
        diff.iter().map(|(d, _)| *d).collect()
    }

    #[test]
    fn causal_folds_contiguous_dots() {
        let mut c = Causal::default();
        let d = |clock| Dot { replica: A, clock };
        c.insert(d(2));
        c.insert(d(4));
        assert!(c.contains(d(2)) && !c.contains(d(1)) && !c.contains(d(3)));
        assert_eq!(c.clock(A), 0);
        c.insert(d(1));
        assert_eq!(c.clock(A), 2);
        c.insert(d(3));
        assert_eq!(c.clock(A), 4);
        assert_eq!(c.cloud_dots().count(), 0);
        c.insert(d(3));
        assert_eq!(c.clock(A), 4);
    }

    #[test]
    fn add_remove_and_update_report_what_changed() {
        let mut s: State<u32> = State::new(A);
        let j = s.add("t", 1, "ann", |_| 10).unwrap();
        assert_eq!(
            dots(&j.joins),
            vec![Dot {
                replica: A,
                clock: 1
            }]
        );
        assert_eq!(s.add("t", 1, "ann", |_| 11), Err(Conflict::AlreadyTracked));
        // Same key from another owner, or another key from the same owner.
        s.add("t", 2, "ann", |_| 20).unwrap();
        s.add("t", 1, "bob", |_| 30).unwrap();
        assert_eq!(
            s.get_by_key("t", "ann")
                .map(|(_, m)| *m)
                .collect::<Vec<_>>(),
            vec![10, 20]
        );

        let u = s
            .update(1, "t", "ann", |old, old_dot, new_dot| {
                assert_eq!(old_dot.clock, 1);
                assert!(new_dot.clock > old_dot.clock);
                old + 1
            })
            .unwrap();
        assert_eq!(u.joins[0].1.meta, 11);
        assert_eq!(u.leaves[0].1.meta, 10);
        assert_eq!(
            s.update(9, "t", "ann", |m, _, _| *m),
            Err(Conflict::NotTracked)
        );
        assert_eq!(
            s.get_by_key("t", "ann")
                .map(|(_, m)| *m)
                .collect::<Vec<_>>(),
            vec![20, 11]
        );

        assert_eq!(s.remove(1, "t", "nobody").leaves.len(), 0);
        assert_eq!(s.remove_owner(1).leaves.len(), 2);
        assert_eq!(visible(&s).len(), 1);
        s.remove_owner(2);
        assert!(s.is_empty());
        assert!(
            s.topics.is_empty() && s.owners.is_empty(),
            "indexes are freed"
        );
    }

    #[test]
    fn no_delta_is_recorded_unless_replicated() {
        let mut s: State<u32> = State::new(A);
        s.add("t", 1, "k", |_| 1).unwrap();
        assert!(s.take_delta().is_none());
    }

    #[test]
    fn deltas_carry_adds_and_removes_to_another_replica() {
        let mut r = cluster(&[A, B]);
        let (a, b) = r.split_at_mut(1);
        let (a, b) = (&mut a[0], &mut b[0]);
        a.add("t", 1, "ann", |_| 1).unwrap();
        a.add("t", 2, "bob", |_| 2).unwrap();
        let d1 = a.take_delta().unwrap();
        assert_eq!((d1.start, d1.end), (0, 2));
        let diff = b.merge(&d1.changes);
        assert_eq!(diff.joins.len(), 2);
        assert_eq!(visible(a), visible(b));

        a.remove_owner(1);
        a.update(2, "t", "bob", |m, _, _| m + 10).unwrap();
        let d2 = a.take_delta().unwrap();
        let diff = b.merge(&d2.changes);
        assert_eq!(diff.leaves.len(), 2, "ann left, bob's old version left");
        assert_eq!(diff.joins.len(), 1, "bob's new version joined");
        assert_eq!(visible(a), visible(b));
        assert!(a.take_delta().is_none(), "nothing new");
    }

    #[test]
    fn merging_is_idempotent_and_order_free() {
        let mut r = cluster(&[A, B]);
        r[0].add("t", 1, "ann", |_| 1).unwrap();
        let d1 = r[0].take_delta().unwrap();
        r[0].remove_owner(1);
        r[0].add("t", 2, "bob", |_| 2).unwrap();
        let d2 = r[0].take_delta().unwrap();

        // The later delta first: ann's removal is seen before her add, so
        // her add never shows.
        let b = &mut r[1];
        let first = b.merge(&d2.changes);
        assert_eq!(dots(&first.joins).len(), 1);
        let second = b.merge(&d1.changes);
        assert!(second.is_empty(), "{second:?}");
        assert!(b.merge(&d2.changes).is_empty());
        assert!(b.merge(&d1.changes).is_empty());
        assert_eq!(visible(&r[0]), visible(&r[1]));
    }

    #[test]
    fn entries_of_unknown_replicas_are_ignored_until_known() {
        let mut a: State<u32> = State::with_deltas(A);
        let mut b: State<u32> = State::with_deltas(B);
        a.add("t", 1, "ann", |_| 1).unwrap();
        let d = a.take_delta().unwrap();
        assert!(b.merge(&d.changes).is_empty());
        assert!(
            !b.causal().contains(Dot {
                replica: A,
                clock: 1
            }),
            "nothing learned of A"
        );
        b.replica_up(A);
        assert_eq!(b.merge(&d.changes).joins.len(), 1);
    }

    #[test]
    fn full_state_transfer_catches_a_replica_up() {
        let mut r = cluster(&[A, B, C]);
        r[0].add("t", 1, "ann", |_| 1).unwrap();
        r[0].add("t", 2, "bob", |_| 2).unwrap();
        let d = r[0].take_delta().unwrap();
        r[1].merge(&d.changes);
        r[0].remove_owner(1);
        let d = r[0].take_delta().unwrap();
        r[1].merge(&d.changes);
        // C missed both deltas; B's full state brings it up to date, and
        // B's entries are B's to send, not C's own.
        r[2].add("t", 3, "cat", |_| 3).unwrap();
        let extract = r[1].extract(C, |_| true);
        assert!(extract.values.keys().all(|d| d.replica != C));
        let diff = r[2].merge(&extract);
        assert_eq!(
            dots(&diff.joins),
            vec![Dot {
                replica: A,
                clock: 2
            }]
        );
        let mut expected = visible(&r[1]);
        expected.extend(visible(&r[2]).into_iter().filter(|e| e.3.replica == C));
        assert_eq!(visible(&r[2]), expected);

        // A later full state without bob, who left meanwhile, removes him.
        r[0].remove_owner(2);
        let d = r[0].take_delta().unwrap();
        r[1].merge(&d.changes);
        let extract = r[1].extract(C, |_| true);
        let diff = r[2].merge(&extract);
        assert_eq!(
            dots(&diff.leaves),
            vec![Dot {
                replica: A,
                clock: 2
            }]
        );
    }

    #[test]
    fn own_entries_are_never_removed_by_a_merge() {
        let mut r = cluster(&[A, B]);
        r[0].add("t", 1, "ann", |_| 1).unwrap();
        let d = r[0].take_delta().unwrap();
        r[1].merge(&d.changes);
        // B's state without A's entries, but having seen them.
        let mut without_a = r[1].extract(B, |_| true);
        without_a.values.retain(|d, _| d.replica != A);
        assert!(r[0].merge(&without_a).is_empty());
        assert_eq!(visible(&r[0]).len(), 1);
    }

    #[test]
    fn down_replicas_are_hidden_then_shown_again_or_removed() {
        let mut r = cluster(&[A, B]);
        r[0].add("t", 1, "ann", |_| 1).unwrap();
        let d = r[0].take_delta().unwrap();
        let b = &mut r[1];
        b.merge(&d.changes);
        let down = b.replica_down(A);
        assert_eq!(
            dots(&down.leaves),
            vec![Dot {
                replica: A,
                clock: 1
            }]
        );
        assert!(b.replica_down(A).is_empty(), "already down");
        assert_eq!(b.list("t").count(), 0);
        assert_eq!(b.get_by_key("t", "ann").count(), 0);
        assert_eq!(b.len(), 1, "kept while down");
        let up = b.replica_up(A);
        assert_eq!(
            dots(&up.joins),
            vec![Dot {
                replica: A,
                clock: 1
            }]
        );
        assert_eq!(b.list("t").count(), 1);

        let gone = b.remove_replica(A);
        assert_eq!(gone.leaves.len(), 1);
        assert!(b.is_empty());
        assert_eq!(b.replica_status(A), None);
        // Forgotten: its old delta no longer merges.
        assert!(b.merge(&d.changes).is_empty());
        assert!(
            b.replica_down(B).is_empty(),
            "a replica never goes down to itself"
        );
    }

    #[test]
    fn removing_a_down_replica_reports_nothing_twice() {
        let mut r = cluster(&[A, B]);
        r[0].add("t", 1, "ann", |_| 1).unwrap();
        let d = r[0].take_delta().unwrap();
        r[1].merge(&d.changes);
        assert_eq!(r[1].replica_down(A).leaves.len(), 1);
        assert!(r[1].remove_replica(A).is_empty());
        assert!(r[1].is_empty());
    }

    /// An operation of the property tests.
    #[derive(Debug, Clone)]
    enum Op {
        /// Replica, owner, topic, key.
        Add(usize, u64, u8, u8),
        Remove(usize, u64, u8, u8),
        RemoveOwner(usize, u64),
        Update(usize, u64, u8, u8),
        /// Replica publishes its delta.
        Publish(usize),
        /// Deliver a published delta (by index, modulo) to a replica.
        Deliver(usize, usize),
        /// Full state of the first replica merged into the second.
        Transfer(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let r = 0..3usize;
        prop_oneof![
            3 => (r.clone(), 0..4u64, 0..2u8, 0..3u8).prop_map(|(r, o, t, k)| Op::Add(r, o, t, k)),
            1 => (r.clone(), 0..4u64, 0..2u8, 0..3u8).prop_map(|(r, o, t, k)| Op::Remove(r, o, t, k)),
            1 => (r.clone(), 0..4u64).prop_map(|(r, o)| Op::RemoveOwner(r, o)),
            1 => (r.clone(), 0..4u64, 0..2u8, 0..3u8).prop_map(|(r, o, t, k)| Op::Update(r, o, t, k)),
            2 => r.clone().prop_map(Op::Publish),
            3 => (0..64usize, r.clone()).prop_map(|(d, r)| Op::Deliver(d, r)),
            1 => (r.clone(), r).prop_map(|(a, b)| Op::Transfer(a, b)),
        ]
    }

    /// What a client of a replica sees: the diffs applied in order.
    fn apply(view: &mut BTreeSet<Dot>, diff: &Diff<u32>) {
        for (d, _) in &diff.joins {
            assert!(view.insert(*d), "joined twice: {d:?}");
        }
        for (d, _) in &diff.leaves {
            assert!(view.remove(d), "left without joining: {d:?}");
        }
    }

    fn visible_dots(s: &State<u32>) -> BTreeSet<Dot> {
        visible(s).into_iter().map(|e| e.3).collect()
    }

    /// Runs `ops` on three replicas, checking after every step that the
    /// diffs each replica reported add up to what it lists.
    fn run(ops: &[Op]) -> (Vec<State<u32>>, Vec<Delta<u32>>) {
        let mut r = cluster(&[A, B, C]);
        let mut views = vec![BTreeSet::new(); 3];
        let mut published = Vec::new();
        for (meta, op) in (1..).zip(ops) {
            let (i, diff) = match *op {
                Op::Add(i, o, t, k) => (
                    i,
                    r[i].add(&format!("t{t}"), o, &format!("k{k}"), |_| meta)
                        .unwrap_or_default(),
                ),
                Op::Remove(i, o, t, k) => (i, r[i].remove(o, &format!("t{t}"), &format!("k{k}"))),
                Op::RemoveOwner(i, o) => (i, r[i].remove_owner(o)),
                Op::Update(i, o, t, k) => (
                    i,
                    r[i].update(o, &format!("t{t}"), &format!("k{k}"), |_, _, _| meta)
                        .unwrap_or_default(),
                ),
                Op::Publish(i) => {
                    published.extend(r[i].take_delta());
                    continue;
                }
                Op::Deliver(d, i) => {
                    if published.is_empty() {
                        continue;
                    }
                    let delta = &published[d % published.len()];
                    (i, r[i].merge(&delta.changes))
                }
                Op::Transfer(from, to) => {
                    if from == to {
                        continue;
                    }
                    let to_id = r[to].replica();
                    let extract = r[from].extract(to_id, |_| true);
                    (to, r[to].merge(&extract))
                }
            };
            apply(&mut views[i], &diff);
            assert_eq!(views[i], visible_dots(&r[i]), "after {op:?}");
        }
        (r, published)
    }

    /// Every replica's own entries: what all replicas agree on once every
    /// event has reached every replica.
    fn truth(r: &[State<u32>]) -> BTreeSet<(String, String, u32, Dot)> {
        r.iter()
            .flat_map(|s| {
                visible(s)
                    .into_iter()
                    .filter(|e| e.3.replica == s.replica())
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn replicas_converge_whatever_the_delivery_order(ops in proptest::collection::vec(op(), 0..80)) {
            let (mut r, mut all) = run(&ops);
            // Publish what is left, then deliver every delta everywhere, in
            // reverse order and twice: duplicates and reordering are harmless.
            for s in r.iter_mut() {
                all.extend(s.take_delta());
            }
            for s in r.iter_mut() {
                for d in all.iter().rev().chain(all.iter()) {
                    s.merge(&d.changes);
                }
            }
            let truth = truth(&r);
            for s in &r {
                prop_assert_eq!(&visible(s), &truth);
            }
        }

        #[test]
        fn full_transfers_alone_converge(ops in proptest::collection::vec(op(), 0..80)) {
            let (mut r, _) = run(&ops);
            // Anti-entropy: each replica pulls every other's full state.
            for _ in 0..2 {
                for to in 0..3 {
                    for from in 0..3 {
                        if from != to {
                            let extract = r[from].extract(r[to].replica(), |_| true);
                            r[to].merge(&extract);
                        }
                    }
                }
            }
            let truth = truth(&r);
            for s in &r {
                prop_assert_eq!(&visible(s), &truth);
            }
        }

        #[test]
        fn deltas_commute(ops in proptest::collection::vec(op(), 0..60), seed in any::<u64>()) {
            let (r, published) = run(&ops);
            prop_assume!(published.len() >= 2);
            let observer = |order: &[usize]| {
                let mut s: State<u32> = State::with_deltas(ReplicaId(99));
                for id in [A, B, C] { s.replica_up(id); }
                let mut view = BTreeSet::new();
                for &i in order {
                    let diff = s.merge(&published[i].changes);
                    apply(&mut view, &diff);
                }
                assert_eq!(view, visible_dots(&s));
                (visible(&s), s.causal().clone())
            };
            let forward: Vec<usize> = (0..published.len()).collect();
            let mut shuffled = forward.clone();
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(observer(&forward), observer(&shuffled));
            drop(r);
        }
    }
}
