//! PROTOCOL §4.13 (checklist 67, 68): an orderly shutdown closes every
//! WebSocket with 1012 and `serve` returns.

mod support;

use serde_json::{Value, json};
use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c67_shutdown_closes_every_socket_with_1012() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let mut idle = server.ws_v2().await;
    let mut v1 = server.ws("vsn=1.0.0&user_id=1").await;
    let mut joined = server.ws("vsn=2.0.0&user_id=2").await;
    joined
        .join_room("room:lobby", Value::Null, json!("2"))
        .await;
    joined.join("bench:1", json!({})).await;
    joined.join("chat:1", json!({})).await;
    v1.barrier().await;
    idle.barrier().await;
    server.http().wait_stats((3, 3)).await;

    // Clients must keep reading while `serve` winds down.
    let done = tokio::spawn(server.shutdown());
    // No phx_close / phx_error / you_left before the close (PROTOCOL §4.13).
    assert_eq!(joined.expect_close().await, 1012);
    assert_eq!(v1.expect_close().await, 1012);
    assert_eq!(idle.expect_close().await, 1012);
    done.await
        .expect("shutdown task")
        .expect("serve returns Ok after shutdown");

    // The listener is gone with `serve`.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the server still accepts connections after serve returned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c67_shutdown_without_sockets_returns() {
    let server = TestServer::start().await;
    server.http().assert_healthy().await;
    server.shutdown().await.expect("serve returns Ok");
}
