//! bench-client against a real corecast server started in this process (two shards, port 0):
//! the correctness counters must come out clean at a rate the host can easily carry, both
//! with the worker in this process and with two worker processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use bench_client::coord::{run, Mode, RunResult, RunSpec, StepSpec};
use bench_client::plan::{Plan, RoomDist};

struct Server(Option<corecast::ServerHandle>);

impl Server {
    fn start() -> Server {
        Self::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut corecast::Config)) -> Server {
        // The same limits the suite lifts (see `suite::BENCH_LIMITS`): one load generator
        // publishes faster than a chat user may.
        let cfg = corecast::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            pin: false,
            rate_limit: 0,
            max_connections_per_ip: 0,
            ..Default::default()
        };
        let mut cfg = cfg;
        tweak(&mut cfg);
        Server(Some(corecast::start(cfg).expect("server starts")))
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.0.as_ref().unwrap().local_addr()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.shutdown();
            let _ = h.join();
        }
    }
}

fn spec(
    target: std::net::SocketAddr,
    mode: Mode,
    connections: u64,
    rooms: u32,
    publishers: u32,
    processes: u32,
) -> RunSpec {
    RunSpec {
        mode,
        plan: Plan {
            targets: vec![target],
            connections,
            rooms,
            room_dist: RoomDist::Uniform,
            publishers,
            payload_bytes: 64,
            data_bytes: 0,
            source_addrs: 3,
            connect_rate: 2000.0,
            processes,
            threads: 2,
            tag: format!("it{}", fastrand::u32(..)),
            connect_timeout_secs: 30.0,
            reconnect_attempts: 5,
            failover: false,
            acks: false,
            ack_timeout_ns: 0,
            churn_per_sec: 0.0,
            deflate: false,
            payload_json: false,
        },
        steps: vec![StepSpec { rate: 200.0, duration_secs: 1.5 }],
        hold_secs: 1.0,
        // Bounds, not waits: a step ends as soon as every delivery arrived. Generous, so a
        // host loaded by other work still passes; these tests judge exactness, and the
        // latency bound (which a ramp step must meet to go on) is for benchmarks.
        drain_secs: 30.0,
        p99_bound_ms: 30_000.0,
        server_pids: vec![std::process::id()],
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_bench-client"))),
        timeout_secs: 300.0,
        progress: false,
        fd_limit: 20000,
        conns_per_process: 19744,
    }
}

fn assert_clean(r: &RunResult, connections: u64) {
    assert_eq!(r.connect.held, connections, "{:?}", r.connect.stats);
    assert!(r.final_stats.closes.is_empty() && r.final_stats.dropped == 0, "{:?}", r.final_stats);
    assert!(r.final_stats.errors.is_empty(), "{:?}", r.final_stats.errors);
    for s in &r.steps {
        let v = s.verdict;
        assert!(v.expected > 0);
        assert!(v.clean(), "step {}: {v:?} {:?}", s.step, s.counts);
        assert_eq!(v.delivered, v.expected);
        assert_eq!((s.counts.gaps, s.counts.late, s.counts.foreign, s.unsent), (0, 0, 0, 0), "{:?}", s.counts);
        assert_eq!(s.corrected.len(), v.delivered, "every delivery is timed");
        assert_eq!(s.uncorrected.len(), v.delivered);
        assert!(s.corrected.max() >= s.uncorrected.min());
        // The timeline accounts for every timed delivery, shipped and merged from every
        // thread and worker process, window by window in order.
        let windows = &s.timeline.0;
        assert_eq!(windows.iter().map(|w| w.deliveries).sum::<u64>(), v.delivered, "{windows:?}");
        assert!(windows.windows(2).all(|p| p[0].start_ns < p[1].start_ns), "{windows:?}");
        assert!(windows.iter().all(|w| w.over[0] <= w.deliveries && w.over.windows(2).all(|o| o[0] >= o[1])));
        let slowest = windows.iter().map(|w| w.max_us).max().unwrap_or(0);
        assert_eq!(
            s.corrected.max(),
            s.corrected.highest_equivalent(slowest),
            "the slowest window holds the slowest delivery"
        );
        assert!(s.passed);
        assert!(s.recovery.clean(), "{:?}", s.recovery);
    }
    assert!(r.final_stats.recovery.clean(), "{:?}", r.final_stats.recovery);
}

