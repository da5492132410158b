//! The application backend in the loop (docs/BACKEND.md): a real HTTP backend in this
//! process (a small keep-alive HTTP/1.1 server on a thread per connection) answers
//! corecast's proxy calls and receives its webhooks.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corecast::backend::hooks::EventSet;
use corecast::backend::sign;
use corecast::Config;
use serde_json::{json, Value};

use crate::support::{dial, Client, Dial, TestServer, PATIENCE};

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";
const PROXY_SECRET: &str = "proxy-secret-0123456789";

/// One request the backend received.
#[derive(Debug, Clone)]
struct Req {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Req {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("corecast sends JSON")
    }
}

/// What the backend answers: status, JSON body, and how long to wait first.
struct Reply {
    status: u16,
    body: Value,
    delay: Duration,
}

fn ok(body: Value) -> Reply {
    Reply { status: 200, body, delay: Duration::ZERO }
}

type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

/// The test's application backend.
struct Backend {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<(Req, u16)>>>,
    /// Serves https (with this configuration) instead of http.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Backend {
    fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Backend {
        Backend::start_with(None, handler)
    }

    fn start_with(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Req) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let thread_log = log.clone();
        let thread_tls = tls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (handler, log, tls) = (handler.clone(), thread_log.clone(), thread_tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(stream, &*handler, &log),
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg) else { return };
                        serve(rustls::StreamOwned::new(conn, stream), &*handler, &log)
                    }
                });
            }
        });
        Backend { addr, log, tls }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    fn requests(&self, path: &str) -> Vec<(Req, u16)> {
        self.log.lock().unwrap().iter().filter(|(r, _)| r.path == path).cloned().collect()
    }

    /// Waits until `done` holds for the requests to `path`.
    fn wait(&self, path: &str, what: &str, done: impl Fn(&[(Req, u16)]) -> bool) -> Vec<(Req, u16)> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reqs = self.requests(path);
            if done(&reqs) {
                return reqs;
            }
            assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}; got {reqs:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Serves one keep-alive connection until the client closes it.
fn serve(stream: impl Read + Write, handler: &(dyn Fn(&Req) -> Reply + Send + Sync), log: &Mutex<Vec<(Req, u16)>>) {
    let mut input = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if input.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        if input.read_exact(&mut body).is_err() {
            return;
        }
        let req = Req { path, headers, body };
        let reply = handler(&req);
        log.lock().unwrap().push((req, reply.status));
        std::thread::sleep(reply.delay);
        let body = reply.body.to_string();
        let head = format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.status,
            body.len()
        );
        let out = input.get_mut();
        if out
            .write_all(head.as_bytes())
            .and_then(|()| out.write_all(body.as_bytes()))
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

fn guest(server: &TestServer, name: &str) -> Result<Client, u16> {
    dial(server.addr, &Dial { query: &format!("name={name}"), from: None, protocols: None, origin: None })
}

/// The next frame satisfying `want`, skipping others.
fn next_where(c: &mut Client, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = c.recv();
        if want(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "nothing wanted within {PATIENCE:?}");
    }
}

