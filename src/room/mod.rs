//! The owner side of rooms: sequencing, presence, history, fan-out targets.
//!
//! Every room lives on exactly one owner shard (the runtime's routing rule). The owner is
//! the room's single point of order: it numbers messages (`seq`), stamps them (`ts`),
//! builds each frame once, and hands one clone to each member shard. Because one owner
//! sends all of a room's frames down FIFO inboxes, every member sees the same order.
//!
//! This module is the pure core: it knows no runtime, no inbox message, no bus. It takes
//! requests ([`request`]) and emits [`RoomOut`]s into a sink ([`out`]); the runtime turns
//! those into inbox messages and bridge sends. Its rules are unit-tested here without a
//! runtime.
//!
//! | module | job |
//! |---|---|
//! | [`request`] | requests rooms take, who asked, answers |
//! | [`out`] | what rooms emit, reply routing |
//! | `owned` | one room's state |
//! | `online` | personal rooms: which shards have each user's connections, the room made on first use, and users online cluster-wide (`user_online`/`user_offline`) |
//! | `sequence` | join, leave, delete, publish, broadcast |
//! | [`placement`] | which node sequences a room and keeps its presence (rendezvous) |
//! | `presence` | the presence-event rule, the cluster's presence keepers, presence pages |
//! | [`recent`] | idempotency keys of recent publishes |
//! | `rejoin` | rejoins ahead of this node's copy of a stream, held until it catches up (cluster) |
//! | `fresh` | first joins on a node with no copy of a room's stream, held until it knows the sequencer's (cluster) |
//! | `retention` | history pages, lingering empty rooms, the memory budget's room side |
//! | `stream` | adopting the stream another node sequences (cluster) |
//! | [`handoff`] | continuing a stream when its sequencer changes, catching up missed frames (cluster) |
//! | `restore` | rooms rebuilt from the durable log, and the checkpoint that compacts it |
//! | [`history`] | the history ring and the shard-wide budget |
//! | [`users`] | cluster-wide users of a room |

mod fresh;
pub mod handoff;
pub mod history;
mod online;
pub mod out;
mod owned;
pub mod placement;
mod presence;
pub mod recent;
mod rejoin;
pub mod request;
mod restore;
mod retention;
mod sequence;
mod stream;
pub mod users;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use history::{Budget, Caps};

pub use crate::metrics::RoomSummary;
pub use out::{refuse, ClusterOut, Hook, HookKind, HookMessage, LocalAnswer, RoomOut, Sink, ToShard};
pub use owned::OwnedRoom;
pub use presence::announced;
pub use request::JoinReq;
use retention::{Lingering, RingsOf};

/// Shortest time a room with no local member lingers on its sequencer node after a
/// message (cluster mode): a room sequenced for other nodes' members must keep its
/// stream (epoch, seq) between messages, even with `--history-ttl 0`.
const RELAY_LINGER_MS: u64 = 60_000;

/// The name broadcast messages carry: every connection receives this stream without
/// joining it.
pub const BROADCAST_ROOM: &str = "@all";

/// One page of a room's member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresencePage {
    /// Room name.
    pub room: Arc<str>,
    /// Distinct users present in total.
    pub count: u32,
    /// This page's users, sorted.
    pub users: Vec<Arc<str>>,
    /// Cursor for the next page (the last name of this one), when more remain.
    pub next: Option<Arc<str>>,
    /// The room is password-protected (the HTTP API then needs its key).
    pub private: bool,
}

/// History settings of one shard.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Per-room caps (`messages == 0`: no history).
    pub caps: Caps,
    /// This shard's share of the history memory, bytes.
    pub memory: usize,
    /// How long an empty room keeps its history, ms.
    pub ttl_ms: u64,
}

impl HistoryConfig {
    /// A shard's settings from the server-wide ones: the memory is split evenly over
    /// `shards` shards.
    pub fn split(caps: Caps, memory: usize, ttl: std::time::Duration, shards: usize) -> Self {
        HistoryConfig { caps, memory: memory / shards.max(1), ttl_ms: ttl.as_millis() as u64 }
    }
}

/// What the shard must do after [`OwnedRooms::join`].
pub enum JoinStep {
    /// Nothing: the join was sequenced or refused.
    Done,
    /// Verify `password` against `hash` off the event loop; on success resubmit `req`
    /// with `verified = Some(epoch)`, on failure refuse it ([`refuse`]).
    CheckPassword {
        /// The join to resubmit.
        req: JoinReq,
        /// The room's password hash.
        hash: Arc<str>,
        /// What the client sent.
        password: Box<str>,
        /// The room instance the password was checked against.
        epoch: u64,
    },
}

