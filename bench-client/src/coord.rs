//! The coordinator: starts the workers, runs the phases of a run (connect, hold or publish
//! steps, finish), keeps the live progress line, samples CPU and memory of bench-client's
//! processes and of the server, and turns the workers' reports into a [`RunResult`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::audit::AuditResult;
use crate::engine::{conn_slot_bytes, PublishReport};
use crate::error::BenchError;
use crate::plan::Plan;
use crate::record::{merge_into, new_hist, ConnStats, Deliveries, Recovery, StepRecord, Timeline, Verdict, WireStep};
use crate::schedule::Schedule;
use crate::sys;
use crate::worker::{Down, Link, Up};

/// What kind of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Hold idle connections; measure memory per connection.
    Connect,
    /// One timed broadcast step.
    Fanout,
    /// Publish-rate steps until p99 or loss fails.
    Ramp,
}

/// One publish step to run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepSpec {
    /// Total messages per second.
    pub rate: f64,
    /// Publishing window in seconds.
    pub duration_secs: f64,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Kind of run.
    pub mode: Mode,
    /// Connections, rooms, publishers, processes.
    pub plan: Plan,
    /// Publish steps (empty for `connect`).
    pub steps: Vec<StepSpec>,
    /// `connect`: how long to hold the connections.
    pub hold_secs: f64,
    /// After a step's window, wait at most this long for the remaining deliveries.
    pub drain_secs: f64,
    /// A step passes when its corrected p99 is at most this (and nothing was lost).
    pub p99_bound_ms: f64,
    /// Server processes to sample for CPU and RSS (one per target, in the same order,
    /// for per-server memory per connection); empty = none.
    pub server_pids: Vec<u32>,
    /// Executable for child workers (always used when given, even for one worker, so
    /// that each run's memory is measured in fresh processes); `None` runs the single
    /// worker as a thread of this process (tests).
    pub worker_exe: Option<PathBuf>,
    /// Hard bound on the whole run.
    pub timeout_secs: f64,
    /// Print the live progress line on stderr.
    pub progress: bool,
    /// RLIMIT_NOFILE as read (soft limit after raising it to the hard one).
    pub fd_limit: u64,
    /// Connections one worker process may hold, derived from `fd_limit`.
    pub conns_per_process: u64,
}

/// Memory figures, measured as RSS growth between "no connection" and "all held".
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// bench-client RSS (all its processes) before connecting.
    pub client_rss_before: u64,
    /// bench-client RSS with every connection held.
    pub client_rss_held: u64,
    /// (held − before) / connections held.
    pub client_rss_per_conn: f64,
    /// Size of one connection's slab slot in an engine (struct only).
    pub client_conn_struct_bytes: usize,
    /// User-space bytes engines hold per connection (slab + any buffers), measured.
    pub client_engine_bytes_per_conn: f64,
    /// Server RSS before connecting.
    pub server_rss_before: Option<u64>,
    /// Server RSS with every connection held.
    pub server_rss_held: Option<u64>,
    /// (held − before) / connections held.
    pub server_rss_per_conn: Option<f64>,
    /// Each server process on its own (the figures above are their sums).
    pub servers: Vec<ServerMemory>,
}

/// One server process's memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerMemory {
    /// Process id.
    pub pid: u32,
    /// RSS before connecting.
    pub rss_before: Option<u64>,
    /// RSS with every connection held.
    pub rss_held: Option<u64>,
    /// Growth per connection held on it; known when as many pids as targets were given
    /// (pid i serves target i), so its share of the connections is known.
    pub rss_per_conn: Option<f64>,
}

/// One server process's CPU over an interval.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerCpu {
    /// Process id.
    pub pid: u32,
    /// CPU seconds.
    pub secs: Option<f64>,
    /// % of one core.
    pub pct: Option<f64>,
}

