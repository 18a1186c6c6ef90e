//! TapRacer's binary: `cargo run --release -p tapracer`, then open
//! <http://localhost:4000> (`--help` for the options).

use std::time::Duration;

use clap::Parser;
use tapracer::game::Rules;
use tapracer::{Options, serve};
use tracing_subscriber::EnvFilter;

/// TapRacer: a multiplayer tapping race in the browser, on Fawkes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 4000)]
    port: u16,
    /// Address to listen on (0.0.0.0 to let phones on the network in).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// Taps to the line.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    track: u64,
    /// Countdown from `start` to the start signal, in ms (at most an hour).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(..=3_600_000))]
    countdown_ms: u64,
    /// A race still running this long after the start signal ends without a
    /// winner, in ms (at most a day).
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    max_race_ms: u64,
    /// How often positions are broadcast while racing, in ms (at most a minute).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    tick_ms: u64,
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
        rules: Rules {
            track: cli.track,
            countdown: Duration::from_millis(cli.countdown_ms),
            max_race: Duration::from_millis(cli.max_race_ms),
        },
        tick: Duration::from_millis(cli.tick_ms),
    };
    match serve(listener, opts, fawkes::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_bounds() {
        let cli = Cli::try_parse_from(["tapracer"]).unwrap();
        assert_eq!(
            (cli.track, cli.countdown_ms, cli.max_race_ms, cli.tick_ms),
            (50, 3000, 60_000, 50)
        );
        assert_eq!(cli.host, "127.0.0.1");
        let cli = Cli::try_parse_from(["tapracer", "--port", "0", "--countdown-ms", "0"]).unwrap();
        assert_eq!((cli.port, cli.countdown_ms), (0, 0));
        for bad in [
            &["--track", "0"][..],
            &["--tick-ms", "0"],
            &["--max-race-ms", "0"],
            &["--countdown-ms", "3600001"],
            &["--port", "65536"],
        ] {
            let args = std::iter::once("tapracer").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
