//! Latency histograms as read from the BPF maps: log2 slots of nanoseconds plus an exact
//! count and sum per (source, operation).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Number of log2 slots: slot `s` counts latencies in `[2^s, 2^(s+1))` ns (slot 0 also 0 ns).
pub const SLOTS: usize = 64;

/// Where a latency sample was measured. Values match `SOURCE_*` in `bpf/iolat.bpf.c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// FUSE request from being queued by the kernel until the daemon's reply is processed.
    Fuse,
    /// A file syscall of the traced process, entry to exit.
    Syscall,
    /// An io_uring request of the traced process, submission to completion.
    IoUring,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Fuse, Source::Syscall, Source::IoUring];

    pub(crate) fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.get(raw as usize).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fuse => "fuse",
            Source::Syscall => "syscall",
            Source::IoUring => "io_uring",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The file syscalls traced for the MariaDB process, by name and number on this architecture.
/// The index is the op the BPF side records (`SYSCALL_PROBES` in `bpf/iolat.bpf.c`), and the
/// name that of its programs and tracepoints (`sys_enter_<name>`, `sys_exit_<name>`).
pub const TRACED_SYSCALLS: [(&str, libc::c_long); 6] = [
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
];

/// FUSE opcodes (include/uapi/linux/fuse.h), index = opcode.
const FUSE_OPS: [&str; 53] = [
    "",
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "symlink",
    "",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "statfs",
    "release",
    "",
    "fsync",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "flush",
    "init",
    "opendir",
    "readdir",
    "releasedir",
    "fsyncdir",
    "getlk",
    "setlk",
    "setlkw",
    "access",
    "create",
    "interrupt",
    "bmap",
    "destroy",
    "ioctl",
    "poll",
    "notify_reply",
    "batch_forget",
    "fallocate",
    "readdirplus",
    "rename2",
    "lseek",
    "copy_file_range",
    "setupmapping",
    "removemapping",
    "syncfs",
    "tmpfile",
    "statx",
];

/// io_uring opcodes (include/uapi/linux/io_uring.h), index = opcode.
const IO_URING_OPS: [&str; 56] = [
    "nop",
    "readv",
    "writev",
    "fsync",
    "read_fixed",
    "write_fixed",
    "poll_add",
    "poll_remove",
    "sync_file_range",
    "sendmsg",
    "recvmsg",
    "timeout",
    "timeout_remove",
    "accept",
    "async_cancel",
    "link_timeout",
    "connect",
    "fallocate",
    "openat",
    "close",
    "files_update",
    "statx",
    "read",
    "write",
    "fadvise",
    "madvise",
    "send",
    "recv",
    "openat2",
    "epoll_ctl",
    "splice",
    "provide_buffers",
    "remove_buffers",
    "tee",
    "shutdown",
    "renameat",
    "unlinkat",
    "mkdirat",
    "symlinkat",
    "linkat",
    "msg_ring",
    "fsetxattr",
    "setxattr",
    "fgetxattr",
    "getxattr",
    "socket",
    "uring_cmd",
    "send_zc",
    "sendmsg_zc",
    "read_multishot",
    "waitid",
    "futex_wait",
    "futex_wake",
    "futex_waitv",
    "fixed_fd_install",
    "ftruncate",
];

/// One operation of one source, e.g. FUSE `read` or syscall `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId {
    pub source: Source,
    /// FUSE opcode, syscall number or io_uring opcode.
    pub op: u32,
}

impl OpId {
    /// Human-readable operation name, as used in the `op` Prometheus label.
    pub fn name(&self) -> String {
        let table: &[&str] = match self.source {
            Source::Fuse => &FUSE_OPS,
            Source::IoUring => &IO_URING_OPS,
            Source::Syscall => {
                let name = TRACED_SYSCALLS
                    .iter()
                    .find(|(_, nr)| *nr == libc::c_long::from(self.op));
                return name.map_or_else(|| format!("syscall_{}", self.op), |(name, _)| (*name).to_owned());
            }
        };
        match table.get(self.op as usize) {
            Some(name) if !name.is_empty() => (*name).to_owned(),
            _ => format!("op_{}", self.op),
        }
    }
}

/// Latency distribution of one operation.
#[derive(Clone, PartialEq, Eq)]
pub struct OpHistogram {
    /// Exact number of completed requests.
    pub count: u64,
    /// Exact sum of their latencies.
    pub sum_ns: u64,
    /// `slots[s]` = requests with latency in `[2^s, 2^(s+1))` ns.
    pub slots: [u64; SLOTS],
}

impl Default for OpHistogram {
    fn default() -> Self {
        Self {
            count: 0,
            sum_ns: 0,
            slots: [0; SLOTS],
        }
    }
}

impl fmt::Debug for OpHistogram {
    /// Only the non-empty slots, as `slot: count`; 64 mostly-zero slots bury test failures.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots: BTreeMap<usize, u64> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(slot, &n)| (slot, n))
            .collect();
        f.debug_struct("OpHistogram")
            .field("count", &self.count)
            .field("sum_ns", &self.sum_ns)
            .field("slots", &slots)
            .finish()
    }
}

