//! A connection while it speaks HTTP/1.1: request heads and bodies, keep-alive and
//! pipelining, the endpoints, and the upgrade to WebSocket.
//!
//! Endpoints that need other shards (`/stats`, `/metrics`, `/api/…`) run as a separate
//! task that asks them by message; meanwhile the connection is `busy` and buffers any
//! pipelined input, and it resumes serving when the answer has been queued.
//!
//! The serving code runs while the connection table is borrowed (methods of
//! [`Services`]); answers computed later reach the connection through
//! [`Services::defer`]. What to answer is decided by the pure functions at the end of
//! this file.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;

use super::conns::{Conn, ConnId, Phase};
use super::msg::{HistoryReq, PresenceReq, Publish, Query, Reply, Requester, ShardMsg};
use super::{Services, Shard};
use crate::http::publish::{self, PublishRequest, Target};
use crate::http::request::{self, Request, MAX_HEADERS};
use crate::http::response::Answer;
use crate::http::router::{self, Route};
use crate::http::{assets, prometheus, stats, HttpError};
use crate::metrics::{inc, Snapshot};
use crate::protocol;
use crate::protocol::client::{HISTORY_PAGE, HISTORY_PAGE_MAX, MAX_PAGE, PRESENCE_PAGE};
use crate::room::request::Extra;
use crate::room::BROADCAST_ROOM;
use crate::ws::handshake;

/// What serving the request at the front of the buffer did.
pub(super) enum Step {
    /// The request is not complete yet.
    NeedMore,
    /// Answered; `usize` bytes consumed; the connection stays in HTTP.
    Served(usize),
    /// An answer is being computed; `usize` bytes consumed.
    Busy(usize),
    /// Upgraded to WebSocket; bytes after `usize` are WebSocket frames.
    Upgraded(usize),
    /// The connection is closing (answered without keep-alive, or refused).
    Closed,
}

impl Services {
    /// Takes bytes read from a connection in HTTP phase.
    pub(super) fn on_http_bytes(&self, id: ConnId, conn: &mut Conn, data: &mut [u8]) {
        let Some(h) = conn.http_mut() else { return };
        h.buf.extend_from_slice(data);
        if h.busy {
            // Pipelined input while an answer is computed: bounded like one request.
            if pipelined_overflow(h.buf.len(), self.cfg.max_request_head, self.cfg.max_request_body) {
                self.http_refuse(conn, HttpError::HeadTooLarge);
            }
            return;
        }
        self.serve_http(id, conn);
    }

    /// Serves every complete request in the buffer, in order.
    pub(super) fn serve_http(&self, id: ConnId, conn: &mut Conn) {
        loop {
            let Some(h) = conn.http_mut() else { return };
            if h.busy || h.buf.is_empty() {
                return;
            }
            let mut buf = std::mem::take(&mut h.buf);
            match self.serve_one(id, conn, &buf) {
                Step::NeedMore => {
                    if let Some(h) = conn.http_mut() {
                        h.buf = buf;
                    }
                    return;
                }
                Step::Served(used) | Step::Busy(used) => {
                    buf.drain(..used);
                    if let Some(h) = conn.http_mut() {
                        h.buf = buf;
                    }
                }
                Step::Upgraded(used) => {
                    let rest = &mut buf[used..];
                    if !rest.is_empty() {
                        self.on_ws_bytes(id, conn, rest);
                    }
                    return;
                }
                Step::Closed => return,
            }
        }
    }

