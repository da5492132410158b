//! The cluster bus: several corecast nodes relaying rooms to each other over NATS.
//!
//! Off unless `--nats-url` is given; then [`bridge`] runs one extra thread with a small
//! current-thread tokio runtime and the async-nats client. Shards never touch the network
//! or tokio: they hand [`BusOut`] messages to the bridge through a bounded lock-free queue
//! (crossbeam + `AtomicWaker`, like the inter-shard mesh), and the bridge hands what
//! arrives to the shards through the mesh as [`BusIn`]. A full queue drops and counts;
//! nothing ever blocks a shard.
//!
//! The ordering rule (docs/CLUSTER.md): every room has one *sequencer node*, chosen by
//! rendezvous hashing over the live nodes ([`nodes`]). Publishes on other nodes are
//! forwarded to it; its owner shard numbers the message, builds the frame once, delivers
//! locally and publishes the frame on the room's subject ([`subject`]), from which every
//! other node with members delivers the same bytes in the same order.
//!
//! | module | concern |
//! |---|---|
//! | [`subject`] | subject names, room name → subject token encoding |
//! | [`nodes`] | live-node table (heartbeats), rendezvous hashing |
//! | [`wire`] | the versioned bus message format |
//! | `bridge` | the thread: tokio runtime, NATS connection, relaying both ways |

pub(crate) mod bridge;
pub mod nodes;
pub mod subject;
pub mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::room::request::PresenceReq;
use crate::room::ClusterOut;

/// How to reach NATS and how this node takes part in the cluster. Its `Debug` output
/// hides the password and the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma-separated (`nats://host:4222`, `tls://…`).
    pub url: String,
    /// `.creds` file (JWT + nkey seed) for decentralized auth.
    pub creds: Option<PathBuf>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// Auth token.
    pub token: Option<String>,
    /// CA certificate (PEM) to verify the server's TLS certificate; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// This node's name in logs and heartbeats.
    pub node_name: String,
    /// First token(s) of every subject (several clusters can share one NATS).
    pub subject_prefix: String,
    /// Public rooms hashed into this many NATS subscription buckets (0: a subscription
    /// per room). The same on every node of a cluster.
    pub room_buckets: u32,
    /// Interval between this node's heartbeats.
    pub heartbeat: Duration,
    /// A node not heard from for this long is dead: its users leave every room, and its
    /// rooms get a new sequencer.
    pub node_timeout: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<hidden>");
        f.debug_struct("ClusterConfig")
            .field("url", &self.url)
            .field("creds", &self.creds)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("node_name", &self.node_name)
            .field("subject_prefix", &self.subject_prefix)
            .field("room_buckets", &self.room_buckets)
            .field("heartbeat", &self.heartbeat)
            .field("node_timeout", &self.node_timeout)
            .finish()
    }
}

impl ClusterConfig {
    /// A configuration for `url` with defaults (1 s heartbeats, 3 s timeout).
    pub fn new(url: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            url: url.into(),
            creds: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_client: None,
            node_name: "corecast".to_owned(),
            subject_prefix: "corecast".to_owned(),
            room_buckets: 0,
            heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(3),
        }
    }
}

/// Why the cluster bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The bridge thread or its runtime could not be created.
    #[error("cannot start the cluster bridge: {0}")]
    Start(std::io::Error),
    /// The credentials file could not be read or parsed.
    #[error("cannot load NATS credentials: {0}")]
    Credentials(std::io::Error),
    /// The NATS URL or options are invalid (a server that is merely down is not an
    /// error: the bridge keeps retrying).
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

/// State of the bus connection, as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BusState {
    /// No cluster configured.
    Off = 0,
    /// Connected to NATS.
    Connected = 1,
    /// Configured, but NATS is unreachable right now (the bridge is reconnecting).
    Disconnected = 2,
}

