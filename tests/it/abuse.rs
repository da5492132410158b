//! Bad input, one test per case: each gets its documented answer (docs/SECURITY.md), and
//! in every case a well-behaved member of the same room keeps receiving every message
//! with no gap ([`Flow`]).

use std::io::Read;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{client_frame, dial, Client, Dial, Flow, Raw, TestServer, PATIENCE};

const SECRET: &str = "integration-test-hs256-secret-0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn user_token(sub: &str) -> String {
    hs(json!({"sub": sub, "exp": now() + 600}))
}

fn key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)
}

/// A server that requires tokens (guests refused), with a flow of two token users.
fn jwt_server_with_flow(room: &str, tweak: impl FnOnce(&mut corecast::Config)) -> (TestServer, Flow) {
    let server = TestServer::with(|c| {
        c.jwt_secret = Some(SECRET.into());
        tweak(c);
    });
    let sender = format!("token={}", user_token("sender"));
    let watcher = format!("token={}", user_token("watcher"));
    let flow = Flow::start(&server, room, &sender, &watcher);
    (server, flow)
}

fn guest_server_with_flow(room: &str, tweak: impl FnOnce(&mut corecast::Config)) -> (TestServer, Flow) {
    let server = TestServer::with(tweak);
    let flow = Flow::start(&server, room, "name=sender", "name=watcher");
    (server, flow)
}

fn refused(server: &TestServer, query: &str) -> u16 {
    match dial(server.addr, &Dial { query, ..Dial::default() }) {
        Err(status) => status,
        Ok(_) => panic!("`{query}` should have been refused"),
    }
}

#[test]
fn garbage_token_is_refused_before_the_upgrade() {
    let (server, flow) = jwt_server_with_flow("calm", |_| {});
    assert_eq!(refused(&server, "token=not.a.jwt"), 401);
    assert_eq!(refused(&server, "token="), 401);
    flow.finish();
    assert!(server.http().get("/stats").json()["rejections"]["auth"].as_u64().unwrap() >= 2, "counted");
}

#[test]
fn expired_token_is_refused() {
    let (server, flow) = jwt_server_with_flow("calm", |_| {});
    let expired = hs(json!({"sub":"late","exp": now() - 3600}));
    assert_eq!(refused(&server, &format!("token={expired}")), 401);
    flow.finish();
}

#[test]
fn token_signed_with_another_key_is_refused() {
    let (server, flow) = jwt_server_with_flow("calm", |_| {});
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"mallory","exp": now() + 600}),
        &EncodingKey::from_secret(b"not-the-server-secret-not-the-server"),
    )
    .unwrap();
    assert_eq!(refused(&server, &format!("token={forged}")), 401);
    flow.finish();
}

#[test]
fn alg_none_token_is_refused() {
    let (server, flow) = jwt_server_with_flow("calm", |_| {});
    let b64 = |s: &str| data_encoding::BASE64URL_NOPAD.encode(s.as_bytes());
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"sub":"mallory","exp":now()+600}).to_string())
    );
    assert_eq!(refused(&server, &format!("token={none}")), 401);
    flow.finish();
}

#[test]
fn guests_are_refused_when_a_key_is_configured_unless_allowed() {
    let (server, flow) = jwt_server_with_flow("calm", |_| {});
    assert_eq!(refused(&server, "name=guest"), 401);
    flow.finish();
    let open = TestServer::with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.allow_guests = true;
    });
    assert!(dial(open.addr, &Dial { query: "name=guest", ..Dial::default() }).is_ok());
}

