//! Feeds arbitrary bytes, split at an arbitrary point, to the server-side WebSocket
//! message reader. It must never panic, never buffer past its cap, and parse the same
//! however the input is split.

#![no_main]

use std::ops::ControlFlow;

use corecast_wire::ws::frame::Role;
use corecast_wire::ws::reader::{Message, MessageReader};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fn run(chunks: &[&[u8]]) -> (Vec<String>, bool) {
    let mut reader = MessageReader::new(Role::Server, MAX);
    let mut seen = Vec::new();
    for chunk in chunks {
        let mut buf = chunk.to_vec();
        let result = reader.feed(&mut buf, |m| {
            seen.push(match m {
                Message::Text(t) => format!("t{}", t.len()),
                Message::Binary(b) => format!("b{}", b.len()),
                Message::Ping(p) => format!("p{}", p.len()),
                Message::Pong(p) => format!("o{}", p.len()),
                Message::Close(c) => format!("c{:?}", c.map(|(code, _)| code)),
            });
            ControlFlow::Continue(())
        });
        assert!(reader.buffered() <= MAX + 14 + chunk.len());
        if result.is_err() {
            return (seen, false);
        }
    }
    (seen, true)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = usize::from(data[0]) % data.len();
    let (whole, ok_whole) = run(&[&data[1..]]);
    let (parts, ok_parts) = run(&[&data[1..split.max(1)], &data[split.max(1)..]]);
    if ok_whole && ok_parts {
        assert_eq!(whole, parts, "the split changed what was parsed");
    }
});
