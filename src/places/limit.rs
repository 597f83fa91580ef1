//! A cap on requests in flight to the provider, shared by every clone of the stack.
//!
//! Tower's `ConcurrencyLimit` takes its permit in `poll_ready` and keeps a
//! `PollSemaphore`, which is not `Sync`, so it cannot sit inside a
//! `BoxCloneSyncService`; `Buffer` could wrap it, at the price of a worker task, a
//! queue of its own and a runtime at build time. This layer takes an owned permit
//! inside the response future instead: `poll_ready` is always ready, a call waits
//! for a permit (under the overall deadline of the layers outside), and holds it for
//! exactly one attempt.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tower::{BoxError, Layer, Service, ServiceExt as _};

/// Lets at most `max` calls into the inner service at once.
#[derive(Clone, Debug)]
pub struct LimitLayer {
    permits: Arc<Semaphore>,
}

impl LimitLayer {
    pub fn new(max: usize) -> LimitLayer {
        LimitLayer {
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Limit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, Req> Service<Req> for Limit<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permits = self.permits.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let _permit = permits.acquire_owned().await?;
            inner.oneshot(req).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;
    use tower::service_fn;

    use super::*;

    #[tokio::test]
    async fn no_more_than_max_calls_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (r, m, gate) = (running.clone(), most.clone(), release.clone());
        let svc = service_fn(move |_: ()| {
            let (r, m, gate) = (r.clone(), m.clone(), gate.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                gate.notified().await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        });
        let svc = LimitLayer::new(2).layer(svc);
        let calls: Vec<_> = (0..6)
            .map(|_| tokio::spawn(svc.clone().oneshot(())))
            .collect();
        // Two get in; the rest wait for a permit. Let them all run as far as they can.
        while running.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(running.load(Ordering::SeqCst), 2);
        for call in calls {
            while !call.is_finished() {
                release.notify_waiters();
                tokio::task::yield_now().await;
            }
            call.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
