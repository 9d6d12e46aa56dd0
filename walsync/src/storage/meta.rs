//! A timeline's metadata: parent branch point, current term, geometry history (in
//! `timeline.json`, rewritten atomically on each change: a term per mount, a geometry per log
//! resize) and the checkpoint history (in the append-only [`super::checkpoints`] log).

use std::io;
use std::path::Path;

use ibd_api::walsync::{BranchPoint, CheckpointRecord, GeometryRecord};
use serde::{Deserialize, Serialize};

use super::write_atomically;

pub const FILE_NAME: &str = "timeline.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineMeta {
    pub timeline_id: String,
    #[serde(default)]
    pub parent: Option<BranchPoint>,
    /// The newest term granted; 0 = none yet.
    pub term: u64,
    #[serde(default)]
    pub geometry: Vec<GeometryRecord>,
    /// Kept in `checkpoints.log`, not in `timeline.json`.
    #[serde(skip)]
    pub checkpoints: Vec<CheckpointRecord>,
}

impl TimelineMeta {
    pub fn new(timeline_id: &str, parent: Option<BranchPoint>) -> Self {
        Self {
            timeline_id: timeline_id.to_string(),
            parent,
            term: 0,
            geometry: Vec::new(),
            checkpoints: Vec::new(),
        }
    }

    /// Everything but the checkpoint history (what `timeline.json` holds), cheap to copy.
    pub fn header(&self) -> Self {
        Self {
            timeline_id: self.timeline_id.clone(),
            parent: self.parent.clone(),
            term: self.term,
            geometry: self.geometry.clone(),
            checkpoints: Vec::new(),
        }
    }

    /// Reads `timeline.json` (the checkpoint history is loaded separately).
    pub fn load(dir: &Path) -> io::Result<Self> {
        let path = dir.join(FILE_NAME);
        let bytes = std::fs::read(&path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
    }

    /// Replaces `timeline.json` (the checkpoint history is not part of it).
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("metadata always serializes");
        write_atomically(&dir.join(FILE_NAME), &json)
    }

    pub fn latest_geometry(&self) -> Option<&GeometryRecord> {
        self.geometry.last()
    }

    pub fn latest_checkpoint(&self) -> Option<&CheckpointRecord> {
        self.checkpoints.last()
    }

    /// The geometry in force at `lsn`.
    pub fn geometry_at(&self, lsn: u64) -> Option<&GeometryRecord> {
        self.geometry.iter().rev().find(|g| g.geometry.at_lsn <= lsn)
    }

    /// The newest checkpoint recovery can start from to reach `lsn`: its `FILE_CHECKPOINT` mtr
    /// (at `end_lsn`) lies below `lsn`, and it arrived when the durable LSN was at most `lsn`.
    pub fn checkpoint_for(&self, lsn: u64) -> Option<&CheckpointRecord> {
        self.checkpoints
            .iter()
            .rev()
            .find(|c| c.checkpoint.end_lsn < lsn && c.durable_lsn_at_arrival.unwrap_or(0) <= lsn)
    }

    /// Forgets checkpoints whose WAL is gone and geometry superseded before `wal_start`.
    /// Returns whether anything changed.
    pub fn prune_below(&mut self, wal_start: u64) -> bool {
        let before = (self.checkpoints.len(), self.geometry.len());
        self.checkpoints
            .retain(|c| c.checkpoint.checkpoint_lsn >= wal_start);
        let superseded = self
            .geometry
            .iter()
            .rposition(|g| g.geometry.at_lsn <= wal_start)
            .unwrap_or(0);
        self.geometry.drain(..superseded);
        before != (self.checkpoints.len(), self.geometry.len())
    }
}

#[cfg(test)]
mod tests {
    use ibd_api::walsync::{Checkpoint, Geometry};

    use super::*;

    fn checkpoint(checkpoint_lsn: u64, end_lsn: u64, durable: u64, at_ms: u64) -> CheckpointRecord {
        CheckpointRecord {
            checkpoint: Checkpoint {
                checkpoint_lsn,
                end_lsn,
            },
            durable_lsn_at_arrival: Some(durable),
            received_at_unix_ms: at_ms,
        }
    }

    fn geometry(first_lsn: u64, at_lsn: u64) -> GeometryRecord {
        GeometryRecord {
            geometry: Geometry {
                first_lsn,
                file_size: 1 << 20,
                creator: "MariaDB 10.11.19".into(),
                at_lsn,
            },
            durable_lsn_at_arrival: None,
            received_at_unix_ms: 0,
        }
    }

    #[test]
    fn the_header_survives_a_store_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = TimelineMeta::new("tl", None);
        meta.term = 3;
        meta.checkpoints.push(checkpoint(100, 150, 200, 1));
        meta.geometry.push(geometry(12288, 12288));
        meta.store(dir.path()).unwrap();
        assert_eq!(TimelineMeta::load(dir.path()).unwrap(), meta.header());
    }

    #[test]
    fn checkpoint_for_an_lsn_needs_its_end_and_arrival_below_it() {
        let mut meta = TimelineMeta::new("tl", None);
        meta.checkpoints.push(checkpoint(100, 150, 160, 1));
        meta.checkpoints.push(checkpoint(300, 350, 400, 2));
        assert_eq!(meta.checkpoint_for(150), None);
        assert_eq!(meta.checkpoint_for(200).unwrap().checkpoint.checkpoint_lsn, 100);
        assert_eq!(meta.checkpoint_for(399).unwrap().checkpoint.checkpoint_lsn, 100);
        assert_eq!(meta.checkpoint_for(400).unwrap().checkpoint.checkpoint_lsn, 300);
    }

    #[test]
    fn pruning_keeps_the_geometry_in_force() {
        let mut meta = TimelineMeta::new("tl", None);
        meta.geometry.push(geometry(12288, 12288));
        meta.geometry.push(geometry(50_000, 50_000));
        meta.geometry.push(geometry(90_000, 90_000));
        meta.checkpoints.push(checkpoint(40_000, 40_100, 0, 0));
        meta.checkpoints.push(checkpoint(60_000, 60_100, 0, 0));
        assert!(meta.prune_below(55_000));
        assert_eq!(meta.checkpoints.len(), 1);
        let firsts: Vec<_> = meta.geometry.iter().map(|g| g.geometry.first_lsn).collect();
        assert_eq!(firsts, vec![50_000, 90_000]);
        assert!(!meta.prune_below(55_000));
    }
}
