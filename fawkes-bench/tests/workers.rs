//! Runs of the real binary with `--workers 2`: the children are this
//! binary run again, so they can only be tested from outside it. The
//! server is the conformance app, served in this process.

use serde_json::Value;

// The unit tests' server helper: this crate has no library to share it
// through.
#[path = "../src/testing.rs"]
mod testing;

use testing::Server;

/// Runs `fawkes-bench ARGS --url … --server-pid <this process>`; the JSON
/// line it ends with, after checking that it succeeded.
async fn bench(server: &Server, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fawkes-bench"))
        .args(args)
        .arg("--url")
        .arg(server.ws_url())
        .arg("--server-pid")
        .arg(std::process::id().to_string())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_two_workers_adds_up_their_connections() {
    let server = Server::start().await;
    let report = bench(
        &server,
        &[
            "connect",
            "--workers",
            "2",
            "--connections",
            "41",
            "--topics",
            "3",
            "--rate",
            "1000",
            "--hold",
            "0",
            "--settle",
            "0",
            "--source-addrs",
            "4",
            "--timeout",
            "5",
        ],
    )
    .await;
    server.stop().await;
    assert_eq!(report["workers"], 2, "{report}");
    assert_eq!(report["joined"], 41, "{report}");
    assert_eq!(report["failures"], 0, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    // Read by the parent while every worker held its connections.
    assert_eq!(report["server_sockets"], 41, "{report}");
    assert_eq!(report["server_channels"], 41, "{report}");
    assert!(report["join_p99_ms"].as_f64().is_some(), "{report}");
    assert!(
        report["bytes_per_connection"].as_i64().is_some(),
        "{report}"
    );
    // The two workers' sockets, and the parent's own few files.
    assert!(
        report["client_open_files"].as_u64().unwrap() >= 41,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_over_two_workers_merges_their_counts() {
    let server = Server::start().await;
    let report = bench(
        &server,
        &[
            "pingpong",
            "--workers",
            "2",
            "--clients",
            "6",
            "--in-flight",
            "3",
            "--warmup",
            "0.2",
            "--duration",
            "0.8",
            "--topics",
            "2",
        ],
    )
    .await;
    server.stop().await;
    assert_eq!(report["workers"], 2, "{report}");
    assert_eq!(report["joined"], 6, "{report}");
    assert_eq!(report["failures"], 0, "{report}");
    assert!(report["replies"].as_u64().unwrap() > 0, "{report}");
    assert!(report["latency_p50_ms"].as_f64().is_some(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_over_two_workers_passes_the_leak_check() {
    let server = Server::start().await;
    let report = bench(
        &server,
        &[
            "churn",
            "--workers",
            "2",
            "--loops",
            "4",
            "--warmup",
            "0.2",
            "--duration",
            "1",
            "--sample-every",
            "0.5",
            "--settle",
            "5",
        ],
    )
    .await;
    server.stop().await;
    assert_eq!(report["workers"], 2, "{report}");
    assert_eq!(report["failures"], 0, "{report}");
    assert_eq!(report["leak_check"], true, "{report}");
    assert_eq!(report["sockets_after"], 0, "{report}");
    assert!(report["cycles"].as_u64().unwrap() > 0, "{report}");
}
