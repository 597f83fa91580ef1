//! What the load generator sends and how it judges what comes back, for both wires: the
//! herd line protocol (IAMAT, WHATSAT) and Redis (GEOADD, GEOSEARCH over the same points).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::resp;

/// The Redis key that IAMATs go to (GEOADD).
pub(crate) const REDIS_CLIENTS: &str = "herd:clients";
/// The Redis key holding the offline dataset's places (GEOSEARCH).
pub(crate) const REDIS_PLACES: &str = "herd:places";
/// Redis's geo index covers latitudes up to this (EPSG:900913 limits).
pub(crate) const REDIS_MAX_LAT: f64 = 85.051_128_78;

/// Longest herd reply the bench waits for before calling the stream broken.
const MAX_REPLY: usize = 1 << 20;

/// Which server software is under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    /// The herd line protocol (PROTOCOL.md), spoken by herd or any compatible server.
    Herd,
    /// RESP, with the equivalent Redis geo commands.
    Redis,
}

impl Wire {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Wire::Herd => "herd",
            Wire::Redis => "redis",
        }
    }
}

/// Which client IDs IAMATs carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Clients {
    /// A new client ID for every request: each IAMAT creates a record.
    Distinct,
    /// One client ID per connection, its time strictly increasing: each IAMAT replaces the record.
    Repeated,
    /// One client ID per connection, always the same time and place: after the first, every
    /// IAMAT is stale (answered from the stored record, not flooded). The cheap path.
    Stale,
}

impl Clients {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Clients::Distinct => "distinct",
            Clients::Repeated => "repeated",
            Clients::Stale => "stale",
        }
    }
}

/// A point on the Earth, in degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Point {
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

impl Point {
    /// A point drawn uniformly from the latitudes both herd and Redis accept.
    pub(crate) fn anywhere(rng: &mut fastrand::Rng) -> Point {
        Point {
            lat: (rng.f64() * 2.0 - 1.0) * 85.0,
            lon: (rng.f64() * 2.0 - 1.0) * 180.0,
        }
    }

    /// A point drawn uniformly from the disc of `radius_km` around `self` (flat-Earth
    /// approximation, fine for tens of kilometres away from the poles).
    pub(crate) fn near(self, radius_km: f64, rng: &mut fastrand::Rng) -> Point {
        const KM_PER_DEGREE: f64 = 111.195;
        let r = radius_km * rng.f64().sqrt();
        let (sin, cos) = (rng.f64() * std::f64::consts::TAU).sin_cos();
        let lat = (self.lat + r * cos / KM_PER_DEGREE).clamp(-85.0, 85.0);
        let mut lon = self.lon + r * sin / (KM_PER_DEGREE * lat.to_radians().cos());
        if lon > 180.0 {
            lon -= 360.0;
        } else if lon < -180.0 {
            lon += 360.0;
        }
        Point { lat, lon }
    }

    /// ISO 6709, as IAMAT wants it: `+34.068930-118.445127`.
    fn write_iso6709(self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let _ = write!(out, "{:+.6}{:+.6}", self.lat, self.lon);
    }
}

/// What a run asks of the server.
#[derive(Clone, Debug)]
pub(crate) enum Workload {
    Iamat {
        clients: Clients,
    },
    /// WHATSAT about clients seeded at `points` (`{prefix}-p{index}`), or GEOSEARCH at them.
    Whatsat {
        points: Arc<[Point]>,
        radius_km: f64,
        bound: u32,
    },
}

impl Workload {
    pub(crate) fn op(&self) -> Op {
        match self {
            Workload::Iamat { .. } => Op::Iamat,
            Workload::Whatsat { .. } => Op::Whatsat,
        }
    }
}

/// The kind of request, which decides how replies are framed and judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Iamat,
    Whatsat,
}

/// Client times start at the wall clock when the run starts and grow by a microsecond per
/// request, so the time differences in AT lines stay realistic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientClock {
    start_ns: u128,
}

impl ClientClock {
    pub(crate) fn now() -> ClientClock {
        let start_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        ClientClock { start_ns }
    }

