//! The `presence` scenario: a join storm into one topic.
//!
//! N clients connect over WebSocket (`vsn=2.0.0`), each with its own
//! `user_id`, and join one topic of the conformance app's `presence:*`
//! channel at a steady rate. The app tracks every joiner under its
//! `user_id` and pushes it the topic's whole list (`presence_state`); every
//! join reaches every subscriber as a `presence_diff` (or, with the app's
//! `--presence-batch-ms`, the joins of each window as one diff). Each client
//! keeps its view of the topic as phoenix.js's `Presence` does (PROTOCOL
//! §7.4: diffs before the first state wait for it; joins add metas, leaves
//! remove them by `phx_ref`; a key without metas goes) and notes when its
//! view first holds all N keys. The run ends once every client has.
//!
//! The volume is O(N²): the lists grow with the room and, unbatched, every
//! join is a frame to everyone already there (N (N + 1) / 2 diff frames in
//! all). So the clients read their sockets themselves: after the handshake
//! (tungstenite) each reads raw WebSocket frames into one buffer (gathering
//! fragmented messages) and scans each payload in place, borrowing its
//! strings and skipping everything but keys and `phx_ref`s. A view is one
//! slot per expected key holding a 32-bit fingerprint of its `phx_ref`
//! (4 bytes × N per client).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fawkes_protocol::events;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::client::{
    Failure, FailureKind, Sources, Target, Transport, describe_failures, start_at_rate,
};
use crate::latency::Latencies;
use crate::measure::{Process, app_json, check_file_limits};

/// Options of the `presence` scenario.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The WebSocket URL (`vsn=2.0.0` added unless it names one); each
    /// client adds `user_id=<prefix><i>`.
    #[arg(long, default_value = "ws://127.0.0.1:4000/socket/websocket")]
    url: String,
    /// Clients, each with its own `user_id`, all joining one topic.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// The topic every client joins (a `presence:*` topic of the
    /// conformance app).
    #[arg(long, default_value = "presence:storm")]
    topic: String,
    /// Clients started (connect, then join) per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Client i connects with `user_id=<prefix><i>`, its presence key (sent
    /// as is in the URL: letters, digits, `-`, `_`).
    #[arg(long, default_value = "storm-")]
    user_prefix: String,
    /// The server's process id, to read its memory and CPU time from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bind client sockets to this many source addresses, 127.0.0.2 and up
    /// (0: the kernel chooses). One address allows ~28,000 connections.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=253))]
    source_addrs: u8,
    /// Seconds between heartbeats of each client.
    #[arg(long, default_value_t = 30)]
    heartbeat: u64,
    /// Seconds to wait for each step: connect and handshake, the join reply.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Seconds after the last client started at which the run gives up
    /// waiting for full lists.
    #[arg(long, default_value_t = 600)]
    deadline: u64,
    /// Once every client has joined or failed, end the run when no presence
    /// frame came for this many seconds (lists that lost a key to a failed
    /// client never fill).
    #[arg(long, default_value_t = 10)]
    quiet: u64,
    /// Bytes each client reads at a time; its buffer grows for a larger
    /// frame (a long list) and shrinks back after.
    #[arg(long, default_value_t = 16 * 1024)]
    read_buffer: usize,
}

/// What the clients received, counted as it arrives (WebSocket payload
/// bytes of text frames).
#[derive(Default)]
struct Counters {
    state_frames: AtomicU64,
    state_bytes: AtomicU64,
    diff_frames: AtomicU64,
    diff_bytes: AtomicU64,
    other_frames: AtomicU64,
    other_bytes: AtomicU64,
}

impl Counters {
    fn add(&self, kind: FrameKind, bytes: usize) {
        let (frames, total) = match kind {
            FrameKind::State => (&self.state_frames, &self.state_bytes),
            FrameKind::Diff => (&self.diff_frames, &self.diff_bytes),
            FrameKind::Other => (&self.other_frames, &self.other_bytes),
        };
        frames.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `presence_state` and `presence_diff` frames (heartbeat replies go on
    /// after a storm stalls).
    fn presence_frames(&self) -> u64 {
        self.state_frames.load(Ordering::Relaxed) + self.diff_frames.load(Ordering::Relaxed)
    }

    fn bytes(&self) -> u64 {
        self.state_bytes.load(Ordering::Relaxed)
            + self.diff_bytes.load(Ordering::Relaxed)
            + self.other_bytes.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
enum FrameKind {
    State,
    Diff,
    Other,
}

/// The keys the clients track: `<prefix><i>` for i in 0..n.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    n: usize,
}

/// A presence key as a view stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyId<'k> {
    /// One of the run's keys, by index.
    Index(usize),
    /// Any other key (a leftover of another run, say).
    Other(&'k str),
}

impl Keys {
    fn key(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    fn id<'k>(&self, key: &'k str) -> KeyId<'k> {
        let index = key.strip_prefix(self.prefix.as_str()).and_then(|digits| {
            // Only the canonical spelling of a number names a run's key.
            let canonical = digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.is_empty()
                && (digits == "0" || !digits.starts_with('0'));
            canonical.then(|| digits.parse::<usize>().ok()).flatten()
        });
        match index {
            Some(i) if i < self.n => KeyId::Index(i),
            _ => KeyId::Other(key),
        }
    }
}

/// Slot values with a meaning of their own: no fingerprint is either.
const ABSENT: u32 = 0;
const MULTI: u32 = 1;

/// A 32-bit fingerprint of a `phx_ref`, never [`ABSENT`] or [`MULTI`]:
/// 8 bytes at a time, multiplied and folded. Clients only compare refs of
/// one key, so a collision is all but impossible and would only merge two
/// metas of that key.
fn fingerprint(phx_ref: &str) -> u32 {
    let mut h = 0x9e37_79b9_7f4a_7c15_u64 ^ phx_ref.len() as u64;
    for chunk in phx_ref.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
    }
    let h = (h >> 32) as u32;
    if h <= MULTI { h + 2 } else { h }
}

/// Join or leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Join,
    Leave,
}

/// One client's presence view: for each key, the `phx_ref`s of its metas.
#[derive(Debug)]
struct View {
    n: usize,
    /// Key i's only meta, [`ABSENT`], or [`MULTI`] (its metas in `multi`).
    slots: Vec<u32>,
    multi: HashMap<usize, Vec<u32>>,
    others: HashMap<String, Vec<u32>>,
    /// Keys of the run present.
    present: usize,
    /// A `presence_state` has been applied.
    synced: bool,
}

