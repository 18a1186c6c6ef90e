//! The endpoint as an application sees it: mounting into its own router,
//! what `connect` is told, refusals, forced disconnects and the counts.

mod support;

use axum::Router;
use axum::routing::get;
use base64::Engine;
use fawkes::StopReason;
use serde_json::json;
use support::{Client, observer, probe_endpoint, serve, serve_probe};

#[tokio::test]
async fn router_merges_into_the_applications_router() {
    let (obs, _seen) = observer();
    let (fawkes, endpoint) = probe_endpoint(&obs).build();
    let app = Router::new()
        .route("/health", get(|| async { "alive" }))
        .merge(fawkes);
    let server = serve(app, endpoint).await;

    assert_eq!(
        support::http_get(server.addr, "/health", &[]).await,
        (200, "alive".to_owned())
    );
    let mut client = server.client().await;
    let join_ref = client.join("probe:a", json!({})).await;
    let reply = client
        .call(&join_ref, "probe:a", "echo", json!({"x": 1}))
        .await;
    assert_eq!(reply, support::ok(json!({"x": 1})));
    assert_eq!(support::http_get(server.addr, "/nowhere", &[]).await.0, 404);
}

#[tokio::test]
async fn connect_sees_nested_params_headers_peer_uri_and_bearer_token() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    // Standard alphabet without padding, as phoenix.js's btoa (PROTOCOL §1.6);
    // this token's encoding uses both `+` and `/`.
    let token = "ab~?>?~";
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(token);
    assert!(encoded.contains('+') && encoded.contains('/'), "{encoded}");
    let protocols = format!("phoenix, base64url.bearer.phx.{encoded}");

    let client = Client::connect_with(
        server.addr,
        "token=abc&user%5Bid%5D=7&user[name]=ann",
        &[
            ("x-request-id", "req-42"),
            ("sec-websocket-protocol", &protocols),
        ],
    )
    .await
    .expect("upgrade");

    assert_eq!(
        client.headers.get("sec-websocket-protocol").unwrap(),
        "phoenix",
        "the 101 answer must select `phoenix`"
    );
    let (params, info) = seen.connected().await;
    assert_eq!(params.get_str("token"), Some("abc"));
    assert_eq!(params.get_str("vsn"), Some("2.0.0"));
    assert_eq!(params.get("user"), Some(&json!({"id": "7", "name": "ann"})));
    assert_eq!(info.headers.get("x-request-id").unwrap(), "req-42");
    assert_eq!(info.peer, Some(client.local_addr));
    assert_eq!(info.uri.path(), "/socket/websocket");
    assert_eq!(
        info.uri.query(),
        Some("vsn=2.0.0&token=abc&user%5Bid%5D=7&user[name]=ann")
    );
    assert_eq!(info.auth_token.as_deref(), Some(token));
    assert_eq!(info.transport, fawkes::Transport::WebSocket);
}

#[tokio::test]
async fn connect_without_bearer_token_sees_none() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let _client = server.client().await;
    let (_, info) = seen.connected().await;
    assert_eq!(info.auth_token, None);
}

#[tokio::test]
async fn subprotocol_phoenix_is_echoed_only_when_offered() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let offered = Client::connect_with(server.addr, "", &[("sec-websocket-protocol", "phoenix")])
        .await
        .expect("upgrade");
    assert_eq!(
        offered.headers.get("sec-websocket-protocol").unwrap(),
        "phoenix"
    );
    let plain = server.client().await;
    assert_eq!(plain.headers.get("sec-websocket-protocol"), None);
}

#[tokio::test]
async fn malformed_bearer_token_is_refused_before_connect() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    // Not base64; and base64 of bytes that are not UTF-8.
    for token in ["!!!", "/w"] {
        let protocols = format!("phoenix, base64url.bearer.phx.{token}");
        assert_eq!(
            Client::connect_with(server.addr, "", &[("sec-websocket-protocol", &protocols)])
                .await
                .err(),
            Some(403),
            "{token}"
        );
    }
    assert!(seen.pending().is_empty(), "connect ran");
}

