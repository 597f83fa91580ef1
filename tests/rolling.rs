//! A rolling restart under load (deploy/rolling-restart.sh): five real servers with
//! data dirs, restarted one at a time while clients send IAMATs without pause, each
//! client retrying on another server when its own goes away. No command fails, no
//! acknowledged IAMAT is lost, and each server exits within its grace period.

mod common;

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{TempDir, iamat, reserve_ports, wait_for};
use herd::proto::{FloorsRequest, LookupRequest, inspect_client::InspectClient};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

const HERD: &str = env!("CARGO_BIN_EXE_herd");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rolling-restart.sh");
const NAMES: [&str; 5] = ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"];
/// The servers' `shutdown_grace_ms`, and what a stop may take at most on top (the
/// process's own exit, a busy machine).
const GRACE_MS: u64 = 2000;
const EXIT_SLACK: Duration = Duration::from_secs(2);

/// Kills every server whose PID file is in `run` (the script's, and ours).
struct KillAll<'a>(&'a Path);

impl Drop for KillAll<'_> {
    fn drop(&mut self) {
        for name in NAMES {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(format!("{name}.pid"))) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
            }
        }
    }
}

/// One client: IAMATs one after another, each to the server it is connected to; a
/// connection that fails or ends without the reply sends the same IAMAT to the
/// next server. Returns the IAMATs acknowledged (client ID and reply) and those that
/// failed everywhere.
async fn client(
    id: usize,
    ports: Arc<Vec<SocketAddr>>,
    stop: Arc<AtomicBool>,
    retries: Arc<AtomicU64>,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    let mut at = id % ports.len();
    let mut conn: Option<(BufReader<TcpStream>,)> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let client_id = format!("load-{id}-{n}");
        let line = iamat(
            client_id.as_bytes(),
            "+34.068930-118.445127",
            &format!("1520023934.{n:09}"),
        );
        let started = Instant::now();
        let reply = loop {
            if started.elapsed() > Duration::from_secs(30) {
                break None;
            }
            if conn.is_none() {
                match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(ports[at]))
                    .await
                {
                    Ok(Ok(s)) => conn = Some((BufReader::new(s),)),
                    _ => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        at = (at + 1) % ports.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let (stream,) = conn.as_mut().expect("connected");
            let mut got = String::new();
            let ok = async {
                stream.get_mut().write_all(&line).await?;
                let n = stream.read_line(&mut got).await?;
                Ok::<_, std::io::Error>(n > 0 && got.ends_with('\n'))
            };
            match tokio::time::timeout(Duration::from_secs(5), ok).await {
                Ok(Ok(true)) => break Some(got),
                _ => {
                    // Gone (restarting): the same IAMAT to the next server.
                    conn = None;
                    retries.fetch_add(1, Ordering::Relaxed);
                    at = (at + 1) % ports.len();
                }
            }
        };
        match reply {
            Some(r) if r.starts_with("AT ") => acked.push((client_id, r.trim_end().to_owned())),
            _ => failed.push(client_id),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (acked, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_acknowledged_iamat_and_fails_no_command() {
    let dir = TempDir::new("rolling");
    let ports = reserve_ports(10);
    let topology: [(&str, &[&str]); 5] = [
        ("Goloman", &["Hands", "Holiday", "Wilkes"]),
        ("Hands", &["Goloman", "Wilkes"]),
        ("Holiday", &["Goloman", "Welsh", "Wilkes"]),
        ("Welsh", &["Holiday"]),
        ("Wilkes", &["Goloman", "Hands", "Holiday"]),
    ];
    let mut text = format!("shutdown_grace_ms = {GRACE_MS}\n[places]\nprovider = \"offline\"\n");
    for (i, (name, neighbours)) in topology.iter().enumerate() {
        let list: Vec<String> = neighbours.iter().map(|n| format!("{n:?}")).collect();
        text.push_str(&format!(
            "\n[[server]]\nname = {name:?}\nhost = \"127.0.0.1\"\nclient_port = {}\npeer_port = {}\nneighbours = [{}]\n",
            ports[2 * i],
            ports[2 * i + 1],
            list.join(", ")
        ));
    }
    let config = dir.path().join("herd.toml");
    std::fs::write(&config, text).expect("write the herd file");
    let (run, data, logs) = (
        dir.path().join("run"),
        dir.path().join("data"),
        dir.path().join("logs"),
    );
    let _kill = KillAll(&run);
    // The herd starts as the script starts a server it finds not running.
    let start = Command::new("sh")
        .arg(SCRIPT)
        .args(["--config", &config.display().to_string()])
        .args(["--run-dir", &run.display().to_string()])
        .args(["--data-dir", &data.display().to_string()])
        .args(["--log-dir", &logs.display().to_string()])
        .args(["--bin", HERD])
        .env_remove("HERD_CONFIG")
        .env_remove("HERD_DATA_DIR")
        .output()
        .expect("run the script");
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );

    let clients: Arc<Vec<SocketAddr>> = Arc::new(
        (0..5)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], ports[2 * i])))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|i| tokio::spawn(client(i, clients.clone(), stop.clone(), retries.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let script = {
        let (config, run, data, logs) = (config.clone(), run.clone(), data.clone(), logs.clone());
        tokio::task::spawn_blocking(move || {
            Command::new("sh")
                .arg(SCRIPT)
                .args(["--config", &config.display().to_string()])
                .args(["--run-dir", &run.display().to_string()])
                .args(["--data-dir", &data.display().to_string()])
                .args(["--log-dir", &logs.display().to_string()])
                .args(["--bin", HERD])
                .env_remove("HERD_CONFIG")
                .env_remove("HERD_DATA_DIR")
                .stdin(Stdio::null())
                .output()
                .expect("run the script")
        })
    };
    let out = script.await.expect("the script ran");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for task in load {
        let (a, f) = task.await.expect("a client");
        acked.extend(a);
        failed.extend(f);
    }

    // Every server was stopped and restarted, each within its grace period.
    for name in NAMES {
        let line = said
            .lines()
            .find(|l| l.contains(&format!("{name}: stopped after ")))
            .unwrap_or_else(|| panic!("{name} was not stopped: {said}"));
        let secs: f64 = line
            .rsplit("stopped after ")
            .next()
            .and_then(|s| s.trim_end_matches('s').parse().ok())
            .expect("seconds");
        assert!(
            Duration::from_secs_f64(secs) <= Duration::from_millis(GRACE_MS) + EXIT_SLACK,
            "{name} took {secs}s to stop"
        );
    }
    let retried = retries.load(Ordering::Relaxed);
    assert!(failed.is_empty(), "failed commands: {failed:?}");
    assert!(
        retried > 0,
        "no client had to retry: the restarts were not under load"
    );
    assert!(
        acked.len() > 500,
        "only {} IAMATs acknowledged",
        acked.len()
    );

    // Every acknowledged IAMAT is held by every server, as acknowledged.
    let peers: Vec<String> = (0..5)
        .map(|i| format!("http://127.0.0.1:{}", ports[2 * i + 1]))
        .collect();
    let inspect = |i: usize| {
        let url = peers[i].clone();
        async move { InspectClient::connect(url).await.expect("inspect") }
    };
    let digests = wait_for(
        Duration::from_secs(30),
        "every server with the same table",
        || async {
            let mut seen = Vec::new();
            for i in 0..5 {
                let r = inspect(i)
                    .await
                    .floors(FloorsRequest {})
                    .await
                    .ok()?
                    .into_inner();
                seen.push((r.records, r.digest));
            }
            seen.windows(2).all(|w| w[0] == w[1]).then_some(seen)
        },
    )
    .await;
    assert!(digests[0].0 >= acked.len() as u64);
    let mut c = inspect(0).await;
    for (id, reply) in &acked {
        let r = c
            .lookup(LookupRequest {
                client: id.clone(),
                client_id: Default::default(),
            })
            .await
            .expect("lookup")
            .into_inner();
        assert!(r.found, "{id} acknowledged ({reply}) and lost");
        // A retried IAMAT may have been stored by two servers (its first one
        // answered as it went down); the one held is either: the same client, place
        // and time.
        let tail = |l: &str| l.split(' ').skip(3).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            tail(&r.at_line),
            tail(reply),
            "{id}: acknowledged {reply:?}"
        );
    }
    println!(
        "rolling restart: {} IAMATs acknowledged, {retried} retries, 0 failed\n{said}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_exits_within_the_grace_period_with_work_in_flight() {
    // A places provider that accepts and never answers holds a WHATSAT for a minute:
    // the server stops accepting at once and exits once its grace period is over.
    let hung = StdListener::bind("127.0.0.1:0").expect("bind");
    let hung_addr = hung.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hung.incoming().flatten() {
            held.push(s);
        }
    });
    let dir = TempDir::new("grace");
    let ports = reserve_ports(2);
    let grace = Duration::from_millis(1000);
    let text = format!(
        "shutdown_grace_ms = {}\n[places]\nprovider = \"google\"\ntimeout_ms = 60000\nattempt_timeout_ms = 60000\n\n[[server]]\nname = \"Goloman\"\nhost = \"127.0.0.1\"\nclient_port = {}\npeer_port = {}\n",
        grace.as_millis(),
        ports[0],
        ports[1]
    );
    let config = dir.path().join("herd.toml");
    std::fs::write(&config, text).expect("write the herd file");
    let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr");
    let mut child = Command::new(HERD)
        .args(["serve", "Goloman", "--config"])
        .arg(&config)
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env_remove("HERD_CONFIG")
        .env_remove("HERD_PLACES")
        .env("GOOGLE_PLACES_API_KEY", "not-a-real-key")
        .env("HERD_PLACES_URL", format!("http://{hung_addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn herd");
    let client_addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let mut c = wait_for(Duration::from_secs(10), "the client port", || async {
        TcpStream::connect(client_addr).await.ok()
    })
    .await;
    c.write_all(&iamat(b"kiwi", "+34.068930-118.445127", "1520023934.5"))
        .await
        .expect("send");
    c.write_all(b"WHATSAT kiwi 10 2\n").await.expect("send");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    // It stops accepting at once.
    wait_for(Duration::from_secs(1), "the client port closed", || async {
        TcpStream::connect(client_addr).await.is_err().then_some(())
    })
    .await;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            sent.elapsed() < grace + EXIT_SLACK,
            "still running {:?} after SIGTERM (grace {grace:?})",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    assert!(status.success(), "{status}");
    // It did wait for the WHATSAT in flight, up to the grace period.
    assert!(
        took >= grace - Duration::from_millis(100),
        "exited after {took:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("logs/Goloman.log")).unwrap_or_default();
    assert!(log.contains("stopped before every task finished"), "{log}");
}
