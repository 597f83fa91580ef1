//! The gRPC backbone: the [`Backbone`] that floods what the replica stores over
//! the links, the `Link` service neighbours call, the dialer that keeps each link
//! up, and the loop that applies what a neighbour sends. The decisions are the
//! replica's ([`crate::replica`]); this module does the I/O.

pub mod dial;
pub mod link;
pub mod wire;

use std::{pin::Pin, sync::Arc, time::Duration, time::SystemTime};

use futures_util::{Stream, StreamExt as _, future};
use tokio::sync::broadcast;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use self::link::{Dialer, LinkShared, LinkSlot, Links, outbound};
use self::wire::{LinkMessage, UpdateRef, VersionRef};
use crate::{
    config::BackboneConfig,
    metrics::Metrics,
    proto::{self, peer_server::PeerServer},
    replica::{self, Floor, Offer, OfferError, Replica},
    store::{BadUpdate, Record},
};

/// Request metadata naming the dialling server.
pub const FROM_HEADER: &str = "herd-from";
/// Request metadata naming the server the dialer believes it calls.
pub const TO_HEADER: &str = "herd-to";

/// How often an idle link is pinged, and how long a ping may go unanswered
/// before the link counts as dead (a cut network sends no FIN).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// An update a server applied, for watchers.
pub type Applied = proto::WatchEvent;

/// How many applied updates a slow watcher may fall behind before it misses some.
const WATCH_BUFFER: usize = 4096;

/// Which servers a backbone takes updates about: the herd file's, and the origins
/// of every record it held when the file was (re)read.
#[derive(Debug, Default)]
pub struct Members {
    /// The herd file's servers; empty: nothing is checked.
    pub listed: Vec<Arc<str>>,
    /// `listed` and the origins held: an update whose origin is not here is refused.
    known: std::collections::BTreeSet<Arc<str>>,
}

impl Members {
    fn new(listed: Vec<Arc<str>>, held: Vec<Arc<str>>) -> Members {
        let known = if listed.is_empty() {
            Default::default()
        } else {
            listed.iter().cloned().chain(held).collect()
        };
        Members { listed, known }
    }

    fn knows(&self, name: &str) -> bool {
        self.listed.is_empty() || self.known.contains(name)
    }
}

/// What a change of membership did to one server's links.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    pub added: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
}

/// One server's replication side: its replica, its links, and its watchers.
#[derive(Debug)]
pub struct Backbone {
    replica: Replica,
    links: Links,
    config: BackboneConfig,
    members: std::sync::RwLock<Arc<Members>>,
    metrics: Arc<Metrics>,
    applied: broadcast::Sender<Applied>,
}

impl Backbone {
    pub fn new(replica: Replica, config: BackboneConfig, metrics: Arc<Metrics>) -> Backbone {
        let neighbours = replica.neighbours();
        let links = Links::new(replica.name(), &neighbours, metrics.clone());
        for n in &neighbours {
            metrics.new_neighbour(n);
        }
        let members = Members::new(config.members.clone(), replica.origins());
        Backbone {
            replica,
            links,
            config,
            members: std::sync::RwLock::new(Arc::new(members)),
            metrics,
            applied: broadcast::Sender::new(WATCH_BUFFER),
        }
    }

