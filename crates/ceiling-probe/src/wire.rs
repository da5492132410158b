//! Bytes on the wire for the ceiling probe, pure (no I/O): the HTTP upgrade, the server
//! frames in corecast's exact JSON shapes, and the byte scans that pull `type`, `room` and
//! `text` out of a client frame.
//!
//! The probe deliberately does no JSON parsing: bench-client's own frames are
//! `{"type":"join","room":"…"}` and `{"type":"message","room":"…","text":"…"}` with no
//! whitespace, so finding `"room":"` and the next unescaped quote is enough. Values are
//! copied raw (still JSON-escaped), which keeps them valid inside the frames built here.

use std::io::Write as _;

use corecast_wire::ws::frame::{close_frame, encode_header};
use corecast_wire::ws::handshake::{accept_response, Upgrade};
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// Opcode of every data frame the probe sends.
const TEXT: OpCode = OpCode::Data(Data::Text);

/// Largest HTTP request head the probe accepts.
pub const MAX_HEAD: usize = 8 * 1024;

/// What an HTTP request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A WebSocket upgrade: the `Sec-WebSocket-Accept` value and the guest name.
    Upgrade {
        /// Accept key derived from the client's `Sec-WebSocket-Key`.
        accept: String,
        /// `name` from the query string (raw), or `guest`.
        name: String,
    },
    /// `GET /health`: answered 200 so the comparison can wait for the probe like for corecast.
    Health,
    /// Anything else: answered 400 and closed.
    Bad,
}

/// Index just past the blank line that ends an HTTP head (shared with bench-client,
/// which reads the server's 101 with it).
pub use corecast_wire::http::head_end;

/// Reads a complete request head (as found by [`head_end`]).
pub fn parse_request(head: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(head) else { return Request::Bad };
    let Some(path) = req.path else { return Request::Bad };
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    match route {
        "/health" => Request::Health,
        "/ws" => {
            let key = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"));
            let Some(key) = key else { return Request::Bad };
            let name = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("name="))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
                .unwrap_or("guest");
            Request::Upgrade { accept: tungstenite::handshake::derive_accept_key(key.value), name: name.to_owned() }
        }
        _ => Request::Bad,
    }
}

/// The 101 response for `accept` (corecast's own [`accept_response`], no subprotocol).
pub fn upgrade_response(accept: &str, out: &mut Vec<u8>) {
    let upgrade = Upgrade { accept: accept.to_owned(), protocols: Vec::new(), deflate: None };
    out.extend_from_slice(&accept_response(&upgrade, None));
}

/// The `/health` answer (the connection is closed after it).
pub const HEALTH_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// The answer to a request the probe does not serve.
pub const BAD_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Appends a text frame whose JSON payload `fill` writes straight into `out`: the header
/// length is guessed from `hint` and the payload moved only when the guess was wrong.
fn text_frame(out: &mut Vec<u8>, hint: usize, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    let guess = header_len(hint);
    out.resize(start + guess, 0);
    fill(out);
    let len = out.len() - start - guess;
    let (header, used) = encode_header(TEXT, len);
    if used != guess {
        out.splice(start..start + guess, header[..used].iter().copied());
    } else {
        out[start..start + guess].copy_from_slice(&header[..used]);
    }
}

fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Appends `{"type":"welcome","user":…,"conn":…,"shard":…}` as a frame (corecast's shape).
pub fn welcome(user: &str, conn: &str, shard: usize, out: &mut Vec<u8>) {
    text_frame(out, 64 + user.len() + conn.len(), |b| {
        let _ = write!(b, r#"{{"type":"welcome","user":"{user}","conn":"{conn}","shard":{shard}}}"#);
    });
}

/// Appends `{"type":"joined","room":…,"members":n,"seq":n,"epoch":…}` as a frame.
pub fn joined(room: &[u8], members: u32, seq: u64, epoch: &str, out: &mut Vec<u8>) {
    text_frame(out, 64 + room.len(), |b| {
        b.extend_from_slice(br#"{"type":"joined","room":""#);
        b.extend_from_slice(room);
        let _ = write!(b, r#"","members":{members},"seq":{seq},"epoch":"{epoch}"}}"#);
    });
}

/// Appends `{"type":"message","room":…,"seq":n,"user":…,"text":…,"ts":ms}` as a frame:
/// the one frame a room message becomes, shared by every member.
pub fn message(room: &[u8], seq: u64, user: &[u8], text: &[u8], ts_ms: u64, out: &mut Vec<u8>) {
    text_frame(out, 64 + room.len() + user.len() + text.len(), |b| {
        b.extend_from_slice(br#"{"type":"message","room":""#);
        b.extend_from_slice(room);
        let _ = write!(b, r#"","seq":{seq},"user":""#);
        b.extend_from_slice(user);
        b.extend_from_slice(br#"","text":""#);
        b.extend_from_slice(text);
        let _ = write!(b, r#"","ts":{ts_ms}}}"#);
    });
}

/// Appends a close frame carrying `code` (corecast's own [`close_frame`], no reason).
pub fn close(code: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&close_frame(code, ""));
}

/// A client request, as far as the probe cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Client<'a> {
    /// `{"type":"join","room":…}`.
    Join {
        /// Room name, raw.
        room: &'a [u8],
    },
    /// `{"type":"message","room":…,"text":…}`.
    Publish {
        /// Room name, raw.
        room: &'a [u8],
        /// Text, raw (still escaped).
        text: &'a [u8],
    },
    /// Anything else (ignored).
    Other,
}

/// Classifies a client text frame by byte scans (see the module docs).
pub fn classify(json: &[u8]) -> Client<'_> {
    match string_field(json, b"type") {
        Some(b"join") => string_field(json, b"room").map_or(Client::Other, |room| Client::Join { room }),
        Some(b"message") => match (string_field(json, b"room"), string_field(json, b"text")) {
            (Some(room), Some(text)) => Client::Publish { room, text },
            _ => Client::Other,
        },
        _ => Client::Other,
    }
}

/// The raw value of the first `"key":"value"` in `json` (no whitespace around the colon),
/// up to the next unescaped quote.
pub fn string_field<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut at = 0;
    while let Some(p) = find(&json[at..], b'"').map(|p| p + at) {
        let k = json.get(p + 1..p + 1 + key.len())?;
        if k == key && json.get(p + 1 + key.len()..p + 4 + key.len()) == Some(b"\":\"") {
            let start = p + 4 + key.len();
            let mut i = start;
            while i < json.len() {
                match json[i] {
                    b'"' => return Some(&json[start..i]),
                    b'\\' => i += 2,
                    _ => i += 1,
                }
            }
            return None;
        }
        at = p + 1;
    }
    None
}

fn find(hay: &[u8], b: u8) -> Option<usize> {
    hay.iter().position(|&c| c == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_fit_every_length() {
        for len in [0, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            text_frame(&mut out, 0, |b| b.resize(b.len() + len, b'a'));
            assert_eq!(out.len(), len + header_len(len));
            let (h, used) = corecast_wire::ws::frame::encode_header(
                tungstenite::protocol::frame::coding::OpCode::Data(tungstenite::protocol::frame::coding::Data::Text),
                len,
            );
            assert_eq!(out[..used], h[..used]);
        }
    }

    #[test]
    fn client_frames_are_classified_by_byte_scan() {
        assert_eq!(classify(br#"{"type":"join","room":"bc1-3"}"#), Client::Join { room: b"bc1-3" });
        assert_eq!(
            classify(br#"{"type":"message","room":"bc1-3","text":"b:\"x"}"#),
            Client::Publish { room: b"bc1-3", text: br#"b:\"x"# }
        );
        assert_eq!(classify(br#"{"type":"leave","room":"r"}"#), Client::Other);
        assert_eq!(classify(br#"{"type":"message","room":"r"}"#), Client::Other);
        assert_eq!(classify(br#"{"type":"join","room":"unterminated}"#), Client::Other);
        assert_eq!(classify(b""), Client::Other);
    }

    #[test]
    fn the_upgrade_request_is_read() {
        let head = b"GET /ws?name=bc-u7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(head_end(head), Some(head.len()));
        assert_eq!(
            parse_request(head),
            Request::Upgrade { accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(), name: "bc-u7".into() }
        );
        assert_eq!(parse_request(b"GET /health HTTP/1.1\r\n\r\n"), Request::Health);
        assert_eq!(parse_request(b"GET /ws HTTP/1.1\r\n\r\n"), Request::Bad);
        assert_eq!(parse_request(b"\x16\x03garbage\r\n\r\n"), Request::Bad);
    }
}
