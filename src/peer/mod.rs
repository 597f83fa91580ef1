//! The gRPC backbone: the `Link` service neighbours call, the dialer that keeps
//! each link up, and the loop that applies what a neighbour sends.

pub mod dial;
pub mod link;

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt as _, future};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use self::link::{Dialer, LinkSlot, outbound};
use crate::{
    node::Node,
    proto::{self, LinkMessage, peer_server::PeerServer},
};

/// Request metadata naming the dialling server.
pub const FROM_HEADER: &str = "herd-from";
/// Request metadata naming the server the dialer believes it calls.
pub const TO_HEADER: &str = "herd-to";

/// The largest message a server accepts from a neighbour: a batch of updates whose
/// fields are each bounded by the gateway's line limit fits with room to spare.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How often an idle link is pinged, and how long a ping may go unanswered
/// before the link counts as dead (a cut network sends no FIN).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Applies what a neighbour sends until the stream ends, fails, misbehaves, or is
/// cancelled; then takes the link down.
pub async fn drive(
    node: Arc<Node>,
    slot: Arc<LinkSlot>,
    id: u64,
    mut inbound: Streaming<LinkMessage>,
    cancel: CancellationToken,
) {
    let reason = loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break "closed".to_owned(),
            m = inbound.message() => m,
        };
        match message {
            Ok(Some(m)) => {
                slot.count_received(m.updates.len() as u64);
                if let Some(e) = m
                    .updates
                    .iter()
                    .find_map(|u| node.apply_update(u, slot.peer()).err())
                {
                    tracing::warn!(peer = %slot.peer(), error = %e, "neighbour sent a bad update; cutting it off");
                    break format!("bad update: {e}");
                }
            }
            Ok(None) => break link::NEIGHBOUR_CLOSED.to_owned(),
            Err(status) => break format!("stream failed: {}", status.message()),
        }
    };
    slot.drop_link(id, &reason);
}

/// The `Peer` gRPC service of one server.
#[derive(Debug, Clone)]
pub struct PeerService {
    node: Arc<Node>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl PeerService {
    pub fn new(node: Arc<Node>, shutdown: CancellationToken, tasks: TaskTracker) -> PeerService {
        PeerService {
            node,
            shutdown,
            tasks,
        }
    }

    pub fn into_server(self) -> PeerServer<PeerService> {
        PeerServer::new(self).max_decoding_message_size(MAX_MESSAGE)
    }
}

fn metadata<'a>(req: &'a Request<Streaming<LinkMessage>>, key: &str) -> Result<&'a str, Status> {
    req.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::invalid_argument(format!("missing {key} metadata")))
}

type LinkStream = Pin<Box<dyn Stream<Item = Result<LinkMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl proto::peer_server::Peer for PeerService {
    type LinkStream = LinkStream;

    async fn link(
        &self,
        req: Request<Streaming<LinkMessage>>,
    ) -> Result<Response<LinkStream>, Status> {
        let me = self.node.name();
        let from = metadata(&req, FROM_HEADER)?.to_owned();
        let to = metadata(&req, TO_HEADER)?;
        if to != &**me {
            tracing::warn!(from, to, "refused a link meant for another server");
            return Err(Status::failed_precondition(format!(
                "this is {me}, not {to}"
            )));
        }
        let Some(slot) = self.node.links().get(&from).cloned() else {
            tracing::warn!(from, "refused a link from a server that is not a neighbour");
            return Err(Status::permission_denied(format!(
                "{from} is not a neighbour of {me}"
            )));
        };
        let cancel = self.shutdown.child_token();
        let (sender, out) = outbound(self.node.catch_up(), future::ready(true), cancel.clone());
        let id = slot
            .adopt(Dialer::Peer, sender, cancel.clone())
            .map_err(|e| Status::already_exists(e.to_string()))?;
        let inbound = req.into_inner();
        self.tasks
            .spawn(drive(self.node.clone(), slot, id, inbound, cancel).in_current_span());
        Ok(Response::new(Box::pin(out.map(Ok))))
    }
}