    fn serve_one(&self, id: ConnId, conn: &mut Conn, buf: &[u8]) -> Step {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let req = match request::parse(buf, &mut headers, self.cfg.max_request_head) {
            Ok(None) => return Step::NeedMore,
            Ok(Some(req)) => req,
            Err(e) => return self.http_refuse(conn, e),
        };
        let body_len = match req.content_length() {
            Ok(n) if n > self.cfg.max_request_body => return self.http_refuse(conn, HttpError::BodyTooLarge),
            Ok(n) => n,
            Err(e) => return self.http_refuse(conn, e),
        };
        let used = req.head_len + body_len;
        if buf.len() < used {
            return Step::NeedMore;
        }
        let body = &buf[req.head_len..used];
        let route = router::route(req.method, req.path);
        if route == Route::WebSocket {
            return self.upgrade(id, conn, &req, used, false);
        }
        if route == Route::Echo && self.cfg.echo_endpoint {
            return self.upgrade(id, conn, &req, used, true);
        }
        inc(&self.stats.http_requests);
        let keep = keep_alive(req.keep_alive(), self.is_draining());
        let head_only = req.method == "HEAD";
        let answer = match route {
            Route::WebSocket => return Step::Closed,
            Route::Asset(path) => asset_answer(path),
            Route::Health => self.health(),
            Route::Stats => {
                let room = req.query_param("room");
                let limit = req.query_param("limit").and_then(|l| l.parse().ok()).unwrap_or(self.cfg.stats_rooms);
                return self.answer_later(id, conn, used, keep, head_only, move |shard| async move {
                    shard.stats(room, limit).await
                });
            }
            Route::Metrics => {
                return self.answer_later(
                    id,
                    conn,
                    used,
                    keep,
                    head_only,
                    |shard| async move { shard.metrics().await },
                );
            }
            Route::Publish => match self.publish_request(&req, body) {
                Ok(p) => {
                    return self.answer_later(id, conn, used, keep, head_only, move |shard| async move {
                        shard.publish(p).await
                    });
                }
                Err(answer) => answer,
            },
            Route::Command(method) => match self.api_key_ok(&req) {
                Ok(()) => {
                    let body = body.to_vec();
                    return self.answer_later(id, conn, used, keep, head_only, move |shard| async move {
                        shard.command(method, &body).await
                    });
                }
                Err(answer) => answer,
            },
            Route::Batch => match self.api_key_ok(&req) {
                Ok(()) => {
                    let body = body.to_vec();
                    return self.answer_later(id, conn, used, keep, head_only, move |shard| async move {
                        shard.batch(&body).await
                    });
                }
                Err(answer) => answer,
            },
            Route::Rooms => match self.api_key_ok(&req) {
                Ok(()) => {
                    let prefix = req.query_param("prefix").unwrap_or_default();
                    let after = req.query_param("after");
                    let limit = page_limit(
                        req.query_param("limit"),
                        super::api::ROOMS_PAGE as u32,
                        super::api::ROOMS_PAGE_MAX as u32,
                    );
                    return self.answer_later(id, conn, used, keep, head_only, move |shard| async move {
                        shard.rooms(prefix, after, limit as usize).await
                    });
                }
                Err(answer) => answer,
            },
            Route::Info => match self.api_key_ok(&req) {
                Ok(()) => self.info(),
                Err(answer) => answer,
            },
            Route::RoomPresence(room) => {
                let after = req.query_param("after");
                let limit = page_limit(req.query_param("limit"), PRESENCE_PAGE, MAX_PAGE);
                let key_ok = publish::authorize(self.cfg.api_key.as_deref(), req.header("authorization")).is_ok();
                return self.answer_later(id, conn, used, keep, head_only, move |shard| async move {
                    shard.presence(room, after, limit, key_ok).await
                });
            }
            Route::RoomHistory(room) => {
                let before = req.query_param("before").and_then(|b| b.parse().ok());
                let limit = page_limit(req.query_param("limit"), HISTORY_PAGE, HISTORY_PAGE_MAX);
                let key_ok = publish::authorize(self.cfg.api_key.as_deref(), req.header("authorization")).is_ok();
                return self.answer_later(id, conn, used, keep, head_only, move |shard| async move {
                    shard.history(room, before, limit, key_ok).await
                });
            }
            Route::MethodNotAllowed(allow) => method_not_allowed(allow),
            Route::NotFound | Route::Echo => not_found(),
        };
        self.respond(conn, &answer, keep, head_only, used)
    }

    /// Queues `answer`; keeps the connection for the next request or closes it.
    pub(super) fn respond(&self, conn: &mut Conn, answer: &Answer, keep: bool, head_only: bool, used: usize) -> Step {
        if answer.status >= 400 {
            inc(&self.stats.http_errors);
        }
        conn.push(answer.render(keep, head_only), self.caps);
        if keep {
            conn.phase_since = self.now();
            Step::Served(used)
        } else {
            // The answer must reach the client even if it sent more (a body we did not
            // read, pipelined requests): linger rather than close (see `Phase`).
            conn.enter(Phase::Linger, self.now());
            Step::Closed
        }
    }

    /// Answers a request that cannot be parsed, and closes: after a malformed request
    /// the position of the next one in the stream is unknown.
    fn http_refuse(&self, conn: &mut Conn, e: HttpError) -> Step {
        self.respond(conn, &Answer::error(e.status(), e.code(), &e.to_string()), false, false, 0)
    }

