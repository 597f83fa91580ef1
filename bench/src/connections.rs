//! `herd-bench connections`: opens N idle client connections to one server, holds them, checks
//! that each still answers one IAMAT, and reports the server's resident memory on the way.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

use super::{
    BenchError,
    conn::{self, Conn},
    report::{Table, rss_change, thousands},
    server_rss_kb,
    workload::{ClientClock, Clients, Generator, Verdict, Wire, Workload, run_prefix},
};

/// The shape of a connections run.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionsPlan {
    pub(crate) addr: SocketAddr,
    pub(crate) wire: Wire,
    pub(crate) count: usize,
    pub(crate) concurrency: usize,
    pub(crate) hold: Duration,
    pub(crate) timeout: Duration,
    pub(crate) server_pid: Option<u32>,
}

/// What a connections run saw.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectionsReport {
    pub(crate) scenario: &'static str,
    pub(crate) target: &'static str,
    pub(crate) addr: String,
    /// Connections asked for, opened, and answering one IAMAT after the hold.
    pub(crate) count: usize,
    pub(crate) opened: usize,
    pub(crate) answered: usize,
    pub(crate) open_failures: usize,
    pub(crate) check_failures: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_error: Option<String>,
    pub(crate) open_s: f64,
    pub(crate) check_s: f64,
    /// Server resident memory (kB) before opening, with every connection open and idle, and
    /// after each answered once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_kb_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_kb_idle: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_kb_after: Option<u64>,
    /// Server memory per connection (idle minus before, over the connections opened), in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bytes_per_connection: Option<u64>,
}

impl ConnectionsReport {
    pub(crate) fn table(&self) -> Table {
        let mut t = Table::new(format!(
            "herd-bench connections -> {} ({})",
            self.addr, self.target
        ));
        t.row(
            "opened",
            format!(
                "{} of {} in {:.2} s ({} failed)",
                thousands(self.opened as u64),
                thousands(self.count as u64),
                self.open_s,
                self.open_failures
            ),
        );
        t.row(
            "answered",
            format!(
                "{} one IAMAT each, in {:.2} s ({} failed)",
                thousands(self.answered as u64),
                self.check_s,
                self.check_failures
            ),
        );
        if let Some(e) = &self.first_error {
            t.row("first error", e.clone());
        }
        if let (Some(b), Some(i)) = (self.rss_kb_before, self.rss_kb_idle) {
            t.row("server RSS idle", rss_change(b, i));
        }
        if let (Some(b), Some(a)) = (self.rss_kb_before, self.rss_kb_after) {
            t.row("server RSS after", rss_change(b, a));
        }
        if let Some(per) = self.bytes_per_connection {
            t.row("per connection", format!("{} bytes", thousands(per)));
        }
        t
    }
}

/// The soft and hard open-file limits of process `pid` ("self" for this one).
fn fd_limits(pid: &str) -> Option<(u64, Option<u64>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let parse = |f: Option<&str>| f.and_then(|v| v.parse::<u64>().ok());
    let soft = parse(fields.next())?;
    Some((soft, parse(fields.next())))
}

/// Checks that this process may open `needed` files (`herd` lifts its soft limit to the hard
/// one at start), and says how to raise the limit otherwise.
pub(crate) fn ensure_fd_limit(needed: u64) -> Result<(), BenchError> {
    match fd_limits("self") {
        Some((soft, hard)) if soft < needed => Err(BenchError::Run(format!(
            "this run needs {needed} open files but the limit is {soft} (hard {}); \
             raise it first, e.g. `ulimit -n {needed}`",
            hard.map_or("unlimited".to_owned(), |h| h.to_string())
        ))),
        _ => Ok(()),
    }
}

