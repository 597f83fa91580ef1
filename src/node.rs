//! One server of the herd: its store, the flood decision, and the calls that the
//! gateway (IAMAT, WHATSAT) and the peer links (updates, catch-up) make.

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use tokio::sync::broadcast;
use tower::ServiceExt as _;

use crate::{
    metrics::Metrics,
    peer::link::{CatchUp, Links},
    places::{Places, PlacesRequest, PlacesService},
    proto,
    store::{BadUpdate, Record, Store},
    wire::{self, Timestamp},
};

/// Whom an update goes to next, and the list it carries there.
#[derive(Debug, PartialEq, Eq)]
pub struct Flood<'a> {
    pub targets: Vec<&'a str>,
    pub seen: Vec<String>,
}

/// The flood decision, with no I/O: an update that `me` has just applied, which
/// came from `from` (None for an IAMAT of its own) carrying `seen`, goes to every
/// neighbour that is not in `seen`, not `from`, and whose link is up. The list it
/// carries adds `me` and those targets, so that they do not send it to one another.
/// A neighbour whose link is down is left out of the list, so that another server
/// still connected to it forwards the update.
pub fn plan<'a>(
    me: &str,
    neighbours: &'a [Arc<str>],
    from: Option<&str>,
    seen: &[String],
    is_up: impl Fn(&str) -> bool,
) -> Flood<'a> {
    let mut next: Vec<String> = seen.to_vec();
    for name in [Some(me), from].into_iter().flatten() {
        if !next.iter().any(|s| s == name) {
            next.push(name.to_owned());
        }
    }
    let targets: Vec<&str> = neighbours
        .iter()
        .map(|n| &**n)
        .filter(|n| !next.iter().any(|s| s == n) && is_up(n))
        .collect();
    next.extend(targets.iter().map(|t| (*t).to_owned()));
    Flood {
        targets,
        seen: next,
    }
}

/// An update a server applied, for watchers.
pub type Applied = proto::WatchEvent;

/// How many applied updates a slow watcher may fall behind before it misses some.
const WATCH_BUFFER: usize = 4096;

/// One server: what the gateway and the peer links call.
#[derive(Debug)]
pub struct Node {
    name: Arc<str>,
    neighbours: Vec<Arc<str>>,
    store: Store,
    links: Links,
    places: PlacesService,
    metrics: Arc<Metrics>,
    applied: broadcast::Sender<Applied>,
}

