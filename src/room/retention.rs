//! Keeping and dropping: history pages, rooms that linger empty with their history (or
//! to carry a stream for other nodes), and the room side of the shard's history budget.

use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::history::{self, Ring};
use super::out::{answer_remote, reply, reply_error, to_conn, ClusterOut, RoomOut, Sink};
use super::request::{HistoryReq, Reply, Requester};
use super::{OwnedRoom, OwnedRooms, RELAY_LINGER_MS};
use crate::protocol::{server, ErrorCode};

/// A room that emptied (or a relay room), waiting for its linger time to pass.
#[derive(Debug, Clone)]
pub(super) struct Lingering {
    /// Room name.
    pub room: Arc<str>,
    /// The room instance that emptied: a newer instance of the same name is not expired.
    pub epoch: u64,
    /// When it emptied (wall ms), as recorded in the room's `emptied_ms`: a room used since
    /// has a later mark and is checked again later.
    pub since_ms: u64,
    /// How long it may stay empty, ms.
    pub linger_ms: u64,
}

/// Looks rings up in the room table for the budget (by name and room instance).
pub(super) struct RingsOf<'a>(pub &'a mut FxHashMap<Arc<str>, Box<OwnedRoom>>);

impl history::Rings for RingsOf<'_> {
    fn ring(&mut self, room: &str, epoch: u64) -> Option<&mut Ring> {
        self.0.get_mut(room).filter(|r| r.stream == epoch).and_then(|r| r.history.as_deref_mut())
    }
}

/// The JSON payload of a stored server frame (its header skipped).
fn payload(frame: &Bytes) -> &[u8] {
    match crate::ws::frame::parse_header(frame, crate::ws::frame::Role::Client, usize::MAX) {
        Ok(Some(h)) => &frame[h.header_len..],
        _ => &[],
    }
}

impl OwnedRooms {
    /// Clears a room's history: a new stream (new epoch; `seq` goes on, so live members
    /// see no jump), whose recovery cannot reach back before now. Returns the new epoch,
    /// or `None` when no such room is owned here. In a cluster every node clears its
    /// copy; the nodes that do not sequence the room adopt the sequencer's new stream
    /// with its next message.
    pub fn remove_history(&mut self, name: &str) -> Option<String> {
        let room = self.rooms.get_mut(name)?;
        let sequencer = room.sequencer;
        let node = self.node;
        if node == 0 || sequencer == node {
            room.new_stream(fastrand::u64(..), node, &mut self.budget);
            self.epoch_changes += 1;
        } else if let Some(h) = room.history.take() {
            self.budget.dropped(h.bytes(), h.len());
        }
        Some(room.epoch())
    }

    /// [`Self::remove_history`], and with the durable log on, the tombstone that makes a
    /// restart continue the new stream (a client's `since` from before the removal is
    /// not recovered after a restart either).
    pub fn remove_history_logged(&mut self, name: &str, now_ms: u64, sink: &mut Sink<'_>) -> Option<String> {
        let epoch = self.remove_history(name)?;
        if let Some(room) = self.rooms.get(name).filter(|_| self.journal) {
            let (room, epoch, seq) = (room.name.clone(), room.stream, room.seq);
            sink(RoomOut::Log(crate::journal::Record::Reset { room, epoch, seq, ts: now_ms }));
        }
        Some(epoch)
    }

    /// Public rooms owned here whose names start with `prefix` and sort after `after`:
    /// the first `limit` by name.
    pub fn rooms_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<crate::metrics::RoomSummary> {
        let mut rooms: Vec<&OwnedRoom> = self
            .rooms
            .values()
            .map(|r| &**r)
            .filter(|r| !r.is_system() && r.name.starts_with(prefix) && after.is_none_or(|a| &*r.name > a))
            .collect();
        if rooms.len() > limit {
            if limit == 0 {
                return Vec::new();
            }
            rooms.select_nth_unstable_by(limit - 1, |a, b| a.name.cmp(&b.name));
            rooms.truncate(limit);
        }
        rooms.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        rooms.into_iter().map(OwnedRoom::summary).collect()
    }

