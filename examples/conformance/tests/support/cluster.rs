//! Clusters of conformance nodes for the cluster tests: each node is a
//! separate `fawkes-conformance` process, and the nodes of one cluster share
//! a Redis and a namespace (unique per cluster, so clusters of tests running
//! in parallel on one Redis never hear each other).
//!
//! Processes are killed (SIGKILL) when their handle drops, so a failing test
//! leaves nothing running.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::longpoll::{LpAnswer, LpClient, NDJSON, encode_component, lp_try_request};
use super::{Frame, Http, RECV_TIMEOUT, WsClient, phoenix_helpers};

/// The app under test, built by cargo for this package's integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_fawkes-conformance");

/// How long a node may take from spawn to its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a fresh cluster may take to form (every node connected to
/// Redis).
pub const FORM_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of a process's output kept for failure messages.
const LOG_LINES: usize = 400;

/// The Redis the cluster tests use: `REDIS_URL`, default
/// `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// `host:port` of a `redis://[user:pass@]host[:port][/db]` URL.
fn redis_host_port(url: &str) -> String {
    let rest = url
        .strip_prefix("redis://")
        .unwrap_or_else(|| panic!("REDIS_URL must be redis://HOST:PORT, got {url:?}"));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host_port = rest.split('/').next().unwrap_or(rest);
    if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:6379")
    }
}

