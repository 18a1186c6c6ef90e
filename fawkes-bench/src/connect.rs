//! The `connect` scenario: what an idle, joined connection costs the server.
//!
//! Opens connections at a steady rate, joins each to `bench:<i % topics>`,
//! keeps them idle as phoenix.js would (a WebSocket sends a heartbeat every
//! 30 s; a LongPoll client keeps one poll outstanding) and reads the
//! server's resident memory before the first connection and once every
//! connection has joined and the server has settled. The difference divided
//! by the joined connections is the figure DESIGN.md aims at (≤ 6 KiB for a
//! WebSocket).
//!
//! With `--workers W` the connections are opened by W child processes
//! (see [`crate::workers`]), for runs beyond one process's open files: each
//! child takes a share and says when it has joined them, this process then
//! reads the server and adds up the children's samples.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{
    Failure, FailureKind, Session, Sources, Target, Transport, describe_failures,
    failures_from_json, failures_to_json, start_at_rate,
};
use crate::latency::Latencies;
use crate::longpoll::{HttpClients, LongPoll};
use crate::measure::{Process, app_stats, check_own_file_limit, no_server_reading};
use crate::options::{Common, WorkerOpts};
use crate::workers::{Parent, Workers, check_limits, emit, share, source_split, worker_argv};

/// Options of the `connect` scenario.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How clients connect: a WebSocket each, or LongPoll as phoenix.js
    /// (one GET outstanding at all times, no heartbeats).
    #[arg(long, value_enum, default_value_t = Transport::WebSocket)]
    transport: Transport,
    /// The transport's URL, `vsn=2.0.0` added unless it names one: with
    /// websocket a ws:// URL (default ws://127.0.0.1:4000/socket/websocket),
    /// with longpoll the http:// URL of the longpoll path itself (default
    /// http://127.0.0.1:4000/socket/longpoll; not derived from a ws:// one).
    #[arg(long)]
    url: Option<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Topics to spread the joins over: connection i joins `bench:<i % topics>`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    topics: u32,
    /// Connections opened per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds to keep the connections idle once all have joined.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Seconds after the last join at which the server's memory is read;
    /// it is read again at the end of the hold.
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// Seconds between heartbeats of each WebSocket (LongPoll sends none).
    #[arg(long, default_value_t = 30)]
    heartbeat: u64,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    workers: WorkerOpts,
    /// A worker's first connection number, for topics and addresses.
    #[arg(long, hide = true, default_value_t = 0)]
    first_connection: usize,
}

/// How connection tasks reach the server.
enum Via {
    /// A WebSocket each, bound to these source addresses.
    WebSocket(Sources),
    /// LongPoll sessions over these HTTP clients.
    LongPoll(HttpClients),
}

/// What every connection task needs to know.
struct Ctx {
    target: Target,
    via: Via,
    topics: usize,
    step_timeout: Duration,
    heartbeat: Duration,
}

/// What a connection task reports.
enum Event {
    /// Connected and joined, with the time each step took.
    Joined { connect: Duration, join: Duration },
    /// Never joined.
    Failed(Failure),
    /// Joined, then lost before the end of the hold.
    Dropped(Failure),
}

/// The connections' reports so far.
#[derive(Default)]
struct Tally {
    joined: usize,
    failed: Vec<Failure>,
    dropped: Vec<Failure>,
    connect: Latencies,
    join: Latencies,
}

impl Tally {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Joined { connect, join } => {
                self.joined += 1;
                self.connect.record(connect);
                self.join.record(join);
            }
            Event::Failed(f) => self.failed.push(f),
            Event::Dropped(f) => self.dropped.push(f),
        }
    }

    /// Connections that have joined or failed.
    fn settled(&self) -> usize {
        self.joined + self.failed.len()
    }

    /// Applies reports until `until`: connections may drop while idle.
    async fn drain_until(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>, until: Instant) {
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.apply(ev),
                    None => return sleep_until(until).await,
                },
                _ = sleep_until(until) => return,
            }
        }
    }
}

