//! Rebuilding rooms' streams from their records, in log order.
//!
//! The rules make replay safe to run over any sequence the log can hold (a checkpoint
//! followed by records it already covers, segments of an earlier run with a different
//! shard count, a segment cut short): a record never moves a stream backwards, a frame
//! already held is skipped (never served twice), and a frame that does not follow the
//! last one of its stream starts the history afresh at that frame (never a gap inside
//! what is served).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::Record;

/// One room as the log left it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoredRoom {
    /// Room name.
    pub name: Arc<str>,
    /// Stream epoch.
    pub epoch: u64,
    /// Last seq of the stream.
    pub seq: u64,
    /// The most recent frames, oldest first, consecutive, the last one `seq` (within the
    /// per-room caps given to [`Rebuild::new`]).
    pub frames: VecDeque<(u64, Bytes)>,
    /// Bytes of `frames`.
    pub bytes: usize,
    /// The room's creator (`create`).
    pub creator: Option<Arc<str>>,
    /// A private room's password hash.
    pub password: Option<Arc<str>>,
    /// Time of its last frame or reset, ms since the Unix epoch.
    pub last_ts: u64,
}

/// Counts of a rebuild.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildCounts {
    /// Records applied.
    pub records: u64,
    /// Frames skipped because the stream already held them.
    pub duplicates: u64,
    /// Frames that did not follow their stream's last one: the history restarts there.
    pub gaps: u64,
}

/// Rooms being rebuilt.
#[derive(Debug)]
pub struct Rebuild {
    rooms: FxHashMap<Arc<str>, RestoredRoom>,
    max_messages: usize,
    max_bytes: usize,
    /// What was applied so far.
    pub counts: RebuildCounts,
}

impl Rebuild {
    /// An empty rebuild keeping at most `max_messages` frames and `max_bytes` bytes per
    /// room (the history caps: older frames could never be served anyway).
    pub fn new(max_messages: usize, max_bytes: usize) -> Rebuild {
        Rebuild { rooms: FxHashMap::default(), max_messages, max_bytes, counts: RebuildCounts::default() }
    }

    /// Applies the next record in log order.
    pub fn apply(&mut self, record: Record) {
        self.counts.records += 1;
        match record {
            Record::Frame { room, epoch, seq, ts, frame } => {
                let r = room_in(&mut self.rooms, room);
                if r.seq != 0 && r.epoch == epoch && seq <= r.seq {
                    self.counts.duplicates += 1;
                    return;
                }
                if r.epoch != epoch || seq != r.seq + 1 {
                    if r.epoch == epoch && r.seq != 0 {
                        self.counts.gaps += 1;
                    }
                    r.frames.clear();
                    r.bytes = 0;
                    r.epoch = epoch;
                }
                r.seq = seq;
                r.last_ts = ts;
                r.bytes += frame.len();
                r.frames.push_back((seq, frame));
                while r.frames.len() > self.max_messages || (r.bytes > self.max_bytes && r.frames.len() > 1) {
                    if let Some((_, f)) = r.frames.pop_front() {
                        r.bytes -= f.len();
                    }
                }
            }
            Record::Reset { room, epoch, seq, ts } => {
                let r = self.room(room);
                r.frames.clear();
                r.bytes = 0;
                (r.epoch, r.seq, r.last_ts) = (epoch, seq, ts);
            }
            Record::Drop { room } => {
                self.rooms.remove(&room);
            }
            Record::Meta { room, creator, password } => {
                let r = self.room(room);
                (r.creator, r.password) = (creator, password);
            }
        }
    }

    fn room(&mut self, name: Arc<str>) -> &mut RestoredRoom {
        room_in(&mut self.rooms, name)
    }

    /// Rooms held now.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is held.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// The rooms with a stream to continue (at least one message sequenced), in no
    /// particular order. Rooms that only had their metadata logged are left out: they
    /// have nothing to recover.
    ///
    /// The frames are copied out of the buffers they were decoded from, so a segment read
    /// whole is freed even if one of its frames is kept.
    pub fn finish(self) -> Vec<RestoredRoom> {
        let mut rooms: Vec<RestoredRoom> = self.rooms.into_values().filter(|r| r.seq > 0).collect();
        for (_, frame) in rooms.iter_mut().flat_map(|r| r.frames.iter_mut()) {
            *frame = Bytes::copy_from_slice(frame);
        }
        rooms
    }
}

