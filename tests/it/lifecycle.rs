//! Slow consumers, heartbeats and graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corecast::config::SendPath;
use serde_json::json;

use crate::support::{client_frame, Client, Raw, TestServer, PATIENCE};

#[test]
fn a_client_that_stops_reading_is_closed_while_the_room_gets_everything() {
    slow_consumer_is_closed(SendPath::Direct);
}

#[test]
fn over_the_io_uring_send_path_a_client_that_stops_reading_is_closed_too() {
    slow_consumer_is_closed(SendPath::Uring);
}

fn slow_consumer_is_closed(send_path: SendPath) {
    let server = TestServer::with(|c| {
        c.send_path = send_path;
        c.queue_bytes = 64 * 1024;
        c.queue_frames = 64;
        // A deliberate flood of large messages: not what the abuse limits are about here.
        c.rate_limit = 0;
        c.max_text_bytes = 16 * 1024;
        // Long enough that the sleepy client, reading only at the end (after a flood
        // that can take a while on a loaded host), still finds the close frame waiting
        // (by default an unread close is dropped after 2 s).
        c.close_timeout = Duration::from_secs(600);
    });
    let mut sender = Client::connect(&server, "firehose");
    let mut reader = Client::connect(&server, "keeps-up");
    sender.join("flood");
    reader.join("flood");
    sender.expect("join");

    // The slow one joins with a tiny receive buffer and then never reads.
    let mut slow = Raw::upgraded(&server, "sleepy");
    slow.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // A fixed buffer (no autotuning) so the kernel cannot absorb the whole flood; not
    // below the loopback MSS, or TCP's silly-window avoidance stalls the final read.
    socket2::SockRef::from(&slow.stream).set_recv_buffer_size(256 * 1024).unwrap();
    slow.send(&client_frame(1, true, json!({"type":"join","room":"flood"}).to_string().as_bytes()));
    // Its join events tell that the slow client is a member before the flood starts.
    sender.expect("join");
    reader.expect("join");

    let text = "x".repeat(8 * 1024);
    let n = 1500;
    let reading = std::thread::spawn(move || {
        let mut seqs = Vec::with_capacity(n);
        while seqs.len() < n {
            let v = reader.recv();
            if v["type"] == "message" {
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
        seqs
    });
    for _ in 0..n {
        sender.say("flood", &text);
        // The sender is a member too: keep its own socket drained.
        assert_eq!(sender.expect("message")["room"], "flood");
    }
    let seqs = reading.join().unwrap();
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "the keeping-up member got every message in order");
    // Now the sleepy client reads: whatever the kernel held, then close 1013.
    let reading_from = Instant::now();
    assert_eq!(slow.expect_close(), 1013);
    assert!(reading_from.elapsed() < PATIENCE);
}

#[test]
fn a_client_that_does_not_answer_pings_is_closed_after_two_intervals() {
    // A client that answers is pinged after one interval of silence and closed after two:
    // it has about 3/4 of an interval to answer. One second leaves room for a loaded host.
    const INTERVAL: Duration = Duration::from_secs(1);
    let server = TestServer::with(|c| c.ping_interval = INTERVAL);
    // A client that answers pings (tungstenite does so while reading) stays connected:
    // it reads on its own thread until the mute one has been closed.
    let mut alive = Client::connect(&server, "alive");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let answering = std::thread::spawn(move || {
        alive.ws.get_ref().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        while !done2.load(std::sync::atomic::Ordering::SeqCst) {
            match alive.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("answering client was dropped: {e}"),
            }
        }
        alive.ws.get_ref().set_read_timeout(Some(PATIENCE)).unwrap();
        alive
    });
    // Before the upgrade request: the server's silence clock starts when it reads it.
    let start = Instant::now();
    let mut mute = Raw::upgraded(&server, "mute");
    // The mute client sees pings and never answers them; then it is closed.
    let mut pings = 0;
    let code = loop {
        let (op, payload) = mute.read_frame();
        match op {
            9 => pings += 1,
            8 => break u16::from_be_bytes([payload[0], payload[1]]),
            _ => {}
        }
    };
    let waited = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(code, 1001);
    assert!(pings >= 1, "it was pinged first");
    assert!(waited >= 2 * INTERVAL - Duration::from_millis(50) && waited < PATIENCE, "closed after {waited:?}");
    let mut alive = answering.join().unwrap();
    assert_eq!(alive.join("still")["members"], 1);
    // The counters show the heartbeat at work (the million-connection idle run reads
    // them): both were pinged, the answering one's pong arrived, the mute one was closed.
    let counters = || server.http().get("/stats").json()["counters"].clone();
    let deadline = Instant::now() + PATIENCE;
    let mut c = counters();
    while c["pongs_received"].as_u64().unwrap_or(0) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        c = counters();
    }
    assert!(c["pongs_received"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["heartbeat_pings"].as_u64().unwrap() >= 2, "{c}");
    assert_eq!(c["heartbeat_closes"], 1, "{c}");
}

#[test]
fn shutdown_sends_going_away_to_every_client() {
    let server = TestServer::start();
    let mut clients: Vec<Client> = (0..4).map(|i| Client::connect(&server, &format!("c{i}"))).collect();
    clients[0].join("r");
    let started = Instant::now();
    let handle_stop = std::thread::spawn(move || server.stop());
    for c in &mut clients {
        assert_eq!(c.expect_close(), 1001);
    }
    handle_stop.join().unwrap();
    assert!(started.elapsed() < PATIENCE, "shutdown took {:?}", started.elapsed());
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--no-pin", "--log", "info"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the corecast binary");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("server prints its address").unwrap();
        if let Some(rest) = line.split("ws://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    let server_addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut clients: Vec<Client> = (0..3).map(|i| Client::connect_to(server_addr, &format!("s{i}"))).collect();
    clients[0].join("room");

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    for c in &mut clients {
        assert_eq!(c.expect_close(), 1001);
    }
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("shut down cleanly")), "{rest:?}");
}
