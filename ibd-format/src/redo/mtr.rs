//! Mini-transaction (mtr) framing and the scanner that finds the end of the log.
//!
//! An mtr is `records… | terminator | [8-byte nonce if encrypted] | CRC-32C` (see `mtr0types.h`).
//! The scanner mirrors `recv_sys_t::parse()` of MariaDB 10.11: the framing pass (record lengths,
//! the 1 MiB size limit, the terminator's sequence bit, the CRC) decides where the log ends, and
//! the record pass checks file-level records the way recovery does, so the end found here is the
//! end the server's recovery reports ("End of log at LSN=…").

use super::{LogGeometry, Lsn, MTR_SIZE_MAX};

/// One complete, CRC-valid mini-transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mtr {
    /// LSN of its first byte.
    pub start: Lsn,
    /// LSN just past its CRC: the next mtr starts here; a page written by it carries this LSN.
    pub end: Lsn,
    /// `FILE_CREATE` / `FILE_DELETE` / `FILE_RENAME` / `FILE_MODIFY` records it holds.
    pub file_ops: Vec<FileOp>,
    /// The LSN of its `FILE_CHECKPOINT(lsn)` record, if it is a checkpoint mtr.
    pub file_checkpoint: Option<Lsn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileOpKind {
    Create,
    Delete,
    Rename,
    Modify,
}

/// A file-level redo record (tablespace names always end in `.ibd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOp {
    pub kind: FileOpKind,
    pub space_id: u32,
    pub name: String,
    /// The new name of a `FILE_RENAME`.
    pub new_name: Option<String>,
}

/// Why scanning stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// The bytes ran out inside an mtr: more may come (the writer rewrites the last block).
    NeedMore,
    /// The log ends here: recovery would stop at the same LSN.
    End(EndReason),
    /// The mtr frames correctly but a record in it is malformed; recovery would fail here.
    Malformed { lsn: Lsn, what: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// First byte 0x00 or 0x01: nothing was written here (yet).
    Terminator,
    /// The terminator carries the sequence bit of another lap: stale bytes.
    SequenceBit,
    /// CRC-32C mismatch: a torn or stale write.
    Crc,
    /// Longer than `MTR_SIZE_MAX` (1 MiB).
    TooLarge,
}

const INIT_PAGE: u8 = 0x10;
const RESERVED: u8 = 0x60;
const FILE_CREATE: u8 = 0x80;
const FILE_DELETE: u8 = 0x90;
const FILE_RENAME: u8 = 0xA0;
const FILE_MODIFY: u8 = 0xB0;
const FILE_CHECKPOINT: u8 = 0xF0;
/// Size of a `FILE_CHECKPOINT` mtr of an unencrypted log (`SIZE_OF_FILE_CHECKPOINT`).
pub const FILE_CHECKPOINT_MTR_LEN: usize = 16;

/// Walks complete mtrs in `bytes`, which hold the log's logical byte stream from `base_lsn` on
/// (already unwrapped from the circular file; see [`super::LogFile::logical`]).
#[derive(Debug, Clone)]
pub struct MtrScanner<'a> {
    bytes: &'a [u8],
    base_lsn: Lsn,
    pos: usize,
    geometry: LogGeometry,
    encrypted: bool,
    stop: Option<ScanStop>,
}

impl<'a> MtrScanner<'a> {
    pub fn new(bytes: &'a [u8], base_lsn: Lsn, geometry: LogGeometry) -> Self {
        Self {
            bytes,
            base_lsn,
            pos: 0,
            geometry,
            encrypted: false,
            stop: None,
        }
    }

    /// Encrypted logs carry an 8-byte nonce after each terminator, covered by the CRC.
    pub fn encrypted(mut self, encrypted: bool) -> Self {
        self.encrypted = encrypted;
        self
    }

    /// End of the last complete mtr returned (or `base_lsn`): the log's end once scanning stopped.
    pub fn lsn(&self) -> Lsn {
        self.base_lsn + self.pos as u64
    }

    /// Why the scan stopped; `None` while the iterator has not been exhausted.
    pub fn stop(&self) -> Option<&ScanStop> {
        self.stop.as_ref()
    }

    /// Scans to the end and returns `(end_lsn, stop)`.
    pub fn scan_to_end(mut self) -> (Lsn, ScanStop) {
        for _ in self.by_ref() {}
        (
            self.lsn(),
            self.stop.expect("exhausted scanner has a stop reason"),
        )
    }

