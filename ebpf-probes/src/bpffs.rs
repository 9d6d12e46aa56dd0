//! The kernel filesystems the probes depend on (bpffs, and tracefs for the syscall source), the
//! FUSE connection id of a mount, and the per-instance pin directory in bpffs.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::ProbeError;

/// Pins live under `<bpffs>/fuse_ibd_v2/<instance>-<pid>/`. Bump the version whenever a map
/// key or value layout changes: aya reopens existing pins without checking their layout, so
/// older layouts are deleted at load time instead of being reused.
pub const PIN_LAYOUT_DIR: &str = "fuse_ibd_v2"; // = PIN_LAYOUT_PREFIX + PIN_LAYOUT_VERSION
const PIN_LAYOUT_PREFIX: &str = "fuse_ibd_v";
const PIN_LAYOUT_VERSION: u32 = 2;

pub(crate) const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEFS_MAGIC: i64 = 0x7472_6163;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

fn statfs_type(path: &Path) -> io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c_path is NUL-terminated and buf is a valid out-pointer for statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), buf.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded, so it initialised buf.
    let fs_type = unsafe { buf.assume_init() }.f_type;
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on x86_64 but narrower elsewhere
    Ok(fs_type as i64)
}

fn ensure_mounted(
    target: &str,
    fs_type: &'static str,
    magic: i64,
    needed_for: &'static str,
) -> Result<(), ProbeError> {
    let statfs = statfs_type(Path::new(target)).map_err(|source| ProbeError::Io {
        what: "statfs",
        path: target.into(),
        source,
    })?;
    if statfs == magic {
        return Ok(());
    }
    let c_target = CString::new(target).expect("no NUL in constant path");
    let c_type = CString::new(fs_type).expect("no NUL in constant name");
    // SAFETY: all pointers are NUL-terminated strings that outlive the call; data may be NULL.
    let rc = unsafe {
        libc::mount(
            c_type.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Mount {
            fs_type,
            path: target.into(),
            needed_for,
            source: io::Error::last_os_error(),
        });
    }
    info!(target, fs_type, "mounted missing kernel filesystem");
    Ok(())
}

pub(crate) fn ensure_bpffs() -> Result<(), ProbeError> {
    ensure_mounted(BPFFS, "bpf", BPF_FS_MAGIC, "to pin the maps")
}

/// aya attaches classic tracepoints (the syscall source) by their id in tracefs, which it looks
/// for once per process: call this before the first attach.
pub(crate) fn ensure_tracefs() -> Result<(), ProbeError> {
    ensure_mounted(
        TRACEFS,
        "tracefs",
        TRACEFS_MAGIC,
        "to attach the syscall tracepoints",
    )?;
    // tracefs is root-only (mode 0700) by default; aya reports an unreadable one as "not found".
    fs::read_dir(TRACEFS).map_err(|source| ProbeError::Io {
        what: "reading",
        path: TRACEFS.into(),
        source,
    })?;
    Ok(())
}

/// The kernel's id of the FUSE connection behind `mount` (`fuse_conn->dev`, which the
/// tracepoints report), checked to really be a FUSE mount.
pub(crate) fn fuse_connection_dev(mount: &Path) -> Result<u32, ProbeError> {
    let io_err = |what, source| ProbeError::Io {
        what,
        path: mount.into(),
        source,
    };
    let fs_type = statfs_type(mount).map_err(|e| io_err("statfs", e))?;
    if fs_type != FUSE_SUPER_MAGIC {
        return Err(ProbeError::NotFuse {
            path: mount.into(),
            fs_type,
        });
    }
    let st_dev = fs::metadata(mount).map_err(|e| io_err("stat", e))?.dev();
    // st_dev uses the userspace encoding; the kernel's dev_t is MKDEV = major << 20 | minor.
    Ok((libc::major(st_dev) << 20) | libc::minor(st_dev))
}

/// `<bpffs>/fuse_ibd_v2/<instance>-<pid>/` (bpffs forbids dots in names): one directory per loader, so a test and a
/// running fuse-ibd never share maps. Removed again on drop.
#[derive(Debug)]
pub(crate) struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub(crate) fn create(bpffs: &Path, instance: &str) -> Result<Self, ProbeError> {
        let layout_dir = bpffs.join(PIN_LAYOUT_DIR);
        remove_stale_pins(bpffs, &layout_dir);
        let path = layout_dir.join(format!("{instance}-{}", std::process::id()));
        // Another loader dropping its pins removes the layout directory once it is empty, possibly
        // between our two calls: then create it again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            fs::create_dir_all(&layout_dir).map_err(|source| ProbeError::Io {
                what: "creating",
                path: layout_dir.clone(),
                source,
            })?;
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(ProbeError::PinDirInUse(path))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => continue,
                Err(source) => {
                    return Err(ProbeError::Io {
                        what: "creating",
                        path,
                        source,
                    })
                }
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(error) = remove_pin_dir(&self.path) {
            warn!(path = %self.path.display(), %error, "cannot remove BPF pins");
        }
    }
}

/// Removes one loader's pin directory, and the layout directory above it if that is now empty.
pub(crate) fn remove_pin_dir(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        // Already removed, e.g. by `KernelLatency::remove_pins` before the drop.
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    if let Some(layout_dir) = path.parent() {
        // Fails harmlessly (not empty, or gone) when other loaders are running or just removed it.
        let _ = fs::remove_dir(layout_dir);
    }
    Ok(())
}

/// Deletes pins of older layouts (never newer ones: a newer loader may be running) and of
/// loaders whose process is gone.
fn remove_stale_pins(bpffs: &Path, layout_dir: &Path) {
    let entries = |dir: &Path| {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
    };
    let old_layouts = entries(bpffs).filter(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        let version = name
            .strip_prefix(PIN_LAYOUT_PREFIX)
            .and_then(|v| v.parse::<u32>().ok());
        version.is_some_and(|v| v < PIN_LAYOUT_VERSION)
    });
    let dead_loaders = entries(layout_dir).filter(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        let pid = name.rsplit_once('-').and_then(|(_, pid)| pid.parse::<u32>().ok());
        pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
    for stale in old_layouts.chain(dead_loaders) {
        match fs::remove_dir_all(&stale) {
            Ok(()) => info!(path = %stale.display(), "removed stale BPF pins"),
            Err(error) => warn!(path = %stale.display(), %error, "cannot remove stale BPF pins"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_dir_carries_the_layout_version() {
        assert_eq!(PIN_LAYOUT_DIR, format!("{PIN_LAYOUT_PREFIX}{PIN_LAYOUT_VERSION}"));
    }

    #[test]
    fn non_fuse_paths_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            fuse_connection_dev(dir.path()),
            Err(ProbeError::NotFuse { .. })
        ));
    }
}
