//! One connection's outgoing direction: a bounded queue of shared frames.
//!
//! The fast path has no queue at all: when nothing is waiting, a frame goes straight to
//! the socket with one non-blocking `send` (docs/DESIGN-NOTES.md, "The write path"), so a broadcast to an idle,
//! keeping-up receiver is a single syscall with no task wake-up. Only what the kernel did
//! not take is queued, and the connection's task then drains the queue with vectored
//! `sendmsg` calls (up to [`MAX_IOV`] frames per syscall), waiting for writability
//! through the runtime when the socket buffer is full.
//!
//! Frames that arrive together are corked: the fan-out hands a connection every frame
//! of a room that is waiting in the shard's inbox at once ([`Outbox::push_batch`]), so
//! under load one `sendmsg` carries many frames and the syscall count per delivery falls
//! as the rate rises (uWebSockets calls this corking).
//!
//! The queue holds `Bytes` clones of frames shared with every other receiver, so a
//! lagging connection costs refcounts, not copies; its caps bound the memory a slow
//! consumer can pin before it is closed with 1013.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_lite::io::AsyncWrite;
use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendFlags};

use crate::rt::TcpStream;

/// Most frames gathered into one `sendmsg` (Linux accepts up to 1,024 iovecs).
pub const MAX_IOV: usize = 256;

const FLAGS: SendFlags = SendFlags::DONTWAIT.union(SendFlags::NOSIGNAL);

/// Queue limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Most bytes queued.
    pub bytes: usize,
    /// Most frames queued.
    pub frames: usize,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The kernel took all of it.
    Sent,
    /// Queued behind an empty queue: the connection task must be woken to flush it.
    QueuedWake,
    /// Queued behind other frames: the task is already waiting for writability.
    Queued,
    /// Over the caps: the connection is a slow consumer. Nothing was queued.
    Full,
    /// The socket is broken (reset, closed). Nothing was queued.
    Broken,
    /// A close frame is already queued; nothing may follow it.
    Sealed,
}

/// The outgoing queue: one pointer while nothing waits (the common case for an idle or
/// keeping-up connection); the queue state is allocated only when the kernel refuses a
/// frame, and freed again when it drains.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Option<Box<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// Total bytes in `frames`.
    bytes: usize,
    /// The front frame has been partly written; it must be finished even when the rest
    /// is discarded, or the peer would see a torn frame.
    front_started: bool,
    /// A close frame is queued: nothing more may be sent.
    sealed: bool,
    /// Bytes and frames of a recovery replay still queued at the front: they do not
    /// count against the caps (a replay is bounded by the history caps, and a client
    /// that asked for it must not be called slow for receiving it).
    replay_bytes: usize,
    replay_frames: usize,
}

impl Queue {
    fn enqueue(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        self.replay_bytes = self.replay_bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.frames.front_mut() else { return };
            if n < front.len() {
                front.advance(n);
                self.front_started = true;
                return;
            }
            n -= front.len();
            self.frames.pop_front();
            self.front_started = false;
            self.replay_frames = self.replay_frames.saturating_sub(1);
        }
    }
}

