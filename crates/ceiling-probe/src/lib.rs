//! The ceiling probe (`corecast-ceiling`, also run as `bench-client ceiling`): a
//! deliberately minimal broadcast server that speaks just enough of corecast's protocol for bench-client (upgrade, `welcome`, `join` →
//! `joined`, `message` → the room's `message` frames) and writes pre-built frames to every
//! member with the best batching it can. It answers "how close is corecast to what this
//! host can do at all?": the same client, the same shapes, against both.
//!
//! What it does *not* do is the point: no JSON parsing (byte scans), no authentication,
//! limits, presence, history, heartbeats or per-message allocation per member. What it
//! keeps is what a correct broadcaster cannot drop: per-room `seq` numbered by one owner
//! thread, every member getting every frame in order, and slow consumers bounded
//! ([`conn::MAX_BACKLOG`]).
//!
//! | module | concern |
//! |---|---|
//! | [`wire`] | HTTP upgrade, server frames in corecast's shapes, client frame byte scans (pure) |
//! | [`conn`] | one connection: socket, phase, reassembly, shared-chunk backlog, `writev` |
//! | [`shard`] | one thread: listener, mio loop, owned rooms, batches, hand-offs |
//! | [`sys`] | non-blocking writes, `RLIMIT_NOFILE` |
//!
//! Frames are encoded and decoded with corecast's own wire crate (`corecast-wire`), so
//! the probe's bytes are corecast's bytes; it shares no code with the server's runtime.

pub mod conn;
pub mod shard;
pub mod sys;
pub mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::{Poll, Waker};

use shard::{reuseport_listener, Mesh, Shard, WAKER};

/// Why the probe could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Binding, polling or spawning a thread failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// `threads` was 0.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An event-loop thread panicked.
    #[error("server: {0}")]
    Server(String),
}

/// A running probe: `threads` event loops on one port.
pub struct Ceiling {
    /// Where it listens (the port chosen when asked for port 0).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Ceiling {
    /// Binds `threads` `SO_REUSEPORT` listeners on `addr` and starts a loop on each.
    /// Raises `RLIMIT_NOFILE` to its hard limit first (every connection is a descriptor).
    pub fn start(addr: SocketAddr, threads: usize) -> Result<Ceiling, ProbeError> {
        if threads == 0 {
            return Err(ProbeError::Config("--threads must be positive".into()));
        }
        crate::sys::raise_nofile();
        let first = reuseport_listener(addr)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..threads {
            listeners.push(reuseport_listener(addr)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut polls = Vec::new();
        let mut wakers = Vec::new();
        let mut senders = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..threads {
            let poll = Poll::new()?;
            wakers.push(Arc::new(Waker::new(poll.registry(), WAKER)?));
            polls.push(poll);
            let (tx, rx) = crossbeam_channel::unbounded();
            senders.push(tx);
            inboxes.push(rx);
        }
        let mut handles = Vec::new();
        for (index, ((poll, listener), inbox)) in polls.into_iter().zip(listeners).zip(inboxes).enumerate() {
            let mesh = Mesh { senders: senders.clone(), wakers: wakers.clone(), stop: stop.clone() };
            let handle = std::thread::Builder::new().name(format!("ceiling-{index}")).spawn(move || {
                let listener = mio::net::TcpListener::from_std(listener);
                Shard::new(index, poll, listener, inbox, mesh).run()
            })?;
            handles.push(handle);
        }
        Ok(Ceiling { addr, stop, wakers, threads: handles })
    }

    /// Blocks until every loop has ended (they end only when stopped, or on a poll error,
    /// which is returned).
    pub fn wait(mut self) -> Result<(), ProbeError> {
        self.join()
    }

    /// Stops every loop and waits for them; connections are dropped (no close frames).
    pub fn stop(mut self) -> Result<(), ProbeError> {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
        self.join()
    }

    fn join(&mut self) -> Result<(), ProbeError> {
        for h in self.threads.drain(..) {
            match h.join() {
                Ok(r) => r?,
                Err(_) => return Err(ProbeError::Server("a ceiling thread panicked".into())),
            }
        }
        Ok(())
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }
}
