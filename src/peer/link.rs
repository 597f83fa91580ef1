//! Links to neighbours: which stream is live for each pair, its state, its send
//! queue, and the stream plumbing both ends share.
//!
//! Both neighbours dial each other as soon as they start, so a pair can briefly
//! hold two streams. The tie is broken the same way on both sides: the stream
//! dialled by the server whose name sorts first is kept. A new stream from the
//! same dialer as the live one replaces it (the dialer redialled because it lost
//! the old one, or restarted).

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, future::BoxFuture, stream};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Backbone;
use crate::{
    metrics::Metrics,
    peer::wire::{self, LinkMessage},
    proto::Floors,
    replica::{CaughtUp, Floor, LinkSync, SyncStep},
};

/// Why a link went down when the neighbour ended the stream cleanly.
pub const NEIGHBOUR_CLOSED: &str = "neighbour closed the stream";

/// Updates per message on the wire, at most (messages are also kept under a byte size).
pub const BATCH: usize = 4096;

/// What the link to one neighbour is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not dialling yet (the neighbour's dialer has not started, or has stopped).
    Down,
    /// Dialling the neighbour.
    Connecting,
    /// Waiting before dialling again.
    Backoff,
    /// A stream is live.
    Up,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Connecting => "connecting",
            LinkState::Backoff => "backoff",
            LinkState::Up => "up",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which end opened a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialer {
    Me,
    Peer,
}

/// Why a new stream was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum Superseded {
    /// A live stream was kept instead of the new one.
    #[error("link to {peer} already has a live stream dialled by {kept}")]
    Kept { peer: Arc<str>, kept: Arc<str> },
    /// The neighbour was removed from the herd file (a reload): its link is closed
    /// for good.
    #[error("{peer} is no longer a neighbour (the herd file was reloaded)")]
    Removed { peer: Arc<str> },
}

/// What waits in a link's queue: a live update (and its encoded size), or the end
/// marker of a catch-up, queued behind every forward it claims.
#[derive(Debug)]
pub enum Queued {
    /// An encoded update (shared by every queue it is in) and the bytes it takes in a message.
    Update(Bytes, usize),
    CaughtUp(CaughtUp),
}

/// What one stream's sending and receiving halves share.
#[derive(Debug)]
pub struct LinkShared {
    /// Bytes of updates queued and not yet taken by the stream.
    bytes: AtomicUsize,
    budget: usize,
    /// Updates dropped on a full queue: the stream repairs the link from floors.
    drops: AtomicU64,
    /// Set while a full queue is being reported, so it is logged once per episode.
    overflowing: AtomicBool,
    /// The neighbour's latest floor vector, for the sending half.
    floors: Mutex<Option<Vec<Floor>>>,
    wake: Notify,
    /// Set when a wait for this queue to drain ran out (or the stream ended): nobody
    /// waits for it again until it has drained to [`LinkShared::resumes`].
    waived: AtomicBool,
    /// Wakes those waiting for the queue to drain ([`Links::relief`]).
    drained: Notify,
}

impl LinkShared {
    fn new(budget: usize) -> LinkShared {
        LinkShared {
            bytes: AtomicUsize::new(0),
            budget,
            drops: AtomicU64::new(0),
            overflowing: AtomicBool::new(false),
            floors: Mutex::new(None),
            wake: Notify::new(),
            waived: AtomicBool::new(false),
            drained: Notify::new(),
        }
    }

    /// Whether producers should wait for this queue: it holds more than half its
    /// budget, and no wait for it has run out since it last drained.
    fn presses(&self) -> bool {
        self.bytes.load(Ordering::Acquire) > self.budget / 2 && !self.waived.load(Ordering::Acquire)
    }

    /// Whether a wait for this queue is over: it drained to a quarter of its budget,
    /// or it is not to be waited for.
    fn resumes(&self) -> bool {
        self.bytes.load(Ordering::Acquire) <= self.budget / 4 || self.waived.load(Ordering::Acquire)
    }

    /// The sending half took `size` bytes of updates off the queue.
    fn took(&self, size: usize) {
        let before = self.bytes.fetch_sub(size, Ordering::AcqRel);
        let low = self.budget / 4;
        if before > low && before - size <= low {
            self.waived.store(false, Ordering::Release);
            self.drained.notify_waiters();
        }
    }

    /// Nobody is to wait for this queue (its stream ended, or a wait ran out).
    fn waive(&self) {
        self.waived.store(true, Ordering::Release);
        self.drained.notify_waiters();
    }