/// Whether something at `url` answers a RESP `PING` within a second.
pub async fn redis_answers(url: &str) -> bool {
    let probe = async {
        let mut tcp = TcpStream::connect(redis_host_port(url)).await.ok()?;
        tcp.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = tcp.read(&mut buf).await.ok()?;
        // `+PONG`, or an error such as `-NOAUTH`: either way a Redis answers.
        (n > 0 && matches!(buf[0], b'+' | b'-')).then_some(())
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Sends one command to the Redis at `url` and returns its reply's text (a
/// simple or bulk string; an error reply fails the test).
pub async fn redis_command(url: &str, args: &[&str]) -> String {
    let work = async {
        let mut tcp = TcpStream::connect(redis_host_port(url)).await?;
        let mut command = format!("*{}\r\n", args.len());
        for arg in args {
            command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        tcp.write_all(command.as_bytes()).await?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 16 << 10];
        while !resp_complete(&reply) {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .unwrap_or_else(|_| panic!("redis {args:?} at {url}: no reply within 2 s"))
        .unwrap_or_else(|e| panic!("redis {args:?} at {url}: {e}"));
    let text = String::from_utf8_lossy(&reply).into_owned();
    match text.split_once("\r\n") {
        Some((head, rest)) if head.starts_with('$') => rest.trim_end_matches("\r\n").to_string(),
        Some((head, _)) if head.starts_with('+') || head.starts_with(':') => head[1..].to_string(),
        _ => panic!("redis {args:?} at {url} answered {text:?}"),
    }
}

/// Whether `reply` holds one whole simple, integer, error or bulk reply.
fn resp_complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply[0] != b'$' {
        return true;
    }
    let len: i64 = String::from_utf8_lossy(&reply[1..end]).parse().unwrap_or(0);
    len < 0 || reply.len() >= end + 2 + len as usize + 2
}

/// Fails the test, clearly, when no Redis answers at `url`: the cluster
/// tests are never skipped (CI provides Redis).
pub async fn require_redis(url: &str) {
    assert!(
        redis_answers(url).await,
        "the cluster tests need a Redis: nothing answers PING at {url} \
         (set REDIS_URL, or start one: redis-server --port 6379)"
    );
}

/// A name unique across processes and within this one: `<prefix>-<pid>-<n>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:08x}", std::process::id())
}

/// A port that was free a moment ago (bound on 127.0.0.1, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// The last lines a child process wrote, shared with its reader threads.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<VecDeque<String>>>);

impl Log {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().expect("log lock");
        if lines.len() == LOG_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn dump(&self) -> String {
        let lines = self.0.lock().expect("log lock");
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Copies `out` line by line into the log on a thread of its own (so the
    /// pipe never fills); the first line for which `found` returns a value
    /// is sent on `tx`.
    fn drain<R, T, F>(&self, out: R, mut found: F, tx: Option<oneshot::Sender<T>>)
    where
        R: Read + Send + 'static,
        T: Send + 'static,
        F: FnMut(&str) -> Option<T> + Send + 'static,
    {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut tx = tx;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.is_some()
                    && let Some(value) = found(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(value);
                }
                log.push(line);
            }
        });
    }
}

/// The address of a `listening on http://HOST:PORT` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on http://")?;
    rest.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

/// One conformance node: a child process, killed when this drops.
pub struct Node {
    /// The `--node-name`, as `/healthz` reports it.
    pub name: String,
    /// Where it listens (`--port 0`, read from its log).
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Log,
}

impl Node {
    /// Spawns a node on `127.0.0.1:0` in the cluster `namespace` of the Redis
    /// at `redis` and waits for its `listening on` line.
    pub async fn start(redis: &str, namespace: &str, name: &str, routing: &str) -> Node {
        let mut child = Command::new(BIN)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--pubsub", redis, "--pubsub-namespace", namespace])
            .args(["--pubsub-routing", routing, "--node-name", name])
            .env("RUST_LOG", "info")
            .env_remove("PRESENCE_BATCH_MS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let log = Log::default();
        let (tx, rx) = oneshot::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        log.drain(stdout, listening_addr, Some(tx));
        log.drain(stderr, |_| None::<()>, None);
        let mut node = Node {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: Some(child),
            log,
        };
        match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(addr)) => node.addr = addr,
            Ok(Err(_)) => panic!(
                "node {name} ended without `listening on http://…`: {:?}\n{}",
                node.child.as_mut().map(Child::try_wait),
                node.log.dump()
            ),
            Err(_) => panic!(
                "node {name}: no `listening on http://…` within {START_TIMEOUT:?}\n{}",
                node.log.dump()
            ),
        }
        node
    }

    /// The node's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An HTTP client for this node.
    pub fn http(&self) -> Http {
        Http::new(self.addr)
    }

    /// A WebSocket client (the query selects `vsn` and params).
    pub async fn ws(&self, query: &str) -> WsClient {
        WsClient::connect(self.addr, query)
            .await
            .unwrap_or_else(|status| {
                panic!("{}: upgrade {query:?} refused: HTTP {status}", self.name)
            })
    }

    /// A LongPoll session on this node alone.
    pub async fn lp(&self, query: &str) -> LpClient {
        LpClient::open(self.addr, query).await
    }

    /// `GET /healthz`: 200 `{"status":"ok","node":<name>}`.
    pub async fn assert_healthy(&self) {
        let got = self.http().get("/healthz").await;
        let want = (200, serde_json::json!({"status": "ok", "node": self.name}));
        assert_eq!(got, want, "GET /healthz on {}", self.name);
    }

    /// Kills the process with SIGKILL (no goodbye to the cluster) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the node logged (the last lines), for failure messages.
    pub fn log(&self) -> String {
        self.log.dump()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nodes joined over one Redis in a namespace of their own.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub namespace: String,
    pub redis: String,
}

impl Cluster {
    /// `n` nodes on `REDIS_URL` with the default (sharded) routing.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(&redis_url(), n, "sharded").await
    }

    /// `n` nodes on the Redis at `redis`, routing `sharded` or `all`, once
    /// the cluster has formed ([`await_formed`](Self::await_formed)); fails
    /// clearly when that Redis does not answer.
    pub async fn start_with(redis: &str, n: usize, routing: &str) -> Cluster {
        let cluster = Self::spawn(redis, n, routing).await;
        cluster.await_formed().await;
        cluster
    }

    /// `n` nodes, returned as soon as each has logged `listening on` (not
    /// yet necessarily connected to Redis).
    pub async fn spawn(redis: &str, n: usize, routing: &str) -> Cluster {
        require_redis(redis).await;
        let namespace = unique("fawkes-cluster-test");
        let names: Vec<String> = (0..n)
            .map(|i| format!("{namespace}-{}", char::from(b'a' + i as u8)))
            .collect();
        let starts = names
            .iter()
            .map(|name| Node::start(redis, &namespace, name, routing));
        let nodes = futures_util::future::join_all(starts).await;
        Cluster {
            nodes,
            namespace,
            redis: redis.to_string(),
        }
    }

    /// Waits (at most [`FORM_TIMEOUT`]) until an API broadcast from each
    /// node reaches a client on every node. A node logs `listening on`
    /// before it is connected to Redis, and what it publishes or should
    /// receive until then is lost (see the test
    /// `c49_a_node_is_in_the_cluster_once_it_listens`); the tests of the
    /// cluster's steady state start after this.
    pub async fn await_formed(&self) {
        let topic = format!("bench:{}", unique("formed"));
        let mut probes = Vec::new();
        for node in &self.nodes {
            let mut ws = node.ws("vsn=2.0.0").await;
            ws.join(&topic, json!({})).await;
            probes.push(ws);
        }
        let deadline = Instant::now() + FORM_TIMEOUT;
        for node in &self.nodes {
            let mut attempt = 0;
            'retry: loop {
                attempt += 1;
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not form within {FORM_TIMEOUT:?}: broadcasts from {} do not reach every node\n{}",
                    node.name,
                    self.logs()
                );
                let payload = json!({"probe": attempt});
                node.http()
                    .broadcast(&topic, "probe", payload.clone())
                    .await;
                let want = json!([null, null, topic, "probe", payload]);
                for ws in &mut probes {
                    let until = Instant::now() + Duration::from_millis(300);
                    loop {
                        let wait = until.saturating_duration_since(Instant::now());
                        match ws.recv_within(wait).await {
                            Some(Frame::Json(frame)) if frame == want => break,
                            // An earlier attempt, late.
                            Some(Frame::Json(_)) => {}
                            Some(other) => panic!("cluster probe socket: {other:?}"),
                            None => continue 'retry,
                        }
                    }
                }
                break;
            }
        }
        for mut ws in probes {
            // A clean close, so that the nodes' logs show no protocol error.
            let _ = ws.try_send(Message::Close(None)).await;
            while let Some(Frame::Json(_)) = ws.recv_within(RECV_TIMEOUT).await {}
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ({})\n{}", n.name, n.addr, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    /// A failing test shows what the nodes logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("node logs of the failed test:\n{}", self.logs());
        }
    }
}

