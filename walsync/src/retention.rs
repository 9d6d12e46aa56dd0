//! Retention: WAL is kept from the oldest checkpoint still needed, by the retention window (to
//! recover to any point inside it) and by branch points (a branch reads its parent's WAL from
//! the checkpoint before its branch LSN). Whole segments below that are removed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::storage::meta::TimelineMeta;
use crate::timelines::Timelines;

/// The LSN below which `meta`'s WAL is no longer needed, `None` if all of it may be.
/// `window_start_ms` is the oldest point in time to stay recoverable; `branch_lsns` are the branch
/// points of this timeline's children.
pub fn keep_from(meta: &TimelineMeta, window_start_ms: u64, branch_lsns: &[u64]) -> Option<u64> {
    // The checkpoint in force at the start of the window; without one, everything may be needed.
    let window = meta
        .checkpoints
        .iter()
        .rev()
        .find(|c| c.received_at_unix_ms <= window_start_ms)?;
    let mut keep = window.checkpoint.checkpoint_lsn;
    for lsn in branch_lsns {
        keep = keep.min(meta.checkpoint_for(*lsn)?.checkpoint.checkpoint_lsn);
    }
    Some(keep)
}

/// One retention pass over every timeline. Blocking.
pub fn enforce(timelines: &Timelines, window: Duration) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    enforce_from(timelines, now_ms.saturating_sub(window.as_millis() as u64));
}

/// A retention pass keeping what is needed to recover to any point since `window_start_ms`.
fn enforce_from(timelines: &Timelines, window_start_ms: u64) {
    for tl in timelines.list() {
        // No branch of `tl` may be created between deciding what it keeps and removing the rest;
        // creations wait for this one timeline, not for the whole pass.
        let _topology = timelines.lock_topology();
        let branch_lsns: Vec<u64> = timelines
            .list()
            .iter()
            .filter(|child| child.parent_id().as_deref() == Some(tl.id()))
            .filter_map(|child| child.with_meta(|m| m.parent.as_ref().map(|p| p.lsn)))
            .collect();
        let Some(lsn) = tl.with_meta(|m| keep_from(m, window_start_ms, &branch_lsns)) else {
            continue;
        };
        #[cfg(test)]
        if let Some(hook) = &*timelines.before_removal.lock().unwrap() {
            hook();
        }
        if let Err(e) = tl.remove_before(lsn) {
            tracing::warn!(timeline = tl.id(), error = %e, "retention failed");
        }
    }
}

