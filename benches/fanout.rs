//! The per-delivery work of the fan-out, under a counting allocator: a batch of frames
//! handed to 1,000 receivers with `Outbox::push_batch` (one vectored send each, the
//! iovecs built once for all of them), as `src/shard/fanout.rs` does for a room.
//!
//! It first proves the path allocates nothing per delivery (the bench aborts if it
//! does), then times it. Receivers are Unix socket pairs, so the time is the syscall and
//! copy cost without TCP; the loopback TCP cost is in the bench-client runs.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]
// Setup failures (socketpair, reads) are bench bugs and should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{IoSlice, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corecast::outbox::{Caps, Outbox, Pushed};
use corecast::protocol::server;
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
        Receivers { send, recv, scratch: vec![0; 1 << 16] }
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
    for (kind, batch) in [("", 1u64), ("", 8), ("data_", 1), ("data_", 8)] {
        let frames = if kind.is_empty() { frames(batch) } else { data_frames(batch) };
        let iov: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();

        // The claim first: zero allocations per delivery, warm or cold.
        rx.fan_out(&frames, &iov);
        rx.drain();
        let mut during = 0;
        for _ in 0..10 {
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            rx.fan_out(&frames, &iov);
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
                    rx.fan_out(&frames, &iov);
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
