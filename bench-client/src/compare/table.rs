//! Turns the runs of a comparison into rows: one per target of issue 16, with corecast's
//! figure, the ceiling probe's and the tokio peer's, corecast ÷ the better of the two
//! (the "best": the higher throughput, the lower latency, CPU or memory), pass/miss
//! against the issue's threshold, and how hard bench-client and each server worked in the
//! step a figure comes from (a row whose client was the busier side measures the client,
//! not the server). Writes `compare.md` and `compare.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::coord::{RunResult, StepResult};
use crate::error::BenchError;
use crate::report::Percentiles;

/// Which server a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// The corecast server under test.
    Corecast,
    /// The ceiling probe (`corecast-ceiling`).
    Ceiling,
    /// The mainstream peer (`corecast-tokio-peer`: tokio + tokio-tungstenite).
    Tokio,
}

impl ServerKind {
    /// Every server, in run order.
    pub const ALL: [ServerKind; 3] = [ServerKind::Corecast, ServerKind::Ceiling, ServerKind::Tokio];

    /// Lower-case name (run-folder suffix).
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Corecast => "corecast",
            ServerKind::Ceiling => "ceiling",
            ServerKind::Tokio => "tokio",
        }
    }
}

/// What one shape gave against one server: its run(s) and the measurements.
#[derive(Debug, Clone, Default)]
pub struct ShapeRuns {
    /// Run folders (coarse, then fine ramp).
    pub dirs: Vec<PathBuf>,
    /// The (first) run's result.
    pub main: Option<RunResult>,
    /// The fine ramp's result, when one ran.
    pub fine: Option<RunResult>,
    /// Why a run could not be made, if one could not.
    pub error: Option<String>,
}

/// All runs, by (shape name, server).
pub type Runs = BTreeMap<(String, ServerKind), ShapeRuns>;

/// How bench-client and the server fared in the run a figure comes from.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ClientUse {
    /// bench-client CPU, % of one core (all its threads and processes).
    pub cpu_pct: f64,
    /// Server CPU, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// bench-client CPU per delivery, µs.
    pub us_per_delivery: Option<f64>,
    /// Server CPU per delivery, µs.
    pub server_us_per_delivery: Option<f64>,
    /// The client used more than 90 % of a core or more than the server: the figure
    /// may be the client's limit, not the server's.
    pub client_bound: bool,
}

impl ClientUse {
    fn of(step: &StepResult) -> ClientUse {
        let c = &step.cpu;
        let delivered = step.verdict.delivered;
        ClientUse {
            cpu_pct: c.client_pct,
            server_cpu_pct: c.server_pct,
            us_per_delivery: (delivered > 0).then(|| c.client_secs * 1e6 / delivered as f64),
            server_us_per_delivery: c.server_secs.filter(|_| delivered > 0).map(|s| s * 1e6 / delivered as f64),
            client_bound: c.client_pct > 90.0 || c.server_pct.is_some_and(|s| c.client_pct > s),
        }
    }
}

/// pass/miss against the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Judgement {
    /// corecast meets the threshold.
    Pass,
    /// It does not.
    Miss,
    /// No figure (a run failed) or no threshold.
    #[serde(rename = "n/a")]
    NotApplicable,
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One target.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What is measured.
    pub target: String,
    /// Unit of the figures.
    pub unit: &'static str,
    /// corecast's figure.
    pub corecast: Option<f64>,
    /// The ceiling probe's figure.
    pub ceiling: Option<f64>,
    /// The tokio peer's figure.
    pub tokio: Option<f64>,
    /// Which of the ceiling probe and the tokio peer did better (the reference).
    pub best: Option<ServerKind>,
    /// corecast ÷ the better of the ceiling probe and the tokio peer.
    pub ratio: Option<f64>,
    /// The issue's threshold, in words.
    pub threshold: &'static str,
    /// corecast against the threshold.
    pub judgement: Judgement,
    /// bench-client and corecast in the corecast run (for a ramp: the first failing
    /// step, where the limit was hit, else the best step).
    pub client_corecast: Option<ClientUse>,
    /// bench-client and the probe in the ceiling run.
    pub client_ceiling: Option<ClientUse>,
    /// bench-client and the peer in the tokio run.
    pub client_tokio: Option<ClientUse>,
    /// Run folders (corecast's, the ceiling's, the tokio peer's).
    pub runs: Vec<String>,
    /// Anything the figures need to be read with.
    pub note: String,
}

