//! Where a room's cluster-wide state lives: rendezvous (highest-random-weight) hashing
//! of the room name over the live nodes.
//!
//! The node with the highest weight is the room's **sequencer** (it numbers the room's
//! messages) and its **presence holder** (it keeps the room's cluster-wide user list and
//! decides join/leave events). The node with the second-highest weight is the
//! **replica**: it keeps the same list, so that when the holder dies the replica, which
//! is exactly the node that wins next, takes over with nothing missing. Together they
//! are the room's *keepers*; every other node keeps only its own users. That makes a
//! room's presence cost O(users) in the cluster (twice the users), not O(nodes × users).
//!
//! Every node that sees the same live set computes the same placement with no
//! coordination, and when a node joins or leaves only the rooms it wins or held move.

use std::hash::BuildHasher;

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

/// The keepers of `room`'s presence among `nodes`: `[holder, replica]`, the nodes of
/// the highest and second-highest weight (the holder is [`sequencer`]). `None` where
/// there are not enough nodes.
pub fn keepers(room: &str, nodes: &[u64]) -> [Option<u64>; 2] {
    let h = room_hash(room);
    let mut best: [Option<(u64, u64)>; 2] = [None, None];
    for &n in nodes {
        let w = (weight(h, n), n);
        if best[0].is_none_or(|b| w > b) {
            best[1] = best[0];
            best[0] = Some(w);
        } else if best[1].is_none_or(|b| w > b) {
            best[1] = Some(w);
        }
    }
    best.map(|b| b.map(|(_, n)| n))
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
    fn the_replica_is_the_node_that_wins_when_the_holder_dies() {
        let nodes: Vec<u64> = (1..=56).map(|i| i * 7919).collect();
        for i in 0..2000 {
            let room = format!("room-{i}");
            let [holder, replica] = keepers(&room, &nodes);
            let (holder, replica) = (holder.unwrap(), replica.unwrap());
            assert_eq!(Some(holder), sequencer(&room, &nodes));
            assert_ne!(holder, replica);
            let rest: Vec<u64> = nodes.iter().copied().filter(|&n| n != holder).collect();
            assert_eq!(sequencer(&room, &rest), Some(replica), "{room}");
        }
        assert_eq!(keepers("x", &[]), [None, None]);
        assert_eq!(keepers("x", &[5]), [Some(5), None]);
    }
}
