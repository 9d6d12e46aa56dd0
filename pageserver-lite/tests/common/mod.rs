//! Runs the real `pageserver-lite` binary for process-level tests and benches: a temp data dir,
//! an ephemeral port (read from `--addr-file`), the child killed on drop even when a test panics.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ibd_api::pageserver::PageserverClient;
use ibd_api::RetryPolicy;

pub struct Server {
    child: Option<Child>,
    work: tempfile::TempDir,
    extra_args: Vec<String>,
    addr: String,
}

impl Server {
    /// Starts a server on a fresh data dir; `extra_args` are passed on every (re)start.
    pub fn start(extra_args: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            work: tempfile::tempdir().expect("temp dir"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            addr: String::new(),
        };
        server.spawn();
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.work.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.work.path().join("server.log")
    }

    fn spawn(&mut self) {
        let addr_file = self.work.path().join("addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_pageserver-lite"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--addr-file")
            .arg(&addr_file)
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("pageserver-lite starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                self.addr = addr;
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pageserver-lite exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "pageserver-lite did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client that retries briefly (a test should fail fast, not hang).
    pub fn client(&self) -> PageserverClient {
        PageserverClient::with_retry(
            &self.url(),
            RetryPolicy {
                max_attempts: 3,
                max_elapsed: Duration::from_secs(2),
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
            },
        )
        .expect("valid URL")
    }

    /// SIGKILL: no shutdown work at all, like a power cut for the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("server running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = child.wait().expect("wait");
        assert!(status.success(), "unclean exit {status}:\n{}", self.log());
    }

    /// Starts again on the same data dir (a new port).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs the binary on this server's data dir with `args` and returns its exit status and stderr.
    pub fn run_another(&self, args: &[&str]) -> (std::process::ExitStatus, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_pageserver-lite"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .output()
            .expect("runs");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- pageserver-lite log ---\n{}", self.log());
        }
    }
}

/// Bytes in all files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The value of a metric in Prometheus text (first sample whose name starts with `name`).
pub async fn metric(client: &PageserverClient, name: &str) -> f64 {
    let text = client.http().get_bytes("/metrics").await.expect("metrics");
    let text = String::from_utf8_lossy(&text.body).into_owned();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name || key.starts_with(&format!("{name}{{"))).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
}

/// A valid full_crc32 InnoDB page (what MariaDB 10.11 writes by default) whose body is a pattern
/// derived from `seed`, so every version of every page is distinct.
pub fn innodb_page(space: u32, page_no: u32, lsn: u64, seed: u64) -> bytes::Bytes {
    const SIZE: usize = ibd_api::pageserver::BLOCK_SIZE;
    let mut p = vec![0u8; SIZE];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in &mut p[38..SIZE - 8] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    p[4..8].copy_from_slice(&page_no.to_be_bytes());
    p[16..24].copy_from_slice(&lsn.to_be_bytes());
    p[24..26].copy_from_slice(&17855u16.to_be_bytes()); // FIL_PAGE_INDEX
    p[34..38].copy_from_slice(&space.to_be_bytes());
    let low_lsn: [u8; 4] = p[20..24].try_into().unwrap();
    p[SIZE - 8..SIZE - 4].copy_from_slice(&low_lsn);
    let crc = ibd_api::crc32c(&p[..SIZE - 4]);
    p[SIZE - 4..].copy_from_slice(&crc.to_be_bytes());
    p.into()
}
