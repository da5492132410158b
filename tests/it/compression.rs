//! permessage-deflate (`--compression on`) with real clients: the Python `websockets`
//! client (an independent implementation) and raw clients on the server's own codec.
//! A room message is compressed once per shard and decoded identically by deflate and
//! plain members; a decompression bomb is refused with 1009 at bounded memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use corecast::ws::deflate::{Compressor, Inflater};
use corecast::ws::frame::{client_frame, client_frame_with, parse_header_with, Role};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::{skip, ChildServer, TestServer, PATIENCE};

const TEXT: OpCode = OpCode::Data(Data::Text);

fn compressing() -> TestServer {
    TestServer::with(|c| {
        c.compression = true;
        c.compression_min_bytes = 256;
    })
}

/// A client on a raw socket that offers permessage-deflate (or not) and inflates what
/// the server compressed, with the wire crate's codec.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    deflate: bool,
    shard: u64,
}

impl Raw {
    fn connect(addr: SocketAddr, name: &str, deflate: bool) -> Raw {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let ext = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; client_max_window_bits\r\n"
        } else {
            ""
        };
        let req = format!(
            "GET /ws?name={name} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
        );
        stream.write_all(req.as_bytes()).unwrap();
        let mut raw = Raw { stream, buf: Vec::new(), deflate, shard: 0 };
        let head = raw.head();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let agreed = head.contains("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        assert_eq!(agreed, deflate, "{head}");
        let welcome = raw.next_json();
        assert_eq!(welcome["type"], "welcome");
        raw.shard = welcome["shard"].as_u64().unwrap();
        raw
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).expect("read");
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            self.fill();
        }
    }

    /// The next frame: (opcode byte, compressed?, payload as sent).
    fn frame(&mut self) -> (u8, bool, Vec<u8>) {
        loop {
            if let Some(h) = parse_header_with(&self.buf, Role::Client, 1 << 24, self.deflate).unwrap() {
                if self.buf.len() >= h.frame_len() {
                    let op = self.buf[0] & 0x0f;
                    let payload = self.buf[h.header_len..h.frame_len()].to_vec();
                    self.buf.drain(..h.frame_len());
                    return (op, h.rsv1, payload);
                }
            }
            self.fill();
        }
    }

    /// The next text message, inflated when it came compressed; (json, was compressed).
    fn next_message(&mut self) -> (Value, bool) {
        loop {
            let (op, compressed, payload) = self.frame();
            if op != 1 {
                continue;
            }
            let text = if compressed {
                let mut out = Vec::new();
                Inflater::new().inflate(&payload, 1 << 24, &mut out).expect("valid deflate from the server");
                out
            } else {
                payload
            };
            return (serde_json::from_slice(&text).expect("JSON"), compressed);
        }
    }

    fn next_json(&mut self) -> Value {
        self.next_message().0
    }

    fn expect(&mut self, kind: &str) -> (Value, bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (v, z) = self.next_message();
            if v["type"] == kind {
                return (v, z);
            }
            assert!(Instant::now() < deadline, "no {kind}");
        }
    }

    fn send(&mut self, v: &Value) {
        self.stream.write_all(&client_frame(TEXT, true, v.to_string().as_bytes(), [7, 7, 7, 7])).unwrap();
    }

    /// The close code the server sends (skipping everything before it).
    fn close_code(&mut self) -> u16 {
        loop {
            let (op, _, payload) = self.frame();
            if op == 8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// Connects deflate and plain members until both shards have `per_kind` of each kind.
fn members_on_both_shards(addr: SocketAddr, per_kind: usize) -> Vec<Raw> {
    let mut out: Vec<Raw> = Vec::new();
    for i in 0..400 {
        let deflate = i % 2 == 0;
        let c = Raw::connect(addr, &format!("m{i}"), deflate);
        let have = out.iter().filter(|m| m.shard == c.shard && m.deflate == deflate).count();
        if have < per_kind {
            out.push(c);
        }
        if out.len() == 4 * per_kind {
            return out;
        }
    }
    panic!("could not place members on both shards");
}

#[test]
fn a_room_message_is_compressed_once_per_shard_and_decoded_the_same_by_every_member() {
    let server = compressing();
    let mut members = members_on_both_shards(server.addr, 3);
    for m in &mut members {
        m.send(&json!({"type":"join","room":"zipped"}));
        m.expect("joined");
    }
    let text = "{\"price\":101.25,\"symbol\":\"CCST\",\"venue\":\"XNAS\"}".repeat(40);
    members[0].send(&json!({"type":"message","room":"zipped","text":text}));
    for m in &mut members {
        let (msg, compressed) = m.expect("message");
        assert_eq!(msg["text"], text.as_str());
        assert_eq!(compressed, m.deflate, "deflate members get it compressed, the others plain");
    }
    // Twelve members, six of them compressing, on two shards: two compressions.
    let stats = server.http().get("/stats").json();
    let z = &stats["compression"];
    assert_eq!(z["frames"], 2, "{z}");
    assert!(z["bytes_out"].as_u64().unwrap() * 5 < z["bytes_in"].as_u64().unwrap(), "{z}");
    assert!(z["ratio"].as_f64().unwrap() < 0.2, "{z}");
    // Small frames (under --compression-min-bytes) go plain even to deflate members.
    members[1].send(&json!({"type":"message","room":"zipped","text":"short"}));
    for m in &mut members {
        let (msg, compressed) = m.expect("message");
        assert_eq!((msg["text"].as_str(), compressed), (Some("short"), false));
    }
}

#[test]
fn compressed_client_messages_are_inflated_and_the_offer_is_ignored_when_compression_is_off() {
    let server = compressing();
    let mut alice = Raw::connect(server.addr, "alice", true);
    alice.send(&json!({"type":"join","room":"r"}));
    alice.expect("joined");
    let msg = json!({"type":"message","room":"r","text":"zip ".repeat(200)}).to_string();
    let z = Compressor::new(15).frame(TEXT, msg.as_bytes());
    let h = parse_header_with(&z, Role::Client, usize::MAX, true).unwrap().unwrap();
    alice.stream.write_all(&client_frame_with(TEXT, true, true, &z[h.header_len..], [1, 2, 3, 4])).unwrap();
    assert_eq!(alice.expect("message").0["text"], "zip ".repeat(200));

    let plain_server = TestServer::start();
    let c = Raw::connect(plain_server.addr, "bob", false);
    // Offering it to a server without --compression: no extension in the answer.
    let mut offered = TcpStream::connect(plain_server.addr).unwrap();
    offered.set_read_timeout(Some(PATIENCE)).unwrap();
    offered
        .write_all(
            b"GET /ws?name=carol HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        )
        .unwrap();
    let mut head = vec![0u8; 512];
    let n = offered.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 101") && !head.contains("Extensions"), "{head}");
    drop(c);
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

#[test]
fn a_decompression_bomb_is_closed_with_1009_and_costs_no_more_than_the_cap() {
    const CAP: usize = 64 * 1024;
    /// Allowed growth beyond the cap: allocator and inflate state (zlib's ~40 KiB),
    /// page granularity, the test's own connections.
    const SLACK: u64 = 4 << 20;
    let mut cmd = ChildServer::command_with_shards(1);
    cmd.args(["--compression", "on", "--max-message-bytes", &CAP.to_string()]);
    let server = ChildServer::spawn(&mut cmd);
    // 32 MiB of one letter deflates to ~32 KiB: a frame under the cap that inflates
    // to 512 times it.
    let bomb = vec![b'a'; 32 << 20];
    let z = Compressor::new(15).frame(TEXT, &bomb);
    let h = parse_header_with(&z, Role::Client, usize::MAX, true).unwrap().unwrap();
    assert!(h.payload_len < CAP, "the bomb fits one frame ({} bytes)", h.payload_len);
    let wire = client_frame_with(TEXT, true, true, &z[h.header_len..], [9, 8, 7, 6]);
    // Warm up (allocator arenas, the shard's buffers), then measure.
    let mut warm = Raw::connect(server.addr, "warm", true);
    warm.send(&json!({"type":"join","room":"r"}));
    warm.expect("joined");
    let before = rss(server.child.id());
    for i in 0..5 {
        let mut c = Raw::connect(server.addr, &format!("bomber{i}"), true);
        c.stream.write_all(&wire).unwrap();
        assert_eq!(c.close_code(), 1009, "a bomb is refused as too big");
    }
    let after = rss(server.child.id());
    let growth = after.saturating_sub(before);
    eprintln!("decompression bomb: RSS {before} -> {after} bytes (+{growth}; cap {CAP}, slack {SLACK})");
    assert!(growth <= CAP as u64 + SLACK, "RSS grew by {growth} bytes");
    // The server is fine: a new member still gets answers.
    warm.send(&json!({"type":"message","room":"r","text":"still here"}));
    assert_eq!(warm.expect("message").0["text"], "still here");
}

/// The Python `websockets` client's virtualenv (tests/python/.venv, made by .ci/run).
fn python() -> Option<PathBuf> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/.venv/bin/python");
    py.is_file().then_some(py)
}

#[test]
fn python_websockets_clients_with_and_without_deflate_decode_the_same_room_message() {
    let name = "compression::python_websockets_clients_with_and_without_deflate_decode_the_same_room_message";
    let Some(py) = python() else {
        let hint = "tests/python/.venv missing (python3 -m venv tests/python/.venv && \
                    tests/python/.venv/bin/pip install -r tests/python/requirements.txt)";
        return skip(name, hint);
    };
    let server = compressing();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/deflate_members.py");
    let out = Command::new(py).arg(script).arg(server.addr.to_string()).output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(report["ok"], true, "{report}");
    let members = report["members"].as_array().unwrap();
    for shard in 0..2 {
        for deflate in [true, false] {
            assert!(members.iter().any(|m| m["shard"] == shard && m["deflate"] == deflate), "{report}");
        }
    }
    let z = server.http().get("/stats").json()["compression"].clone();
    assert_eq!(z["frames"], 2, "once per shard: {z}");
}
