//! Presence: the list of who is on a topic, kept from the server's
//! `presence_state` and `presence_diff` exactly as phoenix.js's `Presence`
//! keeps it (including diffs that arrive before the state, which wait for
//! it).
//!
//! A presence is the JSON object the server sends for a key, `{"metas":
//! [...]}`, each meta carrying a `phx_ref`.

use std::fmt;

use fawkes_protocol::Payload;
use serde_json::{Map, Value};

use crate::channel::ChannelEvent;

/// Presences by key, as the server sends them.
pub type PresenceState = Map<String, Value>;

/// An onJoin callback: `(key, presence before or None, joining presence)`.
pub type OnJoin<'a> = dyn FnMut(&str, Option<&Value>, &Value) + Send + 'a;
/// An onLeave callback: `(key, presence after, leaving presence)`.
pub type OnLeave<'a> = dyn FnMut(&str, &Value, &Value) + Send + 'a;

type JoinFn = Box<OnJoin<'static>>;
type LeaveFn = Box<OnLeave<'static>>;
type SyncFn = Box<dyn FnMut() + Send>;

/// A channel's presence list, fed with the channel's events by
/// [`handle`](Self::handle).
///
/// ```
/// use fawkes_client::{ChannelEvent, Presence};
/// use serde_json::json;
///
/// let mut presence = Presence::new();
/// let ev = |event: &str, payload| ChannelEvent {
///     topic: "presence:lobby".into(),
///     event: event.into(),
///     payload: fawkes_client::Payload::Json(payload),
///     ref_: None,
///     join_ref: Some("1".into()),
/// };
/// presence.handle(&ev("presence_state", json!({"ann": {"metas": [{"phx_ref": "a"}]}})));
/// presence.handle(&ev("presence_diff", json!({"joins": {"bob": {"metas": [{"phx_ref": "b"}]}}, "leaves": {}})));
/// let keys = presence.list_by(|key, _| key.to_owned());
/// assert_eq!(keys, ["ann", "bob"]);
/// ```
pub struct Presence {
    state: PresenceState,
    pending_diffs: Vec<Value>,
    join_ref: Option<String>,
    state_event: String,
    diff_event: String,
    on_join: Option<JoinFn>,
    on_leave: Option<LeaveFn>,
    on_sync: Option<SyncFn>,
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence")
            .field("state", &self.state)
            .field("pending_diffs", &self.pending_diffs.len())
            .finish_non_exhaustive()
    }
}

impl Default for Presence {
    fn default() -> Self {
        Presence::new()
    }
}

impl Presence {
    /// An empty list that reads `presence_state` and `presence_diff`.
    pub fn new() -> Self {
        Presence::with_events("presence_state", "presence_diff")
    }

    /// An empty list that reads custom event names (phoenix.js's
    /// `opts.events`).
    pub fn with_events(state: impl Into<String>, diff: impl Into<String>) -> Self {
        Presence {
            state: Map::new(),
            pending_diffs: Vec::new(),
            join_ref: None,
            state_event: state.into(),
            diff_event: diff.into(),
            on_join: None,
            on_leave: None,
            on_sync: None,
        }
    }

    /// Called for each key that joins or gains metas: `(key, presence before
    /// or None, the joining presence)`.
    pub fn on_join(&mut self, f: impl FnMut(&str, Option<&Value>, &Value) + Send + 'static) {
        self.on_join = Some(Box::new(f));
    }

    /// Called for each key that loses metas: `(key, presence after, the
    /// leaving presence)`; a key left without metas is then removed.
    pub fn on_leave(&mut self, f: impl FnMut(&str, &Value, &Value) + Send + 'static) {
        self.on_leave = Some(Box::new(f));
    }

    /// Called after a state or a diff was applied.
    pub fn on_sync(&mut self, f: impl FnMut() + Send + 'static) {
        self.on_sync = Some(Box::new(f));
    }