/// `herd-bench connections`.
pub(crate) async fn run(plan: &ConnectionsPlan) -> Result<ConnectionsReport, BenchError> {
    ensure_fd_limit(plan.count as u64 + 64)?;
    if let Some(pid) = plan.server_pid
        && let Some((soft, _)) = fd_limits(&pid.to_string())
        && soft < plan.count as u64 + 16
    {
        eprintln!(
            "herd-bench: warning: server pid {pid} may open only {soft} files; expect it to refuse some of {} connections",
            plan.count
        );
    }
    let rss_before = plan.server_pid.map(server_rss_kb).transpose()?;

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut opening = JoinSet::new();
    for _ in 0..plan.count {
        let (gate, addr, timeout) = (gate.clone(), plan.addr, plan.timeout);
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            conn::connect(addr, timeout).await
        });
    }
    let mut open = Vec::with_capacity(plan.count);
    let mut first_error = None;
    let mut open_failures = 0;
    while let Some(joined) = opening.join_next().await {
        match joined {
            Ok(Ok(s)) => open.push(s),
            Ok(Err(e)) => {
                open_failures += 1;
                first_error.get_or_insert_with(|| conn::explain(&e));
            }
            Err(e) => {
                open_failures += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    let opened = open.len();

    tokio::time::sleep(plan.hold).await;
    let rss_idle = plan.server_pid.map(server_rss_kb).transpose()?;

    // One IAMAT on each; every connection stays open until all have answered.
    let started = Instant::now();
    let work = Arc::new(Workload::Iamat {
        clients: Clients::Distinct,
    });
    let (prefix, clock) = (run_prefix("k"), ClientClock::now());
    let mut checking = JoinSet::new();
    for (i, stream) in open.into_iter().enumerate() {
        let mut g = Generator::new(plan.wire, work.clone(), prefix.clone(), i, 1, clock);
        let (gate, timeout) = (gate.clone(), plan.timeout);
        checking.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let codec = g.codec();
            let mut c = Conn::new(stream, codec);
            let (mut out, mut key) = (Vec::new(), Vec::new());
            g.next(&mut out, &mut key);
            let deadline = Instant::now() + timeout;
            let answered = match c.send(&out, deadline).await {
                Ok(()) => match c.reply(deadline).await {
                    Ok(reply) => match codec.judge(&reply, &key, false) {
                        Verdict::Ok { .. } => Ok(()),
                        other => Err(format!(
                            "{other:?} reply {:?}",
                            String::from_utf8_lossy(&reply).trim_end()
                        )),
                    },
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            (c, answered)
        });
    }
    let mut kept = Vec::with_capacity(opened);
    let (mut answered, mut check_failures) = (0, 0);
    while let Some(joined) = checking.join_next().await {
        match joined {
            Ok((c, Ok(()))) => {
                answered += 1;
                kept.push(c);
            }
            Ok((c, Err(e))) => {
                check_failures += 1;
                first_error.get_or_insert(e);
                kept.push(c);
            }
            Err(e) => {
                check_failures += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let check_s = started.elapsed().as_secs_f64();
    let rss_after = plan.server_pid.map(server_rss_kb).transpose()?;
    drop(kept);

    let bytes_per_connection = match (rss_before, rss_idle) {
        (Some(b), Some(i)) if opened > 0 => Some(i.saturating_sub(b) * 1024 / opened as u64),
        _ => None,
    };
    Ok(ConnectionsReport {
        scenario: "connections",
        target: plan.wire.name(),
        addr: plan.addr.to_string(),
        count: plan.count,
        opened,
        answered,
        open_failures,
        check_failures,
        first_error,
        open_s,
        check_s,
        rss_kb_before: rss_before,
        rss_kb_idle: rss_idle,
        rss_kb_after: rss_after,
        bytes_per_connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_limits() {
        let (soft, hard) = fd_limits("self").expect("Linux /proc");
        assert!(soft > 0);
        if let Some(h) = hard {
            assert!(h >= soft);
        }
        assert!(ensure_fd_limit(soft).is_ok());
    }
}
