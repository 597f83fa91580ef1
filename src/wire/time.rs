//! Exact times: a client's POSIX seconds (any length, nanosecond precision) and the signed
//! `now - client` difference of an `AT` line, computed with integers only.

use std::cmp::Ordering;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::num;
use super::parse::ParseError;

const NANOS_PER_SEC: u32 = 1_000_000_000;
const NANOS_PER_SEC_U128: u128 = NANOS_PER_SEC as u128;

/// A client time, exactly: whole seconds as decimal digits (arbitrary length) and nanoseconds.
///
/// Ordered numerically; fraction digits beyond the ninth are cut when parsing, so `"0001.5"`,
/// `"1.500000000"` and `"1.5000000001"` are all equal.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientTime {
    secs: Secs,
    nanos: u32,
}

/// Whole seconds, in one canonical form per value so that derived `Eq`/`Hash` are numeric.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Secs {
    /// Up to `u64::MAX`: no allocation. The canonical digits are kept next to the value so that
    /// `seconds_digits` can lend a `&str`.
    Small {
        value: u64,
        digits: [u8; 20],
        len: u8,
    },
    /// Above `u64::MAX`: canonical digits (no leading zero), at least 20 of them.
    Big(Box<str>),
}

impl Secs {
    /// From canonical digits (ASCII digits, no leading zero unless `"0"`).
    fn from_canonical(digits: &[u8]) -> Option<Secs> {
        if digits.len() <= 20 {
            let value = std::str::from_utf8(digits).ok()?.parse::<u64>();
            if let Ok(value) = value {
                let mut buf = [0u8; 20];
                buf[..digits.len()].copy_from_slice(digits);
                // digits.len() <= 20, so it fits a u8.
                let len = digits.len() as u8;
                return Some(Secs::Small {
                    value,
                    digits: buf,
                    len,
                });
            }
        }
        Some(Secs::Big(std::str::from_utf8(digits).ok()?.into()))
    }

    fn digits(&self) -> &str {
        match self {
            // ASCII digits by construction: the fallback is never taken.
            Secs::Small { digits, len, .. } => {
                std::str::from_utf8(&digits[..usize::from(*len)]).unwrap_or("0")
            }
            Secs::Big(digits) => digits,
        }
    }
}

impl Ord for Secs {
    fn cmp(&self, other: &Secs) -> Ordering {
        match (self, other) {
            (Secs::Small { value: a, .. }, Secs::Small { value: b, .. }) => a.cmp(b),
            (Secs::Small { .. }, Secs::Big(_)) => Ordering::Less,
            (Secs::Big(_), Secs::Small { .. }) => Ordering::Greater,
            // Canonical digits: the longer is the larger, then digit by digit.
            (Secs::Big(a), Secs::Big(b)) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
        }
    }
}

impl PartialOrd for Secs {
    fn partial_cmp(&self, other: &Secs) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl ClientTime {
    /// Parses a client's time field, `D+[.D+]`: no sign, no exponent, any number of digits.
    /// Fraction digits beyond nanoseconds are cut, not rounded.
    pub fn parse(field: &[u8]) -> Result<ClientTime, ParseError> {
        let d = num::whole(field).ok_or(ParseError::BadTime)?;
        let secs = Secs::from_canonical(num::trim_zeros(d.int)).ok_or(ParseError::BadTime)?;
        let nanos = d
            .frac
            .iter()
            .chain(std::iter::repeat(&b'0'))
            .take(9)
            .fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0'));
        Ok(ClientTime { secs, nanos })
    }

    /// Whole seconds as canonical decimal digits: no leading zeros, `"0"` for zero.
    pub fn seconds_digits(&self) -> &str {
        self.secs.digits()
    }

    /// The nanoseconds, below one second.
    pub fn nanos(&self) -> u32 {
        self.nanos
    }

    /// The whole time in nanoseconds, when it fits a u128 (seconds up to about 3.4e29).
    fn total_nanos(&self) -> Option<u128> {
        let secs = match &self.secs {
            Secs::Small { value, .. } => u128::from(*value),
            Secs::Big(digits) => digits.parse::<u128>().ok()?,
        };
        secs.checked_mul(NANOS_PER_SEC_U128)?
            .checked_add(u128::from(self.nanos))
    }
}

impl Ord for ClientTime {
    fn cmp(&self, other: &ClientTime) -> Ordering {
        self.secs
            .cmp(&other.secs)
            .then(self.nanos.cmp(&other.nanos))
    }
}

impl PartialOrd for ClientTime {
    fn partial_cmp(&self, other: &ClientTime) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Canonical text: `"<seconds>.<nine digits>"`.
impl fmt::Display for ClientTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.seconds_digits(), self.nanos)
    }
}

impl fmt::Debug for ClientTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientTime({self})")
    }
}

/// A server's receive time, since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub secs: u64,
    pub nanos: u32,
}

impl Timestamp {
    /// The system clock now (the epoch itself if the clock is set before it).
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }
}