/// Runs the scenario, prints its summary and JSON line, and returns the
/// JSON report.
///
/// # Errors
///
/// Bad options, a non-loopback server, too low a file limit, or a server
/// process that cannot be read at the start; and, after the report is
/// printed, any connection that failed or dropped (so scripts notice).
pub async fn run(args: Args) -> Result<Value, String> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    if let Some(index) = args.workers.worker_index {
        return worker(args, index).await;
    }
    if args.workers.count() > 1 {
        return run_workers(args).await;
    }
    let transport = args.transport;
    let url = args.url.as_deref().unwrap_or(transport.default_url());
    let target = Target::resolve(url, transport).await?;
    check_limits(args.connections, 1, args.common.server_pid)?;
    let server = args.common.server_pid.map(|pid| Process(Some(pid)));
    let me = Process(None);
    let before = Before::read(server, target.addr).await?;

    let n = args.connections;
    print_header(&args, &target.url);
    let mut ramp = Ramp::start(&args, target, "")?;
    ramp.wait(&args).await;
    let ramp_took = ramp.start.elapsed();
    eprintln!(
        "  {:>5.1} s: joined {}, failed {}; holding {} s",
        ramp_took.as_secs_f64(),
        ramp.tally.joined,
        ramp.tally.failed.len(),
        args.hold
    );

    let joined_at = Instant::now();
    let settle = Duration::from_secs(args.settle);
    ramp.drain_until(joined_at + settle).await;
    let rss_after = server.and_then(|s| reading(s.rss_kib()));
    let server_files = server.and_then(Process::open_files);
    let my_files = me.open_files();
    // Only connections still open count towards the memory read.
    let live = ramp.tally.joined - ramp.tally.dropped.len();
    let stats_after = app_stats(ramp.ctx.target.addr).await;
    let hold_end = joined_at + Duration::from_secs(args.hold).max(settle);
    ramp.drain_until(hold_end).await;
    let rss_end = server.and_then(|s| reading(s.rss_kib()));
    let server_cpu = before.server_cpu_since(server);
    let my_cpu = me.cpu_ms()?.saturating_sub(before.my_cpu);
    let tally = ramp.close().await;

    report(
        &args,
        Outcome {
            n,
            workers: 1,
            tally,
            ramp_took,
            live,
            before,
            rss_after,
            rss_end,
            server_files,
            my_files,
            server_cpu,
            my_cpu,
            stats_after,
        },
    )
}

fn print_header(args: &Args, url: &str) {
    let workers = args.workers.header();
    println!(
        "connect: {} {} connections to {url} over {} topics at {}/s{workers}, hold {} s",
        args.connections,
        args.transport.name(),
        args.topics,
        args.rate,
        args.hold
    );
}

/// Connections being opened or held by this process, and their reports.
struct Ramp {
    ctx: Arc<Ctx>,
    rx: mpsc::UnboundedReceiver<Event>,
    stop: CancellationToken,
    tracker: TaskTracker,
    tally: Tally,
    start: Instant,
    /// Printed before progress lines: which worker this is.
    label: String,
}

