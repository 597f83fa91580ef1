//! The Google provider over real sockets: a herd server whose places come from a fake
//! Google in this file. The fake speaks both APIs in their real formats, records every
//! request, and can be told to answer slowly, fail (500, 429, OVER_QUERY_LIMIT,
//! UNKNOWN_ERROR, REQUEST_DENIED), find nothing, talk garbage, or never answer.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use herd::{
    config::HerdConfig,
    places::{self, OfflineProvider},
    server::{self, Listeners},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

const KEY: &str = "AIzaTEST-do-not-log-me-0123456789";
/// Where the test client says it is: Google is asked there, not at a rounded point.
const HERE: &str = "+34.068930-118.445127";
const HERE_EXACT: (f64, f64) = (34.06893, -118.445127);

// ---------------------------------------------------------------------------------------------
// The fake Google

#[derive(Clone, Copy, Debug)]
enum Act {
    /// `n` places around the requested point, in the API's own format.
    Places(usize),
    Zero,
    Http500,
    Http429,
    OverQueryLimit,
    UnknownError,
    Denied,
    Garbage,
    /// Read the request and never answer.
    Hang,
    /// 200 and a body that never ends, with no Content-Length.
    Endless,
    /// 200 announcing a 1 GiB body (and sending some of it).
    Huge,
    /// A status word Google's documentation does not list (legacy only).
    OddStatus,
}

#[derive(Debug)]
struct Recorded {
    method: String,
    path: String,
    query: HashMap<String, String>,
    /// Header names in lower case.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Google {
    script: Mutex<VecDeque<Act>>,
    otherwise: Mutex<Option<Act>>,
    delay: Mutex<Duration>,
    requests: Mutex<Vec<Recorded>>,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl Google {
    /// Starts the fake on 127.0.0.1:0; returns it and its base URL.
    async fn start(otherwise: Act) -> (Arc<Google>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let google = Arc::new(Google::default());
        *google.otherwise.lock().unwrap() = Some(otherwise);
        let g = google.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(g.clone().serve(socket));
            }
        });
        (google, url)
    }

    /// The next answers, in order; then `otherwise` for every request.
    fn script(&self, acts: &[Act]) {
        self.script.lock().unwrap().extend(acts);
    }

    fn requests(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    async fn serve(self: Arc<Google>, mut socket: TcpStream) {
        let Some(req) = read_request(&mut socket).await else {
            return;
        };
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let act = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.otherwise.lock().unwrap().unwrap());
        let new_api = req.path == "/v1/places:searchNearby";
        let at = if new_api {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let c = &body["locationRestriction"]["circle"]["center"];
            (
                c["latitude"].as_f64().unwrap_or(0.0),
                c["longitude"].as_f64().unwrap_or(0.0),
            )
        } else {
            let loc = req.query.get("location").cloned().unwrap_or_default();
            let (lat, lon) = loc.split_once(',').unwrap_or(("0", "0"));
            (lat.parse().unwrap_or(0.0), lon.parse().unwrap_or(0.0))
        };
        self.requests.lock().unwrap().push(req);
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if matches!(act, Act::Hang) {
            // Hold the connection open without a word until the client gives up.
            let mut sink = [0u8; 1024];
            while socket.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            self.running.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if matches!(act, Act::Endless | Act::Huge) {
            self.running.fetch_sub(1, Ordering::SeqCst);
            let length = match act {
                Act::Huge => "Content-Length: 1073741824\r\n",
                _ => "",
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n{{\"places\":["
            );
            let _ = socket.write_all(head.as_bytes()).await;
            // Until the client hangs up (or a lot later than any cap).
            let chunk = "{\"id\":\"ChIJpadding\"},".repeat(3000);
            for _ in 0..20_000 {
                if socket.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
            }
            return;
        }
        let (code, body) = if new_api {
            new_answer(act, at)
        } else {
            legacy_answer(act, at)
        };
        let reason = match code {
            200 => "OK",
            403 => "Forbidden",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Whatever",
        };
        let kind = if body.starts_with('{') {
            "application/json; charset=UTF-8"
        } else {
            "text/html; charset=UTF-8"
        };
        let head = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        self.running.fetch_sub(1, Ordering::SeqCst);
        let _ = socket.write_all(head.as_bytes()).await;
        let _ = socket.write_all(body.as_bytes()).await;
        let _ = socket.shutdown().await;
    }
}

/// A minimal HTTP/1.1 request reader: head, then a Content-Length body.
async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap_or(0));
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2C", ",").replace("%2c", ",")))
        .collect();
    Some(Recorded {
        method,
        path: path.to_owned(),
        query,
        headers,
        body,
    })
}

