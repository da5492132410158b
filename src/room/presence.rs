//! Presence: the one rule for join/leave events, the cluster's presence keepers (users
//! reported by other nodes, events, counts, node changes), and presence pages.
//!
//! In a cluster a room's user list lives on its two keepers ([`super::placement`]): the
//! holder (the room's sequencer) and the replica. Every node tells the keepers when a
//! user's first connection on it arrives or its last one leaves; the holder alone
//! decides join/leave events and sends them to every node with members, and reports the
//! room's count to them. Other nodes keep only their own users, answer `members` from
//! the holder's last count, and forward presence pages to the holder.

use std::sync::Arc;

use bytes::Bytes;

use super::out::{answer_remote, hook_presence, reference, reply, reply_error, to_conn, ClusterOut, RoomOut, Sink};
use super::placement;
use super::request::{PresenceReq, Remote, Reply, ReplyRef, Requester};
use super::users::Users;
use super::{OwnedRoom, OwnedRooms, PresencePage};
use crate::protocol::{server, ErrorCode};

/// The presence-event rule, the only place it is written: a user's arrival or departure
/// is announced when the room, counting that user, has at most `max` users — that is,
/// after a join, or before a leave. So the N-th user's join and the same user's leave are
/// both announced, and the (N+1)-th user's join and leave are both not; `max == 0` turns
/// events off. A batch of changes reported at once by another node counts as one change
/// (its arrivals are counted after it, its departures before it): all of its events are
/// sent or none. docs/PROTOCOL.md states the rule for clients.
pub fn announced(users_counting_them: u32, max: u32) -> bool {
    users_counting_them <= max
}

/// Sends a join/leave `frame` to the members: the local ones, and, from the holder in a
/// cluster (`node != 0`), the other nodes' (on the room subject).
pub(super) fn send_event(node: u64, room: &OwnedRoom, frame: Bytes, sink: &mut Sink<'_>) {
    room.fan_out(&frame, sink);
    if node != 0 {
        sink(RoomOut::Cluster(ClusterOut::Event { room: room.name.clone(), frame }));
    }
}

/// Tells a room's keepers other than this node (`me`) that `user`'s first connection here
/// arrived (or its last one left). Nothing on a single node (`me == 0`).
pub(super) fn tell_keepers(
    me: u64,
    keepers: [Option<u64>; 2],
    room: &Arc<str>,
    user: &Arc<str>,
    present: bool,
    sink: &mut Sink<'_>,
) {
    if me == 0 {
        return;
    }
    for to in keepers.into_iter().flatten().filter(|&k| k != me) {
        sink(RoomOut::Cluster(ClusterOut::Presence { room: room.clone(), user: user.clone(), present, to }));
    }
}

impl OwnedRooms {
    /// The keepers of `room`'s presence among the live nodes (`[holder, replica]`).
    pub(super) fn keepers(&self, room: &str) -> [Option<u64>; 2] {
        placement::keepers(room, &self.nodes)
    }

    /// Whether this node decides `room`'s presence events and counts: always on a single
    /// node, and on the room's holder in a cluster.
    pub(super) fn holds(&self, room: &str) -> bool {
        self.node == 0 || self.keepers(room)[0].is_none_or(|h| h == self.node)
    }

    /// Notes that `room`'s cluster-wide count changed, for the next [`Self::report_counts`]
    /// (holders in a cluster only).
    pub(super) fn count_changed(&mut self, name: &str) {
        if self.node == 0 {
            return;
        }
        if let Some(p) = self.rooms.get_mut(name).and_then(|r| r.presence.as_mut()) {
            if !p.count_dirty {
                p.count_dirty = true;
                self.dirty_counts.push(name.into());
            }
        }
    }

    /// The room `name` for state another node reports, created (with no local member)
    /// if this node has none: a keeper holds a room's users whether or not its own
    /// clients are in it.
    fn kept_room(&mut self, name: &str, now_ms: u64) -> Option<&mut OwnedRoom> {
        if !self.rooms.contains_key(name) {
            let name: Arc<str> = name.into();
            let room = OwnedRoom::new(name.clone(), self.shards, self.node, now_ms, None, None);
            room.presence.as_ref()?;
            self.rooms.insert(name, Box::new(room));
        }
        self.rooms.get_mut(name).map(|r| &mut **r)
    }

