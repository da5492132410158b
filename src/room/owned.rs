//! One room as its owner holds it: the stream position, the per-shard interest map,
//! presence, and the history ring.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::history::{Budget, Caps, Ring};
use super::out::{RoomOut, Sink, ToShard};
use super::request::{ConnId, Sender, Since};
use super::users::Users;
use crate::metrics::RoomSummary;
use crate::protocol::SYSTEM_ROOM_PREFIX;

/// One room as its owner sees it.
///
/// Every user has a personal room, so a million users mean a million of these: the
/// presence part that personal rooms never use sits behind a box.
pub struct OwnedRoom {
    pub(super) name: Arc<str>,
    /// Random per room instance on this node: leaves and deletions name the instance
    /// they meant, and stale ones are ignored.
    pub(super) epoch: u64,
    /// The message stream's epoch, shown to clients as 16 hex digits: a client's `since`
    /// from another stream cannot match. Equal to `epoch` on a single node; in a cluster
    /// it is the sequencer node's stream, adopted from the frames it publishes, and a new
    /// one whenever the sequencing moves to another node.
    pub(super) stream: u64,
    /// The node that sequenced the current stream (0 on a single node).
    pub(super) sequencer: u64,
    /// Whether the bridge was asked to subscribe to the room's subject (cluster mode):
    /// bus traffic of the room (frames, events, counts) is taken only while it is set,
    /// whatever the bridge's subscriptions deliver.
    pub(super) subscribed: bool,
    /// Last assigned sequence number (0: no message yet).
    pub(super) seq: u64,
    /// Connections per shard (joined or joining): the interest map for fan-out.
    pub(super) shard_members: Box<[u32]>,
    /// Users and creation time; `None` for server-managed rooms (`@user:…`), which have
    /// no presence and send no `joined` frames.
    pub(super) presence: Option<Box<Presence>>,
    /// Recent messages (allocated with the first one).
    pub(super) history: Option<Box<Ring>>,
    /// When the last member left (wall ms), while the room lingers with its history;
    /// 0 while it has members.
    pub(super) emptied_ms: u64,
}

/// The presence side of a public room.
pub(super) struct Presence {
    /// Users present, here and (in a cluster) on other nodes.
    pub(super) users: Users,
    /// Wall-clock creation time (ms since the Unix epoch).
    pub(super) created_ms: u64,
    /// Who created it with `create` (rooms created by a first `join` have none and
    /// cannot be deleted).
    pub(super) creator: Option<Arc<str>>,
    /// argon2 hash of the password of a private room.
    pub(super) password: Option<Arc<str>>,
    /// The cluster-wide count the room's holder last reported (on other nodes; none on
    /// the holder and on a single node, whose own count is exact).
    pub(super) reported: Option<u32>,
    /// The count changed since the holder last reported it.
    pub(super) count_dirty: bool,
    /// The user list is complete enough to announce a snapshot's differences as events:
    /// false on a holder that took the room over without having been its replica, until
    /// every node has sent its snapshot once (see `OwnedRooms::remote_users`).
    pub(super) settled: bool,
}

impl OwnedRoom {
    /// Room name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
    /// Last assigned sequence number (also the number of messages so far).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Stream epoch as shown to clients.
    pub fn epoch(&self) -> String {
        format!("{:016x}", self.stream)
    }

    /// Messages held in history.
    pub fn history_len(&self) -> usize {
        self.history.as_ref().map_or(0, |h| h.len())
    }

    /// What a join with `since` recovers: the missed frames, and whether that is all of
    /// them (`None` when no recovery was asked for).
    pub(super) fn recover(&self, since: Option<&Since>) -> (Vec<Bytes>, Option<bool>) {
        let Some(since) = since else { return (Vec::new(), None) };
        let same_stream = since.epoch.as_deref().is_none_or(|e| e == self.epoch());
        let empty = Ring::default();
        let ring = self.history.as_deref().unwrap_or(&empty);
        match ring.since(since.seq, self.seq).filter(|_| same_stream) {
            Some(frames) => (frames, Some(true)),
            None => (Vec::new(), Some(false)),
        }
    }
    /// Whether this is a server-managed room (no presence).
    pub fn is_system(&self) -> bool {
        self.presence.is_none()
    }
    /// Distinct users present (0 for server-managed rooms): exact on a single node and on
    /// the room's presence holder; elsewhere in a cluster the holder's last report (a
    /// sweep tick old at most), never less than this node's own users.
    pub fn user_count(&self) -> u32 {
        self.presence.as_ref().map_or(0, |p| p.reported.map_or(p.users.count(), |r| r.max(p.users.count())))
    }

