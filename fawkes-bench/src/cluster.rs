//! The `cluster` scenario: broadcasts between the nodes of a cluster over
//! Redis, and what they cost Redis.
//!
//! Opens `subscribers` WebSockets spread over the nodes (`--nodes`, one
//! URL each) and joined to `topics` topics, placed in one of two ways:
//!
//! - `everywhere`: every topic has subscribers on every node, so every
//!   broadcast must reach every node whatever the routing;
//! - `local`: each topic belongs to one node (topic k to node k mod N) and
//!   only that node's clients join it: a node needs only the broadcasts of
//!   its own topics, which sharded routing uses and Phoenix-style routing
//!   (every broadcast to every node) does not.
//!
//! Then `broadcasts` server-side broadcasts go out from one node
//! (`--broadcast-node`) through the conformance app's `POST
//! /api/broadcast`, to the topics in turn, in bursts of `burst`
//! concurrent POSTs `interval` ms apart (`--burst 1` with an interval: one
//! at a time; `--interval 0`: back to back, the sustained throughput).
//! Latency is from just before a broadcast's POST to each receipt, split
//! by the receiving node: local (the broadcasting node's own clients) or
//! remote (through Redis).
//!
//! With `--redis-url` (of a Redis that only the cluster uses), Redis's
//! `INFO stats` and `INFO commandstats` are read around the broadcasts:
//! the bytes Redis read and wrote and its `PUBLISH` calls, less the
//! cluster's background traffic (presence heartbeats) measured over an
//! idle `--baseline` window just before, per broadcast. Redis 7 counts no
//! delivered pub/sub messages, so those are computed: each broadcast is
//! delivered to every node subscribed to its topic's channel at that
//! moment (`PUBSUB NUMSUB`, read once all subscribers joined), which
//! needs the cluster's `--pubsub-namespace` and `--pubsub-routing`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::client::{Failure, Target, Transport, describe_failures, start_at_rate};
use crate::fanout::{EVENT, Joined, Receipts, Stamp, micros_since, stamp_broadcasts};
use crate::latency::Latencies;
use crate::measure::{Process, check_file_limits};

/// Where the subscribers' topics are.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Every topic has subscribers on every node.
    Everywhere,
    /// Each topic has subscribers on one node only.
    Local,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Everywhere => "everywhere",
            Placement::Local => "local",
        }
    }
}

/// How the cluster routes broadcasts (the nodes' `--pubsub-routing`), to
/// know which Redis channel a topic's broadcasts are published on.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// `{ns}:b:{shard}`, the topic's hash modulo `--shards`.
    Sharded,
    /// `{ns}:b`, one channel for every broadcast.
    All,
}

impl Routing {
    fn name(self) -> &'static str {
        match self {
            Routing::Sharded => "sharded",
            Routing::All => "all",
        }
    }
}

/// Options of the `cluster` scenario.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The WebSocket URL of each node, comma separated (`vsn=2.0.0` added
    /// unless a URL names one).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// The node whose `POST /api/broadcast` sends every broadcast (an index
    /// into `--nodes`).
    #[arg(long, default_value_t = 0)]
    broadcast_node: usize,
    /// Subscribers in all, spread evenly over the nodes.
    #[arg(long, default_value_t = 1_200)]
    subscribers: usize,
    /// Topics in all (`bench:*` topics of the conformance app); each
    /// broadcast goes to the next one in turn.
    #[arg(long, default_value_t = 12)]
    topics: usize,
    /// Where the topics' subscribers are.
    #[arg(long, value_enum, default_value = "everywhere")]
    placement: Placement,
    /// Topic names are this followed by `-<k>`.
    #[arg(long, default_value = "bench:cluster")]
    topic_prefix: String,
    /// Broadcasts to send.
    #[arg(long, default_value_t = 300)]
    broadcasts: usize,
    /// Milliseconds between the starts of two bursts; 0 sends each burst
    /// as soon as the previous one's POSTs are answered.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Broadcasts sent at once, as concurrent POSTs.
    #[arg(long, default_value_t = 1)]
    burst: usize,
    /// Size of each broadcast's payload in bytes (a JSON object padded to
    /// about this size).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Subscribers connected per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// The nodes' process ids, comma separated in the order of `--nodes`,
    /// to read their CPU time from /proc.
    #[arg(long, value_delimiter = ',')]
    node_pids: Vec<u32>,
    /// The Redis the cluster uses, to read its traffic (`INFO`): give it
    /// only for a Redis that nothing else uses during the run.
    #[arg(long)]
    redis_url: Option<String>,
    /// The nodes' `--pubsub-namespace`.
    #[arg(long, default_value = "fawkes")]
    pubsub_namespace: String,
    /// The nodes' `--pubsub-routing`.
    #[arg(long, value_enum, default_value = "sharded")]
    pubsub_routing: Routing,
    /// Shards of sharded routing (the adapter's default).
    #[arg(long, default_value_t = 1024)]
    shards: u32,
    /// Seconds of idle cluster, before the broadcasts, over which Redis's
    /// background traffic is measured (and then subtracted).
    #[arg(long, default_value_t = 2.0)]
    baseline: f64,
    /// Seconds to wait for each connect and join, and for the last
    /// deliveries after the last broadcast.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// What every subscriber task needs.
