//! What one node knows of every source (an origin server in one incarnation): its
//! floor, the versions above the floor it has seen, and an index from seq to the
//! current records of that source, so that "every current record of source S
//! above seq n" is a range read, not a table scan.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{Hash, Hasher},
    sync::Arc,
};

use crate::store::{SourceId, Version};

/// A source's key on the wire: the origin's name and its incarnation.
pub type SourceKey = (Arc<str>, u64);

/// A [`SourceKey`] borrowed, to look one up without making an `Arc` (every update
/// received looks its source up, twice). Hashes as the tuple does.
struct KeyRef<'a>(&'a str, u64);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl hashbrown::Equivalent<SourceKey> for KeyRef<'_> {
    fn equivalent(&self, key: &SourceKey) -> bool {
        // The incarnation first: it is in the table's slot, the name behind a pointer.
        key.1 == self.1 && *key.0 == *self.0
    }
}

/// The most runs of seen-but-not-contiguous seqs kept per source. Past it the
/// highest run is forgotten: forgetting only makes a floor claim less (sound),
/// and the next catch-up's end raises the floor anyway.
pub const MAX_RUNS: usize = 1024;

/// The most sources a node keeps (a version packs its source id into 16 bits). Each
/// is one restart of one server whose records are still current somewhere; a peer
/// that makes a node exceed this is cut off.
pub const MAX_SOURCES: usize = crate::store::MAX_SOURCE_IDS;

/// Seqs above a floor that are known to be reflected, as runs `start..=end`.
#[derive(Debug, Default)]
pub struct Runs(BTreeMap<u64, u64>);

impl Runs {
    fn insert(&mut self, seq: u64) {
        // The run that ends just before `seq`, or contains it.
        let before = self.0.range(..=seq).next_back().map(|(&s, &e)| (s, e));
        let after = self.0.get(&(seq + 1)).copied();
        match (before, after) {
            (Some((_, e)), _) if e >= seq => {}
            (Some((s, e)), Some(a)) if e + 1 == seq => {
                self.0.remove(&(seq + 1));
                self.0.insert(s, a);
            }
            (Some((s, e)), None) if e + 1 == seq => {
                self.0.insert(s, seq);
            }
            (_, Some(a)) => {
                self.0.remove(&(seq + 1));
                self.0.insert(seq, a);
            }
            _ => {
                self.0.insert(seq, seq);
                if self.0.len() > MAX_RUNS {
                    self.0.pop_last();
                }
            }
        }
    }

