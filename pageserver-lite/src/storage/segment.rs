//! Segment files: `<data-dir>/segments/<id as 16 hex digits>.seg`, append-only, one active at a
//! time. Readers hold an `Arc<File>` so a segment removed by compaction stays readable for a read
//! already under way (the inode lives until the last descriptor closes).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
pub struct Segment {
    pub file: Arc<File>,
    /// Bytes written (and, for every segment but the active one during a commit, durable).
    pub len: u64,
    /// Bytes of page records the index still points at.
    pub live_bytes: u64,
}

#[derive(Debug)]
pub struct Segments {
    map: BTreeMap<u64, Segment>,
}

impl Segments {
    /// Opens every segment in `dir` (created if missing).
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut map = BTreeMap::new();
        for id in list(dir)? {
            let file = OpenOptions::new().read(true).write(true).open(path(dir, id))?;
            let len = file.metadata()?.len();
            map.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    len,
                    live_bytes: 0,
                },
            );
        }
        Ok(Self { map })
    }

    /// The id the next segment gets.
    pub fn next_id(&self) -> u64 {
        self.map.keys().next_back().map_or(1, |id| id + 1)
    }

    /// Registers a segment created with [`create`].
    pub fn insert(&mut self, id: u64, file: Arc<File>) {
        self.map.insert(
            id,
            Segment {
                file,
                len: 0,
                live_bytes: 0,
            },
        );
    }

    /// Forgets a segment (its file is removed with [`remove_file`], outside any lock).
    pub fn forget(&mut self, id: u64) {
        self.map.remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<&Segment> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Segment> {
        self.map.get_mut(&id)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.map.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Segment)> {
        self.map.iter().map(|(id, s)| (*id, s))
    }

    pub fn total_bytes(&self) -> u64 {
        self.map.values().map(|s| s.len).sum()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// Creates segment `id`, empty, and makes its name durable.
pub fn create(dir: &Path, id: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path(dir, id))?;
    sync_dir(dir)?;
    Ok(file)
}

pub fn remove_file(dir: &Path, id: u64) -> io::Result<()> {
    std::fs::remove_file(path(dir, id))?;
    sync_dir(dir)
}

/// Appends `buf` at `offset` (the segment's end) and makes it durable: one `fdatasync` for a
/// whole group commit.
pub fn append_durable(file: &File, offset: u64, buf: &[u8]) -> io::Result<()> {
    file.write_all_at(buf, offset)?;
    file.sync_data()
}

/// Cuts a segment back to `len` bytes (a torn tail), durably.
pub fn truncate(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.sync_all()
}

/// Reads a whole segment (start-up scans and compaction read sequentially).
pub fn read_all(dir: &Path, id: u64) -> io::Result<Vec<u8>> {
    std::fs::read(path(dir, id))
}

pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

/// Segment ids present in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(id) = u64::from_str_radix(stem, 16) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `pread` of exactly `len` bytes.
pub fn read_exact_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
