//! `corecast-ceiling`: the ceiling probe as a process (anyhow only here). Runs until
//! killed. `bench-client ceiling` forwards its flags here, and `bench-client compare`
//! starts it as its second server.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use corecast_ceiling::Ceiling;

/// The ceiling probe: a minimal broadcast server speaking just enough of the protocol
/// for bench-client, to measure what this host can do at all. Runs until killed.
#[derive(Debug, Parser)]
#[command(name = "corecast-ceiling", version)]
struct Args {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Event-loop threads, each with its own SO_REUSEPORT listener; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let probe = Ceiling::start(args.listen, threads).context("starting the ceiling probe")?;
    println!("ceiling probe listening on {} ({threads} threads)", probe.addr);
    probe.wait().context("ceiling probe")
}
