//! Presence clients for the cluster tests: each keeps phoenix.js's view of
//! its topic (PROTOCOL §7.4) and every diff it received, with its arrival
//! time, so that a test can check the union over the nodes and that each
//! change reached each subscriber once, in time (checklist 88).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::cluster::Node;
use super::longpoll::encode_component;
use super::{Frame, RECV_TIMEOUT, WsClient, ok};

/// Checklist 88: a presence change reaches every subscriber within ~2 s;
/// we allow 3.
pub const DIFF_WITHIN: Duration = Duration::from_secs(3);

/// A V2 frame's event.
fn event(frame: &Value) -> &str {
    frame[3].as_str().unwrap_or_default()
}

/// One presence entry: `phx_ref` → (key, meta).
pub type Entries = BTreeMap<String, (String, Value)>;

/// The entries of a presence map, checked against PROTOCOL §7.1.
pub fn entries(map: &Value) -> Entries {
    let object = map
        .as_object()
        .unwrap_or_else(|| panic!("a presence map must be an object: {map}"));
    let mut out = Entries::new();
    for (key, presence) in object {
        let metas = presence["metas"]
            .as_array()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| panic!("presence {key:?} without metas: {map}"));
        for meta in metas {
            let phx_ref = meta["phx_ref"]
                .as_str()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| panic!("meta of {key:?} without phx_ref: {map}"));
            let old = out.insert(phx_ref.to_string(), (key.clone(), meta.clone()));
            assert!(old.is_none(), "phx_ref {phx_ref} twice in {map}");
        }
    }
    out
}

/// `(key, device)` of every entry, sorted: what a test knows in advance.
pub fn summary(entries: &Entries) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = entries
        .values()
        .map(|(key, meta)| (key.clone(), meta["device"].clone()))
        .collect();
    out.sort_by_key(|(k, d)| (k.clone(), d.to_string()));
    out
}

/// A wanted summary from `(key, device)` pairs.
pub fn want_summary(pairs: &[(&str, &str)]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = pairs
        .iter()
        .map(|(k, d)| ((*k).to_string(), json!(d)))
        .collect();
    out.sort_by_key(|(k, d)| (k.clone(), d.to_string()));
    out
}

/// `GET /api/presence/TOPIC` on `node`, as entries.
pub async fn listed(node: &Node, topic: &str) -> Entries {
    let path = format!("/api/presence/{}", encode_component(topic));
    let (status, body) = node.http().get(&path).await;
    assert_eq!(status, 200, "GET {path} on {}: {body}", node.name);
    entries(&body)
}

/// A `presence_diff` as received.
#[derive(Debug, Clone)]
pub struct Diff {
    pub at: Instant,
    pub joins: Entries,
    pub leaves: Entries,
}

/// A `presence:*` client on one node, keeping phoenix.js's view of the
/// topic (PROTOCOL §7.4: with unique `phx_ref`s, a view is a set of
/// entries; diffs before the first state wait for it) and every diff.
pub struct Presence {
    pub name: String,
    pub ws: WsClient,
    pub topic: String,
    pub join_ref: String,
    /// The `presence_state` pushed after the join.
    pub state: Option<Entries>,
    pub view: Entries,
    pub pending: Vec<Diff>,
    pub diffs: Vec<Diff>,
    /// Frames other than presence events (replies…).
    pub other: Vec<Value>,
}

impl Presence {
    /// Connects with `user_id=key` to `node`, joins `topic` with `device`,
    /// and reads up to its `presence_state`.
    pub async fn join(
        nodes: &[Node],
        node: usize,
        topic: &str,
        key: &str,
        device: &str,
    ) -> Presence {
        let mut ws = nodes[node].ws(&format!("vsn=2.0.0&user_id={key}")).await;
        let join_ref = ws.join(topic, json!({"device": device})).await;
        let mut client = Presence {
            name: format!("{key}/{device} (node {node})"),
            ws,
            topic: topic.to_string(),
            join_ref,
            state: None,
            view: Entries::new(),
            pending: Vec::new(),
            diffs: Vec::new(),
            other: Vec::new(),
        };
        let deadline = Instant::now() + RECV_TIMEOUT;
        let got = client.pump_until(deadline, |c| c.state.is_some()).await;
        assert!(got, "{}: no presence_state after the join", client.name);
        client
    }

