//! One timeline: its WAL store, its metadata, and the writer that serializes every change.
//!
//! All mutations (appends, terms, geometry, checkpoints, retention) take the timeline's writer
//! lock, so the checks "continues at the end" and "carries the current term" are made against the
//! state the change is applied to. They run on the caller's thread (each connection has its own):
//! no hand-off to another thread and back on the way of a commit. Appends are group-committed:
//! an appender writes its record under the lock, then either finds it already durable, waits for
//! the fdatasync in progress, or (if none is) leads one itself, outside the lock, covering every
//! record written so far; writers that arrive meanwhile join the next. Every fdatasync of the WAL
//! (a commit's, one before a metadata change, one sealing a segment) goes through
//! `Writer::sync_target` / `Writer::synced`, one at a time: a segment is sealed only once the
//! fdatasync in progress has ended, so one file never has two in flight. Reads do not take the
//! writer lock; they see the durable LSN and the segment index.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use ibd_api::walsync::{
    Checkpoint, CheckpointRecord, Geometry, GeometryRecord, RecoveryPlan, TermResponse, TimelineStatus,
    WalFrame,
};

use crate::error::WalError;
use crate::metrics::Metrics;
use crate::metrics::TimelineLabel;
use crate::storage::checkpoints::CheckpointLog;
use crate::storage::meta::TimelineMeta;
use crate::storage::wal::{CorruptWal, WalReader, WalStore};

mod writer;
use writer::Writer;

/// Largest range one read may ask for.
pub const MAX_READ_LEN: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct TimelineConfig {
    /// A new segment file is started once the current one reaches this size.
    pub segment_size: u64,
}

/// What readers see; written only under the writer lock.
#[derive(Debug)]
struct State {
    meta: TimelineMeta,
    durable_lsn: Option<u64>,
    /// Set after a failed write or fsync: the page cache can no longer be trusted, so the timeline
    /// refuses changes until restarted (restart re-reads what is really on disk).
    failed: Option<String>,
}

/// An append written by [`Timeline::write`], not yet known durable.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
#[must_use = "an append is acknowledged only once wait_durable returns"]
pub struct Written {
    /// The LSN up to which the WAL must be durable.
    pub end: u64,
    arrived: Instant,
}

/// The outcome of [`Timeline::append_batch`].
#[derive(Debug)]
pub struct BatchOutcome {
    /// How many frames, from the first, were accepted.
    pub accepted: usize,
    /// The durable LSN covering the accepted frames, or why they could not be made durable
    /// (`None` if none was accepted).
    pub durable: Option<Result<u64, WalError>>,
    /// Why the frame after the accepted ones was refused; the frames after it were not applied.
    pub refused: Option<WalError>,
}

