//! What a run measured and how it is shown: counts and an HDR histogram per connection,
//! merged into figures printed as a table or as one JSON object.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::workload::Verdict;

/// Latencies are kept in microseconds, from 1 µs to 10 minutes, to three significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Requests that did not get the reply they deserve, by reason.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Errors {
    pub(crate) total: u64,
    /// `? ...` or a Redis error reply.
    pub(crate) rejected: u64,
    /// A WHATSAT whose places lookup failed.
    pub(crate) failed: u64,
    /// A reply that is not the one the request should get, or bytes that are no reply.
    pub(crate) malformed: u64,
    /// No reply: the connection closed or stayed silent past the timeout.
    pub(crate) missing: u64,
    /// Connections that could not be opened.
    pub(crate) connect: u64,
}

impl Errors {
    pub(crate) fn add(&mut self, other: &Errors) {
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.malformed += other.malformed;
        self.missing += other.missing;
        self.connect += other.connect;
        self.total = self.rejected + self.failed + self.malformed + self.missing + self.connect;
    }

    fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.rejected, "rejected"),
            (self.failed, "failed"),
            (self.malformed, "malformed"),
            (self.missing, "missing"),
            (self.connect, "connect"),
        ] {
            if n > 0 {
                parts.push(format!("{} {what}", thousands(n)));
            }
        }
        if parts.is_empty() {
            "0".to_owned()
        } else {
            format!("{} ({})", thousands(self.total), parts.join(", "))
        }
    }
}

/// One connection's (or the whole run's) measured requests.
#[derive(Debug)]
pub(crate) struct Tally {
    pub(crate) latency: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: Errors,
    /// Places counted in sampled WHATSAT replies, and how many replies were sampled.
    pub(crate) results: u64,
    pub(crate) sampled: u64,
    /// When the last measured reply arrived.
    pub(crate) last: Option<std::time::Instant>,
    /// Replies to requests, measured or not (the warm-up's too): what the servers did.
    pub(crate) answered: u64,
    /// A uniform sample of the keys of answered requests (see [`Tally::keep`]).
    pub(crate) kept: Vec<Vec<u8>>,
    /// Answered requests offered to the sample so far.
    offered: u64,
    rng: fastrand::Rng,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            latency: histogram(),
            ok: 0,
            errors: Errors::default(),
            results: 0,
            sampled: 0,
            last: None,
            answered: 0,
            kept: Vec::new(),
            offered: 0,
            rng: fastrand::Rng::with_seed(0x6b65_6570),
        }
    }

    /// Offers an answered request's key to a sample of at most `size` (reservoir sampling:
    /// every key offered ends in it with the same chance).
    pub(crate) fn keep(&mut self, key: &[u8], size: usize) {
        self.offered += 1;
        if self.kept.len() < size {
            self.kept.push(key.to_vec());
        } else {
            let j = self.rng.u64(..self.offered);
            if let Some(slot) = self.kept.get_mut(j as usize) {
                slot.clear();
                slot.extend_from_slice(key);
            }
        }
    }

    pub(crate) fn record(&mut self, verdict: Verdict, latency: Duration) {
        match verdict {
            Verdict::Ok { results } => {
                self.ok += 1;
                self.latency.saturating_record(micros(latency));
                if let Some(n) = results {
                    self.results += u64::from(n);
                    self.sampled += 1;
                }
            }
            Verdict::Rejected => self.errors.rejected += 1,
            Verdict::Failed => self.errors.failed += 1,
            Verdict::Malformed => self.errors.malformed += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.errors.add(&other.errors);
        self.results += other.results;
        self.sampled += other.sampled;
        self.last = self.last.max(other.last);
        self.answered += other.answered;
        self.kept.extend(other.kept.iter().cloned());
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }

    pub(crate) fn row(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.1})",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.p999),
            us(self.max),
            self.mean
        )
    }
}

fn us(v: u64) -> String {
    thousands(v)
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A two-column table: a title, then `label  value` rows.
#[derive(Debug, Default)]
pub(crate) struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    pub(crate) fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, label: &str, value: impl Into<String>) -> &mut Table {
        self.rows.push((label.to_owned(), value.into()));
        self
    }

    pub(crate) fn print(&self) {
        println!("{}", self.title);
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, value) in &self.rows {
            println!("  {label:<width$}  {value}");
        }
    }
}

