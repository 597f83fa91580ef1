//! One server, raw bytes in, exact bytes out: IAMAT, WHATSAT, `?`, the whitespace
//! set, line ends, half-close, pipelining, fragments and overlong lines (PROTOCOL.md,
//! "Client protocol").

mod common;

use std::time::{Duration, Instant};

use common::{
    Client, TestHerd, assert_bytes, at_fields, check_at, diff_nanos, iamat, now_nanos, question,
    scrape_metrics, show, time_field,
};
use herd::{gateway::MAX_LINE, places::PlacesRequest};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

const UCLA: &str = "+34.068930-118.445127";
/// Open ocean, far from any island: no place within 50 km.
const PACIFIC: &str = "-30.000000-140.000000";
const SECOND: i128 = 1_000_000_000;

/// How long the offline places index may take to build. It is built once per test
/// process, in the background: seconds in a debug build, many more on a loaded 2-core
/// machine running other test processes that build it too.
const INDEX_TIMEOUT: Duration = Duration::from_secs(300);

/// Server Goloman alone, once the places index is built: the first WHATSAT of a test
/// process would otherwise wait for the build under the client's per-read deadline,
/// which is there to catch a server that does not answer, not a slow build.
async fn goloman() -> TestHerd {
    let herd = TestHerd::single("Goloman").await;
    let probe = PlacesRequest {
        lat: 0.0,
        lon: 0.0,
        radius_m: 1.0,
        bound: 1,
    };
    tokio::time::timeout(
        INDEX_TIMEOUT,
        tower::ServiceExt::oneshot(common::offline(), probe),
    )
    .await
    .unwrap_or_else(|_| panic!("the places index was not built within {INDEX_TIMEOUT:?}"))
    .expect("the offline places lookup");
    herd
}

/// Sends an IAMAT and returns its reply (checked byte for byte but for the diff).
async fn register(c: &mut Client, id: &[u8], location: &str, time: &str) -> Vec<u8> {
    let reply = c.ask(iamat(id, location, time)).await;
    check_at(&reply, "Goloman", id, location.as_bytes(), time.as_bytes());
    reply
}

/// Splits a WHATSAT reply into its AT line (with LF) and its JSON, checking the
/// framing: AT line, LF, JSON with no empty line and no trailing newline, LF LF.
#[track_caller]
fn split_whatsat(reply: &[u8]) -> (Vec<u8>, Value) {
    let nl = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or_else(|| panic!("no line in {:?}", show(reply)));
    let (at, rest) = reply.split_at(nl + 1);
    let json = rest
        .strip_suffix(b"\n\n")
        .unwrap_or_else(|| panic!("reply does not end with an empty line: {:?}", show(reply)));
    assert!(
        !json.ends_with(b"\n") && !json.windows(2).any(|w| w == b"\n\n"),
        "JSON has an empty line or a trailing newline: {:?}",
        show(json)
    );
    assert!(at.starts_with(b"AT "), "{:?}", show(reply));
    let value: Value =
        serde_json::from_slice(json).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", show(json)));
    (at.to_vec(), value)
}

/// The Nearby Search object: html_attributions, results, status and nothing else
/// (no error_message when the lookup worked). Returns the results.
#[track_caller]
fn check_places(value: &Value, status: &str) -> Vec<Value> {
    let obj = value.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["html_attributions", "results", "status"], "{value}");
    assert_eq!(obj["html_attributions"], serde_json::json!([]));
    assert_eq!(obj["status"], status, "{value}");
    let results = obj["results"]
        .as_array()
        .expect("results is an array")
        .clone();
    for r in &results {
        assert!(r["name"].is_string(), "name: {r}");
        assert!(r["place_id"].is_string(), "place_id: {r}");
        assert!(r["vicinity"].is_string(), "vicinity: {r}");
        assert!(r["types"].is_array(), "types: {r}");
        assert!(r["geometry"]["location"]["lat"].is_f64(), "lat: {r}");
        assert!(r["geometry"]["location"]["lng"].is_f64(), "lng: {r}");
    }
    results
}

/// Great-circle distance in km (the server's own Earth radius).
fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0088 * a.sqrt().asin()
}

fn result_distance(r: &Value, lat: f64, lon: f64) -> f64 {
    let loc = &r["geometry"]["location"];
    distance_km(
        lat,
        lon,
        loc["lat"].as_f64().expect("lat"),
        loc["lng"].as_f64().expect("lng"),
    )
}

