//! The black-box harness shared by the test binaries: a herd of real servers on
//! ports the OS chose, a client that reads exact bytes under a deadline, a poller,
//! and the byte-level helpers the assertions need.

// Each test binary uses its own part of the harness.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use herd::{
    config::HerdConfig,
    places::{OfflineProvider, PlacesRequest, PlacesService},
    server::{self, Listeners, ServerError},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// How long any single read or connect may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an update may take to reach every server it should reach.
pub const SPREAD: Duration = Duration::from_secs(10);
/// How long a server's dial of a neighbour may hang before it gives up (the
/// `connect_timeout` of `src/peer/dial.rs`), which is also the longest redial backoff
/// (`BACKOFF_MAX`): a reply that waited on a link to a down or hung neighbour would
/// take at least this long, so "answered sooner" is the test of not waiting.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// The fair chance a server gets to (wrongly) receive an update before we say it did not.
pub const FAIR_CHANCE: Duration = Duration::from_secs(1);

/// `HERD ARGS --config CONFIG --log-dir LOGS` (`herd`: the binary, the test binary's
/// `env!("CARGO_BIN_EXE_herd")`, which only the herd package's tests have) as the
/// process tests run it: none of the operator's `HERD_*` settings, `info` logs, stdin
/// and stdout closed, stderr to `stderr` (a file the test reads).
#[allow(dead_code)] // not every test binary starts processes
pub fn herd_command(
    herd: &str,
    args: &[&str],
    config: &Path,
    logs: &Path,
    stderr: std::fs::File,
) -> std::process::Command {
    let mut c = std::process::Command::new(herd);
    c.args(args)
        .arg("--config")
        .arg(config)
        .arg("--log-dir")
        .arg(logs)
        .env_remove("HERD_CONFIG")
        .env_remove("HERD_DATA_DIR")
        .env_remove("HERD_FSYNC")
        .env_remove("HERD_PLACES")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    c
}

/// A herd topology: each server's name and its neighbours.
pub type Topology<'a> = &'a [(&'a str, &'a [&'a str])];

/// The five servers of PROTOCOL.md, with the same links.
pub const DEFAULT_TOPOLOGY: Topology<'static> = &[
    ("Goloman", &["Hands", "Holiday", "Wilkes"]),
    ("Hands", &["Goloman", "Wilkes"]),
    ("Holiday", &["Goloman", "Welsh", "Wilkes"]),
    ("Welsh", &["Holiday"]),
    ("Wilkes", &["Goloman", "Hands", "Holiday"]),
];

pub const NAMES: [&str; 5] = ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"];

/// One `[[server]]` entry of a herd file.
pub struct ServerSpec<'a> {
    pub name: &'a str,
    pub client_port: u16,
    pub peer_port: u16,
    pub neighbours: &'a [&'a str],
}

