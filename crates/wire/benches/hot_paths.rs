//! Criterion benches of the per-message hot paths: frame parse and unmask, message
//! assembly, the serialized-once frame build, and the JSON parser choice (simd-json with
//! reused buffers against serde_json, on the same struct), so the choice stays measured.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]
// Bench inputs are constants; a parse failure is a bench bug and should abort loudly.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::ops::ControlFlow;

use corecast_wire::protocol::{client, server};
use corecast_wire::ws::frame::{self, Role};
use corecast_wire::ws::reader::MessageReader;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tungstenite::protocol::frame::coding::{Data, OpCode};

const MSG: &str = r#"{"type":"message","room":"lobby","text":"hello there, how is everyone doing today? \u00e9\u00e8","id":"c-1763800000"}"#;

fn frames(c: &mut Criterion) {
    let wire = frame::client_frame(OpCode::Data(Data::Text), true, MSG.as_bytes(), [1, 2, 3, 4]);
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("parse_header", |b| b.iter(|| frame::parse_header(black_box(&wire), Role::Server, 65536)));
    for size in [128usize, 1024, 16 * 1024] {
        let mut payload = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("unmask", size), &size, |b, _| {
            b.iter(|| frame::unmask(black_box(&mut payload), [9, 8, 7, 6]))
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("build_message_frame", |b| {
        b.iter(|| {
            server::message(black_box("lobby"), 119, "alice", black_box("hello there, everyone"), 1_763_800_000_123)
        })
    });
    g.finish();
}

fn reader(c: &mut Criterion) {
    let one = frame::client_frame(OpCode::Data(Data::Text), true, MSG.as_bytes(), [1, 2, 3, 4]);
    let batch: Vec<u8> = (0..100).flat_map(|_| one.iter().copied()).collect();
    let mut g = c.benchmark_group("reader");
    g.throughput(Throughput::Elements(100));
    g.bench_function("feed_100_text_frames", |b| {
        let mut r = MessageReader::new(Role::Server, 65536);
        b.iter(|| {
            let mut input = batch.clone();
            let mut n = 0;
            let _ = r.feed(&mut input, |_| {
                n += 1;
                ControlFlow::Continue(())
            });
            black_box(n)
        })
    });
    g.finish();
}

fn json(c: &mut Criterion) {
    let mut g = c.benchmark_group("json");
    g.throughput(Throughput::Bytes(MSG.len() as u64));
    g.bench_function("corecast_protocol_parse", |b| {
        let mut buffers = client::Buffers::new(4096);
        b.iter(|| {
            let mut input = MSG.as_bytes().to_vec();
            black_box(client::parse(&mut input, &mut buffers).is_ok())
        })
    });
    g.bench_function("simd_json_reused_buffers", |b| {
        let mut buffers = simd_json::Buffers::new(4096);
        b.iter(|| {
            let mut input = MSG.as_bytes().to_vec();
            let raw: client::Raw<'_> = simd_json::serde::from_slice_with_buffers(&mut input, &mut buffers).unwrap();
            black_box(&raw);
        })
    });
    g.bench_function("simd_json_fresh_buffers", |b| {
        b.iter(|| {
            let mut input = MSG.as_bytes().to_vec();
            let raw: client::Raw<'_> = simd_json::serde::from_slice(&mut input).unwrap();
            black_box(&raw);
        })
    });
    g.bench_function("serde_json", |b| {
        b.iter(|| {
            let input = MSG.as_bytes().to_vec();
            let raw: client::Raw<'_> = serde_json::from_slice(&input).unwrap();
            black_box(&raw);
        })
    });
    g.finish();
}

criterion_group!(benches, frames, reader, json);
criterion_main!(benches);