    /// The servers this backbone takes updates about, as of now.
    pub fn members(&self) -> Arc<Members> {
        self.members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A reloaded herd file: `listed` are its servers, `neighbours` this server's.
    /// A new neighbour is in the flood plan before its slot exists (so that a
    /// catch-up to it is seen by every flood decision), and accepted from then on;
    /// a removed one's link is closed for good and its series are dropped. The
    /// dialers are the caller's (`crate::membership`).
    pub fn set_membership(
        &self,
        listed: Vec<Arc<str>>,
        neighbours: Vec<Arc<str>>,
    ) -> MembershipChange {
        let old = self.replica.neighbours();
        let change = MembershipChange {
            added: neighbours
                .iter()
                .filter(|n| !old.contains(n))
                .cloned()
                .collect(),
            removed: old
                .iter()
                .filter(|n| !neighbours.contains(n))
                .cloned()
                .collect(),
        };
        let members = Arc::new(Members::new(listed, self.replica.origins()));
        *self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = members;
        self.replica.set_neighbours(neighbours);
        for n in &change.added {
            self.metrics.new_neighbour(n);
            self.links.add(n);
        }
        for n in &change.removed {
            self.links.remove(n);
            self.metrics.forget_neighbour(n);
        }
        change
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The wait while neighbours' queues are full (`Links::relief`), for a client
    /// connection that has answered a read that stored IAMATs; None when no queue
    /// presses. Boxed: it is rare, and inline it would be part of every
    /// connection's task (allocated whole at spawn, idle or not).
    pub fn relief(&self) -> Option<futures_util::future::BoxFuture<'_, ()>> {
        let relief = self.links.relief(|_| true, self.config.queue_wait)?;
        Some(Box::pin(relief))
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    pub fn config(&self) -> &BackboneConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every update this server applies from now on.
    pub fn watch(&self) -> broadcast::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// Whether an own record must be copied to be flooded or shown.
    pub fn wants_own_records(&self) -> bool {
        self.links.any_up() || self.applied.receiver_count() > 0
    }

    fn watched(&self) -> bool {
        self.applied.receiver_count() > 0
    }

    /// Shows an applied update to watchers (decoded only when someone watches).
    fn announce(&self, record: &Record, from: &str, payload: &[u8]) {
        if !self.watched() {
            return;
        }
        let Ok(update) = wire::decode(payload) else {
            return;
        };
        let applied_unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // No receiver left is fine: nobody is watching.
        let _ = self.applied.send(Applied {
            at_line: String::from_utf8_lossy(record.line()).into_owned(),
            from: from.to_owned(),
            update: Some(update),
            applied_unix_ms,
        });
    }

    /// Floods an own IAMAT's record (the gate is held until it is queued).
    pub fn flood_own(&self, applied: replica::Applied<'_>) {
        let Some(record) = &applied.record else {
            return;
        };
        let hood = self.replica.hood();
        let links = self.links.read_all();
        let plan = self
            .replica
            .plan(&hood, &applied, None, &[], |n| links.is_up(n));
        self.send_own(&links, record, plan, &applied.version);
    }

    /// Floods an own IAMAT's record once its journal entry is written (the gate was
    /// released after storing it: see `crate::durable` for why that is sound).
    pub fn flood_own_record(&self, record: &Record, version: proto::Version) {
        let hood = self.replica.hood();
        let links = self.links.read_all();
        let plan = self.replica.plan_own(&hood, |n| links.is_up(n));
        self.send_own(&links, record, plan, &version);
    }

    /// Sends an own record to `plan`'s targets and shows it to watchers: encoded
    /// once, every target's queue holding the same bytes.
    fn send_own(
        &self,
        links: &link::LinksRead<'_>,
        record: &Record,
        plan: replica::Flood<'_>,
        version: &proto::Version,
    ) {
        if plan.targets.is_empty() && !self.watched() {
            return;
        }
        let payload = record.encode_update(plan.seen, Some(VersionRef::of(version)));
        for target in plan.targets {
            if links.send(target, payload.clone()) {
                self.metrics.updates_forwarded.inc();
            }
        }
        self.announce(record, "", &payload);
    }

    /// Applies an update from neighbour `from` (`payload`, read as `update`, with
    /// `record` from [`replica::Replica::prepare`]; None: below the floor): stored and
    /// forwarded only when it is newer than what this server holds. Adds the
    /// neighbours it was forwarded to to `forwarded` (each once).
    fn apply_prepared(
        &self,
        payload: &bytes::Bytes,
        update: &UpdateRef<'_>,
        record: Option<Record>,
        from: &str,
        forwarded: &mut Vec<Arc<str>>,
    ) -> Result<(), OfferError> {
        self.metrics.updates_received.inc();
        let Some(record) = record else {
            self.metrics.updates_duplicate.inc();
            return Ok(());
        };
        let watched = self.watched();
        let copy = watched || tracing::enabled!(tracing::Level::TRACE);
        let mut applied = match self.replica.offer_prepared(update, record, copy)? {
            Offer::Applied(a) => a,
            Offer::Stale => {
                self.metrics.updates_duplicate.inc();
                return Ok(());
            }
        };
        self.metrics.updates_applied.inc();
        if let Some(record) = &applied.record {
            tracing::trace!(
                client = %crate::logging::Escaped(record.client_id()),
                origin = %update.origin,
                from,
                "update applied"
            );
        }
        let hood = self.replica.hood();
        let links = self.links.read_all();
        let plan = self
            .replica
            .plan(&hood, &applied, Some(from), &update.seen, |n| {
                links.is_up(n)
            });
        if !plan.targets.is_empty() {
            // The payload as it came, with the names this server adds to its list.
            let fwd = wire::with_seen(payload, &plan.seen[update.seen.len()..]);
            for target in plan.targets {
                if links.send(target, fwd.clone()) {
                    self.metrics.updates_forwarded.inc();
                    if !forwarded.iter().any(|n| **n == *target)
                        && let Some(n) = hood.names.iter().find(|n| ***n == *target)
                    {
                        forwarded.push(n.clone());
                    }
                }
            }
        }
        // The forwards are queued: the gate may go.
        let record = applied.record.take();
        drop(applied);
        if let Some(record) = record {
            self.announce(&record, from, payload);
        }
        Ok(())
    }
}

/// Applies what a neighbour sends until the stream ends, fails, misbehaves, or is
/// cancelled; then takes the link down. Returns why the neighbour was cut off when
/// it sent a bad message (the callee's side ends the stream with that as an
/// `INVALID_ARGUMENT` status, never OK).
pub async fn drive(
    backbone: Arc<Backbone>,
    slot: Arc<LinkSlot>,
    id: u64,
    shared: Arc<LinkShared>,
    mut inbound: Streaming<LinkMessage>,
    cancel: CancellationToken,
) -> Option<String> {
    let mut bad = None;
    let reason = loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break "closed".to_owned(),
            m = inbound.message() => m,
        };
        match message {
            Ok(Some(m)) => match handle(&backbone, &slot, &shared, m) {
                Err(e) => {
                    tracing::warn!(peer = %slot.peer(), error = %e, "neighbour sent a bad message; cutting it off");
                    backbone.metrics.backbone_bad_messages.inc();
                    bad = Some(format!("bad message: {e}"));
                    break format!("bad message: {e}");
                }
                Ok(forwarded) if forwarded.is_empty() => {}
                // This stream's updates went on to other neighbours: it reads no more
                // while their queues are full (`Links::relief`). Only theirs: a wait
                // for a queue this stream does not feed would tie streams together
                // that the data does not.
                Ok(forwarded) => {
                    let fed = |n: &str| forwarded.iter().any(|f| **f == *n);
                    if let Some(relief) = backbone.links.relief(fed, backbone.config.queue_wait) {
                        tokio::select! {
                            _ = cancel.cancelled() => break "closed".to_owned(),
                            () = relief => {}
                        }
                    }
                }
            },
            Ok(None) => break link::NEIGHBOUR_CLOSED.to_owned(),
            Err(status) => {
                if status.code() == tonic::Code::OutOfRange
                    || status.code() == tonic::Code::ResourceExhausted
                {
                    backbone.metrics.backbone_oversize.inc();
                }
                break format!("stream failed: {}", status.message());
            }
        }
    };
    slot.drop_link(id, &reason);
    bad
}

