//! Readings of processes from `/proc` (resident memory, CPU time, file
//! limit) and of the conformance app's `GET /api/stats`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};

/// Clock ticks per second of `/proc/*/stat` times: Linux fixes USER_HZ at
/// 100 in its ABI, whatever the kernel's internal tick.
const USER_HZ: u64 = 100;

/// A process: `None` is the tool itself.
#[derive(Debug, Clone, Copy)]
pub struct Process(pub Option<u32>);

impl Process {
    fn path(self, file: &str) -> String {
        match self.0 {
            Some(pid) => format!("/proc/{pid}/{file}"),
            None => format!("/proc/self/{file}"),
        }
    }

    /// Resident memory (`VmRSS`), in KiB.
    ///
    /// # Errors
    ///
    /// No such process, or a `status` file without `VmRSS`.
    pub fn rss_kib(self) -> Result<u64, String> {
        self.status_kib("VmRSS")
    }

    /// Peak resident memory since the process started (`VmHWM`), in KiB.
    ///
    /// # Errors
    ///
    /// No such process, or a `status` file without `VmHWM`.
    pub fn peak_rss_kib(self) -> Result<u64, String> {
        self.status_kib("VmHWM")
    }

    fn status_kib(self, field: &str) -> Result<u64, String> {
        let path = self.path("status");
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("{path}: no {field}"))
    }

    /// CPU time used so far (user + system, all threads), in milliseconds.
    ///
    /// # Errors
    ///
    /// No such process, or a `stat` file of an unknown shape.
    pub fn cpu_ms(self) -> Result<u64, String> {
        let path = self.path("stat");
        let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        // The command name may hold spaces and parentheses: fields are
        // counted from the last ')'. utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        match (tick(11), tick(12)) {
            (Some(utime), Some(stime)) => Ok((utime + stime) * 1000 / USER_HZ),
            _ => Err(format!("{path}: unexpected format")),
        }
    }

    /// Files open right now (entries of `/proc/PID/fd`): sockets mostly,
    /// so a cross-check of the connections held. `None` if unreadable.
    pub fn open_files(self) -> Option<usize> {
        std::fs::read_dir(self.path("fd")).ok().map(Iterator::count)
    }

    /// The soft limit on open files, if it can be read.
    pub fn open_files_limit(self) -> Option<u64> {
        let limits = std::fs::read_to_string(self.path("limits")).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let soft = line
            .trim_start_matches("Max open files")
            .split_whitespace()
            .next()?;
        match soft {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    }
}

/// The measured part of a run: from the end of the warm-up for a set
/// length. Events are counted when they happen inside it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Where it opens.
    pub from: Instant,
    /// Where it closes (not included).
    pub to: Instant,
}

impl Window {
    /// The window of `length` that opens `warmup` after `start`.
    pub fn after(start: Instant, warmup: Duration, length: Duration) -> Window {
        let from = start + warmup;
        Window {
            from,
            to: from + length,
        }
    }

    /// Whether `t` is inside.
    pub fn contains(&self, t: Instant) -> bool {
        self.from <= t && t < self.to
    }

    /// How long it is.
    pub fn length(&self) -> Duration {
        self.to - self.from
    }
}

/// Why a summary has no server CPU figure: `" (no --server-pid)"`, or the
/// server given could not be read.
pub fn no_server_reading(server_pid: Option<u32>) -> &'static str {
    if server_pid.is_some() {
        " (the server could not be read)"
    } else {
        " (no --server-pid)"
    }
}

/// Readings over a [`Window`]: CPU time used inside it by the server and by
/// this process, and the server's resident memory at points in it.
#[derive(Debug, Clone)]
pub struct WindowReadings {
    /// The window read.
    pub window: Window,
    /// The server's CPU time inside the window, in ms; `None` without a
    /// server process or when it could not be read at both ends.
    pub server_ms: Option<u64>,
    /// This process's CPU time inside the window, in ms.
    pub client_ms: u64,
    /// `(seconds into the window, server VmRSS in KiB)`, at its opening,
    /// every `rss_every`, and at its close.
    pub rss: Vec<(f64, u64)>,
}

