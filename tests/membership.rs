//! Live membership with real processes: a sixth server joins a running herd of five
//! (the herd file edited, SIGHUP to its two neighbours, the same processes before
//! and after), floods both ways and is caught up; the servers that were not reloaded
//! refuse its records without cutting any link, and take them once reloaded; it is
//! removed again, its records staying. `herd reload` refuses an invalid file and a
//! change of the process's own ports, and is guarded by the herd secret; SIGHUP to
//! `herd up` reloads every server of the process (PROTOCOL.md, "Live membership").

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::Duration,
};

use common::{TempDir, iamat, reserve_ports, wait_for};
use herd::proto::{FloorsRequest, LinksRequest, LookupRequest, inspect_client::InspectClient};

const HERD: &str = env!("CARGO_BIN_EXE_herd");
const WAIT: Duration = Duration::from_secs(30);

/// A herd file: each server with its neighbours, on `ports` (client, peer pairs).
fn herd_file(servers: &[(&str, &[&str])], ports: &[u16], tables: &str) -> String {
    let mut text = format!("[places]\nprovider = \"offline\"\n{tables}\n");
    for (i, (name, neighbours)) in servers.iter().enumerate() {
        let list: Vec<String> = neighbours.iter().map(|n| format!("{n:?}")).collect();
        text.push_str(&format!(
            "\n[[server]]\nname = {name:?}\nhost = \"127.0.0.1\"\nclient_port = {}\npeer_port = {}\nneighbours = [{}]\n",
            ports[2 * i],
            ports[2 * i + 1],
            list.join(", ")
        ));
    }
    text
}

/// Replaces the herd file in one step, as an editor that renames does.
fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the herd file");
    std::fs::rename(&tmp, path).expect("rename the herd file");
}

/// Real `herd` processes, killed when dropped.
struct Procs {
    dir: TempDir,
    config: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn new(label: &str, text: &str) -> Procs {
        let dir = TempDir::new(label);
        let config = dir.path().join("herd.toml");
        write_file(&config, text);
        Procs {
            dir,
            config,
            children: Vec::new(),
        }
    }

    /// `herd ARGS --config FILE --log-dir DIR`, its output in DIR/LABEL.stderr.
    fn spawn(&mut self, label: &str, args: &[&str]) {
        let stderr = std::fs::File::create(self.dir.path().join(format!("{label}.stderr")))
            .expect("stderr file");
        let child = common::herd_command(
            HERD,
            args,
            &self.config,
            &self.dir.path().join("logs"),
            stderr,
        )
        .spawn()
        .expect("spawn herd");
        self.children.push((label.to_owned(), child));
    }

    fn serve(&mut self, name: &str) {
        self.spawn(name, &["serve", name]);
    }