/// Why a neighbour's message was refused whole.
#[derive(Debug, thiserror::Error)]
pub enum BadMessage {
    #[error(transparent)]
    Offer(#[from] OfferError),
    #[error(
        "an update's seen list has {0} names, more than the herd's {1} servers and as many again"
    )]
    Seen(usize, usize),
}

/// What a checked update of a neighbour's message is.
enum Checked {
    /// Its record (None: below this server's floor, nothing to store).
    Record(Option<Record>),
    /// Its origin is a server this one does not know (not in its herd file, and no
    /// record of it held): refused, not stored nor forwarded, but the neighbour is
    /// not cut off, for its herd file may be newer (a server added and reloaded
    /// there first). Once this server's file is reloaded, a catch-up brings it.
    UnknownOrigin,
}

/// Every update of a message is checked before any is applied: a neighbour that
/// sends one bad update has none of that message applied.
///
/// The seen list may name servers this one does not know (the neighbour's herd file
/// may be newer): the names only steer forwarding. Its length is bounded by twice
/// the herd's size, so that it stays cheap to carry.
fn check(backbone: &Backbone, members: &Members, u: &UpdateRef<'_>) -> Result<Checked, BadMessage> {
    let servers = if members.listed.is_empty() {
        replica::MAX_SOURCES
    } else {
        members.listed.len()
    };
    if u.seen.len() > 2 * servers {
        return Err(BadMessage::Seen(u.seen.len(), servers));
    }
    if !members.knows(u.origin) {
        return Ok(Checked::UnknownOrigin);
    }
    Ok(Checked::Record(backbone.replica.prepare(u)?))
}