struct Ctx {
    targets: Vec<Target>,
    topics: Vec<String>,
    /// Broadcasts each topic gets.
    per_topic: Vec<usize>,
    placement: Placement,
    step_timeout: Duration,
    epoch: Instant,
}

impl Ctx {
    /// Subscriber `i`'s node and topic index: round-robin over the nodes
    /// (everywhere), or over the topics with each on its owner (local).
    fn place(&self, i: usize) -> (usize, usize) {
        let nodes = self.targets.len();
        let topics = self.topics.len();
        match self.placement {
            Placement::Everywhere => (i % nodes, (i / nodes) % topics),
            Placement::Local => ((i % topics) % nodes, i % topics),
        }
    }
}

/// Redis's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct RedisCounters {
    input_bytes: u64,
    output_bytes: u64,
    publishes: u64,
    at: Option<Instant>,
    /// Bytes of this reading's own reply, which the next reading counts.
    reply_bytes: u64,
}

/// `INFO stats commandstats` as Redis reads it (RESP), which the next
/// reading counts.
const INFO_REQUEST_BYTES: u64 = 44;

impl RedisCounters {
    /// `self − before`, as (input bytes, output bytes, publishes, seconds),
    /// without the readings' own traffic.
    fn since(&self, before: &RedisCounters) -> (f64, f64, f64, f64) {
        let secs = match (self.at, before.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
            _ => 0.0,
        };
        (
            self.input_bytes
                .saturating_sub(before.input_bytes + INFO_REQUEST_BYTES) as f64,
            self.output_bytes
                .saturating_sub(before.output_bytes + before.reply_bytes) as f64,
            self.publishes.saturating_sub(before.publishes) as f64,
            secs,
        )
    }
}

/// A connection to the cluster's Redis, for its counters.
struct Redis(redis::aio::MultiplexedConnection);

impl Redis {
    async fn connect(url: &str) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
        let con = timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
        Ok(Redis(con))
    }

    /// `INFO stats commandstats`: bytes read and written, `PUBLISH` calls.
    async fn counters(&mut self) -> Result<RedisCounters, String> {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .arg("commandstats")
            .query_async(&mut self.0)
            .await
            .map_err(|e| format!("redis INFO: {e}"))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // cmdstat_publish:calls=N,usec=…; absent before the first PUBLISH.
        let publishes = info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0);
        Ok(RedisCounters {
            input_bytes: field("total_net_input_bytes").ok_or("redis INFO: no input bytes")?,
            output_bytes: field("total_net_output_bytes").ok_or("redis INFO: no output bytes")?,
            publishes,
            at: Some(Instant::now()),
            // A bulk string: `$<len>\r\n<info>\r\n`.
            reply_bytes: info.len() as u64 + info.len().to_string().len() as u64 + 5,
        })
    }

    /// Subscribers (nodes) of each channel.
    async fn numsub(&mut self, channels: &[String]) -> Result<HashMap<String, u64>, String> {
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channels)
            .query_async(&mut self.0)
            .await
            .map_err(|e| format!("redis PUBSUB NUMSUB: {e}"))
    }
}

