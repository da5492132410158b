//! What a run measures: latency histograms and correctness counters per engine thread,
//! merged across threads and processes, and shipped between processes in HdrHistogram's
//! own compressed serialization.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, WireAudit};
use crate::payload::Stamp;
use crate::track::Seen;

/// Latencies are recorded in microseconds, 3 significant digits, up to one hour.
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// An empty latency histogram (microseconds).
#[allow(clippy::expect_used)] // constant, valid bounds: no input can make this fail
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// A histogram in transit: HdrHistogram V2 deflate serialization, base64.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SerHist(pub String);

/// A histogram could not be shipped or read back.
#[derive(Debug, thiserror::Error)]
pub enum HistError {
    /// Serialization failed.
    #[error("serializing a histogram: {0}")]
    Serialize(String),
    /// Not base64 or not a valid serialized histogram.
    #[error("reading a histogram: {0}")]
    Deserialize(String),
    /// Two histograms could not be added (incompatible bounds).
    #[error("merging histograms: {0}")]
    Merge(String),
}

impl SerHist {
    /// Serializes `h`.
    pub fn encode(h: &Histogram<u64>) -> Result<SerHist, HistError> {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new().serialize(h, &mut bytes).map_err(|e| HistError::Serialize(format!("{e:?}")))?;
        Ok(SerHist(base64::engine::general_purpose::STANDARD.encode(bytes)))
    }

    /// Reads the histogram back.
    pub fn decode(&self) -> Result<Histogram<u64>, HistError> {
        if self.0.is_empty() {
            return Ok(new_hist());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.0)
            .map_err(|e| HistError::Deserialize(e.to_string()))?;
        Deserializer::new().deserialize(&mut &bytes[..]).map_err(|e| HistError::Deserialize(format!("{e:?}")))
    }
}

/// Adds `src` into `dst`.
pub fn merge_into(dst: &mut Histogram<u64>, src: &Histogram<u64>) -> Result<(), HistError> {
    dst.add(src).map_err(|e| HistError::Merge(format!("{e:?}")))
}

/// Correctness counters of the deliveries of one step.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deliveries {
    /// Bench messages received (duplicates included).
    pub received: u64,
    /// Received again: the same `seq` twice on one connection.
    pub duplicates: u64,
    /// Arrived after a higher `seq` on the same connection.
    pub reordered: u64,
    /// Jumps in a connection's `seq` stream, and how many messages they skipped.
    pub gaps: u64,
    /// Messages skipped by those jumps (some may arrive later, reordered).
    pub gap_messages: u64,
    /// Bench messages of an earlier step that arrived after that step was closed.
    pub late: u64,
    /// Room messages that were not bench payloads.
    pub foreign: u64,
    /// Bytes read from the sockets while the step was open, as they came off the wire
    /// (frame headers included; compressed where permessage-deflate was negotiated):
    /// bytes on the wire per delivery for compression runs.
    #[serde(default)]
    pub wire_bytes: u64,
}

impl Deliveries {
    /// Distinct deliveries: received minus duplicates.
    pub fn unique(&self) -> u64 {
        self.received.saturating_sub(self.duplicates)
    }

    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &Deliveries) {
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.gaps += o.gaps;
        self.gap_messages += o.gap_messages;
        self.late += o.late;
        self.foreign += o.foreign;
        self.wire_bytes += o.wire_bytes;
    }
}

/// Reconnections and what recovery made of them (docs/PROTOCOL.md, "Recovery"). Kept per
/// step (in [`StepRecord`], exact) and per run (in [`ConnStats`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recovery {
    /// Joined connections bench-client closed on purpose (`--churn`), to be reconnected.
    pub churned: u64,
    /// Reconnection attempts started (after a churn, a server close such as 1013, 1001 or
    /// 1012, or a dropped socket).
    pub reconnects: u64,
    /// Attempts that failed before their rejoin completed (retried with backoff).
    pub failed_attempts: u64,
    /// Connections that used up `--reconnect-attempts`: members no more, their missing
    /// deliveries count as lost.
    pub gave_up: u64,
    /// Rejoins answered `recovered: true`: every missed message was replayed.
    pub recovered: u64,
    /// Rejoins answered `recovered: false` (epoch changed, or history too short).
    pub not_recovered: u64,
    /// Room messages received as replay (before the rejoin's `joined`).
    pub replayed: u64,
    /// Messages a not-recovered rejoin skipped (the range between the last `seq` seen and
    /// the new `joined.seq`): lost for good, never hidden.
    pub unrecoverable: u64,
}

