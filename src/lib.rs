//! corecast: a thread-per-core WebSocket broadcaster and chat engine.
//!
//! One pinned executor per core ("shard") accepts its own connections through its own
//! `SO_REUSEPORT` listener and owns all their state. Rooms are sequenced by one owner
//! shard each; a room message is serialized once into a single frame that every member,
//! on every shard, receives as a refcount clone. Shards share no locks: they talk only
//! through lock-free inboxes.
//!
//! # Module map
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | flags, `CORECAST_*` env, TOML file → validated [`Config`] |
//! | [`auth`] | JWT validation, guests, room allow-lists, room passwords (argon2) |
//! | [`limits`] | rate limit (GCRA token bucket), per-IP table |
//! | [`store`] | the durable log (`--data-dir`): per-shard writer, replay at start |
//! | [`rt`] | the only code that calls glommio: executors, pinning, listeners, spawning, timers |
//! | `shard` | a shard: accept loop, inbox, connections, local membership, sweep |
//! | `shard::mesh` | lock-free inter-shard inboxes with park/wake |
//! | `shard::route` | room → owner shard |
//! | `shard::outbox` | per-connection write queue: direct send, batched flush, caps |
//! | [`room`] | owner side of rooms (pure core, emits [`room::RoomOut`]): `seq`, `ts`, presence, history |
//! | [`ws`] | RFC 6455: [`ws::frame`], [`ws::reader`], [`ws::handshake`] (pure; crate `corecast-wire`) |
//! | [`protocol`] | protocol v1 JSON: [`protocol::client`] parse, [`protocol::server`] frames (crate `corecast-wire`) |
//! | [`http`] | HTTP/1.1 responses and endpoints; request heads from crate `corecast-wire` |
//! | [`metrics`] | per-shard counters |
//! | [`journal`] | the durable log's format (pure): records, scanner, rebuild of rooms' streams |
//! | [`cluster`] | optional NATS bus between nodes: bridge thread, subjects, sequencer choice, wire format |
//! | [`backend`] | optional application backend: connect/subscribe/publish proxy, signed webhooks |
//!
//! # Embedding
//!
//! [`start`] binds, spawns the shards and returns a [`ServerHandle`]; tests start the
//! real server on port 0 this way and stop it with [`ServerHandle::shutdown`].

pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod room;
pub mod rt;
pub(crate) mod shard;
pub mod store;

// The pure wire layer lives in its own crate (crates/wire) so that bench-client can
// share it without linking the server; re-exported here under the old paths, so
// `crate::ws::…` and `crate::protocol::…` resolve as before.
pub use corecast_wire::{protocol, ws};

/// The per-connection write queue, public so that `benches/fanout.rs` can measure the
/// fan-out's per-delivery path (allocations, syscalls) outside a running shard.
pub use shard::outbox;

/// Bytes of one connection's state in its shard's table, heap parts that are only there
/// while something is queued or being parsed not included: what `benches/million_share.rs`
/// lays out per member to model a shard's memory traffic in a huge room.
pub fn conn_state_bytes() -> usize {
    std::mem::size_of::<shard::conns::Conn>()
}

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use config::Config;
pub use error::ServerError;

/// A running server: its address, and the means to stop it and wait for it.
pub struct ServerHandle {
    addr: SocketAddr,
    shards: usize,
    stopper: Stopper,
    threads: Vec<rt::ShardThread>,
    bridge: Option<cluster::bridge::BridgeThread>,
    nudger: Option<rt::nudge::Nudger>,
}

/// Asks a server to shut down gracefully. Cheap to clone, usable from any thread
/// (a signal handler thread, a test).
#[derive(Clone)]
pub struct Stopper {
    mesh: shard::mesh::Mesh,
}

impl Stopper {
    /// Starts the graceful shutdown: shards stop accepting, send close 1001 to every
    /// client (1012 with `--data-dir`, after the log is flushed and synced: the history
    /// survives, come back), flush, and exit within the configured shutdown timeout.
    pub fn stop(&self) {
        // In a cluster each shard first hands its rooms' streams on; after the last one
        // the bridge says goodbye (others drop this node's users at once) and stops
        // (`cluster::Bus::shard_left`).
        self.mesh.send_all(|| shard::msg::ShardMsg::Shutdown);
    }
}

impl ServerHandle {
    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of shards running.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// A handle that can stop the server from elsewhere.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Begins a graceful shutdown (see [`Stopper::stop`]).
    pub fn shutdown(&self) {
        self.stopper.stop();
    }

