//! The harness of the end-to-end tests: real `mariadbd` processes, prerequisite checks, and guards
//! that clean up processes even when a test panics.
//!
//! Prerequisites: when `CI=true`, a missing tool fails the test (CI installs everything through
//! `scripts/setup.sh`); elsewhere the test is skipped with a line saying why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod prereq {
    use std::path::Path;

    /// Whether the tests run in CI, where nothing may be skipped.
    pub fn in_ci() -> bool {
        std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
    }

    pub fn have_tool(name: &str) -> bool {
        let path = std::env::var("PATH").unwrap_or_default();
        let found = path
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .any(|dir| Path::new(dir).join(name).is_file());
        found
    }

    pub fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// `true` if every tool is installed. Otherwise panics in CI, or prints why `test` is skipped.
    pub fn require_tools(test: &str, tools: &[&str]) -> bool {
        let missing: Vec<&str> = tools.iter().copied().filter(|t| !have_tool(t)).collect();
        if missing.is_empty() {
            return true;
        }
        let why = format!(
            "{} not installed (scripts/setup.sh installs it)",
            missing.join(", ")
        );
        if in_ci() {
            panic!("{test}: {why}; CI must run this test");
        }
        eprintln!("SKIPPED {test}: {why}");
        false
    }

    /// `true` if this test may mount FUSE filesystems: root and fuse3's tools. Otherwise as
    /// [`require_tools`].
    pub fn require_fuse(test: &str) -> bool {
        if !is_root() {
            let why = "needs root to mount FUSE and run mariadbd as root";
            if in_ci() {
                panic!("{test}: {why}; CI runs as root");
            }
            eprintln!("SKIPPED {test}: {why}");
            return false;
        }
        if !std::path::Path::new("/dev/fuse").exists() {
            if in_ci() {
                panic!("{test}: /dev/fuse is missing; CI must run this test");
            }
            eprintln!("SKIPPED {test}: /dev/fuse is missing");
            return false;
        }
        require_tools(test, &["fusermount3"])
    }

    /// Everything a test of MariaDB on a fuse-ibd mount needs; see [`require_fuse`].
    pub fn require_mariadb_on_fuse(test: &str) -> bool {
        require_fuse(test) && require_mariadb(test)
    }

    /// `require_tools` for the MariaDB server and client.
    pub fn require_mariadb(test: &str) -> bool {
        require_tools(
            test,
            &["mariadbd", "mariadb-install-db", "mariadb", "mariadb-admin"],
        )
    }
}

/// A private tmpdir for the server of `datadir`: a starting server deletes every `#sql*` file in
/// its tmpdir, which would destroy the temporary tables of another server sharing `/tmp`.
fn private_tmpdir(datadir: &Path) -> Result<String> {
    let dir = datadir.with_extension("tmp");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(format!("--tmpdir={}", dir.display()))
}

