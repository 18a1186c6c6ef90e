//! Node shutdown (PROTOCOL §4.13): `Endpoint::shutdown` closes every socket
//! with 1012 after its channels' `terminate`, and returns.

mod support;

use std::time::Duration;

use fawkes::{Endpoint, StopReason};
use serde_json::json;
use support::{Client, Probe, ProbeSocket, Seen, observer, serve, serve_probe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_terminates_every_channel_and_closes_every_client_with_1012() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut a = server.client().await;
    let mut b = Client::connect(server.addr, "id=user_socket:1").await;
    let c = server.client().await;
    a.join("probe:1", json!({})).await;
    a.join("probe:2", json!({"panic_terminate": true})).await;
    b.join("probe:1", json!({})).await;
    b.join("probe:3", json!({})).await;
    server.wait_stats(3, 4).await;
    seen.pending();

    // Clients keep reading, so their close handshakes complete.
    let readers: Vec<_> = [a, b, c]
        .into_iter()
        .map(|mut client| tokio::spawn(async move { client.expect_close().await }))
        .collect();
    tokio::time::timeout(support::TIMEOUT, server.endpoint.shutdown())
        .await
        .expect("shutdown did not return");

    // Every terminate has run by the time shutdown returns.
    let mut terminated: Vec<_> = seen
        .pending()
        .into_iter()
        .filter_map(|s| match s {
            Seen::Terminated(topic, reason) => Some((topic, reason)),
            _ => None,
        })
        .collect();
    terminated.sort_by(|x, y| x.0.cmp(&y.0));
    let draining = StopReason::Shutdown("draining".into());
    assert_eq!(
        terminated,
        vec![
            ("probe:1".to_owned(), draining.clone()),
            ("probe:1".to_owned(), draining.clone()),
            ("probe:2".to_owned(), draining.clone()),
            ("probe:3".to_owned(), draining),
        ]
    );
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(1012));
    }
    let stats = server.endpoint.stats();
    assert_eq!((stats.sockets, stats.channels), (0, 0));

    // New connections are refused once shutdown has begun.
    assert_eq!(
        Client::connect_with(server.addr, "", &[]).await.err(),
        Some(503)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_serve_shutdown_drains_through_the_endpoint() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut a = server.client().await;
    a.join("probe:1", json!({})).await;
    let endpoint = server.endpoint.clone();
    let reader = tokio::spawn(async move { a.expect_close().await });

    server.stop().await;

    assert_eq!(reader.await.unwrap(), Some(1012));
    assert_eq!(
        seen.terminated().await,
        (
            "probe:1".to_owned(),
            StopReason::Shutdown("draining".into())
        )
    );
    let stats = endpoint.stats();
    assert_eq!((stats.sockets, stats.channels), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_a_stuck_channel_after_the_timeout() {
    let (obs, mut seen) = observer();
    let (router, endpoint) = Endpoint::builder()
        .shutdown_timeout(Duration::from_millis(300))
        .socket("/socket", ProbeSocket(obs.clone()))
        .channel("probe:*", Probe::new(obs.clone()))
        .build();
    let server = serve(router, endpoint).await;
    let mut client = server.client().await;
    let j = client.join("probe:1", json!({})).await;
    client.push(Some(&j), "probe:1", "block", json!({})).await;
    // Held, never released: the channel is stuck in handle_in.
    let _release = seen.blocked().await;
    let reader = tokio::spawn(async move { client.expect_close().await });

    tokio::time::timeout(support::TIMEOUT, server.endpoint.shutdown())
        .await
        .expect("shutdown did not return after its timeout");
    assert_eq!(reader.await.unwrap(), Some(1012));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_serve_gives_peers_and_drains_on_its_shutdown_future() {
    let (obs, mut seen) = observer();
    let (router, endpoint) = support::probe_endpoint(&obs).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            endpoint
                .serve(listener, router, async {
                    let _ = stopped.await;
                })
                .await
        }
    });

    let mut client = Client::connect(addr, "").await;
    client.join("probe:1", json!({})).await;
    let (_, info) = seen.connected().await;
    assert_eq!(
        info.peer,
        Some(client.local_addr),
        "connect sees the peer address"
    );

    let reader = tokio::spawn(async move { client.expect_close().await });
    stop.send(()).unwrap();
    assert_eq!(reader.await.unwrap(), Some(1012));
    tokio::time::timeout(support::TIMEOUT, served)
        .await
        .expect("serve did not return")
        .unwrap()
        .unwrap();
    assert_eq!(endpoint.stats().sockets, 0);
}
