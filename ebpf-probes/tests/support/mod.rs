//! Shared by the integration tests and the overhead bench: prerequisite checks, a bindfs
//! FUSE mount and child processes that are cleaned up even when a test panics.

#![allow(dead_code)] // each test target uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ebpf_probes::{KernelLatency, ProbeConfig, ProbeError};

/// Under `CI=true` a missing prerequisite fails the test; elsewhere the test is skipped.
pub fn prerequisites(tools: &[&str]) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|tool| {
            !Command::new("which")
                .arg(tool)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|tool| format!("`{tool}` not installed"))
        .collect();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not root".to_owned());
    }
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join(", ");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but prerequisites are missing: {reason}"
    );
    eprintln!("skipping: {reason} (set CI=true to make this a failure)");
    false
}

/// Loads the probes, or skips (outside CI) when this build has no BPF object.
pub fn load_probes(config: ProbeConfig) -> Option<KernelLatency> {
    match KernelLatency::load(config) {
        Ok(probes) => Some(probes),
        Err(ProbeError::Unavailable(reason)) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping: {reason}");
            None
        }
        Err(error) => panic!("loading probes: {error}"),
    }
}

/// Probes of concurrently running tests would each see the others' FUSE requests on their
/// own mount only, but syscall filters are per process: run BPF tests one at a time.
pub fn serialize() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `bindfs <dir>/src <dir>/mnt`, unmounted on drop. bindfs runs in the foreground as our
/// child, so it is reaped after the unmount instead of lingering as an orphaned zombie.
pub struct BindfsMount {
    pub source: PathBuf,
    pub mount: PathBuf,
    daemon: ChildGuard,
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let needle = format!(" {} ", path.display());
    mountinfo.lines().any(|line| line.contains(&needle))
}

impl BindfsMount {
    pub fn new(dir: &Path) -> Self {
        let source = dir.join("src");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&mount).unwrap();
        let daemon = ChildGuard(
            Command::new("bindfs")
                .arg("-f")
                .arg(&source)
                .arg(&mount)
                .spawn()
                .expect("run bindfs"),
        );
        let mounted = Self {
            source,
            mount,
            daemon,
        };
        wait_for("bindfs mount", Duration::from_secs(10), || {
            is_mounted(&mounted.mount)
        });
        mounted
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.0.id()
    }
}

impl Drop for BindfsMount {
    fn drop(&mut self) {
        let unmounted = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        // bindfs exits once unmounted; ChildGuard kills it if not and reaps it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.daemon.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
