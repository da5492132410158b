//! One client connection: non-blocking connect from a chosen source address, the HTTP
//! upgrade, `welcome` → `join` → `joined`, then deliveries until the end.
//!
//! Split in two: [`Session`] is the protocol state machine (frames in, replies out, no
//! I/O, unit-tested), [`Conn`] adds the socket and the buffers. A connection that ends
//! unexpectedly keeps its [`Session`] and gets a new [`Conn`] around it
//! ([`Conn::resume`]): its rejoin asks for recovery (`join` with `since`), and the
//! replayed messages (which arrive before `joined`) go through the same [`SeqTrack`], so
//! the stream is checked across reconnections exactly as if it had never broken. A connection costs
//! `size_of::<Conn>()` bytes of user space plus a tail buffer only while a frame is
//! incomplete (the [`MessageReader`] frees it once it drains) and a send buffer only while
//! the kernel refuses bytes. Reads go through the engine thread's scratch buffer.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::ControlFlow;

use corecast_wire::ws::frame::{client_frame, Role};
use corecast_wire::ws::reader::{Inflate, Message, MessageReader};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::epoch::{Epochs, NO_EPOCH};
use crate::payload::Stamp;
use crate::record::{ConnStats, Recovery, StepRecord};
use crate::scan::scan;
use crate::sys::write_some;
use crate::track::{Seen, SeqTrack};
use corecast_wire::http::head_end;

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
    /// `join` sent; waiting for `joined` (a rejoin receives its replay meanwhile).
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
    /// bench-client closed it on purpose (`--churn`), without a close frame.
    Churned,
}

impl End {
    /// Whether a connection that held its room should reconnect (with recovery) after
    /// this end: after a drop, a churn, a failed rejoin attempt, or a server close that
    /// means "not now" (1001 going away, 1006, 1011 internal error, 1012 restart, 1013 try
    /// again later / slow consumer, 1014). Not after a close that says the client did
    /// something wrong (1002, 1003, 1007, 1008, 1009…) or a normal 1000: retrying those
    /// would only repeat the mistake.
    pub fn retryable(self) -> bool {
        match self {
            End::Failed(_) | End::Dropped | End::Churned => true,
            End::Closed(code) => matches!(code, 1001 | 1006 | 1011 | 1012 | 1013 | 1014),
        }
    }
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
    /// The thread's room epochs (sessions keep a generation, not the text).
    pub epochs: &'a mut Epochs,
    /// `--acks`: the connection's home (the index of the `--target` it was first sent
    /// to), under which its deliveries are audited; `None` without `--acks`.
    pub home: Option<u16>,
}

impl Ctx<'_> {
    /// Counts a recovery event both in the open step's record and in the run's totals.
    pub fn note(&mut self, count: impl Fn(&mut Recovery)) {
        count(&mut self.record.recovery);
        count(&mut self.stats.recovery);
    }
}

/// The protocol state of one connection, without its socket. It outlives the socket
/// when the connection reconnects: the track and the epoch are what recovery resumes from.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// Where the connection is.
    pub state: State,
    /// Generation of the epoch of its last `joined` in the thread's [`Epochs`] (room
    /// `room`); [`NO_EPOCH`] before the first.
    pub epoch: u16,
    /// The room it joins.
    pub room: u32,
    /// Its `seq` stream checker; started at the first `joined` and kept across rejoins.
    pub track: SeqTrack,
}

impl Session {
    /// A session that will join `room`.
    pub fn new(room: u32) -> Session {
        Session { state: State::Connecting, epoch: NO_EPOCH, room, track: SeqTrack::default() }
    }

    /// The same session on a new socket: it will rejoin its room asking to recover
    /// everything after [`SeqTrack::last`].
    pub fn resumed(self) -> Session {
        Session { state: State::Connecting, ..self }
    }

    /// It has held its room before, so its `join` is a rejoin with `since`.
    pub fn rejoining(&self) -> bool {
        self.track.started()
    }

