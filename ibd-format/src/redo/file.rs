//! A whole `ib_logfile0` in memory: header, checkpoints, the circular area as a logical stream,
//! and the end of the log as recovery finds it.

use super::{
    Checkpoint, CheckpointSlot, HeaderError, LogGeometry, LogHeader, Lsn, Mtr, MtrScanner, ScanStop,
    START_OFFSET,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFileError {
    #[error("log file is {0} bytes; it must be larger than {START_OFFSET} bytes")]
    TooSmall(usize),
    #[error("log header: {0}")]
    Header(#[from] HeaderError),
    #[error("no valid checkpoint block at 0x1000 or 0x2000")]
    NoCheckpoint,
    #[error(
        "missing FILE_CHECKPOINT({checkpoint_lsn}) at {end_lsn}: the log does not reach its own checkpoint"
    )]
    MissingFileCheckpoint { checkpoint_lsn: Lsn, end_lsn: Lsn },
    #[error("malformed log record in the mtr at LSN {lsn}: {what}")]
    Malformed { lsn: Lsn, what: &'static str },
}

/// Where recovery would start and end on this log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryScan {
    pub checkpoint: Checkpoint,
    pub slot: CheckpointSlot,
    /// End of the last valid mtr: the server's "End of log at LSN=…".
    pub end_lsn: Lsn,
    /// The mtrs `[checkpoint_lsn, end_lsn)`.
    pub mtrs: Vec<Mtr>,
}

#[derive(Debug, Clone)]
pub struct LogFile<'a> {
    bytes: &'a [u8],
    header: LogHeader,
    geometry: LogGeometry,
}

impl<'a> LogFile<'a> {
    /// `bytes` is the whole file; its length is the log's file size.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, LogFileError> {
        if bytes.len() < super::MIN_FILE_SIZE as usize {
            return Err(LogFileError::TooSmall(bytes.len()));
        }
        let header = LogHeader::parse(bytes)?;
        let geometry = LogGeometry {
            first_lsn: header.first_lsn,
            file_size: bytes.len() as u64,
        };
        Ok(Self {
            bytes,
            header,
            geometry,
        })
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    pub fn geometry(&self) -> LogGeometry {
        self.geometry
    }

    pub fn checkpoint(&self, slot: CheckpointSlot) -> Option<Checkpoint> {
        Checkpoint::parse(&self.bytes[slot.offset() as usize..], self.geometry.first_lsn)
    }

    /// The valid checkpoint with the larger `checkpoint_lsn`, as `find_checkpoint()` picks it.
    pub fn latest_checkpoint(&self) -> Option<(CheckpointSlot, Checkpoint)> {
        CheckpointSlot::ALL
            .into_iter()
            .filter_map(|slot| self.checkpoint(slot).map(|cp| (slot, cp)))
            .max_by_key(|(_, cp)| cp.checkpoint_lsn)
    }

    /// The logical bytes `[from, from + len)`, unwrapped from the circular area (`len` at most
    /// the capacity).
    pub fn logical(&self, from: Lsn, len: u64) -> Vec<u8> {
        let len = len.min(self.geometry.capacity());
        let mut out = Vec::with_capacity(len as usize);
        for (offset, n) in self.geometry.file_ranges(from, len) {
            out.extend_from_slice(&self.bytes[offset as usize..(offset + n) as usize]);
        }
        out
    }

    /// Scans from `lsn` as far as one lap of the circular area goes.
    pub fn scan_from(&self, lsn: Lsn) -> (Vec<Mtr>, Lsn, ScanStop) {
        let bytes = self.logical(lsn, self.geometry.capacity());
        let mut scanner = MtrScanner::new(&bytes, lsn, self.geometry).encrypted(self.header.encrypted);
        let mtrs: Vec<Mtr> = scanner.by_ref().collect();
        let stop = scanner.stop().cloned().expect("exhausted");
        (mtrs, scanner.lsn(), stop)
    }

    /// What the server's recovery does with this log: find the latest checkpoint, require its
    /// `FILE_CHECKPOINT` mtr at `end_lsn`, then scan from `checkpoint_lsn` to the end of the log.
    pub fn recovery_scan(&self) -> Result<RecoveryScan, LogFileError> {
        let (slot, checkpoint) = self.latest_checkpoint().ok_or(LogFileError::NoCheckpoint)?;
        let (from_end, _, _) = self.scan_from(checkpoint.end_lsn);
        if !from_end
            .iter()
            .any(|m| m.file_checkpoint == Some(checkpoint.checkpoint_lsn))
        {
            return Err(LogFileError::MissingFileCheckpoint {
                checkpoint_lsn: checkpoint.checkpoint_lsn,
                end_lsn: checkpoint.end_lsn,
            });
        }
        let (mtrs, end_lsn, stop) = self.scan_from(checkpoint.checkpoint_lsn);
        if let ScanStop::Malformed { lsn, what } = stop {
            return Err(LogFileError::Malformed { lsn, what });
        }
        Ok(RecoveryScan {
            checkpoint,
            slot,
            end_lsn,
            mtrs,
        })
    }
}
