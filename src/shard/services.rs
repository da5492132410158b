//! What a connection handler may use: the shard minus its connection table.
//!
//! Connection handlers (everything `poll_conn` dispatches to: HTTP serving, upgrade and
//! admission, WebSocket messages, client messages, close, push) run while the
//! connection table is borrowed for the connection they serve. They are methods of
//! [`Services`], which holds no path to the table: a handler that tried to borrow it
//! again would not compile (see the module doc of `shard` for the whole rule). Work that
//! must reach a connection later (after asking other shards, after the blocking pool)
//! goes through [`Services::defer`], which hands the whole shard to a new task only
//! when that task runs.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::ask::Asks;
use super::auth::Session;
use super::conns::{Conn, ConnId, Phase};
use super::members::LocalRooms;
use super::mesh::{self, Mesh};
use super::outbox::{Caps, Pushed};
use super::Shard;
use crate::config::Config;
use crate::limits::Rate;
use crate::metrics::{inc, ShardStats};
use crate::room::RoomOut;
use crate::rt;
use crate::store::Journal;
use crate::ws::frame;
use crate::Shared;

/// Size of the shard's read scratch buffer: every connection reads into it in turn, so
/// no connection owns a read buffer while idle (docs/DESIGN-NOTES.md, "Reads through a per-shard scratch buffer").
const SCRATCH: usize = 64 * 1024;

/// Everything of a shard that connection handlers use; the connection table is not in
/// it. Created on, and never leaves, its executor thread.
pub(crate) struct Services {
    /// This shard's index.
    pub(super) id: usize,
    /// Server configuration.
    pub(super) cfg: Arc<Config>,
    /// State shared read-only (or atomically) by all shards.
    pub(super) shared: Arc<Shared>,
    /// Senders to every shard's inbox.
    pub(super) mesh: Mesh,
    /// Counters.
    pub(super) stats: ShardStats,
    /// Per-connection rate limit (none: unlimited).
    pub(super) rate: Option<Rate>,
    /// Queue caps of every connection.
    pub(super) caps: Caps,
    /// The ping frame, built once.
    pub(super) ping: Bytes,
    /// Grants, token expiry and password attempts of connections that have any (JWT
    /// users, password guessers); plain guests have no entry.
    pub(super) sessions: RefCell<FxHashMap<ConnId, Session>>,
    /// Local members of each room with members here.
    pub(super) members: RefCell<LocalRooms>,
    /// Read buffer shared by all connections of the shard, borrowed only inside a poll.
    pub(super) scratch: RefCell<Box<[u8]>>,
    /// simd-json's reusable buffers.
    pub(super) json: RefCell<simd_json::Buffers>,
    /// Upgraded WebSocket connections open now.
    pub(super) ws_open: Cell<u64>,
    /// Banned users (`POST /api/disconnect` with `ban_secs`) and until when (wall ms).
    pub(super) bans: RefCell<FxHashMap<Arc<str>, u64>>,
    /// Questions to other shards awaiting answers.
    pub(super) asks: Asks,
    /// permessage-deflate: the shard's compressor and who takes compressed frames.
    pub(super) deflate: super::compress::Deflate,
    /// The durable log (`--data-dir`): what the owner sequences, and the answers that
    /// wait for it under `--fsync always`.
    pub(super) journal: Option<Rc<Journal<RoomOut>>>,
    /// Application backend: proxy calls this shard has waiting (`--proxy-max-in-flight`).
    pub(super) proxy_in_flight: Cell<usize>,
    /// Application backend: each connection's proxied messages, in send order.
    pub(super) chains: RefCell<FxHashMap<ConnId, super::backend::Chain>>,
    /// Clocks and ids.
    ids: Ids,
    /// Flow control: whether to stop reading, and who stopped.
    flow: Flow,
    draining: Cell<bool>,
    /// The shard that owns these services. Private to this module: only [`Services::defer`]
    /// upgrades it, inside the task it spawns, so no handler reaches the table through it.
    me: Weak<Shard>,
}

/// The shard clock and the ids it hands out.
struct Ids {
    started: Instant,
    nonce: u32,
    next_token: Cell<u32>,
}

/// Congestion state: connections stop reading while some inbox is over its high-water
/// mark.
struct Flow {
    /// Cached "some inbox is over its high-water mark", refreshed at most once per ms.
    congested: Cell<(u32, bool)>,
    /// Connections that stopped reading because of congestion.
    paused: RefCell<Vec<ConnId>>,
    /// Whether the task that resumes them is running.
    resuming: Cell<bool>,
    /// Shard time the last paused connections were resumed, while it can still matter
    /// to a heartbeat (see [`Services::reading_since`]).
    resumed_at: Cell<Option<u32>>,
}

