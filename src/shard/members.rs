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

/// Local members per room. Only rooms with at least one local member are present.
#[derive(Default)]
pub(crate) struct LocalRooms {
    rooms: FxHashMap<Arc<str>, Members>,
}

impl LocalRooms {
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

    /// Local members of `room`.
    pub fn get(&self, room: &str) -> Option<&Members> {
        self.rooms.get(room)
    }

    /// Removes and returns the local members of `room`.
    pub fn take(&mut self, room: &str) -> Option<Members> {
        self.rooms.remove(room)
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
        if let Some(frame) = ack.frame {
            self.push(conn, frame);
        }
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

    fn ids(m: &Members) -> Vec<ConnId> {
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
        assert_eq!(ids(&m), (1..40).step_by(2).map(ConnId::for_test).collect::<Vec<_>>());
    }

    #[test]
    fn small_rooms_stay_inline() {
        assert!(std::mem::size_of::<Members>() <= 32, "a room entry stays small");
        let mut rooms = LocalRooms::default();
        rooms.add("r".into(), ConnId::for_test(1));
        rooms.add("r".into(), ConnId::for_test(2));
        assert!(matches!(rooms.get("r"), Some(Members::Few(v)) if !v.spilled()));
        rooms.remove("r", ConnId::for_test(1));
        rooms.remove("r", ConnId::for_test(2));
        assert!(rooms.get("r").is_none(), "empty rooms are forgotten");
    }
}
