//! The `pingpong` scenario: request/reply throughput and what each reply
//! costs the server.
//!
//! C clients each join `bench:<i % topics>` and keep P `ping` pushes in
//! flight (the Bench channel replies with the payload as received): every
//! reply is answered by the next push. After a warm-up, replies are counted
//! and timed over a fixed window, and the server's CPU time over that
//! window divided by the replies is its cost per reply. With `--workers W`
//! the clients are spread over W processes (see [`crate::workers`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use fawkes_protocol::events;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{
    Failure, FailureKind, Session, Sources, Target, Transport, describe_failures,
    failures_from_json, failures_to_json, parse_secs, reply_response, start_at_rate,
};
use crate::counts::{self, Names, Phase};
use crate::measure::{
    Process, Window, WindowReadings, app_stats, check_own_file_limit, no_server_reading,
};
use crate::options::{Common, WorkerOpts};
use crate::workers::{Parent, Workers, check_limits, emit, share, source_split, worker_argv};

/// Options of the `pingpong` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The WebSocket URL (`vsn=2.0.0` added unless it names one).
    #[arg(long, default_value = "ws://127.0.0.1:4000/socket/websocket")]
    url: String,
    /// Clients, one WebSocket each.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Pushes each client keeps in flight.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    in_flight: u32,
    /// Seconds measured, after the warm-up (fractions allowed).
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: Duration,
    /// Seconds of pushing before the measured window opens.
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    warmup: Duration,
    /// Topics: client i joins `bench:<i % topics>`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    topics: u32,
    /// Bytes of the string each `ping` carries (`{"body": "xx…"}`).
    #[arg(long, default_value_t = 32)]
    payload_bytes: usize,
    /// Clients connected per second before the pushing starts.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    workers: WorkerOpts,
    /// A worker's first client number, for topics and addresses.
    #[arg(long, hide = true, default_value_t = 0)]
    first_client: usize,
}

/// What every client needs to know.
struct Ctx {
    target: Target,
    sources: Sources,
    topics: usize,
    in_flight: usize,
    payload: Value,
    step_timeout: Duration,
}

/// What a client reports.
enum Event {
    /// Connected and joined.
    Joined,
    /// Never joined.
    Failed(Failure),
    /// Done pushing: its counts over the window.
    Done(Counts),
}

/// Replies counted over the measured window, by one client or many:
/// those received inside it, and the pushes sent all told.
type Counts = counts::Counts<Replies>;

/// The names of pingpong's [`Counts`].
struct Replies;

impl Names for Replies {
    const IN_WINDOW: &'static str = "replies";
    const TOTAL: &'static str = "sent";
}

/// The clients of this process once connected: told the window through
/// `window`, they report `Done` on `rx`.
struct Clients {
    rx: mpsc::UnboundedReceiver<Event>,
    window: watch::Sender<Option<Window>>,
    stop: CancellationToken,
    tracker: TaskTracker,
    joined: usize,
    join_failures: Vec<Failure>,
    took: Duration,
}