impl Outbox {
    /// Bytes waiting.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.bytes)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.as_ref().is_none_or(|q| q.frames.is_empty())
    }

    /// Whether a push would go straight to the socket: nothing waits and no close frame
    /// is queued (the fan-out's io_uring path takes exactly these connections).
    pub fn sends_directly(&self) -> bool {
        self.queue.as_ref().is_none_or(|q| !q.sealed && q.frames.is_empty())
    }

    /// Sends `frame` now if nothing is waiting and the kernel takes it, else queues it
    /// within `caps`: [`Outbox::push_batch`] with one frame.
    pub fn push(&mut self, fd: BorrowedFd<'_>, frame: Bytes, caps: Caps) -> Pushed {
        let iov = [IoSlice::new(&frame)];
        self.push_batch(fd, std::slice::from_ref(&frame), &iov, caps)
    }

    /// Sends `frames` (whose iovecs are `iov`, built once by the caller and shared by
    /// every receiver of the batch) with one `sendmsg` per [`MAX_IOV`] frames if nothing
    /// is waiting, queueing what the kernel does not take; behind waiting frames, queues
    /// them all within `caps`. Never allocates unless something is queued.
    ///
    /// `iov` is one segment per frame, or, for several frames, one segment holding all
    /// of them back to back (built once per batch by the caller, see
    /// `shard::fanout`): then one `sendmsg` carries them all. Why: the kernel copies an
    /// iovec segment by segment, opening a user-access window and starting a copy for
    /// each; for 100–200-byte frames that per-segment cost is as large as the copy
    /// itself. Either way what is not sent is queued frame by frame, so the caps count
    /// frames exactly as before.
    pub fn push_batch(&mut self, fd: BorrowedFd<'_>, frames: &[Bytes], iov: &[IoSlice<'_>], caps: Caps) -> Pushed {
        let send = |iov: &[IoSlice<'_>]| rustix::net::sendmsg(fd, iov, &mut SendAncillaryBuffer::default(), FLAGS);
        self.push_batch_via(send, frames, iov, caps)
    }

    /// [`Self::push_batch`] with the direct write given as `send` (what the socket took
    /// of the iovecs, or the errno): the runtime passes a non-blocking `sendmsg`; a
    /// benchmark can pass a counting sink to measure the user-space share of a fan-out
    /// without the kernel's (`benches/million_share.rs`).
    #[inline]
    pub fn push_batch_via(
        &mut self,
        mut send: impl FnMut(&[IoSlice<'_>]) -> Result<usize, Errno>,
        frames: &[Bytes],
        iov: &[IoSlice<'_>],
        caps: Caps,
    ) -> Pushed {
        let whole = iov.len() == 1 && frames.len() > 1;
        debug_assert!(
            frames.len() == iov.len() || (whole && iov[0].len() == frames.iter().map(Bytes::len).sum::<usize>()),
            "one iovec per frame, or one holding them all"
        );
        if let Some(q) = self.queue.as_mut() {
            if q.sealed {
                return Pushed::Sealed;
            }
            if !q.frames.is_empty() {
                let bytes: usize = frames.iter().map(Bytes::len).sum();
                let over_bytes = q.bytes + bytes > caps.bytes + q.replay_bytes;
                if over_bytes || q.frames.len() + frames.len() > caps.frames + q.replay_frames {
                    return Pushed::Full;
                }
                frames.iter().for_each(|f| q.enqueue(f.clone()));
                return Pushed::Queued;
            }
        }
        let mut done = 0;
        while done < frames.len() {
            // `whole` covers every frame: one send from the start (a partial write
            // returns below, so it is never sent twice).
            let end = if whole { frames.len() } else { (done + MAX_IOV).min(frames.len()) };
            let mut written = match send(if whole { iov } else { &iov[done..end] }) {
                Ok(n) => n,
                Err(Errno::AGAIN | Errno::INTR | Errno::NOBUFS) => 0,
                Err(_) => return Pushed::Broken,
            };
            // Skip the frames written whole; queue the rest, the first possibly started.
            while done < end && written >= frames[done].len() {
                written -= frames[done].len();
                done += 1;
            }
            if done < end {
                let q = self.queue.get_or_insert_with(Box::default);
                q.front_started = written > 0;
                q.enqueue(frames[done].slice(written..));
                frames[done + 1..].iter().for_each(|f| q.enqueue(f.clone()));
                return Pushed::QueuedWake;
            }
        }
        Pushed::Sent
    }

    /// Like [`Outbox::push`] for a frame of a recovery replay: never over the caps, and
    /// what is queued of it is exempt from them until it drains.
    pub fn push_replay(&mut self, fd: BorrowedFd<'_>, frame: Bytes) -> Pushed {
        let len = frame.len();
        let unbounded = Caps { bytes: usize::MAX / 2, frames: usize::MAX / 2 };
        let before = self.queue.as_ref().map_or(0, |q| q.bytes);
        let pushed = self.push(fd, frame, unbounded);
        if let Some(q) = self.queue.as_mut() {
            if q.bytes > before {
                q.replay_bytes += len.min(q.bytes - before);
                q.replay_frames += 1;
            }
        }
        pushed
    }

    /// Queues a final close frame: everything not yet started is dropped first when
    /// `discard` is set (a slow consumer is not owed its backlog), and nothing may be
    /// pushed afterwards. Returns whether nothing was waiting before (the task must be
    /// woken to flush).
    pub fn seal(&mut self, close: Bytes, discard: bool) -> bool {
        let q = self.queue.get_or_insert_with(Box::default);
        if q.sealed {
            return false;
        }
        if discard {
            let keep = usize::from(q.front_started);
            while q.frames.len() > keep {
                if let Some(f) = q.frames.pop_back() {
                    q.bytes -= f.len();
                }
            }
        }
        let was_empty = q.frames.is_empty();
        q.enqueue(close);
        q.sealed = true;
        was_empty
    }

    /// Drops everything waiting (the peer is gone or will not read).
    pub fn clear(&mut self) {
        self.queue = None;
    }

    /// Writes queued frames until nothing waits (`Ready(Ok)`), the socket is full
    /// (`Pending`, with the task registered for writability), or it fails.
    pub fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut TcpStream,
        fd: BorrowedFd<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(q) = self.queue.as_mut() else { return Poll::Ready(Ok(())) };
        while !q.frames.is_empty() {
            let written = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = iov.iter_mut().zip(&q.frames).map(|(slot, b)| *slot = IoSlice::new(b)).count();
                rustix::net::sendmsg(fd, &iov[..n], &mut SendAncillaryBuffer::default(), FLAGS)
            };
            match written {
                Ok(n) => q.advance(n),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN | Errno::NOBUFS) => {
                    // Let the runtime wait for writability; it retries the front frame
                    // itself first, so progress it makes is accounted here.
                    let Some(front) = q.frames.front() else { break };
                    match Pin::new(&mut *stream).poll_write(cx, front) {
                        Poll::Ready(Ok(n)) => q.advance(n),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        if !q.sealed {
            // Drained: give the memory back.
            self.queue = None;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    const CAPS: Caps = Caps { bytes: 1 << 20, frames: 1 << 20 };

    #[test]
    fn empty_queue_sends_directly_and_full_socket_queues() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut out = Outbox::default();
        assert_eq!(out.push(a.as_fd(), Bytes::from_static(b"hello"), CAPS), Pushed::Sent);
        assert!(out.is_empty());
        // Fill the socket buffer until the kernel refuses more.
        let big = Bytes::from(vec![7u8; 64 * 1024]);
        let mut pushes = 0;
        loop {
            pushes += 1;
            match out.push(a.as_fd(), big.clone(), CAPS) {
                Pushed::Sent => continue,
                Pushed::QueuedWake => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(pushes > 1 && !out.is_empty());
        assert_eq!(out.push(a.as_fd(), big.clone(), CAPS), Pushed::Queued);
        let tight = Caps { bytes: out.queued_bytes(), frames: 100 };
        assert_eq!(out.push(a.as_fd(), big, tight), Pushed::Full);
        drop(b);
    }

    #[test]
    fn seal_keeps_a_started_frame_and_refuses_more() {
        let mut q = Queue::default();
        q.enqueue(Bytes::from_static(b"abcdef"));
        q.enqueue(Bytes::from_static(b"ghij"));
        q.advance(2);
        assert!(q.front_started);
        let mut out = Outbox { queue: Some(Box::new(q)) };
        assert!(!out.seal(Bytes::from_static(b"CLOSE"), true));
        let frames = &out.queue.as_ref().unwrap().frames;
        assert_eq!(*frames, vec![Bytes::from_static(b"cdef"), Bytes::from_static(b"CLOSE")]);
        assert_eq!(out.queued_bytes(), 9);
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(out.push(a.as_fd(), Bytes::from_static(b"x"), CAPS), Pushed::Sealed);
    }

    fn iov(frames: &[Bytes]) -> Vec<IoSlice<'_>> {
        frames.iter().map(|f| IoSlice::new(f)).collect()
    }

    #[test]
    fn batch_goes_out_in_one_call_and_arrives_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let frames: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 10])).collect();
        let mut out = Outbox::default();
        assert_eq!(out.push_batch(a.as_fd(), &frames, &iov(&frames), CAPS), Pushed::Sent);
        assert!(out.is_empty());
        let mut got = vec![0u8; 1000];
        std::io::Read::read_exact(&mut &b, &mut got).unwrap();
        assert_eq!(got, frames.concat());
    }

    #[test]
    fn batch_queues_the_unsent_tail_and_respects_caps_behind_a_queue() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let big: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; 64 * 1024])).collect();
        let mut out = Outbox::default();
        assert_eq!(out.push_batch(a.as_fd(), &big, &iov(&big), CAPS), Pushed::QueuedWake);
        let queued = out.queued_bytes();
        assert!(queued > 0 && queued < 64 * 64 * 1024, "the kernel took a part");
        let small = [Bytes::from_static(b"x"), Bytes::from_static(b"y")];
        let roomy = Caps { bytes: 1 << 30, frames: 1 << 20 };
        assert_eq!(out.push_batch(a.as_fd(), &small, &iov(&small), roomy), Pushed::Queued);
        assert_eq!(out.queued_bytes(), queued + 2);
        let tight = Caps { bytes: queued + 2, frames: 1 << 20 };
        assert_eq!(out.push_batch(a.as_fd(), &small, &iov(&small), tight), Pushed::Full);
        drop(b);
    }

    #[test]
    fn frames_sent_as_one_segment_go_in_one_call_and_a_partial_write_queues_whole_frames() {
        // A sink that takes 25 bytes, records the segments it was given, then refuses.
        let frames: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 10])).collect();
        let joined = Bytes::from(frames.concat());
        let whole = [IoSlice::new(&joined)];
        let mut calls = Vec::new();
        let mut out = Outbox::default();
        let sink = |iov: &[IoSlice<'_>]| {
            calls.push(iov.iter().map(|s| s.len()).collect::<Vec<_>>());
            Ok(if calls.len() == 1 { 25 } else { 0 })
        };
        assert_eq!(out.push_batch_via(sink, &frames, &whole, CAPS), Pushed::QueuedWake);
        assert_eq!(calls, vec![vec![40]], "one call, one segment");
        // Frame 2 was half sent: its tail and frame 3 are queued as two frames.
        let q = out.queue.as_ref().unwrap();
        assert_eq!(q.frames, vec![Bytes::from(vec![2u8; 5]), frames[3].clone()]);
        assert!(q.front_started);
        // Behind that queue, a whole-segment batch is queued (and capped) frame by frame.
        let more: Vec<Bytes> = (4..7u8).map(|i| Bytes::from(vec![i; 10])).collect();
        let joined = Bytes::from(more.concat());
        let tight = Caps { bytes: 1 << 20, frames: 4 };
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(out.push_batch(a.as_fd(), &more, &[IoSlice::new(&joined)], tight), Pushed::Full);
        assert_eq!(out.push_batch(a.as_fd(), &more, &[IoSlice::new(&joined)], CAPS), Pushed::Queued);
        assert_eq!(out.queue.as_ref().unwrap().frames.len(), 5);
    }

    #[test]
    fn advance_across_frames() {
        let mut q = Queue::default();
        for f in [&b"aa"[..], b"bbb", b"c"] {
            q.enqueue(Bytes::copy_from_slice(f));
        }
        q.advance(4);
        assert_eq!(q.frames, vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
        q.advance(2);
        assert!(q.frames.is_empty() && q.bytes == 0 && !q.front_started);
    }
}
