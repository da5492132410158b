//! The text bench-client publishes: `b:<step>:<publisher>:<n>:<intended_ns>:<actual_ns>:<padding>`.
//!
//! It carries what a receiver needs to measure latency both ways (from the intended send
//! time, coordinated-omission-safe as in wrk2, and from the actual send time) and to tell a
//! bench message from anything else in the room. Times are CLOCK_MONOTONIC nanoseconds,
//! comparable across processes on one host. Only characters that JSON never escapes are
//! used, so the text travels byte for byte and is read without unescaping.

use std::fmt::Write as _;

/// Prefix that marks a bench-client payload.
pub const PREFIX: &[u8] = b"b:";

/// What a publisher stamps into one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Ramp step (0 for a plain fan-out run); deliveries of another step are "late".
    pub step: u32,
    /// Global publisher index.
    pub publisher: u32,
    /// The publisher's own message number, from 0.
    pub n: u64,
    /// When the fixed-rate schedule meant the message to be sent.
    pub intended_ns: u64,
    /// When it was actually handed to the socket.
    pub actual_ns: u64,
}

impl Stamp {
    /// Writes the payload text into `out` (cleared first), padded with `x` to at least
    /// `min_len` bytes.
    pub fn encode(&self, min_len: usize, out: &mut String) {
        self.encode_with(min_len, false, out);
    }

    /// [`Stamp::encode`], padded with `x` or, when `json`, with JSON-like records
    /// (`{id:…,user:…,status:…}`, values varying per message) that deflate about as well
    /// as real JSON documents, for compression runs: `x` padding would compress to
    /// nothing and flatter permessage-deflate. No quotes or backslashes, so the text
    /// still travels unescaped.
    pub fn encode_with(&self, min_len: usize, json: bool, out: &mut String) {
        out.clear();
        let _ = write!(out, "b:{}:{}:{}:{}:{}:", self.step, self.publisher, self.n, self.intended_ns, self.actual_ns);
        if json {
            pad_json(out, min_len, u64::from(self.publisher) << 40 ^ self.n);
        }
        while out.len() < min_len {
            out.push('x');
        }
    }

    /// Reads a stamp back from a delivered `text`; `None` if it is not a bench payload.
    pub fn decode(text: &[u8]) -> Option<Stamp> {
        let rest = text.strip_prefix(PREFIX)?;
        let mut parts = rest.split(|&c| c == b':');
        let mut num = || crate::scan::parse_u64(parts.next()?);
        Some(Stamp {
            step: u32::try_from(num()?).ok()?,
            publisher: u32::try_from(num()?).ok()?,
            n: num()?,
            intended_ns: num()?,
            actual_ns: num()?,
        })
    }
}