impl Clients {
    /// Connects `n` clients numbered from `first`, at `rate`, and waits
    /// until each has joined or failed.
    async fn connect(ctx: Arc<Ctx>, n: usize, first: usize, rate: f64, label: &str) -> Clients {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (window, window_rx) = watch::channel(None);
        let start = Instant::now();
        let (stop, tracker) = start_at_rate(n, rate, {
            let ctx = ctx.clone();
            move |i, stop| client(first + i, ctx.clone(), tx.clone(), window_rx.clone(), stop)
        });
        let deadline = start
            + Duration::from_secs_f64(n as f64 / rate)
            + 2 * ctx.step_timeout
            + Duration::from_secs(10);
        let (mut joined, mut join_failures) = (0, Vec::new());
        let mut progress = interval(Duration::from_secs(1));
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        progress.tick().await;
        while joined + join_failures.len() < n {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Event::Joined) => joined += 1,
                    Some(Event::Failed(f)) => join_failures.push(f),
                    // Only after the window is set.
                    Some(Event::Done(_)) => {}
                    None => break,
                },
                _ = progress.tick() => eprintln!(
                    "  {label}{:>5.1} s: joined {joined}, failed {}",
                    start.elapsed().as_secs_f64(), join_failures.len()
                ),
                _ = sleep_until(deadline) => break,
            }
        }
        for _ in joined + join_failures.len()..n {
            join_failures.push(Failure::new(
                FailureKind::Timeout,
                "no report before the deadline",
            ));
        }
        Clients {
            rx,
            window,
            stop,
            tracker,
            joined,
            join_failures,
            took: start.elapsed(),
        }
    }

    /// Starts the pushing: measured over `window`, which ends the run.
    /// Returns the counts of every joined client; the run waits past the
    /// window for replies still in flight (a timeout at most).
    async fn run(mut self, window: Window, step_timeout: Duration) -> Counts {
        let _ = self.window.send(Some(window));
        let mut counts = Counts::default();
        let deadline = window.to + step_timeout + Duration::from_secs(5);
        let mut done = 0;
        while done < self.joined {
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(Event::Done(c)) => {
                        done += 1;
                        counts.merge(c);
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = sleep_until(deadline) => break,
            }
        }
        if done < self.joined {
            let missing = self.joined - done;
            counts.failures.extend(std::iter::repeat_n(
                Failure::new(FailureKind::Timeout, "no counts after the window"),
                missing,
            ));
        }
        self.stop.cancel();
        self.tracker.close();
        let _ = timeout(Duration::from_secs(5), self.tracker.wait()).await;
        counts
    }
}

/// The payload every `ping` carries.
fn payload(bytes: usize) -> Value {
    json!({ "body": "x".repeat(bytes) })
}

/// Runs the scenario, prints its summary and JSON line, and returns the
/// JSON report.
///
/// # Errors
///
/// Bad options, a non-loopback server, too low a file limit, or a server
/// process that cannot be read at the start; and, after the report is
/// printed, any client that failed to join or failed while pushing.
pub async fn run(args: Args) -> Result<Value, String> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be above 0".into());
    }
    if let Some(index) = args.workers.worker_index {
        return worker(args, index).await;
    }
    let target = Target::resolve(&args.url, Transport::WebSocket).await?;
    let w = args.workers.count();
    check_limits(args.clients, w, args.common.server_pid)?;
    let server = args.common.server_pid.map(|pid| Process(Some(pid)));
    // Fails early when the pid is wrong.
    server.map(Process::cpu_ms).transpose()?;
    let stats_before = app_stats(target.addr).await;
    println!(
        "pingpong: {} clients × {} in flight to {}{}, warm-up {} s, measured {} s",
        args.clients,
        args.in_flight,
        target.url,
        args.workers.header(),
        args.warmup.as_secs_f64(),
        args.duration.as_secs_f64()
    );

    let step_timeout = Duration::from_secs(args.common.timeout);
    let phase = phase(&args, server);
    let (joined, join_failures, connect_took, cpu, counts, my_cpu_extra) = if w > 1 {
        let sources = source_split(w, args.common.source_addrs)?;
        let start = Instant::now();
        let mut children =
            Workers::spawn((0..w).map(|i| worker_args(&args, w, i, sources)).collect())?;
        let limit = Duration::from_secs_f64(args.clients as f64 / args.rate)
            + 2 * step_timeout
            + Duration::from_secs(20);
        let ready = children.next_all("ready", start + limit).await?;
        let connect_took = start.elapsed();
        let mut joined = 0;
        let mut join_failures = Vec::new();
        for r in &ready {
            joined += r.get("joined").and_then(Value::as_u64).unwrap_or(0) as usize;
            join_failures.extend(failures_from_json(
                r.get("failures").unwrap_or(&Value::Null),
            )?);
        }
        let grace = step_timeout + Duration::from_secs(20);
        let (cpu, counts, children_cpu) = phase.measure_workers(children, grace).await?;
        (
            joined,
            join_failures,
            connect_took,
            cpu,
            counts,
            children_cpu,
        )
    } else {
        let ctx = context(
            &args,
            target.clone(),
            Sources::new(args.common.source_addrs),
        )?;
        let clients = Clients::connect(ctx, args.clients, 0, args.rate, "").await;
        let (joined, join_failures, connect_took) =
            (clients.joined, clients.join_failures.clone(), clients.took);
        let pushing = |window| clients.run(window, step_timeout);
        let (cpu, counts) = phase.measure("clients", pushing).await?;
        (joined, join_failures, connect_took, cpu, counts, 0)
    };
    let stats_after = app_stats(target.addr).await;
    let my_cpu = cpu.client_ms + my_cpu_extra;
    report(
        &args,
        Report {
            joined,
            join_failures,
            connect_took,
            cpu,
            my_cpu,
            counts,
            stats_before,
            stats_after,
        },
    )
}

