//! Running out of file descriptors: the real binary under a low RLIMIT_NOFILE is pushed
//! past it, keeps serving its existing clients, does not spin, and accepts again when
//! clients leave.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use crate::support::{ChildServer, Client, PATIENCE};

/// Descriptors the server may hold: an idle one-shard server uses 12 (three io_uring
/// rings, an eventfd, the listener, the signal socket pair, stdio).
const NOFILE: u64 = 32;

fn start_limited() -> ChildServer {
    let mut cmd = ChildServer::command();
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

/// Sends an upgrade request; true if the 101 arrives within `wait`.
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

#[test]
fn out_of_descriptors_the_server_keeps_serving_and_recovers() {
    let server = start_limited();
    let mut watcher = Client::connect_to(server.addr, "watcher");
    let mut sender = Client::connect_to(server.addr, "sender");
    watcher.join("calm");
    sender.join("calm");
    watcher.expect("join");

    // Push it past the limit: upgraded ones are held, the rest wait in the backlog.
    let mut upgraded = Vec::new();
    let mut waiting = Vec::new();
    for i in 0..30 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(upgrade_request(&format!("u{i}")).as_bytes()).unwrap();
        if try_upgrade(&mut s, Duration::from_millis(300)) {
            upgraded.push(s);
        } else {
            waiting.push(s);
        }
    }
    assert!(!upgraded.is_empty() && !waiting.is_empty(), "{} upgraded, {} waiting", upgraded.len(), waiting.len());

    // Exhausted: no spinning (it retries accept with a pause), existing clients served.
    let pid = server.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(pid) - before;
    assert!(ticks < 20, "{ticks} ticks of CPU in 2 s while out of descriptors (100 ticks = 1 core-second)");
    for n in 1..=3 {
        sender.say("calm", &format!("still served {n}"));
        assert_eq!(watcher.expect("message")["text"], format!("still served {n}"));
    }

    // Free descriptors: the waiting connections are accepted by themselves.
    drop(upgraded.drain(..8).collect::<Vec<_>>());
    let deadline = Instant::now() + PATIENCE;
    let mut recovered = 0;
    for s in waiting.iter_mut() {
        if Instant::now() < deadline && try_upgrade(s, Duration::from_millis(1500)) {
            recovered += 1;
        }
    }
    assert!(recovered >= 1, "no waiting connection was accepted after descriptors freed up");
    eprintln!(
        "exhaustion: {} upgraded, {} waiting; {ticks} CPU ticks in 2 s while exhausted; {recovered} accepted after 8 closed",
        upgraded.len() + 8,
        waiting.len()
    );
    drop(waiting);
    drop(upgraded);
    std::thread::sleep(Duration::from_millis(300));
    let stats: serde_json::Value = {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    assert!(stats["counters"]["accept_fd_exhausted"].as_u64().unwrap() > 0, "exhaustion is counted: {stats}");
}