    /// Removes a room, gives its history back to the budget, and (cluster) stops
    /// receiving it.
    pub(super) fn drop_room(&mut self, name: &str, sink: &mut Sink<'_>) {
        self.handed.remove(name);
        if let Some(room) = self.rooms.remove(name) {
            if self.journal && room.seq > 0 {
                sink(RoomOut::Log(crate::journal::Record::Drop { room: room.name.clone() }));
            }
            if let Some(h) = room.history {
                self.budget.dropped(h.bytes(), h.len());
            }
            if room.subscribed {
                sink(RoomOut::Cluster(ClusterOut::Unsubscribe(room.name)));
            }
        }
    }

    /// Drops rooms that have lingered empty longer than their linger time (the history
    /// TTL; at least [`RELAY_LINGER_MS`] after the last message for rooms sequenced here
    /// only for other nodes).
    pub fn expire(&mut self, now_ms: u64, sink: &mut Sink<'_>) {
        while let Some(l) = self.lingering.front() {
            if l.since_ms + l.linger_ms > now_ms {
                break;
            }
            let Some(mut l) = self.lingering.pop_front() else { break };
            let Some(r) =
                self.rooms.get(&l.room).filter(|r| r.epoch == l.epoch && r.connections() == 0 && !r.has_remote_users())
            else {
                continue;
            };
            if r.emptied_ms == l.since_ms {
                self.drop_room(&l.room, sink);
            } else if r.emptied_ms > l.since_ms {
                // Used since (a relay room got another message): check again later.
                l.since_ms = r.emptied_ms;
                self.lingering.push_back(l);
            }
        }
    }

    /// Answers a history request: up to `limit` messages before `before`, newest first,
    /// spliced from the stored frames.
    ///
    /// A requester on another node gets the page (or the error) over the bus when it
    /// names a connection; otherwise it is counted as unanswered ([`Self::take_unanswered`]).
    pub fn history(&mut self, req: HistoryReq, sink: &mut Sink<'_>) {
        // A connected user's personal room is made by its first use (see `online`).
        self.open_personal(&req.room, self.clock_ms, sink);
        let page = self.rooms.get(&req.room).map(|room| {
            let frames = room.history.as_deref().map(|h| h.page(req.before, req.limit as usize)).unwrap_or_default();
            let payloads: Vec<&[u8]> = frames.iter().map(payload).collect();
            (server::history_json(&room.name, &room.epoch(), &payloads), room.password().is_some())
        });
        match (&req.from, page) {
            (Requester::Conn(c), Some((json, _))) => to_conn(c, crate::ws::frame::text_frame(&json), sink),
            (Requester::Conn(c), None) => reply_error(c, ErrorCode::NoSuchRoom, "no such room", sink),
            (Requester::Api(r), page) => reply(r, Reply::History(page), sink),
            (Requester::Remote(r), page) => {
                let frame = match page {
                    Some((json, _)) => crate::ws::frame::text_frame(&json),
                    None => server::error(ErrorCode::NoSuchRoom, "no such room", super::out::reference(&req.from)),
                };
                if !answer_remote(r, frame, sink) {
                    self.unanswered += 1;
                }
            }
        }
    }

    /// Creates a room with no local member on its sequencer node (cluster mode), to carry
    /// the stream for other nodes' members; it lingers [`RELAY_LINGER_MS`] (or the history
    /// TTL, if longer) after its last message.
    pub(super) fn relay_room(&mut self, name: &str, now_ms: u64) {
        let name: Arc<str> = Arc::from(name);
        let mut room = OwnedRoom::new(name.clone(), self.shards, self.node, now_ms, None, None);
        if self.view_unsettled(now_ms) {
            // Another node may be handing this room's stream over (see `handoff`).
            room.sequencer = 0;
        }
        let epoch = room.epoch;
        room.emptied_ms = now_ms;
        self.rooms.insert(name.clone(), Box::new(room));
        let linger_ms = self.ttl_ms.max(RELAY_LINGER_MS);
        self.lingering.push_back(Lingering { room: name, epoch, since_ms: now_ms, linger_ms });
    }
}