impl View {
    fn new(n: usize) -> View {
        View {
            n,
            slots: Vec::new(),
            multi: HashMap::new(),
            others: HashMap::new(),
            present: 0,
            synced: false,
        }
    }

    /// Empties the view, before a `presence_state` fills it again: what
    /// phoenix.js's `syncState` converges on is the new state.
    fn reset(&mut self) {
        if self.slots.is_empty() {
            self.slots = vec![ABSENT; self.n];
        } else {
            self.slots.fill(ABSENT);
        }
        self.multi.clear();
        self.others.clear();
        self.present = 0;
    }

    fn has_all(&self) -> bool {
        self.present == self.n
    }

    /// The first `max` keys of the run the view lacks.
    fn missing(&self, max: usize) -> Vec<usize> {
        if self.slots.is_empty() {
            return (0..self.n.min(max)).collect();
        }
        (0..self.n)
            .filter(|&i| self.slots[i] == ABSENT)
            .take(max)
            .collect()
    }

    fn apply(&mut self, key: KeyId<'_>, fp: u32, op: Op) {
        match key {
            KeyId::Index(i) => self.apply_index(i, fp, op),
            KeyId::Other(key) => match op {
                Op::Join => {
                    let refs = self.others.entry(key.to_owned()).or_default();
                    if !refs.contains(&fp) {
                        refs.push(fp);
                    }
                }
                Op::Leave => {
                    if let Some(refs) = self.others.get_mut(key) {
                        refs.retain(|r| *r != fp);
                        if refs.is_empty() {
                            self.others.remove(key);
                        }
                    }
                }
            },
        }
    }

    fn apply_index(&mut self, i: usize, fp: u32, op: Op) {
        if self.slots.is_empty() {
            // A diff applied before any state (not what the client does).
            self.slots = vec![ABSENT; self.n];
        }
        let slot = self.slots[i];
        match (op, slot) {
            (Op::Join, ABSENT) => {
                self.slots[i] = fp;
                self.present += 1;
            }
            (Op::Join, MULTI) => {
                let refs = self.multi.entry(i).or_default();
                if !refs.contains(&fp) {
                    refs.push(fp);
                }
            }
            (Op::Join, one) if one == fp => {}
            (Op::Join, one) => {
                self.multi.insert(i, vec![one, fp]);
                self.slots[i] = MULTI;
            }
            (Op::Leave, ABSENT) => {}
            (Op::Leave, MULTI) => {
                let Some(refs) = self.multi.get_mut(&i) else {
                    return;
                };
                refs.retain(|r| *r != fp);
                match refs.len() {
                    0 => {
                        self.multi.remove(&i);
                        self.slots[i] = ABSENT;
                        self.present -= 1;
                    }
                    1 => {
                        self.slots[i] = refs[0];
                        self.multi.remove(&i);
                    }
                    _ => {}
                }
            }
            (Op::Leave, one) if one == fp => {
                self.slots[i] = ABSENT;
                self.present -= 1;
            }
            (Op::Leave, _) => {}
        }
    }
}

/// What one text frame was.
#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    /// A `presence_state`, applied (the view now holds it).
    State,
    /// A `presence_diff`; `applied` unless the view had no state yet.
    Diff { applied: bool },
    /// A `phx_reply` to `ref_`, `ok` when its status is.
    Reply {
        ref_: Option<Cow<'a, str>>,
        ok: bool,
    },
    /// Anything else.
    Other,
}

/// Why a frame did not scan, and where.
#[derive(Debug)]
struct ScanError {
    what: &'static str,
    at: usize,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

type Scanned<T> = Result<T, ScanError>;

/// A small JSON scanner over one frame: it reads the structure the view
/// needs (objects, arrays, strings) and skips every other value without
/// checking it further, so a frame costs little more than one pass over its
/// bytes. Strings are borrowed unless they hold escapes. The frame is valid
/// UTF-8 already (a text frame); malformed JSON is an error, never a panic.
struct Scan<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn new(s: &'a str) -> Self {
        Scan {
            s,
            b: s.as_bytes(),
            i: 0,
        }
    }

    fn fail<T>(&self, what: &'static str) -> Scanned<T> {
        Err(ScanError { what, at: self.i })
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    fn eat_if(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.i += 1;
        }
        found
    }

    fn eat(&mut self, c: u8, what: &'static str) -> Scanned<()> {
        if self.eat_if(c) {
            Ok(())
        } else {
            self.fail(what)
        }
    }

    /// The end of the string whose opening quote is at `self.i - 1`, and
    /// whether it holds escapes; `self.i` is left on the closing quote.
    fn string_end(&mut self) -> Scanned<bool> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        // Whether a byte of `w` is `c` (the classic zero-byte test).
        let has = |w: u64, c: u8| {
            let x = w ^ (ONES * u64::from(c));
            x.wrapping_sub(ONES) & !x & HIGHS != 0
        };
        let mut escaped = false;
        loop {
            // Eight bytes at a time while none ends or escapes.
            while let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let w = u64::from_le_bytes(word);
                if has(w, b'"') || has(w, b'\\') {
                    break;
                }
                self.i += 8;
            }
            match self.b.get(self.i) {
                Some(b'"') => return Ok(escaped),
                Some(b'\\') => {
                    escaped = true;
                    self.i += 2;
                }
                Some(_) => self.i += 1,
                None => return self.fail("unterminated string"),
            }
        }
    }

    fn string(&mut self) -> Scanned<Cow<'a, str>> {
        self.eat(b'"', "a string expected")?;
        let start = self.i;
        let escaped = self.string_end()?;
        let end = self.i;
        self.i += 1;
        // Quotes are ASCII, so both ends are character boundaries.
        let Some(raw) = self.s.get(start..end) else {
            return self.fail("a string split inside a character");
        };
        if !escaped {
            return Ok(Cow::Borrowed(raw));
        }
        match serde_json::from_str::<String>(&self.s[start - 1..=end]) {
            Ok(s) => Ok(Cow::Owned(s)),
            Err(_) => self.fail("a bad escape"),
        }
    }

    /// Skips one value of any kind.
    fn skip(&mut self) -> Scanned<()> {
        match self.peek() {
            None => self.fail("a value expected"),
            Some(b'"') => {
                self.i += 1;
                self.string_end()?;
                self.i += 1;
                Ok(())
            }
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.b.get(self.i) {
                        None => return self.fail("unterminated object or array"),
                        Some(b'"') => {
                            self.i += 1;
                            self.string_end()?;
                            self.i += 1;
                        }
                        Some(b'{' | b'[') => {
                            depth += 1;
                            self.i += 1;
                        }
                        Some(b'}' | b']') => {
                            depth -= 1;
                            self.i += 1;
                            if depth == 0 {
                                return Ok(());
                            }
                        }
                        Some(_) => self.i += 1,
                    }
                }
            }
            Some(_) => {
                // A number, true, false or null: up to the next delimiter.
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    return self.fail("a value expected");
                }
                Ok(())
            }
        }
    }

    /// Calls `field` for each key of an object; it must take the value.
    fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, Cow<'a, str>) -> Scanned<()>,
    ) -> Scanned<()> {
        self.eat(b'{', "an object expected")?;
        if self.eat_if(b'}') {
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':', "':' expected")?;
            field(self, key)?;
            if !self.eat_if(b',') {
                return self.eat(b'}', "',' or '}' expected");
            }
        }
    }

    /// Calls `element` for each element of an array; it must take it.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Scanned<()>) -> Scanned<()> {
        self.eat(b'[', "an array expected")?;
        if self.eat_if(b']') {
            return Ok(());
        }
        loop {
            element(self)?;
            if !self.eat_if(b',') {
                return self.eat(b']', "',' or ']' expected");
            }
        }
    }

    /// A presence map `{key: {"metas": [{…, "phx_ref": R}, …], …}, …}`:
    /// every meta applied to `view` with `op`.
    fn presence_map(&mut self, view: &mut View, keys: &Keys, op: Op) -> Scanned<()> {
        self.object(|s, key| {
            let key = keys.id(&key);
            s.object(|s, field| {
                if field != "metas" {
                    return s.skip();
                }
                s.array(|s| {
                    let mut phx_ref = None;
                    s.object(|s, field| {
                        if field == "phx_ref" {
                            phx_ref = Some(s.string()?);
                            Ok(())
                        } else {
                            s.skip()
                        }
                    })?;
                    view.apply(key, fingerprint(phx_ref.as_deref().unwrap_or("")), op);
                    Ok(())
                })
            })
        })
    }
}

