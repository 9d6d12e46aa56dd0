//! Runs the real `walsync` binary on a temp data dir and an ephemeral port; kills it on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ibd_api::walsync::WalsyncClient;
use ibd_api::RetryPolicy;

pub struct Walsync {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
}

impl Walsync {
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, url) = spawn(data_dir, &extra_args);
        Self {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            extra_args,
        }
    }

    pub fn client(&self) -> WalsyncClient {
        WalsyncClient::new(&self.url)
            .unwrap()
            .with_retry(RetryPolicy::for_duration(Duration::from_secs(5)))
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGKILL, then start again on the same data dir (on a new port).
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    pub fn restart(&mut self) {
        let (child, url) = spawn(&self.data_dir, &self.extra_args);
        self.child = child;
        self.url = url;
    }
}

impl Drop for Walsync {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn command(data_dir: &Path, extra_args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walsync"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(extra_args)
        .env("RUST_LOG", "warn");
    cmd
}

fn spawn(data_dir: &Path, extra_args: &[String]) -> (Child, String) {
    let addr_file = data_dir.with_extension("addr");
    let _ = std::fs::remove_file(&addr_file);
    let mut child = command(data_dir, extra_args)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--addr-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .spawn()
        .expect("walsync binary starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            return (child, format!("http://{addr}"));
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("walsync exited during startup: {status}");
        }
        assert!(Instant::now() < deadline, "walsync did not start listening");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Deterministic WAL content: the byte at LSN `l` of timeline `seed`.
pub fn byte_at(seed: u64, lsn: u64) -> u8 {
    (lsn.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(97)) >> 7) as u8
}

pub fn chunk(seed: u64, start: u64, len: usize) -> Vec<u8> {
    (start..start + len as u64).map(|l| byte_at(seed, l)).collect()
}

/// The `/metrics` text of the walsync at `url`.
pub async fn scrape(url: &str) -> String {
    let http = ibd_api::HttpClient::new(url, RetryPolicy::none()).unwrap();
    String::from_utf8(http.get_bytes("/metrics").await.unwrap().body.to_vec()).unwrap()
}

/// The value of `series` in `/metrics` text (see `walsync::metrics::sample`); panics if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    walsync::metrics::sample(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}
