//! The in-memory index: for each page, its versions (sorted by seq) and where each one lives;
//! and where the live metadata records are.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::record::MetaKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub timeline: u32,
    pub file: u64,
    pub block: u64,
}

/// A record's place on disk: segment, byte offset of the record, and the bytes it accounts for
/// there while live (the record and its share of its batch's trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

impl Location {
    /// Whether both name the same record (a record is identified by where it starts).
    pub fn same_record(&self, other: &Location) -> bool {
        self.segment == other.segment && self.offset == other.offset
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageVersion {
    pub seq: u64,
    pub lsn: u64,
    pub crc32c: u32,
    pub image_len: u32,
    pub written_at_ms: u64,
    pub location: Location,
    /// The image failed its CRC-32C when the record was scanned: never serve it.
    pub damaged: bool,
}

#[derive(Debug, Default)]
pub struct PageIndex {
    pages: HashMap<PageKey, Vec<PageVersion>>,
    versions: usize,
}

impl PageIndex {
    /// Adds a version; returns the one it replaces (same page and seq: a replayed or compacted copy).
    pub fn insert(&mut self, key: PageKey, version: PageVersion) -> Option<PageVersion> {
        let versions = self.pages.entry(key).or_default();
        // Versions almost always arrive in seq order: check the end first.
        let pos = match versions.last() {
            Some(last) if last.seq < version.seq => Err(versions.len()),
            _ => versions.binary_search_by_key(&version.seq, |v| v.seq),
        };
        match pos {
            Ok(i) => Some(std::mem::replace(&mut versions[i], version)),
            Err(i) => {
                versions.insert(i, version);
                self.versions += 1;
                None
            }
        }
    }

    /// The newest version with seq <= `max_seq` and page LSN <= `max_lsn`.
    pub fn find(&self, key: &PageKey, max_seq: u64, max_lsn: u64) -> Option<&PageVersion> {
        let versions = self.pages.get(key)?;
        let n = versions.partition_point(|v| v.seq <= max_seq);
        versions[..n].iter().rev().find(|v| v.lsn <= max_lsn)
    }

    pub fn versions(&self, key: &PageKey) -> &[PageVersion] {
        self.pages.get(key).map_or(&[], Vec::as_slice)
    }

    /// Moves a version to `to` if it still lives at `from` (compaction copied it).
    pub fn relocate(&mut self, key: &PageKey, seq: u64, from: Location, to: Location) -> bool {
        let Some(versions) = self.pages.get_mut(key) else {
            return false;
        };
        match versions.binary_search_by_key(&seq, |v| v.seq) {
            Ok(i) if versions[i].location.same_record(&from) => {
                versions[i].location = to;
                true
            }
            _ => false,
        }
    }

    /// Whether this exact record is a live version.
    pub fn is_live(&self, key: &PageKey, seq: u64, at: Location) -> bool {
        self.pages.get(key).is_some_and(|versions| {
            versions
                .binary_search_by_key(&seq, |v| v.seq)
                .is_ok_and(|i| versions[i].location.same_record(&at))
        })
    }

    /// Drops the versions of `key` that `keep` (one decision per version, as listed by
    /// [`PageIndex::pages`]) refuses; calls `dropped` for each.
    pub fn drop_versions(&mut self, key: &PageKey, keep: &[bool], mut dropped: impl FnMut(&PageVersion)) {
        let Some(versions) = self.pages.get_mut(key) else {
            return;
        };
        assert_eq!(versions.len(), keep.len(), "one decision per version");
        let mut decision = keep.iter();
        let before = versions.len();
        versions.retain(|v| {
            let kept = *decision.next().expect("one decision per version");
            if !kept {
                dropped(v);
            }
            kept
        });
        self.versions -= before - versions.len();
        if versions.is_empty() {
            self.pages.remove(key);
        }
    }

    /// Every page with all its versions.
    pub fn pages(&self) -> impl Iterator<Item = (&PageKey, &[PageVersion])> {
        self.pages.iter().map(|(k, v)| (k, v.as_slice()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PageKey, &PageVersion)> {
        self.pages
            .iter()
            .flat_map(|(key, versions)| versions.iter().map(move |v| (key, v)))
    }

    /// Number of versions held.
    pub fn len(&self) -> usize {
        self.versions
    }
}

/// The live metadata record of each [`MetaKey`] and where it is.
#[derive(Debug, Default)]
pub struct MetaIndex {
    live: HashMap<MetaKey, MetaEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaEntry {
    pub rank: (u64, u64),
    pub location: Location,
}

/// What [`MetaIndex::insert`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaChange {
    /// The new record is live; the one it supersedes (if any) is not any more.
    Live { superseded: Option<Location> },
    /// Nothing: a record of higher rank is live (the new one is dead on arrival), or the new one
    /// is the live one already.
    None,
}

impl MetaIndex {
    pub fn insert(&mut self, key: MetaKey, entry: MetaEntry) -> MetaChange {
        match self.live.entry(key) {
            Entry::Vacant(e) => {
                e.insert(entry);
                MetaChange::Live { superseded: None }
            }
            Entry::Occupied(e)
                if e.get().rank > entry.rank || e.get().location.same_record(&entry.location) =>
            {
                MetaChange::None
            }
            Entry::Occupied(mut e) => MetaChange::Live {
                superseded: Some(e.insert(entry).location),
            },
        }
    }

    /// Whether the record at `at` is the live one of `key`.
    pub fn is_live(&self, key: &MetaKey, at: Location) -> bool {
        self.live.get(key).is_some_and(|e| e.location.same_record(&at))
    }

    /// Moves the live record of `key` to `to` if it still is at `from` (compaction copied it).
    pub fn relocate(&mut self, key: &MetaKey, from: Location, to: Location) -> bool {
        match self.live.get_mut(key) {
            Some(e) if e.location.same_record(&from) => {
                e.location = to;
                true
            }
            _ => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&MetaKey, &MetaEntry)> {
        self.live.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: PageKey = PageKey {
        timeline: 1,
        file: 1,
        block: 0,
    };

    fn version(seq: u64, lsn: u64) -> PageVersion {
        PageVersion {
            seq,
            lsn,
            crc32c: 0,
            image_len: 0,
            written_at_ms: 0,
            location: Location {
                segment: 1,
                offset: seq,
                len: 1,
            },
            damaged: false,
        }
    }

    #[test]
    fn find_honours_seq_and_lsn_bounds() {
        let mut index = PageIndex::default();
        for (seq, lsn) in [(5, 50), (2, 20), (9, 90)] {
            assert!(index.insert(KEY, version(seq, lsn)).is_none());
        }
        assert_eq!(index.len(), 3);
        assert_eq!(index.find(&KEY, u64::MAX, u64::MAX).unwrap().seq, 9);
        assert_eq!(index.find(&KEY, 8, u64::MAX).unwrap().seq, 5);
        assert_eq!(index.find(&KEY, u64::MAX, 49).unwrap().seq, 2);
        assert!(index.find(&KEY, 1, u64::MAX).is_none());
        assert!(
            index.insert(KEY, version(5, 50)).is_some(),
            "a duplicate replaces"
        );
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn retain_and_relocate() {
        let mut index = PageIndex::default();
        for seq in 1..=4 {
            index.insert(KEY, version(seq, seq));
        }
        let mut dropped = Vec::new();
        index.drop_versions(&KEY, &[false, true, false, true], |v| dropped.push(v.seq));
        assert_eq!(dropped, vec![1, 3]);
        assert_eq!(index.len(), 2);
        let from = version(2, 2).location;
        let to = Location {
            segment: 2,
            offset: 0,
            len: 1,
        };
        assert!(index.relocate(&KEY, 2, from, to));
        assert!(!index.relocate(&KEY, 2, from, to), "already moved");
        assert!(index.is_live(&KEY, 2, to));
    }
}
