//! Configuration: command-line flags, `CORECAST_*` environment variables and an optional
//! TOML file, merged in that order of precedence into one validated [`Config`].
//!
//! The flag names are a contract (scripts and issues name them): add flags, don't rename.
//! A TOML file uses the same names as the long flags (`queue-bytes = 262144` or
//! `queue_bytes = 262144`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

/// Everything a running server needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every shard's listener binds (`SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// Number of shards (executor threads); 0 = one per online CPU.
    pub shards: usize,
    /// Pin shard `i` to the i-th allowed CPU.
    pub pin: bool,
    /// Server ping interval; a connection silent for two intervals is closed.
    pub ping_interval: Duration,
    /// Largest frame payload or assembled message accepted from a client (1009 beyond).
    pub max_message_bytes: usize,
    /// Per-connection write queue cap in bytes; beyond it the client is a slow consumer.
    pub queue_bytes: usize,
    /// Per-connection write queue cap in frames.
    pub queue_frames: usize,
    /// Rooms with at least this many members send no join/leave events (0: never send).
    pub presence_events_max_members: u32,
    /// A socket must finish its HTTP request head within this time.
    pub handshake_timeout: Duration,
    /// How long a closing connection may take to answer our close frame.
    pub close_timeout: Duration,
    /// Graceful shutdown bound: after it, remaining connections are dropped.
    pub shutdown_timeout: Duration,
    /// Largest HTTP request head.
    pub max_request_head: usize,
    /// Largest HTTP request body (`POST /api/publish`).
    pub max_request_body: usize,
    /// Bearer key for the server-side API (`POST /api/publish`); `None` disables it.
    pub api_key: Option<String>,
    /// After SIGTERM, keep serving this long with `/health` answering 503 (so load
    /// balancers stop sending traffic) before closing connections.
    pub drain_grace: Duration,
    /// Most rooms `/stats` lists when the request does not say.
    pub stats_rooms: usize,
    /// HS256 secret for JWTs.
    pub jwt_secret: Option<String>,
    /// PEM file with an RS256 or ES256 public key for JWTs.
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    pub jwt_audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, seconds.
    pub jwt_leeway: u64,
    /// Allow guests (`?name=`) even when a JWT key is configured.
    pub allow_guests: bool,
    /// Per-connection message rate (messages per second; 0 turns the limit off).
    pub rate_limit: u32,
    /// Messages a connection may send in a burst above the rate.
    pub rate_burst: u32,
    /// Rate-limited messages after which the connection is closed (1008).
    pub rate_limit_close_after: u32,
    /// Longest `text` of a message, in bytes.
    pub max_text_bytes: usize,
    /// Most rooms one connection may be in (its personal room not counted).
    pub max_rooms_per_conn: usize,
    /// Most WebSocket connections on the server (503 at upgrade beyond it).
    pub max_connections: u64,
    /// Most WebSocket connections from one IP address (503 at upgrade beyond it).
    pub max_connections_per_ip: u32,
    /// Allowed `Origin` values for upgrades (empty: any). Requests without `Origin`
    /// (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// Password attempts allowed per connection per minute.
    pub password_attempts_per_conn: u32,
    /// Password attempts allowed per IP address per minute.
    pub password_attempts_per_ip: u32,
    /// Messages of history kept per room (0: no history).
    pub history_messages: usize,
    /// Bytes of history kept per room.
    pub history_bytes: usize,
    /// Bytes of history kept on the whole server (oldest evicted first, across rooms).
    pub history_memory: usize,
    /// How long a room whose last member left keeps its history.
    pub history_ttl: Duration,
    /// Listen backlog.
    pub backlog: i32,
    /// Busy-poll this long before an idle shard parks (trades idle CPU for wake latency).
    pub spin_before_park: Duration,
    /// io_uring submission queue depth per shard.
    pub ring_depth: usize,
    /// Cluster bus (NATS); `None`: a single node, nothing external, no bridge thread.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: 0,
            pin: true,
            ping_interval: Duration::from_secs(30),
            max_message_bytes: 64 * 1024,
            queue_bytes: 256 * 1024,
            queue_frames: 4096,
            presence_events_max_members: 1000,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
            max_request_head: 8 * 1024,
            max_request_body: 64 * 1024,
            api_key: None,
            drain_grace: Duration::ZERO,
            stats_rooms: 100,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: 30,
            allow_guests: false,
            rate_limit: 20,
            rate_burst: 40,
            rate_limit_close_after: 100,
            max_text_bytes: 4096,
            max_rooms_per_conn: 100,
            max_connections: 1_000_000,
            max_connections_per_ip: 1000,
            allowed_origins: Vec::new(),
            password_attempts_per_conn: 5,
            password_attempts_per_ip: 30,
            history_messages: 1000,
            history_bytes: 1 << 20,
            history_memory: 256 << 20,
            history_ttl: Duration::from_secs(300),
            backlog: 65535,
            spin_before_park: Duration::ZERO,
            ring_depth: 1024,
            cluster: None,
        }
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

fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{s}` is not a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// corecast: a thread-per-core WebSocket broadcaster and chat engine.
#[derive(Debug, Parser)]
#[command(name = "corecast", version, about, long_about = None)]
pub struct Cli {
    /// TOML file with defaults for any of the flags below (flags and env win).
    #[arg(long, env = "CORECAST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (HTTP and WebSocket share it).
    #[arg(long, env = "CORECAST_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Shards (pinned executor threads); 0 = one per online CPU.
    #[arg(long, env = "CORECAST_SHARDS", default_value_t = 0, value_name = "N")]
    pub shards: usize,
    /// Do not pin shards to CPUs.
    #[arg(long, env = "CORECAST_NO_PIN")]
    pub no_pin: bool,
    /// Seconds between server pings; silence for two intervals closes the connection.
    #[arg(long, env = "CORECAST_PING_INTERVAL", default_value = "30", value_parser = secs, value_name = "SECS")]
    pub ping_interval: Duration,
    /// Largest client frame or message in bytes (close 1009 beyond).
    #[arg(long, env = "CORECAST_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_message_bytes: usize,
    /// Per-connection write queue cap in bytes (slow consumers are closed with 1013).
    #[arg(long, env = "CORECAST_QUEUE_BYTES", default_value_t = 256 * 1024, value_name = "BYTES")]
    pub queue_bytes: usize,
    /// Per-connection write queue cap in frames.
    #[arg(long, env = "CORECAST_QUEUE_FRAMES", default_value_t = 4096, value_name = "N")]
    pub queue_frames: usize,
    /// Rooms with this many members or more send no join/leave events (0: never).
    #[arg(long, env = "CORECAST_PRESENCE_EVENTS_MAX_MEMBERS", default_value_t = 1000, value_name = "N")]
    pub presence_events_max_members: u32,
    /// Seconds a client has to complete its HTTP request head.
    #[arg(long, env = "CORECAST_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = secs, value_name = "SECS")]
    pub handshake_timeout: Duration,
    /// Seconds to wait for all clients to close at shutdown.
    #[arg(long, env = "CORECAST_SHUTDOWN_TIMEOUT", default_value = "5", value_parser = secs, value_name = "SECS")]
    pub shutdown_timeout: Duration,
    /// Microseconds an idle shard busy-polls before parking (0: park at once, ~0% idle CPU).
    #[arg(long, env = "CORECAST_SPIN_BEFORE_PARK_US", default_value_t = 0, value_name = "US")]
    pub spin_before_park_us: u64,
    /// io_uring ring depth per shard.
    #[arg(long, env = "CORECAST_RING_DEPTH", default_value_t = 1024, value_name = "N")]
    pub ring_depth: usize,
    /// Bearer key for `POST /api/publish` (without it the endpoint is disabled).
    #[arg(long, env = "CORECAST_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest HTTP request body in bytes.
    #[arg(long, env = "CORECAST_MAX_REQUEST_BODY", default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_request_body: usize,
    /// Seconds to keep serving after SIGTERM with /health answering 503, before closing.
    #[arg(long, env = "CORECAST_DRAIN_GRACE", default_value = "0", value_parser = secs, value_name = "SECS")]
    pub drain_grace: Duration,
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
    /// Allow transparent huge pages. Off by default: a connection's few small allocations
    /// then fault in whole 2 MiB pages, which costs hundreds of bytes per connection and
    /// ~20 MB at start for no measurable gain (docs/DESIGN-NOTES.md, "Memory").
    #[arg(long, env = "CORECAST_ALLOW_THP")]
    pub allow_thp: bool,
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
    /// Seconds between cluster heartbeats.
    #[arg(long, env = "CORECAST_CLUSTER_HEARTBEAT", default_value = "1", value_parser = secs, value_name = "SECS")]
    pub cluster_heartbeat: Duration,
    /// Seconds without a heartbeat after which a node is dead (its users leave).
    #[arg(long, env = "CORECAST_CLUSTER_NODE_TIMEOUT", default_value = "3", value_parser = secs, value_name = "SECS")]
    pub cluster_node_timeout: Duration,
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

    /// Validates the merged settings into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.ping_interval < Duration::from_millis(100) {
            return invalid("--ping-interval must be at least 0.1 seconds");
        }
        if self.max_message_bytes < 128 {
            return invalid("--max-message-bytes must be at least 128");
        }
        if self.queue_bytes < self.max_message_bytes.min(64 * 1024) || self.queue_frames == 0 {
            return invalid("--queue-bytes must hold at least one message, --queue-frames at least one frame");
        }
        if self.api_key.as_deref().is_some_and(|k| k.len() < 16) {
            return invalid("--api-key must be at least 16 characters");
        }
        if self.jwt_secret.as_deref().is_some_and(|k| k.len() < 32) {
            return invalid("--jwt-secret must be at least 32 bytes (HS256 keys shorter than the hash are weak)");
        }
        if self.rate_limit > 1000 {
            return invalid("--rate-limit is at most 1000 messages per second");
        }
        if self.handshake_timeout.is_zero() {
            return invalid("--handshake-timeout must be positive");
        }
        if !self.ring_depth.is_power_of_two() || !(64..=32768).contains(&self.ring_depth) {
            return invalid("--ring-depth must be a power of two between 64 and 32768");
        }
        let cluster = self.cluster_config()?;
        Ok(Config {
            cluster,
            listen: self.listen,
            shards: self.shards,
            pin: !self.no_pin,
            ping_interval: self.ping_interval,
            max_message_bytes: self.max_message_bytes,
            queue_bytes: self.queue_bytes,
            queue_frames: self.queue_frames,
            presence_events_max_members: self.presence_events_max_members,
            handshake_timeout: self.handshake_timeout,
            shutdown_timeout: self.shutdown_timeout,
            spin_before_park: Duration::from_micros(self.spin_before_park_us),
            ring_depth: self.ring_depth,
            api_key: self.api_key,
            max_request_body: self.max_request_body,
            drain_grace: self.drain_grace,
            jwt_secret: self.jwt_secret,
            jwt_public_key: self.jwt_public_key,
            jwt_issuer: self.jwt_issuer,
            jwt_audience: self.jwt_audience,
            jwt_leeway: self.jwt_leeway,
            allow_guests: self.allow_guests,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst.max(1),
            rate_limit_close_after: self.rate_limit_close_after.max(1),
            max_text_bytes: self.max_text_bytes,
            max_rooms_per_conn: self.max_rooms_per_conn,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            allowed_origins: self
                .allowed_origins
                .into_iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            password_attempts_per_conn: self.password_attempts_per_conn,
            password_attempts_per_ip: self.password_attempts_per_ip,
            history_messages: self.history_messages,
            history_bytes: self.history_bytes,
            history_memory: self.history_memory,
            history_ttl: self.history_ttl,
            ..Config::default()
        })
    }
}

impl Cli {
    /// The cluster settings: `None` without `--nats-url`; the other `--nats-*` flags
    /// without it, or contradicting each other, are errors.
    fn cluster_config(&self) -> Result<Option<crate::cluster::ClusterConfig>, ConfigError> {
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
        let mut c = crate::cluster::ClusterConfig::new(url);
        c.creds = self.nats_creds.clone();
        c.user = self.nats_user.clone();
        c.password = self.nats_password.clone();
        c.token = self.nats_token.clone();
        c.tls_ca = self.nats_tls_ca.clone();
        c.tls_client = self.nats_tls_cert.clone().zip(self.nats_tls_key.clone());
        c.node_name = self.node_name.clone().unwrap_or_else(|| self.listen.to_string());
        c.subject_prefix = self.nats_subject_prefix.clone();
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

    #[test]
    fn defaults_serve_on_localhost_8080() {
        let cfg = Cli::load_from(["corecast"]).unwrap().into_config().unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(cfg.ping_interval, Duration::from_secs(30));
        assert!(cfg.pin);
    }

    #[test]
    fn file_fills_only_what_flags_did_not_set() {
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
        let err = Cli::load_from(["corecast", "--ping-interval", "0.01"]).unwrap().into_config().unwrap_err();
        assert!(err.to_string().contains("--ping-interval"));
        assert!(Cli::load_from(["corecast", "--ping-interval", "abc"]).is_err());
    }
}