fn handle(
    backbone: &Backbone,
    slot: &LinkSlot,
    shared: &LinkShared,
    m: LinkMessage,
) -> Result<Vec<Arc<str>>, BadMessage> {
    slot.count_received(m.updates.len() as u64);
    let members = backbone.members();
    // Floors and watermarks are checked before any update is applied, as updates are.
    let done = match &m.caught_up {
        Some(f) => Some((floors_from(f)?, evicted_key(f)?)),
        None => None,
    };
    let theirs = match &m.floors {
        Some(f) => Some((floors_from(f)?, evicted_key(f)?)),
        None => None,
    };
    let mut checked = Vec::with_capacity(m.updates.len());
    for payload in &m.updates {
        let u = UpdateRef::parse(payload).map_err(|e| OfferError::from(BadUpdate::from(e)))?;
        let record = check(backbone, &members, &u)?;
        checked.push((u, record));
    }
    let mut forwarded = Vec::new();
    for (payload, (u, record)) in m.updates.iter().zip(checked) {
        match record {
            Checked::Record(record) => {
                backbone.apply_prepared(payload, &u, record, slot.peer(), &mut forwarded)?;
            }
            Checked::UnknownOrigin => {
                backbone.metrics.updates_unknown_origin.inc();
                tracing::debug!(peer = %slot.peer(), origin = %crate::logging::Escaped(u.origin.as_bytes()), "refused an update whose origin is not a server of this herd file");
            }
        }
    }
    // After the updates before it: the catch-up's end claims them. Its watermark
    // first: the floors count what is evicted at the sender as reflected. Never a
    // floor for an origin refused above: its records were not stored.
    if let Some((mut floors, evicted)) = done {
        if let Some(key) = evicted {
            backbone.replica.raise_evicted(key);
        }
        floors.retain(|f| members.knows(&f.origin));
        backbone
            .replica
            .caught_up(&floors)
            .map_err(OfferError::from)?;
    }
    if let Some((floors, evicted)) = theirs {
        if let Some(key) = evicted {
            backbone.replica.raise_evicted(key);
        }
        shared.floors_received(floors);
    }
    Ok(forwarded)
}

