//! A shard: one pinned core running its own executor, owning everything it touches.
//!
//! A shard accepts from its own `SO_REUSEPORT` listener, owns those connections
//! ([`conns`]), the local membership of rooms they joined (`members`), and the rooms that
//! hash to it ([`crate::room`]). Shards share no mutable state; they exchange
//! [`msg::ShardMsg`]s through the [`mesh`]. Inside a shard everything is single-threaded,
//! so the state sits in `RefCell`s that are never borrowed across an `.await`.
//!
//! Tasks per shard: one accept loop, one inbox loop (owner and member work, in arrival
//! order), one sweep (heartbeats and timeouts), and one task per connection.

mod ask;
mod auth;
pub mod conns;
mod http;
pub mod mesh;
pub mod msg;
pub mod outbox;
pub mod route;

mod conn;
mod fanout;
mod members;
mod sweep;

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use self::conns::{Conn, ConnId, Conns, Phase};
use self::fanout::Batch;
use self::members::LocalRooms;
use self::mesh::{Inbox, Mesh};
use self::msg::{Class, Query, Reply, Requester, ShardMsg};
use self::outbox::{Caps, Pushed};
use crate::cluster::BusIn;
use crate::config::Config;
use crate::limits::{IpTable, Rate};
use crate::metrics::{add, inc, ShardStats, Snapshot};
use crate::room::request::ReplyRef;
use crate::room::OwnedRooms;
use crate::room::{HistoryConfig, JoinStep, RoomOut, BROADCAST_ROOM};
use crate::rt;
use crate::ws::frame;
use crate::Shared;
use rustc_hash::FxHashMap;

/// Size of the shard's read scratch buffer: every connection reads into it in turn, so
/// no connection owns a read buffer while idle (docs/DESIGN-NOTES.md, "Reads through a per-shard scratch buffer").
const SCRATCH: usize = 64 * 1024;

/// State of one shard. Created on, and never leaves, its executor thread.
pub(crate) struct Shard {
    /// This shard's index.
    pub id: usize,
    /// Server configuration.
    pub cfg: Arc<Config>,
    /// State shared read-only (or atomically) by all shards.
    pub shared: Arc<Shared>,
    /// Per-connection rate limit (none: unlimited).
    pub rate: Option<Rate>,
    /// Counts for the IP addresses this shard owns.
    pub ips: RefCell<IpTable>,
    /// Grants, token expiry and password attempts of connections that have any (JWT
    /// users, password guessers); plain guests have no entry.
    pub sessions: RefCell<FxHashMap<ConnId, auth::Session>>,
    /// Minute (of the shard clock) when the IP table was last pruned.
    last_prune: Cell<u32>,
    /// Senders to every shard's inbox.
    pub mesh: Mesh,
    /// Connections accepted by this shard.
    pub conns: RefCell<Conns>,
    /// Local members of each room with members here.
    pub members: RefCell<LocalRooms>,
    /// Rooms this shard owns (sequences).
    pub owned: RefCell<OwnedRooms>,
    /// Live cluster nodes, sorted, this one included (from the bridge; just this node
    /// until the first update, and always when there is no cluster).
    nodes: RefCell<Arc<[u64]>>,
    /// Read buffer shared by all connections of the shard, borrowed only inside a poll.
    pub scratch: RefCell<Box<[u8]>>,
    /// simd-json's reusable buffers.
    pub json: RefCell<simd_json::Buffers>,
    /// Counters.
    pub stats: ShardStats,
    /// Queue caps of every connection.
    pub caps: Caps,
    /// The ping frame, built once.
    pub ping: Bytes,
    /// Upgraded WebSocket connections open now.
    pub ws_open: Cell<u64>,
    /// Questions to other shards awaiting answers.
    asks: ask::Asks,
    started: Instant,
    nonce: u32,
    next_token: Cell<u32>,
    draining: Cell<bool>,
    /// Cached "some inbox is over its high-water mark", refreshed at most once per ms.
    congested: Cell<(u32, bool)>,
    /// Connections that stopped reading because of congestion, and whether the task
    /// that resumes them is running.
    paused: RefCell<Vec<ConnId>>,
    resuming: Cell<bool>,
    accept_task: RefCell<Option<glommio::task::JoinHandle<()>>>,
    done: Notify,
}

