//! The mainstream peer (`corecast-tokio-peer`): a room broadcaster written the way a
//! competent Rust developer would write one with the mainstream stack — a tokio
//! multi-thread runtime, one task per connection, tokio-tungstenite, serde_json, and a
//! `tokio::sync::broadcast` channel per room carrying each message frame built once as a
//! shared `Utf8Bytes`. `bench-client compare` measures corecast against it beside the
//! ceiling probe: the probe asks "what can this host do at all", this peer asks "what would
//! a user get from the obvious alternative".
//!
//! It speaks the part of corecast's protocol that bench-client drives, in corecast's exact
//! JSON shapes: upgrade on `/ws?name=…` → `welcome`; `join` → `joined` (with `seq`,
//! `members`, `epoch`); `message` → the room's `message` frame (`seq`, `user`, `text`,
//! `ts`) to every member, in one order; `GET /health` → 200. What a correct broadcaster
//! cannot drop, it keeps: `seq` is assigned under the room's lock together with the
//! broadcast send, so every member sees one gap-free order and a joiner sees exactly the
//! messages after its `joined.seq`; a member more than `room_buffer` messages behind is a
//! slow consumer and is closed with 1013 (the broadcast channel's lag).
//!
//! | module | concern |
//! |---|---|
//! | [`proto`] | client and server frames (serde, pure) |
//! | [`server`] | rooms, the accept loop, one task per connection |

pub mod proto;
pub mod server;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

/// Why the peer could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Binding, building the runtime or spawning its thread failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// `threads` or `room_buffer` was 0.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The runtime thread panicked.
    #[error("server: {0}")]
    Server(String),
}

/// Messages a room's broadcast channel holds for its slowest member before that member
/// is dropped as a slow consumer.
pub const ROOM_BUFFER: usize = 1024;

/// A running peer: a tokio runtime of `threads` workers serving one listener.
pub struct Peer {
    /// Where it listens (the port chosen when asked for port 0).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Peer {
    /// Binds `addr` and serves it on a multi-thread runtime of `threads` workers (run by a
    /// thread of its own). Raises `RLIMIT_NOFILE` to its hard limit first.
    pub fn start(addr: SocketAddr, threads: usize) -> Result<Peer, PeerError> {
        Self::with_buffer(addr, threads, ROOM_BUFFER)
    }

    /// [`Peer::start`] with a room buffer of `room_buffer` messages.
    pub fn with_buffer(addr: SocketAddr, threads: usize, room_buffer: usize) -> Result<Peer, PeerError> {
        if threads == 0 || room_buffer == 0 {
            return Err(PeerError::Config("--threads and the room buffer must be positive".into()));
        }
        raise_nofile();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("tokio-peer")
            .enable_io()
            .build()?;
        let listener = rt.block_on(server::listen(addr))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::Builder::new().name("tokio-peer-main".into()).spawn(move || {
            let served = rt.block_on(server::serve(listener, room_buffer, rx));
            // Connection tasks still running are cancelled with the runtime.
            rt.shutdown_timeout(Duration::from_secs(1));
            served
        })?;
        Ok(Peer { addr, shutdown: Some(tx), thread: Some(thread) })
    }

    /// Blocks until the server ends (only on an accept error, which is returned).
    pub fn wait(mut self) -> Result<(), PeerError> {
        self.join()
    }

    /// Stops accepting, drops every connection (no close frames) and waits.
    pub fn stop(mut self) -> Result<(), PeerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join()
    }

    fn join(&mut self) -> Result<(), PeerError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => Ok(r?),
            Some(Err(_)) => Err(PeerError::Server("the runtime thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every connection is a descriptor.
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: valid pointer; raising the soft limit up to the hard one is always allowed.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    }
}
