//! Configuration: command-line flags, `CORECAST_*` environment variables and an optional
//! TOML file, merged in that order of precedence into one validated [`Config`].
//!
//! Each setting is declared once, as a field of one of the flag groups below ([`Cli`]
//! flattens them): its flag name, environment variable, default and help text live in
//! that one attribute and doc comment. [`Config::default`] is what parsing no arguments
//! gives, and [`Cli::into_config`] is the one place that validates the flags and turns
//! them into a [`Config`].
//!
//! The flag names are a contract (scripts and issues name them): add flags, don't rename.
//! A TOML file uses the same names as the long flags (`queue-bytes = 262144` or
//! `queue_bytes = 262144`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};

/// Everything a running server needs to know, validated.
///
/// Each field holds the value of the flag of the same name; `corecast --help` (or the
/// flag groups of [`Cli`]) says what it means and its default. Fields whose flag has a
/// different name or unit say so.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--shards` (0: one per allowed CPU, see [`Config::effective_shards`]).
    pub shards: usize,
    /// Pin shard `i` to the i-th allowed CPU: the opposite of `--no-pin`.
    pub pin: bool,
    /// `--ping-interval`.
    pub ping_interval: Duration,
    /// `--max-message-bytes`.
    pub max_message_bytes: usize,
    /// `--queue-bytes`.
    pub queue_bytes: usize,
    /// `--queue-frames`.
    pub queue_frames: usize,
    /// `--compression on`: permessage-deflate is negotiated with clients that offer it.
    pub compression: bool,
    /// `--compression-min-bytes`: smaller payloads are sent uncompressed.
    pub compression_min_bytes: usize,
    /// `--presence-events-max-members`.
    pub presence_events_max_members: u32,
    /// `--handshake-timeout`.
    pub handshake_timeout: Duration,
    /// `--close-timeout`.
    pub close_timeout: Duration,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Duration,
    /// `--max-request-head`.
    pub max_request_head: usize,
    /// `--max-request-body`.
    pub max_request_body: usize,
    /// `--api-key`; `None` disables `POST /api/publish`.
    pub api_key: Option<String>,
    /// `--drain-grace`.
    pub drain_grace: Duration,
    /// `--stats-rooms`.
    pub stats_rooms: usize,
    /// `--echo-endpoint`: serve the conformance echo WebSocket at `/echo`.
    pub echo_endpoint: bool,
    /// `--jwt-secret`.
    pub jwt_secret: Option<String>,
    /// `--jwt-public-key`.
    pub jwt_public_key: Option<PathBuf>,
    /// `--jwt-issuer`.
    pub jwt_issuer: Option<String>,
    /// `--jwt-audience`.
    pub jwt_audience: Option<String>,
    /// `--jwt-leeway`, seconds.
    pub jwt_leeway: u64,
    /// `--allow-guests`.
    pub allow_guests: bool,
    /// `--rate-limit` (0 turns the limit off).
    pub rate_limit: u32,
    /// `--rate-burst`, at least 1.
    pub rate_burst: u32,
    /// `--rate-limit-close-after`, at least 1.
    pub rate_limit_close_after: u32,
    /// `--max-text-bytes`.
    pub max_text_bytes: usize,
    /// `--max-data-bytes`.
    pub max_data_bytes: usize,
    /// `--max-rooms-per-conn`.
    pub max_rooms_per_conn: usize,
    /// `--max-connections`.
    pub max_connections: u64,
    /// `--max-connections-per-ip`.
    pub max_connections_per_ip: u32,
    /// `--allowed-origins`, trimmed, empty entries dropped (empty: any origin).
    pub allowed_origins: Vec<String>,
    /// `--password-attempts-per-conn`.
    pub password_attempts_per_conn: u32,
    /// `--password-attempts-per-ip`.
    pub password_attempts_per_ip: u32,
    /// `--history-messages` (0: no history).
    pub history_messages: usize,
    /// `--history-bytes`.
    pub history_bytes: usize,
    /// `--history-memory`.
    pub history_memory: usize,
    /// `--history-ttl`.
    pub history_ttl: Duration,
    /// `--data-dir`: where each shard keeps its durable log (`None`: history lives in
    /// memory only and does not survive a restart).
    pub data_dir: Option<PathBuf>,
    /// `--fsync`: when the log is synced to the disk.
    pub fsync: Fsync,
    /// `--data-segment-bytes`: size at which a log segment is closed and the next begun.
    pub data_segment_bytes: u64,
    /// `--backlog`.
    pub backlog: i32,
    /// `--spin-before-park-us`, as a duration.
    pub spin_before_park: Duration,
    /// `--ring-depth`.
    pub ring_depth: usize,
    /// `--send-path`.
    pub send_path: SendPath,
    /// `--read-wait`.
    pub read_wait: ReadWait,
    /// The `--nats-*` and `--cluster-*` flags; `None` (no `--nats-url`): a single node,
    /// nothing external, no bridge thread.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The `--proxy-*` and `--webhook-*` flags (docs/BACKEND.md).
    pub backend: crate::backend::BackendConfig,
}

impl Default for Config {
    /// The configuration of `corecast` run with no flags, no `CORECAST_*` variables and no
    /// file. It is parsed from the flag declarations, so no default is written twice.
    #[allow(clippy::expect_used)] // constant input (no arguments, no environment), validated by a unit test
    fn default() -> Self {
        Cli::builtin().and_then(Cli::into_config).expect("the built-in defaults are valid")
    }
}