/// CPU use over an interval, in seconds and in % of one core.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cpu {
    /// Wall time of the interval.
    pub wall_secs: f64,
    /// bench-client CPU seconds (all processes).
    pub client_secs: f64,
    /// bench-client CPU, % of one core.
    pub client_pct: f64,
    /// Of which user space, % of one core (the rest is the kernel's socket work).
    pub client_user_pct: f64,
    /// Server CPU seconds (when `--server-pid` was given; summed over the servers).
    pub server_secs: Option<f64>,
    /// Server CPU, % of one core (summed over the servers).
    pub server_pct: Option<f64>,
    /// Each server process on its own.
    pub servers: Vec<ServerCpu>,
}

/// Outcome of the connect phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectPhase {
    /// Connections planned.
    pub target: u64,
    /// Connections held (joined) at the end of the phase.
    pub held: u64,
    /// Seconds until every connection joined or failed.
    pub secs: f64,
    /// Joined connections per second.
    pub rate: f64,
    /// Outcomes (failures by kind, closes by code, error frames).
    pub stats: ConnStats,
    /// CPU during the phase.
    pub cpu: Cpu,
}

/// Outcome of one publish step.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Step number.
    pub step: u32,
    /// Requested rate and window.
    pub spec: StepSpec,
    /// Messages written by the publishers.
    pub published: u64,
    /// Messages due for a publisher that was not connected.
    pub unsent: u64,
    /// Messages per second actually published.
    pub publish_rate: f64,
    /// Distinct deliveries per second over the publish window.
    pub deliveries_per_sec: f64,
    /// Expected vs. delivered; loss, duplicates, reorders.
    pub verdict: Verdict,
    /// All delivery counters (gaps, late, foreign…).
    pub counts: Deliveries,
    /// Closes and drops during the step (the server's 1013 for slow consumers).
    pub closes: BTreeMap<u16, u64>,
    /// Connections dropped without a close frame during the step.
    pub dropped: u64,
    /// Reconnections during the step: churned, reconnects, recovered, not recovered,
    /// replayed and unrecoverable messages.
    pub recovery: Recovery,
    /// CPU over the step (publish window + drain).
    pub cpu: Cpu,
    /// Every expected delivery arrived exactly once and in order, nothing unsent, no
    /// connection closed or dropped.
    pub clean: bool,
    /// Corrected p99 within `--p99-bound-ms`.
    pub within_bound: bool,
    /// `--acks`: acknowledged messages and their deliveries per receiver home.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditResult>,
    /// Sustained (what a ramp steps on): clean and within the bound.
    pub passed: bool,
    /// Corrected latency (receive − intended send).
    #[serde(skip)]
    pub corrected: Histogram<u64>,
    /// Uncorrected latency (receive − actual send).
    #[serde(skip)]
    pub uncorrected: Histogram<u64>,
    /// Corrected latency per 10 s window (summary.json shows it as `timeline`).
    #[serde(skip)]
    pub timeline: Timeline,
}

/// Outcome of the hold phase of `connect`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HoldPhase {
    /// Connections still held at the end.
    pub held_at_end: u64,
    /// CPU while holding idle connections.
    pub cpu: Cpu,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Kind of run.
    pub mode: Mode,
    /// Worker processes (1 = in-process).
    pub processes: u32,
    /// Engine threads per process.
    pub threads: u32,
    /// RLIMIT_NOFILE that decided the process count.
    pub fd_limit: u64,
    /// Connections one process was allowed to hold.
    pub conns_per_process: u64,
    /// Connect phase.
    pub connect: ConnectPhase,
    /// Memory per connection.
    pub memory: Memory,
    /// `connect` mode: the hold phase.
    pub hold: Option<HoldPhase>,
    /// Publish steps run.
    pub steps: Vec<StepResult>,
    /// Connection outcomes at the end of the run.
    pub final_stats: ConnStats,
    /// Whole run.
    pub cpu_total: Cpu,
}

