//! InnoDB data pages: the FIL header and trailer, page types, checksums, and the FSP header of page 0.
//!
//! Layouts follow `include/fil0fil.h` and `include/fsp0fsp.h` of MariaDB 10.11; checksum rules
//! follow `buf_page_is_corrupted()` (`buf/buf0buf.cc`) with the server's default, non-strict
//! `innodb_checksum_algorithm=full_crc32`, so a page validates here exactly when the server would
//! accept it. The page size is the length of the slice (4 KiB to 64 KiB).

use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// `innodb_page_size` default; fixed at `mariadb-install-db` time.
pub const PAGE_SIZE: usize = 16384;
/// Smallest and largest `innodb_page_size`.
pub const MIN_PAGE_SIZE: usize = 4096;
pub const MAX_PAGE_SIZE: usize = 65536;

/// Offset of the page body (`FIL_PAGE_DATA`), right after [`FilHeader`].
pub const FIL_PAGE_DATA: usize = 38;
/// Length of the trailer (`FIL_PAGE_DATA_END`): old-style checksum + low LSN, or full_crc32's
/// low LSN + CRC-32C.
pub const FIL_PAGE_DATA_END: usize = 8;
/// `BUF_NO_CHECKSUM_MAGIC`: written by `innodb_checksum_algorithm=none` (legacy format).
pub const NO_CHECKSUM_MAGIC: u32 = 0xDEAD_BEEF;

/// The 38-byte FIL header at the start of every page (`FIL_PAGE_*` offsets).
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FilHeader {
    /// `FIL_PAGE_SPACE_OR_CHKSUM`: old-format checksum, or full_crc32's key version (0 = unencrypted).
    pub checksum_or_key_version: U32,
    /// `FIL_PAGE_OFFSET`: the page number within its tablespace.
    pub page_no: U32,
    /// `FIL_PAGE_PREV` / `FIL_PAGE_NEXT`: B-tree siblings (`FIL_NULL` when none).
    pub prev: U32,
    pub next: U32,
    /// `FIL_PAGE_LSN`: end LSN of the last mini-transaction applied to this page.
    pub lsn: U64,
    /// `FIL_PAGE_TYPE`.
    pub page_type: U16,
    /// `FIL_PAGE_FILE_FLUSH_LSN_OR_KEY_VERSION` (page 0 of ibdata1, or key version when encrypted).
    pub flush_lsn_or_key_version: U64,
    /// `FIL_PAGE_SPACE_ID`.
    pub space_id: U32,
}

/// `FIL_NULL`: "no page" in prev/next links.
pub const FIL_NULL: u32 = 0xFFFF_FFFF;

/// The FSP header at `FIL_PAGE_DATA` of page 0 (`FSP_HEADER_OFFSET`).
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FspHeader {
    /// `FSP_SPACE_ID`
    pub space_id: U32,
    /// `FSP_NOT_USED`
    pub not_used: U32,
    /// `FSP_SIZE`: current size of the tablespace, in pages.
    pub size: U32,
    /// `FSP_FREE_LIMIT`: pages at or above it are not initialised.
    pub free_limit: U32,
    /// `FSP_SPACE_FLAGS`: see [`SpaceFlags`].
    pub flags: U32,
}

/// `FIL_PAGE_TYPE` values (`include/fil0fil.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageType {
    Allocated,
    UndoLog,
    Inode,
    IbufFreeList,
    IbufBitmap,
    Sys,
    TrxSys,
    FspHdr,
    Xdes,
    Blob,
    ZBlob,
    ZBlob2,
    Instant,
    Index,
    Rtree,
    /// Legacy-format `page_compressed` page (`FIL_PAGE_PAGE_COMPRESSED`).
    PageCompressed,
    /// Legacy-format `page_compressed` + encrypted page.
    PageCompressedEncrypted,
    /// full_crc32 `page_compressed` page: bit 15 of the type is the marker, the low bits are the
    /// compressed length in 256-byte units.
    FullCrc32Compressed {
        physical_len: usize,
    },
    Unknown(u16),
}

