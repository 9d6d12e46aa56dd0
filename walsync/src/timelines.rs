//! All timelines of a data directory (`<data-dir>/timelines/<id>/`), created on demand or as
//! branches of one another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use ibd_api::walsync::BranchPoint;

use crate::error::WalError;
use crate::metrics::Metrics;
use crate::storage::checkpoints::CheckpointLog;
use crate::storage::meta::{self, TimelineMeta};
use crate::storage::sync_dir;
use crate::timeline::{Timeline, TimelineConfig};

/// Timeline ids are path components and metric labels: keep them plain.
pub fn validate_timeline_id(id: &str) -> Result<(), WalError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(WalError::BadRequest(format!(
            "invalid timeline id {id:?}: expected 1 to 64 characters of [A-Za-z0-9_-]"
        )))
    }
}

pub struct Timelines {
    root: PathBuf,
    config: TimelineConfig,
    metrics: Metrics,
    map: RwLock<BTreeMap<String, Arc<Timeline>>>,
    /// Held while a timeline is created, and while a retention pass decides what one timeline
    /// keeps and removes the rest: a branch is never created between the two, where retention
    /// would remove WAL the new branch needs. Retention takes it per timeline, so a creation
    /// waits for one timeline's removal at most, not for a whole pass.
    topology: Mutex<()>,
    /// Threads waiting for `topology` (tests stage races with it).
    #[cfg(test)]
    pub(crate) topology_waiters: std::sync::atomic::AtomicUsize,
    /// Runs in a retention pass between deciding and removing (tests stage races with it).
    #[cfg(test)]
    pub(crate) before_removal: Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Timelines {
    /// Opens every timeline under `data_dir`, parents before their branches.
    pub fn open(data_dir: &Path, config: TimelineConfig, metrics: Metrics) -> Result<Self, WalError> {
        let root = data_dir.join("timelines");
        if !root.exists() {
            std::fs::create_dir_all(&root)?;
            sync_dir(data_dir)?;
        }
        let mut metas = BTreeMap::new();
        for entry in std::fs::read_dir(&root)? {
            let dir = entry?.path();
            if !dir.join(meta::FILE_NAME).exists() {
                // Creation writes the metadata first; a directory without it was never acknowledged.
                tracing::warn!(dir = %dir.display(), "ignoring a timeline directory without metadata");
                continue;
            }
            let meta = TimelineMeta::load(&dir)?;
            metas.insert(meta.timeline_id.clone(), meta);
        }
        let timelines = Self {
            root,
            config,
            metrics,
            map: RwLock::new(BTreeMap::new()),
            topology: Mutex::new(()),
            #[cfg(test)]
            topology_waiters: Default::default(),
            #[cfg(test)]
            before_removal: Mutex::new(None),
        };
        for id in metas.keys() {
            timelines.open_with_ancestors(id, &metas)?;
        }
        Ok(timelines)
    }

    fn open_with_ancestors(
        &self,
        id: &str,
        metas: &BTreeMap<String, TimelineMeta>,
    ) -> Result<Arc<Timeline>, WalError> {
        if let Some(tl) = self.map.read().expect("map lock").get(id) {
            return Ok(tl.clone());
        }
        let meta = metas.get(id).ok_or_else(|| WalError::NotFound(id.to_string()))?;
        let parent = match &meta.parent {
            Some(p) => Some(self.open_with_ancestors(&p.timeline_id, metas)?),
            None => None,
        };
        let tl = Timeline::open(&self.root.join(id), parent, &self.config, &self.metrics)?;
        let status = tl.status();
        tracing::info!(timeline = id, durable_lsn = ?status.durable_lsn, term = status.term, "opened timeline");
        self.map
            .write()
            .expect("map lock")
            .insert(id.to_string(), tl.clone());
        Ok(tl)
    }

    pub fn get(&self, id: &str) -> Result<Arc<Timeline>, WalError> {
        validate_timeline_id(id)?;
        self.map
            .read()
            .expect("map lock")
            .get(id)
            .cloned()
            .ok_or_else(|| WalError::NotFound(id.to_string()))
    }

    pub fn list(&self) -> Vec<Arc<Timeline>> {
        self.map.read().expect("map lock").values().cloned().collect()
    }

    /// See `topology`.
    pub(crate) fn lock_topology(&self) -> MutexGuard<'_, ()> {
        #[cfg(test)]
        self.topology_waiters
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let guard = self.topology.lock().unwrap_or_else(|e| e.into_inner());
        #[cfg(test)]
        self.topology_waiters
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        guard
    }

