//! The durable log's side of the rooms: rooms rebuilt from the log at start, and the
//! checkpoint of every room's stream that lets the log drop its older segments.

use super::history::Ring;
use super::retention::Lingering;
use super::{OwnedRoom, OwnedRooms, RingsOf, RELAY_LINGER_MS};
use crate::journal::{Record, RestoredRoom};

impl OwnedRooms {
    /// Takes over rooms rebuilt from the log (before any client arrives): each keeps its
    /// stream epoch and seq and its recent frames, within this shard's history caps and
    /// budget, and lingers empty like a room whose last member just left, for the history
    /// TTL but at least [`RELAY_LINGER_MS`] (clients need time to come back after a
    /// restart, even with `--history-ttl 0`). Returns the frames taken.
    pub fn restore(&mut self, rooms: Vec<RestoredRoom>, now_ms: u64) -> usize {
        let mut frames = 0;
        for r in rooms {
            let mut room = OwnedRoom::new(r.name.clone(), self.shards, self.node, now_ms, r.creator, r.password);
            room.stream = r.epoch;
            room.emptied_ms = now_ms;
            // In a cluster the stream may have gone on elsewhere while this node was
            // down: no known sequencer, so sequencing here starts a new epoch, and a
            // frame from the stream's sequencer is adopted only if it follows on.
            if self.node != 0 {
                room.sequencer = 0;
            }
            if self.history.messages > 0 {
                for (seq, frame) in r.frames {
                    room.seq = seq;
                    room.remember(frame, self.history, &mut self.budget);
                    frames += 1;
                }
            }
            room.seq = r.seq;
            let epoch = room.epoch;
            self.rooms.insert(r.name.clone(), Box::new(room));
            let linger_ms = self.ttl_ms.max(RELAY_LINGER_MS);
            self.lingering.push_back(Lingering { room: r.name, epoch, since_ms: now_ms, linger_ms });
        }
        self.budget.enforce(&mut RingsOf(&mut self.rooms));
        frames
    }

    /// Every room's stream as log records, for a checkpoint: a room is its metadata, a
    /// [`Record::Reset`] to the seq before its oldest frame held, then those frames.
    /// Replaying a checkpoint gives back exactly the rooms held now.
    pub fn checkpoint(&self, now_ms: u64, out: &mut dyn FnMut(Record)) {
        let empty = Ring::default();
        for room in self.rooms.values().filter(|r| r.seq > 0) {
            let name = &room.name;
            if room.creator().is_some() || room.password().is_some() {
                let (creator, password) = (room.creator().cloned(), room.password().cloned());
                out(Record::Meta { room: name.clone(), creator, password });
            }
            let ring = room.history.as_deref().unwrap_or(&empty);
            let frames = ring.since(room.seq - ring.len() as u64, room.seq).unwrap_or_default();
            let first = room.seq - frames.len() as u64;
            out(Record::Reset { room: name.clone(), epoch: room.stream, seq: first, ts: now_ms });
            for (i, frame) in frames.into_iter().enumerate() {
                out(Record::Frame {
                    room: name.clone(),
                    epoch: room.stream,
                    seq: first + 1 + i as u64,
                    ts: now_ms,
                    frame,
                });
            }
        }
    }
}