impl WindowReadings {
    /// Sleeps to the window's opening, reads, and reads again at its close
    /// (and every `rss_every` in between); returns at the close.
    ///
    /// # Errors
    ///
    /// This process's own `/proc` entry cannot be read.
    pub async fn read(
        window: Window,
        server: Option<Process>,
        rss_every: Option<Duration>,
    ) -> Result<WindowReadings, String> {
        let me = Process(None);
        let warn = |r: Result<u64, String>| r.map_err(|e| eprintln!("warning: {e}")).ok();
        sleep_until(window.from).await;
        let server_before = server.and_then(|s| warn(s.cpu_ms()));
        let mine_before = me.cpu_ms()?;
        let mut rss = Vec::new();
        let sample = |at: Instant, rss: &mut Vec<(f64, u64)>| {
            if let Some(kib) = server.and_then(|s| warn(s.rss_kib())) {
                rss.push(((at - window.from).as_secs_f64(), kib));
            }
        };
        sample(window.from, &mut rss);
        if let Some(every) = rss_every.filter(|e| !e.is_zero()) {
            let mut at = window.from + every;
            while at < window.to {
                sleep_until(at).await;
                sample(at, &mut rss);
                at += every;
            }
        }
        sleep_until(window.to).await;
        let server_after = server.and_then(|s| warn(s.cpu_ms()));
        let mine_after = me.cpu_ms()?;
        sample(window.to, &mut rss);
        Ok(WindowReadings {
            window,
            server_ms: server_before
                .zip(server_after)
                .map(|(b, a)| a.saturating_sub(b)),
            client_ms: mine_after.saturating_sub(mine_before),
            rss,
        })
    }
}

/// Refuses a run of `clients` connections this process cannot hold open
/// (one file each, and a few for the runtime, stdio and the stats
/// requests), and warns when the server may not.
///
/// # Errors
///
/// This process's limit is too low.
pub fn check_file_limits(clients: usize, server_pid: Option<u32>) -> Result<(), String> {
    check_own_file_limit(clients)?;
    warn_server_file_limit(clients, server_pid);
    Ok(())
}

/// Files a process holding `clients` connections needs.
fn files_needed(clients: usize) -> u64 {
    clients as u64 + 64
}

/// The part of [`check_file_limits`] for this process: with worker
/// processes, each checks its own share (they inherit this limit).
///
/// # Errors
///
/// This process's limit is too low.
pub fn check_own_file_limit(clients: usize) -> Result<(), String> {
    let need = files_needed(clients);
    if let Some(limit) = Process(None).open_files_limit()
        && limit < need
    {
        return Err(format!(
            "{clients} connections need about {need} open files, but this process may open {limit}: \
             raise `ulimit -n`, or split the load over worker processes (--workers)"
        ));
    }
    Ok(())
}

/// The part of [`check_file_limits`] for the server, which holds every
/// connection of every worker: a warning, as the server may have been
/// started with a higher limit than it reports.
pub fn warn_server_file_limit(clients: usize, server_pid: Option<u32>) {
    let need = files_needed(clients);
    if let Some(pid) = server_pid
        && let Some(limit) = Process(Some(pid)).open_files_limit()
        && limit < need
    {
        eprintln!("warning: the server may open only {limit} files; connections beyond that fail");
    }
}

/// `GET /api/stats` of the conformance app at `addr`: `{"sockets": N,
/// "channels": N, "node": NAME}`. `None` when the server has no such route
/// or does not answer within 5 s: the readings are a cross-check, not
/// required.
pub async fn app_stats(addr: SocketAddr) -> Option<Value> {
    app_json(addr, "/api/stats").await
}

/// The JSON answer of the conformance app's `GET path` (e.g.
/// `/api/presence/TOPIC`), as [`app_stats`] reads it.
pub async fn app_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8(response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = Process(None);
        assert!(me.rss_kib().unwrap() > 0);
        assert!(me.peak_rss_kib().unwrap() >= me.rss_kib().unwrap() / 2);
        assert!(me.cpu_ms().is_ok());
        assert!(me.open_files_limit().unwrap() > 0);
        assert!(me.open_files().unwrap() >= 3);
        let pid = Process(Some(std::process::id()));
        assert!(pid.rss_kib().unwrap() > 0);
    }
}