#[test]
fn rs256_and_es256_tokens_work_including_through_the_subprotocol() {
    for (public, private, alg) in
        [("rsa-public.pem", "rsa-private.pem", Algorithm::RS256), ("ec-public.pem", "ec-private.pem", Algorithm::ES256)]
    {
        let server = TestServer::with(|c| c.jwt_public_key = Some(key(public)));
        let pem = std::fs::read(key(private)).unwrap();
        let signing = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let token = encode(&Header::new(alg), &json!({"sub":"asym","name":"Asym","exp":now()+600}), &signing).unwrap();
        let c = dial(server.addr, &Dial { query: &format!("token={token}"), ..Dial::default() }).unwrap();
        assert_eq!(c.user, "asym");
        // Browsers cannot set headers: the token rides in Sec-WebSocket-Protocol.
        let protocols = format!("corecast, bearer.{token}");
        let c = dial(server.addr, &Dial { protocols: Some(&protocols), ..Dial::default() }).unwrap();
        assert_eq!(c.user, "asym");
        // An HS256 token is not accepted by a server holding only a public key.
        assert_eq!(refused(&server, &format!("token={}", user_token("x"))), 401);
    }
}

#[test]
fn room_outside_the_rooms_claim_is_forbidden() {
    let (server, flow) = jwt_server_with_flow("team-blue", |_| {});
    let token = hs(json!({"sub":"limited","exp":now()+600,"rooms":["team-*"]}));
    let mut c = dial(server.addr, &Dial { query: &format!("token={token}"), ..Dial::default() }).unwrap();
    assert_eq!(c.join("team-blue")["room"], "team-blue");
    c.send(json!({"type":"join","room":"secret-plans","id":"j"}));
    let e = c.expect_skipping("error");
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("forbidden"), Some("j")));
    flow.finish();
}

#[test]
fn wrong_room_password_is_refused_and_attempts_are_limited() {
    let server = TestServer::with(|c| c.password_attempts_per_conn = 3);
    let mut owner = Client::connect(&server, "owner");
    owner.send(json!({"type":"create","room":"vault","password":"open sesame"}));
    assert_eq!(owner.expect("joined")["private"], true);
    let join = json!({"type":"join","room":"vault","password":"open sesame"});
    let flow = Flow::start_with(&server, join, "name=sender", "name=watcher");
    let mut thief = Client::connect(&server, "thief");
    thief.send(json!({"type":"join","room":"vault"}));
    assert_eq!(thief.expect_skipping("error")["code"], "password_required");
    for _ in 0..3 {
        thief.send(json!({"type":"join","room":"vault","password":"guess"}));
        assert_eq!(thief.expect_skipping("error")["code"], "wrong_password");
    }
    thief.send(json!({"type":"join","room":"vault","password":"open sesame"}));
    assert_eq!(thief.expect_skipping("error")["code"], "rate_limited", "a fourth attempt within the minute");
    thief.say("vault", "let me in");
    assert_eq!(thief.expect_skipping("error")["code"], "not_member");
    flow.finish();
}

#[test]
fn a_message_flood_is_rate_limited_then_closed_with_1008() {
    let (server, flow) = guest_server_with_flow("calm", |c| {
        c.rate_limit = 20;
        c.rate_burst = 10;
        c.rate_limit_close_after = 50;
    });
    let mut flooder = Client::connect(&server, "flooder");
    flooder.join("calm");
    for n in 0..200 {
        if flooder
            .ws
            .send(tungstenite::Message::text(
                json!({"type":"message","room":"calm","text":format!("spam {n}")}).to_string(),
            ))
            .is_err()
        {
            break;
        }
    }
    let mut limited = 0;
    let code = loop {
        match flooder.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["code"] == "rate_limited" {
                    limited += 1;
                }
            }
            Ok(tungstenite::Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert!(limited >= 40, "rate_limited errors before the close: {limited}");
    assert_eq!(code, 1008);
    flow.finish();
    assert!(server.http().get("/stats").json()["rejections"]["rate_limited"].as_u64().unwrap() >= 50);
}

#[test]
fn an_oversized_frame_closes_with_1009() {
    let (server, flow) = guest_server_with_flow("calm", |c| c.max_message_bytes = 1024);
    let mut raw = Raw::upgraded(&server, "big");
    raw.send(&client_frame(1, true, json!({"type":"join","room":"calm"}).to_string().as_bytes()));
    raw.send(&client_frame(1, true, &vec![b'x'; 2048]));
    assert_eq!(raw.expect_close(), 1009);
    flow.finish();
}

#[test]
fn overlong_text_gets_an_error_and_the_connection_stays() {
    let (server, flow) = guest_server_with_flow("calm", |c| c.max_text_bytes = 100);
    let mut c = Client::connect(&server, "verbose");
    c.join("calm");
    c.send(json!({"type":"message","room":"calm","text":"x".repeat(101),"id":"long"}));
    let e = c.expect_skipping("error");
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("text_too_long"), Some("long")));
    c.say("calm", "short enough");
    assert_eq!(
        c.expect_skipping("message")["text"].as_str().map(|t| t.starts_with("calm") || t == "short enough"),
        Some(true)
    );
    flow.finish();
}

