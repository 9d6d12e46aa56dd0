//! The writer side of a timeline (under its lock): applies every change and tracks group commit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ibd_api::walsync::{Checkpoint, CheckpointRecord, Geometry, GeometryRecord, TermResponse};

use super::State;
use crate::error::WalError;
use crate::metrics::{Metrics, ReasonLabel, SegmentStartLabel, TimelineLabel};
use crate::storage::checkpoints::CheckpointLog;
use crate::storage::wal::{SyncTarget, WalReader, WalStore};

/// Largest writer term a timeline grants (see `acquire_term`).
pub const MAX_TERM: u64 = i64::MAX as u64;

/// Bytes before the redo log's record area (header and two checkpoint blocks): a smaller log file
/// cannot be a MariaDB 10.8+ redo log.
const LOG_START_OFFSET: u64 = 12288;
const MAX_CREATOR_LEN: usize = 32;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) struct Writer {
    /// Holds `timeline.json`.
    dir: PathBuf,
    checkpoint_log: CheckpointLog,
    pub(super) wal: WalStore,
    reader: WalReader,
    /// A branch's WAL continues its parent's at this LSN.
    base_lsn: Option<u64>,
    state: Arc<RwLock<State>>,
    metrics: Metrics,
    label: TimelineLabel,
    /// An appender is in an fdatasync outside the lock; the others wait for it.
    pub(super) syncing: bool,
    /// Threads waiting for that fdatasync to end.
    pub(super) waiting: usize,
    /// Appends written since the last fdatasync started (the next one's batch).
    pub(super) unsynced_appends: usize,
}

