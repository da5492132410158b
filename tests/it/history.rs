//! Room history, recovery after reconnect, pagination, memory caps, lingering rooms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{clients_on_both_shards, Client, Http, Resp, TestServer, PATIENCE};

/// Polls `GET path` until `done` holds for the answer (every 10 ms, failing after `within`).
fn poll_until(http: &Http, path: &str, within: Duration, done: impl Fn(&Resp) -> bool) -> Resp {
    let deadline = Instant::now() + within;
    loop {
        let r = http.get(path);
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "GET {path} never got there within {within:?}: {} {}", r.status, r.body);
        thread::sleep(Duration::from_millis(10));
    }
}

/// What one reconnect observed: (seq, kind) in arrival order.
fn rejoin_and_read(
    server: &TestServer,
    name: &str,
    room: &str,
    epoch: &str,
    last: u64,
    live_wanted: usize,
) -> (Client, Vec<u64>, Value) {
    let mut c = Client::connect(server, name);
    c.send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":last}}));
    let mut seqs = Vec::new();
    let mut joined = Value::Null;
    let mut live = 0;
    let deadline = Instant::now() + PATIENCE;
    while live < live_wanted {
        assert!(Instant::now() < deadline, "stream stalled after {seqs:?}");
        let v = c.recv();
        match v["type"].as_str() {
            Some("message") if v["room"] == room => {
                seqs.push(v["seq"].as_u64().unwrap());
                if !joined.is_null() {
                    live += 1;
                }
            }
            Some("joined") => joined = v,
            _ => {}
        }
    }
    (c, seqs, joined)
}

#[test]
fn reconnecting_with_since_recovers_exactly_the_missed_messages_then_live_ones() {
    let server = TestServer::with(|c| {
        c.rate_limit = 0;
        c.history_messages = 10_000;
    });
    // Publishers on both shards keep publishing for the whole test.
    let mut pubs = clients_on_both_shards(&server, "pub", 2);
    for p in &mut pubs {
        p.join("feed");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = pubs
        .into_iter()
        .map(|mut p| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0;
                p.ws.get_ref().set_read_timeout(Some(Duration::from_millis(1))).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    p.say("feed", &format!("{} #{n}", p.user));
                    // Drain what comes back so the publisher is never a slow consumer.
                    while p.ws.read().is_ok() {}
                    thread::sleep(Duration::from_millis(3));
                }
            })
        })
        .collect();

    let http = server.http();
    let mut mobile = Client::connect(&server, "mobile");
    let joined = mobile.join("feed");
    let mut epoch = joined["epoch"].as_str().unwrap().to_owned();
    let mut last = joined["seq"].as_u64().unwrap();
    let mut all_seen: Vec<u64> = Vec::new();
    let mut replayed_total = 0;
    for round in 0..25 {
        // Read a few live messages, then drop the connection mid-stream.
        let mut got = 0;
        while got < 3 {
            let v = mobile.recv();
            if v["type"] == "message" && v["room"] == "feed" {
                let seq = v["seq"].as_u64().unwrap();
                assert_eq!(seq, last + 1, "live stream gap in round {round}");
                last = seq;
                all_seen.push(seq);
                got += 1;
            }
        }
        drop(mobile);
        thread::sleep(Duration::from_millis(fastrand::u64(5..60)));
        // Rejoin once the room has moved on, so that every round has something to replay
        // however the host schedules the publishers.
        poll_until(&http, "/stats?room=feed", PATIENCE, |r| r.json()["messages"].as_u64().is_some_and(|m| m > last));
        let (c, seqs, joined) = rejoin_and_read(&server, "mobile", "feed", &epoch, last, 3);
        assert_eq!(joined["recovered"], true, "round {round}: {joined}");
        assert_eq!(joined["epoch"], epoch.as_str());
        let head = joined["seq"].as_u64().unwrap();
        let expected: Vec<u64> = (last + 1..=last + seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "round {round}: replay and live must continue without gap or duplicate");
        assert!(head >= last, "joined.seq is the room's head at the join");
        replayed_total += head - last;
        all_seen.extend(&seqs);
        last = *seqs.last().unwrap();
        epoch = joined["epoch"].as_str().unwrap().to_owned();
        mobile = c;
    }
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        p.join().unwrap();
    }
    let first = all_seen[0];
    assert_eq!(all_seen, (first..first + all_seen.len() as u64).collect::<Vec<_>>(), "every message exactly once");
    assert!(replayed_total >= 25, "messages were really missed and replayed ({replayed_total})");
}