/// Every room this shard owns.
pub struct OwnedRooms {
    /// Boxed: a hash table keeps spare slots (up to half of them right after it grows),
    /// and with a million personal rooms a spare slot of a 24-byte pointer costs far less
    /// than one of an inline room (~100 B): ~100 B less per user (DESIGN-NOTES, memory).
    rooms: FxHashMap<Arc<str>, Box<OwnedRoom>>,
    /// Sequence of the broadcast stream (`@all`); used on the shard that owns it.
    broadcast_seq: u64,
    /// Per-room history limits.
    history: Caps,
    /// This shard's share of the server-wide history memory.
    budget: Budget,
    /// How long an empty room keeps its history (ms; 0: dropped at once).
    ttl_ms: u64,
    /// Rooms that emptied, in order. Checked from the front.
    lingering: VecDeque<Lingering>,
    shards: usize,
    /// This node's id in a cluster (0: no cluster). Then the owner also talks to the
    /// other nodes ([`RoomOut::Cluster`]): subscriptions, presence, sequenced frames.
    node: u64,
    /// Room frames that arrived after a gap, since last taken (see [`Self::take_counts`]).
    gaps: u64,
    /// Stream epoch changes, since last taken.
    epoch_changes: u64,
    /// Requests from another node that named nobody who could take the answer, since
    /// last taken (see [`Self::take_unanswered`]).
    unanswered: u64,
    /// Join/leave events only in rooms of at most this many users (see [`announced`]).
    presence_events_max: u32,
    /// The live cluster nodes, sorted, this one included (just this one until the bridge
    /// says otherwise): where each room's presence is kept ([`placement`]).
    nodes: Arc<[u64]>,
    /// Rooms held here whose count changed since the last report, in order.
    dirty_counts: Vec<Arc<str>>,
    /// Outcomes of recent publishes with an idempotency key.
    recent: recent::Recent,
    /// Whether what a restart needs is emitted as [`RoomOut::Log`] (`--data-dir`).
    journal: bool,
    /// Whether to emit webhook events ([`RoomOut::Hook`]).
    hooks: bool,
    /// Whether `user_online`/`user_offline` are decided cluster-wide (see `online`).
    user_hooks: bool,
    /// Whether sequenced messages emit `message_published` hooks.
    message_hooks: bool,
    /// Personal rooms kept here: the other nodes where their user is connected (`online`).
    online: FxHashMap<Arc<str>, Vec<u64>>,
    /// Users with connections on this node whose personal rooms this shard owns, with
    /// the shards that have them (`online`): the members of those rooms, which exist
    /// only from their first use.
    users_here: FxHashMap<Arc<str>, online::ShardSet>,
    /// The live nodes before the last change, once this node has seen other nodes
    /// (`online`: whose snapshots announce arrivals).
    online_prev: Option<Arc<[u64]>>,
    /// Rooms whose cluster stream waits for a handoff mark or a catch-up ([`handoff`]).
    pending: FxHashMap<Arc<str>, handoff::Pending>,
    /// Rooms whose stream this node handed to another node, and to which.
    handed: FxHashMap<Arc<str>, u64>,
    /// Nodes that said goodbye lately, with when (wall ms).
    goodbyes: FxHashMap<u64, u64>,
    /// Streams continued from a handoff mark, since last taken.
    continuations: u64,
    /// The latest wall clock (ms) a caller passed in, for work triggered where none is.
    clock_ms: u64,
    /// Whether the cluster bus is connected (see [`Self::set_bus_up`]).
    bus_up: bool,
    /// When the live set last changed (wall ms; see [`Self::view_changed`]).
    view_changed_ms: u64,
    /// Rejoins held until this node's copy of their stream catches up (`rejoin`).
    rejoins: rejoin::Rejoins,
    /// First joins held until this node knows the room's stream (`fresh`).
    first_joins: fresh::FirstJoins,
}