/// Per-worker view kept by the coordinator.
#[derive(Default)]
struct WorkerView {
    rss_start: Option<u64>,
    stats: ConnStats,
    ready: Option<u64>,
    step_delivered: u64,
    /// A progress report arrived since the last progress line.
    fresh: bool,
    published: BTreeMap<u32, PublishReport>,
    step_done: BTreeMap<u32, WireStep>,
    done: bool,
}

/// A CPU sample: bench-client's and the server's cumulative CPU at one instant.
#[derive(Clone)]
struct CpuMark {
    at: Instant,
    client: sys::CpuTime,
    /// (pid, cumulative CPU ns) of each server process.
    servers: Vec<(u32, Option<u64>)>,
}

/// Runs the whole thing.
pub fn run(spec: &RunSpec) -> Result<RunResult, BenchError> {
    Coordinator::start(spec)?.run()
}

struct Coordinator<'a> {
    spec: &'a RunSpec,
    links: Vec<Link>,
    ups: Receiver<(u32, Up)>,
    views: Vec<WorkerView>,
    deadline: Instant,
    started: Instant,
    interval: Histogram<u64>,
    last_print: Instant,
    last_delivered: u64,
    tty: bool,
}

impl<'a> Coordinator<'a> {
    fn start(spec: &'a RunSpec) -> Result<Coordinator<'a>, BenchError> {
        let (tx, ups) = channel();
        let mut links = Vec::new();
        let exe = spec.worker_exe.as_deref();
        if spec.plan.processes > 1 && exe.is_none() {
            return Err(BenchError::Config("several worker processes need a worker executable".into()));
        }
        for p in 0..spec.plan.processes {
            links.push(Link::start(&spec.plan, p, exe, tx.clone())?);
        }
        let now = Instant::now();
        Ok(Coordinator {
            spec,
            views: (0..links.len()).map(|_| WorkerView::default()).collect(),
            links,
            ups,
            deadline: now + Duration::from_secs_f64(spec.timeout_secs),
            started: now,
            interval: new_hist(),
            last_print: now,
            last_delivered: 0,
            tty: std::io::stderr().is_terminal(),
        })
    }

    fn run(mut self) -> Result<RunResult, BenchError> {
        let result = self.phases();
        for link in &mut self.links {
            link.send(Down::Finish);
        }
        if result.is_err() {
            // Best effort: let workers close politely, then make sure they are gone.
            let _ = self.wait_until(Instant::now() + Duration::from_secs(5), |c| c.views.iter().all(|v| v.done));
        }
        for link in self.links.drain(..) {
            link.reap(Duration::from_secs(5));
        }
        if self.tty && self.spec.progress {
            eprintln!();
        }
        result
    }

    fn phases(&mut self) -> Result<RunResult, BenchError> {
        let in_process = self.links.iter().all(|l| l.pid().is_none());
        let client_rss_before_self = sys::own_rss_bytes();
        let server_rss_before = self.servers_rss();
        let start_mark = self.cpu_mark();
        self.require(self.deadline, "start", |c| c.views.iter().all(|v| v.rss_start.is_some()))?;
        let client_rss_before = if in_process {
            client_rss_before_self
        } else {
            self.views.iter().filter_map(|v| v.rss_start).sum::<u64>() + client_rss_before_self
        };
        self.require(self.deadline, "readiness", |c| c.views.iter().all(|v| v.ready.is_some()))?;
        let ready_mark = self.cpu_mark();
        let stats = self.merged_stats();
        let held = stats.held;
        let connect = ConnectPhase {
            target: self.spec.plan.connections,
            held,
            secs: ready_mark.at.duration_since(start_mark.at).as_secs_f64(),
            rate: held as f64 / ready_mark.at.duration_since(start_mark.at).as_secs_f64().max(1e-9),
            stats,
            cpu: cpu_between(&start_mark, &ready_mark),
        };
        let memory = self.memory(client_rss_before, &server_rss_before, held);
        self.log(&format!(
            "connected {held}/{} in {:.1} s; client RSS/conn {:.0} B, server RSS/conn {}",
            self.spec.plan.connections,
            connect.secs,
            memory.client_rss_per_conn,
            memory.server_rss_per_conn.map_or("n/a".into(), |b| format!("{b:.0} B"))
        ));
        let mut hold = None;
        let mut steps = Vec::new();
        match self.spec.mode {
            Mode::Connect => hold = Some(self.hold()?),
            Mode::Fanout | Mode::Ramp => {
                for (i, step) in self.spec.steps.iter().enumerate() {
                    let result = self.step(i as u32, *step)?;
                    let passed = result.passed;
                    steps.push(result);
                    if self.spec.mode == Mode::Ramp && !passed {
                        break;
                    }
                }
            }
        }
        for link in &mut self.links {
            link.send(Down::Finish);
        }
        let finish_by = (Instant::now() + Duration::from_secs(15)).min(self.deadline);
        self.wait_until(finish_by, |c| c.views.iter().all(|v| v.done))?;
        let end_mark = self.cpu_mark();
        Ok(RunResult {
            mode: self.spec.mode,
            processes: self.spec.plan.processes,
            threads: self.spec.plan.threads,
            fd_limit: self.spec.fd_limit,
            conns_per_process: self.spec.conns_per_process,
            connect,
            memory,
            hold,
            steps,
            final_stats: self.merged_stats(),
            cpu_total: cpu_between(&start_mark, &end_mark),
        })
    }

    fn memory(&self, client_rss_before: u64, servers_before: &[Option<u64>], held: u64) -> Memory {
        let client_rss_held = self.client_rss();
        let servers_held = self.servers_rss();
        let per = |before: u64, after: u64| after.saturating_sub(before) as f64 / held.max(1) as f64;
        let engine_bytes: u64 = self.views.iter().filter_map(|v| v.ready).sum();
        let plan = &self.spec.plan;
        let shares = (self.spec.server_pids.len() == plan.targets.len()).then(|| plan.per_target());
        let servers: Vec<ServerMemory> = self
            .spec
            .server_pids
            .iter()
            .enumerate()
            .map(|(i, &pid)| {
                let (before, after) =
                    (servers_before.get(i).copied().flatten(), servers_held.get(i).copied().flatten());
                let on_it =
                    shares.as_ref().and_then(|s| s.get(i)).map(|&n| held as f64 * n as f64 / plan.connections as f64);
                let rss_per_conn =
                    before.zip(after).zip(on_it).map(|((b, a), n)| a.saturating_sub(b) as f64 / n.max(1.0));
                ServerMemory { pid, rss_before: before, rss_held: after, rss_per_conn }
            })
            .collect();
        let server_rss_before = sum_known(servers_before);
        let server_rss_held = sum_known(&servers_held);
        Memory {
            client_rss_before,
            client_rss_held,
            client_rss_per_conn: per(client_rss_before, client_rss_held),
            client_conn_struct_bytes: conn_slot_bytes(),
            client_engine_bytes_per_conn: engine_bytes as f64 / held.max(1) as f64,
            server_rss_before,
            server_rss_held,
            server_rss_per_conn: server_rss_before.zip(server_rss_held).map(|(b, a)| per(b, a)),
            servers,
        }
    }

    fn hold(&mut self) -> Result<HoldPhase, BenchError> {
        let start = self.cpu_mark();
        let until = (Instant::now() + Duration::from_secs_f64(self.spec.hold_secs)).min(self.deadline);
        self.wait_until(until, |_| false)?;
        let end = self.cpu_mark();
        Ok(HoldPhase { held_at_end: self.merged_stats().held, cpu: cpu_between(&start, &end) })
    }

    fn step(&mut self, step: u32, spec: StepSpec) -> Result<StepResult, BenchError> {
        let before = self.merged_stats();
        let t0_ns = sys::now_ns() + 200_000_000;
        let schedule = Schedule {
            step,
            t0_ns,
            rate: spec.rate,
            duration_ns: (spec.duration_secs * 1e9) as u64,
            publishers: self.spec.plan.publishers,
        };
        self.log(&format!("step {step}: {} msg/s for {} s", spec.rate, spec.duration_secs));
        let start = self.cpu_mark();
        for link in &mut self.links {
            link.send(Down::Step(schedule));
        }
        self.require(self.deadline, "the end of publishing", |c| {
            c.views.iter().all(|v| v.published.contains_key(&step))
        })?;
        let (expected, published, unsent) = self.expected(step);
        let publish_end = Instant::now();
        let drain_until = (publish_end + Duration::from_secs_f64(self.spec.drain_secs)).min(self.deadline);
        self.wait_until(drain_until, |c| c.views.iter().map(|v| v.step_delivered).sum::<u64>() >= expected)?;
        let end = self.cpu_mark();
        for link in &mut self.links {
            link.send(Down::EndStep(step));
        }
        let done_by = (Instant::now() + Duration::from_secs(15)).min(self.deadline);
        self.require(done_by, "the step record", |c| c.views.iter().all(|v| v.step_done.contains_key(&step)))?;
        let mut record = StepRecord::default();
        for v in &mut self.views {
            if let Some(w) = v.step_done.remove(&step) {
                record.merge(&w.decode()?)?;
            }
        }
        let after = self.merged_stats();
        let verdict = Verdict::judge(expected, &record.counts);
        let p99_ms = record.corrected.value_at_quantile(0.99) as f64 / 1000.0;
        let mut closes = after.closes.clone();
        for (code, n) in &before.closes {
            if let Some(c) = closes.get_mut(code) {
                *c -= (*n).min(*c);
            }
        }
        closes.retain(|_, n| *n > 0);
        let dropped = after.dropped - before.dropped.min(after.dropped);
        let clean = verdict.clean() && unsent == 0 && closes.is_empty() && dropped == 0 && record.recovery.clean();
        let within_bound = p99_ms <= self.spec.p99_bound_ms;
        let passed = clean && within_bound;
        let result = StepResult {
            step,
            spec,
            published,
            unsent,
            publish_rate: published as f64 / spec.duration_secs,
            deliveries_per_sec: verdict.delivered as f64 / spec.duration_secs,
            verdict,
            counts: record.counts,
            closes,
            dropped,
            recovery: record.recovery,
            cpu: cpu_between(&start, &end),
            clean,
            within_bound,
            audit: self.spec.plan.acks.then(|| record.audit.result(|p| self.spec.plan.home_of(u64::from(p)))),
            passed,
            corrected: record.corrected,
            uncorrected: record.uncorrected,
            timeline: record.timeline,
        };
        let rec = &result.recovery;
        self.log(&format!(
            "step {step}: published {} ({:.0}/s), delivered {}/{} expected, lost {}, dup {}, reordered {}, \
             reconnects {} (recovered {}, not {}, replayed {}), p99 {:.2} ms -> {}",
            published,
            result.publish_rate,
            verdict.delivered,
            expected,
            verdict.lost,
            verdict.duplicates,
            verdict.reordered,
            rec.reconnects,
            rec.recovered,
            rec.not_recovered,
            rec.replayed,
            p99_ms,
            verdict_words(clean, within_bound, self.spec.p99_bound_ms)
        ));
        if let Some(a) = &result.audit {
            self.log(&audit_line(step, a));
        }
        Ok(result)
    }

    /// Σ over rooms of members × messages published, and the totals published and unsent.
    fn expected(&self, step: u32) -> (u64, u64, u64) {
        let mut members: BTreeMap<u32, u64> = BTreeMap::new();
        let mut published: BTreeMap<u32, u64> = BTreeMap::new();
        let mut unsent = 0;
        for v in &self.views {
            if let Some(report) = v.published.get(&step) {
                report.members.iter().for_each(|(r, n)| *members.entry(*r).or_default() += u64::from(*n));
                report.published.iter().for_each(|(r, n)| *published.entry(*r).or_default() += n);
                unsent += report.unsent;
            }
        }
        let expected = published.iter().map(|(r, n)| n * members.get(r).copied().unwrap_or(0)).sum();
        (expected, published.values().sum(), unsent)
    }

    /// Like [`wait_until`](Self::wait_until), but failing when `done` still does not hold at `until`.
    fn require(&mut self, until: Instant, what: &str, done: impl Fn(&Self) -> bool) -> Result<(), BenchError> {
        self.wait_until(until, &done)?;
        if done(self) {
            Ok(())
        } else {
            Err(BenchError::Worker(format!("workers did not report {what} in time")))
        }
    }

    /// Processes reports (and prints progress) until `done(self)` holds or `until` passes.
    /// Errors: `Timeout` at the run's hard deadline, `Worker` when a worker fails.
    fn wait_until(&mut self, until: Instant, done: impl Fn(&Self) -> bool) -> Result<(), BenchError> {
        loop {
            if done(self) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Err(BenchError::Timeout(self.spec.timeout_secs as u64));
            }
            if now >= until {
                return Ok(());
            }
            let wait = until.saturating_duration_since(now).clamp(Duration::from_millis(1), Duration::from_millis(100));
            match self.ups.recv_timeout(wait) {
                Ok((p, up)) => self.on_up(p as usize, up)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(BenchError::Worker("all workers are gone".into())),
            }
            self.print_progress();
        }
    }

