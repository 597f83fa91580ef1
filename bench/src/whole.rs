//! The whole-herd scenario (`herd-bench herd`): IAMATs of new clients spread over every
//! server of a herd, then a read-back of a sample of those clients from every server, which
//! must find the same AT line everywhere. Against Redis (`--redis`) the same load goes to a
//! primary (the only server of a replicated Redis that takes writes) and the read-back
//! (GEOPOS) asks the primary and every replica.
//!
//! Replication is asynchronous on both, so the read-back asks again, up to `--settle`, for the
//! clients that still differ; what differs after that is reported and fails the run. The
//! servers' CPU time (from `/proc/PID/stat`, when their pids are given) divided by the IAMATs
//! answered is the cost of one IAMAT herd-wide.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    BenchError, LoadArgs,
    conn::{self, Conn},
    load::{self, Plan},
    report::{LoadReport, Table, thousands},
    workload::{ClientClock, Clients, Codec, Generator, Op, Wire, Workload, run_prefix},
};

/// Requests of one read-back round sent at once on one connection.
const READ_CHUNK: usize = 256;
/// Differences listed in a report (the count is always complete).
const SHOWN: usize = 5;

/// What `herd-bench herd` was asked to do.
#[derive(Debug)]
pub(crate) struct WholePlan {
    pub(crate) wire: Wire,
    /// Every server, by name (herd file) or address. With Redis the first is the primary.
    pub(crate) servers: Vec<(String, SocketAddr)>,
    /// Client records read back from every server.
    pub(crate) sample: usize,
    /// How long the read-back may wait for the servers to agree.
    pub(crate) settle: Duration,
    /// The servers' processes, for their CPU time.
    pub(crate) pids: Vec<u32>,
}

/// The servers of a herd file, at `host` when given, else at each one's listen address
/// (loopback for one that listens on every address).
pub(crate) fn servers_of(
    file: &Path,
    host: Option<&str>,
) -> Result<Vec<(String, SocketAddr)>, BenchError> {
    let config = herd::config::HerdConfig::load(Some(file))
        .map_err(|e| BenchError::Usage(format!("herd file {}: {e}", file.display())))?;
    let host: Option<std::net::IpAddr> = host
        .map(|h| {
            h.parse()
                .map_err(|_| BenchError::Usage(format!("--host {h:?} is not an IP address")))
        })
        .transpose()?;
    Ok(config
        .servers
        .iter()
        .map(|s| {
            let mut addr = s.client_addr();
            if let Some(h) = host {
                addr.set_ip(h);
            } else if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            (s.name.to_string(), addr)
        })
        .collect())
}

/// One client whose servers disagree (or that some server does not know).
#[derive(Debug, Serialize)]
pub(crate) struct Difference {
    pub(crate) client: String,
    /// Each server's answer, as text (`?` and its line for a server that does not know it).
    pub(crate) answers: Vec<(String, String)>,
}

/// What the read-back found.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ReadBack {
    /// Clients asked about, at every server.
    pub(crate) sampled: usize,
    /// Clients whose record every server gave the same (and, for herd, the one the IAMAT made).
    pub(crate) identical: usize,
    pub(crate) differing: usize,
    /// From the end of the load to the last round of questions (0 when all agreed at once).
    pub(crate) settle_ms: u64,
    pub(crate) rounds: u32,
    /// The first few differences.
    pub(crate) differences: Vec<Difference>,
}

/// A whole-herd run: the load, the read-back, and what the servers spent.
#[derive(Debug, Serialize)]
pub(crate) struct WholeReport {
    #[serde(flatten)]
    pub(crate) load: LoadReport,
    pub(crate) servers: Vec<String>,
    pub(crate) read_back: ReadBack,
    /// CPU seconds the given server processes spent from the start of the load to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_s: Option<f64>,
    /// That CPU time per IAMAT answered during the load (warm-up included), in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_us_per_iamat: Option<f64>,
}

impl WholeReport {
    pub(crate) fn table(&self) -> Table {
        let mut t = self.load.table();
        t.row("servers", self.servers.join(", "));
        if let (Some(cpu), Some(per)) = (self.server_cpu_s, self.server_cpu_us_per_iamat) {
            t.row(
                "server CPU",
                format!("{cpu:.2} s, {per:.1} us per IAMAT (all servers)"),
            );
        }
        let r = &self.read_back;
        t.row(
            "read-back",
            format!(
                "{} of {} clients identical on every server ({} rounds, {} ms to settle)",
                thousands(r.identical as u64),
                thousands(r.sampled as u64),
                r.rounds,
                r.settle_ms
            ),
        );
        for d in &r.differences {
            t.row("  differs", d.client.clone());
            for (server, answer) in &d.answers {
                t.row(&format!("    {server}"), answer.clone());
            }
        }
        t
    }

