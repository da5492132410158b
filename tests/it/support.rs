//! Shared helpers: start a server on port 0, connect real tungstenite clients.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use corecast::{Config, ServerHandle};
use serde_json::{json, Value};
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// How long a test waits for something that should happen promptly. Generous, so the
/// suite passes on a host loaded by other work; it only costs time when a test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Servers run side by side (shared), except one that must have the machine to itself
/// (the browser test: Chromium would starve the timing-sensitive tests of CPU).
struct Occupancy {
    shared: usize,
    alone: bool,
    alone_waiting: usize,
}

static OCCUPANCY: Mutex<Occupancy> = Mutex::new(Occupancy { shared: 0, alone: false, alone_waiting: 0 });
static OCCUPANCY_CHANGED: Condvar = Condvar::new();

/// A test server's turn on the machine, held for the server's lifetime. A waiting
/// `alone` turn goes before new shared ones, so it is not starved.
struct Turn {
    alone: bool,
}

impl Turn {
    fn take(alone: bool) -> Turn {
        let mut o = OCCUPANCY.lock().unwrap_or_else(PoisonError::into_inner);
        if alone {
            o.alone_waiting += 1;
            while o.alone || o.shared > 0 {
                o = OCCUPANCY_CHANGED.wait(o).unwrap_or_else(PoisonError::into_inner);
            }
            o.alone_waiting -= 1;
            o.alone = true;
        } else {
            while o.alone || o.alone_waiting > 0 {
                o = OCCUPANCY_CHANGED.wait(o).unwrap_or_else(PoisonError::into_inner);
            }
            o.shared += 1;
        }
        Turn { alone }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut o = OCCUPANCY.lock().unwrap_or_else(PoisonError::into_inner);
        if self.alone {
            o.alone = false;
        } else {
            o.shared -= 1;
        }
        OCCUPANCY_CHANGED.notify_all();
    }
}

/// A server running in this process; shut down and joined on drop.
pub struct TestServer {
    handle: Option<ServerHandle>,
    pub addr: SocketAddr,
    /// Released after the server has shut down (fields drop after `Drop::drop`).
    _turn: Turn,
}

impl TestServer {
    /// Two shards (so cross-shard paths are exercised), unpinned, port 0.
    pub fn start() -> TestServer {
        Self::with(|_| {})
    }

    /// Like [`start`] with configuration tweaks.
    pub fn with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::launch(tweak, Turn::take(false))
    }

    /// Like [`start`], but waits until no other test server runs and keeps the others
    /// waiting until this one stops: for a test that loads the machine heavily.
    pub fn start_alone() -> TestServer {
        Self::launch(|_| {}, Turn::take(true))
    }

    /// [`TestServer::start_alone`] with settings changed by `tweak`.
    pub fn start_alone_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::launch(tweak, Turn::take(true))
    }

    fn launch(tweak: impl FnOnce(&mut Config), turn: Turn) -> TestServer {
        let mut cfg = Config { listen: "127.0.0.1:0".parse().unwrap(), shards: 2, pin: false, ..Config::default() };
        tweak(&mut cfg);
        let handle = corecast::start(cfg).expect("server starts");
        let addr = handle.local_addr();
        TestServer { handle: Some(handle), addr, _turn: turn }
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        if let Some(h) = &self.handle {
            h.shutdown();
        }
    }

    pub fn http(&self) -> Http {
        Http::new(self.addr)
    }

    /// Graceful shutdown, waiting for the shards to finish.
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.join().expect("shards exit cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            let _ = h.join();
        }
    }
}

