//! The shard side of authentication and abuse limits: admitting an upgrade (Origin,
//! identity, server-wide and per-IP connection limits), per-connection sessions (token
//! grants and expiry, in-band refresh), room-password attempts and hashing, and the IP
//! owner's table.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::conns::{Conn, ConnId};
use super::http::Step;
use super::msg::{IpOp, JoinKind, JoinReq, Reply, ShardMsg};
use super::route::ip_owner;
use super::Shard;
use crate::auth::grants::{self, Pattern};
use crate::auth::{password, token_from_protocols, AuthError, Identity};
use crate::http::request::Request;
use crate::http::response::Answer;
use crate::limits::Window;
use crate::metrics::inc;
use crate::protocol::{server, ClientError, ErrorCode};
use crate::room;
use crate::rt;
use crate::ws::handshake::{self, Upgrade};

/// What a shard remembers about a connection beyond the basics. Only connections that
/// need it have one (JWT users, password guessers): a plain guest costs nothing here.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Rooms the token allows (`None`: any).
    pub rooms: Option<Vec<Pattern>>,
    /// Token expiry, seconds since the Unix epoch.
    pub expires: Option<u64>,
    /// Room-password attempts this minute.
    pub passwords: Window,
}

impl Shard {
    /// Decides whether a valid upgrade request may become a WebSocket connection, and
    /// makes it one. Refusals are HTTP answers: 403 for a disallowed Origin, 401/400 for
    /// identity, 503 beyond the connection limits.
    pub(super) fn admit(
        self: &Rc<Self>,
        id: ConnId,
        conn: &mut Conn,
        req: &Request<'_, '_>,
        up: Upgrade,
        used: usize,
    ) -> Step {
        let allowed = &self.cfg.allowed_origins;
        if let Some(origin) = req.header_str("origin").filter(|_| !allowed.is_empty()) {
            if !allowed.iter().any(|a| a == origin) {
                inc(&self.stats.auth_rejections);
                let answer = Answer::error(403, "origin_not_allowed", "this Origin may not connect");
                return self.respond(conn, &answer, false, false, used);
            }
        }
        let offered = token_from_protocols(&up.protocols);
        let token = req.query_param("token").or_else(|| offered.map(|(t, _)| t.to_owned()));
        let protocol = offered
            .map(|(_, selected)| selected.to_owned())
            .or_else(|| up.protocols.iter().find(|p| *p == "corecast").cloned());
        let name = req.query_param("name");
        let identity = match self.shared.auth.authenticate(token.as_deref(), name.as_deref(), Self::wall_secs()) {
            Ok(identity) => identity,
            Err(e) => {
                inc(&self.stats.auth_rejections);
                let answer = Answer::error(e.status(), e.code(), &e.to_string());
                let answer = if matches!(e, AuthError::BadName) {
                    answer
                } else {
                    answer.with_header("WWW-Authenticate: Bearer\r\n")
                };
                return self.respond(conn, &answer, false, false, used);
            }
        };
        if self.shared.websockets.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_connections {
            self.shared.websockets.fetch_sub(1, Ordering::Relaxed);
            let answer = Answer::error(503, "server_full", "the server is at its connection limit");
            return self.respond(conn, &answer, false, false, used);
        }
        let accept = handshake::accept_response(&up, protocol.as_deref());
        let limit = self.cfg.max_connections_per_ip;
        if limit == 0 {
            self.complete_upgrade(id, conn, accept, identity);
            return Step::Upgraded(used);
        }
        // Ask the address's owner shard for a slot; the connection waits (busy).
        if let Some(h) = conn.http_mut() {
            h.busy = true;
        }
        let (ip, to) = (conn.peer, ip_owner(conn.peer, self.mesh.len()));
        let shard = self.clone();
        rt::spawn(async move {
            let replies = shard
                .ask(1, |reply| shard.mesh.send(to, ShardMsg::Ip { ip, op: IpOp::Acquire { limit, reply } }))
                .await;
            let admitted = matches!(replies.first(), Some(Reply::Admit(true)));
            let mut conns = shard.conns.borrow_mut();
            let Some(conn) = conns.get_mut(id) else {
                shard.release_slot(ip, admitted);
                return;
            };
            if admitted {
                shard.complete_upgrade(id, conn, accept, identity);
            } else {
                shard.release_slot(ip, false);
                let answer = Answer::error(503, "too_many_connections", "too many connections from this address");
                shard.respond(conn, &answer, false, false, 0);
            }
            conn.wake();
        });
        Step::Busy(used)
    }

