//! fuse-ibd's storage services for the benchmarks: pageserver-lite and walsync on ephemeral
//! loopback ports, with their data under the run's work directory, stopped (SIGTERM: a clean
//! shutdown for both) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::process::{self, ChildGuard};

/// The one timeline every benchmark node writes and every fresh node reads.
pub const TIMELINE: &str = "bench";

/// fuse-ibd and its services, from one build: the services are looked up beside the fuse-ibd
/// binary, so `--fuse-ibd-bin` picks all three.
#[derive(Debug, Clone)]
pub struct FuseIbdBinaries {
    pub fuse_ibd: PathBuf,
    pub pageserver: PathBuf,
    pub walsync: PathBuf,
}

impl FuseIbdBinaries {
    pub fn beside(fuse_ibd: &Path) -> Self {
        let dir = fuse_ibd.parent().unwrap_or(Path::new("."));
        FuseIbdBinaries {
            fuse_ibd: fuse_ibd.to_path_buf(),
            pageserver: dir.join("pageserver-lite"),
            walsync: dir.join("walsync"),
        }
    }

    /// Fails, saying what to build, unless fuse-ibd (and, with `services`, both services) exist.
    pub fn check(&self, services: bool) -> Result<()> {
        let mut needed = vec![&self.fuse_ibd];
        if services {
            needed.extend([&self.pageserver, &self.walsync]);
        }
        let missing: Vec<String> = needed
            .into_iter()
            .filter(|path| !path.is_file())
            .map(|path| path.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing {}: `cargo build --release -p fuse-ibd -p pageserver-lite -p walsync` \
                 (with the same CARGO_TARGET_DIR as this runner) or pass --fuse-ibd-bin",
                missing.join(", ")
            );
        }
        Ok(())
    }
}

/// One service process and the URL it answers on.
pub struct Service {
    process: ChildGuard,
    pub url: String,
}

impl Service {
    /// Starts `binary` on 127.0.0.1:0 with its data in `dir/<name>` and its log in
    /// `dir/<name>.log`; returns once it has written the address it bound.
    fn start(binary: &Path, name: &str, dir: &Path) -> Result<Self> {
        let addr_file = dir.join(format!("{name}.addr"));
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(binary);
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join(name))
            .arg("--addr-file")
            .arg(&addr_file)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let mut process = ChildGuard::spawn(&mut command, name)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Both services write the file whole (temporary file, then rename).
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                if !addr.trim().is_empty() {
                    return Ok(Service {
                        process,
                        url: format!("http://{}", addr.trim()),
                    });
                }
            }
            if let Some(status) = process.try_wait()? {
                bail!("{name} exited ({status}):\n{}", process::log_tail(&log));
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not start listening within 20 s:\n{}",
                    process::log_tail(&log)
                );
            }
            process::sleep_interruptible(Duration::from_millis(20))?;
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// A pageserver and a walsync for one backend or measurement.
pub struct Storage {
    pub pageserver: Service,
    pub walsync: Service,
}

impl Storage {
    /// Starts both services with their data, addresses and logs in `dir`.
    pub fn start(binaries: &FuseIbdBinaries, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Storage {
            pageserver: Service::start(&binaries.pageserver, "pageserver-lite", dir)?,
            walsync: Service::start(&binaries.walsync, "walsync", dir)?,
        })
    }

    /// The `fuse-ibd mount` arguments of a node shipping to (or starting fresh from) them.
    pub fn mount_args(&self) -> Vec<String> {
        [
            "--pageserver",
            &self.pageserver.url,
            "--walsync",
            &self.walsync.url,
            "--timeline",
            TIMELINE,
        ]
        .map(str::to_string)
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_found_beside_fuse_ibd_and_missing_ones_are_named() {
        let binaries = FuseIbdBinaries::beside(Path::new("/nonexistent/target/release/fuse-ibd"));
        assert_eq!(binaries.walsync, Path::new("/nonexistent/target/release/walsync"));
        let err = binaries.check(true).unwrap_err().to_string();
        assert!(err.contains("release/pageserver-lite"), "{err}");
        assert!(err.contains("cargo build --release -p fuse-ibd"), "{err}");
    }
}