#[test]
fn too_many_rooms_per_connection() {
    let (server, flow) = guest_server_with_flow("calm", |c| c.max_rooms_per_conn = 3);
    let mut c = Client::connect(&server, "collector");
    for r in ["calm", "b", "c"] {
        c.send(json!({"type":"join","room":r}));
    }
    c.send(json!({"type":"join","room":"d"}));
    assert_eq!(c.expect_skipping("error")["code"], "too_many_rooms");
    flow.finish();
}

#[test]
fn too_many_connections_from_one_address_get_503() {
    let (server, flow) = guest_server_with_flow("calm", |c| c.max_connections_per_ip = 3);
    let from_one = |name: &str| {
        dial(server.addr, &Dial { query: &format!("name={name}"), from: Some("127.0.0.1"), ..Dial::default() })
    };
    let mut held: Vec<Client> = (0..3).map(|i| from_one(&format!("n{i}")).unwrap()).collect();
    assert_eq!(from_one("n3").err(), Some(503));
    // Closing one frees its slot.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        match from_one("n4") {
            Ok(c) => break held.push(c),
            Err(503) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(other) => panic!("slot not freed: {other}"),
        }
    }
    flow.finish();
}

#[test]
fn a_slowloris_handshake_is_closed_after_the_handshake_timeout() {
    let (server, flow) = guest_server_with_flow("calm", |c| c.handshake_timeout = Duration::from_secs(1));
    let mut raw = Raw::connect(&server);
    let start = Instant::now();
    raw.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n");
    raw.stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut answer = Vec::new();
    // Drip a header byte every 200 ms, as slowloris does, until the server gives up (if
    // the drip kept the request alive, it would drip until PATIENCE and fail below).
    while start.elapsed() < PATIENCE {
        if std::io::Write::write_all(&mut raw.stream, b"X").is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match raw.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let waited = start.elapsed();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408 "), "{}", String::from_utf8_lossy(&answer));
    assert!(waited >= Duration::from_millis(900) && waited < PATIENCE, "closed after {waited:?}");
    flow.finish();
}

#[test]
fn a_disallowed_origin_is_refused_with_403() {
    let (server, flow) = guest_server_with_flow("calm", |c| c.allowed_origins = vec!["https://chat.example".into()]);
    let bad = dial(server.addr, &Dial { query: "name=x", origin: Some("https://evil.example"), ..Dial::default() });
    assert_eq!(bad.err(), Some(403));
    assert!(
        dial(server.addr, &Dial { query: "name=y", origin: Some("https://chat.example"), ..Dial::default() }).is_ok()
    );
    assert!(dial(server.addr, &Dial { query: "name=z", ..Dial::default() }).is_ok(), "no Origin: not a browser");
    flow.finish();
}

#[test]
fn garbage_bytes_instead_of_http_get_400() {
    let (server, flow) = guest_server_with_flow("calm", |_| {});
    let mut raw = Raw::connect(&server);
    let mut rng = fastrand::Rng::with_seed(7);
    let garbage: Vec<u8> = (0..512).map(|_| rng.u8(..)).collect();
    raw.send(&garbage);
    raw.send(b"\r\n\r\n");
    let answer = String::from_utf8_lossy(&raw.read_to_end()).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    flow.finish();
}

#[test]
fn random_bytes_after_the_handshake_close_the_connection() {
    let (server, flow) = guest_server_with_flow("calm", |_| {});
    for seed in 0..5 {
        let mut raw = Raw::upgraded(&server, &format!("noise{seed}"));
        let mut rng = fastrand::Rng::with_seed(seed);
        let noise: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
        let _ = std::io::Write::write_all(&mut raw.stream, &noise);
        let code = raw.expect_close();
        assert!([1002, 1003, 1007, 1009].contains(&code), "seed {seed}: close {code}");
    }
    flow.finish();
}

#[test]
fn an_expiring_token_closes_with_1008_unless_refreshed() {
    let (server, flow) = jwt_server_with_flow("calm", |c| c.jwt_leeway = 0);
    // `stays` must be refreshed before the tokens expire: a host too slow to do that
    // within a short lifetime tries again with a longer one.
    let (mut ends, mut stays) =
        [2, 8, 20].into_iter().find_map(|life| expiring_pair(&server, life)).expect("refreshed in time");
    assert_eq!(ends.expect_close(), 1008);
    assert_eq!(stays.join("after")["members"], 1, "the refreshed connection lives on");
    flow.finish();
}

/// Connects `ends` and `stays` with tokens expiring `life` seconds from now, then has
/// `stays` refresh (a token of another user first, which is refused). `None` if the
/// tokens expired before that was done; anything else unexpected fails the test.
fn expiring_pair(server: &TestServer, life: u64) -> Option<(Client, Client)> {
    let exp = now() + life;
    let expired = || now() >= exp;
    let connect = |sub: &str| {
        let token = hs(json!({"sub": sub, "exp": exp}));
        match dial(server.addr, &Dial { query: &format!("token={token}"), ..Dial::default() }) {
            Ok(c) => Some(c),
            Err(401) if expired() => None,
            Err(status) => panic!("{sub} refused with {status}"),
        }
    };
    // The next text frame, or `None` if the token expired and the server closed first.
    let reply = |c: &mut Client, refresh: Value| -> Option<Value> {
        let _ = c.ws.send(tungstenite::Message::text(refresh.to_string()));
        loop {
            match c.ws.read() {
                Ok(tungstenite::Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
                Ok(tungstenite::Message::Close(_)) | Err(_) if expired() => return None,
                other => panic!("no answer to a refresh before the token expired: {other:?}"),
            }
        }
    };
    let ends = connect("ends")?;
    let mut stays = connect("stays")?;
    let refused = reply(&mut stays, json!({"type":"refresh","token": user_token("someone-else")}))?;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("invalid_token")));
    let refreshed = reply(&mut stays, json!({"type":"refresh","token": user_token("stays")}))?;
    assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
    assert!(refreshed["exp"].as_u64().unwrap() > now() + 60);
    Some((ends, stays))
}

