//! The tracker's messages between nodes (PROTOCOL §8.4) in a compact binary
//! form. Decoding is of untrusted input: anything malformed is an error,
//! never a panic, and no count read from a message allocates more than the
//! message's own length.
//!
//! ```text
//! message  = version:u8 kind:u8 replica:u64 clock [changes]
//! clock    = n:var n×(replica:u64 counter:var)
//! changes  = context clouds topics values      (heartbeat: optional, ack: always)
//! context  = n:var n×(replica:u64 counter:var)
//! clouds   = n:var n×(replica:u64 m:var m×counter:var)
//! topics   = n:var n×str
//! values   = n:var n×(replica:u64 counter:var topic:var key:str meta:str)
//! str      = len:var utf-8 bytes                (meta: a JSON object)
//! ```
//!
//! `var` is an unsigned LEB128 integer, `u64` big-endian.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

use super::state::{Causal, Changes, Dot, Entry, ReplicaId};
use super::tracker::Meta;

const VERSION: u8 = 1;

/// What a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// To every node: the sender is alive, with its delta if it has one.
    Heartbeat,
    /// To one node: send me your state.
    TransferReq,
    /// To one node: my state, answering a request.
    TransferAck,
    /// To every node: the sender stops; forget it now.
    Goodbye,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Heartbeat => b'H',
            Kind::TransferReq => b'Q',
            Kind::TransferAck => b'A',
            Kind::Goodbye => b'G',
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            b'H' => Kind::Heartbeat,
            b'Q' => Kind::TransferReq,
            b'A' => Kind::TransferAck,
            b'G' => Kind::Goodbye,
            _ => return None,
        })
    }
}

/// A replica's clock as it gossips it: what it has seen of each replica it
/// counts as up (PROTOCOL §8.3), zero for one it has seen nothing of.
pub(crate) type Clock = Vec<(ReplicaId, u64)>;

/// One message of a tracker shard's replica.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) kind: Kind,
    /// The sending replica.
    pub(crate) replica: ReplicaId,
    pub(crate) clock: Clock,
    /// A heartbeat's delta, or a transfer's state.
    pub(crate) changes: Option<Changes<Meta>>,
}

fn put_var(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

fn put_str(buf: &mut BytesMut, s: &str) {
    put_var(buf, s.len() as u64);
    buf.put_slice(s.as_bytes());
}

/// Encodes a message.
pub(crate) fn encode(
    kind: Kind,
    replica: ReplicaId,
    clock: &[(ReplicaId, u64)],
    changes: Option<&Changes<Meta>>,
) -> Bytes {
    let values = changes.map_or(0, |c| c.values.len());
    let mut buf = BytesMut::with_capacity(16 + clock.len() * 10 + values * 64);
    buf.put_u8(VERSION);
    buf.put_u8(kind.byte());
    buf.put_u64(replica.0);
    put_var(&mut buf, clock.len() as u64);
    for &(r, c) in clock {
        buf.put_u64(r.0);
        put_var(&mut buf, c);
    }
    let Some(changes) = changes else {
        return buf.freeze();
    };
    let causal = &changes.causal;
    put_var(&mut buf, causal.clocks().count() as u64);
    for (r, c) in causal.clocks() {
        buf.put_u64(r.0);
        put_var(&mut buf, c);
    }
    let mut clouds: Vec<(ReplicaId, Vec<u64>)> = Vec::new();
    for dot in causal.cloud_dots() {
        match clouds.last_mut() {
            Some((r, clocks)) if *r == dot.replica => clocks.push(dot.clock),
            _ => clouds.push((dot.replica, vec![dot.clock])),
        }
    }
    put_var(&mut buf, clouds.len() as u64);
    for (r, clocks) in &clouds {
        buf.put_u64(r.0);
        put_var(&mut buf, clocks.len() as u64);
        for &c in clocks {
            put_var(&mut buf, c);
        }
    }
    // Every entry of a room shares its topic: name it once.
    let mut topics: HashMap<&str, u64> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for entry in changes.values.values() {
        topics.entry(&entry.topic).or_insert_with(|| {
            order.push(&entry.topic);
            order.len() as u64 - 1
        });
    }
    put_var(&mut buf, order.len() as u64);
    for topic in &order {
        put_str(&mut buf, topic);
    }
    put_var(&mut buf, changes.values.len() as u64);
    for (dot, entry) in &changes.values {
        buf.put_u64(dot.replica.0);
        put_var(&mut buf, dot.clock);
        put_var(&mut buf, topics[&*entry.topic]);
        put_str(&mut buf, &entry.key);
        put_str(&mut buf, entry.meta.get());
    }
    buf.freeze()
}

/// Reads a message, checking every length against what is left.
struct Reader<'a>(&'a [u8]);

