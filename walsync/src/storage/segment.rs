//! One segment file: CRC-framed records with consecutive LSNs, named by the LSN it starts at.
//!
//! Record: `[u32 crc][u32 len][u64 start_lsn][data]`, little-endian; the CRC-32C covers `len`,
//! `start_lsn` and `data`. A record is valid only if it continues exactly where the previous one
//! ended, so a torn or stale tail is recognised by the first record that fails any check.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::index::{Mark, SegmentEntry};

pub const RECORD_HEADER_LEN: u64 = 16;
/// Upper bound of a record's payload; anything larger in a header is garbage.
pub const MAX_RECORD_LEN: u32 = ibd_api::walsync::MAX_CHUNK_LEN as u32;
const SUFFIX: &str = ".seg";

pub fn file_name(start_lsn: u64) -> String {
    format!("{start_lsn:016x}{SUFFIX}")
}

pub fn parse_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(SUFFIX)?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

pub fn encode_header(start_lsn: u64, data: &[u8]) -> [u8; RECORD_HEADER_LEN as usize] {
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    header[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
    header[8..16].copy_from_slice(&start_lsn.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[4..]), data);
    header[0..4].copy_from_slice(&crc.to_le_bytes());
    header
}

struct Header {
    crc: u32,
    len: u32,
    start_lsn: u64,
    raw: [u8; RECORD_HEADER_LEN as usize],
}

impl Header {
    fn parse(raw: [u8; RECORD_HEADER_LEN as usize]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
        Self {
            crc: u32_at(0),
            len: u32_at(4),
            start_lsn: u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes")),
            raw,
        }
    }

    fn crc_matches(&self, data: &[u8]) -> bool {
        crc32c::crc32c_append(crc32c::crc32c(&self.raw[4..]), data) == self.crc
    }
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub offset: u64,
    /// End of the bytes written: the file's length, less a pre-zeroed segment's zero tail.
    pub written_len: u64,
    pub reason: &'static str,
    /// Set if the watermark says WAL up to this LSN was synced, yet the file ends (or holds bytes
    /// that cannot be its records) before it: synced WAL is missing, not torn.
    pub synced_to: Option<u64>,
}

/// Bytes of a segment that are not a valid record although valid records (or, in a sealed
/// segment, the next segment) follow: corruption, not a torn write, which is always at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    /// The bad bytes: `[offset, end_offset)` of the file.
    pub offset: u64,
    pub end_offset: u64,
    /// The WAL they held, which can no longer be served.
    pub from_lsn: u64,
    pub to_lsn: u64,
    pub reason: &'static str,
}

/// What scanning a segment found.
#[derive(Debug)]
pub struct Scan {
    pub entry: SegmentEntry,
    pub corrupt: Vec<Corrupt>,
    pub torn: Option<TornTail>,
}

/// Checks the record at the start of `bytes`, which must continue at `expected_lsn`; returns its
/// payload length.
fn check_record(bytes: &[u8], expected_lsn: u64) -> Result<u64, &'static str> {
    let Some(raw) = bytes.get(..RECORD_HEADER_LEN as usize) else {
        return Err("incomplete record header");
    };
    let header = Header::parse(raw.try_into().expect("header length"));
    if header.len == 0 || header.len > MAX_RECORD_LEN {
        return Err("record length out of range");
    }
    let Some(data) = bytes[RECORD_HEADER_LEN as usize..].get(..header.len as usize) else {
        return Err("incomplete record payload");
    };
    if header.start_lsn != expected_lsn {
        return Err("record does not continue the previous one");
    }
    if !header.crc_matches(data) {
        return Err("record CRC mismatch");
    }
    Ok(u64::from(header.len))
}

/// The payload length of the record at the start of `bytes` if its header is plausible (it
/// continues at `expected_lsn`, its length is in range) and the payload is all there: only its
/// CRC can have failed.
fn complete_record_len(bytes: &[u8], expected_lsn: u64) -> Option<u64> {
    let header = Header::parse(bytes.get(..RECORD_HEADER_LEN as usize)?.try_into().ok()?);
    let complete = bytes.len() as u64 >= RECORD_HEADER_LEN + u64::from(header.len);
    (header.start_lsn == expected_lsn && (1..=MAX_RECORD_LEN).contains(&header.len) && complete)
        .then_some(u64::from(header.len))
}