// ---------------------------------------------------------------- IAMAT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iamat_reply_is_exact_and_its_difference_is_now_minus_client_time() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    // 5.123456789 s ago, to the nanosecond.
    let before = now_nanos();
    let t = before - 5 * SECOND - 123_456_789;
    let time = time_field(t);
    let reply = c.ask(iamat(b"kiwi.cs.ucla.edu", UCLA, &time)).await;
    let after = now_nanos();
    let diff = diff_nanos(&check_at(
        &reply,
        "Goloman",
        b"kiwi.cs.ucla.edu",
        UCLA.as_bytes(),
        time.as_bytes(),
    ));
    let field = at_fields(&reply)[2];
    assert_eq!(field[0], b'+', "{:?}", show(&reply));
    // The server read its clock between `before` and `after`; a little slack for clock steps.
    let slack = SECOND;
    assert!(
        diff >= before - t - slack && diff <= after - t + slack,
        "diff {} not within [{}, {}] (ns)",
        diff,
        before - t,
        after - t
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iamat_from_the_future_has_a_minus_sign() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let before = now_nanos();
    let t = before + 100 * SECOND + 1;
    let time = time_field(t);
    let reply = c.ask(iamat(b"future", UCLA, &time)).await;
    let after = now_nanos();
    let diff = diff_nanos(&check_at(
        &reply,
        "Goloman",
        b"future",
        UCLA.as_bytes(),
        time.as_bytes(),
    ));
    assert_eq!(at_fields(&reply)[2][0], b'-', "{:?}", show(&reply));
    assert!(
        diff >= before - t - SECOND && diff <= after - t + SECOND,
        "diff {diff} not near {}",
        before - t
    );
    // Far future, and the epoch itself.
    let reply = c.ask(iamat(b"far", UCLA, "99999999999.5")).await;
    assert!(
        diff_nanos(&check_at(
            &reply,
            "Goloman",
            b"far",
            UCLA.as_bytes(),
            b"99999999999.5"
        )) < 0
    );
    let reply = c.ask(iamat(b"epoch", UCLA, "0")).await;
    let diff = diff_nanos(&check_at(
        &reply,
        "Goloman",
        b"epoch",
        UCLA.as_bytes(),
        b"0",
    ));
    assert!(
        diff > 0 && (diff - now_nanos()).abs() < 5 * SECOND,
        "{diff}"
    );
}

