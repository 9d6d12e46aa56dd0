//! Mapping between LSNs and offsets in the circular record area.

use super::{Lsn, START_OFFSET};

/// Where the log's LSN space sits in the file: `first_lsn` is the LSN at offset `START_OFFSET`
/// (it changes only when the log is created or resized).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogGeometry {
    pub first_lsn: Lsn,
    pub file_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("log file size {0} is too small: it must exceed {START_OFFSET} bytes by at least 16")]
    FileTooSmall(u64),
    #[error("first LSN {0} is below the smallest valid LSN {START_OFFSET}")]
    FirstLsnTooSmall(Lsn),
}

impl LogGeometry {
    pub fn new(first_lsn: Lsn, file_size: u64) -> Result<Self, GeometryError> {
        if file_size < super::MIN_FILE_SIZE {
            return Err(GeometryError::FileTooSmall(file_size));
        }
        if first_lsn < super::FIRST_LSN {
            return Err(GeometryError::FirstLsnTooSmall(first_lsn));
        }
        Ok(Self { first_lsn, file_size })
    }

    /// Bytes of the circular record area.
    pub fn capacity(&self) -> u64 {
        self.file_size - START_OFFSET
    }

    /// File offset of `lsn` (`lsn >= first_lsn`).
    pub fn offset(&self, lsn: Lsn) -> u64 {
        debug_assert!(lsn >= self.first_lsn);
        START_OFFSET + (lsn - self.first_lsn) % self.capacity()
    }

    /// The terminator byte an mtr ending at `lsn` carries: 1 on the first lap, 0 on the second, ...
    pub fn sequence_bit(&self, lsn: Lsn) -> u8 {
        u8::from((lsn.saturating_sub(self.first_lsn) / self.capacity()) & 1 == 0)
    }

    /// The pieces of the file `[offset, len)` that hold the LSN range `[from, from + len)`:
    /// one piece, or two when the range wraps past the end of the file.
    pub fn file_ranges(&self, from: Lsn, len: u64) -> impl Iterator<Item = (u64, u64)> {
        let start = self.offset(from);
        let first = len.min(self.file_size - start);
        let second = len - first;
        [(start, first), (START_OFFSET, second)]
            .into_iter()
            .filter(|&(_, l)| l > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_sequence_bits_across_laps() {
        let g = LogGeometry::new(0x3000, 0x3000 + 1000).unwrap();
        assert_eq!(g.offset(0x3000), 0x3000);
        assert_eq!(g.offset(0x3000 + 999), 0x3000 + 999);
        assert_eq!(g.offset(0x3000 + 1000), 0x3000);
        assert_eq!(g.sequence_bit(0x3000), 1);
        assert_eq!(g.sequence_bit(0x3000 + 999), 1);
        assert_eq!(g.sequence_bit(0x3000 + 1000), 0);
        assert_eq!(g.sequence_bit(0x3000 + 2000), 1);
    }

    #[test]
    fn file_ranges_split_at_the_wrap() {
        let g = LogGeometry::new(0x3000, 0x3000 + 1000).unwrap();
        let r: Vec<_> = g.file_ranges(0x3000 + 990, 20).collect();
        assert_eq!(r, vec![(0x3000 + 990, 10), (0x3000, 10)]);
        let r: Vec<_> = g.file_ranges(0x3000 + 10, 20).collect();
        assert_eq!(r, vec![(0x3000 + 10, 20)]);
    }

    #[test]
    fn rejects_impossible_geometry() {
        assert!(LogGeometry::new(0x3000, 0x3000).is_err());
        assert!(LogGeometry::new(100, 1 << 20).is_err());
    }
}