    /// Sends the 101 and opens the WebSocket; input the client sent right behind its
    /// upgrade request is WebSocket frames.
    fn complete_upgrade(self: &Rc<Self>, id: ConnId, conn: &mut Conn, accept: Bytes, identity: Identity) {
        let mut rest = conn.http.take().map(|h| h.buf).unwrap_or_default();
        conn.push(accept, self.caps);
        self.open_websocket(id, conn, identity);
        if !rest.is_empty() {
            self.on_ws_bytes(id, conn, &mut rest);
        }
    }

    /// Gives back the server-wide slot, and the per-IP one when it was granted.
    pub(super) fn release_slot(&self, ip: IpAddr, per_ip: bool) {
        self.shared.websockets.fetch_sub(1, Ordering::Relaxed);
        if per_ip {
            self.mesh.send(ip_owner(ip, self.mesh.len()), ShardMsg::Ip { ip, op: IpOp::Release });
        }
    }

    /// Records what the identity grants beyond the basics.
    pub(super) fn start_session(&self, id: ConnId, identity: &Identity) {
        if identity.rooms.is_some() || identity.expires.is_some() {
            let session =
                Session { rooms: identity.rooms.clone(), expires: identity.expires, passwords: Window::default() };
            self.sessions.borrow_mut().insert(id, session);
        }
    }

    /// Whether this connection's token lets it into `room`.
    pub(super) fn room_allowed(&self, id: ConnId, room: &str) -> bool {
        match self.sessions.borrow().get(&id).and_then(|s| s.rooms.as_deref()) {
            Some(allowed) => grants::allows(allowed, room),
            None => true,
        }
    }

    /// `refresh`: a new token for the same user extends (or changes) the session.
    pub(super) fn refresh(&self, id: ConnId, conn: &Conn, token: &str) -> Result<Bytes, ClientError> {
        let invalid = |m: String| ClientError::new(ErrorCode::InvalidToken, m);
        let verifier = self.shared.auth.verifier().ok_or_else(|| invalid("this server accepts no tokens".into()))?;
        let claims = verifier.verify(token, Self::wall_secs()).map_err(|e| invalid(e.to_string()))?;
        if claims.sub != *conn.user {
            return Err(invalid("the token is for another user".into()));
        }
        let identity = claims.into_identity();
        let mut sessions = self.sessions.borrow_mut();
        let session = sessions.entry(id).or_default();
        session.rooms = identity.rooms;
        session.expires = identity.expires;
        Ok(server::refreshed(identity.expires.unwrap_or(0)))
    }

    /// Closes connections whose token expired (beyond the leeway), with 1008.
    pub(super) fn expire_sessions(&self) {
        let Some(verifier) = self.shared.auth.verifier() else { return };
        let now = Self::wall_secs();
        let expired: Vec<ConnId> = self
            .sessions
            .borrow()
            .iter()
            .filter(|(_, s)| s.expires.is_some_and(|e| verifier.expired(e, now)))
            .map(|(id, _)| *id)
            .collect();
        let mut conns = self.conns.borrow_mut();
        for id in expired {
            self.sessions.borrow_mut().remove(&id);
            if let Some(conn) = conns.get_mut(id) {
                self.close(conn, crate::ws::close::POLICY, "token expired", false);
            }
        }
    }