impl Services {
    /// The services of shard `id`; `me` is the shard being built around them.
    pub(super) fn new(
        id: usize,
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        mesh: Mesh,
        me: Weak<Shard>,
        journal: Option<Rc<Journal<RoomOut>>>,
        stats: ShardStats,
    ) -> Services {
        Services {
            id,
            journal,
            rate: Rate::new(cfg.rate_limit, cfg.rate_burst),
            caps: Caps { bytes: cfg.queue_bytes, frames: cfg.queue_frames },
            cfg,
            shared,
            mesh,
            stats,
            ping: frame::ping_frame(b""),
            sessions: RefCell::new(FxHashMap::default()),
            members: RefCell::new(LocalRooms::default()),
            scratch: RefCell::new(vec![0u8; SCRATCH].into_boxed_slice()),
            json: RefCell::new(simd_json::Buffers::new(4096)),
            ws_open: Cell::new(0),
            bans: RefCell::new(FxHashMap::default()),
            asks: Asks::default(),
            deflate: super::compress::Deflate::default(),
            proxy_in_flight: Cell::new(0),
            chains: RefCell::new(FxHashMap::default()),
            ids: Ids { started: Instant::now(), nonce: fastrand::u32(..), next_token: Cell::new(0) },
            flow: Flow {
                congested: Cell::new((u32::MAX, false)),
                paused: RefCell::new(Vec::new()),
                resuming: Cell::new(false),
                resumed_at: Cell::new(None),
            },
            draining: Cell::new(false),
            me,
        }
    }

