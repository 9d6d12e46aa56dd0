//! Start-up: lock the data dir, load the index snapshot, replay the segments written after it.
//!
//! - Only whole batches count (see `record`): a torn tail (a group commit cut short by a crash:
//!   never acknowledged) at the end of the newest segment, from the first batch without its
//!   commit trailer on, is truncated and reported; so one upload is never half there.
//! - Damage anywhere else is reported (log + `pageserver_corrupt_records`) and the store starts
//!   anyway: a page record whose image fails its CRC-32C is indexed as damaged and reads of it
//!   fail, never return it; bytes that are not a record at all are skipped.
//! - Metadata records are applied after the scan, timelines first: compaction may have copied a
//!   timeline's creation behind records that refer to it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::index::{Location, PageKey, PageVersion};
use super::record::{self, Damage, MetaKey, MetaRecord, ScanEnd, Scanned};
use super::segment::{self, Segments};
use super::snapshot;
use super::writer::ActiveSegment;
use super::{State, StoreConfig, StoreError};
use crate::metrics::StoreMetrics;

/// Takes an exclusive `flock` on `<dir>/LOCK` so two servers never share a data dir.
pub fn lock_data_dir(dir: &Path) -> Result<File, StoreError> {
    std::fs::create_dir_all(dir).map_err(StoreError::io(format!(
        "cannot create data dir {}",
        dir.display()
    )))?;
    let lock_path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(StoreError::io(format!("cannot open {}", lock_path.display())))?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Err(StoreError::Unavailable(format!(
                "data dir {} is in use by another pageserver-lite",
                dir.display()
            )));
        }
        return Err(StoreError::Io {
            context: format!("cannot lock {}", lock_path.display()),
            source: e,
        });
    }
    Ok(file)
}

/// What start-up recovered, and which stretches of segments it took from the snapshot unread.
pub struct Recovered {
    pub state: State,
    pub active: ActiveSegment,
    /// (segment, bytes) covered by the snapshot: verified by [`scrub`] in the background.
    pub unverified: Vec<(u64, u64)>,
}

pub fn recover(config: &StoreConfig, metrics: &StoreMetrics) -> Result<Recovered, StoreError> {
    let dir = config.segment_dir();
    std::fs::create_dir_all(&dir).map_err(StoreError::io(format!("cannot create {}", dir.display())))?;
    let snapshot = snapshot::load(&config.data_dir).unwrap_or_else(|why| {
        tracing::error!("index snapshot unusable ({why}); replaying every segment");
        metrics.corrupt_records.inc();
        None
    });
    let on_disk = segment::list(&dir).map_err(StoreError::io(format!("cannot list {}", dir.display())))?;
    if let Some(s) = &snapshot {
        if let Some(missing) = s.header.segments.iter().find(|id| !on_disk.contains(id)) {
            return Err(StoreError::Corrupt(format!(
                "segment {} named by the index snapshot is missing from {}: acknowledged data is gone; \
                 restore the file or remove index.snapshot to start from what is left",
                segment::path(&dir, *missing).display(),
                dir.display()
            )));
        }
        for &id in on_disk
            .iter()
            .filter(|&&id| id < s.header.segment && !s.header.segments.contains(&id))
        {
            tracing::info!(segment = id, "removing a segment compaction had already replaced");
            segment::remove_file(&dir, id).map_err(StoreError::io(format!("cannot remove segment {id}")))?;
        }
    }

    let segments = Segments::open(&dir).map_err(StoreError::io(format!(
        "cannot open segments in {}",
        dir.display()
    )))?;
    let mut state = State {
        timelines: Default::default(),
        index: Default::default(),
        meta: Default::default(),
        segments,
        next_file_id: 1,
    };
    let scan_from = match snapshot {
        Some(s) => {
            state.timelines = s.header.timelines;
            state.next_file_id = s.header.next_file_id;
            for (key, version) in s.pages {
                state.apply_page(key, version);
            }
            for (key, entry) in s.header.meta {
                state.track_meta(key, entry.rank, entry.location);
            }
            (s.header.segment, s.header.offset)
        }
        None => (0, 0),
    };

    let ids = state.segments.ids();
    let newest = ids.last().copied();
    let unverified = state
        .segments
        .iter()
        .filter(|&(id, _)| id <= scan_from.0)
        .map(|(id, s)| (id, if id == scan_from.0 { scan_from.1 } else { s.len }))
        .filter(|&(_, len)| len > 0)
        .collect();
    let mut metas = Vec::new();
    for id in ids.into_iter().filter(|&id| id >= scan_from.0) {
        let buf = segment::read_all(&dir, id).map_err(StoreError::io(format!("cannot read segment {id}")))?;
        let from = if id == scan_from.0 { scan_from.1 } else { 0 };
        if from > buf.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "segment {id} is {} bytes, shorter than the {from} bytes the index snapshot covers",
                buf.len()
            )));
        }
        let end = record::scan_batches(
            &buf,
            from,
            |records| {
                for r in records {
                    let offset = r.offset;
                    let at = Location {
                        segment: id,
                        offset,
                        len: r.charged,
                    };
                    match r.record {
                        Scanned::Page {
                            meta,
                            crc32c,
                            image,
                            damaged,
                        } => {
                            if damaged {
                                metrics.corrupt_records.inc();
                                tracing::error!(
                                    segment = id,
                                    offset,
                                    file = meta.file,
                                    block = meta.block,
                                    seq = meta.seq,
                                    "page image fails its CRC-32C; reads of this version will fail"
                                );
                            }
                            let key = PageKey {
                                timeline: meta.timeline,
                                file: meta.file,
                                block: meta.block,
                            };
                            state.apply_page(
                                key,
                                PageVersion {
                                    seq: meta.seq,
                                    lsn: meta.lsn,
                                    crc32c,
                                    image_len: image.len() as u32,
                                    written_at_ms: meta.written_at_ms,
                                    location: at,
                                    damaged,
                                },
                            );
                        }
                        Scanned::Meta(m) => metas.push((m, at)),
                        Scanned::BadMeta { why, id: crc } => {
                            metrics.corrupt_records.inc();
                            tracing::error!(
                                segment = id,
                                offset,
                                "unreadable metadata record (kept as it is): {why}"
                            );
                            state.track_meta(MetaKey::Unreadable(crc), (0, 0), at);
                        }
                        Scanned::Commit { .. } => unreachable!("scan_batches keeps trailers"),
                    }
                }
            },
            |damage| report_damage(id, damage, metrics),
        );
        if let ScanEnd::TornAt(at) = end {
            if Some(id) == newest {
                metrics.torn_tails.inc();
                tracing::warn!(
                    segment = id,
                    offset = at,
                    bytes = buf.len() as u64 - at,
                    "torn tail (an unacknowledged write cut short by a crash): truncating"
                );
                let seg = state.segments.get_mut(id).expect("listed segment");
                segment::truncate(&seg.file, at)
                    .map_err(StoreError::io(format!("cannot truncate segment {id}")))?;
                seg.len = at;
            } else {
                metrics.corrupt_records.inc();
                tracing::error!(
                    segment = id,
                    offset = at,
                    "sealed segment damaged from here to its end; the records there are lost"
                );
            }
        }
    }
    // Timelines first (a stable sort keeps the rest in log order).
    metas.sort_by_key(|(m, _)| !matches!(m, MetaRecord::TimelineCreated { .. }));
    for (m, at) in &metas {
        state.apply_meta(m, *at);
    }
    // The path indexes were kept up to date while applying, but in replay order.
    state.timelines.rebuild_all_paths();
    let mut newest_seq: HashMap<u32, u64> = HashMap::new();
    for (key, v) in state.index.iter() {
        let seq = newest_seq.entry(key.timeline).or_default();
        *seq = (*seq).max(v.seq);
    }
    for (num, seq) in newest_seq {
        if let Some(tl) = state.timelines.get_mut(num) {
            tl.last_seq = tl.last_seq.max(seq);
        }
    }

    let active = match newest.and_then(|id| state.segments.get(id).map(|s| (id, s))) {
        Some((id, s)) if s.len == 0 => ActiveSegment {
            id,
            file: s.file.clone(),
            len: 0,
        },
        _ => {
            let id = state.segments.next_id();
            let file = std::sync::Arc::new(
                segment::create(&dir, id).map_err(StoreError::io(format!("cannot create segment {id}")))?,
            );
            state.segments.insert(id, file.clone());
            ActiveSegment { id, file, len: 0 }
        }
    };
    state.publish_gauges(metrics);
    tracing::info!(
        timelines = state.timelines.iter().count(),
        versions = state.index.len(),
        segments = state.segments.len(),
        disk_bytes = state.segments.total_bytes(),
        "store recovered"
    );
    Ok(Recovered {
        state,
        active,
        unverified,
    })
}

