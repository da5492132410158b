//! Per-shard counters and the fan-out latency histogram.
//!
//! Each shard owns its own (plain `Cell`s: no atomics, no sharing). A reader asks every
//! shard for a [`Snapshot`] by message and sums them (cross-core state moves by message), so serving
//! `/stats` or `/metrics` takes no lock anywhere.
//!
//! The counters are declared once, in [`counters!`]; the live cells, the plain copy that
//! crosses shards, the merge and the exposition all come from that one list.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hdrhistogram::Histogram;

macro_rules! counters {
    ($( #[doc = $doc:literal] $name:ident ),* $(,)?) => {
        /// Live counters of one shard, monotonic since start.
        #[derive(Debug)]
        pub struct ShardStats {
            $( #[doc = $doc] pub $name: Cell<u64>, )*
            /// Fan-out latency: owner hand-off → every local member's frame written or
            /// queued, in nanoseconds.
            pub fanout: RefCell<Histogram<u64>>,
            /// Durable log `fdatasync` latency, in nanoseconds.
            pub fsync: RefCell<Histogram<u64>>,
        }

        /// A copy of a shard's counters (or the sum over shards).
        #[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
        pub struct Counters {
            $( #[doc = $doc] pub $name: u64, )*
        }

        impl Default for ShardStats {
            fn default() -> Self {
                ShardStats {
                    $( $name: Cell::new(0), )*
                    fanout: RefCell::new(new_histogram()),
                    fsync: RefCell::new(new_histogram()),
                }
            }
        }

        impl ShardStats {
            /// Copies the current counter values.
            pub fn counters(&self) -> Counters {
                Counters { $( $name: self.$name.get(), )* }
            }
        }

        impl Counters {
            /// Adds `other` into `self`.
            pub fn merge(&mut self, other: &Counters) {
                $( self.$name += other.$name; )*
            }

            /// `(name, help, value)` of every counter, in declaration order.
            pub fn each(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![ $( (stringify!($name), $doc.trim(), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// TCP connections accepted.
    connections_total,
    /// WebSocket upgrades completed.
    upgrades_total,
    /// HTTP requests served (not counting upgrades).
    http_requests,
    /// Requests refused at the HTTP level (bad request, bad upgrade, unknown path, ...).
    http_errors,
    /// Client text messages received (valid or not).
    messages_in,
    /// Room messages sequenced by this shard as owner (client and API publishes).
    messages_published,
    /// Messages published through the HTTP API.
    api_publishes,
    /// Frames handed to local connections by room fan-out and broadcasts.
    deliveries,
    /// Deliveries the socket did not take at once and that were queued.
    deliveries_queued,
    /// Fan-out hand-offs of a room's corked frames to one member (one write or queueing each).
    fanout_handoffs,
    /// Requests answered with an error frame.
    client_errors,
    /// Connections closed as slow consumers (1013).
    slow_consumer_closes,
    /// Connections closed for a WebSocket protocol violation.
    protocol_errors,
    /// Connections closed for missing heartbeats.
    heartbeat_closes,
    /// Sweeps that kept a connection silent for two intervals (reads were paused, or its bytes wait unread).
    heartbeat_closes_deferred,
    /// Connections that stopped reading because some shard's inbox was over its high-water mark.
    congestion_pauses,
    /// Heartbeat sweeps that ran over ten ticks and 5 s after the previous one (timers stalled).
    sweeps_late,
    /// Sleeps of the shard's reactor that its 1 s bound ended while completions waited in its latency ring (a lost wake-up).
    reactor_lost_wakes,
    /// Heartbeat pings sent to connections silent for one ping interval.
    heartbeat_pings,
    /// Pong frames received (answers to heartbeat pings, or unsolicited).
    pongs_received,
    /// Sockets closed for not sending a complete request head in time.
    handshake_timeouts,
    /// Client messages refused by the rate limiter.
    rate_limited,
    /// Requests refused for missing or invalid credentials.
    auth_rejections,
    /// Accepts that failed for lack of file descriptors.
    accept_fd_exhausted,
    /// History or presence requests from another node that named nobody to answer.
    remote_requests_unanswered,
    /// Accepts retried after a failed accept and a pause (50 ms when out of descriptors).
    accept_retries,
    /// Publishes with an idempotency key seen within the window: answered again, not sequenced.
    idempotent_replays,
    /// Idempotency keys forgotten before their window ended (the per-shard key bound).
    idempotency_evictions,
    /// Messages compressed with permessage-deflate (each once per shard, however many receive it).
    compressed_frames,
    /// Payload bytes of those messages before compression.
    compress_bytes_in,
    /// Their payload bytes after compression.
    compress_bytes_out,
    /// Time spent compressing, in nanoseconds.
    compress_ns,
    /// Records appended to the durable log (`--data-dir`).
    log_records,
    /// Bytes written to the durable log's segments (checkpoints included).
    log_bytes,
    /// Records not logged because the disk was more than 64 MiB behind.
    log_records_dropped,
    /// Records covered by a completed `fdatasync`.
    log_records_synced,
    /// Log segments created (checkpoints included).
    log_segments_created,
    /// Log segments deleted by compaction.
    log_segments_deleted,
    /// Log compactions (a checkpoint of every room replaced the older segments).
    log_compactions,
    /// Log file operations that failed (create, write, sync, compaction).
    log_errors,
    /// Records replayed from the log at start.
    log_replayed_records,
    /// Log segments whose torn or corrupt tail was cut off at start.
    log_corrupt_tails,
}

/// Fan-out latency histogram bounds: 1 µs to 60 s, 3 significant digits.
#[allow(clippy::expect_used)] // constant arguments: cannot fail
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("constant histogram bounds are valid")
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

impl ShardStats {
    /// Records one durable-log `fdatasync`'s latency.
    pub fn record_fsync(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).clamp(1_000, 60_000_000_000);
        let _ = self.fsync.borrow_mut().record(ns);
    }

    /// Records one fan-out's latency (saturating at the histogram's range).
    pub fn record_fanout(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).clamp(1_000, 60_000_000_000);
        let _ = self.fanout.borrow_mut().record(ns);
    }
}

/// Everything one shard reports about itself, sent to the shard serving a `/stats` or
/// `/metrics` request. Plain data: it crosses threads.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Which shard.
    pub shard: usize,
    /// Its counters.
    pub counters: Counters,
    /// Sockets open now (any phase).
    pub connections: u64,
    /// Upgraded WebSocket connections open now.
    pub websockets: u64,
    /// Public rooms this shard owns.
    pub rooms_public: u64,
    /// Personal rooms (`@user:…`) this shard owns.
    pub rooms_personal: u64,
    /// Messages waiting in this shard's inbox.
    pub inbox_depth: u64,
    /// Fan-out latency histogram (ns).
    pub fanout: Histogram<u64>,
    /// The largest public rooms it owns (or the one asked for), largest first.
    pub rooms: Vec<RoomSummary>,
    /// Bytes of room history held.
    pub history_bytes: u64,
    /// Messages of room history held.
    pub history_messages: u64,
    /// Durable log `fdatasync` latency histogram (ns).
    pub fsync: Histogram<u64>,
    /// Bytes of this shard's log segments on disk (0 without `--data-dir`).
    pub log_disk_bytes: u64,
    /// This shard's log segments on disk.
    pub log_segments: u64,
}

/// A room's figures for `/stats` (kept here, beside the snapshot that carries them, so
/// that the counters depend on nothing above them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomSummary {
    /// Room name.
    pub room: String,
    /// Distinct users present.
    pub members: u32,
    /// Connections joined.
    pub connections: u32,
    /// Messages sequenced since the room was created.
    pub messages: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_merge_and_list_in_declaration_order() {
        let a = ShardStats::default();
        inc(&a.messages_in);
        add(&a.deliveries, 5);
        let mut sum = a.counters();
        sum.merge(&a.counters());
        assert_eq!((sum.messages_in, sum.deliveries), (2, 10));
        let each = sum.each();
        assert_eq!(each[0].0, "connections_total");
        assert!(each.iter().all(|(_, help, _)| !help.is_empty() && !help.starts_with(' ')));
    }

    #[test]
    fn fanout_latency_is_clamped_into_range() {
        let s = ShardStats::default();
        s.record_fanout(Duration::from_nanos(5));
        s.record_fanout(Duration::from_secs(3600));
        let h = s.fanout.borrow();
        assert_eq!(h.len(), 2);
        // Both values landed inside the range (min/max report their bucket's bounds).
        assert!(h.min() <= 1_000 && h.max() >= 59_000_000_000 && h.max() <= 61_000_000_000, "{} {}", h.min(), h.max());
    }
}
