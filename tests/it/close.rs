//! Every close the server starts is delivered: the close frame with its documented code
//! arrives, then the end of the stream, never a reset — even when a thousand
//! connections are closed at the same moment while they keep sending and a room of
//! them keeps receiving fan-out traffic (docs/PROTOCOL.md, "When the server closes").

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::support::{alone, ChildServer, Raw, TestServer, PATIENCE};

const SECRET: &str = "close-storm-test-hs256-secret-0123456789";
const STORM: usize = 1000;
/// How long the storm may take to play out once it starts: generous, because the host
/// may be busy; only a failing test waits this long.
const STORM_BOUND: Duration = Duration::from_secs(120);

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(sub: &str, exp: u64) -> String {
    let claims = json!({"sub": sub, "exp": exp});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// How a storm client's connection ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// Still open.
    Open,
    /// A close frame with this code arrived (before the end of the stream).
    Closed(u16),
    /// The connection broke without a close frame (reset, or end of stream).
    Broken(String),
}

/// One client of the storm, driven without blocking from a single thread.
struct StormClient {
    ws: WebSocket<TcpStream>,
    end: End,
    /// Last `seq` seen in the storm room, to check nothing was skipped before the close.
    last_seq: Option<u64>,
    gaps: u64,
    replies: Vec<Value>,
    last_ping: Instant,
}

impl StormClient {
    fn connect(addr: SocketAddr, query: &str) -> StormClient {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}/ws?{query}"), stream).expect("upgrade");
        let mut c =
            StormClient { ws, end: End::Open, last_seq: None, gaps: 0, replies: Vec::new(), last_ping: Instant::now() };
        // The welcome arrives before anything else.
        loop {
            match c.ws.read().expect("welcome") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["type"], "welcome", "{v}");
                    break;
                }
                _ => continue,
            }
        }
        c.ws.get_ref().set_nonblocking(true).unwrap();
        c
    }

    fn send(&mut self, v: Value) {
        // A full socket keeps the frame in tungstenite's buffer; a later flush sends it.
        match self.ws.send(Message::text(v.to_string())) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if self.end == End::Open => self.end = End::Broken(format!("send: {e}")),
            Err(_) => {}
        }
    }

    /// Keeps the client talking: a ping every 100 ms while open.
    fn chatter(&mut self) {
        if self.end == End::Open && self.last_ping.elapsed() >= Duration::from_millis(100) {
            self.last_ping = Instant::now();
            match self.ws.send(Message::Ping(b"still here".to_vec().into())) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => self.end = End::Broken(format!("ping: {e}")),
            }
        }
    }

    /// Reads whatever has arrived; returns whether anything did.
    fn pump(&mut self, room: &str) -> bool {
        let mut progress = false;
        for _ in 0..64 {
            if self.end != End::Open {
                // Answer the close (tungstenite queued the reply) and stop.
                let _ = self.ws.flush();
                return progress;
            }
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    progress = true;
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "message" && v["room"] == room {
                        let seq = v["seq"].as_u64().unwrap();
                        if let Some(last) = self.last_seq {
                            if seq != last + 1 {
                                self.gaps += 1;
                            }
                        }
                        self.last_seq = Some(seq);
                    } else if v["type"] != "message" {
                        self.replies.push(v);
                    }
                }
                Ok(Message::Close(frame)) => {
                    progress = true;
                    self.end = End::Closed(frame.map_or(1005, |f| f.code.into()));
                }
                Ok(_) => progress = true,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return progress,
                Err(e) => {
                    self.end = End::Broken(e.to_string());
                    return true;
                }
            }
        }
        progress
    }

    /// Takes the first reply of `kind` received so far, if any.
    fn take_reply(&mut self, kind: &str) -> Option<Value> {
        let i = self.replies.iter().position(|v| v["type"] == kind)?;
        Some(self.replies.remove(i))
    }
}

