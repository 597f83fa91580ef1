//! What a data dir costs: N records (default 1,000,000) stored through a server's
//! replica with its journal, then the restart timed twice (from the journal alone,
//! then after a compaction, from the snapshot), and the data dir's bytes per record.
//!
//!     cargo run --release --example durable_bench -- [RECORDS] [DIR]
//!
//! DIR defaults to a fresh directory under the system temp dir (removed at the end).

use std::{sync::Arc, time::Instant};

use herd::{
    durable::{DataConfig, DataSettings, Fsync, Journal},
    replica::Replica,
    store::Record,
    wire::{self, Timestamp},
};

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// CPU seconds this thread has used (the restore runs on the calling thread): on a
/// shared machine, wall time says as much about the other processes as about this one.
fn thread_cpu() -> f64 {
    // SAFETY: getrusage only writes the struct passed to it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Opens the data dir: the replica, the journal, and the restore's wall and CPU seconds.
fn open(config: &DataConfig) -> (Replica, Arc<Journal>, (f64, f64)) {
    let mut replica = Replica::new("Goloman".into(), Replica::fresh_incarnation(), Vec::new());
    let (started, cpu) = (Instant::now(), thread_cpu());
    let journal = Journal::open(config, &mut replica).expect("open the data dir");
    // Its thread writes and syncs in the background, as in a server.
    let j = journal.clone();
    std::thread::spawn(move || j.run_syncer());
    (
        replica,
        journal,
        (started.elapsed().as_secs_f64(), thread_cpu() - cpu),
    )
}

/// An IAMAT of client `i`, with a client ID and location of the length herd-bench uses.
fn iamat(replica: &Replica, i: usize, now: Timestamp) {
    let line = format!(
        "IAMAT bench-client-{i:07} +34.{:06}-118.{:06} 1520023934.{:09}",
        i % 1_000_000,
        (i * 7) % 1_000_000,
        i % 1_000_000_000
    );
    let wire::Command::IAmAt(cmd) = wire::parse(line.as_bytes(), usize::MAX).unwrap() else {
        unreachable!()
    };
    let mut diff = Vec::new();
    wire::write_time_diff(now, &cmd.client_time, &mut diff);
    let record = Record::from_iamat("Goloman", &diff, &cmd);
    let _ = replica.iamat(record, &cmd.client_time, false);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("RECORDS is a number"));
    let (dir, remove) = match args.next() {
        Some(d) => (std::path::PathBuf::from(d), false),
        None => (
            std::env::temp_dir().join(format!("herd-durable-bench-{}", std::process::id())),
            true,
        ),
    };
    let config = DataConfig {
        dir: dir.clone(),
        settings: DataSettings {
            fsync: Fsync::EverySec,
            // No compaction before the first timed restart.
            compact_min_bytes: 1 << 40,
            ..DataSettings::default()
        },
    };
    let (replica, journal, _) = open(&config);
    let started = Instant::now();
    let now = Timestamp::now();
    for i in 0..n {
        iamat(&replica, i, now);
        if i % 64 == 63 {
            journal.write_through(journal.appended()).unwrap();
        }
    }
    journal.write_through(journal.appended()).unwrap();
    let store_s = started.elapsed().as_secs_f64();
    let journal_bytes = dir_bytes(&dir);
    journal.stop();
    drop(replica);
    drop(journal);

    let (replica, journal, from_journal) = open(&config);
    assert_eq!(replica.store().len(), n, "every record restored");
    let started = Instant::now();
    journal.compact(&replica).expect("compact");
    let compact_s = started.elapsed().as_secs_f64();
    let snapshot_bytes = dir_bytes(&dir);
    journal.stop();
    drop(replica);
    drop(journal);

    let (replica, journal, from_snapshot) = open(&config);
    assert_eq!(replica.store().len(), n, "every record restored");

    // A second compaction, as the server runs it (in the background), with IAMATs
    // going on: the longest of them is what a compaction costs a client.
    // The same IAMATs for as long without a compaction: the longest of those is what
    // the table's own growth and the machine cost, for comparison.
    let (mut base_worst, mut base_count) = (0f64, 0u64);
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < compact_s {
        let t = Instant::now();
        iamat(&replica, 2 * n + base_count as usize, now);
        journal.write_through(journal.appended()).unwrap();
        base_worst = base_worst.max(t.elapsed().as_secs_f64());
        base_count += 1;
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let (worst, during) = std::thread::scope(|s| {
        let iamats = s.spawn(|| {
            let (mut worst, mut count) = (0f64, 0u64);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                iamat(&replica, n + count as usize, now);
                journal.write_through(journal.appended()).unwrap();
                worst = worst.max(t.elapsed().as_secs_f64());
                count += 1;
            }
            (worst, count)
        });
        journal.compact(&replica).expect("compact");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        iamats.join().unwrap()
    });

    println!("records                       {n}");
    println!(
        "stored through the journal    {store_s:.2} s ({:.0} records/s)",
        n as f64 / store_s
    );
    println!(
        "journal only: data dir        {journal_bytes} bytes ({:.1} B a record)",
        journal_bytes as f64 / n as f64
    );
    println!(
        "restart from the journal      {:.3} s ({:.3} s CPU)",
        from_journal.0, from_journal.1
    );
    println!("compaction (snapshot written) {compact_s:.3} s");
    println!(
        "after compaction: data dir    {snapshot_bytes} bytes ({:.1} B a record)",
        snapshot_bytes as f64 / n as f64
    );
    println!(
        "restart from the snapshot     {:.3} s ({:.3} s CPU)",
        from_snapshot.0, from_snapshot.1
    );
    println!(
        "a second compaction, with IAMATs going on: {during} IAMATs, the longest {:.2} ms",
        worst * 1000.0
    );
    println!(
        "  the same without a compaction: {base_count} IAMATs, the longest {:.2} ms",
        base_worst * 1000.0
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average                  {}", load.trim());
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