/// Appends `now - client` as the `AT` line's second field: a sign (`+` for zero and above), the
/// integer seconds without leading zeros, `.`, exactly nine fraction digits. Exact: integers only.
pub fn write_time_diff(now: Timestamp, client: &ClientTime, out: &mut Vec<u8>) {
    // At most about 1.8e28 (even with nanos >= 1e9): always fits.
    let now_ns = u128::from(now.secs) * NANOS_PER_SEC_U128 + u128::from(now.nanos);
    match client.total_nanos() {
        Some(client_ns) => {
            let (sign, mag) = if now_ns >= client_ns {
                (b'+', now_ns - client_ns)
            } else {
                (b'-', client_ns - now_ns)
            };
            out.push(sign);
            push_u128(out, mag / NANOS_PER_SEC_U128);
            out.push(b'.');
            // The remainder is below 1e9.
            push_nanos(out, (mag % NANOS_PER_SEC_U128) as u32);
        }
        // At least 2^128 ns: far beyond any `now`, so the difference is negative.
        None => write_huge_negative_diff(now_ns, client, out),
    }
}

/// `-(client - now)` by decimal subtraction on the client's digits, for clients past u128.
fn write_huge_negative_diff(now_ns: u128, client: &ClientTime, out: &mut Vec<u8>) {
    // The client in nanoseconds, as ASCII digits.
    let mut digits = Vec::with_capacity(client.seconds_digits().len() + 9);
    digits.extend_from_slice(client.seconds_digits().as_bytes());
    push_nanos(&mut digits, client.nanos);

    let mut rest = now_ns;
    let mut borrow = 0u8;
    for d in digits.iter_mut().rev() {
        if rest == 0 && borrow == 0 {
            break;
        }
        // At most 9 + 1.
        let sub = (rest % 10) as u8 + borrow;
        rest /= 10;
        let d_value = *d - b'0';
        if d_value >= sub {
            *d = b'0' + d_value - sub;
            borrow = 0;
        } else {
            *d = b'0' + d_value + 10 - sub;
            borrow = 1;
        }
    }

    let (int, frac) = digits.split_at(digits.len() - 9);
    out.push(b'-');
    out.extend_from_slice(num::trim_zeros(int));
    out.push(b'.');
    out.extend_from_slice(frac);
}

