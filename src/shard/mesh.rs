//! The inter-shard mesh: one lock-free inbox per shard, and a way to wake it.
//!
//! Each inbox is a crossbeam-channel (lock-free, MPSC here) plus an `AtomicWaker` that
//! the shard's inbox task registers before it parks. A sender pushes, then wakes: glommio
//! wakers are `Send`, and waking a parked executor writes its eventfd once; waking one
//! that is running costs an atomic swap. So an idle server parks with no polling at all.
//!
//! The channels are unbounded on purpose. The owner of a room must never block or drop
//! while handing a frame to a member shard (that would either deadlock two owners
//! feeding each other or lose messages). Memory is bounded upstream instead: readers stop
//! reading from their sockets while the destination inbox is over [`HIGH_WATER`], which
//! pushes back to the clients through TCP flow control.

use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::msg::ShardMsg;
use super::route::owner;

/// Inbox depth above which shards stop reading client input destined for that shard.
pub const HIGH_WATER: usize = 64 * 1024;

/// The sending side of every shard's inbox. Each shard (and the signal thread, and a
/// test's server handle) holds its own clone; nothing in it is mutable.
#[derive(Clone)]
pub struct Mesh {
    peers: Arc<[Peer]>,
}

struct Peer {
    tx: Sender<ShardMsg>,
    waker: Arc<AtomicWaker>,
}

/// The receiving side of one shard's inbox, owned by that shard's inbox task.
pub struct Inbox {
    rx: Receiver<ShardMsg>,
    waker: Arc<AtomicWaker>,
}

/// Creates the mesh for `shards` shards: the shared senders and one inbox per shard.
pub fn mesh(shards: usize) -> (Mesh, Vec<Inbox>) {
    let mut peers = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = crossbeam_channel::unbounded();
        let waker = Arc::new(AtomicWaker::new());
        peers.push(Peer { tx, waker: waker.clone() });
        inboxes.push(Inbox { rx, waker });
    }
    (Mesh { peers: peers.into() }, inboxes)
}

impl Mesh {
    /// Number of shards.
    #[allow(clippy::len_without_is_empty)] // a mesh always has at least one shard
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Queues `msg` for shard `to` and wakes it. Never blocks. A shard that has already
    /// exited (shutdown) silently drops what it is sent.
    pub fn send(&self, to: usize, msg: ShardMsg) {
        if let Some(peer) = self.peers.get(to) {
            if peer.tx.send(msg).is_ok() {
                peer.waker.wake();
            }
        }
    }

    /// The shard that owns `room` in this mesh (see [`owner`]).
    pub fn owner_of(&self, room: &str) -> usize {
        owner(room, self.peers.len())
    }

    /// Queues a clone of `msg` for every shard.
    pub fn send_all(&self, msg: impl Fn() -> ShardMsg) {
        for to in 0..self.peers.len() {
            self.send(to, msg());
        }
    }

    /// Messages waiting in shard `to`'s inbox (for backpressure and metrics).
    pub fn depth(&self, to: usize) -> usize {
        self.peers.get(to).map_or(0, |p| p.tx.len())
    }
}

impl Inbox {
    /// Takes the next message, or registers the current task to be woken by the next
    /// `send` and returns `Pending`. Registering before the second check closes the race
    /// with a sender that pushes between the two.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<ShardMsg> {
        match self.rx.try_recv() {
            Ok(msg) => return Poll::Ready(msg),
            Err(TryRecvError::Empty) => {}
            // Every shard holds a Mesh (and so a sender to itself) while running.
            Err(TryRecvError::Disconnected) => return Poll::Pending,
        }
        self.waker.register(cx.waker());
        match self.rx.try_recv() {
            Ok(msg) => Poll::Ready(msg),
            Err(_) => Poll::Pending,
        }
    }

    /// Takes the next message if one is waiting.
    pub fn try_recv(&self) -> Option<ShardMsg> {
        self.rx.try_recv().ok()
    }
}

/// The bridge reaches the shards through their mesh: bus input goes to the inboxes as
/// inbox messages, and a shard over [`HIGH_WATER`] counts as congested.
impl crate::cluster::bridge::Shards for Mesh {
    fn count(&self) -> usize {
        self.len()
    }

    fn owner(&self, room: &str) -> usize {
        self.owner_of(room)
    }

    fn congested(&self, shard: usize) -> bool {
        self.depth(shard) > HIGH_WATER
    }

    fn send(&self, shard: usize, msg: crate::cluster::bridge::Inbound) {
        use crate::cluster::bridge::Inbound;
        let msg = match msg {
            Inbound::Bus(m) => ShardMsg::Bus(Box::new(m)),
            Inbound::DeliverAll { frame, sent_at } => ShardMsg::DeliverAll { frame, sent_at },
            Inbound::Publish(p) => ShardMsg::Publish(p),
            Inbound::Broadcast(p) => ShardMsg::Broadcast(p),
            Inbound::ToConn { conn, frame } => ShardMsg::ToConn { conn, frame },
            Inbound::Reply { req, reply } => ShardMsg::Reply { req, reply },
        };
        Mesh::send(self, shard, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_send_from_another_thread_wakes_the_parked_receiver() {
        let (mesh, mut inboxes) = mesh(2);
        let inbox = inboxes.remove(1);
        let flag = Arc::new(Flag(Default::default()));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(inbox.poll_recv(&mut cx).is_pending());
        let m = mesh.clone();
        std::thread::spawn(move || m.send(1, ShardMsg::Shutdown)).join().unwrap();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(matches!(inbox.poll_recv(&mut cx), Poll::Ready(ShardMsg::Shutdown)));
        assert_eq!(mesh.depth(1), 0);
    }
}
