//! Checkpoint blocks at 0x1000 and 0x2000 (`log_t::write_checkpoint()`, `find_checkpoint()`).

use super::Lsn;

/// Meaningful bytes of a checkpoint block: two LSNs, 44 zero bytes, CRC-32C of `[0, 60)` at 60.
pub const CHECKPOINT_BLOCK_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// Every change below this LSN is in the data files.
    pub checkpoint_lsn: Lsn,
    /// Start LSN of the `FILE_CHECKPOINT(checkpoint_lsn)` mtr written for this checkpoint.
    pub end_lsn: Lsn,
}

/// Which of the two alternating checkpoint blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointSlot {
    First,
    Second,
}

impl CheckpointSlot {
    pub const ALL: [CheckpointSlot; 2] = [CheckpointSlot::First, CheckpointSlot::Second];

    pub fn offset(self) -> u64 {
        match self {
            CheckpointSlot::First => 0x1000,
            CheckpointSlot::Second => 0x2000,
        }
    }

    /// The slot whose block a write at `offset` of `ib_logfile0` touches, if any.
    pub fn at_offset(offset: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.offset() == offset)
    }
}

impl Checkpoint {
    /// Parses a block; `None` when the server would ignore it (bad CRC, non-zero padding, LSNs
    /// out of order or below the log's first LSN).
    pub fn parse(block: &[u8], first_lsn: Lsn) -> Option<Self> {
        let block = block.get(..CHECKPOINT_BLOCK_LEN)?;
        let stored = u32::from_be_bytes(block[60..64].try_into().expect("4 bytes"));
        if stored != crc32c::crc32c(&block[..60]) || block[16..60].iter().any(|&b| b != 0) {
            return None;
        }
        let checkpoint_lsn = u64::from_be_bytes(block[0..8].try_into().expect("8 bytes"));
        let end_lsn = u64::from_be_bytes(block[8..16].try_into().expect("8 bytes"));
        (checkpoint_lsn >= first_lsn && end_lsn >= checkpoint_lsn).then_some(Self {
            checkpoint_lsn,
            end_lsn,
        })
    }

    pub fn build(&self) -> [u8; CHECKPOINT_BLOCK_LEN] {
        let mut block = [0u8; CHECKPOINT_BLOCK_LEN];
        block[0..8].copy_from_slice(&self.checkpoint_lsn.to_be_bytes());
        block[8..16].copy_from_slice(&self.end_lsn.to_be_bytes());
        let crc = crc32c::crc32c(&block[..60]);
        block[60..64].copy_from_slice(&crc.to_be_bytes());
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let cp = Checkpoint {
            checkpoint_lsn: 44_404,
            end_lsn: 44_744,
        };
        let block = cp.build();
        // Observed on 10.11.19 at 0x2000: 00000000 0000ad74 00000000 0000aec8.
        assert_eq!(
            &block[..16],
            &[0, 0, 0, 0, 0, 0, 0xad, 0x74, 0, 0, 0, 0, 0, 0, 0xae, 0xc8]
        );
        assert_eq!(Checkpoint::parse(&block, 0x3000), Some(cp));
        assert_eq!(Checkpoint::parse(&block, 50_000), None, "below first_lsn");
        for i in 0..CHECKPOINT_BLOCK_LEN {
            let mut b = block;
            b[i] ^= 1;
            assert_eq!(Checkpoint::parse(&b, 0x3000), None, "byte {i}");
        }
        let backwards = Checkpoint {
            checkpoint_lsn: 50_000,
            end_lsn: 40_000,
        }
        .build();
        assert_eq!(Checkpoint::parse(&backwards, 0x3000), None);
    }
}
