//! The retry policy around Google: what is transient, how many attempts, and how
//! long to wait between them (exponential, jittered backoff).

use std::time::Duration;

use tower::{
    BoxError,
    retry::{
        Policy,
        backoff::{
            Backoff, ExponentialBackoff, ExponentialBackoffMaker, InvalidBackoff, MakeBackoff,
        },
    },
    timeout::error::Elapsed,
    util::rng::Rng,
};

use super::{Places, PlacesRequest, google::GoogleError};
use crate::config::GoogleConfig;

/// Whether a failed attempt is worth another: a per-attempt timeout, or a Google
/// failure that says so (connection trouble, HTTP 429 or 5xx, `OVER_QUERY_LIMIT`,
/// `UNKNOWN_ERROR`). Anything else (a denied key, a bad request, garbage) is final.
pub fn is_transient(err: &BoxError) -> bool {
    if err.is::<Elapsed>() {
        return true;
    }
    err.downcast_ref::<GoogleError>()
        .is_some_and(GoogleError::is_transient)
}

/// Retries transient failures until `max_attempts` attempts have been made. Tower
/// clones the policy for each request, so the count is per lookup.
#[derive(Clone, Debug)]
pub struct RetryTransient {
    attempts_left: u32,
    backoff: ExponentialBackoff<SeedPerClone>,
}

impl RetryTransient {
    pub fn new(
        max_attempts: u32,
        backoff_min: Duration,
        backoff_max: Duration,
        jitter: f64,
    ) -> Result<RetryTransient, InvalidBackoff> {
        let mut maker =
            ExponentialBackoffMaker::new(backoff_min, backoff_max, jitter, SeedPerClone::new())?;
        Ok(RetryTransient {
            attempts_left: max_attempts.max(1),
            backoff: maker.make_backoff(),
        })
    }

    pub fn from_config(config: &GoogleConfig) -> Result<RetryTransient, InvalidBackoff> {
        RetryTransient::new(
            config.max_attempts,
            config.backoff_min,
            config.backoff_max,
            config.backoff_jitter,
        )
    }
}

impl Policy<PlacesRequest, Places, BoxError> for RetryTransient {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut PlacesRequest,
        result: &mut Result<Places, BoxError>,
    ) -> Option<Self::Future> {
        let Err(err) = result else {
            return None;
        };
        if self.attempts_left <= 1 || !is_transient(err) {
            return None;
        }
        self.attempts_left -= 1;
        let wait = self.backoff.next_backoff();
        tracing::info!(
            error = %err,
            attempts_left = self.attempts_left,
            "places: transient failure, retrying"
        );
        Some(wait)
    }

    fn clone_request(&mut self, req: &PlacesRequest) -> Option<PlacesRequest> {
        Some(*req)
    }
}

/// The backoff's random source. A clone starts from a fresh seed: tower clones the
/// policy (and with it this) for every request, and lookups that failed together
/// must not all retry at the same instant.
#[derive(Debug)]
pub struct SeedPerClone(fastrand::Rng);

impl SeedPerClone {
    pub fn new() -> SeedPerClone {
        SeedPerClone(fastrand::Rng::new())
    }
}

impl Default for SeedPerClone {
    fn default() -> SeedPerClone {
        SeedPerClone::new()
    }
}

impl Clone for SeedPerClone {
    fn clone(&self) -> SeedPerClone {
        SeedPerClone::new()
    }
}

