//! Parsing a client line into a [`Command`], borrowing every field from the line.

use super::lex::fields;
use super::num::{self, Decimal};
use super::time::ClientTime;

/// A parsed client line.
#[derive(Clone, Debug, PartialEq)]
pub enum Command<'a> {
    /// Only whitespace: no reply at all.
    Blank,
    IAmAt(IAmAt<'a>),
    WhatsAt(WhatsAt<'a>),
}

/// `IAMAT <client> <location> <time>`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct IAmAt<'a> {
    /// Any non-whitespace bytes, echoed byte for byte.
    pub client_id: &'a [u8],
    /// The location field, verbatim.
    pub location: &'a [u8],
    /// The time field, verbatim.
    pub time: &'a [u8],
    pub client_time: ClientTime,
}

impl IAmAt<'_> {
    /// Latitude within [-90, 90] and longitude within [-180, 180], in degrees. Not
    /// kept in the command: nothing on the way to a record needs them (the record
    /// keeps the text), and two decimal-to-float conversions cost every IAMAT, at the
    /// server that takes it and at every server it is flooded to, about 1,500
    /// instructions.
    pub fn lat_lon(&self) -> (f64, f64) {
        parse_location(self.location).expect("a validated location")
    }
}

/// `WHATSAT <client> <radius km> <bound>`, validated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WhatsAt<'a> {
    pub client_id: &'a [u8],
    /// 0 < radius <= 50.
    pub radius_km: f64,
    /// 0 <= bound <= 20.
    pub bound: usize,
}

/// Why a line is invalid; each one is answered `? <line>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command")]
    UnknownCommand,
    #[error(
        "the client ID is {len} bytes, longer than the {max}-byte limit (gateway.max_client_id_bytes)"
    )]
    ClientIdTooLong { len: usize, max: usize },
    #[error("{command} takes 4 fields, got {found}")]
    FieldCount { command: &'static str, found: usize },
    /// Only for the fields of an update from a neighbour ([`iamat_of_fields`]).
    #[error("a field is empty or holds whitespace")]
    NotOneField,
    #[error("location is not ISO 6709 [+-]D+[.D+][+-]D+[.D+]")]
    BadLocation,
    #[error("latitude is not within [-90, 90]")]
    LatitudeRange,
    #[error("longitude is not within [-180, 180]")]
    LongitudeRange,
    #[error("time is not POSIX seconds D+[.D+]")]
    BadTime,
    #[error("radius is not D+[.D+]")]
    BadRadius,
    #[error("radius is not within (0, 50] km")]
    RadiusRange,
    #[error("bound is not D+")]
    BadBound,
    #[error("bound is not within [0, 20]")]
    BoundRange,
}

impl ParseError {
    /// The `herd_commands_total{kind="invalid"}` outcome of this error: a client ID
    /// past the limit is counted on its own, as a limit that bit.
    pub fn outcome(&self) -> &'static str {
        match self {
            ParseError::ClientIdTooLong { .. } => "client_id_too_long",
            _ => "rejected",
        }
    }
}

const MAX_LAT: u32 = 90;
const MAX_LON: u32 = 180;
const MAX_RADIUS_KM: u32 = 50;
const MAX_BOUND: usize = 20;

/// Parses one line, given WITHOUT its line end (see [`strip_line_end`](super::strip_line_end)).
/// Command names are case-sensitive: exactly `IAMAT` or `WHATSAT`. A client ID longer
/// than `max_client_id` bytes is an error (`gateway.max_client_id_bytes`): a record
/// is stored and flooded to every server, so its size is bounded here, at the door.
pub fn parse(line: &[u8], max_client_id: usize) -> Result<Command<'_>, ParseError> {
    let mut fields = fields(line);
    let Some(name) = fields.next() else {
        return Ok(Command::Blank);
    };
    let command = match name {
        b"IAMAT" => "IAMAT",
        b"WHATSAT" => "WHATSAT",
        _ => return Err(ParseError::UnknownCommand),
    };
    let mut args: [&[u8]; 3] = [&[]; 3];
    let mut n = 0;
    for field in fields {
        if let Some(slot) = args.get_mut(n) {
            *slot = field;
        }
        n += 1;
    }
    if n != args.len() {
        return Err(ParseError::FieldCount {
            command,
            found: n + 1,
        });
    }
    let [client_id, a, b] = args;
    if client_id.len() > max_client_id {
        return Err(ParseError::ClientIdTooLong {
            len: client_id.len(),
            max: max_client_id,
        });
    }
    if command == "IAMAT" {
        Ok(Command::IAmAt(checked_iamat(client_id, a, b)?))
    } else {
        Ok(Command::WhatsAt(WhatsAt {
            client_id,
            radius_km: parse_radius(a)?,
            bound: parse_bound(b)?,
        }))
    }
}

