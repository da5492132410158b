//! Per-message delivery accounting for runs whose publishers ask for an `ack` of every
//! message (`--acks`).
//!
//! The plain verdict counts deliveries in aggregate (Σ over rooms of members × messages
//! written), so when a cluster node dies it cannot tell a message the server accepted and
//! then lost from one that never got past the dying node, nor which receivers missed it.
//! With acks, each publish carries `id` `"<step>.<publisher>.<n>"`; the server's `ack`
//! says the message was sequenced. The audit keeps, per message, whether it was acked,
//! and per message and receiver *home* (the index of the `--target` a connection was
//! first sent to, which it keeps across failovers), how many receivers got it. An
//! acknowledged message owes a delivery to every member of its room; the audit reports
//! what each home received of that, so "the clients of the killed node" and "everybody
//! else" are separate lines.
//!
//! Pure bookkeeping: no I/O, unit-tested below. Costs a map entry per message per home
//! (kept only with `--acks`, which is meant for correctness runs, not for peak rates).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A message: (global publisher index, the publisher's message number in the step).
pub type MsgKey = (u32, u64);

/// What one thread (or, merged, the whole run) knows of a step's messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Messages written by this record's publishers: room, and whether acked.
    sent: HashMap<MsgKey, Sent>,
    /// Deliveries (duplicates excluded) per message and receiver home.
    delivered: HashMap<(MsgKey, u16), u32>,
    /// Room members per (room, home) when the step started.
    members: HashMap<(u32, u16), u64>,
    /// Acks that name no message this record wrote (an earlier step's, or garbage).
    stray_acks: u64,
    /// Messages sent by publishers after reconnecting: again (no ack came), or queued.
    resent: u64,
    /// Messages due while their publisher was reconnecting, held until it rejoined.
    queued: u64,
    /// Messages a connected publisher sent again because no ack came in time
    /// (`--ack-timeout`).
    retried: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    room: u32,
    acked: bool,
}

/// The `id` a publisher puts on message `n` of `publisher` in `step`; the server echoes it
/// as the `ack`'s `ref`.
pub fn message_id(step: u32, publisher: u32, n: u64) -> String {
    format!("{step}.{publisher}.{n}")
}

/// Reads a `ref` written by [`message_id`] back: `(step, (publisher, n))`.
pub fn parse_ref(raw: &[u8]) -> Option<(u32, MsgKey)> {
    let mut parts = raw.split(|&c| c == b'.');
    let step = u32::try_from(crate::scan::parse_u64(parts.next()?)?).ok()?;
    let publisher = u32::try_from(crate::scan::parse_u64(parts.next()?)?).ok()?;
    let n = crate::scan::parse_u64(parts.next()?)?;
    parts.next().is_none().then_some((step, (publisher, n)))
}

impl Audit {
    /// Counts `count` members of `room` whose home is `home` (at the step's start).
    pub fn member(&mut self, room: u32, home: u16, count: u64) {
        *self.members.entry((room, home)).or_default() += count;
    }

    /// A publisher wrote message `key` to `room` (again, when it resends: an ack that
    /// came meanwhile stays).
    pub fn sent(&mut self, key: MsgKey, room: u32) {
        self.sent.entry(key).or_insert(Sent { room, acked: false });
    }

    /// The message numbers `publisher` wrote and has no ack for, oldest first: what it
    /// resends (with their idempotency keys) once it has rejoined.
    pub fn unacked_of(&self, publisher: u32) -> Vec<u64> {
        let mut ns: Vec<u64> =
            self.sent.iter().filter(|((p, _), s)| *p == publisher && !s.acked).map(|((_, n), _)| *n).collect();
        ns.sort_unstable();
        ns
    }

    /// Counts messages a publisher sent after reconnecting (again, or for the first time
    /// when they were queued).
    pub fn resent(&mut self, count: u64) {
        self.resent += count;
    }

    /// Counts messages that fell due while their publisher was reconnecting, queued.
    pub fn queued(&mut self, count: u64) {
        self.queued += count;
    }

    /// Counts messages a connected publisher sent again after its ack timeout.
    pub fn retried(&mut self, count: u64) {
        self.retried += count;
    }

    /// Whether `key` was written and acknowledged.
    pub fn is_acked(&self, key: MsgKey) -> bool {
        self.sent.get(&key).is_some_and(|s| s.acked)
    }

