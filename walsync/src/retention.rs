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
    let window_start_ms = now_ms.saturating_sub(window.as_millis() as u64);
    let all = timelines.list();
    for tl in &all {
        let branch_lsns: Vec<u64> = all
            .iter()
            .filter(|child| child.parent_id().as_deref() == Some(tl.id()))
            .filter_map(|child| child.with_meta(|m| m.parent.as_ref().map(|p| p.lsn)))
            .collect();
        let Some(lsn) = tl.with_meta(|m| keep_from(m, window_start_ms, &branch_lsns)) else {
            continue;
        };
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
    use ibd_api::walsync::{Checkpoint, CheckpointRecord};

    use super::*;

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
