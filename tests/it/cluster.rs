//! The cluster over NATS: a real `nats-server` on an ephemeral port and several corecast
//! nodes (in this process, or as subprocesses where a test kills one with SIGKILL).
//!
//! `nats-server` must be on PATH (Debian package `nats-server`); without it every test
//! prints `skipped: nats-server not on PATH` and passes, unless
//! `CORECAST_REQUIRE_EXTERNAL=1` (CI), which turns the skip into a failure.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corecast::cluster::ClusterConfig;
use corecast::room::placement;
use serde_json::{json, Value};
use tungstenite::Message;

use crate::support::{skip, which, ChildServer, Client, Http, TestServer, PATIENCE};

pub(crate) const KEY: &str = "cluster-test-api-key-0123";

/// The documented bound (docs/CLUSTER.md) for a dead node's users to disappear: the node
/// timeout (3 s) plus 1 s.
const PRESENCE_BOUND: Duration = Duration::from_secs(4);

/// `nats-server` from PATH, or `None` after printing the skip line (panics instead when
/// `CORECAST_REQUIRE_EXTERNAL=1`).
pub(crate) fn nats_binary(test: &str) -> Option<PathBuf> {
    let found = which("nats-server");
    if found.is_none() {
        skip(&format!("cluster::{test}"), "nats-server not on PATH (Debian: apt-get install nats-server)");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `nats-server` child process on a fixed port (so it can be restarted on it).
pub(crate) struct Nats {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Nats {
    pub(crate) fn start(bin: PathBuf) -> Nats {
        let mut n = Nats { bin, port: free_port(), child: None };
        n.restart();
        n
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster_cfg(url: &str, name: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(url);
    c.node_name = name.to_owned();
    c
}

/// An in-process node of the cluster at `url`.
pub(crate) fn node(url: &str, name: &str) -> TestServer {
    node_with(url, name, |_| {})
}

/// [`node`] with its cluster settings changed by `tweak`.
fn node_with(url: &str, name: &str, tweak: impl FnOnce(&mut ClusterConfig)) -> TestServer {
    let mut cfg = cluster_cfg(url, name);
    tweak(&mut cfg);
    TestServer::with(move |c| {
        c.cluster = Some(cfg);
        c.api_key = Some(KEY.into());
    })
}

/// `n` in-process nodes named `<prefix>0`, `<prefix>1`, … on `nats`, once each sees all `n`.
fn live_nodes(nats: &Nats, n: usize, prefix: &str) -> Vec<TestServer> {
    let nodes: Vec<TestServer> = (0..n).map(|i| node(&nats.url(), &format!("{prefix}{i}"))).collect();
    wait_for_cluster(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>(), n as u64);
    nodes
}

/// The bus id of node `n` (its `/stats`).
fn node_id(n: &TestServer) -> u64 {
    node_id_at(n.addr)
}

/// The bus ids of `nodes`, in their order, and the same sorted: the live set every node
/// sees once the cluster has formed.
fn node_ids(nodes: &[TestServer]) -> (Vec<u64>, Vec<u64>) {
    let ids: Vec<u64> = nodes.iter().map(node_id).collect();
    let mut live = ids.clone();
    live.sort_unstable();
    (ids, live)
}

/// A node as a child process (so that it can be killed with SIGKILL).
fn child_node(url: &str, name: &str) -> ChildServer {
    ChildServer::spawn(ChildServer::command().args(["--nats-url", url, "--node-name", name, "--api-key", KEY]))
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc`), as after a
/// SIGSTOP has taken effect.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // `pid (comm) S …`: the state follows the last `)`, as comm may hold one.
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("T")
    })
}

/// The bus id of the node at `addr` (its `/stats`).
fn node_id_at(addr: SocketAddr) -> u64 {
    let hex = Http::new(addr).get("/stats").json()["bus"]["node"].as_str().unwrap().to_owned();
    u64::from_str_radix(&hex, 16).unwrap()
}

fn health(addr: SocketAddr) -> Value {
    Http::new(addr).get("/health").json()
}

/// Waits until every node is connected and sees `n` live nodes.
pub(crate) fn wait_for_cluster(addrs: &[SocketAddr], n: u64) {
    let deadline = Instant::now() + PATIENCE;
    for &a in addrs {
        loop {
            let h = health(a);
            if h["bus"] == "connected" && h["nodes"] == n {
                break;
            }
            assert!(Instant::now() < deadline, "node {a} never saw {n} nodes: {h}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The next frame satisfying `want` within `within`, skipping others; `None` on timeout.
pub(crate) fn wait_for(c: &mut Client, within: Duration, want: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            c.ws.get_ref().set_read_timeout(Some(crate::support::PATIENCE)).unwrap();
            return None;
        }
        c.ws.get_ref().set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match c.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if want(&v) {
                    c.ws.get_ref().set_read_timeout(Some(crate::support::PATIENCE)).unwrap();
                    return Some(v);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("connection lost: {e}"),
        }
    }
}

/// Asks for presence until the room shows exactly `users` (sorted), or fails.
pub(crate) fn wait_presence(c: &mut Client, room: &str, users: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        c.send(json!({"type":"presence","room":room}));
        if let Some(p) = wait_for(c, Duration::from_secs(2), |v| v["type"] == "presence") {
            let got: Vec<&str> = p["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
            if got == users {
                return;
            }
            last = p;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} never saw presence {users:?} in {room}; last {last}", c.user);
}

#[test]
fn members_on_three_nodes_see_one_order_and_one_presence() {
    let Some(bin) = nats_binary("members_on_three_nodes_see_one_order_and_one_presence") else { return };
    let nats = Nats::start(bin);
    let nodes: Vec<TestServer> = (0..3).map(|i| node(&nats.url(), &format!("n{i}"))).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    wait_for_cluster(&addrs, 3);

    let room = "order";
    let mut clients: Vec<Client> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..2 {
            let mut c = Client::connect(n, &format!("u{i}{j}"));
            c.join(room);
            clients.push(c);
        }
    }
    let mut names: Vec<String> = clients.iter().map(|c| c.user.clone()).collect();
    names.sort();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Presence is cluster-wide (this also proves every node receives the room).
    for c in clients.iter_mut() {
        wait_presence(c, room, &names, PATIENCE);
    }

    // Everyone talks at once; messages from all three nodes interleave.
    const EACH: usize = 8;
    for k in 0..EACH {
        for c in clients.iter_mut() {
            let user = c.user.clone();
            c.send(json!({"type":"message","room":room,"text":format!("{user}-{k}")}));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = EACH * clients.len();
    let mut streams: Vec<Vec<(u64, String, String)>> = Vec::new();
    for c in clients.iter_mut() {
        let mut got = Vec::new();
        while got.len() < total {
            let Some(m) = wait_for(c, PATIENCE, |v| v["type"] == "message") else {
                panic!("{} received {} of {total} messages: {got:?}", c.user, got.len());
            };
            got.push((
                m["seq"].as_u64().unwrap(),
                m["user"].as_str().unwrap().to_owned(),
                m["text"].as_str().unwrap().to_owned(),
            ));
        }
        streams.push(got);
    }
    // Nothing more (no duplicate): a message sent now, sequenced after all of them, is the
    // next one everyone receives.
    clients[0].send(json!({"type":"message","room":room,"text":"marker"}));
    for c in clients.iter_mut() {
        let m = wait_for(c, PATIENCE, |v| v["type"] == "message").expect("the marker arrives");
        assert_eq!(m["text"], "marker", "{} received more than the {total} messages: {m}", c.user);
    }
    let first = &streams[0];
    let seqs: Vec<u64> = first.iter().map(|m| m.0).collect();
    let start = seqs[0];
    assert_eq!(seqs, (start..start + total as u64).collect::<Vec<_>>(), "consecutive seq, no gap, no duplicate");
    for (i, s) in streams.iter().enumerate() {
        assert_eq!(s, first, "client {i} saw the same messages, in the same order, with the same seq");
    }
    // Each sender's own messages keep their order.
    for name in &names {
        let mine: Vec<&str> = first.iter().filter(|m| m.1 == *name).map(|m| m.2.as_str()).collect();
        let expected: Vec<String> = (0..EACH).map(|k| format!("{name}-{k}")).collect();
        assert_eq!(mine, expected);
    }

    // A newcomer on node 2 is announced to a member on node 0.
    let mut late = Client::connect(&nodes[2], "late");
    late.join(room);
    let ev = wait_for(&mut clients[0], PATIENCE, |v| v["type"] == "join" && v["user"] == "late");
    assert!(ev.is_some(), "join event crossed nodes");
    drop(late);
    let ev = wait_for(&mut clients[0], PATIENCE, |v| v["type"] == "leave" && v["user"] == "late");
    assert!(ev.is_some(), "leave event crossed nodes");

    // Stats and metrics show the bus.
    let stats = nodes[0].http().get("/stats").json();
    assert_eq!(stats["bus"]["state"], "connected", "{stats}");
    assert_eq!(stats["bus"]["nodes"], 3);
    assert!(stats["bus"]["relayed_out"].as_u64().unwrap() > 0);
    let metrics = nodes[1].http().get("/metrics").body;
    assert!(metrics.contains("corecast_bus_relay_dropped_total"), "{metrics}");
    assert!(metrics.contains("corecast_cluster_nodes 3"), "{metrics}");
}

/// `--cluster-room-buckets`: a node's public-room subscriptions are bounded by the bucket
/// count whatever its rooms, rooms still cross nodes with one order and presence, and a
/// node that hears a room of a shared bucket without having members there stays silent
/// about it (its members of other rooms of the bucket get nothing extra).
#[test]
fn room_buckets_bound_subscriptions_and_rooms_without_members_stay_silent() {
    let test = "room_buckets_bound_subscriptions_and_rooms_without_members_stay_silent";
    let Some(bin) = nats_binary(test) else { return };
    let nats = Nats::start(bin);
    const BUCKETS: u32 = 4;
    let nodes: Vec<TestServer> = (0..2)
        .map(|i| {
            let mut cfg = cluster_cfg(&nats.url(), &format!("b{i}"));
            cfg.room_buckets = BUCKETS;
            TestServer::with(move |c| {
                c.cluster = Some(cfg);
                c.api_key = Some(KEY.into());
            })
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    wait_for_cluster(&addrs, 2);

    // 20 rooms with members on both nodes: at most BUCKETS subscriptions on each.
    // Joins skip presence events: the holder may announce one member to the other
    // before the other's `joined` (docs/CLUSTER.md, "Events").
    let join = |c: &mut Client, room: &str| {
        c.send(json!({"type":"join","room":room}));
        wait_for(c, PATIENCE, |v| v["type"] == "joined" && v["room"] == room).expect("joined");
    };
    let rooms: Vec<String> = (0..20).map(|i| format!("bucketed-{i}")).collect();
    let mut a = Client::connect(&nodes[0], "a");
    let mut b = Client::connect(&nodes[1], "b");
    for r in &rooms {
        join(&mut a, r);
        join(&mut b, r);
    }
    for r in &rooms[..3] {
        wait_presence(&mut a, r, &["a", "b"], PATIENCE);
    }
    for n in &nodes {
        let subs = n.http().get("/stats").json()["bus"]["room_subscriptions"].as_u64().unwrap();
        assert!((1..=u64::from(BUCKETS)).contains(&subs), "{subs} room subscriptions for 20 rooms");
    }

    // Messages from both nodes into one room: one order, the same seq everywhere.
    let room = &rooms[7];
    for k in 0..5 {
        a.send(json!({"type":"message","room":room,"text":format!("a-{k}")}));
        b.send(json!({"type":"message","room":room,"text":format!("b-{k}")}));
    }
    let read = |c: &mut Client| -> Vec<(u64, String)> {
        (0..10)
            .map(|_| {
                let m = wait_for(c, PATIENCE, |v| v["type"] == "message").expect("message crosses nodes");
                (m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let (got_a, got_b) = (read(&mut a), read(&mut b));
    assert_eq!(got_a, got_b, "one order on both nodes");

    // A room with members on node 0 only, sequenced there, in the bucket of a room node 1
    // has members in: node 1 receives its frames (the bucket's subscription) and drops
    // them, although it keeps the room's presence (with 2 nodes it is the replica).
    let (ids, _) = node_ids(&nodes);
    let watched = "watched-on-both";
    let bucket = corecast::cluster::subject::bucket(watched, BUCKETS);
    let solo = (0..)
        .map(|i| format!("solo-{i}"))
        .find(|r| {
            corecast::cluster::subject::bucket(r, BUCKETS) == bucket
                && corecast::room::placement::sequencer(r, &ids) == Some(ids[0])
        })
        .unwrap();
    join(&mut a, watched);
    join(&mut b, watched);
    join(&mut a, &solo);
    wait_presence(&mut b, watched, &["a", "b"], PATIENCE);
    for k in 0..10 {
        a.send(json!({"type":"message","room":&solo,"text":format!("solo-{k}")}));
    }
    for k in 0..10 {
        let m = wait_for(&mut a, PATIENCE, |v| v["type"] == "message" && v["room"] == solo.as_str());
        assert_eq!(m.expect("the solo room's own member receives")["text"], format!("solo-{k}"));
    }
    a.send(json!({"type":"message","room":watched,"text":"marker"}));
    let m = wait_for(&mut b, PATIENCE, |v| v["type"] == "message").expect("marker crosses");
    assert_eq!(m["room"], watched, "node 1 handed out nothing of {solo}: {m}");
    assert_eq!(m["text"], "marker");
    let stats = nodes[1].http().get("/stats").json();
    assert_eq!(stats["bus"]["seq_gaps"], 0, "{stats}");
    // Node 1 must not keep the solo room's frames (node 0 holds 10 more).
    let history = |n: &TestServer| n.http().get("/stats").json()["history"]["messages"].as_u64().unwrap();
    assert_eq!(history(&nodes[1]) + 10, history(&nodes[0]), "node 1 kept no history of {solo}");
}

#[test]
fn api_publish_and_personal_rooms_reach_every_node() {
    let Some(bin) = nats_binary("api_publish_and_personal_rooms_reach_every_node") else { return };
    let nats = Nats::start(bin);
    let nodes = live_nodes(&nats, 3, "p");

    let mut a = Client::connect(&nodes[0], "ann");
    let mut b = Client::connect(&nodes[1], "ben");
    let mut d = Client::connect(&nodes[2], "dora");
    a.join("news");
    b.join("news");
    wait_presence(&mut a, "news", &["ann", "ben"], PATIENCE);
    wait_presence(&mut b, "news", &["ann", "ben"], PATIENCE);

    // A room publish on node 2 (no member there) reaches members on nodes 0 and 1.
    let r = nodes[2].http().post("/api/publish", Some(KEY), &json!({"room":"news","text":"extra"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["seq"].as_u64().is_some(), "{}", r.body);
    for c in [&mut a, &mut b] {
        let m = wait_for(c, PATIENCE, |v| v["type"] == "message").expect("room publish crossed nodes");
        assert_eq!(
            (m["room"].as_str(), m["text"].as_str(), m["user"].as_str()),
            (Some("news"), Some("extra"), Some("server"))
        );
    }

    // Pushes to one user, connected to two other nodes, reach both connections: each node
    // makes the personal room with the first frame for it, in one stream (same seqs).
    let mut d1 = Client::connect(&nodes[1], "dora");
    for (n, text) in [(1, "psst"), (2, "again")] {
        let r = nodes[0].http().post("/api/publish", Some(KEY), &json!({"users":["dora"],"text":text}));
        assert_eq!(r.status, 200, "{}", r.body);
        for c in [&mut d, &mut d1] {
            let m = wait_for(c, PATIENCE, |v| v["type"] == "message").expect("user push crossed nodes");
            assert_eq!(
                (m["room"].as_str(), m["text"].as_str(), m["seq"].as_u64()),
                (Some("@user:dora"), Some(text), Some(n)),
                "{m}"
            );
        }
    }
    drop(d1);

    // A broadcast from node 1 reaches everyone, on every node, once.
    let r = nodes[1].http().post("/api/publish", Some(KEY), &json!({"broadcast":true,"text":"all"}));
    assert_eq!(r.status, 200, "{}", r.body);
    for c in [&mut a, &mut b, &mut d] {
        let m = wait_for(c, PATIENCE, |v| v["type"] == "message").expect("broadcast crossed nodes");
        assert_eq!((m["room"].as_str(), m["text"].as_str()), (Some("@all"), Some("all")));
    }
    // Once: a second broadcast from the same node is the next message everyone receives.
    let r = nodes[1].http().post("/api/publish", Some(KEY), &json!({"broadcast":true,"text":"marker"}));
    assert_eq!(r.status, 200, "{}", r.body);
    for c in [&mut a, &mut b, &mut d] {
        let m = wait_for(c, PATIENCE, |v| v["type"] == "message").expect("the marker broadcast arrives");
        assert_eq!((m["room"].as_str(), m["text"].as_str()), (Some("@all"), Some("marker")), "{} got more", c.user);
    }

    // The HTTP presence of a room is cluster-wide on a node with members.
    let p = nodes[0].http().get("/api/rooms/news/presence").json();
    assert_eq!(p["users"], json!(["ann", "ben"]), "{p}");
}

#[test]
fn a_killed_node_leaves_presence_within_the_bound_and_the_rest_keep_serving() {
    let Some(bin) = nats_binary("a_killed_node_leaves_presence_within_the_bound_and_the_rest_keep_serving") else {
        return;
    };
    let nats = Nats::start(bin);
    let a = node(&nats.url(), "ka");
    let b = node(&nats.url(), "kb");
    let c = child_node(&nats.url(), "kc");
    wait_for_cluster(&[a.addr, b.addr, c.addr], 3);

    let room = "fate";
    let mut alice = Client::connect(&a, "alice");
    let mut bob = Client::connect(&b, "bob");
    let mut carol = Client::connect_to(c.addr, "carol");
    for cl in [&mut alice, &mut bob, &mut carol] {
        cl.join(room);
    }
    for cl in [&mut alice, &mut bob] {
        wait_presence(cl, room, &["alice", "bob", "carol"], PATIENCE);
    }

    let mut c = c;
    let killed = Instant::now();
    c.child.kill().unwrap(); // SIGKILL: no goodbye
    let _ = c.child.wait();
    let ev = wait_for(&mut alice, PATIENCE, |v| v["type"] == "leave" && v["user"] == "carol")
        .expect("carol's node died: she leaves");
    let took = killed.elapsed();
    let _ = writeln!(std::io::stderr(), "cluster: presence expiry after kill -9 took {took:?}");
    assert_eq!(ev["room"], room);
    assert!(took <= PRESENCE_BOUND + Duration::from_millis(750), "expiry took {took:?}, bound {PRESENCE_BOUND:?}");
    wait_presence(&mut bob, room, &["alice", "bob"], PATIENCE);
    wait_for_cluster(&[a.addr, b.addr], 2);

    // The survivors keep serving, across nodes.
    alice.say(room, "still here");
    let m = wait_for(&mut bob, PATIENCE, |v| v["type"] == "message").expect("a→b still works");
    assert_eq!(m["text"], "still here");
    let m = wait_for(&mut alice, PATIENCE, |v| v["type"] == "message").expect("a gets its own");
    assert_eq!(m["text"], "still here");
}

/// Regression: publishes forwarded to a room's sequencer in the moments before it died
/// (killed, not shut down) were lost without trace: core NATS drops a message for a
/// subject nobody listens on, and the origin kept nothing. The origin now holds every
/// forward until the receiving node confirms it, and sends the unconfirmed ones again to
/// the room's next sequencer once the dead node leaves the live set.
#[test]
fn regression_publishes_forwarded_to_a_sequencer_that_died_are_sequenced_by_its_successor() {
    let test = "regression_publishes_forwarded_to_a_sequencer_that_died_are_sequenced_by_its_successor";
    let Some(bin) = nats_binary(test) else { return };
    let nats = Nats::start(bin);
    // A long node timeout, so that even a slow host forwards all of alice's messages
    // to the frozen node before the others declare it dead.
    let patient = |name: &str| node_with(&nats.url(), name, |cfg| cfg.node_timeout = Duration::from_secs(10));
    let (a, b) = (patient("fa"), patient("fb"));
    let c = child_node(&nats.url(), "fc");
    wait_for_cluster(&[a.addr, b.addr, c.addr], 3);
    let mut live: Vec<u64> = [a.addr, b.addr, c.addr].iter().map(|&x| node_id_at(x)).collect();
    let c_id = live[2];
    live.sort_unstable();
    // A room the doomed node sequences.
    let room = (0..)
        .map(|i| format!("doomed-{i}"))
        .find(|r| placement::sequencer(r, &live) == Some(c_id))
        .expect("some room hashes to the third node");

    let mut alice = Client::connect(&a, "alice");
    let mut bob = Client::connect(&b, "bob");
    for cl in [&mut alice, &mut bob] {
        cl.join(&room);
    }
    wait_presence(&mut bob, &room, &["alice", "bob"], PATIENCE);

    // Freeze the sequencer, so that what alice publishes now is certainly forwarded to it
    // (and sits undelivered in NATS), then kill it: those forwards die with it.
    let mut c = c;
    let pid = c.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // The signal stops the threads asynchronously: on a busy host one of them ran on
    // long enough to take and sequence a message (CI saw 19 of 20 resent). Wait until
    // every thread of the node is stopped.
    let deadline = Instant::now() + PATIENCE;
    while !all_threads_stopped(c.child.id()) {
        assert!(Instant::now() < deadline, "the frozen node's threads never all stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    let forwarded = |s: &TestServer| s.http().get("/stats").json()["bus"]["forwarded"].as_u64().unwrap();
    let before = forwarded(&a);
    const N: usize = 20;
    for i in 0..N {
        alice.send(json!({"type":"message","room":room,"text":format!("m{i}"),"id":format!("r{i}")}));
    }
    let deadline = Instant::now() + PATIENCE;
    while forwarded(&a) < before + N as u64 {
        assert!(Instant::now() < deadline, "alice's node never forwarded her messages");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.child.kill().unwrap();
    let _ = c.child.wait();

    // The survivors sequence every one of them, in alice's order, once: bob receives
    // them all and alice gets an ack for each.
    let mut texts = Vec::new();
    while texts.len() < N {
        let m = wait_for(&mut bob, PATIENCE * 2, |v| v["type"] == "message")
            .unwrap_or_else(|| panic!("bob received only {texts:?} of the {N} forwarded to the dead node"));
        texts.push(m["text"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want);
    let mut acked = Vec::new();
    while acked.len() < N {
        let ack = wait_for(&mut alice, PATIENCE, |v| v["type"] == "ack").expect("an ack for each message");
        acked.push(ack["ref"].as_str().unwrap().to_owned());
    }
    assert_eq!(acked, (0..N).map(|i| format!("r{i}")).collect::<Vec<_>>());
    let bus = a.http().get("/stats").json()["bus"].clone();
    assert!(bus["forwards_resent"].as_u64().unwrap() >= N as u64, "{bus}");

    // And nothing more: no message twice.
    alice.say(&room, "after");
    let m = wait_for(&mut bob, PATIENCE, |v| v["type"] == "message").expect("the room still works");
    assert_eq!(m["text"], "after", "a duplicate arrived before the next message");
}

#[test]
fn nats_restart_local_delivery_continues_and_the_cluster_heals() {
    let Some(bin) = nats_binary("nats_restart_local_delivery_continues_and_the_cluster_heals") else { return };
    let mut nats = Nats::start(bin);
    let a = node(&nats.url(), "ra");
    let b = node(&nats.url(), "rb");
    wait_for_cluster(&[a.addr, b.addr], 2);
    let room = "storm";
    let mut alice = Client::connect(&a, "alice");
    let mut amy = Client::connect(&a, "amy");
    let mut bob = Client::connect(&b, "bob");
    for cl in [&mut alice, &mut amy, &mut bob] {
        cl.join(room);
    }
    wait_presence(&mut bob, room, &["alice", "amy", "bob"], PATIENCE);

    nats.kill();
    let deadline = Instant::now() + PATIENCE;
    while health(a.addr)["bus"] != "disconnected" || health(b.addr)["bus"] != "disconnected" {
        assert!(Instant::now() < deadline, "the nodes never noticed NATS went away");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(health(a.addr)["status"], "ok", "a node without its bus still serves");
    let dropped_before = a.http().get("/stats").json()["bus"]["relay_dropped"].as_u64().unwrap();
    // Local delivery keeps working while the bus is down.
    alice.say(room, "during outage");
    for cl in [&mut alice, &mut amy] {
        let m = wait_for(cl, PATIENCE, |v| v["type"] == "message").expect("local delivery in an outage");
        assert_eq!(m["text"], "during outage");
    }
    // What could not cross is counted, not silently lost. The bridge thread counts it
    // when it takes the frame from its queue, which may be after the local members got
    // theirs: wait for the count (a CI run on a loaded host read it a moment too early).
    let deadline = Instant::now() + PATIENCE;
    let stats = loop {
        let stats = a.http().get("/stats").json();
        if stats["bus"]["relay_dropped"].as_u64().unwrap() > dropped_before || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(stats["bus"]["state"], "disconnected");
    assert!(stats["bus"]["relay_dropped"].as_u64().unwrap() > dropped_before, "{}", stats["bus"]);
    let metrics = a.http().get("/metrics").body;
    assert!(metrics.contains("corecast_bus_connected 0"), "{metrics}");

    // Long enough for the nodes to declare each other dead: each side's users leave the
    // other's presence, and must come back after the restart.
    wait_presence(&mut bob, room, &["bob"], PRESENCE_BOUND + PATIENCE);
    let restarted = Instant::now();
    nats.restart();
    let deadline = Instant::now() + PATIENCE;
    while health(a.addr)["bus"] != "connected" || health(b.addr)["bus"] != "connected" {
        assert!(Instant::now() < deadline, "the nodes never reconnected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let reconnect = restarted.elapsed();
    let _ = writeln!(std::io::stderr(), "cluster: reconnect after nats-server restart took {reconnect:?}");
    assert!(a.http().get("/stats").json()["bus"]["reconnects"].as_u64().unwrap() >= 1);
    wait_for_cluster(&[a.addr, b.addr], 2);

    // Cross-node delivery resumes (the first probes may race the resubscription).
    let deadline = Instant::now() + PATIENCE;
    let mut n = 0;
    loop {
        n += 1;
        alice.say(room, &format!("probe {n}"));
        let text = format!("probe {n}");
        if wait_for(&mut bob, Duration::from_millis(500), |v| v["type"] == "message" && v["text"] == text.as_str())
            .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "cross-node delivery never resumed");
    }
    let healed = restarted.elapsed();
    let _ = writeln!(std::io::stderr(), "cluster: cross-node delivery resumed {healed:?} after the restart");
    // And presence is whole again.
    wait_presence(&mut bob, room, &["alice", "amy", "bob"], PATIENCE);
}

/// Issue 14 (count reports batched per holder shard and tick, count requests sent to the
/// holder only): every node shows each room's cluster-wide count, for many rooms whose
/// holders are spread over the nodes, and follows a departure.
#[test]
fn every_node_shows_the_cluster_wide_count_of_every_room() {
    let Some(bin) = nats_binary("every_node_shows_the_cluster_wide_count_of_every_room") else { return };
    let nats = Nats::start(bin);
    let nodes = live_nodes(&nats, 3, "c");
    const ROOMS: usize = 12;
    // One user per room and node: each room has 3 users, 1 on each node.
    let mut clients = Vec::new();
    for r in 0..ROOMS {
        for (i, n) in nodes.iter().enumerate() {
            let mut c = Client::connect(n, &format!("u{r}-{i}"));
            c.join(&format!("count{r:02}"));
            clients.push(c);
        }
    }
    let members = |n: &TestServer| -> Vec<(String, u64)> {
        let s = n.http().get("/stats?limit=100").json();
        let mut v: Vec<(String, u64)> = s["room_list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["room"].as_str()?.to_string(), r["members"].as_u64()?)))
            .filter(|(r, _)| r.starts_with("count"))
            .collect();
        v.sort();
        v
    };
    // `want(room)`: the cluster-wide count; `here(node, room)`: whether the node has
    // members there (a node without any may still keep the room's presence, and then
    // lists it with the same count, or may have dropped it).
    let wait_all = |want: &dyn Fn(usize) -> u64, here: &dyn Fn(usize, usize) -> bool| {
        for (i, n) in nodes.iter().enumerate() {
            let expected: Vec<(String, u64)> = (0..ROOMS).map(|r| (format!("count{r:02}"), want(r))).collect();
            let deadline = Instant::now() + PATIENCE;
            loop {
                let got = members(n);
                let listed = |r: usize| got.iter().any(|(name, _)| *name == expected[r].0);
                let shown: Vec<(String, u64)> =
                    (0..ROOMS).filter(|&r| here(i, r) || listed(r)).map(|r| expected[r].clone()).collect();
                if got == shown && (0..ROOMS).all(|r| !here(i, r) || listed(r)) {
                    break;
                }
                assert!(Instant::now() < deadline, "node {i} shows {got:?}, not the cluster-wide {shown:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    wait_all(&|_| 3, &|_, _| true);
    // The user of every even room on node 2 leaves: 2 users there, everywhere.
    for r in (0..ROOMS).step_by(2) {
        let c = &mut clients[r * 3 + 2];
        c.send(json!({"type":"leave","room":format!("count{r:02}")}));
        c.expect_skipping("left");
    }
    wait_all(&|r| if r % 2 == 0 { 2 } else { 3 }, &|node, r| node != 2 || r % 2 == 1);
}

/// Issue 14: a client that saw seq N on one node and rejoined on another whose copy of
/// the stream had not reached N got `recovered: false` although nothing was lost. Here
/// node 1 has no member of the room before the rejoin, so its copy starts only once it
/// has subscribed: the answer waits for the frames the client needs and the client
/// recovers, then reads every seq after N once, in order. Twice: rejoining as soon as
/// it read N (node 1's first frame is about N + 1), and after the stream went 20 further
/// (node 1's first frame is well after N: the frames between come from node 0, the
/// room's sequencer).
#[test]
fn a_rejoin_on_a_node_without_the_room_recovers_without_a_gap() {
    let Some(bin) = nats_binary("a_rejoin_on_a_node_without_the_room_recovers_without_a_gap") else { return };
    let nats = Nats::start(bin);
    let nodes = live_nodes(&nats, 2, "r");
    let (ids, live) = node_ids(&nodes);
    let id0 = ids[0];
    // Rooms that node 0 sequences: node 1 only ever follows their streams.
    let mut rooms = (0..).map(|i| format!("lag{i}")).filter(|r| placement::sequencer(r, &live) == Some(id0));
    for lead in [0, 20] {
        let room = rooms.next().unwrap();
        rejoin_on_a_node_without_the_room(&nodes, &room, lead);
    }
    // The owner shard hands its counts to the bus counters at its next sweep.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let bus = nodes[1].http().get("/stats").json()["bus"].clone();
        if bus["rejoins_held"].as_u64() >= Some(2) && bus["rejoins_held_recovered"].as_u64() >= Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "held rejoins never counted: {bus}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = nodes[1].http().get("/metrics").body;
    assert!(metrics.contains("corecast_bus_rejoins_held_recovered_total"), "{metrics}");
}

/// Issue 14: a client whose first `joined` came from a node that had no frame of the
/// room yet got that node's own epoch, which no stream has (frames do not carry the
/// epoch), so each later rejoin with it answered `recovered: false`. Here the client
/// joins a quiet room on node 1 (node 0 sequences it) before anything is published,
/// reads what is published, then rejoins on node 0 with `since` from its `joined`: it
/// recovers, and reads every later seq once, in order.
#[test]
fn a_first_join_on_a_node_that_does_not_sequence_the_room_gets_the_streams_epoch() {
    let test = "a_first_join_on_a_node_that_does_not_sequence_the_room_gets_the_streams_epoch";
    let Some(bin) = nats_binary(test) else { return };
    let nats = Nats::start(bin);
    let nodes = live_nodes(&nats, 2, "f");
    let (ids, live) = node_ids(&nodes);
    let id0 = ids[0];
    let mut rooms = (0..).map(|i| format!("quiet{i}")).filter(|r| placement::sequencer(r, &live) == Some(id0));
    let join = |c: &mut Client, room: &str| {
        c.send(json!({"type":"join","room":room}));
        wait_for(c, PATIENCE, |v| v["type"] == "joined").expect("joined")
    };
    // A node's shards learn the live set a moment after its /health shows it: a join
    // node 1's owner shard handled while it still saw itself alone was answered at once
    // with its own epoch, as on a single node. Such a room is left for the next.
    let deadline = Instant::now() + PATIENCE;
    let (room, mut client, epoch) = loop {
        let room = rooms.next().unwrap();
        let mut client = Client::connect(&nodes[1], &format!("c-{room}"));
        let joined = join(&mut client, &room);
        assert_eq!(joined["seq"], 0, "a quiet room: {joined}");
        // A client of node 0, the sequencer, is answered at once with the stream's epoch.
        let mut probe = Client::connect(&nodes[0], &format!("p-{room}"));
        let stream = join(&mut probe, &room)["epoch"].clone();
        if joined["epoch"] == stream {
            break (room, client, stream.as_str().unwrap().to_owned());
        }
        assert!(Instant::now() < deadline, "node 1 never answered a first join with the stream's epoch: {joined}");
    };
    let http = nodes[0].http();
    let publish = |k: u64| {
        let r = http.post("/api/publish", Some(KEY), &json!({"room":room,"text":format!("m{k}")}));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["seq"].as_u64().unwrap()
    };
    let read = |c: &mut Client, want: u64| {
        let m = wait_for(c, PATIENCE, |v| v["type"] == "message").expect("the stream flows");
        assert_eq!(m["seq"].as_u64(), Some(want), "no gap, no duplicate: {m}");
    };
    for k in 1..=5 {
        assert_eq!(publish(k), k, "the sequencer continues the epoch it told node 1 from seq 1");
        read(&mut client, k);
    }
    drop(client);
    // The client moves to node 0 with what it saw.
    let mut moved = Client::connect(&nodes[0], &format!("m-{room}"));
    moved.send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":5}}));
    let joined = wait_for(&mut moved, PATIENCE, |v| v["type"] == "joined").expect("an answer to the rejoin");
    assert_eq!(joined["recovered"], true, "nothing was lost: {joined}");
    assert_eq!((joined["epoch"].as_str(), joined["seq"].as_u64()), (Some(epoch.as_str()), Some(5)), "{joined}");
    for k in 6..=10 {
        publish(k);
        read(&mut moved, k);
    }
    // The owner shard hands its counts to the bus counters at its next sweep.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let bus = nodes[1].http().get("/stats").json()["bus"].clone();
        if bus["joins_held_for_stream"].as_u64() >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "held first joins never counted: {bus}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = nodes[1].http().get("/metrics").body;
    assert!(metrics.contains("corecast_bus_joins_held_timed_out_total"), "{metrics}");
}

/// A client on `nodes[0]` reads `room` (streaming from an API publisher there) up to
/// some seq N, and once the stream reached N + `lead`, rejoins on `nodes[1]` with
/// `since` N: it must recover exactly the frames after N, then follow live.
fn rejoin_on_a_node_without_the_room(nodes: &[TestServer], room: &str, lead: u64) {
    let mut first = Client::connect(&nodes[0], &format!("first-{room}"));
    let epoch = first.join(room)["epoch"].as_str().unwrap().to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (http, room, stop) = (nodes[0].http(), room.to_owned(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http.post("/api/publish", Some(KEY), &json!({"room":room,"text":format!("m{k}")}));
                assert_eq!(r.status, 200, "{}", r.body);
                k += 1;
                // Paced, so that the stream stays within the history a catch-up reads.
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let read_to = |c: &mut Client, seq: u64| {
        let mut at = 0;
        while at < seq {
            let m = wait_for(c, PATIENCE, |v| v["type"] == "message").expect("the stream flows");
            at = m["seq"].as_u64().unwrap();
        }
        at
    };
    let seen = read_to(&mut first, 20);
    read_to(&mut first, seen + lead);
    let mut moved = Client::connect(&nodes[1], &format!("moved-{room}"));
    moved.send(json!({"type":"join","room":room,"since":{"epoch":epoch,"seq":seen}}));
    let mut replayed = Vec::new();
    let joined = loop {
        let v = wait_for(&mut moved, PATIENCE, |v| v["type"] == "message" || v["type"] == "joined")
            .expect("an answer to the rejoin");
        if v["type"] == "joined" {
            break v;
        }
        replayed.push(v["seq"].as_u64().unwrap());
    };
    assert_eq!(joined["recovered"], true, "lead {lead}: {joined}");
    assert_eq!(joined["epoch"].as_str(), Some(epoch.as_str()), "{joined}");
    let head = joined["seq"].as_u64().unwrap();
    assert_eq!(replayed, (seen + 1..=head).collect::<Vec<_>>(), "exactly the frames after since, up to joined");
    let mut next = head;
    while next < head + 30 {
        let m = wait_for(&mut moved, PATIENCE, |v| v["type"] == "message").expect("the live stream follows");
        assert_eq!(m["seq"].as_u64(), Some(next + 1), "no gap, no duplicate: {m}");
        next += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.join().unwrap();
}
