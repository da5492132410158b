//! Streams that outlive their sequencer (cluster): a node that stops sequencing a room
//! hands the stream on with a **handoff mark** (epoch, last seq) addressed to the room's
//! new sequencer, which continues the same epoch at the next seq when it holds the
//! stream up to the mark, after fetching the frames it lacks from the old sequencer's
//! history (a **catch-up**). The same catch-up fills a hole in the frames a node
//! receives, instead of restarting its history there.
//!
//! Safety rule: a node sequences an epoch it did not start only after a mark handed it
//! that epoch, and a node that sends a mark never sequences that stream again (it
//! forwards what reaches it). A mark names one successor, so at most one node holds
//! the right to continue an epoch at a time, and two different frames can never carry
//! the same (epoch, seq). Whatever goes wrong (no mark, frames the old sequencer no
//! longer holds, an answer that never comes) ends in a new epoch after a bounded wait,
//! exactly as a takeover without a mark always did.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::out::{ClusterOut, RoomOut, Sink};
use super::request::{Publish, Sender};
use rustc_hash::FxHashMap;

use super::{placement, OwnedRoom, OwnedRooms};

/// How long a node that must sequence a room waits for the previous sequencer's mark
/// (or, once it has it, for the frames it lacks) before it starts a new epoch instead:
/// the default node timeout, by which a node that joined has been heard by everyone.
pub const HANDOFF_WAIT_MS: u64 = 3_000;

/// Publishes (or out-of-order frames) held per room while waiting; one more starts a
/// new epoch (or restarts the history) at once rather than grow without bound.
pub const MAX_HELD: usize = 4_096;

/// Largest answer to a catch-up request in one bus message (frame bytes); a longer one
/// goes in several, in order, on the one subject.
const CHUNK_BYTES: usize = 256 * 1024;

/// A frame received after a hole, held until the hole is filled.
pub(super) struct HeldFrame {
    pub(super) seq: u64,
    pub(super) node: u64,
    pub(super) frame: Bytes,
    pub(super) skip: Option<Sender>,
}

/// A room whose stream waits: for a handoff mark, for the frames a catch-up asked for,
/// or both.
pub(super) struct Pending {
    /// The node asked for the missing frames (none: nothing asked yet).
    asked: Option<u64>,
    /// The stream the missing frames belong to.
    epoch: u64,
    /// Hold on until the room's seq reaches this.
    upto: u64,
    /// A mark handed the stream to this node: sequence it once caught up.
    take_over: bool,
    /// The node that sent the mark (it gave the stream up, whatever its view says).
    handed_by: u64,
    /// When to give up (wall ms).
    deadline_ms: u64,
    /// Frames after the hole, in arrival order.
    frames: VecDeque<HeldFrame>,
    /// Publishes this node must sequence, in arrival order.
    publishes: VecDeque<Publish>,
}

impl Pending {
    fn new(epoch: u64, now_ms: u64) -> Pending {
        Pending {
            asked: None,
            epoch,
            upto: 0,
            take_over: false,
            handed_by: 0,
            deadline_ms: now_ms + HANDOFF_WAIT_MS,
            frames: VecDeque::new(),
            publishes: VecDeque::new(),
        }
    }
}

/// Stops sequencing `room` here and sends its stream to node `to` with a mark.
fn hand_room(room: &mut OwnedRoom, to: u64, handed: &mut FxHashMap<Arc<str>, u64>, sink: &mut Sink<'_>) {
    room.sequencer = to;
    handed.insert(room.name.clone(), to);
    let mark = ClusterOut::Handoff { room: room.name.clone(), epoch: room.stream, seq: room.seq, to };
    sink(RoomOut::Cluster(mark));
}

/// What [`OwnedRooms::takeover`] decided for a publish.
pub(super) enum Takeover {
    /// Sequence it now.
    Go(Publish),
    /// Held until the room's stream is settled.
    Held,
}

impl OwnedRooms {
    /// Whether the bus is up (the runtime says so before each publish): while it is
    /// down this node sequences every room itself at once, as it always did.
    pub fn set_bus_up(&mut self, up: bool) {
        self.bus_up = up;
    }

