//! The `fuse-ibd-stub` backend's daemon: a FUSE filesystem that keeps file contents in memory,
//! configured like fuse-ibd (`fuse-ibd/src/fuse.rs`: the same init flags and limits, mount
//! options, request threads and direct-I/O rule), so fio on it measures the kernel's FUSE round
//! trip and fuser's dispatch alone: no cache files, no page locks, no shipping. fio on
//! `fuse-ibd-local` minus fio on this stub is what fuse-ibd's own work costs.
//!
//! One flat directory of regular files, enough for fio; MariaDB needs directories and renames
//! and does not run on it. It is a separate process (the runner re-executes itself with
//! [`SUBCOMMAND`]) so that its CPU is measured and it is mounted and unmounted like any daemon.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::process;

/// First argument that makes the runner serve the stub instead of running benchmarks.
pub const SUBCOMMAND: &str = "__serve-stub-fs";

/// fuse-ibd's default `--threads`.
const THREADS: usize = 8;
/// fuse-ibd's attribute and entry cache time.
const TTL: Duration = Duration::from_secs(1);
/// Contents are kept in pages of InnoDB's size, allocated when first written.
const PAGE: u64 = 16 << 10;
/// Page maps are sharded so that parallel jobs on one file do not serialize on one lock (fuse-ibd
/// locks per page too).
const SHARDS: u64 = 64;
const ROOT: u64 = 1;