/// What the summary is made of.
struct Report {
    joined: usize,
    join_failures: Vec<Failure>,
    connect_took: Duration,
    cpu: WindowReadings,
    my_cpu: u64,
    counts: Counts,
    stats_before: Option<Value>,
    stats_after: Option<Value>,
}

/// Prints the summary and the JSON line.
fn report(args: &Args, r: Report) -> Result<Value, String> {
    let Report {
        joined,
        join_failures,
        connect_took,
        cpu,
        my_cpu,
        counts,
        stats_before,
        stats_after,
    } = r;
    let secs = cpu.window.length().as_secs_f64();
    let per_s = counts.in_window as f64 / secs;
    let p = |q: f64| counts.percentile_ms(q);
    let (p50, p90, p99, max) = (p(50.0), p(90.0), p(99.0), counts.max_ms());
    let server_us = counts.us_per(cpu.server_ms);
    let client_us = counts.us_per(Some(my_cpu));
    let timeouts = counts
        .failures
        .iter()
        .filter(|f| f.kind == FailureKind::Timeout)
        .count();
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    let stat = |v: &Option<Value>, key: &str| v.as_ref().and_then(|s| s.get(key)).cloned();

    println!(
        "joined    {joined} of {} in {:.1} s; failed: {}",
        args.clients,
        connect_took.as_secs_f64(),
        describe_failures(&join_failures)
    );
    println!(
        "replies   {} in {secs:.3} s = {per_s:.0}/s ({} pushes sent in all)",
        counts.in_window, counts.total
    );
    println!(
        "latency   p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        opt(p50),
        opt(p90),
        opt(p99),
        opt(max)
    );
    match (cpu.server_ms, server_us) {
        (Some(ms), Some(us)) => println!(
            "cpu       server {ms} ms = {us:.2} µs per reply; fawkes-bench {my_cpu} ms = {} µs per reply",
            client_us.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
        ),
        _ => println!(
            "cpu       fawkes-bench {my_cpu} ms over the window{}",
            no_server_reading(args.common.server_pid)
        ),
    }
    println!(
        "failures  while pushing: {}",
        describe_failures(&counts.failures)
    );
    let report = json!({
        "scenario": "pingpong",
        "clients": args.clients,
        "in_flight": args.in_flight,
        "workers": args.workers.workers,
        "payload_bytes": args.payload_bytes,
        "joined": joined,
        "join_failures": join_failures.len(),
        "warmup_s": args.warmup.as_secs_f64(),
        "window_s": (secs * 1000.0).round() / 1000.0,
        "replies": counts.in_window,
        "sent": counts.total,
        "replies_per_s": per_s.round(),
        "latency_p50_ms": p50,
        "latency_p90_ms": p90,
        "latency_p99_ms": p99,
        "latency_max_ms": max,
        "server_cpu_ms": cpu.server_ms,
        "server_cpu_us_per_reply": server_us,
        "client_cpu_ms": my_cpu,
        "client_cpu_us_per_reply": client_us,
        "failures": counts.failures.len(),
        "timeouts": timeouts,
        "server_sockets_before": stat(&stats_before, "sockets"),
        "server_sockets_after": stat(&stats_after, "sockets"),
    });
    println!("{report}");
    let lost = join_failures.len() + counts.failures.len();
    if lost > 0 {
        return Err(format!(
            "{lost} of {} clients failed to join or while pushing",
            args.clients
        ));
    }
    Ok(report)
}

fn context(args: &Args, target: Target, sources: Sources) -> Result<Arc<Ctx>, String> {
    let in_flight = usize::try_from(args.in_flight).map_err(|e| e.to_string())?;
    Ok(Arc::new(Ctx {
        target,
        sources,
        topics: args.topics as usize,
        in_flight,
        payload: payload(args.payload_bytes),
        step_timeout: Duration::from_secs(args.common.timeout),
    }))
}

