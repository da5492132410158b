//! The run folder `results/<date>-<host>-<scenario>/`: `summary.json`, `latency.hgrm` and
//! `latency-uncorrected.hgrm` (HdrHistogram's percentile-distribution text format),
//! `latency.svg`, and `SETUP.md` (host, tuning, commit, exact command).
//!
//! The report side of bench-client: it reads the load engine's results
//! ([`crate::coord::RunResult`]) and writes files; the engine (`coord`, `worker`, `engine`,
//! `conn`, `record`, …) never imports it, so measuring does not depend on presenting
//! (`bench/check-deps.sh` checks that).
//!
//! | module | concern |
//! |---|---|
//! | this one | run folder, summary.json, SETUP.md, problems, dates |
//! | [`hgrm`] | HdrHistogram percentile-distribution text (`.hgrm`) |
//! | [`plot`] | the latency-by-percentile SVG |

pub mod hgrm;
pub mod plot;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use hdrhistogram::Histogram;
use plotters::style::{BLUE, RED};
use serde::Serialize;

use crate::coord::{Mode, RunResult, StepResult};
use crate::error::BenchError;
use crate::plan::Plan;
use crate::record::Timeline;
use crate::sys::HostInfo;
pub use hgrm::hgrm;
use plot::{latency_svg, Curve};

/// Where and how a run was made: what SETUP.md and summary.json describe besides results.
#[derive(Debug, Clone, Serialize)]
pub struct RunContext {
    /// Scenario name (folder suffix).
    pub scenario: String,
    /// The exact command line.
    pub command: String,
    /// Start time, UTC, ISO 8601.
    pub started_utc: String,
    /// The host.
    pub host: HostInfo,
    /// `git rev-parse HEAD` of the repository, with a note when the tree is dirty.
    pub git_commit: String,
    /// Output of `tuning/check` (or why there is none).
    pub tuning: String,
    /// The server under test, when bench-client started it: command line.
    pub server_command: Option<String>,
    /// Scenario file text, when the run came from one.
    pub scenario_toml: Option<String>,
}

