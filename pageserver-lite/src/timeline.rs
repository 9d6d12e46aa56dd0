//! Timelines: a history of page and namespace versions, optionally branched off a parent.
//!
//! Sequence numbers are per timeline and monotonic; a child's own numbers start right after its
//! branch point, so "seq <= S" means the same thing along a whole ancestry: on a child, the newest
//! version with seq <= S is the child's own if it has one, else the parent's at
//! `min(S, branch_seq)`, and so on up. Creating a branch copies nothing.

use std::collections::{BTreeMap, HashMap};

use ibd_api::pageserver::{CheckpointMarker, FileInfo, ReadAt, TimelineInfo};
use serde::{Deserialize, Serialize};

use crate::namespace::{file_info, FileState, FileVersion, Namespace};

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
}

impl Timelines {
    /// Rebuilds the id lookup after deserialization.
    pub fn reindex(&mut self) {
        self.by_id = self.by_num.values().map(|t| (t.id.clone(), t.num)).collect();
    }

    pub fn insert(&mut self, timeline: Timeline) {
        self.by_id.insert(timeline.id.clone(), timeline.num);
        self.by_num.insert(timeline.num, timeline);
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

    /// The ancestry a read of `num` at `at` looks through.
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
    pub fn branch_points(&self) -> HashMap<u32, Vec<u64>> {
        let mut points: HashMap<u32, Vec<u64>> = HashMap::new();
        for tl in self.by_num.values().filter(|t| t.parent.is_some()) {
            for &(ancestor, seq) in &self.ancestry(tl.num, ReadAt::Latest).steps[1..] {
                points.entry(ancestor).or_default().push(seq);
            }
        }
        points
    }

    pub fn info(&self, tl: &Timeline) -> TimelineInfo {
        TimelineInfo {
            id: tl.id.clone(),
            parent: tl.parent.map(|p| self.by_num[&p].id.clone()),
            branch_seq: tl.parent.map(|_| tl.branch_seq),
            branch_lsn: tl.branch_lsn,
            term: tl.term,
            last_seq: tl.last_seq,
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
    /// A timeline this store does not know (its creation record was lost to damage) has no
    /// namespace: nothing of it counts as unlinked, so GC keeps its versions.
    pub fn unlinked(&self, num: u32, file: u64) -> Option<(u64, u64)> {
        if !self.by_num.contains_key(&num) {
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
