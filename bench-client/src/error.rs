//! Typed errors of the bench-client library. The binary wraps them in `anyhow`.

/// Why a run could not be carried out (as opposed to a run that measured problems, which
/// is a result, reported in the summary).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An I/O error: reading a scenario, writing the run folder, a pipe to a worker.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A control message or summary could not be (de)serialized.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A worker failed or stopped answering; the message says which and why.
    #[error("worker: {0}")]
    Worker(String),
    /// The run did not finish within its hard timeout.
    #[error("run exceeded its hard timeout of {0} s")]
    Timeout(u64),
    /// A histogram could not be merged or shipped.
    #[error(transparent)]
    Hist(#[from] crate::record::HistError),
    /// A scenario or command line asks for something impossible.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The plot could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
    /// The corecast server for a suite could not be started or stopped.
    #[error("server: {0}")]
    Server(String),
}