fn push_u128(out: &mut Vec<u8>, mut n: u128) {
    let mut buf = [0u8; 39];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Nine digits, zero-padded.
fn push_nanos(out: &mut Vec<u8>, mut n: u32) {
    let mut buf = [b'0'; 9];
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> ClientTime {
        match ClientTime::parse(s.as_bytes()) {
            Ok(t) => t,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    fn diff(now_secs: u64, now_nanos: u32, client: &str) -> String {
        let mut out = b"x".to_vec();
        let now = Timestamp {
            secs: now_secs,
            nanos: now_nanos,
        };
        write_time_diff(now, &t(client), &mut out);
        // Appends, never clears.
        assert_eq!(out[0], b'x');
        String::from_utf8(out[1..].to_vec()).unwrap_or_default()
    }

    #[test]
    fn parse_times() {
        let x = t("1520023934.918963997");
        assert_eq!(x.seconds_digits(), "1520023934");
        assert_eq!(x.nanos(), 918_963_997);
        assert_eq!(t("0").seconds_digits(), "0");
        assert_eq!(t("0").nanos(), 0);
        assert_eq!(t("000.5").seconds_digits(), "0");
        assert_eq!(t("000.5").nanos(), 500_000_000);
        assert_eq!(t("0007").seconds_digits(), "7");
        assert_eq!(t("1.000000001").nanos(), 1);
        assert_eq!(
            t(&u64::MAX.to_string()).seconds_digits(),
            "18446744073709551615"
        );
        assert_eq!(
            t("18446744073709551616").seconds_digits(),
            "18446744073709551616"
        );
    }

    #[test]
    fn fraction_beyond_nanoseconds_is_cut_not_rounded() {
        assert_eq!(t("1.9999999999999").nanos(), 999_999_999);
        assert_eq!(t("1.9999999999999").seconds_digits(), "1");
        assert_eq!(t("1.1234567891").nanos(), 123_456_789);
        assert_eq!(t("1.0000000009").nanos(), 0);
    }

    #[test]
    fn huge_integer_seconds_do_not_overflow() {
        let x = t("99999999999999999999999999999999999999999.5");
        assert_eq!(
            x.seconds_digits(),
            "99999999999999999999999999999999999999999"
        );
        assert_eq!(x.nanos(), 500_000_000);
        assert_eq!(
            t("000123456789012345678901234567890").seconds_digits(),
            "123456789012345678901234567890"
        );
    }

    #[test]
    fn bad_times() {
        for s in [
            "", "-1", "+1", "1e9", "1E9", "1.5e3", ".5", "1.", "1..5", "1.5.5", "0x10", "1 ", " 1",
            "1,5", "inf", "NaN", "١",
        ] {
            assert_eq!(
                ClientTime::parse(s.as_bytes()),
                Err(ParseError::BadTime),
                "{s:?}"
            );
        }
    }

    #[test]
    fn ordering_is_numeric() {
        assert_eq!(t("0001.5"), t("1.500000000"));
        assert_eq!(t("1.5"), t("1.5000000001"));
        assert_eq!(t("1.5").cmp(&t("1.5000000001")), Ordering::Equal);
        assert!(t("1.5") < t("1.500000001"));
        assert!(t("2") > t("1.999999999"));
        assert!(t("10") > t("9.9"));
        assert!(t("0009") < t("10"));
        assert!(t("18446744073709551615.999999999") < t("18446744073709551616"));
        assert!(t("99999999999999999999") < t("100000000000000000000"));
        assert!(t("200000000000000000000") > t("100000000000000000000.5"));
        assert!(t("100000000000000000000.5") > t("100000000000000000000.4"));
        assert_eq!(t("0100000000000000000000"), t("100000000000000000000.0"));
        let mut v = [
            t("3"),
            t("1.5"),
            t("100000000000000000000"),
            t("0"),
            t("1.25"),
        ];
        v.sort();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            s,
            [
                "0.000000000",
                "1.250000000",
                "1.500000000",
                "3.000000000",
                "100000000000000000000.000000000"
            ]
        );
    }

    #[test]
    fn equal_times_hash_equal() {
        use std::collections::HashSet;
        let set: HashSet<ClientTime> = [t("1.5"), t("01.50"), t("1.5000000009")].into();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn seconds_digits_are_canonical() {
        assert_eq!(t("1520023934.918963997").seconds_digits(), "1520023934");
        assert_eq!(t("1520023934.918963997").nanos(), 918_963_997);
        assert_eq!(t("0007.000000005").seconds_digits(), "7");
        assert_eq!(t("0007.000000005").nanos(), 5);
        assert_eq!(t("0").seconds_digits(), "0");
        assert_eq!(t("000.5").seconds_digits(), "0");
        let big = "99999999999999999999999999999999999999999";
        assert_eq!(t(&format!("{big}.5")).seconds_digits(), big);
        assert_eq!(t(&format!("000{big}.5")).nanos(), 500_000_000);
    }

    #[test]
    fn display_and_debug() {
        assert_eq!(t("0001.5").to_string(), "1.500000000");
        assert_eq!(format!("{:?}", t("2.000000001")), "ClientTime(2.000000001)");
    }

    #[test]
    fn diff_protocol_example() {
        assert_eq!(
            diff(1_520_023_935, 182_837_383, "1520023934.918963997"),
            "+0.263873386"
        );
    }

    #[test]
    fn diff_signs_and_padding() {
        assert_eq!(diff(100, 0, "100"), "+0.000000000");
        assert_eq!(diff(100, 5, "100.000000005"), "+0.000000000");
        assert_eq!(diff(100, 0, "101.5"), "-1.500000000");
        assert_eq!(diff(100, 0, "100.000000001"), "-0.000000001");
        assert_eq!(diff(100, 1, "100"), "+0.000000001");
        assert_eq!(diff(100, 0, "98.75"), "+1.250000000");
        assert_eq!(diff(1_520_023_934, 0, "0"), "+1520023934.000000000");
        assert_eq!(diff(0, 0, "0"), "+0.000000000");
        assert_eq!(diff(12, 0, "0002.0000000019"), "+9.999999999");
        assert_eq!(diff(5, 999_999_999, "6"), "-0.000000001");
        assert_eq!(diff(5, 0, "4.000000001"), "+0.999999999");
    }

    #[test]
    fn diff_with_extreme_times() {
        assert_eq!(
            diff(u64::MAX, 999_999_999, "0"),
            "+18446744073709551615.999999999"
        );
        assert_eq!(
            diff(0, 0, "18446744073709551615.999999999"),
            "-18446744073709551615.999999999"
        );
        // Past u64 seconds (the u128 path).
        assert_eq!(
            diff(1_520_023_935, 182_837_383, "100000000000000000000"),
            "-99999999998479976064.817162617"
        );
        // Past u128 nanoseconds (the decimal path).
        assert_eq!(
            diff(
                1_520_023_935,
                182_837_383,
                "99999999999999999999999999999999999999999.5"
            ),
            "-99999999999999999999999999999998479976064.317162617"
        );
        assert_eq!(
            diff(0, 0, "99999999999999999999999999999999999999999.5"),
            "-99999999999999999999999999999999999999999.500000000"
        );
        assert_eq!(
            diff(1, 0, "1000000000000000000000000000000000000000000"),
            "-999999999999999999999999999999999999999999.000000000"
        );
        assert_eq!(
            diff(
                u64::MAX,
                999_999_999,
                "1000000000000000000000000000000000000000000"
            ),
            "-999999999999999999999981553255926290448384.000000001"
        );
    }

    #[test]
    fn now_is_after_2020() {
        assert!(Timestamp::now().secs > 1_577_836_800);
        assert!(Timestamp::now().nanos < NANOS_PER_SEC);
        assert_eq!(
            Timestamp::from(UNIX_EPOCH + std::time::Duration::new(3, 7)),
            Timestamp { secs: 3, nanos: 7 }
        );
    }
}