#[test]
fn recovery_refuses_another_epoch_or_a_position_older_than_the_ring() {
    let server = TestServer::with(|c| {
        c.rate_limit = 0;
        c.history_messages = 5;
    });
    let mut talker = Client::connect(&server, "talker");
    let epoch = talker.join("r")["epoch"].as_str().unwrap().to_owned();
    for n in 1..=20 {
        talker.say("r", &format!("m{n}"));
        assert_eq!(talker.expect("message")["seq"], n);
    }
    let mut c = Client::connect(&server, "late");
    c.send(json!({"type":"join","room":"r","since":{"epoch":"0000000000000bad","seq":19}}));
    let j = c.expect("joined");
    assert_eq!((j["recovered"].as_bool(), j["seq"].as_u64()), (Some(false), Some(20)), "another epoch: {j}");
    let mut c = Client::connect(&server, "older");
    c.send(json!({"type":"join","room":"r","since":{"epoch":epoch,"seq":10}}));
    let j = c.expect("joined");
    assert_eq!(j["recovered"], false, "seq 11 is no longer held (only 16..=20)");
    let mut c = Client::connect(&server, "edge");
    c.send(json!({"type":"join","room":"r","since":{"epoch":epoch,"seq":15}}));
    let replay: Vec<u64> = (0..5).map(|_| c.expect("message")["seq"].as_u64().unwrap()).collect();
    assert_eq!(replay, vec![16, 17, 18, 19, 20]);
    assert_eq!(c.expect("joined")["recovered"], true);
    // A bare seq (the original design's form) matches any epoch.
    let mut c = Client::connect(&server, "bare");
    c.send(json!({"type":"join","room":"r","since":19}));
    assert_eq!(c.expect("message")["seq"], 20);
    assert_eq!(c.expect("joined")["recovered"], true);
}