/// Reads a V2 text frame `[join_ref, ref, topic, event, payload]`,
/// applying a `presence_state` to `view`, and a `presence_diff` too when
/// `apply_diff` (its joins and leaves in the order written: Fawkes and
/// Phoenix write the joins first, the order phoenix.js applies them in).
fn parse_frame<'a>(
    text: &'a str,
    view: &mut View,
    keys: &Keys,
    apply_diff: bool,
) -> Scanned<Parsed<'a>> {
    let mut s = Scan::new(text);
    s.eat(b'[', "a frame is an array")?;
    s.skip()?;
    s.eat(b',', "a frame of 5 elements")?;
    let ref_ = if s.peek() == Some(b'"') {
        Some(s.string()?)
    } else {
        s.skip()?;
        None
    };
    s.eat(b',', "a frame of 5 elements")?;
    s.skip()?;
    s.eat(b',', "a frame of 5 elements")?;
    let event = s.string()?;
    s.eat(b',', "a frame of 5 elements")?;
    let parsed = match &*event {
        "presence_state" => {
            view.reset();
            s.presence_map(view, keys, Op::Join)?;
            Parsed::State
        }
        "presence_diff" if apply_diff => {
            s.object(|s, field| match &*field {
                "joins" => s.presence_map(view, keys, Op::Join),
                "leaves" => s.presence_map(view, keys, Op::Leave),
                _ => s.skip(),
            })?;
            Parsed::Diff { applied: true }
        }
        "presence_diff" => {
            s.skip()?;
            Parsed::Diff { applied: false }
        }
        events::REPLY => {
            let mut ok = false;
            s.object(|s, field| {
                if field == "status" {
                    ok = s.string()? == "ok";
                    Ok(())
                } else {
                    s.skip()
                }
            })?;
            Parsed::Reply { ref_, ok }
        }
        _ => {
            s.skip()?;
            Parsed::Other
        }
    };
    s.eat(b']', "a frame of 5 elements")?;
    if s.peek().is_some() {
        return s.fail("bytes after the frame");
    }
    Ok(parsed)
}

/// A frame read off the wire; a fragmented message comes as one `Text`.
#[derive(Debug, PartialEq, Eq)]
enum WsFrame<'a> {
    Text(&'a [u8]),
    Binary,
    Ping(Vec<u8>),
    Pong,
    /// The close code, if the frame had one.
    Close(Option<u16>),
}

/// The largest message a client takes (a presence list of a very large
/// room; the reader holds it whole).
const MAX_MESSAGE: usize = 1 << 30;

/// Server frames, read in place from one buffer. A message sent in
/// fragments (RFC 6455 §5.4; Fawkes splits frames over 8 KiB) is gathered
/// into `message`; control frames between its fragments are handed out as
/// they come.
struct Reader {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames.
    pos: usize,
    /// Bytes `buf` must hold for the frame being read.
    want: usize,
    /// Bytes read at a time.
    chunk: usize,
    /// The fragments so far of a message, and its opcode.
    message: Vec<u8>,
    fragmented: Option<u8>,
}

impl Reader {
    fn new(chunk: usize) -> Reader {
        let chunk = chunk.max(1024);
        Reader {
            buf: Vec::with_capacity(chunk),
            pos: 0,
            want: 0,
            chunk,
            message: Vec::new(),
            fragmented: None,
        }
    }

    fn closed(detail: impl fmt::Display) -> Failure {
        Failure::new(FailureKind::Closed, detail)
    }

