//! The HTTP surface on the server's one port: health, stats, metrics, the publish API,
//! presence, and HTTP-level errors, with a real HTTP client.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::support::{clients_on_both_shards, Client, Raw, TestServer, PATIENCE};

const KEY: &str = "test-api-key-0123456789";

fn with_key() -> TestServer {
    TestServer::with(|c| c.api_key = Some(KEY.to_owned()))
}

#[test]
fn health_answers_ok_while_serving() {
    let server = TestServer::start();
    let r = server.http().get("/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.json()["status"], "ok");
}

#[test]
fn health_answers_503_while_draining_and_upgrades_are_refused() {
    // The grace period must outlast the checks below on a slow host; it is what the
    // test waits for at the end.
    let server = TestServer::with(|c| c.drain_grace = Duration::from_secs(5));
    let mut client = Client::connect(&server, "stays");
    server.begin_shutdown();
    // The shutdown reaches the shards by message: wait for /health to say so.
    let deadline = std::time::Instant::now() + PATIENCE;
    let r = loop {
        let r = server.http().get("/health");
        if r.status != 200 || std::time::Instant::now() >= deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "draining");
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    let refused = tungstenite::client(format!("ws://{}/ws?name=late", server.addr), stream);
    match refused {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => assert_eq!(resp.status(), 503),
        other => panic!("upgrade during drain should get 503, got {:?}", other.map(|_| ())),
    }
    // Existing clients keep being served during the grace period, then get 1001.
    assert_eq!(client.join("still-works")["members"], 1);
    assert_eq!(client.expect_close(), 1001);
}

#[test]
fn stats_report_connections_rooms_and_messages() {
    let server = TestServer::start();
    let mut cs = clients_on_both_shards(&server, "s", 4);
    for c in &mut cs[..3] {
        c.join("big");
    }
    cs[3].join("small");
    cs[0].say("big", "one");
    cs[0].say("big", "two");
    for c in &mut cs[..3] {
        // Skip presence events; wait for both messages.
        let mut got = 0;
        while got < 2 {
            if c.recv()["type"] == "message" {
                got += 1;
            }
        }
    }
    let http = server.http();
    let s = http.get("/stats").json();
    assert_eq!(s["shards"], 2);
    assert_eq!(s["connections"]["websockets"], 4);
    let per_shard: Vec<u64> =
        s["connections"]["per_shard"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(per_shard.len(), 2);
    assert!(per_shard.iter().all(|n| *n >= 1), "both shards serve someone: {per_shard:?}");
    assert_eq!(per_shard.iter().sum::<u64>(), s["connections"]["now"].as_u64().unwrap());
    assert!(s["connections"]["total"].as_u64().unwrap() >= 4);
    assert_eq!(s["rooms"]["public"], 2);
    assert_eq!(s["rooms"]["personal"], 4);
    assert_eq!(s["messages"]["in"], 6, "4 joins + 2 messages");
    assert_eq!(s["messages"]["published"], 2);
    assert_eq!(s["messages"]["deliveries"].as_u64().unwrap(), 2 * 3 + (1 + 2), "2 messages × 3 members + join events");
    let list = s["room_list"].as_array().unwrap();
    assert_eq!(list[0]["room"], "big", "largest first");
    assert_eq!((list[0]["members"].as_u64(), list[0]["messages"].as_u64()), (Some(3), Some(2)));
    assert!(list[0]["created_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(s["fanout_latency_us"]["count"].as_u64().unwrap() >= 2);

    assert_eq!(http.get("/stats?limit=1").json()["room_list"].as_array().unwrap().len(), 1);
    let one = http.get("/stats?room=small");
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["members"], 1);
    assert_eq!(http.get("/stats?room=nowhere").status, 404);
}

#[test]
fn metrics_are_valid_prometheus_exposition() {
    let server = TestServer::start();
    let mut cs = clients_on_both_shards(&server, "m", 2);
    cs[0].join("r");
    cs[1].join("r");
    cs[0].say("r", "x");
    // Published and fanned out once both members have it (the first one also gets the
    // second one's join event first).
    for c in &mut cs {
        assert_eq!(c.expect_skipping("message")["text"], "x");
    }
    let r = server.http().get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/openmetrics-text"), "{}", r.content_type);
    let lines = r.body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a real parser accepts the exposition");
    let sum_by = |name: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    // Upgrades since start include the extra clients placement tried; all are counted.
    assert!(sum_by("corecast_upgrades_total") >= 2.0);
    assert_eq!(sum_by("corecast_messages_published_total"), 1.0);
    assert_eq!(sum_by("corecast_websockets"), 2.0);
    let shards: Vec<&str> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "corecast_websockets")
        .filter_map(|s| s.labels.get("shard"))
        .collect();
    assert_eq!(shards.len(), 2, "one sample per shard");
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "corecast_fanout_latency_seconds")
        .expect("fan-out latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else { panic!("not a histogram: {:?}", hist.value) };
    // Buckets are cumulative: never decreasing, +Inf holding every observation (one per
    // delivered message and shard with members, here at least one).
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "cumulative buckets: {buckets:?}");
    let inf = buckets.last().expect("buckets");
    assert!(inf.less_than.is_infinite() && inf.count >= 1.0, "+Inf bucket: {buckets:?}");
    let count = scrape.samples.iter().find(|s| {
        s.metric == "corecast_fanout_latency_seconds_count" && s.labels.get("shard") == hist.labels.get("shard")
    });
    if let Some(prometheus_parse::Value::Untyped(n) | prometheus_parse::Value::Counter(n)) = count.map(|c| &c.value) {
        assert_eq!(*n, inf.count, "+Inf bucket equals _count");
    }
    assert!(scrape.docs.contains_key("corecast_fanout_latency_seconds"));
}

#[test]
fn publish_is_disabled_without_a_key_and_refuses_bad_credentials() {
    let off = TestServer::start();
    let r = off.http().post("/api/publish", Some(KEY), &json!({"room":"r","text":"hi"}));
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("disabled")));

    let server = with_key();
    let http = server.http();
    let body = json!({"room":"r","text":"hi"});
    let missing = http.post("/api/publish", None, &body);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(http.post("/api/publish", Some("wrong-key-wrong-key"), &body).status, 401);
    assert_eq!(http.get("/stats").json()["rejections"]["auth"], 2);
    let bad = http.post("/api/publish", Some(KEY), &json!({"room":"r"}));
    assert_eq!((bad.status, bad.json()["error"].as_str()), (400, Some("bad_request")));
    assert_eq!(http.get("/api/publish").status, 405);
}

