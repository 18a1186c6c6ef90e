//! The conformance app's binary.
//!
//! Run with `cargo run --release --bin fawkes-conformance` (options:
//! `--port`, `--host`, `--node-name`, `--pubsub`, `--pubsub-namespace`,
//! `--pubsub-routing`, `--presence-batch-ms`; see `--help`).

use clap::Parser;
use fawkes::pubsub::redis::Routing;
use fawkes_conformance::{Options, random_node_name, serve};
use tracing_subscriber::EnvFilter;

/// Serves the Fawkes conformance app.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 4000)]
    port: u16,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// `redis://HOST:PORT` to join a cluster of nodes over Redis.
    #[arg(long, env = "PUBSUB_URL")]
    pubsub: Option<String>,
    /// Prefix of the cluster's Redis channels: nodes of one cluster share it.
    #[arg(long, env = "PUBSUB_NAMESPACE", default_value = "fawkes")]
    pubsub_namespace: String,
    /// Broadcast routing between nodes: `sharded` (a node receives the
    /// topic shards it has subscribers for) or `all` (every node receives
    /// every broadcast, as Phoenix's Redis adapter).
    #[arg(long, env = "PUBSUB_ROUTING", default_value = "sharded")]
    pubsub_routing: RoutingArg,
    /// The node's name (default: random).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Merge presence changes over this many milliseconds into one
    /// `presence_diff` per topic (default: one diff per change).
    #[arg(long, env = "PRESENCE_BATCH_MS")]
    presence_batch_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let cli = Cli::parse();
    let listener = match tokio::net::TcpListener::bind((cli.host.as_str(), cli.port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(host = %cli.host, port = cli.port, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let opts = Options {
        node_name: cli.node_name.unwrap_or_else(random_node_name),
        presence_batch_window: cli.presence_batch_ms.map(std::time::Duration::from_millis),
        pubsub: cli.pubsub,
        pubsub_namespace: cli.pubsub_namespace,
        pubsub_routing: match cli.pubsub_routing {
            RoutingArg::Sharded => Routing::default(),
            RoutingArg::All => Routing::AllNodes,
        },
        ..Options::default()
    };
    match serve(listener, opts, fawkes::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--pubsub-routing`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoutingArg {
    /// By topic shard.
    Sharded,
    /// Every broadcast to every node.
    All,
}
