//! Why a timeline refused or failed an operation. Each variant has a stable code for the API.

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("timeline {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    CrcMismatch(String),
    #[error("term {given} is older than the current term {current}: another writer took over")]
    StaleTerm { given: u64, current: u64 },
    #[error("term {given} was never granted (current term {current}): acquire a term first")]
    UnknownTerm { given: u64, current: u64 },
    #[error("append at LSN {start_lsn} leaves a gap: the WAL ends at {end_lsn}")]
    Gap { start_lsn: u64, end_lsn: u64 },
    #[error("append at LSN {start_lsn} differs from the stored WAL at LSN {at_lsn}")]
    OverlapMismatch { start_lsn: u64, at_lsn: u64 },
    #[error("WAL [{from}, {to}) is not durable yet: the durable LSN is {durable}")]
    NotDurable { from: u64, to: u64, durable: u64 },
    #[error(
        "WAL below LSN {start} is not stored: removed by retention or never written here (asked from {from})"
    )]
    Removed { from: u64, start: u64 },
    #[error(
        "a branch at LSN {lsn} needs WAL from LSN {needed_from} (the checkpoint it recovers from, \
         else the branch LSN), but this timeline's WAL is stored only from LSN {start} (removed by \
         retention or never written here)"
    )]
    BranchBelowWal { lsn: u64, needed_from: u64, start: u64 },
    #[error(
        "recovery to LSN {target} starts at its checkpoint, LSN {from}, but the WAL is stored \
         only from LSN {start} (removed by retention or never written here)"
    )]
    RecoveryWalMissing { target: u64, from: u64, start: u64 },
    #[error("{0}")]
    NoRecoveryPoint(String),
    #[error("timeline {0:?} exists with another parent")]
    Exists(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("storage failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("timeline is read-only after a storage failure ({0}); restart walsync")]
    Failed(String),
}

impl WalError {
    /// The machine-readable code of the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            WalError::NotFound(_) => "not_found",
            WalError::BadRequest(_) => "bad_request",
            WalError::CrcMismatch(_) => "crc_mismatch",
            WalError::StaleTerm { .. } => "stale_term",
            WalError::UnknownTerm { .. } => "unknown_term",
            WalError::Gap { .. } => "gap",
            WalError::OverlapMismatch { .. } => "overlap_mismatch",
            WalError::NotDurable { .. } => "not_durable",
            WalError::Removed { .. }
            | WalError::BranchBelowWal { .. }
            | WalError::RecoveryWalMissing { .. } => "wal_removed",
            WalError::NoRecoveryPoint(_) => "no_recovery_point",
            WalError::Exists(_) => "exists",
            WalError::Corrupt(_) => "wal_corrupt",
            WalError::Io(_) => "storage_error",
            WalError::Failed(_) => "storage_failed",
        }
    }

    /// The HTTP status that carries it.
    pub fn http_status(&self) -> u16 {
        match self {
            WalError::NotFound(_) | WalError::NoRecoveryPoint(_) => 404,
            WalError::BadRequest(_) | WalError::CrcMismatch(_) => 400,
            WalError::StaleTerm { .. }
            | WalError::UnknownTerm { .. }
            | WalError::Gap { .. }
            | WalError::OverlapMismatch { .. }
            | WalError::Exists(_) => 409,
            WalError::Removed { .. }
            | WalError::BranchBelowWal { .. }
            | WalError::RecoveryWalMissing { .. } => 410,
            WalError::NotDurable { .. } => 416,
            WalError::Corrupt(_) | WalError::Io(_) => 500,
            WalError::Failed(_) => 503,
        }
    }
}