impl OwnedRooms {
    /// An empty set of rooms for a server of `shards` shards.
    pub fn new(shards: usize, presence_events_max: u32, history: HistoryConfig) -> Self {
        OwnedRooms {
            rooms: FxHashMap::default(),
            broadcast_seq: 0,
            history: history.caps,
            budget: Budget::new(history.memory),
            ttl_ms: history.ttl_ms,
            lingering: VecDeque::new(),
            shards,
            presence_events_max,
            node: 0,
            nodes: Arc::from([]),
            dirty_counts: Vec::new(),
            gaps: 0,
            epoch_changes: 0,
            unanswered: 0,
            recent: recent::Recent::new(recent::WINDOW_MS, recent::MAX_KEYS),
            journal: false,
            hooks: false,
            user_hooks: false,
            message_hooks: false,
            online: FxHashMap::default(),
            users_here: FxHashMap::default(),
            online_prev: None,
            pending: FxHashMap::default(),
            handed: FxHashMap::default(),
            goodbyes: FxHashMap::default(),
            continuations: 0,
            clock_ms: 0,
            bus_up: true,
            view_changed_ms: 0,
            rejoins: rejoin::Rejoins::default(),
            first_joins: fresh::FirstJoins::default(),
        }
    }

    /// Turns the durable log on: every sequenced frame, history removal, dropped room and
    /// created room's metadata is also emitted as a [`RoomOut::Log`] record.
    pub fn with_journal(mut self) -> Self {
        self.journal = true;
        self
    }

    /// Turns webhook events on: presence changes also emit [`RoomOut::Hook`].
    pub fn with_hooks(mut self, on: bool) -> Self {
        self.hooks = on;
        self
    }

    /// Turns `message_published` hooks on: every sequenced (not volatile) message also
    /// emits a [`RoomOut::Hook`] carrying it, where it is sequenced.
    pub fn with_message_hooks(mut self, on: bool) -> Self {
        self.message_hooks = on;
        self
    }

    /// Takes the idempotency counts since the last call: (retries answered from memory,
    /// keys forgotten before their window ended), and the keys remembered now.
    pub fn take_idempotency_counts(&mut self) -> (u64, u64, usize) {
        let (replays, evicted) = self.recent.take_counts();
        (replays, evicted, self.recent.len())
    }

    /// Turns cluster mode on: this node is `node` (nonzero).
    pub fn with_cluster(mut self, node: u64) -> Self {
        self.node = node;
        self.nodes = Arc::from([node]);
        self
    }

    /// Takes the cluster counts gathered since the last call: (gaps, epoch changes).
    pub fn take_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.gaps), std::mem::take(&mut self.epoch_changes))
    }

    /// Takes the number of requests from other nodes left unanswered since the last call
    /// (their requester named no connection to send the answer to).
    pub fn take_unanswered(&mut self) -> u64 {
        std::mem::take(&mut self.unanswered)
    }

    /// Bytes and messages of history held on this shard.
    pub fn history_usage(&self) -> (usize, usize) {
        (self.budget.bytes(), self.budget.messages())
    }

    /// Number of rooms owned here.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is owned here.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Looks up a room.
    pub fn get(&self, room: &str) -> Option<&OwnedRoom> {
        self.rooms.get(room).map(|r| &**r)
    }

    /// Every owned room, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &OwnedRoom> {
        self.rooms.values().map(|r| &**r)
    }

    /// Public rooms owned here: the `limit` largest by members (largest first), or just
    /// `only` when given. Selecting before sorting keeps this fast with a million rooms.
    pub fn summaries(&self, only: Option<&str>, limit: usize) -> Vec<RoomSummary> {
        if let Some(name) = only {
            return self.rooms.get(name).filter(|r| !r.is_system()).map(|r| r.summary()).into_iter().collect();
        }
        let mut rooms: Vec<&OwnedRoom> = self.rooms.values().map(|r| &**r).filter(|r| !r.is_system()).collect();
        let by_size = |a: &&OwnedRoom, b: &&OwnedRoom| b.user_count().cmp(&a.user_count()).then(a.name.cmp(&b.name));
        if rooms.len() > limit {
            if limit == 0 {
                return Vec::new();
            }
            rooms.select_nth_unstable_by(limit - 1, by_size);
            rooms.truncate(limit);
        }
        rooms.sort_unstable_by(by_size);
        rooms.into_iter().map(OwnedRoom::summary).collect()
    }

    /// Public and personal rooms owned here. A personal room counts while its user is
    /// connected to this node, whether or not its room exists yet (see `online`), and
    /// while it is kept for its history after the user left.
    pub fn counts(&self) -> (u64, u64) {
        // Personal rooms whose user is connected are counted once, in `users_here`.
        let kept = self.rooms.values().filter(|r| r.is_system() && r.connections() == 0).count() as u64;
        let public = self.rooms.values().filter(|r| !r.is_system()).count() as u64;
        (public, kept + self.users_here.len() as u64)
    }
}
