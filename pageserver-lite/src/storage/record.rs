//! The CRC-framed records segments are made of, and the scanner that reads them back.
//!
//! ```text
//! header (24 bytes, little-endian):
//!   magic u32 | kind u8 | flags u8 | 0u8 x2 | meta_len u32 | data_len u32 | data_crc u32 | header_crc u32
//! meta  (meta_len bytes)  page: PageMeta (48 bytes); meta: JSON of MetaRecord; commit: 16 bytes
//! data  (data_len bytes)  page record: the image; otherwise empty
//! ```
//!
//! `header_crc` (CRC-32C of header bytes 0..20 followed by the meta) protects what the record is
//! about, so a damaged image is still attributed to its page and never served. `data_crc` of a
//! page record is the writer's CRC-32C of the image, the same value returned with every read
//! (DESIGN.md invariant 5): stored once, checked at every step.
//!
//! Records are written in **batches** (one upload, one namespace change, one compaction copy):
//! every record of a batch has flag [`FLAG_BATCHED`] and the batch ends with a commit record
//! (`bytes u64 | count u32 | 0 u32`: the length and number of the records before it). A power
//! loss during a group commit can leave any prefix of it on disk, or even (the disk may reorder
//! sector writes) a trailer without everything before it; [`scan_batches`] only hands out batches
//! whose trailer matches records that are all there, so each batch is all or nothing. Records
//! without the flag (written before batches existed) count as batches of one.

use ibd_api::pageserver::{CheckpointMarker, BLOCK_SIZE};
use serde::{Deserialize, Serialize};

use crate::namespace::FileVersion;

pub const HEADER_LEN: usize = 24;
pub const PAGE_META_LEN: usize = 48;
const MAGIC: u32 = 0x3152_5350; // "PSR1" little-endian
const MAX_META_LEN: usize = 1 << 20;
const KIND_PAGE: u8 = 1;
const KIND_META: u8 = 2;
const KIND_COMMIT: u8 = 3;
const COMMIT_META_LEN: usize = 16;
/// Header flag: the record belongs to a batch that a commit record ends.
pub const FLAG_BATCHED: u8 = 1;

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
    /// `file` renamed onto the path of live file `replaced`, which is unlinked by the same
    /// change (same seq): POSIX rename over an existing target, in one record.
    RenameReplace {
        timeline: u32,
        file: u64,
        version: FileVersion,
        replaced: u64,
    },
    Marker {
        timeline: u32,
        marker: CheckpointMarker,
    },
    /// GC is about to drop versions below this (see `GcHorizon`); written before it does.
    GcHorizon {
        timeline: u32,
        seq: u64,
        lsn: u64,
    },
}

/// What a metadata record is about. Of the records with the same key only one is live: the one
/// with the highest [`MetaRecord::rank`] (a newer term supersedes an older one), the last one
/// applied among equals (copies left by compaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaKey {
    Timeline(u32),
    Term(u32),
    GcHorizon(u32),
    File {
        timeline: u32,
        file: u64,
        seq: u64,
    },
    Marker {
        timeline: u32,
        checkpoint_lsn: u64,
        checkpoint_end_lsn: u64,
        log_end_lsn_at_write: u64,
        page_store_seq: u64,
    },
    /// A record this version cannot read, by its header CRC: kept as it is.
    Unreadable(u32),
}

impl MetaRecord {
    pub fn key(&self) -> MetaKey {
        match self {
            MetaRecord::TimelineCreated { num, .. } => MetaKey::Timeline(*num),
            MetaRecord::TermAcquired { timeline, .. } => MetaKey::Term(*timeline),
            MetaRecord::GcHorizon { timeline, .. } => MetaKey::GcHorizon(*timeline),
            MetaRecord::FileVersion {
                timeline,
                file,
                version,
            }
            | MetaRecord::RenameReplace {
                timeline,
                file,
                version,
                ..
            } => MetaKey::File {
                timeline: *timeline,
                file: *file,
                seq: version.seq,
            },
            MetaRecord::Marker { timeline, marker } => MetaKey::Marker {
                timeline: *timeline,
                checkpoint_lsn: marker.checkpoint_lsn,
                checkpoint_end_lsn: marker.checkpoint_end_lsn,
                log_end_lsn_at_write: marker.log_end_lsn_at_write,
                page_store_seq: marker.page_store_seq,
            },
        }
    }