/// An IAMAT of fields already split (the ID already checked against its bound, if
/// any): the location and the time, as [`parse`] checks them.
fn checked_iamat<'a>(
    client_id: &'a [u8],
    location: &'a [u8],
    time: &'a [u8],
) -> Result<IAmAt<'a>, ParseError> {
    check_location(location)?;
    let client_time = ClientTime::parse(time)?;
    Ok(IAmAt {
        client_id,
        location,
        time,
        client_time,
    })
}

/// The IAMAT that `IAMAT <client_id> <location> <time>` would be, judged as [`parse`]
/// judges the fields of a line, without making that line: for an update from a
/// neighbour, whose fields come apart. Each must be one field (not empty, no
/// whitespace): one that is not is refused (a line made of them would split
/// differently).
pub fn iamat_of_fields<'a>(
    client_id: &'a [u8],
    location: &'a [u8],
    time: &'a [u8],
) -> Result<IAmAt<'a>, ParseError> {
    let parts = [client_id, location, time];
    if parts
        .iter()
        .any(|f| f.is_empty() || f.iter().any(|&b| super::is_ws(b)))
    {
        let found = 1 + parts.iter().map(|f| fields(f).count()).sum::<usize>();
        return Err(if found == 4 {
            ParseError::NotOneField
        } else {
            ParseError::FieldCount {
                command: "IAMAT",
                found,
            }
        });
    }
    checked_iamat(client_id, location, time)
}

/// An ISO 6709 location field, `[+-]D+[.D+][+-]D+[.D+]`, range-checked on the exact
/// decimal text.
fn check_location(field: &[u8]) -> Result<(), ParseError> {
    location_texts(field).map(|_| ())
}

/// [`check_location`], then the location as (latitude, longitude).
pub fn parse_location(field: &[u8]) -> Result<(f64, f64), ParseError> {
    let (lat_text, lon_text) = location_texts(field)?;
    let lat = num::to_f64(lat_text).ok_or(ParseError::BadLocation)?;
    let lon = num::to_f64(lon_text).ok_or(ParseError::BadLocation)?;
    Ok((lat, lon))
}

/// The signed latitude and longitude texts of a valid location field.
fn location_texts(field: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let (lat_text, lat, rest) = signed(field).ok_or(ParseError::BadLocation)?;
    let (lon_text, lon, rest) = signed(rest).ok_or(ParseError::BadLocation)?;
    if !rest.is_empty() {
        return Err(ParseError::BadLocation);
    }
    if lat.exceeds(MAX_LAT) {
        return Err(ParseError::LatitudeRange);
    }
    if lon.exceeds(MAX_LON) {
        return Err(ParseError::LongitudeRange);
    }
    Ok((lat_text, lon_text))
}

/// A mandatory sign then `D+[.D+]`: the signed text, its digits, and what follows.
fn signed(s: &[u8]) -> Option<(&[u8], Decimal<'_>, &[u8])> {
    let (&sign, unsigned) = s.split_first()?;
    if sign != b'+' && sign != b'-' {
        return None;
    }
    let (d, rest) = num::scan(unsigned)?;
    let text = &s[..s.len() - rest.len()];
    Some((text, d, rest))
}

fn parse_radius(field: &[u8]) -> Result<f64, ParseError> {
    let d = num::whole(field).ok_or(ParseError::BadRadius)?;
    if d.is_zero() || d.exceeds(MAX_RADIUS_KM) {
        return Err(ParseError::RadiusRange);
    }
    num::to_f64(field).ok_or(ParseError::BadRadius)
}