    /// Sends a join that carries a room password, once the per-connection and per-IP
    /// attempt limits allow it; otherwise the pending membership is dropped with
    /// `rate_limited`.
    pub(super) fn join_with_password(self: &Rc<Self>, id: ConnId, conn: &mut Conn, req: JoinReq) {
        let allowed = self
            .sessions
            .borrow_mut()
            .entry(id)
            .or_default()
            .passwords
            .attempt(self.now(), self.cfg.password_attempts_per_conn);
        if !allowed {
            self.drop_pending(conn, &req, "too many password attempts on this connection; wait a minute");
            return;
        }
        let (ip, limit) = (conn.peer, self.cfg.password_attempts_per_ip);
        let to = ip_owner(ip, self.mesh.len());
        let shard = self.clone();
        rt::spawn(async move {
            let replies = shard
                .ask(1, |reply| shard.mesh.send(to, ShardMsg::Ip { ip, op: IpOp::PasswordAttempt { limit, reply } }))
                .await;
            if matches!(replies.first(), Some(Reply::Admit(true))) {
                shard.mesh.send(shard.mesh.owner_of(&req.room), ShardMsg::Join(Box::new(req)));
            } else if let Some(conn) = shard.conns.borrow_mut().get_mut(id) {
                shard.drop_pending(conn, &req, "too many password attempts from this address; wait a minute");
            }
        });
    }

    /// Hashes a new room's password off the event loop, then sends the `create`.
    pub(super) fn create_with_password(self: &Rc<Self>, mut req: JoinReq, password: String) {
        let shard = self.clone();
        rt::spawn(async move {
            match password::hash(password).await {
                Some(hash) => {
                    req.kind = JoinKind::Create { password_hash: Some(Arc::from(hash)) };
                    shard.mesh.send(shard.mesh.owner_of(&req.room), ShardMsg::Join(Box::new(req)));
                }
                None => {
                    if let Some(conn) = shard.conns.borrow_mut().get_mut(req.origin.conn) {
                        shard.drop_pending(conn, &req, "could not hash the password");
                    }
                }
            }
        });
    }

    /// Removes the pending membership of `req` and tells the client why.
    fn drop_pending(&self, conn: &mut Conn, req: &JoinReq, why: &str) {
        if let Some(i) = conn.rooms.iter().position(|m| *m.room == *req.room && m.pending == req.token) {
            conn.rooms.remove(i);
        }
        inc(&self.stats.rate_limited);
        let frame = server::error(ErrorCode::RateLimited, why, req.origin.reference.as_deref());
        self.push(conn, frame);
    }

    /// Owner side: checks a private room's password on the blocking pool, then resubmits
    /// the join (now verified for this room instance) or refuses it.
    pub(super) fn check_password(self: &Rc<Self>, mut req: JoinReq, hash: Arc<str>, pw: Box<str>, epoch: u64) {
        let shard = self.clone();
        rt::spawn(async move {
            if password::verify(pw.into(), hash).await {
                let since = match &mut req.kind {
                    JoinKind::Join { since, .. } => since.take(),
                    JoinKind::Create { .. } => None,
                };
                req.kind = JoinKind::Join { password: None, verified: Some(epoch), since };
                shard.mesh.send(shard.id, ShardMsg::Join(Box::new(req)));
            } else {
                room::refuse(&req, ErrorCode::WrongPassword, "wrong password", &mut |out| shard.route(out));
            }
        });
    }

    /// IP owner side: the table of the addresses this shard owns.
    pub(super) fn on_ip(&self, ip: IpAddr, op: IpOp) {
        let mut ips = self.ips.borrow_mut();
        let (ok, reply) = match op {
            IpOp::Release => {
                ips.release(ip);
                return;
            }
            IpOp::Acquire { limit, reply } => (ips.acquire(ip, limit), reply),
            IpOp::PasswordAttempt { limit, reply } => (ips.password_attempt(ip, self.now(), limit), reply),
        };
        self.mesh.send(reply.shard, ShardMsg::Reply { req: reply.req, reply: Reply::Admit(ok) });
    }
}