/// The `corecast` binary as a separate process (for tests that kill it or limit its
/// resources); killed and reaped on drop.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// The binary with one unpinned shard on port 0, logging to a piped stdout; add
    /// flags, then [`ChildServer::spawn`] it.
    pub fn command() -> Command {
        Self::command_with_shards(1)
    }

    /// [`ChildServer::command`] with `shards` shards.
    pub fn command_with_shards(shards: usize) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
        cmd.args(["--listen", "127.0.0.1:0", "--shards", &shards.to_string(), "--no-pin", "--log", "info"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd
    }

    /// Starts `cmd` (from [`ChildServer::command`]) and waits for the address it prints.
    pub fn spawn(cmd: &mut Command) -> ChildServer {
        let mut child = cmd.spawn().expect("start corecast");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("the server prints its address").unwrap();
            if let Some(rest) = line.split("ws://").nth(1) {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        ChildServer { child, addr }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket client speaking protocol v1.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub user: String,
    pub shard: u64,
}

impl Client {
    /// Connects as `name` and reads the `welcome` frame.
    pub fn connect(server: &TestServer, name: &str) -> Client {
        Self::connect_to(server.addr, name)
    }

    /// Connects to a server at `addr` (e.g. one started as a separate process).
    pub fn connect_to(addr: SocketAddr, name: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}/ws?name={name}"), stream).expect("upgrade");
        let mut c = Client { ws, user: name.to_owned(), shard: 0 };
        let welcome = c.recv();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["user"], name);
        c.shard = welcome["shard"].as_u64().unwrap();
        c
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    pub fn send_raw_text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_owned())).expect("send");
    }

    /// Next JSON frame (control frames are answered by tungstenite and skipped).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read a frame") {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Next frame of type `kind`, failing on anything else.
    pub fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["type"], kind, "expected {kind}, got {v}");
        v
    }

    /// Next frame of type `kind`, skipping room traffic (messages, presence events) that
    /// other clients cause meanwhile.
    pub fn expect_skipping(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
            assert!(Instant::now() < deadline, "no {kind} within {PATIENCE:?}");
        }
    }

    /// Joins `room` and returns the `joined` frame.
    pub fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type":"join","room":room}));
        let j = self.expect("joined");
        assert_eq!(j["room"], room);
        j
    }

    pub fn say(&mut self, room: &str, text: &str) {
        self.send(json!({"type":"message","room":room,"text":text}));
    }

    /// Reads until the close frame; returns its code. Other frames are skipped.
    pub fn expect_close(&mut self) -> u16 {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return f.code.into(),
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => continue,
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
        panic!("no close frame within {PATIENCE:?}");
    }

    /// Asserts that no application frame arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        self.ws.get_ref().set_read_timeout(Some(wait)).unwrap();
        match self.ws.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.ws.get_ref().set_read_timeout(Some(PATIENCE)).unwrap();
    }
}

/// Connects clients `prefix-0`, `prefix-1`, … until `n` are connected and both shards
/// have at least one (the kernel's SO_REUSEPORT hash decides placement).
pub fn clients_on_both_shards(server: &TestServer, prefix: &str, n: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..200 {
        let c = Client::connect(server, &format!("{prefix}-{i}"));
        let covered = |cs: &[Client], extra: &Client| (0..2).all(|s| cs.iter().chain([extra]).any(|c| c.shard == s));
        let need_more = clients.len() + 1 < n;
        if need_more || covered(&clients, &c) {
            clients.push(c);
        } else {
            // Keep the count at n: replace a client on the over-represented shard.
            let i = clients.iter().position(|x| x.shard == c.shard).unwrap();
            clients.remove(i);
            clients.push(c);
        }
        if clients.len() >= n && (0..2).all(|s| clients.iter().any(|c| c.shard == s)) {
            return clients;
        }
    }
    panic!("could not place clients on both shards");
}

/// A raw TCP connection for sending malformed bytes.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(server: &TestServer) -> Raw {
        let stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Raw { stream }
    }

    /// Connects and completes a WebSocket upgrade by hand; the 101 head and the welcome
    /// frame are consumed.
    pub fn upgraded(server: &TestServer, name: &str) -> Raw {
        let mut raw = Raw::connect(server);
        raw.send(
            format!(
                "GET /ws?name={name} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            .as_bytes(),
        );
        let head = raw.read_http_head();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let (op, payload) = raw.read_frame();
        assert_eq!(op, 1);
        assert!(String::from_utf8_lossy(&payload).contains("welcome"));
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads an HTTP response head (up to the blank line) and returns it.
    pub fn read_http_head(&mut self) -> String {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// Reads everything until the server closes the connection.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.stream.read_to_end(&mut out);
        out
    }

    /// Reads one unmasked server frame: (opcode, payload).
    pub fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        self.stream.read_exact(&mut h).unwrap();
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            self.stream.read_exact(&mut b).unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            self.stream.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload).unwrap();
        (h[0] & 0x0f, payload)
    }

    /// Reads frames until a close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            let (op, payload) = self.read_frame();
            if op == 8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// A masked client frame.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    use tungstenite::protocol::frame::coding::OpCode;
    corecast::ws::frame::client_frame(OpCode::from(opcode), fin, payload, [0x11, 0x22, 0x33, 0x44])
}

