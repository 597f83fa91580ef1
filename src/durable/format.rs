//! The bytes of the data dir: entries framed as length, CRC32C and payload (the
//! framing LevelDB's and RocksDB's logs use, without their blocks), what a payload
//! holds, and a reader that tells a torn tail from a corrupt entry.
//!
//! An entry is `len: u32 LE | crc: u32 LE | payload (len bytes)`, `crc` the CRC32C of
//! the payload. A payload's first byte is its kind:
//! - `PUT`: incarnation u64, seq u64, then the record's AT line (its origin is the
//!   line's second field);
//! - `FLOORS`: count u32, then per floor: origin length u8, origin, incarnation u64,
//!   seq u64;
//! - `HEADER`: server name length u8, name, own incarnation u64, last own seq u64
//!   (first in every segment and snapshot);
//! - `END`: records u64 (last in a complete snapshot);
//! - `LOST`: entries were dropped before they could be written (the disk failed
//!   for longer than `data.max_unwritten_bytes` allowed);
//! - `EVICTED`: the eviction watermark rose to `<seconds>.<nine digits> <client ID>`
//!   (every record at or below it, by client time then client ID, is evicted).

/// Bytes before a payload.
pub const FRAME: usize = 8;

/// The largest payload read back: a record line is at most about 64 KiB, and a
/// floors entry holds at most `replica::MAX_SOURCES` floors of at most 81 bytes.
pub const MAX_PAYLOAD: usize = 8 << 20;

pub const PUT: u8 = 1;
pub const FLOORS: u8 = 2;
pub const HEADER: u8 = 3;
pub const END: u8 = 4;
pub const LOST: u8 = 5;
pub const EVICTED: u8 = 6;

/// Appends one framed entry whose payload `fill` writes (after the kind byte).
pub fn frame(out: &mut Vec<u8>, kind: u8, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    out.push(kind);
    fill(out);
    let len = (out.len() - start - FRAME) as u32;
    let crc = crc32c::crc32c(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub fn put(out: &mut Vec<u8>, incarnation: u64, seq: u64, line: &[u8]) {
    frame(out, PUT, |o| {
        o.extend_from_slice(&incarnation.to_le_bytes());
        o.extend_from_slice(&seq.to_le_bytes());
        o.extend_from_slice(line);
    });
}

pub fn header(out: &mut Vec<u8>, name: &str, incarnation: u64, last_own: u64) {
    frame(out, HEADER, |o| {
        o.push(name.len() as u8);
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(&incarnation.to_le_bytes());
        o.extend_from_slice(&last_own.to_le_bytes());
    });
}

/// A floor as stored: (origin, incarnation, seq).
pub type StoredFloor = (String, u64, u64);

pub fn floors<'a>(out: &mut Vec<u8>, floors: impl ExactSizeIterator<Item = (&'a str, u64, u64)>) {
    frame(out, FLOORS, |o| {
        o.extend_from_slice(&(floors.len() as u32).to_le_bytes());
        for (origin, inc, seq) in floors {
            o.push(origin.len() as u8);
            o.extend_from_slice(origin.as_bytes());
            o.extend_from_slice(&inc.to_le_bytes());
            o.extend_from_slice(&seq.to_le_bytes());
        }
    });
}

pub fn end(out: &mut Vec<u8>, records: u64) {
    frame(out, END, |o| o.extend_from_slice(&records.to_le_bytes()));
}

pub fn evicted(out: &mut Vec<u8>, key: &[u8]) {
    frame(out, EVICTED, |o| o.extend_from_slice(key));
}

pub fn lost(out: &mut Vec<u8>) {
    frame(out, LOST, |_| {});
}

/// A decoded payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    Put {
        incarnation: u64,
        seq: u64,
        line: &'a [u8],
    },
    Floors(Vec<StoredFloor>),
    Header {
        name: &'a str,
        incarnation: u64,
        last_own: u64,
    },
    End(u64),
    Lost,
    Evicted(&'a [u8]),
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes a payload whose checksum matched; None if its contents make no sense
/// (which a matching CRC32C makes all but impossible, but is still not trusted).
pub fn decode(p: &[u8]) -> Option<Entry<'_>> {
    let (&kind, b) = p.split_first()?;
    match kind {
        PUT => Some(Entry::Put {
            incarnation: u64_at(b, 0)?,
            seq: u64_at(b, 8)?,
            line: b.get(16..)?,
        }),
        FLOORS => {
            let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
            let mut at = 4;
            let mut out = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let len = *b.get(at)? as usize;
                let origin = std::str::from_utf8(b.get(at + 1..at + 1 + len)?).ok()?;
                at += 1 + len;
                out.push((origin.to_owned(), u64_at(b, at)?, u64_at(b, at + 8)?));
                at += 16;
            }
            (at == b.len()).then_some(Entry::Floors(out))
        }
        HEADER => {
            let len = *b.first()? as usize;
            let name = std::str::from_utf8(b.get(1..1 + len)?).ok()?;
            Some(Entry::Header {
                name,
                incarnation: u64_at(b, 1 + len)?,
                last_own: u64_at(b, 9 + len)?,
            })
        }
        END => Some(Entry::End(u64_at(b, 0)?)),
        LOST => Some(Entry::Lost),
        EVICTED => Some(Entry::Evicted(b)),
        _ => None,
    }
}

