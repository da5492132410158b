//! The fan-out: owner frames handed to local members, corked.
//!
//! The inbox loop does not deliver a `Deliver` the moment it reads it. It collects every
//! delivery that is already waiting in the inbox into a [`Batch`] (in arrival order,
//! grouped by room) and delivers the batch when the inbox runs dry, when another kind of
//! message comes next (so joins, leaves and replies keep their order relative to the
//! frames), or when the batch is full. Each member then gets all of its room's frames in
//! one `sendmsg` whose iovecs were built once for the whole room.
//!
//! Why: a send costs a syscall (~2–3 µs here) whether it carries one 150-byte frame or
//! sixty. At low rates a batch holds one frame and nothing changes; when the shard falls
//! behind, frames pile up in the inbox and the next sweep carries them all, so the cost
//! per delivery drops exactly when the load is highest. Steady state allocates nothing:
//! the batch, its groups and the member snapshot are reused.
//!
//! A join ack does not deliver the batch either: the new member becomes a member at
//! once, and its room's group notes where it joined, so it gets only the frames corked
//! after its ack (see [`Batch::joined`]). Why: in a join storm every join's presence
//! event comes just before its ack, and delivering the batch at each ack meant one
//! `sendmsg` per member per join (10 rooms of 1,000 filled at once: ~5 M syscalls, and
//! half the joins timed out behind them); corked, each member gets all of a pass's
//! events in one.
//!
//! With `--send-path uring`, the members of a group whose queue is empty get their
//! `sendmsg` as SQEs of the shard's send ring ([`crate::rt::send_ring`]): one
//! `io_uring_enter` per group (up to 256 members) instead of one syscall each. The
//! outcomes are the direct path's (each send runs inline, `EAGAIN` included), applied by
//! the same code, so order, caps and the slow-consumer policy are unchanged.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::conns::{Conn, ConnId, Conns};
use super::outbox::MAX_IOV;
use super::Shard;
use crate::config::SendPath;
use crate::metrics::add;
use crate::rt;
use crate::rt::send_ring::{Outcome, SendRing};

/// Most frames a batch collects before it is delivered. A batch only grows while the
/// inbox is backed up, and then a larger one is what catches up: with many rooms, each
/// member's share of the batch is what one `sendmsg` carries.
pub const MAX_FRAMES: usize = 4096;

/// Members handled between checks whether the executor wants the core back (a
/// million-member room must not stall heartbeats and reads for a whole sweep).
const CHUNK: usize = 1024;

/// Frames of one room (or of the everyone-broadcast, `room: None`) in arrival order.
struct Group {
    room: Option<Arc<str>>,
    frames: Vec<Bytes>,
    /// Owner hand-off time of each frame, for the fan-out latency histogram.
    sent_at: Vec<Instant>,
    /// (frame index, member) pairs: that member does not get that frame (`skip_self`).
    /// Almost always empty.
    skips: Vec<(usize, ConnId)>,
    /// (member, frame index) pairs: that member joined (its ack was handled) after the
    /// group had that many frames, so it gets only the frames from that index on. Empty
    /// except while joins arrive during a backlog.
    late: Vec<(ConnId, usize)>,
}

impl Group {
    /// Sorts `late` for [`Self::start`], one entry per member: its latest join (the
    /// largest index: a member that left and joined again within the batch gets only
    /// what followed its last join).
    fn settle_late(&mut self) {
        self.late.sort_unstable_by_key(|&(id, from)| (id, std::cmp::Reverse(from)));
        self.late.dedup_by_key(|(id, _)| *id);
    }

    /// Where `id`'s frames start: after the frames corked before its join, if it joined
    /// during this batch (`late` is sorted by member, one entry each, see `deliver`).
    fn start(&self, id: ConnId) -> usize {
        if self.late.is_empty() {
            return 0;
        }
        self.late.binary_search_by_key(&id, |(c, _)| *c).map_or(0, |i| self.late[i].1)
    }
}