    /// Room deliveries are checked: a member, or a rejoin receiving its replay.
    fn receiving(&self) -> bool {
        self.state == State::Joined || (self.state == State::Joining && self.rejoining())
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
                if !self.rejoining() {
                    ctx.stats.upgraded += 1;
                }
                let join = self.join_json(ctx);
                out.extend(client_frame(OpCode::Data(Data::Text), true, join.as_bytes(), mask()));
                self.state = State::Joining;
            }
            b"joined" if self.state == State::Joining => {
                let Some(seq) = f.seq else { return ControlFlow::Break(End::Failed("bad_joined")) };
                let epoch = ctx.epochs.intern(self.room, f.epoch);
                if self.rejoining() {
                    self.on_rejoined(seq, epoch, f.recovered, ctx);
                } else {
                    self.track.start(seq);
                    ctx.stats.joined += 1;
                }
                self.epoch = epoch;
                self.state = State::Joined;
            }
            b"error" => {
                let code = String::from_utf8_lossy(f.code).into_owned();
                *ctx.stats.errors.entry(code).or_default() += 1;
            }
            b"ack" => match crate::audit::parse_ref(f.reference) {
                Some((step, key)) if step == ctx.open_step => ctx.record.audit.acked(key),
                // An earlier step's ack, after its record was closed, or not ours.
                _ => ctx.record.audit.stray_ack(),
            },
            _ => {}
        }
        ControlFlow::Continue(())
    }

    /// The `join` to send after `welcome`: a first join, or a rejoin asking to recover
    /// everything after the last `seq` accounted for, in the epoch it was given.
    fn join_json(&self, ctx: &Ctx<'_>) -> String {
        let room = format!("{}-{}", ctx.tag, self.room);
        if !self.rejoining() {
            return format!(r#"{{"type":"join","room":"{room}"}}"#);
        }
        match ctx.epochs.get(self.room, self.epoch) {
            Some(epoch) => format!(
                r#"{{"type":"join","room":"{room}","since":{{"epoch":"{epoch}","seq":{}}}}}"#,
                self.track.last()
            ),
            // No epoch to match (unreachable with corecast): a bare seq would match any
            // stream, so ask for no recovery; `joined` then counts as not recovered.
            None => format!(r#"{{"type":"join","room":"{room}"}}"#),
        }
    }

    /// A rejoin's `joined`: the replay (already fed to the track) either covered
    /// everything up to `seq` (`recovered: true` in the same epoch), or the range from
    /// the last `seq` seen to `seq` is lost for good and counted as unrecoverable.
    fn on_rejoined(&mut self, seq: u64, epoch: u16, recovered: Option<bool>, ctx: &mut Ctx<'_>) {
        let same_stream = epoch != NO_EPOCH && epoch == self.epoch;
        if recovered == Some(true) && same_stream {
            ctx.note(|r| r.recovered += 1);
            // Nothing to skip when the server kept its promise; anything else is a gap.
            let skipped = self.track.skip_to(seq);
            if skipped > 0 {
                ctx.note(|r| r.unrecoverable += skipped);
            }
            return;
        }
        // Same stream: what lies between the last seq seen and `seq` was missed. A new
        // stream restarted from 0: its first `seq` messages were missed (what the old
        // stream sent after our last seq cannot be known here; the expected-delivery
        // count still catches it as lost).
        let skipped = if same_stream { seq.saturating_sub(self.track.last()) } else { seq };
        ctx.note(|r| {
            r.not_recovered += 1;
            r.unrecoverable += skipped;
        });
        self.track.start(seq);
    }

    fn on_delivery(&mut self, seq: Option<u64>, text: &[u8], ctx: &mut Ctx<'_>) {
        let (Some(seq), true) = (seq, self.receiving()) else {
            ctx.record.counts.foreign += 1;
            return;
        };
        if self.state == State::Joining {
            ctx.note(|r| r.replayed += 1);
        }
        let seen = self.track.observe(seq);
        match Stamp::decode(text) {
            Some(stamp) if stamp.step == ctx.open_step => {
                if let (Some(home), false) = (ctx.home, seen == Seen::Duplicate) {
                    ctx.record.audit.delivered((stamp.publisher, stamp.n), home);
                }
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
    /// Monotonic second ([`crate::sys::secs`] of [`crate::sys::now_ns`]) of the last ping from the server on this
    /// socket, 0 before the first: a heartbeat close reports its age (see
    /// [`crate::record::PingAges`]).
    pub last_ping_s: u32,
}

impl Conn {
    /// Starts a non-blocking connect from `source` (port chosen by the kernel at connect
    /// time, so one source address serves many destinations) to `target`.
    pub fn connect(source: Ipv4Addr, target: SocketAddr, index: u32, room: u32) -> io::Result<Conn> {
        Conn::resume(source, target, index, Session::new(room))
    }

    /// Like [`connect`](Self::connect), for a connection that held its room before: the
    /// new socket carries `session` on (its `join` will ask for recovery).
    pub fn resume(source: Ipv4Addr, target: SocketAddr, index: u32, session: Session) -> io::Result<Conn> {
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
            session: session.resumed(),
            index,
            last_ping_s: 0,
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

    /// The socket became writable: finish the connect (sending the upgrade request to the
    /// target and guest name that `request()` gives, called only then), or flush the send
    /// remainder. With edge-triggered polling every delivery also reports "writable", so
    /// this path must cost nothing when idle.
    pub fn on_writable(&mut self, request: impl FnOnce() -> (SocketAddr, String, bool)) -> Result<(), End> {
        if self.session.state == State::Connecting {
            let (target, user, deflate) = request();
            return self.finish_connect(target, &user, deflate);
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

    fn finish_connect(&mut self, target: SocketAddr, user: &str, deflate: bool) -> Result<(), End> {
        if let Ok(Some(e)) | Err(e) = self.stream.take_error() {
            return Err(End::Failed(errno_name(&e)));
        }
        match self.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(End::Failed(errno_name(&e))),
        }
        // The same offer as a browser's, plus no context takeover for our own (few)
        // messages, so the server keeps no inflate state for us.
        let ext = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET /ws?name={user} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n{ext}\r\n"
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
        let sent = write_some(&mut self.stream, bytes)?;
        self.buf.extend_from_slice(&bytes[sent..]);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let sent = write_some(&mut self.stream, &self.buf)?;
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
    /// does). That halves the syscalls of a delivery. Except when the event said the peer
    /// closed (`read_closed`, EPOLLRDHUP): its FIN came with the last data and raises no
    /// edge of its own, so reading goes on until it is seen.
    pub fn on_readable(&mut self, scratch: &mut [u8], ctx: &mut Ctx<'_>, read_closed: bool) -> Result<(), End> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Err(self.eof_end()),
                Ok(n) => {
                    ctx.record.counts.wire_bytes += n as u64;
                    self.ingest(&mut scratch[..n], ctx)?;
                    if n < scratch.len() && !read_closed {
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
                self.accept_head(&data[..end])?;
                self.session.state = State::AwaitingWelcome;
                return self.ingest_frames(&mut data[end..], ctx);
            }
        }
        self.buf.extend_from_slice(data);
        let Some(end) = head_end(&self.buf) else {
            return if self.buf.len() > MAX_HEAD { Err(End::Failed("handshake")) } else { Ok(()) };
        };
        let mut head = std::mem::take(&mut self.buf);
        self.accept_head(&head[..end])?;
        self.session.state = State::AwaitingWelcome;
        self.ingest_frames(&mut head[end..], ctx)
    }

    fn ingest_frames(&mut self, data: &mut [u8], ctx: &mut Ctx<'_>) -> Result<(), End> {
        let mut out = Vec::new();
        let mut ended = None;
        let session = &mut self.session;
        let mut pinged = false;
        let fed = self.reader.feed(data, |msg| {
            pinged |= matches!(msg, Message::Ping(_));
            match session.on_message(msg, ctx, &mut out) {
                ControlFlow::Continue(()) => ControlFlow::Continue(()),
                ControlFlow::Break(end) => {
                    ended = Some(end);
                    ControlFlow::Break(())
                }
            }
        });
        if pinged {
            self.last_ping_s = crate::sys::secs(ctx.now_ns);
        }
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

impl Conn {
    /// Checks the upgrade response and, when the server accepted permessage-deflate,
    /// inflates its compressed messages from now on (it never takes over context).
    fn accept_head(&mut self, head: &[u8]) -> Result<(), End> {
        check_head(head)?;
        if let Some(no_context) = deflate_accepted(head) {
            self.reader.set_inflate(if no_context { Inflate::NoContext } else { Inflate::Context });
        }
        Ok(())
    }
}

/// Whether the response head accepts permessage-deflate: `Some(server_no_context_takeover)`.
fn deflate_accepted(head: &[u8]) -> Option<bool> {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let line = text.lines().find(|l| l.starts_with("sec-websocket-extensions:") && l.contains("permessage-deflate"))?;
    Some(line.contains("server_no_context_takeover"))
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
    use corecast_wire::ws::frame::text_frame;

    struct Harness {
        record: StepRecord,
        interval: Histogram<u64>,
        stats: ConnStats,
        epochs: Epochs,
        home: Option<u16>,
    }

    impl Harness {
        fn new() -> Harness {
            Harness {
                record: StepRecord::default(),
                interval: new_hist(),
                stats: ConnStats::default(),
                epochs: Epochs::default(),
                home: None,
            }
        }

        /// A context over the harness's records, at receive time `now_ns`.
        fn ctx(&mut self, now_ns: u64) -> Ctx<'_> {
            Ctx {
                now_ns,
                open_step: 0,
                tag: "t",
                record: &mut self.record,
                interval: &mut self.interval,
                stats: &mut self.stats,
                epochs: &mut self.epochs,
                home: self.home,
            }
        }

        /// Feeds server frames (as the server would send them) to `s`.
        fn feed(&mut self, s: &mut Session, frames: &[&str]) -> (Vec<u8>, Option<End>) {
            let mut ctx = self.ctx(5_000_000);
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
        let join = sent_texts(&out).pop().unwrap_or_default();
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

    /// The text frames in `out` (masked client frames), decoded as the server would.
    fn sent_texts(out: &[u8]) -> Vec<String> {
        let mut server = MessageReader::new(Role::Server, 4096);
        let mut texts = Vec::new();
        server
            .feed(&mut out.to_vec(), |m| {
                if let Message::Text(t) = m {
                    texts.push(String::from_utf8(t.to_vec()).unwrap());
                }
                ControlFlow::Continue(())
            })
            .unwrap();
        texts
    }

    /// A session that joined room 3 at `seq` in `epoch`, through the real frames.
    fn joined_session(h: &mut Harness, seq: u64, epoch: &str) -> Session {
        let mut s = Session::new(3);
        s.state = State::AwaitingWelcome;
        h.feed(&mut s, &[r#"{"type":"welcome","user":"u","conn":"c","shard":0}"#]);
        let joined = format!(r#"{{"type":"joined","room":"t-3","members":1,"seq":{seq},"epoch":"{epoch}"}}"#);
        h.feed(&mut s, &[&joined]);
        assert_eq!(s.state, State::Joined);
        s
    }

    /// Puts `s` on a "new socket" up to its `welcome`; returns the `join` it sent.
    fn rejoin(h: &mut Harness, s: &mut Session) -> String {
        *s = s.resumed();
        assert_eq!(s.state, State::Connecting);
        s.state = State::AwaitingWelcome;
        let (out, end) = h.feed(s, &[r#"{"type":"welcome","user":"u","conn":"c2","shard":1}"#]);
        assert_eq!((end, s.state), (None, State::Joining));
        sent_texts(&out).pop().unwrap()
    }

    #[test]
    fn a_recovered_rejoin_fills_the_gap_with_no_loss_and_no_duplicate() {
        let mut h = Harness::new();
        let mut s = joined_session(&mut h, 41, "a3f0c2d4e5b61789");
        h.feed(&mut s, &[&delivery(42), &delivery(43)]);
        let join = rejoin(&mut h, &mut s);
        assert_eq!(join, r#"{"type":"join","room":"t-3","since":{"epoch":"a3f0c2d4e5b61789","seq":43}}"#);
        // PROTOCOL.md: the replay first, then `joined` (seq = the last replayed), then live.
        h.feed(
            &mut s,
            &[
                &delivery(44),
                &delivery(45),
                r#"{"type":"joined","room":"t-3","members":1,"seq":45,"epoch":"a3f0c2d4e5b61789","recovered":true}"#,
                &delivery(46),
            ],
        );
        assert_eq!(s.state, State::Joined);
        let c = h.record.counts;
        assert_eq!((c.received, c.duplicates, c.reordered, c.gaps, c.foreign), (5, 0, 0, 0, 0), "{c:?}");
        let r = h.record.recovery;
        assert_eq!((r.recovered, r.not_recovered, r.replayed, r.unrecoverable), (1, 0, 2, 0), "{r:?}");
        assert_eq!(h.stats.recovery, r, "run totals match the step's");
        assert_eq!(h.record.corrected.len(), 5, "replayed deliveries are timed too");
        assert_eq!((h.stats.upgraded, h.stats.joined), (1, 1), "a rejoin is not a new connection");
        assert_eq!(s.track.last(), 46);
    }

    #[test]
    fn a_replay_that_repeats_a_seen_message_is_a_duplicate() {
        let mut h = Harness::new();
        let mut s = joined_session(&mut h, 0, "e");
        h.feed(&mut s, &[&delivery(1), &delivery(2)]);
        rejoin(&mut h, &mut s);
        h.feed(
            &mut s,
            &[&delivery(2), &delivery(3), r#"{"type":"joined","room":"t-3","seq":3,"epoch":"e","recovered":true}"#],
        );
        let c = h.record.counts;
        assert_eq!((c.received, c.duplicates, c.gaps), (4, 1, 0));
        assert_eq!(h.record.recovery.replayed, 2);
    }

    #[test]
    fn a_short_history_is_counted_as_not_recovered_and_its_range_as_unrecoverable() {
        let mut h = Harness::new();
        let mut s = joined_session(&mut h, 41, "e1");
        h.feed(&mut s, &[&delivery(42)]);
        rejoin(&mut h, &mut s);
        h.feed(&mut s, &[r#"{"type":"joined","room":"t-3","seq":50,"epoch":"e1","recovered":false}"#, &delivery(51)]);
        let r = h.record.recovery;
        assert_eq!((r.recovered, r.not_recovered, r.unrecoverable, r.replayed), (0, 1, 8, 0), "43..=50 missed");
        assert!(!r.clean());
        let c = h.record.counts;
        assert_eq!((c.received, c.gaps, c.duplicates, c.reordered), (2, 0, 0, 0), "the new stream is in order");
    }

    #[test]
    fn a_new_epoch_restarts_the_stream_and_the_next_rejoin_uses_it() {
        let mut h = Harness::new();
        let mut s = joined_session(&mut h, 41, "old");
        h.feed(&mut s, &[&delivery(42)]);
        rejoin(&mut h, &mut s);
        h.feed(&mut s, &[r#"{"type":"joined","room":"t-3","seq":3,"epoch":"new","recovered":false}"#, &delivery(4)]);
        let r = h.record.recovery;
        assert_eq!((r.not_recovered, r.unrecoverable), (1, 3), "seq 1..=3 of the new stream were missed");
        assert_eq!(h.record.counts.gaps, 0);
        let join = rejoin(&mut h, &mut s);
        assert_eq!(join, r#"{"type":"join","room":"t-3","since":{"epoch":"new","seq":4}}"#);
    }

    #[test]
    fn recovery_state_costs_no_memory_per_connection() {
        // The epoch generation (2 bytes) sits in padding the session already had: the
        // documented per-connection figure (README, `Conn` 72 B in release) must not grow.
        assert_eq!(std::mem::size_of::<Session>(), 24);
    }

    #[test]
    fn conn_is_the_documented_size() {
        // README, "bench-client memory per connection": 80 B in a release build (72 B
        // before the ping stamp); debug builds lay the reader out wider.
        let want = if cfg!(debug_assertions) { 88 } else { 80 };
        assert_eq!(std::mem::size_of::<Conn>(), want);
    }

    #[test]
    fn ends_that_mean_try_again_are_retried() {
        assert!(End::Dropped.retryable() && End::Churned.retryable() && End::Failed("eof").retryable());
        for code in [1001, 1012, 1013] {
            assert!(End::Closed(code).retryable(), "{code}");
        }
        for code in [1000, 1002, 1003, 1007, 1008, 1009] {
            assert!(!End::Closed(code).retryable(), "{code}");
        }
    }

    #[test]
    fn server_close_is_echoed_and_reported_with_its_code() {
        let mut h = Harness::new();
        let mut s = Session::new(0);
        s.state = State::Joined;
        let mut reader = MessageReader::new(Role::Client, 1024);
        let mut ctx = h.ctx(0);
        let mut wire = corecast_wire::ws::frame::close_frame(1013, "slow").to_vec();
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
    fn with_acks_the_ack_and_each_unique_delivery_are_audited_under_the_home() {
        let mut h = Harness::new();
        h.home = Some(7);
        let mut s = joined_session(&mut h, 0, "e");
        // delivery(seq) carries publisher 1, message n = seq.
        h.record.audit.sent((1, 1), 3);
        h.record.audit.member(3, 7, 1);
        h.feed(&mut s, &[r#"{"type":"ack","ref":"0.1.1","room":"t-3","seq":1}"#, &delivery(1), &delivery(1)]);
        h.feed(&mut s, &[r#"{"type":"ack","ref":"5.1.1","room":"t-3","seq":1}"#]);
        let r = h.record.audit.result(|_| 7);
        assert_eq!((r.acked, r.expected, r.delivered, r.lost, r.excess), (1, 1, 1, 0, 0), "{r:?}");
        assert_eq!(r.stray_acks, 1, "another step's ack is stray");
        assert_eq!(r.homes.iter().map(|h| h.home).collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn a_deflate_answer_is_recognized() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n";
        assert_eq!(deflate_accepted(head), Some(true));
        assert_eq!(deflate_accepted(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), None);
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

    #[test]
    fn regression_a_fin_that_came_with_the_last_bytes_ends_the_connection() {
        // A network blip cut a connection just after the server's last bytes: data and
        // FIN were both queued when the readable event was read, the read of the data
        // came back short, and the FIN raised no edge of its own. The connection looked
        // alive, was never reconnected, and its missed deliveries counted as lost.
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conn = Conn::connect(Ipv4Addr::LOCALHOST, addr, 0, 0).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        // The handshake request goes out once the connect completes (it has: accepted).
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            conn.on_writable(|| (addr, "u".to_owned(), false)).unwrap();
            let mut buf = [0u8; 1024];
            server.set_read_timeout(Some(std::time::Duration::from_millis(10))).unwrap();
            if let Ok(n) = server.read(&mut buf) {
                request.extend_from_slice(&buf[..n]);
            }
        }
        // Part of an answer, then the FIN; wait (bounded) until both are queued here.
        server.write_all(b"HTTP/1.1 101 Switching").unwrap();
        server.shutdown(std::net::Shutdown::Write).unwrap();
        let mut pfd = libc::pollfd { fd: conn.stream_mut().as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 30_000) };
        assert!(ready == 1 && pfd.revents & libc::POLLRDHUP != 0, "the FIN arrived");
        let mut h = Harness::new();
        let mut scratch = vec![0u8; 64 * 1024];
        let end = conn.on_readable(&mut scratch, &mut h.ctx(0), true);
        assert_eq!(end, Err(End::Failed("eof")), "one readable event sees the data and the FIN");
    }
}