    fn on_up(&mut self, p: usize, up: Up) -> Result<(), BenchError> {
        let Some(v) = self.views.get_mut(p) else { return Ok(()) };
        match up {
            Up::Started { rss_bytes } => v.rss_start = Some(rss_bytes),
            Up::Progress { stats, step_delivered, interval } => {
                v.fresh = true;
                v.stats = stats;
                v.step_delivered = step_delivered;
                merge_into(&mut self.interval, &interval.decode()?)?;
            }
            Up::Ready { stats, conn_bytes } => {
                v.stats = stats;
                v.ready = Some(conn_bytes);
            }
            Up::Published { step, report } => {
                v.published.insert(step, report);
            }
            Up::StepDone { step, record } => {
                v.step_delivered = 0;
                v.step_done.insert(step, record);
            }
            Up::Done { stats } => {
                v.stats = stats;
                v.done = true;
            }
            Up::Failed(message) => return Err(BenchError::Worker(format!("worker {p}: {message}"))),
        }
        Ok(())
    }

    /// Prints the progress line once every worker has reported since the last one (so a
    /// line never sees half a second's reports), or every 2 s regardless.
    fn print_progress(&mut self) {
        let all_fresh = self.views.iter().all(|v| v.fresh || v.done);
        let due = self.last_print.elapsed();
        if due < Duration::from_millis(500) || (!all_fresh && due < Duration::from_secs(2)) {
            return;
        }
        self.views.iter_mut().for_each(|v| v.fresh = false);
        let secs = self.last_print.elapsed().as_secs_f64();
        self.last_print = Instant::now();
        let stats = self.merged_stats();
        let delivered: u64 = self.views.iter().map(|v| v.step_delivered).sum();
        let rate = delivered.saturating_sub(self.last_delivered) as f64 / secs;
        self.last_delivered = delivered;
        let p99 = if self.interval.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2} ms", self.interval.value_at_quantile(0.99) as f64 / 1000.0)
        };
        self.interval.reset();
        let closes: u64 = stats.closes.values().sum();
        let line = format!(
            "[{:6.1}s] conns {}/{} held, {} failed, {} closed, {} reconnects | {:.0} deliveries/s | p99(1s) {}",
            self.started.elapsed().as_secs_f64(),
            stats.held,
            self.spec.plan.connections,
            stats.failed_total(),
            closes + stats.dropped,
            stats.recovery.reconnects,
            rate,
            p99
        );
        if self.spec.progress {
            if self.tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
    }

    fn log(&self, message: &str) {
        if self.spec.progress {
            if self.tty {
                eprint!("\r\x1b[2K");
            }
            eprintln!("bench-client: {message}");
        }
    }

    fn merged_stats(&self) -> ConnStats {
        let mut all = ConnStats::default();
        self.views.iter().for_each(|v| all.merge(&v.stats));
        all
    }

    fn client_rss(&self) -> u64 {
        sys::own_rss_bytes() + self.links.iter().filter_map(Link::pid).filter_map(sys::process_rss_bytes).sum::<u64>()
    }

    /// RSS of each server process (same order as `server_pids`).
    fn servers_rss(&self) -> Vec<Option<u64>> {
        self.spec.server_pids.iter().map(|&pid| sys::process_rss_bytes(pid)).collect()
    }

    fn cpu_mark(&self) -> CpuMark {
        let children =
            self.links.iter().filter_map(Link::pid).filter_map(sys::process_cpu).fold(sys::own_cpu(), |a, b| a + b);
        let servers = self.spec.server_pids.iter().map(|&pid| (pid, sys::process_cpu_ns(pid))).collect();
        CpuMark { at: Instant::now(), client: children, servers }
    }
}

