//! `GET /metrics`: the shards' snapshots in the Prometheus/OpenMetrics text format,
//! encoded by `prometheus-client` (the format is never written by hand).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::backend::BackendReport;
use crate::cluster::BusReport;
use crate::metrics::Snapshot;

/// `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency histograms' buckets (fan-out, log sync).
const BUCKETS: [f64; 16] =
    [5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0];

/// Renders every snapshot (one per shard, in shard order), and the cluster bus figures
/// when there is a cluster, and the application backend's when one is configured.
pub fn render(snaps: Vec<Snapshot>, bus: Option<BusReport>, backend: Option<BackendReport>) -> String {
    let mut registry = Registry::with_prefix("corecast");
    registry.register_collector(Box::new(Shards(snaps)));
    if let Some(bus) = bus {
        registry.register_collector(Box::new(Bus(bus)));
    }
    if let Some(backend) = backend {
        registry.register_collector(Box::new(Backend(backend)));
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Shards(Vec<Snapshot>);

/// A per-shard gauge: name, help, and how to read it from a snapshot.
type Gauge = (&'static str, &'static str, fn(&Snapshot) -> u64);

/// A per-shard latency histogram (ns): name, help, and which one of a snapshot.
type Latency = (&'static str, &'static str, fn(&Snapshot) -> &hdrhistogram::Histogram<u64>);

impl Collector for Shards {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(first) = self.0.first() else { return Ok(()) };
        // Counters, one sample per shard.
        for (i, (name, help, _)) in first.counters.each().into_iter().enumerate() {
            // The encoder appends `_total` to counters itself.
            let name = name.strip_suffix("_total").unwrap_or(name);
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &self.0 {
                let value = s.counters.each()[i].2;
                let shard = [("shard", s.shard.to_string())];
                ConstCounter::new(value).encode(family.encode_family(&shard)?)?;
            }
        }
        let gauges: [Gauge; 9] = [
            ("connections", "Sockets open now (any phase).", |s| s.connections),
            ("websockets", "Upgraded WebSocket connections open now.", |s| s.websockets),
            ("rooms_public", "Public rooms owned by the shard.", |s| s.rooms_public),
            ("rooms_personal", "Personal rooms (@user:…) owned by the shard: one per user connected to the node, made yet or not, and those kept for their history.", |s| s.rooms_personal),
            ("inbox_depth", "Messages waiting in the shard's inbox.", |s| s.inbox_depth),
            ("history_bytes", "Bytes of room history held by the shard.", |s| s.history_bytes),
            ("history_messages", "Messages of room history held by the shard.", |s| s.history_messages),
            ("log_disk_bytes", "Bytes of the shard's durable log segments on disk.", |s| s.log_disk_bytes),
            ("log_segments", "The shard's durable log segments on disk.", |s| s.log_segments),
        ];
        for (name, help, get) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &self.0 {
                let shard = [("shard", s.shard.to_string())];
                ConstGauge::new(get(s) as i64).encode(family.encode_family(&shard)?)?;
            }
        }
        let histograms: [Latency; 2] = [
            (
                "fanout_latency_seconds",
                "Owner hand-off to every local member's frame written or queued, per shard and message.",
                |s| &s.fanout,
            ),
            ("log_fsync_seconds", "Durable log fdatasync latency, per shard and sync.", |s| &s.fsync),
        ];
        for (name, help, get) in histograms {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for s in &self.0 {
                let h = get(s);
                // The encoder wants each bucket's own count (it accumulates them itself) and
                // `f64::MAX` as the +Inf bound.
                let mut below = 0;
                let mut buckets: Vec<(f64, u64)> = BUCKETS
                    .iter()
                    .map(|&le| {
                        let cumulative = h.count_between(0, (le * 1e9) as u64).max(below);
                        let own = cumulative - below;
                        below = cumulative;
                        (le, own)
                    })
                    .collect();
                buckets.push((f64::MAX, h.len().saturating_sub(below)));
                let sum = h.mean() * h.len() as f64 / 1e9;
                let shard = [("shard", s.shard.to_string())];
                family.encode_family(&shard)?.encode_histogram::<Vec<(String, String)>>(
                    sum,
                    h.len(),
                    &buckets,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// The cluster bus: one sample each (the bridge is one per node, not per shard).
#[derive(Debug)]
struct Bus(BusReport);

impl Collector for Bus {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let b = &self.0;
        let counters: [(&str, &str, u64); 15] = [
            ("bus_relayed_out", "Bus messages published to NATS.", b.relayed_out),
            ("bus_relayed_in", "Bus messages received from other nodes and handed to shards.", b.relayed_in),
            (
                "bus_relay_dropped",
                "Bus messages not relayed (NATS unreachable, bridge queue full, shard inbox congested).",
                b.relay_dropped,
            ),
            ("bus_forwarded", "Publishes forwarded to another node's sequencer.", b.forwarded),
            (
                "bus_forwards_resent",
                "Forwards sent again to the room's next sequencer after their node left unconfirmed.",
                b.forwards_resent,
            ),
            (
                "bus_forwards_unconfirmed",
                "Forwards never confirmed and not sent again (held past the window, or pushed out).",
                b.forwards_unconfirmed,
            ),
            ("bus_reconnects", "Reconnections to NATS after a loss.", b.reconnects),
            ("bus_decode_errors", "Bus messages that could not be decoded.", b.decode_errors),
            ("bus_seq_gaps", "Room frames received after a gap in the sequence.", b.seq_gaps),
            ("bus_epoch_changes", "Room stream epoch changes on this node.", b.epoch_changes),
            (
                "bus_stream_continuations",
                "Room streams continued here after another node handed them over.",
                b.stream_continuations,
            ),
            (
                "bus_rejoins_held",
                "Rejoins ahead of this node's copy of the room's stream, held until it caught up.",
                b.rejoins_held,
            ),
            ("bus_rejoins_held_recovered", "Held rejoins answered recovered: true.", b.rejoins_held_recovered),
            (
                "bus_joins_held_for_stream",
                "First joins on a node without the room's stream, answered once the sequencer's stream was known.",
                b.joins_held_for_stream,
            ),
            (
                "bus_joins_held_timed_out",
                "Joins held for the room's stream answered after the bound with this node's own epoch.",
                b.joins_held_timed_out,
            ),
        ];
        for (name, help, value) in counters {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        let gauges: [(&str, &str, i64); 3] = [
            ("bus_connected", "1 while connected to NATS, 0 while reconnecting.", i64::from(b.state == "connected")),
            ("cluster_nodes", "Live cluster nodes, this one included.", b.nodes as i64),
            (
                "bus_room_subscriptions",
                "NATS subscriptions held for public rooms (one per room, or per bucket).",
                b.room_subscriptions as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)?;
        }
        Ok(())
    }
}

/// The application backend's client: one sample each (one client per node).
#[derive(Debug)]
struct Backend(BackendReport);

impl Collector for Backend {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let b = &self.0;
        let family = encoder.encode_descriptor(
            "backend_proxy_calls",
            "Proxy calls made to the application backend, per endpoint.",
            None,
            MetricType::Counter,
        )?;
        let mut family = family;
        for (endpoint, n) in ["connect", "subscribe", "publish"].iter().zip(b.calls) {
            ConstCounter::new(n).encode(family.encode_family(&[("endpoint", *endpoint)])?)?;
        }
        let counters: [(&str, &str, u64); 8] = [
            (
                "backend_proxy_errors",
                "Proxy calls without a usable answer (timeout, unreachable, non-2xx, bad body).",
                b.call_errors,
            ),
            ("backend_proxy_timeouts", "Proxy calls that timed out.", b.call_timeouts),
            (
                "backend_proxy_busy",
                "Requests refused over --proxy-max-in-flight (answered `unavailable`).",
                b.call_busy,
            ),
            ("webhook_events_queued", "Webhook events queued for sending.", b.events_queued),
            ("webhook_events_dropped", "Webhook events dropped because the queue was full.", b.events_dropped),
            ("webhook_events_delivered", "Webhook events delivered (2xx).", b.events_delivered),
            ("webhook_batches_delivered", "Webhook batches delivered (2xx).", b.batches_delivered),
            ("webhook_retries", "Webhook POSTs retried after a failure.", b.batch_retries),
        ];
        for (name, help, value) in counters {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        let gauges: [(&str, &str, i64); 2] = [
            (
                "backend_up",
                "1 while the application backend answers, 0 after a failed call.",
                i64::from(b.state == "up"),
            ),
            ("webhook_queue", "Webhook events waiting to be sent.", b.webhook_queue as i64),
        ];
        for (name, help, value) in gauges {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)?;
        }
        Ok(())
    }
}
