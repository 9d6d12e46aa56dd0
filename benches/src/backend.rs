//! Backends: the storage setups being compared. A backend turns an empty directory on the local
//! disk into the directory the benchmarks use (fio's file, MariaDB's datadir), names the daemon
//! whose CPU is worth measuring, and undoes everything when the prepared backend is dropped.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::process::{self, ChildGuard, CpuMeter};
use crate::remote::{FuseIbdBinaries, Storage};
use crate::stubfs;

/// A storage setup under test.
pub trait Backend {
    /// Short name used on the command line, in tables and in plots.
    fn name(&self) -> &'static str;

    /// A one-line description for the report (how it is mounted, with which options).
    fn describe(&self) -> String;

    /// Sets the backend up in `root`, an empty directory on the local disk that it owns.
    fn prepare(&self, root: &Path) -> Result<PreparedBackend>;
}

/// A backend that is ready; dropping it tears it down (unmounts, stops its daemon, then its
/// storage services).
pub struct PreparedBackend {
    pub name: &'static str,
    /// Where benchmark files go; MariaDB's datadir is this directory itself, because a fresh
    /// fuse-ibd node synthesizes `ib_logfile0` at the root of its mount.
    pub dir: PathBuf,
    /// False for backends that serve fio's flat file only (the stub): the MariaDB suite skips them.
    pub runs_mariadb: bool,
    fuse: Option<FuseMount>,
    /// fuse-ibd-cold: the node mounted afresh, on an emptied cache, before every measured run.
    cold_node: Option<FuseIbdNode>,
    /// Declared after `fuse`, so dropped after it: an unmounting fuse-ibd waits for its uploads.
    storage: Option<Storage>,
}

impl PreparedBackend {
    fn new(name: &'static str, dir: PathBuf, fuse: Option<FuseMount>) -> Self {
        PreparedBackend {
            name,
            dir,
            runs_mariadb: true,
            fuse,
            cold_node: None,
            storage: None,
        }
    }

    /// The process serving the files, if any: its CPU is the cost of the backend.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.fuse.as_ref().map(FuseMount::pid)
    }

    /// Whether every measured run starts on a fresh node ([`PreparedBackend::fresh_node`]).
    pub fn is_cold(&self) -> bool {
        self.cold_node.is_some()
    }

    /// For a cold backend, replaces the node by a fresh one: unmount (the node stops cleanly,
    /// every upload durable), wipe its cache dir, mount again on the same timeline, so every
    /// first read goes to the pageserver. Nothing may have files open on the mount. A no-op for
    /// other backends.
    pub fn fresh_node(&mut self) -> Result<()> {
        let Some(node) = &self.cold_node else {
            return Ok(());
        };
        self.fuse = None;
        node.wipe_cache()?;
        self.fuse = Some(node.mount()?);
        Ok(())
    }

    /// Lets the previous step's leftovers finish before the next is measured, so no step pays
    /// for the one before: dirty page cache (bindfs and fuse-ibd write their backing files
    /// buffered) is written back, and a fuse-ibd node shipping to the services drains its upload
    /// queue. Bounded: past [`SETTLE_TIMEOUT`] it warns and lets the step run anyway.
    pub fn settle(&self) -> Result<()> {
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        if self.storage.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let queued_at_start = fuse_ibd_status(&self.dir, "upload_queue_pages")?;
        loop {
            let queued = fuse_ibd_status(&self.dir, "upload_queue_pages")?;
            if queued == 0 {
                if started.elapsed() > Duration::from_secs(1) {
                    eprintln!(
                        "{}: waited {:.1} s for {queued_at_start} queued page uploads before measuring",
                        self.name,
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(());
            }
            if started.elapsed() > SETTLE_TIMEOUT {
                eprintln!(
                    "warning: {}: {queued} pages still not uploaded after {SETTLE_TIMEOUT:?}; measuring anyway",
                    self.name
                );
                return Ok(());
            }
            process::sleep_interruptible(Duration::from_millis(20))?;
        }
    }

    /// Starts measuring what the backend's own processes do during one step.
    pub fn cost_meter(&self) -> Result<CostMeter> {
        let meter = |pid: Option<u32>| pid.map(CpuMeter::start).transpose();
        let storage = self.storage.as_ref();
        let fetched_before = match storage {
            Some(_) => Some((fuse_ibd_status(&self.dir, FETCHED_PAGES)?, self.dir.clone())),
            None => None,
        };
        Ok(CostMeter {
            daemon: meter(self.daemon_pid())?,
            pageserver: meter(storage.map(|s| s.pageserver.pid()))?,
            walsync: meter(storage.map(|s| s.walsync.pid()))?,
            fetched_before,
        })
    }
}

/// How long [`PreparedBackend::settle`] waits for an upload queue to drain.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The status key counting pages a fuse-ibd mount fetched from the pageserver.
const FETCHED_PAGES: &str = "remote_fetched_pages";

/// What a backend's own processes did during one measured step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendCost {
    /// The FUSE daemon's user+system CPU, % of one core (none for native).
    pub daemon_cpu_pct: Option<f64>,
    /// pageserver-lite's CPU (fuse-ibd-warm and -cold).
    pub pageserver_cpu_pct: Option<f64>,
    /// walsync's CPU (fuse-ibd-warm and -cold).
    pub walsync_cpu_pct: Option<f64>,
    /// Pages the mount fetched from the pageserver: ~0 when warm, the cold runs' misses.
    pub fetched_pages: Option<f64>,
}

