//! Backends: the storage setups being compared. A backend turns an empty directory on the local
//! disk into the directory the benchmarks use (fio's file, MariaDB's datadir), names the daemon
//! whose CPU is worth measuring, and undoes everything when the prepared backend is dropped.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{self, ChildGuard};

/// A storage setup under test.
pub trait Backend {
    /// Short name used on the command line, in tables and in plots.
    fn name(&self) -> &'static str;

    /// A one-line description for the report (how it is mounted, with which options).
    fn describe(&self) -> String;

    /// Sets the backend up in `root`, an empty directory on the local disk that it owns.
    fn prepare(&self, root: &Path) -> Result<PreparedBackend>;
}

/// A backend that is ready; dropping it tears it down (unmounts, stops its daemon).
pub struct PreparedBackend {
    pub name: &'static str,
    /// Where benchmark files and datadirs go.
    pub dir: PathBuf,
    fuse: Option<FuseMount>,
}

impl PreparedBackend {
    /// The process serving the files, if any: its CPU is the cost of the backend.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.fuse.as_ref().map(|mount| mount.daemon.pid())
    }
}

/// Names accepted by `--backends`.
pub const AVAILABLE: &[&str] = &["native", "bindfs", "fuse-ibd-local"];

/// `fuse_ibd_bin` is the fuse-ibd binary, used only by the fuse-ibd backends.
pub fn by_name(name: &str, fuse_ibd_bin: &Path) -> Result<Box<dyn Backend>> {
    match name {
        "native" => Ok(Box::new(Native)),
        "bindfs" => Ok(Box::new(Bindfs)),
        "fuse-ibd-local" => Ok(Box::new(FuseIbdLocal {
            binary: fuse_ibd_bin.to_path_buf(),
        })),
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
        Ok(PreparedBackend {
            name: self.name(),
            dir,
            fuse: None,
        })
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
        let fuse = FuseMount::start(command, &mountpoint, root)?;
        Ok(PreparedBackend {
            name: self.name(),
            dir: mountpoint,
            fuse: Some(fuse),
        })
    }
}

/// fuse-ibd serving the datadir from its local cache alone. Until the page server and WAL
/// service take part, every page is local: this is the warm case without a remote behind it.
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
        let mountpoint = root.join("mnt");
        std::fs::create_dir(&mountpoint)?;
        let mut command = Command::new(&self.binary);
        command.arg("mount").arg("--datadir").arg(&mountpoint);
        command.arg("--cache-dir").arg(root.join("cache"));
        let fuse = FuseMount::start(command, &mountpoint, root)?;
        Ok(PreparedBackend {
            name: self.name(),
            dir: mountpoint,
            fuse: Some(fuse),
        })
    }
}

/// A FUSE daemon running in the foreground and the mountpoint it serves.
struct FuseMount {
    mountpoint: PathBuf,
    daemon: ChildGuard,
}

impl FuseMount {
    /// Starts the daemon and waits until the kernel shows the mount.
    fn start(mut command: Command, mountpoint: &Path, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join("daemon.log");
        let log_file = std::fs::File::create(&log)?;
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mountpoint(mountpoint)? {
            if let Some(status) = mount.daemon.try_wait()? {
                bail!(
                    "{what} exited ({status}) before mounting:\n{}",
                    process::log_tail(&log)
                );
            }
            if Instant::now() > deadline {
                bail!("{what} did not mount {} within 10 s", mountpoint.display());
            }
            process::sleep_interruptible(Duration::from_millis(20))?;
        }
        Ok(mount)
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

    #[test]
    fn unknown_backend_names_list_the_available_ones() {
        let err = by_name("fuse-ibd-warm", Path::new("fuse-ibd"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("native, bindfs, fuse-ibd-local"), "{err}");
    }

    #[test]
    fn native_prepares_a_plain_directory() -> Result<()> {
        let root = tempfile::tempdir()?;
        let prepared = by_name("native", Path::new("fuse-ibd"))?.prepare(root.path())?;
        assert!(prepared.dir.is_dir());
        assert_eq!(prepared.daemon_pid(), None);
        Ok(())
    }

    #[test]
    fn filesystem_type_of_root_is_known() -> Result<()> {
        assert_ne!(filesystem_type(Path::new("/"))?, "unknown");
        Ok(())
    }
}
