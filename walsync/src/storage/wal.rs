//! A timeline's WAL on disk: a directory of segment files, appended by one writer, read by many.
//!
//! Besides the segments, `synced_lsn` records how far the WAL is known synced (the watermark): a
//! record below it was fdatasynced, and so acknowledged, and bad bytes there are corruption, never
//! a torn write. It is rewritten (no fsync of its own) after every fdatasync of the WAL, so after a
//! process crash the page cache holds its latest value; after a power loss it may be older, which
//! only means fewer bad bytes are recognised as corruption (see `segment::scan`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::index::{SegmentEntry, WalIndex};
use super::segment::{self, Corrupt, TornTail};
use super::spare::SpareSegment;
use super::sync_dir;

/// The watermark file in the WAL directory: `[u64 lsn][u32 crc32c(lsn)]`, little-endian.
const WATERMARK_FILE: &str = "synced_lsn";
const WATERMARK_LEN: usize = 12;
/// Capacity of the record buffer kept between appends.
const RECORD_BUFFER_KEPT: usize = 64 << 10;

/// The writer side: owns the open tail segment.
pub struct WalStore {
    dir: PathBuf,
    segment_size: u64,
    index: Arc<RwLock<WalIndex>>,
    /// Shared with a [`SyncTarget`], so the fdatasync can run while the next records are written.
    /// Records are written at their offset (a segment may start as zeros), never appended.
    tail: Option<Arc<File>>,
    /// The zeroed file the next segment starts as.
    spare: SpareSegment,
    /// One record (header and payload) as written: one `pwrite`, no allocation per record.
    record: Vec<u8>,
    /// End of the WAL known to be durable.
    synced_end: Option<u64>,
    sync_state: Arc<SyncState>,
}

/// How a new segment started: from a zeroed spare, or empty (no spare was ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentStart {
    Zeroed,
    Empty,
}

impl SegmentStart {
    pub fn label(self) -> &'static str {
        match self {
            SegmentStart::Zeroed => "zeroed",
            SegmentStart::Empty => "empty",
        }
    }
}

/// What every fdatasync of this store shares.
struct SyncState {
    /// The watermark file, rewritten after each fdatasync.
    watermark: File,
    /// An fdatasync is in progress: the writer never starts a second one of the same WAL (on
    /// Linux a writeback error is reported to only one of two concurrent fsyncs of a file).
    in_flight: AtomicBool,
    /// fdatasyncs of WAL segments that succeeded (tests check group commit with it).
    syncs: AtomicU64,
    /// Runs inside every fdatasync (tests hold one in progress with it).
    #[cfg(test)]
    hook: std::sync::Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

/// What one fdatasync makes durable: the tail segment, up to `end`. Taken under the writer's lock,
/// synced (in or outside it), then reported back with [`WalStore::mark_synced`]. The writer makes
/// sure only one is in progress at a time.
pub struct SyncTarget {
    file: Arc<File>,
    pub end: u64,
    state: Arc<SyncState>,
}

impl SyncTarget {
    /// fdatasyncs the tail segment, then records the new watermark; returns how long it took.
    pub fn sync(&self) -> (io::Result<()>, Duration) {
        let started = Instant::now();
        let overlapping = self.state.in_flight.swap(true, Ordering::AcqRel);
        debug_assert!(!overlapping, "two fdatasyncs of one WAL in flight");
        #[cfg(test)]
        if let Some(hook) = self.state.hook.lock().unwrap().clone() {
            hook();
        }
        let result = self
            .file
            .sync_data()
            .and_then(|()| write_watermark(&self.state.watermark, self.end));
        self.state.in_flight.store(false, Ordering::Release);
        if result.is_ok() {
            self.state.syncs.fetch_add(1, Ordering::Relaxed);
        }
        (result, started.elapsed())
    }
}

fn write_watermark(file: &File, lsn: u64) -> io::Result<()> {
    let mut buf = [0u8; WATERMARK_LEN];
    buf[..8].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c(&buf[..8]);
    buf[8..].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&buf, 0)
}

