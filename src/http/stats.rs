//! `GET /stats`: the shards' snapshots merged into one JSON document (schema in
//! docs/HTTP.md). Pure: snapshots in, bytes out.

use serde::Serialize;

use crate::metrics::{Counters, Snapshot};
use crate::room::RoomSummary;

/// What the serving shard adds to the snapshots.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// Start time, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// The server is shutting down.
    pub draining: bool,
    /// Most rooms listed.
    pub limit: usize,
    /// The cluster bus figures (none: single node; shown as `"bus": {"state": "off"}`).
    pub bus: Option<crate::cluster::BusReport>,
}

#[derive(Serialize)]
struct Stats<'a> {
    uptime_ms: u64,
    started_at_ms: u64,
    shards: usize,
    draining: bool,
    connections: Connections,
    rooms: Rooms,
    history: History,
    messages: Messages,
    closes: Closes,
    rejections: Rejections,
    compression: Compression,
    fanout_latency_us: Latency,
    log: Log,
    counters: &'a Counters,
    room_list: Vec<&'a RoomSummary>,
    room_list_limit: usize,
    bus: Bus,
}

/// The durable log (`--data-dir`; all zero without it).
#[derive(Serialize)]
struct Log {
    disk_bytes: u64,
    segments: u64,
    records: u64,
    records_synced: u64,
    records_dropped: u64,
    replayed_records: u64,
    corrupt_tails: u64,
    fsync_latency_us: Latency,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Bus {
    Off { state: &'static str },
    On(crate::cluster::BusReport),
}

#[derive(Serialize)]
struct Connections {
    now: u64,
    websockets: u64,
    total: u64,
    per_shard: Vec<u64>,
}

#[derive(Serialize)]
struct Rooms {
    public: u64,
    personal: u64,
}

#[derive(Serialize)]
struct History {
    bytes: u64,
    messages: u64,
}

#[derive(Serialize)]
struct Messages {
    #[serde(rename = "in")]
    received: u64,
    published: u64,
    api_published: u64,
    deliveries: u64,
    deliveries_queued: u64,
}

#[derive(Serialize)]
struct Closes {
    slow_consumer: u64,
    protocol_error: u64,
    heartbeat: u64,
    handshake_timeout: u64,
}

#[derive(Serialize)]
struct Rejections {
    rate_limited: u64,
    auth: u64,
    client_errors: u64,
    http_errors: u64,
}

/// permessage-deflate: messages compressed (once per shard each), bytes before and after,
/// and `ratio` = after / before (0 before anything was compressed).
#[derive(Serialize)]
struct Compression {
    frames: u64,
    bytes_in: u64,
    bytes_out: u64,
    ratio: f64,
    time_ms: f64,
}

/// Latency percentiles in microseconds (fan-out: owner hand-off → frames written; the
/// log's fsync).
#[derive(Serialize)]
struct Latency {
    count: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    /// The percentiles of every shard's histogram (nanoseconds) that `of` picks, merged.
    fn merged(snaps: &[Snapshot], of: impl Fn(&Snapshot) -> &hdrhistogram::Histogram<u64>) -> Latency {
        let mut hist = hdrhistogram::Histogram::<u64>::new(3).ok();
        if let Some(h) = hist.as_mut() {
            for s in snaps {
                let _ = h.add(of(s));
            }
        }
        let us = |q: f64| hist.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0);
        Latency {
            count: hist.as_ref().map_or(0, |h| h.len()),
            p50: us(0.5),
            p99: us(0.99),
            p999: us(0.999),
            max: hist.as_ref().map_or(0.0, |h| h.max() as f64 / 1000.0),
        }
    }
}

/// Sums every shard's counters.
pub fn total(snaps: &[Snapshot]) -> Counters {
    let mut sum = Counters::default();
    for s in snaps {
        sum.merge(&s.counters);
    }
    sum
}

/// Renders the whole-server document, listing the `ctx.limit` largest rooms.
pub fn render(snaps: &[Snapshot], ctx: Context) -> Vec<u8> {
    let c = total(snaps);
    let mut rooms: Vec<&RoomSummary> = snaps.iter().flat_map(|s| &s.rooms).collect();
    rooms.sort_unstable_by(|a, b| b.members.cmp(&a.members).then_with(|| a.room.cmp(&b.room)));
    rooms.truncate(ctx.limit);
    let stats = Stats {
        uptime_ms: ctx.uptime_ms,
        started_at_ms: ctx.started_at_ms,
        shards: snaps.len(),
        draining: ctx.draining,
        connections: Connections {
            now: snaps.iter().map(|s| s.connections).sum(),
            websockets: snaps.iter().map(|s| s.websockets).sum(),
            total: c.connections_total,
            per_shard: snaps.iter().map(|s| s.connections).collect(),
        },
        rooms: Rooms {
            public: snaps.iter().map(|s| s.rooms_public).sum(),
            personal: snaps.iter().map(|s| s.rooms_personal).sum(),
        },
        history: History {
            bytes: snaps.iter().map(|s| s.history_bytes).sum(),
            messages: snaps.iter().map(|s| s.history_messages).sum(),
        },
        messages: Messages {
            received: c.messages_in,
            published: c.messages_published,
            api_published: c.api_publishes,
            deliveries: c.deliveries,
            deliveries_queued: c.deliveries_queued,
        },
        closes: Closes {
            slow_consumer: c.slow_consumer_closes,
            protocol_error: c.protocol_errors,
            heartbeat: c.heartbeat_closes,
            handshake_timeout: c.handshake_timeouts,
        },
        rejections: Rejections {
            rate_limited: c.rate_limited,
            auth: c.auth_rejections,
            client_errors: c.client_errors,
            http_errors: c.http_errors,
        },
        compression: Compression {
            frames: c.compressed_frames,
            bytes_in: c.compress_bytes_in,
            bytes_out: c.compress_bytes_out,
            ratio: if c.compress_bytes_in == 0 {
                0.0
            } else {
                c.compress_bytes_out as f64 / c.compress_bytes_in as f64
            },
            time_ms: c.compress_ns as f64 / 1e6,
        },
        fanout_latency_us: Latency::merged(snaps, |s| &s.fanout),
        log: Log {
            disk_bytes: snaps.iter().map(|s| s.log_disk_bytes).sum(),
            segments: snaps.iter().map(|s| s.log_segments).sum(),
            records: c.log_records,
            records_synced: c.log_records_synced,
            records_dropped: c.log_records_dropped,
            replayed_records: c.log_replayed_records,
            corrupt_tails: c.log_corrupt_tails,
            fsync_latency_us: Latency::merged(snaps, |s| &s.fsync),
        },
        counters: &c,
        room_list: rooms,
        room_list_limit: ctx.limit,
        bus: ctx.bus.map_or(Bus::Off { state: crate::cluster::BusState::Off.as_str() }, Bus::On),
    };
    simd_json::to_vec(&stats).unwrap_or_default()
}

/// Renders one room's figures, if any shard owns a room of that name.
pub fn render_room(snaps: &[Snapshot]) -> Option<Vec<u8>> {
    let room = snaps.iter().flat_map(|s| &s.rooms).next()?;
    simd_json::to_vec(room).ok()
}
