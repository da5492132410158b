//! `corecast-tokio-peer`: the mainstream peer as a process (anyhow only here). Runs until
//! killed. `bench-client compare` starts it as its third server.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use corecast_tokio_peer::Peer;

/// The mainstream peer: a plain tokio + tokio-tungstenite room broadcaster speaking the
/// part of corecast's protocol bench-client drives. Runs until killed.
#[derive(Debug, Parser)]
#[command(name = "corecast-tokio-peer", version)]
struct Args {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// tokio worker threads; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let peer = Peer::start(args.listen, threads).context("starting the tokio peer")?;
    println!("tokio peer listening on {} ({threads} worker threads)", peer.addr);
    peer.wait().context("tokio peer")
}
