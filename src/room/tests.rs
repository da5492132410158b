//! The rooms' rules, without a runtime: each test drives [`OwnedRooms`] directly and
//! looks at the [`RoomOut`]s it emits.

use std::sync::Arc;

use super::history::Caps;
use super::request::{
    ConnId, ConnRef, DeleteReq, HistoryReq, JoinKind, PresenceReq, Publish, Remote, Reply, ReplyRef, ReplyTo, Requester,
};
use super::*;
use crate::protocol::server;
use crate::ws::frame::{parse_header, Role};

fn rooms(shards: usize, presence_max: u32) -> OwnedRooms {
    let history = HistoryConfig { caps: Caps { messages: 100, bytes: 1 << 20 }, memory: 1 << 20, ttl_ms: 0 };
    OwnedRooms::new(shards, presence_max, history)
}

fn origin(shard: usize, n: u32) -> ConnRef {
    ConnRef { shard, conn: ConnId::for_test(n), reference: None }
}

fn req(room: &str, user: &str, shard: usize, n: u32, kind: JoinKind) -> JoinReq {
    JoinReq { room: room.into(), user: user.into(), origin: origin(shard, n), token: n, kind }
}

const PLAIN: JoinKind = JoinKind::Join { password: None, verified: None, since: None };

fn join(r: &mut OwnedRooms, room: &str, user: &str, shard: usize, n: u32) -> Vec<RoomOut> {
    run(r, req(room, user, shard, n, PLAIN))
}

fn run(r: &mut OwnedRooms, req: JoinReq) -> Vec<RoomOut> {
    let mut out = Vec::new();
    assert!(matches!(r.join(req, 1, &mut |o| out.push(o)), JoinStep::Done));
    out
}

fn epoch(r: &OwnedRooms, room: &str) -> u32 {
    r.get(room).unwrap().epoch as u32
}

fn refusal(out: &[RoomOut]) -> String {
    match out.last() {
        Some(RoomOut::Shard(_, ToShard::JoinRefused(f))) => json(&f.frame)["code"].as_str().unwrap().to_owned(),
        _ => panic!("expected a refusal"),
    }
}

fn json(frame: &bytes::Bytes) -> serde_json::Value {
    let h = parse_header(frame, Role::Client, usize::MAX).unwrap().unwrap();
    serde_json::from_slice(&frame[h.header_len..]).unwrap()
}

fn delivered(out: &[RoomOut]) -> Vec<(usize, serde_json::Value)> {
    out.iter()
        .filter_map(|o| match o {
            RoomOut::Shard(s, ToShard::Deliver { frame, .. }) => Some((*s, json(frame))),
            _ => None,
        })
        .collect()
}

#[test]
fn first_connection_of_a_user_is_announced_then_acked() {
    let mut r = rooms(2, 1000);
    let out = join(&mut r, "lobby", "alice", 0, 1);
    assert!(delivered(&out).is_empty(), "nobody to tell yet");
    let out = join(&mut r, "lobby", "bob", 1, 2);
    let events = delivered(&out);
    assert_eq!(events.len(), 1, "one hand-off, to the only shard with members: {events:?}");
    assert_eq!((events[0].0, &events[0].1["type"]), (0, &serde_json::json!("join")));
    let Some(RoomOut::Shard(1, ToShard::JoinAck(ack))) = out.last() else { panic!("ack last") };
    assert_eq!(json(&ack.frame)["members"], 2);
    // A second connection of bob is not announced.
    assert!(delivered(&join(&mut r, "lobby", "bob", 0, 3)).is_empty());
}

