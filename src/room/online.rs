//! Users online cluster-wide: the presence of personal rooms (`@user:<id>`), which the
//! `user_online`/`user_offline` webhooks report.
//!
//! A personal room has no user list (its one user is its owner); what matters is whether
//! the user has a connection anywhere. On a single node that is the room's connection
//! count. In a cluster every node tells the personal room's keepers ([`super::placement`])
//! when the user's first connection on it opens and its last one there closes — the same
//! messages, and as few, as a public room's presence costs — and only the holder emits:
//! the user's first connection anywhere is one `user_online`, the last one anywhere
//! gone is one `user_offline`. When the holder dies the replica, which heard the same
//! reports, takes over.
//!
//! The keepers remember, per personal room, the *other* nodes where the user is
//! connected (an entry only while there are some), beside the room itself, which a node
//! makes only for a user connected to it (kept after only for its history) or, for a
//! while, when it sequences pushes to a user connected elsewhere (`relay_room`): so a
//! keeper holds no room for a user who is merely connected elsewhere.
//!
//! Within a node, a personal room's members are not joined one by one: a shard tells
//! the room's owner when it has its first connection of the user and when its last one
//! there closed ([`OwnedRooms::user_here`]), and delivers the room's frames to all of the
//! user's local connections. The owner keeps that as a set of shards per user
//! (`users_here`, tens of bytes); the room itself, with its stream and history, is made
//! on first use: the first message published to it, or a `history` request
//! ([`OwnedRooms::open_personal`]). A user nobody pushes to costs no room. In a cluster
//! the same holds on every node: the bus delivers every personal room's frames to each
//! node (one wildcard subscription), and a node makes the room with the first frame for
//! a user connected to it (`remote_frame`); frames for anyone else are dropped.

use std::sync::Arc;

use super::out::{ClusterOut, Hook, HookKind, RoomOut, Sink};
use super::placement;
use super::presence::tell_keepers;
use super::{OwnedRoom, OwnedRooms};
use crate::protocol;

/// Whether `room` is a personal room (`protocol::user_room`): its user's first and last
/// connection are `user_online`/`user_offline`.
pub(super) fn personal(room: &str) -> bool {
    protocol::room_user(room).is_some()
}

/// The shards of this node that have connections of one user: one bit per shard, in
/// one word up to 64 shards (16 bytes, one per connected user: it is a table entry's
/// value) and on the heap beyond.
#[derive(Debug)]
pub(super) enum ShardSet {
    /// Shards 0–63.
    Word(u64),
    /// Any shard: word `i` holds shards `64 i` to `64 i + 63`. A thin pointer (a
    /// `Vec` or boxed slice would make every set 8 bytes larger, for machines that
    /// rarely exist).
    #[allow(clippy::box_collection)]
    Words(Box<Vec<u64>>),
}

impl Default for ShardSet {
    fn default() -> Self {
        ShardSet::Word(0)
    }
}

impl ShardSet {
    fn words(&self) -> &[u64] {
        match self {
            ShardSet::Word(w) => std::slice::from_ref(w),
            ShardSet::Words(ws) => ws,
        }
    }

    /// Puts `shard` in (`on`) or out; false if it already was.
    pub(super) fn set(&mut self, shard: usize, on: bool) -> bool {
        if self.contains(shard) == on {
            return false;
        }
        let (word, bit) = (shard / 64, 1u64 << (shard % 64));
        if let ShardSet::Word(w) = *self {
            if word > 0 {
                let mut ws = vec![0; word + 1];
                ws[0] = w;
                *self = ShardSet::Words(Box::new(ws));
            }
        }
        let w = match self {
            ShardSet::Word(w) => w,
            ShardSet::Words(ws) => {
                if ws.len() <= word {
                    ws.resize(word + 1, 0);
                }
                &mut ws[word]
            }
        };
        *w ^= bit;
        true
    }

    pub(super) fn contains(&self, shard: usize) -> bool {
        self.words().get(shard / 64).is_some_and(|w| w & (1u64 << (shard % 64)) != 0)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.words().iter().all(|&w| w == 0)
    }
}

fn emit(kind: HookKind, room: &Arc<str>, user: &Arc<str>, sink: &mut Sink<'_>) {
    sink(RoomOut::Hook(Hook { kind, room: room.clone(), user: Some(user.clone()), message: None }));
}

fn kind(present: bool) -> HookKind {
    if present {
        HookKind::UserOnline
    } else {
        HookKind::UserOffline
    }
}

impl OwnedRooms {
    /// Turns cluster-wide `user_online`/`user_offline` on (cluster mode; a single node
    /// emits them with [`Self::with_hooks`] alone): personal rooms' first and last
    /// connections on this node are then reported to their keepers. Every node of a
    /// cluster must agree on it (a node that does not report its users makes them look
    /// offline to the holder).
    pub fn with_user_hooks(mut self, on: bool) -> Self {
        self.user_hooks = on;
        self
    }

