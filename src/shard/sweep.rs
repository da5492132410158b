//! Heartbeats and timeouts, by one periodic sweep per shard instead of one timer per
//! connection (a timer costs memory per connection and slows every reactor pass when
//! there are a million of them).
//!
//! Each tick walks the connection table once: pings connections silent for about one
//! interval (so busy connections are never pinged, and pings are spread by when each
//! connection last spoke), closes connections silent for two intervals, and
//! enforces the handshake and close timeouts. Silence that closes is counted only while
//! the shard reads: when congestion pauses reading (see `Services::pause`), the pongs
//! wait unread in the kernel, and a shard must not close healthy peers for its own
//! backlog. Nor is a connection silent whose bytes wait unread in the kernel: a shard
//! that fell behind (starved of CPU on a crowded host, or busy with a burst) runs its
//! sweep before the readers that would see those bytes, so the sweep asks the socket
//! before it closes ([`heard_meanwhile`]). What to do with one connection is decided
//! by [`decide`], a pure function of the connection's clocks.
//!
//! Connections that connected in one burst (a deploy, a load test, a network coming
//! back) would stay in step forever: pinged in the same sweep, answering together, then
//! silent for exactly one interval again, so every interval one sweep sends a ping to
//! each of them and the readers take all the pongs at once, a stall for every room's
//! traffic on the shard. So each connection is pinged up to a quarter interval early, by
//! an offset of its own ([`Clocks::spread`]), which scatters such a burst over a quarter
//! interval of sweeps and keeps it scattered.

use std::rc::Rc;
use std::time::Duration;

use super::conns::{Conn, Phase};
use super::{Services, Shard};
use crate::http::response::Answer;
use crate::metrics::inc;
use crate::rt;
use crate::ws::close;

/// Runs the sweep until the shard ends.
pub(super) async fn run(shard: Rc<Shard>) {
    let cfg = &shard.cfg;
    let finest = (cfg.ping_interval / 4).min(cfg.handshake_timeout / 2).min(cfg.close_timeout / 2);
    let tick = finest.clamp(Duration::from_millis(10), Duration::from_secs(1));
    let tick_ms = tick.as_millis() as u32;
    let mut last = shard.now();
    loop {
        rt::sleep(tick).await;
        last = shard.sweep(last, tick_ms);
    }
}

/// Whether a sweep `gap` ms after the previous one, `tick_ms` apart by plan, is late
/// enough to report: the shard (or the whole host) stalled, and pings ran late with it.
fn late(gap: u32, tick_ms: u32) -> bool {
    gap > (10 * tick_ms).max(5_000)
}

/// The sweep's limits, in shard milliseconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Silence after which a connection is pinged; twice this closes it.
    pub ping: u32,
    /// Longest an HTTP connection may sit idle or with a partial request.
    pub handshake: u32,
    /// Longest the server lingers in a closing phase.
    pub close: u32,
    /// Shard time since which the shard reads every connection
    /// (`Services::reading_since`; `None`: always): silence before it does not close.
    pub reading_since: Option<u32>,
}

/// What a connection needs from one sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing.
    Keep,
    /// Silent for one interval: ping it.
    Ping,
    /// Silent for two intervals: close it with 1001.
    HeartbeatClose,
    /// Silent for two intervals, but not while the shard was reading: keep it for now.
    HeartbeatDeferred,
    /// An HTTP connection over the handshake timeout; `partial` when it has sent part
    /// of a request (it is told 408).
    HandshakeTimeout {
        /// A partial request is buffered.
        partial: bool,
    },
    /// Lingered for the whole close timeout: drop what is queued and close.
    CloseTimeout,
}

/// The clocks and flags of a connection that [`decide`] reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clocks {
    /// Current phase.
    pub phase: Phase,
    /// Shard time the phase began.
    pub phase_since: u32,
    /// Shard time of the last byte received.
    pub last_seen: u32,
    /// A ping is outstanding.
    pub pinged: bool,
    /// HTTP: an answer is being computed (the handshake clock is stopped).
    pub http_busy: bool,
    /// HTTP: part of a request is buffered.
    pub http_partial: bool,
    /// A number of the connection's own, fixed for its life and scattered across
    /// connections: how early within a quarter interval it is pinged.
    pub spread: u32,
}

