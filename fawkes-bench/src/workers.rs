//! Worker processes, for runs beyond one process's open-file limit.
//!
//! With `--workers W` a scenario runs this binary again W times
//! ([`std::env::current_exe`]), each child with a share of the clients,
//! its own source addresses and the hidden `--worker-index I`. The
//! protocol is lines of JSON on the children's stdout and plain lines on
//! their stdin:
//!
//! 1. the child sets up (connects, joins) and writes `{"worker": I,
//!    "event": "ready", "data": {…}}`;
//! 2. the parent, once every child is ready, writes `go` to each: the
//!    signal to start the measured phase (or, for `connect`, to end the
//!    hold);
//! 3. the child writes `{"worker": I, "event": "result", "data": {…}}` and
//!    exits.
//!
//! A child whose stdin ends (the parent exited or died) exits at once, and
//! the parent's handles kill their children when dropped, so no worker
//! outlives a run. Children write their progress to stderr, which they
//! share with the parent.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

use crate::measure::{check_file_limits, check_own_file_limit, warn_server_file_limit};

/// The hidden option that makes a scenario a worker.
pub const WORKER_FLAG: &str = "--worker-index";

/// The line the parent sends to start the measured phase.
const GO: &str = "go";

/// Source addresses per worker: `--source-addrs` split evenly, at least
/// one each so that no two workers share an address. Worker `w` binds
/// `count` addresses from offset `w × count` (127.0.0.(2 + offset) on).
///
/// # Errors
///
/// More addresses than 127.0.0.2–254 hold.
pub fn source_split(workers: usize, source_addrs: u8) -> Result<u8, String> {
    let per = (usize::from(source_addrs) / workers.max(1)).max(1);
    if workers * per > 253 {
        return Err(format!(
            "{workers} workers with {per} source addresses each need more than 127.0.0.2–254"
        ));
    }
    Ok(per as u8)
}

/// Worker `i`'s share of `n` clients: (first index, count), the first
/// `n % workers` workers taking one more.
pub fn share(n: usize, workers: usize, i: usize) -> (usize, usize) {
    let (base, extra) = (n / workers, n % workers);
    (i * base + i.min(extra), base + usize::from(i < extra))
}

/// The options worker `w` runs with: the scenario's name, then `pairs`
/// (its own share of the scenario's options), then its `sources` source
/// addresses from offset `w × sources`.
pub fn worker_argv(
    scenario: &str,
    pairs: impl IntoIterator<Item = (&'static str, String)>,
    w: usize,
    sources: u8,
) -> Vec<String> {
    let addrs = [
        ("--source-addrs", sources.to_string()),
        ("--source-offset", (w * usize::from(sources)).to_string()),
    ];
    let options = pairs.into_iter().chain(addrs);
    std::iter::once(scenario.to_owned())
        .chain(options.flat_map(|(k, v)| [k.to_owned(), v]))
        .collect()
}

/// Checks the open-file limits for `clients` spread over `workers`
/// processes: with more than one, each child (which inherits this
/// process's limit) needs its share, and the server's limit is only
/// warned about.
///
/// # Errors
///
/// Too low a limit.
pub fn check_limits(clients: usize, workers: usize, server_pid: Option<u32>) -> Result<(), String> {
    if workers > 1 {
        check_own_file_limit(share(clients, workers, 0).1)?;
        warn_server_file_limit(clients, server_pid);
        Ok(())
    } else {
        check_file_limits(clients, server_pid)
    }
}

// ---------------------------------------------------------------------------
// The child's side.

/// Writes one protocol line to stdout. Errors are ignored: the parent is
/// gone, and the stdin watch ends this process.
pub fn emit(index: usize, event: &str, data: Value) {
    let line = json!({ "worker": index, "event": event, "data": data });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child's link to its parent: resolves [`go`](Self::go) on the
/// parent's `go` line, and exits the process when stdin ends.
pub struct Parent {
    go: watch::Receiver<bool>,
}

impl Parent {
    /// Starts watching stdin.
    pub fn watch(index: usize) -> Parent {
        let (tx, go) = watch::channel(false);
        tokio::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) if line.trim() == GO => {
                        let _ = tx.send(true);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        eprintln!("worker {index}: the parent is gone; exiting");
                        std::process::exit(2);
                    }
                }
            }
        });
        Parent { go }
    }

    /// Waits for the parent's `go`.
    pub async fn go(&mut self) {
        // The sender lives as long as the process (its task exits it).
        let _ = self.go.wait_for(|go| *go).await;
    }
}

