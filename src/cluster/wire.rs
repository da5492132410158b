//! The bus message format: what nodes say to each other over NATS.
//!
//! A bus message is `[version: u8][header length: u32 BE][header: JSON][body: bytes]`.
//! The header is a small serde enum ([`Header`]); the body carries a finished
//! server→client WebSocket frame where there is one (a room message, an ack), so a
//! receiving node hands the very bytes the sequencer built to its members: frames are
//! built once in the whole cluster. Version 1 is the only one; a receiver drops (and
//! counts) anything else, so a rolling upgrade can introduce version 2 beside it.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The version this build writes and reads.
pub const VERSION: u8 = 1;

/// The most rooms one [`Header::Counts`] carries: a report of more is split, so a bus
/// message stays far below NATS's default 1 MiB payload limit (room names are at most
/// 128 bytes: ~140 KB at worst, ~25 KB typically).
pub const COUNTS_PER_MESSAGE: usize = 1024;

/// Splits a holder's count report into bus headers of at most [`COUNTS_PER_MESSAGE`]
/// rooms each.
pub fn counts_headers(node: u64, counts: &[(Arc<str>, u32)]) -> Vec<Header> {
    counts
        .chunks(COUNTS_PER_MESSAGE)
        .map(|c| Header::Counts { node, counts: c.iter().map(|(r, n)| (r.to_string(), *n)).collect() })
        .collect()
}

pub use crate::room::request::{ReplyRef, Sender};
use crate::room::PresencePage;

