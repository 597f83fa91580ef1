//! Cost control for a paid provider: lookups rounded to a grid ([`canonical`]),
//! identical lookups in flight sharing one call ([`CoalesceLayer`]), and answers
//! kept for a while ([`CacheLayer`]). Each answer holds every result the provider
//! gave: the client's bound cuts it afterwards, so one entry serves every bound.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::{BoxFuture, FutureExt as _, Shared, WeakShared};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt as _};

use super::{MAX_BOUND, Places, PlacesRequest, google};

/// The lookup that stands for `req`: the location rounded to `decimals` decimals of a
/// degree, the radius to whole metres (within Google's range), and the largest bound.
/// Requests with equal canonical forms get the same answer.
pub fn canonical(req: PlacesRequest, decimals: u8) -> PlacesRequest {
    let scale = 10f64.powi(i32::from(decimals));
    // `+ 0.0` turns -0.0 into 0.0, so both round to one key.
    let round = |deg: f64| (deg * scale).round() / scale + 0.0;
    PlacesRequest {
        lat: round(req.lat),
        lon: round(req.lon),
        radius_m: f64::from(google::radius_m(req.radius_m)),
        bound: MAX_BOUND,
    }
}

/// A canonical request as a map key (the bound is always the largest, so it is left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    lat: u64,
    lon: u64,
    radius_m: u64,
}