#[test]
fn publish_to_a_room_reaches_members_on_both_shards_in_sequence() {
    let server = with_key();
    let mut cs = clients_on_both_shards(&server, "room", 3);
    for i in 0..cs.len() {
        cs[i].join("news");
        for c in &mut cs[..i] {
            c.expect("join");
        }
    }
    cs[0].say("news", "from a client");
    for c in &mut cs {
        assert_eq!(c.expect("message")["seq"], 1);
    }
    let r = server.http().post("/api/publish", Some(KEY), &json!({"room":"news","text":"from the API","user":"bot"}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"seq":2,"rooms":1,"shards":2}));
    for c in &mut cs {
        let m = c.expect("message");
        assert_eq!(
            (m["seq"].as_u64(), m["user"].as_str(), m["text"].as_str()),
            (Some(2), Some("bot"), Some("from the API"))
        );
    }
    let nobody = server.http().post("/api/publish", Some(KEY), &json!({"room":"empty","text":"x"}));
    assert_eq!(nobody.json(), json!({"rooms":0,"shards":0}));
}

#[test]
fn publish_to_users_reaches_only_their_connections() {
    let server = with_key();
    let mut alice1 = Client::connect(&server, "alice");
    let mut alice2 = Client::connect(&server, "alice");
    let mut bob = Client::connect(&server, "bob");
    let mut carol = Client::connect(&server, "carol");
    let r = server.http().post("/api/publish", Some(KEY), &json!({"users":["alice","bob","nobody"],"text":"psst"}));
    assert_eq!(r.status, 200);
    let out = r.json();
    assert_eq!(out["rooms"], 2, "alice and bob are online, nobody is not: {out}");
    for c in [&mut alice1, &mut alice2] {
        let m = c.expect("message");
        assert_eq!(
            (m["room"].as_str(), m["text"].as_str(), m["user"].as_str()),
            (Some("@user:alice"), Some("psst"), Some("server"))
        );
    }
    assert_eq!(bob.expect("message")["room"], "@user:bob");
    // Carol got nothing: a push to her sent afterwards is the first thing she receives.
    let r = server.http().post("/api/publish", Some(KEY), &json!({"users":["carol"],"text":"marker"}));
    assert_eq!(r.json()["rooms"], 1);
    assert_eq!(carol.expect("message")["text"], "marker", "carol received nothing before the marker");
}