/// Inclusive lower and exclusive upper bound of a slot, in ns.
pub fn slot_range_ns(slot: usize) -> (u64, u64) {
    let lower = if slot == 0 { 0 } else { 1u64 << slot };
    (lower, 1u64.checked_shl(slot as u32 + 1).unwrap_or(u64::MAX))
}

impl OpHistogram {
    /// Estimates the `q`-quantile (0..=1) by linear interpolation inside the log2 slot that
    /// holds it, like bcc's tools do. `None` when the histogram is empty.
    pub fn quantile_ns(&self, q: f64) -> Option<f64> {
        let total: u64 = self.slots.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (slot, &n) in self.slots.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let (lo, hi) = slot_range_ns(slot);
                let fraction = (rank - seen as f64) / n as f64;
                return Some(lo as f64 + fraction * (hi - lo) as f64);
            }
            seen += n;
        }
        None
    }

    /// What happened since `earlier` (counters only grow; saturate if the maps were reset).
    pub fn since(&self, earlier: &OpHistogram) -> OpHistogram {
        let mut slots = [0; SLOTS];
        for (slot, out) in slots.iter_mut().enumerate() {
            *out = self.slots[slot].saturating_sub(earlier.slots[slot]);
        }
        OpHistogram {
            count: self.count.saturating_sub(earlier.count),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
            slots,
        }
    }
}

/// All histograms at one point in time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub ops: BTreeMap<OpId, OpHistogram>,
}

impl LatencySnapshot {
    /// The histogram of `source`/`op_name`, if any request was seen.
    pub fn get(&self, source: Source, op_name: &str) -> Option<&OpHistogram> {
        self.ops
            .iter()
            .find(|(id, _)| id.source == source && id.name() == op_name)
            .map(|(_, h)| h)
    }

    /// Per-operation difference to an earlier snapshot; operations without new requests are dropped.
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        let ops = self
            .ops
            .iter()
            .map(|(id, h)| (*id, earlier.ops.get(id).map_or_else(|| h.clone(), |e| h.since(e))))
            .filter(|(_, h)| h.count > 0)
            .collect();
        LatencySnapshot { ops }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(samples_ns: &[u64]) -> OpHistogram {
        let mut h = OpHistogram::default();
        for &ns in samples_ns {
            h.slots[ns.max(1).ilog2() as usize] += 1;
            h.count += 1;
            h.sum_ns += ns;
        }
        h
    }

    #[test]
    fn slot_ranges_cover_u64() {
        assert_eq!(slot_range_ns(0), (0, 2));
        assert_eq!(slot_range_ns(10), (1024, 2048));
        assert_eq!(slot_range_ns(63), (1 << 63, u64::MAX));
    }

    #[test]
    fn quantiles_fall_in_the_right_slot() {
        let mut samples = vec![1_500; 99];
        samples.push(1_000_000);
        let h = histogram(&samples);
        let p50 = h.quantile_ns(0.5).unwrap();
        assert!((1024.0..2048.0).contains(&p50), "{p50}");
        let p100 = h.quantile_ns(1.0).unwrap();
        assert!((524_288.0..=1_048_576.0).contains(&p100), "{p100}");
        assert_eq!(OpHistogram::default().quantile_ns(0.5), None);
    }

    #[test]
    fn snapshot_difference_keeps_only_new_requests() {
        let read = OpId {
            source: Source::Fuse,
            op: 15,
        };
        let fsync = OpId {
            source: Source::Syscall,
            op: libc::SYS_fsync as u32,
        };
        let earlier = LatencySnapshot {
            ops: [(read, histogram(&[100, 200])), (fsync, histogram(&[5000]))].into(),
        };
        let later = LatencySnapshot {
            ops: [(read, histogram(&[100, 200, 300])), (fsync, histogram(&[5000]))].into(),
        };
        let delta = later.since(&earlier);
        assert_eq!(delta.ops.len(), 1);
        let h = delta.get(Source::Fuse, "read").unwrap();
        assert_eq!((h.count, h.sum_ns), (1, 300));
        assert_eq!(h.slots.iter().sum::<u64>(), 1);
    }

    #[test]
    fn operation_names() {
        assert_eq!(
            OpId {
                source: Source::Fuse,
                op: 15
            }
            .name(),
            "read"
        );
        assert_eq!(
            OpId {
                source: Source::Fuse,
                op: 7
            }
            .name(),
            "op_7"
        );
        assert_eq!(
            OpId {
                source: Source::IoUring,
                op: 2
            }
            .name(),
            "writev"
        );
        assert_eq!(
            OpId {
                source: Source::Syscall,
                op: libc::SYS_fdatasync as u32
            }
            .name(),
            "fdatasync"
        );
        assert_eq!(
            OpId {
                source: Source::Syscall,
                op: 0
            }
            .name(),
            "syscall_0"
        );
    }
}
