//! One log record and the scanner.
//!
//! A record is `len: u32 LE | crc: u32 LE | body` where `crc` is the CRC-32 (IEEE) of
//! the `len` body bytes. The body is a kind byte, the room name (`u16 LE` length, UTF-8),
//! then the kind's fields, integers little-endian:
//!
//! | kind | fields |
//! |---|---|
//! | 1 frame | epoch u64, seq u64, ts u64 (ms since the Unix epoch), the finished WebSocket frame (the rest) |
//! | 2 reset | epoch u64, seq u64, ts u64: the stream is `epoch`, its last seq `seq`, no history before |
//! | 3 drop | (none): the room is gone |
//! | 4 meta | creator, password hash (each a `u8` present flag, `u16 LE` length, UTF-8) |
//!
//! A torn write leaves a record whose length runs past the end, or whose CRC does not
//! match; [`scan`] stops at the first such record, so what it returns is always the
//! longest prefix of whole, intact records.

use std::sync::Arc;

use bytes::Bytes;

/// Bytes before a record's body: length and CRC.
pub const HEADER: usize = 8;

/// The largest body a record may have. A length above it is corruption, not a record
/// (frames are bounded far below by `--max-message-bytes`).
pub const MAX_BODY: usize = 64 << 20;

const FRAME: u8 = 1;
const RESET: u8 = 2;
const DROP: u8 = 3;
const META: u8 = 4;

/// One entry of a shard's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A sequenced message, as its members received it.
    Frame {
        /// Room name.
        room: Arc<str>,
        /// Stream epoch.
        epoch: u64,
        /// Sequence number within the stream.
        seq: u64,
        /// Wall-clock time it was sequenced, ms since the Unix epoch.
        ts: u64,
        /// The finished, uncompressed WebSocket frame.
        frame: Bytes,
    },
    /// The room's stream is `epoch` with last seq `seq`, and holds no history up to it: a
    /// history removal (tombstone), or the head of a room's checkpoint.
    Reset {
        /// Room name.
        room: Arc<str>,
        /// Stream epoch from now on.
        epoch: u64,
        /// Last seq of the stream.
        seq: u64,
        /// When, ms since the Unix epoch.
        ts: u64,
    },
    /// The room is gone (deleted, or expired): nothing of it is restored.
    Drop {
        /// Room name.
        room: Arc<str>,
    },
    /// What a restored room must keep besides its stream: who created it (may delete it)
    /// and its password hash (it stays private).
    Meta {
        /// Room name.
        room: Arc<str>,
        /// The creator, for rooms made with `create`.
        creator: Option<Arc<str>>,
        /// The argon2 hash of a private room's password.
        password: Option<Arc<str>>,
    },
}

impl Record {
    /// The room the record is about.
    pub fn room(&self) -> &Arc<str> {
        match self {
            Record::Frame { room, .. }
            | Record::Reset { room, .. }
            | Record::Drop { room }
            | Record::Meta { room, .. } => room,
        }
    }

    /// Appends the encoded record to `out`; returns its length. A room name, creator or
    /// hash longer than 65535 bytes is cut (none is: the server bounds them far below).
    pub fn encode(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        let put_str = |out: &mut Vec<u8>, s: &str| {
            let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(b.len() as u16).to_le_bytes());
            out.extend_from_slice(b);
        };
        let put_opt = |out: &mut Vec<u8>, s: &Option<Arc<str>>| match s {
            Some(s) => {
                out.push(1);
                put_str(out, s);
            }
            None => out.push(0),
        };
        match self {
            Record::Frame { room, epoch, seq, ts, frame } => {
                out.push(FRAME);
                put_str(out, room);
                for v in [epoch, seq, ts] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(frame);
            }
            Record::Reset { room, epoch, seq, ts } => {
                out.push(RESET);
                put_str(out, room);
                for v in [epoch, seq, ts] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Record::Drop { room } => {
                out.push(DROP);
                put_str(out, room);
            }
            Record::Meta { room, creator, password } => {
                out.push(META);
                put_str(out, room);
                put_opt(out, creator);
                put_opt(out, password);
            }
        }
        let body = &out[start + HEADER..];
        let (len, crc) = (body.len() as u32, crc32fast::hash(body));
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        out.len() - start
    }

    /// Decodes the record at the start of `buf` (sharing `buf`'s bytes for the frame);
    /// returns it and its encoded length.
    pub fn decode(buf: &Bytes) -> Result<(Record, usize), Bad> {
        if buf.len() < HEADER {
            return Err(Bad::Torn);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if len > MAX_BODY {
            return Err(Bad::Corrupt);
        }
        if buf.len() - HEADER < len {
            return Err(Bad::Torn);
        }
        let body = buf.slice(HEADER..HEADER + len);
        if crc32fast::hash(&body) != crc {
            return Err(Bad::Corrupt);
        }
        let record = Body { buf: &body, at: 0 }.record().ok_or(Bad::Corrupt)?;
        Ok((record, HEADER + len))
    }
}

/// Why a record could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// The bytes end inside the record (a write cut short).
    Torn,
    /// The length, CRC or body is wrong.
    Corrupt,
}