/// What reading one file found at one place.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// A valid entry at `offset`.
    Entry { offset: usize, payload: &'a [u8] },
    /// `bytes` bytes at `offset` that are no valid entry, followed by a valid one
    /// (or by the end of the file, when `at_end`).
    Bad {
        offset: usize,
        bytes: usize,
        at_end: bool,
    },
}

/// Whether a valid entry starts at `at`: its length fits and its checksum matches.
fn valid_at(data: &[u8], at: usize) -> Option<&[u8]> {
    let head = data.get(at..at + FRAME)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    let payload = data.get(at + FRAME..at + FRAME + len)?;
    (crc32c::crc32c(payload) == crc).then_some(payload)
}

/// Reads a whole file's entries in order. A bad stretch is passed over to the next
/// offset where a valid entry starts (a length field may be the damaged byte, so the
/// search goes byte by byte; a false match needs a 32-bit checksum to match by chance).
pub struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, at: 0 }
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Read<'a>;

    fn next(&mut self) -> Option<Read<'a>> {
        if self.at >= self.data.len() {
            return None;
        }
        let offset = self.at;
        if let Some(payload) = valid_at(self.data, offset) {
            self.at += FRAME + payload.len();
            return Some(Read::Entry { offset, payload });
        }
        let next = (offset + 1..self.data.len()).find(|&i| valid_at(self.data, i).is_some());
        let end = next.unwrap_or(self.data.len());
        self.at = end;
        Some(Read::Bad {
            offset,
            bytes: end - offset,
            at_end: next.is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        header(&mut b, "Hands", 7, 3);
        put(&mut b, 7, 1, b"AT Hands +0.1 a +1+1 1");
        floors(&mut b, [("Hands", 7u64, 3u64), ("Welsh", 9, 2)].into_iter());
        put(&mut b, 9, 2, b"AT Welsh +0.1 b +1+1 2");
        end(&mut b, 2);
        b
    }

    fn entries(data: &[u8]) -> Vec<Read<'_>> {
        Reader::new(data).collect()
    }

    #[test]
    fn entries_round_trip() {
        let b = sample();
        let got: Vec<Entry<'_>> = entries(&b)
            .into_iter()
            .map(|r| match r {
                Read::Entry { payload, .. } => decode(payload).unwrap(),
                bad => panic!("{bad:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                Entry::Header {
                    name: "Hands",
                    incarnation: 7,
                    last_own: 3
                },
                Entry::Put {
                    incarnation: 7,
                    seq: 1,
                    line: b"AT Hands +0.1 a +1+1 1"
                },
                Entry::Floors(vec![("Hands".into(), 7, 3), ("Welsh".into(), 9, 2)]),
                Entry::Put {
                    incarnation: 9,
                    seq: 2,
                    line: b"AT Welsh +0.1 b +1+1 2"
                },
                Entry::End(2),
            ]
        );
    }

    #[test]
    fn a_torn_tail_is_bad_at_the_end() {
        let b = sample();
        // The last entry (END) is 17 bytes: any cut inside it.
        for cut in 1..17 {
            let torn = &b[..b.len() - cut];
            let reads = entries(torn);
            let Some(Read::Bad {
                bytes,
                at_end: true,
                ..
            }) = reads.last()
            else {
                panic!("cut {cut}: {reads:?}")
            };
            assert!(*bytes > 0);
            assert_eq!(
                reads
                    .iter()
                    .filter(|r| matches!(r, Read::Bad { .. }))
                    .count(),
                1
            );
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_is_one_bad_stretch_and_the_rest_is_read() {
        let b = sample();
        let good = entries(&b).len();
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x20;
            let reads = entries(&d);
            let bad: Vec<_> = reads
                .iter()
                .filter(|r| matches!(r, Read::Bad { .. }))
                .collect();
            assert_eq!(bad.len(), 1, "byte {i}: {reads:?}");
            let ok = reads.len() - 1;
            let last = matches!(bad[0], Read::Bad { at_end: true, .. });
            // Only the damaged entry is lost.
            assert_eq!(ok, good - 1, "byte {i} (at end: {last})");
        }
    }
}
