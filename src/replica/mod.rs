//! The replication protocol as pure code (no sockets, no tasks, no clocks): which
//! records a node stores, whom it forwards them to, what a catch-up must send, and
//! how floors move. `peer/` moves the bytes; `node` handles the clients; the
//! simulation tests (`sim`) drive several replicas over an in-memory herd.
//!
//! # Versions and floors
//!
//! Every record has a version (origin, incarnation, seq), given by the server that
//! received the IAMAT and never changed by relays. A server that starts without its
//! state starts a new incarnation: its start time in nanoseconds since the epoch.
//! Two starts of one server would need the same nanosecond reading (or a clock set
//! back to exactly that nanosecond) to collide, and seq only grows within an
//! incarnation, so a version is never reused for another record. Versions say what
//! a node has seen; the label (client time, origin, ...) still says which record
//! wins, and of two records with equal labels (two incarnations of one origin took
//! the same IAMAT) the newer incarnation's (see `Replica::keeps_old`).
//!
//! For every source (origin, incarnation) a node keeps a floor: every version of it
//! at or below the floor is *reflected* in its table, that is, held, or superseded
//! by a held record that wins by label. Reflected is monotone (a node's record for a
//! client only ever goes up in the label order), so a floor, once true, stays true.
//! A floor moves three ways:
//! - own records: the floor of a node's own source is the last seq it gave;
//! - live updates: a received version, applied or not, is reflected; the floor
//!   moves over it when every seq below is reflected too. An update that arrives
//!   out of seq order (it came another way, or the one before it was superseded on
//!   the way and never sent) waits in [`versions::Runs`] above a gap and never moves
//!   the floor past it;
//! - the end of a catch-up ([`CaughtUp`]), which proves a range.
//!
//! # Catch-ups, and why their end is sound
//!
//! Node M catches neighbour N up from N's floor vector f: it sends every record it
//! holds whose version is above N's floor for its source, source by source in seq
//! order, then a [`CaughtUp`] naming, for each source, M's floor F taken when the
//! catch-up started (T0). N raises its floors to F once it has handled everything
//! before it. Why every version v <= F is then reflected at N: at T0 v was reflected
//! at M, by a record X0 >= v. Either X0 is still current at M when its source is
//! read, and is sent (or is at or below N's floor for its source, so N reflects it
//! already), or M replaced it after T0 with a newer record. Every record M stores
//! after T0 is sent to N before the end marker, whatever its `seen` list says
//! (except those that came from N, which N holds): [`Replica::plan`] adds every
//! neighbour being caught up. Updates keep arriving during a catch-up, so the live
//! stream and the end marker must be ordered: an apply holds the replica's gate
//! (shared) from storing a record until its forwards are queued ([`Applied`] holds
//! it), and the start and the end of a catch-up take it exclusively, the end
//! queueing its marker behind every such forward. If any update for N was dropped
//! (a full queue) during the catch-up, its end is not sent: the link is repaired by
//! another catch-up instead. A catch-up belongs to one stream: a stream that ends or
//! is replaced drops its catch-up unfinished (no end marker), and the new stream
//! starts over from the floors the neighbour sends on it.
//!
//! A catch-up is cheap when nothing is missing: N's vector is a few bytes a source,
//! and the answer lists only the sources whose floor it raises. The whole table is
//! sent only when N's floors cannot be trusted: they claim more of M's own current
//! incarnation than M ever made (N is broken, or M lost its state without starting
//! a new incarnation). Then every record is sent, from seq 0 of every source.
//!
//! Sources grow by one each time a server restarts without its state; an old
//! incarnation is retired once no record here is current for it any more and a
//! newer incarnation of that origin is known, so their count stays at the
//! restarts whose records are still current somewhere.

pub mod netsim;
pub mod versions;

#[cfg(test)]
mod sim;

use std::sync::{
    Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard,
    atomic::{AtomicU32, Ordering},
};

use crate::{
    peer::wire::UpdateRef,
    proto,
    store::{BadUpdate, EvictKey, Record, SourceId, Store, Version},
    wire::ClientTime,
};

pub use versions::{MAX_SOURCES, TooManySources, Versions};

/// Whom an update goes to next, and the list it carries there.
#[derive(Debug, PartialEq, Eq)]
pub struct Flood<'a> {
    pub targets: Vec<&'a str>,
    /// `seen` as it came, then the names this node adds (borrowed: no string is copied).
    pub seen: Vec<&'a str>,
}