    /// Framing pass: the index of the terminator of the mtr starting at `self.pos`, and the index
    /// just past its CRC.
    fn frame(&self) -> Result<(usize, usize), ScanStop> {
        let b = self.bytes;
        let at = self.pos;
        let need = |i: usize| b.get(i).copied().ok_or(ScanStop::NeedMore);
        if need(at)? <= 1 {
            return Err(ScanStop::End(EndReason::Terminator));
        }
        let mut l = at;
        let mut total: u32 = 0;
        loop {
            let t = need(l)?;
            if total >= MTR_SIZE_MAX {
                return Err(ScanStop::End(EndReason::TooLarge));
            }
            if t <= 1 {
                break;
            }
            l += 1;
            let mut rlen = u32::from(t & 0xF);
            if rlen == 0 {
                let lenlen = varint_len(need(l)?);
                need(l + lenlen - 1)?;
                let addlen = decode_varint(&b[l..]).unwrap_or(u32::MAX);
                if addlen >= MTR_SIZE_MAX {
                    return Err(ScanStop::End(EndReason::TooLarge));
                }
                rlen = addlen + 15;
            }
            l += rlen as usize;
            total += rlen;
        }
        let terminator_lsn = self.base_lsn + l as u64;
        if b[l] != self.geometry.sequence_bit(terminator_lsn) {
            return Err(ScanStop::End(EndReason::SequenceBit));
        }
        let nonce_len = if self.encrypted { 8 } else { 0 };
        let crc_at = l + 1 + nonce_len;
        need(crc_at + 3)?;
        let mut crc = crc32c::crc32c(&b[at..l]);
        if self.encrypted {
            crc = crc32c::crc32c_append(crc, &b[l + 1..crc_at]);
        }
        if crc != u32::from_be_bytes(b[crc_at..crc_at + 4].try_into().expect("4 bytes")) {
            return Err(ScanStop::End(EndReason::Crc));
        }
        Ok((l, crc_at + 4))
    }

    /// Record pass over a framed mtr's records: collects file operations and checks them as
    /// recovery does (`recv_sys_t::parse()`, second loop). Page records are checked for their
    /// page identifier only: their payload is the server's business, and the CRC already proved
    /// the bytes are the ones it wrote.
    fn records(&self, records: &[u8], start: Lsn) -> Result<(Vec<FileOp>, Option<Lsn>), ScanStop> {
        let malformed = |what| ScanStop::Malformed { lsn: start, what };
        let mut file_ops = Vec::new();
        let mut file_checkpoint = None;
        let mut got_page_op = false;
        let mut i = 0;
        while i < records.len() {
            let t = records[i];
            i += 1;
            let mut rlen = usize::from(t & 0xF);
            if rlen == 0 {
                let lenlen = varint_len(records[i]);
                let addlen = decode_varint(&records[i..]).ok_or_else(|| malformed("bad record length"))?;
                rlen = addlen as usize + 15 - lenlen;
                i += lenlen;
            }
            let body = &records[i..i + rlen];
            i += rlen;
            let next_byte = records.get(i).copied().unwrap_or(0);

            if t & 0x70 == RESERVED {
                return Err(malformed("unknown log record type"));
            }
            if t & 0x80 != 0 && got_page_op {
                if t & 0x70 <= INIT_PAGE {
                    return Err(malformed("FREE_PAGE or INIT_PAGE with same_page flag"));
                }
                continue;
            }
            let idlen = varint_len(body[0]);
            if idlen > 5 || idlen >= rlen {
                if body[0] == 0 && t == FILE_CHECKPOINT + 1 {
                    continue; // padding dummy
                }
                return Err(malformed("corrupted page identifier"));
            }
            let space_id = decode_varint(body).ok_or_else(|| malformed("corrupted space id"))?;
            let rest = &body[idlen..];
            let idlen = varint_len(rest[0]);
            if idlen > 5 || idlen > rest.len() {
                return Err(malformed("corrupted page identifier"));
            }
            let page_no = decode_varint(rest).ok_or_else(|| malformed("corrupted page number"))?;
            let payload = &rest[idlen..];
            got_page_op = t & 0x80 == 0;
            if got_page_op {
                if t & 0x70 <= INIT_PAGE && !payload.is_empty() {
                    return Err(malformed("FREE_PAGE or INIT_PAGE with a payload"));
                }
                continue;
            }
            if payload.is_empty() {
                if t == FILE_CHECKPOINT + 2 && space_id == 0 && page_no == 0 {
                    continue;
                }
                return Err(malformed("empty file-level record"));
            }
            match t & 0xF0 {
                FILE_CHECKPOINT => {
                    if space_id != 0 || page_no != 0 || next_byte > 1 {
                        return Err(malformed("misplaced FILE_CHECKPOINT"));
                    }
                    if payload.len() != 8 {
                        if payload.iter().any(|&b| b != 0) {
                            continue; // ignored by recovery
                        }
                        return Err(malformed("FILE_CHECKPOINT of zeros"));
                    }
                    let lsn = u64::from_be_bytes(payload.try_into().expect("8 bytes"));
                    if lsn != 0 {
                        file_checkpoint = Some(lsn);
                    }
                }
                kind @ (FILE_CREATE | FILE_DELETE | FILE_RENAME | FILE_MODIFY) => {
                    if space_id == 0 || page_no != 0 || space_id == SRV_TMP_SPACE_ID {
                        return Err(malformed("file-level record for a predefined tablespace"));
                    }
                    file_ops.push(
                        parse_file_op(kind, space_id, payload).ok_or_else(|| malformed("bad file name"))?,
                    );
                }
                _ => return Err(malformed("unknown file-level record")),
            }
        }
        Ok((file_ops, file_checkpoint))
    }
}

