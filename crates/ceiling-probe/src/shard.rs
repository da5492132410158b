//! One ceiling-probe thread: its own `SO_REUSEPORT` listener, a mio loop over its
//! connections, the rooms it owns (sequencing), and the hand-offs to and from the other
//! threads.
//!
//! Per loop iteration: handle socket events (accept, upgrade, frames), then the inbox (items
//! from other threads), then write every room's batch of new frames to its local members
//! (one write per member per iteration, however many frames), then send each other thread
//! what it gets from this one as one bundle with one wake-up.
//!
//! A room is owned by thread `hash(name) % threads`, which numbers its messages, so `seq`
//! is gap-free and in the same order for every member wherever it lives. A member thread
//! asks the owner to sequence a join and adds the connection when the answer comes back,
//! through the same FIFO as the room's frames: the connection sees exactly the messages
//! after its `joined.seq`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use corecast_wire::ws::frame::pong_frame;
use corecast_wire::ws::reader::Message;
use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::conn::{Conn, Phase, Shared};
use super::wire::{self, Client, Request};

/// Token of the wake-up (inbox or shutdown).
pub const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);
/// Read buffer shared by the thread's connections.
const SCRATCH: usize = 64 * 1024;

/// What one thread hands another; sent in bundles, one per target thread per iteration.
#[derive(Debug)]
pub enum Item {
    /// To an owner: a connection of thread `from` wants to join `room`.
    Join {
        /// Room name.
        room: Vec<u8>,
        /// Asking thread.
        from: usize,
        /// Slab key and id of the connection.
        conn: (usize, u64),
    },
    /// From an owner: the join is sequenced.
    Joined {
        /// Room name.
        room: Vec<u8>,
        /// Slab key and id of the connection.
        conn: (usize, u64),
        /// The room's latest `seq` at the join.
        seq: u64,
        /// Members after the join.
        members: u32,
        /// The room's epoch.
        epoch: Arc<str>,
    },
    /// To an owner: a publish.
    Publish {
        /// Room name.
        room: Vec<u8>,
        /// Sender's name.
        user: Vec<u8>,
        /// Raw text.
        text: Vec<u8>,
    },
    /// From an owner: one sequenced message frame for the room's members on this thread.
    Frame {
        /// Room name.
        room: Arc<[u8]>,
        /// The complete WebSocket frame.
        frame: Arc<[u8]>,
    },
    /// To an owner: a member on thread `from` is gone.
    Leave {
        /// Room name.
        room: Vec<u8>,
        /// Thread of the member.
        from: usize,
    },
}

/// What every thread knows about its siblings.
pub struct Mesh {
    /// Inbox of each thread.
    pub senders: Vec<Sender<Vec<Item>>>,
    /// Wake-up of each thread.
    pub wakers: Vec<Arc<Waker>>,
    /// Set once to stop every thread.
    pub stop: Arc<AtomicBool>,
}

/// Owner-side state of a room.
struct Owned {
    seq: u64,
    members: u32,
    epoch: Arc<str>,
    /// Members per thread: who gets the room's frames.
    per_thread: Vec<u32>,
    name: Arc<[u8]>,
}

/// A room as one thread sees it.
struct Room {
    /// Its name.
    name: Vec<u8>,
    /// Local members (slab keys).
    members: Vec<usize>,
    /// Frames of this iteration, in `seq` order.
    batch: Shared,
    owned: Option<Owned>,
}

/// A request found in a connection's frames, applied once the read is done.
enum Action {
    Join(Vec<u8>),
    Publish(Vec<u8>, Vec<u8>),
    Pong(Vec<u8>),
    Close(u16),
}

/// One thread's state. Lives on its thread (it holds `Rc`s).
pub struct Shard {
    index: usize,
    poll: Poll,
    listener: TcpListener,
    inbox: Receiver<Vec<Item>>,
    mesh: Mesh,
    conns: Slab<Conn>,
    next_id: u64,
    rooms: Vec<Room>,
    room_index: HashMap<Vec<u8>, u32>,
    /// Rooms whose batch became non-empty this iteration (a room may appear twice when a
    /// join flushed its batch early; the second flush finds it empty).
    dirty: Vec<u32>,
    /// Outgoing bundle per thread.
    bundles: Vec<Vec<Item>>,
    /// Connections to close at the end of the iteration.
    dead: Vec<usize>,
    scratch: Vec<u8>,
}

