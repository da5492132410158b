//! `bench-client`: command line → run, scenario, suite or worker (anyhow only here).

use anyhow::{bail, Context as _};
use bench_client::cli::{Cli, Cmd};
use bench_client::report::RunContext;
use bench_client::run::execute;
use bench_client::scenario::Scenario;
use bench_client::{compare, suite, worker};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    match &cli.command {
        Cmd::Worker => worker::child_main().context("worker process"),
        Cmd::Compare(args) => {
            let c = compare::run_compare(args, &shell_line(&argv))?;
            println!("\n== comparison ({})", c.dir.join("compare.md").display());
            for r in &c.rows {
                println!(
                    "{}: corecast {} | ceiling {} | tokio {} | ratio (÷ best) {} | {:?}",
                    r.target,
                    r.corecast.map_or("-".into(), |v| format!("{v:.2}")),
                    r.ceiling.map_or("-".into(), |v| format!("{v:.2}")),
                    r.tokio.map_or("-".into(), |v| format!("{v:.2}")),
                    r.ratio.map_or("-".into(), |v| format!("{v:.2}")),
                    r.judgement
                );
            }
            Ok(())
        }
        Cmd::Ceiling(args) => {
            // The probe is its own executable; this subcommand stays as its documented
            // entry point and becomes it (exec), so signals and output are the probe's own.
            use std::os::unix::process::CommandExt as _;
            let probe = compare::probe_exe()?;
            let err = std::process::Command::new(&probe)
                .arg(format!("--listen={}", args.listen))
                .arg(format!("--threads={}", args.threads))
                .exec();
            Err(err).with_context(|| format!("starting {}", probe.display()))
        }
        Cmd::Run(run) => {
            let scenario = Scenario::load(&run.file)?;
            let mut args = vec!["bench-client".to_owned()];
            args.extend(scenario.args.iter().cloned());
            if !run.overrides.iter().any(|a| a.starts_with("--scenario")) {
                args.push(format!("--scenario={}", scenario.name));
            }
            args.extend(run.overrides.iter().cloned());
            let inner = Cli::try_parse_from(&args).with_context(|| format!("scenario {}", run.file.display()))?;
            run_mode(&inner.command, &argv, Some(scenario.text))
        }
        Cmd::Suite(args) => {
            let results = suite::run_suite(args, &shell_line(&argv))?;
            println!("\n== suite summary");
            let mut failed = 0;
            for (name, outcome) in &results {
                match outcome {
                    Ok(o) if o.problems.is_empty() => println!("{name}: ok  {}", o.dir.display()),
                    Ok(o) => println!("{name}: {} problem(s)  {}", o.problems.len(), o.dir.display()),
                    Err(e) => {
                        failed += 1;
                        println!("{name}: FAILED: {e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} scenario(s) could not run");
            }
            Ok(())
        }
        mode => run_mode(mode, &argv, None),
    }
}

fn run_mode(mode: &Cmd, argv: &[String], scenario_toml: Option<String>) -> anyhow::Result<()> {
    let prepared = mode.prepare().context("not a run mode")??;
    let ctx = RunContext::gather(&prepared.scenario, shell_line(argv), scenario_toml);
    let outcome = execute(&prepared, &ctx)?;
    let ramp_ok = outcome.result.steps.iter().any(|s| s.passed);
    let ok = match outcome.result.mode {
        bench_client::coord::Mode::Ramp => ramp_ok,
        _ => outcome.problems.is_empty(),
    };
    if !ok {
        bail!("the run found problems (see above and {})", outcome.dir.join("summary.json").display());
    }
    Ok(())
}

/// The command line as one shell-quoted string, for SETUP.md.
fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