#[test]
fn connect_proxy_allows_denies_and_fails_closed_on_timeout() {
    let backend = Backend::start(|r| {
        let q = r.json()["query"].as_str().unwrap_or_default().to_owned();
        if q.contains("name=ok") {
            ok(json!({"result":"allow","user":"u-ok","name":"Okay","rooms":["team-*"]}))
        } else if q.contains("name=slow") {
            Reply { delay: Duration::from_secs(3), ..ok(json!({"result":"allow","user":"late"})) }
        } else {
            ok(json!({"result":"deny","status":401,"code":"no_entry","message":"who are you"}))
        }
    });
    let url = backend.url("/connect");
    let server = TestServer::with(|c: &mut Config| {
        c.backend.connect_url = Some(url);
        c.backend.timeout = Duration::from_millis(500);
        c.backend.proxy_secret = Some(PROXY_SECRET.into());
    });

    let mut c = guest(&server, "ok").expect("allowed");
    assert_eq!(c.user, "u-ok", "the backend names the user");
    c.send(json!({"type":"join","room":"lobby","id":"j1"}));
    let e = c.expect("error");
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("forbidden"), Some("j1")), "{e}");
    c.join("team-a");

    assert_eq!(guest(&server, "mallory").err(), Some(401), "the backend's status");
    assert_eq!(guest(&server, "slow").err(), Some(503), "no answer in time: fail closed");

    let reqs = backend.requests("/connect");
    assert_eq!(reqs.len(), 3);
    for (r, _) in &reqs {
        let sig = r.headers.get("x-corecast-signature").expect("signed");
        assert!(sign::verify(PROXY_SECRET.as_bytes(), &r.body, sig), "signature of {r:?}");
        let v = r.json();
        assert_eq!(v["remote_addr"], "127.0.0.1");
        assert!(v["claims"].is_null(), "no token, no claims");
    }
    let report = server.http().get("/health").json();
    assert_eq!(report["backend"], "down", "the last call timed out: {report}");
}

#[test]
fn subscribe_denied_the_client_sees_forbidden_and_stays_connected() {
    let backend = Backend::start(|r| {
        if r.json()["room"] == "secret" {
            ok(json!({"result":"deny","message":"members only"}))
        } else {
            ok(json!({"result":"allow"}))
        }
    });
    let url = backend.url("/subscribe");
    let server = TestServer::with(|c: &mut Config| c.backend.subscribe_url = Some(url));
    let mut c = Client::connect(&server, "ann");
    c.send(json!({"type":"join","room":"secret","id":"s1"}));
    // A message to the room while the backend decides is not a member's message.
    c.send(json!({"type":"message","room":"secret","text":"sneak","id":"m1"}));
    let mut errors = vec![c.expect("error"), c.expect("error")];
    errors.sort_by_key(|e| e["ref"].as_str().unwrap_or_default().to_owned());
    assert_eq!(errors[0]["ref"], "m1", "{errors:?}");
    assert_eq!(errors[0]["code"], "not_member", "{}", errors[0]);
    assert_eq!((errors[1]["code"].as_str(), errors[1]["message"].as_str()), (Some("forbidden"), Some("members only")));
    // Still connected, and other rooms work.
    c.join("open");
    c.say("open", "hello");
    let m = next_where(&mut c, |v| v["type"] == "message");
    assert_eq!(m["text"], "hello");
    let asked: Vec<String> =
        backend.requests("/subscribe").iter().map(|(r, _)| r.json()["room"].as_str().unwrap().to_owned()).collect();
    assert_eq!(asked, ["secret", "open"], "personal rooms are not asked about");
}

#[test]
fn publish_proxy_replaces_and_denies_and_keeps_each_clients_order() {
    let n = AtomicUsize::new(0);
    let backend = Backend::start(move |r| {
        let v = r.json();
        // Later messages answer sooner: order must come from corecast, not the backend.
        let i = n.fetch_add(1, Ordering::Relaxed) as u64;
        let delay = Duration::from_millis(30u64.saturating_sub(i));
        let reply = match v["text"].as_str() {
            Some("bad") => json!({"result":"deny","message":"not here"}),
            Some("swear") => json!({"result":"replace","text":"*****","data":{"moderated":true}}),
            _ => json!({"result":"allow"}),
        };
        Reply { delay, ..ok(reply) }
    });
    let url = backend.url("/publish");
    let server = TestServer::with(|c: &mut Config| {
        c.backend.publish_url = Some(url);
        c.rate_limit = 0;
    });
    let mut watcher = Client::connect(&server, "watcher");
    watcher.join("r");
    let mut sender = Client::connect(&server, "sender");
    sender.join("r");
    sender.send(json!({"type":"message","room":"r","text":"bad","id":"x"}));
    let e = next_where(&mut sender, |v| v["type"] == "error");
    assert_eq!(
        (e["code"].as_str(), e["message"].as_str(), e["ref"].as_str()),
        (Some("forbidden"), Some("not here"), Some("x"))
    );
    sender.say("r", "swear");
    let m = next_where(&mut watcher, |v| v["type"] == "message");
    assert_eq!((m["text"].as_str(), m["data"].clone()), (Some("*****"), json!({"moderated":true})), "{m}");
    for i in 0..20 {
        sender.say("r", &format!("m{i}"));
    }
    for i in 0..20 {
        let m = next_where(&mut watcher, |v| v["type"] == "message");
        assert_eq!(m["text"], format!("m{i}"), "send order kept");
    }
    assert!(backend.requests("/publish").iter().all(|(r, _)| r.json()["user"] == "sender"));
}

