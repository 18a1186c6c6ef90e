//! The `churn` scenario: sockets and channels that come and go, and the
//! leak check that they leave nothing behind.
//!
//! K loops, each repeating one cycle: connect, join `bench:<k % topics>`,
//! `ping` (awaiting the reply), leave (awaiting the reply) and a clean
//! WebSocket close. After a warm-up, cycles are counted and timed over a
//! window, the server's CPU time over it divided by the cycles is its cost
//! per cycle, and its resident memory is sampled at intervals. Once every
//! loop has stopped, the server's `GET /api/stats` must come back to the
//! socket and channel counts it had before the run. With `--workers W` the
//! loops run in W processes (see [`crate::workers`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::client::{
    Failure, FailureKind, Session, Sources, Target, Transport, describe_failures, parse_secs,
};
use crate::counts::{self, Names, Phase};
use crate::measure::{Process, Window, WindowReadings, app_stats, check_own_file_limit};
use crate::options::{Common, WorkerOpts};
use crate::workers::{Parent, Workers, check_limits, emit, share, source_split, worker_argv};

/// Options of the `churn` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The WebSocket URL (`vsn=2.0.0` added unless it names one).
    #[arg(long, default_value = "ws://127.0.0.1:4000/socket/websocket")]
    url: String,
    /// Concurrent loops, each with at most one connection at a time.
    #[arg(long, default_value_t = 20)]
    loops: usize,
    /// Seconds measured, after the warm-up (fractions allowed).
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    duration: Duration,
    /// Seconds of cycling before the measured window opens.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    warmup: Duration,
    /// Topics: loop k joins `bench:<k % topics>`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    topics: u32,
    /// Bytes of the string the `ping` of each cycle carries.
    #[arg(long, default_value_t = 32)]
    payload_bytes: usize,
    /// Seconds between readings of the server's resident memory inside
    /// the window (it is also read at the window's opening and close).
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    sample_every: Duration,
    /// Seconds to wait, once the loops have stopped, for the server's
    /// sockets and channels to come back to their count before the run.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    settle: Duration,
    /// Fail the run when the server's resident memory grew by more than
    /// this many KiB from the window's opening to its close. Without it,
    /// growth is reported only.
    #[arg(long)]
    max_rss_growth_kib: Option<u64>,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    workers: WorkerOpts,
    /// A worker's first loop number, for topics.
    #[arg(long, hide = true, default_value_t = 0)]
    first_loop: usize,
}

/// What every loop needs to know.
struct Ctx {
    target: Target,
    sources: Sources,
    topics: usize,
    payload: Value,
    step_timeout: Duration,
}

/// Cycles of one loop or many: those that ended inside the window, and
/// all that completed.
type Counts = counts::Counts<Cycles>;

/// The names of churn's [`Counts`].
struct Cycles;

impl Names for Cycles {
    const IN_WINDOW: &'static str = "cycles";
    const TOTAL: &'static str = "total";
}

/// Runs the scenario, prints its summary and JSON line, and returns the
/// JSON report.
///
/// # Errors
///
/// Bad options, a non-loopback server, too low a file limit, a server
/// process that cannot be read or a server without `GET /api/stats` at the
/// start; and, after the report is printed, a failed leak check or any
/// failed cycle.
pub async fn run(args: Args) -> Result<Value, String> {
    if args.duration.is_zero() {
        return Err("--duration must be above 0".into());
    }
    if let Some(index) = args.workers.worker_index {
        return worker(args, index).await;
    }
    let target = Target::resolve(&args.url, Transport::WebSocket).await?;
    let w = args.workers.count();
    check_limits(args.loops, w, args.common.server_pid)?;
    let server = args.common.server_pid.map(|pid| Process(Some(pid)));
    let rss_before = server.map(Process::rss_kib).transpose()?;
    let baseline = app_stats(target.addr)
        .await
        .ok_or("the leak check needs the server's GET /api/stats, which did not answer")?;
    let count = |stats: &Value, key: &str| stats.get(key).and_then(Value::as_u64);
    let base = (count(&baseline, "sockets"), count(&baseline, "channels"));
    println!(
        "churn: {} loops of connect, join, ping, leave, close to {}{}, warm-up {} s, measured {} s",
        args.loops,
        target.url,
        args.workers.header(),
        args.warmup.as_secs_f64(),
        args.duration.as_secs_f64()
    );

    let step_timeout = Duration::from_secs(args.common.timeout);
    let phase = phase(&args, server);
    let (readings, counts, children_cpu) = if w > 1 {
        let sources = source_split(w, args.common.source_addrs)?;
        let mut children =
            Workers::spawn((0..w).map(|i| worker_args(&args, w, i, sources)).collect())?;
        children
            .next_all("ready", Instant::now() + Duration::from_secs(30))
            .await?;
        // A cycle under way at the close has six steps to finish.
        let grace = 6 * step_timeout + Duration::from_secs(20);
        phase.measure_workers(children, grace).await?
    } else {
        let ctx = context(
            &args,
            target.clone(),
            Sources::new(args.common.source_addrs),
        );
        let loops = |window| run_loops(ctx, args.loops, 0, window);
        let (readings, counts) = phase.measure("loops", loops).await?;
        (readings, counts, 0)
    };

    // Closed sockets and left channels may take a moment to be gone.
    let settle_start = Instant::now();
    let mut stats_after = None;
    loop {
        let stats = app_stats(target.addr).await;
        let back = stats
            .as_ref()
            .is_some_and(|s| (count(s, "sockets"), count(s, "channels")) == base);
        stats_after = stats.or(stats_after);
        if back || settle_start.elapsed() >= args.settle {
            break;
        }
        sleep(Duration::from_millis(200)).await;
    }
    let settled_in = settle_start.elapsed();
    let rss_after = server.and_then(|s| s.rss_kib().map_err(|e| eprintln!("warning: {e}")).ok());
    report(
        &args,
        Report {
            baseline,
            stats_after,
            settled_in,
            rss_before,
            rss_after,
            my_cpu: readings.client_ms + children_cpu,
            readings,
            counts,
        },
    )
}

