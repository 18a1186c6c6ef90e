//! `fawkes-bench`: the Fawkes load tool.
//!
//! Each scenario is a subcommand in a module of its own, driving a server
//! such as the conformance app over loopback WebSockets (or LongPoll) and
//! printing a human summary followed by one JSON line for scripts:
//!
//! ```text
//! fawkes-bench connect --connections 10000 --server-pid "$(pgrep -n fawkes-conformance)"
//! fawkes-bench connect --transport longpoll --url http://127.0.0.1:4000/socket/longpoll
//! fawkes-bench presence --clients 10000 --rate 1000 --server-pid "$(pgrep -n fawkes-conformance)"
//! fawkes-bench connect --connections 30000 --workers 2 --server-pid "$(pgrep -n fawkes-conformance)"
//! fawkes-bench pingpong --clients 100 --in-flight 10 --duration 10 --server-pid "$(pgrep -n fawkes-conformance)"
//! fawkes-bench churn --loops 20 --warmup 10 --duration 60 --server-pid "$(pgrep -n fawkes-conformance)"
//! fawkes-bench cluster --nodes ws://127.0.0.1:4410/socket/websocket,ws://127.0.0.1:4411/socket/websocket --placement local
//! ```
//!
//! Beyond one process's open-file limit, `--workers W` (connect, pingpong,
//! churn) runs this binary again as W worker processes, each with a share
//! of the clients and its own source addresses ([`workers`]).
//!
//! Every run stops by itself: scenarios hold their connections for a set
//! time and give up on anything that does not answer within a timeout.

mod churn;
mod client;
mod cluster;
mod connect;
mod counts;
mod fanout;
mod inprocess;
mod latency;
mod longpoll;
mod measure;
mod options;
mod pingpong;
mod presence;
#[cfg(test)]
mod testing;
mod workers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Drives a Fawkes (or Phoenix) server with many WebSocket or LongPoll
/// clients.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Worker threads of the tool's runtime. One leaves the other core to
    /// the server on a 2-core machine.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

/// The scenarios.
#[derive(Subcommand, Debug)]
enum Command {
    /// Open idle connections, each joined to one topic, and measure the
    /// server's memory per connection.
    Connect(connect::Args),
    /// A join storm into one presence topic: every client keeps the
    /// topic's presence list; measures the bytes, frames and server CPU
    /// until every client has the full list.
    Presence(presence::Args),
    /// Broadcasts to many subscribers of one topic; delivery latency from
    /// each send to each receipt, and server CPU per delivery.
    Fanout(fanout::Args),
    /// Clients keeping pushes in flight; replies per second, latency and
    /// server CPU per reply.
    Pingpong(pingpong::Args),
    /// Connect, join, push, leave and disconnect in a loop; cycles per
    /// second, server CPU per cycle, and a leak check against /api/stats.
    Churn(churn::Args),
    /// Broadcasts from one node of a cluster to subscribers on every node:
    /// local and cross-node latency, throughput, and Redis traffic per
    /// broadcast.
    Cluster(cluster::Args),
    /// The real `fawkes` sockets and channels over in-memory transports,
    /// in this process: memory per socket and broadcast time at a million
    /// sockets, beyond what the machine's file limits allow over a network.
    Inprocess(inprocess::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Connect(args) => connect::run(args).await.map(drop),
            Command::Presence(args) => presence::run(args).await.map(drop),
            Command::Fanout(args) => fanout::run(args).await.map(drop),
            Command::Pingpong(args) => pingpong::run(args).await.map(drop),
            Command::Churn(args) => churn::run(args).await.map(drop),
            Command::Cluster(args) => cluster::run(args).await.map(drop),
            Command::Inprocess(args) => inprocess::run(args).await.map(drop),
        }
    });
    // Connections still closing must not delay the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