fn best_step(r: &RunResult) -> Option<&StepResult> {
    r.steps.iter().filter(|s| s.passed).max_by(|a, b| a.spec.rate.total_cmp(&b.spec.rate))
}

/// Highest clean deliveries/s over a coarse and a fine ramp, and the client use where the
/// limit was hit.
fn max_sustained(s: &ShapeRuns) -> (Option<f64>, Option<ClientUse>) {
    let runs = [s.main.as_ref(), s.fine.as_ref()];
    let best = runs.iter().flatten().filter_map(|r| best_step(r)).map(|st| st.deliveries_per_sec).reduce(f64::max);
    // Where the ramp stopped: the fine ramp's failing step, else the coarse one's.
    let limit = runs
        .iter()
        .rev()
        .flatten()
        .find_map(|r| r.steps.iter().find(|st| !st.passed))
        .or_else(|| runs.iter().flatten().find_map(|r| best_step(r)));
    (best, limit.map(ClientUse::of))
}

fn fanout_step(s: &ShapeRuns) -> Option<&StepResult> {
    s.main.as_ref()?.steps.first()
}

fn p99_ms(s: &ShapeRuns) -> Option<f64> {
    let st = fanout_step(s)?;
    st.clean.then(|| Percentiles::of(&st.corrected).p99)
}

fn server_us_per_delivery(s: &ShapeRuns) -> Option<f64> {
    let st = fanout_step(s)?;
    let delivered = st.verdict.delivered;
    (st.clean && delivered > 0).then(|| st.cpu.server_secs.unwrap_or(0.0) * 1e6 / delivered as f64)
}

/// The reference: the better of the ceiling probe's and the tokio peer's figures.
fn reference(ceiling: Option<f64>, tokio: Option<f64>, better: Better) -> Option<(f64, ServerKind)> {
    let candidates = [(ceiling, ServerKind::Ceiling), (tokio, ServerKind::Tokio)];
    candidates.into_iter().filter_map(|(v, k)| v.map(|v| (v, k))).reduce(|a, b| {
        let b_wins = match better {
            Better::Higher => b.0 > a.0,
            Better::Lower => b.0 < a.0,
        };
        if b_wins {
            b
        } else {
            a
        }
    })
}

/// Figures of one shape per server.
type Figures = [Option<f64>; 3];