    /// Node `node` reports that `user`'s first connection there arrived in `room`, or its
    /// last one left. Kept whether or not this node thinks it keeps the room (the sender's
    /// view of the live nodes may be ahead of ours); events only from the holder.
    pub fn remote_presence(
        &mut self,
        name: &str,
        node: u64,
        user: Arc<str>,
        present: bool,
        now_ms: u64,
        sink: &mut Sink<'_>,
    ) {
        if self.remote_personal(name, node, &user, present, sink) {
            return;
        }
        let (me, max, hooks) = (self.node, self.presence_events_max, self.hooks);
        let holds = self.holds(name);
        let room = if present { self.kept_room(name, now_ms) } else { self.rooms.get_mut(name).map(|r| &mut **r) };
        let Some(room) = room else { return };
        let Some(p) = room.presence.as_mut() else { return };
        let changed = if present { p.users.add_remote(node, &user) } else { p.users.remove_remote(node, &user) };
        if !changed {
            return;
        }
        // After a join the count includes the user; after a leave it no longer does.
        let counting_them = if present { room.user_count() } else { room.user_count().saturating_add(1) };
        if holds && announced(counting_them, max) {
            send_event(me, room, server::presence_event(present, &room.name, &user), sink);
        }
        if holds {
            hook_presence(hooks, &room.name, &user, present, room.user_count(), sink);
        }
        self.count_changed(name);
        if !present {
            self.release(name, now_ms, sink);
        }
    }

    /// Node `node` reports all its users of `room` (a snapshot, replacing what it
    /// reported before). Its differences are announced by the holder when it knew the
    /// room's users before: it had heard from that node, or it kept the room already.
    /// A holder that just took a room over hears every node's snapshot once and must
    /// not announce all of their users as arrivals.
    pub fn remote_users(&mut self, name: &str, node: u64, users: &[Arc<str>], now_ms: u64, sink: &mut Sink<'_>) {
        if self.remote_personal_users(name, node, users, sink) {
            return;
        }
        let (me, max, hooks) = (self.node, self.presence_events_max, self.hooks);
        let holds = self.holds(name);
        let existed = self.rooms.contains_key(name);
        let room =
            if users.is_empty() { self.rooms.get_mut(name).map(|r| &mut **r) } else { self.kept_room(name, now_ms) };
        let Some(room) = room else { return };
        let Some(p) = room.presence.as_mut() else { return };
        let settled = existed && (p.users.knows(node) || p.settled);
        if !existed {
            p.settled = false;
        }
        let before = p.users.count();
        let (arrived, left) = p.users.set_remote(node, users);
        if arrived.is_empty() && left.is_empty() {
            return;
        }
        if holds && settled {
            if announced(room.user_count(), max) {
                for u in &arrived {
                    send_event(me, room, server::presence_event(true, &room.name, u), sink);
                }
            }
            if announced(before, max) {
                for u in &left {
                    send_event(me, room, server::presence_event(false, &room.name, u), sink);
                }
            }
            // Webhooks count one change at a time: arrivals from `before` up, then
            // departures down to the count now.
            let mut count = before;
            for u in &arrived {
                count += 1;
                hook_presence(hooks, &room.name, u, true, count, sink);
            }
            for u in &left {
                count = count.saturating_sub(1);
                hook_presence(hooks, &room.name, u, false, count, sink);
            }
        }
        self.count_changed(name);
        self.release(name, now_ms, sink);
    }

    /// Node `node` is dead: its users leave every room (announced by the holders, which
    /// are computed without it).
    pub fn node_gone(&mut self, node: u64, now_ms: u64, sink: &mut Sink<'_>) {
        let live: Arc<[u64]> = self.nodes.iter().copied().filter(|&n| n != node).collect();
        self.change_nodes(live, &[node], now_ms, sink);
    }

    /// The live nodes changed (sorted, this one included): nodes that are gone leave
    /// every room, and where a room's keepers changed this node sends its users to the
    /// new keepers, and forgets the other nodes' users of rooms it no longer keeps.
    pub fn set_nodes(&mut self, live: Arc<[u64]>, now_ms: u64, sink: &mut Sink<'_>) {
        let gone: Vec<u64> = self.nodes.iter().copied().filter(|n| !live.contains(n)).collect();
        self.change_nodes(live, &gone, now_ms, sink);
    }

