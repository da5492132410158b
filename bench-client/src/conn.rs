//! One client connection: non-blocking connect from a chosen source address, the HTTP
//! upgrade, `welcome` → `join` → `joined`, then deliveries until the end.
//!
//! Split in two: [`Session`] is the protocol state machine (frames in, replies out, no
//! I/O, unit-tested), [`Conn`] adds the socket and the buffers. A connection costs
//! `size_of::<Conn>()` bytes of user space plus a tail buffer only while a frame is
//! incomplete (the [`MessageReader`] frees it once it drains) and a send buffer only while
//! the kernel refuses bytes. Reads go through the engine thread's scratch buffer.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::ControlFlow;

use corecast::ws::frame::{client_frame, Role};
use corecast::ws::reader::{Message, MessageReader};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::payload::Stamp;
use crate::record::{ConnStats, StepRecord};
use crate::scan::scan;
use crate::track::SeqTrack;

/// Largest server message bench-client accepts (the server's own default cap is 64 KiB).
const MAX_MESSAGE: usize = 1 << 20;
/// Largest HTTP response head accepted during the upgrade.
const MAX_HEAD: usize = 8 * 1024;
/// `Sec-WebSocket-Key` sent by every connection, and the accept value it implies.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `connect()` in progress.
    Connecting,
    /// Part of the upgrade request still waits in the send buffer.
    SendingRequest,
    /// Upgrade request written; the response head is being received.
    AwaitingResponse,
    /// Upgraded; waiting for `welcome`.
    AwaitingWelcome,
    /// `join` sent; waiting for `joined`.
    Joining,
    /// A member of its room: deliveries are counted.
    Joined,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It never got to hold a joined room; the label says why (`ECONNREFUSED`, `handshake`…).
    Failed(&'static str),
    /// The server sent a close frame with this code (1013: we were too slow).
    Closed(u16),
    /// The socket ended without a close frame.
    Dropped,
}

/// What a connection reports to its engine thread while it handles input.
pub struct Ctx<'a> {
    /// Receive time of the bytes being handled (CLOCK_MONOTONIC ns).
    pub now_ns: u64,
    /// Step whose deliveries are being recorded; deliveries of other steps are late.
    pub open_step: u32,
    /// Run tag, to name the room in the `join`.
    pub tag: &'a str,
    /// The open step's record.
    pub record: &'a mut StepRecord,
    /// Latencies of the current progress interval (for the live p99).
    pub interval: &'a mut Histogram<u64>,
    /// Connection outcomes.
    pub stats: &'a mut ConnStats,
}

/// The protocol state of one connection, without its socket.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// Where the connection is.
    pub state: State,
    /// The room it joins.
    pub room: u32,
    /// Its `seq` stream checker.
    pub track: SeqTrack,
}

impl Session {
    /// A session that will join `room`.
    pub fn new(room: u32) -> Session {
        Session { state: State::Connecting, room, track: SeqTrack::default() }
    }

    /// Handles one message from the server; replies (masked frames) are appended to `out`.
    /// `Break` ends the connection.
    pub fn on_message(&mut self, msg: Message<'_>, ctx: &mut Ctx<'_>, out: &mut Vec<u8>) -> ControlFlow<End> {
        match msg {
            Message::Text(text) => self.on_text(text, ctx, out),
            Message::Ping(p) => {
                out.extend(client_frame(OpCode::Control(Control::Pong), true, p, mask()));
                ControlFlow::Continue(())
            }
            Message::Close(c) => {
                let code = c.map_or(1005, |(code, _)| code);
                let echo = c.map_or(1000, |(code, _)| code).to_be_bytes();
                out.extend(client_frame(OpCode::Control(Control::Close), true, &echo, mask()));
                ControlFlow::Break(End::Closed(code))
            }
            Message::Pong(_) | Message::Binary(_) => ControlFlow::Continue(()),
        }
    }

