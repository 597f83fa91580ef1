//! `herd bench` over real sockets: against `herd serve` and `herd up` on ports the OS chose,
//! and against tiny fake servers whose wrong answers must be counted as errors.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

const NAMES: [&str; 5] = ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"];
const LINKS: [(&str, &str); 6] = [
    ("Goloman", "Hands"),
    ("Goloman", "Holiday"),
    ("Goloman", "Wilkes"),
    ("Hands", "Wilkes"),
    ("Holiday", "Welsh"),
    ("Holiday", "Wilkes"),
];

/// `n` ports the OS chose (reserved by binding port 0, released just before use: a tiny race).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("herd-bench-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_until(within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A herd process (`serve` or `up`), killed on drop.
struct Herd {
    child: Child,
    dir: PathBuf,
    client: Vec<u16>,
    peer: Vec<u16>,
}

impl Herd {
    /// Goloman alone, no neighbours.
    fn one() -> Herd {
        Herd::start(&["Goloman"], &[], Some("Goloman"))
    }

    /// The default five-server herd in one process.
    fn five() -> Herd {
        Herd::start(&NAMES, &LINKS, None)
    }

    fn start(names: &[&str], links: &[(&str, &str)], serve: Option<&str>) -> Herd {
        let ports = free_ports(names.len() * 2);
        let (client, peer) = (ports[..names.len()].to_vec(), ports[names.len()..].to_vec());
        let mut toml = String::new();
        for (i, name) in names.iter().enumerate() {
            let neighbours: Vec<String> = links
                .iter()
                .filter_map(|(a, b)| match (a == name, b == name) {
                    (true, _) => Some(format!("\"{b}\"")),
                    (_, true) => Some(format!("\"{a}\"")),
                    _ => None,
                })
                .collect();
            toml += &format!(
                "[[server]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nclient_port = {}\npeer_port = {}\nneighbours = [{}]\n\n",
                client[i],
                peer[i],
                neighbours.join(", ")
            );
        }
        let dir = scratch_dir("herd");
        std::fs::write(dir.join("herd.toml"), toml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
        match serve {
            Some(name) => cmd.args(["serve", name]),
            None => cmd.arg("up"),
        };
        let child = cmd
            .arg("--config")
            .arg(dir.join("herd.toml"))
            .arg("--log-dir")
            .arg(dir.join("logs"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let herd = Herd {
            child,
            dir,
            client,
            peer,
        };
        for port in &herd.client {
            wait_until(Duration::from_secs(20), "the client port", || {
                TcpStream::connect(("127.0.0.1", *port)).is_ok()
            });
        }
        herd
    }

    fn client_addr(&self, name: &str) -> String {
        let i = NAMES.iter().position(|n| *n == name).unwrap();
        format!("127.0.0.1:{}", self.client[i.min(self.client.len() - 1)])
    }

    fn peer_addr(&self, name: &str) -> String {
        let i = NAMES.iter().position(|n| *n == name).unwrap();
        format!("127.0.0.1:{}", self.peer[i])
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

/// Runs `herd bench ARGS --json` and returns its exit code and report.
fn bench(args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "herd bench {args:?}: {e}\nstdout: {stdout}\nstderr: {}",
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

#[test]
fn iamat_against_herd() {
    let herd = Herd::one();
    let addr = herd.client_addr("Goloman");
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
        let (code, r) = bench(&args);
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
    ]);
    assert_clean_run(code, &r);
    assert_eq!(r["requests"], 1000);
}

#[test]
fn whatsat_against_herd() {
    let herd = Herd::one();
    let addr = herd.client_addr("Goloman");
    // The first WHATSAT waits for the places index (seconds in a debug build): not in the figures.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"IAMAT warm +34-118 1\nWHATSAT warm 1 1\n")
        .unwrap();
    let mut replies = BufReader::new(s);
    let mut text = String::new();
    while replies.read_line(&mut text).unwrap() > 0 && !text.ends_with("\n\n") {}
    assert!(text.starts_with("AT "), "{text}");

    let mut args = vec![
        "whatsat", "--addr", &addr, "-c", "2", "-d", "2", "--points", "50",
    ];
    args.extend(SHORT);
    let (code, r) = bench(&args);
    assert_clean_run(code, &r);
    assert_eq!(r["scenario"], "whatsat");
    assert_eq!(
        (r["radius_km"].as_f64(), r["bound"].as_u64()),
        (Some(10.0), Some(20))
    );
    // Around Los Angeles, 10 km finds places.
    assert!(r["results_per_reply"].as_f64().unwrap() > 1.0, "{r}");
}

#[test]
fn question_marks_are_errors() {
    let addr = fake_server(|line| [b"? ", line, b"\n"].concat());
    let mut args = vec!["iamat", "--addr", &addr, "-c", "2", "-d", "4"];
    args.extend(SHORT);
    let (code, r) = bench(&args);
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["requests"], 0, "{r}");
    assert!(r["errors"]["rejected"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"]["total"], r["errors"]["rejected"], "{r}");

    // WHATSAT first seeds its clients: a server that rejects those IAMATs stops the run.
    let mut args = vec!["whatsat", "--addr", &addr];
    args.extend(SHORT);
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("bench")
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("seeding clients"));

    // One that takes the IAMATs but answers WHATSAT with `?`: every WHATSAT is an error.
    let addr = fake_server(|line| match line.strip_prefix(b"IAMAT ") {
        Some(rest) => [b"AT Fake +0.000000001 ", rest, b"\n"].concat(),
        None => [b"? ", line, b"\n"].concat(),
    });
    let mut args = vec!["whatsat", "--addr", &addr, "-c", "2", "-d", "4"];
    args.extend(SHORT);
    let (code, r) = bench(&args);
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["requests"], 0, "{r}");
    assert!(r["errors"]["rejected"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"]["total"], r["errors"]["rejected"], "{r}");
}

#[test]
fn wrong_answers_are_errors() {
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
    let (code, r) = bench(&args);
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
    ]);
    assert_eq!(code, 3);
    assert_eq!(r["errors"]["missing"], 6, "{r}");

    // Nobody listening: connection failures.
    drop(silent);
    let (code, r) = bench(&[
        "iamat",
        "--addr",
        &addr,
        "-c",
        "3",
        "--duration",
        "100ms",
        "--warmup",
        "0s",
    ]);
    assert_eq!(code, 3);
    assert_eq!(r["errors"]["connect"], 3, "{r}");
}

#[test]
fn records_and_connections_report_memory() {
    let herd = Herd::one();
    let addr = herd.client_addr("Goloman");
    let pid = herd.child.id().to_string();
    let (code, r) = bench(&[
        "records",
        "--addr",
        &addr,
        "--records",
        "5000",
        "--server-pid",
        &pid,
    ]);
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
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["opened"].as_u64(), r["answered"].as_u64()),
        (Some(300), Some(300)),
        "{r}"
    );
    assert!(r["rss_kb_idle"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn propagation_across_the_herd() {
    let herd = Herd::five();
    let at = herd.client_addr("Welsh");
    let seen = herd.client_addr("Hands");
    let watch = herd.peer_addr("Hands");
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
    ]);
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
    ]);
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