/// `SRV_TMP_SPACE_ID`: the temporary tablespace is never logged.
const SRV_TMP_SPACE_ID: u32 = 0xFFFF_FFFE;

fn parse_file_op(kind: u8, space_id: u32, payload: &[u8]) -> Option<FileOp> {
    let ends_in_ibd = |name: &[u8]| name.len() >= 4 && name.ends_with(b".ibd") && !name.contains(&0);
    let nul = payload.iter().position(|&b| b == 0);
    let (name, new_name) = match nul {
        Some(n) => (&payload[..n], Some(&payload[n + 1..])),
        None => (payload, None),
    };
    if new_name.is_some() != (kind == FILE_RENAME) || !ends_in_ibd(name) || !new_name.is_none_or(ends_in_ibd)
    {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some(FileOp {
        kind: match kind {
            FILE_CREATE => FileOpKind::Create,
            FILE_DELETE => FileOpKind::Delete,
            FILE_RENAME => FileOpKind::Rename,
            _ => FileOpKind::Modify,
        },
        space_id,
        name: text(name),
        new_name: new_name.map(text),
    })
}

impl Iterator for MtrScanner<'_> {
    type Item = Mtr;

    fn next(&mut self) -> Option<Mtr> {
        if self.stop.is_some() {
            return None;
        }
        let start = self.lsn();
        let result = self.frame().and_then(|(terminator, end)| {
            let (file_ops, file_checkpoint) = self.records(&self.bytes[self.pos..terminator], start)?;
            Ok((end, file_ops, file_checkpoint))
        });
        match result {
            Ok((end, file_ops, file_checkpoint)) => {
                self.pos = end;
                Some(Mtr {
                    start,
                    end: self.lsn(),
                    file_ops,
                    file_checkpoint,
                })
            }
            Err(stop) => {
                self.stop = Some(stop);
                None
            }
        }
    }
}

/// `mlog_decode_varint_length()`: 1 + the number of leading one bits.
fn varint_len(first: u8) -> usize {
    first.leading_ones() as usize + 1
}

/// `mlog_decode_varint()`; `None` for `MLOG_DECODE_ERROR` or too few bytes.
fn decode_varint(b: &[u8]) -> Option<u32> {
    const MIN_2: u32 = 0x80;
    const MIN_3: u32 = MIN_2 + (1 << 14);
    const MIN_4: u32 = MIN_3 + (1 << 21);
    const MIN_5: u32 = MIN_4 + (1 << 28);
    let i = u32::from(*b.first()?);
    let byte = |n: usize| b.get(n).map(|&v| u32::from(v));
    Some(match i {
        0..=0x7F => i,
        0x80..=0xBF => MIN_2 + ((i & !0x80) << 8 | byte(1)?),
        0xC0..=0xDF => MIN_3 + ((i & !0xC0) << 16 | byte(1)? << 8 | byte(2)?),
        0xE0..=0xEF => MIN_4 + ((i & !0xE0) << 24 | byte(1)? << 16 | byte(2)? << 8 | byte(3)?),
        0xF0 => {
            let v = byte(1)? << 24 | byte(2)? << 16 | byte(3)? << 8 | byte(4)?;
            if v > !MIN_5 {
                return None;
            }
            MIN_5 + v
        }
        _ => return None,
    })
}

