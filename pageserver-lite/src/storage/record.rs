//! The CRC-framed records segments are made of, and the scanner that reads them back.
//!
//! ```text
//! header (24 bytes, little-endian):
//!   magic u32 | kind u8 | 0u8 x3 | meta_len u32 | data_len u32 | data_crc u32 | header_crc u32
//! meta  (meta_len bytes)  page record: PageMeta (48 bytes); meta record: JSON of MetaRecord
//! data  (data_len bytes)  page record: the image; meta record: empty
//! ```
//!
//! `header_crc` (CRC-32C of header bytes 0..20 followed by the meta) protects what the record is
//! about, so a damaged image is still attributed to its page and never served. `data_crc` of a
//! page record is the writer's CRC-32C of the image, the same value returned with every read
//! (DESIGN.md invariant 5): stored once, checked at every step.

use ibd_api::pageserver::{CheckpointMarker, BLOCK_SIZE};
use serde::{Deserialize, Serialize};

use crate::namespace::FileVersion;

pub const HEADER_LEN: usize = 24;
pub const PAGE_META_LEN: usize = 48;
const MAGIC: u32 = 0x3152_5350; // "PSR1" little-endian
const MAX_META_LEN: usize = 1 << 20;
const KIND_PAGE: u8 = 1;
const KIND_META: u8 = 2;

/// What a page record says about its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageMeta {
    pub timeline: u32,
    pub file: u64,
    pub block: u64,
    pub seq: u64,
    pub lsn: u64,
    pub written_at_ms: u64,
}

impl PageMeta {
    fn encode(&self) -> [u8; PAGE_META_LEN] {
        let mut b = [0u8; PAGE_META_LEN];
        b[0..4].copy_from_slice(&self.timeline.to_le_bytes());
        b[8..16].copy_from_slice(&self.file.to_le_bytes());
        b[16..24].copy_from_slice(&self.block.to_le_bytes());
        b[24..32].copy_from_slice(&self.seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.lsn.to_le_bytes());
        b[40..48].copy_from_slice(&self.written_at_ms.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != PAGE_META_LEN {
            return None;
        }
        Some(Self {
            timeline: u32_at(b, 0),
            file: u64_at(b, 8),
            block: u64_at(b, 16),
            seq: u64_at(b, 24),
            lsn: u64_at(b, 32),
            written_at_ms: u64_at(b, 40),
        })
    }
}

/// Everything that is not a page image: timelines, terms, the namespace, checkpoint markers.
/// Replaying one twice has no further effect (compaction may leave copies behind a crash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetaRecord {
    TimelineCreated {
        num: u32,
        id: String,
        parent: Option<u32>,
        branch_seq: u64,
        branch_lsn: Option<u64>,
    },
    TermAcquired {
        timeline: u32,
        term: u64,
    },
    /// A namespace change.
    FileVersion {
        timeline: u32,
        file: u64,
        version: FileVersion,
    },
    Marker {
        timeline: u32,
        marker: CheckpointMarker,
    },
}

/// Offset of the image inside a page record.
pub const PAGE_IMAGE_OFFSET: u64 = (HEADER_LEN + PAGE_META_LEN) as u64;

pub fn encode_page(buf: &mut Vec<u8>, meta: &PageMeta, image: &[u8], crc32c: u32) {
    encode(buf, KIND_PAGE, &meta.encode(), image, crc32c);
}

pub fn encode_meta(buf: &mut Vec<u8>, record: &MetaRecord) {
    let json = serde_json::to_vec(record).expect("meta records always serialize");
    encode(buf, KIND_META, &json, &[], ibd_api::crc32c(&[]));
}

fn encode(buf: &mut Vec<u8>, kind: u8, meta: &[u8], data: &[u8], data_crc: u32) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&[kind, 0, 0, 0]);
    buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(&data_crc.to_le_bytes());
    let header_crc = crc32c::crc32c_append(ibd_api::crc32c(&buf[start..start + 20]), meta);
    buf.extend_from_slice(&header_crc.to_le_bytes());
    buf.extend_from_slice(meta);
    buf.extend_from_slice(data);
}

/// One record found by [`scan`].
#[derive(Debug)]
pub enum Scanned<'a> {
    Page {
        meta: PageMeta,
        crc32c: u32,
        image: &'a [u8],
        /// The image does not match its CRC-32C: the page is known, its content is not.
        damaged: bool,
    },
    Meta(MetaRecord),
    /// Header intact, meta unreadable (cannot happen unless the format changed under us).
    BadMeta(String),
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belonged to a record.
    Clean,
    /// From this offset to the end nothing is a whole valid record: a write cut short by a crash
    /// if this is the newest segment.
    TornAt(u64),
}

/// A stretch of bytes that is not a record, followed by valid records again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptGap {
    pub start: u64,
    pub end: u64,
}

