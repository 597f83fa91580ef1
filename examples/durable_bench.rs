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

fn open(config: &DataConfig) -> (Replica, Arc<Journal>, f64) {
    let mut replica = Replica::new("Goloman".into(), Replica::fresh_incarnation(), Vec::new());
    let started = Instant::now();
    let journal = Journal::open(config, &mut replica).expect("open the data dir");
    (replica, journal, started.elapsed().as_secs_f64())
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
        // Client IDs and locations of the length herd-bench uses.
        let line = format!(
            "IAMAT bench-client-{i:07} +34.{:06}-118.{:06} 1520023934.{:09}",
            i % 1_000_000,
            (i * 7) % 1_000_000,
            i % 1_000_000_000
        );
        let wire::Command::IAmAt(cmd) = wire::parse(line.as_bytes()).unwrap() else {
            unreachable!()
        };
        let mut diff = Vec::new();
        wire::write_time_diff(now, &cmd.client_time, &mut diff);
        let record = Record::from_iamat("Goloman", &diff, &cmd);
        let _ = replica.iamat(record, &cmd.client_time, false);
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

    let (replica, _journal, from_snapshot) = open(&config);
    assert_eq!(replica.store().len(), n, "every record restored");

    println!("records                       {n}");
    println!(
        "stored through the journal    {store_s:.2} s ({:.0} records/s)",
        n as f64 / store_s
    );
    println!(
        "journal only: data dir        {journal_bytes} bytes ({:.1} B a record)",
        journal_bytes as f64 / n as f64
    );
    println!("restart from the journal      {from_journal:.3} s");
    println!("compaction (snapshot written) {compact_s:.3} s");
    println!(
        "after compaction: data dir    {snapshot_bytes} bytes ({:.1} B a record)",
        snapshot_bytes as f64 / n as f64
    );
    println!("restart from the snapshot     {from_snapshot:.3} s");
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