    /// Shard `shard` of this node has its first connection of `user` (`here`), or its
    /// last one there closed (repeats are ignored). The user's personal room, when it
    /// exists, fans out to exactly the shards that have the user; it is made by its first
    /// use, not here (see the module doc). The user's first
    /// connection on this node and its last are `personal_changed`; a room left
    /// without its user is released (kept while it has history and a TTL).
    pub fn user_here(&mut self, user: &Arc<str>, shard: usize, here: bool, now_ms: u64, sink: &mut Sink<'_>) {
        let set = match self.users_here.get_mut(user) {
            Some(set) => set,
            None if here => self.users_here.entry(user.clone()).or_default(),
            None => return,
        };
        let was_empty = set.is_empty();
        if !set.set(shard, here) {
            return;
        }
        let now_empty = set.is_empty();
        if now_empty {
            self.users_here.remove(user);
        }
        let name = protocol::user_room(user);
        if let Some(room) = self.rooms.get_mut(name.as_str()) {
            if let Some(n) = room.shard_members.get_mut(shard) {
                *n = u32::from(here);
            }
            if here {
                // A lingering room comes back to life (its expiry entry no longer matches).
                room.emptied_ms = 0;
            }
            if here && self.node != 0 && !room.subscribed {
                // A room restored from the log, or kept only to carry its stream: the
                // bus's frames for it are taken from now on, as for a new one.
                room.subscribed = true;
                sink(RoomOut::Cluster(ClusterOut::Subscribe(room.name.clone())));
            }
        }
        if was_empty != now_empty {
            self.personal_changed(&name, user, here, sink);
        }
        if !here {
            self.release(&name, now_ms, sink);
        }
    }

    /// Makes personal room `name` if its user is connected to this node and it does not
    /// exist yet, fanning out to the shards that have the user; in a cluster it takes the
    /// bus's frames from then on. Nothing for any other room, or a user not connected
    /// here (a message to a user who is offline is kept only by a room that is still
    /// there for its history).
    ///
    /// Every path that can be a personal room's first use calls it before looking the
    /// room up; for a room that exists it is one lookup.
    pub(super) fn open_personal(&mut self, name: &str, now_ms: u64, sink: &mut Sink<'_>) {
        if self.rooms.contains_key(name) {
            return;
        }
        let Some(set) = protocol::room_user(name).and_then(|user| self.users_here.get(user)) else { return };
        let name: Arc<str> = Arc::from(name);
        let mut room = OwnedRoom::new(name.clone(), self.shards, self.node, now_ms, None, None);
        for (shard, n) in room.shard_members.iter_mut().enumerate() {
            *n = u32::from(set.contains(shard));
        }
        if self.node != 0 {
            // The bus's frames for the room are taken from now on (see `bridge`: the
            // node's one wildcard subscription covers every personal room).
            room.subscribed = true;
            sink(RoomOut::Cluster(ClusterOut::Subscribe(name.clone())));
        }
        self.rooms.insert(name, Box::new(room));
    }

    /// Whether `room`'s user has connections on other nodes (as far as this keeper knows).
    fn online_elsewhere(&self, room: &str) -> bool {
        self.online.get(room).is_some_and(|n| !n.is_empty())
    }

    /// Whether `room` is the personal room of a user connected to this node.
    fn connected_here(&self, room: &str) -> bool {
        protocol::room_user(room).is_some_and(|user| self.users_here.contains_key(user))
    }

    /// The first connection of `user` on this node joined its personal room `room`
    /// (`present`), or the last one here left. On a single node that is the event; in a
    /// cluster the keepers are told and the holder emits it when the user is connected
    /// nowhere else.
    pub(super) fn personal_changed(&mut self, room: &str, user: &Arc<str>, present: bool, sink: &mut Sink<'_>) {
        if self.node == 0 {
            if self.hooks {
                emit(kind(present), &Arc::from(room), user, sink);
            }
            return;
        }
        if !self.user_hooks {
            return;
        }
        // The name is shared by whatever this emits; made only when something is.
        let room: Arc<str> = Arc::from(room);
        let room = &room;
        tell_keepers(self.node, self.keepers(room), room, user, present, sink);
        if self.hooks && self.holds(room) && !self.online_elsewhere(room) {
            emit(kind(present), room, user, sink);
        }
    }

    /// Node `node` reports that `user`'s first connection there opened (`present`) or its
    /// last one closed; the holder emits the event when that is the first connection
    /// anywhere or the last one (this node has no connection of the user either).
    fn remote_online(&mut self, room: &str, node: u64, user: &Arc<str>, present: bool, sink: &mut Sink<'_>) {
        let name: Arc<str> = Arc::from(room);
        let nodes = self.online.entry(name.clone()).or_default();
        let was_empty = nodes.is_empty();
        let changed = if present {
            !nodes.contains(&node) && {
                nodes.push(node);
                true
            }
        } else {
            let before = nodes.len();
            nodes.retain(|&n| n != node);
            before != nodes.len()
        };
        let now_empty = nodes.is_empty();
        if now_empty {
            self.online.remove(room);
        }
        let edge = if present { was_empty } else { now_empty };
        if changed && edge && self.hooks && self.holds(room) && !self.connected_here(room) {
            emit(kind(present), &name, user, sink);
        }
    }

