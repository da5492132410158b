//! Errors of starting and running a server.

use std::net::SocketAddr;

/// Why the server could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A shard's executor could not be created (often RLIMIT_MEMLOCK below what io_uring
    /// needs, or a CPU that does not exist); see `tuning/check`.
    #[error("cannot start shard {shard}: {source}")]
    Shard {
        /// Shard index.
        shard: usize,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The JWT key could not be loaded.
    #[error(transparent)]
    Auth(crate::auth::JwtError),
    /// A shard thread panicked; the message is logged.
    #[error("shard {0} stopped abnormally")]
    ShardFailed(usize),
    /// The cluster bridge could not start (bad NATS URL or credentials, no thread).
    #[error(transparent)]
    Cluster(crate::cluster::ClusterError),
    /// The `--data-dir` log could not be read or rewritten at start.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The application backend's thread could not start.
    #[error("cannot start the application backend client: {0}")]
    Backend(std::io::Error),
    /// The cluster bridge thread panicked.
    #[error("the cluster bridge stopped abnormally")]
    BridgeFailed,
}
