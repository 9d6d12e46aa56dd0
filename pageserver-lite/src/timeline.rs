//! Timelines: a history of page and namespace versions, optionally branched off a parent.
//!
//! Sequence numbers are per timeline and monotonic; a child's own numbers start right after its
//! branch point, so "seq <= S" means the same thing along a whole ancestry: on a child, the newest
//! version with seq <= S is the child's own if it has one, else the parent's at
//! `min(S, branch_seq)`, and so on up. Creating a branch copies nothing.

use std::collections::{BTreeMap, HashMap};

use ibd_api::pageserver::{CheckpointMarker, FileInfo, ReadAt, TimelineInfo};
use serde::{Deserialize, Serialize};

use crate::namespace::{file_info, FileState, FileVersion, Namespace, PathIndex};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// Internal number used in records (ids are strings chosen by clients).
    pub num: u32,
    pub id: String,
    pub parent: Option<u32>,
    /// Parent versions with seq <= branch_seq are visible (0 for a root timeline).
    pub branch_seq: u64,
    pub branch_lsn: Option<u64>,
    pub term: u64,
    /// Newest durable seq.
    pub last_seq: u64,
    pub markers: Vec<CheckpointMarker>,
    pub namespace: Namespace,
    #[serde(default)]
    pub gc_horizon: GcHorizon,
    /// The live files of the newest state by path (rebuilt after loading, see
    /// [`Timelines::rebuild_paths`]).
    #[serde(skip)]
    pub paths: PathIndex,
}

/// How far GC has eaten into a timeline's own history (durable: a `GcHorizon` record is synced
/// before GC drops anything). GC drops a version once its successor (the next version, or the
/// file's unlink) left the retention window, unless a branch point lies between them; so a read
/// whose seq bound is at least the highest such successor's seq, and whose LSN bound (if any) is
/// at least the highest such successor's page LSN, finds exactly what it found before GC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcHorizon {
    pub seq: u64,
    pub lsn: u64,
}

impl GcHorizon {
    pub fn max(self, other: GcHorizon) -> GcHorizon {
        GcHorizon {
            seq: self.seq.max(other.seq),
            lsn: self.lsn.max(other.lsn),
        }
    }
}

/// A read (or branch) point some of whose versions GC has dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BelowHorizon {
    /// The timeline of the ancestry whose versions are gone.
    pub timeline: String,
    pub horizon: GcHorizon,
    /// The read point, as seen on that timeline: "seq S" or "lsn T".
    pub at: String,
}

/// Where a read looks: each timeline of the ancestry, newest first, with the highest seq visible
/// in it; and the highest page LSN accepted.
#[derive(Debug, Clone)]
pub struct Ancestry {
    pub steps: Vec<(u32, u64)>,
    pub max_lsn: u64,
}

