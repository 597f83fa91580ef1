//! The operators' view of a server, all on its peer port: the `Inspect` gRPC
//! service (Watch, Lookup, Links, Floors), the `Admin` service (Reload), the
//! standard health service, server reflection
//! (v1 and v1alpha, so any grpcurl works without a .proto file), and Prometheus
//! metrics at `GET /metrics`.

use std::{pin::Pin, sync::Arc, time::SystemTime};

use futures_util::{Stream, StreamExt as _};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    Request, Response, Status,
    service::{Routes, interceptor::InterceptedService},
};
use tonic_health::server::HealthReporter;

use crate::{
    auth::Guard,
    config::AuthConfig,
    membership::{Refused, Reloader},
    node::Node,
    peer::PeerService,
    proto::{
        self, FloorsReply, FloorsRequest, LinkInfo, LinksReply, LinksRequest, LookupReply,
        LookupRequest, ReloadReply, ReloadRequest, ServerChange, WatchEvent, WatchRequest,
        admin_server::AdminServer, inspect_server::InspectServer,
    },
};

/// The `Admin` service of one server (of its process, with `herd up`).
#[derive(Debug, Clone)]
pub struct AdminService {
    reloader: Arc<Reloader>,
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn reload(&self, _: Request<ReloadRequest>) -> Result<Response<ReloadReply>, Status> {
        let reloader = self.reloader.clone();
        // Reading the file is blocking work, and so is the wait for a reload in progress.
        let outcome = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .map_err(|e| Status::internal(format!("reload failed: {e}")))?;
        match outcome {
            Ok(r) => Ok(Response::new(ReloadReply {
                result: if r.changed() { "applied" } else { "unchanged" }.to_owned(),
                servers: r
                    .changes
                    .iter()
                    .map(|c| {
                        let list = |l: &[Arc<str>]| l.iter().map(|n| n.to_string()).collect();
                        ServerChange {
                            server: c.server.to_string(),
                            added: list(&c.added),
                            removed: list(&c.removed),
                            redialled: list(&c.redialled),
                        }
                    })
                    .collect(),
            })),
            Err(e @ Refused::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }
}

/// The `Inspect` service of one server.
#[derive(Debug, Clone)]
pub struct InspectService {
    node: Arc<Node>,
    shutdown: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl proto::inspect_server::Inspect for InspectService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let only = req.into_inner().client;
        let events = BroadcastStream::new(self.node.watch())
            .filter_map(move |event| {
                let keep = match event {
                    Ok(e) => {
                        let wanted = only.is_empty()
                            || e.update
                                .as_ref()
                                .is_some_and(|u| u.client_id == only.as_bytes());
                        wanted.then_some(Ok(e))
                    }
                    Err(BroadcastStreamRecvError::Lagged(n)) => Some(Err(Status::data_loss(
                        format!("watcher fell behind and missed {n} updates"),
                    ))),
                };
                std::future::ready(keep)
            })
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }

    async fn lookup(&self, req: Request<LookupRequest>) -> Result<Response<LookupReply>, Status> {
        let req = req.into_inner();
        let id: &[u8] = if req.client_id.is_empty() {
            req.client.as_bytes()
        } else {
            &req.client_id
        };
        let reply = match self.node.backbone().replica().get(id) {
            Some((r, version)) => LookupReply {
                found: true,
                at_line: String::from_utf8_lossy(r.line()).into_owned(),
                record: Some(r.to_update(Vec::new(), Some(version))),
            },
            None => LookupReply::default(),
        };
        Ok(Response::new(reply))
    }

    async fn links(&self, _: Request<LinksRequest>) -> Result<Response<LinksReply>, Status> {
        let links = self
            .node
            .links()
            .iter()
            .map(|slot| {
                let v = slot.view();
                LinkInfo {
                    neighbour: v.peer.to_string(),
                    state: v.state.as_str().to_owned(),
                    since_unix_ms: v
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    updates_sent: v.sent,
                    updates_received: v.received,
                    queued_bytes: v.queued_bytes,
                }
            })
            .collect();
        Ok(Response::new(LinksReply {
            server: self.node.name().to_string(),
            links,
        }))
    }

    async fn floors(&self, _: Request<FloorsRequest>) -> Result<Response<FloorsReply>, Status> {
        let replica = self.node.backbone().replica();
        let (records, digest) = replica.digest();
        Ok(Response::new(FloorsReply {
            server: self.node.name().to_string(),
            incarnation: replica.incarnation(),
            last_seq: replica.last_own_seq(),
            floors: replica.floors().iter().map(|f| f.to_proto()).collect(),
            records,
            digest: format!("{digest:016x}"),
        }))
    }
}

/// What `render` writes: prometheus-client encodes OpenMetrics text (`# EOF` last),
/// which Prometheus parses only when told so by the content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything a server serves on its peer port, and the health reporter that says
/// when it is SERVING.
///
/// With a herd secret, `Link` streams, `Inspect` and `Admin` calls must carry it (and health
/// and `/metrics` too when `auth` says so); refusals are `UNAUTHENTICATED` (401 for
/// `/metrics`) and counted in `herd_peer_auth_refused_total`. Server reflection
/// needs the secret too (it would tell a scanner what this port is and how to
/// call it): grpcurl without it needs the .proto (`-import-path proto -proto
/// herd/v1/herd.proto`), or `-reflect-header` with the secret.
pub fn routes(
    node: Arc<Node>,
    auth: &AuthConfig,
    tls: bool,
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> (Routes, HealthReporter) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the compiled-in descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the compiled-in descriptor sets are valid");
    let metrics_node = node.clone();
    let guard = |service, needed: bool| {
        let secret = if needed { auth.secret.clone() } else { None };
        Guard::new(secret, node.metrics().clone(), service)
    };
    let metrics_guard = guard("metrics", auth.metrics_needs_secret);
    let peers = PeerService::new(node.backbone().clone(), tls, shutdown.clone(), tasks);
    let routes = Routes::new(InterceptedService::new(
        peers.into_server(),
        guard("link", true),
    ))
    .add_service(InterceptedService::new(
        InspectServer::new(InspectService {
            node: node.clone(),
            shutdown,
        }),
        guard("inspect", true),
    ))
    .add_service(InterceptedService::new(
        AdminServer::new(AdminService { reloader }),
        guard("admin", true),
    ))
    .add_service(InterceptedService::new(
        health,
        guard("health", auth.health_needs_secret),
    ))
    .add_service(InterceptedService::new(
        reflection_v1,
        guard("reflection", true),
    ))
    .add_service(InterceptedService::new(
        reflection_v1alpha,
        guard("reflection", true),
    ))
    .into_axum_router()
    .route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let allowed = metrics_guard
                .check(&tonic::metadata::MetadataMap::from_headers(headers))
                .is_ok();
            let m = metrics_node.metrics();
            let reply = if allowed {
                m.records.set(metrics_node.store().len() as i64);
                m.record_bytes.set(metrics_node.store().bytes() as i64);
                (axum::http::StatusCode::OK, CONTENT_TYPE, m.render())
            } else {
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    "text/plain; charset=utf-8",
                    "this herd needs its secret: authorization: Bearer <secret>\n".to_owned(),
                )
            };
            async move {
                let (status, content_type, text) = reply;
                (
                    status,
                    [(axum::http::header::CONTENT_TYPE, content_type)],
                    text,
                )
            }
        }),
    );
    (Routes::from(routes), reporter)
}
