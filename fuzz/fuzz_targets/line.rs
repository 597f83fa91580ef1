//! Fuzzes the client line protocol: arbitrary bytes, split into reads at points the
//! input chooses, through the framer (`LineCodec`) and every line through the parser.
//! Neither may panic, the framer must hold no more than a line of the limit, and
//! every accepted command must satisfy the protocol's rules.
#![no_main]

use bytes::BytesMut;
use herd::wire::{self, Command, Frame, LineCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder as _;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the framer's limit (small, so overlong lines are common)
    // and the second the read size.
    let [max, step, rest @ ..] = data else { return };
    let max = usize::from(*max % 64);
    let step = usize::from(*step).max(1);
    let mut codec = LineCodec::new(max);
    let mut buf = BytesMut::new();
    let check = |frame: Frame| match frame {
        Frame::Line(line) => {
            assert!(line.len() <= max);
            check_line(&line);
        }
        Frame::LongStart(head) => assert!(head.len() > max),
        Frame::LongMore(_) | Frame::LongEnd(_) => {}
    };
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        while let Some(frame) = codec.decode(&mut buf).expect("decode never fails") {
            check(frame);
        }
        assert!(buf.len() <= max + 1);
    }
    while let Some(frame) = codec.decode_eof(&mut buf).expect("decode_eof never fails") {
        check(frame);
    }
    // The parser on its own, on the whole input as one line.
    check_line(rest);
});

fn check_line(line: &[u8]) {
    match wire::parse(line, 32) {
        Ok(Command::IAmAt(c)) => {
            assert!(!c.client_id.is_empty() && c.client_id.len() <= 32);
            assert!(c.client_id.iter().all(|&b| !wire::is_ws(b)));
            let (lat, lon) = c.lat_lon();
            assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
        }
        Ok(Command::WhatsAt(c)) => {
            assert!(c.client_id.len() <= 32);
            assert!(c.radius_km > 0.0 && c.radius_km <= 50.0 && c.bound <= 20);
        }
        Ok(Command::Blank) => assert!(line.iter().all(|&b| wire::is_ws(b))),
        Err(_) => {}
    }
}
