//! History that survives restarts (`--data-dir`): the real server restarted on the same
//! data directory, real clients recovering with `since`; kill -9; the `--fsync always`
//! order; disk use under the caps; a changed `--shards`; 1012 on a graceful restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corecast::config::Fsync;
use serde_json::{json, Value};

use crate::support::{ChildServer, Client, Http, TestServer, PATIENCE};

/// A fresh, empty data directory for one test, removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new(test: &str) -> DataDir {
        let d = std::env::temp_dir().join(format!("corecast-it-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        DataDir(d)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn durable(dir: &Path, shards: usize, fsync: Fsync) -> TestServer {
    let dir = dir.to_owned();
    TestServer::with(move |c| {
        c.data_dir = Some(dir);
        c.shards = shards;
        c.fsync = fsync;
        c.rate_limit = 0;
    })
}

/// Sends `text` to `room` with reference `id` and waits for its ack; returns its seq.
fn say_acked(c: &mut Client, room: &str, text: &str) -> u64 {
    c.send(json!({"type":"message","room":room,"text":text,"id":text}));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = c.recv();
        if v["type"] == "ack" && v["ref"] == text {
            return v["seq"].as_u64().unwrap();
        }
        assert_ne!(v["type"], "error", "{v}");
        assert!(Instant::now() < deadline, "no ack for {text}");
    }
}

/// Joins `room`, skipping the traffic of rooms joined before; returns `joined`.
fn join_skipping(c: &mut Client, room: &str) -> Value {
    c.send(json!({"type":"join","room":room}));
    let j = c.expect_skipping("joined");
    assert_eq!(j["room"], room);
    j
}

/// Joins `room` with `since`; returns the replayed texts (with their seqs), in order,
/// and the `joined` frame.
fn rejoin(c: &mut Client, room: &str, since: Value) -> (Vec<(u64, String)>, Value) {
    c.send(json!({"type":"join","room":room,"since":since}));
    let mut replayed = Vec::new();
    loop {
        let v = c.recv();
        match v["type"].as_str() {
            Some("message") if v["room"] == room => {
                replayed.push((v["seq"].as_u64().unwrap(), v["text"].as_str().unwrap().to_owned()))
            }
            Some("joined") if v["room"] == room => return (replayed, v),
            Some("error") => panic!("{v}"),
            _ => {}
        }
    }
}

/// Rooms on both shards of a two-shard server: eight names whose owners (a fixed hash)
/// cover both; checked through `/metrics` by the caller.
const ROOMS: [&str; 8] = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"];

fn rooms_per_shard(http: &Http) -> BTreeMap<String, u64> {
    let text = http.get("/metrics").body;
    text.lines()
        .filter_map(|l| l.strip_prefix("corecast_rooms_public{shard=\""))
        .filter_map(|l| l.split_once("\"} ").map(|(s, n)| (s.to_owned(), n.trim().parse().unwrap())))
        .collect()
}

#[test]
fn a_restart_on_the_same_data_dir_recovers_every_room_on_both_shards() {
    let dir = DataDir::new("restart");
    let server = durable(&dir.0, 2, Fsync::Interval(Duration::from_millis(50)));
    let mut watcher = Client::connect(&server, "watcher");
    let mut writer = Client::connect(&server, "writer");
    let mut seen = BTreeMap::new();
    for room in ROOMS {
        let joined = join_skipping(&mut watcher, room);
        join_skipping(&mut writer, room);
        for i in 1..=3 {
            say_acked(&mut writer, room, &format!("{room}-{i}"));
        }
        seen.insert(room, (joined["epoch"].as_str().unwrap().to_owned(), 3u64));
    }
    let per_shard = rooms_per_shard(&server.http());
    assert!(per_shard.len() == 2 && per_shard.values().all(|&n| n > 0), "rooms on both shards: {per_shard:?}");
    // Two more each that the watcher does not read before the restart.
    for room in ROOMS {
        for i in 4..=5 {
            say_acked(&mut writer, room, &format!("{room}-{i}"));
        }
    }
    // Graceful restart: the log is synced, then every client hears 1012.
    server.begin_shutdown();
    assert_eq!(watcher.expect_close(), 1012);
    assert_eq!(writer.expect_close(), 1012);
    server.stop();

    let server = durable(&dir.0, 2, Fsync::Interval(Duration::from_millis(50)));
    let stats = server.http().get("/stats").json();
    assert!(stats["log"]["replayed_records"].as_u64().unwrap() >= 40, "{}", stats["log"]);
    let mut watcher = Client::connect(&server, "watcher");
    let mut writer = Client::connect(&server, "writer");
    for room in ROOMS {
        let (epoch, last) = &seen[room];
        let (replayed, joined) = rejoin(&mut watcher, room, json!({"epoch":epoch,"seq":last}));
        assert_eq!(joined["recovered"], true, "{joined}");
        assert_eq!(joined["epoch"], epoch.as_str(), "the stream keeps its epoch");
        assert_eq!(joined["seq"], 5);
        let want: Vec<(u64, String)> = (4..=5).map(|i| (i, format!("{room}-{i}"))).collect();
        assert_eq!(replayed, want, "exactly what was missed");
        // The stream continues: the next message is seq 6, once.
        join_skipping(&mut writer, room);
        assert_eq!(say_acked(&mut writer, room, &format!("{room}-6")), 6);
        let live = watcher.expect_skipping("message");
        assert_eq!((live["seq"].as_u64(), live["text"].as_str()), (Some(6), Some(format!("{room}-6").as_str())));
    }
}

