//! Rejoins ahead of this node's copy of a room's stream (cluster): a client that saw
//! frames up to `seq` N on one node rejoins on another with `since: {epoch, seq: N}`,
//! and that node has not received frame N yet (its copy lags behind the sequencer's
//! stream, it has just subscribed to the room, or it has not heard of the epoch yet).
//! Nothing is lost: the frames the client needs are on their way, or in the
//! sequencer's history. So the owner **holds the answer** (the join itself is counted
//! at once, as any join) until its copy of the stream reaches `since`, then answers
//! `recovered: true` with exactly the frames after it; a node that adopts a stream
//! whose first frame it receives is after `since` fetches the frames in between from
//! the sequencer (the catch-up of [`super::handoff`]).
//!
//! Bounds: a rejoin is held at most [`REJOIN_WAIT_MS`], after which it is answered
//! as it would have been at once (`recovered: false` if still behind); at once when
//! the room's stream moves on to another epoch than the one asked for; and at most
//! [`MAX_HELD_JOINS`] are held per shard (one more is answered at once). A connection
//! that closes while held undoes its join when the answer reaches its shard, like any
//! join answered after its connection went away. A single node never holds: there a
//! `since` ahead of the room is an unknown future and is answered at once.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::out::{refuse, Sink};
use super::request::{JoinKind, JoinReq, Since};
use super::sequence::ack_join;
use super::{OwnedRoom, OwnedRooms};
use crate::protocol::ErrorCode;

/// Longest time a rejoin is held for this node's copy of the stream to reach its
/// `since`: frames lag by milliseconds, a first subscription plus a catch-up by a few
/// round trips; after this the stream is not coming (the client's node was the
/// sequencer and crashed before relaying) and the answer is the one of today.
pub const REJOIN_WAIT_MS: u64 = 3_000;

/// Most rejoins held at once on one shard (each holds its join request, ~200 bytes):
/// one more is answered at once.
pub const MAX_HELD_JOINS: usize = 16_384;

/// One held rejoin.
struct Held {
    /// The join, counted already; answered from here.
    req: JoinReq,
    /// The stream the client asked for (`None`: it named none, any will do).
    want: Option<u64>,
    /// The client's last seq.
    seq: u64,
    /// The room's stream when the join was held: once it moves to another stream than
    /// `want`, the one asked for is over.
    stream: u64,
    /// When to answer anyway (wall ms).
    deadline_ms: u64,
}

/// The rejoins an owner shard holds, by room. Empty (no allocation) while nothing is
/// held.
#[derive(Default)]
pub(super) struct Rejoins {
    rooms: FxHashMap<Arc<str>, Vec<Held>>,
    /// Held rejoins, over all rooms.
    len: usize,
    /// Rejoins held, since last taken.
    held: u64,
    /// Held rejoins answered `recovered: true`, since last taken.
    recovered: u64,
}

/// The stream a rejoin with `since` waits for if this node's copy of `room` is behind
/// it (`Some(want)`, `want` as in [`Held::want`]), or `None` when it is answered at
/// once: the client's `since` is here already, the room is sequenced here (then
/// nothing ahead of it exists), it names another epoch than the one this node follows
/// with frames, or an epoch this server never shows.
fn behind(room: &OwnedRoom, since: &Since, me: u64) -> Option<Option<u64>> {
    if room.is_system() {
        return None;
    }
    let want = match since.epoch.as_deref() {
        None => None,
        // `joined` shows 16 lowercase hex digits; anything else never matches a stream.
        Some(e) => match u64::from_str_radix(e, 16) {
            Ok(w) if format!("{w:016x}") == e => Some(w),
            _ => return None,
        },
    };
    // This node has no frame of the room yet (a room created by this very join, or kept
    // only for its presence): whatever stream the client names may be on its way.
    let fresh = room.seq == 0;
    if want.is_none_or(|w| w == room.stream) {
        // Ahead of a stream another node sequences: the frames are on their way.
        (since.seq > room.seq && (room.sequencer != me || fresh)).then_some(want)
    } else {
        // Another epoch than the one this node follows with frames: an older stream (a
        // crash started a new one) far more often than a newer one not heard of yet, so
        // it is answered at once rather than after the wait.
        fresh.then_some(want)
    }
}