    /// Runs `answer` as its own task (given the shard when it runs); the connection
    /// waits (`busy`) and resumes when the answer is queued.
    fn answer_later<F, Fut>(
        &self,
        id: ConnId,
        conn: &mut Conn,
        used: usize,
        keep: bool,
        head_only: bool,
        answer: F,
    ) -> Step
    where
        F: FnOnce(Rc<Shard>) -> Fut + 'static,
        Fut: Future<Output = Answer> + 'static,
    {
        if let Some(h) = conn.http_mut() {
            h.busy = true;
        }
        self.defer(move |shard| async move {
            let answer = answer(shard.clone()).await;
            shard.with_conn(id, |svc, conn| {
                let keep = keep_alive(keep, svc.is_draining());
                if answer.status >= 400 {
                    inc(&svc.stats.http_errors);
                }
                conn.push(answer.render(keep, head_only), svc.caps);
                let now = svc.now();
                match conn.http_mut() {
                    Some(h) if keep => {
                        h.busy = false;
                        h.reparse = true;
                        conn.phase_since = now;
                    }
                    _ => conn.enter(Phase::Linger, now),
                }
                conn.wake();
            });
        });
        Step::Busy(used)
    }

    /// Validates an upgrade request and, if it is one, hands it to admission (identity,
    /// limits), which switches the connection to WebSocket. `echo`: the conformance echo
    /// endpoint, which has no identity and is opened at once (see `open_echo`).
    fn upgrade(&self, id: ConnId, conn: &mut Conn, req: &Request<'_, '_>, used: usize, echo: bool) -> Step {
        let upgrade = match handshake::validate(req) {
            Ok(u) => u,
            Err(e) => {
                let answer = Answer::error(e.status(), "bad_handshake", &e.to_string()).with_header(e.headers());
                return self.respond(conn, &answer, false, false, used);
            }
        };
        if self.is_draining() {
            return self.respond(conn, &draining(), false, false, used);
        }
        if echo {
            return self.open_echo(conn, &upgrade, used);
        }
        self.admit(id, conn, req, upgrade, used)
    }

    fn health(&self) -> Answer {
        #[derive(Serialize)]
        struct Health {
            status: &'static str,
            shard: usize,
            uptime_ms: u64,
            bus: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            node: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            nodes: Option<u64>,
            /// `up`/`down` with an application backend configured (docs/BACKEND.md).
            #[serde(skip_serializing_if = "Option::is_none")]
            backend: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            webhook_queue: Option<u64>,
        }
        let draining = self.is_draining();
        let (status, state) = health_status(draining);
        let report = self.shared.bus.as_ref().map(|b| b.report());
        let backend = self.shared.backend.as_ref().map(|b| b.report());
        let body = Health {
            status: state,
            shard: self.id,
            uptime_ms: self.uptime_ms(),
            bus: report.map_or(crate::cluster::BusState::Off.as_str(), |r| r.state),
            node: report.map(|r| format!("{:016x}", r.node)),
            nodes: report.map(|r| r.nodes),
            backend: backend.map(|b| b.state),
            webhook_queue: backend.filter(|_| self.cfg.backend.webhook_url.is_some()).map(|b| b.webhook_queue),
        };
        Answer::json(status, simd_json::to_vec(&body).unwrap_or_default())
    }

    /// Every shard's snapshot, in shard order.
    async fn gather(&self, room: Option<Arc<str>>, limit: usize) -> Vec<Snapshot> {
        let shards = self.mesh.len();
        let replies = self
            .ask(shards, |reply| {
                self.mesh.send_all(|| ShardMsg::Query { reply, query: Query::Stats { room: room.clone(), limit } })
            })
            .await;
        let mut snaps: Vec<Snapshot> = replies
            .into_iter()
            .filter_map(|r| match r {
                Reply::Stats(s) => Some(*s),
                _ => None,
            })
            .collect();
        snaps.sort_unstable_by_key(|s| s.shard);
        snaps
    }

    async fn stats(&self, room: Option<String>, limit: usize) -> Answer {
        let limit = limit.min(10_000);
        if let Some(room) = room {
            let snaps = self.gather(Some(Arc::from(room)), 1).await;
            return match stats::render_room(&snaps) {
                Some(body) => Answer::json(200, body),
                None => Answer::error(404, "no_such_room", "no room of that name has members"),
            };
        }
        let snaps = self.gather(None, limit).await;
        let ctx = stats::Context {
            uptime_ms: self.uptime_ms(),
            started_at_ms: Self::wall_ms().saturating_sub(self.uptime_ms()),
            draining: self.is_draining(),
            limit,
            bus: self.shared.bus.as_ref().map(|b| b.report()),
        };
        Answer::json(200, stats::render(&snaps, ctx))
    }