#[test]
fn changing_the_shard_count_between_restarts_keeps_history() {
    let dir = DataDir::new("reshard");
    let mut epochs = BTreeMap::new();
    {
        let server = durable(&dir.0, 2, Fsync::Never);
        let mut writer = Client::connect(&server, "writer");
        for room in ROOMS {
            let joined = writer.join(room);
            epochs.insert(room, joined["epoch"].as_str().unwrap().to_owned());
            for i in 1..=2 {
                say_acked(&mut writer, room, &format!("{room}-{i}"));
            }
        }
        server.stop();
    }
    for shards in [1, 3] {
        let server = durable(&dir.0, shards, Fsync::Never);
        let mut c = Client::connect(&server, &format!("reader-{shards}"));
        for room in ROOMS {
            let (replayed, joined) = rejoin(&mut c, room, json!({"epoch":epochs[room],"seq":0}));
            assert_eq!(joined["recovered"], true, "{shards} shards: {joined}");
            let want: Vec<(u64, String)> = (1..=2).map(|i| (i, format!("{room}-{i}"))).collect();
            assert_eq!(replayed, want, "{shards} shards");
        }
        server.stop();
    }
}

#[test]
fn a_private_room_stays_private_after_a_restart() {
    let dir = DataDir::new("private");
    let epoch;
    {
        let server = durable(&dir.0, 2, Fsync::Never);
        let mut owner = Client::connect(&server, "owner");
        owner.send(json!({"type":"create","room":"vault","password":"s3cret-pass"}));
        epoch = owner.expect_skipping("joined")["epoch"].as_str().unwrap().to_owned();
        say_acked(&mut owner, "vault", "hidden");
        server.stop();
    }
    let server = durable(&dir.0, 2, Fsync::Never);
    let mut stranger = Client::connect(&server, "stranger");
    stranger.send(json!({"type":"join","room":"vault","since":{"epoch":epoch,"seq":0}}));
    let v = stranger.expect_skipping("error");
    assert_eq!(v["code"], "password_required", "{v}");
    let mut owner = Client::connect(&server, "owner");
    owner.send(json!({"type":"join","room":"vault","password":"s3cret-pass","since":{"epoch":epoch,"seq":0}}));
    let m = owner.expect_skipping("message");
    assert_eq!(m["text"], "hidden");
    assert_eq!(owner.expect("joined")["recovered"], true);
}

/// Under `--fsync always` an ack leaves only after the fdatasync of its record: every
/// ack a client holds is covered by `log.records_synced` read right after it. Under
/// `never` the same acks arrive with nothing synced, so the check is not vacuous.
#[test]
fn under_fsync_always_an_ack_follows_the_sync_of_its_record() {
    for (fsync, synced_expected) in [(Fsync::Always, true), (Fsync::Never, false)] {
        let dir = DataDir::new(&format!("always-{synced_expected}"));
        let server = durable(&dir.0, 1, fsync);
        let http = server.http();
        let mut c = Client::connect(&server, "writer");
        c.join("acked");
        for i in 1..=20u64 {
            assert_eq!(say_acked(&mut c, "acked", &format!("m{i}")), i);
            let log = http.get("/stats").json()["log"].clone();
            let synced = log["records_synced"].as_u64().unwrap();
            if synced_expected {
                assert!(synced >= i, "ack {i} arrived with only {synced} records synced: {log}");
            } else {
                assert_eq!(synced, 0, "{log}");
            }
        }
        if synced_expected {
            let log = http.get("/stats").json()["log"].clone();
            assert!(log["fsync_latency_us"]["count"].as_u64().unwrap() >= 20, "{log}");
        }
        server.stop();
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
    }
    total
}

