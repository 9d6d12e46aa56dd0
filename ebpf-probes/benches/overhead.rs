//! Probe overhead: fio 16 KiB O_DIRECT random reads (psync) on a bindfs mount, alternately
//! with the probes off and on (all sources, syscall filter on fio's pid), same file, same run.
//!
//! Reports per mode the median IOPS and the median CPU time per read (fio + the bindfs
//! daemon, which runs the FUSE probes). On a shared machine IOPS swing with other load, so
//! each off/on pair runs back to back and the medians of the per-pair ratios are reported
//! too, and, independent of that noise, the probes' own run time on a read's path (kernel
//! BPF run-time statistics) as a share of the CPU time of an unprobed read. Writes
//! `target/bench-results/ebpf-overhead.json`.
//!
//! `cargo bench -p ebpf-probes` (root). EBPF_BENCH_ITERATIONS (default 10) and
//! EBPF_BENCH_SECONDS (default 3) size the run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use aya::sys::{enable_stats, Stats};

use ebpf_probes::{PidSource, ProbeConfig, ProgramStats, Source};
use support::{load_probes, prerequisites, BindfsMount, ChildGuard};

const FILE_SIZE_MIB: usize = 256;

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

struct FioRun {
    iops: f64,
    cpu_us_per_read: f64,
}

