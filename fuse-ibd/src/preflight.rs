//! Checks before mounting, each failing with what to do about it.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("/dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE is available")]
    NoDevFuse,
    #[error("fusermount3 not found: apt-get install fuse3")]
    NoFusermount,
    #[error("mountpoint {0} does not exist or is not a directory: mkdir -p it first")]
    NotADirectory(String),
    #[error("mountpoint {0} is already a mount point: unmount it (fusermount3 -u {0}) or pick another")]
    AlreadyMounted(String),
    #[error("mountpoint {0} is not empty: the datadir must be mounted on an empty directory")]
    NotEmpty(String),
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub fn check(mountpoint: &Path) -> Result<(), PreflightError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(PreflightError::NoDevFuse);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    if !path
        .split(':')
        .chain(["/usr/bin", "/bin"])
        .any(|d| Path::new(d).join("fusermount3").is_file())
    {
        return Err(PreflightError::NoFusermount);
    }
    let shown = mountpoint.display().to_string();
    if !mountpoint.is_dir() {
        return Err(PreflightError::NotADirectory(shown));
    }
    if is_mount_point(mountpoint)? {
        return Err(PreflightError::AlreadyMounted(shown));
    }
    let io = |source| PreflightError::Io {
        path: shown.clone(),
        source,
    };
    if std::fs::read_dir(mountpoint).map_err(io)?.next().is_some() {
        return Err(PreflightError::NotEmpty(shown));
    }
    Ok(())
}

/// Whether `path` appears as a mount point in `/proc/self/mountinfo` (field 5).
pub fn is_mount_point(path: &Path) -> Result<bool, PreflightError> {
    let canonical = path.canonicalize().map_err(|source| PreflightError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| PreflightError::Io {
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    let target = canonical.to_string_lossy();
    // Mount points are octal-escaped in mountinfo (space = \040).
    let escaped = target.replace(' ', "\\040");
    Ok(info
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(escaped.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_missing_and_non_empty_mountpoints() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        if Path::new("/dev/fuse").exists() && which_fusermount() {
            assert!(matches!(check(&missing), Err(PreflightError::NotADirectory(_))));
            std::fs::write(dir.path().join("f"), b"x").unwrap();
            assert!(matches!(check(dir.path()), Err(PreflightError::NotEmpty(_))));
        }
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(!is_mount_point(dir.path()).unwrap());
    }

    fn which_fusermount() -> bool {
        ["/usr/bin/fusermount3", "/bin/fusermount3"]
            .iter()
            .any(|p| Path::new(p).exists())
    }
}
