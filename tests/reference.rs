//! The protocol checks written once and run against three stacks: herd itself, the
//! Python asyncio reference herd and the Node.js one (bench/reference/), each as real
//! processes on ports the OS chose. They cover what bench/compare-stacks.sh compares:
//! IAMAT, `?` replies and flooding (WHATSAT only as the `WHATSAT id 1 0` probe of "does this
//! server know the client"). `HERD_UNDER_TEST="CMD ARGS"` runs them against one more
//! server command as well (spawned as `CMD ARGS serve NAME --config FILE`), in the tests
//! named `under_test::*` (ignored unless asked for: `--run-ignored all`).
//!
//! The references need `python3` (3.11 or later, for tomllib) and `node` on PATH: a test
//! whose interpreter is missing fails and says so, rather than passing without checking.

mod common;

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Client, DEFAULT_TOPOLOGY, FAIR_CHANCE, IO_TIMEOUT, NAMES, SPREAD, TempDir, Topology,
    assert_bytes, check_at, diff_nanos, herd_file, iamat, now_nanos, question, show, time_field,
    unique_id, wait_for,
};

/// Which server implementation runs the herd.
#[derive(Clone, Copy, Debug)]
enum Stack {
    Herd,
    Asyncio,
    Node,
    /// The command in `HERD_UNDER_TEST`.
    UnderTest,
}

