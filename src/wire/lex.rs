//! Lexing a client line: the protocol's whitespace set, fields, and the line end.

use std::iter::FusedIterator;

/// The protocol's whitespace: space, `\t`, `\n`, `\x0b` (vertical tab), `\x0c` (form feed), `\r`.
///
/// Not `u8::is_ascii_whitespace` (it misses vertical tab) and nothing beyond ASCII: 0xA0 or a
/// UTF-8 no-break space are ordinary bytes of a field.
#[inline]
pub const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Splits a line into fields separated by runs of [`is_ws`] bytes; leading and trailing
/// whitespace is ignored, so a blank line has no fields.
#[inline]
pub fn fields(line: &[u8]) -> Fields<'_> {
    Fields { rest: line }
}

/// The iterator returned by [`fields`]: borrowed, non-empty, whitespace-free slices of the line.
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| !is_ws(b))?;
        let rest = &self.rest[start..];
        let len = rest.iter().position(|&b| is_ws(b)).unwrap_or(rest.len());
        let (field, rest) = rest.split_at(len);
        self.rest = rest;
        Some(field)
    }
}

impl FusedIterator for Fields<'_> {}

/// Removes the line end from a line as read, i.e. including its terminating LF if it has one.
///
/// `"...\n"` loses the LF and one CR just before it (`"a\r\r\n"` → `"a\r"`). A line ended by EOF
/// (the client half-closed) has no LF; a single trailing CR is still taken as its line end, as a
/// CR LF whose LF never came: `"a\r"` → `"a"`. Either way the CR is whitespace, so this only
/// changes what a `? line` reply echoes.
#[inline]
pub fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(line: &[u8]) -> Vec<&[u8]> {
        fields(line).collect()
    }

    #[test]
    fn whitespace_set_is_exactly_the_protocols() {
        let ws: Vec<u8> = (0..=255u8).filter(|&b| is_ws(b)).collect();
        assert_eq!(ws, vec![b'\t', b'\n', 0x0b, 0x0c, b'\r', b' ']);
        // Non-ASCII spaces are not whitespace: Latin-1 NBSP, and the UTF-8 NBSP bytes.
        assert!(!is_ws(0xa0));
        assert!(!is_ws(0xc2));
        assert!(!is_ws(0x85));
        assert!(!is_ws(0x00));
    }

    #[test]
    fn fields_split_on_runs_of_any_whitespace() {
        assert_eq!(
            all(b" \tIAMAT\x0bkiwi\x0c\r +1+2 \n 3\r\n"),
            vec![&b"IAMAT"[..], b"kiwi", b"+1+2", b"3"]
        );
        assert_eq!(all(b"a"), vec![&b"a"[..]]);
    }

    #[test]
    fn blank_lines_have_no_fields() {
        assert!(all(b"").is_empty());
        assert!(all(b" \t\x0b\x0c\r\n").is_empty());
        let mut it = fields(b"  ");
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }

    #[test]
    fn non_ascii_spaces_stay_inside_a_field() {
        assert_eq!(all(b"a\xa0b c"), vec![&b"a\xa0b"[..], b"c"]);
        assert_eq!(
            all("a\u{a0}b\u{2003}c d".as_bytes()),
            vec!["a\u{a0}b\u{2003}c".as_bytes(), b"d"]
        );
    }

    #[test]
    fn line_ends() {
        assert_eq!(strip_line_end(b"abc\n"), b"abc");
        assert_eq!(strip_line_end(b"abc\r\n"), b"abc");
        assert_eq!(strip_line_end(b"abc\r\r\n"), b"abc\r");
        assert_eq!(strip_line_end(b"abc\n\n"), b"abc\n");
        assert_eq!(strip_line_end(b"abc \n"), b"abc ");
        assert_eq!(strip_line_end(b"abc"), b"abc");
        // EOF-terminated: one trailing CR is the line end.
        assert_eq!(strip_line_end(b"abc\r"), b"abc");
        assert_eq!(strip_line_end(b"abc\r\r"), b"abc\r");
        assert_eq!(strip_line_end(b"\n"), b"");
        assert_eq!(strip_line_end(b"\r\n"), b"");
        assert_eq!(strip_line_end(b""), b"");
        assert_eq!(strip_line_end(b"\x0b\n"), b"\x0b");
    }
}
