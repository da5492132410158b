//! The runtime layer: the only module that calls glommio (elsewhere only the shard's
//! accept-task handle type and comments name it; `git grep -n glommio src/` shows them).
//!
//! glommio's maintenance has slowed, so everything runtime-specific sits
//! here: executor construction and pinning, listener sockets, the stream type, spawning,
//! timers. Moving to a fork or to another thread-per-core runtime touches this file.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

pub mod file;
pub mod nudge;
pub mod readiness;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

pub mod send_ring;

/// A TCP connection owned by one shard.
pub type TcpStream = glommio::net::TcpStream;

/// A shard's own `SO_REUSEPORT` listener.
pub type TcpListener = glommio::net::TcpListener;

/// Handle to a shard thread; joining it returns when the shard's main future ends.
pub type ShardThread = glommio::ExecutorJoinHandle<()>;

pub use glommio::timer::sleep;
pub use glommio::yield_if_needed;

/// How many times the calling shard's reactor, asleep on its main io_uring, was woken
/// only by its 1 s sleep bound while completions waited in its latency ring: a lost
/// wake-up (the vendored glommio's patch, vendor/README.md). Zero when the kernel's
/// ring-to-ring wake works. Call it on the shard's own thread.
pub fn lost_wakes() -> u64 {
    glommio::lost_wakes()
}

/// Runs `future` on the current shard in the background.
pub fn spawn<F: Future<Output = ()> + 'static>(future: F) -> glommio::task::JoinHandle<()> {
    glommio::spawn_local(future).detach()
}

/// Runs `f` on the shard's blocking-thread pool and waits for it without blocking the
/// shard (for CPU-heavy work such as argon2 password hashing).
pub async fn blocking<R, F>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(f).await
}

/// Binds `count` listening sockets on `addr`, all with `SO_REUSEPORT` so the kernel
/// spreads incoming connections over them. If `addr` has port 0, the first bind picks
/// the port and the others reuse it (this is how tests run on an ephemeral port).
///
/// Built with socket2 rather than glommio's `bind` because that one sets no
/// `SO_REUSEADDR` and fixes the backlog at 1024 (ours is `--backlog`).
pub fn bind_listeners(addr: SocketAddr, count: usize, backlog: i32) -> io::Result<Vec<Socket>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        if addr.port() == 0 {
            addr = socket.local_addr()?.as_socket().ok_or_else(|| io::Error::other("listener has no IP address"))?;
        }
        out.push(socket);
    }
    Ok(out)
}

/// Hands a bound socket to the current shard's reactor.
pub fn adopt_listener(socket: Socket) -> TcpListener {
    // SAFETY: `into_raw_fd` gives up ownership of a valid listening socket, which the
    // listener takes over; nothing else refers to the descriptor.
    unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) }
}

/// CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Starts shard `index` on its own thread running a glommio executor, pinned to `cpu`
/// when given, and runs `main` on it until it returns.
///
/// Executor settings: a small `io_memory` (the 10 MiB default is
/// pinned memory a network server never uses), a bounded ring, a 10 ms preemption timer
/// so long fan-outs yield, and an optional spin before parking.
pub fn spawn_shard<G, F>(index: usize, cpu: Option<usize>, config: &Config, main: G) -> io::Result<ShardThread>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let placement = match cpu {
        Some(c) => glommio::Placement::Fixed(c),
        None => glommio::Placement::Unbound,
    };
    glommio::LocalExecutorBuilder::new(placement)
        .name(&format!("shard-{index}"))
        .io_memory(64 * 1024)
        .ring_depth(config.ring_depth)
        .preempt_timer(Duration::from_millis(10))
        .spin_before_park(config.spin_before_park)
        // Blocking work (password hashing) may run on any core, never on the shard's
        // event loop and not pinned to its core.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
        .spawn(main)
        .map_err(io::Error::from)
}

/// Whether an accept error means "out of descriptors" (EMFILE/ENFILE): the shard must
/// back off and retry rather than spin or give up.
pub fn is_fd_exhaustion(err: &io::Error) -> bool {
    use rustix::io::Errno;
    let code = err.raw_os_error();
    code == Some(Errno::MFILE.raw_os_error()) || code == Some(Errno::NFILE.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_every_listener_the_same_port() {
        let socks = bind_listeners("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
        let ports: Vec<u16> = socks.iter().map(|s| s.local_addr().unwrap().as_socket().unwrap().port()).collect();
        assert!(ports[0] != 0 && ports.iter().all(|p| *p == ports[0]), "{ports:?}");
    }

    /// The vendored glommio bounds the reactor's sleep (1 s): an executor idle on a 3.5 s
    /// timer must wake at the bound (an `ETIME` the reactor takes in its stride, not a
    /// panic), still fire the timer, and count no lost wake-up (its latency ring's timer
    /// completion woke it through the ring link, as it should).
    #[test]
    fn an_idle_shard_wakes_at_its_sleep_bound_and_loses_no_wake_up() {
        let (tx, rx) = std::sync::mpsc::channel();
        let shard = spawn_shard(0, None, &Config::default(), move || async move {
            sleep(Duration::from_millis(3500)).await;
            let _ = tx.send((glommio::bounded_sleeps(), lost_wakes()));
        })
        .expect("shard");
        shard.join().expect("shard ran");
        let (bounded, lost) = rx.recv().expect("the shard reported");
        assert!(bounded >= 1, "no sleep ended at the bound over 3.5 s idle");
        assert_eq!(lost, 0);
    }

    #[test]
    fn fd_exhaustion_is_recognised() {
        assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error())));
        assert!(!is_fd_exhaustion(&io::Error::from_raw_os_error(rustix::io::Errno::AGAIN.raw_os_error())));
    }
}
