//! bench-client: the corecast load generator.
//!
//! It opens N WebSocket connections from many loopback source addresses, over several
//! engine threads and worker processes (as many as `RLIMIT_NOFILE` requires), spreads them
//! over rooms, publishes at a fixed rate with the intended send time in every payload
//! (coordinated-omission-safe, as wrk2 does), checks every delivery against the server's
//! gap-free room `seq`, and writes a run folder with `summary.json`, HdrHistogram `.hgrm`
//! files, an SVG percentile plot and `SETUP.md`.
//!
//! # Module map
//!
//! | module | concern |
//! |---|---|
//! | [`cli`] | flags of every mode → validated [`coord::RunSpec`] |
//! | [`scenario`] | scenario TOML files = saved command lines |
//! | [`suite`] | start corecast, run the standard scenarios, stop it |
//! | [`run`] | one run end to end: coordinator → run folder → console summary |
//! | [`compare`] | corecast vs the ceiling probe on the issue-8 targets: compare.md/json |
//! | [`coord`] | phases of a run, progress line, CPU/RSS sampling, results |
//! | [`worker`] | worker processes (or threads) and the JSON-lines control protocol |
//! | [`engine`] | one thread's mio event loop over a slab of connections |
//! | [`conn`] | one connection: connect, upgrade, join, deliveries, rejoin with recovery (state machine) |
//! | [`epoch`] | room-stream epochs interned per room, for `since` on a rejoin |
//! | [`timer`] | timerfd: nanosecond wake-ups for the schedule |
//! | [`plan`] | which connection goes where: process, thread, source address, room |
//! | [`schedule`] | the fixed-rate publish schedule (intended send times) |
//! | [`payload`] | the stamp a publisher writes into each message |
//! | [`scan`] | reading `type`/`seq`/`text` from server JSON without parsing it all |
//! | [`track`] | per-connection `seq` checking: gaps, duplicates, reorders |
//! | [`record`] | histograms and counters, merged and shipped between processes |
//! | [`audit`] | `--acks`: per-message accounting of acknowledged messages, per receiver home |
//! | [`retry`] | `--ack-timeout`: when a connected publisher sends an unacknowledged message again |
//! | [`report`] | the run folder: summary.json, .hgrm ([`report::hgrm`]), SETUP.md, the SVG ([`report::plot`]); reads engine results, never imported by the engine |
//! | [`sys`] | CLOCK_MONOTONIC, /proc CPU and RSS, RLIMIT_NOFILE |
//! | [`error`] | typed errors |
//!
//! Frames are encoded and parsed with corecast's own [`corecast_wire::ws::frame`] and
//! [`corecast_wire::ws::reader`], in the client role: bench-client depends on corecast's
//! wire crate, never on the server. The ceiling probe is its own binary
//! (`corecast-ceiling`, crates/ceiling-probe), which `compare` and `ceiling` start.

pub mod audit;
pub mod cli;
pub mod compare;
pub mod conn;
pub mod coord;
pub mod engine;
pub mod epoch;
pub mod error;
pub mod payload;
pub mod plan;
pub mod record;
pub mod report;
pub mod retry;
pub mod run;
pub mod scan;
pub mod scenario;
pub mod schedule;
pub mod suite;
pub mod sys;
pub mod timer;
pub mod track;
pub mod worker;

pub use error::BenchError;
