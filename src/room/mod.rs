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

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use rustc_hash::FxHashMap;

use crate::protocol::{server, ErrorCode, SYSTEM_ROOM_PREFIX};
use crate::shard::msg::{
    ConnRef, DeleteReq, HistoryReq, JoinAck, JoinKind, JoinRefused, JoinReq, PresenceReq, Publish, Reply, ReplyTo,
    Requester, ShardMsg, Since,
};
use history::{Budget, Caps, Ring};

/// Where the owner's outputs go: `(destination shard, message)`.
pub type Sink<'a> = dyn FnMut(usize, ShardMsg) + 'a;

/// One room as its owner sees it.
///
/// Every user has a personal room, so a million users mean a million of these: the
/// presence part that personal rooms never use sits behind a box.
pub struct OwnedRoom {
    name: Arc<str>,
    /// Random per room instance: a client's `since` from another instance cannot match.
    /// Shown as 16 hex digits.
    epoch: u64,
    /// Last assigned sequence number (0: no message yet).
    seq: u64,
    /// Connections per shard (joined or joining): the interest map for fan-out.
    shard_members: Box<[u32]>,
    /// Sum of `shard_members`.
    connections: u32,
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
    /// Distinct users present → their connection count.
    users: BTreeMap<Arc<str>, u32>,
    /// Wall-clock creation time (ms since the Unix epoch).
    created_ms: u64,
    /// Who created it with `create` (rooms created by a first `join` have none and
    /// cannot be deleted).
    creator: Option<Arc<str>>,
    /// argon2 hash of the password of a private room.
    password: Option<Arc<str>>,
}