/// Serves an empty stub filesystem on `mountpoint` until it is unmounted or the process is told
/// to stop (SIGTERM/SIGINT), then unmounts.
pub fn serve(mountpoint: &Path) -> Result<()> {
    process::install_interrupt_handler()?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("fuse-ibd-stub".into()),
        fuser::MountOption::Subtype("fuse-ibd-stub".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        fuser::MountOption::RW,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(THREADS);
    config.clone_fd = true;
    let session = fuser::spawn_mount(StubFs::new(), mountpoint, &config)
        .with_context(|| format!("mounting the stub on {}", mountpoint.display()))?;
    while !session.guard.is_finished() {
        if process::check_interrupted().is_err() {
            return session.umount_and_join().context("unmounting the stub");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    session.join().context("stub FUSE session failed")
}

struct StubFile {
    meta: Mutex<Meta>,
    /// Page number -> contents; shard `page % SHARDS`. A missing page reads as zeros.
    shards: Vec<RwLock<HashMap<u64, Box<[u8]>>>>,
}

#[derive(Clone, Copy)]
struct Meta {
    size: u64,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl StubFile {
    fn new(perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        StubFile {
            meta: Mutex::new(Meta {
                size: 0,
                perm,
                uid,
                gid,
                atime: now,
                mtime: now,
                ctime: now,
            }),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn meta(&self) -> Meta {
        *self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Meta)) -> Meta {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut meta);
        *meta
    }

    fn shard(&self, page: u64) -> &RwLock<HashMap<u64, Box<[u8]>>> {
        &self.shards[(page % SHARDS) as usize]
    }

    /// Bytes `[offset, offset + len)`, cut at the end of the file.
    fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let end = (offset + len).min(self.meta().size);
        let mut out = vec![0; end.saturating_sub(offset) as usize];
        let mut at = offset;
        while at < end {
            let (page, within) = (at / PAGE, at % PAGE);
            let n = (PAGE - within).min(end - at);
            let shard = self.shard(page).read().unwrap_or_else(|e| e.into_inner());
            if let Some(data) = shard.get(&page) {
                let dest = (at - offset) as usize;
                out[dest..dest + n as usize].copy_from_slice(&data[within as usize..(within + n) as usize]);
            }
            at += n;
        }
        out
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut at = offset;
        let end = offset + data.len() as u64;
        while at < end {
            let (page, within) = (at / PAGE, at % PAGE);
            let n = (PAGE - within).min(end - at);
            let src = &data[(at - offset) as usize..(at - offset + n) as usize];
            let mut shard = self.shard(page).write().unwrap_or_else(|e| e.into_inner());
            let contents = shard
                .entry(page)
                .or_insert_with(|| vec![0; PAGE as usize].into_boxed_slice());
            contents[within as usize..(within + n) as usize].copy_from_slice(src);
            at += n;
        }
        let now = SystemTime::now();
        self.update(|m| {
            m.size = m.size.max(end);
            m.mtime = now;
            m.ctime = now;
        });
    }

    /// Zeros `[offset, offset + len)`: whole pages are dropped, partial ones cleared.
    fn zero(&self, offset: u64, len: u64) {
        // No page is stored past the end of the file.
        let end = offset
            .saturating_add(len)
            .min(self.meta().size.div_ceil(PAGE) * PAGE);
        let mut at = offset;
        while at < end {
            let (page, within) = (at / PAGE, at % PAGE);
            let n = (PAGE - within).min(end - at);
            let mut shard = self.shard(page).write().unwrap_or_else(|e| e.into_inner());
            if n == PAGE {
                shard.remove(&page);
            } else if let Some(contents) = shard.get_mut(&page) {
                contents[within as usize..(within + n) as usize].fill(0);
            }
            at += n;
        }
    }

    fn truncate(&self, size: u64) {
        let old = self.meta().size;
        if size < old {
            self.zero(size, old - size);
        }
        let now = SystemTime::now();
        self.update(|m| {
            m.size = size;
            m.mtime = now;
            m.ctime = now;
        });
    }
}

struct StubFs {
    names: RwLock<HashMap<OsString, u64>>,
    files: RwLock<HashMap<u64, Arc<StubFile>>>,
    next_ino: AtomicU64,
    mounted_at: SystemTime,
}

impl StubFs {
    fn new() -> Self {
        StubFs {
            names: RwLock::new(HashMap::new()),
            files: RwLock::new(HashMap::new()),
            next_ino: AtomicU64::new(ROOT + 1),
            mounted_at: SystemTime::now(),
        }
    }

    fn file(&self, ino: INodeNo) -> Result<Arc<StubFile>, Errno> {
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        files.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        if ino == ROOT {
            return Ok(FileAttr {
                ino: INodeNo(ROOT),
                size: 4096,
                blocks: 8,
                atime: self.mounted_at,
                mtime: self.mounted_at,
                ctime: self.mounted_at,
                crtime: self.mounted_at,
                kind: FileType::Directory,
                perm: 0o755,
                nlink: 2,
                uid: 0,
                gid: 0,
                rdev: 0,
                blksize: 4096,
                flags: 0,
            });
        }
        let meta = self.file(INodeNo(ino))?.meta();
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: meta.size,
            blocks: meta.size.div_ceil(512),
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
            crtime: meta.ctime,
            kind: FileType::RegularFile,
            perm: meta.perm,
            nlink: 1,
            uid: meta.uid,
            gid: meta.gid,
            rdev: 0,
            // As fuse-ibd answers.
            blksize: 4096,
            flags: 0,
        })
    }
}

/// fuse-ibd's rule for the files fio uses: direct I/O for O_DIRECT opens, with parallel
/// non-extending direct writes.
fn fopen_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_DIRECT != 0 {
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    } else {
        FopenFlags::empty()
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for StubFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Exactly fuse-ibd's kernel configuration.
        for flag in [
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            if let Err(missing) = config.add_capabilities(flag) {
                eprintln!("kernel lacks FUSE capability {missing:?}; continuing without it");
            }
        }
        let _ = config.set_max_background(128);
        let _ = config.set_congestion_threshold(96);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(64 << 10);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = (parent.0 == ROOT)
            .then(|| {
                self.names
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(name)
                    .copied()
            })
            .flatten();
        match ino.ok_or(Errno::ENOENT).and_then(|ino| self.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let file = match self.file(ino) {
            Ok(file) => file,
            Err(e) => return reply.error(e),
        };
        if let Some(size) = size {
            file.truncate(size);
        }
        file.update(|m| {
            m.perm = mode.map_or(m.perm, |mode| (mode & 0o7777) as u16);
            m.uid = uid.unwrap_or(m.uid);
            m.gid = gid.unwrap_or(m.gid);
            m.atime = atime.map_or(m.atime, time);
            m.mtime = mtime.map_or(m.mtime, time);
            m.ctime = SystemTime::now();
        });
        match self.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if parent.0 != ROOT {
            return reply.error(Errno::ENOENT);
        }
        let ino = {
            let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
            match names.get(name) {
                Some(_) if flags & libc::O_EXCL != 0 => return reply.error(Errno::EEXIST),
                Some(&ino) => ino,
                None => {
                    let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
                    let file = StubFile::new((mode & 0o7777) as u16, req.uid(), req.gid());
                    self.files
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(ino, Arc::new(file));
                    names.insert(name.to_os_string(), ino);
                    ino
                }
            }
        };
        if flags & libc::O_TRUNC != 0 {
            if let Ok(file) = self.file(INodeNo(ino)) {
                file.truncate(0);
            }
        }
        match self.attr(ino) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(ino), fopen_flags(flags)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.file(ino) {
            Ok(file) => {
                if flags.0 & libc::O_TRUNC != 0 {
                    file.truncate(0);
                }
                reply.opened(FileHandle(ino.0), fopen_flags(flags.0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.file(ino) {
            Ok(file) => reply.data(&file.read(offset, u64::from(size))),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.file(ino) {
            Ok(file) => {
                file.write(offset, data);
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    // Memory has nothing to make durable; answering (never ENOSYS) keeps the kernel sending
    // every fsync, as it does to fuse-ibd, so fdatasync jobs still measure the round trip.
    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let removed = (parent.0 == ROOT)
            .then(|| self.names.write().unwrap_or_else(|e| e.into_inner()).remove(name))
            .flatten();
        match removed {
            Some(ino) => {
                // Open handles of an unlinked file go with it: fio never reads a file it deleted.
                self.files.write().unwrap_or_else(|e| e.into_inner()).remove(&ino);
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries: Vec<(u64, FileType, OsString)> = vec![
            (ROOT, FileType::Directory, ".".into()),
            (ROOT, FileType::Directory, "..".into()),
        ];
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        entries.extend(
            names
                .iter()
                .map(|(name, &ino)| (ino, FileType::RegularFile, name.clone())),
        );
        drop(names);
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Room for any benchmark file: memory is the real limit, and fio checks none.
        let blocks = 1 << 30;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let file = match self.file(ino) {
            Ok(file) => file,
            Err(e) => return reply.error(e),
        };
        // The modes fuse-ibd supports; memory is "allocated" when written.
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match mode {
            0 => {
                file.update(|m| m.size = m.size.max(offset + length));
                reply.ok();
            }
            libc::FALLOC_FL_KEEP_SIZE => reply.ok(),
            PUNCH => {
                file.zero(offset, length);
                reply.ok();
            }
            _ => reply.error(Errno::EOPNOTSUPP),
        }
    }

    // As fuse-ibd: ENOSYS once and the kernel stops asking for extended attributes.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_return_what_was_written_and_zeros_elsewhere() {
        let file = StubFile::new(0o644, 0, 0);
        file.write(PAGE - 3, b"abcdef");
        assert_eq!(file.meta().size, PAGE + 3);
        assert_eq!(file.read(PAGE - 5, 100), b"\0\0abcdef"[..].to_vec());
        assert_eq!(file.read(PAGE + 3, 10), Vec::<u8>::new(), "nothing past the end");
        file.truncate(4 * PAGE);
        assert_eq!(file.read(3 * PAGE, 4), vec![0; 4]);
    }

    #[test]
    fn truncation_and_hole_punching_clear_data() {
        let file = StubFile::new(0o644, 0, 0);
        file.write(0, &vec![7; 3 * PAGE as usize]);
        file.zero(PAGE / 2, PAGE * 2);
        assert_eq!(file.read(PAGE / 2 - 1, 2), vec![7, 0]);
        assert_eq!(file.read(PAGE * 2 + PAGE / 2 - 1, 2), vec![0, 7]);
        file.truncate(10);
        file.truncate(PAGE);
        assert_eq!(file.read(8, 4), vec![7, 7, 0, 0], "regrown bytes read as zeros");
    }
}