/// Deliveries waiting to be fanned out, grouped by room. Owned by the inbox loop and
/// reused: groups keep their vectors' capacity between batches.
#[derive(Default)]
pub struct Batch {
    groups: Vec<Group>,
    /// Groups in use (`groups[..used]`).
    used: usize,
    frames: usize,
    /// Group of each room in use.
    index: FxHashMap<Arc<str>, usize>,
    /// Group of the everyone-broadcast, if in use.
    all: Option<usize>,
    /// Snapshot of a large room's members.
    ids: Vec<ConnId>,
    /// The io_uring send path, once created (`--send-path uring`).
    uring: Option<Box<UringSends>>,
    /// Creating it was tried (it is not retried after a failure: the direct path serves).
    uring_tried: bool,
}

/// The send ring and the members of the group being sent (reused; at most [`CHUNK`]).
struct UringSends {
    ring: SendRing,
    ids: Vec<ConnId>,
    fds: Vec<RawFd>,
}

/// The frames of a group as one member gets them: plain, or their compressed twins.
/// `iov` has a segment per frame; `whole`, when the group has several frames, one
/// segment holding them all back to back (built once per group), which is what a member
/// that gets every frame is sent (see `Outbox::push_batch`: the kernel's copy costs per
/// segment).
#[derive(Clone, Copy)]
struct Variant<'a, 'b> {
    frames: &'a [Bytes],
    iov: &'a [IoSlice<'b>],
    whole: &'a [IoSlice<'b>],
}

impl<'a, 'b> Variant<'a, 'b> {
    /// The iovecs of every frame: the one segment if there is one.
    fn all(&self) -> &'a [IoSlice<'b>] {
        if self.whole.is_empty() {
            self.iov
        } else {
            self.whole
        }
    }
}

/// `frames` back to back in one buffer, when there are several (else nothing to join).
fn joined(frames: &[Bytes]) -> Option<Bytes> {
    if frames.len() < 2 {
        return None;
    }
    let mut b = bytes::BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    frames.iter().for_each(|f| b.extend_from_slice(f));
    Some(b.freeze())
}

impl Batch {
    /// Adds a frame for `room` (`None`: every open connection).
    pub fn push(&mut self, room: Option<Arc<str>>, frame: Bytes, sent_at: Instant) {
        self.push_skipping(room, frame, sent_at, None);
    }

    /// [`Self::push`] of a frame that local member `skip` (its sender) does not get.
    pub fn push_skipping(&mut self, room: Option<Arc<str>>, frame: Bytes, sent_at: Instant, skip: Option<ConnId>) {
        self.frames += 1;
        let slot = match &room {
            Some(name) => self.index.get(name).copied(),
            None => self.all,
        };
        let g = match slot {
            Some(i) => i,
            None => {
                if self.used == self.groups.len() {
                    self.groups.push(Group {
                        room: None,
                        frames: Vec::new(),
                        sent_at: Vec::new(),
                        skips: Vec::new(),
                        late: Vec::new(),
                    });
                }
                let i = self.used;
                self.used += 1;
                match &room {
                    Some(name) => {
                        self.index.insert(name.clone(), i);
                    }
                    None => self.all = Some(i),
                }
                self.groups[i].room = room;
                i
            }
        };
        let group = &mut self.groups[g];
        if let Some(id) = skip {
            group.skips.push((group.frames.len(), id));
        }
        group.frames.push(frame);
        group.sent_at.push(sent_at);
    }

    /// Connection `id` becomes a local member of `room` now (its join ack is handled
    /// while this batch waits): it must get none of the room's frames corked so far
    /// (they were sequenced before its join; its `joined` says so), and every frame
    /// corked from here on. The everyone-broadcast group is not concerned (it goes to
    /// every open connection whatever its rooms).
    pub fn joined(&mut self, room: &str, id: ConnId) {
        if let Some(&g) = self.index.get(room) {
            let group = &mut self.groups[g];
            group.late.push((id, group.frames.len()));
        }
    }

    /// Whether the batch should be delivered before taking more.
    pub fn is_full(&self) -> bool {
        self.frames >= MAX_FRAMES
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }
}

