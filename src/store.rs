//! Client records: one per client, the newest by client time, and the total order
//! that makes every server converge on the same record.

use std::{
    cmp::Ordering,
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    sync::Mutex,
};

use bytes::Bytes;

use crate::{
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
}

impl Record {
    /// The record of a parsed IAMAT, as server `origin` replied to it with `diff`.
    pub fn from_iamat(origin: &str, diff: &[u8], cmd: &wire::IAmAt<'_>) -> Record {
        let mut line = Vec::with_capacity(
            8 + origin.len()
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

    /// Validates an update from a peer as strictly as an IAMAT from a client.
    pub fn from_update(u: &proto::Update) -> Result<Record, BadUpdate> {
        let mut iamat =
            Vec::with_capacity(8 + u.client_id.len() + u.location.len() + u.client_time.len());
        for (i, part) in [&b"IAMAT"[..], &u.client_id, &u.location, &u.client_time]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                iamat.push(b' ');
            }
            iamat.extend_from_slice(part);
        }
        let cmd = match wire::parse(&iamat) {
            Ok(wire::Command::IAmAt(cmd)) => cmd,
            Ok(_) => return Err(BadUpdate::Fields(wire::ParseError::UnknownCommand)),
            Err(e) => return Err(BadUpdate::Fields(e)),
        };
        if !crate::config::valid_name(&u.origin) {
            return Err(BadUpdate::Origin(u.origin.clone()));
        }
        if !valid_diff(&u.time_diff) {
            return Err(BadUpdate::TimeDiff(
                String::from_utf8_lossy(&u.time_diff).into_owned(),
            ));
        }
        let label = u.label.as_ref().ok_or(BadUpdate::NoLabel)?;
        if label.seconds != cmd.client_time.seconds_digits()
            || label.nanos != cmd.client_time.nanos()
            || label.origin != u.origin
        {
            return Err(BadUpdate::LabelMismatch);
        }
        Ok(Record::from_iamat(&u.origin, &u.time_diff, &cmd))
    }

    /// The update that carries this record to neighbours.
    pub fn to_update(&self, seen: Vec<String>) -> proto::Update {
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
        }
    }

    /// The AT line, without a newline.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    pub fn client_id(&self) -> &[u8] {
        self.field(3)
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

// A record is keyed by its client ID: stored in a set, looked up by the ID's bytes.
/// Records are equal as set members when their client IDs are.
#[derive(Clone, Debug)]
struct Keyed(Record);

impl PartialEq for Keyed {
    fn eq(&self, other: &Keyed) -> bool {
        self.0.client_id() == other.0.client_id()
    }
}

impl Eq for Keyed {}

impl std::hash::Hash for Keyed {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Exactly as the borrowed form, `[u8]`, hashes.
        self.0.client_id().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for Keyed {
    fn borrow(&self) -> &[u8] {
        self.0.client_id()
    }
}

/// A shard's table hashes with foldhash (fast, seeded per table); shards are picked
/// with std's SipHash, so the two hashes are unrelated.
type Shard = HashSet<Keyed, foldhash::fast::RandomState>;

/// Every client's record, sharded so connections rarely wait on one another.
#[derive(Debug)]
pub struct Store {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
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
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn lock(&self, id: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        crate::lock(&self.shards[self.hasher.hash_one(id) as usize % SHARDS])
    }

    /// An IAMAT's record, whose client time is `time`: stored when that is newer
    /// than the stored record's; otherwise the stored record is returned and
    /// nothing changes.
    pub fn offer_iamat(&self, record: Record, time: &ClientTime) -> Result<(), Record> {
        let mut shard = self.lock(record.client_id());
        match shard.get(record.client_id()) {
            Some(old) if *time <= old.0.time() => Err(old.0.clone()),
            _ => {
                shard.replace(Keyed(record));
                Ok(())
            }
        }
    }

    /// A peer's record: stored when it is above the stored one in the herd's order.
    pub fn offer_update(&self, record: Record) -> bool {
        let mut shard = self.lock(record.client_id());
        match shard.get(record.client_id()) {
            Some(old) if record.order(&old.0) != Ordering::Greater => false,
            _ => {
                shard.replace(Keyed(record));
                true
            }
        }
    }

    pub fn get(&self, client_id: &[u8]) -> Option<Record> {
        self.lock(client_id).get(client_id).map(|k| k.0.clone())
    }

    /// The records of shard `i`, None past the last shard: a neighbour's catch-up
    /// goes shard by shard, so it never copies the whole store at once.
    pub fn snapshot_part(&self, i: usize) -> Option<Vec<Record>> {
        let shard = self.shards.get(i)?;
        let shard = crate::lock(shard);
        Some(shard.iter().map(|k| k.0.clone()).collect())
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
        let wire::Command::IAmAt(c) = wire::parse(line.as_bytes()).unwrap() else {
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
        let u = r.to_update(vec!["Goloman".into()]);
        assert_eq!(&u.client_id[..], b"kiwi");
        assert_eq!(u.label.as_ref().unwrap().seconds, "1520023934");
        assert_eq!(u.label.as_ref().unwrap().nanos, 918963997);
        let back = Record::from_update(&u).unwrap();
        assert_eq!(back.line(), r.line());
        assert_eq!(back.order(&r), Ordering::Equal);
    }

    #[test]
    fn bad_updates_are_refused() {
        let good = rec("Hands", "k", "+1+1", "5.5").to_update(vec![]);
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

    fn offer(s: &Store, r: Record) -> Result<(), Record> {
        let time = r.time();
        s.offer_iamat(r, &time)
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
                s.offer_update(recs[i].clone());
            }
            assert!(
                s.get(b"c").unwrap().line().starts_with(b"AT Hands "),
                "order {order:?}"
            );
        }
    }

    #[test]
    fn snapshot_holds_every_record() {
        let s = Store::new();
        for i in 0..100 {
            offer(&s, rec("A", &format!("c{i}"), "+1+1", "1")).unwrap();
        }
        let mut ids: Vec<Vec<u8>> = (0..)
            .map_while(|i| s.snapshot_part(i))
            .flatten()
            .map(|r| r.client_id().to_vec())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100);
    }
}
