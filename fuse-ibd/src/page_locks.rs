//! Page atomicity (DESIGN.md invariant 4): a write covering a 16 KiB page excludes every reader
//! of that page, so nobody sees half of it. Locks are striped by (inode, page) so memory stays
//! fixed however large the files are; stripes are taken in ascending order, so writes spanning
//! several pages cannot deadlock.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use ibd_format::page::PAGE_SIZE;

const STRIPES: usize = 4096;

pub struct PageLocks {
    stripes: Box<[RwLock<()>]>,
}

/// Held for as long as the pages must stay locked.
pub struct PageReadGuards<'a> {
    _guards: Vec<RwLockReadGuard<'a, ()>>,
}

pub struct PageWriteGuards<'a> {
    _guards: Vec<RwLockWriteGuard<'a, ()>>,
}

impl Default for PageLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }
}

impl PageLocks {
    /// The distinct stripes covering bytes `[offset, offset + len)` of inode `ino`, ascending.
    fn stripes_for(&self, ino: u64, offset: u64, len: u64) -> Vec<usize> {
        let first = offset / PAGE_SIZE as u64;
        let last = (offset + len.max(1) - 1) / PAGE_SIZE as u64;
        let mut stripes: Vec<usize> = (first..=last.min(first + STRIPES as u64))
            .map(|page| (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ page) as usize % STRIPES)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
    }

    pub fn read(&self, ino: u64, offset: u64, len: u64) -> PageReadGuards<'_> {
        let guards = self
            .stripes_for(ino, offset, len)
            .into_iter()
            .map(|s| read_lock(&self.stripes[s]))
            .collect();
        PageReadGuards { _guards: guards }
    }

    pub fn write(&self, ino: u64, offset: u64, len: u64) -> PageWriteGuards<'_> {
        let guards = self
            .stripes_for(ino, offset, len)
            .into_iter()
            .map(|s| write_lock(&self.stripes[s]))
            .collect();
        PageWriteGuards { _guards: guards }
    }
}

// A poisoned stripe only means another thread panicked while holding it; the lock protects no
// data of its own, so carry on.
fn read_lock(l: &RwLock<()>) -> RwLockReadGuard<'_, ()> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock(l: &RwLock<()>) -> RwLockWriteGuard<'_, ()> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    const P: u64 = PAGE_SIZE as u64;

    /// Whether a reader of `[offset, offset + len)` of inode 7 is kept out while a writer holds
    /// page 1.
    fn reader_blocked_by_page1_writer(offset: u64, len: u64) -> bool {
        let locks = Arc::new(PageLocks::default());
        let writer = locks.write(7, P, P);
        let got_in = Arc::new(AtomicBool::new(false));
        let reader = {
            let (locks, got_in) = (locks.clone(), got_in.clone());
            std::thread::spawn(move || {
                let _r = locks.read(7, offset, len);
                got_in.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let blocked = !got_in.load(Ordering::SeqCst);
        drop(writer);
        reader.join().unwrap();
        assert!(
            got_in.load(Ordering::SeqCst),
            "the reader gets in once the writer is done"
        );
        blocked
    }

    #[test]
    fn a_page_being_written_excludes_its_readers_only() {
        assert!(
            reader_blocked_by_page1_writer(P + 100, 10),
            "a reader inside the page must wait"
        );
        assert!(
            reader_blocked_by_page1_writer(P - 1, 2),
            "a read spanning into it must wait"
        );
        assert!(
            !reader_blocked_by_page1_writer(0, 10),
            "the page before is not blocked"
        );
        assert!(
            !reader_blocked_by_page1_writer(5 * P, 10),
            "other pages are not blocked"
        );
    }

    #[test]
    fn stripes_are_sorted_distinct_and_cover_every_page() {
        let locks = PageLocks::default();
        let s = locks.stripes_for(7, 16384 * 3 + 100, 16384 * 2);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(!s.is_empty() && s.len() <= 3);
        assert_eq!(locks.stripes_for(7, 0, 16384).len(), 1);
        assert_eq!(locks.stripes_for(7, 0, 0).len(), 1);
    }
}
