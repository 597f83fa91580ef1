//! Durable servers, as real `herd serve` processes with real data dirs: SIGKILL one
//! server and then all five under a steady load, for each fsync policy, and every
//! acknowledged IAMAT is back on every server; a torn tail and a flipped byte are
//! detected, reported (file, offset, bytes) and survived; without a data dir a
//! restart forgets, as before; a full disk (a small tmpfs, filled up) turns the
//! server NOT_SERVING and its IAMATs `?`, never answered as stored.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Client, DEFAULT_TOPOLOGY, TempDir, herd_file, now_nanos, reserve_ports, show, time_field,
    wait_for,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// A herd of `herd serve` processes, one per server of `topology`, each with its
/// data dir `<root>/data/<NAME>` (or none).
struct Procs {
    root: TempDir,
    data_root: PathBuf,
    names: Vec<String>,
    ports: Vec<u16>,
    children: BTreeMap<String, Child>,
    starts: BTreeMap<String, usize>,
    extra: Vec<String>,
    durable: bool,
}

impl Procs {
    fn new(label: &str, topology: common::Topology<'_>, durable: bool, extra: &[&str]) -> Procs {
        let root = TempDir::new(label);
        let ports = reserve_ports(2 * topology.len());
        std::fs::write(root.path().join("herd.toml"), herd_file(topology, &ports))
            .expect("write the herd file");
        Procs {
            data_root: root.path().join("data"),
            root,
            names: topology.iter().map(|(n, _)| n.to_string()).collect(),
            ports,
            children: BTreeMap::new(),
            starts: BTreeMap::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            durable,
        }
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.data_root.join(name)
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

    /// The stderr of start `n` (1-based) of `name`.
    fn stderr(&self, name: &str, n: usize) -> String {
        std::fs::read_to_string(self.root.path().join(format!("{name}.stderr.{n}")))
            .unwrap_or_default()
    }

    fn start(&mut self, name: &str) {
        let n = self.starts.entry(name.to_owned()).or_default();
        *n += 1;
        let n = *n;
        let stderr = std::fs::File::create(self.root.path().join(format!("{name}.stderr.{n}")))
            .expect("stderr file");
        let mut cmd = Command::new(HERD);
        cmd.arg("serve")
            .arg(name)
            .arg("--config")
            .arg(self.root.path().join("herd.toml"))
            .arg("--log-dir")
            .arg(self.root.path().join("logs"))
            .args(&self.extra)
            .env_remove("HERD_CONFIG")
            .env_remove("HERD_DATA_DIR")
            .env_remove("HERD_FSYNC")
            .env_remove("HERD_PLACES")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if self.durable {
            cmd.arg("--data-dir").arg(self.data_dir(name));
        }
        let child = cmd.spawn().expect("spawn herd");
        self.children.insert(name.to_owned(), child);
    }

    fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.children.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn term(&mut self, name: &str) {
        if let Some(mut c) = self.children.remove(name) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Waits until `name` says `herd ready` (its data dir restored, its listeners
    /// up: they are bound before the restore, so a connection alone says little).
    async fn ready(&self, name: &str) {
        let n = self.starts.get(name).copied().unwrap_or(0);
        wait_for(
            Duration::from_secs(30),
            &format!("{name} to be ready"),
            || async { self.stderr(name, n).contains("herd ready").then_some(()) },
        )
        .await;
        // The herd file's ports are reserved by closing listeners: make sure it is ours.
        assert!(
            self.children.contains_key(name),
            "{name} is not running; stderr:\n{}",
            self.stderr(name, n)
        );
    }

    /// The AT line `name` holds for `id`, or None (`?`).
    async fn known(&self, name: &str, id: &str) -> Option<String> {
        let addr = ([127, 0, 0, 1], self.client_port(name)).into();
        let mut c = Client::connect(addr).await;
        let reply = c.whatsat(format!("WHATSAT {id} 1 0\n")).await;
        if reply.starts_with(b"? ") {
            return None;
        }
        let end = reply.iter().position(|&b| b == b'\n').expect("lines");
        Some(String::from_utf8_lossy(&reply[..end]).into_owned())
    }

    async fn metrics(&self, name: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.peer_port(name)))
            .await
            .expect("connect to the peer port");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n")
            .await
            .expect("ask for metrics");
        let mut body = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut body))
            .await
            .expect("metrics in time")
            .expect("read metrics");
        String::from_utf8_lossy(&body).into_owned()
    }

    fn health(&self, name: &str) -> (bool, String) {
        let out = Command::new(HERD)
            .arg("health")
            .arg("--addr")
            .arg(format!("127.0.0.1:{}", self.peer_port(name)))
            .output()
            .expect("herd health");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
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

/// The value of metric `name` (a line starting with it) in a scrape.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A steady load: one connection per target, IAMATs of fresh clients, four in
/// flight; every reply that is an AT line is acknowledged and kept.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(label: &str, ports: Vec<u16>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tasks = ports
            .into_iter()
            .map(|port| {
                let (stop, acked, label) = (stop.clone(), acked.clone(), label.to_owned());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let mut buf = Vec::new();
                        'conn: while !stop.load(Ordering::Relaxed) {
                            let mut ids = Vec::new();
                            let mut out = Vec::new();
                            for _ in 0..4 {
                                let id =
                                    format!("{label}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
                                out.extend_from_slice(
                                    format!(
                                        "IAMAT {id} +34.068930-118.445127 {}\n",
                                        time_field(now_nanos())
                                    )
                                    .as_bytes(),
                                );
                                ids.push(id);
                            }
                            if s.write_all(&out).await.is_err() {
                                break;
                            }
                            let mut got = 0;
                            while got < ids.len() {
                                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                                    let line: Vec<u8> = buf.drain(..=end).collect();
                                    let line = String::from_utf8_lossy(&line[..end]).into_owned();
                                    if line.starts_with("AT ") {
                                        acked.lock().unwrap().push((ids[got].clone(), line));
                                    }
                                    got += 1;
                                    if got == ids.len() {
                                        break;
                                    }
                                }
                                if got == ids.len() {
                                    break;
                                }
                                let mut chunk = [0u8; 4096];
                                match tokio::time::timeout(
                                    Duration::from_secs(10),
                                    s.read(&mut chunk),
                                )
                                .await
                                {
                                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                    _ => break 'conn,
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, tasks }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Waits until every server holds every acknowledged record.
async fn every_ack_everywhere(p: &Procs, acked: &[(String, String)]) {
    for name in &p.names {
        let mut missing: Vec<&(String, String)> = acked.iter().collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !missing.is_empty() {
            let mut still = Vec::new();
            for a in missing {
                if p.known(name, &a.0).await.as_deref() != Some(a.1.as_str()) {
                    still.push(a);
                }
            }
            missing = still;
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} lacks {} of {} acknowledged IAMATs, e.g. {:?}",
                missing.len(),
                acked.len(),
                missing[0]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn incarnation(stderr: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains("data dir restored"))?;
    let at = line.find("incarnation=")? + "incarnation=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

async fn kill_one_then_all(policy: &str) {
    let mut p = Procs::new(
        &format!("kill-{policy}"),
        DEFAULT_TOPOLOGY,
        true,
        &["--fsync", policy],
    );
    let names = p.names.clone();
    for n in &names {
        p.start(n);
    }
    for n in &names {
        p.ready(n).await;
    }
    let load = Load::start(
        policy,
        ["Welsh", "Goloman", "Hands"]
            .iter()
            .map(|n| p.client_port(n))
            .collect(),
    );
    let wait_acks = |load: &Load, more: usize| {
        let want = load.acked() + more;
        let acked = load.acked.clone();
        async move {
            wait_for(Duration::from_secs(20), "IAMATs acknowledged", || async {
                (acked.lock().unwrap().len() >= want).then_some(())
            })
            .await
        }
    };
    wait_acks(&load, 60).await;
    p.kill("Welsh");
    wait_acks(&load, 20).await;
    p.start("Welsh");
    p.ready("Welsh").await;
    wait_acks(&load, 60).await;
    for n in &names {
        p.kill(n);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in &names {
        p.start(n);
    }
    for n in &names {
        p.ready(n).await;
    }
    wait_acks(&load, 20).await;
    let acked = load.finish().await;
    assert!(acked.len() >= 160, "only {} acknowledged", acked.len());
    every_ack_everywhere(&p, &acked).await;
    // Welsh resumed its incarnation each time, and said so.
    let first =
        incarnation(&p.stderr("Welsh", 1)).expect("Welsh's first start names its incarnation");
    for n in [2, 3] {
        assert_eq!(
            incarnation(&p.stderr("Welsh", n)),
            Some(first),
            "start {n} of Welsh:\n{}",
            p.stderr("Welsh", n)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_then_all_fsync_always() {
    kill_one_then_all("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_then_all_fsync_everysec() {
    kill_one_then_all("everysec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_then_all_fsync_no() {
    kill_one_then_all("no").await;
}

const SOLO: common::Topology<'static> = &[("Solo", &[])];
const PAIR: common::Topology<'static> = &[("Alpha", &["Beta"]), ("Beta", &["Alpha"])];

/// `n` IAMATs of fresh clients at `name`, one at a time; their ids and AT lines.
async fn send_iamats(p: &Procs, name: &str, label: &str, n: usize) -> Vec<(String, String)> {
    let addr = ([127, 0, 0, 1], p.client_port(name)).into();
    let mut c = Client::connect(addr).await;
    let mut acked = Vec::new();
    for i in 0..n {
        let id = format!("{label}-{i}");
        let reply = c
            .ask(format!("IAMAT {id} +1+1 {}\n", time_field(now_nanos())))
            .await;
        assert!(reply.starts_with(b"AT "), "{}", show(&reply));
        acked.push((
            id,
            String::from_utf8_lossy(&reply[..reply.len() - 1]).into_owned(),
        ));
    }
    acked
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_off_and_reported() {
    let mut p = Procs::new("torn", SOLO, true, &[]);
    p.start("Solo");
    p.ready("Solo").await;
    let acked = send_iamats(&p, "Solo", "torn", 30).await;
    p.kill("Solo");
    // A write cut short: a frame that promises 200 bytes and holds 20.
    let seg = segments(&p.data_dir("Solo")).pop().expect("a segment");
    let len = std::fs::metadata(&seg).unwrap().len();
    let mut torn = 200u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xAB; 24]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);
    p.start("Solo");
    p.ready("Solo").await;
    let err = p.stderr("Solo", 2);
    let line = err
        .lines()
        .find(|l| l.contains("torn last entry"))
        .unwrap_or_else(|| panic!("no torn-tail report:\n{err}"));
    assert!(line.contains(&format!("offset={len}")), "{line}");
    assert!(line.contains("bytes=28"), "{line}");
    assert!(
        line.contains(&seg.file_name().unwrap().to_string_lossy().to_string()),
        "{line}"
    );
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "cut back");
    let m = p.metrics("Solo").await;
    assert_eq!(metric(&m, "herd_data_torn_bytes_total"), Some(28.0), "{m}");
    assert_eq!(metric(&m, "herd_data_corrupt_entries_total"), Some(0.0));
    for (id, line) in &acked {
        assert_eq!(p.known("Solo", id).await.as_deref(), Some(line.as_str()));
    }
    // The same incarnation: a torn tail held nothing anyone saw.
    assert_eq!(incarnation(&p.stderr("Solo", 1)), incarnation(&err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_reported_skipped_and_refilled_from_a_neighbour() {
    let mut p = Procs::new("flip", PAIR, true, &[]);
    p.start("Alpha");
    p.start("Beta");
    p.ready("Alpha").await;
    p.ready("Beta").await;
    let acked = send_iamats(&p, "Alpha", "flip", 40).await;
    every_ack_everywhere(&p, &acked).await;
    p.term("Alpha");
    p.term("Beta");
    // Flip one byte inside the 20th record's line in Alpha's segment.
    let seg = segments(&p.data_dir("Alpha")).pop().expect("a segment");
    let mut data = std::fs::read(&seg).unwrap();
    let needle = format!(" {} ", acked[20].0);
    let at = data
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("the record is in the segment")
        + 2;
    data[at] ^= 0x01;
    std::fs::write(&seg, &data).unwrap();
    p.start("Alpha");
    p.ready("Alpha").await;
    let err = p.stderr("Alpha", 2);
    let line = err
        .lines()
        .find(|l| l.contains("corrupt entry"))
        .unwrap_or_else(|| panic!("no corruption report:\n{err}"));
    assert!(line.contains("offset="), "{line}");
    assert!(line.contains("bytes="), "{line}");
    assert!(
        line.contains(&seg.file_name().unwrap().to_string_lossy().to_string()),
        "{line}"
    );
    assert!(err.contains("starting a new incarnation"), "{err}");
    let m = p.metrics("Alpha").await;
    assert_eq!(
        metric(&m, "herd_data_corrupt_entries_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        p.known("Alpha", &acked[20].0).await,
        None,
        "the damaged record is not trusted"
    );
    // Beta holds it: once their link is up, the catch-up refills it.
    p.start("Beta");
    p.ready("Beta").await;
    every_ack_everywhere(&p, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_data_dir_a_restart_forgets_as_before() {
    let mut p = Procs::new("nodata", SOLO, false, &[]);
    p.start("Solo");
    p.ready("Solo").await;
    let acked = send_iamats(&p, "Solo", "nodata", 3).await;
    assert_eq!(
        p.known("Solo", &acked[0].0).await.as_deref(),
        Some(acked[0].1.as_str())
    );
    p.kill("Solo");
    p.start("Solo");
    p.ready("Solo").await;
    assert_eq!(p.known("Solo", &acked[0].0).await, None);
    assert!(!p.data_root.exists(), "no data dir is made");
    assert!(!p.stderr("Solo", 2).contains("data dir"));
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| Tmpfs(dir.to_owned()))
            .or_else(|| {
                eprintln!(
                    "skipped: cannot mount a tmpfs here ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_the_server_not_serving_and_iamats_are_never_answered_as_stored() {
    let mut p = Procs::new("full", SOLO, true, &["--fsync", "always"]);
    let Some(_fs) = Tmpfs::mount(&p.data_root, "1m") else {
        return;
    };
    // Leave about 48 KiB free.
    let filler = p.data_root.join("filler");
    let free = {
        // SAFETY: statvfs only writes the struct passed to it.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(p.data_root.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    };
    std::fs::write(&filler, vec![7u8; (free - 48 * 1024) as usize]).unwrap();
    p.start("Solo");
    p.ready("Solo").await;
    let addr = ([127, 0, 0, 1], p.client_port("Solo")).into();
    let mut c = Client::connect(addr).await;
    let pad = "x".repeat(400);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let line = format!("IAMAT full-{i}-{pad} +1+1 {}\n", time_field(now_nanos()));
        let reply = c.ask(&line).await;
        if reply.starts_with(b"AT ") {
            acked.push((
                format!("full-{i}-{pad}"),
                String::from_utf8_lossy(&reply[..reply.len() - 1]).into_owned(),
            ));
        } else {
            assert_eq!(
                reply,
                format!("? {line}").into_bytes(),
                "the protocol's refusal"
            );
            refused = Some(i);
            break;
        }
    }
    let refused = refused.expect("the disk filled up");
    assert!(refused > 10, "some IAMATs fit first ({refused})");
    let (ok, word) = p.health("Solo");
    assert!(!ok && word == "NOT_SERVING", "health: {ok} {word}");
    let m = p.metrics("Solo").await;
    assert!(
        metric(&m, "herd_data_write_errors_total").unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "herd_data_writable"), Some(0.0), "{m}");
    let reply = c
        .ask(format!("IAMAT late +1+1 {}\n", time_field(now_nanos())))
        .await;
    assert!(reply.starts_with(b"? "), "{}", show(&reply));
    assert!(p.stderr("Solo", 1).contains("data dir failed"));
    // Room again: the server takes writes and serves again by itself.
    std::fs::remove_file(&filler).unwrap();
    wait_for(Duration::from_secs(10), "SERVING again", || async {
        p.health("Solo").0.then_some(())
    })
    .await;
    acked.extend(send_iamats(&p, "Solo", "after", 5).await);
    // Every IAMAT answered AT is there after a SIGKILL and a restart.
    p.kill("Solo");
    p.start("Solo");
    p.ready("Solo").await;
    for (id, line) in &acked {
        assert_eq!(
            p.known("Solo", id).await.as_deref(),
            Some(line.as_str()),
            "{id}"
        );
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_data_dir_near_its_live_data_and_a_restart_reads_the_snapshot() {
    let mut p = Procs::new("compact", SOLO, true, &["--fsync", "no"]);
    let herd_toml = p.root.path().join("herd.toml");
    let mut text = std::fs::read_to_string(&herd_toml).unwrap();
    text.push_str("\n[data]\nsegment_bytes = 65536\ncompact_min_bytes = 65536\n");
    std::fs::write(&herd_toml, text).unwrap();
    p.start("Solo");
    p.ready("Solo").await;
    // 500 clients, each moving 30 times: about 1.5 MB of journal, 50 KB live.
    let addr = ([127, 0, 0, 1], p.client_port("Solo")).into();
    let mut c = Client::connect(addr).await;
    let mut last = BTreeMap::new();
    for round in 0..30 {
        let mut batch = String::new();
        for i in 0..500 {
            batch.push_str(&format!(
                "IAMAT compact-{i} +{round}.5-118.{i:03} {}\n",
                time_field(now_nanos())
            ));
        }
        c.send(&batch).await;
        for i in 0..500 {
            let reply = c.line().await;
            assert!(reply.starts_with(b"AT "), "{}", show(&reply));
            last.insert(
                i,
                String::from_utf8_lossy(&reply[..reply.len() - 1]).into_owned(),
            );
        }
    }
    let dir = p.data_dir("Solo");
    let (m, bytes) = wait_for(Duration::from_secs(20), "a compaction", || async {
        let m = p.metrics("Solo").await;
        let bytes: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        (metric(&m, "herd_data_compactions_total").unwrap_or(0.0) >= 1.0 && bytes < 400_000)
            .then_some((m, bytes))
    })
    .await;
    assert!(
        std::fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".snap")),
        "a snapshot"
    );
    assert!(metric(&m, "herd_data_dir_bytes").is_some(), "{m}");
    eprintln!("data dir after compaction: {bytes} bytes for 500 records");
    p.kill("Solo");
    p.start("Solo");
    p.ready("Solo").await;
    for (i, line) in &last {
        assert_eq!(
            p.known("Solo", &format!("compact-{i}")).await.as_deref(),
            Some(line.as_str())
        );
    }
    let restored = p.stderr("Solo", 2);
    assert!(restored.contains("records=500"), "{restored}");
}