fn room_in(rooms: &mut FxHashMap<Arc<str>, RestoredRoom>, name: Arc<str>) -> &mut RestoredRoom {
    rooms.entry(name.clone()).or_insert_with(|| RestoredRoom { name, ..RestoredRoom::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::scan;
    use proptest::prelude::*;

    fn frame(room: &str, epoch: u64, seq: u64) -> Record {
        Record::Frame { room: room.into(), epoch, seq, ts: seq, frame: Bytes::from(format!("m{seq}")) }
    }

    fn seqs(r: &RestoredRoom) -> Vec<u64> {
        r.frames.iter().map(|(s, _)| *s).collect()
    }

    fn rebuild(records: impl IntoIterator<Item = Record>) -> FxHashMap<Arc<str>, RestoredRoom> {
        let mut b = Rebuild::new(100, 1 << 20);
        records.into_iter().for_each(|r| b.apply(r));
        b.finish().into_iter().map(|r| (r.name.clone(), r)).collect()
    }

    #[test]
    fn a_stream_keeps_its_epoch_and_seq_and_repeats_are_skipped() {
        let rooms = rebuild([frame("a", 5, 1), frame("a", 5, 2), frame("a", 5, 2), frame("a", 5, 1), frame("a", 5, 3)]);
        let a = &rooms["a"];
        assert_eq!((a.epoch, a.seq, seqs(a)), (5, 3, vec![1, 2, 3]));
    }

    #[test]
    fn a_gap_or_a_new_epoch_starts_the_history_afresh() {
        let rooms = rebuild([frame("a", 5, 1), frame("a", 5, 3), frame("b", 1, 1), frame("b", 2, 7), frame("b", 2, 8)]);
        assert_eq!(seqs(&rooms["a"]), vec![3]);
        assert_eq!((rooms["b"].epoch, seqs(&rooms["b"])), (2, vec![7, 8]));
    }

    #[test]
    fn a_reset_is_a_tombstone_and_a_drop_forgets_the_room() {
        let reset = Record::Reset { room: "a".into(), epoch: 9, seq: 2, ts: 0 };
        let rooms = rebuild([frame("a", 5, 1), frame("a", 5, 2), reset, frame("a", 9, 3)]);
        assert_eq!((rooms["a"].epoch, rooms["a"].seq, seqs(&rooms["a"])), (9, 3, vec![3]));
        let rooms = rebuild([frame("a", 5, 1), Record::Drop { room: "a".into() }]);
        assert!(rooms.is_empty());
    }

    #[test]
    fn caps_keep_the_newest_frames() {
        let mut b = Rebuild::new(3, 1 << 20);
        (1..=10).for_each(|s| b.apply(frame("a", 1, s)));
        assert_eq!(seqs(&b.finish()[0]), vec![8, 9, 10]);
    }

    #[test]
    fn metadata_survives_and_rooms_without_messages_are_left_out() {
        let meta = Record::Meta { room: "a".into(), creator: Some("ann".into()), password: Some("h".into()) };
        let rooms =
            rebuild([meta.clone(), frame("a", 1, 1), Record::Meta { room: "b".into(), creator: None, password: None }]);
        assert_eq!(rooms.len(), 1);
        assert_eq!((rooms["a"].creator.as_deref(), rooms["a"].password.as_deref()), (Some("ann"), Some("h")));
    }

    proptest! {
        /// A log cut at any byte replays to exactly the frames of the whole records
        /// before the cut: consecutive, in order, none twice.
        #[test]
        fn any_cut_replays_to_a_gap_free_prefix(n in 1u64..40, cut in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            let mut ends = Vec::new();
            for s in 1..=n {
                frame("a", 4, s).encode(&mut buf);
                ends.push(buf.len());
            }
            let cut = cut.index(buf.len() + 1);
            let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
            let s = scan(&Bytes::copy_from_slice(&buf[..cut]));
            let rooms = rebuild(s.records);
            let got = rooms.get("a").map(seqs).unwrap_or_default();
            prop_assert_eq!(got, (1..=whole).collect::<Vec<_>>());
        }
    }
}
