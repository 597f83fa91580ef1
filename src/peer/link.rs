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
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::SystemTime,
};

use futures_util::{Stream, StreamExt as _, future::BoxFuture, stream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    proto::{LinkMessage, Update},
};

/// Updates waiting for one neighbour. When a neighbour falls this far behind, new
/// updates are dropped and the stream sends a fresh catch-up instead (memory stays
/// bounded and nothing is lost).
pub const QUEUE: usize = 65_536;
/// Why a link went down when the neighbour ended the stream cleanly.
pub const NEIGHBOUR_CLOSED: &str = "neighbour closed the stream";

/// Updates per message on the wire.
pub const BATCH: usize = 256;

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

/// A live stream was kept instead of the new one.
#[derive(Debug, thiserror::Error)]
#[error("link to {peer} already has a live stream dialled by {kept}")]
pub struct Superseded {
    pub peer: Arc<str>,
    pub kept: Arc<str>,
}

/// The sending half of one stream: what the slot queues updates into.
#[derive(Debug, Clone)]
pub struct Sender {
    tx: mpsc::Sender<Update>,
    /// Set when an update could not be queued: the stream owes a full catch-up.
    resync: Arc<AtomicBool>,
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
}

/// The link to one neighbour.
#[derive(Debug)]
pub struct LinkSlot {
    me: Arc<str>,
    peer: Arc<str>,
    inner: Mutex<SlotInner>,
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
    /// Updates waiting to be sent on the live stream.
    pub queued: u64,
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
            }),
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
                return Err(Superseded {
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
        self.lock().active.is_some()
    }

    /// Watches the state, e.g. to wait until the link is no longer up.
    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    /// Queues an update for the neighbour, never waiting. When the neighbour has
    /// fallen a whole queue behind, the update is dropped and the stream owes it a
    /// fresh catch-up, which carries the dropped update's record too.
    pub fn send(&self, update: Update) -> bool {
        let mut inner = self.lock();
        let Some(active) = &inner.active else {
            return false;
        };
        match active.sender.tx.try_send(update) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !active.sender.resync.swap(true, Ordering::AcqRel) {
                    tracing::warn!(peer = %self.peer, link = active.id, "neighbour fell a whole queue behind; a fresh catch-up will follow");
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
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
            queued: inner.active.as_ref().map_or(0, |a| {
                (a.sender.tx.max_capacity() - a.sender.tx.capacity()) as u64
            }),
        }
    }

    /// Cancels the live stream, if any (shutdown).
    pub fn close(&self) {
        let mut inner = self.lock();
        if let Some(old) = inner.active.take() {
            old.cancel.cancel();
            tracing::info!(peer = %self.peer, link = old.id, reason = "shutting down", "link down");
        }
        inner.dialing = LinkState::Down;
        self.publish(&mut inner);
    }
}

/// The links of one server, one per neighbour.
#[derive(Debug)]
pub struct Links {
    slots: BTreeMap<Arc<str>, Arc<LinkSlot>>,
}

impl Links {
    pub fn new(me: &Arc<str>, neighbours: &[Arc<str>], metrics: Arc<Metrics>) -> Links {
        Links {
            slots: neighbours
                .iter()
                .map(|n| {
                    let slot = LinkSlot::new(me.clone(), n.clone(), Some(metrics.clone()));
                    (n.clone(), Arc::new(slot))
                })
                .collect(),
        }
    }

