//! A server's data dir: the journal of every record it stores (own IAMATs and
//! neighbours' updates) and of the floors its catch-ups prove, in segment files,
//! compacted into snapshots; and the restart that reads them back.
//!
//! The in-memory table stays the source of answers; the disk is for restarts.
//!
//! # Ordering, and why a restart never reuses a version
//!
//! Entries are appended to an in-memory buffer inside the critical sections that
//! change the table and the versions (the store's shard lock and the replica's
//! versions lock), so the order of the journal is the order of the changes, and own
//! seqs appear in it in increasing order. The buffer is written to the segment file
//! (one `write` for everything pending) by whoever needs it written first: the
//! client connection whose replies wait for it, a link about to send a catch-up,
//! or the journal's thread every [`FLUSH_EVERY`]. What a SIGKILL loses is therefore a
//! suffix of the journal, never a piece of the middle.
//!
//! No own version leaves the server before its entry is written: an IAMAT's reply
//! and its flood to neighbours wait for the write, and a catch-up writes the journal
//! before it sends records. So the highest own seq in the journal is the highest any
//! other server or client has seen, and a restart continues after it, in the same
//! incarnation: no version is given twice. Floors restored from the journal claim
//! only what a prefix of it holds, so they are true of the restored table (a floor,
//! once true, stays true while records are only added). Only when an entry in the
//! middle is corrupt (skipped: its record, and maybe an own seq, unknown) does the
//! server start a new incarnation, and floors written after it are not trusted;
//! catch-ups from neighbours refill what was skipped.
//!
//! # fsync policies (Redis's names)
//!
//! - `always`: a reply also waits until its entry is on disk. One thread calls
//!   `fdatasync` while writes go on; each call covers everything written before it
//!   started, so one call serves every reply waiting at that moment (group commit).
//! - `everysec`: that thread calls `fdatasync` about once a second.
//! - `no`: the kernel decides.
//!
//! # Why not an embedded engine
//!
//! fjall and redb are key-value stores with their own write-ahead logs: herd would
//! write each record twice (their log and their tree), still need its own in-memory
//! table for answers, and could not hold a reply until the one `write` that covers a
//! whole read of pipelined IAMATs (their commit is per batch they are handed, with a
//! sync per commit in their durable modes). The journal here is one append and one
//! write per read, and a snapshot is a sequential file; see the README's figures.

pub mod format;
mod recover;

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::sync::watch;

use crate::replica::Replica;

pub use recover::Damage;

/// How often the journal's thread writes what is pending (neighbours' updates and
/// floors: nobody waits for those).
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// How often a failed disk is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How often the compactor looks at the journal's size.
const COMPACT_CHECK: Duration = Duration::from_millis(500);

/// When the reply to an IAMAT may leave (`--fsync`, `HERD_FSYNC`, herd file `fsync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fsync {
    Always,
    #[default]
    EverySec,
    No,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Fsync, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "everysec" => Ok(Fsync::EverySec),
            "no" => Ok(Fsync::No),
            _ => Err(format!(
                "fsync {s:?}: expected always, everysec (the default) or no"
            )),
        }
    }
}

impl Fsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
            Fsync::No => "no",
        }
    }
}

/// The data dir's settings: `fsync` and the `[data]` table of the herd file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSettings {
    pub fsync: Fsync,
    /// `data.segment_bytes`: a segment file is closed and a new one begun past this.
    /// Default 64 MiB.
    pub segment_bytes: u64,
    /// `data.compact_min_bytes`: the journal is not compacted while its segments hold
    /// less than this (and less than the last snapshot). Default 16 MiB.
    pub compact_min_bytes: u64,
    /// `data.max_unwritten_bytes`: entries waiting for a failed disk, at most; past
    /// it they are dropped (counted), and a restart refills them from neighbours.
    /// Default 64 MiB.
    pub max_unwritten_bytes: usize,
}

impl Default for DataSettings {
    fn default() -> DataSettings {
        DataSettings {
            fsync: Fsync::default(),
            segment_bytes: 64 << 20,
            compact_min_bytes: 16 << 20,
            max_unwritten_bytes: 64 << 20,
        }
    }
}

/// One server's data dir and its settings.
#[derive(Clone, Debug)]
pub struct DataConfig {
    pub dir: PathBuf,
    pub settings: DataSettings,
}

