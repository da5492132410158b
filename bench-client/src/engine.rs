//! One engine thread: a mio event loop over a slab of connections, a scratch read buffer,
//! a timerfd for the publish schedule. It opens its share of the plan's connections at
//! its share of the connect rate, publishes its publishers' share of each step's schedule,
//! and records every delivery its connections receive.
//!
//! A connection that held its room and ends unexpectedly (or is churned on purpose) is
//! *parked*: its session waits out a short backoff, then reconnects from the same source
//! address to the same target and rejoins with recovery. While parked or rejoining it
//! stays a member of its room for the expected-delivery count: recovery promises it every
//! message, so anything it does not get is loss.
//!
//! It talks to its worker only through channels: [`Command`]s in (with a mio `Waker`),
//! [`Event`]s out. Nothing is shared.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use corecast_wire::ws::frame::client_frame;
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::conn::{errno_name, Conn, Ctx, End, Session, State};
use crate::epoch::Epochs;
use crate::payload::Stamp;
use crate::plan::{Plan, RoomMap};
use crate::record::{new_hist, ConnStats, StepRecord};
use crate::retry::Retries;
use crate::schedule::Schedule;
use crate::sys::now_ns;
use crate::timer::Timer;

const WAKER: Token = Token(usize::MAX);
const TIMER: Token = Token(usize::MAX - 1);
/// Per-thread read buffer, shared by all of the thread's connections.
const SCRATCH: usize = 64 * 1024;
/// Progress is reported this often.
const PROGRESS_NS: u64 = 1_000_000_000;
/// No step is open for deliveries.
pub const NO_STEP: u32 = u32::MAX;
/// Connection attempts per loop pass at most, so a backlog of due connects cannot starve reads.
const CONNECT_BURST: u64 = 256;
/// First reconnection delay; doubled per failed attempt, plus up to as much jitter.
const BACKOFF_BASE_NS: u64 = 20_000_000;
/// Longest reconnection delay (before jitter).
const BACKOFF_MAX_NS: u64 = 1_000_000_000;
/// Random probes for a churn victim before giving up for this tick.
const CHURN_PROBES: usize = 64;

/// What a worker asks an engine to do: the coordinator's commands, relayed as they are
/// (they travel between processes as [`crate::worker::Down`] lines).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// Publish this step's schedule and record its deliveries.
    Step(Schedule),
    /// Stop recording the step and hand its record over.
    EndStep(u32),
    /// Close every connection politely and report for the last time.
    Finish,
}

/// Members per room, as `(room, count)` pairs for the rooms that have any.
pub type Members = Vec<(u32, u32)>;

/// What publishers did in one step, and who was there to receive it: the inputs of the
/// expected-delivery count (Σ over rooms of members × messages).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PublishReport {
    /// Joined members per room when the step started.
    pub members: Members,
    /// Messages written per room.
    pub published: Vec<(u32, u64)>,
    /// Messages due for a publisher that was not connected, so never sent.
    pub unsent: u64,
}

impl PublishReport {
    /// Appends another thread's or process's report.
    pub fn extend(&mut self, o: PublishReport) {
        self.members.extend(o.members);
        self.published.extend(o.published);
        self.unsent += o.unsent;
    }
}

/// What an engine tells its worker.
#[derive(Debug)]
pub enum Event {
    /// Once a second.
    Progress {
        /// Engine thread index.
        thread: u32,
        /// Connection outcomes so far.
        stats: ConnStats,
        /// Distinct deliveries of the open step so far.
        step_delivered: u64,
        /// Latencies of the last interval.
        interval: Histogram<u64>,
    },
    /// Every connection of the thread has joined or failed.
    Ready {
        /// Engine thread index.
        thread: u32,
        /// Connection outcomes.
        stats: ConnStats,
        /// User-space bytes held by connections right now (structs + buffers).
        conn_bytes: u64,
    },
    /// The thread's publishers are done with a step.
    Published {
        /// Engine thread index.
        thread: u32,
        /// Step number.
        step: u32,
        /// Members and messages.
        report: PublishReport,
    },
    /// The record of a closed step.
    StepDone {
        /// Engine thread index.
        thread: u32,
        /// Step number.
        step: u32,
        /// Histograms and counters.
        record: Box<StepRecord>,
    },
    /// Final report; the thread has ended.
    Done {
        /// Engine thread index.
        thread: u32,
        /// Connection outcomes at the end.
        stats: ConnStats,
    },
    /// The thread could not run (poll or timer creation failed).
    Failed {
        /// Engine thread index.
        thread: u32,
        /// What went wrong.
        message: String,
    },
}