impl BackendCost {
    /// Named values for a report row, after the suite's own.
    pub fn values(&self) -> Vec<(String, f64)> {
        [
            ("daemon CPU %", self.daemon_cpu_pct),
            ("pageserver CPU %", self.pageserver_cpu_pct),
            ("walsync CPU %", self.walsync_cpu_pct),
            ("fetched pages", self.fetched_pages),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), value?)))
        .collect()
    }

    /// ", daemon CPU 40%, fetched 123 pages" for progress lines.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(cpu) = self.daemon_cpu_pct {
            out.push_str(&format!(", daemon CPU {cpu:.0}%"));
        }
        if let (Some(pageserver), Some(walsync)) = (self.pageserver_cpu_pct, self.walsync_cpu_pct) {
            out.push_str(&format!(
                ", pageserver CPU {pageserver:.0}%, walsync CPU {walsync:.0}%"
            ));
        }
        if let Some(pages) = self.fetched_pages {
            out.push_str(&format!(", fetched {pages:.0} pages"));
        }
        out
    }
}

/// Started by [`PreparedBackend::cost_meter`] before a step, read after it.
pub struct CostMeter {
    daemon: Option<CpuMeter>,
    pageserver: Option<CpuMeter>,
    walsync: Option<CpuMeter>,
    /// (fetched pages so far, mount whose status file counts them).
    fetched_before: Option<(u64, PathBuf)>,
}

impl CostMeter {
    pub fn finish(self) -> Result<BackendCost> {
        let percent = |meter: Option<CpuMeter>| meter.map(|m| m.percent_of_one_core()).transpose();
        Ok(BackendCost {
            daemon_cpu_pct: percent(self.daemon)?,
            pageserver_cpu_pct: percent(self.pageserver)?,
            walsync_cpu_pct: percent(self.walsync)?,
            fetched_pages: match self.fetched_before {
                Some((before, dir)) => {
                    Some(fuse_ibd_status(&dir, FETCHED_PAGES)?.saturating_sub(before) as f64)
                }
                None => None,
            },
        })
    }
}

/// A numeric line of a fuse-ibd mount's status file (`<mount>/.fuse-ibd/status`, docs/SEMANTICS.md).
pub fn fuse_ibd_status(mountpoint: &Path, key: &str) -> Result<u64> {
    let path = mountpoint.join(".fuse-ibd/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .with_context(|| format!("no numeric {key} in {}", path.display()))
}

/// Names accepted by `--backends`.
pub const AVAILABLE: &[&str] = &[
    "native",
    "bindfs",
    "fuse-ibd-local",
    "fuse-ibd-warm",
    "fuse-ibd-cold",
    "fuse-ibd-stub",
];

/// `fuse_ibd` locates fuse-ibd and its services; the fuse-ibd backends check that what they
/// need exists, so a missing build fails before anything is set up.
pub fn by_name(name: &str, fuse_ibd: &FuseIbdBinaries) -> Result<Box<dyn Backend>> {
    match name {
        "native" => Ok(Box::new(Native)),
        "bindfs" => Ok(Box::new(Bindfs)),
        "fuse-ibd-local" => {
            fuse_ibd.check(false)?;
            Ok(Box::new(FuseIbdLocal {
                binary: fuse_ibd.fuse_ibd.clone(),
            }))
        }
        "fuse-ibd-warm" | "fuse-ibd-cold" => {
            fuse_ibd.check(true)?;
            Ok(Box::new(FuseIbdRemote {
                binaries: fuse_ibd.clone(),
                cold: name == "fuse-ibd-cold",
            }))
        }
        "fuse-ibd-stub" => Ok(Box::new(FuseStub)),
        other => bail!("unknown backend {other:?}; available: {}", AVAILABLE.join(", ")),
    }
}

/// A plain directory on the local disk: the baseline every ratio is taken against.
pub struct Native;

impl Backend for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn describe(&self) -> String {
        "plain directory on the local disk".to_string()
    }

    fn prepare(&self, root: &Path) -> Result<PreparedBackend> {
        let dir = root.join("data");
        std::fs::create_dir(&dir)?;
        Ok(PreparedBackend::new(self.name(), dir, None))
    }
}

