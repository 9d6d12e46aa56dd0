//! Loads `iolat.bpf.o`, attaches each source independently, pins the maps, keeps the
//! MariaDB pid filter current and reads the histograms back.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, MapData, MapError, PerCpuArray};
use aya::programs::{BtfTracePoint, Program, ProgramError, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader, Pod};
use tracing::{info, warn};

use crate::bpffs::{self, PinDir};
use crate::histogram::{LatencySnapshot, OpId, Source, SLOTS, TRACED_SYSCALLS};
use crate::ProbeError;

/// Empty when build.rs could not compile the C source; `BUILD_ERROR` then says why.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/iolat.bpf.o"));
const BUILD_ERROR: &str = env!("EBPF_PROBES_BUILD_ERROR");

// Index and value layout of the `latency` map in bpf/iolat.bpf.c: one slot per (source, op),
// index = source * OPS_PER_SOURCE + op.
const OPS_PER_SOURCE: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct OpLatency {
    count: u64,
    sum_ns: u64,
    slots: [u64; SLOTS],
}

// SAFETY: plain #[repr(C)] integers without padding; any bit pattern is valid.
unsafe impl Pod for OpLatency {}

/// Which process's syscalls and io_uring requests are traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidSource {
    /// Trace only the FUSE mount.
    None,
    Pid(u32),
    /// Re-read on every [`KernelLatency::follow_pid`], so a restarted mariadbd is followed.
    PidFile(PathBuf),
}

