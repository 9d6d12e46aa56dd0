//! Probe overhead: fio 16 KiB O_DIRECT random reads (psync, one job) on a FUSE mount, with
//! the probes (all sources, syscall filter on fio's pid, loaded by the bench itself) alternately
//! off and on in back-to-back windows of the same fio run. Measured on two filesystems in turn,
//! each with its own fio, reported separately:
//!
//! - `bindfs`: the thinnest FUSE daemon (a read costs ~10 µs of CPU), the worst case for the
//!   probes' fixed cost relative to a read. fio reads `data`, written in the backing dir.
//! - `fuse-ibd`: the product, the real binary in local-only mode (`fuse-ibd mount --datadir
//!   --cache-dir`, no pageserver or walsync). fio reads `bench/sbtest1.ibd`, named like an
//!   InnoDB tablespace so it is a page file (direct I/O, page locks, backing file under
//!   `<cache>/tree`), written through the mount beforehand. The binary is
//!   `<target>/release/fuse-ibd` next to this bench (`cargo build --release -p fuse-ibd`) or
//!   `$FUSE_IBD_BIN`. The probes are loaded by the bench as for bindfs, not by `--ebpf`.
//!
//! The machine is shared: other builds and tests change the cost of a read by 2-5x within
//! seconds. Starting a new fio per mode (as an earlier version of this bench did) put seconds
//! between the modes compared, and fio's own start-up into each sample. Here one fio runs
//! throughout; each window loads (or not) the probes, waits for things to settle and then
//! counts fio's reads (`/proc/<fio>/io` syscr) and the CPU time of fio plus the FUSE daemon
//! (`/proc/<pid>/task/*/schedstat`, ns). Windows come in off/on pairs in alternating order
//! (off-on, on-off, ...), and the reported loss is the median over pairs of 1 - IOPS(on)/IOPS(off).
//!
//! BPF run-time statistics (`BPF_ENABLE_STATS`) cost time themselves, so they are only enabled
//! in extra windows after the measured pairs; those give the probes' own run time per read.
//! Writes `target/bench-results/ebpf-overhead.json`, one section per filesystem.
//!
//! `cargo bench -p ebpf-probes` (root). EBPF_BENCH_ITERATIONS pairs (default 10) of windows of
//! EBPF_BENCH_SECONDS (default 3; fractions allowed, e.g. 0.5 for many short pairs) per
//! filesystem; EBPF_BENCH_FS selects the filesystems (default `bindfs,fuse-ibd`),
//! EBPF_BENCH_SOURCES the sources (default all), EBPF_BENCH_SETTLE_MS the pause after each
//! switch (default 2500).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aya::sys::{enable_stats, Stats};

use ebpf_probes::{KernelLatency, PidSource, ProbeConfig, ProgramStats, Source};
use support::{load_probes, prerequisites, BindfsMount, ChildGuard, FuseIbdMount};

const FILE_SIZE_MIB: usize = 256;
/// Default of `EBPF_BENCH_SETTLE_MS`, the pause between switching the probes and measuring: lets
/// fio and the daemon run into the new mode, and the kernel finish its work after a load or
/// unload. With 300 ms the control (`EBPF_BENCH_SOURCES=io_uring`: programs that never run for
/// psync reads) showed the "on" windows 6.7 % faster than the "off" ones; with 2.5 s, -0.6 %.
const DEFAULT_SETTLE_MS: u64 = 2500;
/// Windows with BPF run-time statistics enabled, after the measured pairs.
const STATS_WINDOWS: u32 = 3;

