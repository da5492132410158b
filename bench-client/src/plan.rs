//! The run plan: which connection goes where. Pure and deterministic, so every worker
//! process computes the same answers from the same [`Plan`] without talking to the others.
//!
//! Connection `c` (0 ≤ c < N) lives in process `c % processes`, thread
//! `(c / processes) % threads`, binds source address `127.0.0.(1 + c % source_addrs)`
//! (spilling into 127.0.x.y beyond 254), connects to target [`Plan::target_of`], joins
//! room [`RoomMap::room_of`], and publishes if `c < publishers`.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// How connections are spread over rooms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RoomDist {
    /// Connection `c` joins room `c % rooms`.
    Uniform,
    /// Room `k` gets a share proportional to `1 / (k + 1)^s`: room 0 is the hottest.
    Zipf {
        /// Exponent (1.0 is classic Zipf).
        s: f64,
    },
    /// Room 0 gets `fraction` of the connections; the rest are uniform over rooms 1…
    Hot {
        /// Share of connections in the hot room.
        fraction: f64,
    },
}

impl std::str::FromStr for RoomDist {
    type Err = String;

    /// `uniform`, `zipf:<s>` or `hot:<fraction>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let num = |v: &str| v.parse::<f64>().map_err(|_| format!("`{v}` is not a number"));
        match s.split_once(':') {
            None if s == "uniform" => Ok(RoomDist::Uniform),
            Some(("zipf", v)) if num(v)? > 0.0 => Ok(RoomDist::Zipf { s: num(v)? }),
            Some(("hot", v)) if (0.0..=1.0).contains(&num(v)?) => Ok(RoomDist::Hot { fraction: num(v)? }),
            _ => Err(format!("room distribution `{s}`: expected uniform, zipf:<s> (s > 0) or hot:<0..1>")),
        }
    }
}

/// Everything a worker needs to know about the run's connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The corecast servers (`/ws` on each address); one, or the nodes of a cluster.
    pub targets: Vec<SocketAddr>,
    /// Total connections N.
    pub connections: u64,
    /// Rooms R.
    pub rooms: u32,
    /// How connections are spread over rooms.
    pub room_dist: RoomDist,
    /// Publishers P (connections 0…P−1).
    pub publishers: u32,
    /// Minimum payload text length in bytes.
    pub payload_bytes: usize,
    /// Publish `data` JSON objects of this many bytes instead of `text` (0: text).
    #[serde(default)]
    pub data_bytes: usize,
    /// Number of loopback source addresses to spread connections over.
    pub source_addrs: u32,
    /// Total connection attempts per second, over all processes and threads.
    pub connect_rate: f64,
    /// Worker processes.
    pub processes: u32,
    /// Engine threads per worker process.
    pub threads: u32,
    /// Prefix of room and user names, unique per run so runs never share rooms.
    pub tag: String,
    /// Seconds a connection may take to connect, upgrade and join before it counts as failed.
    pub connect_timeout_secs: f64,
    /// Attempts to reconnect (with recovery) a connection that held its room and ended
    /// unexpectedly; 0 = never reconnect.
    pub reconnect_attempts: u32,
    /// Joined receivers closed on purpose per second while a step publishes (`--churn`),
    /// all processes together; 0 = none.
    pub churn_per_sec: f64,
    /// Offer permessage-deflate on every connection (`--deflate`); the server compresses
    /// only with `--compression on`.
    #[serde(default)]
    pub deflate: bool,
    /// Pad payloads with JSON-like records instead of `x` (`--payload-json`).
    #[serde(default)]
    pub payload_json: bool,
    /// Reconnection attempts after the first go to the following targets in turn
    /// (`--failover`): a cluster node that died loses its connections to the others.
    #[serde(default)]
    pub failover: bool,
    /// Publishers put an `id` on every message and the run audits acknowledged messages
    /// per receiver home (`--acks`, [`crate::audit`]).
    pub acks: bool,
    /// With `acks`: a connected publisher sends a message again, with the same idempotency
    /// key, when no ack came this long after it wrote it, then after twice that, and so
    /// on (`--ack-timeout`, [`crate::retry`]); 0 = never.
    #[serde(default)]
    pub ack_timeout_ns: u64,
}

impl Plan {
    /// Global indices of the connections that `thread` of `process` owns, in connect order.
    pub fn conns_of(&self, process: u32, thread: u32) -> impl Iterator<Item = u64> {
        let stride = u64::from(self.processes) * u64::from(self.threads);
        let first = u64::from(process) + u64::from(self.processes) * u64::from(thread);
        (first..self.connections).step_by(stride.max(1) as usize)
    }