#[test]
fn history_caps_bound_the_disk_use_of_the_log() {
    const CAP: usize = 50;
    let dir = DataDir::new("bounded");
    let path = dir.0.clone();
    let server = TestServer::with(move |c| {
        c.data_dir = Some(path);
        c.data_segment_bytes = 4096;
        c.history_messages = CAP;
        c.rate_limit = 0;
    });
    let mut c = Client::connect(&server, "writer");
    c.join("busy");
    let text = "x".repeat(1000);
    let mut written = 0;
    for i in 0..10 * CAP {
        say_acked(&mut c, "busy", &format!("{i:04}{text}"));
        written += text.len() + 4;
    }
    // The cap's worth of history is ~55 KB; ten times that went through the log. Once
    // the writer has caught up (everything written and synced, and the compaction that
    // follows done: it compacts as soon as the log is over its bound, without waiting for
    // more records), the log holds at most about twice what is retained plus two
    // segments. (During a compaction, for a moment, also the new checkpoint.)
    let bound = (2 * CAP * 1200 + 3 * 4096) as u64;
    // A compaction starts only above its due level (twice the retained ~55 KB plus two
    // segments, ~120 KB) and, while it runs, the log counts that plus the new checkpoint
    // (~175 KB): a log reported at or under `bound` is not being compacted, and with
    // every record synced none will start. Regression: waiting for ~110 KB instead hung
    // whenever the writes ended between 110 KB and the due level (115,707 bytes in CI),
    // where no compaction comes to shrink the log.
    let quiet = bound;
    let http = server.http();
    let deadline = Instant::now() + PATIENCE;
    let log = loop {
        let stats = http.get("/stats").json();
        let log = stats["log"].clone();
        let compactions = stats["counters"]["log_compactions"].as_u64().unwrap();
        let caught_up = log["records_synced"].as_u64() >= Some((10 * CAP) as u64);
        if caught_up && compactions >= 1 && log["disk_bytes"].as_u64().unwrap() <= quiet {
            break log;
        }
        assert!(Instant::now() < deadline, "the log never got within {quiet} bytes: {log} ({compactions} compactions)");
        std::thread::sleep(Duration::from_millis(20));
    };
    let on_disk = dir_bytes(&dir.0);
    assert!(on_disk <= bound, "{on_disk} bytes on disk after writing {written}: {log}");
    // And what is kept is exactly the newest CAP messages.
    server.stop();
    let path = dir.0.clone();
    let server = TestServer::with(move |c| {
        c.data_dir = Some(path);
        c.history_messages = CAP;
    });
    let mut r = Client::connect(&server, "reader");
    let (replayed, joined) = rejoin(&mut r, "busy", json!((10 * CAP - CAP) as u64));
    assert_eq!(joined["recovered"], true, "{joined}");
    let seqs: Vec<u64> = replayed.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, ((10 * CAP - CAP + 1) as u64..=(10 * CAP) as u64).collect::<Vec<_>>());
}

/// kill -9 while a client publishes: the restarted server serves a gap-free prefix of
/// what was published, in order, nothing twice; under `--fsync always` that prefix holds
/// at least every acked message (a process kill keeps the page cache, so this does not
/// prove the sync itself: the ack-after-sync test above does).
#[test]
fn kill_9_while_publishing_restarts_to_a_gap_free_prefix() {
    for fsync in ["interval=200", "always"] {
        let dir = DataDir::new(&format!("kill9-{}", fsync.replace('=', "")));
        let spawn = || {
            let mut cmd = ChildServer::command_with_shards(2);
            cmd.args(["--data-dir", dir.0.to_str().unwrap(), "--fsync", fsync, "--rate-limit", "0"]);
            cmd.args(["--history-messages", "5000"]);
            ChildServer::spawn(&mut cmd)
        };
        let mut server = spawn();
        let mut c = Client::connect_to(server.addr, "writer");
        let epoch = c.join("stream")["epoch"].as_str().unwrap().to_owned();
        // Fire-and-forget publishes, acks read as they come: the kill lands mid-stream.
        let mut acked = 0;
        for i in 1..=2000u64 {
            c.send(json!({"type":"message","room":"stream","text":format!("m{i}"),"id":format!("m{i}")}));
            if i % 50 == 0 {
                while acked < i - 25 {
                    let v = c.recv();
                    if v["type"] == "ack" {
                        acked = v["seq"].as_u64().unwrap();
                    }
                }
            }
            if i == 1500 {
                server.child.kill().unwrap();
                server.child.wait().unwrap();
                break;
            }
        }
        drop(server);
        let server = spawn();
        let mut r = Client::connect_to(server.addr, "reader");
        let (replayed, joined) = rejoin(&mut r, "stream", json!({"epoch":epoch,"seq":0}));
        assert_eq!(joined["recovered"], true, "{fsync}: {joined}");
        let n = replayed.len() as u64;
        let want: Vec<(u64, String)> = (1..=n).map(|i| (i, format!("m{i}"))).collect();
        assert_eq!(replayed, want, "{fsync}: a gap-free prefix in order");
        assert_eq!(joined["seq"].as_u64(), Some(n));
        if fsync == "always" {
            assert!(n >= acked, "{fsync}: {n} restored, {acked} acked");
        }
        assert!(n > 0, "{fsync}: something was logged");
    }
}