#[test]
fn fanout_in_process_delivers_every_message_exactly_once_in_order() {
    let server = Server::start();
    let mut spec = spec(server.addr(), Mode::Fanout, 60, 4, 4, 1);
    spec.worker_exe = None;
    let r = run(&spec).expect("run completes");
    assert_clean(&r, 60);
    let s = &r.steps[0];
    // 4 rooms × 15 members; 300 messages spread over the 4 publishers, one per room.
    assert_eq!(s.published, 300);
    assert_eq!(s.verdict.expected, 300 * 15);
    assert!(r.memory.server_rss_held.is_some());
}

#[test]
fn fanout_over_the_io_uring_send_path_is_just_as_exact() {
    let server = Server::with(|c| c.send_path = corecast::config::SendPath::Uring);
    let mut spec = spec(server.addr(), Mode::Ramp, 60, 4, 4, 1);
    spec.worker_exe = None;
    // A faster second step, so that frames pile up and members get several per send.
    spec.steps = vec![StepSpec { rate: 200.0, duration_secs: 1.0 }, StepSpec { rate: 2000.0, duration_secs: 1.0 }];
    let r = run(&spec).expect("run completes");
    assert_clean(&r, 60);
    assert_eq!(r.steps[1].verdict.expected, 2000 * 15);
}

/// `GET /stats` of the server, as JSON.
fn stats(addr: std::net::SocketAddr) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let json = body.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(json).unwrap()
}

#[test]
fn fanout_with_deflate_inflates_every_compressed_delivery_exactly() {
    let server = Server::with(|c| {
        c.compression = true;
        // Room messages (512 bytes) are compressed, presence events are not.
        c.compression_min_bytes = 256;
    });
    let mut spec = spec(server.addr(), Mode::Fanout, 40, 2, 2, 1);
    spec.worker_exe = None;
    spec.plan.deflate = true;
    spec.plan.payload_bytes = 512;
    spec.plan.payload_json = true;
    let r = run(&spec).expect("run completes");
    assert_clean(&r, 40);
    let z = &stats(server.addr())["compression"];
    // Once per message and shard, not per member (20 members per room).
    let published = r.steps[0].published;
    let frames = z["frames"].as_u64().unwrap();
    assert!(frames >= published && frames <= 2 * published, "{frames} compressions for {published} messages: {z}");
}

#[test]
fn fanout_with_data_payloads_is_just_as_exact() {
    let server = Server::start();
    let mut spec = spec(server.addr(), Mode::Fanout, 40, 4, 4, 1);
    spec.worker_exe = None;
    spec.plan.data_bytes = 1024;
    let r = run(&spec).expect("run completes");
    assert_clean(&r, 40);
    assert_eq!(r.steps[0].verdict.expected, 300 * 10);
}

#[test]
fn fanout_over_two_worker_processes_is_just_as_exact() {
    let server = Server::start();
    let spec = spec(server.addr(), Mode::Fanout, 90, 3, 3, 2);
    let r = run(&spec).expect("run completes");
    assert_eq!(r.processes, 2);
    assert_clean(&r, 90);
    assert_eq!(r.steps[0].verdict.expected, 300 * 30);
    assert!(r.cpu_total.client_secs > 0.0);
}

#[test]
fn fanout_with_acks_audits_every_acknowledged_message_per_home_over_two_processes() {
    let server = Server::start();
    // The same server twice: two homes, so the audit splits receivers by target index.
    let mut spec = spec(server.addr(), Mode::Fanout, 90, 3, 3, 2);
    spec.plan.targets = vec![server.addr(), server.addr()];
    spec.plan.acks = true;
    let r = run(&spec).expect("run completes");
    assert_clean(&r, 90);
    let s = &r.steps[0];
    let a = s.audit.as_ref().expect("--acks runs are audited");
    // Acks travel back to the publisher's thread, deliveries are counted where they are
    // received; both are shipped from two worker processes and merged.
    assert_eq!((a.published, a.acked, a.unacked, a.stray_acks), (300, 300, 0, 0), "{a:?}");
    assert_eq!((a.expected, a.delivered, a.lost, a.excess), (s.verdict.expected, s.verdict.expected, 0, 0), "{a:?}");
    assert_eq!(a.homes.iter().map(|h| h.home).collect::<Vec<_>>(), [0, 1], "{a:?}");
    assert_eq!(a.homes.iter().map(|h| h.members).sum::<u64>(), 90);
    assert!(a.homes.iter().all(|h| h.expected > 0 && h.delivered == h.expected), "{a:?}");
    assert!(r.final_stats.errors.is_empty(), "no error frame answered a publish with an id");
}

