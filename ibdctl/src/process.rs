//! Detached processes and their pid files. Everything ibdctl starts runs in its own session with
//! its output in a log file, so it outlives the `ibdctl` command that started it; later commands
//! find it again through its pid file.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{CtlError, Result};
use crate::store::write_atomically;

/// Starts `cmd` in a new session (no controlling terminal: a closed terminal or Ctrl-C of the
/// `ibdctl` command does not reach it), stdin from /dev/null, stdout and stderr appended to `log`.
pub fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CtlError::path("create", dir, e))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| CtlError::path("open", log, e))?;
    let err = out.try_clone().map_err(|e| CtlError::path("open", log, e))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches only the child's own process state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (not installed or not built?)"
        } else {
            ""
        };
        CtlError::Failed(format!("cannot start {program}{hint}: {e}"))
    })
}

pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn write_pid(path: &Path, pid: u32) -> Result<()> {
    write_atomically(path, format!("{pid}\n").as_bytes())
}

pub fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove");
        }
    }
}

/// Whether `pid` is a live process (not a zombie) whose command name is `comm` (guards against
/// a pid reused by an unrelated process).
pub fn alive(pid: u32, comm: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the command name may hold spaces and parentheses; the state follows
    // the last ')'.
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let state = stat[close + 1..].trim_start().chars().next();
    if matches!(state, Some('Z' | 'X' | 'x') | None) {
        return false;
    }
    let name = stat.find('(').map_or("", |open| &stat[open + 1..close]);
    name == kernel_comm(comm)
}

/// The kernel keeps the first 15 bytes of a command name.
fn kernel_comm(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The pid in `pid_file` if that process is alive and named `comm`.
pub fn running(pid_file: &Path, comm: &str) -> Option<u32> {
    read_pid(pid_file).filter(|&pid| alive(pid, comm))
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; a stale pid was checked by `alive`.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Waits until `pid` is gone; `false` if it still runs after `timeout`.
pub async fn wait_gone(pid: u32, comm: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid, comm) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Sends `sig`, waits up to `grace`, then SIGKILLs. Returns whether SIGKILL was needed.
pub async fn terminate(pid: u32, comm: &str, sig: i32, grace: Duration) -> bool {
    signal(pid, sig);
    if wait_gone(pid, comm, grace).await {
        return false;
    }
    signal(pid, libc::SIGKILL);
    wait_gone(pid, comm, Duration::from_secs(10)).await;
    true
}

/// Children started by a long-running ibdctl (`serve`) are reaped here, so a crashed one does not
/// linger as a zombie. A short-lived ibdctl just exits and its children are re-parented.
#[derive(Default)]
pub struct Reaper {
    children: Mutex<Vec<Child>>,
}

impl Reaper {
    pub fn adopt(&self, child: Child) {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
    }

    /// Collects the exit status of every child that has exited.
    pub fn reap(&self) {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }
}

/// The last `n` lines of a log file (for error messages and `ibdctl logs`).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_truncated_like_the_kernel_does() {
        assert_eq!(kernel_comm("pageserver-lite"), "pageserver-lite");
        assert_eq!(kernel_comm("a-very-long-binary-name"), "a-very-long-bin");
    }

    #[tokio::test]
    async fn detached_children_are_seen_alive_then_gone_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/sleep.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let child = spawn_detached(&mut cmd, &log).unwrap();
        let pid = child.id();
        let pid_file = dir.path().join("sleep.pid");
        write_pid(&pid_file, pid).unwrap();
        let reaper = Reaper::default();
        reaper.adopt(child);
        // `sh` execs `sleep`: wait for the exec, then the name must match.
        let started = Instant::now();
        while running(&pid_file, "sleep").is_none() {
            assert!(started.elapsed() < Duration::from_secs(5), "sleep never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid, "mariadbd"), "another name is another process");
        // Its own session: it is the session leader.
        let sid = unsafe { libc::getsid(pid as i32) };
        assert_eq!(sid, pid as i32);
        assert!(!terminate(pid, "sleep", libc::SIGTERM, Duration::from_secs(5)).await);
        // Dead (a zombie until reaped) counts as gone; reaping empties the list.
        assert!(running(&pid_file, "sleep").is_none());
        reaper.reap();
        assert!(reaper.children.lock().unwrap().is_empty());
        assert_eq!(tail(&log, 5), "started");
    }

    #[test]
    fn a_missing_binary_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = spawn_detached(
            &mut Command::new("/nonexistent/fuse-ibd"),
            &dir.path().join("x.log"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not installed or not built"), "{err}");
    }
}