impl Shard {
    /// A thread's shard around its listener and poll (the poll's waker is in `mesh.wakers[index]`).
    pub fn new(index: usize, poll: Poll, listener: TcpListener, inbox: Receiver<Vec<Item>>, mesh: Mesh) -> Shard {
        let threads = mesh.senders.len();
        Shard {
            index,
            poll,
            listener,
            inbox,
            mesh,
            conns: Slab::new(),
            next_id: 0,
            rooms: Vec::new(),
            room_index: HashMap::new(),
            dirty: Vec::new(),
            bundles: (0..threads).map(|_| Vec::new()).collect(),
            dead: Vec::new(),
            scratch: vec![0; SCRATCH],
        }
    }

    /// Runs until `mesh.stop` is set (and the thread woken).
    pub fn run(mut self) -> io::Result<()> {
        self.poll.registry().register(&mut self.listener, LISTENER, Interest::READABLE)?;
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            if self.mesh.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(key) => {
                        if ev.is_writable() {
                            if let Some(c) = self.conns.get_mut(key) {
                                c.flush();
                                if c.phase == Phase::Dead {
                                    self.dead.push(key);
                                }
                            }
                        }
                        if ev.is_readable() || ev.is_error() || ev.is_read_closed() {
                            self.on_readable(key, ev.is_read_closed());
                        }
                    }
                }
            }
            while let Ok(bundle) = self.inbox.try_recv() {
                for item in bundle {
                    self.on_item(item);
                }
            }
            self.end_iteration();
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key());
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        self.next_id += 1;
                        entry.insert(Conn::new(stream, self.next_id));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EMFILE and friends: try again on the next edge rather than spin.
                Err(_) => return,
            }
        }
    }

    /// Reads what the socket holds. `read_closed`: the event said the peer closed, so
    /// a short read does not end the loop (see below).
    fn on_readable(&mut self, key: usize, read_closed: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut actions = Vec::new();
        while let Some(conn) = self.conns.get_mut(key) {
            if conn.phase == Phase::Dead {
                break;
            }
            let n = match conn.read(&mut scratch) {
                Ok(0) => {
                    conn.phase = Phase::Dead;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    conn.phase = Phase::Dead;
                    break;
                }
            };
            let data = &mut scratch[..n];
            match conn.phase {
                Phase::Http => self.on_head(key, data, &mut actions),
                Phase::Open => frames(conn, data, &mut actions),
                Phase::Dead => {}
            }
            self.apply(key, &mut actions);
            // A short read drained the socket; later data raises a new edge. A FIN that
            // came with the data raises none: then read on until it is seen.
            if n < scratch.len() && !read_closed {
                break;
            }
        }
        self.scratch = scratch;
        if self.conns.get(key).is_some_and(|c| c.phase == Phase::Dead) {
            self.dead.push(key);
        }
    }

    fn on_head(&mut self, key: usize, data: &mut [u8], actions: &mut Vec<Action>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.head.extend_from_slice(data);
        let Some(end) = wire::head_end(&conn.head) else {
            if conn.head.len() > wire::MAX_HEAD {
                conn.phase = Phase::Dead;
            }
            return;
        };
        let head = std::mem::take(&mut conn.head);
        match wire::parse_request(&head[..end]) {
            Request::Upgrade { accept, name } => {
                let mut out = Vec::with_capacity(256);
                wire::upgrade_response(&accept, &mut out);
                wire::welcome(&name, &format!("ceiling-{}-{}", self.index, conn.id), self.index, &mut out);
                conn.user = Rc::from(name.as_bytes());
                conn.phase = Phase::Open;
                conn.send_own(&out);
                let mut rest = head[end..].to_vec();
                if !rest.is_empty() && conn.phase == Phase::Open {
                    frames(conn, &mut rest, actions);
                }
            }
            Request::Health => {
                conn.send_own(wire::HEALTH_RESPONSE);
                conn.phase = Phase::Dead;
            }
            Request::Bad => {
                conn.send_own(wire::BAD_RESPONSE);
                conn.phase = Phase::Dead;
            }
        }
    }

    fn apply(&mut self, key: usize, actions: &mut Vec<Action>) {
        for action in actions.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else { return };
            match action {
                Action::Join(room) => {
                    let item = Item::Join { room, from: self.index, conn: (key, conn.id) };
                    self.send_to_owner(item);
                }
                Action::Publish(room, text) => {
                    let item = Item::Publish { room, user: conn.user.to_vec(), text };
                    self.send_to_owner(item);
                }
                Action::Pong(payload) => conn.send_own(&pong_frame(&payload)),
                Action::Close(code) => {
                    let mut out = Vec::with_capacity(4);
                    wire::close(code, &mut out);
                    conn.send_own(&out);
                    conn.phase = Phase::Dead;
                }
            }
        }
    }

    /// Thread owning `room`.
    fn owner_of(&self, room: &[u8]) -> usize {
        // FNV-1a: the same answer on every thread.
        let h = room.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        (h % self.bundles.len() as u64) as usize
    }

    fn send_to_owner(&mut self, item: Item) {
        let room = match &item {
            Item::Join { room, .. } | Item::Publish { room, .. } | Item::Leave { room, .. } => room,
            _ => return,
        };
        let owner = self.owner_of(room);
        self.send_to_thread(owner, item);
    }

    fn send_to_thread(&mut self, thread: usize, item: Item) {
        if thread == self.index {
            self.on_item(item);
        } else {
            self.bundles[thread].push(item);
        }
    }

    fn room(&mut self, name: &[u8]) -> u32 {
        if let Some(&i) = self.room_index.get(name) {
            return i;
        }
        let i = self.rooms.len() as u32;
        self.rooms.push(Room { name: name.to_vec(), members: Vec::new(), batch: Shared::default(), owned: None });
        self.room_index.insert(name.to_vec(), i);
        i
    }

    fn owned(&mut self, idx: u32, name: &[u8]) -> &mut Owned {
        let threads = self.bundles.len();
        self.rooms[idx as usize].owned.get_or_insert_with(|| Owned {
            seq: 0,
            members: 0,
            epoch: format!("{:016x}", fastrand::u64(..)).into(),
            per_thread: vec![0; threads],
            name: Arc::from(name),
        })
    }

    fn on_item(&mut self, item: Item) {
        match item {
            Item::Join { room, from, conn } => {
                let idx = self.room(&room);
                let o = self.owned(idx, &room);
                o.members += 1;
                o.per_thread[from] += 1;
                let (seq, members, epoch) = (o.seq, o.members, o.epoch.clone());
                self.send_to_thread(from, Item::Joined { room, conn, seq, members, epoch });
            }
            Item::Joined { room, conn: (key, id), seq, members, epoch } => {
                let idx = self.room(&room);
                let alive = self.conns.get(key).is_some_and(|c| c.id == id && c.phase != Phase::Dead);
                if !alive {
                    return self.send_to_owner(Item::Leave { room, from: self.index });
                }
                // Frames already batched this iteration are older than the join: out first.
                self.flush_room(idx);
                let mut out = Vec::with_capacity(96 + room.len());
                wire::joined(&room, members, seq, &epoch, &mut out);
                self.rooms[idx as usize].members.push(key);
                if let Some(c) = self.conns.get_mut(key) {
                    c.rooms.push(idx);
                    c.send_own(&out);
                }
            }
            Item::Publish { room, user, text } => {
                let idx = self.room(&room);
                let me = self.index;
                let o = self.owned(idx, &room);
                o.seq += 1;
                let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let (seq, name) = (o.seq, o.name.clone());
                let remote: Vec<usize> = (0..o.per_thread.len()).filter(|&t| t != me && o.per_thread[t] > 0).collect();
                // Written once: straight into the local batch when the room has members
                // here, else into a buffer of its own; remote threads share a copy.
                let mut own = Vec::new();
                let buf = match self.batch(idx) {
                    Some(batch) => batch,
                    None if !remote.is_empty() => &mut own,
                    None => return,
                };
                let start = buf.len();
                wire::message(&room, seq, &user, &text, ts, buf);
                if !remote.is_empty() {
                    let frame: Arc<[u8]> = buf[start..].into();
                    for t in remote {
                        self.bundles[t].push(Item::Frame { room: name.clone(), frame: frame.clone() });
                    }
                }
            }
            Item::Frame { room, frame } => {
                let Some(&idx) = self.room_index.get(&room[..]) else { return };
                if let Some(batch) = self.batch(idx) {
                    batch.extend_from_slice(&frame);
                }
            }
            Item::Leave { room, from } => {
                let idx = self.room(&room);
                let o = self.owned(idx, &room);
                o.members = o.members.saturating_sub(1);
                o.per_thread[from] = o.per_thread[from].saturating_sub(1);
            }
        }
    }

    /// The batch of room `idx` to append frames to, marking the room dirty on its first
    /// frame of the iteration; `None` when the room has no member on this thread.
    fn batch(&mut self, idx: u32) -> Option<&mut Vec<u8>> {
        let r = self.rooms.get_mut(idx as usize)?;
        if r.members.is_empty() {
            return None;
        }
        if r.batch.bytes.is_empty() {
            self.dirty.push(idx);
        }
        Some(&mut r.batch.bytes)
    }

    /// Writes a room's batch to its local members (one write each) and empties it.
    fn flush_room(&mut self, idx: u32) {
        let Some(r) = self.rooms.get_mut(idx as usize) else { return };
        if r.batch.bytes.is_empty() {
            return;
        }
        for &key in &r.members {
            if let Some(c) = self.conns.get_mut(key) {
                if c.phase == Phase::Open {
                    c.send_shared(&mut r.batch);
                    if c.phase == Phase::Dead {
                        self.dead.push(key);
                    }
                }
            }
        }
        r.batch.clear();
    }

    fn end_iteration(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            self.flush_room(idx);
        }
        self.dirty = dirty;
        self.dirty.clear();
        while let Some(key) = self.dead.pop() {
            self.close(key);
        }
        for t in 0..self.bundles.len() {
            if self.bundles[t].is_empty() {
                continue;
            }
            let bundle = std::mem::take(&mut self.bundles[t]);
            if self.mesh.senders[t].send(bundle).is_ok() {
                let _ = self.mesh.wakers[t].wake();
            }
        }
    }

    fn close(&mut self, key: usize) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        let _ = self.poll.registry().deregister(conn.stream_mut());
        for idx in std::mem::take(&mut conn.rooms) {
            let r = &mut self.rooms[idx as usize];
            if let Some(p) = r.members.iter().position(|&k| k == key) {
                r.members.swap_remove(p);
            }
            let room = r.name.clone();
            self.send_to_owner(Item::Leave { room, from: self.index });
        }
    }
}

/// Feeds frame bytes to the connection's reader, turning requests into actions.
fn frames(conn: &mut Conn, data: &mut [u8], actions: &mut Vec<Action>) {
    let fed = conn.reader.feed(data, |msg| {
        match msg {
            Message::Text(json) => match wire::classify(json) {
                Client::Join { room } => actions.push(Action::Join(room.to_vec())),
                Client::Publish { room, text } => actions.push(Action::Publish(room.to_vec(), text.to_vec())),
                Client::Other => {}
            },
            Message::Ping(p) => actions.push(Action::Pong(p.to_vec())),
            Message::Close(c) => {
                actions.push(Action::Close(c.map_or(1000, |(code, _)| code)));
                return ControlFlow::Break(());
            }
            Message::Pong(_) | Message::Binary(_) => {}
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = fed {
        actions.push(Action::Close(e.close_code()));
    }
}

/// Binds `addr` with `SO_REUSEPORT` (every thread binds its own listener on the same port,
/// and the kernel spreads connections over them).
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