#[test]
fn history_pages_newest_first_with_boundaries_over_ws_and_http() {
    let server = TestServer::with(|c| {
        c.rate_limit = 0;
        c.history_messages = 20;
        c.api_key = Some("history-test-key-0123456789".into());
    });
    let mut c = Client::connect(&server, "reader");
    c.join("log");
    for n in 1..=30 {
        c.say("log", &format!("line {n}"));
        c.expect("message");
    }
    let page = |c: &mut Client, q: Value| -> Vec<u64> {
        c.send(q);
        let h = c.expect("history");
        assert_eq!(h["room"], "log");
        h["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
    };
    assert_eq!(page(&mut c, json!({"type":"history","room":"log","limit":10})), (21..=30).rev().collect::<Vec<_>>());
    assert_eq!(
        page(&mut c, json!({"type":"history","room":"log","before":21,"limit":10})),
        (11..=20).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        page(&mut c, json!({"type":"history","room":"log","before":13,"limit":10})),
        vec![12, 11],
        "the ring holds 11..=30"
    );
    assert!(page(&mut c, json!({"type":"history","room":"log","before":11})).is_empty());
    c.send(json!({"type":"history","room":"log","limit":101}));
    assert_eq!(c.expect("error")["code"], "invalid_field");
    c.send(json!({"type":"history","room":"elsewhere"}));
    assert_eq!(c.expect("error")["code"], "not_member");
    // The messages are the very objects delivered live.
    c.send(json!({"type":"history","room":"log","limit":1}));
    let m = &c.expect("history")["messages"][0];
    assert_eq!(
        (m["type"].as_str(), m["text"].as_str(), m["user"].as_str()),
        (Some("message"), Some("line 30"), Some("reader"))
    );

    let http = server.http();
    let r = http.get("/api/rooms/log/history?before=25&limit=3").json();
    let seqs: Vec<u64> = r["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![24, 23, 22]);
    assert_eq!(http.get("/api/rooms/none/history").status, 404);
    // A private room's history and presence need the API key.
    let mut owner = Client::connect(&server, "owner");
    owner.send(json!({"type":"create","room":"vault","password":"pw"}));
    owner.expect("joined");
    owner.say("vault", "secret");
    owner.expect("message");
    assert_eq!(http.get("/api/rooms/vault/history").status, 403);
    assert_eq!(http.get("/api/rooms/vault/presence").status, 403);
}

#[test]
fn history_never_grows_past_its_memory_caps() {
    let per_room = 4 * 1024;
    let total = 16 * 1024;
    let server = TestServer::with(|c| {
        c.rate_limit = 0;
        c.history_messages = 1000;
        c.history_bytes = per_room;
        c.history_memory = total;
    });
    let mut c = Client::connect(&server, "filler");
    let rooms: Vec<String> = (0..12).map(|i| format!("room-{i}")).collect();
    for r in &rooms {
        c.join(r);
    }
    let http = server.http();
    let text = "y".repeat(200);
    let mut peak = 0;
    for round in 0..20 {
        for r in &rooms {
            c.say(r, &text);
            c.expect("message");
        }
        let h = http.get("/stats").json()["history"].clone();
        let bytes = h["bytes"].as_u64().unwrap() as usize;
        peak = peak.max(bytes);
        assert!(bytes <= total, "round {round}: {bytes} bytes of history over the {total} cap");
    }
    assert!(peak > total / 2, "the cap was really reached ({peak})");
    // The newest messages of a room are what survives.
    c.send(json!({"type":"history","room":"room-11","limit":1}));
    let h = c.expect("history");
    assert_eq!(h["messages"][0]["seq"], 20);
    for r in &rooms {
        c.send(json!({"type":"history","room":r,"limit":100}));
        let n = c.expect("history")["messages"].as_array().unwrap().len();
        assert!(n * 300 <= per_room + 300, "{r}: {n} messages exceed the per-room cap");
    }
}

#[test]
fn an_empty_room_keeps_its_history_for_the_ttl() {
    // Long enough that the rejoin below lands within it on a loaded host; the test waits
    // for it once.
    const TTL: Duration = Duration::from_secs(5);
    let server = TestServer::with(|c| c.history_ttl = TTL);
    let http = server.http();
    let mut a = Client::connect(&server, "a");
    let epoch = a.join("brief")["epoch"].as_str().unwrap().to_owned();
    a.say("brief", "before the gap");
    a.expect("message");
    drop(a);
    // The room is empty once its owner has seen `a` go.
    poll_until(&http, "/stats?room=brief", PATIENCE, |r| r.status == 200 && r.json()["members"] == 0);
    // Within the TTL: same stream, the message is recovered.
    let mut b = Client::connect(&server, "b");
    b.send(json!({"type":"join","room":"brief","since":{"epoch":epoch,"seq":0}}));
    assert_eq!(b.expect("message")["text"], "before the gap");
    let j = b.expect("joined");
    assert_eq!((j["recovered"].as_bool(), j["epoch"].as_str()), (Some(true), Some(epoch.as_str())));
    let emptied = Instant::now();
    drop(b);
    // After the TTL (and a sweep tick): the room is gone, not before; a new stream starts.
    poll_until(&http, "/stats?room=brief", TTL + PATIENCE, |r| r.status == 404);
    assert!(emptied.elapsed() >= TTL, "the room went {:?} after it emptied, before its TTL", emptied.elapsed());
    let mut c = Client::connect(&server, "c");
    c.send(json!({"type":"join","room":"brief","since":{"epoch":epoch,"seq":1}}));
    let j = c.expect("joined");
    assert_eq!((j["recovered"].as_bool(), j["seq"].as_u64()), (Some(false), Some(0)));
    assert_ne!(j["epoch"], epoch.as_str());
}

/// What a client does to catch up on its personal room after being offline: the room
/// cannot be joined (not even with `since`), and `history` returns what was pushed.
#[test]
fn a_personal_room_cannot_be_rejoined_and_offline_pushes_come_back_through_history() {
    let key = "offline-test-key-0123456789";
    let server = TestServer::with(|c| c.api_key = Some(key.into()));
    let http = server.http();
    let mut alice = Client::connect(&server, "alice");
    let r = http.post("/api/publish", Some(key), &json!({"users":["alice"],"text":"first"})).json();
    assert_eq!(r["rooms"], 1);
    let m = alice.expect("message");
    let seq = m["seq"].as_u64().unwrap();
    drop(alice);
    // Offline once the server has seen the connection go.
    poll_until(&http, "/stats", PATIENCE, |r| r.json()["connections"]["websockets"] == 0);
    http.post("/api/publish", Some(key), &json!({"users":["alice"],"text":"while offline"}));
    let mut again = Client::connect(&server, "alice");
    again.send(json!({"type":"join","room":"@user:alice","since":seq}));
    // Personal rooms cannot be joined explicitly, but recovery of them is by `history`.
    assert_eq!(again.expect("error")["code"], "invalid_room");
    again.send(json!({"type":"history","room":"@user:alice","limit":5}));
    let h = again.expect("history");
    let texts: Vec<&str> = h["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["while offline", "first"]);
}

/// A personal room has no joins: the shards tell its owner of a user's first and last
/// connection on them, and the room is made by the first push. It reaches the user's
/// connections on every shard, follows them as they close, and keeps its stream while
/// the user is connected anywhere (and, with history, while it lingers).
#[test]
fn pushes_to_a_user_reach_its_connections_on_every_shard_as_they_come_and_go() {
    let key = "personal-shards-key-0123456789";
    let server = TestServer::with(|c| c.api_key = Some(key.into()));
    let http = server.http();
    // Connections of alice until each shard has one (the kernel's hash places them);
    // extra ones on a shard already covered are closed at once.
    let mut alice: Vec<Client> = Vec::new();
    for _ in 0..200 {
        if alice.len() == 2 {
            break;
        }
        let c = Client::connect(&server, "alice");
        if alice.iter().all(|a| a.shard != c.shard) {
            alice.push(c);
        }
    }
    assert_eq!(alice.len(), 2, "alice has a connection on each shard");
    poll_until(&http, "/stats", PATIENCE, |r| {
        let s = r.json();
        s["connections"]["websockets"] == 2 && s["rooms"]["personal"] == 1
    });
    let push = |text: &str| {
        let r = http.post("/api/publish", Some(key), &json!({"users":["alice"],"text":text})).json();
        assert_eq!(r["rooms"], 1, "{r}");
    };
    push("to both");
    for a in &mut alice {
        let m = a.expect("message");
        assert_eq!((m["text"].as_str(), m["seq"].as_u64()), (Some("to both"), Some(1)));
    }
    // One shard loses its connection: the other still gets every push, in one stream.
    drop(alice.remove(0));
    poll_until(&http, "/stats", PATIENCE, |r| r.json()["connections"]["websockets"] == 1);
    push("to one");
    let m = alice[0].expect("message");
    assert_eq!((m["text"].as_str(), m["seq"].as_u64()), (Some("to one"), Some(2)));
    // The last one closes, alice comes back: the room lingered with its history, so
    // the stream goes on.
    drop(alice.remove(0));
    poll_until(&http, "/stats", PATIENCE, |r| r.json()["connections"]["websockets"] == 0);
    let mut again = Client::connect(&server, "alice");
    push("back");
    let m = again.expect("message");
    assert_eq!((m["text"].as_str(), m["seq"].as_u64()), (Some("back"), Some(3)));
    again.send(json!({"type":"history","room":"@user:alice","limit":5}));
    let texts: Vec<String> = again.expect("history")["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["back", "to one", "to both"]);
}

/// A connected user who was never sent anything has no personal room yet, but may read
/// its (empty) history; another user's personal room stays out of reach.
#[test]
fn a_personal_room_nobody_wrote_to_has_an_empty_history() {
    let server = TestServer::start();
    let mut bob = Client::connect(&server, "bob");
    bob.send(json!({"type":"history","room":"@user:bob","limit":5}));
    let h = bob.expect("history");
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(0), "{h}");
    bob.send(json!({"type":"history","room":"@user:carol","limit":5}));
    assert_eq!(bob.expect("error")["code"], "not_member");
}
