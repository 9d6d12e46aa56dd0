//! End to end: the runner mounts bindfs, runs real fio jobs on native and bindfs, writes the
//! report, and leaves no mount or file behind, also when interrupted. Checks the harness
//! works; asserts nothing about speed.

use std::path::Path;
use std::process::{Child, Command};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// In CI the test must run (a missing tool fails it); elsewhere it may skip, saying why.
fn skip_reason() -> Option<String> {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (bindfs mounts and fio O_DIRECT files)".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".to_string());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["fio", "bindfs", "fusermount3"]
        .into_iter()
        .find(|tool| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .map(|tool| format!("{tool} is not installed (scripts/setup.sh installs it)"))
}

/// A work directory on the local disk, as the runner's default is.
fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ibd-benches-test-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn runner(work: &Path, out: &Path, jobs: &str, runtime_s: u32) -> Command {
    runner_on("native,bindfs", work, out, jobs, runtime_s)
}

fn runner_on(backends: &str, work: &Path, out: &Path, jobs: &str, runtime_s: u32) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ibd-benches"));
    command.args([
        "fio",
        "--quick",
        "--backends",
        backends,
        "--fio-jobs",
        jobs,
        "--fio-ramp",
        "0",
    ]);
    command.args([
        "--fio-file-size-mib",
        "16",
        "--fio-runtime",
        &runtime_s.to_string(),
    ]);
    command.arg("--work-dir").arg(work).arg("--out").arg(out);
    command
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = dir.to_str().unwrap();
    mounts
        .lines()
        .filter(|line| line.contains(dir))
        .map(str::to_string)
        .collect()
}

fn assert_left_clean(work: &Path) {
    assert_eq!(mounts_under(work), Vec::<String>::new(), "mounts left behind");
    let left: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn quick_fio_suite_runs_on_native_and_bindfs_and_reports() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping: {reason}");
        return;
    }
    let (work, out) = (work_dir(), tempfile::tempdir().unwrap());
    let status = runner(
        work.path(),
        out.path(),
        "randread-psync-qd1-j1,commit-fdatasync-j1",
        2,
    )
    .status()
    .unwrap();
    assert!(status.success(), "runner failed: {status}");
    assert_left_clean(work.path());

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
    let runs = results["fio"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "2 jobs × 2 backends × 1 iteration");
    for run in runs {
        assert!(run["metrics"]["iops"].as_f64().unwrap() > 0.0, "{run}");
        let has_daemon_cpu = run["metrics"]["daemon_cpu_pct"].is_number();
        assert_eq!(has_daemon_cpu, run["backend"] == "bindfs", "{run}");
    }
    let commit = runs.iter().find(|r| r["job"] == "commit-fdatasync-j1").unwrap();
    assert!(commit["metrics"]["fdatasync"]["count"].as_u64().unwrap() > 0);
    let summary = std::fs::read_to_string(out.path().join("summary.md")).unwrap();
    assert!(
        summary.contains("| randread-psync-qd1-j1 | bindfs |"),
        "{summary}"
    );
    for plot in [
        "fio-iops-ratio.svg",
        "fio-cdf-randread-psync-qd1-j1.svg",
        "fio-cdf-commit-fdatasync-j1.svg",
    ] {
        assert!(out.path().join(plot).is_file(), "{plot} missing");
    }
}

#[test]
fn interrupted_run_unmounts_and_cleans_up() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping: {reason}");
        return;
    }
    let (work, out) = (work_dir(), tempfile::tempdir().unwrap());
    let mut child: Child = runner(work.path(), out.path(), "randread-psync-qd1-j1", 60)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while mounts_under(work.path()).is_empty() {
        assert!(Instant::now() < deadline, "bindfs never mounted");
        assert!(
            child.try_wait().unwrap().is_none(),
            "runner exited before mounting"
        );
        sleep(Duration::from_millis(50));
    }
    sleep(Duration::from_secs(2)); // let fio start on a backend
                                   // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "runner did not stop after SIGINT");
        sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "an interrupted run must not look successful");
    assert_left_clean(work.path());
    assert!(
        !out.path().join("results.json").exists(),
        "no report from an interrupted run"
    );
}

/// fuse-ibd and its services as the runner finds them by default: beside its own binary
/// (`cargo build --workspace --bins` puts them there; CI does).
fn fuse_ibd_binaries_missing() -> Option<String> {
    let dir = Path::new(env!("CARGO_BIN_EXE_ibd-benches")).parent().unwrap();
    ["fuse-ibd", "pageserver-lite", "walsync"]
        .into_iter()
        .find(|bin| !dir.join(bin).is_file())
        .map(|bin| format!("{bin} is not built beside the runner (cargo build --workspace --bins)"))
}

#[test]
fn cold_fuse_ibd_fetches_from_the_pageserver_warm_does_not_and_the_stub_serves_fio() {
    let in_ci = std::env::var("CI").is_ok_and(|ci| ci == "true");
    if let Some(reason) = skip_reason().or_else(|| fuse_ibd_binaries_missing().filter(|_| !in_ci)) {
        eprintln!("skipping: {reason}");
        return;
    }
    let (work, out) = (work_dir(), tempfile::tempdir().unwrap());
    let status = runner_on(
        "fuse-ibd-stub,fuse-ibd-warm,fuse-ibd-cold",
        work.path(),
        out.path(),
        "randread-psync-qd1-j1",
        1,
    )
    .status()
    .unwrap();
    assert!(status.success(), "runner failed: {status}");
    assert_left_clean(work.path());

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
    let runs = results["fio"]["runs"].as_array().unwrap();
    let metrics = |backend: &str| {
        let run = runs.iter().find(|r| r["backend"] == backend).unwrap();
        assert!(run["metrics"]["iops"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["metrics"]["daemon_cpu_pct"].is_number(), "{run}");
        run["metrics"].clone()
    };
    let (stub, warm, cold) = (
        metrics("fuse-ibd-stub"),
        metrics("fuse-ibd-warm"),
        metrics("fuse-ibd-cold"),
    );
    assert!(
        stub["pageserver_cpu_pct"].is_null() && stub["fetched_pages"].is_null(),
        "{stub}"
    );
    for services in [&warm, &cold] {
        assert!(services["pageserver_cpu_pct"].is_number(), "{services}");
        assert!(services["walsync_cpu_pct"].is_number(), "{services}");
    }
    assert_eq!(
        warm["fetched_pages"].as_f64(),
        Some(0.0),
        "the prefill left every page in the cache"
    );
    assert!(
        cold["fetched_pages"].as_f64().unwrap() > 0.0,
        "a fresh node fetches what it reads: {cold}"
    );
}