    /// The presences by key.
    pub fn state(&self) -> &PresenceState {
        &self.state
    }

    /// Diffs received before the state of the current join, waiting for it.
    pub fn pending_diffs(&self) -> &[Value] {
        &self.pending_diffs
    }

    /// Whether the state of the join `channel_join_ref` has not arrived yet
    /// (phoenix.js's `inPendingSyncState`).
    pub fn in_pending_sync_state(&self, channel_join_ref: Option<&str>) -> bool {
        self.join_ref.is_none() || self.join_ref.as_deref() != channel_join_ref
    }

    /// Applies one channel event; returns whether it was a presence event.
    /// Non-object payloads are ignored.
    pub fn handle(&mut self, ev: &ChannelEvent) -> bool {
        let Payload::Json(payload) = &ev.payload else {
            return false;
        };
        if ev.event == self.state_event {
            self.join_ref = ev.join_ref.clone();
            self.state = sync_state(
                &self.state,
                payload,
                self.on_join.as_deref_mut(),
                self.on_leave.as_deref_mut(),
            );
            for diff in std::mem::take(&mut self.pending_diffs) {
                self.apply_diff(&diff);
            }
            self.synced();
            true
        } else if ev.event == self.diff_event {
            if self.in_pending_sync_state(ev.join_ref.as_deref()) {
                self.pending_diffs.push(payload.clone());
            } else {
                self.apply_diff(payload);
                self.synced();
            }
            true
        } else {
            false
        }
    }

    /// Applies one diff, calling onJoin and onLeave.
    fn apply_diff(&mut self, diff: &Value) {
        let state = std::mem::take(&mut self.state);
        self.state = sync_diff(
            state,
            diff,
            self.on_join.as_deref_mut(),
            self.on_leave.as_deref_mut(),
        );
    }

    /// Calls onSync, after a state or a diff was applied.
    fn synced(&mut self) {
        if let Some(f) = self.on_sync.as_mut() {
            f();
        }
    }

    /// Every presence, in key order (phoenix.js's `list()`).
    pub fn list(&self) -> Vec<Value> {
        self.list_by(|_, p| p.clone())
    }

    /// `chooser(key, presence)` for every presence, in key order
    /// (phoenix.js's `list(chooser)`).
    pub fn list_by<T>(&self, chooser: impl FnMut(&str, &Value) -> T) -> Vec<T> {
        list(&self.state, chooser)
    }
}

/// `chooser(key, presence)` for every presence of `state`.
pub fn list<T>(state: &PresenceState, mut chooser: impl FnMut(&str, &Value) -> T) -> Vec<T> {
    state.iter().map(|(k, p)| chooser(k, p)).collect()
}

