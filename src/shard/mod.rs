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
//!
//! # Who may borrow the connection table
//!
//! A connection's task borrows the table for the whole dispatch of what it read, so a
//! second borrow from anything that dispatch reaches would panic the shard on client
//! input. The types rule it out instead of a convention:
//!
//! * [`Shard`] is [`Services`] plus the table (and the owner, IP-owner and lifecycle
//!   state). Connection handlers (`on_input`, HTTP serving, upgrade and admission,
//!   WebSocket and client messages, close, push) are methods of `Services` and receive
//!   `&Services` and `&mut Conn`. `Services` has no field leading to the table, and the
//!   connection task calls into it with the table borrowed and no `Shard` in scope
//!   (`conn::poll_conn` takes `&Services` and the table separately). So a handler that
//!   borrows the table cannot compile.
//! * Work that must touch a connection later (an HTTP answer that asks other shards, the
//!   per-IP slot during admission, password attempts and hashing on the blocking pool)
//!   goes through [`Services::defer`]: it spawns a task that receives `Rc<Shard>` only
//!   when it runs, after the dispatch has released the table. The back pointer it uses
//!   is private to `services`, so `defer` is the only way from `&Services` to the table.
//! * Shard-level code (the inbox loop, the sweep, deferred tasks) borrows the table and
//!   reaches connections through [`Shard::with_conn`] or the same `&Services` handlers.
//!
//! Decisions that need no socket (sweep actions, admission refusals, HTTP routing
//! answers, client-message checks) are pure functions next to the code that applies
//! them, each with unit tests.

mod admin;
mod api;
mod ask;
mod auth;
mod backend;
mod compress;
pub mod conns;
mod http;
pub mod mesh;
pub mod msg;
pub mod outbox;
pub mod route;
mod services;

mod conn;
mod durable;
mod fanout;
mod forwards;
mod members;
mod sweep;

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use self::conns::{Conn, ConnId, Conns, Phase};
use self::fanout::Batch;
use self::forwards::{Forwarded, Forwards};
use self::mesh::{Inbox, Mesh};
use self::msg::{Class, Query, Reply, Requester, ShardMsg};
use self::services::Services;
use crate::cluster::BusIn;
use crate::config::{Config, ReadWait};
use crate::limits::IpTable;
use crate::metrics::{add, inc, Snapshot};
use crate::room::request::ReplyRef;
use crate::room::{HistoryConfig, JoinStep, RoomOut, BROADCAST_ROOM};
use crate::room::{HookKind, OwnedRooms};
use crate::rt;
use crate::rt::readiness::Readiness;
use crate::store::{Journal, ShardStart};
use crate::Shared;

/// A shard: its [`Services`] and the state only the shard's own tasks (inbox, sweep,
/// connection tasks, deferred work) touch. Created on, and never leaves, its executor
/// thread.
///
/// It dereferences to its [`Services`], so shard-level code calls `push`, `close` or
/// reads `cfg` directly; the reverse is impossible: a `&Services` never leads back here
/// synchronously (see the module doc).
pub(crate) struct Shard {
    /// What connection handlers may use.
    svc: Services,
    /// Connections accepted by this shard. Borrowed by the connection task for the
    /// whole dispatch of its input, by the inbox and the sweep: never from a handler.
    conns: RefCell<Conns>,
    /// Owner state: rooms this shard sequences, and the live cluster nodes, sorted, this
    /// one included (from the bridge; just this node until the first update, and always
    /// when there is no cluster).
    owned: RefCell<OwnedRooms>,
    nodes: RefCell<Arc<[u64]>>,
    /// Publishes this shard forwarded to other nodes, until those confirm them.
    forwards: RefCell<Forwards<Forwarded>>,
    /// IP owner state: counts for the IP addresses this shard owns, and the minute (of
    /// the shard clock) when the table was last pruned.
    ips: RefCell<IpTable>,
    last_prune: Cell<u32>,
    /// The epoll set that wakes connections with input ([`crate::rt::readiness`]);
    /// `None` with `--read-wait poll` or if the kernel refused one, and then every read
    /// waits the runtime's way. Only the shard adds sockets and reads reports: a
    /// connection's handlers never need it.
    readiness: Option<Readiness>,
    /// Lifecycle: the accept loop (cancelled at shutdown) and the end of the drain.
    accept_task: RefCell<Option<glommio::task::JoinHandle<()>>>,
    done: Notify,
}