impl PidSource {
    fn current(&self) -> Option<u32> {
        match self {
            PidSource::None => None,
            PidSource::Pid(pid) => Some(*pid),
            // A missing or half-written pid file means mariadbd is not (yet) running.
            PidSource::PidFile(path) => fs::read_to_string(path).ok()?.trim().parse().ok(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The FUSE mount point whose requests are measured.
    pub mount: PathBuf,
    pub pids: PidSource,
    /// Names the pin directory `<bpffs>/fuse_ibd_v2/<instance>-<pid>/`.
    pub instance: String,
    /// Where bpffs is (mounted there if it is not).
    pub bpffs: PathBuf,
    /// Which sources to attach; the others cost nothing.
    pub sources: Vec<Source>,
}

impl ProbeConfig {
    pub fn new(mount: impl Into<PathBuf>, pids: PidSource) -> Self {
        Self {
            mount: mount.into(),
            pids,
            instance: "fuse-ibd".to_owned(),
            bpffs: bpffs::BPFFS.into(),
            sources: Source::ALL.to_vec(),
        }
    }

    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceStatus {
    Attached,
    /// Not attached because no process is to be traced ([`PidSource::None`]): the syscall
    /// and io_uring sources would measure nothing, yet while the syscall tracepoints are
    /// attached every syscall on the machine takes the kernel's syscall-tracing path.
    NoProcess,
    /// The kernel refused this source (e.g. a tracepoint is missing); the others still work.
    Unavailable(String),
}

/// Cumulative cost of one BPF program, see [`KernelLatency::program_stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub run_count: u64,
    pub run_time: Duration,
}

/// The loaded and attached probes. Dropping it detaches them and removes the pins.
pub struct KernelLatency {
    latency: PerCpuArray<MapData, OpLatency>,
    cfg_tgid: Array<MapData, u32>,
    pids: PidSource,
    traced_pid: Option<u32>,
    sources: Vec<(Source, SourceStatus)>,
    /// Owns the programs and their links: the probes stay attached while this lives.
    ebpf: Ebpf,
    pin_dir: PinDir,
}

impl std::fmt::Debug for KernelLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLatency")
            .field("pin_dir", &self.pin_dir.path())
            .field("traced_pid", &self.traced_pid)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl KernelLatency {
    /// Loads and attaches the probes for `config.mount` (needs root, or CAP_BPF, CAP_PERFMON
    /// and CAP_SYS_ADMIN). Sources the kernel refuses are reported by [`Self::sources`]; it
    /// is an error only if none attaches.
    pub fn load(config: ProbeConfig) -> Result<Self, ProbeError> {
        if BPF_OBJECT.is_empty() {
            return Err(ProbeError::Unavailable(format!(
                "ebpf-probes was built without BPF programs ({BUILD_ERROR})"
            )));
        }
        bpffs::ensure_bpffs()?;
        let fuse_dev = bpffs::fuse_connection_dev(&config.mount)?;
        let btf = Btf::from_sys_fs()
            .map_err(|e| ProbeError::Unavailable(format!("kernel BTF (/sys/kernel/btf/vmlinux): {e}")))?;
        // syscall_start is task storage, which aya has no typed API for; only BPF code uses it.
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .allow_unsupported_maps()
            .load(BPF_OBJECT)?;

        let pin_dir = PinDir::create(&config.bpffs, &config.instance)?;
        let mut pinned_map = |name: &'static str| {
            let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
            map.pin(pin_dir.path().join(name))
                .map_err(|source| ProbeError::Pin { name, source })?;
            Ok::<_, ProbeError>(map)
        };
        let latency = PerCpuArray::try_from(pinned_map("latency")?).map_err(map_err("latency"))?;
        let cfg_tgid = Array::try_from(pinned_map("cfg_tgid")?).map_err(map_err("cfg_tgid"))?;
        let mut cfg_fuse_dev: Array<_, u32> =
            Array::try_from(pinned_map("cfg_fuse_dev")?).map_err(map_err("cfg_fuse_dev"))?;
        cfg_fuse_dev
            .set(0, fuse_dev, 0)
            .map_err(map_err("cfg_fuse_dev"))?;

        let sources: Vec<_> = config
            .sources
            .iter()
            .copied()
            .map(|source| {
                if config.pids == PidSource::None && source != Source::Fuse {
                    return (source, SourceStatus::NoProcess);
                }
                let status = match attach(&mut ebpf, source, &btf) {
                    Ok(()) => SourceStatus::Attached,
                    Err(reason) => {
                        warn!(%source, %reason, "latency source unavailable");
                        SourceStatus::Unavailable(reason)
                    }
                };
                (source, status)
            })
            .collect();
        if sources
            .iter()
            .all(|(_, status)| *status != SourceStatus::Attached)
        {
            let reasons: Vec<_> = sources
                .iter()
                .filter_map(|(s, status)| match status {
                    SourceStatus::Unavailable(reason) => Some(format!("{s}: {reason}")),
                    SourceStatus::NoProcess => Some(format!("{s}: no process to trace")),
                    SourceStatus::Attached => None,
                })
                .collect();
            return Err(ProbeError::NothingAttached(reasons.join("; ")));
        }

        info!(mount = %config.mount.display(), fuse_dev, pin_dir = %pin_dir.path().display(), "eBPF latency probes loaded");

        let mut probes = Self {
            latency,
            cfg_tgid,
            pids: config.pids,
            traced_pid: None,
            sources,
            ebpf,
            pin_dir,
        };
        probes.follow_pid()?;
        Ok(probes)
    }

    /// Which sources are attached, and why the others are not.
    pub fn sources(&self) -> &[(Source, SourceStatus)] {
        &self.sources
    }

    /// Removes this loader's pins now, for a process about to exit while other threads may still
    /// hold the probes (their `Drop` would otherwise never run). The programs stay attached until
    /// the process exits.
    pub fn remove_pins(&self) -> std::io::Result<()> {
        bpffs::remove_pin_dir(self.pin_dir())
    }

    /// Where the maps are pinned (`latency`, `cfg_tgid`, `cfg_fuse_dev`).
    pub fn pin_dir(&self) -> &Path {
        self.pin_dir.path()
    }

    /// The process whose syscalls and io_uring requests are currently traced.
    pub fn traced_pid(&self) -> Option<u32> {
        self.traced_pid
    }

    /// Re-reads the pid source and retargets the syscall/io_uring filter if the pid changed
    /// (e.g. mariadbd restarted). Cheap; call it before every read-out.
    pub fn follow_pid(&mut self) -> Result<Option<u32>, ProbeError> {
        let wanted = self.pids.current();
        if wanted == self.traced_pid {
            return Ok(wanted);
        }
        // 0 is never a user process: the BPF side treats it as "no process".
        self.cfg_tgid
            .set(0, wanted.unwrap_or(0), 0)
            .map_err(map_err("cfg_tgid"))?;
        info!(old = ?self.traced_pid, new = ?wanted, "traced mariadbd pid changed");
        self.traced_pid = wanted;
        Ok(wanted)
    }

    /// How often each attached program ran and for how long: what the probes cost. The
    /// kernel only accounts this while run-time statistics are enabled
    /// (`aya::sys::enable_stats(Stats::RunTime)` or `sysctl kernel.bpf_stats_enabled=1`).
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, ProbeError> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| match program.info() {
                Ok(info) => Some(Ok(ProgramStats {
                    name: name.to_owned(),
                    run_count: info.run_count(),
                    run_time: info.run_time(),
                })),
                // Programs of sources that were not requested are never loaded.
                Err(ProgramError::NotLoaded) => None,
                Err(source) => Some(Err(ProbeError::Program {
                    name: name.to_owned(),
                    source,
                })),
            })
            .collect()
    }

