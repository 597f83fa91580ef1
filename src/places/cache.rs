//! Cost control for a paid provider: lookups grouped into cache keys ([`Grid`]),
//! answers kept for a while ([`CacheLayer`]), and identical lookups in flight sharing
//! one call ([`CoalesceLayer`]). The cache sits outside the coalescing, so a hit is
//! answered without touching the map of lookups in flight. Each answer holds every
//! result the provider gave: the client's bound cuts it afterwards, so one entry
//! serves every bound.
//!
//! What a client may get: the provider is always asked at the exact location of the
//! client whose lookup started the call. Another client whose location falls in the
//! same key (a cell of the grid, no wider than `fraction` of the radius asked) while
//! that call is in flight or its answer is kept gets the same answer: a search of the
//! same radius (in whole metres) centred at most `fraction × radius` from its own
//! location (at the default 1 %, 100 m for a 10 km search, 1 cm for 1 m).

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

use super::{
    Places, PlacesRequest, google,
    offline::{chord, unit_vector},
};

/// Groups lookups into keys. A key is the radius in whole metres (as Google gets it)
/// and a cell of a grid over the 3-D unit vector of the location (no special case at
/// the poles or the antimeridian). The cell is a cube whose diagonal is the chord of
/// `fraction × radius`: any two locations in one cell are at most that far apart on
/// the Earth's surface, so the answer kept for a key was searched within that distance
/// of every location that maps to it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    fraction: f64,
}

impl Grid {
    /// Cells no wider than `fraction` of the radius; 0 (or less) keys on the exact location.
    pub fn new(fraction: f64) -> Grid {
        Grid {
            fraction: fraction.max(0.0),
        }
    }

    /// The key of `req`; the bound is left out (one answer serves every bound).
    pub fn key(&self, req: &PlacesRequest) -> Key {
        let radius_m = google::radius_m(req.radius_m);
        let side = chord(self.fraction * f64::from(radius_m)) / 3f64.sqrt();
        let cell = if side > 0.0 {
            let v = unit_vector(req.lat, req.lon);
            Cell::Grid(v.map(|c| (c / side).floor() as i64))
        } else {
            // `+ 0.0` turns -0.0 into 0.0, so both are one key.
            Cell::Exact((req.lat + 0.0).to_bits(), (req.lon + 0.0).to_bits())
        };
        Key { radius_m, cell }
    }
}

