//! `--ack-timeout`: when a publisher that stays connected sends a message again.
//!
//! A reconnecting publisher resends everything it has no ack for once it has rejoined
//! (`engine`), but a publisher whose own connection survives has no such moment: if
//! the node that was to sequence its message died after taking it, no ack ever comes
//! and, without a timeout, the message is silently given up (counted unacknowledged).
//! A client that takes the `ack` as its only proof of delivery retries instead, with the
//! same idempotency key so that a message that *was* sequenced is not sequenced twice.
//! This is that client's schedule: a message written with attempt `a` is due for a
//! retry `timeout × 2^a` later (the factor capped at [`MAX_BACKOFF_SHIFT`]), unless its
//! ack came first.
//!
//! A message has at most one deadline: writing it again (a retry, or the resend of a
//! publisher that rejoined while the message's deadline was pending) replaces the one
//! before, so a message is never retried by two schedules at once.
//!
//! Pure bookkeeping (a min-heap of deadlines, superseded ones skipped when they come
//! up), unit-tested below; the engine asks [`Retries::pop_due`] on every loop pass while
//! a deadline is pending and checks the ack itself.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::audit::MsgKey;

/// Retries back off by doubling, at most to `timeout × 2^MAX_BACKOFF_SHIFT`.
pub const MAX_BACKOFF_SHIFT: u32 = 6;

/// The pending ack deadlines of one engine thread's publishers.
#[derive(Debug, Default)]
pub struct Retries {
    /// 0: retries are off.
    timeout_ns: u64,
    /// `(due_ns, publisher, n, attempt of the send that is waited for)`, superseded
    /// deadlines included until they come up.
    due: BinaryHeap<Reverse<(u64, u32, u64, u32)>>,
    /// Each waiting message's current deadline, `(due_ns, attempt)`: a heap entry that
    /// differs was superseded by a later write of its message.
    current: HashMap<MsgKey, (u64, u32)>,
}

impl Retries {
    /// Retries after `timeout_ns` (0: never; every method is then a no-op).
    pub fn new(timeout_ns: u64) -> Retries {
        Retries { timeout_ns, due: BinaryHeap::new(), current: HashMap::new() }
    }

    /// Message `key` was written at `now_ns`, as its `attempt`-th retry (0: the first
    /// send, or a resend after a rejoin): its ack is awaited until the deadline, which
    /// replaces any deadline the message had.
    pub fn sent(&mut self, key: MsgKey, attempt: u32, now_ns: u64) {
        if self.timeout_ns == 0 {
            return;
        }
        let wait = self.timeout_ns.saturating_mul(1 << attempt.min(MAX_BACKOFF_SHIFT));
        let due = now_ns.saturating_add(wait);
        self.due.push(Reverse((due, key.0, key.1, attempt)));
        self.current.insert(key, (due, attempt));
    }

    /// The earliest deadline, if any (for the engine's timer). It may be one that was
    /// superseded: waking for it finds nothing due, which costs a loop pass, no retry.
    pub fn next_due(&self) -> Option<u64> {
        self.due.peek().map(|Reverse((due, ..))| *due)
    }

    /// A message whose current deadline is at or before `now_ns`, with the attempt that
    /// timed out; `None` once there is none. The caller decides whether it still wants
    /// it (the ack may have come meanwhile).
    pub fn pop_due(&mut self, now_ns: u64) -> Option<(MsgKey, u32)> {
        while self.next_due()? <= now_ns {
            let Reverse((due, publisher, n, attempt)) = self.due.pop()?;
            let key = (publisher, n);
            if self.current.get(&key) == Some(&(due, attempt)) {
                self.current.remove(&key);
                return Some((key, attempt));
            }
        }
        None
    }

    /// Forgets every deadline (a step ended: its messages are no longer retried).
    pub fn clear(&mut self) {
        self.due.clear();
        self.current.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_schedules_nothing() {
        let mut r = Retries::new(0);
        r.sent((1, 1), 0, 10);
        assert_eq!((r.next_due(), r.pop_due(u64::MAX)), (None, None));
    }

    #[test]
    fn a_message_is_due_after_the_timeout_and_not_before() {
        let mut r = Retries::new(100);
        r.sent((1, 7), 0, 1_000);
        assert_eq!(r.next_due(), Some(1_100));
        assert_eq!(r.pop_due(1_099), None);
        assert_eq!(r.pop_due(1_100), Some(((1, 7), 0)));
        assert_eq!(r.pop_due(u64::MAX), None);
    }

    #[test]
    fn retries_back_off_by_doubling_up_to_the_cap() {
        let mut r = Retries::new(100);
        for (attempt, wait) in [(1, 200), (2, 400), (MAX_BACKOFF_SHIFT, 6_400), (MAX_BACKOFF_SHIFT + 5, 6_400)] {
            r.sent((0, 0), attempt, 1_000);
            assert_eq!(r.next_due(), Some(1_000 + wait), "attempt {attempt}");
            assert_eq!(r.pop_due(1_000 + wait), Some(((0, 0), attempt)));
        }
    }

    #[test]
    fn due_messages_come_earliest_first_and_clear_forgets_them() {
        let mut r = Retries::new(10);
        r.sent((2, 0), 0, 50);
        r.sent((1, 0), 0, 20);
        r.sent((3, 0), 1, 20); // due at 40
        assert_eq!(r.pop_due(100), Some(((1, 0), 0)));
        assert_eq!(r.pop_due(100), Some(((3, 0), 1)));
        r.sent((4, 0), 0, 0);
        r.clear();
        assert_eq!(r.pop_due(u64::MAX), None);
    }

    #[test]
    fn a_resend_at_rejoin_replaces_the_pending_deadline_instead_of_adding_a_second() {
        // Regression: a publisher that rejoined while a message's deadline was pending
        // resent it (attempt 0) and the message then had two deadlines, so it was
        // retried, and counted in `retried`, by two schedules at once.
        let mut r = Retries::new(100);
        r.sent((1, 7), 0, 1_000); // first send, due at 1,100
        r.sent((1, 7), 0, 1_050); // resent after a rejoin, due at 1,150
        assert_eq!(r.pop_due(1_100), None, "the first deadline was replaced");
        assert_eq!(r.pop_due(1_150), Some(((1, 7), 0)));
        assert_eq!(r.pop_due(u64::MAX), None, "one deadline per message");
        // The same for a retry written while an older deadline is still queued, and for
        // two writes at the same instant (identical heap entries).
        r.sent((2, 0), 0, 0);
        r.sent((2, 0), 3, 0);
        r.sent((3, 0), 0, 5);
        r.sent((3, 0), 0, 5);
        assert_eq!(r.pop_due(u64::MAX), Some(((3, 0), 0)));
        assert_eq!(r.pop_due(u64::MAX), Some(((2, 0), 3)));
        assert_eq!(r.pop_due(u64::MAX), None);
    }

    #[test]
    fn a_huge_timeout_saturates_instead_of_wrapping() {
        let mut r = Retries::new(u64::MAX / 2);
        r.sent((0, 0), MAX_BACKOFF_SHIFT, 5);
        assert_eq!(r.next_due(), Some(u64::MAX));
    }
}
