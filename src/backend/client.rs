//! The backend thread: a current-thread tokio runtime with one pooled keep-alive HTTP/1.1
//! client. Every proxy call is its own task (so a stalled answer delays only the request
//! waiting for it), bounded by `--proxy-timeout`; webhook events are batched and posted
//! by one task, one batch at a time, so their order is kept (per room and overall), and a
//! batch is retried with backoff until it is delivered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Request;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use super::hooks::{self, Batch, Event};
use super::proto::{CallError, MAX_ANSWER_BYTES};
use super::sign::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::{bump, wall_ms, BackendConfig, BackendStats, Call, CallResult, Endpoint};

type Http = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Idle keep-alive connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Starts the thread. It ends when every [`super::Backend`] handle is gone (the calls
/// queue closes); webhook events still queued then are not sent.
pub(crate) fn spawn(
    cfg: Arc<BackendConfig>,
    stats: Arc<BackendStats>,
    tls: rustls::ClientConfig,
    calls: mpsc::UnboundedReceiver<Call>,
    hooks: Option<mpsc::Receiver<Event>>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new()
        .name("corecast-backend".into())
        .spawn(move || runtime.block_on(run(cfg, stats, tls, calls, hooks)))?;
    Ok(())
}

async fn run(
    cfg: Arc<BackendConfig>,
    stats: Arc<BackendStats>,
    tls: rustls::ClientConfig,
    mut calls: mpsc::UnboundedReceiver<Call>,
    hooks: Option<mpsc::Receiver<Event>>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.timeout));
    // The TLS layer below takes https:// URLs; plain http:// ones pass through.
    connector.enforce_http(false);
    let connector =
        HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(connector);
    let client: Http = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(1024)
        .build(connector);
    if let Some(rx) = hooks {
        tokio::spawn(webhooks(cfg.clone(), stats.clone(), client.clone(), rx));
    }
    while let Some(call) = calls.recv().await {
        let (cfg, stats, client) = (cfg.clone(), stats.clone(), client.clone());
        tokio::spawn(async move {
            let url = match call.endpoint {
                Endpoint::Connect => cfg.connect_url.as_deref(),
                Endpoint::Subscribe => cfg.subscribe_url.as_deref(),
                Endpoint::Publish => cfg.publish_url.as_deref(),
            };
            let result = match url {
                Some(url) => post(&client, url, wall_ms(), call.body, cfg.proxy_secret.as_deref(), cfg.timeout).await,
                None => Err(CallError::Stopped),
            };
            note(&stats, &result);
            let _ = call.reply.send(result);
        });
    }
}

/// Counts a call's outcome and keeps the up/down state, logging its changes.
fn note(stats: &BackendStats, result: &CallResult) {
    let failed = result.is_err();
    if let Err(e) = result {
        bump(&stats.call_errors);
        if *e == CallError::Timeout {
            bump(&stats.call_timeouts);
        }
    }
    if stats.down.swap(failed, Ordering::Relaxed) != failed {
        match result {
            Err(e) => tracing::warn!(error = %e, "application backend down"),
            Ok(_) => tracing::info!("application backend up again"),
        }
    }
}

/// POSTs `body` (JSON) to `url` with `ts` in `X-Corecast-Timestamp`, signed with `secret` when given; the answer's body when
/// it is 2xx, within `timeout` for the whole exchange.
async fn post(client: &Http, url: &str, ts: u64, body: Vec<u8>, secret: Option<&str>, timeout: Duration) -> CallResult {
    let mut req = Request::post(url).header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    req = req.header(TIMESTAMP_HEADER, ts.to_string());
    if let Some(secret) = secret {
        req = req.header(SIGNATURE_HEADER, sign::signature(secret.as_bytes(), &body));
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| CallError::BadAnswer(e.to_string()))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| CallError::BadAnswer(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(CallError::Status(status.as_u16()));
        }
        Ok(body.to_vec())
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(CallError::Timeout))
}

/// Why a request got no answer: a TLS failure (untrusted certificate, wrong name, …)
/// named as such, so the log and the refusal say what to fix; anything else is
/// `Unreachable`.
fn unreachable(e: &(dyn std::error::Error + 'static)) -> CallError {
    tls_failure(e).map_or(CallError::Unreachable, CallError::Tls)
}

/// The rustls error in `e`'s chain, if any. The TLS layers report it inside `io::Error`s
/// (nested), whose `source` skips the error they wrap: those are opened with `get_ref`.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        return tls_failure(inner);
    }
    e.source().and_then(tls_failure)
}

/// Collects events into batches (up to `--webhook-batch-size`, the first waiting at
/// most `--webhook-batch-interval` for more) and posts each until it is delivered.
async fn webhooks(cfg: Arc<BackendConfig>, stats: Arc<BackendStats>, client: Http, mut rx: mpsc::Receiver<Event>) {
    let Some(url) = cfg.webhook_url.clone() else { return };
    let size = cfg.webhook_batch_size.max(1);
    let mut batch: Vec<Event> = Vec::with_capacity(size);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + cfg.webhook_batch_interval;
        while batch.len() < size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let mut attempt = 0u32;
        loop {
            let sent_at = wall_ms();
            let body = serde_json::to_vec(&Batch { sent_at, events: &batch }).unwrap_or_default();
            let result = post(&client, &url, sent_at, body, cfg.webhook_secret.as_deref(), cfg.webhook_timeout).await;
            let failed = result.is_err();
            if stats.down.swap(failed, Ordering::Relaxed) != failed && !failed {
                tracing::info!("application backend up again");
            }
            match result {
                Ok(_) => {
                    bump(&stats.batches_delivered);
                    stats.events_delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    bump(&stats.batch_retries);
                    if attempt == 1 || attempt % 10 == 0 {
                        tracing::warn!(error = %e, attempt, events = batch.len(), "webhook batch not delivered; retrying");
                    }
                    tokio::time::sleep(hooks::backoff(attempt, cfg.webhook_max_backoff)).await;
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_found_inside_nested_io_errors() {
        let tls = rustls::Error::General("bad certificate".into());
        let nested = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert!(matches!(unreachable(&nested), CallError::Tls(m) if m.contains("bad certificate")));
        assert_eq!(unreachable(&std::io::Error::other("connection refused")), CallError::Unreachable);
    }
}
