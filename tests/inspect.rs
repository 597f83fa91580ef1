//! Inspection over real processes: a real grpcurl (installed by tests/run.sh; its
//! path in `GRPCURL`) against `herd up`, and Prometheus metrics scraped over HTTP
//! and checked against the traffic sent.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

const NAMES: [&str; 5] = ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"];
const LINKS: [(&str, &str); 6] = [
    ("Goloman", "Hands"),
    ("Goloman", "Holiday"),
    ("Goloman", "Wilkes"),
    ("Hands", "Wilkes"),
    ("Holiday", "Welsh"),
    ("Holiday", "Wilkes"),
];

/// The default five-server herd run by `herd up` as a child process, on ports the
/// OS chose (reserved by binding port 0, released just before the spawn: a tiny race).
struct Herd {
    child: Child,
    dir: PathBuf,
    client: Vec<u16>,
    peer: Vec<u16>,
}

impl Herd {
    fn start() -> Herd {
        Herd::start_with(false)
    }

    /// With `tls`, the peer ports speak TLS only, with certificates `herd certs`
    /// made in `<dir>/certs` (they name 127.0.0.1); the links are not waited for.
    fn start_with(tls: bool) -> Herd {
        let reserved: Vec<TcpListener> = (0..10)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = reserved
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let (client, peer) = (ports[..5].to_vec(), ports[5..].to_vec());
        let mut toml = String::new();
        for (i, name) in NAMES.iter().enumerate() {
            let neighbours: Vec<String> = LINKS
                .iter()
                .filter_map(|(a, b)| match (*a == *name, *b == *name) {
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
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("herd-inspect-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("herd.toml"), &toml).unwrap();
        if tls {
            let out = Command::new(env!("CARGO_BIN_EXE_herd"))
                .arg("certs")
                .arg("--config")
                .arg(dir.join("herd.toml"))
                .arg("--out")
                .arg(dir.join("certs"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let toml = format!(
                "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{{server}}.pem\"\nkey = \"certs/{{server}}.key\"\n\n{toml}"
            );
            std::fs::write(dir.join("herd.toml"), toml).unwrap();
        }
        drop(reserved);
        let child = Command::new(env!("CARGO_BIN_EXE_herd"))
            .arg("up")
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
        if tls {
            return herd;
        }
        // Every link up (the Links view says so) before the test starts.
        wait_until(Duration::from_secs(20), "all links up", || {
            NAMES.iter().all(|n| {
                let out = herd.grpcurl(n, None, &["herd.v1.Inspect/Links"]);
                out.status.success()
                    && !String::from_utf8_lossy(&out.stdout).contains("\"state\": \"connecting\"")
                    && !String::from_utf8_lossy(&out.stdout).contains("\"state\": \"backoff\"")
                    && !String::from_utf8_lossy(&out.stdout).contains("\"state\": \"down\"")
            })
        });
        herd
    }

    fn index(name: &str) -> usize {
        NAMES.iter().position(|n| *n == name).unwrap()
    }

    fn peer_addr(&self, name: &str) -> String {
        format!("127.0.0.1:{}", self.peer[Self::index(name)])
    }

    /// Sends `lines` to `name`'s client port, half-closes, and returns everything it answered.
    fn send(&self, name: &str, lines: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.client[Self::index(name)])).unwrap();
        s.write_all(lines.as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// `grpcurl -plaintext [-d DATA] ADDR ARGS...` against `name`'s peer port.
    fn grpcurl(&self, name: &str, data: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = grpcurl_cmd();
        cmd.arg("-plaintext");
        if let Some(d) = data {
            cmd.args(["-d", d]);
        }
        cmd.arg(self.peer_addr(name)).args(args).output().unwrap()
    }

    fn metrics(&self, name: &str) -> String {
        let mut s = TcpStream::connect(self.peer_addr(name)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }
}

impl Herd {
    /// Polls `name`'s metrics until `series` reads `value`.
    fn wait_for_metric(&self, name: &str, series: &str, value: f64, limit: Duration, what: &str) {
        wait_until(limit, what, || {
            sample(&self.metrics(name), series) == Some(value)
        });
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn grpcurl_cmd() -> Command {
    let path = std::env::var("GRPCURL").unwrap_or_else(|_| {
        let local = concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/bin/grpcurl");
        assert!(
            std::path::Path::new(local).exists(),
            "grpcurl not found: run tests/run.sh, which installs it, or set GRPCURL"
        );
        local.to_owned()
    });
    Command::new(path)
}

fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_secs() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// The value of one sample line of a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn grpcurl_lists_and_describes_every_service() {
    let herd = Herd::start();
    for name in NAMES {
        let out = herd.grpcurl(name, None, &["list"]);
        assert!(out.status.success(), "{out:?}");
        let list = String::from_utf8(out.stdout).unwrap();
        for service in [
            "herd.v1.Peer",
            "herd.v1.Inspect",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(
                list.lines().any(|l| l == service),
                "{name}: {service} missing in {list}"
            );
        }
    }
    let out = herd.grpcurl("Welsh", None, &["describe", "herd.v1.Inspect"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("rpc Watch ( .herd.v1.WatchRequest ) returns ( stream .herd.v1.WatchEvent )"),
        "{text}"
    );
    assert!(
        text.contains("// Streams every update this server applies"),
        "comments kept: {text}"
    );
    let out = herd.grpcurl("Welsh", None, &["describe", "herd.v1.Update"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("bytes client_id = 1;") && text.contains("repeated string seen = 7;"),
        "{text}"
    );
}

#[test]
fn health_is_serving_through_grpcurl_and_herd_health() {
    let herd = Herd::start();
    for name in NAMES {
        let out = herd.grpcurl(name, None, &["grpc.health.v1.Health/Check"]);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"status\": \"SERVING\""));
        let out = herd.grpcurl(
            name,
            Some(r#"{"service":"herd.v1.Peer"}"#),
            &["grpc.health.v1.Health/Check"],
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("\"status\": \"SERVING\""),
            "{out:?}"
        );
    }
    let ok = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["health", "--addr", &herd.peer_addr("Hands")])
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "SERVING\n");
    // Nothing listens on a port we just released: the check fails, and says so.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["health", "--addr", &free.to_string()])
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("health check"));
}

#[test]
fn watch_shows_an_update_made_at_another_server() {
    let herd = Herd::start();
    let mut watch = grpcurl_cmd()
        .args([
            "-plaintext",
            &herd.peer_addr("Hands"),
            "herd.v1.Inspect/Watch",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let stdout = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut s = seen.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    // The Watch subscribes at some point after grpcurl starts: keep making new
    // updates at Welsh until one shows up at Hands.
    let mut replies = Vec::new();
    wait_until(
        Duration::from_secs(15),
        "the Watch at Hands to print an update",
        || {
            let reply = herd.send(
                "Welsh",
                &format!(
                    "IAMAT watched.client +34.068930-118.445127 {}\n",
                    now_secs()
                ),
            );
            replies.push(reply.trim_end().to_owned());
            std::thread::sleep(Duration::from_millis(100));
            let seen = seen.lock().unwrap();
            replies
                .iter()
                .any(|r| seen.contains(&format!("\"atLine\": \"{r}\"")))
        },
    );
    let _ = watch.kill();
    let _ = watch.wait();
    reader.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        replies.iter().all(|r| r.starts_with("AT Welsh +")),
        "{replies:?}"
    );
    // It came over a link: from one of Hands's neighbours, with Welsh as origin.
    assert!(
        seen.contains("\"from\": \"Goloman\"") || seen.contains("\"from\": \"Wilkes\""),
        "{seen}"
    );
    assert!(seen.contains("\"origin\": \"Welsh\""), "{seen}");
}

#[test]
fn lookup_and_links_show_the_record_and_the_links() {
    let herd = Herd::start();
    let reply = herd.send("Welsh", "IAMAT looked.up +10.5-20.25 1700000000.5\n");
    let line = reply.trim_end();
    wait_until(Duration::from_secs(10), "the record at Goloman", || {
        let out = herd.grpcurl(
            "Goloman",
            Some(r#"{"client":"looked.up"}"#),
            &["herd.v1.Inspect/Lookup"],
        );
        String::from_utf8_lossy(&out.stdout).contains(&format!("\"atLine\": \"{line}\""))
    });
    let out = herd.grpcurl(
        "Goloman",
        Some(r#"{"client":"nobody"}"#),
        &["herd.v1.Inspect/Lookup"],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"found\": true"));

    let out = herd.grpcurl("Holiday", None, &["herd.v1.Inspect/Links"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"server\": \"Holiday\""), "{text}");
    for n in ["Goloman", "Welsh", "Wilkes"] {
        assert!(text.contains(&format!("\"neighbour\": \"{n}\"")), "{text}");
    }
    assert_eq!(text.matches("\"state\": \"up\"").count(), 3, "{text}");
    // Holiday received the update from Welsh: its only path.
    assert!(text.contains("\"updatesReceived\""), "{text}");
}

#[test]
fn metrics_count_the_traffic_sent() {
    let herd = Herd::start();
    let t = 1_700_000_000u64;
    // Welsh: 4 new IAMATs, 1 stale, 2 invalid lines, 1 WHATSAT ok, 1 for an unknown client.
    let mut script = String::new();
    for i in 0..4 {
        script += &format!("IAMAT m{i} +34.068930-118.445127 {}\n", t + i);
    }
    script += &format!("IAMAT m0 +1+1 {t}\n");
    script += "HELLO there\nIAMAT too few\n";
    script += "WHATSAT m1 10 3\nWHATSAT nobody 10 3\n";
    let out = herd.send("Welsh", &script);
    assert_eq!(
        out.matches("\n? ").count() + usize::from(out.starts_with("? ")),
        3,
        "{out}"
    );
    herd.send("Welsh", "\n"); // a second connection, with a blank line: no reply, no count

    // The server counts a connection closed just after the client sees its EOF.
    herd.wait_for_metric(
        "Welsh",
        r#"herd_client_connections_open{server="Welsh"}"#,
        0.0,
        Duration::from_secs(5),
        "Welsh's connections to close",
    );
    let m = herd.metrics("Welsh");
    let s = |series: &str| sample(&m, series).unwrap_or_else(|| panic!("{series} missing:\n{m}"));
    assert_eq!(
        s(r#"herd_commands_total{server="Welsh",kind="iamat",outcome="applied"}"#),
        4.0
    );
    assert_eq!(
        s(r#"herd_commands_total{server="Welsh",kind="iamat",outcome="stale"}"#),
        1.0
    );
    assert_eq!(
        s(r#"herd_commands_total{server="Welsh",kind="invalid",outcome="rejected"}"#),
        2.0
    );
    assert_eq!(
        s(r#"herd_commands_total{server="Welsh",kind="whatsat",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        s(r#"herd_commands_total{server="Welsh",kind="whatsat",outcome="unknown_client"}"#),
        1.0
    );
    assert_eq!(s(r#"herd_question_replies_total{server="Welsh"}"#), 3.0);
    assert_eq!(s(r#"herd_client_connections_total{server="Welsh"}"#), 2.0);
    assert_eq!(s(r#"herd_client_connections_open{server="Welsh"}"#), 0.0);
    assert_eq!(
        s(r#"herd_places_requests_total{server="Welsh",status="OK"}"#),
        1.0
    );
    assert_eq!(
        s(r#"herd_places_latency_seconds_count{server="Welsh"}"#),
        1.0
    );
    // Welsh's only neighbour is Holiday: each new IAMAT was queued to it once.
    assert_eq!(s(r#"herd_updates_forwarded_total{server="Welsh"}"#), 4.0);
    assert_eq!(
        s(r#"herd_link_state_changes_total{server="Welsh",neighbour="Holiday",state="up"}"#),
        1.0
    );

    // Holiday applies exactly those four, and forwards each to Goloman and Wilkes.
    herd.wait_for_metric(
        "Holiday",
        r#"herd_updates_applied_total{server="Holiday"}"#,
        4.0,
        Duration::from_secs(10),
        "Holiday to apply the updates",
    );
    let h = herd.metrics("Holiday");
    assert_eq!(
        sample(&h, r#"herd_updates_forwarded_total{server="Holiday"}"#),
        Some(8.0),
        "{h}"
    );
    // Goloman and Wilkes each get them from Holiday only (Holiday's list names
    // both), and both forward them to Hands: Hands applies four and drops four.
    herd.wait_for_metric(
        "Hands",
        r#"herd_updates_received_total{server="Hands"}"#,
        8.0,
        Duration::from_secs(10),
        "Hands to receive both copies",
    );
    for n in NAMES {
        let m = herd.metrics(n);
        let dup = sample(
            &m,
            &format!(r#"herd_updates_duplicate_total{{server="{n}"}}"#),
        );
        let applied = sample(
            &m,
            &format!(r#"herd_updates_applied_total{{server="{n}"}}"#),
        );
        let (want_dup, want_applied) = match n {
            "Hands" => (4.0, 4.0),
            "Welsh" => (0.0, 0.0),
            _ => (0.0, 4.0),
        };
        assert_eq!(
            (dup, applied),
            (Some(want_dup), Some(want_applied)),
            "{n}: {m}"
        );
    }
}

/// GET `path` from `addr` over HTTP/1.0 (so the answer is never chunked): the status
/// line and headers, and the body.
fn http_get(addr: &str, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((head.to_owned(), body.to_owned()))
}

/// The metric names of an exposition (the part of each sample line before `{` or ` `).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn metrics_say_what_they_are_and_carry_build_and_process_series() {
    let herd = Herd::start();
    let (head, body) = http_get(&herd.peer_addr("Hands"), "/metrics").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_else(|| panic!("no content type: {head}"));
    // What is sent is OpenMetrics text (it ends with `# EOF`), and says so.
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let commit = env!("HERD_COMMIT");
    assert!(
        body.contains(&format!(
            "herd_build_info{{server=\"Hands\",version=\"{}\",commit=\"{commit}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    let resident = sample(&body, "process_resident_memory_bytes{server=\"Hands\"}").unwrap();
    assert!(resident > 1e6, "{resident}");
    assert!(sample(&body, "process_open_fds{server=\"Hands\"}").unwrap() >= 10.0);
    assert!(sample(&body, "process_cpu_seconds_total{server=\"Hands\"}").unwrap() > 0.0);
    assert_eq!(sample(&body, "herd_records{server=\"Hands\"}"), Some(0.0));
    herd.send("Hands", &format!("IAMAT rec +1+1 {}\n", now_secs()));
    wait_until(Duration::from_secs(10), "the record counted", || {
        let (_, body) = http_get(&herd.peer_addr("Hands"), "/metrics").unwrap();
        sample(&body, "herd_records{server=\"Hands\"}") == Some(1.0)
    });
}

#[test]
fn the_grafana_dashboard_queries_metrics_that_exist() {
    let herd = Herd::start();
    // Every family has a series once some traffic went by (links are up already).
    herd.send(
        "Welsh",
        &format!("IAMAT dash +34.07-118.44 {}\n", now_secs()),
    );
    herd.send("Welsh", "WHATSAT dash 10 1\nFOO\n");
    let (_, body) = http_get(&herd.peer_addr("Welsh"), "/metrics").unwrap();
    let exposed = metric_names(&body);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/herd.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        // The metric names in a query: identifiers of herd's and the process's
        // families (or Prometheus's own `up`).
        let mut named = expr.starts_with("up{");
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("herd_") || word.starts_with("process_") {
                named = true;
                assert!(
                    exposed.contains(word),
                    "the dashboard queries {word}, which /metrics does not expose ({expr})\n{exposed:?}"
                );
            }
        }
        assert!(named, "{expr} names no metric");
    }
}

/// Debian's Prometheus (tests/run.sh installs it) scraping a TLS herd, as the
/// compose herd runs, with deploy/prometheus.yml, its targets swapped for this
/// herd's peer ports and its CA for this herd's.
#[test]
fn prometheus_scrapes_every_server() {
    let Some(prometheus) = ["prometheus", "/usr/bin/prometheus"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
    else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "prometheus is needed in CI (tests/run.sh installs Debian's package)"
        );
        eprintln!("SKIPPED: prometheus is not installed (Debian: apt-get install prometheus)");
        return;
    };
    let herd = Herd::start_with(true);
    let mut config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus.yml"
    ))
    .unwrap();
    let ca = "ca_file: /etc/prometheus/certs/ca.pem";
    assert!(config.contains(ca), "deploy/prometheus.yml names no CA");
    config = config.replace(
        ca,
        &format!("ca_file: {}", herd.dir.join("certs/ca.pem").display()),
    );
    for (i, name) in NAMES.iter().enumerate() {
        let target = format!("{}:{}", name.to_lowercase(), 13001 + i);
        assert!(
            config.contains(&target),
            "{target} not in deploy/prometheus.yml"
        );
        config = config.replace(&target, &herd.peer_addr(name));
    }
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s");
    let dir = herd.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let web = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let child = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(child);
    let query = |q: &str| -> Vec<serde_json::Value> {
        let Ok((_, body)) = http_get(&web, &format!("/api/v1/query?query={q}")) else {
            return Vec::new();
        };
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    };
    let servers_of = |results: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        results
            .iter()
            .filter_map(|r| r["metric"]["server"].as_str().map(str::to_owned))
            .collect()
    };
    let all: std::collections::BTreeSet<String> = NAMES.iter().map(|n| n.to_string()).collect();
    let log_path = dir.join("log");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query("up");
        let healthy = up.len() == NAMES.len() && up.iter().all(|r| r["value"][1] == "1");
        if healthy && servers_of(&query("herd_build_info")) == all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw every server: up = {up:?}\nlog:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for series in [
        "herd_records",
        "herd_commands_total",
        "process_resident_memory_bytes",
    ] {
        assert_eq!(servers_of(&query(series)), all, "{series}");
    }
}
