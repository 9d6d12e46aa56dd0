//! Errors of the core. Each says what failed and, where there is something to do, what to do; the
//! HTTP layer maps the kind to a status code and [`CtlError::code`] to the error body's code.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The request itself is wrong (bad id, bad config line): nothing was changed.
    #[error("{0}")]
    BadRequest(String),
    /// No such project or compute.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (exists, running, one writer per timeline).
    #[error("{0}")]
    Conflict(String),
    /// A tool, device or binary the stack needs is missing.
    #[error("{0}")]
    Missing(String),
    /// A component did not start, stop or answer as it should.
    #[error("{0}")]
    Failed(String),
    /// The cause is part of the message (not a `source()`), so every front end shows it once.
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
}

pub type Result<T, E = CtlError> = std::result::Result<T, E>;

impl CtlError {
    /// The machine-readable code of the HTTP error body.
    pub fn code(&self) -> &'static str {
        match self {
            CtlError::BadRequest(_) => "bad_request",
            CtlError::NotFound(_) => "not_found",
            CtlError::Conflict(_) => "conflict",
            CtlError::Missing(_) => "missing_prerequisite",
            CtlError::Failed(_) => "failed",
            CtlError::Io { .. } => "io_error",
        }
    }

    pub fn io(what: impl Into<String>, cause: std::io::Error) -> Self {
        CtlError::Io {
            what: what.into(),
            cause,
        }
    }

    /// An I/O error on `path`, phrased as "<verb> <path>".
    pub fn path(verb: &str, path: &Path, source: std::io::Error) -> Self {
        Self::io(format!("cannot {verb} {}", path.display()), source)
    }
}