impl Shard {
    fn new(id: usize, cfg: Arc<Config>, shared: Arc<Shared>, mesh: Mesh) -> Shard {
        let shards = mesh.len();
        Shard {
            id,
            rate: Rate::new(cfg.rate_limit, cfg.rate_burst),
            ips: RefCell::new(IpTable::default()),
            sessions: RefCell::new(FxHashMap::default()),
            last_prune: Cell::new(0),
            caps: Caps { bytes: cfg.queue_bytes, frames: cfg.queue_frames },
            owned: RefCell::new(
                OwnedRooms::new(shards, cfg.presence_events_max_members, history_config(&cfg, shards))
                    .with_cluster(shared.bus.as_ref().map_or(0, |b| b.node)),
            ),
            nodes: RefCell::new(Arc::from([shared.bus.as_ref().map_or(0, |b| b.node)])),
            cfg,
            mesh,
            conns: RefCell::new(Conns::default()),
            members: RefCell::new(LocalRooms::default()),
            scratch: RefCell::new(vec![0u8; SCRATCH].into_boxed_slice()),
            json: RefCell::new(simd_json::Buffers::new(4096)),
            stats: ShardStats::default(),
            ping: frame::ping_frame(b""),
            ws_open: Cell::new(0),
            asks: ask::Asks::default(),
            started: Instant::now(),
            nonce: fastrand::u32(..),
            next_token: Cell::new(0),
            draining: Cell::new(false),
            congested: Cell::new((u32::MAX, false)),
            paused: RefCell::new(Vec::new()),
            resuming: Cell::new(false),
            accept_task: RefCell::new(None),
            done: Notify::default(),
            shared,
        }
    }

    /// Sends a room owner's output on: to a shard's inbox, or (cluster-bound) to the
    /// bridge's queue. This is the one place room outputs become runtime messages.
    pub fn route(&self, out: RoomOut) {
        match out {
            RoomOut::Shard(to, m) => self.mesh.send(to, m.into()),
            RoomOut::Cluster(c) => {
                if let Some(bus) = &self.shared.bus {
                    bus.send(c.into());
                }
            }
        }
    }

    /// The node that must sequence `room`, when that is another node: the rendezvous
    /// winner among the live nodes. `None` (sequence here) without a cluster, and while
    /// the bus is down, so local traffic keeps flowing during an outage.
    fn remote_sequencer(&self, room: &str) -> Option<u64> {
        let bus = self.shared.bus.as_ref()?;
        if !bus.connected() {
            return None;
        }
        crate::cluster::nodes::sequencer(room, &self.nodes.borrow()).filter(|&n| n != bus.node)
    }

    /// Forwards a publish to node `to`, the room's sequencer. If the bridge cannot take
    /// it, an API caller hears "not sequenced" at once rather than after its timeout.
    fn forward(&self, to: u64, p: msg::Publish, broadcast: bool) {
        let Some(bus) = &self.shared.bus else { return };
        let reply = match &p.from {
            Requester::Conn(c) => c.reference.as_ref().map(|r| ReplyRef::Conn {
                shard: c.shard as u16,
                conn: c.conn.as_u64(),
                reference: r.to_string(),
            }),
            Requester::Api(r) => Some(ReplyRef::Api { shard: r.shard as u16, req: r.req }),
            Requester::Remote(_) => None,
        };
        let out = crate::cluster::BusOut::Forward { to, room: p.room, user: p.user, text: p.text, broadcast, reply };
        if !bus.send(out) {
            if let Requester::Api(r) = p.from {
                self.mesh.send(
                    r.shard,
                    ShardMsg::Reply { req: r.req, reply: Reply::Published { seq: None, shards: vec![] } },
                );
            }
        }
    }

