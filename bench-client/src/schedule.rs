//! The fixed-rate publish schedule (wrk2's constant throughput): message `k` of a step is
//! due at `t0 + k / rate`, whatever happened to the messages before it.
//!
//! Latency is measured from this intended time, so a stall (in the server or in
//! bench-client) shows up in every message it delayed instead of hiding behind a paused
//! sender ("coordinated omission"). Message `k` belongs to publisher `k % P` as that
//! publisher's message number `k / P`, so publishers interleave evenly.

use serde::{Deserialize, Serialize};

/// One step of publishing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Step number (stamped into every payload).
    pub step: u32,
    /// CLOCK_MONOTONIC time of message 0, in nanoseconds.
    pub t0_ns: u64,
    /// Total messages per second over all publishers.
    pub rate: f64,
    /// Publishing window in nanoseconds.
    pub duration_ns: u64,
    /// Number of publishers P.
    pub publishers: u32,
}

impl Schedule {
    /// Messages in the step: `floor(duration × rate)`.
    pub fn total(&self) -> u64 {
        if self.publishers == 0 || self.rate <= 0.0 {
            return 0;
        }
        (self.duration_ns as f64 / 1e9 * self.rate) as u64
    }

    /// Intended send time of message `k`.
    pub fn intended_ns(&self, k: u64) -> u64 {
        self.t0_ns + (k as f64 * 1e9 / self.rate) as u64
    }

    /// (publisher, publisher's message number) of message `k`.
    pub fn sender_of(&self, k: u64) -> (u32, u64) {
        let p = u64::from(self.publishers.max(1));
        ((k % p) as u32, k / p)
    }

    /// Message `k` of [`Self::sender_of`]`(k) == (publisher, n)`: the inverse.
    pub fn index_of(&self, publisher: u32, n: u64) -> u64 {
        n * u64::from(self.publishers.max(1)) + u64::from(publisher)
    }

    /// Messages due by `now_ns`, starting at `from`: the range `from..end`.
    pub fn due(&self, from: u64, now_ns: u64) -> std::ops::Range<u64> {
        let total = self.total();
        if now_ns < self.t0_ns || from >= total {
            return from..from;
        }
        let elapsed = (now_ns - self.t0_ns) as f64 / 1e9;
        let end = ((elapsed * self.rate).floor() as u64 + 1).min(total);
        from..end.max(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Schedule {
        Schedule { step: 0, t0_ns: 1_000_000_000, rate: 1000.0, duration_ns: 2_000_000_000, publishers: 3 }
    }

    #[test]
    fn times_are_evenly_spaced_from_t0() {
        let s = s();
        assert_eq!(s.total(), 2000);
        assert_eq!(s.intended_ns(0), 1_000_000_000);
        assert_eq!(s.intended_ns(1), 1_001_000_000);
        assert_eq!(s.intended_ns(1999), 2_999_000_000);
    }

    #[test]
    fn due_never_skips_and_never_runs_ahead() {
        let s = s();
        assert_eq!(s.due(0, 999_999_999), 0..0);
        assert_eq!(s.due(0, 1_000_000_000), 0..1);
        assert_eq!(s.due(1, 1_000_500_000), 1..1);
        assert_eq!(s.due(1, 1_010_000_000), 1..11);
        // Late wake-up: everything overdue is due at once (and keeps its intended time).
        assert_eq!(s.due(11, 5_000_000_000), 11..2000);
        assert_eq!(s.due(2000, 6_000_000_000), 2000..2000);
        for k in s.due(0, 1_010_000_000) {
            assert!(s.intended_ns(k) <= 1_010_000_000);
        }
    }

    #[test]
    fn publishers_interleave() {
        let s = s();
        assert_eq!(s.sender_of(0), (0, 0));
        assert_eq!(s.sender_of(4), (1, 1));
        assert_eq!(s.sender_of(5), (2, 1));
    }

    #[test]
    fn index_of_inverts_sender_of() {
        // A resend finds a message's index (and so its intended time) from its sender.
        let s = s();
        for k in 0..s.total() {
            let (publisher, n) = s.sender_of(k);
            assert_eq!(s.index_of(publisher, n), k);
        }
    }
}
