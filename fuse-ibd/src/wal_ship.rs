//! Redo shipping: what the redo tail found goes to walsync, in log order, from a background task.
//!
//! The FUSE side never waits for the network on a log *write*: it hands the events over and
//! answers. It waits on the log's *fsync* (DESIGN.md invariant 1): `wait_durable` blocks until
//! walsync's durable LSN covers every complete mtr written before the fsync, retrying through a
//! walsync outage for up to the configured limit (MariaDB treats an fdatasync error as fatal).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ibd_api::walsync::{Checkpoint as WireCheckpoint, Geometry as WireGeometry, WalsyncClient};
use ibd_api::{ClientError, RetryPolicy};
use ibd_format::redo::{Checkpoint, LogGeometry, Lsn, SyntheticLog};
use tokio::sync::mpsc;

use crate::metrics::{Metrics, Service};
use crate::redo_tail::RedoEvent;
use crate::wait::wait_for;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ShipError {
    #[error("walsync did not make LSN {lsn} durable within {limit:?} (durable: {durable:?})")]
    Timeout {
        lsn: Lsn,
        durable: Option<Lsn>,
        limit: Duration,
    },
    #[error("shipping redo to walsync failed: {0}")]
    Failed(String),
}

#[derive(Debug, Default)]
struct Progress {
    durable: Option<Lsn>,
    /// A failure retries cannot fix (fenced by a newer term, a gap walsync refuses): every later
    /// fsync fails until the mount restarts.
    fatal: Option<String>,
}

struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Shared {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The mount's connection to walsync for one timeline.
pub struct WalShipper {
    client: WalsyncClient,
    runtime: tokio::runtime::Handle,
    events: mpsc::UnboundedSender<RedoEvent>,
    shared: Arc<Shared>,
    term: u64,
    timeline: String,
    url: String,
    limit: Duration,
}

impl WalShipper {
    /// Acquires a new term for `timeline` (fencing any older writer) and starts shipping on the
    /// current tokio runtime. `limit` bounds how long an fsync waits through an outage.
    pub async fn start(
        client: WalsyncClient,
        timeline: &str,
        limit: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClientError> {
        // Start-up fails fast with the client's own short retries; shipping then retries through
        // an outage for up to `limit`.
        let granted = client.acquire_term(timeline, None).await?;
        let client = client.with_retry(RetryPolicy::for_duration(limit));
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress {
                durable: granted.durable_lsn,
                fatal: None,
            }),
            changed: Condvar::new(),
        });
        if let Some(durable) = granted.durable_lsn {
            metrics.set_wal_durable_lsn(durable);
        }
        let (events, rx) = mpsc::unbounded_channel();
        let url = client.base_url().to_string();
        let task = ShipTask {
            client: client.clone(),
            timeline: timeline.to_string(),
            term: granted.term,
            shared: shared.clone(),
            held: Vec::new(),
            metrics,
        };
        tokio::spawn(task.run(rx));
        tracing::info!(%timeline, term = granted.term, durable_lsn = ?granted.durable_lsn, "shipping redo to walsync");
        Ok(Self {
            client,
            runtime: tokio::runtime::Handle::current(),
            events,
            shared,
            term: granted.term,
            timeline: timeline.to_string(),
            url,
            limit,
        })
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn timeline(&self) -> &str {
        &self.timeline
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The log a fresh node starts from: the timeline's geometry, its latest checkpoint, and the
    /// durable WAL from that checkpoint on (`None` for a timeline without WAL yet).
    pub fn recovery_log(&self) -> Result<Option<SyntheticLog<'static>>, ShipError> {
        if self.durable_lsn().is_none() {
            return Ok(None);
        }
        let failed = |e: ClientError| ShipError::Failed(e.to_string());
        let plan = self
            .runtime
            .block_on(self.client.recovery_plan(&self.timeline, None))
            .map_err(failed)?;
        let wal = self
            .runtime
            .block_on(self.client.read_wal(&self.timeline, plan.wal_from, plan.wal_to))
            .map_err(failed)?;
        Ok(Some(SyntheticLog {
            geometry: LogGeometry {
                first_lsn: plan.geometry.first_lsn,
                file_size: plan.geometry.file_size,
            },
            creator: "fuse-ibd fresh node",
            checkpoint: Checkpoint {
                checkpoint_lsn: plan.checkpoint.checkpoint_lsn,
                end_lsn: plan.checkpoint.end_lsn,
            },
            wal: wal.to_vec().into(),
        }))
    }

    /// walsync's durable LSN as last acknowledged.
    pub fn durable_lsn(&self) -> Option<Lsn> {
        self.shared.progress().durable
    }

    /// Queues what the redo tail found; never blocks.
    pub fn submit(&self, events: Vec<RedoEvent>) {
        for event in events {
            // The task only ends with the process; a closed channel then loses nothing durable.
            let _ = self.events.send(event);
        }
    }

    /// Blocks until walsync has everything below `lsn` durable (invariant 1).
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), ShipError> {
        let decided = wait_for(
            self.shared.progress(),
            &self.shared.changed,
            self.limit,
            |p| match &p.fatal {
                Some(fatal) => Some(Err(ShipError::Failed(fatal.clone()))),
                None => p.durable.is_some_and(|d| d >= lsn).then_some(Ok(())),
            },
        );
        decided.unwrap_or_else(|p| {
            Err(ShipError::Timeout {
                lsn,
                durable: p.durable,
                limit: self.limit,
            })
        })
    }
}