/// Regression: `rate_limited` errors carried no `ref`, so a client could not tell which
/// of its requests was dropped (the JS client had to time them out).
#[test]
fn every_rate_limited_request_is_named_by_its_ref() {
    let server = TestServer::with(|c| {
        c.rate_limit = 1;
        c.rate_burst = 2;
    });
    let mut c = Client::connect(&server, "hasty");
    c.join("quick");
    // The join used one token of the burst; ten messages at once overflow the rest.
    for i in 0..10 {
        c.send(json!({"type":"message","room":"quick","text":format!("m{i}"),"id":format!("m{i}")}));
    }
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 10 {
        let v = c.recv();
        let kind = v["type"].as_str().unwrap_or_default().to_owned();
        if kind == "ack" || (kind == "error" && v["code"] == "rate_limited") {
            let r = v["ref"].as_str().unwrap_or_else(|| panic!("an answer without ref: {v}")).to_owned();
            assert!(answered.insert(r, kind).is_none(), "one answer per request");
        }
    }
    let limited = answered.values().filter(|k| *k == "error").count();
    assert!(limited >= 1, "some were rate limited: {answered:?}");
    assert_eq!(answered.keys().cloned().collect::<Vec<_>>(), {
        let mut ids: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        ids.sort();
        ids
    });
}
