//! The local cache of shipped files (page and generic files): which of their 16 KiB blocks the
//! backing tree holds, which it may drop, and which a read should fetch ahead.
//!
//! The backing files are the cache: a block the cache does not hold is a hole in its file and is
//! listed in the file's *absent* set; reading it fetches it from the pageserver. Blocks holding
//! local data are *resident* and kept in an LRU with the upload ticket of their newest write:
//! only a block whose ticket is durable may be evicted (DESIGN.md invariant 3: a dirty page is
//! never dropped before the pageserver has it). Eviction punches the hole.
//!
//! The absent sets are persisted (`absent-blocks` in the cache dir) *before* any hole is punched,
//! so after a daemon crash every hole is known: the next mount re-uploads only blocks that hold
//! data, and fetches the rest. A block listed absent that was fetched (or written and never made
//! durable) since the last save is simply fetched again: its durable version is on the pageserver.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use lru::LruCache;

/// Shipping and caching granularity: a page of page files, a block of generic files.
pub const BLOCK: u64 = ibd_format::page::PAGE_SIZE as u64;

/// The largest read-ahead window, in blocks (1 MiB, one pageserver batch).
const MAX_READ_AHEAD: u64 = 64;

/// Eviction brings the cache down to this fraction of its budget, so it does not run per block.
const LOW_WATER_PERCENT: u64 = 90;

const MAP_MAGIC: &[u8; 8] = b"IBDABS01";

/// Block numbers of one file, as a bitmap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockSet {
    words: Vec<u64>,
    count: usize,
}

impl BlockSet {
    /// Blocks `0..blocks`.
    pub fn all(blocks: u64) -> Self {
        let mut words = vec![u64::MAX; blocks.div_ceil(64) as usize];
        if blocks % 64 != 0 {
            *words.last_mut().expect("non-empty") = (1u64 << (blocks % 64)) - 1;
        }
        Self {
            words,
            count: blocks as usize,
        }
    }