impl Node {
    pub fn new(name: Arc<str>, neighbours: Vec<Arc<str>>, places: PlacesService) -> Node {
        let metrics = Arc::new(Metrics::new(&name));
        let links = Links::new(&name, &neighbours, metrics.clone());
        Node {
            name,
            neighbours,
            store: Store::new(),
            links,
            places,
            metrics,
            applied: broadcast::Sender::new(WATCH_BUFFER),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every update this server applies from now on.
    pub fn watch(&self) -> broadcast::Receiver<Applied> {
        self.applied.subscribe()
    }

    fn announce(&self, record: &Record, from: &str, update: Option<&proto::Update>) {
        if self.applied.receiver_count() == 0 {
            return;
        }
        let applied_unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let update = update
            .cloned()
            .unwrap_or_else(|| record.to_update(vec![self.name.to_string()]));
        // No receiver left is fine: nobody is watching.
        let _ = self.applied.send(Applied {
            at_line: String::from_utf8_lossy(record.line()).into_owned(),
            from: from.to_owned(),
            update: Some(update),
            applied_unix_ms,
        });
    }

    /// Answers a line that is not a valid command (or asks about an unknown client).
    pub fn reject(&self, line: &[u8], out: &mut Vec<u8>) {
        self.metrics.questions.inc();
        wire::write_question(line, out);
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Handles an IAMAT received at `now`; appends the reply line (with its newline).
    pub fn iamat(&self, cmd: &wire::IAmAt<'_>, now: Timestamp, out: &mut Vec<u8>) {
        let mut diff = Vec::with_capacity(24);
        wire::write_time_diff(now, &cmd.client_time, &mut diff);
        let record = Record::from_iamat(&self.name, &diff, cmd);
        // The reply is this record's line unless the store keeps an older one.
        let start = out.len();
        out.extend_from_slice(record.line());
        match self.store.offer_iamat(record, &cmd.client_time) {
            Ok(()) => {
                self.metrics.command("iamat", "applied");
                // Read back only when a neighbour or a watcher needs it. Deciding after
                // the store took it leaves no gap: a link adopted later starts with a
                // catch-up that holds it.
                // (If a newer record from elsewhere replaced it meanwhile, whoever
                // stored that one floods it.)
                if (self.links.any_up() || self.applied.receiver_count() > 0)
                    && let Some(record) = self.store.get(cmd.client_id)
                    && record.line() == &out[start..]
                {
                    self.flood(&record, None, &[]);
                    self.announce(&record, "", None);
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
        let Some(record) = self.store.get(cmd.client_id) else {
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

    /// Applies an update from neighbour `from`: stored and forwarded only when it is
    /// newer than what this server holds. Ok(true) when it was applied.
    pub fn apply_update(&self, update: &proto::Update, from: &str) -> Result<bool, BadUpdate> {
        self.metrics.updates_received.inc();
        let record = Record::from_update(update)?;
        if !self.store.offer_update(record.clone()) {
            self.metrics.updates_duplicate.inc();
            return Ok(false);
        }
        self.metrics.updates_applied.inc();
        tracing::trace!(
            client = %crate::logging::Escaped(record.client_id()),
            origin = %update.origin,
            from,
            "update applied"
        );
        self.flood(&record, Some(from), &update.seen);
        self.announce(&record, from, Some(update));
        Ok(true)
    }

    fn flood(&self, record: &Record, from: Option<&str>, seen: &[String]) {
        let plan = plan(&self.name, &self.neighbours, from, seen, |n| {
            self.links.is_up(n)
        });
        if plan.targets.is_empty() {
            return;
        }
        let update = record.to_update(plan.seen);
        for target in plan.targets {
            if self.links.send(target, update.clone()) {
                self.metrics.updates_forwarded.inc();
            }
        }
    }

    /// Every record as an update from this server, part by part, for a neighbour's
    /// catch-up. The list names this server only: the neighbour forwards what is new
    /// to it to all its other neighbours.
    pub fn catch_up(self: &Arc<Node>) -> CatchUp {
        let node = Arc::downgrade(self);
        Arc::new(move |part| {
            let node = node.upgrade()?;
            let seen = vec![node.name.to_string()];
            let records = node.store.snapshot_part(part)?;
            Some(records.iter().map(|r| r.to_update(seen.clone())).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn own_iamat_goes_to_every_live_neighbour() {
        let n = names(&["Hands", "Holiday", "Wilkes"]);
        let p = plan("Goloman", &n, None, &[], |_| true);
        assert_eq!(p.targets, ["Hands", "Holiday", "Wilkes"]);
        assert_eq!(p.seen, ["Goloman", "Hands", "Holiday", "Wilkes"]);
    }

    #[test]
    fn never_back_to_the_sender_nor_to_those_that_have_it() {
        let n = names(&["Goloman", "Welsh", "Wilkes"]);
        let seen = vec!["Goloman".to_owned(), "Wilkes".to_owned()];
        let p = plan("Holiday", &n, Some("Goloman"), &seen, |_| true);
        assert_eq!(p.targets, ["Welsh"]);
        assert_eq!(p.seen, ["Goloman", "Wilkes", "Holiday", "Welsh"]);
        // The sender is never a target even when a buggy peer leaves itself out of the list.
        let p = plan("Holiday", &n, Some("Welsh"), &[], |_| true);
        assert_eq!(p.targets, ["Goloman", "Wilkes"]);
    }

    #[test]
    fn down_neighbours_stay_off_the_list() {
        let n = names(&["Hands", "Holiday", "Wilkes"]);
        let p = plan("Goloman", &n, None, &[], |name| name != "Wilkes");
        assert_eq!(p.targets, ["Hands", "Holiday"]);
        assert_eq!(p.seen, ["Goloman", "Hands", "Holiday"]);
    }

    #[test]
    fn nothing_left_to_tell() {
        let n = names(&["Holiday"]);
        let p = plan("Welsh", &n, Some("Holiday"), &[], |_| true);
        assert!(p.targets.is_empty());
    }
}
