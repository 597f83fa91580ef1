//! `herd-bench propagation`: IAMATs sent to one server, timed until they are visible at another,
//! either by polling `WHATSAT id 1 0` there (any server of the protocol) or through its Inspect
//! `Watch` stream (herd's peer port: no polling load, and no polling interval to blur the figure).
//! Background IAMATs at the origin load the herd at a fixed rate (open loop) meanwhile.

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    time::{Instant, sleep_until, timeout_at},
};

use super::{
    BenchError,
    conn::{self, Conn},
    report::{Errors, Latency, Table, histogram, micros, thousands},
    workload::{ClientClock, Codec, Op, Point, Verdict, Wire, run_prefix},
};
use herd::proto::{LookupRequest, WatchRequest, inspect_client::InspectClient};

/// Where probes are placed: open ocean, so a poll's places lookup finds nothing and costs little.
const PROBE_AT: &str = "+0.000000-150.000000";

/// How propagation is observed at the far server.
#[derive(Clone, Debug)]
pub(crate) enum Observe {
    /// `WHATSAT id 1 0` at this client address, back to back, until it stops answering `?`.
    Poll(SocketAddr),
    /// The Inspect `Watch` stream of the server at this peer address.
    Watch(SocketAddr),
}

/// The shape of a propagation run.
#[derive(Clone, Debug)]
pub(crate) struct PropagationPlan {
    pub(crate) at: SocketAddr,
    pub(crate) observe: Observe,
    pub(crate) probe_rate: f64,
    pub(crate) probes: Option<u64>,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) background_rate: f64,
    pub(crate) background_connections: usize,
    /// Where the background connections go, round robin (empty: all to `at`).
    pub(crate) background_at: Vec<SocketAddr>,
    pub(crate) timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) time_limit: Duration,
    pub(crate) seed: u64,
}

/// What a propagation run measured.
#[derive(Debug, Serialize)]
pub(crate) struct PropagationReport {
    pub(crate) scenario: &'static str,
    pub(crate) at: String,
    /// `poll HOST:PORT` or `watch HOST:PEERPORT`.
    pub(crate) observed: String,
    pub(crate) method: &'static str,
    pub(crate) warmup_s: f64,
    pub(crate) duration_s: f64,
    /// Probes sent after the warm-up, and how many were seen in time.
    pub(crate) probes: u64,
    pub(crate) seen: u64,
    /// From the probe's write at the origin to its sighting at the far server.
    pub(crate) latency_us: Latency,
    pub(crate) errors: Errors,
    pub(crate) background: Background,
    /// How long the first probe took to get through (links coming up), in seconds.
    pub(crate) ready_s: f64,
    /// Watch only: probes whose stream broke, seen through Lookup polling instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) watch_fallbacks: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Background {
    pub(crate) target_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) connections: usize,
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    pub(crate) rejected: u64,
    pub(crate) malformed: u64,
}

impl PropagationReport {
    pub(crate) fn table(&self) -> Table {
        let mut t = Table::new(format!(
            "herd-bench propagation {} -> {} ({})",
            self.at, self.observed, self.method
        ));
        t.row(
            "time",
            format!(
                "{:.2} s measured after {:.2} s warm-up (first update through in {:.3} s)",
                self.duration_s, self.warmup_s, self.ready_s
            ),
        );
        t.row(
            "probes",
            format!(
                "{} sent, {} seen",
                thousands(self.probes),
                thousands(self.seen)
            ),
        );
        t.row("latency (us)", self.latency_us.row());
        let b = &self.background;
        t.row(
            "background",
            if b.target_rate > 0.0 {
                format!(
                    "{} IAMAT/s asked, {} IAMAT/s sent on {} connections ({} answered, {} rejected, {} malformed)",
                    thousands(b.target_rate.round() as u64),
                    thousands(b.achieved_rate.round() as u64),
                    b.connections,
                    thousands(b.answered),
                    thousands(b.rejected),
                    thousands(b.malformed)
                )
            } else {
                "none (idle)".to_owned()
            },
        );
        if let Some(n) = self.watch_fallbacks.filter(|&n| n > 0) {
            t.row(
                "watch",
                format!("{n} probes seen through Lookup polling (their Watch stream fell behind)"),
            );
        }
        t.row(
            "errors",
            format!(
                "{} ({} not seen in time, {} bad replies, {} connect)",
                self.errors.total,
                self.errors.missing,
                self.errors.rejected + self.errors.malformed + self.errors.failed,
                self.errors.connect
            ),
        );
        t
    }
}

