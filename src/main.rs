//! The `corecast` binary: CLI → Config → shards, until SIGINT/SIGTERM.

use anyhow::Context as _;
use corecast::config::{Cli, ConfigError};
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = match Cli::load() {
        Ok(cli) => cli,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    init_logging(&cli.logging.log, cli.logging.log_json)?;
    raise_nofile_limit();
    if !cli.server.allow_thp {
        if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
            tracing::warn!(error = %e, "could not disable transparent huge pages; memory per connection will be higher");
        }
    }
    let config = cli.into_config()?;
    let shards = config.effective_shards();
    let server = corecast::start(config).context("starting corecast")?;
    tracing::info!(listen = %server.local_addr(), shards, "corecast serving: ws://{}/ws", server.local_addr());

    let stopper = server.stopper();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = sig, "shutting down: closing connections (signal again to force)");
                    stopper.stop();
                } else {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })
        .context("starting the signal thread")?;

    server.join()?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Raises the soft open-file limit to the hard one: every connection is a descriptor,
/// and the soft default (often 1024) would cap the server long before the hard limit
/// does. Raising a hard limit needs privileges; see tuning/README.md.
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    let now = getrlimit(Resource::Nofile);
    tracing::info!(soft = ?now.current, hard = ?now.maximum, "open-file limit");
}

fn init_logging(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter).with_context(|| format!("invalid --log filter `{filter}`"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}
