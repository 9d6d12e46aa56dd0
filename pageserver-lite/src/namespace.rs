//! The files of a timeline, versioned by sequence number like the pages.
//!
//! Every change (create, rename, resize, set space id, unlink) is a new [`FileVersion`] with the
//! timeline's next sequence number, so the namespace "at seq S" is as well defined as the pages.
//! A shrinking resize remembers its new size: a block at or past it reads as zeros afterwards until
//! written again, even where an older version of that block exists.

use std::collections::HashMap;

use ibd_api::pageserver::{FileInfo, FileKind, BLOCK_SIZE};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    pub space_id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    pub seq: u64,
    /// None: unlinked.
    pub state: Option<FileState>,
    pub truncated_to: Option<u64>,
    /// Commit time, milliseconds since the Unix epoch (GC of unlinked files honours retention).
    pub at_ms: u64,
}

/// One timeline's own namespace changes (an ancestor's are found through the ancestry).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Namespace {
    files: HashMap<u64, Vec<FileVersion>>,
    /// Every file that ever had a given space id, to find a page by (space id, page no).
    by_space: HashMap<u32, Vec<u64>>,
}

impl Namespace {
    /// Adds a version (kept sorted by seq; a replayed duplicate replaces itself).
    pub fn apply(&mut self, file: u64, version: FileVersion) {
        if let Some(space) = version.state.as_ref().and_then(|s| s.space_id) {
            let files = self.by_space.entry(space).or_default();
            if !files.contains(&file) {
                files.push(file);
            }
        }
        let versions = self.files.entry(file).or_default();
        match versions.binary_search_by_key(&version.seq, |v| v.seq) {
            Ok(i) => versions[i] = version,
            Err(i) => versions.insert(i, version),
        }
    }

    /// The newest version of `file` with seq <= `max_seq`.
    pub fn version_at(&self, file: u64, max_seq: u64) -> Option<&FileVersion> {
        let versions = self.files.get(&file)?;
        let n = versions.partition_point(|v| v.seq <= max_seq);
        n.checked_sub(1).map(|i| &versions[i])
    }

    /// Whether a resize with seq in (`after_seq`, `max_seq`] cut the file at or before `block`.
    pub fn truncated_between(&self, file: u64, block: u64, after_seq: u64, max_seq: u64) -> bool {
        self.files.get(&file).is_some_and(|versions| {
            versions.iter().any(|v| {
                v.seq > after_seq
                    && v.seq <= max_seq
                    && v.truncated_to
                        .is_some_and(|size| size <= block * BLOCK_SIZE as u64)
            })
        })
    }

    pub fn file_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.files.keys().copied()
    }

    pub fn files_with_space(&self, space: u32) -> &[u64] {
        self.by_space.get(&space).map_or(&[], Vec::as_slice)
    }
}

/// Which live file has which path in the newest state of a timeline (its own files and those it
/// sees of its ancestors): paths are unique among live files. Derived from the namespaces, never
/// stored.
#[derive(Debug, Clone, Default)]
pub struct PathIndex {
    by_path: HashMap<String, u64>,
    by_file: HashMap<u64, String>,
}

impl PathIndex {
    /// Records `file`'s path now (None: unlinked).
    pub fn set(&mut self, file: u64, path: Option<&str>) {
        if let Some(old) = self.by_file.remove(&file) {
            if self.by_path.get(&old) == Some(&file) {
                self.by_path.remove(&old);
            }
        }
        if let Some(path) = path {
            self.by_path.insert(path.to_string(), file);
            self.by_file.insert(file, path.to_string());
        }
    }

    /// The live file at `path`.
    pub fn get(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }
}

/// The wire form of a file as of one of its versions.
pub fn file_info(id: u64, seq: u64, state: &FileState) -> FileInfo {
    FileInfo {
        id,
        path: state.path.clone(),
        kind: state.kind,
        size: state.size,
        space_id: state.space_id,
        seq,
    }
}