/// After an invalid record at `offset` (where LSN `lsn` should have started): the next valid
/// record, as (offset, LSN), if any.
fn next_valid_record(bytes: &[u8], offset: usize, lsn: u64) -> Option<(usize, u64)> {
    // Rot usually hits the payload and leaves the header saying where the next record starts.
    if let Some(raw) = bytes.get(offset..offset + RECORD_HEADER_LEN as usize) {
        let header = Header::parse(raw.try_into().expect("header length"));
        let next = offset + RECORD_HEADER_LEN as usize + header.len as usize;
        let next_lsn = lsn + u64::from(header.len);
        if header.start_lsn == lsn
            && (1..=MAX_RECORD_LEN).contains(&header.len)
            && next < bytes.len()
            && check_record(&bytes[next..], next_lsn).is_ok()
        {
            return Some((next, next_lsn));
        }
    }
    // Else the first later offset holding a valid record whose LSN is reachable from here: the
    // LSN advances by at most the number of bytes skipped.
    let last = bytes.len().checked_sub(RECORD_HEADER_LEN as usize)?;
    (offset + 1..=last).find_map(|at| {
        let header = Header::parse(bytes[at..at + RECORD_HEADER_LEN as usize].try_into().ok()?);
        let reachable = header.start_lsn >= lsn && header.start_lsn - lsn <= (at - offset) as u64;
        (reachable && check_record(&bytes[at..], header.start_lsn).is_ok()).then_some((at, header.start_lsn))
    })
}

/// Reads every record of a segment, building its index. A run of invalid bytes followed by a
/// valid record is corruption (unless it lies at or past the watermark in the last segment, where
/// it is the torn tail): it is skipped (and reported) and the scan goes on. An invalid
/// record with nothing valid after it: in a sealed segment (`next_start`: where the next segment
/// starts) it is corruption up to the end. In the last segment it depends on `synced` (the
/// watermark: WAL below it was fdatasynced): past it, a torn (never acknowledged) tail, ending the
/// scan; below it, corruption, kept and reported: a record whose header is intact and payload
/// complete is skipped and the scan goes on after it, else the bad bytes up to the end of the
/// written bytes are taken to hold the WAL up to the watermark.
///
/// The written bytes end where only zeros follow (a segment starts as a file of zeros, see
/// [`super::spare`]); a record's own trailing zeros are read as part of it. The last segment
/// ending before the watermark is synced WAL gone missing: reported as a torn tail that says so.
pub fn scan(path: &Path, start_lsn: u64, next_start: Option<u64>, synced: Option<u64>) -> io::Result<Scan> {
    let bytes = std::fs::read(path)?;
    let written = super::spare::zero_tail_start(&bytes);
    let written_len = written as u64;
    let mut entry = SegmentEntry::new(path.to_path_buf(), start_lsn);
    let mut corrupt = Vec::new();
    let torn = loop {
        let offset = entry.file_len as usize;
        if offset >= written {
            let lsn = entry.end_lsn;
            let missing = synced.filter(|synced| next_start.is_none() && lsn < *synced);
            break missing.map(|synced| TornTail {
                offset: offset as u64,
                written_len: offset as u64,
                reason: "the segment ends before the synced watermark",
                synced_to: Some(synced),
            });
        }
        let reason = match check_record(&bytes[offset..], entry.end_lsn) {
            Ok(len) => {
                entry.note_record(entry.end_lsn, len);
                continue;
            }
            Err(reason) => reason,
        };
        // Past the watermark in the last segment nothing was acknowledged, whatever follows: a
        // power loss keeps any subset of the pages written since the last fdatasync, so valid
        // records after a gap there are no sign of corruption. Cut at the gap.
        let unsynced = next_start.is_none() && synced.is_some_and(|synced| entry.end_lsn >= synced);
        let valid_after = if unsynced {
            None
        } else {
            next_valid_record(&bytes, offset, entry.end_lsn)
        };
        let resume = valid_after
            .or_else(|| next_start.map(|next| (written, next)))
            .filter(|(_, lsn)| *lsn >= entry.end_lsn);
        match resume {
            Some((end_offset, to_lsn)) => {
                corrupt.push(Corrupt {
                    offset: offset as u64,
                    end_offset: end_offset as u64,
                    from_lsn: entry.end_lsn,
                    to_lsn,
                    reason,
                });
                entry.skip_corrupt(to_lsn, end_offset as u64);
            }
            None => {
                let lsn = entry.end_lsn;
                let Some(synced) = synced.filter(|synced| lsn < *synced) else {
                    break Some(TornTail {
                        offset: offset as u64,
                        written_len,
                        reason,
                        synced_to: None,
                    });
                };
                // Synced, so acknowledged: whatever went wrong here, it was not a torn write.
                let complete = complete_record_len(&bytes[offset..], lsn).filter(|len| lsn + len <= synced);
                let (to_lsn, end_offset) = match complete {
                    Some(len) => (lsn + len, offset as u64 + RECORD_HEADER_LEN + len),
                    // Bytes enough to have held the WAL up to the watermark (and so the next
                    // scan finds what is appended after them as the WAL continuing there).
                    None if written_len - offset as u64 >= RECORD_HEADER_LEN + (synced - lsn) => {
                        (synced, written_len)
                    }
                    None => {
                        break Some(TornTail {
                            offset: offset as u64,
                            written_len,
                            reason,
                            synced_to: Some(synced),
                        })
                    }
                };
                corrupt.push(Corrupt {
                    offset: offset as u64,
                    end_offset,
                    from_lsn: lsn,
                    to_lsn,
                    reason,
                });
                entry.skip_corrupt(to_lsn, end_offset);
            }
        }
    };
    Ok(Scan { entry, corrupt, torn })
}

