//! Messages that cross between shards. Small on purpose (large payloads are boxed or
//! `Bytes`), since each one is moved through a lock-free queue.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::conns::ConnId;
use crate::cluster::{wire::ReplyRef, BusIn, BusOut};
use crate::metrics::Snapshot;
use crate::room::PresencePage;

/// A message for one shard's inbox.
pub enum ShardMsg {
    /// To a room's owner: a connection joins the room.
    Join(Box<JoinReq>),
    /// To a room's owner: a connection of `user` on shard `from` left instance `epoch`
    /// of the room (leaves for another instance are stale and ignored).
    Leave {
        /// Room name.
        room: Arc<str>,
        /// The leaving connection's user.
        user: Arc<str>,
        /// The connection's shard.
        from: usize,
        /// Low 32 bits of the room instance's epoch.
        epoch: u32,
    },
    /// To a room's owner: delete a room (its creator only).
    Delete(Box<DeleteReq>),
    /// To a room's owner: publish a message (from a member or the HTTP API).
    Publish(Box<Publish>),
    /// To the broadcast owner: publish a message to every connection.
    Broadcast(Box<Publish>),
    /// To a room's owner: who is present?
    Presence(Box<PresenceReq>),
    /// To a room's owner: a page of history.
    History(Box<HistoryReq>),
    /// From a room's owner to a member shard: the join is sequenced.
    JoinAck(Box<JoinAck>),
    /// From a room's owner to a member shard: the join was refused (nothing counted).
    JoinRefused(Box<JoinRefused>),
    /// From a room's owner to member shards: the room instance is gone; drop its
    /// memberships and tell the members with `frame`.
    RoomDeleted {
        /// Room name.
        room: Arc<str>,
        /// Low 32 bits of the deleted instance's epoch.
        epoch: u32,
        /// The `deleted` frame.
        frame: Bytes,
        /// Who deleted it (already told directly).
        by: ConnRef,
    },
    /// From a room's owner to a member shard: hand `frame` to every local member.
    Deliver {
        /// Room name.
        room: Arc<str>,
        /// The serialized-once frame, shared by all receivers.
        frame: Bytes,
        /// When the owner handed it off (for the fan-out latency histogram).
        sent_at: Instant,
    },
    /// From the broadcast owner to every shard: hand `frame` to every open connection.
    DeliverAll {
        /// The serialized-once frame.
        frame: Bytes,
        /// When the owner handed it off.
        sent_at: Instant,
    },
    /// To a connection's shard: send `frame` to that one connection.
    ToConn {
        /// Receiving connection.
        conn: ConnId,
        /// Complete frame.
        frame: Bytes,
    },
    /// To any shard: report about yourself.
    Query {
        /// Where the answer goes.
        reply: ReplyTo,
        /// What to report.
        query: Query,
    },
    /// The answer to a `Query`, `Publish` or `Presence` from the HTTP API.
    Reply {
        /// The request it answers (see `ReplyTo::req`).
        req: u64,
        /// The answer.
        reply: Reply,
    },
    /// To an IP address's owner shard: account for that address.
    Ip {
        /// The address.
        ip: IpAddr,
        /// What to do.
        op: IpOp,
    },
    /// From the cluster bridge: something another node said (see [`BusIn`]).
    Bus(Box<BusIn>),
    /// For the cluster bridge: only ever passed to a room owner's sink with destination
    /// [`BUS`], which hands it to the bridge's queue instead of a shard's inbox.
    ToBus(Box<BusOut>),
    /// Stop accepting, close every connection with 1001, exit.
    Shutdown,
}

impl ShardMsg {
    /// Whether this hands a frame to local members (corked by the inbox loop).
    pub fn is_delivery(&self) -> bool {
        matches!(self, ShardMsg::Deliver { .. } | ShardMsg::DeliverAll { .. })
    }

    /// Whether this is a room owner's work (sequencing, membership counts, queries),
    /// which touches no local connection directly: whatever it produces for this shard
    /// comes back through the inbox, behind every frame already waiting. The fan-out may
    /// therefore keep corking frames across it. Everything else (acks, replies, frames
    /// to one connection, bus input, shutdown) is ordered against the frames, so the
    /// waiting batch is delivered first.
    pub fn is_owner_work(&self) -> bool {
        matches!(
            self,
            ShardMsg::Join(_)
                | ShardMsg::Leave { .. }
                | ShardMsg::Delete(_)
                | ShardMsg::Publish(_)
                | ShardMsg::Broadcast(_)
                | ShardMsg::Presence(_)
                | ShardMsg::History(_)
                | ShardMsg::Query { .. }
                | ShardMsg::Ip { .. }
        )
    }
}

/// The sink destination that means "the cluster bridge" rather than a shard (see
/// [`ShardMsg::ToBus`]). Keeps the owner's room code pure: it only ever emits
/// `(destination, message)` pairs.
pub const BUS: usize = usize::MAX;

/// Operations on an IP owner's table (`limits::IpTable`).
#[derive(Debug, Clone, Copy)]
pub enum IpOp {
    /// Admit one more WebSocket connection (answered with `Reply::Admit`).
    Acquire {
        /// Per-IP limit.
        limit: u32,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// A connection closed.
    Release,
    /// Record a room-password attempt (answered with `Reply::Admit`).
    PasswordAttempt {
        /// Attempts allowed per minute.
        limit: u32,
        /// Where the answer goes.
        reply: ReplyTo,
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
    /// Implicit join of a server-managed room: no `joined` frame, no presence.
    pub silent: bool,
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

/// A message to publish.
pub struct Publish {
    /// Room name (ignored for broadcasts).
    pub room: Arc<str>,
    /// Sender shown to receivers.
    pub user: Arc<str>,
    /// Message text.
    pub text: Box<str>,
    /// Who asked (for the ack or the API reply).
    pub from: Requester,
}

/// A presence page request.
pub struct PresenceReq {
    /// Room name.
    pub room: Arc<str>,
    /// Names after this cursor.
    pub after: Option<Box<str>>,
    /// Page size.
    pub limit: u32,
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
    /// The `joined` frame (none for silent joins).
    pub frame: Option<Bytes>,
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

/// What a shard is asked to report.
#[derive(Debug, Clone)]
pub enum Query {
    /// Counters, gauges, the fan-out histogram, and the `limit` largest public rooms it
    /// owns (or only `room`, when given).
    Stats {
        /// Report only this room.
        room: Option<Arc<str>>,
        /// Most rooms to list.
        limit: usize,
    },
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
}
