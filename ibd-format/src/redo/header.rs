//! The header block at offset 0 (`log_t::header_write()`, validated by `find_checkpoint()`).

use super::{Lsn, FIRST_LSN, FORMAT_10_8};

/// Bytes of the header that carry meaning; the CRC-32C of `[0, 508)` sits at 508.
pub const HEADER_BLOCK_LEN: usize = 512;
const CREATOR_AT: usize = 16;
const CREATOR_END: usize = 48;
const CRC_AT: usize = 508;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHeader {
    /// LSN at file offset `START_OFFSET`.
    pub first_lsn: Lsn,
    /// Creator string, e.g. "MariaDB 10.11.19" (only used in messages; "Backup " means restored).
    pub creator: String,
    /// Whether `innodb_encrypt_log` information follows the creator: each mtr then carries an
    /// 8-byte nonce after its terminator.
    pub encrypted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("log header is {0} bytes; need {HEADER_BLOCK_LEN}")]
    TooShort(usize),
    #[error("log format {0:#010x} is not the MariaDB 10.8+ format \"Phys\" (0x50687973)")]
    UnsupportedFormat(u32),
    #[error("log header bytes 4..8 must be zero")]
    NonZeroReserved,
    #[error("log header CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("first LSN {0} in the log header is below {FIRST_LSN}")]
    FirstLsnTooSmall(Lsn),
    #[error("creator string is longer than 32 bytes")]
    CreatorTooLong,
}

impl LogHeader {
    pub fn parse(block: &[u8]) -> Result<Self, HeaderError> {
        if block.len() < HEADER_BLOCK_LEN {
            return Err(HeaderError::TooShort(block.len()));
        }
        let be32 = |at: usize| u32::from_be_bytes(block[at..at + 4].try_into().expect("4 bytes"));
        let format = be32(0);
        if format != FORMAT_10_8 {
            return Err(HeaderError::UnsupportedFormat(format));
        }
        let stored = be32(CRC_AT);
        let computed = crc32c::crc32c(&block[..CRC_AT]);
        if stored != computed {
            return Err(HeaderError::Crc { stored, computed });
        }
        if be32(4) != 0 {
            return Err(HeaderError::NonZeroReserved);
        }
        let first_lsn = u64::from_be_bytes(block[8..16].try_into().expect("8 bytes"));
        if first_lsn < FIRST_LSN {
            return Err(HeaderError::FirstLsnTooSmall(first_lsn));
        }
        let creator = &block[CREATOR_AT..CREATOR_END];
        let creator_len = creator.iter().position(|&b| b == 0).unwrap_or(creator.len());
        Ok(Self {
            first_lsn,
            creator: String::from_utf8_lossy(&creator[..creator_len]).into_owned(),
            encrypted: block[CREATOR_END..CRC_AT].iter().any(|&b| b != 0),
        })
    }

    /// The 512-byte header block (unencrypted logs only: key material is not ours to write).
    pub fn build(first_lsn: Lsn, creator: &str) -> Result<[u8; HEADER_BLOCK_LEN], HeaderError> {
        if creator.len() > CREATOR_END - CREATOR_AT {
            return Err(HeaderError::CreatorTooLong);
        }
        if first_lsn < FIRST_LSN {
            return Err(HeaderError::FirstLsnTooSmall(first_lsn));
        }
        let mut block = [0u8; HEADER_BLOCK_LEN];
        block[0..4].copy_from_slice(&FORMAT_10_8.to_be_bytes());
        block[8..16].copy_from_slice(&first_lsn.to_be_bytes());
        block[CREATOR_AT..CREATOR_AT + creator.len()].copy_from_slice(creator.as_bytes());
        let crc = crc32c::crc32c(&block[..CRC_AT]);
        block[CRC_AT..].copy_from_slice(&crc.to_be_bytes());
        Ok(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_parse_round_trips() {
        let block = LogHeader::build(250_344, "MariaDB 10.11.19").unwrap();
        let h = LogHeader::parse(&block).unwrap();
        assert_eq!(h.first_lsn, 250_344);
        assert_eq!(h.creator, "MariaDB 10.11.19");
        assert!(!h.encrypted);
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let block = LogHeader::build(0x3000, "x").unwrap();
        for i in 0..HEADER_BLOCK_LEN {
            let mut b = block;
            b[i] ^= 0x40;
            assert!(LogHeader::parse(&b).is_err(), "byte {i}");
        }
    }
}
