//! The owner side of rooms: sequencing, presence, fan-out targets.
//!
//! Every room lives on exactly one owner shard (`shard::route::owner`). The owner is the
//! room's single point of order: it numbers messages (`seq`), stamps them (`ts`), builds
//! each frame once, and sends one `Deliver` per member shard. Because one owner sends all
//! of a room's frames down FIFO inboxes, every member sees the same order.
//!
//! This module is pure state: it emits `(shard, ShardMsg)` pairs into a sink and never
//! touches I/O, so its rules are unit-tested here without a runtime.

pub mod history;
pub mod users;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use rustc_hash::FxHashMap;

use crate::cluster::wire::ReplyRef;
use crate::cluster::BusOut;
use crate::protocol::{server, ErrorCode, SYSTEM_ROOM_PREFIX};
use crate::shard::msg::{
    ConnRef, DeleteReq, HistoryReq, JoinAck, JoinKind, JoinRefused, JoinReq, PresenceReq, Publish, Remote, Reply,
    ReplyTo, Requester, ShardMsg, Since, BUS,
};
use history::{Budget, Caps, Ring};
use users::Users;

/// Shortest time a room with no local member lingers on its sequencer node after a
/// message (cluster mode): a room sequenced for other nodes' members must keep its
/// stream (epoch, seq) between messages, even with `--history-ttl 0`.
const RELAY_LINGER_MS: u64 = 60_000;

/// Where the owner's outputs go: `(destination shard, message)`.
pub type Sink<'a> = dyn FnMut(usize, ShardMsg) + 'a;

/// One room as its owner sees it.
///
/// Every user has a personal room, so a million users mean a million of these: the
/// presence part that personal rooms never use sits behind a box.
pub struct OwnedRoom {
    name: Arc<str>,
    /// Random per room instance on this node: leaves and deletions name the instance
    /// they meant, and stale ones are ignored.
    epoch: u64,
    /// The message stream's epoch, shown to clients as 16 hex digits: a client's `since`
    /// from another stream cannot match. Equal to `epoch` on a single node; in a cluster
    /// it is the sequencer node's stream, adopted from the frames it publishes, and a new
    /// one whenever the sequencing moves to another node.
    stream: u64,
    /// The node that sequenced the current stream (0 on a single node).
    sequencer: u64,
    /// Whether the bridge was asked to subscribe to the room's subject (cluster mode).
    subscribed: bool,
    /// Last assigned sequence number (0: no message yet).
    seq: u64,
    /// Connections per shard (joined or joining): the interest map for fan-out.
    shard_members: Box<[u32]>,
    /// Users and creation time; `None` for server-managed rooms (`@user:…`), which have
    /// no presence and send no `joined` frames.
    presence: Option<Box<Presence>>,
    /// Recent messages (allocated with the first one).
    history: Option<Box<Ring>>,
    /// When the last member left (wall ms), while the room lingers with its history;
    /// 0 while it has members.
    emptied_ms: u64,
}

/// The presence side of a public room.
struct Presence {
    /// Users present, here and (in a cluster) on other nodes.
    users: Users,
    /// Wall-clock creation time (ms since the Unix epoch).
    created_ms: u64,
    /// Who created it with `create` (rooms created by a first `join` have none and
    /// cannot be deleted).
    creator: Option<Arc<str>>,
    /// argon2 hash of the password of a private room.
    password: Option<Arc<str>>,
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
    fn recover(&self, since: Option<&Since>) -> (Vec<Bytes>, Option<bool>) {
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
    /// Distinct users present (0 for server-managed rooms).
    pub fn user_count(&self) -> u32 {
        self.presence.as_ref().map_or(0, |p| p.users.count())
    }
    /// Connections that joined (summed over the few shards rather than kept beside them).
    pub fn connections(&self) -> u32 {
        self.shard_members.iter().sum()
    }
    /// Creation time, ms since the Unix epoch (0 for server-managed rooms).
    pub fn created_ms(&self) -> u64 {
        self.presence.as_ref().map_or(0, |p| p.created_ms)
    }

    fn password(&self) -> Option<&Arc<str>> {
        self.presence.as_ref().and_then(|p| p.password.as_ref())
    }

    fn creator(&self) -> Option<&Arc<str>> {
        self.presence.as_ref().and_then(|p| p.creator.as_ref())
    }

    fn users(&self) -> Option<&Users> {
        self.presence.as_ref().map(|p| &p.users)
    }

    /// Starts a new message stream (this node takes over the sequencing, or adopts
    /// another node's stream): the history of the old one no longer applies.
    fn new_stream(&mut self, stream: u64, sequencer: u64, budget: &mut Budget) {
        self.stream = stream;
        self.sequencer = sequencer;
        if let Some(h) = self.history.take() {
            budget.dropped(h.bytes(), h.len());
        }
    }

    /// Appends a delivered frame to the history (callers check that history is on).
    fn remember(&mut self, frame: Bytes, caps: Caps, budget: &mut Budget) {
        let len = frame.len();
        let (bytes, count) = self.history.get_or_insert_with(Box::default).push(self.seq, frame, caps);
        budget.pushed(&self.name, self.stream, self.seq, len, bytes, count);
    }

    /// A new room instance; `node` is this node in a cluster (0: none).
    fn new(
        name: Arc<str>,
        shards: usize,
        node: u64,
        now_ms: u64,
        creator: Option<Arc<str>>,
        password: Option<Arc<str>>,
    ) -> OwnedRoom {
        let epoch = fastrand::u64(..);
        OwnedRoom {
            presence: (!name.starts_with(SYSTEM_ROOM_PREFIX))
                .then(|| Box::new(Presence { users: Users::default(), created_ms: now_ms, creator, password })),
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

    /// Sends `frame` once to every shard with members; returns those shards.
    fn fan_out(&self, frame: &Bytes, sink: &mut Sink<'_>) -> Vec<u16> {
        let sent_at = Instant::now();
        let mut shards = Vec::new();
        for (shard, &n) in self.shard_members.iter().enumerate() {
            if n > 0 {
                sink(shard, ShardMsg::Deliver { room: self.name.clone(), frame: frame.clone(), sent_at });
                shards.push(shard as u16);
            }
        }
        shards
    }

    fn summary(&self) -> RoomSummary {
        RoomSummary {
            room: self.name.to_string(),
            members: self.user_count(),
            connections: self.connections(),
            messages: self.seq,
            created_ms: self.created_ms(),
        }
    }
}

/// A room's figures for `/stats`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomSummary {
    /// Room name.
    pub room: String,
    /// Distinct users present.
    pub members: u32,
    /// Connections joined.
    pub connections: u32,
    /// Messages sequenced since the room was created.
    pub messages: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
}

/// One page of a room's member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresencePage {
    /// Room name.
    pub room: Arc<str>,
    /// Distinct users present in total.
    pub count: u32,
    /// This page's users, sorted.
    pub users: Vec<Arc<str>>,
    /// Cursor for the next page (the last name of this one), when more remain.
    pub next: Option<Arc<str>>,
    /// The room is password-protected (the HTTP API then needs its key).
    pub private: bool,
}

/// History settings of one shard.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Per-room caps (`messages == 0`: no history).
    pub caps: Caps,
    /// This shard's share of the history memory, bytes.
    pub memory: usize,
    /// How long an empty room keeps its history, ms.
    pub ttl_ms: u64,
}