/// The flood decision: an update that `me` has just applied, which came from
/// `from` (None for an IAMAT of its own) carrying `seen`, goes to every neighbour
/// whose link is up and that is not `from`, and not in `seen` unless `catching_up`
/// says a catch-up to it is running (its end claims every record stored meanwhile).
/// The list it carries adds `me` and those targets, so that they do not send it to
/// one another. A neighbour whose link is down is left out of the list, so that
/// another server still connected to it forwards the update.
pub fn plan<'a>(
    me: &'a str,
    neighbours: &'a [Arc<str>],
    from: Option<&'a str>,
    seen: &[&'a str],
    is_up: impl Fn(&str) -> bool,
    catching_up: impl Fn(&str) -> bool,
) -> Flood<'a> {
    let mut next: Vec<&'a str> = Vec::with_capacity(seen.len() + neighbours.len() + 2);
    next.extend_from_slice(seen);
    for name in [Some(me), from].into_iter().flatten() {
        if !next.contains(&name) {
            next.push(name);
        }
    }
    // One allocation each, and every name of the list compared once per neighbour
    // (lists grow with the herd: dozens of names in a herd of a thousand).
    let mut targets: Vec<&str> = Vec::with_capacity(neighbours.len());
    let listed = next.len();
    for n in neighbours.iter().map(|n| &**n) {
        if Some(n) == from || n == me {
            continue;
        }
        let known = next[..listed].contains(&n);
        if (!known || catching_up(n)) && is_up(n) {
            targets.push(n);
            if !known && !next[listed..].contains(&n) {
                next.push(n);
            }
        }
    }
    Flood {
        targets,
        seen: next,
    }
}

/// One floor of a vector, as on the wire: every version of the source at or below
/// `seq` is reflected, and so is every one in the runs `above` (first..=last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Floor {
    pub origin: Arc<str>,
    pub incarnation: u64,
    pub seq: u64,
    pub above: Vec<(u64, u64)>,
}

/// Runs sent per source in a floor vector (any subset of them is sound to send).
pub const RUNS_SENT: usize = 32;

impl Floor {
    pub fn to_proto(&self) -> proto::Floor {
        proto::Floor {
            origin: self.origin.to_string(),
            incarnation: self.incarnation,
            seq: self.seq,
            above: self
                .above
                .iter()
                .map(|&(first, last)| proto::SeqRun { first, last })
                .collect(),
        }
    }

    pub fn from_proto(f: &proto::Floor) -> Result<Floor, BadUpdate> {
        if !crate::config::valid_name(&f.origin) {
            return Err(BadUpdate::Origin(f.origin.clone()));
        }
        if f.seq > crate::store::MAX_SEQ {
            return Err(BadUpdate::VersionSeq(f.seq));
        }
        Ok(Floor {
            origin: f.origin.as_str().into(),
            incarnation: f.incarnation,
            seq: f.seq,
            above: f
                .above
                .iter()
                .take(RUNS_SENT)
                .map(|r| (r.first, r.last))
                .collect(),
        })
    }
}

/// A floor as a snapshot keeps it: (origin, incarnation, seq).
pub type SnapshotFloor = (Arc<str>, u64, u64);

/// Runs of seqs, `first..=last`.
pub type SeqRuns = Vec<(u64, u64)>;

/// The end of a catch-up: floors the receiver may raise its own to.
pub type CaughtUp = Vec<Floor>;

/// A record stored by this node, with the gate held: forwards of it must be queued
/// before this is dropped (see the module docs).
#[derive(Debug)]
pub struct Applied<'a> {
    /// The record stored (None for an IAMAT whose caller wanted no copy).
    pub record: Option<Record>,
    pub version: proto::Version,
    _gate: RwLockReadGuard<'a, ()>,
}

/// What an update from a peer did.
#[derive(Debug)]
pub enum Offer<'a> {
    Applied(Applied<'a>),
    /// Not newer than the record held (or a version of this node's own source,
    /// which it always holds or has superseded).
    Stale,
}

/// One catch-up to one neighbour, from its start to its end.
#[derive(Debug)]
pub struct CatchUp {
    /// The sources to read, each from the neighbour's floor (the cursor of the
    /// first), with the runs above it the neighbour already has.
    todo: Vec<(SourceId, u64, SeqRuns)>,
    /// The end marker: this node's floors at the start, where above the neighbour's.
    end: CaughtUp,
    /// Every source is sent from 0: the neighbour's floors were not trusted.
    pub full: bool,
    pub records: u64,
    pub bytes: u64,
    /// Counts the catch-ups running to this neighbour while this one lives.
    running: Arc<AtomicU32>,
}

impl Drop for CatchUp {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Index entries read per source per batch.
const READ: usize = 256;

/// A node's neighbours as of now, each with the count of catch-ups to it running.
#[derive(Debug, Default)]
pub struct Hood {
    pub names: Vec<Arc<str>>,
    catching_up: Vec<Arc<AtomicU32>>,
}

impl Hood {
    /// `names`, keeping the counters of those already in `old` (a catch-up running
    /// to a neighbour that stays must still be seen by every flood decision).
    fn new(names: Vec<Arc<str>>, old: &Hood) -> Hood {
        let catching_up = names
            .iter()
            .map(|n| old.counter(n).unwrap_or_default())
            .collect();
        Hood { names, catching_up }
    }

    fn counter(&self, name: &str) -> Option<Arc<AtomicU32>> {
        self.names
            .iter()
            .position(|n| &**n == name)
            .map(|i| self.catching_up[i].clone())
    }