/// The header of a bus message. Every variant names the node that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Header {
    /// "I am alive" (every heartbeat interval, on the heartbeat subject).
    Hb {
        /// Sender.
        node: u64,
        /// Its `--node-name`, for logs.
        name: String,
        /// Its `--cluster-room-buckets` (absent: 0), so a node configured differently
        /// is reported instead of silently missing room traffic.
        #[serde(default, skip_serializing_if = "is_zero")]
        room_buckets: u32,
    },
    /// "I am leaving" (graceful shutdown): others drop the node at once.
    Bye {
        /// Sender.
        node: u64,
    },
    /// A sequenced room message; the body is its finished frame (room subject).
    Frame {
        /// The sequencer.
        node: u64,
        /// Room name.
        room: String,
        /// The room's stream epoch.
        epoch: u64,
        /// Sequence number within the epoch.
        seq: u64,
        /// The sender of a `skip_self` message: its node leaves it out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skip: Option<Sender>,
    },
    /// A volatile room message (no seq, not stored); the body is its finished frame (room
    /// subject).
    Volatile {
        /// The sequencer.
        node: u64,
        /// Room name.
        room: String,
        /// The sender of a `skip_self` message: its node leaves it out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skip: Option<Sender>,
    },
    /// A broadcast (`@all`) message; the body is its finished frame (broadcast subject).
    Bcast {
        /// The sequencer.
        node: u64,
        /// Broadcast sequence number.
        seq: u64,
    },
    /// A publish forwarded to the room's sequencer (node subject).
    Fwd {
        /// The origin node.
        node: u64,
        /// Room name (`@all` for a broadcast).
        room: String,
        /// Sender shown to receivers.
        user: String,
        /// Message text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// A broadcast to everyone rather than a room message.
        broadcast: bool,
        /// Who wants to hear the outcome.
        reply: Option<ReplyRef>,
        /// Event name. The message's `data`, when it has one, is the body, verbatim.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// The API's `tags` object as received (JSON text).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tags: Option<String>,
        /// Not sequenced, not stored.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        volatile: bool,
        /// The sending connection (`skip_self`), with its node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skip: Option<Sender>,
        /// The API caller's idempotency key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idem: Option<String>,
        /// The node the publish came from, when the sender forwards it a second time
        /// (it handed the room's stream on): answers go there, and the receiver
        /// sequences it without forwarding it again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<u64>,
        /// The forwarding shard and the number it gave this forward: the receiver
        /// confirms it with [`Header::FwdOk`] when it takes the publish. Absent from an
        /// older node's forwards (nothing to confirm).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fwd: Option<(u16, u64)>,
    },
    /// "I took your forward": the sender's shard stops holding it (node subject of the
    /// node that forwarded it).
    FwdOk {
        /// Sender (the node that took the publish).
        node: u64,
        /// The forwarding shard.
        shard: u16,
        /// The forward's number there.
        id: u64,
    },
    /// The sender stopped sequencing a room; its stream `epoch` ends at `seq`, and the
    /// receiver, the room's new sequencer, may continue it (node subject).
    Handoff {
        /// The old sequencer.
        node: u64,
        /// Room name.
        room: String,
        /// The stream.
        epoch: u64,
        /// Its last seq.
        seq: u64,
    },
    /// "Send me the room's frames of stream `epoch` after `after`" (node subject of the
    /// stream's sequencer).
    CatchUp {
        /// The asking node (answers go to its node subject).
        node: u64,
        /// Room name.
        room: String,
        /// The stream.
        epoch: u64,
        /// The last seq the asker holds.
        after: u64,
    },
    /// Part of the answer to a catch-up: frames `first..` of the room's stream, their
    /// lengths here and the frames one after another in the body (node subject).
    Frames {
        /// The answering node.
        node: u64,
        /// Room name.
        room: String,
        /// The stream.
        epoch: u64,
        /// Seq of the first frame.
        first: u64,
        /// Each frame's length in the body.
        lens: Vec<u32>,
        /// The last part (an empty last part: the frames are not held there).
        done: bool,
    },
    /// A user's first connection on the sender arrived in a room, or its last one left
    /// (node subject of each of the room's presence keepers).
    Presence {
        /// Sender.
        node: u64,
        /// Room name.
        room: String,
        /// The user.
        user: String,
        /// Arrived (true) or left (false).
        present: bool,
    },
    /// A join/leave event the room's presence holder decided; the body is its finished
    /// frame (room subject).
    Event {
        /// Sender (the holder).
        node: u64,
        /// Room name.
        room: String,
    },
    /// The room's cluster-wide user count, from its holder (the node subject of a node
    /// that just subscribed).
    Count {
        /// Sender (the holder).
        node: u64,
        /// Room name.
        room: String,
        /// Distinct users.
        count: u32,
        /// The room's stream on the holder (its sequencer): epoch, with [`Header::Count`]'s
        /// `seq`. A node whose first members wait for the stream (see `OwnedRooms::remote_stream`)
        /// starts its copy there; absent while the holder's stream is unsettled (and from
        /// nodes that predate it, whose answers still decode).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        /// The stream's last seq on the holder (with `epoch`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Cluster-wide user counts of rooms the sender holds that changed since its last
    /// report (broadcast subject; at most [`COUNTS_PER_MESSAGE`] rooms each): receivers
    /// keep those of rooms they subscribed to.
    Counts {
        /// Sender (the holder).
        node: u64,
        /// `(room, distinct users)` pairs.
        counts: Vec<(String, u32)>,
    },
    /// A presence query forwarded to the room's holder (node subject).
    PresenceQ {
        /// The origin node.
        node: u64,
        /// Room name.
        room: String,
        /// Names after this cursor.
        after: Option<String>,
        /// Page size.
        limit: u32,
        /// The origin knows the room as private.
        private: bool,
        /// Who gets the answer.
        reply: ReplyRef,
    },
    /// The holder's answer to a forwarded API presence query (node subject).
    Page {
        /// Sender (the holder).
        node: u64,
        /// The shard serving the request.
        shard: u16,
        /// The request id.
        req: u64,
        /// The page (none: no such room).
        page: Option<Page>,
    },
    /// All users the sender has in a room, replacing what the receiver knew of them
    /// (node subject of each of the room's presence keepers).
    Users {
        /// Sender.
        node: u64,
        /// Room name.
        room: String,
        /// The users, in any order.
        users: Vec<String>,
    },
    /// "I just subscribed to this room": the room's holder answers with its count and its
    /// stream position (the holder's node subject).
    SyncReq {
        /// Sender (answers go to its node subject).
        node: u64,
        /// Room name.
        room: String,
    },
    /// A frame for one connection of the receiving node; the body is the frame (node
    /// subject).
    ToConn {
        /// Sender.
        node: u64,
        /// The connection's shard.
        shard: u16,
        /// The connection id.
        conn: u64,
    },
    /// An operator command for every node (broadcast subject).
    Admin {
        /// Sender.
        node: u64,
        /// The command.
        op: crate::room::request::AdminOp,
    },
    /// The outcome of a forwarded API publish (node subject).
    Published {
        /// Sender.
        node: u64,
        /// The shard serving the request.
        shard: u16,
        /// The request id.
        req: u64,
        /// The sequence number given (none: not sequenced).
        seq: Option<u64>,
    },
}