    /// Handles what the cluster bridge relayed from other nodes.
    fn on_bus(&self, m: BusIn) {
        let sink = &mut |out: RoomOut| self.route(out);
        let mut owned = self.owned.borrow_mut();
        match m {
            BusIn::Frame { room, epoch, seq, node, frame } => owned.remote_frame(&room, epoch, seq, node, frame, sink),
            BusIn::Presence { room, node, user, present } => owned.remote_presence(&room, node, user, present, sink),
            BusIn::Users { room, node, users } => owned.remote_users(&room, node, &users, sink),
            BusIn::SyncReq { room, node } => owned.announce(Some(&room), Some(node), sink),
            BusIn::Nodes(nodes) => *self.nodes.borrow_mut() = nodes,
            BusIn::NodeGone(node) => owned.node_gone(node, sink),
            BusIn::Resync => owned.announce(None, None, sink),
        }
        drop(owned);
        self.count_cluster();
    }

    /// Shard clock in milliseconds (wraps after ~49 days; compare with `wrapping_sub`).
    pub fn now(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    /// Milliseconds since the shard started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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
    fn token(&self) -> u32 {
        let t = self.next_token.get().wrapping_add(1);
        self.next_token.set(t);
        t
    }

    /// The connection id as shown to clients in `welcome`.
    fn conn_label(&self, id: ConnId) -> String {
        format!("{:08x}-{}-{:x}", self.nonce, self.id, id.as_u64())
    }

    /// Whether the shard is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Whether any shard's inbox is over [`mesh::HIGH_WATER`]: connections then stop
    /// reading, and TCP flow control pushes back on the clients producing the load.
    pub fn congested(&self) -> bool {
        let now = self.now();
        let (at, congested) = self.congested.get();
        if at == now {
            return congested;
        }
        let congested = (0..self.mesh.len()).any(|s| self.mesh.depth(s) > mesh::HIGH_WATER);
        self.congested.set((now, congested));
        congested
    }

    /// Parks connection `id` until congestion clears; one task per shard resumes them all.
    pub fn pause(self: &Rc<Self>, id: ConnId) {
        self.paused.borrow_mut().push(id);
        if self.resuming.replace(true) {
            return;
        }
        let shard = self.clone();
        rt::spawn(async move {
            while shard.congested() {
                rt::sleep(Duration::from_millis(1)).await;
            }
            shard.resuming.set(false);
            let paused = std::mem::take(&mut *shard.paused.borrow_mut());
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

    /// [`Shard::push`] for several frames at once, `iov` being their iovecs (see
    /// [`outbox::Outbox::push_batch`]).
    pub fn push_batch(&self, conn: &mut Conn, frames: &[Bytes], iov: &[std::io::IoSlice<'_>]) -> bool {
        let pushed = conn.push_batch(frames, iov, self.caps);
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

    /// Handles one inbox message, in arrival order. Frames for local members go into
    /// `batch`, which the inbox loop delivers (see [`fanout`]).
    async fn handle(self: &Rc<Self>, msg: ShardMsg, batch: &mut Batch) {
        let sink = &mut |out: RoomOut| self.route(out);
        match msg {
            ShardMsg::Join(req) => {
                let step = self.owned.borrow_mut().join(*req, Self::wall_ms(), sink);
                if let JoinStep::CheckPassword { req, hash, password, epoch } = step {
                    self.check_password(req, hash, password, epoch);
                }
            }
            ShardMsg::Leave { room, user, from, epoch } => {
                self.owned.borrow_mut().leave(&room, &user, from, epoch, Self::wall_ms(), sink)
            }
            ShardMsg::Delete(req) => self.owned.borrow_mut().delete(*req, sink),
            ShardMsg::JoinRefused(r) => self.on_join_refused(*r),
            ShardMsg::RoomDeleted { room, epoch, frame, by } => self.on_room_deleted(&room, epoch, frame, &by),
            ShardMsg::Ip { ip, op } => self.on_ip(ip, op),
            ShardMsg::Publish(p) => match self.remote_sequencer(&p.room) {
                // A forwarded publish is sequenced where it lands, even if views of the
                // live nodes differ for a moment: never forwarded twice, never looping.
                Some(node) if !matches!(p.from, Requester::Remote(_)) => self.forward(node, *p, false),
                _ => {
                    inc(&self.stats.messages_published);
                    self.owned.borrow_mut().publish(*p, Self::wall_ms(), sink);
                    self.count_cluster();
                }
            },
            ShardMsg::Broadcast(p) => match self.remote_sequencer(BROADCAST_ROOM) {
                Some(node) if !matches!(p.from, Requester::Remote(_)) => self.forward(node, *p, true),
                _ => {
                    inc(&self.stats.messages_published);
                    self.owned.borrow_mut().broadcast(*p, Self::wall_ms(), sink);
                }
            },
            ShardMsg::Bus(m) => self.on_bus(*m),
            ShardMsg::Presence(q) => {
                self.owned.borrow_mut().presence(*q, sink);
                self.count_unanswered();
            }
            ShardMsg::History(q) => {
                self.owned.borrow_mut().history(*q, sink);
                self.count_unanswered();
            }
            ShardMsg::JoinAck(ack) => self.on_join_ack(*ack),
            ShardMsg::Deliver { room, frame, sent_at } => batch.push(Some(room), frame, sent_at),
            ShardMsg::DeliverAll { frame, sent_at } => batch.push(None, frame, sent_at),
            ShardMsg::ToConn { conn, frame } => {
                if let Some(c) = self.conns.borrow_mut().get_mut(conn) {
                    self.push(c, frame);
                }
            }
            ShardMsg::Query { reply, query: Query::Stats { room, limit } } => {
                let snapshot = self.snapshot(room.as_deref(), limit);
                let reply_msg = ShardMsg::Reply { req: reply.req, reply: Reply::Stats(Box::new(snapshot)) };
                self.mesh.send(reply.shard, reply_msg);
            }
            ShardMsg::Reply { req, reply } => self.on_reply(req, reply),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    /// Moves the owner's cluster counts (sequence gaps, epoch changes) to the bus counters.
    /// Runs after every publish in a cluster, and the counters are shared by every shard
    /// and the bridge: they are only written when there is something to add (rarely).
    fn count_cluster(&self) {
        if let Some(bus) = &self.shared.bus {
            let (gaps, epochs) = self.owned.borrow_mut().take_counts();
            for (counter, n) in [(&bus.stats.seq_gaps, gaps), (&bus.stats.epoch_changes, epochs)] {
                if n > 0 {
                    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// Moves the owner's count of requests from other nodes it could not answer to the
    /// shard's counters.
    fn count_unanswered(&self) {
        let n = self.owned.borrow_mut().take_unanswered();
        if n > 0 {
            add(&self.stats.remote_requests_unanswered, n);
        }
    }

    /// This shard's counters, gauges and largest rooms.
    fn snapshot(&self, room: Option<&str>, limit: usize) -> Snapshot {
        let owned = self.owned.borrow();
        let (rooms_public, rooms_personal) = owned.counts();
        let (history_bytes, history_messages) = owned.history_usage();
        Snapshot {
            shard: self.id,
            counters: self.stats.counters(),
            connections: self.conns.borrow().len() as u64,
            websockets: self.ws_open.get(),
            rooms_public,
            rooms_personal,
            inbox_depth: self.mesh.depth(self.id) as u64,
            fanout: self.stats.fanout.borrow().clone(),
            rooms: owned.summaries(room, limit),
            history_bytes: history_bytes as u64,
            history_messages: history_messages as u64,
        }
    }

    /// Starts the shutdown. For `drain_grace` the shard keeps serving while `/health`
    /// answers 503 and upgrades are refused (load balancers move traffic away); then it
    /// stops accepting, asks every client to go away (1001), and finishes once all are
    /// gone or the shutdown timeout has passed.
    fn begin_shutdown(self: &Rc<Self>) {
        if self.draining.replace(true) {
            return;
        }
        let shard = self.clone();
        rt::spawn(async move {
            if !shard.cfg.drain_grace.is_zero() {
                rt::sleep(shard.cfg.drain_grace).await;
            }
            shard.close_all().await;
        });
    }

    async fn close_all(self: &Rc<Self>) {
        if let Some(task) = self.accept_task.borrow_mut().take() {
            task.cancel();
        }
        for (_, conn) in self.conns.borrow_mut().iter_mut() {
            self.close(conn, crate::ws::close::GOING_AWAY, "server shutting down", false);
        }
        let deadline = Instant::now() + self.cfg.shutdown_timeout;
        while !self.conns.borrow().is_empty() && Instant::now() < deadline {
            rt::sleep(Duration::from_millis(10)).await;
        }
        // Whoever is left is not listening: drop what they are owed and close.
        for (_, conn) in self.conns.borrow_mut().iter_mut() {
            conn.out.clear();
            conn.enter(Phase::Done, self.now());
            conn.wake();
        }
        for _ in 0..100 {
            if self.conns.borrow().is_empty() {
                break;
            }
            rt::sleep(Duration::from_millis(5)).await;
        }
        tracing::debug!(shard = self.id, "shard drained");
        self.done.notify();
    }
}

/// A shard's history settings from the server's.
fn history_config(cfg: &Config, shards: usize) -> HistoryConfig {
    let caps = crate::room::history::Caps { messages: cfg.history_messages, bytes: cfg.history_bytes };
    HistoryConfig::split(caps, cfg.history_memory, cfg.history_ttl, shards)
}

/// Runs shard `id` until it has shut down: adopts its listener and starts its tasks.
pub(crate) async fn run(
    id: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    mesh: Mesh,
    inbox: Inbox,
    listener: socket2::Socket,
) {
    let shard = Rc::new(Shard::new(id, cfg, shared, mesh));
    let listener = rt::adopt_listener(listener);
    *shard.accept_task.borrow_mut() = Some(rt::spawn(accept_loop(shard.clone(), listener)));
    rt::spawn(inbox_loop(shard.clone(), inbox));
    rt::spawn(sweep::run(shard.clone()));
    shard.done.wait().await;
}

/// Accepts connections until cancelled. Out of descriptors (EMFILE/ENFILE), it backs
/// off and retries, logging at most once per interval: existing connections keep being
/// served, and accepting resumes by itself when descriptors free up.
async fn accept_loop(shard: Rc<Shard>, listener: rt::TcpListener) {
    // Each retry follows a pause of at least this long, so retries are bounded by
    // elapsed time / pause + 1 (counted as `accept_retries`; tests/it/exhaustion.rs checks it).
    const ACCEPT_PAUSE_EXHAUSTED: Duration = Duration::from_millis(50);
    const ACCEPT_PAUSE_OTHER: Duration = Duration::from_millis(5);
    const LOG_EVERY: Duration = Duration::from_secs(5);
    let mut last_log: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok(stream) => shard.adopt(stream),
            Err(e) => {
                let e = io::Error::from(e);
                let exhausted = rt::is_fd_exhaustion(&e);
                if exhausted {
                    inc(&shard.stats.accept_fd_exhausted);
                }
                if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    last_log = Some(Instant::now());
                    if exhausted {
                        tracing::warn!(shard = shard.id, error = %e, "out of file descriptors; pausing accepts");
                    } else {
                        tracing::warn!(shard = shard.id, error = %e, "accept failed");
                    }
                }
                rt::sleep(if exhausted { ACCEPT_PAUSE_EXHAUSTED } else { ACCEPT_PAUSE_OTHER }).await;
                inc(&shard.stats.accept_retries);
            }
        }
    }
}

/// Processes the inbox in arrival order, parking when it is empty. Deliveries are
/// corked into a [`Batch`] while more messages are waiting (see [`fanout`]); a message
/// that is not pure owner work ([`msg::Class::Ordered`]) first delivers the batch, so
/// frames keep their order against acks, replies and membership changes.
async fn inbox_loop(shard: Rc<Shard>, inbox: Inbox) {
    let mut batch = Batch::default();
    loop {
        let mut next = Some(poll_fn(|cx| inbox.poll_recv(cx)).await);
        while let Some(msg) = next {
            let class = msg.class();
            let delivery = class == Class::Delivery;
            // Frames keep their order against anything that touches local connections.
            if class == Class::Ordered && !batch.is_empty() {
                shard.deliver(&mut batch).await;
            }
            shard.handle(msg, &mut batch).await;
            if !delivery {
                rt::yield_if_needed().await;
            }
            if batch.is_full() {
                shard.deliver(&mut batch).await;
                rt::yield_if_needed().await;
            }
            // Drain whatever else is already there before giving others a turn.
            next = inbox.try_recv();
        }
        if !batch.is_empty() {
            shard.deliver(&mut batch).await;
        }
    }
}

/// A one-shot, single-threaded completion flag.
#[derive(Default)]
struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
