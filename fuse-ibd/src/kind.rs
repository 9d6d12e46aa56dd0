//! What a file in the datadir is, decided by its name (DESIGN.md section 3). The kind decides the
//! read path, the write path and the durability point of every operation on it.

use std::ffi::OsStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// InnoDB tablespaces: `*.ibd`, `ibdata*`, `undo*`. Page-granular; page writes are atomic.
    Page,
    /// The redo log `ib_logfile0` and `ib_logfile101` (transient, during a resize).
    Redo,
    /// Recreated at every start, never durable: `ibtmp1`, pid files, sockets.
    Scratch,
    /// Everything else (`*.frm`, `db.opt`, Aria files, `ddl_recovery.log`, binlogs, `#sql*` that
    /// `ALTER TABLE` renames into place, ...): block-granular, durable at fsync.
    Generic,
}

impl FileKind {
    pub fn of(name: &OsStr) -> Self {
        let Some(name) = name.to_str() else {
            return FileKind::Generic;
        };
        if name == "ib_logfile0" || name == "ib_logfile101" {
            FileKind::Redo
        } else if name.ends_with(".ibd") || name.starts_with("ibdata") || is_undo_tablespace(name) {
            FileKind::Page
        } else if name == "ibtmp1" || name.ends_with(".pid") || name.ends_with(".sock") {
            FileKind::Scratch
        } else {
            FileKind::Generic
        }
    }

    /// Whether files of this kind are shipped to the pageserver (and cached block by block).
    pub fn is_shipped(self) -> bool {
        matches!(self, FileKind::Page | FileKind::Generic)
    }

    /// Label for metrics and the status file.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Page => "page",
            FileKind::Redo => "redo",
            FileKind::Scratch => "scratch",
            FileKind::Generic => "generic",
        }
    }
}

/// `undo001` ... `undo127` (`innodb_undo_tablespaces`).
fn is_undo_tablespace(name: &str) -> bool {
    name.strip_prefix("undo")
        .is_some_and(|n| n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datadir_files_are_classified_as_design_md_says() {
        let kind = |n: &str| FileKind::of(OsStr::new(n));
        for page in ["t1.ibd", "#sql-alter-1-2.ibd", "ibdata1", "ibdata2", "undo001"] {
            assert_eq!(kind(page), FileKind::Page, "{page}");
        }
        assert_eq!(kind("ib_logfile0"), FileKind::Redo);
        assert_eq!(kind("ib_logfile101"), FileKind::Redo);
        for scratch in ["ibtmp1", "host.pid", "mysqld.sock"] {
            assert_eq!(kind(scratch), FileKind::Scratch, "{scratch}");
        }
        for generic in [
            "t1.frm",
            "db.opt",
            "global_priv.MAD",
            "aria_log.00000001",
            "#sql-1.frm",
            "undo1",
            "ib_buffer_pool",
        ] {
            assert_eq!(kind(generic), FileKind::Generic, "{generic}");
        }
    }
}
