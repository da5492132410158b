//! Messages that cross between shards. Small on purpose (large payloads are boxed or
//! `Bytes`), since each one is moved through a lock-free queue.

use std::sync::Arc;

use bytes::Bytes;

use super::conns::ConnId;

/// A message for one shard's inbox.
pub enum ShardMsg {
    /// To a room's owner: a connection joins the room.
    Join(Box<JoinReq>),
    /// To a room's owner: a connection of `user` on shard `from` left the room.
    Leave {
        /// Room name.
        room: Arc<str>,
        /// The leaving connection's user.
        user: Arc<str>,
        /// The connection's shard.
        from: usize,
    },
    /// To a room's owner: a member publishes a message.
    Publish(Box<Publish>),
    /// To a room's owner: a member asks who is present.
    Presence(Box<PresenceReq>),
    /// From a room's owner to a member shard: the join is sequenced.
    JoinAck(Box<JoinAck>),
    /// From a room's owner to a member shard: hand `frame` to every local member.
    Deliver {
        /// Room name.
        room: Arc<str>,
        /// The serialized-once frame, shared by all receivers.
        frame: Bytes,
    },
    /// To a connection's shard: send `frame` to that one connection.
    ToConn {
        /// Receiving connection.
        conn: ConnId,
        /// Complete frame.
        frame: Bytes,
    },
    /// Stop accepting, close every connection with 1001, exit.
    Shutdown,
}

/// Who is asking, for the owner's reply.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The connection's shard.
    pub shard: usize,
    /// The connection.
    pub conn: ConnId,
    /// The request's client reference (`id`), for `ack`/`error`.
    pub reference: Option<Box<str>>,
}

/// A join request.
pub struct JoinReq {
    /// Room name.
    pub room: Arc<str>,
    /// Joining user.
    pub user: Arc<str>,
    /// Joining connection.
    pub origin: Origin,
    /// Matches the ack to this request (a connection may leave and re-join before the
    /// first ack arrives).
    pub token: u32,
    /// Implicit join of a server-managed room: no `joined` frame, no presence.
    pub silent: bool,
}

/// A message to publish.
pub struct Publish {
    /// Room name.
    pub room: Arc<str>,
    /// Sender.
    pub user: Arc<str>,
    /// Message text.
    pub text: Box<str>,
    /// Sending connection, for the ack.
    pub origin: Origin,
}

/// A presence page request.
pub struct PresenceReq {
    /// Room name.
    pub room: Arc<str>,
    /// Names after this cursor.
    pub after: Option<Box<str>>,
    /// Page size.
    pub limit: u32,
    /// Asking connection.
    pub origin: Origin,
}

/// The owner's answer to a join.
pub struct JoinAck {
    /// Room name.
    pub room: Arc<str>,
    /// Joining connection.
    pub conn: ConnId,
    /// The token of the join this answers.
    pub token: u32,
    /// The `joined` frame (none for silent joins).
    pub frame: Option<Bytes>,
}
