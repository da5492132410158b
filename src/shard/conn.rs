//! One connection's task: handshake, reading and dispatching client messages, flushing
//! the write queue, and the close handshake.
//!
//! The task is a single `poll_fn` over the connection's state in the shard table, so it
//! holds nothing across polls but an id (a small future per connection), and one task
//! drives both directions: the runtime keeps separate readiness registrations for
//! reading and writing, both waking this task.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::io::AsyncRead;

use super::conns::{Conn, ConnId, Membership, Phase};
use super::msg::{ConnRef, JoinReq, PresenceReq, Publish, Requester, ShardMsg};
use super::route::owner;
use super::Shard;
use crate::metrics::inc;
use crate::protocol::client::{self, ClientMsg};
use crate::protocol::{self, server, ClientError, ErrorCode};
use crate::rt;
use crate::ws::reader::{Message, MessageReader};
use crate::ws::{close, frame};

/// Reads per poll before the task yields to others (fairness under floods).
const READS_PER_POLL: usize = 4;

/// Default and maximum page of a `presence` reply.
const PRESENCE_PAGE: u32 = 100;

impl Shard {
    /// Takes ownership of an accepted socket and starts its task.
    pub(super) fn adopt(self: &Rc<Self>, stream: rt::TcpStream) {
        let peer = stream.peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        // Each send is one complete frame: never hold it back for coalescing.
        let _ = stream.set_nodelay(true);
        let conn = Conn::new(stream, peer, self.now(), self.cfg.max_message_bytes);
        let id = self.conns.borrow_mut().insert(conn);
        inc(&self.stats.connections_total);
        let shard = self.clone();
        rt::spawn(async move {
            std::future::poll_fn(|cx| shard.poll_conn(id, cx)).await;
            shard.finish(id);
        });
    }

