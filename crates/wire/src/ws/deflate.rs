//! permessage-deflate (RFC 7692): the negotiation in the handshake, and the codec.
//!
//! corecast compresses server → client messages with **no context takeover**
//! (`server_no_context_takeover` in every answer): each message is a stand-alone deflate
//! stream, so one compressed frame is valid for every client that negotiated the
//! extension with the full 32 KiB window, and a room message is compressed once, not
//! once per receiver. Sending a message uncompressed is always allowed, so a client
//! that asked for a smaller server window, or a message below the size threshold,
//! simply gets the plain frame.
//!
//! Client → server messages are inflated with a 32 KiB window (which decodes any
//! smaller one) and a hard cap on the inflated size (the connection's message limit):
//! a decompression bomb costs at most the cap before it is refused with 1009. When the
//! client offers `client_no_context_takeover` the server asks for it, and then keeps no
//! inflate state between messages.
//!
//! The deflate itself is flate2 over zlib-rs (raw deflate, no zlib header).

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tungstenite::protocol::frame::coding::OpCode;

use super::frame::{encode_header_rsv1, MAX_SERVER_HEADER_LEN};
use super::ProtocolError;

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The empty stored block every sync flush ends with; RFC 7692 §7.2.1 removes it from
/// the wire and the receiver appends it again before inflating.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest window the server compresses with (and that room frames are built for).
pub const MAX_WINDOW_BITS: u8 = 15;

/// Smallest window zlib can compress a raw deflate stream with (it turns 8 into 9): a
/// client that asked for 8 only ever gets plain frames.
pub const MIN_COMPRESS_WINDOW_BITS: u8 = 9;

