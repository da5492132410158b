//! The small version of `bench/million.sh`: 3 corecast nodes × 2,000 connections over a
//! real nats-server, so the harness and the cluster's per-connection cost cannot rot.
//! The full run (a million connections) is a benchmark, never part of `cargo test`.
//!
//! It needs `nats-server` on PATH and the `corecast` binary beside `bench-client`
//! (`cargo test --workspace` builds both); without either it prints "skipped: …" and
//! passes, unless `CORECAST_REQUIRE_EXTERNAL=1` (CI), which turns the skip into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn skip(why: &str) {
    let line = format!("skipped: {why}");
    eprintln!("{line}");
    assert!(
        std::env::var("CORECAST_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
        "CORECAST_REQUIRE_EXTERNAL=1, so this test may not skip: {line}"
    );
}

/// The number just before `before` (the end of the line when empty) on the line of
/// `text` that starts with `line`.
fn figure(text: &str, line: &str, before: &str) -> u64 {
    let l = text.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("no `{line}` in:\n{text}"));
    let at =
        if before.is_empty() { l.len() } else { l.find(before).unwrap_or_else(|| panic!("no `{before}` in `{l}`")) };
    let digits: String =
        l[..at].trim_end().rsplit(' ').next().unwrap_or("").chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number before `{before}` in `{l}`"))
}

#[test]
fn three_nodes_hold_six_thousand_connections_with_one_subscription_per_node_not_per_user() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench-client"));
    let bin = bench.parent().unwrap().to_path_buf();
    if !bin.join("corecast").is_file() {
        return skip("no corecast binary beside bench-client (run `cargo test --workspace`)");
    }
    if Command::new("nats-server").arg("--version").output().is_err() {
        return skip("nats-server not on PATH");
    }
    let million = |args: &[&str], client_args: &[&str]| run_million(&bin, args, client_args);
    let (ok, stdout, _) =
        million(&["-n", "6000", "--nodes", "3", "--rooms", "60", "--duration", "2", "--connect-rate", "3000"], &[]);
    assert!(ok, "bench/million.sh failed");
    assert_eq!(figure(&stdout, "cluster:", "held"), 6000, "every connection held");
    // Personal rooms (one per user) share one wildcard subscription per node: the NATS
    // server counts each node's fixed subjects, the wildcard and its 60 public rooms, plus
    // its own system subscriptions (about 240 here), not one subscription per connection
    // (about 6,200 before).
    let subs = figure(&stdout, "nats subscriptions:", "at peak");
    assert!(subs < 1000, "{subs} NATS subscriptions for 3 nodes, 60 rooms and 6,000 users");

    // The node kill, run after the first so the two never share the host's cores: it
    // fires once bench-client reports its publishing step (at a million, waiting for 95 %
    // of the connections never fired), and the dead node's connections all come back on
    // the other nodes (at a million they all went to one node, which ran out of
    // descriptors). The run itself reports problems (the kill drops connections and loses
    // what was published into the dead node's rooms), so its exit status is not asked.
    let (_, stdout, stderr) = million(
        &[
            "-n",
            "3000",
            "--nodes",
            "3",
            "--rooms",
            "30",
            "--mode",
            "fanout",
            "--connect-rate",
            "3000",
            "--kill-node-after",
            "2",
        ],
        &["--publishers", "30", "--rate", "300", "--duration", "6", "--drain", "15", "--acks"],
    );
    let kill = stdout.lines().find(|l| l.starts_with("node kill:")).expect("a node kill line");
    assert!(kill.contains("killed with SIGKILL") && kill.contains("after bench-client's \"step 0:"), "{kill}");
    let text = format!("{stdout}\n{stderr}");
    let dropped = figure(&text, "PROBLEM: server closes", "");
    // The killed node held a third of the connections; how many of them bench-client sees
    // dropped before the drain ends depends on the host (all 1,000 with release binaries
    // here; 165–307 of them in a debug build with another test suite on the same cores).
    assert!(dropped > 0, "the killed node's connections were dropped");
    let reconnects = figure(&text, "step 0 reconnections:", " (");
    assert!(reconnects >= dropped, "every dropped connection reconnected: {reconnects} for {dropped}");
    assert!(text.contains(", 0 gave up)"), "no connection gave up reconnecting:\n{text}");
    // With acks, an acknowledged message owes a delivery to every member, and its frame was
    // on the bus before the ack (docs/CLUSTER.md): the clients of the surviving nodes
    // (homes 0 and 1) lose none of them, whatever the moment of the kill. (The killed
    // node's clients depend on their rejoins recovering, and a message its own clients had
    // in flight may be sequenced twice by a new sequencer that never saw its key: the full
    // runs report those, see results/.)
    let audit = text.lines().find(|l| l.starts_with("step 0: acks:")).expect("an audit line");
    assert!(figure(&text, "step 0: acks:", " of ") > 0, "messages were acknowledged: {audit}");
    for troubled in audit.split("home ").skip(1) {
        let mut words = troubled.split_whitespace();
        let home = words.next().unwrap_or("");
        let lost: u64 = words.nth(1).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
        assert!(home == "2" || lost == 0, "a surviving node's clients lost acknowledged messages: {audit}");
    }
}

/// Runs `bench/million.sh` with `args` (then `client_args` for bench-client after `--`)
/// on the binaries in `bin`, into a temporary results folder removed afterwards; prints
/// its output and returns whether it succeeded, its stdout and its stderr.
fn run_million(bin: &Path, args: &[&str], client_args: &[&str]) -> (bool, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let results = std::env::temp_dir().join(format!("corecast-million-{}", std::process::id()));
    let mut cmd = Command::new(root.join("bench/million.sh"));
    cmd.current_dir(root).args(args).arg("--bin").arg(bin).arg("--results").arg(&results);
    if !client_args.is_empty() {
        cmd.arg("--").args(client_args);
    }
    let out = cmd.output().expect("bench/million.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&results);
    eprintln!("{stdout}\n{stderr}\nbench/million.sh: {}", out.status);
    (out.status.success(), stdout, stderr)
}