/// A herd file for `servers`, all on 127.0.0.1, offline places. The places timeout
/// is generous: the first WHATSAT of a test binary may wait for the index (built
/// once, ~1 s in debug, longer on a loaded 2-core machine); timeouts are not tested here.
pub fn herd_toml(servers: &[ServerSpec<'_>]) -> String {
    herd_toml_with(servers, "")
}

/// [`herd_toml`] with `tables` (whole tables, e.g. `[gateway]` and its keys) added.
pub fn herd_toml_with(servers: &[ServerSpec<'_>], tables: &str) -> String {
    let mut text = String::from("[places]\nprovider = \"offline\"\ntimeout_ms = 60000\n");
    text.push_str(tables);
    text.push('\n');
    for s in servers {
        let neighbours: Vec<String> = s.neighbours.iter().map(|n| format!("{n:?}")).collect();
        text.push_str(&format!(
            "\n[[server]]\nname = {:?}\nhost = \"127.0.0.1\"\nclient_port = {}\npeer_port = {}\nneighbours = [{}]\n",
            s.name,
            s.client_port,
            s.peer_port,
            neighbours.join(", ")
        ));
    }
    text
}

/// `n` ports that were free a moment ago (each bound and released at once; another
/// process may take one before the test binds it, rarely enough for tests).
#[allow(dead_code)] // each test binary uses its own part of common
pub fn reserve_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// A herd file for `topology` on the given ports (client, peer pairs in order).
#[allow(dead_code)] // not every test binary writes herd files for processes
pub fn herd_file(topology: Topology<'_>, ports: &[u16]) -> String {
    let specs: Vec<ServerSpec<'_>> = topology
        .iter()
        .enumerate()
        .map(|(i, (name, neighbours))| ServerSpec {
            name,
            client_port: ports[2 * i],
            peer_port: ports[2 * i + 1],
            neighbours,
        })
        .collect();
    herd_toml(&specs)
}

/// The Prometheus metrics of the server whose peer port is `peer`, over HTTP/1.1
/// (the whole response, headers first).
#[allow(dead_code)] // not every test binary reads metrics
pub async fn scrape_metrics(peer: SocketAddr) -> String {
    let mut s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(peer))
        .await
        .expect("the peer port accepts in time")
        .expect("connect to the peer port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("ask for the metrics");
    let mut text = String::new();
    tokio::time::timeout(IO_TIMEOUT, s.read_to_string(&mut text))
        .await
        .expect("the metrics in time")
        .expect("read the metrics");
    text
}

/// The offline provider shared by every herd of this test binary. Its index is built
/// once, on a thread of its own (so it survives the runtime of the test that started it).
pub fn offline() -> OfflineProvider {
    static OFFLINE: OnceLock<OfflineProvider> = OnceLock::new();
    OFFLINE
        .get_or_init(|| {
            let provider = OfflineProvider::new();
            let warm = provider.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime to build the places index");
                rt.block_on(async move {
                    let req = PlacesRequest {
                        lat: 0.0,
                        lon: 0.0,
                        radius_m: 1.0,
                        bound: 1,
                    };
                    let _ = tower::ServiceExt::oneshot(warm, req).await;
                });
            });
            provider
        })
        .clone()
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

struct Slot {
    client: SocketAddr,
    peer: SocketAddr,
    running: Option<Running>,
}

/// A herd of in-process servers, each on its own listeners bound to 127.0.0.1:0
/// before the herd file is written (so no other process can take a port between).
pub struct TestHerd {
    config: Arc<HerdConfig>,
    toml: String,
    places: PlacesService,
    slots: BTreeMap<String, Slot>,
}

impl TestHerd {
    /// The five servers and links of PROTOCOL.md.
    pub async fn default_topology() -> TestHerd {
        TestHerd::start(DEFAULT_TOPOLOGY).await
    }

    /// One server with no neighbours.
    pub async fn single(name: &str) -> TestHerd {
        TestHerd::start(&[(name, &[])]).await
    }

    pub async fn start(topology: Topology<'_>) -> TestHerd {
        TestHerd::start_with(topology, "").await
    }

    /// [`TestHerd::start`] with `tables` added to the herd file (see [`herd_toml_with`]).
    pub async fn start_with(topology: Topology<'_>, tables: &str) -> TestHerd {
        let mut bound = Vec::with_capacity(topology.len());
        for (name, _) in topology {
            let client = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a client listener");
            let peer = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a peer listener");
            bound.push((*name, client, peer));
        }
        let specs: Vec<ServerSpec<'_>> = topology
            .iter()
            .zip(&bound)
            .map(|((name, neighbours), (_, c, p))| ServerSpec {
                name,
                client_port: c.local_addr().expect("client addr").port(),
                peer_port: p.local_addr().expect("peer addr").port(),
                neighbours,
            })
            .collect();
        let toml = herd_toml_with(&specs, tables);
        let config = Arc::new(
            HerdConfig::parse(&toml, "test herd")
                .unwrap_or_else(|e| panic!("test herd file rejected: {e}\n{toml}")),
        );
        let places = herd::places::stack(&config.places, offline()).expect("places stack");
        let mut herd = TestHerd {
            config,
            toml,
            places,
            slots: BTreeMap::new(),
        };
        for (name, client, peer) in bound {
            let slot = Slot {
                client: client.local_addr().expect("client addr"),
                peer: peer.local_addr().expect("peer addr"),
                running: None,
            };
            herd.slots.insert(name.to_owned(), slot);
            herd.run(name, Listeners { client, peer });
        }
        herd
    }

    fn run(&mut self, name: &str, listeners: Listeners) {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let herd = self.config.clone();
            let places = self.places.clone();
            let shutdown = shutdown.clone();
            let me = herd
                .server(name)
                .expect("a server of the test herd")
                .clone();
            server::run(herd, me, listeners, places, shutdown)
        });
        self.slot(name).running = Some(Running { shutdown, task });
    }

    fn slot(&mut self, name: &str) -> &mut Slot {
        self.slots
            .get_mut(name)
            .unwrap_or_else(|| panic!("no server {name} in this test herd"))
    }

    /// The herd file the servers run with.
    pub fn toml(&self) -> &str {
        &self.toml
    }

    pub fn names(&self) -> Vec<String> {
        self.slots.keys().cloned().collect()
    }

    pub fn client_addr(&self, name: &str) -> SocketAddr {
        self.slots
            .get(name)
            .unwrap_or_else(|| panic!("no server {name} in this test herd"))
            .client
    }

    /// Server `name`'s peer (gRPC) address.
    pub fn peer_addr(&self, name: &str) -> SocketAddr {
        self.slots
            .get(name)
            .unwrap_or_else(|| panic!("no server {name} in this test herd"))
            .peer
    }

    /// A new client connection to server `name`.
    pub async fn client(&self, name: &str) -> Client {
        Client::connect(self.client_addr(name)).await
    }

    /// Stops server `name`: cancels it and waits for it to finish (it must, cleanly).
    pub async fn stop(&mut self, name: &str) {
        let running = self
            .slot(name)
            .running
            .take()
            .unwrap_or_else(|| panic!("{name} is not running"));
        running.shutdown.cancel();
        match tokio::time::timeout(IO_TIMEOUT, running.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("{name} stopped with an error: {e}"),
            Ok(Err(e)) => panic!("{name} panicked: {e}"),
            Err(_) => panic!("{name} did not stop within {IO_TIMEOUT:?}"),
        }
    }

    /// Runs a fresh server `name` (empty store) on the ports it had. The bind is
    /// retried briefly: a neighbour redialling the port may hold it for an instant.
    pub async fn restart(&mut self, name: &str) {
        let (client_addr, peer_addr) = {
            let slot = self.slot(name);
            assert!(slot.running.is_none(), "{name} is still running");
            (slot.client, slot.peer)
        };
        let client = bind_retrying(client_addr).await;
        let peer = bind_retrying(peer_addr).await;
        self.run(name, Listeners { client, peer });
    }

    /// The AT line (without its newline) server `name` holds for `client_id`, or
    /// None when it answers `?` (it does not know the client).
    pub async fn known(&self, name: &str, client_id: &[u8]) -> Option<Vec<u8>> {
        let mut c = self.client(name).await;
        let mut line = b"WHATSAT ".to_vec();
        line.extend_from_slice(client_id);
        line.extend_from_slice(b" 1 0\n");
        let reply = c.whatsat(&line).await;
        if reply.starts_with(b"? ") {
            assert_bytes(&reply, &question(&line));
            return None;
        }
        let end = reply
            .iter()
            .position(|&b| b == b'\n')
            .expect("a WHATSAT reply has lines");
        Some(reply[..end].to_vec())
    }

    /// Waits until server `name` holds exactly `at_line` for `client_id`.
    pub async fn wait_known(&self, name: &str, client_id: &[u8], at_line: &[u8]) {
        let what = format!(
            "{name} to hold {:?} for {:?}",
            show(at_line),
            show(client_id)
        );
        wait_for(SPREAD, &what, || async {
            (self.known(name, client_id).await.as_deref() == Some(at_line)).then_some(())
        })
        .await;
    }

    /// Gives server `name` a fair chance to learn `client_id`, and asserts it did not.
    pub async fn assert_never_known(&self, name: &str, client_id: &[u8]) {
        let until = Instant::now() + FAIR_CHANCE;
        while Instant::now() < until {
            if let Some(line) = self.known(name, client_id).await {
                panic!(
                    "{name} should not know {:?}, but holds {:?}",
                    show(client_id),
                    show(&line)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestHerd {
    fn drop(&mut self) {
        for slot in self.slots.values() {
            if let Some(r) = &slot.running {
                r.shutdown.cancel();
            }
        }
    }
}

async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

/// Polls `probe` every 20 ms until it gives Some, or fails the test after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client connection that reads exact bytes, each read under [`IO_TIMEOUT`].
pub struct Client {
    stream: TcpStream,
    /// Bytes read but not yet handed out.
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .await
            .expect("write to the server");
    }

    /// Reads more bytes into the buffer; false at EOF.
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no reply within {IO_TIMEOUT:?}; got so far {:?}",
                    show(&self.buf)
                )
            })
            .expect("read from the server");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Everything up to and including the first `delim`.
    pub async fn until(&mut self, delim: &[u8]) -> Vec<u8> {
        loop {
            if let Some(pos) = self.buf.windows(delim.len()).position(|w| w == delim) {
                return self.buf.drain(..pos + delim.len()).collect();
            }
            if !self.fill().await {
                panic!(
                    "connection closed before {:?}; got {:?}",
                    show(delim),
                    show(&self.buf)
                );
            }
        }
    }

    /// One reply line, with its LF.
    pub async fn line(&mut self) -> Vec<u8> {
        self.until(b"\n").await
    }

    /// Sends `line` (which carries its own line end) and reads one reply line.
    pub async fn ask(&mut self, line: impl AsRef<[u8]>) -> Vec<u8> {
        self.send(line).await;
        self.line().await
    }

    /// Reads one WHATSAT reply: a `? ` line, or everything up to the empty line.
    pub async fn whatsat_reply(&mut self) -> Vec<u8> {
        let first = self.line().await;
        if first.starts_with(b"? ") {
            return first;
        }
        let mut reply = first;
        reply.extend(self.until(b"\n\n").await);
        reply
    }

    pub async fn whatsat(&mut self, line: impl AsRef<[u8]>) -> Vec<u8> {
        self.send(line).await;
        self.whatsat_reply().await
    }

    /// Everything until the server closes the connection.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Half-closes (shutdown(Write)) and reads everything until the server closes.
    pub async fn finish(mut self) -> Vec<u8> {
        self.stream.shutdown().await.expect("half-close");
        self.read_to_end().await
    }

    /// Waits for the next bytes the server sends (at least one), without a cap.
    pub async fn read_some(&mut self) -> Vec<u8> {
        if self.buf.is_empty() {
            assert!(self.fill().await, "connection closed");
        }
        std::mem::take(&mut self.buf)
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// The `? ` reply to `line` as sent (with its LF or CR LF line end).
pub fn question(line: &[u8]) -> Vec<u8> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let mut out = b"? ".to_vec();
    out.extend_from_slice(body);
    out.push(b'\n');
    out
}

/// Bytes as escaped ASCII, for readable failure messages.
pub fn show(bytes: &[u8]) -> String {
    let text = bytes.escape_ascii().to_string();
    if text.len() > 2000 {
        format!(
            "{}...({} bytes)...{}",
            &text[..1000],
            bytes.len(),
            &text[text.len() - 200..]
        )
    } else {
        text
    }
}

#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "bytes differ (first difference at {at:?}, lengths {} and {})\n  got: {}\n want: {}",
            got.len(),
            want.len(),
            show(got),
            show(want)
        );
    }
}

