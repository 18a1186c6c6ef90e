//! The `fanout` scenario: what a broadcast to many subscribers costs the
//! server, and how long it takes to reach them.
//!
//! Opens `subscribers` WebSockets joined to one topic, then sends
//! `broadcasts` server-side broadcasts through the conformance app's
//! `POST /api/broadcast`, `interval` apart (0: back to back). Each carries
//! its sequence number; a subscriber stamps every receipt, and the latency
//! of a delivery is from just before its broadcast's POST to that receipt.
//! Server CPU per delivery is the server's CPU time over the broadcasts
//! (from /proc) divided by the deliveries: on a saturated 2-core machine,
//! that figure holds where rates and latencies do not.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, interval, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::client::{
    Failure, FailureKind, Session, Sources, Target, Transport, describe_failures, start_at_rate,
};
use crate::latency::Latencies;
use crate::measure::{Process, app_stats, check_file_limits};
use crate::options::Common;

/// Options of the `fanout` scenario.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The WebSocket URL (`vsn=2.0.0` added unless it names one).
    #[arg(long, default_value = "ws://127.0.0.1:4000/socket/websocket")]
    url: String,
    /// Subscribers of the topic.
    #[arg(long, default_value_t = 5_000)]
    subscribers: usize,
    /// The topic every subscriber joins (a `bench:*` topic of the
    /// conformance app).
    #[arg(long, default_value = "bench:fanout")]
    topic: String,
    /// Broadcasts to send.
    #[arg(long, default_value_t = 20)]
    broadcasts: usize,
    /// Milliseconds between the starts of two bursts; 0 sends each burst
    /// as soon as the previous one's POSTs are answered.
    #[arg(long, default_value_t = 200)]
    interval: u64,
    /// Broadcasts sent at once, as concurrent POSTs: with more than one,
    /// frames queue up on each connection and are written together.
    #[arg(long, default_value_t = 1)]
    burst: usize,
    /// Size of each broadcast's payload in bytes (a JSON object padded to
    /// about this size).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Subscribers connected per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    #[command(flatten)]
    common: Common,
}

/// The event the conformance app's API broadcasts are sent as.
pub(crate) const EVENT: &str = "msg";

/// What a subscriber reports once joined (or not).
pub(crate) type Joined = Result<(), Failure>;

/// A subscriber's receipts: (sequence number, microseconds since the
/// run's epoch).
pub(crate) type Receipts = Vec<(usize, u64)>;

/// What every subscriber task needs.
struct Ctx {
    target: Target,
    sources: Sources,
    topic: String,
    broadcasts: usize,
    step_timeout: Duration,
    epoch: Instant,
}

