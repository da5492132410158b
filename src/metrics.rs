//! Per-shard counters. Each shard owns its own (plain `Cell`s: no atomics, no sharing);
//! a reader gathers them from every shard by message and sums them (STYLE.md habit 6).

use std::cell::Cell;

/// Monotonic counters of one shard since start. Field names are the metric names.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// TCP connections accepted.
    pub connections_total: Cell<u64>,
    /// WebSocket upgrades completed.
    pub upgrades_total: Cell<u64>,
    /// Client text messages received (valid or not).
    pub messages_in: Cell<u64>,
    /// Room messages sequenced by this shard as owner.
    pub messages_published: Cell<u64>,
    /// Frames handed to local connections by room fan-out.
    pub deliveries: Cell<u64>,
    /// Deliveries that needed the queue (the socket did not take them at once).
    pub deliveries_queued: Cell<u64>,
    /// Connections closed as slow consumers (1013).
    pub slow_consumer_closes: Cell<u64>,
    /// Connections closed for a WebSocket protocol violation.
    pub protocol_errors: Cell<u64>,
    /// Requests answered with an `error` frame.
    pub client_errors: Cell<u64>,
    /// Connections closed for missing heartbeats.
    pub heartbeat_closes: Cell<u64>,
    /// Sockets closed for not finishing their request head in time.
    pub handshake_timeouts: Cell<u64>,
    /// Requests refused at the HTTP level (bad upgrade, unknown path, …).
    pub http_errors: Cell<u64>,
    /// Accepts that failed for lack of file descriptors.
    pub accept_fd_exhausted: Cell<u64>,
}

/// Adds one to a counter.
#[inline]
pub fn inc(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Adds `n` to a counter.
#[inline]
pub fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}
