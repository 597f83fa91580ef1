//! Client records: one per client, the newest by client time, and the total order
//! that makes every server converge on the same record. Each stored record carries
//! its [`Version`] (which server made it, when); `crate::replica` keeps the index
//! from versions to records and decides what a version is.

use std::{
    cmp::Ordering,
    hash::BuildHasher as _,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering},
    },
};

use bytes::Bytes;

use crate::{
    peer::wire::{LabelRef, UpdateRef, VersionRef},
    proto,
    wire::{self, ClientTime},
};

/// A client's record: the AT line made by the server that received its IAMAT, and
/// nothing else (a million records must fit in little memory): every field is
/// read back from the line when needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `AT <origin> <diff> <client_id> <location> <time>`, without a newline. Every
    /// field is free of whitespace, so single spaces delimit them.
    line: Box<[u8]>,
}

/// Why an update from a peer cannot be a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadUpdate {
    #[error("client fields do not form a valid IAMAT: {0}")]
    Fields(wire::ParseError),
    #[error("origin {0:?} is not a valid server name")]
    Origin(String),
    #[error("time difference {0:?} is not of the form [+-]D+.DDDDDDDDD")]
    TimeDiff(String),
    #[error("label is missing")]
    NoLabel,
    #[error("label does not match the update's time and origin")]
    LabelMismatch,
    #[error("version is missing")]
    NoVersion,
    #[error("version names another origin than the update")]
    VersionOrigin,
    #[error("version seq {0} is out of range")]
    VersionSeq(u64),
    #[error("eviction watermark {0:?} is not a valid client time and client ID")]
    Watermark(String),
    #[error(transparent)]
    Malformed(#[from] crate::peer::wire::Malformed),
}

impl Record {
    /// The record of a parsed IAMAT, as server `origin` replied to it with `diff`.
    pub fn from_iamat(origin: &str, diff: &[u8], cmd: &wire::IAmAt<'_>) -> Record {
        // Exactly the line's length ("AT" and five spaces): the boxed slice below
        // then keeps this allocation instead of shrinking it into a new one.
        let mut line = Vec::with_capacity(
            7 + origin.len()
                + diff.len()
                + cmd.client_id.len()
                + cmd.location.len()
                + cmd.time.len(),
        );
        wire::write_at_line(
            origin,
            diff,
            cmd.client_id,
            cmd.location,
            cmd.time,
            &mut line,
        );
        Record {
            line: line.into_boxed_slice(),
        }
    }

    /// A record read back from a data dir (its AT line), validated as strictly as
    /// an update from a peer: a checksum that matched is still not trusted blindly.
    pub fn from_stored(line: &[u8]) -> Result<Record, BadUpdate> {
        let mut f = line.splitn(6, |&b| b == b' ');
        let (Some(b"AT"), Some(origin), Some(diff), Some(id), Some(location), Some(time)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(BadUpdate::Fields(wire::ParseError::UnknownCommand));
        };
        // No client ID bound here: the record was taken when it was stored, and a
        // lowered `max_client_id_bytes` must not drop what the data dir holds.
        let cmd = wire::iamat_of_fields(id, location, time).map_err(BadUpdate::Fields)?;
        let origin = std::str::from_utf8(origin).unwrap_or("");
        if !crate::config::valid_name(origin) {
            return Err(BadUpdate::Origin(origin.to_owned()));
        }
        if !valid_diff(diff) {
            return Err(BadUpdate::TimeDiff(
                String::from_utf8_lossy(diff).into_owned(),
            ));
        }
        Ok(Record::from_iamat(origin, diff, &cmd))
    }

    /// The origin server's name (the second field).
    pub fn origin(&self) -> &[u8] {
        self.field(1)
    }

    /// Validates an update from a peer as strictly as an IAMAT from a client.
    pub fn from_update(u: &proto::Update) -> Result<Record, BadUpdate> {
        Record::from_fields(&UpdateRef::of(u))
    }

