//! Presence: the one rule for join/leave events, users reported by other nodes, and
//! presence pages.

use std::sync::Arc;

use super::out::{answer_remote, reference, reply, reply_error, to_conn, ClusterOut, RoomOut, Sink};
use super::request::{PresenceReq, Reply, Requester};
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

impl OwnedRooms {
    /// Node `node` reports that `user` arrived in or left `room`.
    pub fn remote_presence(&mut self, room: &str, node: u64, user: Arc<str>, present: bool, sink: &mut Sink<'_>) {
        let max = self.presence_events_max;
        let Some(room) = self.rooms.get_mut(room) else { return };
        let Some(p) = room.presence.as_mut() else { return };
        let changed = if present { p.users.add_remote(node, &user) } else { p.users.remove_remote(node, &user) };
        // After a join the count includes the user; after a leave it no longer does.
        let counting_them = if present { room.user_count() } else { room.user_count().saturating_add(1) };
        if changed && announced(counting_them, max) {
            room.fan_out(&server::presence_event(present, &room.name, &user), sink);
        }
    }

    /// Node `node` reports all its users of `room` (a snapshot).
    pub fn remote_users(&mut self, room: &str, node: u64, users: &[Arc<str>], sink: &mut Sink<'_>) {
        let max = self.presence_events_max;
        let Some(room) = self.rooms.get_mut(room) else { return };
        let Some(p) = room.presence.as_mut() else { return };
        let before = p.users.count();
        let (arrived, left) = p.users.set_remote(node, users);
        if announced(room.user_count(), max) {
            for u in &arrived {
                room.fan_out(&server::presence_event(true, &room.name, u), sink);
            }
        }
        if announced(before, max) {
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
            let before = p.users.count();
            let left = p.users.drop_node(node);
            if announced(before, max) {
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
                sink(RoomOut::Cluster(ClusterOut::Users { room: r.name.clone(), users, to }));
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

    /// Answers a presence query with one page of user names (sorted) and the total count.
    ///
    /// A requester on another node gets the page (or the error) over the bus when it
    /// names a connection; otherwise it is counted as unanswered ([`Self::take_unanswered`]).
    pub fn presence(&mut self, req: PresenceReq, sink: &mut Sink<'_>) {
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
        let frame =
            |p: &PresencePage| server::presence(&p.room, p.count, p.users.iter().map(|u| &**u), p.next.as_deref());
        match (&req.from, page) {
            (Requester::Conn(c), Some(p)) => to_conn(c, frame(&p), sink),
            (Requester::Conn(c), None) => {
                reply_error(c, ErrorCode::NotMember, "you are not a member of this room", sink)
            }
            (Requester::Api(r), page) => reply(r, Reply::Presence(page), sink),
            (Requester::Remote(r), page) => {
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
}