/// Runs [`enforce`] every `interval` until the task is dropped.
pub async fn run(timelines: Arc<Timelines>, window: Duration, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let timelines = timelines.clone();
        // Removing files blocks; the runtime's thread accepts connections.
        if let Err(e) = tokio::task::spawn_blocking(move || enforce(&timelines, window)).await {
            tracing::error!(error = %e, "retention pass panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::mpsc;

    use ibd_api::walsync::{BranchPoint, Checkpoint, CheckpointRecord};
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::error::WalError;
    use crate::metrics::Metrics;
    use crate::timeline::TimelineConfig;

    /// A parent with WAL [100000, 160000) in 4 KiB segments and checkpoints at 105000 and 150000.
    fn parent_with_checkpoints(dir: &std::path::Path) -> Arc<Timelines> {
        let metrics = Metrics::register(&mut Registry::default());
        let config = TimelineConfig { segment_size: 4096 };
        let timelines = Arc::new(Timelines::open(dir, config, metrics).unwrap());
        let tl = timelines.get_or_create("parent").unwrap();
        let term = tl.acquire_term(None).unwrap().term;
        let geometry = ibd_api::walsync::Geometry {
            first_lsn: 12288,
            file_size: 96 << 20,
            creator: "MariaDB 10.11.19".into(),
            at_lsn: 12288,
        };
        tl.set_geometry(term, geometry).unwrap();
        for lsn in (100_000..160_000).step_by(1000) {
            tl.append(term, lsn, &[lsn as u8; 1000]).unwrap();
            if lsn == 110_000 || lsn == 155_000 {
                let checkpoint_lsn = lsn - 5000;
                let checkpoint = Checkpoint {
                    checkpoint_lsn,
                    end_lsn: checkpoint_lsn + 100,
                };
                tl.add_checkpoint(term, checkpoint).unwrap();
            }
        }
        timelines
    }

    fn branch(lsn: u64) -> Option<BranchPoint> {
        Some(BranchPoint {
            timeline_id: "parent".into(),
            lsn,
        })
    }

    fn later_than_every_checkpoint() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 + 60_000
    }

    #[test]
    fn a_branch_created_during_a_retention_pass_keeps_its_wal_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let timelines = parent_with_checkpoints(dir.path());
        // Between deciding (keep from 150000: no branch yet) and removing, a branch at 120000
        // is requested: it recovers from the checkpoint at 105000.
        let (done_tx, done) = mpsc::channel();
        let creator = timelines.clone();
        let created = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let staged = std::sync::atomic::AtomicBool::new(false);
        *timelines.before_removal.lock().unwrap() = Some(Box::new(move || {
            if staged.swap(true, SeqCst) {
                return;
            }
            std::thread::spawn({
                let (creator, done_tx, created) = (creator.clone(), done_tx.clone(), created.clone());
                move || {
                    let _ = done_tx.send(creator.create("child", branch(120_000)));
                    created.store(true, SeqCst);
                }
            });
            // Until the creation either finished (nothing held it back) or waits for the lock.
            while creator.topology_waiters.load(SeqCst) == 0 && !created.load(SeqCst) {
                std::thread::yield_now();
            }
        }));
        enforce_from(&timelines, later_than_every_checkpoint());
        *timelines.before_removal.lock().unwrap() = None;

        let parent = timelines.get("parent").unwrap();
        let start = parent.status().wal_start_lsn.unwrap();
        assert!(
            start > 105_000,
            "the pass removed the WAL a branch at 120000 needs: {start}"
        );
        match done.recv().unwrap() {
            // Created after the pass: refused, the WAL it needs is gone.
            Err(e) => assert_eq!((e.code(), e.http_status()), ("wal_removed", 410), "{e}"),
            // Created before the removal: the removal must have kept its WAL.
            Ok(child) => {
                child
                    .read(105_000, 120_000)
                    .expect("the branch's WAL survived retention");
            }
        }
    }

    #[test]
    fn a_branch_whose_parent_lost_its_wal_gets_no_recovery_plan() {
        let dir = tempfile::tempdir().unwrap();
        let timelines = parent_with_checkpoints(dir.path());
        let child = timelines.create("child", branch(120_000)).unwrap();
        let plan = child.recovery_plan(None).unwrap();
        assert_eq!((plan.wal_from, plan.wal_to), (105_000, 120_000));
        // WAL the branch recovers from disappears from the parent (retention keeps it; this
        // stands for it being lost another way).
        timelines.get("parent").unwrap().remove_before(150_000).unwrap();
        let err = child.recovery_plan(None).unwrap_err();
        assert_eq!((err.code(), err.http_status()), ("wal_removed", 410), "{err}");
    }

    #[test]
    fn branch_points_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let timelines = parent_with_checkpoints(dir.path());
        let beyond = timelines.create("beyond", branch(160_001)).unwrap_err();
        assert_eq!((beyond.code(), beyond.http_status()), ("bad_request", 400));
        timelines.create("early", branch(120_000)).unwrap();
        enforce_from(&timelines, later_than_every_checkpoint());
        // The early branch held the parent's WAL from 105000 back; without it, it goes.
        let parent = timelines.get("parent").unwrap();
        assert!(parent.status().wal_start_lsn.unwrap() <= 105_000);
        timelines.get("early").unwrap().read(105_000, 120_000).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let timelines = parent_with_checkpoints(dir.path());
        enforce_from(&timelines, later_than_every_checkpoint());
        let start = timelines.get("parent").unwrap().status().wal_start_lsn.unwrap();
        assert!((140_000..=150_000).contains(&start), "{start}");
        // Its checkpoint (105000) and WAL are gone.
        let refused = timelines.create("late", branch(120_000)).unwrap_err();
        assert_eq!((refused.code(), refused.http_status()), ("wal_removed", 410));
        assert!(
            matches!(refused, WalError::BranchBelowWal { lsn: 120_000, .. }),
            "{refused}"
        );
        assert!(
            timelines.get("late").is_err(),
            "a refused branch leaves nothing behind"
        );
        // Recovers from 150000, which is kept.
        let ok = timelines.create("ok", branch(158_000)).unwrap();
        assert_eq!(ok.read(150_000, 158_000).unwrap().len(), 8000);
    }

    fn meta_with(checkpoints: &[(u64, u64, u64)]) -> TimelineMeta {
        let mut meta = TimelineMeta::new("tl", None);
        for &(checkpoint_lsn, durable, at_ms) in checkpoints {
            meta.checkpoints.push(CheckpointRecord {
                checkpoint: Checkpoint {
                    checkpoint_lsn,
                    end_lsn: checkpoint_lsn + 10,
                },
                durable_lsn_at_arrival: Some(durable),
                received_at_unix_ms: at_ms,
            });
        }
        meta
    }

    #[test]
    fn keeps_from_the_checkpoint_in_force_at_the_window_start() {
        let meta = meta_with(&[(1000, 1100, 10), (5000, 5100, 20), (9000, 9100, 30)]);
        assert_eq!(keep_from(&meta, 5, &[]), None);
        assert_eq!(keep_from(&meta, 25, &[]), Some(5000));
        assert_eq!(keep_from(&meta, 99, &[]), Some(9000));
    }

    #[test]
    fn branch_points_hold_back_retention() {
        let meta = meta_with(&[(1000, 1100, 10), (5000, 5100, 20), (9000, 9100, 30)]);
        assert_eq!(keep_from(&meta, 99, &[6000]), Some(5000));
        assert_eq!(keep_from(&meta, 99, &[2000, 9500]), Some(1000));
        // A branch before every checkpoint needs everything.
        assert_eq!(keep_from(&meta, 99, &[500]), None);
    }
}
