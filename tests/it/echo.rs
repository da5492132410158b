//! The conformance echo endpoint (`--echo-endpoint`, `/echo`): real clients over the same
//! connection code as `/ws`; messages come back unchanged and nothing else is sent.

use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::support::{client_frame, Raw, TestServer, PATIENCE};

const KEY: &str = "test-api-key-0123456789";

fn echo_server() -> TestServer {
    TestServer::with(|c| {
        c.echo_endpoint = true;
        // Room for a frame with a 64-bit length (over 65,535 bytes).
        c.max_message_bytes = 1 << 20;
        c.api_key = Some(KEY.to_owned());
    })
}

fn connect(server: &TestServer) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{}/echo", server.addr), stream).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads the next data message, answering nothing else (pings are answered by tungstenite).
fn next(ws: &mut tungstenite::WebSocket<TcpStream>) -> Message {
    loop {
        match ws.read().expect("read") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

#[test]
fn text_and_binary_messages_come_back_unchanged() {
    let server = echo_server();
    let mut ws = connect(&server);
    ws.send(Message::text("héllo wörld")).unwrap();
    assert_eq!(next(&mut ws), Message::text("héllo wörld"));
    let blob: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(blob.clone())).unwrap();
    assert_eq!(next(&mut ws), Message::binary(blob));
    ws.send(Message::text("")).unwrap();
    assert_eq!(next(&mut ws), Message::text(""));
    ws.send(Message::Ping(b"p".to_vec().into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"p".to_vec().into()));
    // The client closes: its code comes back and the connection ends cleanly.
    ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "bye".into() })).unwrap();
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Away),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => panic!("no close echo: {e}"),
    }
}

#[test]
fn fragmented_messages_are_assembled_and_echoed_as_one() {
    let server = echo_server();
    let mut raw = Raw::connect(&server);
    raw.send(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(raw.read_http_head().starts_with("HTTP/1.1 101"));
    // "h€llo" with the euro sign split across fragments and a ping in between.
    let euro = "€".as_bytes();
    let mut wire = client_frame(1, false, &[b'h', euro[0]]);
    wire.extend(client_frame(9, true, b"mid"));
    wire.extend(client_frame(0, false, &euro[1..]));
    wire.extend(client_frame(0, true, b"llo"));
    wire.extend(client_frame(2, false, &[1, 2]));
    wire.extend(client_frame(0, true, &[3]));
    raw.send(&wire);
    assert_eq!(raw.read_frame(), (10, b"mid".to_vec()), "the ping is answered first");
    assert_eq!(raw.read_frame(), (1, "h€llo".as_bytes().to_vec()));
    assert_eq!(raw.read_frame(), (2, vec![1, 2, 3]));
    // Protocol errors get the same answers as on /ws.
    raw.send(&client_frame(1, true, &[0xff]));
    assert_eq!(raw.expect_close(), 1007);
}

#[test]
fn the_echo_endpoint_sends_nothing_of_its_own() {
    let server = echo_server();
    let mut ws = connect(&server);
    // No welcome, and a broadcast to every client does not reach it.
    let r = server.http().post("/api/publish", Some(KEY), &json!({"broadcast":true,"text":"attention"}));
    assert_eq!(r.status, 200, "{}", r.body);
    ws.get_ref().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    ws.get_ref().set_read_timeout(Some(PATIENCE)).unwrap();
    ws.send(Message::text("still echoing")).unwrap();
    assert_eq!(next(&mut ws), Message::text("still echoing"));
}

#[test]
fn echo_is_not_served_without_the_flag() {
    let server = TestServer::start();
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    match tungstenite::client(format!("ws://{}/echo", server.addr), stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status(), 404);
        }
        Ok(_) => panic!("/echo upgraded without --echo-endpoint"),
        Err(e) => panic!("unexpected failure: {e}"),
    }
    // /ws still greets as always, binary still refused there.
    let mut c = crate::support::Client::connect(&server, "plain");
    c.ws.send(Message::binary(vec![1u8])).unwrap();
    assert_eq!(c.expect_close(), 1003);
}