type Result<T> = std::result::Result<T, &'static str>;

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8> {
        let (&b, rest) = self.0.split_first().ok_or("truncated")?;
        self.0 = rest;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64> {
        let (bytes, rest) = self.0.split_first_chunk::<8>().ok_or("truncated")?;
        self.0 = rest;
        Ok(u64::from_be_bytes(*bytes))
    }

    fn var(&mut self) -> Result<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("integer too long")
    }

    /// A count of items at least `min` bytes each.
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.var()?;
        if n > (self.0.len() / min) as u64 {
            return Err("count beyond the message");
        }
        Ok(n as usize)
    }

    fn str(&mut self) -> Result<&'a str> {
        let len = self.count(1)?;
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(bytes).map_err(|_| "invalid utf-8")
    }

    fn pairs(&mut self) -> Result<Clock> {
        let n = self.count(9)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((ReplicaId(self.u64()?), self.var()?));
        }
        Ok(out)
    }
}

/// Decodes a message from another node.
///
/// # Errors
///
/// Why the message is malformed.
pub(crate) fn decode(body: &[u8]) -> Result<Message> {
    let mut r = Reader(body);
    if r.u8()? != VERSION {
        return Err("unknown version");
    }
    let kind = Kind::from_byte(r.u8()?).ok_or("unknown kind")?;
    let replica = ReplicaId(r.u64()?);
    let clock = r.pairs()?;
    let changes = match kind {
        Kind::TransferReq | Kind::Goodbye => None,
        Kind::Heartbeat if r.0.is_empty() => None,
        Kind::Heartbeat | Kind::TransferAck => Some(changes(&mut r)?),
    };
    if !r.0.is_empty() {
        return Err("trailing bytes");
    }
    Ok(Message {
        kind,
        replica,
        clock,
        changes,
    })
}

