//! `herd-bench`: a load generator for the herd line protocol, usable against any server that
//! speaks it, with a `--redis` mode that sends the equivalent Redis geo commands through the
//! same connection and pipelining code. It is a crate of its own, so that the server's binary
//! and image do not carry it; from the server crate it takes only the generated gRPC types
//! (`herd::proto`, for `propagation --watch`) and the embedded places dataset (for
//! `load-redis-places`).
//!
//! - [`load`]: the closed-loop engine (N connections × D in flight) and the `iamat`,
//!   `whatsat` and `records` scenarios.
//! - [`whole`]: the whole herd: IAMATs spread over every server, then a read-back of a sample
//!   from every server (or Redis with replicas).
//! - [`propagation`]: the time an IAMAT at one server takes to be visible at another.
//! - [`connections`]: many idle connections, and the server's memory.
//! - [`simulate`]: a large herd in simulated time (the real replication code).
//! - [`redis`]: loading the offline dataset into Redis for `whatsat --redis`.
//! - [`workload`]: what is sent and how replies are judged, for both wires.
//! - [`resp`]: the RESP encoder and reply parser.
//! - [`conn`]: one connection's buffered reads of whole replies, under a deadline.
//! - [`report`]: histograms, figures, the table and the JSON.
//!
//! Every loop is bounded in time (`--timeout`, `--time-limit`) and every address is one the
//! user gave (the defaults are loopback).

mod conn;
mod connections;
mod load;
mod progress;
mod propagation;
mod redis;
mod report;
mod resp;
mod simulate;
mod whole;
mod workload;

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use workload::{Clients, Point};

/// Where a herd server's client port is by default (Goloman of the default herd).
pub(crate) const DEFAULT_HERD_ADDR: &str = "127.0.0.1:12001";
/// Where Redis listens by default.
pub(crate) const DEFAULT_REDIS_ADDR: &str = "127.0.0.1:6379";

