//! PROTOCOL §4.3 step 1 and checklist 22: malformed, oversized and flooding
//! input ends at most the offending connection; the server, its HTTP API and
//! the other sockets keep working.

mod support;

use serde_json::{Value, json};
use support::{Frame, TestServer, WsClient, binary_push};
use tokio_tungstenite::tungstenite::Message;

/// The frame size above which the server closes with 1009.
const MAX_FRAME: usize = 1 << 20;

/// A server with a bystander already joined to `room:lobby`, and an offender
/// joined to `room:lobby` too.
struct Scene {
    server: TestServer,
    bystander: WsClient,
    bystander_ref: String,
    offender: WsClient,
}

impl Scene {
    async fn new() -> Scene {
        let server = TestServer::start().await;
        let mut bystander = server.ws_v2().await;
        let bystander_ref = bystander
            .join_room("room:lobby", Value::Null, Value::Null)
            .await;
        let mut offender = server.ws_v2().await;
        offender
            .join_room("room:lobby", Value::Null, Value::Null)
            .await;
        bystander
            .expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
            .await;
        server.http().wait_stats((2, 2)).await;
        Scene {
            server,
            bystander,
            bystander_ref,
            offender,
        }
    }

    /// The offender's connection must end (close frame with any code, or an
    /// abrupt end); returns the close code if any.
    async fn offender_is_gone(&mut self) -> Option<u16> {
        self.offender.expect_ended().await
    }

    /// The server and the other client are unaffected.
    async fn everyone_else_is_fine(&mut self) {
        let http = self.server.http();
        http.assert_healthy().await;
        self.bystander.barrier().await;
        self.bystander.echo(&self.bystander_ref, "room:lobby").await;
        // The offender's socket and channel are gone; the bystander's remain.
        http.wait_stats((1, 1)).await;
        // A new client can still connect and join.
        let mut fresh = self.server.ws_v2().await;
        fresh.join("bench:1", json!({})).await;
        fresh.barrier().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_malformed_json_closes_only_that_socket() {
    let mut scene = Scene::new().await;
    scene
        .offender
        .send_text("[\"1\",\"2\",\"room:lobby\",\"echo\",{")
        .await;
    scene.offender_is_gone().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_non_json_text_closes_only_that_socket() {
    let mut scene = Scene::new().await;
    scene.offender.send_text("hello").await;
    scene.offender_is_gone().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_wrong_arity_closes_only_that_socket() {
    let mut scene = Scene::new().await;
    scene
        .offender
        .send(json!(["1", "2", "room:lobby", "echo"]))
        .await;
    scene.offender_is_gone().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_non_array_v2_frame_closes_only_that_socket() {
    let mut scene = Scene::new().await;
    scene
        .offender
        .send(json!({"topic": "room:lobby", "event": "echo", "payload": {}, "ref": "1"}))
        .await;
    scene.offender_is_gone().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_unknown_binary_kind_closes_only_that_socket() {
    let mut scene = Scene::new().await;
    let mut frame = binary_push("1", "2", "room:lobby", "binary", b"x");
    frame[0] = 7;
    scene.offender.send_binary(frame).await;
    scene.offender_is_gone().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_server_only_binary_kind_from_client_closes_only_that_socket() {
    let mut scene = Scene::new().await;
    // Kind 1 is a server reply; clients send only kind 0 (PROTOCOL §2.3).
    let mut frame = binary_push("1", "2", "room:lobby", "ok", b"x");
    frame[0] = 1;
    scene.offender.send_binary(frame).await;
    scene.offender_is_gone().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_truncated_binary_closes_only_that_socket() {
    let mut scene = Scene::new().await;
    // The header announces a 10-byte topic and a 6-byte event, the frame ends early.
    let mut frame = binary_push("1", "2", "room:lobby", "binary", b"");
    frame.truncate(12);
    scene.offender.send_binary(frame).await;
    scene.offender_is_gone().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_binary_shorter_than_its_fixed_header_closes_only_that_socket() {
    let mut scene = Scene::new().await;
    scene.offender.send_binary(vec![0, 1, 1]).await;
    scene.offender_is_gone().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_invalid_utf8_text_frame_closes_only_that_socket() {
    let mut scene = Scene::new().await;
    let mut bytes = b"[null,\"1\",\"phoenix\",\"heartbeat\",{\"x\":\"".to_vec();
    bytes.extend_from_slice(&[0xFF, 0xFE, 0xC3]);
    bytes.extend_from_slice(b"\"}]");
    scene.offender.send_text_bytes(bytes).await;
    scene.offender_is_gone().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_oversized_frame_closes_with_1009() {
    let mut scene = Scene::new().await;
    // A well-formed echo whose frame is just over 1 MiB.
    let filler = "x".repeat(MAX_FRAME);
    let frame = json!([null, "big", "room:lobby", "echo", {"filler": filler}]).to_string();
    assert!(frame.len() > MAX_FRAME);
    // The server may stop reading at the header; a failed write is fine as
    // long as the close frame arrives.
    let _ = scene.offender.try_send(Message::text(frame)).await;
    let got = scene.offender.recv().await;
    assert_eq!(
        got,
        Frame::Close(Some(1009)),
        "expected close 1009 (message too big)"
    );
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_large_frame_under_the_limit_is_accepted() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    let payload = json!({"filler": "y".repeat(MAX_FRAME / 2)});
    let r = client
        .push(&jr, "room:lobby", "echo", payload.clone())
        .await;
    client
        .expect(json!([jr, r, "room:lobby", "phx_reply", {"status": "ok", "response": payload}]))
        .await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_flood_of_small_messages_is_answered_in_order() {
    const N: usize = 10_000;
    let mut scene = Scene::new().await;
    let offender = &mut scene.offender;
    let jr = offender.join("bench:flood", json!({})).await;
    let messages: Vec<Message> = (0..N)
        .map(|n| {
            Message::text(json!([jr, format!("f{n}"), "bench:flood", "ping", {"n": n}]).to_string())
        })
        .collect();
    let frames = offender.flood(messages, N).await;
    for (n, frame) in frames.into_iter().enumerate() {
        let want = json!([
            jr,
            format!("f{n}"),
            "bench:flood",
            "phx_reply",
            {"status": "ok", "response": {"n": n}}
        ]);
        assert_eq!(frame, Frame::Json(want), "answer #{n}");
    }
    offender.barrier().await;
    let http = scene.server.http();
    http.assert_healthy().await;
    scene.bystander.barrier().await;
    scene
        .bystander
        .echo(&scene.bystander_ref, "room:lobby")
        .await;
    http.wait_stats((2, 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c22_heartbeat_flood_is_answered_in_order() {
    const N: usize = 10_000;
    let mut scene = Scene::new().await;
    let messages: Vec<Message> = (0..N)
        .map(|n| {
            Message::text(json!([null, format!("h{n}"), "phoenix", "heartbeat", {}]).to_string())
        })
        .collect();
    let frames = scene.offender.flood(messages, N).await;
    for (n, frame) in frames.into_iter().enumerate() {
        let want = json!([
            null,
            format!("h{n}"),
            "phoenix",
            "phx_reply",
            {"status": "ok", "response": {}}
        ]);
        assert_eq!(frame, Frame::Json(want), "answer #{n}");
    }
    scene.offender.barrier().await;
    scene.server.http().assert_healthy().await;
    scene.bystander.barrier().await;
}