    /// Sums the per-CPU counters into one histogram per operation (cumulative since load).
    pub fn snapshot(&self) -> Result<LatencySnapshot, ProbeError> {
        let mut snapshot = LatencySnapshot::default();
        for index in 0..self.latency.len() {
            let per_cpu = self.latency.get(&index, 0).map_err(map_err("latency"))?;
            if per_cpu.iter().all(|cpu| cpu.count == 0) {
                continue;
            }
            let Some(source) = Source::from_raw(index / OPS_PER_SOURCE) else {
                continue;
            };
            let op = index % OPS_PER_SOURCE;
            let op = match source {
                // The BPF side counts syscalls by their index in TRACED_SYSCALLS.
                Source::Syscall => match TRACED_SYSCALLS.get(op as usize) {
                    Some((_, nr)) => *nr as u32,
                    None => continue,
                },
                Source::Fuse | Source::IoUring => op,
            };
            let histogram = snapshot.ops.entry(OpId { source, op }).or_default();
            for cpu in per_cpu.iter() {
                histogram.count += cpu.count;
                histogram.sum_ns += cpu.sum_ns;
                for (total, n) in histogram.slots.iter_mut().zip(cpu.slots) {
                    *total += n;
                }
            }
        }
        Ok(snapshot)
    }
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, ProgramError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ProgramError::InvalidName { name: name.into() })?
        .try_into()
}

/// Attaches one source's programs, ends before starts: a start recorded without its end program
/// would linger in the thread's storage or the LRU. The error is the reason reported as
/// [`SourceStatus::Unavailable`].
fn attach(ebpf: &mut Ebpf, source: Source, btf: &Btf) -> Result<(), String> {
    let attached = match source {
        Source::Fuse => attach_btf(ebpf, btf, ["fuse_request_end", "fuse_request_send"]),
        Source::IoUring => attach_btf(ebpf, btf, ["io_uring_complete", "io_uring_submit_req"]),
        Source::Syscall => {
            bpffs::ensure_tracefs().map_err(|error| error.to_string())?;
            attach_syscalls(ebpf)
        }
    };
    attached.map_err(|error| error_chain(&error))
}

/// BTF tracepoint programs are named after their tracepoint.
fn attach_btf(ebpf: &mut Ebpf, btf: &Btf, end_then_start: [&str; 2]) -> Result<(), ProgramError> {
    for name in end_then_start {
        let program: &mut BtfTracePoint = program(ebpf, name)?;
        program.load(name, btf)?;
        program.attach()?;
    }
    Ok(())
}

/// The programs `sys_exit_<name>` and `sys_enter_<name>` of each traced syscall, on the
/// tracepoints of the same names in `syscalls`.
fn attach_syscalls(ebpf: &mut Ebpf) -> Result<(), ProgramError> {
    for prefix in ["sys_exit_", "sys_enter_"] {
        for (syscall, _) in TRACED_SYSCALLS {
            let name = format!("{prefix}{syscall}");
            let program: &mut TracePoint = program(ebpf, &name)?;
            program.load()?;
            program.attach("syscalls", &name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_reread_and_tolerates_missing_or_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mariadbd.pid");
        let source = PidSource::PidFile(path.clone());
        assert_eq!(source.current(), None);
        fs::write(&path, "").unwrap();
        assert_eq!(source.current(), None);
        fs::write(&path, "4242\n").unwrap();
        assert_eq!(source.current(), Some(4242));
        fs::write(&path, "4343\n").unwrap();
        assert_eq!(source.current(), Some(4343));
        assert_eq!(PidSource::Pid(7).current(), Some(7));
        assert_eq!(PidSource::None.current(), None);
    }
}