    fn change_nodes(&mut self, live: Arc<[u64]>, gone: &[u64], now_ms: u64, sink: &mut Sink<'_>) {
        if self.node == 0 || (*live == *self.nodes && gone.is_empty()) {
            return;
        }
        let old = std::mem::replace(&mut self.nodes, live);
        self.online_nodes_changed(&old, gone, sink);
        let (me, max, hooks) = (self.node, self.presence_events_max, self.hooks);
        let names: Vec<Arc<str>> = self.rooms.values().filter(|r| !r.is_system()).map(|r| r.name.clone()).collect();
        for name in names {
            let was = placement::keepers(&name, &old);
            let now = self.keepers(&name);
            let holder = now[0] == Some(me);
            let Some(room) = self.rooms.get_mut(&name) else { continue };
            let Some(p) = room.presence.as_mut() else { continue };
            if !now.contains(&Some(me)) {
                p.users.forget_remote();
            } else if holder && was[0] != Some(me) {
                // Taken over: the list is complete only if this node was the replica.
                p.settled = was.contains(&Some(me));
            }
            if holder {
                p.reported = None;
            }
            let mut left = Vec::new();
            let mut hooked = Vec::new();
            for &dead in gone {
                let before = p.users.count();
                let gone_users = p.users.drop_node(dead);
                if holder && hooks {
                    hooked.extend(gone_users.iter().cloned());
                }
                if announced(before, max) {
                    left.extend(gone_users);
                }
            }
            if holder {
                for u in &left {
                    send_event(me, room, server::presence_event(false, &room.name, u), sink);
                }
                let mut count = room.user_count() + hooked.len() as u32;
                for u in &hooked {
                    count = count.saturating_sub(1);
                    hook_presence(hooks, &room.name, u, false, count, sink);
                }
            }
            let local: Vec<Arc<str>> = room.users().into_iter().flat_map(Users::local).cloned().collect();
            if !local.is_empty() {
                for to in now.into_iter().flatten().filter(|k| *k != me && !was.contains(&Some(*k))) {
                    sink(RoomOut::Cluster(ClusterOut::Users {
                        room: name.clone(),
                        users: local.clone(),
                        to: Some(to),
                    }));
                }
            }
            if holder {
                self.count_changed(&name);
            }
            self.release(&name, now_ms, sink);
        }
    }

    /// This node's users of every room, sent to each room's keepers (this node
    /// reconnected to the bus: the others may have declared it dead and dropped them).
    pub fn resync(&self, sink: &mut Sink<'_>) {
        self.resync_online(sink);
        for room in self.rooms.values().filter(|r| r.subscribed && !r.is_system()) {
            let local: Vec<Arc<str>> = room.users().into_iter().flat_map(Users::local).cloned().collect();
            if local.is_empty() {
                continue;
            }
            for to in self.keepers(&room.name).into_iter().flatten().filter(|&k| k != self.node) {
                let users = local.clone();
                sink(RoomOut::Cluster(ClusterOut::Users { room: room.name.clone(), users, to: Some(to) }));
            }
        }
    }

    /// Node `node` subscribed to `room`: the holder tells it the room's count now, so its
    /// members see the cluster-wide figure before the next change, and its stream
    /// position, so that its first joiners get the stream's epoch (see `fresh`; the
    /// holder is the sequencer, and creates the room to fix its stream if it has none).
    pub fn sync_request(&mut self, name: &str, node: u64, now_ms: u64, sink: &mut Sink<'_>) {
        if !self.holds(name) {
            return;
        }
        self.stream_room(name, now_ms);
        if let Some(room) = self.rooms.get(name).filter(|r| !r.is_system()) {
            let stream = self.stream_position(room);
            let out = ClusterOut::Count { room: room.name.clone(), count: room.user_count(), to: node, stream };
            sink(RoomOut::Cluster(out));
        }
    }

    /// The holder's counts of rooms that changed since the last call, in one report for
    /// every node (called on a timer, so a join storm costs one report per shard per
    /// tick, not one per join, nor one per room and node).
    pub fn report_counts(&mut self, sink: &mut Sink<'_>) {
        let mut counts = Vec::new();
        for name in std::mem::take(&mut self.dirty_counts) {
            let holds = self.holds(&name);
            let Some(room) = self.rooms.get_mut(&name) else { continue };
            let Some(p) = room.presence.as_mut() else { continue };
            p.count_dirty = false;
            if holds {
                counts.push((room.name.clone(), p.users.count()));
            }
        }
        if !counts.is_empty() {
            sink(RoomOut::Cluster(ClusterOut::Counts(counts)));
        }
    }

