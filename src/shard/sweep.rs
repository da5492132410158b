//! Heartbeats and timeouts, by one periodic sweep per shard instead of one timer per
//! connection (a timer is ~200 B and slows every reactor pass at a million connections).
//!
//! Each tick walks the connection table once: pings connections silent for one interval
//! (so pings are spread by when each connection last spoke, not sent in one burst, and
//! busy connections are never pinged), closes connections silent for two intervals, and
//! enforces the handshake and close timeouts.

use std::rc::Rc;
use std::time::Duration;

use super::conns::Phase;
use super::Shard;
use crate::http::response::Answer;
use crate::metrics::inc;
use crate::rt;
use crate::ws::close;

/// Runs the sweep until the shard ends.
pub(super) async fn run(shard: Rc<Shard>) {
    let cfg = &shard.cfg;
    let finest = (cfg.ping_interval / 4).min(cfg.handshake_timeout / 2).min(cfg.close_timeout / 2);
    let tick = finest.clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        rt::sleep(tick).await;
        shard.sweep();
    }
}

impl Shard {
    fn sweep(&self) {
        let now = self.now();
        let ping = self.cfg.ping_interval.as_millis() as u32;
        let handshake = self.cfg.handshake_timeout.as_millis() as u32;
        let closing = self.cfg.close_timeout.as_millis() as u32;
        self.expire_sessions();
        self.owned.borrow_mut().expire(Self::wall_ms(), &mut |to, m| self.route(to, m));
        if now / crate::limits::Window::MS != self.last_prune.get() {
            self.last_prune.set(now / crate::limits::Window::MS);
            self.ips.borrow_mut().prune(now);
        }
        for (_, conn) in self.conns.borrow_mut().iter_mut() {
            let in_phase = now.wrapping_sub(conn.phase_since);
            match conn.phase {
                Phase::Http if in_phase >= handshake && !conn.http.as_ref().is_some_and(|h| h.busy) => {
                    // An idle keep-alive connection just goes; a partial request is told.
                    if conn.http.as_ref().is_some_and(|h| !h.buf.is_empty()) {
                        inc(&self.stats.handshake_timeouts);
                        let answer = Answer::error(408, "timeout", "request not received in time");
                        conn.push(answer.render(false, false), self.caps);
                    }
                    conn.enter(Phase::Done, now);
                    conn.wake();
                }
                Phase::Open if now.wrapping_sub(conn.last_seen) >= 2 * ping => {
                    // Silent for two intervals: the peer is gone or wedged. Say why, but
                    // do not wait for an answer that is not coming.
                    inc(&self.stats.heartbeat_closes);
                    self.close(conn, close::GOING_AWAY, "heartbeat timeout", true);
                    conn.enter(Phase::Done, now);
                }
                Phase::Open if !conn.pinged && now.wrapping_sub(conn.last_seen) >= ping => {
                    conn.pinged = true;
                    let frame = self.ping.clone();
                    self.push(conn, frame);
                }
                Phase::Closing | Phase::ClosingDiscard | Phase::Done if in_phase >= closing => {
                    // The peer did not complete the close (or does not read): drop it.
                    conn.out.clear();
                    conn.enter(Phase::Done, now);
                    conn.wake();
                }
                _ => {}
            }
        }
    }
}
