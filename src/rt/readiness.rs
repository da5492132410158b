//! One epoll set per shard that tells which of its connections have input, so that an
//! idle connection holds no pending poll of its own in the runtime.
//!
//! glommio waits for a socket's input with one `POLL_ADD` source per socket: a 248-byte
//! heap object (and an io_uring request in the kernel) for every idle connection, the
//! largest part of one that is not ours (docs/DESIGN-NOTES.md, "Memory per connection").
//! Here every connection is added once, edge-triggered, to its shard's epoll set, and
//! only the set itself is polled through the runtime ([`Readiness::next`], one pending
//! source per shard). A connection reads until the socket has nothing left ([`try_read`]
//! returns `Pending`); the next byte, end of stream or error then reports its token once.
//!
//! The kernel's entry per watched socket (an `epitem`) is the only per-connection cost
//! left, and it is not in the server's RSS.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::task::Poll;

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::io::Errno;
use rustix::net::RecvFlags;

/// Events taken from the set per `epoll_wait`; more wait for the next call.
const BATCH: usize = 256;

/// A shard's epoll set of connections waiting for input.
#[derive(Debug)]
pub struct Readiness {
    epfd: OwnedFd,
}

impl Readiness {
    /// An empty set.
    pub fn new() -> io::Result<Readiness> {
        Ok(Readiness { epfd: epoll::create(CreateFlags::CLOEXEC)? })
    }

    /// Watches `fd` for input, end of stream (`EPOLLRDHUP`) and errors, edge-triggered:
    /// `token` is reported once each time the socket goes from having nothing to read to
    /// having something. Fails when the kernel refuses another watch
    /// (`fs.epoll.max_user_watches`, memory); the caller then waits the runtime's way.
    pub fn watch(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let flags = EventFlags::IN | EventFlags::RDHUP | EventFlags::ET;
        Ok(epoll::add(&self.epfd, fd, EventData::new_u64(token), flags)?)
    }

    /// Waits until some watched socket is ready, then calls `ready` with the tokens of
    /// the sockets reported, one batch at a time, until the set has no more to report.
    /// Errors only if the set itself fails (never for one socket's error, which is
    /// reported as ready). A closed socket leaves the set by itself (the kernel drops
    /// its entry with the last descriptor), so there is no `unwatch`.
    pub async fn next(&self, events: &mut Vec<Event>, mut ready: impl FnMut(Tokens<'_>)) -> io::Result<()> {
        glommio::readable(self.epfd.as_raw_fd()).await?;
        loop {
            self.take(events)?;
            ready(Tokens(events.iter()));
            if events.len() < BATCH {
                return Ok(());
            }
        }
    }

    /// Takes up to [`BATCH`] reports into `events` without waiting (none if nothing is
    /// ready).
    fn take(&self, events: &mut Vec<Event>) -> io::Result<()> {
        events.clear();
        events.reserve(BATCH);
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        loop {
            match epoll::wait(&self.epfd, rustix::buffer::spare_capacity(&mut *events), Some(&zero)) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The tokens of one batch of reports (see [`Readiness::next`]).
pub struct Tokens<'a>(std::slice::Iter<'a, Event>);

impl Iterator for Tokens<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.0.next().map(|e| e.data.u64())
    }
}

/// Reads what `fd` has into `buf` without blocking: `Ready(Ok(0))` at end of stream,
/// `Pending` when nothing is there (a watched socket's token is reported when that
/// changes).
pub fn try_read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
    loop {
        match rustix::net::recv(fd, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Poll::Ready(Ok(n)),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// Reads one round of reports without the runtime (the set is ready: no wait).
    fn reported(r: &Readiness) -> Vec<u64> {
        let mut events = Vec::new();
        r.take(&mut events).unwrap();
        Tokens(events.iter()).collect()
    }

    #[test]
    fn a_token_is_reported_once_per_arrival_after_the_socket_was_read_empty() {
        let r = Readiness::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        r.watch(b.as_fd(), 7).unwrap();
        assert!(reported(&r).is_empty());
        a.write_all(b"hi").unwrap();
        assert_eq!(reported(&r), vec![7]);
        // Edge-triggered: not again until it is read empty and more arrives.
        assert!(reported(&r).is_empty());
        let mut buf = [0u8; 8];
        assert!(matches!(try_read(b.as_fd(), &mut buf), Poll::Ready(Ok(2))));
        assert!(try_read(b.as_fd(), &mut buf).is_pending());
        a.write_all(b"x").unwrap();
        assert_eq!(reported(&r), vec![7]);
    }

    #[test]
    fn end_of_stream_is_reported_and_reads_as_zero() {
        let r = Readiness::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        r.watch(b.as_fd(), u64::MAX).unwrap();
        drop(a);
        assert_eq!(reported(&r), vec![u64::MAX]);
        let mut buf = [0u8; 8];
        assert!(matches!(try_read(b.as_fd(), &mut buf), Poll::Ready(Ok(0))));
    }

    #[test]
    fn a_closed_socket_leaves_the_set() {
        // `finish` relies on this: it closes a connection's socket without taking it
        // out of the set first.
        let r = Readiness::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let (mut c, d) = UnixStream::pair().unwrap();
        r.watch(b.as_fd(), 1).unwrap();
        r.watch(d.as_fd(), 2).unwrap();
        drop(b);
        // The peer's write fails or lands nowhere; either way nothing may be reported.
        let _ = a.write_all(b"hi");
        c.write_all(b"hi").unwrap();
        assert_eq!(reported(&r), vec![2]);
        // Watching twice is refused; the caller falls back instead of losing reports.
        assert!(r.watch(d.as_fd(), 3).is_err());
    }
}