    /// Among records with the same key, the highest rank supersedes the others.
    pub fn rank(&self) -> (u64, u64) {
        match self {
            MetaRecord::TermAcquired { term, .. } => (*term, 0),
            // Written as the running maximum, so a newer one is never lower in either part.
            MetaRecord::GcHorizon { seq, lsn, .. } => (*seq, *lsn),
            _ => (0, 0),
        }
    }
}

/// Offset of the image inside a page record.
pub const PAGE_IMAGE_OFFSET: u64 = (HEADER_LEN + PAGE_META_LEN) as u64;

/// Encodes one batch into a buffer: its records, then the commit trailer that makes them count.
pub struct BatchEncoder<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
    /// (offset in `buf`, length) of each record.
    records: Vec<(u64, u32)>,
}

impl<'a> BatchEncoder<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        let start = buf.len();
        Self {
            buf,
            start,
            records: Vec::new(),
        }
    }

    pub fn page(&mut self, meta: &PageMeta, image: &[u8], crc32c: u32) {
        let at = self.buf.len();
        encode(self.buf, KIND_PAGE, FLAG_BATCHED, &meta.encode(), image, crc32c);
        self.pushed(at);
    }

    pub fn meta(&mut self, record: &MetaRecord) {
        let json = serde_json::to_vec(record).expect("meta records always serialize");
        let at = self.buf.len();
        encode(
            self.buf,
            KIND_META,
            FLAG_BATCHED,
            &json,
            &[],
            ibd_api::crc32c(&[]),
        );
        self.pushed(at);
    }

    /// Copies a whole encoded record (compaction) into this batch.
    pub fn copy(&mut self, record: &[u8]) {
        let at = self.buf.len();
        self.buf.extend_from_slice(record);
        let header = &mut self.buf[at..at + HEADER_LEN];
        if header[5] & FLAG_BATCHED == 0 {
            // A record from before batches: flag it, which changes what its header CRC covers.
            header[5] |= FLAG_BATCHED;
            let meta_len = u32_at(header, 8) as usize;
            let meta = &self.buf[at + HEADER_LEN..at + HEADER_LEN + meta_len];
            let crc = crc32c::crc32c_append(ibd_api::crc32c(&self.buf[at..at + 20]), meta);
            self.buf[at + 20..at + 24].copy_from_slice(&crc.to_le_bytes());
        }
        self.pushed(at);
    }

    fn pushed(&mut self, at: usize) {
        self.records.push((at as u64, (self.buf.len() - at) as u32));
    }

    /// Ends the batch with its trailer (an empty batch writes nothing) and returns each record's
    /// offset in the buffer and charged length (see [`RawRecord::charged`]), in order.
    pub fn finish(mut self) -> Vec<(u64, u32)> {
        if !self.records.is_empty() {
            let mut meta = [0u8; COMMIT_META_LEN];
            meta[0..8].copy_from_slice(&((self.buf.len() - self.start) as u64).to_le_bytes());
            meta[8..12].copy_from_slice(&(self.records.len() as u32).to_le_bytes());
            let at = self.buf.len();
            encode(self.buf, KIND_COMMIT, 0, &meta, &[], ibd_api::crc32c(&[]));
            let trailer_len = (self.buf.len() - at) as u32;
            let shares = trailer_shares(self.records.len(), trailer_len);
            for ((_, len), share) in self.records.iter_mut().zip(shares) {
                *len += share;
            }
        }
        self.records
    }
}

/// How a batch's `count` records share its trailer's `trailer_len` bytes: the trailer is needed
/// exactly as long as a record of its batch is, so each live record accounts for a part of it
/// and a batch whose records all died leaves none of its bytes live.
pub fn trailer_shares(count: usize, trailer_len: u32) -> impl Iterator<Item = u32> {
    let n = count.max(1) as u32;
    (0..count as u32).map(move |i| trailer_len / n + u32::from(i < trailer_len % n))
}

fn encode(buf: &mut Vec<u8>, kind: u8, flags: u8, meta: &[u8], data: &[u8], data_crc: u32) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&[kind, flags, 0, 0]);
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
    /// Header intact, meta unreadable (a newer format, or a bug): kept as it is. `id` is its
    /// header CRC, which tells copies of it apart from other such records.
    BadMeta {
        why: String,
        id: u32,
    },
    /// The trailer of a batch: the `count` records in the `bytes` before it.
    Commit {
        bytes: u64,
        count: u32,
    },
}

/// One record found by [`scan`].
#[derive(Debug)]
pub struct RawRecord<'a> {
    pub offset: u64,
    pub len: u32,
    /// What the record accounts for in its segment while live: its length plus its share of the
    /// commit trailer of its batch (set by [`scan_batches`]), see [`trailer_shares`].
    pub charged: u32,
    /// Part of a batch (else a record from before batches: a batch of its own).
    pub batched: bool,
    pub record: Scanned<'a>,
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

