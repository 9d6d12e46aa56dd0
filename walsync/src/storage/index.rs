//! In-memory index of a timeline's segments: which file holds an LSN, and a sparse list of record
//! positions inside each file so a read seeks close to its start instead of scanning the segment.

use std::path::PathBuf;

/// A mark is placed on the first record at or after every this many bytes of a segment.
const MARK_INTERVAL: u64 = 64 << 10;

/// A record boundary: the record starting at `lsn` starts at byte `offset` of its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub lsn: u64,
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct SegmentEntry {
    pub path: PathBuf,
    pub start_lsn: u64,
    pub end_lsn: u64,
    /// Bytes of valid records (the append position).
    pub file_len: u64,
    marks: Vec<Mark>,
    /// LSN ranges `[from, to)` whose bytes are corrupt on disk: never served.
    corrupt: Vec<(u64, u64)>,
}

impl SegmentEntry {
    pub fn new(path: PathBuf, start_lsn: u64) -> Self {
        Self {
            path,
            start_lsn,
            end_lsn: start_lsn,
            file_len: 0,
            marks: Vec::new(),
            corrupt: Vec::new(),
        }
    }

    /// Accounts for a record of `len` payload bytes written at the current end.
    pub fn note_record(&mut self, start_lsn: u64, len: u64) {
        debug_assert_eq!(start_lsn, self.end_lsn);
        // Also right after corrupt bytes, so no read ever has to scan through them.
        let after_corrupt = self.corrupt.last().is_some_and(|c| c.1 == start_lsn);
        let due = after_corrupt
            || self
                .marks
                .last()
                .is_none_or(|m| self.file_len - m.offset >= MARK_INTERVAL);
        if due {
            self.marks.push(Mark {
                lsn: start_lsn,
                offset: self.file_len,
            });
        }
        self.file_len += super::segment::RECORD_HEADER_LEN + len;
        self.end_lsn += len;
    }

    fn corrupt_bytes(&self) -> u64 {
        self.corrupt.iter().map(|(from, to)| to - from).sum()
    }

    /// Accounts for corrupt bytes up to `end_offset`, where the WAL continues at `to_lsn`.
    pub fn skip_corrupt(&mut self, to_lsn: u64, end_offset: u64) {
        self.corrupt.push((self.end_lsn, to_lsn));
        self.end_lsn = to_lsn;
        self.file_len = end_offset;
    }

    /// The last mark at or before `lsn` (which must lie inside this segment).
    fn mark_for(&self, lsn: u64) -> Mark {
        let i = self.marks.partition_point(|m| m.lsn <= lsn);
        self.marks[i.saturating_sub(1)]
    }
}

/// One piece of a read: bytes `[from, to)` from the segment at `path`, starting the scan at `mark`.
#[derive(Debug, Clone)]
pub struct ReadPiece {
    pub path: PathBuf,
    pub mark: Mark,
    pub from: u64,
    pub to: u64,
}

/// The segments of a timeline in LSN order, each continuing the previous one.
#[derive(Debug, Default, Clone)]
pub struct WalIndex {
    segments: Vec<SegmentEntry>,
    /// Sums over `segments`, kept as they change: the gauges read them after every commit, and a
    /// day of retained WAL can be thousands of segments.
    stored_bytes: u64,
    corrupt_bytes: u64,
}

impl WalIndex {
    pub fn push(&mut self, segment: SegmentEntry) {
        debug_assert!(self.end_lsn().is_none_or(|end| end == segment.start_lsn));
        self.stored_bytes += segment.file_len;
        self.corrupt_bytes += segment.corrupt_bytes();
        self.segments.push(segment);
    }

    /// Accounts for a record of `len` payload bytes written at the end of the last segment.
    pub fn note_record(&mut self, start_lsn: u64, len: u64) {
        let last = self.segments.last_mut().expect("a segment to append to");
        let before = last.file_len;
        last.note_record(start_lsn, len);
        self.stored_bytes += last.file_len - before;
    }

    pub fn start_lsn(&self) -> Option<u64> {
        self.segments.first().map(|s| s.start_lsn)
    }

    pub fn end_lsn(&self) -> Option<u64> {
        self.segments.last().map(|s| s.end_lsn)
    }

