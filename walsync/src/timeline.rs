//! One timeline: its WAL store, its metadata, and the writer thread that serializes every change.
//!
//! All mutations (appends, terms, geometry, checkpoints, retention) go through one channel to one
//! thread, so the checks "continues at the end" and "carries the current term" are made against the
//! state the change will be applied to, even with pipelined appends from a stream. The thread
//! group-commits: it writes every queued append, issues one `fdatasync`, then acknowledges them
//! all. Reads do not go through the thread; they see the durable LSN and the segment index.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use ibd_api::walsync::{
    Checkpoint, CheckpointRecord, Geometry, GeometryRecord, RecoveryPlan, TermResponse, TimelineStatus,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::WalError;
use crate::metrics::Metrics;
use crate::storage::checkpoints::CheckpointLog;
use crate::storage::meta::TimelineMeta;
use crate::storage::wal::{WalReader, WalStore};

mod writer;
use writer::Writer;

/// Largest range one read may ask for.
pub const MAX_READ_LEN: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct TimelineConfig {
    /// A new segment file is started once the current one reaches this size.
    pub segment_size: u64,
}

type Reply<T> = oneshot::Sender<Result<T, WalError>>;

enum Command {
    Append(Append),
    Metadata(MetadataChange),
}

struct Append {
    term: u64,
    start_lsn: u64,
    data: Bytes,
    arrived: Instant,
    reply: Reply<u64>,
}

enum MetadataChange {
    AcquireTerm {
        proposed: Option<u64>,
        reply: Reply<TermResponse>,
    },
    SetGeometry {
        term: u64,
        geometry: Geometry,
        reply: Reply<GeometryRecord>,
    },
    AddCheckpoint {
        term: u64,
        checkpoint: Checkpoint,
        reply: Reply<CheckpointRecord>,
    },
    RemoveBefore {
        lsn: u64,
        reply: Reply<u64>,
    },
}

/// What readers see; written only by the writer thread.
#[derive(Debug)]
struct State {
    meta: TimelineMeta,
    durable_lsn: Option<u64>,
    /// Set after a failed write or fsync: the page cache can no longer be trusted, so the timeline
    /// refuses changes until restarted (restart re-reads what is really on disk).
    failed: Option<String>,
}

pub struct Timeline {
    id: String,
    /// Unbounded: appends are bounded by their callers (one per request, a window per stream).
    commands: mpsc::UnboundedSender<Command>,
    state: Arc<RwLock<State>>,
    reader: WalReader,
    parent: Option<Arc<Timeline>>,
}

impl Timeline {
    /// Opens the timeline stored in `dir` (whose metadata file must exist) and starts its writer.
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
        if let Some((path, torn)) = report.torn_tail {
            tracing::warn!(
                timeline = %meta.timeline_id,
                segment = %path.display(),
                offset = torn.offset,
                cut_bytes = torn.file_len - torn.offset,
                reason = torn.reason,
                "truncated torn WAL tail (bytes never acknowledged)"
            );
            metrics.torn_tails_truncated.inc();
        }
        let base_lsn = meta.parent.as_ref().map(|p| p.lsn);
        let durable_lsn = wal.end_lsn().or(base_lsn);
        let reader = wal.reader();
        let state = Arc::new(RwLock::new(State {
            meta,
            durable_lsn,
            failed: None,
        }));
        let (commands, rx) = mpsc::unbounded_channel();
        let writer = Writer::new(dir, checkpoint_log, wal, base_lsn, state.clone(), metrics, label);
        writer.publish_gauges();
        let id = state.read().expect("state lock").meta.timeline_id.clone();
        std::thread::Builder::new()
            .name(format!("wal-{}", &id[..id.len().min(10)]))
            .spawn(move || writer.run(rx))?;
        Ok(Arc::new(Self {
            id,
            commands,
            state,
            reader,
            parent,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Queues an append and returns where its outcome will arrive; appends queued by one caller are
    /// applied in order, so a stream can pipeline them.
    pub fn submit_append(
        &self,
        term: u64,
        start_lsn: u64,
        data: Bytes,
    ) -> Result<oneshot::Receiver<Result<u64, WalError>>, WalError> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Append(Append {
            term,
            start_lsn,
            data,
            arrived: Instant::now(),
            reply,
        });
        self.commands.send(command).map_err(|_| writer_gone())?;
        Ok(rx)
    }

    /// Appends and waits until the bytes are durable; returns the durable LSN.
    pub async fn append(&self, term: u64, start_lsn: u64, data: Bytes) -> Result<u64, WalError> {
        let rx = self.submit_append(term, start_lsn, data)?;
        rx.await.map_err(|_| writer_gone())?
    }

    pub async fn acquire_term(&self, proposed: Option<u64>) -> Result<TermResponse, WalError> {
        self.request(|reply| MetadataChange::AcquireTerm { proposed, reply })
            .await
    }

    pub async fn set_geometry(&self, term: u64, geometry: Geometry) -> Result<GeometryRecord, WalError> {
        self.request(|reply| MetadataChange::SetGeometry {
            term,
            geometry,
            reply,
        })
        .await
    }

    pub async fn add_checkpoint(
        &self,
        term: u64,
        checkpoint: Checkpoint,
    ) -> Result<CheckpointRecord, WalError> {
        self.request(|reply| MetadataChange::AddCheckpoint {
            term,
            checkpoint,
            reply,
        })
        .await
    }

    /// Removes whole segments below `lsn`; returns the bytes freed.
    pub async fn remove_before(&self, lsn: u64) -> Result<u64, WalError> {
        self.request(|reply| MetadataChange::RemoveBefore { lsn, reply })
            .await
    }

    async fn request<T>(&self, change: impl FnOnce(Reply<T>) -> MetadataChange) -> Result<T, WalError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Metadata(change(reply)))
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
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

    /// Whether `term` may write now (the writer checks again when it applies each change).
    pub fn check_term(&self, term: u64) -> Result<(), WalError> {
        check_term(&self.state.read().expect("state lock"), term)
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
                _ => WalError::Io(e),
            })?;
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// What a fresh node needs to recover to `lsn` (default: the durable LSN).
    pub fn recovery_plan(&self, lsn: Option<u64>) -> Result<RecoveryPlan, WalError> {
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
        Ok(RecoveryPlan {
            timeline_id: self.id.clone(),
            geometry: geometry.geometry.clone(),
            checkpoint: checkpoint.checkpoint,
            wal_from: checkpoint.checkpoint.checkpoint_lsn,
            wal_to: target,
        })
    }
}