impl Deref for Shard {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.svc
    }
}

impl Shard {
    fn new(id: usize, cfg: Arc<Config>, shared: Arc<Shared>, mesh: Mesh, start: Option<ShardStart>) -> Rc<Shard> {
        let shards = mesh.len();
        let node = shared.bus.as_ref().map_or(0, |b| b.node);
        // Without a cluster nothing is ever forwarded, so the window does not matter.
        let node_timeout = cfg.cluster.as_ref().map_or(Duration::ZERO, |c| c.node_timeout);
        let mut owned = OwnedRooms::new(shards, cfg.presence_events_max_members, history_config(&cfg, shards))
            .with_cluster(node)
            .with_hooks(cfg.backend.webhook_url.is_some())
            .with_user_hooks(cfg.backend.wants(HookKind::UserOnline) || cfg.backend.wants(HookKind::UserOffline))
            .with_message_hooks(cfg.backend.wants(HookKind::MessagePublished));
        let stats = crate::metrics::ShardStats::default();
        let journal = match (&cfg.data_dir, start) {
            (Some(dir), Some(start)) => {
                let dir = dir.join(crate::journal::shard_dir_name(id));
                owned = owned.with_journal();
                owned.restore(start.rooms, Services::wall_ms());
                add(&stats.log_replayed_records, start.replayed);
                add(&stats.log_corrupt_tails, start.corrupt_tails);
                let (policy, seg) = (cfg.fsync, cfg.data_segment_bytes);
                Some(Rc::new(Journal::new(dir, policy, seg, start.next_gen, start.disk_bytes)))
            }
            _ => None,
        };
        Rc::new_cyclic(|me| Shard {
            ips: RefCell::new(IpTable::default()),
            last_prune: Cell::new(0),
            readiness: readiness(id, cfg.read_wait),
            owned: RefCell::new(owned),
            nodes: RefCell::new(Arc::from([node])),
            forwards: RefCell::new(Forwards::new(forwards::window(node_timeout), forwards::MAX_HELD)),
            conns: RefCell::new(Conns::default()),
            accept_task: RefCell::new(None),
            done: Notify::default(),
            svc: Services::new(id, cfg, shared, mesh, me.clone(), journal, stats),
        })
    }

    /// Runs `f` on connection `id` with the services, if the connection still exists.
    /// The table stays borrowed while `f` runs, and `f` gets only `&Services`: the same
    /// shape as a connection task's dispatch, for work that comes back to a connection
    /// later (deferred answers, admission, password checks).
    fn with_conn<R>(&self, id: ConnId, f: impl FnOnce(&Services, &mut Conn) -> R) -> Option<R> {
        let mut conns = self.conns.borrow_mut();
        conns.get_mut(id).map(|conn| f(&self.svc, conn))
    }

    /// The node that must sequence `room`, when that is another node: the rendezvous
    /// winner among the live nodes. `None` (sequence here) without a cluster, and while
    /// the bus is down, so local traffic keeps flowing during an outage.
    ///
    /// A node shutting down has handed its rooms on: it leaves itself out.
    fn remote_sequencer(&self, room: &str) -> Option<u64> {
        let bus = self.shared.bus.as_ref()?;
        if !bus.connected() {
            return None;
        }
        let nodes = self.nodes.borrow();
        if self.is_draining() {
            let others: Vec<u64> = nodes.iter().copied().filter(|&n| n != bus.node).collect();
            return crate::cluster::nodes::sequencer(room, &others);
        }
        crate::cluster::nodes::sequencer(room, &nodes).filter(|&n| n != bus.node)
    }

    /// Where a publish another node forwarded here goes on to, if anywhere: the node
    /// this node handed the room's stream to (while it is alive), or else the room's
    /// sequencer as this node sees the live set (the sender's view was older, or this
    /// node is shutting down). It goes on once at most: a publish forwarded a second
    /// time is sequenced where it lands, whatever the views, so nothing loops.
    fn relay_to(&self, p: &msg::Publish) -> Option<u64> {
        let Requester::Remote(r) = &p.from else { return None };
        if r.relayed {
            return None;
        }
        let handed = self.owned.borrow().handed_to(&p.room).filter(|n| self.nodes.borrow().contains(n));
        handed.or_else(|| self.remote_sequencer(&p.room))
    }