static NO_USERS: BTreeMap<Arc<str>, u32> = BTreeMap::new();

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
        format!("{:016x}", self.epoch)
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
        self.users().len() as u32
    }
    /// Connections that joined.
    pub fn connections(&self) -> u32 {
        self.connections
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

    fn users(&self) -> &BTreeMap<Arc<str>, u32> {
        self.presence.as_ref().map_or(&NO_USERS, |p| &p.users)
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
            connections: self.connections,
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
struct RingsOf<'a>(&'a mut FxHashMap<Arc<str>, OwnedRoom>);

impl history::Rings for RingsOf<'_> {
    fn ring(&mut self, room: &str, epoch: u64) -> Option<&mut Ring> {
        self.0.get_mut(room).filter(|r| r.epoch == epoch).and_then(|r| r.history.as_deref_mut())
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
    rooms: FxHashMap<Arc<str>, OwnedRoom>,
    /// Sequence of the broadcast stream (`@all`); used on the shard that owns it.
    broadcast_seq: u64,
    /// Per-room history limits.
    history: Caps,
    /// This shard's share of the server-wide history memory.
    budget: Budget,
    /// How long an empty room keeps its history (ms; 0: dropped at once).
    ttl_ms: u64,
    /// Rooms that emptied, in order: (room, epoch, emptied at). Checked from the front.
    lingering: VecDeque<(Arc<str>, u64, u64)>,
    shards: usize,
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
        }
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
        self.rooms.get(room)
    }

    /// Every owned room, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &OwnedRoom> {
        self.rooms.values()
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
        let room = self.rooms.entry(req.room.clone()).or_insert_with(|| OwnedRoom {
            name: req.room.clone(),
            epoch: fastrand::u64(..),
            seq: 0,
            shard_members: vec![0; shards].into_boxed_slice(),
            connections: 0,
            presence: (!req.room.starts_with(SYSTEM_ROOM_PREFIX))
                .then(|| Box::new(Presence { users: BTreeMap::new(), created_ms: now_ms, creator, password })),
            history: None,
            emptied_ms: 0,
        });
        // A lingering room comes back to life (its expiry entry no longer matches).
        room.emptied_ms = 0;
        let first = !room.is_system() && !room.users().contains_key(&req.user);
        // Announce before counting the joiner: it is not a local member until its ack
        // arrives, so its shard only needs the event if others there are members.
        if first && room.user_count() < self.presence_events_max {
            room.fan_out(&server::presence_event(true, &room.name, &req.user), sink);
        }
        if let Some(n) = room.shard_members.get_mut(req.origin.shard) {
            *n += 1;
        }
        room.connections += 1;
        if let Some(p) = room.presence.as_mut() {
            *p.users.entry(req.user.clone()).or_insert(0) += 1;
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
        room.connections -= 1;
        let mut gone = false;
        if let Some(p) = room.presence.as_mut() {
            if let Some(count) = p.users.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    p.users.remove(user);
                    gone = true;
                }
            }
        }
        if room.connections == 0 {
            if room.history_len() > 0 && self.ttl_ms > 0 {
                // Keep the history a while: a brief gap must not lose it.
                room.emptied_ms = now_ms;
                self.lingering.push_back((room.name.clone(), room.epoch, now_ms));
            } else {
                self.drop_room(room_name);
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
        self.drop_room(&req.room);
    }

    /// Removes a room and gives its history back to the budget.
    fn drop_room(&mut self, name: &str) {
        if let Some(room) = self.rooms.remove(name) {
            if let Some(h) = room.history {
                self.budget.dropped(h.bytes(), h.len());
            }
        }
    }

    /// Drops rooms that have lingered empty longer than the history TTL.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some((name, epoch, since)) = self.lingering.front().cloned() {
            if since + self.ttl_ms > now_ms {
                break;
            }
            self.lingering.pop_front();
            let still =
                self.rooms.get(&name).is_some_and(|r| r.epoch == epoch && r.connections == 0 && r.emptied_ms == since);
            if still {
                self.drop_room(&name);
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
        }
    }

    /// Sequences a message: next `seq`, `ts` = `now_ms`, one frame, one hand-off per
    /// member shard. A client sender with an `id` gets an `ack`; an API caller gets the
    /// seq and the shards reached.
    pub fn publish(&mut self, msg: Publish, now_ms: u64, sink: &mut Sink<'_>) {
        let Some(room) = self.rooms.get_mut(&msg.room) else {
            match &msg.from {
                // The sender's membership ended before its message arrived here.
                Requester::Conn(c) => reply_error(c, ErrorCode::NotMember, "you are not a member of this room", sink),
                Requester::Api(r) => reply(r, Reply::Published { seq: None, shards: Vec::new() }, sink),
            }
            return;
        };
        room.seq += 1;
        let frame = server::message(&room.name, room.seq, &msg.user, &msg.text, now_ms);
        let shards = room.fan_out(&frame, sink);
        let seq = room.seq;
        if self.history.messages > 0 {
            let len = frame.len();
            let (bytes, count) = room.history.get_or_insert_with(Box::default).push(seq, frame, self.history);
            let (name, epoch) = (room.name.clone(), room.epoch);
            self.budget.pushed(&name, epoch, seq, len, bytes, count);
            self.budget.enforce(&mut RingsOf(&mut self.rooms));
        }
        let Some(room) = self.rooms.get(&msg.room) else { return };
        match &msg.from {
            Requester::Conn(c) => {
                if let Some(reference) = &c.reference {
                    sink(
                        c.shard,
                        ShardMsg::ToConn { conn: c.conn, frame: server::ack(reference, &room.name, room.seq) },
                    );
                }
            }
            Requester::Api(r) => reply(r, Reply::Published { seq: Some(room.seq), shards }, sink),
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
        if let Requester::Api(r) = &msg.from {
            let shards = (0..self.shards as u16).collect();
            reply(r, Reply::Published { seq: Some(self.broadcast_seq), shards }, sink);
        }
    }

    /// Answers a presence query with one page of user names (sorted) and the total count.
    pub fn presence(&self, req: PresenceReq, sink: &mut Sink<'_>) {
        let page = self.rooms.get(&req.room).filter(|r| !r.is_system()).map(|room| {
            let from = match req.after.as_deref() {
                Some(a) => Bound::Excluded(a),
                None => Bound::Unbounded,
            };
            let limit = req.limit as usize;
            let mut users: Vec<Arc<str>> = room
                .users()
                .range::<str, _>((from, Bound::Unbounded))
                .map(|(u, _)| u.clone())
                .take(limit + 1)
                .collect();
            let next = (users.len() > limit).then(|| {
                users.pop();
                users.last().cloned().unwrap_or_else(|| Arc::from(""))
            });
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
        }
    }

    /// Public rooms owned here: the `limit` largest by members (largest first), or just
    /// `only` when given. Selecting before sorting keeps this fast with a million rooms.
    pub fn summaries(&self, only: Option<&str>, limit: usize) -> Vec<RoomSummary> {
        if let Some(name) = only {
            return self.rooms.get(name).filter(|r| !r.is_system()).map(OwnedRoom::summary).into_iter().collect();
        }
        let mut rooms: Vec<&OwnedRoom> = self.rooms.values().filter(|r| !r.is_system()).collect();
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
