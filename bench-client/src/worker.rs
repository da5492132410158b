//! Worker processes and their control protocol.
//!
//! A worker owns `plan.threads` engine threads and a share of the connections. The
//! coordinator talks to it with [`Down`] messages and hears back [`Up`] messages. A worker
//! runs either inside the coordinator's process (a thread; for runs that fit in one
//! process's file-descriptor limit, and for tests) or as a child process
//! (`bench-client worker`), in which case the messages travel as JSON lines on its stdin
//! and stdout and histograms travel in HdrHistogram's compressed serialization.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Event, PublishReport};
use crate::error::BenchError;
use crate::plan::Plan;
use crate::record::{merge_into, new_hist, ConnStats, SerHist, StepRecord, WireStep};
use crate::sys;

/// First line a child worker reads: the plan and which process of it this is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The run's plan.
    pub plan: Plan,
    /// This worker's process index.
    pub process: u32,
}

/// Coordinator → worker: the engines' own [`Command`]s, which every worker relays to each
/// of its engines unchanged.
pub use crate::engine::Command as Down;

/// Worker → coordinator. CPU and RSS of child workers are read by the coordinator from
/// `/proc/<pid>`, so they need no messages of their own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Up {
    /// The worker is up and has not opened any connection yet.
    Started {
        /// Resident set size of the worker process now (0 for an in-process worker):
        /// the baseline for the client's memory per connection.
        rss_bytes: u64,
    },
    /// Once a second.
    Progress {
        /// Connection outcomes so far.
        stats: ConnStats,
        /// Distinct deliveries of the open step so far.
        step_delivered: u64,
        /// Latencies of the last second.
        interval: SerHist,
    },
    /// All connections joined or failed.
    Ready {
        /// Connection outcomes.
        stats: ConnStats,
        /// User-space bytes the engines hold for connections (structs + buffers).
        conn_bytes: u64,
    },
    /// The worker's publishers are done with a step.
    Published {
        /// Step.
        step: u32,
        /// Members and messages.
        report: PublishReport,
    },
    /// A step's record.
    StepDone {
        /// Step.
        step: u32,
        /// Histograms and counters.
        record: WireStep,
    },
    /// Final report.
    Done {
        /// Connection outcomes.
        stats: ConnStats,
    },
    /// The worker cannot go on.
    Failed(String),
}

/// What a worker's main loop waits for: a command from the coordinator or an engine event.
#[derive(Debug)]
pub enum Input {
    /// From the coordinator.
    Down(Down),
    /// From one of the worker's engines.
    /// (Boxed: an event with its stats and histogram is far larger than a command.)
    Engine(Box<Event>),
}

