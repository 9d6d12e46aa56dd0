//! Child processes that never outlive the runner, Ctrl-C handling, and per-process CPU time.
//!
//! Every child runs in its own process group so a terminal Ctrl-C reaches only the runner; the
//! runner then stops its children in order (benchmark client, database server, FUSE daemon,
//! unmount) through the guards' `Drop`, instead of everything dying at once and leaving a
//! mount behind.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT/SIGTERM/SIGHUP into a flag that every wait checks, so that cleanup runs.
pub fn install_interrupt_handler() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous = unsafe { libc::signal(signal, on_interrupt as *const () as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            bail!("cannot install a handler for signal {signal}");
        }
    }
    Ok(())
}

/// Fails once the user asked to stop; call between steps and while waiting.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in short slices so an interrupt is noticed promptly.
pub fn sleep_interruptible(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        check_interrupted()?;
        sleep(POLL_INTERVAL.min(deadline - Instant::now()));
    }
    Ok(())
}

const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A running child that is stopped (SIGTERM, then SIGKILL) if dropped while still running.
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    /// Spawns `command` in its own process group; `what` names it in errors.
    pub fn spawn(command: &mut Command, what: &str) -> Result<Self> {
        let child = command
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {what} ({:?})", command.get_program()))?;
        Ok(ChildGuard {
            child,
            what: what.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the child has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for the child to exit, giving up (and stopping it) at `timeout` or on interrupt.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            check_interrupted()?;
            if Instant::now() >= deadline {
                bail!("{} did not finish within {timeout:?}", self.what);
            }
            sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM, then SIGKILL if the child is still there after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: plain syscall on our own, not yet reaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            sleep(POLL_INTERVAL);
        }
        eprintln!("warning: {} ignored SIGTERM for {grace:?}; killing it", self.what);
        self.kill()
    }

    /// SIGKILL now: a crash as far as the child is concerned (no shutdown, no flush).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(err) = self.stop(Duration::from_secs(60)) {
            eprintln!("warning: cannot stop {}: {err:#}", self.what);
        }
    }
}

/// Runs a command to completion with stdout and stderr going to `log`; on failure the error
/// carries the log's tail, which is where fio, sysbench and mariadb-backup explain themselves.
pub fn run_logged(command: &mut Command, what: &str, log: &Path, timeout: Duration) -> Result<()> {
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let mut child = ChildGuard::spawn(command, what)?;
    let status = child.wait(timeout)?;
    if !status.success() {
        bail!(
            "{what} failed ({status}); end of {}:\n{}",
            log.display(),
            log_tail(log)
        );
    }
    Ok(())
}

/// Runs a short command and returns its stdout; fails with its stderr.
pub fn output(command: &mut Command, what: &str) -> Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what} ({:?})", command.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last lines of a log file, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// User plus system CPU time a process has used so far, all threads included.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read CPU time of process {pid}"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("unexpected /proc/{pid}/stat: {stat}"))?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_second as f64))
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line. The command name (field 2) may
/// contain spaces and parentheses, so counting starts after its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Measures how busy one process is over an interval, in percent of one core.
pub struct CpuMeter {
    pid: u32,
    start_cpu: Duration,
    start: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Result<Self> {
        Ok(CpuMeter {
            pid,
            start_cpu: cpu_time(pid)?,
            start: Instant::now(),
        })
    }

    pub fn percent_of_one_core(&self) -> Result<f64> {
        let used = cpu_time(self.pid)?.saturating_sub(self.start_cpu);
        Ok(100.0 * used.as_secs_f64() / self.start.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces_and_parens() {
        let stat = "42 (bind fs) (x)) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_time(std::process::id()).is_ok());
    }
}