#[test]
fn ack_timeout_retries_keep_the_audit_exact_because_corecast_sequences_a_key_once() {
    let server = Server::start();
    let mut spec = spec(server.addr(), Mode::Fanout, 60, 3, 3, 1);
    spec.plan.acks = true;
    // Shorter than any ack's round trip through the server: the engine's timer fires
    // before the ack is read, so messages are retried while their first copy is still
    // being sequenced, and again (backing off to 64×) until the ack comes.
    spec.plan.ack_timeout_ns = 20_000;
    let r = run(&spec).expect("run completes");
    assert_clean(&r, 60);
    let s = &r.steps[0];
    let a = s.audit.as_ref().expect("--acks runs are audited");
    assert!(a.retried > 0, "no retry at a 20 µs ack timeout: {a:?}");
    // Every retry carried the first send's idempotency key: each message was sequenced
    // and delivered once, and every ack names a message of the step.
    assert_eq!((a.published, a.acked, a.unacked, a.stray_acks), (300, 300, 0, 0), "{a:?}");
    assert_eq!((a.expected, a.delivered, a.lost, a.excess), (s.verdict.expected, s.verdict.expected, 0, 0), "{a:?}");
}

#[test]
fn ack_timeout_retries_every_message_a_server_never_acknowledges_and_backs_off() {
    // The ceiling probe ignores `id`: no ack ever comes, so each message is retried
    // 50 ms after it was written, then 100, 200, … ms later while the step is open.
    let probe = corecast_ceiling::Ceiling::start("127.0.0.1:0".parse().unwrap(), 2).expect("probe starts");
    let mut spec = spec(probe.addr, Mode::Fanout, 60, 3, 3, 1);
    spec.plan.acks = true;
    spec.plan.ack_timeout_ns = 50_000_000;
    let r = run(&spec).expect("run completes");
    let a = r.steps[0].audit.as_ref().expect("--acks runs are audited");
    assert_eq!((a.published, a.acked, a.unacked), (300, 0, 300), "{a:?}");
    // The step writes for 1.5 s: all but the last 50 ms of messages are retried at least
    // once; backing off, none more than log2(1.5 s / 50 ms) + 1 = 5 times before the
    // step ends (its drain ends as soon as the expected deliveries are in).
    assert!(a.retried >= a.published / 2, "{a:?}");
    assert!(a.retried <= 6 * a.published, "retries do not back off: {a:?}");
    probe.stop().expect("probe stops");
}

/// A TCP relay between bench-client and a server whose connections can all be cut at
/// once, mid-stream and without a close frame: a network blip, which the client sees as
/// dropped connections (and reconnects through the relay).
struct Relay {
    addr: std::net::SocketAddr,
    /// Both ends of every relayed connection, to cut them.
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(upstream: std::net::SocketAddr) -> Relay {
        use std::net::{TcpListener, TcpStream};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let registry = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    })
                };
                let mut open = registry.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Relay { addr, open }
    }

    /// Connections relayed so far and not cut.
    fn connections(&self) -> usize {
        self.open.lock().unwrap().len() / 2
    }

    /// Cuts every connection open now; later ones are relayed as before.
    fn cut(&self) -> usize {
        let cut = std::mem::take(&mut *self.open.lock().unwrap());
        for stream in &cut {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        cut.len() / 2
    }
}

/// `published` from the server's `/stats` (asked directly, not through the relay).
fn published(server: std::net::SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(server) else { return 0 };
    let _ = s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("{}");
    serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["messages"]["published"].as_u64()).unwrap_or(0)
}

