//! A wake-up from outside the executor, once a second, for every shard.
//!
//! At a million connections (58 single-shard nodes and the load generator on two cores)
//! shards stopped running *any* task for 2–11 minutes: no timers (so no heartbeat
//! pings, and then thousands of peers closed for silence in one sweep), no accepts, no
//! handshakes (the load generator's upgrades timed out), while the thread slept in
//! `io_uring_enter` on glommio's main ring. Each such stall ended when a socket event
//! woke one of the shard's tasks (the load generator closing its sockets). Bounding
//! glommio's sleep by its next timer did not end them (tried in the vendored glommio:
//! shards still stalled 106–385 s), so the executor was waking but not running its
//! tasks; our reading is that they sat scheduled in a run queue glommio no longer
//! ran, and that waking an idle task re-activates the queue. The root cause inside
//! glommio is not found. This module supplies that wake: one idle task per shard
//! ([`Nudge::idle`]) that a plain thread ([`Nudger`]) wakes every second through
//! glommio's foreign-wake path. Same command before and after (`bench/million.sh -n
//! 1050000 --nodes 58 --rooms 10000 --mode connect`): 1,003,378 held, 46,565 upgrades
//! timed out and 48,581 heartbeat closes before; 1,050,000 held, none timed out, no
//! heartbeat close with it. It does not end every stall: over three million runs with
//! it, one shard in 174 still stalled (198 s), against 3–11 per run without it; the cause
//! is still to be found. On a healthy shard it is one extra task run per second.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use atomic_waker::AtomicWaker;

/// How often the [`Nudger`] wakes each shard.
pub const PERIOD: Duration = Duration::from_secs(1);

/// One shard's end: the idle task waits on it, the nudger wakes it.
#[derive(Default)]
pub struct Nudge {
    waker: AtomicWaker,
    woken: AtomicBool,
}

impl Nudge {
    /// A new nudge, shared by a shard's idle task and the nudger.
    pub fn new() -> Arc<Nudge> {
        Arc::new(Nudge::default())
    }

    /// Wakes the idle task (from any thread).
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Runs on the shard until the shard ends: waits for each wake and does nothing
    /// else. Its being woken is the point (see the module comment).
    pub async fn idle(self: Arc<Self>) {
        loop {
            poll_fn(|cx| {
                self.waker.register(cx.waker());
                if self.woken.swap(false, Ordering::AcqRel) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

/// The thread that wakes every shard's [`Nudge`] each [`PERIOD`]. It holds them weakly;
/// [`Nudger::join`] stops it at once.
pub struct Nudger {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Nudger {
    /// Starts the thread for `nudges`.
    pub fn start(nudges: &[Arc<Nudge>]) -> std::io::Result<Nudger> {
        let weak: Vec<Weak<Nudge>> = nudges.iter().map(Arc::downgrade).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new().name("corecast-nudge".into()).spawn(move || {
            // An early unpark (or a spurious one) only nudges once more.
            while !stopped.load(Ordering::Acquire) {
                std::thread::park_timeout(PERIOD);
                weak.iter().filter_map(Weak::upgrade).for_each(|n| n.wake());
            }
        })?;
        Ok(Nudger { thread: Some(thread), stop })
    }

    /// Stops the thread and waits for it (the shards have ended: nothing to wake).
    pub fn join(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[test]
    fn a_wake_before_the_wait_is_not_lost_and_wakes_once() {
        let nudge = Nudge::new();
        nudge.wake();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut idle = Box::pin(nudge.clone().idle());
        // The pending wake is taken by the first poll; the loop then waits again.
        assert!(idle.as_mut().poll(&mut cx).is_pending());
        assert!(!nudge.woken.load(Ordering::Acquire), "the wake was consumed");
    }

    #[test]
    fn the_nudger_wakes_every_shard_and_stops_when_joined() {
        let nudges = vec![Nudge::new(), Nudge::new()];
        let nudger = Nudger::start(&nudges).expect("thread");
        // Wait for the event (a nudge on each), with a generous bound for a busy host.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !nudges.iter().all(|n| n.woken.load(Ordering::Acquire)) {
            assert!(std::time::Instant::now() < deadline, "no nudge within 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        nudger.join(); // returns at once; a thread that missed the stop would hang here
    }
}