impl HistoryConfig {
    /// A shard's settings from the server configuration (memory split evenly).
    pub fn from_config(cfg: &crate::config::Config, shards: usize) -> Self {
        HistoryConfig {
            caps: Caps { messages: cfg.history_messages, bytes: cfg.history_bytes },
            memory: cfg.history_memory / shards.max(1),
            ttl_ms: cfg.history_ttl.as_millis() as u64,
        }
    }
}

/// Looks rings up in the room table for the budget (by name and room instance).
struct RingsOf<'a>(&'a mut FxHashMap<Arc<str>, Box<OwnedRoom>>);

impl history::Rings for RingsOf<'_> {
    fn ring(&mut self, room: &str, epoch: u64) -> Option<&mut Ring> {
        self.0.get_mut(room).filter(|r| r.stream == epoch).and_then(|r| r.history.as_deref_mut())
    }
}

/// What the shard must do after [`OwnedRooms::join`].
pub enum JoinStep {
    /// Nothing: the join was sequenced or refused.
    Done,
    /// Verify `password` against `hash` off the event loop; on success resubmit `req`
    /// with `verified = Some(epoch)`, on failure refuse it ([`refuse`]).
    CheckPassword {
        /// The join to resubmit.
        req: JoinReq,
        /// The room's password hash.
        hash: Arc<str>,
        /// What the client sent.
        password: Box<str>,
        /// The room instance the password was checked against.
        epoch: u64,
    },
}

/// Every room this shard owns.
pub struct OwnedRooms {
    /// Boxed: a hash table keeps spare slots (up to half of them right after it grows),
    /// and with a million personal rooms a spare slot of a 24-byte pointer costs far less
    /// than one of an inline room (~100 B): ~100 B less per user (DESIGN-NOTES, memory).
    rooms: FxHashMap<Arc<str>, Box<OwnedRoom>>,
    /// Sequence of the broadcast stream (`@all`); used on the shard that owns it.
    broadcast_seq: u64,
    /// Per-room history limits.
    history: Caps,
    /// This shard's share of the server-wide history memory.
    budget: Budget,
    /// How long an empty room keeps its history (ms; 0: dropped at once).
    ttl_ms: u64,
    /// Rooms that emptied, in order: (room, epoch, emptied at, linger ms). Checked from
    /// the front.
    lingering: VecDeque<(Arc<str>, u64, u64, u64)>,
    shards: usize,
    /// This node's id in a cluster (0: no cluster). Then the owner also talks to the
    /// bridge (destination [`BUS`]): subscriptions, presence, sequenced frames.
    node: u64,
    /// Room frames that arrived after a gap, since last taken (see [`Self::take_counts`]).
    gaps: u64,
    /// Stream epoch changes, since last taken.
    epoch_changes: u64,
    /// Join/leave events only while a room has fewer users than this (0: never).
    presence_events_max: u32,
}

impl OwnedRooms {
    /// An empty set of rooms for a server of `shards` shards.
    pub fn new(shards: usize, presence_events_max: u32, history: HistoryConfig) -> Self {
        OwnedRooms {
            rooms: FxHashMap::default(),
            broadcast_seq: 0,
            history: history.caps,
            budget: Budget::new(history.memory),
            ttl_ms: history.ttl_ms,
            lingering: VecDeque::new(),
            shards,
            presence_events_max,
            node: 0,
            gaps: 0,
            epoch_changes: 0,
        }
    }

    /// Turns cluster mode on: this node is `node` (nonzero).
    pub fn with_cluster(mut self, node: u64) -> Self {
        self.node = node;
        self
    }