impl Key {
    pub fn of(req: &PlacesRequest) -> Key {
        Key {
            lat: req.lat.to_bits(),
            lon: req.lon.to_bits(),
            radius_m: req.radius_m.to_bits(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    crate::lock(m)
}

// ---------------------------------------------------------------------------------------------
// Coalescing

/// A failure shared by every caller of one coalesced lookup. It shows as the failure
/// itself and has it as its source, so [`Places::from_error`] still finds its status.
#[derive(Clone)]
pub struct SharedError(Arc<BoxError>);

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

type LookupFuture = BoxFuture<'static, Result<Places, SharedError>>;
type Lookup = Shared<LookupFuture>;

#[derive(Default)]
struct InFlight {
    next_id: AtomicU64,
    /// Weak, so a lookup that every caller gave up on (each at its own deadline) is
    /// dropped, not kept alive by the map. The id tells a lookup from its successor.
    lookups: Mutex<HashMap<Key, (u64, WeakShared<LookupFuture>)>>,
}

/// Removes a lookup's entry when the lookup ends, whether it finished or was dropped.
struct Done {
    in_flight: Arc<InFlight>,
    key: Key,
    id: u64,
}

impl Drop for Done {
    fn drop(&mut self) {
        let mut lookups = lock(&self.in_flight.lookups);
        if lookups.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            lookups.remove(&self.key);
        }
    }
}

/// Calls for a key that is already being looked up wait for that lookup's answer
/// instead of starting another: a thousand clients at one spot make one call.
#[derive(Clone, Debug, Default)]
pub struct CoalesceLayer {
    in_flight: Arc<InFlight>,
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("lookups", &lock(&self.lookups).len())
            .finish()
    }
}

impl CoalesceLayer {
    pub fn new() -> CoalesceLayer {
        CoalesceLayer::default()
    }
}

impl<S> Layer<S> for CoalesceLayer {
    type Service = Coalesce<S>;
    fn layer(&self, inner: S) -> Coalesce<S> {
        Coalesce {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Coalesce<S> {
    inner: S,
    in_flight: Arc<InFlight>,
}

impl<S> Coalesce<S>
where
    S: Service<PlacesRequest, Response = Places, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    /// The lookup for `req`: the one in flight for its key, or a new one.
    fn lookup(&self, req: PlacesRequest) -> Lookup {
        let key = Key::of(&req);
        let mut lookups = lock(&self.in_flight.lookups);
        if let Some(running) = lookups.get(&key).and_then(|(_, weak)| weak.upgrade()) {
            return running;
        }
        let done = Done {
            in_flight: self.in_flight.clone(),
            key,
            id: self.in_flight.next_id.fetch_add(1, Ordering::Relaxed),
        };
        let id = done.id;
        let inner = self.inner.clone();
        let lookup = async move {
            let _done = done;
            inner
                .oneshot(req)
                .await
                .map_err(|e| SharedError(Arc::new(e)))
        }
        .boxed()
        .shared();
        if let Some(weak) = lookup.downgrade() {
            lookups.insert(key, (id, weak));
        }
        lookup
    }
}

impl<S> Service<PlacesRequest> for Coalesce<S>
where
    S: Service<PlacesRequest, Response = Places, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Places;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Places, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: PlacesRequest) -> Self::Future {
        let lookup = self.lookup(req);
        Box::pin(async move { lookup.await.map_err(BoxError::from) })
    }
}

// ---------------------------------------------------------------------------------------------
// Caching

/// Keeps each answer for `ttl`, at most `capacity` of them; when full, the oldest
/// goes first. Failures are errors and are never kept.
#[derive(Clone, Debug)]
pub struct CacheLayer {
    store: Arc<Mutex<Store>>,
}

impl CacheLayer {
    pub fn new(capacity: usize, ttl: Duration) -> CacheLayer {
        CacheLayer {
            store: Arc::new(Mutex::new(Store {
                capacity,
                ttl,
                answers: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;
    fn layer(&self, inner: S) -> Cache<S> {
        Cache {
            inner,
            store: self.store.clone(),
        }
    }
}

#[derive(Debug)]
struct Store {
    capacity: usize,
    ttl: Duration,
    answers: HashMap<Key, (Places, Instant)>,
    /// Keys in the order they were stored, with when: the front expires first.
    order: VecDeque<(Key, Instant)>,
}

impl Store {
    fn get(&self, key: &Key, now: Instant) -> Option<Places> {
        self.answers
            .get(key)
            .filter(|(_, stored)| now.duration_since(*stored) < self.ttl)
            .map(|(places, _)| places.clone())
    }

    fn put(&mut self, key: Key, places: Places, now: Instant) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        // Drop what has expired, then the oldest until there is room.
        while let Some(&(old, stored)) = self.order.front() {
            let expired = now.duration_since(stored) >= self.ttl;
            if !expired && self.answers.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            // The key may have been stored again since: only its newest entry counts.
            if self.answers.get(&old).is_some_and(|(_, at)| *at == stored) {
                self.answers.remove(&old);
            }
        }
        self.answers.insert(key, (places, now));
        self.order.push_back((key, now));
    }
}

#[derive(Clone, Debug)]
pub struct Cache<S> {
    inner: S,
    store: Arc<Mutex<Store>>,
}

impl<S> Service<PlacesRequest> for Cache<S>
where
    S: Service<PlacesRequest, Response = Places, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Places;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Places, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: PlacesRequest) -> Self::Future {
        let key = Key::of(&req);
        if let Some(mut places) = lock(&self.store).get(&key, Instant::now()) {
            places.cached = true;
            return Box::pin(std::future::ready(Ok(places)));
        }
        let inner = self.inner.clone();
        let store = self.store.clone();
        Box::pin(async move {
            let places = inner.oneshot(req).await?;
            lock(&store).put(key, places.clone(), Instant::now());
            Ok(places)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::Notify;
    use tower::service_fn;

    use super::*;

    fn req(lat: f64, lon: f64, radius_m: f64, bound: usize) -> PlacesRequest {
        PlacesRequest {
            lat,
            lon,
            radius_m,
            bound,
        }
    }

    /// A provider that counts calls and answers `n` places named after the call number.
    fn counting() -> (
        impl Service<PlacesRequest, Response = Places, Error = BoxError, Future: Send> + Clone,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let svc = service_fn(move |_: PlacesRequest| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, BoxError>(Places::found(vec![Arc::from(format!("{{\"call\":{n}}}"))])) }
        });
        (svc, calls)
    }

    #[test]
    fn nearby_lookups_share_a_canonical_form() {
        let a = canonical(req(34.068930, -118.445127, 10_000.2, 3), 4);
        let b = canonical(req(34.068901, -118.445149, 9_999.8, 17), 4);
        assert_eq!(a, b);
        assert_eq!(a, req(34.0689, -118.4451, 10_000.0, MAX_BOUND));
        assert_eq!(Key::of(&a), Key::of(&b));
        assert_ne!(
            Key::of(&a),
            Key::of(&canonical(req(34.0691, -118.4451, 10_000.0, 3), 4))
        );
        assert_ne!(
            Key::of(&a),
            Key::of(&canonical(req(34.0689, -118.4451, 9_000.0, 3), 4))
        );
        let z = canonical(req(-0.00001, 0.00001, 5.0, 0), 4);
        assert_eq!(Key::of(&z), Key::of(&canonical(req(0.0, 0.0, 5.0, 0), 4)));
        assert_eq!(canonical(req(1.25, 2.0, 0.1, 1), 0).radius_m, 1.0);
    }

    #[tokio::test]
    async fn identical_calls_in_flight_make_one_inner_call() {
        let release = Arc::new(Notify::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let (gate, c) = (release.clone(), calls.clone());
        let svc = service_fn(move |_: PlacesRequest| {
            let (gate, c) = (gate.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Ok::<_, BoxError>(Places::found(vec![Arc::from("{}")]))
            }
        });
        let mut svc = CoalesceLayer::new().layer(svc);
        let r = req(1.0, 2.0, 300.0, 20);
        // `call` joins the lookup in flight at once, before any future is polled.
        let waiting: Vec<_> = (0..1000).map(|_| svc.call(r)).collect();
        let other = svc.call(req(1.0, 2.0, 301.0, 20));
        let all = tokio::spawn(futures_util::future::join_all(waiting));
        let other = tokio::spawn(other);
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        while !(all.is_finished() && other.is_finished()) {
            release.notify_waiters();
            tokio::task::yield_now().await;
        }
        let answers = all.await.unwrap();
        assert!(answers.iter().all(|a| a.as_ref().unwrap().status == "OK"));
        other.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one per distinct key");
        assert!(
            lock(&svc.in_flight.lookups).is_empty(),
            "finished lookups leave"
        );

        // Once it has finished, the next call is a new lookup.
        let next = tokio::spawn(svc.call(r));
        while !next.is_finished() {
            release.notify_waiters();
            tokio::task::yield_now().await;
        }
        next.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_lookup_everyone_gave_up_on_is_dropped_and_a_failure_is_shared() {
        let never =
            service_fn(|_: PlacesRequest| std::future::pending::<Result<Places, BoxError>>());
        let mut svc = CoalesceLayer::new().layer(never);
        let r = req(1.0, 2.0, 300.0, 20);
        let (a, b) = (svc.call(r), svc.call(r));
        drop((a, b));
        assert!(lock(&svc.in_flight.lookups).is_empty());

        let failing = service_fn(|_: PlacesRequest| async {
            Err::<Places, BoxError>(Box::new(super::super::ProviderError {
                status: "REQUEST_DENIED".into(),
                message: "no".into(),
            }))
        });
        let mut svc = CoalesceLayer::new().layer(failing);
        let (a, b) = futures_util::join!(svc.call(r), svc.call(r));
        for e in [a.unwrap_err(), b.unwrap_err()] {
            let p = Places::from_error(&e, Duration::ZERO);
            assert_eq!(p.status, "REQUEST_DENIED");
            assert_eq!(e.to_string(), "REQUEST_DENIED: no");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_kept_for_the_ttl() {
        let (svc, calls) = counting();
        let svc = CacheLayer::new(10, Duration::from_secs(60)).layer(svc);
        let r = req(1.0, 2.0, 300.0, 20);
        let first = svc.clone().oneshot(r).await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        let second = svc.clone().oneshot(r).await.unwrap();
        assert!(second.cached && !first.cached);
        assert_eq!(
            Places {
                cached: false,
                ..second
            },
            first
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let third = svc.clone().oneshot(r).await.unwrap();
        assert!(!third.cached);
        assert_ne!(third, first, "expired");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded_and_failures_are_not_kept() {
        let (svc, calls) = counting();
        let svc = CacheLayer::new(2, Duration::from_secs(60)).layer(svc);
        let at = |lat: f64| req(lat, 0.0, 100.0, 20);
        for lat in [1.0, 2.0, 3.0] {
            svc.clone().oneshot(at(lat)).await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(lock(&svc.store).answers.len(), 2);
        svc.clone().oneshot(at(3.0)).await.unwrap();
        svc.clone().oneshot(at(2.0)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "2 and 3 are kept");
        svc.clone().oneshot(at(1.0)).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "1 was the oldest, and went"
        );

        let failing =
            service_fn(|_: PlacesRequest| async { Err::<Places, BoxError>("down".into()) });
        let svc = CacheLayer::new(2, Duration::from_secs(60)).layer(failing);
        assert!(svc.clone().oneshot(at(1.0)).await.is_err());
        assert!(lock(&svc.store).answers.is_empty());

        let (svc, calls) = counting();
        let off = CacheLayer::new(0, Duration::from_secs(60)).layer(svc);
        off.clone().oneshot(at(1.0)).await.unwrap();
        off.clone().oneshot(at(1.0)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "capacity 0 keeps nothing");
    }
}