struct ShipTask {
    client: WalsyncClient,
    timeline: String,
    term: u64,
    shared: Arc<Shared>,
    /// Checkpoints whose FILE_CHECKPOINT mtr (at `end_lsn`) is not durable yet: walsync records a
    /// checkpoint only over durable WAL (an adopted log sends its checkpoint before its WAL).
    held: Vec<WireCheckpoint>,
    metrics: Arc<Metrics>,
}

impl ShipTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<RedoEvent>) {
        while let Some(first) = rx.recv().await {
            // Coalesce what queued up meanwhile: contiguous WAL goes out in one append.
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            for event in coalesce(batch) {
                if let Err(e) = self.ship(event).await {
                    self.metrics.record_remote_error(Service::Walsync);
                    tracing::error!(timeline = %self.timeline, error = %e, "redo shipping stopped: fsyncs of the log will fail");
                    self.shared.progress().fatal = Some(e.to_string());
                    self.shared.changed.notify_all();
                    return;
                }
            }
        }
    }

    async fn ship(&mut self, event: RedoEvent) -> Result<(), ClientError> {
        let (tl, term) = (&self.timeline, self.term);
        match event {
            RedoEvent::Wal { start_lsn, bytes, .. } => {
                self.metrics.set_wal_shipped_lsn(start_lsn + bytes.len() as u64);
                let acked = self
                    .client
                    .append(tl, term, start_lsn, Bytes::from(bytes))
                    .await?;
                {
                    let mut progress = self.shared.progress();
                    progress.durable = progress.durable.max(Some(acked.durable_lsn));
                }
                self.metrics.set_wal_durable_lsn(acked.durable_lsn);
                self.shared.changed.notify_all();
                let (ready, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|c| c.end_lsn <= acked.durable_lsn);
                self.held = held;
                for checkpoint in ready {
                    self.client.add_checkpoint(tl, term, &checkpoint).await?;
                }
            }
            RedoEvent::Geometry { geometry, creator } => {
                let wire = WireGeometry {
                    first_lsn: geometry.first_lsn,
                    file_size: geometry.file_size,
                    creator,
                    at_lsn: geometry.first_lsn,
                };
                self.client.put_geometry(tl, term, &wire).await?;
            }
            RedoEvent::Checkpoint { checkpoint, .. } => {
                let wire = WireCheckpoint {
                    checkpoint_lsn: checkpoint.checkpoint_lsn,
                    end_lsn: checkpoint.end_lsn,
                };
                let covered = self.shared.progress().durable.is_some_and(|d| d >= wire.end_lsn);
                if covered {
                    self.client.add_checkpoint(tl, term, &wire).await?;
                } else {
                    self.held.push(wire);
                }
            }
        }
        Ok(())
    }
}

/// Merges runs of contiguous WAL events; everything else keeps its place in the order.
fn coalesce(events: Vec<RedoEvent>) -> Vec<RedoEvent> {
    let mut out: Vec<RedoEvent> = Vec::with_capacity(events.len());
    for event in events {
        if let (
            Some(RedoEvent::Wal {
                start_lsn,
                bytes,
                mtrs,
            }),
            RedoEvent::Wal {
                start_lsn: next,
                bytes: more,
                mtrs: more_mtrs,
            },
        ) = (out.last_mut(), &event)
        {
            if *start_lsn + bytes.len() as u64 == *next {
                bytes.extend_from_slice(more);
                mtrs.extend(more_mtrs.iter().cloned());
                continue;
            }
        }
        out.push(event);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(start: Lsn, len: usize) -> RedoEvent {
        RedoEvent::Wal {
            start_lsn: start,
            bytes: vec![1; len],
            mtrs: Vec::new(),
        }
    }

    #[test]
    fn contiguous_wal_is_merged_and_order_is_kept() {
        let cp = RedoEvent::Checkpoint {
            slot: ibd_format::redo::CheckpointSlot::First,
            checkpoint: ibd_format::redo::Checkpoint {
                checkpoint_lsn: 100,
                end_lsn: 100,
            },
        };
        let merged = coalesce(vec![
            wal(100, 10),
            wal(110, 5),
            cp.clone(),
            wal(115, 1),
            wal(200, 1),
        ]);
        assert_eq!(merged.len(), 4);
        assert!(matches!(&merged[0], RedoEvent::Wal { start_lsn: 100, bytes, .. } if bytes.len() == 15));
        assert_eq!(merged[1], cp);
        assert!(matches!(&merged[2], RedoEvent::Wal { start_lsn: 115, .. }));
        assert!(matches!(&merged[3], RedoEvent::Wal { start_lsn: 200, .. }));
    }
}
