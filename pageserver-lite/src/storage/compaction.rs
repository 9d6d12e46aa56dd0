//! GC and compaction, run by the writer thread (so nothing else moves records meanwhile).
//!
//! GC drops page versions nobody can read any more. A version is kept if it is
//! - the newest of its page, unless its file is unlinked (the unlink then acts as its successor),
//! - needed by the retention window: its successor was written less than `retention` ago, so a
//!   read "as of" some moment inside the window may still return it,
//! - or the newest at or below some descendant timeline's branch point.
//!
//! Before dropping anything, GC makes each timeline's new GC horizon durable (see `GcHorizon`):
//! reads and branches that could need a dropped version are refused from then on, instead of
//! silently finding an older version or none.
//!
//! Compaction then rewrites each sealed segment whose live fraction fell below the threshold.
//! Live bytes are those of live page versions and of live metadata records (a term superseded
//! by a newer one is dead; timelines, namespace history and markers are kept forever), each with
//! its share of its batch's trailer. Live records are copied (byte for byte but for the batch
//! flag) as one batch to the active segment and synced, the index is pointed at the copies, an
//! index snapshot is written (so start-up never looks for the old segment), and only then is the
//! old segment deleted. A crash anywhere in between leaves either the old records or both
//! copies, and replay treats copies as the same version.
//!
//! Running on the writer thread keeps this simple and safe; the price is that uploads wait while
//! a segment is rewritten (at most one segment's live bytes per segment compacted).

use std::collections::HashMap;

use serde::Serialize;

use super::index::{Location, PageKey, PageVersion};
use super::record::{self, BatchEncoder, MetaKey, MetaRecord, Scanned};
use super::writer::{now_ms, Writer};
use super::{segment, StoreError};
use crate::timeline::GcHorizon;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MaintenanceReport {
    pub versions_dropped: u64,
    pub segments_compacted: u64,
    pub bytes_copied: u64,
    pub bytes_freed: u64,
}

/// Which of one page's versions (sorted by seq) GC keeps; `unlinked` is the (seq, time) of its
/// file's unlink, if any.
pub fn gc_decisions(
    versions: &[PageVersion],
    cutoff_ms: u64,
    branch_points: &[u64],
    unlinked: Option<(u64, u64)>,
) -> Vec<bool> {
    (0..versions.len())
        .map(|i| {
            let successor = versions.get(i + 1).map(|n| (n.seq, n.written_at_ms)).or(unlinked);
            let Some((next_seq, next_at_ms)) = successor else {
                return true;
            };
            let seq = versions[i].seq;
            next_at_ms > cutoff_ms || branch_points.iter().any(|&p| seq <= p && next_seq > p)
        })
        .collect()
}

impl Writer {
    pub(super) fn maintain(&mut self) -> Result<MaintenanceReport, StoreError> {
        let mut report = MaintenanceReport {
            versions_dropped: self.collect_garbage()?,
            ..Default::default()
        };
        let candidates: Vec<u64> = {
            let state = self.read_state();
            let mut c: Vec<(f64, u64)> = state
                .segments
                .iter()
                .filter(|&(id, s)| id != self.active.id && s.len > 0)
                .map(|(id, s)| (s.live_bytes as f64 / s.len as f64, id))
                .filter(|&(fraction, _)| fraction < self.config.compaction_threshold)
                .collect();
            c.sort_by(|a, b| a.0.total_cmp(&b.0));
            c.into_iter().map(|(_, id)| id).collect()
        };
        if candidates.is_empty() {
            return Ok(report);
        }
        let mut done = Vec::new();
        for id in candidates {
            // The active segment may have rolled onto a candidate's id range: never compact it.
            if id == self.active.id {
                continue;
            }
            let (copied, freed) = self.compact_segment(id)?;
            report.segments_compacted += 1;
            report.bytes_copied += copied;
            report.bytes_freed += freed;
            done.push(id);
        }
        // The snapshot must no longer name the old segments before they go. Readers that already
        // hold one keep reading it through their descriptor.
        {
            let mut state = self.write_state();
            for id in &done {
                state.segments.forget(*id);
            }
        }
        self.write_snapshot()?;
        let dir = self.config.segment_dir();
        for id in done {
            segment::remove_file(&dir, id).map_err(StoreError::io(format!("cannot remove segment {id}")))?;
        }
        self.metrics.compactions.inc_by(report.segments_compacted);
        self.metrics.compaction_bytes_copied.inc_by(report.bytes_copied);
        self.write_state().publish_gauges(&self.metrics);
        tracing::info!(?report, "compaction done");
        Ok(report)
    }