/// Reads records from `buf[from..]`, calling `visit(offset, record_len, record)` for each, and
/// `gap` for each damaged stretch it skipped over to a later valid record.
pub fn scan(
    buf: &[u8],
    from: u64,
    mut visit: impl FnMut(u64, u32, Scanned<'_>),
    mut gap: impl FnMut(CorruptGap),
) -> ScanEnd {
    let mut at = from as usize;
    loop {
        if at >= buf.len() {
            return ScanEnd::Clean;
        }
        match parse_at(buf, at) {
            Parsed::Record(len, record) => {
                visit(at as u64, len as u32, record);
                at += len;
            }
            Parsed::Invalid => {
                match (at + 1..buf.len()).find(|&o| matches!(parse_at(buf, o), Parsed::Record(..))) {
                    Some(next) => {
                        gap(CorruptGap {
                            start: at as u64,
                            end: next as u64,
                        });
                        at = next;
                    }
                    None => return ScanEnd::TornAt(at as u64),
                }
            }
        }
    }
}

enum Parsed<'a> {
    Record(usize, Scanned<'a>),
    Invalid,
}

fn parse_at(buf: &[u8], at: usize) -> Parsed<'_> {
    let Some(header) = buf.get(at..at + HEADER_LEN) else {
        return Parsed::Invalid;
    };
    if u32_at(header, 0) != MAGIC {
        return Parsed::Invalid;
    }
    let kind = header[4];
    let meta_len = u32_at(header, 8) as usize;
    let data_len = u32_at(header, 12) as usize;
    let data_crc = u32_at(header, 16);
    if meta_len > MAX_META_LEN || data_len > BLOCK_SIZE {
        return Parsed::Invalid;
    }
    let meta_start = at + HEADER_LEN;
    let data_start = meta_start + meta_len;
    let end = data_start + data_len;
    let (Some(meta), Some(data)) = (buf.get(meta_start..data_start), buf.get(data_start..end)) else {
        return Parsed::Invalid;
    };
    let header_crc = crc32c::crc32c_append(ibd_api::crc32c(&header[..20]), meta);
    if header_crc != u32_at(header, 20) {
        return Parsed::Invalid;
    }
    let record = match kind {
        KIND_PAGE => match PageMeta::decode(meta) {
            Some(meta) => Scanned::Page {
                meta,
                crc32c: data_crc,
                image: data,
                damaged: ibd_api::crc32c(data) != data_crc,
            },
            None => Scanned::BadMeta(format!("page meta of {meta_len} bytes")),
        },
        KIND_META => match serde_json::from_slice(meta) {
            Ok(record) => Scanned::Meta(record),
            Err(e) => Scanned::BadMeta(e.to_string()),
        },
        other => Scanned::BadMeta(format!("unknown record kind {other}")),
    };
    Parsed::Record(end - at, record)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_record_len(image_len: usize) -> usize {
        HEADER_LEN + PAGE_META_LEN + image_len
    }

    fn meta(seq: u64) -> PageMeta {
        PageMeta {
            timeline: 1,
            file: 2,
            block: 3,
            seq,
            lsn: 100 + seq,
            written_at_ms: 5,
        }
    }

    fn three_records() -> Vec<u8> {
        let mut buf = Vec::new();
        let image = vec![7u8; BLOCK_SIZE];
        encode_page(&mut buf, &meta(1), &image, ibd_api::crc32c(&image));
        encode_meta(&mut buf, &MetaRecord::TermAcquired { timeline: 1, term: 4 });
        encode_page(&mut buf, &meta(2), &image, ibd_api::crc32c(&image));
        buf
    }

    fn collect(buf: &[u8]) -> (Vec<(u64, bool)>, Vec<CorruptGap>, ScanEnd) {
        let mut seen = Vec::new();
        let mut gaps = Vec::new();
        let end = scan(
            buf,
            0,
            |offset, _, r| {
                seen.push(match r {
                    Scanned::Page { meta, damaged, .. } => (meta.seq, damaged),
                    Scanned::Meta(_) => (offset, false),
                    Scanned::BadMeta(m) => panic!("{m}"),
                })
            },
            |g| gaps.push(g),
        );
        (seen, gaps, end)
    }

    #[test]
    fn records_round_trip() {
        let buf = three_records();
        let (seen, gaps, end) = collect(&buf);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0], (1, false));
        assert_eq!(seen[2], (2, false));
        assert!(gaps.is_empty());
        assert_eq!(end, ScanEnd::Clean);
    }

    #[test]
    fn a_cut_short_last_record_is_a_torn_tail() {
        let buf = three_records();
        let last = page_record_len(BLOCK_SIZE);
        for cut in [1, 20, HEADER_LEN + 3, last - 1] {
            let torn = &buf[..buf.len() - cut];
            let (seen, _, end) = collect(torn);
            assert_eq!(seen.len(), 2, "cut {cut}");
            assert_eq!(end, ScanEnd::TornAt((buf.len() - last) as u64));
        }
    }

    #[test]
    fn a_damaged_image_is_attributed_and_a_damaged_header_is_skipped() {
        let mut buf = three_records();
        buf[HEADER_LEN + PAGE_META_LEN + 100] ^= 1;
        let (seen, gaps, end) = collect(&buf);
        assert_eq!(seen[0], (1, true));
        assert!(gaps.is_empty());
        assert_eq!(end, ScanEnd::Clean);

        let mut buf = three_records();
        buf[30] ^= 1; // inside the first record's page meta
        let (seen, gaps, end) = collect(&buf);
        assert_eq!(seen.len(), 2);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].start, 0);
        assert_eq!(gaps[0].end, page_record_len(BLOCK_SIZE) as u64);
        assert_eq!(end, ScanEnd::Clean);
    }
}
