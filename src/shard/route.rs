//! Room → owner shard: the one routing rule.
//!
//! Every shard computes the same owner for a room name without asking anyone, so a
//! room's sequencing point is found with no shared state.

use std::hash::{BuildHasher, Hash};

/// The shard that owns (sequences) `room` among `shards` shards.
pub fn owner(room: &str, shards: usize) -> usize {
    shard_of(room, shards)
}

/// The shard that keeps the connection and password-attempt counts of `ip`.
pub fn ip_owner(ip: std::net::IpAddr, shards: usize) -> usize {
    shard_of(ip, shards)
}

/// `key`'s shard: FxHash with a fixed seed (deterministic across shards and runs, fast
/// on short keys), mapped onto `0..shards` by multiply-shift.
fn shard_of(key: impl Hash, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let hash = rustc_hash::FxBuildHasher.hash_one(key);
    ((u128::from(hash) * shards as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_stable_and_spread() {
        assert_eq!(owner("lobby", 1), 0);
        assert_eq!(owner("lobby", 4), owner("lobby", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner(&format!("room-{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
