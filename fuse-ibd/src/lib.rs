//! `fuse-ibd`: a FUSE filesystem mounted as the datadir of a stock MariaDB.
//!
//! Data flow: the kernel's requests reach [`fuse::FuseAdapter`], a thin `fuser` adapter that
//! calls the core [`datadir::Datadir`]. The core classifies each file by [`kind::FileKind`],
//! serves it from the local cache (the backing tree under `--cache-dir`), keeps 16 KiB page
//! writes atomic ([`page_locks`]), and maps every failure to an errno in one place ([`error`]).
//! What the mount promises is written down in `docs/SEMANTICS.md`.

pub mod cache;
pub mod datadir;
pub mod error;
pub mod fuse;
pub mod inode;
pub mod kind;
pub mod metrics;
pub mod metrics_server;
pub mod page_locks;
pub mod page_ship;
pub mod preflight;
pub mod redo_tail;
pub mod wait;
pub mod wal_ship;
