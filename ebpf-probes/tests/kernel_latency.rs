//! Root-only tests against the real kernel: the probes on a bindfs FUSE mount, bpftool on
//! the pinned maps, and a throwaway mariadbd under sysbench.

mod support;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebpf_probes::{
    KernelLatency, KernelLatencyCollector, PidSource, ProbeConfig, Source, SourceStatus, METRIC_NAME,
};
use prometheus_client::registry::Registry;
use support::{load_probes, prerequisites, serialize, wait_for, BindfsMount, ChildGuard};

const BLOCK: usize = 16 * 1024;
const FILE_BLOCKS: u64 = 1024; // 16 MiB

/// An aligned buffer for O_DIRECT.
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

fn write_test_file(path: &Path) {
    let file = File::create(path).unwrap();
    let block = vec![0xa5u8; BLOCK];
    for i in 0..FILE_BLOCKS {
        file.write_all_at(&block, i * BLOCK as u64).unwrap();
    }
    file.sync_all().unwrap();
}

fn metrics_text(probes: KernelLatency) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(KernelLatencyCollector::new(Arc::new(Mutex::new(
        probes,
    )))));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

fn metric_value(text: &str, series: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn fuse_and_syscall_counts_match_issued_io() {
    if !prerequisites(&["bindfs", "fusermount3"]) {
        return;
    }
    let _serial = serialize();
    let dir = tempfile::tempdir().unwrap();
    let mount = BindfsMount::new(dir.path());
    let path = mount.mount.join("data");
    write_test_file(&path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();

    let config = ProbeConfig::new(&mount.mount, PidSource::Pid(std::process::id())).instance("test-counts");
    let Some(probes) = load_probes(config) else { return };
    assert!(
        probes
            .sources()
            .iter()
            .all(|(_, status)| *status == SourceStatus::Attached),
        "{probes:?}"
    );
    let before = probes.snapshot().unwrap();

    const READS: u64 = 1000;
    const FSYNCS: u64 = 100;
    let mut buf = Box::new(Block([0; BLOCK]));
    let mut user_read_time = Duration::ZERO;
    let mut block_no = 7u64;
    for _ in 0..READS {
        block_no = (block_no * 613 + 101) % FILE_BLOCKS; // scattered, deterministic
        let started = Instant::now();
        // SAFETY: fd is open, buf is a valid writable aligned buffer of BLOCK bytes.
        let n = unsafe {
            libc::pread64(
                file.as_raw_fd(),
                buf.0.as_mut_ptr().cast(),
                BLOCK,
                (block_no * BLOCK as u64) as i64,
            )
        };
        user_read_time += started.elapsed();
        assert_eq!(n, BLOCK as isize, "{}", std::io::Error::last_os_error());
    }
    for _ in 0..FSYNCS {
        file.sync_all().unwrap();
    }
    let delta = probes.snapshot().unwrap().since(&before);

    let count = |source, op| delta.get(source, op).map_or(0, |h| h.count);
    // O_DIRECT: one FUSE READ per pread, no readahead; nothing else of ours reads this mount.
    assert_eq!(count(Source::Syscall, "pread64"), READS, "{delta:#?}");
    assert_eq!(count(Source::Syscall, "fsync"), FSYNCS, "{delta:#?}");
    let fuse_reads = count(Source::Fuse, "read");
    assert!(
        (READS..READS + 5).contains(&fuse_reads),
        "fuse reads {fuse_reads}: {delta:#?}"
    );
    let fuse_fsyncs = count(Source::Fuse, "fsync");
    assert!(
        (FSYNCS..FSYNCS + 5).contains(&fuse_fsyncs),
        "fuse fsyncs {fuse_fsyncs}"
    );

    // Nesting: FUSE READ inside the pread64 syscall inside the user-space timing.
    let syscall_ns = delta.get(Source::Syscall, "pread64").unwrap().sum_ns;
    let fuse_ns = delta.get(Source::Fuse, "read").unwrap().sum_ns;
    let user_ns = user_read_time.as_nanos() as u64;
    assert!(
        syscall_ns <= user_ns,
        "syscall {syscall_ns} ns > user {user_ns} ns"
    );
    assert!(
        syscall_ns >= user_ns / 2,
        "syscall {syscall_ns} ns << user {user_ns} ns"
    );
    assert!(
        fuse_ns <= syscall_ns * (READS + 5) / READS,
        "fuse {fuse_ns} ns > syscall {syscall_ns} ns"
    );
    assert!(
        fuse_ns >= syscall_ns / 4,
        "fuse {fuse_ns} ns << syscall {syscall_ns} ns"
    );
    let histogram = delta.get(Source::Fuse, "read").unwrap();
    assert_eq!(histogram.slots.iter().sum::<u64>(), histogram.count);

    let text = metrics_text(probes);
    let series = format!(r#"{METRIC_NAME}_count{{source="fuse",op="read"}}"#);
    assert!(metric_value(&text, &series) >= READS, "{text}");
    let series = format!(r#"{METRIC_NAME}_bucket{{le="+Inf",source="syscall",op="fsync"}}"#);
    assert!(metric_value(&text, &series) >= FSYNCS, "{text}");
}

#[test]
fn pinned_maps_dump_with_bpftool_and_stale_pins_are_removed() {
    if !prerequisites(&["bindfs", "fusermount3", "bpftool"]) {
        return;
    }
    let _serial = serialize();
    let dir = tempfile::tempdir().unwrap();
    let mount = BindfsMount::new(dir.path());

    // Leftovers of an older layout and of a loader that died: both must go.
    let bpffs = Path::new("/sys/fs/bpf");
    let old_layout = bpffs.join("fuse_ibd_v0");
    let mut exited = Command::new("true").spawn().unwrap();
    let dead_pid = exited.id();
    exited.wait().unwrap();
    let dead_loader = bpffs
        .join(ebpf_probes::PIN_LAYOUT_DIR)
        .join(format!("crashed-{dead_pid}"));
    std::fs::create_dir_all(old_layout.join("stale")).unwrap();
    std::fs::create_dir_all(&dead_loader).unwrap();

    let config = ProbeConfig::new(&mount.mount, PidSource::None).instance("test-bpftool");
    let Some(probes) = load_probes(config) else { return };
    assert!(!old_layout.exists() && !dead_loader.exists());
    let pin_dir = probes.pin_dir().to_owned();
    std::fs::write(mount.mount.join("f"), b"hello").unwrap();
    std::fs::read(mount.mount.join("f")).unwrap();

    let dump = |map: &str| -> serde_json::Value {
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(pin_dir.join(map))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bpftool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // BTF-described maps: bpftool prints the value's field names. The key is
    // source * 64 + op, so FUSE (source 0) write (opcode 16) is 16.
    let latency = dump("latency");
    let fuse_write = latency
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["formatted"]["key"] == 16)
        .unwrap_or_else(|| panic!("no FUSE write in {latency:#}"));
    let per_cpu = fuse_write["formatted"]["values"].as_array().unwrap();
    let writes: u64 = per_cpu
        .iter()
        .map(|v| v["value"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(writes, 1, "{fuse_write:#}");
    assert_eq!(
        per_cpu[0]["value"]["slots"].as_array().unwrap().len(),
        ebpf_probes::SLOTS
    );
    let devs = dump("cfg_fuse_dev");
    assert_eq!(devs.as_array().unwrap().len(), 1, "{devs:#}");

    // A second loader in the same process with the same name must not share the maps.
    let clash = KernelLatency::load(ProbeConfig::new(&mount.mount, PidSource::None).instance("test-bpftool"));
    assert!(
        matches!(clash, Err(ebpf_probes::ProbeError::PinDirInUse(_))),
        "{clash:?}"
    );

    // Without a process to trace, only the FUSE source is attached.
    let statuses: Vec<_> = probes
        .sources()
        .iter()
        .map(|(_, status)| status.clone())
        .collect();
    assert_eq!(
        statuses,
        [
            SourceStatus::Attached,
            SourceStatus::NoProcess,
            SourceStatus::NoProcess
        ]
    );

    let layout_dir = pin_dir.parent().unwrap().to_owned();
    let other = std::fs::read_dir(&layout_dir).unwrap().count() > 1;
    drop(probes);
    assert!(!pin_dir.exists(), "pins left behind in {}", pin_dir.display());
    // The versioned directory goes with its last loader (unless another one is running).
    assert!(
        other || !layout_dir.exists(),
        "empty {} left behind",
        layout_dir.display()
    );
}

#[test]
fn syscall_source_mounts_missing_tracefs() {
    if !prerequisites(&["bindfs", "fusermount3", "unshare"]) {
        return;
    }
    let _serial = serialize();
    let dir = tempfile::tempdir().unwrap();
    let mount = BindfsMount::new(dir.path());
    // Skips like the other tests when this build has no BPF object.
    if load_probes(ProbeConfig::new(&mount.mount, PidSource::None).instance("test-tracefs")).is_none() {
        return;
    }
    // In a private mount namespace, so the machine's tracefs stays mounted.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"umount -l /sys/kernel/tracing && "$0" "$@" && stat -f -c %T /sys/kernel/tracing"#)
        .arg(env!("CARGO_BIN_EXE_ibd-trace"))
        .arg("--mount")
        .arg(&mount.mount)
        .arg(format!("--pid={}", std::process::id()))
        .args(["--sources=syscall", "--count=1", "--interval=100ms", "--json"])
        .args(["--instance", "test-tracefs"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(!stderr.contains("unavailable"), "{stderr}");
    assert_eq!(stdout.lines().last(), Some("tracefs"), "{stdout}\n{stderr}");
}

/// mysqld's `--pid-file` content, once it is written.
fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn mariadb_sysbench_is_traced_and_other_processes_are_not() {
    if !prerequisites(&[
        "bindfs",
        "fusermount3",
        "mariadbd",
        "mariadb-install-db",
        "mariadb",
        "sysbench",
    ]) {
        return;
    }
    let _serial = serialize();
    let dir = tempfile::tempdir().unwrap();
    let mount = BindfsMount::new(dir.path());
    let datadir = mount.mount.join("mysql");
    let socket = dir.path().join("mysqld.sock");
    let pid_file = dir.path().join("mysqld.pid");

    let status = Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            "--auth-root-authentication-method=normal",
            "--user=root",
            "--skip-test-db",
        ])
        .arg(format!("--datadir={}", datadir.display()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "mariadb-install-db: {status}");

    // Loaded before mariadbd exists: the pid file is followed once it appears.
    let config =
        ProbeConfig::new(&mount.mount, PidSource::PidFile(pid_file.clone())).instance("test-mariadb");
    let Some(mut probes) = load_probes(config) else {
        return;
    };
    assert_eq!(probes.traced_pid(), None);

    let start_mariadbd = || {
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--skip-networking", "--user=root"])
            .args(["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M"])
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("mariadbd.err")).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_for("mariadbd pid file", Duration::from_secs(60), || {
            read_pid(&pid_file) == Some(pid) && socket.exists()
        });
        ChildGuard(child)
    };
    let mariadbd = start_mariadbd();
    assert_eq!(probes.follow_pid().unwrap(), Some(mariadbd.0.id()));
    let before = probes.snapshot().unwrap();

    let client = |sql: &str| {
        let status = Command::new("mariadb")
            .args(["--no-defaults", "-uroot"])
            .arg(format!("--socket={}", socket.display()))
            .args(["-e", sql])
            .status()
            .unwrap();
        assert!(status.success(), "{sql}: {status}");
    };
    client("CREATE DATABASE sbtest");
    let sysbench = |phase: &str| {
        let out = Command::new("sysbench")
            .args([
                "oltp_read_write",
                "--db-driver=mysql",
                "--mysql-user=root",
                "--tables=1",
                "--table-size=1000",
            ])
            .args(["--time=5", "--threads=2"])
            .arg(format!("--mysql-socket={}", socket.display()))
            .arg(phase)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sysbench {phase}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sysbench("prepare");

    // This process is not traced: its preadv calls on the same mount must not show up.
    const FOREIGN_PREADVS: u64 = 2000;
    let foreign = File::open(datadir.join("ibdata1")).unwrap();
    let mut buf = [0u8; 512];
    for i in 0..FOREIGN_PREADVS {
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec pointing at a live buffer.
        let n = unsafe { libc::preadv(foreign.as_raw_fd(), &iov, 1, (i * 512) as i64) };
        assert_eq!(n, 512);
    }
    sysbench("run");
    // InnoDB writes data pages (via io_uring) lazily; make the page cleaner flush them now.
    client("SET GLOBAL innodb_max_dirty_pages_pct=0");
    let io_uring_requests = |probes: &KernelLatency| {
        let snapshot = probes.snapshot().unwrap();
        snapshot
            .ops
            .iter()
            .filter(|(id, _)| id.source == Source::IoUring)
            .map(|(_, h)| h.count)
            .sum::<u64>()
    };
    wait_for("io_uring page writes", Duration::from_secs(30), || {
        io_uring_requests(&probes) > 0
    });

    let delta = probes.snapshot().unwrap().since(&before);
    let total = |source| {
        delta
            .ops
            .iter()
            .filter(|(id, _)| id.source == source)
            .map(|(_, h)| h.count)
            .sum::<u64>()
    };
    assert!(total(Source::Syscall) > 0, "no mariadbd syscalls: {delta:#?}");
    assert!(
        total(Source::IoUring) > 0,
        "no mariadbd io_uring requests: {delta:#?}"
    );
    assert!(total(Source::Fuse) > 0, "no FUSE requests: {delta:#?}");
    let preadv = delta.get(Source::Syscall, "preadv").map_or(0, |h| h.count);
    assert!(
        preadv < FOREIGN_PREADVS,
        "preadv of another process counted: {preadv}"
    );
    for (id, h) in &delta.ops {
        eprintln!(
            "{} {}: {} requests, {} us total",
            id.source,
            id.name(),
            h.count,
            h.sum_ns / 1000
        );
    }

    // A restarted mariadbd (new pid in the same pid file) is followed.
    drop(mariadbd);
    let mariadbd = start_mariadbd();
    assert_eq!(probes.follow_pid().unwrap(), Some(mariadbd.0.id()));
    let before = probes.snapshot().unwrap();
    client(
        "CREATE TABLE sbtest.after_restart (id INT PRIMARY KEY); INSERT INTO sbtest.after_restart VALUES (1)",
    );
    let delta = probes.snapshot().unwrap().since(&before);
    assert!(
        delta
            .get(Source::Syscall, "fdatasync")
            .is_some_and(|h| h.count > 0),
        "{delta:#?}"
    );
}