    /// A personal room's [`Self::remote_presence`]; false when `room` is not personal.
    pub(super) fn remote_personal(
        &mut self,
        room: &str,
        node: u64,
        user: &Arc<str>,
        present: bool,
        sink: &mut Sink<'_>,
    ) -> bool {
        if !personal(room) {
            return false;
        }
        self.remote_online(room, node, user, present, sink);
        true
    }

    /// A personal room's [`Self::remote_users`] (a node's snapshot: the user, or nobody);
    /// false when `room` is not personal. A departure is announced like a report's; an
    /// arrival only when this node knew the user's presence before: it kept the room
    /// under the node set before the last change, and it had seen other nodes then (a
    /// node that just joined, or took the room over without being its replica, hears
    /// every node's snapshot once and must not announce users online all along).
    pub(super) fn remote_personal_users(
        &mut self,
        room: &str,
        node: u64,
        users: &[Arc<str>],
        sink: &mut Sink<'_>,
    ) -> bool {
        let Some(user) = protocol::room_user(room) else { return false };
        let user: Arc<str> = Arc::from(user);
        let present = users.contains(&user);
        let knew =
            self.online_prev.as_deref().is_some_and(|prev| placement::keepers(room, prev).contains(&Some(self.node)));
        if present && !knew {
            // Recorded silently: the user was online before this node kept the room.
            let nodes = self.online.entry(Arc::from(room)).or_default();
            if !nodes.contains(&node) {
                nodes.push(node);
            }
            return true;
        }
        self.remote_online(room, node, &user, present, sink);
        true
    }

    /// The live nodes changed from `old` (nodes in `gone` are dead): a dead node's users
    /// go offline (announced by the holder when connected nowhere else), reports of rooms
    /// this node no longer keeps are forgotten, and this node's connected users are
    /// reported to their personal rooms' new keepers.
    pub(super) fn online_nodes_changed(&mut self, old: &Arc<[u64]>, gone: &[u64], sink: &mut Sink<'_>) {
        if old.len() > 1 || self.online_prev.is_some() {
            self.online_prev = Some(old.clone());
        }
        if !self.user_hooks {
            return;
        }
        let me = self.node;
        let names: Vec<Arc<str>> = self.online.keys().cloned().collect();
        for name in names {
            let now = self.keepers(&name);
            if !now.contains(&Some(me)) {
                self.online.remove(&name);
                continue;
            }
            let Some(user) = protocol::room_user(&name).map(Arc::<str>::from) else { continue };
            for &dead in gone {
                self.remote_online(&name, dead, &user, false, sink);
            }
        }
        for user in self.users_here.keys() {
            let room: Arc<str> = Arc::from(protocol::user_room(user));
            let was = placement::keepers(&room, old);
            let now = self.keepers(&room);
            for to in now.into_iter().flatten().filter(|&k| k != me && !was.contains(&Some(k))) {
                sink(RoomOut::Cluster(ClusterOut::Users {
                    room: room.clone(),
                    users: vec![user.clone()],
                    to: Some(to),
                }));
            }
        }
    }

    /// This node's connected users, reported to their personal rooms' keepers again (this
    /// node reconnected to the bus: the others may have declared it dead).
    pub(super) fn resync_online(&self, sink: &mut Sink<'_>) {
        if !self.user_hooks {
            return;
        }
        for user in self.users_here.keys() {
            let room: Arc<str> = Arc::from(protocol::user_room(user));
            for to in self.keepers(&room).into_iter().flatten().filter(|&k| k != self.node) {
                sink(RoomOut::Cluster(ClusterOut::Users {
                    room: room.clone(),
                    users: vec![user.clone()],
                    to: Some(to),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ShardSet;

    #[test]
    fn a_shard_set_holds_any_shard_in_one_word_up_to_64() {
        assert!(std::mem::size_of::<ShardSet>() <= 16, "one table entry's value per connected user");
        let mut s = ShardSet::default();
        assert!(s.is_empty() && !s.contains(3) && !s.contains(200));
        assert!(s.set(3, true) && !s.set(3, true), "a repeat is no change");
        assert!(s.set(63, true) && matches!(s, ShardSet::Word(_)));
        assert!(s.set(130, true) && matches!(s, ShardSet::Words(_)));
        assert!(s.contains(3) && s.contains(63) && s.contains(130) && !s.contains(64) && !s.contains(129));
        assert!(!s.set(500, false), "out of a shard never in");
        for shard in [3, 63, 130] {
            assert!(!s.is_empty());
            assert!(s.set(shard, false) && !s.contains(shard));
        }
        assert!(s.is_empty());
    }
}