    /// Takes the cluster counts gathered since the last call: (gaps, epoch changes).
    pub fn take_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.gaps), std::mem::take(&mut self.epoch_changes))
    }

    /// Bytes and messages of history held on this shard.
    pub fn history_usage(&self) -> (usize, usize) {
        (self.budget.bytes(), self.budget.messages())
    }

    /// Number of rooms owned here.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is owned here.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Looks up a room.
    pub fn get(&self, room: &str) -> Option<&OwnedRoom> {
        self.rooms.get(room).map(|r| &**r)
    }

    /// Every owned room, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &OwnedRoom> {
        self.rooms.values().map(|r| &**r)
    }

    fn events_enabled(&self, room: &OwnedRoom) -> bool {
        !room.is_system() && room.user_count() < self.presence_events_max
    }

    /// Sequences a join or create: counts the connection, announces a user's first
    /// connection to the room, and acks the joiner with the room instance's epoch. The
    /// ack is sent after the announcement, and the joiner becomes a local member only when
    /// the ack arrives, so it receives exactly the frames sequenced after `joined.seq`.
    ///
    /// A join of a private room without a verified password is not sequenced: the owner
    /// either refuses it (nothing is counted, so nothing needs undoing) or hands back a
    /// [`JoinStep::CheckPassword`] for the shard to verify off its event loop and resubmit.
    pub fn join(&mut self, mut req: JoinReq, now_ms: u64, sink: &mut Sink<'_>) -> JoinStep {
        let exists = self.rooms.get(&req.room).map(|r| (r.epoch, r.password().cloned()));
        match (&mut req.kind, exists) {
            (JoinKind::Create { .. }, Some(_)) => {
                refuse(&req, ErrorCode::RoomExists, "a room of that name exists", sink);
                return JoinStep::Done;
            }
            (JoinKind::Join { password, verified, .. }, Some((epoch, Some(hash)))) => match (verified, password.take())
            {
                (Some(v), _) if *v == epoch => {}
                (Some(_), _) => {
                    refuse(&req, ErrorCode::NoSuchRoom, "the room was deleted", sink);
                    return JoinStep::Done;
                }
                (None, None) => {
                    refuse(&req, ErrorCode::PasswordRequired, "this room is private: join with its password", sink);
                    return JoinStep::Done;
                }
                (None, Some(password)) => return JoinStep::CheckPassword { req, hash, password, epoch },
            },
            _ => {}
        }
        let shards = self.shards;
        let (creator, password) = match &req.kind {
            JoinKind::Create { password_hash } => (Some(req.user.clone()), password_hash.clone()),
            JoinKind::Join { .. } => (None, None),
        };
        let node = self.node;
        let room = self
            .rooms
            .entry(req.room.clone())
            .or_insert_with(|| Box::new(OwnedRoom::new(req.room.clone(), shards, node, now_ms, creator, password)));
        // A lingering room comes back to life (its expiry entry no longer matches).
        room.emptied_ms = 0;
        let first = !room.is_system() && !room.users().is_some_and(|u| u.contains(&req.user));
        // Announce before counting the joiner: it is not a local member until its ack
        // arrives, so its shard only needs the event if others there are members.
        if first && room.user_count() < self.presence_events_max {
            room.fan_out(&server::presence_event(true, &room.name, &req.user), sink);
        }
        if let Some(n) = room.shard_members.get_mut(req.origin.shard) {
            *n += 1;
        }
        let change = room.presence.as_mut().map(|p| p.users.add_local(&req.user));
        if node != 0 {
            if !room.subscribed {
                room.subscribed = true;
                sink(BUS, to_bus(BusOut::Subscribe(room.name.clone())));
            }
            if change.is_some_and(|c| c.local) {
                let out = BusOut::Presence { room: room.name.clone(), user: req.user.clone(), present: true };
                sink(BUS, to_bus(out));
            }
        }
        let private = room.password().is_some();
        let since = match &req.kind {
            JoinKind::Join { since, .. } => since.as_ref(),
            JoinKind::Create { .. } => None,
        };
        let (replay, recovered) = room.recover(since);
        let frame = (!req.silent)
            .then(|| server::joined(&room.name, room.user_count(), room.seq, &room.epoch(), recovered, private));
        let ack = JoinAck {
            room: room.name.clone(),
            conn: req.origin.conn,
            token: req.token,
            epoch: room.epoch as u32,
            user: req.user.clone(),
            replay,
            frame,
        };
        sink(req.origin.shard, ShardMsg::JoinAck(Box::new(ack)));
        JoinStep::Done
    }

    /// Sequences a leave of room instance `epoch`. A user's last connection leaving is
    /// announced; a room with no connections left is dropped. Leaves for another instance
    /// (the room was deleted and re-created since) are ignored.
    pub fn leave(&mut self, room_name: &str, user: &str, from: usize, epoch: u32, now_ms: u64, sink: &mut Sink<'_>) {
        let Some(room) = self.rooms.get_mut(room_name).filter(|r| r.epoch as u32 == epoch) else { return };
        match room.shard_members.get_mut(from) {
            Some(n) if *n > 0 => *n -= 1,
            // A leave without a matching join would corrupt the counts: ignore it.
            _ => return,
        }
        let change = room.presence.as_mut().map(|p| p.users.remove_local(user));
        let gone = change.is_some_and(|c| c.cluster);
        if self.node != 0 && change.is_some_and(|c| c.local) {
            let out = BusOut::Presence { room: room.name.clone(), user: Arc::from(user), present: false };
            sink(BUS, to_bus(out));
        }
        if room.connections() == 0 {
            if room.history_len() > 0 && self.ttl_ms > 0 {
                // Keep the history a while: a brief gap must not lose it.
                room.emptied_ms = now_ms;
                self.lingering.push_back((room.name.clone(), room.epoch, now_ms, self.ttl_ms));
            } else {
                self.drop_room(room_name, sink);
            }
            return;
        }
        let room = &self.rooms[room_name];
        if gone && self.events_enabled(room) {
            room.fan_out(&server::presence_event(false, &room.name, user), sink);
        }
    }

    /// Deletes a room at its creator's request: every member shard drops the instance's
    /// memberships and tells its members; the requester is told directly.
    pub fn delete(&mut self, req: DeleteReq, sink: &mut Sink<'_>) {
        let Some(room) = self.rooms.get(&req.room) else {
            reply_error(&req.origin, ErrorCode::NoSuchRoom, "no room of that name exists", sink);
            return;
        };
        if room.creator() != Some(&req.user) {
            reply_error(&req.origin, ErrorCode::Forbidden, "only the room's creator can delete it", sink);
            return;
        }
        let frame = server::deleted(&room.name);
        for (shard, &n) in room.shard_members.iter().enumerate() {
            if n > 0 {
                let msg = ShardMsg::RoomDeleted {
                    room: room.name.clone(),
                    epoch: room.epoch as u32,
                    frame: frame.clone(),
                    by: req.origin.clone(),
                };
                sink(shard, msg);
            }
        }
        sink(req.origin.shard, ShardMsg::ToConn { conn: req.origin.conn, frame });
        self.drop_room(&req.room, sink);
    }

    /// Removes a room, gives its history back to the budget, and (cluster) stops
    /// receiving it.
    fn drop_room(&mut self, name: &str, sink: &mut Sink<'_>) {
        if let Some(room) = self.rooms.remove(name) {
            if let Some(h) = room.history {
                self.budget.dropped(h.bytes(), h.len());
            }
            if room.subscribed {
                sink(BUS, to_bus(BusOut::Unsubscribe(room.name)));
            }
        }
    }

    /// Drops rooms that have lingered empty longer than their linger time (the history
    /// TTL; at least [`RELAY_LINGER_MS`] after the last message for rooms sequenced here
    /// only for other nodes).
    pub fn expire(&mut self, now_ms: u64, sink: &mut Sink<'_>) {
        while let Some((name, epoch, since, linger)) = self.lingering.front().cloned() {
            if since + linger > now_ms {
                break;
            }
            self.lingering.pop_front();
            let Some(r) = self.rooms.get(&name).filter(|r| r.epoch == epoch && r.connections() == 0) else { continue };
            if r.emptied_ms == since {
                self.drop_room(&name, sink);
            } else if r.emptied_ms > since {
                // Used since (a relay room got another message): check again later.
                self.lingering.push_back((name, epoch, r.emptied_ms, linger));
            }
        }
    }

    /// Answers a history request: up to `limit` messages before `before`, newest first,
    /// spliced from the stored frames.
    pub fn history(&self, req: HistoryReq, sink: &mut Sink<'_>) {
        let page = self.rooms.get(&req.room).map(|room| {
            let frames = room.history.as_deref().map(|h| h.page(req.before, req.limit as usize)).unwrap_or_default();
            let payloads: Vec<&[u8]> = frames.iter().map(payload).collect();
            (server::history_json(&room.name, &room.epoch(), &payloads), room.password().is_some())
        });
        match (&req.from, page) {
            (Requester::Conn(c), Some((json, _))) => {
                let frame = crate::ws::frame::text_frame(&json);
                sink(c.shard, ShardMsg::ToConn { conn: c.conn, frame });
            }
            (Requester::Conn(c), None) => reply_error(c, ErrorCode::NoSuchRoom, "no such room", sink),
            (Requester::Api(r), page) => reply(r, Reply::History(page), sink),
            (Requester::Remote(_), _) => {}
        }
    }

    /// Sequences a message: next `seq`, `ts` = `now_ms`, one frame, one hand-off per
    /// member shard. A client sender with an `id` gets an `ack`; an API caller gets the
    /// seq and the shards reached.
    ///
    /// In a cluster this runs on the room's sequencer node only. Then the frame also goes
    /// to the bus, a room without local members is created to carry the stream (other
    /// nodes may have members), and taking over a stream another node sequenced starts a
    /// new epoch (the old sequencer's last messages may not have reached us).
    pub fn publish(&mut self, msg: Publish, now_ms: u64, sink: &mut Sink<'_>) {
        let node = self.node;
        if node != 0 && !self.rooms.contains_key(&msg.room) && !matches!(msg.from, Requester::Conn(_)) {
            self.relay_room(&msg.room, now_ms);
        }
        let Some(room) = self.rooms.get_mut(&msg.room) else {
            match &msg.from {
                // The sender's membership ended before its message arrived here.
                Requester::Conn(c) => reply_error(c, ErrorCode::NotMember, "you are not a member of this room", sink),
                Requester::Api(r) => reply(r, Reply::Published { seq: None, shards: Vec::new() }, sink),
                Requester::Remote(r) => reply_remote(r, None, &msg.room, sink),
            }
            return;
        };
        if node != 0 && room.sequencer != node {
            room.new_stream(fastrand::u64(..), node, &mut self.budget);
            self.epoch_changes += 1;
        }
        if room.emptied_ms != 0 && room.connections() == 0 {
            room.emptied_ms = now_ms;
        }
        room.seq += 1;
        let frame = server::message(&room.name, room.seq, &msg.user, &msg.text, now_ms);
        let shards = room.fan_out(&frame, sink);
        let seq = room.seq;
        if node != 0 {
            let out = BusOut::Frame { room: room.name.clone(), epoch: room.stream, seq, frame: frame.clone() };
            sink(BUS, to_bus(out));
        }
        if self.history.messages > 0 {
            room.remember(frame, self.history, &mut self.budget);
            self.budget.enforce(&mut RingsOf(&mut self.rooms));
        }
        match &msg.from {
            Requester::Conn(c) => {
                if let Some(reference) = &c.reference {
                    sink(c.shard, ShardMsg::ToConn { conn: c.conn, frame: server::ack(reference, &msg.room, seq) });
                }
            }
            Requester::Api(r) => reply(r, Reply::Published { seq: Some(seq), shards }, sink),
            Requester::Remote(r) => reply_remote(r, Some(seq), &msg.room, sink),
        }
    }

    /// Creates a room with no local member on its sequencer node (cluster mode), to carry
    /// the stream for other nodes' members; it lingers [`RELAY_LINGER_MS`] (or the history
    /// TTL, if longer) after its last message.
    fn relay_room(&mut self, name: &str, now_ms: u64) {
        let name: Arc<str> = Arc::from(name);
        let mut room = OwnedRoom::new(name.clone(), self.shards, self.node, now_ms, None, None);
        let epoch = room.epoch;
        room.emptied_ms = now_ms;
        self.rooms.insert(name.clone(), Box::new(room));
        self.lingering.push_back((name, epoch, now_ms, self.ttl_ms.max(RELAY_LINGER_MS)));
    }

    /// A frame the room's sequencer (another node) published: adopt its stream, keep the
    /// history in step, and hand the frame to the local members. Frames of a room with no
    /// local state (no local members left) are ignored; repeated ones are dropped.
    pub fn remote_frame(&mut self, name: &str, stream: u64, seq: u64, node: u64, frame: Bytes, sink: &mut Sink<'_>) {
        let Some(room) = self.rooms.get_mut(name) else { return };
        if room.stream != stream {
            room.new_stream(stream, node, &mut self.budget);
            self.epoch_changes += 1;
        } else if seq <= room.seq && room.sequencer == node {
            return;
        } else if seq != room.seq + 1 && room.seq != 0 {
            // Messages in between were lost on the bus: the history cannot bridge them.
            self.gaps += 1;
            room.new_stream(stream, node, &mut self.budget);
        }
        room.sequencer = node;
        room.seq = seq;
        room.fan_out(&frame, sink);
        if self.history.messages > 0 {
            room.remember(frame, self.history, &mut self.budget);
            self.budget.enforce(&mut RingsOf(&mut self.rooms));
        }
    }

    /// Node `node` reports that `user` arrived in or left `room`.
    pub fn remote_presence(&mut self, room: &str, node: u64, user: Arc<str>, present: bool, sink: &mut Sink<'_>) {
        let max = self.presence_events_max;
        let Some(room) = self.rooms.get_mut(room) else { return };
        let Some(p) = room.presence.as_mut() else { return };
        let changed = if present { p.users.add_remote(node, &user) } else { p.users.remove_remote(node, &user) };
        let before = if present { room.user_count().saturating_sub(1) } else { room.user_count() };
        if changed && before < max {
            room.fan_out(&server::presence_event(present, &room.name, &user), sink);
        }
    }

    /// Node `node` reports all its users of `room` (a snapshot).
    pub fn remote_users(&mut self, room: &str, node: u64, users: &[Arc<str>], sink: &mut Sink<'_>) {
        let max = self.presence_events_max;
        let Some(room) = self.rooms.get_mut(room) else { return };
        let Some(p) = room.presence.as_mut() else { return };
        let (arrived, left) = p.users.set_remote(node, users);
        if room.user_count() < max {
            for u in &arrived {
                room.fan_out(&server::presence_event(true, &room.name, u), sink);
            }
            for u in &left {
                room.fan_out(&server::presence_event(false, &room.name, u), sink);
            }
        }
    }

    /// Node `node` is dead: its users leave every room (with events where enabled).
    pub fn node_gone(&mut self, node: u64, sink: &mut Sink<'_>) {
        let max = self.presence_events_max;
        for room in self.rooms.values_mut() {
            let Some(p) = room.presence.as_mut() else { continue };
            let left = p.users.drop_node(node);
            if room.user_count() < max {
                for u in &left {
                    room.fan_out(&server::presence_event(false, &room.name, u), sink);
                }
            }
        }
    }

    /// This node's users of `room`, sent to node `to` (it just subscribed), or of every
    /// room to everyone (`to` none: a node appeared, or this one reconnected).
    pub fn announce(&self, room: Option<&str>, to: Option<u64>, sink: &mut Sink<'_>) {
        let one = |r: &OwnedRoom, sink: &mut Sink<'_>| {
            let users: Vec<Arc<str>> = r.users().into_iter().flat_map(Users::local).cloned().collect();
            if !users.is_empty() {
                sink(BUS, to_bus(BusOut::Users { room: r.name.clone(), users, to }));
            }
        };
        match room {
            Some(name) => {
                if let Some(r) = self.rooms.get(name) {
                    one(r, sink);
                }
            }
            None => self.rooms.values().filter(|r| r.subscribed).for_each(|r| one(r, sink)),
        }
    }

    /// Sequences a message to everyone (the `@all` stream; only its owner shard calls
    /// this) and hands the one frame to every shard.
    pub fn broadcast(&mut self, msg: Publish, now_ms: u64, sink: &mut Sink<'_>) {
        self.broadcast_seq += 1;
        let frame = server::message(BROADCAST_ROOM, self.broadcast_seq, &msg.user, &msg.text, now_ms);
        let sent_at = Instant::now();
        for shard in 0..self.shards {
            sink(shard, ShardMsg::DeliverAll { frame: frame.clone(), sent_at });
        }
        if self.node != 0 {
            sink(BUS, to_bus(BusOut::Broadcast { seq: self.broadcast_seq, frame }));
        }
        match &msg.from {
            Requester::Api(r) => {
                let shards = (0..self.shards as u16).collect();
                reply(r, Reply::Published { seq: Some(self.broadcast_seq), shards }, sink);
            }
            Requester::Remote(r) => reply_remote(r, Some(self.broadcast_seq), BROADCAST_ROOM, sink),
            Requester::Conn(_) => {}
        }
    }

    /// Answers a presence query with one page of user names (sorted) and the total count.
    pub fn presence(&self, req: PresenceReq, sink: &mut Sink<'_>) {
        let page = self.rooms.get(&req.room).filter(|r| !r.is_system()).map(|room| {
            let (users, next) =
                room.users().map(|u| u.page(req.after.as_deref(), req.limit as usize)).unwrap_or_default();
            PresencePage {
                room: room.name.clone(),
                count: room.user_count(),
                users,
                next,
                private: room.password().is_some(),
            }
        });
        match (&req.from, page) {
            (Requester::Conn(c), Some(p)) => {
                let frame = server::presence(&p.room, p.count, p.users.iter().map(|u| &**u), p.next.as_deref());
                sink(c.shard, ShardMsg::ToConn { conn: c.conn, frame });
            }
            (Requester::Conn(c), None) => {
                reply_error(c, ErrorCode::NotMember, "you are not a member of this room", sink)
            }
            (Requester::Api(r), page) => reply(r, Reply::Presence(page), sink),
            (Requester::Remote(_), _) => {}
        }
    }

    /// Public rooms owned here: the `limit` largest by members (largest first), or just
    /// `only` when given. Selecting before sorting keeps this fast with a million rooms.
    pub fn summaries(&self, only: Option<&str>, limit: usize) -> Vec<RoomSummary> {
        if let Some(name) = only {
            return self.rooms.get(name).filter(|r| !r.is_system()).map(|r| r.summary()).into_iter().collect();
        }
        let mut rooms: Vec<&OwnedRoom> = self.rooms.values().map(|r| &**r).filter(|r| !r.is_system()).collect();
        let by_size = |a: &&OwnedRoom, b: &&OwnedRoom| b.user_count().cmp(&a.user_count()).then(a.name.cmp(&b.name));
        if rooms.len() > limit {
            if limit == 0 {
                return Vec::new();
            }
            rooms.select_nth_unstable_by(limit - 1, by_size);
            rooms.truncate(limit);
        }
        rooms.sort_unstable_by(by_size);
        rooms.into_iter().map(OwnedRoom::summary).collect()
    }

    /// Public and personal rooms owned here.
    pub fn counts(&self) -> (u64, u64) {
        let personal = self.rooms.values().filter(|r| r.is_system()).count() as u64;
        (self.rooms.len() as u64 - personal, personal)
    }
}