    pub fn last(&self) -> Option<&SegmentEntry> {
        self.segments.last()
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// WAL (in LSN bytes) that is stored but corrupt.
    pub fn corrupt_bytes(&self) -> u64 {
        self.corrupt_bytes
    }

    /// The first corrupt range overlapping `[from, to)`.
    pub fn corrupt_in(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        let ranges = self.segments.iter().flat_map(|s| &s.corrupt);
        ranges.copied().find(|(a, b)| *a < to && from < *b)
    }

    /// Splits `[from, to)` into per-segment pieces; the caller has checked the range is stored.
    pub fn plan_read(&self, from: u64, to: u64) -> Vec<ReadPiece> {
        self.segments
            .iter()
            .filter(|s| s.start_lsn < to && s.end_lsn > from)
            .map(|s| {
                let from = from.max(s.start_lsn);
                ReadPiece {
                    path: s.path.clone(),
                    mark: s.mark_for(from),
                    from,
                    to: to.min(s.end_lsn),
                }
            })
            .collect()
    }

    /// Notes WAL found corrupt when read, refused from now on: the record at `lsn`, up to `end`
    /// if it failed its CRC (its length may have rotted too: then a later read finds the next
    /// header wrong); else (its header is wrong, maybe reached through a bad length) every read
    /// that scans from `mark_lsn` fails, up to the next mark (reads after that start there).
    /// Returns the range, and whether it is new.
    pub fn mark_corrupt(&mut self, lsn: u64, end: Option<u64>, mark_lsn: u64) -> Option<(u64, u64, bool)> {
        let segment = self
            .segments
            .iter_mut()
            .find(|s| s.start_lsn <= lsn && lsn < s.end_lsn)?;
        let (from, to) = match end {
            Some(end) => (lsn, end.min(segment.end_lsn)),
            None => {
                let next_mark = segment.marks.iter().map(|m| m.lsn).find(|m| *m > lsn);
                (mark_lsn.min(lsn), next_mark.unwrap_or(segment.end_lsn))
            }
        };
        if let Some((a, b)) = segment
            .corrupt
            .iter()
            .copied()
            .find(|(a, b)| *a < to && from < *b)
        {
            return Some((a, b, false));
        }
        let i = segment.corrupt.partition_point(|c| c.0 < from);
        segment.corrupt.insert(i, (from, to));
        self.corrupt_bytes += to - from;
        Some((from, to, true))
    }

    /// Removes the segments that end at or before `lsn`, never the last one (it is appended to).
    pub fn remove_before(&mut self, lsn: u64) -> Vec<SegmentEntry> {
        let keep_last = self.segments.len().saturating_sub(1);
        let n = self.segments[..keep_last]
            .iter()
            .take_while(|s| s.end_lsn <= lsn)
            .count();
        let removed: Vec<_> = self.segments.drain(..n).collect();
        for segment in &removed {
            self.stored_bytes -= segment.file_len;
            self.corrupt_bytes -= segment.corrupt_bytes();
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(start: u64, records: &[u64]) -> SegmentEntry {
        let mut s = SegmentEntry::new(PathBuf::from(format!("{start}")), start);
        let mut lsn = start;
        for len in records {
            s.note_record(lsn, *len);
            lsn += len;
        }
        s
    }

    #[test]
    fn marks_are_sparse_and_reads_start_at_the_nearest_one() {
        let s = segment(1000, &[40_000, 40_000, 10, 70_000, 5]);
        // Marks at the first record and at the first record past each 64 KiB.
        assert_eq!(
            s.marks,
            vec![
                Mark { lsn: 1000, offset: 0 },
                Mark {
                    lsn: 81_000,
                    offset: 80_032
                },
                Mark {
                    lsn: 151_010,
                    offset: 150_074
                },
            ]
        );
        assert_eq!(s.mark_for(80_999).lsn, 1000);
        assert_eq!(s.mark_for(100_000).lsn, 81_000);
        assert_eq!(s.mark_for(151_014).lsn, 151_010);
    }

    #[test]
    fn reads_span_segments_and_retention_keeps_the_last() {
        let mut index = WalIndex::default();
        index.push(segment(0, &[10, 10]));
        index.push(segment(20, &[10]));
        index.push(segment(30, &[5]));
        let pieces = index.plan_read(15, 33);
        let ranges: Vec<_> = pieces.iter().map(|p| (p.from, p.to)).collect();
        assert_eq!(ranges, vec![(15, 20), (20, 30), (30, 33)]);

        assert_eq!(index.stored_bytes(), 20 + 10 + 5 + 4 * 16);
        assert_eq!(index.remove_before(25).len(), 1);
        assert_eq!(index.stored_bytes(), 10 + 5 + 2 * 16);
        assert_eq!(index.start_lsn(), Some(20));
        assert_eq!(index.remove_before(u64::MAX).len(), 1);
        assert_eq!((index.start_lsn(), index.end_lsn()), (Some(30), Some(35)));
    }
}
