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
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use futures_util::{Stream, StreamExt as _, stream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    proto::{LinkMessage, Update},
};

/// Updates waiting for one neighbour. A link that falls this far behind is reset:
/// the reconnect's catch-up brings the neighbour up to date without unbounded memory.
pub const QUEUE: usize = 65_536;
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

#[derive(Debug)]
struct Active {
    id: u64,
    dialer: Dialer,
    tx: mpsc::Sender<Update>,
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
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        tx: mpsc::Sender<Update>,
        cancel: CancellationToken,
    ) -> Result<u64, Superseded> {
        let mut inner = self.lock();
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
                tracing::info!(peer = %self.peer, old = old.id, "link replaced by a new stream");
                old.cancel.cancel();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.active = Some(Active {
            id,
            dialer,
            tx,
            cancel,
        });
        self.publish(&mut inner);
        tracing::info!(peer = %self.peer, link = id, dialer = ?dialer, "link up");
        Ok(id)
    }

    /// Ends stream `id` if it is still the live one.
    pub fn drop_link(&self, id: u64, reason: &str) {
        let mut inner = self.lock();
        if inner.active.as_ref().is_some_and(|a| a.id == id) {
            if let Some(old) = inner.active.take() {
                old.cancel.cancel();
            }
            self.publish(&mut inner);
            tracing::info!(peer = %self.peer, link = id, reason, "link down");
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

    /// Queues an update for the neighbour, never waiting. A neighbour that has
    /// fallen a whole queue behind has its link reset (it catches up on reconnect).
    pub fn send(&self, update: Update) -> bool {
        let mut inner = self.lock();
        let Some(active) = &inner.active else {
            return false;
        };
        match active.tx.try_send(update) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "neighbour fell a whole queue behind",
                    mpsc::error::TrySendError::Closed(_) => "stream closed",
                };
                let id = active.id;
                if let Some(old) = inner.active.take() {
                    old.cancel.cancel();
                }
                self.publish(&mut inner);
                tracing::warn!(peer = %self.peer, link = id, reason, "link down");
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

    pub fn send(&self, peer: &str, update: Update) -> bool {
        self.slots.get(peer).is_some_and(|s| s.send(update))
    }

    pub fn close_all(&self) {
        for slot in self.slots.values() {
            slot.close();
        }
    }
}

/// What one end sends on a stream: first the catch-up (every record it holds, once
/// `first` yields them), then every update queued for the neighbour, batched;
/// it ends when `cancel` fires.
pub fn outbound(
    first: impl Future<Output = Vec<Update>> + Send + 'static,
    rx: mpsc::Receiver<Update>,
    cancel: CancellationToken,
) -> impl Stream<Item = LinkMessage> + Send + 'static {
    let catch_up = stream::once(first).flat_map(|all| stream::iter(all).ready_chunks(BATCH));
    catch_up
        .chain(ReceiverStream::new(rx).ready_chunks(BATCH))
        .map(|updates| LinkMessage { updates })
        .take_until(cancel.cancelled_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(me: &str, peer: &str) -> LinkSlot {
        LinkSlot::new(me.into(), peer.into(), None)
    }

    fn adopt(s: &LinkSlot, d: Dialer) -> (Result<u64, Superseded>, CancellationToken) {
        let (tx, _rx) = mpsc::channel(1);
        let c = CancellationToken::new();
        (s.adopt(d, tx, c.clone()), c)
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
    fn a_full_queue_resets_the_link() {
        let g = slot("Goloman", "Hands");
        let (tx, _rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        g.adopt(Dialer::Me, tx, cancel.clone()).unwrap();
        assert!(g.send(Update::default()));
        assert!(!g.send(Update::default()));
        assert!(cancel.is_cancelled() && !g.is_up());
        assert_eq!(g.view().sent, 1);
    }
}
