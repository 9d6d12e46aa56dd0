//! InnoDB on-disk formats of MariaDB 10.11, exact and without I/O.
//!
//! - [`page`]: data pages: FIL header/trailer, page types, checksums (full_crc32, crc32, innodb),
//!   the FSP header of page 0 and tablespace flags.
//! - [`redo`]: the redo log `ib_logfile0` (format 10.8+, "Phys"): header and checkpoint blocks,
//!   LSN/offset geometry, the mini-transaction scanner that stops exactly where the server's
//!   recovery does, and a builder for synthetic logs used on fresh nodes.
//!
//! Everything here is a pure function of byte slices, so it is cheap to test against samples the
//! installed server produced (`testdata/`) and to fuzz.

pub mod page;
pub mod redo;
