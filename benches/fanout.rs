//! The per-delivery work of the fan-out, under a counting allocator: a batch of frames
//! handed to 1,000 receivers with `Outbox::push_batch` (one vectored send each, the
//! iovecs built once for all of them), as `src/shard/fanout.rs` does for a room.
//!
//! The same through the io_uring send path (`--send-path uring`): the 1,000 sends as
//! `SENDMSG` SQEs of one `SendRing` (one `io_uring_enter` per 256), each outcome applied
//! with `Outbox::push_batch_via`, as `src/shard/fanout.rs` does.
//!
//! It first proves each path allocates nothing per delivery (the bench aborts if it
//! does), then times it. Receivers are Unix socket pairs, so the time is the syscall and
//! copy cost without TCP; the loopback TCP cost is in the bench-client runs.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]
// Setup failures (socketpair, reads) are bench bugs and should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corecast::outbox::{Caps, Outbox, Pushed};
use corecast::protocol::server;
use corecast::rt::send_ring::{Outcome, SendRing};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

const RECEIVERS: usize = 1000;
const CAPS: Caps = Caps { bytes: 256 * 1024, frames: 4096 };

struct Receivers {
    send: Vec<(UnixStream, Outbox)>,
    recv: Vec<UnixStream>,
    scratch: Vec<u8>,
    fds: Vec<RawFd>,
    ring: Option<SendRing>,
}

impl Receivers {
    fn new() -> Receivers {
        let (mut send, mut recv) = (Vec::new(), Vec::new());
        for _ in 0..RECEIVERS {
            let (a, b) = UnixStream::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            b.set_nonblocking(true).unwrap();
            send.push((a, Outbox::default()));
            recv.push(b);
        }
        let fds = send.iter().map(|(a, _)| a.as_raw_fd()).collect();
        Receivers { send, recv, scratch: vec![0; 1 << 16], fds, ring: SendRing::new().ok() }
    }

    /// [`Self::fan_out`] through the send ring.
    fn fan_out_uring(&mut self, frames: &[Bytes], iov: &[IoSlice<'_>]) {
        let Receivers { send, fds, ring, .. } = self;
        let ring = ring.as_mut().expect("io_uring available");
        ring.send_all(fds, iov, |i, outcome| {
            let Outcome::Done(sent) = outcome else { panic!("ring failed") };
            let pushed = send[i].1.push_batch_via(|_| sent, frames, iov, CAPS);
            assert_eq!(pushed, Pushed::Sent, "socket buffers are drained between rounds");
        });
    }

    /// One fan-out of `frames` to every receiver; every push must be taken whole.
    fn fan_out(&mut self, frames: &[Bytes], iov: &[IoSlice<'_>]) {
        for (sock, out) in &mut self.send {
            let pushed = out.push_batch(sock.as_fd(), frames, iov, CAPS);
            assert_eq!(pushed, Pushed::Sent, "socket buffers are drained between rounds");
        }
    }

    fn drain(&mut self) {
        for r in &mut self.recv {
            while r.read(&mut self.scratch).is_ok_and(|n| n > 0) {}
        }
    }
}

fn frames(n: u64) -> Vec<Bytes> {
    let text = "x".repeat(100);
    (0..n).map(|seq| server::message("lobby", seq + 1, "alice", &text, 1_763_800_000_000)).collect()
}

/// Frames of `data` messages (a dashboard-style JSON object of ~1 KiB, spliced verbatim):
/// once built, a frame is a `Bytes` like any other, so delivering one must cost the same.
fn data_frames(n: u64) -> Vec<Bytes> {
    let fields: Vec<String> = (0..40).map(|i| format!(r#""metric_{i:02}":{}"#, 1_000_000 + i)).collect();
    let data = format!("{{{}}}", fields.join(","));
    let payload = server::Payload { data: Some(data.as_bytes()), event: Some("tick"), ..server::Payload::default() };
    (0..n).map(|seq| server::room_message("lobby", Some(seq + 1), "alice", &payload, 1_763_800_000_000)).collect()
}

fn fanout(c: &mut Criterion) {
    let mut rx = Receivers::new();
    let mut g = c.benchmark_group("fanout");
    for (kind, batch) in [("", 1u64), ("", 8), ("data_", 1), ("data_", 8), ("uring_", 1), ("uring_", 8)] {
        if kind == "uring_" && rx.ring.is_none() {
            println!("fanout/uring: skipped, io_uring unavailable here");
            continue;
        }
        let uring = kind == "uring_";
        let frames = if kind == "data_" { data_frames(batch) } else { frames(batch) };
        let send = |rx: &mut Receivers, frames: &[Bytes], iov: &[IoSlice<'_>]| {
            if uring {
                rx.fan_out_uring(frames, iov)
            } else {
                rx.fan_out(frames, iov)
            }
        };
        let iov: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();

        // The claim first: zero allocations per delivery, warm or cold.
        send(&mut rx, &frames, &iov);
        rx.drain();
        let mut during = 0;
        for _ in 0..10 {
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            send(&mut rx, &frames, &iov);
            during += ALLOCATIONS.load(Ordering::Relaxed) - before;
            rx.drain();
        }
        let deliveries = 10 * RECEIVERS as u64 * batch;
        println!("fanout/{kind}{batch}_frames: {during} allocations in {deliveries} deliveries");
        assert_eq!(during, 0, "the fan-out path allocated");

        g.throughput(Throughput::Elements(RECEIVERS as u64 * batch));
        g.bench_function(format!("{kind}push_batch_{batch}_frames_x{RECEIVERS}_receivers"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    send(&mut rx, &frames, &iov);
                    spent += t.elapsed();
                    rx.drain();
                }
                spent
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