// ---------------------------------------------------------------------------
// A Redis of the test's own
// ---------------------------------------------------------------------------

/// A `redis-server` child process on a port of its own, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    log: Log,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            log: Log::default(),
        };
        server.restart().await;
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port, no persistence, and waits
    /// (at most 10 s) until it answers `PING`.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let port = self.port.to_string();
        let mut child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn redis-server (is it installed?): {e}"));
        self.log
            .drain(child.stdout.take().expect("stdout"), |_| None::<()>, None);
        self.log
            .drain(child.stderr.take().expect("stderr"), |_| None::<()>, None);
        self.child = Some(child);
        let url = self.url();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_answers(&url).await {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} does not answer PING:\n{}",
                self.log.dump()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// A LongPoll session spread over nodes
// ---------------------------------------------------------------------------

/// A V2 LongPoll session whose requests go to the nodes of `addrs` in turn
/// (no sticky sessions): the session lives on the node that opened it, and
/// the others must pass its polls and posts on.
pub struct RoamingLp {
    /// The connect query (`vsn=2.0.x` and params), sent on every request.
    pub query: String,
    /// The session token from the opening 410.
    pub token: String,
    /// Always V2 (the helpers' frames are arrays).
    pub v2: bool,
    /// Every request after the opening one, in order: the node it went to
    /// and its method.
    pub trail: Vec<(SocketAddr, Method)>,
    addrs: Vec<SocketAddr>,
    turn: usize,
    client: reqwest::Client,
    counter: u64,
    inbox: VecDeque<Value>,
}

