//! Shared by the integration tests and the overhead bench: prerequisite checks, a bindfs
//! FUSE mount, a `fuse-ibd` mount and child processes that are cleaned up even when a test
//! panics.

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

/// `fuse-ibd mount --datadir <dir>/mnt --cache-dir <dir>/cache` in local-only mode (no
/// pageserver, no walsync), stderr in `<dir>/fuse-ibd.log`. As `ibd-e2e`'s `FuseIbd` (which
/// this crate cannot use: fuse-ibd depends on ebpf-probes): ready once the mount appears in
/// mountinfo; [`FuseIbdMount::unmount`] sends SIGTERM, on which the daemon unmounts and exits 0.
/// On drop (e.g. a panic) the same, then SIGKILL and a lazy unmount if it did not exit in time.
pub struct FuseIbdMount {
    pub mount: PathBuf,
    pub log: PathBuf,
    daemon: Option<Child>,
}

impl FuseIbdMount {
    pub fn new(binary: &Path, dir: &Path) -> Self {
        let mount = dir.join("mnt");
        let cache = dir.join("cache");
        let log = dir.join("fuse-ibd.log");
        std::fs::create_dir_all(&mount).unwrap();
        let daemon = Command::new(binary)
            .arg("mount")
            .arg("--datadir")
            .arg(&mount)
            .arg("--cache-dir")
            .arg(&cache)
            // clap reads these if set: local-only mode must not pick them up.
            .env_remove("PAGE_SERVER_URL")
            .env_remove("SAFEKEEPER_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
        let mut mounted = Self {
            mount,
            log,
            daemon: Some(daemon),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&mounted.mount) {
            if let Some(status) = mounted.daemon.as_mut().unwrap().try_wait().unwrap() {
                mounted.daemon = None;
                panic!("fuse-ibd exited with {status}:\n{}", mounted.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "fuse-ibd did not mount within 20 s:\n{}",
                mounted.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        mounted
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (at most 30 s): panics unless the daemon unmounted and exited 0.
    pub fn unmount(mut self) {
        let status = self.terminate(Duration::from_secs(30));
        let log = self.log_text();
        assert!(
            status.is_some_and(|s| s.success()),
            "fuse-ibd did not exit cleanly on SIGTERM ({status:?}):\n{log}"
        );
        assert!(
            !is_mounted(&self.mount),
            "{} still mounted after fuse-ibd exited",
            self.mount.display()
        );
    }

    /// SIGTERM, then up to `timeout` for the daemon to exit; its status if it did.
    fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.daemon.take()?;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    self.daemon = Some(child);
                    return None;
                }
            }
        }
    }
}

impl Drop for FuseIbdMount {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mount) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mount)
                .status();
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