    /// The next whole frame in the buffer: (fin, opcode, payload range).
    fn next_raw(&mut self) -> Result<Option<(bool, u8, std::ops::Range<usize>)>, Failure> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (avail[0], avail[1]);
        if b1 & 0x80 != 0 {
            return Err(Self::closed("masked server frame"));
        }
        let (header, len) = match b1 & 0x7f {
            126 if avail.len() >= 4 => (4, u64::from(u16::from_be_bytes([avail[2], avail[3]]))),
            127 if avail.len() >= 10 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&avail[2..10]);
                (10, u64::from_be_bytes(len))
            }
            126 | 127 => return Ok(None),
            n => (2, u64::from(n)),
        };
        let total = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(header))
            .filter(|t| *t <= MAX_MESSAGE)
            .ok_or_else(|| Self::closed(format!("a frame of {len} bytes")))?;
        if avail.len() < total {
            self.want = total;
            return Ok(None);
        }
        self.want = 0;
        let start = self.pos + header;
        self.pos += total;
        Ok(Some((b0 & 0x80 != 0, b0 & 0x0f, start..self.pos)))
    }

    /// The next whole frame or message in the buffer, if there is one.
    fn next_frame(&mut self) -> Result<Option<WsFrame<'_>>, Failure> {
        loop {
            let Some((fin, opcode, range)) = self.next_raw()? else {
                return Ok(None);
            };
            match (opcode, self.fragmented) {
                (1, None) if fin => return Ok(Some(WsFrame::Text(&self.buf[range]))),
                (2, None) if fin => return Ok(Some(WsFrame::Binary)),
                (1 | 2, None) => {
                    self.message.clear();
                    self.message.extend_from_slice(&self.buf[range]);
                    self.fragmented = Some(opcode);
                }
                (0, Some(first)) => {
                    if self.message.len() + range.len() > MAX_MESSAGE {
                        return Err(Self::closed("a message over 1 GiB"));
                    }
                    self.message.extend_from_slice(&self.buf[range]);
                    if fin {
                        self.fragmented = None;
                        return Ok(Some(match first {
                            1 => WsFrame::Text(&self.message),
                            _ => WsFrame::Binary,
                        }));
                    }
                }
                (8, _) => {
                    let p = &self.buf[range];
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    return Ok(Some(WsFrame::Close(code)));
                }
                (9, _) => return Ok(Some(WsFrame::Ping(self.buf[range].to_vec()))),
                (10, _) => return Ok(Some(WsFrame::Pong)),
                (opcode, fragmented) => {
                    return Err(Self::closed(format!(
                        "unexpected frame: opcode {opcode}, fin {fin}, inside a fragmented message: {}",
                        fragmented.is_some()
                    )));
                }
            }
        }
    }

    /// Makes room for the next read: drops what was handed out, gives back
    /// what a long list took once it is read, and reserves at least a
    /// chunk, or the whole frame being read.
    fn make_room(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() > 4 * self.chunk && self.want <= self.chunk {
            self.buf.shrink_to(self.chunk);
        }
        if self.fragmented.is_none() && self.message.capacity() > 4 * self.chunk {
            self.message = Vec::new();
        }
        let need = self.want.max(self.buf.len() + self.chunk);
        if self.buf.capacity() < need {
            self.buf.reserve_exact(need - self.buf.len());
        }
    }
}

/// A client's WebSocket once the handshake is done: server frames through
/// a [`Reader`], client frames (small) masked and written whole.
struct Wire {
    stream: TcpStream,
    reader: Reader,
}

/// Any fixed key: the server does not care, and the load stays local.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

impl Wire {
    /// Connects from `source`, upgrades to a WebSocket at `url` and keeps
    /// the bare stream. The server sends nothing before the client's first
    /// frame, so the handshake leaves no bytes behind.
    async fn open(
        addr: SocketAddr,
        url: &str,
        source: Option<IpAddr>,
        chunk: usize,
    ) -> Result<Wire, Failure> {
        let connect = async {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if let Some(ip) = source {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = connect
            .await
            .map_err(|e| Failure::new(FailureKind::Connect, e))?;
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| Failure::new(FailureKind::Handshake, e))?;
        Ok(Wire {
            stream: ws.into_inner(),
            reader: Reader::new(chunk),
        })
    }

    /// Reads more bytes (cancel-safe: nothing is lost if the read does not
    /// complete).
    async fn fill(&mut self) -> Result<(), Failure> {
        self.reader.make_room();
        match self.stream.read_buf(&mut self.reader.buf).await {
            Ok(0) => Err(Failure::new(FailureKind::Closed, "connection closed")),
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::new(FailureKind::Closed, e)),
        }
    }

    /// Sends one frame of `opcode` (masked, as a client must).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), Failure> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| Failure::new(FailureKind::Closed, e))
    }

    async fn send_text(&mut self, payload: &[u8]) -> Result<(), Failure> {
        self.send(1, payload).await
    }
}

/// What every client task needs to know.
struct Ctx {
    target: Target,
    sources: Sources,
    topic: String,
    keys: Keys,
    step_timeout: Duration,
    heartbeat: Duration,
    read_buffer: usize,
    counters: Counters,
}

/// What a client task reports.
enum Event {
    /// Joined: when the join was sent and how long its reply took.
    Joined { sent: Instant, reply: Duration },
    /// Never joined.
    Failed(Failure),
    /// Its view first held every key, `after_join` from sending its join.
    Full { at: Instant, after_join: Duration },
    /// Joined, then lost before the end of the run.
    Dropped { failure: Failure, full: bool },
    /// Still without the full list at the end of the run: client `i`, the
    /// keys of the run its view holds, and the first few it misses.
    Incomplete {
        i: usize,
        present: usize,
        missing: Vec<usize>,
    },
}

/// The clients' reports so far.
#[derive(Default)]
struct Tally {
    joined: usize,
    full: usize,
    failed: Vec<Failure>,
    dropped: Vec<Failure>,
    dropped_before_full: usize,
    first_join: Option<Instant>,
    last_full: Option<Instant>,
    reply: Latencies,
    to_full: Latencies,
    /// [`Event::Incomplete`] reports: (client, keys held, some missing).
    incomplete: Vec<(usize, usize, Vec<usize>)>,
}

impl Tally {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Joined { sent, reply } => {
                self.joined += 1;
                self.reply.record(reply);
                self.first_join = Some(self.first_join.map_or(sent, |t| t.min(sent)));
            }
            Event::Failed(f) => self.failed.push(f),
            Event::Full { at, after_join } => {
                self.full += 1;
                self.to_full.record(after_join);
                self.last_full = Some(self.last_full.map_or(at, |t| t.max(at)));
            }
            Event::Dropped { failure, full } => {
                self.dropped.push(failure);
                if !full {
                    self.dropped_before_full += 1;
                }
            }
            Event::Incomplete {
                i,
                present,
                missing,
            } => self.incomplete.push((i, present, missing)),
        }
    }

    /// Clients with nothing more to report before the end: full, failed, or
    /// dropped before their list filled.
    fn settled(&self) -> usize {
        self.full + self.failed.len() + self.dropped_before_full
    }

    /// Closes with code 1013 (the server's slow-client policy).
    fn slow_client_closes(&self) -> usize {
        self.failed
            .iter()
            .chain(&self.dropped)
            .filter(|f| f.detail.starts_with("server closed: 1013"))
            .count()
    }
}

