//! Latency samples and their percentiles: [`Latencies`] keeps every
//! sample (one per connection), [`Histogram`] counts them in buckets of
//! under 1% width (millions of replies), and both travel between worker
//! processes as JSON.

use std::time::Duration;

use serde_json::{Value, json};

/// Every sample of one measurement, kept exactly: a run records one per
/// connection, so tens of thousands at most.
#[derive(Debug, Default)]
pub struct Latencies {
    micros: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        self.micros
            .push(d.as_micros().try_into().unwrap_or(u64::MAX));
        self.sorted = false;
    }

    /// The `p`-th percentile (0–100, nearest rank) in milliseconds; `None`
    /// without samples.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
        let n = self.micros.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let us = self.micros[rank.clamp(1, n) - 1];
        Some(us as f64 / 1000.0)
    }

    /// The samples, in microseconds (in no particular order).
    pub fn micros(&self) -> &[u64] {
        &self.micros
    }

    /// Records samples given in microseconds, such as a worker's
    /// [`micros`](Self::micros).
    pub fn extend_micros(&mut self, micros: impl IntoIterator<Item = u64>) {
        self.micros.extend(micros);
        self.sorted = false;
    }
}

/// Bits of sub-bucket index per power of two: 128 buckets between 2^k and
/// 2^(k+1), so a bucket is at most 0.8% wide; exact below 128 µs.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

/// Counts of samples (microseconds) in log-linear buckets: a fixed few KiB
/// whatever the number of samples, merged by adding counts.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < SUB {
            return us as usize;
        }
        let shift = 63 - us.leading_zeros() - SUB_BITS;
        let sub = (us >> shift) & (SUB - 1);
        ((u64::from(shift) + 1) * SUB + sub) as usize
    }

    /// The smallest value of bucket `i`.
    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = i / SUB - 1;
        (SUB + i % SUB) << shift
    }

    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        self.record_micros(d.as_micros().try_into().unwrap_or(u64::MAX));
    }

    /// Records one sample of `us` microseconds.
    pub fn record_micros(&mut self, us: u64) {
        self.add(Self::index(us), 1);
        self.max_us = self.max_us.max(us);
    }

    fn add(&mut self, i: usize, n: u64) {
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += n;
        self.total += n;
    }

    /// How many samples there are.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (i, &n) in other.counts.iter().enumerate() {
            if n > 0 {
                self.add(i, n);
            }
        }
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The `p`-th percentile (0–100, nearest rank) in milliseconds, as the
    /// middle of its bucket (never above the largest sample); `None`
    /// without samples.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, hi) = (Self::lower(i), Self::lower(i + 1));
                let mid = lo + (hi - lo).saturating_sub(1) / 2;
                return Some(mid.min(self.max_us) as f64 / 1000.0);
            }
        }
        Some(self.max_us as f64 / 1000.0)
    }

    /// The largest sample in milliseconds, exactly; `None` without samples.
    pub fn max_ms(&self) -> Option<f64> {
        (self.total > 0).then(|| self.max_us as f64 / 1000.0)
    }

    /// The counts as JSON for another process: `{"max_us", "buckets":
    /// [[index, count], …]}` (non-empty buckets only).
    pub fn to_json(&self) -> Value {
        let buckets: Vec<Value> = self
            .counts
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, &n)| json!([i, n]))
            .collect();
        json!({ "max_us": self.max_us, "buckets": buckets })
    }

    /// Reads [`to_json`](Self::to_json)'s form back.
    ///
    /// # Errors
    ///
    /// Anything of another shape.
    pub fn from_json(v: &Value) -> Result<Histogram, String> {
        let bad = || format!("not a histogram: {v}");
        let mut h = Histogram::default();
        let buckets = v.get("buckets").and_then(Value::as_array).ok_or_else(bad)?;
        for b in buckets {
            let i = b.get(0).and_then(Value::as_u64).ok_or_else(bad)?;
            let n = b.get(1).and_then(Value::as_u64).ok_or_else(bad)?;
            // Indices past any u64's bucket are not a histogram's.
            if i > Self::index(u64::MAX) as u64 {
                return Err(bad());
            }
            h.add(i as usize, n);
        }
        h.max_us = v.get("max_us").and_then(Value::as_u64).ok_or_else(bad)?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile_ms(50.0), None);
        for ms in (1..=100).rev() {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile_ms(50.0), Some(50.0));
        assert_eq!(l.percentile_ms(99.0), Some(99.0));
        assert_eq!(l.percentile_ms(100.0), Some(100.0));
        assert_eq!(l.percentile_ms(0.0), Some(1.0));
        assert_eq!(l.micros().len(), 100);
        let mut m = Latencies::default();
        m.extend_micros(l.micros().iter().copied());
        assert_eq!(m.percentile_ms(99.0), Some(99.0));
    }

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        for us in [0, 1, 127, 128, 129, 255, 256, 1000, 123_456, u64::MAX / 3] {
            let i = Histogram::index(us);
            assert!(Histogram::lower(i) <= us, "{us}");
            assert!(Histogram::lower(i + 1) > us, "{us}");
            assert_eq!(Histogram::index(Histogram::lower(i)), i);
            let width = Histogram::lower(i + 1) - Histogram::lower(i);
            assert!(width as f64 <= 1.0_f64.max(us as f64 / 127.0), "{us}");
        }
        assert!(Histogram::index(u64::MAX) < 8000);
    }

    #[test]
    fn histogram_percentiles_merge_and_round_trip() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile_ms(50.0), None);
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.percentile_ms(50.0).unwrap();
        assert!((p50 - 50.0).abs() < 0.5, "{p50}");
        assert_eq!(h.max_ms(), Some(100.0));
        assert_eq!(h.percentile_ms(100.0), Some(100.0));
        let mut other = Histogram::from_json(&h.to_json()).unwrap();
        assert_eq!(other.len(), 100);
        other.merge(&h);
        assert_eq!(other.len(), 200);
        assert_eq!(other.percentile_ms(50.0), Some(p50));
        assert!(Histogram::from_json(&json!({"buckets": [[1]]})).is_err());
        assert!(Histogram::from_json(&json!({"max_us": 1, "buckets": [[99999, 1]]})).is_err());
    }
}