    /// Drops the versions nobody may read any more; returns how many. The GC horizon of every
    /// timeline concerned is made durable first, so that no read or branch below it is ever
    /// answered from what is left (even after a restart that finds the dropped records again).
    fn collect_garbage(&mut self) -> Result<u64, StoreError> {
        let cutoff = now_ms().saturating_sub(self.config.retention.as_millis() as u64);
        // Decided under the read lock: this is the writer, nothing changes the state meanwhile.
        let (decisions, horizons) = {
            let state = self.read_state();
            let timelines = &state.timelines;
            let points = timelines.branch_points();
            let mut unlinks: HashMap<(u32, u64), Option<(u64, u64)>> = HashMap::new();
            let mut decisions: Vec<(PageKey, Vec<bool>)> = Vec::new();
            let mut horizons: HashMap<u32, GcHorizon> = HashMap::new();
            for (key, versions) in state.index.pages() {
                // Without its whole ancestry (damage) nobody knows what a timeline needs: keep all.
                if !timelines.has_ancestry(key.timeline) {
                    continue;
                }
                let unlinked = *unlinks
                    .entry((key.timeline, key.file))
                    .or_insert_with(|| timelines.unlinked(key.timeline, key.file));
                let tl_points = points.get(&key.timeline).map_or(&[][..], Vec::as_slice);
                let keep = gc_decisions(versions, cutoff, tl_points, unlinked);
                if keep.iter().all(|&k| k) {
                    continue;
                }
                let horizon = horizons.entry(key.timeline).or_default();
                for i in (0..versions.len()).filter(|&i| !keep[i]) {
                    // A read returned version i only below its successor (see `GcHorizon`).
                    *horizon = horizon.max(match versions.get(i + 1) {
                        Some(next) => GcHorizon {
                            seq: next.seq,
                            lsn: next.lsn,
                        },
                        None => GcHorizon {
                            seq: unlinked.expect("only an unlink lets GC drop a newest version").0,
                            lsn: 0,
                        },
                    });
                }
                decisions.push((*key, keep));
            }
            let records: Vec<MetaRecord> = horizons
                .into_iter()
                .filter_map(|(num, h)| {
                    let current = timelines.get(num)?.gc_horizon;
                    let new = current.max(h);
                    (new != current).then_some(MetaRecord::GcHorizon {
                        timeline: num,
                        seq: new.seq,
                        lsn: new.lsn,
                    })
                })
                .collect();
            (decisions, records)
        };
        if decisions.is_empty() {
            return Ok(0);
        }
        if !horizons.is_empty() {
            self.commit_meta(&horizons)?;
        }
        let mut guard = self.write_state();
        let state = &mut *guard;
        let mut dropped: Vec<Location> = Vec::new();
        for (key, keep) in &decisions {
            state.index.drop_versions(key, keep, |v| dropped.push(v.location));
        }
        for at in &dropped {
            state.account(*at, false);
        }
        self.metrics.gc_versions_dropped.inc_by(dropped.len() as u64);
        state.publish_gauges(&self.metrics);
        drop(guard);
        self.dirty = true;
        Ok(dropped.len() as u64)
    }