/// Runs the scenario, prints its summary and JSON line, and returns the
/// JSON report.
///
/// # Errors
///
/// Bad options, a non-loopback server, too low a file limit, or a server
/// process that cannot be read at the start; and, after the report is
/// printed, any client that failed, dropped or never had the full list.
pub async fn run(args: Args) -> Result<Value, String> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let target = Target::resolve(&args.url, Transport::WebSocket).await?;
    check_file_limits(args.clients, args.server_pid)?;
    let server = args.server_pid.map(|pid| Process(Some(pid)));
    let me = Process(None);
    let n = args.clients;
    let ctx = Arc::new(Ctx {
        target,
        sources: Sources::new(args.source_addrs),
        topic: args.topic.clone(),
        keys: Keys {
            prefix: args.user_prefix.clone(),
            n,
        },
        step_timeout: Duration::from_secs(args.timeout),
        heartbeat: Duration::from_secs(args.heartbeat.max(1)),
        read_buffer: args.read_buffer,
        counters: Counters::default(),
    });
    println!(
        "presence: {n} clients join {} at {}/s via {}",
        ctx.topic, args.rate, ctx.target.url
    );

    let rss_before = server.map(Process::rss_kib).transpose()?;
    let server_cpu_before = server.map(Process::cpu_ms).transpose()?;
    let my_cpu_before = me.cpu_ms()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let (stop, tracker) = start_at_rate(n, args.rate, {
        let ctx = ctx.clone();
        move |i, stop| client(i, ctx.clone(), tx.clone(), stop)
    });

    let ramp = Duration::from_secs_f64(n as f64 / args.rate);
    let deadline = start + ramp + Duration::from_secs(args.deadline);
    let quiet = Duration::from_secs(args.quiet.max(1));
    let mut tally = Tally::default();
    let mut progress = interval(Duration::from_secs(1));
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    progress.tick().await;
    let (mut last_frames, mut last_change) = (0, Instant::now());
    let mut ended = "every client has the full list";
    while tally.settled() < n {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => tally.apply(ev),
                None => break,
            },
            _ = progress.tick() => {
                let c = &ctx.counters;
                let frames = c.presence_frames();
                if frames != last_frames {
                    (last_frames, last_change) = (frames, Instant::now());
                }
                eprintln!(
                    "  {:>6.1} s: joined {}, full {}, failed {}, dropped {}; {} diff frames, {:.1} MB",
                    start.elapsed().as_secs_f64(),
                    tally.joined,
                    tally.full,
                    tally.failed.len(),
                    tally.dropped.len(),
                    c.diff_frames.load(Ordering::Relaxed),
                    c.bytes() as f64 / 1e6,
                );
                let started = tally.joined + tally.failed.len() >= n;
                if started && last_change.elapsed() >= quiet {
                    ended = "no presence frame for --quiet seconds; lists that miss a key never fill";
                    break;
                }
            }
            _ = sleep_until(deadline) => {
                ended = "--deadline passed";
                break;
            }
        }
    }
    let storm_end = Instant::now();
    let server_cpu = server
        .and_then(|s| reading(s.cpu_ms()))
        .zip(server_cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let my_cpu = me.cpu_ms()?.saturating_sub(my_cpu_before);
    let rss_after = server.and_then(|s| reading(s.rss_kib()));
    let rss_peak = server.and_then(|s| reading(s.peak_rss_kib()));
    let my_rss_peak = reading(me.peak_rss_kib());
    // Joins that never reported in time.
    let unreported = n.saturating_sub(tally.joined + tally.failed.len());
    for _ in 0..unreported {
        tally.failed.push(Failure::new(
            FailureKind::Timeout,
            "no join report before the end",
        ));
    }

    // The server's own list, while every client is still there.
    let server_keys = app_json(ctx.target.addr, &format!("/api/presence/{}", ctx.topic))
        .await
        .and_then(|list| list.as_object().map(serde_json::Map::len));

    // Dropping the connections closes them without a handshake; the server
    // then sends the leaves of a storm nobody waits for.
    stop.cancel();
    tracker.close();
    if timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        eprintln!("  some clients did not stop within 10 s; leaving them");
    }

    // Reports sent as the clients stopped (incomplete views).
    while let Ok(ev) = rx.try_recv() {
        tally.apply(ev);
    }

    let c = &ctx.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let ms3 = |v: Option<f64>| v.map(|ms| (ms * 1000.0).round() / 1000.0);
    let all_full = tally.full == n;
    let storm_s = match (all_full, tally.first_join, tally.last_full) {
        (true, Some(first), Some(last)) => Some(last.duration_since(first).as_secs_f64()),
        _ => None,
    };
    let (f50, f99, fmax) = (
        ms3(tally.to_full.percentile_ms(50.0)),
        ms3(tally.to_full.percentile_ms(99.0)),
        ms3(tally.to_full.percentile_ms(100.0)),
    );
    let (r50, r99) = (
        ms3(tally.reply.percentile_ms(50.0)),
        ms3(tally.reply.percentile_ms(99.0)),
    );
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    let mb = |b: u64| b as f64 / 1e6;
    let wall = storm_end.duration_since(start).as_secs_f64();

    println!(
        "joined    {} of {n}; failed: {}",
        tally.joined,
        describe_failures(&tally.failed)
    );
    println!(
        "dropped   {}: {} (slow-client closes, 1013: {})",
        tally.dropped.len(),
        describe_failures(&tally.dropped),
        tally.slow_client_closes()
    );
    println!(
        "full list {} of {n} clients; all within {} s of the first join (joins spread over {:.2} s); join → full list p50 {} ms, p99 {} ms, max {} ms",
        tally.full,
        storm_s.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}")),
        ramp.as_secs_f64(),
        opt(f50),
        opt(f99),
        opt(fmax)
    );
    if !tally.incomplete.is_empty() {
        tally.incomplete.sort();
        let sample: Vec<String> = tally
            .incomplete
            .iter()
            .take(5)
            .map(|(i, present, missing)| {
                let missing: Vec<String> = missing.iter().map(|&k| ctx.keys.key(k)).collect();
                format!(
                    "{} holds {present} (lacks {})",
                    ctx.keys.key(*i),
                    missing.join(", ")
                )
            })
            .collect();
        println!(
            "incomplete {} joined clients without the full list at the end: {}",
            tally.incomplete.len(),
            sample.join("; ")
        );
    }
    if let Some(keys) = server_keys {
        println!(
            "server    list of {} holds {keys} keys at the end (GET /api/presence)",
            ctx.topic
        );
    }
    println!("join      reply p50 {} ms, p99 {} ms", opt(r50), opt(r99));
    println!(
        "received  presence_state {:.1} MB in {} frames; presence_diff {:.1} MB in {} frames; other {:.3} MB in {} frames",
        mb(load(&c.state_bytes)),
        load(&c.state_frames),
        mb(load(&c.diff_bytes)),
        load(&c.diff_frames),
        mb(load(&c.other_bytes)),
        load(&c.other_frames),
    );
    match server_cpu {
        Some(cpu) => {
            println!("cpu       server {cpu} ms, fawkes-bench {my_cpu} ms over {wall:.1} s")
        }
        None => println!("cpu       fawkes-bench {my_cpu} ms over {wall:.1} s (server not read)"),
    }
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!(
            "server    RSS {before} KiB before, {after} KiB after, peak {} KiB",
            rss_peak.map_or_else(|| "-".to_owned(), |p| p.to_string())
        );
    }
    println!("ended     {ended}");
    let report = json!({
        "scenario": "presence",
        "clients": n,
        "topic": ctx.topic,
        "rate": args.rate,
        "ramp_s": (ramp.as_secs_f64() * 1000.0).round() / 1000.0,
        "joined": tally.joined,
        "failures": tally.failed.len(),
        "dropped": tally.dropped.len(),
        "slow_client_closes": tally.slow_client_closes(),
        "full_clients": tally.full,
        "incomplete_clients": tally.incomplete.len(),
        "server_list_keys": server_keys,
        "storm_s": storm_s.map(|s| (s * 1000.0).round() / 1000.0),
        "full_p50_ms": f50,
        "full_p99_ms": f99,
        "full_max_ms": fmax,
        "join_reply_p50_ms": r50,
        "join_reply_p99_ms": r99,
        "state_frames": load(&c.state_frames),
        "state_bytes": load(&c.state_bytes),
        "diff_frames": load(&c.diff_frames),
        "diff_bytes": load(&c.diff_bytes),
        "other_frames": load(&c.other_frames),
        "other_bytes": load(&c.other_bytes),
        "server_cpu_ms": server_cpu,
        "client_cpu_ms": my_cpu,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_peak_kib": rss_peak,
        "client_rss_peak_kib": my_rss_peak,
        "ended": ended,
    });
    println!("{report}");
    let lost = tally.failed.len() + tally.dropped.len();
    if lost > 0 || !all_full {
        return Err(format!(
            "{lost} of {n} clients failed or dropped; {} had the full list",
            tally.full
        ));
    }
    Ok(report)
}