pub struct Timeline {
    id: String,
    writer: Mutex<Writer>,
    /// Signalled whenever an fdatasync led outside the lock ends (or fails).
    synced: Condvar,
    state: Arc<RwLock<State>>,
    reader: WalReader,
    parent: Option<Arc<Timeline>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Timeline {
    /// Opens the timeline stored in `dir` (whose metadata file must exist).
    /// `parent` is the timeline its metadata names as parent, if any.
    pub fn open(
        dir: &Path,
        parent: Option<Arc<Timeline>>,
        config: &TimelineConfig,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, WalError> {
        let mut meta = TimelineMeta::load(dir)?;
        let (checkpoint_log, checkpoints, cut) = CheckpointLog::open(dir)?;
        meta.checkpoints = checkpoints;
        if cut > 0 {
            tracing::warn!(timeline = %meta.timeline_id, cut_bytes = cut, "truncated a torn checkpoint record");
        }
        let (wal, report) = WalStore::open(&dir.join("wal"), config.segment_size)?;
        let label = metrics.timeline(&meta.timeline_id);
        match report.torn_tail {
            Some((path, torn)) if torn.synced_to.is_some() => {
                tracing::error!(
                    timeline = %meta.timeline_id,
                    segment = %path.display(),
                    offset = torn.offset,
                    cut_bytes = torn.written_len - torn.offset,
                    reason = torn.reason,
                    synced_to = torn.synced_to,
                    "WAL recorded as synced is missing from the end of the last segment (the file is \
                     shorter than that WAL, or zeros where it should be): the durable LSN goes back to what \
                     is there"
                );
                metrics.corrupt_wal_found.inc();
            }
            Some((path, torn)) => {
                tracing::warn!(
                    timeline = %meta.timeline_id,
                    segment = %path.display(),
                    offset = torn.offset,
                    cut_bytes = torn.written_len - torn.offset,
                    reason = torn.reason,
                    synced_lsn = report.watermark,
                    "truncated torn WAL tail (past the synced watermark: never acknowledged)"
                );
                metrics.torn_tails_truncated.inc();
            }
            None => {}
        }
        for (path, corrupt) in &report.corrupt {
            tracing::error!(
                timeline = %meta.timeline_id,
                segment = %path.display(),
                offset = corrupt.offset,
                bytes = corrupt.end_offset - corrupt.offset,
                from_lsn = corrupt.from_lsn,
                to_lsn = corrupt.to_lsn,
                reason = corrupt.reason,
                "corrupt WAL (valid records follow it, or it was synced, so not a torn write): kept \
                 on disk, refused to readers; the rest of the timeline stays available"
            );
            metrics.corrupt_wal_found.inc();
        }
        let base_lsn = meta.parent.as_ref().map(|p| p.lsn);
        let durable_lsn = wal.synced_end().or(base_lsn);
        let reader = wal.reader();
        let id = meta.timeline_id.clone();
        let state = Arc::new(RwLock::new(State {
            meta,
            durable_lsn,
            failed: None,
        }));
        let writer = Writer::new(dir, checkpoint_log, wal, base_lsn, state.clone(), metrics, label);
        writer.publish_gauges();
        Ok(Arc::new(Self {
            id,
            writer: Mutex::new(writer),
            synced: Condvar::new(),
            state,
            reader,
            parent,
            metrics: metrics.clone(),
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock leaves no half-applied change worse than a failed write,
        // which the failed state already covers.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer lock, once every record written so far is durable: metadata changes see (and
    /// record) a durable LSN that includes every earlier append.
    fn lock_synced(&self) -> Result<MutexGuard<'_, Writer>, WalError> {
        let mut w = self.lock();
        while w.syncing {
            w = self.wait_for_sync(w);
        }
        w.sync_in_lock()?;
        Ok(w)
    }

    /// Appends and waits until the bytes are durable; returns the durable LSN. Blocking.
    pub fn append(&self, term: u64, start_lsn: u64, data: &[u8]) -> Result<u64, WalError> {
        let arrived = Instant::now();
        let (w, written) = self.write_locked(self.lock(), term, start_lsn, data);
        let durable = self.commit(w, written?)?;
        self.count_acked(1, arrived);
        Ok(durable)
    }

    /// The first half of [`append`](Self::append): writes the bytes (not durable yet) and returns
    /// what to pass to [`wait_durable`](Self::wait_durable), so tests can stage concurrent
    /// appends.
    #[cfg(test)]
    pub fn write(&self, term: u64, start_lsn: u64, data: &[u8]) -> Result<Written, WalError> {
        let arrived = Instant::now();
        let end = self.write_locked(self.lock(), term, start_lsn, data).1?;
        Ok(Written { end, arrived })
    }

    /// Checks and writes one append; returns the lock and the LSN the append needs durable.
    fn write_locked<'a>(
        &'a self,
        mut w: MutexGuard<'a, Writer>,
        term: u64,
        start_lsn: u64,
        data: &[u8],
    ) -> (MutexGuard<'a, Writer>, Result<u64, WalError>) {
        // Sealing a segment syncs it: never while an fdatasync of it is in progress.
        while w.syncing && w.wal.needs_new_segment() {
            w = self.wait_for_sync(w);
        }
        let written = self.check_term(term).and_then(|()| {
            let (start, rest) = self.compare_below_branch(start_lsn, data)?;
            if rest.is_empty() && !data.is_empty() {
                // Wholly the parent's WAL, which is durable.
                return Ok(start);
            }
            w.write(start, rest)
        });
        let written = written.inspect_err(|e| w.count_rejected(e));
        (w, written)
    }

    /// A branch's resend may start below its branch LSN, in WAL it shares with its parent: that
    /// part must match the parent's bytes (which never change, so no lock is needed to compare);
    /// returns where the rest starts, and the rest.
    fn compare_below_branch<'a>(&self, start_lsn: u64, data: &'a [u8]) -> Result<(u64, &'a [u8]), WalError> {
        let branch = self.with_meta(|m| m.parent.as_ref().map(|p| p.lsn));
        let (Some(parent), Some(branch)) = (&self.parent, branch) else {
            return Ok((start_lsn, data));
        };
        if start_lsn >= branch || data.is_empty() {
            return Ok((start_lsn, data));
        }
        let shared_end = start_lsn.saturating_add(data.len() as u64).min(branch);
        let stored = parent.read(start_lsn, shared_end)?;
        let sent = &data[..(shared_end - start_lsn) as usize];
        if let Some(i) = stored.iter().zip(sent).position(|(a, b)| a != b) {
            return Err(WalError::OverlapMismatch {
                start_lsn,
                at_lsn: start_lsn + i as u64,
            });
        }
        Ok((shared_end, &data[sent.len()..]))
    }

    /// Waits until a [`write`](Self::write) is durable; returns the durable LSN. Blocking.
    #[cfg(test)]
    pub fn wait_durable(&self, written: Written) -> Result<u64, WalError> {
        let durable = self.commit(self.lock(), written.end)?;
        self.count_acked(1, written.arrived);
        Ok(durable)
    }

    /// Applies `frames` in order until one is refused, then makes the accepted ones durable with
    /// one group commit. Blocking.
    pub fn append_batch(&self, term: u64, frames: &[WalFrame]) -> BatchOutcome {
        let arrived = Instant::now();
        let mut w = self.lock();
        let mut upto = None;
        let mut accepted = 0;
        let mut refused = None;
        for frame in frames {
            let written;
            (w, written) = self.write_locked(w, term, frame.start_lsn, &frame.data);
            match written {
                Ok(end) => {
                    upto = upto.max(Some(end));
                    accepted += 1;
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let durable = upto.map(|upto| self.commit(w, upto));
        if let Some(Ok(_)) = durable {
            self.count_acked(accepted, arrived);
        }
        BatchOutcome {
            accepted,
            durable,
            refused,
        }
    }

    /// Returns once the WAL is durable up to `upto` (written by the caller under this lock).
    fn commit<'a>(&'a self, mut w: MutexGuard<'a, Writer>, upto: u64) -> Result<u64, WalError> {
        loop {
            // Failure first: after a failed fdatasync nothing is acknowledged, whatever the
            // durable LSN says.
            if let Some(failure) = w.failure() {
                return Err(WalError::Failed(failure));
            }
            if let Some(durable) = w.durable().filter(|d| *d >= upto) {
                return Ok(durable);
            }
            if w.syncing {
                w = self.wait_for_sync(w);
                continue;
            }
            // Lead an fdatasync of everything written so far, outside the lock, so the next
            // writers can add their records meanwhile (they form the next batch).
            let Some((target, batch)) = w.sync_target() else {
                // Written, yet not durable, and nothing to sync: cannot happen; never ack it.
                return Err(WalError::Failed(format!(
                    "LSN {upto} was written but there is nothing to sync"
                )));
            };
            w.syncing = true;
            drop(w);
            let (synced, took) = target.sync();
            w = self.lock();
            w.syncing = false;
            // An error is the timeline's failure, which the next round reports.
            let _ = w.synced(&target, batch, synced, took);
            // A lone writer (the common case) skips the wake-up system call.
            if w.waiting > 0 {
                self.synced.notify_all();
            }
        }
    }

    /// Waits for the fdatasync in progress to end.
    fn wait_for_sync<'a>(&'a self, mut w: MutexGuard<'a, Writer>) -> MutexGuard<'a, Writer> {
        w.waiting += 1;
        let mut w = self.synced.wait(w).unwrap_or_else(|e| e.into_inner());
        w.waiting -= 1;
        w
    }

    fn count_acked(&self, appends: usize, arrived: Instant) {
        self.metrics.appends.inc_by(appends as u64);
        let latency = arrived.elapsed().as_secs_f64();
        for _ in 0..appends {
            self.metrics.append_latency.observe(latency);
        }
    }

    /// Grants a term (see the API docs); every append written before it is durable first. Blocking.
    pub fn acquire_term(&self, proposed: Option<u64>) -> Result<TermResponse, WalError> {
        self.lock_synced()?.acquire_term(proposed)
    }

    /// Blocking.
    pub fn set_geometry(&self, term: u64, geometry: Geometry) -> Result<GeometryRecord, WalError> {
        let w = self.lock_synced()?;
        self.check_term(term)?;
        w.set_geometry(geometry)
    }

    /// Blocking.
    pub fn add_checkpoint(&self, term: u64, checkpoint: Checkpoint) -> Result<CheckpointRecord, WalError> {
        let mut w = self.lock_synced()?;
        self.check_term(term)?;
        w.add_checkpoint(checkpoint)
    }

    /// Removes whole segments below `lsn`; returns the bytes freed. Blocking.
    pub fn remove_before(&self, lsn: u64) -> Result<u64, WalError> {
        self.lock().remove_before(lsn)
    }

    /// Successful WAL fdatasyncs of this timeline since it was opened.
    pub fn wal_syncs(&self) -> u64 {
        self.lock().wal.syncs()
    }

    pub fn status(&self) -> TimelineStatus {
        let state = self.state.read().expect("state lock");
        TimelineStatus {
            timeline_id: self.id.clone(),
            parent: state.meta.parent.clone(),
            term: state.meta.term,
            wal_start_lsn: self.own_start(&state.meta),
            durable_lsn: state.durable_lsn,
            geometry: state.meta.latest_geometry().cloned(),
            latest_checkpoint: state.meta.latest_checkpoint().cloned(),
        }
    }

    /// Whether `term` may write now: only the current term may, and only while the timeline is
    /// healthy. The writer checks again, under its lock, when it applies each change.
    pub fn check_term(&self, given: u64) -> Result<(), WalError> {
        let state = self.state.read().expect("state lock");
        if let Some(failure) = &state.failed {
            return Err(WalError::Failed(failure.clone()));
        }
        let current = state.meta.term;
        if given < current {
            return Err(WalError::StaleTerm { given, current });
        }
        if given > current || given == 0 {
            return Err(WalError::UnknownTerm { given, current });
        }
        Ok(())
    }

    pub fn parent_id(&self) -> Option<String> {
        self.parent.as_ref().map(|p| p.id.clone())
    }

    /// Runs `f` on the current metadata (without copying the checkpoint history).
    pub fn with_meta<T>(&self, f: impl FnOnce(&TimelineMeta) -> T) -> T {
        f(&self.state.read().expect("state lock").meta)
    }

    pub fn durable_lsn(&self) -> Option<u64> {
        self.state.read().expect("state lock").durable_lsn
    }

    /// The lowest LSN this timeline can serve reads from, through its ancestors.
    pub fn readable_start(&self) -> Option<u64> {
        let (branch, own) = {
            let state = self.state.read().expect("state lock");
            (
                state.meta.parent.as_ref().map(|p| p.lsn),
                self.own_start(&state.meta),
            )
        };
        let own = own?;
        match (&self.parent, branch) {
            // A branch reads below its branch LSN from its parent, if it kept its own WAL from there.
            (Some(parent), Some(branch)) if branch == own => {
                Some(parent.readable_start().map_or(own, |p| p.min(own)))
            }
            _ => Some(own),
        }
    }

    /// What a branch at `lsn` starts with (the geometry and checkpoint in force there), after
    /// checking it can be served: `lsn` is durable here, and the WAL it recovers from (from that
    /// checkpoint, else from `lsn`) is still stored. Retention must not run between this check and
    /// the branch being registered (`Timelines` serializes them).
    pub fn branch_point(
        &self,
        lsn: u64,
    ) -> Result<(Option<GeometryRecord>, Option<CheckpointRecord>), WalError> {
        let durable = self.durable_lsn();
        if durable.is_none_or(|d| lsn > d) {
            return Err(WalError::BadRequest(format!(
                "branch LSN {lsn} is beyond the durable LSN {durable:?} of {}: a branch starts \
                 from durable WAL",
                self.id
            )));
        }
        let (geometry, checkpoint) =
            self.with_meta(|m| (m.geometry_at(lsn).cloned(), m.checkpoint_for(lsn).cloned()));
        let needed_from = checkpoint.as_ref().map_or(lsn, |c| c.checkpoint.checkpoint_lsn);
        self.check_servable(needed_from, lsn, |start| WalError::BranchBelowWal {
            lsn,
            needed_from,
            start,
        })?;
        Ok((geometry, checkpoint))
    }

    /// Checks WAL `[from, to)` can be read: still stored from `from` on (else the error `missing`
    /// makes from the readable start, or `to` if nothing is readable), and not known corrupt.
    fn check_servable(
        &self,
        from: u64,
        to: u64,
        missing: impl FnOnce(u64) -> WalError,
    ) -> Result<(), WalError> {
        match self.readable_start() {
            Some(start) if start <= from => self.check_not_corrupt(from, to),
            start => Err(missing(start.unwrap_or(to))),
        }
    }

    /// Refuses a range overlapping WAL known corrupt, here or (below the branch LSN) in an
    /// ancestor.
    fn check_not_corrupt(&self, from: u64, to: u64) -> Result<(), WalError> {
        if let Some((a, b)) = self.reader.corrupt_in(from, to) {
            return Err(WalError::Corrupt(format!(
                "WAL [{a}, {b}) of timeline {} is corrupt on disk",
                self.id
            )));
        }
        let branch = self.with_meta(|m| m.parent.as_ref().map(|p| p.lsn));
        match (&self.parent, branch) {
            (Some(parent), Some(branch)) if from < branch => parent.check_not_corrupt(from, to.min(branch)),
            _ => Ok(()),
        }
    }

    /// First LSN of this timeline's own WAL: its oldest segment, else its branch point.
    fn own_start(&self, meta: &TimelineMeta) -> Option<u64> {
        self.reader
            .bounds()
            .map(|(start, _)| start)
            .or(meta.parent.as_ref().map(|p| p.lsn))
    }

    /// Reads durable WAL `[from, to)`; a branch reads below its branch point from its parent.
    /// Blocking (file I/O).
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<u8>, WalError> {
        if from > to || to - from > MAX_READ_LEN {
            return Err(WalError::BadRequest(format!(
                "invalid range [{from}, {to}): need from <= to and at most {MAX_READ_LEN} bytes"
            )));
        }
        let (durable, branch, own_start) = {
            let state = self.state.read().expect("state lock");
            let branch = state.meta.parent.as_ref().map(|p| p.lsn);
            (state.durable_lsn, branch, self.own_start(&state.meta))
        };
        if from == to {
            return Ok(Vec::new());
        }
        let (Some(durable), Some(own_start)) = (durable, own_start) else {
            return Err(WalError::NotDurable { from, to, durable: 0 });
        };
        if to > durable {
            return Err(WalError::NotDurable { from, to, durable });
        }
        let mut out = Vec::with_capacity((to - from) as usize);
        if from < own_start {
            match (&self.parent, branch) {
                (Some(parent), Some(branch)) if branch == own_start => {
                    out = parent.read(from, to.min(branch))?;
                }
                _ => {
                    return Err(WalError::Removed {
                        from,
                        start: own_start,
                    })
                }
            }
        }
        let own_from = from.max(own_start);
        if own_from < to {
            let bytes = self.reader.read(own_from, to).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => WalError::Removed {
                    from,
                    start: self.reader.bounds().map_or(own_start, |b| b.0),
                },
                _ => read_error(e, &self.id, &self.reader, &self.metrics),
            })?;
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// What a fresh node needs to recover to `lsn` (default: the durable LSN).
    pub fn recovery_plan(&self, lsn: Option<u64>) -> Result<RecoveryPlan, WalError> {
        let plan = {
            let state = self.state.read().expect("state lock");
            let durable = state.durable_lsn.unwrap_or(0);
            let target = lsn.unwrap_or(durable);
            if target > durable || state.durable_lsn.is_none() {
                return Err(WalError::NotDurable {
                    from: target,
                    to: target,
                    durable,
                });
            }
            let geometry = state.meta.geometry_at(target).ok_or_else(|| {
                WalError::NoRecoveryPoint(format!("no log geometry recorded at or below LSN {target}"))
            })?;
            let checkpoint = state.meta.checkpoint_for(target).ok_or_else(|| {
                WalError::NoRecoveryPoint(format!(
                    "no checkpoint recorded that recovery to LSN {target} can start from"
                ))
            })?;
            RecoveryPlan {
                timeline_id: self.id.clone(),
                geometry: geometry.geometry.clone(),
                checkpoint: checkpoint.checkpoint,
                wal_from: checkpoint.checkpoint.checkpoint_lsn,
                wal_to: target,
            }
        };
        // A plan is only worth giving if its WAL can be read: retention (or a writer that began
        // appending after the checkpoint it reported) may have left it incomplete.
        self.check_servable(plan.wal_from, plan.wal_to, |start| WalError::RecoveryWalMissing {
            target: plan.wal_to,
            from: plan.wal_from,
            start,
        })?;
        Ok(plan)
    }
}

/// A failed read of stored WAL: corrupt bytes (known since start, or failing their check now) are
/// `wal_corrupt`, reported loudly when first found (the read that finds them records them, so
/// later reads are refused without reading them again); anything else is a storage error.
fn read_error(e: std::io::Error, timeline: &str, reader: &WalReader, metrics: &Metrics) -> WalError {
    if e.kind() != std::io::ErrorKind::InvalidData {
        return WalError::Io(e);
    }
    let corrupt = e.get_ref().and_then(|inner| inner.downcast_ref::<CorruptWal>());
    if corrupt.is_none_or(|c| c.newly_found) {
        let detail = corrupt.and_then(|c| c.detail.as_deref()).unwrap_or_default();
        tracing::error!(timeline, error = %e, detail, "stored WAL failed its check on read; refused from now on");
        metrics.corrupt_wal_found.inc();
        let label = TimelineLabel {
            timeline: timeline.to_string(),
        };
        metrics
            .corrupt_wal_bytes
            .get_or_create(&label)
            .set(reader.corrupt_bytes() as i64);
    }
    WalError::Corrupt(format!("cannot serve WAL of timeline {timeline}: {e}"))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prometheus_client::registry::Registry;

    use super::*;

    /// Creates timeline "t" in `dir` with segments of `segment_size` bytes.
    fn create(dir: &Path, segment_size: u64) -> (Arc<Timeline>, Registry) {
        TimelineMeta::new("t", None).store(dir).unwrap();
        CheckpointLog::create(dir, &[]).unwrap();
        open_existing(dir, segment_size)
    }

    fn open_existing(dir: &Path, segment_size: u64) -> (Arc<Timeline>, Registry) {
        let mut registry = Registry::with_prefix("walsync");
        let metrics = Metrics::register(&mut registry);
        let config = TimelineConfig { segment_size };
        (Timeline::open(dir, None, &config, &metrics).unwrap(), registry)
    }

    fn open(dir: &Path) -> (Arc<Timeline>, Registry) {
        create(dir, 1 << 20)
    }

    /// Opens an existing timeline again, as a restart does.
    fn open_again(dir: &Path) -> (Arc<Timeline>, Registry) {
        open_existing(dir, 1 << 20)
    }

    fn segment_files(dir: &Path) -> usize {
        let wal = std::fs::read_dir(dir.join("wal")).unwrap();
        wal.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
            .count()
    }

    fn metric(registry: &Registry, name: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        crate::metrics::sample(&text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }

    #[test]
    fn a_segment_is_sealed_only_after_the_fdatasync_in_progress_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (tl, registry) = create(dir.path(), 100);
        let term = tl.acquire_term(None).unwrap().term;
        // The first fdatasync blocks until released, once it has said it started.
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(Some(released));
        let hook = move || {
            if let Some(released) = released.lock().unwrap().take() {
                started_tx.send(()).unwrap();
                released.recv().unwrap();
            }
        };
        tl.lock().wal.set_sync_hook(Arc::new(hook));

        // A full segment, whose commit leads an fdatasync (held in progress)...
        let first = tl.write(term, 0, &[1; 100]).unwrap();
        std::thread::scope(|s| {
            let leader = s.spawn(|| tl.wait_durable(first));
            started.recv().unwrap();
            // ...while the next append needs a new segment, so the full one synced: it must wait
            // for the fdatasync in progress, not run a second one of the same file beside it.
            let roller = s.spawn(|| tl.append(term, 100, &[2; 50]));
            while tl.lock().waiting == 0 && !roller.is_finished() {
                std::thread::yield_now();
            }
            release.send(()).unwrap();
            assert_eq!(leader.join().unwrap().unwrap(), 100);
            assert_eq!(roller.join().unwrap().unwrap(), 150);
        });
        assert_eq!(segment_files(dir.path()), 2);
        assert_eq!(tl.durable_lsn(), Some(150));
        // Every fdatasync, the ones sealing segments included, is observed, and every append
        // counted in exactly one.
        tl.append(term, 150, &[3; 100]).unwrap();
        tl.append(term, 250, &[4; 10]).unwrap();
        let syncs = tl.wal_syncs();
        assert!(syncs >= 3, "{syncs}");
        assert_eq!(
            metric(&registry, "walsync_fsync_latency_seconds_count"),
            syncs as f64
        );
        assert_eq!(metric(&registry, "walsync_fsync_batch_appends_sum"), 4.0);
    }

    #[test]
    fn a_record_failing_its_crc_on_read_is_reported_once_and_refused_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let (tl, registry) = open(dir.path());
        let term = tl.acquire_term(None).unwrap().term;
        for lsn in (1000..4000).step_by(1000) {
            tl.append(term, lsn, &[lsn as u8; 1000]).unwrap();
        }
        // The middle record rots after walsync started.
        let segment = dir
            .path()
            .join("wal")
            .join(crate::storage::segment::file_name(1000));
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[1016 + 16 + 7] ^= 1;
        std::fs::write(&segment, bytes).unwrap();
        for _ in 0..3 {
            let err = tl.read(2500, 2600).unwrap_err();
            assert_eq!((err.code(), err.http_status()), ("wal_corrupt", 500));
        }
        assert_eq!(metric(&registry, "walsync_corrupt_wal_found_total"), 1.0);
        assert_eq!(
            metric(&registry, "walsync_corrupt_wal_bytes{timeline=\"t\"}"),
            1000.0
        );
        // Also refused to a read that would not have read the bad record itself any more.
        assert_eq!(tl.read(1999, 2001).unwrap_err().code(), "wal_corrupt");
        assert_eq!(tl.read(1000, 2000).unwrap(), vec![232; 1000]);
        assert_eq!(tl.read(3000, 4000).unwrap(), vec![184; 1000]);
        assert_eq!(metric(&registry, "walsync_corrupt_wal_found_total"), 1.0);
    }

    #[test]
    fn a_batch_is_one_fsync_and_concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (tl, registry) = open(dir.path());
        let term = tl.acquire_term(None).unwrap().term;
        let frames: Vec<WalFrame> = (0..64u64)
            .map(|i| WalFrame {
                start_lsn: 1000 + i * 100,
                data: Bytes::from(vec![i as u8; 100]),
            })
            .collect();
        let outcome = tl.append_batch(term, &frames);
        assert_eq!(outcome.accepted, 64);
        assert!(outcome.refused.is_none());
        assert_eq!(outcome.durable.unwrap().unwrap(), 1000 + 64 * 100);
        // Exactly one: more would be no group commit, none would be no durability.
        assert_eq!(tl.wal_syncs(), 1);
        assert_eq!(metric(&registry, "walsync_fsync_latency_seconds_count"), 1.0);
        assert_eq!(metric(&registry, "walsync_appends_total"), 64.0);
        assert_eq!(
            tl.read(1000, 1000 + 64 * 100).unwrap(),
            frames.iter().flat_map(|f| f.data.to_vec()).collect::<Vec<u8>>()
        );

        // Eight threads appending to one timeline, in LSN order, each waiting for its own ack:
        // appends written during an fdatasync share the next one.
        let start = 1000 + 64 * 100u64;
        let next = Mutex::new(start);
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let (tl, next) = (&tl, &next);
                s.spawn(move || {
                    for _ in 0..25 {
                        let written = {
                            let mut lsn = next.lock().unwrap();
                            let written = tl.write(term, *lsn, &[t; 50]).unwrap();
                            *lsn += 50;
                            written
                        };
                        let durable = tl.wait_durable(written).unwrap();
                        assert!(durable >= written.end);
                    }
                });
            }
        });
        let syncs = tl.wal_syncs() - 1;
        assert!(
            (1..200).contains(&syncs),
            "{syncs} fdatasyncs for 200 concurrent appends: expected at least one and some sharing"
        );
        assert_eq!(tl.durable_lsn(), Some(start + 200 * 50));
        assert_eq!(metric(&registry, "walsync_appends_total"), 264.0);
    }

