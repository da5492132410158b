//! A rolling restart of a cluster with `--data-dir`: three nodes as subprocesses over a
//! real `nats-server`, members of one room on every node, a publisher that never stops;
//! one node at a time gets SIGTERM, exits, and starts again on the same port and data
//! directory. Every member (those of the restarted node reconnect after 1012 and rejoin
//! with `since`) must recover with `recovered: true` and see one gap-free order in one
//! epoch: the room's stream continues across every change of sequencer.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::cluster::{nats_binary, wait_for_cluster, Nats, KEY};
use crate::support::{ChildServer, Client, Http, PATIENCE};

const ROOM: &str = "rolling";
/// Members per node (checked), besides one anchor per node (not checked).
const MEMBERS: usize = 2;
/// No node is being restarted.
const NONE: usize = usize::MAX;

/// One node: a fixed port and data directory, so that it restarts in place.
struct Node {
    name: String,
    port: u16,
    dir: PathBuf,
    server: Option<ChildServer>,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn start(&mut self, nats: &str) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
        cmd.args(["--listen", &self.addr().to_string(), "--shards", "2", "--no-pin", "--log", "info"])
            .args(["--nats-url", nats, "--node-name", &self.name, "--api-key", KEY, "--rate-limit", "0"])
            .args(["--data-dir", self.dir.to_str().unwrap(), "--history-messages", "5000"])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        self.server = Some(ChildServer::spawn(&mut cmd));
    }

    /// SIGTERM, then waits for the process to exit (successfully).
    fn stop(&mut self) {
        let mut server = self.server.take().expect("running");
        let pid = rustix::process::Pid::from_raw(server.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = server.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{} did not exit after SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{}: exit status {status}", self.name);
    }

    /// (`bus.stream_continuations`, `bus.epoch_changes`) of the running process.
    fn counters(&self) -> (u64, u64) {
        let s = Http::new(self.addr()).get_with_key("/stats", KEY).json();
        let bus = &s["bus"];
        (bus["stream_continuations"].as_u64().unwrap(), bus["epoch_changes"].as_u64().unwrap())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What one member saw, over all its connections.
#[derive(Default)]
struct Seen {
    /// Seqs of the room's messages in the order received (live and replayed).
    seqs: Vec<u64>,
    /// Text of each seq.
    texts: BTreeMap<u64, String>,
    /// `joined` frames of rejoins with `since`.
    rejoins: Vec<Value>,
    /// Close codes received.
    closes: Vec<u16>,
    /// Connected and joined now.
    joined: bool,
    /// The stream epoch from the first `joined`.
    epoch: String,
}

struct Member {
    seen: Arc<Mutex<Seen>>,
    thread: JoinHandle<()>,
}

/// A WebSocket connection to `addr` as `name`, or why not (the node may be restarting).
fn connect(addr: SocketAddr, name: &str) -> Result<WebSocket<TcpStream>, String> {
    let stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(PATIENCE)).map_err(|e| e.to_string())?;
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws?name={name}"), stream).map_err(|e| e.to_string())?;
    match ws.read() {
        Ok(Message::Text(t)) if t.contains("\"welcome\"") => Ok(ws),
        other => Err(format!("no welcome: {other:?}")),
    }
}

/// A member on node `node`: joins, records every message, and after a close waits for
/// the node's next generation (it was restarted) to reconnect and rejoin with `since`.
fn member(addr: SocketAddr, name: String, node: usize, gens: Arc<[AtomicU64; 3]>, stop: Arc<AtomicBool>) -> Member {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let thread = std::thread::spawn(move || {
        let mut generation = 0;
        while !stop.load(Ordering::Acquire) {
            let mut ws = connect(addr, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
            ws.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let since = {
                let s = s.lock().unwrap();
                s.seqs.last().map(|&seq| json!({"epoch": s.epoch, "seq": seq}))
            };
            let join = match &since {
                Some(since) => json!({"type":"join","room":ROOM,"since":since}),
                None => json!({"type":"join","room":ROOM}),
            };
            ws.send(Message::text(join.to_string())).unwrap();
            loop {
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        let mut s = s.lock().unwrap();
                        match v["type"].as_str() {
                            Some("message") if v["room"] == ROOM => {
                                let seq = v["seq"].as_u64().unwrap();
                                s.seqs.push(seq);
                                s.texts.insert(seq, v["text"].as_str().unwrap_or_default().to_owned());
                            }
                            Some("joined") if v["room"] == ROOM => {
                                if since.is_some() {
                                    s.rejoins.push(v.clone());
                                } else {
                                    s.epoch = v["epoch"].as_str().unwrap().to_owned();
                                }
                                s.joined = true;
                            }
                            Some("error") => panic!("{name}: {v}"),
                            _ => {}
                        }
                    }
                    Ok(Message::Close(frame)) => {
                        let code = frame.map_or(0, |f| u16::from(f.code));
                        let mut s = s.lock().unwrap();
                        s.closes.push(code);
                        s.joined = false;
                        break;
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                    {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                    }
                    Err(e) => {
                        let mut s = s.lock().unwrap();
                        s.closes.push(0);
                        s.joined = false;
                        drop(s);
                        eprintln!("{name}: connection lost: {e}");
                        break;
                    }
                }
            }
            // The node is going away: wait until it is back and whole in the cluster.
            let deadline = Instant::now() + 4 * PATIENCE;
            while gens[node].load(Ordering::Acquire) == generation {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                assert!(Instant::now() < deadline, "{name}: node {node} never came back");
                std::thread::sleep(Duration::from_millis(20));
            }
            generation = gens[node].load(Ordering::Acquire);
        }
    });
    Member { seen, thread }
}

/// Publishes `p0`, `p1`, … through the API of the nodes in turn (never the one being
/// restarted), until told to stop; returns the seqs the API answered.
fn publisher(addrs: Vec<SocketAddr>, down: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(PATIENCE)).build().into();
        let mut seqs = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Acquire) {
            let node = (i as usize) % addrs.len();
            i += 1;
            if node == down.load(Ordering::Acquire) {
                continue;
            }
            let body = json!({"room": ROOM, "text": format!("p{i}")}).to_string();
            let answer = agent
                .post(format!("http://{}/api/publish", addrs[node]))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {KEY}"))
                .send(body);
            if let Ok(mut r) = answer {
                if r.status() == 200 {
                    let v: Value =
                        serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default()).unwrap_or_default();
                    if let Some(seq) = v["seq"].as_u64() {
                        seqs.push(seq);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        seqs
    })
}