/// Builds the rows from the runs (a shape that did not run gives a row without figures).
pub fn rows(runs: &Runs) -> Vec<Row> {
    let get = |shape: &str, k: ServerKind| runs.get(&(shape.to_owned(), k)).cloned().unwrap_or_default();
    let dirs = |shape: &str| -> Vec<String> {
        ServerKind::ALL
            .iter()
            .flat_map(|&k| get(shape, k).dirs)
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    };
    let errors = |shape: &str| -> String {
        ServerKind::ALL
            .iter()
            .filter_map(|&k| get(shape, k).error.map(|e| format!("{}: {e}", k.name())))
            .collect::<Vec<_>>()
            .join("; ")
    };
    // A row judged by corecast ÷ the best (`limit` on the ratio) or, with `absolute`, by
    // corecast's own figure against `limit`.
    let row = |target: &str, unit, shape: &str, figs: Figures, better: Better, threshold, limit: Option<f64>| {
        let best = reference(figs[1], figs[2], better);
        let ratio = figs[0].zip(best).filter(|(_, (b, _))| *b > 0.0).map(|(c, (b, _))| c / b);
        let judgement = match (ratio, limit) {
            (Some(r), Some(l)) => judge(Some(if better == Better::Higher { r >= l } else { r <= l })),
            _ => Judgement::NotApplicable,
        };
        let client = |k| fanout_step(&get(shape, k)).map(ClientUse::of);
        Row {
            target: target.to_owned(),
            unit,
            corecast: figs[0],
            ceiling: figs[1],
            tokio: figs[2],
            best: best.map(|(_, k)| k),
            ratio,
            threshold,
            judgement,
            client_corecast: client(ServerKind::Corecast),
            client_ceiling: client(ServerKind::Ceiling),
            client_tokio: client(ServerKind::Tokio),
            runs: dirs(shape),
            note: errors(shape),
        }
    };
    let each =
        |f: &dyn Fn(&ShapeRuns) -> Option<f64>, shape: &str| -> Figures { ServerKind::ALL.map(|k| f(&get(shape, k))) };
    let mut out = Vec::new();

    // (5) idle memory: corecast's own figure against 1,024 B.
    let idle = |s: &ShapeRuns| s.main.as_ref().and_then(|r| r.memory.server_rss_per_conn);
    let figs = each(&idle, "idle-15k");
    let mut r = row(
        "idle RSS per connection at 15,000 idle (each in one of 100 rooms)",
        "B/conn",
        "idle-15k",
        figs,
        Better::Lower,
        "≤ 1,024 B",
        None,
    );
    r.judgement = judge(figs[0].map(|v| v <= 1024.0));
    r.client_corecast = None;
    r.client_ceiling = None;
    r.client_tokio = None;
    out.push(r);

    // (1), (3), (4) max sustained throughput.
    for (shape, target, threshold, min) in [
        ("one-room-10k", "one room of 10,000: max sustained deliveries/s", "≥ 1.0 × best", 1.0),
        ("rooms-100x100", "100 rooms × 100: max sustained deliveries/s", "≥ 0.9 × best", 0.9),
        ("rooms-1000x10", "1,000 rooms × 10: max sustained deliveries/s", "≥ 0.9 × best", 0.9),
        ("rooms-10x1000", "10 rooms × 1,000: max sustained deliveries/s", "≥ 0.9 × best", 0.9),
    ] {
        let figs = each(&|s| max_sustained(s).0, shape);
        let mut r = row(target, "deliveries/s", shape, figs, Better::Higher, threshold, Some(min));
        let limit = |k| max_sustained(&get(shape, k)).1;
        r.client_corecast = limit(ServerKind::Corecast);
        r.client_ceiling = limit(ServerKind::Ceiling);
        r.client_tokio = limit(ServerKind::Tokio);
        out.push(r);
    }

    // (1)-(4) latency and CPU per delivery at a fixed load.
    for (shape, target, threshold, max) in [
        ("latency-100x100-50k", "100 × 100 at 50,000 deliveries/s: p99", "≤ 1.2 × best", 1.2),
        ("latency-100x100-100k", "100 × 100 at 100,000 deliveries/s: p99", "≤ 1.2 × best", 1.2),
        ("latency-one-room-100k", "one room of 10,000 at 100,000 deliveries/s (10 msg/s): p99", "≤ 1.0 × best", 1.0),
        ("latency-1000x10-100k", "1,000 × 10 at 100,000 deliveries/s: p99", "≤ 1.2 × best", 1.2),
        ("latency-10x1000-100k", "10 × 1,000 at 100,000 deliveries/s: p99", "≤ 1.2 × best", 1.2),
    ] {
        out.push(row(target, "ms", shape, each(&p99_ms, shape), Better::Lower, threshold, Some(max)));
    }
    for (shape, target) in [
        ("latency-100x100-100k", "server CPU per delivery, 100 × 100 at 100,000 deliveries/s"),
        ("latency-1000x10-100k", "server CPU per delivery, 1,000 × 10 at 100,000 deliveries/s"),
        ("latency-10x1000-100k", "server CPU per delivery, 10 × 1,000 at 100,000 deliveries/s"),
    ] {
        let figs = each(&server_us_per_delivery, shape);
        out.push(row(target, "µs", shape, figs, Better::Lower, "≤ 1.1 × best", Some(1.1)));
    }

    // CPU per delivery, 1k vs 15k connections (issue 8: flat with the connection count).
    let (c1, c15) = (each(&server_us_per_delivery, "cpu-1k"), each(&server_us_per_delivery, "cpu-15k"));
    out.push(row(
        "server CPU per delivery, 1,000 conns (10 × 100, 50K/s)",
        "µs",
        "cpu-1k",
        c1,
        Better::Lower,
        "–",
        None,
    ));
    let drift = |i: usize| c15[i].zip(c1[i]).filter(|(_, a)| *a > 0.0).map(|(b, a)| b / a);
    let mut r = row(
        "server CPU per delivery, 15,000 conns (150 × 100, 50K/s)",
        "µs",
        "cpu-15k",
        c15,
        Better::Lower,
        "corecast within ±20 % of its 1,000-conn figure",
        None,
    );
    r.judgement = judge(drift(0).map(|d| (0.8..=1.2).contains(&d)));
    r.note = format!(
        "15k ÷ 1k: corecast {}, ceiling {}, tokio {}{}",
        fmt_opt(drift(0), 2),
        fmt_opt(drift(1), 2),
        fmt_opt(drift(2), 2),
        if r.note.is_empty() { String::new() } else { format!("; {}", r.note) }
    );
    out.push(r);

    // Connect + handshake + join rate (from the idle run).
    let rate = |s: &ShapeRuns| s.main.as_ref().map(|r| r.connect.rate);
    let figs = each(&rate, "idle-15k");
    let mut r = row(
        "connect + upgrade + join rate (15,000, unpaced)",
        "conns/s",
        "idle-15k",
        figs,
        Better::Higher,
        "≥ 20,000/s",
        None,
    );
    r.judgement = judge(figs[0].map(|v| v >= 20_000.0));
    r.client_corecast = None;
    r.client_ceiling = None;
    r.client_tokio = None;
    out.push(r);
    out
}