    pub fn contains(&self, block: u64) -> bool {
        self.words
            .get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    pub fn insert(&mut self, block: u64) {
        let word = (block / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & (1 << (block % 64)) == 0 {
            self.words[word] |= 1 << (block % 64);
            self.count += 1;
        }
    }

    pub fn remove(&mut self, block: u64) {
        if let Some(w) = self.words.get_mut((block / 64) as usize) {
            if *w & (1 << (block % 64)) != 0 {
                *w &= !(1 << (block % 64));
                self.count -= 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Forgets every block from `blocks` on (the file was truncated to that many blocks).
    pub fn truncate(&mut self, blocks: u64) {
        for b in blocks..self.words.len() as u64 * 64 {
            self.remove(b);
        }
        self.words.truncate(blocks.div_ceil(64) as usize);
    }
}

/// A block of a shipped file: (pageserver file id, block number).
pub type BlockId = (u64, u64);

struct CacheState {
    /// Blocks whose data is only on the pageserver, by file id.
    absent: HashMap<u64, BlockSet>,
    /// Blocks holding local data, least recently used last, with the upload ticket of their
    /// newest local write (0: as fetched or found at start, so the pageserver has it).
    resident: LruCache<BlockId, u64>,
    /// Sequential readers, by file: the block the next read would start at, and the current
    /// read-ahead window.
    streams: HashMap<u64, (u64, u64)>,
}

impl CacheState {
    /// Forgets the resident blocks `gone(file, block)` picks (they no longer exist).
    fn drop_resident(&mut self, gone: impl Fn(u64, u64) -> bool) {
        let keys: Vec<BlockId> = self
            .resident
            .iter()
            .map(|(k, _)| *k)
            .filter(|&(file, block)| gone(file, block))
            .collect();
        for key in keys {
            self.resident.pop(&key);
        }
    }
}

/// What the cache holds and may drop. Locks: the caller holds the page lock of a block while it
/// changes the block's residency, so a block is never fetched and evicted at the same time.
pub struct PageCache {
    state: Mutex<CacheState>,
    /// Signalled when the cache grows past its budget.
    grown: Condvar,
    budget: u64,
    map_path: PathBuf,
}

impl PageCache {
    /// A cache of `budget` bytes whose absent sets live in `cache_dir`. Loads the saved sets,
    /// if any (a cache that was being hydrated or had evicted blocks).
    pub fn open(cache_dir: &Path, budget: u64) -> std::io::Result<Self> {
        let map_path = cache_dir.join("absent-blocks");
        let absent = match fs::read(&map_path) {
            Ok(bytes) => decode_map(&bytes).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged: the cache's holes are unknown; mount on an empty --cache-dir",
                        map_path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            state: Mutex::new(CacheState {
                absent,
                resident: LruCache::unbounded(),
                streams: HashMap::new(),
            }),
            grown: Condvar::new(),
            budget,
            map_path,
        })
    }

    fn state(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn resident_bytes(&self) -> u64 {
        self.state().resident.len() as u64 * BLOCK
    }

    /// Whether any block of `[first, last]` of file `id` is absent.
    pub fn any_absent(&self, id: u64, first: u64, last: u64) -> bool {
        let state = self.state();
        let Some(set) = state.absent.get(&id) else {
            return false;
        };
        !set.is_empty() && (first..=last).any(|b| set.contains(b))
    }

    /// Absent blocks of `[first, last]` except those wholly inside `overwritten` (bytes about to
    /// be replaced).
    pub fn absent_in(&self, id: u64, first: u64, last: u64, overwritten: Option<(u64, u64)>) -> Vec<u64> {
        let state = self.state();
        let Some(set) = state.absent.get(&id) else {
            return Vec::new();
        };
        (first..=last)
            .filter(|&b| set.contains(b))
            .filter(|&b| overwritten.is_none_or(|(o, l)| b * BLOCK < o || (b + 1) * BLOCK > o + l))
            .collect()
    }

    /// What a read of `[first, last]` of file `id` (of `blocks` blocks) should fetch: its absent
    /// blocks, plus absent blocks ahead of it while the file is read sequentially (the window
    /// doubling up to 1 MiB). Returns the blocks and the last block of the range they lie in.
    pub fn plan_read(&self, id: u64, first: u64, last: u64, blocks: u64) -> (Vec<u64>, u64) {
        let mut state = self.state();
        let (next, window) = state.streams.get(&id).copied().unwrap_or((u64::MAX, 0));
        let window = if first == next && first > 0 {
            (window * 2).clamp(4, MAX_READ_AHEAD)
        } else {
            0
        };
        state.streams.insert(id, (last + 1, window));
        let Some(set) = state.absent.get(&id).filter(|s| !s.is_empty()) else {
            return (Vec::new(), last);
        };
        if !(first..=last).any(|b| set.contains(b)) {
            return (Vec::new(), last);
        }
        let end = (last + window).min(blocks.saturating_sub(1)).max(last);
        ((first..=end).filter(|&b| set.contains(b)).collect(), end)
    }

    /// Blocks fetched from the pageserver now hold their data locally.
    pub fn fetched(&self, id: u64, blocks: &[u64]) {
        let mut state = self.state();
        if let Some(set) = state.absent.get_mut(&id) {
            blocks.iter().for_each(|&b| set.remove(b));
        }
        for &block in blocks {
            // A block written meanwhile keeps its (newer) ticket.
            if state.resident.get(&(id, block)).is_none() {
                state.resident.put((id, block), 0);
            }
        }
        self.note_growth(&state);
    }

    /// Block `block` of file `id` was written locally; `ticket` makes it durable.
    pub fn written(&self, id: u64, block: u64, ticket: u64) {
        let mut state = self.state();
        if let Some(set) = state.absent.get_mut(&id) {
            set.remove(block);
        }
        state.resident.put((id, block), ticket);
        self.note_growth(&state);
    }

    fn note_growth(&self, state: &CacheState) {
        if state.resident.len() as u64 * BLOCK > self.budget {
            self.grown.notify_one();
        }
    }

    /// A file whose blocks `absent` are on the pageserver only (a fresh node's file).
    pub fn track_absent(&self, id: u64, absent: BlockSet) {
        self.state().absent.insert(id, absent);
    }

    /// Blocks of file `id` below `blocks` that hold local data (not absent), found at start.
    pub fn load_resident(&self, id: u64, blocks: u64) {
        let mut state = self.state();
        let CacheState { absent, resident, .. } = &mut *state;
        let absent = absent.get(&id);
        for block in (0..blocks).filter(|&b| absent.is_none_or(|a| !a.contains(b))) {
            resident.put((id, block), 0);
        }
    }

    /// The saved absent set of file `id` (used at start, before anything is served).
    pub fn saved_absent(&self, id: u64) -> Option<BlockSet> {
        self.state().absent.get(&id).cloned()
    }

    /// Drops what the saved sets say about files that are not (or no longer) local.
    pub fn retain_files(&self, keep: impl Fn(u64) -> bool) {
        let mut state = self.state();
        state.absent.retain(|id, _| keep(*id));
    }

    /// File `id` was unlinked.
    pub fn forget(&self, id: u64) {
        let mut state = self.state();
        state.absent.remove(&id);
        state.streams.remove(&id);
        state.drop_resident(|file, _| file == id);
    }

    /// File `id` was truncated to `blocks` blocks.
    pub fn truncate(&self, id: u64, blocks: u64) {
        let mut state = self.state();
        if let Some(set) = state.absent.get_mut(&id) {
            set.truncate(blocks);
        }
        state.drop_resident(|file, block| file == id && block >= blocks);
    }

    /// Waits up to `timeout` for the cache to outgrow its budget; true if it has.
    pub fn wait_over_budget(&self, timeout: Duration) -> bool {
        let over = |s: &CacheState| s.resident.len() as u64 * BLOCK > self.budget;
        let state = self.state();
        if over(&state) {
            return true;
        }
        let (state, _) = self
            .grown
            .wait_timeout(state, timeout)
            .unwrap_or_else(|e| e.into_inner());
        over(&state)
    }

    /// Least recently used blocks whose newest write is durable (`ticket <= durable`), enough to
    /// bring the cache to its low-water mark.
    pub fn eviction_candidates(&self, durable: u64) -> Vec<BlockId> {
        let state = self.state();
        let low_water = self.budget / BLOCK * LOW_WATER_PERCENT / 100;
        let excess = (state.resident.len() as u64).saturating_sub(low_water) as usize;
        state
            .resident
            .iter()
            .rev()
            .filter(|(_, &ticket)| ticket <= durable)
            .map(|(k, _)| *k)
            .take(excess)
            .collect()
    }

    /// Saves the absent sets, with `also` counted as absent: called before their holes are
    /// punched, so a crash can never leave a hole the saved sets do not list.
    pub fn save(&self, also: &[BlockId]) -> std::io::Result<()> {
        let bytes = {
            let state = self.state();
            let mut absent = state.absent.clone();
            for &(id, block) in also {
                absent.entry(id).or_default().insert(block);
            }
            encode_map(&absent)
        };
        let tmp = self.map_path.with_extension("tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &self.map_path)?;
        if let Some(dir) = self.map_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Block `(id, block)` is about to become a hole (the caller holds its page lock and has saved
    /// it as absent): true, and it is absent from now on, unless it was written after `durable`
    /// or is no longer resident.
    pub fn evict(&self, (id, block): BlockId, durable: u64) -> bool {
        let mut state = self.state();
        match state.resident.peek(&(id, block)) {
            Some(&ticket) if ticket <= durable => {
                state.resident.pop(&(id, block));
                state.absent.entry(id).or_default().insert(block);
                true
            }
            _ => false,
        }
    }
}

/// `MAGIC, entries: u64, then per file: id u64, words u64, the words; CRC-32C of all that`.
fn encode_map(absent: &HashMap<u64, BlockSet>) -> Vec<u8> {
    let mut out = MAP_MAGIC.to_vec();
    let sets: Vec<_> = absent.iter().filter(|(_, s)| !s.is_empty()).collect();
    out.extend_from_slice(&(sets.len() as u64).to_le_bytes());
    for (id, set) in sets {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(set.words.len() as u64).to_le_bytes());
        set.words
            .iter()
            .for_each(|w| out.extend_from_slice(&w.to_le_bytes()));
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_map(bytes: &[u8]) -> Option<HashMap<u64, BlockSet>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if !body.starts_with(MAP_MAGIC) || crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let mut words = body[MAP_MAGIC.len()..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
    let mut map = HashMap::new();
    for _ in 0..words.next()? {
        let id = words.next()?;
        let n = usize::try_from(words.next()?).ok()?;
        let set: Vec<u64> = words.by_ref().take(n).collect();
        if set.len() != n {
            return None;
        }
        let count = set.iter().map(|w| w.count_ones() as usize).sum();
        map.insert(id, BlockSet { words: set, count });
    }
    words.next().is_none().then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PageCache {
        fn is_absent(&self, id: u64, block: u64) -> bool {
            self.state().absent.get(&id).is_some_and(|s| s.contains(block))
        }
    }

    #[test]
    fn block_sets_track_membership_and_truncation() {
        let mut set = BlockSet::all(130);
        assert_eq!(set.len(), 130);
        assert!(set.contains(0) && set.contains(129) && !set.contains(130));
        set.remove(5);
        set.remove(5);
        assert_eq!(set.len(), 129);
        set.truncate(64);
        assert_eq!(set.len(), 63);
        assert!(!set.contains(100));
        set.insert(200);
        assert!(set.contains(200) && set.len() == 64);
        assert!(BlockSet::all(0).is_empty());
    }

    #[test]
    fn eviction_takes_the_least_recently_used_durable_blocks_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PageCache::open(dir.path(), 10 * BLOCK).unwrap();
        for block in 0..12 {
            // Blocks 0..12 written under tickets 1..=12; block 3 read again (recently used).
            cache.written(1, block, block + 1);
        }
        cache.fetched(1, &[3]);
        assert!(cache.wait_over_budget(Duration::ZERO));
        // Low water is 9 blocks: 3 must go. Only tickets <= 2 are durable: blocks 0 and 1.
        assert_eq!(cache.eviction_candidates(2), vec![(1, 0), (1, 1)]);
        // Everything durable: the three least recently used, block 3 being recent.
        assert_eq!(cache.eviction_candidates(12), vec![(1, 0), (1, 1), (1, 2)]);

        assert!(cache.evict((1, 0), 12));
        assert!(cache.is_absent(1, 0));
        cache.written(1, 1, 13);
        assert!(
            !cache.evict((1, 1), 12),
            "rewritten after the candidates were picked"
        );
        assert!(!cache.is_absent(1, 1));
        assert_eq!(cache.resident_bytes(), 11 * BLOCK);
    }

    #[test]
    fn saved_absent_sets_survive_reopening_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PageCache::open(dir.path(), BLOCK).unwrap();
        cache.track_absent(7, BlockSet::all(100));
        cache.fetched(7, &[0, 99]);
        cache.save(&[(8, 3)]).unwrap();

        let reopened = PageCache::open(dir.path(), BLOCK).unwrap();
        let seven = reopened.saved_absent(7).unwrap();
        assert_eq!(seven.len(), 98);
        assert!(!seven.contains(0) && seven.contains(1) && !seven.contains(99));
        assert!(reopened.is_absent(8, 3) && !reopened.is_absent(8, 2));

        let path = dir.path().join("absent-blocks");
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = PageCache::open(dir.path(), BLOCK)
            .err()
            .expect("damaged map refused");
        assert!(err.to_string().contains("empty --cache-dir"), "{err}");
    }

    #[test]
    fn reads_fetch_their_absent_blocks_and_more_while_sequential() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PageCache::open(dir.path(), BLOCK).unwrap();
        cache.track_absent(1, BlockSet::all(1000));
        cache.written(1, 13, 0);
        let plan = |first, blocks| {
            let (fetch, end) = cache.plan_read(1, first, first, blocks);
            cache.fetched(1, &fetch);
            (fetch.len(), end)
        };
        assert_eq!(plan(10, 1000), (1, 10), "first read: no history");
        assert_eq!(
            plan(11, 1000),
            (4, 15),
            "sequential: window 4 (block 13 holds local data)"
        );
        assert_eq!(
            plan(12, 1000),
            (0, 12),
            "block 12 was fetched ahead: nothing to do"
        );
        assert_eq!(plan(13, 1000), (0, 13), "block 13 holds local data");
        assert_eq!(
            plan(16, 1000),
            (1, 16),
            "a jump (14 and 15 skipped) resets the window"
        );
        assert_eq!(plan(17, 1000), (5, 21), "block 17 and four ahead");
        assert_eq!(plan(500, 501), (1, 500));
        assert_eq!(plan(501, 502), (1, 501), "never past the end of the file");
        let (fetch, _) = cache.plan_read(2, 0, 0, 10);
        assert!(fetch.is_empty(), "a file without absent blocks");
    }
}