/// The bytes of user-space state one held connection costs in an engine: its slab slot
/// (an enum around [`Conn`], the size of `Option<Conn>`). Buffers come on top only while
/// a frame is incomplete or the kernel refuses bytes.
pub fn conn_slot_bytes() -> usize {
    std::mem::size_of::<Option<Conn>>()
}

/// The failure label of a connection still not joined at the connect deadline: where it
/// got stuck tells whose side is slow (TCP connect, the server's upgrade, or its join).
fn timeout_label(state: State) -> &'static str {
    match state {
        State::Connecting => "timeout_connect",
        State::SendingRequest | State::AwaitingResponse => "timeout_upgrade",
        State::AwaitingWelcome => "timeout_welcome",
        State::Joining | State::Joined => "timeout_join",
    }
}

/// When connections still not joined count as failed: the connect timeout after the
/// later of the planned end of the connect phase and the moment the last connection was
/// actually opened. Regression: with only the plan, a host that opened connections
/// slower than the requested rate (1,000,000 over 56 nodes on 2 cores; 60,000 in 600
/// rooms over 20 nodes) failed the last ones as `timeout_join` after a fraction of the
/// timeout.
fn ready_deadline_ns(planned_end_ns: u64, last_open_ns: u64, timeout_ns: u64) -> u64 {
    planned_end_ns.max(last_open_ns) + timeout_ns
}

/// Delay before reconnection attempt `attempt` (1, 2, …): exponential from 20 ms, at
/// most 1 s, with as much random jitter again so a mass close does not come back in one burst.
pub fn backoff_ns(attempt: u32) -> u64 {
    let base = (BACKOFF_BASE_NS << attempt.saturating_sub(1).min(16)).min(BACKOFF_MAX_NS);
    base + fastrand::u64(..=base)
}

/// A connection between two sockets: its session waits for its reconnection time.
struct Parked {
    session: Session,
    attempt: u32,
}

/// A reconnection attempt in flight (socket open, not joined yet).
#[derive(Clone, Copy)]
struct Rejoin {
    key: usize,
    attempt: u32,
    deadline_ns: u64,
}

/// A publish step in progress.
struct StepState {
    schedule: Schedule,
    /// Connections churned so far in this step (the churn pacing counts from `t0`).
    churned: u64,
    next_k: u64,
    members: Members,
    published: BTreeMap<u32, u64>,
    unsent: u64,
    reported: bool,
}