/// The events of every webhook POST that was answered 2xx, each event once (by id), in
/// delivery order; every POST's signature checked.
fn delivered(backend: &Backend) -> Vec<Value> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (r, status) in backend.requests("/hooks") {
        let sig = r.headers.get("x-corecast-signature").expect("signed");
        assert!(sign::verify(WEBHOOK_SECRET.as_bytes(), &r.body, sig), "bad signature");
        let body = r.json();
        assert_eq!(r.headers.get("x-corecast-timestamp").map(String::as_str), Some(&*body["sent_at"].to_string()));
        if status != 200 {
            continue;
        }
        for e in body["events"].as_array().unwrap() {
            if seen.insert(e["id"].as_str().unwrap().to_owned()) {
                out.push(e.clone());
            }
        }
    }
    out
}

fn hook_server(backend: &Backend) -> TestServer {
    let url = backend.url("/hooks");
    TestServer::with(|c: &mut Config| {
        c.backend.webhook_url = Some(url);
        c.backend.webhook_secret = Some(WEBHOOK_SECRET.into());
        c.backend.webhook_events = EventSet::ALL;
        c.backend.webhook_batch_interval = Duration::from_millis(50);
    })
}

fn short(events: &[Value], room: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["room"] == room)
        .map(|e| format!("{}:{}", e["type"].as_str().unwrap(), e["user"].as_str().unwrap_or("-")))
        .collect()
}

