//! Just enough of Redis's RESP2 to load-test it: commands encoded as arrays of bulk
//! strings, and replies framed and classified without copying them.

/// What kind of reply came back (its contents are not kept: the bench only classifies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`
    Simple,
    /// `-ERR ...`
    Error,
    /// `:1`
    Integer(i64),
    /// `$3 foo`
    Bulk,
    /// `$-1`, `*-1` or RESP3's `_`
    Null,
    /// `*N` followed by N replies (each checked to be well formed).
    Array(usize),
}

/// Bytes that are not RESP: the connection cannot be resynchronised.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed RESP reply: {0}")]
pub(crate) struct RespError(&'static str);

/// Arrays nest at most this deep (the bench's commands never get nested replies deeper than 2).
const MAX_NESTING: usize = 8;

/// Appends `args` as one RESP command (an array of bulk strings).
pub(crate) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for arg in args {
        header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The first complete reply in `buf` and its length, or `None` when more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    if !matches!(kind, b'+' | b'-' | b':' | b'_' | b'$' | b'*') {
        return Err(RespError("unknown reply type"));
    }
    let Some(line_end) = find_crlf(buf, at) else {
        return Ok(None);
    };
    let line = &buf[at + 1..line_end];
    let next = line_end + 2;
    let reply = match kind {
        b'+' => Reply::Simple,
        b'-' => Reply::Error,
        b':' => Reply::Integer(integer(line)?),
        b'_' if line.is_empty() => Reply::Null,
        b'$' => match integer(line)? {
            -1 => Reply::Null,
            n if n >= 0 => {
                let end = next + n as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(RespError("bulk string not ended by CRLF"));
                }
                return Ok(Some((Reply::Bulk, end + 2 - at)));
            }
            _ => return Err(RespError("negative bulk length")),
        },
        b'*' => match integer(line)? {
            -1 => Reply::Null,
            n if n >= 0 => {
                if depth >= MAX_NESTING {
                    return Err(RespError("arrays nested too deep"));
                }
                let mut pos = next;
                for _ in 0..n {
                    match parse_at(buf, pos, depth + 1)? {
                        Some((_, len)) => pos += len,
                        None => return Ok(None),
                    }
                }
                return Ok(Some((Reply::Array(n as usize), pos - at)));
            }
            _ => return Err(RespError("negative array length")),
        },
        _ => return Err(RespError("unknown reply type")),
    };
    Ok(Some((reply, next - at)))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf.get(i..)?.iter().position(|&b| b == b'\r') {
        let cr = i + p;
        match buf.get(cr + 1) {
            Some(b'\n') => return Some(cr),
            Some(_) => i = cr + 1,
            None => return None,
        }
    }
    None
}

fn integer(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(RespError("not an integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_string_arrays() {
        let mut out = Vec::new();
        command(
            &mut out,
            &[b"GEOADD", b"herd:clients", b"-118.4", b"34.06", b""],
        );
        assert_eq!(
            out,
            b"*5\r\n$6\r\nGEOADD\r\n$12\r\nherd:clients\r\n$6\r\n-118.4\r\n$5\r\n34.06\r\n$0\r\n\r\n"
        );
        let mut out = Vec::new();
        command(&mut out, &[&[b'x'; 1234]]);
        assert!(out.starts_with(b"*1\r\n$1234\r\nxxx"));
        assert!(out.ends_with(b"xx\r\n"));
    }

    #[test]
    fn parses_each_reply_type() {
        assert_eq!(parse(b"+OK\r\n"), Ok(Some((Reply::Simple, 5))));
        assert_eq!(parse(b"-ERR no\r\n"), Ok(Some((Reply::Error, 9))));
        assert_eq!(parse(b":1\r\n"), Ok(Some((Reply::Integer(1), 4))));
        assert_eq!(parse(b":-42\r\n"), Ok(Some((Reply::Integer(-42), 6))));
        assert_eq!(parse(b"$3\r\nfoo\r\n"), Ok(Some((Reply::Bulk, 9))));
        assert_eq!(parse(b"$0\r\n\r\n"), Ok(Some((Reply::Bulk, 6))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Reply::Null, 5))));
        assert_eq!(parse(b"*-1\r\n"), Ok(Some((Reply::Null, 5))));
        assert_eq!(parse(b"_\r\n"), Ok(Some((Reply::Null, 3))));
        assert_eq!(parse(b"*0\r\n"), Ok(Some((Reply::Array(0), 4))));
        let geosearch = b"*2\r\n$19\r\n5368361:Los Angeles\r\n$3\r\n1:x\r\n";
        assert_eq!(
            parse(geosearch),
            Ok(Some((Reply::Array(2), geosearch.len())))
        );
        assert_eq!(
            parse(b"$4\r\na\r\nb\r\n"),
            Ok(Some((Reply::Bulk, 10))),
            "binary-safe bulk strings"
        );
        assert_eq!(
            parse(b"*2\r\n*1\r\n:1\r\n+OK\r\n"),
            Ok(Some((Reply::Array(2), 17)))
        );
    }

    #[test]
    fn only_the_first_reply_is_consumed() {
        let two = b":1\r\n:0\r\n";
        assert_eq!(parse(two), Ok(Some((Reply::Integer(1), 4))));
        assert_eq!(parse(&two[4..]), Ok(Some((Reply::Integer(0), 4))));
    }

    #[test]
    fn incomplete_replies_ask_for_more() {
        let full = b"*2\r\n$3\r\nfoo\r\n$4\r\nbarz\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse(full), Ok(Some((Reply::Array(2), full.len()))));
        assert_eq!(parse(b":1\r"), Ok(None));
        assert_eq!(parse(b"+O\rK"), Ok(None));
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b"? IAMAT x\r\n"[..],
            b":one\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$3\r\nfooXY",
            b"AT Goloman\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", bad.escape_ascii().to_string());
        }
        let mut deep = b"*1\r\n".repeat(MAX_NESTING + 1);
        deep.extend_from_slice(b":1\r\n");
        assert!(parse(&deep).is_err());
    }
}