/// The log line of a step's `--acks` audit: acknowledged messages, what their receivers
/// lost, and which homes lost it (at most 8 named).
pub fn audit_line(step: u32, a: &AuditResult) -> String {
    let troubled: Vec<String> = a
        .troubled()
        .take(8)
        .map(|h| {
            format!(
                "home {} lost {} of {} (excess {}, unacknowledged {})",
                h.home, h.lost, h.expected, h.excess, h.unacked
            )
        })
        .collect();
    let clean_homes = a.homes.len() - a.troubled().count();
    format!(
        "step {step}: acks: {} of {} messages acknowledged ({} unacknowledged, {} deliveries of them; \
         {} queued and {} sent after a reconnection, {} retried after an ack timeout); \
         acknowledged deliveries {}/{} expected, lost {}, excess {}; {} of {} homes clean{}{}",
        a.acked,
        a.published,
        a.unacked,
        a.unacked_deliveries,
        a.queued,
        a.resent,
        a.retried,
        a.delivered,
        a.expected,
        a.lost,
        a.excess,
        clean_homes,
        a.homes.len(),
        if troubled.is_empty() { "" } else { ": " },
        troubled.join(", ")
    )
}

/// A step's verdict in words: correctness first, then the latency bound.
pub fn verdict_words(clean: bool, within_bound: bool, bound_ms: f64) -> String {
    match (clean, within_bound) {
        (true, true) => format!("clean, p99 within {bound_ms} ms"),
        (true, false) => format!("clean, p99 over {bound_ms} ms"),
        (false, _) => "NOT CLEAN (see loss/dup/reorder/closes)".to_owned(),
    }
}

