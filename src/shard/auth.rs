//! The shard side of authentication and abuse limits: admitting an upgrade (Origin,
//! identity, server-wide and per-IP connection limits), per-connection sessions (token
//! grants and expiry, in-band refresh), room-password attempts and hashing, and the IP
//! owner's table.
//!
//! Admission and the client-facing checks run while the connection table is borrowed
//! (methods of [`Services`]); what must wait for another shard or the blocking pool goes
//! through [`Services::defer`]. The admission decisions themselves are pure functions
//! ([`origin_allowed`], [`Refusal`]) with unit tests.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::conns::{Conn, ConnId, Phase};
use super::http::Step;
use super::msg::{IpOp, JoinKind, JoinReq, Reply, ShardMsg};
use super::route::ip_owner;
use super::{Services, Shard};
use crate::auth::grants::Pattern;
use crate::auth::{password, token_from_protocols, AuthError, Identity};
use crate::http::request::Request;
use crate::http::response::Answer;
use crate::limits::Window;
use crate::metrics::inc;
use crate::protocol::{server, ClientError, ErrorCode};
use crate::room;
use crate::ws::deflate::Agreement;
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

impl Services {
    /// Decides whether a valid upgrade request may become a WebSocket connection, and
    /// makes it one. Refusals are HTTP answers: 403 for a disallowed Origin, 401/400 for
    /// identity, 503 beyond the connection limits.
    pub(super) fn admit(&self, id: ConnId, conn: &mut Conn, req: &Request<'_, '_>, up: Upgrade, used: usize) -> Step {
        if !origin_allowed(&self.cfg.allowed_origins, req.header_str("origin")) {
            inc(&self.stats.auth_rejections);
            return self.respond(conn, &Refusal::Origin.answer(), false, false, used);
        }
        if self.proxies_connect() {
            return self.admit_via_backend(id, conn, req, up, used);
        }
        let offered = token_from_protocols(&up.protocols);
        let token = req.query_param("token").or_else(|| offered.map(|(t, _)| t.to_owned()));
        let protocol = offered
            .map(|(_, selected)| selected.to_owned())
            .or_else(|| up.protocols.iter().find(|p| *p == "corecast").cloned());
        let name = req.query_param("name");
        let identity = match self.shared.auth.authenticate(token.as_deref(), name.as_deref(), Services::wall_secs()) {
            Ok(identity) => identity,
            Err(e) => {
                inc(&self.stats.auth_rejections);
                return self.respond(conn, &Refusal::Identity(e).answer(), false, false, used);
            }
        };
        let deflate = self.deflate_offer(up.deflate);
        let accept = handshake::accept_response_with(&up, protocol.as_deref(), deflate.as_ref());
        self.admit_identity(id, conn, identity, accept, deflate, used)
    }

    /// Admission once the identity is known (from a token, as a guest, or from the
    /// connect proxy): bans, the server-wide limit, then the per-IP slot.
    pub(super) fn admit_identity(
        &self,
        id: ConnId,
        conn: &mut Conn,
        identity: Identity,
        accept: Bytes,
        deflate: Option<Agreement>,
        used: usize,
    ) -> Step {
        if self.banned(&identity.user) {
            inc(&self.stats.auth_rejections);
            return self.respond(conn, &Refusal::Banned.answer(), false, false, used);
        }
        if self.shared.websockets.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_connections {
            self.shared.websockets.fetch_sub(1, Ordering::Relaxed);
            return self.respond(conn, &Refusal::ServerFull.answer(), false, false, used);
        }
        let limit = self.cfg.max_connections_per_ip;
        if limit == 0 {
            self.complete_upgrade(id, conn, accept, identity, deflate);
            return Step::Upgraded(used);
        }
        // Ask the address's owner shard for a slot; the connection waits (busy).
        if let Some(h) = conn.http_mut() {
            h.busy = true;
        }
        let (ip, to) = (conn.peer, ip_owner(conn.peer, self.mesh.len()));
        self.defer(move |shard| async move {
            let replies = shard
                .ask(1, |reply| shard.mesh.send(to, ShardMsg::Ip { ip, op: IpOp::Acquire { limit, reply } }))
                .await;
            let admitted = matches!(replies.first(), Some(Reply::Admit(true)));
            let served = shard.with_conn(id, |svc, conn| {
                if admitted {
                    svc.complete_upgrade(id, conn, accept, identity, deflate);
                } else {
                    svc.release_slot(ip, false);
                    svc.respond(conn, &Refusal::TooManyFromIp.answer(), false, false, 0);
                }
                conn.wake();
            });
            if served.is_none() {
                shard.release_slot(ip, admitted);
            }
        });
        Step::Busy(used)
    }