/// The system clock in integer nanoseconds since the epoch.
pub fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

/// A time field `S.NNNNNNNNN` for `nanos` since the epoch (not negative).
pub fn time_field(nanos: i128) -> String {
    assert!(nanos >= 0);
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// An AT line's time difference in nanoseconds, if it has the protocol's form and
/// fits an i128.
pub fn parse_diff(diff: &[u8]) -> Option<i128> {
    if !diff_form_ok(diff) || diff.len() > 30 {
        return None;
    }
    let negative = diff[0] == b'-';
    let (int, frac) = diff[1..].split_at(diff.len() - 11);
    let frac = &frac[1..];
    let value: i128 = std::str::from_utf8(int).ok()?.parse::<i128>().ok()? * 1_000_000_000
        + std::str::from_utf8(frac).ok()?.parse::<i128>().ok()?;
    Some(if negative { -value } else { value })
}

/// The fields of an AT line (without its newline), split on single spaces.
pub fn at_fields(line: &[u8]) -> Vec<&[u8]> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.split(|&b| b == b' ').collect()
}

/// The protocol's form of a time difference: a sign, one or more digits, '.',
/// exactly nine digits, nothing else.
pub fn diff_form_ok(diff: &[u8]) -> bool {
    let Some((&sign, rest)) = diff.split_first() else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (int, frac) = (&rest[..dot], &rest[dot + 1..]);
    (sign == b'+' || sign == b'-')
        && !int.is_empty()
        && frac.len() == 9
        && int.iter().chain(frac).all(u8::is_ascii_digit)
}