    async fn metrics(&self) -> Answer {
        let snaps = self.gather(None, 0).await;
        Answer {
            status: 200,
            content_type: prometheus::CONTENT_TYPE,
            extra: String::new(),
            body: prometheus::render(
                snaps,
                self.shared.bus.as_ref().map(|b| b.report()),
                self.shared.backend.as_ref().map(|b| b.report()),
            )
            .into_bytes(),
        }
    }

    /// Checks the API key of a server API request (a wrong one is counted).
    fn api_key_ok(&self, req: &Request<'_, '_>) -> Result<(), Answer> {
        publish::authorize(self.cfg.api_key.as_deref(), req.header("authorization")).map_err(|e| {
            if e == publish::PublishError::Unauthorized {
                inc(&self.stats.auth_rejections);
            }
            publish_refusal(e)
        })
    }

    /// Checks the API key and the body of `POST /api/publish`.
    fn publish_request(&self, req: &Request<'_, '_>, body: &[u8]) -> Result<PublishRequest, Answer> {
        if let Err(e) = publish::authorize(self.cfg.api_key.as_deref(), req.header("authorization")) {
            if e == publish::PublishError::Unauthorized {
                inc(&self.stats.auth_rejections);
            }
            return Err(publish_refusal(e));
        }
        publish::parse(body, self.cfg.max_message_bytes, self.cfg.max_data_bytes).map_err(publish_refusal)
    }

    /// Publishes through the same owners, sequencing and serialized-once frames as client
    /// messages, and reports what was reached.
    pub(super) async fn publish(&self, p: PublishRequest) -> Answer {
        #[derive(Serialize)]
        struct Outcome {
            #[serde(skip_serializing_if = "Option::is_none")]
            seq: Option<u64>,
            rooms: usize,
            shards: usize,
        }
        inc(&self.stats.api_publishes);
        let user: Arc<str> = Arc::from(p.user);
        let text: Option<Box<str>> = p.text.map(Box::from);
        let volatile = p.volatile;
        let extra = Extra {
            data: p.data.map(Arc::from),
            event: p.event.map(Arc::from),
            tags: p.tags.map(Arc::from),
            volatile,
            skip: None,
            idempotency_key: p.idempotency_key.map(Arc::from),
        };
        let shards = self.mesh.len();
        let (rooms, want): (Vec<Arc<str>>, usize) = match &p.target {
            Target::Room(r) => (vec![Arc::from(r.as_str())], 1),
            Target::Users(us) => (us.iter().map(|u| Arc::from(protocol::user_room(u))).collect(), us.len()),
            Target::Everyone => (Vec::new(), 1),
        };
        let replies = self
            .ask(want, |reply| {
                let from = Requester::Api(reply);
                let msg = |room: Arc<str>| Publish {
                    room,
                    user: user.clone(),
                    text: text.clone(),
                    extra: extra.clone(),
                    from: from.clone(),
                };
                if p.target == Target::Everyone {
                    self.mesh.send(
                        self.mesh.owner_of(BROADCAST_ROOM),
                        ShardMsg::Broadcast(Box::new(msg(Arc::from(BROADCAST_ROOM)))),
                    );
                }
                for room in rooms {
                    self.mesh.send(self.mesh.owner_of(&room), ShardMsg::Publish(Box::new(msg(room))));
                }
            })
            .await;
        let mut reached = 0;
        let mut seq = None;
        let mut hit = vec![false; shards];
        for r in replies {
            if let Reply::Published { seq: s, shards } = r {
                if s.is_some() {
                    reached += 1;
                    seq = s;
                }
                for sh in shards {
                    if let Some(h) = hit.get_mut(usize::from(sh)) {
                        *h = true;
                    }
                }
            }
        }
        let outcome = Outcome {
            // Volatile messages have no seq (the owner answers 0: handed out).
            seq: if matches!(p.target, Target::Users(_)) || volatile { None } else { seq },
            rooms: if p.target == Target::Everyone { 0 } else { reached },
            shards: hit.iter().filter(|h| **h).count(),
        };
        Answer::json(200, simd_json::to_vec(&outcome).unwrap_or_default())
    }