/// The Redis channel a topic's broadcasts are published on, as the
/// adapter names it (`fawkes::pubsub::redis`).
fn redis_channel(namespace: &str, routing: Routing, shards: u32, topic: &str) -> String {
    match routing {
        Routing::All => format!("{namespace}:b"),
        Routing::Sharded => format!("{namespace}:b:{}", fnv1a(topic) % u64::from(shards.max(1))),
    }
}

/// The adapter's topic hash (64-bit FNV-1a).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs the scenario, prints its summary (stderr) and JSON line (stdout),
/// and returns the JSON report.
///
/// # Errors
///
/// Bad options, a non-loopback node, too low a file limit, an unreachable
/// Redis, subscribers that could not join, a broadcast the API refused;
/// and, after the report is printed, deliveries that never arrived.
pub async fn run(args: Args) -> Result<Value, String> {
    let nodes = args.nodes.len();
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    if args.broadcasts == 0 || args.topics == 0 {
        return Err("--broadcasts and --topics must be at least 1".into());
    }
    if args.broadcast_node >= nodes {
        return Err(format!(
            "--broadcast-node {} of {nodes} nodes",
            args.broadcast_node
        ));
    }
    if !args.node_pids.is_empty() && args.node_pids.len() != nodes {
        return Err("--node-pids needs one pid per node".into());
    }
    // Every topic needs a subscriber where the placement puts it.
    let needed = match args.placement {
        Placement::Everywhere => args.topics * nodes,
        Placement::Local => args.topics.max(nodes),
    };
    if args.subscribers < needed {
        return Err(format!(
            "--placement {} with {} topics on {nodes} nodes needs at least {needed} subscribers",
            args.placement.name(),
            args.topics
        ));
    }
    if !(args.baseline.is_finite() && args.baseline >= 0.0) {
        return Err("--baseline must be zero or more seconds".into());
    }
    let mut targets = Vec::with_capacity(nodes);
    for url in &args.nodes {
        targets.push(Target::resolve(url, Transport::WebSocket).await?);
    }
    check_file_limits(args.subscribers, args.node_pids.first().copied())?;
    let mut redis = match &args.redis_url {
        Some(url) => Some(Redis::connect(url).await?),
        None => None,
    };
    let api = format!("http://{}/api/broadcast", targets[args.broadcast_node].addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout))
        .build()
        .map_err(|e| format!("http client: {e}"))?;

    let topics: Vec<String> = (0..args.topics)
        .map(|k| format!("{}-{k}", args.topic_prefix))
        .collect();
    let per_topic = (0..args.topics)
        .map(|k| (args.broadcasts + args.topics - 1 - k) / args.topics)
        .collect();
    let n = args.subscribers;
    let ctx = Arc::new(Ctx {
        targets,
        topics,
        per_topic,
        placement: args.placement,
        step_timeout: Duration::from_secs(args.timeout),
        epoch: Instant::now(),
    });
    let burst = args.burst.max(1);
    eprintln!(
        "cluster: {n} subscribers on {nodes} nodes, {} topics {}, {} broadcasts of {} bytes from node {} in bursts of {burst}, {} ms apart; routing {}",
        args.topics,
        args.placement.name(),
        args.broadcasts,
        args.payload_bytes,
        args.broadcast_node,
        args.interval,
        args.pubsub_routing.name(),
    );

    // Subscribers per node and topic, and so the deliveries each node and
    // each broadcast expects.
    let mut subs = vec![vec![0usize; args.topics]; nodes];
    for i in 0..n {
        let (node, topic) = ctx.place(i);
        subs[node][topic] += 1;
    }
    let node_expected: Vec<usize> = subs
        .iter()
        .map(|t| t.iter().zip(&ctx.per_topic).map(|(s, b)| s * b).sum())
        .collect();
    let expected: usize = node_expected.iter().sum();

    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel::<Result<(), Failure>>();
    let (receipts_tx, mut receipts_rx) = mpsc::unbounded_channel::<(usize, Receipts)>();
    let start = Instant::now();
    let (stop, tracker) = start_at_rate(n, args.rate, {
        let ctx = ctx.clone();
        move |i, stop| subscriber(i, ctx.clone(), joined_tx.clone(), receipts_tx.clone(), stop)
    });
    let ramp = Duration::from_secs_f64(n as f64 / args.rate);
    let deadline = start + ramp + 2 * ctx.step_timeout + Duration::from_secs(10);
    let mut failures = Vec::new();
    let mut joined = 0;
    while joined + failures.len() < n {
        tokio::select! {
            report = joined_rx.recv() => match report {
                Some(Ok(())) => joined += 1,
                Some(Err(f)) => failures.push(f),
                None => break,
            },
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
    eprintln!("  {:>5.1} s: all {n} joined", start.elapsed().as_secs_f64());
    // Let the joins' own traffic (presence of nothing, subscriptions)
    // settle before measuring.
    sleep(Duration::from_secs(1)).await;

    // Nodes subscribed to each topic's channel: the messages Redis
    // delivers per broadcast to it.
    let channels: Vec<String> = ctx
        .topics
        .iter()
        .map(|t| redis_channel(&args.pubsub_namespace, args.pubsub_routing, args.shards, t))
        .collect();
    let mut baseline = None;
    let mut numsub = None;
    if let Some(redis) = redis.as_mut() {
        numsub = Some(redis.numsub(&channels).await?);
        let before = redis.counters().await?;
        sleep(Duration::from_secs_f64(args.baseline)).await;
        baseline = Some((before, redis.counters().await?));
    }

    let node_procs: Vec<Process> = args.node_pids.iter().map(|p| Process(Some(*p))).collect();
    let cpu_of =
        |procs: &[Process]| -> Vec<Option<u64>> { procs.iter().map(|p| p.cpu_ms().ok()).collect() };
    let me = Process(None);
    let cpu_before = cpu_of(&node_procs);
    let my_cpu_before = me.cpu_ms()?;
    let redis_before = match redis.as_mut() {
        Some(r) => Some(r.counters().await?),
        None => None,
    };
    let pad = "x".repeat(args.payload_bytes.saturating_sub(40));
    let mut sent_at = Vec::with_capacity(args.broadcasts);
    let send_start = Instant::now();
    for (group, first) in (0..args.broadcasts).step_by(burst).enumerate() {
        let due = send_start + Duration::from_millis(args.interval) * group as u32;
        sleep_until(due).await;
        let api = api.as_str();
        let posts: Vec<_> = (first..(first + burst).min(args.broadcasts))
            .map(|seq| {
                let body = json!({
                    "topic": ctx.topics[seq % ctx.topics.len()],
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
            })
            .collect();
        if let Err(e) = join_all(posts).await.into_iter().collect::<Result<(), _>>() {
            stop.cancel();
            return Err(e);
        }
    }
    let sent_took = send_start.elapsed();

    // Every subscriber reports once it has all its topic's broadcasts.
    let mut per_node: Vec<Latencies> = (0..nodes).map(|_| Latencies::default()).collect();
    let mut node_delivered = vec![0usize; nodes];
    let mut last_receipt = 0;
    let mut reported = 0;
    let wait_until = Instant::now() + ctx.step_timeout;
    let mut collect = |node: usize, receipts: Receipts| {
        for (seq, at) in receipts {
            let Some(&sent) = sent_at.get(seq) else {
                continue;
            };
            per_node[node].record(Duration::from_micros(at.saturating_sub(sent)));
            node_delivered[node] += 1;
            last_receipt = last_receipt.max(at);
        }
    };
    while reported < n {
        tokio::select! {
            r = receipts_rx.recv() => match r {
                Some((node, r)) => { reported += 1; collect(node, r) }
                None => break,
            },
            _ = sleep_until(wait_until) => break,
        }
    }
    // Read once everything arrived (or at the timeout): what the nodes and
    // Redis spent between the first POST and the last delivery.
    let redis_after = match redis.as_mut() {
        Some(r) => Some(r.counters().await?),
        None => None,
    };
    let cpu_after = cpu_of(&node_procs);
    let my_cpu = me.cpu_ms()?.saturating_sub(my_cpu_before);
    stop.cancel();
    while let Ok(Some((node, r))) = timeout(Duration::from_secs(2), receipts_rx.recv()).await {
        collect(node, r);
    }
    tracker.close();
    if timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        eprintln!("  some subscribers did not close within 10 s; leaving them");
    }

    let delivered: usize = node_delivered.iter().sum();
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    let summary = |l: &mut Latencies| {
        let mut p = |q| l.percentile_ms(q).map(round3);
        json!({"p50": p(50.0), "p90": p(90.0), "p99": p(99.0), "max": p(100.0)})
    };
    let mut local = Latencies::default();
    let mut remote = Latencies::default();
    for (i, l) in per_node.iter().enumerate() {
        let into = if i == args.broadcast_node {
            &mut local
        } else {
            &mut remote
        };
        into.extend_micros(l.micros().iter().copied());
    }
    let node_cpu: Vec<Option<u64>> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?)))
        .collect();
    let cpu_total: Option<u64> = (!node_cpu.is_empty())
        .then(|| node_cpu.iter().copied().sum::<Option<u64>>())
        .flatten();
    let per_node_json: Vec<Value> = (0..nodes)
        .map(|i| {
            json!({
                "url": ctx.targets[i].url,
                "local": i == args.broadcast_node,
                "subscribers": subs[i].iter().sum::<usize>(),
                "expected": node_expected[i],
                "delivered": node_delivered[i],
                "latency_ms": summary(&mut per_node[i]),
                "cpu_ms": node_cpu.get(i).copied().flatten(),
            })
        })
        .collect();
    let span_ms = sent_at
        .first()
        .map(|first| last_receipt.saturating_sub(*first) as f64 / 1000.0);
    let per_sec = |count: usize| {
        span_ms
            .filter(|ms| *ms > 0.0)
            .map(|ms| (count as f64 * 1000.0 / ms).round())
    };
    let us_per = |ms: Option<u64>, count: usize| {
        ms.filter(|_| count > 0)
            .map(|ms| (ms as f64 * 1000.0 / count as f64 * 100.0).round() / 100.0)
    };
    let b = args.broadcasts as f64;
    let redis_json = match (baseline, redis_before, redis_after) {
        (Some((idle0, idle1)), Some(before), Some(after)) => {
            let (bi, bo, bp, bs) = idle1.since(&idle0);
            let (i, o, p, s) = after.since(&before);
            // Background per second, scaled to the measured window.
            let scale = if bs > 0.0 { s / bs } else { 0.0 };
            let per = |v: f64, bg: f64| ((v - bg * scale).max(0.0) / b * 10.0).round() / 10.0;
            let numsub = numsub.unwrap_or_default();
            let messages: u64 = (0..args.broadcasts)
                .map(|seq| {
                    numsub
                        .get(&channels[seq % channels.len()])
                        .copied()
                        .unwrap_or(0)
                })
                .sum();
            json!({
                "window_ms": round3(s * 1000.0),
                "input_bytes": i,
                "output_bytes": o,
                "publishes": p,
                "background_per_s": {
                    "input_bytes": round3(if bs > 0.0 { bi / bs } else { 0.0 }),
                    "output_bytes": round3(if bs > 0.0 { bo / bs } else { 0.0 }),
                    "publishes": round3(if bs > 0.0 { bp / bs } else { 0.0 }),
                },
                "per_broadcast": {
                    "input_bytes": per(i, bi),
                    "output_bytes": per(o, bo),
                    "publishes": per(p, bp),
                    "messages": round3(messages as f64 / b),
                },
                "channels_subscribed_nodes": channels.iter().map(|c| numsub.get(c).copied().unwrap_or(0)).collect::<Vec<_>>(),
            })
        }
        _ => Value::Null,
    };
    let mut all = Latencies::default();
    for l in &per_node {
        all.extend_micros(l.micros().iter().copied());
    }
    let report = json!({
        "scenario": "cluster",
        "nodes": ctx.targets.iter().map(|t| t.url.clone()).collect::<Vec<_>>(),
        "broadcast_node": args.broadcast_node,
        "placement": args.placement.name(),
        "routing": args.pubsub_routing.name(),
        "subscribers": n,
        "topics": args.topics,
        "broadcasts": args.broadcasts,
        "interval_ms": args.interval,
        "burst": burst,
        "payload_bytes": args.payload_bytes,
        "expected": expected,
        "delivered": delivered,
        "sent_ms": round3(sent_took.as_secs_f64() * 1000.0),
        "span_ms": span_ms.map(round3),
        "broadcasts_per_s": per_sec(args.broadcasts),
        "deliveries_per_s": per_sec(delivered),
        "latency_ms": {
            "all": summary(&mut all),
            "local": summary(&mut local),
            "remote": summary(&mut remote),
        },
        "deliveries": {"local": local.micros().len(), "remote": remote.micros().len()},
        "per_node": per_node_json,
        "nodes_cpu_ms": cpu_total,
        "nodes_cpu_us_per_delivery": us_per(cpu_total, delivered),
        "tool_cpu_ms": my_cpu,
        "tool_cpu_us_per_delivery": us_per(Some(my_cpu), delivered),
        "redis": redis_json,
    });
    print_summary(&report);
    println!("{report}");
    if delivered < expected {
        return Err(format!(
            "{} of {expected} deliveries never arrived",
            expected - delivered
        ));
    }
    Ok(report)
}

