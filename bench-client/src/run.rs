//! One run end to end: the coordinator, then the run folder, then a short console summary.

use std::path::PathBuf;

use crate::cli::Prepared;
use crate::coord::{self, RunResult};
use crate::error::BenchError;
use crate::report::{self, headline_step, Percentiles, RunContext};

/// What a finished run left behind.
pub struct Outcome {
    /// The run folder.
    pub dir: PathBuf,
    /// The measurements.
    pub result: RunResult,
    /// Problems found (loss, duplicates, failures…); empty when clean.
    pub problems: Vec<String>,
}

/// Runs `prepared`, writes its folder, prints the summary on stdout.
pub fn execute(prepared: &Prepared, ctx: &RunContext) -> Result<Outcome, BenchError> {
    let result = coord::run(&prepared.spec)?;
    let dir = report::run_dir(&prepared.results, &ctx.host.hostname, &prepared.scenario);
    let dir = report::write_run(&dir, ctx, &prepared.spec.plan, &result)?;
    let problems = report::problems(&prepared.spec.plan, &result);
    print_summary(&prepared.scenario, &result, &problems, prepared.spec.p99_bound_ms);
    println!("run folder: {}", dir.display());
    Ok(Outcome { dir, result, problems })
}

fn print_summary(scenario: &str, r: &RunResult, problems: &[String], p99_bound_ms: f64) {
    let m = &r.memory;
    println!("== {scenario} ({:?}, {} process(es) × {} thread(s))", r.mode, r.processes, r.threads);
    println!(
        "connections: {}/{} held, connected in {:.1} s ({:.0}/s), failures {:?}",
        r.connect.held, r.connect.target, r.connect.secs, r.connect.rate, r.connect.stats.failed
    );
    println!(
        "memory: client {:.0} B/conn RSS ({} B struct), server {} RSS/conn",
        m.client_rss_per_conn,
        m.client_conn_struct_bytes,
        m.server_rss_per_conn.map_or("n/a".into(), |b| format!("{b:.0} B"))
    );
    if let Some(h) = &r.hold {
        println!(
            "hold: {} held at end; CPU client {:.1}%, server {}",
            h.held_at_end,
            h.cpu.client_pct,
            h.cpu.server_pct.map_or("n/a".into(), |p| format!("{p:.1}%"))
        );
    }
    for s in &r.steps {
        let p = Percentiles::of(&s.corrected);
        let rec = &s.recovery;
        if rec.reconnects + rec.churned > 0 {
            println!(
                "step {} reconnections: churned {}, reconnects {} ({} failed attempts, {} gave up), recovered {}, \
                 not recovered {} ({} messages unrecoverable), replayed {} messages",
                s.step,
                rec.churned,
                rec.reconnects,
                rec.failed_attempts,
                rec.gave_up,
                rec.recovered,
                rec.not_recovered,
                rec.unrecoverable,
                rec.replayed
            );
        }
        println!(
            "step {}: {} msg/s target, {} published/s, {:.0} deliveries/s, lost {} dup {} reorder {} | \
             p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} p99.99 {:.2} max {:.2} ms | CPU client {:.0}% ({:.0}% user) server {} | {}",
            s.step,
            rate(s.spec.rate),
            rate(s.publish_rate),
            s.deliveries_per_sec,
            s.verdict.lost,
            s.verdict.duplicates,
            s.verdict.reordered,
            p.p50,
            p.p90,
            p.p99,
            p.p99_9,
            p.p99_99,
            p.max,
            s.cpu.client_pct,
            s.cpu.client_user_pct,
            s.cpu.server_pct.map_or("n/a".into(), |p| format!("{p:.0}%")),
            coord::verdict_words(s.clean, s.within_bound, p99_bound_ms)
        );
        if let Some(a) = &s.audit {
            println!("{}", coord::audit_line(s.step, a));
        }
    }
    let rec = &r.final_stats.recovery;
    println!(
        "reconnections (whole run): reconnects {}, recovered {}, not recovered {}, replayed {}, churned {}, gave up {}",
        rec.reconnects, rec.recovered, rec.not_recovered, rec.replayed, rec.churned, rec.gave_up
    );
    if let Some(h) = headline_step(r) {
        println!("headline step: {}", h.step);
    }
    if r.mode == coord::Mode::Ramp {
        match r.steps.iter().filter(|s| s.passed).map(|s| s.spec.rate).reduce(f64::max) {
            Some(r) => println!("max sustained rate: {} msg/s (clean, p99 ≤ {p99_bound_ms} ms)", rate(r)),
            None => println!("max sustained rate: none (no step was clean with p99 ≤ {p99_bound_ms} ms)"),
        }
    }
    for p in problems {
        println!("PROBLEM: {p}");
    }
}

/// A message rate as printed: whole numbers from 10 msg/s up, three significant digits
/// below (a room of a million sustains a fraction of a message per second on a small host).
fn rate(r: f64) -> String {
    if r >= 10.0 || r == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}
