//! Hostile clients over real sockets: each limit of `[gateway]` bites (and is counted)
//! while a well-behaved client keeps being answered, sooner than the attack's own
//! timeout could have freed anything for it.

mod common;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    IO_TIMEOUT, ServerSpec, TempDir, TestHerd, assert_bytes, check_at, herd_toml_with, iamat,
    question, scrape_metrics, unique_id, wait_for,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

/// One server, Goloman, with `gateway` as its `[gateway]` table's keys.
async fn goloman(gateway: &str) -> TestHerd {
    TestHerd::start_with(&[("Goloman", &[])], &format!("[gateway]\n{gateway}\n")).await
}

/// One series' value in a scrape, e.g. `herd_client_connections_open{server="Goloman"}`.
fn series(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

fn refused(reason: &str) -> String {
    format!(r#"herd_client_connections_refused_total{{server="Goloman",reason="{reason}"}}"#)
}

fn closed(reason: &str) -> String {
    format!(r#"herd_client_connections_closed_total{{server="Goloman",reason="{reason}"}}"#)
}

const OPEN: &str = r#"herd_client_connections_open{server="Goloman"}"#;

/// Waits until the server holds `n` client connections.
async fn wait_open(peer: SocketAddr, n: u64) {
    wait_for(
        IO_TIMEOUT,
        &format!("{n} client connections open"),
        || async { (series(&scrape_metrics(peer).await, OPEN) == n).then_some(()) },
    )
    .await;
}

/// A well-behaved client's round trip: one IAMAT, its exact reply, and how long it took.
async fn round_trip(herd: &TestHerd) -> Duration {
    let started = Instant::now();
    let mut c = herd.client("Goloman").await;
    let id = unique_id("good");
    let reply = c.ask(iamat(&id, "+1+2", "3.5")).await;
    check_at(&reply, "Goloman", &id, b"+1+2", b"3.5");
    started.elapsed()
}

/// Waits until the server closes `s` (EOF or reset), failing after `timeout`; returns
/// the bytes read on the way.
async fn closed_by_server(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => panic!("still open after {timeout:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn connect_from(local: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((local, 0)))
        .expect("bind a loopback source address");
    tokio::time::timeout(IO_TIMEOUT, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_clients_a_client_is_refused_at_once_and_the_peer_port_answers() {
    // The idle timeout is long: nothing the attack holds is freed during the test.
    const IDLE: Duration = Duration::from_secs(120);
    let herd = goloman("max_clients = 20\nidle_timeout_ms = 120000").await;
    let peer = herd.peer_addr("Goloman");
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            TcpStream::connect(herd.client_addr("Goloman"))
                .await
                .unwrap(),
        );
    }
    wait_open(peer, 20).await;

    // The 21st is accepted and closed at once: EOF, no reply, counted.
    let mut extra = TcpStream::connect(herd.client_addr("Goloman"))
        .await
        .unwrap();
    let _ = extra.write_all(b"IAMAT x +1+2 3\n").await;
    assert_eq!(closed_by_server(&mut extra, IO_TIMEOUT).await, b"");
    let text = scrape_metrics(peer).await;
    assert_eq!(series(&text, &refused("max_clients")), 1, "{text}");
    assert_eq!(series(&text, OPEN), 20);
    assert!(
        started.elapsed() < IDLE,
        "answered only after {:?}",
        started.elapsed()
    );

    // The held ones are still served, and a slot freed is a slot for a new client.
    let held = idle.first_mut().unwrap();
    held.write_all(b"FOO\n").await.unwrap();
    let mut reply = [0u8; 6];
    tokio::time::timeout(IO_TIMEOUT, held.read_exact(&mut reply))
        .await
        .expect("a held client answered in time")
        .unwrap();
    assert_eq!(&reply, b"? FOO\n");
    drop(idle.pop());
    wait_open(peer, 19).await;
    let took = wait_for(IO_TIMEOUT, "a freed slot to serve a new client", || async {
        let mut c = TcpStream::connect(herd.client_addr("Goloman")).await.ok()?;
        c.write_all(b"FOO\n").await.ok()?;
        let mut reply = [0u8; 6];
        let n = tokio::time::timeout(IO_TIMEOUT, c.read(&mut reply))
            .await
            .ok()?
            .ok()?;
        (reply[..n] == *b"? FOO\n").then(|| started.elapsed())
    })
    .await;
    assert!(took < IDLE, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_clients_per_ip_an_address_is_refused_and_others_are_served() {
    let herd = goloman("max_clients_per_ip = 5\nidle_timeout_ms = 120000").await;
    let (client, peer) = (herd.client_addr("Goloman"), herd.peer_addr("Goloman"));
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from([127, 0, 0, 3], client).await);
    }
    wait_open(peer, 5).await;
    let mut sixth = connect_from([127, 0, 0, 3], client).await;
    assert_eq!(closed_by_server(&mut sixth, IO_TIMEOUT).await, b"");
    assert_eq!(
        series(&scrape_metrics(peer).await, &refused("max_clients_per_ip")),
        1
    );

    // Another address (127.0.0.1, the good client's) is served meanwhile.
    let took = round_trip(&herd).await;
    assert!(took < IO_TIMEOUT, "{took:?}");
    // The held ones are served too, and one closed frees its address's slot.
    for s in &mut held {
        s.write_all(b"FOO\n").await.unwrap();
        let mut reply = [0u8; 6];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"? FOO\n");
    }
    drop(held.pop());
    wait_open(peer, 4).await;
    let mut again = connect_from([127, 0, 0, 3], client).await;
    again.write_all(b"BAR\n").await.unwrap();
    let mut reply = [0u8; 6];
    tokio::time::timeout(IO_TIMEOUT, again.read_exact(&mut reply))
        .await
        .expect("answered in time")
        .expect("answered, not refused");
    assert_eq!(&reply, b"? BAR\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_no_complete_line_is_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(1500);
    let herd = goloman("idle_timeout_ms = 1500").await;
    let peer = herd.peer_addr("Goloman");
    let started = Instant::now();
    let mut silent = TcpStream::connect(herd.client_addr("Goloman"))
        .await
        .unwrap();
    // A client that sends a line now and then stays open well past the timeout.
    let mut chatty = herd.client("Goloman").await;
    let until = Instant::now() + 2 * IDLE;
    while Instant::now() < until {
        assert_bytes(&chatty.ask("FOO\n").await, b"? FOO\n");
        tokio::time::sleep(IDLE / 5).await;
    }
    assert_eq!(closed_by_server(&mut silent, IO_TIMEOUT).await, b"");
    assert!(
        started.elapsed() >= IDLE,
        "closed early: {:?}",
        started.elapsed()
    );
    assert_bytes(&chatty.ask("FOO\n").await, b"? FOO\n");
    assert_eq!(series(&scrape_metrics(peer).await, &closed("idle")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_lines_are_closed_after_the_line_timeout_while_good_clients_are_answered() {
    // The line timeout is short and the idle timeout long: only the slow-line limit
    // can close the slow connections.
    const LINE: Duration = Duration::from_secs(2);
    let herd = goloman("line_timeout_ms = 2000\nidle_timeout_ms = 120000").await;
    let peer = herd.peer_addr("Goloman");
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(
            TcpStream::connect(herd.client_addr("Goloman"))
                .await
                .unwrap(),
        );
    }
    // Each sends a byte of one line every 100 ms, and never its end.
    let dripping = tokio::spawn(async move {
        let mut closed = 0;
        let mut open: Vec<Option<TcpStream>> = slow.into_iter().map(Some).collect();
        while closed < open.len() {
            for s in &mut open {
                if let Some(stream) = s
                    && stream.write_all(b"I").await.is_err()
                {
                    *s = None;
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Instant::now()
    });
    // The good client, meanwhile, is answered before the timeout could free anything.
    for _ in 0..5 {
        let took = round_trip(&herd).await;
        assert!(took < LINE, "a good client waited {took:?}");
    }
    let all_closed = tokio::time::timeout(IO_TIMEOUT * 2, dripping)
        .await
        .expect("every slow connection closed")
        .unwrap();
    assert!(all_closed - started >= LINE, "closed early");
    assert_eq!(
        series(&scrape_metrics(peer).await, &closed("slow_line")),
        50
    );
    assert_eq!(series(&scrape_metrics(peer).await, &closed("idle")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_that_never_ends_is_a_slow_line() {
    // Past the 64 KiB limit the line is streamed back as it comes; it must still end.
    let herd = goloman("line_timeout_ms = 1000\nidle_timeout_ms = 120000").await;
    let mut s = TcpStream::connect(herd.client_addr("Goloman"))
        .await
        .unwrap();
    s.write_all(&vec![b'x'; 70_000]).await.unwrap();
    let echoed = closed_by_server(&mut s, IO_TIMEOUT).await;
    assert!(echoed.starts_with(b"? xxx"), "{}", echoed.len());
    assert_eq!(
        series(
            &scrape_metrics(herd.peer_addr("Goloman")).await,
            &closed("slow_line")
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_stopped_then_closed_and_others_are_answered() {
    const WRITE: Duration = Duration::from_secs(2);
    let herd = goloman("write_timeout_ms = 2000\nidle_timeout_ms = 120000").await;
    let peer = herd.peer_addr("Goloman");
    let mut setup = herd.client("Goloman").await;
    setup
        .ask(iamat(b"kiwi", "+34.068930-118.445127", "1"))
        .await;
    // WHATSATs of 20 places each: ~5 KB of replies per 19 bytes sent, never read.
    let mut hog = TcpStream::connect(herd.client_addr("Goloman"))
        .await
        .unwrap();
    let batch = b"WHATSAT kiwi 50 20\n".repeat(1000);
    let mut sent = 0usize;
    let stalled = loop {
        match tokio::time::timeout(Duration::from_millis(500), hog.write_all(&batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            // The server stopped reading: the kernel's buffers are full.
            Err(_) => break true,
            Ok(Err(_)) => break false,
        }
        assert!(
            sent < 64 << 20,
            "the server kept reading: {sent} bytes sent"
        );
    };
    let stalled_at = Instant::now();
    assert!(stalled, "the connection failed before it stalled");
    // Replies to what was sent would be gigabytes: the server read only a little.
    eprintln!("sent {sent} bytes before the server stopped reading");
    let took = round_trip(&herd).await;
    assert!(took < WRITE, "a good client waited {took:?}");
    wait_for(IO_TIMEOUT, "the hog closed for write_timeout", || async {
        (series(&scrape_metrics(peer).await, &closed("write_timeout")) == 1).then_some(())
    })
    .await;
    assert!(stalled_at.elapsed() < IO_TIMEOUT + WRITE);
    wait_open(peer, 1).await;
    let took = round_trip(&herd).await;
    assert!(took < WRITE, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_a_trickle_is_closed_after_the_write_timeout() {
    const WRITE: Duration = Duration::from_secs(2);
    let herd = goloman("write_timeout_ms = 2000\nidle_timeout_ms = 120000").await;
    let peer = herd.peer_addr("Goloman");
    let mut setup = herd.client("Goloman").await;
    setup
        .ask(iamat(b"kiwi", "+34.068930-118.445127", "1"))
        .await;
    // A small receive window, then megabytes of replies asked for, taken 2 KiB at a
    // time four times a second: always some progress, never the whole of what the
    // server holds within the timeout.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut hog = socket.connect(herd.client_addr("Goloman")).await.unwrap();
    let batch = b"WHATSAT kiwi 50 20\n".repeat(2000);
    let _ = tokio::time::timeout(Duration::from_secs(2), hog.write_all(&batch)).await;
    let started = Instant::now();
    let mut chunk = [0u8; 2048];
    let mut taken = 0usize;
    let closed_at = loop {
        assert!(
            started.elapsed() < IO_TIMEOUT + WRITE,
            "not closed after {:?}, {taken} bytes taken",
            started.elapsed()
        );
        if series(&scrape_metrics(peer).await, &closed("write_timeout")) == 1 {
            break started.elapsed();
        }
        let read = tokio::time::timeout(Duration::from_millis(100), hog.read(&mut chunk));
        if let Ok(Ok(n)) = read.await {
            taken += n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("closed after {closed_at:?}, {taken} bytes taken");
    assert!(taken > 0, "the client took nothing: not a trickle");
    let took = round_trip(&herd).await;
    assert!(took < WRITE, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_past_the_limit_gets_a_question_mark() {
    let herd = goloman("").await;
    let mut c = herd.client("Goloman").await;
    let long = vec![b'k'; 60_000];
    for line in [iamat(&long, "+1+2", "3"), {
        let mut w = b"WHATSAT ".to_vec();
        w.extend_from_slice(&long);
        w.extend_from_slice(b" 10 5\n");
        w
    }] {
        assert_bytes(&c.ask(&line).await, &question(&line));
    }
    // At the default limit exactly, it is a client ID like any other.
    let at_limit = vec![b'k'; herd::config::DEFAULT_MAX_CLIENT_ID];
    let reply = c.ask(iamat(&at_limit, "+1+2", "3")).await;
    check_at(&reply, "Goloman", &at_limit, b"+1+2", b"3");
    let text = scrape_metrics(herd.peer_addr("Goloman")).await;
    assert_eq!(
        series(
            &text,
            r#"herd_commands_total{server="Goloman",kind="invalid",outcome="client_id_too_long"}"#
        ),
        2
    );
    assert_eq!(herd.known("Goloman", &long).await, None);

    // The limit is the herd file's.
    let herd = goloman("max_client_id_bytes = 8").await;
    let mut c = herd.client("Goloman").await;
    let line = iamat(b"123456789", "+1+2", "3");
    assert_bytes(&c.ask(&line).await, &question(&line));
    check_at(
        &c.ask(iamat(b"12345678", "+1+2", "3")).await,
        "Goloman",
        b"12345678",
        b"+1+2",
        b"3",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_are_answered_and_the_connection_stays_usable() {
    let herd = goloman("").await;
    let mut c = herd.client("Goloman").await;
    for line in [
        &b"\0\0\0\n"[..],
        b"IAMAT \0 +1+2 3\n",
        b"\xff\xfe\xfd garbage \xc0\x80\n",
        b"WHATSAT \xed\xa0\x80 1 1\n",
        b"\x1b[2J\x07\x08\x7f\n",
    ] {
        if line.starts_with(b"IAMAT") {
            check_at(&c.ask(line).await, "Goloman", b"\0", b"+1+2", b"3");
        } else {
            assert_bytes(&c.ask(line).await, &question(line));
        }
    }
    // Spaces under the line limit are a blank line: no reply; the next line is answered.
    let mut spaces = vec![b' '; 60_000];
    spaces.extend_from_slice(b"\nFOO\n");
    assert_bytes(&c.ask(&spaces).await, b"? FOO\n");
    // A million spaces pass the 64 KiB limit: `? ` and every one of them.
    let million = vec![b' '; 1_000_000];
    c.send([&million[..], b"\n"].concat()).await;
    assert_bytes(&c.line().await, &[b"? ", &million[..], b"\n"].concat());
    // A 10 MB line is echoed whole after `? `, streamed, and the connection goes on.
    let big = vec![b'z'; 10_000_000];
    let mut line = big.clone();
    line.push(b'\n');
    let (mut read, mut write) = c.stream().split();
    let send = async {
        write.write_all(&line).await.unwrap();
        write.write_all(b"BAR\n").await.unwrap();
    };
    let want_len = 2 + big.len() + 1 + 6;
    let recv = async {
        let mut got = Vec::with_capacity(want_len);
        let mut chunk = vec![0u8; 1 << 16];
        while got.len() < want_len {
            let n = tokio::time::timeout(IO_TIMEOUT, read.read(&mut chunk))
                .await
                .expect("the echo keeps coming")
                .unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        got
    };
    let ((), got) = tokio::join!(send, recv);
    assert_eq!(got.len(), want_len);
    assert!(got.starts_with(b"? zzz") && got.ends_with(b"z\n? BAR\n"));
    assert!(got[2..2 + big.len()].iter().all(|&b| b == b'z'));
    let reply = c.ask(iamat(b"after", "+1+2", "3")).await;
    check_at(&reply, "Goloman", b"after", b"+1+2", b"3");
}

// ------------------------------------------------------- the descriptor reserve

/// A `herd serve Goloman` process whose open file limit is `limit`, killed on drop.
struct LimitedHerd {
    child: Child,
    _dir: TempDir,
}

impl Drop for LimitedHerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_never_take_the_reserved_descriptors_and_the_peer_port_keeps_working() {
    // The process may open 300 files and keeps 150 from clients: the clients get at
    // most 150, and a flood of 400 leaves /metrics and health working.
    let ports = common::reserve_ports(2);
    let dir = TempDir::new("fd-reserve");
    let config = dir.path().join("herd.toml");
    let spec = ServerSpec {
        name: "Goloman",
        client_port: ports[0],
        peer_port: ports[1],
        neighbours: &[],
    };
    std::fs::write(
        &config,
        herd_toml_with(
            &[spec],
            "[gateway]\nfd_reserve = 150\nidle_timeout_ms = 120000\n",
        ),
    )
    .unwrap();
    let child = Command::new("prlimit")
        .arg("--nofile=300:300")
        .arg(env!("CARGO_BIN_EXE_herd"))
        .args(["serve", "Goloman", "--config"])
        .arg(&config)
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env_remove("HERD_CONFIG")
        .env_remove("HERD_PLACES")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn herd under prlimit");
    let _herd = LimitedHerd { child, _dir: dir };
    let client: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let peer: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    wait_for(Duration::from_secs(30), "herd to listen", || async {
        TcpStream::connect(peer).await.ok().map(|_| ())
    })
    .await;

    let mut flood = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = TcpStream::connect(client).await {
            flood.push(s);
        }
    }
    let text = wait_for(IO_TIMEOUT, "the flood to be refused", || async {
        let text = scrape_metrics(peer).await;
        (series(&text, &refused("descriptors")) + series(&text, OPEN) >= 400).then_some(text)
    })
    .await;
    let open = series(&text, OPEN);
    assert_eq!(open, 150, "{text}");
    // Health answers over gRPC on the same port.
    let health = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["health", "--addr", &peer.to_string()])
        .output()
        .expect("run herd health");
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );
    // Some of the held connections are still served; a refused one read EOF.
    let mut served = 0;
    for s in flood.iter_mut().take(20) {
        let _ = s.write_all(b"FOO\n").await;
        let mut reply = [0u8; 6];
        if let Ok(Ok(_)) = tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut reply)).await {
            assert_eq!(&reply, b"? FOO\n");
            served += 1;
        }
    }
    assert!(served > 0, "none of the first 20 was served");
}
