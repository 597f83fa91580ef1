//! Reply lines: `? <line>` for invalid input and the `AT ...` line.

/// Appends `"? " + line + "\n"`. `line` must already be without its line end
/// ([`strip_line_end`](super::strip_line_end)); it is copied byte for byte.
pub fn write_question(line: &[u8], out: &mut Vec<u8>) {
    out.reserve(line.len() + 3);
    out.extend_from_slice(b"? ");
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// Appends `"AT <server> <diff> <client_id> <location> <time>"`, WITHOUT a trailing newline.
pub fn write_at_line(
    server: &str,
    diff: &[u8],
    client_id: &[u8],
    location: &[u8],
    time: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(3 + server.len() + diff.len() + client_id.len() + location.len() + time.len() + 4);
    out.extend_from_slice(b"AT ");
    for (i, field) in [server.as_bytes(), diff, client_id, location, time]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(field);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Command, Timestamp, parse, strip_line_end, write_time_diff};
    use super::*;

    #[test]
    fn question_copies_the_line_byte_for_byte() {
        let mut out = Vec::new();
        write_question(strip_line_end(b"FOO i am client 10 32\r\n"), &mut out);
        assert_eq!(out, b"? FOO i am client 10 32\n");
        out.clear();
        write_question(b"\t IAMAT \xff\x0b x \r", &mut out);
        assert_eq!(out, b"? \t IAMAT \xff\x0b x \r\n");
        out.clear();
        write_question(b"", &mut out);
        assert_eq!(out, b"? \n");
    }

    #[test]
    fn question_appends() {
        let mut out = b"AT x\n".to_vec();
        write_question(b"a", &mut out);
        assert_eq!(out, b"AT x\n? a\n");
    }

    #[test]
    fn at_line() {
        let mut out = Vec::new();
        write_at_line(
            "Goloman",
            b"+0.263873386",
            b"kiwi.cs.ucla.edu",
            b"+34.068930-118.445127",
            b"1520023934.918963997",
            &mut out,
        );
        assert_eq!(
            out,
            &b"AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997"
                [..]
        );
    }

    #[test]
    fn protocol_example_end_to_end() {
        let line = strip_line_end(
            b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\r\n",
        );
        let Ok(Command::IAmAt(c)) = parse(line, usize::MAX) else {
            panic!("not parsed")
        };
        let now = Timestamp {
            secs: 1_520_023_935,
            nanos: 182_837_383,
        };
        let mut diff = Vec::new();
        write_time_diff(now, &c.client_time, &mut diff);
        let mut out = Vec::new();
        write_at_line("Goloman", &diff, c.client_id, c.location, c.time, &mut out);
        assert_eq!(
            out,
            &b"AT Goloman +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997"
                [..]
        );
    }
}
