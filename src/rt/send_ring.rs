//! The io_uring send path: a second, small io_uring per shard that carries the sends of
//! one fan-out pass, so that a room's frames reach all of its idle local members with one
//! `io_uring_enter` instead of one `sendmsg` syscall each.
//!
//! glommio 0.9 has no public way to submit one's own SQEs, so this ring is separate from
//! the executor's and is driven synchronously: every SQE is a `SENDMSG` with
//! `MSG_DONTWAIT`, which the kernel executes inline during the submission (a socket that
//! cannot take the bytes completes with `EAGAIN` instead of being parked for a poll), so
//! all completions are there when `io_uring_enter` returns. Nothing is in flight between
//! two calls: the caller's order per connection, its queue and its slow-consumer policy
//! see exactly what a direct `sendmsg` would have returned.
//!
//! Memory: the ring (`DEPTH` SQEs, twice as many CQEs) and one `msghdr` per SQE,
//! allocated once; nothing per send.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};
use rustix::io::Errno;

/// SQEs per submission: the most sends one `io_uring_enter` carries.
pub const DEPTH: u32 = 256;

/// What became of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel ran it: bytes taken, or the errno (`EAGAIN`: the socket is full).
    Done(Result<usize, Errno>),
    /// Never submitted (the ring failed): the caller sends it the direct way.
    NotSubmitted,
}

/// One shard's send ring.
pub struct SendRing {
    ring: IoUring,
    /// One `msghdr` per SQE of a submission; never reallocated (the kernel reads them
    /// during the submission).
    hdrs: Vec<libc::msghdr>,
    /// A submission failed: the ring is not used again (SQEs it did not consume may still
    /// sit in it and must never be submitted later).
    failed: bool,
}

impl SendRing {
    /// A ring of [`DEPTH`] entries.
    pub fn new() -> io::Result<SendRing> {
        let ring = IoUring::builder().build(DEPTH)?;
        // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
        let empty: libc::msghdr = unsafe { std::mem::zeroed() };
        Ok(SendRing { ring, hdrs: vec![empty; DEPTH as usize], failed: false })
    }

    /// Whether the ring still works (else every send is [`Outcome::NotSubmitted`]).
    pub fn usable(&self) -> bool {
        !self.failed
    }

    /// Sends the iovecs `iov` (at most 1,024) to each socket of `fds`, [`DEPTH`] sockets
    /// per `io_uring_enter`, and calls `done(i, outcome)` exactly once for each `fds[i]`
    /// (in completion order) before returning.
    pub fn send_all(&mut self, fds: &[RawFd], iov: &[IoSlice<'_>], mut done: impl FnMut(usize, Outcome)) {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        for (c, chunk) in fds.chunks(DEPTH as usize).enumerate() {
            let base = c * DEPTH as usize;
            if self.failed {
                (0..chunk.len()).for_each(|i| done(base + i, Outcome::NotSubmitted));
                continue;
            }
            {
                let mut sq = self.ring.submission();
                for (i, &fd) in chunk.iter().enumerate() {
                    let hdr = &mut self.hdrs[i];
                    // IoSlice is ABI-compatible with iovec on Unix.
                    hdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
                    hdr.msg_iovlen = iov.len() as _;
                    let sqe = opcode::SendMsg::new(types::Fd(fd), hdr as *const libc::msghdr)
                        .flags(flags as u32)
                        .build()
                        .user_data(i as u64);
                    // SAFETY: the msghdr, its iovecs and the bytes they point to outlive
                    // the SQE: this function waits for every completion of the chunk
                    // before it returns or reuses `hdrs`. The queue has room: it is empty
                    // on entry (all earlier SQEs were consumed) and a chunk is ≤ DEPTH.
                    if unsafe { sq.push(&sqe) }.is_err() {
                        break;
                    }
                }
            }
            let mut got = 0;
            let mut submitted = false;
            while got < chunk.len() {
                match self.ring.submit_and_wait(chunk.len() - got) {
                    Ok(_) => submitted = true,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => continue,
                    Err(_) if !submitted => {
                        // Nothing was consumed: send these the direct way, never again here.
                        self.failed = true;
                        (0..chunk.len()).for_each(|i| done(base + i, Outcome::NotSubmitted));
                        break;
                    }
                    // Submitted SQEs always complete; keep waiting for them.
                    Err(_) => continue,
                }
                for cqe in self.ring.completion() {
                    got += 1;
                    let r = cqe.result();
                    let outcome = if r >= 0 { Ok(r as usize) } else { Err(Errno::from_raw_os_error(-r)) };
                    done(base + cqe.user_data() as usize, Outcome::Done(outcome));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn one_submission_sends_to_every_socket_and_reports_each() {
        let Ok(mut ring) = SendRing::new() else {
            eprintln!("skipped: io_uring unavailable here");
            return;
        };
        let pairs: Vec<(UnixStream, UnixStream)> = (0..300).map(|_| UnixStream::pair().unwrap()).collect();
        pairs.iter().for_each(|(a, _)| a.set_nonblocking(true).unwrap());
        let fds: Vec<RawFd> = pairs.iter().map(|(a, _)| a.as_raw_fd()).collect();
        let frames = [&b"hello "[..], b"world"];
        let iov: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let mut seen = vec![None; fds.len()];
        ring.send_all(&fds, &iov, |i, o| {
            assert!(seen[i].is_none(), "reported twice");
            seen[i] = Some(o);
        });
        assert!(seen.iter().all(|o| *o == Some(Outcome::Done(Ok(11)))), "{seen:?}");
        for (_, mut b) in pairs {
            let mut got = [0u8; 11];
            b.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello world");
        }
    }

    #[test]
    fn a_full_socket_reports_eagain_or_a_partial_send_and_a_closed_one_an_error() {
        let Ok(mut ring) = SendRing::new() else {
            eprintln!("skipped: io_uring unavailable here");
            return;
        };
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let (c, d) = UnixStream::pair().unwrap();
        c.set_nonblocking(true).unwrap();
        drop(d);
        let big = vec![7u8; 1 << 20];
        let iov = [IoSlice::new(&big)];
        let mut out = Vec::new();
        ring.send_all(&[a.as_raw_fd(), c.as_raw_fd()], &iov, |i, o| out.push((i, o)));
        out.sort_by_key(|(i, _)| *i);
        match out[0].1 {
            Outcome::Done(Ok(n)) => assert!(n < big.len(), "a socket buffer is smaller than 1 MiB"),
            other => assert_eq!(other, Outcome::Done(Err(Errno::AGAIN))),
        }
        assert_eq!(out[1].1, Outcome::Done(Err(Errno::PIPE)));
        // Once full, the socket refuses at once rather than parking the SQE.
        let mut again = Vec::new();
        ring.send_all(&[a.as_raw_fd()], &iov, |_, o| again.push(o));
        assert_eq!(again, [Outcome::Done(Err(Errno::AGAIN))]);
    }
}
