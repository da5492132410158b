//! A shard's connection table: per-connection state, owned by the shard, addressed by
//! generation-checked ids.
//!
//! The state lives here rather than inside each connection's task so that the fan-out
//! loop can reach a receiver's socket and queue directly; the task itself holds only the
//! id. Ids carry a generation so that a late message for a closed connection (an owner's
//! ack racing a disconnect) can never reach a newer connection reusing the slot.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_lite::io::AsyncRead;
use slab::Slab;
use smallvec::SmallVec;

use super::outbox::{Caps, Outbox, Pushed};
use crate::rt::readiness::Readiness;
use crate::rt::TcpStream;
use crate::ws::reader::MessageReader;

pub use crate::room::request::ConnId;

/// Lifecycle of a connection (one byte; the HTTP state lives in `Conn::http`).
///
/// Every way the server ends a connection passes through a lingering phase
/// (`Closing`, `ClosingDiscard` or `Linger`): the last thing it owes the peer (a close
/// frame, an HTTP answer) is flushed, the write side is shut down, and input is read
/// and dropped until the peer closes or the close timeout passes. Only then is the
/// socket closed. Closing a socket with unread input makes the kernel send a reset
/// instead of a FIN, and a reset destroys whatever the peer had not read yet: the
/// close frame that says why (docs/PROTOCOL.md, "When the server closes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Speaking HTTP/1.1 (keep-alive) until a request upgrades to WebSocket.
    Http,
    /// Upgraded: exchanging WebSocket messages.
    Open,
    /// We sent a close frame and wait for the peer's (or for its end of stream, or the
    /// close timeout); input is parsed only to find that close frame.
    Closing,
    /// Like `Closing`, after a protocol error: input is discarded unread.
    ClosingDiscard,
    /// Our last bytes are queued (an HTTP answer without keep-alive, the echo of the
    /// peer's close frame): flush them, shut down writing, discard input until the
    /// peer's end of stream or the close timeout.
    Linger,
    /// Finished: flush what is queued, then the task ends and the socket is closed.
    /// Entered only when nothing the peer still needs can be destroyed by closing: the
    /// close handshake completed, the peer ended its stream, the socket broke, or the
    /// close timeout passed.
    Done,
}

impl Phase {
    /// Whether the server is ending the connection and waits for the peer to finish
    /// (the write side is shut down once the queue is flushed).
    pub fn is_lingering(self) -> bool {
        matches!(self, Phase::Closing | Phase::ClosingDiscard | Phase::Linger)
    }
}

/// HTTP state of a connection.
#[derive(Debug, Default)]
pub struct HttpConn {
    /// Received bytes not yet served (a partial head, a body, pipelined requests).
    pub buf: Vec<u8>,
    /// An answer is being computed (other shards are asked); input waits.
    pub busy: bool,
    /// The answer was sent: serve what is buffered on the next poll.
    pub reparse: bool,
}

/// One room a connection has joined or is joining.
#[derive(Debug)]
pub struct Membership {
    /// Room name.
    pub room: Arc<str>,
    /// Token of the join still waiting for its ack; 0 once joined.
    pub pending: u32,
    /// The room instance joined (low 32 bits of its epoch, from the ack). A leave names
    /// it, so a leave cannot touch a newer room of the same name.
    pub epoch: u32,
}

impl Membership {
    /// Whether the owner acked the join (the connection is a local member).
    pub fn joined(&self) -> bool {
        self.pending == 0
    }
}

/// State of one connection. Boxed in the table, so its address is stable and the table
/// itself grows by moving pointers only.
#[derive(Debug)]
pub struct Conn {
    generation: u32,
    /// The socket. Reads and the slow write path go through the runtime; the fast path
    /// writes to its descriptor directly (see `outbox`).
    pub stream: TcpStream,
    /// Where in its lifecycle the connection is.
    pub phase: Phase,
    /// HTTP state while `phase` is `Http` (boxed: transient, and would otherwise widen
    /// every connection past an allocator size class).
    pub http: Option<Box<HttpConn>>,
    /// Inbound WebSocket state (unfinished frame tail, fragments).
    pub reader: MessageReader,
    /// Outbound queue.
    pub out: Outbox,
    /// The connection task's waker, to resume it when something is queued.
    pub waker: Option<Waker>,
    /// User id (empty until the upgrade).
    pub user: Arc<str>,
    /// Rooms joined or joining, in join order. Inline while it holds one entry, so a
    /// connection in one room needs no heap for it. Its personal room is not here: it is
    /// implied by `user` (see `in_personal`).
    pub rooms: SmallVec<[Membership; 1]>,
    /// Peer address.
    pub peer: IpAddr,
    /// Shard clock (ms) of the last byte received.
    pub last_seen: u32,
    /// A ping was sent and nothing has arrived since.
    pub pinged: bool,
    /// Rate limiter state: theoretical arrival time of the next message (shard ms).
    pub tat: u32,
    /// Messages refused by the rate limiter so far.
    pub strikes: u8,
    /// Shard clock (ms) when the current phase began.
    pub phase_since: u32,
    /// Our write side is shut down (after a close frame was flushed).
    pub write_shut: bool,
    /// The conformance echo endpoint (`--echo-endpoint`): messages come back unchanged,
    /// and room traffic and broadcasts never reach it.
    pub echo: bool,
    /// permessage-deflate: the largest window the server may compress this client's
    /// messages with (9–15; 8 means never compress), 0 when not negotiated (see
    /// `shard::compress`). One byte, not the whole agreement: the client's half of it
    /// lives in the reader.
    pub deflate_window: u8,
    /// The socket is in the shard's readiness set ([`crate::rt::readiness`]): reads are
    /// plain non-blocking `recv`s, and the set wakes the task. Otherwise (the kernel
    /// refused the watch) reads wait through the runtime's own per-socket poll.
    watched: bool,
}