/// Watches one probe's client at the far server, or polls for it.
enum Observer {
    Poll(Conn),
    Watch {
        client: InspectClient<tonic::transport::Channel>,
        /// Probes seen through `Lookup` because their Watch stream broke.
        fallbacks: u64,
    },
}

/// A probe that was written and is being looked for.
enum Pending {
    Poll,
    Watch(Box<tonic::Streaming<herd::proto::WatchEvent>>),
}

impl Observer {
    async fn open(
        how: &Observe,
        timeout: Duration,
        until: Instant,
    ) -> Result<Observer, BenchError> {
        match how {
            Observe::Poll(addr) => {
                let s = conn::connect_patiently(*addr, timeout, until)
                    .await
                    .map_err(|e| {
                        BenchError::Run(format!("polling {addr}: {}", conn::explain(&e)))
                    })?;
                Ok(Observer::Poll(Conn::new(
                    s,
                    Codec {
                        wire: Wire::Herd,
                        op: Op::Whatsat,
                    },
                )))
            }
            Observe::Watch(addr) => {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| BenchError::Usage(format!("--watch {addr}: {e}")))?
                    .connect_timeout(timeout)
                    .tcp_nodelay(true);
                loop {
                    match endpoint.connect().await {
                        Ok(channel) => {
                            return Ok(Observer::Watch {
                                client: InspectClient::new(channel),
                                fallbacks: 0,
                            });
                        }
                        Err(_) if Instant::now() < until => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => {
                            return Err(BenchError::Run(format!("watching {addr}: {e}")));
                        }
                    }
                }
            }
        }
    }

    /// Gets ready to see `id` (a Watch is subscribed before the probe leaves).
    async fn prepare(&mut self, id: &str, deadline: Instant) -> Result<Pending, String> {
        match self {
            Observer::Poll(_) => Ok(Pending::Poll),
            Observer::Watch { client, .. } => {
                let call = client.watch(WatchRequest {
                    client: id.to_owned(),
                });
                match timeout_at(deadline, call).await {
                    Ok(Ok(r)) => Ok(Pending::Watch(Box::new(r.into_inner()))),
                    Ok(Err(status)) => Err(format!("Watch: {status}")),
                    Err(_) => Err("Watch did not start in time".to_owned()),
                }
            }
        }
    }

    /// Waits until `id` is visible; returns when it was seen, or None past `deadline`.
    async fn wait(
        &mut self,
        pending: Pending,
        id: &str,
        poll_gap: Duration,
        deadline: Instant,
    ) -> Result<Option<Instant>, String> {
        match (self, pending) {
            (Observer::Poll(c), Pending::Poll) => {
                let line = format!("WHATSAT {id} 1 0\n");
                loop {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    c.send(line.as_bytes(), deadline)
                        .await
                        .map_err(|e| format!("polling: {e}"))?;
                    let reply = match c.reply(deadline).await {
                        Ok(r) => r,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(None),
                        Err(e) => return Err(format!("polling: {e}")),
                    };
                    let seen = Instant::now();
                    if reply.starts_with(b"AT ") {
                        return Ok(Some(seen));
                    }
                    if !reply.starts_with(b"?") {
                        return Err(format!(
                            "polling: unexpected reply {:?}",
                            String::from_utf8_lossy(&reply)
                        ));
                    }
                    if !poll_gap.is_zero() {
                        tokio::time::sleep(poll_gap).await;
                    }
                }
            }
            (Observer::Watch { client, fallbacks }, Pending::Watch(mut events)) => {
                let broke = loop {
                    match timeout_at(deadline, events.message()).await {
                        Err(_) => return Ok(None),
                        Ok(Ok(Some(event))) => {
                            let seen = Instant::now();
                            let ours = event
                                .update
                                .as_ref()
                                .is_some_and(|u| u.client_id == id.as_bytes());
                            if ours {
                                return Ok(Some(seen));
                            }
                        }
                        Ok(Ok(None)) => break "Watch stream ended".to_owned(),
                        Ok(Err(status)) => break format!("Watch: {}", status.message()),
                    }
                };
                // The stream broke (a watcher that falls behind a busy server is cut off): the
                // probe may still be on its way, so ask for it with Lookup until it shows.
                if *fallbacks == 0 {
                    eprintln!(
                        "herd-bench: {broke}; falling back to Lookup polling for such probes"
                    );
                }
                *fallbacks += 1;
                loop {
                    let ask = client.lookup(LookupRequest {
                        client: id.to_owned(),
                        client_id: Default::default(),
                    });
                    match timeout_at(deadline, ask).await {
                        Err(_) => return Ok(None),
                        Ok(Ok(r)) if r.get_ref().found => return Ok(Some(Instant::now())),
                        Ok(Ok(_)) => {}
                        Ok(Err(status)) => return Err(format!("Lookup: {status}")),
                    }
                }
            }
            _ => Err("observer and probe disagree".to_owned()),
        }
    }
}