/// A lookup's cache key, made by [`Grid::key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    radius_m: u32,
    cell: Cell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Cell {
    Grid([i64; 3]),
    Exact(u64, u64),
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
#[derive(Clone, Debug)]
pub struct CoalesceLayer {
    grid: Grid,
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
    pub fn new(grid: Grid) -> CoalesceLayer {
        CoalesceLayer {
            grid,
            in_flight: Arc::default(),
        }
    }
}

impl<S> Layer<S> for CoalesceLayer {
    type Service = Coalesce<S>;
    fn layer(&self, inner: S) -> Coalesce<S> {
        Coalesce {
            inner,
            grid: self.grid,
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Coalesce<S> {
    inner: S,
    grid: Grid,
    in_flight: Arc<InFlight>,
}

impl<S> Coalesce<S>
where
    S: Service<PlacesRequest, Response = Places, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    /// The lookup for `req`: the one in flight for its key, or a new one (asked at
    /// `req`'s own location).
    fn lookup(&self, req: PlacesRequest) -> Lookup {
        let key = self.grid.key(&req);
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
    grid: Grid,
    store: Arc<Mutex<Store>>,
}

impl CacheLayer {
    pub fn new(capacity: usize, ttl: Duration, grid: Grid) -> CacheLayer {
        CacheLayer {
            grid,
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
            grid: self.grid,
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
        // Every caller that joined one coalesced lookup brings its answer here: the
        // first one stored it, the others find it fresh and leave it.
        let fresh = |(_, stored): &(Places, Instant)| now.duration_since(*stored) < self.ttl;
        if self.capacity == 0 || self.ttl.is_zero() || self.answers.get(&key).is_some_and(fresh) {
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
    grid: Grid,
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
        let key = self.grid.key(&req);
        if let Some(mut places) = lock(&self.store).get(&key, Instant::now()) {
            places.cached = true;
            return Box::pin(std::future::ready(Ok(places)));
        }
        let inner = self.inner.clone();
        let store = self.store.clone();
        Box::pin(async move {
            // Asked again when first polled: the lookup in flight for this key at `call`
            // may have been answered (and left the in-flight map) since.
            if let Some(mut places) = lock(&store).get(&key, Instant::now()) {
                places.cached = true;
                return Ok(places);
            }
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

    /// Great-circle distance in metres (haversine), computed apart from the grid's code.
    fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
        let (la1, lo1, la2, lo2) = (
            a.0.to_radians(),
            a.1.to_radians(),
            b.0.to_radians(),
            b.1.to_radians(),
        );
        let h = ((la2 - la1) / 2.0).sin().powi(2)
            + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
        2.0 * super::super::offline::EARTH_RADIUS_M * h.sqrt().asin()
    }

    #[test]
    fn keys_ignore_the_bound_and_round_the_radius_to_the_metre() {
        let grid = Grid::new(0.01);
        let a = grid.key(&req(34.068930, -118.445127, 10_000.2, 3));
        assert_eq!(a, grid.key(&req(34.068930, -118.445127, 9_999.8, 17)));
        assert_ne!(a, grid.key(&req(34.068930, -118.445127, 9_000.0, 3)));
        // 1 % of 10 km is 100 m: 2 km away is another cell.
        assert_ne!(a, grid.key(&req(34.08693, -118.445127, 10_000.0, 3)));
        let exact = Grid::new(0.0);
        let z = exact.key(&req(-0.0, 0.0, 5.0, 0));
        assert_eq!(z, exact.key(&req(0.0, -0.0, 5.0, 9)));
        assert_ne!(z, exact.key(&req(0.0, 1e-12, 5.0, 0)));
        assert_eq!(exact.key(&req(1.25, 2.0, 0.1, 1)).radius_m, 1);
    }

    #[test]
    fn locations_that_share_a_key_are_within_the_fraction_of_the_radius() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut shared = 0;
        for (fraction, radius_m) in [
            (0.01, 10_000.0),
            (0.02, 1.0),
            (0.01, 50_000.0),
            (0.001, 300.0),
        ] {
            let grid = Grid::new(fraction);
            let reach = fraction * radius_m;
            // Centres everywhere, the poles and the antimeridian included.
            let centres = [
                (0.0, 0.0),
                (89.9999, 10.0),
                (-90.0, 0.0),
                (12.5, 179.9999),
                (34.07, -118.44),
            ];
            for (lat, lon) in centres {
                let points: Vec<(f64, f64)> = (0..300)
                    .map(|_| {
                        // Within a few cells of the centre, in degrees of latitude.
                        let spread = 3.0 * reach / 111_000.0;
                        let la = (lat + (rng.f64() - 0.5) * spread).clamp(-90.0, 90.0);
                        let lo = lon + (rng.f64() - 0.5) * spread / la.to_radians().cos().max(1e-3);
                        (la, (lo + 540.0) % 360.0 - 180.0)
                    })
                    .collect();
                let keys: Vec<Key> = points
                    .iter()
                    .map(|&(la, lo)| grid.key(&req(la, lo, radius_m, 5)))
                    .collect();
                for (i, a) in points.iter().enumerate() {
                    for (j, b) in points.iter().enumerate().skip(i + 1) {
                        if keys[i] == keys[j] {
                            shared += 1;
                            let d = distance_m(*a, *b);
                            assert!(
                                d <= reach * (1.0 + 1e-6),
                                "{a:?} and {b:?} share a key but are {d} m apart (at most {reach})"
                            );
                        }
                    }
                }
            }
        }
        assert!(shared > 1000, "the check saw few shared keys: {shared}");
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
        let mut svc = CoalesceLayer::new(Grid::new(0.01)).layer(svc);
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
        let mut svc = CoalesceLayer::new(Grid::new(0.01)).layer(never);
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
        let mut svc = CoalesceLayer::new(Grid::new(0.01)).layer(failing);
        let (a, b) = futures_util::join!(svc.call(r), svc.call(r));
        for e in [a.unwrap_err(), b.unwrap_err()] {
            let p = Places::from_error(&e, Duration::ZERO);
            assert_eq!(p.status, "REQUEST_DENIED");
            assert_eq!(e.to_string(), "REQUEST_DENIED: no");
        }
    }

    /// The order of `places::stack`: the cache outside, the coalescing inside it.
    fn cache_over_coalesce<S>(svc: S) -> (Cache<Coalesce<S>>, Arc<InFlight>)
    where
        S: Service<PlacesRequest, Response = Places, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send,
    {
        let grid = Grid::new(0.01);
        let coalesce = CoalesceLayer::new(grid);
        let in_flight = coalesce.in_flight.clone();
        let svc = CacheLayer::new(10, Duration::from_secs(60), grid).layer(coalesce.layer(svc));
        (svc, in_flight)
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_hit_never_enters_the_in_flight_map() {
        let (svc, calls) = counting();
        let (mut svc, in_flight) = cache_over_coalesce(svc);
        let r = req(1.0, 2.0, 300.0, 20);
        // A miss goes through the map (see the next test) and leaves it when answered.
        assert!(!svc.call(r).await.unwrap().cached);
        assert!(lock(&in_flight.lookups).is_empty());
        // A hit (even at another location of the same cell) is answered by the cache
        // alone: nothing is added to the map (coalescing in front of the cache would
        // add its entry in `call`, before any poll), and the provider is not asked.
        let hit = svc.call(req(1.0000001, 2.0, 300.0, 3));
        assert!(lock(&in_flight.lookups).is_empty(), "a hit entered the map");
        assert!(hit.await.unwrap().cached);
        assert!(lock(&in_flight.lookups).is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_misses_in_one_cell_make_one_call_at_the_first_callers_location() {
        let release = Arc::new(Notify::new());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (gate, seen) = (release.clone(), asked.clone());
        let svc = service_fn(move |r: PlacesRequest| {
            let gate = gate.clone();
            lock(&seen).push(r);
            async move {
                gate.notified().await;
                Ok::<_, BoxError>(Places::found(vec![Arc::from("{}")]))
            }
        });
        let (mut svc, in_flight) = cache_over_coalesce(svc);
        // 1 % of 10 km is 100 m: these are all within a metre of the first.
        let first = req(34.068930, -118.445127, 10_000.0, 5);
        let others: Vec<PlacesRequest> = (1..100)
            .map(|i| {
                let offset = f64::from(i) * 1e-7;
                req(
                    first.lat + offset,
                    first.lon - offset,
                    10_000.0,
                    i as usize % 21,
                )
            })
            .collect();
        let grid = Grid::new(0.01);
        assert!(
            others.iter().all(|r| grid.key(r) == grid.key(&first)),
            "one cell"
        );
        let mut waiting = vec![tokio::spawn(svc.call(first))];
        waiting.extend(others.into_iter().map(|r| tokio::spawn(svc.call(r))));
        while lock(&asked).is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(lock(&in_flight.lookups).len(), 1, "one lookup in flight");
        while !waiting.iter().all(|w| w.is_finished()) {
            release.notify_waiters();
            tokio::task::yield_now().await;
        }
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap().status, "OK");
        }
        assert_eq!(
            *lock(&asked),
            [first],
            "one call, at the first caller's own location"
        );
        // The answer is kept for the cell.
        let later = svc
            .call(req(first.lat - 1e-6, first.lon, 10_000.0, 1))
            .await;
        assert!(later.unwrap().cached);
        assert_eq!(lock(&asked).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_kept_for_the_ttl() {
        let (svc, calls) = counting();
        let svc = CacheLayer::new(10, Duration::from_secs(60), Grid::new(0.01)).layer(svc);
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
        let svc = CacheLayer::new(2, Duration::from_secs(60), Grid::new(0.01)).layer(svc);
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
        let svc = CacheLayer::new(2, Duration::from_secs(60), Grid::new(0.01)).layer(failing);
        assert!(svc.clone().oneshot(at(1.0)).await.is_err());
        assert!(lock(&svc.store).answers.is_empty());

        let (svc, calls) = counting();
        let off = CacheLayer::new(0, Duration::from_secs(60), Grid::new(0.01)).layer(svc);
        off.clone().oneshot(at(1.0)).await.unwrap();
        off.clone().oneshot(at(1.0)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "capacity 0 keeps nothing");
    }
}
