//! The closed-loop engine behind every throughput scenario: N connections, each keeping D
//! requests in flight (writing what is missing in one write, then taking replies as they come),
//! and the `iamat`, `whatsat` and `records` scenarios built on it.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
    time::timeout_at,
};

use super::{
    BenchError, LoadArgs, Target,
    conn::{self, Conn},
    progress::Progress,
    report::{Latency, LoadReport, Tally},
    server_rss_kb,
    workload::{
        ClientClock, Clients, Codec, Frame, Generator, Op, Point, REDIS_PLACES, Verdict, Wire,
        Workload, run_prefix,
    },
};

/// One reply in this many has its WHATSAT JSON parsed in full and its places counted.
const SAMPLE_EVERY: u64 = 64;

/// When a run stops sending.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stop {
    /// This long after the warm-up.
    After(Duration),
    /// When this many requests have been sent after the warm-up (spread over the connections).
    Requests(u64),
}

/// The shape of a run.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) addr: SocketAddr,
    /// More servers to spread the connections over: connection i goes to the i-th of
    /// `addr` followed by these, round robin (the whole-herd scenario).
    pub(crate) also: Vec<SocketAddr>,
    pub(crate) connections: usize,
    pub(crate) depth: usize,
    pub(crate) warmup: Duration,
    pub(crate) stop: Stop,
    /// A connection silent this long while requests are in flight is given up.
    pub(crate) timeout: Duration,
    /// Nothing runs past this, whatever else is asked.
    pub(crate) time_limit: Duration,
    /// Open loop: requests per second in all, sent on schedule whatever the replies.
    pub(crate) rate: Option<f64>,
    /// Keys of answered measured requests each connection keeps, a uniform sample of its
    /// own (reservoir sampling), for a read-back after the run.
    pub(crate) keep: usize,
}

impl Plan {
    /// Every server the run talks to, for reports: `a`, or `a,b,c`.
    pub(crate) fn addr_list(&self) -> String {
        std::iter::once(&self.addr)
            .chain(&self.also)
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(crate) fn from_args(addr: SocketAddr, load: &LoadArgs) -> Result<Plan, BenchError> {
        if load.connections == 0 || load.depth == 0 {
            return Err(BenchError::Usage(
                "--connections and --depth must be at least 1".into(),
            ));
        }
        if let Some(rate) = load.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(BenchError::Usage(
                "--rate must be a positive number of requests per second".into(),
            ));
        }
        Ok(Plan {
            addr,
            also: Vec::new(),
            connections: load.connections,
            depth: load.depth,
            warmup: load.warmup,
            stop: match load.requests {
                Some(n) => Stop::Requests(n),
                None => Stop::After(load.duration),
            },
            timeout: load.timeout,
            time_limit: load.time_limit,
            rate: load.rate,
            keep: 0,
        })
    }

    /// The server connection `i` talks to.
    pub(crate) fn addr_of(&self, i: usize) -> SocketAddr {
        match i % (1 + self.also.len()) {
            0 => self.addr,
            k => self.also[k - 1],
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) tally: Tally,
    /// From the end of the warm-up to the last measured reply.
    pub(crate) elapsed: Duration,
}

impl Measured {
    pub(crate) fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.tally.ok as f64 / secs
        } else {
            0.0
        }
    }
}

/// Runs `plan` with the requests of `generator(connection index)`.
pub(crate) async fn run(plan: &Plan, mut generator: impl FnMut(usize) -> Generator) -> Measured {
    let mut total = Tally::new();
    // Every connection is open before the clock starts.
    let mut connecting = JoinSet::new();
    for i in 0..plan.connections {
        let (addr, within) = (plan.addr_of(i), plan.timeout);
        connecting.spawn(async move { (i, conn::connect(addr, within).await) });
    }
    let mut streams = Vec::with_capacity(plan.connections);
    let mut first_error = None;
    while let Some(joined) = connecting.join_next().await {
        match joined {
            Ok((i, Ok(s))) => streams.push((i, s)),
            Ok((_, Err(e))) => {
                total.errors.connect += 1;
                first_error.get_or_insert_with(|| conn::explain(&e));
            }
            Err(_) => total.errors.connect += 1,
        }
    }
    if let Some(e) = first_error {
        eprintln!(
            "herd-bench: {} of {} connections to {} failed: {e}",
            total.errors.connect,
            plan.connections,
            plan.addr_list()
        );
    }

    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let per_conn = |i: usize| match plan.stop {
        Stop::Requests(n) => {
            let c = plan.connections as u64;
            Some(n / c + u64::from((i as u64) < n % c))
        }
        Stop::After(_) => None,
    };
    let schedule = Schedule {
        measure_from,
        stop_at: match plan.stop {
            Stop::After(d) => Some(measure_from + d),
            Stop::Requests(_) => None,
        },
        deadline: start + plan.time_limit,
        timeout: plan.timeout,
        depth: plan.depth,
        // Each connection sends every `connections / rate` seconds, the connections evenly
        // out of phase, so that the herd sees `rate` requests per second spread in time.
        interval: plan
            .rate
            .map(|rate| Duration::from_secs_f64(plan.connections as f64 / rate)),
        keep: plan.keep,
    };
    let length = match plan.stop {
        Stop::After(d) => plan.warmup + d,
        Stop::Requests(_) => plan.time_limit,
    };
    let progress = Progress::for_run(length);
    let shown = progress
        .clone()
        .map(|p| tokio::spawn(p.show(start.into(), plan.warmup)));
    let n = plan.connections.max(1) as f64;
    let mut running = JoinSet::new();
    for (i, stream) in streams {
        let g = generator(i);
        let first_due = start
            + schedule
                .interval
                .map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / n));
        running.spawn(drive(
            stream,
            g,
            schedule,
            per_conn(i),
            progress.clone(),
            first_due,
        ));
    }
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok(t) => total.merge(&t),
            Err(e) => eprintln!("herd-bench: a connection task failed: {e}"),
        }
    }
    if let Some(shown) = shown {
        shown.abort();
        Progress::clear();
    }
    // `merge` sums the error total; make sure it is right even with no connection at all.
    total.merge(&Tally::new());
    let elapsed = total.last.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(measure_from)
    });
    Measured {
        tally: total,
        elapsed,
    }
}