impl Recovery {
    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &Recovery) {
        self.churned += o.churned;
        self.reconnects += o.reconnects;
        self.failed_attempts += o.failed_attempts;
        self.gave_up += o.gave_up;
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.replayed += o.replayed;
        self.unrecoverable += o.unrecoverable;
    }

    /// Every reconnection ended in a gap-free recovery.
    pub fn clean(&self) -> bool {
        self.gave_up == 0 && self.not_recovered == 0 && self.unrecoverable == 0
    }
}

/// Width of a [`Timeline`] window, in nanoseconds of intended send time.
pub const WINDOW_NS: u64 = 10_000_000_000;

/// Most windows one timeline keeps (4,096 × 10 s: over 11 hours).
pub const MAX_WINDOWS: usize = 4096;

/// Corrected latencies counted per window as "over", in microseconds (1, 5, 10, 50 ms).
pub const OVER_US: [u64; 4] = [1_000, 5_000, 10_000, 50_000];

/// The deliveries of one window of intended send times.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Window {
    /// The window holds the messages intended for `[start_ns, start_ns + WINDOW_NS)`
    /// (CLOCK_MONOTONIC, the same clock in every worker process of the host).
    pub start_ns: u64,
    /// Deliveries timed (duplicates are not).
    pub deliveries: u64,
    /// Of those, how many took longer than each of [`OVER_US`].
    pub over: [u64; OVER_US.len()],
    /// The slowest, in microseconds.
    pub max_us: u64,
}

/// Latency over the course of a step: one [`Window`] per 10 s of intended send times, so
/// a tail made of a few stalls is told apart from one spread over the whole run. Windows
/// are sorted by start and aligned on multiples of [`WINDOW_NS`], so records of different
/// threads and processes merge window by window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timeline(pub Vec<Window>);

impl Timeline {
    /// Counts one delivery of a message intended at `intended_ns` that took `latency_us`.
    /// Beyond [`MAX_WINDOWS`] distinct windows (only a corrupt stamp gets there: that is
    /// 11 hours of one step) a new window is not opened and the delivery is left out.
    pub fn record(&mut self, intended_ns: u64, latency_us: u64) {
        let Some(w) = self.window(intended_ns - intended_ns % WINDOW_NS) else { return };
        w.deliveries += 1;
        for (n, limit) in w.over.iter_mut().zip(OVER_US) {
            *n += u64::from(latency_us > limit);
        }
        w.max_us = w.max_us.max(latency_us);
    }

    /// Adds another record's windows.
    pub fn merge(&mut self, o: &Timeline) {
        for ow in &o.0 {
            let Some(w) = self.window(ow.start_ns) else { continue };
            w.deliveries += ow.deliveries;
            for (n, m) in w.over.iter_mut().zip(ow.over) {
                *n += m;
            }
            w.max_us = w.max_us.max(ow.max_us);
        }
    }

    /// The window starting at `start`, created in order if new and there is room.
    /// Deliveries arrive roughly in intended order, so the last window is the usual one.
    fn window(&mut self, start: u64) -> Option<&mut Window> {
        let i = match self.0.last() {
            Some(w) if w.start_ns == start => self.0.len() - 1,
            _ => match self.0.binary_search_by_key(&start, |w| w.start_ns) {
                Ok(i) => i,
                Err(_) if self.0.len() >= MAX_WINDOWS => return None,
                Err(i) => {
                    self.0.insert(i, Window { start_ns: start, ..Window::default() });
                    i
                }
            },
        };
        self.0.get_mut(i)
    }
}

/// One thread's (or, merged, one run's) record of a step: both histograms and the counters.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// Receive time − intended send time (coordinated-omission-safe).
    pub corrected: Histogram<u64>,
    /// Receive time − actual send time.
    pub uncorrected: Histogram<u64>,
    /// Correctness counters.
    pub counts: Deliveries,
    /// Reconnections while the step was open.
    pub recovery: Recovery,
    /// Corrected latency per 10 s of the step.
    pub timeline: Timeline,
    /// `--acks`: messages, acks and deliveries per receiver home (empty otherwise).
    pub audit: Audit,
}

impl Default for StepRecord {
    fn default() -> Self {
        StepRecord {
            corrected: new_hist(),
            uncorrected: new_hist(),
            counts: Deliveries::default(),
            recovery: Recovery::default(),
            timeline: Timeline::default(),
            audit: Audit::default(),
        }
    }
}

