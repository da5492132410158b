//! The application backend in the loop (docs/BACKEND.md): the proxy (corecast asks the
//! backend before an upgrade, a join or a publish goes on) and webhooks (corecast tells
//! the backend what happened, in signed batches).
//!
//! Off unless a `--proxy-*-url` or `--webhook-url` is given; then `client` runs one
//! extra thread with a small current-thread tokio runtime and a pooled keep-alive HTTP
//! client, like the cluster bridge. Shards never touch the network: a proxy call is a
//! message on an unbounded queue (bounded per shard by `--proxy-max-in-flight`, counted
//! by the shard) answered through a one-shot channel the waiting connection's task
//! awaits; webhook events go through a bounded queue that drops and counts when full.
//!
//! | module | concern |
//! |---|---|
//! | [`args`] | the flags and their validation |
//! | [`proto`] | request and answer bodies, pure decisions |
//! | [`sign`] | `X-Corecast-Signature` |
//! | [`hooks`] | webhook events, event sets, batch body, retry schedule |
//! | [`tls`] | `https://` URLs: rustls settings, trusted roots, `--backend-ca-file` |
//! | `client` | the thread: tokio runtime, HTTP client, webhook batching and retries |

pub mod args;
pub(crate) mod client;
pub mod hooks;
pub mod proto;
pub mod sign;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use crate::room::Hook;
use hooks::EventSet;
use proto::CallError;

/// The backend settings (the `--proxy-*` and `--webhook-*` flags). Its `Debug` output
/// hides the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `--proxy-connect-url`: decides every upgrade when set.
    pub connect_url: Option<String>,
    /// `--proxy-subscribe-url`: decides client joins of public rooms when set.
    pub subscribe_url: Option<String>,
    /// `--proxy-publish-url`: allows, denies or replaces client messages when set.
    pub publish_url: Option<String>,
    /// `--proxy-timeout`.
    pub timeout: Duration,
    /// `--proxy-max-in-flight`: proxy calls waiting per shard; over it: `unavailable`.
    pub max_in_flight: usize,
    /// `--proxy-connect-headers`: request headers passed to the connect proxy (lowercase).
    pub connect_headers: Vec<String>,
    /// `--proxy-connect-cookies`: pass the request's cookies to the connect proxy.
    pub connect_cookies: bool,
    /// `--proxy-secret`: signs proxy requests (`X-Corecast-Signature`) when set.
    pub proxy_secret: Option<String>,
    /// `--webhook-url`.
    pub webhook_url: Option<String>,
    /// `--webhook-secret`: signs webhook batches when set.
    pub webhook_secret: Option<String>,
    /// `--webhook-events`.
    pub webhook_events: EventSet,
    /// `--webhook-batch-size`: at most this many events per POST.
    pub webhook_batch_size: usize,
    /// `--webhook-batch-interval`: how long the first event of a batch waits for more.
    pub webhook_batch_interval: Duration,
    /// `--webhook-queue`: events waiting to be sent; beyond it they are dropped, counted
    /// and logged.
    pub webhook_queue: usize,
    /// `--webhook-timeout`: one POST's bound (a timeout is retried like a 5xx).
    pub webhook_timeout: Duration,
    /// `--webhook-max-backoff`: the longest pause between retries of a batch.
    pub webhook_max_backoff: Duration,
    /// `--backend-ca-file`: PEM certificates trusted for `https://` URLs besides the
    /// built-in roots.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<hidden>");
        f.debug_struct("BackendConfig")
            .field("connect_url", &self.connect_url)
            .field("subscribe_url", &self.subscribe_url)
            .field("publish_url", &self.publish_url)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("connect_headers", &self.connect_headers)
            .field("connect_cookies", &self.connect_cookies)
            .field("proxy_secret", &hidden(&self.proxy_secret))
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &hidden(&self.webhook_secret))
            .field("webhook_events", &self.webhook_events)
            .field("webhook_batch_size", &self.webhook_batch_size)
            .field("webhook_batch_interval", &self.webhook_batch_interval)
            .field("webhook_queue", &self.webhook_queue)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl BackendConfig {
    /// Whether anything of the backend is configured (otherwise no thread is started).
    pub fn any(&self) -> bool {
        self.connect_url.is_some()
            || self.subscribe_url.is_some()
            || self.publish_url.is_some()
            || self.webhook_url.is_some()
    }

    /// Whether webhooks are on and `kind` is among `--webhook-events` (the room core
    /// then does the work that event needs).
    pub fn wants(&self, kind: crate::room::HookKind) -> bool {
        self.webhook_url.is_some() && self.webhook_events.contains(kind)
    }

    /// Checks one URL flag: `http://` or `https://` with a host.
    pub fn check_url(flag: &str, url: &str) -> Result<(), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{flag}: not a URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!("{flag}: an http:// or https:// URL with a host is required"));
        }
        Ok(())
    }
}

/// Which proxy endpoint a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `--proxy-connect-url`.
    Connect,
    /// `--proxy-subscribe-url`.
    Subscribe,
    /// `--proxy-publish-url`.
    Publish,
}

impl Endpoint {
    fn index(self) -> usize {
        self as usize
    }
}

/// What a proxy call resolves to: the answer's body, or why there is none.
pub type CallResult = Result<Vec<u8>, CallError>;

/// One proxy call for the backend thread.
pub(crate) struct Call {
    endpoint: Endpoint,
    body: Vec<u8>,
    reply: oneshot::Sender<CallResult>,
}

