//! The shapes the comparison runs against every server: bench-client command lines for the
//! targets of issues 8 and 16, identical for corecast, the ceiling probe and the tokio peer.
//!
//! Every shape uses 100-byte payloads and two client engine threads (at millions of
//! deliveries per second one thread would be the bottleneck before either server). Server
//! address, pid, results folder and run name are added by the caller.

/// 2^(1/4): the fine ramp's factor, so three fine steps split a ×2 bracket into quarters.
pub const FINE_FACTOR: f64 = 1.189_207_115;

/// Steps of the fine ramp (the fourth would be the coarse ramp's failing rate).
pub const FINE_STEPS: u32 = 3;

/// One shape.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Run-folder suffix (the server's name is appended) and `--only` key.
    pub name: &'static str,
    /// bench-client mode and flags.
    pub args: Vec<String>,
    /// A coarse ramp, to be followed by a fine ramp from its highest passing rate.
    pub refine: bool,
}

fn shape(name: &'static str, refine: bool, args: &[&str]) -> Shape {
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.extend(["--threads=2", "--quiet"].map(str::to_owned));
    Shape { name, args, refine }
}

/// Max sustained throughput: a ×2 ramp of 3 s steps from `start` msg/s, zero loss and
/// p99 ≤ 1 s required (generous: this asks "how much", not "how fast").
fn ramp(name: &'static str, rooms: &str, start: &str) -> Shape {
    shape(
        name,
        true,
        &[
            "ramp",
            "-n",
            "10000",
            "--rooms",
            rooms,
            "--publishers",
            rooms,
            "--payload",
            "100",
            "--start-rate",
            start,
            "--factor",
            "2",
            "--max-rate",
            "10000000",
            "--max-steps",
            "12",
            "--step-duration",
            "3",
            "--drain",
            "2",
            "--p99-bound-ms",
            "1000",
            "--connect-rate",
            "20000",
        ],
    )
}

fn fanout(name: &'static str, conns: &str, rooms: &str, rate: &str, bound_ms: &str) -> Shape {
    shape(
        name,
        false,
        &[
            "fanout",
            "-n",
            conns,
            "--rooms",
            rooms,
            "--publishers",
            rooms,
            "--payload",
            "100",
            "--rate",
            rate,
            "--duration",
            "8",
            "--drain",
            "3",
            "--p99-bound-ms",
            bound_ms,
            "--connect-rate",
            "20000",
        ],
    )
}

/// Every shape, in run order.
pub fn all() -> Vec<Shape> {
    vec![
        // Idle memory at 15,000 connections, and the connect + handshake + join rate
        // (connects unpaced: the pacing limit is far above what either server takes).
        // Each connection joins one of 100 rooms: issue 16's memory target is per idle
        // connection in that shape (a room membership costs memory; one room hid it).
        shape(
            "idle-15k",
            false,
            &["connect", "-n", "15000", "--rooms", "100", "--duration", "5", "--connect-rate", "1000000"],
        ),
        // One room of 10,000, full broadcast: 1 msg/s = 10,000 deliveries/s.
        ramp("one-room-10k", "1", "5"),
        // 100 rooms × 100, one publisher per room: 1 msg/s = 100 deliveries/s.
        ramp("rooms-100x100", "100", "500"),
        // Many small rooms and a few large ones, the same 10,000 connections (start: 50,000
        // deliveries/s, as above).
        ramp("rooms-1000x10", "1000", "5000"),
        ramp("rooms-10x1000", "10", "50"),
        // Latency at a fixed load: 500 msg/s × 100 members = 50,000 deliveries/s.
        fanout("latency-100x100-50k", "10000", "100", "500", "2"),
        // 1,000 msg/s × 100 members = 100,000 deliveries/s (also: server CPU per delivery).
        fanout("latency-100x100-100k", "10000", "100", "1000", "1000"),
        // 10 msg/s × 10,000 members = 100,000 deliveries/s.
        fanout("latency-one-room-100k", "10000", "1", "10", "40"),
        // 100,000 deliveries/s in rooms of 10 and of 1,000 (p99 and CPU per delivery).
        fanout("latency-1000x10-100k", "10000", "1000", "10000", "1000"),
        fanout("latency-10x1000-100k", "10000", "10", "100", "1000"),
        // Server CPU per delivery at the same load (rooms of 100, 50,000 deliveries/s)
        // with 1,000 and with 15,000 connections.
        fanout("cpu-1k", "1000", "10", "500", "1000"),
        fanout("cpu-15k", "15000", "150", "500", "1000"),
    ]
}

/// The fine ramp after a coarse one whose highest passing rate was `best` msg/s: three
/// steps of ×2^(1/4) from there (later flags override earlier ones).
pub fn fine(coarse: &Shape, best: f64) -> Vec<String> {
    let mut args = coarse.args.clone();
    args.push(format!("--start-rate={}", (best * FINE_FACTOR).round()));
    args.push(format!("--factor={FINE_FACTOR}"));
    args.push(format!("--max-steps={FINE_STEPS}"));
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Cmd};
    use clap::Parser;

    #[test]
    fn every_shape_is_a_valid_command_line() {
        for s in all() {
            let argv = std::iter::once("bench-client".to_owned()).chain(s.args.clone());
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert!(cli.command.prepare().unwrap().is_ok(), "{}", s.name);
            if s.refine {
                let argv = std::iter::once("bench-client".to_owned()).chain(fine(&s, 100.0));
                let Cmd::Ramp(r) = Cli::try_parse_from(argv).unwrap().command else { panic!() };
                assert_eq!((r.start_rate, r.max_steps), (119.0, 3));
            }
        }
    }
}
