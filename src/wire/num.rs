//! Exact decimal text `D+[.D+]`: scanning, and range checks made on the digits, not on an f64.

/// A scanned `D+[.D+]`: its integer digits and its fraction digits (empty without a dot).
#[derive(Clone, Copy, Debug)]
pub(super) struct Decimal<'a> {
    pub(super) int: &'a [u8],
    pub(super) frac: &'a [u8],
}

fn digits_len(s: &[u8]) -> usize {
    s.iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len())
}

/// Scans a `D+[.D+]` prefix of `s` and returns it with what follows. A dot must be followed by
/// a digit: `"10."` has no valid prefix ending at the dot, so the dot stays in the rest.
pub(super) fn scan(s: &[u8]) -> Option<(Decimal<'_>, &[u8])> {
    let int_len = digits_len(s);
    if int_len == 0 {
        return None;
    }
    let (int, rest) = s.split_at(int_len);
    if let Some((b'.', after)) = rest.split_first() {
        let frac_len = digits_len(after);
        if frac_len > 0 {
            let (frac, rest) = after.split_at(frac_len);
            return Some((Decimal { int, frac }, rest));
        }
    }
    Some((Decimal { int, frac: &[] }, rest))
}

/// `s` as a whole `D+[.D+]`.
pub(super) fn whole(s: &[u8]) -> Option<Decimal<'_>> {
    match scan(s)? {
        (d, []) => Some(d),
        _ => None,
    }
}

/// Digits without leading zeros, keeping one digit: `"000"` → `"0"`, `"007"` → `"7"`.
pub(super) fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&b| b == b'0').count();
    &digits[zeros.min(digits.len().saturating_sub(1))..]
}

/// The value of at most 19 ASCII digits (callers check the length; more would wrap).
pub(super) fn small_value(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |acc, &d| {
        acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
    })
}

impl Decimal<'_> {
    pub(super) fn is_zero(&self) -> bool {
        self.int.iter().chain(self.frac).all(|&b| b == b'0')
    }

    /// Whether the value is strictly above `limit`, exactly: `90.0000000000000000001` is above 90.
    pub(super) fn exceeds(&self, limit: u32) -> bool {
        let int = trim_zeros(self.int);
        // u32::MAX has 10 digits: anything longer is above any limit.
        if int.len() > 10 {
            return true;
        }
        let value = small_value(int);
        let limit = u64::from(limit);
        value > limit || (value == limit && self.frac.iter().any(|&b| b != b'0'))
    }
}

/// The nearest f64 to already validated decimal text (an optional sign, then `D+[.D+]`).
pub(super) fn to_f64(text: &[u8]) -> Option<f64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> Option<(&str, &str, &str)> {
        let (d, rest) = scan(s.as_bytes())?;
        let f = |b| std::str::from_utf8(b).unwrap_or("?");
        Some((f(d.int), f(d.frac), f(rest)))
    }

    #[test]
    fn scan_prefixes() {
        assert_eq!(parts("12.5+3"), Some(("12", "5", "+3")));
        assert_eq!(parts("12"), Some(("12", "", "")));
        assert_eq!(parts("12."), Some(("12", "", ".")));
        assert_eq!(parts("12.x"), Some(("12", "", ".x")));
        assert_eq!(parts(".5"), None);
        assert_eq!(parts(""), None);
        assert_eq!(parts("+1"), None);
        assert!(whole(b"1.5").is_some());
        assert!(whole(b"1.5.5").is_none());
        assert!(whole(b"1e1").is_none());
    }

    #[test]
    fn exact_range() {
        let ex = |s: &str, limit| whole(s.as_bytes()).map(|d| d.exceeds(limit));
        assert_eq!(ex("90", 90), Some(false));
        assert_eq!(ex("90.000", 90), Some(false));
        assert_eq!(ex("00090.0", 90), Some(false));
        assert_eq!(ex("89.99999", 90), Some(false));
        assert_eq!(ex("90.0000000000000000001", 90), Some(true));
        assert_eq!(ex("91", 90), Some(true));
        assert_eq!(ex("123456789012345678901234567890", 90), Some(true));
        assert_eq!(ex("0000000000000000000000000000001", 90), Some(false));
        assert_eq!(trim_zeros(b"000"), b"0");
        assert_eq!(trim_zeros(b"007"), b"7");
        assert_eq!(trim_zeros(b"70"), b"70");
    }
}
