//! The restart: the newest snapshot, then every segment from its index on, read
//! into a fresh replica. A torn last entry is cut off; a corrupt entry elsewhere is
//! skipped, and from there on floors are not trusted (see `crate::durable`).

use std::path::{Path, PathBuf};

use super::{
    DataMetrics,
    format::{self, Entry, Read},
};
use crate::{
    replica::Replica,
    store::{Record, SourceId},
};

/// Bytes of a data dir file that were not a valid entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: usize,
    pub bytes: usize,
}

#[derive(Debug)]
pub(super) enum Error {
    Io(&'static str, std::io::Error),
    OtherServer(String),
}

#[derive(Debug, Default)]
pub(super) struct Restored {
    /// Bytes of the segments read (what a compaction would fold away).
    pub segment_bytes: u64,
    pub snapshot_bytes: u64,
}

struct State<'a> {
    replica: &'a mut Replica,
    metrics: &'a DataMetrics,
    /// The incarnation the files so far belong to (None before the first header).
    incarnation: Option<u64>,
    last_own: u64,
    /// A corrupt entry or a LOST marker was met: floors after it claim too much.
    damaged: bool,
    /// The source of the last record restored: (origin, incarnation, id).
    source: Option<(Vec<u8>, u64, SourceId)>,
}

impl State<'_> {
    fn entry(&mut self, payload: &[u8], file: &Path, offset: usize) -> Result<(), Error> {
        let Some(entry) = format::decode(payload) else {
            self.corrupt(file, offset, payload.len() + format::FRAME, "unknown entry");
            return Ok(());
        };
        match entry {
            Entry::Header {
                name,
                incarnation,
                last_own,
            } => {
                if name != &**self.replica.name() {
                    return Err(Error::OtherServer(name.to_owned()));
                }
                if self.incarnation != Some(incarnation) {
                    // The first file, or the first after a restart that began a new
                    // incarnation (a damaged data dir).
                    if self.incarnation.is_some() && !self.damaged {
                        self.replica.resume_own(self.last_own);
                    }
                    self.replica
                        .set_incarnation(incarnation)
                        .map_err(|e| Error::Io("too many sources", std::io::Error::other(e)))?;
                    self.incarnation = Some(incarnation);
                    self.last_own = 0;
                    // A fresh replica's sources are made again: no id is kept.
                    self.source = None;
                }
                self.last_own = self.last_own.max(last_own);
            }
            Entry::Put {
                incarnation,
                seq,
                line,
            } => self.put(
                Record::from_stored(line).ok(),
                incarnation,
                seq,
                file,
                offset,
                payload.len(),
            ),
            Entry::Floors(floors) => {
                if !self.damaged && self.replica.restore_floors(&floors).is_err() {
                    self.damaged = true;
                }
            }
            Entry::End(_) => {}
            Entry::Evicted(key) => match crate::store::EvictKey::decode(key) {
                Some(key) => self.replica.restore_evicted(key),
                None => self.corrupt(
                    file,
                    offset,
                    payload.len() + format::FRAME,
                    "invalid watermark",
                ),
            },
            Entry::Lost => {
                tracing::warn!(file = %file.display(), offset, "the journal lost entries here while the disk failed; neighbours' catch-ups refill them");
                self.damaged = true;
            }
        }
        Ok(())
    }

    /// A record entry (`record` None: its line was not a valid record).
    fn put(
        &mut self,
        record: Option<Record>,
        incarnation: u64,
        seq: u64,
        file: &Path,
        offset: usize,
        len: usize,
    ) {
        let record = match record {
            Some(record) if seq > 0 && seq <= crate::store::MAX_SEQ => record,
            _ => return self.corrupt(file, offset, len + format::FRAME, "invalid record"),
        };
        if record.origin() == self.replica.name().as_bytes()
            && Some(incarnation) == self.incarnation
        {
            self.last_own = self.last_own.max(seq);
        }
        // Records come in runs of one source: its id is looked up once a run.
        let source = match &self.source {
            Some((o, i, id)) if *i == incarnation && o[..] == *record.origin() => *id,
            _ => {
                let origin = std::str::from_utf8(record.origin()).unwrap_or("");
                match self.replica.restore_source(origin, incarnation) {
                    Ok(id) => {
                        self.source = Some((record.origin().to_vec(), incarnation, id));
                        id
                    }
                    Err(_) => return self.corrupt(file, offset, len, "too many sources"),
                }
            }
        };
        self.replica.restore(record, source, seq);
    }

    fn corrupt(&mut self, file: &Path, offset: usize, bytes: usize, why: &str) {
        tracing::error!(
            file = %file.display(),
            offset,
            bytes,
            why,
            "corrupt entry in the data dir, skipped; neighbours' catch-ups refill what it held"
        );
        self.metrics.corrupt_entries.inc();
        self.damaged = true;
    }
}

/// What a file's reader thread hands over, in file order.
enum Item {
    /// A record entry, already parsed (None: not a valid record).
    Put {
        record: Option<Record>,
        incarnation: u64,
        seq: u64,
        offset: usize,
        len: usize,
    },
    /// Any other valid entry.
    Other { payload: Vec<u8>, offset: usize },
    Bad {
        offset: usize,
        bytes: usize,
        at_end: bool,
    },
}