fn parse_bound(field: &[u8]) -> Result<usize, ParseError> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadBound);
    }
    let digits = num::trim_zeros(field);
    // MAX_BOUND has 2 digits; a longer one must not reach the (wrapping) conversion.
    if digits.len() > 2 {
        return Err(ParseError::BoundRange);
    }
    match usize::try_from(num::small_value(digits)) {
        Ok(bound) if bound <= MAX_BOUND => Ok(bound),
        _ => Err(ParseError::BoundRange),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with no client ID limit; `client_id_limit` tests the limit.
    fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
        super::parse(line, usize::MAX)
    }

    #[test]
    fn client_id_limit() {
        let id = "x".repeat(16);
        let ok = format!("IAMAT {id} +1+2 3");
        assert!(matches!(
            super::parse(ok.as_bytes(), 16),
            Ok(Command::IAmAt(_))
        ));
        let w = format!("WHATSAT {id} 1 2");
        assert!(matches!(
            super::parse(w.as_bytes(), 16),
            Ok(Command::WhatsAt(_))
        ));
        let long = format!("IAMAT {id}y +1+2 3");
        assert_eq!(
            super::parse(long.as_bytes(), 16),
            Err(ParseError::ClientIdTooLong { len: 17, max: 16 })
        );
        let long = format!("WHATSAT {id}y 1 2");
        assert_eq!(
            super::parse(long.as_bytes(), 16),
            Err(ParseError::ClientIdTooLong { len: 17, max: 16 })
        );
        // The field count is checked first; the ID before the other fields.
        assert!(matches!(
            super::parse(format!("IAMAT {id}y +1+2").as_bytes(), 16),
            Err(ParseError::FieldCount { .. })
        ));
        assert!(matches!(
            super::parse(format!("IAMAT {id}y bad bad").as_bytes(), 16),
            Err(ParseError::ClientIdTooLong { .. })
        ));
    }

    fn iamat(line: &str) -> IAmAt<'_> {
        match parse(line.as_bytes()) {
            Ok(Command::IAmAt(c)) => c,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn whatsat(line: &str) -> WhatsAt<'_> {
        match parse(line.as_bytes()) {
            Ok(Command::WhatsAt(c)) => c,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn err(line: &[u8]) -> ParseError {
        match parse(line) {
            Err(e) => e,
            Ok(c) => panic!("{:?} parsed: {c:?}", String::from_utf8_lossy(line)),
        }
    }

    fn location_err(location: &str) -> ParseError {
        err(format!("IAMAT c {location} 1").as_bytes())
    }

    fn time_err(time: &str) -> ParseError {
        err(format!("IAMAT c +1+1 {time}").as_bytes())
    }

    #[test]
    fn protocol_iamat_example() {
        let c = iamat("IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997");
        assert_eq!(c.client_id, b"kiwi.cs.ucla.edu");
        assert_eq!(c.location, b"+34.068930-118.445127");
        assert_eq!(c.time, b"1520023934.918963997");
        assert_eq!(c.lat_lon(), (34.06893, -118.445127));
        assert_eq!(c.client_time.seconds_digits(), "1520023934");
        assert_eq!(c.client_time.nanos(), 918_963_997);
    }

    #[test]
    fn protocol_whatsat_example() {
        let c = whatsat("WHATSAT kiwi.cs.ucla.edu 10 5");
        assert_eq!(
            c,
            WhatsAt {
                client_id: b"kiwi.cs.ucla.edu",
                radius_km: 10.0,
                bound: 5
            }
        );
    }

    #[test]
    fn fields_are_borrowed_from_the_line() {
        let line = b"IAMAT a +1+2 3".to_vec();
        let Ok(Command::IAmAt(c)) = parse(&line) else {
            panic!("not parsed")
        };
        assert_eq!(c.client_id.as_ptr(), line[6..].as_ptr());
        assert_eq!(c.time.as_ptr(), line[13..].as_ptr());
    }

    #[test]
    fn blank_lines() {
        assert_eq!(parse(b""), Ok(Command::Blank));
        assert_eq!(parse(b" \t\x0b\x0c\r "), Ok(Command::Blank));
    }

    #[test]
    fn any_whitespace_separates_fields() {
        let c = iamat("\x0b IAMAT\x0cid\t\t+1+2\r\x0b3 \r");
        assert_eq!(
            (c.client_id, c.location, c.time),
            (&b"id"[..], &b"+1+2"[..], &b"3"[..])
        );
        assert_eq!(whatsat("WHATSAT\x0bid\x0c1\t2").bound, 2);
    }

    #[test]
    fn client_ids_are_bytes() {
        let c = iamat("IAMAT 🦀🐑 +1+2 3");
        assert_eq!(c.client_id, "🦀🐑".as_bytes());
        let Ok(Command::IAmAt(c)) = parse(b"IAMAT \xff\xfe\x80 +1+2 3") else {
            panic!("invalid UTF-8 ID refused")
        };
        assert_eq!(c.client_id, b"\xff\xfe\x80");
        // NBSP (Latin-1 and UTF-8) is part of the ID, not a separator.
        let Ok(Command::IAmAt(c)) = parse(b"IAMAT a\xa0b +1+2 3") else {
            panic!("0xA0 split the ID")
        };
        assert_eq!(c.client_id, b"a\xa0b");
        assert_eq!(
            whatsat("WHATSAT a\u{a0}b 1 2").client_id,
            "a\u{a0}b".as_bytes()
        );
        assert_eq!(
            err("WHATSAT a \u{a0}b 1 2".as_bytes()),
            ParseError::FieldCount {
                command: "WHATSAT",
                found: 5
            }
        );
    }

    #[test]
    fn unknown_and_misspelt_commands() {
        for line in [
            "iamat a +1+2 3",
            "Iamat a +1+2 3",
            "IAMATT a +1+2 3",
            "IAMA a +1+2 3",
            "whatsat a 1 2",
            "WHATAT a 1 2",
            "WHATSATT a 1 2",
            "FOO i am client 10 32",
            "AT Goloman +0.1 a +1+2 3",
            "\u{a0}IAMAT a +1+2 3",
            "IAMAT\u{a0}a +1+2 3",
        ] {
            assert_eq!(err(line.as_bytes()), ParseError::UnknownCommand, "{line:?}");
        }
    }

    #[test]
    fn wrong_field_counts() {
        let count = |command, found| ParseError::FieldCount { command, found };
        assert_eq!(err(b"IAMAT"), count("IAMAT", 1));
        assert_eq!(err(b"IAMAT a +1+2"), count("IAMAT", 3));
        assert_eq!(err(b"IAMAT a +1+2 3 4"), count("IAMAT", 5));
        assert_eq!(err(b"IAMAT a +1+2 3 4 5 6"), count("IAMAT", 7));
        assert_eq!(err(b"WHATSAT"), count("WHATSAT", 1));
        assert_eq!(err(b"WHATSAT a 1"), count("WHATSAT", 3));
        assert_eq!(err(b"WHATSAT a 1 2 3"), count("WHATSAT", 5));
        // Counting comes before field checks.
        assert_eq!(err(b"IAMAT a bad"), count("IAMAT", 3));
    }

    #[test]
    fn locations() {
        let at = |loc: &str| {
            let line = format!("IAMAT c {loc} 1");
            let c = iamat(&line);
            c.lat_lon()
        };
        assert_eq!(at("+90.000+180.0"), (90.0, 180.0));
        assert_eq!(at("-90-180"), (-90.0, -180.0));
        assert_eq!(at("+00090.0+0"), (90.0, 0.0));
        assert_eq!(at("-0-0"), (0.0, 0.0));
        assert_eq!(at("+89.999999-179.9999999"), (89.999999, -179.9999999));
        assert_eq!(at("+0.5-000001.25"), (0.5, -1.25));
        assert_eq!(at("+1+2"), (1.0, 2.0));
    }

    #[test]
    fn malformed_locations() {
        for loc in [
            "34.068930-118.445127",
            "+34.068930118.445127",
            "+34.068930",
            "+-34-118",
            "-+34-118",
            "+34+-118",
            "+34,068930-118,445127",
            "+34.068930,-118.445127",
            "+34.0a-118.4",
            "+N34-118",
            "+34-118W",
            "+3e1-118",
            "+34-1E2",
            "+34.-118",
            "+.5-118",
            "+34-118.",
            "+34-118+1",
            "+34-118-",
            "+34-118.5.5",
            "+-",
            "+",
            "++",
            "+34",
            "-",
            "+inf+0",
            "+NaN+0",
            "+١+٢",
        ] {
            assert_eq!(location_err(loc), ParseError::BadLocation, "{loc:?}");
        }
        // A space splits the field: a field-count error.
        assert!(matches!(
            err(b"IAMAT c +34 -118 1"),
            ParseError::FieldCount { .. }
        ));
    }

    #[test]
    fn coordinate_ranges_are_exact() {
        for loc in [
            "+90.0000000000000000001+0",
            "-90.0000000000000000001+0",
            "+90.000000001+0",
            "+91+0",
            "-91+0",
            "+100+0",
            "+0000091+0",
            "+999999999999999999999999999+0",
        ] {
            assert_eq!(location_err(loc), ParseError::LatitudeRange, "{loc:?}");
        }
        for loc in [
            "+0+180.0000000000000000001",
            "+0-180.0000000000000000001",
            "+0+181",
            "-0-181",
            "+0+360",
            "+0+99999999999999999999999",
        ] {
            assert_eq!(location_err(loc), ParseError::LongitudeRange, "{loc:?}");
        }
        // Latitude is checked first.
        assert_eq!(location_err("+91+181"), ParseError::LatitudeRange);
    }

    #[test]
    fn times() {
        let c = iamat("IAMAT c +1+2 0001.5");
        assert_eq!(c.time, b"0001.5");
        assert_eq!(c.client_time.seconds_digits(), "1");
        assert_eq!(c.client_time.nanos(), 500_000_000);
        let c = iamat("IAMAT c +1+2 1.123456789987654321");
        assert_eq!(c.client_time.nanos(), 123_456_789);
        let c = iamat("IAMAT c +1+2 99999999999999999999999999999999999999999.5");
        assert_eq!(
            c.client_time.seconds_digits(),
            "99999999999999999999999999999999999999999"
        );
        for time in [
            "-1",
            "+1",
            "-1520023934.5",
            "1e9",
            "1.5E3",
            "1.",
            ".5",
            "1.2.3",
            "abc",
            "1,5",
            "0x1",
            "١",
        ] {
            assert_eq!(time_err(time), ParseError::BadTime, "{time:?}");
        }
        // The location is checked before the time.
        assert_eq!(err(b"IAMAT c +91+0 x"), ParseError::LatitudeRange);
    }

    #[test]
    fn radii() {
        let r = |radius: &str| whatsat(&format!("WHATSAT c {radius} 1")).radius_km;
        assert_eq!(r("50"), 50.0);
        assert_eq!(r("50.0"), 50.0);
        assert_eq!(r("050.000"), 50.0);
        assert_eq!(r("10"), 10.0);
        assert_eq!(r("0.5"), 0.5);
        assert_eq!(r("0.0001"), 0.0001);
        assert_eq!(r("49.99999"), 49.99999);
        let e = |radius: &str| err(format!("WHATSAT c {radius} 1").as_bytes());
        for radius in [
            "0",
            "0.0",
            "000.000",
            "50.0001",
            "50.0000000000000000001",
            "51",
            "1000",
        ] {
            assert_eq!(e(radius), ParseError::RadiusRange, "{radius:?}");
        }
        for radius in [
            "10.", ".5", "abc", "1e1", "-1", "+1", "1,5", "1.5.5", "inf", "5km",
        ] {
            assert_eq!(e(radius), ParseError::BadRadius, "{radius:?}");
        }
    }

    #[test]
    fn bounds() {
        let b = |bound: &str| whatsat(&format!("WHATSAT c 10 {bound}")).bound;
        assert_eq!(b("0"), 0);
        assert_eq!(b("5"), 5);
        assert_eq!(b("20"), 20);
        assert_eq!(b("007"), 7);
        assert_eq!(b("0000000000000000000000000020"), 20);
        let e = |bound: &str| err(format!("WHATSAT c 10 {bound}").as_bytes());
        for bound in ["21", "100", "99999999999999999999999999", "0021"] {
            assert_eq!(e(bound), ParseError::BoundRange, "{bound:?}");
        }
        for bound in ["-1", "1.5", "+5", "5.0", "abc", "1e1", "٥"] {
            assert_eq!(e(bound), ParseError::BadBound, "{bound:?}");
        }
        // The radius is checked before the bound.
        assert_eq!(e("x").to_string(), "bound is not D+");
        assert_eq!(err(b"WHATSAT c 0 x"), ParseError::RadiusRange);
    }

    #[test]
    fn an_update_field_that_is_not_one_field_is_refused() {
        let t = b"1520023934.918963997";
        assert!(iamat_of_fields(b"kiwi", b"+34.068930-118.445127", t).is_ok());
        // Joined, these would make a valid line of other fields.
        assert_eq!(
            iamat_of_fields(b"kiwi", b"", b"+1+1 5"),
            Err(ParseError::NotOneField)
        );
        assert_eq!(
            iamat_of_fields(b"ki wi", b"+1+1", t),
            Err(ParseError::FieldCount {
                command: "IAMAT",
                found: 5
            })
        );
        assert_eq!(
            iamat_of_fields(b"", b"+1+1", t),
            Err(ParseError::FieldCount {
                command: "IAMAT",
                found: 3
            })
        );
    }

    #[test]
    fn random_lines_never_panic_and_what_parses_is_valid() {
        // A seeded fuzz loop run in every test pass (cargo fuzz, in fuzz/, runs the
        // same checks for as long as one likes): lines made of the bytes that matter
        // to the grammar, each case a fresh seed so a failure names its input.
        const PIECES: [&[u8]; 16] = [
            b"IAMAT",
            b"WHATSAT",
            b" ",
            b"\t",
            b"\x0b",
            b"+",
            b"-",
            b".",
            b"0",
            b"9",
            b"1",
            b"5",
            b"20",
            b"\0",
            b"\xff",
            b"\xe2\x80\x83",
        ];
        // HERD_FUZZ_CASES runs more (or fewer) cases, e.g. 5000000 for a long run.
        let cases = std::env::var("HERD_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000u64);
        for seed in 0..cases {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut line = Vec::new();
            for _ in 0..rng.usize(0..24) {
                if rng.u8(0..8) == 0 {
                    line.push(rng.u8(..));
                } else {
                    line.extend_from_slice(PIECES[rng.usize(..PIECES.len())]);
                }
            }
            let max = rng.usize(1..8);
            let shown = String::from_utf8_lossy(&line).into_owned();
            // A neighbour's update is judged as the line of its fields would be.
            if let [b"IAMAT", id, location, time] = fields(&line).collect::<Vec<_>>()[..] {
                let whole = match super::parse(&line, usize::MAX) {
                    Ok(Command::IAmAt(c)) => Ok(c),
                    Ok(other) => panic!("{seed} {shown:?}: {other:?}"),
                    Err(e) => Err(e),
                };
                assert_eq!(
                    iamat_of_fields(id, location, time),
                    whole,
                    "{seed} {shown:?}"
                );
            }
            match super::parse(&line, max) {
                Ok(Command::IAmAt(c)) => {
                    assert!(
                        c.client_id.len() <= max && !c.client_id.is_empty(),
                        "{seed} {shown:?}"
                    );
                    assert!(c.client_id.iter().all(|&b| !crate::wire::is_ws(b)));
                    let (lat, lon) = c.lat_lon();
                    assert!((-90.0..=90.0).contains(&lat), "{seed} {shown:?}");
                    assert!((-180.0..=180.0).contains(&lon), "{seed} {shown:?}");
                }
                Ok(Command::WhatsAt(c)) => {
                    assert!(c.client_id.len() <= max, "{seed} {shown:?}");
                    assert!(c.radius_km > 0.0 && c.radius_km <= 50.0, "{seed} {shown:?}");
                    assert!(c.bound <= 20, "{seed} {shown:?}");
                }
                Ok(Command::Blank) => {
                    assert!(
                        line.iter().all(|&b| crate::wire::is_ws(b)),
                        "{seed} {shown:?}"
                    )
                }
                Err(_) => {}
            }
        }
    }
}
