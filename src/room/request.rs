//! What rooms are asked and what they answer: the requests an owner receives, the
//! addresses of whoever asked (a connection on some shard, a pending HTTP request, a
//! requester on another node), and the answers.
//!
//! These types belong to the core because both the runtime (which builds requests from
//! client input) and the cluster bridge (which builds them from other nodes' messages)
//! hand them to rooms; neither needs the other to do so.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::PresencePage;
use crate::metrics::Snapshot;

/// Identifies a connection within its shard. Copyable, comparable, never reused while
/// anything might still refer to the previous holder of the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// Slot in the shard's connection table (the runtime's business).
    pub(crate) index: u32,
    /// The slot's use count when the connection took it.
    pub(crate) generation: u32,
}

impl ConnId {
    /// Packs the id into one integer (for the `conn` string in `welcome`).
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The id packed by [`ConnId::as_u64`] (from another node's ack address). An id
    /// that names no live connection simply finds none.
    pub fn from_u64(v: u64) -> ConnId {
        ConnId { index: v as u32, generation: (v >> 32) as u32 }
    }

    /// An arbitrary id for unit tests of code that only passes ids around.
    #[cfg(test)]
    pub fn for_test(n: u32) -> ConnId {
        ConnId { index: n, generation: 0 }
    }
}

/// Who gets the answer to a forwarded publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum ReplyRef {
    /// A client connection that asked for an `ack` (it sent an `id`).
    Conn {
        /// Its shard on the origin node.
        shard: u16,
        /// Its connection id there.
        conn: u64,
        /// The client's `id`, echoed in the ack.
        reference: String,
    },
    /// A pending `POST /api/publish` on the origin node.
    Api {
        /// The shard serving the request.
        shard: u16,
        /// The request id there.
        req: u64,
    },
}

/// A connection, as seen from another shard.
#[derive(Debug, Clone)]
pub struct ConnRef {
    /// The connection's shard.
    pub shard: usize,
    /// The connection.
    pub conn: ConnId,
    /// The request's client reference (`id`), for `ack`/`error`.
    pub reference: Option<Box<str>>,
}

/// Where an answer to an HTTP API request goes: a pending request on some shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The shard serving the HTTP request.
    pub shard: usize,
    /// Its request id there.
    pub req: u64,
}

/// Who asked for something the owner answers.
#[derive(Debug, Clone)]
pub enum Requester {
    /// A WebSocket client: answered with frames (`ack`, `error`, `presence`).
    Conn(ConnRef),
    /// The HTTP API: answered with a [`ShardMsg::Reply`].
    Api(ReplyTo),
    /// A client or API request on another node, forwarded to this node because it is
    /// the room's sequencer: answered over the bus.
    Remote(Box<Remote>),
}

/// A requester on another node.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The origin node.
    pub node: u64,
    /// Who there hears the outcome (none: nobody asked).
    pub reply: Option<ReplyRef>,
    /// Forwarded a second time, by a node that handed the room's stream on: sequenced
    /// where it lands, never forwarded again.
    pub relayed: bool,
    /// Where to confirm a forwarded publish once this node takes it (none: the sender
    /// asked for no confirmation, or it was confirmed already).
    pub receipt: Option<Receipt>,
}

/// The confirmation a forwarded publish asks for: the node that forwarded it, the shard
/// there that holds it until confirmed, and the number that shard gave it
/// (`shard::forwards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The forwarding node.
    pub node: u64,
    /// Its shard that holds the publish.
    pub shard: u16,
    /// The forward's number on that shard.
    pub id: u64,
}

/// What a join asks for.
#[derive(Debug, Clone)]
pub enum JoinKind {
    /// Join (creating a public room if none exists).
    Join {
        /// Password for a private room.
        password: Option<Box<str>>,
        /// Set by the owner after checking the password of this room instance (epoch).
        verified: Option<u64>,
        /// Recover what was missed after this position.
        since: Option<Since>,
    },
    /// Create the room (refused if it exists) and join it; private with a password.
    Create {
        /// argon2 hash of the password (computed by the creator's shard, off its loop).
        password_hash: Option<Arc<str>>,
    },
}

/// A recovery position from the client: the stream epoch it saw (none for a bare seq,
/// which matches any epoch) and the last seq it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// Epoch as the client sent it (16 hex digits when it came from `joined`).
    pub epoch: Option<Box<str>>,
    /// Last seq received.
    pub seq: u64,
}

/// A request for a page of a room's history.
pub struct HistoryReq {
    /// Room name.
    pub room: Arc<str>,
    /// Only messages with `seq < before`.
    pub before: Option<u64>,
    /// Page size (1..=100).
    pub limit: u32,
    /// Who asked.
    pub from: Requester,
}

/// A join request.
pub struct JoinReq {
    /// Room name.
    pub room: Arc<str>,
    /// Joining user.
    pub user: Arc<str>,
    /// Joining connection.
    pub origin: ConnRef,
    /// Matches the ack to this request (a connection may leave and re-join before the
    /// first ack arrives).
    pub token: u32,
    /// Join or create.
    pub kind: JoinKind,
}

/// A delete request.
pub struct DeleteReq {
    /// Room name.
    pub room: Arc<str>,
    /// Who asks (must be the room's creator).
    pub user: Arc<str>,
    /// Asking connection.
    pub origin: ConnRef,
}

/// A message to publish. Cloned only when a shard holds a forwarded publish until the
/// receiving node confirms it (`shard::forwards`).
#[derive(Clone)]
pub struct Publish {
    /// Room name (ignored for broadcasts).
    pub room: Arc<str>,
    /// Sender shown to receivers.
    pub user: Arc<str>,
    /// Message text (a message has `text`, `extra.data`, or both).
    pub text: Option<Box<str>>,
    /// Everything beyond the text: `data`, `event`, `tags`, volatility, skip_self,
    /// idempotency.
    pub extra: Extra,
    /// Who asked (for the ack or the API reply).
    pub from: Requester,
}