/// Places API (New): `{"places": [...]}`, `{}`, or `{"error": {...}}` with an HTTP error.
fn new_answer(act: Act, (lat, lon): (f64, f64)) -> (u16, String) {
    let error = |code: u16, status: &str, message: &str| {
        (
            code,
            json!({"error": {"code": code, "message": message, "status": status}}).to_string(),
        )
    };
    match act {
        Act::Places(n) => {
            let places: Vec<Value> = (0..n)
                .map(|i| {
                    let mut p = json!({
                        "id": format!("ChIJfake{i}"),
                        "types": ["cafe", "food", "point_of_interest", "establishment"],
                        "formattedAddress": format!("{i} Test St, Los Angeles, CA 90024, USA"),
                        "location": {"latitude": lat + i as f64 * 0.001, "longitude": lon},
                        "rating": 4.5,
                        "userRatingCount": 100 + i,
                        "businessStatus": "OPERATIONAL",
                        "displayName": {"text": format!("Place {i}"), "languageCode": "en"},
                        "shortFormattedAddress": format!("{i} Test St"),
                        "currentOpeningHours": {
                            "openNow": i % 2 == 0,
                            "weekdayDescriptions": ["Monday: 7:00 AM – 6:00 PM"]
                        }
                    });
                    if i == 1 {
                        // Not every place says whether it is open.
                        p.as_object_mut().unwrap().remove("currentOpeningHours");
                    }
                    p
                })
                .collect();
            (200, json!({ "places": places }).to_string())
        }
        Act::Zero => (200, "{}\n".to_owned()),
        Act::Http500 => error(500, "INTERNAL", "Internal error encountered."),
        Act::Http429 | Act::OverQueryLimit => error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'SearchNearby requests'.",
        ),
        Act::UnknownError => error(503, "UNAVAILABLE", "The service is currently unavailable."),
        Act::Denied => error(
            403,
            "PERMISSION_DENIED",
            "Places API (New) has not been used in project 0 before or it is disabled.",
        ),
        Act::Garbage => (200, "<html><body>Gateway says hi</body></html>".to_owned()),
        Act::Hang | Act::Endless | Act::Huge | Act::OddStatus => unreachable!(),
    }
}

fn legacy_results(n: usize, (lat, lon): (f64, f64)) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let (la, lo) = (lat + i as f64 * 0.001, lon);
            json!({
                "business_status": "OPERATIONAL",
                "geometry": {
                    "location": {"lat": la, "lng": lo},
                    "viewport": {
                        "northeast": {"lat": la + 0.001, "lng": lo + 0.001},
                        "southwest": {"lat": la - 0.001, "lng": lo - 0.001}
                    }
                },
                "icon": "https://maps.gstatic.com/mapfiles/place_api/icons/v1/png_71/cafe-71.png",
                "name": format!("Legacy Place {i}"),
                "opening_hours": {"open_now": true},
                "place_id": format!("ChIJlegacy{i}"),
                "rating": 4.2,
                "reference": format!("ChIJlegacy{i}"),
                "scope": "GOOGLE",
                "types": ["cafe", "food", "point_of_interest", "establishment"],
                "user_ratings_total": 42 + i,
                "vicinity": format!("{i} Old Rd, Los Angeles")
            })
        })
        .collect()
}

