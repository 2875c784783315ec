//! The accept loop, with the limits a public endpoint needs: a deadline for
//! every request head (which is also the keep-alive idle timeout, so a slow
//! or idle client costs at most that long), at most `max_connections`
//! connections at once (the rest wait in the listen backlog, so descriptors
//! never run out), and a graceful drain that ends at a deadline: a client
//! trickling a body cannot keep the process from exiting.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::ConnectInfo, Router};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HttpSettings;

/// Connections accepted and still open.
pub struct Connections {
    graceful: GracefulShutdown,
    tasks: JoinSet<()>,
}

/// Accepts connections until `stop` is cancelled.
pub async fn accept_until(
    listener: &TcpListener,
    router: Router,
    http: HttpSettings,
    stop: CancellationToken,
) -> Connections {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(http.max_connections));
    let mut tasks = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_timeout);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut request: axum::extract::Request<_>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            });
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tasks.spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    Connections { graceful, tasks }
}

impl Connections {
    /// Lets in-flight requests finish until `deadline`, then drops every
    /// connection still open. Returns how many were dropped.
    pub async fn drain(mut self, deadline: tokio::time::Instant) -> usize {
        let dropped = match tokio::time::timeout_at(deadline, self.graceful.shutdown()).await {
            Ok(()) => 0,
            Err(_) => {
                let open = self.tasks.len();
                self.tasks.abort_all();
                open
            }
        };
        while self.tasks.join_next().await.is_some() {}
        dropped
    }
}
