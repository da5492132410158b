//! The shard side of the application backend (docs/BACKEND.md): the connect proxy at
//! upgrade, the subscribe proxy at a client's join, the publish proxy at a client's
//! message, and webhook events from the rooms this shard owns.
//!
//! A proxy call never makes the shard wait: the request is handed to the backend thread
//! and the one connection's request waits in a task of its own ([`Services::defer`]),
//! which applies the answer once it arrives. Calls waiting per shard are bounded by
//! `--proxy-max-in-flight` (over it: `unavailable`, counted). A client's proxied
//! messages are applied in its send order: each connection has one chain of answers,
//! drained front to back, while the calls themselves run concurrently.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::conns::{Conn, ConnId, Membership};
use super::http::Step;
use super::msg::{JoinReq, ShardMsg};
use super::{Services, Shard};
use crate::auth::grants::Pattern;
use crate::auth::{token_from_protocols, Identity};
use crate::backend::proto::{
    self, parse_answer, CallError, ConnectAnswer, ConnectClaims, ConnectRequest, PublishRequest, RoomAnswer,
    SubscribeRequest,
};
use crate::backend::{Backend, CallResult, Endpoint};
use crate::http::request::Request;
use crate::http::response::Answer;
use crate::metrics::inc;
use crate::protocol::{server, ClientError, ErrorCode};
use crate::room::request::{Publish, Requester};
use crate::ws::deflate::Agreement;
use crate::ws::handshake::{self, Upgrade};

/// A membership whose join waits for the subscribe proxy has this epoch (a joined one
/// gets the room's from its ack; a pending one has 0 until then): messages, presence and
/// history requests for the room are refused until the backend allows the join.
pub(super) const AWAITING_BACKEND: u32 = u32::MAX;

/// What a join does once the backend allowed it.
pub(super) enum JoinNext {
    /// Send it to the room's owner.
    Send,
    /// Check the per-IP password attempt limit first.
    Password,
    /// Hash the new room's password first.
    Create(String),
}

/// One connection's proxied messages, in send order.
#[derive(Default)]
pub(crate) struct Chain {
    queue: VecDeque<(tokio::sync::oneshot::Receiver<CallResult>, Publish)>,
    /// Whether its drainer task runs (the queue may be empty while it awaits an answer).
    running: bool,
}

impl Services {
    fn backend(&self) -> Option<&Backend> {
        self.shared.backend.as_ref()
    }

    /// Takes a slot for one proxy call, or counts the refusal (`--proxy-max-in-flight`).
    fn take_call_slot(&self, backend: &Backend) -> bool {
        let n = self.proxy_in_flight.get();
        if !proto::may_call(n, backend.cfg.max_in_flight) {
            backend.busy();
            return false;
        }
        self.proxy_in_flight.set(n + 1);
        true
    }

    fn release_call_slot(&self) {
        self.proxy_in_flight.set(self.proxy_in_flight.get().saturating_sub(1));
    }

    /// Whether `--proxy-connect-url` decides upgrades.
    pub(super) fn proxies_connect(&self) -> bool {
        self.backend().is_some_and(|b| b.cfg.connect_url.is_some())
    }

