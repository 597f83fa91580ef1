//! The herd's backpressure (`backbone.queue_wait_ms`), over two real `herd serve`
//! processes, Goloman and Hands, one link between them. Hands is paused with SIGSTOP
//! (it stays connected and reads nothing), so Goloman's queue to it fills while a
//! client keeps sending IAMATs to Goloman:
//!
//! - paused for less than the wait: the client is held (no reply comes while the
//!   queue is full), nothing is dropped, and once Hands runs again the client goes
//!   on and Hands holds every record;
//! - paused for longer: the client waits once, for `queue_wait_ms`, and is then
//!   answered as if nobody waited (the queue drops, and is not waited for again until
//!   it has drained); once Hands runs again the dropped updates are repaired.
//!
//! Each pause stays under about three seconds: a neighbour that answers no HTTP/2
//! ping for five (`peer::KEEPALIVE_INTERVAL` and `KEEPALIVE_TIMEOUT`) is taken for dead
//! and its link closed, which ends any wait for it too.

mod common;

use std::{
    collections::BTreeMap,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Client, ServerSpec, TempDir, herd_toml_with, now_nanos, reserve_ports, time_field, wait_for,
};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// Client IDs this long make each update about 30 KB, so that the buffers between
/// the two processes (HTTP/2 windows, socket buffers: megabytes) fill in a few
/// hundred IAMATs, even from a debug build on a busy machine; the queue (1 MiB) holds
/// about 34: with one IAMAT in flight and the wait, it never overflows; without the
/// wait, it would at once.
const ID_BYTES: usize = 30_000;

const HERD: &str = env!("CARGO_BIN_EXE_herd");

struct Pair {
    root: TempDir,
    ports: Vec<u16>,
    children: BTreeMap<&'static str, Child>,
}

const NAMES: [&str; 2] = ["Goloman", "Hands"];

impl Pair {
    async fn start(queue_wait_ms: u64) -> Pair {
        let root = TempDir::new("backpressure");
        let ports = reserve_ports(4);
        let specs = [
            ServerSpec {
                name: "Goloman",
                client_port: ports[0],
                peer_port: ports[1],
                neighbours: &["Hands"],
            },
            ServerSpec {
                name: "Hands",
                client_port: ports[2],
                peer_port: ports[3],
                neighbours: &["Goloman"],
            },
        ];
        // A small queue, and no anti-entropy round during the test: only the drop
        // repair may heal what is dropped.
        let toml = herd_toml_with(
            &specs,
            &format!(
                "[gateway]\nmax_client_id_bytes = 32768\n[backbone]\nqueue_bytes = 1048576\nqueue_wait_ms = {queue_wait_ms}\nanti_entropy_interval_ms = 3600000\n"
            ),
        );
        std::fs::write(root.path().join("herd.toml"), toml).expect("write the herd file");
        let mut pair = Pair {
            root,
            ports,
            children: BTreeMap::new(),
        };
        for name in NAMES {
            let stderr = std::fs::File::create(pair.root.path().join(format!("{name}.stderr")))
                .expect("stderr file");
            let child = common::herd_command(
                HERD,
                &["serve", name],
                &pair.root.path().join("herd.toml"),
                &pair.root.path().join("logs"),
                stderr,
            )
            .spawn()
            .expect("spawn herd");
            pair.children.insert(name, child);
        }
        // Linked once an IAMAT at Goloman reaches Hands.
        let id = "linked";
        let mut c = pair.client("Goloman").await;
        let at = c.ask(iamat(id)).await;
        assert!(
            at.starts_with(b"AT Goloman "),
            "{}",
            String::from_utf8_lossy(&at)
        );
        wait_for(Duration::from_secs(30), "the link to come up", || async {
            pair.known("Hands", id).await.then_some(())
        })
        .await;
        pair
    }

    fn port(&self, name: &str, peer: bool) -> u16 {
        let i = NAMES.iter().position(|n| *n == name).expect("a server");
        self.ports[2 * i + usize::from(peer)]
    }

    async fn client(&self, name: &str) -> Client {
        let addr = ([127, 0, 0, 1], self.port(name, false)).into();
        wait_for(
            Duration::from_secs(30),
            &format!("{name} to accept"),
            || async { tokio::net::TcpStream::connect(addr).await.ok().map(drop) },
        )
        .await;
        Client::connect(addr).await
    }

    async fn known(&self, name: &str, id: &str) -> bool {
        let mut c = self.client(name).await;
        !c.whatsat(format!("WHATSAT {id} 1 0\n"))
            .await
            .starts_with(b"? ")
    }

    /// Waits until Hands knows each of the load's clients `ns` (see [`client_id`]).
    async fn wait_hands_know(&self, ns: &[u64], timeout: Duration) {
        for &n in ns {
            let id = client_id(n);
            wait_for(timeout, &format!("Hands to know client {n}"), || async {
                self.known("Hands", &id).await.then_some(())
            })
            .await;
        }
    }

    /// Hands stops running (SIGSTOP) or runs again (SIGCONT).
    fn signal_hands(&self, sig: libc::c_int) {
        let pid = self.children["Hands"].id() as libc::pid_t;
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal Hands");
    }