/// `herd-bench propagation`.
pub(crate) async fn run(plan: &PropagationPlan) -> Result<PropagationReport, BenchError> {
    if plan.probe_rate <= 0.0 || plan.background_rate < 0.0 {
        return Err(BenchError::Usage(
            "--probe-rate must be positive and --background-rate not negative".into(),
        ));
    }
    let started = Instant::now();
    let hard_deadline = started + plan.time_limit;
    let prefix = run_prefix("p");
    let clock = ClientClock::now();
    let origin_codec = Codec {
        wire: Wire::Herd,
        op: Op::Iamat,
    };
    // Nothing is measured until one update gets through: the servers may still be starting and
    // the links coming up.
    let ready_deadline = (Instant::now() + plan.ready_timeout).min(hard_deadline);
    let origin = conn::connect_patiently(plan.at, plan.timeout, ready_deadline)
        .await
        .map_err(|e| BenchError::Run(format!("origin {}: {}", plan.at, conn::explain(&e))))?;
    let mut origin = Conn::new(origin, origin_codec);
    let mut observer = Observer::open(&plan.observe, plan.timeout, ready_deadline).await?;
    let mut errors = Errors::default();
    let mut n = 0u64;

    let probe = |n: u64| {
        let id = format!("{prefix}-{n}");
        let mut line = format!("IAMAT {id} {PROBE_AT} ").into_bytes();
        clock.write(n, &mut line);
        let key = line[6..].to_vec();
        line.push(b'\n');
        (id, line, key)
    };
    {
        let (id, line, key) = probe(n);
        n += 1;
        let pending = observer
            .prepare(&id, ready_deadline)
            .await
            .map_err(BenchError::Run)?;
        origin
            .send(&line, ready_deadline)
            .await
            .map_err(|e| BenchError::Run(format!("origin {}: {e}", plan.at)))?;
        let seen = observer
            .wait(pending, &id, Duration::from_millis(10), ready_deadline)
            .await
            .map_err(BenchError::Run)?;
        if seen.is_none() {
            return Err(BenchError::Run(format!(
                "an IAMAT at {} was not visible at the far server within {:?}: are the links up?",
                plan.at, plan.ready_timeout
            )));
        }
        let reply = origin
            .reply(ready_deadline)
            .await
            .map_err(|e| BenchError::Run(format!("origin {}: {e}", plan.at)))?;
        if origin_codec.judge(&reply, &key, false) != (Verdict::Ok { results: None }) {
            return Err(BenchError::Run(format!(
                "origin {} answered {:?}",
                plan.at,
                String::from_utf8_lossy(&reply).trim_end()
            )));
        }
    }
    let ready_s = started.elapsed().as_secs_f64();

    // Background load from now until the probes are done.
    let stop = Arc::new(AtomicBool::new(false));
    let mut background = tokio::task::JoinSet::new();
    if plan.background_rate > 0.0 {
        let per_conn = plan.background_rate / plan.background_connections.max(1) as f64;
        for i in 0..plan.background_connections.max(1) {
            let addr = if plan.background_at.is_empty() {
                plan.at
            } else {
                plan.background_at[i % plan.background_at.len()]
            };
            background.spawn(open_loop(
                addr,
                per_conn,
                format!("{prefix}-bg{i}"),
                clock,
                plan.seed ^ i as u64,
                stop.clone(),
                plan.timeout,
                hard_deadline,
            ));
        }
    }

    let measure_from = Instant::now() + plan.warmup;
    sleep_until(measure_from.min(hard_deadline)).await;
    let measure_until = measure_from + plan.duration;
    let gap = Duration::from_secs_f64(1.0 / plan.probe_rate);
    let mut latency = histogram();
    let (mut sent, mut seen_count) = (0u64, 0u64);
    let mut next_at = Instant::now();
    loop {
        let now = Instant::now();
        let more = match plan.probes {
            Some(count) => sent < count,
            None => now < measure_until,
        };
        if !more || now >= hard_deadline {
            break;
        }
        let (id, line, key) = probe(n);
        n += 1;
        let deadline = (Instant::now() + plan.timeout).min(hard_deadline);
        let pending = match observer.prepare(&id, deadline).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("herd-bench: {e}");
                errors.connect += 1;
                break;
            }
        };
        sent += 1;
        let t0 = Instant::now();
        if let Err(e) = origin.send(&line, deadline).await {
            eprintln!("herd-bench: origin {}: {e}", plan.at);
            errors.missing += 1;
            break;
        }
        match observer.wait(pending, &id, Duration::ZERO, deadline).await {
            Ok(Some(t1)) => {
                seen_count += 1;
                latency.saturating_record(micros(t1 - t0));
            }
            Ok(None) => errors.missing += 1,
            Err(e) => {
                // This probe is lost; the next one gets a new stream.
                if errors.missing == 0 {
                    eprintln!("herd-bench: {e}");
                }
                errors.missing += 1;
            }
        }
        match origin.reply(deadline).await {
            Ok(reply) => match origin_codec.judge(&reply, &key, false) {
                Verdict::Ok { .. } => {}
                Verdict::Rejected => errors.rejected += 1,
                _ => errors.malformed += 1,
            },
            Err(e) => {
                eprintln!("herd-bench: origin {}: {e}", plan.at);
                errors.missing += 1;
                break;
            }
        }
        next_at += gap;
        let now = Instant::now();
        if next_at < now {
            // Running late (probes slower than the rate): do not burst to catch up.
            next_at = now;
        }
        sleep_until(next_at.min(hard_deadline)).await;
    }
    let duration_s = measure_from.elapsed().as_secs_f64();

    stop.store(true, Ordering::Relaxed);
    let mut bg = Background {
        target_rate: plan.background_rate,
        connections: if plan.background_rate > 0.0 {
            plan.background_connections.max(1)
        } else {
            0
        },
        ..Background::default()
    };
    let mut bg_secs: f64 = 0.0;
    while let Some(joined) = background.join_next().await {
        match joined {
            Ok(Ok(b)) => {
                bg.sent += b.sent;
                bg.answered += b.answered;
                bg.rejected += b.rejected;
                bg.malformed += b.malformed;
                bg_secs = bg_secs.max(b.secs);
            }
            Ok(Err(e)) => {
                eprintln!("herd-bench: background load: {e}");
                errors.connect += 1;
            }
            Err(e) => eprintln!("herd-bench: background task failed: {e}"),
        }
    }
    if bg_secs > 0.0 {
        bg.achieved_rate = (bg.sent as f64 / bg_secs).round();
    }
    let mut total = Errors::default();
    total.add(&errors);

    Ok(PropagationReport {
        scenario: "propagation",
        at: plan.at.to_string(),
        observed: match &plan.observe {
            Observe::Poll(a) | Observe::Watch(a) => a.to_string(),
        },
        method: match plan.observe {
            Observe::Poll(_) => "poll",
            Observe::Watch(_) => "watch",
        },
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s,
        probes: sent,
        seen: seen_count,
        latency_us: Latency::of(&latency),
        errors: total,
        background: bg,
        ready_s,
        watch_fallbacks: match observer {
            Observer::Watch { fallbacks, .. } => Some(fallbacks),
            Observer::Poll(_) => None,
        },
    })
}

