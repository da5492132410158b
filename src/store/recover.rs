//! Start with `--data-dir`: every shard directory's segments are replayed in generation
//! order, rooms are rebuilt (within the history caps) and handed to the owner the
//! current shard count gives them, and the whole log is compacted to one segment per
//! shard holding exactly those rooms. So a changed `--shards` keeps every room's history:
//! rooms move to their new owners' directories at start.
//!
//! Plain blocking file I/O: this runs once, before any shard exists.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::journal::{self, rebuild::RebuildCounts, Rebuild, RestoredRoom};

/// What one shard starts with.
#[derive(Debug, Default)]
pub struct ShardStart {
    /// The rooms it owns, rebuilt.
    pub rooms: Vec<RestoredRoom>,
    /// The generation of its first new segment.
    pub next_gen: u64,
    /// Bytes of its segment on disk after the start's compaction.
    pub disk_bytes: u64,
    /// Records replayed and torn tails cut at start: the whole server's figures on shard
    /// 0, zero on the others (so that the sum over shards is right).
    pub replayed: u64,
    /// See `replayed`.
    pub corrupt_tails: u64,
}

/// The outcome of a start's replay.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Per shard, in shard order.
    pub shards: Vec<ShardStart>,
    /// Records replayed, duplicates and gaps met.
    pub counts: RebuildCounts,
    /// Segments whose tail was torn or corrupt (cut off, never served).
    pub corrupt_tails: u64,
    /// Bytes cut off those tails.
    pub truncated_bytes: u64,
    /// Segments read.
    pub segments: u64,
    /// How long the replay and compaction took.
    pub took: Duration,
}

/// One segment found on disk.
struct Found {
    generation: u64,
    path: PathBuf,
}

/// Lists `dir/shard-*/NNN.log`, deleting leftovers of an interrupted checkpoint.
fn list(dir: &Path) -> io::Result<Vec<Found>> {
    let mut out = Vec::new();
    for shard_dir in fs::read_dir(dir)? {
        let shard_dir = shard_dir?;
        let name = shard_dir.file_name();
        if journal::parse_shard_dir_name(&name.to_string_lossy()).is_none() || !shard_dir.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(shard_dir.path())? {
            let f = f?;
            let fname = f.file_name().to_string_lossy().into_owned();
            if fname.ends_with(journal::PARTIAL_SUFFIX) {
                // Never renamed to its final name: not synced whole, not part of the log.
                fs::remove_file(f.path())?;
            } else if let Some(generation) = journal::parse_segment_name(&fname) {
                out.push(Found { generation, path: f.path() });
            }
        }
    }
    out.sort_by_key(|f| f.generation);
    Ok(out)
}

/// Replays `dir` for a server of `shards` shards keeping `caps` = (messages, bytes) per
/// room, hands each room to `owner(room)`, and rewrites the log as one synced segment
/// per shard; the old segments are deleted once the new ones are in place.
pub fn recover(
    dir: &Path,
    shards: usize,
    caps: (usize, usize),
    owner: impl Fn(&str) -> usize,
) -> io::Result<Recovered> {
    let started = Instant::now();
    fs::create_dir_all(dir)?;
    let found = list(dir)?;
    let total: u64 = found.iter().filter_map(|f| fs::metadata(&f.path).ok()).map(|m| m.len()).sum();
    if !found.is_empty() {
        tracing::info!(dir = %dir.display(), segments = found.len(), bytes = total, "replaying the log");
    }
    let mut rebuild = Rebuild::new(caps.0, caps.1);
    let mut out = Recovered::default();
    let (mut read, mut last_report) = (0u64, Instant::now());
    for f in &found {
        let bytes = Bytes::from(fs::read(&f.path)?);
        read += bytes.len() as u64;
        let scan = journal::scan(&bytes);
        if scan.truncated > 0 {
            out.corrupt_tails += 1;
            out.truncated_bytes += scan.truncated as u64;
            tracing::warn!(
                segment = %f.path.display(), kept = scan.valid, cut = scan.truncated, corrupt = scan.corrupt,
                "log segment ends in a torn or corrupt record: cut off"
            );
        }
        scan.records.into_iter().for_each(|r| rebuild.apply(r));
        out.segments += 1;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            tracing::info!(
                read,
                of = total,
                records = rebuild.counts.records,
                rooms = rebuild.len(),
                "replaying the log"
            );
        }
    }
    out.counts = rebuild.counts;
    let base = found.last().map_or(1, |f| f.generation + 1);
    out.shards = (0..shards).map(|_| ShardStart { next_gen: base + 1, ..ShardStart::default() }).collect();
    for room in rebuild.finish() {
        let i = owner(&room.name).min(shards.saturating_sub(1));
        out.shards[i].rooms.push(room);
    }
    let now = crate::journal::wall_ms();
    for (i, start) in out.shards.iter_mut().enumerate() {
        let shard_dir = dir.join(journal::shard_dir_name(i));
        fs::create_dir_all(&shard_dir)?;
        let mut buf = Vec::new();
        for room in &start.rooms {
            super::encode_room(room, now, &mut buf);
        }
        start.disk_bytes = buf.len() as u64;
        write_whole(&shard_dir, base, &buf)?;
    }
    for f in found {
        fs::remove_file(&f.path)?;
    }
    for i in 0..shards {
        fs::File::open(dir.join(journal::shard_dir_name(i)))?.sync_all()?;
    }
    if let Some(first) = out.shards.first_mut() {
        (first.replayed, first.corrupt_tails) = (out.counts.records, out.corrupt_tails);
    }
    out.took = started.elapsed();
    if out.segments > 0 {
        let rooms: usize = out.shards.iter().map(|s| s.rooms.len()).sum();
        tracing::info!(
            records = out.counts.records,
            rooms,
            corrupt_tails = out.corrupt_tails,
            took_ms = out.took.as_millis() as u64,
            "log replayed"
        );
    }
    Ok(out)
}

