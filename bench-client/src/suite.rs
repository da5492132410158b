//! `bench-client suite`: the standard scenarios against a corecast server it starts itself.
//! Each scenario gets a fresh server (so one scenario's leftovers cannot affect the next),
//! on a free loopback port, with its log kept in the run folder.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::cli::{Cli, SuiteArgs};
use crate::error::BenchError;
use crate::report::RunContext;
use crate::run::{execute, Outcome};
use crate::scenario::Scenario;

/// A corecast server process started for one scenario.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its command line, for SETUP.md.
    pub command: String,
    /// Its log file.
    pub log: PathBuf,
}

impl Server {
    /// Starts `bin` on a free loopback port and waits until `/health` answers.
    pub fn start(bin: &Path, shards: usize, extra: &[String], log: PathBuf) -> Result<Server, BenchError> {
        let addr = free_addr()?;
        let mut args = vec![format!("--listen={addr}"), format!("--shards={shards}"), "--log=warn".to_owned()];
        // The abuse limits are per client and per source address; a load generator is one
        // client opening thousands of connections from a few addresses, so it lifts them.
        // Flags in `extra` come later and win (clap keeps the last value).
        args.extend(BENCH_LIMITS.iter().map(|s| (*s).to_owned()));
        args.extend(extra.iter().cloned());
        Server::launch(bin, args, addr, log)
    }

    /// Starts `bin args…` (which must listen on `addr` and answer `GET /health` with 200,
    /// as corecast and the ceiling probe do), its output going to `log`, and waits
    /// until it is healthy (10 s at most).
    pub fn launch(bin: &Path, args: Vec<String>, addr: SocketAddr, log: PathBuf) -> Result<Server, BenchError> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| BenchError::Server(format!("cannot start {}: {e}", bin.display())))?;
        let command = format!("{} {}", bin.display(), args.join(" "));
        let mut server = Server { child, addr, command, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !healthy(addr) {
            if Instant::now() > deadline || matches!(server.child.try_wait(), Ok(Some(_))) {
                server.stop();
                return Err(BenchError::Server(format!("server did not become healthy on {addr}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// Process id, for CPU and RSS sampling.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (graceful shutdown), then SIGKILL if it has not exited within 15 s.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// A loopback address with a port that was free a moment ago (the kernel's pick for port 0).
pub fn free_addr() -> Result<SocketAddr, BenchError> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Server flags the suite always passes: no per-connection rate limit, no per-IP cap.
pub const BENCH_LIMITS: &[&str] = &["--rate-limit=0", "--max-connections-per-ip=0"];

/// The server is serving: `GET /health` answers 200.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// The scenario files of `dir`, sorted by name, filtered by `only`.
pub fn scenario_files(dir: &Path, only: &[String]) -> Result<Vec<PathBuf>, BenchError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| only.is_empty() || p.file_stem().is_some_and(|s| only.iter().any(|o| s == o.as_str())))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(BenchError::Config(format!("no scenario files in {}", dir.display())));
    }
    Ok(files)
}

/// Each scenario's name and how its run went.
pub type SuiteResults = Vec<(String, Result<Outcome, BenchError>)>;

/// Runs every scenario; returns one entry per scenario (name, outcome or error).
pub fn run_suite(args: &SuiteArgs, invoked_as: &str) -> Result<SuiteResults, BenchError> {
    let mut results = Vec::new();
    for file in scenario_files(&args.scenarios, &args.only)? {
        let scenario = Scenario::load(&file)?;
        eprintln!("bench-client suite: scenario {} ({})", scenario.name, file.display());
        let outcome = run_one(args, &scenario, &file, invoked_as);
        if let Err(e) = &outcome {
            eprintln!("bench-client suite: scenario {} failed: {e}", scenario.name);
        }
        results.push((scenario.name.clone(), outcome));
    }
    Ok(results)
}

fn run_one(args: &SuiteArgs, scenario: &Scenario, file: &Path, invoked_as: &str) -> Result<Outcome, BenchError> {
    std::fs::create_dir_all(&args.results)?;
    let log = args.results.join(format!(".server-{}.log", scenario.name));
    let mut server = Server::start(&args.server.server_bin, args.server.shards, &args.server.server_args, log.clone())?;
    let extra = [
        format!("--target={}", server.addr),
        format!("--server-pid={}", server.pid()),
        format!("--results={}", args.results.display()),
        format!("--scenario={}", scenario.name),
    ];
    let argv: Vec<String> =
        std::iter::once("bench-client".to_owned()).chain(scenario.args.clone()).chain(extra.clone()).collect();
    let cli = Cli::try_parse_from(&argv).map_err(|e| BenchError::Config(format!("{}: {e}", file.display())))?;
    let prepared = cli.command.prepare().ok_or_else(|| BenchError::Config("not a run mode".into()))??;
    let command = format!("bench-client run {} {}   # from: {invoked_as}", file.display(), extra.join(" "));
    let mut ctx = RunContext::gather(&scenario.name, command, Some(scenario.text.clone()));
    ctx.server_command = Some(server.command.clone());
    let outcome = execute(&prepared, &ctx);
    server.stop();
    if let Ok(o) = &outcome {
        let _ = std::fs::copy(&log, o.dir.join("server.log"));
    }
    let _ = std::fs::remove_file(&log);
    outcome
}