    fn is_catching_up(&self, name: &str) -> bool {
        self.names
            .iter()
            .position(|n| &**n == name)
            .is_some_and(|i| self.catching_up[i].load(Ordering::Acquire) > 0)
    }
}

/// One node's replicated state: its table, its versions, and the catch-ups it runs.
#[derive(Debug)]
pub struct Replica {
    me: Arc<str>,
    incarnation: u64,
    /// The neighbours and their catch-up counters; replaced whole when the herd file
    /// is reloaded (`crate::membership`), read once per flood decision.
    hood: RwLock<Arc<Hood>>,
    store: Store,
    versions: Mutex<Versions>,
    /// Held shared from storing a record until its forwards are queued; exclusively
    /// by the start and the end of a catch-up.
    gate: RwLock<()>,
    /// The data dir's journal, if the server has one: every change is appended to
    /// it in the critical section that makes it.
    journal: Option<Arc<crate::durable::Journal>>,
    /// `backbone.max_record_bytes`: past it the oldest records are evicted.
    max_bytes: u64,
    /// Set when the evictor has work (over the cap, or a watermark to sweep).
    evictor: (Mutex<bool>, std::sync::Condvar),
}

impl Replica {
    pub fn new(me: Arc<str>, incarnation: u64, neighbours: Vec<Arc<str>>) -> Replica {
        Replica {
            versions: Mutex::new(Versions::new(me.clone(), incarnation)),
            hood: RwLock::new(Arc::new(Hood::new(neighbours, &Hood::default()))),
            me,
            incarnation,
            store: Store::new(),
            gate: RwLock::new(()),
            journal: None,
            max_bytes: u64::MAX,
            evictor: (Mutex::new(false), std::sync::Condvar::new()),
        }
    }

