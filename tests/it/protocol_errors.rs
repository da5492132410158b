//! Bad input: each case gets its documented answer, and a well-behaved member of the
//! same room keeps receiving every message with no gap while it happens.

use serde_json::json;

use crate::support::{client_frame, Client, Raw, TestServer};

/// A room with a sender and a watcher; `check` proves the watcher saw every message so far.
struct Bystanders {
    sender: Client,
    watcher: Client,
    next_seq: u64,
}

impl Bystanders {
    fn new(server: &TestServer) -> Bystanders {
        let mut sender = Client::connect(server, "sender");
        let mut watcher = Client::connect(server, "watcher");
        sender.join("calm");
        watcher.join("calm");
        sender.expect("join");
        Bystanders { sender, watcher, next_seq: 1 }
    }

    /// Sends one message and checks both members get it with the next seq.
    fn check(&mut self) {
        let text = format!("still here {}", self.next_seq);
        self.sender.say("calm", &text);
        for c in [&mut self.sender, &mut self.watcher] {
            let m = c.expect("message");
            assert_eq!((m["seq"].as_u64(), m["text"].as_str()), (Some(self.next_seq), Some(text.as_str())));
        }
        self.next_seq += 1;
    }
}

#[test]
fn bad_messages_get_error_frames_and_the_connection_survives() {
    let server = TestServer::start();
    let mut room = Bystanders::new(&server);
    let mut c = Client::connect(&server, "clumsy");
    c.join("calm");
    room.sender.expect("join");
    room.watcher.expect("join");
    let cases = [
        (r#"{"type":"join","room":"#, "bad_json"),
        ("not json at all", "bad_json"),
        (r#"{"type":"teleport","id":"t1"}"#, "unknown_type"),
        (r#"{"room":"calm"}"#, "missing_field"),
        (r#"{"type":"message","room":"calm"}"#, "missing_field"),
        (r#"{"type":"join"}"#, "missing_field"),
        (r#"{"type":"join","room":42}"#, "invalid_field"),
        (r#"{"type":"join","room":""}"#, "invalid_room"),
        (r#"{"type":"message","room":"elsewhere","text":"x"}"#, "not_member"),
        (r#"{"type":"presence","room":"elsewhere"}"#, "not_member"),
        (r#"[1,2,3]"#, "invalid_field"),
    ];
    for (input, code) in cases {
        c.send_raw_text(input);
        let e = c.expect("error");
        assert_eq!(e["code"], code, "input {input}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        room.check();
        // Still usable: the clumsy client keeps receiving the room too.
        assert_eq!(c.expect("message")["seq"], room.next_seq - 1);
    }
    c.send_raw_text(r#"{"type":"teleport","id":"t1"}"#);
    assert_eq!(c.expect("error")["ref"], "t1");
}

/// One raw misbehaving connection per case: the right close code, nobody else disturbed.
#[test]
fn protocol_violations_close_with_the_right_code() {
    let server = TestServer::with(|c| c.max_message_bytes = 1024);
    let mut room = Bystanders::new(&server);
    let unmasked = {
        let mut f = vec![0x81, 2];
        f.extend_from_slice(b"hi");
        f
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", unmasked, 1002),
        ("bad UTF-8", client_frame(1, true, &[0xc3, 0x28]), 1007),
        ("oversized frame", client_frame(1, true, &[b'a'; 1025]), 1009),
        (
            "oversized fragmented message",
            [client_frame(1, false, &[b'a'; 600]), client_frame(0, true, &[b'a'; 600])].concat(),
            1009,
        ),
        ("binary frame", client_frame(2, true, b"\x00\x01"), 1003),
        ("reserved opcode", client_frame(3, true, b"x"), 1002),
        ("continuation without start", client_frame(0, true, b"x"), 1002),
        ("fragmented ping", client_frame(9, false, b"x"), 1002),
    ];
    for (name, bytes, code) in cases {
        let mut raw = Raw::upgraded(&server, "rogue");
        raw.send(&bytes);
        assert_eq!(raw.expect_close(), code, "{name}");
        room.check();
    }
}

#[test]
fn bad_handshakes_get_http_errors() {
    let server = TestServer::start();
    let mut room = Bystanders::new(&server);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        (format!("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n{key}\r\n"), "426"),
        (format!("GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"), "426"),
        ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_owned(), "400"),
        (format!("POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"), "405"),
        ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(), "404"),
        ("\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n".to_owned(), "400"),
        (format!("GET /ws?name=a%40b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"), "400"),
        (format!("GET /ws HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)), "431"),
    ];
    for (request, status) in cases {
        let mut raw = Raw::connect(&server);
        raw.send(request.as_bytes());
        let response = String::from_utf8_lossy(&raw.read_to_end()).into_owned();
        assert!(response.starts_with(&format!("HTTP/1.1 {status} ")), "{request:?} → {response}");
        assert!(response.contains("\"error\""), "JSON error body: {response}");
        if status == "426" {
            assert!(response.contains("Sec-WebSocket-Version: 13"));
        }
        room.check();
    }
}

#[test]
fn close_handshake_echoes_the_code() {
    let server = TestServer::start();
    let mut raw = Raw::upgraded(&server, "polite");
    let mut payload = 4001u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    raw.send(&client_frame(8, true, &payload));
    assert_eq!(raw.expect_close(), 4001);
    assert!(raw.read_to_end().is_empty(), "server closes the TCP connection after the handshake");
}

#[test]
fn pings_are_answered_with_the_same_payload() {
    let server = TestServer::start();
    let mut raw = Raw::upgraded(&server, "pinger");
    raw.send(&client_frame(9, true, b"abc"));
    assert_eq!(raw.read_frame(), (10, b"abc".to_vec()));
    // Messages right behind a ping in the same write still work.
    raw.send(
        &[client_frame(9, true, b""), client_frame(1, true, json!({"type":"join","room":"x"}).to_string().as_bytes())]
            .concat(),
    );
    assert_eq!(raw.read_frame().0, 10);
    let (op, payload) = raw.read_frame();
    assert_eq!(op, 1);
    assert!(String::from_utf8_lossy(&payload).contains("\"joined\""));
}
