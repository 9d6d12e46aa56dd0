//! A timeline's WAL on disk: a directory of segment files, appended by one writer, read by many.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::index::{SegmentEntry, WalIndex};
use super::segment::{self, Corrupt, TornTail};
use super::sync_dir;

/// The writer side: owns the open tail segment.
pub struct WalStore {
    dir: PathBuf,
    segment_size: u64,
    index: Arc<RwLock<WalIndex>>,
    /// Shared with a [`SyncTarget`], so the fdatasync can run while the next records are written.
    tail: Option<Arc<File>>,
    /// End of the WAL known to be durable.
    synced_end: Option<u64>,
    /// fdatasyncs of WAL segments that succeeded (tests check group commit with it).
    syncs: Arc<AtomicU64>,
}

/// What one fdatasync makes durable: the tail segment, up to `end`. Taken under the writer's lock,
/// synced outside it, then reported back with [`WalStore::mark_synced`].
pub struct SyncTarget {
    file: Arc<File>,
    pub end: u64,
    syncs: Arc<AtomicU64>,
}

impl SyncTarget {
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What opening a store found and repaired.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub torn_tail: Option<(PathBuf, TornTail)>,
    /// Corrupt ranges, kept (never truncated) and refused to readers.
    pub corrupt: Vec<(PathBuf, Corrupt)>,
}

impl WalStore {
    /// Opens (creating) the store in `dir`: scans every segment, truncates a torn tail of the last
    /// one, and notes corrupt ranges (invalid bytes with valid WAL after them), which stay on disk
    /// and are refused to readers; the rest stays available.
    pub fn open(dir: &Path, segment_size: u64) -> io::Result<(Self, OpenReport)> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            sync_dir(dir.parent().expect("the WAL directory has a parent"))?;
        }
        let mut starts = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            if let Some(start) = name.to_str().and_then(segment::parse_file_name) {
                starts.push(start);
            }
        }
        starts.sort_unstable();
        let mut index = WalIndex::default();
        let mut report = OpenReport::default();
        for (i, start) in starts.iter().copied().enumerate() {
            let path = dir.join(segment::file_name(start));
            let is_last = i + 1 == starts.len();
            if let Some(end) = index.end_lsn().filter(|end| *end != start) {
                return Err(invalid(format!(
                    "{}: segment starts at LSN {start} but the previous one ends at {end}",
                    path.display()
                )));
            }
            let scan = segment::scan(&path, start, starts.get(i + 1).copied())?;
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
                let file = OpenOptions::new().append(true).open(&last.path)?;
                // A crash between write and fdatasync leaves bytes that the scan accepts but that
                // were never acknowledged as durable: make them durable before reporting them so.
                file.sync_data()?;
                Some(Arc::new(file))
            }
            None => None,
        };
        let store = Self {
            dir: dir.to_path_buf(),
            segment_size,
            synced_end: index.end_lsn(),
            index: Arc::new(RwLock::new(index)),
            tail,
            syncs: Arc::new(AtomicU64::new(0)),
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
        self.syncs.load(Ordering::Relaxed)
    }

    /// Writes one record at `start_lsn`, which the caller has checked continues the WAL. Not
    /// durable until synced ([`sync`](Self::sync) or a [`SyncTarget`]).
    pub fn append(&mut self, start_lsn: u64, data: &[u8]) -> io::Result<()> {
        let tail_full = self
            .index
            .read()
            .expect("index lock")
            .last()
            .is_none_or(|s| s.file_len >= self.segment_size);
        if self.tail.is_none() || tail_full {
            self.start_segment(start_lsn)?;
        }
        let header = segment::encode_header(start_lsn, data);
        let tail: &File = self.tail.as_ref().expect("tail segment is open");
        write_all_vectored(tail, &header, data)?;
        let mut index = self.index.write().expect("index lock");
        index.note_record(start_lsn, data.len() as u64);
        Ok(())
    }

    fn start_segment(&mut self, start_lsn: u64) -> io::Result<()> {
        // The sealed segment must be durable before anything lands in its successor.
        self.sync()?;
        let path = self.dir.join(segment::file_name(start_lsn));
        let file = OpenOptions::new().append(true).create_new(true).open(&path)?;
        sync_dir(&self.dir)?;
        self.tail = Some(Arc::new(file));
        self.index
            .write()
            .expect("index lock")
            .push(SegmentEntry::new(path, start_lsn));
        Ok(())
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
            syncs: self.syncs.clone(),
        })
    }

    /// Records that a [`SyncTarget`] was synced.
    pub fn mark_synced(&mut self, end: u64) {
        self.synced_end = self.synced_end.max(Some(end));
    }

    /// Makes everything written so far durable (one `fdatasync`); tells whether one was needed.
    pub fn sync(&mut self) -> io::Result<bool> {
        let Some(target) = self.sync_target() else {
            return Ok(false);
        };
        target.sync()?;
        self.mark_synced(target.end);
        Ok(true)
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

/// Why a read was refused: it overlaps WAL found corrupt when the store was opened.
#[derive(Debug, thiserror::Error)]
#[error("WAL [{from}, {to}) is corrupt on disk (found when walsync started)")]
pub struct KnownCorrupt {
    pub from: u64,
    pub to: u64,
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
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    KnownCorrupt { from, to },
                ));
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
            segment::read_range(&piece.path, piece.mark, piece.from, piece.to, &mut out)?;
        }
        Ok(out)
    }
}

