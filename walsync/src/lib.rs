//! walsync: a durable, LSN-addressed WAL service for InnoDB redo (the "safekeeper").
//!
//! Data flow of an append: [`http`] (or the append [`stream`]) checks the chunk's CRC-32C and, on
//! the connection's own thread, calls the [`timeline`], which checks term and LSN continuity under
//! the timeline's lock, writes a CRC-framed record to the tail segment ([`storage::wal`],
//! [`storage::segment`]), group-commits with one `fdatasync` shared by every append written
//! meanwhile, and returns the durable LSN, which the same thread answers with. Reads go through
//! the segment index ([`storage::index`]). Terms and log geometry live in each timeline's metadata
//! file ([`storage::meta`]), checkpoints in an append-only log ([`storage::checkpoints`]);
//! [`timelines`] holds them all, with branches; [`retention`] removes WAL no checkpoint in the
//! window or branch point still needs.

pub mod error;
pub mod http;
pub mod metrics;
pub mod retention;
pub mod storage;
pub mod stream;
pub mod timeline;
pub mod timelines;

pub use error::WalError;