    /// [`Record::from_update`] of an update's borrowed fields.
    pub fn from_fields(u: &UpdateRef<'_>) -> Result<Record, BadUpdate> {
        let cmd = wire::iamat_of_fields(u.client_id, u.location, u.client_time)
            .map_err(BadUpdate::Fields)?;
        if !crate::config::valid_name(u.origin) {
            return Err(BadUpdate::Origin(u.origin.to_owned()));
        }
        if !valid_diff(u.time_diff) {
            return Err(BadUpdate::TimeDiff(
                String::from_utf8_lossy(u.time_diff).into_owned(),
            ));
        }
        let label = u.label.as_ref().ok_or(BadUpdate::NoLabel)?;
        if label.seconds != cmd.client_time.seconds_digits()
            || label.nanos != cmd.client_time.nanos()
            || label.origin != u.origin
        {
            return Err(BadUpdate::LabelMismatch);
        }
        Ok(Record::from_iamat(u.origin, u.time_diff, &cmd))
    }

    /// The update that carries this record to neighbours, encoded once for all of them.
    pub fn encode_update(&self, seen: Vec<&str>, version: Option<VersionRef<'_>>) -> Bytes {
        let [_, origin, diff, id, location, time] = self.field_ranges();
        let client_time = self.time();
        // A stored record's origin is a valid server name (ASCII).
        let origin = std::str::from_utf8(&self.line[origin]).unwrap_or_default();
        crate::peer::wire::encode_update(&UpdateRef {
            client_id: &self.line[id],
            location: &self.line[location],
            client_time: &self.line[time],
            origin,
            time_diff: &self.line[diff],
            label: Some(LabelRef {
                seconds: client_time.seconds_digits(),
                nanos: client_time.nanos(),
                origin,
            }),
            seen,
            version,
        })
    }

    /// The update that carries this record to neighbours, with its version.
    pub fn to_update(&self, seen: Vec<String>, version: Option<proto::Version>) -> proto::Update {
        let [_, origin, diff, id, location, time] = self.field_ranges();
        let origin = String::from_utf8_lossy(&self.line[origin]).into_owned();
        let client_time = self.time();
        // One copy of the line; the fields share it.
        let line = Bytes::copy_from_slice(&self.line);
        proto::Update {
            client_id: line.slice(id),
            location: line.slice(location),
            client_time: line.slice(time),
            time_diff: line.slice(diff),
            label: Some(proto::Label {
                seconds: client_time.seconds_digits().to_owned(),
                nanos: client_time.nanos(),
                origin: origin.clone(),
            }),
            origin,
            seen,
            version,
        }
    }

    /// The AT line, without a newline.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// The fourth field (`AT origin diff ID ...`), found without splitting the rest:
    /// every store lookup and comparison asks for it.
    pub fn client_id(&self) -> &[u8] {
        let mut spaces = self
            .line
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| (b == b' ').then_some(i));
        match (spaces.nth(2), spaces.next()) {
            (Some(start), Some(end)) => &self.line[start + 1..end],
            (Some(start), None) => &self.line[start + 1..],
            _ => &[],
        }
    }

    /// The client's time, read back from the line (it was valid when stored).
    pub fn time(&self) -> ClientTime {
        ClientTime::parse(self.field(5)).expect("a stored record's time is valid")
    }

    /// The client's (latitude, longitude), read back from the line.
    pub fn location(&self) -> (f64, f64) {
        wire::parse_location(self.field(4)).expect("a stored record's location is valid")
    }

    fn field(&self, i: usize) -> &[u8] {
        &self.line[self.field_ranges()[i].clone()]
    }

    fn field_ranges(&self) -> [std::ops::Range<usize>; 6] {
        let mut out: [std::ops::Range<usize>; 6] = Default::default();
        let mut start = 0;
        let mut i = 0;
        for (pos, &b) in self.line.iter().enumerate() {
            if b == b' ' && i < 5 {
                out[i] = start..pos;
                start = pos + 1;
                i += 1;
            }
        }
        out[i] = start..self.line.len();
        out
    }

    /// The herd's total order on records of one client: client time, then origin
    /// server, then the remaining bytes (only a restarted origin can make two
    /// different records with equal time and origin).
    pub fn order(&self, other: &Record) -> Ordering {
        // A copy of the same record (it came another way): no field to read.
        if self.line == other.line {
            return Ordering::Equal;
        }
        self.time()
            .cmp(&other.time())
            .then_with(|| self.field(1).cmp(other.field(1)))
            .then_with(|| self.field(2).cmp(other.field(2)))
            .then_with(|| self.field(4).cmp(other.field(4)))
    }
}