    /// The live set changed at `now_ms` (the runtime calls this with every new view):
    /// for [`HANDOFF_WAIT_MS`] marks may be on their way for rooms of unknown sequencer.
    pub fn view_changed(&mut self, now_ms: u64) {
        self.view_changed_ms = now_ms;
    }

    /// Whether the live set changed less than [`HANDOFF_WAIT_MS`] ago, with other nodes
    /// in it that may hand streams over.
    pub(super) fn view_unsettled(&self, now_ms: u64) -> bool {
        self.node != 0 && self.nodes.len() > 1 && now_ms < self.view_changed_ms.saturating_add(HANDOFF_WAIT_MS)
    }

    /// Streams continued from another node's handoff mark since the last call.
    pub fn take_continuations(&mut self) -> u64 {
        std::mem::take(&mut self.continuations)
    }

    /// The node this node handed `room`'s stream to, while that still stands: a
    /// publish another node forwarded here goes on there.
    pub fn handed_to(&self, room: &str) -> Option<u64> {
        self.handed.get(room).copied()
    }

    /// Node `node` said goodbye: a mark it sent just before may still be on its way, so
    /// its rooms are waited for (see [`Self::takeover`]) rather than started anew.
    pub fn goodbye(&mut self, node: u64, now_ms: u64) {
        self.goodbyes.retain(|_, &mut at| now_ms < at + HANDOFF_WAIT_MS);
        self.goodbyes.insert(node, now_ms);
    }

    /// Hands every public room sequenced here whose sequencer among `live` is another
    /// node to that node: a mark with the stream's epoch and last seq to it, and this
    /// node stops sequencing the stream. Called when the live set changed, and at
    /// shutdown with this node left out of `live`.
    pub fn hand_off(&mut self, live: &[u64], sink: &mut Sink<'_>) {
        let me = self.node;
        if me == 0 {
            return;
        }
        for room in self.rooms.values_mut() {
            if room.sequencer != me || room.seq == 0 || room.is_system() {
                continue;
            }
            let Some(to) = placement::sequencer(&room.name, live).filter(|&n| n != me) else { continue };
            hand_room(room, to, &mut self.handed, sink);
        }
    }

    /// Decides whether a publish this node must sequence can be sequenced now. When the
    /// room's stream belongs to another node that may still hand it over (it is alive,
    /// it said goodbye a moment ago, or the room was restored from the log and its
    /// sequencer is unknown), the publish is held until the mark, or for at most
    /// [`HANDOFF_WAIT_MS`]; otherwise (the sequencer crashed, a personal room, or the
    /// bus is down and this node sequences everything itself) this node starts a new
    /// epoch at once, as any takeover without a mark.
    pub(super) fn takeover(&mut self, msg: Publish, now_ms: u64, sink: &mut Sink<'_>) -> Takeover {
        let me = self.node;
        if me == 0 {
            return Takeover::Go(msg);
        }
        self.clock_ms = now_ms;
        let Some(room) = self.rooms.get(&msg.room) else { return Takeover::Go(msg) };
        if room.sequencer == me {
            return Takeover::Go(msg);
        }
        let name = room.name.clone();
        if let Some(p) = self.pending.get_mut(&name) {
            if p.publishes.len() < MAX_HELD {
                p.publishes.push_back(msg);
                return Takeover::Held;
            }
            self.give_up(&name, now_ms, sink);
            return self.takeover(msg, now_ms, sink);
        }
        let prev = room.sequencer;
        let recent_bye = self.goodbyes.get(&prev).is_some_and(|&at| now_ms < at + HANDOFF_WAIT_MS);
        // A room restored from the log, or created here for a publish just after the
        // live set changed, has no known sequencer: another live node may have been
        // sequencing its stream and be handing it over now (it does so as soon as it
        // sees the change; after the wait, nobody is).
        let unknown = prev == 0 && self.view_unsettled(now_ms);
        let may_hand_over = unknown || self.nodes.contains(&prev) || recent_bye;
        if !room.is_system() && self.bus_up && may_hand_over {
            let mut p = Pending::new(room.stream, now_ms);
            p.publishes.push_back(msg);
            self.pending.insert(name, p);
            return Takeover::Held;
        }
        self.new_epoch(&name);
        Takeover::Go(msg)
    }