// ---------------------------------------------------------------------------
// The parent's side.

/// One running child.
struct Worker {
    index: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// The `data` of the child's next `event` line; other lines are passed
    /// on to stderr.
    async fn next(&mut self, event: &str) -> Result<Value, String> {
        loop {
            let line = self
                .stdout
                .next_line()
                .await
                .map_err(|e| format!("worker {}: {e}", self.index))?;
            let Some(line) = line else {
                let status = timeout(Duration::from_secs(2), self.child.wait()).await;
                let status = match status {
                    Ok(Ok(s)) => s.to_string(),
                    _ => "still running".to_owned(),
                };
                return Err(format!(
                    "worker {} ended its output before `{event}` ({status})",
                    self.index
                ));
            };
            match serde_json::from_str::<Value>(&line) {
                Ok(v) if v.get("event").and_then(Value::as_str) == Some(event) => {
                    return Ok(v.get("data").cloned().unwrap_or(Value::Null));
                }
                _ => eprintln!("worker {}: {line}", self.index),
            }
        }
    }
}

/// The children of one run; dropping it kills those still running.
pub struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts one child per argument list (the scenario's name, then its
    /// options), adding `--worker-index I`.
    ///
    /// # Errors
    ///
    /// The binary cannot be found or started.
    pub fn spawn(args: Vec<Vec<String>>) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut workers = Vec::with_capacity(args.len());
        for (index, args) in args.into_iter().enumerate() {
            let mut child = Command::new(&exe)
                .args(&args)
                .arg(WORKER_FLAG)
                .arg(index.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start worker {index} ({}): {e}", exe.display()))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(format!("worker {index}: no pipes"));
            };
            workers.push(Worker {
                index,
                child,
                stdin: Some(stdin),
                stdout: BufReader::new(stdout).lines(),
            });
        }
        Ok(Workers { workers })
    }

    /// The `data` of every child's next `event` line, in worker order.
    /// Children are read one after the other; they run meanwhile, and the
    /// pipe holds what they write until it is read.
    ///
    /// # Errors
    ///
    /// A child ended (or its output did) first, or `deadline` passed.
    pub async fn next_all(&mut self, event: &str, deadline: Instant) -> Result<Vec<Value>, String> {
        let mut all = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            let index = w.index;
            let data = timeout_at(deadline, w.next(event))
                .await
                .map_err(|_| format!("worker {index}: no `{event}` in time"))??;
            all.push(data);
        }
        Ok(all)
    }

    /// Tells every child to go on.
    ///
    /// # Errors
    ///
    /// A child's stdin is closed (it has exited).
    pub async fn go(&mut self) -> Result<(), String> {
        for w in &mut self.workers {
            let stdin = w
                .stdin
                .as_mut()
                .ok_or_else(|| format!("worker {}: stdin closed", w.index))?;
            stdin
                .write_all(format!("{GO}\n").as_bytes())
                .await
                .map_err(|e| format!("worker {}: {e}", w.index))?;
            stdin
                .flush()
                .await
                .map_err(|e| format!("worker {}: {e}", w.index))?;
        }
        Ok(())
    }

    /// Closes the children's stdin and waits up to `limit` for them to
    /// exit; those still running then are killed (on drop). A child's exit
    /// status is not checked: it exits 1 when it saw failures, which its
    /// result already reports.
    pub async fn finish(mut self, limit: Duration) {
        for w in &mut self.workers {
            w.stdin = None;
        }
        let deadline = Instant::now() + limit;
        for w in &mut self.workers {
            if timeout_at(deadline, w.child.wait()).await.is_err() {
                eprintln!("worker {} did not exit; killing it", w.index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_client_once() {
        for (n, w) in [(10, 3), (2, 4), (2000, 2), (0, 2)] {
            let mut next = 0;
            for i in 0..w {
                let (first, count) = share(n, w, i);
                assert_eq!(first, next, "{n} over {w}");
                next += count;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn source_addresses_never_overlap() {
        assert_eq!(source_split(2, 0), Ok(1));
        assert_eq!(source_split(2, 5), Ok(2));
        assert_eq!(source_split(4, 2), Ok(1));
        assert!(source_split(254, 0).is_err());
    }
}
