//! One server as its clients see it: IAMAT and WHATSAT, over the replicated table
//! that the backbone ([`crate::peer::Backbone`]) keeps in step with the herd.

use std::{sync::Arc, time::Instant};

use tower::ServiceExt as _;

use crate::{
    config::BackboneConfig,
    durable::{DataConfig, Failed, Fsync, Journal, OpenError},
    metrics::Metrics,
    peer::{Backbone, link::Links},
    places::{Places, PlacesRequest, PlacesService},
    proto,
    replica::Replica,
    store::{Record, Store},
    wire::{self, Timestamp},
};

pub use crate::peer::Applied;

/// One server: what the gateway and the inspection service call.
#[derive(Debug)]
pub struct Node {
    backbone: Arc<Backbone>,
    places: PlacesService,
    metrics: Arc<Metrics>,
    journal: Option<Arc<Journal>>,
}

/// An IAMAT answered but not yet settled: its reply (and, with a data dir, its
/// flood) waits until the journal holds everything up to `pos`.
#[derive(Debug)]
pub struct Unsettled {
    pub pos: u64,
    /// The record to flood once written, with its version.
    pub flood: Option<(Record, proto::Version)>,
}

impl Node {
    /// A server that starts without its state: a fresh incarnation.
    pub fn new(
        name: Arc<str>,
        neighbours: Vec<Arc<str>>,
        places: PlacesService,
        backbone: BackboneConfig,
    ) -> Node {
        Node::open(name, neighbours, places, backbone, None).expect("no data dir to open")
    }

    /// A server with its data dir, if it has one: the state in it is restored (the
    /// same incarnation, its seqs continued), and every change is journaled.
    pub fn open(
        name: Arc<str>,
        neighbours: Vec<Arc<str>>,
        places: PlacesService,
        backbone: BackboneConfig,
        data: Option<&DataConfig>,
    ) -> Result<Node, OpenError> {
        let mut metrics = Metrics::new(&name);
        let mut replica = Replica::new(name, Replica::fresh_incarnation(), neighbours);
        replica.set_max_bytes(backbone.max_record_bytes);
        let journal = match data {
            Some(data) => {
                let j = Journal::open(data, &mut replica)?;
                metrics.register_data(&j.metrics);
                Some(j)
            }
            None => None,
        };
        // A data dir's records at or below its watermark, or past a lowered cap,
        // are evicted before the server answers anyone.
        metrics.records_evicted.inc_by(replica.evict());
        let metrics = Arc::new(metrics);
        let backbone = Arc::new(Backbone::new(replica, backbone, metrics.clone()));
        let weak = Arc::downgrade(&backbone);
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("herd-evictor".into())
            .spawn(move || span.in_scope(|| run_evictor(weak)))
            .map_err(|source| OpenError::Io {
                dir: Default::default(),
                what: "cannot start the evictor thread",
                source,
            })?;
        Ok(Node {
            backbone,
            places,
            metrics,
            journal,
        })
    }

    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The replication side: links, floors, catch-ups.
    pub fn backbone(&self) -> &Arc<Backbone> {
        &self.backbone
    }