/// The metas of a presence; a presence without a metas array has none.
fn metas(presence: &Value) -> &[Value] {
    presence
        .get("metas")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn set_metas(presence: &mut Value, metas: Vec<Value>) {
    if let Value::Object(obj) = presence {
        obj.insert("metas".to_owned(), Value::Array(metas));
    } else {
        let mut obj = Map::new();
        obj.insert("metas".to_owned(), Value::Array(metas));
        *presence = Value::Object(obj);
    }
}

fn refs(presence: &Value) -> Vec<&Value> {
    metas(presence)
        .iter()
        .map(|m| m.get("phx_ref").unwrap_or(&Value::Null))
        .collect()
}

fn phx_ref(meta: &Value) -> &Value {
    meta.get("phx_ref").unwrap_or(&Value::Null)
}

/// phoenix.js's `Presence.syncState`: the state after the full `new_state`,
/// with callbacks for what joined and left since `current`.
pub fn sync_state<'j, 'l>(
    current: &PresenceState,
    new_state: &Value,
    on_join: Option<&mut OnJoin<'j>>,
    on_leave: Option<&mut OnLeave<'l>>,
) -> PresenceState {
    let state = current.clone();
    let empty = Map::new();
    let new_state = new_state.as_object().unwrap_or(&empty);
    let mut joins = Map::new();
    let mut leaves = Map::new();
    for (key, presence) in &state {
        if !new_state.contains_key(key) {
            leaves.insert(key.clone(), presence.clone());
        }
    }
    for (key, new_presence) in new_state {
        match state.get(key) {
            Some(current) => {
                let new_refs = refs(new_presence);
                let cur_refs = refs(current);
                let joined: Vec<Value> = metas(new_presence)
                    .iter()
                    .filter(|m| !cur_refs.contains(&phx_ref(m)))
                    .cloned()
                    .collect();
                let left: Vec<Value> = metas(current)
                    .iter()
                    .filter(|m| !new_refs.contains(&phx_ref(m)))
                    .cloned()
                    .collect();
                if !joined.is_empty() {
                    let mut p = new_presence.clone();
                    set_metas(&mut p, joined);
                    joins.insert(key.clone(), p);
                }
                if !left.is_empty() {
                    let mut p = current.clone();
                    set_metas(&mut p, left);
                    leaves.insert(key.clone(), p);
                }
            }
            None => {
                joins.insert(key.clone(), new_presence.clone());
            }
        }
    }
    let mut diff = Map::new();
    diff.insert("joins".to_owned(), Value::Object(joins));
    diff.insert("leaves".to_owned(), Value::Object(leaves));
    sync_diff(state, &Value::Object(diff), on_join, on_leave)
}

/// phoenix.js's `Presence.syncDiff`: `state` after a diff `{"joins",
/// "leaves"}`. A joining key keeps its current metas that the join does not
/// replace, ahead of the new ones; a key left without metas is removed.
pub fn sync_diff<'j, 'l>(
    mut state: PresenceState,
    diff: &Value,
    mut on_join: Option<&mut OnJoin<'j>>,
    mut on_leave: Option<&mut OnLeave<'l>>,
) -> PresenceState {
    let empty = Map::new();
    let joins = diff
        .get("joins")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let leaves = diff
        .get("leaves")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (key, new_presence) in joins {
        let current = state.get(key).cloned();
        let mut entry = new_presence.clone();
        if let Some(cur) = &current {
            let joined_refs = refs(&entry);
            let mut merged: Vec<Value> = metas(cur)
                .iter()
                .filter(|m| !joined_refs.contains(&phx_ref(m)))
                .cloned()
                .collect();
            merged.extend(metas(&entry).iter().cloned());
            set_metas(&mut entry, merged);
        }
        state.insert(key.clone(), entry);
        if let Some(f) = on_join.as_deref_mut() {
            f(key, current.as_ref(), new_presence);
        }
    }
    for (key, left) in leaves {
        let Some(current) = state.get_mut(key) else {
            continue;
        };
        let remove = refs(left);
        let kept: Vec<Value> = metas(current)
            .iter()
            .filter(|m| !remove.contains(&phx_ref(m)))
            .cloned()
            .collect();
        set_metas(current, kept);
        if let Some(f) = on_leave.as_deref_mut() {
            f(key, current, left);
        }
        if metas(current).is_empty() {
            state.remove(key);
        }
    }
    state
}

/// Ported from phoenix.js's `assets/test/presence_test.js`.
#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;

    fn fixture_state() -> Value {
        json!({
            "u1": {"metas": [{"id": 1, "phx_ref": "1"}]},
            "u2": {"metas": [{"id": 2, "phx_ref": "2"}]},
            "u3": {"metas": [{"id": 3, "phx_ref": "3"}]},
        })
    }

    fn obj(v: Value) -> PresenceState {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    type Log = Arc<Mutex<Map<String, Value>>>;

    /// Callbacks recording `{current, newPres}` / `{current, leftPres}`.
    fn recorders() -> (Log, Log, JoinFn, LeaveFn) {
        let joined: Log = Arc::default();
        let left: Log = Arc::default();
        let (j, l) = (joined.clone(), left.clone());
        let on_join: JoinFn = Box::new(move |key, current, new_pres| {
            j.lock().unwrap().insert(
                key.to_owned(),
                json!({"current": current.cloned(), "newPres": new_pres}),
            );
        });
        let on_leave: LeaveFn = Box::new(move |key, current, left_pres| {
            l.lock().unwrap().insert(
                key.to_owned(),
                json!({"current": current, "leftPres": left_pres}),
            );
        });
        (joined, left, on_join, on_leave)
    }

    #[test]
    fn sync_state_syncs_empty_state() {
        let new_state = json!({"u1": {"metas": [{"id": 1, "phx_ref": "1"}]}});
        let state = Map::new();
        let got = sync_state(&state, &new_state, None, None);
        assert!(state.is_empty());
        assert_eq!(Value::Object(got), new_state);
    }

    #[test]
    fn sync_state_on_joins_new_presences_and_on_leaves_left_presences() {
        let new_state = fixture_state();
        let state = obj(json!({"u4": {"metas": [{"id": 4, "phx_ref": "4"}]}}));
        let (joined, left, mut on_join, mut on_leave) = recorders();
        let before = state.clone();
        let got = sync_state(
            &state,
            &new_state,
            Some(&mut *on_join),
            Some(&mut *on_leave),
        );
        assert_eq!(state, before, "the current state is not mutated");
        assert_eq!(Value::Object(got), new_state);
        assert_eq!(
            Value::Object(joined.lock().unwrap().clone()),
            json!({
                "u1": {"current": null, "newPres": {"metas": [{"id": 1, "phx_ref": "1"}]}},
                "u2": {"current": null, "newPres": {"metas": [{"id": 2, "phx_ref": "2"}]}},
                "u3": {"current": null, "newPres": {"metas": [{"id": 3, "phx_ref": "3"}]}},
            })
        );
        assert_eq!(
            Value::Object(left.lock().unwrap().clone()),
            json!({"u4": {"current": {"metas": []}, "leftPres": {"metas": [{"id": 4, "phx_ref": "4"}]}}})
        );
    }

    #[test]
    fn sync_state_on_joins_only_newly_added_metas() {
        let new_state =
            json!({"u3": {"metas": [{"id": 3, "phx_ref": "3"}, {"id": 3, "phx_ref": "3.new"}]}});
        let state = obj(json!({"u3": {"metas": [{"id": 3, "phx_ref": "3"}]}}));
        let (joined, left, mut on_join, mut on_leave) = recorders();
        let got = sync_state(
            &state,
            &new_state,
            Some(&mut *on_join),
            Some(&mut *on_leave),
        );
        assert_eq!(Value::Object(got), new_state);
        assert_eq!(
            Value::Object(joined.lock().unwrap().clone()),
            json!({"u3": {
                "current": {"metas": [{"id": 3, "phx_ref": "3"}]},
                "newPres": {"metas": [{"id": 3, "phx_ref": "3.new"}]},
            }})
        );
        assert!(left.lock().unwrap().is_empty());
    }

    #[test]
    fn sync_diff_syncs_empty_state() {
        let joins = json!({"u1": {"metas": [{"id": 1, "phx_ref": "1"}]}});
        let got = sync_diff(
            Map::new(),
            &json!({"joins": joins, "leaves": {}}),
            None,
            None,
        );
        assert_eq!(Value::Object(got), joins);
    }

    #[test]
    fn sync_diff_removes_presence_when_meta_is_empty_and_adds_additional_meta() {
        let state = obj(fixture_state());
        let diff = json!({
            "joins": {"u1": {"metas": [{"id": 1, "phx_ref": "1.2"}]}},
            "leaves": {"u2": {"metas": [{"id": 2, "phx_ref": "2"}]}},
        });
        let got = sync_diff(state, &diff, None, None);
        assert_eq!(
            Value::Object(got),
            json!({
                "u1": {"metas": [{"id": 1, "phx_ref": "1"}, {"id": 1, "phx_ref": "1.2"}]},
                "u3": {"metas": [{"id": 3, "phx_ref": "3"}]},
            })
        );
    }

    #[test]
    fn sync_diff_removes_meta_while_leaving_key_if_other_metas_exist() {
        let state =
            obj(json!({"u1": {"metas": [{"id": 1, "phx_ref": "1"}, {"id": 1, "phx_ref": "1.2"}]}}));
        let diff = json!({"joins": {}, "leaves": {"u1": {"metas": [{"id": 1, "phx_ref": "1"}]}}});
        let got = sync_diff(state, &diff, None, None);
        assert_eq!(
            Value::Object(got),
            json!({"u1": {"metas": [{"id": 1, "phx_ref": "1.2"}]}})
        );
    }

    #[test]
    fn list_lists_full_presence_by_default() {
        let state = obj(fixture_state());
        assert_eq!(
            list(&state, |_, p| p.clone()),
            [
                json!({"metas": [{"id": 1, "phx_ref": "1"}]}),
                json!({"metas": [{"id": 2, "phx_ref": "2"}]}),
                json!({"metas": [{"id": 3, "phx_ref": "3"}]}),
            ]
        );
    }

    #[test]
    fn list_lists_with_custom_function() {
        let state = obj(json!({"u1": {"metas": [
            {"first": true, "phx_ref": "1"},
            {"second": true, "phx_ref": "2"},
        ]}}));
        let first = list(&state, |_, p| metas(p)[0].clone());
        assert_eq!(first, [json!({"first": true, "phx_ref": "1"})]);
    }

    fn ev(event: &str, payload: Value, join_ref: &str) -> ChannelEvent {
        ChannelEvent {
            topic: "topic".into(),
            event: event.into(),
            payload: Payload::Json(payload),
            ref_: None,
            join_ref: Some(join_ref.into()),
        }
    }

    fn first_metas(p: &Presence) -> Vec<Value> {
        p.list_by(|_, pres| metas(pres)[0].clone())
    }

    #[test]
    fn instance_syncs_state_and_diffs() {
        let mut presence = Presence::new();
        let user1 = json!({"metas": [{"id": 1, "phx_ref": "1"}]});
        let user2 = json!({"metas": [{"id": 2, "phx_ref": "2"}]});
        presence.handle(&ev(
            "presence_state",
            json!({"u1": user1, "u2": user2}),
            "1",
        ));
        assert_eq!(
            first_metas(&presence),
            [
                json!({"id": 1, "phx_ref": "1"}),
                json!({"id": 2, "phx_ref": "2"})
            ]
        );
        presence.handle(&ev(
            "presence_diff",
            json!({"joins": {}, "leaves": {"u1": user1}}),
            "1",
        ));
        assert_eq!(first_metas(&presence), [json!({"id": 2, "phx_ref": "2"})]);
    }

    #[test]
    fn instance_applies_pending_diff_if_state_is_not_yet_synced() {
        let mut presence = Presence::new();
        let (joined, left, on_join, on_leave) = recorders();
        presence.on_join = Some(on_join);
        presence.on_leave = Some(on_leave);
        let user1 = json!({"metas": [{"id": 1, "phx_ref": "1"}]});
        let user2 = json!({"metas": [{"id": 2, "phx_ref": "2"}]});

        presence.handle(&ev(
            "presence_diff",
            json!({"joins": {}, "leaves": {"u1": user1}}),
            "1",
        ));
        assert!(presence.list().is_empty());
        assert_eq!(
            presence.pending_diffs(),
            [json!({"joins": {}, "leaves": {"u1": user1}})]
        );

        presence.handle(&ev(
            "presence_state",
            json!({"u1": user1, "u2": user2}),
            "1",
        ));
        assert_eq!(
            Value::Object(left.lock().unwrap().clone()),
            json!({"u1": {"current": {"metas": []}, "leftPres": user1}})
        );
        assert_eq!(first_metas(&presence), [json!({"id": 2, "phx_ref": "2"})]);
        assert!(presence.pending_diffs().is_empty());
        assert_eq!(
            Value::Object(joined.lock().unwrap().clone()),
            json!({"u1": {"current": null, "newPres": user1}, "u2": {"current": null, "newPres": user2}})
        );
    }

    #[test]
    fn instance_waits_for_the_state_of_a_new_join() {
        let mut presence = Presence::new();
        presence.handle(&ev("presence_state", json!({}), "1"));
        assert!(!presence.in_pending_sync_state(Some("1")));
        // After a rejoin (join ref "5"), diffs wait for the new state.
        let diff = json!({"joins": {"u1": {"metas": [{"id": 1, "phx_ref": "1"}]}}, "leaves": {}});
        presence.handle(&ev("presence_diff", diff, "5"));
        assert!(presence.list().is_empty());
        presence.handle(&ev("presence_state", json!({}), "5"));
        assert_eq!(presence.list().len(), 1);
    }

    #[test]
    fn instance_allows_custom_channel_events() {
        let mut presence = Presence::with_events("the_state", "the_diff");
        let user1 = json!({"metas": [{"id": 1, "phx_ref": "1"}]});
        presence.handle(&ev("the_state", json!({"user1": user1}), "1"));
        assert_eq!(first_metas(&presence), [json!({"id": 1, "phx_ref": "1"})]);
        presence.handle(&ev(
            "the_diff",
            json!({"joins": {}, "leaves": {"user1": user1}}),
            "1",
        ));
        assert!(presence.list().is_empty());
        assert!(!presence.handle(&ev("presence_state", json!({}), "1")));
    }

    #[test]
    fn instance_updates_existing_meta_for_a_presence_update() {
        let mut presence = Presence::new();
        let (joined, left, on_join, on_leave) = recorders();
        presence.on_join = Some(on_join);
        presence.on_leave = Some(on_leave);
        let user1 = json!({"metas": [{"id": 1, "phx_ref": "1"}]});
        let user2 = json!({"metas": [{"id": 2, "name": "chris", "phx_ref": "2"}]});
        presence.handle(&ev(
            "presence_state",
            json!({"u1": user1, "u2": user2}),
            "1",
        ));
        joined.lock().unwrap().clear();
        let updated =
            json!({"metas": [{"id": 2, "name": "chris.2", "phx_ref": "2.2", "phx_ref_prev": "2"}]});
        presence.handle(&ev(
            "presence_diff",
            json!({"joins": {"u2": updated}, "leaves": {"u2": user2}}),
            "1",
        ));
        assert_eq!(
            first_metas(&presence),
            [
                json!({"id": 1, "phx_ref": "1"}),
                json!({"id": 2, "name": "chris.2", "phx_ref": "2.2", "phx_ref_prev": "2"}),
            ]
        );
        assert_eq!(
            Value::Object(joined.lock().unwrap().clone()),
            json!({"u2": {"current": user2, "newPres": updated}})
        );
        assert_eq!(
            Value::Object(left.lock().unwrap().clone()),
            json!({"u2": {"current": updated, "leftPres": user2}})
        );
    }

    #[test]
    fn bad_payloads_do_not_panic() {
        let mut presence = Presence::new();
        presence.handle(&ev(
            "presence_state",
            json!({"u1": 7, "u2": {"metas": "x"}}),
            "1",
        ));
        presence.handle(&ev(
            "presence_diff",
            json!({"joins": 1, "leaves": {"u1": {"metas": [1]}}}),
            "1",
        ));
        presence.handle(&ev("presence_diff", json!([]), "1"));
    }
}
