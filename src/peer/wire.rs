//! The `Link` stream's messages as bytes: each update encoded once, when it is made
//! (or, at a relay, copied once with the names it adds to its `seen` list), queued as
//! those bytes for every neighbour it goes to, written as they are, and read back on
//! the other side without copying a field.
//!
//! The bytes on the wire are exactly `herd.v1.LinkMessage` of `proto/herd/v1/herd.proto`
//! (grpcurl and any protobuf reader see the declared messages): [`LinkMessage`] is a
//! hand-written `prost::Message` for that type (build.rs maps the proto type to it),
//! because prost's generated one would decode every update into owned strings and
//! encode it again per neighbour. An update's payload is a `herd.v1.Update`;
//! [`UpdateRef`] reads one in place and [`encode_update`] writes one.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::{
    DecodeError, Message,
    encoding::{
        DecodeContext, WireType, decode_varint, encode_key, encode_varint, encoded_len_varint,
    },
};

use crate::proto;

/// `herd.v1.LinkMessage`, with its updates as encoded `herd.v1.Update` payloads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkMessage {
    /// Each an encoded `herd.v1.Update` (without its field key and length).
    pub updates: Vec<Bytes>,
    pub floors: Option<proto::Floors>,
    pub caught_up: Option<proto::Floors>,
}

/// The bytes one update takes in a `LinkMessage`: its key, its length and itself.
pub fn framed_len(payload: usize) -> usize {
    1 + encoded_len_varint(payload as u64) + payload
}

