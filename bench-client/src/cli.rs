//! Command-line arguments of every mode, and their translation into a [`RunSpec`].
//!
//! Scenario files use the same names as the long flags (see `scenario`), so this is the one
//! place that knows the knobs and their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::coord::{Mode, RunSpec, StepSpec};
use crate::error::BenchError;
use crate::plan::{Plan, RoomDist};
use crate::sys;

/// File descriptors a process keeps for itself besides connections (stdio, poll, timers,
/// pipes, the allocator's and the runtime's own).
pub const FD_RESERVE: u64 = 256;

/// bench-client: load generator for corecast (fan-out latency and throughput, memory per
/// connection), coordinated-omission-safe, up to a million connections.
#[derive(Debug, Parser)]
#[command(name = "bench-client", version, about, args_override_self = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The modes.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Hold N idle connections for a while; measure memory per connection (client and server).
    Connect(ConnectArgs),
    /// One timed broadcast: P publishers at a fixed total rate into R rooms.
    Fanout(FanoutArgs),
    /// Raise the publish rate step by step; report the highest rate sustained with p99
    /// under a bound and zero loss.
    Ramp(RampArgs),
    /// Run a scenario file (TOML keys = the flags of its `mode`); extra flags override it.
    Run(RunArgs),
    /// Start a corecast server, run every scenario of a folder against it, stop it.
    Suite(SuiteArgs),
    /// Run the target shapes of issues 8 and 16 against corecast, the ceiling probe and the
    /// tokio peer, and write compare.md/compare.json (corecast vs the better of the other
    /// two, ratio, pass/miss, client CPU, server CPU per delivery).
    Compare(CompareArgs),
    /// The ceiling probe: a minimal broadcast server speaking just enough of the protocol
    /// for bench-client, to measure what this host can do at all. Runs until killed.
    /// (Runs the `corecast-ceiling` executable beside this one, with these flags.)
    Ceiling(CeilingArgs),
    /// Internal: a worker process, driven by a coordinator over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

/// A comma-separated list of values of one flag (`--target a,b`, `--server-pid 1,2`).
/// One value per flag occurrence, so a later occurrence replaces an earlier one as every
/// other flag does (scenario files and overrides rely on that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

impl<T: std::str::FromStr> std::str::FromStr for List<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items = s
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<T>().map_err(|e| format!("`{v}`: {e}")))
            .collect::<Result<Vec<T>, String>>()?;
        if items.is_empty() {
            return Err("expected at least one value".into());
        }
        Ok(List(items))
    }
}

/// Flags every mode shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server address(es), comma-separated (the WebSocket endpoint is /ws on each).
    /// Connections are spread over them round-robin, publishers included.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: List<SocketAddr>,
    /// Connections to open.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: u64,
    /// Rooms to spread them over.
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// uniform, zipf:<s> (room k gets ∝ 1/(k+1)^s) or hot:<fraction> (room 0 gets the
    /// fraction, the rest are uniform).
    #[arg(long, default_value = "uniform")]
    pub room_dist: RoomDist,
    /// Connection attempts per second (all processes together).
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Seconds a connection may take to connect, upgrade and join.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Loopback source addresses (127.0.0.1, .2, …); 0 = one per 5,000 connections (fewer
    /// connections per address when the ephemeral port range is small).
    #[arg(long, default_value_t = 0)]
    pub source_addrs: u32,
    /// Worker processes; 0 = as many as RLIMIT_NOFILE requires.
    #[arg(long, default_value_t = 0)]
    pub processes: u32,
    /// Connections one process may hold; 0 = RLIMIT_NOFILE (hard limit) − 256.
    #[arg(long, default_value_t = 0)]
    pub max_conns_per_process: u64,
    /// Engine threads per process.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Server process(es) to sample for CPU and RSS, comma-separated (summed, and
    /// reported per server).
    #[arg(long)]
    pub server_pid: Option<List<u32>>,
    /// Reconnection attempts (with recovery) for a joined connection that ends
    /// unexpectedly: server close 1001/1012/1013…, dropped socket, `--churn`. 0 = none.
    #[arg(long, default_value_t = 5)]
    pub reconnect_attempts: u32,
    /// Reconnection attempts after the first go to the other `--target`s in turn, each
    /// connection starting at its own place among them (a cluster node that died: its
    /// connections spread over the other nodes and recover there).
    #[arg(long)]
    pub failover: bool,
    /// Folder under which the run folder is written.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Scenario name (run folder suffix); defaults to the mode.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Hard bound on the whole run in seconds; 0 = derived from the plan.
    #[arg(long, default_value_t = 0.0)]
    pub timeout: f64,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Offer permessage-deflate (RFC 7692) on every connection and inflate what the
    /// server compresses (it does with `--compression on`): for compression on/off runs.
    #[arg(long)]
    pub deflate: bool,
}

