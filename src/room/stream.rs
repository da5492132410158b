//! Adopting a cluster stream: on a node that does not sequence a room, the room follows
//! the frames its sequencer node publishes — same epoch, same seq, same bytes.

use bytes::Bytes;

use super::handoff::HeldFrame;
use super::out::{RoomOut, Sink};
use super::request::Sender;
use super::{OwnedRooms, RingsOf};
use crate::journal::Record;

impl OwnedRooms {
    /// A frame the room's sequencer (another node) published: adopt its stream, keep the
    /// history in step, and hand the frame to the local members. Frames of a room this
    /// node did not subscribe to are ignored (no local members: it may still keep the
    /// room's presence, and with `--cluster-room-buckets` it hears every room of a
    /// bucket); repeated ones are dropped. The first frame for the personal room of a
    /// user connected here makes the room (see `online`). After a hole in the stream the
    /// frame is held and the missing ones are asked from the sequencer (see `handoff`).
    pub fn remote_frame(&mut self, name: &str, stream: u64, seq: u64, node: u64, frame: Bytes, sink: &mut Sink<'_>) {
        self.remote_frame_skipping(name, stream, seq, node, frame, None, sink);
    }

    /// [`Self::remote_frame`] of a `skip_self` message: `skip` is its sender, left out
    /// if it is a connection of this node.
    #[allow(clippy::too_many_arguments)]
    pub fn remote_frame_skipping(
        &mut self,
        name: &str,
        stream: u64,
        seq: u64,
        node: u64,
        frame: Bytes,
        skip: Option<Sender>,
        sink: &mut Sink<'_>,
    ) {
        self.open_personal(name, self.clock_ms, sink);
        let floor = self.rejoin_floor(name, stream, seq);
        let Some(room) = self.rooms.get_mut(name).filter(|r| r.subscribed) else { return };
        if room.stream != stream {
            room.new_stream(stream, node, &mut self.budget);
            self.epoch_changes += 1;
            if let Some(after) = floor {
                // A rejoin held here asked for this stream from before its first frame
                // to arrive here (see `rejoin`): the frames in between are fetched from
                // the sequencer, as after a hole; if that cannot be, the copy starts at
                // this frame as it always did.
                room.seq = after;
                let name = room.name.clone();
                let held = HeldFrame { seq, node, frame: frame.clone(), skip };
                if self.nodes.contains(&node) && self.hold_after_gap(&name, held, stream, sink) {
                    return;
                }
            }
        } else if seq <= room.seq {
            // Already here (a catch-up brought it, or the bus repeated it).
            return;
        } else if seq != room.seq + 1 && room.seq != 0 {
            // Messages in between were lost on the bus: ask the sequencer (a live node)
            // for them and hold this one meanwhile; if that cannot be, the history
            // cannot bridge them.
            let name = room.name.clone();
            let held = HeldFrame { seq, node, frame: frame.clone(), skip };
            if self.nodes.contains(&node) && self.hold_after_gap(&name, held, stream, sink) {
                return;
            }
            self.gaps += 1;
            let Some(room) = self.rooms.get_mut(name.as_ref()) else { return };
            room.new_stream(stream, node, &mut self.budget);
        }
        self.adopt(name, seq, node, frame, skip, sink);
        if self.catching_up(name) {
            let now_ms = self.clock_ms;
            self.settle(name, now_ms, sink);
        }
    }

    /// Appends frame `seq` (the next one) of the room's current stream, sequenced by
    /// `node`: logged, handed to the local members, remembered.
    pub(super) fn adopt(
        &mut self,
        name: &str,
        seq: u64,
        node: u64,
        frame: Bytes,
        skip: Option<Sender>,
        sink: &mut Sink<'_>,
    ) {
        let Some(room) = self.rooms.get_mut(name) else { return };
        room.sequencer = node;
        room.seq = seq;
        // A stream handed on from here may have moved on again: publishes still
        // forwarded here go to whoever sequences it now.
        if !self.handed.is_empty() {
            if let Some(to) = self.handed.get_mut(name) {
                *to = node;
            }
        }
        if self.journal {
            let (room, epoch, frame) = (room.name.clone(), room.stream, frame.clone());
            sink(RoomOut::Log(Record::Frame { room, epoch, seq, ts: 0, frame }));
        }
        room.fan_out_skipping(&frame, skip.filter(|s| s.node == self.node), sink);
        if self.history.messages > 0 {
            room.remember(frame, self.history, &mut self.budget);
            self.budget.enforce(&mut RingsOf(&mut self.rooms));
        }
        self.answer_held(name, false, sink);
    }

    /// A volatile frame the room's sequencer (another node) published: handed to the
    /// local members as it is; the stream, its seq and the history are not touched (but
    /// a personal room is made by it, as by [`Self::remote_frame`]).
    pub fn remote_volatile(&mut self, name: &str, frame: Bytes, skip: Option<Sender>, sink: &mut Sink<'_>) {
        self.open_personal(name, self.clock_ms, sink);
        let Some(room) = self.rooms.get(name).filter(|r| r.subscribed) else { return };
        room.fan_out_skipping(&frame, skip.filter(|s| s.node == self.node), sink);
    }
}
