//! CONFORMANCE_APP.md "HTTP API" and PROTOCOL §4.11 (checklist 63, 65, 68):
//! health, server-side broadcast, forced disconnect by socket id, stats, and
//! 400 answers for malformed bodies.

mod support;

use serde_json::{Value, json};
use support::{NODE, TestServer};

/// Asserts a `400 {"error": "<non-empty string>"}` answer.
fn assert_bad_request(answer: (u16, Value), what: &str) {
    let (status, body) = answer;
    assert_eq!(status, 400, "{what}: body {body}");
    let message = body["error"].as_str();
    assert!(
        message.is_some_and(|m| !m.is_empty()),
        "{what}: expected {{\"error\": \"...\"}}, got {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_ok_and_the_node_name() {
    let server = TestServer::start().await;
    let (status, body) = server.http().get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "ok", "node": NODE}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_answers_ok_true() {
    let server = TestServer::start().await;
    let answer = server
        .http()
        .post_json(
            "/api/broadcast",
            &json!({"topic": "room:lobby", "event": "custom", "payload": {"a": 1}}),
        )
        .await;
    assert_eq!(answer, (200, json!({"ok": true})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_with_a_malformed_body_is_400() {
    let server = TestServer::start().await;
    let http = server.http();
    let json_type = "application/json";
    assert_bad_request(
        http.post_raw("/api/broadcast", json_type, "{\"topic\":")
            .await,
        "truncated JSON",
    );
    assert_bad_request(
        http.post_raw("/api/broadcast", json_type, "not json").await,
        "not JSON",
    );
    assert_bad_request(
        http.post_raw("/api/broadcast", json_type, "").await,
        "empty body",
    );
    assert_bad_request(
        http.post_raw(
            "/api/broadcast",
            "text/plain",
            json!({"topic": "room:lobby", "event": "e", "payload": {}}).to_string(),
        )
        .await,
        "wrong content type",
    );
    for (body, what) in [
        (json!({"event": "e", "payload": {}}), "missing topic"),
        (
            json!({"topic": "room:lobby", "payload": {}}),
            "missing event",
        ),
        (
            json!({"topic": "room:lobby", "event": "e"}),
            "missing payload",
        ),
        (
            json!({"topic": 1, "event": "e", "payload": {}}),
            "numeric topic",
        ),
    ] {
        assert_bad_request(http.post_json("/api/broadcast", &body).await, what);
    }
    http.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_with_an_array_body_is_400() {
    // The contract's body is the object {"topic","event","payload"}.
    let server = TestServer::start().await;
    let http = server.http();
    let body = json!(["room:lobby", "e", {}]);
    assert_bad_request(http.post_json("/api/broadcast", &body).await, "array body");
    http.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_with_a_non_object_payload_is_400() {
    // PROTOCOL §4.4: broadcast payloads must be objects.
    let server = TestServer::start().await;
    let http = server.http();
    for payload in [json!(42), json!("text"), json!([1]), json!(null)] {
        let body = json!({"topic": "room:lobby", "event": "e", "payload": payload});
        assert_bad_request(
            http.post_json("/api/broadcast", &body).await,
            &format!("{body}"),
        );
    }
    http.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_with_a_malformed_body_is_400() {
    let server = TestServer::start().await;
    let http = server.http();
    assert_bad_request(
        http.post_raw("/api/disconnect", "application/json", "{")
            .await,
        "truncated JSON",
    );
    assert_bad_request(
        http.post_raw(
            "/api/disconnect",
            "text/plain",
            "{\"socket_id\":\"user_socket:1\"}",
        )
        .await,
        "wrong content type",
    );
    assert_bad_request(
        http.post_json("/api/disconnect", &json!({})).await,
        "missing socket_id",
    );
    assert_bad_request(
        http.post_json("/api/disconnect", &json!({"socket_id": 42}))
            .await,
        "numeric socket_id",
    );
    http.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c63_disconnect_closes_every_socket_of_that_id_with_1001() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut first = server.ws("vsn=2.0.0&user_id=42").await;
    let mut second = server.ws("vsn=1.0.0&user_id=42").await;
    first
        .join_room("room:lobby", Value::Null, json!("42"))
        .await;
    first.join("bench:1", json!({})).await;
    http.wait_stats((2, 2)).await;

    let answer = http
        .post_json("/api/disconnect", &json!({"socket_id": "user_socket:42"}))
        .await;
    assert_eq!(answer, (200, json!({"ok": true})));
    // Nothing else first: no phx_close, phx_error or you_left (PROTOCOL §4.7).
    assert_eq!(first.expect_close().await, 1001);
    assert_eq!(second.expect_close().await, 1001);
    http.wait_stats((0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c65_disconnect_leaves_other_ids_and_anonymous_sockets_alone() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut target = server.ws("vsn=2.0.0&user_id=42").await;
    let mut other = server.ws("vsn=2.0.0&user_id=7").await;
    let mut prefix = server.ws("vsn=2.0.0&user_id=4").await;
    let mut anon = server.ws_v2().await;
    let jo = other.join_room("room:lobby", Value::Null, json!("7")).await;
    let jn = anon.join_room("room:lobby", Value::Null, Value::Null).await;
    other
        .expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
        .await;

    for socket_id in ["user_socket:42", "user_socket:nobody", "42", "user_socket:"] {
        let answer = http
            .post_json("/api/disconnect", &json!({"socket_id": socket_id}))
            .await;
        assert_eq!(
            answer,
            (200, json!({"ok": true})),
            "socket_id {socket_id:?}"
        );
    }
    assert_eq!(target.expect_close().await, 1001);
    other.barrier().await;
    other.echo(&jo, "room:lobby").await;
    prefix.barrier().await;
    anon.barrier().await;
    anon.echo(&jn, "room:lobby").await;
    http.wait_stats((3, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c63_disconnected_user_can_reconnect() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut client = server.ws("vsn=2.0.0&user_id=42").await;
    client.barrier().await;
    http.post_json("/api/disconnect", &json!({"socket_id": "user_socket:42"}))
        .await;
    assert_eq!(client.expect_close().await, 1001);
    let mut again = server.ws("vsn=2.0.0&user_id=42").await;
    again
        .join_room("room:lobby", Value::Null, json!("42"))
        .await;
    again.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_sockets_and_channels_and_return_to_baseline() {
    let server = TestServer::start().await;
    let http = server.http();
    assert_eq!(http.stats().await, (0, 0));

    let mut a = server.ws_v2().await;
    let mut b = server.ws("vsn=1.0.0&user_id=9").await;
    http.wait_stats((2, 0)).await;

    let ja = a.join_room("room:lobby", Value::Null, Value::Null).await;
    a.join("bench:1", json!({})).await;
    a.join("chat:lobby", json!({})).await;
    b.send(json!({"topic": "bench:2", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    assert_eq!(b.recv_json().await["payload"]["status"], json!("ok"));
    http.wait_stats((2, 4)).await;

    // Refused and crashed joins leave no channel behind.
    a.send(json!(["d", "d", "room:denied", "phx_join", {}]))
        .await;
    a.recv_json().await;
    a.send(json!(["c", "c", "room:join_crash", "phx_join", {}]))
        .await;
    a.recv_json().await;
    http.wait_stats((2, 4)).await;

    a.send(json!([ja, "l", "room:lobby", "phx_leave", {}]))
        .await;
    for _ in 0..3 {
        a.recv_json().await;
    }
    http.wait_stats((2, 3)).await;

    drop(b);
    http.wait_stats((1, 2)).await;
    drop(a);
    http.wait_stats((0, 0)).await;
}