fn cpu_between(a: &CpuMark, b: &CpuMark) -> Cpu {
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let client = b.client.total_ns().saturating_sub(a.client.total_ns()) as f64 / 1e9;
    let user = b.client.user_ns.saturating_sub(a.client.user_ns) as f64 / 1e9;
    let servers: Vec<ServerCpu> = a
        .servers
        .iter()
        .zip(&b.servers)
        .map(|(&(pid, x), &(_, y))| {
            let secs = x.zip(y).map(|(x, y)| y.saturating_sub(x) as f64 / 1e9);
            ServerCpu { pid, secs, pct: secs.map(|s| s / wall * 100.0) }
        })
        .collect();
    let known: Vec<f64> = servers.iter().filter_map(|s| s.secs).collect();
    let server = (!known.is_empty()).then(|| known.iter().sum::<f64>());
    Cpu {
        wall_secs: wall,
        client_secs: client,
        client_pct: client / wall * 100.0,
        client_user_pct: user / wall * 100.0,
        server_secs: server,
        server_pct: server.map(|s| s / wall * 100.0),
        servers,
    }
}

/// The sum of the values that are known; `None` when none is.
fn sum_known(values: &[Option<u64>]) -> Option<u64> {
    values.iter().flatten().copied().reduce(|a, b| a + b)
}
