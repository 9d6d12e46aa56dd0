//! The next segment file, written as zeros and fdatasynced ahead of need, in the background.
//!
//! An fdatasync after a write that extends a file also has to persist the file's size and block
//! allocation (on ext4 without a journal: the inode and bitmap blocks, each its own I/O); after a
//! write over blocks that already hold data it persists only the data. On the 2-core VM this
//! project is benchmarked on, a 2 KiB write + fdatasync takes 120-150 µs over zeros against
//! 200-230 µs when it appends. So a segment starts as a file of zeros renamed into place (the
//! records overwrite them; a scan ends the segment's WAL where only zeros follow), as WAL
//! stores usually do (PostgreSQL zero-fills its segments; InnoDB's redo log is one fixed file).
//!
//! A spare is made once a writer arrives (a term is granted) and after every roll, not for
//! timelines nobody writes. If none is ready when a segment starts (a writer's first ~30 ms, or
//! WAL arriving faster than 16 MiB of zeros can be written), the segment starts empty and grows
//! as before: slower commits, never a wait.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The ready spare in the WAL directory (not a segment name: scans never see it).
const SPARE_FILE: &str = "spare";
/// Where a spare is written (`spare.tmp.<n>`, a name no other preparation uses, so a thread left
/// over from an earlier open of the directory never renames another's unfinished file); renamed
/// to [`SPARE_FILE`] once zeroed and synced.
const PREPARING_PREFIX: &str = "spare.tmp";
static PREPARATIONS: AtomicU64 = AtomicU64::new(0);

pub struct SpareSegment {
    dir: PathBuf,
    size: u64,
    /// A preparation thread is running: one at a time per store (one spare is all a roll takes).
    preparing: Arc<AtomicBool>,
}

impl SpareSegment {
    /// Forgets unfinished spares (a crash while zeroing) and one of another size (the segment
    /// size changed). A failure here only costs speed: it is logged, never fatal.
    pub fn open(dir: &Path, size: u64) -> Self {
        if let Err(e) = forget_unusable(dir, size) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot clean up zeroed WAL segments");
        }
        Self {
            dir: dir.to_path_buf(),
            size,
            preparing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Renames the ready spare to `segment` (never over an existing file); `false` if none is
    /// ready. The caller syncs the directory (the spare's zeros and size were synced when it was
    /// made).
    pub fn take(&self, segment: &Path) -> io::Result<bool> {
        match rename_noreplace(&self.dir.join(SPARE_FILE), segment) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts making a spare on its own thread, unless one is ready or being made.
    pub fn prepare_in_background(&self) {
        if self.dir.join(SPARE_FILE).exists() || self.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (dir, size, preparing) = (self.dir.clone(), self.size, self.preparing.clone());
        let spawned = std::thread::Builder::new()
            .name("walsync-spare".into())
            .spawn(move || {
                let preparing_path = dir.join(format!(
                    "{PREPARING_PREFIX}.{}",
                    PREPARATIONS.fetch_add(1, Ordering::Relaxed)
                ));
                if let Err(e) = prepare(&preparing_path, &dir.join(SPARE_FILE), size) {
                    // The next segment starts empty instead: slower commits, nothing lost.
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot prepare a zeroed WAL segment");
                    let _ = fs::remove_file(&preparing_path);
                }
                preparing.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the thread that prepares zeroed WAL segments");
            self.preparing.store(false, Ordering::Release);
        }
    }

    /// Waits until no spare is being made (tests).
    #[cfg(test)]
    pub fn wait_prepared(&self) {
        while self.preparing.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

fn prepare(preparing: &Path, spare: &Path, size: u64) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(preparing)?;
    // Written, not fallocated: fallocated blocks are "unwritten" extents, and the first write to
    // each converts it, a metadata change that every fdatasync would have to persist again.
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_data()?;
    fs::rename(preparing, spare)
}

fn forget_unusable(dir: &Path, size: u64) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let stale_size = name == SPARE_FILE && entry.metadata()?.len() != size;
        if stale_size || name.as_bytes().starts_with(PREPARING_PREFIX.as_bytes()) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// `rename(2)` that fails with `EEXIST` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where the trailing run of zero bytes starts (a pre-zeroed segment's unused tail).
pub fn zero_tail_start(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_zeros_of_the_segment_size_and_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let spare = SpareSegment::open(dir.path(), 3 << 20);
        let segment = dir.path().join("0000000000000000.seg");
        assert!(!spare.take(&segment).unwrap(), "none made yet");
        spare.prepare_in_background();
        spare.wait_prepared();
        assert!(spare.take(&segment).unwrap());
        let bytes = fs::read(&segment).unwrap();
        assert_eq!(bytes.len(), 3 << 20);
        assert_eq!(zero_tail_start(&bytes), 0);
        assert!(!spare.take(&dir.path().join("x.seg")).unwrap(), "taken already");
    }

    #[test]
    fn unfinished_spares_and_one_of_another_size_are_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("spare.tmp.7"), [0u8; 10]).unwrap();
        fs::write(dir.path().join(SPARE_FILE), [0u8; 10]).unwrap();
        let spare = SpareSegment::open(dir.path(), 20);
        assert!(!dir.path().join("spare.tmp.7").exists());
        assert!(!spare.take(&dir.path().join("a.seg")).unwrap());

        fs::write(dir.path().join(SPARE_FILE), [0u8; 20]).unwrap();
        let spare = SpareSegment::open(dir.path(), 20);
        assert!(
            spare.take(&dir.path().join("b.seg")).unwrap(),
            "the right size is kept"
        );
    }

    #[test]
    fn a_spare_never_replaces_an_existing_segment() {
        let dir = tempfile::tempdir().unwrap();
        let spare = SpareSegment::open(dir.path(), 20);
        fs::write(dir.path().join(SPARE_FILE), [0u8; 20]).unwrap();
        let segment = dir.path().join("a.seg");
        fs::write(&segment, b"records").unwrap();
        assert_eq!(
            spare.take(&segment).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read(&segment).unwrap(), b"records");
    }

    #[test]
    fn the_zero_tail_starts_after_the_last_non_zero_byte() {
        assert_eq!(zero_tail_start(&[]), 0);
        assert_eq!(zero_tail_start(&[0, 0]), 0);
        assert_eq!(zero_tail_start(&[1, 0, 2, 0, 0]), 3);
        assert_eq!(zero_tail_start(&[1, 2]), 2);
    }
}
