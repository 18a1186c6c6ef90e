//! The `inprocess` scenario: the real `fawkes` sockets and channels over
//! the in-memory transport, in this process, to measure what the network
//! scenarios cannot reach: memory per socket and broadcast time at a
//! million sockets, where the machine's file limits end a network test.
//!
//! The endpoint is the conformance app's (its `UserSocket` and `bench:*`
//! channel, as the network scenarios drive it). Every socket connects with
//! `vsn=2.0.0` through `connect`, then joins `bench:<i % topics>` with a
//! client frame that goes through the real decode path. The process's
//! resident memory is read before the first connection and once every
//! socket has joined; the difference per socket is what one idle socket
//! and its channel cost, without the network buffers a WebSocket adds.
//!
//! Then each of `--broadcasts` rounds calls `Endpoint::broadcast` once per
//! topic and times it until every socket's task has handed the frame to
//! its transport (the client side counts deliveries; the one that
//! completes a round stamps the time).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fawkes::protocol::Frame;
use fawkes::transport::memory::{FrameSink, MemoryConfig, MemorySender, MemoryTransport, Overflow};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout};

use crate::latency::Latencies;
use crate::measure::Process;

/// Options of the `inprocess` scenario.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Sockets to connect, each joined to one channel.
    #[arg(long, default_value_t = 1_000_000)]
    sockets: usize,
    /// Topics to spread the joins over: socket i joins `bench:<i % topics>`.
    /// Each broadcast round broadcasts once to every topic.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    topics: u32,
    /// Broadcast rounds, one after the other.
    #[arg(long, default_value_t = 5)]
    broadcasts: usize,
    /// Size of each broadcast's JSON payload, `{"body":"xx…"}`.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Joins in flight at once while connecting.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Seconds without a client frame after which a socket closes (code
    /// 1002), as a WebSocket's idle timeout; 0 (the default) for none: an
    /// in-memory socket has no network to go idle on. Set it to count each
    /// socket's timer (about 110 bytes), as a WebSocket carries one.
    #[arg(long, default_value_t = 0)]
    idle_timeout: u64,
    /// Seconds between the last join and the memory reading.
    #[arg(long, default_value_t = 1)]
    settle: u64,
    /// Seconds to wait for the joins, and for each round's deliveries.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// What the client sides of every connection have seen.
struct Tally {
    epoch: Instant,
    joined: AtomicUsize,
    /// Join replies that were not ok, and any other unexpected frame.
    other: AtomicUsize,
    closed: AtomicUsize,
    delivered: AtomicU64,
    /// The delivery count that completes the current round.
    target: AtomicU64,
    /// When `target` was reached, in ns since `epoch`.
    reached_ns: AtomicU64,
    reached: Notify,
}

impl Tally {
    fn acked(&self) -> usize {
        self.joined.load(Ordering::Relaxed) + self.other.load(Ordering::Relaxed)
    }
}

/// A connection's client side: counts broadcast frames and join replies.
struct Probe(Arc<Tally>);

/// Whether a V2 text frame has no refs: a fast-lane broadcast.
fn is_broadcast(frame: &Frame) -> bool {
    frame
        .parts()
        .first()
        .is_some_and(|p| p.starts_with(b"[null,null,"))
}

fn is_ok_reply(frame: &Frame) -> bool {
    let bytes = frame.to_bytes();
    let needle = br#""phx_reply",{"status":"ok""#;
    bytes.windows(needle.len()).any(|w| w == needle)
}

impl FrameSink for Probe {
    fn send(&mut self, frames: VecDeque<Frame>) -> Result<(), Overflow> {
        let tally = &self.0;
        let mut broadcasts = 0;
        for frame in &frames {
            if is_broadcast(frame) {
                broadcasts += 1;
            } else if is_ok_reply(frame) {
                tally.joined.fetch_add(1, Ordering::Relaxed);
            } else {
                tally.other.fetch_add(1, Ordering::Relaxed);
            }
        }
        if broadcasts > 0 {
            let after = tally.delivered.fetch_add(broadcasts, Ordering::AcqRel) + broadcasts;
            let target = tally.target.load(Ordering::Acquire);
            if after >= target && after - broadcasts < target {
                let ns = tally.epoch.elapsed().as_nanos() as u64;
                tally.reached_ns.store(ns, Ordering::Release);
                tally.reached.notify_one();
            }
        }
        Ok(())
    }