impl Shard {
    /// Delivers and empties `batch`: each group's frames go to each of its local
    /// members in one vectored send (or behind what the member already has queued).
    pub(super) async fn deliver(self: &Rc<Self>, batch: &mut Batch) {
        let Batch { groups, used, frames, index, all, ids, uring, uring_tried } = batch;
        if self.cfg.send_path == SendPath::Uring && !*uring_tried {
            *uring_tried = true;
            *uring = match SendRing::new() {
                Ok(ring) => {
                    Some(Box::new(UringSends { ring, ids: Vec::with_capacity(CHUNK), fds: Vec::with_capacity(CHUNK) }))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no io_uring send ring: the fan-out sends directly");
                    None
                }
            };
        }
        // Groups are emptied, not dropped, so their vectors' capacity is reused.
        for group in &mut groups[..*used] {
            group.settle_late();
            self.deliver_group(group, ids, uring.as_deref_mut()).await;
            for at in group.sent_at.drain(..) {
                self.stats.record_fanout(at.elapsed());
            }
            group.room = None;
            group.frames.clear();
            group.skips.clear();
            group.late.clear();
        }
        *used = 0;
        *frames = 0;
        index.clear();
        *all = None;
    }

    /// Hands `frames` from index `from` on to one member (`from` > 0: it joined during
    /// the batch), leaving out those listed for it in `skips`.
    fn push_member(
        &self,
        id: ConnId,
        conn: &mut Conn,
        variant: Variant<'_, '_>,
        skips: &[(usize, ConnId)],
        from: usize,
    ) {
        let Variant { frames, iov, .. } = variant;
        let (Some(own), Some(own_iov)) = (frames.get(from..), iov.get(from..)) else { return };
        if own.is_empty() {
            return;
        }
        if skips.iter().all(|(_, s)| *s != id) {
            self.push_batch(conn, own, if from == 0 { variant.all() } else { own_iov });
            return;
        }
        // The sender of a `skip_self` message: its own copy of the group (rare, so the
        // allocation is fine), in the same order minus what it sent.
        let mine: Vec<Bytes> = frames
            .iter()
            .enumerate()
            .skip(from)
            .filter(|(i, _)| !skips.contains(&(*i, id)))
            .map(|(_, f)| f.clone())
            .collect();
        if !mine.is_empty() {
            let iov: Vec<IoSlice<'_>> = mine.iter().map(|f| IoSlice::new(f)).collect();
            self.push_batch(conn, &mine, &iov);
        }
    }

    /// Hands a group's frames (from index `from` on) to one member: directly, or
    /// (`ring`) by noting it for the group's io_uring submission when its queue is empty
    /// and it gets the plain frames whole (not the sender of a `skip_self` message, nor
    /// a member that joined during the batch).
    #[allow(clippy::too_many_arguments)]
    fn member(
        &self,
        id: ConnId,
        conn: &mut Conn,
        variant: Variant<'_, '_>,
        plain: bool,
        skips: &[(usize, ConnId)],
        from: usize,
        ring: Option<&mut UringSends>,
    ) {
        match ring {
            Some(u) if plain && from == 0 && conn.out.sends_directly() && skips.iter().all(|(_, s)| *s != id) => {
                u.ids.push(id);
                u.fds.push(conn.stream.as_raw_fd());
            }
            _ => self.push_member(id, conn, variant, skips, from),
        }
    }

