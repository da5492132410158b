//! The host, seen from inside: CLOCK_MONOTONIC, `/proc` CPU and RSS, file-descriptor limits.
//!
//! Everything here is a thin, documented wrapper over one system call or one `/proc` file,
//! so the rest of the crate never touches `libc` directly (except the engine's timerfd).

use std::io::{self, Write};
use std::path::Path;

/// Nanoseconds on CLOCK_MONOTONIC. Comparable across processes on one host, which is what
/// lets a worker process compute the latency of a message another process published.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whole seconds of a [`now_ns`] reading (fits `u32` for 136 years of uptime): the unit
/// of per-connection stamps that must stay small (`Conn::last_ping_s`).
pub fn secs(ns: u64) -> u32 {
    (ns / 1_000_000_000) as u32
}

/// Writes `bytes` to a non-blocking socket until everything is taken or the kernel refuses
/// more (`WouldBlock`, so that a writable edge follows); returns how many bytes it took.
pub fn write_some(w: &mut impl Write, bytes: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        match w.write(&bytes[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// CPU time used so far, split into user space and kernel, in nanoseconds. The split
/// shows where a delivery's cost goes: on loopback most of it is the kernel's TCP path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// User-space time.
    pub user_ns: u64,
    /// Kernel time.
    pub sys_ns: u64,
}

impl CpuTime {
    /// User + kernel.
    pub fn total_ns(&self) -> u64 {
        self.user_ns + self.sys_ns
    }
}

impl std::ops::Add for CpuTime {
    type Output = CpuTime;

    fn add(self, o: CpuTime) -> CpuTime {
        CpuTime { user_ns: self.user_ns + o.user_ns, sys_ns: self.sys_ns + o.sys_ns }
    }
}

/// CPU time this process has used so far (getrusage).
pub fn own_cpu() -> CpuTime {
    // SAFETY: a zeroed rusage is a valid out-parameter for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    CpuTime { user_ns: tv(ru.ru_utime), sys_ns: tv(ru.ru_stime) }
}

/// CPU time (user + system) this process has used so far, in nanoseconds.
pub fn own_cpu_ns() -> u64 {
    own_cpu().total_ns()
}

/// CPU time used so far by process `pid`, from `/proc/<pid>/stat`.
/// `None` when the process is gone or the file cannot be parsed.
pub fn process_cpu(pid: u32) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user, sys) = parse_stat_cpu_ticks(&stat)?;
    let ns = |ticks: u64| ticks * 1_000_000_000 / clock_ticks();
    Some(CpuTime { user_ns: ns(user), sys_ns: ns(sys) })
}

/// CPU time (user + system) used so far by process `pid`, in nanoseconds.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    process_cpu(pid).map(|c| c.total_ns())
}

/// (utime, stime), fields 14 and 15 of a `/proc/<pid>/stat` line, in clock ticks.
/// The command name (field 2) may contain spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    rss_from_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Resident set size of this process in bytes.
pub fn own_rss_bytes() -> u64 {
    process_rss_bytes(std::process::id()).unwrap_or(0)
}

fn rss_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and returns the new soft
/// limit: how many file descriptors this process may hold. The limit is read, never
/// assumed, because it decides how many worker processes a run needs.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: valid pointer; raising the soft limit up to the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// Connections one loopback source address can carry comfortably to one server, from the
/// ephemeral port range in `/proc/sys/net/ipv4/ip_local_port_range`.
///
/// `connect()` looks for a free port among those of one parity first (half the range);
/// measured here (range 32768–60999), a single source address stopped at ~14,100
/// connections and the rest failed or timed out; 2 addresses carried 19,000 but took 8 s
/// (the port search slows down as a parity half fills up), 4 addresses took 3.9 s. Loopback
/// addresses cost nothing, so the budget is 5,000 per address, or a quarter of half the
/// range when the range is small.
pub fn conns_per_source_addr() -> u64 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = range.split_whitespace().filter_map(|v| v.parse::<u64>().ok());
    let (lo, hi) = (it.next().unwrap_or(32768), it.next().unwrap_or(60999));
    ((hi.saturating_sub(lo) + 1) / 8).clamp(1, 5000)
}

/// Facts about the host for SETUP.md: CPU model, cores, kernel, memory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Online CPUs.
    pub cores: usize,
    /// `uname -sr`.
    pub kernel: String,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
}

impl HostInfo {
    /// Reads the host description from /proc and uname.
    pub fn read() -> HostInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        let read = |p: &str| std::fs::read_to_string(Path::new(p)).map(|s| s.trim().to_owned()).unwrap_or_default();
        HostInfo {
            hostname: read("/proc/sys/kernel/hostname"),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: format!("{} {}", read("/proc/sys/kernel/ostype"), read("/proc/sys/kernel/osrelease")),
            memory_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (we ird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 1000 10";
        assert_eq!(parse_stat_cpu_ticks(stat), Some((7, 3)));
    }

    #[test]
    fn own_process_is_visible_in_proc() {
        assert!(own_rss_bytes() > 0);
        assert!(process_cpu_ns(std::process::id()).is_some());
        assert!(process_rss_bytes(u32::MAX).is_none());
    }

    #[test]
    fn a_source_address_gets_a_safe_share_of_the_port_range() {
        let n = conns_per_source_addr();
        assert!((1..=24_000).contains(&n), "{n}");
    }

    #[test]
    fn rss_is_parsed_in_kib() {
        assert_eq!(rss_from_status("Name:\tx\nVmRSS:\t    1234 kB\n"), Some(1234 * 1024));
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a && a > 0);
    }
}
