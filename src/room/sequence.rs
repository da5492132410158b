//! Sequencing: joins, leaves, deletions, publishes and broadcasts, in the order the
//! owner receives them. Each builds its frame once and hands it to the member shards.

use std::sync::Arc;
use std::time::Instant;

use super::handoff::Takeover;
use super::out::{
    hook_presence, refuse, reply, reply_error, reply_remote, to_conn, ClusterOut, Hook, HookKind, HookMessage,
    LocalAnswer, RoomOut, Sink, ToShard,
};
use super::presence::{send_event, tell_keepers};
use super::recent::Outcome;
use super::request::{DeleteReq, JoinAck, JoinKind, JoinReq, Publish, Reply, Requester, Sender};
use super::retention::Lingering;
use super::{announced, JoinStep, OwnedRoom, OwnedRooms, RingsOf, BROADCAST_ROOM};
use crate::journal::Record;
use crate::protocol::{server, ErrorCode};

impl OwnedRooms {
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
        if self.journal && (creator.is_some() || password.is_some()) {
            let (room, creator, password) = (req.room.clone(), creator.clone(), password.clone());
            sink(RoomOut::Log(Record::Meta { room, creator, password }));
        }
        let (keepers, holds) = (self.keepers(&req.room), self.holds(&req.room));
        let room = self
            .rooms
            .entry(req.room.clone())
            .or_insert_with(|| Box::new(OwnedRoom::new(req.room.clone(), shards, node, now_ms, creator, password)));
        // A lingering room comes back to life (its expiry entry no longer matches).
        room.emptied_ms = 0;
        let first = !room.is_system() && !room.users().is_some_and(|u| u.contains(&req.user));
        // Announce before counting the joiner: it is not a local member until its ack
        // arrives, so its shard only needs the event if others there are members. In a
        // cluster only the room's presence holder knows whether the user is new anywhere.
        if first && holds && announced(room.user_count().saturating_add(1), self.presence_events_max) {
            send_event(node, room, server::presence_event(true, &room.name, &req.user), sink);
        }
        if let Some(n) = room.shard_members.get_mut(req.origin.shard) {
            *n += 1;
        }
        let change = room.presence.as_mut().map(|p| p.users.add_local(&req.user));
        if first && holds {
            hook_presence(self.hooks, &room.name, &req.user, true, room.user_count(), sink);
        }
        let name = room.name.clone();
        // Subscribing asks the room's sequencer for its stream position (see `fresh`).
        let mut asked = false;
        if node != 0 {
            if !room.subscribed {
                room.subscribed = true;
                asked = true;
                sink(RoomOut::Cluster(ClusterOut::Subscribe(room.name.clone())));
            }
            if change.is_some_and(|c| c.local) {
                tell_keepers(node, keepers, &room.name, &req.user, true, sink);
            }
        }
        // A rejoin ahead of this node's copy of the stream is answered once the copy
        // catches up (cluster; see `rejoin`), a first join on a node with no copy of the
        // stream once it knows the stream (see `fresh`); every other join is answered now.
        let unheld = self.hold_rejoin(req, now_ms).and_then(|req| self.hold_first_join(req, asked, now_ms));
        if let Some((req, room)) = unheld.as_ref().zip(self.rooms.get(&name)) {
            ack_join(room, req, sink);
        }
        if holds && change.is_some_and(|c| c.cluster) {
            self.count_changed(&name);
        }
        JoinStep::Done
    }

    /// Sequences a leave of room instance `epoch`. A user's last connection leaving is
    /// announced; a room with no connections left is dropped. Leaves for another instance
    /// (the room was deleted and re-created since) are ignored.
    pub fn leave(&mut self, room_name: &str, user: &str, from: usize, epoch: u32, now_ms: u64, sink: &mut Sink<'_>) {
        let (node, max) = (self.node, self.presence_events_max);
        let (keepers, holds) = (self.keepers(room_name), self.holds(room_name));
        let Some(room) = self.rooms.get_mut(room_name).filter(|r| r.epoch as u32 == epoch) else { return };
        match room.shard_members.get_mut(from) {
            Some(n) if *n > 0 => *n -= 1,
            // A leave without a matching join would corrupt the counts: ignore it.
            _ => return,
        }
        let change = room.presence.as_mut().map(|p| p.users.remove_local(user));
        let gone = holds && change.is_some_and(|c| c.cluster);
        if change.is_some_and(|c| c.local) {
            tell_keepers(node, keepers, &room.name, &Arc::from(user), false, sink);
        }
        // The room had `user_count() + 1` users, the leaver included.
        if gone && announced(room.user_count().saturating_add(1), max) {
            send_event(node, room, server::presence_event(false, &room.name, user), sink);
        }
        if gone {
            hook_presence(self.hooks, &room.name, &Arc::from(user), false, room.user_count(), sink);
        }
        if gone {
            self.count_changed(room_name);
        }
        self.release(room_name, now_ms, sink);
    }

    /// Lets go of a room nobody uses any more: no local connection and no other node's
    /// users kept here. With history and a TTL it lingers (a brief gap must not lose
    /// it); otherwise it goes at once. Rooms already lingering are left to expire.
    pub(super) fn release(&mut self, name: &str, now_ms: u64, sink: &mut Sink<'_>) {
        let Some(room) = self.rooms.get_mut(name) else { return };
        if room.connections() > 0 || room.has_remote_users() || room.emptied_ms != 0 {
            return;
        }
        if room.history_len() > 0 && self.ttl_ms > 0 {
            room.emptied_ms = now_ms;
            let l = Lingering { room: room.name.clone(), epoch: room.epoch, since_ms: now_ms, linger_ms: self.ttl_ms };
            self.lingering.push_back(l);
        } else {
            self.drop_room(name, sink);
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
        // Held joins are answered first, so that their members hear of the deletion.
        self.answer_held(&req.room, true, sink);
        let Some(room) = self.rooms.get(&req.room) else { return };
        let frame = server::deleted(&room.name);
        for (shard, &n) in room.shard_members.iter().enumerate() {
            if n > 0 {
                let msg = ToShard::RoomDeleted {
                    room: room.name.clone(),
                    epoch: room.epoch as u32,
                    frame: frame.clone(),
                    by: req.origin.clone(),
                };
                sink(RoomOut::Shard(shard, msg));
            }
        }
        to_conn(&req.origin, frame, sink);
        self.drop_room(&req.room, sink);
    }

    /// Sequences a message: next `seq`, `ts` = `now_ms`, one frame, one hand-off per
    /// member shard. A client sender with an `id` gets an `ack`; an API caller gets the
    /// seq and the shards reached.
    ///
    /// A volatile message takes no `seq`, is not stored and goes to the current members
    /// only; it still passes through here, in the owner's one order, so a sender's
    /// volatile and sequenced messages reach every member in the order it sent them.
    /// With `skip`, the sending connection is left out of the fan-out. With an
    /// idempotency key seen within the window, the first outcome is answered again and
    /// nothing is sequenced or delivered.
    ///
    /// In a cluster this runs on the room's sequencer node only. Then the frame also goes
    /// to the bus, a room without local members is created to carry the stream (other
    /// nodes may have members), and taking over a stream another node sequenced waits
    /// for its handoff mark and continues it, or starts a new epoch (see `handoff`).
    pub fn publish(&mut self, msg: Publish, now_ms: u64, sink: &mut Sink<'_>) {
        if let Some(key) = &msg.extra.idempotency_key {
            if let Some(first) = self.recent.get(&msg.room, key, now_ms) {
                answer_publish(&msg, first.seq, first.shards, self.node != 0, sink);
                return;
            }
        }
        // A personal room is made by the first message to it (see `online`).
        self.open_personal(&msg.room, now_ms, sink);
        let node = self.node;
        if node != 0 && !self.rooms.contains_key(&msg.room) && !matches!(msg.from, Requester::Conn(_)) {
            self.relay_room(&msg.room, now_ms);
        }
        // Taking over a stream another node sequenced continues it after that node's
        // handoff mark, or starts a new epoch (see `handoff`).
        let msg = match self.takeover(msg, now_ms, sink) {
            Takeover::Go(msg) => msg,
            Takeover::Held => return,
        };
        let Some(room) = self.rooms.get_mut(&msg.room) else {
            if let Some(key) = &msg.extra.idempotency_key {
                // A retry answers "nobody reached" too, even if someone arrived since.
                let first = Outcome { seq: None, shards: Vec::new() };
                self.recent.insert(msg.room.clone(), key.clone(), first, now_ms);
            }
            match &msg.from {
                // The sender's membership ended before its message arrived here.
                Requester::Conn(c) => reply_error(c, ErrorCode::NotMember, "you are not a member of this room", sink),
                Requester::Api(r) => reply(r, Reply::Published { seq: None, shards: Vec::new() }, sink),
                Requester::Remote(r) => reply_remote(r, None, false, &msg.room, sink),
            }
            return;
        };
        if room.emptied_ms != 0 && room.connections() == 0 {
            room.emptied_ms = now_ms;
        }
        let volatile = msg.extra.volatile;
        let seq = if volatile {
            None
        } else {
            room.seq += 1;
            Some(room.seq)
        };
        let frame = server::room_message(&room.name, seq, &msg.user, &msg.payload(), now_ms);
        if let (Some(seq), true) = (seq, self.journal) {
            let (room, epoch, frame) = (room.name.clone(), room.stream, frame.clone());
            sink(RoomOut::Log(Record::Frame { room, epoch, seq, ts: now_ms, frame }));
        }
        if let (Some(seq), true) = (seq, self.message_hooks) {
            // Emitted where the message is sequenced: once cluster-wide, in seq order.
            let message = HookMessage {
                epoch: room.stream,
                seq,
                ts: now_ms,
                text: msg.text.clone(),
                data: msg.extra.data.clone(),
                event: msg.extra.event.clone(),
                tags: msg.extra.tags.clone(),
            };
            let (kind, room, user) = (HookKind::MessagePublished, room.name.clone(), Some(msg.user.clone()));
            sink(RoomOut::Hook(Hook { kind, room, user, message: Some(Box::new(message)) }));
        }
        let skip = msg.extra.skip.filter(|s| s.node == 0 || s.node == node);
        let shards = room.fan_out_skipping(&frame, skip, sink);
        if node != 0 {
            let skip = msg.extra.skip.map(|s| Sender { node: if s.node == 0 { node } else { s.node }, ..s });
            let out = match seq {
                Some(seq) => {
                    ClusterOut::Frame { room: room.name.clone(), epoch: room.stream, seq, frame: frame.clone(), skip }
                }
                None => ClusterOut::Volatile { room: room.name.clone(), frame: frame.clone(), skip },
            };
            sink(RoomOut::Cluster(out));
        }
        if self.history.messages > 0 && !volatile {
            room.remember(frame, self.history, &mut self.budget);
            self.budget.enforce(&mut RingsOf(&mut self.rooms));
        }
        if node != 0 {
            // Joins held here for a stream this node now sequences (see `rejoin`, `fresh`).
            self.answer_held(&msg.room, false, sink);
        }
        // A volatile message answers `Some(0)`: handed out, with no position.
        let seq = Some(seq.unwrap_or(0));
        if let Some(key) = &msg.extra.idempotency_key {
            let first = Outcome { seq, shards: shards.clone() };
            self.recent.insert(msg.room.clone(), key.clone(), first, now_ms);
        }
        answer_publish(&msg, seq, shards, node != 0, sink);
    }

    /// Sequences a message to everyone (the `@all` stream; only its owner shard calls
    /// this) and hands the one frame to every shard. A volatile broadcast takes no seq.
    pub fn broadcast(&mut self, msg: Publish, now_ms: u64, sink: &mut Sink<'_>) {
        if let Some(key) = &msg.extra.idempotency_key {
            if let Some(first) = self.recent.get(BROADCAST_ROOM, key, now_ms) {
                answer_publish(&msg, first.seq, first.shards, self.node != 0, sink);
                return;
            }
        }
        let volatile = msg.extra.volatile;
        if !volatile {
            self.broadcast_seq += 1;
        }
        let seq = (!volatile).then_some(self.broadcast_seq);
        let frame = server::room_message(BROADCAST_ROOM, seq, &msg.user, &msg.payload(), now_ms);
        let sent_at = Instant::now();
        for shard in 0..self.shards {
            sink(RoomOut::Shard(shard, ToShard::DeliverAll { frame: frame.clone(), sent_at }));
        }
        if self.node != 0 {
            // A volatile broadcast travels with seq 0, which no receiver checks.
            sink(RoomOut::Cluster(ClusterOut::Broadcast { seq: seq.unwrap_or(0), frame }));
        }
        let seq = Some(seq.unwrap_or(0));
        let shards: Vec<u16> = (0..self.shards as u16).collect();
        if let Some(key) = &msg.extra.idempotency_key {
            let first = Outcome { seq, shards: shards.clone() };
            self.recent.insert(Arc::from(BROADCAST_ROOM), key.clone(), first, now_ms);
        }
        match &msg.from {
            Requester::Conn(_) => {}
            _ => answer_publish(&msg, seq, shards, self.node != 0, sink),
        }
    }
}