/// One engine thread's state.
pub struct Engine {
    plan: Arc<Plan>,
    process: u32,
    thread: u32,
    poll: Poll,
    timer: Timer,
    conns: Slab<Conn>,
    scratch: Vec<u8>,
    rooms: RoomMap,
    /// Joined connections per room (index = room).
    members: Vec<u32>,
    /// Slab key of each joined publisher of this thread (index = global publisher id).
    publishers: Vec<usize>,
    /// Connections still to open, and the connect pacing.
    next_conn: u64,
    stride: u64,
    to_open: u64,
    opened: u64,
    connect_start_ns: u64,
    /// When the last connection was opened: a host slower than the planned connect rate
    /// opens the last ones late, and each connection gets the whole connect timeout.
    last_open_ns: u64,
    /// Connections open but not joined yet.
    pending: u64,
    ready_sent: bool,
    stats: ConnStats,
    record: StepRecord,
    interval: Histogram<u64>,
    open_step: u32,
    step: Option<StepState>,
    last_progress_ns: u64,
    text: String,
    epochs: Epochs,
    /// Sessions waiting to reconnect, by global index, and their due times (min-heap).
    parked: HashMap<u32, Parked>,
    reconnect_due: BinaryHeap<Reverse<(u64, u32)>>,
    /// Reconnection attempts in flight, by global index.
    rejoins: HashMap<u32, Rejoin>,
    /// When `rejoins` is next checked for attempts past their deadline.
    next_expiry_ns: u64,
    /// `--ack-timeout`: when this thread's connected publishers send an unacknowledged
    /// message of the open step again.
    retries: Retries,
    events: Sender<Event>,
    commands: Receiver<Command>,
}

impl Engine {
    /// Builds the engine for `thread` of `process`; the returned waker must be woken after
    /// every command sent on `commands`.
    pub fn new(
        plan: Arc<Plan>,
        process: u32,
        thread: u32,
        events: Sender<Event>,
        commands: Receiver<Command>,
    ) -> io::Result<(Engine, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut timer = Timer::new()?;
        poll.registry().register(&mut timer, TIMER, Interest::READABLE)?;
        let to_open = plan.count_of(process, thread);
        let stats = ConnStats { target: to_open, ..ConnStats::default() };
        let engine = Engine {
            rooms: plan.room_map(),
            members: vec![0; plan.rooms.max(1) as usize],
            publishers: vec![usize::MAX; plan.publishers as usize],
            next_conn: u64::from(process) + u64::from(plan.processes) * u64::from(thread),
            stride: u64::from(plan.processes) * u64::from(plan.threads),
            to_open,
            opened: 0,
            connect_start_ns: now_ns(),
            last_open_ns: 0,
            pending: 0,
            ready_sent: false,
            stats,
            record: StepRecord::default(),
            interval: new_hist(),
            open_step: NO_STEP,
            step: None,
            last_progress_ns: now_ns(),
            text: String::new(),
            epochs: Epochs::default(),
            parked: HashMap::new(),
            reconnect_due: BinaryHeap::new(),
            rejoins: HashMap::new(),
            next_expiry_ns: 0,
            retries: Retries::new(plan.ack_timeout_ns),
            conns: Slab::with_capacity(to_open as usize),
            scratch: vec![0; SCRATCH],
            plan,
            process,
            thread,
            poll,
            timer,
            events,
            commands,
        };
        Ok((engine, waker))
    }