/// A record that failed its check when read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what} at LSN {lsn}")]
pub struct BadRecord {
    pub path: String,
    pub what: &'static str,
    /// Where the record starts.
    pub lsn: u64,
    /// Where it ends, if its header is intact.
    pub end: Option<u64>,
}

/// Appends to `out` the bytes `[from, to)` of the segment, reading records from `mark` on and
/// checking each record's CRC; a bad record is an `InvalidData` error carrying a [`BadRecord`].
pub fn read_range(path: &Path, mark: Mark, from: u64, to: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(mark.offset))?;
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let mut expected_lsn = mark.lsn;
    let mut data = Vec::new();
    while expected_lsn < to {
        let mut raw = [0u8; RECORD_HEADER_LEN as usize];
        reader.read_exact(&mut raw)?;
        let header = Header::parse(raw);
        let corrupt = |what: &'static str, end: Option<u64>| {
            let bad = BadRecord {
                path: path.display().to_string(),
                what,
                lsn: expected_lsn,
                end,
            };
            io::Error::new(io::ErrorKind::InvalidData, bad)
        };
        if header.start_lsn != expected_lsn || header.len == 0 || header.len > MAX_RECORD_LEN {
            return Err(corrupt("unexpected record header", None));
        }
        let end = expected_lsn + u64::from(header.len);
        if end <= from {
            reader.seek_relative(i64::from(header.len))?;
        } else {
            data.resize(header.len as usize, 0);
            reader.read_exact(&mut data)?;
            if !header.crc_matches(&data) {
                return Err(corrupt("record CRC mismatch", Some(end)));
            }
            let lo = from.saturating_sub(expected_lsn) as usize;
            let hi = (to.min(end) - expected_lsn) as usize;
            out.extend_from_slice(&data[lo..hi]);
        }
        expected_lsn = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write_records(path: &Path, start: u64, chunks: &[&[u8]]) {
        let mut f = File::create(path).unwrap();
        let mut lsn = start;
        for c in chunks {
            f.write_all(&encode_header(lsn, c)).unwrap();
            f.write_all(c).unwrap();
            lsn += c.len() as u64;
        }
    }

    #[test]
    fn file_names_sort_by_lsn_and_parse_back() {
        assert_eq!(file_name(0x3000), "0000000000003000.seg");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("3000.seg"), None);
        assert_eq!(parse_file_name("0000000000003000.tmp"), None);
    }

    #[test]
    fn scan_stops_at_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(100));
        write_records(&path, 100, &[b"abc", b"defg"]);
        let scan = scan(&path, 100, None, None).unwrap();
        assert_eq!(
            (scan.entry.end_lsn, scan.entry.file_len, scan.torn),
            (107, 39, None)
        );

        // Half a record appended past the watermark: torn at the end of the second record.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encode_header(107, b"xyz")[..10]).unwrap();
        for synced in [None, Some(107)] {
            let scan = super::scan(&path, 100, None, synced).unwrap();
            assert_eq!(scan.entry.end_lsn, 107);
            assert_eq!(scan.torn.unwrap().offset, 39);
            assert!(scan.corrupt.is_empty());
        }
    }

    #[test]
    fn a_bad_last_record_is_a_torn_tail_past_the_watermark_and_corruption_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(100));
        write_records(&path, 100, &[b"abc", b"defg"]);
        let clean = std::fs::read(&path).unwrap();
        // The last record, complete, fails its CRC (its payload rotted).
        let mut bytes = clean.clone();
        bytes[19 + 16] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();

        // Not known synced (written, never acknowledged; after a power loss it may hold
        // anything): a torn tail, cut.
        for synced in [None, Some(103)] {
            let scan = scan(&path, 100, None, synced).unwrap();
            assert_eq!(scan.entry.end_lsn, 103);
            let torn = scan.torn.unwrap();
            assert_eq!(
                (torn.offset, torn.reason, torn.synced_to),
                (19, "record CRC mismatch", None)
            );
            assert!(scan.corrupt.is_empty());
        }
        // Synced: acknowledged WAL that rotted. Kept and reported, never cut; the WAL goes on
        // after it.
        let scan = scan(&path, 100, None, Some(107)).unwrap();
        assert_eq!(scan.torn, None);
        assert_eq!(
            scan.corrupt,
            vec![Corrupt {
                offset: 19,
                end_offset: 39,
                from_lsn: 103,
                to_lsn: 107,
                reason: "record CRC mismatch",
            }]
        );
        assert_eq!((scan.entry.end_lsn, scan.entry.file_len), (107, 39));

        // Its header rotted too: the bad bytes to the end of the file hold the WAL up to the
        // watermark; what an unsynced write left after a synced record is still cut.
        let mut bytes = clean.clone();
        bytes[19 + 8] ^= 0x01;
        bytes.extend_from_slice(&encode_header(107, b"xyz")[..10]);
        std::fs::write(&path, &bytes).unwrap();
        let scan = super::scan(&path, 100, None, Some(107)).unwrap();
        assert_eq!(scan.torn, None);
        let c = &scan.corrupt[0];
        // (The last of the 49 bytes is a zero: written bytes end before trailing zeros.)
        assert_eq!((c.offset, c.end_offset, c.from_lsn, c.to_lsn), (19, 48, 103, 107));
        let mut bytes = clean.clone();
        bytes[19 + 16] ^= 0xff;
        bytes.extend_from_slice(&encode_header(107, b"xyz")[..10]);
        std::fs::write(&path, &bytes).unwrap();
        let scan = super::scan(&path, 100, None, Some(107)).unwrap();
        assert_eq!(scan.corrupt.len(), 1);
        assert_eq!(scan.torn.unwrap().offset, 39);

        // The file ends before the watermark: synced WAL is missing, said so.
        std::fs::write(&path, &clean[..30]).unwrap();
        let scan = super::scan(&path, 100, None, Some(107)).unwrap();
        let torn = scan.torn.unwrap();
        assert_eq!((torn.offset, torn.synced_to), (19, Some(107)));
    }

    #[test]
    fn a_bad_record_with_valid_records_after_it_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(100));
        write_records(&path, 100, &[b"abc", b"defg", b"hi", b"jklmn"]);
        let clean = std::fs::read(&path).unwrap();

        // A payload byte of the second record rots: its header still says where the next is.
        let mut bytes = clean.clone();
        bytes[19 + 16 + 1] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let scan = scan(&path, 100, None, None).unwrap();
        assert_eq!(scan.torn, None);
        assert_eq!(
            scan.corrupt,
            vec![Corrupt {
                offset: 19,
                end_offset: 39,
                from_lsn: 103,
                to_lsn: 107,
                reason: "record CRC mismatch",
            }]
        );
        assert_eq!(
            (scan.entry.end_lsn, scan.entry.file_len),
            (114, clean.len() as u64)
        );

        // Its length field rots: found again by the first valid record after it.
        let mut bytes = clean.clone();
        bytes[19 + 4] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let scan = super::scan(&path, 100, None, None).unwrap();
        assert_eq!(scan.torn, None);
        let corrupt = &scan.corrupt[0];
        assert_eq!((corrupt.offset, corrupt.end_offset), (19, 39));
        assert_eq!((corrupt.from_lsn, corrupt.to_lsn), (103, 107));
        assert_eq!(scan.entry.end_lsn, 114);

        // In a sealed segment, the last record rotting is corruption up to where the next
        // segment starts.
        let mut bytes = clean.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let scan = super::scan(&path, 100, Some(114), None).unwrap();
        assert_eq!(scan.torn, None);
        assert_eq!((scan.corrupt[0].from_lsn, scan.corrupt[0].to_lsn), (109, 114));
        assert_eq!(scan.entry.end_lsn, 114);
    }

    #[test]
    fn read_range_cuts_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(100));
        write_records(&path, 100, &[b"abc", b"defg", b"hi"]);
        let mark = Mark { lsn: 100, offset: 0 };
        let mut out = Vec::new();
        read_range(&path, mark, 101, 108, &mut out).unwrap();
        assert_eq!(out, b"bcdefgh");
    }

    #[test]
    fn a_pre_zeroed_segment_ends_where_only_zeros_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(100));
        // The last record's payload ends in zeros of its own.
        write_records(&path, 100, &[b"abc", b"de\0\0"]);
        let records = std::fs::read(&path).unwrap();
        let mut zeroed = records.clone();
        zeroed.resize(4096, 0);
        std::fs::write(&path, &zeroed).unwrap();
        for synced in [None, Some(104), Some(107)] {
            let scan = scan(&path, 100, None, synced).unwrap();
            assert_eq!(
                (scan.entry.end_lsn, scan.entry.file_len),
                (107, records.len() as u64)
            );
            assert!(scan.torn.is_none() && scan.corrupt.is_empty(), "{scan:?}");
        }
        // Sealed with a zero tail: the next segment continues where the records end.
        let scan = scan(&path, 100, Some(107), Some(200)).unwrap();
        assert!(scan.torn.is_none() && scan.corrupt.is_empty(), "{scan:?}");

        // A torn record over the zeros: cut where it starts, past the watermark.
        let mut torn = zeroed.clone();
        torn[records.len()..records.len() + 10].copy_from_slice(&encode_header(107, b"xyz")[..10]);
        std::fs::write(&path, &torn).unwrap();
        let scan = super::scan(&path, 100, None, Some(107)).unwrap();
        assert_eq!(scan.torn.unwrap().offset, records.len() as u64);

        // Past the watermark a power loss kept a later record but not the one before it (zeros,
        // or garbage): the gap is the torn tail, the record after it was never acknowledged.
        let mut gap = records.clone();
        let later = encode_header(110, b"klm");
        gap.extend_from_slice(&[0; 19]);
        gap.extend_from_slice(&later);
        gap.extend_from_slice(b"klm");
        gap.resize(4096, 0);
        std::fs::write(&path, &gap).unwrap();
        let scan = super::scan(&path, 100, None, Some(107)).unwrap();
        assert_eq!(scan.entry.end_lsn, 107);
        assert_eq!(scan.torn.unwrap().offset, records.len() as u64);
        assert!(scan.corrupt.is_empty());
        // Below the watermark the same bytes are corruption, kept, and the WAL goes on after it.
        let scan = super::scan(&path, 100, None, Some(113)).unwrap();
        assert!(scan.torn.is_none(), "{scan:?}");
        assert_eq!(scan.corrupt[0].from_lsn, 107);
        assert_eq!(scan.entry.end_lsn, 113);

        // Zeros where the watermark says synced WAL was: missing, said so (not a quiet end).
        std::fs::write(&path, &zeroed).unwrap();
        let scan = super::scan(&path, 100, None, Some(120)).unwrap();
        let torn = scan.torn.unwrap();
        assert_eq!((torn.offset, torn.synced_to), (records.len() as u64, Some(120)));
    }
}