#[derive(Clone, Copy, Debug)]
struct Schedule {
    measure_from: Instant,
    stop_at: Option<Instant>,
    deadline: Instant,
    timeout: Duration,
    depth: usize,
    /// Open loop: one request per connection every this long.
    interval: Option<Duration>,
    keep: usize,
}

struct InFlight {
    sent: Instant,
    measured: bool,
    key: Vec<u8>,
}

/// One connection's loop: keep `depth` requests in flight (or, open loop, send one every
/// `interval` from `next_due` on, at most `depth` in flight) until the schedule (or `quota`
/// measured requests) says stop, then take the last replies.
async fn drive(
    mut stream: TcpStream,
    mut generator: Generator,
    s: Schedule,
    mut quota: Option<u64>,
    progress: Option<Arc<Progress>>,
    mut next_due: Instant,
) -> Tally {
    let codec = generator.codec();
    let mut tally = Tally::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(s.depth * 128);
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(s.depth);
    let mut spare_keys: Vec<Vec<u8>> = Vec::with_capacity(s.depth);
    let mut judged = 0u64;

    let give_up = |tally: &mut Tally, in_flight: &VecDeque<InFlight>| {
        tally.errors.missing += in_flight.iter().filter(|r| r.measured).count() as u64;
    };

    // Open loop only: whether the schedule has stopped sending, and when the connection last
    // showed life (a reply, or a send with nothing in flight) for its silence timeout.
    let mut sending_done = false;
    let mut alive_at = Instant::now();

    loop {
        let now = Instant::now();
        if s.interval.is_some() && in_flight.is_empty() {
            alive_at = now;
        }
        while in_flight.len() < s.depth && now < s.deadline && !sending_done {
            // Open loop: the request is stamped with when it was due, not when it left.
            let at = match s.interval {
                Some(_) if next_due > now => break,
                Some(_) => next_due,
                None => now,
            };
            let measured = at >= s.measure_from;
            if measured {
                let more = match (&mut quota, s.stop_at) {
                    (Some(0), _) => false,
                    (Some(q), _) => {
                        *q -= 1;
                        true
                    }
                    (None, Some(stop_at)) => at < stop_at,
                    (None, None) => false,
                };
                if !more {
                    sending_done = s.interval.is_some();
                    break;
                }
            }
            let mut key = spare_keys.pop().unwrap_or_default();
            key.clear();
            generator.next(&mut out, &mut key);
            in_flight.push_back(InFlight {
                sent: at,
                measured,
                key,
            });
            if let Some(iv) = s.interval {
                next_due += iv;
            }
        }
        if !out.is_empty() {
            let wrote = timeout_at(
                (now + s.timeout).min(s.deadline).into(),
                stream.write_all(&out),
            )
            .await;
            if !matches!(wrote, Ok(Ok(()))) {
                give_up(&mut tally, &in_flight);
                return tally;
            }
            out.clear();
        }
        let open_loop = s.interval.is_some() && !sending_done && Instant::now() < s.deadline;
        if in_flight.is_empty() && !open_loop {
            return tally;
        }

        // Closed loop: wait for a reply. Open loop: also wake when the next request is due.
        let silent_at = if in_flight.is_empty() {
            s.deadline
        } else if s.interval.is_some() {
            alive_at + s.timeout
        } else {
            Instant::now() + s.timeout
        }
        .min(s.deadline);
        let wake = if open_loop {
            next_due.min(silent_at)
        } else {
            silent_at
        };
        let read = timeout_at(wake.into(), stream.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => alive_at = Instant::now(),
            Err(_) if open_loop && Instant::now() < silent_at => continue,
            _ => {
                give_up(&mut tally, &in_flight);
                return tally;
            }
        }
        let now = Instant::now();
        // For the progress line: replies of this read, and their summed latency.
        let (mut replies, mut latency) = (0u64, Duration::ZERO);
        loop {
            match codec.frame(&buf) {
                Frame::More if progress.is_some() => {
                    if let Some(p) = &progress {
                        p.add(replies, latency);
                    }
                    break;
                }
                Frame::More => break,
                Frame::Broken => {
                    tally.errors.malformed += 1;
                    in_flight.pop_front();
                    give_up(&mut tally, &in_flight);
                    return tally;
                }
                Frame::Reply(len) => {
                    match in_flight.pop_front() {
                        Some(req) => {
                            replies += 1;
                            tally.answered += 1;
                            latency += now - req.sent;
                            if req.measured {
                                judged += 1;
                                let sample = codec.op == Op::Whatsat
                                    && codec.wire == Wire::Herd
                                    && judged % SAMPLE_EVERY == 1;
                                let verdict = codec.judge(&buf[..len], &req.key, sample);
                                if s.keep > 0 && matches!(verdict, Verdict::Ok { .. }) {
                                    tally.keep(&req.key, s.keep);
                                }
                                tally.record(verdict, now - req.sent);
                                tally.last = Some(now);
                            }
                            spare_keys.push(req.key);
                        }
                        // A reply nobody asked for.
                        None => tally.errors.malformed += 1,
                    }
                    buf.advance(len);
                }
            }
        }
    }
}