    /// The neighbour sent its floors: the sending half catches it up from them.
    pub fn floors_received(&self, floors: Vec<Floor>) {
        *crate::lock(&self.floors) = Some(floors);
        self.wake.notify_one();
    }

    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::Acquire)
    }
}

/// The sending half of one stream: what the slot queues updates into.
#[derive(Debug, Clone)]
pub struct Sender {
    tx: mpsc::UnboundedSender<Queued>,
    shared: Arc<LinkShared>,
}

impl Sender {
    pub fn shared(&self) -> Arc<LinkShared> {
        self.shared.clone()
    }
}

#[derive(Debug)]
struct Active {
    id: u64,
    dialer: Dialer,
    sender: Sender,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct SlotInner {
    active: Option<Active>,
    next_id: u64,
    /// What the dialer is doing while no stream is live.
    dialing: LinkState,
    since: SystemTime,
    /// Removed from the herd file: no stream is adopted any more.
    retired: bool,
}

/// The link to one neighbour.
#[derive(Debug)]
pub struct LinkSlot {
    me: Arc<str>,
    peer: Arc<str>,
    inner: Mutex<SlotInner>,
    /// Whether a stream is live, for the flood decision without the lock.
    up: AtomicBool,
    state: watch::Sender<LinkState>,
    sent: AtomicU64,
    received: AtomicU64,
    metrics: Option<Arc<Metrics>>,
}

/// A snapshot of one link, for operators.
#[derive(Clone, Debug)]
pub struct LinkView {
    pub peer: Arc<str>,
    pub state: LinkState,
    pub since: SystemTime,
    pub sent: u64,
    pub received: u64,
    /// Encoded bytes of updates waiting to be sent on the live stream.
    pub queued_bytes: u64,
}

impl LinkSlot {
    fn new(me: Arc<str>, peer: Arc<str>, metrics: Option<Arc<Metrics>>) -> LinkSlot {
        LinkSlot {
            me,
            peer,
            inner: Mutex::new(SlotInner {
                active: None,
                next_id: 1,
                dialing: LinkState::Down,
                since: SystemTime::now(),
                retired: false,
            }),
            up: AtomicBool::new(false),
            state: watch::Sender::new(LinkState::Down),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn peer(&self) -> &Arc<str> {
        &self.peer
    }

    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        crate::lock(&self.inner)
    }

    fn publish(&self, inner: &mut SlotInner) {
        self.up.store(inner.active.is_some(), Ordering::Release);
        let state = if inner.active.is_some() {
            LinkState::Up
        } else {
            inner.dialing
        };
        let changed = self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        if changed {
            inner.since = SystemTime::now();
            if let Some(m) = &self.metrics {
                m.link_state(&self.peer, state.as_str());
            }
        }
    }

    /// Adopts a new stream unless the live one wins the tie. The old stream, if
    /// replaced, is cancelled. Returns the new stream's id.
    pub fn adopt(
        &self,
        dialer: Dialer,
        sender: Sender,
        cancel: CancellationToken,
    ) -> Result<u64, Superseded> {
        let mut inner = self.lock();
        if inner.retired {
            return Err(Superseded::Removed {
                peer: self.peer.clone(),
            });
        }
        let mut replaced = None;
        if let Some(live) = &inner.active {
            // The stream dialled by the server whose name sorts first wins.
            let me_first = self.me < self.peer;
            let new_wins = live.dialer == dialer || (dialer == Dialer::Me) == me_first;
            if !new_wins {
                let kept = match live.dialer {
                    Dialer::Me => self.me.clone(),
                    Dialer::Peer => self.peer.clone(),
                };
                return Err(Superseded::Kept {
                    peer: self.peer.clone(),
                    kept,
                });
            }
            if let Some(old) = inner.active.take() {
                old.cancel.cancel();
                replaced = Some(old.id);
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.active = Some(Active {
            id,
            dialer,
            sender,
            cancel,
        });
        self.publish(&mut inner);
        match replaced {
            // Routine at start (both sides dial) and on a redial: the link stayed up.
            Some(old) => {
                tracing::debug!(peer = %self.peer, old, link = id, dialer = ?dialer, "link replaced by a new stream")
            }
            None => tracing::info!(peer = %self.peer, link = id, dialer = ?dialer, "link up"),
        }
        Ok(id)
    }

    /// Ends stream `id` if it is still the live one.
    pub fn drop_link(&self, id: u64, reason: &str) {
        let mut inner = self.lock();
        if inner.active.as_ref().is_some_and(|a| a.id == id) {
            let mut tie_break = false;
            if let Some(old) = inner.active.take() {
                old.cancel.cancel();
                // The neighbour closing a stream that loses the tie is the neighbour
                // keeping the other one (both sides dial at start): routine.
                let me_first = self.me < self.peer;
                tie_break = reason == NEIGHBOUR_CLOSED && (old.dialer == Dialer::Me) != me_first;
            }
            self.publish(&mut inner);
            if tie_break {
                tracing::debug!(peer = %self.peer, link = id, reason, "link closed for the stream the neighbour keeps");
            } else {
                tracing::info!(peer = %self.peer, link = id, reason, "link down");
            }
        }
    }

    /// Records what the dialer is doing (shown while no stream is live).
    pub fn set_dialing(&self, state: LinkState) {
        let mut inner = self.lock();
        inner.dialing = state;
        self.publish(&mut inner);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The live stream's queue, if producers should wait for it to drain.
    fn pressing(&self) -> Option<Arc<LinkShared>> {
        if !self.is_up() {
            return None;
        }
        let inner = self.lock();
        let shared = &inner.active.as_ref()?.sender.shared;
        shared.presses().then(|| shared.clone())
    }

    /// Watches the state, e.g. to wait until the link is no longer up.
    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    /// Queues an update for the neighbour, never waiting. When the updates queued
    /// for it would pass the byte budget, the update is dropped and the stream
    /// repairs the link from the neighbour's floors (never the whole table).
    pub fn send(&self, update: Bytes) -> bool {
        let mut inner = self.lock();
        let Some(active) = &inner.active else {
            return false;
        };
        let shared = &active.sender.shared;
        let size = wire::framed_len(update.len());
        if shared.bytes.load(Ordering::Acquire) + size > shared.budget {
            shared.drops.fetch_add(1, Ordering::AcqRel);
            if let Some(m) = &self.metrics {
                m.queue_drop(&self.peer);
            }
            if !shared.overflowing.swap(true, Ordering::AcqRel) {
                tracing::warn!(peer = %self.peer, link = active.id, budget = shared.budget, "neighbour's queue is full; dropping updates, the link will be repaired from floors");
            }
            shared.wake.notify_one();
            return false;
        }
        shared.bytes.fetch_add(size, Ordering::AcqRel);
        match active.sender.tx.send(Queued::Update(update, size)) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                let id = active.id;
                if let Some(old) = inner.active.take() {
                    old.cancel.cancel();
                }
                self.publish(&mut inner);
                tracing::info!(peer = %self.peer, link = id, reason = "stream closed", "link down");
                false
            }
        }
    }

    pub fn count_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn view(&self) -> LinkView {
        let inner = self.lock();
        LinkView {
            peer: self.peer.clone(),
            state: *self.state.borrow(),
            since: inner.since,
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            queued_bytes: inner
                .active
                .as_ref()
                .map_or(0, |a| a.sender.shared.bytes.load(Ordering::Relaxed) as u64),
        }
    }

    /// Cancels the live stream, if any (shutdown).
    pub fn close(&self) {
        self.close_for("shutting down");
    }

    fn close_for(&self, reason: &str) {
        let mut inner = self.lock();
        if let Some(old) = inner.active.take() {
            old.cancel.cancel();
            tracing::info!(peer = %self.peer, link = old.id, reason, "link down");
        }
        inner.dialing = LinkState::Down;
        self.publish(&mut inner);
    }

    /// Closes the link for good: the neighbour was removed from the herd file. A
    /// stream being set up now is refused when it comes to be adopted.
    pub fn retire(&self) {
        self.lock().retired = true;
        self.close_for("removed from the herd file");
    }
}

type Slots = BTreeMap<Arc<str>, Arc<LinkSlot>>;

/// The links of one server, one per neighbour; neighbours come and go when the
/// herd file is reloaded (`crate::membership`).
#[derive(Debug)]
pub struct Links {
    me: Arc<str>,
    metrics: Arc<Metrics>,
    slots: std::sync::RwLock<Slots>,
}

impl Links {
    pub fn new(me: &Arc<str>, neighbours: &[Arc<str>], metrics: Arc<Metrics>) -> Links {
        let links = Links {
            me: me.clone(),
            metrics,
            slots: Default::default(),
        };
        for n in neighbours {
            links.add(n);
        }
        links
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Slots> {
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Slots> {
        self.slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot of a new neighbour (the existing one if it is one already).
    pub fn add(&self, peer: &Arc<str>) -> Arc<LinkSlot> {
        self.write()
            .entry(peer.clone())
            .or_insert_with(|| {
                Arc::new(LinkSlot::new(
                    self.me.clone(),
                    peer.clone(),
                    Some(self.metrics.clone()),
                ))
            })
            .clone()
    }

    /// Removes a neighbour's slot and closes its link for good.
    pub fn remove(&self, peer: &str) -> Option<Arc<LinkSlot>> {
        let slot = self.write().remove(peer)?;
        slot.retire();
        Some(slot)
    }

    pub fn get(&self, peer: &str) -> Option<Arc<LinkSlot>> {
        self.read().get(peer).cloned()
    }

    /// Every slot as of now, in name order.
    pub fn iter(&self) -> std::vec::IntoIter<Arc<LinkSlot>> {
        self.read()
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub fn is_up(&self, peer: &str) -> bool {
        self.read().get(peer).is_some_and(|s| s.is_up())
    }

    /// Whether any neighbour's link is up (an own IAMAT goes to every live one).
    pub fn any_up(&self) -> bool {
        self.read().values().any(|s| s.is_up())
    }

    pub fn send(&self, peer: &str, update: Bytes) -> bool {
        self.read().get(peer).is_some_and(|s| s.send(update))
    }

    pub fn close_all(&self) {
        for slot in self.iter() {
            slot.close();
        }
    }

    /// The herd's backpressure: the wait, at most `wait` in all, until every
    /// neighbour's queue that is past half its budget (of the neighbours `which`
    /// picks) has drained to a quarter; None when no queue presses (or `wait` is 0).
    ///
    /// A client connection that stored IAMATs, or a neighbour's stream whose updates
    /// were forwarded, waits on it before it reads more, so that a server answers no
    /// faster than its neighbours take updates (its relays' streams stop reading, and
    /// HTTP/2's flow control carries the wait back to the servers that feed them). A
    /// queue that does not drain in time is waived: nobody waits for it again until
    /// it has drained, so a neighbour that hangs costs one wait, not one per read; its
    /// queue fills, drops and is repaired from floors, as without the wait. Bounded,
    /// so waits that depend on one another (a cycle of full queues) end too.
    pub fn relief(
        &self,
        which: impl Fn(&str) -> bool,
        wait: Duration,
    ) -> Option<impl Future<Output = ()> + Send + '_> {
        if wait.is_zero() {
            return None;
        }
        let pressing: Vec<(Arc<str>, Arc<LinkShared>)> = self
            .read()
            .values()
            .filter(|s| which(&s.peer))
            .filter_map(|s| s.pressing().map(|q| (s.peer.clone(), q)))
            .collect();
        if pressing.is_empty() {
            return None;
        }
        Some(async move {
            let started = tokio::time::Instant::now();
            let deadline = started + wait;
            for (peer, queue) in pressing {
                self.metrics.queue_waits_of(&peer).inc();
                loop {
                    let drained = queue.drained.notified();
                    tokio::pin!(drained);
                    // Registered before the check, so a drain in between is not missed.
                    drained.as_mut().enable();
                    if queue.resumes() {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, drained).await.is_err() {
                        if !queue.resumes() {
                            queue.waive();
                            self.metrics.queue_wait_timeouts_of(&peer).inc();
                            tracing::warn!(peer = %peer, wait_ms = wait.as_millis() as u64, "neighbour's queue did not drain in time; not waiting for it until it has");
                        }
                        break;
                    }
                }
            }
            self.metrics
                .queue_wait_seconds
                .inc_by(started.elapsed().as_secs_f64());
        })
    }

    /// The links as of now, read once for a whole flood decision and its sends (one
    /// lock for all of them; a reload waits until it is dropped).
    pub fn read_all(&self) -> LinksRead<'_> {
        LinksRead(self.read())
    }
}

/// [`Links::read_all`]: the slots, read-locked.
pub struct LinksRead<'a>(std::sync::RwLockReadGuard<'a, Slots>);

impl LinksRead<'_> {
    pub fn is_up(&self, peer: &str) -> bool {
        self.0.get(peer).is_some_and(|s| s.is_up())
    }

    pub fn send(&self, peer: &str, update: Bytes) -> bool {
        self.0.get(peer).is_some_and(|s| s.send(update))
    }
}

/// Makes one stream's two halves: the [`Sender`] to adopt into the slot, and what
/// this end sends on the wire. Once `start` fires (the stream was adopted; dropping
/// it ends the stream unsent) it sends this server's floors, then every queued
/// update, batched, interleaved with the catch-ups that the neighbour's floors
/// (or dropped updates) call for ([`LinkSync`]), and its floors again every
/// anti-entropy interval. It ends when `cancel` fires.
pub fn outbound(
    backbone: Arc<Backbone>,
    peer: Arc<str>,
    start: impl Future<Output = bool> + Send + 'static,
    cancel: CancellationToken,
) -> (Sender, impl Stream<Item = LinkMessage> + Send + 'static) {
    let (tx, rx) = mpsc::unbounded_channel();
    let config = backbone.config().clone();
    let shared = Arc::new(LinkShared::new(config.queue_bytes));
    let sender = Sender {
        tx: tx.clone(),
        shared: shared.clone(),
    };
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.anti_entropy_interval,
        config.anti_entropy_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let out = Outgoing {
        start: Some(Box::pin(start)),
        backbone,
        peer,
        rx,
        tx,
        shared,
        sync: LinkSync::default(),
        held: None,
        floors_sent: false,
        sync_turn: true,
        tick,
        batch_bytes: config.max_message_bytes / 2,
    };
    let stream = stream::unfold(out, |mut out| async move {
        let message = out.next_message().await?;
        Some((message, out))
    })
    .take_until(cancel.cancelled_owned());
    (sender, stream)
}

struct Outgoing {
    /// Resolves once the stream's fate is known: true when it was adopted.
    start: Option<BoxFuture<'static, bool>>,
    backbone: Arc<Backbone>,
    peer: Arc<str>,
    rx: mpsc::UnboundedReceiver<Queued>,
    /// For the end markers of catch-ups, which queue behind live forwards.
    tx: mpsc::UnboundedSender<Queued>,
    shared: Arc<LinkShared>,
    sync: LinkSync,
    /// Taken from the queue but left for the next message (it would not fit).
    held: Option<Queued>,
    floors_sent: bool,
    /// Whether the catch-up goes before the queue next time (they take turns, so
    /// that neither starves the other and the queue keeps draining).
    sync_turn: bool,
    tick: tokio::time::Interval,
    batch_bytes: usize,
}

impl Outgoing {
    fn floors_message(&self) -> LinkMessage {
        let floors = self.backbone.replica().floors();
        LinkMessage {
            floors: Some(Floors {
                floors: floors.iter().map(Floor::to_proto).collect(),
                evicted: self
                    .backbone
                    .replica()
                    .evicted()
                    .as_ref()
                    .map(evicted_proto),
            }),
            ..LinkMessage::default()
        }
    }

    async fn next_message(&mut self) -> Option<LinkMessage> {
        use futures_util::FutureExt as _;
        if let Some(start) = self.start.take()
            && !start.await
        {
            return None;
        }
        if !self.floors_sent {
            self.floors_sent = true;
            return Some(self.floors_message());
        }
        let metrics = self.backbone.metrics().clone();
        loop {
            // Anti-entropy, even while the queue is busy.
            if self.tick.tick().now_or_never().is_some() {
                metrics.anti_entropy_rounds.inc();
                return Some(self.floors_message());
            }
            if let Some(floors) = crate::lock(&self.shared.floors).take() {
                self.sync.floors(floors);
            }
            let queue_empty = self.held.is_none() && self.rx.is_empty();
            if self.sync.busy(self.shared.drops()) && (self.sync_turn || queue_empty) {
                self.sync_turn = false;
                let (tx, shared) = (&self.tx, &self.shared);
                let step = self.sync.step(
                    self.backbone.replica(),
                    &self.peer,
                    self.batch_bytes,
                    || shared.drops(),
                    |marker| {
                        // The receiver is ours: it lives as long as this stream.
                        let _ = tx.send(Queued::CaughtUp(marker));
                    },
                );
                match step {
                    SyncStep::Records(updates) => {
                        // Nothing leaves before its journal entry is written (see
                        // `crate::durable`); a failed disk only delays nothing here.
                        if let Some(j) = self.backbone.replica().journal() {
                            let _ = j.write_through(j.appended());
                        }
                        let updates: Vec<Bytes> = updates
                            .iter()
                            .map(|u| Bytes::from(prost::Message::encode_to_vec(u)))
                            .collect();
                        let bytes: usize = updates.iter().map(|u| wire::framed_len(u.len())).sum();
                        metrics.catch_up_sent(&self.peer, updates.len() as u64, bytes as u64);
                        return Some(LinkMessage {
                            updates,
                            ..LinkMessage::default()
                        });
                    }
                    SyncStep::Started { full } => {
                        self.shared.overflowing.store(false, Ordering::Release);
                        metrics.catch_up_started(&self.peer, full);
                        if full {
                            tracing::warn!(peer = %self.peer, "neighbour's floors claim more than this server made; sending the whole table");
                        }
                    }
                    SyncStep::Ended {
                        clean,
                        records,
                        bytes,
                    } => {
                        if !clean {
                            metrics.catch_ups_aborted.inc();
                        }
                        tracing::debug!(peer = %self.peer, clean, records, bytes, "catch-up ended");
                    }
                    SyncStep::Idle => {}
                }
                continue;
            }
            self.sync_turn = true;
            let first = match self.held.take() {
                Some(q) => q,
                None => match self.rx.try_recv() {
                    Ok(q) => q,
                    Err(_) if self.sync.busy(self.shared.drops()) => continue,
                    Err(_) => tokio::select! {
                        q = self.rx.recv() => q?,
                        _ = self.tick.tick() => {
                            metrics.anti_entropy_rounds.inc();
                            return Some(self.floors_message());
                        }
                        _ = self.shared.wake.notified() => continue,
                    },
                },
            };
            return Some(self.batch_from(first));
        }
    }

    /// A message of queued items from `first` on, under the batch size; an end
    /// marker closes it (the receiver handles it after the updates).
    fn batch_from(&mut self, first: Queued) -> LinkMessage {
        let mut message = LinkMessage::default();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Queued::Update(update, size) => {
                    if !message.updates.is_empty()
                        && (bytes + size > self.batch_bytes || message.updates.len() >= BATCH)
                    {
                        self.held = Some(Queued::Update(update, size));
                        break;
                    }
                    bytes += size;
                    message.updates.push(update);
                }
                Queued::CaughtUp(floors) => {
                    // Read now, after the catch-up: it covers what was evicted during it.
                    message.caught_up = Some(Floors {
                        floors: floors.iter().map(Floor::to_proto).collect(),
                        evicted: self
                            .backbone
                            .replica()
                            .evicted()
                            .as_ref()
                            .map(evicted_proto),
                    });
                    break;
                }
            }
            next = self.rx.try_recv().ok();
        }
        self.shared.took(bytes);
        message
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        // The stream ended: whoever waits for its queue must not wait any longer.
        self.shared.waive();
    }
}

/// A watermark as it travels with floors.
pub fn evicted_proto(key: &crate::store::EvictKey) -> crate::proto::Evicted {
    crate::proto::Evicted {
        seconds: key.time.seconds_digits().to_owned(),
        nanos: key.time.nanos(),
        client_id: Bytes::copy_from_slice(&key.client_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::BackboneConfig, replica::Replica};

    fn slot(me: &str, peer: &str) -> LinkSlot {
        LinkSlot::new(me.into(), peer.into(), None)
    }

    fn sender(budget: usize) -> (Sender, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(LinkShared::new(budget));
        (Sender { tx, shared }, rx)
    }

    fn adopt(s: &LinkSlot, d: Dialer) -> (Result<u64, Superseded>, CancellationToken) {
        let c = CancellationToken::new();
        (s.adopt(d, sender(1).0, c.clone()), c)
    }

    #[test]
    fn both_sides_keep_the_stream_dialled_by_the_first_name() {
        // Goloman < Hands: the stream Goloman dialled wins on both sides, in either order.
        let g = slot("Goloman", "Hands");
        let (_, from_hands) = adopt(&g, Dialer::Peer);
        let (mine, _) = adopt(&g, Dialer::Me);
        assert!(mine.is_ok() && from_hands.is_cancelled());

        let g = slot("Goloman", "Hands");
        adopt(&g, Dialer::Me).0.unwrap();
        assert!(adopt(&g, Dialer::Peer).0.is_err());

        let h = slot("Hands", "Goloman");
        let (_, mine) = adopt(&h, Dialer::Me);
        let (theirs, _) = adopt(&h, Dialer::Peer);
        assert!(theirs.is_ok() && mine.is_cancelled());

        let h = slot("Hands", "Goloman");
        adopt(&h, Dialer::Peer).0.unwrap();
        assert!(adopt(&h, Dialer::Me).0.is_err());
    }

    #[test]
    fn a_redial_by_the_same_dialer_replaces_the_live_stream() {
        let g = slot("Goloman", "Hands");
        let (first, old) = adopt(&g, Dialer::Me);
        let (second, _) = adopt(&g, Dialer::Me);
        assert!(old.is_cancelled());
        assert_ne!(first.unwrap(), second.unwrap());
        let h = slot("Hands", "Goloman");
        let (_, old) = adopt(&h, Dialer::Peer);
        assert!(adopt(&h, Dialer::Peer).0.is_ok() && old.is_cancelled());
    }

    #[test]
    fn only_the_live_stream_can_take_the_link_down() {
        let g = slot("Goloman", "Hands");
        let (a, _) = adopt(&g, Dialer::Me);
        let (b, _) = adopt(&g, Dialer::Me);
        g.drop_link(a.unwrap(), "stale");
        assert!(g.is_up());
        g.drop_link(b.unwrap(), "gone");
        assert!(!g.is_up());
        assert_eq!(*g.watch().borrow(), LinkState::Down);
    }

    #[test]
    fn a_retired_slot_closes_its_stream_and_adopts_none() {
        let g = slot("Goloman", "Hands");
        let (_, live) = adopt(&g, Dialer::Me);
        g.retire();
        assert!(live.is_cancelled() && !g.is_up());
        assert!(matches!(
            adopt(&g, Dialer::Peer).0,
            Err(Superseded::Removed { .. })
        ));
    }

    #[test]
    fn membership_adds_and_removes_slots_series_and_the_flood_plan() {
        let b = backbone("Goloman", "Hands");
        let change = b.set_membership(
            vec!["Goloman".into(), "Hands".into(), "Zed".into()],
            vec!["Zed".into()],
        );
        assert_eq!(change.added, [Arc::<str>::from("Zed")]);
        assert_eq!(change.removed, [Arc::<str>::from("Hands")]);
        assert!(b.links().get("Hands").is_none() && b.links().get("Zed").is_some());
        assert_eq!(b.replica().neighbours(), [Arc::<str>::from("Zed")]);
        let text = b.metrics().render();
        assert!(text.contains(r#"neighbour="Zed""#) && !text.contains(r#"neighbour="Hands""#));
        assert!(b.members().listed.iter().any(|m| &**m == "Zed"));
    }

    fn update(id: &str) -> Bytes {
        Bytes::from(prost::Message::encode_to_vec(&crate::proto::Update {
            client_id: bytes::Bytes::copy_from_slice(id.as_bytes()),
            ..crate::proto::Update::default()
        }))
    }

    #[test]
    fn a_full_queue_drops_by_bytes_and_asks_for_a_repair() {
        let g = slot("Goloman", "Hands");
        let size = wire::framed_len(update("abcd").len());
        let (sender, mut rx) = sender(size * 2);
        let cancel = CancellationToken::new();
        g.adopt(Dialer::Me, sender.clone(), cancel.clone()).unwrap();
        assert!(g.send(update("abcd")));
        assert!(g.send(update("abcd")));
        assert!(!g.send(update("abcd")), "a third would pass the budget");
        assert_eq!(sender.shared.drops(), 1, "a repair is owed");
        assert!(!cancel.is_cancelled() && g.is_up(), "the link stays up");
        assert_eq!(g.view().sent, 2);
        assert!(matches!(rx.try_recv(), Ok(Queued::Update(_, s)) if s == size));
    }

    fn backbone(name: &str, peer: &str) -> Arc<Backbone> {
        let replica = Replica::new(name.into(), 1, vec![peer.into()]);
        let config = BackboneConfig {
            anti_entropy_interval: std::time::Duration::from_secs(3600),
            queue_bytes: 64 * 1024,
            ..BackboneConfig::default()
        };
        Arc::new(Backbone::new(replica, config, Arc::new(Metrics::new(name))))
    }

    fn ids(m: &LinkMessage) -> Vec<String> {
        m.updates
            .iter()
            .map(|u| String::from_utf8_lossy(&wire::decode(u).unwrap().client_id).into_owned())
            .collect()
    }

    fn iamat(b: &Backbone, id: &str, time: &str) {
        let line = format!("IAMAT {id} +1+1 {time}");
        let crate::wire::Command::IAmAt(cmd) =
            crate::wire::parse(line.as_bytes(), usize::MAX).unwrap()
        else {
            panic!()
        };
        let record = crate::store::Record::from_iamat("Goloman", b"+0.000000000", &cmd);
        let applied = b.replica().iamat(record, &cmd.client_time, true).unwrap();
        b.flood_own(applied);
    }

    #[tokio::test]
    async fn the_stream_sends_floors_then_a_catch_up_from_the_neighbours_floors() {
        let b = backbone("Goloman", "Hands");
        iamat(&b, "a", "1");
        iamat(&b, "b", "1");
        iamat(&b, "c", "1");
        let cancel = CancellationToken::new();
        let (sender, out) = outbound(b.clone(), "Hands".into(), async { true }, cancel.clone());
        let shared = sender.shared();
        let slot = b.links().get("Hands").unwrap().clone();
        slot.adopt(Dialer::Me, sender, cancel.clone()).unwrap();
        let mut out = Box::pin(out);
        let first = out.next().await.unwrap();
        let floors = first.floors.expect("floors first");
        assert_eq!(floors.floors.len(), 1);
        assert_eq!(floors.floors[0].seq, 3);
        // Hands has the first of them: the catch-up sends the other two, then its end.
        let incarnation = b.replica().incarnation();
        shared.floors_received(vec![Floor {
            origin: "Goloman".into(),
            incarnation,
            seq: 1,
            above: vec![],
        }]);
        let m = out.next().await.unwrap();
        assert_eq!(ids(&m), ["b", "c"]);
        // A live update during the catch-up goes ahead of its end.
        iamat(&b, "live", "2");
        let m = out.next().await.unwrap();
        assert_eq!(ids(&m), ["live"]);
        let done = match m.caught_up {
            Some(done) => done,
            None => {
                let m = out.next().await.unwrap();
                assert!(m.updates.is_empty(), "{m:?}");
                m.caught_up.expect("the end follows the live update")
            }
        };
        assert_eq!(done.floors[0].seq, 3, "the floor at the start");
        cancel.cancel();
        assert!(out.next().await.is_none());
    }

    #[tokio::test]
    async fn dropped_updates_are_repaired_from_floors_not_the_whole_table() {
        let b = backbone("Goloman", "Hands");
        let cancel = CancellationToken::new();
        let (sender, out) = outbound(b.clone(), "Hands".into(), async { true }, cancel.clone());
        let shared = sender.shared();
        let slot = b.links().get("Hands").unwrap().clone();
        slot.adopt(Dialer::Me, sender, cancel.clone()).unwrap();
        let mut out = Box::pin(out);
        assert!(out.next().await.unwrap().floors.is_some());
        let incarnation = b.replica().incarnation();
        shared.floors_received(vec![]);
        // Nothing to send: an empty end.
        let m = out.next().await.unwrap();
        assert!(m.updates.is_empty() && m.caught_up.is_some());
        // Fill the queue past its budget: the rest is dropped.
        let mut n = 0;
        while shared.drops() == 0 {
            iamat(&b, &format!("c{n}"), "1");
            n += 1;
        }
        // Hands says it has the first 10; the repair sends the others once, and
        // the queue's copies come first.
        shared.floors_received(vec![Floor {
            origin: "Goloman".into(),
            incarnation,
            seq: 10,
            above: vec![],
        }]);
        let mut got = std::collections::BTreeMap::<String, usize>::new();
        let mut ended = false;
        while !ended {
            let m = out.next().await.unwrap();
            for id in ids(&m) {
                *got.entry(id).or_default() += 1;
            }
            ended = m.caught_up.is_some();
        }
        assert_eq!(got.len(), n, "every record went out");
        assert!(!got.contains_key("c0") || got["c0"] == 1);
        let total: usize = got.values().sum();
        assert!(total < 2 * n, "no whole table on top: {total} for {n}");
    }

    #[tokio::test]
    async fn a_stream_that_is_not_adopted_sends_nothing() {
        let b = backbone("Goloman", "Hands");
        let (_sender, out) = outbound(b, "Hands".into(), async { false }, CancellationToken::new());
        assert_eq!(Box::pin(out).next().await.map(|m| ids(&m)), None);
    }
}