    /// Waits until every shard (and the cluster bridge, if any) has finished.
    pub fn join(self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (i, t) in self.threads.into_iter().enumerate() {
            if t.join().is_err() && result.is_ok() {
                result = Err(ServerError::ShardFailed(i));
            }
        }
        if let Some(b) = self.bridge {
            if !b.join() && result.is_ok() {
                result = Err(ServerError::BridgeFailed);
            }
        }
        if let Some(n) = self.nudger {
            n.join();
        }
        result
    }
}

/// Read-only (or atomic) state every shard holds: built once at start.
pub(crate) struct Shared {
    /// Who may connect.
    pub auth: auth::Authenticator,
    /// WebSocket connections open on the whole server. The one cross-shard counter:
    /// an atomic touched at upgrade and close only, never on a message path.
    pub websockets: AtomicU64,
    /// The cluster bridge's queue and state (none: single node).
    pub bus: Option<cluster::Bus>,
    /// The application backend's client (none: no `--proxy-*-url`, no `--webhook-url`).
    pub backend: Option<backend::Backend>,
}

/// Binds `config.listen` once per shard and starts the shards.
pub fn start(config: Config) -> Result<ServerHandle, ServerError> {
    let auth = auth::Authenticator::new(&config).map_err(ServerError::Auth)?;
    tracing::info!("authentication: {}", auth.describe());
    let shards = config.effective_shards();
    let bind_err = |source| ServerError::Bind { addr: config.listen, source };
    let sockets = rt::bind_listeners(config.listen, shards, config.backlog).map_err(bind_err)?;
    let addr = sockets.first().and_then(|s| s.local_addr().ok()).and_then(|a| a.as_socket()).unwrap_or(config.listen);
    // With --data-dir: every room rebuilt from the log, handed to its owner under the
    // current shard count, before any shard runs.
    let mut starts: Vec<Option<store::ShardStart>> = match &config.data_dir {
        Some(dir) => {
            let caps = (config.history_messages, config.history_bytes);
            let owner = |room: &str| shard::route::owner(room, shards);
            let recovered = store::recover(dir, shards, caps, owner)
                .map_err(|source| ServerError::DataDir { path: dir.clone(), source })?;
            recovered.shards.into_iter().map(Some).collect()
        }
        None => (0..shards).map(|_| None).collect(),
    };
    let (mesh, inboxes) = shard::mesh::mesh(shards);
    // Only with a --proxy-*-url or --webhook-url: one more thread, like the bridge.
    let backend = backend::Backend::start(config.backend.clone()).map_err(ServerError::Backend)?;
    // Only with --nats-url: one more thread, with its own small tokio runtime.
    let (bus, bridge) = match &config.cluster {
        Some(c) => {
            let (bus, bridge) = cluster::bridge::start(c, mesh.clone()).map_err(ServerError::Cluster)?;
            (Some(bus), Some(bridge))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared { auth, websockets: AtomicU64::new(0), bus, backend });
    let cpus = rt::allowed_cpus();
    let config = Arc::new(config);
    let stopper = Stopper { mesh: mesh.clone() };
    let mut threads = Vec::with_capacity(shards);
    let nudges: Vec<_> = (0..shards).map(|_| rt::nudge::Nudge::new()).collect();
    // A shard that cannot be nudged still runs; the nudge only guards against a stall.
    let nudger = rt::nudge::Nudger::start(&nudges)
        .map_err(|e| tracing::warn!(error = %e, "could not start the nudge thread"))
        .ok();
    for (i, ((socket, inbox), nudge)) in sockets.into_iter().zip(inboxes).zip(nudges).enumerate() {
        let cpu = (config.pin && !cpus.is_empty()).then(|| cpus[i % cpus.len()]);
        let (cfg, mesh, shared) = (config.clone(), mesh.clone(), shared.clone());
        let start = starts.get_mut(i).and_then(Option::take);
        let run = move || shard::run(i, cfg, shared, mesh, inbox, socket, start, nudge);
        match rt::spawn_shard(i, cpu, &config, run) {
            Ok(t) => threads.push(t),
            Err(source) => {
                stopper.stop();
                for t in threads {
                    let _ = t.join();
                }
                if let Some(b) = bridge {
                    b.join();
                }
                return Err(ServerError::Shard { shard: i, source });
            }
        }
    }
    Ok(ServerHandle { addr, shards, stopper, threads, bridge, nudger })
}
