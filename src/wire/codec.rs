//! The client protocol's framing (PROTOCOL.md, "Client protocol"): the bytes of one
//! connection, however TCP split them, into lines and the pieces of overlong lines, as a
//! [`tokio_util::codec::Decoder`].
//!
//! It is `LinesCodec` with three differences the protocol needs: lines are bytes, not
//! UTF-8; a CR just before the LF belongs to the line end, so a CR that ends the bytes
//! received so far is held back until the next byte says whether it does; and a line past
//! the limit is not discarded but handed out in pieces as it arrives, so that its `? `
//! reply can echo every byte without the server ever holding the line.

use std::io;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::strip_line_end;

/// What the framer found in the bytes received. A line past the limit comes as one
/// [`Frame::LongStart`], any number of [`Frame::LongMore`] and one [`Frame::LongEnd`];
/// their bytes put together are the line without its line end, whatever the split.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole line of at most the limit, without its line end.
    Line(BytesMut),
    /// The start of a line longer than the limit: its bytes so far (more than the limit).
    LongStart(BytesMut),
    /// More bytes of that line, as they arrived.
    LongMore(BytesMut),
    /// The end of that line: its last bytes (maybe none), without the line end.
    LongEnd(BytesMut),
}

/// Where the framer is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line, or inside one short enough to be held whole.
    Line,
    /// Inside a line past the limit, whose start has been handed out.
    Long,
}

/// Splits a connection's bytes into [`Frame`]s: on LF, a CR before it taken as part
/// of the line end, lines up to `max_length` bytes (line end excluded) held whole.
#[derive(Clone, Debug)]
pub struct LineCodec {
    max_length: usize,
    /// How much of the buffer is known to hold no LF: a long line is scanned once,
    /// not once per read.
    next_index: usize,
    state: State,
}

impl LineCodec {
    /// A framer that holds lines of up to `max_length` bytes, line end excluded.
    pub fn new(max_length: usize) -> LineCodec {
        LineCodec {
            max_length,
            next_index: 0,
            state: State::Line,
        }
    }

    /// The longest line held whole.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Whether a line past the limit has started and not yet ended (its bytes so far
    /// were handed out, so the buffer may be empty in the middle of it).
    pub fn in_long_line(&self) -> bool {
        self.state == State::Long
    }
}