    /// Sends the plain frames to the members noted by [`Self::member`], one
    /// `io_uring_enter` per 256, and applies each outcome as a direct send would.
    fn send_noted(&self, u: &mut UringSends, conns: &mut Conns, frames: &[Bytes], iov: &[IoSlice<'_>]) {
        let UringSends { ring, ids, fds } = u;
        ring.send_all(fds, iov, |i, outcome| {
            let Some(conn) = ids.get(i).and_then(|&id| conns.get_mut(id)) else { return };
            match outcome {
                Outcome::Done(sent) => self.push_batch_sent(conn, frames, iov, sent),
                Outcome::NotSubmitted => self.push_batch(conn, frames, iov),
            };
        });
        ids.clear();
        fds.clear();
    }

    async fn deliver_group(self: &Rc<Self>, group: &Group, ids: &mut Vec<ConnId>, mut uring: Option<&mut UringSends>) {
        let (room, frames, skips) = (group.room.as_deref(), &group.frames[..], &group.skips[..]);
        // Inline for the usual few frames per room; a backed-up room's larger group pays
        // one allocation per batch (never per delivery).
        let iov: SmallVec<[IoSlice<'_>; MAX_IOV]> = frames.iter().map(|f| IoSlice::new(f)).collect();
        // The compressed twins of the frames, built once for every local member that
        // negotiated permessage-deflate, and only if one of them is a member.
        let zframes: SmallVec<[Bytes; 4]> = if self.deflate_wanted(room) {
            frames.iter().map(|f| self.shared_deflated(f)).collect()
        } else {
            SmallVec::new()
        };
        let ziov: SmallVec<[IoSlice<'_>; MAX_IOV]> = zframes.iter().map(|f| IoSlice::new(f)).collect();
        // Each variant's frames joined once for the batch (one allocation per group).
        let (plain_joined, z_joined) = (joined(frames), joined(&zframes));
        let plain_whole: SmallVec<[IoSlice<'_>; 1]> = plain_joined.iter().map(|b| IoSlice::new(b)).collect();
        let zwhole: SmallVec<[IoSlice<'_>; 1]> = z_joined.iter().map(|b| IoSlice::new(b)).collect();
        let plain = Variant { frames, iov: &iov[..], whole: &plain_whole[..] };
        let deflated = if zframes.is_empty() {
            plain
        } else {
            Variant { frames: &zframes[..], iov: &ziov[..], whole: &zwhole[..] }
        };
        // (frames and iovecs, whether they are the plain ones)
        let pick = |conn: &Conn| {
            if conn.takes_deflated() && !zframes.is_empty() {
                (deflated, false)
            } else {
                (plain, true)
            }
        };
        // The ring carries groups that fit one sendmsg (as the direct path's first call).
        if frames.len() > MAX_IOV || uring.as_ref().is_some_and(|u| !u.ring.usable()) {
            uring = None;
        }
        ids.clear();
        {
            let members = self.members.borrow();
            let mut conns = self.conns.borrow_mut();
            match room {
                Some(room) => {
                    let Some(set) = members.get(room) else { return };
                    if set.len() <= CHUNK {
                        let (mut delivered, mut handoffs) = (0, 0);
                        set.for_each(|id| {
                            let from = group.start(id);
                            delivered += frames.len().saturating_sub(from);
                            handoffs += usize::from(from < frames.len());
                            if let Some(conn) = conns.get_mut(id) {
                                let (variant, is_plain) = pick(conn);
                                self.member(id, conn, variant, is_plain, skips, from, uring.as_deref_mut());
                            }
                        });
                        if let Some(u) = uring {
                            self.send_noted(u, &mut conns, frames, plain.all());
                        }
                        add(&self.stats.deliveries, delivered as u64);
                        add(&self.stats.fanout_handoffs, handoffs as u64);
                        return;
                    }
                    set.for_each(|id| ids.push(id));
                }
                // A broadcast reaches every client, but never an echo connection (it
                // must send nothing of its own).
                None => ids.extend(conns.iter_mut().filter(|(_, c)| c.is_open() && !c.echo).map(|(id, _)| id)),
            }
        }
        // Large audience: work from a snapshot in chunks, yielding between them; members
        // may leave meanwhile (checked), joins cannot interleave (their acks come through
        // the inbox, handled after this delivery).
        for chunk in ids.chunks(CHUNK) {
            let (mut delivered, mut handoffs) = (0, 0);
            {
                let mut conns = self.conns.borrow_mut();
                for id in chunk {
                    let from = group.start(*id);
                    delivered += frames.len().saturating_sub(from);
                    handoffs += usize::from(from < frames.len());
                    let Some(conn) = conns.get_mut(*id) else { continue };
                    let wanted = match room {
                        Some(room) => conn.in_room(room),
                        None => conn.is_open() && !conn.echo,
                    };
                    if wanted {
                        let (variant, is_plain) = pick(conn);
                        self.member(*id, conn, variant, is_plain, skips, from, uring.as_deref_mut());
                    }
                }
                if let Some(u) = uring.as_deref_mut() {
                    self.send_noted(u, &mut conns, frames, plain.all());
                }
            }
            add(&self.stats.deliveries, delivered as u64);
            add(&self.stats.fanout_handoffs, handoffs as u64);
            rt::yield_if_needed().await;
        }
    }

    /// Whether a group for `room` (`None`: everyone) needs compressed frames: some local
    /// connection that takes them is a member. Costs nothing while no connection of the
    /// shard negotiated compression.
    fn deflate_wanted(&self, room: Option<&str>) -> bool {
        if !self.deflate_in_use() {
            return false;
        }
        let mut conns = self.conns.borrow_mut();
        match room {
            None => true,
            Some(room) => {
                let members = self.members.borrow();
                let Some(set) = members.get(room) else { return false };
                let mut any = false;
                set.for_each(|id| any = any || conns.get_mut(id).is_some_and(|c| c.takes_deflated()));
                any
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(b: &Batch, g: usize) -> Option<&str> {
        b.groups[g].room.as_deref()
    }

    #[test]
    fn frames_group_by_room_in_arrival_order_and_groups_are_reused() {
        let now = Instant::now();
        let mut b = Batch::default();
        let a: Arc<str> = "a".into();
        b.push(Some(a.clone()), Bytes::from_static(b"1"), now);
        b.push(Some("b".into()), Bytes::from_static(b"2"), now);
        b.push(None, Bytes::from_static(b"3"), now);
        b.push(Some("a".into()), Bytes::from_static(b"4"), now);
        assert_eq!(b.used, 3);
        assert_eq!((room(&b, 0), room(&b, 1), room(&b, 2)), (Some("a"), Some("b"), None));
        assert_eq!(b.groups[0].frames, [Bytes::from_static(b"1"), Bytes::from_static(b"4")]);
        assert!(!b.is_full() && !b.is_empty());
        // What `deliver` leaves behind: groups kept, emptied.
        for g in &mut b.groups {
            g.frames.clear();
            g.sent_at.clear();
        }
        b.used = 0;
        b.frames = 0;
        b.index.clear();
        b.all = None;
        b.push(Some("c".into()), Bytes::from_static(b"5"), now);
        assert_eq!((b.used, b.groups.len()), (1, 3));
        assert_eq!(room(&b, 0), Some("c"));
    }

    #[test]
    fn a_member_joined_during_the_batch_gets_only_the_frames_after_its_ack() {
        let now = Instant::now();
        let mut b = Batch::default();
        let (x, y, z) = (ConnId::for_test(7), ConnId::for_test(3), ConnId::for_test(9));
        // Acks for a room without frames yet, or for the everyone-broadcast's members,
        // note nothing: the room's first frame comes after them.
        b.joined("a", z);
        b.push(None, Bytes::from_static(b"all"), now);
        b.push(Some("a".into()), Bytes::from_static(b"1"), now);
        b.joined("a", x);
        b.push(Some("a".into()), Bytes::from_static(b"2"), now);
        b.joined("a", y);
        b.joined("b", y);
        // x left and joined again: only its last join counts.
        b.joined("a", x);
        b.push(Some("a".into()), Bytes::from_static(b"3"), now);
        assert_eq!(room(&b, 0), None);
        assert!(b.groups[0].late.is_empty());
        let g = &mut b.groups[1];
        g.settle_late();
        assert_eq!((g.start(z), g.start(x), g.start(y)), (0, 2, 2));
        assert_eq!(g.start(ConnId::for_test(1)), 0, "a member from before the batch gets every frame");
    }

    #[test]
    fn a_batch_is_full_at_max_frames() {
        let mut b = Batch::default();
        for _ in 0..MAX_FRAMES {
            assert!(!b.is_full());
            b.push(None, Bytes::from_static(b"x"), Instant::now());
        }
        assert!(b.is_full());
    }
}