    pub fn handle(&mut self, frame: Value) {
        let topic_ok = frame[2] == json!(self.topic);
        match event(&frame) {
            "presence_state" if topic_ok => {
                assert_eq!(
                    (&frame[0], &frame[1]),
                    (&json!(self.join_ref), &Value::Null),
                    "{}: presence_state is a push: {frame}",
                    self.name
                );
                let state = entries(&frame[4]);
                self.view = state.clone();
                self.state = Some(state);
                for diff in std::mem::take(&mut self.pending) {
                    apply(&mut self.view, &diff);
                }
            }
            "presence_diff" if topic_ok => {
                assert_eq!(
                    (&frame[0], &frame[1]),
                    (&Value::Null, &Value::Null),
                    "{}: presence_diff is a broadcast: {frame}",
                    self.name
                );
                let payload = frame[4]
                    .as_object()
                    .unwrap_or_else(|| panic!("{}: diff payload: {frame}", self.name));
                let mut keys: Vec<&String> = payload.keys().collect();
                keys.sort();
                assert_eq!(keys, ["joins", "leaves"], "{}: {frame}", self.name);
                let diff = Diff {
                    at: Instant::now(),
                    joins: entries(&frame[4]["joins"]),
                    leaves: entries(&frame[4]["leaves"]),
                };
                if self.state.is_some() {
                    apply(&mut self.view, &diff);
                } else {
                    self.pending.push(diff.clone());
                }
                self.diffs.push(diff);
            }
            _ => self.other.push(frame),
        }
    }

    /// Reads frames until `done` holds (true) or `deadline` passes (false).
    pub async fn pump_until(
        &mut self,
        deadline: Instant,
        done: impl Fn(&Presence) -> bool,
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.ws.recv_within(wait).await {
                None => return done(self),
                Some(Frame::Json(frame)) => self.handle(frame),
                Some(other) => panic!("{}: the socket ended: {other:?}", self.name),
            }
        }
    }

    /// Sends `update_meta` with a new device and waits for the ok reply.
    pub async fn update(&mut self, device: &str) {
        self.push_ok("update_meta", json!({"device": device})).await;
    }

    /// Leaves the topic and waits for the ok reply.
    pub async fn leave(&mut self) {
        self.push_ok("phx_leave", json!({})).await;
    }

    /// Pushes `event` on the topic and waits for the ok reply `{}`
    /// (recording whatever presence events come meanwhile).
    async fn push_ok(&mut self, event: &str, payload: Value) {
        let join_ref = self.join_ref.clone();
        let r = self.ws.push(&join_ref, &self.topic, event, payload).await;
        let want = json!([join_ref, r, self.topic, "phx_reply", ok(json!({}))]);
        let deadline = Instant::now() + RECV_TIMEOUT;
        let got = self.pump_until(deadline, |c| c.other.contains(&want)).await;
        assert!(got, "{}: no reply to {event}: {:?}", self.name, self.other);
        self.other.retain(|f| *f != want);
    }

    /// The diffs whose joins hold `phx_ref`.
    pub fn joins_of(&self, phx_ref: &str) -> Vec<&Diff> {
        self.diffs
            .iter()
            .filter(|d| d.joins.contains_key(phx_ref))
            .collect()
    }

    /// The diffs whose leaves hold `phx_ref`.
    pub fn leaves_of(&self, phx_ref: &str) -> Vec<&Diff> {
        self.diffs
            .iter()
            .filter(|d| d.leaves.contains_key(phx_ref))
            .collect()
    }
}

/// phoenix.js `syncDiff` on a set of entries: joins, then leaves.
pub fn apply(view: &mut Entries, diff: &Diff) {
    for (phx_ref, entry) in &diff.joins {
        view.insert(phx_ref.clone(), entry.clone());
    }
    for phx_ref in diff.leaves.keys() {
        view.remove(phx_ref);
    }
}

/// Pumps every client until `done` holds for it, all concurrently (so
/// arrival times are true); fails naming the clients that never got there.
pub async fn pump_all(
    clients: &mut [&mut Presence],
    within: Duration,
    done: impl Fn(&Presence) -> bool,
) {
    let deadline = Instant::now() + within;
    let done = &done;
    let results = join_all(clients.iter_mut().map(|c| c.pump_until(deadline, done))).await;
    let failed: Vec<String> = clients
        .iter()
        .zip(results)
        .filter(|(_, ok)| !ok)
        .map(|(c, _)| format!("{}: view {:?}", c.name, summary(&c.view)))
        .collect();
    assert!(
        failed.is_empty(),
        "not there within {within:?}: {failed:#?}"
    );
}

