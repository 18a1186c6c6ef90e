//! Readings of processes from `/proc` (resident memory, CPU time, file
//! limit) and of the conformance app's `GET /api/stats`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// `GET /api/stats` of the conformance app at `addr`: `{"sockets": N,
/// "channels": N, "node": NAME}`. `None` when the server has no such route
/// or does not answer within 5 s: the readings are a cross-check, not
/// required.
/// Refuses a run of `clients` connections this process cannot hold open
/// (one file each, and a few for the runtime, stdio and the stats
/// requests), and warns when the server may not.
pub fn check_file_limits(clients: usize, server_pid: Option<u32>) -> Result<(), String> {
    let need = clients as u64 + 64;
    if let Some(limit) = Process(None).open_files_limit()
        && limit < need
    {
        return Err(format!(
            "{clients} connections need about {need} open files, but this process may open {limit}: \
             raise `ulimit -n`, or split the load over several fawkes-bench processes"
        ));
    }
    if let Some(pid) = server_pid
        && let Some(limit) = Process(Some(pid)).open_files_limit()
        && limit < need
    {
        eprintln!("warning: the server may open only {limit} files; connections beyond that fail");
    }
    Ok(())
}

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
