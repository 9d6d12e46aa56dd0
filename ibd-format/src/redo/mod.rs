//! The redo log `ib_logfile0` in the 10.8+ format ("Phys"), as MariaDB 10.11 writes it.
//!
//! ```text
//! 0x0000  header block (format, first LSN, creator, CRC-32C)
//! 0x1000  checkpoint block 1      0x2000  checkpoint block 2
//! 0x3000  circular record area: mini-transactions addressed by LSN
//! ```
//! See `research/innodb-format.md` section 1 and the server's `log0log.h` / `log0recv.cc`.

mod checkpoint;
mod file;
mod geometry;
mod header;
mod mtr;
mod synth;

pub use checkpoint::{Checkpoint, CheckpointSlot, CHECKPOINT_BLOCK_LEN};
pub use file::{LogFile, LogFileError, RecoveryScan};
pub use geometry::{GeometryError, LogGeometry};
pub use header::{HeaderError, LogHeader, HEADER_BLOCK_LEN};
pub use mtr::{file_checkpoint_mtr, EndReason, FileOp, FileOpKind, Mtr, MtrScanner, ScanStop};
pub use synth::{SynthError, SyntheticLog};

/// A log sequence number: a byte position in the (unbounded) logical redo stream.
pub type Lsn = u64;

/// File offset of the first record byte; also the smallest valid LSN (`log_t::FIRST_LSN`).
pub const START_OFFSET: u64 = 0x3000;
/// `log_t::FIRST_LSN`.
pub const FIRST_LSN: Lsn = START_OFFSET;
/// Largest mini-transaction recovery guarantees to parse (`recv_sys_t::MTR_SIZE_MAX`).
pub const MTR_SIZE_MAX: u32 = 1 << 20;
/// "Phys": `log_t::FORMAT_10_8`.
pub const FORMAT_10_8: u32 = 0x5068_7973;
/// Smallest log file the server accepts (`START_OFFSET` + one `FILE_CHECKPOINT` mtr).
pub const MIN_FILE_SIZE: u64 = START_OFFSET + 16;
