//! Payloads and the server API across cluster nodes (a real `nats-server`, nodes in this
//! process; see `cluster` for the helpers and how the test is skipped without NATS).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use crate::cluster::{nats_binary, node, wait_for, wait_for_cluster, wait_presence, Nats, KEY};
use crate::support::{dial, Client, Dial, TestServer, PATIENCE};

fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = server.http().post(path, Some(KEY), &body);
    (r.status, r.json())
}

/// The next text frame satisfying `want`, as written.
fn raw_where(c: &mut Client, want: impl Fn(&Value) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "{} got no such frame", c.user);
        if let Message::Text(t) = c.ws.read().expect("read") {
            let v: Value = serde_json::from_str(&t).unwrap();
            if want(&v) {
                return t.to_string();
            }
        }
    }
}

/// Reads until both the `ack` of the client's publish and the delivery of `text` came
/// (in either order); returns the ack.
fn ack_and_message(c: &mut Client, text: &str) -> Value {
    let (mut ack, mut delivered) = (None, false);
    while ack.is_none() || !delivered {
        let v = wait_for(c, PATIENCE, |v| v["type"] == "ack" || (v["type"] == "message" && v["text"] == text));
        let v = v.unwrap_or_else(|| panic!("{}: no ack or no {text:?} within {PATIENCE:?}", c.user));
        if v["type"] == "ack" {
            ack = Some(v);
        } else {
            delivered = true;
        }
    }
    ack.unwrap_or_default()
}