    /// The cap on the bytes of records held (`backbone.max_record_bytes`).
    pub fn set_max_bytes(&mut self, max: u64) {
        self.max_bytes = max;
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The eviction watermark: every record at or below it is evicted here, and is
    /// on every server that has heard it (it travels with the floors).
    pub fn evicted(&self) -> Option<EvictKey> {
        self.store.evicted()
    }

    /// Raises the watermark to `key` (a neighbour's, or a restore's): journaled,
    /// and the records at or below it are swept by the evictor. From now on none
    /// is stored.
    pub fn raise_evicted(&self, key: EvictKey) {
        self.raise(key);
    }

    /// Restoring: the watermark a data dir kept (journaled there already).
    pub fn restore_evicted(&self, key: EvictKey) {
        self.store.raise_evicted(key);
    }

    fn raise(&self, key: EvictKey) -> bool {
        if !self.store.raise_evicted(key.clone()) {
            return false;
        }
        if let Some(j) = &self.journal {
            j.evicted(&key);
        }
        self.wake_evictor();
        true
    }

    /// Wakes the evictor if the cap is passed (called after each store).
    fn check_cap(&self) {
        if self.store.bytes() > self.max_bytes {
            self.wake_evictor();
        }
    }

    fn wake_evictor(&self) {
        *crate::lock(&self.evictor.0) = true;
        self.evictor.1.notify_one();
    }

    /// Waits until the evictor has work or `timeout` passes.
    pub fn wait_evictor(&self, timeout: std::time::Duration) {
        let mut work = crate::lock(&self.evictor.0);
        if !*work {
            work = self
                .evictor
                .1
                .wait_timeout(work, timeout)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *work = false;
    }

    /// The eviction rule. Past `max_bytes`, the watermark rises to the key (client
    /// time, then client ID) below which the oldest records add up to the excess
    /// over nine tenths of the cap; then every record at or below the watermark
    /// goes. Returns the records evicted.
    ///
    /// Why every server ends with the same table: the watermark only rises, every
    /// server refuses and sweeps what is at or below its own, and each sends its
    /// watermark with its floors (and with the end of each catch-up), so that all
    /// end with the highest, W. A record that wins for its client (the newest by
    /// the herd's order) and is above W was stored at its origin, is never evicted
    /// nor superseded anywhere, so it reaches every server by flooding or catch-up;
    /// anything else is superseded by such a record or is at or below W. So every
    /// server ends holding exactly the winning records above W, whichever order the
    /// updates came in and whichever server's cap bit first. Floors stay sound: a
    /// version at or below the watermark is reflected (evicted here, and wherever
    /// the floors that claim it go, the watermark goes first).
    pub fn evict(&self) -> u64 {
        let mut n = 0;
        for _ in 0..4 {
            let bytes = self.store.bytes();
            if bytes > self.max_bytes {
                let target = self.max_bytes - self.max_bytes / 10;
                if let Some(key) = self.store.eviction_key(bytes - target) {
                    self.raise(key);
                }
            }
            n += self.store.sweep(|gone| {
                let mut v = self.versions();
                for &(_, version) in gone {
                    v.get_mut(version.source).index.remove(version.seq);
                }
            });
            if self.store.bytes() <= self.max_bytes {
                break;
            }
        }
        n
    }

    /// From now on every change is journaled (after a restore).
    pub fn attach(&mut self, journal: Arc<crate::durable::Journal>) {
        self.journal = Some(journal);
    }

    pub fn journal(&self) -> Option<&Arc<crate::durable::Journal>> {
        self.journal.as_ref()
    }

    /// Restoring: this node is (its name, `incarnation`) from now on. The first
    /// call, on a fresh replica, replaces the fresh incarnation it was made with.
    pub fn set_incarnation(&mut self, incarnation: u64) -> Result<(), TooManySources> {
        let fresh = self.store.is_empty() && self.versions().iter().count() == 1;
        if fresh {
            *crate::lock(&self.versions) = Versions::new(self.me.clone(), incarnation);
        } else {
            self.versions().set_own(&self.me, incarnation)?;
        }
        self.incarnation = incarnation;
        Ok(())
    }

    /// Restoring: own seqs continue after `last`.
    pub fn resume_own(&self, last: u64) {
        self.versions().resume_own(last);
    }

    /// Restoring: the id of source (`origin`, `incarnation`), made if new.
    pub fn restore_source(
        &self,
        origin: &str,
        incarnation: u64,
    ) -> Result<SourceId, TooManySources> {
        self.versions().id(origin, incarnation)
    }

    /// Restoring: a record read back with its version (`source`, seq).
    pub fn restore(&self, record: Record, source: SourceId, seq: u64) {
        let own = source == self.versions().own();
        let version = Version { source, seq };
        let incarnation = self.versions().get(source).incarnation;
        let offered = self.store.offer_with(
            record,
            |new, old, at| self.keeps_old(new, incarnation, old, at),
            |hash, old, _| {
                let mut v = self.versions();
                v.replaced(hash, old, version);
                if own {
                    v.get_mut(source).index.insert(seq, hash);
                }
                v.get_mut(source).seen(seq);
                version
            },
        );
        if offered.is_err() {
            self.versions().get_mut(source).seen(seq);
        }
    }

    /// Restoring: floors a neighbour's catch-up (or a snapshot) proved.
    pub fn restore_floors(&self, floors: &[(String, u64, u64)]) -> Result<(), TooManySources> {
        let mut v = self.versions();
        for (origin, inc, seq) in floors {
            let id = v.id(origin, *inc)?;
            v.get_mut(id).raise(*seq);
        }
        Ok(())
    }

    /// For a snapshot: own incarnation, last own seq, and every floor (own too).
    pub fn snapshot_floors(&self) -> (u64, u64, Vec<SnapshotFloor>) {
        let v = self.versions();
        let floors = v
            .iter()
            .filter(|(_, s)| s.floor > 0)
            .map(|(_, s)| (s.origin.clone(), s.incarnation, s.floor))
            .collect();
        (self.incarnation, v.last_own(), floors)
    }

    /// For a snapshot: every current record as (incarnation, seq, line), source by
    /// source in seq order (so that a restore appends to each seq index, never
    /// inserts into its middle). Read like a catch-up: a batch of index entries under
    /// the versions lock, then each record under its shard's lock alone, so IAMATs
    /// wait for one record's copy at most. A record replaced meanwhile is skipped:
    /// what replaced it was journaled after the snapshot's segment began.
    pub fn snapshot_records(&self, mut f: impl FnMut(u64, u64, &[u8])) {
        let sources: Vec<(SourceId, u64)> = self
            .versions()
            .iter()
            .map(|(id, s)| (id, s.incarnation))
            .collect();
        let mut entries = Vec::with_capacity(READ);
        for (source, incarnation) in sources {
            let mut cursor = 0;
            loop {
                entries.clear();
                {
                    let v = self.versions();
                    match v.iter().find(|(id, _)| *id == source) {
                        Some((_, s)) if s.incarnation == incarnation => {
                            s.index.above(cursor, READ, &mut entries)
                        }
                        _ => break,
                    }
                }
                let Some(&(last, _)) = entries.last() else {
                    break;
                };
                for &(seq, hash) in &entries {
                    if let Some(record) = self.store.get_at(hash, Version { source, seq }) {
                        f(incarnation, seq, record.line());
                    }
                }
                cursor = last;
            }
        }
    }

    /// A fresh incarnation number: the time now in nanoseconds since the epoch.
    pub fn fresh_incarnation() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            .max(1)
    }

    pub fn name(&self) -> &Arc<str> {
        &self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The neighbours as of now (for [`Replica::plan`]).
    pub fn hood(&self) -> Arc<Hood> {
        self.hood
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The neighbours as of now, by name.
    pub fn neighbours(&self) -> Vec<Arc<str>> {
        self.hood().names.clone()
    }

    /// Replaces the neighbours (a reloaded herd file). A neighbour must be here
    /// before any stream to it is adopted: a catch-up to it counts on every flood
    /// decision made after its start seeing it (see the module docs).
    pub fn set_neighbours(&self, names: Vec<Arc<str>>) {
        let mut hood = self
            .hood
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *hood = Arc::new(Hood::new(names, &hood));
    }

    /// Every origin this node holds a source of (a reload keeps them known, so that
    /// the records of a server removed from the herd file still travel).
    pub fn origins(&self) -> Vec<Arc<str>> {
        let v = self.versions();
        let mut all: Vec<Arc<str>> = v.iter().map(|(_, s)| s.origin.clone()).collect();
        all.sort();
        all.dedup();
        all
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn versions(&self) -> MutexGuard<'_, Versions> {
        crate::lock(&self.versions)
    }

    fn gate_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with_gate_exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        let _g = self
            .gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f()
    }

    fn wire_version(&self, v: Version) -> proto::Version {
        let versions = self.versions();
        let s = versions.get(v.source);
        proto::Version {
            origin: s.origin.to_string(),
            incarnation: s.incarnation,
            seq: v.seq,
        }
    }

    /// A peer's keep rule ([`Store::update_keeps_old`]) for `new`, of a source of
    /// incarnation `incarnation`, against `old`, held at version `at`, with ties
    /// broken by incarnation: of two records equal in the herd's order (only two
    /// incarnations of one origin make them: a server restarted without its state
    /// took the same IAMAT again), the newer incarnation's stays. Every server then
    /// ends holding the same version of it. Left to arrival order, a server could
    /// keep the older incarnation's copy while the origin holds its own: the origin
    /// retires the older incarnation (no record of it is current there), and each
    /// catch-up sends it that copy again, as a version above a floor it forgot.
    fn keeps_old(&self, new: &Record, incarnation: u64, old: &Record, at: Version) -> bool {
        match new.order(old) {
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => self.versions().get(at.source).incarnation >= incarnation,
        }
    }

    /// An IAMAT's record, whose client time is `time`: stored, with the next own
    /// version, when newer than the stored record; else the stored one is returned.
    /// `copy`: whether the caller needs the record back (to forward or show it).
    pub fn iamat(
        &self,
        record: Record,
        time: &ClientTime,
        copy: bool,
    ) -> Result<Applied<'_>, Record> {
        let gate = self.gate_shared();
        let mut version = None;
        let kept = copy.then(|| record.clone());
        self.store.offer_with(
            record,
            |new, old, _| Store::iamat_keeps_old(time)(new, old),
            |hash, old, record| {
                let mut v = self.versions();
                let new = v.next_own(hash);
                v.replaced(hash, old, new);
                if let Some(j) = &self.journal {
                    j.put(self.incarnation, new.seq, record.line());
                }
                version = Some(new);
                new
            },
        )?;
        let version = version.expect("a stored record got a version");
        self.check_cap();
        Ok(Applied {
            record: kept,
            version: proto::Version {
                origin: self.me.to_string(),
                incarnation: self.incarnation,
                seq: version.seq,
            },
            _gate: gate,
        })
    }

    /// An update from a peer: validated, then stored when it wins by label. Either
    /// way its version is now reflected here.
    pub fn offer(&self, update: &proto::Update) -> Result<Offer<'_>, OfferError> {
        let update = UpdateRef::of(update);
        match self.prepare(&update)? {
            Some(record) => self.offer_prepared(&update, record, true),
            None => Ok(Offer::Stale),
        }
    }

