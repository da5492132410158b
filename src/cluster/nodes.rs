//! The live-node table and rendezvous hashing: which node sequences a room.
//!
//! Every node announces itself on the heartbeat subject every second; a node that has
//! not been heard from for the timeout is dead. The sequencer of a room is the live node
//! with the highest weight `mix(hash(room), node)` (rendezvous, or highest-random-weight,
//! hashing): every node that sees the same live set computes the same sequencer with no
//! coordination, and when a node joins or leaves only the rooms it wins or held move.

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

/// The weight of `node` for a room whose name hashed to `room_hash`: a 64-bit finalizer
/// (splitmix64) over both, so that weights of different nodes are independent.
fn weight(room_hash: u64, node: u64) -> u64 {
    let mut z = room_hash ^ node.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a room name used for rendezvous (FxHash: fixed seed, the same on every
/// node and every run).
pub fn room_hash(room: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(room)
}

/// The node among `nodes` that sequences `room`; `None` when `nodes` is empty. Ties
/// (equal weights) go to the larger node id, so the answer never depends on order.
pub fn sequencer(room: &str, nodes: &[u64]) -> Option<u64> {
    let h = room_hash(room);
    nodes.iter().copied().max_by_key(|&n| (weight(h, n), n))
}

/// What a heartbeat or a sweep changed in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node was heard from for the first time (or again after it was declared dead).
    Joined(u64),
    /// A node timed out or said goodbye.
    Left(u64),
}

/// The nodes this node has heard from recently, itself always included. Owned by the
/// bridge thread.
#[derive(Debug)]
pub struct Nodes {
    me: u64,
    timeout: Duration,
    seen: FxHashMap<u64, Instant>,
}

impl Nodes {
    /// A table that knows only `me`; others expire after `timeout` without a heartbeat.
    pub fn new(me: u64, timeout: Duration) -> Nodes {
        Nodes { me, timeout, seen: FxHashMap::default() }
    }

    /// Records a heartbeat of `node` at `now`; `Some(Joined)` when it is new.
    pub fn heard(&mut self, node: u64, now: Instant) -> Option<Change> {
        if node == self.me {
            return None;
        }
        self.seen.insert(node, now).is_none().then_some(Change::Joined(node))
    }

    /// Forgets `node` at once (it said goodbye).
    pub fn gone(&mut self, node: u64) -> Option<Change> {
        self.seen.remove(&node).map(|_| Change::Left(node))
    }

    /// Removes the nodes not heard from within the timeout before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let timeout = self.timeout;
        let dead: Vec<u64> =
            self.seen.iter().filter(|(_, &at)| now.saturating_duration_since(at) > timeout).map(|(&n, _)| n).collect();
        dead.into_iter().filter_map(|n| self.gone(n)).collect()
    }

    /// Forgets every other node (this node lost the bus for longer than the timeout).
    pub fn clear(&mut self) -> Vec<Change> {
        self.seen.drain().map(|(n, _)| Change::Left(n)).collect()
    }

    /// The live set, sorted, this node included.
    pub fn live(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.seen.keys().copied().chain([self.me]).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_of_the_same_set_picks_the_same_sequencer() {
        let a = [3u64, 17, 99];
        let b = [99u64, 3, 17];
        for i in 0..100 {
            let room = format!("room-{i}");
            assert_eq!(sequencer(&room, &a), sequencer(&room, &b));
        }
        assert_eq!(sequencer("x", &[]), None);
        assert_eq!(sequencer("x", &[7]), Some(7));
    }

    #[test]
    fn rooms_spread_and_only_the_dead_nodes_rooms_move() {
        let nodes = [11u64, 22, 33];
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for i in 0..3000 {
            let room = format!("room-{i}");
            let s = sequencer(&room, &nodes).unwrap();
            counts[nodes.iter().position(|&n| n == s).unwrap()] += 1;
            let after = sequencer(&room, &[11, 22]).unwrap();
            if s != 33 {
                assert_eq!(s, after, "rooms of live nodes stay put");
            } else {
                moved += 1;
            }
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert_eq!(moved, counts[2]);
    }

    #[test]
    fn nodes_join_time_out_and_say_goodbye() {
        let t0 = Instant::now();
        let mut n = Nodes::new(1, Duration::from_secs(3));
        assert_eq!(n.live(), vec![1]);
        assert_eq!(n.heard(1, t0), None, "myself");
        assert_eq!(n.heard(5, t0), Some(Change::Joined(5)));
        assert_eq!(n.heard(5, t0 + Duration::from_secs(1)), None);
        assert_eq!(n.heard(2, t0), Some(Change::Joined(2)));
        assert_eq!(n.live(), vec![1, 2, 5]);
        assert_eq!(n.expire(t0 + Duration::from_millis(3500)), vec![Change::Left(2)]);
        assert_eq!(n.gone(5), Some(Change::Left(5)));
        assert_eq!(n.gone(5), None);
        assert_eq!(n.live(), vec![1]);
    }
}