struct OpenLoop {
    sent: u64,
    answered: u64,
    rejected: u64,
    malformed: u64,
    secs: f64,
}

/// Sends IAMATs at `rate` per second whatever the replies (open loop), until `stop`; counts the
/// replies on the side. Clients `{id}-{k}` cycle through 1,000 IDs, times always growing, so
/// every IAMAT is applied and flooded.
#[allow(clippy::too_many_arguments)]
async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    id: String,
    clock: ClientClock,
    seed: u64,
    stop: Arc<AtomicBool>,
    timeout: Duration,
    deadline: Instant,
) -> Result<OpenLoop, String> {
    /// At most this many lines per write, so a late writer catches up smoothly.
    const MAX_BURST: u64 = 2_000;
    let stream = conn::connect(addr, timeout)
        .await
        .map_err(|e| format!("{addr}: {}", conn::explain(&e)))?;
    let (mut rd, mut wr) = stream.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let writing_done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let writer = {
        let (sent, writing_done) = (sent.clone(), writing_done.clone());
        async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut out = Vec::with_capacity(64 * 1024);
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                tick.tick().await;
                let due = (rate * started.elapsed().as_secs_f64()) as u64;
                let batch = due.saturating_sub(n).min(MAX_BURST);
                out.clear();
                for _ in 0..batch {
                    let p = Point::anywhere(&mut rng);
                    let _ = write!(out, "IAMAT {id}-{} {:+.6}{:+.6} ", n % 1_000, p.lat, p.lon);
                    clock.write(n, &mut out);
                    out.push(b'\n');
                    n += 1;
                }
                if !out.is_empty() {
                    let wrote = timeout_at(deadline, wr.write_all(&out)).await;
                    if !matches!(wrote, Ok(Ok(()))) {
                        break;
                    }
                    sent.store(n, Ordering::Release);
                }
            }
            writing_done.store(true, Ordering::Release);
            started.elapsed().as_secs_f64()
        }
    };
    let reader = async {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let (mut answered, mut rejected, mut malformed) = (0u64, 0u64, 0u64);
        let mut quiet_since = Instant::now();
        loop {
            let done = writing_done.load(Ordering::Acquire);
            if done && answered + rejected + malformed >= sent.load(Ordering::Acquire) {
                break;
            }
            if done && quiet_since.elapsed() > timeout {
                break;
            }
            let wait = Instant::now() + Duration::from_millis(50);
            match timeout_at(wait.min(deadline), rd.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(k)) => {
                    quiet_since = Instant::now();
                    buf.extend_from_slice(&chunk[..k]);
                    let mut start = 0;
                    while let Some(p) = buf[start..].iter().position(|&b| b == b'\n') {
                        let line = &buf[start..start + p];
                        if line.starts_with(b"AT ") {
                            answered += 1;
                        } else if line.starts_with(b"?") {
                            rejected += 1;
                        } else {
                            malformed += 1;
                        }
                        start += p + 1;
                    }
                    buf.drain(..start);
                }
                Err(_) if Instant::now() >= deadline => break,
                Err(_) => {}
            }
        }
        (answered, rejected, malformed)
    };
    let (secs, (answered, rejected, malformed)) = tokio::join!(writer, reader);
    Ok(OpenLoop {
        sent: sent.load(Ordering::Acquire),
        answered,
        rejected,
        malformed,
        secs,
    })
}