impl Config {
    /// The shard count to run: `shards`, or the number of CPUs this process may use.
    pub fn effective_shards(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// How the fan-out writes to members whose queue is empty (`--send-path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendPath {
    /// One non-blocking `sendmsg` per member.
    Direct,
    /// One `io_uring_enter` per room's members (up to 256), each a `SENDMSG` SQE
    /// executed inline; the same outcomes as `direct`, fewer syscalls.
    Uring,
}

/// How a connection waits for input (`--read-wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadWait {
    /// Each shard's one epoll set, edge-triggered, polled through the runtime as one
    /// descriptor: nothing per idle connection in the process (`rt::readiness`).
    Epoll,
    /// The runtime's own poll per socket (an io_uring `POLL_ADD` and its ~250-byte
    /// source per idle connection).
    Poll,
}

/// A configuration that cannot be used; the message says which setting and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key.
    #[error("config file {path}: {message}")]
    File {
        /// File path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A flag, variable or file value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Argument parsing failed (clap prints its own help/usage).
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// When the durable log is synced to the disk (`--fsync`). A process crash (kill -9)
/// loses nothing the log handed to the kernel under any policy; the policy says what a
/// crash of the machine (power, kernel) may lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Never asked for: the kernel writes back when it likes (typically within 30 s).
    Never,
    /// Every batch of records is synced (`fdatasync`) before the answers of its
    /// publishes (`ack`s, API results) are sent.
    Always,
    /// Synced at most this long after a record was written.
    Interval(Duration),
}

/// Parses `never`, `always` or `interval=<ms>`.
fn fsync_policy(s: &str) -> Result<Fsync, String> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "never" => return Ok(Fsync::Never),
        "always" => return Ok(Fsync::Always),
        _ => {}
    }
    let ms =
        s.strip_prefix("interval=").ok_or_else(|| format!("expected never, always or interval=<ms>, got `{s}`"))?;
    match ms.parse::<u64>() {
        Ok(ms) if (1..=60_000).contains(&ms) => Ok(Fsync::Interval(Duration::from_millis(ms))),
        _ => Err(format!("interval=<ms> takes 1 to 60000 milliseconds, got `{ms}`")),
    }
}

fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{s}` is not a non-negative number of seconds"));
    }
    // `try_`: a huge value from a file or the environment is an error, not a panic.
    Duration::try_from_secs_f64(v).map_err(|_| format!("`{s}` seconds is too long"))
}

/// corecast: a thread-per-core WebSocket broadcaster and chat engine.
///
/// Every setting is a field of one of the flattened groups; each one's doc comment is its
/// `--help` text and its attribute holds its flag, `CORECAST_*` variable and default.
#[derive(Debug, Parser)]
#[command(name = "corecast", version, about, long_about = None)]
pub struct Cli {
    /// TOML file with defaults for any of the flags below (flags and env win).
    #[arg(long, env = "CORECAST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listener, shards and executors.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Connection timeouts and send queues.
    #[command(flatten)]
    pub connections: ConnectionArgs,
    /// Plain HTTP: API key, request sizes, `/stats`.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Token validation.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Abuse limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Presence events and history.
    #[command(flatten)]
    pub rooms: RoomArgs,
    /// The cluster bus.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The application backend: proxy and webhooks.
    #[command(flatten)]
    pub backend: crate::backend::args::BackendArgs,
    /// Logging.
    #[command(flatten)]
    pub logging: LogArgs,
}

/// Listener, shards and executors.
#[derive(Debug, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerArgs {
    /// Address to listen on (HTTP and WebSocket share it).
    #[arg(long, env = "CORECAST_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Shards (pinned executor threads); 0 = one per online CPU.
    #[arg(long, env = "CORECAST_SHARDS", default_value_t = 0, value_name = "N")]
    pub shards: usize,
    /// Do not pin shards to CPUs.
    #[arg(long, env = "CORECAST_NO_PIN")]
    pub no_pin: bool,
    /// Microseconds an idle shard busy-polls before parking (0: park at once, ~0% idle CPU).
    #[arg(long, env = "CORECAST_SPIN_BEFORE_PARK_US", default_value_t = 0, value_name = "US")]
    pub spin_before_park_us: u64,
    /// io_uring ring depth per shard.
    #[arg(long, env = "CORECAST_RING_DEPTH", default_value_t = 1024, value_name = "N")]
    pub ring_depth: usize,
    /// How the fan-out writes to idle members: `uring` (the default: a room's members in
    /// one `io_uring_enter` of `SENDMSG`s, on a second small ring per shard; where that
    /// ring cannot be created the shard logs it and sends directly) or `direct` (one
    /// non-blocking `sendmsg` each).
    #[arg(long, env = "CORECAST_SEND_PATH", value_enum, default_value_t = SendPath::Uring)]
    pub send_path: SendPath,
    /// How connections wait for input: `epoll` (the default: one edge-triggered epoll
    /// set per shard wakes them, so an idle connection holds no pending poll in the
    /// process; a socket the kernel refuses to add, or a shard without a set, falls back
    /// to `poll`) or `poll` (the runtime's io_uring poll per socket).
    #[arg(long, env = "CORECAST_READ_WAIT", value_enum, default_value_t = ReadWait::Epoll)]
    pub read_wait: ReadWait,
    /// Listen backlog of each shard's listener (the kernel clips it to net.core.somaxconn).
    #[arg(long, env = "CORECAST_BACKLOG", default_value_t = 65535, value_name = "N")]
    pub backlog: i32,
    /// Allow transparent huge pages. Off by default: a connection's few small allocations
    /// then fault in whole 2 MiB pages, which costs hundreds of bytes per connection and
    /// ~20 MB at start for no measurable gain (docs/DESIGN-NOTES.md, "Memory per connection").
    #[arg(long, env = "CORECAST_ALLOW_THP")]
    pub allow_thp: bool,
}

/// Connection timeouts and send queues.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connections")]
pub struct ConnectionArgs {
    /// Seconds between server pings; silence for two intervals closes the connection.
    #[arg(long, env = "CORECAST_PING_INTERVAL", default_value = "30", value_parser = secs, value_name = "SECS")]
    pub ping_interval: Duration,
    /// Seconds a client has to complete its HTTP request head.
    #[arg(long, env = "CORECAST_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = secs, value_name = "SECS")]
    pub handshake_timeout: Duration,
    /// Seconds the server lingers after sending a close frame, reading and discarding the
    /// client's input until it closes too, before it closes the socket.
    #[arg(long, env = "CORECAST_CLOSE_TIMEOUT", default_value = "2", value_parser = secs, value_name = "SECS")]
    pub close_timeout: Duration,
    /// Seconds to wait for all clients to close at shutdown.
    #[arg(long, env = "CORECAST_SHUTDOWN_TIMEOUT", default_value = "5", value_parser = secs, value_name = "SECS")]
    pub shutdown_timeout: Duration,
    /// Seconds to keep serving after SIGTERM with /health answering 503, before closing.
    #[arg(long, env = "CORECAST_DRAIN_GRACE", default_value = "0", value_parser = secs, value_name = "SECS")]
    pub drain_grace: Duration,
    /// Largest client frame or message in bytes (close 1009 beyond).
    #[arg(long, env = "CORECAST_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_message_bytes: usize,
    /// Per-connection write queue cap in bytes (slow consumers are closed with 1013).
    #[arg(long, env = "CORECAST_QUEUE_BYTES", default_value_t = 256 * 1024, value_name = "BYTES")]
    pub queue_bytes: usize,
    /// Per-connection write queue cap in frames.
    #[arg(long, env = "CORECAST_QUEUE_FRAMES", default_value_t = 4096, value_name = "N")]
    pub queue_frames: usize,
    /// permessage-deflate (RFC 7692) with clients that offer it: `on` or `off`. Each room
    /// message is compressed once per shard and shared by every compressing receiver.
    #[arg(long, env = "CORECAST_COMPRESSION", default_value = "off", value_parser = on_off, action = clap::ArgAction::Set, value_name = "off|on")]
    pub compression: bool,
    /// Payloads smaller than this go uncompressed (deflate gains nothing on short frames).
    #[arg(long, env = "CORECAST_COMPRESSION_MIN_BYTES", default_value_t = 256, value_name = "BYTES")]
    pub compression_min_bytes: usize,
}

/// `off` / `on` (a switch that reads well in a config file and an environment variable).
fn on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected `on` or `off`, got `{other}`")),
    }
}

/// Plain HTTP: API key, request sizes, `/stats`.
#[derive(Debug, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// Bearer key for `POST /api/publish` (without it the endpoint is disabled).
    #[arg(long, env = "CORECAST_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest HTTP request head in bytes (431 beyond).
    #[arg(long, env = "CORECAST_MAX_REQUEST_HEAD", default_value_t = 8 * 1024, value_name = "BYTES")]
    pub max_request_head: usize,
    /// Largest HTTP request body in bytes.
    #[arg(long, env = "CORECAST_MAX_REQUEST_BODY", default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_request_body: usize,
    /// Rooms /stats lists when the request gives no ?limit=.
    #[arg(long, env = "CORECAST_STATS_ROOMS", default_value_t = 100, value_name = "N")]
    pub stats_rooms: usize,
    /// For conformance testing only (Autobahn|Testsuite): serve an echo WebSocket at
    /// /echo that returns every text and binary message unchanged and sends nothing of its
    /// own. Off by default; it bypasses authentication.
    #[arg(long, env = "CORECAST_ECHO_ENDPOINT")]
    pub echo_endpoint: bool,
}

/// Token validation.
#[derive(Debug, Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// HS256 secret for JWT validation (at least 32 bytes).
    #[arg(long, env = "CORECAST_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with an RS256 or ES256 public key for JWT validation.
    #[arg(long, env = "CORECAST_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Require this `iss` claim.
    #[arg(long, env = "CORECAST_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Require this `aud` claim.
    #[arg(long, env = "CORECAST_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Seconds of clock skew tolerated on a token's exp and nbf.
    #[arg(long, env = "CORECAST_JWT_LEEWAY", default_value_t = 30, value_name = "SECS")]
    pub jwt_leeway: u64,
    /// Allow guests (?name=) even when a JWT key is configured.
    #[arg(long, env = "CORECAST_ALLOW_GUESTS")]
    pub allow_guests: bool,
}

/// Abuse limits.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Messages per second a connection may send (token bucket; 0: unlimited).
    #[arg(long, env = "CORECAST_RATE_LIMIT", default_value_t = 20, value_name = "MSGS")]
    pub rate_limit: u32,
    /// Burst allowance above the rate.
    #[arg(long, env = "CORECAST_RATE_BURST", default_value_t = 40, value_name = "MSGS")]
    pub rate_burst: u32,
    /// Close a connection (1008) after this many rate-limited messages.
    #[arg(long, env = "CORECAST_RATE_LIMIT_CLOSE_AFTER", default_value_t = 100, value_name = "N")]
    pub rate_limit_close_after: u32,
    /// Longest message text in bytes.
    #[arg(long, env = "CORECAST_MAX_TEXT_BYTES", default_value_t = 4096, value_name = "BYTES")]
    pub max_text_bytes: usize,
    /// Largest `data` value of a message in bytes, as written by the sender.
    #[arg(long, env = "CORECAST_MAX_DATA_BYTES", default_value_t = 16 * 1024, value_name = "BYTES")]
    pub max_data_bytes: usize,
    /// Most rooms per connection.
    #[arg(long, env = "CORECAST_MAX_ROOMS_PER_CONN", default_value_t = 100, value_name = "N")]
    pub max_rooms_per_conn: usize,
    /// Most WebSocket connections on this server (HTTP 503 at upgrade beyond).
    #[arg(long, env = "CORECAST_MAX_CONNECTIONS", default_value_t = 1_000_000, value_name = "N")]
    pub max_connections: u64,
    /// Most WebSocket connections per source IP (HTTP 503 at upgrade beyond).
    #[arg(long, env = "CORECAST_MAX_CONNECTIONS_PER_IP", default_value_t = 1000, value_name = "N")]
    pub max_connections_per_ip: u32,
    /// Comma-separated Origin values allowed to upgrade (default: any).
    #[arg(long, env = "CORECAST_ALLOWED_ORIGINS", value_delimiter = ',', value_name = "ORIGINS")]
    pub allowed_origins: Vec<String>,
    /// Room password attempts per connection per minute.
    #[arg(long, env = "CORECAST_PASSWORD_ATTEMPTS_PER_CONN", default_value_t = 5, value_name = "N")]
    pub password_attempts_per_conn: u32,
    /// Room password attempts per IP address per minute.
    #[arg(long, env = "CORECAST_PASSWORD_ATTEMPTS_PER_IP", default_value_t = 30, value_name = "N")]
    pub password_attempts_per_ip: u32,
}

/// Presence events and history.
#[derive(Debug, Args)]
#[command(next_help_heading = "Rooms")]
pub struct RoomArgs {
    /// Rooms with this many members or more send no join/leave events (0: never).
    #[arg(long, env = "CORECAST_PRESENCE_EVENTS_MAX_MEMBERS", default_value_t = 1000, value_name = "N")]
    pub presence_events_max_members: u32,
    /// Messages of history kept per room (0 turns history and recovery off).
    #[arg(long, env = "CORECAST_HISTORY_MESSAGES", default_value_t = 1000, value_name = "N")]
    pub history_messages: usize,
    /// Bytes of history kept per room.
    #[arg(long, env = "CORECAST_HISTORY_BYTES", default_value_t = 1 << 20, value_name = "BYTES")]
    pub history_bytes: usize,
    /// Bytes of history kept on the whole server; the oldest messages go first.
    #[arg(long, env = "CORECAST_HISTORY_MEMORY", default_value_t = 256 << 20, value_name = "BYTES")]
    pub history_memory: usize,
    /// Seconds a room keeps its history after its last member left.
    #[arg(long, env = "CORECAST_HISTORY_TTL", default_value = "300", value_parser = secs, value_name = "SECS")]
    pub history_ttl: Duration,
    /// Keep history across restarts: each shard logs what it sequences under DIR/shard-N/
    /// and rebuilds its rooms from it at start (off: history lives in memory only).
    #[arg(long, env = "CORECAST_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When the log is synced to the disk: never, always (before the publisher's ack), or
    /// interval=<ms> (docs/DURABILITY.md says what each may lose).
    #[arg(long, env = "CORECAST_FSYNC", default_value = "interval=200", value_parser = fsync_policy, value_name = "POLICY")]
    pub fsync: Fsync,
    /// Size at which a log segment is closed and the next one begun (with --data-dir).
    #[arg(long, env = "CORECAST_DATA_SEGMENT_BYTES", default_value_t = 16 << 20, value_name = "BYTES")]
    pub data_segment_bytes: u64,
}

/// The cluster bus (docs/CLUSTER.md).
#[derive(Debug, Args)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterArgs {
    /// NATS server URL(s), comma-separated: turns clustering on (docs/CLUSTER.md).
    #[arg(long, env = "CORECAST_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file (.creds: JWT and nkey seed).
    #[arg(long, env = "CORECAST_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user name (with --nats-password).
    #[arg(long, env = "CORECAST_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(long, env = "CORECAST_NATS_PASSWORD", value_name = "PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS authentication token.
    #[arg(long, env = "CORECAST_NATS_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// CA certificate (PEM) that signed the NATS server's certificate; requires TLS.
    #[arg(long, env = "CORECAST_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with NATS (with --nats-tls-key).
    #[arg(long, env = "CORECAST_NATS_TLS_CERT", value_name = "FILE")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS with NATS (with --nats-tls-cert).
    #[arg(long, env = "CORECAST_NATS_TLS_KEY", value_name = "FILE")]
    pub nats_tls_key: Option<PathBuf>,
    /// First token of every cluster subject (nodes with the same prefix form one cluster).
    #[arg(long, env = "CORECAST_NATS_SUBJECT_PREFIX", default_value = "corecast", value_name = "PREFIX")]
    pub nats_subject_prefix: String,
    /// This node's name in logs and heartbeats (default: the listen address).
    #[arg(long, env = "CORECAST_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Hash public rooms into this many NATS subscription buckets (0: a subscription per
    /// room). Bounds a node's subscriptions to the bucket count whatever its rooms; nodes
    /// then also receive frames of rooms they have no members in (dropped). Must be the
    /// same on every node of a cluster.
    #[arg(long, env = "CORECAST_CLUSTER_ROOM_BUCKETS", default_value = "0", value_name = "N")]
    pub cluster_room_buckets: u32,
    /// Seconds between cluster heartbeats.
    #[arg(long, env = "CORECAST_CLUSTER_HEARTBEAT", default_value = "1", value_parser = secs, value_name = "SECS")]
    pub cluster_heartbeat: Duration,
    /// Seconds without a heartbeat after which a node is dead (its users leave).
    #[arg(long, env = "CORECAST_CLUSTER_NODE_TIMEOUT", default_value = "3", value_parser = secs, value_name = "SECS")]
    pub cluster_node_timeout: Duration,
}

/// Logging.
#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `corecast=debug`.
    #[arg(long, env = "CORECAST_LOG", default_value = "info", value_name = "FILTER")]
    pub log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "CORECAST_LOG_JSON")]
    pub log_json: bool,
}

impl Cli {
    /// Parses the process arguments, environment and (when given) the config file.
    pub fn load() -> Result<Cli, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// Like [`Cli::load`] with explicit arguments (the first is the program name).
    pub fn load_from<I, T>(args: I) -> Result<Cli, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let matches = Cli::command().try_get_matches_from(&args)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Cli::from_arg_matches(&matches)?);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let mut merged = args;
        merged.extend(file_args(&path, &text, &matches)?.into_iter().map(Into::into));
        let matches = Cli::command().try_get_matches_from(&merged)?;
        Ok(Cli::from_arg_matches(&matches)?)
    }

    /// The flags' own defaults: no arguments, and the `CORECAST_*` environment ignored.
    fn builtin() -> Result<Cli, ConfigError> {
        let cmd = Cli::command().mut_args(|a| a.env(None::<&'static str>));
        Ok(Cli::from_arg_matches(&cmd.try_get_matches_from(["corecast"])?)?)
    }

    /// Validates the merged settings into a [`Config`]: the one place where flags become
    /// settings (inverted, clamped, converted or combined).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let Cli { config: _, server, connections: c, http, auth, limits, rooms, cluster, backend, logging: _ } = self;
        if c.ping_interval < Duration::from_millis(100) {
            return invalid("--ping-interval must be at least 0.1 seconds");
        }
        if c.max_message_bytes < 128 {
            return invalid("--max-message-bytes must be at least 128");
        }
        if c.queue_bytes < c.max_message_bytes.min(64 * 1024) || c.queue_frames == 0 {
            return invalid("--queue-bytes must hold at least one message, --queue-frames at least one frame");
        }
        if http.api_key.as_deref().is_some_and(|k| k.len() < 16) {
            return invalid("--api-key must be at least 16 characters");
        }
        if auth.jwt_secret.as_deref().is_some_and(|k| k.len() < 32) {
            return invalid("--jwt-secret must be at least 32 bytes (HS256 keys shorter than the hash are weak)");
        }
        if limits.rate_limit > 1000 {
            return invalid("--rate-limit is at most 1000 messages per second");
        }
        if c.handshake_timeout.is_zero() {
            return invalid("--handshake-timeout must be positive");
        }
        // Zero would close the socket right after the close frame, with the client's
        // input unread: the kernel then answers with a reset and the frame is lost.
        if c.close_timeout.is_zero() {
            return invalid("--close-timeout must be positive");
        }
        // A head must at least hold a WebSocket upgrade request; the ceiling keeps
        // head + body (the bound on pipelined input) far from overflowing.
        if !(1024..=1 << 20).contains(&http.max_request_head) {
            return invalid("--max-request-head must be between 1024 and 1048576 bytes");
        }
        if rooms.data_segment_bytes < 4096 {
            return invalid("--data-segment-bytes must be at least 4096");
        }
        if server.backlog < 1 {
            return invalid("--backlog must be at least 1");
        }
        if !server.ring_depth.is_power_of_two() || !(64..=32768).contains(&server.ring_depth) {
            return invalid("--ring-depth must be a power of two between 64 and 32768");
        }
        let cluster = cluster.into_cluster_config(server.listen)?;
        let backend = backend.into_config().map_err(ConfigError::Invalid)?;
        Ok(Config {
            cluster,
            backend,
            listen: server.listen,
            shards: server.shards,
            pin: !server.no_pin,
            spin_before_park: Duration::from_micros(server.spin_before_park_us),
            ring_depth: server.ring_depth,
            send_path: server.send_path,
            read_wait: server.read_wait,
            backlog: server.backlog,
            ping_interval: c.ping_interval,
            handshake_timeout: c.handshake_timeout,
            close_timeout: c.close_timeout,
            shutdown_timeout: c.shutdown_timeout,
            drain_grace: c.drain_grace,
            max_message_bytes: c.max_message_bytes,
            queue_bytes: c.queue_bytes,
            queue_frames: c.queue_frames,
            compression: c.compression,
            compression_min_bytes: c.compression_min_bytes,
            api_key: http.api_key,
            max_request_head: http.max_request_head,
            max_request_body: http.max_request_body,
            stats_rooms: http.stats_rooms,
            echo_endpoint: http.echo_endpoint,
            jwt_secret: auth.jwt_secret,
            jwt_public_key: auth.jwt_public_key,
            jwt_issuer: auth.jwt_issuer,
            jwt_audience: auth.jwt_audience,
            jwt_leeway: auth.jwt_leeway,
            allow_guests: auth.allow_guests,
            rate_limit: limits.rate_limit,
            rate_burst: limits.rate_burst.max(1),
            rate_limit_close_after: limits.rate_limit_close_after.max(1),
            max_text_bytes: limits.max_text_bytes,
            max_data_bytes: limits.max_data_bytes,
            max_rooms_per_conn: limits.max_rooms_per_conn,
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            allowed_origins: limits
                .allowed_origins
                .into_iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            password_attempts_per_conn: limits.password_attempts_per_conn,
            password_attempts_per_ip: limits.password_attempts_per_ip,
            presence_events_max_members: rooms.presence_events_max_members,
            history_messages: rooms.history_messages,
            history_bytes: rooms.history_bytes,
            history_memory: rooms.history_memory,
            history_ttl: rooms.history_ttl,
            data_dir: rooms.data_dir.filter(|d| !d.as_os_str().is_empty()),
            fsync: rooms.fsync,
            data_segment_bytes: rooms.data_segment_bytes,
        })
    }
}

impl ClusterArgs {
    /// The cluster settings: `None` without `--nats-url`; the other `--nats-*` flags
    /// without it, or contradicting each other, are errors. The node is named after
    /// `listen` unless `--node-name` says otherwise.
    fn into_cluster_config(self, listen: SocketAddr) -> Result<Option<crate::cluster::ClusterConfig>, ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let Some(url) = self.nats_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            let any = self.nats_creds.is_some()
                || self.nats_user.is_some()
                || self.nats_password.is_some()
                || self.nats_token.is_some()
                || self.nats_tls_ca.is_some()
                || self.nats_tls_cert.is_some()
                || self.nats_tls_key.is_some();
            return if any { invalid("the --nats-* options need --nats-url") } else { Ok(None) };
        };
        if self.nats_user.is_some() != self.nats_password.is_some() {
            return invalid("--nats-user and --nats-password go together");
        }
        let methods = [self.nats_creds.is_some(), self.nats_user.is_some(), self.nats_token.is_some()];
        if methods.iter().filter(|m| **m).count() > 1 {
            return invalid("give one of --nats-creds, --nats-user/--nats-password or --nats-token");
        }
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            return invalid("--nats-tls-cert and --nats-tls-key go together");
        }
        if !crate::cluster::subject::is_valid_subject(&self.nats_subject_prefix) {
            return invalid("--nats-subject-prefix must be a valid NATS subject (no spaces, `*` or `>`)");
        }
        if self.cluster_heartbeat < Duration::from_millis(50) || self.cluster_node_timeout < 2 * self.cluster_heartbeat
        {
            return invalid("--cluster-heartbeat must be at least 0.05 s and --cluster-node-timeout at least twice it");
        }
        if self.cluster_room_buckets > crate::cluster::subject::MAX_ROOM_BUCKETS {
            return invalid("--cluster-room-buckets must be at most 65536");
        }
        let mut c = crate::cluster::ClusterConfig::new(url);
        c.creds = self.nats_creds;
        c.user = self.nats_user;
        c.password = self.nats_password;
        c.token = self.nats_token;
        c.tls_ca = self.nats_tls_ca;
        c.tls_client = self.nats_tls_cert.zip(self.nats_tls_key);
        c.node_name = self.node_name.unwrap_or_else(|| listen.to_string());
        c.subject_prefix = self.nats_subject_prefix;
        c.room_buckets = self.cluster_room_buckets;
        c.heartbeat = self.cluster_heartbeat;
        c.node_timeout = self.cluster_node_timeout;
        Ok(Some(c))
    }
}

/// Turns the file's keys into `--flag=value` arguments for every flag that neither the
/// command line nor the environment set, so precedence is flags > env > file > default.
fn file_args(path: &std::path::Path, text: &str, matches: &ArgMatches) -> Result<Vec<String>, ConfigError> {
    let err = |message: String| ConfigError::File { path: path.to_owned(), message };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string()))?;
    let cmd = Cli::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(flag.as_str())) else {
            return Err(err(format!("unknown key `{key}`")));
        };
        if flag == "config" {
            return Err(err("a config file cannot name another config file".into()));
        }
        let id = arg.get_id().as_str();
        if matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => out.push(format!("--{flag}")),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => out.push(format!("--{flag}={s}")),
            toml::Value::Integer(i) => out.push(format!("--{flag}={i}")),
            toml::Value::Float(f) => out.push(format!("--{flag}={f}")),
            other => return Err(err(format!("`{key}` must be a string, number or boolean, not {}", other.type_str()))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, MutexGuard};

    /// Parsing reads the process environment, which one test sets: every test that parses
    /// holds this lock so none sees another's variables.
    fn env_lock() -> MutexGuard<'static, ()> {
        static ENV: Mutex<()> = Mutex::new(());
        ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every flag, each with a value other than its default, written so that the flag, the
    /// TOML key and the `CORECAST_*` variable all accept it. The names are documented
    /// (README.md, docs/): this list pins each of them.
    const EVERY_FLAG: &[(&str, &str)] = &[
        ("listen", "127.0.0.1:9"),
        ("shards", "3"),
        ("no-pin", "true"),
        ("spin-before-park-us", "50"),
        ("ring-depth", "256"),
        ("send-path", "uring"),
        ("read-wait", "poll"),
        ("backlog", "128"),
        ("allow-thp", "true"),
        ("ping-interval", "1.5"),
        ("handshake-timeout", "4"),
        ("close-timeout", "0.5"),
        ("shutdown-timeout", "7"),
        ("drain-grace", "3"),
        ("max-message-bytes", "1000"),
        ("queue-bytes", "5000"),
        ("queue-frames", "9"),
        ("api-key", "0123456789abcdef"),
        ("max-request-head", "4096"),
        ("max-request-body", "1234"),
        ("stats-rooms", "7"),
        ("echo-endpoint", "true"),
        ("compression", "on"),
        ("compression-min-bytes", "64"),
        ("jwt-secret", "0123456789abcdef0123456789abcdef"),
        ("jwt-public-key", "/k.pem"),
        ("jwt-issuer", "iss"),
        ("jwt-audience", "aud"),
        ("jwt-leeway", "2"),
        ("allow-guests", "true"),
        ("rate-limit", "3"),
        ("rate-burst", "4"),
        ("rate-limit-close-after", "5"),
        ("max-text-bytes", "6"),
        ("max-data-bytes", "15"),
        ("max-rooms-per-conn", "7"),
        ("max-connections", "8"),
        ("max-connections-per-ip", "9"),
        ("allowed-origins", "https://a.example,https://b.example"),
        ("password-attempts-per-conn", "2"),
        ("password-attempts-per-ip", "3"),
        ("presence-events-max-members", "10"),
        ("history-messages", "11"),
        ("history-bytes", "12"),
        ("history-memory", "13"),
        ("history-ttl", "14"),
        ("data-dir", "/var/lib/corecast"),
        ("fsync", "always"),
        ("data-segment-bytes", "65536"),
        ("nats-url", "nats://127.0.0.1:4222"),
        ("nats-creds", "/n.creds"),
        ("nats-user", "u"),
        ("nats-password", "p"),
        ("nats-token", "t"),
        ("nats-tls-ca", "/ca.pem"),
        ("nats-tls-cert", "/c.pem"),
        ("nats-tls-key", "/k.pem"),
        ("nats-subject-prefix", "cc"),
        ("node-name", "n1"),
        ("cluster-heartbeat", "0.25"),
        ("cluster-node-timeout", "2"),
        ("cluster-room-buckets", "64"),
        ("proxy-connect-url", "http://127.0.0.1:1/connect"),
        ("proxy-subscribe-url", "http://127.0.0.1:1/subscribe"),
        ("proxy-publish-url", "http://127.0.0.1:1/publish"),
        ("proxy-timeout", "3"),
        ("proxy-max-in-flight", "5"),
        ("proxy-connect-headers", "x-a"),
        ("proxy-connect-cookies", "true"),
        ("proxy-secret", "0123456789abcdef"),
        ("webhook-url", "http://127.0.0.1:1/hooks"),
        ("webhook-secret", "0123456789abcdef"),
        ("webhook-events", "member_joined"),
        ("webhook-batch-size", "7"),
        ("webhook-batch-interval", "0.5"),
        ("webhook-queue", "9"),
        ("webhook-timeout", "4"),
        ("webhook-max-backoff", "2"),
        ("backend-ca-file", "/ca.pem"),
        ("log", "debug"),
        ("log-json", "true"),
    ];

    fn env_name(long: &str) -> String {
        format!("CORECAST_{}", long.to_uppercase().replace('-', "_"))
    }

    /// The flags of the command other than `--help`, `--version` and `--config`.
    fn setting_args() -> Vec<clap::Arg> {
        let cmd = Cli::command();
        cmd.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version" | "config")).cloned().collect()
    }

    #[test]
    fn every_flag_has_help_text_and_its_documented_variable() {
        let cmd = Cli::command();
        for arg in cmd.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
            let long = arg.get_long().unwrap_or_else(|| panic!("{} has no long flag", arg.get_id()));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.trim().len() > 10, "--{long} has no help text");
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert_eq!(env, env_name(long), "--{long} reads the wrong variable");
        }
    }

    #[test]
    fn default_config_is_the_config_of_no_arguments() {
        let _env = env_lock();
        // The test process may run with settings exported; parse as on a clean host.
        let saved: Vec<(String, std::ffi::OsString)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| k.starts_with("CORECAST_"))
            .collect();
        for (k, _) in &saved {
            std::env::remove_var(k);
        }
        let parsed = Cli::load_from(["corecast"]).and_then(Cli::into_config);
        for (k, v) in &saved {
            std::env::set_var(k, v);
        }
        assert_eq!(format!("{:?}", Config::default()), format!("{:?}", parsed.unwrap()));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(
            (c.shards, c.pin, c.spin_before_park, c.ring_depth, c.backlog),
            (0, true, Duration::ZERO, 1024, 65535)
        );
        assert_eq!(c.send_path, SendPath::Uring, "the io_uring send path is the default (issue 16)");
        assert_eq!(c.read_wait, ReadWait::Epoll, "connections wait for input through the shard's epoll set");
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.close_timeout, Duration::from_secs(2));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.drain_grace, Duration::ZERO);
        assert_eq!((c.max_message_bytes, c.queue_bytes, c.queue_frames), (64 * 1024, 256 * 1024, 4096));
        assert_eq!(
            (c.api_key, c.max_request_head, c.max_request_body, c.stats_rooms),
            (None, 8 * 1024, 64 * 1024, 100)
        );
        assert!(c.jwt_secret.is_none() && c.jwt_public_key.is_none() && c.jwt_issuer.is_none());
        assert!(c.jwt_audience.is_none() && !c.allow_guests);
        assert_eq!(c.jwt_leeway, 30);
        assert_eq!((c.rate_limit, c.rate_burst, c.rate_limit_close_after), (20, 40, 100));
        assert_eq!((c.max_text_bytes, c.max_rooms_per_conn), (4096, 100));
        assert_eq!(c.max_data_bytes, 16 * 1024);
        assert_eq!((c.max_connections, c.max_connections_per_ip), (1_000_000, 1000));
        assert!(c.allowed_origins.is_empty());
        assert_eq!((c.password_attempts_per_conn, c.password_attempts_per_ip), (5, 30));
        assert_eq!(c.presence_events_max_members, 1000);
        assert_eq!((c.history_messages, c.history_bytes, c.history_memory), (1000, 1 << 20, 256 << 20));
        assert_eq!(c.history_ttl, Duration::from_secs(300));
        assert_eq!(
            (c.data_dir, c.fsync, c.data_segment_bytes),
            (None, Fsync::Interval(Duration::from_millis(200)), 16 << 20)
        );
        assert!(!c.echo_endpoint, "the conformance echo endpoint is off by default");
        assert_eq!((c.compression, c.compression_min_bytes), (false, 256));
        assert!(c.cluster.is_none());
    }

    #[test]
    fn every_documented_key_and_variable_parses() {
        let _env = env_lock();
        let mut listed: Vec<&str> = EVERY_FLAG.iter().map(|(k, _)| *k).collect();
        let mut declared: Vec<String> = setting_args().iter().filter_map(|a| a.get_long().map(str::to_owned)).collect();
        listed.sort_unstable();
        declared.sort_unstable();
        assert_eq!(listed, declared, "a flag was added or renamed: list it here and document it");
        let is_bool =
            |long: &str| setting_args().iter().any(|a| a.get_long() == Some(long) && !a.get_action().takes_values());
        let dir = std::env::temp_dir().join(format!("corecast-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let show = |cli: Cli| format!("{:?}", Cli { config: None, ..cli });

        let mut args = vec!["corecast".to_owned()];
        args.extend(EVERY_FLAG.iter().map(|(k, v)| if is_bool(k) { format!("--{k}") } else { format!("--{k}={v}") }));
        let from_flags = show(Cli::load_from(&args).unwrap());
        assert_ne!(from_flags, show(Cli::builtin().unwrap()));

        for separator in ["_", "-"] {
            let toml: String = EVERY_FLAG
                .iter()
                .map(|(k, v)| {
                    let key = k.replace('-', separator);
                    if is_bool(k) || v.parse::<f64>().is_ok() {
                        format!("{key} = {v}\n")
                    } else {
                        format!("{key} = {v:?}\n")
                    }
                })
                .collect();
            let path = dir.join(format!("all{separator}.toml"));
            std::fs::write(&path, toml).unwrap();
            let from_file = show(Cli::load_from(["corecast", "--config", path.to_str().unwrap()]).unwrap());
            assert_eq!(from_file, from_flags, "TOML keys spelled with `{separator}`");
        }

        for (k, v) in EVERY_FLAG {
            std::env::set_var(env_name(k), v);
        }
        let from_env = Cli::load_from(["corecast"]).map(show);
        for (k, _) in EVERY_FLAG {
            std::env::remove_var(env_name(k));
        }
        assert_eq!(from_env.unwrap(), from_flags, "CORECAST_* variables");
    }

    #[test]
    fn new_settings_are_validated() {
        let _env = env_lock();
        let load = |args: &[&str]| Cli::load_from([&["corecast"], args].concat()).unwrap().into_config();
        let c =
            load(&["--close-timeout", "0.5", "--max-request-head", "4096", "--stats-rooms", "7", "--backlog", "128"]);
        let c = c.unwrap();
        assert_eq!(
            (c.close_timeout, c.max_request_head, c.stats_rooms, c.backlog),
            (Duration::from_millis(500), 4096, 7, 128)
        );
        for (bad, flag) in [
            (&["--close-timeout", "0"][..], "--close-timeout"),
            (&["--max-request-head", "100"], "--max-request-head"),
            (&["--backlog", "0"], "--backlog"),
        ] {
            let err = load(bad).unwrap_err();
            assert!(err.to_string().contains(flag), "{bad:?}: {err}");
        }
        assert!(Cli::load_from(["corecast", "--close-timeout", "1e300"]).is_err(), "too long is an error, not a panic");
    }

    #[test]
    fn defaults_serve_on_localhost_8080() {
        let _env = env_lock();
        let cfg = Cli::load_from(["corecast"]).unwrap().into_config().unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(cfg.ping_interval, Duration::from_secs(30));
        assert!(cfg.pin);
    }

    #[test]
    fn file_fills_only_what_flags_did_not_set() {
        let _env = env_lock();
        let dir = std::env::temp_dir().join(format!("corecast-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "shards = 3\nqueue_bytes = 100000\nping-interval = 0.5\nno-pin = true\n").unwrap();
        let cli = Cli::load_from(["corecast", "--config", path.to_str().unwrap(), "--shards", "2"]).unwrap();
        let cfg = cli.into_config().unwrap();
        assert_eq!(cfg.shards, 2, "the flag wins over the file");
        assert_eq!(cfg.queue_bytes, 100_000);
        assert_eq!(cfg.ping_interval, Duration::from_millis(500));
        assert!(!cfg.pin);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let err = Cli::load_from(["corecast", "--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("unknown key `bogus`"), "{err}");
    }

    #[test]
    fn cluster_flags_need_a_url_and_agree() {
        let _env = env_lock();
        let load = |args: &[&str]| Cli::load_from([&["corecast"], args].concat()).unwrap().into_config();
        assert!(load(&[]).unwrap().cluster.is_none(), "single node by default");
        let c = load(&["--nats-url", "nats://127.0.0.1:4222", "--nats-token", "t"]).unwrap().cluster.unwrap();
        assert_eq!((c.url.as_str(), c.token.as_deref()), ("nats://127.0.0.1:4222", Some("t")));
        assert_eq!(c.node_timeout, Duration::from_secs(3));
        for bad in [
            &["--nats-token", "t"][..],
            &["--nats-url", "nats://x", "--nats-user", "u"],
            &["--nats-url", "nats://x", "--nats-token", "t", "--nats-creds", "f"],
            &["--nats-url", "nats://x", "--nats-subject-prefix", "a b"],
            &["--nats-url", "nats://x", "--cluster-node-timeout", "1.5"],
        ] {
            assert!(load(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_values_are_named() {
        let _env = env_lock();
        let err = Cli::load_from(["corecast", "--ping-interval", "0.01"]).unwrap().into_config().unwrap_err();
        assert!(err.to_string().contains("--ping-interval"));
        assert!(Cli::load_from(["corecast", "--ping-interval", "abc"]).is_err());
    }
}