impl Rng for SeedPerClone {
    fn next_u64(&mut self) -> u64 {
        self.0.u64(..)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::pin,
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Context, Waker},
    };

    use tower::{Service, ServiceBuilder, ServiceExt as _, service_fn};

    use super::*;

    const REQ: PlacesRequest = PlacesRequest {
        lat: 1.0,
        lon: 2.0,
        radius_m: 1000.0,
        bound: 20,
    };

    fn refused(http: u16, status: &str) -> BoxError {
        Box::new(GoogleError::Refused {
            http,
            status: status.into(),
            message: "m".into(),
        })
    }

    fn garbage(http: u16) -> BoxError {
        Box::new(GoogleError::Garbage {
            http,
            reason: "r".into(),
        })
    }

    #[test]
    fn what_is_transient() {
        assert!(is_transient(&(Box::new(Elapsed::new()) as BoxError)));
        assert!(is_transient(&refused(500, "UNKNOWN_ERROR")));
        assert!(is_transient(&refused(503, "UNKNOWN_ERROR")));
        assert!(is_transient(&refused(429, "OVER_QUERY_LIMIT")));
        assert!(is_transient(&refused(200, "OVER_QUERY_LIMIT")));
        assert!(is_transient(&refused(200, "UNKNOWN_ERROR")));
        assert!(is_transient(&garbage(502)));
        assert!(!is_transient(&refused(200, "REQUEST_DENIED")));
        assert!(!is_transient(&refused(403, "REQUEST_DENIED")));
        assert!(!is_transient(&refused(400, "INVALID_REQUEST")));
        assert!(!is_transient(&garbage(200)));
        assert!(!is_transient(&"something else".into()));
    }

    #[test]
    fn attempts_are_capped_and_final_failures_stop_at_once() {
        let policy =
            RetryTransient::new(3, Duration::from_millis(1), Duration::from_millis(8), 0.0)
                .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();

        // The policy Tower clones for one request: two retries, then the third failure stands.
        let mut p = policy.clone();
        let mut req = REQ;
        for _ in 0..2 {
            assert!(
                p.retry(&mut req, &mut Err(refused(500, "UNKNOWN_ERROR")))
                    .is_some()
            );
        }
        assert!(
            p.retry(&mut req, &mut Err(refused(500, "UNKNOWN_ERROR")))
                .is_none()
        );

        // Each request starts with the whole allowance again.
        let mut p = policy.clone();
        assert!(p.retry(&mut req, &mut Err(garbage(503))).is_some());
        // Success and final failures are never retried.
        let mut p = policy.clone();
        assert!(p.retry(&mut req, &mut Ok(Places::found(vec![]))).is_none());
        assert!(
            p.retry(&mut req, &mut Err(refused(403, "REQUEST_DENIED")))
                .is_none()
        );
        assert_eq!(p.clone_request(&req), Some(req));

        // One attempt means no retry at all.
        let mut once =
            RetryTransient::new(1, Duration::from_millis(1), Duration::from_millis(1), 0.0)
                .unwrap();
        assert!(
            once.retry(&mut req, &mut Err(Box::new(Elapsed::new())))
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap_and_jitter_stays_within_its_share() {
        let mut p = RetryTransient::new(
            6,
            Duration::from_millis(100),
            Duration::from_millis(500),
            0.0,
        )
        .unwrap();
        let mut req = REQ;
        let mut waits = Vec::new();
        while let Some(sleep) = p.retry(&mut req, &mut Err(Box::new(Elapsed::new()))) {
            waits.push(sleep.deadline() - tokio::time::Instant::now());
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);

        let policy = RetryTransient::new(
            2,
            Duration::from_millis(100),
            Duration::from_millis(1000),
            0.5,
        )
        .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut p = policy.clone();
            let sleep = p
                .retry(&mut req, &mut Err(Box::new(Elapsed::new())))
                .unwrap();
            let wait = sleep.deadline() - tokio::time::Instant::now();
            assert!(
                (Duration::from_millis(100)..=Duration::from_millis(150)).contains(&wait),
                "{wait:?}"
            );
            seen.insert(wait);
        }
        assert!(seen.len() > 1, "each request draws its own jitter");
    }

    /// A service that answers from a script, counting calls.
    fn scripted(
        script: Vec<Result<Places, BoxError>>,
    ) -> (
        impl Service<PlacesRequest, Response = Places, Error = BoxError, Future: Send> + Clone,
        Arc<AtomicUsize>,
    ) {
        let script = Arc::new(Mutex::new(script.into_iter()));
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let svc = service_fn(move |_req: PlacesRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            let next = script.lock().unwrap().next();
            async move { next.unwrap_or_else(|| Err("script ran out".into())) }
        });
        (svc, calls)
    }

    /// Polls `fut` to the end, letting the paused clock jump over each backoff;
    /// returns how much (virtual) time it took.
    async fn run_paused<F: Future>(fut: F) -> (F::Output, Duration) {
        let started = tokio::time::Instant::now();
        let out = fut.await;
        (out, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_layer_steps_through_transient_failures_to_success() {
        let (svc, calls) = scripted(vec![
            Err(refused(500, "UNKNOWN_ERROR")),
            Err(refused(429, "OVER_QUERY_LIMIT")),
            Ok(Places::found(vec![Arc::from("{}")])),
        ]);
        let policy =
            RetryTransient::new(3, Duration::from_millis(100), Duration::from_secs(1), 0.0)
                .unwrap();
        let svc = ServiceBuilder::new().retry(policy).service(svc);
        let (out, took) = run_paused(svc.oneshot(REQ)).await;
        assert_eq!(out.unwrap().status, "OK");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(took, Duration::from_millis(300), "100 ms, then 200 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_layer_gives_up_at_once_on_a_denial_and_after_the_cap_otherwise() {
        let (svc, calls) = scripted(vec![
            Err(refused(403, "REQUEST_DENIED")),
            Ok(Places::found(vec![])),
        ]);
        let policy =
            RetryTransient::new(3, Duration::from_millis(100), Duration::from_secs(1), 0.0)
                .unwrap();
        let svc = ServiceBuilder::new().retry(policy.clone()).service(svc);
        let err = svc.oneshot(REQ).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<GoogleError>().unwrap().status(),
            "REQUEST_DENIED"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let (svc, calls) = scripted((0..5).map(|_| Err(garbage(502))).collect());
        let svc = ServiceBuilder::new().retry(policy).service(svc);
        let mut fut = pin!(svc.oneshot(REQ));
        // Step by hand: the first attempt fails at once and the policy is then waiting.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (out, _) = run_paused(fut).await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