/// A throughput/latency run (iamat, whatsat, records).
#[derive(Debug, Serialize)]
pub(crate) struct LoadReport {
    pub(crate) scenario: &'static str,
    pub(crate) target: &'static str,
    pub(crate) addr: String,
    pub(crate) connections: usize,
    pub(crate) depth: usize,
    /// Open loop (`--rate`): the requests per second offered, whatever the replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) offered_rate_ops_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) clients: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) radius_km: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bound: Option<u32>,
    pub(crate) warmup_s: f64,
    /// From the end of the warm-up to the last measured reply.
    pub(crate) duration_s: f64,
    /// Measured requests that got the reply they deserve.
    pub(crate) requests: u64,
    pub(crate) throughput_ops_s: f64,
    pub(crate) latency_us: Latency,
    pub(crate) errors: Errors,
    /// Mean places per WHATSAT reply, over the replies whose results were counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) results_per_reply: Option<f64>,
    /// Server resident memory (kB) before and after, when its pid was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_kb_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rss_kb_after: Option<u64>,
}

impl LoadReport {
    pub(crate) fn table(&self) -> Table {
        let mut t = Table::new(format!(
            "herd-bench {} -> {} ({})",
            self.scenario, self.addr, self.target
        ));
        let mut shape = format!("{} connections x depth {}", self.connections, self.depth);
        if let Some(rate) = self.offered_rate_ops_s {
            shape += &format!(", open loop at {rate} requests/s");
        }
        if let Some(c) = self.clients {
            shape += &format!(", {c} clients");
        }
        if let (Some(r), Some(b)) = (self.radius_km, self.bound) {
            shape += &format!(", radius {r} km, bound {b}");
        }
        t.row("load", shape);
        t.row(
            "time",
            format!(
                "{:.2} s measured after {:.2} s warm-up",
                self.duration_s, self.warmup_s
            ),
        );
        t.row("requests", thousands(self.requests));
        t.row(
            "throughput",
            format!("{} ops/s", thousands(self.throughput_ops_s.round() as u64)),
        );
        t.row("latency (us)", self.latency_us.row());
        t.row("errors", self.errors.summary());
        if let Some(r) = self.results_per_reply {
            t.row("results/reply", format!("{r:.2}"));
        }
        if let (Some(before), Some(after)) = (self.rss_kb_before, self.rss_kb_after) {
            t.row("server RSS", rss_change(before, after));
        }
        t
    }
}

pub(crate) fn rss_change(before_kb: u64, after_kb: u64) -> String {
    format!(
        "{:.1} MB -> {:.1} MB ({:+.1} MB)",
        before_kb as f64 / 1024.0,
        after_kb as f64 / 1024.0,
        (after_kb as f64 - before_kb as f64) / 1024.0
    )
}

/// Prints `report` as JSON (one object on one line) or as its table.
pub(crate) fn emit<R: Serialize>(report: &R, json: bool, table: impl FnOnce(&R) -> Table) {
    if json {
        match serde_json::to_string(report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("herd-bench: cannot encode the report: {e}"),
        }
    } else {
        table(report).print();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn tallies_merge() {
        let mut a = Tally::new();
        a.record(Verdict::Ok { results: Some(3) }, Duration::from_micros(100));
        a.record(Verdict::Rejected, Duration::ZERO);
        let mut b = Tally::new();
        b.record(Verdict::Ok { results: None }, Duration::from_micros(300));
        b.record(Verdict::Malformed, Duration::ZERO);
        b.errors.missing += 2;
        a.merge(&b);
        assert_eq!(a.ok, 2);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(
            a.errors,
            Errors {
                total: 4,
                rejected: 1,
                failed: 0,
                malformed: 1,
                missing: 2,
                connect: 0
            }
        );
        assert_eq!((a.results, a.sampled), (3, 1));
        let l = Latency::of(&a.latency);
        assert!(
            (99..=101).contains(&l.p50) && (299..=301).contains(&l.max),
            "{l:?}"
        );
    }
}