impl RoamingLp {
    phoenix_helpers!();

    /// Opens a session on `home` (GET without token, 410 with a token); the
    /// later requests go to `others` in turn.
    pub async fn open(home: SocketAddr, others: &[SocketAddr], query: &str) -> RoamingLp {
        assert!(query.contains("vsn=2.0."), "RoamingLp speaks V2: {query:?}");
        let client = reqwest::Client::new();
        let answer = lp_try_request(&client, home, Method::GET, query, &[], None)
            .await
            .unwrap_or_else(|e| panic!("open a LongPoll session on {home}: {e}"));
        RoamingLp {
            query: query.to_string(),
            token: answer.assert_new_session(),
            v2: true,
            trail: Vec::new(),
            addrs: others.to_vec(),
            turn: 0,
            client,
            counter: 0,
            inbox: VecDeque::new(),
        }
    }

    /// The next node in turn.
    fn next_addr(&mut self) -> SocketAddr {
        let addr = self.addrs[self.turn % self.addrs.len()];
        self.turn += 1;
        addr
    }

    async fn request(&mut self, method: Method, body: Option<Vec<u8>>) -> (SocketAddr, LpAnswer) {
        let addr = self.next_addr();
        self.trail.push((addr, method.clone()));
        let query = format!("{}&token={}", self.query, encode_component(&self.token));
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("content-type", NDJSON)]
        } else {
            &[]
        };
        let answer = lp_try_request(&self.client, addr, method.clone(), &query, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} to {addr} of session {}: {e}", self.token));
        (addr, answer)
    }

    /// Posts messages as one ndjson body to the next node; asserts
    /// `{"status":200}` (the session is alive and took them).
    pub async fn send_all(&mut self, values: &[Value]) {
        let lines: Vec<String> = values.iter().map(Value::to_string).collect();
        let (addr, answer) = self
            .request(Method::POST, Some(lines.join("\n").into_bytes()))
            .await;
        assert_eq!(
            (answer.http, answer.json()),
            (200, serde_json::json!({"status": 200})),
            "POST of {lines:?} to {addr} (session opened elsewhere)"
        );
    }

    /// Posts one message to the next node.
    pub async fn send(&mut self, value: Value) {
        self.send_all(&[value]).await;
    }

    /// One poll on the next node: must be 200 or 204 for this session.
    pub async fn poll(&mut self) -> Vec<Value> {
        let token = self.token.clone();
        let (addr, answer) = self.request(Method::GET, None).await;
        answer.assert_get();
        let status = answer.status();
        assert!(
            status == 200 || status == 204,
            "poll to {addr} of a live session (opened elsewhere) answered {}",
            answer.text()
        );
        answer.poll_values(&token)
    }

    /// The next message, polling the nodes in turn; fails after
    /// `RECV_TIMEOUT` plus one poll window.
    pub async fn recv(&mut self) -> Value {
        let deadline = Instant::now() + RECV_TIMEOUT + Duration::from_secs(10);
        while self.inbox.is_empty() {
            assert!(
                Instant::now() < deadline,
                "no LongPoll message within {:?}",
                RECV_TIMEOUT + Duration::from_secs(10)
            );
            let messages = self.poll().await;
            self.inbox.extend(messages);
        }
        self.inbox.pop_front().expect("inbox")
    }

    /// Asserts that the next message is exactly `want`.
    pub async fn expect(&mut self, want: Value) {
        let got = self.recv().await;
        assert_eq!(got, want, "unexpected LongPoll message");
    }
}