impl Clocks {
    fn of(conn: &Conn) -> Clocks {
        Clocks {
            phase: conn.phase,
            phase_since: conn.phase_since,
            last_seen: conn.last_seen,
            pinged: conn.pinged,
            http_busy: conn.http.as_ref().is_some_and(|h| h.busy),
            http_partial: conn.http.as_ref().is_some_and(|h| !h.buf.is_empty()),
            // Fibonacci hashing of the generation, unique per connection on the shard.
            spread: conn.generation().wrapping_mul(0x9E37_79B9),
        }
    }
}

/// Time from `since` to `now` on the shard clock. A `since` later than `now` (set after
/// the sweep read its clock: the sweep closes connections itself, e.g. on token expiry,
/// before walking the table) is no time at all, not a wrapped-around eternity.
fn elapsed(now: u32, since: u32) -> u32 {
    let d = now.wrapping_sub(since);
    if d > u32::MAX / 2 {
        0
    } else {
        d
    }
}

/// Turns a heartbeat close into a deferral when the peer has spoken after all: `unread`
/// (asked only for a connection about to be closed, so one syscall per such
/// connection, not per sweep) says whether bytes from it wait in the socket's receive
/// queue. They are most likely the pong to the ping that the silence began with; the
/// shard reads them as soon as it gets to the connection's reader.
pub(super) fn heard_meanwhile(action: Action, unread: impl FnOnce() -> bool) -> Action {
    match action {
        Action::HeartbeatClose if unread() => Action::HeartbeatDeferred,
        other => other,
    }
}

/// How much earlier than one full interval `ping` a connection with `spread` is
/// pinged: below a quarter interval, so it still has more than one interval to answer.
fn early(spread: u32, ping: u32) -> u32 {
    spread % (ping / 4).max(1)
}

/// Decides what one sweep does to a connection at shard time `now`.
pub(super) fn decide(c: Clocks, now: u32, limits: Limits) -> Action {
    let in_phase = elapsed(now, c.phase_since);
    let silent = elapsed(now, c.last_seen);
    // Only silence while this shard was reading can prove the peer gone.
    let unheard = limits.reading_since.map_or(silent, |since| silent.min(elapsed(now, since)));
    match c.phase {
        Phase::Http if in_phase >= limits.handshake && !c.http_busy => {
            Action::HandshakeTimeout { partial: c.http_partial }
        }
        Phase::Open if unheard >= 2 * limits.ping => Action::HeartbeatClose,
        Phase::Open if silent >= 2 * limits.ping => Action::HeartbeatDeferred,
        Phase::Open if !c.pinged && silent >= limits.ping - early(c.spread, limits.ping) => Action::Ping,
        Phase::Closing | Phase::ClosingDiscard | Phase::Linger | Phase::Done if in_phase >= limits.close => {
            Action::CloseTimeout
        }
        _ => Action::Keep,
    }
}

/// What one sweep's heartbeat closes looked like, for the warning that reports them: an
/// operator (and a load test) must be able to tell peers that never answered a ping from
/// pings that never left or a sweep that ran late.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Closed {
    /// Connections closed for silence in this sweep.
    pub count: u32,
    /// Of them, with a ping outstanding (sent, never answered).
    pub pinged: u32,
    /// Of them, with bytes still queued in their outbox (our ping may not have left).
    pub queued: u32,
    /// Shortest and longest silence among them, in shard milliseconds.
    pub silent_min: u32,
    /// See `silent_min`.
    pub silent_max: u32,
}

impl Closed {
    /// Counts one connection closed with clocks `c` at `now`, `queued` telling whether
    /// its outbox still held bytes.
    pub fn note(&mut self, c: &Clocks, now: u32, queued: bool) {
        let silent = elapsed(now, c.last_seen);
        self.silent_min = if self.count == 0 { silent } else { self.silent_min.min(silent) };
        self.silent_max = self.silent_max.max(silent);
        self.count += 1;
        self.pinged += u32::from(c.pinged);
        self.queued += u32::from(queued);
    }
}