    /// Starts a new epoch for `name` sequenced here (a takeover without a usable mark).
    fn new_epoch(&mut self, name: &str) {
        let me = self.node;
        if let Some(room) = self.rooms.get_mut(name) {
            room.new_stream(fastrand::u64(..), me, &mut self.budget);
            self.epoch_changes += 1;
        }
        self.handed.remove(name);
    }

    /// Node `from` handed `name`'s stream (`epoch`, last `seq`) to this node. It is
    /// continued at once if this node holds it up to `seq`; if it holds an earlier part,
    /// the missing frames are asked from `from` first; if it holds another stream (or
    /// no room), the stream is adopted at `seq` with no history before it.
    #[allow(clippy::too_many_arguments)]
    pub fn handoff_mark(&mut self, name: &str, epoch: u64, seq: u64, from: u64, now_ms: u64, sink: &mut Sink<'_>) {
        self.clock_ms = now_ms;
        let me = self.node;
        if me == 0 {
            return;
        }
        if !self.rooms.contains_key(name) {
            self.relay_room(name, now_ms);
            if let Some(room) = self.rooms.get_mut(name) {
                room.stream = epoch;
                room.seq = seq;
                room.sequencer = from;
            }
        }
        let Some(room) = self.rooms.get_mut(name) else { return };
        if (room.sequencer == me && room.seq > 0) || (room.stream == epoch && room.seq > seq) {
            // This node sequences the room already (a stream of its own, which its
            // members follow), or the mark is older than what it holds: nothing to
            // continue. A room created here that never had a message takes the mark.
            return;
        }
        if room.stream != epoch {
            room.new_stream(epoch, from, &mut self.budget);
            room.seq = seq;
            self.epoch_changes += 1;
        }
        room.sequencer = from;
        let held = room.seq;
        let p = self.pending.entry(room.name.clone()).or_insert_with(|| Pending::new(epoch, now_ms));
        if p.epoch != epoch {
            // A wait for another stream's frames: that stream is over here.
            (p.asked, p.upto) = (None, 0);
            p.frames.clear();
        }
        p.take_over = true;
        p.handed_by = from;
        p.epoch = epoch;
        p.upto = p.upto.max(seq);
        if held < seq {
            p.asked = Some(from);
            p.deadline_ms = now_ms + HANDOFF_WAIT_MS;
            let ask = ClusterOut::CatchUp { room: room.name.clone(), epoch, after: held, to: from };
            sink(RoomOut::Cluster(ask));
        }
        self.settle(name, now_ms, sink);
    }

    /// Another node asks for `name`'s frames of stream `epoch` after `after`: answered
    /// from the history ring, in chunks, the last one marked done. An empty answer says
    /// this node does not hold them.
    pub fn catch_up_request(&self, name: &str, epoch: u64, after: u64, to: u64, sink: &mut Sink<'_>) {
        let frames = self
            .rooms
            .get(name)
            .filter(|r| r.stream == epoch)
            .and_then(|r| r.history.as_deref().and_then(|h| h.since(after, r.seq)))
            .unwrap_or_default();
        let room: Arc<str> = Arc::from(name);
        let mut first = after.saturating_add(1);
        let mut chunk = Vec::new();
        let mut bytes = 0;
        let total = frames.len();
        for (i, f) in frames.into_iter().enumerate() {
            bytes += f.len();
            chunk.push(f);
            if bytes >= CHUNK_BYTES && i + 1 < total {
                let n = chunk.len() as u64;
                let frames = std::mem::take(&mut chunk);
                sink(RoomOut::Cluster(ClusterOut::Frames {
                    room: room.clone(),
                    epoch,
                    first,
                    frames,
                    done: false,
                    to,
                }));
                first += n;
                bytes = 0;
            }
        }
        sink(RoomOut::Cluster(ClusterOut::Frames { room, epoch, first, frames: chunk, done: true, to }));
    }

