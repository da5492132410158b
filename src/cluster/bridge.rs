//! The bridge thread: a current-thread tokio runtime running the async-nats client.
//!
//! One loop owns everything (the NATS client, the live-node table, the room
//! subscriptions), so nothing here is shared or locked. It waits on: the shards' queue
//! ([`super::Outbox`]), messages from NATS (one small forwarding task per subscription
//! feeds a single channel, which keeps per-subject order), connection events, and two
//! timers (heartbeat, node expiry). Publishing happens only while connected; otherwise
//! the message is dropped and counted, so a NATS outage never stalls a shard and never
//! grows memory without bound.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, Subject};
use futures_lite::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::nodes::{Change, Nodes};
use super::subject::{self, Subjects};
use super::wire::{self, Header};
use super::{Bus, BusIn, BusOut, BusState, ClusterConfig, ClusterError, Outbox};
use crate::room::request::{ConnId, Extra, PresenceReq, Publish, Receipt, Remote, Reply, Requester, Sender};
use crate::room::BROADCAST_ROOM;
use crate::room::{placement, ClusterOut, LocalAnswer};

/// Messages from NATS waiting for the loop; beyond this the subscription tasks wait and
/// async-nats reports a slow consumer (counted as dropped).
const INBOUND: usize = 16 * 1024;

/// How long the bridge keeps relaying after its goodbye (catch-up answers, publishes
/// forwarded on to the rooms' new sequencers).
const LINGER: Duration = Duration::from_millis(500);

/// How often dead nodes are looked for.
const SWEEP: Duration = Duration::from_millis(250);

/// Longest wait for the NATS client to write out what precedes an answer to a local
/// publisher (`ClusterOut::AfterBus`); past it the answer goes anyway.
const FLUSH_BOUND: Duration = Duration::from_secs(1);

/// What the bridge hands one shard: bus input for the rooms it owns, or a request or
/// answer another node sent. The runtime turns it into its own inbox message.
pub(crate) enum Inbound {
    /// Bus input (see [`BusIn`]).
    Bus(BusIn),
    /// A broadcast frame for every open connection.
    DeliverAll {
        /// The frame, as the sequencer node built it.
        frame: bytes::Bytes,
        /// When the bridge handed it off.
        sent_at: Instant,
    },
    /// A publish forwarded here because this node sequences the room.
    Publish(Box<Publish>),
    /// A broadcast forwarded here because this node sequences `@all`.
    Broadcast(Box<Publish>),
    /// A frame for one connection (an ack for a publish this client sent elsewhere).
    ToConn {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: bytes::Bytes,
    },
    /// The answer to a pending HTTP API request.
    Reply {
        /// Its request id.
        req: u64,
        /// The answer.
        reply: Reply,
    },
}

/// The shards, as the bridge reaches them. The runtime implements this over its
/// inter-shard mesh, so the bridge needs none of the runtime's types.
pub(crate) trait Shards: Send + 'static {
    /// Number of shards.
    fn count(&self) -> usize;
    /// The shard that owns (sequences) `room`.
    fn owner(&self, room: &str) -> usize;
    /// Whether `shard`'s inbox is over its high-water mark (the bridge then drops rather
    /// than grow it without bound).
    fn congested(&self, shard: usize) -> bool;
    /// Queues `msg` for `shard`; never blocks.
    fn send(&self, shard: usize, msg: Inbound);
}

/// The running bridge thread.
pub(crate) struct BridgeThread {
    thread: std::thread::JoinHandle<()>,
}

impl BridgeThread {
    /// Waits for the thread to finish (after [`BusOut::Shutdown`]).
    pub fn join(self) -> bool {
        self.thread.join().is_ok()
    }
}