impl Ramp {
    /// Starts opening `args.connections` connections at `args.rate`,
    /// numbered from `args.first_connection` (topics and source addresses
    /// follow the number), bound to source addresses from
    /// `--source-offset`.
    fn start(args: &Args, target: Target, label: &str) -> Result<Ramp, String> {
        let n = args.connections;
        let sources = Sources::starting_at(args.workers.source_offset, args.common.source_addrs)?;
        let step_timeout = Duration::from_secs(args.common.timeout);
        let via = match args.transport {
            Transport::WebSocket => Via::WebSocket(sources),
            Transport::LongPoll => Via::LongPoll(HttpClients::new(&target, sources, step_timeout)?),
        };
        let ctx = Arc::new(Ctx {
            target,
            via,
            topics: args.topics as usize,
            step_timeout,
            heartbeat: Duration::from_secs(args.heartbeat.max(1)),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let first = args.first_connection;
        let (stop, tracker) = start_at_rate(n, args.rate, {
            let ctx = ctx.clone();
            move |i, stop| connection(first + i, ctx.clone(), tx.clone(), stop)
        });
        Ok(Ramp {
            ctx,
            rx,
            stop,
            tracker,
            tally: Tally::default(),
            start: Instant::now(),
            label: label.to_owned(),
        })
    }

    /// Waits until every connection has joined or failed, printing
    /// progress each second; those without a report by a deadline count
    /// as timed out.
    async fn wait(&mut self, args: &Args) {
        let n = args.connections;
        // Every task reports within its step timeouts; the deadline only
        // guards against a bug leaving the run hanging.
        let deadline = self.start + ramp_limit(args);
        let mut progress = interval(Duration::from_secs(1));
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        progress.tick().await;
        while self.tally.settled() < n {
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.tally.apply(ev),
                    None => break,
                },
                _ = progress.tick() => eprintln!(
                    "  {}{:>5.1} s: joined {}, failed {}",
                    self.label,
                    self.start.elapsed().as_secs_f64(),
                    self.tally.joined,
                    self.tally.failed.len()
                ),
                _ = sleep_until(deadline) => break,
            }
        }
        for _ in self.tally.settled()..n {
            self.tally.failed.push(Failure::new(
                FailureKind::Timeout,
                "no report before the deadline",
            ));
        }
    }

    /// Applies reports (drops while idle) until `until`.
    async fn drain_until(&mut self, until: Instant) {
        self.tally.drain_until(&mut self.rx, until).await;
    }

    /// Closes every connection (giving them 10 s) and returns the tally.
    async fn close(mut self) -> Tally {
        self.stop.cancel();
        self.tracker.close();
        if timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .is_err()
        {
            eprintln!("  some connections did not close within 10 s; leaving them");
        }
        // Drops reported while closing still count.
        while let Ok(ev) = self.rx.try_recv() {
            self.tally.apply(ev);
        }
        self.tally
    }
}

/// How long the ramp may take: the pacing, two step timeouts and a margin.
fn ramp_limit(args: &Args) -> Duration {
    Duration::from_secs_f64(args.connections as f64 / args.rate)
        + 2 * Duration::from_secs(args.common.timeout)
        + Duration::from_secs(10)
}

/// What is read before the first connection, by one process or the
/// parent of workers.
struct Before {
    /// The server's resident memory, in KiB.
    rss: Option<u64>,
    /// The server's CPU time, in ms.
    server_cpu: Option<u64>,
    /// This process's CPU time, in ms.
    my_cpu: u64,
    /// The server's `GET /api/stats`.
    stats: Option<Value>,
}

impl Before {
    /// Reads the server (when given) and this process; a server that
    /// cannot be read fails the run before it starts.
    async fn read(server: Option<Process>, addr: SocketAddr) -> Result<Before, String> {
        Ok(Before {
            rss: server.map(Process::rss_kib).transpose()?,
            server_cpu: server.map(Process::cpu_ms).transpose()?,
            my_cpu: Process(None).cpu_ms()?,
            stats: app_stats(addr).await,
        })
    }

    /// The server's CPU time since, in ms, when it can still be read.
    fn server_cpu_since(&self, server: Option<Process>) -> Option<u64> {
        server
            .and_then(|s| reading(s.cpu_ms()))
            .zip(self.server_cpu)
            .map(|(after, before)| after.saturating_sub(before))
    }
}

/// Everything the summary and the JSON line are made of.
struct Outcome {
    n: usize,
    workers: usize,
    tally: Tally,
    ramp_took: Duration,
    live: usize,
    before: Before,
    rss_after: Option<u64>,
    rss_end: Option<u64>,
    server_files: Option<usize>,
    my_files: Option<usize>,
    server_cpu: Option<u64>,
    my_cpu: u64,
    stats_after: Option<Value>,
}

