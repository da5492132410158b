//! What rooms emit, and the reply routing: every answer an owner gives goes out as a
//! [`RoomOut`], addressed to a shard (by index) or to the cluster. The runtime turns
//! these into inbox messages and bridge sends; rooms know neither.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::request::{
    ConnId, ConnRef, JoinAck, JoinRefused, JoinReq, PresenceReq, Remote, Reply, ReplyRef, ReplyTo, Requester, Sender,
};
use super::PresencePage;
use crate::protocol::{server, ErrorCode};

/// One output of a room owner.
pub enum RoomOut {
    /// To shard `.0` (a member shard, or the shard of the connection or HTTP request
    /// being answered).
    Shard(usize, ToShard),
    /// To the cluster bus (cluster mode only: rooms emit none without a node id).
    Cluster(ClusterOut),
    /// To the shard's durable log (only when the rooms were made
    /// [`with_journal`](super::OwnedRooms::with_journal)): what a restart needs to continue
    /// the room's stream.
    Log(crate::journal::Record),
    /// A webhook event (only with [`super::OwnedRooms::with_hooks`]; in a cluster only
    /// from the node that decides it, so each happens once cluster-wide).
    Hook(Hook),
}

/// What happened, for the application backend's webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// A public room got its first user (cluster-wide).
    RoomOccupied,
    /// A public room lost its last user (cluster-wide).
    RoomVacated,
    /// A user's first connection joined a public room (cluster-wide).
    MemberJoined,
    /// A user's last connection left a public room (cluster-wide).
    MemberLeft,
    /// A user's first connection opened (its personal room got its first member).
    UserOnline,
    /// A user's last connection closed.
    UserOffline,
    /// A message was sequenced (not volatile ones); the hook carries it.
    MessagePublished,
}

/// One webhook event as the room core emits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// What happened.
    pub kind: HookKind,
    /// The room (the personal room for `UserOnline`/`UserOffline`).
    pub room: Arc<str>,
    /// The user (none for `RoomOccupied`/`RoomVacated`; the sender for
    /// `MessagePublished`).
    pub user: Option<Arc<str>>,
    /// The message, for `MessagePublished` only.
    pub message: Option<Box<HookMessage>>,
}

/// A sequenced message as a `message_published` hook carries it: its position and its
/// content as the room's frame has it (shared parts are cloned, not copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookMessage {
    /// The room's stream epoch (shown to clients as 16 hex digits).
    pub epoch: u64,
    /// The message's `seq` in that stream.
    pub seq: u64,
    /// The message's `ts` (ms since the Unix epoch), as in its frame.
    pub ts: u64,
    /// Its `text`.
    pub text: Option<Box<str>>,
    /// Its `data`: JSON, verbatim.
    pub data: Option<Arc<[u8]>>,
    /// Its `event` name.
    pub event: Option<Arc<str>>,
    /// Its `tags` (an API publish's): a JSON object, verbatim.
    pub tags: Option<Arc<[u8]>>,
}

/// Emits the webhook events of `user` arriving in (or leaving) public room `room`, whose
/// cluster-wide user count is now `count`: `room_occupied` before the first member's
/// `member_joined`, `room_vacated` after the last one's `member_left`. Nothing unless
/// `on`.
pub(super) fn hook_presence(
    on: bool,
    room: &Arc<str>,
    user: &Arc<str>,
    present: bool,
    count: u32,
    sink: &mut Sink<'_>,
) {
    if !on {
        return;
    }
    let emit = |kind, user: Option<&Arc<str>>, sink: &mut Sink<'_>| {
        sink(RoomOut::Hook(Hook { kind, room: room.clone(), user: user.cloned(), message: None }))
    };
    if present {
        if count == 1 {
            emit(HookKind::RoomOccupied, None, sink);
        }
        emit(HookKind::MemberJoined, Some(user), sink);
    } else {
        emit(HookKind::MemberLeft, Some(user), sink);
        if count == 0 {
            emit(HookKind::RoomVacated, None, sink);
        }
    }
}

/// What a room owner hands one shard.
pub enum ToShard {
    /// Hand `frame` to every local member of `room`.
    Deliver {
        /// Room name.
        room: Arc<str>,
        /// The serialized-once frame, shared by all receivers.
        frame: Bytes,
        /// When the owner handed it off (for the fan-out latency histogram).
        sent_at: Instant,
        /// A local member that does not get this frame (the sender of a `skip_self`
        /// message).
        skip: Option<ConnId>,
    },
    /// Hand `frame` to every open connection (a broadcast).
    DeliverAll {
        /// The serialized-once frame.
        frame: Bytes,
        /// When the owner handed it off.
        sent_at: Instant,
    },
    /// A join is sequenced.
    JoinAck(Box<JoinAck>),
    /// A join is refused (nothing was counted).
    JoinRefused(Box<JoinRefused>),
    /// The room instance is gone: drop its memberships and tell the members with `frame`.
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
    /// Send `frame` to one connection (an ack, an error, a query's answer).
    ToConn {
        /// Receiving connection.
        conn: ConnId,
        /// Complete frame.
        frame: Bytes,
    },
    /// The answer to a pending HTTP API request.
    Reply {
        /// The request it answers (see [`ReplyTo::req`]).
        req: u64,
        /// The answer.
        reply: Reply,
    },
}