    /// A page of a room's history. Private rooms need the API key.
    async fn history(&self, room: String, before: Option<u64>, limit: u32, key_ok: bool) -> Answer {
        let room: Arc<str> = Arc::from(room);
        let replies = self
            .ask(1, |reply| {
                let req = HistoryReq { room: room.clone(), before, limit, from: Requester::Api(reply) };
                self.mesh.send(self.mesh.owner_of(&room), ShardMsg::History(Box::new(req)));
            })
            .await;
        history_answer(replies.into_iter().next(), key_ok)
    }

    async fn presence(&self, room: String, after: Option<String>, limit: u32, key_ok: bool) -> Answer {
        let room: Arc<str> = Arc::from(room);
        let replies = self
            .ask(1, |reply| {
                let req = PresenceReq {
                    room: room.clone(),
                    after: after.map(Box::from),
                    limit,
                    private: false,
                    from: Requester::Api(reply),
                };
                self.mesh.send(self.mesh.owner_of(&room), ShardMsg::Presence(Box::new(req)));
            })
            .await;
        presence_answer(replies.into_iter().next(), key_ok)
    }
}

/// Whether the connection stays open after this answer: the client asked for
/// keep-alive, and the shard is not draining (then every answer closes, so clients
/// reconnect elsewhere).
fn keep_alive(requested: bool, draining: bool) -> bool {
    requested && !draining
}

/// Whether the input buffered while an answer is computed is over the bound of one
/// request (head and body): a client pipelining more than that is refused.
fn pipelined_overflow(buffered: usize, max_head: usize, max_body: usize) -> bool {
    buffered > max_head + max_body
}

/// The page size of an API request: `limit` when it parses, else `default`, within
/// 1..=`max`.
fn page_limit(limit: Option<String>, default: u32, max: u32) -> u32 {
    limit.and_then(|l| l.parse().ok()).unwrap_or(default).clamp(1, max)
}

/// An embedded web client file, or 404.
fn asset_answer(path: &str) -> Answer {
    match assets::get(path) {
        Some(a) => Answer { status: 200, content_type: a.content_type, extra: String::new(), body: a.body.to_vec() },
        None => Answer::error(404, "not_found", "no such file"),
    }
}

/// A known path asked with a method it does not take: 405 naming the ones it does.
fn method_not_allowed(allow: &str) -> Answer {
    Answer::error(405, "method_not_allowed", "method not allowed").with_header(&format!("Allow: {allow}\r\n"))
}

/// No such endpoint.
fn not_found() -> Answer {
    Answer::error(404, "not_found", "no such endpoint; WebSocket clients connect to /ws")
}

/// An upgrade while the shard drains: load balancers should move the client away.
fn draining() -> Answer {
    Answer::error(503, "draining", "the server is shutting down")
}

/// `/health`'s status code and state: 503 while draining, so load balancers stop
/// sending new clients.
fn health_status(draining: bool) -> (u16, &'static str) {
    if draining {
        (503, "draining")
    } else {
        (200, "ok")
    }
}

/// A refused `POST /api/publish`; a missing or wrong key says which scheme to use.
pub(super) fn publish_refusal(e: publish::PublishError) -> Answer {
    let answer = Answer::error(e.status(), e.code(), &e.to_string());
    if e.status() == 401 {
        answer.with_header("WWW-Authenticate: Bearer\r\n")
    } else {
        answer
    }
}

/// The answer to `GET /api/rooms/{room}/history` from the owner's reply (none: it did
/// not answer in time). A private room's history needs the API key (`key_ok`).
fn history_answer(reply: Option<Reply>, key_ok: bool) -> Answer {
    match reply {
        Some(Reply::History(Some((_, true)))) if !key_ok => {
            Answer::error(403, "forbidden", "this room is private: its history needs the API key")
        }
        Some(Reply::History(Some((json, _)))) => Answer::json(200, json),
        _ => Answer::error(404, "no_such_room", "no room of that name"),
    }
}