impl Conn {
    /// A freshly accepted connection, starting its handshake at shard time `now`.
    pub fn new(stream: TcpStream, peer: IpAddr, now: u32, max_message: usize) -> Conn {
        Conn {
            generation: 0,
            stream,
            phase: Phase::Http,
            http: Some(Box::default()),
            reader: MessageReader::new(crate::ws::frame::Role::Server, max_message),
            out: Outbox::default(),
            waker: None,
            user: Arc::from(""),
            rooms: SmallVec::new(),
            peer,
            last_seen: now,
            pinged: false,
            tat: now,
            strikes: 0,
            phase_since: now,
            write_shut: false,
            echo: false,
            deflate_window: 0,
            watched: false,
        }
    }

    /// Adds the socket to `set` under `id`'s token; if the kernel refuses, reads keep
    /// going through the runtime (see `watched`). Call once, after the table gave `id`.
    pub fn watch(&mut self, set: &Readiness, id: ConnId) {
        self.watched = set.watch(self.fd(), token(id)).is_ok();
    }

    /// Reads what the socket has into `buf`: `Ready(Ok(0))` at end of stream, `Pending`
    /// when there is nothing (the task is woken when that changes).
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.watched {
            crate::rt::readiness::try_read(self.fd(), buf)
        } else {
            Pin::new(&mut self.stream).poll_read(cx, buf)
        }
    }

    /// The socket descriptor, valid as long as this `Conn` exists (it owns the stream).
    fn fd<'a>(&self) -> BorrowedFd<'a> {
        // SAFETY: the descriptor belongs to `self.stream`, which lives exactly as long as
        // `self`; every caller uses the result only while it holds `&mut self`.
        unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) }
    }

    /// The connection's generation: unique on its shard for its life (ids carry it).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether bytes from the peer wait unread in the socket's receive queue: the
    /// heartbeat asks before it closes a connection for silence.
    pub fn unread_input(&self) -> bool {
        unread(self.fd())
    }

    /// Sends `frame` at once or queues it (see [`Outbox::push`]).
    pub fn push(&mut self, frame: Bytes, caps: Caps) -> Pushed {
        let fd = self.fd();
        self.out.push(fd, frame, caps)
    }

    /// Sends or queues a batch of frames (see [`Outbox::push_batch`]).
    pub fn push_batch(&mut self, frames: &[Bytes], iov: &[std::io::IoSlice<'_>], caps: Caps) -> Pushed {
        let fd = self.fd();
        self.out.push_batch(fd, frames, iov, caps)
    }

    /// Sends or queues a replay frame, exempt from the caps (see [`Outbox::push_replay`]).
    pub fn push_replay(&mut self, frame: Bytes) -> Pushed {
        let fd = self.fd();
        self.out.push_replay(fd, frame)
    }

    /// Drains the outgoing queue (see [`Outbox::poll_flush`]).
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let fd = self.fd();
        self.out.poll_flush(cx, &mut self.stream, fd)
    }

    /// Shuts down our sending direction, so the peer sees end-of-stream after our close
    /// frame while we keep reading its answer.
    pub fn shutdown_write(&mut self) {
        if !self.write_shut {
            self.write_shut = true;
            let _ = rustix::net::shutdown(self.fd(), rustix::net::Shutdown::Write);
        }
    }

    /// Wakes the connection's task (after queueing, or to make it notice a phase change).
    pub fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// Remembers the task's waker, cloning it only when it changed.
    pub fn set_waker(&mut self, waker: &Waker) {
        match &self.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => self.waker = Some(waker.clone()),
        }
    }

    /// Moves to `phase` at shard time `now`.
    pub fn enter(&mut self, phase: Phase, now: u32) {
        self.phase = phase;
        self.phase_since = now;
        if phase != Phase::Http {
            self.http = None;
        }
    }

    /// The HTTP state, while the connection speaks HTTP.
    pub fn http_mut(&mut self) -> Option<&mut HttpConn> {
        if self.phase == Phase::Http {
            self.http.as_deref_mut()
        } else {
            None
        }
    }

    /// Whether the connection is upgraded and not closing.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    /// Whether the connection takes the shared full-window compressed frames.
    pub fn takes_deflated(&self) -> bool {
        self.deflate_window >= crate::ws::deflate::MAX_WINDOW_BITS
    }

    /// Index of the membership of `room`, if any.
    pub fn membership(&self, room: &str) -> Option<usize> {
        self.rooms.iter().position(|m| &*m.room == room)
    }

    /// Whether `room` is this connection's personal room (it is a member from its
    /// `welcome` to its close, with no entry in `rooms`).
    pub fn in_personal(&self, room: &str) -> bool {
        crate::protocol::is_room_of(room, &self.user)
    }

    /// Whether the connection is a member of `room` now: its personal room, or a room
    /// whose join the owner acked.
    pub fn in_room(&self, room: &str) -> bool {
        self.in_personal(room) || self.membership(room).is_some_and(|i| self.rooms[i].joined())
    }
}

