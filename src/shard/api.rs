//! The server API beyond publish and the room pages: operator commands (disconnect and
//! ban, server-side subscribe and unsubscribe, history removal), batches of commands,
//! the room list and the server's info. Bodies are validated by the pure
//! `http::admin`; here they are carried out by asking the shards (and, in a cluster,
//! telling the other nodes over the bus).

use std::sync::Arc;

use serde::Serialize;

use super::msg::{AdminOp, PresenceReq, Query, Reply, Requester, ShardMsg};
use super::Services;
use crate::cluster::BusOut;
use crate::http::admin::{self, Method};
use crate::http::publish;
use crate::http::response::Answer;
use crate::metrics::RoomSummary;

/// Largest page of `GET /api/rooms`.
pub const ROOMS_PAGE_MAX: usize = 1000;

/// `GET /api/rooms` page when the request gives no `limit`.
pub const ROOMS_PAGE: usize = 100;

impl Services {
    /// Runs one API command on its JSON body (also each command of a batch).
    pub(super) async fn command(&self, method: Method, body: &[u8]) -> Answer {
        // The task that runs this may be polled at once, inside the dispatch that still
        // holds the connection table; an answer ready without waiting (a refused body)
        // must not be queued from there. One yield puts it behind that dispatch.
        futures_lite::future::yield_now().await;
        let op = match method {
            Method::Publish => {
                return match publish::parse(body, self.cfg.max_message_bytes, self.cfg.max_data_bytes) {
                    Ok(p) => self.publish(p).await,
                    Err(e) => super::http::publish_refusal(e),
                };
            }
            Method::Disconnect => admin::disconnect(body),
            Method::Subscribe => admin::membership(body, true),
            Method::Unsubscribe => admin::membership(body, false),
            Method::HistoryRemove => admin::history_remove(body),
        };
        match op {
            Ok(op) => self.admin(op).await,
            Err(e) => super::http::publish_refusal(e),
        }
    }