/// Serde helper: leave a zero count out of the header.
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Header {
    /// The node that sent the message.
    pub fn node(&self) -> u64 {
        match self {
            Header::Hb { node, .. }
            | Header::Bye { node }
            | Header::Frame { node, .. }
            | Header::Volatile { node, .. }
            | Header::Bcast { node, .. }
            | Header::Fwd { node, .. }
            | Header::FwdOk { node, .. }
            | Header::Presence { node, .. }
            | Header::Users { node, .. }
            | Header::Event { node, .. }
            | Header::Count { node, .. }
            | Header::Counts { node, .. }
            | Header::PresenceQ { node, .. }
            | Header::Page { node, .. }
            | Header::SyncReq { node, .. }
            | Header::ToConn { node, .. }
            | Header::Published { node, .. }
            | Header::Handoff { node, .. }
            | Header::CatchUp { node, .. }
            | Header::Frames { node, .. }
            | Header::Admin { node, .. } => *node,
        }
    }
}

/// One page of a room's presence, as the bus carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Room name.
    pub room: String,
    /// Distinct users in total.
    pub count: u32,
    /// This page's users, sorted.
    pub users: Vec<String>,
    /// Cursor for the next page.
    pub next: Option<String>,
    /// The room is private.
    pub private: bool,
}

impl From<&PresencePage> for Page {
    fn from(p: &PresencePage) -> Page {
        Page {
            room: p.room.to_string(),
            count: p.count,
            users: p.users.iter().map(|u| u.to_string()).collect(),
            next: p.next.as_ref().map(|n| n.to_string()),
            private: p.private,
        }
    }
}

impl From<Page> for PresencePage {
    fn from(p: Page) -> PresencePage {
        PresencePage {
            room: p.room.into(),
            count: p.count,
            users: p.users.into_iter().map(Arc::from).collect(),
            next: p.next.map(Arc::from),
            private: p.private,
        }
    }
}

/// Why a bus message could not be read. The receiver drops it and counts it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the envelope says.
    #[error("truncated bus message")]
    Truncated,
    /// Written by a version this build does not know.
    #[error("unknown bus message version {0}")]
    Version(u8),
    /// The header is not valid JSON of a known kind.
    #[error("invalid bus message header: {0}")]
    Header(String),
}

/// Encodes `header` and `body` into one bus message.
pub fn encode(header: &Header, body: &[u8]) -> Bytes {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = BytesMut::with_capacity(5 + json.len() + body.len());
    out.put_u8(VERSION);
    out.put_u32(json.len() as u32);
    out.extend_from_slice(&json);
    out.extend_from_slice(body);
    out.freeze()
}