/// Logs and counts (`pageserver_corrupt_records`) what a scan of segment `id` skipped.
fn report_damage(id: u64, damage: Damage, metrics: &StoreMetrics) {
    match damage {
        Damage::Gap(gap) => {
            metrics.corrupt_records.inc();
            tracing::error!(
                segment = id,
                start = gap.start,
                end = gap.end,
                "damaged bytes in a segment; the records there are lost"
            );
        }
        Damage::BrokenBatch { start, end, records } => {
            metrics.corrupt_records.inc();
            tracing::error!(
                segment = id,
                start,
                end,
                records,
                "a batch without a matching commit trailer; its records are discarded"
            );
        }
    }
}

/// Verifies the segment stretches start-up took from the snapshot without reading them: damage is
/// logged and counted in `pageserver_corrupt_records` (reads check every page's CRC-32C anyway, so
/// this only finds it sooner). A segment compaction removed meanwhile is skipped.
pub fn scrub(dir: &Path, unverified: &[(u64, u64)], metrics: &StoreMetrics) {
    for &(id, len) in unverified {
        let buf = match segment::read_all(dir, id) {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::error!(segment = id, error = %e, "cannot read a segment to verify it");
                continue;
            }
        };
        let covered = &buf[..buf.len().min(len as usize)];
        let damaged = std::cell::Cell::new(0u64);
        let end = record::scan_batches(
            covered,
            0,
            |records| {
                for r in records {
                    if let Scanned::Page {
                        meta, damaged: true, ..
                    } = r.record
                    {
                        damaged.set(damaged.get() + 1);
                        tracing::error!(
                            segment = id,
                            offset = r.offset,
                            file = meta.file,
                            block = meta.block,
                            seq = meta.seq,
                            "page image fails its CRC-32C; reads of this version will fail"
                        );
                    }
                }
            },
            |damage| report_damage(id, damage, metrics),
        );
        if let ScanEnd::TornAt(at) = end {
            damaged.set(damaged.get() + 1);
            tracing::error!(
                segment = id,
                offset = at,
                "segment damaged from here to the end of what the snapshot covers"
            );
        }
        metrics.corrupt_records.inc_by(damaged.get());
    }
    tracing::info!(
        segments = unverified.len(),
        "segments covered by the index snapshot verified"
    );
}
