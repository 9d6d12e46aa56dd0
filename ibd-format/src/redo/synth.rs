//! Builds an `ib_logfile0` for a node that has no log of its own (a fresh node, a branch, a
//! point-in-time target): header, one checkpoint block, and the WAL from the checkpoint on at its
//! offsets, zeros everywhere else. MariaDB's own recovery then replays exactly that WAL
//! (`research/innodb-format.md` section 4: verified on 10.11).

use std::borrow::Cow;

use super::mtr::FILE_CHECKPOINT_MTR_LEN;
use super::{
    file_checkpoint_mtr, Checkpoint, CheckpointSlot, GeometryError, HeaderError, LogGeometry, LogHeader, Lsn,
    MtrScanner, ScanStop,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SynthError {
    #[error("header: {0}")]
    Header(#[from] HeaderError),
    #[error("geometry: {0}")]
    Geometry(#[from] GeometryError),
    #[error("checkpoint LSN {checkpoint_lsn} is below the log's first LSN {first_lsn}")]
    CheckpointBeforeFirstLsn { checkpoint_lsn: Lsn, first_lsn: Lsn },
    #[error("{len} bytes of WAL do not fit the {capacity}-byte circular area")]
    TooMuchWal { len: u64, capacity: u64 },
    #[error("the WAL does not end at an mtr boundary: valid mtrs end at {valid_end}, bytes at {byte_end} ({stop:?})")]
    NotAtMtrBoundary {
        valid_end: Lsn,
        byte_end: Lsn,
        stop: ScanStop,
    },
    #[error(
        "the WAL holds no FILE_CHECKPOINT({checkpoint_lsn}) mtr from {end_lsn} on: recovery would refuse it"
    )]
    MissingFileCheckpoint { checkpoint_lsn: Lsn, end_lsn: Lsn },
}

/// A log to synthesize. `wal` holds the logical bytes `[checkpoint.checkpoint_lsn, …)` exactly
/// as the writer produced them under `geometry` (terminators carry that geometry's sequence
/// bits), ending at an mtr boundary: the target LSN of the recovery.
#[derive(Debug, Clone)]
pub struct SyntheticLog<'a> {
    pub geometry: LogGeometry,
    pub creator: &'a str,
    pub checkpoint: Checkpoint,
    pub wal: Cow<'a, [u8]>,
}

impl<'a> SyntheticLog<'a> {
    /// A log with no WAL to replay: checkpoint at `lsn` and its `FILE_CHECKPOINT` mtr right there,
    /// for pages that are consistent at `lsn`.
    pub fn empty_at(lsn: Lsn, file_size: u64, creator: &'a str) -> Result<Self, SynthError> {
        let geometry = LogGeometry::new(lsn, file_size)?;
        let terminator_lsn = lsn + FILE_CHECKPOINT_MTR_LEN as u64 - 5;
        let wal = file_checkpoint_mtr(lsn, geometry.sequence_bit(terminator_lsn)).to_vec();
        let checkpoint = Checkpoint {
            checkpoint_lsn: lsn,
            end_lsn: lsn,
        };
        Ok(Self {
            geometry,
            creator,
            checkpoint,
            wal: Cow::Owned(wal),
        })
    }

    /// LSN at which the replayed log ends.
    pub fn end_lsn(&self) -> Lsn {
        self.checkpoint.checkpoint_lsn + self.wal.len() as u64
    }

    /// Validates the inputs as recovery would and returns the non-zero pieces of the file as
    /// `(offset, bytes)`; everything else in the file is zero (write them into a sparse file).
    pub fn extents(&self) -> Result<Vec<(u64, Vec<u8>)>, SynthError> {
        let g = self.geometry;
        let cp = self.checkpoint;
        LogGeometry::new(g.first_lsn, g.file_size)?;
        if cp.checkpoint_lsn < g.first_lsn {
            return Err(SynthError::CheckpointBeforeFirstLsn {
                checkpoint_lsn: cp.checkpoint_lsn,
                first_lsn: g.first_lsn,
            });
        }
        // A full lap would make the bytes after the end indistinguishable from the start.
        if self.wal.len() as u64 >= g.capacity() {
            return Err(SynthError::TooMuchWal {
                len: self.wal.len() as u64,
                capacity: g.capacity(),
            });
        }
        let (mtrs, end, stop) = {
            let mut scanner = MtrScanner::new(&self.wal, cp.checkpoint_lsn, g);
            let mtrs: Vec<_> = scanner.by_ref().collect();
            (mtrs, scanner.lsn(), scanner.stop().cloned().expect("exhausted"))
        };
        if end != self.end_lsn() {
            return Err(SynthError::NotAtMtrBoundary {
                valid_end: end,
                byte_end: self.end_lsn(),
                stop,
            });
        }
        if !mtrs
            .iter()
            .any(|m| m.start == cp.end_lsn && m.file_checkpoint == Some(cp.checkpoint_lsn))
        {
            return Err(SynthError::MissingFileCheckpoint {
                checkpoint_lsn: cp.checkpoint_lsn,
                end_lsn: cp.end_lsn,
            });
        }

        let mut extents = vec![
            (0, LogHeader::build(g.first_lsn, self.creator)?.to_vec()),
            (CheckpointSlot::First.offset(), cp.build().to_vec()),
        ];
        let mut consumed = 0usize;
        for (offset, len) in g.file_ranges(cp.checkpoint_lsn, self.wal.len() as u64) {
            extents.push((offset, self.wal[consumed..consumed + len as usize].to_vec()));
            consumed += len as usize;
        }
        Ok(extents)
    }

    /// The whole file in memory (`geometry.file_size` bytes).
    pub fn build(&self) -> Result<Vec<u8>, SynthError> {
        let mut file = vec![0u8; self.geometry.file_size as usize];
        for (offset, bytes) in self.extents()? {
            file[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(file)
    }
}