    /// Raises `floor` over every run it reaches, and drops the runs below it.
    fn absorb(&mut self, floor: &mut u64) {
        while let Some((&s, &e)) = self.0.first_key_value() {
            if s > *floor + 1 {
                break;
            }
            *floor = (*floor).max(e);
            self.0.pop_first();
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The lowest `n` runs.
    pub fn lowest(&self, n: usize) -> Vec<(u64, u64)> {
        self.0.iter().take(n).map(|(&s, &e)| (s, e)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The current records of one source held here, by seq: `(seq, hash of the client
/// ID)`, sorted by seq. A replaced record's entry is marked dead in place (found by
/// binary search) and the vector is compacted when half of it is dead: sixteen
/// bytes a live record, at most twice that.
#[derive(Debug, Default)]
pub struct SeqIndex {
    entries: Vec<(u64, u64)>,
    live: usize,
}

const DEAD: u64 = 1 << 63;

impl SeqIndex {
    fn position(&self, seq: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&seq, |&(s, _)| s & !DEAD)
    }

    pub(crate) fn insert(&mut self, seq: u64, hash: u64) {
        debug_assert!(seq < DEAD);
        match self.entries.last() {
            Some(&(last, _)) if last & !DEAD >= seq => match self.position(seq) {
                Ok(i) => {
                    if self.entries[i].0 & DEAD != 0 {
                        self.live += 1;
                    }
                    self.entries[i] = (seq, hash);
                }
                Err(i) => {
                    // Out of seq order (it came by another path): near the end, so
                    // the move is short.
                    self.entries.insert(i, (seq, hash));
                    self.live += 1;
                }
            },
            _ => {
                self.entries.push((seq, hash));
                self.live += 1;
            }
        }
    }

    pub(crate) fn remove(&mut self, seq: u64) {
        if let Ok(i) = self.position(seq)
            && self.entries[i].0 & DEAD == 0
        {
            self.entries[i].0 |= DEAD;
            self.live -= 1;
            if self.entries.len() > 64 && self.live < self.entries.len() / 2 {
                self.entries.retain(|&(s, _)| s & DEAD == 0);
                self.entries.shrink_to(self.live * 3 / 2);
            }
        }
    }

    /// Up to `max` live entries with a seq above `after`, in seq order.
    pub fn above(&self, after: u64, max: usize, out: &mut Vec<(u64, u64)>) {
        let start = match self.position(after) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        out.extend(
            self.entries[start..]
                .iter()
                .filter(|&&(s, _)| s & DEAD == 0)
                .take(max)
                .copied(),
        );
    }

    pub fn live(&self) -> usize {
        self.live
    }

    /// Bytes the index holds (for memory accounting).
    pub fn capacity_bytes(&self) -> usize {
        self.entries.capacity() * 16
    }
}

/// One source as this node knows it.
#[derive(Debug)]
pub struct Source {
    pub origin: Arc<str>,
    pub incarnation: u64,
    /// Every version of this source with seq <= floor is reflected in the table:
    /// held, or superseded by a held record that wins by label.
    pub floor: u64,
    /// Reflected versions above the floor, waiting for the gap below them.
    pub runs: Runs,
    pub index: SeqIndex,
}

impl Source {
    /// Version `seq` is reflected here (it was applied, or lost to a record held).
    pub fn seen(&mut self, seq: u64) {
        if seq <= self.floor {
            return;
        }
        if seq == self.floor + 1 {
            self.floor = seq;
        } else {
            self.runs.insert(seq);
        }
        self.runs.absorb(&mut self.floor);
    }

    /// A catch-up proved every version up to `seq` reflected.
    pub fn raise(&mut self, seq: u64) {
        if seq > self.floor {
            self.floor = seq;
        }
        self.runs.absorb(&mut self.floor);
    }
}

/// Every source a node knows, and its own: the one its IAMATs get versions from.
#[derive(Debug)]
pub struct Versions {
    own: SourceId,
    /// The last seq given to an own record.
    last: u64,
    sources: Vec<Option<Source>>,
    /// Seeded per process, as the store's shards are.
    by_key: hashbrown::HashMap<SourceKey, SourceId, foldhash::fast::RandomState>,
    free: Vec<SourceId>,
}

/// A peer named more sources than a node keeps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("more than {MAX_SOURCES} sources")]
pub struct TooManySources;

impl Versions {
    pub fn new(me: Arc<str>, incarnation: u64) -> Versions {
        let mut v = Versions {
            own: SourceId(0),
            last: 0,
            sources: Vec::new(),
            by_key: hashbrown::HashMap::default(),
            free: Vec::new(),
        };
        v.own = v.id(&me, incarnation).expect("the first source fits");
        v
    }

    pub fn own(&self) -> SourceId {
        self.own
    }

    /// The last seq this node gave one of its own records.
    pub fn last_own(&self) -> u64 {
        self.last
    }

    /// The id of source (origin, incarnation), made if new.
    pub fn id(&mut self, origin: &str, incarnation: u64) -> Result<SourceId, TooManySources> {
        if let Some(&id) = self.by_key.get(&KeyRef(origin, incarnation)) {
            return Ok(id);
        }
        let origin: Arc<str> = origin.into();
        let source = Source {
            origin: origin.clone(),
            incarnation,
            floor: 0,
            runs: Runs::default(),
            index: SeqIndex::default(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.sources[id.0 as usize] = Some(source);
                id
            }
            None if self.sources.len() >= MAX_SOURCES => return Err(TooManySources),
            None => {
                self.sources.push(Some(source));
                SourceId(self.sources.len() as u32 - 1)
            }
        };
        self.by_key.insert((origin, incarnation), id);
        Ok(id)
    }

    /// The id of a source this node knows, None if it does not.
    pub fn find(&self, origin: &str, incarnation: u64) -> Option<SourceId> {
        self.by_key.get(&KeyRef(origin, incarnation)).copied()
    }

    pub fn get(&self, id: SourceId) -> &Source {
        self.sources[id.0 as usize]
            .as_ref()
            .expect("a source id in use")
    }

    pub fn get_mut(&mut self, id: SourceId) -> &mut Source {
        self.sources[id.0 as usize]
            .as_mut()
            .expect("a source id in use")
    }

    pub fn iter(&self) -> impl Iterator<Item = (SourceId, &Source)> {
        self.sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((SourceId(i as u32), s.as_ref()?)))
    }

    /// Makes (`origin`, `incarnation`) this node's own source (a restart that
    /// resumes an incarnation, or starts a new one after a damaged data dir); the
    /// one before stays as any other source.
    pub fn set_own(&mut self, origin: &str, incarnation: u64) -> Result<(), TooManySources> {
        let id = self.id(origin, incarnation)?;
        self.own = id;
        self.last = self.get(id).floor;
        Ok(())
    }

    /// A restart resumes its own incarnation after seq `last`: every own version
    /// up to it is reflected (see `crate::durable`).
    pub fn resume_own(&mut self, last: u64) {
        self.last = self.last.max(last);
        let last = self.last;
        let own = self.own;
        self.get_mut(own).raise(last);
    }

    /// The next own version (its record is being stored under a shard's lock).
    pub fn next_own(&mut self, hash: u64) -> Version {
        assert!(
            self.last < crate::store::MAX_SEQ,
            "an incarnation's seqs are used up; restart the server"
        );
        self.last += 1;
        let seq = self.last;
        let own = self.own;
        let source = self.get_mut(own);
        source.index.insert(seq, hash);
        source.seen(seq);
        Version { source: own, seq }
    }

    /// The table now holds `new` for the client whose ID hashes to `hash`, in place
    /// of `old`.
    pub fn replaced(&mut self, hash: u64, old: Option<Version>, new: Version) {
        if let Some(old) = old {
            self.get_mut(old.source).index.remove(old.seq);
        }
        if new.source != self.own {
            self.get_mut(new.source).index.insert(new.seq, hash);
        }
    }

    /// Forgets old incarnations that no record here is current for any more: a
    /// server that restarts without its state adds one source per start, and this
    /// keeps their count to those still in use. An older incarnation is one with a
    /// lower number (incarnations are start times). Forgetting a floor only makes a
    /// node claim less; a neighbour that still holds records of it sends them again.
    pub fn retire(&mut self) {
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for (_, s) in self.iter() {
            let e = newest.entry(&*s.origin).or_insert(s.incarnation);
            *e = (*e).max(s.incarnation);
        }
        let old: Vec<SourceId> = self
            .iter()
            .filter(|(id, s)| {
                *id != self.own && s.index.live() == 0 && newest[&*s.origin] > s.incarnation
            })
            .map(|(id, _)| id)
            .collect();
        for id in old {
            if let Some(s) = self.sources[id.0 as usize].take() {
                self.by_key.remove(&(s.origin, s.incarnation));
                self.free.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source {
            origin: "A".into(),
            incarnation: 1,
            floor: 0,
            runs: Runs::default(),
            index: SeqIndex::default(),
        }
    }

    #[test]
    fn the_floor_stops_at_a_gap_and_crosses_it_when_filled() {
        let mut s = source();
        for seq in [1, 2, 4, 5, 7] {
            s.seen(seq);
        }
        assert_eq!(s.floor, 2);
        assert_eq!(s.runs.len(), 2);
        s.seen(3);
        assert_eq!(s.floor, 5);
        s.seen(6);
        assert_eq!((s.floor, s.runs.len()), (7, 0));
        s.seen(3);
        assert_eq!(s.floor, 7, "an old seq changes nothing");
    }

    #[test]
    fn a_catch_up_raises_the_floor_over_runs_it_reaches() {
        let mut s = source();
        for seq in [10, 11, 12, 20] {
            s.seen(seq);
        }
        assert_eq!(s.floor, 0);
        s.raise(9);
        assert_eq!(s.floor, 12);
        s.raise(5);
        assert_eq!(s.floor, 12, "never lowered");
        s.raise(19);
        assert_eq!((s.floor, s.runs.len()), (20, 0));
    }

    #[test]
    fn runs_merge_from_both_sides_and_stay_bounded() {
        let mut r = Runs::default();
        for seq in [5, 7, 6, 9, 10, 8] {
            r.insert(seq);
        }
        assert_eq!(r.0.iter().collect::<Vec<_>>(), [(&5, &10)]);
        let mut r = Runs::default();
        for seq in 0..(MAX_RUNS as u64 + 10) {
            r.insert(10 + seq * 2);
        }
        assert_eq!(r.len(), MAX_RUNS);
        assert_eq!(
            r.0.first_key_value(),
            Some((&10, &10)),
            "the lowest runs stay"
        );
    }

    #[test]
    fn the_index_answers_ranges_of_live_records_in_seq_order() {
        let mut i = SeqIndex::default();
        for seq in [1, 2, 3, 5, 4, 9, 7] {
            i.insert(seq, seq * 100);
        }
        i.remove(3);
        i.remove(3);
        i.remove(8);
        assert_eq!(i.live(), 6);
        let mut out = Vec::new();
        i.above(2, 3, &mut out);
        assert_eq!(out, [(4, 400), (5, 500), (7, 700)]);
        out.clear();
        i.above(0, 100, &mut out);
        assert_eq!(out.len(), 6);
        // Many removals compact it, and it still answers.
        for seq in 10..1000 {
            i.insert(seq, seq);
        }
        for seq in 10..900 {
            i.remove(seq);
        }
        assert!(i.entries.len() < 400, "{}", i.entries.len());
        out.clear();
        i.above(850, 5, &mut out);
        assert_eq!(
            out.iter().map(|e| e.0).collect::<Vec<_>>(),
            [900, 901, 902, 903, 904]
        );
        // A dead entry comes back at the same seq.
        i.remove(901);
        i.insert(901, 1);
        out.clear();
        i.above(900, 1, &mut out);
        assert_eq!(out, [(901, 1)]);
    }

    #[test]
    fn old_incarnations_with_no_records_are_retired() {
        let mut v = Versions::new("Me".into(), 5);
        let old = v.id("B", 1).unwrap();
        let new = v.id("B", 2).unwrap();
        let other = v.id("C", 1).unwrap();
        v.replaced(
            7,
            None,
            Version {
                source: old,
                seq: 1,
            },
        );
        v.retire();
        assert!(v.find("B", 1).is_some(), "it still has a record");
        v.replaced(
            7,
            Some(Version {
                source: old,
                seq: 1,
            }),
            Version {
                source: new,
                seq: 1,
            },
        );
        v.retire();
        assert_eq!(v.find("B", 1), None);
        assert_eq!(v.find("B", 2), Some(new));
        assert_eq!(
            v.find("C", 1),
            Some(other),
            "the only incarnation of C stays"
        );
        assert_eq!(v.find("Me", 5), Some(v.own()));
        // Its id is reused.
        assert_eq!(v.id("D", 1).unwrap(), old);
    }
}