impl PageType {
    pub fn from_raw(raw: u16) -> Self {
        if raw & FCRC32_COMPRESSED_MARKER != 0 {
            return PageType::FullCrc32Compressed {
                physical_len: usize::from(raw & !FCRC32_COMPRESSED_MARKER) << 8,
            };
        }
        match raw {
            0 => PageType::Allocated,
            2 => PageType::UndoLog,
            3 => PageType::Inode,
            4 => PageType::IbufFreeList,
            5 => PageType::IbufBitmap,
            6 => PageType::Sys,
            7 => PageType::TrxSys,
            8 => PageType::FspHdr,
            9 => PageType::Xdes,
            10 => PageType::Blob,
            11 => PageType::ZBlob,
            12 => PageType::ZBlob2,
            18 => PageType::Instant,
            17855 => PageType::Index,
            17854 => PageType::Rtree,
            34354 => PageType::PageCompressed,
            37401 => PageType::PageCompressedEncrypted,
            other => PageType::Unknown(other),
        }
    }

    pub fn is_page_compressed(self) -> bool {
        matches!(
            self,
            PageType::PageCompressed
                | PageType::PageCompressedEncrypted
                | PageType::FullCrc32Compressed { .. }
        )
    }
}

/// `FIL_PAGE_COMPRESS_FCRC32_MARKER` as a bit mask of the page type.
const FCRC32_COMPRESSED_MARKER: u16 = 1 << 15;

/// A read-only view of one page. Construction checks only the length; see [`Page::verify_checksum`].
#[derive(Clone, Copy)]
pub struct Page<'a> {
    bytes: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("a page must be a power of two between 4096 and 65536 bytes, got {0}")]
    BadLength(usize),
}

/// Which rule accepted a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    /// A page of NUL bytes: never written (the server accepts it).
    AllZero,
    /// `full_crc32` (MariaDB 10.5+ default): CRC-32C of everything before the last 4 bytes.
    FullCrc32,
    /// Legacy `crc32`: CRC-32C of [4,26) XOR CRC-32C of [38, size-8), in both checksum fields.
    Crc32,
    /// Legacy `innodb` fold checksums.
    Innodb,
    /// Legacy `none` (`0xDEADBEEF` magic).
    NoChecksum,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("page has an invalid length: {0}")]
    Length(#[from] PageError),
    #[error(
        "page {page_no} of space {space_id} fails its checksum \
         (stored {stored_crc:#010x}, full_crc32 computes {computed_crc:#010x}; legacy formats rejected too)"
    )]
    Mismatch {
        space_id: u32,
        page_no: u32,
        stored_crc: u32,
        computed_crc: u32,
    },
}