#[test]
fn publish_sequences_and_fans_out_once_per_shard() {
    let mut r = rooms(3, 1000);
    join(&mut r, "r", "a", 0, 1);
    join(&mut r, "r", "b", 0, 2);
    join(&mut r, "r", "c", 2, 3);
    for expected in 1..=3u64 {
        let mut out = Vec::new();
        let from = Requester::Conn(ConnRef { reference: Some("x".into()), ..origin(0, 1) });
        let msg = Publish::text("r".into(), "a".into(), "hi", from);
        r.publish(msg, 42, &mut |o| out.push(o));
        let d = delivered(&out);
        assert_eq!(d.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(d[0].1["seq"], expected);
        assert_eq!(d[0].1["ts"], 42);
        assert!(matches!(out.last(), Some(RoomOut::Shard(0, ToShard::ToConn { .. }))), "ack to the sender");
    }
}

#[test]
fn last_leave_announces_and_empty_rooms_vanish() {
    let mut r = rooms(2, 1000);
    join(&mut r, "r", "a", 0, 1);
    join(&mut r, "r", "b", 1, 2);
    let mut out = Vec::new();
    let e = epoch(&r, "r");
    r.leave("r", "b", 1, e, 0, &mut |o| out.push(o));
    let d = delivered(&out);
    assert_eq!(d.len(), 1, "only shard 0 still has members");
    assert_eq!(d[0].1, serde_json::json!({"type":"leave","room":"r","user":"b"}));
    r.leave("r", "a", 0, e, 0, &mut |_| {});
    assert!(r.is_empty());
    // A stray leave is ignored rather than underflowing.
    r.leave("r", "a", 0, e, 0, &mut |_| {});
}

#[test]
fn private_rooms_need_a_verified_password_of_this_instance() {
    let mut r = rooms(2, 1000);
    let hash: Arc<str> = Arc::from("$argon2id$stand-in");
    run(&mut r, req("vault", "owner", 0, 1, JoinKind::Create { password_hash: Some(hash.clone()) }));
    let again = run(&mut r, req("vault", "x", 0, 2, JoinKind::Create { password_hash: None }));
    assert_eq!(refusal(&again), "room_exists");
    assert_eq!(refusal(&join(&mut r, "vault", "guest", 1, 3)), "password_required");
    let with_pw =
        req("vault", "guest", 1, 4, JoinKind::Join { password: Some("pw".into()), verified: None, since: None });
    let JoinStep::CheckPassword { mut req, hash: h, password, epoch } = r.join(with_pw, 1, &mut |_| {}) else {
        panic!("the owner asks for a password check")
    };
    assert_eq!((&*h, &*password), (&*hash, "pw"));
    // Resubmitted after a successful check: sequenced like any join.
    req.kind = JoinKind::Join { password: None, verified: Some(epoch), since: None };
    let out = run(&mut r, req);
    let Some(RoomOut::Shard(1, ToShard::JoinAck(ack))) = out.last() else { panic!("acked") };
    assert_eq!(json(&ack.frame)["private"], true);
    assert_eq!(r.get("vault").unwrap().connections(), 2);
    // A check done against another instance of the room does not count.
    let stale = req_verified("vault", epoch.wrapping_add(1));
    assert_eq!(refusal(&run(&mut r, stale)), "no_such_room");
    assert_eq!(r.get("vault").unwrap().connections(), 2, "refusals count nothing");
}

fn req_verified(room: &str, epoch: u64) -> JoinReq {
    req(room, "late", 1, 9, JoinKind::Join { password: None, verified: Some(epoch), since: None })
}

#[test]
fn only_the_creator_deletes_and_stale_leaves_cannot_touch_a_new_instance() {
    let mut r = rooms(2, 1000);
    run(&mut r, req("t", "owner", 0, 1, JoinKind::Create { password_hash: None }));
    join(&mut r, "t", "bob", 1, 2);
    let old = epoch(&r, "t");
    let del = |user: &str| DeleteReq { room: "t".into(), user: user.into(), origin: origin(1, 2) };
    let mut out = Vec::new();
    r.delete(del("bob"), &mut |o| out.push(o));
    assert!(
        matches!(out.last(), Some(RoomOut::Shard(1, ToShard::ToConn { .. }))) && r.get("t").is_some(),
        "bob may not"
    );
    let mut out = Vec::new();
    r.delete(del("owner"), &mut |o| out.push(o));
    let notified: Vec<usize> = out
        .iter()
        .filter_map(|o| match o {
            RoomOut::Shard(s, ToShard::RoomDeleted { .. }) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(notified, vec![0, 1]);
    assert!(r.get("t").is_none());
    // Re-created by a new join; a leave still in flight for the old instance is ignored.
    join(&mut r, "t", "carol", 1, 3);
    r.leave("t", "bob", 1, old, 0, &mut |_| {});
    assert_eq!(r.get("t").unwrap().connections(), 1);
    // Rooms made by a plain join have no creator: nobody can delete them.
    let mut out = Vec::new();
    r.delete(DeleteReq { room: "t".into(), user: "carol".into(), origin: origin(1, 3) }, &mut |o| out.push(o));
    assert!(r.get("t").is_some());
}

fn to_bus(out: &[RoomOut]) -> Vec<&ClusterOut> {
    out.iter()
        .filter_map(|o| match o {
            RoomOut::Cluster(b) => Some(b),
            _ => None,
        })
        .collect()
}

fn api_publish(r: &mut OwnedRooms, room: &str, text: &str, from: Requester) -> Vec<RoomOut> {
    let mut out = Vec::new();
    let msg = Publish::text(room.into(), "srv".into(), text, from);
    r.publish(msg, 7, &mut |o| out.push(o));
    out
}

#[test]
fn in_a_cluster_the_owner_subscribes_announces_and_publishes_frames() {
    let mut r = rooms(2, 1000).with_cluster(1);
    let out = join(&mut r, "r", "a", 0, 1);
    // (Join events go on the room subject too; they are checked elsewhere.)
    let bus: Vec<_> = to_bus(&out).into_iter().filter(|o| !matches!(o, ClusterOut::Event { .. })).collect();
    assert!(matches!(bus[0], ClusterOut::Subscribe(room) if &**room == "r"), "subscribe first");
    assert_eq!(bus.len(), 1, "alone in the cluster: this node keeps the presence, nobody to tell");
    r.set_nodes(Arc::from([1, 2]), 0, &mut |_| {});
    let keeper_told = |out: &[RoomOut]| to_bus(out).iter().any(|o| matches!(o, ClusterOut::Presence { to: 2, .. }));
    assert!(keeper_told(&join(&mut r, "r", "b", 0, 3)), "the other node is a keeper (of two nodes, both are)");
    assert!(to_bus(&join(&mut r, "r", "a", 1, 2)).is_empty(), "a second connection of a is no news");
    let out = api_publish(&mut r, "r", "hi", Requester::Api(ReplyTo { shard: 0, req: 1 }));
    let stream = r.get("r").unwrap().stream;
    assert!(matches!(to_bus(&out)[0], ClusterOut::Frame { seq: 1, epoch, .. } if *epoch == stream));
    let e = epoch(&r, "r");
    r.leave("r", "a", 0, e, 0, &mut |_| {});
    r.leave("r", "b", 0, e, 0, &mut |_| {});
    let mut out = Vec::new();
    r.leave("r", "a", 1, e, 0, &mut |o| out.push(o));
    // No history TTL here: the room goes at once, and so does the subscription.
    let bus = to_bus(&out);
    assert!(matches!(bus[0], ClusterOut::Presence { present: false, to: 2, .. }), "{bus:?}");
    assert!(matches!(bus.last(), Some(ClusterOut::Unsubscribe(_))), "{bus:?}");
    assert!(r.is_empty());
}

#[test]
fn in_a_cluster_a_local_publisher_is_answered_through_the_bridge_behind_the_frame() {
    // Regression: the sequencer acked its own node's clients straight to their shard,
    // while the frame still waited in the bridge's queue; a kill in between lost an
    // acknowledged message for every other node.
    let mut r = rooms(2, 1000).with_cluster(1);
    join(&mut r, "r", "a", 1, 1);
    let from = Requester::Conn(ConnRef { reference: Some("x".into()), ..origin(1, 1) });
    let mut out = Vec::new();
    r.publish(Publish::text("r".into(), "a".into(), "hi", from), 42, &mut |o| out.push(o));
    let bus = to_bus(&out);
    assert!(
        matches!(
            bus[..],
            [ClusterOut::Frame { seq: 1, .. }, ClusterOut::AfterBus { shard: 1, answer: LocalAnswer::ToConn { .. } }]
        ),
        "{bus:?}"
    );
    let direct_ack = out.iter().any(|o| matches!(o, RoomOut::Shard(_, ToShard::ToConn { .. })));
    assert!(!direct_ack, "no ack around the bridge");
    // The API's answer too.
    let out = api_publish(&mut r, "r", "api", Requester::Api(ReplyTo { shard: 0, req: 5 }));
    let bus = to_bus(&out);
    assert!(
        matches!(
            bus[..],
            [
                ClusterOut::Frame { seq: 2, .. },
                ClusterOut::AfterBus { shard: 0, answer: LocalAnswer::Published { req: 5, seq: Some(2), .. } }
            ]
        ),
        "{bus:?}"
    );
}

#[test]
fn remote_frames_are_adopted_deduplicated_and_gaps_restart_the_history() {
    let mut r = rooms(2, 1000).with_cluster(1);
    join(&mut r, "r", "a", 1, 1);
    let frame = |seq: u64| server::message("r", seq, "x", "t", 1);
    let feed = |r: &mut OwnedRooms, stream: u64, seq: u64| {
        let mut out = Vec::new();
        r.remote_frame("r", stream, seq, 9, frame(seq), &mut |o| out.push(o));
        delivered(&out).len()
    };
    assert_eq!(feed(&mut r, 0xabc, 57), 1, "adopts the sequencer's stream");
    assert_eq!((r.get("r").unwrap().epoch(), r.get("r").unwrap().seq()), ("0000000000000abc".into(), 57));
    assert_eq!(feed(&mut r, 0xabc, 58), 1);
    assert_eq!(feed(&mut r, 0xabc, 58), 0, "a repeat is dropped");
    assert_eq!(r.get("r").unwrap().history_len(), 2);
    assert_eq!(feed(&mut r, 0xabc, 61), 1, "delivered after a gap");
    assert_eq!(r.get("r").unwrap().history_len(), 1, "the history cannot bridge a gap");
    assert_eq!(r.take_counts(), (1, 1));
    assert_eq!(feed(&mut r, 0xdef, 1), 1, "a new sequencer's stream");
    assert_eq!(r.take_counts(), (0, 1));
    r.remote_frame("nope", 1, 1, 9, frame(1), &mut |_| panic!("no local room: nothing to do"));
}

#[test]
fn taking_over_a_stream_starts_a_new_epoch_and_remote_requesters_hear_back() {
    let mut r = rooms(1, 1000).with_cluster(1);
    join(&mut r, "r", "a", 0, 1);
    r.remote_frame("r", 0xabc, 5, 9, server::message("r", 5, "x", "t", 1), &mut |_| {});
    r.take_counts();
    let from = Requester::Remote(Box::new(Remote {
        node: 4,
        reply: Some(ReplyRef::Api { shard: 1, req: 77 }),
        relayed: false,
        receipt: None,
    }));
    let out = api_publish(&mut r, "r", "mine now", from);
    let room = r.get("r").unwrap();
    assert_ne!(room.epoch(), "0000000000000abc", "a new stream");
    assert_eq!(room.seq(), 6, "seq carries on");
    assert_eq!(r.take_counts(), (0, 1));
    assert!(matches!(
        to_bus(&out)[..],
        [ClusterOut::Frame { seq: 6, .. }, ClusterOut::Published { node: 4, req: 77, seq: Some(6), .. }]
    ));
    // A publish for a room with no local member creates a relay room on the sequencer.
    let out = api_publish(
        &mut r,
        "elsewhere",
        "x",
        Requester::Remote(Box::new(Remote { node: 4, reply: None, relayed: false, receipt: None })),
    );
    assert!(matches!(to_bus(&out)[..], [ClusterOut::Frame { seq: 1, .. }]));
    assert_eq!(r.get("elsewhere").unwrap().connections(), 0);
}

#[test]
fn remote_users_count_once_and_leave_when_their_node_dies() {
    let mut r = rooms(1, 1000).with_cluster(1);
    join(&mut r, "r", "a", 0, 1);
    let mut out = Vec::new();
    r.remote_users("r", 7, &["b".into(), "a".into()], 0, &mut |o| out.push(o));
    let events = delivered(&out);
    assert_eq!(events.len(), 1, "only b is news: {events:?}");
    assert_eq!(events[0].1, serde_json::json!({"type":"join","room":"r","user":"b"}));
    assert_eq!(r.get("r").unwrap().user_count(), 2);
    let mut out = Vec::new();
    r.node_gone(7, 0, &mut |o| out.push(o));
    assert_eq!(delivered(&out)[0].1, serde_json::json!({"type":"leave","room":"r","user":"b"}));
    assert_eq!(r.get("r").unwrap().user_count(), 1, "a is still here");
    // After a reconnect this node's users go to the room's keepers.
    r.set_nodes(Arc::from([1, 5]), 0, &mut |_| {});
    let mut out = Vec::new();
    r.resync(&mut |o| out.push(o));
    assert!(matches!(to_bus(&out)[..], [ClusterOut::Users { users, to: Some(5), .. }] if users.len() == 1));
}

#[test]
fn presence_events_stop_at_the_threshold() {
    let mut r = rooms(1, 2);
    join(&mut r, "r", "a", 0, 1);
    assert_eq!(delivered(&join(&mut r, "r", "b", 0, 2)).len(), 1);
    assert!(delivered(&join(&mut r, "r", "c", 0, 3)).is_empty(), "room has 2 users: no more events");
}

#[test]
fn presence_pages_are_sorted_and_chained() {
    let mut r = rooms(1, 1000);
    for (i, u) in ["dave", "alice", "carol", "bob"].iter().enumerate() {
        join(&mut r, "r", u, 0, i as u32);
    }
    let mut page = |after: Option<&str>| {
        let mut out = Vec::new();
        let req = PresenceReq {
            room: "r".into(),
            after: after.map(Into::into),
            limit: 3,
            private: false,
            from: Requester::Conn(origin(0, 9)),
        };
        r.presence(req, &mut |o| out.push(o));
        match out.pop() {
            Some(RoomOut::Shard(_, ToShard::ToConn { frame, .. })) => json(&frame),
            _ => panic!("no reply"),
        }
    };
    let p1 = page(None);
    assert_eq!(p1["users"], serde_json::json!(["alice", "bob", "carol"]));
    assert_eq!((p1["count"].as_u64(), p1["next"].as_str()), (Some(4), Some("carol")));
    let p2 = page(Some("carol"));
    assert_eq!(p2["users"], serde_json::json!(["dave"]));
    assert!(p2.get("next").is_none());
}

/// Join and leave of the N-th user are both announced, those of the (N+1)-th both not.
#[test]
fn presence_events_are_symmetric_at_the_threshold() {
    let mut r = rooms(2, 2);
    join(&mut r, "r", "a", 0, 1);
    let e = epoch(&r, "r");
    let b_joins = delivered(&join(&mut r, "r", "b", 0, 2));
    assert_eq!(b_joins.len(), 1, "the 2nd user's join: 2 users with b");
    assert!(delivered(&join(&mut r, "r", "c", 1, 3)).is_empty(), "the 3rd user's join: 3 users with c");
    let mut out = Vec::new();
    r.leave("r", "c", 1, e, 0, &mut |o| out.push(o));
    assert!(delivered(&out).is_empty(), "the 3rd user's leave: 3 users with c");
    let mut out = Vec::new();
    r.leave("r", "b", 0, e, 0, &mut |o| out.push(o));
    assert_eq!(delivered(&out)[0].1, serde_json::json!({"type":"leave","room":"r","user":"b"}), "2 users with b");
    // Zero turns events off altogether.
    let mut off = rooms(1, 0);
    join(&mut off, "r", "a", 0, 1);
    assert!(delivered(&join(&mut off, "r", "b", 0, 2)).is_empty());
    assert!((0..=3).all(|n| !announced(n + 1, 0)) && announced(2, 2) && !announced(3, 2));
}

/// Users reported by other nodes follow the same rule as local ones, one by one and in
/// snapshots (a snapshot's arrivals counted after it, its departures before it).
#[test]
fn remote_presence_follows_the_same_threshold() {
    let mut r = rooms(1, 2).with_cluster(1);
    join(&mut r, "r", "a", 0, 1);
    let mut out = Vec::new();
    r.remote_presence("r", 7, "b".into(), true, 0, &mut |o| out.push(o));
    assert_eq!(delivered(&out).len(), 1, "2nd user arriving elsewhere");
    let mut out = Vec::new();
    r.remote_presence("r", 7, "c".into(), true, 0, &mut |o| out.push(o));
    assert!(delivered(&out).is_empty(), "3rd user");
    let mut out = Vec::new();
    r.remote_presence("r", 7, "c".into(), false, 0, &mut |o| out.push(o));
    assert!(delivered(&out).is_empty(), "3rd user leaving");
    let mut out = Vec::new();
    r.remote_presence("r", 7, "b".into(), false, 0, &mut |o| out.push(o));
    assert_eq!(delivered(&out).len(), 1, "2nd user leaving");
    // A snapshot bringing the room to exactly 2 users is announced (it was not before
    // the rule was written once: snapshots compared the count after with `<`).
    let mut out = Vec::new();
    r.remote_users("r", 8, &["b".into()], 0, &mut |o| out.push(o));
    assert_eq!(delivered(&out).len(), 1);
    // A node dying takes b with it: the room had 2 users, b included.
    let mut out = Vec::new();
    r.node_gone(8, 0, &mut |o| out.push(o));
    assert_eq!(delivered(&out)[0].1, serde_json::json!({"type":"leave","room":"r","user":"b"}));
    // Three users from one snapshot: 4 in the room, no events either way.
    let mut out = Vec::new();
    r.remote_users("r", 9, &["x".into(), "y".into(), "z".into()], 0, &mut |o| out.push(o));
    assert!(delivered(&out).is_empty());
    let mut out = Vec::new();
    r.node_gone(9, 0, &mut |o| out.push(o));
    assert!(delivered(&out).is_empty());
}

#[test]
fn history_pages_and_the_ttl_keep_an_empty_room_until_it_expires() {
    let caps = Caps { messages: 3, bytes: 1 << 20 };
    let mut r = OwnedRooms::new(1, 1000, HistoryConfig { caps, memory: 1 << 20, ttl_ms: 100 });
    join(&mut r, "r", "a", 0, 1);
    for i in 0..5 {
        let from = Requester::Conn(origin(0, 1));
        api_publish(&mut r, "r", &format!("m{i}"), from);
    }
    assert_eq!(r.get("r").unwrap().history_len(), 3, "capped per room");
    let mut out = Vec::new();
    let req = HistoryReq { room: "r".into(), before: None, limit: 2, from: Requester::Conn(origin(0, 1)) };
    r.history(req, &mut |o| out.push(o));
    let Some(RoomOut::Shard(0, ToShard::ToConn { frame, .. })) = out.pop() else { panic!("a page") };
    let page = json(&frame);
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![5, 4], "newest first: {page}");
    // The last member leaves at t=1000: the room lingers with its history until t=1100.
    let e = epoch(&r, "r");
    r.leave("r", "a", 0, e, 1000, &mut |_| {});
    r.expire(1099, &mut |_| {});
    assert_eq!(r.get("r").unwrap().history_len(), 3);
    r.expire(1100, &mut |_| {});
    assert!(r.get("r").is_none());
    assert_eq!(r.history_usage(), (0, 0), "its history went back to the budget");
}

#[test]
fn the_history_budget_evicts_the_oldest_messages_across_rooms() {
    let caps = Caps { messages: 100, bytes: 1 << 20 };
    let one = server::message("a", 1, "srv", "x", 7).len();
    let mut r = OwnedRooms::new(1, 1000, HistoryConfig { caps, memory: one * 3, ttl_ms: 0 });
    join(&mut r, "a", "u", 0, 1);
    join(&mut r, "b", "u", 0, 2);
    for room in ["a", "b", "a", "b"] {
        api_publish(&mut r, room, "x", Requester::Conn(origin(0, 1)));
    }
    assert_eq!(r.history_usage().1, 3, "one message evicted");
    assert_eq!((r.get("a").unwrap().history_len(), r.get("b").unwrap().history_len()), (1, 2), "a's oldest went");
}

#[test]
fn remote_history_and_presence_requests_are_answered_or_counted() {
    let mut r = rooms(1, 1000).with_cluster(1);
    join(&mut r, "r", "a", 0, 1);
    let conn = Requester::Remote(Box::new(Remote {
        node: 4,
        reply: Some(ReplyRef::Conn { shard: 1, conn: 9, reference: "q".into() }),
        relayed: false,
        receipt: None,
    }));
    let mut out = Vec::new();
    r.presence(
        PresenceReq { room: "r".into(), after: None, limit: 10, private: false, from: conn.clone() },
        &mut |o| out.push(o),
    );
    assert!(matches!(to_bus(&out)[..], [ClusterOut::ToConn { node: 4, shard: 1, conn: 9, .. }]));
    let mut out = Vec::new();
    r.history(HistoryReq { room: "nope".into(), before: None, limit: 10, from: conn }, &mut |o| out.push(o));
    let [ClusterOut::ToConn { frame, .. }] = &to_bus(&out)[..] else { panic!("an error frame") };
    assert_eq!(json(frame)["code"], "no_such_room");
    assert_eq!(r.take_unanswered(), 0);
    // Nobody named to answer: counted, not dropped without a trace.
    let nobody = Requester::Remote(Box::new(Remote { node: 4, reply: None, relayed: false, receipt: None }));
    r.history(HistoryReq { room: "r".into(), before: None, limit: 10, from: nobody.clone() }, &mut |_| {});
    r.presence(PresenceReq { room: "r".into(), after: None, limit: 10, private: false, from: nobody }, &mut |_| {});
    assert_eq!(r.take_unanswered(), 2);
    assert_eq!(r.take_unanswered(), 0);
}

#[test]
fn deleting_drops_the_history_and_unsubscribes() {
    let mut r = rooms(2, 1000).with_cluster(1);
    run(&mut r, req("t", "owner", 0, 1, JoinKind::Create { password_hash: None }));
    api_publish(&mut r, "t", "x", Requester::Conn(origin(0, 1)));
    assert_eq!(r.history_usage().1, 1);
    let mut out = Vec::new();
    r.delete(DeleteReq { room: "t".into(), user: "owner".into(), origin: origin(0, 1) }, &mut |o| out.push(o));
    assert!(matches!(to_bus(&out)[..], [ClusterOut::Unsubscribe(_)]));
    assert_eq!(r.history_usage(), (0, 0));
    assert!(r.is_empty());
}

#[test]
fn broadcasts_go_to_every_shard_once_with_their_own_sequence() {
    let mut r = rooms(3, 1000);
    for expected in 1..=2u64 {
        let mut out = Vec::new();
        let msg = Publish::text("".into(), "srv".into(), "all", Requester::Api(ReplyTo { shard: 2, req: 5 }));
        r.broadcast(msg, 1, &mut |o| out.push(o));
        let shards: Vec<usize> = out
            .iter()
            .filter_map(|o| match o {
                RoomOut::Shard(s, ToShard::DeliverAll { .. }) => Some(*s),
                _ => None,
            })
            .collect();
        assert_eq!(shards, vec![0, 1, 2]);
        let Some(RoomOut::Shard(2, ToShard::Reply { req: 5, reply: Reply::Published { seq, .. } })) = out.last() else {
            panic!("the API caller hears back")
        };
        assert_eq!(*seq, Some(expected));
    }
}

/// A cluster of room cores joined by a perfect bus: each node's cluster output is
/// delivered to the nodes it addresses, the way the bridge does.
struct Sim {
    ids: Vec<u64>,
    nodes: Vec<OwnedRooms>,
    /// Join/leave events delivered to local members, per node: (node, event JSON).
    events: Vec<(u64, serde_json::Value)>,
    /// Webhook events emitted, per node.
    hooks: Vec<(u64, super::Hook)>,
}

impl Sim {
    fn new(n: u64) -> Sim {
        let ids: Vec<u64> = (1..=n).map(|i| i * 1_000_003).collect();
        let nodes = ids.iter().map(|&id| rooms(1, 1000).with_cluster(id).with_hooks(true)).collect();
        let mut sim = Sim { ids, nodes, events: Vec::new(), hooks: Vec::new() };
        let live: Arc<[u64]> = sim.ids.clone().into();
        for i in 0..sim.nodes.len() {
            let mut out = Vec::new();
            sim.nodes[i].set_nodes(live.clone(), 0, &mut |o| out.push(o));
            sim.route(i, out);
        }
        sim
    }

    fn at(&self, id: u64) -> usize {
        self.ids.iter().position(|&n| n == id).unwrap()
    }

    /// Delivers node `from`'s outputs (and whatever they cause) until the bus is quiet.
    fn route(&mut self, from: usize, out: Vec<RoomOut>) {
        let mut queue: std::collections::VecDeque<(usize, RoomOut)> = out.into_iter().map(|o| (from, o)).collect();
        while let Some((i, o)) = queue.pop_front() {
            let me = self.ids[i];
            let mut next = Vec::new();
            match o {
                RoomOut::Shard(_, ToShard::Deliver { frame, .. }) => {
                    let v = json(&frame);
                    if v["type"] == "join" || v["type"] == "leave" {
                        self.events.push((me, v));
                    }
                }
                RoomOut::Shard(..) | RoomOut::Log(_) => {}
                RoomOut::Hook(h) => self.hooks.push((me, h)),
                RoomOut::Cluster(c) => match c {
                    ClusterOut::Presence { room, user, present, to } => {
                        let j = self.at(to);
                        self.nodes[j].remote_presence(&room, me, user, present, 0, &mut |o| next.push((j, o)));
                    }
                    ClusterOut::Users { room, users, to: Some(to) } => {
                        let j = self.at(to);
                        self.nodes[j].remote_users(&room, me, &users, 0, &mut |o| next.push((j, o)));
                    }
                    ClusterOut::Event { room, frame } => {
                        for j in (0..self.nodes.len()).filter(|&j| j != i) {
                            self.nodes[j].remote_event(&room, frame.clone(), &mut |o| next.push((j, o)));
                        }
                    }
                    ClusterOut::Counts(counts) => {
                        for j in (0..self.nodes.len()).filter(|&j| j != i) {
                            for (room, count) in &counts {
                                self.nodes[j].remote_count(room, *count);
                            }
                        }
                    }
                    ClusterOut::PresenceQuery { to, query } => {
                        let j = self.at(to);
                        self.nodes[j].presence(*query, &mut |o| next.push((j, o)));
                    }
                    _ => {}
                },
            }
            queue.extend(next);
        }
    }

    fn join(&mut self, node: usize, room: &str, user: &str, n: u32) {
        let out = join(&mut self.nodes[node], room, user, 0, n);
        self.route(node, out);
    }

    /// Node `node`'s shard 0 has its first connection of `user` (`here`) or its last one
    /// closed.
    fn user(&mut self, node: usize, user: &str, here: bool) {
        let mut out = Vec::new();
        self.nodes[node].user_here(&Arc::from(user), 0, here, 0, &mut |o| out.push(o));
        self.route(node, out);
    }

    fn leave(&mut self, node: usize, room: &str, user: &str) {
        let e = epoch(&self.nodes[node], room);
        let mut out = Vec::new();
        self.nodes[node].leave(room, user, 0, e, 0, &mut |o| out.push(o));
        self.route(node, out);
    }

    fn report(&mut self) {
        for i in 0..self.nodes.len() {
            let mut out = Vec::new();
            self.nodes[i].report_counts(&mut |o| out.push(o));
            self.route(i, out);
        }
    }

    /// Every user entry held anywhere in the cluster for `room`.
    fn entries(&self, room: &str) -> usize {
        self.nodes.iter().filter_map(|r| r.get(room)).map(|r| r.users().map_or(0, |u| u.count() as usize)).sum()
    }

    fn holder(&self, room: &str) -> usize {
        self.at(placement::keepers(room, &self.ids)[0].unwrap())
    }
}

/// Issue 14: with every node keeping every user of a room, a room of a million users over
/// 56 nodes held 56 million entries (7.6 KB per connection, out of memory). Now only the
/// room's two keepers hold the list: at most twice the users plus each node's own.
#[test]
fn regression_cluster_presence_costs_o_users_not_o_nodes_times_users() {
    let mut sim = Sim::new(12);
    let users = 600;
    for u in 0..users {
        sim.join(u % 12, "big", &format!("u{u:04}"), u as u32);
    }
    let entries = sim.entries("big");
    assert!(entries <= 3 * users, "{entries} user entries for {users} users over 12 nodes");
    let holder = sim.holder("big");
    assert_eq!(sim.nodes[holder].get("big").unwrap().user_count(), users as u32, "the holder's count is exact");
    sim.report();
    for r in &sim.nodes {
        assert_eq!(r.get("big").unwrap().user_count(), users as u32, "every node shows the holder's count");
    }
}

/// Issue 14: a holder reported each changed room's count in its own bus message to every
/// node with members: at 10,000 rooms of ~105 users over 58 nodes that was rooms × nodes
/// messages per tick, and the cluster stopped admitting joins at a third of a million.
/// Now one shard's report carries every room that changed, however many.
#[test]
fn regression_presence_counts_cost_one_report_per_tick_not_one_per_room() {
    let mut sim = Sim::new(3);
    let rooms: Vec<String> = (0..300).map(|i| format!("room{i:03}")).collect();
    for (i, room) in rooms.iter().enumerate() {
        for n in 0..3 {
            sim.join(n, room, &format!("u{i}-{n}"), (i * 3 + n) as u32);
        }
    }
    for i in 0..sim.nodes.len() {
        let mut out = Vec::new();
        sim.nodes[i].report_counts(&mut |o| out.push(o));
        let reports: Vec<usize> = to_bus(&out)
            .iter()
            .filter_map(|c| match c {
                ClusterOut::Counts(counts) => Some(counts.len()),
                _ => None,
            })
            .collect();
        let held = rooms.iter().filter(|r| sim.holder(r) == i).count();
        assert!(held > 0, "300 rooms over 3 nodes: every node holds some");
        assert_eq!(reports, vec![held], "node {i}: one report with every room it holds");
        assert_eq!(to_bus(&out).len(), 1, "and nothing else: {:?}", to_bus(&out));
        sim.route(i, out);
    }
    for r in &sim.nodes {
        for room in &rooms {
            assert_eq!(r.get(room).unwrap().user_count(), 3, "{room}: every node shows the holder's count");
        }
    }
    // Nothing changed since: the next tick reports nothing.
    for i in 0..sim.nodes.len() {
        let mut out = Vec::new();
        sim.nodes[i].report_counts(&mut |o| out.push(o));
        assert!(out.is_empty(), "node {i} reported an unchanged count");
    }
}

#[test]
fn the_holder_alone_announces_and_every_member_hears_each_event_once() {
    let mut sim = Sim::new(5);
    for (i, u) in ["ann", "ben", "cat", "dan", "eve"].iter().enumerate() {
        sim.join(i, "r", u, i as u32);
    }
    // Each join reaches every node that already had members, once. (The joiner's own
    // node hears it too when another node holds the room: the event comes back on the
    // room subject after the joiner became a member there; docs/CLUSTER.md.)
    for (k, u) in ["ann", "ben", "cat", "dan", "eve"].iter().enumerate() {
        let heard: Vec<u64> = sim.events.iter().filter(|(_, v)| v["user"] == *u).map(|(n, _)| *n).collect();
        let mut unique = heard.clone();
        unique.dedup();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), heard.len(), "{u} announced twice to a node: {heard:?}");
        assert!(sim.ids[..k].iter().all(|n| heard.contains(n)), "{u}: {heard:?}");
        assert!(heard.iter().all(|n| sim.ids[..=k].contains(n)), "{u}: only nodes with members: {heard:?}");
    }
    // A second connection of ann elsewhere is no news; her last leave is.
    sim.events.clear();
    sim.join(3, "r", "ann", 10);
    assert!(sim.events.is_empty(), "{:?}", sim.events);
    sim.leave(0, "r", "ann");
    assert!(sim.events.is_empty(), "ann is still on node 3: {:?}", sim.events);
    sim.leave(3, "r", "ann");
    let leaves: Vec<u64> = sim.events.iter().filter(|(_, v)| v["user"] == "ann").map(|(n, _)| *n).collect();
    assert_eq!(leaves.len(), 4, "each node with members hears it once: {:?}", sim.events);
}

