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
//! connected (an entry only while there are some), beside the room itself, which exists
//! only while this node has connections of the user: so a keeper holds no room for a
//! user connected elsewhere, and the million personal rooms of a node cost nothing more.

use std::sync::Arc;

use super::out::{ClusterOut, Hook, HookKind, RoomOut, Sink};
use super::placement;
use super::presence::tell_keepers;
use super::OwnedRooms;

/// The prefix of personal rooms (`protocol::user_room`): their first and last connection
/// are a user's `user_online`/`user_offline`.
pub(super) const USER_ROOM: &str = "@user:";

/// Whether `room` is a personal room.
pub(super) fn personal(room: &str) -> bool {
    room.starts_with(USER_ROOM)
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

    /// Whether `room`'s user has connections on other nodes (as far as this keeper knows).
    fn online_elsewhere(&self, room: &str) -> bool {
        self.online.get(room).is_some_and(|n| !n.is_empty())
    }

    fn local_connections(&self, room: &str) -> u32 {
        self.rooms.get(room).map_or(0, |r| r.connections())
    }

    /// The first connection of `user` on this node joined its personal room `room`
    /// (`present`), or the last one here left. On a single node that is the event; in a
    /// cluster the keepers are told and the holder emits it when the user is connected
    /// nowhere else.
    pub(super) fn personal_changed(&mut self, room: &Arc<str>, user: &Arc<str>, present: bool, sink: &mut Sink<'_>) {
        if self.node == 0 {
            if self.hooks {
                emit(kind(present), room, user, sink);
            }
            return;
        }
        if !self.user_hooks {
            return;
        }
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
        if changed && edge && self.hooks && self.holds(room) && self.local_connections(room) == 0 {
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
        if !personal(room) {
            return false;
        }
        let user: Arc<str> = Arc::from(&room[USER_ROOM.len()..]);
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
            let user: Arc<str> = Arc::from(&name[USER_ROOM.len()..]);
            for &dead in gone {
                self.remote_online(&name, dead, &user, false, sink);
            }
        }
        for room in self.rooms.values().filter(|r| r.connections() > 0 && personal(&r.name)) {
            let was = placement::keepers(&room.name, old);
            let now = self.keepers(&room.name);
            let user: Arc<str> = Arc::from(&room.name[USER_ROOM.len()..]);
            for to in now.into_iter().flatten().filter(|&k| k != me && !was.contains(&Some(k))) {
                sink(RoomOut::Cluster(ClusterOut::Users {
                    room: room.name.clone(),
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
        for room in self.rooms.values().filter(|r| r.connections() > 0 && personal(&r.name)) {
            let user: Arc<str> = Arc::from(&room.name[USER_ROOM.len()..]);
            for to in self.keepers(&room.name).into_iter().flatten().filter(|&k| k != self.node) {
                sink(RoomOut::Cluster(ClusterOut::Users {
                    room: room.name.clone(),
                    users: vec![user.clone()],
                    to: Some(to),
                }));
            }
        }
    }
}