/// Pumps every client until `done` holds, within `bound`; between passes that read
/// nothing it yields the CPU briefly (a polling interval, not a wait for time to pass).
fn drive(clients: &mut [StormClient], room: &str, bound: Duration, mut done: impl FnMut(&mut [StormClient]) -> bool) {
    let deadline = Instant::now() + bound;
    loop {
        let mut progress = false;
        for c in clients.iter_mut() {
            progress |= c.pump(room);
            c.chatter();
        }
        if done(clients) {
            return;
        }
        assert!(Instant::now() < deadline, "not done within {bound:?}");
        if !progress {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Joins every client to `room` and waits for all the `joined` replies.
fn join_all(clients: &mut [StormClient], room: &str) {
    for c in clients.iter_mut() {
        c.send(json!({"type": "join", "room": room}));
    }
    let mut joined = vec![false; clients.len()];
    drive(clients, room, STORM_BOUND, |cs| {
        for (c, j) in cs.iter_mut().zip(joined.iter_mut()) {
            if let Some(reply) = c.take_reply("joined") {
                assert_eq!(reply["room"], room, "{reply}");
                *j = true;
            }
            assert!(c.take_reply("error").is_none(), "join refused");
        }
        joined.iter().all(|j| *j)
    });
}

/// A publisher sending one message every 60 ms (under the default rate limit) from a
/// thread, until stopped.
struct Publisher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Publisher {
    fn start(addr: SocketAddr, query: &str, room: &str) -> Publisher {
        let stream = TcpStream::connect(addr).unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws?{query}"), stream).expect("upgrade");
        ws.send(Message::text(json!({"type": "join", "room": room}).to_string())).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let room = room.to_owned();
        let thread = std::thread::spawn(move || {
            let mut sent = 0u64;
            ws.get_ref().set_nonblocking(true).unwrap();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let msg = json!({"type": "message", "room": room, "text": format!("tick {sent}")});
                if ws.send(Message::text(msg.to_string())).is_err() {
                    break;
                }
                sent += 1;
                // Drain what the server sends us (our own messages come back).
                while let Ok(m) = ws.read() {
                    if matches!(m, Message::Close(_)) {
                        return sent;
                    }
                }
                std::thread::sleep(Duration::from_millis(60));
            }
            sent
        });
        Publisher { stop, thread: Some(thread) }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Asserts that every client ended with a close frame of `code` and none broke, and
/// that none skipped a room message before its close.
fn assert_all_closed_with(clients: &[StormClient], code: u16) {
    let broken: Vec<&End> = clients.iter().map(|c| &c.end).filter(|e| matches!(e, End::Broken(_))).collect();
    let wrong: Vec<&End> = clients.iter().map(|c| &c.end).filter(|e| **e != End::Closed(code)).collect();
    assert!(
        broken.is_empty(),
        "{} of {} connections broke without a close frame: {:?}",
        broken.len(),
        clients.len(),
        &broken[..broken.len().min(5)]
    );
    assert!(wrong.is_empty(), "{} connections did not get {code}: {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    let gaps: u64 = clients.iter().map(|c| c.gaps).sum();
    assert_eq!(gaps, 0, "room messages skipped before the close");
}

#[test]
fn a_thousand_tokens_expiring_together_each_get_1008_and_no_reset() {
    let server = TestServer::start_alone_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_leeway = 0;
        c.max_connections_per_ip = 0;
        // Each client must get to read its close frame before the server gives up on
        // it; on a busy host the test's single driver thread can lag for a while.
        c.close_timeout = Duration::from_secs(30);
    });
    let room = "storm";
    let started = Instant::now();
    let mut clients: Vec<StormClient> = (0..STORM)
        .map(|i| StormClient::connect(server.addr, &format!("token={}", token(&format!("u{i}"), now_secs() + 3600))))
        .collect();
    join_all(&mut clients, room);
    let setup = started.elapsed();
    let publisher = Publisher::start(server.addr, &format!("token={}", token("publisher", now_secs() + 3600)), room);

    // Every client swaps its token for one that expires at the same second, far enough
    // ahead (scaled by how long setting up took on this host) that the swaps land first.
    // On a host so busy that some swap arrives after that second, the server refuses it
    // as expired (the connection keeps its long token): those clients swap again, for a
    // later common second with a wider margin, until every swap has landed. The storm is
    // then one or a few bursts; the assertion does not depend on which.
    let mut pending: Vec<usize> = (0..clients.len()).collect();
    let mut margin = 3 + 2 * setup.as_secs();
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds <= 5, "token swaps kept arriving after their expiry ({} left)", pending.len());
        let round = Instant::now();
        let expires = now_secs() + margin;
        for &i in &pending {
            clients[i].send(json!({"type": "refresh", "token": token(&format!("u{i}"), expires)}));
        }
        let mut answer: Vec<Option<bool>> = vec![None; clients.len()];
        let waiting = pending.clone();
        drive(&mut clients, room, STORM_BOUND, |cs| {
            for &i in &waiting {
                if let Some(reply) = cs[i].take_reply("refreshed") {
                    assert_eq!(reply["exp"], expires, "{reply}");
                    answer[i] = Some(true);
                }
                if let Some(error) = cs[i].take_reply("error") {
                    assert_eq!(error["code"], "invalid_token", "{error}");
                    assert!(now_secs() >= expires, "a swap refused before its expiry: {error}");
                    answer[i] = Some(false);
                }
            }
            waiting.iter().all(|&i| answer[i].is_some())
        });
        pending.retain(|&i| answer[i] == Some(false));
        margin = 3 + 2 * round.elapsed().as_secs().max(margin);
    }

    // The storm: all expire together while the room flows and every client pings.
    drive(&mut clients, room, STORM_BOUND, |cs| cs.iter().all(|c| c.end != End::Open));
    let published = publisher.stop();
    assert_all_closed_with(&clients, 1008);
    assert!(clients.iter().all(|c| c.last_seq.is_some()), "every member received fan-out traffic");
    eprintln!(
        "close storm (token expiry): {STORM} closed with 1008, none reset; {published} published; setup {setup:?}; {rounds} swap round(s)"
    );
}

#[test]
fn a_thousand_connections_at_sigterm_each_get_1001_and_no_reset() {
    let _alone = alone();
    let mut cmd = ChildServer::command_with_shards(2);
    // A close timeout the lagging driver thread of a busy host cannot outlast, and a
    // shutdown bound above it.
    cmd.args(["--max-connections-per-ip", "0", "--close-timeout", "30", "--shutdown-timeout", "60"]);
    let mut server = ChildServer::spawn(&mut cmd);
    let room = "storm";
    let mut clients: Vec<StormClient> =
        (0..STORM).map(|i| StormClient::connect(server.addr, &format!("name=u{i}"))).collect();
    join_all(&mut clients, room);
    let publisher = Publisher::start(server.addr, "name=publisher", room);
    // Fan-out is flowing: wait until every member has received a room message.
    drive(&mut clients, room, STORM_BOUND, |cs| cs.iter().all(|c| c.last_seq.is_some()));

    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    drive(&mut clients, room, STORM_BOUND, |cs| cs.iter().all(|c| c.end != End::Open));
    let published = publisher.stop();
    assert_all_closed_with(&clients, 1001);
    drop(clients);
    let deadline = Instant::now() + STORM_BOUND;
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    eprintln!("close storm (SIGTERM): {STORM} closed with 1001, none reset; {published} published");
}

/// An HTTP refusal reaches the client even when the client has sent more than the
/// server reads (here a body behind a refused upgrade): the server lingers instead of
/// closing a socket with unread input, which would reset the connection and destroy
/// the answer.
#[test]
fn a_refused_upgrade_with_unread_input_still_gets_its_answer() {
    let server = TestServer::with(|c| c.jwt_secret = Some(SECRET.into()));
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let head = "GET /ws?token=bad HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        s.write_all(head.as_bytes()).unwrap();
        // Frames the client sends optimistically behind its upgrade request.
        s.write_all(&vec![0x81u8; 64 * 1024]).unwrap();
        let mut answer = Vec::new();
        match s.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) => panic!("the refusal was destroyed ({e}); got {:?}", String::from_utf8_lossy(&answer)),
        }
        assert!(answer.starts_with(b"HTTP/1.1 401"), "{:?}", String::from_utf8_lossy(&answer[..answer.len().min(80)]));
    }
}

