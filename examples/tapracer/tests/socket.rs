//! Who may connect and join `play`: viewers and bad names refused, names
//! trimmed, and the lobby's presence on `play` and `console`.

mod support;

use fawkes_client::{JoinError, Presence, SocketEvent};
use serde_json::{Value, json};
use support::*;

/// Waits for the socket's connect to fail, and checks it failed with 403.
async fn assert_refused(server: &TestServer, params: Value) {
    let socket = server.socket(params.clone()).build().expect("socket");
    let mut events = socket.events();
    socket.connect();
    let err = within("the refusal", async {
        loop {
            if let Ok(SocketEvent::Error(e)) = events.recv().await {
                return e;
            }
        }
    })
    .await;
    assert!(err.contains("403"), "{params}: {err}");
    assert!(!socket.is_connected());
    socket.disconnect().await;
}

#[tokio::test]
async fn bad_names_are_refused_with_403() {
    let server = TestServer::start(quick()).await;
    let too_long = "x".repeat(25);
    for params in [
        json!({"name": ""}),
        json!({"name": "    "}),
        json!({"name": too_long}),
        json!({"name": {"first": "ann"}}),
        json!({"name": "a\u{7}b"}),
    ] {
        assert_refused(&server, params).await;
    }
    // Over LongPoll too.
    for query in ["name=%20%20", "name[]=ann", "name[first]=ann"] {
        let resp = server
            .get(&format!("/socket/longpoll?vsn=2.0.0&{query}"))
            .await;
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["status"], 403, "{query}");
    }
    server.stop().await;
}

#[tokio::test]
async fn viewers_are_refused_on_play() {
    let server = TestServer::start(quick()).await;
    let viewer = server.connect(None);
    let play = viewer.channel("play", json!({}));
    let got = within("play join", play.join()).await;
    match got {
        Err(JoinError::Refused(payload)) => {
            assert_eq!(json_of(&payload), json!({"reason": "pick a name first"}));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let _ = within("leave", play.leave()).await;
    // The viewer can still watch.
    let console = viewer.channel("console", json!({}));
    let reply = within("console join", console.join()).await.expect("join");
    assert_eq!(json_of(&reply)["race"]["phase"], "lobby");
    viewer.disconnect().await;
    server.stop().await;
}

#[tokio::test]
async fn names_are_trimmed_and_ids_chosen_by_the_server() {
    let server = TestServer::start(quick()).await;
    let ann = Racer::join(&server, "  ann  ").await;
    assert_eq!(ann.id.len(), 16);
    assert!(ann.id.chars().all(|c| c.is_ascii_hexdigit()));
    let racers = &ann.join["race"]["racers"];
    assert_eq!(*racers, json!([{"id": ann.id, "name": "ann", "taps": 0}]));
    // 24 characters is fine, and an `id` param chooses nothing.
    let long = "é".repeat(24);
    let socket = server
        .socket(json!({"name": long, "id": "0000000000000000"}))
        .build()
        .unwrap();
    socket.connect();
    let play = socket.channel("play", json!({"id": "0000000000000000"}));
    let reply = within("join", play.join()).await.expect("join");
    let you = json_of(&reply)["you"].as_str().unwrap().to_owned();
    assert_ne!(you, "0000000000000000");
    assert_ne!(you, ann.id);
    server.stop().await;
}

#[tokio::test]
async fn presence_lists_the_lobby_on_play_and_console() {
    let server = TestServer::start(quick()).await;
    let mut viewer = Viewer::join(&server).await;
    let mut ann = Racer::join(&server, "ann").await;
    let bob = Racer::join(&server, "bob").await;
    let cat = Racer::join(&server, "cat").await;
    let want: std::collections::BTreeMap<String, String> = [
        (ann.id.clone(), "ann".to_owned()),
        (bob.id.clone(), "bob".to_owned()),
        (cat.id.clone(), "cat".to_owned()),
    ]
    .into();

    let mut on_play = Presence::new();
    pump(&mut ann.events, &mut on_play, "presence on play", |p| {
        names(p) == want
    })
    .await;
    for (_, v) in on_play.state() {
        assert!(v["metas"][0]["online_at"].as_u64().unwrap() > 1_700_000_000_000);
    }
    let mut on_console = Presence::new();
    pump(
        &mut viewer.events,
        &mut on_console,
        "presence on console",
        |p| names(p) == want,
    )
    .await;

    // Bob's socket closes: he leaves both lists, and the lobby.
    bob.socket.disconnect().await;
    let mut without_bob = want.clone();
    without_bob.remove(&bob.id);
    pump(&mut ann.events, &mut on_play, "bob gone from play", |p| {
        names(p) == without_bob
    })
    .await;
    pump(
        &mut viewer.events,
        &mut on_console,
        "bob gone from console",
        |p| names(p) == without_bob,
    )
    .await;
    next_matching(&mut viewer.races, "a lobby without bob", |_, v| {
        v["racers"] == json!([{"id": ann.id, "name": "ann", "taps": 0}, {"id": cat.id, "name": "cat", "taps": 0}])
    })
    .await;
    drop(cat);
    server.stop().await;
}