#[test]
fn webhooks_arrive_signed_in_batches_retried_after_two_500s_in_order_per_room() {
    let posts = AtomicUsize::new(0);
    let backend = Backend::start(move |_| {
        if posts.fetch_add(1, Ordering::Relaxed) < 2 {
            Reply { status: 500, body: json!({}), delay: Duration::ZERO }
        } else {
            ok(json!({}))
        }
    });
    let server = hook_server(&backend);
    let mut ann = Client::connect(&server, "ann");
    let mut ben = Client::connect(&server, "ben");
    ann.join("a");
    ben.join("a");
    ben.join("b");
    ann.send(json!({"type":"leave","room":"a"}));
    ann.expect_skipping("left");
    drop(ben);
    let want_a = [
        "room_occupied:-",
        "member_joined:ann",
        "member_joined:ben",
        "member_left:ann",
        "member_left:ben",
        "room_vacated:-",
    ];
    let want_b = ["room_occupied:-", "member_joined:ben", "member_left:ben", "room_vacated:-"];
    backend.wait("/hooks", "every event delivered", |_| {
        let ev = delivered(&backend);
        short(&ev, "a").len() >= want_a.len() && short(&ev, "b").len() >= want_b.len()
    });
    let ev = delivered(&backend);
    assert_eq!(short(&ev, "a"), want_a, "room a in order, each once: {ev:?}");
    assert_eq!(short(&ev, "b"), want_b, "room b in order, each once");
    assert!(short(&ev, "@user:ann").contains(&"user_online:ann".to_owned()));
    let reqs = backend.requests("/hooks");
    assert_eq!((reqs[0].1, reqs[1].1, reqs[2].1), (500, 500, 200));
    let ids = |r: &Req| -> Vec<String> {
        r.json()["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&reqs[0].0), ids(&reqs[1].0), "a retry resends the same events with the same ids");
    assert!(ids(&reqs[2].0).starts_with(&ids(&reqs[0].0)));
    let ev_all: Vec<&str> = ev.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let unique: HashSet<&&str> = ev_all.iter().collect();
    assert_eq!(unique.len(), ev_all.len());
    let m = server.http().get("/metrics").body;
    assert!(m.contains("corecast_webhook_retries_total 2"), "{m}");
}

#[test]
fn a_stalled_backend_delays_only_the_requests_waiting_on_it() {
    let backend = Backend::start(|r| {
        let v = r.json();
        if v["room"] == "stalled" {
            Reply { delay: Duration::from_secs(10), ..ok(json!({"result":"allow"})) }
        } else {
            ok(json!({"result":"allow"}))
        }
    });
    let url = backend.url("/publish");
    let server = TestServer::with(|c: &mut Config| {
        c.backend.publish_url = Some(url);
        c.backend.timeout = Duration::from_secs(30);
        c.rate_limit = 0;
    });
    let mut stuck = Client::connect(&server, "stuck");
    stuck.join("stalled");
    let mut watcher = Client::connect(&server, "watcher");
    watcher.join("free");
    let mut sender = Client::connect(&server, "sender");
    sender.join("free");
    let started = Instant::now();
    stuck.say("stalled", "waits");
    backend.wait("/publish", "the stalled call reached the backend", |r| !r.is_empty());
    let n = 100;
    for i in 0..n {
        sender.say("free", &format!("f{i}"));
    }
    for i in 0..n {
        let m = next_where(&mut watcher, |v| v["type"] == "message");
        assert_eq!(m["text"], format!("f{i}"), "the watcher loses nothing");
    }
    let free_done = started.elapsed();
    let m = next_where(&mut stuck, |v| v["type"] == "message");
    assert_eq!(m["text"], "waits");
    let stalled_done = started.elapsed();
    assert!(stalled_done >= Duration::from_secs(10), "the stalled message waited for its answer");
    eprintln!("other room done after {free_done:?}; the stalled message after {stalled_done:?}");
}

#[test]
fn over_max_in_flight_is_refused_unavailable_and_counted() {
    // The backend holds every answer until the test releases it.
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = release.clone();
    let backend = Backend::start(move |_| {
        let deadline = Instant::now() + PATIENCE;
        while !held.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        ok(json!({"result":"allow"}))
    });
    let url = backend.url("/publish");
    let server = TestServer::with(|c: &mut Config| {
        c.shards = 1;
        c.backend.publish_url = Some(url);
        c.backend.max_in_flight = 1;
    });
    let mut c = Client::connect(&server, "ann");
    c.join("r");
    c.send(json!({"type":"message","room":"r","text":"one","id":"1"}));
    c.send(json!({"type":"message","room":"r","text":"two","id":"2"}));
    let e = next_where(&mut c, |v| v["type"] == "error");
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("unavailable"), Some("2")));
    release.store(true, Ordering::Relaxed);
    let m = next_where(&mut c, |v| v["type"] == "message");
    assert_eq!(m["text"], "one");
    let metrics = server.http().get("/metrics").body;
    assert!(metrics.contains("corecast_backend_proxy_busy_total 1"), "{metrics}");
}

/// A cluster node on `nats` sending its webhooks, in batches every 20 ms, to `backend`
/// (`shards`: the default when `None`).
fn webhook_node(nats: &crate::cluster::Nats, backend: &Backend, name: &str, shards: Option<usize>) -> TestServer {
    let (url, hooks) = (nats.url(), backend.url("/hooks"));
    let mut cc = corecast::cluster::ClusterConfig::new(&url);
    cc.node_name = name.to_owned();
    TestServer::with(move |c: &mut Config| {
        if let Some(n) = shards {
            c.shards = n;
        }
        c.cluster = Some(cc);
        c.backend.webhook_url = Some(hooks);
        c.backend.webhook_secret = Some(WEBHOOK_SECRET.into());
        c.backend.webhook_batch_interval = Duration::from_millis(20);
    })
}