/// A protocol violation followed by more input than the server will read: the 1002
/// close frame still arrives, then the end of the stream, not a reset.
#[test]
fn a_protocol_error_with_unread_input_still_gets_its_close_frame() {
    let server = TestServer::start();
    for i in 0..10 {
        let mut raw = Raw::upgraded(&server, &format!("violator-{i}"));
        // An unmasked client frame (1002), then a flood the server discards.
        let mut bytes = vec![0x81, 0x02, b'h', b'i'];
        bytes.extend(std::iter::repeat_n(0x81u8, 256 * 1024));
        let writer = {
            let mut s = raw.stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = s.write_all(&bytes);
                let _ = s.shutdown(std::net::Shutdown::Write);
            })
        };
        let mut all = Vec::new();
        match raw.stream.read_to_end(&mut all) {
            Ok(_) => {}
            Err(e) => panic!("the close frame was destroyed ({e}); got {} bytes", all.len()),
        }
        writer.join().unwrap();
        assert_eq!(all.first(), Some(&0x88), "a close frame: {all:?}");
        assert_eq!(u16::from_be_bytes([all[2], all[3]]), 1002);
    }
}

/// Sends `last` with the FIN in one segment (corked), then reads until the server ends
/// the stream: returns what was read before the end. Panics if the server keeps the
/// connection open (the read times out after `PATIENCE`, a bound only a failure waits).
fn send_last_bytes_with_fin(mut raw: Raw, last: &[u8]) -> Vec<u8> {
    // Corked, the bytes wait in the send queue and the FIN joins their segment: one
    // arrival, so an edge-triggered reader gets one report for both.
    socket2::SockRef::from(&raw.stream).set_cork(true).unwrap();
    raw.send(last);
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match raw.stream.read(&mut buf) {
            Ok(0) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the server kept the connection open after the client's FIN: {e}"),
        }
    }
}