    /// The timeline, created empty if it does not exist. Blocking.
    pub fn get_or_create(&self, id: &str) -> Result<Arc<Timeline>, WalError> {
        match self.get(id) {
            Err(WalError::NotFound(_)) => self.create(id, None),
            found => found,
        }
    }

    /// Creates a timeline, empty or branched from `parent` at an LSN; idempotent for the same
    /// request. A branch starts with the parent's geometry and checkpoint in force at its branch
    /// point, so it can be recovered before its own writer reports any. Blocking.
    pub fn create(&self, id: &str, parent: Option<BranchPoint>) -> Result<Arc<Timeline>, WalError> {
        validate_timeline_id(id)?;
        let _topology = self.lock_topology();
        if let Ok(existing) = self.get(id) {
            return if existing.with_meta(|m| m.parent == parent) {
                Ok(existing)
            } else {
                Err(WalError::Exists(id.to_string()))
            };
        }
        let mut meta = TimelineMeta::new(id, parent.clone());
        let parent_timeline = match &parent {
            None => None,
            Some(branch) => {
                let p = self.get(&branch.timeline_id)?;
                let (geometry, checkpoint) = p.branch_point(branch.lsn)?;
                meta.geometry.extend(geometry);
                meta.checkpoints.extend(checkpoint);
                Some(p)
            }
        };
        let dir = self.root.join(id);
        std::fs::create_dir_all(&dir)?;
        // `timeline.json` last: a directory without it is an unfinished creation, ignored at start.
        CheckpointLog::create(&dir, &meta.checkpoints)?;
        meta.store(&dir)?;
        sync_dir(&self.root)?;
        let tl = Timeline::open(&dir, parent_timeline, &self.config, &self.metrics)?;
        self.map
            .write()
            .expect("map lock")
            .insert(id.to_string(), tl.clone());
        tracing::info!(timeline = id, ?parent, "created timeline");
        Ok(tl)
    }
}

#[cfg(test)]
mod tests {
    use ibd_api::walsync::BranchPoint;
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn a_branch_resend_from_below_its_branch_point_is_compared_with_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        let config = TimelineConfig {
            segment_size: 1 << 20,
        };
        let timelines = Timelines::open(dir.path(), config, metrics).unwrap();
        let parent = timelines.get_or_create("parent").unwrap();
        let term = parent.acquire_term(None).unwrap().term;
        parent.append(term, 1000, &[1; 1000]).unwrap();
        let branch = BranchPoint {
            timeline_id: "parent".into(),
            lsn: 1500,
        };
        let child = timelines.create("child", Some(branch)).unwrap();
        let term = child.acquire_term(None).unwrap().term;
        // The new writer on the branch resends from 1400: 100 bytes shared with the parent, then
        // its own.
        let resend = [vec![1; 100], vec![2; 200]].concat();
        assert_eq!(child.append(term, 1400, &resend).unwrap(), 1700);
        assert_eq!(child.read(1400, 1700).unwrap(), resend);
        // Wholly below the branch point and matching: nothing to write, acknowledged.
        assert_eq!(child.append(term, 1200, &[1; 300]).unwrap(), 1700);
        // Differing from the parent's bytes: refused, nothing written.
        let err = child
            .append(term, 1450, &[vec![9; 50], vec![2; 200], vec![3; 10]].concat())
            .unwrap_err();
        assert!(
            matches!(err, WalError::OverlapMismatch { at_lsn: 1450, .. }),
            "{err}"
        );
        assert_eq!(child.durable_lsn(), Some(1700));
        assert_eq!(parent.read(1000, 2000).unwrap(), vec![1; 1000]);
    }
}
