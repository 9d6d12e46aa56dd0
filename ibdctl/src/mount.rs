//! FUSE mount points.

use std::path::Path;
use std::process::Command;

use crate::error::{CtlError, Result};

/// Whether `path` is a mount point right now (`/proc/self/mountinfo`, field 5, octal-escaped).
pub fn is_mounted(path: &Path) -> bool {
    // A dead FUSE mount fails to stat (ENOTCONN): resolve its parent instead.
    let resolved = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => parent.canonicalize().map(|p| p.join(name)),
        _ => path.canonicalize(),
    };
    mounted_in(&mountinfo(), &resolved.unwrap_or_else(|_| path.to_path_buf()))
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

fn mounted_in(mountinfo: &str, path: &Path) -> bool {
    let target = escape(&path.to_string_lossy());
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

fn escape(path: &str) -> String {
    path.replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012")
}

/// Detaches the mount at `path` lazily (`fusermount3 -u -z`): the only way out of a mount whose
/// daemon died.
pub fn lazy_unmount(path: &Path) -> Result<()> {
    let out = Command::new(crate::prereq::tool("fusermount3")?)
        .arg("-u")
        .arg("-z")
        .arg(path)
        .output()
        .map_err(|e| CtlError::io("cannot run fusermount3", e))?;
    if !out.status.success() && is_mounted(path) {
        return Err(CtlError::Failed(format!(
            "cannot unmount {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_matched_exactly_and_escaped() {
        let info = "36 25 0:32 / /h/computes/main/datadir rw,nosuid - fuse.fuse-ibd fuse-ibd rw\n\
                    37 25 0:33 / /h/with\\040space rw - fuse x rw\n";
        assert!(mounted_in(info, Path::new("/h/computes/main/datadir")));
        assert!(!mounted_in(info, Path::new("/h/computes/main")));
        assert!(!mounted_in(info, Path::new("/h/computes/main/datadir/x")));
        assert!(mounted_in(info, Path::new("/h/with space")));
    }

    #[test]
    fn the_root_is_mounted_and_a_temp_dir_is_not() {
        assert!(is_mounted(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
    }
}
