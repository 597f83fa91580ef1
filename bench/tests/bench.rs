//! `herd-bench` (the real binary) over real sockets: against in-process herds of the shared
//! harness, and against tiny fake servers whose wrong answers must be counted as errors.

// The server crate's own black-box harness (real herds on ports the OS chose), shared
// rather than copied.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    process::Command,
};

use common::TestHerd;
use serde_json::Value;

/// A server that answers every line with `reply(line)`, one thread per connection.
fn fake_server(reply: fn(&[u8]) -> Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut lines = BufReader::new(conn);
                let mut line = Vec::new();
                while lines.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    if out.write_all(&reply(text)).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

/// Runs `herd-bench ARGS` (off the runtime: the servers under test share it).
async fn run_bench(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herd-bench"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Runs `herd-bench ARGS --json` and returns its exit code and report.
async fn bench(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = run_bench(&all).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "herd-bench {args:?}: {e}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn assert_clean_run(code: i32, r: &Value) {
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["errors"]["total"], 0, "{r}");
    assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
    assert!(r["throughput_ops_s"].as_f64().unwrap() > 0.0, "{r}");
    let l = &r["latency_us"];
    assert!(l["p50"].as_u64().unwrap() >= 1, "{r}");
    assert!(l["p50"].as_u64() <= l["p99"].as_u64() && l["p99"].as_u64() <= l["max"].as_u64());
}

const SHORT: [&str; 4] = ["--duration", "1s", "--warmup", "200ms"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iamat_against_herd() {
    let herd = TestHerd::single("Goloman").await;
    let addr = herd.client_addr("Goloman").to_string();
    for (clients, depth) in [("distinct", "1"), ("repeated", "8"), ("stale", "4")] {
        let mut args = vec![
            "iamat",
            "--addr",
            &addr,
            "-c",
            "4",
            "-d",
            depth,
            "--clients",
            clients,
        ];
        args.extend(SHORT);
        let (code, r) = bench(&args).await;
        assert_clean_run(code, &r);
        assert_eq!(r["scenario"], "iamat");
        assert_eq!(r["target"], "herd");
        assert_eq!(r["clients"], clients);
        assert_eq!(r["connections"], 4);
    }
    // A fixed number of requests instead of a duration.
    let (code, r) = bench(&[
        "iamat",
        "--addr",
        &addr,
        "-c",
        "3",
        "-d",
        "2",
        "--requests",
        "1000",
        "--warmup",
        "0s",
    ])
    .await;
    assert_clean_run(code, &r);
    assert_eq!(r["requests"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_against_herd() {
    let herd = TestHerd::single("Goloman").await;
    let addr = herd.client_addr("Goloman").to_string();
    // The first WHATSAT waits for the places index (seconds in a debug build): not in the figures.
    let mut c = herd.client("Goloman").await;
    c.ask(b"IAMAT warm +34-118 1\n").await;
    let reply = c.whatsat(b"WHATSAT warm 1 1\n").await;
    assert!(
        reply.starts_with(b"AT "),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    let mut args = vec![
        "whatsat", "--addr", &addr, "-c", "2", "-d", "2", "--points", "50",
    ];
    args.extend(SHORT);
    let (code, r) = bench(&args).await;
    assert_clean_run(code, &r);
    assert_eq!(r["scenario"], "whatsat");
    assert_eq!(
        (r["radius_km"].as_f64(), r["bound"].as_u64()),
        (Some(10.0), Some(20))
    );
    // Around Los Angeles, 10 km finds places.
    assert!(r["results_per_reply"].as_f64().unwrap() > 1.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_marks_are_errors() {
    let addr = fake_server(|line| [b"? ", line, b"\n"].concat());
    let mut args = vec!["iamat", "--addr", &addr, "-c", "2", "-d", "4"];
    args.extend(SHORT);
    let (code, r) = bench(&args).await;
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["requests"], 0, "{r}");
    assert!(r["errors"]["rejected"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"]["total"], r["errors"]["rejected"], "{r}");

    // WHATSAT first seeds its clients: a server that rejects those IAMATs stops the run.
    let mut args = vec!["whatsat", "--addr", &addr];
    args.extend(SHORT);
    let out = run_bench(&args).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("seeding clients"));

    // One that takes the IAMATs but answers WHATSAT with `?`: every WHATSAT is an error.
    let addr = fake_server(|line| match line.strip_prefix(b"IAMAT ") {
        Some(rest) => [b"AT Fake +0.000000001 ", rest, b"\n"].concat(),
        None => [b"? ", line, b"\n"].concat(),
    });
    let mut args = vec!["whatsat", "--addr", &addr, "-c", "2", "-d", "4"];
    args.extend(SHORT);
    let (code, r) = bench(&args).await;
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["requests"], 0, "{r}");
    assert!(r["errors"]["rejected"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"]["total"], r["errors"]["rejected"], "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_answers_are_errors() {
    // Answers IAMAT with someone else's AT line, and WHATSAT with a lone `?`.
    let addr = fake_server(|line| {
        if line.starts_with(b"IAMAT") {
            b"AT Goloman +0.000000001 someone +1+1 1\n".to_vec()
        } else {
            b"? \n".to_vec()
        }
    });
    let mut args = vec!["iamat", "--addr", &addr, "-c", "2"];
    args.extend(SHORT);
    let (code, r) = bench(&args).await;
    assert_eq!(code, 3);
    assert_eq!(r["requests"], 0);
    assert!(r["errors"]["malformed"].as_u64().unwrap() > 0, "{r}");

    // A server that never answers: requests are missing once the timeout passes.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let (code, r) = bench(&[
        "iamat",
        "--addr",
        &addr,
        "-c",
        "2",
        "-d",
        "3",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--timeout",
        "500ms",
    ])
    .await;
    assert_eq!(code, 3);
    assert_eq!(r["errors"]["missing"], 6, "{r}");

    // Nobody listening at all: see a_run_that_cannot_connect_exits_1_with_no_report.
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_connections_report_memory() {
    let herd = TestHerd::single("Goloman").await;
    let addr = herd.client_addr("Goloman").to_string();
    // The servers run in this process.
    let pid = std::process::id().to_string();
    let (code, r) = bench(&[
        "records",
        "--addr",
        &addr,
        "--records",
        "5000",
        "--server-pid",
        &pid,
    ])
    .await;
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["scenario"], "records");
    assert_eq!(r["requests"], 5000);
    assert!(r["rss_kb_after"].as_u64().unwrap() > 0, "{r}");

    let (code, r) = bench(&[
        "connections",
        "--addr",
        &addr,
        "--count",
        "300",
        "--hold",
        "100ms",
        "--server-pid",
        &pid,
    ])
    .await;
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["opened"].as_u64(), r["answered"].as_u64()),
        (Some(300), Some(300)),
        "{r}"
    );
    assert!(r["rss_kb_idle"].as_u64().unwrap() > 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_across_the_herd() {
    let herd = TestHerd::default_topology().await;
    let at = herd.client_addr("Welsh").to_string();
    let seen = herd.client_addr("Hands").to_string();
    let watch = herd.peer_addr("Hands").to_string();
    let (code, r) = bench(&[
        "propagation",
        "--at",
        &at,
        "--seen",
        &seen,
        "--probes",
        "20",
        "--warmup",
        "0s",
    ])
    .await;
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (
            r["method"].as_str(),
            r["probes"].as_u64(),
            r["seen"].as_u64()
        ),
        (Some("poll"), Some(20), Some(20)),
        "{r}"
    );
    assert!(r["latency_us"]["p50"].as_u64().unwrap() > 0);

    let (code, r) = bench(&[
        "propagation",
        "--at",
        &at,
        "--watch",
        &watch,
        "--probes",
        "20",
        "--warmup",
        "100ms",
        "--background-rate",
        "500",
        "--background-connections",
        "2",
    ])
    .await;
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["method"].as_str(), r["seen"].as_u64()),
        (Some("watch"), Some(20)),
        "{r}"
    );
    let b = &r["background"];
    assert!(b["sent"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(b["sent"], b["answered"], "{r}");
}

/// The whole-herd scenario: IAMATs spread over every server of a herd file, then every
/// server must give the same AT line for each client read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_herd_reads_back_the_same_lines_everywhere() {
    let herd = TestHerd::default_topology().await;
    let file = std::env::temp_dir().join(format!("herd-bench-whole-{}.toml", std::process::id()));
    std::fs::write(&file, herd.toml()).unwrap();
    let pid = std::process::id().to_string();
    let (code, r) = bench(&[
        "herd",
        "--config",
        file.to_str().unwrap(),
        "-c",
        "10",
        "-d",
        "4",
        "--sample",
        "200",
        "--server-pid",
        &pid,
        "--timeout",
        "60s",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ])
    .await;
    let _ = std::fs::remove_file(&file);
    assert_clean_run(code, &r);
    assert_eq!(r["servers"].as_array().unwrap().len(), 5, "{r}");
    let b = &r["read_back"];
    assert_eq!(b["sampled"], 200, "{r}");
    assert_eq!(b["identical"], 200, "{r}");
    assert_eq!(b["differing"], 0, "{r}");
    assert!(r["server_cpu_us_per_iamat"].as_f64().unwrap() > 0.0, "{r}");
}

/// Two servers that are not linked cannot agree: the read-back lists the difference and
/// the run fails (exit 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_herd_reports_servers_that_disagree() {
    let a = TestHerd::single("Goloman").await;
    let b = TestHerd::single("Hands").await;
    let addrs = format!("{},{}", a.client_addr("Goloman"), b.client_addr("Hands"));
    let (code, r) = bench(&[
        "herd",
        "--addrs",
        &addrs,
        "-c",
        "4",
        "--sample",
        "20",
        "--settle",
        "2s",
        // The first WHATSAT waits for the offline index, slow to build in a debug build.
        "--timeout",
        "60s",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
    ])
    .await;
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["errors"]["total"], 0, "the load itself was clean: {r}");
    let back = &r["read_back"];
    assert_eq!(back["differing"], 20, "each server knows only its own: {r}");
    let first = &back["differences"][0]["answers"];
    assert_eq!(first.as_array().unwrap().len(), 2, "{r}");
    assert!(
        first
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a[1] == "(not known)"),
        "{r}"
    );
}

/// A run that cannot run at all (nothing listens) exits 1 with its reason and no
/// report: a table (or JSON) of zeros would read like a measurement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_connect_exits_1_with_no_report() {
    // A port that was just free: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    for json in [false, true] {
        let mut args = vec!["iamat", "--addr", &addr, "-c", "3", "--duration", "1s"];
        if json {
            args.push("--json");
        }
        let out = run_bench(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.contains("could not run"), "{stderr}");
    }
}

/// `simulate` runs herd's replication code over a simulated network: a small seeded
/// herd with a partition converges, the figures add up, and the same seed replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_a_partitioned_herd_converges_and_replays_by_seed() {
    let args = [
        "simulate",
        "--servers",
        "30",
        "--degree",
        "3",
        "--updates",
        "200",
        "--partition",
        "--loss",
        "0.01",
        "--seed",
        "9",
    ];
    let (code, v) = bench(&args).await;
    assert_eq!(code, 0, "{v}");
    let r = &v["report"];
    assert_eq!(r["servers"], 30, "{v}");
    assert_eq!(r["links"], 45, "{v}");
    assert_eq!(r["reached_all"], 200, "{v}");
    assert_eq!(r["converged"], true, "{v}");
    assert!(r["catch_up_records"].as_u64().unwrap() > 0, "{v}");
    assert!(r["catch_up_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(r["heal_to_converged_us"].as_u64().is_some(), "{v}");
    // Delays of 0.1-1 ms a hop: an update made outside the partition takes more than
    // one hop's time to reach the 30 servers. A loss holds a link up for 200 ms, and
    // at 1% of the messages most updates meet one on the way, but none meets ten.
    let (p50, p99, max) = (
        r["reach_p50_us"].as_u64().unwrap(),
        r["reach_p99_us"].as_u64().unwrap(),
        r["reach_max_us"].as_u64().unwrap(),
    );
    assert!(
        100 < p50 && p50 <= p99 && p99 <= max && max < 2_000_000,
        "{v}"
    );
    assert!(r["update_bytes"].as_u64().unwrap() > 0, "{v}");
    // Memory is read from /proc, which this machine has.
    assert!(r["memory_per_server"].as_u64().unwrap() > 0, "{v}");
    let (m, u, red) = (
        r["messages"].as_u64().unwrap(),
        r["useful"].as_u64().unwrap(),
        r["redundant"].as_u64().unwrap(),
    );
    assert_eq!(m, u + red, "{v}");
    let (_, again) = bench(&args).await;
    assert_eq!(again["report"]["messages"], r["messages"], "{again}");
    assert_eq!(
        again["report"]["simulated_us"], r["simulated_us"],
        "{again}"
    );

    // The Plumtree model on the same herd: converges too, with fewer whole updates.
    let mut tree = args.to_vec();
    tree.extend(["--broadcast", "plumtree"]);
    let (code, t) = bench(&tree).await;
    assert_eq!(code, 0, "{t}");
    assert_eq!(t["report"]["broadcast"], "plumtree", "{t}");
    assert_eq!(t["report"]["converged"], true, "{t}");
    assert_eq!(t["report"]["reached_all"], 200, "{t}");
    assert!(t["report"]["announcements"].as_u64().unwrap() > 0, "{t}");
    assert!(t["report"]["messages"].as_u64().unwrap() < m, "{t}");

    let out = run_bench(&["simulate", "--servers", "1"]).await;
    assert_eq!(out.status.code(), Some(2));
}