/// Reads records from `buf[from..]`, calling `visit` for each, and `gap` for each damaged
/// stretch it skipped over to a later valid record. Batches are not checked: see
/// [`scan_batches`].
pub fn scan<'a>(
    buf: &'a [u8],
    from: u64,
    mut visit: impl FnMut(RawRecord<'a>),
    mut gap: impl FnMut(CorruptGap),
) -> ScanEnd {
    let mut at = from as usize;
    loop {
        if at >= buf.len() {
            return ScanEnd::Clean;
        }
        match parse_at(buf, at) {
            Parsed::Record(len, batched, record) => {
                visit(RawRecord {
                    offset: at as u64,
                    len: len as u32,
                    charged: len as u32,
                    batched,
                    record,
                });
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

/// Something [`scan_batches`] skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Bytes that are not records.
    Gap(CorruptGap),
    /// Records in `start..end` that no matching commit trailer covers: discarded whole.
    BrokenBatch { start: u64, end: u64, records: usize },
}

/// Reads the committed batches of `buf[from..]`: `visit` gets the records of each batch (never
/// a part of one), `damage` what was skipped between batches. Whatever follows the last whole
/// batch without a whole batch after it (records without their trailer, a broken batch, bytes
/// that are not records) is not reported as damage but returned as [`ScanEnd::TornAt`] the end
/// of that last batch: it is what a crash during a write leaves.
pub fn scan_batches<'a>(
    buf: &'a [u8],
    from: u64,
    mut visit: impl FnMut(Vec<RawRecord<'a>>),
    mut damage: impl FnMut(Damage),
) -> ScanEnd {
    let mut scanner = BatchScanner {
        open: Vec::new(),
        open_broken: false,
        good_end: from,
        unreported: Vec::new(),
    };
    // `scan` reports a gap right before the record after it.
    let gaps = std::cell::RefCell::new(Vec::new());
    let end = scan(
        buf,
        from,
        |r| {
            for gap in gaps.borrow_mut().drain(..) {
                scanner.gap(gap);
            }
            if let Some(batch) = scanner.record(r) {
                // Damage before a whole batch is not a torn end: report it.
                scanner.unreported.drain(..).for_each(&mut damage);
                visit(batch);
            }
        },
        |gap| gaps.borrow_mut().push(gap),
    );
    let torn = !gaps.borrow().is_empty()
        || !scanner.unreported.is_empty()
        || !scanner.open.is_empty()
        || end != ScanEnd::Clean;
    if torn {
        ScanEnd::TornAt(scanner.good_end)
    } else {
        ScanEnd::Clean
    }
}

/// The state of [`scan_batches`] between records.
struct BatchScanner<'a> {
    /// Records of the batch whose trailer has not come yet.
    open: Vec<RawRecord<'a>>,
    /// A gap inside the open batch breaks it even if its trailer matches by chance.
    open_broken: bool,
    /// End of the last whole batch.
    good_end: u64,
    /// Damage after `good_end`, reported only once a whole batch follows it.
    unreported: Vec<Damage>,
}

impl<'a> BatchScanner<'a> {
    fn gap(&mut self, gap: CorruptGap) {
        self.open_broken |= !self.open.is_empty();
        self.unreported.push(Damage::Gap(gap));
    }

    /// Takes one record; returns a batch once it is whole.
    fn record(&mut self, r: RawRecord<'a>) -> Option<Vec<RawRecord<'a>>> {
        let end = r.offset + u64::from(r.len);
        match r.record {
            Scanned::Commit { bytes, count } => {
                let matches = !self.open_broken
                    && self.open.len() == count as usize
                    && self.open.first().map(|f| f.offset) == r.offset.checked_sub(bytes);
                self.open_broken = false;
                if matches {
                    self.good_end = end;
                    let mut batch = std::mem::take(&mut self.open);
                    for (r, share) in batch.iter_mut().zip(trailer_shares(count as usize, r.len)) {
                        r.charged += share;
                    }
                    return Some(batch);
                }
                self.break_open(end);
                None
            }
            _ if r.batched => {
                self.open.push(r);
                None
            }
            _ => {
                self.break_open(r.offset);
                self.open_broken = false;
                self.good_end = end;
                Some(vec![r])
            }
        }
    }

    /// The open batch cannot be completed: its records are discarded.
    fn break_open(&mut self, end: u64) {
        let start = self.open.first().map_or(end, |f| f.offset);
        let records = self.open.len();
        self.open.clear();
        // A trailer alone (its records were in a gap, reported already) is not news.
        if records > 0 {
            self.unreported.push(Damage::BrokenBatch { start, end, records });
        }
    }
}

enum Parsed<'a> {
    Record(usize, bool, Scanned<'a>),
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
    let batched = header[5] & FLAG_BATCHED != 0;
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
    let bad_meta = |why| Scanned::BadMeta { why, id: header_crc };
    let record = match kind {
        KIND_PAGE => match PageMeta::decode(meta) {
            Some(meta) => Scanned::Page {
                meta,
                crc32c: data_crc,
                image: data,
                damaged: ibd_api::crc32c(data) != data_crc,
            },
            None => bad_meta(format!("page meta of {meta_len} bytes")),
        },
        KIND_META => match serde_json::from_slice(meta) {
            Ok(record) => Scanned::Meta(record),
            Err(e) => bad_meta(e.to_string()),
        },
        KIND_COMMIT if meta_len == COMMIT_META_LEN => Scanned::Commit {
            bytes: u64_at(meta, 0),
            count: u32_at(meta, 8),
        },
        other => bad_meta(format!("unknown record kind {other} ({meta_len} bytes of meta)")),
    };
    Parsed::Record(end - at, batched, record)
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

    const TRAILER_LEN: usize = HEADER_LEN + COMMIT_META_LEN;

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

    fn image() -> Vec<u8> {
        vec![7u8; BLOCK_SIZE]
    }

    /// One batch of page 1 and a term record, then a batch of page 2.
    fn two_batches() -> Vec<u8> {
        let mut buf = Vec::new();
        let image = image();
        let mut batch = BatchEncoder::new(&mut buf);
        batch.page(&meta(1), &image, ibd_api::crc32c(&image));
        batch.meta(&MetaRecord::TermAcquired { timeline: 1, term: 4 });
        assert_eq!(batch.finish().len(), 2);
        let mut batch = BatchEncoder::new(&mut buf);
        batch.page(&meta(2), &image, ibd_api::crc32c(&image));
        batch.finish();
        buf
    }

    /// What [`scan_batches`] finds: per batch, (seq or offset, damaged) of its records.
    type Found = (Vec<Vec<(u64, bool)>>, Vec<Damage>, ScanEnd);

    fn collect(buf: &[u8]) -> Found {
        let mut batches = Vec::new();
        let mut damage = Vec::new();
        let end = scan_batches(
            buf,
            0,
            |records| {
                batches.push(
                    records
                        .into_iter()
                        .map(|r| match r.record {
                            Scanned::Page { meta, damaged, .. } => (meta.seq, damaged),
                            Scanned::Meta(_) => (r.offset, false),
                            other => panic!("{other:?}"),
                        })
                        .collect(),
                )
            },
            |d| damage.push(d),
        );
        (batches, damage, end)
    }

    #[test]
    fn batches_round_trip() {
        let buf = two_batches();
        let (batches, damage, end) = collect(&buf);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].len(), 2);
        assert_eq!(batches[0][0], (1, false));
        assert_eq!(batches[1], vec![(2, false)]);
        assert!(damage.is_empty());
        assert_eq!(end, ScanEnd::Clean);
    }

    #[test]
    fn a_batch_charges_all_its_bytes_to_its_records_alike_when_written_and_when_read() {
        let buf = two_batches();
        let mut written = Vec::new();
        let mut batch = BatchEncoder::new(&mut written);
        batch.meta(&MetaRecord::TermAcquired { timeline: 1, term: 4 });
        batch.meta(&MetaRecord::TermAcquired { timeline: 2, term: 4 });
        batch.meta(&MetaRecord::TermAcquired { timeline: 3, term: 4 });
        let placed = batch.finish();
        assert_eq!(
            placed.iter().map(|p| u64::from(p.1)).sum::<u64>(),
            written.len() as u64
        );
        let mut read = Vec::new();
        scan_batches(
            &written,
            0,
            |rs| read.extend(rs.iter().map(|r| (r.offset, r.charged))),
            |_| {},
        );
        assert_eq!(read, placed);

        let mut charged = 0;
        scan_batches(
            &buf,
            0,
            |rs| charged += rs.iter().map(|r| u64::from(r.charged)).sum::<u64>(),
            |_| {},
        );
        assert_eq!(charged, buf.len() as u64);
        assert_eq!(trailer_shares(3, 40).collect::<Vec<_>>(), vec![14, 13, 13]);
    }

    #[test]
    fn a_batch_cut_short_anywhere_is_a_torn_tail_discarded_whole() {
        let buf = two_batches();
        let first_len = buf.len() - page_record_len(BLOCK_SIZE) - TRAILER_LEN;
        // Cuts all over, and around every record boundary (a whole record without its trailer).
        let page = page_record_len(BLOCK_SIZE);
        let boundaries = [page, first_len - TRAILER_LEN, first_len, buf.len() - TRAILER_LEN];
        let cuts: Vec<usize> = (1..buf.len())
            .step_by(61)
            .chain(boundaries.iter().flat_map(|&b| [b - 1, b, b + 1]))
            .collect();
        for &cut in cuts.iter().filter(|&&c| c < first_len) {
            let (batches, _, end) = collect(&buf[..cut]);
            assert!(batches.is_empty(), "cut at {cut}: {batches:?}");
            assert_eq!(end, ScanEnd::TornAt(0), "cut at {cut}");
        }
        for &cut in cuts.iter().filter(|&&c| c > first_len && c < buf.len()) {
            let (batches, damage, end) = collect(&buf[..cut]);
            assert_eq!(batches.len(), 1, "cut at {cut}");
            assert!(damage.is_empty(), "cut at {cut}: {damage:?}");
            assert_eq!(end, ScanEnd::TornAt(first_len as u64), "cut at {cut}");
        }
    }

    #[test]
    fn a_batch_missing_a_record_is_discarded_even_with_its_trailer() {
        // The disk persisted the trailer but not the page before it (reordered sector writes).
        let mut buf = two_batches();
        buf[..HEADER_LEN].fill(0);
        let (batches, damage, end) = collect(&buf);
        assert_eq!(batches, vec![vec![(2, false)]]);
        assert!(matches!(damage[0], Damage::Gap(_)), "{damage:?}");
        // What is left of the batch: the term record, then the trailer that does not match it.
        let term_at = page_record_len(BLOCK_SIZE) as u64;
        assert!(
            matches!(damage[1], Damage::BrokenBatch { start, records: 1, .. } if start == term_at),
            "{damage:?}"
        );
        assert_eq!(damage.len(), 2);
        assert_eq!(end, ScanEnd::Clean);

        // The same in the last batch is not damage but the torn end of the log.
        let mut buf = two_batches();
        let second = buf.len() - page_record_len(BLOCK_SIZE) - TRAILER_LEN;
        buf[second..second + HEADER_LEN].fill(0);
        let (batches, damage, end) = collect(&buf);
        assert_eq!(batches.len(), 1);
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(end, ScanEnd::TornAt(second as u64));
    }

    #[test]
    fn a_damaged_image_is_attributed_and_a_damaged_header_is_skipped() {
        let mut buf = two_batches();
        buf[HEADER_LEN + PAGE_META_LEN + 100] ^= 1;
        let (batches, damage, end) = collect(&buf);
        assert_eq!(batches[0][0], (1, true));
        assert!(damage.is_empty());
        assert_eq!(end, ScanEnd::Clean);

        let mut buf = two_batches();
        buf[30] ^= 1; // inside the first record's page meta
        let mut gaps = Vec::new();
        let mut records = 0;
        scan(&buf, 0, |_| records += 1, |g| gaps.push(g));
        assert_eq!(
            records, 4,
            "the term record, a trailer, the second page, its trailer"
        );
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].start, 0);
        assert_eq!(gaps[0].end, page_record_len(BLOCK_SIZE) as u64);
    }

    #[test]
    fn records_from_before_batches_are_batches_of_one_and_copies_join_a_batch() {
        let image = image();
        let mut legacy = Vec::new();
        encode(
            &mut legacy,
            KIND_PAGE,
            0,
            &meta(1).encode(),
            &image,
            ibd_api::crc32c(&image),
        );
        let (batches, damage, end) = collect(&legacy);
        assert_eq!(
            (batches, damage, end),
            (vec![vec![(1, false)]], vec![], ScanEnd::Clean)
        );

        let mut buf = Vec::new();
        let mut batch = BatchEncoder::new(&mut buf);
        batch.copy(&legacy);
        batch.finish();
        let (batches, _, _) = collect(&buf);
        assert_eq!(batches, vec![vec![(1, false)]]);
        let (batches, _, end) = collect(&buf[..legacy.len()]);
        assert!(batches.is_empty(), "a copy is part of its batch");
        assert_eq!(end, ScanEnd::TornAt(0));
    }
}