/// The recorded watermark; `None` if there is none or it is unreadable (a torn write of it).
fn read_watermark(file: &File) -> io::Result<Option<u64>> {
    let mut buf = [0u8; WATERMARK_LEN];
    match file.read_exact_at(&mut buf, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let crc = u32::from_le_bytes(buf[8..].try_into().expect("4 bytes"));
    let lsn = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    Ok((crc32c::crc32c(&buf[..8]) == crc).then_some(lsn))
}

/// What opening a store found and repaired.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub torn_tail: Option<(PathBuf, TornTail)>,
    /// Corrupt ranges, kept (never truncated) and refused to readers.
    pub corrupt: Vec<(PathBuf, Corrupt)>,
    /// The watermark found (how far the WAL was known synced).
    pub watermark: Option<u64>,
}

impl WalStore {
    /// Opens (creating) the store in `dir`: scans every segment, truncates a torn tail of the last
    /// one (only past the watermark), and notes corrupt ranges (invalid bytes with valid WAL after
    /// them, or below the watermark), which stay on disk and are refused to readers; the rest
    /// stays available.
    pub fn open(dir: &Path, segment_size: u64) -> io::Result<(Self, OpenReport)> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            sync_dir(dir.parent().expect("the WAL directory has a parent"))?;
        }
        let watermark_path = dir.join(WATERMARK_FILE);
        let watermark_existed = watermark_path.exists();
        let watermark_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&watermark_path)?;
        if !watermark_existed {
            sync_dir(dir)?;
        }
        let watermark = read_watermark(&watermark_file)?;
        let mut starts = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            if let Some(start) = name.to_str().and_then(segment::parse_file_name) {
                starts.push(start);
            }
        }
        starts.sort_unstable();
        let mut index = WalIndex::default();
        let mut report = OpenReport {
            watermark,
            ..OpenReport::default()
        };
        for (i, start) in starts.iter().copied().enumerate() {
            let path = dir.join(segment::file_name(start));
            let is_last = i + 1 == starts.len();
            if let Some(end) = index.end_lsn().filter(|end| *end != start) {
                return Err(invalid(format!(
                    "{}: segment starts at LSN {start} but the previous one ends at {end}",
                    path.display()
                )));
            }
            let scan = segment::scan(&path, start, starts.get(i + 1).copied(), watermark)?;
            let entry = scan.entry;
            report
                .corrupt
                .extend(scan.corrupt.into_iter().map(|c| (path.clone(), c)));
            if let Some(torn) = scan.torn {
                if !is_last {
                    return Err(invalid(format!(
                        "{}: invalid record at offset {} ({}) in a sealed segment, past the LSN \
                         where the next segment starts",
                        path.display(),
                        torn.offset,
                        torn.reason
                    )));
                }
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(torn.offset)?;
                file.sync_all()?;
                report.torn_tail = Some((path.clone(), torn));
            }
            if is_last && entry.file_len == 0 {
                // Created but never written: the next append starts a segment where it needs one.
                fs::remove_file(&path)?;
                sync_dir(dir)?;
                continue;
            }
            index.push(entry);
        }
        let tail = match index.last() {
            Some(last) => {
                let file = OpenOptions::new().write(true).open(&last.path)?;
                // A crash between write and fdatasync leaves bytes that the scan accepts but that
                // were never acknowledged as durable: make them durable before reporting them so.
                file.sync_data()?;
                Some(Arc::new(file))
            }
            None => None,
        };
        if let Some(end) = index.end_lsn() {
            write_watermark(&watermark_file, end)?;
        }
        let spare = SpareSegment::open(dir, segment_size);
        let store = Self {
            dir: dir.to_path_buf(),
            segment_size,
            spare,
            record: Vec::new(),
            synced_end: index.end_lsn(),
            index: Arc::new(RwLock::new(index)),
            tail,
            sync_state: Arc::new(SyncState {
                watermark: watermark_file,
                in_flight: AtomicBool::new(false),
                syncs: AtomicU64::new(0),
                #[cfg(test)]
                hook: std::sync::Mutex::new(None),
            }),
        };
        Ok((store, report))
    }

    pub fn reader(&self) -> WalReader {
        WalReader {
            index: self.index.clone(),
        }
    }

    /// End of the written (not necessarily durable) WAL.
    pub fn end_lsn(&self) -> Option<u64> {
        self.index.read().expect("index lock").end_lsn()
    }

    /// End of the durable WAL.
    pub fn synced_end(&self) -> Option<u64> {
        self.synced_end
    }

    /// Successful WAL fdatasyncs so far.
    pub fn syncs(&self) -> u64 {
        self.sync_state.syncs.load(Ordering::Relaxed)
    }

    /// Runs `hook` inside every fdatasync from now on.
    #[cfg(test)]
    pub fn set_sync_hook(&self, hook: Arc<dyn Fn() + Send + Sync>) {
        *self.sync_state.hook.lock().unwrap() = Some(hook);
    }

    /// Starts making the zeroed file the next segment starts as, unless one is ready or being
    /// made (when a writer arrives; rolls start the next one themselves).
    pub fn prepare_spare(&self) {
        self.spare.prepare_in_background();
    }

    /// Whether the next append starts a new segment, which needs everything written so far
    /// synced first (and no fdatasync in progress).
    pub fn needs_new_segment(&self) -> bool {
        self.tail.is_none()
            || self
                .index
                .read()
                .expect("index lock")
                .last()
                .is_none_or(|s| s.file_len >= self.segment_size)
    }

    /// Writes one record at `start_lsn`, which the caller has checked continues the WAL. Not
    /// durable until synced (a [`SyncTarget`]). If it starts a new segment
    /// ([`needs_new_segment`](Self::needs_new_segment)), the WAL written so far must be synced;
    /// then says how that segment started.
    pub fn append(&mut self, start_lsn: u64, data: &[u8]) -> io::Result<Option<SegmentStart>> {
        let started = if self.needs_new_segment() {
            Some(self.start_segment(start_lsn)?)
        } else {
            None
        };
        self.record.clear();
        self.record
            .extend_from_slice(&segment::encode_header(start_lsn, data));
        self.record.extend_from_slice(data);
        let offset = self
            .index
            .read()
            .expect("index lock")
            .last()
            .expect("tail segment is indexed")
            .file_len;
        let tail: &File = self.tail.as_ref().expect("tail segment is open");
        let written = tail.write_all_at(&self.record, offset);
        // Up to 16 MiB for InnoDB's largest mtr: not kept per timeline.
        self.record.shrink_to(RECORD_BUFFER_KEPT);
        written?;
        let mut index = self.index.write().expect("index lock");
        index.note_record(start_lsn, data.len() as u64);
        Ok(started)
    }

    fn start_segment(&mut self, start_lsn: u64) -> io::Result<SegmentStart> {
        // The sealed segment must be durable before anything lands in its successor; the writer
        // syncs it first (through its one sync path, which also keeps the accounting).
        if self.sync_target().is_some() {
            return Err(io::Error::other(
                "internal error: a new segment would start before the previous one is synced",
            ));
        }
        let path = self.dir.join(segment::file_name(start_lsn));
        let (file, started) = if self.spare.take(&path)? {
            (OpenOptions::new().write(true).open(&path)?, SegmentStart::Zeroed)
        } else {
            tracing::info!(
                dir = %self.dir.display(),
                "no zeroed segment ready: starting an empty one (its commits are slower)"
            );
            let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
            (file, SegmentStart::Empty)
        };
        sync_dir(&self.dir)?;
        self.spare.prepare_in_background();
        self.tail = Some(Arc::new(file));
        self.index
            .write()
            .expect("index lock")
            .push(SegmentEntry::new(path, start_lsn));
        Ok(started)
    }

    /// What an fdatasync now would make durable; `None` if everything written is durable.
    pub fn sync_target(&self) -> Option<SyncTarget> {
        let end = self.end_lsn()?;
        if self.synced_end.is_some_and(|synced| synced >= end) {
            return None;
        }
        Some(SyncTarget {
            file: self.tail.clone().expect("written WAL has a tail segment"),
            end,
            state: self.sync_state.clone(),
        })
    }

    /// Records that a [`SyncTarget`] was synced.
    pub fn mark_synced(&mut self, end: u64) {
        self.synced_end = self.synced_end.max(Some(end));
    }

    /// Syncs everything written (tests: the writer syncs through its own accounting).
    #[cfg(test)]
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(target) = self.sync_target() {
            target.sync().0?;
            self.mark_synced(target.end);
        }
        Ok(())
    }

    /// Deletes the segments wholly below `lsn` (never the tail); returns the bytes freed.
    pub fn remove_before(&mut self, lsn: u64) -> io::Result<u64> {
        let removed = self.index.write().expect("index lock").remove_before(lsn);
        let mut freed = 0;
        for segment in &removed {
            fs::remove_file(&segment.path)?;
            freed += segment.file_len;
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(freed)
    }
}

