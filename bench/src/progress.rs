//! The live progress line of a long run: once a second, on a terminal only, the
//! replies per second and their mean latency over that second. Piped or redirected
//! output (scripts, `--json` into a file) gets nothing, so reports stay clean.

use std::{
    io::{IsTerminal as _, Write as _},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::{Instant, MissedTickBehavior};

/// Runs shorter than this print no progress: the table comes soon enough.
const AT_LEAST: Duration = Duration::from_secs(2);

/// What the connections add to, once per read of replies (not once per reply).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    replies: AtomicU64,
    latency_us: AtomicU64,
}

impl Progress {
    /// A counter to share with the connections when a run of `length` on this
    /// process's stderr deserves a progress line; None otherwise (no cost at all).
    pub(crate) fn for_run(length: Duration) -> Option<Arc<Progress>> {
        (length >= AT_LEAST && std::io::stderr().is_terminal())
            .then(|| Arc::new(Progress::default()))
    }

    pub(crate) fn add(&self, replies: u64, latency: Duration) {
        if replies > 0 {
            self.replies.fetch_add(replies, Ordering::Relaxed);
            self.latency_us
                .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        }
    }

    fn take(&self) -> (u64, u64) {
        (
            self.replies.swap(0, Ordering::Relaxed),
            self.latency_us.swap(0, Ordering::Relaxed),
        )
    }

    /// Prints the line every second until the task is aborted; `started` is when
    /// the clock started, `warmup` how much of it is not measured.
    pub(crate) async fn show(self: Arc<Progress>, started: Instant, warmup: Duration) {
        let mut tick =
            tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last = started;
        loop {
            let now = tick.tick().await;
            let (replies, latency_us) = self.take();
            let secs = now.duration_since(last).as_secs_f64().max(1e-9);
            last = now;
            eprint!(
                "\r\x1b[2K{}",
                line(now - started, warmup, replies, latency_us, secs)
            );
            let _ = std::io::stderr().flush();
        }
    }

    /// Clears the progress line (before the report is printed).
    pub(crate) fn clear() {
        eprint!("\r\x1b[2K");
        let _ = std::io::stderr().flush();
    }
}

fn line(elapsed: Duration, warmup: Duration, replies: u64, latency_us: u64, secs: f64) -> String {
    let phase = if elapsed <= warmup { " (warm-up)" } else { "" };
    let mean = if replies == 0 {
        "-".to_owned()
    } else {
        format!("{:.3} ms", latency_us as f64 / replies as f64 / 1000.0)
    };
    format!(
        "{:>6.1} s{phase}  {:>10.0} replies/s  mean latency {mean}",
        elapsed.as_secs_f64(),
        replies as f64 / secs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_rate_and_mean_latency() {
        let l = line(
            Duration::from_millis(3500),
            Duration::from_secs(1),
            2000,
            900_000,
            1.0,
        );
        assert_eq!(l, "   3.5 s        2000 replies/s  mean latency 0.450 ms");
        let l = line(
            Duration::from_millis(500),
            Duration::from_secs(1),
            0,
            0,
            1.0,
        );
        assert_eq!(
            l,
            "   0.5 s (warm-up)           0 replies/s  mean latency -"
        );
    }

    #[test]
    fn counts_are_taken_once() {
        let p = Progress::default();
        p.add(3, Duration::from_micros(30));
        p.add(0, Duration::from_micros(99));
        assert_eq!(p.take(), (3, 30));
        assert_eq!(p.take(), (0, 0));
    }
}