/// Writes a record's header and payload with one system call where it can: one syscall, no copy.
fn write_all_vectored(mut file: &File, header: &[u8], data: &[u8]) -> io::Result<()> {
    let total = header.len() + data.len();
    let written = file.write_vectored(&[io::IoSlice::new(header), io::IoSlice::new(data)])?;
    if written < header.len() {
        file.write_all(&header[written..])?;
        file.write_all(data)
    } else if written < total {
        file.write_all(&data[written - header.len()..])
    } else {
        Ok(())
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_roll_segments_and_survive_reopen_with_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = WalStore::open(dir.path(), 100).unwrap();
        let mut expected = Vec::new();
        let mut lsn = 5000;
        for i in 0..20u8 {
            let chunk = vec![i; 30];
            store.append(lsn, &chunk).unwrap();
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
            .max()
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&tail).unwrap();
        f.write_all(&segment::encode_header(lsn, b"lost")[..12]).unwrap();
        let (store, report) = WalStore::open(dir.path(), 100).unwrap();
        assert_eq!(report.torn_tail.unwrap().0, tail);
        assert_eq!(store.reader().bounds(), Some((5000, lsn)));
        assert_eq!(store.reader().read(5000, lsn).unwrap(), expected);
    }

    #[test]
    fn corrupt_records_are_kept_and_refused_to_readers_and_the_rest_stays_available() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = WalStore::open(dir.path(), 100).unwrap();
        // Segments of 3 records each: [0, 60), [60, 120).
        for i in 0..6u64 {
            store.append(i * 20, &[i as u8; 20]).unwrap();
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
            assert!(err.get_ref().unwrap().is::<KnownCorrupt>());
        }
        assert_eq!(reader.read(0, 40).unwrap(), [[0; 20], [1; 20]].concat());
        assert_eq!(reader.read(60, 80).unwrap(), vec![3; 20]);
        assert_eq!(reader.read(100, 120).unwrap(), vec![5; 20]);
        // Appends go on after the last valid record.
        store.append(120, &[6; 20]).unwrap();
        store.sync().unwrap();
        assert_eq!(reader.read(100, 140).unwrap(), [[5; 20], [6; 20]].concat());
    }

    #[test]
    fn a_sealed_segment_running_past_the_next_one_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = WalStore::open(dir.path(), 10).unwrap();
        store.append(0, &[1; 20]).unwrap();
        store.append(20, &[2; 20]).unwrap();
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
            store.append(i * 20, &[i as u8; 20]).unwrap();
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