    /// `D+.DDDDDDDDD`, `n` microseconds after the start.
    pub(crate) fn write(self, n: u64, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let t = self.start_ns + u128::from(n) * 1_000;
        let _ = write!(out, "{}.{:09}", t / 1_000_000_000, t % 1_000_000_000);
    }
}

/// A prefix that keeps this run's client IDs apart from any earlier run's.
pub(crate) fn run_prefix(tag: &str) -> Arc<str> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    Arc::from(format!(
        "{tag}{:x}",
        (nanos as u64) ^ u64::from(std::process::id())
    ))
}

/// The requests of one connection.
#[derive(Debug)]
pub(crate) struct Generator {
    wire: Wire,
    work: Arc<Workload>,
    prefix: Arc<str>,
    conn: usize,
    n: u64,
    rng: fastrand::Rng,
    clock: ClientClock,
    /// The place of a `Stale` connection's one client.
    home: Point,
    scratch: Vec<u8>,
}

impl Generator {
    pub(crate) fn new(
        wire: Wire,
        work: Arc<Workload>,
        prefix: Arc<str>,
        conn: usize,
        seed: u64,
        clock: ClientClock,
    ) -> Generator {
        let mut rng =
            fastrand::Rng::with_seed(seed ^ (conn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let home = Point::anywhere(&mut rng);
        Generator {
            wire,
            work,
            prefix,
            conn,
            n: 0,
            rng,
            clock,
            home,
            scratch: Vec::with_capacity(128),
        }
    }

    pub(crate) fn codec(&self) -> Codec {
        Codec {
            wire: self.wire,
            op: self.work.op(),
        }
    }

    /// Appends the next request to `out`, and to `key` what its reply must echo.
    pub(crate) fn next(&mut self, out: &mut Vec<u8>, key: &mut Vec<u8>) {
        use std::io::Write as _;
        let Generator {
            wire,
            work,
            prefix,
            conn,
            n,
            rng,
            clock,
            home,
            scratch: s,
        } = self;
        let this = *n;
        *n += 1;
        s.clear();
        match &**work {
            Workload::Iamat { clients } => {
                let (at, time) = match clients {
                    Clients::Distinct => {
                        let _ = write!(s, "{prefix}-{conn}-{this}");
                        (Point::anywhere(rng), this)
                    }
                    Clients::Repeated => {
                        let _ = write!(s, "{prefix}-{conn}");
                        (Point::anywhere(rng), this)
                    }
                    Clients::Stale => {
                        let _ = write!(s, "{prefix}-{conn}");
                        (*home, 0)
                    }
                };
                match wire {
                    Wire::Herd => {
                        out.extend_from_slice(b"IAMAT ");
                        let start = out.len();
                        out.extend_from_slice(s);
                        out.push(b' ');
                        at.write_iso6709(out);
                        out.push(b' ');
                        clock.write(time, out);
                        key.extend_from_slice(&out[start..]);
                        out.push(b'\n');
                    }
                    Wire::Redis => {
                        let id = s.len();
                        // The member: what a read-back asks for (GEOPOS).
                        key.extend_from_slice(&s[..id]);
                        let _ = write!(s, "{:.6}", at.lon);
                        let lon = s.len();
                        let _ = write!(s, "{:.6}", at.lat);
                        resp::command(
                            out,
                            &[
                                b"GEOADD",
                                REDIS_CLIENTS.as_bytes(),
                                &s[id..lon],
                                &s[lon..],
                                &s[..id],
                            ],
                        );
                    }
                }
            }
            Workload::Whatsat {
                points,
                radius_km,
                bound,
            } => {
                let i = rng.usize(..points.len());
                match wire {
                    Wire::Herd => {
                        let _ = write!(key, "{prefix}-p{i}");
                        out.extend_from_slice(b"WHATSAT ");
                        out.extend_from_slice(key);
                        let _ = writeln!(out, " {radius_km} {bound}");
                    }
                    Wire::Redis => {
                        let p = points[i];
                        let _ = write!(s, "{:.6}", p.lon);
                        let lon = s.len();
                        let _ = write!(s, "{:.6}", p.lat);
                        let lat = s.len();
                        let _ = write!(s, "{radius_km}");
                        let radius = s.len();
                        let _ = write!(s, "{bound}");
                        resp::command(
                            out,
                            &[
                                b"GEOSEARCH",
                                REDIS_PLACES.as_bytes(),
                                b"FROMLONLAT",
                                &s[..lon],
                                &s[lon..lat],
                                b"BYRADIUS",
                                &s[lat..radius],
                                b"km",
                                b"ASC",
                                b"COUNT",
                                &s[radius..],
                            ],
                        );
                    }
                }
            }
        }
    }
}

/// Where the next reply ends in the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Not all of it has arrived.
    More,
    /// The next reply is this many bytes.
    Reply(usize),
    /// The bytes cannot be split into replies any more.
    Broken,
}

/// How a reply is judged.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The reply the request deserves; `results` is the number of places, when counted.
    Ok { results: Option<u32> },
    /// `? ...` (herd) or `-ERR ...` (Redis): the server refused the request.
    Rejected,
    /// A WHATSAT reply whose places lookup failed (a `status` other than OK or ZERO_RESULTS).
    Failed,
    /// Anything else: not the reply this request should get.
    Malformed,
}