impl Publish {
    /// A plain text message.
    pub fn text(room: Arc<str>, user: Arc<str>, text: &str, from: Requester) -> Publish {
        Publish { room, user, text: Some(Box::from(text)), extra: Extra::default(), from }
    }

    /// The frame's payload parts, borrowed.
    pub fn payload(&self) -> crate::protocol::server::Payload<'_> {
        crate::protocol::server::Payload {
            text: self.text.as_deref(),
            data: self.extra.data.as_deref(),
            event: self.extra.event.as_deref(),
            tags: self.extra.tags.as_deref(),
        }
    }
}

/// What a message carries beyond its text. Shared (`Arc`) parts are cloned once per
/// addressed room by an API publish to many users, never copied.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// The `data` JSON value as received (validated), spliced into the frame verbatim.
    pub data: Option<Arc<[u8]>>,
    /// Event name (validated).
    pub event: Option<Arc<str>>,
    /// The API's `tags` object as received (validated: strings only), spliced verbatim.
    pub tags: Option<Arc<[u8]>>,
    /// Delivered to current members only: not sequenced, not stored, not replayed.
    pub volatile: bool,
    /// The sending connection, which does not receive the message (`skip_self`).
    pub skip: Option<Sender>,
    /// The API caller's `idempotency_key`: a retry within the window is answered with
    /// the first outcome and neither sequenced nor delivered again.
    pub idempotency_key: Option<Arc<str>>,
}

/// A connection somewhere in the cluster (the sender a `skip_self` message skips).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// Its node (0: this node, on a single node or before the message left it).
    pub node: u64,
    /// Its shard there.
    pub shard: u16,
    /// Its connection id there ([`ConnId::as_u64`]).
    pub conn: u64,
}

/// A presence page request.
#[derive(Debug)]
pub struct PresenceReq {
    /// Room name.
    pub room: Arc<str>,
    /// Names after this cursor.
    pub after: Option<Box<str>>,
    /// Page size.
    pub limit: u32,
    /// The asking node knows the room as private (a query forwarded to the room's
    /// presence holder, which may hold the room without its password): the answer is
    /// marked private whatever the holder knows.
    pub private: bool,
    /// Who asked.
    pub from: Requester,
}

/// The owner's answer to a join.
pub struct JoinAck {
    /// Room name.
    pub room: Arc<str>,
    /// Joining connection.
    pub conn: ConnId,
    /// The token of the join this answers.
    pub token: u32,
    /// Low 32 bits of the room instance's epoch.
    pub epoch: u32,
    /// The joining user (to undo the join if the connection no longer wants it).
    pub user: Arc<str>,
    /// Missed messages to deliver before `frame` (recovery), oldest first.
    pub replay: Vec<Bytes>,
    /// The `joined` frame.
    pub frame: Bytes,
}

/// The owner's refusal of a join.
pub struct JoinRefused {
    /// Room name.
    pub room: Arc<str>,
    /// Joining connection.
    pub conn: ConnId,
    /// The token of the join this answers.
    pub token: u32,
    /// The `error` frame to send.
    pub frame: Bytes,
}
/// An answer to an HTTP API request.
pub enum Reply {
    /// A shard's snapshot.
    Stats(Box<Snapshot>),
    /// A publish was sequenced (`seq` none: the room did not exist), and handed to these
    /// shards.
    Published {
        /// The message's sequence number.
        seq: Option<u64>,
        /// Shards it was handed to.
        shards: Vec<u16>,
    },
    /// A presence page (none: no such room).
    Presence(Option<PresencePage>),
    /// An IP owner's yes or no.
    Admit(bool),
    /// A history page as the JSON body of a `history` message (none: no such room), and
    /// whether the room is private (the HTTP API then needs its key).
    History(Option<(Vec<u8>, bool)>),
    /// An operator command ran on one shard: connections it applied to, and connections
    /// it did not apply to (a subscribe over the room cap, a room the token forbids).
    Reached {
        /// Connections the command applied to.
        done: u32,
        /// Connections of the user it was refused for.
        refused: u32,
    },
    /// A room's history was removed: its new epoch (none: no such room here).
    HistoryRemoved(Option<String>),
    /// One shard's page of public rooms (sorted by name).
    Rooms(Vec<crate::metrics::RoomSummary>),
}

/// An operator's command from the server API that every shard (and, in a cluster, every
/// node) carries out for the connections it holds, or that a room's owner carries out.
/// Validated by the HTTP layer before it is sent anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminOp {
    /// Close every connection of `user` (or the one connection `conn`) with `code` and
    /// `reason`; with `ban_secs` > 0, refuse the user's upgrades for that long.
    Disconnect {
        /// The user id (guests: their name).
        user: Option<String>,
        /// One connection, as `welcome.conn` names it.
        conn: Option<String>,
        /// Close code, 4000–4999.
        code: u16,
        /// Close reason (at most 123 bytes).
        reason: String,
        /// Ban length in seconds (0: no ban).
        ban_secs: u64,
    },
    /// Join every connection of `user` to `room` (each gets `joined`).
    Subscribe {
        /// The user id.
        user: String,
        /// A public room.
        room: String,
    },
    /// Remove every connection of `user` from `room` (each gets `left` with a reason).
    Unsubscribe {
        /// The user id.
        user: String,
        /// The room.
        room: String,
    },
    /// Clear `room`'s history: the room's owner starts a new stream (a new epoch).
    HistoryRemove {
        /// The room.
        room: String,
    },
}