    /// [`Replica::offer`] of borrowed fields; `copy`: whether the caller wants the
    /// stored record back (to show it).
    pub fn offer_ref(&self, update: &UpdateRef<'_>, copy: bool) -> Result<Offer<'_>, OfferError> {
        match self.prepare(update)? {
            Some(record) => self.offer_prepared(update, record, copy),
            None => Ok(Offer::Stale),
        }
    }

    /// The first half of an offer, which touches no table: refuses an update that is
    /// malformed in itself (fields, label, version), and says None for one whose
    /// version this server already reflects (below its floor: nothing to parse or
    /// store). A message's updates all go through this before any is applied.
    pub fn prepare(&self, update: &UpdateRef<'_>) -> Result<Option<Record>, OfferError> {
        let wire = update.version.ok_or(BadUpdate::NoVersion)?;
        if wire.origin != update.origin {
            return Err(BadUpdate::VersionOrigin.into());
        }
        if wire.seq == 0 || wire.seq > crate::store::MAX_SEQ {
            return Err(BadUpdate::VersionSeq(wire.seq).into());
        }
        {
            let v = self.versions();
            if let Some(id) = v.find(wire.origin, wire.incarnation)
                && id != v.own()
                && wire.seq <= v.get(id).floor
            {
                // Reflected here already (a copy that came another way, or a catch-up
                // overtaken by live updates): floors only rise, so nothing to store.
                return Ok(None);
            }
        }
        Ok(Some(Record::from_fields(update)?))
    }

    /// The second half: stores `record` (from [`Replica::prepare`] of `update`) when it
    /// wins by label. Either way its version is now reflected here.
    pub fn offer_prepared(
        &self,
        update: &UpdateRef<'_>,
        record: Record,
        copy: bool,
    ) -> Result<Offer<'_>, OfferError> {
        let wire = update.version.ok_or(BadUpdate::NoVersion)?;
        let gate = self.gate_shared();
        let source = {
            let mut v = self.versions();
            let id = v.id(wire.origin, wire.incarnation)?;
            if id == v.own() {
                if wire.seq > v.last_own() {
                    return Err(BadUpdate::VersionSeq(wire.seq).into());
                }
                // Its own records it holds or has superseded: nothing to store.
                return Ok(Offer::Stale);
            }
            id
        };
        let version = Version {
            source,
            seq: wire.seq,
        };
        let kept = copy.then(|| record.clone());
        let offered = self.store.offer_with(
            record,
            |new, old, at| self.keeps_old(new, wire.incarnation, old, at),
            |hash, old, record| {
                let mut v = self.versions();
                v.replaced(hash, old, version);
                v.get_mut(source).seen(version.seq);
                if let Some(j) = &self.journal {
                    j.put(wire.incarnation, version.seq, record.line());
                }
                version
            },
        );
        match offered {
            Ok(_) => {
                self.check_cap();
                Ok(Offer::Applied(Applied {
                    record: kept,
                    version: proto::Version {
                        origin: wire.origin.to_owned(),
                        incarnation: wire.incarnation,
                        seq: wire.seq,
                    },
                    _gate: gate,
                }))
            }
            Err(_) => {
                self.versions().get_mut(source).seen(version.seq);
                Ok(Offer::Stale)
            }
        }
    }

