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
    pub file_len: u64,
    pub reason: &'static str,
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
/// valid record is corruption: it is skipped (and reported) and the scan goes on. An invalid
/// record with nothing valid after it ends the scan: in the last segment that is a torn tail;
/// in a sealed one (`next_start`: where the next segment starts) it is corruption up to the end.
pub fn scan(path: &Path, start_lsn: u64, next_start: Option<u64>) -> io::Result<Scan> {
    let bytes = std::fs::read(path)?;
    let file_len = bytes.len() as u64;
    let mut entry = SegmentEntry::new(path.to_path_buf(), start_lsn);
    let mut corrupt = Vec::new();
    let torn = loop {
        let offset = entry.file_len as usize;
        if offset == bytes.len() {
            break None;
        }
        let reason = match check_record(&bytes[offset..], entry.end_lsn) {
            Ok(len) => {
                entry.note_record(entry.end_lsn, len);
                continue;
            }
            Err(reason) => reason,
        };
        let resume = next_valid_record(&bytes, offset, entry.end_lsn)
            .or_else(|| next_start.map(|next| (bytes.len(), next)))
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
                break Some(TornTail {
                    offset: offset as u64,
                    file_len,
                    reason,
                })
            }
        }
    };
    Ok(Scan { entry, corrupt, torn })
}

/// Appends to `out` the bytes `[from, to)` of the segment, reading records from `mark` on and
/// checking each record's CRC.
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
        let corrupt = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what} at LSN {expected_lsn}", path.display()),
            )
        };
        if header.start_lsn != expected_lsn || header.len == 0 || header.len > MAX_RECORD_LEN {
            return Err(corrupt("unexpected record header"));
        }
        let end = expected_lsn + u64::from(header.len);
        if end <= from {
            reader.seek_relative(i64::from(header.len))?;
        } else {
            data.resize(header.len as usize, 0);
            reader.read_exact(&mut data)?;
            if !header.crc_matches(&data) {
                return Err(corrupt("record CRC mismatch"));
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
        let scan = scan(&path, 100, None).unwrap();
        assert_eq!(
            (scan.entry.end_lsn, scan.entry.file_len, scan.torn),
            (107, 39, None)
        );

        // Half a record appended: torn at the end of the second record.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encode_header(107, b"xyz")[..10]).unwrap();
        let scan = super::scan(&path, 100, None).unwrap();
        assert_eq!(scan.entry.end_lsn, 107);
        assert_eq!(scan.torn.unwrap().offset, 39);
        assert!(scan.corrupt.is_empty());

        // The last record failing its CRC, nothing valid after it: indistinguishable from a
        // torn write, cut as one.
        let mut bytes = std::fs::read(&path).unwrap()[..39].to_vec();
        bytes[19 + 16] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let scan = super::scan(&path, 100, None).unwrap();
        assert_eq!(scan.entry.end_lsn, 103);
        assert_eq!(scan.torn.unwrap().reason, "record CRC mismatch");
        assert!(scan.corrupt.is_empty());
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
        let scan = scan(&path, 100, None).unwrap();
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
        let scan = super::scan(&path, 100, None).unwrap();
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
        let scan = super::scan(&path, 100, Some(114)).unwrap();
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
}
