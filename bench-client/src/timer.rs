//! A timerfd on CLOCK_MONOTONIC, registered in an engine's poll: nanosecond wake-ups for
//! the publish schedule. `epoll_wait`'s own timeout has millisecond resolution, which would
//! add up to a millisecond of bench-client-made latency to every message.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A one-shot timer armed for absolute CLOCK_MONOTONIC deadlines.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    /// Creates a non-blocking timer.
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Timer { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Fires once at `deadline_ns` (CLOCK_MONOTONIC); replaces any earlier arming.
    pub fn arm_at(&self, deadline_ns: u64) -> io::Result<()> {
        let deadline_ns = deadline_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec; the old value is not requested.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Clears the expiry count after the timer fired (edge-triggered poll needs it drained).
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer; EAGAIN is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

impl Source for Timer {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::now_ns;

    #[test]
    fn wakes_a_poll_at_the_deadline() {
        let mut poll = mio::Poll::new().unwrap();
        let mut timer = Timer::new().unwrap();
        poll.registry().register(&mut timer, Token(1), Interest::READABLE).unwrap();
        let start = now_ns();
        timer.arm_at(start + 3_000_000).unwrap();
        let mut events = mio::Events::with_capacity(4);
        // Not before the deadline; after it, as soon as the host runs this thread (a
        // generous bound: polls return early only on a spurious wake-up).
        let fired = loop {
            poll.poll(&mut events, Some(std::time::Duration::from_secs(30))).unwrap();
            if events.iter().any(|e| e.token() == Token(1)) || now_ns() - start >= 30_000_000_000 {
                break events.iter().any(|e| e.token() == Token(1));
            }
        };
        let waited = now_ns() - start;
        assert!(fired, "the timer never fired ({waited} ns)");
        assert!((2_900_000..30_000_000_000).contains(&waited), "{waited}");
        timer.clear();
    }
}