/// Answers a counted join on `room` as things stand: the frames after its `since`
/// (if the history reaches back that far), then `joined`; the joiner becomes a local
/// member when this reaches its shard. Returns what `joined` says of the recovery.
pub(super) fn ack_join(room: &OwnedRoom, req: &JoinReq, sink: &mut Sink<'_>) -> Option<bool> {
    let private = room.password().is_some();
    let since = match &req.kind {
        JoinKind::Join { since, .. } => since.as_ref(),
        JoinKind::Create { .. } => None,
    };
    let (replay, recovered) = room.recover(since);
    let frame = server::joined(&room.name, room.user_count(), room.seq, &room.epoch(), recovered, private);
    let ack = JoinAck {
        room: room.name.clone(),
        conn: req.origin.conn,
        token: req.token,
        epoch: room.epoch as u32,
        user: req.user.clone(),
        replay,
        frame,
    };
    sink(RoomOut::Shard(req.origin.shard, ToShard::JoinAck(Box::new(ack))));
    recovered
}

/// Answers whoever published `msg`: an `ack` to a client that gave an `id` (without
/// `seq` for a volatile message), the outcome to an API caller, here or on another node.
///
/// In a cluster (`clustered`), the answer to a publisher on this node goes through the
/// bridge, behind the message's frame ([`ClusterOut::AfterBus`]): an `ack` then means the
/// frame has left the process. A publisher on another node is answered over the bus,
/// behind the frame already.
fn answer_publish(msg: &Publish, seq: Option<u64>, shards: Vec<u16>, clustered: bool, sink: &mut Sink<'_>) {
    let room = &msg.room;
    match &msg.from {
        Requester::Conn(c) => {
            if let Some(reference) = &c.reference {
                let frame = match seq {
                    Some(seq) if !msg.extra.volatile => server::ack(reference, room, seq),
                    _ => server::ack_volatile(reference, room),
                };
                if clustered {
                    let answer = LocalAnswer::ToConn { conn: c.conn, frame };
                    sink(RoomOut::Cluster(ClusterOut::AfterBus { shard: c.shard, answer }));
                } else {
                    to_conn(c, frame, sink);
                }
            }
        }
        Requester::Api(r) if clustered => {
            let answer = LocalAnswer::Published { req: r.req, seq, shards };
            sink(RoomOut::Cluster(ClusterOut::AfterBus { shard: r.shard, answer }));
        }
        Requester::Api(r) => reply(r, Reply::Published { seq, shards }, sink),
        Requester::Remote(r) => reply_remote(r, seq, msg.extra.volatile, room, sink),
    }
}