#[tokio::test]
async fn refused_with_status_answers_that_http_status() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    assert_eq!(
        Client::connect_with(server.addr, "status=429", &[])
            .await
            .err(),
        Some(429)
    );
    assert_eq!(
        Client::connect_with(server.addr, "status=403", &[])
            .await
            .err(),
        Some(403)
    );
    server.wait_stats(0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_by_socket_id_closes_with_1001_and_runs_terminate() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut first = Client::connect(server.addr, "id=user_socket:7").await;
    let mut second = Client::connect(server.addr, "id=user_socket:7").await;
    let mut other = Client::connect(server.addr, "id=user_socket:8").await;
    let mut anonymous = server.client().await;
    first.join("probe:a", json!({})).await;
    first.join("probe:b", json!({})).await;
    second.join("probe:a", json!({})).await;
    let other_ref = other.join("probe:a", json!({})).await;
    anonymous.join("probe:a", json!({})).await;
    server.wait_stats(4, 5).await;

    server.endpoint.disconnect("user_socket:7");

    assert_eq!(first.expect_close().await, Some(1001));
    assert_eq!(second.expect_close().await, Some(1001));
    let mut terminated = Vec::new();
    for _ in 0..3 {
        terminated.push(seen.terminated().await);
    }
    terminated.sort_by(|a, b| a.0.cmp(&b.0));
    let disconnected = StopReason::Shutdown("disconnected".into());
    assert_eq!(
        terminated,
        vec![
            ("probe:a".to_owned(), disconnected.clone()),
            ("probe:a".to_owned(), disconnected.clone()),
            ("probe:b".to_owned(), disconnected),
        ]
    );
    server.wait_stats(2, 2).await;
    other.barrier().await;
    anonymous.barrier().await;
    let reply = other
        .call(&other_ref, "probe:a", "echo", json!({"still": "here"}))
        .await;
    assert_eq!(reply, support::ok(json!({"still": "here"})));
}

#[tokio::test]
async fn disconnect_of_an_unknown_id_touches_nobody() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = Client::connect(server.addr, "id=user_socket:1").await;
    client.join("probe:a", json!({})).await;
    server.endpoint.disconnect("user_socket:2");
    // A broadcast on the id topic that is not `disconnect` is ignored too.
    server
        .endpoint
        .broadcast("user_socket:1", "kick", json!({}))
        .unwrap();
    client.barrier().await;
    server.wait_stats(1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_sockets_and_channels_and_return_to_zero() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    server.wait_stats(0, 0).await;

    let mut a = server.client().await;
    let mut b = server.client().await;
    let a1 = a.join("probe:1", json!({})).await;
    a.join("probe:2", json!({})).await;
    b.join("probe:1", json!({})).await;
    server.wait_stats(2, 3).await;
    assert_eq!(server.endpoint.pubsub().subscriber_count("probe:1"), 2);
    // A refused join counts nothing.
    let (_, refused) = b.join_raw("probe:3", json!({"refuse": true})).await;
    assert_eq!(refused["status"], "error");
    server.wait_stats(2, 3).await;

    // A leave frees its channel.
    let r = a.push(Some(&a1), "probe:1", "phx_leave", json!({})).await;
    assert_eq!(
        a.recv().await,
        json!([a1, r, "probe:1", "phx_reply", support::ok(json!({}))])
    );
    server.wait_stats(2, 2).await;
    assert_eq!(server.endpoint.pubsub().subscriber_count("probe:1"), 1);

    // A clean close and an abrupt drop both free the socket and its channels.
    a.close().await;
    server.wait_stats(1, 1).await;
    drop(b);
    server.wait_stats(0, 0).await;
    assert_eq!(server.endpoint.pubsub().subscriber_count("probe:1"), 0);
    assert_eq!(server.endpoint.pubsub().subscriber_count("probe:2"), 0);
}
