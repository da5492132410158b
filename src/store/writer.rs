//! A shard's log writer: records are encoded into a buffer as the owner sequences them
//! (no I/O on that path), and one task on the shard's executor hands each batch to the
//! disk (io_uring), syncs it as `--fsync` says, rolls segments, and compacts the log.
//!
//! # Batching and back-pressure
//!
//! Whatever the owner logged while the previous batch was being written goes out as
//! the next batch: one write per inbox drain at most, more records per write the slower
//! the disk. Fan-out never waits for the disk. If the disk falls behind by more than
//! [`MAX_PENDING`] bytes, further records are not logged (counted as
//! `log_records_dropped`) until it catches up: such records are missing after a
//! restart, and the rebuild then starts the room's history after the hole (a `since`
//! from before it is not recovered) rather than serve a gap.
//!
//! # `--fsync always`
//!
//! Answers the owner sends while records wait for the disk (the `ack` of a publish, an
//! API publish's result) are held ([`Journal::hold`]) and sent only after the batch
//! holding those records was written and `fdatasync` completed.
//!
//! # Compaction
//!
//! When the shard's segments exceed twice what a checkpoint of its rooms would take
//! (plus two segments), the writer closes the current segment, writes a checkpoint of
//! every room (exactly the history the rooms still hold, within the caps, budget and
//! TTL) as a new segment (written under a temporary name, synced, renamed), and deletes
//! the older segments on the blocking pool. Disk use stays within about twice the
//! retained history plus two segments and a batch; while a compaction runs (its
//! checkpoint written, the older segments not yet deleted) within three times.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::config::Fsync;
use crate::journal::{self, Record};
use crate::metrics::{add, inc, ShardStats};
use crate::rt;
use crate::rt::file::AppendFile;

/// Most bytes of records waiting for the disk; beyond it records are dropped (counted).
pub const MAX_PENDING: usize = 64 << 20;

/// What the writer needs from its shard.
pub trait Host<T> {
    /// Sends answers that waited for their records to be synced.
    fn release(&self, items: Vec<T>);
    /// Appends a checkpoint of every room the shard owns to `out`.
    fn checkpoint(&self, out: &mut Vec<u8>);
    /// About how many bytes a checkpoint would take now.
    fn retained(&self) -> u64;
    /// The shard's counters.
    fn stats(&self) -> &ShardStats;
}

/// One shard's log. Single-threaded: lives on its shard's executor.
pub struct Journal<T> {
    dir: PathBuf,
    policy: Fsync,
    segment_bytes: u64,
    next_gen: Cell<u64>,
    /// Encoded records not yet handed to the disk, and how many.
    pending: RefCell<Vec<u8>>,
    pending_records: Cell<u64>,
    /// Answers waiting for `pending` to be synced (`--fsync always`).
    held: RefCell<Vec<T>>,
    /// Bytes of this shard's segments on disk, and how many there are.
    disk_bytes: Cell<u64>,
    segments: Cell<u64>,
    /// Bytes of the last checkpoint (the start's compaction is one).
    checkpoint_bytes: Cell<u64>,
    /// Flushes asked for and done (each a count): see [`Journal::flush`].
    flush_asked: Cell<u64>,
    flush_done: Cell<u64>,
    writer: RefCell<Option<Waker>>,
    flushers: RefCell<Vec<Waker>>,
    last_error_log: Cell<Option<Instant>>,
}

impl<T> Journal<T> {
    /// The log of the shard whose directory is `dir` (created at start by
    /// [`super::recover`]); its first new segment is generation `next_gen`, and its
    /// directory already holds `disk_bytes`.
    pub fn new(dir: PathBuf, policy: Fsync, segment_bytes: u64, next_gen: u64, disk_bytes: u64) -> Journal<T> {
        Journal {
            dir,
            policy,
            segment_bytes,
            next_gen: Cell::new(next_gen),
            pending: RefCell::new(Vec::new()),
            pending_records: Cell::new(0),
            held: RefCell::new(Vec::new()),
            disk_bytes: Cell::new(disk_bytes),
            segments: Cell::new(1),
            checkpoint_bytes: Cell::new(disk_bytes),
            flush_asked: Cell::new(0),
            flush_done: Cell::new(0),
            writer: RefCell::new(None),
            flushers: RefCell::new(Vec::new()),
            last_error_log: Cell::new(None),
        }
    }

