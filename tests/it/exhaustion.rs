//! Running out of file descriptors: the real binary under a low RLIMIT_NOFILE is pushed
//! past it, keeps serving its existing clients, does not spin, and accepts again when
//! clients leave.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{ChildServer, Client, PATIENCE};

/// Descriptors the server may hold: an idle one-shard server uses 12 (three io_uring
/// rings, an eventfd, the listener, the signal socket pair, stdio).
const NOFILE: u64 = 32;

/// The shortest pause before the server retries an accept that failed for lack of
/// descriptors (docs/HTTP.md, `accept_retries`).
const EXHAUSTED_PAUSE_MS: u64 = 50;

fn start_limited() -> ChildServer {
    let mut cmd = ChildServer::command();
    // The test reads /stats over one keep-alive connection while the server cannot accept
    // another: keep that connection from being closed as idle on a slow host.
    cmd.args(["--handshake-timeout", "300"]);
    // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and
    // touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = rustix::process::Rlimit { current: Some(NOFILE), maximum: Some(NOFILE) };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).map_err(std::io::Error::from)
        });
    }
    ChildServer::spawn(&mut cmd)
}

/// Waits up to `wait` for the 101 of an upgrade request sent on `stream`.
fn try_upgrade(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 101")
}

fn upgrade_request(name: &str) -> String {
    format!(
        "GET /ws?name={name} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A keep-alive HTTP connection to `/stats`, opened while descriptors are left: it keeps
/// answering when the server can accept no new connection.
struct Stats(TcpStream);

impl Stats {
    fn open(addr: SocketAddr) -> Stats {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        Stats(s)
    }

    fn get(&mut self) -> Value {
        self.0.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.0.read_exact(&mut b).expect("a /stats answer on the kept-alive connection");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
            .map(|(_, v)| v.trim().parse().unwrap())
            .expect("content-length");
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    fn counter(stats: &Value, name: &str) -> u64 {
        stats["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}: {stats}"))
    }
}

#[test]
fn out_of_descriptors_the_server_keeps_serving_and_recovers() {
    let server = start_limited();
    let mut watcher = Client::connect_to(server.addr, "watcher");
    let mut sender = Client::connect_to(server.addr, "sender");
    watcher.join("calm");
    sender.join("calm");
    watcher.expect("join");
    let mut stats = Stats::open(server.addr);
    assert_eq!(Stats::counter(&stats.get(), "accept_fd_exhausted"), 0, "not exhausted yet");

    // Push it past the limit: 30 upgrade requests, more than the descriptors left.
    let mut all: Vec<TcpStream> = (0..30)
        .map(|i| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(upgrade_request(&format!("u{i}")).as_bytes()).unwrap();
            s
        })
        .collect();
    // Once an accept has failed for lack of descriptors every descriptor is in use, and
    // nothing here closes one: the accepted set is final. The backlog is first in, first
    // out, so the accepted ones are the first `accepted` requests; the rest wait.
    let deadline = Instant::now() + PATIENCE;
    let s = loop {
        let s = stats.get();
        if Stats::counter(&s, "accept_fd_exhausted") > 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "the server never ran out of descriptors: {s}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Open sockets besides ours: the watcher, the sender and this stats connection.
    let accepted = s["connections"]["now"].as_u64().unwrap() as usize - 3;
    assert!(0 < accepted && accepted < all.len(), "{accepted} of {} accepted: {s}", all.len());
    let mut waiting = all.split_off(accepted);
    let mut upgraded = all;
    for (i, s) in upgraded.iter_mut().enumerate() {
        assert!(try_upgrade(s, PATIENCE), "accepted connection u{i} was not upgraded");
    }

    // Exhausted: no spinning. The accept is retried only after a pause, so over any span
    // the retries are bounded by the span over the pause (plus the one already due), on
    // any host, loaded or not. Measured over at least 20 retries, so the server is still
    // exhausted and retrying.
    let pid = server.child.id();
    let ticks_before = cpu_ticks(pid);
    let started = Instant::now();
    let first = stats.get();
    let (retries_before, failed_before) =
        (Stats::counter(&first, "accept_retries"), Stats::counter(&first, "accept_fd_exhausted"));
    let (retries, failed, span) = loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = stats.get();
        let span = started.elapsed();
        let retries = Stats::counter(&now, "accept_retries") - retries_before;
        let failed = Stats::counter(&now, "accept_fd_exhausted") - failed_before;
        if retries >= 20 {
            break (retries, failed, span);
        }
        assert!(span < PATIENCE, "only {retries} accept retries in {span:?} while out of descriptors");
    };
    let ticks = cpu_ticks(pid) - ticks_before;
    let allowed = span.as_millis() as u64 / EXHAUSTED_PAUSE_MS + 1;
    assert!(
        retries <= allowed,
        "{retries} accept retries in {span:?}: at most {allowed} with a {EXHAUSTED_PAUSE_MS} ms pause"
    );
    assert!(failed >= 1 && failed <= allowed, "{failed} failed accepts in {span:?} (at most {allowed})");
    for n in 1..=3 {
        sender.say("calm", &format!("still served {n}"));
        assert_eq!(watcher.expect("message")["text"], format!("still served {n}"));
    }

    // Free descriptors: the waiting connections are accepted by themselves, first in,
    // first out.
    drop(upgraded.drain(..8).collect::<Vec<_>>());
    assert!(try_upgrade(&mut waiting[0], PATIENCE), "no waiting connection was accepted after descriptors freed up");
    let deadline = Instant::now() + PATIENCE;
    let mut recovered = 1;
    for s in waiting[1..8].iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        recovered += usize::from(try_upgrade(s, left));
    }
    eprintln!(
        "exhaustion: {} upgraded, {} waiting; {retries} accept retries ({failed} failed) and {ticks} CPU ticks \
         in {span:?} while exhausted; {recovered} accepted after 8 closed",
        upgraded.len() + 8,
        waiting.len()
    );
    drop(waiting);
    drop(upgraded);
    let s = stats.get();
    assert!(Stats::counter(&s, "accept_fd_exhausted") > 0, "exhaustion is counted: {s}");
}