/// The first `n` bytes of `src`, taken off it. When they are all of it, the buffer
/// itself is handed out and `src` left empty with no allocation: the common case (one
/// line per read) then costs no shared-buffer bookkeeping, and a drained buffer goes
/// with the frame instead of staying with the connection.
fn take(src: &mut BytesMut, n: usize) -> BytesMut {
    if n == src.len() {
        std::mem::take(src)
    } else {
        src.split_to(n)
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        let lf = memchr::memchr(b'\n', &src[self.next_index..]).map(|i| self.next_index + i);
        let Some(lf) = lf else {
            // A trailing CR may be the start of a CR LF: it stays until the next byte.
            let held = src.len() - usize::from(src.last() == Some(&b'\r'));
            let frame = match self.state {
                State::Line if held > self.max_length => {
                    self.state = State::Long;
                    Some(Frame::LongStart(take(src, held)))
                }
                State::Long if held > 0 => Some(Frame::LongMore(take(src, held))),
                _ => None,
            };
            self.next_index = src.len();
            return Ok(frame);
        };
        self.next_index = 0;
        let content = strip_line_end(&src[..=lf]).len();
        match self.state {
            State::Long => {
                self.state = State::Line;
                let mut line = take(src, lf + 1);
                line.truncate(content);
                Ok(Some(Frame::LongEnd(line)))
            }
            State::Line if content <= self.max_length => {
                let mut line = take(src, lf + 1);
                line.truncate(content);
                Ok(Some(Frame::Line(line)))
            }
            State::Line => {
                // Held whole, but past the limit: handed out as if it had been streamed
                // (its line end stays, to end it on the next call), so that what the
                // caller sees does not depend on how TCP split the line.
                self.state = State::Long;
                Ok(Some(Frame::LongStart(take(src, content))))
            }
        }
    }

    /// The EOF rule: bytes after the last LF are a last line, ended by EOF, with a
    /// held-back CR taken as its line end; an overlong line open at EOF is ended.
    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        // No LF is left, and at most a CR past the limit (else `decode` handed it out).
        if self.state == State::Line && src.is_empty() {
            return Ok(None);
        }
        self.next_index = 0;
        let mut rest = std::mem::take(src);
        rest.truncate(strip_line_end(&rest).len());
        Ok(Some(match self.state {
            State::Line => Frame::Line(rest),
            State::Long => {
                self.state = State::Line;
                Frame::LongEnd(rest)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small limit, so that every case can be fed in every split quickly.
    const MAX: usize = 8;

    /// Feeds `chunks` one at a time as reads, decoding after each, then EOF; returns
    /// the frames in order, and checks the framer's promises on the way.
    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut codec = LineCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf).expect("decode never fails") {
                check_size(max, &frame);
                out.push(frame);
            }
            // Between reads it holds at most a line of the limit and a CR.
            let bound = match codec.state {
                State::Line => max + 1,
                State::Long => 1,
            };
            assert!(buf.len() <= bound, "holds {} bytes: {buf:?}", buf.len());
            assert!(!buf[..].contains(&b'\n'), "an LF left undecoded: {buf:?}");
        }
        while let Some(frame) = codec.decode_eof(&mut buf).expect("decode_eof never fails") {
            check_size(max, &frame);
            out.push(frame);
        }
        assert!(buf.is_empty(), "bytes left after EOF: {buf:?}");
        assert_eq!(codec.state, State::Line, "an overlong line left open");
        assert!(
            codec.decode_eof(&mut buf).unwrap().is_none(),
            "EOF twice gives nothing more"
        );
        out
    }

    /// A line is held only up to the limit, and an overlong line starts past it.
    #[track_caller]
    fn check_size(max: usize, frame: &Frame) {
        match frame {
            Frame::Line(line) => assert!(line.len() <= max, "{frame:?} past {max}"),
            Frame::LongStart(head) => assert!(head.len() > max, "{frame:?} within {max}"),
            Frame::LongMore(_) | Frame::LongEnd(_) => {}
        }
    }

    /// What the gateway makes of the frames: each line as `L(...)`, each overlong line
    /// as `? ` and its bytes, and a check that the pieces come in order.
    fn replies(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut long = false;
        for frame in frames {
            match frame {
                Frame::Line(line) => {
                    assert!(!long, "a line inside an overlong line");
                    out.extend_from_slice(b"L(");
                    out.extend_from_slice(line);
                    out.extend_from_slice(b")\n");
                }
                Frame::LongStart(head) => {
                    assert!(!long, "an overlong line started twice");
                    long = true;
                    out.extend_from_slice(b"? ");
                    out.extend_from_slice(head);
                }
                Frame::LongMore(more) => {
                    assert!(long && !more.is_empty(), "a stray or empty piece");
                    out.extend_from_slice(more);
                }
                Frame::LongEnd(tail) => {
                    assert!(long, "an overlong line ended but never started");
                    long = false;
                    out.extend_from_slice(tail);
                    out.push(b'\n');
                }
            }
        }
        assert!(!long, "an overlong line never ended");
        out
    }

    /// The frames of `input`, with every overlong line's pieces joined into one
    /// `LongStart` (its bytes) and one empty `LongEnd`: what must not depend on the split.
    fn joined(frames: Vec<Frame>) -> Vec<Frame> {
        let mut out: Vec<Frame> = Vec::new();
        for frame in frames {
            match frame {
                Frame::Line(_) | Frame::LongStart(_) => out.push(frame),
                Frame::LongMore(more) | Frame::LongEnd(more) => {
                    let Some(Frame::LongStart(head)) = out.last_mut() else {
                        panic!("a piece without its start");
                    };
                    head.extend_from_slice(&more);
                }
            }
        }
        out
    }

    /// Every split of `input` the tests try: whole, byte by byte, and every two-chunk
    /// split point.
    fn splits(input: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut all = vec![vec![input], input.chunks(1).collect()];
        for at in 1..input.len() {
            all.push(vec![&input[..at], &input[at..]]);
        }
        all
    }

    /// Feeds `input` in every split and checks that the replies are `want` each time,
    /// and the frames (pieces of overlong lines joined) the same each time.
    #[track_caller]
    fn check(max: usize, input: &[u8], want: &[u8]) {
        let whole = frames(max, &[input]);
        assert_eq!(
            String::from_utf8_lossy(&replies(&whole)),
            String::from_utf8_lossy(want),
            "input {:?} in one read",
            String::from_utf8_lossy(input)
        );
        let whole = joined(whole);
        for chunks in splits(input) {
            let got = frames(max, &chunks);
            assert_eq!(
                String::from_utf8_lossy(&replies(&got)),
                String::from_utf8_lossy(want),
                "input split as {chunks:?}"
            );
            assert_eq!(joined(got), whole, "input split as {chunks:?}");
        }
    }

    fn bytes(b: &[u8]) -> BytesMut {
        BytesMut::from(b)
    }

    #[test]
    fn plain_lines() {
        check(MAX, b"IAMAT\nFOO x\n", b"L(IAMAT)\nL(FOO x)\n");
        check(MAX, b"a\n", b"L(a)\n");
    }

    #[test]
    fn crlf_is_a_line_end() {
        check(MAX, b"a\r\nbc\r\n", b"L(a)\nL(bc)\n");
        // Only the one CR just before the LF.
        check(MAX, b"a\r\r\n", b"L(a\r)\n");
        check(MAX, b"\r\r\n\r\n", b"L(\r)\nL()\n");
    }

    #[test]
    fn a_lone_cr_inside_a_line_is_part_of_it() {
        check(MAX, b"a\rb\n\rc\n", b"L(a\rb)\nL(\rc)\n");
        check(MAX, b"a\r", b"L(a)\n");
        check(MAX, b"a\rb", b"L(a\rb)\n");
    }

    #[test]
    fn a_cr_at_a_read_boundary_waits_for_the_next_byte() {
        let mut codec = LineCodec::new(MAX);
        let mut buf = bytes(b"abc\r");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"abc\r");
        buf.extend_from_slice(b"\n");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line(bytes(b"abc")))
        );
        // The same CR followed by a byte that is not LF is part of the line.
        let mut buf = bytes(b"abc\r");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"d\n");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line(bytes(b"abc\rd")))
        );
        check(MAX, b"abc\r\nd\r\n", b"L(abc)\nL(d)\n");
    }

    #[test]
    fn blank_lines_are_lines() {
        check(MAX, b"\n\n \n\t\r\n", b"L()\nL()\nL( )\nL(\t)\n");
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_held_whole() {
        check(MAX, b"12345678\n", b"L(12345678)\n");
        check(MAX, b"12345678\r\n", b"L(12345678)\n");
        check(MAX, b"12345678", b"L(12345678)\n");
        check(MAX, b"12345678\r", b"L(12345678)\n");
        // The limit counts the CR that turned out not to be a line end.
        check(MAX, b"1234567\r8\n", b"? 1234567\r8\n");
    }

    #[test]
    fn one_byte_past_the_limit_is_overlong() {
        check(MAX, b"123456789\n", b"? 123456789\n");
        check(MAX, b"123456789\nok\n", b"? 123456789\nL(ok)\n");
        check(MAX, b"12345678\r\r\n", b"? 12345678\r\n");
        check(MAX, b"123456789", b"? 123456789\n");
    }

    #[test]
    fn an_overlong_line_is_handed_out_as_it_arrives() {
        let mut codec = LineCodec::new(MAX);
        let mut buf = bytes(b"1234");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"56789\r");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::LongStart(bytes(b"123456789")))
        );
        assert_eq!(&buf[..], b"\r", "the CR waits");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"ab");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::LongMore(bytes(b"\rab")))
        );
        assert!(buf.is_empty());
        buf.extend_from_slice(b"c\r\nok\n");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::LongEnd(bytes(b"c")))
        );
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line(bytes(b"ok")))
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn an_overlong_line_ended_by_crlf_does_not_echo_the_cr() {
        check(MAX, b"0123456789abcdef\r\n", b"? 0123456789abcdef\n");
        check(MAX, b"0123456789abcdef\r\r\n", b"? 0123456789abcdef\r\n");
        check(MAX, b"0123456789\rx\r\nok\r\n", b"? 0123456789\rx\nL(ok)\n");
    }

    #[test]
    fn an_overlong_line_ended_by_eof_gets_its_line_end() {
        check(MAX, b"0123456789abcdef", b"? 0123456789abcdef\n");
        check(MAX, b"0123456789abcdef\r", b"? 0123456789abcdef\n");
        check(
            MAX,
            b"a\n0123456789abcdef\r\r",
            b"L(a)\n? 0123456789abcdef\r\n",
        );
    }

    #[test]
    fn a_last_line_ended_by_eof_is_a_line() {
        check(MAX, b"FOO", b"L(FOO)\n");
        check(MAX, b"FOO\nBAR", b"L(FOO)\nL(BAR)\n");
        check(MAX, b"FOO\r", b"L(FOO)\n");
        // A lone CR at EOF is an empty line (which gets no reply, being blank).
        check(MAX, b"\r", b"L()\n");
        check(MAX, b" \t", b"L( \t)\n");
    }

    #[test]
    fn empty_input_has_no_frames() {
        assert_eq!(frames(MAX, &[]), vec![]);
        assert_eq!(frames(MAX, &[b"", b""]), vec![]);
        check(MAX, b"", b"");
    }

    #[test]
    fn many_lines_in_one_chunk() {
        let mut input = Vec::new();
        let mut want = Vec::new();
        for i in 0..50 {
            let line = format!("L{i}");
            input.extend_from_slice(line.as_bytes());
            input.extend_from_slice(if i % 2 == 0 { b"\n" } else { b"\r\n" });
            want.extend_from_slice(format!("L({line})\n").as_bytes());
        }
        input.extend_from_slice(b"0123456789\nend");
        want.extend_from_slice(b"? 0123456789\nL(end)\n");
        check(MAX, &input, &want);
    }

    #[test]
    fn the_real_limit_in_every_split_that_matters() {
        // The gateway's own limit: whole, byte by byte, and cut in two at every point
        // near the start, near the limit and then every 997 bytes (every point of a
        // 64 KiB line would take minutes in a debug build; the small limit above covers
        // every point).
        let max = crate::gateway::MAX_LINE;
        let at_limit = vec![b'x'; max];
        let past = vec![b'x'; max + 1];
        let cases: [(Vec<u8>, Vec<u8>); 4] = [
            (
                [&at_limit[..], b"\r\n"].concat(),
                [b"L(", &at_limit[..], b")\n"].concat(),
            ),
            (
                [&past[..], b"\r\n"].concat(),
                [b"? ", &past[..], b"\n"].concat(),
            ),
            (
                [&at_limit[..], b"\r"].concat(),
                [b"L(", &at_limit[..], b")\n"].concat(),
            ),
            (
                [&past[..], b"\r"].concat(),
                [b"? ", &past[..], b"\n"].concat(),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(replies(&frames(max, &[&input])), want);
            assert_eq!(
                replies(&frames(max, &input.chunks(1).collect::<Vec<_>>())),
                want
            );
            let points = (1..16)
                .chain(max - 16..input.len())
                .chain((16..max - 16).step_by(997));
            for at in points {
                let got = frames(max, &[&input[..at], &input[at..]]);
                assert!(replies(&got) == want, "cut at {at}");
            }
        }
    }

    #[test]
    fn a_long_line_is_scanned_once() {
        // Below the limit, fed a byte at a time: `next_index` keeps up with the buffer.
        let mut codec = LineCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        for _ in 0..1000 {
            buf.extend_from_slice(b"x");
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
            assert_eq!(codec.next_index, buf.len());
        }
        buf.extend_from_slice(b"\n");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line(bytes(&[b'x'; 1000])))
        );
        assert_eq!(codec.next_index, 0);
    }

    #[test]
    fn a_drained_buffer_goes_with_its_frame() {
        let mut codec = LineCodec::new(MAX);
        let mut buf = BytesMut::with_capacity(1024);
        buf.extend_from_slice(b"one\n");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line(bytes(b"one")))
        );
        assert_eq!(buf.capacity(), 0, "the connection keeps no buffer");
    }

    #[test]
    fn random_inputs_in_random_splits_frame_the_same() {
        // A property test, with fastrand seeded per case: inputs made of the bytes that
        // matter (LF, CR, others), random limits, random splits into up to 8 reads.
        for seed in 0..3000u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let max = rng.usize(0..12);
            let len = rng.usize(0..40);
            let input: Vec<u8> = (0..len)
                .map(|_| match rng.u8(0..10) {
                    0..=1 => b'\n',
                    2..=3 => b'\r',
                    4 => b' ',
                    _ => b'a' + rng.u8(0..3),
                })
                .collect();
            let want = model(max, &input);
            let whole = frames(max, &[&input]);
            assert_eq!(replies(&whole), want, "seed {seed}: {input:?} max {max}");
            for _ in 0..20 {
                let mut cuts: Vec<usize> =
                    (0..rng.usize(0..8)).map(|_| rng.usize(0..=len)).collect();
                cuts.sort_unstable();
                let mut chunks = Vec::new();
                let mut from = 0;
                for cut in cuts.into_iter().chain([len]) {
                    chunks.push(&input[from..cut]);
                    from = cut;
                }
                let got = frames(max, &chunks);
                assert_eq!(replies(&got), want, "seed {seed}: {chunks:?} max {max}");
            }
        }
    }

    /// The protocol's rule, written the simplest way (the whole input at once): lines
    /// split on LF, a CR before it and a CR at EOF stripped, long ones marked `?`.
    fn model(max: usize, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lines: Vec<&[u8]> = input.split_inclusive(|&b| b == b'\n').collect();
        if input.is_empty() {
            lines.clear();
        }
        for line in lines {
            let line = strip_line_end(line);
            if line.len() > max {
                out.extend_from_slice(b"? ");
                out.extend_from_slice(line);
                out.push(b'\n');
            } else {
                out.extend_from_slice(b"L(");
                out.extend_from_slice(line);
                out.extend_from_slice(b")\n");
            }
        }
        out
    }
}
