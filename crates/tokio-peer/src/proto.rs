//! The frames, with serde (pure, no I/O): what clients send, and corecast's exact JSON
//! shapes for what the peer sends (field order is declaration order; `type` comes first).

use serde::{Deserialize, Serialize};

/// A client request, as far as the peer cares.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// `{"type":"join","room":…}` (other fields, such as `since`, are ignored).
    Join {
        /// Room name.
        room: String,
    },
    /// `{"type":"leave","room":…}`.
    Leave {
        /// Room name.
        room: String,
    },
    /// `{"type":"message","room":…,"text":…}`.
    Message {
        /// Room name.
        room: String,
        /// The text.
        text: String,
    },
    /// Any other `type` (ignored).
    #[serde(other)]
    Other,
}

/// A frame the peer sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// After the upgrade.
    Welcome {
        /// The `?name=` of the upgrade, or `guest`.
        user: &'a str,
        /// Connection id.
        conn: &'a str,
        /// Always 0 (one runtime).
        shard: u32,
    },
    /// The answer to `join`: the room's latest `seq` at the join.
    Joined {
        /// Room name.
        room: &'a str,
        /// Members after the join.
        members: u32,
        /// The room's latest `seq`; the member gets every message after it.
        seq: u64,
        /// The room's stream id.
        epoch: &'a str,
    },
    /// One room message, built once and shared by every member.
    Message {
        /// Room name.
        room: &'a str,
        /// Gap-free, per room.
        seq: u64,
        /// Sender's name.
        user: &'a str,
        /// The text.
        text: &'a str,
        /// Server time, ms since the epoch.
        ts: u64,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parses a client text frame; `None` when it is not JSON of a known shape.
pub fn parse(text: &str) -> Option<ClientFrame> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_corecasts_shapes() {
        let w = ServerFrame::Welcome { user: "u", conn: "c1", shard: 0 }.to_json();
        assert_eq!(w, r#"{"type":"welcome","user":"u","conn":"c1","shard":0}"#);
        let j = ServerFrame::Joined { room: "r", members: 2, seq: 7, epoch: "e" }.to_json();
        assert_eq!(j, r#"{"type":"joined","room":"r","members":2,"seq":7,"epoch":"e"}"#);
        let m = ServerFrame::Message { room: "r", seq: 8, user: "u", text: "a\"b", ts: 5 }.to_json();
        assert_eq!(m, r#"{"type":"message","room":"r","seq":8,"user":"u","text":"a\"b","ts":5}"#);
    }

    #[test]
    fn client_frames_are_parsed_and_junk_is_not() {
        assert_eq!(parse(r#"{"type":"join","room":"r","since":3}"#), Some(ClientFrame::Join { room: "r".into() }));
        assert_eq!(
            parse(r#"{"type":"message","room":"r","text":"hi"}"#),
            Some(ClientFrame::Message { room: "r".into(), text: "hi".into() })
        );
        assert_eq!(parse(r#"{"type":"typing","room":"r"}"#), Some(ClientFrame::Other));
        assert_eq!(parse(r#"{"type":"message","room":"r"}"#), None);
        assert_eq!(parse("not json"), None);
    }
}