    /// Carries out an operator command on every shard (history: on the room's owner),
    /// and in a cluster on every other node too. Counts are this node's.
    async fn admin(&self, op: AdminOp) -> Answer {
        if let AdminOp::Subscribe { room, .. } = &op {
            // A private room is joined with its password, which the server API does not
            // have: refused here rather than by the owner, connection by connection.
            if self.is_private(room).await {
                return Answer::error(403, "forbidden", "`room` is private: its members join with its password");
            }
        }
        let op = Arc::new(op);
        let clustered = match &self.shared.bus {
            Some(bus) => bus.send(BusOut::Admin(op.clone())),
            None => false,
        };
        if let AdminOp::HistoryRemove { room } = &*op {
            let to = self.mesh.owner_of(room);
            let replies =
                self.ask(1, |reply| self.mesh.send(to, ShardMsg::Admin { op: op.clone(), reply: Some(reply) })).await;
            #[derive(Serialize)]
            struct Removed<'a> {
                room: &'a str,
                #[serde(skip_serializing_if = "Option::is_none")]
                epoch: Option<&'a str>,
            }
            return match replies.first() {
                Some(Reply::HistoryRemoved(Some(epoch))) => {
                    Answer::json(200, simd_json::to_vec(&Removed { room, epoch: Some(epoch) }).unwrap_or_default())
                }
                // Other nodes may hold the room even if this one does not.
                _ if clustered => {
                    Answer::json(200, simd_json::to_vec(&Removed { room, epoch: None }).unwrap_or_default())
                }
                _ => Answer::error(404, "no_such_room", "no room of that name"),
            };
        }
        let shards = self.mesh.len();
        let replies = self
            .ask(shards, |reply| self.mesh.send_all(|| ShardMsg::Admin { op: op.clone(), reply: Some(reply) }))
            .await;
        #[derive(Serialize)]
        struct Reached {
            connections: u32,
            refused: u32,
        }
        let mut reached = Reached { connections: 0, refused: 0 };
        for r in replies {
            if let Reply::Reached { done, refused } = r {
                reached.connections += done;
                reached.refused += refused;
            }
        }
        Answer::json(200, simd_json::to_vec(&reached).unwrap_or_default())
    }

    /// Whether the room's owner here knows `room` as private.
    async fn is_private(&self, room: &str) -> bool {
        let room: Arc<str> = Arc::from(room);
        let replies = self
            .ask(1, |reply| {
                let req = PresenceReq {
                    room: room.clone(),
                    after: None,
                    limit: 1,
                    private: false,
                    from: Requester::Api(reply),
                };
                self.mesh.send(self.mesh.owner_of(&room), ShardMsg::Presence(Box::new(req)));
            })
            .await;
        matches!(replies.first(), Some(Reply::Presence(Some(p))) if p.private)
    }

    /// `POST /api/batch`: every command in order, each answered with its own status and
    /// body; one failing does not stop the others.
    pub(super) async fn batch(&self, body: &[u8]) -> Answer {
        // See `command`: never answer from inside the dispatch that spawned this.
        futures_lite::future::yield_now().await;
        let commands = match admin::batch(body) {
            Ok(c) => c,
            Err(e) => return super::http::publish_refusal(e),
        };
        let mut out = b"{\"replies\":[".to_vec();
        for (i, (method, params)) in commands.iter().enumerate() {
            let answer = match method {
                Some(m) => self.command(*m, params).await,
                None => Answer::error(
                    400,
                    "bad_request",
                    "`method` must be one of publish, disconnect, subscribe, unsubscribe, history_remove",
                ),
            };
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("{{\"status\":{},\"body\":", answer.status).as_bytes());
            out.extend_from_slice(&answer.body);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        Answer::json(200, out)
    }

    /// `GET /api/rooms`: public and private rooms of this node whose names start with
    /// `prefix`, by name, `limit` per page after `after`, with member counts.
    pub(super) async fn rooms(&self, prefix: String, after: Option<String>, limit: usize) -> Answer {
        let (prefix, after): (Arc<str>, Option<Arc<str>>) = (Arc::from(prefix), after.map(Arc::from));
        let shards = self.mesh.len();
        // One more than the page from each shard: then "more remain" is exact.
        let query = || Query::Rooms { prefix: prefix.clone(), after: after.clone(), limit: limit + 1 };
        let replies = self.ask(shards, |reply| self.mesh.send_all(|| ShardMsg::Query { reply, query: query() })).await;
        let mut rooms: Vec<RoomSummary> = replies
            .into_iter()
            .flat_map(|r| match r {
                Reply::Rooms(page) => page,
                _ => Vec::new(),
            })
            .collect();
        rooms.sort_unstable_by(|a, b| a.room.cmp(&b.room));
        let more = rooms.len() > limit;
        rooms.truncate(limit);
        #[derive(Serialize)]
        struct Page<'a> {
            rooms: &'a [RoomSummary],
            #[serde(skip_serializing_if = "Option::is_none")]
            next: Option<&'a str>,
        }
        let next = if more { rooms.last().map(|r| r.room.as_str()) } else { None };
        Answer::json(200, simd_json::to_vec(&Page { rooms: &rooms, next }).unwrap_or_default())
    }

    /// `GET /api/info`: version, shards, connections and uptime of this node, and the
    /// cluster's live nodes.
    pub(super) fn info(&self) -> Answer {
        #[derive(Serialize)]
        struct Info {
            version: &'static str,
            shards: usize,
            connections: u64,
            uptime_ms: u64,
            nodes: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            node: Option<String>,
        }
        let report = self.shared.bus.as_ref().map(|b| b.report());
        let info = Info {
            version: env!("CARGO_PKG_VERSION"),
            shards: self.mesh.len(),
            connections: self.shared.websockets.load(std::sync::atomic::Ordering::Relaxed),
            uptime_ms: self.uptime_ms(),
            nodes: report.map_or(1, |r| r.nodes),
            node: report.map(|r| format!("{:016x}", r.node)),
        };
        Answer::json(200, simd_json::to_vec(&info).unwrap_or_default())
    }
}