fn changes(r: &mut Reader<'_>) -> Result<Changes<Meta>> {
    let mut causal = Causal::default();
    for (replica, clock) in r.pairs()? {
        causal.insert_up_to(replica, clock);
    }
    for _ in 0..r.count(9)? {
        let replica = ReplicaId(r.u64()?);
        for _ in 0..r.count(1)? {
            causal.insert(Dot {
                replica,
                clock: r.var()?,
            });
        }
    }
    let n = r.count(1)?;
    let mut topics: Vec<Arc<str>> = Vec::with_capacity(n);
    for _ in 0..n {
        topics.push(r.str()?.into());
    }
    let n = r.count(12)?;
    let mut values = HashMap::with_capacity(n);
    for _ in 0..n {
        let dot = Dot {
            replica: ReplicaId(r.u64()?),
            clock: r.var()?,
        };
        let topic = usize::try_from(r.var()?)
            .ok()
            .and_then(|i| topics.get(i))
            .ok_or("unknown topic")?
            .clone();
        let key: Arc<str> = r.str()?.into();
        let meta = r.str()?;
        // Metas go to clients verbatim: they must be JSON objects.
        let meta = RawValue::from_string(meta.to_owned()).map_err(|_| "meta is not json")?;
        if !meta.get().starts_with('{') {
            return Err("meta is not an object");
        }
        let entry = Entry {
            topic,
            // Owners matter on their own replica only.
            owner: 0,
            key,
            meta: Arc::from(meta),
        };
        if values.insert(dot, entry).is_some() {
            return Err("duplicate dot");
        }
    }
    Ok(Changes { causal, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: &str) -> Meta {
        Arc::from(RawValue::from_string(json.to_owned()).unwrap())
    }

    /// Comparable: metas as text.
    fn plain(c: &Changes<Meta>) -> (Causal, Vec<(Dot, String, String, String)>) {
        let mut values: Vec<_> = c
            .values
            .iter()
            .map(|(d, e)| {
                (
                    *d,
                    e.topic.to_string(),
                    e.key.to_string(),
                    e.meta.get().to_owned(),
                )
            })
            .collect();
        values.sort();
        (c.causal.clone(), values)
    }

    fn sample() -> Changes<Meta> {
        let mut causal = Causal::default();
        causal.insert_up_to(ReplicaId(7), 300);
        causal.insert(Dot {
            replica: ReplicaId(8),
            clock: 5,
        });
        causal.insert(Dot {
            replica: ReplicaId(8),
            clock: 9,
        });
        let mut values = HashMap::new();
        for (clock, topic, key) in [(1, "room:1", "ann"), (2, "room:1", "bob"), (3, "r2", "ann")] {
            values.insert(
                Dot {
                    replica: ReplicaId(u64::MAX),
                    clock,
                },
                Entry {
                    topic: topic.into(),
                    owner: 0,
                    key: key.into(),
                    meta: meta(r#"{"phx_ref":"x","n":[1,"é"]}"#),
                },
            );
        }
        Changes { causal, values }
    }

    #[test]
    fn every_kind_round_trips() {
        let clock = vec![(ReplicaId(1), 0), (ReplicaId(u64::MAX), u64::MAX)];
        let changes = sample();
        for (kind, changes) in [
            (Kind::Heartbeat, None),
            (Kind::Heartbeat, Some(&changes)),
            (Kind::TransferReq, None),
            (Kind::TransferAck, Some(&changes)),
            (Kind::Goodbye, None),
        ] {
            let bytes = encode(kind, ReplicaId(42), &clock, changes);
            let msg = decode(&bytes).unwrap();
            assert_eq!((msg.kind, msg.replica), (kind, ReplicaId(42)));
            assert_eq!(msg.clock, clock);
            assert_eq!(msg.changes.as_ref().map(plain), changes.map(plain));
        }
    }

    #[test]
    fn malformed_messages_are_errors_never_panics() {
        let good = encode(Kind::TransferAck, ReplicaId(1), &[], Some(&sample()));
        // Every truncation, and every single-byte corruption.
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..good.len() {
            for b in [0u8, 0x7f, 0x80, 0xff] {
                let mut bad = good.to_vec();
                bad[i] = b;
                let _ = decode(&bad);
            }
        }
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(decode(&long).unwrap_err(), "trailing bytes");
        assert!(decode(b"").is_err());
        assert!(decode(b"garbage").is_err());
        // A count far beyond the message allocates nothing.
        let mut huge = vec![VERSION, b'Q', 0, 0, 0, 0, 0, 0, 0, 1];
        huge.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(decode(&huge).unwrap_err(), "count beyond the message");
    }

    #[test]
    fn metas_that_are_not_json_objects_are_refused() {
        for bad in ["[1]", "{", "\"x\"", "{} {}"] {
            let mut changes = sample();
            for entry in changes.values.values_mut() {
                // Bypasses RawValue's check, as a hostile encoder would.
                entry.meta = meta("{}");
            }
            let bytes = encode(Kind::TransferAck, ReplicaId(1), &[], Some(&changes));
            let text = bytes.to_vec();
            let at = text.windows(2).position(|w| w == b"{}").unwrap();
            let mut forged = text[..at - 1].to_vec();
            forged.push(bad.len() as u8);
            forged.extend(bad.as_bytes());
            forged.extend(&text[at + 2..]);
            assert!(decode(&forged).is_err(), "{bad}");
        }
    }
}
