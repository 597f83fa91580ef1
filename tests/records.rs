//! The cap on client records (`backbone.max_record_bytes`), over five real `herd
//! serve` processes with data dirs: one server is filled far past the cap, every
//! server evicts the same records (the oldest by client time) and ends with the
//! same table digest, a well-behaved client is answered all along, an evicted
//! record sent again is not stored again, and restarts (one server, then all five)
//! bring back no evicted record.

mod common;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use common::{
    Client, DEFAULT_TOPOLOGY, ServerSpec, TempDir, herd_toml_with, now_nanos, reserve_ports,
    time_field, wait_for,
};

/// The smallest cap the herd file accepts: about 900 records of the lines below.
const CAP: u64 = 128 << 10;

/// Clients sent to Goloman: far past the cap.
const FILL: usize = 4000;

const HERD: &str = env!("CARGO_BIN_EXE_herd");

struct Procs {
    root: TempDir,
    names: Vec<String>,
    ports: Vec<u16>,
    children: BTreeMap<String, Child>,
    starts: BTreeMap<String, usize>,
}

impl Procs {
    fn new(data: &str) -> Procs {
        let root = TempDir::new("records");
        let ports = reserve_ports(2 * DEFAULT_TOPOLOGY.len());
        let specs: Vec<ServerSpec<'_>> = DEFAULT_TOPOLOGY
            .iter()
            .enumerate()
            .map(|(i, (name, neighbours))| ServerSpec {
                name,
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                neighbours,
            })
            .collect();
        let toml = herd_toml_with(
            &specs,
            &format!(
                "[backbone]\nmax_record_bytes = {CAP}\nanti_entropy_interval_ms = 500\n{data}"
            ),
        );
        std::fs::write(root.path().join("herd.toml"), toml).expect("write the herd file");
        Procs {
            root,
            names: DEFAULT_TOPOLOGY
                .iter()
                .map(|(n, _)| n.to_string())
                .collect(),
            ports,
            children: BTreeMap::new(),
            starts: BTreeMap::new(),
        }
    }

    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).expect("a server")
    }

    fn client_port(&self, name: &str) -> u16 {
        self.ports[2 * self.index(name)]
    }

    fn peer_port(&self, name: &str) -> u16 {
        self.ports[2 * self.index(name) + 1]
    }

    fn stderr(&self, name: &str) -> String {
        let n = self.starts.get(name).copied().unwrap_or(0);
        std::fs::read_to_string(self.root.path().join(format!("{name}.stderr.{n}")))
            .unwrap_or_default()
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.root.path().join("data").join(name)
    }

    fn start(&mut self, name: &str) {
        let n = self.starts.entry(name.to_owned()).or_default();
        *n += 1;
        let stderr = std::fs::File::create(self.root.path().join(format!("{name}.stderr.{n}")))
            .expect("stderr file");
        let child = common::herd_command(
            HERD,
            &["serve", name],
            &self.root.path().join("herd.toml"),
            &self.root.path().join("logs"),
            stderr,
        )
        .arg("--data-dir")
        .arg(self.data_dir(name))
        .spawn()
        .expect("spawn herd");
        self.children.insert(name.to_owned(), child);
    }

    fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.children.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn ready(&self, name: &str) {
        wait_for(
            Duration::from_secs(30),
            &format!("{name} to be ready"),
            || async { self.stderr(name).contains("herd ready").then_some(()) },
        )
        .await;
    }

    async fn client(&self, name: &str) -> Client {
        Client::connect(([127, 0, 0, 1], self.client_port(name)).into()).await
    }

    async fn known(&self, name: &str, id: &str) -> Option<String> {
        let mut c = self.client(name).await;
        let reply = c.whatsat(format!("WHATSAT {id} 1 0\n")).await;
        if reply.starts_with(b"? ") {
            return None;
        }
        let end = reply.iter().position(|&b| b == b'\n').expect("lines");
        Some(String::from_utf8_lossy(&reply[..end]).into_owned())
    }

    /// (records, digest) from the Inspect Floors RPC, through a real grpcurl.
    fn table(&self, name: &str) -> Option<(u64, String)> {
        let out = grpcurl()
            .args(["-plaintext", "-max-time", "5", "-d", "{}"])
            .arg(format!("127.0.0.1:{}", self.peer_port(name)))
            .arg("herd.v1.Inspect/Floors")
            .output()
            .expect("run grpcurl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let records = v["records"].as_str()?.parse().ok()?;
        Some((records, v["digest"].as_str()?.to_owned()))
    }

    /// Waits until all five tables are equal, and returns them.
    async fn converged(&self) -> (u64, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = self
                .names
                .iter()
                .map(|n| (n.clone(), self.table(n)))
                .collect::<BTreeMap<_, _>>();
            let mut distinct: Vec<_> = last.values().cloned().collect();
            distinct.dedup();
            if let [Some(t)] = &distinct[..] {
                return t.clone();
            }
            assert!(Instant::now() < deadline, "tables differ: {last:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn metric(&self, name: &str, series: &str) -> f64 {
        let text = common::scrape_metrics(([127, 0, 0, 1], self.peer_port(name)).into()).await;
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(['{', ' ']))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let names: Vec<String> = self.children.keys().cloned().collect();
        for n in names {
            self.kill(&n);
        }
    }
}

fn grpcurl() -> Command {
    Command::new(std::env::var("GRPCURL").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/bin/grpcurl").to_owned()
    }))
}

/// Client `i`'s IAMAT: times a millisecond apart from `base`, so the oldest is 0.
fn fill_line(i: usize, base: i128) -> String {
    format!(
        "IAMAT fill-{i:05} +34.068930-118.445127 {}\n",
        time_field(base + i as i128 * 1_000_000)
    )
}