    /// One series of Goloman's metrics for neighbour Hands.
    async fn metric(&self, series: &str) -> f64 {
        let text =
            common::scrape_metrics(([127, 0, 0, 1], self.port("Goloman", true)).into()).await;
        let prefix = format!("{series}{{server=\"Goloman\",neighbour=\"Hands\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if self.children.contains_key("Hands") {
            self.signal_hands(libc::SIGCONT);
        }
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn client_id(n: u64) -> String {
    let n = n.to_string();
    format!("{}{n}", "c".repeat(ID_BYTES - n.len()))
}

fn iamat(id: &str) -> String {
    format!(
        "IAMAT {id} +34.068930-118.445127 {}\n",
        time_field(now_nanos())
    )
}

/// A client that sends IAMATs to Goloman, one in flight, each for a new client,
/// until `stop`; `answered` counts the replies.
fn load(
    addr: std::net::SocketAddr,
    answered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (r, mut w) = socket.into_split();
        let mut lines = BufReader::new(r).lines();
        let mut next = 0;
        while !stop.load(Ordering::Acquire) {
            w.write_all(iamat(&client_id(next)).as_bytes())
                .await
                .expect("send an IAMAT");
            next += 1;
            let line = lines
                .next_line()
                .await
                .expect("read a reply")
                .expect("a reply");
            assert!(line.starts_with("AT Goloman "), "{line}");
            answered.fetch_add(1, Ordering::AcqRel);
        }
    })
}

/// [`load`] at Goloman, once it has been answered a hundred times.
struct Load {
    answered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    client: tokio::task::JoinHandle<()>,
}

impl Load {
    async fn start(pair: &Pair) -> Load {
        let (answered, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let client = load(
            ([127, 0, 0, 1], pair.port("Goloman", false)).into(),
            answered.clone(),
            stop.clone(),
        );
        wait_for(
            Duration::from_secs(30),
            "the client to be answered",
            || async { (answered.load(Ordering::Acquire) >= 100).then_some(()) },
        )
        .await;
        Load {
            answered,
            stop,
            client,
        }
    }

    /// Stops the client; the IAMATs it had answered.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.client.await.expect("the client ran");
        self.answered.load(Ordering::Acquire)
    }
}

/// Replies counted over `window`.
async fn replies_in(answered: &AtomicU64, window: Duration) -> u64 {
    let before = answered.load(Ordering::Acquire);
    tokio::time::sleep(window).await;
    answered.load(Ordering::Acquire) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_neighbour_holds_clients_and_loses_nothing() {
    let pair = Pair::start(60_000).await;
    let load = Load::start(&pair).await;
    let answered = &load.answered;
    pair.signal_hands(libc::SIGSTOP);
    // Once the buffers between the two are full, the client is held: no reply for a
    // while (without the wait it would be answered all along, and updates dropped).
    let paused = Instant::now();
    let mut held = false;
    while !held && paused.elapsed() < Duration::from_secs(3) {
        held = replies_in(answered, Duration::from_millis(250)).await == 0;
    }
    pair.signal_hands(libc::SIGCONT);
    assert!(
        held,
        "the client was answered all along while Hands was paused"
    );
    assert!(pair.metric("herd_backbone_queue_waits_total").await >= 1.0);
    wait_for(
        Duration::from_secs(30),
        "the client to be answered again",
        || async { (replies_in(answered, Duration::from_millis(100)).await > 0).then_some(()) },
    )
    .await;
    let sent = load.finish().await;
    assert_eq!(pair.metric("herd_backbone_queue_drops_total").await, 0.0);
    assert_eq!(
        pair.metric("herd_backbone_queue_wait_timeouts_total").await,
        0.0
    );
    // Every record reached Hands: the first and the last, and some between.
    pair.wait_hands_know(&[0, sent / 3, sent / 2, sent - 1], Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_neighbour_costs_one_wait_then_drops_and_is_repaired() {
    let wait = Duration::from_millis(500);
    let pair = Pair::start(wait.as_millis() as u64).await;
    let load = Load::start(&pair).await;
    let answered = &load.answered;
    pair.signal_hands(libc::SIGSTOP);
    wait_for(
        Duration::from_secs(3),
        "the wait for Hands' queue to run out",
        || async {
            (pair.metric("herd_backbone_queue_wait_timeouts_total").await >= 1.0).then_some(())
        },
    )
    .await;
    let waits = pair.metric("herd_backbone_queue_waits_total").await;
    // Answered again, with Hands still paused: the queue drops instead.
    let after = replies_in(answered, Duration::from_millis(500)).await;
    let drops = pair.metric("herd_backbone_queue_drops_total").await;
    let waits_after = pair.metric("herd_backbone_queue_waits_total").await;
    let timeouts = pair.metric("herd_backbone_queue_wait_timeouts_total").await;
    pair.signal_hands(libc::SIGCONT);
    // Held, it would have had none (a debug build on a busy machine answers these
    // 30 KB IAMATs a few dozen a second).
    assert!(
        after >= 3,
        "the client was answered {after} times after the wait ran out"
    );
    assert!(drops > 0.0, "nothing was dropped for the paused neighbour");
    // One wait per episode: the full queue is not waited for again.
    assert_eq!((waits_after, timeouts), (waits, 1.0));
    let sent = load.finish().await;
    // The dropped updates are repaired (the catch-up from Hands' floors).
    pair.wait_hands_know(&[0, sent / 2, sent - 1], Duration::from_secs(60))
        .await;
}
