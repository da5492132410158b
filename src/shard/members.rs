//! The member side of rooms: which local connections are in which room (the fan-out
//! that reads it is in `fanout`).

use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexSet;
use rustc_hash::{FxBuildHasher, FxHashMap};
use smallvec::SmallVec;

use super::conns::ConnId;
use super::msg::{ConnRef, JoinAck, JoinRefused, ShardMsg};
use super::outbox::Pushed;
use super::Shard;
use crate::protocol;

/// Local members per room. Only rooms with at least one local member are present.
///
/// Personal rooms (`@user:<id>`) have no entry of their own: every connection of a user
/// is a member of the user's personal room from its `welcome` to its close, so their
/// members are the user's local connections, kept by user id under the connection's own
/// `Arc` (no name, no membership record, no join: docs/DESIGN-NOTES.md, "Memory per
/// connection").
#[derive(Default)]
pub(crate) struct LocalRooms {
    rooms: FxHashMap<Arc<str>, Members>,
    users: FxHashMap<Arc<str>, UserConns>,
}

impl LocalRooms {
    /// Adds `conn`, a connection of `user`, to the user's personal room. True if it is
    /// the user's first connection here (the room's owner is then told).
    pub fn add_user(&mut self, user: &Arc<str>, conn: ConnId) -> bool {
        match self.users.get_mut(user) {
            Some(conns) => {
                conns.insert(conn);
                false
            }
            None => {
                self.users.insert(user.clone(), UserConns::One(conn));
                true
            }
        }
    }

    /// Removes `conn` from `user`'s personal room. True if that was the user's last
    /// connection here.
    pub fn remove_user(&mut self, user: &str, conn: ConnId) -> bool {
        let Some(conns) = self.users.get_mut(user) else { return false };
        if !conns.remove(conn) {
            return false;
        }
        self.users.remove(user);
        true
    }

    /// Adds `conn` to `room`.
    pub fn add(&mut self, room: Arc<str>, conn: ConnId) {
        self.rooms.entry(room).or_default().insert(conn);
    }

    /// Removes `conn` from `room`; forgets the room when it has no local member left.
    pub fn remove(&mut self, room: &str, conn: ConnId) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(conn);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Local members of `room` (for a personal room, its user's local connections).
    pub fn get(&self, room: &str) -> Option<Local<'_>> {
        match protocol::room_user(room) {
            Some(user) => self.users.get(user).map(Local::User),
            None => self.rooms.get(room).map(Local::Room),
        }
    }

    /// Removes and returns the local members of `room`.
    pub fn take(&mut self, room: &str) -> Option<Members> {
        self.rooms.remove(room)
    }
}

/// One user's local connections, the members of its personal room: nearly always one,
/// kept inline (an entry per connected user is then 32 bytes).
pub(crate) enum UserConns {
    /// The usual case.
    One(ConnId),
    /// Two or more (emptied back to none only by the last removal).
    More(Box<Members>),
}

impl UserConns {
    /// Adds `id` (no effect if present).
    fn insert(&mut self, id: ConnId) {
        match self {
            UserConns::One(one) if *one == id => {}
            UserConns::One(one) => {
                let mut more = Members::default();
                more.insert(*one);
                more.insert(id);
                *self = UserConns::More(Box::new(more));
            }
            UserConns::More(more) => more.insert(id),
        }
    }

    /// Removes `id`; true if none is left.
    fn remove(&mut self, id: ConnId) -> bool {
        match self {
            UserConns::One(one) => *one == id,
            UserConns::More(more) => {
                more.remove(id);
                more.is_empty()
            }
        }
    }
}