/// The warm-up and the window, reading `server`'s CPU time.
fn phase(args: &Args, server: Option<Process>) -> Phase {
    Phase {
        warmup: args.warmup,
        duration: args.duration,
        server,
        rss_every: None,
    }
}

/// The options worker `w` of `workers` runs with.
fn worker_args(args: &Args, workers: usize, w: usize, sources: u8) -> Vec<String> {
    let (first, count) = share(args.clients, workers, w);
    let secs = |d: Duration| d.as_secs_f64().to_string();
    let own = [
        ("--url", args.url.clone()),
        ("--clients", count.to_string()),
        ("--first-client", first.to_string()),
        ("--in-flight", args.in_flight.to_string()),
        ("--duration", secs(args.duration)),
        ("--warmup", secs(args.warmup)),
        ("--topics", args.topics.to_string()),
        ("--payload-bytes", args.payload_bytes.to_string()),
        ("--rate", (args.rate / workers as f64).to_string()),
        ("--timeout", args.common.timeout.to_string()),
    ];
    worker_argv("pingpong", own, w, sources)
}

/// A worker of `--workers`: connects its share, says `ready`, pushes from
/// the parent's `go` for the warm-up and the window, and writes its counts
/// and its CPU time over the window as `result`.
async fn worker(args: Args, index: usize) -> Result<Value, String> {
    let target = Target::resolve(&args.url, Transport::WebSocket).await?;
    check_own_file_limit(args.clients)?;
    let mut parent = Parent::watch(index);
    let sources = Sources::starting_at(args.workers.source_offset, args.common.source_addrs)?;
    let ctx = context(&args, target, sources)?;
    let label = format!("worker {index}: ");
    let clients = Clients::connect(ctx, args.clients, args.first_client, args.rate, &label).await;
    emit(
        index,
        "ready",
        json!({
            "joined": clients.joined,
            "failures": failures_to_json(&clients.join_failures),
        }),
    );
    parent.go().await;
    let phase = phase(&args, None);
    let pushing = |window| clients.run(window, Duration::from_secs(args.common.timeout));
    let (cpu, counts) = phase.measure("clients", pushing).await?;
    Ok(counts.emit_result(index, cpu.client_ms))
}

/// One client: connect, join, wait for the window, then keep
/// `in_flight` pushes going until it closes.
async fn client(
    i: usize,
    ctx: Arc<Ctx>,
    tx: mpsc::UnboundedSender<Event>,
    mut window: watch::Receiver<Option<Window>>,
    stop: CancellationToken,
) {
    let topic = format!("bench:{}", i % ctx.topics);
    let limit = ctx.step_timeout;
    let joining = async {
        let mut session = timeout(
            limit,
            Session::open(&ctx.target, ctx.sources.for_connection(i)),
        )
        .await
        .map_err(|_| Failure::new(FailureKind::Timeout, "connect and handshake"))??;
        let join_ref = timeout(limit, session.join_with_ref(&topic))
            .await
            .map_err(|_| Failure::new(FailureKind::Timeout, "join reply"))??;
        Ok::<_, Failure>((session, join_ref))
    };
    let (mut session, join_ref) = tokio::select! {
        _ = stop.cancelled() => return,
        r = joining => match r {
            Ok(joined) => joined,
            Err(f) => {
                let _ = tx.send(Event::Failed(f));
                return;
            }
        },
    };
    let _ = tx.send(Event::Joined);

    // Idle until the window is set: heartbeats keep the server from
    // closing a socket that waits long for the others.
    let beat_every = Duration::from_secs(30);
    let mut beat = interval_at(Instant::now() + beat_every, beat_every);
    let mut counts = Counts::default();
    let window = loop {
        let lost = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            // The guard is dropped at once: it must not live across awaits.
            w = async { window.wait_for(Option::is_some).await.map(|w| *w) } => match w {
                Ok(w) => break w,
                Err(_) => return,
            },
            _ = beat.tick() => session.heartbeat().await,
            r = session.recv() => r.map(drop),
        };
        // The socket was lost while waiting.
        if let Err(f) = lost {
            counts.failures.push(f);
            let _ = tx.send(Event::Done(counts));
            return;
        }
    };
    let Some(window) = window else { return };

    if let Err(f) = pushes(
        &mut session,
        &ctx,
        &topic,
        &join_ref,
        window,
        &mut counts,
        &stop,
    )
    .await
    {
        counts.failures.push(f);
    } else {
        let _ = timeout(Duration::from_secs(2), session.close()).await;
    }
    let _ = tx.send(Event::Done(counts));
}