    /// How many connections `thread` of `process` owns.
    pub fn count_of(&self, process: u32, thread: u32) -> u64 {
        let stride = u64::from(self.processes) * u64::from(self.threads);
        let first = u64::from(process) + u64::from(self.processes) * u64::from(thread);
        if first >= self.connections {
            0
        } else {
            (self.connections - first).div_ceil(stride.max(1))
        }
    }

    /// (process, thread) owning connection `c`.
    pub fn owner(&self, c: u64) -> (u32, u32) {
        let p = (c % u64::from(self.processes)) as u32;
        let t = ((c / u64::from(self.processes)) % u64::from(self.threads)) as u32;
        (p, t)
    }

    /// The server connection `c` talks to: round-robin over the targets, shifted by one
    /// per round of rooms under the uniform distribution. Plain `c % T` would put every
    /// member of a room on one target whenever R and T share a factor (room `r` holds the
    /// `c ≡ r mod R`); with the shift, member `k` of room `r` goes to `(r + k) % T`, so
    /// publishers (`c < P`) land on different targets and every room spans all targets
    /// once it has T members. Skewed distributions place rooms by a hash, so `c % T` is
    /// already independent of the room there.
    pub fn target_of(&self, c: u64) -> SocketAddr {
        self.targets.get(self.target_index(c)).copied().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// The home of connection `c` in `--acks` audits: the index in `targets` of the
    /// target it is first sent to (kept across failovers).
    pub fn home_of(&self, c: u64) -> u16 {
        u16::try_from(self.target_index(c)).unwrap_or(u16::MAX)
    }

    /// The index in `targets` of [`Self::target_of`]`(c)`.
    fn target_index(&self, c: u64) -> usize {
        let t = self.targets.len().max(1) as u64;
        let i = match self.room_dist {
            RoomDist::Uniform => (c % u64::from(self.rooms.max(1)) + c / u64::from(self.rooms.max(1))) % t,
            _ => c % t,
        };
        i as usize
    }

    /// The target of reconnection attempt `attempt` (1, 2, …) of connection `c`: its own
    /// target for the first attempt (a restarted node comes back there), then, with
    /// `failover`, each of the other targets in turn, starting from one picked per
    /// connection, so the connections of a dead node spread over all the others (as
    /// clients picking a random node would) instead of all moving to the next one;
    /// always its own without `failover`.
    pub fn reconnect_target(&self, c: u64, attempt: u32) -> SocketAddr {
        let t = self.targets.len();
        if !self.failover || attempt < 2 || t < 2 {
            return self.target_of(c);
        }
        let home = self.target_index(c);
        let others = t as u64 - 1;
        // A multiplicative hash of the connection number: consecutive connections of one
        // node (every T-th number) start at well-mixed places among the others.
        let start = (c.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % others;
        let k = (start + u64::from(attempt - 2)) % others;
        self.targets[(home + 1 + k as usize) % t]
    }

    /// How many of the plan's connections go to each target (same order as `targets`).
    pub fn per_target(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.targets.len()];
        for c in 0..self.connections {
            if let Some(n) = counts.get_mut(self.target_index(c)) {
                *n += 1;
            }
        }
        counts
    }

    /// Whether connection `c` publishes.
    pub fn is_publisher(&self, c: u64) -> bool {
        c < u64::from(self.publishers)
    }

    /// Loopback source address of connection `c`, so that no single address runs out of
    /// its ~64K ephemeral ports.
    pub fn source_addr(&self, c: u64) -> Ipv4Addr {
        let i = (c % u64::from(self.source_addrs.max(1))) as u32;
        let host = 1 + i % 254;
        let mid = i / 254;
        Ipv4Addr::new(127, (mid >> 8) as u8, mid as u8, host as u8)
    }

    /// Guest name of connection `c`.
    pub fn user_name(&self, c: u64) -> String {
        format!("{}-u{c}", self.tag)
    }

    /// The room assignment for this plan (precomputed once per thread).
    pub fn room_map(&self) -> RoomMap {
        RoomMap::new(self.rooms, self.room_dist)
    }
}

/// Maps a connection to its room under a [`RoomDist`].
#[derive(Debug, Clone)]
pub struct RoomMap {
    rooms: u32,
    dist: RoomDist,
    /// Zipf only: cumulative share of rooms 0..=k.
    cdf: Vec<f64>,
}

impl RoomMap {
    fn new(rooms: u32, dist: RoomDist) -> RoomMap {
        let rooms = rooms.max(1);
        let cdf = match dist {
            RoomDist::Zipf { s } => {
                let weights: Vec<f64> = (0..rooms).map(|k| 1.0 / f64::from(k + 1).powf(s)).collect();
                let total: f64 = weights.iter().sum();
                let mut acc = 0.0;
                weights
                    .iter()
                    .map(|w| {
                        acc += w / total;
                        acc
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        RoomMap { rooms, dist, cdf }
    }

    /// Room of connection `c`. Publishers (the lowest indices) are spread one per room for
    /// the uniform distribution; the skewed ones place every connection by a hash of `c`.
    pub fn room_of(&self, c: u64) -> u32 {
        match self.dist {
            RoomDist::Uniform => (c % u64::from(self.rooms)) as u32,
            RoomDist::Zipf { .. } => {
                let u = unit(c);
                (self.cdf.partition_point(|&p| p < u) as u32).min(self.rooms - 1)
            }
            RoomDist::Hot { fraction } => {
                if self.rooms == 1 || unit(c) < fraction {
                    0
                } else {
                    1 + (mix(c ^ 0x5bd1_e995) % u64::from(self.rooms - 1)) as u32
                }
            }
        }
    }
}

/// A well-mixed 64-bit hash (splitmix64 finalizer).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A deterministic pseudo-random number in [0, 1) for connection `c`.
fn unit(c: u64) -> f64 {
    (mix(c) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: u64, processes: u32, threads: u32) -> Plan {
        Plan {
            targets: vec!["127.0.0.1:1".parse().unwrap()],
            connections: n,
            rooms: 10,
            room_dist: RoomDist::Uniform,
            publishers: 3,
            payload_bytes: 0,
            data_bytes: 0,
            source_addrs: 300,
            connect_rate: 1000.0,
            processes,
            threads,
            tag: "t".into(),
            connect_timeout_secs: 10.0,
            reconnect_attempts: 5,
            churn_per_sec: 0.0,
            deflate: false,
            payload_json: false,
            failover: false,
            acks: false,
            ack_timeout_ns: 0,
        }
    }

    #[test]
    fn reconnections_fail_over_to_the_next_targets_only_when_asked() {
        let mut p = plan(10, 1, 1);
        p.targets = targets(3);
        let own = p.target_of(4);
        assert!((1..=6).all(|a| p.reconnect_target(4, a) == own), "no failover: always its own target");
        p.failover = true;
        assert_eq!(p.reconnect_target(4, 1), own, "the first attempt retries its own node");
        let mut tried: Vec<SocketAddr> = (2..=3).map(|a| p.reconnect_target(4, a)).collect();
        assert!(!tried.contains(&own), "then the others: {tried:?}");
        tried.sort();
        tried.dedup();
        assert_eq!(tried.len(), 2, "each of the others once");
        assert_eq!(p.reconnect_target(4, 4), p.reconnect_target(4, 2), "and round again");
        p.targets = targets(1);
        assert_eq!(p.reconnect_target(4, 3), p.targets[0], "one target: nowhere else to go");
    }

    /// At a million, a killed node's 18,000 connections all failed over to the next node
    /// in the list, which ran out of descriptors (20,000 per process here) and refused
    /// them. They spread over every surviving node now, and each connection still tries
    /// every other node before coming round again.
    #[test]
    fn regression_a_dead_nodes_connections_spread_over_all_the_others() {
        let mut p = plan(58_000, 1, 1);
        p.targets = targets(58);
        p.failover = true;
        let dead = p.targets[57];
        let orphans: Vec<u64> = (0..p.connections).filter(|&c| p.target_of(c) == dead).collect();
        assert_eq!(orphans.len(), 1000);
        let mut first = std::collections::HashMap::new();
        for &c in &orphans {
            *first.entry(p.reconnect_target(c, 2)).or_insert(0u32) += 1;
            let all: std::collections::HashSet<SocketAddr> = (2..=58).map(|a| p.reconnect_target(c, a)).collect();
            assert_eq!(all.len(), 57, "connection {c} tries each surviving node once per round");
            assert!(!all.contains(&dead));
        }
        assert_eq!(first.len(), 57, "the first failover reaches every surviving node: {first:?}");
        let most = first.values().max().copied().unwrap_or(0);
        assert!(most <= 3 * 1000 / 57, "no node takes far more than its share: {most} of 1,000");
    }

    fn targets(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i))).collect()
    }

    #[test]
    fn one_target_gets_everything() {
        let p = plan(100, 1, 1);
        assert!((0..100).all(|c| p.target_of(c) == p.targets[0]));
        assert_eq!(p.per_target(), [100]);
    }

    #[test]
    fn connections_are_spread_round_robin_over_targets() {
        for (n, rooms, t) in [(2000u64, 20u32, 2u16), (1000, 10, 3), (999, 7, 4), (100, 1, 2), (10, 100, 3)] {
            let mut p = plan(n, 1, 1);
            p.rooms = rooms;
            p.targets = targets(t);
            let counts = p.per_target();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= (n / u64::from(rooms)).max(1), "n={n} rooms={rooms} t={t}: {counts:?}");
            assert_eq!(counts.iter().sum::<u64>(), n);
            // Consecutive connections (the publishers, one per room) alternate targets.
            let first: Vec<SocketAddr> = (0..u64::from(t)).map(|c| p.target_of(c)).collect();
            assert_eq!(first, p.targets, "n={n} rooms={rooms} t={t}");
            // Every room with at least T members spans every target.
            let map = p.room_map();
            for r in 0..rooms {
                let members: Vec<u64> = (0..n).filter(|&c| map.room_of(c) == r).collect();
                if members.len() >= usize::from(t) {
                    let mut seen: Vec<SocketAddr> = members.iter().map(|&c| p.target_of(c)).collect();
                    seen.sort();
                    seen.dedup();
                    assert_eq!(seen.len(), usize::from(t), "room {r} of n={n} rooms={rooms} t={t}");
                }
            }
        }
    }