    /// Runs `work` as a new task that receives the whole shard (the connection table
    /// included) when it runs, never before the caller returns: the runtime may start a
    /// new task at once, inside the spawning call, so the task first yields once, and
    /// nothing of `work` runs while the caller holds the table. Does nothing once the
    /// shard is gone.
    pub(super) fn defer<F, Fut>(&self, work: F)
    where
        F: FnOnce(Rc<Shard>) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let me = self.me.clone();
        rt::spawn(async move {
            yield_once().await;
            if let Some(shard) = me.upgrade() {
                work(shard).await;
            }
        });
    }

    /// Sends a room owner's output on: to a shard's inbox, or (cluster-bound) to the
    /// bridge's queue. This is the one place room outputs become runtime messages.
    pub fn route(&self, out: RoomOut) {
        let out = match &self.journal {
            Some(journal) => match super::durable::intercept(journal, out, &self.stats) {
                Some(out) => out,
                None => return,
            },
            None => out,
        };
        self.send_out(out);
    }

    /// Sends a room owner's output where it goes, now.
    pub(super) fn send_out(&self, out: RoomOut) {
        match out {
            RoomOut::Shard(to, m) => self.mesh.send(to, m.into()),
            RoomOut::Cluster(c) => {
                if let Some(bus) = &self.shared.bus {
                    bus.send(c.into());
                }
            }
            // Taken by `route` when there is a log; none is emitted without one.
            RoomOut::Log(_) => {}
            RoomOut::Hook(h) => {
                if let Some(backend) = &self.shared.backend {
                    backend.hook(self.id, h);
                }
            }
        }
    }

    /// Shard clock in milliseconds (wraps after ~49 days; compare with `wrapping_sub`).
    pub fn now(&self) -> u32 {
        self.ids.started.elapsed().as_millis() as u32
    }

    /// Milliseconds since the shard started.
    pub fn uptime_ms(&self) -> u64 {
        self.ids.started.elapsed().as_millis() as u64
    }

    /// Wall-clock seconds since the Unix epoch (token times).
    pub fn wall_secs() -> u64 {
        Self::wall_ms() / 1000
    }

    /// Wall-clock milliseconds since the Unix epoch (message `ts`).
    pub fn wall_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// A fresh join token.
    pub(super) fn token(&self) -> u32 {
        let t = self.ids.next_token.get().wrapping_add(1);
        self.ids.next_token.set(t);
        t
    }

    /// The connection id as shown to clients in `welcome`.
    pub(super) fn conn_label(&self, id: ConnId) -> String {
        format!("{:08x}-{}-{:x}", self.ids.nonce, self.id, id.as_u64())
    }

    /// Whether the shard is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Marks the shard as shutting down; returns whether it already was.
    pub(super) fn start_draining(&self) -> bool {
        self.draining.replace(true)
    }

    /// Whether any shard's inbox is over [`mesh::HIGH_WATER`]: connections then stop
    /// reading, and TCP flow control pushes back on the clients producing the load.
    pub fn congested(&self) -> bool {
        let now = self.now();
        let (at, congested) = self.flow.congested.get();
        if at == now {
            return congested;
        }
        let congested = (0..self.mesh.len()).any(|s| self.mesh.depth(s) > mesh::HIGH_WATER);
        self.flow.congested.set((now, congested));
        congested
    }

    /// Shard time since which this shard reads every connection: now while connections
    /// are paused by congestion, else when they were last resumed; `None` when no pause
    /// is recent enough to matter. A peer's silence before that proves nothing: its bytes
    /// may be waiting unread.
    pub fn reading_since(&self) -> Option<u32> {
        let now = self.now();
        if !self.flow.paused.borrow().is_empty() {
            return Some(now);
        }
        let at = self.flow.resumed_at.get()?;
        // A resume older than two ping intervals cannot spare anyone; forgetting it also
        // keeps the wrapping u32 clock from ever making an old stamp look recent.
        let horizon = 2 * self.cfg.ping_interval.as_millis() as u32;
        if now.wrapping_sub(at) > horizon {
            self.flow.resumed_at.set(None);
            return None;
        }
        Some(at)
    }

    /// Parks connection `id` until congestion clears; one task per shard resumes them all.
    pub fn pause(&self, id: ConnId) {
        inc(&self.stats.congestion_pauses);
        self.flow.paused.borrow_mut().push(id);
        if self.flow.resuming.replace(true) {
            return;
        }
        self.defer(|shard| async move {
            while shard.congested() {
                rt::sleep(Duration::from_millis(1)).await;
            }
            shard.flow.resuming.set(false);
            shard.flow.resumed_at.set(Some(shard.now()));
            let paused = std::mem::take(&mut *shard.flow.paused.borrow_mut());
            let mut conns = shard.conns.borrow_mut();
            for id in paused {
                if let Some(conn) = conns.get_mut(id) {
                    conn.wake();
                }
            }
        });
    }

    /// Sends `frame` to `conn` now or queues it; a connection over its caps is closed
    /// as a slow consumer (1013) without its backlog. Returns whether the frame was taken.
    pub fn push(&self, conn: &mut Conn, frame: Bytes) -> bool {
        let pushed = conn.push(frame, self.caps);
        self.pushed(conn, pushed)
    }

    /// [`Services::push`] for several frames at once, `iov` being their iovecs (see
    /// [`super::outbox::Outbox::push_batch`]).
    pub fn push_batch(&self, conn: &mut Conn, frames: &[Bytes], iov: &[std::io::IoSlice<'_>]) -> bool {
        let pushed = conn.push_batch(frames, iov, self.caps);
        self.pushed(conn, pushed)
    }

    /// [`Services::push_batch`] whose `sendmsg` already ran elsewhere (the io_uring send
    /// path) with outcome `sent`: the unsent tail is queued exactly as after a direct send.
    /// `frames` must fit one `sendmsg` (at most `MAX_IOV`).
    pub fn push_batch_sent(
        &self,
        conn: &mut Conn,
        frames: &[Bytes],
        iov: &[std::io::IoSlice<'_>],
        sent: Result<usize, rustix::io::Errno>,
    ) -> bool {
        let pushed = conn.out.push_batch_via(|_| sent, frames, iov, self.caps);
        self.pushed(conn, pushed)
    }

    /// Acts on the outcome of a push: wake the task to flush, or close a slow consumer.
    fn pushed(&self, conn: &mut Conn, pushed: Pushed) -> bool {
        match pushed {
            Pushed::Sent => true,
            Pushed::Queued => {
                inc(&self.stats.deliveries_queued);
                true
            }
            Pushed::QueuedWake => {
                inc(&self.stats.deliveries_queued);
                conn.wake();
                true
            }
            Pushed::Full => {
                inc(&self.stats.slow_consumer_closes);
                self.close(conn, crate::ws::close::TRY_LATER, "slow consumer: too far behind", true);
                false
            }
            Pushed::Broken => {
                conn.enter(Phase::Done, self.now());
                conn.wake();
                false
            }
            Pushed::Sealed => false,
        }
    }

    /// Starts the closing handshake: queue a close frame (after dropping the unsent
    /// backlog when `discard`), stop reading application messages, and wait for the
    /// peer's close (bounded by the sweep's close timeout).
    pub fn close(&self, conn: &mut Conn, code: u16, reason: &str, discard: bool) {
        match conn.phase {
            Phase::Open => {
                conn.out.seal(frame::close_frame(code, reason), discard);
                conn.enter(Phase::Closing, self.now());
            }
            // An HTTP connection may still have an answer in flight: linger, so that
            // unread input cannot turn our FIN into a reset that destroys it.
            Phase::Http => conn.enter(Phase::Linger, self.now()),
            Phase::Closing | Phase::ClosingDiscard | Phase::Linger | Phase::Done => return,
        }
        conn.wake();
    }
}

/// Suspends the task once (it is woken at once and runs again on the executor's next
/// turn): what [`Services::defer`] needs so its work never runs inside the spawning call.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