/// Starts the bridge thread for the shards reachable through `shards`. Returns once
/// the client is configured (NATS itself may still be unreachable: the bridge keeps
/// trying in the background, and the node serves locally meanwhile).
pub(crate) fn start(cfg: &ClusterConfig, shards: impl Shards) -> Result<(Bus, BridgeThread), ClusterError> {
    let shards: Box<dyn Shards> = Box::new(shards);
    let node = fastrand::u64(1..);
    let (bus, outbox) = super::queue(node);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (cfg, thread_bus) = (cfg.clone(), bus.clone());
    let thread = std::thread::Builder::new()
        .name("corecast-bus".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(ClusterError::Start(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let (events_tx, events) = mpsc::unbounded_channel();
                let client = match connect(&cfg, events_tx).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let bridge = Bridge::new(cfg, client, thread_bus, shards);
                bridge.run(outbox, events).await;
            });
        })
        .map_err(ClusterError::Start)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((bus, BridgeThread { thread })),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(ClusterError::Connect("the bridge thread stopped while starting".into())),
    }
}

/// Builds the client. With `retry_on_initial_connect` this returns at once even when
/// NATS is down; the client connects (and later reconnects) in the background, without
/// a limit, at most one second apart.
async fn connect(cfg: &ClusterConfig, events: mpsc::UnboundedSender<Event>) -> Result<Client, ClusterError> {
    let mut opts = ConnectOptions::new()
        .name(format!("corecast/{}", cfg.node_name))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).clamp(100, 1000)))
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(2))
        .subscription_capacity(64 * 1024)
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        });
    if let Some(path) = &cfg.creds {
        opts = opts.credentials_file(path).await.map_err(ClusterError::Credentials)?;
    }
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &cfg.tls_client {
        opts = opts.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    let urls: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse().map_err(|e: std::io::Error| ClusterError::Connect(format!("`{u}`: {e}"))))
        .collect::<Result<_, _>>()?;
    if urls.is_empty() {
        return Err(ClusterError::Connect("--nats-url names no server".into()));
    }
    opts.connect(urls).await.map_err(|e| ClusterError::Connect(e.to_string()))
}

/// A NATS subscription for room traffic: one room's subject, or with room buckets the
/// wildcard of a bucket that several rooms share. The task feeds its messages to the
/// loop (aborting it unsubscribes).
struct Interest {
    /// Rooms of this node it serves; it is dropped when the last one goes.
    rooms: u32,
    task: JoinHandle<()>,
}

struct Bridge {
    cfg: ClusterConfig,
    client: Client,
    bus: Bus,
    me: u64,
    shards: Box<dyn Shards>,
    subjects: Subjects,
    /// The heartbeat and broadcast subjects, built once.
    hb_subject: Subject,
    all_subject: Subject,
    nodes: Nodes,
    /// Rooms this node receives, each with its subject (encoded once when subscribing
    /// rather than for every message published to it).
    rooms: HashMap<Arc<str>, Subject>,
    /// The subscriptions that receive them, by subscribed subject.
    interests: HashMap<String, Interest>,
    /// Nodes already reported as using another `--cluster-room-buckets`.
    bucket_mismatch: std::collections::HashSet<u64>,
    inbound_tx: mpsc::Sender<async_nats::Message>,
    inbound: mpsc::Receiver<async_nats::Message>,
    /// Fixed subscriptions (heartbeats, this node, broadcasts), kept for the lifetime.
    fixed: Vec<JoinHandle<()>>,
    ever_connected: bool,
}

impl Bridge {
    fn new(cfg: ClusterConfig, client: Client, bus: Bus, shards: Box<dyn Shards>) -> Bridge {
        let (inbound_tx, inbound) = mpsc::channel(INBOUND);
        let subjects = Subjects::bucketed(&cfg.subject_prefix, cfg.room_buckets);
        let (hb_subject, all_subject) = (subjects.heartbeat().into(), subjects.all().into());
        Bridge {
            me: bus.node,
            subjects,
            hb_subject,
            all_subject,
            nodes: Nodes::new(bus.node, cfg.node_timeout),
            cfg,
            client,
            bus,
            shards,
            rooms: HashMap::new(),
            interests: HashMap::new(),
            bucket_mismatch: std::collections::HashSet::new(),
            inbound_tx,
            inbound,
            fixed: Vec::new(),
            ever_connected: false,
        }
    }