/// Load-test a herd server, or Redis for comparison: throughput, latency, propagation, memory.
#[derive(Parser, Debug)]
#[command(
    name = "herd-bench",
    version,
    after_help = "Each scenario prints a table, or one JSON object with --json. Latencies are in \
microseconds (HDR histogram); the warm-up is excluded from every figure.\n\
Exit status: 0 when every request got the reply it deserves, 3 when the run completed with \
errors (counted in the report), 1 when it could not run, 2 for bad arguments.\n\nExamples:\n  herd-bench iamat --connections 50 --depth 1 --duration 10s\n  herd-bench iamat --redis --addr 127.0.0.1:6379 --depth 16\n  herd-bench whatsat --radius 10 --bound 20\n  herd-bench propagation --at 127.0.0.1:12004 --seen 127.0.0.1:12002 --watch 127.0.0.1:13002 --background-rate 20000\n  herd-bench connections --count 10000 --server-pid $(pgrep -nx herd)\n  herd-bench records --records 1000000 --server-pid $(pgrep -nx herd)"
)]
struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// IAMAT throughput and latency (GEOADD with --redis).
    Iamat {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: LoadArgs,
        /// Which client IDs the IAMATs carry.
        #[arg(long, value_enum, default_value_t = Clients::Distinct)]
        clients: Clients,
        #[command(flatten)]
        output: Output,
    },
    /// The whole herd: IAMATs of new clients spread over every server, then a read-back.
    ///
    /// Connections go round robin to every server of --config (or of --addrs); every IAMAT
    /// makes a new client record. Then a sample of the clients (--sample, drawn uniformly from
    /// the answered IAMATs) is asked about at every server (`WHATSAT id 1 0`), again for those
    /// that still differ until --settle has passed: every server must give the same AT line,
    /// the one the IAMAT made. Differences are listed and make the exit status 3. With --redis,
    /// --addrs lists the primary and then its replicas: GEOADDs go to the primary (the only
    /// one that takes writes) and the read-back is GEOPOS at every one. --server-pid (every
    /// server process, comma separated) adds the servers' CPU time per IAMAT.
    Herd {
        /// The herd file: every server's client port gets connections.
        #[arg(long, value_name = "FILE", conflicts_with = "addrs")]
        config: Option<std::path::PathBuf>,
        /// Reach the herd file's servers at this IP instead of their listen addresses.
        #[arg(long, value_name = "IP", requires = "config")]
        host: Option<String>,
        /// The servers' client addresses instead of a herd file (with --redis: the primary
        /// first, then its replicas).
        #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
        addrs: Vec<String>,
        /// Speak RESP: GEOADD at the first of --addrs, GEOPOS at all of them.
        #[arg(long, requires = "addrs")]
        redis: bool,
        #[command(flatten)]
        load: LoadArgs,
        /// Clients read back from every server.
        #[arg(long, default_value_t = 1000)]
        sample: usize,
        /// How long the read-back waits for the servers to agree.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        settle: Duration,
        /// The server processes (comma separated), for their CPU time per IAMAT.
        #[arg(long = "server-pid", value_name = "PID,...", value_delimiter = ',')]
        server_pids: Vec<u32>,
        #[command(flatten)]
        output: Output,
    },
    /// WHATSAT throughput and latency in a dense area (GEOSEARCH with --redis).
    ///
    /// With herd, first seeds --points clients with IAMATs around --lat/--lon, then asks
    /// WHATSAT about random ones. With --redis, GEOSEARCHes herd:places at the same points
    /// (load it first with `herd-bench load-redis-places`).
    Whatsat {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: LoadArgs,
        /// Search radius, in km.
        #[arg(long, default_value_t = 10.0)]
        radius: f64,
        /// Most places per reply.
        #[arg(long, default_value_t = 20)]
        bound: u32,
        /// Centre of the area (default: Los Angeles).
        #[arg(long, default_value_t = 34.0522, allow_negative_numbers = true)]
        lat: f64,
        #[arg(long, default_value_t = -118.2437, allow_negative_numbers = true)]
        lon: f64,
        /// Clients are spread uniformly over a disc this wide around the centre, in km.
        #[arg(long, default_value_t = 15.0)]
        spread: f64,
        /// How many client locations (herd: seeded clients) the queries pick from.
        #[arg(long, default_value_t = 1000)]
        points: usize,
        #[command(flatten)]
        output: Output,
    },
    /// The time an IAMAT at one server takes to be visible at another.
    ///
    /// Probes (one at a time, --probe-rate per second) are IAMATs of new clients at --at; each
    /// is timed from its write until it is visible at the far server: through that server's
    /// Inspect Watch stream with --watch (precise, no polling load), else by polling `WHATSAT
    /// id 1 0` at --seen back to back (any server of the protocol; the figure includes up to
    /// one poll round trip). --background-rate adds IAMATs per second at --at, open loop.
    Propagation {
        /// Client address of the server that receives the IAMATs (default: Welsh).
        #[arg(long, default_value = "127.0.0.1:12004", value_name = "HOST:PORT")]
        at: String,
        /// Client address of the server polled for them (default: Hands).
        #[arg(long, default_value = "127.0.0.1:12002", value_name = "HOST:PORT")]
        seen: String,
        /// Peer (gRPC) address of the far server: watch its Inspect stream instead of polling.
        #[arg(long, value_name = "HOST:PEERPORT")]
        watch: Option<String>,
        /// Probes per second (one in flight at a time).
        #[arg(long, default_value_t = 100.0)]
        probe_rate: f64,
        /// Send this many probes instead of probing for --duration.
        #[arg(long)]
        probes: Option<u64>,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
        /// Background IAMATs per second at --at (open loop: sent whatever the replies).
        #[arg(long, default_value_t = 0.0)]
        background_rate: f64,
        /// Connections carrying the background load.
        #[arg(long, default_value_t = 4)]
        background_connections: usize,
        /// Spread the background connections round robin over these client addresses
        /// (e.g. every server of a herd) instead of sending them all to --at.
        #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
        background_at: Vec<String>,
        /// A probe not seen within this long counts as an error.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
        /// How long the first probe may take to get through (links coming up).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        ready_timeout: Duration,
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        time_limit: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        output: Output,
    },
    /// Open many idle connections, check each still answers, report the server's memory.
    Connections {
        #[command(flatten)]
        target: Target,
        /// Connections to open and hold.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// The server's process id: its resident memory (VmRSS) is read before and after.
        #[arg(long, value_name = "PID")]
        server_pid: Option<u32>,
        /// How long the connections stay idle before the check.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        hold: Duration,
        /// Connections opened (and checked) at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        output: Output,
    },
    /// Create N distinct client records (pipelined IAMATs) and report the server's memory.
    Records {
        #[command(flatten)]
        target: Target,
        /// Client records to create.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// The server's process id: its resident memory (VmRSS) is read before and after.
        #[arg(long, value_name = "PID")]
        server_pid: Option<u32>,
        #[arg(short = 'c', long, default_value_t = 8)]
        connections: usize,
        #[arg(short = 'd', long, default_value_t = 64)]
        depth: usize,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        time_limit: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        output: Output,
    },
    /// Simulate a large herd: herd's real replication code over a simulated network in
    /// simulated time (no sockets): how fast flooding spreads each update to every
    /// server, what it sends, and what a partition's heal costs.
    Simulate {
        /// Servers, on a random connected topology; 0 for the paper's five (the
        /// built-in herd file).
        #[arg(long, default_value_t = 1000)]
        servers: usize,
        /// Mean neighbours per server of the random topology.
        #[arg(long, default_value_t = 4.0)]
        degree: f64,
        /// IAMATs in all, each a new client at a random server.
        #[arg(long, default_value_t = 10_000)]
        updates: usize,
        /// IAMATs per simulated second, herd-wide.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// The shortest one-way delay of a message (microseconds).
        #[arg(long, default_value_t = 100)]
        delay_min_us: u64,
        /// The longest one-way delay of a message (microseconds).
        #[arg(long, default_value_t = 1000)]
        delay_max_us: u64,
        /// The chance that a message waits for a TCP retransmission (holding up the
        /// link's later messages too).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// How long a retransmission takes (microseconds).
        #[arg(long, default_value_t = 200_000)]
        retransmit_us: u64,
        /// Cut a random half of the servers off while the middle third of the IAMATs
        /// is made, then heal.
        #[arg(long)]
        partition: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How updates spread: herd's flooding, or a model of Plumtree (epidemic
        /// broadcast trees) to compare it with.
        #[arg(long, value_enum, default_value_t = simulate::Spread::Flood)]
        broadcast: simulate::Spread,
        /// Plumtree: how long a server waits after an announcement for the update
        /// itself before asking for it (microseconds).
        #[arg(long, default_value_t = 2000)]
        graft_timeout_us: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load the offline dataset's places into Redis (herd:places) for `whatsat --redis`.
    LoadRedisPlaces {
        /// The Redis server.
        #[arg(long, default_value = DEFAULT_REDIS_ADDR, value_name = "HOST:PORT")]
        addr: String,
        /// Places per GEOADD.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// GEOADDs in flight.
        #[arg(long, default_value_t = 16)]
        depth: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        output: Output,
    },
}