impl Shard {
    /// One sweep; `last` is the shard time of the previous one (`tick_ms` apart by plan).
    /// Returns this one's time.
    fn sweep(&self, last: u32, tick_ms: u32) -> u32 {
        let limits = Limits {
            ping: self.cfg.ping_interval.as_millis() as u32,
            handshake: self.cfg.handshake_timeout.as_millis() as u32,
            close: self.cfg.close_timeout.as_millis() as u32,
            reading_since: self.reading_since(),
        };
        self.expire_sessions();
        let now = self.now();
        let mut owned = self.owned.borrow_mut();
        owned.expire(Services::wall_ms(), &mut |out| self.route(out));
        owned.report_counts(&mut |out| self.route(out));
        owned.handoff_tick(Services::wall_ms(), &mut |out| self.route(out));
        drop(owned);
        self.count_cluster();
        if now / crate::limits::Window::MS != self.last_prune.get() {
            self.last_prune.set(now / crate::limits::Window::MS);
            self.ips.borrow_mut().prune(now);
        }
        let gap = elapsed(now, last);
        if late(gap, tick_ms) {
            inc(&self.stats.sweeps_late);
            tracing::warn!(
                shard = self.id,
                sweep_gap_ms = gap,
                "heartbeat sweep ran late: the shard ran no task meanwhile, or the host starved it"
            );
        }
        let mut closed = Closed::default();
        for (_, conn) in self.conns.borrow_mut().iter_mut() {
            let clocks = Clocks::of(conn);
            match heard_meanwhile(decide(clocks, now, limits), || conn.unread_input()) {
                Action::Keep => {}
                Action::HeartbeatDeferred => inc(&self.stats.heartbeat_closes_deferred),
                Action::HandshakeTimeout { partial } => {
                    // An idle keep-alive connection just goes; a partial request is told.
                    if partial {
                        inc(&self.stats.handshake_timeouts);
                        let answer = Answer::error(408, "timeout", "request not received in time");
                        conn.push(answer.render(false, false), self.caps);
                    }
                    conn.enter(Phase::Linger, now);
                    conn.wake();
                }
                Action::HeartbeatClose => {
                    // Silent for two intervals: the peer is gone or wedged. Say why (its
                    // backlog is not owed any more), and linger as for any close.
                    inc(&self.stats.heartbeat_closes);
                    closed.note(&clocks, now, !conn.out.is_empty());
                    self.close(conn, close::GOING_AWAY, "heartbeat timeout", true);
                }
                Action::Ping => {
                    conn.pinged = true;
                    inc(&self.stats.heartbeat_pings);
                    let frame = self.ping.clone();
                    self.push(conn, frame);
                }
                Action::CloseTimeout => {
                    // The peer did not complete the close (or does not read): drop it.
                    conn.out.clear();
                    conn.enter(Phase::Done, now);
                    conn.wake();
                }
            }
        }
        if closed.count > 0 {
            tracing::warn!(
                shard = self.id,
                closed = closed.count,
                pinged = closed.pinged,
                queued = closed.queued,
                silent_min_ms = closed.silent_min,
                silent_max_ms = closed.silent_max,
                sweep_gap_ms = gap,
                "heartbeat: closed connections silent for two intervals"
            );
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { ping: 30_000, handshake: 10_000, close: 2_000, reading_since: None };

    fn clocks(phase: Phase, phase_since: u32) -> Clocks {
        Clocks {
            phase,
            phase_since,
            last_seen: phase_since,
            pinged: false,
            http_busy: false,
            http_partial: false,
            spread: 0,
        }
    }

    /// The bug behind `abuse::an_expiring_token_closes_with_1008_unless_refreshed`
    /// failing on a loaded host: the sweep read its clock, then closed an expired
    /// session (which stamps the phase with a fresh, later clock), and the unsigned
    /// difference wrapped to ~49 days, so the same sweep "timed out" the close at once,
    /// dropped the unsent close frame and closed the socket: the client saw the stream
    /// end without a close frame.
    #[test]
    fn regression_close_stamped_after_the_sweep_clock_is_not_timed_out() {
        for phase in [Phase::Closing, Phase::ClosingDiscard, Phase::Linger, Phase::Done] {
            assert_eq!(decide(clocks(phase, 1_001), 1_000, LIMITS), Action::Keep, "{phase:?}");
        }
        assert_eq!(decide(clocks(Phase::Open, 1_001), 1_000, LIMITS), Action::Keep);
        assert_eq!(decide(clocks(Phase::Http, 1_001), 1_000, LIMITS), Action::Keep);
    }

    #[test]
    fn every_closing_phase_times_out_after_the_close_timeout() {
        for phase in [Phase::Closing, Phase::ClosingDiscard, Phase::Linger, Phase::Done] {
            assert_eq!(decide(clocks(phase, 5_000), 6_999, LIMITS), Action::Keep, "{phase:?}");
            assert_eq!(decide(clocks(phase, 5_000), 7_000, LIMITS), Action::CloseTimeout, "{phase:?}");
        }
        assert_eq!(decide(clocks(Phase::Open, 5_000), 7_000, LIMITS), Action::Keep);
    }

    #[test]
    fn heartbeat_pings_once_after_one_interval_and_closes_after_two() {
        let mut c = clocks(Phase::Open, 0);
        c.last_seen = 1_000;
        assert_eq!(decide(c, 30_999, LIMITS), Action::Keep);
        assert_eq!(decide(c, 31_000, LIMITS), Action::Ping);
        c.pinged = true;
        assert_eq!(decide(c, 31_000, LIMITS), Action::Keep, "one ping per silence");
        assert_eq!(decide(c, 61_000, LIMITS), Action::HeartbeatClose);
    }

    /// Connections that connected together were pinged together every interval, forever
    /// (each answer restarts the silence at the same moment): one sweep pinged them all and
    /// the pongs came back at once. Each is pinged up to a quarter interval early by its
    /// own offset, never later than one interval, so a burst spreads and stays spread.
    #[test]
    fn regression_connections_that_joined_together_are_not_pinged_in_one_sweep() {
        let mut c = clocks(Phase::Open, 0);
        // 1,000 connections in a row, as a burst of connects gives them.
        let mut first_ping = |generation: u32| {
            c.spread = generation.wrapping_mul(0x9E37_79B9);
            (0..=LIMITS.ping).step_by(1_000).find(|&now| decide(c, now, LIMITS) == Action::Ping)
        };
        let mut per_sweep = std::collections::BTreeMap::<u32, u32>::new();
        for generation in 1..=1_000 {
            let at = first_ping(generation).expect("pinged within one interval");
            assert!(at > LIMITS.ping * 3 / 4, "never more than a quarter interval early: {at}");
            *per_sweep.entry(at).or_default() += 1;
        }
        // A quarter of 30 s is 7 or 8 one-second sweeps, so about 130 per sweep; all 1,000
        // in one sweep before.
        assert!(per_sweep.len() >= 7, "{per_sweep:?}");
        assert!(per_sweep.values().all(|&n| n <= 250), "{per_sweep:?}");
        // Still: one ping per silence, and the close after two full intervals.
        c.pinged = true;
        assert_eq!(decide(c, LIMITS.ping, LIMITS), Action::Keep);
        assert_eq!(decide(c, 2 * LIMITS.ping, LIMITS), Action::HeartbeatClose);
    }

    /// The million-connection runs (issue 14): nodes starved of CPU on a crowded host
    /// closed tens of thousands of clients with 1001 while publishing (`heartbeat_closes`
    /// summed over the nodes afterwards: 39,457). One way a healthy peer gets closed: a
    /// shard that falls behind runs its sweep before the readers holding the pongs; the
    /// bytes waiting in the socket prove the peer alive, so the close waits for the
    /// reader. (The next quiet run deferred only 15 of 66,878 closes this way: there the
    /// pings or pongs were late on the way, which this does not cover.)
    #[test]
    fn regression_a_pong_waiting_unread_defers_the_heartbeat_close() {
        let mut c = clocks(Phase::Open, 0);
        c.last_seen = 1_000;
        c.pinged = true;
        let close = decide(c, 61_000, LIMITS);
        assert_eq!(close, Action::HeartbeatClose);
        assert_eq!(heard_meanwhile(close, || true), Action::HeartbeatDeferred);
        assert_eq!(heard_meanwhile(close, || false), Action::HeartbeatClose, "really silent: closed");
        // Only a close asks the socket (one syscall per connection about to go, not per sweep).
        for action in [Action::Keep, Action::Ping, Action::CloseTimeout, Action::HeartbeatDeferred] {
            assert_eq!(heard_meanwhile(action, || panic!("asked for {action:?}")), action);
        }
    }

    /// A shard whose inboxes stay over their high-water mark pauses reading; the pongs to
    /// its pings then wait unread in the kernel, and the sweep closed healthy clients with
    /// 1001 "heartbeat timeout" for the shard's own backlog. Silence counts only from when
    /// the shard reads again. (Suspected behind the 1001 closes while publishing at a
    /// million, issue 14; the next run showed no congestion pause on the nodes that
    /// answered, so those closes have another cause. This rule stands on its own.)
    #[test]
    fn regression_silence_while_reads_were_paused_does_not_close() {
        let mut c = clocks(Phase::Open, 0);
        c.last_seen = 1_000;
        c.pinged = true;
        // Reads were paused until 40,000: the 61,000 silence is only 21,000 unheard.
        let paused = Limits { reading_since: Some(40_000), ..LIMITS };
        assert_eq!(decide(c, 61_000, paused), Action::HeartbeatDeferred);
        assert_eq!(decide(c, 99_999, paused), Action::HeartbeatDeferred);
        assert_eq!(decide(c, 100_000, paused), Action::HeartbeatClose, "two intervals unheard since reads resumed");
        // Paused now (reading_since = now): never closed for silence meanwhile.
        assert_eq!(decide(c, 500_000, Limits { reading_since: Some(500_000), ..LIMITS }), Action::HeartbeatDeferred);
        // A resume long ago changes nothing.
        assert_eq!(decide(c, 61_000, Limits { reading_since: Some(500), ..LIMITS }), Action::HeartbeatClose);
        // Pings still go out while paused: they are ours to send.
        c.pinged = false;
        assert_eq!(decide(c, 31_000, Limits { reading_since: Some(31_000), ..LIMITS }), Action::Ping);
    }

    #[test]
    fn handshake_timeout_waits_for_a_busy_answer_and_tells_a_partial_request() {
        let mut c = clocks(Phase::Http, 0);
        assert_eq!(decide(c, 9_999, LIMITS), Action::Keep);
        assert_eq!(decide(c, 10_000, LIMITS), Action::HandshakeTimeout { partial: false });
        c.http_partial = true;
        assert_eq!(decide(c, 10_000, LIMITS), Action::HandshakeTimeout { partial: true });
        c.http_busy = true;
        assert_eq!(decide(c, 50_000, LIMITS), Action::Keep, "an answer is being computed");
    }

    #[test]
    fn a_sweep_is_late_after_ten_ticks_and_at_least_five_seconds() {
        assert!(!late(1_000, 1_000) && !late(5_000, 10) && !late(10_000, 1_000));
        assert!(late(5_001, 10) && late(10_001, 1_000));
    }

    #[test]
    fn closed_reports_pinged_queued_and_the_range_of_silence() {
        let mut closed = Closed::default();
        let mut c = clocks(Phase::Open, 0);
        c.last_seen = 1_000;
        c.pinged = true;
        closed.note(&c, 61_000, false);
        c.last_seen = 500;
        c.pinged = false;
        closed.note(&c, 61_000, true);
        let want = Closed { count: 2, pinged: 1, queued: 1, silent_min: 60_000, silent_max: 60_500 };
        assert_eq!(closed, want);
    }

    #[test]
    fn clocks_wrapping_past_u32_still_measure_forward() {
        let start = u32::MAX - 500;
        assert_eq!(decide(clocks(Phase::Closing, start), start.wrapping_add(1_999), LIMITS), Action::Keep);
        assert_eq!(decide(clocks(Phase::Closing, start), start.wrapping_add(2_000), LIMITS), Action::CloseTimeout);
    }
}