/// Legacy Nearby Search: always `{html_attributions, results, status[, error_message]}`.
fn legacy_answer(act: Act, at: (f64, f64)) -> (u16, String) {
    let status = |status: &str, message: Option<&str>| {
        let mut v = json!({"html_attributions": [], "results": [], "status": status});
        if let Some(m) = message {
            v["error_message"] = m.into();
        }
        (200, serde_json::to_string_pretty(&v).unwrap())
    };
    match act {
        Act::Places(n) => {
            let v = json!({
                "html_attributions": [],
                "next_page_token": "AcJnMuF-not-followed",
                "results": legacy_results(n, at),
                "status": "OK"
            });
            (200, serde_json::to_string_pretty(&v).unwrap())
        }
        Act::Zero => status("ZERO_RESULTS", None),
        Act::Http500 => (500, "<html><body>Server Error</body></html>".to_owned()),
        Act::Http429 => (
            429,
            "<html><body>Too many requests</body></html>".to_owned(),
        ),
        Act::OverQueryLimit => status(
            "OVER_QUERY_LIMIT",
            Some("You have exceeded your daily request quota for this API."),
        ),
        Act::UnknownError => status("UNKNOWN_ERROR", None),
        Act::Denied => status("REQUEST_DENIED", Some("The provided API key is invalid.")),
        Act::Garbage => (200, "<html><body>Gateway says hi</body></html>".to_owned()),
        Act::OddStatus => status(
            "OVER_DAILY_LIMIT",
            Some("The daily limit was reached\nor billing is off."),
        ),
        Act::Hang | Act::Endless | Act::Huge => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------------
// A herd server in front of it

/// Every log line of this test binary, to show the key never appears in one.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct TestHerd {
    client: SocketAddr,
    peer: SocketAddr,
    google: Arc<Google>,
    shutdown: CancellationToken,
}

impl Drop for TestHerd {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One herd server (Goloman) with the google provider speaking `api` to a fake Google
/// that answers `otherwise` unless scripted; `places` adds lines to `[places]`.
async fn start(api: &str, otherwise: Act, places: &str) -> TestHerd {
    logs();
    let (google, url) = Google::start(otherwise).await;
    // Ports are required by the file but unused: the test binds its own listeners.
    let text = format!(
        "[places]\nprovider = \"google\"\nbackoff_min_ms = 10\nbackoff_max_ms = 40\n{places}\n\
         [[server]]\nname = \"Goloman\"\nclient_port = 1\npeer_port = 2\n"
    );
    let mut herd = HerdConfig::parse(&text, "test").unwrap();
    herd.apply_env(|var| match var {
        "HERD_PLACES_API" => Some(api.to_owned()),
        "HERD_PLACES_URL" => Some(url.clone()),
        "GOOGLE_PLACES_API_KEY" => Some(KEY.to_owned()),
        _ => None,
    })
    .unwrap();
    let stack = places::stack(&herd.places, OfflineProvider::new()).unwrap();
    let listeners = Listeners {
        client: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        peer: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let client = listeners.client.local_addr().unwrap();
    let peer = listeners.peer.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let me = herd.servers[0].clone();
    tokio::spawn(async move {
        server::run(Arc::new(herd), me, listeners, stack, token)
            .await
            .unwrap()
    });
    TestHerd {
        client,
        peer,
        google,
        shutdown,
    }
}

fn now() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// Sends IAMAT for `id` at `location`; returns the AT line.
async fn iamat(herd: &TestHerd, id: &str, location: &str) -> String {
    let mut s = TcpStream::connect(herd.client).await.unwrap();
    s.write_all(format!("IAMAT {id} {location} {}\n", now()).as_bytes())
        .await
        .unwrap();
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let mut b = [0u8; 256];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed before the AT line");
        line.extend_from_slice(&b[..n]);
    }
    let line = String::from_utf8(line).unwrap();
    assert!(line.starts_with("AT Goloman "), "{line}");
    line.trim_end().to_owned()
}

struct Reply {
    at: String,
    json: Value,
    text: String,
    took: Duration,
}

/// Sends one WHATSAT on a new connection; returns the reply, checked for shape.
async fn whatsat(herd: &TestHerd, id: &str, radius: &str, bound: usize) -> Reply {
    let mut s = TcpStream::connect(herd.client).await.unwrap();
    let started = Instant::now();
    s.write_all(format!("WHATSAT {id} {radius} {bound}\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    while !buf.windows(2).any(|w| w == b"\n\n") {
        let mut b = [0u8; 8192];
        let n = s.read(&mut b).await.unwrap();
        assert!(
            n > 0,
            "closed before the reply ended: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&b[..n]);
    }
    let took = started.elapsed();
    let text = String::from_utf8(buf).unwrap();
    assert!(
        text.ends_with("}\n\n"),
        "one reply, ended by two newlines: {text:?}"
    );
    let (at, json) = text.split_once('\n').unwrap();
    let json: Value = serde_json::from_str(json).unwrap();
    let at = at.to_owned();
    assert_eq!(json["html_attributions"], json!([]), "{text}");
    assert!(json["results"].as_array().unwrap().len() <= bound, "bound");
    Reply {
        at,
        json,
        text,
        took,
    }
}

fn results(r: &Reply) -> &Vec<Value> {
    r.json["results"].as_array().unwrap()
}

fn assert_failed(r: &Reply, status: &str) {
    assert_eq!(r.json["status"], status, "{}", r.json);
    assert_eq!(results(r).len(), 0);
    assert!(
        r.json["error_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        r.json
    );
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn new_api_gets_key_field_mask_and_metres_and_answers_in_nearby_search_shape() {
    let herd = start("new", Act::Places(5), "").await;
    let at = iamat(&herd, "kiwi.cs.ucla.edu", HERE).await;
    let r = whatsat(&herd, "kiwi.cs.ucla.edu", "10", 3).await;
    assert_eq!(r.at, at, "the stored AT line comes first");
    assert_eq!(r.json["status"], "OK");
    assert!(r.json.get("error_message").is_none());

    {
        let requests = herd.google.requests.lock().unwrap();
        assert_eq!(requests.len(), 1);
        let q = &requests[0];
        assert_eq!(
            (q.method.as_str(), q.path.as_str()),
            ("POST", "/v1/places:searchNearby")
        );
        assert_eq!(q.headers["x-goog-api-key"], KEY);
        let mask = &q.headers["x-goog-fieldmask"];
        for field in [
            "places.id",
            "places.displayName",
            "places.location",
            "places.shortFormattedAddress",
            "places.types",
            "places.rating",
            "places.userRatingCount",
            "places.businessStatus",
            "places.currentOpeningHours",
        ] {
            assert!(mask.split(',').any(|f| f == field), "{field} in {mask}");
        }
        assert!(q.headers["content-type"].starts_with("application/json"));
        assert!(q.query.is_empty(), "the key travels in a header only");
        let body: Value = serde_json::from_slice(&q.body).unwrap();
        let circle = &body["locationRestriction"]["circle"];
        assert_eq!(circle["radius"], 10_000, "10 km in metres");
        assert_eq!(circle["center"]["latitude"], HERE_EXACT.0);
        assert_eq!(circle["center"]["longitude"], HERE_EXACT.1);
        assert_eq!(body["maxResultCount"], 20, "the most, whatever the bound");
    }

    let got = results(&r);
    assert_eq!(got.len(), 3, "bound 3 of 5");
    assert_eq!(
        got[0],
        json!({
            "name": "Place 0",
            "place_id": "ChIJfake0",
            "geometry": {"location": {"lat": HERE_EXACT.0, "lng": HERE_EXACT.1}},
            "vicinity": "0 Test St",
            "types": ["cafe", "food", "point_of_interest", "establishment"],
            "rating": 4.5,
            "user_ratings_total": 100,
            "business_status": "OPERATIONAL",
            "opening_hours": {"open_now": true}
        })
    );
    assert!(got[1].get("opening_hours").is_none(), "only where given");
    assert_eq!(got[2]["opening_hours"]["open_now"], true);

    // The bound cuts after the cache: every bound is served from the one answer.
    let all = whatsat(&herd, "kiwi.cs.ucla.edu", "10", 20).await;
    assert_eq!(results(&all).len(), 5);
    let none = whatsat(&herd, "kiwi.cs.ucla.edu", "10", 0).await;
    assert_eq!(
        none.json["status"], "OK",
        "places are there, even at bound 0"
    );
    assert_eq!(results(&none).len(), 0);
    assert_eq!(herd.google.requests(), 1);
}

#[tokio::test]
async fn legacy_api_gets_location_radius_and_key_and_its_results_pass_through() {
    let herd = start("legacy", Act::Places(4), "").await;
    iamat(&herd, "kiwi", HERE).await;
    let r = whatsat(&herd, "kiwi", "2.5", 2).await;
    assert_eq!(r.json["status"], "OK");
    {
        let requests = herd.google.requests.lock().unwrap();
        let q = &requests[0];
        assert_eq!(
            (q.method.as_str(), q.path.as_str()),
            ("GET", "/maps/api/place/nearbysearch/json")
        );
        assert_eq!(q.query["location"], "34.06893,-118.445127");
        assert_eq!(q.query["radius"], "2500");
        assert_eq!(q.query["key"], KEY);
        assert!(!q.headers.contains_key("x-goog-api-key"));
    }
    // Each result is Google's own text, made compact: byte for byte, one per line.
    let sent: Vec<String> = legacy_results(4, HERE_EXACT)
        .iter()
        .map(|v| v.to_string())
        .collect();
    let lines: Vec<&str> = r
        .text
        .lines()
        .map(|l| l.trim_end_matches(',').trim())
        .collect();
    assert!(
        lines.contains(&sent[0].as_str()) && lines.contains(&sent[1].as_str()),
        "{}",
        r.text
    );
    assert!(!lines.contains(&sent[2].as_str()), "bound 2");
    let all = whatsat(&herd, "kiwi", "2.5", 20).await;
    let lines: Vec<&str> = all
        .text
        .lines()
        .map(|l| l.trim_end_matches(',').trim())
        .collect();
    assert!(
        sent.iter().all(|s| lines.contains(&s.as_str())),
        "{}",
        all.text
    );
    assert_eq!(results(&all).len(), 4);
    assert_eq!(herd.google.requests(), 1);
}

#[tokio::test]
async fn transient_failures_are_retried_then_succeed() {
    for api in ["new", "legacy"] {
        let herd = start(api, Act::Places(2), "max_attempts = 5").await;
        herd.google.script(&[
            Act::Http500,
            Act::Http429,
            Act::OverQueryLimit,
            Act::UnknownError,
        ]);
        iamat(&herd, "kiwi", HERE).await;
        let r = whatsat(&herd, "kiwi", "10", 5).await;
        assert_eq!(r.json["status"], "OK", "{api}: {}", r.json);
        assert_eq!(results(&r).len(), 2, "{api}");
        assert_eq!(
            herd.google.requests(),
            5,
            "{api}: four failures, then the answer"
        );
    }
}

#[tokio::test]
async fn retries_stop_at_the_cap_with_googles_word() {
    for api in ["new", "legacy"] {
        let herd = start(api, Act::Http500, "max_attempts = 3").await;
        iamat(&herd, "kiwi", HERE).await;
        let r = whatsat(&herd, "kiwi", "10", 5).await;
        assert_failed(&r, "UNKNOWN_ERROR");
        assert_eq!(herd.google.requests(), 3, "{api}");
    }
}

#[tokio::test]
async fn request_denied_is_not_retried() {
    for (api, message) in [
        (
            "new",
            "Places API (New) has not been used in project 0 before or it is disabled.",
        ),
        ("legacy", "The provided API key is invalid."),
    ] {
        let herd = start(api, Act::Denied, "max_attempts = 5").await;
        iamat(&herd, "kiwi", HERE).await;
        let r = whatsat(&herd, "kiwi", "10", 5).await;
        assert_failed(&r, "REQUEST_DENIED");
        assert_eq!(r.json["error_message"], message, "{api}");
        assert_eq!(herd.google.requests(), 1, "{api}");
        // A failure is not cached: the next WHATSAT asks again.
        whatsat(&herd, "kiwi", "10", 5).await;
        assert_eq!(herd.google.requests(), 2, "{api}");
    }
}

#[tokio::test]
async fn zero_results_and_garbage() {
    for api in ["new", "legacy"] {
        let herd = start(api, Act::Garbage, "").await;
        herd.google.script(&[Act::Zero]);
        iamat(&herd, "empty", "+0.000000-140.000000").await;
        iamat(&herd, "kiwi", HERE).await;
        let zero = whatsat(&herd, "empty", "50", 20).await;
        assert_eq!(zero.json["status"], "ZERO_RESULTS", "{api}");
        assert_eq!(results(&zero).len(), 0);
        assert!(zero.json.get("error_message").is_none());

        let junk = whatsat(&herd, "kiwi", "10", 5).await;
        assert_failed(&junk, "UNKNOWN_ERROR");
        assert_eq!(herd.google.requests(), 2, "{api}: garbage is not retried");
    }
}

#[tokio::test]
async fn a_hanging_google_gets_the_timeout_answer_within_the_deadline() {
    // Only the overall deadline can fire: one attempt would wait far longer.
    let herd = start(
        "new",
        Act::Hang,
        "timeout_ms = 700\nattempt_timeout_ms = 60000",
    )
    .await;
    iamat(&herd, "kiwi", HERE).await;
    let r = whatsat(&herd, "kiwi", "10", 5).await;
    assert_failed(&r, "UNKNOWN_ERROR");
    assert_eq!(
        r.json["error_message"],
        "places lookup timed out after 700 ms"
    );
    // Not before the deadline, and (the message says which deadline fired) well
    // before the attempt's 60 s could have.
    assert!(r.took >= Duration::from_millis(690), "{:?}", r.took);
    assert!(r.took < Duration::from_secs(60), "{:?}", r.took);

    // Per-attempt timeouts are transient: each attempt is cut, and retried, up to the cap.
    let herd = start(
        "legacy",
        Act::Hang,
        "timeout_ms = 10000\nattempt_timeout_ms = 150\nmax_attempts = 3",
    )
    .await;
    iamat(&herd, "kiwi", HERE).await;
    let r = whatsat(&herd, "kiwi", "10", 5).await;
    assert_failed(&r, "UNKNOWN_ERROR");
    assert_eq!(
        r.json["error_message"],
        "Google did not answer within 150 ms"
    );
    assert_eq!(herd.google.requests(), 3);
    // Three attempts of 150 ms at least, and answered before the overall 10 s
    // deadline could fire (which would have said "places lookup timed out").
    assert!(r.took >= Duration::from_millis(450), "{:?}", r.took);
    assert!(r.took < Duration::from_secs(10), "{:?}", r.took);
}

#[tokio::test]
async fn a_burst_of_identical_whatsats_makes_one_upstream_request() {
    let herd = start("new", Act::Places(20), "").await;
    *herd.google.delay.lock().unwrap() = Duration::from_millis(300);
    iamat(&herd, "kiwi", HERE).await;
    let herd = Arc::new(herd);
    // Radii that round to the same metre, and every bound: one lookup serves them all.
    let burst = |n: usize| {
        (0..n)
            .map(|i| {
                let herd = herd.clone();
                tokio::spawn(async move {
                    let radius = if i % 2 == 0 { "10" } else { "10.0004" };
                    let bound = i % 21;
                    let r = whatsat(&herd, "kiwi", radius, bound).await;
                    assert_eq!(r.json["status"], "OK", "{}", r.json);
                    assert_eq!(results(&r).len(), bound);
                })
            })
            .collect::<Vec<_>>()
    };
    for task in burst(300) {
        task.await.unwrap();
    }
    assert_eq!(herd.google.requests(), 1);
    // Later ones come from the cache.
    for task in burst(50) {
        task.await.unwrap();
    }
    assert_eq!(herd.google.requests(), 1);
    // The metrics say so too: the last 50 at least were cache hits (so may be the
    // stragglers of the first burst that arrived after its answer), the first was not.
    let metrics = scrape_metrics(herd.peer).await;
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"herd_places_cache_hits_total{server="Goloman"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no cache hit count in {metrics}"));
    assert!((50..350).contains(&hits), "{hits} cache hits");
    let ok = r#"herd_places_requests_total{server="Goloman",status="OK"} 350"#;
    assert!(metrics.lines().any(|l| l == ok), "{metrics}");
}

#[tokio::test]
async fn google_is_asked_at_the_clients_location_and_the_cache_shares_only_within_the_fraction() {
    let herd = start("new", Act::Places(1), "").await;
    // Two clients 5 m apart, each searching 10 m around itself: two searches, each
    // centred exactly where its client is.
    iamat(&herd, "a", HERE).await;
    iamat(&herd, "b", "+34.068975-118.445127").await;
    for id in ["a", "b"] {
        assert_eq!(whatsat(&herd, id, "0.01", 1).await.json["status"], "OK");
    }
    let centres = |from: usize| -> Vec<(f64, f64)> {
        herd.google.requests.lock().unwrap()[from..]
            .iter()
            .map(|q| {
                let body: Value = serde_json::from_slice(&q.body).unwrap();
                let c = &body["locationRestriction"]["circle"]["center"];
                (
                    c["latitude"].as_f64().unwrap(),
                    c["longitude"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(centres(0), [HERE_EXACT, (34.068975, -118.445127)]);
    // A 10 km search: a client 11 cm away (well within 1 % of 10 km) gets the answer
    // searched around the first one; 5 km away is another search, at its own centre.
    iamat(&herd, "c", "+34.068931-118.445127").await;
    iamat(&herd, "d", "+34.113930-118.445127").await;
    whatsat(&herd, "a", "10", 1).await;
    let shared = whatsat(&herd, "c", "10", 1).await;
    assert_eq!(shared.json["status"], "OK");
    assert_eq!(herd.google.requests(), 3, "c shares a's search");
    whatsat(&herd, "d", "10", 1).await;
    assert_eq!(centres(2), [HERE_EXACT, (34.11393, -118.445127)]);
}

#[tokio::test]
async fn an_old_herd_file_with_cache_decimals_still_runs_and_says_it_is_ignored() {
    let herd = start("new", Act::Places(1), "cache_decimals = 4").await;
    iamat(&herd, "kiwi", HERE).await;
    assert_eq!(whatsat(&herd, "kiwi", "10", 1).await.json["status"], "OK");
    let body: Value =
        serde_json::from_slice(&herd.google.requests.lock().unwrap()[0].body).unwrap();
    let c = &body["locationRestriction"]["circle"]["center"];
    assert_eq!(
        (c["latitude"].as_f64(), c["longitude"].as_f64()),
        (Some(HERE_EXACT.0), Some(HERE_EXACT.1))
    );
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("places.cache_decimals = 4 is deprecated and ignored")),
        "{logs}"
    );
}

#[tokio::test]
async fn a_huge_answer_is_cut_off_and_answered_as_a_failure_before_the_deadline() {
    for act in [Act::Endless, Act::Huge] {
        // The deadline is generous: the answer must come from the cap, not from a timeout.
        let herd = start(
            "new",
            act,
            "max_response_bytes = 65536\ntimeout_ms = 30000\nattempt_timeout_ms = 30000",
        )
        .await;
        iamat(&herd, "kiwi", HERE).await;
        let r = whatsat(&herd, "kiwi", "10", 5).await;
        assert_failed(&r, "UNKNOWN_ERROR");
        assert_eq!(
            r.json["error_message"],
            "Google's answer (HTTP 200) is longer than places.max_response_bytes (65536 bytes)",
            "{act:?}"
        );
        assert_eq!(herd.google.requests(), 1, "{act:?}: not retried");
        let metrics = scrape_metrics(herd.peer).await;
        let cut: u64 = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"herd_places_responses_cut_off_total{server="Goloman"} "#)
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no cut-off count in {metrics}"));
        assert!(cut >= 1, "{metrics}");
    }
}

#[tokio::test]
async fn an_unknown_status_word_reaches_the_client_but_not_the_metric_labels() {
    let herd = start("legacy", Act::OddStatus, "").await;
    iamat(&herd, "kiwi", HERE).await;
    let r = whatsat(&herd, "kiwi", "10", 5).await;
    assert_failed(&r, "OVER_DAILY_LIMIT");
    assert_eq!(
        r.json["error_message"],
        "The daily limit was reached\nor billing is off."
    );
    assert_eq!(herd.google.requests(), 1, "a final answer");
    let metrics = scrape_metrics(herd.peer).await;
    let other = r#"herd_places_requests_total{server="Goloman",status="OTHER"} 1"#;
    assert!(metrics.lines().any(|l| l == other), "{metrics}");
    assert!(!metrics.contains("OVER_DAILY_LIMIT"), "{metrics}");
}

/// The server's Prometheus metrics, over HTTP/1.1 on its peer port.
async fn scrape_metrics(peer: SocketAddr) -> String {
    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn the_concurrency_limit_caps_requests_in_flight_to_google() {
    let herd = start(
        "new",
        Act::Places(1),
        "max_concurrency = 2\ntimeout_ms = 20000",
    )
    .await;
    *herd.google.delay.lock().unwrap() = Duration::from_millis(150);
    let herd = Arc::new(herd);
    let spots: Vec<String> = (0..8)
        .map(|i| format!("+{}.000000+10.000000", 10 + i))
        .collect();
    for (i, spot) in spots.iter().enumerate() {
        iamat(&herd, &format!("c{i}"), spot).await;
    }
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let herd = herd.clone();
            tokio::spawn(async move { whatsat(&herd, &format!("c{i}"), "1", 1).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().json["status"], "OK");
    }
    assert_eq!(
        herd.google.requests(),
        8,
        "distinct spots, one request each"
    );
    assert_eq!(herd.google.most_running.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_transport_failure_is_answered_and_the_key_never_reaches_the_logs() {
    // A base URL where nothing listens: every attempt fails to connect.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    logs();
    let text = "[places]\nprovider = \"google\"\napi = \"legacy\"\nbackoff_min_ms = 5\nbackoff_max_ms = 10\n\
                [[server]]\nname = \"Goloman\"\nclient_port = 1\npeer_port = 2\n";
    let mut config = HerdConfig::parse(text, "test").unwrap();
    config
        .apply_env(|var| match var {
            "HERD_PLACES_URL" => Some(nowhere.clone()),
            "GOOGLE_PLACES_API_KEY" => Some(KEY.to_owned()),
            _ => None,
        })
        .unwrap();
    let stack = places::stack(&config.places, OfflineProvider::new()).unwrap();
    let listeners = Listeners {
        client: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        peer: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let (google, _) = Google::start(Act::Zero).await;
    let herd = TestHerd {
        client: listeners.client.local_addr().unwrap(),
        peer: listeners.peer.local_addr().unwrap(),
        google,
        shutdown: CancellationToken::new(),
    };
    let token = herd.shutdown.clone();
    let me = config.servers[0].clone();
    tokio::spawn(server::run(Arc::new(config), me, listeners, stack, token));
    iamat(&herd, "kiwi", HERE).await;
    let r = whatsat(&herd, "kiwi", "10", 5).await;
    assert_failed(&r, "UNKNOWN_ERROR");
    let message = r.json["error_message"].as_str().unwrap();
    assert!(message.starts_with("cannot reach Google"), "{message}");
    assert!(!message.contains(KEY), "{message}");

    // Denials, garbage and timeouts log their cause too; none of it shows the key.
    for (api, act) in [
        ("legacy", Act::Denied),
        ("new", Act::Garbage),
        ("legacy", Act::Hang),
    ] {
        let herd = start(api, act, "timeout_ms = 300").await;
        iamat(&herd, "kiwi", HERE).await;
        whatsat(&herd, "kiwi", "10", 5).await;
    }
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(logs.contains("places lookup failed"), "the cause is logged");
    assert!(logs.contains("cannot reach Google"), "the cause is logged");
    assert!(!logs.contains(KEY), "the key leaked into the logs");
    assert!(!logs.contains("AIzaTEST"), "the key leaked into the logs");
}

#[test]
fn a_google_herd_without_a_key_does_not_start() {
    let dir = std::env::temp_dir().join(format!("herd-google-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["serve", "Goloman", "--log-dir"])
        .arg(&dir)
        .env("HERD_PLACES", "google")
        .env_remove("GOOGLE_PLACES_API_KEY")
        .env_remove("HERD_CONFIG")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("GOOGLE_PLACES_API_KEY: not set"),
        "a clear message: {stderr}"
    );
}