/// `EBPF_BENCH_SOURCES` (e.g. `fuse` or `fuse,syscall`): which sources to attach, to see what
/// each costs; default all.
fn bench_sources() -> Vec<Source> {
    match std::env::var("EBPF_BENCH_SOURCES") {
        Ok(list) => Source::ALL
            .into_iter()
            .filter(|s| list.split(',').any(|name| name.trim() == s.as_str()))
            .collect(),
        Err(_) => Source::ALL.to_vec(),
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// On-CPU nanoseconds of all threads of a process (first field of each thread's schedstat).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Read- and write-type syscalls of a process so far (`syscr`, `syscw` in /proc/<pid>/io).
fn syscalls(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/io"))
    };
    (field("syscr:"), field("syscw:"))
}

#[derive(Clone, Copy)]
struct Counters {
    at: Instant,
    fio_reads: u64,
    /// Read- and write-type syscalls of fio and the daemon: about the syscalls a read costs.
    io_syscalls: u64,
    cpu_ns: u64,
}

fn counters(fio: u32, daemon: u32) -> Counters {
    let (fio_r, fio_w) = syscalls(fio);
    let (daemon_r, daemon_w) = syscalls(daemon);
    Counters {
        at: Instant::now(),
        // psync: one pread64 per read; fio's main thread reads nothing with --disk_util=0.
        fio_reads: fio_r,
        io_syscalls: fio_r + fio_w + daemon_r + daemon_w,
        cpu_ns: cpu_ns(fio) + cpu_ns(daemon),
    }
}

struct Window {
    iops: f64,
    cpu_us_per_read: f64,
    reads: u64,
    io_syscalls_per_read: f64,
}

/// How the windows are laid out (from the environment, read once).
#[derive(Clone, Copy)]
struct Schedule {
    /// Off/on pairs.
    iterations: u32,
    /// Length of a measured window.
    seconds: f64,
    /// Pause after each switch, before a window.
    settle: Duration,
}

fn measure(fio: u32, daemon: u32, schedule: Schedule) -> Window {
    std::thread::sleep(schedule.settle);
    let start = counters(fio, daemon);
    std::thread::sleep(Duration::from_secs_f64(schedule.seconds));
    window(&start, &counters(fio, daemon))
}

fn window(start: &Counters, end: &Counters) -> Window {
    let reads = end.fio_reads - start.fio_reads;
    assert!(reads > 0, "fio made no progress");
    Window {
        iops: reads as f64 / (end.at - start.at).as_secs_f64(),
        cpu_us_per_read: (end.cpu_ns - start.cpu_ns) as f64 / reads as f64 / 1e3,
        reads,
        io_syscalls_per_read: (end.io_syscalls - start.io_syscalls) as f64 / reads as f64,
    }
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

fn run_stats(stats: &[ProgramStats], name: &str) -> (u64, Duration) {
    stats
        .iter()
        .find(|p| p.name == name)
        .map_or((0, Duration::ZERO), |p| (p.run_count, p.run_time))
}

/// The probes' own run time per fio read, for each attached program: mean run time and runs per
/// read. The programs run for every process (their filters are inside), so these are all runs on
/// the machine divided by fio's reads: the FUSE programs for each read's request, the pread64
/// ones for fio's traced call and for the daemon's untraced reads of its backing file, and also
/// any other process's FUSE requests and file syscalls, which a quiet machine keeps rare.
fn bpf_ns_per_read(before: &[ProgramStats], after: &[ProgramStats], reads: u64) -> Vec<(String, f64, f64)> {
    after
        .iter()
        .map(|program| {
            let (count0, time0) = run_stats(before, &program.name);
            let runs = program.run_count - count0;
            let mean_ns = (program.run_time - time0).as_nanos() as f64 / runs.max(1) as f64;
            (program.name.clone(), mean_ns, runs as f64 / reads as f64)
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Fs {
    Bindfs,
    FuseIbd,
}

impl Fs {
    fn name(self) -> &'static str {
        match self {
            Fs::Bindfs => "bindfs",
            Fs::FuseIbd => "fuse-ibd",
        }
    }

    /// `EBPF_BENCH_FS`: comma-separated, default both.
    fn selected() -> Vec<Fs> {
        let list = std::env::var("EBPF_BENCH_FS").unwrap_or_else(|_| "bindfs,fuse-ibd".into());
        let selected: Vec<Fs> = list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| match name {
                "bindfs" => Fs::Bindfs,
                "fuse-ibd" => Fs::FuseIbd,
                other => panic!("EBPF_BENCH_FS: unknown filesystem {other:?} (bindfs, fuse-ibd)"),
            })
            .collect();
        assert!(!selected.is_empty(), "EBPF_BENCH_FS selects no filesystem");
        selected
    }
}

/// `$FUSE_IBD_BIN`, else `fuse-ibd` in the profile dir this bench runs from
/// (`<target>/release/deps/overhead-<hash>` -> `<target>/release/fuse-ibd`).
fn fuse_ibd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("FUSE_IBD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "FUSE_IBD_BIN={} is not a file", bin.display());
        return bin;
    }
    let exe = std::env::current_exe().expect("bench executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("bench runs from <target>/<profile>/deps");
    let bin = profile_dir.join("fuse-ibd");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --release -p fuse-ibd` (with the same CARGO_TARGET_DIR) \
         first, set FUSE_IBD_BIN, or measure bindfs only with EBPF_BENCH_FS=bindfs",
        bin.display()
    );
    bin
}

/// A mounted filesystem with the file fio reads, prefilled and served from the page cache.
enum Mounted {
    Bindfs(BindfsMount),
    FuseIbd(FuseIbdMount),
}

impl Mounted {
    fn mount_point(&self) -> &Path {
        match self {
            Mounted::Bindfs(m) => &m.mount,
            Mounted::FuseIbd(m) => &m.mount,
        }
    }

    fn daemon_pid(&self) -> u32 {
        match self {
            Mounted::Bindfs(m) => m.daemon_pid(),
            Mounted::FuseIbd(m) => m.daemon_pid(),
        }
    }

    fn unmount(self) {
        match self {
            Mounted::Bindfs(m) => drop(m),
            Mounted::FuseIbd(m) => m.unmount(),
        }
    }
}

fn prefill(path: &Path) {
    let mut file = File::create(path).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..FILE_SIZE_MIB {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
}

/// Mounts `fs` under `dir` and writes the file to read; returns the mount and that file.
fn set_up(fs: Fs, dir: &Path, fuse_ibd: Option<&Path>) -> (Mounted, PathBuf) {
    match fs {
        Fs::Bindfs => {
            let mount = BindfsMount::new(dir);
            // Written in the backing dir so the reads are served from the page cache under bindfs.
            prefill(&mount.source.join("data"));
            let file = mount.mount.join("data");
            (Mounted::Bindfs(mount), file)
        }
        Fs::FuseIbd => {
            let mount = FuseIbdMount::new(fuse_ibd.expect("fuse-ibd binary"), dir);
            // A tablespace in a database dir, as MariaDB lays it out: a page file. Written
            // through the mount (local-only: into `<cache>/tree`, from whose page cache the
            // reads are then served).
            let db = mount.mount.join("bench");
            std::fs::create_dir(&db).unwrap();
            let file = db.join("sbtest1.ibd");
            prefill(&file);
            (Mounted::FuseIbd(mount), file)
        }
    }
}

/// One filesystem's results: the JSON section and the summary line's figures.
struct FsResult {
    fs: Fs,
    iops_off: f64,
    iops_on: f64,
    iops_loss_percent: f64,
    cpu_off: f64,
    cpu_on: f64,
    cpu_ratio: f64,
    bpf_ns: f64,
    bpf_cost_percent: f64,
    json: serde_json::Value,
}

/// Runs fio on `file` and the off/on windows; `None` if the probes are unavailable (skip).
fn run(fs: Fs, mounted: &Mounted, file: &Path, schedule: Schedule) -> Option<FsResult> {
    let Schedule {
        iterations,
        seconds,
        settle,
    } = schedule;
    let daemon = mounted.daemon_pid();
    let label = fs.name();
    // Long enough for all windows, their pauses and probe loading; killed when done.
    let per_window = seconds + settle.as_secs_f64() + 2.0;
    let runtime = f64::from(2 * iterations + STATS_WINDOWS) * per_window + 60.0;
    let fio = ChildGuard(
        Command::new("fio")
            .args(["--name=randread", "--rw=randread", "--bs=16k", "--direct=1"])
            .args(["--ioengine=psync", "--thread", "--numjobs=1", "--time_based"])
            .args(["--invalidate=0", "--disk_util=0"])
            .arg(format!("--size={FILE_SIZE_MIB}M"))
            .arg(format!("--runtime={}", runtime.ceil()))
            .arg(format!("--filename={}", file.display()))
            .stdout(Stdio::null())
            .spawn()
            .expect("run fio"),
    );
    let fio_pid = fio.0.id();
    support::wait_for("fio to start reading", Duration::from_secs(30), || {
        syscalls(fio_pid).0 > 1000
    });

    let sources = bench_sources();
    let load = || -> Option<KernelLatency> {
        let mut config = ProbeConfig::new(mounted.mount_point(), PidSource::Pid(fio_pid)).instance("bench");
        config.sources = sources.clone();
        load_probes(config)
    };
    let check_traced = |probes: &KernelLatency| {
        let snapshot = probes.snapshot().unwrap();
        let count = |source, op| snapshot.get(source, op).map_or(0, |h| h.count);
        assert!(
            !sources.contains(&Source::Syscall) || count(Source::Syscall, "pread64") > 0,
            "{label}: fio's preads were not traced"
        );
        assert!(
            !sources.contains(&Source::Fuse) || count(Source::Fuse, "read") > 0,
            "{label}: fio's FUSE reads were not traced"
        );
    };

    let (mut off, mut on) = (Vec::new(), Vec::new());
    for iteration in 0..iterations {
        // Alternate which mode goes first so drift on the shared machine hits both alike.
        let order = if iteration % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for probes_on in order {
            if probes_on {
                let probes = load()?;
                on.push(measure(fio_pid, daemon, schedule));
                check_traced(&probes);
            } else {
                off.push(measure(fio_pid, daemon, schedule));
            }
        }
        let (off, on) = (off.last().unwrap(), on.last().unwrap());
        println!(
            "{label} pair {iteration}: off {:.0} IOPS {:.2} CPU-us/read, on {:.0} IOPS {:.2} CPU-us/read, IOPS ratio {:.4}",
            off.iops,
            off.cpu_us_per_read,
            on.iops,
            on.cpu_us_per_read,
            on.iops / off.iops
        );
    }

    // The probes' own cost, with run-time statistics on (not in the windows compared above).
    let probes = load()?;
    let stats_fd = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS");
    let mut per_program: Vec<(String, f64, f64)> = Vec::new();
    let mut syscalls_per_read = Vec::new();
    std::thread::sleep(settle);
    for _ in 0..STATS_WINDOWS {
        // Program runs and fio's reads over the same interval.
        let (before, start) = (probes.program_stats().unwrap(), counters(fio_pid, daemon));
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let (after, end) = (probes.program_stats().unwrap(), counters(fio_pid, daemon));
        let window = window(&start, &end);
        let costs = bpf_ns_per_read(&before, &after, window.reads);
        println!(
            "{label} stats window: {} reads, {:.2} read/write syscalls of fio + daemon per read; BPF ns per read: {}",
            window.reads,
            window.io_syscalls_per_read,
            costs
                .iter()
                .filter(|(_, _, runs)| *runs > 0.0)
                .map(|(name, mean, runs)| format!("{name} {mean:.0} ns/run x {runs:.2} -> {:.0}", mean * runs))
                .collect::<Vec<_>>()
                .join(", ")
        );
        syscalls_per_read.push(window.io_syscalls_per_read);
        per_program.extend(costs);
    }
    drop(stats_fd);
    check_traced(&probes);
    drop(probes);
    drop(fio);

    let iops = |runs: &[Window]| median(runs.iter().map(|r| r.iops));
    let cpu = |runs: &[Window]| median(runs.iter().map(|r| r.cpu_us_per_read));
    let iops_ratios: Vec<f64> = on.iter().zip(&off).map(|(on, off)| on.iops / off.iops).collect();
    let cpu_ratios: Vec<f64> = on
        .iter()
        .zip(&off)
        .map(|(on, off)| on.cpu_us_per_read / off.cpu_us_per_read)
        .collect();
    let iops_ratio = median(iops_ratios.iter().copied());
    let cpu_ratio = median(cpu_ratios.iter().copied());
    let iops_loss_percent = (1.0 - iops_ratio) * 100.0;
    // Per program: median over the stats windows of its cost per read, then summed.
    let mut names: Vec<String> = per_program.iter().map(|(n, _, _)| n.clone()).collect();
    names.sort();
    names.dedup();
    let bpf_per_program: Vec<(String, f64)> = names
        .iter()
        .map(|name| {
            let per_read = median(
                per_program
                    .iter()
                    .filter(|(n, _, _)| n == name)
                    .map(|(_, mean, runs)| mean * runs),
            );
            (name.clone(), per_read)
        })
        .collect();
    let bpf_ns: f64 = bpf_per_program.iter().map(|(_, c)| c).sum();
    let bpf_cost_percent = bpf_ns / (cpu(&off) * 1e3) * 100.0;
    let file_in_mount = file.strip_prefix(mounted.mount_point()).unwrap_or(file);
    let json = serde_json::json!({
        "workload": format!("fio randread bs=16k direct=1 psync numjobs=1 on {label} ({}), {FILE_SIZE_MIB} MiB file; {iterations} off/on pairs of {seconds} s windows in one fio run", file_in_mount.display()),
        "iops_off": off.iter().map(|r| r.iops).collect::<Vec<_>>(),
        "iops_on": on.iter().map(|r| r.iops).collect::<Vec<_>>(),
        "pair_iops_ratios": iops_ratios,
        "cpu_us_per_read_off": off.iter().map(|r| r.cpu_us_per_read).collect::<Vec<_>>(),
        "cpu_us_per_read_on": on.iter().map(|r| r.cpu_us_per_read).collect::<Vec<_>>(),
        "pair_cpu_ratios": cpu_ratios,
        "median_iops_off": iops(&off),
        "median_iops_on": iops(&on),
        "median_pair_iops_ratio": iops_ratio,
        "iops_loss_percent": iops_loss_percent,
        "median_cpu_us_per_read_off": cpu(&off),
        "median_cpu_us_per_read_on": cpu(&on),
        "median_pair_cpu_ratio": cpu_ratio,
        "io_syscalls_per_read": median(syscalls_per_read),
        "bpf_ns_per_read_by_program": bpf_per_program
            .iter()
            .map(|(name, ns)| (name.clone(), serde_json::json!(ns)))
            .collect::<serde_json::Map<_, _>>(),
        "bpf_ns_per_read": bpf_ns,
        "bpf_cost_percent_of_unprobed_cpu_per_read": bpf_cost_percent,
    });
    Some(FsResult {
        fs,
        iops_off: iops(&off),
        iops_on: iops(&on),
        iops_loss_percent,
        cpu_off: cpu(&off),
        cpu_on: cpu(&on),
        cpu_ratio,
        bpf_ns,
        bpf_cost_percent,
        json,
    })
}

fn main() {
    let filesystems = Fs::selected();
    let mut tools = vec!["fusermount3", "fio"];
    if filesystems.contains(&Fs::Bindfs) {
        tools.push("bindfs");
    }
    if !prerequisites(&tools) {
        return;
    }
    // Before any measurement: a missing binary fails at once, not after the bindfs part.
    let fuse_ibd = filesystems.contains(&Fs::FuseIbd).then(fuse_ibd_binary);
    let schedule = Schedule {
        iterations: env_or("EBPF_BENCH_ITERATIONS", 10),
        seconds: env_or("EBPF_BENCH_SECONDS", 3.0),
        settle: Duration::from_millis(env_or("EBPF_BENCH_SETTLE_MS", DEFAULT_SETTLE_MS)),
    };

    let mut results = Vec::new();
    for &fs in &filesystems {
        let dir = tempfile::tempdir().unwrap();
        let (mounted, file) = set_up(fs, dir.path(), fuse_ibd.as_deref());
        println!(
            "{}: daemon pid {}, reading {}",
            fs.name(),
            mounted.daemon_pid(),
            file.display()
        );
        let Some(result) = run(fs, &mounted, &file, schedule) else {
            return;
        };
        mounted.unmount();
        results.push(result);
    }

    println!();
    println!("summary (median over pairs; target < 3 % IOPS loss):");
    for r in &results {
        println!(
            "{:>9}: IOPS off {:.0} / on {:.0}, loss {:.2} %; CPU per read off {:.2} us / on {:.2} us (pair ratio {:.4}); BPF {:.0} ns per read = {:.2} % of an unprobed read",
            r.fs.name(),
            r.iops_off,
            r.iops_on,
            r.iops_loss_percent,
            r.cpu_off,
            r.cpu_on,
            r.cpu_ratio,
            r.bpf_ns,
            r.bpf_cost_percent
        );
    }
    let sections: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|r| (r.fs.name().to_owned(), r.json))
        .collect();
    let output = serde_json::json!({
        "iterations": schedule.iterations,
        "window_seconds": schedule.seconds,
        "settle_seconds": schedule.settle.as_secs_f64(),
        "filesystems": sections,
    });
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("ebpf-overhead.json");
    std::fs::write(&out, serde_json::to_string_pretty(&output).unwrap()).unwrap();
    println!("wrote {}", out.display());
}