impl StepRecord {
    /// Records one delivery of a bench message, received at `now_ns`, whose `seq` was
    /// classified as `seen` by the receiving connection. Returns the corrected latency in
    /// microseconds when it was recorded (duplicates are counted, not timed).
    pub fn delivery(&mut self, stamp: &Stamp, seen: Seen, now_ns: u64) -> Option<u64> {
        self.counts.received += 1;
        match seen {
            Seen::InOrder => {}
            Seen::Gap(n) => {
                self.counts.gaps += 1;
                self.counts.gap_messages += n;
            }
            Seen::Duplicate => {
                self.counts.duplicates += 1;
                return None;
            }
            Seen::Reordered => self.counts.reordered += 1,
        }
        let corrected = now_ns.saturating_sub(stamp.intended_ns) / 1000;
        self.corrected.saturating_record(corrected);
        self.timeline.record(stamp.intended_ns, corrected);
        self.uncorrected.saturating_record(now_ns.saturating_sub(stamp.actual_ns) / 1000);
        Some(corrected)
    }

    /// Adds another thread's record.
    pub fn merge(&mut self, o: &StepRecord) -> Result<(), HistError> {
        merge_into(&mut self.corrected, &o.corrected)?;
        merge_into(&mut self.uncorrected, &o.uncorrected)?;
        self.counts.merge(&o.counts);
        self.recovery.merge(&o.recovery);
        self.timeline.merge(&o.timeline);
        self.audit.merge(&o.audit);
        Ok(())
    }

    /// The serializable form.
    pub fn to_wire(&self) -> Result<WireStep, HistError> {
        Ok(WireStep {
            corrected: SerHist::encode(&self.corrected)?,
            uncorrected: SerHist::encode(&self.uncorrected)?,
            counts: self.counts,
            recovery: self.recovery,
            timeline: self.timeline.clone(),
            audit: (!self.audit.is_empty()).then(|| self.audit.to_wire()),
        })
    }
}

/// [`StepRecord`] as shipped from a worker process.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct WireStep {
    /// Corrected histogram.
    pub corrected: SerHist,
    /// Uncorrected histogram.
    pub uncorrected: SerHist,
    /// Counters.
    pub counts: Deliveries,
    /// Reconnections.
    #[serde(default)]
    pub recovery: Recovery,
    /// Latency per window.
    #[serde(default)]
    pub timeline: Timeline,
    /// `--acks` accounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<WireAudit>,
}

impl WireStep {
    /// Back to a mergeable record.
    pub fn decode(&self) -> Result<StepRecord, HistError> {
        Ok(StepRecord {
            corrected: self.corrected.decode()?,
            uncorrected: self.uncorrected.decode()?,
            counts: self.counts,
            recovery: self.recovery,
            timeline: self.timeline.clone(),
            audit: self.audit.as_ref().map(WireAudit::decode).unwrap_or_default(),
        })
    }
}

/// Connection outcomes of one thread, process or run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections this share of the run is to open.
    pub target: u64,
    /// `connect()` calls made.
    pub attempted: u64,
    /// WebSocket upgrades completed.
    pub upgraded: u64,
    /// Rooms joined (`joined` received).
    pub joined: u64,
    /// Connections open and joined right now.
    pub held: u64,
    /// Failures before the join completed, by kind (`ECONNREFUSED`, `EADDRNOTAVAIL`,
    /// `EMFILE`, `handshake`, `timeout`, …).
    pub failed: BTreeMap<String, u64>,
    /// Close frames received from the server, by close code (1013 = slow consumer).
    pub closes: BTreeMap<u16, u64>,
    /// Joined connections that ended without a close frame (reset, EOF).
    pub dropped: u64,
    /// `error` frames received, by code.
    pub errors: BTreeMap<String, u64>,
    /// Reconnections over the whole run.
    pub recovery: Recovery,
    /// Heartbeat closes (1001) seen: when each closed socket last got a ping.
    #[serde(default)]
    pub heartbeat_closes: PingAges,
}

/// For the server's heartbeat closes (1001): how long before the close each closed socket
/// last received a ping. A peer is closed after two silent intervals, so a ping about one
/// interval old says the client got it (and answered: its pong was lost or unread on the
/// server), one about two intervals old or none says the server's last ping never came.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PingAges {
    /// Closed sockets that never received a ping.
    pub never: u64,
    /// The others by the age of their last ping, in whole seconds rounded up to a power of
    /// two (key 4: more than 2 s, at most 4 s).
    pub by_age_s: BTreeMap<u32, u64>,
    /// Closed sockets with bytes still unsent by the client (a pong among them, maybe).
    pub unsent: u64,
}