/// The answer to `GET /api/rooms/{room}/presence` from the owner's reply (none: it did
/// not answer in time). A private room's presence needs the API key (`key_ok`).
fn presence_answer(reply: Option<Reply>, key_ok: bool) -> Answer {
    #[derive(Serialize)]
    struct Page<'a> {
        room: &'a str,
        count: u32,
        users: Vec<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<&'a str>,
    }
    match reply {
        Some(Reply::Presence(Some(p))) if p.private && !key_ok => {
            Answer::error(403, "forbidden", "this room is private: its presence needs the API key")
        }
        Some(Reply::Presence(Some(p))) => {
            let page = Page {
                room: &p.room,
                count: p.count,
                users: p.users.iter().map(|u| &**u).collect(),
                next: p.next.as_deref(),
            };
            Answer::json(200, simd_json::to_vec(&page).unwrap_or_default())
        }
        _ => Answer::error(404, "no_such_room", "no room of that name has members"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::PresencePage;

    fn body(a: &Answer) -> serde_json::Value {
        serde_json::from_slice(&a.body).expect("a JSON body")
    }

    #[test]
    fn keep_alive_when_asked_and_not_draining() {
        assert!(keep_alive(true, false));
        assert!(!keep_alive(false, false));
        assert!(!keep_alive(true, true), "a draining shard closes after every answer");
    }

    #[test]
    fn pipelined_input_is_bounded_by_one_request() {
        assert!(!pipelined_overflow(8 + 16, 8, 16));
        assert!(pipelined_overflow(8 + 16 + 1, 8, 16));
    }

    #[test]
    fn page_limits_default_parse_and_clamp() {
        assert_eq!(page_limit(None, 50, 100), 50);
        assert_eq!(page_limit(Some("7".into()), 50, 100), 7);
        assert_eq!(page_limit(Some("nope".into()), 50, 100), 50);
        assert_eq!(page_limit(Some("-3".into()), 50, 100), 50, "not a u32");
        assert_eq!(page_limit(Some("0".into()), 50, 100), 1);
        assert_eq!(page_limit(Some("100000".into()), 50, 100), 100);
    }

    #[test]
    fn fixed_routes_answer_without_the_shard() {
        assert_eq!(asset_answer("/").status, 200);
        assert_eq!(asset_answer("/nope.js").status, 404);
        let a = method_not_allowed("GET, HEAD");
        assert_eq!((a.status, a.extra.as_str()), (405, "Allow: GET, HEAD\r\n"));
        let a = not_found();
        assert_eq!((a.status, body(&a)["error"].as_str()), (404, Some("not_found")));
        let a = draining();
        assert_eq!((a.status, body(&a)["error"].as_str()), (503, Some("draining")));
    }

    #[test]
    fn health_is_503_while_draining() {
        assert_eq!(health_status(false), (200, "ok"));
        assert_eq!(health_status(true), (503, "draining"));
    }

    #[test]
    fn publish_refusals_name_the_scheme_only_for_a_bad_key() {
        let a = publish_refusal(publish::PublishError::Unauthorized);
        assert_eq!((a.status, a.extra.as_str()), (401, "WWW-Authenticate: Bearer\r\n"));
        let a = publish_refusal(publish::PublishError::Disabled);
        assert_eq!((a.status, a.extra.as_str()), (403, ""));
        let a = publish_refusal(publish::PublishError::BadRequest("no".into()));
        assert_eq!((a.status, body(&a)["error"].as_str()), (400, Some("bad_request")));
    }

    #[test]
    fn history_answers() {
        let page = || Some(Reply::History(Some((b"{\"m\":1}".to_vec(), false))));
        let private = || Some(Reply::History(Some((b"{}".to_vec(), true))));
        assert_eq!(history_answer(page(), false), Answer::json(200, b"{\"m\":1}".to_vec()));
        assert_eq!(history_answer(private(), false).status, 403);
        assert_eq!(history_answer(private(), true).status, 200);
        assert_eq!(history_answer(Some(Reply::History(None)), true).status, 404);
        assert_eq!(history_answer(None, true).status, 404, "no answer in time");
        assert_eq!(history_answer(Some(Reply::Admit(true)), true).status, 404);
    }

    #[test]
    fn presence_answers() {
        let page = |private| {
            Some(Reply::Presence(Some(PresencePage {
                room: "r".into(),
                count: 3,
                users: vec!["a".into(), "b".into()],
                next: Some("b".into()),
                private,
            })))
        };
        let a = presence_answer(page(false), false);
        assert_eq!(a.status, 200);
        assert_eq!(body(&a), serde_json::json!({"room": "r", "count": 3, "users": ["a", "b"], "next": "b"}));
        assert_eq!(presence_answer(page(true), false).status, 403);
        assert_eq!(presence_answer(page(true), true).status, 200);
        assert_eq!(presence_answer(Some(Reply::Presence(None)), true).status, 404);
        assert_eq!(presence_answer(None, true).status, 404);
    }
}