/// A reading taken once the run is under way: a server that died meanwhile
/// leaves it empty in the report rather than losing the report.
fn reading(r: Result<u64, String>) -> Option<u64> {
    r.map_err(|e| eprintln!("warning: {e}")).ok()
}

/// One client: connect, join, keep the view until `stop`.
async fn client(
    i: usize,
    ctx: Arc<Ctx>,
    tx: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
) {
    let mut state = ClientState {
        view: View::new(ctx.keys.n),
        pending: Vec::new(),
        joined: false,
        full: false,
        sent: Instant::now(),
    };
    let result = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        r = session(i, &ctx, &tx, &stop, &mut state) => r,
    };
    if result.is_ok() && state.joined && !state.full {
        let _ = tx.send(Event::Incomplete {
            i,
            present: state.view.present,
            missing: state.view.missing(3),
        });
    }
    if let Err(failure) = result {
        let _ = tx.send(if state.joined {
            Event::Dropped {
                failure,
                full: state.full,
            }
        } else {
            Event::Failed(failure)
        });
    }
}

/// A client's own state, outliving its session for the final report.
struct ClientState {
    view: View,
    /// Diffs received before the first state, applied after it.
    pending: Vec<String>,
    joined: bool,
    full: bool,
    /// When the join was sent.
    sent: Instant,
}

/// The join's ref and join ref: the first message of the socket.
const JOIN_REF: &str = "1";

impl ClientState {
    /// Takes one text frame.
    fn on_text(
        &mut self,
        text: &[u8],
        ctx: &Ctx,
        tx: &mpsc::UnboundedSender<Event>,
    ) -> Result<(), Failure> {
        let text = std::str::from_utf8(text)
            .map_err(|e| Failure::new(FailureKind::Closed, format!("bad text frame: {e}")))?;
        let bad = |e: ScanError| Failure::new(FailureKind::Closed, format!("bad frame: {e}"));
        let synced = self.view.synced;
        let parsed = parse_frame(text, &mut self.view, &ctx.keys, synced).map_err(bad)?;
        let kind = match parsed {
            Parsed::State => {
                for diff in std::mem::take(&mut self.pending) {
                    parse_frame(&diff, &mut self.view, &ctx.keys, true).map_err(bad)?;
                }
                self.view.synced = true;
                FrameKind::State
            }
            Parsed::Diff { applied } => {
                if !applied {
                    self.pending.push(text.to_owned());
                }
                FrameKind::Diff
            }
            Parsed::Reply { ref_, ok } => {
                if !self.joined && ref_.as_deref() == Some(JOIN_REF) {
                    if !ok {
                        return Err(Failure::new(
                            FailureKind::Refused,
                            format!("{}: {text}", ctx.topic),
                        ));
                    }
                    self.joined = true;
                    let _ = tx.send(Event::Joined {
                        sent: self.sent,
                        reply: self.sent.elapsed(),
                    });
                }
                FrameKind::Other
            }
            Parsed::Other => FrameKind::Other,
        };
        ctx.counters.add(kind, text.len());
        if self.joined && !self.full && self.view.synced && self.view.has_all() {
            self.full = true;
            let at = Instant::now();
            let _ = tx.send(Event::Full {
                at,
                after_join: at.duration_since(self.sent),
            });
        }
        Ok(())
    }
}