/// Creates a fresh datadir with `mariadb-install-db` (no test db, root by password-less socket).
pub fn install_db(datadir: &Path, server_args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("mariadb-install-db");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg(private_tmpdir(datadir)?)
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .args(user_arg())
        .args(server_args);
    let out = cmd.output().context("running mariadb-install-db")?;
    if !out.status.success() {
        bail!(
            "mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn user_arg() -> Vec<String> {
    if prereq::is_root() {
        vec!["--user=root".into()]
    } else {
        vec![]
    }
}

/// Copies a directory tree as `cp -a` does (datadirs hold sparse files and odd permissions).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

/// Runs SQL as root through the `mariadb` client on the server at `socket` (default database
/// `mysql`); returns its tab-separated output without headers.
pub fn sql_on_socket(socket: &Path, statements: &str) -> Result<String> {
    let out = Command::new("mariadb")
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "-N", "-B", "--database=mysql", "-e", statements])
        .stdin(Stdio::null())
        .output()
        .context("running the mariadb client")?;
    if !out.status.success() {
        bail!(
            "SQL failed: {}\n{}",
            statements,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// A running `mariadbd`, killed with SIGKILL on drop unless shut down first.
pub struct MariaDb {
    child: Option<Child>,
    pub datadir: PathBuf,
    pub socket: PathBuf,
    pub error_log: PathBuf,
}

impl MariaDb {
    /// Starts `mariadbd` on `datadir` (socket only, no TCP) and waits until it answers `SELECT 1`.
    /// `server_args` come after ours and so override them.
    pub fn start(datadir: &Path, server_args: &[&str]) -> Result<Self> {
        let base = datadir.with_extension("");
        let socket = base.with_extension("sock");
        let error_log = base.with_extension("err");
        let _ = std::fs::remove_file(&error_log);
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--log-error={}", error_log.display()))
            .arg(format!("--pid-file={}", base.with_extension("pid").display()))
            .arg(private_tmpdir(datadir)?)
            .args([
                "--skip-networking",
                "--innodb-buffer-pool-size=64M",
                "--innodb-doublewrite=0",
            ])
            .args(user_arg())
            .args(server_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning mariadbd")?;
        let mut db = Self {
            child: Some(child),
            datadir: datadir.into(),
            socket,
            error_log,
        };
        db.wait_ready(Duration::from_secs(120))?;
        Ok(db)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.sql("SELECT 1").is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                // A crash prints some 45 lines of stack trace and limits after its cause.
                bail!(
                    "mariadbd exited with {status} during start-up; error log:\n{}",
                    self.error_log_tail(100)
                );
            }
            if started.elapsed() > timeout {
                bail!(
                    "mariadbd did not answer within {timeout:?}; error log:\n{}",
                    self.error_log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs SQL through the `mariadb` client; returns its tab-separated output without headers.
    pub fn sql(&self, statements: &str) -> Result<String> {
        sql_on_socket(&self.socket, statements)
    }

    /// A single value (first column of the first row).
    pub fn value(&self, query: &str) -> Result<String> {
        let out = self.sql(query)?;
        Ok(out
            .lines()
            .next()
            .unwrap_or("")
            .split('\t')
            .next()
            .unwrap_or("")
            .to_string())
    }

    /// Clean shutdown (`mariadb-admin shutdown`), waiting for the process to exit.
    pub fn shutdown(mut self) -> Result<()> {
        let out = Command::new("mariadb-admin")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "shutdown"])
            .output()
            .context("running mariadb-admin")?;
        if !out.status.success() {
            bail!(
                "mariadb-admin shutdown failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(mut child) = self.child.take() {
            child.wait()?;
        }
        Ok(())
    }

    /// SIGKILL: a crash as far as InnoDB is concerned.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    pub fn error_log_tail(&self, lines: usize) -> String {
        let log = self.error_log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `Innodb_lsn_flushed`: the LSN up to which the server has made its redo durable.
    pub fn flushed_lsn(&self) -> Result<u64> {
        let query = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_LSN_FLUSHED'";
        Ok(self.value(query)?.parse()?)
    }

    /// The LSN from the server's "End of log at LSN=…" line, if it printed one.
    pub fn reported_end_of_log(&self) -> Option<u64> {
        let log = self.error_log();
        let at = log.find("End of log at LSN=")? + "End of log at LSN=".len();
        log[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A workspace binary next to the test executable (`target/<profile>/<name>`); `scripts/test.sh`
/// builds every binary before the tests run.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} not built: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// The `innodb_page_server` plugin library this workspace builds (`mariadb-plugin`), next to
/// the test executable like [`workspace_binary`]; `scripts/test.sh` builds it with the workspace.
pub fn plugin_library() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let lib = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join("libinnodb_page_server.so");
    assert!(
        lib.is_file(),
        "{} not built: run `cargo build --workspace` (or `-p innodb-page-server-plugin`) first",
        lib.display()
    );
    lib
}

/// A plugin directory for test servers (`--plugin-dir`), made as ibdctl makes a compute's: a link
/// to every plugin of the installed server, so none is hidden, plus `innodb_page_server.so`, this
/// workspace's build. Tests never write into the system's plugin directory: other checkouts'
/// tests may run at the same time, each with its own build of the plugin.
pub fn plugin_dir(dir: &Path) -> Result<PathBuf> {
    ibdctl::mycnf::prepare_plugin_dir(dir, &plugin_library())?;
    Ok(dir.into())
}

/// Whether `path` is a mount point right now (`/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    let target = canonical.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// A running `fuse-ibd mount`; on drop: SIGTERM, then SIGKILL and a lazy unmount if needed, so no
/// mount outlives a failed test.
pub struct FuseIbd {
    child: Option<Child>,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub log: PathBuf,
}

impl FuseIbd {
    pub fn mount(mountpoint: &Path, cache_dir: &Path) -> Result<Self> {
        Self::mount_with(mountpoint, cache_dir, &[])
    }

    /// Mounts node `node` of a test (`<root>/<node>/datadir`, cache `<root>/<node>/cache`)
    /// shipping pages and redo of `timeline` to the two services, with `extra` arguments.
    pub fn mount_node(
        root: &Path,
        node: &str,
        pageserver: &Service,
        walsync: &Service,
        timeline: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args = vec![
            "--pageserver",
            &pageserver.url,
            "--walsync",
            &walsync.url,
            "--timeline",
            timeline,
        ];
        args.extend_from_slice(extra);
        let dir = root.join(node);
        Self::mount_with(&dir.join("datadir"), &dir.join("cache"), &args)
    }

    /// Mounts with extra `fuse-ibd mount` arguments (`--walsync`, `--timeline`, ...).
    pub fn mount_with(mountpoint: &Path, cache_dir: &Path, args: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(mountpoint)?;
        let log = cache_dir.with_extension("fuse-ibd.log");
        let child = Command::new(workspace_binary("fuse-ibd"))
            .arg("mount")
            .arg("--datadir")
            .arg(mountpoint)
            .arg("--cache-dir")
            .arg(cache_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning fuse-ibd")?;
        let mut fuse = Self {
            child: Some(child),
            mountpoint: mountpoint.into(),
            cache_dir: cache_dir.into(),
            log,
        };
        let started = Instant::now();
        while !is_mounted(mountpoint) {
            if let Some(status) = fuse.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                fuse.child = None;
                bail!("fuse-ibd exited with {status}:\n{}", fuse.log_text());
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("fuse-ibd did not mount within 20 s:\n{}", fuse.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(fuse)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A numeric `key=value` line of the mount's `.fuse-ibd/status`.
    pub fn status(&self, key: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.mountpoint.join(".fuse-ibd/status")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait: the daemon unmounts and exits 0.
    pub fn unmount(mut self) -> Result<()> {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait()?;
        if !status.success() {
            bail!("fuse-ibd exited with {status}:\n{}", self.log_text());
        }
        if is_mounted(&self.mountpoint) {
            bail!(
                "{} still mounted after fuse-ibd exited",
                self.mountpoint.display()
            );
        }
        Ok(())
    }

    /// SIGKILL: the daemon dies without unmounting; the dead mount is detached.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

impl Drop for FuseIbd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .is_some()
                {
                    self.child = None;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill_now();
    }
}

/// A running service binary of this workspace (`walsync`, `pageserver-lite`) on a loopback port;
/// SIGKILLed on drop. It can be killed or stopped and started again on the same data dir and the
/// same address, as an operator restarts a crashed server: clients keep their URL.
pub struct Service {
    child: Option<Child>,
    binary: String,
    data_dir: PathBuf,
    /// `host:port` it listens on (fixed after the first start).
    addr: String,
    pub url: String,
    pub log: PathBuf,
}

impl Service {
    /// Starts `binary --listen 127.0.0.1:0 --data-dir <data_dir> --addr-file <f>` and waits for
    /// the address it bound.
    pub fn start(binary: &str, data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let log = data_dir.with_extension("log");
        let _ = std::fs::remove_file(&log);
        let mut service = Self {
            child: None,
            binary: binary.into(),
            data_dir: data_dir.into(),
            addr: "127.0.0.1:0".into(),
            url: String::new(),
            log,
        };
        service.spawn(Duration::ZERO)?;
        Ok(service)
    }

    /// Spawns the binary on `self.addr`; a bind that fails because the port is still held (a
    /// socket of the killed process) is retried for up to `bind_retry`.
    fn spawn(&mut self, bind_retry: Duration) -> Result<()> {
        let addr_file = self.data_dir.with_extension("addr");
        let started = Instant::now();
        loop {
            let _ = std::fs::remove_file(&addr_file);
            // Appended: the log of a restarted service keeps what the earlier run said.
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)?;
            let mut child = Command::new(workspace_binary(&self.binary))
                .args(["--listen", &self.addr, "--data-dir"])
                .arg(&self.data_dir)
                .arg("--addr-file")
                .arg(&addr_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawning {}", self.binary))?;
            let exited = loop {
                if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                    if !addr.trim().is_empty() {
                        self.addr = addr.trim().to_string();
                        self.url = format!("http://{}", self.addr);
                        self.child = Some(child);
                        return Ok(());
                    }
                }
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if started.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("{} did not start listening within 20 s", self.binary);
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if started.elapsed() < bind_retry {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            bail!("{} exited with {exited}:\n{}", self.binary, self.log_text());
        }
    }

    /// Sends `signal` (SIGSTOP to freeze it as an unresponsive server, SIGCONT to thaw it).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// SIGKILL, as a crash of the server: it is gone until [`Service::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child process; SIGCONT first so a stopped one can die.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a clean stop (it finishes its writes and exits 0).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.binary);
        };
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait()?;
        if !status.success() {
            bail!("{} exited with {status}:\n{}", self.binary, self.log_text());
        }
        Ok(())
    }

    /// Starts the binary again on the same data dir and the same address (after
    /// [`Service::kill`] or [`Service::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is still running", self.binary);
        }
        self.spawn(Duration::from_secs(10))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of a Prometheus sample on the service's `/metrics` (`name` with its labels, as
    /// it appears before the value), or `None` if it has no such line.
    pub fn metric(&self, name: &str) -> Result<Option<f64>> {
        let text = http_get(&self.addr, "/metrics")?;
        Ok(text.lines().find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        }))
    }
}

/// A plain blocking `GET` (no client library needed for a metrics page); the body if 200.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path} from {addr}: no HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} from {addr}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the storage services hold, read with their clients (blocking, for tests).
pub mod remote {
    use std::path::Path;

    use anyhow::{bail, Context, Result};
    use ibd_api::pageserver::{FileKind, PageAddr, PageserverClient, ReadAt, ReadPagesRequest};

    const BLOCK: u64 = 16384;

    /// A runtime for blocking on the clients' futures.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    }

    /// Every page and generic file the pageserver lists for `timeline` has the size and exact
    /// content of the same file under `dir` (a datadir on a quiet mount). Returns how many files
    /// it compared.
    pub fn assert_pageserver_matches(url: &str, timeline: &str, dir: &Path) -> Result<usize> {
        let rt = runtime();
        let ps = PageserverClient::new(url)?;
        let files = rt.block_on(ps.list_files(timeline, ReadAt::Latest))?;
        let mut checked = 0;
        for f in files
            .iter()
            .filter(|f| matches!(f.kind, FileKind::Page | FileKind::Generic))
        {
            let local = std::fs::read(dir.join(&f.path)).with_context(|| format!("reading {}", f.path))?;
            if f.size != local.len() as u64 {
                bail!(
                    "{}: {} bytes on the pageserver, {} locally",
                    f.path,
                    f.size,
                    local.len()
                );
            }
            let blocks: Vec<PageAddr> = (0..f.size.div_ceil(BLOCK))
                .map(|block| PageAddr::File { file: f.id, block })
                .collect();
            for chunk in blocks.chunks(64) {
                let req = ReadPagesRequest {
                    at: ReadAt::Latest,
                    pages: chunk.to_vec(),
                };
                let pages = rt.block_on(ps.read_pages(timeline, &req))?;
                for (addr, page) in chunk.iter().zip(pages) {
                    let PageAddr::File { block, .. } = addr else {
                        unreachable!()
                    };
                    let start = (block * BLOCK) as usize;
                    let want = &local[start..(start + BLOCK as usize).min(local.len())];
                    if &page.image[..want.len()] != want {
                        bail!("{} block {block} differs from the local file", f.path);
                    }
                }
            }
            checked += 1;
        }
        Ok(checked)
    }
}

/// Bank transfers: accounts whose total never changes, and one journal row per transfer in the
/// same transaction. Each transfer is one `mariadb` client run, so a transfer whose client
/// exited 0 is a commit the server acknowledged.
pub mod bank {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Result};

    use super::MariaDb;

    pub const ACCOUNTS: i64 = 100;
    pub const BALANCE: i64 = 1000;

    /// Creates `bank.accounts` (every account at [`BALANCE`]) and `bank.journal`.
    pub fn create(db: &MariaDb) -> Result<()> {
        db.sql(&format!(
            "CREATE DATABASE bank;
             CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
             INSERT INTO bank.accounts SELECT seq, {BALANCE} FROM seq_1_to_{ACCOUNTS};
             CREATE TABLE bank.journal (transfer BIGINT PRIMARY KEY) ENGINE=InnoDB;"
        ))?;
        Ok(())
    }

    /// Transfer `i`: moves money between two accounts and journals `i`, in one transaction. The
    /// money moves in one statement, which locks both rows in key order: concurrent transfers
    /// never deadlock.
    pub fn transfer(socket: &Path, i: u64) -> Result<()> {
        let accounts = ACCOUNTS as u64;
        let (from, to, amount) = (i % accounts + 1, (i * 37 + 11) % accounts + 1, i % 50 + 1);
        let out = std::process::Command::new("mariadb")
            .arg(format!("--socket={}", socket.display()))
            .args(["-uroot", "-e"])
            .arg(format!(
                "START TRANSACTION;
                 UPDATE bank.accounts SET balance = balance + IF(id = {from}, -{amount}, {amount})
                   WHERE id IN ({from}, {to});
                 INSERT INTO bank.journal VALUES ({i});
                 COMMIT;"
            ))
            .stdin(std::process::Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("transfer {i}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// One transfer as a client saw it.
    #[derive(Debug, Clone)]
    pub struct Commit {
        pub id: u64,
        pub started: Instant,
        pub finished: Instant,
    }

    impl Commit {
        pub fn took(&self) -> Duration {
            self.finished - self.started
        }
    }

    /// What the clients saw.
    #[derive(Debug, Default)]
    pub struct Report {
        /// Transfers whose commit returned success.
        pub acked: Vec<Commit>,
        /// Every transfer sent, acknowledged or not (one that failed may still have committed).
        pub attempted: BTreeSet<u64>,
        /// Failed transfers: when, and the client's message.
        pub errors: Vec<(Instant, String)>,
    }

    impl Report {
        /// Adds what a later workload on the same database saw.
        pub fn merge(&mut self, other: Report) {
            self.acked.extend(other.acked);
            self.attempted.extend(other.attempted);
            self.errors.extend(other.errors);
        }

        /// Fails if any transfer failed before `at` (a crash at `at` fails those in flight).
        pub fn no_errors_before(&self, at: Instant) -> Result<()> {
            match self.errors.iter().find(|(when, _)| *when < at) {
                Some((_, e)) => bail!("a transfer failed: {e}"),
                None => Ok(()),
            }
        }

        pub fn acked_ids(&self) -> BTreeSet<u64> {
            self.acked.iter().map(|c| c.id).collect()
        }

        /// The transfer that took longest.
        pub fn slowest(&self) -> Option<&Commit> {
            self.acked.iter().max_by_key(|c| c.took())
        }

        /// How many commits returned inside `[from, to)`.
        pub fn finished_between(&self, from: Instant, to: Instant) -> usize {
            self.acked
                .iter()
                .filter(|c| c.finished >= from && c.finished < to)
                .count()
        }
    }

    /// Clients sending transfers back to back until stopped; each stops at its first error.
    pub struct Workload {
        stop: Arc<AtomicBool>,
        acked: Arc<AtomicU64>,
        clients: Vec<JoinHandle<Report>>,
    }

    impl Workload {
        /// `clients` concurrent clients; client `c` sends transfers `first_id + c`,
        /// `first_id + c + clients`, ... (ids must not repeat across workloads on one database).
        pub fn start(socket: &Path, clients: u64, first_id: u64) -> Self {
            let stop = Arc::new(AtomicBool::new(false));
            let acked = Arc::new(AtomicU64::new(0));
            let clients = (0..clients)
                .map(|c| {
                    let (socket, stop, acked_count): (PathBuf, _, _) =
                        (socket.into(), stop.clone(), acked.clone());
                    std::thread::spawn(move || {
                        let mut report = Report::default();
                        let mut id = first_id + c;
                        while !stop.load(Ordering::SeqCst) {
                            report.attempted.insert(id);
                            let started = Instant::now();
                            match transfer(&socket, id) {
                                Ok(()) => {
                                    report.acked.push(Commit {
                                        id,
                                        started,
                                        finished: Instant::now(),
                                    });
                                    acked_count.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(e) => {
                                    report.errors.push((Instant::now(), format!("{e:#}")));
                                    break;
                                }
                            }
                            id += clients;
                        }
                        report
                    })
                })
                .collect();
            Self { stop, acked, clients }
        }

        /// Commits acknowledged so far.
        pub fn acked(&self) -> u64 {
            self.acked.load(Ordering::SeqCst)
        }

        /// Waits until `n` commits in all were acknowledged; fails after `timeout`.
        pub fn wait_for_acked(&self, n: u64, timeout: Duration) -> Result<()> {
            let deadline = Instant::now() + timeout;
            while self.acked() < n {
                if Instant::now() > deadline {
                    bail!(
                        "only {} transfers acknowledged within {timeout:?}, waited for {n}",
                        self.acked()
                    );
                }
                if self.clients.iter().all(JoinHandle::is_finished) {
                    bail!("every client stopped after {} transfers", self.acked());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        }

        /// Stops the clients (each finishes the transfer it is in) and merges what they saw.
        pub fn stop(self) -> Report {
            self.stop.store(true, Ordering::SeqCst);
            let mut all = Report::default();
            for client in self.clients {
                let report = client.join().expect("a bank client panicked");
                all.acked.extend(report.acked);
                all.attempted.extend(report.attempted);
                all.errors.extend(report.errors);
            }
            all.acked.sort_by_key(|c| c.finished);
            all
        }
    }

    /// The bank is consistent and holds what the clients saw: the total is unchanged, every
    /// acknowledged transfer is journaled, nothing is journaled that was never sent, and
    /// `CHECK TABLE` finds both tables sound.
    pub fn verify(db: &MariaDb, report: &Report) -> Result<()> {
        let total = db.value("SELECT SUM(balance) FROM bank.accounts")?;
        if total != (ACCOUNTS * BALANCE).to_string() {
            bail!("money was created or destroyed: the total is {total}");
        }
        let journal: BTreeSet<u64> = db
            .sql("SELECT transfer FROM bank.journal")?
            .lines()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let lost: Vec<u64> = report.acked_ids().difference(&journal).copied().collect();
        if !lost.is_empty() {
            bail!(
                "{} acknowledged transfers are missing, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(10)]
            );
        }
        let invented: Vec<u64> = journal.difference(&report.attempted).copied().collect();
        if !invented.is_empty() {
            bail!("transfers that were never sent are journaled: {invented:?}");
        }
        for table in ["bank.accounts", "bank.journal"] {
            let check = db.sql(&format!("CHECK TABLE {table}"))?;
            if !check.lines().last().unwrap_or("").ends_with("OK") {
                bail!("CHECK TABLE {table}: {check}");
            }
        }
        Ok(())
    }
}

/// Runs `sysbench <test> <command>` against the server behind `socket` (database `sbtest`,
/// user root) and returns its output; fails with the output if sysbench fails.
pub fn sysbench(socket: &Path, test: &str, command: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("sysbench")
        .arg(test)
        .args(["--db-driver=mysql", "--mysql-user=root", "--mysql-db=sbtest"])
        .arg(format!("--mysql-socket={}", socket.display()))
        .args(args)
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .context("running sysbench")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("sysbench {test} {command} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// A number from sysbench's summary, e.g. `sysbench_stat(out, "transactions:")`.
pub fn sysbench_stat(output: &str, label: &str) -> Option<u64> {
    output.lines().find_map(|l| {
        l.trim_start()
            .strip_prefix(label)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// `n` distinct loopback ports that were free a moment ago (held together while chosen, so they
/// differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// Processes (other than this one) whose command line names `path`: what a test started under
/// a private directory and might leave behind.
pub fn processes_mentioning(path: &Path) -> Vec<(u32, String)> {
    let needle = path.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Mount points at or under `path` (`/proc/self/mountinfo`).
pub fn mounts_under(path: &Path) -> Vec<String> {
    let prefix = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect()
}

/// What an `ibdctl` command printed.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// `ibdctl` on a private home. On drop: `ibdctl down`, then SIGKILL of any process still naming
/// the home and a lazy unmount of whatever is mounted under it, so nothing outlives a failed test.
pub struct Ibdctl {
    pub home: PathBuf,
    bin: PathBuf,
}

impl Ibdctl {
    pub fn new(home: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
            bin: workspace_binary("ibdctl"),
        }
    }

    /// `ibdctl --home <home> <args>`, not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--home").arg(&self.home).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `ibdctl <args>` to the end; fails with its output if it fails.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let out = self
            .command(args)
            .output()
            .with_context(|| format!("running ibdctl {}", args.join(" ")))?;
        let output = Output {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if !out.status.success() {
            bail!(
                "ibdctl {} failed ({}):\n{}\n{}",
                args.join(" "),
                out.status,
                output.stderr,
                output.stdout
            );
        }
        Ok(output)
    }

    /// `ibdctl status --json`.
    pub fn status(&self) -> Result<String> {
        Ok(self.run(&["status", "--json"])?.stdout)
    }

    fn clean_up(&self) {
        if self.home.join("state.json").exists() {
            if let Err(e) = self.run(&["down"]) {
                eprintln!("cleanup: {e}");
            }
        }
        for (pid, cmdline) in processes_mentioning(&self.home) {
            eprintln!("cleanup: killing leftover pid {pid}: {cmdline}");
            // SAFETY: signalling a process this test started (its command line names our home).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        for mount in mounts_under(&self.home) {
            eprintln!("cleanup: detaching leftover mount {mount}");
            let _ = Command::new("fusermount3").args(["-u", "-z", &mount]).status();
        }
    }
}

impl Drop for Ibdctl {
    fn drop(&mut self) {
        self.clean_up();
    }
}