    /// Copies what is live in segment `id` to the active segment; returns (bytes copied, bytes
    /// the segment held).
    fn compact_segment(&mut self, id: u64) -> Result<(u64, u64), StoreError> {
        let buf = segment::read_all(&self.config.segment_dir(), id)
            .map_err(StoreError::io(format!("cannot read segment {id} for compaction")))?;
        let mut out = Vec::new();
        // (page, seq, where it was, its index in the copy batch)
        let mut moved: Vec<(PageKey, u64, Location, usize)> = Vec::new();
        let mut moved_meta: Vec<(MetaKey, Location, usize)> = Vec::new();
        let copied = {
            let state = self.read_state();
            // The copies are one batch: a crash while writing them leaves the originals in charge.
            let mut batch = BatchEncoder::new(&mut out);
            let mut count = 0;
            record::scan_batches(
                &buf,
                0,
                |records| {
                    for r in records {
                        let bytes = &buf[r.offset as usize..(r.offset + u64::from(r.len)) as usize];
                        let from = Location {
                            segment: id,
                            offset: r.offset,
                            len: r.charged,
                        };
                        match r.record {
                            Scanned::Page { meta, .. } => {
                                let key = PageKey {
                                    timeline: meta.timeline,
                                    file: meta.file,
                                    block: meta.block,
                                };
                                if state.index.is_live(&key, meta.seq, from) {
                                    moved.push((key, meta.seq, from, count));
                                    batch.copy(bytes);
                                    count += 1;
                                }
                            }
                            Scanned::Meta(m) => {
                                let key = m.key();
                                if state.meta.is_live(&key, from) {
                                    moved_meta.push((key, from, count));
                                    batch.copy(bytes);
                                    count += 1;
                                }
                            }
                            Scanned::BadMeta { id: crc, .. } => {
                                let key = MetaKey::Unreadable(crc);
                                if state.meta.is_live(&key, from) {
                                    moved_meta.push((key, from, count));
                                    batch.copy(bytes);
                                    count += 1;
                                }
                            }
                            Scanned::Commit { .. } => unreachable!("scan_batches keeps trailers"),
                        }
                    }
                },
                |damage| tracing::error!(segment = id, ?damage, "compaction skips damaged records"),
            );
            batch.finish()
        };
        if !out.is_empty() {
            let (segment, base) = self.append(&out)?;
            let to = |i: usize| Location {
                segment,
                offset: base + copied[i].0,
                len: copied[i].1,
            };
            let mut state = self.write_state();
            for (key, seq, from, i) in moved {
                state.relocate(&key, seq, from, to(i));
            }
            for (key, from, i) in moved_meta {
                state.relocate_meta(&key, from, to(i));
            }
        }
        Ok((out.len() as u64, buf.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(seq: u64, written_at_ms: u64) -> PageVersion {
        PageVersion {
            seq,
            lsn: seq,
            crc32c: 0,
            image_len: 0,
            written_at_ms,
            location: Location {
                segment: 1,
                offset: 0,
                len: 1,
            },
            damaged: false,
        }
    }

    #[test]
    fn gc_keeps_newest_retention_and_branch_points() {
        let versions = [v(1, 10), v(3, 20), v(5, 30), v(7, 1000), v(9, 2000)];
        // Cutoff 500: 5 is kept because its successor (7) was written inside the window.
        assert_eq!(
            gc_decisions(&versions, 500, &[], None),
            vec![false, false, true, true, true]
        );
        // No retention at all: only the newest and what branch point 4 sees (seq 3).
        assert_eq!(
            gc_decisions(&versions, u64::MAX, &[4], None),
            vec![false, true, false, false, true]
        );
        assert_eq!(gc_decisions(&[v(1, 0)], u64::MAX, &[], None), vec![true]);
        // Unlinked at seq 11: even the newest goes once the unlink is out of the window, unless a
        // branch point before the unlink still sees it.
        assert_eq!(
            gc_decisions(&[v(9, 0)], u64::MAX, &[], Some((11, 50))),
            vec![false]
        );
        assert_eq!(gc_decisions(&[v(9, 0)], 10, &[], Some((11, 50))), vec![true]);
        assert_eq!(
            gc_decisions(&[v(9, 0)], u64::MAX, &[10], Some((11, 50))),
            vec![true]
        );
    }
}