/// `connect` flags.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

/// Publishing flags shared by `fanout` and `ramp`.
#[derive(Debug, Clone, Args)]
pub struct Publish {
    /// Publishers (connections 0…P−1, each in its own room).
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Minimum payload text length in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publish a `data` JSON object of this many bytes per message instead of `text`
    /// (0: text). Compare with a `--payload` run of the same size.
    #[arg(long, default_value_t = 0)]
    pub data_bytes: usize,
    /// Pad payloads with JSON-like records (compressible like real JSON documents)
    /// instead of `x`, in `text` and in `--data-bytes` objects (there as real, quoted
    /// JSON): for compression comparisons (`--deflate`).
    #[arg(long)]
    pub payload_json: bool,
    /// After a publish window, wait at most this long for outstanding deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// A step passes when its corrected p99 is at most this many milliseconds (and it is clean).
    #[arg(long, default_value_t = 50.0)]
    pub p99_bound_ms: f64,
    /// Ask for an `ack` of every message (`id` on each publish) and audit each step per
    /// message: acknowledged messages owe every member, reported per receiver home (the
    /// `--target` a connection was first sent to), unacknowledged ones apart. For node
    /// kills and other correctness runs: it costs the server an ack per message and the
    /// client a map entry per message and home.
    #[arg(long)]
    pub acks: bool,
    /// With `--acks`: a publisher that stays connected sends a message again, with the
    /// same idempotency key, when its ack has not come this many seconds after it wrote
    /// it; then after twice as long, up to 64×. What a client does that takes the ack as
    /// its only proof: a message taken by a node that died before sequencing it is sent
    /// again instead of given up. Retries are counted in the audit. 0 = never.
    #[arg(long, default_value_t = 0.0)]
    pub ack_timeout: f64,
    /// While a step publishes, close this many random joined receivers per second
    /// (abruptly, no close frame) and let them reconnect with recovery. 0 = none.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
}

/// `fanout` flags.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Publishing.
    #[command(flatten)]
    pub publish: Publish,
    /// Total messages per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

/// `ramp` flags.
#[derive(Debug, Clone, Args)]
pub struct RampArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Publishing.
    #[command(flatten)]
    pub publish: Publish,
    /// First step's rate (messages/s).
    #[arg(long, default_value_t = 100.0)]
    pub start_rate: f64,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// No step above this rate.
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub step_duration: f64,
    /// At most this many steps.
    #[arg(long, default_value_t = 12)]
    pub max_steps: u32,
}

/// `run` flags.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Scenario file.
    pub file: PathBuf,
    /// Flags that override the file's values (e.g. `--target 127.0.0.1:9000`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub overrides: Vec<String>,
}