/// Webhooks: each presence change is emitted once in the cluster, by the room's holder,
/// whichever node the user connected to.
#[test]
fn webhook_events_are_emitted_once_cluster_wide_by_the_holder() {
    use super::HookKind::*;
    let mut sim = Sim::new(4);
    let holder = sim.ids[sim.holder("r")];
    sim.join(0, "r", "ann", 1);
    sim.join(1, "r", "ben", 2);
    sim.join(2, "r", "ann", 3); // ann's second connection: no news
    sim.leave(0, "r", "ann");
    sim.leave(2, "r", "ann");
    sim.leave(1, "r", "ben");
    let got: Vec<(super::HookKind, Option<String>)> = sim
        .hooks
        .iter()
        .filter(|(_, h)| &*h.room == "r")
        .map(|(_, h)| (h.kind, h.user.as_deref().map(str::to_owned)))
        .collect();
    let u = |s: &str| Some(s.to_owned());
    assert_eq!(
        got,
        vec![
            (RoomOccupied, None),
            (MemberJoined, u("ann")),
            (MemberJoined, u("ben")),
            (MemberLeft, u("ann")),
            (MemberLeft, u("ben")),
            (RoomVacated, None),
        ]
    );
    assert!(sim.hooks.iter().filter(|(_, h)| &*h.room == "r").all(|(n, _)| *n == holder), "only the holder emits");
}