/// A neighbour's eviction watermark, checked as strictly as an IAMAT's time and ID
/// (canonical seconds, nanoseconds below a second).
fn evicted_key(f: &proto::Floors) -> Result<Option<crate::store::EvictKey>, BadMessage> {
    let Some(e) = &f.evicted else {
        return Ok(None);
    };
    let key = (e.nanos < 1_000_000_000)
        .then(|| {
            let time = format!("{}.{:09}", e.seconds, e.nanos);
            crate::store::EvictKey::checked(time.as_bytes(), &e.client_id)
        })
        .flatten()
        .filter(|k| k.time.seconds_digits() == e.seconds);
    match key {
        Some(key) => Ok(Some(key)),
        None => Err(OfferError::from(BadUpdate::Watermark(format!(
            "{}.{:09} {}",
            e.seconds,
            e.nanos,
            String::from_utf8_lossy(&e.client_id)
        )))
        .into()),
    }
}

fn floors_from(f: &proto::Floors) -> Result<Vec<Floor>, BadMessage> {
    if f.floors.len() > replica::MAX_SOURCES {
        return Err(OfferError::from(replica::TooManySources).into());
    }
    f.floors
        .iter()
        .map(|f| Floor::from_proto(f).map_err(|e| OfferError::from(e).into()))
        .collect()
}

/// The `Peer` gRPC service of one server.
#[derive(Debug, Clone)]
pub struct PeerService {
    backbone: Arc<Backbone>,
    /// Whether the peer port serves mutual TLS: then a stream's client certificate
    /// must name the server in `herd-from`.
    tls: bool,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl PeerService {
    pub fn new(
        backbone: Arc<Backbone>,
        tls: bool,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> PeerService {
        PeerService {
            backbone,
            tls,
            shutdown,
            tasks,
        }
    }

    pub fn into_server(self) -> PeerServer<PeerService> {
        let max = self.backbone.config.max_message_bytes;
        PeerServer::new(self).max_decoding_message_size(max)
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
        let me = self.backbone.replica.name();
        let from = metadata(&req, FROM_HEADER)?.to_owned();
        let to = metadata(&req, TO_HEADER)?;
        if to != &**me {
            tracing::warn!(from, to, "refused a link meant for another server");
            return Err(Status::failed_precondition(format!(
                "this is {me}, not {to}"
            )));
        }
        // With TLS, only the server whose certificate this is may say it is `from`:
        // checked before the stream can touch the link.
        if self.tls
            && !crate::auth::certificate_names(req.peer_certs().as_deref().map(|c| &c[..]), &from)
        {
            let refusal = crate::auth::Refusal::Certificate;
            self.backbone.metrics.auth_refused("link", refusal.as_str());
            tracing::warn!(from = %crate::logging::Escaped(from.as_bytes()), "refused a link stream whose client certificate does not name its herd-from");
            return Err(refusal.status());
        }
        let Some(slot) = self.backbone.links.get(&from) else {
            tracing::warn!(from, "refused a link from a server that is not a neighbour");
            return Err(Status::permission_denied(format!(
                "{from} is not a neighbour of {me}"
            )));
        };
        let cancel = self.shutdown.child_token();
        let (sender, out) = outbound(
            self.backbone.clone(),
            slot.peer().clone(),
            future::ready(true),
            cancel.clone(),
        );
        let shared = sender.shared();
        let id = slot
            .adopt(Dialer::Peer, sender, cancel.clone())
            .map_err(|e| Status::already_exists(e.to_string()))?;
        let inbound = req.into_inner();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel();
        let backbone = self.backbone.clone();
        self.tasks.spawn(
            async move {
                let bad = drive(backbone, slot, id, shared, inbound, cancel).await;
                let _ = end_tx.send(bad);
            }
            .in_current_span(),
        );
        // A neighbour cut off for a bad message hears why, as the stream's status.
        let end = futures_util::stream::once(end_rx).filter_map(|bad| {
            future::ready(match bad {
                Ok(Some(reason)) => Some(Err(Status::invalid_argument(reason))),
                _ => None,
            })
        });
        Ok(Response::new(Box::pin(out.map(Ok).chain(end))))
    }
}