/// An answer to a publisher on this node that the bridge hands back to the publisher's
/// shard ([`ClusterOut::AfterBus`]).
#[derive(Debug)]
pub enum LocalAnswer {
    /// An `ack` (or another frame) for a WebSocket client.
    ToConn {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: Bytes,
    },
    /// The outcome of an API publish ([`Reply::Published`]).
    Published {
        /// The pending request.
        req: u64,
        /// The sequence number (none: the room did not exist).
        seq: Option<u64>,
        /// The shards the frame was handed to.
        shards: Vec<u16>,
    },
}

/// What a room owner tells the other nodes (through the bridge).
#[derive(Debug)]
pub enum ClusterOut {
    /// Start receiving room `.0` (its first local member arrived).
    Subscribe(Arc<str>),
    /// Stop receiving room `.0` (it is gone from this node).
    Unsubscribe(Arc<str>),
    /// Publish a sequenced room frame.
    Frame {
        /// Room name.
        room: Arc<str>,
        /// Stream epoch.
        epoch: u64,
        /// Sequence number.
        seq: u64,
        /// The finished frame.
        frame: Bytes,
        /// The sending connection, left out (`skip_self`), with its node.
        skip: Option<Sender>,
    },
    /// This node stopped sequencing `room`: its stream `epoch` ends at `seq` here, and
    /// node `to`, the room's new sequencer, may continue it (node subject of `to`).
    Handoff {
        /// Room name.
        room: Arc<str>,
        /// The stream handed on.
        epoch: u64,
        /// Its last seq.
        seq: u64,
        /// The new sequencer.
        to: u64,
    },
    /// Ask node `to` for `room`'s frames of stream `epoch` after seq `after` (node
    /// subject of `to`).
    CatchUp {
        /// Room name.
        room: Arc<str>,
        /// The stream.
        epoch: u64,
        /// The last seq held here.
        after: u64,
        /// The node asked (the stream's sequencer, or the mark's sender).
        to: u64,
    },
    /// Part of the answer to a [`ClusterOut::CatchUp`]: frames `first..` of `room`'s
    /// stream `epoch`, in order (node subject of `to`). None in a `done` part: the
    /// asked node does not hold them.
    Frames {
        /// Room name.
        room: Arc<str>,
        /// The stream.
        epoch: u64,
        /// Seq of the first frame.
        first: u64,
        /// The finished frames.
        frames: Vec<Bytes>,
        /// The last part.
        done: bool,
        /// The node that asked.
        to: u64,
    },
    /// Publish a volatile room frame: no seq, not stored; members of every node get it.
    Volatile {
        /// Room name.
        room: Arc<str>,
        /// The finished frame.
        frame: Bytes,
        /// The sending connection, left out (`skip_self`), with its node.
        skip: Option<Sender>,
    },
    /// Publish a sequenced broadcast frame.
    Broadcast {
        /// Broadcast sequence number.
        seq: u64,
        /// The finished frame.
        frame: Bytes,
    },
    /// A user's first local connection joined, or its last one left, room `room`: told
    /// to each of the room's presence keepers other than this node.
    Presence {
        /// Room name.
        room: Arc<str>,
        /// The user.
        user: Arc<str>,
        /// Arrived or left.
        present: bool,
        /// The keeper told.
        to: u64,
    },
    /// A join/leave event the room's holder decided, for every node with members (room
    /// subject).
    Event {
        /// Room name.
        room: Arc<str>,
        /// The finished event frame.
        frame: Bytes,
    },
    /// The room's cluster-wide user count, from its holder, for node `to`, which just
    /// subscribed to the room; with the holder's stream position, which a node whose
    /// first joins wait for the stream adopts (see `OwnedRooms::remote_stream`).
    Count {
        /// Room name.
        room: Arc<str>,
        /// Distinct users in the cluster.
        count: u32,
        /// The node that asked.
        to: u64,
        /// The holder's (the sequencer's) stream, (epoch, last seq); none while it is
        /// not settled there (a handoff in progress).
        stream: Option<(u64, u64)>,
    },
    /// The cluster-wide user counts of every room this holder's shard saw change since
    /// its last report, for every node (one report per shard and sweep tick, however
    /// many rooms changed: per-room messages to every node with members cost the bus
    /// rooms × nodes messages per tick, and stalled a cluster of 58 nodes and 10,000
    /// rooms; see `report_counts`).
    Counts(Vec<(Arc<str>, u32)>),
    /// A presence query for the room's holder, node `to`.
    PresenceQuery {
        /// The holder.
        to: u64,
        /// The query; its requester is this node's [`Requester::Remote`].
        query: Box<PresenceReq>,
    },
    /// The answer to a forwarded API presence query.
    Page {
        /// The origin node.
        node: u64,
        /// The shard serving the request.
        shard: u16,
        /// Its request id.
        req: u64,
        /// The page (none: no such room).
        page: Option<PresencePage>,
    },
    /// This node's users of `room` (to node `to`, or to everyone on the room subject).
    Users {
        /// Room name.
        room: Arc<str>,
        /// The users.
        users: Vec<Arc<str>>,
        /// The node that asked, if one did.
        to: Option<u64>,
    },
    /// A frame for one connection on another node (an answer to a forwarded request).
    ToConn {
        /// The node.
        node: u64,
        /// The connection's shard there.
        shard: u16,
        /// The connection id.
        conn: u64,
        /// The frame.
        frame: Bytes,
    },
    /// The answer to a publisher on this node, to be handed back to its shard once the
    /// bridge has flushed everything queued before it to NATS (the message's frame), so
    /// that an `ack` or an API `seq` is never given for a frame still inside this
    /// process: a node killed after answering has lost nothing it acknowledged.
    AfterBus {
        /// The publisher's shard.
        shard: usize,
        /// What to hand it.
        answer: LocalAnswer,
    },
    /// The outcome of a forwarded API publish.
    Published {
        /// The origin node.
        node: u64,
        /// The shard serving the request.
        shard: u16,
        /// Its request id.
        req: u64,
        /// The sequence number (none: not sequenced).
        seq: Option<u64>,
    },
}

