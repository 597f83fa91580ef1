//! The dialer that keeps one link up: dials the neighbour at once, redials a lost
//! link with capped, jittered exponential backoff, and rests while a stream is live.

use std::{sync::Arc, time::Duration};

use futures_util::FutureExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, metadata::MetadataValue, transport::Endpoint};

use super::{
    FROM_HEADER, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, TO_HEADER, drive,
    link::{Dialer, LinkSlot, LinkState, QUEUE, outbound},
};
use crate::{node::Node, proto::peer_client::PeerClient};

/// Capped exponential backoff with jitter: each wait is drawn from the upper half
/// of the current step, so a herd that restarts together does not redial in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// The next wait; the step doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

/// Why one dial attempt ended without a live stream.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid neighbour address {0}")]
    Address(String),
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("refused: {}", .0.message())]
    Refused(#[from] tonic::Status),
    #[error(transparent)]
    Superseded(#[from] super::link::Superseded),
}

/// Keeps the link to `slot`'s neighbour at `uri` up until `shutdown`.
pub async fn run(node: Arc<Node>, slot: Arc<LinkSlot>, uri: String, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut state = slot.watch();
    loop {
        // Rest while a stream is live (perhaps one the neighbour dialled).
        while *state.borrow_and_update() == LinkState::Up {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = state.changed() => if r.is_err() { return },
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
        slot.set_dialing(LinkState::Connecting);
        match once(&node, &slot, &uri, &shutdown).await {
            // A stream that was live for a while has ended: dial again at once. One
            // that ended at once (a neighbour that accepts and drops) waits its turn.
            Ok(lasted) if lasted >= Duration::from_secs(5) => {
                backoff.reset();
                continue;
            }
            Ok(_) => {}
            Err(DialError::Superseded(e)) => tracing::debug!(peer = %slot.peer(), "{e}"),
            Err(e) => tracing::debug!(peer = %slot.peer(), error = %e, "dial failed"),
        }
        if shutdown.is_cancelled() {
            return;
        }
        slot.set_dialing(LinkState::Backoff);
        let wait = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            // The neighbour dialled us meanwhile.
            _ = state.wait_for(|s| *s == LinkState::Up) => {}
        }
    }
}

/// One dial: connect, open the stream, adopt it, and drive it until it ends.
/// Returns how long the stream was live.
async fn once(
    node: &Arc<Node>,
    slot: &Arc<LinkSlot>,
    uri: &str,
    shutdown: &CancellationToken,
) -> Result<Duration, DialError> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|_| DialError::Address(uri.to_owned()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = tokio::select! {
        c = endpoint.connect() => c?,
        _ = shutdown.cancelled() => return Ok(Duration::ZERO),
    };

    let (tx, rx) = mpsc::channel(QUEUE);
    let (catch_up_tx, catch_up_rx) = oneshot::channel();
    let cancel = shutdown.child_token();
    let out = outbound(
        catch_up_rx.map(Result::unwrap_or_default),
        rx,
        cancel.clone(),
    );
    let mut req = Request::new(out);
    let me = MetadataValue::try_from(&**node.name()).map_err(|_| DialError::Address(uri.into()))?;
    let to = MetadataValue::try_from(&**slot.peer()).map_err(|_| DialError::Address(uri.into()))?;
    req.metadata_mut().insert(FROM_HEADER, me);
    req.metadata_mut().insert(TO_HEADER, to);

    let mut client = PeerClient::new(channel);
    let response = tokio::select! {
        r = client.link(req) => r?,
        _ = shutdown.cancelled() => return Ok(Duration::ZERO),
    };
    let id = match slot.adopt(Dialer::Me, tx, cancel.clone()) {
        Ok(id) => id,
        Err(e) => {
            cancel.cancel();
            return Err(e.into());
        }
    };
    // The receiver is gone only if the stream already ended; drive() sees that too.
    let _ = catch_up_tx.send(node.snapshot_updates());
    let started = std::time::Instant::now();
    drive(
        node.clone(),
        slot.clone(),
        id,
        response.into_inner(),
        cancel,
    )
    .await;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let steps = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (w, s) in waits.iter().zip(steps) {
            let s = Duration::from_millis(s);
            assert!(*w >= s / 2 && *w <= s, "{w:?} not in [{:?}, {s:?}]", s / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