/// Reads, checks and parses `path` on a thread of its own, in batches, while the
/// caller stores what it already got: a restart of a million records takes the time
/// of the slower half, not of both.
fn read_items<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    path: &'env Path,
) -> (
    std::sync::mpsc::Receiver<Vec<Item>>,
    std::thread::ScopedJoinHandle<'scope, std::io::Result<usize>>,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel(8);
    let reader = scope.spawn(move || {
        let data = std::fs::read(path)?;
        let mut batch = Vec::with_capacity(BATCH);
        for read in format::Reader::new(&data) {
            batch.push(match read {
                Read::Entry { offset, payload } => match format::decode(payload) {
                    Some(Entry::Put {
                        incarnation,
                        seq,
                        line,
                    }) => Item::Put {
                        record: Record::from_stored(line).ok(),
                        incarnation,
                        seq,
                        offset,
                        len: payload.len(),
                    },
                    _ => Item::Other {
                        payload: payload.to_vec(),
                        offset,
                    },
                },
                Read::Bad {
                    offset,
                    bytes,
                    at_end,
                } => Item::Bad {
                    offset,
                    bytes,
                    at_end,
                },
            });
            if batch.len() == BATCH && tx.send(std::mem::take(&mut batch)).is_err() {
                break;
            }
        }
        let _ = tx.send(batch);
        Ok(data.len())
    });
    (rx, reader)
}

const BATCH: usize = 4096;

/// Feeds file `path` to `state`, entry by entry; `bad` decides what a bad stretch
/// is (offset, bytes, whether it reaches the end). Returns the file's length and
/// whether its last entry was a snapshot's end.
fn feed(
    state: &mut State<'_>,
    path: &Path,
    mut bad: impl FnMut(&mut State<'_>, usize, usize, bool),
) -> Result<(usize, bool), Error> {
    std::thread::scope(|scope| {
        let (rx, reader) = read_items(scope, path);
        let mut complete = false;
        let mut result = Ok(());
        'batches: for batch in rx.iter() {
            for item in batch {
                complete = false;
                match item {
                    Item::Put {
                        record,
                        incarnation,
                        seq,
                        offset,
                        len,
                    } => state.put(record, incarnation, seq, path, offset, len),
                    Item::Other { payload, offset } => {
                        complete = payload.first() == Some(&format::END);
                        if let Err(e) = state.entry(&payload, path, offset) {
                            result = Err(e);
                            break 'batches;
                        }
                    }
                    Item::Bad {
                        offset,
                        bytes,
                        at_end,
                    } => bad(state, offset, bytes, at_end),
                }
            }
        }
        // A reader still sending stops at its next batch.
        drop(rx);
        let len = reader
            .join()
            .map_err(|_| Error::Io("reading a file", std::io::Error::other("reader panicked")))?
            .map_err(|e| Error::Io("cannot read a data dir file", e))?;
        result.map(|()| (len, complete))
    })
}

/// Reads `snapshots`' newest and `segments` from its index on into `replica`.
pub(super) fn restore(
    _dir: &Path,
    segments: &[(u64, PathBuf)],
    snapshots: &[(u64, PathBuf)],
    replica: &mut Replica,
    metrics: &DataMetrics,
) -> Result<Restored, Error> {
    let mut state = State {
        replica,
        metrics,
        incarnation: None,
        last_own: 0,
        damaged: false,
        source: None,
    };
    let mut restored = Restored::default();
    // About 100 bytes an entry: the tables are sized once instead of doubling.
    let bytes: u64 = snapshots
        .last()
        .into_iter()
        .chain(segments.iter())
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    state.replica.store().reserve((bytes / 100) as usize);
    let from = match snapshots.last() {
        Some((index, path)) => {
            let (len, complete) = feed(&mut state, path, |state, offset, bytes, _| {
                state.corrupt(path, offset, bytes, "checksum mismatch")
            })?;
            restored.snapshot_bytes = len as u64;
            if !complete {
                state.corrupt(path, len, 0, "snapshot has no end");
            }
            *index
        }
        None => 0,
    };
    let todo: Vec<_> = segments.iter().filter(|(i, _)| *i >= from).collect();
    for (n, (_, path)) in todo.iter().enumerate() {
        let last_file = n + 1 == todo.len();
        let mut cut = None;
        let (len, _) = feed(&mut state, path, |state, offset, bytes, at_end| {
            if at_end && last_file {
                cut = Some((offset, bytes));
            } else {
                state.corrupt(path, offset, bytes, "checksum mismatch");
            }
        })?;
        restored.segment_bytes += len as u64;
        if let Some((offset, bytes)) = cut {
            // A write the process did not finish: nothing in it was acknowledged.
            tracing::warn!(
                file = %path.display(),
                offset,
                bytes,
                "torn last entry in the data dir (a write cut short), cut off"
            );
            metrics.torn_bytes.inc_by(bytes as u64);
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(offset as u64))
                .map_err(|e| Error::Io("cannot cut a torn entry", e))?;
        }
    }
    let State {
        replica,
        incarnation,
        last_own,
        damaged,
        ..
    } = state;
    if incarnation.is_some() {
        if !damaged {
            replica.resume_own(last_own);
        } else {
            // Some own seq may have been in what was skipped: never give it again.
            let fresh = Replica::fresh_incarnation();
            tracing::warn!(
                old = incarnation,
                new = fresh,
                "the data dir was damaged; starting a new incarnation so that no version is given twice"
            );
            replica
                .set_incarnation(fresh)
                .map_err(|e| Error::Io("too many sources", std::io::Error::other(e)))?;
        }
    }
    Ok(restored)
}