    /// Whom `applied` goes to (see [`plan`]), among the neighbours of `hood`
    /// ([`Replica::hood`], read once the record is stored).
    pub fn plan<'a>(
        &'a self,
        hood: &'a Hood,
        _applied: &Applied<'_>,
        from: Option<&'a str>,
        seen: &[&'a str],
        is_up: impl Fn(&str) -> bool,
    ) -> Flood<'a> {
        plan(&self.me, &hood.names, from, seen, is_up, |n| {
            hood.is_catching_up(n)
        })
    }

    /// Whether a catch-up to neighbour `n` is running (every record stored meanwhile
    /// must go to it).
    pub fn catching_up(&self, n: &str) -> bool {
        self.hood().is_catching_up(n)
    }

    /// Whom an own record goes to when it is flooded after its store (a data dir's
    /// journal was written in between, with the gate released).
    pub fn plan_own<'a>(&'a self, hood: &'a Hood, is_up: impl Fn(&str) -> bool) -> Flood<'a> {
        plan(&self.me, &hood.names, None, &[], is_up, |_| false)
    }

    /// This node's floor vector (sources at floor 0 are left out). Retires old
    /// incarnations first.
    pub fn floors(&self) -> Vec<Floor> {
        let mut v = self.versions();
        v.retire();
        v.iter()
            .filter(|(_, s)| s.floor > 0 || !s.runs.is_empty())
            .map(|(_, s)| Floor {
                origin: s.origin.clone(),
                incarnation: s.incarnation,
                seq: s.floor,
                above: s.runs.lowest(RUNS_SENT),
            })
            .collect()
    }

    /// The last seq this node gave one of its own records.
    pub fn last_own_seq(&self) -> u64 {
        self.versions().last_own()
    }