#[test]
fn ack_timeout_and_a_network_blip_that_drops_every_publisher_keep_the_audit_exact() {
    // Every connection, publishers included, is cut mid-step (no close frame), while a
    // 20 µs ack timeout keeps retrying. Publishers rejoin and resend what has no ack (the
    // same idempotency keys; the resend's deadline replaces a pending one), receivers
    // rejoin and recover what they missed, and the audit stays exact. Before the FIN fix
    // in `Conn::on_readable`, some cut connections never noticed the cut.
    let server = Server::start();
    let relay = Relay::start(server.addr());
    let mut s = spec(relay.addr, Mode::Fanout, 60, 3, 3, 1);
    s.worker_exe = None;
    s.plan.acks = true;
    s.plan.ack_timeout_ns = 20_000;
    s.steps = vec![StepSpec { rate: 200.0, duration_secs: 3.0 }];
    let addr = server.addr();
    let client = std::thread::spawn(move || run(&s));
    // The blip comes once a third of the step's 600 messages were sequenced, whenever
    // that is on a busy host (the step itself paces them over 3 s).
    let bound = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while published(addr) < 200 {
        assert!(std::time::Instant::now() < bound, "the step never got a third of the way");
        assert!(!client.is_finished(), "the run ended before the blip");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(relay.connections(), 60, "every client is connected through the relay");
    let cut = relay.cut();
    let r = client.join().unwrap().expect("run completes");
    let st = &r.steps[0];
    let a = st.audit.as_ref().expect("--acks runs are audited");
    let rec = st.recovery;
    eprintln!("blip: {cut} cut, {rec:?}, {a:?}");
    assert_eq!(r.final_stats.dropped, 60, "every cut connection noticed the cut: {:?}", r.final_stats);
    assert!(rec.reconnects >= 60, "every cut connection reconnected: {rec:?}");
    assert_eq!((rec.gave_up, rec.not_recovered, rec.unrecoverable), (0, 0, 0), "{rec:?}");
    assert!(a.retried > 0, "no retry at a 20 µs ack timeout: {a:?}");
    assert_eq!((a.published, a.acked, a.unacked, a.stray_acks), (600, 600, 0, 0), "{a:?}");
    assert_eq!((a.expected, a.delivered, a.lost, a.excess), (st.verdict.expected, st.verdict.expected, 0, 0), "{a:?}");
    assert!(st.verdict.clean(), "{:?}", st.verdict);
    assert_eq!(st.verdict.delivered, st.verdict.expected);
}

#[test]
fn ramp_runs_every_step_while_they_pass() {
    let server = Server::start();
    let mut spec = spec(server.addr(), Mode::Ramp, 20, 1, 1, 1);
    spec.steps = vec![StepSpec { rate: 50.0, duration_secs: 0.5 }, StepSpec { rate: 100.0, duration_secs: 0.5 }];
    let r = run(&spec).expect("run completes");
    assert_eq!(r.steps.len(), 2);
    assert_clean(&r, 20);
    assert_eq!(r.steps[1].verdict.expected, 50 * 20);
}

#[test]
fn connect_holds_idle_connections_and_measures_memory() {
    let server = Server::start();
    let r = run(&spec(server.addr(), Mode::Connect, 200, 1, 0, 1)).expect("run completes");
    assert_eq!(r.connect.held, 200);
    assert_eq!(r.hold.as_ref().map(|h| h.held_at_end), Some(200));
    assert!(r.memory.client_conn_struct_bytes <= 200, "{}", r.memory.client_conn_struct_bytes);
    assert!(r.steps.is_empty());
}

#[test]
fn refused_connections_are_counted_not_fatal() {
    // A port nobody listens on: every connect is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Server::start();
    let mut spec = spec(server.addr(), Mode::Connect, 20, 1, 0, 1);
    spec.plan.targets = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    spec.server_pids = Vec::new();
    let r = run(&spec).expect("run completes");
    assert_eq!(r.connect.held, 0);
    assert_eq!(r.connect.stats.failed.get("ECONNREFUSED"), Some(&20), "{:?}", r.connect.stats.failed);
}

#[test]
fn fanout_with_churn_recovers_every_closed_connection_without_loss() {
    // Two shards: rooms are owned by one shard while members sit on both, so a rejoin's
    // replay crosses cores. Receivers are closed abruptly at 40/s while 4 publishers send.
    let server = Server::start();
    let mut spec = spec(server.addr(), Mode::Fanout, 200, 4, 4, 1);
    spec.worker_exe = None;
    spec.plan.churn_per_sec = 40.0;
    spec.steps = vec![StepSpec { rate: 400.0, duration_secs: 2.0 }];
    let r = run(&spec).expect("run completes");
    assert_clean(&r, 200);
    let s = &r.steps[0];
    let rec = s.recovery;
    eprintln!("churn run: {rec:?} {:?}", s.verdict);
    assert!(rec.churned >= 40, "{rec:?}");
    assert!(rec.reconnects > 0 && rec.reconnects >= rec.churned, "{rec:?}");
    // Every rejoin that completed recovered (one still in flight when the step closed
    // is counted in neither).
    assert!(rec.recovered > 0 && rec.recovered + rec.failed_attempts <= rec.reconnects, "{rec:?}");
    assert_eq!((rec.not_recovered, rec.unrecoverable, rec.gave_up), (0, 0, 0), "{rec:?}");
    // Closed mid-stream under load, some must have missed messages that came back as replay.
    assert!(rec.replayed > 0, "{rec:?}");
    assert_eq!(s.verdict.expected, 800 * 50);
    assert_eq!(r.final_stats.held, 0, "all closed at the end");
}

#[test]
fn connections_are_spread_over_the_targets() {
    // Two targets, one of which refuses: exactly the connections round-robin sends there
    // fail, the others join (independent servers are no cluster, so this holds idle
    // connections rather than publishing across them).
    let server = Server::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let refused: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut spec = spec(server.addr(), Mode::Connect, 40, 4, 0, 1);
    spec.worker_exe = None;
    spec.plan.targets = vec![server.addr(), refused];
    spec.server_pids = vec![std::process::id(), std::process::id()];
    let r = run(&spec).expect("run completes");
    assert_eq!(spec.plan.per_target(), [20, 20]);
    assert_eq!(r.connect.held, 20, "{:?}", r.connect.stats);
    assert_eq!(r.connect.stats.failed.get("ECONNREFUSED"), Some(&20), "{:?}", r.connect.stats.failed);
    assert_eq!(r.memory.servers.len(), 2);
    assert_eq!(r.connect.cpu.servers.len(), 2);
}

#[test]
fn the_ceiling_probe_serves_the_same_client_exactly() {
    let probe = corecast_ceiling::Ceiling::start("127.0.0.1:0".parse().unwrap(), 2).expect("probe starts");
    // Rooms spread over both probe threads, members of each room on both threads: every
    // message crosses threads, and seq must still be exact.
    two_steps_exactly(probe.addr);
    probe.stop().expect("probe stops");
}

#[test]
fn the_tokio_peer_serves_the_same_client_exactly() {
    let peer = corecast_tokio_peer::Peer::start("127.0.0.1:0".parse().unwrap(), 2).expect("peer starts");
    // Two worker threads, three rooms, three publishers: every room's seq must be exact
    // for every member however the runtime schedules the tasks.
    two_steps_exactly(peer.addr);
    peer.stop().expect("peer stops");
}

/// A two-step ramp (200 and 400 messages/s) of 90 connections in 3 rooms with 3
/// publishers against `addr`: every delivery exactly once, in order.
fn two_steps_exactly(addr: std::net::SocketAddr) {
    let mut spec = spec(addr, Mode::Ramp, 90, 3, 3, 1);
    spec.worker_exe = None;
    spec.steps = vec![StepSpec { rate: 200.0, duration_secs: 1.0 }, StepSpec { rate: 400.0, duration_secs: 1.0 }];
    let r = run(&spec).expect("run completes");
    assert_clean(&r, 90);
    assert_eq!(r.steps.len(), 2);
    assert_eq!(r.steps[1].verdict.expected, 400 * 30);
}
