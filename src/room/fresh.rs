//! First joins of a room on a node with no copy of its stream (cluster). A room's stream
//! (epoch, seq) belongs to its sequencer node; a node that gets the room's first local
//! member creates the room with a provisional epoch of its own, which no stream has.
//! Frames do not carry the epoch, so a client answered `joined` with it would keep it
//! for good, and every later rejoin with it (on any node) would answer
//! `recovered: false` although nothing was lost.
//!
//! So such a node **holds the answer** (the join itself is counted at once, as any
//! join) until it knows the stream's position: its first frame of the room, or the
//! sequencer's answer to the request the node sends when it subscribes to the room
//! (the room's count answer, which carries the holder's — the sequencer's — epoch and
//! last seq). It then answers every held join with that epoch and the last seq handed
//! to its members before the answer: the joiner becomes a member when its answer
//! reaches its shard, after those frames, so it gets each later frame once.
//!
//! Bounds: a room's first joins wait at most [`STREAM_WAIT_MS`] (from the first one),
//! then are answered as before, with the provisional epoch (counted); at most
//! [`MAX_HELD_FIRST_JOINS`] are held per shard (one more is answered at once). Only
//! joins that arrive while the room waits for the answer its subscription asked for
//! are held, so a room whose sequencer is silent costs each join at most one wait,
//! never a hang. A connection that closes while held undoes its join when the answer
//! reaches its shard, like any join answered after its connection went away. Never
//! held: the sequencer's own joins, a single node, personal rooms, `create`, a node
//! whose bus is down, and a room that has a stream here already.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::out::{refuse, Sink};
use super::request::{JoinKind, JoinReq};
use super::sequence::ack_join;
use super::{placement, OwnedRoom, OwnedRooms};
use crate::protocol::{ErrorCode, SYSTEM_ROOM_PREFIX};

/// Longest time a room's first joins wait for its stream's position: the sequencer's
/// answer takes one bus round trip; after this it is not coming (the sequencer died,
/// the bus lost the request), and the join is answered as it always was.
pub const STREAM_WAIT_MS: u64 = 2_500;

/// Most first joins held at once on one shard (each holds its join request, ~200
/// bytes): one more is answered at once.
pub const MAX_HELD_FIRST_JOINS: usize = 16_384;

/// The first joins of one room, waiting for its stream.
struct Waiting {
    /// When to answer anyway (wall ms): the first held join's arrival plus the wait.
    deadline_ms: u64,
    /// The joins, counted already, in arrival order.
    joins: Vec<JoinReq>,
}

/// The first joins an owner shard holds, by room. Empty (no allocation) while nothing
/// is held.
#[derive(Default)]
pub(super) struct FirstJoins {
    rooms: FxHashMap<Arc<str>, Waiting>,
    /// Held joins, over all rooms.
    len: usize,
    /// Joins held, since last taken.
    held: u64,
    /// Held joins answered after the wait without the stream, since last taken.
    timed_out: u64,
}

/// Whether `room` has no copy of a stream on node `me`: no frame yet and the stream is
/// the node's own provisional one (a room created here, for a join or a kept presence).
fn provisional(room: &OwnedRoom, me: u64) -> bool {
    room.seq == 0 && room.sequencer == me
}

impl OwnedRooms {
    /// Holds the counted join `req` (see the module) when its room has no stream here
    /// and another node sequences it; `asked`: this very join subscribed this node to
    /// the room, which asks the sequencer for the stream's position. Gives the join
    /// back when it is answered at once.
    pub(super) fn hold_first_join(&mut self, req: JoinReq, asked: bool, now_ms: u64) -> Option<JoinReq> {
        let me = self.node;
        if me == 0 || !self.bus_up || !matches!(req.kind, JoinKind::Join { .. }) {
            return Some(req);
        }
        let Some(room) = self.rooms.get(&req.room) else { return Some(req) };
        let waiting = self.first_joins.rooms.contains_key(&room.name);
        let holdable = !room.is_system()
            && provisional(room, me)
            && (asked || waiting)
            && !self.pending.contains_key(&room.name)
            && placement::sequencer(&room.name, &self.nodes).is_some_and(|s| s != me);
        if !holdable || self.first_joins.len >= MAX_HELD_FIRST_JOINS {
            return Some(req);
        }
        let deadline_ms = now_ms.saturating_add(STREAM_WAIT_MS);
        let name = room.name.clone();
        self.first_joins
            .rooms
            .entry(name)
            .or_insert_with(|| Waiting { deadline_ms, joins: Vec::new() })
            .joins
            .push(req);
        self.first_joins.len += 1;
        self.first_joins.held += 1;
        None
    }

