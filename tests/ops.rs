//! The operators' tools, as the real binary: `herd client` (arguments, stdin, exit
//! codes, and the interactive mode in a real terminal under tmux), `herd status` and
//! `herd topology` against real `herd serve` processes with one of them stopped, and
//! `herd health`'s words for a port that is closed or is a client port.
//!
//! Ports are reserved by binding 127.0.0.1:0 and released just before the spawn.

mod common;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{TempDir, herd_file};

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// A herd of `herd serve` processes, one per server, killed when dropped.
struct Servers {
    dir: TempDir,
    config: PathBuf,
    names: Vec<&'static str>,
    client: Vec<u16>,
    peer: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Servers {
    fn start(label: &str, topology: &[(&'static str, &'static [&'static str])]) -> Servers {
        let reserved: Vec<TcpListener> = (0..topology.len() * 2)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
            .collect();
        let ports: Vec<u16> = reserved
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        let dir = TempDir::new(label);
        let config = dir.path().join("herd.toml");
        std::fs::write(&config, herd_file(topology, &ports)).expect("write the herd file");
        drop(reserved);
        let mut servers = Servers {
            config,
            names: topology.iter().map(|(n, _)| *n).collect(),
            client: ports.iter().step_by(2).copied().collect(),
            peer: ports.iter().skip(1).step_by(2).copied().collect(),
            children: Vec::new(),
            dir,
        };
        for name in servers.names.clone() {
            let stderr = std::fs::File::create(servers.dir.path().join(format!("{name}.stderr")))
                .expect("stderr file");
            let child = Command::new(HERD)
                .args(["serve", name, "--config"])
                .arg(&servers.config)
                .arg("--log-dir")
                .arg(servers.dir.path().join("logs"))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn herd serve");
            servers.children.push(Some(child));
        }
        for i in 0..servers.names.len() {
            for port in [servers.client[i], servers.peer[i]] {
                wait_until(
                    Duration::from_secs(30),
                    &format!("port {port} accepts"),
                    || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                );
            }
        }
        servers
    }

    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| *n == name)
            .expect("a server of this herd")
    }

    fn client_addr(&self, name: &str) -> String {
        format!("127.0.0.1:{}", self.client[self.index(name)])
    }

    fn peer_addr(&self, name: &str) -> String {
        format!("127.0.0.1:{}", self.peer[self.index(name)])
    }

    /// Stops `name` with SIGTERM and waits for it to exit.
    fn stop(&mut self, name: &str) {
        let i = self.index(name);
        let mut child = self.children[i].take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM failed");
        let status = child.wait().expect("wait");
        assert!(status.success(), "{name} exited with {status}");
    }

    fn herd(&self, args: &[&str]) -> Output {
        Command::new(HERD)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run herd")
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `herd client ARGS` with `stdin` fed to it.
fn client(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(HERD)
        .arg("client")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herd client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("herd client output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const SOLO: &[(&str, &[&str])] = &[("Solo", &[])];

#[test]
fn client_answers_one_command_from_its_arguments_with_exit_codes() {
    let herd = Servers::start("client-args", SOLO);
    let addr = herd.client_addr("Solo");
    let out = client(
        &[
            &addr,
            "IAMAT",
            "kiwi",
            "+34.068930-118.445127",
            "1520023934.918963997",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let reply = text(&out.stdout);
    assert!(
        reply.starts_with("AT Solo +")
            && reply.ends_with(" kiwi +34.068930-118.445127 1520023934.918963997\n"),
        "{reply:?}"
    );
    assert_eq!(reply.lines().count(), 1);

    // A bare port means 127.0.0.1; a `?` reply exits 1 and says why on stderr, while
    // stdout keeps the server's bytes exactly.
    let port = addr.rsplit(':').next().expect("port");
    let out = client(&[port, "IAMAT", "kiwi", "+91-118", "1"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "? IAMAT kiwi +91-118 1\n");
    assert!(
        text(&out.stderr).contains("reason: latitude is not within [-90, 90]"),
        "{}",
        text(&out.stderr)
    );

    // --pretty: the reason under the reply, the JSON indented.
    // The first WHATSAT may wait for the places index (slow in a debug build).
    let out = client(
        &[
            "--pretty",
            "--timeout",
            "2m",
            &addr,
            "WHATSAT",
            "kiwi",
            "10",
            "2",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("AT Solo +"), "{shown}");
    assert!(
        shown.contains("\n{\n  \"html_attributions\": [],\n  \"results\": [\n"),
        "{shown}"
    );
    let out = client(&["--pretty", &addr, "WHATSAT", "nobody", "10", "2"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "? WHATSAT nobody 10 2\n  reason: the server holds no record of client nobody: \
         WHATSAT needs a client it knows (from an IAMAT it received, or flooded to it)\n"
    );
}

#[test]
fn client_reads_lines_from_stdin_and_keeps_each_reply_whole() {
    let herd = Servers::start("client-stdin", SOLO);
    let addr = herd.client_addr("Solo");
    let lines = b"IAMAT kiwi +34.068930-118.445127 1520023934.918963997\n\
        \n\
        WHATSAT kiwi 10 2\n\
        IAMAT kiwi +34.068930-118.445127 1520023934.918963997\r\n";
    let out = client(&["--timeout", "2m", &addr], lines);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let got = text(&out.stdout);
    let at = got.lines().next().expect("an AT line").to_owned();
    // The IAMAT's AT line, the WHATSAT's whole reply (AT line, JSON, empty line), the
    // stale IAMAT's stored AT line: nothing for the blank line.
    let json_start = got.find("\n{").expect("the JSON") + 1;
    let json_end = got.find("}\n\n").expect("the end of the JSON") + 1;
    let json: serde_json::Value =
        serde_json::from_str(&got[json_start..json_end]).expect("valid JSON");
    assert_eq!(json["status"], "OK");
    assert_eq!(json["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        got,
        format!("{at}\n{at}\n{}\n{at}\n", &got[json_start..json_end + 1])
    );

    let out = client(&[&addr], b"FOO bar\nIAMAT a +1+1 1\n");
    assert_eq!(out.status.code(), Some(1), "some line got `?`");
    assert!(text(&out.stdout).starts_with("? FOO bar\nAT Solo "));
}

#[test]
fn client_that_cannot_connect_or_is_misused_exits_2() {
    let free = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr").to_string();
    drop(free);
    let out = client(&[&addr, "IAMAT", "a", "+1+1", "1"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("cannot connect to {addr}: connection refused")),
        "{}",
        text(&out.stderr)
    );
    let out = client(&["--timeout", "soon"], b"");
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
}

/// A tmux server of this test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            // CI runs with no terminal of its own; tmux's detached sessions need a TERM.
            .env("TERM", "xterm-256color")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        text(
            &self
                .cmd(&["capture-pane", "-p", "-t", "c", "-S", "-200"])
                .stdout,
        )
    }

    fn wait_screen(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn tmux_missing() -> bool {
    Command::new("tmux").arg("-V").output().is_err()
}

#[test]
fn client_is_interactive_in_a_terminal_with_history() {
    if tmux_missing() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "tmux is needed in CI for the interactive test"
        );
        eprintln!("SKIPPED: tmux is not installed, so no terminal to drive herd client in");
        return;
    }
    let herd = Servers::start("client-tty", SOLO);
    let history = herd.dir.path().join("history");
    let tmux = Tmux {
        socket: format!("herd-test-{}", std::process::id()),
    };
    let command = format!(
        "HERD_HISTORY={} {HERD} client --timeout 2m {}; echo exited=$?; sleep 30",
        history.display(),
        herd.client_addr("Solo")
    );
    let started = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "c",
        "-x",
        "160",
        "-y",
        "50",
        &command,
    ]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    let prompt = format!("{}> ", herd.client_addr("Solo"));
    // capture-pane drops trailing spaces.
    tmux.wait_screen("the prompt", |s| s.contains(prompt.trim_end()));

    tmux.cmd(&[
        "send-keys",
        "-t",
        "c",
        "IAMAT kiwi +34.068930-118.445127 1520023934.918963997",
        "Enter",
    ]);
    tmux.wait_screen("the AT line", |s| s.contains("AT Solo +"));
    tmux.cmd(&["send-keys", "-t", "c", "FOO bar", "Enter"]);
    let s = tmux.wait_screen("the ? reply and its reason", |s| {
        s.contains("reason: unknown command")
    });
    assert!(s.contains("? FOO bar\n  reason: unknown command"), "{s}");

    // Up twice brings back the IAMAT; sent again, it is stale and answered the same.
    tmux.cmd(&["send-keys", "-t", "c", "Up", "Up"]);
    tmux.wait_screen("the IAMAT from history", |s| {
        s.lines().last_non_empty().is_some_and(|l| {
            l == format!("{prompt}IAMAT kiwi +34.068930-118.445127 1520023934.918963997")
        })
    });
    tmux.cmd(&["send-keys", "-t", "c", "Enter"]);
    let s = tmux.wait_screen("the second AT line", |s| {
        s.matches("AT Solo +").count() == 2
    });
    let ats: Vec<&str> = s.lines().filter(|l| l.starts_with("AT Solo +")).collect();
    assert_eq!(
        ats[0], ats[1],
        "a stale IAMAT is answered with the stored line"
    );

    tmux.cmd(&["send-keys", "-t", "c", "WHATSAT kiwi 10 1", "Enter"]);
    tmux.wait_screen("the indented JSON", |s| s.contains("  \"status\": \"OK\""));

    // Ctrl-D on an empty line ends it, exit 1 (one line got `?`), history saved.
    tmux.cmd(&["send-keys", "-t", "c", "C-d"]);
    tmux.wait_screen("the exit", |s| s.contains("exited=1"));
    let saved = std::fs::read_to_string(&history).expect("history saved");
    assert!(
        saved.contains("FOO bar") && saved.contains("WHATSAT kiwi 10 1"),
        "{saved}"
    );
}

trait LastNonEmpty<'a> {
    fn last_non_empty(self) -> Option<&'a str>;
}

impl<'a, I: Iterator<Item = &'a str>> LastNonEmpty<'a> for I {
    fn last_non_empty(self) -> Option<&'a str> {
        self.filter(|l| !l.trim().is_empty()).last()
    }
}

const TRIO: &[(&str, &[&str])] = &[
    ("Alpha", &["Bravo", "Charlie"]),
    ("Bravo", &["Alpha", "Charlie"]),
    ("Charlie", &["Alpha", "Bravo"]),
];

fn status_json(herd: &Servers) -> (Option<i32>, serde_json::Value) {
    let out = herd.herd(&["status", "--json", "--interval", "200ms"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code(), v)
}

#[test]
fn status_and_topology_show_every_server_and_a_stopped_one_down() {
    let mut herd = Servers::start("status", TRIO);
    // Every link up, as status itself reports it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, v) = status_json(&herd);
        if code == Some(0) && v["all_well"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "never all well: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = client(
        &[
            &herd.client_addr("Alpha"),
            "IAMAT",
            "kiwi",
            "+34.068930-118.445127",
            "1520023934.918963997",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    wait_until(Duration::from_secs(20), "one record everywhere", || {
        let (_, v) = status_json(&herd);
        v["servers"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["records"] == 1))
    });

    let out = herd.herd(&["status", "--interval", "100ms"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for name in TRIO.iter().map(|(n, _)| n) {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
        assert!(
            row.contains(&herd.peer_addr(name))
                && row.contains("SERVING")
                && row.contains("2/2 up"),
            "{row}"
        );
    }

    let out = herd.herd(&["topology", "--interval", "0ms"]);
    assert_eq!(out.status.code(), Some(0), "all up: {}", text(&out.stderr));
    let dot = text(&out.stdout);
    assert!(dot.starts_with("graph herd {"), "{dot}");
    assert!(
        dot.contains(r#""Alpha" -- "Bravo" [label="Alpha: up\nBravo: up", color=darkgreen"#),
        "{dot}"
    );

    herd.stop("Charlie");
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let (code, v) = status_json(&herd);
        let links_seen_down = v["links"].as_array().is_some_and(|links| {
            links
                .iter()
                .filter(|l| l["between"].to_string().contains("Charlie"))
                .all(|l| l["up"] == false && l["states"]["Charlie"] == "?")
        });
        if code == Some(1) && links_seen_down {
            break v;
        }
        assert!(Instant::now() < deadline, "Charlie never shown down: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let charlie = v["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "Charlie"))
        .expect("Charlie's row");
    assert_eq!(charlie["serving"], false);
    assert!(
        charlie["health"]
            .as_str()
            .is_some_and(|h| h.contains("connection refused")),
        "{charlie}"
    );
    let ab = v["links"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|l| l["between"] == serde_json::json!(["Alpha", "Bravo"]))
        })
        .expect("the Alpha-Bravo link");
    assert_eq!(ab["up"], true, "the other link stays up");

    let out = herd.herd(&["status", "--interval", "0ms"]);
    let table = text(&out.stdout);
    assert!(
        table.contains("Charlie  ") && table.contains("DOWN (connection refused"),
        "{table}"
    );
    assert!(table.contains("? (server down)"), "{table}");

    let out = herd.herd(&["topology", "--interval", "0ms"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "Charlie down: {}",
        text(&out.stderr)
    );
    let dot = text(&out.stdout);
    assert!(
        dot.contains(r#""Alpha" -- "Charlie" [label="Alpha: "#),
        "{dot}"
    );
    assert!(
        dot.contains(r#"\nCharlie: ?", color=red, style=dashed"#),
        "{dot}"
    );
    assert!(
        dot.contains(r#""Charlie" [label="Charlie\n"#) && dot.contains("mistyrose"),
        "{dot}"
    );

    render_with_graphviz(&herd, herd.dir.path());
}

/// Renders the topology to SVG through Graphviz's `dot` when it is installed
/// (tests/run.sh installs it; in CI its absence fails the test).
fn render_with_graphviz(herd: &Servers, dir: &Path) {
    if Command::new("dot").arg("-V").output().is_err() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "Graphviz's dot is needed in CI (tests/run.sh installs graphviz)"
        );
        eprintln!("SKIPPED rendering: Graphviz's dot is not installed");
        return;
    }
    let svg = dir.join("herd.svg");
    let out = herd.herd(&[
        "topology",
        "--interval",
        "0ms",
        "--out",
        svg.to_str().expect("utf-8 path"),
    ]);
    // Drawn (the file is there), with Charlie down: exit 1, as `herd status`.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let drawn = std::fs::read_to_string(&svg).expect("the SVG");
    assert!(
        drawn.contains("<svg") && drawn.contains("Charlie") && drawn.contains("Alpha: up"),
        "{drawn}"
    );
}

#[test]
fn health_names_a_closed_port_and_a_client_port() {
    let herd = Servers::start("health", SOLO);
    let ok = Command::new(HERD)
        .args(["health", "--addr", &herd.peer_addr("Solo")])
        .output()
        .expect("herd health");
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(text(&ok.stdout), "SERVING\n");

    let wrong = Command::new(HERD)
        .args(["health", "--addr", &herd.client_addr("Solo")])
        .output()
        .expect("herd health");
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong.stderr).contains("not a herd peer port: this looks like a client port"),
        "{}",
        text(&wrong.stderr)
    );

    let free = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr").to_string();
    drop(free);
    let closed = Command::new(HERD)
        .args(["health", "--addr", &addr])
        .output()
        .expect("herd health");
    assert_eq!(closed.status.code(), Some(1));
    assert_eq!(
        text(&closed.stderr),
        format!("herd: health check failed: {addr}: connection refused (nothing listens there)\n")
    );
}

#[test]
fn a_normal_start_says_herd_ready_once_per_server_and_nothing_alarming() {
    let herd = Servers::start("ready", TRIO);
    for name in ["Alpha", "Bravo", "Charlie"] {
        let path = herd.dir.path().join(format!("{name}.stderr"));
        wait_until(Duration::from_secs(20), &format!("{name} ready"), || {
            std::fs::read_to_string(&path).is_ok_and(|s| s.contains("herd ready"))
        });
    }
    // Let the last links settle before reading what was said.
    wait_until(Duration::from_secs(20), "all links up", || {
        herd.herd(&["status", "--interval", "0ms"]).status.code() == Some(0)
    });
    for name in ["Alpha", "Bravo", "Charlie"] {
        let stderr = std::fs::read_to_string(herd.dir.path().join(format!("{name}.stderr")))
            .expect("stderr");
        assert_eq!(stderr.matches("herd ready").count(), 1, "{stderr}");
        for alarming in [" WARN ", " ERROR ", "replaced", "link down"] {
            assert!(
                !stderr.contains(alarming),
                "{name} said {alarming:?} at a normal start:\n{stderr}"
            );
        }
    }
}

#[test]
fn an_invalid_rust_log_is_reported() {
    let out = Command::new(HERD)
        .args(["up"])
        .env("RUST_LOG", "herd=loud")
        .output()
        .expect("herd up");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("RUST_LOG=\"herd=loud\" is not a valid log filter"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_lists_the_environment_and_version_names_the_commit() {
    let help = text(
        &Command::new(HERD)
            .arg("--help")
            .output()
            .expect("help")
            .stdout,
    );
    for var in [
        "HERD_CONFIG",
        "RUST_LOG",
        "HERD_PLACES",
        "GOOGLE_PLACES_API_KEY",
        "HERD_LOG_FORMAT",
    ] {
        assert!(help.contains(var), "--help does not name {var}:\n{help}");
    }
    let version = text(
        &Command::new(HERD)
            .arg("--version")
            .output()
            .expect("version")
            .stdout,
    );
    let expected = format!("herd {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(
        version.starts_with(&expected) && version.trim_end().ends_with(')'),
        "{version}"
    );
}
