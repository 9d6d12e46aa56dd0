//! The filesystem core: every operation the mount answers, driven without a kernel (the FUSE
//! adapter in `fuse.rs` only converts arguments and replies).
//!
//! Files live in a backing tree under the cache directory, one backing file per datadir file
//! (sparse where never written). This is the local layer of the cache; page shipping and redo
//! tailing hook into the write and fsync paths of the file kinds that need them.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::{BlockSet, PageCache, BLOCK};
use crate::error::{FsError, FsResult};
use crate::inode::{InodeTable, CONTROL_DIR_INO, ROOT_INO, STATUS_FILE_INO};
use crate::kind::FileKind;
use crate::metrics::Metrics;
use crate::page_locks::PageLocks;
use crate::page_ship::PageShipper;
use crate::redo_tail::{RedoEvent, RedoTailer};
use crate::wal_ship::WalShipper;

pub const CONTROL_DIR_NAME: &str = ".fuse-ibd";
pub const STATUS_FILE_NAME: &str = "status";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// What `stat` shows for an entry.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: EntryKind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
}

/// The caller of an operation that creates something: the new entry belongs to it.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Changes requested by `setattr` (chmod, chown, truncate, utimes).
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// An open file as the kernel should treat it.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    pub kind: FileKind,
    /// Bypass the kernel page cache: every read and write reaches the daemon. Always for page
    /// files and the redo log (coherence between O_DIRECT and buffered opens of the same file,
    /// and every log write must be seen); for other files when opened with O_DIRECT.
    pub direct_io: bool,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: EntryKind,
    pub name: std::ffi::OsString,
}

#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// `fallocate` modes a datadir needs (`research/fuse.md` 4.4); anything else is refused.
pub const FALLOC_KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
pub const FALLOC_PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;

enum Handle {
    File(OpenFile),
    /// A snapshot of `.fuse-ibd/status` taken at open, so one reader sees one consistent text.
    Status(Vec<u8>),
}

struct OpenFile {
    file: File,
    ino: u64,
    kind: FileKind,
    /// The file's id on the pageserver, when its blocks are shipped there.
    remote: Option<u64>,
}

impl Handle {
    /// The open file, for operations the status file does not support.
    fn open_file(&self) -> FsResult<&OpenFile> {
        match self {
            Handle::File(f) => Ok(f),
            Handle::Status(_) => Err(FsError::ReadOnly(".fuse-ibd/status")),
        }
    }
}

/// Where the mount is and what it serves; shown in `.fuse-ibd/status`.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub datadir: PathBuf,
    pub cache_dir: PathBuf,
    /// Owner of the mount point before mounting: a fresh node's files are given to it, so a
    /// server running as `mysql` finds its datadir as `mariadb-install-db` left it.
    pub owner: Owner,
}

pub struct Datadir {
    backing: PathBuf,
    info: MountInfo,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    page_locks: PageLocks,
    metrics: Arc<Metrics>,
    started: SystemTime,
    /// One tail per redo log inode (`ib_logfile0`, and `ib_logfile101` during a resize).
    redo: Mutex<HashMap<u64, RedoTailer>>,
    /// Where complete redo goes; `None` keeps the log local only.
    wal: Option<WalShipper>,
    /// Where page and generic files go; `None` keeps them local only.
    pages: Option<PageShipper>,
    /// Which blocks of shipped files the backing tree holds (with `pages`).
    cache: Option<PageCache>,
    /// Held (shared) while eviction maps file ids to backing paths, (exclusive) while names change.
    namespace: RwLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The tables stay consistent between statements; a panic elsewhere must not wedge the mount.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_lock(l: &RwLock<()>) -> std::sync::RwLockWriteGuard<'_, ()> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn cstring(path: &Path) -> FsResult<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| FsError::BadName)
}

fn check_name(name: &OsStr) -> FsResult<()> {
    if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
        return Err(FsError::BadName);
    }
    Ok(())
}

fn cvt(ret: libc::c_int, op: &'static str) -> FsResult<()> {
    if ret == -1 {
        return Err(FsError::io(op)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Gives `dir` and everything under it to `owner`.
fn chown_tree(dir: &Path, owner: Owner) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(owner.uid), Some(owner.gid))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), owner)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(owner.uid), Some(owner.gid))?;
        }
    }
    Ok(())
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Every regular file under `dir`, as (path relative to `root`, size).
fn walk_files(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk_files(root, &entry.path(), out)?;
        } else if meta.is_file() {
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            out.push((rel, meta.len()));
        }
    }
    Ok(())
}