/// Prints the summary and the JSON line; the report, or an error when a
/// connection failed or dropped.
fn report(args: &Args, o: Outcome) -> Result<Value, String> {
    let Outcome {
        n,
        workers,
        mut tally,
        ramp_took,
        live,
        before:
            Before {
                rss: rss_before,
                stats: stats_before,
                ..
            },
        rss_after,
        rss_end,
        server_files,
        my_files,
        server_cpu,
        my_cpu,
        stats_after,
    } = o;
    let transport = args.transport;
    let bytes_per_conn = match (rss_before, rss_after) {
        (Some(before), Some(after)) if live > 0 => {
            Some(((after as f64 - before as f64) * 1024.0 / live as f64).round() as i64)
        }
        _ => None,
    };
    let ms3 = |v: Option<f64>| v.map(|ms| (ms * 1000.0).round() / 1000.0);
    let (c50, c99) = (
        ms3(tally.connect.percentile_ms(50.0)),
        ms3(tally.connect.percentile_ms(99.0)),
    );
    let (j50, j99) = (
        ms3(tally.join.percentile_ms(50.0)),
        ms3(tally.join.percentile_ms(99.0)),
    );
    let stat = |v: &Option<Value>, key: &str| v.as_ref().and_then(|s| s.get(key)).cloned();
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));

    println!(
        "joined    {} of {n} in {:.1} s; failed: {}",
        tally.joined,
        ramp_took.as_secs_f64(),
        describe_failures(&tally.failed)
    );
    println!(
        "dropped   while idle: {}",
        describe_failures(&tally.dropped)
    );
    let connect_label = match transport {
        Transport::WebSocket => "connect",
        Transport::LongPoll => "open",
    };
    println!(
        "{connect_label:<9} p50 {} ms, p99 {} ms",
        opt(c50),
        opt(c99)
    );
    println!("join      p50 {} ms, p99 {} ms", opt(j50), opt(j99));
    if let Some(stats) = &stats_after {
        println!(
            "server    sockets {}, channels {} (GET /api/stats, {} s after the last join)",
            stats.get("sockets").unwrap_or(&Value::Null),
            stats.get("channels").unwrap_or(&Value::Null),
            args.settle
        );
    }
    if let (Some(before), Some(after), Some(end)) = (rss_before, rss_after, rss_end) {
        println!(
            "server    RSS {before} KiB before, {after} KiB after (+{} KiB), {end} KiB at the end of the hold",
            after as i64 - before as i64
        );
    }
    if let Some(b) = bytes_per_conn {
        println!(
            "          = {b} bytes ({:.2} KiB) per connection ({live} open at the reading)",
            b as f64 / 1024.0
        );
    }
    let tool = match workers {
        1 => "fawkes-bench".to_owned(),
        w => format!("fawkes-bench ({w} workers)"),
    };
    if let (Some(server), Some(me)) = (server_files, my_files) {
        println!("files     open at the reading: server {server}, {tool} {me}");
    }
    if let Some(cpu) = server_cpu {
        println!("cpu       server {cpu} ms, {tool} {my_cpu} ms");
    } else {
        let why = no_server_reading(args.common.server_pid);
        println!("cpu       {tool} {my_cpu} ms{why}");
    }
    let report = json!({
        "scenario": "connect",
        "transport": transport.name(),
        "connections": n,
        "workers": workers,
        "topics": args.topics,
        "rate": args.rate,
        "joined": tally.joined,
        "open_at_reading": live,
        "failures": tally.failed.len(),
        "dropped": tally.dropped.len(),
        "ramp_s": (ramp_took.as_secs_f64() * 1000.0).round() / 1000.0,
        "connect_p50_ms": c50,
        "connect_p99_ms": c99,
        "join_p50_ms": j50,
        "join_p99_ms": j99,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_end_kib": rss_end,
        "bytes_per_connection": bytes_per_conn,
        "server_cpu_ms": server_cpu,
        "client_cpu_ms": my_cpu,
        "server_open_files": server_files,
        "client_open_files": my_files,
        "server_sockets_before": stat(&stats_before, "sockets"),
        "server_sockets": stat(&stats_after, "sockets"),
        "server_channels": stat(&stats_after, "channels"),
    });
    println!("{report}");
    let lost = tally.failed.len() + tally.dropped.len();
    if lost > 0 {
        return Err(format!("{lost} of {n} connections failed or dropped"));
    }
    Ok(report)
}

