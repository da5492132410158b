//! Idempotent publishes: the outcomes of recent publishes that carried an
//! `idempotency_key`, so that a retry within the window is answered with the first
//! outcome and neither sequenced nor delivered again.
//!
//! Kept by the owner of the publish's room (in a cluster: on the room's sequencer node,
//! where every publish to the room is sequenced), keyed by room and key: the same key
//! for two rooms names two publishes. Memory is bounded twice: entries expire after the
//! window, and beyond `max` entries the oldest goes first (counted, so an operator sees
//! when the bound, not the window, decides).

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// How long a key is remembered, ms.
pub const WINDOW_MS: u64 = 5 * 60 * 1000;

/// Most keys one shard remembers (~150 bytes each).
pub const MAX_KEYS: usize = 100_000;

/// What the first publish with a key answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its sequence number (`Some(0)`: a volatile message that was handed out; `None`:
    /// not sequenced).
    pub seq: Option<u64>,
    /// The shards it was handed to.
    pub shards: Vec<u16>,
}

/// Recent keyed outcomes, oldest first.
pub struct Recent {
    map: FxHashMap<(Arc<str>, Arc<str>), Outcome>,
    /// (expiry ms, room, key) in insertion order; the window is fixed, so also in
    /// expiry order.
    order: VecDeque<(u64, Arc<str>, Arc<str>)>,
    window_ms: u64,
    max: usize,
    /// Retries answered from memory, since last taken.
    replays: u64,
    /// Keys forgotten before their window ended (the `max` bound), since last taken.
    evicted: u64,
}

impl Recent {
    /// An empty memory of `max` keys for `window_ms`.
    pub fn new(window_ms: u64, max: usize) -> Self {
        Recent { map: FxHashMap::default(), order: VecDeque::new(), window_ms, max, replays: 0, evicted: 0 }
    }

    /// The outcome remembered for `key` in `room`, if its window has not passed
    /// (counted as a replay).
    pub fn get(&mut self, room: &str, key: &str, now_ms: u64) -> Option<Outcome> {
        self.expire(now_ms);
        let found = self.map.get(&(Arc::from(room), Arc::from(key))).cloned();
        if found.is_some() {
            self.replays += 1;
        }
        found
    }

    /// Remembers the outcome of the first publish with `key` in `room`.
    pub fn insert(&mut self, room: Arc<str>, key: Arc<str>, outcome: Outcome, now_ms: u64) {
        self.expire(now_ms);
        while self.map.len() >= self.max {
            match self.order.pop_front() {
                Some((_, r, k)) => {
                    if self.map.remove(&(r, k)).is_some() {
                        self.evicted += 1;
                    }
                }
                None => break,
            }
        }
        if self.max == 0 {
            return;
        }
        self.order.push_back((now_ms + self.window_ms, room.clone(), key.clone()));
        self.map.insert((room, key), outcome);
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((expiry, _, _)) = self.order.front() {
            if *expiry > now_ms {
                break;
            }
            if let Some((_, r, k)) = self.order.pop_front() {
                self.map.remove(&(r, k));
            }
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Takes the counts since the last call: (retries answered, keys evicted early).
    pub fn take_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.replays), std::mem::take(&mut self.evicted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(seq: u64) -> Outcome {
        Outcome { seq: Some(seq), shards: vec![0, 1] }
    }

    #[test]
    fn a_key_is_remembered_for_its_window_per_room() {
        let mut r = Recent::new(1000, 10);
        assert_eq!(r.get("a", "k", 0), None);
        r.insert("a".into(), "k".into(), out(7), 0);
        assert_eq!(r.get("a", "k", 999), Some(out(7)));
        assert_eq!(r.get("b", "k", 999), None, "another room, another publish");
        assert_eq!(r.get("a", "k", 1000), None, "the window passed");
        assert!(r.is_empty());
        assert_eq!(r.take_counts(), (1, 0));
    }

    #[test]
    fn memory_is_bounded_and_evictions_counted() {
        let mut r = Recent::new(1000, 2);
        for (i, k) in ["x", "y", "z"].into_iter().enumerate() {
            r.insert("a".into(), k.into(), out(i as u64), 0);
        }
        assert_eq!(r.len(), 2);
        assert_eq!(r.get("a", "x", 1), None, "the oldest went first");
        assert_eq!(r.get("a", "z", 1), Some(out(2)));
        assert_eq!(r.take_counts(), (1, 1));
        let mut off = Recent::new(1000, 0);
        off.insert("a".into(), "k".into(), out(1), 0);
        assert!(off.is_empty());
    }
}