fn entry_kind(ft: fs::FileType) -> EntryKind {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        EntryKind::Directory
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_socket() {
        EntryKind::Socket
    } else if ft.is_char_device() {
        EntryKind::CharDevice
    } else if ft.is_block_device() {
        EntryKind::BlockDevice
    } else {
        EntryKind::File
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn attr_of(ino: u64, m: &fs::Metadata) -> Attr {
    Attr {
        ino,
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        kind: entry_kind(m.file_type()),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
    }
}

impl Datadir {
    /// Serves the tree under `backing` (created if missing).
    pub fn new(backing: PathBuf, info: MountInfo, metrics: Arc<Metrics>) -> FsResult<Self> {
        if !backing.exists() {
            // The datadir's root: the owner may write, others may look (mariadb-install-db
            // tightens it to 0700 anyway).
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&backing)
                .map_err(FsError::io("create backing tree"))?;
        }
        Ok(Self {
            backing,
            info,
            inodes: Mutex::new(InodeTable::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            page_locks: PageLocks::default(),
            metrics,
            started: SystemTime::now(),
            redo: Mutex::new(HashMap::new()),
            wal: None,
            pages: None,
            cache: None,
            namespace: RwLock::new(()),
        })
    }

    /// Ships page and generic files to the pageserver and makes their fsyncs wait for it
    /// (invariant 2). Brings the timeline in line with the local files first (see `reconcile`).
    /// The cache holds at most `cache_size` bytes of these files' blocks, evicting blocks the
    /// pageserver has (see [`Datadir::evict`]).
    pub fn with_page_shipper(mut self, shipper: PageShipper, cache_size: u64) -> FsResult<Self> {
        self.pages = Some(shipper);
        self.cache = Some(
            PageCache::open(&self.info.cache_dir, cache_size).map_err(FsError::io("open the cache map"))?,
        );
        self.reconcile()?;
        Ok(self)
    }

    /// Marker written when the mount stopped with every upload durable.
    fn clean_marker(&self) -> PathBuf {
        self.info.cache_dir.join("clean-unmount")
    }

    /// Local files the timeline does not know are registered and uploaded; after an unclean stop
    /// (dirty blocks may not have reached the pageserver) every local block holding data is
    /// uploaded again; the holes the saved absent sets list are fetched when read. A timeline
    /// holding files the cache lacks needs a fresh-node mount, which this version refuses rather
    /// than serve a partial datadir.
    fn reconcile(&self) -> FsResult<()> {
        let (Some(pages), Some(cache)) = (&self.pages, &self.cache) else {
            return Ok(());
        };
        let clean = self.clean_marker().exists();
        let _ = fs::remove_file(self.clean_marker());
        let mut local = Vec::new();
        walk_files(&self.backing, &self.backing, &mut local).map_err(FsError::io("scan the cache"))?;
        local.retain(|(p, _)| FileKind::of(Path::new(p).file_name().unwrap_or_default()).is_shipped());
        let materializing = self.hydrating_marker().exists();
        if materializing || (local.is_empty() && !pages.all_files().is_empty()) {
            return self.materialize(pages, cache, materializing);
        }
        let remote = Self::page_error("reconcile with the pageserver");
        let missing: Vec<String> = pages
            .all_files()
            .into_iter()
            .map(|f| f.path)
            .filter(|p| !local.iter().any(|(l, _)| l == p))
            .collect();
        if !missing.is_empty() {
            return Err(FsError::Remote {
                op: "mount",
                message: format!(
                    "the timeline has {} file(s) this cache lacks (e.g. {}): mount a fresh node on an empty --cache-dir",
                    missing.len(),
                    missing[0]
                ),
            });
        }
        let known: std::collections::HashSet<u64> = local
            .iter()
            .filter_map(|(p, _)| pages.file(p))
            .map(|f| f.id)
            .collect();
        cache.retain_files(|id| known.contains(&id));
        for (path, size) in local {
            let kind = FileKind::of(std::path::Path::new(&path).file_name().unwrap_or_default());
            let (id, upload) = match pages.file(&path) {
                Some(f) => (f.id, !clean),
                None => (pages.create(&path, kind, size).map_err(remote)?, true),
            };
            let blocks = size.div_ceil(BLOCK);
            cache.load_resident(id, blocks);
            if upload {
                let absent = cache.saved_absent(id).unwrap_or_default();
                let file = File::open(self.backing.join(&path)).map_err(FsError::io("open for upload"))?;
                for block in (0..blocks).filter(|&b| !absent.contains(b)) {
                    self.queue_block(pages, &file, kind, id, block, None)?;
                }
            }
            pages.set_size(id, size).map_err(remote)?;
        }
        let ticket = pages.current_ticket();
        pages.wait_durable(ticket).map_err(remote)
    }

    /// Marker of a fresh-node mount that has not finished laying out its files: a mount finding
    /// it after a daemon crash starts over.
    fn hydrating_marker(&self) -> PathBuf {
        self.info.cache_dir.join("hydrating")
    }

    /// A fresh node: every file of the timeline as a sparse local file whose blocks are fetched
    /// on first use, and `ib_logfile0` synthesized from walsync (header with the timeline's
    /// geometry, its latest checkpoint, the durable WAL from there): MariaDB's own crash recovery
    /// then brings the datadir to walsync's durable LSN.
    fn materialize(&self, pages: &PageShipper, cache: &PageCache, restart: bool) -> FsResult<()> {
        if restart {
            tracing::warn!("an earlier fresh-node mount did not finish hydrating: starting over from the storage services");
            fs::remove_dir_all(&self.backing).map_err(FsError::io("wipe the cache"))?;
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&self.backing)
                .map_err(FsError::io("create backing tree"))?;
        }
        File::create(self.hydrating_marker()).map_err(FsError::io("mark the cache as hydrating"))?;
        let files: Vec<_> = pages
            .all_files()
            .into_iter()
            .filter(|f| {
                matches!(
                    f.kind,
                    ibd_api::pageserver::FileKind::Page | ibd_api::pageserver::FileKind::Generic
                )
            })
            .collect();
        // Every block is a hole with its data on the pageserver; saved before the holes exist.
        cache.retain_files(|_| false);
        for f in &files {
            cache.track_absent(f.id, BlockSet::all(f.size.div_ceil(BLOCK)));
        }
        cache.save(&[]).map_err(FsError::io("save the cache map"))?;
        for f in &files {
            let path = self.backing.join(&f.path);
            if let Some(dir) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(FsError::io("create directory"))?;
            }
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o660)
                .open(&path)
                .map_err(FsError::io("create file"))?;
            file.set_len(f.size).map_err(FsError::io("size file"))?;
        }
        self.synthesize_log()?;
        chown_tree(&self.backing, self.info.owner)
            .map_err(FsError::io("give the files to the datadir's owner"))?;
        fs::remove_file(self.hydrating_marker()).map_err(FsError::io("finish the fresh-node layout"))?;
        tracing::info!(
            files = files.len(),
            "fresh node: files laid out (pages come from the pageserver on first use)"
        );
        Ok(())
    }

    /// `ib_logfile0` for a fresh node: header with the timeline's geometry, its latest checkpoint,
    /// the durable WAL from there. MariaDB's own crash recovery then brings the datadir to
    /// walsync's durable LSN.
    fn synthesize_log(&self) -> FsResult<()> {
        let Some(wal) = &self.wal else {
            tracing::warn!(
                "fresh node without --walsync: the datadir has no redo log and MariaDB will not start"
            );
            return Ok(());
        };
        let log = wal.recovery_log().map_err(|e| FsError::Remote {
            op: "fresh node",
            message: e.to_string(),
        })?;
        let Some(log) = log else { return Ok(()) };
        let end = log.end_lsn();
        let extents = log.extents().map_err(|e| FsError::Remote {
            op: "synthesize ib_logfile0",
            message: e.to_string(),
        })?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o660)
            .open(self.backing.join("ib_logfile0"))
            .map_err(FsError::io("create ib_logfile0"))?;
        file.set_len(log.geometry.file_size)
            .map_err(FsError::io("size ib_logfile0"))?;
        for (offset, bytes) in extents {
            file.write_all_at(&bytes, offset)
                .map_err(FsError::io("write ib_logfile0"))?;
        }
        file.sync_all().map_err(FsError::io("sync ib_logfile0"))?;
        tracing::info!(
            checkpoint_lsn = log.checkpoint.checkpoint_lsn,
            end_lsn = end,
            "fresh node: ib_logfile0 synthesized from walsync"
        );
        Ok(())
    }

    /// Fetches the blocks of `[offset, offset + len)` the cache does not hold, except those lying
    /// wholly inside `overwritten` (about to be replaced); a read (`overwritten` None) also
    /// fetches ahead while the file is read sequentially. Holds the pages' lock while installing
    /// and re-checks under it, so a concurrent write is never replaced by older data. Returns
    /// whether it fetched anything.
    fn hydrate(
        &self,
        id: u64,
        file: &File,
        ino: u64,
        offset: u64,
        len: u64,
        overwritten: Option<(u64, u64)>,
    ) -> FsResult<bool> {
        let (Some(pages), Some(cache)) = (&self.pages, &self.cache) else {
            return Ok(false);
        };
        let (first, last) = (offset / BLOCK, (offset + len.max(1) - 1) / BLOCK);
        let (planned, end) = match overwritten {
            None => cache.plan_read(id, first, last, u64::MAX),
            Some(_) => (cache.absent_in(id, first, last, overwritten), last),
        };
        if planned.is_empty() {
            return Ok(false);
        }
        // Read-ahead stops at the end of the file.
        let file_blocks = file
            .metadata()
            .map_err(FsError::io("fstat"))?
            .len()
            .div_ceil(BLOCK);
        let end = end.min(file_blocks.saturating_sub(1)).max(last);
        let _pages = self
            .page_locks
            .write(ino, first * BLOCK, (end - first + 1) * BLOCK);
        let blocks = cache.absent_in(id, first, end, overwritten);
        if blocks.is_empty() {
            return Ok(false);
        }
        let images = pages
            .fetch(id, &blocks)
            .map_err(Self::page_error("read from the pageserver"))?;
        let size = file.metadata().map_err(FsError::io("fstat"))?.len();
        for (block, image) in blocks.iter().zip(images) {
            let n = image.len().min(size.saturating_sub(block * BLOCK) as usize);
            file.write_all_at(&image[..n], block * BLOCK)
                .map_err(FsError::io("install fetched block"))?;
        }
        cache.fetched(id, &blocks);
        Ok(true)
    }

    /// Queues block `block` of a shipped file for upload and notes it as written in the cache;
    /// `image` when the caller has the whole block, else it is read from the backing file (the
    /// caller holds the page's lock).
    fn queue_block(
        &self,
        pages: &PageShipper,
        file: &File,
        kind: FileKind,
        id: u64,
        block: u64,
        image: Option<&[u8]>,
    ) -> FsResult<()> {
        let image = match image {
            Some(image) => bytes::Bytes::copy_from_slice(image),
            None => {
                let mut buf = vec![0u8; BLOCK as usize];
                let filled = read_full_at(file, &mut buf, block * BLOCK)
                    .map_err(FsError::io("read block for upload"))?;
                // The pageserver stores page files in whole pages: a page file's short last block
                // (a write split by the kernel, ending mid-page at the end of the file) goes with
                // its zero tail; the file's size is sent apart. Generic files keep their length.
                if kind != FileKind::Page {
                    buf.truncate(filled);
                }
                bytes::Bytes::from(buf)
            }
        };
        let lsn = if kind == FileKind::Page {
            ibd_format::page::page_lsn(&image)
        } else {
            0
        };
        let ticket = pages.dirty(id, block, lsn, image);
        if let Some(cache) = &self.cache {
            cache.written(id, block, ticket);
        }
        Ok(())
    }

    /// Evicts until the cache is back under its budget, as far as durable blocks allow; then
    /// waits for it to grow again. Runs on its own thread for the life of the mount.
    pub fn run_evictor(&self) {
        let Some(cache) = &self.cache else { return };
        loop {
            if cache.wait_over_budget(Duration::from_secs(1)) {
                match self.evict() {
                    // Nothing durable to drop yet: give the uploads time.
                    Ok(0) => std::thread::sleep(Duration::from_millis(100)),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cache eviction failed; retrying in 5 s");
                        std::thread::sleep(Duration::from_secs(5));
                    }
                }
            }
            self.metrics
                .set_cache_resident(cache.resident_bytes(), cache.budget());
        }
    }

    /// One round of eviction: the least recently used blocks the pageserver has durably become
    /// holes (invariant 3). Their absence is saved before any hole is punched. Returns how many
    /// blocks were evicted.
    pub fn evict(&self) -> FsResult<u64> {
        let (Some(pages), Some(cache)) = (&self.pages, &self.cache) else {
            return Ok(0);
        };
        let durable = pages.durable_ticket();
        let candidates = cache.eviction_candidates(durable);
        if candidates.is_empty() {
            return Ok(0);
        }
        cache
            .save(&candidates)
            .map_err(FsError::io("save the cache map"))?;
        let mut by_file: HashMap<u64, Vec<u64>> = HashMap::new();
        candidates
            .iter()
            .for_each(|&(id, block)| by_file.entry(id).or_default().push(block));
        // Names stay put while a file id is mapped to its backing file.
        let _names = self.namespace.read().unwrap_or_else(|e| e.into_inner());
        let mut evicted = 0;
        for (id, blocks) in by_file {
            let Some(info) = pages.path_of(id) else { continue };
            let file = match OpenOptions::new().write(true).open(self.backing.join(&info.path)) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(FsError::io("open for eviction")(e)),
            };
            let ino = self.ino_of(Path::new(&info.path));
            for block in blocks {
                let _page = self.page_locks.write(ino, block * BLOCK, BLOCK);
                if !cache.evict((id, block), durable) {
                    continue;
                }
                // SAFETY: `file` is open; fallocate has no memory arguments.
                cvt(
                    unsafe {
                        libc::fallocate(
                            file.as_raw_fd(),
                            FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE,
                            (block * BLOCK) as i64,
                            BLOCK as i64,
                        )
                    },
                    "punch an evicted block",
                )?;
                evicted += 1;
            }
        }
        self.metrics.record_evictions(evicted);
        tracing::debug!(evicted, resident = cache.resident_bytes(), "cache eviction");
        Ok(evicted)
    }

    /// The inode of the backing file at relative `path`.
    fn ino_of(&self, path: &Path) -> u64 {
        let mut inodes = lock(&self.inodes);
        path.iter()
            .fold(ROOT_INO, |parent, name| inodes.get_or_insert(parent, name))
    }

    /// Called when the filesystem is unmounted: waits for the uploads, saves what the cache holds,
    /// then notes the clean stop.
    pub fn shutdown(&self) {
        let (Some(pages), Some(cache)) = (&self.pages, &self.cache) else {
            return;
        };
        if let Err(e) = cache.save(&[]) {
            tracing::warn!(error = %e, "cannot save the cache map: the next mount fetches blocks again");
        }
        match pages.wait_durable(pages.current_ticket()) {
            Ok(()) => {
                if let Err(e) = File::create(self.clean_marker()) {
                    tracing::warn!(error = %e, "cannot record the clean unmount");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "unmounting with page uploads not durable: the next mount uploads everything again")
            }
        }
    }

    fn relative(&self, path: &std::path::Path) -> String {
        path.strip_prefix(&self.backing)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    fn page_error(op: &'static str) -> impl Fn(crate::page_ship::PageShipError) -> FsError + Copy {
        move |e| FsError::Remote {
            op,
            message: e.to_string(),
        }
    }

    /// Ships complete redo to walsync and makes log fsyncs wait for it (invariant 1).
    pub fn with_wal_shipper(mut self, shipper: WalShipper) -> Self {
        self.wal = Some(shipper);
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn path_of(&self, ino: u64) -> FsResult<PathBuf> {
        let rel = lock(&self.inodes).relative_path(ino).ok_or(FsError::NotFound)?;
        Ok(self.backing.join(rel))
    }

    fn child_path(&self, parent: u64, name: &OsStr) -> FsResult<PathBuf> {
        check_name(name)?;
        Ok(self.path_of(parent)?.join(name))
    }

    fn is_virtual(ino: u64) -> bool {
        ino == CONTROL_DIR_INO || ino == STATUS_FILE_INO
    }

    fn virtual_attr(&self, ino: u64) -> Attr {
        let (kind, perm, size) = if ino == CONTROL_DIR_INO {
            (EntryKind::Directory, 0o555, 0)
        } else {
            (EntryKind::File, 0o444, self.status_text().len() as u64)
        };
        Attr {
            ino,
            size,
            blocks: 0,
            atime: self.started,
            mtime: SystemTime::now(),
            ctime: self.started,
            kind,
            perm,
            nlink: if kind == EntryKind::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        match (parent, name.to_str()) {
            (ROOT_INO, Some(CONTROL_DIR_NAME)) => return Ok(self.virtual_attr(CONTROL_DIR_INO)),
            (CONTROL_DIR_INO, Some(STATUS_FILE_NAME)) => return Ok(self.virtual_attr(STATUS_FILE_INO)),
            (CONTROL_DIR_INO, _) => return Err(FsError::NotFound),
            _ => {}
        }
        let path = self.child_path(parent, name)?;
        let meta = fs::symlink_metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FsError::NotFound,
            _ => FsError::io("lookup")(e),
        })?;
        let ino = lock(&self.inodes).get_or_insert(parent, name);
        Ok(attr_of(ino, &meta))
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if Self::is_virtual(ino) {
            return Ok(self.virtual_attr(ino));
        }
        let meta = fs::symlink_metadata(self.path_of(ino)?).map_err(FsError::io("getattr"))?;
        Ok(attr_of(ino, &meta))
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, change: SetAttr) -> FsResult<Attr> {
        if Self::is_virtual(ino) {
            return Err(FsError::ReadOnly(".fuse-ibd"));
        }
        let path = self.path_of(ino)?;
        if let Some(mode) = change.mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(FsError::io("chmod"))?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            std::os::unix::fs::lchown(&path, change.uid, change.gid).map_err(FsError::io("chown"))?;
        }
        if change.size.is_some() || change.atime.is_some() || change.mtime.is_some() {
            let file = match fh.and_then(|fh| self.handle(fh).ok()) {
                Some(h) => h.open_file()?.file.try_clone().map_err(FsError::io("dup"))?,
                None => OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(FsError::io("open for setattr"))?,
            };
            if let Some(size) = change.size {
                let remote = self
                    .pages
                    .as_ref()
                    .and_then(|p| p.file(&self.relative(&path)))
                    .map(|f| f.id);
                if let (Some(id), true) = (remote, size % BLOCK != 0) {
                    // The block the new end cuts through keeps its (remote) head.
                    self.hydrate(id, &file, ino, size, 1, None)?;
                }
                // A truncate may cut through a page: exclude its readers like a write does.
                let _pages = self.page_locks.write(ino, size, u64::MAX / 2 - size);
                file.set_len(size).map_err(FsError::io("truncate"))?;
                if let (Some(id), Some(cache)) = (remote, &self.cache) {
                    // Blocks past the new end are gone; the ones before keep their state.
                    cache.truncate(id, size.div_ceil(BLOCK));
                }
                if let Some(pages) = &self.pages {
                    if let Some(f) = pages.file(&self.relative(&path)) {
                        let kind = FileKind::of(path.file_name().unwrap_or_default());
                        if size % BLOCK != 0 {
                            self.queue_block(pages, &file, kind, f.id, size / BLOCK, None)?;
                        }
                        pages.set_size(f.id, size).map_err(Self::page_error("truncate"))?;
                    }
                }
            }
            let mut times = fs::FileTimes::new();
            if let Some(t) = change.atime {
                times = times.set_accessed(t);
            }
            if let Some(t) = change.mtime {
                times = times.set_modified(t);
            }
            file.set_times(times).map_err(FsError::io("utimes"))?;
        }
        self.getattr(ino)
    }

    fn chown_new(&self, path: &Path, owner: Owner) -> FsResult<()> {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
            .map_err(FsError::io("chown new entry"))
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, owner: Owner) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(&path)
            .map_err(FsError::io("mkdir"))?;
        self.chown_new(&path, owner)?;
        self.lookup(parent, name)
    }

    pub fn mknod(&self, parent: u64, name: &OsStr, mode: u32, rdev: u32, owner: Owner) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        // SAFETY: the path is a valid NUL-terminated string; mknod has no other preconditions.
        cvt(
            unsafe { libc::mknod(cstring(&path)?.as_ptr(), mode, libc::dev_t::from(rdev)) },
            "mknod",
        )?;
        self.chown_new(&path, owner)?;
        self.lookup(parent, name)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let _names = write_lock(&self.namespace);
        fs::remove_file(&path).map_err(FsError::io("unlink"))?;
        lock(&self.inodes).remove(parent, name);
        if let Some(pages) = &self.pages {
            let rel = self.relative(&path);
            if let (Some(f), Some(cache)) = (pages.file(&rel), &self.cache) {
                cache.forget(f.id);
            }
            pages.unlink(&rel).map_err(Self::page_error("unlink"))?;
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        fs::remove_dir(&path).map_err(FsError::io("rmdir"))?;
        lock(&self.inodes).remove(parent, name);
        Ok(())
    }

    /// `renameat2()` with the caller's flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if Self::is_virtual(parent) || Self::is_virtual(new_parent) {
            return Err(FsError::ReadOnly(".fuse-ibd"));
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if exchange && self.pages.is_some() {
            // Not used by MariaDB; swapping two names on the pageserver is not one operation.
            return Err(FsError::Unsupported("RENAME_EXCHANGE with page shipping"));
        }
        let (from_path, to_path) = (
            self.child_path(parent, name)?,
            self.child_path(new_parent, new_name)?,
        );
        let (from, to) = (cstring(&from_path)?, cstring(&to_path)?);
        let _names = write_lock(&self.namespace);
        // SAFETY: both paths are valid NUL-terminated strings; AT_FDCWD with absolute paths.
        let ret =
            unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
        cvt(ret, "rename")?;
        {
            let mut inodes = lock(&self.inodes);
            if exchange {
                inodes.exchange((parent, name), (new_parent, new_name));
            } else {
                inodes.rename(parent, name, new_parent, new_name);
            }
        }
        if let Some(pages) = &self.pages {
            let (from_rel, to_rel) = (self.relative(&from_path), self.relative(&to_path));
            let replaced = pages
                .rename(&from_rel, &to_rel)
                .map_err(Self::page_error("rename"))?;
            if let Some(cache) = &self.cache {
                replaced.into_iter().for_each(|id| cache.forget(id));
            }
        }
        Ok(())
    }

    fn open_backing(&self, path: &Path, flags: i32, create_mode: Option<u32>) -> FsResult<File> {
        let mut opts = OpenOptions::new();
        // Every backing fd can read and write, whatever the caller asked for (the kernel enforces
        // the caller's access mode): a partial write is shipped as the whole block it leaves, read
        // back from the file, and a read on a fresh node installs the blocks it fetched.
        opts.read(true).write(true);
        // O_DIRECT and O_APPEND are the kernel's business: our buffers are not aligned, and the
        // kernel sends absolute offsets. O_SYNC/O_DSYNC writes are made durable in `write`.
        let passthrough = flags & (libc::O_TRUNC | libc::O_EXCL | libc::O_NOFOLLOW);
        opts.custom_flags(passthrough);
        if let Some(mode) = create_mode {
            opts.create(true).mode(mode & 0o7777);
        }
        opts.open(path).map_err(FsError::io("open"))
    }

    fn register(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(handle));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    /// Starts tailing a redo log the first time it is opened: an existing log is picked up where
    /// recovery would find its end; a new one when its header is written. With walsync, an
    /// existing log is first brought in line with what walsync holds.
    fn track_redo(&self, ino: u64, file: &File) -> FsResult<()> {
        if lock(&self.redo).contains_key(&ino) {
            return Ok(());
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &*file, &mut bytes).map_err(FsError::io("read redo log"))?;
        let mut tailer = RedoTailer::from_existing(&bytes).unwrap_or_default();
        if let Some(wal) = &self.wal {
            self.align_with_walsync(&mut tailer, wal, file);
        }
        lock(&self.redo).entry(ino).or_insert(tailer);
        Ok(())
    }

    /// The next log write ships from where walsync's durable WAL ends: from the checkpoint (with
    /// the geometry and checkpoint) for an empty timeline, from its durable LSN after an unclean
    /// stop left it behind the local log.
    fn align_with_walsync(&self, tailer: &mut RedoTailer, wal: &WalShipper, file: &File) {
        let (Some(geometry), Some(complete), Some(checkpoint)) =
            (tailer.geometry(), tailer.complete_lsn(), tailer.checkpoint())
        else {
            return;
        };
        let resume = match wal.durable_lsn() {
            None => {
                wal.submit(vec![
                    RedoEvent::Geometry {
                        geometry,
                        creator: "adopted by fuse-ibd".into(),
                    },
                    RedoEvent::Checkpoint {
                        slot: ibd_format::redo::CheckpointSlot::First,
                        checkpoint,
                    },
                ]);
                checkpoint.checkpoint_lsn
            }
            Some(durable) if durable < complete => durable,
            Some(durable) => {
                if durable > complete {
                    tracing::warn!(durable, complete, "walsync holds more redo than the local log");
                }
                return;
            }
        };
        if !tailer.rewind_to(resume) {
            tracing::error!(
                resume,
                complete,
                "redo walsync lacks is no longer in the local log"
            );
            return;
        }
        tracing::info!(
            from = resume,
            to = complete,
            "shipping redo walsync does not have yet"
        );
        match tailer.catch_up(file, complete) {
            Ok(events) => wal.submit(events),
            Err(e) => tracing::error!(error = %e, "reading the redo walsync lacks"),
        }
    }

    /// Feeds a completed write of a redo log to its tail, records what it revealed and hands it
    /// to the shipper.
    fn tail_redo(&self, ino: u64, file: &File, offset: u64, len: u64) {
        let mut tails = lock(&self.redo);
        let shipped = tails
            .iter()
            .filter(|(other, _)| **other != ino)
            .filter_map(|(_, t)| t.complete_lsn())
            .max();
        let tailer = tails.entry(ino).or_default();
        let events = match tailer.on_write(file, offset, len, shipped) {
            Ok(events) => events,
            Err(e) => {
                // The write itself succeeded locally; a log we cannot parse is the server's
                // business at its next recovery, but it must be loud.
                tracing::error!(error = %e, "redo log tail");
                self.metrics.record_op("redo_tail", 0.0, Some(libc::EIO));
                return;
            }
        };
        let complete_lsn = tailer.complete_lsn();
        if let Some(lsn) = complete_lsn {
            self.metrics.set_redo_complete_lsn(lsn);
        }
        drop(tails);
        for event in &events {
            match event {
                RedoEvent::Geometry { geometry, creator } => {
                    tracing::info!(first_lsn = geometry.first_lsn, file_size = geometry.file_size, %creator, "new redo log");
                }
                RedoEvent::Checkpoint { checkpoint, .. } => {
                    self.metrics.record_redo_checkpoint(checkpoint.checkpoint_lsn);
                    if let Some(pages) = &self.pages {
                        pages.record_checkpoint(*checkpoint, complete_lsn.unwrap_or(checkpoint.end_lsn));
                    }
                }
                RedoEvent::Wal { bytes, mtrs, .. } => {
                    self.metrics.record_redo_complete(bytes.len(), mtrs.len())
                }
            }
        }
        if let Some(wal) = &self.wal {
            wal.submit(events);
        }
    }

    fn opened(&self, file: File, ino: u64, kind: FileKind, flags: i32, remote: Option<u64>) -> Opened {
        let direct_io = matches!(kind, FileKind::Page | FileKind::Redo) || flags & libc::O_DIRECT != 0;
        let fh = self.register(Handle::File(OpenFile {
            file,
            ino,
            kind,
            remote,
        }));
        Opened { fh, kind, direct_io }
    }

    /// The pageserver id of a shipped file at `path` (page and generic files only).
    fn remote_id(&self, path: &Path, kind: FileKind) -> Option<u64> {
        let pages = self.pages.as_ref()?;
        if !kind.is_shipped() {
            return None;
        }
        pages.file(&self.relative(path)).map(|f| f.id)
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        owner: Owner,
    ) -> FsResult<(Attr, Opened)> {
        if Self::is_virtual(parent) {
            return Err(FsError::ReadOnly(".fuse-ibd"));
        }
        let path = self.child_path(parent, name)?;
        let kind = FileKind::of(name);
        let file = self.open_backing(&path, flags, Some(mode))?;
        self.chown_new(&path, owner)?;
        let attr = self.lookup(parent, name)?;
        let remote = match &self.pages {
            Some(pages) if kind.is_shipped() => {
                let rel = self.relative(&path);
                let id = match pages.file(&rel) {
                    Some(f) => f.id,
                    None => pages
                        .create(&rel, kind, attr.size)
                        .map_err(Self::page_error("create"))?,
                };
                Some(id)
            }
            _ => None,
        };
        Ok((attr, self.opened(file, attr.ino, kind, flags, remote)))
    }

    pub fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        if ino == STATUS_FILE_INO {
            if flags & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(FsError::ReadOnly(".fuse-ibd/status"));
            }
            let fh = self.register(Handle::Status(self.status_text().into_bytes()));
            return Ok(Opened {
                fh,
                kind: FileKind::Scratch,
                direct_io: true,
            });
        }
        let path = self.path_of(ino)?;
        let kind = lock(&self.inodes)
            .name(ino)
            .map_or(FileKind::Generic, FileKind::of);
        let file = self.open_backing(&path, flags, None)?;
        if kind == FileKind::Redo && flags & libc::O_ACCMODE != libc::O_WRONLY {
            self.track_redo(ino, &file)?;
        }
        let remote = self.remote_id(&path, kind);
        Ok(self.opened(file, ino, kind, flags, remote))
    }

    /// Whether a read or write of `[offset, offset + len)` through `fh` may have to fetch blocks
    /// from the pageserver.
    pub fn may_fetch(&self, fh: u64, offset: u64, len: u64) -> bool {
        let Some(cache) = &self.cache else { return false };
        let Ok(handle) = self.handle(fh) else { return false };
        match &*handle {
            Handle::File(OpenFile { remote: Some(id), .. }) => {
                cache.any_absent(*id, offset / BLOCK, (offset + len.max(1) - 1) / BLOCK)
            }
            _ => false,
        }
    }

    /// The name of inode `ino` (empty if unknown).
    pub fn name_of(&self, ino: u64) -> std::ffi::OsString {
        lock(&self.inodes)
            .name(ino)
            .map(OsStr::to_os_string)
            .unwrap_or_default()
    }

    /// Whether namespace changes (create, rename, unlink, truncate) of a file named `name` call
    /// the pageserver.
    pub fn ships(&self, name: &OsStr) -> bool {
        self.pages.is_some() && FileKind::of(name).is_shipped()
    }

    /// Whether an fsync (or, `on_close`, a flush) of `fh` waits for a storage service.
    pub fn syncs_remotely(&self, fh: u64, on_close: bool) -> bool {
        let Ok(handle) = self.handle(fh) else { return false };
        match &*handle {
            Handle::File(f) if on_close => f.remote.is_some() && f.kind == FileKind::Generic,
            Handle::File(f) => f.remote.is_some() || (f.kind == FileKind::Redo && self.wal.is_some()),
            Handle::Status(_) => false,
        }
    }

    pub fn release(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let handle = self.handle(fh)?;
        let (file, ino, kind) = match &*handle {
            Handle::File(f) => {
                if let Some(id) = f.remote {
                    let fetched = self.hydrate(id, &f.file, f.ino, offset, u64::from(size), None)?;
                    self.metrics.record_cache_read(!fetched);
                }
                (&f.file, f.ino, f.kind)
            }
            Handle::Status(text) => {
                let start = (offset as usize).min(text.len());
                let end = (start + size as usize).min(text.len());
                return Ok(text[start..end].to_vec());
            }
        };
        let mut buf = vec![0u8; size as usize];
        let filled = {
            let _pages = self.page_locks.read(ino, offset, u64::from(size));
            read_full_at(file, &mut buf, offset).map_err(FsError::io("read"))?
        };
        buf.truncate(filled);
        self.metrics.record_read(kind, filled);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8], open_flags: i32) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        let OpenFile {
            file,
            ino,
            kind,
            remote,
        } = handle.open_file()?;
        let shipped = self.pages.as_ref().zip(*remote);
        let len = data.len() as u64;
        if let Some((_, id)) = shipped {
            // A fresh node merges a partial write into the block as the pageserver has it.
            self.hydrate(id, file, *ino, offset, len, Some((offset, len)))?;
        }
        {
            let _pages = self.page_locks.write(*ino, offset, len);
            file.write_all_at(data, offset).map_err(FsError::io("write"))?;
            if let Some((pages, id)) = shipped {
                // Queued under the page lock: the images are exactly what this write left.
                let (first, last) = (offset / BLOCK, (offset + len.max(1) - 1) / BLOCK);
                for block in first..=last {
                    let start = block * BLOCK;
                    let whole = (start >= offset && start + BLOCK <= offset + data.len() as u64)
                        .then(|| &data[(start - offset) as usize..(start - offset + BLOCK) as usize]);
                    self.queue_block(pages, file, *kind, id, block, whole)?;
                }
            }
        }
        if open_flags & (libc::O_SYNC | libc::O_DSYNC) != 0 {
            file.sync_data().map_err(FsError::io("write (O_DSYNC)"))?;
            if let Some((pages, _)) = shipped {
                pages
                    .wait_durable(pages.current_ticket())
                    .map_err(Self::page_error("write (O_DSYNC)"))?;
            }
        }
        if let (FileKind::Page, Some((pages, id)), 0) = (kind, shipped, offset) {
            let first_page = &data[..data.len().min(BLOCK as usize)];
            if first_page.len() == BLOCK as usize && !ibd_format::page::is_all_zero(first_page) {
                pages
                    .set_space_id(id, ibd_format::page::space_id(first_page))
                    .map_err(Self::page_error("write"))?;
            }
        }
        if *kind == FileKind::Redo {
            self.tail_redo(*ino, file, offset, data.len() as u64);
        }
        self.metrics.record_write(*kind, data.len());
        Ok(data.len() as u32)
    }

    /// The durability point of a file (DESIGN.md section 3). Scratch files need none; the redo
    /// log's is walsync's durable LSN covering every complete mtr written before the fsync.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let handle = self.handle(fh)?;
        // The status file has nothing to make durable.
        let Handle::File(OpenFile {
            file,
            kind,
            ino,
            remote,
        }) = &*handle
        else {
            return Ok(());
        };
        if *kind == FileKind::Scratch {
            return Ok(());
        }
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
        .map_err(FsError::io("fsync"))?;
        if let (Some(pages), Some(id)) = (&self.pages, remote) {
            // Invariant 2: every block of this file written before the fsync is durable on the
            // pageserver (uploads go in ticket order, so older blocks of other files are too).
            pages
                .wait_durable(pages.file_ticket(*id))
                .map_err(Self::page_error("fsync"))?;
            let size = file.metadata().map_err(FsError::io("fstat"))?.len();
            pages.set_size(*id, size).map_err(Self::page_error("fsync"))?;
        }
        if let (FileKind::Redo, Some(wal)) = (kind, &self.wal) {
            let written = lock(&self.redo).get(ino).and_then(RedoTailer::complete_lsn);
            if let Some(lsn) = written {
                wal.wait_durable(lsn).map_err(|e| FsError::Remote {
                    op: "fsync of the redo log",
                    message: e.to_string(),
                })?;
            }
        }
        self.metrics.record_fsync(*kind);
        Ok(())
    }

    /// `close()` of a handle: the durability point of generic files (DESIGN.md section 3), whose
    /// writers (`db.opt`, `.frm`) often never fsync. Page files and the log have fsync for that.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let Handle::File(OpenFile {
            file,
            kind: FileKind::Generic,
            remote: Some(id),
            ..
        }) = &*handle
        else {
            return Ok(());
        };
        let Some(pages) = &self.pages else { return Ok(()) };
        pages
            .wait_durable(pages.file_ticket(*id))
            .map_err(Self::page_error("close"))?;
        let size = file.metadata().map_err(FsError::io("fstat"))?.len();
        pages.set_size(*id, size).map_err(Self::page_error("close"))
    }

    pub fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        if Self::is_virtual(ino) {
            return Ok(());
        }
        File::open(self.path_of(ino)?)
            .and_then(|d| d.sync_all())
            .map_err(FsError::io("fsyncdir"))
    }

    /// Mode 0 (allocate and extend), `KEEP_SIZE`, and `PUNCH_HOLE | KEEP_SIZE`.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let OpenFile {
            file,
            ino,
            kind,
            remote,
        } = handle.open_file()?;
        let supported = [0, FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE];
        if !supported.contains(&mode) {
            return Err(FsError::Unsupported("this fallocate mode"));
        }
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(length)) else {
            return Err(FsError::Io {
                op: "fallocate",
                source: std::io::Error::from_raw_os_error(libc::EFBIG),
            });
        };
        let punch = mode & FALLOC_PUNCH_HOLE != 0;
        if let (true, Some(id)) = (punch && length > 0, remote) {
            // The blocks the hole only cuts into keep the rest of their (remote) contents.
            self.hydrate(*id, file, *ino, offset, length, Some((offset, length)))?;
        }
        // Punching a hole changes page contents: exclude readers of those pages.
        let _pages = punch.then(|| self.page_locks.write(*ino, offset, length));
        // SAFETY: the fd is open for the lifetime of `handle`; fallocate has no memory arguments.
        cvt(
            unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) },
            "fallocate",
        )?;
        if let (true, Some(pages), Some(id)) = (punch && length > 0, &self.pages, remote) {
            for block in offset / BLOCK..=(offset + length - 1) / BLOCK {
                self.queue_block(pages, file, *kind, *id, block, None)?;
            }
        }
        Ok(())
    }

    pub fn readdir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let dot = |ino, name: &str| DirEntry {
            ino,
            kind: EntryKind::Directory,
            name: name.into(),
        };
        if ino == CONTROL_DIR_INO {
            let status = DirEntry {
                ino: STATUS_FILE_INO,
                kind: EntryKind::File,
                name: STATUS_FILE_NAME.into(),
            };
            return Ok(vec![dot(CONTROL_DIR_INO, "."), dot(ROOT_INO, ".."), status]);
        }
        let path = self.path_of(ino)?;
        let mut entries = vec![dot(ino, "."), dot(ROOT_INO, "..")];
        // `.fuse-ibd` is reachable by name but not listed: MariaDB would take it for a database.
        for entry in fs::read_dir(&path).map_err(FsError::io("readdir"))? {
            let entry = entry.map_err(FsError::io("readdir"))?;
            let kind = entry.file_type().map(entry_kind).unwrap_or(EntryKind::File);
            let child = lock(&self.inodes).get_or_insert(ino, &entry.file_name());
            entries.push(DirEntry {
                ino: child,
                kind,
                name: entry.file_name(),
            });
        }
        Ok(entries)
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let path = cstring(&self.backing)?;
        // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, "statfs")?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
        })
    }

    /// `.fuse-ibd/status`: `key=value` lines for tools that cannot reach the metrics endpoint.
    pub fn status_text(&self) -> String {
        let mut text = format!(
            "version={}\ndatadir={}\ncache_dir={}\nstarted_unix={}\nopen_handles={}\n",
            env!("CARGO_PKG_VERSION"),
            self.info.datadir.display(),
            self.info.cache_dir.display(),
            self.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            lock(&self.handles).len(),
        );
        if let Some(wal) = &self.wal {
            let _ = writeln!(
                text,
                "walsync_url={}\ntimeline={}\nterm={}",
                wal.url(),
                wal.timeline(),
                wal.term()
            );
            let _ = writeln!(text, "wal_durable_lsn={}", wal.durable_lsn().unwrap_or(0));
        }
        if let Some(pages) = &self.pages {
            text.push_str(&pages.status());
        }
        // After a resize the replaced log's tail lingers: the live log is the one furthest on.
        if let Some(tail) = lock(&self.redo)
            .values()
            .filter(|t| t.geometry().is_some())
            .max_by_key(|t| t.complete_lsn())
        {
            let g = tail.geometry().expect("checked");
            let _ = writeln!(
                text,
                "redo_first_lsn={}\nredo_file_size={}",
                g.first_lsn, g.file_size
            );
            let _ = writeln!(text, "redo_complete_lsn={}", tail.complete_lsn().unwrap_or(0));
            let _ = writeln!(
                text,
                "redo_checkpoint_lsn={}",
                tail.checkpoint().map_or(0, |c| c.checkpoint_lsn)
            );
        }
        self.metrics.write_status(&mut text);
        text
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    const ME: Owner = Owner { uid: 0, gid: 0 };

    fn datadir() -> (tempfile::TempDir, Datadir) {
        let dir = tempfile::tempdir().unwrap();
        let info = MountInfo {
            datadir: "/mnt/test".into(),
            cache_dir: dir.path().into(),
            owner: ME,
        };
        let d = Datadir::new(dir.path().join("tree"), info, Arc::new(Metrics::default())).unwrap();
        (dir, d)
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn files_round_trip_through_create_write_read_rename_unlink() {
        let (_dir, d) = datadir();
        let db = d.mkdir(ROOT_INO, name("db"), 0o750, ME).unwrap();
        assert_eq!(db.kind, EntryKind::Directory);
        let (attr, opened) = d.create(db.ino, name("t.ibd"), 0o640, libc::O_RDWR, ME).unwrap();
        assert_eq!(
            (attr.perm, opened.kind, opened.direct_io),
            (0o640, FileKind::Page, true)
        );
        let page = vec![7u8; PAGE];
        assert_eq!(d.write(opened.fh, PAGE as u64, &page, 0).unwrap(), PAGE as u32);
        assert_eq!(d.read(opened.fh, PAGE as u64, PAGE as u32).unwrap(), page);
        assert_eq!(
            d.read(opened.fh, 0, 4).unwrap(),
            vec![0; 4],
            "never-written bytes read as zeros"
        );
        assert!(d.read(opened.fh, 10 * PAGE as u64, 4).unwrap().is_empty(), "EOF");
        d.fsync(opened.fh, true).unwrap();
        d.release(opened.fh);

        d.rename(ROOT_INO, name("db"), ROOT_INO, name("db2"), 0).unwrap();
        let again = d
            .lookup(d.lookup(ROOT_INO, name("db2")).unwrap().ino, name("t.ibd"))
            .unwrap();
        assert_eq!(
            again.ino, attr.ino,
            "inode numbers survive a rename of the parent"
        );
        assert_eq!(again.size, 2 * PAGE as u64);
        d.unlink(db.ino, name("t.ibd")).unwrap();
        assert!(matches!(d.lookup(db.ino, name("t.ibd")), Err(FsError::NotFound)));
        assert!(matches!(
            d.rename(ROOT_INO, name("a/b"), ROOT_INO, name("c"), 0),
            Err(FsError::BadName)
        ));
    }

    const PAGE: usize = ibd_format::page::PAGE_SIZE;

    #[test]
    fn fallocate_supports_what_innodb_uses_and_refuses_the_rest() {
        let (_dir, d) = datadir();
        let (attr, opened) = d
            .create(ROOT_INO, name("t.ibd"), 0o660, libc::O_RDWR, ME)
            .unwrap();
        d.fallocate(opened.fh, 0, 4 * PAGE as u64, 0).unwrap();
        assert_eq!(d.getattr(attr.ino).unwrap().size, 4 * PAGE as u64);
        d.fallocate(opened.fh, 0, 8 * PAGE as u64, FALLOC_KEEP_SIZE)
            .unwrap();
        assert_eq!(d.getattr(attr.ino).unwrap().size, 4 * PAGE as u64);
        d.write(opened.fh, PAGE as u64, &vec![9; PAGE], 0).unwrap();
        d.fallocate(
            opened.fh,
            PAGE as u64 + 4096,
            4096,
            FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE,
        )
        .unwrap();
        let page = d.read(opened.fh, PAGE as u64, PAGE as u32).unwrap();
        assert!(page[..4096].iter().all(|&b| b == 9) && page[4096..8192].iter().all(|&b| b == 0));
        let err = d
            .fallocate(opened.fh, 0, 10, libc::FALLOC_FL_COLLAPSE_RANGE)
            .unwrap_err();
        assert_eq!(err.errno(), libc::EOPNOTSUPP);
    }

    #[test]
    fn status_file_is_reachable_read_only_and_not_listed() {
        let (_dir, d) = datadir();
        let control = d.lookup(ROOT_INO, name(CONTROL_DIR_NAME)).unwrap();
        assert_eq!(control.kind, EntryKind::Directory);
        let status = d.lookup(control.ino, name(STATUS_FILE_NAME)).unwrap();
        let opened = d.open(status.ino, libc::O_RDONLY).unwrap();
        let text = String::from_utf8(d.read(opened.fh, 0, 1 << 16).unwrap()).unwrap();
        assert!(
            text.contains("datadir=/mnt/test\n") && text.contains("fsyncs_redo=0\n"),
            "{text}"
        );
        assert_eq!(
            d.open(status.ino, libc::O_RDWR).unwrap_err().errno(),
            libc::EACCES
        );
        let listed = d.readdir(ROOT_INO).unwrap();
        assert!(
            listed.iter().all(|e| e.name != CONTROL_DIR_NAME),
            "MariaDB would see a database"
        );
    }

    #[test]
    fn fsync_of_scratch_files_is_not_a_durability_point() {
        let (_dir, d) = datadir();
        let (_, tmp) = d
            .create(ROOT_INO, name("ibtmp1"), 0o660, libc::O_RDWR, ME)
            .unwrap();
        let (_, log) = d
            .create(ROOT_INO, name("ib_logfile0"), 0o660, libc::O_RDWR, ME)
            .unwrap();
        d.fsync(tmp.fh, true).unwrap();
        d.fsync(log.fh, true).unwrap();
        let status = d.status_text();
        assert!(
            status.contains("fsyncs_scratch=0\n") && status.contains("fsyncs_redo=1\n"),
            "{status}"
        );
    }
}