/// bindfs mirrors a local directory through FUSE: the cost of "any FUSE filesystem".
pub struct Bindfs;

/// Multithreaded like fuse-ibd will be; bindfs is single-threaded by default, which would
/// serialize every queue depth above one and make the reference unfairly slow.
const BINDFS_ARGS: &[&str] = &["-f", "--multithreaded"];

impl Backend for Bindfs {
    fn name(&self) -> &'static str {
        "bindfs"
    }

    fn describe(&self) -> String {
        format!(
            "`bindfs {} <local dir> <mountpoint>`; bindfs opens the local files without O_DIRECT, \
             so its reads and writes go through the host page cache",
            BINDFS_ARGS.join(" ")
        )
    }

    fn prepare(&self, root: &Path) -> Result<PreparedBackend> {
        let source = root.join("source");
        let mountpoint = root.join("mnt");
        std::fs::create_dir(&source)?;
        std::fs::create_dir(&mountpoint)?;
        let mut command = Command::new("bindfs");
        command.args(BINDFS_ARGS).arg(&source).arg(&mountpoint);
        let fuse = FuseMount::start(command, &mountpoint, &root.join("daemon.log"))?;
        Ok(PreparedBackend::new(self.name(), mountpoint, Some(fuse)))
    }
}

/// How to mount fuse-ibd on one mountpoint and cache dir, again and again for fresh nodes.
pub struct FuseIbdNode {
    pub binary: PathBuf,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    /// Further `fuse-ibd mount` arguments (services, timeline, cache budget).
    pub args: Vec<String>,
    /// Every mount of this node appends here.
    pub log: PathBuf,
}

impl FuseIbdNode {
    /// A node in `root`: mountpoint `root/mnt` (created), cache `root/cache`, log `root/daemon.log`.
    pub fn in_dir(binary: &Path, root: &Path, args: Vec<String>) -> Result<Self> {
        let mountpoint = root.join("mnt");
        std::fs::create_dir_all(&mountpoint)?;
        Ok(FuseIbdNode {
            binary: binary.to_path_buf(),
            mountpoint,
            cache_dir: root.join("cache"),
            args,
            log: root.join("daemon.log"),
        })
    }

    pub fn mount(&self) -> Result<FuseMount> {
        let mut command = Command::new(&self.binary);
        command.arg("mount").arg("--datadir").arg(&self.mountpoint);
        command.arg("--cache-dir").arg(&self.cache_dir).args(&self.args);
        FuseMount::start(command, &self.mountpoint, &self.log)
    }

    /// Deletes the node's local cache: its "disk" is gone. Only while it is not mounted.
    pub fn wipe_cache(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.cache_dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("cannot wipe {}", self.cache_dir.display()))
            }
            _ => Ok(()),
        }
    }
}

/// fuse-ibd serving the datadir from its local cache alone, without page server or WAL
/// service: every page is local.
pub struct FuseIbdLocal {
    binary: PathBuf,
}

impl Backend for FuseIbdLocal {
    fn name(&self) -> &'static str {
        "fuse-ibd-local"
    }

    fn describe(&self) -> String {
        format!(
            "`{} mount --datadir <mountpoint> --cache-dir <local dir>`: fuse-ibd with its local cache only \
             (no page server, no WAL service), so every page is in cache; like bindfs it opens its backing \
             files without O_DIRECT, so they go through the host page cache",
            self.binary.display()
        )
    }

    fn prepare(&self, root: &Path) -> Result<PreparedBackend> {
        let node = FuseIbdNode::in_dir(&self.binary, root, Vec::new())?;
        let fuse = node.mount()?;
        Ok(PreparedBackend::new(self.name(), node.mountpoint, Some(fuse)))
    }
}

/// fuse-ibd's cache budget on the warm and cold backends: above the data of every suite (fio
/// file ≤ 1 GiB, sysbench ~0.5 GiB), so a warm node never evicts. It reserves nothing: the
/// cache holds sparse files.
const REMOTE_CACHE_SIZE: &str = "16GiB";

