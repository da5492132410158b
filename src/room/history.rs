//! Room history: a bounded ring of the frames a room delivered, and the shard-wide memory
//! budget across rooms.
//!
//! The ring holds the serialized frames exactly as members received them (a refcount
//! clone of the same `Bytes`), so a replay or a history page costs no re-serialization.
//! Each ring is capped by count and bytes; on top, a [`Budget`] per shard caps the total
//! and evicts the oldest messages across all rooms.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

/// History limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most messages per room (0: history off).
    pub messages: usize,
    /// Most bytes per room.
    pub bytes: usize,
}

/// One room's recent messages, oldest first, with consecutive sequence numbers.
#[derive(Debug, Default)]
pub struct Ring {
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Ring {
    /// Appends the frame of message `seq` (must follow the last one) and evicts from the
    /// front beyond `caps`; returns the evicted bytes and messages.
    pub fn push(&mut self, seq: u64, frame: Bytes, caps: Caps) -> (usize, usize) {
        debug_assert!(self.frames.back().is_none_or(|(s, _)| *s + 1 == seq));
        self.bytes += frame.len();
        self.frames.push_back((seq, frame));
        let (mut bytes, mut count) = (0, 0);
        while self.frames.len() > caps.messages || (self.bytes > caps.bytes && self.frames.len() > 1) {
            bytes += self.pop_front();
            count += 1;
        }
        (bytes, count)
    }

    fn pop_front(&mut self) -> usize {
        match self.frames.pop_front() {
            Some((_, f)) => {
                self.bytes -= f.len();
                f.len()
            }
            None => 0,
        }
    }

    /// Evicts the front message if it is `seq` (a budget eviction); returns its bytes.
    pub fn evict_if_front(&mut self, seq: u64) -> usize {
        match self.frames.front() {
            Some((s, _)) if *s == seq => self.pop_front(),
            _ => 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether message `seq` is still held.
    pub fn holds(&self, seq: u64) -> bool {
        matches!((self.frames.front(), self.frames.back()), (Some((a, _)), Some((b, _))) if *a <= seq && seq <= *b)
    }

    /// Every frame after `after`, up to `head` (the room's last seq), if the ring still
    /// reaches back that far; `None` when messages between were lost (the client must
    /// reload from elsewhere).
    pub fn since(&self, after: u64, head: u64) -> Option<Vec<Bytes>> {
        if after >= head {
            return (after == head).then(Vec::new);
        }
        let first = self.frames.front()?.0;
        if after + 1 < first {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        Some(self.frames.iter().skip(skip).map(|(_, f)| f.clone()).collect())
    }

    /// Up to `limit` frames with `seq < before` (all when `None`), newest first.
    pub fn page(&self, before: Option<u64>, limit: usize) -> Vec<Bytes> {
        let end = match (before, self.frames.front()) {
            (Some(b), Some((first, _))) => b.saturating_sub(*first).min(self.frames.len() as u64) as usize,
            (Some(_), None) => 0,
            (None, _) => self.frames.len(),
        };
        self.frames.range(..end).rev().take(limit).map(|(_, f)| f.clone()).collect()
    }
}

/// Finds a room's ring by name and room-instance epoch (the owner's room table).
pub trait Rings {
    /// The ring of room `room` if its current instance has epoch `epoch`.
    fn ring(&mut self, room: &str, epoch: u64) -> Option<&mut Ring>;
}

/// One message in the budget's push order.
#[derive(Debug)]
struct Stored {
    /// Its room.
    room: Arc<str>,
    /// The room's stream epoch when it was pushed (a later stream's ring is not its own).
    epoch: u64,
    /// Its sequence number.
    seq: u64,
}

/// The shard-wide history budget: total bytes across rooms, and the order messages were
/// added in, so the oldest anywhere can be evicted first.
#[derive(Debug)]
pub struct Budget {
    /// Push order. Entries whose message is gone already (evicted by its room's own
    /// caps, or the room dropped) are stale and skipped; they are compacted away when
    /// they outnumber live ones.
    order: VecDeque<Stored>,
    /// Bytes held by all live rings.
    bytes: usize,
    /// Messages held by all live rings.
    live: usize,
    cap: usize,
}

impl Budget {
    /// A budget of `cap` bytes.
    pub fn new(cap: usize) -> Budget {
        Budget { order: VecDeque::new(), bytes: 0, live: 0, cap }
    }

    /// Bytes held by all rings.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages held by all rings.
    pub fn messages(&self) -> usize {
        self.live
    }

    /// Records a push of `len` bytes that made its ring evict `evicted_bytes` in
    /// `evicted_count` messages.
    pub fn pushed(
        &mut self,
        room: &Arc<str>,
        epoch: u64,
        seq: u64,
        len: usize,
        evicted_bytes: usize,
        evicted_count: usize,
    ) {
        self.order.push_back(Stored { room: room.clone(), epoch, seq });
        self.bytes = self.bytes + len - evicted_bytes;
        self.live = self.live + 1 - evicted_count;
    }

    /// A ring of `bytes` in `count` messages was dropped with its room.
    pub fn dropped(&mut self, bytes: usize, count: usize) {
        self.bytes -= bytes;
        self.live -= count;
    }

    /// Evicts the oldest messages anywhere until under the cap.
    pub fn enforce(&mut self, rings: &mut impl Rings) {
        while self.bytes > self.cap {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(r) = rings.ring(&oldest.room, oldest.epoch) {
                let freed = r.evict_if_front(oldest.seq);
                if freed > 0 {
                    self.bytes -= freed;
                    self.live -= 1;
                }
            }
        }
        if self.order.len() > 2 * self.live + 1024 {
            self.order.retain(|m| rings.ring(&m.room, m.epoch).is_some_and(|r| r.holds(m.seq)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    const CAPS: Caps = Caps { messages: 5, bytes: 1000 };

    #[test]
    fn caps_by_count_and_bytes() {
        let mut r = Ring::default();
        for seq in 1..=7 {
            r.push(seq, f(10), CAPS);
        }
        assert_eq!((r.len(), r.bytes()), (5, 50));
        assert!(r.holds(3) && !r.holds(2));
        let (evicted, _) = r.push(8, f(990), CAPS);
        assert!(r.bytes() <= 1000 && evicted > 0);
        // A single message larger than the byte cap is kept (it is the newest).
        let mut big = Ring::default();
        big.push(1, f(5000), CAPS);
        assert_eq!(big.len(), 1);
    }

    #[test]
    fn since_replays_exactly_the_missing_messages_or_refuses() {
        let mut r = Ring::default();
        for seq in 1..=10 {
            r.push(seq, Bytes::from(seq.to_string()), Caps { messages: 5, bytes: 1 << 20 });
        }
        let got = |after| {
            r.since(after, 10).map(|v| v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>())
        };
        assert_eq!(got(7), Some(vec!["8".into(), "9".into(), "10".into()]));
        assert_eq!(
            got(5),
            Some(vec!["6".into(), "7".into(), "8".into(), "9".into(), "10".into()]),
            "exactly reaching back"
        );
        assert_eq!(got(4), None, "message 5 was evicted");
        assert_eq!(got(10), Some(vec![]), "nothing missed");
        assert_eq!(got(11), None, "a position from the future is not ours");
        assert_eq!(Ring::default().since(0, 0), Some(vec![]));
        assert_eq!(Ring::default().since(0, 3), None);
    }

    #[test]
    fn pages_are_newest_first_before_a_seq() {
        let mut r = Ring::default();
        for seq in 1..=10 {
            r.push(seq, Bytes::from(seq.to_string()), Caps { messages: 8, bytes: 1 << 20 });
        }
        let page = |before, limit| {
            r.page(before, limit).iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>()
        };
        assert_eq!(page(None, 3), vec!["10", "9", "8"]);
        assert_eq!(page(Some(8), 3), vec!["7", "6", "5"]);
        assert_eq!(page(Some(5), 10), vec!["4", "3"], "ring holds 3..=10");
        assert_eq!(page(Some(3), 10), Vec::<String>::new());
        assert_eq!(page(Some(100), 2), vec!["10", "9"]);
    }

    #[test]
    fn the_budget_evicts_the_oldest_across_rooms() {
        let caps = Caps { messages: 100, bytes: 1 << 20 };
        struct Two(Vec<Ring>);
        impl Rings for Two {
            fn ring(&mut self, room: &str, _: u64) -> Option<&mut Ring> {
                self.0.get_mut(usize::from(room == "b"))
            }
        }
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut rings = Two(vec![Ring::default(), Ring::default()]);
        let mut budget = Budget::new(100);
        let mut seqs = [0u64; 2];
        for i in 0..15 {
            let which = i % 2;
            seqs[which] += 1;
            let (bytes, count) = rings.0[which].push(seqs[which], f(10), caps);
            budget.pushed(if which == 0 { &a } else { &b }, 7, seqs[which], 10, bytes, count);
            budget.enforce(&mut rings);
        }
        let r = &rings.0;
        assert!(budget.bytes() <= 100);
        assert_eq!(budget.messages(), r[0].len() + r[1].len());
        assert_eq!(r[0].len() + r[1].len(), 10);
        // The survivors are the 10 newest pushes: a holds 4..=8, b holds 3..=7.
        assert!(r[0].holds(4) && !r[0].holds(3) && r[1].holds(3) && !r[1].holds(2));
    }
}
