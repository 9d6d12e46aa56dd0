//! The one place where failures become errno values (and, in the adapter, metrics).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("stale file handle {0}")]
    BadHandle(u64),
    #[error("{op}: {source}")]
    Io { op: &'static str, source: io::Error },
    #[error("{0} is not supported on a fuse-ibd mount")]
    Unsupported(&'static str),
    #[error("{0} is read-only")]
    ReadOnly(&'static str),
    #[error("name contains a NUL byte")]
    BadName,
    #[error("{op}: {message}")]
    Remote { op: &'static str, message: String },
}

impl FsError {
    pub fn io(op: &'static str) -> impl FnOnce(io::Error) -> FsError {
        move |source| FsError::Io { op, source }
    }

    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::ReadOnly(_) => libc::EACCES,
            FsError::BadName => libc::EINVAL,
            // The remote side failed for longer than the configured limit.
            FsError::Remote { .. } => libc::EIO,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_errno_and_others_map_to_fixed_values() {
        let e = FsError::io("read")(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.errno(), libc::ENOSPC);
        assert_eq!(FsError::io("x")(io::Error::other("no errno")).errno(), libc::EIO);
        assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
        assert_eq!(FsError::Unsupported("mode").errno(), libc::EOPNOTSUPP);
    }
}
