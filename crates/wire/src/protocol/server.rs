//! Server → client messages, each built as one complete WebSocket text frame.
//!
//! A room message is serialized once by the room's owner shard and the resulting `Bytes`
//! is shared by every receiver (serialize once, deliver as refcount clones), so these builders are not per-receiver code.

use bytes::Bytes;
use serde::Serialize;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::ErrorCode;
use crate::ws::frame::build_frame;

/// Serializes `value` as JSON straight into a new text frame.
pub fn json_frame<T: Serialize>(value: &T, size_hint: usize) -> Bytes {
    build_frame(OpCode::Data(Data::Text), size_hint, |buf| {
        // Serializing plain structs of strings and numbers into a Vec cannot fail.
        let _ = simd_json::to_writer(&mut *buf, value);
    })
}

/// `{"type":"welcome","user":…,"name":…,"conn":…,"shard":…}`: first frame after the
/// upgrade. `name` is the token's display name, when it has one.
pub fn welcome(user: &str, name: Option<&str>, conn: &str, shard: usize) -> Bytes {
    #[derive(Serialize)]
    struct Welcome<'a> {
        r#type: &'static str,
        user: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        conn: &'a str,
        shard: usize,
    }
    json_frame(&Welcome { r#type: "welcome", user, name, conn, shard }, 96)
}

/// `{"type":"refreshed","exp":…}`: a `refresh` was accepted; the new expiry.
pub fn refreshed(exp: u64) -> Bytes {
    #[derive(Serialize)]
    struct Refreshed {
        r#type: &'static str,
        exp: u64,
    }
    json_frame(&Refreshed { r#type: "refreshed", exp }, 40)
}

/// What a `joined` frame reports about the room at the moment of joining.
#[derive(Debug, Clone, Serialize)]
pub struct Joined<'a> {
    r#type: &'static str,
    /// Room name.
    pub room: &'a str,
    /// Distinct users present, the joiner included.
    pub members: u32,
    /// Sequence number of the room's latest message: the next message has `seq + 1`.
    pub seq: u64,
    /// Stream epoch: changes whenever the server loses the room's history.
    pub epoch: &'a str,
    /// Present when the join asked for recovery: whether every missed message was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Present (true) for password-protected rooms.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// `{"type":"joined",…}`: answers a `join` or `create`.
pub fn joined(room: &str, members: u32, seq: u64, epoch: &str, recovered: Option<bool>, private: bool) -> Bytes {
    json_frame(&Joined { r#type: "joined", room, members, seq, epoch, recovered, private }, 80 + room.len())
}

/// `{"type":"deleted","room":…}`: the room was deleted by its creator; the connection is
/// no longer a member.
pub fn deleted(room: &str) -> Bytes {
    room_notice("deleted", room)
}

/// `{"type":"left","room":…}`: answers a `leave`.
pub fn left(room: &str) -> Bytes {
    room_notice("left", room)
}

/// `{"type":<kind>,"room":…}`: the notices that carry nothing but the room.
fn room_notice(kind: &'static str, room: &str) -> Bytes {
    #[derive(Serialize)]
    struct Notice<'a> {
        r#type: &'static str,
        room: &'a str,
    }
    json_frame(&Notice { r#type: kind, room }, 32 + room.len())
}

/// A room message as delivered to every member.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RoomMessage<'a> {
    /// Always `"message"`.
    pub r#type: &'a str,
    /// Room name.
    pub room: &'a str,
    /// Position in the room's stream: strictly increasing by 1.
    pub seq: u64,
    /// Sender's user id.
    pub user: &'a str,
    /// Message text.
    pub text: &'a str,
    /// Milliseconds since the Unix epoch, set by the room's owner shard.
    pub ts: u64,
}

/// `{"type":"message",…}`: the serialized-once room message frame.
pub fn message(room: &str, seq: u64, user: &str, text: &str, ts: u64) -> Bytes {
    json_frame(&RoomMessage { r#type: "message", room, seq, user, text, ts }, 80 + room.len() + user.len() + text.len())
}

/// What a room message carries besides its room, sender, position and time. A message
/// has `text`, `data` or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Payload<'a> {
    /// Message text.
    pub text: Option<&'a str>,
    /// A JSON value, already validated, spliced into the frame byte for byte.
    pub data: Option<&'a [u8]>,
    /// Event name (validated by the caller), delivered as is.
    pub event: Option<&'a str>,
    /// A JSON object of strings (validated by the caller), spliced byte for byte.
    pub tags: Option<&'a [u8]>,
}

impl Payload<'_> {
    /// Bytes the payload adds to a frame, roughly (a capacity hint).
    pub fn len(&self) -> usize {
        let field = |n: Option<usize>| n.map_or(0, |n| n + 12);
        field(self.text.map(str::len))
            + field(self.data.map(<[u8]>::len))
            + field(self.event.map(str::len))
            + field(self.tags.map(<[u8]>::len))
    }

    /// Whether it carries nothing at all.
    pub fn is_empty(&self) -> bool {
        self.text.is_none() && self.data.is_none()
    }
}

/// `{"type":"message","room":…,"seq":…,"user":…,"event":…,"text":…,"data":…,"tags":…,"ts":…}`:
/// a room message with any [`Payload`], built once. A volatile message (`seq` `None`) has
/// no `seq` and carries `"volatile":true` instead, so clients tell it apart without
/// guessing; absent payload parts are left out. `data` and `tags` are copied in as they
/// are: the caller has validated them as JSON, and no receiver-visible byte of them is
/// changed. A text-only sequenced message is byte-identical to [`message`].
pub fn room_message(room: &str, seq: Option<u64>, user: &str, payload: &Payload<'_>, ts: u64) -> Bytes {
    let hint = 80 + room.len() + user.len() + payload.len();
    build_frame(OpCode::Data(Data::Text), hint, |buf| {
        // Writing strings and integers into a Vec cannot fail.
        buf.extend_from_slice(b"{\"type\":\"message\",\"room\":");
        let _ = simd_json::to_writer(&mut *buf, room);
        match seq {
            Some(seq) => {
                buf.extend_from_slice(b",\"seq\":");
                let _ = simd_json::to_writer(&mut *buf, &seq);
            }
            None => buf.extend_from_slice(b",\"volatile\":true"),
        }
        buf.extend_from_slice(b",\"user\":");
        let _ = simd_json::to_writer(&mut *buf, user);
        if let Some(event) = payload.event {
            buf.extend_from_slice(b",\"event\":");
            let _ = simd_json::to_writer(&mut *buf, event);
        }
        if let Some(text) = payload.text {
            buf.extend_from_slice(b",\"text\":");
            let _ = simd_json::to_writer(&mut *buf, text);
        }
        if let Some(data) = payload.data {
            buf.extend_from_slice(b",\"data\":");
            buf.extend_from_slice(data);
        }
        if let Some(tags) = payload.tags {
            buf.extend_from_slice(b",\"tags\":");
            buf.extend_from_slice(tags);
        }
        buf.extend_from_slice(b",\"ts\":");
        let _ = simd_json::to_writer(&mut *buf, &ts);
        buf.push(b'}');
    })
}

/// `{"type":"join"|"leave","room":…,"user":…}`: presence event.
pub fn presence_event(joined: bool, room: &str, user: &str) -> Bytes {
    #[derive(Serialize)]
    struct Event<'a> {
        r#type: &'static str,
        room: &'a str,
        user: &'a str,
    }
    let r#type = if joined { "join" } else { "leave" };
    json_frame(&Event { r#type, room, user }, 40 + room.len() + user.len())
}

/// `{"type":"presence","room":…,"count":n,"users":[…],"next":…}`: a page of the member list.
/// `next` is the cursor for the following page (absent on the last page).
pub fn presence<'a>(room: &str, count: u32, users: impl Iterator<Item = &'a str>, next: Option<&str>) -> Bytes {
    #[derive(Serialize)]
    struct Presence<'a> {
        r#type: &'static str,
        room: &'a str,
        count: u32,
        users: Vec<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<&'a str>,
    }
    let users: Vec<&str> = users.collect();
    let hint = 64 + room.len() + users.iter().map(|u| u.len() + 3).sum::<usize>();
    json_frame(&Presence { r#type: "presence", room, count, users, next }, hint)
}

/// `{"type":"ack","ref":…,"room":…,"seq":n}`: a message with an `id` was sequenced.
pub fn ack(reference: &str, room: &str, seq: u64) -> Bytes {
    #[derive(Serialize)]
    struct Ack<'a> {
        r#type: &'static str,
        r#ref: &'a str,
        room: &'a str,
        seq: u64,
    }
    json_frame(&Ack { r#type: "ack", r#ref: reference, room, seq }, 48 + room.len() + reference.len())
}

/// `{"type":"ack","ref":…,"room":…}`: a volatile message with an `id` was handed to
/// the room's members (it has no `seq`).
pub fn ack_volatile(reference: &str, room: &str) -> Bytes {
    #[derive(Serialize)]
    struct Ack<'a> {
        r#type: &'static str,
        r#ref: &'a str,
        room: &'a str,
    }
    json_frame(&Ack { r#type: "ack", r#ref: reference, room }, 40 + room.len() + reference.len())
}

/// `{"type":"left","room":…,"reason":…}`: the server removed the connection from the
/// room (e.g. `POST /api/unsubscribe`), saying why.
pub fn left_because(room: &str, reason: &str) -> Bytes {
    #[derive(Serialize)]
    struct Left<'a> {
        r#type: &'static str,
        room: &'a str,
        reason: &'a str,
    }
    json_frame(&Left { r#type: "left", room, reason }, 48 + room.len() + reason.len())
}

/// `{"type":"error","code":…,"message":…,"ref":…}`.
pub fn error(code: ErrorCode, message: &str, reference: Option<&str>) -> Bytes {
    #[derive(Serialize)]
    struct Error<'a> {
        r#type: &'static str,
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    }
    json_frame(&Error { r#type: "error", code: code.as_str(), message, r#ref: reference }, 64 + message.len())
}

/// `{"type":"history","room":…,"epoch":…,"messages":[…]}`: the stored message payloads
/// spliced in as they are (newest first), so a page costs no re-serialization.
pub fn history_json(room: &str, epoch: &str, messages: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + room.len() + messages.iter().map(|m| m.len() + 1).sum::<usize>());
    out.extend_from_slice(b"{\"type\":\"history\",\"room\":");
    let _ = simd_json::to_writer(&mut out, room);
    out.extend_from_slice(b",\"epoch\":\"");
    out.extend_from_slice(epoch.as_bytes());
    out.extend_from_slice(b"\",\"messages\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{parse_header, Role};

    fn payload(frame: &Bytes) -> serde_json::Value {
        let h = parse_header(frame, Role::Client, usize::MAX).unwrap().unwrap();
        assert_eq!(h.frame_len(), frame.len());
        serde_json::from_slice(&frame[h.header_len..]).unwrap()
    }

    #[test]
    fn frames_carry_the_documented_json() {
        let m = payload(&message("lobby", 119, "alice", "hi \"there\" <b>", 1_763_800_000_123));
        assert_eq!(
            m,
            serde_json::json!({"type":"message","room":"lobby","seq":119,"user":"alice","text":"hi \"there\" <b>","ts":1_763_800_000_123u64})
        );
        let j = payload(&joined("lobby", 12, 118, "00ff", None, false));
        assert_eq!(j, serde_json::json!({"type":"joined","room":"lobby","members":12,"seq":118,"epoch":"00ff"}));
        let e = payload(&error(ErrorCode::NotMember, "join first", Some("7")));
        assert_eq!(e, serde_json::json!({"type":"error","code":"not_member","message":"join first","ref":"7"}));
        let p = payload(&presence("r", 3, ["a", "b"].into_iter(), Some("b")));
        assert_eq!(p, serde_json::json!({"type":"presence","room":"r","count":3,"users":["a","b"],"next":"b"}));
    }

    fn text_of(frame: &Bytes) -> &str {
        let h = parse_header(frame, Role::Client, usize::MAX).unwrap().unwrap();
        std::str::from_utf8(&frame[h.header_len..]).unwrap()
    }

    #[test]
    fn payload_messages_splice_data_verbatim() {
        let text_only = Payload { text: Some("hi \"x\""), ..Payload::default() };
        assert_eq!(room_message("r", Some(7), "u", &text_only, 5), message("r", 7, "u", "hi \"x\"", 5));
        let data = br#"{"n":12345678901234567890123, "s":"caf\u00e9"}"#;
        let p = Payload { text: None, data: Some(data), event: Some("score"), tags: Some(br#"{"k":"v"}"#) };
        let f = room_message("r", None, "u", &p, 9);
        assert_eq!(
            text_of(&f),
            r#"{"type":"message","room":"r","volatile":true,"user":"u","event":"score","data":{"n":12345678901234567890123, "s":"caf\u00e9"},"tags":{"k":"v"},"ts":9}"#
        );
        assert_eq!(payload(&ack_volatile("a", "r")), serde_json::json!({"type":"ack","ref":"a","room":"r"}));
        assert_eq!(
            payload(&left_because("r", "server")),
            serde_json::json!({"type":"left","room":"r","reason":"server"})
        );
    }

    #[test]
    fn long_messages_use_extended_lengths() {
        let text = "x".repeat(70_000);
        let m = payload(&message("r", 1, "u", &text, 0));
        assert_eq!(m["text"].as_str().map(str::len), Some(70_000));
    }
}
