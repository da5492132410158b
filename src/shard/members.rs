//! The member side of rooms: which local connections are in which room, and the fan-out
//! of an owner's frame to them.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexSet;
use rustc_hash::{FxBuildHasher, FxHashMap};

use super::conns::ConnId;
use super::msg::JoinAck;
use super::Shard;
use crate::metrics::add;
use crate::rt;

/// Fan-outs to more local members than this run in chunks of this size, yielding to
/// other tasks between chunks when the executor asks for it (a million-member room
/// must not stall heartbeats and reads for the whole broadcast).
const CHUNK: usize = 1024;

/// Local members per room. Only rooms with at least one local member are present.
#[derive(Default)]
pub(crate) struct LocalRooms {
    rooms: FxHashMap<Arc<str>, IndexSet<ConnId, FxBuildHasher>>,
}

impl LocalRooms {
    /// Adds `conn` to `room`.
    pub fn add(&mut self, room: Arc<str>, conn: ConnId) {
        self.rooms.entry(room).or_default().insert(conn);
    }

    /// Removes `conn` from `room`; forgets the room when it has no local member left.
    pub fn remove(&mut self, room: &str, conn: ConnId) {
        if let Some(set) = self.rooms.get_mut(room) {
            set.swap_remove(&conn);
            if set.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Local members of `room`.
    pub fn get(&self, room: &str) -> Option<&IndexSet<ConnId, FxBuildHasher>> {
        self.rooms.get(room)
    }
}

impl Shard {
    /// The owner sequenced a join: the connection becomes a local member from here on,
    /// and gets its `joined` frame. Acks for connections that meanwhile left the room (or
    /// closed) are ignored; their leave is already on its way to the owner.
    pub(super) fn on_join_ack(&self, ack: JoinAck) {
        let mut conns = self.conns.borrow_mut();
        let Some(conn) = conns.get_mut(ack.conn) else { return };
        let Some(i) = conn.membership(&ack.room) else { return };
        let m = &mut conn.rooms[i];
        if m.joined || m.token != ack.token {
            return;
        }
        m.joined = true;
        self.members.borrow_mut().add(ack.room, ack.conn);
        if let Some(frame) = ack.frame {
            self.push(conn, frame);
        }
    }

    /// Hands one shared frame to every local member of `room`.
    pub(super) async fn fan_out(self: &Rc<Self>, room: &str, frame: Bytes) {
        let small = {
            let members = self.members.borrow();
            let Some(set) = members.get(room) else { return };
            if set.len() <= CHUNK {
                let mut conns = self.conns.borrow_mut();
                for id in set {
                    if let Some(conn) = conns.get_mut(*id) {
                        self.push(conn, frame.clone());
                    }
                }
                add(&self.stats.deliveries, set.len() as u64);
                true
            } else {
                false
            }
        };
        if small {
            return;
        }
        // Large room: work from a snapshot, since members may leave while we yield;
        // joins cannot interleave (their acks come through this same inbox, after us).
        let ids: Vec<ConnId> = match self.members.borrow().get(room) {
            Some(set) => set.iter().copied().collect(),
            None => return,
        };
        for chunk in ids.chunks(CHUNK) {
            {
                let mut conns = self.conns.borrow_mut();
                for id in chunk {
                    let Some(conn) = conns.get_mut(*id) else { continue };
                    let still_member = conn.membership(room).is_some_and(|i| conn.rooms[i].joined);
                    if still_member {
                        self.push(conn, frame.clone());
                    }
                }
            }
            add(&self.stats.deliveries, chunk.len() as u64);
            rt::yield_if_needed().await;
        }
    }
}
