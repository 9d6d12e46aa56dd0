//! Redo tailing: turns writes to `ib_logfile0` into what the WAL service needs.
//!
//! InnoDB writes its log in blocks (512 B on FUSE) and rewrites the last, partial block again and
//! again as mtrs are appended, so write ranges say little. After each write the tailer re-reads
//! the log from the end of the last complete mtr it saw and runs the same scanner recovery uses:
//! only complete, CRC-valid mini-transactions count (`research/innodb-format.md` 1.5). Writes to
//! the header block give the log's geometry; writes to a checkpoint block give a checkpoint.

use std::fs::File;
use std::os::unix::fs::FileExt;

use ibd_format::redo::{
    Checkpoint, CheckpointSlot, LogFile, LogGeometry, LogHeader, Lsn, Mtr, MtrScanner, ScanStop,
    CHECKPOINT_BLOCK_LEN, HEADER_BLOCK_LEN, MIN_FILE_SIZE, START_OFFSET,
};

/// What a write to the log revealed, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedoEvent {
    /// A header with a new geometry: a new log (`mariadb-install-db`, or a resize).
    Geometry { geometry: LogGeometry, creator: String },
    /// A checkpoint block was written.
    Checkpoint {
        slot: CheckpointSlot,
        checkpoint: Checkpoint,
    },
    /// Complete mtrs `[start_lsn, start_lsn + bytes.len())`, exactly as written.
    Wal {
        start_lsn: Lsn,
        bytes: Vec<u8>,
        mtrs: Vec<Mtr>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("reading the redo log: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed redo record in the mtr at LSN {lsn}: {what}")]
    Malformed { lsn: Lsn, what: &'static str },
}

/// The tail of one redo log file.
#[derive(Debug, Clone, Default)]
pub struct RedoTailer {
    geometry: Option<LogGeometry>,
    encrypted: bool,
    /// End of the last complete mtr seen: where the next scan starts.
    complete_lsn: Option<Lsn>,
    checkpoint: Option<Checkpoint>,
}

impl RedoTailer {
    /// Picks up an existing log (a remount with the cache kept): the tail is where the server's
    /// recovery would find the end of the log.
    pub fn from_existing(bytes: &[u8]) -> Option<Self> {
        let log = LogFile::parse(bytes).ok()?;
        let scan = log.recovery_scan().ok()?;
        Some(Self {
            geometry: Some(log.geometry()),
            encrypted: log.header().encrypted,
            complete_lsn: Some(scan.end_lsn),
            checkpoint: Some(scan.checkpoint),
        })
    }

    pub fn geometry(&self) -> Option<LogGeometry> {
        self.geometry
    }