/// Reads every client for `wait`, recording whatever arrives.
pub async fn listen(clients: &mut [&mut Presence], wait: Duration) {
    let deadline = Instant::now() + wait;
    join_all(
        clients
            .iter_mut()
            .map(|c| c.pump_until(deadline, |_| false)),
    )
    .await;
}

/// Waits until every client's view and every node's `GET` list hold exactly
/// `want` (`(key, device)`s), then asserts they are all the same entries
/// (same `phx_ref`s and metas everywhere) and returns them.
pub async fn converge(
    nodes: &[&Node],
    clients: &mut [&mut Presence],
    topic: &str,
    want: &[(String, Value)],
    within: Duration,
) -> Entries {
    let deadline = Instant::now() + within;
    let views = pump_all(clients, within, |c| summary(&c.view) == want);
    let lists = async {
        loop {
            let lists = join_all(nodes.iter().map(|n| listed(n, topic))).await;
            if lists.iter().all(|l| summary(l) == want) {
                return lists;
            }
            if Instant::now() >= deadline {
                let got: Vec<(String, Vec<(String, Value)>)> = nodes
                    .iter()
                    .zip(&lists)
                    .map(|(n, l)| (n.name.clone(), summary(l)))
                    .collect();
                panic!("GET /api/presence/{topic} after {within:?}: {got:#?}\nwant {want:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ((), lists) = tokio::join!(views, lists);
    let first = lists[0].clone();
    for (node, list) in nodes.iter().zip(&lists) {
        assert_eq!(
            *list, first,
            "GET on {} differs from {}",
            node.name, nodes[0].name
        );
    }
    for client in clients.iter() {
        assert_eq!(client.view, first, "{}: view differs from GET", client.name);
    }
    first
}

/// [`converge`] of every one of `clients` on the `(key, device)`s `pairs`.
pub async fn converge_on(
    nodes: &[&Node],
    clients: &mut [Presence],
    topic: &str,
    pairs: &[(&str, &str)],
    within: Duration,
) -> Entries {
    let mut refs: Vec<&mut Presence> = clients.iter_mut().collect();
    converge(nodes, &mut refs, topic, &want_summary(pairs), within).await
}

/// One presence change, as every observer must see it: one diff, within
/// [`DIFF_WITHIN`] of `t0`, holding `joins` and `leaves` (an update carries
/// both in one diff, PROTOCOL §7.3).
pub struct Change {
    pub what: String,
    pub t0: Instant,
    pub joins: Vec<String>,
    pub leaves: Vec<String>,
    pub observers: Vec<String>,
}

/// [`Presence::joins_of`] or [`Presence::leaves_of`].
type DiffsOf = for<'p> fn(&'p Presence, &str) -> Vec<&'p Diff>;

/// Asserts `change` on each of its observers among `clients`: exactly one
/// diff with its joins and leaves (the same one), in time.
pub fn check_change(clients: &[&Presence], change: &Change) {
    for client in clients
        .iter()
        .filter(|c| change.observers.contains(&c.name))
    {
        let mut seen: Vec<&Diff> = Vec::new();
        let sides: [(&str, &Vec<String>, DiffsOf); 2] = [
            ("join", &change.joins, Presence::joins_of),
            ("leave", &change.leaves, Presence::leaves_of),
        ];
        for (side, phx_refs, diffs_of) in sides {
            for phx_ref in phx_refs {
                let diffs = diffs_of(client, phx_ref);
                assert_eq!(
                    diffs.len(),
                    1,
                    "{}: {} ({side} of {phx_ref}) should arrive in exactly one diff: {diffs:#?}",
                    client.name,
                    change.what
                );
                seen.extend(diffs);
            }
        }
        for diff in seen {
            let took = diff.at.duration_since(change.t0);
            assert!(
                took <= DIFF_WITHIN,
                "{}: {} took {took:?} (checklist 88: ~2 s, at most {DIFF_WITHIN:?})",
                client.name,
                change.what
            );
        }
    }
}
