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

/// Reads every record of a segment, building its index; stops at the first invalid record.
pub fn scan(path: &Path, start_lsn: u64) -> io::Result<(SegmentEntry, Option<TornTail>)> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut entry = SegmentEntry::new(path.to_path_buf(), start_lsn);
    let mut data = Vec::new();
    let torn = loop {
        let offset = entry.file_len;
        if offset == file_len {
            break None;
        }
        let torn = |reason| {
            Some(TornTail {
                offset,
                file_len,
                reason,
            })
        };
        if file_len - offset < RECORD_HEADER_LEN {
            break torn("incomplete record header");
        }
        let mut raw = [0u8; RECORD_HEADER_LEN as usize];
        reader.read_exact(&mut raw)?;
        let header = Header::parse(raw);
        if header.len == 0 || header.len > MAX_RECORD_LEN {
            break torn("record length out of range");
        }
        if file_len - offset - RECORD_HEADER_LEN < u64::from(header.len) {
            break torn("incomplete record payload");
        }
        if header.start_lsn != entry.end_lsn {
            break torn("record does not continue the previous one");
        }
        data.resize(header.len as usize, 0);
        reader.read_exact(&mut data)?;
        if !header.crc_matches(&data) {
            break torn("record CRC mismatch");
        }
        entry.note_record(header.start_lsn, u64::from(header.len));
    };
    Ok((entry, torn))
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
    fn scan_stops_at_torn_or_corrupt_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(100));
        write_records(&path, 100, &[b"abc", b"defg"]);
        let (entry, torn) = scan(&path, 100).unwrap();
        assert_eq!((entry.end_lsn, entry.file_len, torn), (107, 39, None));

        // Half a record appended: torn at the end of the second record.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encode_header(107, b"xyz")[..10]).unwrap();
        let (entry, torn) = scan(&path, 100).unwrap();
        assert_eq!(entry.end_lsn, 107);
        assert_eq!(torn.unwrap().offset, 39);

        // A flipped payload byte in the second record: only the first survives.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[19 + 16] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (entry, torn) = scan(&path, 100).unwrap();
        assert_eq!(entry.end_lsn, 103);
        assert_eq!(torn.unwrap().reason, "record CRC mismatch");
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