/// Writes segment `generation` of `dir` whole: to a temporary name, synced, then renamed.
fn write_whole(dir: &Path, generation: u64, data: &[u8]) -> io::Result<()> {
    let name = journal::segment_name(generation);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Record;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("corecast-recover-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn frame(room: &str, epoch: u64, seq: u64) -> Record {
        Record::Frame { room: room.into(), epoch, seq, ts: 0, frame: Bytes::from(format!("frame {room} {seq}")) }
    }

    fn write(dir: &Path, shard: usize, generation: u64, records: &[Record]) -> Vec<usize> {
        let d = dir.join(journal::shard_dir_name(shard));
        fs::create_dir_all(&d).unwrap();
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for r in records {
            r.encode(&mut buf);
            ends.push(buf.len());
        }
        fs::write(d.join(journal::segment_name(generation)), &buf).unwrap();
        ends
    }

    fn seqs(r: &Recovered, room: &str) -> Vec<u64> {
        r.shards
            .iter()
            .flat_map(|s| &s.rooms)
            .filter(|x| &*x.name == room)
            .flat_map(|x| x.frames.iter().map(|f| f.0))
            .collect()
    }

    #[test]
    fn rooms_move_to_their_new_owner_and_the_log_is_compacted() {
        let dir = tmp("move");
        write(&dir, 0, 1, &[frame("a", 1, 1), frame("a", 1, 2)]);
        write(&dir, 1, 1, &[frame("b", 2, 1)]);
        write(&dir, 1, 2, &[frame("b", 2, 2)]);
        let r = recover(&dir, 1, (100, 1 << 20), |_| 0).unwrap();
        assert_eq!((seqs(&r, "a"), seqs(&r, "b")), (vec![1, 2], vec![1, 2]));
        assert_eq!(r.counts.records, 4);
        // One segment left, in shard-0, and a second start reads the same rooms from it.
        assert!(!dir.join("shard-1").join(journal::segment_name(2)).exists());
        let again = recover(&dir, 2, (100, 1 << 20), |room| usize::from(room == "b")).unwrap();
        assert_eq!((seqs(&again, "a"), seqs(&again, "b")), (vec![1, 2], vec![1, 2]));
        assert_eq!(again.shards[1].rooms.len(), 1);
        assert!(again.shards[0].next_gen > r.shards[0].next_gen);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_cut_at_every_byte_of_its_last_records_restarts_to_the_longest_valid_prefix() {
        let records: Vec<Record> = (1..=4).map(|s| frame("a", 7, s)).collect();
        let dir = tmp("cut");
        let ends = write(&dir, 0, 1, &records);
        let whole = fs::read(dir.join("shard-0").join(journal::segment_name(1))).unwrap();
        let from = ends[0];
        for cut in from..=whole.len() {
            let _ = fs::remove_dir_all(&dir);
            let d = dir.join("shard-0");
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(journal::segment_name(1)), &whole[..cut]).unwrap();
            let r = recover(&dir, 1, (100, 1 << 20), |_| 0).unwrap();
            let n = ends.iter().filter(|&&e| e <= cut).count() as u64;
            assert_eq!(seqs(&r, "a"), (1..=n).collect::<Vec<_>>(), "cut at {cut}");
            assert_eq!(r.corrupt_tails, u64::from(cut != ends[n as usize - 1]), "cut at {cut}");
            // The cut tail is gone from disk: the next start finds a clean log.
            let again = recover(&dir, 1, (100, 1 << 20), |_| 0).unwrap();
            assert_eq!((seqs(&again, "a").len() as u64, again.corrupt_tails), (n, 0), "cut at {cut}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_data_dir_that_is_a_file_is_a_clear_error() {
        let file = tmp("file");
        fs::write(&file, b"not a directory").unwrap();
        let err = recover(&file, 1, (100, 1 << 20), |_| 0).unwrap_err();
        assert!(!err.to_string().is_empty());
        fs::remove_file(&file).unwrap();
    }

    #[test]
    fn an_interrupted_checkpoint_is_ignored() {
        let dir = tmp("partial");
        write(&dir, 0, 1, &[frame("a", 1, 1)]);
        fs::write(dir.join("shard-0").join("00000000000000000002.log.tmp"), b"half").unwrap();
        let r = recover(&dir, 1, (100, 1 << 20), |_| 0).unwrap();
        assert_eq!((seqs(&r, "a"), r.corrupt_tails), (vec![1], 0));
        fs::remove_dir_all(&dir).unwrap();
    }
}