impl Rejoins {
    /// Takes the counts since the last call: (rejoins held, of those answered
    /// `recovered: true`).
    pub(super) fn take_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.held), std::mem::take(&mut self.recovered))
    }

    /// Takes the held rejoins of `name` that `pick` chooses (in the order they were
    /// held), keeping the others and the count in step.
    fn take(&mut self, name: &str, pick: impl Fn(&Held) -> bool) -> Vec<Held> {
        let Some(held) = self.rooms.get_mut(name) else { return Vec::new() };
        let (taken, kept): (Vec<Held>, Vec<Held>) = std::mem::take(held).into_iter().partition(|h| pick(h));
        *held = kept;
        if held.is_empty() {
            self.rooms.remove(name);
        }
        self.len -= taken.len();
        taken
    }

    /// Answers `taken` (rejoins of `room`) as things stand now.
    fn answer(&mut self, room: &OwnedRoom, taken: Vec<Held>, sink: &mut Sink<'_>) {
        for h in taken {
            if ack_join(room, &h.req, sink) == Some(true) {
                self.recovered += 1;
            }
        }
    }
}

impl OwnedRooms {
    /// Holds the counted join `req` on `room` (see the module) when its `since` is
    /// ahead of this node's copy of the stream; gives it back when it is answered at
    /// once.
    pub(super) fn hold_rejoin(&mut self, req: JoinReq, now_ms: u64) -> Option<JoinReq> {
        if self.node == 0 || !self.bus_up || self.rejoins.len >= MAX_HELD_JOINS {
            return Some(req);
        }
        let JoinKind::Join { since: Some(since), .. } = &req.kind else { return Some(req) };
        let Some(room) = self.rooms.get(&req.room) else { return Some(req) };
        let Some(want) = behind(room, since, self.node) else { return Some(req) };
        let (seq, stream) = (since.seq, room.stream);
        let held = Held { req, want, seq, stream, deadline_ms: now_ms.saturating_add(REJOIN_WAIT_MS) };
        self.rejoins.rooms.entry(room.name.clone()).or_default().push(held);
        self.rejoins.len += 1;
        self.rejoins.held += 1;
        None
    }

    /// Takes the rejoin counts since the last call: (held, answered `recovered: true`
    /// after a hold).
    pub fn take_rejoin_counts(&mut self) -> (u64, u64) {
        self.rejoins.take_counts()
    }

    /// Where a held rejoin of `name` that asked for `stream` needs frames from, when
    /// `stream`'s first frame to arrive here is `seq`: the lowest `since` before
    /// `seq - 1` (the node then fetches the frames after it from the sequencer rather
    /// than start its copy at `seq`).
    pub(super) fn rejoin_floor(&self, name: &str, stream: u64, seq: u64) -> Option<u64> {
        if self.rejoins.len == 0 {
            return None;
        }
        let held = self.rejoins.rooms.get(name)?;
        held.iter().filter(|h| h.want == Some(stream) && h.seq.saturating_add(1) < seq).map(|h| h.seq).min()
    }

    /// Answers the held rejoins of `name` that can be answered now: the room's copy
    /// of the stream reached their `since`, or moved on to a stream other than the
    /// one asked for; with `all`, every one (the room is going away).
    pub(super) fn answer_rejoins(&mut self, name: &str, all: bool, sink: &mut Sink<'_>) {
        if self.rejoins.len == 0 {
            return;
        }
        let Some(room) = self.rooms.get(name) else { return };
        let ready = self.rejoins.take(name, |h| {
            all || match h.want {
                Some(w) if w != room.stream => room.stream != h.stream,
                _ => room.seq >= h.seq,
            }
        });
        self.rejoins.answer(room, ready, sink);
    }

    /// Answers every held rejoin whose wait is over, as it would have been answered
    /// at once; a held rejoin whose room is gone is refused (nothing of it is left to
    /// join, and its shard must hear back).
    pub(super) fn rejoin_tick(&mut self, now_ms: u64, sink: &mut Sink<'_>) {
        if self.rejoins.len == 0 {
            return;
        }
        let due: Vec<Arc<str>> = self
            .rejoins
            .rooms
            .iter()
            .filter(|(_, held)| held.iter().any(|h| h.deadline_ms <= now_ms))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let Some(room) = self.rooms.get(&name) else {
                for h in self.rejoins.take(&name, |_| true) {
                    refuse(&h.req, ErrorCode::NoSuchRoom, "the room was deleted", sink);
                }
                continue;
            };
            let due = self.rejoins.take(&name, |h| h.deadline_ms <= now_ms);
            self.rejoins.answer(room, due, sink);
        }
    }
}