impl BusState {
    /// The name shown in `/health`, `/stats` and `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            BusState::Off => "off",
            BusState::Connected => "connected",
            BusState::Disconnected => "disconnected",
        }
    }
}

/// Bus counters, monotonic since start. Written by the bridge (and, for drops at the
/// queue, by shards: a rare event, so one shared atomic is fine off the hot path).
#[derive(Debug, Default)]
pub struct BusStats {
    /// Bus messages published to NATS.
    pub relayed_out: AtomicU64,
    /// Bus messages received from other nodes and handed to shards.
    pub relayed_in: AtomicU64,
    /// Bus messages that could not be relayed: NATS unreachable, bridge queue full, or a
    /// shard inbox over its high-water mark. At-most-once: these are lost, not retried.
    pub relay_dropped: AtomicU64,
    /// Publishes forwarded to another node's sequencer.
    pub forwarded: AtomicU64,
    /// Forwards sent again, to the room's next sequencer, because the node they went to
    /// left the live set without confirming them.
    pub forwards_resent: AtomicU64,
    /// Forwards never confirmed and not sent again: held past the window (about twice
    /// the node timeout) while their node stayed alive, or pushed out of a full table.
    /// An older node that does not confirm forwards raises it without losing anything.
    pub forwards_unconfirmed: AtomicU64,
    /// Reconnections to NATS after a loss.
    pub reconnects: AtomicU64,
    /// Bus messages that could not be decoded (damaged, or another version).
    pub decode_errors: AtomicU64,
    /// Room frames received after a gap in the sequence (messages in between were lost).
    pub seq_gaps: AtomicU64,
    /// Times a room's stream epoch changed on this node (sequencer moved, or adopted
    /// another node's stream).
    pub epoch_changes: AtomicU64,
    /// Streams this node continued after another node handed them over (same epoch,
    /// next seq) instead of starting a new epoch.
    pub stream_continuations: AtomicU64,
    /// Rejoins with `since` ahead of this node's copy of the room's stream, held until
    /// the copy caught up (or for at most a few seconds) instead of answered
    /// `recovered: false` at once.
    pub rejoins_held: AtomicU64,
    /// Of [`Self::rejoins_held`], those answered `recovered: true`.
    pub rejoins_held_recovered: AtomicU64,
    /// First joins of a room on a node with no copy of its stream (not its sequencer,
    /// no frame yet), whose `joined` waited for the sequencer's stream position instead
    /// of showing an epoch of this node's own that no stream has.
    pub joins_held_for_stream: AtomicU64,
    /// Of [`Self::joins_held_for_stream`], those answered after the bound without the
    /// stream (the sequencer never answered and no frame came: a provisional epoch).
    pub joins_held_timed_out: AtomicU64,
    /// Live nodes, this one included (a gauge).
    pub nodes: AtomicU64,
    /// NATS subscriptions this node holds for public rooms (a gauge): one per room, or
    /// at most `--cluster-room-buckets` with buckets.
    pub room_subscriptions: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A copy of the bus figures for `/stats` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BusReport {
    /// `connected` or `disconnected`.
    pub state: &'static str,
    /// This node's id (16 hex digits in JSON).
    #[serde(serialize_with = "hex")]
    pub node: u64,
    /// Live nodes, this one included.
    pub nodes: u64,
    /// See [`BusStats::relayed_out`].
    pub relayed_out: u64,
    /// See [`BusStats::relayed_in`].
    pub relayed_in: u64,
    /// See [`BusStats::relay_dropped`].
    pub relay_dropped: u64,
    /// See [`BusStats::forwarded`].
    pub forwarded: u64,
    /// See [`BusStats::forwards_resent`].
    pub forwards_resent: u64,
    /// See [`BusStats::forwards_unconfirmed`].
    pub forwards_unconfirmed: u64,
    /// See [`BusStats::reconnects`].
    pub reconnects: u64,
    /// See [`BusStats::decode_errors`].
    pub decode_errors: u64,
    /// See [`BusStats::seq_gaps`].
    pub seq_gaps: u64,
    /// See [`BusStats::epoch_changes`].
    pub epoch_changes: u64,
    /// See [`BusStats::room_subscriptions`].
    pub room_subscriptions: u64,
    /// See [`BusStats::stream_continuations`].
    pub stream_continuations: u64,
    /// See [`BusStats::rejoins_held`].
    pub rejoins_held: u64,
    /// See [`BusStats::rejoins_held_recovered`].
    pub rejoins_held_recovered: u64,
    /// See [`BusStats::joins_held_for_stream`].
    pub joins_held_for_stream: u64,
    /// See [`BusStats::joins_held_timed_out`].
    pub joins_held_timed_out: u64,
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

/// What a shard asks the bridge to do. Plain data; moves through the bounded queue.
#[derive(Debug)]
pub enum BusOut {
    /// A room owner's output for the other nodes (subscriptions, frames, presence,
    /// answers to forwarded requests), as the room core emitted it.
    Room(ClusterOut),
    /// Forward a publish to node `to`, the room's sequencer.
    Forward {
        /// The sequencer node.
        to: u64,
        /// Room (`@all` for broadcasts).
        room: Arc<str>,
        /// Sender shown to receivers.
        user: Arc<str>,
        /// Text.
        text: Option<Box<str>>,
        /// `data`, `event`, `tags`, volatility, the sender to skip, the idempotency key.
        extra: Box<crate::room::request::Extra>,
        /// A broadcast.
        broadcast: bool,
        /// Who hears the outcome.
        reply: Option<wire::ReplyRef>,
        /// The node it came from, when this node forwards another node's publish on
        /// (it handed the room's stream to `to`).
        origin: Option<u64>,
        /// The forwarding shard and the number it holds the publish under until `to`
        /// confirms it (`shard::forwards`).
        fwd: (u16, u64),
    },
    /// Confirm to node `to` that this node took the publish its shard `shard` forwarded
    /// as number `id`.
    Confirm {
        /// The forwarding node.
        to: u64,
        /// Its shard that holds the publish.
        shard: u16,
        /// The forward's number there.
        id: u64,
    },
    /// Tell every other node to carry out an operator command (server API).
    Admin(Arc<crate::room::request::AdminOp>),
    /// Say goodbye and stop (server shutdown).
    Shutdown,
}

impl From<ClusterOut> for BusOut {
    /// A room owner's output for the other nodes, as a bridge queue message.
    fn from(out: ClusterOut) -> BusOut {
        BusOut::Room(out)
    }
}

/// What the bridge hands a shard.
#[derive(Debug)]
pub enum BusIn {
    /// To a room's owner shard: a frame the room's sequencer published.
    Frame {
        /// Room name.
        room: Arc<str>,
        /// Stream epoch.
        epoch: u64,
        /// Sequence number.
        seq: u64,
        /// The sequencer node.
        node: u64,
        /// The finished frame.
        frame: Bytes,
        /// The sender of a `skip_self` message (left out if it is a local connection).
        skip: Option<crate::room::request::Sender>,
    },
    /// To a room's owner shard: a volatile frame the room's sequencer published.
    Volatile {
        /// Room name.
        room: Arc<str>,
        /// The finished frame.
        frame: Bytes,
        /// The sender of a `skip_self` message (left out if it is a local connection).
        skip: Option<crate::room::request::Sender>,
    },
    /// To a room's owner shard: a user arrived on or left node `node`.
    Presence {
        /// Room name.
        room: Arc<str>,
        /// The node.
        node: u64,
        /// The user.
        user: Arc<str>,
        /// Arrived or left.
        present: bool,
    },
    /// To a room's owner shard: all users node `node` has in the room.
    Users {
        /// Room name.
        room: Arc<str>,
        /// The node.
        node: u64,
        /// Its users.
        users: Vec<Arc<str>>,
    },
    /// To a room's owner shard: a join/leave event the room's holder decided.
    Event {
        /// Room name.
        room: Arc<str>,
        /// The finished frame.
        frame: Bytes,
    },
    /// To a room's owner shard: the room's cluster-wide count, from its holder.
    Count {
        /// Room name.
        room: Arc<str>,
        /// Distinct users.
        count: u32,
        /// The holder's stream of the room, (epoch, last seq), when it has a settled one.
        stream: Option<(u64, u64)>,
        /// The holder.
        node: u64,
    },
    /// To an owner shard: cluster-wide counts of its rooms, from their holders (the
    /// rooms of one [`wire::Header::Counts`] this node subscribed to and the shard owns).
    Counts(Vec<(Arc<str>, u32)>),
    /// To a room's owner shard: a presence query forwarded by another node.
    PresenceQuery(Box<PresenceReq>),
    /// To a room's owner shard: node `node` subscribed to the room (the holder answers
    /// with the room's count and stream position).
    SyncReq {
        /// Room name.
        room: Arc<str>,
        /// The asking node.
        node: u64,
    },
    /// To a room's owner shard: node `node` handed the room's stream (`epoch`, last
    /// `seq`) to this node.
    Handoff {
        /// Room name.
        room: Arc<str>,
        /// The stream.
        epoch: u64,
        /// Its last seq.
        seq: u64,
        /// The old sequencer.
        node: u64,
    },
    /// To a room's owner shard: node `node` asks for the frames of stream `epoch` after
    /// `after`.
    CatchUp {
        /// Room name.
        room: Arc<str>,
        /// The stream.
        epoch: u64,
        /// The last seq it holds.
        after: u64,
        /// The asking node.
        node: u64,
    },
    /// To a room's owner shard: part of the answer to a catch-up this node asked for.
    Frames {
        /// Room name.
        room: Arc<str>,
        /// The stream.
        epoch: u64,
        /// Seq of the first frame.
        first: u64,
        /// The frames, in order.
        frames: Vec<Bytes>,
        /// The last part.
        done: bool,
        /// The answering node.
        node: u64,
    },
    /// To every shard: node `.0` said goodbye (its handoff marks came just before).
    Goodbye(u64),
    /// To every shard: the live nodes (sorted, this one included).
    Nodes(Arc<[u64]>),
    /// To every shard: node `0` is dead; its users leave every room.
    NodeGone(u64),
    /// To the shard that forwarded it: `node` took forward number `id`.
    Confirmed {
        /// The node that took it.
        node: u64,
        /// The forward's number on this shard.
        id: u64,
    },
    /// To every shard: send this node's users of every room to the rooms' keepers (this
    /// node reconnected: the others may have declared it dead and forgotten them).
    Resync,
    /// An operator command another node received (to every shard for user commands, to
    /// the room's owner for history removal).
    Admin(Arc<crate::room::request::AdminOp>),
}

/// Bridge queue capacity (messages); beyond it shards drop and count.
pub const OUT_CAPACITY: usize = 64 * 1024;

/// A shard's handle on the bridge: cheap to clone, never blocks.
#[derive(Clone)]
pub(crate) struct Bus {
    /// This node's id (random, nonzero, new at every start).
    pub node: u64,
    tx: Sender<BusOut>,
    waker: Arc<AtomicWaker>,
    state: Arc<AtomicU8>,
    /// Counters.
    pub stats: Arc<BusStats>,
    /// Shards that handed their rooms on at shutdown (see [`Bus::shard_left`]).
    left: Arc<AtomicU64>,
}

/// The bridge's end of the queue.
pub(crate) struct Outbox {
    rx: Receiver<BusOut>,
    waker: Arc<AtomicWaker>,
}

impl Outbox {
    /// Next message, or `Pending` after registering to be woken by the next send.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<BusOut>> {
        match self.rx.try_recv() {
            Ok(m) => return Poll::Ready(Some(m)),
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        self.waker.register(cx.waker());
        match self.rx.try_recv() {
            Ok(m) => Poll::Ready(Some(m)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }
}

/// A new queue between the shards and the bridge of node `node`.
pub(crate) fn queue(node: u64) -> (Bus, Outbox) {
    let (tx, rx) = crossbeam_channel::bounded(OUT_CAPACITY);
    let waker = Arc::new(AtomicWaker::new());
    let bus = Bus {
        node,
        tx,
        waker: waker.clone(),
        state: Arc::new(AtomicU8::new(BusState::Disconnected as u8)),
        stats: Arc::new(BusStats::default()),
        left: Arc::new(AtomicU64::new(0)),
    };
    (bus, Outbox { rx, waker })
}

impl Bus {
    /// Queues `msg` for the bridge and wakes it; drops and counts it when the queue is
    /// full. Returns whether it was queued.
    pub fn send(&self, msg: BusOut) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.waker.wake();
                true
            }
            Err(TrySendError::Full(_)) => {
                bump(&self.stats.relay_dropped);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// One of the node's `shards` shards has handed its rooms' streams on at shutdown;
    /// after the last one, the bridge says goodbye and stops. The goodbye thus follows
    /// every handoff mark in the bridge's queue, so other nodes see the marks first.
    pub fn shard_left(&self, shards: usize) {
        if self.left.fetch_add(1, Ordering::AcqRel) + 1 == shards as u64 {
            self.send(BusOut::Shutdown);
        }
    }

    /// The connection state.
    pub fn state(&self) -> BusState {
        match self.state.load(Ordering::Acquire) {
            1 => BusState::Connected,
            _ => BusState::Disconnected,
        }
    }

    /// Whether NATS is reachable now.
    pub fn connected(&self) -> bool {
        self.state() == BusState::Connected
    }

    pub(crate) fn set_state(&self, s: BusState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Counts one occurrence.
    pub fn count(&self, c: impl Fn(&BusStats) -> &AtomicU64) {
        bump(c(&self.stats));
    }

    /// The current figures.
    pub fn report(&self) -> BusReport {
        let s = &self.stats;
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BusReport {
            state: self.state().as_str(),
            node: self.node,
            nodes: r(&s.nodes).max(1),
            relayed_out: r(&s.relayed_out),
            relayed_in: r(&s.relayed_in),
            relay_dropped: r(&s.relay_dropped),
            forwarded: r(&s.forwarded),
            forwards_resent: r(&s.forwards_resent),
            forwards_unconfirmed: r(&s.forwards_unconfirmed),
            reconnects: r(&s.reconnects),
            decode_errors: r(&s.decode_errors),
            seq_gaps: r(&s.seq_gaps),
            epoch_changes: r(&s.epoch_changes),
            room_subscriptions: r(&s.room_subscriptions),
            stream_continuations: r(&s.stream_continuations),
            rejoins_held: r(&s.rejoins_held),
            rejoins_held_recovered: r(&s.rejoins_held_recovered),
            joins_held_for_stream: r(&s.joins_held_for_stream),
            joins_held_timed_out: r(&s.joins_held_timed_out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut c = ClusterConfig::new("nats://x");
        c.password = Some("hunter2".into());
        c.token = Some("s3cret".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret") && shown.contains("<hidden>"), "{shown}");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (bus, outbox) = queue(7);
        for _ in 0..OUT_CAPACITY {
            assert!(bus.send(BusOut::Room(ClusterOut::Unsubscribe("r".into()))));
        }
        assert!(!bus.send(BusOut::Room(ClusterOut::Unsubscribe("r".into()))));
        assert_eq!(bus.report().relay_dropped, 1);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(outbox.poll_recv(&mut cx), Poll::Ready(Some(BusOut::Room(ClusterOut::Unsubscribe(_))))));
        assert_eq!(bus.report().state, "disconnected");
    }
}