fn judge(pass: Option<bool>) -> Judgement {
    match pass {
        Some(true) => Judgement::Pass,
        Some(false) => Judgement::Miss,
        None => Judgement::NotApplicable,
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.decimals$}"))
}

fn fmt_fig(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v >= 1000.0 => group(v.round() as u64),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_client(c: &Option<ClientUse>) -> String {
    match c {
        None => "–".to_owned(),
        Some(c) => format!(
            "{:.0}% ({} µs/dlv){}; server {} µs/dlv",
            c.cpu_pct,
            fmt_opt(c.us_per_delivery, 2),
            if c.client_bound { " **client-bound**" } else { "" },
            fmt_opt(c.server_us_per_delivery, 2),
        ),
    }
}

/// What `compare.md`/`compare.json` say besides the rows.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    /// Start time, UTC.
    pub started_utc: String,
    /// Wall time of the whole comparison, seconds.
    pub duration_secs: f64,
    /// The command line.
    pub command: String,
    /// The corecast server command (as started for the first shape).
    pub corecast_command: String,
    /// The ceiling probe command.
    pub ceiling_command: String,
    /// The tokio peer command.
    pub tokio_command: String,
    /// Host description.
    pub host: String,
    /// git commit of the tree.
    pub git_commit: String,
    /// How the figures were obtained.
    pub method: Vec<String>,
}