/// A client that behaves: IAMAT then WHATSAT at Hands, each answered within a
/// second, as long as `run` is running. Returns its slowest answer.
async fn well_behaved(p: &Procs, until: Instant) -> Duration {
    let mut c = p.client("Hands").await;
    let mut slowest = Duration::ZERO;
    while Instant::now() < until {
        let started = Instant::now();
        let at = c
            .ask(format!(
                "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 {}\n",
                time_field(now_nanos())
            ))
            .await;
        assert!(at.starts_with(b"AT Hands "), "{}", common::show(&at));
        let reply = c.whatsat("WHATSAT kiwi.cs.ucla.edu 1 0\n").await;
        assert!(reply.starts_with(b"AT Hands "), "{}", common::show(&reply));
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slowest
}

/// Restarts that read the journal: every evicted record is in it, and so is the
/// watermark that evicts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_every_server_evicts_the_same_and_journal_restarts_bring_none_back() {
    past_the_cap("", false).await;
}

/// Restarts that read snapshots (compactions early and often): a snapshot holds
/// the watermark, so that an evicted record sent after a restart of every server
/// is still not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_every_server_evicts_the_same_and_snapshot_restarts_bring_none_back() {
    past_the_cap(
        "[data]\nsegment_bytes = 65536\ncompact_min_bytes = 65536\n",
        true,
    )
    .await;
}

async fn past_the_cap(data: &str, compactions: bool) {
    let mut p = Procs::new(data);
    for n in p.names.clone() {
        p.start(&n);
    }
    for n in &p.names {
        p.ready(n).await;
    }
    // Every link up: a probe stored at Goloman reaches every server.
    let mut probe = p.client("Goloman").await;
    let at = probe
        .ask(format!("IAMAT probe +1+1 {}\n", time_field(now_nanos())))
        .await;
    assert!(at.starts_with(b"AT Goloman "), "{}", common::show(&at));
    for n in &p.names {
        wait_for(
            Duration::from_secs(30),
            &format!("the probe at {n}"),
            || async { p.known(n, "probe").await.map(drop) },
        )
        .await;
    }

    // Old client times (a day ago), so that the well-behaved client is the newest.
    let base = now_nanos() - 86_400 * 1_000_000_000;
    let filler = async {
        let mut c = p.client("Goloman").await;
        for chunk in (0..FILL).collect::<Vec<_>>().chunks(100) {
            let mut out = String::new();
            for &i in chunk {
                out.push_str(&fill_line(i, base));
            }
            c.send(out).await;
            for _ in chunk {
                let line = c.line().await;
                assert!(line.starts_with(b"AT Goloman "), "{}", common::show(&line));
            }
        }
    };
    let (slowest, ()) = tokio::join!(
        well_behaved(&p, Instant::now() + Duration::from_secs(4)),
        filler
    );
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer {slowest:?}"
    );

    let (records, digest) = p.converged().await;
    assert!(
        records > 100 && (records as usize) < FILL / 2,
        "{records} records held"
    );
    for n in &p.names {
        let evicted = p.metric(n, "herd_records_evicted_total").await;
        let bytes = p.metric(n, "herd_record_bytes").await;
        assert!(evicted > 0.0, "{n} evicted nothing");
        assert!(bytes <= CAP as f64, "{n} holds {bytes} bytes");
        // The oldest are gone, the newest and the well-behaved client are held.
        assert_eq!(p.known(n, "fill-00000").await, None, "{n}");
        assert!(
            p.known(n, &format!("fill-{:05}", FILL - 1)).await.is_some(),
            "{n}"
        );
        assert!(p.known(n, "kiwi.cs.ucla.edu").await.is_some(), "{n}");
    }

    // An evicted record sent again (to another server) is answered but not stored.
    let mut c = p.client("Holiday").await;
    let again = c.ask(fill_line(0, base)).await;
    assert!(
        again.starts_with(b"AT Holiday "),
        "{}",
        common::show(&again)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in &p.names {
        assert_eq!(p.known(n, "fill-00000").await, None, "{n}");
    }
    assert_eq!(p.converged().await, (records, digest.clone()));

    for n in &p.names {
        if compactions {
            wait_for(
                Duration::from_secs(20),
                &format!("a compaction at {n}"),
                || async { (p.metric(n, "herd_data_compactions_total").await > 0.0).then_some(()) },
            )
            .await;
        } else {
            assert_eq!(p.metric(n, "herd_data_compactions_total").await, 0.0, "{n}");
        }
    }

    // A SIGKILLed server restores its data dir (every evicted record is in its
    // journal) and evicts them again: the same table. (Its journal is written
    // within a second of the last update: SIGKILL loses no written entry.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.kill("Welsh");
    p.start("Welsh");
    p.ready("Welsh").await;
    assert_eq!(p.table("Welsh"), Some((records, digest.clone())));
    assert_eq!(p.known("Welsh", "fill-00000").await, None);
    // And all five at once.
    for n in p.names.clone() {
        p.kill(&n);
    }
    for n in p.names.clone() {
        p.start(&n);
    }
    for n in &p.names {
        p.ready(n).await;
        assert_eq!(
            p.table(n),
            Some((records, digest.clone())),
            "{n} after a restart"
        );
    }
    assert_eq!(p.converged().await, (records, digest.clone()));
    // Every server restored its watermark: the oldest record, sent again to each,
    // is stored by none.
    for n in &p.names {
        let again = p.client(n).await.ask(fill_line(0, base)).await;
        assert!(again.starts_with(b"AT "), "{}", common::show(&again));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in &p.names {
        assert_eq!(p.known(n, "fill-00000").await, None, "{n}");
    }
    assert_eq!(p.converged().await, (records, digest));
}