/// The table of a shard's connections.
#[derive(Debug, Default)]
pub struct Conns {
    slab: Slab<Box<Conn>>,
    next_generation: u32,
}

/// The token of connection `id` in its shard's readiness set.
pub fn token(id: ConnId) -> u64 {
    (u64::from(id.generation) << 32) | u64::from(id.index)
}

/// The connection a readiness token stands for (it may have gone since: the table's
/// generation check tells).
pub fn from_token(token: u64) -> ConnId {
    ConnId { index: token as u32, generation: (token >> 32) as u32 }
}

impl Conns {
    /// Adds a connection and returns its id.
    pub fn insert(&mut self, mut conn: Conn) -> ConnId {
        self.next_generation = self.next_generation.wrapping_add(1);
        conn.generation = self.next_generation;
        let index = self.slab.insert(Box::new(conn)) as u32;
        ConnId { index, generation: self.next_generation }
    }

    /// The connection `id`, if it still exists.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slab.get_mut(id.index as usize).filter(|c| c.generation == id.generation).map(|c| &mut **c)
    }

    /// Removes connection `id` (dropping it closes the socket).
    pub fn remove(&mut self, id: ConnId) -> Option<Box<Conn>> {
        let live = self.slab.get(id.index as usize).is_some_and(|c| c.generation == id.generation);
        live.then(|| self.slab.remove(id.index as usize))
    }

    /// Number of connections (all phases).
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether there are no connections.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every connection with its id.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut Conn)> {
        self.slab.iter_mut().map(|(i, c)| (ConnId { index: i as u32, generation: c.generation }, &mut **c))
    }
}

/// Whether bytes wait in the receive queue of socket `fd` (`FIONREAD` > 0). An error
/// (the descriptor is not a socket) counts as nothing waiting.
fn unread(fd: BorrowedFd<'_>) -> bool {
    rustix::io::ioctl_fionread(fd).is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_readiness_token_names_the_slot_and_its_generation() {
        // The readiness loop looks a reported token up in the table: a token of a closed
        // connection must not name the newer one that reuses its slot.
        for (index, generation) in [(0, 1), (7, u32::MAX), (u32::MAX, 0), (123_456, 789)] {
            let id = super::ConnId { index, generation };
            assert_eq!(super::from_token(super::token(id)), id);
        }
        let old = super::ConnId { index: 3, generation: 1 };
        let new = super::ConnId { index: 3, generation: 2 };
        assert_ne!(super::token(old), super::token(new));
    }

    #[test]
    fn unread_sees_bytes_waiting_in_the_socket_until_they_are_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut ours, _) = listener.accept().unwrap();
        assert!(!super::unread(ours.as_fd()), "nothing sent yet");
        peer.write_all(b"\x8a\x80pong").unwrap();
        // Loopback delivers at once, but wait for it rather than assume it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !super::unread(ours.as_fd()) {
            assert!(std::time::Instant::now() < deadline, "bytes never arrived");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut buf = [0u8; 6];
        ours.read_exact(&mut buf).unwrap();
        assert!(!super::unread(ours.as_fd()), "all read");
    }

    /// Per-connection memory is a product feature (docs/DESIGN-NOTES.md, "Memory per connection"): this fails when
    /// someone makes every connection bigger, so the cost is a conscious decision.
    #[test]
    fn connection_state_stays_small() {
        use std::mem::size_of;
        assert!(size_of::<crate::ws::reader::MessageReader>() <= 16);
        assert!(size_of::<super::Outbox>() <= 8);
        let own = size_of::<super::Conn>() - size_of::<crate::rt::TcpStream>();
        assert!(own <= 136, "Conn is {} bytes beyond the runtime's stream", own);
        // 256 is an allocator size class; one byte more costs 64 (mimalloc's next class).
        assert!(size_of::<super::Conn>() <= 256);
    }
}
