//! What the application backend's proxy costs: the connect rate with `--proxy-connect-url`
//! and the publish throughput with `--proxy-publish-url`, each against a backend that
//! answers in about 1 ms, vs the same server with no proxy, in the same run.
//!
//! Run (release build; about half a minute):
//!
//! ```text
//! cargo bench --bench backend_proxy
//! cargo bench --bench backend_proxy -- --connections 4000 --clients 16 --messages 2000 --delay-ms 1
//! ```
//!
//! The backend is a small keep-alive HTTP/1.1 server in this process, one thread per
//! connection, that sleeps `--delay-ms` before every answer. Connect: `--clients` threads
//! each open, upgrade (read `welcome`) and close `--connections / --clients` connections
//! one after another. Publish: `--clients` connections, each in a room of its own, each
//! keeps 32 messages in flight and reads its own copies back until `--messages` each.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: fail loudly

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use corecast::Config;
use tungstenite::Message;

struct Opts {
    connections: usize,
    clients: usize,
    messages: usize,
    delay: Duration,
}

fn opts() -> Opts {
    let mut o = Opts { connections: 2000, clients: 8, messages: 2000, delay: Duration::from_millis(1) };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match (args[i].as_str(), value) {
            ("--connections", Some(v)) => o.connections = v,
            ("--clients", Some(v)) => o.clients = v.max(1),
            ("--messages", Some(v)) => o.messages = v,
            ("--delay-ms", Some(v)) => o.delay = Duration::from_millis(v as u64),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// The backend: allows every connect (as the `name` in the query) and every publish.
fn backend(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream, delay));
        }
    });
    addr
}

fn serve(stream: TcpStream, delay: Duration) {
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let connect = line.contains("/connect");
        let mut len = 0;
        loop {
            let mut h = String::new();
            if input.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim_end().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if input.read_exact(&mut body).is_err() {
            return;
        }
        let answer = if connect {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let query = v["query"].as_str().unwrap_or_default();
            let user = query.strip_prefix("name=").unwrap_or("anon");
            serde_json::json!({"result":"allow","user":user}).to_string()
        } else {
            r#"{"result":"allow"}"#.to_owned()
        };
        std::thread::sleep(delay);
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", answer.len());
        if out.write_all(head.as_bytes()).and_then(|()| out.write_all(answer.as_bytes())).is_err() {
            return;
        }
    }
}

fn server(backend: Option<SocketAddr>, connect: bool, publish: bool) -> corecast::ServerHandle {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin: false,
        rate_limit: 0,
        max_connections_per_ip: 0,
        ..Config::default()
    };
    if let Some(b) = backend {
        if connect {
            cfg.backend.connect_url = Some(format!("http://{b}/connect"));
        }
        if publish {
            cfg.backend.publish_url = Some(format!("http://{b}/publish"));
        }
    }
    corecast::start(cfg).unwrap()
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn open(addr: SocketAddr, name: &str) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws?name={name}"), stream).unwrap();
    let welcome = next_text(&mut ws);
    assert!(welcome.contains("\"welcome\""), "{welcome}");
    ws
}

fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return t.to_string(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Connections per second: `clients` threads, each opening and closing its share.
fn connect_rate(addr: SocketAddr, o: &Opts) -> f64 {
    let per = o.connections / o.clients;
    let started = Instant::now();
    let threads: Vec<_> = (0..o.clients)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..per {
                    let mut ws = open(addr, &format!("c{t}x{i}"));
                    let _ = ws.close(None);
                    let _ = ws.flush();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (per * o.clients) as f64 / started.elapsed().as_secs_f64()
}

/// Messages per second published and received back by their senders.
fn publish_rate(addr: SocketAddr, o: &Opts) -> f64 {
    const WINDOW: usize = 32;
    let mut clients: Vec<Ws> = (0..o.clients).map(|i| open(addr, &format!("p{i}"))).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!(r#"{{"type":"join","room":"bench-{i}"}}"#))).unwrap();
        while !next_text(ws).contains("\"joined\"") {}
    }
    let n = o.messages;
    let started = Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            std::thread::spawn(move || {
                let msg = format!(r#"{{"type":"message","room":"bench-{i}","text":"hello from the bench"}}"#);
                let (mut sent, mut got) = (0, 0);
                while got < n {
                    while sent < n && sent - got < WINDOW {
                        ws.send(Message::text(msg.clone())).unwrap();
                        sent += 1;
                    }
                    if next_text(&mut ws).contains("\"message\"") {
                        got += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (n * o.clients) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let o = opts();
    let b = backend(o.delay);
    let mut rows = Vec::new();
    for (what, proxied) in [("off", false), ("proxy", true)] {
        let s = server(proxied.then_some(b), true, false);
        rows.push((format!("connect, {what}"), connect_rate(s.local_addr(), &o), "connections/s"));
        s.shutdown();
        let _ = s.join();
        let s = server(proxied.then_some(b), false, true);
        rows.push((format!("publish, {what}"), publish_rate(s.local_addr(), &o), "messages/s"));
        s.shutdown();
        let _ = s.join();
    }
    println!(
        "backend answering in {:?}; {} connections and {} x {} messages, {} client threads, 2 shards",
        o.delay, o.connections, o.clients, o.messages, o.clients
    );
    println!("| run | rate | unit |\n|---|---|---|");
    for (what, rate, unit) in rows {
        println!("| {what} | {rate:.0} | {unit} |");
    }
}
