//! The HTTP side: pages and assets, `/healthz`, Fawkes's JS client, a
//! player over LongPoll, and the binary's CLI (its `listening on` line and
//! graceful shutdown).

mod support;

use std::io::BufRead;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn pages_and_assets_are_served_with_their_types() {
    let server = TestServer::start(quick()).await;
    for (path, want) in [
        ("/", "text/html"),
        ("/console", "text/html"),
        ("/assets/style.css", "text/css"),
        ("/assets/common.js", "text/javascript"),
        ("/assets/player.js", "text/javascript"),
        ("/assets/console.js", "text/javascript"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let resp = server.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        let headers = resp.headers();
        let ct = headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with(want), "{path}: {ct}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        let body = resp.bytes().await.unwrap();
        let embedded = tapracer::FILES.iter().find(|f| f.0 == path).unwrap().2;
        assert_eq!(body, embedded.as_bytes(), "{path}");
    }
    let health = server.get("/healthz").await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
    assert_eq!(server.get("/assets/nope.js").await.status(), 404);
    assert_eq!(server.get("/assets/../Cargo.toml").await.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn the_js_client_is_served() {
    let server = TestServer::start(quick()).await;
    let resp = server.get("/socket/fawkes.js").await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.contains("javascript"), "{ct}");
    server.stop().await;
}

/// Polls the LongPoll session until a message satisfies `pred`.
async fn poll_until(server: &TestServer, token: &str, pred: impl Fn(&Value) -> bool) -> Value {
    within("a longpoll message", async {
        loop {
            let resp = server
                .http
                .get(server.url(&format!("/socket/longpoll?vsn=2.0.0&token={token}")))
                .send()
                .await
                .expect("poll");
            let body: Value = resp.json().await.expect("poll json");
            for msg in body["messages"].as_array().into_iter().flatten() {
                let msg: Value = match msg {
                    Value::String(s) => serde_json::from_str(s).expect("a message"),
                    other => other.clone(),
                };
                if pred(&msg) {
                    return msg;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_player_joins_over_longpoll() {
    let server = TestServer::start(quick()).await;
    let mut viewer = Viewer::join(&server).await;
    let open: Value = server
        .get("/socket/longpoll?vsn=2.0.0&name=lp")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(open["status"], 410);
    let token = open["token"].as_str().unwrap().to_owned();
    let join = json!(["1", "1", "play", "phx_join", {}]).to_string();
    let posted: Value = within(
        "POST join",
        server
            .http
            .post(server.url(&format!("/socket/longpoll?vsn=2.0.0&token={token}")))
            .header("content-type", "application/x-ndjson")
            .body(join)
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(posted["status"], 200);
    let reply = poll_until(&server, &token, |m| m[3] == "phx_reply").await;
    assert_eq!(reply[4]["status"], "ok");
    let you = reply[4]["response"]["you"].as_str().unwrap().to_owned();
    let race = next_matching(
        &mut viewer.races,
        "the longpoll player in the lobby",
        |_, v| v["racers"][0]["id"] == json!(you),
    )
    .await;
    assert_eq!(race["racers"][0]["name"], "lp");
    server.stop().await;
}

#[test]
fn the_binary_logs_its_port_and_shuts_down_on_sigterm() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tapracer"))
        .args(["--port", "0", "--track", "3", "--tick-ms", "20"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tapracer");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                panic!("no listening line: {e}");
            }
        };
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert!(!addr.ends_with(":0"), "the real port: {addr}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let health = rt.block_on(async {
        within("healthz", reqwest::get(format!("http://{addr}/healthz")))
            .await
            .expect("healthz")
            .text()
            .await
            .unwrap()
    });
    assert_eq!(health, "ok");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tapracer did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