/// Why a read was refused: it overlaps WAL known corrupt (found when the store was opened, or by
/// an earlier read's CRC check, or by this one: `newly_found`).
#[derive(Debug, thiserror::Error)]
#[error("WAL [{from}, {to}) is corrupt on disk{}", if *.newly_found { "" } else { " (found earlier)" })]
pub struct CorruptWal {
    pub from: u64,
    pub to: u64,
    pub newly_found: bool,
    /// What the check that found it saw (if it was this read).
    pub detail: Option<String>,
}

/// The reader side, shared with request handlers.
#[derive(Clone)]
pub struct WalReader {
    index: Arc<RwLock<WalIndex>>,
}

impl WalReader {
    /// `[start, end)` of the stored WAL.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let index = self.index.read().expect("index lock");
        Some((index.start_lsn()?, index.end_lsn()?))
    }

    pub fn stored_bytes(&self) -> u64 {
        self.index.read().expect("index lock").stored_bytes()
    }

    /// Stored WAL (LSN bytes) that is corrupt.
    pub fn corrupt_bytes(&self) -> u64 {
        self.index.read().expect("index lock").corrupt_bytes()
    }

    /// The first corrupt range overlapping `[from, to)`.
    pub fn corrupt_in(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        self.index.read().expect("index lock").corrupt_in(from, to)
    }

    /// Reads `[from, to)`, which must lie within [`bounds`](Self::bounds). A segment removed by
    /// retention meanwhile surfaces as `NotFound`, corrupt WAL as `InvalidData`.
    pub fn read(&self, from: u64, to: u64) -> io::Result<Vec<u8>> {
        let pieces = {
            let index = self.index.read().expect("index lock");
            if let Some((from, to)) = index.corrupt_in(from, to) {
                let known = CorruptWal {
                    from,
                    to,
                    newly_found: false,
                    detail: None,
                };
                return Err(io::Error::new(io::ErrorKind::InvalidData, known));
            }
            index.plan_read(from, to)
        };
        let covered =
            pieces.first().is_some_and(|p| p.from == from) && pieces.last().is_some_and(|p| p.to == to);
        if !covered && from < to {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("WAL [{from}, {to}) is not stored"),
            ));
        }
        let mut out = Vec::with_capacity((to - from) as usize);
        for piece in pieces {
            let read = segment::read_range(&piece.path, piece.mark, piece.from, piece.to, &mut out);
            if let Err(e) = read {
                return Err(self.note_bad_record(e, piece.mark.lsn));
            }
        }
        Ok(out)
    }

    /// A read failed its check: the bad record is recorded as corrupt, so it is refused (and
    /// reported) once, not found again by every read.
    fn note_bad_record(&self, e: io::Error, mark_lsn: u64) -> io::Error {
        let Some(bad) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<segment::BadRecord>())
        else {
            return e;
        };
        let marked = self
            .index
            .write()
            .expect("index lock")
            .mark_corrupt(bad.lsn, bad.end, mark_lsn);
        match marked {
            Some((from, to, newly_found)) => {
                let corrupt = CorruptWal {
                    from,
                    to,
                    newly_found,
                    detail: Some(bad.to_string()),
                };
                io::Error::new(io::ErrorKind::InvalidData, corrupt)
            }
            None => e,
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::spare::zero_tail_start;

    /// Appends as the writer does: the WAL is synced before a new segment starts.
    fn append(store: &mut WalStore, lsn: u64, data: &[u8]) -> io::Result<()> {
        if store.needs_new_segment() {
            store.sync()?;
        }
        store.append(lsn, data).map(drop)
    }

    #[test]
    fn appends_roll_segments_and_survive_reopen_with_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = WalStore::open(dir.path(), 100).unwrap();
        let mut expected = Vec::new();
        let mut lsn = 5000;
        for i in 0..20u8 {
            let chunk = vec![i; 30];
            append(&mut store, lsn, &chunk).unwrap();
            expected.extend_from_slice(&chunk);
            lsn += 30;
        }
        store.sync().unwrap();
        assert!(fs::read_dir(dir.path()).unwrap().count() > 3);
        assert_eq!(store.reader().read(5000, lsn).unwrap(), expected);
        assert_eq!(store.reader().read(5010, 5100).unwrap(), &expected[10..100]);
        drop(store);

        // A torn record at the end of the tail segment is cut off on open.
        let tail = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .max()
            .unwrap();
        // Where the records end, whether the segment started empty or as zeros.
        let written = zero_tail_start(&fs::read(&tail).unwrap()) as u64;
        let f = OpenOptions::new().write(true).open(&tail).unwrap();
        f.write_all_at(&segment::encode_header(lsn, b"lost")[..12], written)
            .unwrap();
        let (store, report) = WalStore::open(dir.path(), 100).unwrap();
        assert_eq!(
            report.watermark,
            Some(lsn),
            "every fdatasync recorded how far it reached"
        );
        assert_eq!(report.torn_tail.unwrap().0, tail);
        assert_eq!(store.reader().bounds(), Some((5000, lsn)));
        assert_eq!(store.reader().read(5000, lsn).unwrap(), expected);
    }

    #[test]
    fn a_segment_started_from_a_spare_is_written_in_place_and_reopens_at_its_records_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = WalStore::open(dir.path(), 4096).unwrap();
        store.prepare_spare();
        store.spare.wait_prepared();
        append(&mut store, 0, &[1; 100]).unwrap();
        store.sync().unwrap();
        let first = dir.path().join(segment::file_name(0));
        assert_eq!(
            fs::metadata(&first).unwrap().len(),
            4096,
            "the spare became the segment"
        );
        assert_eq!(zero_tail_start(&fs::read(&first).unwrap()), 116);
        drop(store);

        let (mut store, report) = WalStore::open(dir.path(), 4096).unwrap();
        assert!(
            report.torn_tail.is_none() && report.corrupt.is_empty(),
            "{report:?}"
        );
        store.prepare_spare();
        assert_eq!(store.reader().bounds(), Some((0, 100)));
        // The next record goes right after the first, not after the zeros.
        append(&mut store, 100, &[2; 50]).unwrap();
        store.sync().unwrap();
        assert_eq!(zero_tail_start(&fs::read(&first).unwrap()), 116 + 66);
        let mut expected = vec![1; 100];
        expected.extend_from_slice(&[2; 50]);
        assert_eq!(store.reader().read(0, 150).unwrap(), expected);
        // A roll takes the next spare.
        store.spare.wait_prepared();
        append(&mut store, 150, &[3; 4000]).unwrap();
        append(&mut store, 4150, &[4; 10]).unwrap();
        store.sync().unwrap();
        let second = dir.path().join(segment::file_name(4150));
        assert_eq!(fs::metadata(&second).unwrap().len(), 4096);
        assert_eq!(store.reader().read(4150, 4160).unwrap(), vec![4; 10]);
    }

    #[test]
    fn a_rotted_synced_last_record_is_kept_as_corruption_an_unsynced_one_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = WalStore::open(dir.path(), 1000).unwrap();
        append(&mut store, 0, &[1; 20]).unwrap();
        append(&mut store, 20, &[2; 20]).unwrap();
        store.sync().unwrap();
        drop(store);
        let path = dir.path().join(segment::file_name(0));
        let mut bytes = fs::read(&path).unwrap();
        bytes[36 + 16 + 5] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        // Synced (the watermark says so): acknowledged WAL, reported, kept.
        let (mut store, report) = WalStore::open(dir.path(), 1000).unwrap();
        assert!(report.torn_tail.is_none(), "{report:?}");
        let ranges: Vec<_> = report
            .corrupt
            .iter()
            .map(|(_, c)| (c.from_lsn, c.to_lsn))
            .collect();
        assert_eq!(ranges, vec![(20, 40)]);
        assert_eq!(store.synced_end(), Some(40));
        assert_eq!(fs::metadata(&path).unwrap().len(), bytes.len() as u64);
        // Written after it and never synced, then rotted: past the watermark, cut.
        append(&mut store, 40, &[3; 20]).unwrap();
        drop(store);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let (store, report) = WalStore::open(dir.path(), 1000).unwrap();
        assert_eq!(report.torn_tail.unwrap().1.offset, 72);
        assert_eq!(store.reader().bounds(), Some((0, 40)));
        assert_eq!(store.reader().read(0, 20).unwrap(), vec![1; 20]);
    }

    #[test]
    fn corrupt_records_are_kept_and_refused_to_readers_and_the_rest_stays_available() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = WalStore::open(dir.path(), 100).unwrap();
        // Segments of 3 records each: [0, 60), [60, 120).
        for i in 0..6u64 {
            append(&mut store, i * 20, &[i as u8; 20]).unwrap();
        }
        store.sync().unwrap();
        drop(store);
        let first = dir.path().join(segment::file_name(0));
        let last = dir.path().join(segment::file_name(60));
        let last_len = fs::metadata(&last).unwrap().len();
        // Rot in the middle record of the last segment and in the last record of the first.
        for (path, offset) in [(&last, 36 + 16 + 5), (&first, 2 * 36 + 16 + 3)] {
            let mut bytes = fs::read(path).unwrap();
            bytes[offset] ^= 0x80;
            fs::write(path, bytes).unwrap();
        }
        let (mut store, report) = WalStore::open(dir.path(), 100).unwrap();
        assert!(report.torn_tail.is_none(), "{report:?}");
        let ranges: Vec<_> = report
            .corrupt
            .iter()
            .map(|(_, c)| (c.from_lsn, c.to_lsn))
            .collect();
        assert_eq!(ranges, vec![(40, 60), (80, 100)]);
        assert_eq!(fs::metadata(&last).unwrap().len(), last_len, "nothing was cut");
        assert_eq!(store.reader().bounds(), Some((0, 120)));
        assert_eq!(store.synced_end(), Some(120));
        assert_eq!(store.reader().corrupt_bytes(), 40);
        let reader = store.reader();
        for (from, to) in [(30, 50), (85, 86), (0, 120)] {
            let err = reader.read(from, to).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.get_ref().unwrap().is::<CorruptWal>());
        }
        assert_eq!(reader.read(0, 40).unwrap(), [[0; 20], [1; 20]].concat());
        assert_eq!(reader.read(60, 80).unwrap(), vec![3; 20]);
        assert_eq!(reader.read(100, 120).unwrap(), vec![5; 20]);
        // Appends go on after the last valid record.
        append(&mut store, 120, &[6; 20]).unwrap();
        store.sync().unwrap();
        assert_eq!(reader.read(100, 140).unwrap(), [[5; 20], [6; 20]].concat());
    }

    #[test]
    fn a_sealed_segment_running_past_the_next_one_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = WalStore::open(dir.path(), 10).unwrap();
        append(&mut store, 0, &[1; 20]).unwrap();
        append(&mut store, 20, &[2; 20]).unwrap();
        store.sync().unwrap();
        drop(store);
        // The second segment claims to start inside the first one's WAL.
        let second = dir.path().join(segment::file_name(20));
        fs::rename(&second, dir.path().join(segment::file_name(10))).unwrap();
        let err = WalStore::open(dir.path(), 10).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn retention_frees_whole_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = WalStore::open(dir.path(), 10).unwrap();
        for i in 0..5u64 {
            append(&mut store, i * 20, &[i as u8; 20]).unwrap();
        }
        store.sync().unwrap();
        assert_eq!(store.remove_before(50).unwrap(), 72);
        assert_eq!(store.reader().bounds(), Some((40, 100)));
        assert_eq!(store.reader().read(40, 45).unwrap(), vec![2; 5]);
        assert_eq!(
            store.reader().read(30, 45).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
