//! The checkpoint history as an append-only file (`checkpoints.log`): one CRC-framed JSON record
//! per checkpoint. InnoDB may checkpoint every second, so recording one must cost one small append
//! and fdatasync, however long the history in the retention window is.
//!
//! Record: `[u32 len][u32 crc32c(json)][json]`, little-endian. The file is rewritten (atomically)
//! only when retention drops records.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ibd_api::walsync::CheckpointRecord;

use super::write_atomically;

pub const FILE_NAME: &str = "checkpoints.log";
const HEADER_LEN: usize = 8;

pub struct CheckpointLog {
    path: PathBuf,
    file: File,
}

impl CheckpointLog {
    /// Writes a new log holding `records` (replacing any) and opens it.
    pub fn create(dir: &Path, records: &[CheckpointRecord]) -> io::Result<Self> {
        let path = dir.join(FILE_NAME);
        write_atomically(&path, &encode_all(records))?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Self { path, file })
    }

    /// Opens the log in `dir` (empty if missing) and reads its records. A torn last record (a
    /// crash inside an append that was never acknowledged) is cut off; the returned count says
    /// how many bytes were.
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<CheckpointRecord>, u64)> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            return Ok((Self::create(dir, &[])?, Vec::new(), 0));
        }
        let bytes = std::fs::read(&path)?;
        let mut records = Vec::new();
        let mut offset = 0;
        while let Some(record) = decode_at(&bytes[offset..]) {
            records.push(record.0);
            offset += record.1;
        }
        let cut = (bytes.len() - offset) as u64;
        let file = OpenOptions::new().append(true).open(&path)?;
        if cut > 0 {
            file.set_len(offset as u64)?;
        }
        // Records a crash left unsynced are reported from now on: make them durable first.
        file.sync_all()?;
        Ok((Self { path, file }, records, cut))
    }

    /// Appends one record durably.
    pub fn append(&mut self, record: &CheckpointRecord) -> io::Result<()> {
        self.file.write_all(&encode(record))?;
        self.file.sync_data()
    }

    /// Replaces the whole log with `records`.
    pub fn rewrite(&mut self, records: &[CheckpointRecord]) -> io::Result<()> {
        write_atomically(&self.path, &encode_all(records))?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }
}

fn encode(record: &CheckpointRecord) -> Vec<u8> {
    let json = serde_json::to_vec(record).expect("checkpoint records always serialize");
    let mut out = Vec::with_capacity(HEADER_LEN + json.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

fn encode_all(records: &[CheckpointRecord]) -> Vec<u8> {
    records.iter().flat_map(encode).collect()
}

/// The record at the start of `bytes` and its encoded length, if it is complete and intact.
fn decode_at(bytes: &[u8]) -> Option<(CheckpointRecord, usize)> {
    let header = bytes.get(..HEADER_LEN)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let json = bytes.get(HEADER_LEN..HEADER_LEN + len)?;
    if crc32c::crc32c(json) != crc {
        return None;
    }
    Some((serde_json::from_slice(json).ok()?, HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use ibd_api::walsync::Checkpoint;

    use super::*;

    fn record(lsn: u64) -> CheckpointRecord {
        CheckpointRecord {
            checkpoint: Checkpoint {
                checkpoint_lsn: lsn,
                end_lsn: lsn + 16,
            },
            durable_lsn_at_arrival: Some(lsn + 100),
            received_at_unix_ms: 7,
        }
    }

    #[test]
    fn appends_survive_reopen_and_a_torn_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, records, cut) = CheckpointLog::open(dir.path()).unwrap();
        assert_eq!((records.len(), cut), (0, 0));
        log.append(&record(1)).unwrap();
        log.append(&record(2)).unwrap();
        drop(log);
        let path = dir.path().join(FILE_NAME);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&encode(&record(3))[..20]).unwrap();
        let (mut log, records, cut) = CheckpointLog::open(dir.path()).unwrap();
        assert_eq!((records, cut), (vec![record(1), record(2)], 20));

        log.rewrite(&[record(2)]).unwrap();
        log.append(&record(4)).unwrap();
        let (_, records, _) = CheckpointLog::open(dir.path()).unwrap();
        assert_eq!(records, vec![record(2), record(4)]);
    }
}