impl Stack {
    /// The program and leading arguments; `serve NAME --config FILE` follows.
    fn command(self) -> Vec<String> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let script = |rel: &str| root.join(rel).to_string_lossy().into_owned();
        match self {
            Stack::Herd => vec![env!("CARGO_BIN_EXE_herd").to_owned()],
            Stack::Asyncio => vec!["python3".into(), script("bench/reference/asyncio/herd.py")],
            Stack::Node => vec!["node".into(), script("bench/reference/node/herd.js")],
            Stack::UnderTest => std::env::var("HERD_UNDER_TEST")
                .expect("HERD_UNDER_TEST names the server command to test")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// A herd of server processes, one per server of the topology, killed on drop.
struct ProcHerd {
    stack: Stack,
    command: Vec<String>,
    dir: TempDir,
    config: PathBuf,
    servers: Vec<(String, SocketAddr, Option<Child>)>,
}

impl ProcHerd {
    /// Starts every server of `topology`.
    async fn start(stack: Stack, topology: Topology<'_>) -> ProcHerd {
        let command = stack.command();
        let listeners: Vec<StdListener> = (0..2 * topology.len())
            .map(|_| StdListener::bind("127.0.0.1:0").expect("bind a free port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        // Released just before the servers bind them: a tiny race with other processes.
        drop(listeners);
        let dir = TempDir::new(&format!("reference-{stack:?}"));
        let config = dir.path().join("herd.toml");
        std::fs::write(&config, herd_file(topology, &ports)).expect("write the herd file");
        let mut herd = ProcHerd {
            stack,
            command,
            dir,
            config,
            servers: topology
                .iter()
                .zip(ports.chunks(2))
                .map(|((name, _), p)| ((*name).to_owned(), ([127, 0, 0, 1], p[0]).into(), None))
                .collect(),
        };
        for (name, _) in topology {
            herd.spawn(name);
        }
        for (name, _) in topology {
            herd.wait_listening(name).await;
        }
        herd
    }

    fn index(&self, name: &str) -> usize {
        self.servers
            .iter()
            .position(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    fn spawn(&mut self, name: &str) {
        let i = self.index(name);
        let log = |kind: &str| {
            std::fs::File::create(self.dir.path().join(format!("{name}.{kind}"))).expect("log file")
        };
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .args(["serve", name, "--config"])
            .arg(&self.config)
            .args(self.log_args())
            .env_remove("HERD_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {:?} for the {:?} stack: {e} (is it on PATH?)",
                    self.command[0], self.stack
                )
            });
        self.servers[i].2 = Some(child);
    }

    /// herd writes a log file per server: into this herd's own directory, not the
    /// working directory that every test process shares. The references log nothing.
    fn log_args(&self) -> Vec<std::ffi::OsString> {
        match self.stack {
            Stack::Herd => vec!["--log-dir".into(), self.dir.path().join("logs").into()],
            Stack::Asyncio | Stack::Node | Stack::UnderTest => Vec::new(),
        }
    }

    async fn wait_listening(&mut self, name: &str) {
        let i = self.index(name);
        let addr = self.servers[i].1;
        let stack = self.stack;
        let what = format!("{name} ({stack:?}) to listen on {addr}");
        let stderr = self.dir.path().join(format!("{name}.stderr"));
        let child = self.servers[i].2.as_mut().expect("spawned");
        wait_for(Duration::from_secs(30), &what, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{name} ({stack:?}) exited with {status}: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
        })
        .await;
    }

    fn kill(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut child) = self.servers[i].2.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn restart(&mut self, name: &str) {
        self.kill(name);
        self.spawn(name);
        self.wait_listening(name).await;
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.servers[self.index(name)].1
    }

    async fn client(&self, name: &str) -> Client {
        Client::connect(self.addr(name)).await
    }

    /// The AT line (without its LF) `name` holds for `id`, None when it answers `?`.
    async fn known(&self, name: &str, id: &[u8]) -> Option<Vec<u8>> {
        let mut line = b"WHATSAT ".to_vec();
        line.extend_from_slice(id);
        line.extend_from_slice(b" 1 0\n");
        let reply = self.client(name).await.whatsat(&line).await;
        if reply.starts_with(b"? ") {
            assert_bytes(&reply, &question(&line));
            return None;
        }
        let end = reply.iter().position(|&b| b == b'\n').expect("a line");
        Some(reply[..end].to_vec())
    }

    async fn wait_known(&self, name: &str, id: &[u8], at: &[u8]) {
        let at = at.strip_suffix(b"\n").unwrap_or(at);
        let what = format!("{name} to hold {:?} for {:?}", show(at), show(id));
        wait_for(SPREAD, &what, || async {
            (self.known(name, id).await.as_deref() == Some(at)).then_some(())
        })
        .await;
    }
}

impl Drop for ProcHerd {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.servers {
            if let Some(c) = child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

const LOC: &str = "+34.068930-118.445127";

/// IAMAT replies, stored lines, `?` for everything invalid, whitespace, bytes, EOF, long lines.
async fn client_protocol(stack: Stack) {
    let herd = ProcHerd::start(stack, &[("Goloman", &[])]).await;
    let mut c = herd.client("Goloman").await;

    // An AT line echoes the fields byte for byte; the difference is receive time minus
    // the client's, here about +1 s (checked against this machine's clock, loosely).
    let id = unique_id("kiwi");
    let sent = now_nanos() - 1_000_000_000;
    let time = time_field(sent);
    let before = now_nanos();
    let reply = c.ask(iamat(&id, LOC, &time)).await;
    let after = now_nanos();
    let diff = diff_nanos(&check_at(
        &reply,
        "Goloman",
        &id,
        LOC.as_bytes(),
        time.as_bytes(),
    ));
    let slack = 2_000_000_000;
    assert!(
        (before - sent - slack..=after - sent + slack).contains(&diff),
        "time difference {diff} ns is not about 1 s: {}",
        show(&reply)
    );

    // Not newer (same time, then older): the stored line, byte for byte.
    assert_bytes(&c.ask(iamat(&id, LOC, &time)).await, &reply);
    assert_bytes(
        &c.ask(iamat(&id, "+1+1", &time_field(sent - 5))).await,
        &reply,
    );

    // More than nine fraction digits are cut; a client in the future gets a negative
    // difference with nine digits.
    let id2 = unique_id("future");
    let future = "9999999999.12345678999";
    let reply = c.ask(iamat(&id2, "-90+180", future)).await;
    let diff = diff_nanos(&check_at(
        &reply,
        "Goloman",
        &id2,
        b"-90+180",
        future.as_bytes(),
    ));
    let want = now_nanos() - 9_999_999_999_123_456_789;
    assert!(
        diff < 0 && (diff - want).abs() < 60_000_000_000,
        "{}",
        show(&reply)
    );

    // Bounds included, fractions optional, leading zeros allowed.
    for loc in ["+90-180", "-90.000+180.0", "+00.5-000.25", "+0+0"] {
        let id = unique_id("bound");
        let r = c.ask(iamat(&id, loc, "1")).await;
        check_at(&r, "Goloman", &id, loc.as_bytes(), b"1");
    }

    // Every invalid line: `? ` and the line without its line end.
    let bad: &[&[u8]] = &[
        b"FOO i am client 10 32\n",
        b"IAMAT a +1+1\n",
        b"IAMAT a +1+1 1 extra\n",
        b"iamat a +1+1 1\n",
        b"IAMAT a +90.0000001+0 1\n",
        b"IAMAT a +1+180.5 1\n",
        b"IAMAT a +91+0 1\n",
        b"IAMAT a 1+1 1\n",
        b"IAMAT a +1+1. 1\n",
        b"IAMAT a +1.+1 1\n",
        b"IAMAT a +1+1 -1\n",
        b"IAMAT a +1+1 +1\n",
        b"IAMAT a +1+1 1e9\n",
        b"IAMAT a +1+1 1.\n",
        b"IAMAT a +1+1 .5\n",
        b"IAMAT a +\xd9\xa1+1 1\n",
        b"WHATSAT never-seen-client 10 5\n",
        b"UPDATE a +1+1 1 Goloman +0.000000001 Goloman\r\n",
        b"\xff\xfe\xfd not utf-8\n",
        b"IAMAT\n",
    ];
    for line in bad {
        let r = c.ask(line).await;
        assert_bytes(&r, &question(line));
    }

    // The whitespace set is SP HT CR LF FF VT, no more; a blank line gets no reply.
    c.send(b" \t\x0b\x0c \r\n").await;
    let id3 = unique_id("ws");
    let mut line = b"\x0bIAMAT\x0c".to_vec();
    line.extend_from_slice(&id3);
    line.extend_from_slice(b"\t +1+1 \x0b 2 \r\n");
    let r = c.ask(&line).await;
    check_at(&r, "Goloman", &id3, b"+1+1", b"2");
    // A non-breaking space (U+00A0) is not whitespace: one field, so `?`.
    let nbsp = b"IAMAT\xc2\xa0a +1+1 1\n";
    assert_bytes(&c.ask(nbsp).await, &question(nbsp));

    // Client IDs are bytes: emoji and invalid UTF-8 come back as sent.
    for id in [&b"\xf0\x9f\xa6\x98-kiwi"[..], b"\xff\x80\xc0-raw"] {
        let r = c.ask(iamat(id, "+1+1", "3")).await;
        check_at(&r, "Goloman", id, b"+1+1", b"3");
    }

    // Pipelined commands are answered in order.
    let (a, b) = (unique_id("p1"), unique_id("p2"));
    let mut two = iamat(&a, "+1+1", "4");
    two.extend(b"BAD\n");
    two.extend(iamat(&b, "+2+2", "5"));
    c.send(&two).await;
    check_at(&c.line().await, "Goloman", &a, b"+1+1", b"4");
    assert_bytes(&c.line().await, b"? BAD\n");
    check_at(&c.line().await, "Goloman", &b, b"+2+2", b"5");

    // A line over 64 KiB: `? ` and all of its bytes.
    let mut long = b"IAMAT ".to_vec();
    long.resize(70_000, b'x');
    long.push(b'\n');
    c.send(&long).await;
    let want = question(&long);
    let got = c.until(b"\n").await;
    assert_bytes(&got, &want);
    // ...and the connection still works.
    let id4 = unique_id("after-long");
    check_at(
        &c.ask(iamat(&id4, "+1+1", "6")).await,
        "Goloman",
        &id4,
        b"+1+1",
        b"6",
    );

    // A last line ended by EOF is answered before the close.
    let mut last = herd.client("Goloman").await;
    let id5 = unique_id("eof");
    let mut line = iamat(&id5, "+1+1", "7");
    line.pop();
    last.send(&line).await;
    let rest = last.finish().await;
    check_at(&rest, "Goloman", &id5, b"+1+1", b"7");
}

/// Flooding over the default five-server herd: every server learns an IAMAT, newer
/// records supersede older ones whatever server they came through, older ones change nothing.
async fn flooding(stack: Stack) {
    let herd = ProcHerd::start(stack, DEFAULT_TOPOLOGY).await;
    let id = unique_id("flood");
    let base = now_nanos();
    let mut welsh = herd.client("Welsh").await;
    let first = welsh.ask(iamat(&id, LOC, &time_field(base))).await;
    check_at(
        &first,
        "Welsh",
        &id,
        LOC.as_bytes(),
        time_field(base).as_bytes(),
    );
    for name in NAMES {
        herd.wait_known(name, &id, &first).await;
    }

    // A newer IAMAT at Hands reaches Welsh, two hops the other way.
    let newer = herd
        .client("Hands")
        .await
        .ask(iamat(&id, "+1+1", &time_field(base + 1)))
        .await;
    check_at(
        &newer,
        "Hands",
        &id,
        b"+1+1",
        time_field(base + 1).as_bytes(),
    );
    for name in NAMES {
        herd.wait_known(name, &id, &newer).await;
    }

    // An older one at Goloman is answered with the stored (Hands) line and changes nothing.
    let old = herd
        .client("Goloman")
        .await
        .ask(iamat(&id, "+2+2", &time_field(base - 1)))
        .await;
    assert_bytes(&old, &newer);
    let until = Instant::now() + FAIR_CHANCE;
    while Instant::now() < until {
        for name in ["Welsh", "Wilkes"] {
            let held = herd.known(name, &id).await.expect("known");
            assert_bytes(&held, newer.strip_suffix(b"\n").unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A neighbour that dies never delays a reply, and when it is back the link comes back
/// by itself: updates reach it again.
async fn relinks(stack: Stack) {
    let mut herd = ProcHerd::start(stack, DEFAULT_TOPOLOGY).await;
    herd.kill("Holiday");
    let id = unique_id("alone");
    let asked = Instant::now();
    let reply = herd.client("Welsh").await.ask(iamat(&id, LOC, "10")).await;
    check_at(&reply, "Welsh", &id, LOC.as_bytes(), b"10");
    assert!(
        asked.elapsed() < IO_TIMEOUT,
        "a reply waited on a dead neighbour"
    );

    herd.restart("Holiday").await;
    // Welsh's link to Holiday may still be in its backoff: IAMATs of one fresh client, each
    // newer than the last, until Hands holds one of them (any one through is the link back).
    let id = unique_id("back");
    let mut welsh = herd.client("Welsh").await;
    let deadline = Instant::now() + SPREAD;
    loop {
        let t = time_field(now_nanos());
        let r = welsh.ask(iamat(&id, LOC, &t)).await;
        check_at(&r, "Welsh", &id, LOC.as_bytes(), t.as_bytes());
        if let Some(held) = herd.known("Hands", &id).await {
            assert!(held.starts_with(b"AT Welsh "), "{}", show(&held));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no IAMAT at Welsh reached Hands within {SPREAD:?} of Holiday's restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

macro_rules! stack_tests {
    ($module:ident, $stack:expr $(, #[$attr:meta])?) => {
        mod $module {
            use super::*;

            #[tokio::test]
            $(#[$attr])?
            async fn client_protocol() {
                super::client_protocol($stack).await;
            }

            #[tokio::test]
            $(#[$attr])?
            async fn flooding() {
                super::flooding($stack).await;
            }

            #[tokio::test]
            $(#[$attr])?
            async fn relinks() {
                super::relinks($stack).await;
            }
        }
    };
}

stack_tests!(herd, Stack::Herd);
stack_tests!(asyncio, Stack::Asyncio);
stack_tests!(node, Stack::Node);
stack_tests!(under_test, Stack::UnderTest, #[ignore = "needs HERD_UNDER_TEST; run with --run-ignored all"]);