/// The options worker `w` of `workers` runs with: its share of the
/// connections (numbered on from the previous worker's) and of the rate,
/// its own source addresses, and no `--server-pid` (the parent reads the
/// server).
fn worker_args(args: &Args, url: &str, workers: usize, w: usize, sources: u8) -> Vec<String> {
    let (first, count) = share(args.connections, workers, w);
    let own = [
        ("--transport", args.transport.name().to_owned()),
        ("--url", url.to_owned()),
        ("--connections", count.to_string()),
        ("--first-connection", first.to_string()),
        ("--topics", args.topics.to_string()),
        ("--rate", (args.rate / workers as f64).to_string()),
        ("--heartbeat", args.heartbeat.to_string()),
        ("--timeout", args.common.timeout.to_string()),
    ];
    worker_argv("connect", own, w, sources)
}

/// `--workers W`: the connections opened by W children (see
/// [`crate::workers`]); this process reads the server once all have
/// joined, then tells them to close and adds up their reports.
async fn run_workers(args: Args) -> Result<Value, String> {
    let transport = args.transport;
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| transport.default_url().to_owned());
    let target = Target::resolve(&url, transport).await?;
    let n = args.connections;
    let w = args.workers.count();
    check_limits(n, w, args.common.server_pid)?;
    let sources = source_split(w, args.common.source_addrs)?;
    let server = args.common.server_pid.map(|pid| Process(Some(pid)));
    let me = Process(None);
    let before = Before::read(server, target.addr).await?;
    print_header(&args, &target.url);

    let start = Instant::now();
    let mut children = Workers::spawn(
        (0..w)
            .map(|i| worker_args(&args, &url, w, i, sources))
            .collect(),
    )?;
    // A worker's ramp takes as long as the whole one: each has its share
    // of the rate. Starting the process gets a margin of its own.
    let ready = children
        .next_all("ready", start + ramp_limit(&args) + Duration::from_secs(10))
        .await?;
    let ramp_took = start.elapsed();
    let count = |key: &str| -> usize {
        ready
            .iter()
            .map(|r| r.get(key).and_then(Value::as_u64).unwrap_or(0) as usize)
            .sum()
    };
    eprintln!(
        "  {:>5.1} s: joined {}, failed {} (all {w} workers); holding {} s",
        ramp_took.as_secs_f64(),
        count("joined"),
        count("failed"),
        args.hold
    );

    let joined_at = Instant::now();
    let settle = Duration::from_secs(args.settle);
    sleep_until(joined_at + settle).await;
    let rss_after = server.and_then(|s| reading(s.rss_kib()));
    let server_files = server.and_then(Process::open_files);
    let stats_after = app_stats(target.addr).await;
    sleep_until(joined_at + Duration::from_secs(args.hold).max(settle)).await;
    let rss_end = server.and_then(|s| reading(s.rss_kib()));
    let server_cpu = before.server_cpu_since(server);

    children.go().await?;
    let results = children
        .next_all("result", Instant::now() + Duration::from_secs(30))
        .await?;
    children.finish(Duration::from_secs(10)).await;

    let mut tally = Tally::default();
    let mut my_cpu = me.cpu_ms()?.saturating_sub(before.my_cpu);
    let mut my_files = me.open_files();
    for (i, r) in results.iter().enumerate() {
        let bad = |what: &str| format!("worker {i}: bad result ({what}): {r}");
        let samples = |key: &str| -> Result<Vec<u64>, String> {
            r.get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(key))?
                .iter()
                .map(|v| v.as_u64().ok_or_else(|| bad(key)))
                .collect()
        };
        let failures = |key: &str| failures_from_json(r.get(key).unwrap_or(&Value::Null));
        tally.joined += r
            .get("joined")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("joined"))? as usize;
        tally.connect.extend_micros(samples("connect_us")?);
        tally.join.extend_micros(samples("join_us")?);
        tally.failed.extend(failures("failed")?);
        tally.dropped.extend(failures("dropped")?);
        my_cpu += r.get("cpu_ms").and_then(Value::as_u64).unwrap_or(0);
        // Read while the connections were still open.
        let files = r.get("open_files").and_then(Value::as_u64);
        my_files = my_files.zip(files).map(|(a, b)| a + b as usize);
    }
    // Drops after the reading cannot be told apart from those before it.
    let live = tally.joined.saturating_sub(tally.dropped.len());
    report(
        &args,
        Outcome {
            n,
            workers: w,
            tally,
            ramp_took,
            live,
            before,
            rss_after,
            rss_end,
            server_files,
            my_files,
            server_cpu,
            my_cpu,
            stats_after,
        },
    )
}

