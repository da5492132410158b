//! The rooms' rules, without a runtime: each test drives [`OwnedRooms`] directly and
//! looks at the [`RoomOut`]s it emits.

use std::sync::Arc;

use super::history::Caps;
use super::request::{
    ConnId, ConnRef, DeleteReq, JoinKind, PresenceReq, Publish, Remote, ReplyRef, ReplyTo, Requester,
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
    JoinReq { room: room.into(), user: user.into(), origin: origin(shard, n), token: n, silent: false, kind }
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
    assert_eq!(json(ack.frame.as_ref().unwrap())["members"], 2);
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
        let msg = Publish {
            room: "r".into(),
            user: "a".into(),
            text: "hi".into(),
            from: Requester::Conn(ConnRef { reference: Some("x".into()), ..origin(0, 1) }),
        };
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
    assert_eq!(json(ack.frame.as_ref().unwrap())["private"], true);
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
    let msg = Publish { room: room.into(), user: "srv".into(), text: text.into(), from };
    r.publish(msg, 7, &mut |o| out.push(o));
    out
}

#[test]
fn in_a_cluster_the_owner_subscribes_announces_and_publishes_frames() {
    let mut r = rooms(2, 1000).with_cluster(1);
    let out = join(&mut r, "r", "a", 0, 1);
    let bus = to_bus(&out);
    assert!(matches!(bus[0], ClusterOut::Subscribe(room) if &**room == "r"), "subscribe first");
    assert!(matches!(bus[1], ClusterOut::Presence { present: true, .. }));
    assert!(to_bus(&join(&mut r, "r", "a", 1, 2)).is_empty(), "a second connection of a is no news");
    let out = api_publish(&mut r, "r", "hi", Requester::Api(ReplyTo { shard: 0, req: 1 }));
    let stream = r.get("r").unwrap().stream;
    assert!(matches!(to_bus(&out)[0], ClusterOut::Frame { seq: 1, epoch, .. } if *epoch == stream));
    let e = epoch(&r, "r");
    r.leave("r", "a", 0, e, 0, &mut |_| {});
    let mut out = Vec::new();
    r.leave("r", "a", 1, e, 0, &mut |o| out.push(o));
    // No history TTL here: the room goes at once, and so does the subscription.
    assert!(matches!(to_bus(&out)[..], [ClusterOut::Presence { present: false, .. }, ClusterOut::Unsubscribe(_)]));
    assert!(r.is_empty());
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
    let from = Requester::Remote(Box::new(Remote { node: 4, reply: Some(ReplyRef::Api { shard: 1, req: 77 }) }));
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
    let out = api_publish(&mut r, "elsewhere", "x", Requester::Remote(Box::new(Remote { node: 4, reply: None })));
    assert!(matches!(to_bus(&out)[..], [ClusterOut::Frame { seq: 1, .. }]));
    assert_eq!(r.get("elsewhere").unwrap().connections(), 0);
}

#[test]
fn remote_users_count_once_and_leave_when_their_node_dies() {
    let mut r = rooms(1, 1000).with_cluster(1);
    join(&mut r, "r", "a", 0, 1);
    let mut out = Vec::new();
    r.remote_users("r", 7, &["b".into(), "a".into()], &mut |o| out.push(o));
    let events = delivered(&out);
    assert_eq!(events.len(), 1, "only b is news: {events:?}");
    assert_eq!(events[0].1, serde_json::json!({"type":"join","room":"r","user":"b"}));
    assert_eq!(r.get("r").unwrap().user_count(), 2);
    let mut out = Vec::new();
    r.node_gone(7, &mut |o| out.push(o));
    assert_eq!(delivered(&out)[0].1, serde_json::json!({"type":"leave","room":"r","user":"b"}));
    assert_eq!(r.get("r").unwrap().user_count(), 1, "a is still here");
    let mut out = Vec::new();
    r.announce(None, None, &mut |o| out.push(o));
    assert!(matches!(to_bus(&out)[..], [ClusterOut::Users { users, to: None, .. }] if users.len() == 1));
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