impl PingAges {
    /// Counts one heartbeat close at monotonic second `now_s` of a socket last pinged at
    /// second `last_ping_s` (0: never), `unsent` telling whether the client had bytes the
    /// kernel had not taken.
    pub fn note(&mut self, last_ping_s: u32, now_s: u32, unsent: bool) {
        if last_ping_s == 0 {
            self.never += 1;
        } else {
            let secs = now_s.saturating_sub(last_ping_s);
            let bucket = secs.max(1).checked_next_power_of_two().unwrap_or(u32::MAX);
            *self.by_age_s.entry(bucket).or_default() += 1;
        }
        self.unsent += u64::from(unsent);
    }

    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &PingAges) {
        self.never += o.never;
        self.unsent += o.unsent;
        for (k, v) in &o.by_age_s {
            *self.by_age_s.entry(*k).or_default() += v;
        }
    }

    /// Whether no heartbeat close was seen.
    pub fn is_empty(&self) -> bool {
        self.never == 0 && self.by_age_s.is_empty()
    }
}

impl ConnStats {
    /// Counts a failure of `kind`.
    pub fn fail(&mut self, kind: &str) {
        *self.failed.entry(kind.to_owned()).or_default() += 1;
    }

    /// Total failures.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &ConnStats) {
        self.target += o.target;
        self.attempted += o.attempted;
        self.upgraded += o.upgraded;
        self.joined += o.joined;
        self.held += o.held;
        self.dropped += o.dropped;
        self.recovery.merge(&o.recovery);
        self.heartbeat_closes.merge(&o.heartbeat_closes);
        for (k, v) in &o.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.closes {
            *self.closes.entry(*k).or_default() += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// The correctness verdict of a step: every expected delivery accounted for.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    /// Σ over published messages of the room's member count.
    pub expected: u64,
    /// Distinct deliveries that arrived.
    pub delivered: u64,
    /// Expected deliveries that never arrived (within the drain grace).
    pub lost: u64,
    /// Deliveries beyond the expected count (should be impossible; a bug if not zero).
    pub excess: u64,
    /// Repeated deliveries.
    pub duplicates: u64,
    /// Out-of-order deliveries.
    pub reordered: u64,
}

impl Verdict {
    /// Compares what should have arrived with what did.
    pub fn judge(expected: u64, counts: &Deliveries) -> Verdict {
        let delivered = counts.unique();
        Verdict {
            expected,
            delivered,
            lost: expected.saturating_sub(delivered),
            excess: delivered.saturating_sub(expected),
            duplicates: counts.duplicates,
            reordered: counts.reordered,
        }
    }

    /// No loss, no duplicate, no reorder, nothing unexplained.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.excess == 0 && self.duplicates == 0 && self.reordered == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::SeqTrack;

    fn stamp(n: u64) -> Stamp {
        Stamp { step: 0, publisher: 0, n, intended_ns: 1_000_000, actual_ns: 1_500_000 }
    }

    /// Feeds a stream of `seq`s to one receiver the way the engine does.
    fn receive(seqs: &[u64]) -> StepRecord {
        let mut rec = StepRecord::default();
        let mut track = SeqTrack::default();
        track.start(0);
        for &s in seqs {
            rec.delivery(&stamp(s), track.observe(s), 3_000_000);
        }
        rec
    }

    #[test]
    fn a_clean_stream_is_judged_clean() {
        let rec = receive(&[1, 2, 3, 4]);
        let v = Verdict::judge(4, &rec.counts);
        assert!(v.clean(), "{v:?}");
        assert_eq!(rec.corrected.len(), 4);
        assert_eq!(rec.corrected.max(), rec.corrected.highest_equivalent(2000));
        assert_eq!(rec.uncorrected.max(), rec.uncorrected.highest_equivalent(1500));
    }

    #[test]
    fn a_dropped_delivery_is_reported_as_lost() {
        let rec = receive(&[1, 2, 4]);
        let v = Verdict::judge(4, &rec.counts);
        assert_eq!((v.lost, v.duplicates, v.reordered), (1, 0, 0));
        assert_eq!((rec.counts.gaps, rec.counts.gap_messages), (1, 1));
        assert!(!v.clean());
        // Lost at the tail: no gap to see, but the expected count still catches it.
        let v = Verdict::judge(4, &receive(&[1, 2, 3]).counts);
        assert_eq!(v.lost, 1);
    }