impl Writer {
    pub(super) fn new(
        dir: &Path,
        checkpoint_log: CheckpointLog,
        wal: WalStore,
        base_lsn: Option<u64>,
        state: Arc<RwLock<State>>,
        metrics: &Metrics,
        label: TimelineLabel,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            checkpoint_log,
            reader: wal.reader(),
            wal,
            base_lsn,
            state,
            metrics: metrics.clone(),
            label,
            syncing: false,
            waiting: 0,
            unsynced_appends: 0,
        }
    }

    /// The durable end of the timeline's WAL (a branch without WAL of its own: its branch LSN).
    pub(super) fn durable(&self) -> Option<u64> {
        self.wal.synced_end().or(self.base_lsn)
    }

    pub(super) fn failure(&self) -> Option<String> {
        self.state.read().expect("state lock").failed.clone()
    }

    pub(super) fn count_rejected(&self, e: &WalError) {
        self.metrics
            .rejected_appends
            .get_or_create(&ReasonLabel { reason: e.code() })
            .inc();
    }

    /// The fdatasync to run next, if anything written is not durable, and the appends it makes
    /// durable. The caller runs it ([`SyncTarget::sync`], with or without the lock; never while
    /// another is in progress) and reports it with [`synced`](Self::synced).
    pub(super) fn sync_target(&mut self) -> Option<(SyncTarget, usize)> {
        let target = self.wal.sync_target()?;
        Some((target, std::mem::take(&mut self.unsynced_appends)))
    }

    /// Records an fdatasync of `target` that ended: its latency and batch, then, if it succeeded
    /// and the timeline has not failed meanwhile, the new durable LSN (published). A failed one
    /// fails the timeline. The one place syncs are accounted.
    pub(super) fn synced(
        &mut self,
        target: &SyncTarget,
        batch: usize,
        result: std::io::Result<()>,
        took: Duration,
    ) -> Result<(), WalError> {
        self.persist(result)?;
        self.metrics.fsync_latency.observe(took.as_secs_f64());
        self.metrics.fsync_batch_appends.observe(batch as f64);
        if let Some(failure) = self.failure() {
            return Err(WalError::Failed(failure));
        }
        self.wal.mark_synced(target.end);
        self.publish_durable();
        Ok(())
    }

    /// Makes everything written durable with the lock held (no fdatasync may be in progress).
    pub(super) fn sync_in_lock(&mut self) -> Result<(), WalError> {
        debug_assert!(!self.syncing, "an fdatasync is in progress");
        if let Some(failure) = self.failure() {
            return Err(WalError::Failed(failure));
        }
        let Some((target, batch)) = self.sync_target() else {
            return Ok(());
        };
        let (result, took) = target.sync();
        self.synced(&target, batch, result, took)
    }

    fn publish_durable(&self) {
        self.state.write().expect("state lock").durable_lsn = self.durable();
        self.publish_gauges();
    }

    /// Writes the part of `data` not yet stored, after checking the rest matches what is; returns
    /// the LSN the WAL must be durable up to for this append to be acknowledged.
    pub(super) fn write(&mut self, start_lsn: u64, data: &[u8]) -> Result<u64, WalError> {
        let end = self.write_unsynced(start_lsn, data)?;
        self.unsynced_appends += 1;
        Ok(end)
    }

    fn write_unsynced(&mut self, start_lsn: u64, data: &[u8]) -> Result<u64, WalError> {
        let data_end = start_lsn
            .checked_add(data.len() as u64)
            .filter(|_| !data.is_empty())
            .ok_or_else(|| WalError::BadRequest(format!("empty or overflowing append at LSN {start_lsn}")))?;
        let Some(end) = self.wal.end_lsn().or(self.base_lsn) else {
            return self.write_new(start_lsn, data).map(|()| data_end);
        };
        if start_lsn > end {
            return Err(WalError::Gap {
                start_lsn,
                end_lsn: end,
            });
        }
        if start_lsn == end {
            return self.write_new(start_lsn, data).map(|()| data_end);
        }
        // A resend of (a prefix of) stored bytes: accept only what matches them exactly.
        let own_start = self.reader.bounds().map_or(end, |(start, _)| start);
        if start_lsn < own_start {
            return Err(WalError::Removed {
                from: start_lsn,
                start: own_start,
            });
        }
        let overlap_end = data_end.min(end);
        let stored = self
            .reader
            .read(start_lsn, overlap_end)
            .map_err(|e| super::read_error(e, &self.label.timeline, &self.reader, &self.metrics))?;
        let sent = &data[..(overlap_end - start_lsn) as usize];
        if let Some(i) = stored.iter().zip(sent).position(|(a, b)| a != b) {
            return Err(WalError::OverlapMismatch {
                start_lsn,
                at_lsn: start_lsn + i as u64,
            });
        }
        if data_end <= end {
            return Ok(data_end);
        }
        self.write_new(end, &data[(end - start_lsn) as usize..])
            .map(|()| data_end)
    }

    fn write_new(&mut self, start_lsn: u64, data: &[u8]) -> Result<(), WalError> {
        if self.wal.needs_new_segment() {
            // The segment being sealed must be durable before anything lands in the next one
            // (the caller waited for any fdatasync in progress to end).
            self.sync_in_lock()?;
        }
        let started = self.wal.append(start_lsn, data).map_err(|e| self.fail(e))?;
        if let Some(started) = started {
            let label = SegmentStartLabel {
                start: started.label(),
            };
            self.metrics.segments_started.get_or_create(&label).inc();
        }
        self.metrics.appended_bytes.inc_by(data.len() as u64);
        Ok(())
    }

    /// Marks the timeline failed after an I/O error and passes the error on.
    pub(super) fn fail(&self, e: std::io::Error) -> WalError {
        tracing::error!(timeline = %self.label.timeline, error = %e, "WAL storage failed; refusing changes until restart");
        self.state.write().expect("state lock").failed = Some(e.to_string());
        WalError::Io(e)
    }

    /// Passes an I/O result on, failing the timeline on error.
    fn persist<T>(&self, result: std::io::Result<T>) -> Result<T, WalError> {
        result.map_err(|e| self.fail(e))
    }

    pub(super) fn acquire_term(&self, proposed: Option<u64>) -> Result<TermResponse, WalError> {
        let (mut header, durable_lsn) = {
            let state = self.state.read().expect("state lock");
            if let Some(failure) = &state.failed {
                return Err(WalError::Failed(failure.clone()));
            }
            (state.meta.header(), state.durable_lsn)
        };
        let current = header.term;
        // A term must leave room for a successor, or a client could wedge the timeline (or wrap
        // `current + 1` to 0 and let old writers back in) with u64::MAX.
        let term = match proposed {
            Some(given) if given > MAX_TERM => {
                return Err(WalError::BadRequest(format!(
                    "term {given} is above the largest allowed term {MAX_TERM}"
                )));
            }
            Some(given) if given <= current => return Err(WalError::StaleTerm { given, current }),
            Some(given) => given,
            None if current >= MAX_TERM => {
                return Err(WalError::BadRequest("this timeline has used up its terms".into()));
            }
            None => current + 1,
        };
        header.term = term;
        self.persist(header.store(&self.dir))?;
        self.state.write().expect("state lock").meta.term = term;
        tracing::info!(timeline = %self.label.timeline, term, ?durable_lsn, "granted term");
        // A writer is here: have the segment its WAL goes to ready as zeros.
        self.wal.prepare_spare();
        Ok(TermResponse { term, durable_lsn })
    }

    pub(super) fn set_geometry(&self, geometry: Geometry) -> Result<GeometryRecord, WalError> {
        if geometry.file_size <= LOG_START_OFFSET || geometry.creator.len() > MAX_CREATOR_LEN {
            return Err(WalError::BadRequest(format!(
                "invalid geometry: file_size must exceed {LOG_START_OFFSET} and creator be at most \
                 {MAX_CREATOR_LEN} bytes"
            )));
        }
        let (mut header, durable_lsn) = {
            let state = self.state.read().expect("state lock");
            (state.meta.header(), state.durable_lsn)
        };
        if let Some(latest) = header.latest_geometry() {
            if latest.geometry == geometry {
                return Ok(latest.clone());
            }
            if geometry.at_lsn < latest.geometry.at_lsn {
                return Err(WalError::BadRequest(format!(
                    "geometry at LSN {} is older than the latest one (at LSN {})",
                    geometry.at_lsn, latest.geometry.at_lsn
                )));
            }
        }
        let record = GeometryRecord {
            geometry,
            durable_lsn_at_arrival: durable_lsn,
            received_at_unix_ms: unix_ms(),
        };
        header.geometry.push(record.clone());
        self.persist(header.store(&self.dir))?;
        self.state.write().expect("state lock").meta.geometry = header.geometry;
        Ok(record)
    }

    pub(super) fn add_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<CheckpointRecord, WalError> {
        if checkpoint.end_lsn < checkpoint.checkpoint_lsn {
            return Err(WalError::BadRequest(format!(
                "checkpoint end_lsn {} is below checkpoint_lsn {}",
                checkpoint.end_lsn, checkpoint.checkpoint_lsn
            )));
        }
        let durable_lsn = {
            let state = self.state.read().expect("state lock");
            if let Some(latest) = state.meta.latest_checkpoint() {
                if latest.checkpoint == checkpoint {
                    return Ok(latest.clone());
                }
                if checkpoint.checkpoint_lsn < latest.checkpoint.checkpoint_lsn {
                    return Err(WalError::BadRequest(format!(
                        "checkpoint LSN {} is older than the latest checkpoint ({})",
                        checkpoint.checkpoint_lsn, latest.checkpoint.checkpoint_lsn
                    )));
                }
            }
            // InnoDB makes the FILE_CHECKPOINT mtr at end_lsn durable before it writes the block:
            // a checkpoint beyond the durable WAL is a writer's bug, and would misdirect retention.
            if state
                .durable_lsn
                .is_none_or(|durable| checkpoint.end_lsn > durable)
            {
                return Err(WalError::BadRequest(format!(
                    "checkpoint end_lsn {} is beyond the durable WAL (durable LSN {:?}): append the WAL first",
                    checkpoint.end_lsn, state.durable_lsn
                )));
            }
            state.durable_lsn
        };
        let record = CheckpointRecord {
            checkpoint,
            durable_lsn_at_arrival: durable_lsn,
            received_at_unix_ms: unix_ms(),
        };
        let appended = self.checkpoint_log.append(&record);
        self.persist(appended)?;
        let mut state = self.state.write().expect("state lock");
        state.meta.checkpoints.push(record.clone());
        drop(state);
        self.publish_gauges();
        Ok(record)
    }

    pub(super) fn remove_before(&mut self, lsn: u64) -> Result<u64, WalError> {
        let removed = self.wal.remove_before(lsn);
        let freed = self.persist(removed)?;
        if freed == 0 {
            return Ok(0);
        }
        self.metrics.removed_bytes.inc_by(freed);
        let start = self.reader.bounds().map_or(lsn, |(start, _)| start);
        tracing::info!(timeline = %self.label.timeline, freed, wal_start_lsn = start, "retention removed WAL");
        let mut pruned = self.state.read().expect("state lock").meta.clone();
        if pruned.prune_below(start) {
            let rewritten = self.checkpoint_log.rewrite(&pruned.checkpoints);
            self.persist(rewritten)?;
            self.persist(pruned.store(&self.dir))?;
            self.state.write().expect("state lock").meta = pruned;
        }
        self.publish_gauges();
        Ok(freed)
    }

    pub(super) fn publish_gauges(&self) {
        let state = self.state.read().expect("state lock");
        let durable = state.durable_lsn.unwrap_or(0);
        self.metrics
            .durable_lsn
            .get_or_create(&self.label)
            .set(durable as i64);
        let lag = state
            .meta
            .latest_checkpoint()
            .map_or(0, |c| durable.saturating_sub(c.checkpoint.checkpoint_lsn));
        self.metrics
            .checkpoint_lag_bytes
            .get_or_create(&self.label)
            .set(lag as i64);
        self.metrics
            .stored_bytes
            .get_or_create(&self.label)
            .set(self.reader.stored_bytes() as i64);
        self.metrics
            .corrupt_wal_bytes
            .get_or_create(&self.label)
            .set(self.reader.corrupt_bytes() as i64);
    }
}
