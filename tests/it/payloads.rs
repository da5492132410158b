//! Structured payloads (`data`, `event`, `tags`), volatile messages, `skip_self` and
//! idempotent API publishes, over real WebSocket clients and real HTTP.

use serde_json::{json, Value};
use tungstenite::Message;

use crate::support::{clients_on_both_shards, Client, Flow, TestServer};

const KEY: &str = "test-api-key-0123456789";

/// A `data` value a re-serializing server would change: a number beyond 64 bits, a
/// float written with a trailing zero, `\u` escapes (a surrogate pair among them),
/// whitespace, and key order.
const DATA: &str =
    r#"{"z":12345678901234567890123, "a":1.50,"s":"caf\u00e9 \ud83d\ude00 \"q\"","l":[true,null,{"k":-0}]}"#;

fn with_key() -> TestServer {
    TestServer::with(|c| c.api_key = Some(KEY.to_owned()))
}

/// The next text frame as the server wrote it, skipping control frames.
fn recv_text(c: &mut Client) -> String {
    loop {
        match c.ws.read().expect("read a frame") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next frame other than a presence event, as written and parsed.
fn next_frame(c: &mut Client) -> (String, Value) {
    loop {
        let raw = recv_text(c);
        let v: Value = serde_json::from_str(&raw).unwrap();
        if !matches!(v["type"].as_str(), Some("join" | "leave")) {
            return (raw, v);
        }
    }
}

/// The next `message` frame, as written and parsed, skipping presence events and acks.
fn next_message(c: &mut Client) -> (String, Value) {
    loop {
        let raw = recv_text(c);
        let v: Value = serde_json::from_str(&raw).unwrap();
        match v["type"].as_str() {
            Some("join" | "leave" | "ack") => continue,
            Some("message") => return (raw, v),
            _ => panic!("expected a message, got {raw}"),
        }
    }
}

#[test]
fn data_arrives_byte_for_byte_on_both_shards_in_order_with_text_messages() {
    let server = with_key();
    let mut cs = clients_on_both_shards(&server, "dash", 4);
    for c in &mut cs {
        c.join("scores");
    }
    cs[0].say("scores", "kick-off");
    cs[0].send_raw_text(&format!(r#"{{"type":"message","room":"scores","event":"goal","data":{DATA}}}"#));
    cs[0].send_raw_text(&format!(r#"{{"type":"message","room":"scores","text":"both","data": {DATA} }}"#));
    let spliced = format!(r#""data":{DATA}"#);
    // The client's three messages first: the API publish below must come after them (two
    // senders on two paths have no order of their own until one was sequenced).
    for c in &mut cs {
        let (_, m) = next_message(c);
        assert_eq!((m["seq"].as_u64(), m["text"].as_str()), (Some(1), Some("kick-off")));
        assert!(m.get("data").is_none() && m.get("event").is_none(), "{m}");
        let (raw, m) = next_message(c);
        assert_eq!((m["seq"].as_u64(), m["event"].as_str()), (Some(2), Some("goal")), "{raw}");
        assert!(raw.contains(&spliced), "data not verbatim for {} on shard {}: {raw}", c.user, c.shard);
        assert!(m.get("text").is_none(), "{raw}");
        let (raw, m) = next_message(c);
        assert_eq!((m["seq"].as_u64(), m["text"].as_str()), (Some(3), Some("both")));
        assert!(raw.contains(&spliced), "{raw}");
    }
    let body = format!(r#"{{"room":"scores","event":"tick","data":{DATA},"tags":{{"league":"nba","x":"\u00e9"}}}}"#);
    let r = server.http().post_raw("/api/publish", Some(KEY), &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["seq"], 4);
    for c in &mut cs {
        let (raw, m) = next_message(c);
        assert_eq!((m["seq"].as_u64(), m["user"].as_str()), (Some(4), Some("server")));
        assert!(raw.contains(&spliced), "{raw}");
        assert!(raw.contains(r#""tags":{"league":"nba","x":"\u00e9"}"#), "{raw}");
    }
    // History holds the same bytes.
    cs[1].send(json!({"type":"history","room":"scores"}));
    let raw = loop {
        let raw = recv_text(&mut cs[1]);
        if raw.contains(r#""type":"history""#) {
            break raw;
        }
    };
    assert_eq!(raw.matches(&spliced).count(), 3, "{raw}");
}

#[test]
fn volatile_messages_take_no_seq_and_never_reach_history_or_recovery() {
    let server = with_key();
    let mut cs = clients_on_both_shards(&server, "typer", 2);
    let epoch = cs[0].join("chat")["epoch"].clone();
    cs[1].join("chat");
    cs[0].say("chat", "one");
    cs[0].send(json!({"type":"message","room":"chat","event":"typing","data":{"on":true},"volatile":true,"id":"v1"}));
    cs[0].say("chat", "two");
    let r = server.http().post("/api/publish", Some(KEY), &json!({"room":"chat","data":[1],"volatile":true}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"rooms":1,"shards":2}), "no seq for a volatile publish");
    // The API publish races the client's last message (two senders, two paths), so where
    // it falls among them may differ from run to run; what must hold is each sender's own
    // order, and one order for every member.
    let mut orders = Vec::new();
    let sender = cs[0].user.clone();
    for c in &mut cs {
        let got: Vec<Value> = (0..4).map(|_| next_message(c).1).collect();
        let typer: Vec<&Value> = got.iter().filter(|m| m["user"].as_str() == Some(&*sender)).collect();
        let seqs: Vec<Option<u64>> = typer.iter().map(|m| m["seq"].as_u64()).collect();
        assert_eq!(seqs, [Some(1), None, Some(2)], "the sender's order kept: {got:?}");
        assert_eq!(typer[1]["event"], "typing");
        assert_eq!(typer[1]["data"], json!({"on":true}));
        assert_eq!(typer[1]["volatile"].as_bool(), Some(true));
        assert_eq!(typer[0].get("volatile"), None);
        let api: Vec<&Value> = got.iter().filter(|m| m["user"] == "server").collect();
        assert_eq!(api.len(), 1, "{got:?}");
        assert_eq!((api[0]["volatile"].as_bool(), api[0].get("seq")), (Some(true), None), "{got:?}");
        orders.push(got.iter().map(|m| (m["user"].clone(), m["seq"].clone(), m["data"].clone())).collect::<Vec<_>>());
    }
    assert_eq!(orders[0], orders[1], "one order for every member");
    // A volatile message's ack has no seq.
    cs[0].send(json!({"type":"message","room":"chat","data":0,"volatile":true,"id":"v2"}));
    assert_eq!(cs[0].expect_skipping("ack"), json!({"type":"ack","ref":"v2","room":"chat"}));
    // History: the two sequenced messages only.
    let page = server.http().get("/api/rooms/chat/history").json();
    let texts: Vec<&str> = page["messages"].as_array().unwrap().iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, ["two", "one"], "{page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    // Recovery from the start replays the same two, then `joined`.
    let mut late = Client::connect(&server, "late");
    late.send(json!({"type":"join","room":"chat","since":{"epoch":epoch,"seq":0}}));
    assert_eq!(late.expect("message")["seq"], 1);
    assert_eq!(late.expect("message")["seq"], 2);
    let joined = late.expect("joined");
    assert_eq!((joined["recovered"].as_bool(), joined["seq"].as_u64()), (Some(true), Some(2)));
}

#[test]
fn skip_self_leaves_out_only_the_sending_connection() {
    let server = TestServer::start();
    let mut cs = clients_on_both_shards(&server, "echo", 3);
    // A second connection of the sender's user gets the message: only the connection
    // that sent it is skipped.
    let mut twin = Client::connect(&server, "echo-0");
    for c in cs.iter_mut().chain([&mut twin]) {
        c.join("room");
    }
    cs[0].send(json!({"type":"message","room":"room","text":"not to me","skip_self":true,"id":"s"}));
    cs[0].say("room", "to everyone");
    // The sender's next frames: the ack of the skipped message, then the second one.
    let (raw, ack) = next_frame(&mut cs[0]);
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some(1)), "the ack still comes: {raw}");
    let (_, m) = next_frame(&mut cs[0]);
    assert_eq!((m["seq"].as_u64(), m["text"].as_str()), (Some(2), Some("to everyone")), "its own message skipped");
    for c in cs[1..].iter_mut().chain([&mut twin]) {
        assert_eq!(next_message(c).1["text"], "not to me");
        assert_eq!(next_message(c).1["text"], "to everyone");
    }
}

#[test]
fn bad_payload_fields_are_refused_with_their_error_and_disturb_nobody() {
    let server = TestServer::with(|c| {
        c.api_key = Some(KEY.to_owned());
        c.max_data_bytes = 64;
    });
    let flow = Flow::start(&server, "calm", "name=sender", "name=watcher");
    let mut bad = Client::connect(&server, "bad");
    bad.join("calm");
    let big = format!("[{}]", "1,".repeat(40) + "1");
    let long_event = "e".repeat(65);
    let cases: Vec<(String, &str)> = vec![
        (r#"{"type":"message","room":"calm","id":"r","data":null}"#.into(), "invalid_field"),
        (format!(r#"{{"type":"message","room":"calm","id":"r","data":{big}}}"#), "data_too_large"),
        (format!(r#"{{"type":"message","room":"calm","id":"r","text":"t","event":"{long_event}"}}"#), "invalid_field"),
        (r#"{"type":"message","room":"calm","id":"r","text":"t","event":"a\u0007"}"#.into(), "invalid_field"),
        (r#"{"type":"message","room":"calm","id":"r","text":"t","volatile":"yes"}"#.into(), "invalid_field"),
        (r#"{"type":"message","room":"calm","id":"r","text":"t","skip_self":1}"#.into(), "invalid_field"),
        (r#"{"type":"message","room":"calm","id":"r"}"#.into(), "missing_field"),
        (r#"{"type":"message","room":"calm","id":"r","d\u0061ta":1}"#.into(), "invalid_field"),
        (r#"{"type":"message","room":"calm","id":"r","data":{"a":}}"#.into(), "bad_json"),
    ];
    for (frame, code) in &cases {
        bad.send_raw_text(frame);
        let e = bad.expect_skipping("error");
        assert_eq!(e["code"], *code, "{frame}: {e}");
        if *code != "bad_json" {
            assert_eq!(e["ref"], "r", "{frame}: {e}");
        }
    }
    let http = server.http();
    for (body, status, code, field) in [
        (json!({"room":"calm"}), 400, "bad_request", "text"),
        (json!({"room":"calm","data":null}), 400, "bad_request", "data"),
        (json!({"room":"calm","data":big.clone()}), 400, "data_too_large", "data"),
        (json!({"room":"calm","data":1,"event":""}), 400, "bad_request", "event"),
        (json!({"room":"calm","data":1,"tags":{"k":1}}), 400, "bad_request", "tags"),
        (json!({"room":"calm","data":1,"tags":"x"}), 400, "bad_request", "tags"),
        (json!({"room":"calm","data":1,"volatile":1}), 400, "bad_request", "volatile"),
        (json!({"room":"calm","data":1,"idempotency_key":""}), 400, "bad_request", "idempotency_key"),
    ] {
        let r = http.post("/api/publish", Some(KEY), &body);
        assert_eq!((r.status, r.json()["error"].as_str()), (status, Some(code)), "{body}: {}", r.body);
        assert!(r.json()["message"].as_str().unwrap().contains(field), "{body}: {}", r.body);
    }
    // The connection still works, and the room's stream lost nothing.
    bad.send(json!({"type":"message","room":"calm","data":{"ok":1},"id":"fine"}));
    assert_eq!(bad.expect_skipping("ack")["ref"], "fine");
    flow.finish();
}

#[test]
fn an_idempotent_retry_returns_the_first_answer_and_delivers_once() {
    let server = with_key();
    let mut cs = clients_on_both_shards(&server, "idem", 2);
    for c in &mut cs {
        c.join("news");
    }
    let http = server.http();
    let publish = json!({"room":"news","text":"once","idempotency_key":"k-1"});
    let first = http.post("/api/publish", Some(KEY), &publish);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["seq"], 1);
    for _ in 0..3 {
        let again = http.post("/api/publish", Some(KEY), &publish);
        assert_eq!((again.status, again.json()), (200, first.json()), "a retry answers as the first did");
    }
    // The same key in another room is another publish.
    let mut other = Client::connect(&server, "other");
    other.join("sports");
    let r = http.post("/api/publish", Some(KEY), &json!({"room":"sports","text":"x","idempotency_key":"k-1"}));
    assert_eq!(r.json()["seq"], 1);
    // Users and broadcast targets too.
    let to_users = json!({"users":["idem-0","nobody"],"text":"dm","idempotency_key":"k-2"});
    let a = http.post("/api/publish", Some(KEY), &to_users).json();
    assert_eq!(a, http.post("/api/publish", Some(KEY), &to_users).json());
    let everyone = json!({"broadcast":true,"text":"all","idempotency_key":"k-3"});
    let a = http.post("/api/publish", Some(KEY), &everyone).json();
    assert_eq!(a, http.post("/api/publish", Some(KEY), &everyone).json());
    let r = http.post("/api/publish", Some(KEY), &json!({"room":"news","text":"next"}));
    assert_eq!(r.json()["seq"], 2);
    // Counted: 3 retries of k-1, one of k-2 per user room (2, the offline user's too), one of k-3.
    let metrics = http.get("/metrics").body;
    let replays: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("corecast_idempotent_replays_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(replays, 6, "{metrics}");
    for c in &mut cs {
        // Rooms have different owners, so only each room's own order is fixed; a second
        // "once" would come before "next" in the room's one order.
        let mut expected =
            if c.user == "idem-0" { vec!["all", "dm", "next", "once"] } else { vec!["all", "next", "once"] };
        let mut texts = Vec::new();
        while texts.len() < expected.len() || !texts.iter().any(|t| t == "next") {
            let (_, m) = next_message(c);
            texts.push(m["text"].as_str().unwrap().to_owned());
        }
        texts.sort();
        expected.sort();
        assert_eq!(texts, expected, "{} received each publish once", c.user);
    }
}

#[test]
fn a_websocket_retry_with_an_idempotency_key_is_acked_with_the_first_seq_and_delivered_once() {
    let server = TestServer::start();
    let mut cs = clients_on_both_shards(&server, "wsidem", 3);
    for c in &mut cs {
        c.join("chat");
    }
    let [alice, bob, carol] = &mut cs[..] else { unreachable!() };
    alice.send(json!({"type":"message","room":"chat","text":"once","id":"a1","idempotency_key":"k"}));
    let first = alice.expect_skipping("ack");
    assert_eq!((first["ref"].as_str(), first["seq"].as_u64()), (Some("a1"), Some(1)), "{first}");
    // The retry of a client whose connection dropped before the ack came: answered with
    // the first seq, not sequenced, not delivered again.
    alice.send(json!({"type":"message","room":"chat","text":"once","id":"a2","idempotency_key":"k"}));
    let again = alice.expect_skipping("ack");
    assert_eq!((again["ref"].as_str(), again["seq"].as_u64()), (Some("a2"), Some(1)), "{again}");
    // Keys are the user's own: another member's "k" is another message.
    carol.send(json!({"type":"message","room":"chat","text":"hers","id":"c1","idempotency_key":"k"}));
    assert_eq!(carol.expect_skipping("ack")["seq"], 2);
    alice.send(json!({"type":"message","room":"chat","text":"next","id":"a3"}));
    assert_eq!(alice.expect_skipping("ack")["seq"], 3);
    // A bad key is refused by name and changes nothing.
    alice.send(json!({"type":"message","room":"chat","text":"bad","id":"a4","idempotency_key":""}));
    let e = alice.expect_skipping("error");
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("invalid_field"), Some("a4")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("idempotency_key"), "{e}");
    alice.send(json!({"type":"message","room":"chat","text":"last","id":"a5"}));
    assert_eq!(alice.expect_skipping("ack")["seq"], 4);
    let received: Vec<(u64, String)> = (0..4)
        .map(|_| {
            let (_, m) = next_message(bob);
            (m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap().to_owned())
        })
        .collect();
    let expected = [(1, "once"), (2, "hers"), (3, "next"), (4, "last")].map(|(s, t)| (s, t.to_owned()));
    assert_eq!(received, expected, "bob got each message once, in order");
}