    pub fn get(&self, peer: &str) -> Option<&Arc<LinkSlot>> {
        self.slots.get(peer)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<LinkSlot>> {
        self.slots.values()
    }

    pub fn is_up(&self, peer: &str) -> bool {
        self.slots.get(peer).is_some_and(|s| s.is_up())
    }

    /// Whether any neighbour's link is up (an own IAMAT goes to every live one).
    pub fn any_up(&self) -> bool {
        self.slots.values().any(|s| s.is_up())
    }

    pub fn send(&self, peer: &str, update: Update) -> bool {
        self.slots.get(peer).is_some_and(|s| s.send(update))
    }

    pub fn close_all(&self) {
        for slot in self.slots.values() {
            slot.close();
        }
    }
}

/// The records one end sends a neighbour to catch it up, in parts: `part(i)` is
/// the i-th part (one store shard, as updates), None past the last.
pub type CatchUp = Arc<dyn Fn(usize) -> Option<Vec<Update>> + Send + Sync>;

/// Makes one stream's two halves: the [`Sender`] to adopt into the slot, and what
/// this end sends on the wire. Once `start` fires (the stream was adopted; dropping
/// it ends the stream unsent) it sends a catch-up, every record it holds part by
/// part, then every queued update, batched, and another whole catch-up whenever
/// updates had to be dropped. It ends when `cancel` fires.
pub fn outbound(
    catch_up: CatchUp,
    start: impl Future<Output = bool> + Send + 'static,
    cancel: CancellationToken,
) -> (Sender, impl Stream<Item = LinkMessage> + Send + 'static) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let resync = Arc::new(AtomicBool::new(false));
    let sender = Sender {
        tx,
        resync: resync.clone(),
    };
    let out = Outgoing {
        start: Some(Box::pin(start)),
        catch_up,
        next_part: Some(0),
        pending: Vec::new().into_iter(),
        rx,
        resync,
    };
    let stream = stream::unfold(out, |mut out| async move {
        let batch = out.next_batch().await?;
        Some((LinkMessage { updates: batch }, out))
    })
    .take_until(cancel.cancelled_owned());
    (sender, stream)
}

struct Outgoing {
    /// Resolves once the stream's fate is known: true when it was adopted.
    start: Option<BoxFuture<'static, bool>>,
    catch_up: CatchUp,
    /// The next catch-up part to send, while catching up.
    next_part: Option<usize>,
    pending: std::vec::IntoIter<Update>,
    rx: mpsc::Receiver<Update>,
    resync: Arc<AtomicBool>,
}

impl Outgoing {
    async fn next_batch(&mut self) -> Option<Vec<Update>> {
        if let Some(start) = self.start.take()
            && !start.await
        {
            return None;
        }
        loop {
            if let Some(part) = self.next_part {
                if self.pending.len() > 0 {
                    return Some(self.pending.by_ref().take(BATCH).collect());
                }
                match (self.catch_up)(part) {
                    Some(updates) => {
                        self.pending = updates.into_iter();
                        self.next_part = Some(part + 1);
                    }
                    None => self.next_part = None,
                }
                continue;
            }
            // Only between catch-ups, so that each one finishes even under overload.
            if self.resync.swap(false, Ordering::AcqRel) {
                // The catch-up carries every queued update's record (each was stored
                // before it was queued): drop the queue, or it would stay full and
                // owe a catch-up forever.
                while self.rx.try_recv().is_ok() {}
                self.next_part = Some(0);
                continue;
            }
            let first = self.rx.recv().await?;
            let mut batch = Vec::with_capacity(BATCH.min(self.rx.len() + 1));
            batch.push(first);
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(u) => batch.push(u),
                    Err(_) => break,
                }
            }
            return Some(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(me: &str, peer: &str) -> LinkSlot {
        LinkSlot::new(me.into(), peer.into(), None)
    }

    fn sender(capacity: usize) -> (Sender, mpsc::Receiver<Update>) {
        let (tx, rx) = mpsc::channel(capacity);
        let resync = Arc::new(AtomicBool::new(false));
        (Sender { tx, resync }, rx)
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
    fn a_full_queue_drops_the_update_and_asks_for_a_catch_up() {
        let g = slot("Goloman", "Hands");
        let (sender, _rx) = sender(1);
        let cancel = CancellationToken::new();
        g.adopt(Dialer::Me, sender.clone(), cancel.clone()).unwrap();
        assert!(g.send(Update::default()));
        assert!(!g.send(Update::default()));
        assert!(sender.resync.load(Ordering::Acquire), "a catch-up is owed");
        assert!(!cancel.is_cancelled() && g.is_up(), "the link stays up");
        assert_eq!(g.view().sent, 1);
    }

    fn update(id: &str) -> Update {
        Update {
            client_id: bytes::Bytes::copy_from_slice(id.as_bytes()),
            ..Update::default()
        }
    }

    fn ids(m: &LinkMessage) -> Vec<String> {
        m.updates
            .iter()
            .map(|u| String::from_utf8_lossy(&u.client_id).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn the_stream_catches_up_part_by_part_then_sends_the_queue() {
        let parts = [vec!["a", "b"], vec![], vec!["c"]];
        let catch_up: CatchUp = Arc::new(move |i| {
            parts
                .get(i)
                .map(|p| p.iter().map(|id| update(id)).collect())
        });
        let cancel = CancellationToken::new();
        let (start_tx, start_rx) = tokio::sync::oneshot::channel();
        let (sender, out) = outbound(
            catch_up,
            async move { start_rx.await.unwrap_or(false) },
            cancel.clone(),
        );
        let mut out = Box::pin(out);
        sender.tx.try_send(update("live")).unwrap();
        start_tx.send(true).unwrap();
        assert_eq!(ids(&out.next().await.unwrap()), ["a", "b"]);
        assert_eq!(ids(&out.next().await.unwrap()), ["c"]);
        assert_eq!(ids(&out.next().await.unwrap()), ["live"]);
        // Dropped updates: a whole catch-up again, which stands for what was queued
        // too (every queued update's record is in the store), then live updates.
        sender.resync.store(true, Ordering::Release);
        sender.tx.try_send(update("queued")).unwrap();
        assert_eq!(ids(&out.next().await.unwrap()), ["a", "b"]);
        assert_eq!(ids(&out.next().await.unwrap()), ["c"]);
        sender.tx.try_send(update("after")).unwrap();
        assert_eq!(ids(&out.next().await.unwrap()), ["after"]);
        cancel.cancel();
        assert!(out.next().await.is_none());
    }

    #[tokio::test]
    async fn a_catch_up_owed_for_a_full_queue_empties_the_queue() {
        let catch_up: CatchUp = Arc::new(|i| (i == 0).then(|| vec![update("all")]));
        let cancel = CancellationToken::new();
        let (sender, out) = outbound(catch_up, async { true }, cancel.clone());
        let mut out = Box::pin(out);
        assert_eq!(ids(&out.next().await.unwrap()), ["all"]);
        // The queue fills and an update is dropped: a catch-up is owed.
        let slot = slot("Goloman", "Hands");
        slot.adopt(Dialer::Me, sender.clone(), cancel.clone())
            .unwrap();
        while slot.send(update("queued")) {}
        assert!(sender.resync.load(Ordering::Acquire));
        // The catch-up comes, the stale queue is gone, and live updates flow again.
        assert_eq!(ids(&out.next().await.unwrap()), ["all"]);
        assert!(slot.send(update("live")));
        assert_eq!(ids(&out.next().await.unwrap()), ["live"]);
    }

    #[tokio::test]
    async fn a_stream_that_is_not_adopted_sends_nothing() {
        let catch_up: CatchUp = Arc::new(|i| (i == 0).then(|| vec![update("a")]));
        let (sender, out) = outbound(catch_up, async { false }, CancellationToken::new());
        sender.tx.try_send(update("x")).unwrap();
        assert_eq!(Box::pin(out).next().await.map(|m| ids(&m)), None);
    }
}