#[test]
fn a_rolling_restart_keeps_one_gap_free_stream_and_every_member_recovers() {
    let Some(bin) = nats_binary("a_rolling_restart_keeps_one_gap_free_stream_and_every_member_recovers") else {
        return;
    };
    let nats = Nats::start(bin);
    let url = nats.url();
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node {
            name: (*n).to_owned(),
            port: free_port(),
            dir: std::env::temp_dir().join(format!("corecast-it-rolling-{n}-{}", std::process::id())),
            server: None,
        })
        .collect();
    for n in &mut nodes {
        let _ = std::fs::remove_dir_all(&n.dir);
        n.start(&url);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    wait_for_cluster(&addrs, 3);

    // The stream first: an anchor per node subscribes it to the room, and a message
    // reaches all three, so the members below join the one stream (a node that has
    // not yet received a frame shows its own epoch in `joined`).
    let mut anchors: Vec<Client> = addrs.iter().map(|&a| Client::connect_to(a, "anchor")).collect();
    for a in &mut anchors {
        a.join(ROOM);
    }
    let r = Http::new(addrs[0]).post("/api/publish", Some(KEY), &json!({"room": ROOM, "text": "first"}));
    assert_eq!(r.status, 200, "{}", r.body);
    for a in &mut anchors {
        crate::cluster::wait_for(a, PATIENCE, |v| v["type"] == "message" && v["text"] == "first")
            .expect("the first message reaches every node");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let gens: Arc<[AtomicU64; 3]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let members: Vec<(usize, Member)> = (0..3)
        .flat_map(|n| (0..MEMBERS).map(move |k| (n, k)))
        .map(|(n, k)| (n, member(addrs[n], format!("m{n}{k}"), n, gens.clone(), stop.clone())))
        .collect();
    let all: Vec<&Member> = members.iter().map(|(_, m)| m).collect();
    let all_members = |f: &dyn Fn(&Seen) -> bool| all.iter().all(|m| f(&m.seen.lock().unwrap()));
    let deadline = Instant::now() + PATIENCE;
    while !all_members(&|s| s.joined) {
        assert!(Instant::now() < deadline, "members never joined");
        std::thread::sleep(Duration::from_millis(20));
    }
    let epoch = all[0].seen.lock().unwrap().epoch.clone();
    assert!(all_members(&|s| s.epoch == epoch), "every member joined the one stream");

    let down = Arc::new(AtomicUsize::new(NONE));
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publisher = publisher(addrs.clone(), down.clone(), stop_publishing.clone());
    let wait_progress = |what: &str| {
        let target = all.iter().filter_map(|m| m.seen.lock().unwrap().seqs.last().copied()).max().unwrap_or(0) + 10;
        let deadline = Instant::now() + 2 * PATIENCE;
        while !all_members(&|s| s.joined && s.seqs.last().is_some_and(|&l| l >= target)) {
            assert!(Instant::now() < deadline, "members never got past seq {target} {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_progress("before the restarts");

    // Counters of the first processes: their epoch changes so far (adopting the stream
    // at start) must not grow; every process's continuations add up.
    let mut continuations = 0;
    let mut baseline: Vec<u64> = nodes.iter().map(|n| n.counters().1).collect();
    for i in 0..nodes.len() {
        let (cont, epochs) = nodes[i].counters();
        assert_eq!(epochs, baseline[i], "{}: no new epoch before its restart", nodes[i].name);
        continuations += cont;
        down.store(i, Ordering::Release);
        let t = Instant::now();
        nodes[i].stop();
        nodes[i].start(&url);
        wait_for_cluster(&addrs, 3);
        eprintln!("rolling: {} restarted and live in the cluster in {:?}", nodes[i].name, t.elapsed());
        baseline[i] = 0;
        gens[i].fetch_add(1, Ordering::AcqRel);
        wait_progress(&format!("after restarting {}", nodes[i].name));
        down.store(NONE, Ordering::Release);
    }
    wait_progress("at the end");
    stop_publishing.store(true, Ordering::Release);
    let acked = publisher.join().unwrap();
    let last = acked.iter().copied().max().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !all_members(&|s| s.seqs.last().is_some_and(|&l| l >= last)) {
        assert!(Instant::now() < deadline, "members never got seq {last}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut final_epochs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (cont, epochs) = n.counters();
        continuations += cont;
        final_epochs.push((n.name.clone(), epochs, baseline[i]));
    }
    stop.store(true, Ordering::Release);
    drop(anchors);

    // One order: acked seqs are distinct; every member saw every seq from its first
    // one on exactly once, in order, with the same text as every other member.
    let mut sorted = acked.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), acked.len(), "no seq given twice");
    let mut texts: BTreeMap<u64, String> = BTreeMap::new();
    for (node, m) in &members {
        let s = m.seen.lock().unwrap();
        let first = s.seqs[0];
        let want: Vec<u64> = (first..=*s.seqs.last().unwrap()).collect();
        assert_eq!(s.seqs, want, "member of node {node}: one gap-free order, nothing twice");
        assert!(*s.seqs.last().unwrap() >= last);
        for (seq, text) in &s.texts {
            let t = texts.entry(*seq).or_insert_with(|| text.clone());
            assert_eq!(t, text, "seq {seq}: the same message everywhere");
        }
        for j in &s.rejoins {
            assert_eq!(j["recovered"], true, "member of node {node}: {j}");
            assert_eq!(j["epoch"], epoch.as_str(), "member of node {node}: the one stream: {j}");
        }
    }
    for (i, (node, m)) in members.iter().enumerate() {
        let s = m.seen.lock().unwrap();
        assert_eq!(s.rejoins.len(), 1, "member {i} of node {node} reconnected once");
        assert_eq!(s.closes, vec![1012], "member {i} of node {node}: closed with 1012 by its node's restart");
    }
    for (name, epochs, expected) in &final_epochs {
        assert_eq!(epochs, expected, "{name}: no new epoch after its restart");
    }
    assert!(continuations > 0, "the stream was handed over and continued");
    eprintln!("rolling: {} messages acked, last seq {last}, {continuations} continuations", acked.len());
    for (_, m) in members {
        m.thread.join().unwrap();
    }
}