/// A worker of `--workers` (see [`crate::workers`]): opens its share, says
/// `ready`, holds until the parent's `go`, closes, and writes its tally
/// (raw latency samples, failures, CPU time and open files) as `result`.
async fn worker(args: Args, index: usize) -> Result<Value, String> {
    let url = args.url.as_deref().unwrap_or(args.transport.default_url());
    let target = Target::resolve(url, args.transport).await?;
    check_own_file_limit(args.connections)?;
    let mut parent = Parent::watch(index);
    let mut ramp = Ramp::start(&args, target, &format!("worker {index}: "))?;
    ramp.wait(&args).await;
    emit(
        index,
        "ready",
        json!({ "joined": ramp.tally.joined, "failed": ramp.tally.failed.len() }),
    );
    loop {
        tokio::select! {
            ev = ramp.rx.recv() => match ev {
                Some(ev) => ramp.tally.apply(ev),
                None => break parent.go().await,
            },
            () = parent.go() => break,
        }
    }
    let open_files = Process(None).open_files();
    let tally = ramp.close().await;
    let data = json!({
        "joined": tally.joined,
        "failed": failures_to_json(&tally.failed),
        "dropped": failures_to_json(&tally.dropped),
        "connect_us": tally.connect.micros(),
        "join_us": tally.join.micros(),
        "cpu_ms": Process(None).cpu_ms()?,
        "open_files": open_files,
    });
    emit(index, "result", data.clone());
    Ok(data)
}

/// A reading taken once the run is under way: a server that died meanwhile
/// leaves it empty in the report rather than losing the report.
fn reading(r: Result<u64, String>) -> Option<u64> {
    r.map_err(|e| eprintln!("warning: {e}")).ok()
}

/// One connection: connect, join, then idle until `stop`.
async fn connection(
    i: usize,
    ctx: Arc<Ctx>,
    tx: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
) {
    match &ctx.via {
        Via::WebSocket(sources) => websocket(i, &ctx, *sources, &tx, &stop).await,
        Via::LongPoll(clients) => longpoll(i, &ctx, clients, &tx, &stop).await,
    }
}

/// Reports how `joining` went: `Joined` with its connect and join times,
/// or `Failed`. The session when it joined; `None` also when `stop` came
/// first.
async fn report_join<S>(
    joining: impl Future<Output = Result<(S, Duration, Duration), Failure>>,
    tx: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
) -> Option<S> {
    tokio::select! {
        _ = stop.cancelled() => None,
        r = joining => match r {
            Ok((session, connect, join)) => {
                let _ = tx.send(Event::Joined { connect, join });
                Some(session)
            }
            Err(failure) => {
                let _ = tx.send(Event::Failed(failure));
                None
            }
        },
    }
}