    /// End of the last complete mtr seen.
    pub fn complete_lsn(&self) -> Option<Lsn> {
        self.complete_lsn
    }

    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint
    }

    /// Makes the next write ship again from `lsn` (which must still be in the circular file):
    /// after an unclean stop, walsync may hold less than the local log.
    pub fn rewind_to(&mut self, lsn: Lsn) -> bool {
        let (Some(g), Some(complete)) = (self.geometry, self.complete_lsn) else {
            return false;
        };
        if lsn < g.first_lsn || lsn > complete || complete - lsn >= g.capacity() {
            return false;
        }
        self.complete_lsn = Some(lsn);
        true
    }

    /// Called after `[offset, offset + len)` of the log `file` was written. `shipped`: where the
    /// WAL already handed to walsync ends when another log file is being tailed too (a resize:
    /// InnoDB writes the same byte stream to `ib_logfile0` and `ib_logfile101`).
    pub fn on_write(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        shipped: Option<Lsn>,
    ) -> Result<Vec<RedoEvent>, TailError> {
        let mut events = Vec::new();
        let end = offset + len;
        // The log's size is its file's size; it is set once, right after the file is created.
        let file_size = file.metadata()?.len();
        if offset < HEADER_BLOCK_LEN as u64 || self.geometry.is_none() {
            let mut block = [0u8; HEADER_BLOCK_LEN];
            if file_size >= HEADER_BLOCK_LEN as u64 {
                file.read_exact_at(&mut block, 0)?;
            }
            if let Ok(header) = LogHeader::parse(&block) {
                self.adopt_header(&header, file_size, &mut events);
            }
        }
        if let Some(g) = self.geometry.as_mut() {
            if file_size != g.file_size && file_size >= MIN_FILE_SIZE {
                g.file_size = file_size;
            }
        }
        for slot in CheckpointSlot::ALL {
            let at = slot.offset();
            if offset < at + CHECKPOINT_BLOCK_LEN as u64 && end > at {
                let mut block = [0u8; CHECKPOINT_BLOCK_LEN];
                file.read_exact_at(&mut block, at)?;
                let first_lsn = self.geometry.map_or(START_OFFSET, |g| g.first_lsn);
                if let Some(checkpoint) = Checkpoint::parse(&block, first_lsn) {
                    self.checkpoint = Some(checkpoint);
                    events.push(RedoEvent::Checkpoint { slot, checkpoint });
                }
            }
        }
        if let Some(shipped) = shipped {
            self.skip_shipped(shipped, end);
        }
        if end > START_OFFSET {
            self.scan(file, end, &mut events)?;
        }
        Ok(events)
    }

    /// Continues from `shipped` (an mtr boundary another log file's tail found) once this file
    /// holds the stream up to there. A log created by an online resize starts at a block boundary
    /// in the middle of an mtr, so scanning from its first LSN would never find a complete one;
    /// and the old log, still written during the resize, need not ship what the new one did.
    fn skip_shipped(&mut self, shipped: Lsn, write_end: u64) {
        let (Some(g), Some(from)) = (self.geometry, self.complete_lsn) else {
            return;
        };
        if shipped <= from || shipped - from >= g.capacity() {
            return;
        }
        let reached = from + (write_end.min(g.file_size) + g.capacity() - g.offset(from)) % g.capacity();
        if reached >= shipped {
            self.complete_lsn = Some(shipped);
        }
    }

    fn adopt_header(&mut self, header: &LogHeader, file_size: u64, events: &mut Vec<RedoEvent>) {
        // A header written before the file got its size is adopted on a later write.
        let Ok(geometry) = LogGeometry::new(header.first_lsn, file_size) else {
            return;
        };
        if self.geometry.map(|g| g.first_lsn) == Some(geometry.first_lsn) {
            return;
        }
        // A new log: its records start at its first LSN.
        self.geometry = Some(geometry);
        self.encrypted = header.encrypted;
        self.complete_lsn = Some(geometry.first_lsn);
        self.checkpoint = None;
        events.push(RedoEvent::Geometry {
            geometry,
            creator: header.creator.clone(),
        });
    }

    /// Reports the complete mtrs already in the file from `complete_lsn` up to `upto` (after a
    /// rewind: the WAL service must get them before the next fsync, even if no write comes first).
    pub fn catch_up(&mut self, file: &File, upto: Lsn) -> Result<Vec<RedoEvent>, TailError> {
        let mut events = Vec::new();
        if let Some(g) = self.geometry {
            self.scan(file, g.offset(upto), &mut events)?;
        }
        Ok(events)
    }

    /// Scans complete mtrs from `complete_lsn` up to the LSN the write ending at file offset
    /// `write_end` reached.
    fn scan(&mut self, file: &File, write_end: u64, events: &mut Vec<RedoEvent>) -> Result<(), TailError> {
        let (Some(g), Some(from)) = (self.geometry, self.complete_lsn) else {
            return Ok(());
        };
        let from_offset = g.offset(from);
        // The write may rewrite the block holding `from` (write_end is then just past it) or
        // reach further around the ring; never more than one lap.
        let ahead = (write_end.min(g.file_size) + g.capacity() - from_offset) % g.capacity();
        if ahead == 0 {
            return Ok(());
        }
        let mut bytes = vec![0u8; ahead as usize];
        let mut filled = 0;
        for (offset, n) in g.file_ranges(from, ahead) {
            file.read_exact_at(&mut bytes[filled..filled + n as usize], offset)?;
            filled += n as usize;
        }
        let mut scanner = MtrScanner::new(&bytes, from, g).encrypted(self.encrypted);
        let mtrs: Vec<Mtr> = scanner.by_ref().collect();
        if let Some(ScanStop::Malformed { lsn, what }) = scanner.stop() {
            return Err(TailError::Malformed { lsn: *lsn, what });
        }
        let end = scanner.lsn();
        if end > from {
            bytes.truncate((end - from) as usize);
            self.complete_lsn = Some(end);
            events.push(RedoEvent::Wal {
                start_lsn: from,
                bytes,
                mtrs,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::Path;

    use super::*;

    const BLOCK: u64 = 512;

    /// A crashed log the installed server wrote, and the end LSN it reported when recovering it.
    fn sample(name: &str) -> (Vec<u8>, Lsn) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ibd-format/testdata/redo");
        let gz = std::fs::File::open(dir.join(format!("{name}.ib_logfile0.gz"))).unwrap();
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut bytes).unwrap();
        let env = std::fs::read_to_string(dir.join(format!("{name}.env"))).unwrap();
        let end = env
            .trim()
            .strip_prefix("SERVER_END_OF_LOG_LSN=")
            .unwrap()
            .parse()
            .unwrap();
        (bytes, end)
    }

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), bytes).unwrap();
        let file = File::options().read(true).write(true).open(tmp.path()).unwrap();
        (tmp, file)
    }

    /// Writes the logical bytes `[from, to)` of `log` into `file` the way InnoDB does on FUSE:
    /// whole 512-byte blocks, the partial last block padded with zeros and rewritten by the next
    /// write. Returns every event the tailer reported.
    fn replay(tailer: &mut RedoTailer, file: &File, log: &LogFile, from: Lsn, to: Lsn) -> Vec<RedoEvent> {
        let g = log.geometry();
        let data = log.logical(from, to - from);
        let mut events = Vec::new();
        let (mut pos, mut step) = (0u64, 1u64);
        while pos < data.len() as u64 {
            step = (step * 7919 + 13) % 6000 + 1; // varied write sizes, deterministic
            let new_pos = (pos + step).min(data.len() as u64);
            // Start at the block holding `pos`, as the server rewrites its partial last block.
            let block_start = pos - (g.offset(from + pos) % BLOCK).min(pos);
            let mut chunk = data[block_start as usize..new_pos as usize].to_vec();
            chunk.resize(chunk.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
            for (offset, n) in g.file_ranges(from + block_start, chunk.len() as u64) {
                let skip = (offset + g.capacity() - g.offset(from + block_start)) % g.capacity();
                file.write_all_at(&chunk[skip as usize..(skip + n) as usize], offset)
                    .unwrap();
                events.extend(tailer.on_write(file, offset, n, None).unwrap());
            }
            pos = new_pos;
        }
        events
    }

    fn wal_of(events: &[RedoEvent]) -> (Vec<u8>, Vec<Mtr>, Option<Lsn>) {
        let (mut bytes, mut mtrs, mut next) = (Vec::new(), Vec::new(), None::<Lsn>);
        for e in events {
            if let RedoEvent::Wal {
                start_lsn,
                bytes: b,
                mtrs: m,
            } = e
            {
                if let Some(n) = next {
                    assert_eq!(*start_lsn, n, "shipped WAL is contiguous");
                }
                next = Some(start_lsn + b.len() as u64);
                bytes.extend_from_slice(b);
                mtrs.extend(m.iter().cloned());
            }
        }
        (bytes, mtrs, next)
    }

    #[test]
    fn a_new_log_written_block_by_block_ships_exactly_its_complete_mtrs() {
        let (sample_bytes, server_end) = sample("resized");
        let log = LogFile::parse(&sample_bytes).unwrap();
        let g = log.geometry();
        assert!(
            server_end - g.first_lsn < g.capacity(),
            "the resized sample has not wrapped"
        );

        // A new file of the log's size; header and checkpoint first, as the server creates a log.
        let (_tmp, file) = file_with(&vec![0u8; g.file_size as usize]);
        let mut tailer = RedoTailer::default();
        file.write_all_at(&sample_bytes[..HEADER_BLOCK_LEN], 0).unwrap();
        let events = tailer.on_write(&file, 0, HEADER_BLOCK_LEN as u64, None).unwrap();
        assert!(matches!(&events[..], [RedoEvent::Geometry { geometry, .. }] if *geometry == g));
        file.write_all_at(&sample_bytes[0x1000..0x1000 + 64], 0x1000)
            .unwrap();
        file.write_all_at(&sample_bytes[0x2000..0x2000 + 64], 0x2000)
            .unwrap();
        let checkpoints = [
            tailer.on_write(&file, 0x1000, 512, None).unwrap(),
            tailer.on_write(&file, 0x2000, 512, None).unwrap(),
        ];
        assert!(checkpoints
            .iter()
            .flatten()
            .any(|e| matches!(e, RedoEvent::Checkpoint { .. })));

        let events = replay(&mut tailer, &file, &log, g.first_lsn, server_end);
        let (bytes, mtrs, end) = wal_of(&events);
        assert_eq!(
            end,
            Some(server_end),
            "the tail ends where the server's recovery ended"
        );
        assert_eq!(tailer.complete_lsn(), Some(server_end));
        assert_eq!(bytes, log.logical(g.first_lsn, server_end - g.first_lsn));
        let (expected, _, _) = log.scan_from(g.first_lsn);
        assert_eq!(mtrs, expected);
    }

    #[test]
    fn the_tail_continues_across_the_end_of_the_circular_file() {
        let (sample_bytes, server_end) = sample("wrapped");
        let log = LogFile::parse(&sample_bytes).unwrap();
        let g = log.geometry();
        let scan = log.recovery_scan().unwrap();
        // The last wrap point before the end, and an mtr boundary before it (but after the
        // checkpoint's FILE_CHECKPOINT mtr, so the truncated log is still a recoverable log).
        let wrap = g.first_lsn + (server_end - g.first_lsn) / g.capacity() * g.capacity();
        let cp = scan.checkpoint;
        let checkpoint_mtr_end = scan
            .mtrs
            .iter()
            .find(|m| m.start >= cp.end_lsn && m.file_checkpoint == Some(cp.checkpoint_lsn))
            .unwrap()
            .end;
        assert!(wrap > checkpoint_mtr_end, "the sample wraps after its checkpoint");
        let resume = scan
            .mtrs
            .iter()
            .map(|m| m.end)
            .find(|&e| e >= checkpoint_mtr_end.max(wrap - 200_000))
            .unwrap();

        // The node had the log up to `resume` (everything after zeroed), then the server writes on.
        let mut truncated = sample_bytes.clone();
        for (offset, n) in g.file_ranges(resume, g.capacity() - (resume - cp.checkpoint_lsn)) {
            truncated[offset as usize..(offset + n) as usize].fill(0);
        }
        let (_tmp, file) = file_with(&truncated);
        let mut tailer = RedoTailer::from_existing(&truncated).unwrap();
        assert_eq!(tailer.complete_lsn(), Some(resume));

        let events = replay(&mut tailer, &file, &log, resume, server_end);
        let (bytes, _, end) = wal_of(&events);
        assert_eq!(end, Some(server_end));
        assert_eq!(bytes, log.logical(resume, server_end - resume));
    }

    #[test]
    fn rewriting_the_last_block_without_new_mtrs_ships_nothing() {
        let (sample_bytes, server_end) = sample("wrapped");
        let (_tmp, file) = file_with(&sample_bytes);
        let mut tailer = RedoTailer::from_existing(&sample_bytes).unwrap();
        let g = tailer.geometry().unwrap();
        let block = g.offset(server_end) / BLOCK * BLOCK;
        assert!(tailer.on_write(&file, block, BLOCK, None).unwrap().is_empty());
        assert_eq!(tailer.complete_lsn(), Some(server_end));
    }
}