/// Resolves the target's address, defaulting by wire.
pub(crate) async fn resolve(addr: Option<&str>, default: &str) -> Result<SocketAddr, BenchError> {
    let text = addr.unwrap_or(default);
    tokio::net::lookup_host(text)
        .await
        .map_err(|e| BenchError::Usage(format!("cannot resolve {text}: {e}")))?
        .next()
        .ok_or_else(|| BenchError::Usage(format!("{text} resolves to no address")))
}

pub(crate) async fn target_addr(target: &Target) -> Result<(Wire, SocketAddr), BenchError> {
    let wire = if target.redis {
        Wire::Redis
    } else {
        Wire::Herd
    };
    let default = match wire {
        Wire::Herd => super::DEFAULT_HERD_ADDR,
        Wire::Redis => super::DEFAULT_REDIS_ADDR,
    };
    Ok((wire, resolve(target.addr.as_deref(), default).await?))
}

pub(crate) fn report(scenario: &'static str, wire: Wire, plan: &Plan, m: &Measured) -> LoadReport {
    LoadReport {
        scenario,
        target: wire.name(),
        addr: plan.addr_list(),
        connections: plan.connections,
        depth: plan.depth,
        offered_rate_ops_s: plan.rate,
        clients: None,
        radius_km: None,
        bound: None,
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: m.elapsed.as_secs_f64(),
        requests: m.tally.ok,
        throughput_ops_s: (m.throughput() * 10.0).round() / 10.0,
        latency_us: Latency::of(&m.tally.latency),
        errors: m.tally.errors,
        results_per_reply: (m.tally.sampled > 0)
            .then(|| m.tally.results as f64 / m.tally.sampled as f64),
        rss_kb_before: None,
        rss_kb_after: None,
    }
}

/// `herd-bench iamat`.
pub(crate) async fn iamat(
    target: &Target,
    load: &LoadArgs,
    clients: Clients,
) -> Result<LoadReport, BenchError> {
    let (wire, addr) = target_addr(target).await?;
    let plan = Plan::from_args(addr, load)?;
    let work = Arc::new(Workload::Iamat { clients });
    let prefix = run_prefix("b");
    let clock = ClientClock::now();
    let m = run(&plan, |i| {
        Generator::new(wire, work.clone(), prefix.clone(), i, load.seed, clock)
    })
    .await;
    let mut r = report("iamat", wire, &plan, &m);
    r.clients = Some(clients.name());
    Ok(r)
}

/// Where `whatsat` asks about, and how.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Area {
    pub(crate) centre: Point,
    pub(crate) spread_km: f64,
    pub(crate) points: usize,
    pub(crate) radius_km: f64,
    pub(crate) bound: u32,
}