/// The name broadcast messages carry: every connection receives this stream without
/// joining it.
pub const BROADCAST_ROOM: &str = "@all";

/// Refuses a join: the joiner's shard drops the pending membership and sends `error`.
pub fn refuse(req: &JoinReq, code: ErrorCode, message: &str, sink: &mut Sink<'_>) {
    let frame = server::error(code, message, req.origin.reference.as_deref());
    let refused = JoinRefused { room: req.room.clone(), conn: req.origin.conn, token: req.token, frame };
    sink(req.origin.shard, ShardMsg::JoinRefused(Box::new(refused)));
}

/// The JSON payload of a stored server frame (its header skipped).
fn payload(frame: &Bytes) -> &[u8] {
    match crate::ws::frame::parse_header(frame, crate::ws::frame::Role::Client, usize::MAX) {
        Ok(Some(h)) => &frame[h.header_len..],
        _ => &[],
    }
}

fn to_bus(out: BusOut) -> ShardMsg {
    ShardMsg::ToBus(Box::new(out))
}

/// Answers a requester on another node over the bus: an `ack` to a client that asked
/// for one, or the outcome to a pending API request.
fn reply_remote(r: &Remote, seq: Option<u64>, room: &str, sink: &mut Sink<'_>) {
    let out = match &r.reply {
        None => return,
        Some(ReplyRef::Conn { shard, conn, reference }) => match seq {
            Some(seq) => {
                BusOut::ToConn { node: r.node, shard: *shard, conn: *conn, frame: server::ack(reference, room, seq) }
            }
            None => return,
        },
        Some(ReplyRef::Api { shard, req }) => BusOut::Published { node: r.node, shard: *shard, req: *req, seq },
    };
    sink(BUS, to_bus(out));
}