    /// Bytes of this shard's segments on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.get()
    }

    /// This shard's segments on disk.
    pub fn segments(&self) -> u64 {
        self.segments.get()
    }

    /// Logs `record` (encoded now, written with the next batch).
    pub fn append(&self, record: &Record, stats: &ShardStats) {
        let mut pending = self.pending.borrow_mut();
        if pending.len() >= MAX_PENDING {
            inc(&stats.log_records_dropped);
            return;
        }
        record.encode(&mut pending);
        self.pending_records.set(self.pending_records.get() + 1);
        inc(&stats.log_records);
        drop(pending);
        self.wake_writer();
    }

    /// Whether an answer sent now must wait for the disk: under `--fsync always`, while
    /// records logged before it are not yet synced.
    pub fn holding(&self) -> bool {
        self.policy == Fsync::Always && self.pending_records.get() > 0
    }

    /// Keeps `item` until the records logged so far are synced.
    pub fn hold(&self, item: T) {
        self.held.borrow_mut().push(item);
    }

    /// Returns once every record logged before the call is written and synced.
    pub async fn flush(&self) {
        let want = self.flush_asked.get() + 1;
        self.flush_asked.set(want);
        self.wake_writer();
        poll_fn(|cx| {
            if self.flush_done.get() >= want {
                return Poll::Ready(());
            }
            self.flushers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until the writer is woken (a record, a flush).
    async fn woken(&self) {
        let mut first = true;
        poll_fn(|cx| {
            if !first {
                return Poll::Ready(());
            }
            first = false;
            *self.writer.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn has_work(&self) -> bool {
        self.pending_records.get() > 0 || self.flush_asked.get() > self.flush_done.get()
    }

    /// Whether the segments hold more than twice what a checkpoint would (plus two
    /// segments), and more than twice the last checkpoint (so that an estimate below
    /// the truth cannot make every batch a compaction).
    fn compaction_due(&self, host: &impl Host<T>) -> bool {
        let disk = self.disk_bytes.get();
        disk > 2 * host.retained() + 2 * self.segment_bytes && disk > 2 * self.checkpoint_bytes.get()
    }

    fn io_error(&self, stats: &ShardStats, what: &str, e: &io::Error) {
        inc(&stats.log_errors);
        if self.last_error_log.get().is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            self.last_error_log.set(Some(Instant::now()));
            tracing::warn!(dir = %self.dir.display(), error = %e, "log: {what} failed");
        }
    }

    async fn open_segment(&self, stats: &ShardStats) -> io::Result<AppendFile> {
        let generation = self.next_gen.get();
        self.next_gen.set(generation + 1);
        let f = AppendFile::create(&self.dir.join(journal::segment_name(generation))).await?;
        inc(&stats.log_segments_created);
        self.segments.set(self.segments.get() + 1);
        Ok(f)
    }

    /// Writes `data` as a whole new segment (temporary name, sync, rename), then deletes
    /// every older segment of this shard.
    async fn write_checkpoint(&self, data: Vec<u8>, stats: &ShardStats) -> io::Result<()> {
        let generation = self.next_gen.get();
        self.next_gen.set(generation + 1);
        let name = journal::segment_name(generation);
        let len = data.len() as u64;
        let mut f = AppendFile::create(&self.dir.join(format!("{name}.tmp"))).await?;
        f.append(data).await?;
        f.sync().await?;
        f.rename(&self.dir.join(&name)).await?;
        f.close().await?;
        rt::file::sync_dir(&self.dir).await?;
        inc(&stats.log_segments_created);
        add(&stats.log_bytes, len);
        self.segments.set(self.segments.get() + 1);
        self.disk_bytes.set(self.disk_bytes.get() + len);
        self.checkpoint_bytes.set(len);
        let dir = self.dir.clone();
        let deleted = rt::blocking(move || delete_before(&dir, generation)).await?;
        add(&stats.log_segments_deleted, deleted);
        self.segments.set(1);
        self.disk_bytes.set(len);
        inc(&stats.log_compactions);
        Ok(())
    }

    /// The writer task: runs until the shard's executor ends.
    pub async fn run(self: Rc<Self>, host: Rc<impl Host<T>>) {
        let mut file: Option<AppendFile> = None;
        let (mut unsynced, mut dirty_at) = (0u64, None::<Instant>);
        loop {
            while !self.has_work() && !self.compaction_due(&*host) {
                match (self.policy, dirty_at) {
                    (Fsync::Interval(every), Some(at)) => {
                        let left = every.saturating_sub(at.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        futures_lite::future::or(self.woken(), rt::sleep(left)).await;
                    }
                    _ => self.woken().await,
                }
            }
            let stats = host.stats();
            let flush = self.flush_asked.get();
            let compact = self.compaction_due(&*host);
            // Taken at one instant, with no await between: the batch holds every record
            // logged before the checkpoint, the next batch every one after it.
            let data = std::mem::take(&mut *self.pending.borrow_mut());
            let records = self.pending_records.replace(0);
            let held = std::mem::take(&mut *self.held.borrow_mut());
            let checkpoint = compact.then(|| {
                let mut cp = Vec::new();
                host.checkpoint(&mut cp);
                cp
            });
            if !data.is_empty() {
                if file.is_none() {
                    match self.open_segment(stats).await {
                        Ok(f) => file = Some(f),
                        Err(e) => self.io_error(stats, "creating a segment", &e),
                    }
                }
                if let Some(f) = &mut file {
                    let len = data.len() as u64;
                    match f.append(data).await {
                        Ok(()) => {
                            add(&stats.log_bytes, len);
                            self.disk_bytes.set(self.disk_bytes.get() + len);
                            unsynced += records;
                            dirty_at.get_or_insert_with(Instant::now);
                        }
                        Err(e) => self.io_error(stats, "writing", &e),
                    }
                }
            }
            let full = file.as_ref().is_some_and(|f| f.len() >= self.segment_bytes);
            let due = match (self.policy, dirty_at) {
                (Fsync::Always, _) => true,
                (Fsync::Interval(every), Some(at)) => at.elapsed() >= every,
                _ => false,
            };
            if unsynced > 0 && (due || full || checkpoint.is_some() || flush > self.flush_done.get()) {
                if let Some(f) = &file {
                    let started = Instant::now();
                    match f.sync().await {
                        Ok(()) => {
                            stats.record_fsync(started.elapsed());
                            add(&stats.log_records_synced, unsynced);
                        }
                        Err(e) => self.io_error(stats, "syncing", &e),
                    }
                }
                (unsynced, dirty_at) = (0, None);
            }
            host.release(held);
            if full || checkpoint.is_some() {
                if let Some(f) = file.take() {
                    if let Err(e) = f.close().await {
                        self.io_error(stats, "closing a segment", &e);
                    }
                }
            }
            if let Some(cp) = checkpoint {
                if let Err(e) = self.write_checkpoint(cp, stats).await {
                    self.io_error(stats, "compacting", &e);
                }
            }
            self.flush_done.set(flush);
            for w in self.flushers.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

/// Deletes the segments of `dir` older than generation `generation`; returns how many.
fn delete_before(dir: &Path, generation: u64) -> io::Result<u64> {
    let mut n = 0;
    for f in std::fs::read_dir(dir)? {
        let f = f?;
        if journal::parse_segment_name(&f.file_name().to_string_lossy()).is_some_and(|g| g < generation) {
            std::fs::remove_file(f.path())?;
            n += 1;
        }
    }
    Ok(n)
}