    #[test]
    fn a_batch_stops_at_the_first_refused_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (tl, _registry) = open(dir.path());
        let term = tl.acquire_term(None).unwrap().term;
        let frame = |start_lsn, data: &'static [u8]| WalFrame {
            start_lsn,
            data: Bytes::from_static(data),
        };
        // The third frame leaves a gap; the fourth would continue the second, but is not applied.
        let outcome = tl.append_batch(
            term,
            &[frame(0, b"ab"), frame(2, b"cd"), frame(9, b"x"), frame(4, b"ef")],
        );
        assert_eq!(outcome.accepted, 2);
        assert_eq!(outcome.durable.unwrap().unwrap(), 4);
        assert!(matches!(outcome.refused, Some(WalError::Gap { .. })));
        assert_eq!(tl.durable_lsn(), Some(4));
    }

    #[test]
    fn corrupt_wal_is_refused_to_reads_and_branches_but_the_rest_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let (tl, _registry) = open(dir.path());
        let term = tl.acquire_term(None).unwrap().term;
        for lsn in (1000..5000).step_by(1000) {
            tl.append(term, lsn, &[lsn as u8; 1000]).unwrap();
            if lsn == 1000 {
                let checkpoint = Checkpoint {
                    checkpoint_lsn: 1500,
                    end_lsn: 1600,
                };
                tl.add_checkpoint(term, checkpoint).unwrap();
            }
        }
        drop(tl);
        let segment = dir
            .path()
            .join("wal")
            .join(crate::storage::segment::file_name(1000));
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[1016 + 16 + 1] ^= 1; // in [2000, 3000)
        std::fs::write(&segment, bytes).unwrap();

        let (tl, registry) = open_again(dir.path());
        assert_eq!(tl.durable_lsn(), Some(5000));
        assert_eq!(metric(&registry, "walsync_corrupt_wal_found_total"), 1.0);
        let err = tl.read(2500, 2600).unwrap_err();
        assert_eq!((err.code(), err.http_status()), ("wal_corrupt", 500));
        assert_eq!(tl.read(3000, 5000).unwrap().len(), 2000);
        // A branch at 4000 recovers from 1500, through the corrupt range; one at 2000 does not.
        let err = tl.branch_point(4000).unwrap_err();
        assert_eq!(err.code(), "wal_corrupt");
        let (_, checkpoint) = tl.branch_point(2000).unwrap();
        assert_eq!(checkpoint.unwrap().checkpoint.checkpoint_lsn, 1500);
    }

    #[test]
    fn a_recovery_plan_needs_its_wal_from_the_checkpoint_on() {
        let dir = tempfile::tempdir().unwrap();
        let (tl, _registry) = open(dir.path());
        let term = tl.acquire_term(None).unwrap().term;
        let geometry = Geometry {
            first_lsn: 12288,
            file_size: 1 << 20,
            creator: "MariaDB 10.11.19".into(),
            at_lsn: 12288,
        };
        tl.set_geometry(term, geometry).unwrap();
        // The writer's first append starts after the checkpoint it reports: WAL [15000, 20000)
        // was never here.
        tl.append(term, 20_000, &[1; 1000]).unwrap();
        let checkpoint = Checkpoint {
            checkpoint_lsn: 15_000,
            end_lsn: 20_100,
        };
        tl.add_checkpoint(term, checkpoint).unwrap();
        tl.append(term, 21_000, &[2; 1000]).unwrap();
        let err = tl.recovery_plan(None).unwrap_err();
        assert_eq!((err.code(), err.http_status()), ("wal_removed", 410), "{err}");
        assert!(
            matches!(
                err,
                WalError::RecoveryWalMissing {
                    from: 15_000,
                    start: 20_000,
                    ..
                }
            ),
            "{err}"
        );

        // A later checkpoint with its WAL here gives a plan; an earlier target, which recovers
        // from the first checkpoint, is still refused.
        let checkpoint = Checkpoint {
            checkpoint_lsn: 20_500,
            end_lsn: 21_100,
        };
        tl.add_checkpoint(term, checkpoint).unwrap();
        tl.append(term, 22_000, &[3; 1000]).unwrap();
        let plan = tl.recovery_plan(None).unwrap();
        assert_eq!((plan.wal_from, plan.wal_to), (20_500, 23_000));
        tl.read(plan.wal_from, plan.wal_to).unwrap();
        let err = tl.recovery_plan(Some(21_500)).unwrap_err();
        assert_eq!(err.code(), "wal_removed");
    }

    #[test]
    fn a_resend_compares_what_overlaps_and_appends_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments, so resends span records and segments.
        let (tl, _registry) = create(dir.path(), 100);
        let term = tl.acquire_term(None).unwrap().term;
        let byte = |lsn: u64| (lsn * 7 % 251) as u8;
        let bytes = |from: u64, to: u64| (from..to).map(byte).collect::<Vec<u8>>();
        for lsn in (0..300).step_by(60) {
            tl.append(term, lsn, &bytes(lsn, lsn + 60)).unwrap();
        }
        assert!(segment_files(dir.path()) > 2);

        // Overlaps the last 250 stored bytes (five records, three segments), extends by 70.
        assert_eq!(tl.append(term, 50, &bytes(50, 370)).unwrap(), 370);
        // Starts inside a record, ends inside another: nothing new.
        assert_eq!(tl.append(term, 75, &bytes(75, 130)).unwrap(), 370);
        assert_eq!(tl.read(0, 370).unwrap(), bytes(0, 370));

        // A difference in the overlapping part refuses the whole resend, extension included.
        let mut wrong = bytes(200, 420);
        wrong[100] ^= 1;
        let err = tl.append(term, 200, &wrong).unwrap_err();
        assert!(
            matches!(
                err,
                WalError::OverlapMismatch {
                    start_lsn: 200,
                    at_lsn: 300
                }
            ),
            "{err}"
        );
        assert_eq!(tl.durable_lsn(), Some(370));
        // A resend differing only in bytes past the end is new WAL, not a conflict.
        let mut longer = bytes(360, 400);
        longer[20] ^= 1;
        assert_eq!(tl.append(term, 360, &longer).unwrap(), 400);
        assert_eq!(tl.read(360, 400).unwrap(), longer);
    }

    #[test]
    fn a_new_term_fences_appends_of_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (tl, _registry) = open(dir.path());
        let old = tl.acquire_term(None).unwrap().term;
        // Written before the grant, acknowledged after it: the grant made it durable first.
        let before = tl.write(old, 0, b"a").unwrap();
        let new = tl.acquire_term(None).unwrap();
        assert_eq!(
            new.durable_lsn,
            Some(1),
            "the grant answers after earlier appends are durable"
        );
        assert_eq!(tl.wait_durable(before).unwrap(), 1);
        assert!(matches!(tl.append(old, 1, b"b"), Err(WalError::StaleTerm { .. })));
        assert_eq!(tl.append(new.term, 1, b"b").unwrap(), 2);
        // Metadata survives a reopen.
        drop(tl);
        let meta = TimelineMeta::load(dir.path()).unwrap();
        assert_eq!(meta.term, new.term);
    }
}
