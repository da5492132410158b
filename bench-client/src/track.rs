//! Checks one connection's stream of room `seq` numbers: gaps, duplicates, reorders.
//!
//! The server numbers each room's messages gap-free, +1 per message, and a member receives
//! exactly the messages after its `joined.seq`, in order (docs/PROTOCOL.md). So each
//! receiver can check its own stream with 16 bytes of state: the next `seq` it expects and
//! a 64-bit window of which of the 64 `seq`s before it have arrived. The window is what
//! tells a duplicate (seen before) from a late, out-of-order arrival (never seen).

/// What one observed `seq` means for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The expected next message.
    InOrder,
    /// Arrived after a jump: this many messages before it are (so far) missing.
    Gap(u64),
    /// Arrived before, already counted.
    Duplicate,
    /// Arrived late, after a higher `seq`: out of order (it fills part of an earlier gap).
    Reordered,
}

/// Per-connection stream checker. `next == 0` means "not joined yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTrack {
    next: u64,
    /// Bit `i` set: `next - 1 - i` has arrived.
    window: u64,
}

impl SeqTrack {
    /// Starts checking after a `joined` frame: the first message will be `joined_seq + 1`.
    pub fn start(&mut self, joined_seq: u64) {
        self.next = joined_seq + 1;
        self.window = u64::MAX;
    }

    /// Whether [`start`](Self::start) has been called.
    pub fn started(&self) -> bool {
        self.next != 0
    }

    /// The highest `seq` accounted for (seen, or skipped by a gap, or the `joined.seq` it
    /// started from): where a rejoin asks the server to resume (`since.seq`).
    pub fn last(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// Moves the stream on to `seq` without receiving the messages up to it: after a rejoin
    /// whose `joined.seq` is ahead of what arrived. Returns how many messages were skipped
    /// (0 when `seq` is not ahead); they stay unseen in the window, so if one still
    /// arrived it would count as reordered, not as new.
    pub fn skip_to(&mut self, seq: u64) -> u64 {
        if seq < self.next {
            return 0;
        }
        let skipped = seq + 1 - self.next;
        self.window = if skipped >= 64 { 0 } else { self.window << skipped };
        self.next = seq + 1;
        skipped
    }

    /// Classifies `seq` and updates the state.
    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq >= self.next {
            // Everything before `seq` that is still missing stays unseen in the window.
            let jump = self.skip_to(seq) - 1;
            self.window |= 1;
            return if jump == 0 { Seen::InOrder } else { Seen::Gap(jump) };
        }
        let back = self.next - 1 - seq;
        if back >= 64 {
            // Too old to remember: it cannot be told apart, and any such arrival is out of order.
            return Seen::Reordered;
        }
        let bit = 1u64 << back;
        if self.window & bit != 0 {
            Seen::Duplicate
        } else {
            self.window |= bit;
            Seen::Reordered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(joined: u64, seqs: &[u64]) -> Vec<Seen> {
        let mut t = SeqTrack::default();
        t.start(joined);
        seqs.iter().map(|&s| t.observe(s)).collect()
    }

    #[test]
    fn in_order_stream_is_clean() {
        assert!(run(118, &[119, 120, 121]).iter().all(|s| *s == Seen::InOrder));
    }

    #[test]
    fn a_dropped_message_is_a_gap() {
        assert_eq!(run(0, &[1, 2, 4]), vec![Seen::InOrder, Seen::InOrder, Seen::Gap(1)]);
        assert_eq!(run(0, &[5]), vec![Seen::Gap(4)]);
    }

    #[test]
    fn a_repeated_message_is_a_duplicate() {
        assert_eq!(run(0, &[1, 2, 2]), vec![Seen::InOrder, Seen::InOrder, Seen::Duplicate]);
        assert_eq!(run(0, &[1, 3, 1]), vec![Seen::InOrder, Seen::Gap(1), Seen::Duplicate]);
    }

    #[test]
    fn a_late_message_is_a_reorder_then_a_duplicate() {
        assert_eq!(run(0, &[1, 3, 2, 2]), vec![Seen::InOrder, Seen::Gap(1), Seen::Reordered, Seen::Duplicate]);
    }

    #[test]
    fn messages_from_before_the_join_are_not_new() {
        // seq <= joined.seq were never due to this connection: a repeat of history.
        assert_eq!(run(10, &[10]), vec![Seen::Duplicate]);
    }

    #[test]
    fn a_rejoin_resumes_after_the_last_seq_and_can_skip_ahead() {
        let mut t = SeqTrack::default();
        t.start(10);
        assert_eq!(t.last(), 10);
        assert_eq!(t.observe(11), Seen::InOrder);
        assert_eq!(t.last(), 11);
        // A replay that filled everything: nothing to skip.
        assert_eq!(t.skip_to(11), 0);
        assert_eq!(t.skip_to(5), 0);
        // An unrecoverable range 12..=14: skipped, and the stream goes on from 15.
        assert_eq!(t.skip_to(14), 3);
        assert_eq!(t.observe(15), Seen::InOrder);
        assert_eq!(t.observe(13), Seen::Reordered, "a skipped seq was never seen");
        assert_eq!(t.observe(11), Seen::Duplicate);
    }

    #[test]
    fn far_jumps_clear_the_window() {
        assert_eq!(run(0, &[1, 100, 99, 2]), vec![Seen::InOrder, Seen::Gap(98), Seen::Reordered, Seen::Reordered]);
    }
}