/// The 16-byte `FILE_CHECKPOINT(lsn)` mtr of an unencrypted log, with terminator `sequence_bit`.
pub fn file_checkpoint_mtr(lsn: Lsn, sequence_bit: u8) -> [u8; FILE_CHECKPOINT_MTR_LEN] {
    let mut m = [0u8; FILE_CHECKPOINT_MTR_LEN];
    m[0] = FILE_CHECKPOINT | 10; // space id 0, page no 0, 8-byte LSN
    m[3..11].copy_from_slice(&lsn.to_be_bytes());
    m[11] = sequence_bit;
    let crc = crc32c::crc32c(&m[..11]);
    m[12..16].copy_from_slice(&crc.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> LogGeometry {
        LogGeometry::new(0x3000, 0x3000 + (1 << 20)).unwrap()
    }

    /// Frames `records` as one mtr ending at lap `bit`.
    fn mtr(records: &[u8], bit: u8) -> Vec<u8> {
        let mut m = records.to_vec();
        let crc = crc32c::crc32c(&m);
        m.push(bit);
        m.extend_from_slice(&crc.to_be_bytes());
        m
    }

    #[test]
    fn file_checkpoint_mtr_matches_the_bytes_the_server_writes() {
        // Observed on 10.11.19: fa 0000 000000000000ad74 01 add4e8f9
        let m = file_checkpoint_mtr(0xad74, 1);
        assert_eq!(
            m,
            [0xfa, 0, 0, 0, 0, 0, 0, 0, 0, 0xad, 0x74, 1, 0xad, 0xd4, 0xe8, 0xf9]
        );
        let mut s = MtrScanner::new(&m, 0x3000, geometry());
        let got = s.next().unwrap();
        assert_eq!(
            (got.start, got.end, got.file_checkpoint),
            (0x3000, 0x3010, Some(0xad74))
        );
        assert_eq!(s.next(), None);
        assert_eq!(s.stop(), Some(&ScanStop::NeedMore));
    }

    #[test]
    fn stops_on_zero_wrong_sequence_bit_and_bad_crc() {
        let g = geometry();
        let good = file_checkpoint_mtr(0x3000, 1);
        let mut log = good.to_vec();
        log.extend_from_slice(&[0; 32]);
        assert_eq!(
            MtrScanner::new(&log, 0x3000, g).scan_to_end(),
            (0x3010, ScanStop::End(EndReason::Terminator))
        );

        let mut stale = good.to_vec();
        stale.extend_from_slice(&file_checkpoint_mtr(0x3000, 0));
        assert_eq!(
            MtrScanner::new(&stale, 0x3000, g).scan_to_end(),
            (0x3010, ScanStop::End(EndReason::SequenceBit))
        );

        let mut torn = good.to_vec();
        let mut second = file_checkpoint_mtr(0x3000, 1);
        second[5] ^= 0xFF;
        torn.extend_from_slice(&second);
        assert_eq!(
            MtrScanner::new(&torn, 0x3000, g).scan_to_end(),
            (0x3010, ScanStop::End(EndReason::Crc))
        );
    }

    #[test]
    fn file_operations_are_reported() {
        // FILE_CREATE space 5 page 0 "test/t.ibd"; FILE_RENAME space 5 "test/t.ibd\0test/u.ibd"
        let mut rec = vec![FILE_CREATE | 12, 5, 0];
        rec.extend_from_slice(b"test/t.ibd");
        let mut ren = vec![FILE_RENAME, 9, 5, 0]; // addlen 9 => 24 bytes incl. the length byte
        ren.extend_from_slice(b"test/t.ibd\0test/u.ibd");
        assert_eq!(ren.len() - 1, 9 + 15);
        let mut log = mtr(&rec, 1);
        log.extend_from_slice(&mtr(&ren, 1));
        let mtrs: Vec<_> = MtrScanner::new(&log, 0x3000, geometry()).collect();
        assert_eq!(mtrs.len(), 2);
        assert_eq!(
            mtrs[0].file_ops,
            vec![FileOp {
                kind: FileOpKind::Create,
                space_id: 5,
                name: "test/t.ibd".into(),
                new_name: None
            }]
        );
        assert_eq!(mtrs[1].file_ops[0].kind, FileOpKind::Rename);
        assert_eq!(mtrs[1].file_ops[0].new_name.as_deref(), Some("test/u.ibd"));
    }

    #[test]
    fn malformed_file_record_is_reported_not_skipped() {
        let mut rec = vec![FILE_CREATE | 12, 5, 0];
        rec.extend_from_slice(b"test/t.frm");
        let log = mtr(&rec, 1);
        let (end, stop) = MtrScanner::new(&log, 0x3000, geometry()).scan_to_end();
        assert_eq!(end, 0x3000);
        assert!(matches!(stop, ScanStop::Malformed { lsn: 0x3000, .. }));
    }

    #[test]
    fn varints_decode_like_the_server() {
        assert_eq!(decode_varint(&[0x7f]), Some(0x7f));
        assert_eq!(decode_varint(&[0x80, 0x00]), Some(0x80));
        assert_eq!(decode_varint(&[0xbf, 0xff]), Some(0x80 + 0x3fff));
        assert_eq!(decode_varint(&[0xc0, 0, 0]), Some(0x4080));
        assert_eq!(decode_varint(&[0xe0, 0, 0, 0]), Some(0x204080));
        assert_eq!(decode_varint(&[0xf0, 0, 0, 0, 0]), Some(0x10204080));
        assert_eq!(decode_varint(&[0xf0, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(decode_varint(&[0xf8]), None);
        assert_eq!(varint_len(0x00), 1);
        assert_eq!(varint_len(0xc0), 3);
        assert_eq!(varint_len(0xff), 9);
    }
}
