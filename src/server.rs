//! One server's lifecycle: its listeners, its gateway, its gRPC side and its
//! dialers, and a clean shutdown (links closed, tasks drained with a grace period).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{
    config::{HerdConfig, ServerConfig},
    gateway, inspect,
    node::Node,
    peer::{self, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, PeerService, link::LinkState},
    places::PlacesService,
    proto::peer_server::PeerServer,
};

/// How long tasks get to finish after shutdown is asked for.
pub const GRACE: Duration = Duration::from_secs(3);

/// How long the "herd ready" line waits for every link's first dial.
const READY_WAIT: Duration = Duration::from_secs(3);

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{server}: cannot listen for {what} on {addr}: {source}")]
    Bind {
        server: String,
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{server}: gRPC server failed: {source}")]
    Grpc {
        server: String,
        source: tonic::transport::Error,
    },
}

/// A server's two listeners, bound before anything runs so that a busy port stops
/// start-up with a clear message.
#[derive(Debug)]
pub struct Listeners {
    pub client: TcpListener,
    pub peer: TcpListener,
}

impl Listeners {
    pub async fn bind(server: &ServerConfig) -> Result<Listeners, ServerError> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    server: server.name.to_string(),
                    what,
                    addr,
                    source,
                })
        };
        Ok(Listeners {
            client: bind("clients", server.client_addr()).await?,
            peer: bind("peers", server.peer_addr()).await?,
        })
    }
}

/// Runs server `me`, one of `herd`'s servers (`herd` tells where its neighbours are),
/// on `listeners` until `shutdown` fires, then stops cleanly. Every task runs in a
/// `server` span naming it (the logs route on it).
pub async fn run(
    herd: Arc<HerdConfig>,
    me: ServerConfig,
    listeners: Listeners,
    places: PlacesService,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let span = tracing::info_span!("server", name = %me.name);
    serve(herd, me, listeners, places, shutdown)
        .instrument(span)
        .await
}

async fn serve(
    herd: Arc<HerdConfig>,
    me: ServerConfig,
    listeners: Listeners,
    places: PlacesService,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    for notice in &herd.places.deprecated {
        tracing::warn!("{notice}");
    }
    let node = Arc::new(Node::new(
        me.name.clone(),
        me.neighbours.clone(),
        places,
        herd.backbone.clone(),
    ));
    let tasks = TaskTracker::new();
    let shown = |a: std::io::Result<std::net::SocketAddr>| a.map_or("?".into(), |a| a.to_string());
    let client_addr = shown(listeners.client.local_addr());
    let peer_addr = shown(listeners.peer.local_addr());

    tasks.spawn(
        gateway::run(
            listeners.client,
            node.clone(),
            herd.gateway,
            shutdown.clone(),
            tasks.clone(),
        )
        .in_current_span(),
    );

    let incoming = futures_util::stream::unfold(listeners.peer, |listener| async move {
        let (socket, _) = gateway::accept(&listener).await;
        // Latency over throughput: updates are small.
        let _ = socket.set_nodelay(true);
        Some((Ok::<_, std::io::Error>(socket), listener))
    });
    let grpc_span = tracing::Span::current();
    let (routes, health) = inspect::routes(node.clone(), shutdown.clone(), tasks.clone());
    let grpc = tonic::transport::Server::builder()
        // HTTP/1.1 too, for Prometheus scraping /metrics.
        .accept_http1(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .trace_fn(
            move |req| tracing::info_span!(parent: &grpc_span, "grpc", path = %req.uri().path()),
        )
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let grpc = tokio::spawn(grpc.in_current_span());

    for neighbour in &me.neighbours {
        let Some(slot) = node.links().get(neighbour).cloned() else {
            continue;
        };
        let uri = match herd.server(neighbour) {
            Ok(n) => n.peer_uri(),
            Err(_) => continue,
        };
        tasks.spawn(
            peer::dial::run(node.backbone().clone(), slot, uri, shutdown.clone()).in_current_span(),
        );
    }

    // The gateway is accepting: say so to health checkers.
    health.set_serving::<PeerServer<PeerService>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // One line for the operator once every link had its first dial (up, or waiting
    // to redial a neighbour that is not there yet), so "ready" means what it says.
    let dialled = node.links().iter().map(|slot| {
        let mut state = slot.watch();
        async move {
            let _ = state
                .wait_for(|s| matches!(s, LinkState::Up | LinkState::Backoff))
                .await;
        }
    });
    tokio::select! {
        _ = tokio::time::timeout(READY_WAIT, futures_util::future::join_all(dialled)) => {}
        _ = shutdown.cancelled() => {}
    }
    let up = node.links().iter().filter(|s| s.is_up()).count();
    tracing::info!(
        clients = %client_addr,
        peers = %peer_addr,
        links_up = %format_args!("{up}/{}", me.neighbours.len()),
        "herd ready"
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health.set_not_serving::<PeerServer<PeerService>>().await;
    node.links().close_all();
    tasks.close();
    let drained = tokio::time::timeout(GRACE, async {
        tasks.wait().await;
        grpc.await
    })
    .await;
    match drained {
        Ok(Ok(Ok(()))) => tracing::info!("stopped"),
        Ok(Ok(Err(source))) => {
            return Err(ServerError::Grpc {
                server: me.name.to_string(),
                source,
            });
        }
        Ok(Err(join)) => tracing::error!(error = %join, "gRPC task failed"),
        Err(_) => tracing::warn!(grace = ?GRACE, "stopped before every task finished"),
    }
    Ok(())
}
