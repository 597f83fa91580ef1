//! Several in-process servers with real listeners and real gRPC links: flooding
//! across the default topology, convergence, stale updates, restarts with catch-up,
//! partitions, and neighbours that are down or hung (PROTOCOL.md, "Server to server").

mod common;

use std::time::{Duration, Instant};

use common::{
    DIAL_TIMEOUT, FAIR_CHANCE, NAMES, SPREAD, TestHerd, assert_bytes, at_fields, check_at, iamat,
    now_nanos, show, time_field, unique_id, wait_for,
};

const UCLA: &str = "+34.068930-118.445127";

/// An IAMAT at `server`; returns its AT line without the newline.
async fn iamat_at(herd: &TestHerd, server: &str, id: &[u8], location: &str, time: &str) -> Vec<u8> {
    let mut c = herd.client(server).await;
    let mut reply = c.ask(iamat(id, location, time)).await;
    check_at(&reply, server, id, location.as_bytes(), time.as_bytes());
    reply.pop();
    reply
}

/// An IAMAT at `server`; returns its reply, whatever it is, without the newline.
async fn raw_iamat(
    herd: &TestHerd,
    server: &str,
    id: &[u8],
    location: &str,
    time: &str,
) -> Vec<u8> {
    let mut c = herd.client(server).await;
    let mut reply = c.ask(iamat(id, location, time)).await;
    reply.pop();
    reply
}