#[test]
fn a_fin_that_comes_with_the_last_bytes_ends_the_connection_for_either_read_wait() {
    // The epoll set reports a socket once per arrival (edge-triggered), and data with
    // its FIN arrive together: the server must read past the short read of the data to
    // see the end of the stream (bench-client and the ceiling probe once stopped there).
    for wait in [corecast::config::ReadWait::Epoll, corecast::config::ReadWait::Poll] {
        let server = TestServer::with(|c| c.read_wait = wait);
        // In the HTTP phase: half a request, then the end of the stream.
        let raw = Raw::connect(&server);
        send_last_bytes_with_fin(raw, b"GET /ws?name=u HTTP/1.1\r\nHost: x\r\n");
        // Open: a join, then the end. The join reaches the room's owner, and so does the
        // leave that the end of the stream causes (a join still pending is undone when
        // its ack arrives), in that order.
        let mut watcher = crate::support::Client::connect(&server, "watcher");
        watcher.join("fin");
        let raw = Raw::upgraded(&server, "leaver");
        let join = crate::support::client_frame(1, true, json!({"type":"join","room":"fin"}).to_string().as_bytes());
        send_last_bytes_with_fin(raw, &join);
        assert_eq!(watcher.expect("join")["user"], "leaver", "{wait:?}");
        assert_eq!(watcher.expect("leave")["user"], "leaver", "{wait:?}");
    }
}