    fn closed(&mut self, _code: u16) {
        self.0.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// One broadcast round.
struct Round {
    /// From the first `broadcast` call to the last delivery.
    took: Duration,
    /// How long the `broadcast` calls themselves took (the fan-out into
    /// every outbox, on the caller's thread).
    call: Duration,
    delivered: u64,
}

/// Runs the scenario, prints its summary and JSON line, and returns the
/// JSON report.
///
/// # Errors
///
/// Unreadable process readings, refused connections; and, after the
/// report is printed, joins or deliveries missing.
pub async fn run(args: Args) -> Result<Value, String> {
    let n = args.sockets;
    let topics = args.topics as usize;
    let me = Process(None);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let (_router, endpoint) =
        fawkes_conformance::app(&fawkes_conformance::Options::default()).expect("no pubsub url");
    let idle = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    let transport = MemoryTransport::new(&endpoint, "/socket")
        .map_err(|e| e.to_string())?
        .with_config(MemoryConfig::default().idle_timeout(idle));
    println!(
        "inprocess: {n} sockets over {topics} topic(s), {workers} worker thread(s); \
         {} broadcast round(s) of {} payload bytes",
        args.broadcasts, args.payload_bytes
    );
    let tally = Arc::new(Tally {
        epoch: Instant::now(),
        joined: AtomicUsize::new(0),
        other: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        reached_ns: AtomicU64::new(0),
        reached: Notify::new(),
    });
    let rss_before = me.rss_kib()?;
    let cpu_before = me.cpu_ms()?;

    // Connect and join from one task per worker; joins in flight are
    // bounded so that the backlog does not count as memory per socket.
    let start = Instant::now();
    let join_limit = Duration::from_secs(args.timeout);
    let sent = Arc::new(AtomicUsize::new(0));
    let joins: Arc<Vec<Bytes>> = Arc::new(
        (0..topics)
            .map(|t| {
                Bytes::from(json!(["1", "1", format!("bench:{t}"), "phx_join", {}]).to_string())
            })
            .collect(),
    );
    let connectors: Vec<_> = (0..workers)
        .map(|k| {
            let (transport, tally, sent, joins) = (
                transport.clone(),
                tally.clone(),
                sent.clone(),
                joins.clone(),
            );
            let batch = args.batch as usize;
            tokio::spawn(async move {
                let mut senders = Vec::with_capacity(n / workers + 1);
                for i in (k..n).step_by(workers) {
                    while sent.load(Ordering::Relaxed) >= tally.acked() + batch {
                        if start.elapsed() > join_limit {
                            return Err(format!("joins stalled at {}", tally.acked()));
                        }
                        sleep(Duration::from_millis(1)).await;
                    }
                    let sender = transport
                        .connect_with("vsn=2.0.0", Probe(tally.clone()))
                        .await
                        .map_err(|e| format!("socket {i}: {e}"))?;
                    sent.fetch_add(1, Ordering::Relaxed);
                    sender
                        .send(Frame::Text(joins[i % joins.len()].clone()))
                        .await
                        .map_err(|e| format!("socket {i}: {e}"))?;
                    senders.push(sender);
                }
                Ok::<Vec<MemorySender>, String>(senders)
            })
        })
        .collect();
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let deadline = start + join_limit;
    while tally.acked() < n && Instant::now() < deadline {
        // A connector that failed stops early: no use waiting for it.
        if connectors.iter().all(|c| c.is_finished())
            && tally.acked() >= sent.load(Ordering::Relaxed)
        {
            break;
        }
        tokio::select! {
            _ = progress.tick() => eprintln!(
                "  {:>5.1} s: connected {}, joined {}",
                start.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                tally.joined.load(Ordering::Relaxed)
            ),
            _ = sleep(Duration::from_millis(5)) => {}
        }
    }
    let joined_in = start.elapsed();
    let mut senders: Vec<MemorySender> = Vec::with_capacity(n);
    for connector in connectors {
        let mut part = connector.await.map_err(|e| e.to_string())??;
        senders.append(&mut part);
        drop(part);
    }
    let joined = tally.joined.load(Ordering::Relaxed);
    let failed = n - joined;
    eprintln!(
        "  {:>5.1} s: joined {joined} of {n}; settling {} s",
        joined_in.as_secs_f64(),
        args.settle
    );
    let cpu_connect = me.cpu_ms()?.saturating_sub(cpu_before);
    sleep(Duration::from_secs(args.settle)).await;
    let rss_after = me.rss_kib()?;
    let peak_after_joins = me.peak_rss_kib()?;
    let stats = endpoint.stats();
    let bytes_per_socket = (joined > 0)
        .then(|| ((rss_after as f64 - rss_before as f64) * 1024.0 / joined as f64).round() as i64);

    // Broadcast rounds.
    let body = "x".repeat(args.payload_bytes.saturating_sub(11));
    let payload = json!({ "body": body });
    let subscribers: u64 = (0..topics)
        .map(|t| endpoint.pubsub().subscriber_count(&format!("bench:{t}")) as u64)
        .sum();
    let topic_names: Vec<String> = (0..topics).map(|t| format!("bench:{t}")).collect();
    let mut rounds = Vec::new();
    let cpu_rounds_before = me.cpu_ms()?;
    let round_limit = Duration::from_secs(args.timeout);
    for _ in 0..args.broadcasts {
        let before = tally.delivered.load(Ordering::Acquire);
        let target = before + subscribers;
        tally.target.store(target, Ordering::Release);
        let t0 = Instant::now();
        let t0_ns = t0.duration_since(tally.epoch).as_nanos() as u64;
        for topic in &topic_names {
            endpoint
                .broadcast(topic, "msg", payload.clone())
                .map_err(|e| e.to_string())?;
        }
        let call = t0.elapsed();
        let waited = timeout(round_limit, async {
            while tally.delivered.load(Ordering::Acquire) < target {
                tally.reached.notified().await;
            }
        })
        .await;
        let delivered = tally.delivered.load(Ordering::Acquire) - before;
        let took = match waited {
            Ok(()) => Duration::from_nanos(
                tally
                    .reached_ns
                    .load(Ordering::Acquire)
                    .saturating_sub(t0_ns),
            ),
            Err(_) => t0.elapsed(),
        };
        eprintln!(
            "  round {}: {delivered} of {subscribers} delivered in {:.1} ms (broadcast call {:.1} ms)",
            rounds.len() + 1,
            took.as_secs_f64() * 1000.0,
            call.as_secs_f64() * 1000.0
        );
        rounds.push(Round {
            took,
            call,
            delivered,
        });
        // Lets the sockets' tasks go idle again between rounds.
        sleep(Duration::from_millis(200)).await;
    }
    // The pauses between rounds are idle: no CPU of theirs is counted.
    let cpu_rounds = me.cpu_ms()?.saturating_sub(cpu_rounds_before);
    let rss_rounds = me.rss_kib()?;
    let delivered: u64 = rounds.iter().map(|r| r.delivered).sum();
    let expected = subscribers * rounds.len() as u64;

    // Close everything: a leak check, and the teardown time.
    let close_start = Instant::now();
    drop(senders);
    let closed_all = timeout(Duration::from_secs(args.timeout), async {
        while endpoint.stats().sockets > 0 || endpoint.stats().channels > 0 {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok();
    let close_took = close_start.elapsed();
    let after_close = endpoint.stats();

    let mut took = Latencies::default();
    let mut calls = Latencies::default();
    for r in &rounds {
        took.record(r.took);
        calls.record(r.call);
    }
    let ms3 = |v: Option<f64>| v.map(|ms| (ms * 1000.0).round() / 1000.0);
    let (b50, bmax) = (
        ms3(took.percentile_ms(50.0)),
        ms3(took.percentile_ms(100.0)),
    );
    let (c50, cmax) = (
        ms3(calls.percentile_ms(50.0)),
        ms3(calls.percentile_ms(100.0)),
    );
    let us_per_delivery = (delivered > 0).then(|| {
        let us = cpu_rounds as f64 * 1000.0 / delivered as f64;
        (us * 1000.0).round() / 1000.0
    });
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));

    println!(
        "joined    {joined} of {n} in {:.1} s ({:.0}/s), cpu {cpu_connect} ms; failed {failed}; \
         endpoint: sockets {}, channels {}",
        joined_in.as_secs_f64(),
        joined as f64 / joined_in.as_secs_f64().max(1e-9),
        stats.sockets,
        stats.channels
    );
    println!(
        "memory    RSS {rss_before} KiB before, {rss_after} KiB after (+{} KiB), peak {peak_after_joins} KiB",
        rss_after as i64 - rss_before as i64
    );
    if let Some(b) = bytes_per_socket {
        println!(
            "          = {b} bytes ({:.2} KiB) per socket + channel",
            b as f64 / 1024.0
        );
    }
    println!(
        "broadcast {} round(s) to {subscribers} subscribers: p50 {} ms, max {} ms \
         (broadcast call p50 {} ms, max {} ms)",
        rounds.len(),
        opt(b50),
        opt(bmax),
        opt(c50),
        opt(cmax)
    );
    println!(
        "          delivered {delivered} of {expected}; cpu {cpu_rounds} ms = {} µs per delivery; \
         RSS after the rounds {rss_rounds} KiB",
        opt(us_per_delivery)
    );
    println!(
        "close     {} in {:.1} s (sockets {}, channels {} left)",
        if closed_all {
            "all closed"
        } else {
            "NOT all closed"
        },
        close_took.as_secs_f64(),
        after_close.sockets,
        after_close.channels
    );
    let report = json!({
        "scenario": "inprocess",
        "endpoint": "conformance",
        "sockets": n,
        "topics": topics,
        "threads": workers,
        "joined": joined,
        "failures": failed,
        "join_s": (joined_in.as_secs_f64() * 1000.0).round() / 1000.0,
        "join_cpu_ms": cpu_connect,
        "endpoint_sockets": stats.sockets,
        "endpoint_channels": stats.channels,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_peak_kib": peak_after_joins,
        "bytes_per_socket": bytes_per_socket,
        "idle_timeout_s": args.idle_timeout,
        "broadcasts": rounds.len(),
        "payload_bytes": args.payload_bytes,
        "subscribers": subscribers,
        "broadcast_p50_ms": b50,
        "broadcast_max_ms": bmax,
        "broadcast_call_p50_ms": c50,
        "broadcast_call_max_ms": cmax,
        "deliveries": delivered,
        "expected": expected,
        "cpu_ms": cpu_rounds,
        "cpu_us_per_delivery": us_per_delivery,
        "rss_after_rounds_kib": rss_rounds,
        "close_s": (close_took.as_secs_f64() * 1000.0).round() / 1000.0,
        "closed": tally.closed.load(Ordering::Relaxed),
        "left_sockets": after_close.sockets,
        "left_channels": after_close.channels,
    });
    println!("{report}");
    if failed > 0 || delivered < expected || !closed_all {
        return Err(format!(
            "{failed} of {n} joins failed, {} of {expected} deliveries missing, {} sockets left open",
            expected - delivered.min(expected),
            after_close.sockets
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joins_broadcasts_and_closes_every_socket() {
        let args = Args {
            sockets: 1000,
            topics: 3,
            broadcasts: 2,
            payload_bytes: 64,
            batch: 100,
            idle_timeout: 3600,
            settle: 0,
            timeout: 10,
        };
        let report = run(args).await.unwrap();
        assert_eq!(report["joined"], 1000, "{report}");
        assert_eq!(report["endpoint_sockets"], 1000, "{report}");
        assert_eq!(report["endpoint_channels"], 1000, "{report}");
        assert_eq!(report["subscribers"], 1000, "{report}");
        assert_eq!(report["deliveries"], 2000, "{report}");
        assert_eq!(report["closed"], 1000, "{report}");
        assert_eq!(report["left_sockets"], 0, "{report}");
        assert!(report["broadcast_max_ms"].as_f64().is_some(), "{report}");
    }
}
