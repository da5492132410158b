//! The durable log (`--data-dir`): each shard appends what it sequences to its own
//! segments under `DIR/shard-N/` on its own executor ([`writer`]), and at start every
//! room is rebuilt from all shards' segments and handed to its owner ([`recover`]).
//!
//! The format is the pure [`crate::journal`]; the file I/O is [`crate::rt::file`]
//! (io_uring). The durability promise of each `--fsync` policy is in
//! docs/DURABILITY.md.

pub mod recover;
pub mod writer;

pub use recover::{recover, Recovered, ShardStart};
pub use writer::{Host, Journal};

use crate::journal::{Record, RestoredRoom};

/// Appends the records that rebuild `room` exactly: its metadata, a reset to the seq
/// before its oldest frame, the frames.
pub fn encode_room(room: &RestoredRoom, ts: u64, out: &mut Vec<u8>) -> u64 {
    let name = &room.name;
    let mut n = 0;
    if room.creator.is_some() || room.password.is_some() {
        Record::Meta { room: name.clone(), creator: room.creator.clone(), password: room.password.clone() }.encode(out);
        n += 1;
    }
    let first = room.frames.front().map_or(room.seq, |(s, _)| s - 1);
    Record::Reset { room: name.clone(), epoch: room.epoch, seq: first, ts }.encode(out);
    for (seq, frame) in &room.frames {
        Record::Frame { room: name.clone(), epoch: room.epoch, seq: *seq, ts, frame: frame.clone() }.encode(out);
    }
    n + 1 + room.frames.len() as u64
}