/// The server under load.
#[derive(Args, Debug, Clone)]
pub(crate) struct Target {
    /// The server (default: 127.0.0.1:12001, or 127.0.0.1:6379 with --redis).
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Speak RESP to Redis: GEOADD herd:clients for IAMAT, GEOSEARCH herd:places for WHATSAT.
    #[arg(long)]
    redis: bool,
}

/// The closed loop: connections, requests in flight, how long.
#[derive(Args, Debug, Clone)]
pub(crate) struct LoadArgs {
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection: 1 is request/response, more is pipelined.
    #[arg(short = 'd', long, default_value_t = 1)]
    depth: usize,
    /// How long to measure, after the warm-up (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Measure this many requests instead of a fixed duration.
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Load sent before measuring; excluded from every figure.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Seed of the random locations and choices: one seed, one sequence of requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A connection silent this long with requests in flight is given up (they count as missing).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Nothing runs longer than this, whatever else is asked.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    time_limit: Duration,
    /// Open loop: send this many requests per second in all, on a fixed schedule spread over
    /// the connections, whatever the replies; each latency counts from when its request was
    /// due (no coordinated omission). --depth then caps the requests in flight per connection.
    #[arg(long, value_name = "OPS_PER_S")]
    rate: Option<f64>,
}

/// How results are printed, and the generator's own resources.
#[derive(Args, Debug, Clone)]
pub(crate) struct Output {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Worker threads of the load generator (1: everything on one thread).
    #[arg(long, default_value_t = 1, env = "HERD_BENCH_THREADS")]
    threads: usize,
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Run(String),
}