    /// Part of the answer to a catch-up request this node sent: frames `first..` of
    /// `name`'s stream `epoch`, from node `from`. Applied like frames the sequencer
    /// published; once the room has everything up to what it waited for, the frames
    /// held after the hole follow (or, after a mark, this node continues the stream).
    #[allow(clippy::too_many_arguments)]
    pub fn catch_up_frames(
        &mut self,
        name: &str,
        epoch: u64,
        from: u64,
        first: u64,
        frames: Vec<Bytes>,
        done: bool,
        now_ms: u64,
        sink: &mut Sink<'_>,
    ) {
        self.clock_ms = now_ms;
        let Some(p) = self.pending.get(name) else { return };
        if p.epoch != epoch || p.asked != Some(from) {
            return;
        }
        let Some(room) = self.rooms.get(name).filter(|r| r.stream == epoch) else {
            self.give_up(name, now_ms, sink);
            return;
        };
        let sequencer = room.sequencer;
        for (i, frame) in frames.into_iter().enumerate() {
            let seq = first.saturating_add(i as u64);
            let Some(room) = self.rooms.get(name) else { return };
            if seq <= room.seq {
                continue;
            }
            if seq != room.seq + 1 {
                self.give_up(name, now_ms, sink);
                return;
            }
            self.adopt(name, seq, sequencer, frame, None, sink);
        }
        if done {
            let reached = self.rooms.get(name).is_some_and(|r| self.pending.get(name).is_some_and(|p| r.seq >= p.upto));
            if reached {
                self.settle(name, now_ms, sink);
            } else {
                self.give_up(name, now_ms, sink);
            }
        }
    }

    /// Rooms that waited too long give up (see [`Self::give_up`]); rejoins held too
    /// long are answered (see `rejoin`).
    pub fn handoff_tick(&mut self, now_ms: u64, sink: &mut Sink<'_>) {
        self.clock_ms = now_ms;
        self.rejoin_tick(now_ms, sink);
        self.first_join_tick(now_ms, sink);
        if self.pending.is_empty() {
            return;
        }
        // A hole noticed between ticks starts its clock at the next one.
        for p in self.pending.values_mut().filter(|p| p.deadline_ms == 0) {
            p.deadline_ms = now_ms + HANDOFF_WAIT_MS;
        }
        let due: Vec<Arc<str>> =
            self.pending.iter().filter(|(_, p)| p.deadline_ms <= now_ms).map(|(n, _)| n.clone()).collect();
        for name in due {
            self.give_up(&name, now_ms, sink);
        }
    }

    /// Holds a frame that arrived after a hole and asks its sequencer for the missing
    /// ones. Returns false when the frame cannot be held (too many held: the caller
    /// restarts the room's history at it, as before catch-ups existed).
    pub(super) fn hold_after_gap(
        &mut self,
        name: &Arc<str>,
        frame: HeldFrame,
        stream: u64,
        sink: &mut Sink<'_>,
    ) -> bool {
        let Some(held) = self.rooms.get(name).map(|r| r.seq) else { return false };
        let p = self.pending.entry(name.clone()).or_insert_with(|| Pending::new(stream, 0));
        if p.frames.len() >= MAX_HELD || p.epoch != stream {
            return false;
        }
        let (seq, node) = (frame.seq, frame.node);
        p.upto = p.upto.max(seq - 1);
        if p.asked.is_none() {
            p.asked = Some(node);
            // The clock starts at the next tick (this path has no clock).
            p.deadline_ms = 0;
            sink(RoomOut::Cluster(ClusterOut::CatchUp { room: name.clone(), epoch: stream, after: held, to: node }));
        }
        p.frames.push_back(frame);
        true
    }

