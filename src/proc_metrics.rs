//! The process's own metrics (CPU, memory, open files, threads, start time), read from
//! `/proc` at each scrape under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...).
//!
//! prometheus-client has no process collector, and the crates that do belong to
//! other metrics libraries (`prometheus`, `metrics-process`); reading four small
//! files is less than either dependency.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// The collector: registered once per server registry (in `herd up` every server
/// reports the one process it shares).
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

impl Reading {
    /// Reads `/proc/self`; None where there is no `/proc` (not Linux).
    pub fn now() -> Option<Reading> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // SAFETY: sysconf only reads system constants.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })?;
        let mut r = parse_stat(&stat, ticks.max(1) as f64, page.max(1) as u64, boot)?;
        r.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed to it.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            r.max_fds = limit.rlim_cur;
        }
        Some(r)
    }
}

/// `/proc/self/stat` (proc(5)): the fields after the command name, which is in
/// parentheses and may itself hold spaces and parentheses.
fn parse_stat(stat: &str, ticks: f64, page: u64, boot: f64) -> Option<Reading> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest[0] is field 3 (state); field n is rest[n - 3].
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Reading {
        cpu_seconds: (num(14)? + num(15)?) as f64 / ticks,
        threads: num(20)?,
        start_time_seconds: boot + num(22)? as f64 / ticks,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)? * page,
        ..Reading::default()
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let Some(r) = Reading::now() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(r.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                r.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                r.open_fds as f64,
            ),
            (
                "process_max_fds",
                "The soft limit on open file descriptors",
                r.max_fds as f64,
            ),
            ("process_threads", "OS threads", r.threads as f64),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                r.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_holds_parentheses() {
        let stat = "4242 (herd (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456789 2048 18446744073709551615";
        let r = parse_stat(stat, 100.0, 4096, 1_700_000_000.0).unwrap();
        assert_eq!(r.cpu_seconds, 3.0);
        assert_eq!(r.threads, 7);
        assert_eq!(r.start_time_seconds, 1_700_000_010.0);
        assert_eq!(r.virtual_bytes, 123_456_789);
        assert_eq!(r.resident_bytes, 2048 * 4096);
    }

    #[test]
    fn reads_this_process() {
        let r = Reading::now().expect("/proc is there on Linux");
        assert!(
            r.resident_bytes > 0 && r.threads >= 1 && r.open_fds >= 3,
            "{r:?}"
        );
    }
}