    /// Admission through the connect proxy: the upgrade's facts go to the backend, and
    /// the connection waits (busy) for its answer; allowed, admission goes on with the
    /// identity the backend gave (bans, connection limits); denied, the backend's status
    /// and code are the HTTP answer; no answer (down, timeout, bad body): 503.
    pub(super) fn admit_via_backend(
        &self,
        id: ConnId,
        conn: &mut Conn,
        req: &Request<'_, '_>,
        up: Upgrade,
        used: usize,
    ) -> Step {
        let Some(backend) = self.backend() else {
            let answer = Answer::error(503, "backend_unavailable", "no application backend is configured");
            return self.respond(conn, &answer, false, false, used);
        };
        if !self.take_call_slot(backend) {
            let answer = Answer::error(503, "unavailable", "too many connections waiting for the application backend");
            return self.respond(conn, &answer, false, false, used);
        }
        let offered = token_from_protocols(&up.protocols);
        let token = req.query_param("token").or_else(|| offered.map(|(t, _)| t.to_owned()));
        let protocol = offered
            .map(|(_, selected)| selected.to_owned())
            .or_else(|| up.protocols.iter().find(|p| *p == "corecast").cloned());
        let (claims, token_error) = match (token, self.shared.auth.verifier()) {
            (None, _) => (None, None),
            (Some(_), None) => (None, Some("this server accepts no tokens".to_owned())),
            (Some(t), Some(v)) => match v.verify(&t, Services::wall_secs()) {
                Ok(c) => (Some(ConnectClaims { sub: c.sub, name: c.name, exp: c.exp, rooms: c.rooms }), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let cfg = &backend.cfg;
        let headers =
            cfg.connect_headers.iter().filter_map(|h| req.header_str(h).map(|v| (h.clone(), v.to_owned()))).collect();
        let facts = ConnectRequest {
            ts: Services::wall_ms(),
            remote_addr: conn.peer.to_string(),
            query: req.query.to_owned(),
            headers,
            cookies: cfg
                .connect_cookies
                .then(|| req.header_str("cookie").map(proto::parse_cookies).unwrap_or_default()),
            claims,
            token_error,
            name: req.query_param("name"),
        };
        let deflate = self.deflate_offer(up.deflate);
        let accept = handshake::accept_response_with(&up, protocol.as_deref(), deflate.as_ref());
        let rx = backend.call(Endpoint::Connect, serde_json::to_vec(&facts).unwrap_or_default());
        if let Some(h) = conn.http_mut() {
            h.busy = true;
        }
        self.defer(move |shard| async move {
            let result = rx.await.unwrap_or(Err(CallError::Stopped));
            shard.release_call_slot();
            let answer = result.and_then(|body| parse_answer::<ConnectAnswer>(&body));
            shard.with_conn(id, |svc, conn| {
                svc.on_connect_answer(id, conn, answer, accept, deflate);
                conn.wake();
            });
        });
        Step::Busy(used)
    }

    fn on_connect_answer(
        &self,
        id: ConnId,
        conn: &mut Conn,
        answer: Result<ConnectAnswer, CallError>,
        accept: Bytes,
        deflate: Option<Agreement>,
    ) {
        let refuse = |svc: &Services, conn: &mut Conn, a: Answer| {
            inc(&svc.stats.auth_rejections);
            svc.respond(conn, &a, false, false, 0);
        };
        match answer {
            Ok(ConnectAnswer::Allow { user, .. }) if !proto::valid_user(&user) => {
                let a = Answer::error(502, "bad_backend_answer", "the application backend named an invalid user");
                refuse(self, conn, a);
            }
            Ok(ConnectAnswer::Allow { user, name, rooms, expires_at }) => {
                let identity = Identity {
                    user: Arc::from(user),
                    name,
                    rooms: rooms.map(|r| r.into_iter().map(Pattern::new).collect()),
                    expires: expires_at,
                };
                self.admit_identity(id, conn, identity, accept, deflate, 0);
            }
            Ok(ConnectAnswer::Deny { status, code, message }) => {
                let (status, code, message) = proto::denial(status, code.as_deref(), message.as_deref());
                refuse(self, conn, Answer::error(status, &code, &message));
            }
            Err(e) => {
                tracing::debug!(peer = %conn.peer, error = %e, "connect proxy failed; refusing the upgrade");
                refuse(self, conn, Answer::error(503, "backend_unavailable", &e.to_string()));
            }
        }
    }

    /// Goes on with a join whose checks passed (`req` is recorded as pending): through
    /// the subscribe proxy first for a client's join of a public room when
    /// `--proxy-subscribe-url` is set, directly otherwise.
    pub(super) fn join_checked(&self, id: ConnId, conn: &mut Conn, req: JoinReq, next: JoinNext) {
        let Some(backend) = self.backend().filter(|b| b.cfg.subscribe_url.is_some()) else {
            self.continue_join(id, conn, req, next);
            return;
        };
        if !self.take_call_slot(backend) {
            self.undo_join(conn, &req, ErrorCode::Unavailable, "too many requests waiting for the application backend");
            return;
        }
        let action = if matches!(next, JoinNext::Create(_)) || matches!(req.kind, super::msg::JoinKind::Create { .. }) {
            "create"
        } else {
            "join"
        };
        let label = self.conn_label(id);
        let body =
            SubscribeRequest { ts: Services::wall_ms(), user: &conn.user, room: &req.room, conn: &label, action };
        let rx = backend.call(Endpoint::Subscribe, serde_json::to_vec(&body).unwrap_or_default());
        if let Some(m) = pending_membership(&mut conn.rooms, &req) {
            m.epoch = AWAITING_BACKEND;
        }
        self.defer(move |shard| async move {
            let result = rx.await.unwrap_or(Err(CallError::Stopped));
            shard.release_call_slot();
            let answer = result.and_then(|body| parse_answer::<RoomAnswer>(&body));
            shard.with_conn(id, |svc, conn| {
                // Left (or closed) meanwhile: nothing to do.
                let Some(m) = pending_membership(&mut conn.rooms, &req) else { return };
                match answer {
                    Ok(RoomAnswer::Allow | RoomAnswer::Replace { .. }) => {
                        m.epoch = 0;
                        svc.continue_join(id, conn, req, next);
                    }
                    Ok(RoomAnswer::Deny { message }) => {
                        let why = message.as_deref().unwrap_or("the application backend refused this join");
                        svc.undo_join(conn, &req, ErrorCode::Forbidden, why);
                    }
                    Err(e) => {
                        let why = format!("the application backend could not be asked: {e}");
                        svc.undo_join(conn, &req, ErrorCode::Unavailable, &why);
                    }
                }
            });
        });
    }

    fn continue_join(&self, id: ConnId, conn: &mut Conn, req: JoinReq, next: JoinNext) {
        match next {
            JoinNext::Send => self.send_join(req),
            JoinNext::Password => self.join_with_password(id, conn, req),
            JoinNext::Create(pw) => self.create_with_password(req, pw),
        }
    }

    /// Drops the pending membership of `req` and tells the client `code` and `why`.
    fn undo_join(&self, conn: &mut Conn, req: &JoinReq, code: ErrorCode, why: &str) {
        if let Some(i) = conn.rooms.iter().position(|m| *m.room == *req.room && m.pending == req.token) {
            conn.rooms.remove(i);
        }
        inc(&self.stats.client_errors);
        self.push(conn, server::error(code, why, req.origin.reference.as_deref()));
    }

    /// Sends a client's message on: to the room's owner, or first through the publish
    /// proxy when `--proxy-publish-url` is set (in the connection's send order).
    pub(super) fn publish_checked(&self, id: ConnId, conn: &Conn, publish: Publish) -> Result<(), ClientError> {
        let Some(backend) = self.backend().filter(|b| b.cfg.publish_url.is_some()) else {
            self.mesh.send(self.mesh.owner_of(&publish.room), ShardMsg::Publish(Box::new(publish)));
            return Ok(());
        };
        if !self.take_call_slot(backend) {
            return Err(ClientError::new(
                ErrorCode::Unavailable,
                "too many messages waiting for the application backend",
            ));
        }
        let label = self.conn_label(id);
        let data = publish.extra.data.as_deref().and_then(|d| serde_json::from_slice(d).ok());
        let body = PublishRequest {
            ts: Services::wall_ms(),
            user: &conn.user,
            room: &publish.room,
            conn: &label,
            text: publish.text.as_deref(),
            data,
            event: publish.extra.event.as_deref(),
        };
        let rx = backend.call(Endpoint::Publish, serde_json::to_vec(&body).unwrap_or_default());
        let start = {
            let mut chains = self.chains.borrow_mut();
            let chain = chains.entry(id).or_default();
            chain.queue.push_back((rx, publish));
            !std::mem::replace(&mut chain.running, true)
        };
        if start {
            self.defer(move |shard| drain_chain(shard, id));
        }
        Ok(())
    }
}

/// Applies connection `id`'s proxied messages in order until its chain is empty.
async fn drain_chain(shard: Rc<Shard>, id: ConnId) {
    loop {
        let next = shard.chains.borrow_mut().get_mut(&id).and_then(|c| c.queue.pop_front());
        let Some((rx, mut publish)) = next else {
            shard.chains.borrow_mut().remove(&id);
            return;
        };
        let result = rx.await.unwrap_or(Err(CallError::Stopped));
        shard.release_call_slot();
        let answer = result.and_then(|body| parse_answer::<RoomAnswer>(&body));
        let refusal = match answer {
            Ok(RoomAnswer::Allow) => None,
            Ok(RoomAnswer::Replace { text, data }) => {
                // Fields the backend gives replace the client's; absent ones are kept.
                if let Some(text) = text {
                    publish.text = Some(text.into_boxed_str());
                }
                if let Some(data) = data.filter(|d| !d.is_null()) {
                    publish.extra.data = Some(Arc::from(data.to_string().into_bytes()));
                }
                None
            }
            Ok(RoomAnswer::Deny { message }) => Some((
                ErrorCode::Forbidden,
                message.unwrap_or_else(|| "the application backend refused this message".to_owned()),
            )),
            Err(e) => Some((ErrorCode::Unavailable, format!("the application backend could not be asked: {e}"))),
        };
        let reference = match &publish.from {
            Requester::Conn(c) => c.reference.clone(),
            _ => None,
        };
        shard.with_conn(id, |svc, conn| match refusal {
            None => svc.mesh.send(svc.mesh.owner_of(&publish.room), ShardMsg::Publish(Box::new(publish))),
            Some((code, why)) => {
                inc(&svc.stats.client_errors);
                svc.push(conn, server::error(code, &why, reference.as_deref()));
            }
        });
    }
}

/// The pending membership `req` recorded, if the connection still has it.
fn pending_membership<'a>(rooms: &'a mut [Membership], req: &JoinReq) -> Option<&'a mut Membership> {
    rooms.iter_mut().find(|m| *m.room == *req.room && m.pending == req.token)
}