/// A time difference in nanoseconds (it must fit an i128).
#[track_caller]
pub fn diff_nanos(diff: &[u8]) -> i128 {
    parse_diff(diff).unwrap_or_else(|| panic!("bad time difference {:?}", show(diff)))
}

/// Checks an IAMAT reply byte for byte, except the time difference, which must have
/// the protocol's form; returns the difference field.
#[track_caller]
pub fn check_at(
    reply: &[u8],
    server: &str,
    client_id: &[u8],
    location: &[u8],
    time: &[u8],
) -> Vec<u8> {
    let fields = at_fields(reply);
    assert!(
        reply.ends_with(b"\n") && fields.len() == 6,
        "not an AT line: {:?}",
        show(reply)
    );
    let diff = fields[2].to_vec();
    assert!(
        diff_form_ok(&diff),
        "bad time difference in {:?}",
        show(reply)
    );
    let mut want = format!("AT {server} ").into_bytes();
    want.extend_from_slice(fields[2]);
    for f in [client_id, location, time] {
        want.push(b' ');
        want.extend_from_slice(f);
    }
    want.push(b'\n');
    assert_bytes(reply, &want);
    diff
}

/// An IAMAT line for `client_id` at `location` and `time`, with its LF.
pub fn iamat(client_id: &[u8], location: &str, time: &str) -> Vec<u8> {
    let mut line = b"IAMAT ".to_vec();
    line.extend_from_slice(client_id);
    line.extend_from_slice(format!(" {location} {time}\n").as_bytes());
    line
}

/// A client ID unique in this process, so that parallel tests never share one.
pub fn unique_id(prefix: &str) -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes()
}

/// A directory under the system temp dir, unique to this test, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "herd-test-{label}-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            now_nanos() % 1_000_000_000
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // HERD_TEST_KEEP=1 keeps the directories (herd files, logs) for a post-mortem.
        if std::env::var_os("HERD_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
