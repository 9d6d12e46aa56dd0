//! The one place for the protocol between `fuse-ibd` and the storage services.
//!
//! - [`client`]: an HTTP/1.1 keep-alive client with bounded retries and backoff, shared by the
//!   per-service clients.
//! - [`error`]: the JSON error body every service answers with on 4xx/5xx.
//! - [`server`] (feature `server`): the plumbing the services share (accept loop with graceful
//!   shutdown, body limits, JSON/bytes/metrics responses), so each service only writes its routes.
//! - Per-service wire types and typed clients live in their own modules (`pageserver`, `walsync`).

pub mod client;
pub mod error;
pub mod pageserver;
#[cfg(feature = "server")]
pub mod server;
pub mod walsync;

pub use client::{ClientError, HttpClient, RetryPolicy};
pub use error::ErrorBody;

/// CRC-32C (Castagnoli) as used end to end for pages, blocks and WAL chunks (DESIGN.md invariant 5).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}
