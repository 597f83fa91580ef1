//! One server's lifecycle: its listeners, its gateway, its gRPC side and its
//! dialers, and a clean shutdown (links closed, tasks drained with a grace period).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{
    auth::PeerTls,
    config::{HerdConfig, ServerConfig},
    gateway, inspect,
    membership::{LiveServer, Reloader},
    node::Node,
    peer::{self, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, PeerService, link::LinkState},
    places::PlacesService,
    proto::peer_server::PeerServer,
};

/// How long tasks get to finish after shutdown is asked for, by default (the herd
/// file's `shutdown_grace_ms`).
pub const GRACE: Duration = crate::config::SHUTDOWN_GRACE;

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
    #[error("{server}: {source}")]
    Data {
        server: String,
        source: crate::durable::OpenError,
    },
    #[error("{server}: {problem}")]
    Tls { server: String, problem: String },
    #[error("{server}: gRPC server failed: {source}")]
    Grpc {
        server: String,
        source: tonic::transport::Error,
    },
}

/// The replica of a backbone, for the compactor's thread.
struct BackboneReplica(Arc<peer::Backbone>);

impl std::ops::Deref for BackboneReplica {
    type Target = crate::replica::Replica;
    fn deref(&self) -> &crate::replica::Replica {
        self.0.replica()
    }
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
///
/// Its herd file cannot be reloaded (see [`run_reloadable`]).
pub async fn run(
    herd: Arc<HerdConfig>,
    me: ServerConfig,
    listeners: Listeners,
    places: PlacesService,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let reloader = Reloader::new(herd, None);
    run_reloadable(reloader, me, listeners, places, shutdown).await
}

/// [`run`], with the herd file `reloader` holds, which it follows when reloaded.
pub async fn run_reloadable(
    reloader: Arc<Reloader>,
    me: ServerConfig,
    listeners: Listeners,
    places: PlacesService,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let span = tracing::info_span!("server", name = %me.name);
    serve(reloader, me, listeners, places, shutdown)
        .instrument(span)
        .await
}

async fn serve(
    reloader: Arc<Reloader>,
    me: ServerConfig,
    listeners: Listeners,
    places: PlacesService,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let herd = reloader.herd();
    let grace = herd.shutdown_grace;
    for notice in &herd.places.deprecated {
        tracing::warn!("{notice}");
    }
    let data = herd.data_for(&me.name);
    let opened = {
        let (name, neighbours, backbone) = (
            me.name.clone(),
            me.neighbours.clone(),
            herd.backbone.clone(),
        );
        let span = tracing::Span::current();
        // Reading a data dir is blocking work (a second for a million records).
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| Node::open(name, neighbours, places, backbone, data.as_ref()))
        })
        .await
    };
    let node = match opened {
        Ok(Ok(node)) => Arc::new(node),
        Ok(Err(source)) => {
            return Err(ServerError::Data {
                server: me.name.to_string(),
                source,
            });
        }
        Err(join) => {
            return Err(ServerError::Data {
                server: me.name.to_string(),
                source: crate::durable::OpenError::Io {
                    dir: Default::default(),
                    what: "restore panicked",
                    source: std::io::Error::other(join.to_string()),
                },
            });
        }
    };
    let journal_threads = node.journal().map(|j| {
        let span = tracing::Span::current();
        let (j1, j2, b) = (j.clone(), j.clone(), node.backbone().clone());
        let s1 = span.clone();
        [
            std::thread::spawn(move || s1.in_scope(|| j1.run_syncer())),
            std::thread::spawn(move || span.in_scope(|| j2.run_compactor(BackboneReplica(b)))),
        ]
    });
    let tls_error = |problem: String| ServerError::Tls {
        server: me.name.to_string(),
        problem,
    };
    let tls = match &herd.tls {
        Some(tls) => Some(PeerTls::load(tls, Some(&me.name)).map_err(tls_error)?),
        None => None,
    };
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
    let (routes, health) = inspect::routes(
        node.clone(),
        &herd.auth,
        herd.tls.is_some(),
        reloader.clone(),
        shutdown.clone(),
        tasks.clone(),
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = tls
            .server()
            .and_then(|config| builder.tls_config(config).map_err(|e| e.to_string()))
            .map_err(|e| tls_error(format!("TLS settings: {e}")))?;
    }
    let grpc = builder
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

    // Dials every neighbour, and follows reloads of the herd file from now on.
    reloader.register(LiveServer::new(
        node.clone(),
        herd.auth.secret.clone(),
        tls.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));

    // The gateway is accepting: say so to health checkers.
    health.set_serving::<PeerServer<PeerService>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    if let Some(j) = node.journal() {
        // A data dir that cannot be written turns the server NOT_SERVING.
        let mut failure = j.failure();
        let health = health.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(
            async move {
                loop {
                    let failed = failure.borrow_and_update().is_some();
                    let status = if failed {
                        tonic_health::ServingStatus::NotServing
                    } else {
                        tonic_health::ServingStatus::Serving
                    };
                    health.set_service_status("", status).await;
                    if failed {
                        health.set_not_serving::<PeerServer<PeerService>>().await;
                    } else {
                        health.set_serving::<PeerServer<PeerService>>().await;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = failure.changed() => if r.is_err() { return },
                    }
                }
            }
            .in_current_span(),
        );
    }
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
        links_up = %format_args!("{up}/{}", node.links().len()),
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
    let drained = tokio::time::timeout(grace, async {
        tasks.wait().await;
        grpc.await
    })
    .await;
    if let (Some(j), Some(threads)) = (node.journal(), journal_threads) {
        // A last write and sync of what the journal holds.
        j.stop();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
    match drained {
        Ok(Ok(Ok(()))) => tracing::info!("stopped"),
        Ok(Ok(Err(source))) => {
            return Err(ServerError::Grpc {
                server: me.name.to_string(),
                source,
            });
        }
        Ok(Err(join)) => tracing::error!(error = %join, "gRPC task failed"),
        Err(_) => tracing::warn!(?grace, "stopped before every task finished"),
    }
    Ok(())
}