/// Decimal digits `a - b` for digit strings a >= b (any length).
fn dec_sub(a: &str, b: &str) -> String {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    assert!(a.len() >= b.len());
    let mut out = Vec::with_capacity(a.len());
    let mut borrow = 0i32;
    for i in 0..a.len() {
        let da = i32::from(a[a.len() - 1 - i] - b'0');
        let db = if i < b.len() {
            i32::from(b[b.len() - 1 - i] - b'0')
        } else {
            0
        };
        let mut d = da - db - borrow;
        borrow = i32::from(d < 0);
        if d < 0 {
            d += 10;
        }
        out.push(b'0' + d as u8);
    }
    assert_eq!(borrow, 0, "a < b");
    out.reverse();
    let s = String::from_utf8(out).expect("digits");
    let t = s.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_client_times_are_differenced_exactly() {
    // A float would lose every digit below ~1e-7 of these times; the exact difference
    // lets us recover the server's clock reading: now = client time + diff.
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    for (id, time, nanos) in [
        (
            &b"big20"[..],
            "12345678901234567890.000000001",
            "12345678901234567890000000001",
        ),
        (
            b"big50",
            "99999999999999999999999999999999999999999999999999.123456789999",
            "99999999999999999999999999999999999999999999999999123456789",
        ),
    ] {
        let before = now_nanos();
        let reply = c.ask(iamat(id, "+0+0", time)).await;
        let after = now_nanos();
        check_at(&reply, "Goloman", id, b"+0+0", time.as_bytes());
        let diff = at_fields(&reply)[2];
        assert_eq!(diff[0], b'-', "{:?}", show(&reply));
        let text = std::str::from_utf8(&diff[1..]).expect("ASCII");
        let (int, frac) = text.split_once('.').expect("a dot");
        assert_eq!(frac.len(), 9);
        // client - now = |diff|, so now = client - |diff|, in nanoseconds.
        let magnitude = format!("{int}{frac}");
        let now: i128 = dec_sub(nanos, &magnitude).parse().expect("now fits");
        assert!(
            now >= before && now <= after,
            "{:?}: implied server time {now} not within [{before}, {after}]",
            show(&reply)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iamat_fields_are_echoed_verbatim() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let cases: &[(&[u8], &str, &str)] = &[
        (
            b"kiwi.cs.ucla.edu",
            "+34.068930-118.445127",
            "1520023934.918963997",
        ),
        (
            b"zeros",
            "+0034.0689300-0118.4451270",
            "0001520023934.9189639970",
        ),
        (
            b"fraction",
            "+34.06893000000000000000000001-118.44512700000000000000000001",
            "1520023934.918963997123456789123456789",
        ),
        (b"integers", "+34-118", "1520023934"),
        (
            "caf\u{e9}-\u{1f95d}-\u{4e2d}\u{6587}".as_bytes(),
            "-33.8688+151.2093",
            "1520023935.5",
        ),
        (b"\xff\xfe\x80\xc3(invalid-utf8", "+1+1", "1.000000000"),
        ("no\u{a0}break\u{2003}space".as_bytes(), "+1+1", "2"),
        (b"nul\x00and\x7fdel", "+1+1", "3"),
        (b"?", "+1+1", "4"),
        (b"IAMAT", "+1+1", "5"),
    ];
    for (id, location, time) in cases {
        register(&mut c, id, location, time).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_iamat_gets_the_stored_line_and_a_newer_one_replaces_it() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let first = register(&mut c, b"kiwi", UCLA, "1520023934.5").await;
    // Same time (written differently), older time, and a time equal once cut to nanoseconds:
    // all answered with the stored line, byte for byte, and nothing changes.
    for (location, time) in [
        ("+1+1", "1520023934.5"),
        ("+1+1", "1520023934.500000000"),
        ("+1+1", "01520023934.5000000009"),
        ("+2+2", "1520023934.499999999"),
        ("+3+3", "1520023934"),
        ("+4+4", "0"),
    ] {
        let reply = c.ask(iamat(b"kiwi", location, time)).await;
        assert_bytes(&reply, &first);
    }
    let mut other = herd.client("Goloman").await;
    let reply = other.ask(iamat(b"kiwi", "+5+5", "1520023934.5")).await;
    assert_bytes(&reply, &first);
    let stored = other.whatsat("WHATSAT kiwi 1 0\n").await;
    assert!(stored.starts_with(&first), "{:?}", show(&stored));

    // One nanosecond newer replaces it, and that is what WHATSAT now shows.
    let newer = register(&mut c, b"kiwi", "-1-1", "1520023934.500000001").await;
    assert_ne!(newer, first);
    let stored = other.whatsat("WHATSAT kiwi 1 0\n").await;
    assert!(stored.starts_with(&newer), "{:?}", show(&stored));
    let reply = c.ask(iamat(b"kiwi", UCLA, "1520023934.5")).await;
    assert_bytes(&reply, &newer);
}

// ---------------------------------------------------------------- WHATSAT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_reply_is_the_at_line_then_nearby_json_then_an_empty_line() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let at = register(&mut c, b"kiwi.cs.ucla.edu", UCLA, "1520023934.918963997").await;
    let reply = c.whatsat("WHATSAT kiwi.cs.ucla.edu 10 5\n").await;
    let (line, json) = split_whatsat(&reply);
    assert_bytes(&line, &at);
    let results = check_places(&json, "OK");
    assert_eq!(results.len(), 5, "{json}");
    // The same question on another connection gets the same bytes.
    let mut other = herd.client("Goloman").await;
    assert_bytes(
        &other.whatsat("WHATSAT kiwi.cs.ucla.edu 10 5\n").await,
        &reply,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_gives_at_most_bound_places_nearest_first_within_the_radius() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    register(&mut c, b"kiwi", UCLA, "1520023934.918963997").await;
    let (lat, lon) = (34.068930, -118.445127);

    let reply = c.whatsat("WHATSAT kiwi 50 20\n").await;
    let all = check_places(&split_whatsat(&reply).1, "OK");
    // Greater Los Angeles has far more than 20 places within 50 km.
    assert_eq!(all.len(), 20);
    let distances: Vec<f64> = all.iter().map(|r| result_distance(r, lat, lon)).collect();
    for pair in distances.windows(2) {
        // A metre of slack for the server's chord arithmetic.
        assert!(
            pair[0] <= pair[1] + 0.001,
            "not nearest first: {distances:?}"
        );
    }
    assert!(
        distances.iter().all(|&d| d <= 50.0 * 1.001),
        "{distances:?}"
    );

    // A smaller bound cuts the same list.
    for bound in [1usize, 3, 19] {
        let reply = c.whatsat(format!("WHATSAT kiwi 50 {bound}\n")).await;
        let some = check_places(&split_whatsat(&reply).1, "OK");
        assert_eq!(some, all[..bound], "bound {bound}");
    }

    // A smaller radius keeps only places within it, still nearest first.
    let reply = c.whatsat("WHATSAT kiwi 3 20\n").await;
    let near = check_places(&split_whatsat(&reply).1, "OK");
    assert!(
        !near.is_empty() && near.len() < 20,
        "{} places within 3 km",
        near.len()
    );
    assert!(
        near.iter()
            .all(|r| result_distance(r, lat, lon) <= 3.0 * 1.001),
        "{near:?}"
    );
    assert_eq!(near, all[..near.len()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_in_the_middle_of_the_pacific_has_zero_results() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let at = register(&mut c, b"boat", PACIFIC, "1520023934").await;
    for bound in [0, 5, 20] {
        let reply = c.whatsat(format!("WHATSAT boat 50 {bound}\n")).await;
        let (line, json) = split_whatsat(&reply);
        assert_bytes(&line, &at);
        assert!(check_places(&json, "ZERO_RESULTS").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_with_bound_zero_near_places_is_ok_and_empty() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let at = register(&mut c, b"kiwi", UCLA, "1520023934").await;
    let reply = c.whatsat("WHATSAT kiwi 10 0\n").await;
    let (line, json) = split_whatsat(&reply);
    assert_bytes(&line, &at);
    assert!(check_places(&json, "OK").is_empty());
    assert_bytes(
        &reply[line.len()..],
        b"{\n  \"html_attributions\": [],\n  \"results\": [],\n  \"status\": \"OK\"\n}\n\n",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_reply_arrives_in_one_piece() {
    // The reply leaves in one write: on loopback the first read after it arrives holds
    // all of it (a reply written in pieces would show its first piece alone).
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    register(&mut c, b"kiwi", UCLA, "1520023934").await;
    // Warm the places index so that the timed reply is not split by its build.
    c.whatsat("WHATSAT kiwi 50 20\n").await;
    for _ in 0..5 {
        c.send("WHATSAT kiwi 50 20\n").await;
        let first = c.read_some().await;
        assert!(
            first.ends_with(b"}\n\n"),
            "the first read held only part of the reply: {} bytes {:?}",
            first.len(),
            show(&first[first.len().saturating_sub(40)..])
        );
        split_whatsat(&first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_edges_of_radius_and_bound_are_accepted() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let at = register(&mut c, b"kiwi", UCLA, "1520023934").await;
    for (radius, bound, most) in [
        ("50", "20", 20),
        ("50.000000000", "5", 5),
        ("050", "020", 20),
        (
            "000000000000000000000000050",
            "0000000000000000000000000007",
            7,
        ),
        ("0.001", "0", 0),
        ("0.0000000000000001", "1", 1),
        ("1", "00", 0),
        ("10.5", "1", 1),
    ] {
        let reply = c.whatsat(format!("WHATSAT kiwi {radius} {bound}\n")).await;
        let (line, json) = split_whatsat(&reply);
        assert_bytes(&line, &at);
        let status = json["status"].as_str().expect("status");
        assert!(status == "OK" || status == "ZERO_RESULTS", "{json}");
        let n = check_places(&json, status).len();
        assert!(n <= most, "radius {radius} bound {bound}: {n} results");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsat_for_an_unknown_client_is_a_question_mark() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    for line in [
        &b"WHATSAT nobody 10 5\n"[..],
        b"WHATSAT kiwi 10 5\n",
        b"WHATSAT \xff\xfe 10 5\n",
    ] {
        assert_bytes(&c.ask(line).await, &question(line));
    }
    register(&mut c, b"kiwi", UCLA, "1").await;
    // IDs are bytes: case and lookalikes are other clients.
    for line in [
        &b"WHATSAT KIWI 10 5\n"[..],
        b"WHATSAT kiwi. 10 5\n",
        "WHATSAT k\u{131}wi 10 5\n".as_bytes(),
    ] {
        assert_bytes(&c.ask(line).await, &question(line));
    }
}

// ---------------------------------------------------------------- invalid input

/// Lines that must each get `? <line>` byte for byte (the client `kiwi` is known).
const MALFORMED: &[&[u8]] = &[
    // Wrong field counts.
    b"IAMAT",
    b"IAMAT kiwi",
    b"IAMAT kiwi +34.068930-118.445127",
    b"IAMAT kiwi +34.068930-118.445127 1520023934.918963997 extra",
    b"IAMAT kiwi +34.068930-118.445127 1520023934.918963997 1520023934.918963997",
    b"WHATSAT",
    b"WHATSAT kiwi",
    b"WHATSAT kiwi 10",
    b"WHATSAT kiwi 10 5 5",
    b"kiwi +34.068930-118.445127 1520023934.918963997",
    // Unknown and misspelt commands; server-to-server messages.
    b"FOO i am client 10 32",
    b"FOO",
    b"iamat kiwi +34.068930-118.445127 1520023934.918963997",
    b"Iamat kiwi +34.068930-118.445127 1520023934.918963997",
    b"IAMA kiwi +34.068930-118.445127 1520023934.918963997",
    b"IAMATT kiwi +34.068930-118.445127 1520023934.918963997",
    b"IAMAT2 kiwi +34.068930-118.445127 1520023934.918963997",
    b"I AMAT kiwi +34.068930-118.445127",
    b"whatsat kiwi 10 5",
    b"WHATSIT kiwi 10 5",
    b"WHATSAT: kiwi 10 5",
    b"WHAT kiwi 10 5",
    b"AT Goloman +0.263873386 kiwi +34.068930-118.445127 1520023934.918963997",
    b"UPDATE kiwi +34.068930-118.445127 1520023934.918963997 1 Goloman",
    b"?",
    b"? FOO",
    b"\xffIAMAT kiwi +34.068930-118.445127 1520023934.918963997",
    // Locations: missing signs, +-, commas, letters, exponents, bad decimals.
    b"IAMAT kiwi 34.068930-118.445127 1520023934.918963997",
    b"IAMAT kiwi +34.068930118.445127 1520023934.918963997",
    b"IAMAT kiwi 34.068930 1520023934.918963997",
    b"IAMAT kiwi +34.068930 1520023934.918963997",
    b"IAMAT kiwi -118.445127 1520023934.918963997",
    b"IAMAT kiwi +-34.068930-118.445127 1520023934.918963997",
    b"IAMAT kiwi +34.068930+-118.445127 1520023934.918963997",
    b"IAMAT kiwi -+34.068930-118.445127 1520023934.918963997",
    b"IAMAT kiwi ++34.068930-118.445127 1520023934.918963997",
    b"IAMAT kiwi +34.068930--118.445127 1520023934.918963997",
    b"IAMAT kiwi +34,068930-118,445127 1520023934.918963997",
    b"IAMAT kiwi +34.068930,-118.445127 1520023934.918963997",
    b"IAMAT kiwi +34.06893a-118.445127 1520023934.918963997",
    b"IAMAT kiwi +N34.068930-W118.445127 1520023934.918963997",
    b"IAMAT kiwi +34.068930-118.445127x 1520023934.918963997",
    b"IAMAT kiwi +34.068930-118.445127+10 1520023934.918963997",
    b"IAMAT kiwi +34.068930-118.445127/ 1520023934.918963997",
    b"IAMAT kiwi +34.-118.445127 1520023934.918963997",
    b"IAMAT kiwi +.5-118.445127 1520023934.918963997",
    b"IAMAT kiwi +34.068930-118. 1520023934.918963997",
    b"IAMAT kiwi +34..068930-118.445127 1520023934.918963997",
    b"IAMAT kiwi +3e1-118 1520023934.918963997",
    b"IAMAT kiwi +0x10-0x10 1520023934.918963997",
    b"IAMAT kiwi +inf-inf 1520023934.918963997",
    b"IAMAT kiwi +\xd9\xa3\xd9\xa4-118 1520023934.918963997",
    // Out of range.
    b"IAMAT kiwi +90.000000001+0 1520023934.918963997",
    b"IAMAT kiwi +90.0000000000000000000001+0 1520023934.918963997",
    b"IAMAT kiwi +91+0 1520023934.918963997",
    b"IAMAT kiwi -90.5+0 1520023934.918963997",
    b"IAMAT kiwi +0+180.000000001 1520023934.918963997",
    b"IAMAT kiwi +0-181 1520023934.918963997",
    b"IAMAT kiwi +0-1800 1520023934.918963997",
    b"IAMAT kiwi +100-100 1520023934.918963997",
    b"IAMAT kiwi +00000000000000000000091+0 1520023934.918963997",
    b"IAMAT kiwi +99999999999999999999999999999+0 1520023934.918963997",
    b"IAMAT kiwi +0+18446744073709551796 1520023934.918963997",
    // Times: signs, exponents, bad decimals.
    b"IAMAT kiwi +1+1 -1520023934.918963997",
    b"IAMAT kiwi +1+1 +1520023934.918963997",
    b"IAMAT kiwi +1+1 -0",
    b"IAMAT kiwi +1+1 1.5e9",
    b"IAMAT kiwi +1+1 1e9",
    b"IAMAT kiwi +1+1 1E9",
    b"IAMAT kiwi +1+1 1520023934.",
    b"IAMAT kiwi +1+1 .5",
    b"IAMAT kiwi +1+1 1.2.3",
    b"IAMAT kiwi +1+1 1,5",
    b"IAMAT kiwi +1+1 0x10",
    b"IAMAT kiwi +1+1 inf",
    b"IAMAT kiwi +1+1 NaN",
    b"IAMAT kiwi +1+1 1_000",
    b"IAMAT kiwi +1+1 1520023934.91896399a",
    // Radius: 0, over 50, not a number.
    b"WHATSAT kiwi 0 5",
    b"WHATSAT kiwi 0.0 5",
    b"WHATSAT kiwi 000.000 5",
    b"WHATSAT kiwi 50.000000001 5",
    b"WHATSAT kiwi 50.00000000000000000000001 5",
    b"WHATSAT kiwi 51 5",
    b"WHATSAT kiwi 100 5",
    b"WHATSAT kiwi 18446744073709551616 5",
    b"WHATSAT kiwi ten 5",
    b"WHATSAT kiwi -5 5",
    b"WHATSAT kiwi +5 5",
    b"WHATSAT kiwi 5. 5",
    b"WHATSAT kiwi .5 5",
    b"WHATSAT kiwi 1e1 5",
    b"WHATSAT kiwi 5km 5",
    b"WHATSAT kiwi 10,5 5",
    b"WHATSAT kiwi NaN 5",
    // Bound: over 20, negative, fractional, not a number.
    b"WHATSAT kiwi 10 21",
    b"WHATSAT kiwi 10 0021",
    b"WHATSAT kiwi 10 100",
    b"WHATSAT kiwi 10 18446744073709551636",
    b"WHATSAT kiwi 10 99999999999999999999999999999999999999999",
    b"WHATSAT kiwi 10 -1",
    b"WHATSAT kiwi 10 -0",
    b"WHATSAT kiwi 10 +5",
    b"WHATSAT kiwi 10 5.0",
    b"WHATSAT kiwi 10 1.5",
    b"WHATSAT kiwi 10 five",
    b"WHATSAT kiwi 10 1e1",
    b"WHATSAT kiwi 10 0x5",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_answered_with_a_question_mark_and_a_copy() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let at = register(&mut c, b"kiwi", UCLA, "1520023934.918963997").await;
    // One by one...
    for line in MALFORMED {
        let mut sent = line.to_vec();
        sent.push(b'\n');
        assert_bytes(&c.ask(&sent).await, &question(&sent));
    }
    // ...and all in one write.
    let mut all = Vec::new();
    let mut want = Vec::new();
    for line in MALFORMED {
        all.extend_from_slice(line);
        all.push(b'\n');
        want.extend(question(line));
    }
    c.send(&all).await;
    let mut got = Vec::new();
    while got.len() < want.len() {
        got.extend(c.line().await);
    }
    assert_bytes(&got, &want);
    // None of them changed the client's record.
    let reply = c.whatsat("WHATSAT kiwi 1 0\n").await;
    assert!(reply.starts_with(&at), "{:?}", show(&reply));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinates_on_the_bounds_are_accepted() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    for (i, location) in [
        "+90-180",
        "-90+180",
        "+90+180",
        "-90-180",
        "+90.000000000-180.000",
        "-0090.0+00180",
        "+0+0",
        "-0-0",
        "-00.000+000.000",
        "+89.99999999999999999999+179.99999999999999999999",
        "+00000000000000000000000090-00000000000000000000000180",
    ]
    .iter()
    .enumerate()
    {
        register(&mut c, b"edge", location, &(i + 1).to_string()).await;
        // The stored record is the accepted one, and WHATSAT can look around it.
        let reply = c.whatsat("WHATSAT edge 50 1\n").await;
        let (_, json) = split_whatsat(&reply);
        assert!(
            json["status"] == "OK" || json["status"] == "ZERO_RESULTS",
            "{json}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_vertical_tabs_and_form_feeds_separate_fields() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    for (i, line) in [
        &b"IAMAT\tkiwi\t+1+1\t1\n"[..],
        b"IAMAT\x0bkiwi\x0b+1+1\x0b2\n",
        b"IAMAT\x0ckiwi\x0c+1+1\x0c3\n",
        b" \t\x0b\x0cIAMAT \t kiwi\x0b\x0c\t+1+1  \x0b 4\t\x0c \x0b\n",
        b"IAMAT\r kiwi \r+1+1\r\r5 \r\n",
    ]
    .iter()
    .enumerate()
    {
        let reply = c.ask(line).await;
        check_at(
            &reply,
            "Goloman",
            b"kiwi",
            b"+1+1",
            (i + 1).to_string().as_bytes(),
        );
    }
    let reply = c.whatsat("\x0bWHATSAT\tkiwi\x0c10\x0b0\t\n").await;
    let (line, _) = split_whatsat(&reply);
    check_at(&line, "Goloman", b"kiwi", b"+1+1", b"5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_spaces_are_not_separators() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    // U+00A0 (UTF-8 and Latin-1), U+2003, U+3000, U+0085, and NUL: all field bytes.
    for line in [
        "IAMAT\u{a0}kiwi +1+1 1\n".as_bytes(),
        b"IAMAT\xa0kiwi +1+1 1\n",
        "IAMAT kiwi\u{2003}+1+1 1\n".as_bytes(),
        "IAMAT kiwi +1+1\u{3000}1\n".as_bytes(),
        "IAMAT kiwi +1+1\u{85}1\n".as_bytes(),
        b"IAMAT kiwi +1+1\x001\n",
        "WHATSAT\u{a0}kiwi 10 5\n".as_bytes(),
        "IAMAT kiwi +1+1 1\u{a0}\n".as_bytes(),
        "\u{a0}IAMAT kiwi +1+1 1\n".as_bytes(),
    ] {
        assert_bytes(&c.ask(line).await, &question(line));
    }
    // Inside a client ID they are just bytes of the ID.
    register(&mut c, "a\u{a0}b\u{2003}c".as_bytes(), "+1+1", "1").await;
    register(&mut c, b"a\xa0b", "+1+1", "1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_line_ends_are_not_echoed() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let reply = c.ask("IAMAT kiwi +1+1 1\r\n").await;
    check_at(&reply, "Goloman", b"kiwi", b"+1+1", b"1");
    assert_bytes(&c.ask("FOO bar\r\n").await, b"? FOO bar\n");
    assert_bytes(
        &c.ask("WHATSAT kiwi 10 21\r\n").await,
        b"? WHATSAT kiwi 10 21\n",
    );
    // Only the CR just before the LF belongs to the line end.
    assert_bytes(&c.ask("FOO\r\r\n").await, b"? FOO\r\n");
    assert_bytes(&c.ask("FOO\rBAR\r\n").await, b"? FOO\rBAR\n");
    assert_bytes(&c.ask("\r\x0bFOO \r\n").await, b"? \r\x0bFOO \n");
    let reply = c.whatsat("WHATSAT kiwi 10 1\r\n").await;
    let (line, _) = split_whatsat(&reply);
    check_at(&line, "Goloman", b"kiwi", b"+1+1", b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_echoed_byte_for_byte() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let id: &[u8] = b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\xff\xfe\xfd";
    let at = register(&mut c, id, "+1+1", "1").await;
    let mut whatsat = b"WHATSAT ".to_vec();
    whatsat.extend_from_slice(id);
    whatsat.extend_from_slice(b" 10 1\n");
    let (line, _) = split_whatsat(&c.whatsat(&whatsat).await);
    assert_bytes(&line, &at);
    for line in [
        &b"\xff\xfe\n"[..],
        b"FOO \x80\x81\x82 \xc0\xaf\n",
        b"IAMAT \xff +1+1 \xff\n",
        b"WHATSAT \xc3\x28 10 5\n",
    ] {
        assert_bytes(&c.ask(line).await, &question(line));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_only_lines_get_no_reply() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    // If any blank line were answered, its reply would come before the AT line.
    c.send(" \n\n\t\n\r\n\x0b\x0c\n  \t \r\n\n\n").await;
    let reply = c.ask("IAMAT kiwi +1+1 1\n").await;
    check_at(&reply, "Goloman", b"kiwi", b"+1+1", b"1");
    c.send("\n\n").await;
    // A blank last line ended by EOF gets nothing either.
    c.send(" \t").await;
    assert_bytes(&c.finish().await, b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_without_a_final_newline_is_answered_before_the_close() {
    let herd = goloman().await;

    let mut c = herd.client("Goloman").await;
    c.send("IAMAT kiwi +34.068930-118.445127 1520023934.918963997")
        .await;
    let all = c.finish().await;
    check_at(
        &all,
        "Goloman",
        b"kiwi",
        UCLA.as_bytes(),
        b"1520023934.918963997",
    );

    let mut c = herd.client("Goloman").await;
    c.send("FOO i am client 10 32").await;
    assert_bytes(&c.finish().await, b"? FOO i am client 10 32\n");

    let mut c = herd.client("Goloman").await;
    c.send("FOO\nBAR\r\nWHATSAT kiwi 50 20").await;
    let all = c.finish().await;
    let (head, rest) = all.split_at(b"? FOO\n? BAR\n".len());
    assert_bytes(head, b"? FOO\n? BAR\n");
    let (_, json) = split_whatsat(rest);
    assert_eq!(check_places(&json, "OK").len(), 20);

    // Half-close with nothing sent: closed with nothing said.
    let c = herd.client("Goloman").await;
    assert_bytes(&c.finish().await, b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let at = register(&mut c, b"kiwi", UCLA, "1520023934").await;
    let whatsat = c.whatsat("WHATSAT kiwi 20 4\n").await;

    // Many commands of every kind in one write.
    let mut batch = Vec::new();
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = format!("c{i:03}").into_bytes();
        batch.extend(iamat(&id, "+1+1", &format!("{}", 1000 + i)));
        batch.extend_from_slice(b"WHATSAT kiwi 20 4\n");
        batch.extend_from_slice(format!("BAD {i}\n").as_bytes());
        batch.extend_from_slice(b"\n");
        batch.extend(iamat(b"kiwi", "+2+2", "1520023933"));
        ids.push(id);
    }
    c.send(&batch).await;
    for (i, id) in ids.iter().enumerate() {
        let reply = c.line().await;
        check_at(
            &reply,
            "Goloman",
            id,
            b"+1+1",
            format!("{}", 1000 + i).as_bytes(),
        );
        assert_bytes(&c.whatsat_reply().await, &whatsat);
        assert_bytes(&c.line().await, format!("? BAD {i}\n").as_bytes());
        assert_bytes(&c.line().await, &at);
    }
    // Still in step afterwards.
    assert_bytes(&c.ask("FOO\n").await, b"? FOO\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_stays_usable_after_bad_lines() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    for i in 0..3 {
        for line in MALFORMED.iter().take(20) {
            let mut sent = line.to_vec();
            sent.push(b'\n');
            assert_bytes(&c.ask(&sent).await, &question(&sent));
        }
        let reply = c.ask(iamat(b"kiwi", UCLA, &i.to_string())).await;
        check_at(
            &reply,
            "Goloman",
            b"kiwi",
            UCLA.as_bytes(),
            i.to_string().as_bytes(),
        );
        let (line, _) = split_whatsat(&c.whatsat("WHATSAT kiwi 5 2\n").await);
        assert_bytes(&line, &reply);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_sent_byte_by_byte_is_reassembled() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    // How the server's reads split the bytes is up to TCP; the framer's unit tests
    // (src/wire/codec.rs) feed every split deterministically.
    let line = iamat(b"kiwi", UCLA, "1520023934.918963997");
    for b in &line {
        c.send([*b]).await;
        c.stream().flush().await.expect("flush");
    }
    let reply = c.line().await;
    check_at(
        &reply,
        "Goloman",
        b"kiwi",
        UCLA.as_bytes(),
        b"1520023934.918963997",
    );
    // CR and LF split across writes, and a `?` line in fragments.
    for part in [&b"FO"[..], b"O ", b"b\xff", b"ar\r"] {
        c.send(part).await;
    }
    c.send("\n").await;
    assert_bytes(&c.line().await, b"? FOO b\xffar\n");
    for part in [&b"WHAT"[..], b"SAT kiwi 1", b"0 ", b"1", b"\r", b"\n"] {
        c.send(part).await;
    }
    let (at, _) = split_whatsat(&c.whatsat_reply().await);
    assert_bytes(&at, &reply);
}

// ---------------------------------------------------------------- overlong lines

/// Deterministic non-whitespace garbage, `len` bytes (all byte values but whitespace).
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let b = (x >> 24) as u8;
        if !matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            out.push(b);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_garbage_line_is_echoed_in_full() {
    const { assert!(200 * 1024 > MAX_LINE && 150 * 1024 > MAX_LINE && 90 * 1024 > MAX_LINE) };
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let mut line = garbage(200 * 1024);
    line.push(b'\n');
    c.send(&line).await;
    let reply = c.line().await;
    assert_bytes(&reply, &question(&line));
    // Still in step: the next line is answered on its own.
    let at = c.ask(iamat(b"kiwi", "+1+1", "1")).await;
    check_at(&at, "Goloman", b"kiwi", b"+1+1", b"1");

    // A long garbage line and a normal line in one write, then a long one in pieces.
    let mut batch = garbage(150 * 1024);
    batch.extend_from_slice(b"\nFOO\n");
    c.send(&batch).await;
    let mut want = question(&batch[..batch.len() - 4]);
    want.extend_from_slice(b"? FOO\n");
    let mut got = c.line().await;
    got.extend(c.line().await);
    assert_bytes(&got, &want);
    let line = garbage(300 * 1024);
    for chunk in line.chunks(7 * 1024 + 3) {
        c.send(chunk).await;
    }
    c.send("\n").await;
    assert_bytes(&c.line().await, &question(&line));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_past_the_limit_gets_the_same_reply_however_tcp_splits_it() {
    // The server reads at most MAX_LINE bytes as a command (README): a longer line,
    // even a would-be valid IAMAT with a huge client ID, is answered `?` with its
    // bytes, and the same bytes get the same reply in one read or several. The
    // client ID cap is raised to the line limit so that the line limit alone decides.
    let herd = TestHerd::start_with(
        &[("Goloman", &[])],
        &format!("[gateway]\nmax_client_id_bytes = {MAX_LINE}\n"),
    )
    .await;
    let id = garbage(MAX_LINE + 1024);
    let line = iamat(&id, "+1+1", "1");
    let mut c = herd.client("Goloman").await;
    c.send(&line).await;
    let whole = c.line().await;
    let mut c = herd.client("Goloman").await;
    c.send(&line[..MAX_LINE / 2]).await;
    c.send(&line[MAX_LINE / 2..]).await;
    let split = c.line().await;
    assert_bytes(&whole, &question(&line));
    assert_bytes(&split, &whole);
    // One byte under the limit, the same ID makes a valid IAMAT, however it arrives.
    let id = garbage(MAX_LINE - "IAMAT  +1+1 1".len());
    let line = iamat(&id, "+1+1", "1");
    assert_eq!(line.len(), MAX_LINE + 1, "the line and its LF");
    let mut c = herd.client("Goloman").await;
    c.send(&line[..1000]).await;
    c.send(&line[1000..]).await;
    check_at(&c.line().await, "Goloman", &id, b"+1+1", b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_ended_by_crlf_is_echoed_without_the_cr() {
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    // The CR comes at the end of one write and the LF in the next: the CR still
    // belongs to the line end.
    let body = garbage(90 * 1024);
    let mut first = body.clone();
    first.push(b'\r');
    c.send(&first).await;
    c.send("\n").await;
    let mut want = question(&body);
    assert_bytes(&c.line().await, &want);
    // A CR in the middle of an overlong line is part of it.
    let mut line = body.clone();
    line.push(b'\r');
    c.send(&line).await;
    c.send("x\r\n").await;
    want = question(&line);
    want.truncate(want.len() - 1);
    want.extend_from_slice(b"\rx\n");
    assert_bytes(&c.line().await, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_ended_by_eof_gets_a_whole_reply_line() {
    // "Every reply line ends with LF", a last line ended by EOF included.
    let herd = goloman().await;
    let body = garbage(90 * 1024);
    let mut c = herd.client("Goloman").await;
    c.send(&body).await;
    let got = c.finish().await;
    assert!(
        got.ends_with(b"\n"),
        "the reply to a {} byte line ended by EOF has no LF ({} bytes)",
        body.len(),
        got.len()
    );
    assert_bytes(&got, &question(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_only_lines_up_to_the_limit_get_no_reply() {
    // PROTOCOL.md: "A line with only whitespace gets no reply"; past MAX_LINE the
    // server does not hold the line, so it answers `?` and echoes it like any other.
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let mut blank: Vec<u8> = b" \t\x0b\x0c\r".repeat(MAX_LINE / 5);
    blank.truncate(MAX_LINE);
    blank.push(b'\n');
    c.send(&blank).await;
    let reply = c.ask(iamat(b"kiwi", "+1+1", "1")).await;
    check_at(&reply, "Goloman", b"kiwi", b"+1+1", b"1");

    let mut over = vec![b' '; MAX_LINE + 1];
    over.push(b'\n');
    c.send(&over).await;
    assert_bytes(&c.line().await, &question(&over));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iamat_padded_with_whitespace_up_to_the_limit_is_answered() {
    // Leading, trailing and separating whitespace is ignored, up to the line limit.
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let core_len = "IAMAT kiwi +1+1 1".len();
    let pad = vec![b' '; (MAX_LINE - core_len) / 3];
    let mut line = Vec::new();
    line.extend_from_slice(&pad);
    line.extend_from_slice(b"IAMAT kiwi");
    line.extend_from_slice(&pad);
    line.extend_from_slice(b"+1+1 1");
    line.extend_from_slice(&pad);
    line.push(b'\n');
    assert!(line.len() <= MAX_LINE + 1);
    c.send(&line).await;
    check_at(&c.line().await, "Goloman", b"kiwi", b"+1+1", b"1");
}

// ---------------------------------------------------------------- replies held

/// One series of `name`'s Prometheus metrics, scraped over HTTP/1.1 on its peer port.
async fn metric(herd: &TestHerd, name: &str, series: &str) -> u64 {
    let text = scrape_metrics(herd.peer_addr(name)).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_past_the_held_bound_are_written_early_and_arrive_whole() {
    // gateway.max_held_reply_bytes is 256 KiB by default: a few hundred WHATSATs in
    // one write (one read, a few KB) make megabytes of replies, which the server
    // writes out as it goes instead of holding them until the read is answered.
    const EARLY: &str = r#"herd_client_replies_written_early_total{server="Goloman"}"#;
    const BOUND: usize = 256 * 1024;
    const COUNT: usize = 300;
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    register(&mut c, b"kiwi", UCLA, "1520023934").await;
    let one = c.whatsat("WHATSAT kiwi 50 20\n").await;
    assert!(
        COUNT * one.len() > 3 * BOUND,
        "{COUNT} replies of {} bytes do not pass the bound",
        one.len()
    );
    let before = metric(&herd, "Goloman", EARLY).await;

    c.send(b"WHATSAT kiwi 50 20\n".repeat(COUNT)).await;
    for _ in 0..COUNT {
        assert_bytes(&c.whatsat_reply().await, &one);
    }
    // Still in step afterwards.
    assert_bytes(&c.ask("FOO\n").await, b"? FOO\n");
    let after = metric(&herd, "Goloman", EARLY).await;
    assert!(
        after > before,
        "{EARLY} went from {before} to {after} for {} bytes of replies",
        COUNT * one.len()
    );

    // One WHATSAT per write holds one reply at a time: the bound never bites.
    for _ in 0..5 {
        assert_bytes(&c.whatsat("WHATSAT kiwi 50 20\n").await, &one);
    }
    assert_eq!(metric(&herd, "Goloman", EARLY).await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_flushed_while_the_connection_stays_open() {
    // A reply does not wait for more input or for the close.
    let herd = goloman().await;
    let mut c = herd.client("Goloman").await;
    let started = Instant::now();
    for i in 0..20 {
        let reply = c.ask(iamat(b"kiwi", "+1+1", &i.to_string())).await;
        check_at(
            &reply,
            "Goloman",
            b"kiwi",
            b"+1+1",
            i.to_string().as_bytes(),
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