/// A cluster of two nodes, both sending webhooks to one backend: each presence change is
/// emitted once, by the room's holder.
#[test]
fn cluster_emits_room_occupied_and_member_joined_once() {
    let Some(bin) = crate::cluster::nats_binary("backend_webhooks_once") else { return };
    let nats = crate::cluster::Nats::start(bin);
    let backend = Backend::start(|_| ok(json!({})));
    let node = |name: &str| webhook_node(&nats, &backend, name, None);
    let (a, b) = (node("a"), node("b"));
    crate::cluster::wait_for_cluster(&[a.addr, b.addr], 2);
    let mut clients = Vec::new();
    for (i, server) in [&a, &b, &a, &b].into_iter().enumerate() {
        let mut c = Client::connect(server, &format!("u{i}"));
        c.join("shared");
        clients.push(c);
    }
    let count = |ev: &[Value], kind: &str, user: Option<&str>| {
        ev.iter().filter(|e| e["room"] == "shared" && e["type"] == kind && e["user"].as_str() == user).count()
    };
    backend.wait("/hooks", "all four members announced", |_| {
        let ev = delivered(&backend);
        (0..4).all(|i| count(&ev, "member_joined", Some(&format!("u{i}"))) > 0)
    });
    // A late marker from each node: its webhook queue is in order, so anything either node
    // emitted for the joins above has arrived once both markers have. A user's
    // `user_online` comes from the holder of its personal room: each marker is a user
    // whose personal room that node holds.
    let ids = [node_id(&a), node_id(&b)];
    let (mark_a, mark_b) = (marker(&ids, ids[0], "mark-a"), marker(&ids, ids[1], "mark-b"));
    let _marks = (Client::connect(&a, &mark_a), Client::connect(&b, &mark_b));
    backend.wait("/hooks", "both markers", |_| {
        let ev = delivered(&backend);
        [&mark_a, &mark_b].iter().all(|m| ev.iter().any(|e| e["type"] == "user_online" && e["user"] == **m))
    });
    let ev = delivered(&backend);
    assert_eq!(count(&ev, "room_occupied", None), 1, "{ev:?}");
    for i in 0..4 {
        assert_eq!(count(&ev, "member_joined", Some(&format!("u{i}"))), 1, "u{i}: {ev:?}");
    }
}

/// A cluster node's id (`/stats`).
fn node_id(server: &TestServer) -> u64 {
    let hex = server.http().get("/stats").json()["bus"]["node"].as_str().unwrap().to_owned();
    u64::from_str_radix(&hex, 16).unwrap()
}

/// A user name starting with `prefix` whose personal room node `holder` holds (among `ids`).
fn marker(ids: &[u64], holder: u64, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|u| corecast::room::placement::sequencer(&format!("@user:{u}"), ids) == Some(holder))
        .unwrap()
}