impl Message for LinkMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for u in &self.updates {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(u.len() as u64, buf);
            buf.put_slice(u);
        }
        if let Some(f) = &self.floors {
            prost::encoding::message::encode(2, f, buf);
        }
        if let Some(f) = &self.caught_up {
            prost::encoding::message::encode(3, f, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                // A slice of the received buffer, not a copy.
                let mut payload = Bytes::new();
                prost::encoding::bytes::merge(wire_type, &mut payload, buf, ctx)?;
                self.updates.push(payload);
                Ok(())
            }
            2 => prost::encoding::message::merge(
                wire_type,
                self.floors.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            3 => prost::encoding::message::merge(
                wire_type,
                self.caught_up.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let updates: usize = self.updates.iter().map(|u| framed_len(u.len())).sum();
        let floor = |f: &Option<proto::Floors>| {
            f.as_ref().map_or(0, |f| {
                let n = f.encoded_len();
                1 + encoded_len_varint(n as u64) + n
            })
        };
        updates + floor(&self.floors) + floor(&self.caught_up)
    }

    fn clear(&mut self) {
        self.updates.clear();
        self.floors = None;
        self.caught_up = None;
    }
}

/// An update's fields, borrowed: from a received payload ([`UpdateRef::parse`]) or from
/// a `proto::Update` ([`UpdateRef::of`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateRef<'a> {
    pub client_id: &'a [u8],
    pub location: &'a [u8],
    pub client_time: &'a [u8],
    pub origin: &'a str,
    pub time_diff: &'a [u8],
    pub label: Option<LabelRef<'a>>,
    pub seen: Vec<&'a str>,
    pub version: Option<VersionRef<'a>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelRef<'a> {
    pub seconds: &'a str,
    pub nanos: u32,
    pub origin: &'a str,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionRef<'a> {
    pub origin: &'a str,
    pub incarnation: u64,
    pub seq: u64,
}

impl<'a> VersionRef<'a> {
    /// The fields of a decoded version.
    pub fn of(v: &'a proto::Version) -> VersionRef<'a> {
        VersionRef {
            origin: &v.origin,
            incarnation: v.incarnation,
            seq: v.seq,
        }
    }
}

/// A payload that is not a `herd.v1.Update`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed update: {0}")]
pub struct Malformed(&'static str);

/// Reads one field: its number and, for a length-delimited one, its bytes (else its varint).
enum Field<'a> {
    Bytes(u32, &'a [u8]),
    Varint(u32, u64),
}

fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Field<'a>, Malformed> {
    let key = decode_varint(buf).map_err(|_| Malformed("bad key"))?;
    let tag = (key >> 3) as u32;
    match key & 7 {
        0 => Ok(Field::Varint(
            tag,
            decode_varint(buf).map_err(|_| Malformed("bad varint"))?,
        )),
        2 => {
            let len = decode_varint(buf).map_err(|_| Malformed("bad length"))? as usize;
            if len > buf.len() {
                return Err(Malformed("length past the end"));
            }
            let (field, rest) = buf.split_at(len);
            *buf = rest;
            Ok(Field::Bytes(tag, field))
        }
        // Fixed-width fields of a newer sender: skipped like prost skips them.
        1 if buf.len() >= 8 => {
            buf.advance(8);
            Ok(Field::Varint(0, 0))
        }
        5 if buf.len() >= 4 => {
            buf.advance(4);
            Ok(Field::Varint(0, 0))
        }
        _ => Err(Malformed("unsupported wire type")),
    }
}

fn text(b: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(b).map_err(|_| Malformed("a string field is not UTF-8"))
}

/// Names a seen list has room for before it grows.
const SEEN_RESERVED: usize = 256;

/// The key of a `seen` name (field 7, length-delimited).
const SEEN_KEY: u8 = 7 << 3 | 2;

/// Reads the run of `seen` names that starts with the one at `start..end` of `whole`
/// and goes on back to back (as a seen list is written), pushing them onto `seen`;
/// gives where the run ends. The run's keys and one-byte lengths are ASCII, so one
/// UTF-8 check of the whole run checks every name in it (a list of dozens of names in
/// a large herd, read by every server on every copy of an update).
fn seen_run<'a>(
    whole: &'a [u8],
    start: usize,
    end: usize,
    seen: &mut Vec<&'a str>,
) -> Result<usize, Malformed> {
    let mut run_end = end;
    while let &[SEEN_KEY, len, ..] = &whole[run_end..]
        && len < 0x80
        && run_end + 2 + usize::from(len) <= whole.len()
    {
        run_end += 2 + usize::from(len);
    }
    // None: some name is not UTF-8, and checking them one by one says which.
    let run = std::str::from_utf8(&whole[start..run_end]).ok();
    let (mut a, mut b) = (start, end);
    loop {
        seen.push(match run {
            // Every name starts after an ASCII byte and ends before one (or at the
            // run's end): always on character boundaries.
            Some(run) => run
                .get(a - start..b - start)
                .ok_or(Malformed("a string field is not UTF-8"))?,
            None => text(&whole[a..b])?,
        });
        if b == run_end {
            return Ok(run_end);
        }
        a = b + 2;
        b = a + usize::from(whole[b + 1]);
    }
}

impl<'a> UpdateRef<'a> {
    /// Reads an encoded `herd.v1.Update` in place. Later occurrences of a singular field
    /// win and repeated ones append, as protobuf says.
    pub fn parse(mut buf: &'a [u8]) -> Result<UpdateRef<'a>, Malformed> {
        let whole = buf;
        let mut u = UpdateRef::default();
        while !buf.is_empty() {
            match next_field(&mut buf)? {
                Field::Bytes(1, b) => u.client_id = b,
                Field::Bytes(2, b) => u.location = b,
                Field::Bytes(3, b) => u.client_time = b,
                Field::Bytes(4, b) => u.origin = text(b)?,
                Field::Bytes(5, b) => u.time_diff = b,
                Field::Bytes(6, mut b) => {
                    let l = u.label.get_or_insert_with(LabelRef::default);
                    while !b.is_empty() {
                        match next_field(&mut b)? {
                            Field::Bytes(1, s) => l.seconds = text(s)?,
                            Field::Varint(2, n) => l.nanos = n as u32,
                            Field::Bytes(3, s) => l.origin = text(s)?,
                            _ => {}
                        }
                    }
                }
                Field::Bytes(7, b) => {
                    if u.seen.is_empty() {
                        // One allocation: every name takes at least three bytes (key,
                        // length, one byte), so the rest of the payload bounds them; and
                        // at most 4 KiB, whatever a payload of other fields claims.
                        u.seen.reserve((1 + buf.len() / 3).min(SEEN_RESERVED));
                    }
                    let at = whole.len() - buf.len();
                    buf = &whole[seen_run(whole, at - b.len(), at, &mut u.seen)?..];
                }
                Field::Bytes(8, mut b) => {
                    let v = u.version.get_or_insert_with(VersionRef::default);
                    while !b.is_empty() {
                        match next_field(&mut b)? {
                            Field::Bytes(1, s) => v.origin = text(s)?,
                            Field::Varint(2, n) => v.incarnation = n,
                            Field::Varint(3, n) => v.seq = n,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(u)
    }

    /// The fields of a decoded update.
    pub fn of(u: &'a proto::Update) -> UpdateRef<'a> {
        UpdateRef {
            client_id: &u.client_id,
            location: &u.location,
            client_time: &u.client_time,
            origin: &u.origin,
            time_diff: &u.time_diff,
            label: u.label.as_ref().map(|l| LabelRef {
                seconds: &l.seconds,
                nanos: l.nanos,
                origin: &l.origin,
            }),
            seen: u.seen.iter().map(String::as_str).collect(),
            version: u.version.as_ref().map(VersionRef::of),
        }
    }
}

fn put_bytes(tag: u32, b: &[u8], out: &mut impl BufMut) {
    // proto3: an empty field is not sent (as prost does).
    if !b.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(b.len() as u64, out);
        out.put_slice(b);
    }
}

fn bytes_len(tag_len: usize, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        tag_len + encoded_len_varint(b.len() as u64) + b.len()
    }
}

fn put_varint(tag: u32, v: u64, out: &mut impl BufMut) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

fn varint_len(v: u64) -> usize {
    if v == 0 { 0 } else { 1 + encoded_len_varint(v) }
}

/// Appends `name` to an encoded update's `seen` list (protobuf appends a repeated
/// field's later occurrences): how a relay forwards a payload without decoding it again.
pub fn put_seen(name: &str, out: &mut impl BufMut) {
    encode_key(7, WireType::LengthDelimited, out);
    encode_varint(name.len() as u64, out);
    out.put_slice(name.as_bytes());
}

/// The bytes [`put_seen`] adds.
pub fn seen_len(name: &str) -> usize {
    1 + encoded_len_varint(name.len() as u64) + name.len()
}

/// Encodes `u` as a `herd.v1.Update`, field by field as prost would.
pub fn encode_update(u: &UpdateRef<'_>) -> Bytes {
    let label_len = u.label.map(|l| {
        bytes_len(1, l.seconds.as_bytes())
            + varint_len(u64::from(l.nanos))
            + bytes_len(1, l.origin.as_bytes())
    });
    let version_len = u
        .version
        .map(|v| bytes_len(1, v.origin.as_bytes()) + varint_len(v.incarnation) + varint_len(v.seq));
    let len = bytes_len(1, u.client_id)
        + bytes_len(1, u.location)
        + bytes_len(1, u.client_time)
        + bytes_len(1, u.origin.as_bytes())
        + bytes_len(1, u.time_diff)
        + label_len.map_or(0, |n| 1 + encoded_len_varint(n as u64) + n)
        + u.seen.iter().map(|s| seen_len(s)).sum::<usize>()
        + version_len.map_or(0, |n| 1 + encoded_len_varint(n as u64) + n);
    let mut out = BytesMut::with_capacity(len);
    put_bytes(1, u.client_id, &mut out);
    put_bytes(2, u.location, &mut out);
    put_bytes(3, u.client_time, &mut out);
    put_bytes(4, u.origin.as_bytes(), &mut out);
    put_bytes(5, u.time_diff, &mut out);
    if let (Some(l), Some(n)) = (u.label, label_len) {
        encode_key(6, WireType::LengthDelimited, &mut out);
        encode_varint(n as u64, &mut out);
        put_bytes(1, l.seconds.as_bytes(), &mut out);
        put_varint(2, u64::from(l.nanos), &mut out);
        put_bytes(3, l.origin.as_bytes(), &mut out);
    }
    for s in &u.seen {
        put_seen(s, &mut out);
    }
    if let (Some(v), Some(n)) = (u.version, version_len) {
        encode_key(8, WireType::LengthDelimited, &mut out);
        encode_varint(n as u64, &mut out);
        put_bytes(1, v.origin.as_bytes(), &mut out);
        put_varint(2, v.incarnation, &mut out);
        put_varint(3, v.seq, &mut out);
    }
    debug_assert_eq!(out.len(), len);
    out.freeze()
}

/// A payload with `names` added to its `seen` list: one copy.
pub fn with_seen(payload: &[u8], names: &[&str]) -> Bytes {
    let mut out =
        BytesMut::with_capacity(payload.len() + names.iter().map(|n| seen_len(n)).sum::<usize>());
    out.put_slice(payload);
    for n in names {
        put_seen(n, &mut out);
    }
    out.freeze()
}

/// Decodes a payload in full, as prost's generated type (watchers, tests).
pub fn decode(payload: &[u8]) -> Result<proto::Update, DecodeError> {
    proto::Update::decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> proto::Update {
        proto::Update {
            client_id: Bytes::from_static(b"kiwi.cs.ucla.edu"),
            location: Bytes::from_static(b"+34.068930-118.445127"),
            client_time: Bytes::from_static(b"1520023934.918963997"),
            origin: "Goloman".into(),
            time_diff: Bytes::from_static(b"+0.263873386"),
            label: Some(proto::Label {
                seconds: "1520023934".into(),
                nanos: 918963997,
                origin: "Goloman".into(),
            }),
            seen: vec!["Goloman".into(), "Hands".into()],
            version: Some(proto::Version {
                origin: "Goloman".into(),
                incarnation: 1_700_000_000_123_456_789,
                seq: 42,
            }),
        }
    }

    #[test]
    fn encodes_an_update_byte_for_byte_as_prost_does() {
        let u = sample();
        assert_eq!(
            &encode_update(&UpdateRef::of(&u))[..],
            &u.encode_to_vec()[..]
        );
        // Defaults are left out the same way.
        let empty = proto::Update {
            label: Some(proto::Label::default()),
            version: Some(proto::Version::default()),
            ..proto::Update::default()
        };
        assert_eq!(
            &encode_update(&UpdateRef::of(&empty))[..],
            &empty.encode_to_vec()[..]
        );
    }

    #[test]
    fn reads_what_prost_writes_in_place() {
        let u = sample();
        let bytes = u.encode_to_vec();
        assert_eq!(UpdateRef::parse(&bytes).unwrap(), UpdateRef::of(&u));
        for cut in 1..bytes.len() {
            // A cut payload is an error or a prefix of the fields, never a panic.
            let _ = UpdateRef::parse(&bytes[..cut]);
        }
        assert!(UpdateRef::parse(&[0x0a, 0x05, b'a']).is_err());
        assert!(
            UpdateRef::parse(&[0x22, 0x01, 0xff]).is_err(),
            "origin not UTF-8"
        );
    }

    #[test]
    fn seen_lists_read_as_prost_reads_them_in_runs_and_apart() {
        let mut u = sample();
        let long = "L".repeat(200);
        u.seen = vec![
            "".into(),
            "a".into(),
            long.clone(),
            "b".into(),
            "Zed".into(),
        ];
        // A relay's names come after the version: two runs of one list.
        let fwd = with_seen(&u.encode_to_vec(), &["Holiday", &long, "Wilkes"]);
        let back = decode(&fwd).unwrap();
        let ours = UpdateRef::parse(&fwd).unwrap();
        assert_eq!(ours.seen, back.seen);
        assert_eq!(ours.seen.len(), 8);
        assert_eq!(ours.version, UpdateRef::of(&back).version);
        // A name that is not UTF-8 in the middle of a run is refused, wherever it is.
        let names: [&[u8]; 3] = [b"Hands", b"Ho\xffliday", b"Welsh"];
        for bad in 0..names.len() {
            let mut payload = u.encode_to_vec();
            for (i, n) in names.iter().enumerate() {
                let n: &[u8] = if i == bad { n } else { b"Goloman" };
                payload.extend_from_slice(&[SEEN_KEY, n.len() as u8]);
                payload.extend_from_slice(n);
            }
            let expect = if bad == 1 {
                Err(Malformed("a string field is not UTF-8"))
            } else {
                Ok(())
            };
            assert_eq!(UpdateRef::parse(&payload).map(|_| ()), expect, "name {bad}");
        }
        // A run cut short ends where the payload does.
        let mut payload = u.encode_to_vec();
        payload.extend_from_slice(&[SEEN_KEY, 9, b'x']);
        assert!(UpdateRef::parse(&payload).is_err());
    }

    #[test]
    fn a_relay_appends_to_seen_without_decoding() {
        let u = sample();
        let fwd = with_seen(&u.encode_to_vec(), &["Holiday", "Wilkes"]);
        let back = decode(&fwd).unwrap();
        assert_eq!(back.seen, ["Goloman", "Hands", "Holiday", "Wilkes"]);
        assert_eq!(back.version, u.version);
    }

    #[test]
    fn a_link_message_is_the_declared_message_on_the_wire() {
        let u = sample();
        /// The declared message, as prost would generate it.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Declared {
            #[prost(message, repeated, tag = "1")]
            updates: Vec<proto::Update>,
            #[prost(message, optional, tag = "2")]
            floors: Option<proto::Floors>,
            #[prost(message, optional, tag = "3")]
            caught_up: Option<proto::Floors>,
        }
        let theirs = Declared {
            updates: vec![u.clone(), u.clone()],
            floors: Some(proto::Floors {
                floors: vec![proto::Floor {
                    origin: "Hands".into(),
                    incarnation: 3,
                    seq: 9,
                    above: vec![],
                }],
                evicted: Some(proto::Evicted {
                    seconds: "1520023934".into(),
                    nanos: 5,
                    client_id: Bytes::from_static(b"kiwi"),
                }),
            }),
            caught_up: None,
        };
        let ours = LinkMessage {
            updates: vec![Bytes::from(u.encode_to_vec()); 2],
            floors: theirs.floors.clone(),
            caught_up: None,
        };
        let wire = ours.encode_to_vec();
        assert_eq!(wire, theirs.encode_to_vec());
        assert_eq!(ours.encoded_len(), wire.len());
        assert_eq!(LinkMessage::decode(&wire[..]).unwrap(), ours);
        assert_eq!(Declared::decode(&wire[..]).unwrap(), theirs);
    }
}
