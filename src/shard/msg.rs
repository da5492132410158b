//! Messages that cross between shards. Small on purpose (large payloads are boxed or
//! `Bytes`), since each one is moved through a lock-free queue.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::conns::ConnId;
use crate::cluster::BusIn;
use crate::room::ToShard;

// The requests and answers rooms deal in are core types; the runtime names them here
// too, where they travel inside `ShardMsg`.
pub use crate::room::request::{
    AdminOp, ConnRef, DeleteReq, HistoryReq, JoinAck, JoinKind, JoinRefused, JoinReq, PresenceReq, Publish, Reply,
    ReplyTo, Requester, Since,
};

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
    /// To the owner of `user`'s personal room: shard `from` has its first connection of
    /// the user (`here`), or its last one there closed (see `room::online`).
    UserHere {
        /// The user.
        user: Arc<str>,
        /// The connections' shard.
        from: usize,
        /// First connection (true) or last one gone (false).
        here: bool,
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
        /// A local member that does not get this frame (`skip_self`).
        skip: Option<ConnId>,
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
    /// An operator command (server API): to every shard for user commands, to the
    /// room's owner for `HistoryRemove`. Answered with `Reply::Reached` or
    /// `Reply::HistoryRemoved` when `reply` is given.
    Admin {
        /// The command.
        op: Arc<AdminOp>,
        /// Where the answer goes (none: from another node, nobody waits).
        reply: Option<ReplyTo>,
    },
    /// Stop accepting, close every connection with 1001, exit.
    Shutdown,
}

/// How the inbox loop treats a message against the frames it is corking (see
/// [`ShardMsg::class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Hands a frame to local members: corked into the fan-out batch.
    Delivery,
    /// A room owner's (or IP owner's) work: sequencing, membership counts, queries. It
    /// touches no local connection directly: whatever it produces for this shard comes
    /// back through the inbox, behind every frame already waiting, so the fan-out may
    /// keep corking frames across it.
    OwnerWork,
    /// A join ack: the joiner becomes a local member now, and the batch keeps corking
    /// (its room's group notes the join, so the joiner gets only the frames corked after
    /// it: see `Batch::joined`). Why: in a join storm each join's presence event comes
    /// just before its ack, and delivering at every ack made the events cost one send
    /// per member per join.
    Joined,
    /// Touches local connections (refusals, replies, frames to one connection, bus
    /// input, shutdown): ordered against the frames, so the waiting batch is delivered
    /// first.
    Ordered,
}

impl ShardMsg {
    /// This message's [`Class`]. The match names every variant (no `_` arm) so that a new
    /// variant cannot be classified by being forgotten: the compiler asks for a decision.
    pub fn class(&self) -> Class {
        match self {
            ShardMsg::Deliver { .. } | ShardMsg::DeliverAll { .. } => Class::Delivery,
            ShardMsg::Join(_)
            | ShardMsg::Leave { .. }
            | ShardMsg::UserHere { .. }
            | ShardMsg::Delete(_)
            | ShardMsg::Publish(_)
            | ShardMsg::Broadcast(_)
            | ShardMsg::Presence(_)
            | ShardMsg::History(_)
            | ShardMsg::Query { .. }
            | ShardMsg::Ip { .. } => Class::OwnerWork,
            ShardMsg::JoinAck(_) => Class::Joined,
            ShardMsg::JoinRefused(_)
            | ShardMsg::RoomDeleted { .. }
            | ShardMsg::ToConn { .. }
            | ShardMsg::Reply { .. }
            | ShardMsg::Bus(_)
            | ShardMsg::Admin { .. }
            | ShardMsg::Shutdown => Class::Ordered,
        }
    }
}

impl From<ToShard> for ShardMsg {
    /// A room's output for a shard, as that shard's inbox message (moves only: the frame's
    /// `Bytes` is handed on, not copied).
    fn from(m: ToShard) -> ShardMsg {
        match m {
            ToShard::Deliver { room, frame, sent_at, skip } => ShardMsg::Deliver { room, frame, sent_at, skip },
            ToShard::DeliverAll { frame, sent_at } => ShardMsg::DeliverAll { frame, sent_at },
            ToShard::JoinAck(ack) => ShardMsg::JoinAck(ack),
            ToShard::JoinRefused(r) => ShardMsg::JoinRefused(r),
            ToShard::RoomDeleted { room, epoch, frame, by } => ShardMsg::RoomDeleted { room, epoch, frame, by },
            ToShard::ToConn { conn, frame } => ShardMsg::ToConn { conn, frame },
            ToShard::Reply { req, reply } => ShardMsg::Reply { req, reply },
        }
    }
}

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
    /// The public rooms it owns whose names start with `prefix`, after `after`, the first
    /// `limit` by name.
    Rooms {
        /// Name prefix ("" for all).
        prefix: Arc<str>,
        /// Paging cursor: names after this one.
        after: Option<Arc<str>>,
        /// Page size.
        limit: usize,
    },
}
