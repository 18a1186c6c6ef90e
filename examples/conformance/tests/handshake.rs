//! PROTOCOL §1 (checklist 1–13): upgrade, `vsn` negotiation, origin check,
//! `connect` refusal, bearer token sub-protocol.

mod support;

use serde_json::json;
use support::{TestServer, WsClient};

/// The headers of a valid upgrade request, for requests made without a
/// WebSocket client (so that the full HTTP answer can be read).
const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c01_v2_upgrade_is_accepted() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect(server.addr, "vsn=2.0.0")
        .await
        .expect("101 Switching Protocols");
    // No sub-protocol offered, none selected.
    assert!(client.headers.get("sec-websocket-protocol").is_none());
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c02_absent_vsn_selects_v1() {
    let server = TestServer::start().await;
    let mut client = server.ws("").await;
    assert!(!client.v2);
    client
        .send(json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}))
        .await;
    client
        .expect(json!({
            "topic": "phoenix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": "1"
        }))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c03_vsn_1_0_x_selects_v1() {
    let server = TestServer::start().await;
    for vsn in ["1.0.0", "1.0.3"] {
        let mut client = server.ws(&format!("vsn={vsn}")).await;
        client
            .send(json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": vsn}))
            .await;
        client
            .expect(json!({
                "topic": "phoenix",
                "event": "phx_reply",
                "payload": {"status": "ok", "response": {}},
                "ref": vsn
            }))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c03_vsn_2_0_x_selects_v2() {
    let server = TestServer::start().await;
    for vsn in ["2.0.0", "2.0.7"] {
        let mut client = server.ws(&format!("vsn={vsn}")).await;
        assert!(client.v2);
        client
            .send(json!([null, vsn, "phoenix", "heartbeat", {}]))
            .await;
        client
            .expect(json!([null, vsn, "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c04_unsupported_vsn_is_refused_with_403() {
    let server = TestServer::start().await;
    for query in [
        "vsn=2.1.0",
        "vsn=3.0.0",
        "vsn=2",
        "vsn=abc",
        "vsn=",
        "vsn[]=2.0.0",
        "vsn%5B%5D=2.0.0",
    ] {
        let refused = WsClient::connect(server.addr, query).await.err();
        assert_eq!(refused, Some(403), "query {query:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c05_rejected_connect_is_403_with_empty_body() {
    let server = TestServer::start().await;
    let refused = WsClient::connect(server.addr, "vsn=2.0.0&reject=true")
        .await
        .err();
    assert_eq!(refused, Some(403));

    let raw = server
        .http()
        .request(
            http::Method::GET,
            "/socket/websocket?vsn=2.0.0&reject=true",
            &UPGRADE_HEADERS,
            None,
        )
        .await;
    assert_eq!(raw.status, 403);
    assert_eq!(raw.body, "", "a refusal has an empty body");
    assert!(raw.headers.get("sec-websocket-accept").is_none());

    // `reject` with any other value is an ordinary anonymous connect.
    let mut client = server.ws("vsn=2.0.0&reject=false").await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c07_request_without_origin_is_allowed() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect_with(server.addr, "vsn=2.0.0", &[])
        .await
        .expect("no Origin header: allowed");
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c08_local_origins_are_allowed() {
    let server = TestServer::start().await;
    for origin in [
        "http://localhost:4000",
        "http://127.0.0.1",
        "https://localhost",
        "http://127.0.0.1:8080",
    ] {
        let mut client = WsClient::connect_with(server.addr, "vsn=2.0.0", &[("origin", origin)])
            .await
            .unwrap_or_else(|status| panic!("Origin {origin}: HTTP {status}"));
        client.barrier().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c08_foreign_origin_is_refused_with_403() {
    let server = TestServer::start().await;
    for origin in [
        "http://evil.com",
        "http://localhost.evil.com",
        "http://127.0.0.2",
    ] {
        let refused = WsClient::connect_with(server.addr, "vsn=2.0.0", &[("origin", origin)])
            .await
            .err();
        assert_eq!(refused, Some(403), "Origin {origin}");
    }
    // The origin check runs before `connect`, and refusals look alike.
    let raw = server
        .http()
        .request(
            http::Method::GET,
            "/socket/websocket?vsn=2.0.0",
            &[UPGRADE_HEADERS.as_slice(), &[("origin", "http://evil.com")]].concat(),
            None,
        )
        .await;
    assert_eq!((raw.status, raw.body.as_str()), (403, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c09_null_origin_is_refused_with_403() {
    let server = TestServer::start().await;
    for origin in ["null", "file://"] {
        let refused = WsClient::connect_with(server.addr, "vsn=2.0.0", &[("origin", origin)])
            .await
            .err();
        assert_eq!(refused, Some(403), "Origin {origin:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c10_non_get_request_is_400() {
    let server = TestServer::start().await;
    let http = server.http();
    for method in [http::Method::POST, http::Method::PUT, http::Method::DELETE] {
        let raw = http
            .request(
                method.clone(),
                "/socket/websocket?vsn=2.0.0",
                &UPGRADE_HEADERS,
                Some(String::new()),
            )
            .await;
        assert_eq!(raw.status, 400, "{method} /socket/websocket");
        assert_eq!(raw.body, "", "{method} /socket/websocket has an empty body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c11_get_without_upgrade_headers_is_400() {
    let server = TestServer::start().await;
    let raw = server
        .http()
        .request(http::Method::GET, "/socket/websocket?vsn=2.0.0", &[], None)
        .await;
    assert_eq!(raw.status, 400, "body: {:?}", raw.body);
    server.http().assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c12_bearer_token_subprotocol_is_answered_with_phoenix() {
    let server = TestServer::start().await;
    // Token `1234` → standard base64 without padding (PROTOCOL §1.6).
    let mut client = WsClient::connect_with(
        server.addr,
        "vsn=2.0.0",
        &[(
            "sec-websocket-protocol",
            "phoenix, base64url.bearer.phx.MTIzNA",
        )],
    )
    .await
    .expect("a bearer token is accepted");
    assert_eq!(
        client
            .headers
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("phoenix")
    );
    client.barrier().await;

    // Token `12345`, whose standard base64 needs padding (`MTIzNDU=`).
    let mut client = WsClient::connect_with(
        server.addr,
        "vsn=2.0.0",
        &[(
            "sec-websocket-protocol",
            "phoenix, base64url.bearer.phx.MTIzNDU",
        )],
    )
    .await
    .expect("an unpadded token is accepted");
    assert_eq!(
        client
            .headers
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("phoenix")
    );
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c12_phoenix_subprotocol_alone_is_echoed() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect_with(
        server.addr,
        "vsn=2.0.0",
        &[("sec-websocket-protocol", "phoenix")],
    )
    .await
    .expect("101");
    assert_eq!(
        client
            .headers
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("phoenix")
    );
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c12_bearer_token_reject_is_refused_with_403() {
    let server = TestServer::start().await;
    // `cmVqZWN0` is base64 of `reject`.
    let refused = WsClient::connect_with(
        server.addr,
        "vsn=2.0.0",
        &[(
            "sec-websocket-protocol",
            "phoenix, base64url.bearer.phx.cmVqZWN0",
        )],
    )
    .await
    .err();
    assert_eq!(refused, Some(403));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c13_server_sends_nothing_before_the_client_speaks() {
    let server = TestServer::start().await;
    let mut client = server.ws("vsn=2.0.0&user_id=42").await;
    // The heartbeat reply must be the very first frame.
    client.barrier().await;
}