/// Runs the scenario, prints its summary and JSON line, and returns the
/// JSON report.
///
/// # Errors
///
/// Bad options, a non-loopback server, too low a file limit, subscribers
/// that could not join, a broadcast the API refused; and, after the report
/// is printed, deliveries that never arrived.
pub async fn run(args: Args) -> Result<Value, String> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    if args.subscribers == 0 || args.broadcasts == 0 {
        return Err("--subscribers and --broadcasts must be at least 1".into());
    }
    let target = Target::resolve(&args.url, Transport::WebSocket).await?;
    check_file_limits(args.subscribers, args.common.server_pid)?;
    let server = args.common.server_pid.map(|pid| Process(Some(pid)));
    let me = Process(None);
    let api = format!("http://{}/api/broadcast", target.addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.common.timeout))
        .build()
        .map_err(|e| format!("http client: {e}"))?;

    let n = args.subscribers;
    let ctx = Arc::new(Ctx {
        target,
        sources: Sources::new(args.common.source_addrs),
        topic: args.topic.clone(),
        broadcasts: args.broadcasts,
        step_timeout: Duration::from_secs(args.common.timeout),
        epoch: Instant::now(),
    });
    println!(
        "fanout: {n} subscribers of {} at {}, {} broadcasts of {} bytes in bursts of {}, {} ms apart",
        ctx.topic,
        ctx.target.url,
        args.broadcasts,
        args.payload_bytes,
        args.burst.max(1),
        args.interval
    );

    // Connect and join everyone first.
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel::<Joined>();
    let (receipts_tx, mut receipts_rx) = mpsc::unbounded_channel::<Receipts>();
    let start = Instant::now();
    let (stop, tracker) = start_at_rate(n, args.rate, {
        let ctx = ctx.clone();
        move |i, stop| subscriber(i, ctx.clone(), joined_tx.clone(), receipts_tx.clone(), stop)
    });
    let ramp = Duration::from_secs_f64(n as f64 / args.rate);
    let deadline = start + ramp + 2 * ctx.step_timeout + Duration::from_secs(10);
    let mut failures = Vec::new();
    let mut joined = 0;
    let mut progress = interval(Duration::from_secs(1));
    progress.tick().await;
    while joined + failures.len() < n {
        tokio::select! {
            report = joined_rx.recv() => match report {
                Some(Ok(())) => joined += 1,
                Some(Err(f)) => failures.push(f),
                None => break,
            },
            _ = progress.tick() => eprintln!(
                "  {:>5.1} s: joined {joined}, failed {}",
                start.elapsed().as_secs_f64(), failures.len()
            ),
            _ = sleep_until(deadline) => break,
        }
    }
    if joined < n {
        stop.cancel();
        return Err(format!(
            "only {joined} of {n} subscribers joined; failed: {}",
            describe_failures(&failures)
        ));
    }
    eprintln!(
        "  {:>5.1} s: all {n} joined; broadcasting",
        start.elapsed().as_secs_f64()
    );
    // Let the joins' own traffic settle before measuring.
    sleep(Duration::from_secs(1)).await;
    let stats = app_stats(ctx.target.addr).await;

    let server_cpu_before = server.map(Process::cpu_ms).transpose()?;
    let my_cpu_before = me.cpu_ms()?;
    let rss_before = server.map(Process::rss_kib).transpose()?;
    let pad = "x".repeat(args.payload_bytes.saturating_sub(40));
    let mut sent_at = Vec::with_capacity(args.broadcasts);
    let send_start = Instant::now();
    let burst = args.burst.max(1);
    for (group, first) in (0..args.broadcasts).step_by(burst).enumerate() {
        let due = send_start + Duration::from_millis(args.interval) * group as u32;
        sleep_until(due).await;
        let seqs = first..(first + burst).min(args.broadcasts);
        let api = api.as_str();
        let posts = seqs.map(|seq| {
            let body = json!({
                "topic": ctx.topic,
                "event": EVENT,
                "payload": {"seq": seq, "pad": pad},
            });
            sent_at.push(micros_since(ctx.epoch));
            let request = http.post(api).json(&body).send();
            async move {
                match request.await {
                    Ok(answer) if answer.status().is_success() => Ok(()),
                    Ok(answer) => Err(format!("POST {api}: {}", answer.status())),
                    Err(e) => Err(format!("POST {api}: {e}")),
                }
            }
        });
        let posts: Vec<_> = posts.collect();
        if let Err(e) = join_all(posts).await.into_iter().collect::<Result<(), _>>() {
            stop.cancel();
            return Err(e);
        }
    }
    let sent_took = send_start.elapsed();

    // Every subscriber reports once it has all broadcasts, or at the stop.
    let expected = n * args.broadcasts;
    let mut latencies = Latencies::default();
    let mut per_broadcast: Vec<Latencies> =
        (0..args.broadcasts).map(|_| Latencies::default()).collect();
    let mut delivered = 0;
    let mut reported = 0;
    let wait_until = Instant::now() + ctx.step_timeout;
    let mut last_receipt = 0;
    let mut collect = |receipts: Receipts| {
        for (seq, at) in receipts {
            let Some(&sent) = sent_at.get(seq) else {
                continue;
            };
            let d = Duration::from_micros(at.saturating_sub(sent));
            latencies.record(d);
            per_broadcast[seq].record(d);
            last_receipt = last_receipt.max(at);
            delivered += 1;
        }
    };
    while reported < n {
        tokio::select! {
            r = receipts_rx.recv() => match r {
                Some(r) => { reported += 1; collect(r) }
                None => break,
            },
            _ = sleep_until(wait_until) => break,
        }
    }
    // CPU is read once everything arrived (or at the timeout): what the
    // server spent between the first POST and the last delivery.
    let server_cpu = server
        .and_then(|s| s.cpu_ms().ok())
        .zip(server_cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let my_cpu = me.cpu_ms()?.saturating_sub(my_cpu_before);
    let rss_after = server.and_then(|s| s.rss_kib().ok());
    stop.cancel();
    while let Ok(Some(r)) = timeout(Duration::from_secs(2), receipts_rx.recv()).await {
        collect(r);
    }
    tracker.close();
    if timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        eprintln!("  some subscribers did not close within 10 s; leaving them");
    }

    let span_ms = sent_at
        .first()
        .map(|first| last_receipt.saturating_sub(*first) as f64 / 1000.0);
    let round3 = |v: Option<f64>| v.map(|ms| (ms * 1000.0).round() / 1000.0);
    let p = |l: &mut Latencies, q: f64| round3(l.percentile_ms(q));
    let (p50, p90, p99, max) = (
        p(&mut latencies, 50.0),
        p(&mut latencies, 90.0),
        p(&mut latencies, 99.0),
        p(&mut latencies, 100.0),
    );
    // In sending order, so a slow first (or periodic) broadcast shows.
    let broadcast_p99: Vec<Option<f64>> = per_broadcast
        .iter_mut()
        .map(|l| round3(l.percentile_ms(99.0)))
        .collect();
    let mut per_p99: Vec<f64> = broadcast_p99.iter().flatten().copied().collect();
    per_p99.sort_by(f64::total_cmp);
    let median_p99 = per_p99
        .get(per_p99.len() / 2)
        .copied()
        .map(Some)
        .and_then(round3);
    let us_per_delivery = server_cpu
        .filter(|_| delivered > 0)
        .map(|ms| (ms as f64 * 1000.0 / delivered as f64 * 100.0).round() / 100.0);
    let my_us_per_delivery = (delivered > 0)
        .then(|| (my_cpu as f64 * 1000.0 / delivered as f64 * 100.0).round() / 100.0);
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));

    println!(
        "delivered {delivered} of {expected} ({} broadcasts sent in {:.1} ms)",
        args.broadcasts,
        sent_took.as_secs_f64() * 1000.0
    );
    println!(
        "latency   p50 {} ms, p90 {} ms, p99 {} ms, max {} ms (send to receipt, all deliveries)",
        opt(p50),
        opt(p90),
        opt(p99),
        opt(max)
    );
    println!(
        "          median over broadcasts of each one's p99: {} ms; first send to last receipt {} ms",
        opt(median_p99),
        opt(span_ms)
    );
    if let Some(stats) = &stats {
        println!(
            "server    sockets {}, channels {} (GET /api/stats before the broadcasts)",
            stats.get("sockets").unwrap_or(&Value::Null),
            stats.get("channels").unwrap_or(&Value::Null)
        );
    }
    match (server_cpu, us_per_delivery) {
        (Some(cpu), Some(us)) => println!(
            "cpu       server {cpu} ms = {us:.2} µs per delivery; fawkes-bench {my_cpu} ms = {} µs per delivery",
            opt(my_us_per_delivery)
        ),
        _ => println!("cpu       fawkes-bench {my_cpu} ms"),
    }
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!("server    RSS {before} KiB before the broadcasts, {after} KiB after");
    }
    let report = json!({
        "scenario": "fanout",
        "url": ctx.target.url,
        "subscribers": n,
        "broadcasts": args.broadcasts,
        "interval_ms": args.interval,
        "burst": burst,
        "payload_bytes": args.payload_bytes,
        "expected": expected,
        "delivered": delivered,
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max},
        "median_broadcast_p99_ms": median_p99,
        "broadcast_p99_ms": broadcast_p99,
        "span_ms": round3(span_ms),
        "server_cpu_ms": server_cpu,
        "server_cpu_us_per_delivery": us_per_delivery,
        "tool_cpu_ms": my_cpu,
        "tool_cpu_us_per_delivery": my_us_per_delivery,
        "server_rss_kib": {"before": rss_before, "after": rss_after},
        "server_stats": stats,
    });
    println!("{report}");
    if delivered < expected {
        return Err(format!(
            "{} of {expected} deliveries never arrived",
            expected - delivered
        ));
    }
    Ok(report)
}