/// A client time a few seconds in the past, unique enough per call.
fn recent() -> String {
    time_field(now_nanos() - 3_000_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iamat_at_welsh_reaches_every_server_byte_identical() {
    let herd = TestHerd::default_topology().await;
    let id = unique_id("kiwi.cs.ucla.edu");
    let at = iamat_at(&herd, "Welsh", &id, UCLA, &recent()).await;
    // Hands is three hops from Welsh (Welsh - Holiday - Goloman/Wilkes - Hands).
    herd.wait_known("Hands", &id, &at).await;
    for name in NAMES {
        herd.wait_known(name, &id, &at).await;
    }
    // The whole WHATSAT reply is the same everywhere: same AT line, same places.
    let mut replies = Vec::new();
    for name in NAMES {
        let mut c = herd.client(name).await;
        let mut line = b"WHATSAT ".to_vec();
        line.extend_from_slice(&id);
        line.extend_from_slice(b" 10 5\n");
        replies.push(c.whatsat(&line).await);
    }
    for r in &replies[1..] {
        assert_bytes(r, &replies[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_from_every_server_reach_every_other() {
    let herd = TestHerd::default_topology().await;
    let mut sent = Vec::new();
    for name in NAMES {
        let id = unique_id(&format!("from-{name}"));
        let at = iamat_at(&herd, name, &id, "-33.8688+151.2093", &recent()).await;
        sent.push((id, at));
    }
    for (id, at) in &sent {
        for name in NAMES {
            herd.wait_known(name, id, at).await;
        }
    }
    // A newer IAMAT of the same client at another server replaces it everywhere.
    let (id, _) = &sent[0];
    let newer = iamat_at(&herd, "Hands", id, "+1+1", &recent()).await;
    for name in NAMES {
        herd.wait_known(name, id, &newer).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_times_at_two_servers_converge_on_one_line() {
    let herd = TestHerd::default_topology().await;
    // Several clients, each sending one time to two far-apart servers at once.
    let pairs = [
        ("Welsh", "Hands"),
        ("Goloman", "Wilkes"),
        ("Hands", "Holiday"),
    ];
    let mut cases = Vec::new();
    for (a, b) in pairs {
        for _ in 0..3 {
            let id = unique_id("twin");
            let time = recent();
            let (ra, rb) = tokio::join!(
                raw_iamat(&herd, a, &id, "+10+10", &time),
                raw_iamat(&herd, b, &id, "-20-20", &time)
            );
            // Each reply is the server's own new line, or (when the other's update got
            // there first) the other's line, stored: the two replies name one origin
            // each, and if they differ each names its own server.
            let origin = |r: &[u8]| String::from_utf8_lossy(at_fields(r)[1]).into_owned();
            if ra != rb {
                assert_eq!((origin(&ra), origin(&rb)), (a.to_owned(), b.to_owned()));
            } else {
                assert!([a, b].contains(&origin(&ra).as_str()), "{:?}", show(&ra));
            }
            cases.push((id, ra, rb));
        }
    }
    for (id, ra, rb) in &cases {
        let agreed = wait_for(SPREAD, "all five servers to agree", || async {
            let mut lines = Vec::new();
            for name in NAMES {
                lines.push(herd.known(name, id).await?);
            }
            lines
                .windows(2)
                .all(|w| w[0] == w[1])
                .then(|| lines[0].clone())
        })
        .await;
        assert!(
            &agreed == ra || &agreed == rb,
            "converged on {:?}, which is neither reply ({:?}, {:?})",
            show(&agreed),
            show(ra),
            show(rb)
        );
        // And they stay there.
        for name in NAMES {
            assert_eq!(herd.known(name, id).await.as_deref(), Some(&agreed[..]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_iamat_is_not_flooded() {
    let herd = TestHerd::default_topology().await;
    let id = unique_id("stale");
    let time = recent();
    // Goloman's name sorts first: had a later server flooded a record of the same time,
    // the herd's order (time, then origin name) would have preferred it.
    let first = iamat_at(&herd, "Goloman", &id, UCLA, &time).await;
    for name in NAMES {
        herd.wait_known(name, &id, &first).await;
    }
    // Same time at other servers, and older times: each answered with the stored line.
    for (server, t) in [
        ("Wilkes", time.clone()),
        ("Welsh", time.clone()),
        ("Goloman", time.clone()),
        ("Hands", time_field(now_nanos() - 60_000_000_000)),
        ("Holiday", "1".to_owned()),
    ] {
        let mut c = herd.client(server).await;
        let reply = c.ask(iamat(&id, "+89+179", &t)).await;
        let mut want = first.clone();
        want.push(b'\n');
        assert_bytes(&reply, &want);
    }
    // A fence: a new client's IAMAT at Wilkes travels the same links after them.
    let fence = unique_id("fence");
    let fence_at = iamat_at(&herd, "Wilkes", &fence, "+1+1", &recent()).await;
    for name in NAMES {
        herd.wait_known(name, &fence, &fence_at).await;
    }
    let until = Instant::now() + FAIR_CHANCE;
    while Instant::now() < until {
        for name in NAMES {
            assert_eq!(
                herd.known(name, &id).await.as_deref().map(show),
                Some(show(&first)),
                "{name} changed its record after a stale IAMAT"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_rejoins_and_catches_up() {
    let mut herd = TestHerd::default_topology().await;
    let before = unique_id("before");
    let at_before = iamat_at(&herd, "Goloman", &before, UCLA, &recent()).await;
    for name in NAMES {
        herd.wait_known(name, &before, &at_before).await;
    }

    // A record Hands made itself: it loses it with its store, and gets it back.
    let own = unique_id("own");
    let own_time = recent();
    let at_own = iamat_at(&herd, "Hands", &own, "-1-1", &own_time).await;
    for name in NAMES {
        herd.wait_known(name, &own, &at_own).await;
    }

    herd.stop("Hands").await;
    // Missed while Hands was down: a new client, and a newer record of a known one.
    let missed = unique_id("missed");
    let at_missed = iamat_at(&herd, "Welsh", &missed, "+1+1", &recent()).await;
    let at_before2 = iamat_at(&herd, "Holiday", &before, "+2+2", &recent()).await;
    for name in ["Goloman", "Holiday", "Welsh", "Wilkes"] {
        herd.wait_known(name, &missed, &at_missed).await;
        herd.wait_known(name, &before, &at_before2).await;
    }

    herd.restart("Hands").await;
    // Nothing else is done: Hands dials its neighbours, and they send what it missed.
    herd.wait_known("Hands", &missed, &at_missed).await;
    herd.wait_known("Hands", &before, &at_before2).await;
    herd.wait_known("Hands", &own, &at_own).await;
    // Its restored record makes a repeat of that IAMAT stale.
    let mut c = herd.client("Hands").await;
    let mut want = at_own.clone();
    want.push(b'\n');
    assert_bytes(&c.ask(iamat(&own, "+45+45", &own_time)).await, &want);

    // New updates reach it, and its own reach the others.
    let after = unique_id("after");
    let at_after = iamat_at(&herd, "Welsh", &after, "+3+3", &recent()).await;
    herd.wait_known("Hands", &after, &at_after).await;
    let from_hands = unique_id("from-hands");
    let at_from_hands = iamat_at(&herd, "Hands", &from_hands, "+4+4", &recent()).await;
    for name in NAMES {
        herd.wait_known(name, &from_hands, &at_from_hands).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cut_vertex_restarts_and_the_herd_heals() {
    // Holiday is Welsh's only neighbour: while it is down Welsh is alone.
    let mut herd = TestHerd::default_topology().await;
    herd.stop("Holiday").await;
    let lonely = unique_id("lonely");
    let at_lonely = iamat_at(&herd, "Welsh", &lonely, "+5+5", &recent()).await;
    let crowd = unique_id("crowd");
    let at_crowd = iamat_at(&herd, "Goloman", &crowd, "+6+6", &recent()).await;
    herd.wait_known("Hands", &crowd, &at_crowd).await;
    herd.wait_known("Wilkes", &crowd, &at_crowd).await;
    for name in ["Goloman", "Hands", "Wilkes"] {
        herd.assert_never_known(name, &lonely).await;
    }
    herd.assert_never_known("Welsh", &crowd).await;

    herd.restart("Holiday").await;
    for name in NAMES {
        herd.wait_known(name, &lonely, &at_lonely).await;
        herd.wait_known(name, &crowd, &at_crowd).await;
    }
    // Restarted twice in a row, it still rejoins.
    herd.stop("Holiday").await;
    herd.restart("Holiday").await;
    let again = unique_id("again");
    let at_again = iamat_at(&herd, "Welsh", &again, "+7+7", &recent()).await;
    for name in NAMES {
        herd.wait_known(name, &again, &at_again).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_servers_stopped_updates_reach_exactly_the_connected_ones() {
    // Without Goloman and Wilkes the herd splits into {Holiday, Welsh} and {Hands}.
    let mut herd = TestHerd::default_topology().await;
    herd.stop("Goloman").await;
    herd.stop("Wilkes").await;

    let west = unique_id("west");
    let at_west = iamat_at(&herd, "Welsh", &west, "+8+8", &recent()).await;
    herd.wait_known("Holiday", &west, &at_west).await;
    herd.assert_never_known("Hands", &west).await;

    let east = unique_id("east");
    let at_east = iamat_at(&herd, "Hands", &east, "+9+9", &recent()).await;
    herd.assert_never_known("Holiday", &east).await;
    herd.assert_never_known("Welsh", &east).await;

    // The other split: without Holiday and Goloman, {Hands, Wilkes} and {Welsh}.
    herd.restart("Goloman").await;
    herd.restart("Wilkes").await;
    for name in NAMES.iter().filter(|n| **n != "Holiday" && **n != "Welsh") {
        herd.wait_known(name, &east, &at_east).await;
    }
    for name in NAMES {
        herd.wait_known(name, &west, &at_west).await;
        herd.wait_known(name, &east, &at_east).await;
    }
    herd.stop("Holiday").await;
    herd.stop("Goloman").await;
    let north = unique_id("north");
    let at_north = iamat_at(&herd, "Wilkes", &north, "+10+10", &recent()).await;
    herd.wait_known("Hands", &north, &at_north).await;
    herd.assert_never_known("Welsh", &north).await;

    // Healed again: everyone gets it.
    herd.restart("Holiday").await;
    herd.restart("Goloman").await;
    for name in NAMES {
        herd.wait_known(name, &north, &at_north).await;
    }
}

/// Asserts that IAMATs at `server` are answered before a dial of the down neighbour
/// could have timed out (or a redial backoff passed).
async fn assert_prompt(herd: &TestHerd, server: &str) {
    let mut c = herd.client(server).await;
    for _ in 0..5 {
        let id = unique_id("prompt");
        let started = Instant::now();
        let reply = c.ask(iamat(&id, "+1+1", &recent())).await;
        let took = started.elapsed();
        assert!(reply.starts_with(b"AT "), "{:?}", show(&reply));
        assert!(
            took < DIAL_TIMEOUT,
            "IAMAT at {server} took {took:?} with a neighbour down"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_neighbour_never_delays_a_client() {
    let mut herd = TestHerd::default_topology().await;
    // Right after the stop (the dialers are redialling) and later (backing off).
    herd.stop("Wilkes").await;
    herd.stop("Holiday").await;
    assert_prompt(&herd, "Goloman").await;
    assert_prompt(&herd, "Hands").await;
    assert_prompt(&herd, "Welsh").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_prompt(&herd, "Goloman").await;
    assert_prompt(&herd, "Welsh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_neighbour_never_delays_a_client() {
    // B's peer port accepts TCP connections (the kernel's backlog does) but nothing
    // ever answers on them: dials hang rather than fail.
    let mut herd = TestHerd::start(&[("A", &["B"]), ("B", &["A"])]).await;
    herd.stop("B").await;
    let b_peer = herd_peer_addr(&herd, "B");
    let black_hole = tokio::net::TcpListener::bind(b_peer)
        .await
        .expect("bind B's peer port");
    let id = unique_id("hung");
    for _ in 0..3 {
        let mut c = herd.client("A").await;
        let started = Instant::now();
        let reply = c.ask(iamat(&id, "+1+1", &recent())).await;
        assert!(reply.starts_with(b"AT A "), "{:?}", show(&reply));
        // A's dial of B hangs until its timeout: answered before it could fire.
        assert!(started.elapsed() < DIAL_TIMEOUT, "{:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(black_hole);
}

/// B's peer address, read back from the herd file the test herd wrote.
fn herd_peer_addr(herd: &TestHerd, name: &str) -> std::net::SocketAddr {
    let config = herd::config::HerdConfig::parse(herd.toml(), "test").expect("herd file");
    config.server(name).expect("server").peer_addr()
}