/// The human summary, from the report.
fn print_summary(r: &Value) {
    let ms = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
    };
    let lat = |l: &Value| {
        format!(
            "p50 {} / p90 {} / p99 {} / max {} ms",
            ms(&l["p50"]),
            ms(&l["p90"]),
            ms(&l["p99"]),
            ms(&l["max"])
        )
    };
    eprintln!(
        "delivered {} of {} in {} ms from the first POST: {} broadcasts/s, {} deliveries/s",
        r["delivered"],
        r["expected"],
        ms(&r["span_ms"]),
        r["broadcasts_per_s"],
        r["deliveries_per_s"]
    );
    eprintln!("latency   local  {}", lat(&r["latency_ms"]["local"]));
    eprintln!("          remote {}", lat(&r["latency_ms"]["remote"]));
    for (i, node) in r["per_node"].as_array().into_iter().flatten().enumerate() {
        eprintln!(
            "node {i}    {} of {} delivered, {}; cpu {} ms",
            node["delivered"],
            node["expected"],
            lat(&node["latency_ms"]),
            node["cpu_ms"]
        );
    }
    eprintln!(
        "cpu       nodes {} ms = {} µs per delivery; fawkes-bench {} ms",
        r["nodes_cpu_ms"], r["nodes_cpu_us_per_delivery"], r["tool_cpu_ms"]
    );
    let redis = &r["redis"];
    if !redis.is_null() {
        let per = &redis["per_broadcast"];
        eprintln!(
            "redis     per broadcast: {} B in, {} B out, {} PUBLISH, {} messages delivered (background {} B/s in, {} B/s out)",
            per["input_bytes"],
            per["output_bytes"],
            per["publishes"],
            per["messages"],
            redis["background_per_s"]["input_bytes"],
            redis["background_per_s"]["output_bytes"]
        );
    }
}

