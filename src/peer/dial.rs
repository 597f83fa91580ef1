//! The dialer that keeps one link up: dials the neighbour at once, redials a lost
//! link with capped, jittered exponential backoff, and rests while a stream is live.

use std::{sync::Arc, time::Duration};

use futures_util::FutureExt as _;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{ClientTlsConfig, Endpoint},
};
use tower::{
    retry::backoff::{Backoff as _, ExponentialBackoffMaker, MakeBackoff as _},
    util::rng::HasherRng,
};

use super::{
    Backbone, FROM_HEADER, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, TO_HEADER, drive,
    link::{Dialer, LinkSlot, LinkState, outbound},
};
use crate::{auth::Secret, proto::peer_client::PeerClient};

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

/// The first wait before redialling, and the cap the waits double up to.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Keeps the link to `slot`'s neighbour at `uri` up until `shutdown`.
pub async fn run(
    node: Arc<Backbone>,
    slot: Arc<LinkSlot>,
    uri: String,
    secret: Option<Secret>,
    tls: Option<ClientTlsConfig>,
    shutdown: CancellationToken,
) {
    // Jittered, so a herd that restarts together does not redial in lockstep.
    let mut maker =
        ExponentialBackoffMaker::new(BACKOFF_MIN, BACKOFF_MAX, 0.5, HasherRng::default())
            .expect("the backoff figures are valid");
    let mut backoff = maker.make_backoff();
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
        match once(&node, &slot, &uri, secret.as_ref(), tls.as_ref(), &shutdown).await {
            // A stream that was live for a while has ended: dial again at once. One
            // that ended at once (a neighbour that accepts and drops) waits its turn.
            Ok(lasted) if lasted >= Duration::from_secs(5) => {
                backoff = maker.make_backoff();
                continue;
            }
            Ok(_) => {}
            Err(DialError::Superseded(e)) => tracing::debug!(peer = %slot.peer(), "{e}"),
            // The neighbour says the herd files disagree: worth an operator's eye.
            Err(DialError::Refused(status))
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::InvalidArgument
                ) =>
            {
                tracing::warn!(peer = %slot.peer(), reason = status.message(), "neighbour refused the link");
            }
            Err(e) => tracing::debug!(peer = %slot.peer(), error = %e, "dial failed"),
        }
        if shutdown.is_cancelled() {
            return;
        }
        slot.set_dialing(LinkState::Backoff);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = backoff.next_backoff() => {}
            // The neighbour dialled us meanwhile.
            _ = state.wait_for(|s| *s == LinkState::Up) => {}
        }
    }
}

/// One dial: connect, open the stream, adopt it, and drive it until it ends.
/// Returns how long the stream was live.
async fn once(
    node: &Arc<Backbone>,
    slot: &Arc<LinkSlot>,
    uri: &str,
    secret: Option<&Secret>,
    tls: Option<&ClientTlsConfig>,
    shutdown: &CancellationToken,
) -> Result<Duration, DialError> {
    let mut endpoint =
        Endpoint::from_shared(uri.to_owned()).map_err(|_| DialError::Address(uri.to_owned()))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = tokio::select! {
        c = endpoint.connect() => c?,
        _ = shutdown.cancelled() => return Ok(Duration::ZERO),
    };

    let (adopted_tx, adopted_rx) = oneshot::channel();
    let cancel = shutdown.child_token();
    let (sender, out) = outbound(
        node.clone(),
        slot.peer().clone(),
        adopted_rx.map(|adopted| adopted.unwrap_or(false)),
        cancel.clone(),
    );
    let shared = sender.shared();
    let mut req = Request::new(out);
    let me = MetadataValue::try_from(&**node.replica().name())
        .map_err(|_| DialError::Address(uri.into()))?;
    let to = MetadataValue::try_from(&**slot.peer()).map_err(|_| DialError::Address(uri.into()))?;
    req.metadata_mut().insert(FROM_HEADER, me);
    req.metadata_mut().insert(TO_HEADER, to);
    if let Some(secret) = secret {
        secret.insert(req.metadata_mut());
    }

    let mut client =
        PeerClient::new(channel).max_decoding_message_size(node.config().max_message_bytes);
    let response = tokio::select! {
        r = client.link(req) => r?,
        _ = shutdown.cancelled() => return Ok(Duration::ZERO),
    };
    let id = match slot.adopt(Dialer::Me, sender, cancel.clone()) {
        Ok(id) => id,
        Err(e) => {
            cancel.cancel();
            return Err(e.into());
        }
    };
    // The receiver is gone only if the stream already ended; drive() sees that too.
    let _ = adopted_tx.send(true);
    let started = std::time::Instant::now();
    drive(
        node.clone(),
        slot.clone(),
        id,
        shared,
        response.into_inner(),
        cancel,
    )
    .await;
    Ok(started.elapsed())
}
