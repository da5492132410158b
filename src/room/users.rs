//! Who is in a room: the users with connections on this node, plus, on the room's
//! presence keepers in a cluster ([`super::placement`]), the users other nodes reported,
//! in one map keyed by user, so that `members` counts and event thresholds cost nothing
//! to read (the map's length is the count). Other nodes report only to the keepers, so
//! elsewhere the map holds just this node's users.
//!
//! A user present on several nodes (or with several connections) counts once. Join and
//! leave events follow the union: a user "arrives" when the first connection anywhere
//! appears and "leaves" when the last one anywhere is gone (or its node died).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Where one user is present: an entry exists while either count is nonzero.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// Connections on this node.
    local: u32,
    /// Other nodes that reported the user.
    nodes: u32,
}

/// The users of one room.
#[derive(Debug, Default)]
pub struct Users {
    /// Every user present anywhere.
    all: BTreeMap<Arc<str>, Seen>,
    /// What each other node reported.
    by_node: FxHashMap<u64, BTreeSet<Arc<str>>>,
}

/// What adding a local connection changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The user's first (or last) connection on this node: other nodes must hear of it.
    pub local: bool,
    /// The user's first (or last) appearance anywhere: members get a presence event.
    pub cluster: bool,
}

impl Users {
    /// Distinct users present anywhere.
    pub fn count(&self) -> u32 {
        self.all.len() as u32
    }

    /// Whether `user` is present anywhere.
    pub fn contains(&self, user: &str) -> bool {
        self.all.contains_key(user)
    }

    /// Users with connections on this node.
    pub fn local(&self) -> impl Iterator<Item = &Arc<str>> {
        self.all.iter().filter(|(_, s)| s.local > 0).map(|(u, _)| u)
    }

    /// One more connection of `user` on this node.
    pub fn add_local(&mut self, user: &Arc<str>) -> Change {
        let (seen, cluster) = match self.all.entry(user.clone()) {
            Entry::Occupied(e) => (e.into_mut(), false),
            Entry::Vacant(e) => (e.insert(Seen::default()), true),
        };
        seen.local += 1;
        Change { local: seen.local == 1, cluster }
    }

    /// One connection fewer of `user` on this node (no effect for an unknown user).
    pub fn remove_local(&mut self, user: &str) -> Change {
        let unchanged = Change { local: false, cluster: false };
        let Some(seen) = self.all.get_mut(user).filter(|s| s.local > 0) else { return unchanged };
        seen.local -= 1;
        if seen.local > 0 {
            return unchanged;
        }
        let cluster = seen.nodes == 0;
        if cluster {
            self.all.remove(user);
        }
        Change { local: true, cluster }
    }

    /// Whether node `node` has reported users here (and has not been forgotten since).
    pub fn knows(&self, node: u64) -> bool {
        self.by_node.contains_key(&node)
    }

    /// Whether any other node has users here.
    pub fn has_remote(&self) -> bool {
        !self.by_node.is_empty()
    }

    /// Forgets what every other node reported, silently: this node stopped keeping the
    /// room's presence (another node keeps it now), so no user arrived or left.
    pub fn forget_remote(&mut self) {
        self.by_node.clear();
        self.all.retain(|_, s| {
            s.nodes = 0;
            s.local > 0
        });
    }

    /// Node `node` reports `user`; true when the user is new anywhere.
    pub fn add_remote(&mut self, node: u64, user: &Arc<str>) -> bool {
        if !self.by_node.entry(node).or_default().insert(user.clone()) {
            return false;
        }
        let (seen, new) = match self.all.entry(user.clone()) {
            Entry::Occupied(e) => (e.into_mut(), false),
            Entry::Vacant(e) => (e.insert(Seen::default()), true),
        };
        seen.nodes += 1;
        new
    }

    /// Node `node` no longer has `user`; true when the user is gone everywhere.
    pub fn remove_remote(&mut self, node: u64, user: &str) -> bool {
        let Some(set) = self.by_node.get_mut(&node) else { return false };
        if !set.remove(user) {
            return false;
        }
        if set.is_empty() {
            self.by_node.remove(&node);
        }
        let Some(seen) = self.all.get_mut(user).filter(|s| s.nodes > 0) else { return false };
        seen.nodes -= 1;
        let gone = seen.nodes == 0 && seen.local == 0;
        if gone {
            self.all.remove(user);
        }
        gone
    }

