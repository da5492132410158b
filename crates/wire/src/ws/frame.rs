//! RFC 6455 frame headers: parse (with the rules a server must enforce) and encode.
//!
//! Pure functions over byte slices, no I/O, so they can be property-tested, fuzzed and
//! benchmarked. The bit layout itself is tungstenite's `FrameHeader`; what this module adds
//! is the policy tungstenite leaves to its `WebSocket` type (masking direction, reserved
//! bits, control-frame limits, size cap) and the serialized-once server frame builder.

use std::io::Cursor;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::ProtocolError;

/// Longest possible header: 2 bytes + 8 bytes extended length + 4 bytes mask.
pub const MAX_HEADER_LEN: usize = 14;

/// Longest header of an unmasked (server → client) frame.
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// Largest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Which peer produced the bytes being parsed; decides the masking rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We are the server: frames come from a client and must be masked.
    Server,
    /// We are a client (bench-client, tests): frames come from a server and must not be masked.
    Client,
}

/// A parsed frame header and where its payload sits in the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// FIN bit: last fragment of a message.
    pub fin: bool,
    /// Frame opcode (never a reserved one: those are rejected while parsing).
    pub opcode: OpCode,
    /// RSV1: "compressed" under permessage-deflate (only ever set when the caller of
    /// [`parse_header_with`] allowed it).
    pub rsv1: bool,
    /// Masking key of a client frame.
    pub mask: Option<[u8; 4]>,
    /// Bytes taken by the header itself.
    pub header_len: usize,
    /// Payload length announced by the header (already checked against the size cap).
    pub payload_len: usize,
}

impl Header {
    /// Header plus payload: how many bytes the whole frame occupies.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses the frame header at the start of `buf`.
///
/// Returns `Ok(None)` while the header is incomplete (cheap "need more bytes", nothing is
/// consumed). A complete header is returned as soon as it is available, before the payload
/// has arrived, so an oversized frame is refused without buffering it. Errors map to close
/// codes through [`ProtocolError::close_code`].
pub fn parse_header(buf: &[u8], role: Role, max_payload: usize) -> Result<Option<Header>, ProtocolError> {
    parse_header_with(buf, role, max_payload, false)
}

/// [`parse_header`] for a connection that negotiated permessage-deflate when `rsv1` is
/// true: RSV1 is then allowed on data frames (whether it is allowed on a continuation is
/// the message reader's rule) and reported in [`Header::rsv1`]. RSV1 on a control frame,
/// and RSV2/RSV3, stay protocol errors.
pub fn parse_header_with(
    buf: &[u8],
    role: Role,
    max_payload: usize,
    rsv1: bool,
) -> Result<Option<Header>, ProtocolError> {
    let mut cursor = Cursor::new(buf);
    let (h, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(ProtocolError::ReservedOpcode),
    };
    let rsv1_ok = rsv1 && matches!(h.opcode, OpCode::Data(_));
    if (h.rsv1 && !rsv1_ok) || h.rsv2 || h.rsv3 {
        return Err(ProtocolError::ReservedBits);
    }
    match (role, h.mask.is_some()) {
        (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
        (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
        _ => {}
    }
    if let OpCode::Control(_) = h.opcode {
        if !h.is_final {
            return Err(ProtocolError::FragmentedControl);
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(ProtocolError::ControlTooLong);
        }
    }
    if len > max_payload as u64 {
        return Err(ProtocolError::TooBig);
    }
    Ok(Some(Header {
        fin: h.is_final,
        opcode: h.opcode,
        rsv1: h.rsv1,
        mask: h.mask,
        header_len: cursor.position() as usize,
        payload_len: len as usize,
    }))
}

/// XORs `payload` with the client's masking key, in place (RFC 6455 §5.3).
///
/// Works on 8-byte words (tungstenite keeps its own version private); since 8 is a
/// multiple of 4, every word starts at mask offset 0. The compiler vectorizes the loop.
#[inline]
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Writes an unmasked header for a final frame of `opcode` and `len` payload bytes.
/// Returns the header bytes and how many of them are used.
pub fn encode_header(opcode: OpCode, len: usize) -> ([u8; MAX_SERVER_HEADER_LEN], usize) {
    encode_header_with(opcode, len, false)
}

/// [`encode_header`] with RSV1 set: the header of a permessage-deflate compressed message.
pub fn encode_header_rsv1(opcode: OpCode, len: usize) -> ([u8; MAX_SERVER_HEADER_LEN], usize) {
    encode_header_with(opcode, len, true)
}

fn encode_header_with(opcode: OpCode, len: usize, rsv1: bool) -> ([u8; MAX_SERVER_HEADER_LEN], usize) {
    let header = FrameHeader { is_final: true, rsv1, rsv2: false, rsv3: false, opcode, mask: None };
    let mut out = [0u8; MAX_SERVER_HEADER_LEN];
    let mut cursor = Cursor::new(&mut out[..]);
    // Ten bytes always hold an unmasked header, so the write cannot run short.
    let used = match header.format(len as u64, &mut cursor) {
        Ok(()) => cursor.position() as usize,
        Err(_) => 0,
    };
    (out, used)
}

/// Builds a complete server frame (unmasked, final) whose payload is written by `fill`.
///
/// This is the serialized-once path: the payload is written exactly once, straight after
/// a reserved header gap, and the header is then written right-aligned into that gap, so
/// the result is one contiguous `Bytes` with no copy of the payload. Every receiver gets a
/// refcount clone of it.
pub fn build_frame(opcode: OpCode, capacity_hint: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut buf = Vec::with_capacity(MAX_SERVER_HEADER_LEN + capacity_hint);
    buf.resize(MAX_SERVER_HEADER_LEN, 0);
    fill(&mut buf);
    let payload_len = buf.len() - MAX_SERVER_HEADER_LEN;
    let (header, hlen) = encode_header(opcode, payload_len);
    let start = MAX_SERVER_HEADER_LEN - hlen;
    buf[start..MAX_SERVER_HEADER_LEN].copy_from_slice(&header[..hlen]);
    Bytes::from(buf).slice(start..)
}

/// A text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    build_frame(OpCode::Data(Data::Text), payload.len(), |b| b.extend_from_slice(payload))
}

/// A close frame with a status `code` and a short UTF-8 `reason` (truncated to fit 125 bytes).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let reason = truncate_utf8(reason, MAX_CONTROL_PAYLOAD - 2);
    build_frame(OpCode::Control(Control::Close), 2 + reason.len(), |b| {
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(reason.as_bytes());
    })
}

/// A ping frame with `payload` (at most 125 bytes are used).
pub fn ping_frame(payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    build_frame(OpCode::Control(Control::Ping), payload.len(), |b| b.extend_from_slice(payload))
}

/// A pong frame echoing `payload` (at most 125 bytes are used).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    build_frame(OpCode::Control(Control::Pong), payload.len(), |b| b.extend_from_slice(payload))
}