    /// Raises floors to what a neighbour's catch-up proved.
    pub fn caught_up(&self, floors: &[Floor]) -> Result<(), TooManySources> {
        let mut v = self.versions();
        for f in floors {
            let id = v.id(&f.origin, f.incarnation)?;
            if id != v.own() {
                v.get_mut(id).raise(f.seq);
            }
        }
        if let Some(j) = &self.journal {
            // Under the versions lock: after every record the catch-up sent.
            j.floors(
                floors
                    .iter()
                    .filter(|f| !(*f.origin == *self.me && f.incarnation == self.incarnation))
                    .map(|f| (&*f.origin, f.incarnation, f.seq))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
        }
        Ok(())
    }

    /// Starts a catch-up to `peer`, whose floors are `theirs`. From now until the
    /// catch-up ends, every record stored here goes to `peer` too.
    pub fn start_catch_up(&self, peer: &str, theirs: &[Floor]) -> CatchUp {
        // A neighbour removed meanwhile gets an uncounted catch-up: its link is closing.
        let running = self.hood().counter(peer).unwrap_or_default();
        self.with_gate_exclusive(|| {
            running.fetch_add(1, Ordering::AcqRel);
            let v = self.versions();
            let full = theirs.iter().any(|f| {
                *f.origin == *self.me
                    && f.incarnation == self.incarnation
                    && (f.seq > v.last_own() || f.above.iter().any(|r| r.1 > v.last_own()))
            });
            let their_floor = |s: &versions::Source| {
                if full {
                    return (0, Vec::new());
                }
                theirs
                    .iter()
                    .find(|f| f.origin == s.origin && f.incarnation == s.incarnation)
                    .map_or((0, Vec::new()), |f| (f.seq, f.above.clone()))
            };
            let mut todo = Vec::new();
            let mut end = Vec::new();
            for (id, s) in v.iter() {
                let (from, above) = their_floor(s);
                if s.index.live() > 0 {
                    todo.push((id, from, above));
                }
                if s.floor > from {
                    end.push(Floor {
                        origin: s.origin.clone(),
                        incarnation: s.incarnation,
                        seq: s.floor,
                        above: Vec::new(),
                    });
                }
            }
            CatchUp {
                todo,
                end,
                full,
                records: 0,
                bytes: 0,
                running: running.clone(),
            }
        })
    }

    /// The next records of a catch-up, about `max_bytes` of them (at least one), as
    /// updates from this node; empty when every source has been read.
    pub fn catch_up_batch(&self, c: &mut CatchUp, max_bytes: usize) -> Vec<proto::Update> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut entries = Vec::with_capacity(READ);
        while let Some(&(source, cursor, _)) = c.todo.first() {
            entries.clear();
            let key = {
                let v = self.versions();
                match v.iter().find(|(id, _)| *id == source) {
                    Some((_, s)) => {
                        s.index.above(cursor, READ, &mut entries);
                        Some(proto::Version {
                            origin: s.origin.to_string(),
                            incarnation: s.incarnation,
                            seq: 0,
                        })
                    }
                    // Retired meanwhile: no record of it is left.
                    None => None,
                }
            };
            let Some(key) = key.filter(|_| !entries.is_empty()) else {
                c.todo.remove(0);
                continue;
            };
            for &(seq, hash) in &entries {
                c.todo[0].1 = seq;
                // The neighbour has it already (a run above its floor).
                if c.todo[0].2.iter().any(|&(a, b)| a <= seq && seq <= b) {
                    continue;
                }
                // Gone: replaced after the catch-up started, so sent live.
                let Some(record) = self.store.get_at(hash, Version { source, seq }) else {
                    continue;
                };
                let update = record.to_update(
                    vec![self.me.to_string()],
                    Some(proto::Version { seq, ..key.clone() }),
                );
                bytes += prost::Message::encoded_len(&update);
                out.push(update);
                if bytes >= max_bytes {
                    c.records += out.len() as u64;
                    c.bytes += bytes as u64;
                    return out;
                }
            }
        }
        c.records += out.len() as u64;
        c.bytes += bytes as u64;
        out
    }

    /// Ends a catch-up. `clean(marker)` is called with the gate held exclusively, so
    /// that every forward queued meanwhile is ahead: it returns whether no update
    /// for the neighbour was dropped since the start, and if so queues the marker.
    pub fn end_catch_up(&self, mut c: CatchUp, finish: impl FnOnce(CaughtUp) -> bool) -> bool {
        self.with_gate_exclusive(|| {
            let clean = finish(std::mem::take(&mut c.end));
            // Only now may stores stop going to the neighbour regardless of lists.
            drop(c);
            clean
        })
    }

    /// The neighbour's floor as a catch-up starting now would use it (tests).
    #[cfg(test)]
    fn floor_of(&self, origin: &str, incarnation: u64) -> u64 {
        let v = self.versions();
        v.find(origin, incarnation).map_or(0, |id| v.get(id).floor)
    }

    /// Every record held, with its version as on the wire (tests, Inspect).
    pub fn for_each(&self, mut f: impl FnMut(&Record, proto::Version)) {
        let mut all = Vec::new();
        self.store.for_each(|r, v| all.push((r.clone(), v)));
        for (r, v) in all {
            f(&r, self.wire_version(v));
        }
    }

    /// A client's record and its version.
    pub fn get(&self, client_id: &[u8]) -> Option<(Record, proto::Version)> {
        let (r, v) = self.store.get_versioned(client_id)?;
        Some((r, self.wire_version(v)))
    }

    /// How many records are held, and an order-free digest of their lines (a sum of
    /// a fixed hash of each): equal on two nodes that hold the same records.
    pub fn digest(&self) -> (u64, u64) {
        use std::hash::BuildHasher as _;
        let hasher = foldhash::fast::FixedState::with_seed(0x6865_7264);
        let (mut n, mut sum) = (0u64, 0u64);
        self.store.for_each(|r, _| {
            n += 1;
            sum = sum.wrapping_add(hasher.hash_one(r.line()));
        });
        (n, sum)
    }

    /// Versions held and the bytes their indexes take (memory accounting).
    pub fn index_bytes(&self) -> usize {
        self.versions()
            .iter()
            .map(|(_, s)| s.index.capacity_bytes())
            .sum()
    }
}