/// `herd-bench whatsat`: seeds the clients (herd) or checks the places (Redis), then measures.
pub(crate) async fn whatsat(
    target: &Target,
    load: &LoadArgs,
    area: Area,
) -> Result<LoadReport, BenchError> {
    let (wire, addr) = target_addr(target).await?;
    let plan = Plan::from_args(addr, load)?;
    if area.points == 0 {
        return Err(BenchError::Usage("--points must be at least 1".into()));
    }
    if wire == Wire::Redis && area.bound == 0 {
        return Err(BenchError::Usage(
            "--bound 0 has no GEOSEARCH equivalent (COUNT must be positive)".into(),
        ));
    }
    let mut rng = fastrand::Rng::with_seed(load.seed);
    let points: Arc<[Point]> = (0..area.points)
        .map(|_| area.centre.near(area.spread_km, &mut rng))
        .collect();
    let prefix = run_prefix("w");
    let clock = ClientClock::now();
    let deadline = tokio::time::Instant::now() + load.time_limit;
    match wire {
        Wire::Herd => seed_clients(addr, &points, &prefix, clock, load.timeout, deadline).await?,
        Wire::Redis => check_places(addr, load.timeout).await?,
    }
    let work = Arc::new(Workload::Whatsat {
        points,
        radius_km: area.radius_km,
        bound: area.bound,
    });
    let m = run(&plan, |i| {
        Generator::new(wire, work.clone(), prefix.clone(), i, load.seed, clock)
    })
    .await;
    let mut r = report("whatsat", wire, &plan, &m);
    r.radius_km = Some(area.radius_km);
    r.bound = Some(area.bound);
    Ok(r)
}

/// Sends one IAMAT per point, as client `{prefix}-p{index}`, pipelined on one connection.
async fn seed_clients(
    addr: SocketAddr,
    points: &[Point],
    prefix: &str,
    clock: ClientClock,
    timeout: Duration,
    deadline: tokio::time::Instant,
) -> Result<(), BenchError> {
    use std::io::Write as _;
    let stream = conn::connect(addr, timeout).await.map_err(|e| {
        BenchError::Run(format!("seeding clients at {addr}: {}", conn::explain(&e)))
    })?;
    let codec = Codec {
        wire: Wire::Herd,
        op: Op::Iamat,
    };
    let mut c = Conn::new(stream, codec);
    for (n, chunk) in points.chunks(256).enumerate() {
        let mut out = Vec::with_capacity(chunk.len() * 64);
        let mut keys = Vec::with_capacity(chunk.len());
        for (j, p) in chunk.iter().enumerate() {
            let i = n * 256 + j;
            let start = out.len() + 6;
            let _ = write!(out, "IAMAT {prefix}-p{i} {:+.6}{:+.6} ", p.lat, p.lon);
            clock.write(0, &mut out);
            keys.push(out[start..].to_vec());
            out.push(b'\n');
        }
        let within = (tokio::time::Instant::now() + timeout).min(deadline);
        let fail = |e: std::io::Error| BenchError::Run(format!("seeding clients at {addr}: {e}"));
        c.send(&out, within).await.map_err(fail)?;
        for key in keys {
            let reply = c
                .reply((tokio::time::Instant::now() + timeout).min(deadline))
                .await
                .map_err(fail)?;
            if codec.judge(&reply, &key, false) != (Verdict::Ok { results: None }) {
                return Err(BenchError::Run(format!(
                    "seeding clients at {addr}: unexpected reply {:?}",
                    String::from_utf8_lossy(&reply).trim_end()
                )));
            }
        }
    }
    Ok(())
}

/// Fails early, with advice, when Redis has no places to search.
async fn check_places(addr: SocketAddr, timeout: Duration) -> Result<(), BenchError> {
    let n = super::redis::zcard(addr, REDIS_PLACES, timeout).await?;
    if n == 0 {
        return Err(BenchError::Run(format!(
            "Redis at {addr} has no places in {REDIS_PLACES}; run `herd-bench load-redis-places --addr {addr}` first"
        )));
    }
    Ok(())
}

/// `herd-bench records`: N distinct client records, pipelined, and the server's memory after.
pub(crate) async fn records(
    target: &Target,
    records: u64,
    load: &LoadArgs,
    server_pid: Option<u32>,
) -> Result<LoadReport, BenchError> {
    let (wire, addr) = target_addr(target).await?;
    let mut plan = Plan::from_args(addr, load)?;
    plan.warmup = Duration::ZERO;
    plan.stop = Stop::Requests(records);
    let before = server_pid.map(server_rss_kb).transpose()?;
    let work = Arc::new(Workload::Iamat {
        clients: Clients::Distinct,
    });
    let prefix = run_prefix("r");
    let clock = ClientClock::now();
    let m = run(&plan, |i| {
        Generator::new(wire, work.clone(), prefix.clone(), i, load.seed, clock)
    })
    .await;
    let after = server_pid.map(server_rss_kb).transpose()?;
    let mut r = report("records", wire, &plan, &m);
    r.clients = Some(Clients::Distinct.name());
    r.rss_kb_before = before;
    r.rss_kb_after = after;
    Ok(r)
}