impl RunContext {
    /// Gathers the context of a run about to start.
    pub fn gather(scenario: &str, command: String, scenario_toml: Option<String>) -> RunContext {
        RunContext {
            scenario: scenario.to_owned(),
            command,
            started_utc: utc_now().0,
            host: HostInfo::read(),
            git_commit: git_commit(),
            tuning: tuning_check(),
            server_command: None,
            scenario_toml,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p99_9: f64,
    /// 99.99th.
    pub p99_99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a microsecond histogram, in milliseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            p99_99: ms(h.value_at_quantile(0.9999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Serialize)]
struct StepSummary<'a> {
    #[serde(flatten)]
    result: &'a StepResult,
    latency_ms: Percentiles,
    uncorrected_latency_ms: Percentiles,
    /// Corrected latency per 10 s of intended send time.
    timeline: Vec<WindowSummary>,
}

/// One window of a step's timeline as summary.json shows it.
#[derive(Debug, Serialize, PartialEq)]
pub struct WindowSummary {
    /// Seconds from the step's first window to this one's start.
    pub at_s: f64,
    /// Deliveries timed in the window.
    pub deliveries: u64,
    /// Of those, over 1 ms, 5 ms, 10 ms and 50 ms (corrected).
    pub over_1ms: u64,
    /// Over 5 ms.
    pub over_5ms: u64,
    /// Over 10 ms.
    pub over_10ms: u64,
    /// Over 50 ms.
    pub over_50ms: u64,
    /// The window's slowest delivery.
    pub max_ms: f64,
}

impl WindowSummary {
    /// A step's timeline, with times relative to its first window.
    pub fn of(t: &Timeline) -> Vec<WindowSummary> {
        let first = t.0.first().map_or(0, |w| w.start_ns);
        t.0.iter()
            .map(|w| WindowSummary {
                at_s: (w.start_ns - first) as f64 / 1e9,
                deliveries: w.deliveries,
                over_1ms: w.over[0],
                over_5ms: w.over[1],
                over_10ms: w.over[2],
                over_50ms: w.over[3],
                max_ms: w.max_us as f64 / 1000.0,
            })
            .collect()
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    context: &'a RunContext,
    plan: &'a Plan,
    #[serde(flatten)]
    result: &'a RunResult,
    steps: Vec<StepSummary<'a>>,
    /// Ramp: the highest rate that passed (clean, p99 within bound).
    max_sustained_rate: Option<f64>,
    /// Step whose histograms are in latency.hgrm / latency.svg.
    headline_step: Option<u32>,
    /// Everything delivered exactly once, no closes, no failures.
    ok: bool,
    problems: Vec<String>,
}

/// The folder name `<date>-<host>-<scenario>` under `root`.
pub fn run_dir(root: &Path, host: &str, scenario: &str) -> PathBuf {
    root.join(format!("{}-{}-{}", utc_now().1, sanitize(host), sanitize(scenario)))
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The step shown in latency.hgrm/svg: the only one, or for a ramp the highest that passed
/// (else the last).
pub fn headline_step(result: &RunResult) -> Option<&StepResult> {
    match result.mode {
        Mode::Connect => None,
        Mode::Fanout => result.steps.first(),
        Mode::Ramp => result.steps.iter().rev().find(|s| s.passed).or(result.steps.last()),
    }
}

/// What went wrong in a run, in words; empty when nothing did.
pub fn problems(plan: &Plan, result: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    if result.connect.held < plan.connections {
        out.push(format!(
            "only {} of {} connections held: {:?}",
            result.connect.held, plan.connections, result.connect.stats.failed
        ));
    }
    if !result.final_stats.closes.is_empty() || result.final_stats.dropped > 0 {
        out.push(format!("server closes {:?}, dropped {}", result.final_stats.closes, result.final_stats.dropped));
    }
    let ages = &result.final_stats.heartbeat_closes;
    if !ages.is_empty() {
        out.push(format!(
            "1001 closes by the age of the socket's last ping (s, rounded up to a power of two) {:?}, never pinged {}, client bytes unsent {}",
            ages.by_age_s, ages.never, ages.unsent
        ));
    }
    if !result.final_stats.errors.is_empty() {
        out.push(format!("error frames {:?}", result.final_stats.errors));
    }
    let rec = &result.final_stats.recovery;
    if !rec.clean() {
        out.push(format!(
            "reconnections not recovered {} ({} messages unrecoverable), gave up {}",
            rec.not_recovered, rec.unrecoverable, rec.gave_up
        ));
    }
    for s in &result.steps {
        let v = &s.verdict;
        if !v.clean() || s.unsent > 0 {
            out.push(format!(
                "step {}: lost {}, excess {}, duplicates {}, reordered {}, unsent {}",
                s.step, v.lost, v.excess, v.duplicates, v.reordered, s.unsent
            ));
        }
    }
    out
}

/// Writes the run folder and returns its path.
pub fn write_run(dir: &Path, ctx: &RunContext, plan: &Plan, result: &RunResult) -> Result<PathBuf, BenchError> {
    std::fs::create_dir_all(dir)?;
    let headline = headline_step(result);
    let mut problems = problems(plan, result);
    if result.mode == Mode::Ramp && !result.steps.iter().any(|s| s.passed) {
        problems.push("ramp: no step passed".into());
    }
    let summary = Summary {
        context: ctx,
        plan,
        result,
        steps: result
            .steps
            .iter()
            .map(|s| StepSummary {
                result: s,
                latency_ms: Percentiles::of(&s.corrected),
                uncorrected_latency_ms: Percentiles::of(&s.uncorrected),
                timeline: WindowSummary::of(&s.timeline),
            })
            .collect(),
        max_sustained_rate: (result.mode == Mode::Ramp)
            .then(|| result.steps.iter().filter(|s| s.passed).map(|s| s.spec.rate).fold(0.0, f64::max)),
        headline_step: headline.map(|s| s.step),
        ok: problems.is_empty(),
        problems,
    };
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    if let Some(step) = headline {
        std::fs::write(dir.join("latency.hgrm"), hgrm(&step.corrected, 1000.0))?;
        std::fs::write(dir.join("latency-uncorrected.hgrm"), hgrm(&step.uncorrected, 1000.0))?;
        let title = format!("{}: {:.0} msg/s, {} connections", ctx.scenario, step.spec.rate, result.connect.held);
        let curves = [
            Curve { label: "corrected (from intended send time)", hist: &step.corrected, color: RED },
            Curve { label: "uncorrected (from actual send time)", hist: &step.uncorrected, color: BLUE },
        ];
        latency_svg(&dir.join("latency.svg"), &title, &curves)?;
    }
    if result.mode == Mode::Ramp {
        for s in &result.steps {
            std::fs::write(dir.join(format!("latency-step{}.hgrm", s.step)), hgrm(&s.corrected, 1000.0))?;
        }
    }
    std::fs::write(dir.join("SETUP.md"), setup_md(ctx, plan, result))?;
    Ok(dir.to_owned())
}

fn setup_md(ctx: &RunContext, plan: &Plan, result: &RunResult) -> String {
    let h = &ctx.host;
    let mut s = String::new();
    let _ = writeln!(s, "# Run setup: {}\n", ctx.scenario);
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| date (UTC) | {} |", ctx.started_utc);
    let _ = writeln!(s, "| host | {} |", h.hostname);
    let _ = writeln!(s, "| CPU | {} |", h.cpu_model);
    let _ = writeln!(s, "| cores | {} (shared by the server and bench-client) |", h.cores);
    let _ = writeln!(s, "| kernel | {} |", h.kernel);
    let _ = writeln!(s, "| memory | {:.1} GiB |", h.memory_bytes as f64 / (1u64 << 30) as f64);
    let _ = writeln!(s, "| git commit | {} |", ctx.git_commit);
    let _ = writeln!(
        s,
        "| bench-client | {} process(es) × {} engine thread(s); RLIMIT_NOFILE {} → at most {} connections per process |",
        result.processes, result.threads, result.fd_limit, result.conns_per_process
    );
    let targets: Vec<String> = plan.targets.iter().map(|t| format!("ws://{t}/ws")).collect();
    let _ = writeln!(s, "| target{} | {} |", if targets.len() > 1 { "s" } else { "" }, targets.join(", "));
    if plan.churn_per_sec > 0.0 || plan.reconnect_attempts != 5 {
        let _ = writeln!(
            s,
            "| reconnects | up to {} attempts with recovery; churn {} conns/s |",
            plan.reconnect_attempts, plan.churn_per_sec
        );
    }
    let _ = writeln!(s, "\n## Command\n\n```sh\n{}\n```", ctx.command);
    if let Some(server) = &ctx.server_command {
        let _ = writeln!(s, "\nServer, started by `bench-client suite`:\n\n```sh\n{server}\n```");
    }
    if let Some(toml) = &ctx.scenario_toml {
        let _ = writeln!(s, "\n## Scenario\n\n```toml\n{}\n```", toml.trim_end());
    }
    let _ = writeln!(s, "\n## Host tuning (`tuning/check`)\n\n```\n{}\n```", ctx.tuning.trim_end());
    s
}

/// Trimmed stdout of `git <args>`, when it ran and succeeded.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn git_commit() -> String {
    match git(&["rev-parse", "HEAD"]) {
        Some(sha) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{sha} (with uncommitted changes)")
            } else {
                sha
            }
        }
        None => "unknown (not in a git repository)".into(),
    }
}

/// Runs `tuning/check` from the repository root, if the repository has it.
fn tuning_check() -> String {
    let root = git(&["rev-parse", "--show-toplevel"]).map_or_else(|| PathBuf::from("."), PathBuf::from);
    let check = root.join("tuning/check");
    if !check.is_file() {
        return "tuning/check not found".into();
    }
    match Command::new(&check).current_dir(&root).output() {
        Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!("tuning/check could not run: {e}"),
    }
}

/// (ISO 8601 UTC time, compact `YYYYMMDD-HHMMSS` stamp) for now.
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    (format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"), format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}"))
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn folder_names_are_safe() {
        let d = run_dir(Path::new("results"), "my host", "one/room");
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with("-my_host-one_room"), "{name}");
    }
}
