//! `bench-client compare`: corecast, the ceiling probe and the tokio peer, the same client
//! and the same shapes, one after the other, and a table of how corecast compares with the
//! better of the other two.
//!
//! For each shape of [`shapes::all`]: start corecast (as the suite does, abuse limits
//! lifted), run the shape, stop it; start the ceiling probe (the `corecast-ceiling`
//! executable beside this one, see [`probe_exe`], with as many threads as corecast has
//! shards), run the identical shape, stop it; the same with the tokio peer
//! (`corecast-tokio-peer`, as many worker threads). Throughput shapes are a coarse ×2 ramp followed by a fine ×2^(1/4) ramp from
//! the best coarse rate, each on a fresh server. Every run leaves its usual run folder
//! (`<date>-<host>-<shape>-<server>`); the comparison itself goes to
//! `<date>-<host>-compare/compare.md` and `compare.json` ([`table`]).
//!
//! | module | concern |
//! |---|---|
//! | [`shapes`] | the command lines of the targets |
//! | [`table`] | rows, ratios, thresholds, client-bound flags; compare.md/json |

pub mod shapes;
pub mod table;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

use crate::cli::{Cli, CompareArgs};
use crate::error::BenchError;
use crate::report::{self, RunContext};
use crate::run::execute;
use crate::suite::{free_addr, Server};
use shapes::Shape;
use table::{Header, Row, Runs, ServerKind, ShapeRuns};

/// What a comparison left behind.
pub struct Comparison {
    /// The folder holding compare.md and compare.json.
    pub dir: PathBuf,
    /// The rows.
    pub rows: Vec<Row>,
}

/// corecast's extra flags in a comparison: the user's `--server-arg`s, and `--no-pin`
/// unless `--pinned` or they have it already (corecast refuses a flag given twice).
fn corecast_flags(args: &CompareArgs) -> Vec<String> {
    let mut flags = args.server.server_args.clone();
    if !args.pinned && !flags.iter().any(|f| f == "--no-pin") {
        flags.insert(0, "--no-pin".to_owned());
    }
    flags
}

/// How the figures are obtained, for compare.md.
fn method() -> Vec<String> {
    vec![
        "All three servers run on this host with the same number of threads (corecast `--shards N`, ceiling \
         `--threads N`, tokio peer `--threads N` worker threads), none pinned to a CPU (corecast `--no-pin` \
         unless `--pinned`: the client shares the cores), started fresh for every run; bench-client runs \
         with 2 engine threads and 100-byte payloads. The ratio is corecast ÷ the better of the ceiling probe and \
         the tokio peer (higher throughput; lower latency, CPU, memory)."
            .into(),
        "Max sustained deliveries/s: `ramp` with 3 s steps, ×2 per step from a low start (5 msg/s in one room, \
         500 msg/s over 100 rooms) until a step loses, duplicates or reorders anything, or its corrected p99 \
         exceeds 1000 ms; then a second ramp from the best rate ×2^(1/4) (3 steps of ×2^(1/4)). The figure is \
         the deliveries/s of the highest clean step of either ramp (resolution ~19 %)."
            .into(),
        "Latency: `fanout` for 8 s at the fixed rate; the figure is the corrected p99 (from the intended send \
         time, coordinated-omission-safe), only when the run was clean. Server CPU per delivery at 100,000 \
         deliveries/s comes from the same runs."
            .into(),
        "Idle memory: `connect` of 15,000 connections (unpaced), held 5 s; server RSS growth ÷ connections. \
         The connect rate is that run's: joined connections ÷ time until all joined."
            .into(),
        "CPU per delivery (1k/15k rows): server CPU seconds over the step (publish window + drain) ÷ deliveries, at 50,000 \
         deliveries/s in rooms of 100, with 1,000 and with 15,000 connections."
            .into(),
        "Client CPU: bench-client's CPU (% of one core) and µs per delivery, and the server's µs per delivery, \
         in the step the figure comes from (for a ramp: the step where it stopped). **client-bound** = the client used > 90 % of a core or more \
         than the server: the figure may be bench-client's limit rather than the server's."
            .into(),
    ]
}

/// Runs the comparison; prints a summary line per run, returns the rows.
pub fn run_compare(args: &CompareArgs, invoked_as: &str) -> Result<Comparison, BenchError> {
    let started = Instant::now();
    let started_utc = report::utc_now().0;
    std::fs::create_dir_all(&args.results)?;
    let bins = Bins { probe: probe_exe()?, peer: peer_exe()? };
    let mut runs = Runs::new();
    let mut commands = Commands::default();
    for shape in shapes::all() {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == shape.name) {
            continue;
        }
        for kind in ServerKind::ALL {
            let out = measure(args, &bins, &shape, kind, invoked_as, &mut commands);
            runs.insert((shape.name.to_owned(), kind), out);
        }
    }
    let rows = table::rows(&runs);
    let ctx = RunContext::gather("compare", invoked_as.to_owned(), None);
    let header = Header {
        started_utc,
        duration_secs: started.elapsed().as_secs_f64(),
        command: invoked_as.to_owned(),
        corecast_command: commands.corecast,
        ceiling_command: commands.ceiling,
        tokio_command: commands.tokio,
        host: format!("{} ({}, {} cores, {})", ctx.host.hostname, ctx.host.cpu_model, ctx.host.cores, ctx.host.kernel),
        git_commit: ctx.git_commit.clone(),
        method: method(),
    };
    let dir = report::run_dir(&args.results, &ctx.host.hostname, "compare");
    table::write(&dir, &header, &rows)?;
    Ok(Comparison { dir, rows })
}

/// The executables of the reference servers.
struct Bins {
    probe: PathBuf,
    peer: PathBuf,
}