/// What the summary is made of.
struct Report {
    baseline: Value,
    stats_after: Option<Value>,
    settled_in: Duration,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    my_cpu: u64,
    readings: WindowReadings,
    counts: Counts,
}

/// Prints the summary and the JSON line.
fn report(args: &Args, r: Report) -> Result<Value, String> {
    let Report {
        baseline,
        stats_after,
        settled_in,
        rss_before,
        rss_after,
        my_cpu,
        readings,
        counts,
    } = r;
    let secs = readings.window.length().as_secs_f64();
    let per_s = counts.in_window as f64 / secs;
    let p = |q: f64| counts.percentile_ms(q);
    let (p50, p99, max) = (p(50.0), p(99.0), counts.max_ms());
    let server_us = counts.us_per(readings.server_ms);
    let client_us = counts.us_per(Some(my_cpu));
    let get = |v: Option<&Value>, key: &str| v.and_then(|s| s.get(key)).and_then(Value::as_u64);
    let (sockets_before, channels_before) = (
        get(Some(&baseline), "sockets"),
        get(Some(&baseline), "channels"),
    );
    let (sockets_after, channels_after) = (
        get(stats_after.as_ref(), "sockets"),
        get(stats_after.as_ref(), "channels"),
    );
    let leak_ok = stats_after.is_some()
        && (sockets_after, channels_after) == (sockets_before, channels_before);
    let first = readings.rss.first().map(|&(_, kib)| kib);
    let last = readings.rss.last().map(|&(_, kib)| kib);
    let growth = first.zip(last).map(|(f, l)| l as i64 - f as i64);
    let growth_ok = match (args.max_rss_growth_kib, growth) {
        (Some(max), Some(g)) => g <= max as i64,
        _ => true,
    };
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());

    println!(
        "cycles    {} in {secs:.3} s = {per_s:.1}/s ({} completed in all)",
        counts.in_window, counts.total
    );
    println!(
        "cycle     p50 {} ms, p99 {} ms, max {} ms",
        opt(p50),
        opt(p99),
        opt(max)
    );
    match (readings.server_ms, server_us) {
        (Some(ms), Some(us)) => println!(
            "cpu       server {ms} ms = {us:.1} µs per cycle; fawkes-bench {my_cpu} ms = {} µs per cycle",
            client_us.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
        ),
        _ => println!("cpu       fawkes-bench {my_cpu} ms over the window (no server reading)"),
    }
    println!("failures  {}", describe_failures(&counts.failures));
    println!(
        "leak      sockets {} → {}, channels {} → {} (GET /api/stats, {:.1} s after the last loop stopped): {}",
        num(sockets_before),
        num(sockets_after),
        num(channels_before),
        num(channels_after),
        settled_in.as_secs_f64(),
        if leak_ok {
            "back to the baseline"
        } else {
            "NOT back to the baseline"
        }
    );
    if !readings.rss.is_empty() {
        let samples: Vec<String> = readings
            .rss
            .iter()
            .map(|(t, kib)| format!("{} s {kib}", (t * 10.0).round() / 10.0))
            .collect();
        println!("rss       KiB over the window: {}", samples.join(", "));
        println!(
            "          first {} KiB, last {} KiB: growth {} KiB{}; before the run {} KiB, after it {} KiB",
            num(first),
            num(last),
            growth.map_or_else(|| "-".to_owned(), |g| format!("{g:+}")),
            match args.max_rss_growth_kib {
                Some(max) if !growth_ok => format!(" (over the allowed {max})"),
                Some(max) => format!(" (allowed {max})"),
                None => String::new(),
            },
            num(rss_before),
            num(rss_after)
        );
    }
    let report = json!({
        "scenario": "churn",
        "loops": args.loops,
        "workers": args.workers.workers,
        "warmup_s": args.warmup.as_secs_f64(),
        "window_s": (secs * 1000.0).round() / 1000.0,
        "cycles": counts.in_window,
        "cycles_total": counts.total,
        "cycles_per_s": (per_s * 10.0).round() / 10.0,
        "cycle_p50_ms": p50,
        "cycle_p99_ms": p99,
        "cycle_max_ms": max,
        "server_cpu_ms": readings.server_ms,
        "server_cpu_us_per_cycle": server_us,
        "client_cpu_ms": my_cpu,
        "client_cpu_us_per_cycle": client_us,
        "failures": counts.failures.len(),
        "sockets_before": sockets_before,
        "sockets_after": sockets_after,
        "channels_before": channels_before,
        "channels_after": channels_after,
        "settled_s": (settled_in.as_secs_f64() * 10.0).round() / 10.0,
        "leak_check": leak_ok,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_samples": readings.rss.iter().map(|&(t, kib)| json!([(t * 10.0).round() / 10.0, kib])).collect::<Vec<_>>(),
        "rss_first_kib": first,
        "rss_last_kib": last,
        "rss_growth_kib": growth,
    });
    println!("{report}");
    let mut problems = Vec::new();
    if !leak_ok {
        problems
            .push("the server's sockets or channels did not come back to the baseline".to_owned());
    }
    if !counts.failures.is_empty() {
        problems.push(format!("{} cycles failed", counts.failures.len()));
    }
    if !growth_ok {
        problems.push("the server's memory grew more than --max-rss-growth-kib".to_owned());
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems.join("; "))
    }
}