/// Waits until `server` owns `n` personal rooms: its users' connections (and departures)
/// are sequenced, and whatever they tell the cluster is on its way.
fn wait_personal(server: &TestServer, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = server.http().get("/stats").json()["rooms"]["personal"].as_u64();
        if got == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "personal rooms: {got:?}, not {n}, within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same user connected to both nodes of a cluster is online once and offline once:
/// the holder of the user's personal room decides, from each node's first and last
/// connection.
#[test]
fn cluster_emits_user_online_and_offline_once() {
    let Some(bin) = crate::cluster::nats_binary("backend_users_once") else { return };
    let nats = crate::cluster::Nats::start(bin);
    let backend = Backend::start(|_| ok(json!({})));
    // One shard: a node's webhook events and bus messages keep one order.
    let node = |name: &str| webhook_node(&nats, &backend, name, Some(1));
    let (a, b) = (node("a"), node("b"));
    crate::cluster::wait_for_cluster(&[a.addr, b.addr], 2);
    let ids = [node_id(&a), node_id(&b)];
    let holder = corecast::room::placement::sequencer("@user:zoe", &ids).unwrap();
    let zoe = |ev: &[Value], kind: &str| ev.iter().filter(|e| e["type"] == kind && e["user"] == "zoe").count();
    // Flushes: a marker user held by zoe's holder, connected on `on` after what `on`
    // did is sequenced; once its `user_online` arrives, so has anything the holder
    // emitted for zoe before (one shard, bus messages from one node in order).
    let mut markers = Vec::new();
    let mut flush = |on: &TestServer, personal: &mut u64| {
        let m = marker(&ids, holder, &format!("mark{}", markers.len()));
        markers.push(Client::connect(on, &m));
        *personal += 1;
        wait_personal(on, *personal);
        backend.wait("/hooks", "the marker", |_| {
            delivered(&backend).iter().any(|e| e["type"] == "user_online" && e["user"] == *m)
        });
    };
    let (mut on_a, mut on_b) = (0u64, 0u64);
    let zoe_a = Client::connect(&a, "zoe");
    on_a += 1;
    wait_personal(&a, on_a);
    let zoe_b = Client::connect(&b, "zoe");
    on_b += 1;
    wait_personal(&b, on_b);
    flush(&a, &mut on_a);
    flush(&b, &mut on_b);
    let ev = delivered(&backend);
    assert_eq!((zoe(&ev, "user_online"), zoe(&ev, "user_offline")), (1, 0), "one user_online: {ev:?}");

    drop(zoe_a);
    on_a -= 1;
    wait_personal(&a, on_a);
    flush(&a, &mut on_a);
    let ev = delivered(&backend);
    assert_eq!((zoe(&ev, "user_online"), zoe(&ev, "user_offline")), (1, 0), "still on b: no event: {ev:?}");

    drop(zoe_b);
    on_b -= 1;
    wait_personal(&b, on_b);
    flush(&b, &mut on_b);
    flush(&a, &mut on_a);
    let ev = delivered(&backend);
    assert_eq!((zoe(&ev, "user_online"), zoe(&ev, "user_offline")), (1, 1), "one user_offline: {ev:?}");
    let holder_events: Vec<&Value> = ev.iter().filter(|e| e["user"] == "zoe").collect();
    assert!(holder_events.iter().all(|e| e["room"] == "@user:zoe"), "{holder_events:?}");
}

/// `message_published` (named in `--webhook-events`): every sequenced message once, in seq
/// order, with its position and content; volatile messages are not archived, and with
/// `all` alone nothing is.
#[test]
fn message_published_archives_sequenced_messages_in_order() {
    let backend = Backend::start(|_| ok(json!({})));
    let url = backend.url("/hooks");
    let server = TestServer::with(|c: &mut Config| {
        c.backend.webhook_url = Some(url);
        c.backend.webhook_secret = Some(WEBHOOK_SECRET.into());
        c.backend.webhook_events = EventSet::parse("all,message_published").unwrap();
        c.backend.webhook_batch_interval = Duration::from_millis(20);
    });
    let mut ann = Client::connect(&server, "ann");
    let epoch = ann.join("m")["epoch"].as_str().unwrap().to_owned();
    ann.send(json!({"type":"message","room":"m","text":"one"}));
    ann.send(json!({"type":"message","room":"m","event":"typing","data":{"on":true},"volatile":true}));
    ann.send(json!({"type":"message","room":"m","data":{"n":2,"list":[1,"x"]}}));
    ann.send(json!({"type":"message","room":"m","text":"three","data":"a string"}));
    let published =
        |ev: &[Value]| -> Vec<Value> { ev.iter().filter(|e| e["type"] == "message_published").cloned().collect() };
    backend.wait("/hooks", "three messages", |_| published(&delivered(&backend)).len() >= 3);
    // A later event of the same node flushes anything emitted after the three.
    let _marker = Client::connect(&server, "marker");
    backend.wait("/hooks", "the marker", |_| {
        delivered(&backend).iter().any(|e| e["type"] == "user_online" && e["user"] == "marker")
    });
    let got = published(&delivered(&backend));
    assert_eq!(got.len(), 3, "the volatile message is not archived: {got:?}");
    for (i, e) in got.iter().enumerate() {
        assert_eq!((e["room"].as_str(), e["user"].as_str()), (Some("m"), Some("ann")));
        assert_eq!((e["seq"].as_u64(), e["epoch"].as_str()), (Some(i as u64 + 1), Some(&*epoch)));
        assert!(e["ts"].as_u64().is_some_and(|t| t > 0) && e["id"].is_string());
    }
    assert_eq!((got[0]["text"].as_str(), got[0].get("data")), (Some("one"), None));
    assert_eq!(got[1]["data"], json!({"n":2,"list":[1,"x"]}), "data as the JSON it is");
    assert_eq!((got[2]["text"].as_str(), got[2]["data"].as_str()), (Some("three"), Some("a string")));

    // The default event set (`all`) has no message_published.
    let quiet = Backend::start(|_| ok(json!({})));
    let server = hook_server(&quiet);
    let mut ben = Client::connect(&server, "ben");
    ben.join("m");
    ben.send(json!({"type":"message","room":"m","text":"not archived"}));
    ben.expect_skipping("message");
    let _marker = Client::connect(&server, "marker");
    quiet.wait("/hooks", "the marker", |_| {
        delivered(&quiet).iter().any(|e| e["type"] == "user_online" && e["user"] == "marker")
    });
    assert!(published(&delivered(&quiet)).is_empty());
}

/// A test CA (its certificate as PEM) and a server configuration whose certificate, for
/// 127.0.0.1, that CA signed.
fn test_pki() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "corecast test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .unwrap();
    (ca.pem(), Arc::new(cfg))
}