/// The command line each server was first started with (for compare.md).
#[derive(Default)]
struct Commands {
    corecast: String,
    ceiling: String,
    tokio: String,
}

/// One shape against one server: the run (and, for a ramp, the fine ramp).
fn measure(
    args: &CompareArgs,
    bins: &Bins,
    shape: &Shape,
    kind: ServerKind,
    invoked_as: &str,
    commands: &mut Commands,
) -> ShapeRuns {
    let mut out = ShapeRuns::default();
    let name = format!("{}-{}", shape.name, kind.name());
    eprintln!("bench-client compare: {name}");
    match run_one(args, bins, &shape.args, &name, kind, invoked_as, commands) {
        Ok((dir, result)) => {
            out.dirs.push(dir);
            out.main = Some(result);
        }
        Err(e) => {
            eprintln!("bench-client compare: {name} failed: {e}");
            out.error = Some(e.to_string());
            return out;
        }
    }
    let best =
        out.main.as_ref().and_then(|r| r.steps.iter().filter(|s| s.passed).map(|s| s.spec.rate).reduce(f64::max));
    if let (true, Some(best)) = (shape.refine, best) {
        let fine = format!("{name}-fine");
        eprintln!("bench-client compare: {fine}");
        match run_one(args, bins, &shapes::fine(shape, best), &fine, kind, invoked_as, commands) {
            Ok((dir, result)) => {
                out.dirs.push(dir);
                out.fine = Some(result);
            }
            Err(e) => out.error = Some(format!("fine ramp: {e}")),
        }
    }
    out
}

/// File name of the ceiling probe's executable.
pub const PROBE_NAME: &str = "corecast-ceiling";

/// File name of the tokio peer's executable.
pub const PEER_NAME: &str = "corecast-tokio-peer";

/// The ceiling probe's executable: `corecast-ceiling` in the folder of the running
/// bench-client (where `cargo build --release --workspace` puts both), or one folder up
/// when bench-client runs from cargo's `deps/` (a test binary).
pub fn probe_exe() -> Result<PathBuf, BenchError> {
    sibling_exe(PROBE_NAME)
}

/// The tokio peer's executable, found as [`probe_exe`] finds the probe.
pub fn peer_exe() -> Result<PathBuf, BenchError> {
    sibling_exe(PEER_NAME)
}

fn sibling_exe(name: &str) -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe()?;
    let here = exe.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let candidates = [Some(here.join(name)), here.parent().map(|p| p.join(name))];
    candidates.into_iter().flatten().find(|p| p.is_file()).ok_or_else(|| {
        BenchError::Server(format!(
            "{name} not found beside {}: build it with `cargo build --release --workspace`",
            exe.display()
        ))
    })
}

/// Starts the server, runs `shape_args` against it as run `name`, stops it.
fn run_one(
    args: &CompareArgs,
    bins: &Bins,
    shape_args: &[String],
    name: &str,
    kind: ServerKind,
    invoked_as: &str,
    commands: &mut Commands,
) -> Result<(PathBuf, crate::coord::RunResult), BenchError> {
    let log = args.results.join(format!(".server-{name}.log"));
    let mut server = match kind {
        ServerKind::Corecast => {
            let flags = corecast_flags(args);
            Server::start(&args.server.server_bin, args.server.shards, &flags, log.clone())?
        }
        ServerKind::Ceiling | ServerKind::Tokio => {
            let addr = free_addr()?;
            let flags = vec![format!("--listen={addr}"), format!("--threads={}", args.server.shards)];
            let bin = if kind == ServerKind::Ceiling { &bins.probe } else { &bins.peer };
            Server::launch(bin, flags, addr, log.clone())?
        }
    };
    let slot = match kind {
        ServerKind::Corecast => &mut commands.corecast,
        ServerKind::Ceiling => &mut commands.ceiling,
        ServerKind::Tokio => &mut commands.tokio,
    };
    if slot.is_empty() {
        *slot = server.command.clone();
    }
    let extra = [
        format!("--target={}", server.addr),
        format!("--server-pid={}", server.pid()),
        format!("--results={}", args.results.display()),
        format!("--scenario={name}"),
    ];
    let argv: Vec<String> =
        std::iter::once("bench-client".to_owned()).chain(shape_args.iter().cloned()).chain(extra.clone()).collect();
    let result = (|| {
        let cli = Cli::try_parse_from(&argv).map_err(|e| BenchError::Config(format!("{name}: {e}")))?;
        let prepared = cli.command.prepare().ok_or_else(|| BenchError::Config("not a run mode".into()))??;
        let command = format!("bench-client {}   # from: {invoked_as}", argv[1..].join(" "));
        let mut ctx = RunContext::gather(name, command, None);
        ctx.server_command = Some(server.command.clone());
        execute(&prepared, &ctx)
    })();
    server.stop();
    if let Ok(o) = &result {
        let _ = std::fs::copy(&log, o.dir.join("server.log"));
    }
    let _ = std::fs::remove_file(&log);
    result.map(|o| (o.dir, o.result))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Cmd};

    fn flags(extra: &[&str]) -> Vec<String> {
        let argv = ["bench-client", "compare", "--server-bin", "x"].into_iter().chain(extra.iter().copied());
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Cmd::Compare(a)) => super::corecast_flags(&a),
            other => panic!("not a compare command: {other:?}"),
        }
    }

    #[test]
    fn corecast_runs_unpinned_unless_asked_and_never_gets_a_flag_twice() {
        assert_eq!(flags(&[]), ["--no-pin"]);
        assert_eq!(flags(&["--pinned"]), Vec::<String>::new());
        assert_eq!(flags(&["--server-arg=--no-pin"]), ["--no-pin"]);
        assert_eq!(flags(&["--server-arg=--shards=3"]), ["--no-pin", "--shards=3"]);
    }
}