/// Runs fio; `on_spawn` gets its pid before any I/O is issued (fio first sets up the job).
fn run_fio(file: &Path, seconds: u32, daemon_pid: u32, on_spawn: impl FnOnce(u32)) -> FioRun {
    let daemon_cpu_before = cpu_seconds(daemon_pid);
    let child = Command::new("fio")
        .args([
            "--name=randread",
            "--rw=randread",
            "--bs=16k",
            "--direct=1",
            "--ioengine=psync",
        ])
        .args([
            "--thread",
            "--numjobs=1",
            "--time_based",
            "--invalidate=0",
            "--output-format=json",
        ])
        .arg(format!("--size={FILE_SIZE_MIB}M"))
        .arg(format!("--runtime={seconds}"))
        .arg(format!("--filename={}", file.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("run fio");
    let mut child = ChildGuard(child);
    on_spawn(child.0.id());
    let mut stdout = String::new();
    child
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(child.0.wait().unwrap().success(), "fio failed");
    let daemon_cpu = cpu_seconds(daemon_pid) - daemon_cpu_before;

    let report: serde_json::Value = serde_json::from_str(&stdout).expect("fio JSON");
    let job = &report["jobs"][0];
    let number = |value: &serde_json::Value| value.as_f64().unwrap_or_else(|| panic!("fio JSON: {job}"));
    let fio_cpu =
        (number(&job["usr_cpu"]) + number(&job["sys_cpu"])) / 100.0 * number(&job["job_runtime"]) / 1e3;
    FioRun {
        iops: number(&job["read"]["iops"]),
        cpu_us_per_read: (fio_cpu + daemon_cpu) / number(&job["read"]["total_ios"]) * 1e6,
    }
}

/// Programs one fio read runs, and how often: FUSE send and end once, syscall enter and
/// exit twice (fio's traced pread64 and the daemon's untraced one).
const READ_PATH: [(&str, f64); 4] = [
    ("fuse_request_send", 1.0),
    ("fuse_request_end", 1.0),
    ("syscall_enter", 2.0),
    ("syscall_exit", 2.0),
];

/// BPF time of one read from the programs' mean run times. Dividing their total time by the
/// reads would also charge other processes' syscalls, FUSE and io_uring requests (the probes
/// see the whole machine, and filter) to fio.
fn read_path_bpf_ns(stats: &[ProgramStats]) -> f64 {
    READ_PATH
        .iter()
        .map(|(name, runs)| {
            let program = stats
                .iter()
                .find(|p| p.name == *name)
                .expect("read path program loaded");
            runs * program.run_time.as_nanos() as f64 / program.run_count.max(1) as f64
        })
        .sum()
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

fn main() {
    if !prerequisites(&["bindfs", "fusermount3", "fio"]) {
        return;
    }
    let iterations = env_or("EBPF_BENCH_ITERATIONS", 10);
    let seconds = env_or("EBPF_BENCH_SECONDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let mount = BindfsMount::new(dir.path());
    let daemon_pid = mount.daemon_pid();
    // Written in the backing dir so both modes read the same, already cached, file.
    let mut file = File::create(mount.source.join("data")).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..FILE_SIZE_MIB {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
    let data = mount.mount.join("data");
    let pid_file = dir.path().join("fio.pid");

    // One fio run with the probes loaded and fio's pid traced; the probes' own run time is
    // only accounted (BPF_ENABLE_STATS, which costs time itself) when `measure_bpf` is set.
    let probed_run = |measure_bpf: bool| {
        let config = ProbeConfig::new(&mount.mount, PidSource::PidFile(pid_file.clone())).instance("bench");
        let mut probes = load_probes(config)?;
        let stats = measure_bpf.then(|| enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS"));
        let run = run_fio(&data, seconds, daemon_pid, |pid| {
            std::fs::write(&pid_file, pid.to_string()).unwrap();
            probes.follow_pid().unwrap();
        });
        drop(stats);
        let snapshot = probes.snapshot().unwrap();
        let count = |source, op| snapshot.get(source, op).map_or(0, |h| h.count);
        assert!(
            count(Source::Syscall, "pread64") > 0,
            "fio's preads were not traced"
        );
        assert!(
            count(Source::Fuse, "read") > 0,
            "fio's FUSE reads were not traced"
        );
        Some((run, read_path_bpf_ns(&probes.program_stats().unwrap())))
    };

    let (mut off, mut on) = (Vec::new(), Vec::new());
    for iteration in 0..iterations {
        // Alternate which mode goes first so drift on the shared machine hits both alike.
        for probes_on in if iteration % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            if probes_on {
                let Some((run, _)) = probed_run(false) else { return };
                on.push(run);
            } else {
                off.push(run_fio(&data, seconds, daemon_pid, |_| {}));
            }
        }
        let (off, on) = (off.last().unwrap(), on.last().unwrap());
        println!(
            "iteration {iteration}: off {:.0} IOPS {:.2} CPU-us/read, on {:.0} IOPS {:.2} CPU-us/read",
            off.iops, off.cpu_us_per_read, on.iops, on.cpu_us_per_read
        );
    }
    let Some((_, bpf_ns)) = probed_run(true) else {
        return;
    };

    let iops = |runs: &[FioRun]| median(runs.iter().map(|r| r.iops));
    let cpu = |runs: &[FioRun]| median(runs.iter().map(|r| r.cpu_us_per_read));
    let iops_ratio = median(on.iter().zip(&off).map(|(on, off)| on.iops / off.iops));
    let cpu_ratio = median(
        on.iter()
            .zip(&off)
            .map(|(on, off)| on.cpu_us_per_read / off.cpu_us_per_read),
    );
    let iops_loss_percent = (1.0 - iops_ratio) * 100.0;
    println!(
        "median IOPS: off {:.0}, on {:.0}; median pair ratio on/off {iops_ratio:.4} = IOPS loss {iops_loss_percent:.2} % (target < 3 %)",
        iops(&off),
        iops(&on)
    );
    println!(
        "median CPU per read: off {:.2} us, on {:.2} us; median pair ratio on/off {cpu_ratio:.4}",
        cpu(&off),
        cpu(&on)
    );
    // Noise-free estimate: the probes' own run time per read against the unprobed CPU cost.
    let bpf_cost_percent = bpf_ns / (cpu(&off) * 1e3) * 100.0;
    println!(
        "BPF run time on a read's path: {bpf_ns:.0} ns = {bpf_cost_percent:.2} % of the CPU time of an unprobed read"
    );
    let results = serde_json::json!({
        "workload": format!("fio randread bs=16k direct=1 psync numjobs=1 {seconds}s on bindfs, {FILE_SIZE_MIB} MiB file"),
        "iterations": iterations,
        "iops_off": off.iter().map(|r| r.iops).collect::<Vec<_>>(),
        "iops_on": on.iter().map(|r| r.iops).collect::<Vec<_>>(),
        "cpu_us_per_read_off": off.iter().map(|r| r.cpu_us_per_read).collect::<Vec<_>>(),
        "cpu_us_per_read_on": on.iter().map(|r| r.cpu_us_per_read).collect::<Vec<_>>(),
        "median_iops_off": iops(&off),
        "median_iops_on": iops(&on),
        "median_pair_iops_ratio": iops_ratio,
        "iops_loss_percent": iops_loss_percent,
        "median_cpu_us_per_read_off": cpu(&off),
        "median_cpu_us_per_read_on": cpu(&on),
        "median_pair_cpu_ratio": cpu_ratio,
        "bpf_ns_per_read": bpf_ns,
        "bpf_cost_percent_of_unprobed_cpu_per_read": bpf_cost_percent,
    });
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("ebpf-overhead.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("wrote {}", out.display());
}