    /// Failed requests plus clients that differ: nonzero fails the run.
    pub(crate) fn problems(&self) -> u64 {
        self.load.errors.total + self.read_back.differing as u64
    }
}

/// `herd-bench herd`.
pub(crate) async fn run(plan: &WholePlan, load: &LoadArgs) -> Result<WholeReport, BenchError> {
    let Some(&(_, first)) = plan.servers.first() else {
        return Err(BenchError::Usage("no server to load".into()));
    };
    let mut lp = Plan::from_args(first, load)?;
    // Herd: every server takes IAMATs. Redis: only the primary takes writes.
    if plan.wire == Wire::Herd {
        lp.also = plan.servers[1..].iter().map(|s| s.1).collect();
    }
    lp.keep = plan.sample.div_ceil(lp.connections);
    let work = Arc::new(Workload::Iamat {
        clients: Clients::Distinct,
    });
    let prefix = run_prefix("h");
    let clock = ClientClock::now();
    let cpu_before = cpu_seconds(&plan.pids)?;
    let m = load::run(&lp, |i| {
        Generator::new(plan.wire, work.clone(), prefix.clone(), i, load.seed, clock)
    })
    .await;
    let cpu_after = cpu_seconds(&plan.pids)?;
    let mut kept = m.tally.kept.clone();
    kept.truncate(plan.sample);
    let report = load::report("herd", plan.wire, &lp, &m);
    let read_back = read_back(plan, kept, load.timeout).await?;
    let server_cpu_s = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    // Every IAMAT answered, warm-up included: the CPU was spent on all of them.
    let answered = m.tally.answered;
    Ok(WholeReport {
        load: report,
        servers: plan
            .servers
            .iter()
            .map(|(n, a)| {
                if *n == a.to_string() {
                    n.clone()
                } else {
                    format!("{n} {a}")
                }
            })
            .collect(),
        read_back,
        server_cpu_s: server_cpu_s.map(|s| (s * 1000.0).round() / 1000.0),
        server_cpu_us_per_iamat: server_cpu_s
            .filter(|_| answered > 0)
            .map(|s| (s * 1e6 / answered as f64 * 10.0).round() / 10.0),
    })
}

/// The summed CPU seconds of `pids` (None when none is given).
fn cpu_seconds(pids: &[u32]) -> Result<Option<f64>, BenchError> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = 0.0;
    for &pid in pids {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| BenchError::Run(format!("cannot read {path}: {e}")))?;
        total += stat_cpu_seconds(&text)
            .ok_or_else(|| BenchError::Run(format!("{path}: no CPU times in it")))?;
    }
    Ok(Some(total))
}

/// utime + stime (fields 14 and 15 of proc(5)), in seconds. Linux reports them in USER_HZ
/// ticks, which is 100 on every architecture it exposes to user space.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some((num(14)? + num(15)?) as f64 / 100.0)
}

/// One read request and what frames its reply.
fn question(wire: Wire, client: &[u8], out: &mut Vec<u8>) {
    match wire {
        Wire::Herd => {
            out.extend_from_slice(b"WHATSAT ");
            out.extend_from_slice(client);
            out.extend_from_slice(b" 1 0\n");
        }
        Wire::Redis => super::resp::command(
            out,
            &[b"GEOPOS", super::workload::REDIS_CLIENTS.as_bytes(), client],
        ),
    }
}

/// What a server answered about one client, reduced to what must be equal everywhere: the
/// AT line (herd), or the whole GEOPOS reply (Redis). None for "not known here".
fn answer_of(wire: Wire, reply: &[u8]) -> Option<Vec<u8>> {
    match wire {
        Wire::Herd => {
            let line = reply.split(|&b| b == b'\n').next().unwrap_or(b"");
            line.starts_with(b"AT ").then(|| line.to_vec())
        }
        // `*1\r\n*-1\r\n`: no such member.
        Wire::Redis => (!reply.starts_with(b"*1\r\n*-1")).then(|| reply.to_vec()),
    }
}

