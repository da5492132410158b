//! The operator side of the server API over real HTTP, seen by real WebSocket clients:
//! batch, disconnect and ban, server-side subscribe/unsubscribe, history removal, the
//! room list and info, and their refusals.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{dial, Client, Dial, Flow, Http, TestServer, PATIENCE};

const KEY: &str = "test-api-key-0123456789";

fn with_key() -> TestServer {
    TestServer::with(|c| c.api_key = Some(KEY.to_owned()))
}

fn post(http: &Http, path: &str, body: Value) -> (u16, Value) {
    let r = http.post(path, Some(KEY), &body);
    (r.status, r.json())
}

/// Two connections of user `name`, on different shards.
fn twins(server: &TestServer, name: &str) -> (Client, Client) {
    let first = Client::connect(server, name);
    for _ in 0..200 {
        let second = Client::connect(server, name);
        if second.shard != first.shard {
            return (first, second);
        }
    }
    panic!("no second connection on the other shard");
}

/// Polls `path` until `done` holds (bounded by PATIENCE).
fn poll_until(http: &Http, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = http.get(path).json();
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_batch_answers_every_command_in_order_and_a_failure_stops_nothing() {
    let server = with_key();
    let mut member = Client::connect(&server, "reader");
    member.join("b");
    let big = "12345678901234567890123";
    let body = format!(
        r#"{{"commands":[
            {{"method":"publish","params":{{"room":"b","data":{{"n":{big}}}}}}},
            {{"method":"subscribe","params":{{"user":"reader","room":"@bad"}}}},
            {{"method":"dance","params":{{}}}},
            {{"method":"publish","params":{{"room":"b","text":"after"}}}}
        ]}}"#
    );
    let r = server.http().post_raw("/api/batch", Some(KEY), &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let replies = r.json()["replies"].as_array().unwrap().clone();
    let statuses: Vec<u64> = replies.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 400, 400, 200], "{replies:?}");
    assert_eq!((replies[0]["body"]["seq"].as_u64(), replies[3]["body"]["seq"].as_u64()), (Some(1), Some(2)));
    assert!(replies[1]["body"]["message"].as_str().unwrap().contains("room"), "{replies:?}");
    assert!(replies[2]["body"]["message"].as_str().unwrap().contains("method"), "{replies:?}");
    // The data of a batched publish is verbatim too.
    let raw = loop {
        match member.ws.read().unwrap() {
            tungstenite::Message::Text(t) if t.contains("\"message\"") => break t.to_string(),
            _ => continue,
        }
    };
    assert!(raw.contains(&format!(r#""data":{{"n":{big}}}"#)), "{raw}");
    assert_eq!(member.expect("message")["text"], "after");
    for bad in [json!({}), json!({"commands":[]}), json!({"commands":"x"})] {
        let (status, v) = post(&server.http(), "/api/batch", bad.clone());
        assert_eq!((status, v["error"].as_str()), (400, Some("bad_request")), "{bad}");
        assert!(v["message"].as_str().unwrap().contains("commands"), "{bad}: {v}");
    }
}

#[test]
fn disconnect_closes_every_connection_of_the_user_and_a_ban_refuses_upgrades() {
    let server = with_key();
    let flow = Flow::start(&server, "calm", "name=sender", "name=watcher");
    let (mut a, mut b) = twins(&server, "bob");
    let mut alice = Client::connect(&server, "alice");
    let http = server.http();
    let (status, v) = post(&http, "/api/disconnect", json!({"user":"bob","code":4001,"reason":"kicked","ban_secs":60}));
    assert_eq!((status, v), (200, json!({"connections":2,"refused":0})));
    for c in [&mut a, &mut b] {
        let deadline = Instant::now() + PATIENCE;
        let frame = loop {
            match c.ws.read() {
                Ok(tungstenite::Message::Close(Some(f))) => break f,
                Ok(_) if Instant::now() < deadline => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4001, "kicked"));
    }
    // Banned: the guest name is refused at the upgrade, on every shard.
    for _ in 0..4 {
        assert_eq!(dial(server.addr, &Dial { query: "name=bob", ..Dial::default() }).err(), Some(403));
    }
    // Nobody else was touched.
    assert_eq!(alice.join("still")["members"], 1);
    // Unknown users are not an error: nobody was reached.
    assert_eq!(post(&http, "/api/disconnect", json!({"user":"nobody"})), (200, json!({"connections":0,"refused":0})));
    // One connection by its `welcome.conn`.
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{}/ws?name=carol", server.addr), stream).unwrap();
    let welcome: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    let (status, v) = post(&http, "/api/disconnect", json!({"conn":welcome["conn"],"code":4999}));
    assert_eq!((status, v["connections"].as_u64()), (200, Some(1)));
    let code = loop {
        match ws.read().unwrap() {
            tungstenite::Message::Close(Some(f)) => break u16::from(f.code),
            _ => continue,
        }
    };
    assert_eq!(code, 4999);
    // Refusals name the field and change nothing.
    for (body, field) in [
        (json!({"code":4001}), "user"),
        (json!({"user":"alice","code":1000}), "code"),
        (json!({"user":"alice","reason":"r".repeat(124)}), "reason"),
        (json!({"conn":"x","ban_secs":5}), "ban_secs"),
        (json!({"user":"alice","ban_secs":"long"}), "ban_secs"),
    ] {
        let (status, v) = post(&http, "/api/disconnect", body.clone());
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    assert_eq!(alice.join("still-here")["members"], 1);
    assert_eq!(http.post("/api/disconnect", None, &json!({"user":"alice"})).status, 401);
    flow.finish();
}

#[test]
fn server_side_subscribe_and_unsubscribe_reach_every_connection_of_the_user() {
    let server = TestServer::with(|c| {
        c.api_key = Some(KEY.to_owned());
        c.max_rooms_per_conn = 2;
    });
    let (mut a, mut b) = twins(&server, "bob");
    let mut alice = Client::connect(&server, "alice");
    alice.join("news");
    let http = server.http();
    assert_eq!(
        post(&http, "/api/subscribe", json!({"user":"bob","room":"news"})),
        (200, json!({"connections":2,"refused":0}))
    );
    for c in [&mut a, &mut b] {
        assert_eq!(c.expect("joined")["room"], "news");
    }
    // A second subscribe is a no-op for connections already in the room.
    assert_eq!(post(&http, "/api/subscribe", json!({"user":"bob","room":"news"})).1["connections"], 0);
    let (_, v) = post(&http, "/api/publish", json!({"room":"news","text":"hello"}));
    assert_eq!(v["seq"], 1);
    for c in [&mut a, &mut b] {
        assert_eq!(c.expect_skipping("message")["text"], "hello");
    }
    // The per-connection room cap holds: `a` joins one more room itself, then is full.
    a.join("own");
    assert_eq!(
        post(&http, "/api/subscribe", json!({"user":"bob","room":"third"})),
        (200, json!({"connections":1,"refused":1}))
    );
    assert_eq!(b.expect("joined")["room"], "third");
    // Private rooms are joined with their password only.
    alice.send(json!({"type":"create","room":"vault","password":"pw-123456"}));
    alice.expect_skipping("joined");
    let (status, v) = post(&http, "/api/subscribe", json!({"user":"bob","room":"vault"}));
    assert_eq!((status, v["error"].as_str()), (403, Some("forbidden")));
    // Unsubscribe: every connection gets `left` with the reason.
    assert_eq!(
        post(&http, "/api/unsubscribe", json!({"user":"bob","room":"news"})),
        (200, json!({"connections":2,"refused":0}))
    );
    for c in [&mut a, &mut b] {
        let left = c.expect_skipping("left");
        assert_eq!(
            (left["room"].as_str(), left["reason"].as_str()),
            (Some("news"), Some("unsubscribed by the server"))
        );
    }
    let p = poll_until(&http, "/api/rooms/news/presence", |v| v["users"] == json!(["alice"]));
    assert_eq!(p["users"], json!(["alice"]), "bob left the room on every shard");
    // Unknown user, bad input.
    assert_eq!(
        post(&http, "/api/unsubscribe", json!({"user":"ghost","room":"news"})).1,
        json!({"connections":0,"refused":0})
    );
    for (path, body, field) in [
        ("/api/subscribe", json!({"room":"news"}), "user"),
        ("/api/subscribe", json!({"user":"bob","room":""}), "room"),
        ("/api/unsubscribe", json!({"user":"bob","room":"@user:bob"}), "room"),
        ("/api/unsubscribe", json!({"user":["bob"],"room":"news"}), "user"),
    ] {
        let (status, v) = post(&http, path, body.clone());
        assert_eq!(status, 400, "{path} {body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{path} {body}: {v}");
    }
}

#[test]
fn history_remove_starts_a_new_epoch() {
    let server = with_key();
    let mut alice = Client::connect(&server, "alice");
    let epoch = alice.join("h")["epoch"].as_str().unwrap().to_owned();
    for t in ["1", "2", "3"] {
        alice.say("h", t);
        alice.expect("message");
    }
    let http = server.http();
    let (status, v) = post(&http, "/api/history/remove", json!({"room":"h"}));
    assert_eq!(status, 200, "{v}");
    let fresh = v["epoch"].as_str().unwrap().to_owned();
    assert_ne!(fresh, epoch);
    assert_eq!(http.get("/api/rooms/h/history").json()["messages"], json!([]));
    let mut late = Client::connect(&server, "late");
    late.send(json!({"type":"join","room":"h","since":{"epoch":epoch,"seq":1}}));
    let joined = late.expect("joined");
    assert_eq!((joined["recovered"].as_bool(), joined["epoch"].as_str()), (Some(false), Some(fresh.as_str())));
    // Live members carry on: the seq goes on, the new stream's history fills again.
    alice.say("h", "4");
    assert_eq!(late.expect_skipping("message")["seq"], 4);
    assert_eq!(http.get("/api/rooms/h/history").json()["messages"].as_array().unwrap().len(), 1);
    let (status, v) = post(&http, "/api/history/remove", json!({"room":"nowhere"}));
    assert_eq!((status, v["error"].as_str()), (404, Some("no_such_room")));
    let (status, v) = post(&http, "/api/history/remove", json!({"room":5}));
    assert!(status == 400 && v["message"].as_str().unwrap().contains("room"), "{v}");
}

#[test]
fn rooms_are_listed_by_prefix_in_pages_and_info_describes_the_server() {
    let server = with_key();
    let mut cs: Vec<Client> = (0..3).map(|i| Client::connect(&server, &format!("u{i}"))).collect();
    cs[0].join("team-a");
    cs[1].join("team-a");
    cs[2].join("team-b");
    cs[2].join("other");
    let http = server.http();
    let page = |q: &str| {
        let r = http.get_with_key(&format!("/api/rooms{q}"), KEY);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let first = page("?prefix=team-&limit=1");
    assert_eq!(first["rooms"].as_array().unwrap().len(), 1);
    assert_eq!((first["rooms"][0]["room"].as_str(), first["rooms"][0]["members"].as_u64()), (Some("team-a"), Some(2)));
    assert_eq!(first["next"], "team-a");
    let second = page("?prefix=team-&limit=1&after=team-a");
    assert_eq!(second["rooms"][0]["room"], "team-b");
    assert!(second.get("next").is_none(), "{second}");
    let all = page("");
    let names: Vec<&str> = all["rooms"].as_array().unwrap().iter().map(|r| r["room"].as_str().unwrap()).collect();
    assert_eq!(names, ["other", "team-a", "team-b"], "personal rooms are not listed");
    assert_eq!(http.get("/api/rooms").status, 401);
    let info = http.get_with_key("/api/info", KEY).json();
    assert_eq!(
        (info["shards"].as_u64(), info["connections"].as_u64(), info["nodes"].as_u64()),
        (Some(2), Some(3), Some(1))
    );
    assert!(info["version"].as_str().is_some_and(|v| !v.is_empty()));
}

#[test]
fn refused_commands_change_nothing_and_disturb_nobody() {
    let server = with_key();
    let flow = Flow::start(&server, "calm", "name=sender", "name=watcher");
    let http = server.http();
    for (path, body, field) in [
        ("/api/subscribe", json!({"user":"watcher","room":"@user:x"}), "room"),
        ("/api/subscribe", json!({"user":"watcher"}), "room"),
        ("/api/unsubscribe", json!({"user":"watcher","room":5}), "room"),
        ("/api/unsubscribe", json!({"user":"","room":"calm"}), "user"),
        ("/api/history/remove", json!({"room":"@all"}), "room"),
        ("/api/disconnect", json!({"user":"watcher","code":3000}), "code"),
        ("/api/batch", json!({"commands":[{"method":"publish","params":{"room":"calm"}}]}), "text"),
        ("/api/batch", json!({"commands":"all"}), "commands"),
    ] {
        let r = http.post(path, Some(KEY), &body);
        let v = r.json();
        // A batch answers 200 and reports the refusal per command.
        let refusal = if path == "/api/batch" && r.status == 200 { v["replies"][0]["body"].clone() } else { v.clone() };
        assert!(r.status == 400 || refusal["error"] == "bad_request", "{path} {body}: {}", r.body);
        assert!(refusal["message"].as_str().unwrap().contains(field), "{path} {body}: {}", r.body);
    }
    // The watcher is still in the room and its history is intact.
    let p = http.get("/api/rooms/calm/presence").json();
    assert_eq!(p["users"], json!(["sender", "watcher"]), "{p}");
    flow.finish();
    assert!(!http.get("/api/rooms/calm/history").json()["messages"].as_array().unwrap().is_empty());
}