/// A real HTTP client (ureq) that reports every status instead of failing on 4xx/5xx.
pub struct Http {
    agent: ureq::Agent,
    base: String,
}

/// Status, selected headers and body of a response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        let config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(PATIENCE)).build();
        Http { agent: config.into(), base: format!("http://{addr}") }
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
        let mut r = r.expect("HTTP exchange");
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect::<Vec<_>>();
        let content_type =
            headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.clone()).unwrap_or_default();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        Resp { status: r.status().as_u16(), content_type, headers, body }
    }

    pub fn get(&self, path: &str) -> Resp {
        Self::finish(self.agent.get(format!("{}{path}", self.base)).call())
    }

    pub fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> Resp {
        let mut req = self.agent.post(format!("{}{path}", self.base)).header("content-type", "application/json");
        if let Some(key) = bearer {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        Self::finish(req.send(body.to_string()))
    }

    /// GETs `path` with `Authorization: Bearer <key>`.
    pub fn get_with_key(&self, path: &str, key: &str) -> Resp {
        Self::finish(
            self.agent.get(format!("{}{path}", self.base)).header("authorization", format!("Bearer {key}")).call(),
        )
    }

    /// POSTs `body` exactly as given (e.g. JSON whose numbers a `Value` would round).
    pub fn post_raw(&self, path: &str, bearer: Option<&str>, body: &str) -> Resp {
        let mut req = self.agent.post(format!("{}{path}", self.base)).header("content-type", "application/json");
        if let Some(key) = bearer {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        Self::finish(req.send(body.to_owned()))
    }
}

/// How a test client connects: query string, source address, offered subprotocols.
#[derive(Default, Clone)]
pub struct Dial<'a> {
    /// Query string after `/ws?` (e.g. `name=alice` or `token=…`).
    pub query: &'a str,
    /// Source IP to bind before connecting (e.g. `127.0.0.2`).
    pub from: Option<&'a str>,
    /// `Sec-WebSocket-Protocol` value.
    pub protocols: Option<&'a str>,
    /// `Origin` header.
    pub origin: Option<&'a str>,
}