/// `[+-]D+.DDDDDDDDD`, the form of every time difference a server replies with.
fn valid_diff(d: &[u8]) -> bool {
    let Some((&sign, rest)) = d.split_first() else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    (sign == b'+' || sign == b'-')
        && dot > 0
        && rest[..dot].iter().all(u8::is_ascii_digit)
        && rest.len() - dot - 1 == 9
        && rest[dot + 1..].iter().all(u8::is_ascii_digit)
}

/// The bytes a record is charged against `backbone.max_record_bytes`: its AT line,
/// and this much for its slot, its version and its index entry.
pub const RECORD_OVERHEAD: u64 = 64;

/// What a record counts against the cap on the bytes of records held.
pub fn charge(r: &Record) -> u64 {
    r.line().len() as u64 + RECORD_OVERHEAD
}

/// The eviction rule's order on the records of different clients: client time,
/// then client ID (bytes). A herd's eviction watermark is such a key: every record
/// at or below it is evicted, on every server (see `crate::replica`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EvictKey {
    pub time: ClientTime,
    pub client_id: Box<[u8]>,
}

impl EvictKey {
    pub fn of(r: &Record) -> EvictKey {
        EvictKey {
            time: r.time(),
            client_id: r.client_id().into(),
        }
    }

    /// Whether `r` is at or below this key (evicted).
    pub fn covers(&self, r: &Record) -> bool {
        match r.time().cmp(&self.time) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => r.client_id() <= &self.client_id[..],
        }
    }

    /// `<seconds>.<nine digits> <client ID>`, as a data dir keeps it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.time.to_string().into_bytes();
        out.push(b' ');
        out.extend_from_slice(&self.client_id);
        out
    }

    /// [`EvictKey::encode`]'s bytes back, checked: a valid time and a valid client ID.
    pub fn decode(b: &[u8]) -> Option<EvictKey> {
        let space = b.iter().position(|&c| c == b' ')?;
        EvictKey::checked(&b[..space], &b[space + 1..])
    }

    /// A key from a time field and a client ID, each as strict as in an IAMAT.
    pub fn checked(time: &[u8], client_id: &[u8]) -> Option<EvictKey> {
        let mut iamat = Vec::with_capacity(16 + time.len() + client_id.len());
        iamat.extend_from_slice(b"IAMAT ");
        iamat.extend_from_slice(client_id);
        iamat.extend_from_slice(b" +0+0 ");
        iamat.extend_from_slice(time);
        match wire::parse(&iamat, usize::MAX) {
            Ok(wire::Command::IAmAt(cmd)) => Some(EvictKey {
                time: cmd.client_time,
                client_id: cmd.client_id.into(),
            }),
            _ => None,
        }
    }
}

/// A shard: records found by the hash of their client ID, computed once per call.
type Shard = hashbrown::HashTable<Slot>;

/// A record and the hash of its client ID, kept so that growing a table never reads
/// the records again (each a cache miss) and a probe reads a record only when the
/// whole hash matches (eight bytes a record); and the record's version, packed into
/// eight more.
#[derive(Debug)]
struct Slot {
    hash: u64,
    record: Record,
    version: Packed,
}

/// A version in one word: the source id in the top 16 bits, the seq in the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed(u64);

/// Seqs stay below this (2^48: nine years of a million IAMATs a second at one
/// server; a server that reached it would have to start a new incarnation).
pub const MAX_SEQ: u64 = (1 << 48) - 1;

/// Source ids stay below this, so that a version packs into one word.
pub const MAX_SOURCE_IDS: usize = 1 << 16;

impl Packed {
    fn new(v: Version) -> Packed {
        debug_assert!(v.seq <= MAX_SEQ && (v.source.0 as usize) < MAX_SOURCE_IDS);
        Packed((u64::from(v.source.0) << 48) | (v.seq & MAX_SEQ))
    }

    fn get(self) -> Version {
        Version {
            source: SourceId((self.0 >> 48) as u32),
            seq: self.0 & MAX_SEQ,
        }
    }
}

impl Slot {
    fn is(&self, hash: u64, client_id: &[u8]) -> bool {
        self.hash == hash && self.record.client_id() == client_id
    }
}

/// Which of a node's sources (an origin server and one incarnation of it, numbered
/// by `crate::replica`) made a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(pub u32);

/// A record's version as this node numbers it: its source and the sequence number
/// the origin gave it. Never reused for another record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub source: SourceId,
    pub seq: u64,
}

