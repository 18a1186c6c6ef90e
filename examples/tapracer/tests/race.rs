//! Races over real sockets: start, countdown, racing, taps in ticks, the
//! cap, the winner and the leaderboard, the next race, leaving, max time.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use tapracer::game::Rules;

/// The entrant's taps in a `tick`.
fn pos(tick: &Value, id: &str) -> u64 {
    tick["pos"][id].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_race_from_start_to_winner_and_the_next() {
    let server = TestServer::start(quick()).await;
    let mut viewer = Viewer::join(&server).await;
    let mut ann = Racer::join(&server, "ann").await;
    let bob = Racer::join(&server, "bob").await;
    let cat = Racer::join(&server, "cat").await;
    assert_eq!(viewer.join["race"]["race"], 0);

    let ok = within("start", ann.play.push("start", json!({}))).await;
    assert_eq!(ok.map(|p| json_of(&p)), Ok(json!({})));
    let countdown = race_in(&mut viewer.races, "countdown").await;
    assert_eq!(countdown["race"], 1);
    assert_eq!(countdown["track"], 5);
    let ms = countdown["countdown_ms"].as_u64().unwrap();
    assert!(ms > 0 && ms <= 150, "{ms}");
    let ids: Vec<&str> = countdown["racers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [&ann.id, &bob.id, &cat.id]);
    let busy = within("start again", viewer.console.push("start", json!({}))).await;
    let busy = reason(busy);
    // The countdown may be over already on a slow machine: still busy.
    assert_eq!(busy, "race in progress");

    race_in(&mut ann.races, "racing").await;
    race_in(&mut viewer.races, "racing").await;
    ann.tap(2);
    let tick = next_matching(&mut viewer.ticks, "ann at 2", |_, v| pos(v, &ann.id) == 2).await;
    assert_eq!(tick["race"], 1);
    assert_eq!(tick["pos"].as_object().unwrap().len(), 3, "every entrant");
    assert!(tick["t"].as_u64().is_some());
    // Players get the ticks too.
    next_matching(&mut ann.ticks, "ann's own tick", |_, v| {
        pos(v, &ann.id) == 2
    })
    .await;

    bob.tap(5);
    let finished = race_in(&mut viewer.races, "finished").await;
    assert_eq!(finished["winner"]["id"], json!(bob.id));
    assert_eq!(finished["winner"]["name"], "bob");
    let best = finished["winner"]["ms"].as_u64().unwrap();
    assert_eq!(
        finished["leaderboard"],
        json!([{"name": "bob", "wins": 1, "best_ms": best}])
    );
    let taps: Vec<u64> = finished["racers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["taps"].as_u64().unwrap())
        .collect();
    assert_eq!(taps, [2, 5, 0]);
    race_in(&mut ann.races, "finished").await;

    // A new race, from the console this time.
    let ok = within("restart", viewer.console.push("start", json!({}))).await;
    assert!(ok.is_ok(), "{ok:?}");
    let second = race_in(&mut viewer.races, "countdown").await;
    assert_eq!(second["race"], 2);
    assert_eq!(second["winner"], Value::Null);
    assert!(
        second["racers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["taps"] == 0)
    );
    assert_eq!(second["leaderboard"][0]["name"], "bob");
    race_in(&mut viewer.races, "racing").await;
    cat.tap(5);
    let finished = race_in(&mut viewer.races, "finished").await;
    assert_eq!(finished["race"], 2);
    assert_eq!(finished["winner"]["name"], "cat");
    let board = finished["leaderboard"].as_array().unwrap();
    assert_eq!(board.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn start_needs_racers() {
    let server = TestServer::start(quick()).await;
    let viewer = Viewer::join(&server).await;
    let got = within("start", viewer.console.push("start", json!({}))).await;
    assert_eq!(reason(got), "no racers");
    server.stop().await;
}

#[tokio::test]
async fn a_flood_of_taps_is_capped() {
    let server = TestServer::start(quick_with(Rules {
        track: 10_000,
        countdown: Duration::from_millis(100),
        max_race: Duration::from_secs(60),
    }))
    .await;
    let mut bot = Racer::join(&server, "bot").await;
    within("start", bot.play.push("start", json!({})))
        .await
        .unwrap();
    race_in(&mut bot.races, "racing").await;
    // A script tapping about 1000 times a second for 800 ms.
    let play = bot.play.clone();
    let flood = tokio::spawn(async move {
        let begun = Instant::now();
        let mut sent = 0;
        while begun.elapsed() < Duration::from_millis(800) {
            for _ in 0..10 {
                drop(play.push_with_timeout("tap", json!({}), Duration::from_millis(100)));
            }
            sent += 10;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    });
    let mut last = 0;
    let mut ticks = 0;
    within("ticks during the flood", async {
        while !flood.is_finished() {
            let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(100), bot.ticks.recv()).await
            else {
                continue;
            };
            let tick = json_of(&ev.payload);
            let t = tick["t"].as_u64().unwrap();
            let taps = pos(&tick, &bot.id);
            // 5 at the start signal, then 15 a second.
            assert!(taps <= 5 + 15 * t / 1000, "{taps} taps at {t} ms");
            last = taps;
            ticks += 1;
        }
    })
    .await;
    let sent = flood.await.unwrap();
    assert!(sent >= 200, "the flood sent {sent}");
    assert!(ticks > 0);
    assert!(
        (5..=5 + 15 * 2).contains(&last),
        "{last} taps counted of {sent}"
    );
    server.stop().await;
}

#[tokio::test]
async fn joining_during_the_countdown_enters_and_during_the_race_waits() {
    let server = TestServer::start(quick_with(Rules {
        track: 5,
        countdown: Duration::from_millis(1500),
        max_race: Duration::from_secs(60),
    }))
    .await;
    let mut viewer = Viewer::join(&server).await;
    let ann = Racer::join(&server, "ann").await;
    within("start", ann.play.push("start", json!({})))
        .await
        .unwrap();
    race_in(&mut viewer.races, "countdown").await;
    let bob = Racer::join(&server, "bob").await;
    let with_bob = race_in(&mut viewer.races, "countdown").await;
    assert_eq!(with_bob["racers"].as_array().unwrap().len(), 2);
    assert!(with_bob["countdown_ms"].as_u64().unwrap() < 1500);
    race_in(&mut viewer.races, "racing").await;

    let cat = Racer::join(&server, "cat").await;
    assert_eq!(cat.join["race"]["phase"], "racing");
    assert_eq!(cat.join["race"]["racers"].as_array().unwrap().len(), 2);
    cat.tap(3);
    bob.tap(1);
    let tick = next_matching(&mut viewer.ticks, "bob's tap", |_, v| pos(v, &bob.id) == 1).await;
    assert!(tick["pos"].get(&cat.id).is_none(), "cat waits: {tick}");
    // The next race has cat.
    bob.tap(4);
    race_in(&mut viewer.races, "finished").await;
    within("start", cat.play.push("start", json!({})))
        .await
        .unwrap();
    let next = race_in(&mut viewer.races, "countdown").await;
    assert_eq!(next["racers"].as_array().unwrap().len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn leaving_empties_the_race_and_max_time_ends_it() {
    let server = TestServer::start(quick_with(Rules {
        track: 5,
        countdown: Duration::from_secs(30),
        max_race: Duration::from_secs(60),
    }))
    .await;
    let mut viewer = Viewer::join(&server).await;
    let ann = Racer::join(&server, "ann").await;
    within("start", ann.play.push("start", json!({})))
        .await
        .unwrap();
    race_in(&mut viewer.races, "countdown").await;
    within("leave", ann.play.leave()).await.unwrap();
    let back = race_in(&mut viewer.races, "lobby").await;
    assert_eq!(back["racers"], json!([]));
    assert_eq!(back["race"], 1);
    server.stop().await;

    let server = TestServer::start(quick_with(Rules {
        track: 5,
        countdown: Duration::ZERO,
        max_race: Duration::from_millis(300),
    }))
    .await;
    let mut ann = Racer::join(&server, "ann").await;
    within("start", ann.play.push("start", json!({})))
        .await
        .unwrap();
    race_in(&mut ann.races, "racing").await;
    ann.tap(1);
    let over = race_in(&mut ann.races, "finished").await;
    assert_eq!(over["winner"], Value::Null);
    assert_eq!(over["leaderboard"], json!([]));
    server.stop().await;
}