    /// The server acknowledged `key`. An ack for a message this record did not write is
    /// counted as stray.
    pub fn acked(&mut self, key: MsgKey) {
        match self.sent.get_mut(&key) {
            Some(s) => s.acked = true,
            None => self.stray_ack(),
        }
    }

    /// An ack that names no message of the open step (an earlier step's, or not ours).
    pub fn stray_ack(&mut self) {
        self.stray_acks += 1;
    }

    /// A receiver whose home is `home` got `key` (not as a duplicate of a `seq` it had).
    pub fn delivered(&mut self, key: MsgKey, home: u16) {
        *self.delivered.entry((key, home)).or_default() += 1;
    }

    /// Adds another thread's or process's audit of the same step.
    pub fn merge(&mut self, o: &Audit) {
        for (k, s) in &o.sent {
            let e = self.sent.entry(*k).or_insert(*s);
            e.acked |= s.acked;
        }
        for (k, n) in &o.delivered {
            *self.delivered.entry(*k).or_default() += n;
        }
        for (k, n) in &o.members {
            *self.members.entry(*k).or_default() += n;
        }
        self.stray_acks += o.stray_acks;
        self.resent += o.resent;
        self.queued += o.queued;
        self.retried += o.retried;
    }

    /// Whether anything was recorded (no `--acks`: nothing).
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
            && self.delivered.is_empty()
            && self.members.is_empty()
            && self.stray_acks == 0
            && self.resent == 0
            && self.queued == 0
            && self.retried == 0
    }

    /// The serializable form (flat lists: JSON has no tuple keys).
    pub fn to_wire(&self) -> WireAudit {
        WireAudit {
            sent: self.sent.iter().map(|(&(p, n), s)| (p, n, s.room, s.acked)).collect(),
            delivered: self.delivered.iter().map(|(&((p, n), h), &c)| (p, n, h, c)).collect(),
            members: self.members.iter().map(|(&(r, h), &c)| (r, h, c)).collect(),
            stray_acks: self.stray_acks,
            resent: self.resent,
            queued: self.queued,
            retried: self.retried,
        }
    }

    /// What the deliveries of the step owed and got, per home; `home_of` gives a
    /// publisher's home (a publisher is a connection too), for the unacknowledged
    /// messages of each home.
    pub fn result(&self, home_of: impl Fn(u32) -> u16) -> AuditResult {
        let mut out = AuditResult {
            stray_acks: self.stray_acks,
            resent: self.resent,
            queued: self.queued,
            retried: self.retried,
            ..AuditResult::default()
        };
        let mut homes_of: HashMap<u32, Vec<(u16, u64)>> = HashMap::new();
        for (&(room, home), &n) in &self.members {
            homes_of.entry(room).or_default().push((home, n));
        }
        let mut by_home: HashMap<u16, HomeAudit> = HashMap::new();
        for (&key, s) in &self.sent {
            out.published += 1;
            if !s.acked {
                out.unacked += 1;
                home_entry(&mut by_home, home_of(key.0)).unacked += 1;
                continue;
            }
            out.acked += 1;
            for &(home, members) in homes_of.get(&s.room).map_or(&[][..], Vec::as_slice) {
                let got = u64::from(self.delivered.get(&(key, home)).copied().unwrap_or(0));
                let h = home_entry(&mut by_home, home);
                h.expected += members;
                h.delivered += got.min(members);
                h.lost += members.saturating_sub(got);
            }
        }
        for (&(key, home), &got) in &self.delivered {
            let got = u64::from(got);
            match self.sent.get(&key) {
                Some(s) if s.acked => {
                    let members = self.members.get(&(s.room, home)).copied().unwrap_or(0);
                    if got > members {
                        home_entry(&mut by_home, home).excess += got - members;
                    }
                }
                Some(_) => out.unacked_deliveries += got,
                None => out.unknown_deliveries += got,
            }
        }
        for (&(_, home), &n) in &self.members {
            home_entry(&mut by_home, home).members += n;
        }
        let mut homes: Vec<HomeAudit> = by_home.into_values().collect();
        homes.sort_by_key(|h| h.home);
        out.expected = homes.iter().map(|h| h.expected).sum();
        out.delivered = homes.iter().map(|h| h.delivered).sum();
        out.lost = homes.iter().map(|h| h.lost).sum();
        out.excess = homes.iter().map(|h| h.excess).sum();
        out.homes = homes;
        out
    }
}