/// Why an update from a peer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error(transparent)]
    Bad(#[from] BadUpdate),
    #[error(transparent)]
    TooManySources(#[from] TooManySources),
}

/// One link's catch-ups, on the sending side: which floors the neighbour last sent,
/// whether a catch-up is owed (new floors, or updates dropped for it), and the one
/// running. The same code drives the real links (`peer::link`) and the simulation.
#[derive(Debug, Default)]
pub struct LinkSync {
    theirs: Option<Vec<Floor>>,
    owed: bool,
    running: Option<(CatchUp, u64)>,
    /// Drops counted when this link last looked.
    drops_seen: u64,
}

/// What a link's sending side does next for its catch-ups.
#[derive(Debug)]
pub enum SyncStep {
    /// Nothing to do until new floors come or updates are dropped.
    Idle,
    /// A catch-up started (`full`: from seq 0 of every source).
    Started { full: bool },
    /// Records of the running catch-up, to send now.
    Records(Vec<proto::Update>),
    /// The catch-up ended: its marker was queued (`clean`), or, updates having been
    /// dropped meanwhile, it was not and another catch-up is owed.
    Ended {
        clean: bool,
        records: u64,
        bytes: u64,
    },
}

impl LinkSync {
    /// The neighbour sent its floors: a catch-up from them is owed.
    pub fn floors(&mut self, theirs: Vec<Floor>) {
        self.theirs = Some(theirs);
        self.owed = true;
    }

    /// Whether [`LinkSync::step`] has work now (given the drops so far).
    pub fn busy(&self, drops: u64) -> bool {
        self.running.is_some() || (self.theirs.is_some() && (self.owed || drops != self.drops_seen))
    }

    /// The next piece of catch-up work. `drops` reads how many updates for this
    /// neighbour were dropped so far (read under the gate at the end);
    /// `queue_marker` queues the end marker behind every forward queued before it.
    pub fn step(
        &mut self,
        replica: &Replica,
        peer: &str,
        max_bytes: usize,
        drops: impl Fn() -> u64,
        queue_marker: impl FnOnce(CaughtUp),
    ) -> SyncStep {
        let now = drops();
        if now != self.drops_seen {
            // Dropped updates: repaired from the last floors heard, never the whole table.
            self.drops_seen = now;
            self.owed = true;
        }
        if let Some((c, _)) = &mut self.running {
            let batch = replica.catch_up_batch(c, max_bytes);
            if !batch.is_empty() {
                return SyncStep::Records(batch);
            }
            let (c, at_start) = self.running.take().expect("running");
            let (records, bytes) = (c.records, c.bytes);
            let clean = replica.end_catch_up(c, |marker| {
                let clean = drops() == at_start;
                if clean {
                    queue_marker(marker);
                }
                clean
            });
            if !clean {
                self.owed = true;
            }
            return SyncStep::Ended {
                clean,
                records,
                bytes,
            };
        }
        match &self.theirs {
            Some(theirs) if self.owed => {
                self.owed = false;
                // Read before the start: a drop in between only aborts this one.
                let at_start = drops();
                self.drops_seen = at_start;
                let c = replica.start_catch_up(peer, theirs);
                let full = c.full;
                self.running = Some((c, at_start));
                SyncStep::Started { full }
            }
            _ => SyncStep::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|s| Arc::from(*s)).collect()
    }

    fn no(_: &str) -> bool {
        false
    }

    #[test]
    fn own_iamat_goes_to_every_live_neighbour() {
        let n = names(&["Hands", "Holiday", "Wilkes"]);
        let p = plan("Goloman", &n, None, &[], |_| true, no);
        assert_eq!(p.targets, ["Hands", "Holiday", "Wilkes"]);
        assert_eq!(p.seen, ["Goloman", "Hands", "Holiday", "Wilkes"]);
    }

    #[test]
    fn never_back_to_the_sender_nor_to_those_that_have_it() {
        let n = names(&["Goloman", "Welsh", "Wilkes"]);
        let seen = ["Goloman", "Wilkes"];
        let p = plan("Holiday", &n, Some("Goloman"), &seen, |_| true, no);
        assert_eq!(p.targets, ["Welsh"]);
        assert_eq!(p.seen, ["Goloman", "Wilkes", "Holiday", "Welsh"]);
        // The sender is never a target even when a buggy peer leaves itself out of the list.
        let p = plan("Holiday", &n, Some("Welsh"), &[], |_| true, no);
        assert_eq!(p.targets, ["Goloman", "Wilkes"]);
    }

    #[test]
    fn down_neighbours_stay_off_the_list() {
        let n = names(&["Hands", "Holiday", "Wilkes"]);
        let p = plan("Goloman", &n, None, &[], |name| name != "Wilkes", no);
        assert_eq!(p.targets, ["Hands", "Holiday"]);
        assert_eq!(p.seen, ["Goloman", "Hands", "Holiday"]);
    }

    #[test]
    fn nothing_left_to_tell() {
        let n = names(&["Holiday"]);
        let p = plan("Welsh", &n, Some("Holiday"), &[], |_| true, no);
        assert!(p.targets.is_empty());
    }

    #[test]
    fn a_neighbour_being_caught_up_gets_everything_but_its_own() {
        let n = names(&["Goloman", "Welsh", "Wilkes"]);
        let seen = ["Goloman", "Wilkes", "Welsh"];
        let p = plan(
            "Holiday",
            &n,
            Some("Goloman"),
            &seen,
            |_| true,
            |n| n != "Welsh",
        );
        // Wilkes is listed but being caught up; Goloman sent it.
        assert_eq!(p.targets, ["Wilkes"]);
        assert_eq!(p.seen, ["Goloman", "Wilkes", "Welsh", "Holiday"]);
    }
}