/// Frames and judges the replies of one kind of request on one wire.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Codec {
    pub(crate) wire: Wire,
    pub(crate) op: Op,
}

impl Codec {
    pub(crate) fn frame(self, buf: &[u8]) -> Frame {
        match self.wire {
            Wire::Redis => match resp::parse(buf) {
                Ok(Some((_, len))) => Frame::Reply(len),
                Ok(None) => Frame::More,
                Err(_) => Frame::Broken,
            },
            Wire::Herd => frame_line_reply(self.op, buf),
        }
    }

    /// Judges one framed reply to the request that expected `key`. `sample` asks for the full
    /// check of a WHATSAT reply's JSON (and its results counted), which costs more.
    pub(crate) fn judge(self, reply: &[u8], key: &[u8], sample: bool) -> Verdict {
        match self.wire {
            Wire::Redis => match (self.op, resp::parse(reply)) {
                (_, Ok(Some((resp::Reply::Error, _)))) => Verdict::Rejected,
                (Op::Iamat, Ok(Some((resp::Reply::Integer(0 | 1), _)))) => {
                    Verdict::Ok { results: None }
                }
                (Op::Whatsat, Ok(Some((resp::Reply::Array(n), _)))) => Verdict::Ok {
                    results: Some(n as u32),
                },
                _ => Verdict::Malformed,
            },
            Wire::Herd => match self.op {
                Op::Iamat => judge_iamat(reply, key),
                Op::Whatsat => judge_whatsat(reply, key, sample),
            },
        }
    }
}

/// A line reply is one line, except WHATSAT's answer: the AT line, JSON, and an empty line.
pub(crate) fn frame_line_reply(op: Op, buf: &[u8]) -> Frame {
    let multi_line = op == Op::Whatsat && {
        let head = &buf[..buf.len().min(3)];
        if head.len() < 3 && b"AT ".starts_with(head) && !buf.contains(&b'\n') {
            return Frame::More;
        }
        head == b"AT "
    };
    let end = if multi_line {
        memchr::memmem::find(buf, b"\n\n").map(|p| p + 2)
    } else {
        memchr::memchr(b'\n', buf).map(|p| p + 1)
    };
    match end {
        Some(len) => Frame::Reply(len),
        None if buf.len() > MAX_REPLY => Frame::Broken,
        None => Frame::More,
    }
}

/// The line without its line end.
fn strip(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `AT server diff REST`: checks the head and returns REST (client, location, time).
fn at_line_tail(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"AT ")?;
    let (server, rest) = split_field(rest)?;
    let (diff, rest) = split_field(rest)?;
    let signed = matches!(diff.first(), Some(b'+' | b'-')) && diff.len() > 1;
    (!server.is_empty() && signed).then_some(rest)
}

fn split_field(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let p = s.iter().position(|&b| b == b' ')?;
    Some((&s[..p], &s[p + 1..]))
}

