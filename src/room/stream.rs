//! Adopting a cluster stream: on a node that does not sequence a room, the room follows
//! the frames its sequencer node publishes — same epoch, same seq, same bytes.

use bytes::Bytes;

use super::out::{RoomOut, Sink};
use super::request::Sender;
use super::{OwnedRooms, RingsOf};
use crate::journal::Record;

impl OwnedRooms {
    /// A frame the room's sequencer (another node) published: adopt its stream, keep the
    /// history in step, and hand the frame to the local members. Frames of a room this
    /// node did not subscribe to are ignored (no local members: it may still keep the
    /// room's presence, and with `--cluster-room-buckets` it hears every room of a
    /// bucket); repeated ones are dropped.
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
        let Some(room) = self.rooms.get_mut(name).filter(|r| r.subscribed) else { return };
        if room.stream != stream {
            room.new_stream(stream, node, &mut self.budget);
            self.epoch_changes += 1;
        } else if seq <= room.seq && room.sequencer == node {
            return;
        } else if seq != room.seq + 1 && room.seq != 0 {
            // Messages in between were lost on the bus: the history cannot bridge them.
            self.gaps += 1;
            room.new_stream(stream, node, &mut self.budget);
        }
        room.sequencer = node;
        room.seq = seq;
        if self.journal {
            let (room, epoch, frame) = (room.name.clone(), room.stream, frame.clone());
            sink(RoomOut::Log(Record::Frame { room, epoch, seq, ts: 0, frame }));
        }
        room.fan_out_skipping(&frame, skip.filter(|s| s.node == self.node), sink);
        if self.history.messages > 0 {
            room.remember(frame, self.history, &mut self.budget);
            self.budget.enforce(&mut RingsOf(&mut self.rooms));
        }
    }

    /// A volatile frame the room's sequencer (another node) published: handed to the
    /// local members as it is; the stream, its seq and the history are not touched.
    pub fn remote_volatile(&mut self, name: &str, frame: Bytes, skip: Option<Sender>, sink: &mut Sink<'_>) {
        let Some(room) = self.rooms.get(name).filter(|r| r.subscribed) else { return };
        room.fan_out_skipping(&frame, skip.filter(|s| s.node == self.node), sink);
    }
}
