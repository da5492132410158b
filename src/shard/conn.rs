//! One connection's task: handshake, reading and dispatching client messages, flushing
//! the write queue, and the close handshake.
//!
//! The task is a single `poll_fn` over the connection's state in the shard table, so it
//! holds nothing across polls but an id (a small future per connection), and one task
//! drives both directions: input readiness comes from the shard's epoll set
//! (`rt::readiness`, see `readiness_loop`; with `--read-wait poll`, from the runtime's
//! poll per socket) and output readiness from the runtime's poll on a full socket, both
//! waking this task.
//!
//! While the task dispatches what it read, the table is borrowed: the handlers are
//! methods of [`Services`] and get the connection as `&mut Conn` (see the module doc of
//! `shard`). The checks on client messages are pure functions at the end of this file.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::backend::{JoinNext, AWAITING_BACKEND};
use super::conns::{Conn, ConnId, Conns, Membership, Phase};
use super::msg::{ConnRef, DeleteReq, HistoryReq, JoinKind, JoinReq, PresenceReq, Publish, Requester, ShardMsg, Since};
use super::{Services, Shard};
use crate::auth::grants::{self, Pattern};
use crate::auth::{password, Identity};
use crate::metrics::inc;
use crate::protocol::client::{self, ClientMsg, HISTORY_PAGE, HISTORY_PAGE_MAX, PRESENCE_PAGE};
use crate::protocol::{self, server, ClientError, ErrorCode};
use crate::room::request::{Extra, Sender};
use crate::rt;
use crate::ws::reader::{Message, MessageReader};
use crate::ws::{close, frame};

/// Reads per poll before the task yields to others (fairness under floods).
const READS_PER_POLL: usize = 4;

impl Shard {
    /// Takes ownership of an accepted socket and starts its task.
    pub(super) fn adopt(self: &Rc<Self>, stream: rt::TcpStream) {
        let peer = stream.peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        // Each send is one complete frame: never hold it back for coalescing.
        let _ = stream.set_nodelay(true);
        let conn = Conn::new(stream, peer, self.now(), self.cfg.max_message_bytes);
        let id = {
            let mut conns = self.conns.borrow_mut();
            let id = conns.insert(conn);
            if let (Some(set), Some(conn)) = (&self.readiness, conns.get_mut(id)) {
                conn.watch(set, id);
            }
            id
        };
        inc(&self.stats.connections_total);
        let shard = self.clone();
        rt::spawn(async move {
            std::future::poll_fn(|cx| poll_conn(&shard.svc, &shard.conns, id, cx)).await;
            shard.finish(id);
        });
    }

    /// Cleans up after the task ended: leaves every room, closes the socket.
    fn finish(&self, id: ConnId) {
        // Closing the socket (dropping `conn`) takes it out of the readiness set; a report
        // already taken from the set names this connection's generation, which the table
        // no longer has.
        let Some(conn) = self.conns.borrow_mut().remove(id) else { return };
        self.sessions.borrow_mut().remove(&id);
        self.forget_deflate(&conn);
        if !conn.user.is_empty() || conn.echo {
            self.ws_open.set(self.ws_open.get().saturating_sub(1));
            // An echo connection holds no per-IP slot (see `open_echo`).
            self.release_slot(conn.peer, !conn.echo && self.cfg.max_connections_per_ip > 0);
        }
        if !conn.user.is_empty() && self.members.borrow_mut().remove_user(&conn.user, id) {
            self.tell_user_owner(&conn.user, false);
        }
        // Joined rooms are left; pending joins are undone when their ack arrives.
        for m in conn.rooms.iter().filter(|m| m.joined()) {
            self.leave_joined(id, &conn.user, m);
        }
    }
}

