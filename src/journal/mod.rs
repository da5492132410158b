//! The durable log's format, pure: records, segment names, the scanner that finds the
//! longest valid prefix of a segment, and the rebuild of rooms' streams from records.
//!
//! No file is touched here (the runtime's `store` writes and reads segments); everything
//! is unit-tested on byte slices.
//!
//! | module | job |
//! |---|---|
//! | [`record`] | one record: length, CRC-32, body; encode, decode, scan |
//! | [`rebuild`] | records in log order → each room's stream (epoch, seq, recent frames) |
//!
//! # Layout on disk
//!
//! `DIR/shard-N/` holds shard N's segments, named by a generation number
//! ([`segment_name`]): `00000000000000000042.log`. Generations grow across shards and
//! runs: every segment written by a later run has a higher generation than every segment
//! of an earlier one, and within a run each room is written by one shard only, so
//! replaying all segments of all shard directories in generation order replays every
//! room's records in the order they were written.

pub mod rebuild;
pub mod record;

pub use rebuild::{Rebuild, RestoredRoom};
pub use record::{scan, Record, Scan};

/// Suffix of a finished segment file.
pub const SEGMENT_SUFFIX: &str = ".log";

/// Suffix of a segment being written whole (a checkpoint): renamed to its final name only
/// once synced, and deleted if found at start (a crash interrupted it).
pub const PARTIAL_SUFFIX: &str = ".log.tmp";

/// The file name of segment `generation`.
pub fn segment_name(generation: u64) -> String {
    format!("{generation:020}{SEGMENT_SUFFIX}")
}

/// The generation of a segment file name, or `None` if the name is not one
/// [`segment_name`] gives.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The directory name of shard `index`'s segments.
pub fn shard_dir_name(index: usize) -> String {
    format!("shard-{index}")
}

/// The shard index of a directory name [`shard_dir_name`] gives.
pub fn parse_shard_dir_name(name: &str) -> Option<usize> {
    let n = name.strip_prefix("shard-")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_refused() {
        assert_eq!(segment_name(42), "00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in ["42.log", "0000000000000000004x.log", "00000000000000000042.log.tmp", "x"] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
        assert_eq!(parse_shard_dir_name(&shard_dir_name(3)), Some(3));
        assert_eq!(parse_shard_dir_name("shard-"), None);
        assert_eq!(parse_shard_dir_name("shard-1a"), None);
    }
}
