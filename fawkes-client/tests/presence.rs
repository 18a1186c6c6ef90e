//! [`Presence`] fed by the conformance app's presence channel, over real
//! sockets: the joiner's own state, another user's join, a meta update
//! (leave + join in one diff), a leave, with onJoin/onLeave/onSync, and the
//! list kept across a rejoin.

mod support;

use std::sync::{Arc, Mutex};

use fawkes_client::{Channel, Events, Presence, Socket};
use serde_json::{Value, json};
use support::*;

/// Feeds `presence` from `events` until `done` holds.
async fn pump(
    events: &mut Events,
    presence: &mut Presence,
    what: &str,
    done: impl Fn(&Presence) -> bool,
) {
    within(what, async {
        while !done(presence) {
            let ev = events.recv().await.expect("event stream ended");
            presence.handle(&ev);
        }
    })
    .await;
}

fn devices(presence: &Presence, key: &str) -> Vec<Value> {
    presence.state()[key]["metas"]
        .as_array()
        .map(|metas| metas.iter().map(|m| m["device"].clone()).collect())
        .unwrap_or_default()
}

async fn join(server: &TestServer, user: &str, device: &str) -> (Socket, Channel, Events) {
    let socket = fast_socket(&server.endpoint())
        .params(json!({"user_id": user}))
        .build()
        .unwrap();
    socket.connect();
    let chan = socket.channel("presence:lobby", json!({"device": device}));
    let events = chan.events();
    within("presence join", chan.join()).await.unwrap();
    (socket, chan, events)
}

#[tokio::test]
async fn presence_follows_joins_updates_and_leaves() {
    let server = TestServer::start().await;
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut presence = Presence::new();
    let l = log.clone();
    presence.on_join(move |key, current, _| {
        l.lock()
            .unwrap()
            .push(format!("join {key} {}", current.is_some()));
    });
    let l = log.clone();
    presence.on_leave(move |key, current, _| {
        let left = current["metas"].as_array().map_or(0, Vec::len);
        l.lock().unwrap().push(format!("leave {key} {left}"));
    });
    let syncs = Arc::new(Mutex::new(0));
    let s = syncs.clone();
    presence.on_sync(move || *s.lock().unwrap() += 1);

    let (_alice, _alice_chan, mut events) = join(&server, "alice", "laptop").await;
    pump(&mut events, &mut presence, "alice's own state", |p| {
        p.state().contains_key("alice")
    })
    .await;
    assert_eq!(devices(&presence, "alice"), [json!("laptop")]);

    let (_bob, bob_chan, _bob_events) = join(&server, "bob", "phone").await;
    pump(&mut events, &mut presence, "bob's join", |p| {
        p.state().contains_key("bob")
    })
    .await;
    let mut keys = presence.list_by(|key, _| key.to_owned());
    keys.sort();
    assert_eq!(keys, ["alice", "bob"]);

    // An update arrives as a leave and a join of the same key in one diff.
    within(
        "update_meta",
        bob_chan.push("update_meta", json!({"device": "tablet"})),
    )
    .await
    .unwrap();
    pump(&mut events, &mut presence, "bob's update", |p| {
        devices(p, "bob") == [json!("tablet")]
    })
    .await;

    within("bob leaves", bob_chan.leave()).await.unwrap();
    pump(&mut events, &mut presence, "bob's leave", |p| {
        !p.state().contains_key("bob")
    })
    .await;
    assert_eq!(presence.list().len(), 1);

    let log = log.lock().unwrap().clone();
    // Alice's own diff may come too (after her state: a join of a key
    // already there), as phoenix.js would report it.
    assert_eq!(log[0], "join alice false", "{log:?}");
    let bob: Vec<&str> = log
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains("bob"))
        .collect();
    assert_eq!(
        bob,
        [
            "join bob false",
            "join bob true",
            "leave bob 1",
            "leave bob 0",
        ]
    );
    assert!(*syncs.lock().unwrap() >= 4);
}

#[tokio::test]
async fn presence_resyncs_after_a_rejoin() {
    let server = TestServer::start().await;
    let mut presence = Presence::new();
    let (alice, chan, mut events) = join(&server, "alice", "laptop").await;
    pump(&mut events, &mut presence, "the first state", |p| {
        p.state().contains_key("alice")
    })
    .await;
    let first_join = chan.join_ref();

    // Reconnect: the channel rejoins, and the new join's state replaces the old.
    alice.disconnect().await;
    alice.connect();
    wait_rejoined(&chan, first_join).await;
    let join_ref = chan.join_ref();
    // The old socket's leave may reach the server after the new join: then
    // it comes as a diff after the state.
    pump(
        &mut events,
        &mut presence,
        "the new state, the old meta gone",
        |p| !p.in_pending_sync_state(join_ref.as_deref()) && devices(p, "alice").len() == 1,
    )
    .await;
}
