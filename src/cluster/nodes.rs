//! The live-node table: which nodes are alive.
//!
//! Every node announces itself on the heartbeat subject every second; a node that has
//! not been heard from for the timeout is dead. Which live node sequences a room (and
//! keeps its presence) is rendezvous hashing over the live set, a pure rule of the room
//! core ([`crate::room::placement`]), re-exported here for the bridge's callers.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

pub use crate::room::placement::{room_hash, sequencer};

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