/// What an offer did: the record was stored (replacing the version `old`, if the
/// client had one), or the stored record stays, and is returned (or, the record
/// being at or below the eviction watermark, the record offered is).
pub type Offered = Result<Option<Version>, Record>;

/// Every client's record, sharded so connections rarely wait on one another.
#[derive(Debug)]
pub struct Store {
    /// Seeded per store. One hash of the client ID picks the shard (from bits the
    /// tables never use) and the slot in it.
    hasher: foldhash::fast::RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// The bytes of the records held, as [`charge`] counts them.
    bytes: AtomicU64,
    /// The eviction watermark: no record at or below it is stored (it only rises).
    evicted: RwLock<Option<EvictKey>>,
    /// Whether `evicted` is set (read without its lock by every offer).
    any_evicted: AtomicBool,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

const SHARDS: usize = 16;

impl Store {
    pub fn new() -> Store {
        Store {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            bytes: AtomicU64::new(0),
            evicted: RwLock::new(None),
            any_evicted: AtomicBool::new(false),
        }
    }

    /// The bytes of the records held (see [`charge`]).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(AtomicOrdering::Acquire)
    }

    /// The eviction watermark, if any record was ever evicted.
    pub fn evicted(&self) -> Option<EvictKey> {
        if !self.any_evicted.load(AtomicOrdering::Acquire) {
            return None;
        }
        self.evicted
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether `record` is at or below the watermark (read under its shard's lock,
    /// so that a sweep that raised it first finds every record stored before).
    fn is_evicted(&self, record: &Record) -> bool {
        self.any_evicted.load(AtomicOrdering::Acquire)
            && self
                .evicted
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .is_some_and(|w| w.covers(record))
    }

    /// Raises the watermark to `key`; false if it was there or above already.
    /// Records at or below it stay until [`Store::sweep`].
    pub fn raise_evicted(&self, key: EvictKey) -> bool {
        let mut w = self
            .evicted
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.as_ref().is_some_and(|w| *w >= key) {
            return false;
        }
        *w = Some(key);
        self.any_evicted.store(true, AtomicOrdering::Release);
        true
    }

    /// Removes every record at or below the watermark, shard by shard. `removed` is
    /// called under each shard's lock with the (hash, version) of what went from
    /// it. Returns the records removed.
    pub fn sweep(&self, mut removed: impl FnMut(&[(u64, Version)])) -> u64 {
        let Some(w) = self.evicted() else {
            return 0;
        };
        let mut n = 0;
        let mut gone = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = crate::lock(shard);
            let mut bytes = 0;
            gone.clear();
            shard.retain(|s| {
                if w.covers(&s.record) {
                    bytes += charge(&s.record);
                    gone.push((s.hash, s.version.get()));
                    false
                } else {
                    true
                }
            });
            if !gone.is_empty() {
                self.bytes.fetch_sub(bytes, AtomicOrdering::AcqRel);
                removed(&gone);
                n += gone.len() as u64;
            }
        }
        n
    }

    /// The key at which the lowest records (by [`EvictKey`]) add up to `excess`
    /// bytes: two reads of the table, the second only of the records whose client
    /// time is the one the first ended at. None when the table is empty.
    pub fn eviction_key(&self, excess: u64) -> Option<EvictKey> {
        let mut times: Vec<(ClientTime, u64)> = Vec::with_capacity(self.len());
        self.for_each(|r, _| times.push((r.time(), charge(r))));
        times.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut below = 0u64;
        let mut at = None;
        for (i, (time, bytes)) in times.iter().enumerate() {
            if below + bytes >= excess || i + 1 == times.len() {
                at = Some(time.clone());
                break;
            }
            below += bytes;
        }
        let at = at?;
        // `below` now counts every record whose time is below `at`, and some at it.
        let below: u64 = times.iter().take_while(|t| t.0 < at).map(|t| t.1).sum();
        drop(times);
        let mut same: Vec<(Box<[u8]>, u64)> = Vec::new();
        self.for_each(|r, _| {
            if r.time() == at {
                same.push((r.client_id().into(), charge(r)));
            }
        });
        same.sort_unstable();
        let mut acc = below;
        let mut last = None;
        for (id, bytes) in same {
            acc += bytes;
            last = Some(id);
            if acc >= excess {
                break;
            }
        }
        Some(EvictKey {
            time: at,
            client_id: last?,
        })
    }

    fn hash(&self, client_id: &[u8]) -> u64 {
        self.hasher.hash_one(client_id)
    }

    /// The shard of a client ID's hash. A table indexes by the hash's low bits and
    /// tags by its top seven; bits 32 to 35 pick the shard, so they stay independent.
    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        crate::lock(&self.shards[(hash >> 32) as usize % SHARDS])
    }

