//! Options that several scenarios share, flattened into their `Args`.

/// The server and how to reach it.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// The server's process id, to read its CPU time and memory from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Bind client sockets to this many source addresses, 127.0.0.2 and up
    /// (0: the kernel chooses), in turn connection after connection. One
    /// address allows ~28,000 connections.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=253))]
    pub source_addrs: u8,
    /// Seconds to wait for each step (connect and handshake or the GET that
    /// opens a LongPoll session, a join or other reply) before it fails as
    /// a timeout. In `pingpong` a late
    /// reply ends its client; in `fanout` it is also the wait for the last
    /// deliveries after the last broadcast.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// `--workers` and what the parent of such a run tells each worker.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerOpts {
    /// Run the clients in this many worker processes (this binary run
    /// again), each with its share of the clients (and of the rate), its
    /// own open-file limit and its own source addresses (`--source-addrs`
    /// split between them, at least one each); this process reads the
    /// server and adds up their reports.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// A worker's number (set by the parent of a `--workers` run).
    #[arg(long = "worker-index", hide = true)]
    pub worker_index: Option<usize>,
    /// A worker's first source address, counted from 127.0.0.2.
    #[arg(long, hide = true, default_value_t = 0)]
    pub source_offset: u8,
}

impl WorkerOpts {
    /// One process: no workers.
    #[cfg(test)]
    pub fn single() -> WorkerOpts {
        WorkerOpts {
            workers: 1,
            worker_index: None,
            source_offset: 0,
        }
    }

    /// How many processes run the clients.
    pub fn count(&self) -> usize {
        self.workers as usize
    }

    /// What the run's first line adds for the workers: nothing for one
    /// process.
    pub fn header(&self) -> String {
        match self.workers {
            1 => String::new(),
            w => format!(" from {w} worker processes"),
        }
    }
}