    #[test]
    fn skewed_rooms_use_plain_round_robin() {
        let mut p = plan(1000, 1, 1);
        p.room_dist = RoomDist::Hot { fraction: 0.5 };
        p.targets = targets(3);
        assert!((0..1000).all(|c| p.target_of(c) == p.targets[(c % 3) as usize]));
    }

    #[test]
    fn every_connection_has_exactly_one_owner() {
        let p = plan(1001, 3, 4);
        let mut seen = vec![0u32; 1001];
        for proc in 0..3 {
            for t in 0..4 {
                let mine: Vec<u64> = p.conns_of(proc, t).collect();
                assert_eq!(mine.len() as u64, p.count_of(proc, t));
                for c in mine {
                    assert_eq!(p.owner(c), (proc, t));
                    seen[c as usize] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
    }

    #[test]
    fn source_addresses_stay_in_loopback_and_spread() {
        let p = plan(1000, 1, 1);
        assert_eq!(p.source_addr(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(p.source_addr(253), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(p.source_addr(254), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(p.source_addr(300), Ipv4Addr::new(127, 0, 0, 1));
        assert!((0..1000).all(|c| p.source_addr(c).is_loopback()));
    }

    #[test]
    fn distributions_put_connections_where_they_say() {
        let count = |dist: RoomDist| {
            let m = RoomMap::new(100, dist);
            let mut rooms = vec![0u32; 100];
            for c in 0..100_000 {
                rooms[m.room_of(c) as usize] += 1;
            }
            rooms
        };
        assert!(count(RoomDist::Uniform).iter().all(|&n| n == 1000));
        let hot = count(RoomDist::Hot { fraction: 0.5 });
        assert!((48_000..52_000).contains(&hot[0]), "{}", hot[0]);
        assert!(hot[1..].iter().all(|&n| (400..620).contains(&n)));
        let zipf = count(RoomDist::Zipf { s: 1.0 });
        assert!(zipf[0] > zipf[1] && zipf[1] > zipf[9] && zipf[9] > zipf[99]);
        assert!((17_000..22_000).contains(&zipf[0]), "{}", zipf[0]);
    }

    #[test]
    fn room_distributions_parse() {
        assert_eq!("uniform".parse::<RoomDist>(), Ok(RoomDist::Uniform));
        assert_eq!("zipf:1.1".parse::<RoomDist>(), Ok(RoomDist::Zipf { s: 1.1 }));
        assert_eq!("hot:0.5".parse::<RoomDist>(), Ok(RoomDist::Hot { fraction: 0.5 }));
        assert!("hot:2".parse::<RoomDist>().is_err());
        assert!("zipf".parse::<RoomDist>().is_err());
    }
}
