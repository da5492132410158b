//! Publishes this shard forwarded to another node, held until that node confirms it
//! took them.
//!
//! Core NATS delivers at most once and says nothing when a subject has no subscriber:
//! a publish forwarded to a room's sequencer that has just died (killed, cut off) is
//! gone, and until the node timeout declares the node dead every publish to its rooms
//! goes the same way. So the forwarding shard keeps each forward, numbered, and the
//! receiving node's owner shard confirms the number as soon as it takes the publish
//! (`Header::FwdOk`), before it sequences or relays it. The confirmation leaves on the
//! same NATS connection before the frames that publish makes, so a frame never
//! overtakes its confirmation.
//!
//! When the node a forward went to leaves the live set unconfirmed, the shard sends the
//! publish again, oldest first, to wherever the room's publishes go now (usually the
//! room's new sequencer, possibly this node). A forward can be sent twice only when its
//! confirmation was lost on a live path (a congested inbox dropped it) and the target
//! then died; the cluster docs say so. A forward still unconfirmed after the window (a
//! node too old to confirm, a confirmation dropped) is forgotten and counted, never
//! sent again to a node that is alive.
//!
//! Pure bookkeeping, generic over what is held, so it is tested without a runtime.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::msg::Publish;

/// What a shard holds for a forward: the publish, as it was before forwarding, and
/// whether it was a broadcast.
pub(super) struct Forwarded {
    /// The publish.
    pub publish: Publish,
    /// A broadcast to everyone rather than a room message.
    pub broadcast: bool,
}

/// The most forwards one shard holds; beyond it the oldest is forgotten (and counted),
/// so a target that never confirms cannot grow a shard's memory without bound.
pub(super) const MAX_HELD: usize = 64 * 1024;

/// How long a forward is held at most, for a cluster whose nodes are declared dead
/// after `node_timeout`: long enough for the target to be declared dead (the timeout
/// plus a sweep and the live set's trip to the shards) with room to spare on a busy
/// host.
pub(super) fn window(node_timeout: Duration) -> Duration {
    node_timeout * 2 + Duration::from_secs(5)
}

/// Forwards awaiting confirmation, by the number each was sent with. Numbers grow with
/// time, so the map's order is the order they were sent in.
pub(super) struct Forwards<T> {
    next: u64,
    held: BTreeMap<u64, Held<T>>,
    window: Duration,
    cap: usize,
    unconfirmed: u64,
}

struct Held<T> {
    to: u64,
    at: Instant,
    item: T,
}

impl<T> Forwards<T> {
    /// An empty table holding each forward for at most `window`, and at most `cap` of them.
    pub(super) fn new(window: Duration, cap: usize) -> Forwards<T> {
        Forwards { next: 1, held: BTreeMap::new(), window, cap: cap.max(1), unconfirmed: 0 }
    }

    /// Holds `item`, forwarded to node `to` at `now`; returns the number the forward
    /// carries. Forwards past the window, and the oldest when the table is full, are
    /// forgotten and counted as unconfirmed.
    pub(super) fn hold(&mut self, to: u64, item: T, now: Instant) -> u64 {
        self.expire(now);
        while self.held.len() >= self.cap {
            self.held.pop_first();
            self.unconfirmed += 1;
        }
        let id = self.next;
        self.next += 1;
        self.held.insert(id, Held { to, at: now, item });
        id
    }

    /// Node `from` confirmed forward `id`: forget it. False when no such forward is held
    /// for that node (confirmed already, forgotten, or a confirmation from elsewhere).
    pub(super) fn confirm(&mut self, from: u64, id: u64) -> bool {
        match self.held.get(&id) {
            Some(h) if h.to == from => self.held.remove(&id).is_some(),
            _ => false,
        }
    }

    /// Forgets forward `id` without a confirmation (it never left this node).
    pub(super) fn forget(&mut self, id: u64) {
        self.held.remove(&id);
    }

    /// Takes the forwards held for nodes not in `live`, in the order they were sent.
    pub(super) fn orphans(&mut self, live: &[u64], now: Instant) -> Vec<T> {
        self.expire(now);
        // (`BTreeMap::extract_if` would do this in one pass, but is newer than the MSRV.)
        let gone: Vec<u64> = self.held.iter().filter(|(_, h)| !live.contains(&h.to)).map(|(&id, _)| id).collect();
        gone.into_iter().filter_map(|id| self.held.remove(&id)).map(|h| h.item).collect()
    }

    /// Forwards held now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// Takes the count of forwards forgotten unconfirmed since the last call.
    pub(super) fn take_unconfirmed(&mut self) -> u64 {
        std::mem::take(&mut self.unconfirmed)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.held.first_entry() {
            if now.saturating_duration_since(entry.get().at) <= self.window {
                break;
            }
            entry.remove();
            self.unconfirmed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0xa;
    const B: u64 = 0xb;

    fn table() -> (Forwards<&'static str>, Instant) {
        (Forwards::new(Duration::from_secs(10), 4), Instant::now())
    }

    #[test]
    fn a_confirmed_forward_is_forgotten_and_never_comes_back() {
        let (mut f, t) = table();
        let id = f.hold(A, "m1", t);
        assert!(f.confirm(A, id));
        assert!(!f.confirm(A, id), "a second confirmation finds nothing");
        assert_eq!(f.orphans(&[], t), Vec::<&str>::new());
        assert_eq!(f.take_unconfirmed(), 0);
    }

    #[test]
    fn only_the_node_it_went_to_confirms_a_forward() {
        let (mut f, t) = table();
        let id = f.hold(A, "m1", t);
        assert!(!f.confirm(B, id));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn the_forwards_of_a_node_that_left_come_back_oldest_first_and_the_rest_stay() {
        let (mut f, t) = table();
        f.hold(A, "a1", t);
        let b1 = f.hold(B, "b1", t);
        f.hold(A, "a2", t);
        let a3 = f.hold(A, "a3", t);
        assert!(f.confirm(A, a3));
        assert_eq!(f.orphans(&[A, B], t), Vec::<&str>::new(), "both alive: nothing comes back");
        assert_eq!(f.orphans(&[B], t), vec!["a1", "a2"]);
        assert_eq!(f.orphans(&[B], t), Vec::<&str>::new(), "taken once");
        assert!(f.confirm(B, b1));
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn a_forward_past_the_window_is_counted_unconfirmed_not_resent() {
        let (mut f, t) = table();
        f.hold(A, "old", t);
        let later = t + Duration::from_secs(11);
        f.hold(A, "new", later);
        assert_eq!(f.take_unconfirmed(), 1);
        assert_eq!(f.orphans(&[], later), vec!["new"]);
        assert_eq!(f.take_unconfirmed(), 0, "taken once");
    }

    #[test]
    fn a_full_table_forgets_its_oldest_and_counts_it() {
        let (mut f, t) = table();
        for m in ["m1", "m2", "m3", "m4", "m5"] {
            f.hold(A, m, t);
        }
        assert_eq!(f.len(), 4);
        assert_eq!(f.take_unconfirmed(), 1);
        assert_eq!(f.orphans(&[], t), vec!["m2", "m3", "m4", "m5"]);
    }
}