fn context(args: &Args, target: Target, sources: Sources) -> Arc<Ctx> {
    Arc::new(Ctx {
        target,
        sources,
        topics: args.topics as usize,
        payload: json!({ "body": "x".repeat(args.payload_bytes) }),
        step_timeout: Duration::from_secs(args.common.timeout),
    })
}

/// The warm-up and the window, reading `server`'s CPU time and memory.
fn phase(args: &Args, server: Option<Process>) -> Phase {
    Phase {
        warmup: args.warmup,
        duration: args.duration,
        server,
        rss_every: server.map(|_| args.sample_every),
    }
}

/// The options worker `w` of `workers` runs with.
fn worker_args(args: &Args, workers: usize, w: usize, sources: u8) -> Vec<String> {
    let (first, count) = share(args.loops, workers, w);
    let secs = |d: Duration| d.as_secs_f64().to_string();
    let own = [
        ("--url", args.url.clone()),
        ("--loops", count.to_string()),
        ("--first-loop", first.to_string()),
        ("--duration", secs(args.duration)),
        ("--warmup", secs(args.warmup)),
        ("--topics", args.topics.to_string()),
        ("--payload-bytes", args.payload_bytes.to_string()),
        ("--timeout", args.common.timeout.to_string()),
    ];
    worker_argv("churn", own, w, sources)
}

/// A worker of `--workers`: says `ready` at once, runs its loops from the
/// parent's `go` for the warm-up and the window, and writes its counts and
/// its CPU time over the window as `result`.
async fn worker(args: Args, index: usize) -> Result<Value, String> {
    let target = Target::resolve(&args.url, Transport::WebSocket).await?;
    check_own_file_limit(args.loops)?;
    let mut parent = Parent::watch(index);
    let sources = Sources::starting_at(args.workers.source_offset, args.common.source_addrs)?;
    let ctx = context(&args, target, sources);
    emit(index, "ready", json!({}));
    parent.go().await;
    let phase = phase(&args, None);
    let loops = |window| run_loops(ctx, args.loops, args.first_loop, window);
    let (readings, counts) = phase.measure("loops", loops).await?;
    Ok(counts.emit_result(index, readings.client_ms))
}

/// Runs `n` loops numbered from `first` until the window closes; their
/// counts together.
async fn run_loops(ctx: Arc<Ctx>, n: usize, first: usize, window: Window) -> Counts {
    let loops: Vec<_> = (0..n)
        .map(|k| tokio::spawn(churn_loop(first + k, ctx.clone(), window)))
        .collect();
    let mut counts = Counts::default();
    for l in loops {
        match l.await {
            Ok(c) => counts.merge(c),
            Err(e) => counts.failures.push(Failure::new(
                FailureKind::Closed,
                format!("loop failed: {e}"),
            )),
        }
    }
    counts
}