/// `suite` flags.
#[derive(Debug, Clone, Args)]
pub struct SuiteArgs {
    /// The corecast server to start.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Folder of scenario files.
    #[arg(long, default_value = "bench-client/scenarios")]
    pub scenarios: PathBuf,
    /// Run only these scenarios (file stems; repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    /// Folder under which run folders are written.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

/// How `suite` and `compare` start corecast.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// corecast server binary (e.g. target/release/corecast).
    #[arg(long)]
    pub server_bin: PathBuf,
    /// Server shards.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Extra server arguments (repeatable), e.g. `--server-arg=--no-pin`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

/// `compare` flags.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The corecast server to start (the ceiling probe and the tokio peer get as many
    /// threads as it has shards).
    #[command(flatten)]
    pub server: ServerArgs,
    /// Run only these shapes (repeatable): idle-15k, one-room-10k, rooms-100x100,
    /// rooms-1000x10, rooms-10x1000, latency-100x100-50k, latency-100x100-100k,
    /// latency-one-room-100k, latency-1000x10-100k, latency-10x1000-100k, cpu-1k, cpu-15k.
    #[arg(long)]
    pub only: Vec<String>,
    /// Folder under which run folders and the comparison folder are written.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Keep corecast's shards pinned to CPUs (its own default). Without this flag compare
    /// starts corecast with `--no-pin`, placed by the kernel like the two other servers:
    /// the load generator shares the cores, and a pinned shard woken while a client
    /// thread holds its core waits for that core instead of taking an idle one.
    #[arg(long)]
    pub pinned: bool,
}