    /// Asks node `from` for `name`'s frames of stream `epoch` after `after` up to `upto`:
    /// a copy that starts at the sequencer's position `upto` (see `fresh`) while a held
    /// rejoin needs the frames before it. Frames arriving meanwhile are held as after a
    /// hole; if the ones asked for cannot come, the copy starts at `upto`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn catch_up_to(
        &mut self,
        name: &Arc<str>,
        epoch: u64,
        after: u64,
        upto: u64,
        from: u64,
        now_ms: u64,
        sink: &mut Sink<'_>,
    ) {
        let mut p = Pending::new(epoch, now_ms);
        (p.asked, p.upto) = (Some(from), upto);
        self.pending.insert(name.clone(), p);
        sink(RoomOut::Cluster(ClusterOut::CatchUp { room: name.clone(), epoch, after, to: from }));
    }

    /// Whether `name` is waiting for a catch-up (frames after a hole are then held).
    pub(super) fn catching_up(&self, name: &str) -> bool {
        !self.pending.is_empty() && self.pending.get(name).is_some_and(|p| p.asked.is_some())
    }

    /// Every publish held for a stream that has not come here yet, in order, and the
    /// waits forgotten: a node shutting down forwards them to the rooms' sequencers
    /// among the other nodes instead of starting new epochs on its way out.
    pub fn take_held(&mut self) -> Vec<Publish> {
        self.pending.drain().flat_map(|(_, p)| p.publishes).collect()
    }

    /// A waiting room reached what it waited for: the held frames follow, and after a
    /// mark this node takes the stream over; then the held publishes go on.
    pub(super) fn settle(&mut self, name: &str, now_ms: u64, sink: &mut Sink<'_>) {
        let Some(p) = self.pending.get(name) else { return };
        let Some(room) = self.rooms.get(name) else { return };
        if room.seq < p.upto || (p.asked.is_none() && !p.take_over) {
            return;
        }
        let Some(p) = self.pending.remove(name) else { return };
        if p.take_over {
            // The mark's sender stopped at `upto`: anything held is already here.
            if let Some(room) = self.rooms.get_mut(name) {
                room.sequencer = self.node;
                self.continuations += 1;
            }
            self.handed.remove(name);
        } else {
            for f in p.frames {
                self.remote_frame_skipping(name, p.epoch, f.seq, f.node, f.frame, f.skip, sink);
            }
        }
        self.replay(p.publishes, now_ms, sink);
        // First joins waited for the stream while it was caught up (see `fresh`).
        self.answer_first_joins(name, false, sink);
        // Handed a room this node does not win (the sender did not know a node that
        // this one knows): what was held here is sequenced here, then the stream goes
        // on to the winner. The sender gave the stream up and is left out, whatever
        // this node's view says of it (it may be leaving).
        let me = self.node;
        let others: Vec<u64> = self.nodes.iter().copied().filter(|&n| n != p.handed_by).collect();
        let winner = placement::sequencer(name, &others).filter(|&w| w != me);
        if let (true, Some(to), Some(room)) = (p.take_over, winner, self.rooms.get_mut(name)) {
            if room.sequencer == me {
                hand_room(room, to, &mut self.handed, sink);
            }
        }
    }

    /// A waiting room gives up: after a mark or for held publishes this node starts a
    /// new epoch (counted); after a hole the history restarts at the first held frame
    /// (counted as a gap), as it did before catch-ups existed.
    fn give_up(&mut self, name: &str, now_ms: u64, sink: &mut Sink<'_>) {
        let Some(p) = self.pending.remove(name) else { return };
        if p.take_over || !p.publishes.is_empty() {
            self.new_epoch(name);
        } else if let Some(room) = self.rooms.get_mut(name).filter(|r| r.stream == p.epoch) {
            if let Some(f) = p.frames.front() {
                self.gaps += 1;
                let sequencer = f.node;
                room.new_stream(p.epoch, sequencer, &mut self.budget);
                room.seq = f.seq - 1;
            } else if room.seq < p.upto {
                // A copy started at the sequencer's position (`catch_up_to`) without the
                // frames before it: it starts there, as after a hole, and what waited
                // for it is answered now.
                self.gaps += 1;
                let sequencer = room.sequencer;
                room.new_stream(p.epoch, sequencer, &mut self.budget);
                room.seq = p.upto;
                self.answer_held(name, false, sink);
            }
            for f in p.frames {
                self.remote_frame_skipping(name, p.epoch, f.seq, f.node, f.frame, f.skip, sink);
            }
        }
        self.replay(p.publishes, now_ms, sink);
    }

    fn replay(&mut self, publishes: VecDeque<Publish>, now_ms: u64, sink: &mut Sink<'_>) {
        for msg in publishes {
            self.publish(msg, now_ms, sink);
        }
    }
}