fn judge_iamat(reply: &[u8], key: &[u8]) -> Verdict {
    let line = strip(reply);
    if line.starts_with(b"?") {
        return Verdict::Rejected;
    }
    match at_line_tail(line) {
        Some(tail) if tail == key => Verdict::Ok { results: None },
        _ => Verdict::Malformed,
    }
}

fn judge_whatsat(reply: &[u8], id: &[u8], sample: bool) -> Verdict {
    if reply.starts_with(b"?") {
        return Verdict::Rejected;
    }
    let Some(nl) = reply.iter().position(|&b| b == b'\n') else {
        return Verdict::Malformed;
    };
    let client = at_line_tail(strip(&reply[..nl])).and_then(split_field);
    if !matches!(client, Some((c, _)) if c == id) {
        return Verdict::Malformed;
    }
    let Some(json) = reply[nl + 1..].strip_suffix(b"\n\n") else {
        return Verdict::Malformed;
    };
    if sample {
        #[derive(serde::Deserialize)]
        struct Nearby {
            results: Vec<serde::de::IgnoredAny>,
            status: String,
        }
        return match serde_json::from_slice::<Nearby>(json) {
            Ok(n) if n.status == "OK" || n.status == "ZERO_RESULTS" => Verdict::Ok {
                results: Some(n.results.len() as u32),
            },
            Ok(_) => Verdict::Failed,
            Err(_) => Verdict::Malformed,
        };
    }
    if !(json.starts_with(b"{") && json.ends_with(b"}")) {
        return Verdict::Malformed;
    }
    match json_status(json) {
        Some(b"OK" | b"ZERO_RESULTS") => Verdict::Ok { results: None },
        Some(_) => Verdict::Failed,
        None => Verdict::Malformed,
    }
}