/// Where a room owner's outputs go.
pub type Sink<'a> = dyn FnMut(RoomOut) + 'a;

/// Sends `frame` to one connection.
pub(super) fn to_conn(c: &ConnRef, frame: Bytes, sink: &mut Sink<'_>) {
    sink(RoomOut::Shard(c.shard, ToShard::ToConn { conn: c.conn, frame }));
}

/// Answers a pending HTTP API request.
pub(super) fn reply(to: &ReplyTo, reply: Reply, sink: &mut Sink<'_>) {
    sink(RoomOut::Shard(to.shard, ToShard::Reply { req: to.req, reply }));
}

/// Sends an `error` frame (with the request's reference) to a connection.
pub(super) fn reply_error(origin: &ConnRef, code: ErrorCode, message: &str, sink: &mut Sink<'_>) {
    to_conn(origin, server::error(code, message, origin.reference.as_deref()), sink);
}

/// Refuses a join: the joiner's shard drops the pending membership and sends `error`.
pub fn refuse(req: &JoinReq, code: ErrorCode, message: &str, sink: &mut Sink<'_>) {
    let frame = server::error(code, message, req.origin.reference.as_deref());
    let refused = JoinRefused { room: req.room.clone(), conn: req.origin.conn, token: req.token, frame };
    sink(RoomOut::Shard(req.origin.shard, ToShard::JoinRefused(Box::new(refused))));
}

/// Answers the outcome of a publish to a requester on another node over the bus: an
/// `ack` to a client that asked for one, or the outcome to a pending API request.
pub(super) fn reply_remote(r: &Remote, seq: Option<u64>, volatile: bool, room: &str, sink: &mut Sink<'_>) {
    let out = match &r.reply {
        None => return,
        Some(ReplyRef::Conn { shard, conn, reference }) => match seq {
            Some(seq) => ClusterOut::ToConn {
                node: r.node,
                shard: *shard,
                conn: *conn,
                frame: if volatile { server::ack_volatile(reference, room) } else { server::ack(reference, room, seq) },
            },
            None => return,
        },
        Some(ReplyRef::Api { shard, req }) => ClusterOut::Published { node: r.node, shard: *shard, req: *req, seq },
    };
    sink(RoomOut::Cluster(out));
}

/// Sends a query's answer `frame` to a client on another node. Returns false when the
/// requester cannot take a frame (nobody to answer, or an API request: the bus carries
/// no API answers but a publish's outcome), so the caller counts it as unanswered.
pub(super) fn answer_remote(r: &Remote, frame: Bytes, sink: &mut Sink<'_>) -> bool {
    match &r.reply {
        Some(ReplyRef::Conn { shard, conn, .. }) => {
            sink(RoomOut::Cluster(ClusterOut::ToConn { node: r.node, shard: *shard, conn: *conn, frame }));
            true
        }
        Some(ReplyRef::Api { .. }) | None => false,
    }
}

/// The client reference of a requester, for an `error` frame sent to it.
pub(super) fn reference(from: &Requester) -> Option<&str> {
    match from {
        Requester::Conn(c) => c.reference.as_deref(),
        Requester::Remote(r) => match &r.reply {
            Some(ReplyRef::Conn { reference, .. }) if !reference.is_empty() => Some(reference),
            _ => None,
        },
        Requester::Api(_) => None,
    }
}