/// Writes `compare.md` and `compare.json` into `dir`.
pub fn write(dir: &Path, header: &Header, rows: &[Row]) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir)?;
    #[derive(Serialize)]
    struct Doc<'a> {
        #[serde(flatten)]
        header: &'a Header,
        rows: &'a [Row],
    }
    std::fs::write(dir.join("compare.json"), serde_json::to_string_pretty(&Doc { header, rows })?)?;
    std::fs::write(dir.join("compare.md"), markdown(header, rows))?;
    Ok(())
}

/// The comparison as a Markdown page.
pub fn markdown(h: &Header, rows: &[Row]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# corecast vs the ceiling probe and the tokio peer\n");
    let _ = writeln!(
        md,
        "Started {} UTC, took {:.0} s. Host: {}. Commit: `{}`.\n",
        h.started_utc, h.duration_secs, h.host, h.git_commit
    );
    let _ = writeln!(md, "```sh\n{}\n```\n", h.command);
    let _ = writeln!(
        md,
        "corecast: `{}`  \nceiling: `{}`  \ntokio peer: `{}`\n",
        h.corecast_command, h.ceiling_command, h.tokio_command
    );
    let _ = writeln!(
        md,
        "| target | unit | corecast | ceiling | tokio peer | ratio (corecast ÷ best) | threshold | corecast vs threshold | \
         client CPU, server µs/dlv (corecast run) | (ceiling run) | (tokio run) | note |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let verdict = match r.judgement {
            Judgement::Pass => "**pass**",
            Judgement::Miss => "**miss**",
            Judgement::NotApplicable => "–",
        };
        let ratio = match (r.ratio, r.best) {
            (Some(x), Some(k)) => format!("{x:.2} (÷ {})", k.name()),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.unit,
            fmt_fig(r.corecast),
            fmt_fig(r.ceiling),
            fmt_fig(r.tokio),
            ratio,
            r.threshold,
            verdict,
            fmt_client(&r.client_corecast),
            fmt_client(&r.client_ceiling),
            fmt_client(&r.client_tokio),
            r.note
        );
    }
    let _ = writeln!(md, "\n## Method\n");
    for m in &h.method {
        let _ = writeln!(md, "* {m}");
    }
    let _ = writeln!(md, "\n## Run folders\n");
    for r in rows {
        let links: Vec<String> = r.runs.iter().map(|d| format!("[{d}](../{d}/)")).collect();
        if !links.is_empty() {
            let _ = writeln!(md, "* {}: {}", r.target, links.join(", "));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_rows_without_runs_have_no_figures() {
        assert_eq!(group(7_600_000), "7,600,000");
        assert_eq!(group(999), "999");
        assert_eq!(fmt_fig(Some(1.234)), "1.23");
        let rows = rows(&Runs::new());
        assert_eq!(rows.len(), 16);
        assert!(rows.iter().all(|r| r.corecast.is_none() && r.judgement == Judgement::NotApplicable));
        let md = markdown(
            &Header {
                started_utc: "t".into(),
                duration_secs: 1.0,
                command: "c".into(),
                corecast_command: "cc".into(),
                ceiling_command: "cl".into(),
                tokio_command: "tk".into(),
                host: "h".into(),
                git_commit: "g".into(),
                method: vec!["m".into()],
            },
            &rows,
        );
        assert!(md.contains("| idle RSS per connection at 15,000 idle (each in one of 100 rooms) |"));
    }

    #[test]
    fn the_reference_is_the_better_of_the_probe_and_the_peer() {
        assert_eq!(reference(Some(2.0), Some(3.0), Better::Higher), Some((3.0, ServerKind::Tokio)));
        assert_eq!(reference(Some(2.0), Some(3.0), Better::Lower), Some((2.0, ServerKind::Ceiling)));
        assert_eq!(reference(None, Some(3.0), Better::Lower), Some((3.0, ServerKind::Tokio)));
        assert_eq!(reference(None, None, Better::Higher), None);
    }
}