/// One subscriber, on its node and topic; stays connected until the run
/// stops, so closes do not load the nodes while others still receive.
async fn subscriber(
    i: usize,
    ctx: Arc<Ctx>,
    joined: mpsc::UnboundedSender<Joined>,
    receipts: mpsc::UnboundedSender<(usize, Receipts)>,
    stop: CancellationToken,
) {
    let (node, topic_index) = ctx.place(i);
    let stamp = Stamp {
        target: &ctx.targets[node],
        source: None,
        topic: &ctx.topics[topic_index],
        want: ctx.per_topic[topic_index],
        step_timeout: ctx.step_timeout,
        epoch: ctx.epoch,
    };
    stamp_broadcasts(stamp, &joined, &stop, |got| {
        let _ = receipts.send((node, got));
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Server;

    /// Two nodes of one cluster on the Redis at `REDIS_URL`, in a namespace
    /// of their own.
    async fn cluster(routing: Routing) -> (Vec<Server>, String, String) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let ns = format!(
            "bench-cluster-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut nodes = Vec::new();
        for name in ["a", "b"] {
            let opts = fawkes_conformance::Options {
                node_name: format!("{ns}-{name}"),
                pubsub: Some(url.clone()),
                pubsub_namespace: ns.clone(),
                pubsub_routing: match routing {
                    Routing::Sharded => fawkes::pubsub::redis::Routing::default(),
                    Routing::All => fawkes::pubsub::redis::Routing::AllNodes,
                },
                ..fawkes_conformance::Options::default()
            };
            nodes.push(Server::start_with(opts).await);
        }
        (nodes, url, ns)
    }

    fn args(
        nodes: &[Server],
        redis: String,
        ns: String,
        routing: Routing,
        placement: Placement,
    ) -> Args {
        Args {
            nodes: nodes.iter().map(Server::ws_url).collect(),
            broadcast_node: 0,
            subscribers: 40,
            topics: 4,
            placement,
            topic_prefix: "bench:cluster-test".into(),
            broadcasts: 10,
            interval: 0,
            burst: 3,
            payload_bytes: 256,
            rate: 1000.0,
            node_pids: vec![std::process::id(); nodes.len()],
            redis_url: Some(redis),
            pubsub_namespace: ns,
            pubsub_routing: routing,
            shards: 1024,
            baseline: 0.2,
            timeout: 10,
        }
    }

    async fn check(routing: Routing, placement: Placement) -> Value {
        let (nodes, redis, ns) = cluster(routing).await;
        let report = run(args(&nodes, redis, ns, routing, placement))
            .await
            .unwrap();
        for node in nodes {
            node.stop().await;
        }
        // 10 broadcasts over 4 topics of 10 subscribers each.
        assert_eq!(report["expected"], 100);
        assert_eq!(report["delivered"], 100);
        let per_node = report["per_node"].as_array().unwrap();
        let sum = |f: &str| per_node.iter().map(|n| n[f].as_u64().unwrap()).sum::<u64>();
        assert_eq!(sum("delivered"), 100);
        assert_eq!(sum("expected"), 100);
        assert_eq!(sum("subscribers"), 40);
        let d = &report["deliveries"];
        assert_eq!(
            d["local"].as_u64().unwrap() + d["remote"].as_u64().unwrap(),
            100
        );
        assert_eq!(d["local"], per_node[0]["delivered"]);
        assert!(report["latency_ms"]["remote"]["p99"].is_number());
        assert!(report["broadcasts_per_s"].is_number());
        // The shared Redis's bytes are others' too; its PUBLISH calls and
        // this cluster's subscriptions are not only ours either, but at
        // least ours.
        let per = &report["redis"]["per_broadcast"];
        assert!(per["publishes"].is_number());
        report
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_node_gets_its_topics_broadcasts_with_all_routing() {
        let report = check(Routing::All, Placement::Everywhere).await;
        // One channel for the cluster: Redis delivers each broadcast to both nodes.
        assert_eq!(report["redis"]["per_broadcast"]["messages"], 2.0);
        assert_eq!(report["deliveries"]["local"], 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sharded_routing_sends_local_topics_to_their_node_only() {
        let report = check(Routing::Sharded, Placement::Local).await;
        // Topics 0 and 2 on node a, 1 and 3 on node b: each shard channel
        // has one subscribed node.
        assert_eq!(report["redis"]["per_broadcast"]["messages"], 1.0);
        assert_eq!(
            report["redis"]["channels_subscribed_nodes"],
            json!([1, 1, 1, 1])
        );
        assert_eq!(report["deliveries"]["local"], 50);
    }

    #[test]
    fn topics_hash_to_the_adapters_shards() {
        assert_eq!(redis_channel("ns", Routing::All, 1024, "room:1"), "ns:b");
        let ch = redis_channel("ns", Routing::Sharded, 1024, "room:1");
        assert_eq!(ch, format!("ns:b:{}", fnv1a("room:1") % 1024));
    }
}