/// Microseconds from `epoch` to now.
pub(crate) fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros().try_into().unwrap_or(u64::MAX)
}

/// Where a stamping subscriber connects and what it waits for.
pub(crate) struct Stamp<'a> {
    pub(crate) target: &'a Target,
    pub(crate) source: Option<std::net::IpAddr>,
    pub(crate) topic: &'a str,
    /// Broadcasts to wait for.
    pub(crate) want: usize,
    pub(crate) step_timeout: Duration,
    pub(crate) epoch: Instant,
}

/// One subscriber: connects, joins, reports on `joined`, then stamps every
/// `msg` broadcast (its `seq`) until it has `want` of them or the run
/// stops, and hands them to `report`. Heartbeats every 30 s, as phoenix.js
/// does, so long runs are not closed as idle.
pub(crate) async fn stamp_broadcasts(
    s: Stamp<'_>,
    joined: &mpsc::UnboundedSender<Joined>,
    stop: &CancellationToken,
    report: impl FnOnce(Receipts),
) {
    let setup = async {
        let mut session = timeout(s.step_timeout, Session::open(s.target, s.source))
            .await
            .map_err(|_| Failure::new(FailureKind::Timeout, "connect"))??;
        timeout(s.step_timeout, session.join(s.topic))
            .await
            .map_err(|_| Failure::new(FailureKind::Timeout, "join"))??;
        Ok::<_, Failure>(session)
    };
    let mut session = match setup.await {
        Ok(session) => session,
        Err(f) => {
            let _ = joined.send(Err(f));
            return;
        }
    };
    let _ = joined.send(Ok(()));
    let mut got = Receipts::with_capacity(s.want);
    let mut heartbeat = interval(Duration::from_secs(30));
    heartbeat.tick().await;
    while got.len() < s.want {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = heartbeat.tick() => {
                if session.heartbeat().await.is_err() {
                    break;
                }
            }
            msg = session.recv() => {
                let at = micros_since(s.epoch);
                let Ok(msg) = msg else { break };
                if msg.event != EVENT || msg.topic != s.topic {
                    continue;
                }
                let seq = match &msg.payload {
                    fawkes_protocol::Payload::Json(v) => v.get("seq").and_then(Value::as_u64),
                    _ => None,
                };
                if let Some(seq) = seq {
                    got.push((seq as usize, at));
                }
            }
        }
    }
    report(got);
    // Closing at once would load the server (and this tool) while the last
    // broadcast still reaches the others: wait until every subscriber has
    // reported.
    stop.cancelled().await;
    let _ = timeout(Duration::from_secs(2), session.close()).await;
}

