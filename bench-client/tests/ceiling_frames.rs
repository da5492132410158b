//! The ceiling probe's frames, read the way bench-client reads corecast's: the probe
//! (crate `corecast-ceiling`) must produce corecast's exact JSON shapes, and bench-client's
//! `scan()` must find in them what it finds in corecast's. Lives here because it checks the
//! probe against bench-client's reader, and the probe depends on nothing of bench-client.

#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;

use bench_client::scan::scan;
use corecast_ceiling::wire::{close, joined, message, welcome};
use corecast_wire::ws::reader::{Message, MessageReader};

/// Decodes server frames as bench-client does, returning the text payloads.
fn texts(mut wire: Vec<u8>) -> Vec<String> {
    let mut reader = MessageReader::new(corecast_wire::ws::frame::Role::Client, 1 << 20);
    let mut out = Vec::new();
    reader
        .feed(&mut wire, |m| {
            match m {
                Message::Text(t) => out.push(String::from_utf8(t.to_vec()).unwrap()),
                Message::Close(c) => out.push(format!("close {}", c.unwrap().0)),
                _ => panic!("unexpected frame"),
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(reader.buffered(), 0);
    out
}

#[test]
fn frames_have_corecasts_shapes_and_scan_like_corecasts() {
    let mut wire = Vec::new();
    welcome("t-u1", "c0-1", 1, &mut wire);
    joined(b"t-3", 12, 118, "a3f0c2d4e5b61789", &mut wire);
    let text = "b:0:1:2:3:4:".to_owned() + &"x".repeat(300);
    message(b"t-3", 119, b"t-u1", text.as_bytes(), 1_763_800_000_123, &mut wire);
    close(1000, &mut wire);
    let t = texts(wire);
    assert_eq!(t[0], r#"{"type":"welcome","user":"t-u1","conn":"c0-1","shard":1}"#);
    assert_eq!(t[1], r#"{"type":"joined","room":"t-3","members":12,"seq":118,"epoch":"a3f0c2d4e5b61789"}"#);
    assert_eq!(
        t[2],
        format!(r#"{{"type":"message","room":"t-3","seq":119,"user":"t-u1","text":"{text}","ts":1763800000123}}"#)
    );
    assert_eq!(t[3], "close 1000");
    assert_eq!(scan(t[0].as_bytes()).unwrap().kind, b"welcome");
    let j = scan(t[1].as_bytes()).unwrap();
    assert_eq!((j.kind, j.seq), (&b"joined"[..], Some(118)));
    let m = scan(t[2].as_bytes()).unwrap();
    assert_eq!((m.kind, m.seq, m.text), (&b"message"[..], Some(119), text.as_bytes()));
    // The same frame as corecast's own builder, byte for byte.
    let mut ours = Vec::new();
    message(b"r", 7, b"u", b"hi", 5, &mut ours);
    assert_eq!(ours, corecast_wire::protocol::server::message("r", 7, "u", "hi", 5).to_vec());
}