    /// Runs until `Finish` (or until the worker goes away).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(100))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    let _ = self.events.send(Event::Failed { thread: self.thread, message: format!("poll: {e}") });
                    return;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    TIMER => self.timer.clear(),
                    Token(key) => {
                        self.on_socket(key, ev.is_readable() || ev.is_error(), ev.is_read_closed(), ev.is_writable())
                    }
                }
            }
            if !self.handle_commands() {
                return self.finish();
            }
            let now = now_ns();
            self.open_due(now);
            self.reconnect_parked(now);
            self.expire_rejoins(now);
            self.publish_due(now);
            self.retry_unacked();
            self.churn_due(now);
            self.check_ready(now);
            self.report_progress(now);
            self.arm_timer(now);
        }
    }

    fn handle_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Step(schedule)) => self.start_step(schedule),
                Ok(Command::EndStep(step)) => self.end_step(step),
                Ok(Command::Finish) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn start_step(&mut self, schedule: Schedule) {
        let members = self.members.iter().enumerate().filter(|(_, &n)| n > 0).map(|(r, &n)| (r as u32, n)).collect();
        self.record = StepRecord::default();
        self.retries.clear();
        if self.plan.acks {
            self.audit_members();
        }
        self.open_step = schedule.step;
        self.step = Some(StepState {
            schedule,
            churned: 0,
            next_k: 0,
            members,
            published: BTreeMap::new(),
            unsent: 0,
            reported: false,
        });
    }

    /// `--acks`: the room members of this thread by home, for the audit of the step.
    /// The same connections as `members` counts: joined, rejoining or parked (recovery
    /// promises a reconnecting member every message).
    fn audit_members(&mut self) {
        let joined = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.state == State::Joined || self.rejoins.contains_key(&c.index))
            .map(|(_, c)| (c.index, c.session.room));
        let parked = self.parked.iter().map(|(&index, p)| (index, p.session.room));
        for (index, room) in joined.chain(parked) {
            self.record.audit.member(room, self.plan.home_of(u64::from(index)), 1);
        }
    }

    fn end_step(&mut self, step: u32) {
        self.open_step = NO_STEP;
        self.step = None;
        self.retries.clear();
        let record = Box::new(std::mem::take(&mut self.record));
        let _ = self.events.send(Event::StepDone { thread: self.thread, step, record });
    }

    fn finish(mut self) {
        for (_, conn) in std::mem::take(&mut self.conns) {
            conn.close(1000);
        }
        self.stats.held = 0;
        let _ = self.events.send(Event::Done { thread: self.thread, stats: self.stats.clone() });
    }

    fn on_socket(&mut self, key: usize, readable: bool, read_closed: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let was_joined = conn.session.state == State::Joined;
        let mut result = Ok(());
        if writable {
            let (plan, rejoins, index) = (&self.plan, &self.rejoins, conn.index);
            // A reconnection may go to another target (`--failover`): its Host header too.
            // Looked up only when the handshake is written, not on every writable event.
            result = conn.on_writable(|| {
                let attempt = rejoins.get(&index).map_or(0, |r| r.attempt);
                let c = u64::from(index);
                (plan.reconnect_target(c, attempt), plan.user_name(c), plan.deflate)
            });
        }
        if readable && result.is_ok() {
            let home = self.plan.acks.then(|| self.plan.home_of(u64::from(conn.index)));
            let mut ctx = Ctx {
                now_ns: now_ns(),
                open_step: self.open_step,
                tag: &self.plan.tag,
                record: &mut self.record,
                interval: &mut self.interval,
                stats: &mut self.stats,
                epochs: &mut self.epochs,
                home,
            };
            result = conn.on_readable(&mut self.scratch, &mut ctx, read_closed);
        }
        if !was_joined && conn.session.state == State::Joined {
            self.on_joined(key);
        }
        if let Err(end) = result {
            self.end(key, end);
        }
    }

    fn on_joined(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else { return };
        let index = conn.index;
        let rejoined = self.rejoins.remove(&index).is_some();
        if !rejoined {
            // A first join; a rejoining connection never stopped being a member.
            self.pending -= 1;
            self.members[conn.session.room as usize] += 1;
        }
        self.stats.held += 1;
        if self.plan.is_publisher(u64::from(index)) {
            self.publishers[index as usize] = key;
            if rejoined && self.plan.acks {
                self.resend_unacked(index);
            }
        }
    }

    /// `--acks`: a publisher back in its room sends again, oldest first and with the same
    /// idempotency keys, the open step's messages it has no ack for: what a client that
    /// takes an `ack` as the only proof of delivery does. Each keeps its intended send
    /// time, so the outage counts in its latency.
    fn resend_unacked(&mut self, publisher: u32) {
        let Some(schedule) = self.step.as_ref().map(|s| s.schedule) else { return };
        let unacked = self.record.audit.unacked_of(publisher);
        self.record.audit.resent(unacked.len() as u64);
        for n in unacked {
            if !self.connected(publisher) {
                return; // dropped again: the next rejoin resends what is still unacked
            }
            self.publish(publisher, &stamp_at(&schedule, schedule.index_of(publisher, n)), 0);
        }
    }

    /// `--ack-timeout`: a connected publisher sends again, with the same idempotency key,
    /// each message of the open step whose ack is overdue, and waits twice as long for
    /// the next one. A publisher that is away is skipped: its rejoin resends everything
    /// it has no ack for ([`Self::resend_unacked`]). Reads the clock only when a
    /// deadline is pending (never without `--ack-timeout`), and then afresh, so a message
    /// written in this loop pass is compared with its own send time.
    fn retry_unacked(&mut self) {
        let Some(schedule) = self.step.as_ref().map(|s| s.schedule) else { return };
        if self.retries.next_due().is_none() {
            return;
        }
        let now = now_ns();
        while let Some(((publisher, n), attempt)) = self.retries.pop_due(now) {
            if !self.connected(publisher) || self.record.audit.is_acked((publisher, n)) {
                continue;
            }
            self.record.audit.retried(1);
            self.publish(publisher, &stamp_at(&schedule, schedule.index_of(publisher, n)), attempt + 1);
        }
    }

    /// Whether `publisher` has a connection here (`publishers` holds `usize::MAX` while
    /// it has none).
    fn connected(&self, publisher: u32) -> bool {
        self.publishers.get(publisher as usize).is_some_and(|&key| key != usize::MAX)
    }

    fn end(&mut self, key: usize, end: End) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        let _ = self.poll.registry().deregister(conn.stream_mut());
        let index = conn.index;
        let joined = conn.session.state == State::Joined;
        let rejoin = self.rejoins.remove(&index);
        if joined {
            self.stats.held -= 1;
            if self.plan.is_publisher(u64::from(index)) {
                self.publishers[index as usize] = usize::MAX;
            }
        } else if rejoin.is_none() {
            self.pending -= 1;
        }
        match end {
            End::Failed(_) if rejoin.is_some() => self.note(|r| r.failed_attempts += 1),
            End::Failed(label) => self.stats.fail(label),
            End::Closed(code) => {
                *self.stats.closes.entry(code).or_default() += 1;
                if code == 1001 {
                    let now_s = crate::sys::secs(now_ns());
                    self.stats.heartbeat_closes.note(conn.last_ping_s, now_s, conn.buffered() > 0);
                }
                if !joined && rejoin.is_none() {
                    self.stats.fail("closed_before_join");
                }
            }
            End::Dropped => self.stats.dropped += 1,
            End::Churned => self.note(|r| r.churned += 1),
        }
        if !joined && rejoin.is_none() {
            return; // never held its room: nothing to recover
        }
        let attempt = rejoin.map_or(1, |r| r.attempt + 1);
        if end.retryable() && attempt <= self.plan.reconnect_attempts {
            let session = conn.session;
            self.reconnect_due.push(Reverse((now_ns() + backoff_ns(attempt), index)));
            self.parked.insert(index, Parked { session, attempt });
        } else {
            // Out of attempts (a close that is not retried is counted as a close only).
            if end.retryable() && self.plan.reconnect_attempts > 0 {
                self.note(|r| r.gave_up += 1);
            }
            self.members[conn.session.room as usize] -= 1;
        }
    }

    /// Counts a recovery event in the open step's record and in the run's totals.
    fn note(&mut self, count: impl Fn(&mut crate::record::Recovery)) {
        count(&mut self.record.recovery);
        count(&mut self.stats.recovery);
    }

    /// Reopens the parked connections whose backoff is over.
    /// At most [`CONNECT_BURST`] per pass, like first connects, so a mass close (a server
    /// restart) cannot starve reads.
    fn reconnect_parked(&mut self, now: u64) {
        for _ in 0..CONNECT_BURST {
            let Some(&Reverse((due, index))) = self.reconnect_due.peek() else { return };
            if due > now {
                return;
            }
            self.reconnect_due.pop();
            let Some(Parked { session, attempt }) = self.parked.remove(&index) else { continue };
            self.note(|r| r.reconnects += 1);
            let c = u64::from(index);
            let target = self.plan.reconnect_target(c, attempt);
            let opened =
                Conn::resume(self.plan.source_addr(c), target, index, session).and_then(|conn| self.register(conn));
            match opened {
                Ok(key) => {
                    let deadline_ns = now + (self.plan.connect_timeout_secs * 1e9) as u64;
                    self.rejoins.insert(index, Rejoin { key, attempt, deadline_ns });
                }
                Err(_) => {
                    self.note(|r| r.failed_attempts += 1);
                    if attempt < self.plan.reconnect_attempts {
                        self.reconnect_due.push(Reverse((now + backoff_ns(attempt + 1), index)));
                        self.parked.insert(index, Parked { session, attempt: attempt + 1 });
                    } else {
                        self.note(|r| r.gave_up += 1);
                        self.members[session.room as usize] -= 1;
                    }
                }
            }
        }
    }

    /// Ends the reconnection attempts that did not rejoin within `--connect-timeout`
    /// (they are retried like any failed attempt).
    fn expire_rejoins(&mut self, now: u64) {
        if self.rejoins.is_empty() || now < self.next_expiry_ns {
            return;
        }
        // A scan of the attempts in flight, at most every 100 ms.
        self.next_expiry_ns = now + 100_000_000;
        let expired: Vec<usize> = self.rejoins.values().filter(|r| r.deadline_ns <= now).map(|r| r.key).collect();
        for key in expired {
            self.end(key, End::Failed("timeout_rejoin"));
        }
    }

    /// `--churn`: while the step publishes, closes this thread's share of the churn rate
    /// in random joined receivers (publishers are spared: a closed publisher would leave
    /// its schedule unsent, which measures something else). Abrupt, no close frame: the
    /// socket just closes, like a phone losing its network. They reconnect with recovery.
    fn churn_due(&mut self, now: u64) {
        let Some(step) = &self.step else { return };
        let rate = self.churn_rate();
        if rate <= 0.0 || now < step.schedule.t0_ns || step.next_k >= step.schedule.total() {
            return;
        }
        let due = ((now - step.schedule.t0_ns) as f64 / 1e9 * rate) as u64;
        let mut churned = step.churned;
        while churned < due {
            churned += 1;
            if let Some(key) = self.churn_victim() {
                self.end(key, End::Churned);
            }
        }
        if let Some(step) = self.step.as_mut() {
            step.churned = churned;
        }
    }

    /// This thread's share of `--churn` (connections per second).
    fn churn_rate(&self) -> f64 {
        self.plan.churn_per_sec / f64::from(self.plan.processes * self.plan.threads).max(1.0)
    }

    /// A random joined receiver, if a few probes find one.
    fn churn_victim(&self) -> Option<usize> {
        let slots = self.conns.capacity();
        if slots == 0 {
            return None;
        }
        (0..CHURN_PROBES).map(|_| fastrand::usize(..slots)).find(|&key| {
            self.conns
                .get(key)
                .is_some_and(|c| c.session.state == State::Joined && !self.plan.is_publisher(u64::from(c.index)))
        })
    }

    fn connect_due_ns(&self) -> u64 {
        let rate = self.plan.connect_rate / f64::from(self.plan.processes * self.plan.threads).max(1.0);
        self.connect_start_ns + (self.opened as f64 / rate.max(1e-9) * 1e9) as u64
    }

    fn open_due(&mut self, now: u64) {
        let mut burst = 0;
        while self.opened < self.to_open && burst < CONNECT_BURST && self.connect_due_ns() <= now {
            let c = self.next_conn;
            self.next_conn += self.stride;
            self.opened += 1;
            self.last_open_ns = now;
            burst += 1;
            self.open(c);
        }
    }

    fn open(&mut self, c: u64) {
        self.stats.attempted += 1;
        let room = self.rooms.room_of(c);
        let opened = Conn::connect(self.plan.source_addr(c), self.plan.target_of(c), c as u32, room)
            .and_then(|conn| self.register(conn));
        match opened {
            Ok(_) => self.pending += 1,
            Err(e) => self.stats.fail(errno_name(&e)),
        }
    }

    /// Puts `conn` in the slab and registers its socket; returns its key.
    fn register(&mut self, mut conn: Conn) -> io::Result<usize> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(conn.stream_mut(), Token(key), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(conn);
        Ok(key)
    }

    fn check_ready(&mut self, now: u64) {
        if self.ready_sent || self.opened < self.to_open {
            return;
        }
        let timeout_ns = (self.plan.connect_timeout_secs * 1e9) as u64;
        if self.pending > 0 && now < ready_deadline_ns(self.connect_due_ns(), self.last_open_ns, timeout_ns) {
            return;
        }
        let stuck: Vec<(usize, State)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.state != State::Joined && !self.rejoins.contains_key(&c.index))
            .map(|(k, c)| (k, c.session.state))
            .collect();
        for (key, state) in stuck {
            self.end(key, End::Failed(timeout_label(state)));
        }
        self.ready_sent = true;
        let conn_bytes = self.conns.iter().map(|(_, c)| c.buffered() as u64).sum::<u64>()
            + (self.conns.capacity() * std::mem::size_of::<Conn>()) as u64;
        let _ = self.events.send(Event::Ready { thread: self.thread, stats: self.stats.clone(), conn_bytes });
    }

    fn publish_due(&mut self, now: u64) {
        let Some(mut step) = self.step.take() else { return };
        let due = step.schedule.due(step.next_k, now);
        step.next_k = due.end;
        for k in due {
            let (publisher, _) = step.schedule.sender_of(k);
            if self.plan.owner(u64::from(publisher)) != (self.process, self.thread) {
                continue;
            }
            match self.publish(publisher, &stamp_at(&step.schedule, k), 0) {
                Some(room) => *step.published.entry(room).or_default() += 1,
                None => step.unsent += 1,
            }
        }
        if step.next_k >= step.schedule.total() && !step.reported {
            step.reported = true;
            let report = PublishReport {
                members: step.members.clone(),
                published: step.published.iter().map(|(&r, &n)| (r, n)).collect(),
                unsent: step.unsent,
            };
            let _ = self.events.send(Event::Published { thread: self.thread, step: step.schedule.step, report });
        }
        self.step = Some(step);
    }

    /// Sends one message from `publisher` (`attempt` > 0: an `--ack-timeout` retry);
    /// returns its room, or `None` if it was not sent.
    /// With `--acks`, a message due while its publisher reconnects is queued instead, as
    /// a client's outbox would hold it: counted as published, unacknowledged, and sent by
    /// [`Self::resend_unacked`] once the publisher has rejoined.
    fn publish(&mut self, publisher: u32, stamp: &Stamp, attempt: u32) -> Option<u32> {
        let key = *self.publishers.get(publisher as usize)?;
        let Some(conn) = self.conns.get_mut(key) else {
            let reconnecting = self.parked.contains_key(&publisher) || self.rejoins.contains_key(&publisher);
            if !(self.plan.acks && reconnecting) {
                return None;
            }
            return Some(self.queue_for_rejoin(publisher, stamp.n, self.rooms.room_of(u64::from(publisher))));
        };
        let room = conn.session.room;
        let json = if self.plan.data_bytes > 0 {
            stamp.encode(0, &mut self.text);
            let data = if self.plan.payload_json {
                let seed = u64::from(stamp.publisher) << 40 ^ stamp.n;
                crate::payload::data_object_json(&self.text, self.plan.data_bytes, seed)
            } else {
                crate::payload::data_object(&self.text, self.plan.data_bytes)
            };
            format!(r#"{{"type":"message","room":"{}-{room}","data":{data}}}"#, self.plan.tag)
        } else {
            stamp.encode_with(self.plan.payload_bytes, self.plan.payload_json, &mut self.text);
            format!(r#"{{"type":"message","room":"{}-{room}","text":"{}"}}"#, self.plan.tag, self.text)
        };
        let json = if self.plan.acks {
            // `{…}` → `{…,"id":I,"idempotency_key":I}`: the server acks it once sequenced,
            // and a resend after a reconnection is not sequenced twice.
            let id = crate::audit::message_id(stamp.step, publisher, stamp.n);
            format!(r#"{},"id":"{id}","idempotency_key":"{id}"}}"#, &json[..json.len() - 1])
        } else {
            json
        };
        let frame = client_frame(OpCode::Data(Data::Text), true, json.as_bytes(), fastrand::u32(..).to_ne_bytes());
        match conn.send(&frame) {
            Ok(()) => {
                if self.plan.acks {
                    self.record.audit.sent((publisher, stamp.n), room);
                    self.retries.sent((publisher, stamp.n), attempt, stamp.actual_ns);
                }
                Some(room)
            }
            Err(_) => {
                self.end(key, End::Dropped);
                // Parked to reconnect: with `--acks` the message waits in its outbox.
                if self.plan.acks && self.parked.contains_key(&publisher) {
                    return Some(self.queue_for_rejoin(publisher, stamp.n, room));
                }
                None
            }
        }
    }

    /// `--acks`: message `n` of `publisher`, which is reconnecting, waits in its outbox:
    /// recorded as written and unacknowledged, so [`Self::resend_unacked`] sends it after
    /// the rejoin. Returns its room.
    fn queue_for_rejoin(&mut self, publisher: u32, n: u64, room: u32) -> u32 {
        self.record.audit.sent((publisher, n), room);
        self.record.audit.queued(1);
        room
    }

    fn report_progress(&mut self, now: u64) {
        if now < self.last_progress_ns + PROGRESS_NS {
            return;
        }
        self.last_progress_ns = now;
        let interval = std::mem::replace(&mut self.interval, new_hist());
        let _ = self.events.send(Event::Progress {
            thread: self.thread,
            stats: self.stats.clone(),
            step_delivered: self.record.counts.unique(),
            interval,
        });
    }

    fn arm_timer(&mut self, now: u64) {
        let mut deadline = self.last_progress_ns + PROGRESS_NS;
        if self.opened < self.to_open {
            deadline = deadline.min(self.connect_due_ns());
        }
        if let Some(step) = &self.step {
            if step.next_k < step.schedule.total() {
                deadline = deadline.min(step.schedule.intended_ns(step.next_k));
                let rate = self.churn_rate();
                if rate > 0.0 {
                    deadline = deadline.min(step.schedule.t0_ns + ((step.churned + 1) as f64 / rate * 1e9) as u64);
                }
            }
        }
        if let Some(Reverse((due, _))) = self.reconnect_due.peek() {
            deadline = deadline.min(*due);
        }
        if let Some(due) = self.retries.next_due() {
            deadline = deadline.min(due);
        }
        let _ = self.timer.arm_at(deadline.max(now + 1));
    }
}

/// The stamp of message `k` of `schedule`'s step, written now. A resend (after a rejoin
/// or an ack timeout) keeps the message's intended send time, so the time it waited
/// counts in its latency.
fn stamp_at(schedule: &Schedule, k: u64) -> Stamp {
    let (publisher, n) = schedule.sender_of(k);
    Stamp { step: schedule.step, publisher, n, intended_ns: schedule.intended_ns(k), actual_ns: now_ns() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_connections_opened_late_get_the_whole_connect_timeout() {
        let s = 1_000_000_000;
        // Planned: all opened by 12 s; the host opened the last one at 22 s.
        assert_eq!(ready_deadline_ns(12 * s, 22 * s, 10 * s), 32 * s);
        // On schedule: the plan's end counts.
        assert_eq!(ready_deadline_ns(12 * s, 11 * s, 10 * s), 22 * s);
    }
}