/// `ceiling` flags.
#[derive(Debug, Clone, Args)]
pub struct CeilingArgs {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Event-loop threads, each with its own SO_REUSEPORT listener; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// A validated run: the spec for the coordinator and where to write.
pub struct Prepared {
    /// What to run.
    pub spec: RunSpec,
    /// Results root.
    pub results: PathBuf,
    /// Scenario name.
    pub scenario: String,
}

impl Cmd {
    /// Turns a run mode's arguments into a [`Prepared`] run; `None` for the other commands.
    pub fn prepare(&self) -> Option<Result<Prepared, BenchError>> {
        Some(match self {
            Cmd::Connect(a) => prepare(&a.common, Mode::Connect, None, Vec::new(), a.duration),
            Cmd::Fanout(a) => prepare(
                &a.common,
                Mode::Fanout,
                Some(&a.publish),
                vec![StepSpec { rate: a.rate, duration_secs: a.duration }],
                0.0,
            ),
            Cmd::Ramp(a) => prepare(&a.common, Mode::Ramp, Some(&a.publish), ramp_steps(a), 0.0),
            _ => return None,
        })
    }
}

fn ramp_steps(a: &RampArgs) -> Vec<StepSpec> {
    let mut steps = Vec::new();
    let mut rate = a.start_rate;
    while rate <= a.max_rate && steps.len() < a.max_steps as usize {
        // Whole rates from 1 msg/s up; below that the fraction is the rate (a room of a
        // million members on a small host sustains less than one message per second).
        let rate_now = if rate >= 1.0 { rate.round() } else { rate };
        steps.push(StepSpec { rate: rate_now, duration_secs: a.step_duration });
        rate *= a.factor.max(1.01);
    }
    steps
}

fn prepare(
    c: &Common,
    mode: Mode,
    publish: Option<&Publish>,
    steps: Vec<StepSpec>,
    hold_secs: f64,
) -> Result<Prepared, BenchError> {
    let bad = |m: String| Err(BenchError::Config(m));
    if c.connections == 0 || c.connections > u64::from(u32::MAX) {
        return bad(format!("--connections must be 1..{}", u32::MAX));
    }
    if c.connect_rate <= 0.0 || c.threads == 0 || c.rooms == 0 {
        return bad("--connect-rate, --threads and --rooms must be positive".into());
    }
    let publishers = publish.map_or(0, |p| p.publishers);
    if u64::from(publishers) > c.connections {
        return bad("--publishers cannot exceed --connections".into());
    }
    if steps.iter().any(|s| s.rate <= 0.0 || s.duration_secs <= 0.0) {
        return bad("rates and durations must be positive".into());
    }
    let churn = publish.map_or(0.0, |p| p.churn);
    if !(churn >= 0.0 && churn.is_finite()) {
        return bad("--churn must be a rate ≥ 0".into());
    }
    let ack_timeout = publish.map_or(0.0, |p| p.ack_timeout);
    if !(ack_timeout >= 0.0 && ack_timeout.is_finite()) {
        return bad("--ack-timeout must be a number of seconds ≥ 0".into());
    }
    if ack_timeout > 0.0 && !publish.is_some_and(|p| p.acks) {
        return bad("--ack-timeout needs --acks (a retry waits for an ack)".into());
    }
    if churn > 0.0 && c.reconnect_attempts == 0 {
        return bad("--churn needs --reconnect-attempts ≥ 1 (churned connections reconnect)".into());
    }
    if churn > 0.0 && u64::from(publishers) >= c.connections {
        return bad("--churn closes receivers: it needs more connections than publishers".into());
    }
    let fd_limit = sys::raise_nofile();
    let per_process = match c.max_conns_per_process {
        0 => fd_limit.saturating_sub(FD_RESERVE).max(1),
        n => n.min(fd_limit.saturating_sub(FD_RESERVE).max(1)),
    };
    let needed = c.connections.div_ceil(per_process) as u32;
    let processes = if c.processes == 0 { needed } else { c.processes };
    if processes < needed {
        return bad(format!(
            "{} connections need at least {needed} processes of {per_process} (RLIMIT_NOFILE {fd_limit})",
            c.connections
        ));
    }
    let per_addr = sys::conns_per_source_addr().max(1);
    let source_addrs = if c.source_addrs == 0 { c.connections.div_ceil(per_addr) as u32 } else { c.source_addrs };
    let plan = Plan {
        targets: c.target.0.clone(),
        connections: c.connections,
        rooms: c.rooms,
        room_dist: c.room_dist,
        publishers,
        payload_bytes: publish.map_or(0, |p| p.payload),
        data_bytes: publish.map_or(0, |p| p.data_bytes),
        source_addrs: source_addrs.max(1),
        connect_rate: c.connect_rate,
        processes,
        threads: c.threads,
        tag: format!("bc{:06x}", fastrand::u32(..0x100_0000)),
        connect_timeout_secs: c.connect_timeout,
        reconnect_attempts: c.reconnect_attempts,
        failover: c.failover,
        churn_per_sec: churn,
        deflate: c.deflate,
        payload_json: publish.is_some_and(|p| p.payload_json),
        acks: publish.is_some_and(|p| p.acks),
        // Any positive timeout is at least 1 ns (0 would turn retries off).
        ack_timeout_ns: ((ack_timeout * 1e9) as u64).max(u64::from(ack_timeout > 0.0)),
    };
    let drain = publish.map_or(0.0, |p| p.drain);
    let work: f64 = steps.iter().map(|s| s.duration_secs + drain + 5.0).sum::<f64>() + hold_secs;
    let auto_timeout = c.connections as f64 / c.connect_rate + c.connect_timeout + work + 60.0;
    let spec = RunSpec {
        mode,
        plan,
        steps,
        hold_secs,
        drain_secs: drain,
        p99_bound_ms: publish.map_or(f64::INFINITY, |p| p.p99_bound_ms),
        server_pids: c.server_pid.clone().map_or_else(Vec::new, |l| l.0),
        worker_exe: std::env::current_exe().ok(),
        timeout_secs: if c.timeout > 0.0 { c.timeout } else { auto_timeout },
        progress: !c.quiet,
        fd_limit,
        conns_per_process: per_process,
    };
    let scenario = c.scenario.clone().unwrap_or_else(|| format!("{mode:?}").to_lowercase());
    Ok(Prepared { spec, results: c.results.clone(), scenario })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("bench-client").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn ramp_steps_grow_geometrically_to_the_cap() {
        let Cmd::Ramp(a) = parse(&["ramp", "--start-rate", "100", "--factor", "2", "--max-rate", "1000"]).command
        else {
            panic!()
        };
        let rates: Vec<f64> = ramp_steps(&a).iter().map(|s| s.rate).collect();
        assert_eq!(rates, [100.0, 200.0, 400.0, 800.0]);
    }

    #[test]
    fn regression_ramp_steps_below_one_message_per_second_are_not_rounded_to_zero() {
        let args = ["ramp", "--start-rate", "0.125", "--factor", "2", "--max-rate", "1.5"];
        let Cmd::Ramp(a) = parse(&args).command else { panic!() };
        let rates: Vec<f64> = ramp_steps(&a).iter().map(|s| s.rate).collect();
        assert_eq!(rates, [0.125, 0.25, 0.5, 1.0]);
    }

    #[test]
    fn processes_follow_the_per_process_cap() {
        let cli = parse(&["connect", "-n", "19000", "--max-conns-per-process", "9500"]);
        let p = cli.command.prepare().unwrap().unwrap();
        assert_eq!(p.spec.plan.processes, 2);
        assert_eq!(u64::from(p.spec.plan.source_addrs), 19000u64.div_ceil(sys::conns_per_source_addr()));
        let cli = parse(&["connect", "-n", "19000", "--max-conns-per-process", "9500", "--processes", "1"]);
        assert!(cli.command.prepare().unwrap().is_err());
    }

    #[test]
    fn later_flags_override_earlier_ones() {
        let Cmd::Fanout(a) = parse(&["fanout", "--rate", "10", "--rate", "20"]).command else { panic!() };
        assert_eq!(a.rate, 20.0);
    }

    #[test]
    fn targets_and_server_pids_take_lists() {
        let p = parse(&["fanout", "--target", "127.0.0.1:9301"]).command.prepare().unwrap().unwrap();
        assert_eq!(p.spec.plan.targets, ["127.0.0.1:9301".parse::<SocketAddr>().unwrap()]);
        assert!(p.spec.server_pids.is_empty());
        let cli = parse(&["fanout", "--target", "127.0.0.1:1,127.0.0.2:2", "--server-pid", "10, 20", "--churn", "5"]);
        let p = cli.command.prepare().unwrap().unwrap();
        assert_eq!(p.spec.plan.targets.len(), 2);
        assert_eq!(p.spec.server_pids, [10, 20]);
        assert_eq!(p.spec.plan.churn_per_sec, 5.0);
        // A later --target replaces the earlier list (scenario overrides rely on it).
        let cli = parse(&["fanout", "--target", "127.0.0.1:1,127.0.0.2:2", "--target", "127.0.0.3:3"]);
        let p = cli.command.prepare().unwrap().unwrap();
        assert_eq!(p.spec.plan.targets, ["127.0.0.3:3".parse::<SocketAddr>().unwrap()]);
        assert!(Cli::try_parse_from(["bench-client", "fanout", "--target", "127.0.0.1:1,nope"]).is_err());
        assert!(Cli::try_parse_from(["bench-client", "fanout", "--target", ","]).is_err());
    }

    #[test]
    fn churn_needs_reconnects_and_receivers() {
        let refused = |args: &[&str]| parse(args).command.prepare().unwrap().is_err();
        assert!(refused(&["fanout", "--churn", "5", "--reconnect-attempts", "0"]));
        assert!(refused(&["fanout", "-n", "2", "--publishers", "2", "--churn", "5"]));
        assert!(refused(&["fanout", "--churn=-1"]));
        assert!(!refused(&["ramp", "--churn", "5"]));
    }

    #[test]
    fn an_ack_timeout_needs_acks_and_a_sane_number_of_seconds() {
        let prepared = |args: &[&str]| parse(args).command.prepare().unwrap();
        let p = prepared(&["fanout", "--acks", "--ack-timeout", "0.25"]).unwrap();
        assert_eq!(p.spec.plan.ack_timeout_ns, 250_000_000);
        // Positive but below a nanosecond: still on, not silently off.
        let p = prepared(&["ramp", "--acks", "--ack-timeout", "1e-12"]).unwrap();
        assert_eq!(p.spec.plan.ack_timeout_ns, 1);
        assert_eq!(prepared(&["fanout", "--acks"]).unwrap().spec.plan.ack_timeout_ns, 0);
        assert!(prepared(&["fanout", "--ack-timeout", "1"]).is_err(), "a retry waits for an ack");
        assert!(prepared(&["fanout", "--acks", "--ack-timeout=-1"]).is_err());
        assert!(prepared(&["fanout", "--acks", "--ack-timeout", "inf"]).is_err());
        assert!(prepared(&["fanout", "--acks", "--ack-timeout", "NaN"]).is_err());
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse(&["fanout", "-n", "2", "--publishers", "3"]).command.prepare().unwrap().is_err());
        assert!(parse(&["fanout", "--rate", "0"]).command.prepare().unwrap().is_err());
    }
}