/// Only the current term may write, and only while the timeline is healthy.
fn check_term(state: &State, given: u64) -> Result<(), WalError> {
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

fn writer_gone() -> WalError {
    WalError::Failed("the timeline's writer has stopped".into())
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn open(dir: &Path) -> (Arc<Timeline>, Registry) {
        let mut registry = Registry::with_prefix("walsync");
        let metrics = Metrics::register(&mut registry);
        TimelineMeta::new("t", None).store(dir).unwrap();
        CheckpointLog::create(dir, &[]).unwrap();
        let config = TimelineConfig {
            segment_size: 1 << 20,
        };
        (Timeline::open(dir, None, &config, &metrics).unwrap(), registry)
    }

    fn metric(registry: &Registry, name: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn queued_appends_share_fsyncs_and_are_acked_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (tl, registry) = open(dir.path());
        let term = tl.acquire_term(None).await.unwrap().term;
        let mut receivers = Vec::new();
        for i in 0..64u64 {
            let data = Bytes::from(vec![i as u8; 100]);
            receivers.push(tl.submit_append(term, 1000 + i * 100, data).unwrap());
        }
        let mut last = 0;
        for (i, rx) in receivers.into_iter().enumerate() {
            // Appends acknowledged by one fsync share its durable LSN, which covers each of them.
            let durable = rx.await.unwrap().unwrap();
            assert!(durable >= last && durable >= 1000 + (i as u64 + 1) * 100);
            last = durable;
        }
        assert_eq!(last, 1000 + 64 * 100);
        let fsyncs = metric(&registry, "walsync_fsync_latency_seconds_count");
        assert!(fsyncs < 16.0, "{fsyncs} fsyncs for 64 queued appends");
        assert_eq!(metric(&registry, "walsync_appends_total"), 64.0);
    }

    #[tokio::test]
    async fn a_new_term_fences_queued_appends_of_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (tl, _registry) = open(dir.path());
        let old = tl.acquire_term(None).await.unwrap().term;
        let before = tl.submit_append(old, 0, Bytes::from_static(b"a")).unwrap();
        let new = tl.acquire_term(None).await.unwrap();
        let after = tl.submit_append(old, 1, Bytes::from_static(b"b")).unwrap();
        assert_eq!(before.await.unwrap().unwrap(), 1);
        assert_eq!(
            new.durable_lsn,
            Some(1),
            "the grant answers after earlier appends are durable"
        );
        assert!(matches!(after.await.unwrap(), Err(WalError::StaleTerm { .. })));
        // Metadata survives a reopen.
        drop(tl);
        let meta = TimelineMeta::load(dir.path()).unwrap();
        assert_eq!(meta.term, new.term);
    }
}
