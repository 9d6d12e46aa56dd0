//! Throwaway MariaDB servers, run as root with no config files, identical settings everywhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{self, ChildGuard};

/// Settings passed to every server on every backend (section 4.6 of the FUSE research): on FUSE,
/// InnoDB would see a "rotational" device (turning on neighbour flushing) and a file system
/// without a block size (keeping ib_logfile0 buffered), so both are pinned here for all.
/// Doublewrite is off on all backends because fuse-ibd will not need it. The buffer pool is not
/// reloaded from its dump at start: the suites set warmth themselves (prewarm for `cached`, a
/// fresh node for fuse-ibd-cold), and the background reload would read the whole table ahead of
/// the measurement, which on a fresh fuse-ibd node fetches it from the pageserver.
pub const FAIRNESS_ARGS: &[&str] = &[
    "--innodb-flush-neighbors=0",
    "--innodb-buffer-pool-load-at-startup=OFF",
    "--innodb-log-file-buffering=ON",
    "--innodb-doublewrite=0",
    "--innodb-flush-method=O_DIRECT",
    "--innodb-use-native-aio=ON",
    "--innodb-flush-log-at-trx-commit=1",
    "--skip-log-bin",
    "--skip-networking",
];

/// The arguments of a server, minus the per-instance paths; recorded in the report.
pub fn server_args(buffer_pool_mib: u64) -> Vec<String> {
    let mut args: Vec<String> = FAIRNESS_ARGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--innodb-buffer-pool-size={buffer_pool_mib}M"));
    args
}

/// Creates the system tables of a new datadir; root logs in over the socket without password.
pub fn install(datadir: &Path, run_dir: &Path, log: &Path) -> Result<()> {
    let mut command = Command::new("mariadb-install-db");
    command.args([
        "--no-defaults",
        "--user=root",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    ]);
    command.arg(format!("--datadir={}", datadir.display()));
    command.arg(format!("--tmpdir={}", private_tmpdir(run_dir)?.display()));
    process::run_logged(&mut command, "mariadb-install-db", log, Duration::from_secs(300))
}

/// A tmpdir of the instance's own: the shared /tmp is cleaned by other programs, and a
/// server that loses its temporary files there fails in confusing ways.
fn private_tmpdir(run_dir: &Path) -> Result<PathBuf> {
    let tmpdir = run_dir.join("tmp");
    std::fs::create_dir_all(&tmpdir)?;
    Ok(tmpdir)
}

/// A running mariadbd; dropping it shuts it down (SIGTERM is a clean shutdown).
pub struct Server {
    socket: PathBuf,
    error_log: PathBuf,
    /// Where this server's lines start in the error log, which every start appends to.
    error_log_start: u64,
    process: ChildGuard,
}

impl Server {
    /// Starts mariadbd on `datadir`, with its socket, pid file and error log in `run_dir` (on
    /// the local disk, not on the backend under test), and waits until it answers.
    pub fn start(datadir: &Path, run_dir: &Path, args: &[String]) -> Result<Server> {
        let mut server = Server::spawn(datadir, run_dir, args)?;
        server.wait_until_answering("SELECT 1", Duration::from_secs(600))?;
        Ok(server)
    }

    /// Starts mariadbd without waiting: recovery measurements time the wait themselves.
    pub fn spawn(datadir: &Path, run_dir: &Path, args: &[String]) -> Result<Server> {
        std::fs::create_dir_all(run_dir)?;
        let socket = run_dir.join("mariadbd.sock");
        let error_log = run_dir.join("mariadbd.err");
        let mut command = Command::new("mariadbd");
        // --no-defaults must come first.
        command.arg("--no-defaults").arg("--user=root").args(args);
        command.arg(format!("--datadir={}", datadir.display()));
        command.arg(format!("--socket={}", socket.display()));
        command.arg(format!("--pid-file={}", run_dir.join("mariadbd.pid").display()));
        command.arg(format!("--log-error={}", error_log.display()));
        command.arg(format!("--tmpdir={}", private_tmpdir(run_dir)?.display()));
        // Messages printed before the error log is open (e.g. about open-file limits).
        let console = std::fs::File::create(run_dir.join("mariadbd.console"))?;
        command.stdout(console.try_clone()?).stderr(console);
        let error_log_start = std::fs::metadata(&error_log).map_or(0, |m| m.len());
        let process = ChildGuard::spawn(&mut command, "mariadbd")?;
        Ok(Server {
            socket,
            error_log,
            error_log_start,
            process,
        })
    }

    /// Retries `sql` until it succeeds; fails early if the server exits.
    pub fn wait_until_answering(&mut self, sql: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.query(sql).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "mariadbd exited ({status}):\n{}",
                    process::log_tail(&self.error_log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "mariadbd did not answer within {timeout:?}:\n{}",
                    process::log_tail(&self.error_log)
                );
            }
            process::sleep_interruptible(Duration::from_millis(10))?;
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs SQL through the command-line client; returns tab-separated rows without headers.
    pub fn query(&self, sql: &str) -> Result<String> {
        let mut command = Command::new("mariadb");
        command.args(["--no-defaults", "--user=root", "--batch", "--skip-column-names"]);
        command
            .arg(format!("--socket={}", self.socket.display()))
            .arg("-e")
            .arg(sql);
        process::output(&mut command, "mariadb client").with_context(|| format!("query {sql:?}"))
    }

    /// What this server wrote to its error log so far.
    fn error_log_text(&self) -> String {
        let log = std::fs::read(&self.error_log).unwrap_or_default();
        let start = (self.error_log_start as usize).min(log.len());
        String::from_utf8_lossy(&log[start..]).into_owned()
    }

    /// Whether InnoDB found the log not shut down cleanly and replayed redo at this start.
    pub fn ran_crash_recovery(&self) -> bool {
        self.error_log_text().contains("Starting crash recovery")
    }

    /// Which asynchronous I/O InnoDB chose (io_uring or libaio), from the error log.
    pub fn async_io(&self) -> String {
        let log = self.error_log_text();
        log.lines()
            .filter_map(|line| line.split_once("InnoDB: Using ").map(|(_, what)| what.trim()))
            .find(|what| what.contains("io_uring") || what.contains("AIO"))
            .unwrap_or("not reported")
            .to_string()
    }

    /// SIGKILL: a crash as far as InnoDB is concerned.
    pub fn kill(mut self) -> Result<()> {
        self.process.kill().map(drop)
    }

    /// Clean shutdown, failing if the server does not exit cleanly.
    pub fn stop(mut self) -> Result<()> {
        let status = self.process.stop(Duration::from_secs(300))?;
        if !status.success() {
            bail!(
                "mariadbd shut down with {status}:\n{}",
                process::log_tail(&self.error_log)
            );
        }
        Ok(())
    }
}

/// Total size of the files under `dir`, to report how much data a measurement really used.
pub fn directory_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        total += if metadata.is_dir() {
            directory_size(&entry.path())?
        } else {
            metadata.len()
        };
    }
    Ok(total)
}