impl<'a> Page<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, PageError> {
        let len = bytes.len();
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&len) || !len.is_power_of_two() {
            return Err(PageError::BadLength(len));
        }
        Ok(Self { bytes })
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    pub fn header(&self) -> &'a FilHeader {
        FilHeader::ref_from_prefix(self.bytes)
            .expect("length checked in Page::new")
            .0
    }

    pub fn page_no(&self) -> u32 {
        self.header().page_no.get()
    }

    pub fn space_id(&self) -> u32 {
        self.header().space_id.get()
    }

    pub fn lsn(&self) -> u64 {
        self.header().lsn.get()
    }

    pub fn page_type(&self) -> PageType {
        PageType::from_raw(self.header().page_type.get())
    }

    /// Never-written pages are all zero (a new `.ibd` may be entirely zero, page 0 included).
    pub fn is_all_zero(&self) -> bool {
        is_all_zero(self.bytes)
    }

    /// The FSP header, meaningful on page 0 of a tablespace only.
    pub fn fsp_header(&self) -> &'a FspHeader {
        FspHeader::ref_from_prefix(&self.bytes[FIL_PAGE_DATA..])
            .expect("length checked")
            .0
    }

    fn be32(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Checks the page as the server would: all-zero pages and pages valid under full_crc32 or
    /// any legacy algorithm are accepted.
    pub fn verify_checksum(&self) -> Result<ChecksumAlgorithm, ChecksumError> {
        if self.is_all_zero() {
            return Ok(ChecksumAlgorithm::AllZero);
        }
        if self.full_crc32_valid() {
            return Ok(ChecksumAlgorithm::FullCrc32);
        }
        if let Some(algo) = self.legacy_valid() {
            return Ok(algo);
        }
        let (end, _) = self.full_crc32_extent();
        Err(ChecksumError::Mismatch {
            space_id: self.space_id(),
            page_no: self.page_no(),
            stored_crc: self.be32(end - 4),
            computed_crc: crc32c::crc32c(&self.bytes[..end - 4]),
        })
    }

    /// The span the full_crc32 checksum covers: the whole page, or the compressed payload of a
    /// page_compressed page (`buf_page_full_crc32_size()`), and whether it is compressed.
    fn full_crc32_extent(&self) -> (usize, bool) {
        match self.page_type() {
            PageType::FullCrc32Compressed { physical_len }
                if physical_len < self.size() && physical_len >= FIL_PAGE_DATA + 4 =>
            {
                (physical_len, true)
            }
            _ => (self.size(), false),
        }
    }

    fn full_crc32_valid(&self) -> bool {
        let (end, compressed) = self.full_crc32_extent();
        if self.be32(end - 4) != crc32c::crc32c(&self.bytes[..end - 4]) {
            return false;
        }
        // Unencrypted, uncompressed pages repeat the low 32 bits of FIL_PAGE_LSN before the CRC.
        compressed || self.be32(0) != 0 || self.bytes[20..24] == self.bytes[end - 8..end - 4]
    }

    /// `buf_page_is_corrupted()` for the legacy (non-full_crc32) format, non-strict mode.
    fn legacy_valid(&self) -> Option<ChecksumAlgorithm> {
        let size = self.size();
        if matches!(
            self.page_type(),
            PageType::PageCompressed | PageType::PageCompressedEncrypted
        ) {
            // 10.1-style page_compressed pages carry no checksum; the server trusts the type.
            return Some(ChecksumAlgorithm::NoChecksum);
        }
        if self.bytes[20..24] != self.bytes[size - 4..size] {
            return None;
        }
        let field1 = self.be32(0);
        let field2 = self.be32(size - FIL_PAGE_DATA_END);
        if field1 == 0 && field2 == 0 {
            // All zero but for FIL_PAGE_FILE_FLUSH_LSN, which old versions wrote on page 0.
            let zero_elsewhere = is_all_zero(&self.bytes[..26]) && is_all_zero(&self.bytes[34..]);
            if zero_elsewhere {
                return Some(ChecksumAlgorithm::AllZero);
            }
        }
        if field1 == NO_CHECKSUM_MAGIC && field2 == NO_CHECKSUM_MAGIC {
            return Some(ChecksumAlgorithm::NoChecksum);
        }
        let crc = legacy_crc32(self.bytes);
        let crc_both = field1 == crc && field2 == crc;
        // Very old pages stored only the LSN in field 2; otherwise field 2 is crc32 or the old fold.
        if field2 != self.be32(16)
            && field2 != NO_CHECKSUM_MAGIC
            && !crc_both
            && field2 != innodb_old_checksum(self.bytes)
        {
            return None;
        }
        match field1 {
            0 | NO_CHECKSUM_MAGIC => {}
            _ if crc_both => {}
            _ if field1 == innodb_new_checksum(self.bytes) => {}
            _ => return None,
        }
        Some(if crc_both {
            ChecksumAlgorithm::Crc32
        } else {
            ChecksumAlgorithm::Innodb
        })
    }
}