/// Connects as `dial` says; `Err(status)` when the upgrade is refused with an HTTP status.
pub fn dial(addr: SocketAddr, d: &Dial<'_>) -> Result<Client, u16> {
    use tungstenite::client::IntoClientRequest;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(src) = d.from {
        let src: SocketAddr = format!("{src}:0").parse().unwrap();
        socket.bind(&src.into()).unwrap();
    }
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut req = format!("ws://{addr}/ws?{}", d.query).into_client_request().unwrap();
    if let Some(p) = d.protocols {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    if let Some(o) = d.origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => {
            let mut c = Client { ws, user: String::new(), shard: 0 };
            let welcome = c.expect("welcome");
            c.user = welcome["user"].as_str().unwrap().to_owned();
            c.shard = welcome["shard"].as_u64().unwrap();
            Ok(c)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected handshake failure: {e}"),
    }
}

/// Messages flowing through a room while a test misbehaves elsewhere: a sender publishes
/// every 60 ms (within the default rate limit), a watcher collects. [`Flow::finish`]
/// checks that the watcher saw every message, in order, with no gap.
pub struct Flow {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sender: std::thread::JoinHandle<()>,
    watcher: std::thread::JoinHandle<Vec<(u64, String)>>,
    pub room: String,
}

impl Flow {
    /// Starts the flow in room `room`, both clients dialled with `query` (a guest name
    /// or a token) from 127.0.0.2, so per-IP limits on 127.0.0.1 do not touch them.
    pub fn start(server: &TestServer, room: &str, sender_query: &str, watcher_query: &str) -> Flow {
        Self::start_with(server, json!({"type":"join","room":room}), sender_query, watcher_query)
    }

    /// Like [`Flow::start`], joining with `join` (e.g. with a room password).
    pub fn start_with(server: &TestServer, join: Value, sender_query: &str, watcher_query: &str) -> Flow {
        let room = join["room"].as_str().unwrap().to_owned();
        let room = room.as_str();
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let mut watcher =
            dial(server.addr, &Dial { query: watcher_query, from: Some("127.0.0.2"), ..Dial::default() }).unwrap();
        let mut sender =
            dial(server.addr, &Dial { query: sender_query, from: Some("127.0.0.2"), ..Dial::default() }).unwrap();
        for c in [&mut watcher, &mut sender] {
            c.send(join.clone());
            assert_eq!(c.expect("joined")["room"], room);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2, room2) = (stop.clone(), sent.clone(), room.to_owned());
        let sender = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let n = sent2.load(Ordering::SeqCst) + 1;
                sender.say(&room2, &format!("calm {n}"));
                sent2.store(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(60));
            }
        });
        let (stop3, sent3) = (stop.clone(), sent.clone());
        let watcher = std::thread::spawn(move || {
            watcher.ws.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut seqs: Vec<(u64, String)> = Vec::new();
            let deadline = std::cell::Cell::new(None::<Instant>);
            loop {
                if stop3.load(Ordering::SeqCst) {
                    let d = *deadline.get().get_or_insert(Instant::now() + PATIENCE);
                    deadline.set(Some(d));
                    let calm = seqs.iter().filter(|(_, t)| t.starts_with("calm ")).count() as u64;
                    if calm >= sent3.load(Ordering::SeqCst) || Instant::now() > d {
                        return seqs;
                    }
                }
                match watcher.ws.read() {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["type"] == "message" {
                            seqs.push((v["seq"].as_u64().unwrap(), v["text"].as_str().unwrap_or_default().to_owned()));
                        }
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("the well-behaved watcher lost its connection: {e}"),
                }
            }
        });
        Flow { stop, sent, sender, watcher, room: room.to_owned() }
    }

    /// Stops the flow and asserts the watcher received every message of the room with
    /// no gap and no duplicate, the sender's all among them and in order.
    pub fn finish(self) {
        use std::sync::atomic::Ordering;
        // Let the flow run for a few messages (however slowly the host runs the sender).
        let deadline = Instant::now() + PATIENCE;
        while self.sent.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::SeqCst);
        self.sender.join().expect("sender ran");
        let sent = self.sent.load(Ordering::SeqCst);
        let got = self.watcher.join().expect("watcher ran");
        assert!(sent >= 3, "the flow ran during the test ({sent} messages)");
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap, no duplicate");
        let calm: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).filter(|t| t.starts_with("calm ")).collect();
        let expected: Vec<String> = (1..=sent).map(|n| format!("calm {n}")).collect();
        assert_eq!(calm, expected, "every message of the well-behaved sender, in order");
    }
}

/// The machine to oneself, for a heavy test whose server is a child process: no test
/// server of this process runs until the returned guard drops.
pub fn alone() -> impl Drop {
    Turn::take(true)
}

/// The first `name` found as a file in a `PATH` directory.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A test that needs an external program skips by printing `test skipped: why` straight
/// to stderr (past the harness's capture, so the skip is seen), unless
/// `CORECAST_REQUIRE_EXTERNAL=1` (CI), which turns the skip into a failure.
pub fn skip(test: &str, why: &str) {
    let line = format!("skipped: {why}");
    assert!(
        std::env::var("CORECAST_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
        "CORECAST_REQUIRE_EXTERNAL=1, so {test} may not skip: {line}"
    );
    let _ = writeln!(std::io::stderr(), "{test} {line}");
}