fn reply(to: &ReplyTo, reply: Reply, sink: &mut Sink<'_>) {
    sink(to.shard, ShardMsg::Reply { req: to.req, reply });
}

fn reply_error(origin: &ConnRef, code: ErrorCode, message: &str, sink: &mut Sink<'_>) {
    let frame = server::error(code, message, origin.reference.as_deref());
    sink(origin.shard, ShardMsg::ToConn { conn: origin.conn, frame });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wire::ReplyRef;
    use crate::shard::conns::ConnId;
    use crate::ws::frame::{parse_header, Role};

    fn rooms(shards: usize, presence_max: u32) -> OwnedRooms {
        let history = HistoryConfig { caps: Caps { messages: 100, bytes: 1 << 20 }, memory: 1 << 20, ttl_ms: 0 };
        OwnedRooms::new(shards, presence_max, history)
    }

    fn origin(shard: usize, n: u32) -> ConnRef {
        ConnRef { shard, conn: ConnId::for_test(n), reference: None }
    }

    fn req(room: &str, user: &str, shard: usize, n: u32, kind: JoinKind) -> JoinReq {
        JoinReq { room: room.into(), user: user.into(), origin: origin(shard, n), token: n, silent: false, kind }
    }

    const PLAIN: JoinKind = JoinKind::Join { password: None, verified: None, since: None };

    fn join(r: &mut OwnedRooms, room: &str, user: &str, shard: usize, n: u32) -> Vec<(usize, ShardMsg)> {
        run(r, req(room, user, shard, n, PLAIN))
    }

    fn run(r: &mut OwnedRooms, req: JoinReq) -> Vec<(usize, ShardMsg)> {
        let mut out = Vec::new();
        assert!(matches!(r.join(req, 1, &mut |s, m| out.push((s, m))), JoinStep::Done));
        out
    }

    fn epoch(r: &OwnedRooms, room: &str) -> u32 {
        r.get(room).unwrap().epoch as u32
    }

    fn refusal(out: &[(usize, ShardMsg)]) -> String {
        match out.last() {
            Some((_, ShardMsg::JoinRefused(f))) => json(&f.frame)["code"].as_str().unwrap().to_owned(),
            _ => panic!("expected a refusal"),
        }
    }

    fn json(frame: &bytes::Bytes) -> serde_json::Value {
        let h = parse_header(frame, Role::Client, usize::MAX).unwrap().unwrap();
        serde_json::from_slice(&frame[h.header_len..]).unwrap()
    }

    fn delivered(out: &[(usize, ShardMsg)]) -> Vec<(usize, serde_json::Value)> {
        out.iter()
            .filter_map(|(s, m)| match m {
                ShardMsg::Deliver { frame, .. } => Some((*s, json(frame))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_connection_of_a_user_is_announced_then_acked() {
        let mut r = rooms(2, 1000);
        let out = join(&mut r, "lobby", "alice", 0, 1);
        assert!(delivered(&out).is_empty(), "nobody to tell yet");
        let out = join(&mut r, "lobby", "bob", 1, 2);
        let events = delivered(&out);
        assert_eq!(events.len(), 1, "one hand-off, to the only shard with members: {events:?}");
        assert_eq!((events[0].0, &events[0].1["type"]), (0, &serde_json::json!("join")));
        let Some((1, ShardMsg::JoinAck(ack))) = out.last() else { panic!("ack last") };
        assert_eq!(json(ack.frame.as_ref().unwrap())["members"], 2);
        // A second connection of bob is not announced.
        assert!(delivered(&join(&mut r, "lobby", "bob", 0, 3)).is_empty());
    }

    #[test]
    fn publish_sequences_and_fans_out_once_per_shard() {
        let mut r = rooms(3, 1000);
        join(&mut r, "r", "a", 0, 1);
        join(&mut r, "r", "b", 0, 2);
        join(&mut r, "r", "c", 2, 3);
        for expected in 1..=3u64 {
            let mut out = Vec::new();
            let msg = Publish {
                room: "r".into(),
                user: "a".into(),
                text: "hi".into(),
                from: Requester::Conn(ConnRef { reference: Some("x".into()), ..origin(0, 1) }),
            };
            r.publish(msg, 42, &mut |s, m| out.push((s, m)));
            let d = delivered(&out);
            assert_eq!(d.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0, 2]);
            assert_eq!(d[0].1["seq"], expected);
            assert_eq!(d[0].1["ts"], 42);
            assert!(matches!(out.last(), Some((0, ShardMsg::ToConn { .. }))), "ack to the sender");
        }
    }

    #[test]
    fn last_leave_announces_and_empty_rooms_vanish() {
        let mut r = rooms(2, 1000);
        join(&mut r, "r", "a", 0, 1);
        join(&mut r, "r", "b", 1, 2);
        let mut out = Vec::new();
        let e = epoch(&r, "r");
        r.leave("r", "b", 1, e, 0, &mut |s, m| out.push((s, m)));
        let d = delivered(&out);
        assert_eq!(d.len(), 1, "only shard 0 still has members");
        assert_eq!(d[0].1, serde_json::json!({"type":"leave","room":"r","user":"b"}));
        r.leave("r", "a", 0, e, 0, &mut |_, _| {});
        assert!(r.is_empty());
        // A stray leave is ignored rather than underflowing.
        r.leave("r", "a", 0, e, 0, &mut |_, _| {});
    }

    #[test]
    fn private_rooms_need_a_verified_password_of_this_instance() {
        let mut r = rooms(2, 1000);
        let hash: Arc<str> = Arc::from("$argon2id$stand-in");
        run(&mut r, req("vault", "owner", 0, 1, JoinKind::Create { password_hash: Some(hash.clone()) }));
        let again = run(&mut r, req("vault", "x", 0, 2, JoinKind::Create { password_hash: None }));
        assert_eq!(refusal(&again), "room_exists");
        assert_eq!(refusal(&join(&mut r, "vault", "guest", 1, 3)), "password_required");
        let with_pw =
            req("vault", "guest", 1, 4, JoinKind::Join { password: Some("pw".into()), verified: None, since: None });
        let JoinStep::CheckPassword { mut req, hash: h, password, epoch } = r.join(with_pw, 1, &mut |_, _| {}) else {
            panic!("the owner asks for a password check")
        };
        assert_eq!((&*h, &*password), (&*hash, "pw"));
        // Resubmitted after a successful check: sequenced like any join.
        req.kind = JoinKind::Join { password: None, verified: Some(epoch), since: None };
        let out = run(&mut r, req);
        let Some((1, ShardMsg::JoinAck(ack))) = out.last() else { panic!("acked") };
        assert_eq!(json(ack.frame.as_ref().unwrap())["private"], true);
        assert_eq!(r.get("vault").unwrap().connections(), 2);
        // A check done against another instance of the room does not count.
        let stale = req_verified("vault", epoch.wrapping_add(1));
        assert_eq!(refusal(&run(&mut r, stale)), "no_such_room");
        assert_eq!(r.get("vault").unwrap().connections(), 2, "refusals count nothing");
    }

    fn req_verified(room: &str, epoch: u64) -> JoinReq {
        req(room, "late", 1, 9, JoinKind::Join { password: None, verified: Some(epoch), since: None })
    }

    #[test]
    fn only_the_creator_deletes_and_stale_leaves_cannot_touch_a_new_instance() {
        let mut r = rooms(2, 1000);
        run(&mut r, req("t", "owner", 0, 1, JoinKind::Create { password_hash: None }));
        join(&mut r, "t", "bob", 1, 2);
        let old = epoch(&r, "t");
        let del = |user: &str| DeleteReq { room: "t".into(), user: user.into(), origin: origin(1, 2) };
        let mut out = Vec::new();
        r.delete(del("bob"), &mut |s, m| out.push((s, m)));
        assert!(matches!(out.last(), Some((1, ShardMsg::ToConn { .. }))) && r.get("t").is_some(), "bob may not");
        let mut out = Vec::new();
        r.delete(del("owner"), &mut |s, m| out.push((s, m)));
        let notified: Vec<usize> =
            out.iter().filter_map(|(s, m)| matches!(m, ShardMsg::RoomDeleted { .. }).then_some(*s)).collect();
        assert_eq!(notified, vec![0, 1]);
        assert!(r.get("t").is_none());
        // Re-created by a new join; a leave still in flight for the old instance is ignored.
        join(&mut r, "t", "carol", 1, 3);
        r.leave("t", "bob", 1, old, 0, &mut |_, _| {});
        assert_eq!(r.get("t").unwrap().connections(), 1);
        // Rooms made by a plain join have no creator: nobody can delete them.
        let mut out = Vec::new();
        r.delete(DeleteReq { room: "t".into(), user: "carol".into(), origin: origin(1, 3) }, &mut |s, m| {
            out.push((s, m))
        });
        assert!(r.get("t").is_some());
    }

    fn to_bus(out: &[(usize, ShardMsg)]) -> Vec<&BusOut> {
        out.iter()
            .filter_map(|(s, m)| match m {
                ShardMsg::ToBus(b) if *s == BUS => Some(&**b),
                _ => None,
            })
            .collect()
    }

    fn api_publish(r: &mut OwnedRooms, room: &str, text: &str, from: Requester) -> Vec<(usize, ShardMsg)> {
        let mut out = Vec::new();
        let msg = Publish { room: room.into(), user: "srv".into(), text: text.into(), from };
        r.publish(msg, 7, &mut |s, m| out.push((s, m)));
        out
    }

    #[test]
    fn in_a_cluster_the_owner_subscribes_announces_and_publishes_frames() {
        let mut r = rooms(2, 1000).with_cluster(1);
        let out = join(&mut r, "r", "a", 0, 1);
        let bus = to_bus(&out);
        assert!(matches!(bus[0], BusOut::Subscribe(room) if &**room == "r"), "subscribe first");
        assert!(matches!(bus[1], BusOut::Presence { present: true, .. }));
        assert!(to_bus(&join(&mut r, "r", "a", 1, 2)).is_empty(), "a second connection of a is no news");
        let out = api_publish(&mut r, "r", "hi", Requester::Api(ReplyTo { shard: 0, req: 1 }));
        let stream = r.get("r").unwrap().stream;
        assert!(matches!(to_bus(&out)[0], BusOut::Frame { seq: 1, epoch, .. } if *epoch == stream));
        let e = epoch(&r, "r");
        r.leave("r", "a", 0, e, 0, &mut |_, _| {});
        let mut out = Vec::new();
        r.leave("r", "a", 1, e, 0, &mut |s, m| out.push((s, m)));
        // No history TTL here: the room goes at once, and so does the subscription.
        assert!(matches!(to_bus(&out)[..], [BusOut::Presence { present: false, .. }, BusOut::Unsubscribe(_)]));
        assert!(r.is_empty());
    }

    #[test]
    fn remote_frames_are_adopted_deduplicated_and_gaps_restart_the_history() {
        let mut r = rooms(2, 1000).with_cluster(1);
        join(&mut r, "r", "a", 1, 1);
        let frame = |seq: u64| server::message("r", seq, "x", "t", 1);
        let feed = |r: &mut OwnedRooms, stream: u64, seq: u64| {
            let mut out = Vec::new();
            r.remote_frame("r", stream, seq, 9, frame(seq), &mut |s, m| out.push((s, m)));
            delivered(&out).len()
        };
        assert_eq!(feed(&mut r, 0xabc, 57), 1, "adopts the sequencer's stream");
        assert_eq!((r.get("r").unwrap().epoch(), r.get("r").unwrap().seq()), ("0000000000000abc".into(), 57));
        assert_eq!(feed(&mut r, 0xabc, 58), 1);
        assert_eq!(feed(&mut r, 0xabc, 58), 0, "a repeat is dropped");
        assert_eq!(r.get("r").unwrap().history_len(), 2);
        assert_eq!(feed(&mut r, 0xabc, 61), 1, "delivered after a gap");
        assert_eq!(r.get("r").unwrap().history_len(), 1, "the history cannot bridge a gap");
        assert_eq!(r.take_counts(), (1, 1));
        assert_eq!(feed(&mut r, 0xdef, 1), 1, "a new sequencer's stream");
        assert_eq!(r.take_counts(), (0, 1));
        r.remote_frame("nope", 1, 1, 9, frame(1), &mut |_, _| panic!("no local room: nothing to do"));
    }

    #[test]
    fn taking_over_a_stream_starts_a_new_epoch_and_remote_requesters_hear_back() {
        let mut r = rooms(1, 1000).with_cluster(1);
        join(&mut r, "r", "a", 0, 1);
        r.remote_frame("r", 0xabc, 5, 9, server::message("r", 5, "x", "t", 1), &mut |_, _| {});
        r.take_counts();
        let from = Requester::Remote(Box::new(Remote { node: 4, reply: Some(ReplyRef::Api { shard: 1, req: 77 }) }));
        let out = api_publish(&mut r, "r", "mine now", from);
        let room = r.get("r").unwrap();
        assert_ne!(room.epoch(), "0000000000000abc", "a new stream");
        assert_eq!(room.seq(), 6, "seq carries on");
        assert_eq!(r.take_counts(), (0, 1));
        assert!(matches!(
            to_bus(&out)[..],
            [BusOut::Frame { seq: 6, .. }, BusOut::Published { node: 4, req: 77, seq: Some(6), .. }]
        ));
        // A publish for a room with no local member creates a relay room on the sequencer.
        let out = api_publish(&mut r, "elsewhere", "x", Requester::Remote(Box::new(Remote { node: 4, reply: None })));
        assert!(matches!(to_bus(&out)[..], [BusOut::Frame { seq: 1, .. }]));
        assert_eq!(r.get("elsewhere").unwrap().connections(), 0);
    }

    #[test]
    fn remote_users_count_once_and_leave_when_their_node_dies() {
        let mut r = rooms(1, 1000).with_cluster(1);
        join(&mut r, "r", "a", 0, 1);
        let mut out = Vec::new();
        r.remote_users("r", 7, &["b".into(), "a".into()], &mut |s, m| out.push((s, m)));
        let events = delivered(&out);
        assert_eq!(events.len(), 1, "only b is news: {events:?}");
        assert_eq!(events[0].1, serde_json::json!({"type":"join","room":"r","user":"b"}));
        assert_eq!(r.get("r").unwrap().user_count(), 2);
        let mut out = Vec::new();
        r.node_gone(7, &mut |s, m| out.push((s, m)));
        assert_eq!(delivered(&out)[0].1, serde_json::json!({"type":"leave","room":"r","user":"b"}));
        assert_eq!(r.get("r").unwrap().user_count(), 1, "a is still here");
        let mut out = Vec::new();
        r.announce(None, None, &mut |s, m| out.push((s, m)));
        assert!(matches!(to_bus(&out)[..], [BusOut::Users { users, to: None, .. }] if users.len() == 1));
    }

    #[test]
    fn presence_events_stop_at_the_threshold() {
        let mut r = rooms(1, 2);
        join(&mut r, "r", "a", 0, 1);
        assert_eq!(delivered(&join(&mut r, "r", "b", 0, 2)).len(), 1);
        assert!(delivered(&join(&mut r, "r", "c", 0, 3)).is_empty(), "room has 2 users: no more events");
    }

    #[test]
    fn presence_pages_are_sorted_and_chained() {
        let mut r = rooms(1, 1000);
        for (i, u) in ["dave", "alice", "carol", "bob"].iter().enumerate() {
            join(&mut r, "r", u, 0, i as u32);
        }
        let page = |after: Option<&str>| {
            let mut out = Vec::new();
            let req = PresenceReq {
                room: "r".into(),
                after: after.map(Into::into),
                limit: 3,
                from: Requester::Conn(origin(0, 9)),
            };
            r.presence(req, &mut |s, m| out.push((s, m)));
            match out.pop() {
                Some((_, ShardMsg::ToConn { frame, .. })) => json(&frame),
                _ => panic!("no reply"),
            }
        };
        let p1 = page(None);
        assert_eq!(p1["users"], serde_json::json!(["alice", "bob", "carol"]));
        assert_eq!((p1["count"].as_u64(), p1["next"].as_str()), (Some(4), Some("carol")));
        let p2 = page(Some("carol"));
        assert_eq!(p2["users"], serde_json::json!(["dave"]));
        assert!(p2.get("next").is_none());
    }
}