    /// Forwards a publish to node `to`, the room's sequencer, and holds a copy until
    /// `to` confirms it (see [`forwards`]). If the bridge cannot take it, an API caller
    /// hears "not sequenced" at once rather than after its timeout.
    fn forward(&self, to: u64, p: msg::Publish, broadcast: bool) {
        let Some(bus) = &self.shared.bus else { return };
        let held = Forwarded { publish: p.clone(), broadcast };
        let id = self.forwards.borrow_mut().hold(to, held, Instant::now());
        self.count_forwards(0);
        let reply = match &p.from {
            Requester::Conn(c) => c.reference.as_ref().map(|r| ReplyRef::Conn {
                shard: c.shard as u16,
                conn: c.conn.as_u64(),
                reference: r.to_string(),
            }),
            Requester::Api(r) => Some(ReplyRef::Api { shard: r.shard as u16, req: r.req }),
            Requester::Remote(r) => r.reply.clone(),
        };
        let origin = match &p.from {
            Requester::Remote(r) => Some(r.node),
            _ => None,
        };
        let out = crate::cluster::BusOut::Forward {
            to,
            room: p.room,
            user: p.user,
            text: p.text,
            extra: Box::new(p.extra),
            broadcast,
            reply,
            origin,
            fwd: (self.id as u16, id),
        };
        if !bus.send(out) {
            self.forwards.borrow_mut().forget(id);
            if let Requester::Api(r) = p.from {
                self.mesh.send(
                    r.shard,
                    ShardMsg::Reply { req: r.req, reply: Reply::Published { seq: None, shards: vec![] } },
                );
            }
        }
    }

    /// Sequences a room publish here, or forwards it to the node that sequences the room.
    fn route_publish(&self, p: msg::Publish) {
        let to = match &p.from {
            // A forwarded publish goes on at most once (`relay_to`), else it is
            // sequenced here.
            Requester::Remote(_) => self.relay_to(&p),
            _ => self.remote_sequencer(&p.room),
        };
        match to {
            Some(node) => self.forward(node, p, false),
            None => {
                inc(&self.stats.messages_published);
                let mut owned = self.owned.borrow_mut();
                owned.set_bus_up(self.shared.bus.as_ref().is_some_and(|b| b.connected()));
                owned.publish(p, Services::wall_ms(), &mut |out: RoomOut| self.route(out));
                drop(owned);
                self.count_cluster();
                self.count_idempotency();
            }
        }
    }

    /// Sequences a broadcast (`@all`) here, or forwards it to the node that sequences
    /// broadcasts; one another node forwarded here is sequenced here.
    fn route_broadcast(&self, p: msg::Publish) {
        match self.remote_sequencer(BROADCAST_ROOM) {
            Some(node) if !matches!(p.from, Requester::Remote(_)) => self.forward(node, p, true),
            _ => {
                inc(&self.stats.messages_published);
                self.owned.borrow_mut().broadcast(p, Services::wall_ms(), &mut |out: RoomOut| self.route(out));
                self.count_idempotency();
            }
        }
    }

    /// Confirms a publish another node forwarded here, before anything else happens to
    /// it: from now on its fate is this node's (sequenced, refused, or forwarded on and
    /// held here). The confirmation goes through the bridge's queue ahead of any frame
    /// the publish makes.
    fn confirm_forward(&self, p: &mut msg::Publish) {
        let Requester::Remote(r) = &mut p.from else { return };
        let (Some(receipt), Some(bus)) = (r.receipt.take(), &self.shared.bus) else { return };
        bus.send(crate::cluster::BusOut::Confirm { to: receipt.node, shard: receipt.shard, id: receipt.id });
    }

    /// Sends the forwards held for nodes that left the live set again, oldest first, to
    /// wherever their rooms' publishes go now (see [`forwards`]).
    fn resend_orphaned_forwards(&self) {
        let live = self.nodes.borrow().clone();
        let orphans = self.forwards.borrow_mut().orphans(&live, Instant::now());
        self.count_forwards(orphans.len() as u64);
        for f in orphans {
            if f.broadcast {
                self.route_broadcast(f.publish);
            } else {
                self.route_publish(f.publish);
            }
        }
    }