/// A WebSocket connection: connect, join, then idle with heartbeats.
async fn websocket(
    i: usize,
    ctx: &Ctx,
    sources: Sources,
    tx: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
) {
    let topic = format!("bench:{}", i % ctx.topics);
    let limit = ctx.step_timeout;
    let joining = async {
        let t0 = Instant::now();
        let mut session = timeout(limit, Session::open(&ctx.target, sources.for_connection(i)))
            .await
            .map_err(|_| Failure::new(FailureKind::Timeout, "connect and handshake"))??;
        let connected = t0.elapsed();
        let t1 = Instant::now();
        timeout(limit, session.join(&topic))
            .await
            .map_err(|_| Failure::new(FailureKind::Timeout, "join reply"))??;
        Ok::<_, Failure>((session, connected, t1.elapsed()))
    };
    let Some(mut session) = report_join(joining, tx, stop).await else {
        return;
    };

    let mut beat = interval_at(Instant::now() + ctx.heartbeat, ctx.heartbeat);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let lost = loop {
        // Only the read borrows the session in the select; recv is
        // cancel-safe, so a tick never loses a frame.
        let wake = tokio::select! {
            biased;
            _ = stop.cancelled() => break None,
            _ = beat.tick() => None,
            r = session.recv() => Some(r),
        };
        let result = match wake {
            None => session.heartbeat().await,
            Some(r) => r.map(drop),
        };
        if let Err(failure) = result {
            break Some(failure);
        }
    };
    match lost {
        Some(failure) => {
            let _ = tx.send(Event::Dropped(failure));
        }
        None => {
            let _ = timeout(Duration::from_secs(2), session.close()).await;
        }
    }
}

/// A LongPoll client: open a session, join, then keep one poll outstanding.
async fn longpoll(
    i: usize,
    ctx: &Ctx,
    clients: &HttpClients,
    tx: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
) {
    let topic = format!("bench:{}", i % ctx.topics);
    let limit = ctx.step_timeout;
    let joining = async {
        let t0 = Instant::now();
        let mut session = timeout(
            limit,
            LongPoll::open(clients.for_connection(i), &ctx.target),
        )
        .await
        .map_err(|_| Failure::new(FailureKind::Timeout, "session open"))??;
        let opened = t0.elapsed();
        let join = timeout(limit, session.join(&topic))
            .await
            .map_err(|_| Failure::new(FailureKind::Timeout, "join reply"))??;
        Ok::<_, Failure>((session, opened, join))
    };
    let Some(mut session) = report_join(joining, tx, stop).await else {
        return;
    };

    // Every answer (`204` after the server's window, or stray messages) is
    // followed by the next poll; the session is lost on a `410` or error.
    let lost = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break None,
            r = session.recv() => if let Err(failure) = r {
                break Some(failure);
            },
        }
    };
    if let Some(failure) = lost {
        let _ = tx.send(Event::Dropped(failure));
    }
    // Dropping the session aborts its poll, as phoenix.js's close does; the
    // server ends the session once no poll came for 15–30 s.
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short run over `transport` against the conformance app served in
    /// this process, from two source addresses; the run's report.
    async fn short_run(transport: Transport) -> Value {
        let server = crate::testing::Server::start().await;
        let args = Args {
            transport,
            url: Some(
                transport
                    .default_url()
                    .replace("127.0.0.1:4000", &server.addr.to_string()),
            ),
            connections: 40,
            topics: 3,
            rate: 1000.0,
            hold: 0,
            settle: 0,
            heartbeat: 30,
            common: Common {
                server_pid: Some(std::process::id()),
                source_addrs: 2,
                timeout: 5,
            },
            workers: WorkerOpts::single(),
            first_connection: 0,
        };
        let report = run(args).await.unwrap();
        server.stop().await;
        report
    }

    fn assert_all_joined(report: &Value) {
        assert_eq!(report["joined"], 40, "{report}");
        assert_eq!(report["failures"], 0, "{report}");
        assert_eq!(report["server_sockets"], 40, "{report}");
        assert_eq!(report["server_channels"], 40, "{report}");
        assert!(report["rss_after_kib"].as_u64().unwrap() > 0);
        assert!(report["join_p99_ms"].as_f64().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joins_every_connection_and_reads_the_server() {
        let report = short_run(Transport::WebSocket).await;
        assert_all_joined(&report);
        assert_eq!(report["transport"], "websocket", "{report}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joins_every_longpoll_session_and_reads_the_server() {
        let report = short_run(Transport::LongPoll).await;
        assert_all_joined(&report);
        assert_eq!(report["transport"], "longpoll", "{report}");
    }
}