    /// Takes the counts since the last call: (first joins held for the stream, of those
    /// answered after the wait without it).
    pub fn take_first_join_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.first_joins.held), std::mem::take(&mut self.first_joins.timed_out))
    }

    /// Answers the first joins held for `name` once its stream is known here (a frame
    /// came, the sequencer answered, this node sequenced it) and no catch-up is under
    /// way; with `all`, whatever the stream (the room is going away).
    pub(super) fn answer_first_joins(&mut self, name: &str, all: bool, sink: &mut Sink<'_>) {
        if self.first_joins.len == 0 || (!all && self.catching_up(name)) {
            return;
        }
        let Some(room) = self.rooms.get(name) else { return };
        if !all && provisional(room, self.node) {
            return;
        }
        let Some(waiting) = self.first_joins.rooms.remove(name) else { return };
        self.first_joins.len -= waiting.joins.len();
        for req in &waiting.joins {
            ack_join(room, req, sink);
        }
    }

    /// Answers every join held for `name` that can be answered now: rejoins waiting for
    /// the copy to reach their `since` (see `rejoin`), and first joins waiting for the
    /// stream; with `all`, every one (the room is going away). Called wherever the
    /// room's copy of the stream moves.
    pub(super) fn answer_held(&mut self, name: &str, all: bool, sink: &mut Sink<'_>) {
        self.answer_rejoins(name, all, sink);
        self.answer_first_joins(name, all, sink);
    }

    /// Answers the first joins whose wait is over as they would have been answered at
    /// once (counted); those of a room that is gone are refused (their shard must hear
    /// back).
    pub(super) fn first_join_tick(&mut self, now_ms: u64, sink: &mut Sink<'_>) {
        if self.first_joins.len == 0 {
            return;
        }
        let due: Vec<Arc<str>> = self
            .first_joins
            .rooms
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now_ms)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let Some(waiting) = self.first_joins.rooms.remove(&name) else { continue };
            self.first_joins.len -= waiting.joins.len();
            let Some(room) = self.rooms.get(&name) else {
                for req in &waiting.joins {
                    refuse(req, ErrorCode::NoSuchRoom, "the room was deleted", sink);
                }
                continue;
            };
            self.first_joins.timed_out += waiting.joins.len() as u64;
            for req in &waiting.joins {
                ack_join(room, req, sink);
            }
        }
    }

    /// The room's holder `from` (its sequencer) answered this node's subscription with
    /// its stream: `epoch`, last `seq`. A room with no stream here yet starts its copy
    /// there (its history has nothing before `seq`: a `since` below it is answered like
    /// any `since` older than the history), and its held first joins are answered with
    /// it. A held rejoin of that stream from before `seq` has the frames in between
    /// fetched from the sequencer first (a catch-up), as when a copy starts with a frame
    /// after it (see `rejoin`). Ignored when the room has a stream here already: its
    /// frames came first, and they are the newer word.
    pub fn remote_stream(&mut self, name: &str, from: u64, epoch: u64, seq: u64, now_ms: u64, sink: &mut Sink<'_>) {
        let me = self.node;
        if me == 0 || from == me || self.pending.contains_key(name) {
            return;
        }
        let floor = self.rejoin_floor(name, epoch, seq.saturating_add(1));
        let Some(room) = self.rooms.get_mut(name).filter(|r| r.subscribed && !r.is_system()) else { return };
        if !provisional(room, me) {
            return;
        }
        // The node's copy switches from its provisional stream to the sequencer's, as
        // with a first frame.
        room.new_stream(epoch, from, &mut self.budget);
        self.epoch_changes += 1;
        let name = room.name.clone();
        match floor {
            Some(after) => {
                room.seq = after;
                self.catch_up_to(&name, epoch, after, seq, from, now_ms, sink);
            }
            None => {
                room.seq = seq;
                self.answer_held(&name, false, sink);
            }
        }
    }

    /// On the room's holder (its sequencer), answering a node that subscribed: a public
    /// room it has no copy of is created here, so that its stream, whose epoch it tells
    /// that node, is the one its first publish continues (at seq 1).
    ///
    /// Also just after the live set changed, when another node may be handing the
    /// room's stream over: the asking node's presence message, right behind its request,
    /// creates the same room here anyway (`kept_room`), and a mark then still replaces
    /// its stream while it has no message. The asking node then follows the mark's
    /// stream from its first frame, and its first joiners hold an epoch no stream has,
    /// as they would without an answer; in a cluster that just formed, where no stream
    /// can be handed over, they get the right one.
    pub(super) fn stream_room(&mut self, name: &str, now_ms: u64) {
        if self.node == 0 || self.rooms.contains_key(name) || name.starts_with(SYSTEM_ROOM_PREFIX) {
            return;
        }
        let name: Arc<str> = name.into();
        let room = OwnedRoom::new(name.clone(), self.shards, self.node, now_ms, None, None);
        self.rooms.insert(name, Box::new(room));
    }

    /// The stream position the holder tells a node that subscribed to `room`: (epoch,
    /// last seq) when it is settled here (this node sequences it, or follows one with
    /// frames, and no handoff is under way); `None` otherwise (that node's first joins
    /// then wait for a frame, or the bound).
    pub(super) fn stream_position(&self, room: &OwnedRoom) -> Option<(u64, u64)> {
        let own = room.sequencer == self.node;
        ((own || room.seq > 0) && !self.pending.contains_key(&room.name)).then_some((room.stream, room.seq))
    }
}