/// The value of the top-level `"status"` string, found without parsing the whole object (the
/// key comes after `results`, whose place names could only contain it escaped).
fn json_status(json: &[u8]) -> Option<&[u8]> {
    let key = b"\"status\"";
    let at = json.windows(key.len()).rposition(|w| w == key)?;
    let rest = &json[at + key.len()..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &[u8] =
        b"AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n";
    const KEY: &[u8] = b"kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997";

    fn whatsat_reply(status: &str, results: usize) -> Vec<u8> {
        let mut r = AT.to_vec();
        let items: Vec<String> = (0..results)
            .map(|i| format!("    {{\"name\":\"p{i}\"}}"))
            .collect();
        r.extend_from_slice(
            format!(
                "{{\n  \"html_attributions\": [],\n  \"results\": [\n{}\n  ],\n  \"status\": \"{status}\"\n}}\n\n",
                items.join(",\n")
            )
            .as_bytes(),
        );
        r
    }

    #[test]
    fn frames_iamat_replies_line_by_line() {
        let herd = |buf: &[u8]| frame_line_reply(Op::Iamat, buf);
        assert_eq!(herd(b""), Frame::More);
        assert_eq!(herd(b"AT Goloman +0.1 x"), Frame::More);
        assert_eq!(herd(AT), Frame::Reply(AT.len()));
        let mut two = AT.to_vec();
        two.extend_from_slice(b"? IAMAT x\n");
        assert_eq!(herd(&two), Frame::Reply(AT.len()));
        assert_eq!(herd(&two[AT.len()..]), Frame::Reply(10));
        assert_eq!(herd(&vec![b'x'; MAX_REPLY + 1]), Frame::Broken);
    }

    #[test]
    fn frames_whatsat_replies_up_to_the_empty_line() {
        let herd = |buf: &[u8]| frame_line_reply(Op::Whatsat, buf);
        let reply = whatsat_reply("OK", 3);
        for cut in 0..reply.len() {
            assert_eq!(herd(&reply[..cut]), Frame::More, "cut at {cut}");
        }
        let mut two = reply.clone();
        two.extend_from_slice(b"? WHATSAT nobody 10 5\n");
        assert_eq!(herd(&two), Frame::Reply(reply.len()));
        assert_eq!(herd(&two[reply.len()..]), Frame::Reply(22));
        // A `?` (or anything that is not an AT line) is one line.
        assert_eq!(herd(b"? x\nAT "), Frame::Reply(4));
        assert_eq!(herd(b"A"), Frame::More);
        assert_eq!(herd(b"A\n"), Frame::Reply(2));
    }

    #[test]
    fn judges_iamat_replies() {
        let herd = Codec {
            wire: Wire::Herd,
            op: Op::Iamat,
        };
        assert_eq!(herd.judge(AT, KEY, false), Verdict::Ok { results: None });
        assert_eq!(
            herd.judge(&AT[..AT.len() - 1], KEY, false),
            Verdict::Ok { results: None },
            "the line end is not part of the line"
        );
        assert_eq!(
            herd.judge(b"? IAMAT kiwi +1+1 1\n", KEY, false),
            Verdict::Rejected
        );
        // Another client's, or a stale record's, AT line is not this request's reply.
        let other = b"AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963996\n";
        assert_eq!(herd.judge(other, KEY, false), Verdict::Malformed);
        for bad in [
            &b"AT Goloman 0.26 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n"[..],
            b"AT  +0.2 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n",
            b"OK\n",
            b"\n",
        ] {
            assert_eq!(herd.judge(bad, KEY, false), Verdict::Malformed);
        }
    }

    #[test]
    fn judges_whatsat_replies() {
        let herd = Codec {
            wire: Wire::Herd,
            op: Op::Whatsat,
        };
        let id = b"kiwi.cs.ucla.edu";
        let ok = whatsat_reply("OK", 3);
        assert_eq!(herd.judge(&ok, id, false), Verdict::Ok { results: None });
        assert_eq!(herd.judge(&ok, id, true), Verdict::Ok { results: Some(3) });
        let zero = whatsat_reply("ZERO_RESULTS", 0);
        assert_eq!(
            herd.judge(&zero, id, true),
            Verdict::Ok { results: Some(0) }
        );
        let failed = whatsat_reply("OVER_QUERY_LIMIT", 0);
        assert_eq!(herd.judge(&failed, id, false), Verdict::Failed);
        assert_eq!(herd.judge(&failed, id, true), Verdict::Failed);
        assert_eq!(herd.judge(&ok, b"kiwi", false), Verdict::Malformed);
        assert_eq!(
            herd.judge(b"? WHATSAT kiwi 10 5\n", id, false),
            Verdict::Rejected
        );
        let mut broken = ok.clone();
        broken.truncate(ok.len() - 4);
        broken.extend_from_slice(b"\n\n");
        assert_eq!(herd.judge(&broken, id, false), Verdict::Malformed);
        assert_eq!(herd.judge(&broken, id, true), Verdict::Malformed);
        // A place named "status" does not fool the light check.
        let tricky = String::from_utf8(whatsat_reply("OK", 0)).unwrap().replace(
            "\"results\": [\n\n",
            "\"results\": [{\"name\":\"\\\"status\\\": \\\"X\\\"\"}\n",
        );
        assert_eq!(
            herd.judge(tricky.as_bytes(), id, false),
            Verdict::Ok { results: None }
        );
    }

    #[test]
    fn judges_redis_replies() {
        let geoadd = Codec {
            wire: Wire::Redis,
            op: Op::Iamat,
        };
        assert_eq!(
            geoadd.judge(b":1\r\n", b"", false),
            Verdict::Ok { results: None }
        );
        assert_eq!(
            geoadd.judge(b":0\r\n", b"", false),
            Verdict::Ok { results: None }
        );
        assert_eq!(
            geoadd.judge(b"-ERR invalid\r\n", b"", false),
            Verdict::Rejected
        );
        assert_eq!(geoadd.judge(b"*0\r\n", b"", false), Verdict::Malformed);
        let search = Codec {
            wire: Wire::Redis,
            op: Op::Whatsat,
        };
        assert_eq!(
            search.judge(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", b"", false),
            Verdict::Ok { results: Some(2) }
        );
        assert_eq!(search.judge(b":1\r\n", b"", false), Verdict::Malformed);
        assert_eq!(search.frame(b"*2\r\n$1\r\na\r\n"), Frame::More);
        assert_eq!(search.frame(b"? x\n"), Frame::Broken);
    }

    fn generate(wire: Wire, work: Workload, count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut g = Generator::new(
            wire,
            Arc::new(work),
            Arc::from("t"),
            7,
            42,
            ClientClock {
                start_ns: 1_520_023_934_918_963_997,
            },
        );
        (0..count)
            .map(|_| {
                let (mut out, mut key) = (Vec::new(), Vec::new());
                g.next(&mut out, &mut key);
                (out, key)
            })
            .collect()
    }

    #[test]
    fn iamat_requests_are_valid_and_their_keys_match_the_reply() {
        let reqs = generate(
            Wire::Herd,
            Workload::Iamat {
                clients: Clients::Distinct,
            },
            3,
        );
        for (i, (line, key)) in reqs.iter().enumerate() {
            let line = std::str::from_utf8(line).unwrap();
            assert!(line.starts_with(&format!("IAMAT t-7-{i} ")), "{line}");
            assert!(line.ends_with('\n'));
            assert_eq!(&line.as_bytes()[6..line.len() - 1], &key[..]);
            assert!(
                matches!(
                    herd::wire::parse(line.trim_end().as_bytes(), usize::MAX),
                    Ok(herd::wire::Command::IAmAt(_))
                ),
                "{line}"
            );
        }
        assert!(
            std::str::from_utf8(&reqs[1].0)
                .unwrap()
                .ends_with(" 1520023934.918964997\n")
        );

        let repeated = generate(
            Wire::Herd,
            Workload::Iamat {
                clients: Clients::Repeated,
            },
            2,
        );
        assert!(repeated[0].0.starts_with(b"IAMAT t-7 "));
        assert!(repeated[1].0.starts_with(b"IAMAT t-7 "));
        assert_ne!(repeated[0].1, repeated[1].1, "times grow");
        let stale = generate(
            Wire::Herd,
            Workload::Iamat {
                clients: Clients::Stale,
            },
            2,
        );
        assert_eq!(stale[0], stale[1]);
    }

    #[test]
    fn redis_requests_are_the_equivalent_geo_commands() {
        let reqs = generate(
            Wire::Redis,
            Workload::Iamat {
                clients: Clients::Distinct,
            },
            1,
        );
        let text = String::from_utf8(reqs[0].0.clone()).unwrap();
        let parts: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(&parts[..5], ["*5", "$6", "GEOADD", "$12", "herd:clients"]);
        assert_eq!(parts[10], "t-7-0");
        assert_eq!(reqs[0].1, b"t-7-0", "the key is the member");

        let work = Workload::Whatsat {
            points: Arc::from([Point {
                lat: 34.0522,
                lon: -118.2437,
            }]),
            radius_km: 10.0,
            bound: 20,
        };
        let herd = generate(Wire::Herd, work.clone(), 1);
        assert_eq!(herd[0].0, b"WHATSAT t-p0 10 20\n");
        assert_eq!(herd[0].1, b"t-p0");
        let redis = generate(Wire::Redis, work, 1);
        let mut expected = Vec::new();
        resp::command(
            &mut expected,
            &[
                b"GEOSEARCH",
                b"herd:places",
                b"FROMLONLAT",
                b"-118.243700",
                b"34.052200",
                b"BYRADIUS",
                b"10",
                b"km",
                b"ASC",
                b"COUNT",
                b"20",
            ],
        );
        assert_eq!(redis[0].0, expected);
    }

    #[test]
    fn points_near_a_centre_stay_within_the_radius() {
        let mut rng = fastrand::Rng::with_seed(1);
        let la = Point {
            lat: 34.0522,
            lon: -118.2437,
        };
        for _ in 0..1000 {
            let p = la.near(20.0, &mut rng);
            let dy = (p.lat - la.lat) * 111.195;
            let dx = (p.lon - la.lon) * 111.195 * la.lat.to_radians().cos();
            assert!((dx * dx + dy * dy).sqrt() <= 20.1, "{p:?}");
        }
        for _ in 0..1000 {
            let p = Point::anywhere(&mut rng);
            assert!(p.lat.abs() <= 85.0 && p.lon.abs() <= 180.0);
        }
    }
}