    /// Replaces what node `node` reported with `users`; returns the users that arrived
    /// and left anywhere as a result.
    pub fn set_remote(&mut self, node: u64, users: &[Arc<str>]) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let new: BTreeSet<Arc<str>> = users.iter().cloned().collect();
        let old = self.by_node.get(&node).cloned().unwrap_or_default();
        let left: Vec<Arc<str>> = old.difference(&new).filter(|u| self.remove_remote(node, u)).cloned().collect();
        let arrived: Vec<Arc<str>> = new.difference(&old).filter(|u| self.add_remote(node, u)).cloned().collect();
        (arrived, left)
    }

    /// Forgets node `node` (dead); returns the users gone everywhere as a result.
    pub fn drop_node(&mut self, node: u64) -> Vec<Arc<str>> {
        self.set_remote(node, &[]).1
    }

    /// Up to `limit` users after `after` (all of them, sorted, each once), and the
    /// cursor for the next page when more remain.
    pub fn page(&self, after: Option<&str>, limit: usize) -> (Vec<Arc<str>>, Option<Arc<str>>) {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut users: Vec<Arc<str>> = self
            .all
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(u, _)| u.clone())
            .collect();
        let next = (users.len() > limit).then(|| {
            users.pop();
            users.last().cloned().unwrap_or_else(|| Arc::from(""))
        });
        (users, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn the_union_counts_each_user_once() {
        let mut u = Users::default();
        assert_eq!(u.add_local(&a("alice")), Change { local: true, cluster: true });
        assert_eq!(u.add_local(&a("alice")), Change { local: false, cluster: false });
        assert!(!u.add_remote(7, &a("alice")), "already here");
        assert!(u.add_remote(7, &a("bob")));
        assert!(!u.add_remote(8, &a("bob")));
        assert_eq!(u.count(), 2);
        assert_eq!(u.remove_local("alice"), Change { local: false, cluster: false });
        assert_eq!(u.remove_local("alice"), Change { local: true, cluster: false }, "still on node 7");
        assert!(!u.remove_remote(7, "bob"), "still on node 8");
        assert_eq!(u.drop_node(8), vec![a("bob")]);
        assert_eq!(u.drop_node(7), vec![a("alice")]);
        assert_eq!(u.count(), 0);
        assert_eq!(u.remove_local("nobody"), Change { local: false, cluster: false });
    }

    #[test]
    fn forgetting_remote_users_keeps_the_local_ones() {
        let mut u = Users::default();
        u.add_local(&a("me"));
        u.add_remote(4, &a("me"));
        u.add_remote(4, &a("them"));
        assert!(u.knows(4) && u.has_remote());
        u.forget_remote();
        assert!(!u.knows(4) && !u.has_remote());
        assert_eq!(u.page(None, 10).0, vec![a("me")]);
        assert_eq!(u.remove_local("me"), Change { local: true, cluster: true });
        assert_eq!(u.count(), 0);
    }

    #[test]
    fn snapshots_replace_a_nodes_users() {
        let mut u = Users::default();
        u.add_local(&a("carol"));
        let (arrived, left) = u.set_remote(3, &[a("x"), a("y"), a("carol")]);
        assert_eq!((arrived, left), (vec![a("x"), a("y")], vec![]));
        let (arrived, left) = u.set_remote(3, &[a("y"), a("z")]);
        assert_eq!((arrived, left), (vec![a("z")], vec![a("x")]));
        assert_eq!(u.count(), 3);
    }

    #[test]
    fn pages_merge_local_and_remote_users_in_order() {
        let mut u = Users::default();
        for n in ["b", "d", "e"] {
            u.add_local(&a(n));
        }
        for n in ["a", "d", "f"] {
            u.add_remote(1, &a(n));
        }
        let (p1, next) = u.page(None, 3);
        assert_eq!((p1, next.clone()), (vec![a("a"), a("b"), a("d")], Some(a("d"))));
        let (p2, next) = u.page(next.as_deref(), 3);
        assert_eq!((p2, next), (vec![a("e"), a("f")], None));
    }
}
