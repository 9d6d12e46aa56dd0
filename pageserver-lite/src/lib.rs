//! `pageserver-lite`: a durable, versioned page store with timelines, served over HTTP.
//!
//! It keeps every page write of a MariaDB datadir (shipped by `fuse-ibd`) as a new version tagged
//! with a per-timeline sequence number and the page's LSN, so any past state can be read back and
//! branched off in O(1) (DESIGN.md section 5). The HTTP API is documented in `docs/api.md`; its
//! wire types and client live in `ibd_api::pageserver`.
//!
//! - [`storage`]: segments of CRC-framed records, the in-memory index and its snapshot, the
//!   group-commit writer, recovery, GC and compaction.
//! - [`timeline`] and [`namespace`]: branches and the versioned file namespace.
//! - [`http`]: the routes, a thin adapter over [`Store`].
//! - [`metrics`]: `pageserver_*` storage metrics.

pub mod http;
pub mod metrics;
pub mod namespace;
pub mod storage;
pub mod timeline;

pub use storage::{MaintenanceReport, Store, StoreConfig, StoreError, SyncHook};