    #[test]
    fn a_repeated_delivery_is_reported_as_duplicate_not_as_extra() {
        let rec = receive(&[1, 2, 2, 3]);
        let v = Verdict::judge(3, &rec.counts);
        assert_eq!((v.lost, v.duplicates, v.excess, v.delivered), (0, 1, 0, 3));
        assert_eq!(rec.corrected.len(), 3, "a duplicate is not a latency sample");
        assert!(!v.clean());
    }

    #[test]
    fn a_reordered_delivery_is_reported() {
        let v = Verdict::judge(3, &receive(&[1, 3, 2]).counts);
        assert_eq!((v.lost, v.reordered, v.duplicates), (0, 1, 0));
        assert!(!v.clean());
    }

    #[test]
    fn records_survive_the_trip_between_processes() {
        let rec = receive(&[1, 2, 3]);
        let wire: WireStep = serde_json::from_str(&serde_json::to_string(&rec.to_wire().unwrap()).unwrap()).unwrap();
        let mut merged = wire.decode().unwrap();
        merged.merge(&rec).unwrap();
        assert_eq!(merged.corrected.len(), 6);
        assert_eq!(merged.counts.received, 6);
        assert_eq!(merged.timeline.0.len(), 1);
        assert_eq!(merged.timeline.0[0].deliveries, 6);
        // A worker of an older build sends no timeline: still decodable.
        let mut old = serde_json::to_value(rec.to_wire().unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("timeline");
        assert!(serde_json::from_value::<WireStep>(old).is_ok_and(|w| w.timeline.0.is_empty()));
        assert!(SerHist("not base64!".into()).decode().is_err());
    }

    /// A stall shows as the windows it fell in, not smeared over the step: each window
    /// counts its own deliveries, how many were over each threshold, and its maximum,
    /// and records of two threads merge window by window, whatever order they came in.
    #[test]
    fn the_timeline_keeps_each_window_apart_and_merges_by_window() {
        let at = |s: u64| 1_000 * WINDOW_NS + s * 1_000_000_000;
        let mut a = Timeline::default();
        a.record(at(1), 300);
        a.record(at(12), 7_000); // the second window: one stall
        a.record(at(3), 2_000); // late arrival for the first window
        a.record(at(25), 60_000);
        let mut b = Timeline::default();
        b.record(at(15), 20_000);
        b.record(at(0), 100);
        a.merge(&b);
        let starts: Vec<u64> = a.0.iter().map(|w| w.start_ns).collect();
        assert_eq!(starts, [at(0), at(10), at(20)]);
        assert_eq!(a.0[0], Window { start_ns: at(0), deliveries: 3, over: [1, 0, 0, 0], max_us: 2_000 });
        assert_eq!(a.0[1], Window { start_ns: at(10), deliveries: 2, over: [2, 2, 1, 0], max_us: 20_000 });
        assert_eq!(a.0[2], Window { start_ns: at(20), deliveries: 1, over: [1, 1, 1, 1], max_us: 60_000 });
    }

    /// A corrupt stamp (any intended time at all) cannot grow the timeline without bound:
    /// past MAX_WINDOWS windows, new ones are not opened, and the open ones still count.
    #[test]
    fn regression_corrupt_stamps_cannot_grow_the_timeline_without_bound() {
        let mut t = Timeline::default();
        for i in 0..(MAX_WINDOWS as u64 + 100) {
            t.record(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), 1);
        }
        assert_eq!(t.0.len(), MAX_WINDOWS);
        let first = t.0[0].start_ns;
        t.record(first + 1, 7);
        assert_eq!((t.0[0].deliveries, t.0[0].max_us), (2, 7));
        let mut merged = Timeline::default();
        merged.merge(&t);
        merged.merge(&t);
        assert_eq!(merged.0.len(), MAX_WINDOWS);
    }

    #[test]
    fn ping_ages_bucket_by_powers_of_two_and_merge() {
        let mut a = PingAges::default();
        a.note(0, 100, false);
        a.note(100, 100, true); // just pinged: the 1 s bucket
        a.note(40, 100, false); // 60 s: 64
        a.note(35, 100, false); // 65 s: 128
        let mut b = PingAges::default();
        b.note(1, 61, false);
        b.merge(&a);
        assert_eq!(b.never, 1);
        assert_eq!(b.unsent, 1);
        assert_eq!(b.by_age_s, BTreeMap::from([(1, 1), (64, 2), (128, 1)]));
        assert!(!b.is_empty() && PingAges::default().is_empty());
    }
}