/// Keeps `in_flight` pings going until the window closes, then waits for
/// those still in flight.
async fn pushes(
    session: &mut Session,
    ctx: &Ctx,
    topic: &str,
    join_ref: &Value,
    window: Window,
    counts: &mut Counts,
    stop: &CancellationToken,
) -> Result<(), Failure> {
    // Refs in send order with their send times: replies come in order, so
    // the match is nearly always the front.
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::with_capacity(ctx.in_flight);
    for _ in 0..ctx.in_flight {
        pending.push_back(ping(session, ctx, topic, join_ref).await?);
        counts.total += 1;
    }
    // The oldest ping's age is checked each second rather than with a timer
    // per reply: a timeout need not be precise, the replies' cost should be
    // the server's.
    let mut check = interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while let Some(&(_, oldest)) = pending.front() {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            _ = check.tick() => {
                if oldest.elapsed() >= ctx.step_timeout {
                    return Err(Failure::new(
                        FailureKind::Timeout,
                        format!("a ping unanswered for {} s", ctx.step_timeout.as_secs()),
                    ));
                }
                continue;
            }
            r = session.recv() => r?,
        };
        if msg.event != events::REPLY || msg.topic != topic {
            continue;
        }
        let Some(n) = msg.ref_.as_ref().and_then(number) else {
            continue;
        };
        let Some(pos) = pending.iter().position(|&(r, _)| r == n) else {
            continue;
        };
        let now = Instant::now();
        let sent_at = pending.remove(pos).map_or(now, |(_, t)| t);
        reply_response(&msg)?;
        if window.contains(now) {
            counts.in_window += 1;
            counts.latency.record(now - sent_at);
        }
        if now < window.to {
            pending.push_back(ping(session, ctx, topic, join_ref).await?);
            counts.total += 1;
        }
    }
    Ok(())
}

/// A ref's number: the tool sends decimal strings.
fn number(r: &Value) -> Option<u64> {
    r.as_str().and_then(|s| s.parse().ok())
}

/// Sends one `ping`; its ref number and send time.
async fn ping(
    session: &mut Session,
    ctx: &Ctx,
    topic: &str,
    join_ref: &Value,
) -> Result<(u64, Instant), Failure> {
    let r = session
        .push(Some(join_ref.clone()), topic, "ping", ctx.payload.clone())
        .await?;
    Ok((number(&r).unwrap_or(0), Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_are_counted_over_the_window() {
        let server = crate::testing::Server::start().await;
        let args = Args {
            url: server.ws_url(),
            clients: 8,
            in_flight: 4,
            duration: Duration::from_millis(800),
            warmup: Duration::from_millis(200),
            topics: 3,
            payload_bytes: 16,
            rate: 1000.0,
            common: Common {
                server_pid: Some(std::process::id()),
                source_addrs: 2,
                timeout: 5,
            },
            workers: WorkerOpts::single(),
            first_client: 0,
        };
        let report = run(args).await.unwrap();
        server.stop().await;
        assert_eq!(report["joined"], 8, "{report}");
        assert_eq!(report["failures"], 0, "{report}");
        assert_eq!(report["timeouts"], 0, "{report}");
        let replies = report["replies"].as_u64().unwrap();
        assert!(replies > 0, "{report}");
        assert!(
            report["sent"].as_u64().unwrap() >= replies + 8 * 4,
            "{report}"
        );
        assert!(report["latency_p99_ms"].as_f64().is_some(), "{report}");
        assert!(report["server_cpu_ms"].as_u64().is_some(), "{report}");
        assert_eq!(report["server_sockets_before"], 0, "{report}");
    }
}