/// The local members of one room, as [`LocalRooms::get`] finds them.
pub(crate) enum Local<'a> {
    /// A room's member set.
    Room(&'a Members),
    /// A personal room's: its user's connections.
    User(&'a UserConns),
}

impl Local<'_> {
    /// Number of members.
    pub fn len(&self) -> usize {
        match *self {
            Local::Room(m) => m.len(),
            Local::User(UserConns::More(m)) => m.len(),
            Local::User(UserConns::One(_)) => 1,
        }
    }

    /// Calls `f` for every member.
    pub fn for_each(&self, mut f: impl FnMut(ConnId)) {
        match *self {
            Local::Room(m) => m.for_each(f),
            Local::User(UserConns::More(m)) => m.for_each(f),
            Local::User(UserConns::One(id)) => f(*id),
        }
    }
}

/// Rooms up to this many local members keep them inline in a small vector (most rooms,
/// and every personal room, are small: a hash index would cost ~150 B per room for
/// nothing); larger rooms switch to an indexed set with O(1) removal.
const INLINE_MAX: usize = 16;

/// The local members of one room.
pub(crate) enum Members {
    /// Small rooms: no heap for up to two members, linear search below `INLINE_MAX`.
    Few(SmallVec<[ConnId; 2]>),
    /// Large rooms: O(1) insert and removal. Boxed so that small rooms (nearly all of
    /// them) do not pay for the index's inline size.
    Many(Box<IndexSet<ConnId, FxBuildHasher>>),
}

impl Default for Members {
    fn default() -> Self {
        Members::Few(SmallVec::new())
    }
}

impl Members {
    /// Adds `id` (no effect if present).
    pub fn insert(&mut self, id: ConnId) {
        match self {
            Members::Few(v) if v.contains(&id) => {}
            Members::Few(v) if v.len() < INLINE_MAX => v.push(id),
            Members::Few(v) => {
                let set = v.drain(..).chain([id]).collect();
                *self = Members::Many(Box::new(set));
            }
            Members::Many(set) => {
                set.insert(id);
            }
        }
    }