/// Whether `bytes` are all NUL. Runs on every page read and write, so it compares word-wise.
pub fn is_all_zero(bytes: &[u8]) -> bool {
    let chunks = bytes.chunks_exact(8);
    let tail = chunks.remainder();
    chunks.fold(0u64, |acc, c| {
        acc | u64::from_ne_bytes(c.try_into().expect("8 bytes"))
    }) == 0
        && tail.iter().all(|&b| b == 0)
}

/// `buf_calc_page_crc32()`: the legacy crc32 algorithm.
pub fn legacy_crc32(page: &[u8]) -> u32 {
    let size = page.len();
    crc32c::crc32c(&page[4..26]) ^ crc32c::crc32c(&page[FIL_PAGE_DATA..size - FIL_PAGE_DATA_END])
}

/// `buf_calc_page_new_checksum()`: the legacy innodb algorithm's field 1.
pub fn innodb_new_checksum(page: &[u8]) -> u32 {
    let size = page.len();
    let sum =
        fold_binary(&page[4..26]).wrapping_add(fold_binary(&page[FIL_PAGE_DATA..size - FIL_PAGE_DATA_END]));
    sum as u32
}

/// `buf_calc_page_old_checksum()`: the legacy innodb algorithm's field 2 (covers [0, 26)).
pub fn innodb_old_checksum(page: &[u8]) -> u32 {
    fold_binary(&page[..26]) as u32
}

/// `ut_fold_binary()` on a 64-bit `ulint`.
fn fold_binary(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |fold, &b| fold_pair(fold, u64::from(b)))
}

/// `ut_fold_ulint_pair()`.
fn fold_pair(n1: u64, n2: u64) -> u64 {
    ((((n1 ^ n2 ^ 1_653_893_711) << 8).wrapping_add(n1)) ^ 1_463_735_687).wrapping_add(n2)
}

/// Tablespace flags (`FSP_SPACE_FLAGS`) in either format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceFlags(pub u32);

impl SpaceFlags {
    /// `FSP_FLAGS_FCRC32_MASK_MARKER`: the tablespace uses the full_crc32 format.
    pub fn is_full_crc32(self) -> bool {
        self.0 & (1 << 4) != 0
    }

    /// Logical page size in bytes, or `None` if the flags encode none we know.
    pub fn page_size(self) -> Option<usize> {
        let ssize = if self.is_full_crc32() {
            self.0 & 0xF
        } else {
            match (self.0 >> 6) & 0xF {
                0 => return Some(PAGE_SIZE), // legacy format: 0 means the original 16 KiB
                s => s,
            }
        };
        match ssize {
            3..=7 => Some(512 << ssize),
            _ => None,
        }
    }

    /// `ROW_FORMAT=COMPRESSED` physical page size (legacy format only), if any.
    pub fn zip_size(self) -> Option<usize> {
        if self.is_full_crc32() {
            return None;
        }
        match (self.0 >> 1) & 0xF {
            0 => None,
            z => Some(512 << z),
        }
    }

    /// Whether the tablespace is `PAGE_COMPRESSED=1`.
    pub fn is_page_compressed(self) -> bool {
        if self.is_full_crc32() {
            (self.0 >> 5) & 0x7 != 0
        } else {
            self.0 & (1 << 16) != 0
        }
    }
}

/// Convenience: verify a page given as raw bytes.
pub fn verify_checksum(page: &[u8]) -> Result<ChecksumAlgorithm, ChecksumError> {
    Page::new(page)?.verify_checksum()
}

fn be_u32(page: &[u8], at: usize) -> u32 {
    page.get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
}

/// `FIL_PAGE_LSN` of a raw page (0 if too short).
pub fn page_lsn(page: &[u8]) -> u64 {
    page.get(16..24)
        .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// `FIL_PAGE_SPACE_ID` of a raw page (0 if too short).
pub fn space_id(page: &[u8]) -> u32 {
    be_u32(page, 34)
}

/// `FIL_PAGE_OFFSET` of a raw page (0 if too short).
pub fn page_no(page: &[u8]) -> u32 {
    be_u32(page, 4)
}