    /// Every update this server applies from now on.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Applied> {
        self.backbone.watch()
    }

    /// Answers a line that is not a valid command (or asks about an unknown client).
    pub fn reject(&self, line: &[u8], out: &mut Vec<u8>) {
        self.metrics.questions.inc();
        wire::write_question(line, out);
    }

    pub fn name(&self) -> &Arc<str> {
        self.backbone.replica().name()
    }

    pub fn links(&self) -> &Links {
        self.backbone.links()
    }

    pub fn store(&self) -> &Store {
        self.backbone.replica().store()
    }

    /// Handles an IAMAT (`line`) received at `now`; appends the reply line (with its
    /// newline). With a data dir the reply must not leave before [`Node::settle`]
    /// says its record is written (the result says up to where), and an IAMAT is
    /// answered `?` while the data dir cannot be written.
    pub fn iamat(
        &self,
        cmd: &wire::IAmAt<'_>,
        line: &[u8],
        now: Timestamp,
        out: &mut Vec<u8>,
    ) -> Option<Unsettled> {
        let Some(journal) = &self.journal else {
            self.iamat_in_memory(cmd, now, out);
            return None;
        };
        if journal.refusing() {
            journal.metrics.refused_iamats.inc();
            self.metrics.command("iamat", "refused");
            self.reject(line, out);
            return None;
        }
        let mut diff = Vec::with_capacity(24);
        wire::write_time_diff(now, &cmd.client_time, &mut diff);
        let record = Record::from_iamat(self.name(), &diff, cmd);
        let start = out.len();
        out.extend_from_slice(record.line());
        let copy = self.backbone.wants_own_records();
        let flood = match self
            .backbone
            .replica()
            .iamat(record, &cmd.client_time, copy)
        {
            Ok(mut applied) => {
                self.metrics.command("iamat", "applied");
                // Flooded once written (nothing of this incarnation leaves before
                // its entry is written; see `crate::durable`), so the gate goes now.
                let record = applied.record.take();
                let version = applied.version.clone();
                drop(applied);
                record.map(|r| (r, version))
            }
            Err(stored) => {
                self.metrics.command("iamat", "stale");
                out.truncate(start);
                out.extend_from_slice(stored.line());
                None
            }
        };
        out.push(b'\n');
        // The position after this record's entry (or, for a stale IAMAT, after the
        // entry of the record its reply shows).
        Some(Unsettled {
            pos: journal.appended(),
            flood,
        })
    }

    /// Waits until the journal holds everything up to `pos` (written, and with
    /// `fsync = always` on disk), then floods `floods`. Err: the disk failed, and
    /// the IAMATs waiting for it must not be answered as stored.
    pub async fn settle(
        &self,
        pos: u64,
        floods: impl Iterator<Item = (Record, proto::Version)>,
    ) -> Result<(), Failed> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        journal.write_through(pos)?;
        for (record, version) in floods {
            self.backbone.flood_own_record(&record, version);
        }
        if journal.settings().fsync == Fsync::Always {
            journal.wait_synced(pos).await?;
        }
        Ok(())
    }

    fn iamat_in_memory(&self, cmd: &wire::IAmAt<'_>, now: Timestamp, out: &mut Vec<u8>) {
        let mut diff = Vec::with_capacity(24);
        wire::write_time_diff(now, &cmd.client_time, &mut diff);
        let record = Record::from_iamat(self.name(), &diff, cmd);
        // The reply is this record's line unless the store keeps an older one.
        let start = out.len();
        out.extend_from_slice(record.line());
        // A copy only when a neighbour or a watcher needs it. Deciding before the
        // store takes it leaves no gap: a link adopted later starts with a
        // catch-up that holds it.
        let copy = self.backbone.wants_own_records();
        match self
            .backbone
            .replica()
            .iamat(record, &cmd.client_time, copy)
        {
            Ok(applied) => {
                self.metrics.command("iamat", "applied");
                if copy {
                    self.backbone.flood_own(applied);
                }
            }
            Err(stored) => {
                self.metrics.command("iamat", "stale");
                out.truncate(start);
                out.extend_from_slice(stored.line());
            }
        }
        out.push(b'\n');
    }

    /// Handles a WHATSAT; appends the whole reply. False when the client is
    /// unknown here (the caller answers `?`).
    pub async fn whatsat(&self, cmd: &wire::WhatsAt<'_>, out: &mut Vec<u8>) -> bool {
        let Some(record) = self.store().get(cmd.client_id) else {
            self.metrics.command("whatsat", "unknown_client");
            return false;
        };
        self.metrics.command("whatsat", "ok");
        let (lat, lon) = record.location();
        let started = Instant::now();
        let req = PlacesRequest {
            lat,
            lon,
            radius_m: cmd.radius_km * 1000.0,
            bound: cmd.bound,
        };
        // The stack answers every failure itself; only a broken stack errs here.
        let places = match self.places.clone().oneshot(req).await {
            Ok(places) => places,
            Err(e) => {
                tracing::error!(error = %e, "places service failed");
                Places::failed("UNKNOWN_ERROR", format!("places service failed: {e}"))
            }
        };
        self.metrics.places(&places.status, started.elapsed());
        if places.cached {
            self.metrics.places_cache_hits.inc();
        }
        // The JSON of one result is about 220 bytes: one allocation for the reply.
        out.reserve(record.line().len() + 128 + 256 * places.results.len().min(cmd.bound));
        out.extend_from_slice(record.line());
        out.push(b'\n');
        places.write_json(cmd.bound, out);
        out.extend_from_slice(b"\n\n");
        true
    }
}

/// The evictor: sweeps records at or below the watermark and keeps the table under
/// `backbone.max_record_bytes` ([`Replica::evict`]), off the connections' threads.
/// Ends once the server is dropped.
fn run_evictor(backbone: std::sync::Weak<Backbone>) {
    loop {
        let Some(b) = backbone.upgrade() else {
            return;
        };
        let replica = b.replica();
        replica.wait_evictor(std::time::Duration::from_millis(500));
        let n = replica.evict();
        if n > 0 {
            b.metrics().records_evicted.inc_by(n);
            tracing::info!(
                evicted = n,
                records = replica.store().len(),
                bytes = replica.store().bytes(),
                max_bytes = replica.max_bytes(),
                "records evicted, oldest by client time"
            );
        }
    }
}