#[test]
fn a_personal_room_is_made_by_its_first_use_and_reaches_only_its_users_shards() {
    let mut r = rooms(3, 1000);
    let api = || Requester::Api(ReplyTo { shard: 0, req: 1 });
    let ann: Arc<str> = Arc::from("ann");
    let here = |r: &mut OwnedRooms, shard: usize, on: bool| r.user_here(&ann, shard, on, 0, &mut |_| {});
    here(&mut r, 0, true);
    here(&mut r, 2, true);
    assert!(r.get("@user:ann").is_none(), "no room until something is sent to it");
    assert_eq!(r.counts(), (0, 1), "but it counts: its user is connected");
    assert_eq!(api_reply(&api_publish(&mut r, "@user:ann", "one", api())), (Some(1), vec![0, 2]));
    assert_eq!(r.get("@user:ann").map(|room| room.history_len()), Some(1), "made, and it keeps history");
    assert_eq!(r.counts(), (0, 1));
    // A user who never connected: nobody reached, nothing made.
    assert_eq!(api_reply(&api_publish(&mut r, "@user:bob", "lost", api())), (None, vec![]));
    assert!(r.get("@user:bob").is_none());
    // The room follows the user's shards.
    here(&mut r, 0, false);
    assert_eq!(api_reply(&api_publish(&mut r, "@user:ann", "two", api())), (Some(2), vec![2]));
    here(&mut r, 1, true);
    assert_eq!(api_reply(&api_publish(&mut r, "@user:ann", "three", api())), (Some(3), vec![1, 2]));
    // Gone from every shard: released (no TTL here, so dropped at once).
    here(&mut r, 1, false);
    here(&mut r, 2, false);
    assert!(r.get("@user:ann").is_none());
    assert_eq!(r.counts(), (0, 0));
    // A history request makes the room of a connected user too (an empty page, not an
    // error), and nothing for anyone else.
    here(&mut r, 1, true);
    let mut out = Vec::new();
    let req = |room: &str| HistoryReq { room: room.into(), before: None, limit: 5, from: api() };
    r.history(req("@user:ann"), &mut |o| out.push(o));
    r.history(req("@user:bob"), &mut |o| out.push(o));
    let pages: Vec<bool> = out
        .iter()
        .filter_map(|o| match o {
            RoomOut::Shard(_, ToShard::Reply { reply: Reply::History(page), .. }) => Some(page.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(pages, vec![true, false]);
}

#[test]
fn in_a_cluster_a_personal_room_is_made_by_its_first_frame_and_a_restored_one_subscribed_by_its_users_first_connection()
{
    let subscribes =
        |out: &[RoomOut]| out.iter().filter(|o| matches!(o, RoomOut::Cluster(ClusterOut::Subscribe(_)))).count();
    let delivered_to = |out: &[RoomOut]| {
        let mut shards: Vec<usize> = delivered(out).into_iter().map(|(shard, _)| shard).collect();
        shards.sort_unstable();
        shards
    };
    let frame = |seq: u64| server::message("@user:x", seq, "x", "t", 1);
    let mut r = rooms(2, 1000).with_cluster(5).with_journal();
    let restored = crate::journal::RestoredRoom {
        name: "@user:bob".into(),
        epoch: 77,
        seq: 1,
        frames: [(1, bytes::Bytes::from_static(b"frame 1"))].into_iter().collect(),
        bytes: 7,
        ..Default::default()
    };
    r.restore(vec![restored], 0);
    assert!(!r.get("@user:bob").unwrap().subscribed, "restored, nobody connected yet");
    let mut out = Vec::new();
    for user in ["ann", "bob"] {
        r.user_here(&Arc::from(user), 1, true, 0, &mut |o| out.push(o));
        r.user_here(&Arc::from(user), 0, true, 0, &mut |o| out.push(o));
    }
    assert_eq!(subscribes(&out), 1, "bob's restored room, once, with his first connection");
    assert!(r.get("@user:ann").is_none(), "ann's room waits for its first frame");
    let bob = r.get("@user:bob").unwrap();
    assert!(bob.subscribed && bob.connections() == 2, "bob's room is kept, on both shards");
    // The bus brings a frame for ann (sequenced on node 9): the room is made, takes the
    // stream, fans out to both shards and keeps the frame.
    let mut out = Vec::new();
    r.remote_frame("@user:ann", 5, 3, 9, frame(3), &mut |o| out.push(o));
    assert_eq!(delivered_to(&out), vec![0, 1]);
    let ann = r.get("@user:ann").unwrap();
    assert!(ann.subscribed && ann.connections() == 2 && ann.seq() == 3 && ann.history_len() == 1);
    // A volatile frame makes the room too; a frame for a user not connected here makes
    // nothing and reaches nobody.
    r.user_here(&Arc::from("cat"), 1, true, 0, &mut |_| {});
    let mut out = Vec::new();
    r.remote_volatile("@user:cat", frame(1), None, &mut |o| out.push(o));
    r.remote_frame("@user:dan", 5, 1, 9, frame(1), &mut |o| out.push(o));
    r.remote_volatile("@user:dan", frame(1), None, &mut |o| out.push(o));
    assert_eq!(delivered_to(&out), vec![1]);
    assert!(r.get("@user:cat").is_some_and(|room| room.seq() == 0 && room.connections() == 1));
    assert!(r.get("@user:dan").is_none());
    r.remote_frame("@user:bob", 77, 2, 9, frame(2), &mut |_| {});
    assert_eq!(r.get("@user:bob").unwrap().seq(), 2, "the restored stream goes on");
}

#[test]
fn single_node_webhooks_include_users_online_and_nothing_without_hooks() {
    use super::HookKind::*;
    let mut r = rooms(2, 1000).with_hooks(true);
    let mut kinds = Vec::new();
    let mut sink = |o: RoomOut| {
        if let RoomOut::Hook(h) = o {
            kinds.push((h.kind, h.room.to_string()));
        }
    };
    let ann: Arc<str> = Arc::from("ann");
    // Both shards have connections of ann; a repeat changes nothing.
    for (shard, here) in [(0, true), (1, true), (1, true), (0, false), (0, false), (1, false)] {
        r.user_here(&ann, shard, here, 0, &mut sink);
    }
    assert_eq!(kinds, vec![(UserOnline, "@user:ann".to_owned()), (UserOffline, "@user:ann".to_owned())]);
    let mut off = rooms(1, 1000);
    let out = join(&mut off, "r", "ann", 0, 1);
    assert!(!out.iter().any(|o| matches!(o, RoomOut::Hook(_))), "no hooks unless turned on");
}

#[test]
fn when_the_holder_dies_the_replica_takes_over_with_nothing_missing() {
    let mut sim = Sim::new(6);
    let [holder, replica] = placement::keepers("r", &sim.ids).map(Option::unwrap);
    let (h, rep) = (sim.at(holder), sim.at(replica));
    let others: Vec<usize> = (0..6).filter(|&i| i != h && i != rep).collect();
    sim.join(h, "r", "on-holder", 1);
    sim.join(rep, "r", "on-replica", 2);
    sim.join(others[0], "r", "alpha", 3);
    sim.join(others[1], "r", "beta", 4);
    sim.events.clear();
    // Every surviving node learns of the death and recomputes the keepers.
    for i in (0..6).filter(|&i| i != h) {
        let mut out = Vec::new();
        sim.nodes[i].node_gone(holder, 0, &mut |o| out.push(o));
        sim.route(i, out);
    }
    let leaves: Vec<&serde_json::Value> = sim.events.iter().map(|(_, v)| v).collect();
    assert!(
        !leaves.is_empty() && leaves.iter().all(|v| v["type"] == "leave" && v["user"] == "on-holder"),
        "{leaves:?}"
    );
    assert_eq!(sim.nodes[rep].get("r").unwrap().user_count(), 3, "the replica held everyone");
    // A presence page asked on any node is answered by the new holder.
    let mut out = Vec::new();
    let req = PresenceReq {
        room: "r".into(),
        after: None,
        limit: 10,
        private: false,
        from: Requester::Api(ReplyTo { shard: 0, req: 9 }),
    };
    sim.nodes[others[1]].presence(req, &mut |o| out.push(o));
    let q = to_bus(&out);
    assert!(matches!(q[..], [ClusterOut::PresenceQuery { to, .. }] if *to == replica), "{q:?}");
    let Some(RoomOut::Cluster(ClusterOut::PresenceQuery { query, .. })) = out.pop() else { unreachable!() };
    let mut answer = Vec::new();
    sim.nodes[rep].presence(*query, &mut |o| answer.push(o));
    let users = match &to_bus(&answer)[..] {
        [ClusterOut::Page { req: 9, page: Some(p), .. }] => p.users.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(users, vec![Arc::from("alpha"), Arc::from("beta"), Arc::from("on-replica")]);
}

#[test]
fn a_node_joining_takes_its_rooms_without_announcing_everyone_again() {
    let mut sim = Sim::new(3);
    for u in 0..30 {
        sim.join(u % 3, &format!("room{}", u % 7), &format!("u{u}"), u as u32);
    }
    sim.events.clear();
    // A fourth node appears: it becomes a keeper of some rooms and gets snapshots.
    let newcomer = 77_777_777u64;
    sim.ids.push(newcomer);
    sim.nodes.push(rooms(1, 1000).with_cluster(newcomer));
    let live: Arc<[u64]> = sim.ids.clone().into();
    for i in 0..sim.nodes.len() {
        let mut out = Vec::new();
        sim.nodes[i].set_nodes(live.clone(), 0, &mut |o| out.push(o));
        sim.route(i, out);
    }
    assert!(sim.events.is_empty(), "a takeover announces nobody: {:?}", sim.events);
    for room in (0..7).map(|r| format!("room{r}")) {
        let holder = sim.holder(&room);
        let count = sim.nodes[holder].get(&room).map_or(0, |r| r.user_count());
        let expected = (0..30).filter(|u| u % 7 == room[4..].parse::<usize>().unwrap()).count() as u32;
        assert_eq!(count, expected, "{room}: the new placement's holder has every user");
    }
}

/// Issue 14: a holder that lags behind a join storm announces more joins than the
/// threshold allows; a node that knows the room is larger (its own users, or the holder's
/// later count) does not hand those stale events to its members.
#[test]
fn regression_stale_events_of_a_lagging_holder_are_dropped_where_the_room_is_known_large() {
    let mut r = rooms(1, 3).with_cluster(1);
    r.set_nodes(Arc::from([1, 2]), 0, &mut |_| {});
    let frame = server::presence_event(true, "r", "someone");
    for u in ["a", "b"] {
        join(&mut r, "r", u, 0, 1);
    }
    let mut out = Vec::new();
    r.remote_event("r", frame.clone(), &mut |o| out.push(o));
    assert_eq!(delivered(&out).len(), 1, "2 users here, threshold 3: delivered");
    r.remote_count("r", 4);
    let mut out = Vec::new();
    r.remote_event("r", frame.clone(), &mut |o| out.push(o));
    if r.holds("r") {
        // This node holds the room itself: it ignores counts from others.
        assert_eq!(delivered(&out).len(), 1);
    } else {
        assert!(delivered(&out).is_empty(), "the holder's own count says 4 > 3");
    }
    for u in ["c", "d"] {
        join(&mut r, "r", u, 0, 1);
    }
    let mut out = Vec::new();
    r.remote_event("r", frame, &mut |o| out.push(o));
    assert!(delivered(&out).is_empty(), "4 users on this node alone > 3");
}

fn publish_with(r: &mut OwnedRooms, room: &str, extra: super::request::Extra, from: Requester) -> Vec<RoomOut> {
    let mut out = Vec::new();
    let msg = Publish { room: room.into(), user: "u".into(), text: None, extra, from };
    r.publish(msg, 9, &mut |o| out.push(o));
    out
}

fn api_reply(out: &[RoomOut]) -> (Option<u64>, Vec<u16>) {
    match out.last() {
        Some(RoomOut::Shard(_, ToShard::Reply { reply: Reply::Published { seq, shards }, .. })) => {
            (*seq, shards.clone())
        }
        _ => panic!("expected an API reply last"),
    }
}

#[test]
fn volatile_messages_take_no_seq_and_stay_out_of_history() {
    let mut r = rooms(2, 1000);
    join(&mut r, "r", "a", 0, 1);
    api_publish(&mut r, "r", "one", Requester::Api(ReplyTo { shard: 0, req: 1 }));
    let extra = super::request::Extra {
        data: Some(Arc::from(&b"{\"typing\":true}"[..])),
        volatile: true,
        ..Default::default()
    };
    let out = publish_with(&mut r, "r", extra, Requester::Api(ReplyTo { shard: 0, req: 2 }));
    let d = delivered(&out);
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].1,
        serde_json::json!({"type":"message","room":"r","volatile":true,"user":"u","data":{"typing":true},"ts":9})
    );
    assert_eq!(api_reply(&out), (Some(0), vec![0]), "handed out, no position");
    let room = r.get("r").unwrap();
    assert_eq!((room.seq(), room.history_len()), (1, 1), "neither sequenced nor stored");
}

#[test]
fn skip_names_the_senders_connection_on_its_shard_only() {
    let mut r = rooms(2, 1000);
    join(&mut r, "r", "a", 0, 1);
    join(&mut r, "r", "b", 1, 2);
    let sender = super::request::Sender { node: 0, shard: 1, conn: ConnId::for_test(2).as_u64() };
    let extra = super::request::Extra { data: Some(Arc::from(&b"1"[..])), skip: Some(sender), ..Default::default() };
    let out = publish_with(&mut r, "r", extra, Requester::Api(ReplyTo { shard: 0, req: 1 }));
    let skips: Vec<(usize, Option<ConnId>)> = out
        .iter()
        .filter_map(|o| match o {
            RoomOut::Shard(s, ToShard::Deliver { skip, .. }) => Some((*s, *skip)),
            _ => None,
        })
        .collect();
    assert_eq!(skips, [(0, None), (1, Some(ConnId::for_test(2)))]);
}

#[test]
fn an_idempotency_key_answers_the_first_outcome_and_sequences_once() {
    let mut r = rooms(2, 1000);
    join(&mut r, "r", "a", 0, 1);
    let keyed = || super::request::Extra { idempotency_key: Some(Arc::from("k")), ..Default::default() };
    let first = publish_with(&mut r, "r", keyed(), Requester::Api(ReplyTo { shard: 0, req: 1 }));
    let again = publish_with(&mut r, "r", keyed(), Requester::Api(ReplyTo { shard: 1, req: 2 }));
    assert_eq!(api_reply(&first), (Some(1), vec![0]));
    assert_eq!(api_reply(&again), (Some(1), vec![0]));
    assert!(delivered(&again).is_empty(), "not delivered twice");
    assert_eq!(r.get("r").unwrap().seq(), 1);
    assert_eq!(r.take_idempotency_counts(), (1, 0, 1));
}

#[test]
fn removing_history_starts_a_new_stream_and_rooms_page_by_name() {
    let mut r = rooms(2, 1000);
    for room in ["b", "a", "c", "x-1"] {
        join(&mut r, room, "u", 0, 1);
    }
    api_publish(&mut r, "a", "one", Requester::Api(ReplyTo { shard: 0, req: 1 }));
    let before = r.get("a").unwrap().epoch();
    let after = r.remove_history("a").unwrap();
    assert_ne!(before, after);
    assert_eq!((r.get("a").unwrap().history_len(), r.get("a").unwrap().seq()), (0, 1));
    assert_eq!(r.remove_history("nope"), None);
    let names = |v: Vec<crate::metrics::RoomSummary>| v.into_iter().map(|s| s.room).collect::<Vec<_>>();
    assert_eq!(names(r.rooms_page("", None, 2)), ["a", "b"]);
    assert_eq!(names(r.rooms_page("", Some("b"), 10)), ["c", "x-1"]);
    assert_eq!(names(r.rooms_page("x-", None, 10)), ["x-1"]);
}

fn logged(out: &[RoomOut]) -> Vec<crate::journal::Record> {
    out.iter()
        .filter_map(|o| match o {
            RoomOut::Log(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn without_a_journal_nothing_is_logged() {
    let mut r = rooms(1, 1000);
    let mut out = join(&mut r, "r", "u", 0, 1);
    out.extend(api_publish(&mut r, "r", "one", Requester::Api(ReplyTo { shard: 0, req: 1 })));
    assert!(logged(&out).is_empty());
}

#[test]
fn the_journal_gets_sequenced_frames_tombstones_and_drops_never_volatile_ones() {
    use crate::journal::Record;
    let mut r = rooms(1, 1000).with_journal();
    let hash: Arc<str> = Arc::from("$argon2id$stand-in");
    let out = run(&mut r, req("r", "owner", 0, 1, JoinKind::Create { password_hash: Some(hash.clone()) }));
    assert!(
        matches!(&logged(&out)[..], [Record::Meta { creator: Some(c), password: Some(p), .. }] if &**c == "owner" && *p == hash)
    );
    let out = api_publish(&mut r, "r", "one", Requester::Api(ReplyTo { shard: 0, req: 1 }));
    let stream = r.get("r").unwrap().stream;
    match &logged(&out)[..] {
        [Record::Frame { room, epoch, seq: 1, frame, .. }] => {
            assert_eq!((&**room, *epoch), ("r", stream));
            assert_eq!(json(frame)["text"], "one");
        }
        other => panic!("{other:?}"),
    }
    let extra = super::request::Extra { volatile: true, ..Default::default() };
    let out = publish_with(&mut r, "r", extra, Requester::Api(ReplyTo { shard: 0, req: 2 }));
    assert!(logged(&out).is_empty(), "volatile messages are never logged");
    let mut out = Vec::new();
    let epoch = r.remove_history_logged("r", 7, &mut |o| out.push(o)).unwrap();
    let stream = r.get("r").unwrap().stream;
    assert_eq!(format!("{stream:016x}"), epoch);
    assert_eq!(logged(&out), vec![Record::Reset { room: "r".into(), epoch: stream, seq: 1, ts: 7 }]);
    let mut out = Vec::new();
    let e = r.get("r").unwrap().epoch as u32;
    r.leave("r", "owner", 0, e, 0, &mut |o| out.push(o));
    assert_eq!(logged(&out), vec![Record::Drop { room: "r".into() }], "ttl 0: the room goes at once");
}

#[test]
fn a_checkpoint_restores_the_same_streams_and_history() {
    let mut r = rooms(2, 1000).with_journal();
    join(&mut r, "a", "u", 0, 1);
    join(&mut r, "b", "u", 1, 2);
    for i in 0..5 {
        api_publish(&mut r, "a", &format!("a{i}"), Requester::Api(ReplyTo { shard: 0, req: 1 }));
    }
    api_publish(&mut r, "b", "b0", Requester::Api(ReplyTo { shard: 0, req: 1 }));
    r.remove_history("b");
    api_publish(&mut r, "b", "b1", Requester::Api(ReplyTo { shard: 0, req: 1 }));
    let mut rebuild = crate::journal::Rebuild::new(100, 1 << 20);
    r.checkpoint(1, &mut |rec| rebuild.apply(rec));
    let mut restored = rooms(2, 1000).with_journal();
    restored.restore(rebuild.finish(), 1);
    for name in ["a", "b"] {
        let (old, new) = (r.get(name).unwrap(), restored.get(name).unwrap());
        assert_eq!((old.epoch(), old.seq(), old.history_len()), (new.epoch(), new.seq(), new.history_len()), "{name}");
        let since = request::Since { seq: 0, epoch: Some(old.epoch().into()) };
        let (a, b) = (old.recover(Some(&since)), new.recover(Some(&since)));
        assert_eq!(a, b, "{name}");
    }
    // "a" recovers everything from seq 0; "b" lost what came before its removal.
    let since = request::Since { seq: 0, epoch: Some(restored.get("a").unwrap().epoch().into()) };
    assert_eq!(restored.get("a").unwrap().recover(Some(&since)).1, Some(true));
    let since = request::Since { seq: 0, epoch: Some(restored.get("b").unwrap().epoch().into()) };
    assert_eq!(restored.get("b").unwrap().recover(Some(&since)).1, Some(false));
    // Restored rooms linger empty (at least a minute, even with a history TTL of 0).
    let mut out = Vec::new();
    restored.expire(1 + 59_000, &mut |o| out.push(o));
    assert!(restored.get("a").is_some());
    restored.expire(1 + RELAY_LINGER_MS, &mut |o| out.push(o));
    assert!(restored.get("a").is_none());
}

#[test]
fn a_restored_room_in_a_cluster_follows_on_or_starts_afresh_never_collides() {
    let frame = |seq: u64| bytes::Bytes::from(format!("frame {seq}"));
    let restored = || crate::journal::RestoredRoom {
        name: "r".into(),
        epoch: 77,
        seq: 2,
        frames: [(1, frame(1)), (2, frame(2))].into_iter().collect(),
        bytes: 14,
        ..Default::default()
    };
    // Frames reach a node only for rooms it subscribed to (a local member came back):
    // the room core ignores the others (`--cluster-room-buckets` delivers them too).
    let subscribe = |r: &mut OwnedRooms| r.rooms.get_mut("r").unwrap().subscribed = true;
    // The sequencer's next frame follows on: adopted, history kept.
    let mut r = rooms(1, 1000).with_cluster(5).with_journal();
    r.restore(vec![restored()], 0);
    subscribe(&mut r);
    r.remote_frame("r", 77, 3, 9, frame(3), &mut |_| {});
    assert_eq!((r.get("r").unwrap().seq(), r.get("r").unwrap().history_len()), (3, 3));
    // The stream went on while this node was down: the history restarts after the hole.
    let mut r = rooms(1, 1000).with_cluster(5).with_journal();
    r.restore(vec![restored()], 0);
    subscribe(&mut r);
    r.remote_frame("r", 77, 9, 9, frame(9), &mut |_| {});
    assert_eq!((r.get("r").unwrap().seq(), r.get("r").unwrap().history_len()), (9, 1));
    // Sequencing here: a new epoch, not a continuation that could collide.
    let mut r = rooms(1, 1000).with_cluster(5).with_journal();
    r.restore(vec![restored()], 0);
    api_publish(&mut r, "r", "x", Requester::Api(ReplyTo { shard: 0, req: 1 }));
    assert_ne!(r.get("r").unwrap().stream, 77);
}

/// The `user_*` hooks each node of `sim` emitted for `user`, in order.
fn user_hooks(sim: &Sim, user: &str) -> Vec<(u64, HookKind)> {
    let room = format!("@user:{user}");
    sim.hooks.iter().filter(|(_, h)| *h.room == *room).map(|(n, h)| (*n, h.kind)).collect()
}

fn sim_with_user_hooks(n: u64) -> Sim {
    let mut sim = Sim::new(n);
    sim.nodes = std::mem::take(&mut sim.nodes).into_iter().map(|r| r.with_user_hooks(true)).collect();
    sim
}

#[test]
fn a_user_on_two_nodes_is_online_and_offline_once_cluster_wide() {
    let mut sim = sim_with_user_hooks(4);
    let room = "@user:ann";
    let holder = sim.holder(room);
    // Connections on two nodes that are not the holder, then one on the holder.
    let others: Vec<usize> = (0..4).filter(|&i| i != holder).collect();
    let (a, b) = (others[0], others[1]);
    sim.user(a, "ann", true);
    sim.user(a, "ann", true);
    sim.user(b, "ann", true);
    sim.user(holder, "ann", true);
    let h = sim.ids[holder];
    assert_eq!(user_hooks(&sim, "ann"), vec![(h, HookKind::UserOnline)], "one user_online, by the holder");
    sim.user(holder, "ann", false);
    sim.user(a, "ann", false);
    sim.user(a, "ann", false);
    assert_eq!(user_hooks(&sim, "ann").len(), 1, "still connected on another node: no event");
    sim.user(b, "ann", false);
    assert_eq!(user_hooks(&sim, "ann"), vec![(h, HookKind::UserOnline), (h, HookKind::UserOffline)]);
    assert!(sim.nodes.iter().all(|r| r.online.is_empty()), "nothing is kept for a user who is gone");
    // Without the user hooks, nodes send nothing about personal rooms.
    let mut quiet = Sim::new(2);
    let mut out = Vec::new();
    quiet.nodes[0].user_here(&Arc::from("bob"), 0, true, 0, &mut |o| out.push(o));
    assert!(!out.iter().any(|o| matches!(o, RoomOut::Cluster(ClusterOut::Presence { .. }))));
}

#[test]
fn when_a_users_holder_dies_the_replica_decides_user_offline() {
    let mut sim = sim_with_user_hooks(4);
    let room = "@user:cy";
    let [holder, replica] = placement::keepers(room, &sim.ids).map(Option::unwrap);
    let (h, rep) = (sim.at(holder), sim.at(replica));
    let other = (0..4).find(|&i| i != h && i != rep).unwrap();
    let kill = |sim: &mut Sim, dead: u64| {
        let live: Vec<usize> = (0..sim.nodes.len()).filter(|&i| sim.ids[i] != dead).collect();
        for i in live {
            let mut out = Vec::new();
            sim.nodes[i].node_gone(dead, 0, &mut |o| out.push(o));
            sim.route(i, out);
        }
    };
    // Connected on the holder and on a third node: the holder's death changes nothing.
    sim.user(h, "cy", true);
    sim.user(other, "cy", true);
    kill(&mut sim, holder);
    assert_eq!(user_hooks(&sim, "cy"), vec![(holder, HookKind::UserOnline)]);
    // The replica holds now; the last connection anywhere closes: one user_offline.
    sim.user(other, "cy", false);
    assert_eq!(user_hooks(&sim, "cy"), vec![(holder, HookKind::UserOnline), (replica, HookKind::UserOffline)]);

    // A user connected only on a node that dies goes offline, announced by the holder.
    let room = "@user:dee";
    let [holder, _] = placement::keepers(room, &sim.ids.iter().copied().filter(|&n| n != holder).collect::<Vec<_>>())
        .map(Option::unwrap);
    let victim = (0..4).find(|&i| sim.ids[i] != holder && sim.ids[i] != sim.ids[h]).unwrap();
    sim.nodes[h] = rooms(1, 1000); // the dead node stays dead
    sim.user(victim, "dee", true);
    let dead = sim.ids[victim];
    kill(&mut sim, dead);
    let got = user_hooks(&sim, "dee");
    assert_eq!(got, vec![(holder, HookKind::UserOnline), (holder, HookKind::UserOffline)]);
}

#[test]
fn message_published_hooks_carry_sequenced_messages_in_order_and_skip_volatile_ones() {
    let hooks = |out: &[RoomOut]| -> Vec<Hook> {
        out.iter()
            .filter_map(|o| match o {
                RoomOut::Hook(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    };
    let mut r = rooms(1, 1000).with_hooks(true).with_message_hooks(true);
    join(&mut r, "r", "a", 0, 1);
    let data = |d: &str| super::request::Extra { data: Some(Arc::from(d.as_bytes())), ..Default::default() };
    let api = Requester::Api(ReplyTo { shard: 0, req: 1 });
    let mut got = Vec::new();
    for (i, d) in ["1", "{\"k\":2}"].into_iter().enumerate() {
        got.extend(hooks(&publish_with(&mut r, "r", data(d), api.clone())));
        assert_eq!(got.len(), i + 1);
    }
    let volatile = super::request::Extra { volatile: true, ..data("3") };
    assert!(hooks(&publish_with(&mut r, "r", volatile, api.clone())).is_empty(), "volatile: no event");
    let stream = r.get("r").unwrap().stream;
    for (i, h) in got.iter().enumerate() {
        let m = h.message.as_deref().unwrap();
        assert_eq!((h.kind, &*h.room, h.user.as_deref()), (HookKind::MessagePublished, "r", Some("u")));
        assert_eq!((m.epoch, m.seq, m.ts), (stream, i as u64 + 1, 9));
    }
    assert_eq!(got[1].message.as_deref().unwrap().data.as_deref(), Some(&b"{\"k\":2}"[..]));
    let mut off = rooms(1, 1000).with_hooks(true);
    join(&mut off, "r", "a", 0, 1);
    assert!(hooks(&publish_with(&mut off, "r", data("1"), api)).is_empty(), "not unless chosen");
}

#[test]
fn snapshots_announce_users_online_only_to_a_holder_that_knew_the_room() {
    let hooks_of = |out: &[RoomOut]| out.iter().filter(|o| matches!(o, RoomOut::Hook(_))).count();
    let (me, other) = (1_000_003u64, 2_000_006u64);
    let both: Arc<[u64]> = Arc::from([me, other]);
    // A user whose personal room `me` holds.
    let user = (0..).map(|i| format!("u{i}")).find(|u| placement::sequencer(&format!("@user:{u}"), &both) == Some(me));
    let user = user.unwrap();
    let room = format!("@user:{user}");
    let snapshot = [Arc::<str>::from(user.as_str())];
    // A node that just joined the cluster hears the others' users once: online all along.
    let mut fresh = rooms(1, 1000).with_cluster(me).with_hooks(true).with_user_hooks(true);
    let mut out = Vec::new();
    fresh.set_nodes(both.clone(), 0, &mut |o| out.push(o));
    fresh.remote_users(&room, other, &snapshot, 0, &mut |o| out.push(o));
    assert_eq!(hooks_of(&out), 0, "a new holder announces no snapshot");
    // The other node dies (its user goes offline) and comes back with its snapshot: the
    // holder, which knew the room, announces the user online again.
    let mut out = Vec::new();
    fresh.node_gone(other, 0, &mut |o| out.push(o));
    assert_eq!(hooks_of(&out), 1, "offline with its node");
    let mut out = Vec::new();
    fresh.set_nodes(both, 0, &mut |o| out.push(o));
    fresh.remote_users(&room, other, &snapshot, 0, &mut |o| out.push(o));
    let kinds: Vec<HookKind> = out
        .iter()
        .filter_map(|o| match o {
            RoomOut::Hook(h) => Some(h.kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec![HookKind::UserOnline]);
}

// --- Continuing a stream across a change of sequencer (`handoff`) ---

/// Two nodes with a member each in room "r"; `.0` is the room's sequencer among both.
fn two_nodes() -> (OwnedRooms, OwnedRooms) {
    let (a, b) = if placement::sequencer("r", &[1, 2]) == Some(1) { (1, 2) } else { (2, 1) };
    let (mut na, mut nb) = (rooms(1, 1000).with_cluster(a), rooms(1, 1000).with_cluster(b));
    for (r, user) in [(&mut na, "ua"), (&mut nb, "ub")] {
        r.set_nodes(Arc::from([1, 2]), 0, &mut |_| {});
        join(r, "r", user, 0, 1);
    }
    (na, nb)
}

/// The sequenced frames in `out`: (epoch, seq, frame).
fn sequenced(out: &[RoomOut]) -> Vec<(u64, u64, bytes::Bytes)> {
    to_bus(out)
        .into_iter()
        .filter_map(|o| match o {
            ClusterOut::Frame { epoch, seq, frame, .. } => Some((*epoch, *seq, frame.clone())),
            _ => None,
        })
        .collect()
}

/// `n` API publishes on `r` (node `from` forwarded them); their frames.
fn publish_n(r: &mut OwnedRooms, n: usize, now: u64) -> Vec<(u64, u64, bytes::Bytes)> {
    let mut out = Vec::new();
    for i in 0..n {
        let from = Requester::Api(ReplyTo { shard: 0, req: i as u64 });
        r.publish(Publish::text("r".into(), "srv".into(), &format!("m{i}"), from), now, &mut |o| out.push(o));
    }
    sequenced(&out)
}

/// Hands `frames` (published by node `by`) to `r` as the bus would; the seqs its local
/// members got.
fn feed(r: &mut OwnedRooms, by: u64, frames: &[(u64, u64, bytes::Bytes)]) -> Vec<u64> {
    let mut out = Vec::new();
    for (epoch, seq, frame) in frames {
        r.remote_frame("r", *epoch, *seq, by, frame.clone(), &mut |o| out.push(o));
    }
    seqs(&out)
}

/// [`two_nodes`] after `a` sequenced `n` frames and `b` followed all of them, with the
/// stream's epoch as `joined` shows it.
fn followed(n: usize) -> (OwnedRooms, OwnedRooms, String) {
    let (mut a, mut b) = two_nodes();
    let sent = publish_n(&mut a, n, 10);
    feed(&mut b, a.node, &sent);
    let epoch = format!("{:016x}", sent[0].0);
    (a, b, epoch)
}

fn seqs(out: &[RoomOut]) -> Vec<u64> {
    delivered(out).iter().filter_map(|(_, v)| v["seq"].as_u64()).collect()
}

fn handoffs(out: &[RoomOut]) -> Vec<(u64, u64, u64)> {
    to_bus(out)
        .into_iter()
        .filter_map(|o| match o {
            ClusterOut::Handoff { epoch, seq, to, .. } => Some((*epoch, *seq, *to)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_mark_then_a_publish_continues_the_same_epoch() {
    let (mut a, mut b) = two_nodes();
    let (ia, ib) = (a.node, b.node);
    let sent = publish_n(&mut a, 3, 10);
    assert_eq!(feed(&mut b, ia, &sent), vec![1, 2, 3]);
    let epoch = sent[0].0;
    b.take_counts();
    // Node a shuts down: it hands the room to b, and stops sequencing it.
    let mut out = Vec::new();
    a.hand_off(&[ib], &mut |o| out.push(o));
    assert_eq!(handoffs(&out), vec![(epoch, 3, ib)]);
    assert_eq!(a.handed_to("r"), Some(ib));
    let mut out = Vec::new();
    b.handoff_mark("r", epoch, 3, ia, 20, &mut |o| out.push(o));
    assert!(to_bus(&out).is_empty(), "b holds the stream up to the mark: nothing to ask");
    assert_eq!(b.take_continuations(), 1);
    let next = publish_n(&mut b, 2, 30);
    assert_eq!(next.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), vec![(epoch, 4), (epoch, 5)]);
    assert_eq!(b.take_counts(), (0, 0), "no new epoch");
    assert_eq!(b.get("r").unwrap().history_len(), 5, "one history across the handoff");
}

#[test]
fn a_publish_before_the_mark_waits_and_never_duplicates_a_seq() {
    // The mark comes: the held publish is sequenced after it, in the same epoch.
    let (mut a, mut b) = two_nodes();
    let (ia, ib) = (a.node, b.node);
    let sent = publish_n(&mut a, 3, 10);
    feed(&mut b, ia, &sent);
    let epoch = sent[0].0;
    assert!(publish_n(&mut b, 1, 20).is_empty(), "a is alive and may hand over: held");
    let mut out = Vec::new();
    a.hand_off(&[ib], &mut |o| out.push(o));
    let mut out = Vec::new();
    b.handoff_mark("r", epoch, 3, ia, 30, &mut |o| out.push(o));
    assert_eq!(sequenced(&out).iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), vec![(epoch, 4)]);
    assert_eq!(b.take_continuations(), 1);

    // No mark within the bound: a new epoch, and a late mark changes nothing.
    let (mut a, mut b) = two_nodes();
    let sent = publish_n(&mut a, 3, 10);
    feed(&mut b, a.node, &sent);
    b.take_counts();
    assert!(publish_n(&mut b, 1, 20).is_empty());
    let mut out = Vec::new();
    b.handoff_tick(20 + handoff::HANDOFF_WAIT_MS, &mut |o| out.push(o));
    let mine = sequenced(&out);
    assert_eq!(mine.len(), 1);
    assert_ne!(mine[0].0, sent[0].0, "a new epoch");
    assert_eq!(b.take_counts(), (0, 1));
    // The old sequencer went on meanwhile (views differed); its mark comes late.
    let more = publish_n(&mut a, 1, 25);
    let mut out = Vec::new();
    b.handoff_mark("r", sent[0].0, 4, a.node, 40, &mut |o| out.push(o));
    assert!(to_bus(&out).is_empty());
    assert_eq!(b.take_continuations(), 0);
    let later = publish_n(&mut b, 1, 50);
    let all: Vec<(u64, u64)> = sent.iter().chain(&more).chain(&mine).chain(&later).map(|f| (f.0, f.1)).collect();
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "never two frames with one (epoch, seq): {all:?}");
}

#[test]
fn missing_frames_are_caught_up_before_continuing_or_else_a_new_epoch() {
    let (mut a, mut b) = two_nodes();
    let (ia, ib) = (a.node, b.node);
    let sent = publish_n(&mut a, 5, 10);
    feed(&mut b, ia, &sent[..2]);
    let epoch = sent[0].0;
    b.take_counts();
    let mut out = Vec::new();
    a.hand_off(&[ib], &mut |o| out.push(o));
    let mut out = Vec::new();
    b.handoff_mark("r", epoch, 5, ia, 20, &mut |o| out.push(o));
    let ask = to_bus(&out);
    assert!(matches!(ask[..], [ClusterOut::CatchUp { after: 2, to, .. }] if *to == ia), "{ask:?}");
    assert!(publish_n(&mut b, 1, 21).is_empty(), "held until caught up");
    let mut answer = Vec::new();
    a.catch_up_request("r", epoch, 2, ib, &mut |o| answer.push(o));
    let mut out = Vec::new();
    for part in to_bus(&answer) {
        let ClusterOut::Frames { epoch, first, frames, done, to, .. } = part else { panic!("{part:?}") };
        assert_eq!(*to, ib);
        b.catch_up_frames("r", *epoch, ia, *first, frames.clone(), *done, 22, &mut |o| out.push(o));
    }
    assert_eq!(seqs(&out), vec![3, 4, 5, 6], "the missing frames, then the held publish");
    assert_eq!(sequenced(&out).iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), vec![(epoch, 6)]);
    assert_eq!((b.take_continuations(), b.take_counts()), (1, (0, 0)));

    // The old sequencer no longer holds them: an empty answer, and a new epoch.
    let (mut a, mut b) = two_nodes();
    let sent = publish_n(&mut a, 5, 10);
    feed(&mut b, a.node, &sent[..2]);
    b.take_counts();
    let mut out = Vec::new();
    b.handoff_mark("r", sent[0].0, 5, a.node, 20, &mut |o| out.push(o));
    let mut answer = Vec::new();
    a.catch_up_request("r", 12345, 2, b.node, &mut |o| answer.push(o));
    let Some(ClusterOut::Frames { frames, done: true, first, .. }) = to_bus(&answer).first().copied() else {
        panic!("one empty answer")
    };
    assert!(frames.is_empty());
    let mut out = Vec::new();
    b.catch_up_frames("r", sent[0].0, a.node, *first, Vec::new(), true, 21, &mut |o| out.push(o));
    assert_eq!((b.take_continuations(), b.take_counts()), (0, (0, 1)), "a new epoch, counted");
    let next = publish_n(&mut b, 1, 30);
    assert_ne!(next[0].0, sent[0].0);
}

#[test]
fn a_crashed_sequencer_means_a_new_epoch_at_once_a_goodbye_means_a_wait() {
    let (mut a, mut b) = two_nodes();
    let sent = publish_n(&mut a, 3, 10);
    feed(&mut b, a.node, &sent);
    b.take_counts();
    // a timed out (no goodbye, no mark): b sequences a new epoch at once.
    b.set_nodes(Arc::from([b.node]), 20, &mut |_| {});
    let next = publish_n(&mut b, 1, 20);
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].0, sent[0].0);
    assert_eq!((next[0].1, b.take_counts()), (4, (0, 1)));

    // a said goodbye (its mark may still be on the way): b waits for the mark.
    let (mut a, mut b) = two_nodes();
    let sent = publish_n(&mut a, 3, 10);
    feed(&mut b, a.node, &sent);
    b.goodbye(a.node, 20);
    b.set_nodes(Arc::from([b.node]), 20, &mut |_| {});
    assert!(publish_n(&mut b, 1, 21).is_empty());
    let mut out = Vec::new();
    b.handoff_mark("r", sent[0].0, 3, a.node, 22, &mut |o| out.push(o));
    assert_eq!(sequenced(&out).iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), vec![(sent[0].0, 4)]);
}

#[test]
fn a_hole_in_the_frames_is_caught_up_from_the_sequencer_in_order() {
    let (mut a, mut b) = two_nodes();
    let (ia, ib) = (a.node, b.node);
    let sent = publish_n(&mut a, 5, 10);
    assert_eq!(feed(&mut b, ia, &sent[..1]), vec![1]);
    let mut out = Vec::new();
    for (epoch, seq, frame) in &sent[3..] {
        b.remote_frame("r", *epoch, *seq, ia, frame.clone(), &mut |o| out.push(o));
    }
    assert!(seqs(&out).is_empty(), "held after the hole");
    assert!(matches!(to_bus(&out)[..], [ClusterOut::CatchUp { after: 1, .. }]), "asked once");
    let mut answer = Vec::new();
    a.catch_up_request("r", sent[0].0, 1, ib, &mut |o| answer.push(o));
    let mut out = Vec::new();
    for part in to_bus(&answer) {
        let ClusterOut::Frames { epoch, first, frames, done, .. } = part else { panic!() };
        b.catch_up_frames("r", *epoch, ia, *first, frames.clone(), *done, 20, &mut |o| out.push(o));
    }
    assert_eq!(seqs(&out), vec![2, 3, 4, 5], "gap-free, nothing twice");
    assert_eq!(b.take_counts().0, 0, "no gap counted");
    assert_eq!(b.get("r").unwrap().history_len(), 5);
}

#[test]
fn a_node_handed_a_room_it_does_not_win_passes_it_on_to_the_winner() {
    // Three nodes x, y, z: x hands "r" to y, but y also sees z, which wins among {y, z}.
    let (x, y, z) = (1u64, 2u64, 3u64);
    let (y, z) = if placement::sequencer("r", &[y, z]) == Some(z) { (y, z) } else { (z, y) };
    let mut b = rooms(1, 1000).with_cluster(y);
    let mut live = [x, y, z];
    live.sort_unstable();
    b.set_nodes(Arc::from(live), 0, &mut |_| {});
    join(&mut b, "r", "ub", 0, 1);
    let frame = server::message("r", 1, "x", "t", 1);
    b.remote_frame("r", 0xabc, 1, x, frame, &mut |_| {});
    assert!(publish_n(&mut b, 1, 10).is_empty(), "held: x may hand the stream over");
    let mut out = Vec::new();
    b.handoff_mark("r", 0xabc, 1, x, 20, &mut |o| out.push(o));
    assert_eq!(
        sequenced(&out).iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(),
        vec![(0xabc, 2)],
        "held, sequenced here"
    );
    assert_eq!(handoffs(&out), vec![(0xabc, 2, z)], "then on to the winner");
    assert_eq!((b.take_continuations(), b.handed_to("r")), (1, Some(z)));
}

#[test]
fn a_room_unknown_here_waits_for_a_mark_only_just_after_the_live_set_changed() {
    let mut b = rooms(1, 1000).with_cluster(2);
    b.set_nodes(Arc::from([1, 2]), 1_000, &mut |_| {});
    b.view_changed(1_000);
    let from = || Requester::Remote(Box::new(Remote { node: 1, reply: None, relayed: false, receipt: None }));
    let publish = |b: &mut OwnedRooms, room: &str, now: u64| {
        let mut out = Vec::new();
        b.publish(Publish::text(room.into(), "srv".into(), "x", from()), now, &mut |o| out.push(o));
        sequenced(&out).iter().map(|f| (f.0, f.1)).collect::<Vec<_>>()
    };
    assert!(publish(&mut b, "moved", 1_500).is_empty(), "node 1 may be handing it over");
    let mut out = Vec::new();
    b.handoff_mark("moved", 0xabc, 7, 1, 1_600, &mut |o| out.push(o));
    assert_eq!(sequenced(&out).iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), vec![(0xabc, 8)]);
    assert_eq!(b.take_continuations(), 1);
    let settled = 1_000 + handoff::HANDOFF_WAIT_MS;
    let fresh = publish(&mut b, "fresh", settled);
    assert_eq!(fresh.len(), 1, "a settled view: nobody is handing it over");
    assert_eq!(fresh[0].1, 1);
}

#[test]
fn a_room_created_here_without_a_message_takes_a_mark_one_with_its_own_messages_does_not() {
    let mut b = rooms(1, 1000).with_cluster(2);
    b.set_nodes(Arc::from([1, 2]), 0, &mut |_| {});
    join(&mut b, "r", "ub", 0, 1);
    let mut out = Vec::new();
    b.handoff_mark("r", 0xabc, 5, 1, 10, &mut |o| out.push(o));
    assert_eq!((b.take_continuations(), b.take_counts()), (1, (0, 1)), "adopted at the mark, continued");
    assert_eq!(publish_n(&mut b, 1, 20).iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), vec![(0xabc, 6)]);
    // Its own stream with messages: a late mark of another stream changes nothing.
    let mut out = Vec::new();
    b.handoff_mark("r", 0xdef, 9, 1, 30, &mut |o| out.push(o));
    assert!(to_bus(&out).is_empty());
    assert_eq!(b.take_continuations(), 0);
    assert_eq!(publish_n(&mut b, 1, 40).iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), vec![(0xabc, 7)]);
}

// --- A rejoin on a node behind the stream (`rejoin`) ---

/// A join of `room` by connection `n` on shard 0 recovering from `since`.
fn rejoin_req(room: &str, user: &str, n: u32, epoch: &str, seq: u64) -> JoinReq {
    let since = Some(request::Since { epoch: Some(epoch.into()), seq });
    req(room, user, 0, n, JoinKind::Join { password: None, verified: None, since })
}

/// What happened on the joiner's shard, in order: `Ack(replayed seqs, joined)` or
/// `Frame(seq)` for a delivered frame.
#[derive(Debug, PartialEq)]
enum Seen {
    Ack(Vec<u64>, serde_json::Value),
    Frame(u64),
}

fn seen(out: &[RoomOut]) -> Vec<Seen> {
    out.iter()
        .filter_map(|o| match o {
            RoomOut::Shard(0, ToShard::JoinAck(ack)) => {
                let replay = ack.replay.iter().filter_map(|f| json(f)["seq"].as_u64()).collect();
                Some(Seen::Ack(replay, json(&ack.frame)))
            }
            RoomOut::Shard(0, ToShard::Deliver { frame, .. }) => json(frame)["seq"].as_u64().map(Seen::Frame),
            _ => None,
        })
        .collect()
}

/// The one ack in `out`: (replayed seqs, `joined.recovered`, `joined.seq`).
fn the_ack(out: &[RoomOut]) -> (Vec<u64>, Option<bool>, u64) {
    let acks: Vec<_> = seen(out)
        .into_iter()
        .filter_map(|s| match s {
            Seen::Ack(replay, joined) => Some((replay, joined["recovered"].as_bool(), joined["seq"].as_u64().unwrap())),
            Seen::Frame(_) => None,
        })
        .collect();
    assert_eq!(acks.len(), 1, "one ack: {:?}", seen(out));
    acks.into_iter().next().unwrap()
}

/// Issue 14: a client that saw seq N on a node that died rejoined on a node whose copy
/// of the stream was still behind N, and was answered `recovered: false` although the
/// frames it needed arrived there a few ms later (1,302 of 2,000 clients of a killed
/// node at 6,000 connections over 3 nodes). Now the answer waits for them.
#[test]
fn regression_rejoin_on_a_node_behind_the_stream_recovers() {
    let (mut a, mut b) = two_nodes();
    let ia = a.node;
    let sent = publish_n(&mut a, 6, 10);
    let epoch = format!("{:016x}", sent[0].0);
    feed(&mut b, ia, &sent[..2]);
    let out = run(&mut b, rejoin_req("r", "uc", 7, &epoch, 4));
    assert!(seen(&out).is_empty(), "held: b has seq 2 of the 4 the client saw");
    let mut out = Vec::new();
    for (e, s, f) in &sent[2..] {
        b.remote_frame("r", *e, *s, ia, f.clone(), &mut |o| out.push(o));
    }
    let order: Vec<_> = seen(&out)
        .into_iter()
        .map(|s| if let Seen::Ack(r, j) = s { Seen::Ack(r, j["recovered"].clone()) } else { s })
        .collect();
    // Frames 3 and 4 go to the members already there (the joiner is not one yet), then
    // the ack, then 5 and 6 reach the joiner too: nothing twice, nothing missing.
    assert_eq!(
        order,
        vec![Seen::Frame(3), Seen::Frame(4), Seen::Ack(vec![], true.into()), Seen::Frame(5), Seen::Frame(6)]
    );
    assert_eq!(b.take_rejoin_counts(), (1, 1));
    assert_eq!(b.get("r").unwrap().user_count(), 2, "the joiner counted once, from its join on (ub and uc)");
}

/// The first member of a room on a node: the node subscribes with the join, its copy
/// of the stream starts with the first frame it receives, which may be well after the
/// client's `since`; the frames in between come from the sequencer's history.
#[test]
fn a_rejoin_that_subscribes_a_node_to_the_room_fetches_the_frames_before_its_first_one() {
    let (ia, ib) = if placement::sequencer("r", &[1, 2]) == Some(1) { (1, 2) } else { (2, 1) };
    let (mut a, mut b) = (rooms(1, 1000).with_cluster(ia), rooms(1, 1000).with_cluster(ib));
    for r in [&mut a, &mut b] {
        r.set_nodes(Arc::from([1, 2]), 0, &mut |_| {});
    }
    join(&mut a, "r", "ua", 0, 1);
    let sent = publish_n(&mut a, 7, 10);
    let epoch = format!("{:016x}", sent[0].0);
    let out = run(&mut b, rejoin_req("r", "ub", 1, &epoch, 3));
    assert!(matches!(to_bus(&out)[0], ClusterOut::Subscribe(_)));
    assert!(seen(&out).is_empty(), "held: b has no copy of the stream yet");
    // b's subscription took effect after frame 5: the first it receives is 6.
    let mut out = Vec::new();
    b.remote_frame("r", sent[5].0, 6, ia, sent[5].2.clone(), &mut |o| out.push(o));
    assert!(seen(&out).is_empty());
    let ask = to_bus(&out);
    assert!(matches!(ask[..], [ClusterOut::CatchUp { after: 3, to, .. }] if *to == ia), "{ask:?}");
    let mut answer = Vec::new();
    a.catch_up_request("r", sent[0].0, 3, ib, &mut |o| answer.push(o));
    let mut out = Vec::new();
    for part in to_bus(&answer) {
        let ClusterOut::Frames { epoch, first, frames, done, .. } = part else { panic!("{part:?}") };
        b.catch_up_frames("r", *epoch, ia, *first, frames.clone(), *done, 20, &mut |o| out.push(o));
    }
    b.remote_frame("r", sent[6].0, 7, ia, sent[6].2.clone(), &mut |o| out.push(o));
    let (replay, recovered, seq) = the_ack(&out);
    assert_eq!((replay, recovered, seq), (vec![4], Some(true), 4));
    // Frame 4 reaches the joiner's shard before the ack (the joiner is not a member
    // there yet), and comes to the joiner in the ack; then 5, 6, 7: gap-free, once each.
    let order: Vec<bool> = seen(&out).iter().map(|s| matches!(s, Seen::Ack(..))).collect();
    assert_eq!(order, [false, true, false, false, false]);
    assert_eq!(seen(&out)[2..], [Seen::Frame(5), Seen::Frame(6), Seen::Frame(7)]);
    assert_eq!(b.take_counts().0, 0, "no gap");
    assert_eq!(b.take_rejoin_counts(), (1, 1));
}

#[test]
fn a_rejoin_the_stream_never_reaches_is_answered_not_recovered_after_the_bound() {
    // A seq the stream does not reach: answered as before once the wait is over.
    let (a, mut b, epoch) = followed(3);
    assert!(seen(&run(&mut b, rejoin_req("r", "uc", 7, &epoch, 99))).is_empty());
    let mut out = Vec::new();
    b.handoff_tick(1 + rejoin::REJOIN_WAIT_MS - 1, &mut |o| out.push(o));
    assert!(seen(&out).is_empty(), "not yet");
    b.handoff_tick(1 + rejoin::REJOIN_WAIT_MS, &mut |o| out.push(o));
    assert_eq!(the_ack(&out), (vec![], Some(false), 3));
    assert_eq!(b.take_rejoin_counts(), (1, 0));

    // Another epoch than the one b follows with frames: answered at once, as before.
    assert_eq!(the_ack(&run(&mut b, rejoin_req("r", "ud", 8, "00000000000000aa", 2))), (vec![], Some(false), 3));
    // A node with no frame of the room yet holds any epoch; when its copy starts with
    // another one, the one asked for is over and the answer comes at once.
    let fresh = || {
        let mut c = rooms(1, 1000).with_cluster(b.node);
        c.set_nodes(Arc::from([1, 2]), 0, &mut |_| {});
        c
    };
    let mut c = fresh();
    assert!(seen(&run(&mut c, rejoin_req("r", "ud", 8, "00000000000000aa", 2))).is_empty());
    let mut out = Vec::new();
    c.remote_frame("r", 0xbb, 1, a.node, server::message("r", 1, "x", "t", 1), &mut |o| out.push(o));
    assert_eq!(the_ack(&out), (vec![], Some(false), 1));
    // ... and when its copy starts with that epoch, the frames before are fetched.
    let mut c = fresh();
    assert!(seen(&run(&mut c, rejoin_req("r", "ue", 9, "00000000000000cc", 2))).is_empty());
    let mut out = Vec::new();
    c.remote_frame("r", 0xcc, 5, a.node, server::message("r", 5, "x", "t", 1), &mut |o| out.push(o));
    assert!(matches!(to_bus(&out)[..], [ClusterOut::CatchUp { after: 2, epoch: 0xcc, .. }]));

    // Answered at once, as before: the node sequences the stream itself (nothing
    // ahead of it exists), a malformed epoch, a client already in step.
    let (mut a, mut b, epoch) = followed(3);
    assert_eq!(the_ack(&run(&mut a, rejoin_req("r", "uc", 7, &epoch, 5))), (vec![], Some(false), 3));
    assert_eq!(the_ack(&run(&mut b, rejoin_req("r", "uc", 8, &epoch.to_uppercase(), 5))), (vec![], Some(false), 3));
    assert_eq!(the_ack(&run(&mut b, rejoin_req("r", "uc", 9, &epoch, 2))), (vec![3], Some(true), 3));
    assert_eq!(b.take_rejoin_counts(), (0, 0));
}

#[test]
fn a_single_node_answers_a_since_ahead_of_the_room_at_once() {
    let mut r = rooms(1, 1000);
    join(&mut r, "r", "ua", 0, 1);
    api_publish(&mut r, "r", "hi", Requester::Api(ReplyTo { shard: 0, req: 1 }));
    let epoch = r.get("r").unwrap().epoch();
    assert_eq!(the_ack(&run(&mut r, rejoin_req("r", "ub", 2, &epoch, 5))), (vec![], Some(false), 1));
    assert_eq!(r.take_rejoin_counts(), (0, 0));
}

#[test]
fn held_rejoins_are_bounded_per_shard() {
    let (mut a, mut b, epoch) = followed(1);
    for n in 0..rejoin::MAX_HELD_JOINS as u32 {
        assert!(seen(&run(&mut b, rejoin_req("r", "u", 10 + n, &epoch, 2))).is_empty());
    }
    let one_more = run(&mut b, rejoin_req("r", "u", 5, &epoch, 2));
    assert_eq!(the_ack(&one_more), (vec![], Some(false), 1), "over the bound: answered at once");
    // The stream reaches them: every one is answered, and nothing stays held.
    let more = publish_n(&mut a, 1, 20);
    let mut out = Vec::new();
    b.remote_frame("r", more[0].0, 2, a.node, more[0].2.clone(), &mut |o| out.push(o));
    let acks = seen(&out).iter().filter(|s| matches!(s, Seen::Ack(..))).count();
    assert_eq!(acks, rejoin::MAX_HELD_JOINS);
    assert_eq!(b.take_rejoin_counts(), (rejoin::MAX_HELD_JOINS as u64, rejoin::MAX_HELD_JOINS as u64));
}

// --- First joins on a node with no copy of the room's stream (`fresh`) ---

/// Nodes 1 and 2, nothing joined; `.0` sequences room "r".
fn fresh_pair() -> (OwnedRooms, OwnedRooms) {
    let (ia, ib) = if placement::sequencer("r", &[1, 2]) == Some(1) { (1, 2) } else { (2, 1) };
    let (mut a, mut b) = (rooms(1, 1000).with_cluster(ia), rooms(1, 1000).with_cluster(ib));
    for r in [&mut a, &mut b] {
        r.set_nodes(Arc::from([1, 2]), 0, &mut |_| {});
    }
    (a, b)
}

/// The bridge's part of `b` subscribing to "r": `a` (the room's holder) answers the
/// request, and `b` takes the answer; what `b` emitted.
fn sync(a: &mut OwnedRooms, b: &mut OwnedRooms, now: u64) -> Vec<RoomOut> {
    let mut answer = Vec::new();
    a.sync_request("r", b.node, now, &mut |o| answer.push(o));
    let mut out = Vec::new();
    for o in to_bus(&answer) {
        if let ClusterOut::Count { room, count, to, stream } = o {
            assert_eq!(*to, b.node);
            b.remote_count(room, *count);
            if let Some((epoch, seq)) = stream {
                b.remote_stream(room, a.node, *epoch, *seq, now, &mut |o| out.push(o));
            }
        }
    }
    out
}

/// The `joined` frame of the one ack in `out`.
fn joined(out: &[RoomOut]) -> serde_json::Value {
    let acks: Vec<serde_json::Value> =
        seen(out).into_iter().filter_map(|s| if let Seen::Ack(_, j) = s { Some(j) } else { None }).collect();
    assert_eq!(acks.len(), 1, "one ack: {:?}", seen(out));
    acks.into_iter().next().unwrap()
}

/// Issue 14: a node that got a room's first local member before any frame of it created
/// the room with an epoch of its own and answered `joined` with it; frames carry no
/// epoch, so the client kept it, and each later rejoin with it, anywhere, answered
/// `recovered: false` (most of the 1,364 unrecovered clients of a killed node at 6,000
/// connections over 3 nodes). Now the answer waits for the sequencer's stream.
#[test]
fn regression_first_join_on_a_fresh_node_gets_the_streams_epoch() {
    let (mut a, mut b) = fresh_pair();
    join(&mut a, "r", "ua", 0, 1);
    let sent = publish_n(&mut a, 3, 10);
    let stream = format!("{:016x}", sent[0].0);
    // b gets the room's first local member; its subscription asks a for the stream.
    let mut out = join(&mut b, "r", "ub", 0, 1);
    out.extend(sync(&mut a, &mut b, 20));
    let first = joined(&out);
    assert_eq!(first["epoch"].as_str(), Some(stream.as_str()), "the stream's epoch, not b's own: {first}");
    assert_eq!(first["seq"], 3);
    // The stream goes on; b's client reads it, then moves to a (or any node) with `since`.
    let more = publish_n(&mut a, 2, 30);
    assert_eq!(feed(&mut b, a.node, &more), vec![4, 5]);
    let back = the_ack(&run(&mut a, rejoin_req("r", "ub", 2, first["epoch"].as_str().unwrap(), 5)));
    assert_eq!(back, (vec![], Some(true), 5), "nothing was lost: recovered");
    let on_b = the_ack(&run(&mut b, rejoin_req("r", "ub", 3, first["epoch"].as_str().unwrap(), 4)));
    assert_eq!(on_b, (vec![5], Some(true), 5));
    assert_eq!(b.take_first_join_counts(), (1, 0));
    // The sequencer's own joins are answered at once, as before.
    assert_eq!(the_ack(&join(&mut a, "r", "uc", 0, 4)), (vec![], None, 5));
    assert_eq!(a.take_first_join_counts(), (0, 0));
}

/// A room nobody has published to: the sequencer, which has no copy of the room yet,
/// creates it to answer, and its first publish continues that very epoch at seq 1.
#[test]
fn a_quiet_room_is_answered_by_the_sequencer_whose_publish_continues_that_epoch() {
    let (mut a, mut b) = fresh_pair();
    let out = join(&mut b, "r", "ub", 0, 1);
    assert!(seen(&out).is_empty(), "held: b has no stream of the room");
    let joins_counted = b.get("r").unwrap().user_count();
    assert_eq!(joins_counted, 1, "the join is counted at once, only the answer waits");
    let out = sync(&mut a, &mut b, 20);
    let first = joined(&out);
    let epoch = a.get("r").expect("the sequencer created the room to answer").epoch();
    assert_eq!((first["epoch"].as_str(), &first["seq"]), (Some(epoch.as_str()), &serde_json::json!(0)));
    // Further joins on b are answered at once now: b follows the stream.
    assert_eq!(the_ack(&join(&mut b, "r", "uc", 0, 2)), (vec![], None, 0));
    let sent = publish_n(&mut a, 2, 30);
    assert_eq!(format!("{:016x}", sent[0].0), epoch, "a's first publish continues the epoch it told b");
    assert_eq!((sent[0].1, sent[1].1), (1, 2));
    let mut fed = Vec::new();
    for (e, s, f) in &sent {
        b.remote_frame("r", *e, *s, a.node, f.clone(), &mut |o| fed.push(o));
    }
    assert_eq!(seqs(&fed), vec![1, 2]);
    assert_eq!(b.take_counts(), (0, 1), "no gap; b's copy left its provisional stream once");
    assert_eq!(b.take_first_join_counts(), (1, 0));
    // b's client rejoins on a: in step.
    assert_eq!(the_ack(&run(&mut a, rejoin_req("r", "ub", 3, &epoch, 2))), (vec![], Some(true), 2));
}

/// The room's frames reach b before the sequencer's answer: the held join is answered
/// after the first frame b hands out (the joiner is not a member for it), and the late
/// answer changes nothing.
#[test]
fn a_frame_before_the_answer_answers_the_held_join_after_it() {
    let (mut a, mut b) = fresh_pair();
    join(&mut a, "r", "ua", 0, 1);
    let early = publish_n(&mut a, 3, 10);
    assert!(seen(&join(&mut b, "r", "ub", 0, 1)).is_empty());
    let later = publish_n(&mut a, 2, 20);
    let mut out = Vec::new();
    for (e, s, f) in &later {
        b.remote_frame("r", *e, *s, a.node, f.clone(), &mut |o| out.push(o));
    }
    let order: Vec<_> = seen(&out)
        .into_iter()
        .map(|s| if let Seen::Ack(r, j) = s { Seen::Ack(r, j["seq"].clone()) } else { s })
        .collect();
    assert_eq!(order, vec![Seen::Frame(4), Seen::Ack(vec![], 4.into()), Seen::Frame(5)]);
    assert_eq!(joined(&out)["epoch"].as_str(), Some(format!("{:016x}", early[0].0).as_str()));
    // The answer a sent when b subscribed arrives late: b follows the stream already.
    assert!(seen(&sync(&mut a, &mut b, 30)).is_empty());
    assert_eq!(b.get("r").unwrap().seq(), 5);
    assert_eq!(b.take_first_join_counts(), (1, 0));
}

/// A sequencer that never answers (dead, or the bus lost the request) and no frame:
/// the join is answered as before once the bound is over, and is counted; joins after
/// that are not held again.
#[test]
fn a_silent_sequencer_means_the_old_answer_after_the_bound() {
    let (_a, mut b) = fresh_pair();
    assert!(seen(&join(&mut b, "r", "ub", 0, 1)).is_empty());
    assert!(seen(&join(&mut b, "r", "uc", 0, 2)).is_empty(), "held with the first: the request is on its way");
    let mut out = Vec::new();
    b.handoff_tick(1 + fresh::STREAM_WAIT_MS - 1, &mut |o| out.push(o));
    assert!(seen(&out).is_empty(), "not yet");
    b.handoff_tick(1 + fresh::STREAM_WAIT_MS, &mut |o| out.push(o));
    let own = b.get("r").unwrap().epoch();
    let acks: Vec<_> = seen(&out).into_iter().filter(|s| matches!(s, Seen::Ack(..))).collect();
    assert_eq!(acks.len(), 2);
    for s in acks {
        let Seen::Ack(_, j) = s else { unreachable!() };
        assert_eq!((j["epoch"].as_str(), &j["seq"]), (Some(own.as_str()), &serde_json::json!(0)));
    }
    assert_eq!(b.take_first_join_counts(), (2, 2));
    assert_eq!(the_ack(&join(&mut b, "r", "ud", 0, 3)), (vec![], None, 0), "not held twice");
    assert_eq!(b.take_first_join_counts(), (0, 0));
    // Unchanged: a single node, a personal room, a node whose bus is down.
    let mut single = rooms(1, 1000);
    assert_eq!(the_ack(&join(&mut single, "r", "ua", 0, 1)), (vec![], None, 0));
    let (_a, mut b) = fresh_pair();
    b.set_bus_up(false);
    assert_eq!(the_ack(&join(&mut b, "r", "ua", 0, 1)), (vec![], None, 0));
    let (_a, mut b) = fresh_pair();
    let personal = format!("{}x", crate::protocol::SYSTEM_ROOM_PREFIX);
    let out = join(&mut b, &personal, "x", 0, 1);
    assert!(out.iter().any(|o| matches!(o, RoomOut::Shard(0, ToShard::JoinAck(_)))), "answered at once");
    assert_eq!(b.take_first_join_counts(), (0, 0));
}

/// The joiner's connection closes while its join is held: its shard undoes the join
/// when the answer reaches it (the one rule for joins answered after their connection
/// went away), and nothing of it stays.
#[test]
fn a_joiner_that_leaves_while_held_is_undone_by_its_answer() {
    let (mut a, mut b) = fresh_pair();
    let out = join(&mut b, "r", "ub", 0, 1);
    assert!(seen(&out).is_empty());
    let told: Vec<bool> = to_bus(&out)
        .into_iter()
        .filter_map(|o| if let ClusterOut::Presence { present, .. } = o { Some(*present) } else { None })
        .collect();
    assert_eq!(told, vec![true], "the user is counted (and its keepers told) at once");
    let out = sync(&mut a, &mut b, 20);
    let ack = out.iter().find_map(|o| match o {
        RoomOut::Shard(0, ToShard::JoinAck(ack)) => Some(ack.epoch),
        _ => None,
    });
    // The shard sees its connection gone and sends the leave the ack names.
    let mut out = Vec::new();
    b.leave("r", "ub", 0, ack.expect("answered"), 30, &mut |o| out.push(o));
    let told: Vec<bool> = to_bus(&out)
        .into_iter()
        .filter_map(|o| if let ClusterOut::Presence { present, .. } = o { Some(*present) } else { None })
        .collect();
    assert_eq!(told, vec![false]);
    assert!(b.get("r").is_none(), "the room is gone from b");
    assert!(to_bus(&out).iter().any(|o| matches!(o, ClusterOut::Unsubscribe(_))));
    let mut out = Vec::new();
    b.handoff_tick(1 + fresh::STREAM_WAIT_MS, &mut |o| out.push(o));
    assert!(out.is_empty(), "nothing held any more");
}

/// A rejoin held on b (it subscribes with it) from before the position the sequencer
/// answers: the frames in between are fetched from the sequencer, so the client still
/// recovers, and a first join held beside it is answered once the copy is in step.
#[test]
fn a_held_rejoin_from_before_the_answered_position_is_caught_up() {
    let (mut a, mut b) = fresh_pair();
    join(&mut a, "r", "ua", 0, 1);
    let sent = publish_n(&mut a, 6, 10);
    let epoch = format!("{:016x}", sent[0].0);
    assert!(seen(&run(&mut b, rejoin_req("r", "ub", 1, &epoch, 3))).is_empty());
    let out = sync(&mut a, &mut b, 20);
    let ask = to_bus(&out);
    assert!(matches!(ask[..], [ClusterOut::CatchUp { after: 3, .. }]), "{ask:?}");
    assert!(seen(&out).is_empty());
    let mut answer = Vec::new();
    a.catch_up_request("r", sent[0].0, 3, b.node, &mut |o| answer.push(o));
    let mut out = Vec::new();
    for part in to_bus(&answer) {
        let ClusterOut::Frames { epoch, first, frames, done, .. } = part else { panic!("{part:?}") };
        b.catch_up_frames("r", *epoch, a.node, *first, frames.clone(), *done, 25, &mut |o| out.push(o));
    }
    assert_eq!(the_ack(&out), (vec![4], Some(true), 4));
    assert_eq!(b.get("r").unwrap().seq(), 6);
    assert_eq!(b.take_rejoin_counts(), (1, 1));
}
