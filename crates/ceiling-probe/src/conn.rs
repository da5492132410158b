//! One ceiling-probe connection: its socket, where it is in the upgrade, its inbound frame
//! reassembly, and its outbound backlog.
//!
//! Writing is the hot path. A connection with nothing queued writes straight from the
//! caller's buffer (usually a room's batch of frames, shared by every member); only what
//! the kernel refuses is kept, as reference-counted chunks of that same batch, so a backlog
//! shared by thousands of members costs its bytes once. The backlog is flushed with one
//! `writev` per writable edge.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::rc::Rc;

use corecast_wire::ws::frame::Role;
use corecast_wire::ws::reader::MessageReader;
use mio::net::TcpStream;

use crate::sys::write_some;

/// Largest client message the probe accepts.
const MAX_MESSAGE: usize = 64 * 1024;
/// Chunks handed to one `writev`.
const IOV_BATCH: usize = 64;
/// Backlog (bytes referenced) above which a connection is dropped as a slow consumer.
pub const MAX_BACKLOG: usize = 64 << 20;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Receiving the HTTP request head.
    Http,
    /// Upgraded: WebSocket frames both ways.
    Open,
    /// To be closed at the end of the loop iteration (error, EOF, close frame, HTTP answered).
    Dead,
}

/// A piece of the backlog: a shared buffer and how much of it was already written.
#[derive(Debug)]
struct Chunk {
    buf: Rc<[u8]>,
    off: usize,
}

/// Bytes to write to many connections, with a shared copy made only if some connection
/// cannot take them all at once.
#[derive(Debug, Default)]
pub struct Shared {
    /// The bytes (a room's frames of this loop iteration, in `seq` order).
    pub bytes: Vec<u8>,
    rc: Option<Rc<[u8]>>,
}

impl Shared {
    /// The reference-counted copy, made on first use.
    fn rc(&mut self) -> Rc<[u8]> {
        let bytes = &self.bytes;
        self.rc.get_or_insert_with(|| Rc::from(&bytes[..])).clone()
    }

    /// Empties it for the next iteration (keeping the allocation of `bytes`).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.rc = None;
    }
}

/// One connection. Idle and upgraded, it holds no heap buffer besides its name and its
/// room list.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Where it is.
    pub phase: Phase,
    /// The request head received so far (only while it is incomplete).
    pub head: Vec<u8>,
    /// Inbound reassembly after the upgrade.
    pub reader: MessageReader,
    out: VecDeque<Chunk>,
    out_bytes: usize,
    /// Local indices of the rooms it is a member of.
    pub rooms: Vec<u32>,
    /// Its user name (from `?name=`), the `user` of its messages.
    pub user: Rc<[u8]>,
    /// Unique per thread: tells a join answer for this connection from one for a
    /// connection that reused its slab slot.
    pub id: u64,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(stream: TcpStream, id: u64) -> Conn {
        Conn {
            stream,
            phase: Phase::Http,
            head: Vec::new(),
            reader: MessageReader::new(Role::Server, MAX_MESSAGE),
            out: VecDeque::new(),
            out_bytes: 0,
            rooms: Vec::new(),
            user: Rc::from(&b"guest"[..]),
            id,
        }
    }

    /// The socket, for (de)registration.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// One `read` into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    /// Writes bytes that only this connection gets (a handshake answer, `joined`); what the
    /// kernel refuses is queued as a copy.
    pub fn send_own(&mut self, bytes: &[u8]) {
        if let Some(sent) = self.write_now(bytes) {
            if sent < bytes.len() {
                self.queue(Rc::from(&bytes[sent..]), 0);
            }
        }
    }

    /// Writes `shared.bytes`, or queues them (by reference) behind an existing backlog.
    pub fn send_shared(&mut self, shared: &mut Shared) {
        if let Some(sent) = self.write_now(&shared.bytes) {
            if sent < shared.bytes.len() {
                self.queue(shared.rc(), sent);
            }
        }
    }

    /// Writes what the socket takes of `bytes` unless a backlog must go first (0 then);
    /// `None` when the socket failed (the connection is then dead).
    fn write_now(&mut self, bytes: &[u8]) -> Option<usize> {
        if !self.out.is_empty() {
            return Some(0);
        }
        match write_some(&mut self.stream, bytes) {
            Ok(sent) => Some(sent),
            Err(_) => {
                self.phase = Phase::Dead;
                None
            }
        }
    }

    fn queue(&mut self, buf: Rc<[u8]>, off: usize) {
        self.out_bytes += buf.len() - off;
        self.out.push_back(Chunk { buf, off });
        if self.out_bytes > MAX_BACKLOG {
            self.phase = Phase::Dead;
        }
    }

    /// The socket became writable: write the backlog, one `writev` of up to 64 chunks at a time.
    pub fn flush(&mut self) {
        while !self.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); IOV_BATCH];
            let mut k = 0;
            for (slot, c) in iov.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(&c.buf[c.off..]);
                k += 1;
            }
            let mut n = match self.stream.write_vectored(&iov[..k]) {
                Ok(0) => return self.phase = Phase::Dead,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.phase = Phase::Dead,
            };
            self.out_bytes -= n;
            while n > 0 {
                let Some(front) = self.out.front_mut() else { break };
                let left = front.buf.len() - front.off;
                if n >= left {
                    n -= left;
                    self.out.pop_front();
                } else {
                    front.off += n;
                    n = 0;
                }
            }
        }
        if self.out.capacity() > 16 {
            self.out = VecDeque::new();
        }
    }
}