/// Runs one worker until `Finish`: starts its engines, relays commands to them, merges
/// their events into [`Up`] reports. `own_process` says whether this worker is a process
/// of its own (so its CPU and RSS are reported) or a thread of the coordinator.
pub fn run_worker(hello: Hello, own_process: bool, inputs: (Sender<Input>, Receiver<Input>), up: &mut dyn FnMut(Up)) {
    let (tx, rx) = inputs;
    up(Up::Started { rss_bytes: if own_process { sys::own_rss_bytes() } else { 0 } });
    let plan = Arc::new(hello.plan);
    let mut engines = Vec::new();
    for t in 0..plan.threads {
        let (cmd_tx, cmd_rx) = channel();
        let (ev_tx, ev_rx) = channel::<Event>();
        let fwd = tx.clone();
        std::thread::spawn(move || {
            for ev in ev_rx {
                if fwd.send(Input::Engine(Box::new(ev))).is_err() {
                    break;
                }
            }
        });
        match Engine::new(plan.clone(), hello.process, t, ev_tx, cmd_rx) {
            Ok((engine, waker)) => {
                let spawned = std::thread::Builder::new()
                    .name(format!("engine-{}-{t}", hello.process))
                    .spawn(move || engine.run());
                if let Err(e) = spawned {
                    return up(Up::Failed(format!("cannot start engine thread: {e}")));
                }
                engines.push((cmd_tx, waker));
            }
            Err(e) => return up(Up::Failed(format!("cannot create engine {t}: {e}"))),
        }
    }
    drop(tx);
    let mut merger = Merger::new(plan.threads as usize);
    let tick = Duration::from_millis(250);
    loop {
        let input = match rx.recv_timeout(tick) {
            Ok(input) => Some(input),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        match input {
            Some(Input::Down(cmd)) => {
                for (cmd_tx, waker) in &engines {
                    let _ = cmd_tx.send(cmd);
                    let _ = waker.wake();
                }
            }
            Some(Input::Engine(ev)) => {
                if let Some(report) = merger.add(*ev) {
                    let done = matches!(report, Up::Done { .. } | Up::Failed(_));
                    up(report);
                    if done {
                        return;
                    }
                }
            }
            None => {}
        }
        if let Some(progress) = merger.progress() {
            up(progress);
        }
    }
}

/// Merges per-thread engine events into per-worker reports.
struct Merger {
    threads: usize,
    progress: Vec<Option<ConnStats>>,
    step_delivered: Vec<u64>,
    interval: hdrhistogram::Histogram<u64>,
    last_progress: std::time::Instant,
    ready: Vec<(ConnStats, u64)>,
    published: Vec<PublishReport>,
    step_records: Vec<StepRecord>,
    done: Vec<ConnStats>,
}

impl Merger {
    fn new(threads: usize) -> Merger {
        Merger {
            threads,
            progress: vec![None; threads],
            step_delivered: vec![0; threads],
            interval: new_hist(),
            last_progress: std::time::Instant::now(),
            ready: Vec::new(),
            published: Vec::new(),
            step_records: Vec::new(),
            done: Vec::new(),
        }
    }

    fn add(&mut self, ev: Event) -> Option<Up> {
        match ev {
            Event::Progress { thread, stats, step_delivered, interval } => {
                self.progress[thread as usize] = Some(stats);
                self.step_delivered[thread as usize] = step_delivered;
                let _ = merge_into(&mut self.interval, &interval);
                None
            }
            Event::Ready { thread, stats, conn_bytes } => {
                // Newer than the thread's last progress: later progress reports must not
                // go back to the older figures.
                self.progress[thread as usize] = Some(stats.clone());
                self.ready.push((stats, conn_bytes));
                (self.ready.len() == self.threads).then(|| {
                    let mut all = ConnStats::default();
                    let mut bytes = 0;
                    for (s, b) in self.ready.drain(..) {
                        all.merge(&s);
                        bytes += b;
                    }
                    Up::Ready { stats: all, conn_bytes: bytes }
                })
            }
            Event::Published { step, report, .. } => {
                self.published.push(report);
                (self.published.len() == self.threads).then(|| {
                    let mut all = PublishReport::default();
                    self.published.drain(..).for_each(|r| all.extend(r));
                    Up::Published { step, report: all }
                })
            }
            Event::StepDone { step, record, .. } => {
                self.step_records.push(*record);
                (self.step_records.len() == self.threads).then(|| self.step_done(step))
            }
            Event::Done { stats, .. } => {
                self.done.push(stats);
                (self.done.len() == self.threads).then(|| {
                    let mut all = ConnStats::default();
                    self.done.iter().for_each(|s| all.merge(s));
                    Up::Done { stats: all }
                })
            }
            Event::Failed { thread, message } => Some(Up::Failed(format!("engine {thread}: {message}"))),
        }
    }

    fn step_done(&mut self, step: u32) -> Up {
        let mut merged = StepRecord::default();
        for r in self.step_records.drain(..) {
            if let Err(e) = merged.merge(&r) {
                return Up::Failed(e.to_string());
            }
        }
        self.step_delivered.iter_mut().for_each(|d| *d = 0);
        match merged.to_wire() {
            Ok(record) => Up::StepDone { step, record },
            Err(e) => Up::Failed(e.to_string()),
        }
    }

    /// A progress report, once a second once every thread has reported.
    fn progress(&mut self) -> Option<Up> {
        if self.last_progress.elapsed() < Duration::from_secs(1) || self.progress.iter().any(Option::is_none) {
            return None;
        }
        self.last_progress = std::time::Instant::now();
        let mut stats = ConnStats::default();
        self.progress.iter().flatten().for_each(|s| stats.merge(s));
        let interval = SerHist::encode(&self.interval).unwrap_or_default();
        self.interval.reset();
        Some(Up::Progress { stats, step_delivered: self.step_delivered.iter().sum(), interval })
    }
}

/// The `bench-client worker` process: reads [`Hello`] and [`Down`] lines on stdin, writes
/// [`Up`] lines on stdout. Its stdin closing means the coordinator is gone: it finishes.
pub fn child_main() -> Result<(), BenchError> {
    sys::raise_nofile();
    let stdin = std::io::stdin();
    let mut lines = BufReader::new(stdin).lines();
    let first = lines.next().ok_or_else(|| BenchError::Worker("no hello line on stdin".into()))??;
    let hello: Hello = serde_json::from_str(&first)?;
    let (tx, rx) = channel();
    let down_tx = tx.clone();
    std::thread::spawn(move || {
        for line in lines {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Down>(&line) {
                Ok(down) => {
                    if down_tx.send(Input::Down(down)).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("bench-client worker: ignoring bad control line: {e}"),
            }
        }
        let _ = down_tx.send(Input::Down(Down::Finish));
    });
    let stdout = std::io::stdout();
    let mut write_up = |up: Up| {
        let mut out = stdout.lock();
        if serde_json::to_writer(&mut out, &up).is_ok() {
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
    };
    run_worker(hello, true, (tx, rx), &mut write_up);
    Ok(())
}

/// The coordinator's end of one worker.
pub enum Link {
    /// A worker thread in the coordinator's process.
    Thread(Sender<Input>),
    /// A child process.
    Child {
        /// The process.
        child: Child,
        /// Its stdin, for [`Down`] lines.
        stdin: ChildStdin,
    },
}

impl Link {
    /// Starts worker `process` of `plan`. With `exe`, as a child process running
    /// `exe worker`; without, as a thread. Its reports arrive on `ups` tagged with `process`.
    pub fn start(plan: &Plan, process: u32, exe: Option<&Path>, ups: Sender<(u32, Up)>) -> Result<Link, BenchError> {
        let hello = Hello { plan: plan.clone(), process };
        let Some(exe) = exe else {
            let (tx, rx) = channel();
            let inputs = (tx.clone(), rx);
            std::thread::Builder::new().name(format!("worker-{process}")).spawn(move || {
                run_worker(hello, false, inputs, &mut |up| {
                    let _ = ups.send((process, up));
                })
            })?;
            return Ok(Link::Thread(tx));
        };
        let mut child = Process::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::Worker(format!("cannot start worker process {}: {e}", exe.display())))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::Worker("worker pipes missing".into()));
        };
        writeln!(stdin, "{}", serde_json::to_string(&hello)?)?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let up = serde_json::from_str::<Up>(&line).unwrap_or_else(|e| Up::Failed(format!("bad report: {e}")));
                if ups.send((process, up)).is_err() {
                    break;
                }
            }
        });
        Ok(Link::Child { child, stdin })
    }

    /// Sends a command; a worker that is gone is reported by its missing answers.
    pub fn send(&mut self, down: Down) {
        match self {
            Link::Thread(tx) => {
                let _ = tx.send(Input::Down(down));
            }
            Link::Child { stdin, .. } => {
                if let Ok(line) = serde_json::to_string(&down) {
                    let _ = writeln!(stdin, "{line}");
                    let _ = stdin.flush();
                }
            }
        }
    }

    /// Process id of a child worker.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Link::Thread(_) => None,
            Link::Child { child, .. } => Some(child.id()),
        }
    }

    /// Waits for a child worker to exit, killing it after `grace`.
    pub fn reap(self, grace: Duration) {
        if let Link::Child { mut child, stdin } = self {
            drop(stdin);
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