    /// Whether other nodes reported users here (this node keeps the room's presence):
    /// such a room stays while they are present, with or without local members.
    pub fn has_remote_users(&self) -> bool {
        self.presence.as_ref().is_some_and(|p| p.users.has_remote())
    }
    /// Connections that joined (summed over the few shards rather than kept beside them).
    pub fn connections(&self) -> u32 {
        self.shard_members.iter().sum()
    }
    /// Creation time, ms since the Unix epoch (0 for server-managed rooms).
    pub fn created_ms(&self) -> u64 {
        self.presence.as_ref().map_or(0, |p| p.created_ms)
    }

    pub(super) fn password(&self) -> Option<&Arc<str>> {
        self.presence.as_ref().and_then(|p| p.password.as_ref())
    }

    pub(super) fn creator(&self) -> Option<&Arc<str>> {
        self.presence.as_ref().and_then(|p| p.creator.as_ref())
    }

    pub(super) fn users(&self) -> Option<&Users> {
        self.presence.as_ref().map(|p| &p.users)
    }

    /// Starts a new message stream (this node takes over the sequencing, or adopts
    /// another node's stream): the history of the old one no longer applies.
    pub(super) fn new_stream(&mut self, stream: u64, sequencer: u64, budget: &mut Budget) {
        self.stream = stream;
        self.sequencer = sequencer;
        if let Some(h) = self.history.take() {
            budget.dropped(h.bytes(), h.len());
        }
    }

    /// Appends a delivered frame to the history (callers check that history is on).
    pub(super) fn remember(&mut self, frame: Bytes, caps: Caps, budget: &mut Budget) {
        let len = frame.len();
        let (bytes, count) = self.history.get_or_insert_with(Box::default).push(self.seq, frame, caps);
        budget.pushed(&self.name, self.stream, self.seq, len, bytes, count);
    }

    /// A new room instance; `node` is this node in a cluster (0: none).
    pub(super) fn new(
        name: Arc<str>,
        shards: usize,
        node: u64,
        now_ms: u64,
        creator: Option<Arc<str>>,
        password: Option<Arc<str>>,
    ) -> OwnedRoom {
        let epoch = fastrand::u64(..);
        OwnedRoom {
            presence: (!name.starts_with(SYSTEM_ROOM_PREFIX)).then(|| {
                Box::new(Presence {
                    users: Users::default(),
                    created_ms: now_ms,
                    creator,
                    password,
                    reported: None,
                    count_dirty: false,
                    settled: true,
                })
            }),
            name,
            epoch,
            stream: epoch,
            sequencer: node,
            subscribed: false,
            seq: 0,
            shard_members: vec![0; shards].into_boxed_slice(),
            history: None,
            emptied_ms: 0,
        }
    }

    /// Sends `frame` once to every shard with members (one `Bytes` clone each: the
    /// frame itself is built once); returns those shards.
    pub(super) fn fan_out(&self, frame: &Bytes, sink: &mut Sink<'_>) -> Vec<u16> {
        self.fan_out_skipping(frame, None, sink)
    }

    /// [`Self::fan_out`], leaving out connection `skip` (on this node) if given.
    pub(super) fn fan_out_skipping(&self, frame: &Bytes, skip: Option<Sender>, sink: &mut Sink<'_>) -> Vec<u16> {
        let sent_at = Instant::now();
        let mut shards = Vec::new();
        for (shard, &n) in self.shard_members.iter().enumerate() {
            if n > 0 {
                let skip = skip.filter(|s| usize::from(s.shard) == shard).map(|s| ConnId::from_u64(s.conn));
                let m = ToShard::Deliver { room: self.name.clone(), frame: frame.clone(), sent_at, skip };
                sink(RoomOut::Shard(shard, m));
                shards.push(shard as u16);
            }
        }
        shards
    }

    pub(super) fn summary(&self) -> RoomSummary {
        RoomSummary {
            room: self.name.to_string(),
            members: self.user_count(),
            connections: self.connections(),
            messages: self.seq,
            created_ms: self.created_ms(),
        }
    }
}