    async fn run(mut self, outbox: Outbox, mut events: mpsc::UnboundedReceiver<Event>) {
        tracing::info!(node = format!("{:016x}", self.me), name = %self.cfg.node_name, url = %self.cfg.url, "cluster bridge started");
        // Personal rooms (one per connection) share one wildcard subscription: see
        // `ClusterOut::Subscribe` below.
        let fixed = [
            self.hb_subject.clone(),
            self.subjects.node(self.me).into(),
            self.all_subject.clone(),
            self.subjects.users().into(),
        ];
        for subject in fixed {
            match self.subscribe(subject.clone()).await {
                Some(task) => self.fixed.push(task),
                None => tracing::error!(%subject, "cannot subscribe; the cluster will not work"),
            }
        }
        self.publish_nodes();
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat);
        let mut sweep = tokio::time::interval(SWEEP);
        loop {
            tokio::select! {
                out = poll_fn(|cx| outbox.poll_recv(cx)) => match out {
                    Some(BusOut::Shutdown) | None => break,
                    Some(out) => self.on_out(out).await,
                },
                Some(msg) = self.inbound.recv() => self.on_inbound(msg).await,
                Some(event) = events.recv() => self.on_event(event).await,
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = sweep.tick() => self.sweep(),
            }
        }
        self.publish(self.hb_subject.clone(), &Header::Bye { node: self.me }, &[]).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
        // A node this one just handed rooms to may still ask it for frames (catch-up),
        // and publishes forwarded here before the others heard the goodbye still go on
        // to the new sequencers: keep relaying for a moment.
        let _ = tokio::time::timeout(LINGER, async {
            loop {
                tokio::select! {
                    out = poll_fn(|cx| outbox.poll_recv(cx)) => match out {
                        None => break,
                        Some(BusOut::Shutdown) => {}
                        Some(out) => self.on_out(out).await,
                    },
                    Some(msg) = self.inbound.recv() => {
                        if !matches!(wire::decode(&msg.payload), Ok((Header::Hb { .. }, _))) {
                            self.on_inbound(msg).await;
                        }
                    }
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
        for task in self.fixed.drain(..).chain(self.interests.drain().map(|(_, i)| i.task)) {
            task.abort();
        }
        tracing::info!("cluster bridge stopped");
    }

    /// Subscribes to `subject` and starts the task that feeds its messages to the loop.
    async fn subscribe(&self, subject: Subject) -> Option<JoinHandle<()>> {
        match self.client.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                let tx = self.inbound_tx.clone();
                Some(tokio::spawn(async move {
                    while let Some(msg) = sub.next().await {
                        if tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                }))
            }
            Err(e) => {
                tracing::warn!(%subject, error = %e, "subscribe failed");
                None
            }
        }
    }

    /// Asks `room`'s holder among `live` for the room's count (nothing when this node
    /// holds it). Only the holder answers, so the request goes to its node subject: on
    /// the room subject every node with members of the room (or, with buckets, of any
    /// room of its bucket) heard every node's request, rooms × nodes² bus deliveries in
    /// a join storm or after a NATS restart.
    async fn ask_count(&self, room: &str, live: &[u64]) {
        if let Some(holder) = placement::sequencer(room, live).filter(|&h| h != self.me) {
            let req = Header::SyncReq { node: self.me, room: room.to_string() };
            self.publish(self.subjects.node(holder).into(), &req, &[]).await;
        }
    }

    /// Publishes one bus message if connected; otherwise (or on error) drops and counts it.
    async fn publish(&self, subject: Subject, header: &Header, body: &[u8]) -> bool {
        if !self.bus.connected() {
            self.bus.count(|s| &s.relay_dropped);
            return false;
        }
        match self.client.publish(subject, wire::encode(header, body)).await {
            Ok(()) => {
                self.bus.count(|s| &s.relayed_out);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "publish failed");
                self.bus.count(|s| &s.relay_dropped);
                false
            }
        }
    }

    async fn heartbeat(&self) {
        if self.bus.connected() {
            let hb =
                Header::Hb { node: self.me, name: self.cfg.node_name.clone(), room_buckets: self.cfg.room_buckets };
            let _ = self.client.publish(self.hb_subject.clone(), wire::encode(&hb, &[])).await;
        }
    }

    fn sweep(&mut self) {
        let changes = self.nodes.expire(Instant::now());
        self.apply(changes);
    }

    /// Tells the shards about nodes that came or went.
    fn apply(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        // A node that joins needs no general re-announcement: each shard sends its users
        // to the keepers of the rooms whose keepers changed (`OwnedRooms::set_nodes`), and
        // a node coming back after a cut re-announces its own users when it reconnects.
        for c in changes {
            match c {
                Change::Joined(n) => tracing::info!(node = format!("{n:016x}"), "cluster node joined"),
                Change::Left(n) => {
                    tracing::info!(node = format!("{n:016x}"), "cluster node left");
                    self.to_all(|| BusIn::NodeGone(n));
                }
            }
        }
        self.publish_nodes();
    }

    fn publish_nodes(&self) {
        let live: Arc<[u64]> = self.nodes.live().into();
        self.bus.stats.nodes.store(live.len() as u64, Ordering::Relaxed);
        self.to_all(|| BusIn::Nodes(live.clone()));
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                // Counted before the state shows it, so whoever sees "connected" after a
                // reconnection also sees the reconnection counted.
                if self.ever_connected {
                    self.bus.count(|s| &s.reconnects);
                    tracing::info!("cluster bus reconnected");
                } else {
                    tracing::info!("cluster bus connected");
                }
                self.bus.set_state(BusState::Connected);
                self.ever_connected = true;
                self.heartbeat().await;
                // Others may have declared this node dead meanwhile, and this node may
                // have missed their presence changes: exchange snapshots again.
                let live = self.nodes.live();
                for room in self.rooms.keys() {
                    self.ask_count(room, &live).await;
                }
                self.to_all(|| BusIn::Resync);
            }
            Event::Disconnected => {
                self.bus.set_state(BusState::Disconnected);
                tracing::warn!("cluster bus disconnected; serving locally, reconnecting");
            }
            Event::SlowConsumer(_) => self.bus.count(|s| &s.relay_dropped),
            other => tracing::debug!(event = %other, "cluster bus event"),
        }
    }

    async fn on_out(&mut self, out: BusOut) {
        let me = self.me;
        match out {
            BusOut::Room(ClusterOut::Subscribe(room)) => {
                // A personal room is covered by the `user.*` wildcard, and has no presence
                // to ask for: no subscription, no task, no snapshot request per user. Its
                // frames reach the owner shard, which drops those of users it does not
                // hold (`OwnedRooms::remote_frame`).
                if self.rooms.contains_key(&room) || subject::is_personal(&room) {
                    return;
                }
                let interest = self.subjects.interest(&room);
                if let Some(i) = self.interests.get_mut(&interest) {
                    i.rooms += 1;
                } else if let Some(task) = self.subscribe(interest.clone().into()).await {
                    self.interests.insert(interest, Interest { rooms: 1, task });
                } else {
                    return;
                }
                let subject: Subject = self.subjects.room(&room).into();
                self.rooms.insert(room.clone(), subject);
                self.bus.stats.room_subscriptions.store(self.interests.len() as u64, Ordering::Relaxed);
                self.ask_count(&room, &self.nodes.live()).await;
            }
            BusOut::Room(ClusterOut::Unsubscribe(room)) => {
                if self.rooms.remove(&room).is_none() {
                    return;
                }
                let interest = self.subjects.interest(&room);
                if let Some(i) = self.interests.get_mut(&interest) {
                    i.rooms = i.rooms.saturating_sub(1);
                    if i.rooms == 0 {
                        if let Some(i) = self.interests.remove(&interest) {
                            i.task.abort();
                        }
                    }
                }
                self.bus.stats.room_subscriptions.store(self.interests.len() as u64, Ordering::Relaxed);
            }
            BusOut::Room(ClusterOut::Frame { room, epoch, seq, frame, skip }) => {
                let h = Header::Frame { node: me, room: room.to_string(), epoch, seq, skip };
                self.publish(self.room_subject(&room), &h, &frame).await;
            }
            BusOut::Room(ClusterOut::Volatile { room, frame, skip }) => {
                let h = Header::Volatile { node: me, room: room.to_string(), skip };
                self.publish(self.room_subject(&room), &h, &frame).await;
            }
            BusOut::Room(ClusterOut::Broadcast { seq, frame }) => {
                self.publish(self.all_subject.clone(), &Header::Bcast { node: me, seq }, &frame).await;
            }
            BusOut::Room(ClusterOut::Handoff { room, epoch, seq, to }) => {
                let h = Header::Handoff { node: me, room: room.to_string(), epoch, seq };
                self.publish(self.subjects.node(to).into(), &h, &[]).await;
            }
            BusOut::Room(ClusterOut::CatchUp { room, epoch, after, to }) => {
                let h = Header::CatchUp { node: me, room: room.to_string(), epoch, after };
                self.publish(self.subjects.node(to).into(), &h, &[]).await;
            }
            BusOut::Room(ClusterOut::Frames { room, epoch, first, frames, done, to }) => {
                let lens = frames.iter().map(|f| f.len() as u32).collect();
                let h = Header::Frames { node: me, room: room.to_string(), epoch, first, lens, done };
                self.publish(self.subjects.node(to).into(), &h, &frames.concat()).await;
            }
            BusOut::Forward { to, room, user, text, extra, broadcast, reply, origin, fwd } => {
                let h = Header::Fwd {
                    node: me,
                    room: room.to_string(),
                    user: user.to_string(),
                    text: text.map(String::from),
                    broadcast,
                    reply,
                    event: extra.event.as_deref().map(String::from),
                    tags: extra.tags.as_deref().map(|t| String::from_utf8_lossy(t).into_owned()),
                    volatile: extra.volatile,
                    // A local sender (node 0) is named with this node's id.
                    skip: extra.skip.map(|s| Sender { node: if s.node == 0 { me } else { s.node }, ..s }),
                    idem: extra.idempotency_key.as_deref().map(String::from),
                    origin,
                    fwd: Some(fwd),
                };
                let body = extra.data.as_deref().unwrap_or(&[]);
                if self.publish(self.subjects.node(to).into(), &h, body).await {
                    self.bus.count(|s| &s.forwarded);
                }
            }
            BusOut::Confirm { to, shard, id } => {
                let h = Header::FwdOk { node: me, shard, id };
                self.publish(self.subjects.node(to).into(), &h, &[]).await;
            }
            BusOut::Room(ClusterOut::Presence { room, user, present, to }) => {
                let h = Header::Presence { node: me, room: room.to_string(), user: user.to_string(), present };
                self.publish(self.subjects.node(to).into(), &h, &[]).await;
            }
            BusOut::Room(ClusterOut::Event { room, frame }) => {
                let h = Header::Event { node: me, room: room.to_string() };
                self.publish(self.room_subject(&room), &h, &frame).await;
            }
            BusOut::Room(ClusterOut::Count { room, count, to, stream }) => {
                let (epoch, seq) = (stream.map(|s| s.0), stream.map(|s| s.1));
                let h = Header::Count { node: me, room: room.to_string(), count, epoch, seq };
                self.publish(self.subjects.node(to).into(), &h, &[]).await;
            }
            BusOut::Room(ClusterOut::Counts(counts)) => {
                // One message per report to every node, not one per room on each room's
                // subject: rooms × nodes messages per tick drowned a 58-node cluster.
                for h in wire::counts_headers(me, &counts) {
                    self.publish(self.all_subject.clone(), &h, &[]).await;
                }
            }
            BusOut::Room(ClusterOut::PresenceQuery { to, query }) => {
                let Requester::Remote(r) = &query.from else { return };
                let Some(reply) = r.reply.clone() else { return };
                let h = Header::PresenceQ {
                    node: me,
                    room: query.room.to_string(),
                    after: query.after.as_ref().map(|a| a.to_string()),
                    limit: query.limit,
                    private: query.private,
                    reply,
                };
                self.publish(self.subjects.node(to).into(), &h, &[]).await;
            }
            BusOut::Room(ClusterOut::Page { node, shard, req, page }) => {
                let h = Header::Page { node: me, shard, req, page: page.as_ref().map(wire::Page::from) };
                self.publish(self.subjects.node(node).into(), &h, &[]).await;
            }
            BusOut::Room(ClusterOut::Users { room, users, to }) => {
                let subject = to.map_or_else(|| self.room_subject(&room), |n| self.subjects.node(n).into());
                let h = Header::Users {
                    node: me,
                    room: room.to_string(),
                    users: users.iter().map(|u| u.to_string()).collect(),
                };
                self.publish(subject, &h, &[]).await;
            }
            BusOut::Room(ClusterOut::ToConn { node, shard, conn, frame }) => {
                let h = Header::ToConn { node: me, shard, conn };
                self.publish(self.subjects.node(node).into(), &h, &frame).await;
            }
            BusOut::Room(ClusterOut::AfterBus { shard, answer }) => {
                // The frame this answer follows is queued in the NATS client: have it
                // written to the connection first, so a kill after the publisher heard
                // "done" loses nothing it was told (bounded: a stuck connection delays
                // answers by at most FLUSH_BOUND, and a lost one does not at all: the
                // frame was dropped and counted).
                if self.bus.connected() {
                    let _ = tokio::time::timeout(FLUSH_BOUND, self.client.flush()).await;
                }
                let msg = match answer {
                    LocalAnswer::ToConn { conn, frame } => Inbound::ToConn { conn, frame },
                    LocalAnswer::Published { req, seq, shards } => {
                        Inbound::Reply { req, reply: Reply::Published { seq, shards } }
                    }
                };
                // Never dropped, unlike bus traffic: it is this node's own answer.
                self.shards.send(shard, msg);
            }
            BusOut::Room(ClusterOut::Published { node, shard, req, seq }) => {
                let h = Header::Published { node: me, shard, req, seq };
                self.publish(self.subjects.node(node).into(), &h, &[]).await;
            }
            BusOut::Admin(op) => {
                let h = Header::Admin { node: me, op: (*op).clone() };
                self.publish(self.all_subject.clone(), &h, &[]).await;
            }
            BusOut::Shutdown => {}
        }
    }

    /// The subject of `room`: the one kept with its subscription, or (a room sequenced
    /// here only for other nodes' members, which this node does not receive) built now.
    fn room_subject(&self, room: &str) -> Subject {
        self.rooms.get(room).map_or_else(|| self.subjects.room(room).into(), Subject::clone)
    }

    /// Hands a message to shard `to`, unless its inbox is over the high-water mark (then
    /// it is dropped and counted: the bus must not grow a shard's inbox without bound).
    fn deliver(&self, to: usize, msg: Inbound) {
        if self.shards.congested(to) {
            self.bus.count(|s| &s.relay_dropped);
            return;
        }
        self.bus.count(|s| &s.relayed_in);
        self.shards.send(to, msg);
    }

    /// Hands every shard its own copy of a bus message (node changes: never dropped).
    fn to_all(&self, msg: impl Fn() -> BusIn) {
        for shard in 0..self.shards.count() {
            self.shards.send(shard, Inbound::Bus(msg()));
        }
    }

    async fn on_inbound(&mut self, msg: async_nats::Message) {
        let (header, body) = match wire::decode(&msg.payload) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, subject = %msg.subject, "undecodable bus message");
                self.bus.count(|s| &s.decode_errors);
                return;
            }
        };
        if header.node() == self.me {
            return;
        }
        let shards = self.shards.count();
        let room_msg = |room: &str, m: BusIn| (self.shards.owner(room), Inbound::Bus(m));
        match header {
            Header::Hb { node, name, room_buckets } => {
                if room_buckets != self.cfg.room_buckets && self.bucket_mismatch.insert(node) {
                    // Frames would go on subjects the other side does not subscribe to.
                    tracing::error!(
                        node = format!("{node:016x}"),
                        %name,
                        theirs = room_buckets,
                        ours = self.cfg.room_buckets,
                        "cluster node uses another --cluster-room-buckets: room traffic between us is lost"
                    );
                }
                let change = self.nodes.heard(node, Instant::now());
                if change.is_some() {
                    tracing::debug!(node = format!("{node:016x}"), %name, "heartbeat from a new node");
                    // Answer at once, so the newcomer learns about us without waiting.
                    self.heartbeat().await;
                }
                self.apply(change.into_iter().collect());
            }
            Header::Bye { node } => {
                self.to_all(|| BusIn::Goodbye(node));
                let change = self.nodes.gone(node);
                self.apply(change.into_iter().collect());
            }
            Header::Frame { node, room, epoch, seq, skip } => {
                let room: Arc<str> = room.into();
                let (to, m) = room_msg(&room, BusIn::Frame { room: room.clone(), epoch, seq, node, frame: body, skip });
                self.deliver(to, m);
            }
            Header::Volatile { room, skip, .. } => {
                let room: Arc<str> = room.into();
                let (to, m) = room_msg(&room, BusIn::Volatile { room: room.clone(), frame: body, skip });
                self.deliver(to, m);
            }
            Header::Bcast { .. } => {
                let sent_at = Instant::now();
                for shard in 0..shards {
                    self.deliver(shard, Inbound::DeliverAll { frame: body.clone(), sent_at });
                }
            }
            Header::Fwd {
                node,
                room,
                user,
                text,
                broadcast,
                reply,
                event,
                tags,
                volatile,
                skip,
                idem,
                origin,
                fwd,
            } => {
                // The origin validated every part; the body is `data`, verbatim.
                let extra = Extra {
                    data: (!body.is_empty()).then(|| Arc::from(&body[..])),
                    event: event.map(Arc::from),
                    tags: tags.map(|t| Arc::from(t.into_bytes().into_boxed_slice())),
                    volatile,
                    skip,
                    idempotency_key: idem.map(Arc::from),
                };
                let publish = Box::new(Publish {
                    room: room.as_str().into(),
                    user: user.into(),
                    text: text.map(Box::from),
                    extra,
                    from: Requester::Remote(Box::new(Remote {
                        node: origin.unwrap_or(node),
                        reply,
                        relayed: origin.is_some(),
                        // Confirmed to the node that sent it here (for a relayed
                        // publish, the relaying node, not the origin).
                        receipt: fwd.map(|(shard, id)| Receipt { node, shard, id }),
                    })),
                });
                if broadcast {
                    self.deliver(self.shards.owner(BROADCAST_ROOM), Inbound::Broadcast(publish));
                } else {
                    self.deliver(self.shards.owner(&room), Inbound::Publish(publish));
                }
            }
            Header::Presence { node, room, user, present } => {
                let room: Arc<str> = room.into();
                let (to, m) = room_msg(&room, BusIn::Presence { room: room.clone(), node, user: user.into(), present });
                self.deliver(to, m);
            }
            Header::Users { node, room, users } => {
                let room: Arc<str> = room.into();
                let users = users.into_iter().map(Arc::from).collect();
                let (to, m) = room_msg(&room, BusIn::Users { room: room.clone(), node, users });
                self.deliver(to, m);
            }
            Header::Event { room, .. } => {
                let room: Arc<str> = room.into();
                let (to, m) = room_msg(&room, BusIn::Event { room: room.clone(), frame: body });
                self.deliver(to, m);
            }
            Header::Count { node, room, count, epoch, seq } => {
                let room: Arc<str> = room.into();
                let stream = epoch.zip(seq);
                let (to, m) = room_msg(&room, BusIn::Count { room: room.clone(), count, stream, node });
                self.deliver(to, m);
            }
            Header::Counts { counts, .. } => {
                // Every node hears every holder's report: keep the rooms subscribed here
                // (a node without members has no use for a count), one message per shard.
                let mut per_shard: Vec<Vec<(Arc<str>, u32)>> = vec![Vec::new(); shards];
                for (room, count) in counts {
                    if let Some((room, _)) = self.rooms.get_key_value(room.as_str()) {
                        per_shard[self.shards.owner(room)].push((room.clone(), count));
                    }
                }
                for (shard, counts) in per_shard.into_iter().enumerate().filter(|(_, c)| !c.is_empty()) {
                    self.deliver(shard, Inbound::Bus(BusIn::Counts(counts)));
                }
            }
            Header::PresenceQ { node, room, after, limit, private, reply } => {
                let query = PresenceReq {
                    room: room.as_str().into(),
                    after: after.map(Into::into),
                    limit,
                    private,
                    from: Requester::Remote(Box::new(Remote {
                        node,
                        reply: Some(reply),
                        relayed: false,
                        receipt: None,
                    })),
                };
                let (to, m) = room_msg(&room, BusIn::PresenceQuery(Box::new(query)));
                self.deliver(to, m);
            }
            Header::Page { shard, req, page, .. } => {
                let reply = Reply::Presence(page.map(Into::into));
                self.deliver(usize::from(shard), Inbound::Reply { req, reply });
            }
            Header::SyncReq { node, room } => {
                let room: Arc<str> = room.into();
                let (to, m) = room_msg(&room, BusIn::SyncReq { room: room.clone(), node });
                self.deliver(to, m);
            }
            Header::ToConn { shard, conn, .. } => {
                self.deliver(usize::from(shard), Inbound::ToConn { conn: ConnId::from_u64(conn), frame: body });
            }
            Header::Admin { op, .. } => {
                let op = Arc::new(op);
                match &*op {
                    crate::room::request::AdminOp::HistoryRemove { room } => {
                        let to = self.shards.owner(room);
                        self.deliver(to, Inbound::Bus(BusIn::Admin(op)));
                    }
                    _ => {
                        for shard in 0..shards {
                            self.deliver(shard, Inbound::Bus(BusIn::Admin(op.clone())));
                        }
                    }
                }
            }
            Header::Handoff { node, room, epoch, seq } => {
                let room: Arc<str> = room.into();
                let (to, m) = room_msg(&room, BusIn::Handoff { room: room.clone(), epoch, seq, node });
                self.deliver(to, m);
            }
            Header::CatchUp { node, room, epoch, after } => {
                let room: Arc<str> = room.into();
                let (to, m) = room_msg(&room, BusIn::CatchUp { room: room.clone(), epoch, after, node });
                self.deliver(to, m);
            }
            Header::Frames { node, room, epoch, first, lens, done } => {
                let mut frames = Vec::with_capacity(lens.len());
                let mut at = 0usize;
                for len in lens {
                    let end = at.saturating_add(len as usize);
                    if end > body.len() {
                        self.bus.count(|s| &s.decode_errors);
                        return;
                    }
                    frames.push(body.slice(at..end));
                    at = end;
                }
                let room: Arc<str> = room.into();
                let (to, m) = room_msg(&room, BusIn::Frames { room: room.clone(), epoch, first, frames, done, node });
                self.deliver(to, m);
            }
            Header::FwdOk { node, shard, id } => {
                self.deliver(usize::from(shard), Inbound::Bus(BusIn::Confirmed { node, id }));
            }
            Header::Published { shard, req, seq, .. } => {
                let reply = Reply::Published { seq, shards: Vec::new() };
                self.deliver(usize::from(shard), Inbound::Reply { req, reply });
            }
        }
    }
}
