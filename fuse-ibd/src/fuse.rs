//! The thin `fuser` adapter: converts kernel requests into calls on [`Datadir`], errors into
//! errno, and times every answer (`fuse_ibd_op_duration_seconds`, `fuse_ibd_op_errors_total`).
//! Kernel configuration choices are explained in `research/fuse.md` section 4 and
//! `docs/SEMANTICS.md`.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::datadir::{Attr, Datadir, EntryKind, Opened, Owner, SetAttr};
use crate::error::FsResult;

/// We are the only writer of the tree, but sizes change under the kernel's feet on every extending
/// write to another handle: keep the cached attributes short-lived.
const TTL: Duration = Duration::from_secs(1);

pub struct FuseAdapter {
    core: Arc<Datadir>,
    /// Where requests that may wait for a storage service are answered (its blocking pool), so
    /// the FUSE threads keep serving cached requests through a fetch, an fsync or an outage.
    runtime: Option<tokio::runtime::Handle>,
}

/// Runs one operation, records its latency and errno, and logs failures worth seeing.
fn answer<T>(core: &Datadir, op: &'static str, f: impl FnOnce() -> FsResult<T>) -> Result<T, Errno> {
    let started = Instant::now();
    let result = f();
    let errno = result.as_ref().err().map(|e| e.errno());
    core.metrics()
        .record_op(op, started.elapsed().as_secs_f64(), errno);
    result.map_err(|e| {
        match e.errno() {
            // Lookups of names that do not exist and "already exists" are normal traffic.
            libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY => tracing::trace!(op, error = %e),
            _ => tracing::warn!(op, error = %e, "request failed"),
        }
        Errno::from_i32(e.errno())
    })
}

impl FuseAdapter {
    /// `runtime`: where requests that wait for the network are answered; `None` answers
    /// everything on the FUSE threads.
    pub fn new(core: Arc<Datadir>, runtime: Option<tokio::runtime::Handle>) -> Self {
        Self { core, runtime }
    }

    fn answer<T>(&self, op: &'static str, f: impl FnOnce() -> FsResult<T>) -> Result<T, Errno> {
        answer(&self.core, op, f)
    }

    /// Answers `op` on the runtime's blocking pool when `waits` (it may wait for a storage
    /// service), else right here; `reply` sends the result either way.
    fn answer_off_loop<T: 'static>(
        &self,
        op: &'static str,
        waits: bool,
        f: impl FnOnce(&Datadir) -> FsResult<T> + Send + 'static,
        reply: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) {
        match self.runtime.as_ref().filter(|_| waits) {
            Some(runtime) => {
                let core = self.core.clone();
                runtime.spawn_blocking(move || reply(answer(&core, op, || f(&core))));
            }
            None => reply(answer(&self.core, op, || f(&self.core))),
        }
    }
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::Directory => FileType::Directory,
        EntryKind::File => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
        EntryKind::CharDevice => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        // InnoDB and page-compressed tables look at st_blksize for punch-hole granularity.
        blksize: 4096,
        flags: 0,
    }
}

fn fopen_flags(opened: &Opened) -> FopenFlags {
    if opened.direct_io {
        // Direct writes that do not extend the file take a shared inode lock (research/fuse.md 4.2).
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    } else {
        FopenFlags::empty()
    }
}

fn system_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Asynchronous direct I/O lets InnoDB's io_uring/AIO submissions queue up instead of each
        // waiting for the daemon; parallel dirops for the many lookups at server start.
        for flag in [
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            if let Err(missing) = config.add_capabilities(flag) {
                tracing::warn!(?missing, "kernel lacks a FUSE capability; continuing without it");
            }
        }
        let _ = config.set_max_background(128);
        let _ = config.set_congestion_threshold(96);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(64 << 10);
        Ok(())
    }

    fn destroy(&mut self) {
        self.core.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.answer("lookup", || self.core.lookup(parent.0, name)) {
            Ok(a) => reply.entry(&TTL, &fuse_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.answer("getattr", || self.core.getattr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &fuse_attr(&a)),
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
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(system_time),
            mtime: mtime.map(system_time),
        };
        // A truncate of a shipped file tells the pageserver the new size.
        let waits = size.is_some() && self.core.ships(self.core.name_of(ino.0).as_os_str());
        self.answer_off_loop(
            "setattr",
            waits,
            move |core| core.setattr(ino.0, fh.map(|f| f.0), change),
            move |result| match result {
                Ok(a) => reply.attr(&TTL, &fuse_attr(&a)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.answer("mknod", || {
            self.core.mknod(parent.0, name, mode, rdev, owner(req))
        }) {
            Ok(a) => reply.entry(&TTL, &fuse_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        match self.answer("mkdir", || self.core.mkdir(parent.0, name, mode, owner(req))) {
            Ok(a) => reply.entry(&TTL, &fuse_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        self.answer_off_loop(
            "unlink",
            self.core.ships(&name),
            move |core| core.unlink(parent.0, &name),
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.answer("rmdir", || self.core.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_os_string(), newname.to_os_string());
        self.answer_off_loop(
            "rename",
            self.core.ships(&name) || self.core.ships(&newname),
            move |core| core.rename(parent.0, &name, newparent.0, &newname, flags.bits()),
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.answer("open", || self.core.open(ino.0, flags.0)) {
            Ok(o) => reply.opened(FileHandle(o.fh), fopen_flags(&o)),
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
        let (name, owner) = (name.to_os_string(), owner(req));
        self.answer_off_loop(
            "create",
            self.core.ships(&name),
            move |core| core.create(parent.0, &name, mode, flags, owner),
            move |result| match result {
                Ok((a, o)) => reply.created(
                    &TTL,
                    &fuse_attr(&a),
                    Generation(0),
                    FileHandle(o.fh),
                    fopen_flags(&o),
                ),
                Err(e) => reply.error(e),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let waits = self.core.may_fetch(fh.0, offset, u64::from(size));
        self.answer_off_loop(
            "read",
            waits,
            move |core| core.read(fh.0, offset, size),
            move |result| match result {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let reply = move |result: Result<u32, Errno>| match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        };
        if self.core.may_fetch(fh.0, offset, data.len() as u64) {
            // A partial write of a block the cache does not hold merges it with the fetched block.
            let data = data.to_vec();
            self.answer_off_loop(
                "write",
                true,
                move |core| core.write(fh.0, offset, &data, flags.0),
                reply,
            );
        } else {
            reply(self.answer("write", || self.core.write(fh.0, offset, data, flags.0)));
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Answering (never ENOSYS) keeps the kernel from concluding flush is unsupported.
        self.answer_off_loop(
            "flush",
            self.core.syncs_remotely(fh.0, true),
            move |core| core.flush(fh.0),
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.answer_off_loop(
            "fsync",
            self.core.syncs_remotely(fh.0, false),
            move |core| core.fsync(fh.0, datasync),
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.answer("readdir", || self.core.readdir(ino.0)) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.answer("fsyncdir", || self.core.fsyncdir(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.answer("statfs", || self.core.statfs()) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(e),
        }
    }

    // Extended attributes: ENOSYS once, and the kernel stops asking (`fc->no_getxattr`), which
    // saves a security.capability round trip before nearly every write (research/ebpf.md).
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.answer("fallocate", || self.core.fallocate(fh.0, offset, length, mode)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// Mount options: the daemon runs as root for a server that may run as another user.
pub fn mount_config(fs_name: &Path, threads: usize) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("fuse-ibd:{}", fs_name.display())),
        fuser::MountOption::Subtype("fuse-ibd".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        fuser::MountOption::RW,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(threads);
    config.clone_fd = true;
    config
}
