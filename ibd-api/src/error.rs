//! The error body of every non-2xx answer: `{"error": "<machine code>", "message": "<for humans>"}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `stale_term`, `crc_mismatch`, `bad_request`.
    pub error: String,
    /// What went wrong and, where possible, what to do about it.
    pub message: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
        }
    }
}