/// Drives connection `id`: flush, read, dispatch. `Ready` when it is finished.
///
/// Takes the services and the table apart, not the shard: while the table is borrowed
/// here, the only way on is through `&Services`, which cannot borrow it again.
fn poll_conn(svc: &Services, table: &RefCell<Conns>, id: ConnId, cx: &mut Context<'_>) -> Poll<()> {
    let mut conns = table.borrow_mut();
    let Some(conn) = conns.get_mut(id) else { return Poll::Ready(()) };
    conn.set_waker(cx.waker());
    for _ in 0..READS_PER_POLL {
        match conn.poll_flush(cx) {
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) => match conn.phase {
                Phase::Done => return Poll::Ready(()),
                // All we owe the peer is written: send our FIN behind it, and keep
                // reading so that closing never meets unread input (see `Phase`).
                phase if phase.is_lingering() => conn.shutdown_write(),
                _ => {}
            },
            // Finished but the peer does not take our last bytes: wait for
            // writability (the sweep's close timeout bounds the wait).
            Poll::Pending if conn.phase == Phase::Done => return Poll::Pending,
            Poll::Pending => {}
        }
        if let Some(h) = conn.http_mut() {
            if h.reparse && !h.busy {
                h.reparse = false;
                svc.serve_http(id, conn);
                continue;
            }
        }
        if conn.is_open() && svc.congested() {
            svc.pause(id);
            return Poll::Pending;
        }
        let mut scratch = svc.scratch.borrow_mut();
        let n = match conn.poll_read(cx, &mut scratch[..]) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(0)) if conn.phase.is_lingering() => {
                // The peer ended its stream while we close: nothing unread can be
                // left behind now, so finish writing what is queued and close.
                conn.enter(Phase::Done, svc.now());
                continue;
            }
            Poll::Ready(Ok(0)) => return Poll::Ready(()),
            Poll::Ready(Ok(n)) => n,
        };
        conn.last_seen = svc.now();
        conn.pinged = false;
        svc.on_input(id, conn, &mut scratch[..n]);
    }
    // Still busy: let other connections run, then continue.
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl Services {
    /// Leaves a joined room: drops the local membership and tells the room's owner.
    pub(super) fn leave_joined(&self, id: ConnId, user: &Arc<str>, m: &Membership) {
        self.members.borrow_mut().remove(&m.room, id);
        let leave = ShardMsg::Leave { room: m.room.clone(), user: user.clone(), from: self.id, epoch: m.epoch };
        self.mesh.send(self.mesh.owner_of(&m.room), leave);
    }

    /// Tells the owner of `user`'s personal room that this shard has its first connection
    /// of the user (`here`) or that its last one here closed.
    fn tell_user_owner(&self, user: &Arc<str>, here: bool) {
        let owner = self.mesh.owner_of(&protocol::user_room(user));
        self.mesh.send(owner, ShardMsg::UserHere { user: user.clone(), from: self.id, here });
    }

    /// Dispatches bytes read from connection `id` by its phase.
    fn on_input(&self, id: ConnId, conn: &mut Conn, data: &mut [u8]) {
        match conn.phase {
            Phase::Http => self.on_http_bytes(id, conn, data),
            Phase::Open | Phase::Closing => self.on_ws_bytes(id, conn, data),
            // After a protocol error, while lingering, or once closed, input is read
            // and dropped.
            Phase::ClosingDiscard | Phase::Linger | Phase::Done => {}
        }
    }

    /// The upgrade succeeded (its 101 is queued): greet the client and join it to its
    /// personal room.
    pub(super) fn open_websocket(&self, id: ConnId, conn: &mut Conn, identity: Identity) {
        conn.enter(Phase::Open, self.now());
        conn.user = identity.user.clone();
        inc(&self.stats.upgrades_total);
        self.ws_open.set(self.ws_open.get() + 1);
        self.start_session(id, &identity);
        // Every connection is a member of its user's personal room (push to one user): one
        // of the user's local connections from now on (`members`), and the room's owner
        // hears of the user's first connection on this shard (`room::online`). That news
        // is queued before the welcome is written: a client that has its welcome may at
        // once have its backend push to the user, and that push must reach the owner
        // behind it. The other way round, this thread could be preempted between the two,
        // and a push sent on another shard overtook it and found nobody (a CI run of
        // history.rs on a busy host, when this was a join).
        if self.members.borrow_mut().add_user(&conn.user, id) {
            self.tell_user_owner(&conn.user, true);
        }
        let welcome = server::welcome(&conn.user, identity.name.as_deref(), &self.conn_label(id), self.id);
        self.push(conn, welcome);
    }

    pub(super) fn on_ws_bytes(&self, id: ConnId, conn: &mut Conn, data: &mut [u8]) {
        // The reader is moved out for the call so the callback can use the connection.
        let mut reader = std::mem::replace(&mut conn.reader, MessageReader::new(frame::Role::Server, 0));
        let result = reader.feed(data, |msg| self.on_message(id, conn, msg));
        conn.reader = reader;
        if let Err(e) = result {
            inc(&self.stats.protocol_errors);
            tracing::debug!(peer = %conn.peer, error = %e, "closing on protocol error");
            self.close(conn, e.close_code(), &e.to_string(), false);
            if conn.phase == Phase::Closing {
                conn.phase = Phase::ClosingDiscard;
            }
        }
    }

    fn on_message(&self, id: ConnId, conn: &mut Conn, msg: Message<'_>) -> ControlFlow<()> {
        match msg {
            Message::Text(text) if conn.echo => {
                if conn.is_open() {
                    inc(&self.stats.messages_in);
                    let frame = self.frame_for(conn, OpCode::Data(Data::Text), text);
                    self.push(conn, frame);
                }
                ControlFlow::Continue(())
            }
            Message::Binary(data) if conn.echo => {
                if conn.is_open() {
                    inc(&self.stats.messages_in);
                    let frame = self.frame_for(conn, OpCode::Data(Data::Binary), data);
                    self.push(conn, frame);
                }
                ControlFlow::Continue(())
            }
            Message::Text(text) => {
                if conn.is_open() {
                    inc(&self.stats.messages_in);
                    self.on_text(id, conn, text);
                }
                ControlFlow::Continue(())
            }
            Message::Binary(_) => {
                inc(&self.stats.protocol_errors);
                self.close(conn, close::UNSUPPORTED, "binary messages are not supported; send JSON text", false);
                ControlFlow::Break(())
            }
            Message::Ping(payload) => {
                if conn.is_open() {
                    self.push(conn, frame::pong_frame(payload));
                }
                ControlFlow::Continue(())
            }
            Message::Pong(_) => {
                inc(&self.stats.pongs_received);
                ControlFlow::Continue(())
            }
            Message::Close(status) => {
                if conn.is_open() {
                    // The peer closes: echo its code, then linger until it has read the
                    // echo and ended its stream (or the close timeout passes).
                    let code = status.map_or(close::NORMAL, |(c, _)| c);
                    conn.out.seal(frame::close_frame(code, ""), false);
                    conn.enter(Phase::Linger, self.now());
                } else {
                    // The answer to our close frame: the peer has read everything we
                    // sent, so the socket may close as soon as our queue is flushed.
                    conn.enter(Phase::Done, self.now());
                }
                ControlFlow::Break(())
            }
        }
    }

    fn on_text(&self, id: ConnId, conn: &mut Conn, text: &mut [u8]) {
        // Parsed before the rate check so that a `rate_limited` error can echo the
        // request's `id` (the client then knows which request was dropped). Parsing is
        // cheap next to what the limit protects: sequencing and fan-out.
        let parsed = client::parse(text, &mut self.json.borrow_mut());
        if let Some(rate) = self.rate {
            if !rate.allow(&mut conn.tat, self.now()) {
                inc(&self.stats.rate_limited);
                conn.strikes = conn.strikes.saturating_add(1);
                if struck_out(conn.strikes, self.cfg.rate_limit_close_after) {
                    self.close(conn, close::POLICY, "rate limit exceeded repeatedly", false);
                } else {
                    let reference = match &parsed {
                        Ok(req) => req.id.as_deref(),
                        Err(e) => e.reference.as_deref(),
                    };
                    let msg = "too many messages; slow down";
                    self.push(conn, server::error(ErrorCode::RateLimited, msg, reference));
                }
                return;
            }
        }
        let result = match parsed {
            Ok(req) => {
                let reference = req.id.as_deref().map(Box::from);
                self.on_client_msg(id, conn, req.msg, reference.clone())
                    .map_err(|e| ClientError { reference: reference.map(String::from), ..e })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            inc(&self.stats.client_errors);
            self.push(conn, server::error(e.code, &e.message, e.reference.as_deref()));
        }
    }

    fn on_client_msg(
        &self,
        id: ConnId,
        conn: &mut Conn,
        msg: ClientMsg<'_>,
        reference: Option<Box<str>>,
    ) -> Result<(), ClientError> {
        let origin = ConnRef { shard: self.id, conn: id, reference };
        match msg {
            ClientMsg::Join { room, password, since } => {
                let room = self.may_join(id, conn, &room)?;
                let since = since.map(|s| Since { epoch: s.epoch.map(|e| Box::from(&*e)), seq: s.seq });
                match password {
                    None => {
                        let kind = JoinKind::Join { password: None, verified: None, since };
                        let req = self.pending_join(id, conn, room, origin.reference, kind);
                        self.join_checked(id, conn, req, JoinNext::Send);
                    }
                    Some(pw) => {
                        check_password_len(&pw)?;
                        let kind = JoinKind::Join { password: Some(Box::from(&*pw)), verified: None, since };
                        let req = self.pending_join(id, conn, room, origin.reference, kind);
                        self.join_checked(id, conn, req, JoinNext::Password);
                    }
                }
            }
            ClientMsg::Create { room, password } => {
                let room = self.may_join(id, conn, &room)?;
                let kind = JoinKind::Create { password_hash: None };
                let req = self.pending_join(id, conn, room, origin.reference, kind);
                match password {
                    None => self.join_checked(id, conn, req, JoinNext::Send),
                    Some(pw) => {
                        check_password_len(&pw)?;
                        self.join_checked(id, conn, req, JoinNext::Create(pw.into_owned()));
                    }
                }
            }
            ClientMsg::Delete { room } => {
                protocol::validate_room(&room)?;
                let room: Arc<str> = Arc::from(&*room);
                let req = DeleteReq { room: room.clone(), user: conn.user.clone(), origin };
                self.mesh.send(self.mesh.owner_of(&room), ShardMsg::Delete(Box::new(req)));
            }
            ClientMsg::Leave { room } => {
                if protocol::is_room_of(&room, &conn.user) {
                    may_leave(&room)?;
                }
                let i = member_index(&conn.rooms, &room)?;
                let m = conn.rooms.remove(i);
                // A pending join is undone when its ack arrives (see `on_join_ack`).
                if m.joined() {
                    self.leave_joined(id, &conn.user, &m);
                }
                self.push(conn, server::left(&m.room));
            }
            ClientMsg::Message { room, text, data, event, volatile, skip_self, idempotency_key } => {
                if let Some(text) = &text {
                    check_text_len(text.len(), self.cfg.max_text_bytes)?;
                }
                if let Some(data) = &data {
                    check_data_len(data.len(), self.cfg.max_data_bytes)?;
                }
                // A join still waiting for its ack counts: the owner sees the join first.
                let room = member_room(&conn.rooms, &conn.user, &room)?;
                let extra = Extra {
                    data: data.map(Arc::from),
                    event: event.map(|e| Arc::from(&*e)),
                    tags: None,
                    volatile,
                    skip: skip_self.then(|| Sender { node: 0, shard: self.id as u16, conn: id.as_u64() }),
                    idempotency_key: idempotency_key.map(|k| user_scoped_key(&conn.user, &k)),
                };
                let publish = Publish {
                    room: room.clone(),
                    user: conn.user.clone(),
                    text: text.map(|t| Box::from(&*t)),
                    extra,
                    from: Requester::Conn(origin),
                };
                self.publish_checked(id, conn, publish)?;
            }
            ClientMsg::Presence { room, after, limit } => {
                let room = member_room(&conn.rooms, &conn.user, &room)?;
                let req = PresenceReq {
                    room: room.clone(),
                    after: after.map(|a| Box::from(&*a)),
                    limit: presence_limit(limit),
                    private: false,
                    from: Requester::Conn(origin),
                };
                self.mesh.send(self.mesh.owner_of(&room), ShardMsg::Presence(Box::new(req)));
            }
            ClientMsg::Refresh { token } => {
                let frame = self.refresh(id, conn, &token)?;
                self.push(conn, frame);
            }
            ClientMsg::History { room, before, limit } => {
                let limit = history_limit(limit)?;
                let room = member_room(&conn.rooms, &conn.user, &room)?;
                let req = HistoryReq { room: room.clone(), before, limit, from: Requester::Conn(origin) };
                self.mesh.send(self.mesh.owner_of(&room), ShardMsg::History(Box::new(req)));
            }
        }
        Ok(())
    }

    /// Checks that the connection may join (or create) `room`: a valid name, not joined
    /// yet, under the per-connection room limit, and allowed by its token.
    pub(super) fn may_join(&self, id: ConnId, conn: &Conn, room: &str) -> Result<Arc<str>, ClientError> {
        let sessions = self.sessions.borrow();
        let allowed = sessions.get(&id).and_then(|s| s.rooms.as_deref());
        check_join(&conn.rooms, room, self.cfg.max_rooms_per_conn, allowed)?;
        Ok(Arc::from(room))
    }

    /// Records a pending membership and builds the join for the room's owner.
    pub(super) fn pending_join(
        &self,
        id: ConnId,
        conn: &mut Conn,
        room: Arc<str>,
        reference: Option<Box<str>>,
        kind: JoinKind,
    ) -> JoinReq {
        let token = self.token();
        conn.rooms.push(Membership { room: room.clone(), pending: token, epoch: 0 });
        JoinReq { room, user: conn.user.clone(), origin: ConnRef { shard: self.id, conn: id, reference }, token, kind }
    }

    /// Asks the room's owner to sequence a join.
    pub(super) fn send_join(&self, req: JoinReq) {
        self.mesh.send(self.mesh.owner_of(&req.room), ShardMsg::Join(Box::new(req)));
    }
}

/// A plain join: no password.
pub(super) const PLAIN_JOIN: JoinKind = JoinKind::Join { password: None, verified: None, since: None };

/// A room password's length is checked before anything else sees it (the hash cost does
/// not grow with it, but an empty password would make a room nobody can tell is private).
/// A WebSocket client's `idempotency_key`, scoped to its user: keys are remembered per
/// room (docs/PROTOCOL.md), and without the scope one member could suppress another's
/// message by sending its key first. The user id's length leads, so no (user, key)
/// pair writes another's scoped key whatever bytes either holds. An API caller (trusted,
/// holding the API key) has its keys unscoped, and could only collide with a scoped key
/// on purpose.
fn user_scoped_key(user: &str, key: &str) -> Arc<str> {
    Arc::from(format!("{}:{user}:{key}", user.len()))
}

fn check_password_len(pw: &str) -> Result<(), ClientError> {
    if pw.is_empty() || pw.len() > password::MAX_PASSWORD {
        let msg = format!("`password` must be 1 to {} bytes", password::MAX_PASSWORD);
        return Err(ClientError::new(ErrorCode::InvalidField, msg));
    }
    Ok(())
}

/// Whether a connection with `rooms` may join (or create) `room`: a valid name, not
/// joined yet, under the per-connection limit `max_rooms` (server-managed rooms do not
/// count), and allowed by its token's grants (`allowed`; `None`: any room). Checked in
/// that order, so the client hears the first reason.
fn check_join(
    rooms: &[Membership],
    room: &str,
    max_rooms: usize,
    allowed: Option<&[Pattern]>,
) -> Result<(), ClientError> {
    protocol::validate_room(room)?;
    if rooms.iter().any(|m| &*m.room == room) {
        return Err(ClientError::new(ErrorCode::AlreadyJoined, "already joined (or joining) this room"));
    }
    let joined = rooms.iter().filter(|m| !m.room.starts_with(protocol::SYSTEM_ROOM_PREFIX)).count();
    if joined >= max_rooms {
        let msg = format!("a connection may be in at most {max_rooms} rooms");
        return Err(ClientError::new(ErrorCode::TooManyRooms, msg));
    }
    if allowed.is_some_and(|allowed| !grants::allows(allowed, room)) {
        return Err(ClientError::new(ErrorCode::Forbidden, "your token does not allow this room"));
    }
    Ok(())
}

/// A connection may leave any room it is in except the server-managed ones (its
/// personal room): those follow the connection's lifetime.
fn may_leave(room: &str) -> Result<(), ClientError> {
    if room.starts_with(protocol::SYSTEM_ROOM_PREFIX) {
        return Err(ClientError::new(ErrorCode::Forbidden, "cannot leave a server-managed room"));
    }
    Ok(())
}

/// A message's `text` may be at most `max` bytes.
fn check_text_len(len: usize, max: usize) -> Result<(), ClientError> {
    if len > max {
        return Err(ClientError::new(ErrorCode::TextTooLong, format!("`text` is longer than {max} bytes")));
    }
    Ok(())
}

/// A message's `data` may be at most `max` bytes, as the client wrote it.
fn check_data_len(len: usize, max: usize) -> Result<(), ClientError> {
    if len > max {
        return Err(ClientError::new(ErrorCode::DataTooLarge, format!("`data` is longer than {max} bytes")));
    }
    Ok(())
}

/// The page size of a `history` request: the default when none is given; above
/// [`HISTORY_PAGE_MAX`] it is refused rather than clamped, so a client learns the bound.
fn history_limit(limit: Option<u32>) -> Result<u32, ClientError> {
    let limit = limit.unwrap_or(HISTORY_PAGE);
    if limit > HISTORY_PAGE_MAX {
        let msg = format!("`limit` must be at most {HISTORY_PAGE_MAX} for history");
        return Err(ClientError::new(ErrorCode::InvalidField, msg));
    }
    Ok(limit)
}

/// The page size of a `presence` request: the default when none is given, clamped to
/// [`client::MAX_PAGE`] (the parser already refuses larger ones; this keeps the bound
/// where the request is built).
fn presence_limit(limit: Option<u32>) -> u32 {
    limit.unwrap_or(PRESENCE_PAGE).min(client::MAX_PAGE)
}

/// Whether a connection refused by the rate limiter `strikes` times is closed: after
/// `close_after` strikes (the counter is a byte, so at most 255).
fn struck_out(strikes: u8, close_after: u32) -> bool {
    u32::from(strikes) >= close_after.min(255)
}

fn member_index(rooms: &[Membership], room: &str) -> Result<usize, ClientError> {
    rooms
        .iter()
        .position(|m| &*m.room == room)
        .ok_or_else(|| ClientError::new(ErrorCode::NotMember, "join the room first"))
}

/// The connection's own (shared) name of a room it is in or joining (its personal room
/// included); not one whose join still waits for the application backend.
fn member_room(rooms: &[Membership], user: &str, room: &str) -> Result<Arc<str>, ClientError> {
    if protocol::is_room_of(room, user) {
        return Ok(Arc::from(room));
    }
    let m = &rooms[member_index(rooms, room)?];
    if m.pending != 0 && m.epoch == AWAITING_BACKEND {
        return Err(ClientError::new(ErrorCode::NotMember, "the join waits for the application backend"));
    }
    Ok(m.room.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(names: &[&str]) -> Vec<Membership> {
        names.iter().map(|n| Membership { room: Arc::from(*n), pending: 0, epoch: 0 }).collect()
    }

    fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
        r.expect_err("refused").code
    }

    #[test]
    fn join_needs_a_valid_name() {
        assert_eq!(code(check_join(&[], "", 10, None)), ErrorCode::InvalidRoom);
        assert_eq!(code(check_join(&[], "@alice", 10, None)), ErrorCode::InvalidRoom, "reserved prefix");
        assert_eq!(check_join(&[], "lobby", 10, None), Ok(()));
    }

    #[test]
    fn join_refuses_a_room_already_joined_or_joining() {
        let mut rs = rooms(&["lobby"]);
        assert_eq!(code(check_join(&rs, "lobby", 10, None)), ErrorCode::AlreadyJoined);
        rs[0].pending = 7;
        assert_eq!(code(check_join(&rs, "lobby", 10, None)), ErrorCode::AlreadyJoined, "a pending join counts");
    }

    #[test]
    fn the_room_limit_does_not_count_server_managed_rooms() {
        let rs = rooms(&["@u:alice", "a", "b"]);
        assert_eq!(check_join(&rs, "c", 3, None), Ok(()));
        let err = check_join(&rs, "c", 2, None).expect_err("over the limit");
        assert_eq!(err.code, ErrorCode::TooManyRooms);
        assert!(err.message.contains("at most 2 rooms"), "{}", err.message);
    }

    #[test]
    fn a_token_allow_list_limits_the_rooms() {
        let allowed = [Pattern::new("team-*")];
        assert_eq!(check_join(&[], "team-a", 10, Some(&allowed)), Ok(()));
        assert_eq!(code(check_join(&[], "lobby", 10, Some(&allowed))), ErrorCode::Forbidden);
        assert_eq!(code(check_join(&[], "lobby", 10, Some(&[]))), ErrorCode::Forbidden, "an empty list allows none");
    }

    #[test]
    fn join_checks_come_in_order() {
        // Already joined and over the limit and not allowed: the first reason wins.
        let rs = rooms(&["x"]);
        assert_eq!(code(check_join(&rs, "x", 0, Some(&[]))), ErrorCode::AlreadyJoined);
        assert_eq!(code(check_join(&rs, "y", 0, Some(&[]))), ErrorCode::TooManyRooms);
    }

    #[test]
    fn server_managed_rooms_cannot_be_left() {
        assert_eq!(code(may_leave("@u:alice")), ErrorCode::Forbidden);
        assert_eq!(may_leave("lobby"), Ok(()));
    }

    #[test]
    fn membership_lookup_names_the_connections_room() {
        let rs = rooms(&["a", "b"]);
        assert_eq!(member_index(&rs, "b"), Ok(1));
        assert_eq!(code(member_index(&rs, "c")), ErrorCode::NotMember);
        assert!(Arc::ptr_eq(&member_room(&rs, "ann", "a").expect("member"), &rs[0].room), "the shared name is reused");
    }

    #[test]
    fn a_connection_is_in_its_own_personal_room_only() {
        let rs = rooms(&["a"]);
        assert_eq!(member_room(&rs, "ann", "@user:ann").as_deref(), Ok("@user:ann"));
        assert_eq!(code(member_room(&rs, "ann", "@user:bob")), ErrorCode::NotMember);
        assert_eq!(code(member_room(&rs, "", "@user:")), ErrorCode::NotMember, "no user, no personal room");
    }

    #[test]
    fn a_join_waiting_for_the_backend_is_not_a_membership_yet() {
        let mut rs = rooms(&["a"]);
        rs[0].pending = 3;
        assert!(member_room(&rs, "ann", "a").is_ok(), "a pending join counts");
        rs[0].epoch = AWAITING_BACKEND;
        assert_eq!(code(member_room(&rs, "ann", "a")), ErrorCode::NotMember);
        assert_eq!(member_index(&rs, "a"), Ok(0), "it can still be left");
    }

    #[test]
    fn text_length_is_bounded_inclusively() {
        assert_eq!(check_text_len(100, 100), Ok(()));
        let err = check_text_len(101, 100).expect_err("too long");
        assert_eq!(err.code, ErrorCode::TextTooLong);
        assert!(err.message.contains("100 bytes"));
        assert!(check_data_len(16, 16).is_ok());
        assert_eq!(check_data_len(17, 16).map_err(|e| e.code), Err(ErrorCode::DataTooLarge));
    }

    #[test]
    fn history_limit_defaults_and_refuses_above_the_maximum() {
        assert_eq!(history_limit(None), Ok(HISTORY_PAGE));
        assert_eq!(history_limit(Some(HISTORY_PAGE_MAX)), Ok(HISTORY_PAGE_MAX));
        assert_eq!(history_limit(Some(0)), Ok(0), "only the maximum is checked here");
        assert_eq!(code(history_limit(Some(HISTORY_PAGE_MAX + 1))), ErrorCode::InvalidField);
    }

    #[test]
    fn presence_limit_defaults_and_clamps_to_the_page_maximum() {
        assert_eq!(presence_limit(None), PRESENCE_PAGE);
        assert_eq!(presence_limit(Some(7)), 7);
        assert_eq!(presence_limit(Some(client::MAX_PAGE)), client::MAX_PAGE);
        assert_eq!(presence_limit(Some(u32::MAX)), client::MAX_PAGE);
    }

    #[test]
    fn password_length_is_one_to_the_maximum() {
        assert_eq!(code(check_password_len("")), ErrorCode::InvalidField);
        assert_eq!(check_password_len("x"), Ok(()));
        assert_eq!(check_password_len(&"x".repeat(password::MAX_PASSWORD)), Ok(()));
        assert_eq!(code(check_password_len(&"x".repeat(password::MAX_PASSWORD + 1))), ErrorCode::InvalidField);
    }

    #[test]
    fn rate_limit_strikes_close_after_the_configured_count_capped_at_255() {
        assert!(!struck_out(2, 3));
        assert!(struck_out(3, 3));
        assert!(struck_out(255, 1000), "the byte counter saturates at 255");
        assert!(struck_out(0, 0));
    }
}