/// Asks every server about `clients`, again and again for those that differ, until all agree
/// or `plan.settle` has passed.
async fn read_back(
    plan: &WholePlan,
    keys: Vec<Vec<u8>>,
    timeout: Duration,
) -> Result<ReadBack, BenchError> {
    let codec = Codec {
        wire: plan.wire,
        op: Op::Whatsat,
    };
    let mut conns = Vec::with_capacity(plan.servers.len());
    for (name, addr) in &plan.servers {
        let stream = conn::connect(*addr, timeout).await.map_err(|e| {
            BenchError::Run(format!(
                "read-back from {name} at {addr}: {}",
                conn::explain(&e)
            ))
        })?;
        conns.push(Conn::new(stream, codec));
    }
    // Herd keys are `id location time`: the client is the first field, and its record must
    // end with the whole key. Redis keys are the member.
    let clients: Vec<(Vec<u8>, Vec<u8>)> = keys
        .into_iter()
        .map(|k| {
            let id = k.split(|&b| b == b' ').next().unwrap_or(&[]).to_vec();
            (id, k)
        })
        .collect();
    let mut result = ReadBack {
        sampled: clients.len(),
        ..ReadBack::default()
    };
    let started = Instant::now();
    let mut todo: Vec<usize> = (0..clients.len()).collect();
    loop {
        result.rounds += 1;
        let answers = ask(plan, &mut conns, &clients, &todo, timeout).await?;
        let mut still = Vec::new();
        let mut shown = Vec::new();
        for (n, &i) in todo.iter().enumerate() {
            let row = &answers[n];
            let (_, key) = &clients[i];
            let same = row.windows(2).all(|w| w[0] == w[1]);
            let right = match (&row[0], plan.wire) {
                (Some(line), Wire::Herd) => line.ends_with(key),
                (Some(_), Wire::Redis) => true,
                (None, _) => false,
            };
            if !(same && right) {
                still.push(i);
                if shown.len() < SHOWN {
                    shown.push(Difference {
                        client: String::from_utf8_lossy(&clients[i].0).into_owned(),
                        answers: plan
                            .servers
                            .iter()
                            .zip(row)
                            .map(|((name, _), a)| {
                                let text = a.as_deref().map_or_else(
                                    || "(not known)".to_owned(),
                                    |a| String::from_utf8_lossy(a).trim_end().to_owned(),
                                );
                                (name.clone(), text)
                            })
                            .collect(),
                    });
                }
            }
        }
        todo = still;
        if todo.is_empty() || started.elapsed() >= plan.settle {
            result.differing = todo.len();
            result.identical = result.sampled - todo.len();
            result.differences = shown;
            result.settle_ms = if result.rounds > 1 {
                started.elapsed().as_millis() as u64
            } else {
                0
            };
            return Ok(result);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One round: every server's answer about each client in `todo`, pipelined in chunks.
async fn ask(
    plan: &WholePlan,
    conns: &mut [Conn],
    clients: &[(Vec<u8>, Vec<u8>)],
    todo: &[usize],
    timeout: Duration,
) -> Result<Vec<Vec<Option<Vec<u8>>>>, BenchError> {
    let mut answers: Vec<Vec<Option<Vec<u8>>>> = vec![Vec::with_capacity(conns.len()); todo.len()];
    let mut out = Vec::with_capacity(READ_CHUNK * 64);
    for ((name, _), c) in plan.servers.iter().zip(conns.iter_mut()) {
        let fail = |e: std::io::Error| BenchError::Run(format!("read-back from {name}: {e}"));
        for (chunk_no, chunk) in todo.chunks(READ_CHUNK).enumerate() {
            out.clear();
            for &i in chunk {
                question(plan.wire, &clients[i].0, &mut out);
            }
            let deadline = tokio::time::Instant::now() + timeout;
            c.send(&out, deadline).await.map_err(fail)?;
            for n in 0..chunk.len() {
                let reply = c.reply(deadline).await.map_err(fail)?;
                answers[chunk_no * READ_CHUNK + n].push(answer_of(plan.wire, &reply));
            }
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_come_from_fields_14_and_15() {
        let stat = "42 (herd (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 1000 10";
        assert_eq!(stat_cpu_seconds(stat), Some(3.0));
        assert!(cpu_seconds(&[std::process::id()]).unwrap().unwrap() >= 0.0);
        assert_eq!(cpu_seconds(&[]).unwrap(), None);
    }

    #[test]
    fn answers_keep_what_must_be_equal() {
        let at = b"AT Hands +0.1 c +1+1 5.0\n{\n}\n\n";
        assert_eq!(
            answer_of(Wire::Herd, at).as_deref(),
            Some(&b"AT Hands +0.1 c +1+1 5.0"[..])
        );
        assert_eq!(answer_of(Wire::Herd, b"? WHATSAT c 1 0\n"), None);
        assert_eq!(answer_of(Wire::Redis, b"*1\r\n*-1\r\n"), None);
        let pos = b"*1\r\n*2\r\n$3\r\n1.0\r\n$3\r\n2.0\r\n";
        assert_eq!(answer_of(Wire::Redis, pos).as_deref(), Some(&pos[..]));
        let mut q = Vec::new();
        question(Wire::Herd, b"c", &mut q);
        assert_eq!(q, b"WHATSAT c 1 0\n");
    }
}