    /// Moves the forward counts (sent again: `resent`; forgotten unconfirmed) to the bus
    /// counters, which every shard shares: written only when there is something to add.
    fn count_forwards(&self, resent: u64) {
        let Some(bus) = &self.shared.bus else { return };
        let unconfirmed = self.forwards.borrow_mut().take_unconfirmed();
        for (counter, n) in [(&bus.stats.forwards_resent, resent), (&bus.stats.forwards_unconfirmed, unconfirmed)] {
            if n > 0 {
                counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Handles what the cluster bridge relayed from other nodes.
    fn on_bus(&self, m: BusIn) {
        let live_set_changed = matches!(m, BusIn::Nodes(_));
        let sink = &mut |out: RoomOut| self.route(out);
        let mut owned = self.owned.borrow_mut();
        let now = Services::wall_ms();
        match m {
            BusIn::Frame { room, epoch, seq, node, frame, skip } => {
                owned.remote_frame_skipping(&room, epoch, seq, node, frame, skip, sink)
            }
            BusIn::Volatile { room, frame, skip } => owned.remote_volatile(&room, frame, skip, sink),
            BusIn::Presence { room, node, user, present } => {
                owned.remote_presence(&room, node, user, present, now, sink)
            }
            BusIn::Users { room, node, users } => owned.remote_users(&room, node, &users, now, sink),
            BusIn::Event { room, frame } => owned.remote_event(&room, frame, sink),
            BusIn::Count { room, count, stream, node } => {
                owned.remote_count(&room, count);
                if let Some((epoch, seq)) = stream {
                    owned.remote_stream(&room, node, epoch, seq, now, sink);
                }
            }
            BusIn::Counts(counts) => {
                for (room, count) in counts {
                    owned.remote_count(&room, count);
                }
            }
            BusIn::PresenceQuery(q) => owned.presence(*q, sink),
            BusIn::SyncReq { room, node } => owned.sync_request(&room, node, now, sink),
            BusIn::Nodes(nodes) => {
                owned.set_nodes(nodes.clone(), now, sink);
                owned.hand_off(&nodes, sink);
                owned.view_changed(now);
                *self.nodes.borrow_mut() = nodes;
            }
            BusIn::Confirmed { node, id } => {
                self.forwards.borrow_mut().confirm(node, id);
                return;
            }
            BusIn::Handoff { room, epoch, seq, node } => owned.handoff_mark(&room, epoch, seq, node, now, sink),
            BusIn::CatchUp { room, epoch, after, node } => owned.catch_up_request(&room, epoch, after, node, sink),
            BusIn::Frames { room, epoch, first, frames, done, node } => {
                owned.catch_up_frames(&room, epoch, node, first, frames, done, now, sink)
            }
            BusIn::Goodbye(node) => owned.goodbye(node, now),
            BusIn::NodeGone(node) => owned.node_gone(node, now, sink),
            BusIn::Resync => owned.resync(sink),
            BusIn::Admin(op) => {
                drop(owned);
                self.on_admin(&op);
                return;
            }
        }
        drop(owned);
        self.count_cluster();
        if live_set_changed {
            // After the owner saw the new live set, so a publish whose room this node
            // sequences now is sequenced here.
            self.resend_orphaned_forwards();
        }
    }

    /// Handles one inbox message, in arrival order. Frames for local members go into
    /// `batch`, which the inbox loop delivers (see [`fanout`]).
    async fn handle(self: &Rc<Self>, msg: ShardMsg, batch: &mut Batch) {
        let sink = &mut |out: RoomOut| self.route(out);
        match msg {
            ShardMsg::Join(req) => {
                let step = self.owned.borrow_mut().join(*req, Services::wall_ms(), sink);
                if let JoinStep::CheckPassword { req, hash, password, epoch } = step {
                    self.check_password(req, hash, password, epoch);
                }
            }
            ShardMsg::Leave { room, user, from, epoch } => {
                self.owned.borrow_mut().leave(&room, &user, from, epoch, Services::wall_ms(), sink)
            }
            ShardMsg::UserHere { user, from, here } => {
                self.owned.borrow_mut().user_here(&user, from, here, Services::wall_ms(), sink)
            }
            ShardMsg::Delete(req) => self.owned.borrow_mut().delete(*req, sink),
            ShardMsg::JoinRefused(r) => self.on_join_refused(*r),
            ShardMsg::RoomDeleted { room, epoch, frame, by } => self.on_room_deleted(&room, epoch, frame, &by),
            ShardMsg::Ip { ip, op } => self.on_ip(ip, op),
            ShardMsg::Publish(mut p) => {
                self.confirm_forward(&mut p);
                self.route_publish(*p);
            }
            ShardMsg::Broadcast(mut p) => {
                self.confirm_forward(&mut p);
                self.route_broadcast(*p);
            }
            ShardMsg::Bus(m) => self.on_bus(*m),
            ShardMsg::Presence(q) => {
                self.owned.borrow_mut().presence(*q, sink);
                self.count_unanswered();
            }
            ShardMsg::History(q) => {
                self.owned.borrow_mut().history(*q, sink);
                self.count_unanswered();
            }
            ShardMsg::JoinAck(ack) => {
                // Before it becomes a member: the frames corked so far are not its own.
                batch.joined(&ack.room, ack.conn);
                self.on_join_ack(*ack);
            }
            ShardMsg::Deliver { room, frame, sent_at, skip } => batch.push_skipping(Some(room), frame, sent_at, skip),
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
            ShardMsg::Query { reply, query: Query::Rooms { prefix, after, limit } } => {
                let page = self.owned.borrow().rooms_page(&prefix, after.as_deref(), limit);
                self.mesh.send(reply.shard, ShardMsg::Reply { req: reply.req, reply: Reply::Rooms(page) });
            }
            ShardMsg::Admin { op, reply } => {
                let answer = self.on_admin(&op);
                if let Some(r) = reply {
                    self.mesh.send(r.shard, ShardMsg::Reply { req: r.req, reply: answer });
                }
            }
            ShardMsg::Reply { req, reply } => self.on_reply(req, reply),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    /// Moves the owner's cluster counts (sequence gaps, epoch changes, held rejoins) to the
    /// bus counters. Runs after every publish in a cluster, and the counters are shared by
    /// every shard and the bridge: they are only written when there is something to add
    /// (rarely).
    fn count_cluster(&self) {
        if let Some(bus) = &self.shared.bus {
            let ((gaps, epochs), continued, (held, recovered), (waited, timed_out)) = {
                let mut owned = self.owned.borrow_mut();
                let first = owned.take_first_join_counts();
                (owned.take_counts(), owned.take_continuations(), owned.take_rejoin_counts(), first)
            };
            let stats = &bus.stats;
            for (counter, n) in [
                (&stats.seq_gaps, gaps),
                (&stats.epoch_changes, epochs),
                (&stats.stream_continuations, continued),
                (&stats.rejoins_held, held),
                (&stats.rejoins_held_recovered, recovered),
                (&stats.joins_held_for_stream, waited),
                (&stats.joins_held_timed_out, timed_out),
            ] {
                if n > 0 {
                    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// Moves the owner's idempotency counts (retries answered from memory, keys evicted
    /// early) to the shard's counters.
    fn count_idempotency(&self) {
        let (replays, evicted, _) = self.owned.borrow_mut().take_idempotency_counts();
        add(&self.stats.idempotent_replays, replays);
        add(&self.stats.idempotency_evictions, evicted);
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
        // Counted on the executor's thread, which is this shard's.
        self.stats.reactor_lost_wakes.set(crate::rt::lost_wakes());
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
            fsync: self.stats.fsync.borrow().clone(),
            log_disk_bytes: self.journal.as_ref().map_or(0, |j| j.disk_bytes()),
            log_segments: self.journal.as_ref().map_or(0, |j| j.segments()),
        }
    }

    /// Starts the shutdown. For `drain_grace` the shard keeps serving while `/health`
    /// answers 503 and upgrades are refused (load balancers move traffic away); then it
    /// stops accepting, asks every client to go away (1001), and finishes once all are
    /// gone or the shutdown timeout has passed. With `--data-dir` the log is flushed and
    /// synced first and clients are closed with 1012 (service restart: the history
    /// survives, reconnect and recover); it is synced again at the end.
    ///
    /// In a cluster the shard first hands every room it sequences on to the room's
    /// sequencer among the other nodes (see `room::handoff`), and stops sequencing: what
    /// reaches it from then on is forwarded. The last shard to do so lets the bridge say
    /// goodbye, after the marks.
    fn begin_shutdown(self: &Rc<Self>) {
        if self.start_draining() {
            return;
        }
        if let Some(bus) = &self.shared.bus {
            let others: Vec<u64> = self.nodes.borrow().iter().copied().filter(|&n| n != bus.node).collect();
            let held = {
                let mut owned = self.owned.borrow_mut();
                owned.hand_off(&others, &mut |out: RoomOut| self.route(out));
                owned.take_held()
            };
            for p in held {
                match self.remote_sequencer(&p.room) {
                    Some(to) => self.forward(to, p, false),
                    None => self.owned.borrow_mut().publish(p, Services::wall_ms(), &mut |out| self.route(out)),
                }
            }
            bus.shard_left(self.mesh.len());
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
        let code = match &self.journal {
            Some(journal) => {
                journal.flush().await;
                crate::ws::close::SERVICE_RESTART
            }
            None => crate::ws::close::GOING_AWAY,
        };
        for (_, conn) in self.conns.borrow_mut().iter_mut() {
            self.close(conn, code, "server shutting down", false);
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
        if let Some(journal) = &self.journal {
            journal.flush().await;
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

/// Runs shard `id` until it has shut down: adopts its listener and starts its tasks
/// (among them the idle task `nudge` wakes from outside, see [`rt::nudge`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    id: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    mesh: Mesh,
    inbox: Inbox,
    listener: socket2::Socket,
    start: Option<ShardStart>,
    nudge: Arc<rt::nudge::Nudge>,
) {
    let idle = rt::spawn(nudge.idle());
    let shard = Shard::new(id, cfg, shared, mesh, start);
    if let Some(journal) = &shard.journal {
        rt::spawn(journal.clone().run(shard.clone()));
    }
    let listener = rt::adopt_listener(listener);
    *shard.accept_task.borrow_mut() = Some(rt::spawn(accept_loop(shard.clone(), listener)));
    rt::spawn(inbox_loop(shard.clone(), inbox));
    rt::spawn(readiness_loop(shard.clone()));
    rt::spawn(sweep::run(shard.clone()));
    shard.done.wait().await;
    // The idle task ends with the shard (the nudger only holds its nudge weakly).
    idle.cancel();
}

/// Wakes the connections the shard's readiness set reports (they have input, reached
/// end of stream or failed); each then reads until its socket is empty.
async fn readiness_loop(shard: Rc<Shard>) {
    let Some(set) = &shard.readiness else { return };
    let mut events = Vec::new();
    loop {
        let woken = set
            .next(&mut events, |tokens| {
                let mut conns = shard.conns.borrow_mut();
                for token in tokens {
                    if let Some(conn) = conns.get_mut(conns::from_token(token)) {
                        conn.wake();
                    }
                }
            })
            .await;
        if let Err(e) = woken {
            // Not seen in practice (epoll_wait fails only on a bad set or buffer); keep
            // trying rather than leave every connection unwoken, without spinning.
            tracing::error!(shard = shard.id, error = %e, "readiness set failed");
            rt::sleep(Duration::from_millis(10)).await;
        }
    }
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
/// that touches local connections ([`msg::Class::Ordered`]) first delivers the batch, so
/// frames keep their order against replies and membership changes. A join ack
/// ([`msg::Class::Joined`]) does not: the batch notes where the joiner came in.
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

/// Shard `id`'s readiness set, if connections wait for input through one (`--read-wait`).
fn readiness(id: usize, wait: ReadWait) -> Option<Readiness> {
    match wait {
        ReadWait::Epoll => Readiness::new()
            .inspect_err(|e| tracing::warn!(shard = id, error = %e, "no epoll set; reads poll per socket"))
            .ok(),
        ReadWait::Poll => None,
    }
}
