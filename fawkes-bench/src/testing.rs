//! What the scenarios' tests share.

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The conformance app served in this process on a free port, the server
/// the scenarios are written against.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Starts serving.
    pub async fn start() -> Server {
        Server::start_with(fawkes_conformance::Options::default()).await
    }

    /// Starts serving with `opts`, such as a cluster node's.
    pub async fn start_with(opts: fawkes_conformance::Options) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(fawkes_conformance::serve(listener, opts, async move {
            let _ = stopped.await;
        }));
        Server { addr, stop, task }
    }

    /// Its WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/socket/websocket", self.addr)
    }

    /// Stops it, and checks that it ended cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