    fn on_text(&mut self, text: &[u8], ctx: &mut Ctx<'_>, out: &mut Vec<u8>) -> ControlFlow<End> {
        let Ok(f) = scan(text) else {
            *ctx.stats.errors.entry("unparsable_frame".into()).or_default() += 1;
            return ControlFlow::Continue(());
        };
        match f.kind {
            b"message" => self.on_delivery(f.seq, f.text, ctx),
            b"welcome" if self.state == State::AwaitingWelcome => {
                ctx.stats.upgraded += 1;
                let join = format!(r#"{{"type":"join","room":"{}-{}"}}"#, ctx.tag, self.room);
                out.extend(client_frame(OpCode::Data(Data::Text), true, join.as_bytes(), mask()));
                self.state = State::Joining;
            }
            b"joined" if self.state == State::Joining => match f.seq {
                Some(seq) => {
                    self.track.start(seq);
                    self.state = State::Joined;
                    ctx.stats.joined += 1;
                }
                None => return ControlFlow::Break(End::Failed("bad_joined")),
            },
            b"error" => {
                let code = String::from_utf8_lossy(f.code).into_owned();
                *ctx.stats.errors.entry(code).or_default() += 1;
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn on_delivery(&mut self, seq: Option<u64>, text: &[u8], ctx: &mut Ctx<'_>) {
        let (Some(seq), true) = (seq, self.state == State::Joined) else {
            ctx.record.counts.foreign += 1;
            return;
        };
        let seen = self.track.observe(seq);
        match Stamp::decode(text) {
            Some(stamp) if stamp.step == ctx.open_step => {
                if let Some(us) = ctx.record.delivery(&stamp, seen, ctx.now_ns) {
                    ctx.interval.saturating_record(us);
                }
            }
            Some(_) => ctx.record.counts.late += 1,
            None => ctx.record.counts.foreign += 1,
        }
    }
}

fn mask() -> [u8; 4] {
    fastrand::u32(..).to_ne_bytes()
}

/// One connection: socket, inbound reassembly, outbound remainder, protocol state.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    reader: MessageReader,
    /// Bytes the kernel has not taken yet; in `AwaitingResponse` once the request is out,
    /// the response head received so far. Empty and unallocated on an idle connection.
    buf: Vec<u8>,
    /// Protocol state.
    pub session: Session,
    /// Global connection index (see `plan`).
    pub index: u32,
}

impl Conn {
    /// Starts a non-blocking connect from `source` (port chosen by the kernel at connect
    /// time, so one source address serves many destinations) to `target`.
    pub fn connect(source: Ipv4Addr, target: SocketAddr, index: u32, room: u32) -> io::Result<Conn> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
        bind_address_no_port(&socket);
        socket.bind(&SocketAddrV4::new(source, 0).into())?;
        socket.set_nodelay(true)?;
        match socket.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let stream = TcpStream::from_std(std::net::TcpStream::from(socket));
        Ok(Conn {
            stream,
            reader: MessageReader::new(Role::Client, MAX_MESSAGE),
            buf: Vec::new(),
            session: Session::new(room),
            index,
        })
    }

    /// The socket, for (de)registration with the engine's poll.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Bytes held in buffers right now (tail + send remainder).
    pub fn buffered(&self) -> usize {
        self.reader.buffered() + self.buf.capacity()
    }

    /// The socket became writable: finish the connect (naming the guest `user()`, called
    /// only then), or flush the send remainder. With edge-triggered polling every
    /// delivery also reports "writable", so this path must cost nothing when idle.
    pub fn on_writable(&mut self, target: SocketAddr, user: impl FnOnce() -> String) -> Result<(), End> {
        if self.session.state == State::Connecting {
            return self.finish_connect(target, &user());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.session.state != State::AwaitingResponse {
            self.flush().map_err(|e| self.io_end(&e))?;
        }
        if self.session.state == State::SendingRequest && self.buf.is_empty() {
            self.session.state = State::AwaitingResponse;
        }
        Ok(())
    }

    fn finish_connect(&mut self, target: SocketAddr, user: &str) -> Result<(), End> {
        if let Ok(Some(e)) | Err(e) = self.stream.take_error() {
            return Err(End::Failed(errno_name(&e)));
        }
        match self.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(End::Failed(errno_name(&e))),
        }
        let request = format!(
            "GET /ws?name={user} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
        );
        self.send(request.as_bytes()).map_err(|e| End::Failed(errno_name(&e)))?;
        self.session.state = if self.buf.is_empty() { State::AwaitingResponse } else { State::SendingRequest };
        Ok(())
    }

    /// Sends `bytes`, keeping whatever the kernel does not take for the next writable event.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.buf.extend_from_slice(bytes);
            return self.flush();
        }
        let mut sent = 0;
        while sent < bytes.len() {
            match self.stream.write(&bytes[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.extend_from_slice(&bytes[sent..]);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut sent = 0;
        while sent < self.buf.len() {
            match self.stream.write(&self.buf[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.drain(..sent);
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// The socket became readable: read through `scratch` until the socket is drained.
    ///
    /// A short read means the receive queue was empty at that moment; data arriving later
    /// raises a new edge, so no second `read` is spent just to see `EAGAIN` (as tokio
    /// does). That halves the syscalls of a delivery.
    pub fn on_readable(&mut self, scratch: &mut [u8], ctx: &mut Ctx<'_>) -> Result<(), End> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Err(self.eof_end()),
                Ok(n) => {
                    self.ingest(&mut scratch[..n], ctx)?;
                    if n < scratch.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_end(&e)),
            }
        }
    }

    fn ingest(&mut self, data: &mut [u8], ctx: &mut Ctx<'_>) -> Result<(), End> {
        match self.session.state {
            State::Connecting | State::SendingRequest => Err(End::Failed("handshake")),
            State::AwaitingResponse => self.ingest_head(data, ctx),
            _ => self.ingest_frames(data, ctx),
        }
    }

    fn ingest_head(&mut self, data: &mut [u8], ctx: &mut Ctx<'_>) -> Result<(), End> {
        if self.buf.is_empty() {
            if let Some(end) = head_end(data) {
                check_head(&data[..end])?;
                self.session.state = State::AwaitingWelcome;
                return self.ingest_frames(&mut data[end..], ctx);
            }
        }
        self.buf.extend_from_slice(data);
        let Some(end) = head_end(&self.buf) else {
            return if self.buf.len() > MAX_HEAD { Err(End::Failed("handshake")) } else { Ok(()) };
        };
        let mut head = std::mem::take(&mut self.buf);
        check_head(&head[..end])?;
        self.session.state = State::AwaitingWelcome;
        self.ingest_frames(&mut head[end..], ctx)
    }

    fn ingest_frames(&mut self, data: &mut [u8], ctx: &mut Ctx<'_>) -> Result<(), End> {
        let mut out = Vec::new();
        let mut ended = None;
        let session = &mut self.session;
        let fed = self.reader.feed(data, |msg| match session.on_message(msg, ctx, &mut out) {
            ControlFlow::Continue(()) => ControlFlow::Continue(()),
            ControlFlow::Break(end) => {
                ended = Some(end);
                ControlFlow::Break(())
            }
        });
        if !out.is_empty() {
            // A failed reply surfaces on the next read; the ending (if any) matters more.
            let _ = self.send(&out);
        }
        if let Some(end) = ended {
            return Err(end);
        }
        fed.map_err(|_| self.failure_or(End::Dropped, "protocol"))
    }

    /// Ends the connection politely: a close frame (best effort), then the socket closes on drop.
    pub fn close(mut self, code: u16) {
        let _ = self.send(&client_frame(OpCode::Control(Control::Close), true, &code.to_be_bytes(), mask()));
    }

    fn eof_end(&self) -> End {
        self.failure_or(End::Dropped, "eof")
    }

    fn io_end(&self, e: &io::Error) -> End {
        self.failure_or(End::Dropped, errno_name(e))
    }

    fn failure_or(&self, joined: End, label: &'static str) -> End {
        if self.session.state == State::Joined {
            joined
        } else {
            End::Failed(label)
        }
    }
}

/// Asks the kernel to pick the source port at connect time (IP_BIND_ADDRESS_NO_PORT), so
/// ports are shared across destinations instead of reserved at bind().
fn bind_address_no_port(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value pointer and length. Failure only means ports are
    // reserved at bind(), which still works for one destination.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Index just past the blank line ending an HTTP head.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The upgrade succeeded: status 101 and the accept key matching our key.
fn check_head(head: &[u8]) -> Result<(), End> {
    let ok = head.starts_with(b"HTTP/1.1 101") && head.windows(WS_ACCEPT.len()).any(|w| w == WS_ACCEPT);
    if ok {
        Ok(())
    } else {
        Err(End::Failed("handshake"))
    }
}

/// A short stable label for a socket error, for the failure counters.
pub fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ENFILE) => "ENFILE",
        Some(libc::ENOBUFS) => "ENOBUFS",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::new_hist;
    use corecast::ws::frame::text_frame;

    struct Harness {
        record: StepRecord,
        interval: Histogram<u64>,
        stats: ConnStats,
    }

    impl Harness {
        fn new() -> Harness {
            Harness { record: StepRecord::default(), interval: new_hist(), stats: ConnStats::default() }
        }

        /// Feeds server frames (as the server would send them) to `s`.
        fn feed(&mut self, s: &mut Session, frames: &[&str]) -> (Vec<u8>, Option<End>) {
            let mut ctx = Ctx {
                now_ns: 5_000_000,
                open_step: 0,
                tag: "t",
                record: &mut self.record,
                interval: &mut self.interval,
                stats: &mut self.stats,
            };
            let mut reader = MessageReader::new(Role::Client, MAX_MESSAGE);
            let mut wire: Vec<u8> = frames.iter().flat_map(|f| text_frame(f.as_bytes()).to_vec()).collect();
            let mut out = Vec::new();
            let mut end = None;
            reader
                .feed(&mut wire, |m| match s.on_message(m, &mut ctx, &mut out) {
                    ControlFlow::Continue(()) => ControlFlow::Continue(()),
                    ControlFlow::Break(e) => {
                        end = Some(e);
                        ControlFlow::Break(())
                    }
                })
                .unwrap();
            (out, end)
        }
    }

    fn delivery(seq: u64) -> String {
        format!(
            r#"{{"type":"message","room":"t-3","seq":{seq},"user":"u","text":"b:0:1:{seq}:1000000:2000000:xx","ts":1}}"#
        )
    }

    #[test]
    fn welcome_then_joined_then_deliveries() {
        let mut h = Harness::new();
        let mut s = Session::new(3);
        s.state = State::AwaitingWelcome;
        let (out, end) = h.feed(&mut s, &[r#"{"type":"welcome","user":"u","conn":"c","shard":0}"#]);
        assert_eq!(end, None);
        assert_eq!(s.state, State::Joining);
        let mut server = MessageReader::new(Role::Server, 1024);
        let mut join = String::new();
        server
            .feed(&mut out.clone(), |m| {
                if let Message::Text(t) = m {
                    join = String::from_utf8(t.to_vec()).unwrap();
                }
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(join, r#"{"type":"join","room":"t-3"}"#);
        h.feed(&mut s, &[r#"{"type":"joined","room":"t-3","members":1,"seq":41,"epoch":"e"}"#]);
        assert_eq!(s.state, State::Joined);
        h.feed(&mut s, &[&delivery(42), &delivery(43), &delivery(43), &delivery(45)]);
        let c = h.record.counts;
        assert_eq!((c.received, c.duplicates, c.gaps, c.gap_messages), (4, 1, 1, 1));
        assert_eq!(h.record.corrected.len(), 3);
        assert_eq!(h.interval.len(), 3);
        assert_eq!((h.stats.upgraded, h.stats.joined), (1, 1));
    }

    #[test]
    fn server_close_is_echoed_and_reported_with_its_code() {
        let mut h = Harness::new();
        let mut s = Session::new(0);
        s.state = State::Joined;
        let mut reader = MessageReader::new(Role::Client, 1024);
        let mut ctx = Ctx {
            now_ns: 0,
            open_step: 0,
            tag: "t",
            record: &mut h.record,
            interval: &mut h.interval,
            stats: &mut h.stats,
        };
        let mut wire = corecast::ws::frame::close_frame(1013, "slow").to_vec();
        let mut out = Vec::new();
        let mut end = None;
        reader
            .feed(&mut wire, |m| {
                if let ControlFlow::Break(e) = s.on_message(m, &mut ctx, &mut out) {
                    end = Some(e);
                }
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(end, Some(End::Closed(1013)));
        assert!(!out.is_empty(), "close is echoed");
    }

    #[test]
    fn errors_and_foreign_messages_are_counted() {
        let mut h = Harness::new();
        let mut s = Session::new(0);
        s.state = State::Joined;
        s.track.start(0);
        h.feed(&mut s, &[r#"{"type":"error","code":"not_member","message":"x"}"#, "not json"]);
        h.feed(&mut s, &[r#"{"type":"message","room":"t-0","seq":1,"user":"x","text":"hello","ts":1}"#]);
        assert_eq!(h.stats.errors.get("not_member"), Some(&1));
        assert_eq!(h.stats.errors.get("unparsable_frame"), Some(&1));
        assert_eq!(h.record.counts.foreign, 1);
    }

    #[test]
    fn the_upgrade_response_is_checked() {
        assert!(check_head(
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )
        .is_ok());
        assert!(check_head(b"HTTP/1.1 400 Bad Request\r\n\r\n").is_err());
        assert_eq!(head_end(b"HTTP/1.1 101\r\n\r\nrest"), Some(16));
    }
}