/// The figures of `home` in `by_home`, started at zero.
fn home_entry(by_home: &mut HashMap<u16, HomeAudit>, home: u16) -> &mut HomeAudit {
    by_home.entry(home).or_insert_with(|| HomeAudit { home, ..HomeAudit::default() })
}

/// [`Audit`] as shipped from a worker process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireAudit {
    /// `(publisher, n, room, acked)` per message written.
    pub sent: Vec<(u32, u64, u32, bool)>,
    /// `(publisher, n, home, deliveries)`.
    pub delivered: Vec<(u32, u64, u16, u32)>,
    /// `(room, home, members)`.
    pub members: Vec<(u32, u16, u64)>,
    /// Acks naming no message written.
    pub stray_acks: u64,
    /// Messages sent after a reconnection.
    #[serde(default)]
    pub resent: u64,
    /// Messages queued while their publisher reconnected.
    #[serde(default)]
    pub queued: u64,
    /// Messages sent again after an ack timeout.
    #[serde(default)]
    pub retried: u64,
}

impl WireAudit {
    /// Back to a mergeable [`Audit`].
    pub fn decode(&self) -> Audit {
        let mut a = Audit {
            stray_acks: self.stray_acks,
            resent: self.resent,
            queued: self.queued,
            retried: self.retried,
            ..Audit::default()
        };
        for &(p, n, room, acked) in &self.sent {
            a.sent.insert((p, n), Sent { room, acked });
        }
        for &(p, n, home, c) in &self.delivered {
            *a.delivered.entry(((p, n), home)).or_default() += c;
        }
        for &(room, home, c) in &self.members {
            a.member(room, home, c);
        }
        a
    }
}

/// The deliveries owed to, and received by, the receivers of one home (one `--target`
/// index, the one a connection was first sent to).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct HomeAudit {
    /// Index in `--target` of the receivers' first server.
    pub home: u16,
    /// Room members with this home when the step started.
    pub members: u64,
    /// Deliveries owed: Σ over acknowledged messages of their room's members here.
    pub expected: u64,
    /// Of those, received.
    pub delivered: u64,
    /// Owed and never received.
    pub lost: u64,
    /// Received more often than there are members here (a message sequenced twice).
    pub excess: u64,
    /// Messages this home's publishers wrote that were never acknowledged.
    pub unacked: u64,
}

/// A step's audit: acknowledged messages and what their receivers got.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AuditResult {
    /// Messages written.
    pub published: u64,
    /// Of those, acknowledged by the server.
    pub acked: u64,
    /// Never acknowledged (lost with the publisher's node, or the ack was).
    pub unacked: u64,
    /// Deliveries of unacknowledged messages (sequenced, but the ack did not come back).
    pub unacked_deliveries: u64,
    /// Deliveries of messages no publisher reported writing.
    pub unknown_deliveries: u64,
    /// Acks naming no message written in the step.
    pub stray_acks: u64,
    /// Messages publishers sent, with their idempotency keys, after reconnecting: again
    /// when no ack had come, or for the first time when they fell due meanwhile.
    pub resent: u64,
    /// Of the messages written, those that fell due while their publisher reconnected
    /// (queued, as a client's outbox holds them).
    pub queued: u64,
    /// Messages a connected publisher sent again, with the same idempotency key, because
    /// no ack came within `--ack-timeout` (each retry counts once).
    pub retried: u64,
    /// Deliveries owed for acknowledged messages, over all homes.
    pub expected: u64,
    /// Of those, received.
    pub delivered: u64,
    /// Owed and never received.
    pub lost: u64,
    /// Received beyond the members (duplicates with a new `seq`).
    pub excess: u64,
    /// Per home, sorted.
    pub homes: Vec<HomeAudit>,
}

