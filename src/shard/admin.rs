//! Operator commands from the server API (`POST /api/disconnect`, `/api/subscribe`,
//! `/api/unsubscribe`, `/api/history/remove`), carried out on one shard for the
//! connections it holds (or, for history, the rooms it owns). Every shard of every node
//! gets the user commands; each answers how many of its connections they applied to.
//!
//! Bans live in each shard's own table (every shard receives the command), so the
//! upgrade check reads local state only.

use std::sync::Arc;

use super::conn::PLAIN_JOIN;
use super::conns::ConnId;
use super::msg::{AdminOp, Reply};
use super::{Services, Shard};
use crate::protocol::server;

/// The `reason` of the `left` frame a server-side unsubscribe sends.
pub const UNSUBSCRIBED: &str = "unsubscribed by the server";

impl Shard {
    /// Carries out `op` here; the answer for the API caller.
    pub(super) fn on_admin(&self, op: &AdminOp) -> Reply {
        let (mut done, mut refused) = (0u32, 0u32);
        match op {
            AdminOp::HistoryRemove { room } => {
                return Reply::HistoryRemoved(self.owned.borrow_mut().remove_history_logged(
                    room,
                    Services::wall_ms(),
                    &mut |out| self.route(out),
                ));
            }
            AdminOp::Disconnect { user, conn, code, reason, ban_secs } => {
                if let (Some(user), true) = (user, *ban_secs > 0) {
                    self.ban(user, ban_secs.saturating_mul(1000));
                }
                let mut conns = self.conns.borrow_mut();
                let ids: Vec<ConnId> = match (user, conn) {
                    (Some(user), _) => {
                        conns.iter_mut().filter(|(_, c)| c.is_open() && &*c.user == user).map(|(id, _)| id).collect()
                    }
                    (None, Some(label)) => self.conn_by_label(label).into_iter().collect(),
                    (None, None) => Vec::new(),
                };
                for id in ids {
                    if let Some(c) = conns.get_mut(id).filter(|c| c.is_open()) {
                        self.close(c, *code, reason, false);
                        done += 1;
                    }
                }
            }
            AdminOp::Subscribe { user, room } => {
                let mut conns = self.conns.borrow_mut();
                let ids: Vec<ConnId> =
                    conns.iter_mut().filter(|(_, c)| c.is_open() && &*c.user == user).map(|(id, _)| id).collect();
                for id in ids {
                    let Some(c) = conns.get_mut(id) else { continue };
                    if c.rooms.iter().any(|m| &*m.room == room.as_str()) {
                        // Already a member (or joining): nothing to do, nothing refused.
                        continue;
                    }
                    match self.may_join(id, c, room) {
                        Ok(room) => {
                            let req = self.pending_join(id, c, room, None, PLAIN_JOIN);
                            self.send_join(req);
                            done += 1;
                        }
                        Err(_) => refused += 1,
                    }
                }
            }
            AdminOp::Unsubscribe { user, room } => {
                let mut conns = self.conns.borrow_mut();
                let ids: Vec<ConnId> =
                    conns.iter_mut().filter(|(_, c)| c.is_open() && &*c.user == user).map(|(id, _)| id).collect();
                for id in ids {
                    let Some(c) = conns.get_mut(id) else { continue };
                    // A personal room is never in `rooms` (nor can the API name one).
                    let Some(i) = c.rooms.iter().position(|m| &*m.room == room.as_str()) else { continue };
                    let m = c.rooms.remove(i);
                    // A pending join is undone when its ack arrives (as for a client leave).
                    if m.joined() {
                        let user = c.user.clone();
                        self.leave_joined(id, &user, &m);
                    }
                    self.push(c, server::left_because(&m.room, UNSUBSCRIBED));
                    done += 1;
                }
            }
        }
        Reply::Reached { done, refused }
    }
}

impl Services {
    /// Refuses `user`'s upgrades on this shard for `ms` milliseconds.
    fn ban(&self, user: &str, ms: u64) {
        let now = Services::wall_ms();
        let mut bans = self.bans.borrow_mut();
        // Expired bans go whenever one is added: the table holds live bans only.
        bans.retain(|_, until| *until > now);
        bans.insert(Arc::from(user), now.saturating_add(ms));
    }

    /// Whether `user` is banned now.
    pub(super) fn banned(&self, user: &str) -> bool {
        self.bans.borrow().get(user).is_some_and(|until| *until > Services::wall_ms())
    }

    /// The connection `label` (as `welcome.conn` shows it) names, if it is on this shard.
    fn conn_by_label(&self, label: &str) -> Option<ConnId> {
        let (_, id) = label.rsplit_once('-')?;
        let id = ConnId::from_u64(u64::from_str_radix(id, 16).ok()?);
        (self.conn_label(id) == label).then_some(id)
    }
}