/// An https backend whose certificate a private CA signed: trusted through
/// `--backend-ca-file`, the connect proxy works over TLS; without the CA the same backend
/// is not trusted, upgrades fail closed (503) and `/health` says the backend is down.
#[test]
fn https_backend_trusted_through_the_ca_file_and_failing_closed_without_it() {
    let (ca_pem, tls) = test_pki();
    let backend = Backend::start_with(Some(tls), |_| ok(json!({"result":"allow","user":"over-tls"})));
    let url = backend.url("/connect");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca_file = std::env::temp_dir().join(format!("corecast-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca_pem).unwrap();

    let (u, ca) = (url.clone(), ca_file.clone());
    let server = TestServer::with(move |c: &mut Config| {
        c.backend.connect_url = Some(u);
        c.backend.ca_file = Some(ca);
    });
    let c = guest(&server, "tls").expect("allowed over https");
    assert_eq!(c.user, "over-tls");
    assert_eq!(server.http().get("/health").json()["backend"], "up");
    assert_eq!(backend.requests("/connect").len(), 1);

    let untrusting = TestServer::with(move |c: &mut Config| c.backend.connect_url = Some(url));
    assert_eq!(guest(&untrusting, "tls").err(), Some(503), "an untrusted certificate fails closed");
    let mut raw = crate::support::Raw::connect(&untrusting);
    raw.send(
        b"GET /ws?name=tls HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n",
    );
    let answer = String::from_utf8_lossy(&raw.read_to_end()).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("TLS with the backend failed"), "{answer}");
    let health = untrusting.http().get("/health").json();
    assert_eq!(health["backend"], "down", "{health}");
    assert_eq!(backend.requests("/connect").len(), 1, "no request crossed the untrusted connection");
    let _ = std::fs::remove_file(&ca_file);
}