/// Counters of the backend client, shared by the shards and the thread.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Proxy calls made, per endpoint (connect, subscribe, publish).
    pub calls: [AtomicU64; 3],
    /// Proxy calls that got no usable answer (timeout, unreachable, non-2xx, bad body).
    pub call_errors: AtomicU64,
    /// Proxy calls that timed out.
    pub call_timeouts: AtomicU64,
    /// Requests refused because their shard had `--proxy-max-in-flight` calls waiting.
    pub call_busy: AtomicU64,
    /// Whether the last proxy call (or webhook POST) reached the backend with a usable
    /// answer.
    pub down: AtomicBool,
    /// Webhook events queued.
    pub events_queued: AtomicU64,
    /// Webhook events dropped because the queue was full.
    pub events_dropped: AtomicU64,
    /// Webhook events delivered (2xx).
    pub events_delivered: AtomicU64,
    /// Webhook batches delivered.
    pub batches_delivered: AtomicU64,
    /// Webhook POSTs retried after a failure.
    pub batch_retries: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of the backend client for `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendReport {
    /// `up` or `down` (the last call's outcome).
    pub state: &'static str,
    /// Proxy calls per endpoint (connect, subscribe, publish).
    pub calls: [u64; 3],
    /// See [`BackendStats::call_errors`].
    pub call_errors: u64,
    /// See [`BackendStats::call_timeouts`].
    pub call_timeouts: u64,
    /// See [`BackendStats::call_busy`].
    pub call_busy: u64,
    /// Webhook events waiting in the queue now.
    pub webhook_queue: u64,
    /// See [`BackendStats::events_queued`].
    pub events_queued: u64,
    /// See [`BackendStats::events_dropped`].
    pub events_dropped: u64,
    /// See [`BackendStats::events_delivered`].
    pub events_delivered: u64,
    /// See [`BackendStats::batches_delivered`].
    pub batches_delivered: u64,
    /// See [`BackendStats::batch_retries`].
    pub batch_retries: u64,
}

/// The shards' handle on the backend thread. Cheap to share (it lives in `Shared`).
pub struct Backend {
    /// The settings.
    pub cfg: Arc<BackendConfig>,
    calls: mpsc::UnboundedSender<Call>,
    hooks: Option<mpsc::Sender<hooks::Event>>,
    /// Counters.
    pub stats: Arc<BackendStats>,
    nonce: u32,
    next_event: AtomicU64,
}

impl Backend {
    /// Starts the backend thread for `cfg` (when anything is configured).
    pub fn start(cfg: BackendConfig) -> std::io::Result<Option<Backend>> {
        if !cfg.any() {
            return Ok(None);
        }
        // Built (and the CA file read) before the thread starts, so a bad file stops
        // the server with a clear error rather than failing every call.
        let tls = tls::client_config(cfg.ca_file.as_deref())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let cfg = Arc::new(cfg);
        let stats = Arc::new(BackendStats::default());
        let (calls, calls_rx) = mpsc::unbounded_channel();
        let (hooks, hooks_rx) = match cfg.webhook_url {
            Some(_) => {
                let (tx, rx) = mpsc::channel(cfg.webhook_queue.max(1));
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        client::spawn(cfg.clone(), stats.clone(), tls, calls_rx, hooks_rx)?;
        Ok(Some(Backend { cfg, calls, hooks, stats, nonce: fastrand::u32(..), next_event: AtomicU64::new(0) }))
    }

    /// Sends one proxy call; the receiver resolves with the answer's body or the error
    /// (the thread applies `--proxy-timeout`). Never blocks. The caller bounds calls in
    /// flight per shard ([`proto::may_call`]) and counts refusals with [`Self::busy`].
    pub fn call(&self, endpoint: Endpoint, body: Vec<u8>) -> oneshot::Receiver<CallResult> {
        let (reply, rx) = oneshot::channel();
        bump(&self.stats.calls[endpoint.index()]);
        if let Err(mpsc::error::SendError(call)) = self.calls.send(Call { endpoint, body, reply }) {
            let _ = call.reply.send(Err(CallError::Stopped));
        }
        rx
    }

    /// Counts a request refused for `--proxy-max-in-flight`.
    pub fn busy(&self) {
        bump(&self.stats.call_busy);
    }

    /// Queues a webhook event from shard `shard` when webhooks are on and the kind is
    /// chosen; a full queue drops it (counted, and logged at most once per 1024 drops).
    pub fn hook(&self, shard: usize, hook: Hook) {
        let Some(tx) = &self.hooks else { return };
        if !self.cfg.webhook_events.contains(hook.kind) {
            return;
        }
        let n = self.next_event.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}-{shard}-{n}", self.nonce);
        let event = hooks::Event::new(id, &hook, wall_ms());
        match tx.try_send(event) {
            Ok(()) => bump(&self.stats.events_queued),
            Err(e) => {
                let dropped = self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                if dropped % 1024 == 0 {
                    let why = if matches!(e, mpsc::error::TrySendError::Full(_)) { "full" } else { "closed" };
                    tracing::warn!(dropped = dropped + 1, "webhook queue {why}: event dropped");
                }
            }
        }
    }

    /// The figures for `/health` and `/metrics`.
    pub fn report(&self) -> BackendReport {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let webhook_queue = self.hooks.as_ref().map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as u64);
        BackendReport {
            state: if s.down.load(Ordering::Relaxed) { "down" } else { "up" },
            calls: [get(&s.calls[0]), get(&s.calls[1]), get(&s.calls[2])],
            call_errors: get(&s.call_errors),
            call_timeouts: get(&s.call_timeouts),
            call_busy: get(&s.call_busy),
            webhook_queue,
            events_queued: get(&s.events_queued),
            events_dropped: get(&s.events_dropped),
            events_delivered: get(&s.events_delivered),
            batches_delivered: get(&s.batches_delivered),
            batch_retries: get(&s.batch_retries),
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