/// What one connection agreed to (the server side of a successful negotiation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// Largest window the server may compress with: the client's
    /// `server_max_window_bits`, 15 when it named none.
    pub server_window_bits: u8,
    /// The client offered `client_no_context_takeover` and the server asked for it: every
    /// client message inflates on its own, so no inflate state outlives a message.
    pub client_no_context_takeover: bool,
    /// The client named `server_max_window_bits`: the answer must repeat it.
    server_window_named: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` response header line (with its CRLF).
    pub fn response_header(&self) -> String {
        let mut h = format!("Sec-WebSocket-Extensions: {EXTENSION}; server_no_context_takeover");
        if self.client_no_context_takeover {
            h.push_str("; client_no_context_takeover");
        }
        if self.server_window_named {
            h.push_str(&format!("; server_max_window_bits={}", self.server_window_bits));
        }
        h.push_str("\r\n");
        h
    }

    /// Whether a frame compressed with the full window ([`Compressor::new`] with
    /// [`MAX_WINDOW_BITS`], the shared room frames) may be sent to this client.
    pub fn takes_full_window(&self) -> bool {
        self.server_window_bits >= MAX_WINDOW_BITS
    }

    /// The window to compress this client's own messages with; `None` when zlib cannot
    /// compress with a window that small (the client then gets plain frames).
    pub fn compress_window_bits(&self) -> Option<u8> {
        (self.server_window_bits >= MIN_COMPRESS_WINDOW_BITS).then_some(self.server_window_bits)
    }
}

/// Picks the first acceptable permessage-deflate offer among the values of the request's
/// `Sec-WebSocket-Extensions` headers (RFC 7692 §5: offers in preference order; an offer
/// with an unknown, repeated or invalid parameter is declined, and the next one tried).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreement> {
    header_values
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

/// The agreement for one offer (`permessage-deflate; param; param=value`), if acceptable.
fn accept_offer(offer: &str) -> Option<Agreement> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen = [false; 4];
    let mut agreement = Agreement {
        server_window_bits: MAX_WINDOW_BITS,
        client_no_context_takeover: false,
        server_window_named: false,
    };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => {
                agreement.client_no_context_takeover = true;
                1
            }
            "server_max_window_bits" => {
                agreement.server_window_bits = window_bits(value?)?;
                agreement.server_window_named = true;
                2
            }
            "client_max_window_bits" => {
                // The server inflates with 32 KiB, which decodes any window: it never
                // needs to limit the client's, so it names none in its answer.
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(agreement)
}

/// A window size parameter: 8 to 15, digits only.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

/// A raw-deflate compressor for server messages, without context takeover: reset before
/// every message, so one can serve a whole shard. Holds zlib's state (~256 KiB with the
/// full window): keep one per shard, not one per connection.
pub struct Compressor {
    inner: Compress,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor with a `window_bits` window (clamped to 9–15).
    pub fn new(window_bits: u8) -> Compressor {
        let bits = window_bits.clamp(MIN_COMPRESS_WINDOW_BITS, MAX_WINDOW_BITS);
        Compressor { inner: Compress::new_with_window_bits(Compression::default(), false, bits) }
    }

    /// The complete compressed server frame (FIN, RSV1 set) of a message of type
    /// `opcode` with `payload`: header gap, deflate output without the trailing
    /// `00 00 ff ff`, header written into the gap (one contiguous `Bytes`, built once
    /// for every receiver).
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Bytes {
        self.inner.reset();
        let mut buf = Vec::with_capacity(MAX_SERVER_HEADER_LEN + payload.len() / 2 + 64);
        buf.resize(MAX_SERVER_HEADER_LEN, 0);
        let mut consumed = 0;
        loop {
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity().max(256));
            }
            let before = self.inner.total_in();
            // Writing into a Vec's spare capacity with valid parameters cannot fail.
            let _ = self.inner.compress_vec(&payload[consumed..], &mut buf, FlushCompress::Sync);
            consumed += (self.inner.total_in() - before) as usize;
            // Done when all input is in and the flush fitted (spare room left over).
            if consumed >= payload.len() && buf.len() < buf.capacity() {
                break;
            }
        }
        if buf[MAX_SERVER_HEADER_LEN..].ends_with(&TRAILER) {
            buf.truncate(buf.len() - TRAILER.len());
        }
        let payload_len = buf.len() - MAX_SERVER_HEADER_LEN;
        let (header, hlen) = encode_header_rsv1(opcode, payload_len);
        let start = MAX_SERVER_HEADER_LEN - hlen;
        buf[start..MAX_SERVER_HEADER_LEN].copy_from_slice(&header[..hlen]);
        Bytes::from(buf).slice(start..)
    }
}

/// Inflate state for one direction of one connection. Created when a compressed message
/// arrives; kept between messages only when the peer may take over its context.
pub struct Inflater {
    inner: Decompress,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    /// An inflater with the full 32 KiB window (decodes any negotiated window size).
    pub fn new() -> Inflater {
        Inflater { inner: Decompress::new_with_window_bits(false, MAX_WINDOW_BITS) }
    }

    /// Inflates one message's payload (as on the wire: without the trailer) and appends
    /// it to `out`, refusing with [`ProtocolError::TooBig`] as soon as `out` would pass
    /// `max` bytes: `out` never grows beyond `max + 1` whatever the input claims.
    /// Corrupt deflate data is [`ProtocolError::BadCompressedData`].
    pub fn inflate(&mut self, payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        for input in [payload, &TRAILER[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(ProtocolError::TooBig);
                    }
                    // Grow geometrically, but never past the cap (+1 to detect overflow).
                    let room = (max + 1 - out.len()).min(out.len().max(4096));
                    out.reserve_exact(room);
                }
                let (in_before, out_before) = (self.inner.total_in(), out.len());
                let status = self
                    .inner
                    .decompress_vec(&input[pos..], out, FlushDecompress::Sync)
                    .map_err(|_| ProtocolError::BadCompressedData)?;
                let consumed = (self.inner.total_in() - in_before) as usize;
                pos += consumed;
                if out.len() > max {
                    return Err(ProtocolError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block ends the stream: whatever follows starts a new one.
                    self.inner.reset(false);
                }
                if out.len() < out.capacity() {
                    if pos >= input.len() {
                        break;
                    }
                    if consumed == 0 && out.len() == out_before {
                        // Input left and room to write, yet no progress: not deflate.
                        return Err(ProtocolError::BadCompressedData);
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets the window (the peer does not take over its context).
    pub fn reset(&mut self) {
        self.inner.reset(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{parse_header_with, Role};
    use tungstenite::protocol::frame::coding::Data;

    fn offer(v: &str) -> Option<Agreement> {
        negotiate([v.as_bytes()])
    }

    #[test]
    fn negotiation_accepts_the_common_offers() {
        let chrome = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!((chrome.server_window_bits, chrome.client_no_context_takeover), (15, false));
        assert_eq!(
            chrome.response_header(),
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        );
        let full = offer("permessage-deflate; client_no_context_takeover; client_max_window_bits").unwrap();
        assert!(full.client_no_context_takeover && full.takes_full_window());
        assert!(full.response_header().contains("; client_no_context_takeover"));
        let small = offer("permessage-deflate; server_max_window_bits=\"10\"").unwrap();
        assert_eq!(small.server_window_bits, 10);
        assert!(!small.takes_full_window());
        assert!(small.response_header().contains("; server_max_window_bits=10\r\n"));
        assert_eq!(offer("permessage-deflate; server_max_window_bits=8").unwrap().compress_window_bits(), None);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; mystery",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        let second = offer("permessage-deflate; mystery, permessage-deflate; server_max_window_bits=12").unwrap();
        assert_eq!(second.server_window_bits, 12);
        assert_eq!(negotiate([&b"foo"[..], &b"permessage-deflate"[..]]).map(|a| a.server_window_bits), Some(15));
        assert_eq!(negotiate([&[0xff_u8][..]]), None);
    }

    fn payload_of(frame: &[u8]) -> (bool, Vec<u8>) {
        let h = parse_header_with(frame, Role::Client, usize::MAX, true).unwrap().unwrap();
        (h.rsv1, frame[h.header_len..h.frame_len()].to_vec())
    }

    #[test]
    fn compressed_frames_inflate_back_to_the_message() {
        let text = "{\"type\":\"message\",\"text\":\"hello hello hello hello\"}".repeat(40);
        let mut c = Compressor::new(15);
        for _ in 0..2 {
            // No context is kept: the same input gives the same frame every time.
            let frame = c.frame(OpCode::Data(Data::Text), text.as_bytes());
            let (rsv1, payload) = payload_of(&frame);
            assert!(rsv1);
            assert!(payload.len() < text.len() / 5, "{} bytes", payload.len());
            let mut out = Vec::new();
            Inflater::new().inflate(&payload, 1 << 20, &mut out).unwrap();
            assert_eq!(out, text.as_bytes());
        }
        let empty = c.frame(OpCode::Data(Data::Binary), b"");
        let mut out = Vec::new();
        Inflater::new().inflate(&payload_of(&empty).1, 10, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_bomb_is_refused_at_the_cap_without_growing_past_it() {
        let zeros = vec![0u8; 4 << 20];
        let frame = Compressor::new(15).frame(OpCode::Data(Data::Binary), &zeros);
        let (_, payload) = payload_of(&frame);
        assert!(payload.len() < 8 * 1024, "4 MiB of zeros deflate to {} bytes", payload.len());
        let mut out = Vec::new();
        assert_eq!(Inflater::new().inflate(&payload, 64 * 1024, &mut out), Err(ProtocolError::TooBig));
        assert!(out.capacity() <= 64 * 1024 + 1, "grew to {}", out.capacity());
        let mut out = Vec::new();
        Inflater::new().inflate(&payload, 4 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 4 << 20, "exactly at the cap is fine");
    }

    #[test]
    fn garbage_is_bad_compressed_data() {
        let mut out = Vec::new();
        assert_eq!(Inflater::new().inflate(&[0xff; 16], 1024, &mut out), Err(ProtocolError::BadCompressedData));
    }

    #[test]
    fn context_takeover_streams_inflate_message_after_message() {
        // A client that keeps its context: the second message refers back to the first.
        let mut z = Compress::new_with_window_bits(Compression::default(), false, 15);
        let mut inflater = Inflater::new();
        for msg in ["the same words again", "the same words again"] {
            let mut buf = Vec::with_capacity(256);
            z.compress_vec(msg.as_bytes(), &mut buf, FlushCompress::Sync).unwrap();
            assert!(buf.ends_with(&TRAILER));
            buf.truncate(buf.len() - 4);
            let mut out = Vec::new();
            inflater.inflate(&buf, 1024, &mut out).unwrap();
            assert_eq!(out, msg.as_bytes());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip_and_garbage_never_panics(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let frame = Compressor::new(15).frame(OpCode::Data(Data::Binary), &data);
            let mut out = Vec::new();
            Inflater::new().inflate(&payload_of(&frame).1, 4096, &mut out).unwrap();
            proptest::prop_assert_eq!(&out, &data);
            let mut out = Vec::new();
            let _ = Inflater::new().inflate(&garbage, 4096, &mut out);
            proptest::prop_assert!(out.len() <= 4097);
        }
    }
}
