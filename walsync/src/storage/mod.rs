//! On-disk state of a timeline: WAL segments ([`wal`], [`segment`], [`index`], [`spare`]), the
//! metadata file
//! with parent, term and geometry ([`meta`]), and the checkpoint history ([`checkpoints`]).

pub mod checkpoints;
pub mod index;
pub mod meta;
pub mod segment;
pub mod spare;
pub mod wal;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Makes entries created, renamed or removed in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file, durably.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("file path has a parent");
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}