fn main() -> ExitCode {
    // Each connection is a file descriptor: `connections --count 10000` needs more than the
    // usual soft limit of 1024.
    if let Err(e) = herd::raise_open_file_limit() {
        eprintln!("herd-bench: {e}");
    }
    run(&BenchArgs::parse())
}

/// Runs one scenario to completion and says how it went.
fn run(args: &BenchArgs) -> ExitCode {
    if let Scenario::Simulate { .. } = &args.scenario {
        return simulate::run(&args.scenario);
    }
    let output = match &args.scenario {
        Scenario::Iamat { output, .. }
        | Scenario::Herd { output, .. }
        | Scenario::Whatsat { output, .. }
        | Scenario::Propagation { output, .. }
        | Scenario::Connections { output, .. }
        | Scenario::Records { output, .. }
        | Scenario::LoadRedisPlaces { output, .. } => output.clone(),
        Scenario::Simulate { .. } => unreachable!("simulated without a runtime"),
    };
    let runtime = if output.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(output.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herd-bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(scenario(&args.scenario, output.json)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(3),
        Err(e) => {
            eprintln!("herd-bench: {e}");
            ExitCode::from(match e {
                BenchError::Usage(_) => 2,
                BenchError::Run(_) => 1,
            })
        }
    }
}

/// A run that could not run at all (no connection opened, or nothing measured) is an
/// error (exit 1) with no table: a table of zeros would read like a measurement.
fn measured_something(r: &report::LoadReport) -> Result<u64, BenchError> {
    if r.requests == 0 && r.connections > 0 && r.errors.connect == r.connections as u64 {
        return Err(BenchError::Run(format!(
            "could not run: none of the {} connections to {} could be opened",
            r.connections, r.addr
        )));
    }
    if r.requests == 0 && r.errors.total == 0 {
        return Err(BenchError::Run(
            "nothing was measured: no request sent after the warm-up was answered in time; \
             lengthen --warmup or --duration"
                .into(),
        ));
    }
    Ok(r.errors.total)
}

/// Runs one scenario, prints its report, and returns its error count.
async fn scenario(s: &Scenario, json: bool) -> Result<u64, BenchError> {
    match s {
        Scenario::Iamat {
            target,
            load,
            clients,
            ..
        } => {
            let r = load::iamat(target, load, *clients).await?;
            let errors = measured_something(&r)?;
            report::emit(&r, json, report::LoadReport::table);
            Ok(errors)
        }
        Scenario::Herd {
            config,
            host,
            addrs,
            redis,
            load,
            sample,
            settle,
            server_pids,
            ..
        } => {
            let servers = match config {
                Some(file) => whole::servers_of(file, host.as_deref())?,
                None => {
                    let mut servers = Vec::with_capacity(addrs.len());
                    for a in addrs {
                        servers.push((a.clone(), load::resolve(Some(a), a).await?));
                    }
                    servers
                }
            };
            if servers.is_empty() {
                return Err(BenchError::Usage("give --config or --addrs".into()));
            }
            let plan = whole::WholePlan {
                wire: if *redis {
                    workload::Wire::Redis
                } else {
                    workload::Wire::Herd
                },
                servers,
                sample: *sample,
                settle: *settle,
                pids: server_pids.clone(),
            };
            let r = whole::run(&plan, load).await?;
            measured_something(&r.load)?;
            report::emit(&r, json, whole::WholeReport::table);
            Ok(r.problems())
        }
        Scenario::Whatsat {
            target,
            load,
            radius,
            bound,
            lat,
            lon,
            spread,
            points,
            ..
        } => {
            let area = load::Area {
                centre: Point {
                    lat: *lat,
                    lon: *lon,
                },
                spread_km: *spread,
                points: *points,
                radius_km: *radius,
                bound: *bound,
            };
            let r = load::whatsat(target, load, area).await?;
            let errors = measured_something(&r)?;
            report::emit(&r, json, report::LoadReport::table);
            Ok(errors)
        }
        Scenario::Propagation {
            at,
            seen,
            watch,
            probe_rate,
            probes,
            duration,
            warmup,
            background_rate,
            background_connections,
            background_at,
            timeout,
            ready_timeout,
            time_limit,
            seed,
            ..
        } => {
            let mut background_addrs = Vec::with_capacity(background_at.len());
            for a in background_at {
                background_addrs.push(load::resolve(Some(a), a).await?);
            }
            let observe = match watch {
                Some(w) => propagation::Observe::Watch(load::resolve(Some(w), w).await?),
                None => propagation::Observe::Poll(load::resolve(Some(seen), seen).await?),
            };
            let plan = propagation::PropagationPlan {
                at: load::resolve(Some(at), at).await?,
                observe,
                probe_rate: *probe_rate,
                probes: *probes,
                duration: *duration,
                warmup: *warmup,
                background_rate: *background_rate,
                background_connections: *background_connections,
                background_at: background_addrs,
                timeout: *timeout,
                ready_timeout: *ready_timeout,
                time_limit: *time_limit,
                seed: *seed,
            };
            let r = propagation::run(&plan).await?;
            report::emit(&r, json, propagation::PropagationReport::table);
            Ok(r.errors.total + r.background.rejected + r.background.malformed)
        }
        Scenario::Connections {
            target,
            count,
            server_pid,
            hold,
            concurrency,
            timeout,
            ..
        } => {
            let (wire, addr) = load::target_addr(target).await?;
            let plan = connections::ConnectionsPlan {
                addr,
                wire,
                count: *count,
                concurrency: *concurrency,
                hold: *hold,
                timeout: *timeout,
                server_pid: *server_pid,
            };
            let r = connections::run(&plan).await?;
            report::emit(&r, json, connections::ConnectionsReport::table);
            Ok((r.open_failures + r.check_failures) as u64)
        }
        Scenario::Records {
            target,
            records,
            server_pid,
            connections,
            depth,
            timeout,
            time_limit,
            seed,
            ..
        } => {
            let load = LoadArgs {
                connections: *connections,
                depth: *depth,
                duration: Duration::ZERO,
                requests: Some(*records),
                warmup: Duration::ZERO,
                seed: *seed,
                timeout: *timeout,
                time_limit: *time_limit,
                rate: None,
            };
            let r = load::records(target, *records, &load, *server_pid).await?;
            let errors = measured_something(&r)?;
            report::emit(&r, json, report::LoadReport::table);
            Ok(errors)
        }
        Scenario::LoadRedisPlaces {
            addr,
            batch,
            depth,
            timeout,
            ..
        } => {
            let addr = load::resolve(Some(addr), addr).await?;
            let r = redis::load_places(addr, *batch, *depth, *timeout).await?;
            report::emit(&r, json, redis::PlacesReport::table);
            Ok(0)
        }
        Scenario::Simulate { .. } => unreachable!("simulated without a runtime"),
    }
}

/// A server's resident memory in kB, from `/proc/PID/status` (VmRSS).
pub(crate) fn server_rss_kb(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Run(format!("cannot read {path}: {e}")))?;
    rss_from_status(&text).ok_or_else(|| BenchError::Run(format!("no VmRSS line in {path}")))
}

fn rss_from_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// `10s`, `1.5s`, `500ms`, `250us`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 10s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use us, ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "ten", "10x", "-1s", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rss_line() {
        let status = "Name:\therd\nVmPeak:\t  123 kB\nVmRSS:\t   45678 kB\nThreads:\t3\n";
        assert_eq!(rss_from_status(status), Some(45678));
        assert_eq!(rss_from_status("Name:\tx\n"), None);
        assert!(server_rss_kb(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        BenchArgs::command().debug_assert();
    }
}
