//! What the windowed scenarios (`pingpong`, `churn`) count, and the
//! measured phase of their `--workers` runs: [`Counts`] travel from the
//! workers as JSON under each scenario's own counter names.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{Failure, failures_from_json, failures_to_json};
use crate::latency::Histogram;
use crate::measure::{Process, Window, WindowReadings};
use crate::workers::{Workers, emit};

/// A scenario's JSON names for the two counters of its [`Counts`].
pub trait Names {
    /// The key of [`Counts::in_window`].
    const IN_WINDOW: &'static str;
    /// The key of [`Counts::total`].
    const TOTAL: &'static str;
}

/// Counts of one client (or loop) or many, over a measured window.
pub struct Counts<N> {
    /// Events (replies, cycles) that ended inside the window.
    pub in_window: u64,
    /// Events (pushes sent, cycles completed) all told.
    pub total: u64,
    /// How long the events inside the window took.
    pub latency: Histogram,
    /// What failed, at any time.
    pub failures: Vec<Failure>,
    names: PhantomData<N>,
}

// By hand: derives would ask the same of the names' marker type.
impl<N> Default for Counts<N> {
    fn default() -> Self {
        Counts {
            in_window: 0,
            total: 0,
            latency: Histogram::default(),
            failures: Vec::new(),
            names: PhantomData,
        }
    }
}

impl<N: Names> fmt::Debug for Counts<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counts")
            .field(N::IN_WINDOW, &self.in_window)
            .field(N::TOTAL, &self.total)
            .field("latency", &self.latency)
            .field("failures", &self.failures)
            .finish()
    }
}

impl<N: Names> Counts<N> {
    /// Adds another's counts to these.
    pub fn merge(&mut self, other: Counts<N>) {
        self.in_window += other.in_window;
        self.total += other.total;
        self.latency.merge(&other.latency);
        self.failures.extend(other.failures);
    }

    /// The counts as JSON for another process.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "latency": self.latency.to_json(),
            "failures": failures_to_json(&self.failures),
        });
        v[N::IN_WINDOW] = json!(self.in_window);
        v[N::TOTAL] = json!(self.total);
        v
    }

    /// Reads [`to_json`](Self::to_json)'s form back.
    ///
    /// # Errors
    ///
    /// A counter missing, or anything of another shape.
    pub fn from_json(v: &Value) -> Result<Counts<N>, String> {
        let n = |key: &str| {
            v.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("bad counts ({key}): {v}"))
        };
        Ok(Counts {
            in_window: n(N::IN_WINDOW)?,
            total: n(N::TOTAL)?,
            latency: Histogram::from_json(v.get("latency").unwrap_or(&Value::Null))?,
            failures: failures_from_json(v.get("failures").unwrap_or(&Value::Null))?,
            names: PhantomData,
        })
    }

    /// The latency's `p`-th percentile (0–100) in ms, to the µs.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        round3(self.latency.percentile_ms(p))
    }

    /// The largest latency in ms, to the µs.
    pub fn max_ms(&self) -> Option<f64> {
        round3(self.latency.max_ms())
    }

    /// CPU time of `ms` per event inside the window, in µs to two
    /// decimals; `None` without a reading or without events.
    pub fn us_per(&self, ms: Option<u64>) -> Option<f64> {
        let n = self.in_window;
        ms.filter(|_| n > 0)
            .map(|ms| (ms as f64 * 1000.0 / n as f64 * 100.0).round() / 100.0)
    }

    /// A worker's `result`: its counts and its CPU time over the window,
    /// written to the parent; the data written.
    pub fn emit_result(&self, index: usize, cpu_ms: u64) -> Value {
        let mut data = self.to_json();
        data["cpu_ms"] = json!(cpu_ms);
        emit(index, "result", data.clone());
        data
    }
}

/// Milliseconds to three decimals: what the reports print.
fn round3(ms: Option<f64>) -> Option<f64> {
    ms.map(|ms| (ms * 1000.0).round() / 1000.0)
}

/// The measured phase: a warm-up, then the window, with the server (when
/// given) read over the window.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// How long events run before the window opens.
    pub warmup: Duration,
    /// How long the window is.
    pub duration: Duration,
    /// The server to read, or none (a worker: the parent reads it).
    pub server: Option<Process>,
    /// How often to read the server's resident memory inside the window.
    pub rss_every: Option<Duration>,
}

impl Phase {
    /// Opens the phase now and runs `counting` (told the window) in a
    /// task of its own while the server is read; the readings and the
    /// counts. `what` names the task in an error.
    ///
    /// # Errors
    ///
    /// The task panicked, or this process's `/proc` entry is unreadable.
    pub async fn measure<N, F, Fut>(
        self,
        what: &str,
        counting: F,
    ) -> Result<(WindowReadings, Counts<N>), String>
    where
        N: Send + 'static,
        F: FnOnce(Window) -> Fut,
        Fut: Future<Output = Counts<N>> + Send + 'static,
    {
        let window = Window::after(Instant::now(), self.warmup, self.duration);
        let running = tokio::spawn(counting(window));
        let readings = WindowReadings::read(window, self.server, self.rss_every).await?;
        let counts = running
            .await
            .map_err(|e| format!("the {what} failed: {e}"))?;
        Ok((readings, counts))
    }

    /// The phase of a `--workers` run, once every child is ready: tells
    /// them to go, reads the server over the window opened then, and waits
    /// up to `grace` past its close for their results. The readings, the
    /// children's counts together, and their CPU time over the window.
    ///
    /// # Errors
    ///
    /// A child that exited, wrote no result in time or a bad one; this
    /// process's `/proc` entry unreadable.
    pub async fn measure_workers<N: Names>(
        self,
        mut children: Workers,
        grace: Duration,
    ) -> Result<(WindowReadings, Counts<N>, u64), String> {
        children.go().await?;
        let window = Window::after(Instant::now(), self.warmup, self.duration);
        let readings = WindowReadings::read(window, self.server, self.rss_every).await?;
        let results = children.next_all("result", window.to + grace).await?;
        children.finish(Duration::from_secs(10)).await;
        let mut counts = Counts::default();
        let mut children_cpu = 0;
        for r in &results {
            counts.merge(Counts::from_json(r)?);
            children_cpu += r.get("cpu_ms").and_then(Value::as_u64).unwrap_or(0);
        }
        Ok((readings, counts, children_cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::FailureKind;

    struct Replies;
    impl Names for Replies {
        const IN_WINDOW: &'static str = "replies";
        const TOTAL: &'static str = "sent";
    }

    #[test]
    fn counts_round_trip_as_json_under_their_names() {
        let mut c = Counts::<Replies> {
            in_window: 5,
            total: 9,
            ..Counts::default()
        };
        c.latency.record(Duration::from_micros(150));
        c.failures.push(Failure::new(FailureKind::Timeout, "x"));
        let v = c.to_json();
        assert_eq!(
            (v["replies"].as_u64(), v["sent"].as_u64()),
            (Some(5), Some(9))
        );
        let back = Counts::<Replies>::from_json(&v).unwrap();
        assert_eq!((back.in_window, back.total), (5, 9));
        assert_eq!(back.latency.len(), 1);
        assert_eq!(back.failures.len(), 1);
        assert!(Counts::<Replies>::from_json(&json!({"cycles": 1, "total": 1})).is_err());
    }
}