    /// Removes `id` (no effect if absent).
    pub fn remove(&mut self, id: ConnId) {
        match self {
            Members::Few(v) => {
                if let Some(i) = v.iter().position(|m| *m == id) {
                    v.swap_remove(i);
                }
            }
            Members::Many(set) => {
                set.swap_remove(&id);
            }
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        match self {
            Members::Few(v) => v.len(),
            Members::Many(set) => set.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` for every member.
    pub fn for_each(&self, mut f: impl FnMut(ConnId)) {
        match self {
            Members::Few(v) => v.iter().copied().for_each(&mut f),
            Members::Many(set) => set.iter().copied().for_each(&mut f),
        }
    }
}

impl Shard {
    /// The owner sequenced a join: the connection becomes a local member from here on,
    /// and gets its `joined` frame. If the connection meanwhile left the room, re-joined
    /// (a newer token) or closed, it no longer wants this join: the owner counted it, so
    /// it is undone with a leave. This is the only place a pending join is undone, which
    /// keeps every counted join matched by exactly one leave.
    pub(super) fn on_join_ack(&self, ack: JoinAck) {
        let mut conns = self.conns.borrow_mut();
        let wanted = conns.get_mut(ack.conn).and_then(|conn| {
            let i = conn.rooms.iter().position(|m| *m.room == *ack.room && m.pending == ack.token)?;
            Some((conn, i))
        });
        let Some((conn, i)) = wanted else {
            let undo = ShardMsg::Leave { room: ack.room.clone(), user: ack.user, from: self.id, epoch: ack.epoch };
            self.mesh.send(self.mesh.owner_of(&ack.room), undo);
            return;
        };
        let m = &mut conn.rooms[i];
        m.pending = 0;
        m.epoch = ack.epoch;
        self.members.borrow_mut().add(ack.room, ack.conn);
        // Recovery: the missed messages, then `joined`, then (through this inbox, after
        // this ack) the live stream: no gap, no duplicate.
        for frame in ack.replay {
            if matches!(conn.push_replay(frame), Pushed::QueuedWake) {
                conn.wake();
            }
        }
        self.push(conn, ack.frame);
    }

    /// The owner refused a join (nothing was counted): drop the pending membership and
    /// pass on the error.
    pub(super) fn on_join_refused(&self, refused: JoinRefused) {
        let mut conns = self.conns.borrow_mut();
        let Some(conn) = conns.get_mut(refused.conn) else { return };
        let Some(i) = conn.rooms.iter().position(|m| *m.room == *refused.room && m.pending == refused.token) else {
            return;
        };
        conn.rooms.remove(i);
        self.push(conn, refused.frame);
    }

    /// A room instance was deleted: its local members stop being members (no leave is
    /// owed: the instance is gone) and are told, except the one who deleted it, who was
    /// told directly.
    pub(super) fn on_room_deleted(&self, room: &str, epoch: u32, frame: Bytes, by: &ConnRef) {
        let Some(members) = self.members.borrow_mut().take(room) else { return };
        let mut conns = self.conns.borrow_mut();
        members.for_each(|id| {
            let Some(conn) = conns.get_mut(id) else { return };
            if let Some(i) = conn.rooms.iter().position(|m| *m.room == *room && m.joined() && m.epoch == epoch) {
                conn.rooms.remove(i);
                if !(by.shard == self.id && by.conn == id) {
                    self.push(conn, frame.clone());
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(m: &Local<'_>) -> Vec<ConnId> {
        let mut v = Vec::new();
        m.for_each(|id| v.push(id));
        v.sort();
        v
    }

    #[test]
    fn members_grow_into_an_index_and_keep_set_semantics() {
        let mut m = Members::default();
        for n in 0..40 {
            m.insert(ConnId::for_test(n));
            m.insert(ConnId::for_test(n));
        }
        assert!(matches!(m, Members::Many(_)));
        assert_eq!(m.len(), 40);
        for n in (0..40).step_by(2) {
            m.remove(ConnId::for_test(n));
        }
        m.remove(ConnId::for_test(1000));
        assert_eq!(ids(&Local::Room(&m)), (1..40).step_by(2).map(ConnId::for_test).collect::<Vec<_>>());
    }

    #[test]
    fn small_rooms_stay_inline() {
        assert!(std::mem::size_of::<Members>() <= 32, "a room entry stays small");
        let mut rooms = LocalRooms::default();
        rooms.add("r".into(), ConnId::for_test(1));
        rooms.add("r".into(), ConnId::for_test(2));
        assert!(matches!(rooms.get("r"), Some(Local::Room(Members::Few(v))) if !v.spilled()));
        rooms.remove("r", ConnId::for_test(1));
        rooms.remove("r", ConnId::for_test(2));
        assert!(rooms.get("r").is_none(), "empty rooms are forgotten");
    }

    #[test]
    fn a_users_connections_are_the_members_of_its_personal_room() {
        assert!(std::mem::size_of::<UserConns>() <= 16, "an entry per connected user stays small");
        let mut rooms = LocalRooms::default();
        let ann: Arc<str> = Arc::from("ann");
        assert!(rooms.add_user(&ann, ConnId::for_test(1)), "the first connection is news for the owner");
        assert!(!rooms.add_user(&ann, ConnId::for_test(2)));
        assert!(rooms.add_user(&Arc::from("bob"), ConnId::for_test(3)));
        assert_eq!(rooms.get("@user:ann").as_ref().map(ids), Some(vec![ConnId::for_test(1), ConnId::for_test(2)]));
        assert!(rooms.get("ann").is_none() && rooms.get("@user:an").is_none(), "only the personal room's name");
        assert!(!rooms.remove_user("ann", ConnId::for_test(1)));
        assert!(!rooms.remove_user("ann", ConnId::for_test(9)), "not a connection of ann");
        assert!(rooms.remove_user("ann", ConnId::for_test(2)), "the last connection is news for the owner");
        assert!(rooms.get("@user:ann").is_none());
        assert!(!rooms.remove_user("ann", ConnId::for_test(2)), "told once");
        assert_eq!(rooms.get("@user:bob").as_ref().map(ids), Some(vec![ConnId::for_test(3)]));
    }
}