    /// Drives connection `id`: flush, read, dispatch. `Ready` when it is finished.
    fn poll_conn(self: &Rc<Self>, id: ConnId, cx: &mut Context<'_>) -> Poll<()> {
        let mut conns = self.conns.borrow_mut();
        let Some(conn) = conns.get_mut(id) else { return Poll::Ready(()) };
        conn.set_waker(cx.waker());
        for _ in 0..READS_PER_POLL {
            match conn.poll_flush(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => match conn.phase {
                    Phase::Done => return Poll::Ready(()),
                    Phase::Closing { .. } => conn.shutdown_write(),
                    _ => {}
                },
                Poll::Pending => {}
            }
            if let Phase::Http(h) = &mut conn.phase {
                if h.reparse && !h.busy {
                    h.reparse = false;
                    self.serve_http(id, conn);
                    continue;
                }
            }
            if conn.is_open() && self.congested() {
                self.pause(id);
                return Poll::Pending;
            }
            let mut scratch = self.scratch.borrow_mut();
            let n = match Pin::new(&mut conn.stream).poll_read(cx, &mut scratch[..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => n,
            };
            conn.last_seen = self.now();
            conn.pinged = false;
            self.on_input(id, conn, &mut scratch[..n]);
        }
        // Still busy: let other connections run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Cleans up after the task ended: leaves every room, closes the socket.
    fn finish(&self, id: ConnId) {
        let Some(conn) = self.conns.borrow_mut().remove(id) else { return };
        if !conn.user.is_empty() {
            self.ws_open.set(self.ws_open.get().saturating_sub(1));
        }
        let mut members = self.members.borrow_mut();
        for m in &conn.rooms {
            if m.joined {
                members.remove(&m.room, id);
            }
            let leave = ShardMsg::Leave { room: m.room.clone(), user: conn.user.clone(), from: self.id };
            self.mesh.send(owner(&m.room, self.mesh.len()), leave);
        }
    }

    fn on_input(self: &Rc<Self>, id: ConnId, conn: &mut Conn, data: &mut [u8]) {
        match conn.phase {
            Phase::Http(_) => self.on_http_bytes(id, conn, data),
            Phase::Open | Phase::Closing { parse: true } => self.on_ws_bytes(id, conn, data),
            // After a protocol error, or once closed, input is read and dropped.
            Phase::Closing { parse: false } | Phase::Done => {}
        }
    }

    /// The upgrade succeeded (its 101 is queued): greet the client and join it to its
    /// personal room.
    pub(super) fn open_websocket(&self, id: ConnId, conn: &mut Conn, user: Arc<str>) {
        conn.enter(Phase::Open, self.now());
        conn.user = user;
        inc(&self.stats.upgrades_total);
        self.ws_open.set(self.ws_open.get() + 1);
        let welcome = server::welcome(&conn.user, &self.conn_label(id), self.id);
        self.push(conn, welcome);
        // Every connection is a member of its user's personal room (push to one user).
        let room: Arc<str> = Arc::from(protocol::user_room(&conn.user));
        self.send_join(id, conn, room, None, true);
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
            if let Phase::Closing { parse } = &mut conn.phase {
                *parse = false;
            }
        }
    }

    fn on_message(&self, id: ConnId, conn: &mut Conn, msg: Message<'_>) -> ControlFlow<()> {
        match msg {
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
            Message::Pong(_) => ControlFlow::Continue(()),
            Message::Close(status) => {
                if conn.is_open() {
                    // Echo the peer's code, then close the TCP connection ourselves.
                    let code = status.map_or(close::NORMAL, |(c, _)| c);
                    conn.out.seal(frame::close_frame(code, ""), false);
                }
                conn.enter(Phase::Done, self.now());
                ControlFlow::Break(())
            }
        }
    }

    fn on_text(&self, id: ConnId, conn: &mut Conn, text: &mut [u8]) {
        let parsed = client::parse(text, &mut self.json.borrow_mut());
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
            ClientMsg::Join { room, .. } => {
                protocol::validate_room(&room)?;
                if conn.membership(&room).is_some() {
                    return Err(ClientError::new(ErrorCode::AlreadyJoined, "already joined (or joining) this room"));
                }
                self.send_join(id, conn, Arc::from(&*room), origin.reference, false);
            }
            ClientMsg::Leave { room } => {
                let i = member_index(conn, &room)?;
                if conn.rooms[i].room.starts_with(protocol::SYSTEM_ROOM_PREFIX) {
                    return Err(ClientError::new(ErrorCode::Forbidden, "cannot leave a server-managed room"));
                }
                let m = conn.rooms.remove(i);
                if m.joined {
                    self.members.borrow_mut().remove(&m.room, id);
                }
                let frame = server::left(&m.room);
                let leave = ShardMsg::Leave { room: m.room.clone(), user: conn.user.clone(), from: self.id };
                self.mesh.send(owner(&m.room, self.mesh.len()), leave);
                self.push(conn, frame);
            }
            ClientMsg::Message { room, text } => {
                // A join still waiting for its ack counts: the owner sees the join first.
                let room = conn.rooms[member_index(conn, &room)?].room.clone();
                let from = Requester::Conn(origin);
                let publish = Publish { room: room.clone(), user: conn.user.clone(), text: Box::from(&*text), from };
                self.mesh.send(owner(&room, self.mesh.len()), ShardMsg::Publish(Box::new(publish)));
            }
            ClientMsg::Presence { room, after, limit } => {
                let room = conn.rooms[member_index(conn, &room)?].room.clone();
                let req = PresenceReq {
                    room: room.clone(),
                    after: after.map(|a| Box::from(&*a)),
                    limit: limit.unwrap_or(PRESENCE_PAGE).min(client::MAX_PAGE),
                    from: Requester::Conn(origin),
                };
                self.mesh.send(owner(&room, self.mesh.len()), ShardMsg::Presence(Box::new(req)));
            }
            ClientMsg::History { .. } => {
                return Err(ClientError::new(ErrorCode::Unavailable, "history is not available on this server"));
            }
        }
        Ok(())
    }

    /// Records a pending membership and asks the room's owner to sequence the join.
    fn send_join(&self, id: ConnId, conn: &mut Conn, room: Arc<str>, reference: Option<Box<str>>, silent: bool) {
        let token = self.token();
        conn.rooms.push(Membership { room: room.clone(), token, joined: false });
        let req = JoinReq {
            room: room.clone(),
            user: conn.user.clone(),
            origin: ConnRef { shard: self.id, conn: id, reference },
            token,
            silent,
        };
        self.mesh.send(owner(&room, self.mesh.len()), ShardMsg::Join(Box::new(req)));
    }
}

fn member_index(conn: &Conn, room: &str) -> Result<usize, ClientError> {
    conn.membership(room).ok_or_else(|| ClientError::new(ErrorCode::NotMember, "join the room first"))
}