/// Connects, joins and reads until `stop` (`Ok`) or a failure.
async fn session(
    i: usize,
    ctx: &Ctx,
    tx: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
    state: &mut ClientState,
) -> Result<(), Failure> {
    let limit = ctx.step_timeout;
    let url = format!("{}&user_id={}", ctx.target.url, ctx.keys.key(i));
    let open = Wire::open(
        ctx.target.addr,
        &url,
        ctx.sources.for_connection(i),
        ctx.read_buffer,
    );
    let mut wire = timeout(limit, open)
        .await
        .map_err(|_| Failure::new(FailureKind::Timeout, "connect and handshake"))??;
    // V2 frames, written directly: `[join_ref, ref, topic, event, payload]`.
    let join = json!([JOIN_REF, JOIN_REF, ctx.topic, events::JOIN, {}]).to_string();
    state.sent = Instant::now();
    wire.send_text(join.as_bytes()).await?;
    let join_deadline = state.sent + limit;
    let mut beat = interval_at(state.sent + ctx.heartbeat, ctx.heartbeat);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_ref = 2u64;
    loop {
        // Every whole frame already read, then wait for more.
        let mut pong = None;
        while let Some(frame) = wire.reader.next_frame()? {
            match frame {
                WsFrame::Text(text) => state.on_text(text, ctx, tx)?,
                WsFrame::Close(code) => {
                    let code = code.map_or_else(|| "no code".to_owned(), |c| c.to_string());
                    return Err(Failure::new(
                        FailureKind::Closed,
                        format!("server closed: {code}"),
                    ));
                }
                WsFrame::Ping(payload) => pong = Some(payload),
                WsFrame::Binary | WsFrame::Pong => {}
            }
        }
        if let Some(payload) = pong {
            wire.send(10, &payload).await?;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            _ = sleep_until(join_deadline), if !state.joined => {
                return Err(Failure::new(FailureKind::Timeout, "join reply"));
            }
            _ = beat.tick() => {
                let ref_ = next_ref.to_string();
                next_ref += 1;
                let beat = json!([null, ref_, events::PHOENIX_TOPIC, events::HEARTBEAT, {}]);
                wire.send_text(beat.to_string().as_bytes()).await?;
            }
            r = wire.fill() => r?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Keys {
        Keys {
            prefix: "u".into(),
            n,
        }
    }

    fn parse(text: &str, view: &mut View, keys: &Keys) -> Parsed<'static> {
        let synced = view.synced;
        let parsed = parse_frame(text, view, keys, synced).unwrap();
        match parsed {
            Parsed::State => {
                view.synced = true;
                Parsed::State
            }
            Parsed::Diff { applied } => Parsed::Diff { applied },
            Parsed::Reply { ref_, ok } => Parsed::Reply {
                ref_: ref_.map(|r| Cow::Owned(r.into_owned())),
                ok,
            },
            Parsed::Other => Parsed::Other,
        }
    }

    #[test]
    fn keys_of_the_run_are_indices() {
        let k = keys(100);
        assert_eq!(k.id("u0"), KeyId::Index(0));
        assert_eq!(k.id("u99"), KeyId::Index(99));
        assert_eq!(k.id("u100"), KeyId::Other("u100"));
        assert_eq!(k.id("u07"), KeyId::Other("u07"));
        assert_eq!(k.id("u+7"), KeyId::Other("u+7"));
        assert_eq!(k.id("u"), KeyId::Other("u"));
        assert_eq!(k.id("x1"), KeyId::Other("x1"));
        assert_eq!(k.key(7), "u7");
    }

    #[test]
    fn state_then_diffs_as_phoenix_js() {
        let k = keys(3);
        let mut v = View::new(3);
        let state = r#"["1",null,"presence:t","presence_state",{"u0":{"metas":[{"device":null,"online_at":1,"phx_ref":"A"}]},"x":{"metas":[{"phx_ref":"X"}]}}]"#;
        assert_eq!(parse(state, &mut v, &k), Parsed::State);
        assert_eq!((v.present, v.others.len()), (1, 1));
        let join = r#"[null,null,"presence:t","presence_diff",{"joins":{"u1":{"metas":[{"phx_ref":"B"}]},"u2":{"metas":[{"phx_ref":"C"}]}},"leaves":{}}]"#;
        assert_eq!(parse(join, &mut v, &k), Parsed::Diff { applied: true });
        assert!(v.has_all());
        // A second meta of u1 (another device), then its first one leaves:
        // the key stays.
        let second = r#"[null,null,"presence:t","presence_diff",{"joins":{"u1":{"metas":[{"phx_ref":"D"}]}},"leaves":{"u1":{"metas":[{"phx_ref":"B"}]}}}]"#;
        parse(second, &mut v, &k);
        assert!(v.has_all());
        let leave = r#"[null,null,"presence:t","presence_diff",{"joins":{},"leaves":{"u1":{"metas":[{"phx_ref":"D"}]},"u9":{"metas":[{"phx_ref":"Z"}]},"x":{"metas":[{"phx_ref":"X"}]}}}]"#;
        parse(leave, &mut v, &k);
        assert_eq!((v.present, v.others.len()), (2, 0));
        // A leave of an unknown ref changes nothing.
        let stale = r#"[null,null,"presence:t","presence_diff",{"joins":{},"leaves":{"u0":{"metas":[{"phx_ref":"old"}]}}}]"#;
        parse(stale, &mut v, &k);
        assert_eq!(v.present, 2);
        // A new state replaces everything.
        let state = r#"["1",null,"presence:t","presence_state",{"u2":{"metas":[{"phx_ref":"C"},{"phx_ref":"E"}]}}]"#;
        parse(state, &mut v, &k);
        assert_eq!(v.present, 1);
        assert_eq!(v.multi.len(), 1);
    }

    #[test]
    fn diffs_before_the_state_wait_and_replies_are_read() {
        let k = keys(2);
        let mut v = View::new(2);
        let diff = r#"[null,null,"t","presence_diff",{"joins":{"u0":{"metas":[{"phx_ref":"A"}]}},"leaves":{}}]"#;
        assert_eq!(parse(diff, &mut v, &k), Parsed::Diff { applied: false });
        assert_eq!(v.present, 0);
        let reply = r#"["1","1","t","phx_reply",{"status":"ok","response":{}}]"#;
        assert_eq!(
            parse(reply, &mut v, &k),
            Parsed::Reply {
                ref_: Some("1".into()),
                ok: true
            }
        );
        let refused = r#"[null,"1","t","phx_reply",{"status":"error","response":{"reason":"x"}}]"#;
        assert!(matches!(
            parse(refused, &mut v, &k),
            Parsed::Reply { ok: false, .. }
        ));
        let other = r#"[null,null,"t","other",{"a":[1,2,{"b":null}]}]"#;
        assert_eq!(parse(other, &mut v, &k), Parsed::Other);
        for bad in [
            "[1,2,3]",
            r#"[null,null,"t","e",{},1]"#,
            r#"[null,null,"t","e",{}] x"#,
            r#"[null,null,"t","presence_state",{"u0":{"metas":[{"phx_ref":"A}]}}]"#,
            r#"[null,null,"t","presence_state",{"u0":{"metas":[{"phx_ref":1}]}}]"#,
            r#"[null,null,"t","presence_state",{"u0":{"metas":[{"phx_ref":"A"}]}"#,
            r#"[null,null,"t","presence_state",{"u0" {"metas":[]}}]"#,
            r#"[null,null,"t","e",{"a":[1,{"b":2]}]"#,
            r#"[null,null,"t","e",]"#,
            "",
        ] {
            assert!(parse_frame(bad, &mut v, &k, true).is_err(), "{bad}");
        }
        // Whitespace anywhere JSON allows it, and values of every kind
        // beside the refs.
        let spaced = "[ null , null , \"t\" , \"presence_diff\" , { \"joins\" : { \"u1\" : { \"metas\" : [ { \"n\" : -1.5e3 , \"l\" : [true, false, null, {\"x\": \"]}\"}] , \"phx_ref\" : \"Q\" } ] , \"extra\" : {} } } , \"leaves\" : { } } ]\n";
        assert_eq!(
            parse_frame(spaced, &mut v, &k, true).unwrap(),
            Parsed::Diff { applied: true }
        );
        assert_eq!(v.slots[1], fingerprint("Q"));
        // Escaped keys and refs still parse.
        let escaped =
            r#"["1",null,"t","presence_state",{"u\u0030":{"metas":[{"phx_ref":"A\"B"}]}}]"#;
        parse(escaped, &mut v, &k);
        assert_eq!(v.present, 1);
    }

    #[test]
    fn long_strings_and_escapes_scan_whole() {
        let k = keys(1);
        let mut v = View::new(1);
        let text = r#"["1",null,"a topic longer than eight bytes","presence_state",{"u0":{"metas":[{"note":"0123456789abcdef\\\"0123456789abcdef\"","phx_ref":"0123456789abcdef\u0041\"0123456789"}]}}]"#;
        assert_eq!(parse(text, &mut v, &k), Parsed::State);
        assert_eq!(v.slots[0], fingerprint("0123456789abcdefA\"0123456789"));
    }

    /// A server frame: unmasked, with the length in the header's forms.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn reader_gathers_fragments_and_waits_for_whole_frames() {
        let long = vec![b'x'; 70_000];
        let mut bytes = server_frame(true, 1, b"one");
        bytes.extend(server_frame(false, 1, b"fra"));
        bytes.extend(server_frame(true, 9, b"p"));
        bytes.extend(server_frame(false, 0, &long));
        bytes.extend(server_frame(true, 0, b"gments"));
        bytes.extend(server_frame(true, 2, b"bin"));
        bytes.extend(server_frame(true, 8, &1013u16.to_be_bytes()));
        let mut r = Reader::new(1024);
        let mut seen = Vec::new();
        // Fed a few bytes at a time, as reads may come.
        for piece in bytes.chunks(1000) {
            r.make_room();
            r.buf.extend_from_slice(piece);
            while let Some(frame) = r.next_frame().unwrap() {
                seen.push(match frame {
                    WsFrame::Text(t) => format!("text {}", t.len()),
                    other => format!("{other:?}"),
                });
            }
        }
        assert_eq!(
            seen,
            [
                "text 3",
                "Ping([112])",
                &format!("text {}", 3 + long.len() + 6),
                "Binary",
                "Close(Some(1013))"
            ]
        );
        // The buffers shrink back once the long message is handed out.
        r.make_room();
        assert!(r.buf.capacity() <= 4 * 1024 && r.message.capacity() == 0);
        // A continuation without a start, or a masked frame, ends the read.
        let mut r = Reader::new(1024);
        r.buf.extend(server_frame(true, 0, b"x"));
        assert!(r.next_frame().is_err());
        let mut r = Reader::new(1024);
        r.buf.extend_from_slice(&[0x81, 0x81, 0, 0, 0, 0, b'x']);
        assert!(r.next_frame().is_err());
    }

    #[test]
    fn fingerprints_avoid_the_reserved_values() {
        assert!(fingerprint("") > MULTI);
        assert_ne!(
            fingerprint("F_Jk3u5Vy4wBCwKh"),
            fingerprint("F_Jk4H5qBC8BCwNB")
        );
    }

    /// A run of `n` clients against the conformance app served in this
    /// process, batched over `window` or not.
    async fn short_run(n: usize, window: Option<Duration>) -> Value {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = fawkes_conformance::Options {
            presence_batch_window: window,
            ..fawkes_conformance::Options::default()
        };
        let server = tokio::spawn(fawkes_conformance::serve(listener, opts, async move {
            let _ = stop_rx.await;
        }));
        let args = Args {
            url: format!("ws://127.0.0.1:{port}/socket/websocket"),
            clients: n,
            topic: "presence:smoke".into(),
            rate: 2000.0,
            user_prefix: "smoke-".into(),
            server_pid: Some(std::process::id()),
            source_addrs: 2,
            heartbeat: 30,
            timeout: 10,
            deadline: 30,
            quiet: 5,
            // Small, so that lists span several reads.
            read_buffer: 1024,
        };
        let report = run(args).await.unwrap();
        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
        report
    }

    fn assert_every_client_full(report: &Value, n: usize) {
        assert_eq!(report["joined"], n, "{report}");
        assert_eq!(report["full_clients"], n, "{report}");
        assert_eq!(report["failures"], 0, "{report}");
        assert_eq!(report["dropped"], 0, "{report}");
        assert_eq!(report["state_frames"], n, "{report}");
        assert_eq!(report["incomplete_clients"], 0, "{report}");
        assert_eq!(report["server_list_keys"], n, "{report}");
        assert!(report["storm_s"].as_f64().is_some(), "{report}");
        assert!(report["state_bytes"].as_u64().unwrap() > 0, "{report}");
        assert!(report["rss_after_kib"].as_u64().unwrap() > 0, "{report}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_client_gets_the_full_list_one_diff_per_join() {
        // The last lists are ~11 KB: over one 8 KiB fragment.
        let n = 120;
        let report = short_run(n, None).await;
        assert_every_client_full(&report, n);
        // Each join reaches at least its own client, and at most every
        // client subscribed by then.
        let diffs = report["diff_frames"].as_u64().unwrap();
        assert!(diffs >= n as u64 && diffs <= (n * n) as u64, "{report}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_client_gets_the_full_list_with_batched_diffs() {
        let n = 120;
        let report = short_run(n, Some(Duration::from_millis(20))).await;
        assert_every_client_full(&report, n);
        let diffs = report["diff_frames"].as_u64().unwrap();
        // 60 ms of joins in 20 ms windows: a few diffs per client.
        assert!(diffs < (n * (n + 1) / 2) as u64, "{report}");
    }
}
