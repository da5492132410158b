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

    /// Stops watching `fd` (before it is closed, so that no late report of its token
    /// can reach whoever gets the token next). Errors are ignored: a descriptor that is
    /// not watched has nothing to undo.
    pub fn unwatch(&self, fd: BorrowedFd<'_>) {
        let _ = epoll::delete(&self.epfd, fd);
    }

    /// Waits until some watched socket is ready, then calls `ready(token)` for every
    /// socket reported, until the set has no more to report. Errors only if the set
    /// itself fails (never for one socket's error, which is reported as ready).
    pub async fn next(&self, events: &mut Vec<Event>, mut ready: impl FnMut(u64)) -> io::Result<()> {
        glommio::readable(self.epfd.as_raw_fd()).await?;
        loop {
            events.clear();
            events.reserve(BATCH);
            let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
            match epoll::wait(&self.epfd, rustix::buffer::spare_capacity(&mut *events), Some(&zero)) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            events.iter().for_each(|e| ready(e.data.u64()));
            if events.len() < BATCH {
                return Ok(());
            }
        }
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
        let mut events = Vec::with_capacity(BATCH);
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        epoll::wait(&r.epfd, rustix::buffer::spare_capacity(&mut events), Some(&zero)).unwrap();
        events.iter().map(|e| e.data.u64()).collect()
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
    fn an_unwatched_socket_is_not_reported() {
        let r = Readiness::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        r.watch(b.as_fd(), 1).unwrap();
        r.unwatch(b.as_fd());
        a.write_all(b"hi").unwrap();
        assert!(reported(&r).is_empty());
        // Watching twice is refused; the caller falls back instead of losing reports.
        r.watch(b.as_fd(), 1).unwrap();
        assert!(r.watch(b.as_fd(), 2).is_err());
    }
}