    /// Stores `record` unless `keep_old(&record, stored)` says the stored one stays,
    /// in which case that is returned. When it is stored, `version` is called first,
    /// under the shard's lock, with the hash of the client ID and the replaced
    /// version: what it returns is the record's version, and whatever index it keeps
    /// changes in the same critical section as the table.
    pub fn offer(
        &self,
        record: Record,
        keep_old: impl FnOnce(&Record, &Record) -> bool,
        version: impl FnOnce(u64, Option<Version>) -> Version,
    ) -> Offered {
        self.offer_with(
            record,
            |new, old, _| keep_old(new, old),
            |hash, old, _| version(hash, old),
        )
    }

    /// As [`Store::offer`], and `keep_old` also sees the stored record's version (to
    /// break a tie by it), `version` the record being stored (to journal it in the
    /// same critical section).
    pub fn offer_with(
        &self,
        record: Record,
        keep_old: impl FnOnce(&Record, &Record, Version) -> bool,
        version: impl FnOnce(u64, Option<Version>, &Record) -> Version,
    ) -> Offered {
        let id = record.client_id();
        let hash = self.hash(id);
        let mut shard = self.shard(hash);
        if self.is_evicted(&record) {
            return Err(record);
        }
        let entry = shard.entry(hash, |s| s.is(hash, id), |s| s.hash);
        match entry {
            hashbrown::hash_table::Entry::Occupied(e)
                if keep_old(&record, &e.get().record, e.get().version.get()) =>
            {
                Err(e.get().record.clone())
            }
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                let old = slot.version.get();
                slot.version = Packed::new(version(hash, Some(old), &record));
                let (new, was) = (charge(&record), charge(&slot.record));
                slot.record = record;
                if new >= was {
                    self.bytes.fetch_add(new - was, AtomicOrdering::AcqRel);
                } else {
                    self.bytes.fetch_sub(was - new, AtomicOrdering::AcqRel);
                }
                Ok(Some(old))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                let version = Packed::new(version(hash, None, &record));
                self.bytes
                    .fetch_add(charge(&record), AtomicOrdering::AcqRel);
                e.insert(Slot {
                    hash,
                    record,
                    version,
                });
                Ok(None)
            }
        }
    }

    /// An IAMAT's keep rule: the stored record stays unless `time` (the new
    /// record's client time) is newer.
    pub fn iamat_keeps_old(time: &ClientTime) -> impl FnOnce(&Record, &Record) -> bool + '_ {
        move |_, old| *time <= old.time()
    }

    /// A peer's keep rule: the stored record stays unless the new one is above it
    /// in the herd's order.
    pub fn update_keeps_old(new: &Record, old: &Record) -> bool {
        new.order(old) != Ordering::Greater
    }

    pub fn get(&self, client_id: &[u8]) -> Option<Record> {
        let hash = self.hash(client_id);
        self.shard(hash)
            .find(hash, |s| s.is(hash, client_id))
            .map(|s| s.record.clone())
    }

    /// A client's record and its version.
    pub fn get_versioned(&self, client_id: &[u8]) -> Option<(Record, Version)> {
        let hash = self.hash(client_id);
        self.shard(hash)
            .find(hash, |s| s.is(hash, client_id))
            .map(|s| (s.record.clone(), s.version.get()))
    }

    /// The record whose client ID hashes to `hash`, if it is still at `version`
    /// (an index entry is checked against the table, never trusted alone).
    pub fn get_at(&self, hash: u64, version: Version) -> Option<Record> {
        self.shard(hash)
            .find(hash, |s| {
                s.hash == hash && s.version == Packed::new(version)
            })
            .map(|s| s.record.clone())
    }

    /// Every record and its version, shard by shard (tests and checks).
    pub fn for_each(&self, mut f: impl FnMut(&Record, Version)) {
        for shard in self.shards.iter() {
            for s in crate::lock(shard).iter() {
                f(&s.record, s.version.get());
            }
        }
    }

    /// Makes room for about `records` more records (a restore that knows roughly
    /// how many are coming grows no table on the way).
    pub fn reserve(&self, records: usize) {
        for shard in self.shards.iter() {
            crate::lock(shard).reserve(records / SHARDS + 1, |s| s.hash);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| crate::lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(origin: &str, id: &str, loc: &str, time: &str) -> Record {
        let line = format!("IAMAT {id} {loc} {time}");
        let wire::Command::IAmAt(c) = wire::parse(line.as_bytes(), usize::MAX).unwrap() else {
            panic!("not an IAMAT")
        };
        Record::from_iamat(origin, b"+0.100000000", &c)
    }

    #[test]
    fn record_round_trips_through_an_update() {
        let r = rec(
            "Goloman",
            "kiwi",
            "+34.068930-118.445127",
            "1520023934.918963997",
        );
        assert_eq!(
            r.line(),
            b"AT Goloman +0.100000000 kiwi +34.068930-118.445127 1520023934.918963997"
        );
        let u = r.to_update(vec!["Goloman".into()], None);
        assert_eq!(&u.client_id[..], b"kiwi");
        assert_eq!(u.label.as_ref().unwrap().seconds, "1520023934");
        assert_eq!(u.label.as_ref().unwrap().nanos, 918963997);
        let back = Record::from_update(&u).unwrap();
        assert_eq!(back.line(), r.line());
        assert_eq!(back.order(&r), Ordering::Equal);
    }

    #[test]
    fn bad_updates_are_refused() {
        let good = rec("Hands", "k", "+1+1", "5.5").to_update(vec![], None);
        let mut u = good.clone();
        u.client_id = Bytes::from_static(b"a b");
        assert!(matches!(Record::from_update(&u), Err(BadUpdate::Fields(_))));
        let mut u = good.clone();
        u.location = Bytes::from_static(b"+91+0");
        assert!(matches!(Record::from_update(&u), Err(BadUpdate::Fields(_))));
        let mut u = good.clone();
        u.origin = "Ha nds".into();
        assert!(matches!(Record::from_update(&u), Err(BadUpdate::Origin(_))));
        let mut u = good.clone();
        u.time_diff = Bytes::from_static(b"+0.1");
        assert!(matches!(
            Record::from_update(&u),
            Err(BadUpdate::TimeDiff(_))
        ));
        let mut u = good.clone();
        u.label.as_mut().unwrap().nanos = 1;
        assert_eq!(
            Record::from_update(&u).unwrap_err(),
            BadUpdate::LabelMismatch
        );
        let mut u = good.clone();
        u.label = None;
        assert_eq!(Record::from_update(&u).unwrap_err(), BadUpdate::NoLabel);
        assert!(Record::from_update(&good).is_ok());
    }

    const V: Version = Version {
        source: SourceId(0),
        seq: 1,
    };

    fn offer(s: &Store, r: Record) -> Result<(), Record> {
        let time = r.time();
        s.offer(r, Store::iamat_keeps_old(&time), |_, _| V)
            .map(drop)
    }

    #[test]
    fn iamat_keeps_only_newer_client_times() {
        let s = Store::new();
        assert!(offer(&s, rec("A", "c", "+1+1", "10")).is_ok());
        let kept = offer(&s, rec("A", "c", "+2+2", "10.0")).unwrap_err();
        assert!(kept.line().ends_with(b"+1+1 10"));
        let kept = offer(&s, rec("B", "c", "+2+2", "9.999999999")).unwrap_err();
        assert!(kept.line().ends_with(b"+1+1 10"));
        assert!(offer(&s, rec("A", "c", "+3+3", "10.000000001")).is_ok());
        assert!(s.get(b"c").unwrap().line().ends_with(b"+3+3 10.000000001"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn updates_converge_whatever_the_order() {
        // Two IAMATs of one client with equal times at two servers, and an older one.
        let recs = [
            rec("Goloman", "c", "+1+1", "7.5"),
            rec("Hands", "c", "+2+2", "7.500000000"),
            rec("Wilkes", "c", "+3+3", "7.4"),
        ];
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let s = Store::new();
            for i in order {
                let _ = s.offer(recs[i].clone(), Store::update_keeps_old, |_, _| V);
            }
            assert!(
                s.get(b"c").unwrap().line().starts_with(b"AT Hands "),
                "order {order:?}"
            );
        }
    }

    #[test]
    fn versions_are_kept_and_checked() {
        let s = Store::new();
        let v = |seq| Version {
            source: SourceId(3),
            seq,
        };
        let r = rec("A", "c", "+1+1", "1");
        let mut seen_hash = 0;
        let out = s.offer(r.clone(), Store::update_keeps_old, |h, old| {
            seen_hash = h;
            assert_eq!(old, None);
            v(7)
        });
        assert_eq!(out, Ok(None));
        assert_eq!(s.get_versioned(b"c").unwrap().1, v(7));
        assert!(s.get_at(seen_hash, v(7)).is_some());
        let newer = rec("B", "c", "+1+1", "2");
        let out = s.offer(newer, Store::update_keeps_old, |_, old| {
            assert_eq!(old, Some(v(7)));
            v(9)
        });
        assert_eq!(out, Ok(Some(v(7))));
        assert!(
            s.get_at(seen_hash, v(7)).is_none(),
            "the old version is gone"
        );
        assert!(s.get_at(seen_hash, v(9)).is_some());
        // A record that loses keeps the table and the version as they were.
        let out = s.offer(r, Store::update_keeps_old, |_, _| unreachable!());
        assert!(out.unwrap_err().line().starts_with(b"AT B "));
        let mut n = 0;
        s.for_each(|_, ver| {
            n += 1;
            assert_eq!(ver, v(9));
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn records_stay_found_as_the_tables_grow() {
        // Growing a table moves every slot by its kept hash: each record must still
        // be found, replaced in place, and counted once.
        let s = Store::new();
        let n = 20_000;
        for i in 0..n {
            offer(&s, rec("A", &format!("client-{i}"), "+1+1", "1")).unwrap();
        }
        assert_eq!(s.len(), n);
        for i in (0..n).step_by(7) {
            offer(&s, rec("B", &format!("client-{i}"), "+2+2", "2")).unwrap();
        }
        for i in 0..n {
            let r = s
                .get(format!("client-{i}").as_bytes())
                .expect("still there");
            assert_eq!(r.client_id(), format!("client-{i}").as_bytes());
            let want: &[u8] = if i % 7 == 0 { b"+2+2 2" } else { b"+1+1 1" };
            assert!(r.line().ends_with(want), "{:?}", r.line());
        }
        assert_eq!(s.len(), n);
        assert!(s.get(b"client-").is_none() && s.get(b"").is_none());
    }

    #[test]
    fn the_oldest_are_evicted_and_never_stored_again() {
        let s = Store::new();
        for i in 0..10 {
            offer(
                &s,
                rec("A", &format!("c{i}"), "+1+1", &format!("{}", 100 + i)),
            )
            .unwrap();
        }
        let each = charge(&s.get(b"c0").unwrap());
        assert_eq!(s.bytes(), 10 * each);
        // Three records' worth of excess: the three oldest.
        let key = s.eviction_key(3 * each - 1).unwrap();
        assert_eq!(&key.client_id[..], b"c2");
        assert!(s.raise_evicted(key.clone()));
        assert!(!s.raise_evicted(key.clone()), "it only rises");
        let mut gone = 0;
        assert_eq!(s.sweep(|g| gone += g.len()), 3);
        assert_eq!((gone, s.len(), s.bytes()), (3, 7, 7 * each));
        assert!(s.get(b"c2").is_none() && s.get(b"c3").is_some());
        // At or below the watermark nothing is stored, newer is.
        assert!(offer(&s, rec("B", "c1", "+2+2", "101")).is_err());
        assert!(offer(&s, rec("B", "new", "+2+2", "50")).is_err());
        assert!(s.get(b"c1").is_none() && s.get(b"new").is_none());
        assert!(offer(&s, rec("B", "c1", "+2+2", "200")).is_ok());
        // Equal times: the client ID decides.
        let t = EvictKey::decode(b"300.000000000 m").unwrap();
        assert!(t.covers(&rec("A", "a", "+1+1", "300")));
        assert!(!t.covers(&rec("A", "z", "+1+1", "300")));
        assert_eq!(EvictKey::decode(&t.encode()), Some(t));
        assert_eq!(EvictKey::decode(b"3x kiwi"), None);
    }

    #[test]
    fn client_id_is_the_fourth_field() {
        let r = rec("Goloman", "a.b-c", "+1+1", "1.5");
        assert_eq!(r.client_id(), r.field(3));
        assert_eq!(r.client_id(), b"a.b-c");
    }
}