#[test]
fn payloads_and_server_side_membership_cross_nodes() {
    let Some(bin) = nats_binary("payloads_and_server_side_membership_cross_nodes") else { return };
    let nats = Nats::start(bin);
    let nodes: Vec<TestServer> = (0..2).map(|i| node(&nats.url(), &format!("p{i}"))).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    wait_for_cluster(&addrs, 2);

    let mut alice = Client::connect(&nodes[0], "alice");
    let mut carol = Client::connect(&nodes[1], "carol");
    let mut bob0 = Client::connect(&nodes[0], "bob");
    let mut bob1 = Client::connect(&nodes[1], "bob");
    alice.join("news");
    carol.join("news");
    wait_presence(&mut alice, "news", &["alice", "carol"], PATIENCE);

    // Server-side subscribe on one node reaches the user's connections on both.
    let (status, v) = post(&nodes[0], "/api/subscribe", json!({"user":"bob","room":"news"}));
    assert_eq!((status, v["connections"].as_u64()), (200, Some(1)), "{v}: this node's count");
    for b in [&mut bob0, &mut bob1] {
        assert!(wait_for(b, PATIENCE, |v| v["type"] == "joined" && v["room"] == "news").is_some(), "{}", b.user);
    }
    wait_presence(&mut carol, "news", &["alice", "bob", "carol"], PATIENCE);

    // `data` from one node's API arrives verbatim on every node.
    let data = r#"{"big":12345678901234567890123,"s":"\u00e9"}"#;
    let body = format!(r#"{{"room":"news","event":"score","data":{data},"tags":{{"k":"v"}}}}"#);
    let r = nodes[1].http().post_raw("/api/publish", Some(KEY), &body);
    assert_eq!(r.status, 200, "{}", r.body);
    for c in [&mut alice, &mut carol, &mut bob0, &mut bob1] {
        let raw = raw_where(c, |v| v["type"] == "message" && v["event"] == "score");
        assert!(raw.contains(&format!(r#""data":{data}"#)), "{}: {raw}", c.user);
        assert!(raw.contains(r#""tags":{"k":"v"}"#), "{raw}");
    }

    // An idempotent retry through the other node (one of the two is the room's sequencer,
    // where the key lives) answers the same seq and delivers nothing again: the next
    // message everyone reads after "once" is the volatile one below, not a second "once".
    let keyed = json!({"room":"news","text":"once","idempotency_key":"cluster-k"});
    let (status, first) = post(&nodes[0], "/api/publish", keyed.clone());
    assert_eq!(status, 200, "{first}");
    let (_, again) = post(&nodes[1], "/api/publish", keyed);
    assert_eq!((again["seq"].as_u64(), again["rooms"].as_u64()), (first["seq"].as_u64(), Some(1)), "{first} {again}");
    for c in [&mut alice, &mut carol, &mut bob0, &mut bob1] {
        assert!(wait_for(c, PATIENCE, |v| v["type"] == "message" && v["text"] == "once").is_some(), "{}", c.user);
    }

    // The same for a WebSocket client resending through the other node, as one that lost
    // its connection before the ack does: the key is the user's, kept where the room is
    // sequenced. A second "ws-once" would be the next message below instead of the
    // volatile one.
    bob0.send(json!({"type":"message","room":"news","text":"ws-once","id":"b0","idempotency_key":"w"}));
    let first = ack_and_message(&mut bob0, "ws-once");
    bob1.send(json!({"type":"message","room":"news","text":"ws-once","id":"b1","idempotency_key":"w"}));
    let again = ack_and_message(&mut bob1, "ws-once");
    assert_eq!((again["ref"].as_str(), again["seq"].as_u64()), (Some("b1"), first["seq"].as_u64()), "{first} {again}");
    for c in [&mut alice, &mut carol] {
        assert!(wait_for(c, PATIENCE, |v| v["type"] == "message" && v["text"] == "ws-once").is_some(), "{}", c.user);
    }

    // A volatile skip_self message from node 1: everyone else gets it, the sender not.
    carol.send(json!({"type":"message","room":"news","data":{"typing":true},"volatile":true,"skip_self":true}));
    carol.send(json!({"type":"message","room":"news","text":"after"}));
    for c in [&mut alice, &mut bob0, &mut bob1] {
        let m = wait_for(c, PATIENCE, |v| v["type"] == "message").unwrap();
        assert_eq!((m["data"].clone(), m.get("seq")), (json!({"typing":true}), None), "{}", c.user);
        assert_eq!(wait_for(c, PATIENCE, |v| v["type"] == "message").unwrap()["text"], "after");
    }
    let m = wait_for(&mut carol, PATIENCE, |v| v["type"] == "message").unwrap();
    assert_eq!(m["text"], "after", "the sender skipped its own volatile message");

    // Unsubscribe on the other node: both of bob's connections get `left`.
    let (status, _) = post(&nodes[1], "/api/unsubscribe", json!({"user":"bob","room":"news"}));
    assert_eq!(status, 200);
    for b in [&mut bob0, &mut bob1] {
        let left = wait_for(b, PATIENCE, |v| v["type"] == "left").unwrap();
        assert_eq!(
            (left["room"].as_str(), left["reason"].as_str()),
            (Some("news"), Some("unsubscribed by the server"))
        );
    }
    wait_presence(&mut alice, "news", &["alice", "carol"], PATIENCE);

    // Disconnect with a ban on node 0 closes bob on node 1 too and bans him there.
    let (status, _) =
        post(&nodes[0], "/api/disconnect", json!({"user":"bob","code":4003,"reason":"ban","ban_secs":60}));
    assert_eq!(status, 200);
    assert_eq!(bob1.expect_close(), 4003);
    assert_eq!(bob0.expect_close(), 4003);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match dial(addrs[1], &Dial { query: "name=bob", ..Dial::default() }) {
            Err(403) => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("bob should be banned on node 1 too, got {:?}", other.map(|c| c.user)),
        }
    }

    // History removal on one node: recovery with the old epoch fails on both.
    carol.send(json!({"type":"join","room":"h"}));
    let epoch = carol.expect_skipping("joined")["epoch"].as_str().unwrap().to_owned();
    carol.say("h", "x");
    carol.expect_skipping("message");
    let (status, v) = post(&nodes[0], "/api/history/remove", json!({"room":"h"}));
    assert_eq!(status, 200, "{v}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let page = nodes[1].http().get("/api/rooms/h/history").json();
        if page["messages"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "history of h never cleared on node 1: {page}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut late = Client::connect(&nodes[1], "late");
    late.send(json!({"type":"join","room":"h","since":{"epoch":epoch,"seq":0}}));
    assert_eq!(late.expect("joined")["recovered"], false);
}
