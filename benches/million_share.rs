//! The single process's share of a million-member broadcast: one shard handing one
//! frame to 1,000,000 members, with the socket write replaced by a counting sink, so
//! that what is measured is corecast's user-space work per member (walking the member
//! snapshot, touching each connection's state, the outbox's decision and its iovec
//! hand-off), not the kernel's TCP send.
//!
//! A shard's real members are `Conn`s holding live sockets, which a benchmark cannot
//! create a million of on a host with a 20,000-descriptor limit. So each member here is
//! laid out as its real state is: a heap block of `corecast::conn_state_bytes()` bytes
//! (the same size as a `Conn`, allocated one by one like the shard's `Box<Conn>`s)
//! holding its generation, its room and its real `Outbox`, and the loop is the one of
//! `src/shard/fanout.rs` for large rooms: snapshot the ids, then per id check the
//! generation and the membership, and `push_batch_via` the frames. The kernel's share is
//! in the bench-client runs (`bench/million.sh`), and `benches/fanout.rs` times the real
//! `sendmsg` path for 1,000 receivers.
//!
//! Run: `cargo bench --bench million_share`. It also asserts zero allocations per
//! delivery and that the sink saw every byte.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corecast::outbox::{Caps, Outbox, Pushed};
use corecast::protocol::server;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

const MEMBERS: usize = 1_000_000;
const CAPS: Caps = Caps { bytes: 256 * 1024, frames: 4096 };

/// One member's state: the fields the fan-out reads, padded to a real `Conn`'s size.
struct Member {
    generation: u32,
    room: Arc<str>,
    out: Outbox,
    _rest: Box<[u8]>,
}

// Boxed on purpose: a shard keeps each `Conn` in its own heap block (`Slab<Box<Conn>>`),
// and the memory traffic of a walk over a million of them is what is measured.
#[allow(clippy::vec_box)]
fn members(room: &Arc<str>) -> Vec<Box<Member>> {
    let used = std::mem::size_of::<Member>();
    let pad = corecast::conn_state_bytes().saturating_sub(used);
    (0..MEMBERS)
        .map(|i| {
            let rest = vec![0u8; pad].into_boxed_slice();
            Box::new(Member { generation: i as u32, room: room.clone(), out: Outbox::default(), _rest: rest })
        })
        .collect()
}

/// One fan-out of `frames` to every member; returns the bytes the sink took.
fn fan_out(
    table: &mut [Box<Member>],
    ids: &mut Vec<(u32, u32)>,
    room: &str,
    frames: &[Bytes],
    iov: &[IoSlice<'_>],
) -> u64 {
    ids.clear();
    ids.extend(table.iter().enumerate().map(|(i, m)| (i as u32, m.generation)));
    let mut taken = 0u64;
    for &(index, generation) in ids.iter() {
        let Some(m) = table.get_mut(index as usize).filter(|m| m.generation == generation) else { continue };
        if *m.room != *room {
            continue;
        }
        let sink = |iov: &[IoSlice<'_>]| {
            let n: usize = iov.iter().map(|s| s.len()).sum();
            taken += n as u64;
            Ok(black_box(n))
        };
        let pushed = m.out.push_batch_via(sink, frames, iov, CAPS);
        debug_assert_eq!(pushed, Pushed::Sent);
    }
    taken
}

fn share(c: &mut Criterion) {
    let room: Arc<str> = Arc::from("stadium");
    let mut table = members(&room);
    let mut ids = Vec::with_capacity(MEMBERS);
    println!("million_share: {} B of state per member (a Conn)", corecast::conn_state_bytes());
    let mut g = c.benchmark_group("million_share");
    g.sample_size(10);
    for batch in [1u64, 8] {
        let text = "x".repeat(100);
        let frames: Vec<Bytes> =
            (0..batch).map(|seq| server::message(&room, seq + 1, "alice", &text, 1_763_800_000_000)).collect();
        let iov: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        // The claims first: every member's bytes reach the sink, with no allocation.
        fan_out(&mut table, &mut ids, &room, &frames, &iov);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let taken = fan_out(&mut table, &mut ids, &room, &frames, &iov);
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!("million_share/{batch}_frames: {allocations} allocations in {} deliveries", MEMBERS as u64 * batch);
        assert_eq!(allocations, 0, "the fan-out path allocated");
        assert_eq!(taken, bytes * MEMBERS as u64, "the sink saw every member's bytes");

        g.throughput(Throughput::Elements(MEMBERS as u64 * batch));
        g.bench_function(format!("{batch}_frames_to_{MEMBERS}_members"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    black_box(fan_out(&mut table, &mut ids, &room, &frames, &iov));
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
}

criterion_group!(benches, share);
criterion_main!(benches);