/// Decodes a bus message into its header and body (the body shares `msg`'s memory).
pub fn decode(msg: &Bytes) -> Result<(Header, Bytes), WireError> {
    let (&version, rest) = msg.split_first().ok_or(WireError::Truncated)?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let len_bytes: [u8; 4] = rest.get(..4).and_then(|b| b.try_into().ok()).ok_or(WireError::Truncated)?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let end = 5usize.checked_add(len).filter(|&e| e <= msg.len()).ok_or(WireError::Truncated)?;
    let header = serde_json::from_slice(&msg[5..end]).map_err(|e| WireError::Header(e.to_string()))?;
    Ok((header, msg.slice(end..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip_with_their_body() {
        let h = Header::Fwd {
            node: u64::MAX,
            room: "a.b *>".into(),
            user: "bob".into(),
            text: Some("hi \"there\"".into()),
            broadcast: false,
            reply: Some(ReplyRef::Conn { shard: 1, conn: 1 << 40, reference: "r1".into() }),
            event: None,
            tags: None,
            volatile: false,
            skip: None,
            idem: None,
            origin: None,
            fwd: Some((3, u64::MAX)),
        };
        let m = encode(&h, b"body");
        let (back, body) = decode(&m).unwrap();
        assert_eq!(back, h);
        assert_eq!(&body[..], b"body");
        assert_eq!(back.node(), u64::MAX);
    }

    #[test]
    fn count_reports_split_into_bounded_messages_and_round_trip() {
        let counts: Vec<(Arc<str>, u32)> = (0..2500u32).map(|i| (Arc::from(format!("room{i}")), i)).collect();
        let headers = counts_headers(7, &counts);
        assert_eq!(headers.len(), 3);
        let mut back = Vec::new();
        for h in &headers {
            let m = encode(h, b"");
            assert!(m.len() < 64 * 1024, "{} bytes", m.len());
            let (Header::Counts { node: 7, counts }, _) = decode(&m).unwrap() else { panic!("a counts header") };
            assert!(counts.len() <= COUNTS_PER_MESSAGE);
            back.extend(counts);
        }
        let want: Vec<(String, u32)> = counts.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        assert_eq!(back, want, "every room once, in order");
        assert!(counts_headers(7, &[]).is_empty());
    }

    #[test]
    fn handoff_marks_and_catch_ups_round_trip() {
        for h in [
            Header::Handoff { node: 3, room: "r".into(), epoch: u64::MAX, seq: 41 },
            Header::CatchUp { node: 4, room: "r".into(), epoch: 7, after: 40 },
            Header::Frames { node: 3, room: "r".into(), epoch: 7, first: 41, lens: vec![2, 1], done: true },
        ] {
            let m = encode(&h, b"abc");
            let (back, body) = decode(&m).unwrap();
            assert_eq!((back, &body[..]), (h, &b"abc"[..]));
        }
        // A forwarded publish without `origin` (an older node's) still decodes.
        let old = br#"{"k":"fwd","node":1,"room":"r","user":"u","broadcast":false,"reply":null}"#;
        let m = [&[1u8][..], &(old.len() as u32).to_be_bytes(), old].concat();
        assert!(matches!(decode(&Bytes::from(m)), Ok((Header::Fwd { origin: None, fwd: None, .. }, _))));
    }

    #[test]
    fn forward_confirmations_round_trip_and_nodes_ignore_fields_they_do_not_know() {
        let h = Header::FwdOk { node: 9, shard: 2, id: u64::MAX };
        let (back, body) = decode(&encode(&h, b"")).unwrap();
        assert_eq!((back, body.len()), (h, 0));
        // A node that predates a field (here a made-up one) still takes the message, the
        // way a node that predates `fwd` takes a forward that asks for a confirmation.
        let newer = br#"{"k":"fwd","node":1,"room":"r","user":"u","broadcast":false,"reply":null,"zz":[1,2]}"#;
        let m = [&[1u8][..], &(newer.len() as u32).to_be_bytes(), newer].concat();
        assert!(matches!(decode(&Bytes::from(m)), Ok((Header::Fwd { fwd: None, .. }, _))));
    }

    #[test]
    fn count_answers_carry_the_stream_position_and_older_ones_still_decode() {
        let h = Header::Count { node: 2, room: "r".into(), count: 3, epoch: Some(u64::MAX), seq: Some(41) };
        let (back, _) = decode(&encode(&h, b"")).unwrap();
        assert_eq!(back, h);
        // An answer from a node that predates the stream position: no position.
        let old = br#"{"k":"count","node":1,"room":"r","count":3}"#;
        let m = [&[1u8][..], &(old.len() as u32).to_be_bytes(), old].concat();
        assert!(matches!(decode(&Bytes::from(m)), Ok((Header::Count { epoch: None, seq: None, .. }, _))));
    }

    #[test]
    fn damaged_or_foreign_messages_are_refused() {
        let m = encode(&Header::Bye { node: 1 }, b"");
        assert_eq!(decode(&Bytes::new()), Err(WireError::Truncated));
        assert_eq!(decode(&m.slice(..m.len() - 1)), Err(WireError::Truncated));
        let mut v = m.to_vec();
        v[0] = 2;
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::Version(2)));
        let bad = [&[1u8, 0, 0, 0, 2][..], b"{}"].concat();
        assert!(matches!(decode(&Bytes::from(bad)), Err(WireError::Header(_))));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&Bytes::from(bytes));
        }
    }
}
