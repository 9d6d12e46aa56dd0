//! Kernel-side I/O latency attribution for the `fuse-ibd` datadir and the MariaDB on top of it.
//!
//! BPF programs (`bpf/iolat.bpf.c`, built by clang in `build.rs`) measure three sources:
//! FUSE requests of one mount (kernel queueing + daemon time), file syscalls of `mariadbd`,
//! and its io_uring requests. [`KernelLatency`] loads and attaches them with aya, pins the
//! result maps under `/sys/fs/bpf/fuse_ibd_v2/<instance>-<pid>/` and reads them back as
//! [`LatencySnapshot`]s; [`KernelLatencyCollector`] exports them to Prometheus.

mod bpffs;
mod histogram;
mod loader;
mod prometheus;

pub use bpffs::PIN_LAYOUT_DIR;
pub use histogram::{slot_range_ns, LatencySnapshot, OpHistogram, OpId, Source, SLOTS, TRACED_SYSCALLS};
pub use loader::{KernelLatency, PidSource, ProbeConfig, ProgramStats, SourceStatus};
pub use prometheus::{KernelLatencyCollector, BUCKET_BOUNDS_SECONDS, METRIC_NAME};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("eBPF probes unavailable: {0}")]
    Unavailable(String),
    #[error("{path} is not a FUSE mount (statfs type {fs_type:#x})")]
    NotFuse { path: PathBuf, fs_type: i64 },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {fs_type} at {path} ({needed_for}): {source}")]
    Mount {
        fs_type: &'static str,
        path: PathBuf,
        needed_for: &'static str,
        source: std::io::Error,
    },
    #[error("pin directory {0} is in use by another loader in this process")]
    PinDirInUse(PathBuf),
    #[error("loading BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("BPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("pinning BPF map {name}: {source}")]
    Pin {
        name: &'static str,
        source: aya::pin::PinError,
    },
    #[error("BPF program {name}: {source}")]
    Program {
        name: String,
        source: aya::programs::ProgramError,
    },
    #[error("no probe could be attached: {0}")]
    NothingAttached(String),
}
