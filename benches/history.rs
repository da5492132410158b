//! Criterion benches of the history ring: append (with eviction at the cap), the replay
//! of 100 missed messages, and a page of 50.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use corecast::protocol::server;
use corecast::room::history::{Caps, Ring};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const CAPS: Caps = Caps { messages: 1000, bytes: 1 << 20 };

fn frame(seq: u64) -> Bytes {
    server::message("lobby", seq, "alice", "a typical chat line of about fifty bytes of text", 1_763_800_000_123)
}

fn full_ring() -> (Ring, u64) {
    let mut r = Ring::default();
    for seq in 1..=1000 {
        r.push(seq, frame(seq), CAPS);
    }
    (r, 1000)
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(1));
    g.bench_function("append_at_cap", |b| {
        let (mut r, mut seq) = full_ring();
        let f = frame(0);
        b.iter(|| {
            seq += 1;
            black_box(r.push(seq, f.clone(), CAPS))
        })
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("replay_100", |b| {
        let (r, head) = full_ring();
        b.iter(|| black_box(r.since(black_box(head - 100), head).map(|v| v.len())))
    });
    g.throughput(Throughput::Elements(50));
    g.bench_function("page_50", |b| {
        let (r, _) = full_ring();
        b.iter(|| black_box(r.page(Some(black_box(500)), 50).len()))
    });
    g.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
