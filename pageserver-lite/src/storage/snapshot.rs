//! The index snapshot, `<data-dir>/index.snapshot`, so start-up replays only what came after it.
//!
//! ```text
//! "PSSNAP02" | header_len u64 | header (JSON: position, segments, next_file_id, timelines, meta)
//! | count u64 | count x page entry (73 bytes) | CRC-32C u32 of everything before
//! ```
//!
//! `position` is the end of the active segment when the snapshot was taken: everything before it
//! is in the snapshot. `segments` lists the segment files that existed; a file missing from it but
//! older than `position` is a compaction leftover. Written to a temporary file, synced, renamed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::{Location, MetaEntry, PageKey, PageVersion};
use super::record::MetaKey;
use super::writer::Writer;
use super::{segment, StoreError};
use crate::timeline::Timelines;

const MAGIC: &[u8; 8] = b"PSSNAP02";
/// A snapshot without the live metadata records (before they counted as live bytes): replaying
/// the log instead rebuilds everything, where loading it would leave them uncounted and
/// compaction would drop them.
const OLD_MAGIC: &[u8; 8] = b"PSSNAP01";
const ENTRY_LEN: usize = 73;

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub segment: u64,
    pub offset: u64,
    pub segments: Vec<u64>,
    pub next_file_id: u64,
    pub timelines: Timelines,
    /// The live metadata records.
    pub meta: Vec<(MetaKey, MetaEntry)>,
}

#[derive(Debug)]
pub struct Snapshot {
    pub header: Header,
    pub pages: Vec<(PageKey, PageVersion)>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("index.snapshot")
}

impl Writer {
    pub(super) fn write_snapshot(&mut self) -> Result<(), StoreError> {
        let buf = {
            let state = self.read_state();
            let header = Header {
                segment: self.active.id,
                offset: self.active.len,
                segments: state.segments.ids(),
                next_file_id: state.next_file_id,
                timelines: state.timelines.clone(),
                meta: state.meta.iter().map(|(k, e)| (*k, *e)).collect(),
            };
            let json = serde_json::to_vec(&header).expect("snapshot header serializes");
            let mut buf = Vec::with_capacity(32 + json.len() + state.index.len() * ENTRY_LEN);
            buf.extend_from_slice(MAGIC);
            buf.extend_from_slice(&(json.len() as u64).to_le_bytes());
            buf.extend_from_slice(&json);
            buf.extend_from_slice(&(state.index.len() as u64).to_le_bytes());
            for (key, v) in state.index.iter() {
                encode_entry(&mut buf, key, v);
            }
            let crc = ibd_api::crc32c(&buf);
            buf.extend_from_slice(&crc.to_le_bytes());
            buf
        };
        let final_path = path(&self.config.data_dir);
        let tmp = final_path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &final_path)?;
            segment::sync_dir(&self.config.data_dir)
        };
        write().map_err(StoreError::io("cannot write the index snapshot"))?;
        self.dirty = false;
        self.metrics.snapshots.inc();
        tracing::debug!(
            bytes = buf.len(),
            segment = self.active.id,
            offset = self.active.len,
            "index snapshot written"
        );
        Ok(())
    }
}

/// Loads the snapshot; None if there is none (or it has an older format, see [`OLD_MAGIC`]). A
/// damaged one is an error for the caller to report (it then replays every segment instead).
pub fn load(data_dir: &Path) -> Result<Option<Snapshot>, String> {
    let buf = match std::fs::read(path(data_dir)) {
        Ok(buf) => buf,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    if buf.starts_with(OLD_MAGIC) {
        tracing::info!("the index snapshot has an older format; replaying every segment instead");
        return Ok(None);
    }
    if buf.len() < MAGIC.len() + 20 || &buf[..8] != MAGIC {
        return Err("not a snapshot (bad magic or too short)".into());
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if ibd_api::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("CRC-32C mismatch".into());
    }
    let header_len = u64_at(body, 8) as usize;
    let header_end = 16usize
        .checked_add(header_len)
        .filter(|&e| e + 8 <= body.len())
        .ok_or("header length out of range")?;
    let mut header: Header =
        serde_json::from_slice(&body[16..header_end]).map_err(|e| format!("bad header: {e}"))?;
    header.timelines.reindex();
    let count = u64_at(body, header_end) as usize;
    let entries = &body[header_end + 8..];
    if entries.len() != count.saturating_mul(ENTRY_LEN) {
        return Err(format!(
            "{count} entries announced, {} bytes present",
            entries.len()
        ));
    }
    let pages = entries.chunks_exact(ENTRY_LEN).map(decode_entry).collect();
    Ok(Some(Snapshot { header, pages }))
}

fn encode_entry(buf: &mut Vec<u8>, key: &PageKey, v: &PageVersion) {
    buf.extend_from_slice(&key.timeline.to_le_bytes());
    buf.extend_from_slice(&key.file.to_le_bytes());
    buf.extend_from_slice(&key.block.to_le_bytes());
    buf.extend_from_slice(&v.seq.to_le_bytes());
    buf.extend_from_slice(&v.lsn.to_le_bytes());
    buf.extend_from_slice(&v.crc32c.to_le_bytes());
    buf.extend_from_slice(&v.image_len.to_le_bytes());
    buf.extend_from_slice(&v.written_at_ms.to_le_bytes());
    buf.extend_from_slice(&v.location.segment.to_le_bytes());
    buf.extend_from_slice(&v.location.offset.to_le_bytes());
    buf.extend_from_slice(&v.location.len.to_le_bytes());
    buf.push(u8::from(v.damaged));
}

fn decode_entry(b: &[u8]) -> (PageKey, PageVersion) {
    (
        PageKey {
            timeline: u32_at(b, 0),
            file: u64_at(b, 4),
            block: u64_at(b, 12),
        },
        PageVersion {
            seq: u64_at(b, 20),
            lsn: u64_at(b, 28),
            crc32c: u32_at(b, 36),
            image_len: u32_at(b, 40),
            written_at_ms: u64_at(b, 44),
            location: Location {
                segment: u64_at(b, 52),
                offset: u64_at(b, 60),
                len: u32_at(b, 68),
            },
            damaged: b[72] != 0,
        },
    )
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