/// A fan-out subscriber.
async fn subscriber(
    i: usize,
    ctx: Arc<Ctx>,
    joined: mpsc::UnboundedSender<Joined>,
    receipts: mpsc::UnboundedSender<Receipts>,
    stop: CancellationToken,
) {
    let stamp = Stamp {
        target: &ctx.target,
        source: ctx.sources.for_connection(i),
        topic: &ctx.topic,
        want: ctx.broadcasts,
        step_timeout: ctx.step_timeout,
        epoch: ctx.epoch,
    };
    stamp_broadcasts(stamp, &joined, &stop, |got| {
        let _ = receipts.send(got);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_broadcast_reaches_every_subscriber() {
        let server = crate::testing::Server::start().await;
        let args = Args {
            url: server.ws_url(),
            subscribers: 50,
            topic: "bench:fanout-test".into(),
            broadcasts: 5,
            interval: 0,
            burst: 2,
            payload_bytes: 256,
            rate: 1000.0,
            common: Common {
                server_pid: Some(std::process::id()),
                source_addrs: 0,
                timeout: 10,
            },
        };
        let report = run(args).await.unwrap();
        server.stop().await;
        assert_eq!(report["delivered"], 250);
        assert_eq!(report["expected"], 250);
        assert!(report["latency_ms"]["p99"].is_number());
        assert!(report["server_cpu_us_per_delivery"].is_number());
    }
}
