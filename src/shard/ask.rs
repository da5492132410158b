//! Asking other shards (or this one) and waiting for their answers, without sharing
//! anything: the question carries a request id, the answers come back through this
//! shard's inbox as `ShardMsg::Reply`, and a small table pairs them up.
//!
//! Used by the HTTP endpoints that need the whole server's view (`/stats`, `/metrics`)
//! or an owner's answer (`/api/publish`, presence).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::msg::{Reply, ReplyTo};
use super::Services;
use crate::rt;

/// How long an HTTP request waits for other shards before answering with what it has.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Questions this shard is waiting on.
#[derive(Default)]
pub(crate) struct Asks {
    next: Cell<u64>,
    pending: RefCell<FxHashMap<u64, Pending>>,
}

struct Pending {
    want: usize,
    replies: Vec<Reply>,
    waker: Option<Waker>,
}

impl Services {
    /// Calls `send` with a fresh [`ReplyTo`] (it sends the questions) and waits until
    /// `want` replies have arrived or the timeout passed; returns what arrived.
    pub(super) async fn ask(&self, want: usize, send: impl FnOnce(ReplyTo)) -> Vec<Reply> {
        let req = self.asks.next.get().wrapping_add(1);
        self.asks.next.set(req);
        self.asks.pending.borrow_mut().insert(req, Pending { want, replies: Vec::with_capacity(want), waker: None });
        send(ReplyTo { shard: self.id, req });
        let all_in = poll_fn(|cx| {
            let mut pending = self.asks.pending.borrow_mut();
            match pending.get_mut(&req) {
                Some(p) if p.replies.len() < p.want => {
                    p.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        });
        futures_lite::future::or(all_in, rt::sleep(ASK_TIMEOUT)).await;
        self.asks.pending.borrow_mut().remove(&req).map_or_else(Vec::new, |p| p.replies)
    }

    /// Files an answer; late answers (after a timeout) are dropped.
    pub(super) fn on_reply(&self, req: u64, reply: Reply) {
        let mut pending = self.asks.pending.borrow_mut();
        if let Some(p) = pending.get_mut(&req) {
            p.replies.push(reply);
            if p.replies.len() >= p.want {
                if let Some(w) = p.waker.take() {
                    w.wake();
                }
            }
        }
    }
}