/// Why a data dir cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data dir {dir}: {what}: {source}")]
    Io {
        dir: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("data dir {dir} is in use by another herd process")]
    Locked { dir: PathBuf },
    #[error("data dir {dir} holds server {found}'s data, not {me}'s")]
    OtherServer {
        dir: PathBuf,
        found: String,
        me: String,
    },
}

/// The disk could not take an entry: the reply must not say it was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the data dir cannot be written")]
pub struct Failed;

/// The data dir's metrics (`herd_data_*`).
#[derive(Debug, Default)]
pub struct DataMetrics {
    pub written_bytes: Counter,
    pub fsyncs: Counter,
    pub write_errors: Counter,
    pub fsync_errors: Counter,
    pub corrupt_entries: Counter,
    pub torn_bytes: Counter,
    pub dropped_entries: Counter,
    pub refused_iamats: Counter,
    pub compactions: Counter,
    pub dir_bytes: Gauge,
    pub unwritten_bytes: Gauge,
    pub writable: Gauge,
    pub restored_records: Gauge,
    pub restore_ms: Gauge,
}

impl DataMetrics {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        let r = r.sub_registry_with_prefix("data");
        r.register(
            "written_bytes",
            "Journal bytes written to the kernel",
            self.written_bytes.clone(),
        );
        r.register(
            "fsyncs",
            "fdatasync calls on the journal",
            self.fsyncs.clone(),
        );
        r.register(
            "write_errors",
            "Journal writes that failed (disk full, read-only, I/O error)",
            self.write_errors.clone(),
        );
        r.register(
            "fsync_errors",
            "fdatasync calls that failed",
            self.fsync_errors.clone(),
        );
        r.register(
            "corrupt_entries",
            "Corrupt entries found and skipped at start",
            self.corrupt_entries.clone(),
        );
        r.register(
            "torn_bytes",
            "Bytes of a torn last entry cut off at start",
            self.torn_bytes.clone(),
        );
        r.register(
            "dropped_entries",
            "Entries dropped while the disk failed, past data.max_unwritten_bytes",
            self.dropped_entries.clone(),
        );
        r.register(
            "refused_iamats",
            "IAMATs answered '?' because the data dir could not be written",
            self.refused_iamats.clone(),
        );
        r.register(
            "compactions",
            "Snapshots written (the journal compacted)",
            self.compactions.clone(),
        );
        r.register(
            "dir_bytes",
            "Bytes of snapshot and segments in the data dir",
            self.dir_bytes.clone(),
        );
        r.register(
            "unwritten_bytes",
            "Journal bytes waiting to be written",
            self.unwritten_bytes.clone(),
        );
        r.register(
            "writable",
            "1 while the data dir takes writes, 0 after a failure",
            self.writable.clone(),
        );
        r.register(
            "restored_records",
            "Records restored from the data dir at start",
            self.restored_records.clone(),
        );
        r.register(
            "restore_milliseconds",
            "How long the start took to read the data dir",
            self.restore_ms.clone(),
        );
    }
}

#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    /// Bytes appended since the journal opened (a position in the journal).
    appended: u64,
    /// Entries were dropped (the disk failed too long) and no LOST marker is
    /// written yet for them.
    lost_marked: bool,
}

#[derive(Debug)]
struct Writer {
    file: Arc<File>,
    index: u64,
    segment_bytes: u64,
    /// Bytes taken from `pending` whose write failed: written first next time.
    retry: Vec<u8>,
    /// Segments closed since the last sync: the syncer syncs them first (not the
    /// rotation itself, which would hold every writer up for the sync).
    closed: Vec<Arc<File>>,
    /// Bytes of the segments since the last snapshot, and of that snapshot.
    since_snapshot: u64,
    snapshot_bytes: u64,
}

/// What the syncer has made durable.
#[derive(Clone, Copy, Debug, Default)]
struct Synced {
    pos: u64,
    failed: bool,
}

/// An open data dir: what a server appends to, and what its replies wait for.
#[derive(Debug)]
pub struct Journal {
    name: Arc<str>,
    dir: PathBuf,
    settings: DataSettings,
    incarnation: AtomicU64,
    pending: Mutex<Pending>,
    writer: Mutex<Writer>,
    written: AtomicU64,
    /// `pending.appended`, readable without the lock (each reply asks it).
    appended: AtomicU64,
    synced: watch::Sender<Synced>,
    /// Why the disk cannot be written, while it cannot.
    failure: watch::Sender<Option<String>>,
    /// An fdatasync failed: what the kernel had may be gone, so the journal stays
    /// failed until the server restarts (and reads back what is really there).
    sync_failed: AtomicBool,
    wake: (Mutex<bool>, Condvar),
    stop: AtomicBool,
    pub metrics: DataMetrics,
    _lock: File,
}