/// A cursor over a record's body (its CRC already checked).
struct Body<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Body<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len())?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }

    fn str(&mut self) -> Option<Arc<str>> {
        let n = self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
        std::str::from_utf8(self.take(usize::from(n))?).ok().map(Arc::from)
    }

    fn opt(&mut self) -> Option<Option<Arc<str>>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.str().map(Some),
            _ => None,
        }
    }

    fn done(&self) -> bool {
        self.at == self.buf.len()
    }

    fn record(mut self) -> Option<Record> {
        let kind = self.u8()?;
        let room = self.str()?;
        let record = match kind {
            FRAME => {
                let (epoch, seq, ts) = (self.u64()?, self.u64()?, self.u64()?);
                let frame = self.buf.slice(self.at..);
                self.at = self.buf.len();
                Record::Frame { room, epoch, seq, ts, frame }
            }
            RESET => Record::Reset { room, epoch: self.u64()?, seq: self.u64()?, ts: self.u64()? },
            DROP => Record::Drop { room },
            META => Record::Meta { room, creator: self.opt()?, password: self.opt()? },
            _ => return None,
        };
        self.done().then_some(record)
    }
}

/// What [`scan`] found in a segment.
#[derive(Debug, Default)]
pub struct Scan {
    /// The whole records, in order.
    pub records: Vec<Record>,
    /// Bytes they take: the longest valid prefix.
    pub valid: usize,
    /// Bytes after it that were not whole, intact records (0: a clean end).
    pub truncated: usize,
    /// Whether what stopped the scan was a bad length, CRC or body rather than a cut.
    pub corrupt: bool,
}

/// Reads whole records from the start of `buf` until its end or the first torn or
/// corrupt one. Nothing after a bad record is trusted: a record's length can no longer
/// be believed once one is wrong.
pub fn scan(buf: &Bytes) -> Scan {
    let mut out = Scan::default();
    while out.valid < buf.len() {
        match Record::decode(&buf.slice(out.valid..)) {
            Ok((record, len)) => {
                out.records.push(record);
                out.valid += len;
            }
            Err(bad) => {
                out.truncated = buf.len() - out.valid;
                out.corrupt = bad == Bad::Corrupt;
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(room: &str, epoch: u64, seq: u64, body: &[u8]) -> Record {
        Record::Frame {
            room: room.into(),
            epoch,
            seq,
            ts: 1_700_000_000_000 + seq,
            frame: Bytes::copy_from_slice(body),
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Meta { room: "r".into(), creator: Some("ann".into()), password: None },
            frame("r", 7, 1, b"\x81\x05hello"),
            frame("r", 7, 2, b""),
            Record::Reset { room: "r".into(), epoch: 9, seq: 2, ts: 5 },
            frame("q\u{e9}", u64::MAX, 1, &[0xff; 300]),
            Record::Meta { room: "p".into(), creator: None, password: Some("$argon2id$x".into()) },
            Record::Drop { room: "r".into() },
        ]
    }

    fn encode_all(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for r in records {
            r.encode(&mut buf);
            ends.push(buf.len());
        }
        (buf, ends)
    }

    #[test]
    fn records_round_trip() {
        let records = sample();
        let (buf, _) = encode_all(&records);
        let s = scan(&Bytes::from(buf.clone()));
        assert_eq!(s.records, records);
        assert_eq!((s.valid, s.truncated, s.corrupt), (buf.len(), 0, false));
    }

    #[test]
    fn every_cut_of_the_last_records_gives_the_longest_whole_prefix() {
        let records = sample();
        let (buf, ends) = encode_all(&records);
        for cut in 0..=buf.len() {
            let s = scan(&Bytes::copy_from_slice(&buf[..cut]));
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(s.records, records[..whole], "cut at {cut}");
            assert_eq!(s.valid, if whole == 0 { 0 } else { ends[whole - 1] }, "cut at {cut}");
            assert_eq!(s.valid + s.truncated, cut);
        }
    }

    #[test]
    fn a_huge_length_is_corruption_not_a_wait_for_more() {
        let mut buf = vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        buf.extend_from_slice(&[1; 32]);
        let s = scan(&Bytes::from(buf));
        assert!(s.records.is_empty() && s.corrupt && s.truncated == 40);
    }

    #[test]
    fn a_body_with_a_valid_crc_but_a_bad_layout_is_refused() {
        // kind 1 (frame) with a room name and no numbers after it.
        let body = [1u8, 1, 0, b'r'];
        let mut buf = Vec::new();
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        let s = scan(&Bytes::from(buf));
        assert!(s.records.is_empty() && s.corrupt);
    }

    proptest! {
        /// Any single corrupted byte anywhere: the scan returns a prefix of the records
        /// written, never a record that was not written, and every record before the
        /// damaged one.
        #[test]
        fn corruption_yields_a_prefix_never_a_torn_record(
            n in 1usize..12, at in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<prop::sample::Index>(),
        ) {
            let records: Vec<Record> = (1..=n as u64).map(|s| frame("room", 3, s, &vec![s as u8; (s * 7) as usize])).collect();
            let (mut buf, ends) = encode_all(&records);
            let at = at.index(buf.len());
            buf[at] ^= flip;
            let cut = cut.index(buf.len() + 1).max(at);
            buf.truncate(cut);
            let s = scan(&Bytes::from(buf));
            let damaged = ends.iter().position(|&e| e > at).unwrap_or(n);
            // Nothing before the damaged record is lost, nothing returned differs from
            // what was written (a flip that still decodes must keep the CRC: the odds
            // are 2^-32, and the proptest would show it).
            prop_assert!(s.records.len() >= damaged.min(ends.iter().filter(|&&e| e <= cut).count()));
            for (got, want) in s.records.iter().zip(&records) {
                prop_assert_eq!(got, want);
            }
            prop_assert!(s.records.len() <= damaged);
        }
    }
}