    fn child(&mut self, label: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(l, _)| l == label)
            .expect("a process of that label")
            .1
    }

    fn pid(&mut self, label: &str) -> u32 {
        self.child(label).id()
    }

    /// Sends `signal` to `label`'s process, which must still be running.
    fn signal(&mut self, label: &str, signal: &str) {
        assert!(
            self.child(label).try_wait().expect("try_wait").is_none(),
            "{label} exited"
        );
        let pid = self.pid(label);
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {label}");
    }

    fn running(&mut self, label: &str) -> bool {
        self.child(label).try_wait().expect("try_wait").is_none()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// `herd reload ARGS`, with this herd's file for its secret.
    fn reload(&self, args: &[&str]) -> Output {
        Command::new(HERD)
            .arg("reload")
            .args(args)
            .env_remove("HERD_CONFIG")
            .env_remove("HERD_SECRET_FILE")
            .output()
            .expect("run herd reload")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn inspect(peer: SocketAddr) -> Option<InspectClient<tonic::transport::Channel>> {
    InspectClient::connect(format!("http://{peer}")).await.ok()
}

/// The server's links as it reports them: (neighbour, state); with the herd
/// secret when one is given.
async fn links_with(peer: SocketAddr, secret: Option<&str>) -> Vec<(String, String)> {
    let Some(mut c) = inspect(peer).await else {
        return Vec::new();
    };
    let mut req = tonic::Request::new(LinksRequest {});
    if let Some(s) = secret {
        let value = format!("Bearer {s}").parse().expect("a metadata value");
        req.metadata_mut().insert("authorization", value);
    }
    match c.links(req).await {
        Ok(r) => r
            .into_inner()
            .links
            .into_iter()
            .map(|l| (l.neighbour, l.state))
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn links(peer: SocketAddr) -> Vec<(String, String)> {
    links_with(peer, None).await
}

async fn wait_links(peer: SocketAddr, want: &[&str]) {
    wait_links_with(peer, want, None).await;
}

async fn wait_links_with(peer: SocketAddr, want: &[&str], secret: Option<&str>) {
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|n| (n.to_string(), "up".to_owned()))
        .collect();
    want.sort();
    wait_for(WAIT, &format!("{peer}'s links {want:?}"), || async {
        let mut got = links_with(peer, secret).await;
        got.sort();
        (got == want).then_some(())
    })
    .await;
}

/// The AT line `peer` holds for `client`, if any.
async fn lookup(peer: SocketAddr, client: &str) -> Option<String> {
    let mut c = inspect(peer).await?;
    let r = c
        .lookup(LookupRequest {
            client: client.to_owned(),
            client_id: Default::default(),
        })
        .await
        .ok()?
        .into_inner();
    r.found.then_some(r.at_line)
}

async fn wait_known(peer: SocketAddr, client: &str) {
    wait_for(WAIT, &format!("{client} known at {peer}"), || async {
        lookup(peer, client).await.map(|_| ())
    })
    .await;
}

async fn records(peer: SocketAddr) -> u64 {
    let mut c = inspect(peer).await.expect("inspect");
    c.floors(FloorsRequest {})
        .await
        .expect("floors")
        .into_inner()
        .records
}

async fn metrics(peer: SocketAddr) -> String {
    common::scrape_metrics(peer).await
}

/// The value of the series `series` (its whole name and labels) in `text`.
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Sends one IAMAT to `client`'s port, expecting it stored there.
async fn send_iamat(client: SocketAddr, id: &str) {
    let mut c = common::Client::connect(client).await;
    let reply = c
        .ask(iamat(
            id.as_bytes(),
            "+34.068930-118.445127",
            "1520023934.5",
        ))
        .await;
    assert!(reply.starts_with(b"AT "), "{}", common::show(&reply));
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

const FIVE: &[(&str, &[&str])] = &[
    ("Goloman", &["Hands", "Holiday", "Wilkes"]),
    ("Hands", &["Goloman", "Wilkes"]),
    ("Holiday", &["Goloman", "Welsh", "Wilkes"]),
    ("Welsh", &["Holiday"]),
    ("Wilkes", &["Goloman", "Hands", "Holiday"]),
];

const SIX: &[(&str, &[&str])] = &[
    ("Goloman", &["Hands", "Holiday", "Wilkes"]),
    ("Hands", &["Goloman", "Wilkes", "Zed"]),
    ("Holiday", &["Goloman", "Welsh", "Wilkes"]),
    ("Welsh", &["Holiday", "Zed"]),
    ("Wilkes", &["Goloman", "Hands", "Holiday"]),
    ("Zed", &["Hands", "Welsh"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_server_joins_five_running_ones_floods_both_ways_and_leaves_again() {
    let ports = reserve_ports(12);
    let peer = |i: usize| addr(ports[2 * i + 1]);
    let client = |i: usize| addr(ports[2 * i]);
    let (goloman, hands, holiday, welsh, wilkes, zed) = (0, 1, 2, 3, 4, 5);
    let mut herd = Procs::new("join", &herd_file(FIVE, &ports, ""));
    for (name, _) in FIVE {
        herd.serve(name);
    }
    for (i, (_, neighbours)) in FIVE.iter().enumerate() {
        wait_links(peer(i), neighbours).await;
    }
    let pids: Vec<u32> = FIVE.iter().map(|(n, _)| herd.pid(n)).collect();
    send_iamat(client(welsh), "before-zed").await;
    for i in 0..5 {
        wait_known(peer(i), "before-zed").await;
    }

    // Zed joins: the file edited, Zed started with it, SIGHUP to its two neighbours.
    write_file(&herd.config, &herd_file(SIX, &ports, ""));
    herd.serve("Zed");
    herd.signal("Hands", "HUP");
    herd.signal("Welsh", "HUP");
    wait_links(peer(zed), &["Hands", "Welsh"]).await;
    wait_links(peer(hands), &["Goloman", "Wilkes", "Zed"]).await;
    wait_links(peer(welsh), &["Holiday", "Zed"]).await;
    // The catch-up brings it the whole table.
    wait_known(peer(zed), "before-zed").await;
    assert!(herd.log("Hands").contains("herd file reloaded"));
    assert!(
        herd.log("Hands").contains("added=Zed"),
        "{}",
        herd.log("Hands")
    );

    // The herd to Zed: from a server that is not its neighbour and was not reloaded.
    send_iamat(client(goloman), "from-goloman").await;
    wait_known(peer(zed), "from-goloman").await;

    // Zed to the herd: its reloaded neighbours take its records; the three that were
    // not reloaded do not know Zed and refuse them, but cut no link.
    send_iamat(client(zed), "from-zed").await;
    wait_known(peer(hands), "from-zed").await;
    wait_known(peer(welsh), "from-zed").await;
    wait_for(WAIT, "a refusal of Zed's record counted", || async {
        let mut refused = 0;
        for i in [goloman, holiday, wilkes] {
            let m = metrics(peer(i)).await;
            let name = FIVE[i].0;
            refused += metric(
                &m,
                &format!(r#"herd_backbone_unknown_origin_updates_total{{server="{name}"}}"#),
            )
            .unwrap_or(0);
        }
        (refused > 0).then_some(())
    })
    .await;
    for i in [goloman, holiday, wilkes] {
        assert_eq!(lookup(peer(i), "from-zed").await, None, "{}", FIVE[i].0);
        wait_links(peer(i), FIVE[i].1).await;
    }

    // Once reloaded, they take Zed's records: the one they refused by a catch-up,
    // new ones live.
    for name in ["Goloman", "Holiday", "Wilkes"] {
        herd.signal(name, "HUP");
    }
    for i in 0..5 {
        wait_known(peer(i), "from-zed").await;
    }
    send_iamat(client(zed), "from-zed-2").await;
    for i in 0..5 {
        wait_known(peer(i), "from-zed-2").await;
    }
    let hands_metrics = metrics(peer(hands)).await;
    assert!(
        hands_metrics.contains(r#"neighbour="Zed""#),
        "Hands has series for its new neighbour"
    );
    assert!(
        hands_metrics.contains(r#"herd_reloads_total{server="Hands",result="applied"} 1"#),
        "{hands_metrics}"
    );

    // Zed is removed again: its links are closed, its records stay.
    write_file(&herd.config, &herd_file(FIVE, &ports, ""));
    for (name, _) in FIVE {
        herd.signal(name, "HUP");
    }
    wait_links(peer(hands), &["Goloman", "Wilkes"]).await;
    wait_links(peer(welsh), &["Holiday"]).await;
    wait_for(WAIT, "Zed's links down", || async {
        links(peer(zed))
            .await
            .iter()
            .all(|(_, state)| state != "up")
            .then_some(())
    })
    .await;
    assert!(
        !metrics(peer(hands)).await.contains(r#"neighbour="Zed""#),
        "Hands dropped its series for Zed"
    );
    for i in 0..5 {
        assert!(lookup(peer(i), "from-zed-2").await.is_some());
    }
    send_iamat(client(welsh), "after-zed").await;
    for i in 0..5 {
        wait_known(peer(i), "after-zed").await;
    }
    tokio::time::sleep(common::FAIR_CHANCE).await;
    assert_eq!(lookup(peer(zed), "after-zed").await, None);
    // Zed keeps dialling and is refused as no neighbour.
    wait_for(WAIT, "Zed refused as no neighbour", || async {
        herd.log("Zed")
            .contains("Zed is not a neighbour of")
            .then_some(())
    })
    .await;

    // Every reload kept its process.
    for (i, (name, _)) in FIVE.iter().enumerate() {
        assert!(herd.running(name), "{name} is running");
        assert_eq!(herd.pid(name), pids[i], "{name}");
    }
    assert!(records(peer(goloman)).await >= 5);
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_up_reloads_every_server_on_sighup_and_herd_reload_refuses_what_cannot_apply() {
    let dir = TempDir::new("secret-store");
    let secret = dir.path().join("secret");
    const SECRET: &str = "a-herd-secret-of-enough-bytes";
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write the secret");
    let s = Some(SECRET);
    let auth = format!("[auth]\nsecret_file = {:?}\n", secret.display().to_string());
    let ports = reserve_ports(6);
    let peer = |i: usize| addr(ports[2 * i + 1]);
    const TWO: &[(&str, &[&str])] = &[("A", &["B"]), ("B", &["A"])];
    const THREE: &[(&str, &[&str])] = &[("A", &["B", "C"]), ("B", &["A", "C"]), ("C", &["A", "B"])];
    let mut herd = Procs::new("up-reload", &herd_file(TWO, &ports, &auth));
    herd.spawn("up", &["up"]);
    // The tool reads its own copy for the secret: the server's may be made invalid.
    let ask_file = herd.dir.path().join("ask.toml");
    write_file(&ask_file, &herd_file(TWO, &ports, &auth));
    let config = ask_file.display().to_string();
    // A reload that changes nothing, through the RPC with the secret.
    let ask = |herd: &Procs, args: &[&str]| {
        let mut all = vec!["--config", &config, "--server", "A"];
        all.extend_from_slice(args);
        herd.reload(&all)
    };
    let out = wait_for(WAIT, "herd up answering herd reload", || async {
        let out = ask(&herd, &[]);
        out.status.success().then_some(out)
    })
    .await;
    assert!(text(&out).starts_with("unchanged\n"), "{}", text(&out));
    // grpcurl calls it too (reflection describes Admin), with the secret only.
    let grpcurl = std::env::var("GRPCURL").unwrap_or_else(|_| {
        let local = concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/bin/grpcurl");
        assert!(
            Path::new(local).exists(),
            "grpcurl not found: run tests/run.sh, which installs it, or set GRPCURL"
        );
        local.to_owned()
    });
    let call = |auth: Option<&str>| {
        let mut cmd = Command::new(&grpcurl);
        cmd.arg("-plaintext");
        if let Some(secret) = auth {
            cmd.args(["-H", &format!("authorization: Bearer {secret}")]);
        }
        cmd.args(["-d", "{}", &peer(0).to_string(), "herd.v1.Admin/Reload"])
            .output()
            .expect("run grpcurl")
    };
    let out = call(Some(SECRET));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"unchanged\""), "{}", text(&out));
    let out = call(None);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Unauthenticated"), "{}", text(&out));

    // Without the secret, the call is refused.
    let bare = herd.dir.path().join("bare.toml");
    write_file(&bare, &herd_file(TWO, &ports, ""));
    let out = herd.reload(&[
        "--config",
        &bare.display().to_string(),
        "--addr",
        &peer(0).to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("secret"), "{}", text(&out));

    // An invalid file: refused, with why; the herd untouched.
    write_file(&herd.config, "[[server]]\nname = \"A\"\n");
    let out = ask(&herd, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("reload refused"), "{}", text(&out));
    // A's own peer port moved: needs a restart.
    let mut moved = ports.clone();
    moved[1] = reserve_ports(1)[0];
    write_file(&herd.config, &herd_file(THREE, &moved, &auth));
    let out = ask(&herd, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("peer_port changed") && text(&out).contains("restart"),
        "{}",
        text(&out)
    );
    // A change of the secret too.
    let other = herd.dir.path().join("other-secret");
    std::fs::write(&other, "another-secret-of-enough-bytes\n").expect("write");
    let other_auth = format!("[auth]\nsecret_file = {:?}\n", other.display().to_string());
    write_file(&herd.config, &herd_file(TWO, &ports, &other_auth));
    let out = ask(&herd, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("[auth]"), "{}", text(&out));
    wait_links_with(peer(0), &["B"], s).await;
    assert!(herd.log("A").contains("herd file reload refused"));
    assert!(herd.log("B").contains("herd file reload refused"));

    // C joins (its own process); SIGHUP to `herd up` reloads both A and B.
    write_file(&herd.config, &herd_file(THREE, &ports, &auth));
    herd.serve("C");
    let pid = herd.pid("up");
    herd.signal("up", "HUP");
    wait_links_with(peer(0), &["B", "C"], s).await;
    wait_links_with(peer(1), &["A", "C"], s).await;
    wait_links_with(peer(2), &["A", "B"], s).await;
    assert!(herd.running("up"));
    assert_eq!(herd.pid("up"), pid);
    for name in ["A", "B"] {
        let log = herd.log(name);
        assert!(log.contains("added=C"), "{name}: {log}");
        assert!(
            log.contains("log file reopened"),
            "SIGHUP still reopens the logs"
        );
    }
}