    /// The holder reports `room`'s count (ignored by the holder itself: its own count is
    /// exact).
    pub fn remote_count(&mut self, name: &str, count: u32) {
        if self.holds(name) {
            return;
        }
        if let Some(p) = self.rooms.get_mut(name).filter(|r| r.subscribed).and_then(|r| r.presence.as_mut()) {
            p.reported = Some(count);
        }
    }

    /// A join/leave event the room's holder sent: handed to the local members, unless
    /// this node already knows the room to be past the event threshold (its own users,
    /// or the holder's later count).
    ///
    /// Why: the holder decides events on the users it has heard of, and during a join
    /// storm the presence messages on their way to it make it lag. It then announces
    /// far more than `--presence-events-max-members` joins, each handed to every member
    /// of every node: O(users²) deliveries that starved the cluster at 1,000,000 joins
    /// (issue 14). A node that can see the room is larger drops the stale events.
    pub fn remote_event(&self, name: &str, frame: Bytes, sink: &mut Sink<'_>) {
        if let Some(room) =
            self.rooms.get(name).filter(|r| r.subscribed && announced(r.user_count(), self.presence_events_max))
        {
            room.fan_out(&frame, sink);
        }
    }

    /// Answers a presence query with one page of user names (sorted) and the total count.
    ///
    /// In a cluster, a node that does not hold the room forwards the query to the holder,
    /// which answers the requester directly. A requester on another node gets the page
    /// (or the error) over the bus.
    pub fn presence(&mut self, req: PresenceReq, sink: &mut Sink<'_>) {
        if let Some(holder) = self.keepers(&req.room)[0].filter(|&h| self.node != 0 && h != self.node) {
            if !matches!(req.from, Requester::Remote(_)) {
                self.forward_presence(holder, req, sink);
                return;
            }
        }
        let page = self.rooms.get(&req.room).filter(|r| !r.is_system()).map(|room| {
            let (users, next) =
                room.users().map(|u| u.page(req.after.as_deref(), req.limit as usize)).unwrap_or_default();
            PresencePage {
                room: room.name.clone(),
                count: room.user_count(),
                users,
                next,
                private: room.password().is_some() || req.private,
            }
        });
        let frame =
            |p: &PresencePage| server::presence(&p.room, p.count, p.users.iter().map(|u| &**u), p.next.as_deref());
        match (&req.from, page) {
            (Requester::Conn(c), Some(p)) => to_conn(c, frame(&p), sink),
            (Requester::Conn(c), None) => {
                reply_error(c, ErrorCode::NotMember, "you are not a member of this room", sink)
            }
            (Requester::Api(r), page) => reply(r, Reply::Presence(page), sink),
            (Requester::Remote(r), page) => {
                if let Some(ReplyRef::Api { shard, req: id }) = &r.reply {
                    let out = ClusterOut::Page { node: r.node, shard: *shard, req: *id, page };
                    sink(RoomOut::Cluster(out));
                    return;
                }
                let frame = match page {
                    Some(p) => frame(&p),
                    None => {
                        server::error(ErrorCode::NotMember, "you are not a member of this room", reference(&req.from))
                    }
                };
                if !answer_remote(r, frame, sink) {
                    self.unanswered += 1;
                }
            }
        }
    }

    /// Sends a presence query to the room's holder, with this node's view of whether the
    /// room is private (the holder may hold it without its password).
    fn forward_presence(&self, holder: u64, req: PresenceReq, sink: &mut Sink<'_>) {
        let reply = match &req.from {
            Requester::Conn(c) => ReplyRef::Conn {
                shard: c.shard as u16,
                conn: c.conn.as_u64(),
                reference: c.reference.as_deref().unwrap_or_default().to_string(),
            },
            Requester::Api(r) => ReplyRef::Api { shard: r.shard as u16, req: r.req },
            Requester::Remote(_) => return,
        };
        let private = req.private || self.rooms.get(&req.room).is_some_and(|r| r.password().is_some());
        let query = PresenceReq {
            room: req.room,
            after: req.after,
            limit: req.limit,
            private,
            from: Requester::Remote(Box::new(Remote {
                node: self.node,
                reply: Some(reply),
                relayed: false,
                receipt: None,
            })),
        };
        sink(RoomOut::Cluster(ClusterOut::PresenceQuery { to: holder, query: Box::new(query) }));
    }
}