/// One loop: cycles until the window closes (a cycle under way then is
/// finished).
async fn churn_loop(k: usize, ctx: Arc<Ctx>, window: Window) -> Counts {
    let topic = format!("bench:{}", k % ctx.topics);
    let mut counts = Counts::default();
    let mut n = 0usize;
    while Instant::now() < window.to {
        let source = ctx.sources.for_connection(k.wrapping_add(n));
        n += 1;
        let start = Instant::now();
        match cycle(&ctx, &topic, source).await {
            Ok(()) => {
                let end = Instant::now();
                counts.total += 1;
                if window.contains(end) {
                    counts.in_window += 1;
                    counts.latency.record(end - start);
                }
            }
            Err(f) => {
                counts.failures.push(f);
                // A server that refuses at once must not make this spin.
                sleep_until(Instant::now() + Duration::from_millis(100)).await;
            }
        }
    }
    counts
}

/// One cycle: connect, join, ping, leave, close, each step within the
/// step timeout.
async fn cycle(ctx: &Ctx, topic: &str, source: Option<std::net::IpAddr>) -> Result<(), Failure> {
    let limit = ctx.step_timeout;
    let late = |step: &'static str| move |_| Failure::new(FailureKind::Timeout, step);
    let mut session = timeout(limit, Session::open(&ctx.target, source))
        .await
        .map_err(late("connect and handshake"))??;
    let join_ref = timeout(limit, session.join_with_ref(topic))
        .await
        .map_err(late("join reply"))??;
    let ping = async {
        let r = session
            .push(Some(join_ref.clone()), topic, "ping", ctx.payload.clone())
            .await?;
        session.reply(&r).await
    };
    timeout(limit, ping).await.map_err(late("ping reply"))??;
    timeout(limit, session.leave(topic, &join_ref))
        .await
        .map_err(late("leave reply"))??;
    timeout(limit, session.close_clean())
        .await
        .map_err(late("close"))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cycles_and_leaves_nothing_behind() {
        let server = crate::testing::Server::start().await;
        let args = Args {
            url: server.ws_url(),
            loops: 4,
            duration: Duration::from_millis(1000),
            warmup: Duration::from_millis(200),
            topics: 2,
            payload_bytes: 16,
            sample_every: Duration::from_millis(300),
            settle: Duration::from_secs(5),
            max_rss_growth_kib: None,
            common: Common {
                server_pid: Some(std::process::id()),
                source_addrs: 2,
                timeout: 5,
            },
            workers: WorkerOpts::single(),
            first_loop: 0,
        };
        let report = run(args).await.unwrap();
        server.stop().await;
        assert_eq!(report["failures"], 0, "{report}");
        assert_eq!(report["leak_check"], true, "{report}");
        assert_eq!(report["sockets_after"], 0, "{report}");
        assert_eq!(report["channels_after"], 0, "{report}");
        assert!(report["cycles"].as_u64().unwrap() > 0, "{report}");
        assert!(report["cycle_p99_ms"].as_f64().is_some(), "{report}");
        // Opening, every 300 ms, close.
        assert!(
            report["rss_samples"].as_array().unwrap().len() >= 3,
            "{report}"
        );
    }

    #[test]
    fn a_socket_left_behind_or_growth_over_the_limit_fails_the_run() {
        let window = Window::after(Instant::now(), Duration::ZERO, Duration::from_secs(1));
        let r = |after: Value, rss: Vec<(f64, u64)>| Report {
            baseline: json!({"sockets": 0, "channels": 0}),
            stats_after: Some(after),
            settled_in: Duration::ZERO,
            rss_before: None,
            rss_after: None,
            my_cpu: 0,
            readings: WindowReadings {
                window,
                server_ms: None,
                client_ms: 0,
                rss,
            },
            counts: Counts::default(),
        };
        let mut args = <Only as clap::Parser>::parse_from(["churn"]).args;
        let back = json!({"sockets": 0, "channels": 0});
        assert!(report(&args, r(back.clone(), vec![])).is_ok());
        let left = json!({"sockets": 1, "channels": 0});
        assert!(report(&args, r(left, vec![])).is_err());
        args.max_rss_growth_kib = Some(100);
        let grew = |kib| vec![(0.0, 5000), (1.0, kib)];
        assert!(report(&args, r(back.clone(), grew(5100))).is_ok());
        assert!(report(&args, r(back, grew(5101))).is_err());
    }

    /// The scenario's options alone, parsed as clap does under `churn`.
    #[derive(clap::Parser)]
    struct Only {
        #[command(flatten)]
        args: Args,
    }
}