/// fuse-ibd in front of a real pageserver-lite and walsync, which the backend starts.
/// `cold`: a fresh node on an empty cache before every measured run.
pub struct FuseIbdRemote {
    binaries: FuseIbdBinaries,
    cold: bool,
}

impl Backend for FuseIbdRemote {
    fn name(&self) -> &'static str {
        if self.cold {
            "fuse-ibd-cold"
        } else {
            "fuse-ibd-warm"
        }
    }

    fn describe(&self) -> String {
        let warm = format!(
            "`{} mount --pageserver <url> --walsync <url> --timeline {} --cache-size {REMOTE_CACHE_SIZE}` with \
             pageserver-lite and walsync started on loopback (data in the work dir): pages and redo are shipped \
             and fsync waits for the services",
            self.binaries.fuse_ibd.display(),
            crate::remote::TIMELINE
        );
        if self.cold {
            format!(
                "{warm}; before every measured run the node is unmounted and a fresh node is mounted on an \
                 empty cache dir (same timeline), so each page's first read is fetched from the pageserver; \
                 sysbench restarts MariaDB on the fresh node and does not prewarm it"
            )
        } else {
            format!(
                "{warm}; the cache budget exceeds the data, so after the fio prefill / sysbench load every page \
                 is in the local cache (opened without O_DIRECT, like bindfs)"
            )
        }
    }

    fn prepare(&self, root: &Path) -> Result<PreparedBackend> {
        let storage = Storage::start(&self.binaries, &root.join("storage"))?;
        let mut args = storage.mount_args();
        args.extend(["--cache-size".to_string(), REMOTE_CACHE_SIZE.to_string()]);
        let node = FuseIbdNode::in_dir(&self.binaries.fuse_ibd, root, args)?;
        let fuse = node.mount()?;
        let mut prepared = PreparedBackend::new(self.name(), node.mountpoint.clone(), Some(fuse));
        prepared.storage = Some(storage);
        prepared.cold_node = self.cold.then_some(node);
        Ok(prepared)
    }
}

/// An in-memory FUSE filesystem configured like fuse-ibd (`stubfs.rs`): the FUSE round trip alone.
pub struct FuseStub;

impl Backend for FuseStub {
    fn name(&self) -> &'static str {
        "fuse-ibd-stub"
    }

    fn describe(&self) -> String {
        "in-memory FUSE filesystem in this crate (src/stubfs.rs) with fuse-ibd's kernel settings (async DIO, \
         direct I/O + parallel direct writes for O_DIRECT opens, 8 threads, max_write 1 MiB): the kernel's \
         FUSE round trip without fuse-ibd's work; fio only"
            .to_string()
    }

    fn prepare(&self, root: &Path) -> Result<PreparedBackend> {
        let mountpoint = root.join("mnt");
        std::fs::create_dir(&mountpoint)?;
        let mut command = Command::new(std::env::current_exe()?);
        command.arg(stubfs::SUBCOMMAND).arg(&mountpoint);
        let fuse = FuseMount::start(command, &mountpoint, &root.join("daemon.log"))?;
        let mut prepared = PreparedBackend::new(self.name(), mountpoint, Some(fuse));
        prepared.runs_mariadb = false;
        Ok(prepared)
    }
}

/// A FUSE daemon running in the foreground and the mountpoint it serves.
pub struct FuseMount {
    mountpoint: PathBuf,
    daemon: ChildGuard,
}

/// fuse-ibd lays out a fresh node's files and synthesizes its log before it mounts.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