/// Encodes a masked client frame (for clients: tests, bench-client). `fin = false` makes a
/// fragment; continuation frames use `OpCode::Data(Data::Continue)`.
pub fn client_frame(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    client_frame_with(opcode, fin, false, payload, mask)
}

/// [`client_frame`] with RSV1 (`compressed`) as given: a permessage-deflate client frame
/// when `payload` is the compressed data.
pub fn client_frame_with(opcode: OpCode, fin: bool, compressed: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let header = FrameHeader { is_final: fin, rsv1: compressed, rsv2: false, rsv3: false, opcode, mask: Some(mask) };
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
    out
}

/// Longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: OpCode = OpCode::Data(Data::Text);

    #[test]
    fn header_lengths_cover_all_three_length_forms() {
        for (len, hlen) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let frame = build_frame(TEXT, len, |b| b.resize(b.len() + len, b'a'));
            assert_eq!(frame.len(), hlen + len, "payload {len}");
            let h = parse_header(&frame, Role::Client, usize::MAX).unwrap().unwrap();
            assert_eq!((h.header_len, h.payload_len, h.fin), (hlen, len, true));
        }
    }

    #[test]
    fn client_frames_round_trip_through_unmask() {
        let wire = client_frame(TEXT, true, b"hello", [1, 2, 3, 4]);
        let h = parse_header(&wire, Role::Server, 1024).unwrap().unwrap();
        let mut payload = wire[h.header_len..h.frame_len()].to_vec();
        unmask(&mut payload, h.mask.unwrap());
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn incomplete_header_asks_for_more() {
        let wire = client_frame(TEXT, true, &[0u8; 300], [9, 9, 9, 9]);
        for cut in 0..8 {
            assert_eq!(parse_header(&wire[..cut], Role::Server, 1024).unwrap(), None);
        }
        assert!(parse_header(&wire[..8], Role::Server, 1024).unwrap().is_some());
    }

    #[test]
    fn server_rules_are_enforced() {
        let unmasked = text_frame(b"x");
        assert_eq!(parse_header(&unmasked, Role::Server, 10), Err(ProtocolError::UnmaskedClientFrame));
        let masked = client_frame(TEXT, true, b"x", [1, 1, 1, 1]);
        assert_eq!(parse_header(&masked, Role::Client, 10), Err(ProtocolError::MaskedServerFrame));
        let big = client_frame(TEXT, true, &[0; 11], [1, 1, 1, 1]);
        assert_eq!(parse_header(&big, Role::Server, 10), Err(ProtocolError::TooBig));
        // Only the first 4 bytes of the header are needed to refuse a 1 GiB frame.
        let mut huge = vec![0x81, 0xFF];
        huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(parse_header(&huge, Role::Server, 1 << 20), Err(ProtocolError::TooBig));
        let mut rsv = client_frame(TEXT, true, b"x", [1, 1, 1, 1]);
        rsv[0] |= 0x40;
        assert_eq!(parse_header(&rsv, Role::Server, 10), Err(ProtocolError::ReservedBits));
        let mut reserved = client_frame(TEXT, true, b"x", [1, 1, 1, 1]);
        reserved[0] = 0x83;
        assert_eq!(parse_header(&reserved, Role::Server, 10), Err(ProtocolError::ReservedOpcode));
        let ping = OpCode::Control(Control::Ping);
        let frag_ping = client_frame(ping, false, b"x", [1, 1, 1, 1]);
        assert_eq!(parse_header(&frag_ping, Role::Server, 10), Err(ProtocolError::FragmentedControl));
        let long_ping = client_frame(ping, true, &[0; 126], [1, 1, 1, 1]);
        assert_eq!(parse_header(&long_ping, Role::Server, 1000), Err(ProtocolError::ControlTooLong));
    }

    proptest::proptest! {
        #[test]
        fn unmask_matches_the_bytewise_definition(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            mask in proptest::prelude::any::<[u8; 4]>(),
        ) {
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            proptest::prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn close_frame_reason_is_truncated_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1001, &reason);
        let h = parse_header(&frame, Role::Client, 1000).unwrap().unwrap();
        assert!(h.payload_len <= MAX_CONTROL_PAYLOAD);
        let body = &frame[h.header_len..];
        assert_eq!(u16::from_be_bytes([body[0], body[1]]), 1001);
        assert!(std::str::from_utf8(&body[2..]).is_ok());
    }
}