impl Ancestry {
    /// The highest seq visible on the timeline read.
    pub fn max_seq(&self) -> u64 {
        self.steps[0].1
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Timelines {
    by_num: BTreeMap<u32, Timeline>,
    #[serde(skip)]
    by_id: HashMap<String, u32>,
    /// [`Timelines::branch_points`], kept up to date (reads check against it).
    #[serde(skip)]
    points: HashMap<u32, Vec<u64>>,
}

impl Timelines {
    /// Rebuilds the lookups after deserialization.
    pub fn reindex(&mut self) {
        self.by_id = self.by_num.values().map(|t| (t.id.clone(), t.num)).collect();
        self.points = self.compute_branch_points();
    }

    pub fn insert(&mut self, timeline: Timeline) {
        self.by_id.insert(timeline.id.clone(), timeline.num);
        self.by_num.insert(timeline.num, timeline);
        self.points = self.compute_branch_points();
    }

    pub fn num_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub fn get(&self, num: u32) -> Option<&Timeline> {
        self.by_num.get(&num)
    }

    pub fn get_mut(&mut self, num: u32) -> Option<&mut Timeline> {
        self.by_num.get_mut(&num)
    }

    pub fn by_id(&self, id: &str) -> Option<&Timeline> {
        self.get(self.num_of(id)?)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Timeline> {
        self.by_num.values()
    }

    pub fn next_num(&self) -> u32 {
        self.by_num.keys().next_back().map_or(1, |n| n + 1)
    }

    /// The ancestry a read of `num` at `at` looks through (see [`Timelines::has_ancestry`]).
    pub fn ancestry(&self, num: u32, at: ReadAt) -> Ancestry {
        let tl = &self.by_num[&num];
        let (mut max_seq, max_lsn) = match at {
            ReadAt::Latest => (tl.last_seq, u64::MAX),
            ReadAt::Seq(s) => (s.min(tl.last_seq), u64::MAX),
            ReadAt::Lsn(l) => (tl.last_seq, l),
        };
        let mut steps = vec![(num, max_seq)];
        let mut current = tl;
        while let Some(parent) = current.parent {
            max_seq = max_seq.min(current.branch_seq);
            steps.push((parent, max_seq));
            current = &self.by_num[&parent];
        }
        Ancestry { steps, max_lsn }
    }

    /// For every timeline, the seqs at which its descendants see it: GC keeps, for each page, the
    /// newest version at or below each of them.
    pub fn branch_points(&self) -> &HashMap<u32, Vec<u64>> {
        &self.points
    }

    fn compute_branch_points(&self) -> HashMap<u32, Vec<u64>> {
        let mut points: HashMap<u32, Vec<u64>> = HashMap::new();
        for tl in self.by_num.values() {
            // As `ancestry` at latest, but replay may insert a child before its parent.
            let (mut current, mut seq) = (tl, u64::MAX);
            while let Some(parent) = current.parent {
                seq = seq.min(current.branch_seq);
                points.entry(parent).or_default().push(seq);
                match self.by_num.get(&parent) {
                    Some(p) => current = p,
                    None => break,
                }
            }
        }
        points
    }

    /// Refuses a read through `ancestry` that could need versions GC dropped: on some timeline of
    /// it, a seq bound below its GC horizon (unless the bound is a descendant's branch point,
    /// whose versions GC keeps, or shows none of that timeline's own versions), or an LSN bound
    /// below it.
    pub fn check_gc_horizon(&self, ancestry: &Ancestry) -> Result<(), BelowHorizon> {
        for &(num, max_seq) in &ancestry.steps {
            let tl = &self.by_num[&num];
            let horizon = tl.gc_horizon;
            let own_versions_visible = max_seq > tl.branch_seq;
            let seq_ok = max_seq >= horizon.seq
                || !own_versions_visible
                || self.points.get(&num).is_some_and(|p| p.contains(&max_seq));
            let lsn_ok = ancestry.max_lsn >= horizon.lsn || !own_versions_visible;
            if !seq_ok || !lsn_ok {
                let at = if seq_ok {
                    format!("lsn {}", ancestry.max_lsn)
                } else {
                    format!("seq {max_seq}")
                };
                return Err(BelowHorizon {
                    timeline: tl.id.clone(),
                    horizon,
                    at,
                });
            }
        }
        Ok(())
    }

    pub fn info(&self, tl: &Timeline) -> TimelineInfo {
        TimelineInfo {
            id: tl.id.clone(),
            parent: tl.parent.map(|p| {
                self.by_num
                    .get(&p)
                    .map_or_else(|| format!("<lost timeline #{p}>"), |t| t.id.clone())
            }),
            branch_seq: tl.parent.map(|_| tl.branch_seq),
            branch_lsn: tl.branch_lsn,
            term: tl.term,
            last_seq: tl.last_seq,
            gc_horizon_seq: tl.gc_horizon.seq,
            gc_horizon_lsn: tl.gc_horizon.lsn,
        }
    }

    /// The newest namespace change of `file` visible through `ancestry`.
    fn file_version_at(&self, ancestry: &Ancestry, file: u64) -> Option<&FileVersion> {
        ancestry
            .steps
            .iter()
            .find_map(|&(num, max_seq)| self.by_num[&num].namespace.version_at(file, max_seq))
    }

    /// A file as seen through `ancestry`: None if it never existed there or is unlinked.
    pub fn file_at(&self, ancestry: &Ancestry, file: u64) -> Option<(u64, &FileState)> {
        let v = self.file_version_at(ancestry, file)?;
        v.state.as_ref().map(|s| (v.seq, s))
    }

    /// If `file` is unlinked in the newest state of timeline `num`: the unlink's seq and time.
    /// A timeline this store does not know (its or an ancestor's creation record was lost to
    /// damage) has no namespace: nothing of it counts as unlinked.
    pub fn unlinked(&self, num: u32, file: u64) -> Option<(u64, u64)> {
        if !self.has_ancestry(num) {
            return None;
        }
        let v = self.file_version_at(&self.ancestry(num, ReadAt::Latest), file)?;
        v.state.is_none().then_some((v.seq, v.at_ms))
    }

    /// Whether a resize after `after_seq` (and visible through `ancestry`) cut `block` off.
    pub fn truncated_since(&self, ancestry: &Ancestry, file: u64, block: u64, after_seq: u64) -> bool {
        ancestry.steps.iter().any(|&(num, max_seq)| {
            self.by_num[&num]
                .namespace
                .truncated_between(file, block, after_seq, max_seq)
        })
    }

    /// Brings the path index of timeline `num` up to date with `file`'s newest state there.
    pub fn update_path(&mut self, num: u32, file: u64) {
        if !self.has_ancestry(num) {
            return;
        }
        let ancestry = self.ancestry(num, ReadAt::Latest);
        let path = self.file_at(&ancestry, file).map(|(_, s)| s.path.clone());
        if let Some(tl) = self.by_num.get_mut(&num) {
            tl.paths.set(file, path.as_deref());
        }
    }

    /// Rebuilds the path index of timeline `num` from scratch (a new branch; after recovery,
    /// which applies namespace records in no particular order).
    pub fn rebuild_paths(&mut self, num: u32) {
        if !self.has_ancestry(num) {
            return;
        }
        let mut paths = PathIndex::default();
        for f in self.list_files(&self.ancestry(num, ReadAt::Latest)) {
            paths.set(f.id, Some(&f.path));
        }
        if let Some(tl) = self.by_num.get_mut(&num) {
            tl.paths = paths;
        }
    }

    /// Whether `num` and all its ancestors are known: replay may meet a child before its parent,
    /// and damage may have taken a creation record. Only such timelines have an [`Ancestry`].
    pub fn has_ancestry(&self, num: u32) -> bool {
        let mut current = num;
        loop {
            match self.by_num.get(&current) {
                None => return false,
                Some(tl) => match tl.parent {
                    None => return true,
                    Some(p) => current = p,
                },
            }
        }
    }

    pub fn rebuild_all_paths(&mut self) {
        let nums: Vec<u32> = self.by_num.keys().copied().collect();
        for num in nums {
            self.rebuild_paths(num);
        }
    }

    /// All files visible through `ancestry`, by id.
    pub fn list_files(&self, ancestry: &Ancestry) -> Vec<FileInfo> {
        let mut ids: Vec<u64> = ancestry
            .steps
            .iter()
            .flat_map(|&(num, _)| self.by_num[&num].namespace.file_ids())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| self.file_at(ancestry, id).map(|(seq, s)| file_info(id, seq, s)))
            .collect()
    }

    /// The live page file holding InnoDB space `space` as seen through `ancestry`.
    pub fn file_of_space(&self, ancestry: &Ancestry, space: u32) -> Option<u64> {
        ancestry
            .steps
            .iter()
            .flat_map(|&(num, _)| self.by_num[&num].namespace.files_with_space(space))
            .copied()
            .filter_map(|id| {
                let (seq, state) = self.file_at(ancestry, id)?;
                (state.space_id == Some(space)).then_some((seq, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// The marker a branch at `lsn` starts from: the newest whose `log_end_lsn_at_write <= lsn`
    /// (DESIGN.md section 5).
    pub fn marker_for_lsn(&self, num: u32, lsn: u64) -> Option<CheckpointMarker> {
        self.by_num[&num]
            .markers
            .iter()
            .filter(|m| m.log_end_lsn_at_write <= lsn)
            .max_by_key(|m| (m.checkpoint_lsn, m.page_store_seq))
            .copied()
    }
}