/// A `data` object of `len` bytes (at least its fixed part) carrying `stamp`:
/// `{"stamp":"<stamp>","pad":"xxx…"}`. Receivers read the stamp back with
/// `scan::scan`, which takes `data.stamp` where a message has no `text`.
pub fn data_object(stamp: &str, len: usize) -> String {
    const FIXED: usize = r#"{"stamp":"","pad":""}"#.len();
    let pad = len.saturating_sub(FIXED + stamp.len());
    let mut out = String::with_capacity(FIXED + stamp.len() + pad);
    out.push_str(r#"{"stamp":""#);
    out.push_str(stamp);
    out.push_str(r#"","pad":""#);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str(r#""}"#);
    out
}

/// Appends JSON-like records to `out` until it is at least `min_len` long; the values
/// come from a small generator seeded by `seed`, so messages differ from each other.
/// Unquoted (`{id:1,user:member-0001,…}`), so the text travels unescaped in `text`.
fn pad_json(out: &mut String, min_len: usize, seed: u64) {
    json_records(out, min_len, seed, "");
}

/// `json_records` with every string quoted by `q` (`"` for real JSON, `""` for none).
fn json_records(out: &mut String, min_len: usize, seed: u64, q: &str) {
    const STATUS: [&str; 4] = ["online", "away", "busy", "offline"];
    const TAGS: [&str; 6] = ["alpha", "beta", "gamma", "delta", "omega", "sigma"];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    out.push('[');
    let mut first = true;
    while out.len() < min_len {
        let r = next();
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(
            out,
            "{{{q}id{q}:{},{q}user{q}:{q}member-{:04}{q},{q}status{q}:{q}{}{q},{q}score{q}:{}.{:02},{q}tags{q}:[{q}{}{q},{q}{}{q}]}}",
            r % 100_000,
            (r >> 17) % 10_000,
            STATUS[(r >> 31) as usize % STATUS.len()],
            (r >> 35) % 1000,
            (r >> 45) % 100,
            TAGS[(r >> 52) as usize % TAGS.len()],
            TAGS[(r >> 56) as usize % TAGS.len()],
        );
    }
    out.push(']');
}

/// A `data` object of exactly `len` bytes (at least its fixed part) carrying `stamp`,
/// filled with JSON records like [`pad_json`]'s (quoted: this is real JSON) instead of
/// `x`: `{"stamp":"<stamp>","items":[{"id":…},…],"pad":"xx"}`. For compression runs
/// (`--data-bytes` with `--payload-json`), where `x` padding would flatter deflate.
pub fn data_object_json(stamp: &str, len: usize, seed: u64) -> String {
    const TAIL: &str = r#","pad":""}"#;
    let mut out = String::with_capacity(len + 128);
    out.push_str(r#"{"stamp":""#);
    out.push_str(stamp);
    out.push_str(r#"","items":"#);
    // Records stop at the first one that ends past `fill` (one record is < 128 bytes),
    // which leaves room for `]` and the tail; the pad then makes the length exact.
    let fill = len.saturating_sub(TAIL.len() + 128);
    json_records(&mut out, fill, seed, "\"");
    out.push_str(r#","pad":""#);
    while out.len() + 2 < len {
        out.push('x');
    }
    out.push_str(r#""}"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads() {
        let s = Stamp { step: 2, publisher: 7, n: 99, intended_ns: 123_456_789_000, actual_ns: 123_456_790_000 };
        let mut text = String::new();
        s.encode(100, &mut text);
        assert_eq!(text.len(), 100);
        assert!(text.ends_with("xx"));
        assert_eq!(Stamp::decode(text.as_bytes()), Some(s));
        s.encode(0, &mut text);
        assert_eq!(text, "b:2:7:99:123456789000:123456790000:");
    }

    #[test]
    fn data_objects_have_the_asked_size_and_carry_the_stamp() {
        let d = data_object("b:1:2:3:4:5:", 1024);
        assert_eq!(d.len(), 1024);
        let frame = format!(r#"{{"type":"message","seq":1,"data":{d},"ts":1}}"#);
        let f = crate::scan::scan(frame.as_bytes()).unwrap();
        assert_eq!(f.text, b"b:1:2:3:4:5:");
        assert!(data_object("b:1:2:3:4:5:", 0).starts_with(r#"{"stamp":"b:1"#));
    }

    #[test]
    fn json_data_objects_are_json_of_the_asked_size_and_carry_the_stamp() {
        for len in [0, 64, 300, 2048, 10_000] {
            let d = data_object_json("b:1:2:3:4:5:", len, 42);
            if len >= 200 {
                assert_eq!(d.len(), len, "exact length once the fixed part and a record fit");
            }
            let v: serde_json::Value = serde_json::from_str(&d).expect("valid JSON");
            assert_eq!(v["stamp"], "b:1:2:3:4:5:");
            let frame = format!(r#"{{"type":"message","seq":1,"data":{d},"ts":1}}"#);
            assert_eq!(crate::scan::scan(frame.as_bytes()).unwrap().text, b"b:1:2:3:4:5:");
        }
        let d = data_object_json("s", 2048, 7);
        assert!(d.matches(r#""status":"#).count() > 15, "records, not padding: {d}");
        assert_ne!(d, data_object_json("s", 2048, 8), "messages differ");
    }

    #[test]
    fn foreign_text_is_not_a_stamp() {
        for t in [&b"hello"[..], b"b:", b"b:1:2:3", b"b:1:2:3:4:x:", b"b:-1:2:3:4:5:"] {
            assert_eq!(Stamp::decode(t), None, "{}", String::from_utf8_lossy(t));
        }
    }

    #[test]
    fn json_padding_keeps_the_stamp_readable_and_needs_no_escaping() {
        let s = Stamp { step: 1, publisher: 2, n: 3, intended_ns: 4, actual_ns: 5 };
        let mut text = String::new();
        s.encode_with(2048, true, &mut text);
        assert!(text.len() >= 2048 && text.len() < 2048 + 120, "{}", text.len());
        assert_eq!(Stamp::decode(text.as_bytes()), Some(s));
        assert!(!text.contains('"') && !text.contains('\\') && text.contains("{id:"));
        let mut other = String::new();
        Stamp { n: 4, ..s }.encode_with(2048, true, &mut other);
        assert_ne!(text[12..], other[12..], "messages differ");
    }
}
