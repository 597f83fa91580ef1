//! Peer authentication over real sockets with a real grpcurl: the herd secret on
//! `Inspect` and `Link`, mutual TLS with `herd certs`' certificates, and a spoofed
//! update (no secret, a wrong one, or another member's name with one's own
//! certificate) that reaches no server's table.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::{IO_TIMEOUT, ServerSpec, TempDir, TestHerd, herd_toml_with, wait_for};

const SECRET: &str = "s3cret-0123456789abcdef";
const PAIR: common::Topology<'static> = &[("Goloman", &["Hands"]), ("Hands", &["Goloman"])];

fn grpcurl_path() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| {
        let local = concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/bin/grpcurl");
        assert!(
            Path::new(local).exists(),
            "grpcurl not found: run tests/run.sh, which installs it, or set GRPCURL"
        );
        local.to_owned()
    })
}

/// How grpcurl reaches a server: plaintext, or TLS with the herd's CA (and perhaps a
/// client certificate).
#[derive(Clone)]
enum Transport {
    Plain,
    Tls {
        ca: PathBuf,
        server: String,
        client: Option<(PathBuf, PathBuf)>,
    },
}

/// Runs grpcurl against `addr` with `headers` and `args` (the method last), off the
/// runtime's threads.
async fn grpcurl(
    addr: SocketAddr,
    transport: &Transport,
    headers: &[String],
    args: &[&str],
) -> Output {
    let mut cmd = Command::new(grpcurl_path());
    cmd.args(["-max-time", "5"]);
    match transport {
        Transport::Plain => {
            cmd.arg("-plaintext");
        }
        Transport::Tls { ca, server, client } => {
            cmd.arg("-cacert").arg(ca).args(["-servername", server]);
            if let Some((cert, key)) = client {
                cmd.arg("-cert").arg(cert).arg("-key").arg(key);
            }
        }
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let (before, method) = args.split_at(args.len() - 1);
    cmd.args(before).arg(addr.to_string()).args(method);
    cmd.stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().expect("run grpcurl"))
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn bearer(secret: &str) -> String {
    format!("authorization: Bearer {secret}")
}

/// A secret file in `dir`.
fn secret_file(dir: &Path, secret: &str) -> PathBuf {
    let path = dir.join("secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

/// The two-server herd with SECRET in a file under `dir`.
async fn herd_with_secret(dir: &TempDir) -> TestHerd {
    let file = secret_file(dir.path(), SECRET);
    TestHerd::start_with(
        PAIR,
        &format!("[auth]\nsecret_file = {:?}\n", file.display().to_string()),
    )
    .await
}

/// Waits until `name` reports every link up (asked with the secret).
async fn wait_links_up(herd: &TestHerd, name: &str, transport: &Transport) {
    wait_for(IO_TIMEOUT, &format!("{name}'s links up"), || async {
        let out = grpcurl(
            herd.peer_addr(name),
            transport,
            &[bearer(SECRET)],
            &["herd.v1.Inspect/Links"],
        )
        .await;
        let t = text(&out);
        (out.status.success() && t.contains(r#""state": "up""#) && !t.contains("backoff"))
            .then_some(())
    })
    .await;
}

/// Waits until `name` holds a record for `client`.
async fn wait_holds(herd: &TestHerd, name: &str, transport: &Transport, client: &str) {
    wait_for(IO_TIMEOUT, &format!("{name} to hold {client}"), || async {
        holds(herd, name, transport, client).await.then_some(())
    })
    .await;
}

/// Whether `name` holds a record for `client` (asked with the secret).
async fn holds(herd: &TestHerd, name: &str, transport: &Transport, client: &str) -> bool {
    let out = grpcurl(
        herd.peer_addr(name),
        transport,
        &[bearer(SECRET)],
        &[
            "-d",
            &format!(r#"{{"client":"{client}"}}"#),
            "herd.v1.Inspect/Lookup",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    text(&out).contains(r#""found": true"#)
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One update (JSON) of `client` made by `origin`, forwarded by the servers in `seen`.
fn update_json(client: &str, origin: &str, seen: &[&str], seq: u64) -> String {
    let seen: Vec<String> = seen.iter().map(|s| format!("{s:?}")).collect();
    format!(
        r#"{{"clientId":"{}","location":"{}","clientTime":"{}","origin":"{origin}","timeDiff":"{}","label":{{"seconds":"4102444800","nanos":0,"origin":"{origin}"}},"seen":[{}],"version":{{"origin":"{origin}","incarnation":"7","seq":"{seq}"}}}}"#,
        b64(client.as_bytes()),
        b64(b"+10.000000+20.000000"),
        b64(b"4102444800"),
        b64(b"-2000000000.000000000"),
        seen.join(","),
    )
}

/// One `LinkMessage` carrying an update of `client` that claims to come from Goloman,
/// as an intruder who knows the protocol would write it (future-dated, so that it
/// would win over the client's real records).
fn forged_update(client: &str) -> String {
    format!(
        r#"{{"updates":[{}]}}"#,
        update_json(client, "Goloman", &["Goloman"], 1)
    )
}

/// A `Link` stream to Hands that says it is Goloman and sends `message`.
async fn link_as_goloman(
    herd: &TestHerd,
    transport: &Transport,
    auth: Option<&str>,
    message: &str,
) -> Output {
    let mut headers = vec!["herd-from: Goloman".to_owned(), "herd-to: Hands".to_owned()];
    headers.extend(auth.map(bearer));
    // The .proto given: without the secret, reflection is closed too.
    grpcurl(
        herd.peer_addr("Hands"),
        transport,
        &headers,
        &[
            "-import-path",
            PROTO,
            "-proto",
            "herd/v1/herd.proto",
            "-d",
            message,
            "herd.v1.Peer/Link",
        ],
    )
    .await
}

const PROTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");

/// `herd_peer_auth_refused_total{service,reason}` of `name`, read through grpcurl's
/// view of nothing: the metrics come over plain HTTP/1.1 on the peer port.
async fn refused(herd: &TestHerd, name: &str, service: &str, reason: &str) -> u64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(herd.peer_addr(name))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let series = format!(
        r#"herd_peer_auth_refused_total{{server="{name}",service="{service}",reason="{reason}"}} "#
    );
    body.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_needs_the_secret_for_inspect_and_link_and_a_spoof_reaches_no_table() {
    let dir = TempDir::new("secret");
    let mut herd = herd_with_secret(&dir).await;
    let plain = Transport::Plain;
    // The servers' own links carry the secret.
    wait_links_up(&herd, "Goloman", &plain).await;

    // Reflection needs the secret: without it grpcurl cannot even list the services.
    let hands = herd.peer_addr("Hands");
    let list = grpcurl(hands, &plain, &[], &["list"]).await;
    assert!(!list.status.success(), "{}", text(&list));
    assert!(text(&list).contains("Unauthenticated"), "{}", text(&list));
    assert!(!text(&list).contains("herd.v1.Inspect"), "{}", text(&list));
    let list = grpcurl(hands, &plain, &[bearer(SECRET)], &["list"]).await;
    assert!(list.status.success(), "{}", text(&list));
    assert!(text(&list).contains("herd.v1.Inspect"), "{}", text(&list));
    assert!(refused(&herd, "Hands", "reflection", "no_secret").await >= 1);

    // Inspect (its .proto given, as reflection is closed): without the secret, with
    // a wrong one, with the right one.
    let with_proto = |method| {
        [
            "-import-path",
            PROTO,
            "-proto",
            "herd/v1/herd.proto",
            method,
        ]
    };
    let none = grpcurl(hands, &plain, &[], &with_proto("herd.v1.Inspect/Links")).await;
    assert!(!none.status.success());
    assert!(text(&none).contains("Unauthenticated"), "{}", text(&none));
    let wrong = grpcurl(
        hands,
        &plain,
        &[bearer("s3cret-0123456789abcdeX")],
        &with_proto("herd.v1.Inspect/Links"),
    )
    .await;
    assert!(text(&wrong).contains("Unauthenticated"), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("wrong herd secret"),
        "{}",
        text(&wrong)
    );
    let right = grpcurl(hands, &plain, &[bearer(SECRET)], &["herd.v1.Inspect/Links"]).await;
    assert!(right.status.success(), "{}", text(&right));
    assert!(text(&right).contains(r#""neighbour": "Goloman""#));
    assert_eq!(refused(&herd, "Hands", "inspect", "no_secret").await, 1);
    assert_eq!(refused(&herd, "Hands", "inspect", "wrong_secret").await, 1);
    // Health and /metrics stay open (the scrapes above needed nothing): the secret
    // goes only to reflection here, not to the health call.
    let health = grpcurl(
        hands,
        &plain,
        &[],
        &[
            "-reflect-header",
            &bearer(SECRET),
            "grpc.health.v1.Health/Check",
        ],
    )
    .await;
    assert!(text(&health).contains("SERVING"), "{}", text(&health));

    // A spoofed update: refused without the secret and with a wrong one, and in no table.
    for auth in [None, Some("s3cret-0123456789abcdeX")] {
        let out = link_as_goloman(&herd, &plain, auth, &forged_update("intruder")).await;
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("Unauthenticated"), "{}", text(&out));
    }
    assert_eq!(refused(&herd, "Hands", "link", "no_secret").await, 1);
    assert_eq!(refused(&herd, "Hands", "link", "wrong_secret").await, 1);
    tokio::time::sleep(common::FAIR_CHANCE).await;
    for name in ["Goloman", "Hands"] {
        assert!(!holds(&herd, name, &plain, "intruder").await, "{name}");
    }
    // The links the intruder tried to take are still the servers' own.
    wait_links_up(&herd, "Hands", &plain).await;
    // The same message with the secret is applied (the secret is what kept it out):
    // whoever holds the secret is a member. Goloman stops first, so that its redial
    // cannot replace the stream before the message is read.
    herd.stop("Goloman").await;
    // (The stream may end before the server's first message: the client half-closes
    // at once. What counts is that the update was applied.)
    let out = link_as_goloman(&herd, &plain, Some(SECRET), &forged_update("member")).await;
    assert!(out.status.success(), "{}", text(&out));
    wait_holds(&herd, "Hands", &plain, "member").await;
}

/// `herd certs` for `topology`'s names, into `dir`.
fn make_certs(dir: &Path, topology: common::Topology<'_>) {
    let specs: Vec<ServerSpec<'_>> = topology
        .iter()
        .enumerate()
        .map(|(i, (name, neighbours))| ServerSpec {
            name,
            client_port: 20000 + 2 * i as u16,
            peer_port: 20001 + 2 * i as u16,
            neighbours,
        })
        .collect();
    let config = dir.join("names.toml");
    std::fs::write(&config, herd_toml_with(&specs, "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["certs", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(dir.join("certs"))
        .env_remove("HERD_CONFIG")
        .output()
        .expect("run herd certs");
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    for file in [
        "ca.pem",
        "ca.key",
        "Goloman.pem",
        "Goloman.key",
        "Welsh.pem",
    ] {
        assert!(listed.contains(file), "{file} not in {listed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_links_come_up_and_a_member_cannot_speak_for_another() {
    let dir = TempDir::new("mtls");
    // Welsh is a member of the herd file (so it has a certificate from the same CA)
    // but no neighbour of Hands: it tries to speak for Goloman.
    let topology: common::Topology<'static> = &[
        ("Goloman", &["Hands"]),
        ("Hands", &["Goloman"]),
        ("Welsh", &[]),
    ];
    make_certs(dir.path(), topology);
    let certs = dir.path().join("certs");
    let file = secret_file(dir.path(), SECRET);
    let mut herd = TestHerd::start_with(
        topology,
        &format!(
            "[auth]\nsecret_file = {:?}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            file.display().to_string(),
            certs.join("ca.pem").display().to_string(),
            certs.join("{server}.pem").display().to_string(),
            certs.join("{server}.key").display().to_string(),
        ),
    )
    .await;
    let tls = |server: &str, client: Option<&str>| Transport::Tls {
        ca: certs.join("ca.pem"),
        server: server.to_owned(),
        client: client.map(|c| {
            (
                certs.join(format!("{c}.pem")),
                certs.join(format!("{c}.key")),
            )
        }),
    };
    wait_links_up(&herd, "Goloman", &tls("Goloman", None)).await;
    wait_links_up(&herd, "Hands", &tls("Hands", None)).await;

    // Plaintext is not spoken on a TLS peer port.
    let plain = grpcurl(
        herd.peer_addr("Hands"),
        &Transport::Plain,
        &[bearer(SECRET)],
        &["herd.v1.Inspect/Links"],
    )
    .await;
    assert!(!plain.status.success(), "{}", text(&plain));
    // A certificate must name the server dialled.
    let misnamed = grpcurl(
        herd.peer_addr("Hands"),
        &tls("Goloman", None),
        &[bearer(SECRET)],
        &["herd.v1.Inspect/Links"],
    )
    .await;
    assert!(!misnamed.status.success(), "{}", text(&misnamed));

    // With the secret but no client certificate, or with Welsh's certificate while
    // saying Goloman: refused, and the update is in no table.
    for client in [None, Some("Welsh")] {
        let out = link_as_goloman(
            &herd,
            &tls("Hands", client),
            Some(SECRET),
            &forged_update("impostor"),
        )
        .await;
        assert!(!out.status.success(), "{client:?}: {}", text(&out));
        assert!(
            text(&out).contains("does not name the server in herd-from"),
            "{client:?}: {}",
            text(&out)
        );
    }
    tokio::time::sleep(common::FAIR_CHANCE).await;
    for name in ["Goloman", "Hands", "Welsh"] {
        assert!(
            !holds(&herd, name, &tls(name, None), "impostor").await,
            "{name}"
        );
    }
    wait_links_up(&herd, "Hands", &tls("Hands", None)).await;
    // Goloman's own certificate may say Goloman: the same message is applied (with
    // Goloman stopped, so that its redial cannot replace the stream first).
    herd.stop("Goloman").await;
    let out = link_as_goloman(
        &herd,
        &tls("Hands", Some("Goloman")),
        Some(SECRET),
        &forged_update("goloman-itself"),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    wait_holds(&herd, "Hands", &tls("Hands", None), "goloman-itself").await;
}

#[test]
fn a_server_with_a_wrong_secret_logs_why_its_links_are_refused() {
    // Two `herd serve` processes of one herd file, each with its own HERD_SECRET_FILE.
    let ports = common::reserve_ports(4);
    let dir = TempDir::new("wrong-secret");
    let config = dir.path().join("herd.toml");
    std::fs::write(&config, common::herd_file(PAIR, &ports)).unwrap();
    let mut children = Vec::new();
    for (name, secret) in [("Goloman", SECRET), ("Hands", "another-secret-0123456789")] {
        let secret_path = dir.path().join(format!("{name}.secret"));
        std::fs::write(&secret_path, secret).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(["serve", name, "--config"])
            .arg(&config)
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .env("HERD_SECRET_FILE", &secret_path)
            .env_remove("HERD_CONFIG")
            .env_remove("HERD_PLACES")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn herd serve");
        children.push(child);
    }
    struct Kill(Vec<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let _kill = Kill(children);
    let log = dir.path().join("logs").join("Goloman.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("neighbour refused the link") && l.contains("Hands"))
        {
            assert!(line.contains("wrong herd secret"), "{line}");
            assert!(!text.contains(SECRET), "the secret is never logged");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_a_bad_message_is_cut_off_with_an_error_and_none_of_it_is_applied() {
    let dir = TempDir::new("bad-peer");
    let mut herd = herd_with_secret(&dir).await;
    let plain = Transport::Plain;
    wait_links_up(&herd, "Hands", &plain).await;
    // The intruder speaks as Goloman, a neighbour of Hands; the real one is stopped,
    // so that its redial cannot replace the intruder's stream before it is read.
    herd.stop("Goloman").await;
    let many: Vec<String> = (0..5000).map(|i| format!("S{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    // Each message holds a good update first and a bad one after it.
    let cases = [
        (
            "huge seen list",
            update_json("x2", "Goloman", &many, 2),
            "seen list has 5000 names, more than the herd's 2 servers",
        ),
        (
            "bad label",
            update_json("x3", "Goloman", &["Goloman"], 3)
                .replace(r#""seconds":"4102444800""#, r#""seconds":"12x""#),
            "bad message",
        ),
        (
            "bad watermark",
            String::new(),
            "eviction watermark \"12x.000000005 kiwi\" is not a valid",
        ),
    ];
    for (i, (what, bad, says)) in cases.iter().enumerate() {
        let good = update_json(
            &format!("good-before-bad-{i}"),
            "Goloman",
            &["Goloman"],
            10 + i as u64,
        );
        let message = match *what {
            // The floors beside a good update name an eviction watermark whose
            // seconds are no number (its client ID is "kiwi", base64).
            "bad watermark" => format!(
                r#"{{"updates":[{good}],"floors":{{"evicted":{{"seconds":"12x","nanos":5,"clientId":"a2l3aQ=="}}}}}}"#
            ),
            _ => format!(r#"{{"updates":[{good},{bad}]}}"#),
        };
        let out = link_as_goloman(&herd, &plain, Some(SECRET), &message).await;
        let t = text(&out);
        assert!(!out.status.success(), "{what}: {t}");
        assert!(
            t.contains("InvalidArgument"),
            "{what}: the status is not OK: {t}"
        );
        assert!(t.contains(says), "{what}: {t}");
        assert!(
            !holds(&herd, "Hands", &plain, &format!("good-before-bad-{i}")).await,
            "{what}: the message's good update was applied"
        );
    }
    // An update whose origin is not a server of the herd file is refused (not stored),
    // but the neighbour is not cut off, for its herd file may be newer (a server added
    // and reloaded there first: PROTOCOL.md, "Live membership"); the rest of the
    // message is applied, and the refusal counted.
    let good = update_json("good-beside-unknown", "Goloman", &["Goloman"], 20);
    let unknown = update_json("x1", "Nobody", &["Nobody"], 1);
    let out = link_as_goloman(
        &herd,
        &plain,
        Some(SECRET),
        &format!(r#"{{"updates":[{good},{unknown}]}}"#),
    )
    .await;
    let t = text(&out);
    assert!(!t.contains("InvalidArgument"), "not cut off: {t}");
    assert!(holds(&herd, "Hands", &plain, "good-beside-unknown").await);
    assert!(
        !holds(&herd, "Hands", &plain, "x1").await,
        "Nobody's update was stored"
    );
    let metrics = common::scrape_metrics(herd.peer_addr("Hands")).await;
    assert!(
        metrics.contains(r#"herd_backbone_unknown_origin_updates_total{server="Hands"} 1"#),
        "{metrics}"
    );
    // The server keeps serving: its own link comes back, clients are answered.
    herd.restart("Goloman").await;
    wait_links_up(&herd, "Hands", &plain).await;
    let mut c = herd.client("Hands").await;
    let reply = c.ask(common::iamat(b"after-bad-peer", "+1+2", "3")).await;
    common::check_at(&reply, "Hands", b"after-bad-peer", b"+1+2", b"3");
}