impl AuditResult {
    /// The homes that lost something, got an excess or published unacknowledged
    /// messages, for the log line.
    pub fn troubled(&self) -> impl Iterator<Item = &HomeAudit> {
        self.homes.iter().filter(|h| h.lost > 0 || h.excess > 0 || h.unacked > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_garbage_is_refused() {
        assert_eq!(parse_ref(message_id(3, 17, 2001).as_bytes()), Some((3, (17, 2001))));
        for bad in [&b""[..], b"3.17", b"3.17.x", b"3.17.1.2", b"-1.2.3", b"c-17"] {
            assert_eq!(parse_ref(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// Room 0 has 2 members at home 0 and 3 at home 1; room 1 has 1 at home 1.
    fn two_rooms() -> Audit {
        let mut a = Audit::default();
        a.member(0, 0, 2);
        a.member(0, 1, 3);
        a.member(1, 1, 1);
        a
    }

    #[test]
    fn an_acked_message_owes_every_member_and_loss_is_told_per_home() {
        let mut a = two_rooms();
        a.sent((0, 0), 0);
        a.acked((0, 0));
        a.delivered((0, 0), 0);
        a.delivered((0, 0), 0);
        a.delivered((0, 0), 1); // two of home 1's three missed it
        let r = a.result(|p| p as u16);
        assert_eq!((r.published, r.acked, r.unacked), (1, 1, 0));
        assert_eq!((r.expected, r.delivered, r.lost, r.excess), (5, 3, 2, 0));
        let troubled: Vec<_> = r.troubled().map(|h| (h.home, h.lost)).collect();
        assert_eq!(troubled, [(1, 2)]);
        assert_eq!(r.homes.iter().map(|h| h.members).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn an_unacked_message_owes_nothing_and_its_deliveries_are_counted_apart() {
        let mut a = two_rooms();
        a.sent((0, 0), 0); // lost with its publisher's node: no ack, no delivery
        a.sent((0, 1), 0); // sequenced, but the ack did not come back
        a.delivered((0, 1), 0);
        let r = a.result(|_| 1);
        assert_eq!((r.acked, r.unacked, r.expected, r.lost, r.unacked_deliveries), (0, 2, 0, 0, 1));
        let troubled: Vec<_> = r.troubled().map(|h| (h.home, h.unacked, h.lost)).collect();
        assert_eq!(troubled, [(1, 2, 0)], "told apart by the publisher's home");
    }

    #[test]
    fn a_message_received_more_often_than_there_are_members_is_excess() {
        let mut a = two_rooms();
        a.sent((1, 0), 1);
        a.acked((1, 0));
        a.delivered((1, 0), 1);
        a.delivered((1, 0), 1);
        let r = a.result(|p| p as u16);
        assert_eq!((r.expected, r.delivered, r.lost, r.excess), (1, 1, 0, 1));
    }

    #[test]
    fn a_publisher_resends_what_it_has_no_ack_for_oldest_first_and_a_late_ack_stays() {
        let mut a = two_rooms();
        for n in [4, 1, 3, 2] {
            a.sent((5, n), 0);
        }
        a.sent((6, 1), 0);
        a.acked((5, 2));
        assert_eq!(a.unacked_of(5), [1, 3, 4]);
        a.acked((5, 3));
        a.sent((5, 3), 0); // resent after its ack came: still acked
        a.resent(1);
        assert_eq!(a.unacked_of(5), [1, 4]);
        let r = a.to_wire().decode().result(|_| 0);
        assert_eq!((r.published, r.acked, r.resent), (5, 2, 1));
    }

    #[test]
    fn stray_acks_and_unknown_deliveries_are_counted_not_dropped() {
        let mut a = two_rooms();
        a.acked((9, 9));
        a.delivered((8, 8), 0);
        let r = a.result(|p| p as u16);
        assert_eq!((r.stray_acks, r.unknown_deliveries, r.expected), (1, 1, 0));
    }

    #[test]
    fn threads_merge_and_survive_the_wire() {
        // The publisher's thread saw the ack; a receiver's thread saw the deliveries.
        let mut publisher = Audit::default();
        publisher.member(0, 0, 1);
        publisher.sent((0, 0), 0);
        publisher.acked((0, 0));
        let mut receiver = Audit::default();
        receiver.member(0, 1, 2);
        receiver.delivered((0, 0), 1);
        receiver.delivered((0, 0), 1);
        let mut merged = publisher.to_wire().decode();
        merged.merge(&receiver.to_wire().decode());
        let r = merged.result(|p| p as u16);
        assert_eq!((r.expected, r.delivered, r.lost), (3, 2, 1));
        assert_eq!(r.troubled().map(|h| h.home).collect::<Vec<_>>(), [0]);
    }
}
