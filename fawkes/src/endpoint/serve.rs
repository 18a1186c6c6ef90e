//! Serving an endpoint's router: the few lines every app repeats (no Nagle
//! delay, peer addresses for `connect`, a graceful shutdown that drains the
//! sockets), and the signal that usually ends it.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use super::Endpoint;

impl Endpoint {
    /// Serves `router` (this endpoint's, possibly merged with the app's own
    /// routes) on `listener` until `shutdown` resolves, then runs
    /// [`shutdown`](Self::shutdown): every socket is closed with 1012 after
    /// its channels' `terminate`. Connections get `TCP_NODELAY`, and
    /// [`ConnectInfo::peer`](crate::ConnectInfo) their peer address.
    ///
    /// ```no_run
    /// # async fn run(router: axum::Router, endpoint: fawkes::Endpoint) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
    /// endpoint.serve(listener, router, fawkes::shutdown_signal()).await
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// What `axum::serve` returns: an I/O error of the listener.
    pub async fn serve(
        &self,
        listener: TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Realtime frames are small: each must leave at once, not wait
        // behind an unacknowledged one for the client's delayed ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(target: "fawkes::endpoint", %err, "cannot set TCP_NODELAY");
            }
        });
        let endpoint = self.clone();
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            endpoint.shutdown().await;
        })
        .await
    }
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM, as sent by service
/// managers and container runtimes: the usual `shutdown` of
/// [`Endpoint::serve`]. Logs which one came.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let signal = tokio::select! {
        () = ctrl_c => "SIGINT",
        () = term => "SIGTERM",
    };
    tracing::info!(target: "fawkes::endpoint", signal, "shutting down");
}
