//! One client connection as scenarios use it: TCP from a chosen loopback
//! source address, the WebSocket handshake with small buffers, and Phoenix
//! messages encoded and decoded by `fawkes-protocol` (V2 serializer). What
//! both transports share (the target, source addresses, failures) is here
//! too; the LongPoll client is in [`crate::longpoll`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fawkes_protocol::{Frame, Message, Payload, Ref, Serializer, events};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

/// The serializer every scenario speaks (`vsn=2.0.0`).
pub const SERIALIZER: Serializer = Serializer::V2;

/// How clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// One WebSocket per client, with a heartbeat every 30 s.
    #[value(name = "websocket")]
    WebSocket,
    /// LongPoll as phoenix.js runs it: one GET outstanding per client at
    /// all times, no heartbeats.
    #[value(name = "longpoll")]
    LongPoll,
}

impl Transport {
    /// The transport's name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "longpoll",
        }
    }

    /// The conformance app's URL for this transport on the default port.
    pub fn default_url(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws://127.0.0.1:4000/socket/websocket",
            Transport::LongPoll => "http://127.0.0.1:4000/socket/longpoll",
        }
    }

    /// The only URL scheme the transport's clients speak (no TLS: the load
    /// stays on loopback).
    fn scheme(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::LongPoll => "http",
        }
    }
}

/// The server a scenario drives: where to connect and what to ask for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The WebSocket or LongPoll URL, with `vsn=2.0.0` added when it named
    /// no `vsn`.
    pub url: String,
    /// The resolved server address; always a loopback address.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves a URL for `transport`: `ws://` for WebSocket,
    /// `http://` (the `…/longpoll` path itself) for LongPoll.
    ///
    /// # Errors
    ///
    /// A URL of another scheme, one that does not resolve, or one that
    /// resolves to an address outside loopback: load is only ever sent to
    /// this machine.
    pub async fn resolve(url: &str, transport: Transport) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad url {url:?}: {e}"))?;
        let scheme = transport.scheme();
        if uri.scheme_str() != Some(scheme) {
            return Err(format!(
                "bad url {url:?}: --transport {} takes urls like {}",
                transport.name(),
                transport.default_url()
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("bad url {url:?}: no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to nothing"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} is not a loopback address; fawkes-bench only drives servers on this machine"
            ));
        }
        let has_vsn = uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("vsn=")));
        let url = match (has_vsn, uri.query()) {
            (true, _) => url.to_owned(),
            (false, Some(_)) => format!("{url}&vsn={}", SERIALIZER.vsn()),
            (false, None) => format!("{url}?vsn={}", SERIALIZER.vsn()),
        };
        Ok(Target { url, addr })
    }
}

/// The loopback addresses client sockets are bound to.
///
/// One source address gives at most ~28,000 ephemeral ports towards one
/// server port; spreading connections over 127.0.0.2, 127.0.0.3, … lifts
/// that bound.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    offset: u8,
    count: u8,
}

impl Sources {
    /// `count` addresses from 127.0.0.2 on; 0 lets the kernel choose.
    pub fn new(count: u8) -> Self {
        Sources { offset: 0, count }
    }

    /// `count` addresses from 127.0.0.(2 + `offset`) on, so that worker
    /// processes each bind their own; 0 lets the kernel choose.
    ///
    /// # Errors
    ///
    /// The range would go past 127.0.0.254.
    pub fn starting_at(offset: u8, count: u8) -> Result<Self, String> {
        if u16::from(offset) + u16::from(count) > 253 {
            return Err(format!(
                "source addresses 127.0.0.{} and {count} up go past 127.0.0.254",
                u16::from(offset) + 2
            ));
        }
        Ok(Sources { offset, count })
    }

    /// The source address of connection `i`, if one is to be bound.
    pub fn for_connection(self, i: usize) -> Option<IpAddr> {
        (self.count > 0).then(|| {
            let k = 2 + self.offset + (i % usize::from(self.count)) as u8;
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, k))
        })
    }

    /// Every source address in turn: connection `i` uses entry
    /// `i % len`. Just `None` when the kernel chooses.
    pub fn all(self) -> Vec<Option<IpAddr>> {
        let n = usize::from(self.count).max(1);
        (0..n).map(|i| self.for_connection(i)).collect()
    }
}

