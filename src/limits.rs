//! Abuse limits as pure logic: the per-connection message rate and the per-IP table.
//!
//! The rate limit is a token bucket in its GCRA form (the "virtual scheduling" leaky
//! bucket): one timestamp per connection instead of a token count and a refill time,
//! which keeps every connection's state within its allocator size class.
//!
//! Per-IP figures are exact without shared state: every IP address has an owner shard
//! (`shard::route::ip_owner`) that keeps its [`IpTable`] entry, and other shards ask it by
//! message at upgrade time (not on any message path).

use std::net::IpAddr;

use rustc_hash::FxHashMap;

/// Per-connection rate limit: `rate` messages per second with bursts of `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Milliseconds between messages at the sustained rate.
    interval: u32,
    /// How far ahead of `now` the theoretical arrival time may run (burst allowance).
    tolerance: u32,
}

impl Rate {
    /// A limit of `per_second` messages per second (1..=1000) with `burst` extra; `None`
    /// when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<Rate> {
        (per_second > 0).then(|| {
            let interval = (1000 / per_second.min(1000)).max(1);
            Rate { interval, tolerance: interval.saturating_mul(burst.max(1)) }
        })
    }

    /// Whether a message arriving at `now` (shard ms clock) is allowed; updates `tat`
    /// (the theoretical arrival time) when it is. Wrap-safe over the u32 clock.
    pub fn allow(&self, tat: &mut u32, now: u32) -> bool {
        let ahead = tat.wrapping_sub(now) as i32;
        if ahead > self.tolerance as i32 {
            return false;
        }
        *tat = if ahead > 0 { *tat } else { now }.wrapping_add(self.interval);
        true
    }
}

/// Counts attempts in fixed one-minute windows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    start: u32,
    count: u32,
}

impl Window {
    /// Length of a window, ms.
    pub const MS: u32 = 60_000;

    /// Records an attempt at `now` if fewer than `limit` happened in the current window.
    pub fn attempt(&mut self, now: u32, limit: u32) -> bool {
        if now.wrapping_sub(self.start) >= Self::MS || self.count == 0 {
            self.start = now;
            self.count = 0;
        }
        if self.count >= limit {
            return false;
        }
        self.count += 1;
        true
    }

    /// Whether the window has run out (the entry may be forgotten).
    pub fn expired(&self, now: u32) -> bool {
        self.count == 0 || now.wrapping_sub(self.start) >= Self::MS
    }
}

/// What an IP owner shard knows about the addresses it owns.
#[derive(Debug, Default)]
pub struct IpTable {
    entries: FxHashMap<IpAddr, IpEntry>,
}

#[derive(Debug, Default)]
struct IpEntry {
    connections: u32,
    passwords: Window,
}

impl IpTable {
    /// Admits one more WebSocket connection from `ip` if it has fewer than `limit`.
    pub fn acquire(&mut self, ip: IpAddr, limit: u32) -> bool {
        let e = self.entries.entry(ip).or_default();
        if e.connections >= limit {
            return false;
        }
        e.connections += 1;
        true
    }

    /// A connection from `ip` closed.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(e) = self.entries.get_mut(&ip) {
            e.connections = e.connections.saturating_sub(1);
        }
    }

    /// Records a room-password attempt from `ip` if it has had fewer than `limit` this
    /// minute.
    pub fn password_attempt(&mut self, ip: IpAddr, now: u32, limit: u32) -> bool {
        self.entries.entry(ip).or_default().passwords.attempt(now, limit)
    }

    /// Forgets addresses with no connection and no recent attempt.
    pub fn prune(&mut self, now: u32) {
        self.entries.retain(|_, e| e.connections > 0 || !e.passwords.expired(now));
    }

    /// Connections from `ip` admitted and not yet released.
    pub fn connections(&self, ip: IpAddr) -> u32 {
        self.entries.get(&ip).map_or(0, |e| e.connections)
    }

    /// Addresses tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let rate = Rate::new(10, 5).unwrap(); // 100 ms interval, 5-message burst
        let mut tat = 0u32;
        let now = 1_000_000u32;
        let burst = (0..20).filter(|_| rate.allow(&mut tat, now)).count();
        assert_eq!(burst, 6, "the first message plus a burst of 5");
        assert!(!rate.allow(&mut tat, now + 50));
        assert!(rate.allow(&mut tat, now + 150), "one more after an interval");
        // After a long silence the bucket is full again.
        let later = now + 60_000;
        assert_eq!((0..20).filter(|_| rate.allow(&mut tat, later)).count(), 6);
        assert!(Rate::new(0, 5).is_none());
    }

    #[test]
    fn gcra_survives_clock_wrap() {
        let rate = Rate::new(1000, 1).unwrap();
        let mut tat = u32::MAX - 1;
        assert!(rate.allow(&mut tat, u32::MAX - 1));
        assert!(rate.allow(&mut tat, 3), "across the wrap");
    }

    #[test]
    fn ip_table_counts_connections_and_attempts() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut t = IpTable::default();
        assert!(t.acquire(ip, 2) && t.acquire(ip, 2));
        assert!(!t.acquire(ip, 2));
        t.release(ip);
        assert!(t.acquire(ip, 2));
        assert_eq!(t.connections(ip), 2);
        assert!((0..3).all(|_| t.password_attempt(ip, 100, 3)));
        assert!(!t.password_attempt(ip, 200, 3));
        assert!(t.password_attempt(ip, 100 + Window::MS, 3), "a new minute");
        t.release(ip);
        t.release(ip);
        t.prune(100 + 3 * Window::MS);
        assert!(t.is_empty());
    }
}