impl FuseMount {
    /// Starts the daemon, its output appended to `log`, and waits until the kernel shows the mount.
    pub fn start(mut command: Command, mountpoint: &Path, log: &Path) -> Result<Self> {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let what = format!("FUSE daemon {:?}", command.get_program());
        let daemon = ChildGuard::spawn(&mut command, &what)?;
        let mut mount = FuseMount {
            mountpoint: mountpoint.to_path_buf(),
            daemon,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        while !is_mountpoint(mountpoint)? {
            if let Some(status) = mount.daemon.try_wait()? {
                bail!(
                    "{what} exited ({status}) before mounting:\n{}",
                    process::log_tail(log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} did not mount {} within {MOUNT_TIMEOUT:?}",
                    mountpoint.display()
                );
            }
            process::sleep_interruptible(Duration::from_millis(20))?;
        }
        Ok(mount)
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// SIGKILL, as when the node dies: no flush, no clean unmount. The dead mount is then
    /// detached (by `Drop`).
    pub fn crash(mut self) -> Result<()> {
        self.daemon.kill()?;
        Ok(())
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        // A server or fio that just exited may still hold the mount for a moment: retry, then
        // detach lazily so the runner never leaves a mount behind.
        for attempt in 0..10 {
            let lazy = attempt == 9;
            let mut command = Command::new("fusermount3");
            command.arg(if lazy { "-uz" } else { "-u" }).arg(&self.mountpoint);
            match process::output(&mut command, "fusermount3") {
                Ok(_) => break,
                Err(err) if lazy => {
                    eprintln!("warning: cannot unmount {}: {err:#}", self.mountpoint.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
        // The daemon exits by itself once unmounted; SIGTERM (also a clean exit for libfuse
        // and fuse-ibd) only if it lingers. Not interruptible: this runs during Ctrl-C cleanup.
        if let Err(err) = self.daemon.stop(Duration::from_secs(10)) {
            eprintln!("warning: cannot stop the FUSE daemon: {err:#}");
        }
    }
}

/// True when `path` is on a different device than its parent, i.e. something is mounted there.
fn is_mountpoint(path: &Path) -> Result<bool> {
    let parent = path.parent().context("mountpoint has no parent")?;
    Ok(std::fs::metadata(path)?.dev() != std::fs::metadata(parent)?.dev())
}

/// The filesystem type under `path` (e.g. "ext4", "tmpfs"), for the report: a "native" run on
/// tmpfs would measure memory, not the disk.
pub fn filesystem_type(path: &Path) -> Result<String> {
    let path = std::fs::canonicalize(path)?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let best = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, mountpoint, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            Some((mountpoint.replace("\\040", " "), fs_type.to_string()))
        })
        .filter(|(mountpoint, _)| path.starts_with(mountpoint))
        .max_by_key(|(mountpoint, _)| mountpoint.len());
    Ok(best
        .map(|(_, fs_type)| fs_type)
        .unwrap_or_else(|| "unknown".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binaries() -> FuseIbdBinaries {
        FuseIbdBinaries::beside(Path::new("/nonexistent/fuse-ibd"))
    }

    #[test]
    fn unknown_backend_names_list_the_available_ones() {
        let err = by_name("fuse-ibd-hot", &binaries()).err().unwrap().to_string();
        assert!(
            err.contains("native, bindfs, fuse-ibd-local, fuse-ibd-warm, fuse-ibd-cold, fuse-ibd-stub"),
            "{err}"
        );
    }

    #[test]
    fn fuse_ibd_backends_need_their_binaries_before_anything_is_set_up() {
        for name in ["fuse-ibd-local", "fuse-ibd-warm", "fuse-ibd-cold"] {
            let err = by_name(name, &binaries()).err().unwrap().to_string();
            assert!(err.contains("/nonexistent/fuse-ibd"), "{name}: {err}");
        }
        let err = by_name("fuse-ibd-warm", &binaries()).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/walsync"), "{err}");
        assert!(
            by_name("fuse-ibd-stub", &binaries()).is_ok(),
            "the stub is this binary"
        );
    }

    #[test]
    fn native_prepares_a_plain_directory() -> Result<()> {
        let root = tempfile::tempdir()?;
        let mut prepared = by_name("native", &binaries())?.prepare(root.path())?;
        assert!(prepared.dir.is_dir());
        assert_eq!(prepared.daemon_pid(), None);
        assert!(prepared.runs_mariadb && !prepared.is_cold());
        prepared.fresh_node()?;
        assert_eq!(prepared.cost_meter()?.finish()?, BackendCost::default());
        Ok(())
    }

    #[test]
    fn backend_cost_lists_only_what_was_measured() {
        let cost = BackendCost {
            daemon_cpu_pct: Some(40.0),
            fetched_pages: Some(12.0),
            ..BackendCost::default()
        };
        let names: Vec<String> = cost.values().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["daemon CPU %", "fetched pages"]);
        assert_eq!(cost.describe(), ", daemon CPU 40%, fetched 12 pages");
    }

    #[test]
    fn status_lines_are_read_by_exact_key() -> Result<()> {
        let mount = tempfile::tempdir()?;
        std::fs::create_dir(mount.path().join(".fuse-ibd"))?;
        std::fs::write(
            mount.path().join(".fuse-ibd/status"),
            "remote_fetched_pages_x=1\nremote_fetched_pages=1024\n",
        )?;
        assert_eq!(fuse_ibd_status(mount.path(), FETCHED_PAGES)?, 1024);
        assert!(fuse_ibd_status(mount.path(), "cache_hits").is_err());
        Ok(())
    }

    #[test]
    fn filesystem_type_of_root_is_known() -> Result<()> {
        assert_ne!(filesystem_type(Path::new("/"))?, "unknown");
        Ok(())
    }
}