/// The step at which a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    /// TCP connect (or binding the source address).
    Connect,
    /// The WebSocket handshake, or the `GET` that opens a LongPoll session.
    Handshake,
    /// The server answered a join with an error.
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// The connection closed or broke; for LongPoll, a request failed or
    /// the session is gone (`410`).
    Closed,
}

impl FailureKind {
    /// Every kind, in report order.
    pub const ALL: [FailureKind; 5] = [
        FailureKind::Connect,
        FailureKind::Handshake,
        FailureKind::Refused,
        FailureKind::Timeout,
        FailureKind::Closed,
    ];

    /// The kind's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Handshake => "handshake",
            FailureKind::Refused => "refused",
            FailureKind::Timeout => "timeout",
            FailureKind::Closed => "closed",
        }
    }
}

/// Why a connection failed, with the error as text.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The step.
    pub kind: FailureKind,
    /// The error.
    pub detail: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: FailureKind, detail: impl fmt::Display) -> Self {
        Failure {
            kind,
            detail: detail.to_string(),
        }
    }
}

/// `connect 0, handshake 2, …`: the count and the first error of each kind
/// of failure seen, or `none`.
pub fn describe_failures(failures: &[Failure]) -> String {
    let mut parts = Vec::new();
    for kind in FailureKind::ALL {
        if let Some(first) = failures.iter().find(|f| f.kind == kind) {
            let n = failures.iter().filter(|f| f.kind == kind).count();
            parts.push(format!("{} {n} (first: {})", kind.name(), first.detail));
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Failures as JSON for another process: `{"kind": [count, first
/// detail], …}`, all a report needs of them.
pub fn failures_to_json(failures: &[Failure]) -> Value {
    let mut out = serde_json::Map::new();
    for kind in FailureKind::ALL {
        if let Some(first) = failures.iter().find(|f| f.kind == kind) {
            let n = failures.iter().filter(|f| f.kind == kind).count();
            out.insert(kind.name().to_owned(), json!([n, first.detail]));
        }
    }
    Value::Object(out)
}

/// Reads [`failures_to_json`]'s form back: `count` failures of each kind,
/// all with the first one's detail.
///
/// # Errors
///
/// Anything of another shape.
pub fn failures_from_json(v: &Value) -> Result<Vec<Failure>, String> {
    let bad = || format!("not a failure summary: {v}");
    let mut failures = Vec::new();
    for (name, entry) in v.as_object().ok_or_else(bad)? {
        let kind = FailureKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(bad)?;
        let n = entry.get(0).and_then(Value::as_u64).ok_or_else(bad)?;
        let detail = entry.get(1).and_then(Value::as_str).ok_or_else(bad)?;
        let n = usize::try_from(n).map_err(|_| bad())?;
        failures.extend(std::iter::repeat_n(Failure::new(kind, detail), n));
    }
    Ok(failures)
}

/// Parses seconds, fractions allowed (`0.5`), for options such as
/// `--duration`.
///
/// # Errors
///
/// Not a finite number of seconds, zero or more.
pub fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| std::time::Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

/// Starts `start(i, stop)` for each i in 0..n, `rate` per second, in the
/// background; the token that stops the ramp and the tasks (each gets a
/// clone) and the tracker they run on.
pub fn start_at_rate<F, Fut>(
    n: usize,
    rate: f64,
    start: F,
) -> (
    tokio_util::sync::CancellationToken,
    tokio_util::task::TaskTracker,
)
where
    F: Fn(usize, tokio_util::sync::CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let token = stop.clone();
    tokio::spawn(spawn_at_rate(
        n,
        rate,
        stop.clone(),
        tracker.clone(),
        move |i| start(i, token.clone()),
    ));
    (stop, tracker)
}

/// Spawns `start(i)` on `tracker` for each i in 0..n, `rate` per second,
/// until `stop`. Due times count from the start, not from the previous
/// spawn: timer granularity (1 ms) then costs no rate, only batches of a few.
async fn spawn_at_rate<F, Fut>(
    n: usize,
    rate: f64,
    stop: tokio_util::sync::CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    start: F,
) where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let begin = tokio::time::Instant::now();
    for i in 0..n {
        let due = begin + std::time::Duration::from_secs_f64(i as f64 / rate);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        tracker.spawn(start(i));
    }
}

/// Encodes one client message with the V2 serializer.
///
/// # Errors
///
/// [`FailureKind::Closed`] if it does not encode (never for the messages
/// scenarios send).
pub fn encode(
    join_ref: Option<Ref>,
    ref_: Ref,
    topic: &str,
    event: &str,
    payload: Value,
) -> Result<Frame, Failure> {
    let msg = Message {
        join_ref,
        ref_: Some(ref_),
        topic: topic.to_owned(),
        event: event.to_owned(),
        payload: Payload::Json(payload),
    };
    SERIALIZER
        .encode_push(&msg)
        .map_err(|e| Failure::new(FailureKind::Closed, e))
}

/// The outcome of joining `topic` if `msg` is the reply to the join of ref
/// `ref_`: [`FailureKind::Refused`] unless its status is `ok`.
pub fn join_outcome(msg: &Message, ref_: &Ref, topic: &str) -> Option<Result<(), Failure>> {
    if msg.event != events::REPLY || msg.ref_.as_ref() != Some(ref_) {
        return None;
    }
    let status = msg.payload.as_json().and_then(|p| p.get("status"));
    Some(match status.and_then(Value::as_str) {
        Some("ok") => Ok(()),
        _ => Err(Failure::new(
            FailureKind::Refused,
            format!("{topic}: {:?}", msg.payload),
        )),
    })
}

/// The `response` of a `phx_reply` whose status is `ok`;
/// [`FailureKind::Refused`] with the payload otherwise.
///
/// # Errors
///
/// A status other than `ok`, or a payload that is not a reply's.
pub fn reply_response(msg: &Message) -> Result<Value, Failure> {
    let payload = msg.payload.as_json();
    match payload
        .and_then(|p| p.get("status"))
        .and_then(Value::as_str)
    {
        Some("ok") => Ok(payload
            .and_then(|p| p.get("response"))
            .cloned()
            .unwrap_or(Value::Null)),
        _ => Err(Failure::new(
            FailureKind::Refused,
            format!("{} {}: {:?}", msg.topic, msg.event, msg.payload),
        )),
    }
}

/// Small client buffers: thousands of idle clients share one machine with
/// the server being measured. Server frames in these scenarios are tiny.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// A joined or joining Phoenix socket.
pub struct Session {
    ws: WebSocketStream<TcpStream>,
    next_ref: u64,
}

impl Session {
    /// Connects (from `source` when given) and completes the WebSocket
    /// handshake.
    ///
    /// # Errors
    ///
    /// [`FailureKind::Connect`] or [`FailureKind::Handshake`].
    pub async fn open(target: &Target, source: Option<IpAddr>) -> Result<Session, Failure> {
        let connect = async {
            let socket = match target.addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if let Some(ip) = source {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(target.addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = connect
            .await
            .map_err(|e| Failure::new(FailureKind::Connect, e))?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            target.url.as_str(),
            stream,
            Some(ws_config()),
        )
        .await
        .map_err(|e| Failure::new(FailureKind::Handshake, e))?;
        Ok(Session { ws, next_ref: 1 })
    }

    /// Sends one message and returns its ref (decimal strings counting up
    /// from 1, as phoenix.js sends them).
    ///
    /// # Errors
    ///
    /// [`FailureKind::Closed`] when the connection is gone.
    pub async fn push(
        &mut self,
        join_ref: Option<Ref>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<Ref, Failure> {
        let ref_ = Value::String(self.next_ref.to_string());
        self.next_ref += 1;
        let frame = encode(join_ref, ref_.clone(), topic, event, payload)?;
        let ws_msg = if frame.is_text() {
            WsMessage::Text(
                Utf8Bytes::try_from(frame.to_bytes())
                    .map_err(|e| Failure::new(FailureKind::Closed, e))?,
            )
        } else {
            WsMessage::Binary(frame.to_bytes())
        };
        self.ws
            .send(ws_msg)
            .await
            .map_err(|e| Failure::new(FailureKind::Closed, e))?;
        Ok(ref_)
    }

    /// Joins `topic` (join ref = ref, as phoenix.js does) and waits for the
    /// reply; frames for anything else are skipped.
    ///
    /// # Errors
    ///
    /// [`FailureKind::Refused`] on an error reply, [`FailureKind::Closed`]
    /// when the connection ends first. The caller sets the timeout.
    pub async fn join(&mut self, topic: &str) -> Result<(), Failure> {
        self.join_with_ref(topic).await.map(drop)
    }

    /// [`join`](Self::join), returning the join ref that later pushes to
    /// the channel carry.
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join).
    pub async fn join_with_ref(&mut self, topic: &str) -> Result<Ref, Failure> {
        let join_ref = Value::String(self.next_ref.to_string());
        let ref_ = self
            .push(Some(join_ref.clone()), topic, events::JOIN, json!({}))
            .await?;
        loop {
            let msg = self.recv().await?;
            if let Some(outcome) = join_outcome(&msg, &ref_, topic) {
                return outcome.map(|()| join_ref);
            }
        }
    }

    /// Waits for the reply of ref `ref_` and returns its `response`;
    /// other frames are skipped.
    ///
    /// # Errors
    ///
    /// [`FailureKind::Refused`] on a reply whose status is not `ok`,
    /// [`FailureKind::Closed`] when the connection ends first. The caller
    /// sets the timeout.
    pub async fn reply(&mut self, ref_: &Ref) -> Result<Value, Failure> {
        loop {
            let msg = self.recv().await?;
            if msg.event == events::REPLY && msg.ref_.as_ref() == Some(ref_) {
                return reply_response(&msg);
            }
        }
    }

    /// Leaves `topic` (joined with `join_ref`) and waits for the ok reply.
    ///
    /// # Errors
    ///
    /// As [`reply`](Self::reply).
    pub async fn leave(&mut self, topic: &str, join_ref: &Ref) -> Result<(), Failure> {
        let ref_ = self
            .push(Some(join_ref.clone()), topic, events::LEAVE, json!({}))
            .await?;
        self.reply(&ref_).await.map(drop)
    }

    /// Sends a heartbeat; its reply is read (and skipped) by [`recv`](Self::recv).
    ///
    /// # Errors
    ///
    /// [`FailureKind::Closed`].
    pub async fn heartbeat(&mut self) -> Result<(), Failure> {
        self.push(None, events::PHOENIX_TOPIC, events::HEARTBEAT, json!({}))
            .await
            .map(drop)
    }

    /// The next message from the server; control and binary frames are
    /// skipped.
    ///
    /// # Errors
    ///
    /// [`FailureKind::Closed`] when the connection ends or sends a frame
    /// that does not decode.
    pub async fn recv(&mut self) -> Result<Message, Failure> {
        loop {
            match self.ws.next().await {
                None => return Err(Failure::new(FailureKind::Closed, "connection closed")),
                Some(Err(e)) => return Err(Failure::new(FailureKind::Closed, e)),
                Some(Ok(WsMessage::Text(text))) => {
                    return SERIALIZER
                        .decode_text(text.as_str())
                        .map_err(|e| Failure::new(FailureKind::Closed, e));
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(Failure::new(
                        FailureKind::Closed,
                        format!("server closed: {frame:?}"),
                    ));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Sends a close frame and reads until the server's, so neither side
    /// resets; the caller bounds the wait.
    pub async fn close(self) {
        let _ = self.close_clean().await;
    }

    /// [`close`](Self::close), telling whether it was clean: the close
    /// handshake completed and the server ended the connection.
    ///
    /// # Errors
    ///
    /// [`FailureKind::Closed`] when sending the close frame or reading
    /// until the end failed.
    pub async fn close_clean(mut self) -> Result<(), Failure> {
        self.ws
            .close(None)
            .await
            .map_err(|e| Failure::new(FailureKind::Closed, format!("close: {e}")))?;
        loop {
            match self.ws.next().await {
                None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(Failure::new(FailureKind::Closed, format!("close: {e}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: Transport = Transport::WebSocket;
    const LP: Transport = Transport::LongPoll;

    #[tokio::test]
    async fn adds_vsn_and_keeps_an_explicit_one() {
        let t = Target::resolve("ws://127.0.0.1:4000/socket/websocket", WS)
            .await
            .unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0");
        assert_eq!(t.addr, "127.0.0.1:4000".parse().unwrap());
        let t = Target::resolve("ws://127.0.0.1:4000/s/websocket?token=x", WS)
            .await
            .unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:4000/s/websocket?token=x&vsn=2.0.0");
        let t = Target::resolve("ws://127.0.0.1/s?vsn=2.0.1", WS)
            .await
            .unwrap();
        assert_eq!(t.url, "ws://127.0.0.1/s?vsn=2.0.1");
        assert_eq!(t.addr.port(), 80);
        let t = Target::resolve("http://127.0.0.1:4000/socket/longpoll", LP)
            .await
            .unwrap();
        assert_eq!(t.url, "http://127.0.0.1:4000/socket/longpoll?vsn=2.0.0");
    }

    #[tokio::test]
    async fn refuses_anything_but_loopback_in_the_transports_scheme() {
        let refused = |url: &'static str, transport| async move {
            Target::resolve(url, transport).await.is_err()
        };
        assert!(refused("wss://127.0.0.1:4000/socket/websocket", WS).await);
        assert!(refused("ws://192.0.2.1:4000/socket/websocket", WS).await);
        assert!(refused("not a url", WS).await);
        assert!(refused("http://127.0.0.1:4000/socket/longpoll", WS).await);
        assert!(refused("ws://127.0.0.1:4000/socket/websocket", LP).await);
        assert!(refused("https://127.0.0.1:4000/socket/longpoll", LP).await);
        assert!(refused("http://192.0.2.1:4000/socket/longpoll", LP).await);
    }

    #[test]
    fn failures_round_trip_as_json() {
        let failures = [
            Failure::new(FailureKind::Timeout, "join reply"),
            Failure::new(FailureKind::Connect, "refused"),
            Failure::new(FailureKind::Timeout, "later"),
        ];
        let back = failures_from_json(&failures_to_json(&failures)).unwrap();
        assert_eq!(describe_failures(&back), describe_failures(&failures));
        assert_eq!(back.len(), 3);
        assert!(failures_from_json(&json!({"nope": [1, "x"]})).is_err());
        assert!(failures_from_json(&json!([])).is_err());
    }

    #[test]
    fn seconds_with_fractions() {
        assert_eq!(
            parse_secs("1.5"),
            Ok(std::time::Duration::from_millis(1500))
        );
        assert_eq!(parse_secs("0"), Ok(std::time::Duration::ZERO));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("x").is_err());
    }

    #[test]
    fn sources_cycle_from_127_0_0_2() {
        assert_eq!(Sources::new(0).for_connection(5), None);
        assert_eq!(Sources::new(0).all(), [None]);
        assert_eq!(Sources::new(2).all()[1], Sources::new(2).for_connection(3));
        let s = Sources::new(3);
        let ip = |i| s.for_connection(i).unwrap().to_string();
        assert_eq!(
            [ip(0), ip(1), ip(2), ip(3)],
            ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"]
        );
        let w = Sources::starting_at(3, 2).unwrap();
        let ip = |i| w.for_connection(i).unwrap().to_string();
        assert_eq!(
            [ip(0), ip(1), ip(2)],
            ["127.0.0.5", "127.0.0.6", "127.0.0.5"]
        );
        assert!(Sources::starting_at(250, 3).is_ok());
        assert!(Sources::starting_at(250, 4).is_err());
    }
}