#[test]
fn broadcast_reaches_every_connection() {
    let server = with_key();
    let mut cs = clients_on_both_shards(&server, "all", 3);
    cs[0].join("somewhere");
    for round in 1..=2u64 {
        let r = server.http().post(
            "/api/publish",
            Some(KEY),
            &json!({"broadcast":true,"text":format!("attention {round}")}),
        );
        assert_eq!(r.json()["seq"], round);
        assert_eq!(r.json()["shards"], 2);
        for c in &mut cs {
            let m = c.expect("message");
            assert_eq!((m["room"].as_str(), m["seq"].as_u64()), (Some("@all"), Some(round)));
        }
    }
}

#[test]
fn room_presence_api_pages_and_404s() {
    let server = TestServer::start();
    let mut cs: Vec<Client> = ["dave", "alice", "carol", "bob"].iter().map(|n| Client::connect(&server, n)).collect();
    for c in &mut cs {
        c.join("café lounge");
    }
    let http = server.http();
    let p = http.get("/api/rooms/caf%C3%A9%20lounge/presence?limit=3");
    assert_eq!(p.status, 200);
    assert_eq!(p.json(), json!({"room":"café lounge","count":4,"users":["alice","bob","carol"],"next":"carol"}));
    let p2 = http.get("/api/rooms/caf%C3%A9%20lounge/presence?limit=3&after=carol").json();
    assert_eq!(p2["users"], json!(["dave"]));
    assert_eq!(http.get("/api/rooms/nowhere/presence").status, 404);
}

#[test]
fn http_errors_keep_alive_and_pipelining() {
    let server = TestServer::with(|c| c.max_request_body = 1024);
    let http = server.http();
    let nf = http.get("/nope");
    assert_eq!((nf.status, nf.json()["error"].as_str()), (404, Some("not_found")));
    let r = http.post("/stats", None, &json!({}));
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let big = http.post("/api/publish", None, &json!({"text": "x".repeat(2000)}));
    assert_eq!(big.status, 413);
    assert!(http.get("/").body.contains("<html"));

    // Two pipelined requests on one connection, answered in order; then a third.
    let mut raw = Raw::connect(&server);
    raw.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nHEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let first = raw.read_http_head();
    assert!(first.starts_with("HTTP/1.1 200 ") && first.contains("Connection: keep-alive"), "{first}");
    let len: usize = header_value(&first, "content-length").parse().unwrap();
    let mut body = vec![0u8; len];
    std::io::Read::read_exact(&mut raw.stream, &mut body).unwrap();
    let second = raw.read_http_head();
    assert!(second.starts_with("HTTP/1.1 200 "), "HEAD answered after GET: {second}");
    // HEAD tells the length and sends no body: the third answer's head follows at once.
    // The length is the GET's within a digit, not equal: `uptime_ms` may have gained one
    // between the two answers (regression: 51 against 52 bytes on a busy host).
    let head_len: usize = header_value(&second, "content-length").parse().unwrap();
    assert!(head_len.abs_diff(len) <= 1, "HEAD tells the length: {head_len} for GET's {len}");
    raw.send(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let third = String::from_utf8_lossy(&raw.read_to_end()).into_owned();
    assert!(
        third.starts_with("HTTP/1.1 200 ") && third.contains("Connection: close") && third.contains("\"shards\":2"),
        "{third}"
    );

    // Garbage and chunked bodies are refused and the connection is closed.
    let mut raw = Raw::connect(&server);
    raw.send(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(String::from_utf8_lossy(&raw.read_to_end()).starts_with("HTTP/1.1 501 "));
}

fn header_value(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_default()
}

#[test]
fn stats_counts_are_consistent_with_what_clients_saw() {
    let server = TestServer::start();
    let mut cs = [Client::connect(&server, "c1"), Client::connect(&server, "c2")];
    cs[0].send(json!({"type":"nope"}));
    cs[0].expect("error");
    cs[1].join("r");
    let s = server.http().get("/stats").json();
    let counters: HashMap<String, u64> =
        s["counters"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect();
    assert_eq!(counters["client_errors"], 1);
    assert_eq!(counters["upgrades_total"], 2);
    assert_eq!(counters["messages_in"], 2);
    assert_eq!(s["rejections"]["client_errors"], 1);
}