fn segment_name(index: u64) -> String {
    format!("segment-{index:020}.log")
}

fn snapshot_name(index: u64) -> String {
    format!("snapshot-{index:020}.snap")
}

/// Data dir files of one kind, by index.
type Files = Vec<(u64, PathBuf)>;

/// Files of the data dir by kind (segments, snapshots), sorted by index.
fn list(dir: &Path) -> std::io::Result<(Files, Files)> {
    let mut segments = Vec::new();
    let mut snapshots = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let parse = |prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse::<u64>()
                .ok()
        };
        if let Some(i) = parse("segment-", ".log") {
            segments.push((i, e.path()));
        } else if let Some(i) = parse("snapshot-", ".snap") {
            snapshots.push((i, e.path()));
        } else if name.ends_with(".tmp") {
            // A snapshot that was being written when the server stopped.
            let _ = std::fs::remove_file(e.path());
        }
    }
    segments.sort();
    snapshots.sort();
    Ok((segments, snapshots))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens (creating it if missing) the data dir of server `replica.name()`, and
    /// restores its snapshot and journal into `replica`, which must be fresh. Then
    /// attaches itself, so that every change from now on is journaled.
    pub fn open(config: &DataConfig, replica: &mut Replica) -> Result<Arc<Journal>, OpenError> {
        let dir = config.dir.clone();
        let io = |what: &'static str| {
            let dir = dir.clone();
            move |source| OpenError::Io { dir, what, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("cannot create it"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io("cannot open its LOCK file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked { dir: dir.clone() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("cannot lock it")(e)),
        }
        let metrics = DataMetrics::default();
        let started = Instant::now();
        let (segments, snapshots) = list(&dir).map_err(io("cannot list it"))?;
        let restored = recover::restore(&dir, &segments, &snapshots, replica, &metrics).map_err(
            |e| match e {
                recover::Error::Io(what, source) => OpenError::Io {
                    dir: dir.clone(),
                    what,
                    source,
                },
                recover::Error::OtherServer(found) => OpenError::OtherServer {
                    dir: dir.clone(),
                    found,
                    me: replica.name().to_string(),
                },
            },
        )?;
        metrics.restore_ms.set(started.elapsed().as_millis() as i64);
        metrics.restored_records.set(replica.store().len() as i64);
        metrics.writable.set(1);

        let index = segments
            .iter()
            .chain(&snapshots)
            .map(|(i, _)| *i)
            .max()
            .map_or(1, |i| i + 1);
        let (file, head) = open_segment(&dir, index, replica.name(), replica.incarnation())
            .map_err(io("cannot create a segment"))?;
        if config.settings.fsync != Fsync::No {
            sync_dir(&dir).map_err(io("cannot sync it"))?;
        }
        let journal = Arc::new(Journal {
            name: replica.name().clone(),
            dir,
            settings: config.settings.clone(),
            incarnation: AtomicU64::new(replica.incarnation()),
            pending: Mutex::default(),
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                index,
                segment_bytes: head,
                retry: Vec::new(),
                closed: Vec::new(),
                since_snapshot: restored.segment_bytes,
                snapshot_bytes: restored.snapshot_bytes,
            }),
            written: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            synced: watch::Sender::new(Synced::default()),
            failure: watch::Sender::new(None),
            sync_failed: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            stop: AtomicBool::new(false),
            metrics,
            _lock: lock,
        });
        journal.update_dir_bytes();
        tracing::info!(
            dir = %journal.dir.display(),
            fsync = journal.settings.fsync.as_str(),
            records = replica.store().len(),
            incarnation = replica.incarnation(),
            last_seq = replica.last_own_seq(),
            ms = started.elapsed().as_millis() as u64,
            "data dir restored"
        );
        replica.attach(journal.clone());
        Ok(journal)
    }

    pub fn settings(&self) -> &DataSettings {
        &self.settings
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends an entry made by `fill` (called under the caller's locks). While the
    /// disk fails and too much waits, the entry is dropped and a LOST marker takes
    /// its place (once), so a restart trusts no floor written after it.
    fn append(&self, fill: impl FnOnce(&mut Vec<u8>)) {
        let mut p = crate::lock(&self.pending);
        if p.buf.len() >= self.settings.max_unwritten_bytes {
            self.metrics.dropped_entries.inc();
            if !p.lost_marked {
                p.lost_marked = true;
                let before = p.buf.len();
                format::lost(&mut p.buf);
                p.appended += (p.buf.len() - before) as u64;
                self.appended.store(p.appended, Ordering::Release);
            }
            return;
        }
        let before = p.buf.len();
        fill(&mut p.buf);
        p.appended += (p.buf.len() - before) as u64;
        self.appended.store(p.appended, Ordering::Release);
    }

    /// A record stored with version (its origin's `incarnation`, `seq`).
    pub fn put(&self, incarnation: u64, seq: u64, line: &[u8]) {
        self.append(|b| format::put(b, incarnation, seq, line));
    }

    /// Floors proved (the end of a neighbour's catch-up).
    pub fn floors<'a>(&self, floors: impl ExactSizeIterator<Item = (&'a str, u64, u64)>) {
        self.append(|b| format::floors(b, floors));
    }

    /// The eviction watermark rose to `key`.
    pub fn evicted(&self, key: &crate::store::EvictKey) {
        let key = key.encode();
        self.append(|b| format::evicted(b, &key));
    }

    /// The position after everything appended so far.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// Whether IAMATs must be refused: the disk cannot be written.
    pub fn refusing(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// Health: None while the disk takes writes, else why not.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    /// Makes sure everything up to `pos` is written to the kernel (writing whatever
    /// is pending, in one write, if it is not yet).
    pub fn write_through(&self, pos: u64) -> Result<(), Failed> {
        if self.written.load(Ordering::Acquire) >= pos {
            return Ok(());
        }
        let mut w = crate::lock(&self.writer);
        if self.written.load(Ordering::Acquire) >= pos {
            return Ok(());
        }
        if self.refusing() {
            return Err(Failed);
        }
        self.write_pending(&mut w)
    }

    fn write_pending(&self, w: &mut Writer) -> Result<(), Failed> {
        let (mut data, end) = {
            let mut p = crate::lock(&self.pending);
            p.lost_marked = false;
            (std::mem::take(&mut p.buf), p.appended)
        };
        if !w.retry.is_empty() {
            let mut all = std::mem::take(&mut w.retry);
            all.extend_from_slice(&data);
            data = all;
        }
        if data.is_empty() {
            self.written.store(end, Ordering::Release);
            return Ok(());
        }
        match (&*w.file).write_all(&data) {
            Ok(()) => {
                let n = data.len() as u64;
                w.segment_bytes += n;
                w.since_snapshot += n;
                self.metrics.written_bytes.inc_by(n);
                self.written.store(end, Ordering::Release);
                self.metrics.unwritten_bytes.set(0);
                if self.failure.borrow().is_some() && !self.sync_failed.load(Ordering::Acquire) {
                    tracing::warn!(dir = %self.dir.display(), "data dir writable again");
                    self.metrics.writable.set(1);
                    self.failure.send_replace(None);
                }
                if self.settings.fsync == Fsync::Always {
                    self.wake();
                }
                // Give the buffer back for the next appends, unless it grew large.
                if data.capacity() <= 1 << 20 {
                    data.clear();
                    let mut p = crate::lock(&self.pending);
                    if p.buf.is_empty() {
                        std::mem::swap(&mut p.buf, &mut data);
                    }
                }
                if w.segment_bytes >= self.settings.segment_bytes {
                    self.rotate(w)?;
                }
                Ok(())
            }
            Err(e) => {
                // What part of it reached the file is cut off again, so that the
                // segment never holds half an entry in its middle.
                let _ = w.file.set_len(w.segment_bytes);
                self.metrics.write_errors.inc();
                self.metrics.unwritten_bytes.set(data.len() as i64);
                w.retry = data;
                self.fail(format!("cannot write {}: {e}", segment_name(w.index)));
                Err(Failed)
            }
        }
    }

    fn fail(&self, why: String) {
        if self.failure.borrow().is_none() {
            tracing::error!(dir = %self.dir.display(), error = %why, "data dir failed: IAMATs are answered '?' and health is NOT_SERVING until it can be written again");
        }
        self.metrics.writable.set(0);
        self.failure.send_replace(Some(why));
    }

    /// Closes the current segment (left to the syncer to sync, unless `fsync = no`)
    /// and begins the next.
    fn rotate(&self, w: &mut Writer) -> Result<(), Failed> {
        let index = w.index + 1;
        match open_segment(
            &self.dir,
            index,
            &self.name,
            self.incarnation.load(Ordering::Relaxed),
        ) {
            Ok((file, head)) => {
                let old = std::mem::replace(&mut w.file, Arc::new(file));
                if self.settings.fsync != Fsync::No {
                    w.closed.push(old);
                    if self.settings.fsync == Fsync::Always {
                        self.wake();
                    }
                }
                w.index = index;
                w.segment_bytes = head;
                Ok(())
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                self.fail(format!("cannot create {}: {e}", segment_name(index)));
                Err(Failed)
            }
        }
    }

    fn sync_file(&self, file: &File, upto: u64) -> Result<(), Failed> {
        match file.sync_data() {
            Ok(()) => {
                self.metrics.fsyncs.inc();
                self.synced.send_if_modified(|s| {
                    let moved = upto > s.pos;
                    s.pos = s.pos.max(upto);
                    moved
                });
                Ok(())
            }
            Err(e) => {
                self.metrics.fsync_errors.inc();
                self.sync_failed.store(true, Ordering::Release);
                self.synced.send_modify(|s| s.failed = true);
                self.fail(format!("fdatasync failed: {e}"));
                Err(Failed)
            }
        }
    }

    /// Syncs everything written so far (the group commit: one call for every
    /// reply waiting now).
    fn sync(&self) -> Result<(), Failed> {
        let (closed, file, upto) = {
            let mut w = crate::lock(&self.writer);
            (
                std::mem::take(&mut w.closed),
                w.file.clone(),
                self.written.load(Ordering::Acquire),
            )
        };
        if upto <= self.synced.borrow().pos {
            return Ok(());
        }
        // Segments closed before `upto` was read hold the bytes before the current
        // one's: synced first, so `upto` is on disk when it is announced; and the
        // directory, which holds the new segment's name.
        if !closed.is_empty() {
            let _ = sync_dir(&self.dir);
        }
        for old in closed {
            if let Err(e) = old.sync_data() {
                self.metrics.fsync_errors.inc();
                self.sync_failed.store(true, Ordering::Release);
                self.synced.send_modify(|s| s.failed = true);
                self.fail(format!("fdatasync failed: {e}"));
                return Err(Failed);
            }
            self.metrics.fsyncs.inc();
        }
        self.sync_file(&file, upto)
    }

    /// Waits until everything up to `pos` is on disk (`fsync = always`).
    pub async fn wait_synced(&self, pos: u64) -> Result<(), Failed> {
        self.wake();
        let mut rx = self.synced.subscribe();
        match rx.wait_for(|s| s.pos >= pos || s.failed).await {
            Ok(s) if s.pos >= pos => Ok(()),
            _ => Err(Failed),
        }
    }

    fn wake(&self) {
        let (flag, cv) = &self.wake;
        *crate::lock(flag) = true;
        cv.notify_one();
    }

    /// The journal's thread: writes what is pending, syncs by policy, retries a
    /// failed disk. Returns when [`Journal::stop`] is called, after a last write
    /// and sync.
    pub fn run_syncer(self: Arc<Self>) {
        let mut last_sync = Instant::now();
        let mut last_retry = Instant::now();
        loop {
            {
                let (flag, cv) = &self.wake;
                let mut woken = crate::lock(flag);
                if !*woken {
                    woken = cv
                        .wait_timeout(woken, FLUSH_EVERY)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                *woken = false;
            }
            let stopping = self.stop.load(Ordering::Acquire);
            if self.refusing() {
                if (stopping || last_retry.elapsed() >= RETRY_EVERY)
                    && !self.sync_failed.load(Ordering::Acquire)
                {
                    last_retry = Instant::now();
                    let mut w = crate::lock(&self.writer);
                    let _ = self.write_pending(&mut w);
                }
            } else {
                let appended = self.appended();
                self.metrics
                    .unwritten_bytes
                    .set((appended - self.written.load(Ordering::Acquire)) as i64);
                let _ = self.write_through(appended);
            }
            let due = match self.settings.fsync {
                Fsync::Always => true,
                Fsync::EverySec => last_sync.elapsed() >= Duration::from_secs(1),
                Fsync::No => false,
            };
            // Even while a later write fails: what was written before it is synced,
            // and the replies waiting for that may go.
            if (due || stopping) && !self.sync_failed.load(Ordering::Acquire) {
                last_sync = Instant::now();
                let _ = self.sync();
            }
            if stopping {
                return;
            }
        }
    }

    /// Asks the journal's thread and the compactor to finish.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn update_dir_bytes(&self) {
        let bytes: u64 = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        self.metrics.dir_bytes.set(bytes as i64);
    }

    /// Whether the segments since the last snapshot outweigh it (and the minimum).
    fn compaction_due(&self) -> bool {
        let w = crate::lock(&self.writer);
        w.since_snapshot >= self.settings.compact_min_bytes.max(w.snapshot_bytes)
    }

    /// The compactor's loop: a snapshot whenever [`Journal::compaction_due`].
    pub fn run_compactor(self: Arc<Self>, replica: impl std::ops::Deref<Target = Replica>) {
        let mut last = Instant::now();
        while !self.stopped() {
            std::thread::sleep(FLUSH_EVERY * 10);
            if last.elapsed() < COMPACT_CHECK {
                continue;
            }
            last = Instant::now();
            self.update_dir_bytes();
            if self.refusing() || !self.compaction_due() {
                continue;
            }
            if let Err(e) = self.compact(&replica) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "compaction failed; the journal keeps growing until it works");
            }
        }
    }

    /// Writes a snapshot of `replica` and deletes the segments it covers.
    ///
    /// The current segment is closed first (index K): every entry appended before
    /// that is in a segment below K, and its change is in the table the snapshot
    /// reads; everything after is in segments from K on, which a restart replays
    /// over the snapshot (replaying a record the snapshot holds changes nothing). The
    /// floors are read after the segment is closed, so what they claim is in the
    /// snapshot or in those segments.
    pub fn compact(&self, replica: &Replica) -> std::io::Result<()> {
        let started = Instant::now();
        let index = {
            let mut w = crate::lock(&self.writer);
            self.write_pending(&mut w)
                .and_then(|()| self.rotate(&mut w))
                .map_err(|_| std::io::Error::other("the data dir cannot be written"))?;
            w.since_snapshot = 0;
            w.index
        };
        let tmp = self.dir.join(format!("{}.tmp", snapshot_name(index)));
        let mut file = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut buf = Vec::with_capacity(1 << 20);
        let (incarnation, last, floors) = replica.snapshot_floors();
        format::header(&mut buf, &self.name, incarnation, last);
        if let Some(key) = replica.evicted() {
            format::evicted(&mut buf, &key.encode());
        }
        let mut records = 0u64;
        let mut written = 0u64;
        let mut failed = None;
        replica.snapshot_records(|inc, seq, line| {
            format::put(&mut buf, inc, seq, line);
            records += 1;
            if buf.len() >= 1 << 20 && failed.is_none() {
                written += buf.len() as u64;
                failed = file.write_all(&buf).err();
                buf.clear();
                // Written back as it goes: a snapshot's worth of dirty pages would
                // make the kernel throttle every writer, the journal's among them.
                if written % (8 << 20) < (1 << 20) && failed.is_none() {
                    failed = file.flush().and_then(|()| file.get_ref().sync_data()).err();
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        format::floors(&mut buf, floors.iter().map(|(o, i, s)| (&**o, *i, *s)));
        format::end(&mut buf, records);
        file.write_all(&buf)?;
        written += buf.len() as u64;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let path = self.dir.join(snapshot_name(index));
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        let (segments, snapshots) = list(&self.dir)?;
        for (i, p) in segments.iter().chain(&snapshots) {
            if *i < index {
                std::fs::remove_file(p)?;
            }
        }
        crate::lock(&self.writer).snapshot_bytes = written;
        self.metrics.compactions.inc();
        self.update_dir_bytes();
        tracing::info!(
            snapshot = %path.display(),
            records,
            bytes = written,
            ms = started.elapsed().as_millis() as u64,
            "journal compacted"
        );
        Ok(())
    }
}

/// A new segment file, with its header written; and the header's length.
fn open_segment(
    dir: &Path,
    index: u64,
    name: &str,
    incarnation: u64,
) -> std::io::Result<(File, u64)> {
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(dir.join(segment_name(index)))?;
    let mut head = Vec::new();
    format::header(&mut head, name, incarnation, 0);
    file.write_all(&head)?;
    Ok((file, head.len() as u64))
}