    /// Opens the conformance echo endpoint (`--echo-endpoint`): no identity, no welcome,
    /// no rooms, no per-IP slot; it counts against `--max-connections` only. Everything
    /// after the 101 (frames, assembly, UTF-8, close, outbox, heartbeat) is the code `/ws`
    /// runs; only what a complete message does differs (`on_message` echoes it).
    pub(super) fn open_echo(&self, conn: &mut Conn, up: &Upgrade, used: usize) -> Step {
        if self.shared.websockets.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_connections {
            self.shared.websockets.fetch_sub(1, Ordering::Relaxed);
            return self.respond(conn, &Refusal::ServerFull.answer(), false, false, used);
        }
        let deflate = self.deflate_offer(up.deflate);
        conn.push(handshake::accept_response_with(up, None, deflate.as_ref()), self.caps);
        self.use_deflate(conn, deflate);
        conn.echo = true;
        conn.enter(Phase::Open, self.now());
        inc(&self.stats.upgrades_total);
        self.ws_open.set(self.ws_open.get() + 1);
        Step::Upgraded(used)
    }

    /// Sends the 101 and opens the WebSocket; input the client sent right behind its
    /// upgrade request is WebSocket frames.
    fn complete_upgrade(
        &self,
        id: ConnId,
        conn: &mut Conn,
        accept: Bytes,
        identity: Identity,
        deflate: Option<Agreement>,
    ) {
        let mut rest = conn.http.take().map(|h| h.buf).unwrap_or_default();
        conn.push(accept, self.caps);
        self.use_deflate(conn, deflate);
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

    /// `refresh`: a new token for the same user extends (or changes) the session.
    pub(super) fn refresh(&self, id: ConnId, conn: &Conn, token: &str) -> Result<Bytes, ClientError> {
        let invalid = |m: String| ClientError::new(ErrorCode::InvalidToken, m);
        let verifier = self.shared.auth.verifier().ok_or_else(|| invalid("this server accepts no tokens".into()))?;
        let claims = verifier.verify(token, Services::wall_secs()).map_err(|e| invalid(e.to_string()))?;
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

    /// Sends a join that carries a room password, once the per-connection and per-IP
    /// attempt limits allow it; otherwise the pending membership is dropped with
    /// `rate_limited`.
    pub(super) fn join_with_password(&self, id: ConnId, conn: &mut Conn, req: JoinReq) {
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
        self.defer(move |shard| async move {
            let replies = shard
                .ask(1, |reply| shard.mesh.send(to, ShardMsg::Ip { ip, op: IpOp::PasswordAttempt { limit, reply } }))
                .await;
            if matches!(replies.first(), Some(Reply::Admit(true))) {
                shard.mesh.send(shard.mesh.owner_of(&req.room), ShardMsg::Join(Box::new(req)));
            } else {
                shard.with_conn(id, |svc, conn| {
                    svc.drop_pending(conn, &req, "too many password attempts from this address; wait a minute")
                });
            }
        });
    }

    /// Hashes a new room's password off the event loop, then sends the `create`.
    pub(super) fn create_with_password(&self, mut req: JoinReq, password: String) {
        self.defer(move |shard| async move {
            match password::hash(password).await {
                Some(hash) => {
                    req.kind = JoinKind::Create { password_hash: Some(Arc::from(hash)) };
                    shard.mesh.send(shard.mesh.owner_of(&req.room), ShardMsg::Join(Box::new(req)));
                }
                None => {
                    shard.with_conn(req.origin.conn, |svc, conn| {
                        svc.drop_pending(conn, &req, "could not hash the password")
                    });
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
    pub(super) fn check_password(&self, mut req: JoinReq, hash: Arc<str>, pw: Box<str>, epoch: u64) {
        self.defer(move |shard| async move {
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
}

impl Shard {
    /// Closes connections whose token expired (beyond the leeway), with 1008.
    pub(super) fn expire_sessions(&self) {
        let verifier = self.shared.auth.verifier();
        // Without token keys, expiries come from the connect proxy: no leeway.
        if verifier.is_none() && !self.proxies_connect() {
            return;
        }
        let now = Services::wall_secs();
        let expired: Vec<ConnId> = self
            .sessions
            .borrow()
            .iter()
            .filter(|(_, s)| s.expires.is_some_and(|e| verifier.map_or(e <= now, |v| v.expired(e, now))))
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

/// Whether an upgrade with this `Origin` header may connect: any when no origins are
/// configured, and a request without the header (not a browser) always.
fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        Some(origin) if !allowed.is_empty() => allowed.iter().any(|a| a == origin),
        _ => true,
    }
}

/// Why admission refuses an upgrade. Each is answered over HTTP, and the connection
/// closes (it lingers until the answer is read).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// The `Origin` is not in `--allowed-origins`.
    Origin,
    /// The identity (token or guest name) is not acceptable.
    Identity(AuthError),
    /// The server is at `--max-connections`.
    ServerFull,
    /// The address's owner shard refused a slot (`--max-connections-per-ip`).
    TooManyFromIp,
    /// The user is banned for now (`POST /api/disconnect` with `ban_secs`).
    Banned,
}

impl Refusal {
    /// The HTTP answer: 403 for the Origin, 401 (with the scheme to use) or 400 (a bad
    /// guest name) for the identity, 503 beyond the connection limits (try later).
    fn answer(&self) -> Answer {
        match self {
            Refusal::Origin => Answer::error(403, "origin_not_allowed", "this Origin may not connect"),
            Refusal::Identity(e) => {
                let answer = Answer::error(e.status(), e.code(), &e.to_string());
                if matches!(e, AuthError::BadName) {
                    answer
                } else {
                    answer.with_header("WWW-Authenticate: Bearer\r\n")
                }
            }
            Refusal::ServerFull => Answer::error(503, "server_full", "the server is at its connection limit"),
            Refusal::Banned => Answer::error(403, "banned", "this user is banned for now"),
            Refusal::TooManyFromIp => {
                Answer::error(503, "too_many_connections", "too many connections from this address")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::JwtError;

    fn body(a: &Answer) -> serde_json::Value {
        serde_json::from_slice(&a.body).expect("a JSON body")
    }

    #[test]
    fn any_origin_may_connect_when_none_are_configured() {
        assert!(origin_allowed(&[], Some("https://evil.example")));
        assert!(origin_allowed(&[], None));
    }

    #[test]
    fn configured_origins_are_matched_exactly_and_a_missing_header_passes() {
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(&allowed, Some("https://app.example")));
        assert!(!origin_allowed(&allowed, Some("https://app.example.evil")));
        assert!(!origin_allowed(&allowed, Some("http://app.example")));
        assert!(origin_allowed(&allowed, None), "not a browser: no Origin to check");
    }

    #[test]
    fn a_disallowed_origin_is_403() {
        let a = Refusal::Origin.answer();
        assert_eq!(a.status, 403);
        assert_eq!(body(&a)["error"], "origin_not_allowed");
        assert!(a.extra.is_empty());
    }

    #[test]
    fn identity_refusals_are_401_with_the_scheme_except_a_bad_name() {
        for e in [AuthError::TokenRequired, AuthError::NoKeyConfigured, AuthError::BadToken(JwtError::Expired)] {
            let a = Refusal::Identity(e.clone()).answer();
            assert_eq!(a.status, 401, "{e:?}");
            assert_eq!(a.extra, "WWW-Authenticate: Bearer\r\n", "{e:?}");
            assert_eq!(body(&a)["error"], e.code());
        }
        let a = Refusal::Identity(AuthError::BadName).answer();
        assert_eq!(a.status, 400);
        assert!(a.extra.is_empty(), "a bad guest name is not a credentials problem");
    }

    #[test]
    fn connection_limits_are_503() {
        let full = Refusal::ServerFull.answer();
        assert_eq!((full.status, body(&full)["error"].as_str()), (503, Some("server_full")));
        let ip = Refusal::TooManyFromIp.answer();
        assert_eq!((ip.status, body(&ip)["error"].as_str()), (503, Some("too_many_connections")));
    }
}
