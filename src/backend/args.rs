//! The `--proxy-*` and `--webhook-*` flags (flattened into the server's command line,
//! so they also have `CORECAST_*` variables and TOML keys) and their validation.

use std::time::Duration;

use clap::Args;

use super::hooks::EventSet;
use super::BackendConfig;

/// Seconds as a duration (fractions allowed); the same rules as the server's other
/// `SECS` flags.
fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{s}` is not a non-negative number of seconds"));
    }
    Duration::try_from_secs_f64(v).map_err(|_| format!("`{s}` seconds is too long"))
}

/// The application backend: proxy and webhooks (docs/BACKEND.md).
#[derive(Debug, Args)]
#[command(next_help_heading = "Application backend")]
pub struct BackendArgs {
    /// URL the backend answers connect requests on: it then decides every upgrade.
    #[arg(long, env = "CORECAST_PROXY_CONNECT_URL", value_name = "URL")]
    pub proxy_connect_url: Option<String>,
    /// URL the backend answers subscribe requests on (client joins of public rooms).
    #[arg(long, env = "CORECAST_PROXY_SUBSCRIBE_URL", value_name = "URL")]
    pub proxy_subscribe_url: Option<String>,
    /// URL the backend answers publish requests on (client messages, before sequencing).
    #[arg(long, env = "CORECAST_PROXY_PUBLISH_URL", value_name = "URL")]
    pub proxy_publish_url: Option<String>,
    /// Seconds a proxy call may take; past it the request fails (closed).
    #[arg(long, env = "CORECAST_PROXY_TIMEOUT", default_value = "2", value_parser = secs, value_name = "SECS")]
    pub proxy_timeout: Duration,
    /// Proxy calls waiting per shard; beyond it requests are refused (`unavailable`).
    #[arg(long, env = "CORECAST_PROXY_MAX_IN_FLIGHT", default_value_t = 1024, value_name = "N")]
    pub proxy_max_in_flight: usize,
    /// Request headers passed to the connect proxy, comma-separated.
    #[arg(long, env = "CORECAST_PROXY_CONNECT_HEADERS", value_delimiter = ',', value_name = "NAMES")]
    pub proxy_connect_headers: Vec<String>,
    /// Pass the upgrade request's cookies to the connect proxy.
    #[arg(long, env = "CORECAST_PROXY_CONNECT_COOKIES")]
    pub proxy_connect_cookies: bool,
    /// Secret that signs proxy requests (X-Corecast-Signature), as webhooks are signed.
    #[arg(long, env = "CORECAST_PROXY_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub proxy_secret: Option<String>,
    /// URL webhook batches are POSTed to.
    #[arg(long, env = "CORECAST_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Secret that signs webhook batches (X-Corecast-Signature: sha256=…).
    #[arg(long, env = "CORECAST_WEBHOOK_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Webhook events to send, comma-separated (room_occupied, room_vacated, member_joined,
    /// member_left, user_online, user_offline, message_published); `all` is every one but
    /// message_published, which is sent only when named (e.g. `all,message_published`).
    #[arg(long, env = "CORECAST_WEBHOOK_EVENTS", default_value = "all", value_name = "LIST")]
    pub webhook_events: String,
    /// Most events in one webhook POST.
    #[arg(long, env = "CORECAST_WEBHOOK_BATCH_SIZE", default_value_t = 100, value_name = "N")]
    pub webhook_batch_size: usize,
    /// Seconds the first event of a batch waits for more before the batch is sent.
    #[arg(long, env = "CORECAST_WEBHOOK_BATCH_INTERVAL", default_value = "0.1", value_parser = secs, value_name = "SECS")]
    pub webhook_batch_interval: Duration,
    /// Webhook events waiting to be sent; beyond it new ones are dropped (counted, logged).
    #[arg(long, env = "CORECAST_WEBHOOK_QUEUE", default_value_t = 100_000, value_name = "N")]
    pub webhook_queue: usize,
    /// Seconds one webhook POST may take before it is retried.
    #[arg(long, env = "CORECAST_WEBHOOK_TIMEOUT", default_value = "5", value_parser = secs, value_name = "SECS")]
    pub webhook_timeout: Duration,
    /// Longest pause in seconds between retries of an undelivered webhook batch.
    #[arg(long, env = "CORECAST_WEBHOOK_MAX_BACKOFF", default_value = "10", value_parser = secs, value_name = "SECS")]
    pub webhook_max_backoff: Duration,
    /// PEM file of CA certificates trusted for https:// proxy and webhook URLs, besides
    /// the built-in (Mozilla) roots: for a backend with a privately signed certificate.
    #[arg(long, env = "CORECAST_BACKEND_CA_FILE", value_name = "PEM")]
    pub backend_ca_file: Option<std::path::PathBuf>,
}

impl BackendArgs {
    /// Validates the flags: http:// or https:// URLs, a readable CA file, positive bounds, known event names; a secret
    /// or webhook setting without its URL is an error rather than silently unused.
    pub fn into_config(self) -> Result<BackendConfig, String> {
        let url = |flag: &str, u: Option<String>| -> Result<Option<String>, String> {
            match u.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()) {
                Some(u) => BackendConfig::check_url(flag, &u).map(|()| Some(u)),
                None => Ok(None),
            }
        };
        let connect_url = url("--proxy-connect-url", self.proxy_connect_url)?;
        let subscribe_url = url("--proxy-subscribe-url", self.proxy_subscribe_url)?;
        let publish_url = url("--proxy-publish-url", self.proxy_publish_url)?;
        let webhook_url = url("--webhook-url", self.webhook_url)?;
        if self.proxy_timeout.is_zero() || self.webhook_timeout.is_zero() {
            return Err("--proxy-timeout and --webhook-timeout must be positive".into());
        }
        if self.proxy_max_in_flight == 0 || self.webhook_batch_size == 0 || self.webhook_queue == 0 {
            return Err("--proxy-max-in-flight, --webhook-batch-size and --webhook-queue must be at least 1".into());
        }
        if self.webhook_secret.is_some() && webhook_url.is_none() {
            return Err("--webhook-secret needs --webhook-url".into());
        }
        let secret_len = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() < 16);
        if secret_len(&self.webhook_secret) || secret_len(&self.proxy_secret) {
            return Err("--webhook-secret and --proxy-secret must be at least 16 bytes".into());
        }
        if let Some(path) = &self.backend_ca_file {
            super::tls::load_ca_file(path).map_err(|e| e.to_string())?;
        }
        let webhook_events = EventSet::parse(&self.webhook_events).map_err(|e| format!("--webhook-events: {e}"))?;
        Ok(BackendConfig {
            connect_url,
            subscribe_url,
            publish_url,
            timeout: self.proxy_timeout,
            max_in_flight: self.proxy_max_in_flight,
            connect_headers: self
                .proxy_connect_headers
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            connect_cookies: self.proxy_connect_cookies,
            proxy_secret: self.proxy_secret,
            webhook_url,
            webhook_secret: self.webhook_secret,
            webhook_events,
            webhook_batch_size: self.webhook_batch_size,
            webhook_batch_interval: self.webhook_batch_interval,
            webhook_queue: self.webhook_queue,
            webhook_timeout: self.webhook_timeout,
            webhook_max_backoff: self.webhook_max_backoff,
            ca_file: self.backend_ca_file,
        })
    }
}
