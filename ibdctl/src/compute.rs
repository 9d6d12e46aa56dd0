//! Computes: a fuse-ibd mount of the project's timeline as the datadir, and a stock `mariadbd` on
//! it. Start, stop (clean, or SIGKILL as a crash), fresh start (the stateless restart), delete,
//! status, and the supervisor that restarts a crashed compute marked to run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::FUSE_IBD;
use crate::control::{healthz, Backoff, Control};
use crate::error::{CtlError, Result};
use crate::home::ComputePaths;
use crate::model::{ComputeStatus, CreateCompute, RunState};
use crate::mount::{is_mounted, lazy_unmount};
use crate::mycnf::{self, MyCnf};
use crate::process::{self, running};
use crate::store::{self, Compute, ComputeConfig, Desired, State};
use crate::{ports, prereq};

/// How long a fresh or restarted fuse-ibd may take to mount (a fresh node lists the timeline's
/// files and synthesizes the redo log first).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long MariaDB may take to answer after start (crash recovery over remote pages).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a clean shutdown of mariadbd may take before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest pause between two restarts of a compute that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What runs of one compute right now.
#[derive(Debug, Clone, Copy)]
struct Procs {
    mariadbd: Option<u32>,
    fuse: Option<u32>,
    mounted: bool,
}

impl Procs {
    fn any(&self) -> bool {
        self.mariadbd.is_some() || self.fuse.is_some() || self.mounted
    }

    fn all(&self) -> bool {
        self.mariadbd.is_some() && self.fuse.is_some() && self.mounted
    }

    /// One line per thing that is wrong with a compute that should run.
    fn problems(&self, paths: &ComputePaths) -> Vec<String> {
        let mut problems = Vec::new();
        if self.fuse.is_none() {
            let pid = process::read_pid(&paths.fuse_pid).map_or(String::new(), |p| format!(" (pid {p})"));
            problems.push(format!("fuse-ibd{pid} is not running"));
        }
        if !self.mounted {
            problems.push(format!("{} is not mounted", paths.datadir.display()));
        }
        if self.mariadbd.is_none() {
            let pid = process::read_pid(&paths.mariadbd_pid).map_or(String::new(), |p| format!(" (pid {p})"));
            problems.push(format!("mariadbd{pid} is not running"));
        }
        problems
    }
}

/// The server binary of a compute: its `image`, else `mariadbd` from `PATH`.
fn server_binary(config: &ComputeConfig) -> Result<PathBuf> {
    match config.image.as_deref() {
        None => prereq::tool("mariadbd"),
        Some(image) if image.contains('/') => {
            let path = PathBuf::from(image);
            if path.is_file() {
                Ok(path)
            } else {
                Err(CtlError::BadRequest(format!("image {image:?}: no such file")))
            }
        }
        Some(image) => prereq::find_tool(image).ok_or_else(|| {
            CtlError::BadRequest(format!(
                "image {image:?} is neither the path of a MariaDB server binary nor a command in PATH; \
                 no container engine runs here: a compute is a stock mariadbd on a fuse-ibd mount \
                 (leave image out for mariadbd)"
            ))
        }),
    }
}

/// The process name of a compute's server (`mariadbd`, or its image's file name).
fn server_comm(config: &ComputeConfig) -> String {
    config
        .image
        .as_deref()
        .and_then(|i| Path::new(i).file_name())
        .map_or_else(|| "mariadbd".to_string(), |n| n.to_string_lossy().into_owned())
}

/// `SELECT 1` through the socket answers `1`.
pub(crate) async fn answers(socket: &Path) -> bool {
    let Ok(client) = prereq::tool("mariadb") else {
        return false;
    };
    let out = tokio::process::Command::new(client)
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "--connect-timeout=2", "-N", "-B", "-e", "SELECT 1"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), out).await {
        Ok(Ok(out)) => out.status.success() && out.stdout.trim_ascii() == b"1",
        _ => false,
    }
}

fn connect_lines(paths: &ComputePaths, port: u16) -> (String, String) {
    (
        format!("mariadb --socket={} -uroot", paths.socket.display()),
        format!("mariadb -h127.0.0.1 -P{port} -uroot"),
    )
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CtlError::path("create", dir, e))
}

impl Control {
    fn procs(&self, name: &str, config: Option<&ComputeConfig>) -> Procs {
        let paths = self.home.compute(name);
        let comm = config.map_or_else(|| "mariadbd".to_string(), server_comm);
        Procs {
            mariadbd: running(&paths.mariadbd_pid, &comm),
            fuse: running(&paths.fuse_pid, FUSE_IBD),
            mounted: is_mounted(&paths.datadir),
        }
    }

    /// The pageserver and walsync URLs of a compute: its config, else the environment, else the
    /// stack's services.
    fn compute_urls(&self, state: &State, compute: &Compute) -> (Option<String>, Option<String>) {
        let stack = |name: &str| state.services.get(name).map(|r| r.url.clone());
        let page = compute
            .config
            .page_server_url
            .clone()
            .or_else(|| self.env.page_server_url.clone())
            .or_else(|| stack(crate::binaries::PAGESERVER));
        let wal = compute
            .config
            .safekeeper_url
            .clone()
            .or_else(|| self.env.safekeeper_url.clone())
            .or_else(|| stack(crate::binaries::WALSYNC));
        (page, wal)
    }

    // ---- create, list, status

    pub async fn create_compute(&self, project: &str, req: &CreateCompute) -> Result<ComputeStatus> {
        let lock = self.lock().await?;
        let mut state = self.state()?;
        if req.start {
            // Refused before anything is created.
            self.check_single_writer(&state, project, req.name.as_deref().unwrap_or(""))?;
        }
        let name = self.create_compute_locked(
            &mut state,
            project,
            req,
            (
                crate::control::DEFAULT_MARIADB_PORT,
                crate::control::DEFAULT_METRICS_PORT,
            ),
            &[],
        )?;
        self.save(&state)?;
        if req.start {
            let started = self.start_compute_locked(&mut state, &name, false).await;
            self.save(&state)?;
            started?;
        }
        drop(lock);
        self.compute_status(&name).await
    }

    /// Adds a stopped compute to `state`; returns its name. Ports come from `first_ports` (TCP,
    /// metrics) on, past those of other computes and `avoid`.
    pub(crate) fn create_compute_locked(
        &self,
        state: &mut State,
        project: &str,
        req: &CreateCompute,
        first_ports: (u16, u16),
        avoid: &[u16],
    ) -> Result<String> {
        state.project(project)?;
        let name = match &req.name {
            Some(name) => name.clone(),
            None => std::iter::once(project.to_string())
                .chain((2..).map(|n| format!("{project}-{n}")))
                .find(|n| !state.computes.contains_key(n))
                .expect("an unbounded sequence has a free name"),
        };
        store::validate_id("compute name", &name)?;
        if state.computes.contains_key(&name) {
            return Err(CtlError::Conflict(format!("compute {name:?} exists")));
        }
        self.home.compute(&name).check_socket_path()?;
        let config = &req.config;
        mycnf::validate_extra(&config.extra_config)?;
        for url in [&config.page_server_url, &config.safekeeper_url]
            .into_iter()
            .flatten()
        {
            ibd_api::HttpClient::new(url, ibd_api::RetryPolicy::none())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
        }
        if config.image.is_some() {
            server_binary(config)?;
        }
        let mut taken = state.compute_ports();
        taken.extend_from_slice(avoid);
        let port = match config.port {
            Some(port) if taken.contains(&port) => {
                return Err(CtlError::Conflict(format!(
                    "port {port} is given to another compute or service of this stack"
                )))
            }
            Some(port) => port,
            None => ports::pick(first_ports.0, &format!("compute {name}'s MariaDB"), &taken)?.0,
        };
        taken.push(port);
        let metrics_port = ports::pick(first_ports.1, &format!("compute {name}'s metrics"), &taken)?.0;
        state.computes.insert(
            name.clone(),
            Compute {
                name: name.clone(),
                project: project.into(),
                config: req.config.clone(),
                desired: Desired::Stopped,
                port,
                metrics_port,
                created_at: store::now(),
                restarts: 0,
                last_crash: None,
                last_error: None,
                resume_on_up: false,
            },
        );
        self.out.say(format!(
            "created compute {name} in project {project} (MariaDB port {port})"
        ));
        Ok(name)
    }

    pub async fn list_computes(&self, project: Option<&str>) -> Result<Vec<ComputeStatus>> {
        let state = self.state()?;
        if let Some(project) = project {
            state.project(project)?;
        }
        let mut out = Vec::new();
        for compute in state.computes.values() {
            if project.is_none_or(|p| p == compute.project) {
                out.push(self.compute_status_in(&state, &compute.name).await?);
            }
        }
        Ok(out)
    }

    pub async fn compute_status(&self, name: &str) -> Result<ComputeStatus> {
        let state = self.state()?;
        self.compute_status_in(&state, name).await
    }

    pub(crate) async fn compute_status_in(&self, state: &State, name: &str) -> Result<ComputeStatus> {
        let compute = state.compute(name)?;
        let project = state.project(&compute.project)?;
        let paths = self.home.compute(name);
        let procs = self.procs(name, Some(&compute.config));
        let mut problems = Vec::new();
        let (run_state, answering) = if procs.all() {
            let answering = answers(&paths.socket).await;
            if !answering {
                problems.push(
                    "MariaDB does not answer SELECT 1 (starting, or stuck: see ibdctl logs mariadbd)".into(),
                );
            }
            (RunState::Running, answering)
        } else if !procs.any() && compute.desired == Desired::Stopped {
            (RunState::Stopped, false)
        } else {
            problems = procs.problems(&paths);
            (RunState::Crashed, false)
        };
        let (page_server_url, safekeeper_url) = self.compute_urls(state, compute);
        let (connect, connect_tcp) = connect_lines(&paths, compute.port);
        Ok(ComputeStatus {
            name: name.into(),
            project: compute.project.clone(),
            timeline: project.timeline.clone(),
            desired: compute.desired,
            state: run_state,
            answering,
            mariadbd_pid: procs.mariadbd,
            fuse_ibd_pid: procs.fuse,
            mounted: procs.mounted,
            port: compute.port,
            socket: paths.socket.display().to_string(),
            connect,
            connect_tcp,
            datadir: paths.datadir.display().to_string(),
            metrics_url: format!("http://127.0.0.1:{}/metrics", compute.metrics_port),
            page_server_url,
            safekeeper_url,
            config: compute.config.clone(),
            restarts: compute.restarts,
            last_crash: compute.last_crash.clone(),
            last_error: compute.last_error.clone(),
            problems,
        })
    }

    // ---- start

    /// One writer per timeline: refuses if a compute of `project` other than `except` runs or
    /// should run.
    fn check_single_writer(&self, state: &State, project: &str, except: &str) -> Result<()> {
        let timeline = &state.project(project)?.timeline;
        for other in state
            .computes
            .values()
            .filter(|o| o.project == project && o.name != except)
        {
            if other.desired == Desired::Running || self.procs(&other.name, Some(&other.config)).any() {
                return Err(CtlError::Conflict(format!(
                    "compute {} of project {project} runs on timeline {timeline} (one writer per timeline): stop it first (ibdctl compute stop {})",
                    other.name, other.name
                )));
            }
        }
        Ok(())
    }

    pub async fn start_compute(&self, name: &str, fresh: bool) -> Result<ComputeStatus> {
        prereq::require_root("starting a compute")?;
        let lock = self.lock().await?;
        let mut state = self.state()?;
        let started = self.start_compute_locked(&mut state, name, fresh).await;
        self.save(&state)?;
        started?;
        drop(lock);
        self.compute_status(name).await
    }

    /// Starts what is not running of compute `name` and marks it to run. `fresh`: it must be
    /// stopped; its local disk is deleted first and the mount comes back from the services.
    pub(crate) async fn start_compute_locked(
        &self,
        state: &mut State,
        name: &str,
        fresh: bool,
    ) -> Result<()> {
        let compute = state.compute(name)?.clone();
        let project = state.project(&compute.project)?.clone();
        let paths = self.home.compute(name);
        paths.check_socket_path()?;
        self.check_single_writer(state, &project.id, name)?;
        let procs = self.procs(name, Some(&compute.config));
        if fresh {
            if procs.any() {
                return Err(CtlError::Conflict(format!(
                    "compute {name} is running: stop it first (ibdctl compute stop {name}, or --kill to crash it); a fresh start deletes its local disk"
                )));
            }
            self.wipe_local_disk(&paths)?;
        } else if procs.all() {
            self.out.say(format!(
                "compute {name} already runs (mariadbd pid {}, fuse-ibd pid {})",
                procs.mariadbd.unwrap_or(0),
                procs.fuse.unwrap_or(0)
            ));
            let compute = state.compute_mut(name)?;
            compute.desired = Desired::Running;
            compute.resume_on_up = false;
            return Ok(());
        }
        let server = server_binary(&compute.config)?;
        let (page_url, wal_url) = self.compute_urls(state, &compute);
        let page_url = page_url.ok_or_else(|| {
            CtlError::Failed(format!(
                "compute {name} has no pageserver: give its config a page_server_url, set PAGE_SERVER_URL, or run `ibdctl up`"
            ))
        })?;
        let wal_url = wal_url.ok_or_else(|| {
            CtlError::Failed(format!(
                "compute {name} has no walsync: give its config a safekeeper_url, set SAFEKEEPER_URL, or run `ibdctl up`"
            ))
        })?;
        for (service, url) in [("pageserver-lite", &page_url), ("walsync", &wal_url)] {
            healthz(url).await.map_err(|e| {
                CtlError::Failed(format!(
                    "{service} at {url} does not answer ({e}): start the stack with `ibdctl up`, or fix compute {name}'s config"
                ))
            })?;
        }

        // Whatever is left of an earlier run that died halfway goes first.
        let fuse_running = procs.fuse.is_some() && procs.mounted;
        if !fuse_running {
            if let Some(pid) = procs.mariadbd {
                self.out.warn(format!(
                    "mariadbd (pid {pid}) runs on a datadir whose fuse-ibd is gone: killing it"
                ));
                process::terminate(pid, &server_comm(&compute.config), libc::SIGKILL, Duration::ZERO).await;
            }
            if let Some(pid) = procs.fuse {
                self.out.warn(format!(
                    "fuse-ibd (pid {pid}) runs but is not mounted: stopping it"
                ));
                process::terminate(pid, FUSE_IBD, libc::SIGTERM, Duration::from_secs(10)).await;
            }
            if is_mounted(&paths.datadir) {
                self.out
                    .say(format!("detaching the dead mount {}", paths.datadir.display()));
                lazy_unmount(&paths.datadir)?;
            }
        }
        for dir in [&paths.datadir, &paths.cache, &paths.tmp, &paths.run, &paths.logs] {
            create_dir(dir)?;
        }
        let mut started_fuse = None;
        let mut fresh_node = false;
        if !fuse_running {
            fresh_node = std::fs::read_dir(&paths.cache).map_or(true, |mut d| d.next().is_none());
            let pid = self
                .mount(state, name, &project.timeline, &page_url, &wal_url, fresh_node)
                .await?;
            started_fuse = Some(pid);
        }
        let result = self.start_server(state, name, &server, fresh_node).await;
        if let Err(e) = result {
            // Leave nothing half-started behind.
            if let Some(pid) = started_fuse {
                process::terminate(pid, FUSE_IBD, libc::SIGTERM, Duration::from_secs(30)).await;
                if is_mounted(&paths.datadir) {
                    let _ = lazy_unmount(&paths.datadir);
                }
                process::remove_file(&paths.fuse_pid);
            }
            return Err(e);
        }
        let compute = state.compute_mut(name)?;
        compute.desired = Desired::Running;
        compute.resume_on_up = false;
        compute.last_error = None;
        Ok(())
    }

    /// Mounts compute `name`'s datadir with fuse-ibd; returns its pid once mounted.
    async fn mount(
        &self,
        state: &mut State,
        name: &str,
        timeline: &str,
        page_url: &str,
        wal_url: &str,
        fresh: bool,
    ) -> Result<u32> {
        let paths = self.home.compute(name);
        let metrics_port = self.free_compute_port(state, name, |c| c.metrics_port, "metrics")?;
        state.compute_mut(name)?.metrics_port = metrics_port;
        self.out.say(format!(
            "mounting {} (fuse-ibd, timeline {timeline}{})",
            paths.datadir.display(),
            if fresh { ", empty cache: a fresh node" } else { "" }
        ));
        let mut cmd = Command::new(self.bins.path(FUSE_IBD));
        cmd.arg("mount")
            .arg("--datadir")
            .arg(&paths.datadir)
            .arg("--cache-dir")
            .arg(&paths.cache)
            .args([
                "--pageserver",
                page_url,
                "--walsync",
                wal_url,
                "--timeline",
                timeline,
            ])
            .arg("--metrics")
            .arg(format!("127.0.0.1:{metrics_port}"));
        let datadir = &paths.datadir;
        self.start_detached(
            "fuse-ibd",
            FUSE_IBD,
            &mut cmd,
            &paths.fuse_log,
            Some(&paths.fuse_pid),
            MOUNT_TIMEOUT,
            move || std::future::ready(is_mounted(datadir)),
        )
        .await
    }

    /// A compute's port (`which` of TCP or metrics), moved with a message if another process
    /// took it while the compute was stopped.
    fn free_compute_port(
        &self,
        state: &State,
        name: &str,
        which: fn(&Compute) -> u16,
        what: &str,
    ) -> Result<u16> {
        let compute = state.compute(name)?;
        let avoid: Vec<u16> = state
            .computes
            .values()
            .filter(|c| c.name != name)
            .flat_map(|c| [c.port, c.metrics_port])
            .chain(
                state
                    .services
                    .values()
                    .filter_map(|s| crate::control::url_port(&s.url)),
            )
            .chain(
                [compute.port, compute.metrics_port]
                    .into_iter()
                    .filter(|&p| p != which(compute)),
            )
            .collect();
        let (port, moved) = ports::pick(which(compute), &format!("compute {name}'s {what}"), &avoid)?;
        if let Some(moved) = moved {
            self.out.say(moved);
        }
        Ok(port)
    }

    /// Starts mariadbd on the mounted datadir (creating the database first on a new timeline)
    /// and waits until it answers.
    async fn start_server(
        &self,
        state: &mut State,
        name: &str,
        server: &Path,
        mut fresh_node: bool,
    ) -> Result<()> {
        let paths = self.home.compute(name);
        let compute = state.compute(name)?.clone();
        let comm = server_comm(&compute.config);
        if let Some(pid) = running(&paths.mariadbd_pid, &comm) {
            self.out
                .say(format!("mariadbd of compute {name} already runs (pid {pid})"));
            return Ok(());
        }
        let port = self.free_compute_port(state, name, |c| c.port, "MariaDB")?;
        state.compute_mut(name)?.port = port;
        let plugin_dir = self.plugin_dir(&paths)?;
        let mut cnf = MyCnf {
            datadir: &paths.datadir,
            socket: &paths.socket,
            port,
            pid_file: &paths.mariadbd_pid,
            log_error: &paths.mariadbd_log,
            tmpdir: &paths.tmp,
            user: prereq::is_root().then_some("root"),
            // mariadb-install-db bootstraps without it; the server proper loads it.
            plugin_dir: None,
            extra: &compute.config.extra_config,
        };
        store::write_atomically(&paths.my_cnf, cnf.render().as_bytes())?;

        let project_id = compute.project.clone();
        let project = state.project(&project_id)?.clone();
        if paths.datadir.join("mysql").is_dir() {
            if !project.initialized {
                state.projects.get_mut(&project_id).expect("checked").initialized = true;
                self.save(state)?;
            }
        } else if project.initialized {
            return Err(CtlError::Failed(format!(
                "timeline {} of project {} holds a database, but the mount shows no mysql schema: \
                 is {} the pageserver that holds the timeline? (ibdctl logs fuse-ibd --compute {name})",
                project.timeline,
                project.id,
                self.compute_urls(state, &compute).0.unwrap_or_default()
            )));
        } else {
            self.install_db(&paths, &project.timeline).await?;
            state.projects.get_mut(&project_id).expect("checked").initialized = true;
            self.save(state)?;
            fresh_node = false;
        }
        if plugin_dir.is_some() {
            cnf.plugin_dir = plugin_dir.as_deref();
            store::write_atomically(&paths.my_cnf, cnf.render().as_bytes())?;
        }

        self.out.say(format!(
            "starting mariadbd (port {port}){}",
            if fresh_node {
                "; on a fresh node its crash recovery replays the redo from walsync"
            } else {
                ""
            }
        ));
        let mut cmd = Command::new(server);
        cmd.arg(format!("--defaults-file={}", paths.my_cnf.display()));
        let socket = &paths.socket;
        let pid = self
            .start_detached(
                "mariadbd",
                &comm,
                &mut cmd,
                &paths.mariadbd_log,
                Some(&paths.mariadbd_pid),
                SERVER_START_TIMEOUT,
                move || answers(socket),
            )
            .await?;
        self.out
            .say(format!("compute {name}: MariaDB answers (mariadbd pid {pid})"));
        Ok(())
    }

    /// The compute's plugin dir with the `innodb_page_server` plugin built next to ibdctl, or
    /// `None` (said once) when it was not built.
    fn plugin_dir(&self, paths: &ComputePaths) -> Result<Option<std::path::PathBuf>> {
        let library = self.bins.path("libinnodb_page_server.so");
        if !library.is_file() {
            self.out.say(format!(
                "{} not built (cargo build --release -p innodb-page-server-plugin): mariadbd runs without the innodb_page_server plugin",
                library.display()
            ));
            return Ok(None);
        }
        let dir = paths.root.join("plugins");
        crate::mycnf::prepare_plugin_dir(&dir, &library)?;
        Ok(Some(dir))
    }

    /// `mariadb-install-db` into the mount: the database of a new timeline.
    async fn install_db(&self, paths: &ComputePaths, timeline: &str) -> Result<()> {
        self.out.say(format!(
            "creating the database on timeline {timeline} (mariadb-install-db into the mount; takes a few seconds)"
        ));
        let log = std::fs::File::create(&paths.install_log)
            .map_err(|e| CtlError::path("create", &paths.install_log, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| CtlError::path("create", &paths.install_log, e))?;
        let mut child = tokio::process::Command::new(prereq::tool("mariadb-install-db")?)
            .arg(format!("--defaults-file={}", paths.my_cnf.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                CtlError::io(
                    "cannot run mariadb-install-db (apt-get install mariadb-server)",
                    e,
                )
            })?;
        let mut ticker = self.out.ticker(Duration::from_secs(5));
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(|e| CtlError::io("mariadb-install-db", e))?,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    ticker.tick(|s| format!("mariadb-install-db still runs ({s} s)"));
                }
            }
        };
        if !status.success() {
            return Err(CtlError::Failed(format!(
                "mariadb-install-db failed ({status}); {} ends with:\n{}",
                paths.install_log.display(),
                process::tail(&paths.install_log, 20)
            )));
        }
        Ok(())
    }

    /// Deletes a stopped compute's local disk: cache, datadir, tmpdir, run files (its logs stay).
    fn wipe_local_disk(&self, paths: &ComputePaths) -> Result<()> {
        if is_mounted(&paths.datadir) {
            return Err(CtlError::Conflict(format!(
                "{} is still mounted: stop the compute first",
                paths.datadir.display()
            )));
        }
        for dir in paths.local_disk() {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CtlError::path("delete", dir, e)),
            }
        }
        self.out.say(format!(
            "deleted the local disk of {} (cache, datadir, tmp, run): the next mount is a fresh node",
            paths.root.display()
        ));
        Ok(())
    }

    /// `ibdctl compute wipe`: a stopped compute's local disk deleted; the next start is fresh.
    pub async fn wipe_compute(&self, name: &str) -> Result<()> {
        prereq::require_root("wiping a compute")?;
        let _lock = self.lock().await?;
        let state = self.state()?;
        let compute = state.compute(name)?;
        if self.procs(name, Some(&compute.config)).any() {
            return Err(CtlError::Conflict(format!(
                "compute {name} is running: stop it first (ibdctl compute stop {name})"
            )));
        }
        self.wipe_local_disk(&self.home.compute(name))
    }

    // ---- stop, delete

    /// Marks compute `name` stopped and stops it: clean shutdown, or SIGKILL of mariadbd and
    /// fuse-ibd (`kill`: a crash, as far as InnoDB can tell).
    pub async fn stop_compute(&self, name: &str, kill: bool) -> Result<ComputeStatus> {
        prereq::require_root("stopping a compute")?;
        let lock = self.lock().await?;
        let mut state = self.state()?;
        let compute = state.compute_mut(name)?;
        compute.desired = Desired::Stopped;
        compute.resume_on_up = false;
        let compute = compute.clone();
        // Saved first: a supervisor must not restart what is being stopped.
        self.save(&state)?;
        self.stop_processes(name, Some(&compute), kill).await?;
        drop(lock);
        self.compute_status(name).await
    }

    /// Stops whatever runs of compute `name` and leaves the datadir unmounted.
    pub(crate) async fn stop_processes(
        &self,
        name: &str,
        compute: Option<&Compute>,
        kill: bool,
    ) -> Result<()> {
        let paths = self.home.compute(name);
        let config = compute.map(|c| &c.config);
        let comm = config.map_or_else(|| "mariadbd".to_string(), server_comm);
        let procs = self.procs(name, config);
        if kill {
            for (what, pid, comm) in [
                ("mariadbd", procs.mariadbd, comm.as_str()),
                ("fuse-ibd", procs.fuse, FUSE_IBD),
            ] {
                if let Some(pid) = pid {
                    self.out.say(format!(
                        "killing {what} of compute {name} (pid {pid}, SIGKILL: a crash)"
                    ));
                    process::terminate(pid, comm, libc::SIGKILL, Duration::ZERO).await;
                }
            }
        } else {
            if let Some(pid) = procs.mariadbd {
                self.out.say(format!(
                    "stopping mariadbd of compute {name} (pid {pid}, clean shutdown)"
                ));
                process::signal(pid, libc::SIGTERM);
                let mut ticker = self.out.ticker(Duration::from_secs(5));
                while process::alive(pid, &comm) {
                    if ticker.elapsed() > SERVER_STOP_TIMEOUT {
                        self.out.warn(format!(
                            "mariadbd did not shut down within {SERVER_STOP_TIMEOUT:?}: killing it"
                        ));
                        process::terminate(pid, &comm, libc::SIGKILL, Duration::ZERO).await;
                        break;
                    }
                    ticker.tick(|s| format!("waiting for mariadbd to shut down ({s} s)"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if let Some(pid) = procs.fuse {
                self.out.say(format!(
                    "unmounting {} (fuse-ibd pid {pid})",
                    paths.datadir.display()
                ));
                if process::terminate(pid, FUSE_IBD, libc::SIGTERM, Duration::from_secs(60)).await {
                    self.out.warn("fuse-ibd did not exit within 60 s: killed it");
                }
            }
        }
        if is_mounted(&paths.datadir) {
            lazy_unmount(&paths.datadir)?;
        }
        process::remove_file(&paths.mariadbd_pid);
        process::remove_file(&paths.fuse_pid);
        Ok(())
    }

    /// Stops compute `name`, deletes its directory (local disk and logs) and forgets it.
    pub async fn delete_compute(&self, name: &str) -> Result<()> {
        prereq::require_root("deleting a compute")?;
        let _lock = self.lock().await?;
        let mut state = self.state()?;
        let compute = state.compute_mut(name)?;
        compute.desired = Desired::Stopped;
        let compute = compute.clone();
        self.save(&state)?;
        self.stop_processes(name, Some(&compute), false).await?;
        let paths = self.home.compute(name);
        self.wipe_local_disk(&paths)?;
        if let Err(e) = std::fs::remove_dir_all(&paths.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(CtlError::path("delete", &paths.root, e));
            }
        }
        state.computes.remove(name);
        self.save(&state)?;
        self.out.say(format!("deleted compute {name}"));
        Ok(())
    }

    // ---- supervision

    /// One round of supervision (the control plane runs it every few seconds): a managed service
    /// whose process is gone is restarted; a compute marked to run whose mariadbd or fuse-ibd is
    /// gone is reported (its `restarts` and `last_crash`) and restarted, with growing pauses
    /// while restarts fail.
    pub async fn supervise_once(&self) {
        self.reaper.reap();
        let state = match self.state() {
            Ok(state) => state,
            Err(e) => return tracing::error!("supervisor: {e}"),
        };
        let services_down = [crate::binaries::PAGESERVER, crate::binaries::WALSYNC]
            .into_iter()
            .filter(|name| {
                state.services.get(*name).is_some_and(|r| r.managed)
                    && self.home.service_pid(name).exists()
                    && running(&self.home.service_pid(name), name).is_none()
            })
            .collect::<Vec<_>>();
        let now = Instant::now();
        let crashed: Vec<String> = state
            .computes
            .values()
            .filter(|c| c.desired == Desired::Running && !self.procs(&c.name, Some(&c.config)).all())
            .filter(|c| self.backoff_lock().get(&c.name).is_none_or(|b| b.next <= now))
            .map(|c| c.name.clone())
            .collect();
        if services_down.is_empty() && crashed.is_empty() {
            return;
        }
        let _lock = match self.lock().await {
            Ok(lock) => lock,
            Err(e) => return tracing::error!("supervisor: {e}"),
        };
        let mut state = match self.state() {
            Ok(state) => state,
            Err(e) => return tracing::error!("supervisor: {e}"),
        };
        for name in services_down {
            match self.restart_service_if_crashed(&mut state, name).await {
                Ok(_) => {
                    if let Err(e) = self.save(&state) {
                        tracing::error!("supervisor: {e}");
                    }
                }
                Err(e) => tracing::error!("supervisor: restarting {name} failed: {e}"),
            }
        }
        for name in crashed {
            // Re-checked under the lock: another command may have stopped or restarted it.
            let Ok(compute) = state.compute(&name).cloned() else {
                continue;
            };
            let procs = self.procs(&name, Some(&compute.config));
            if compute.desired != Desired::Running || procs.all() {
                continue;
            }
            let what = procs.problems(&self.home.compute(&name)).join(", ");
            self.out
                .warn(format!("compute {name} crashed ({what}): restarting it"));
            if let Ok(c) = state.compute_mut(&name) {
                c.restarts += 1;
                c.last_crash = Some(format!("{what} (found at unix time {})", store::now()));
            }
            let result = self.start_compute_locked(&mut state, &name, false).await;
            match result {
                Ok(()) => {
                    self.backoff_lock().remove(&name);
                    self.out.say(format!("compute {name} restarted"));
                }
                Err(e) => {
                    let mut backoff = self.backoff_lock();
                    let failures = backoff.get(&name).map_or(1, |b| b.failures + 1);
                    let pause = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF);
                    backoff.insert(
                        name.clone(),
                        Backoff {
                            failures,
                            next: Instant::now() + pause,
                        },
                    );
                    tracing::error!("compute {name}: restart failed (next try in {pause:?}): {e}");
                    if let Ok(c) = state.compute_mut(&name) {
                        c.last_error = Some(e.to_string());
                    }
                }
            }
            if let Err(e) = self.save(&state) {
                tracing::error!("supervisor: {e}");
            }
        }
    }

    fn backoff_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Backoff>> {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_server_binaries_not_containers() {
        assert!(server_binary(&ComputeConfig::default()).is_ok() || prereq::find_tool("mariadbd").is_none());
        let err = server_binary(&ComputeConfig {
            image: Some("mariadb-pageserver:latest".into()),
            ..ComputeConfig::default()
        })
        .unwrap_err();
        assert!(matches!(err, CtlError::BadRequest(_)));
        assert!(err.to_string().contains("no container engine"), "{err}");
        let sh = server_binary(&ComputeConfig {
            image: Some("sh".into()),
            ..ComputeConfig::default()
        })
        .unwrap();
        assert!(sh.ends_with("sh"));
        assert_eq!(
            server_comm(&ComputeConfig {
                image: Some("/opt/mariadb/bin/mariadbd-debug".into()),
                ..ComputeConfig::default()
            }),
            "mariadbd-debug"
        );
    }
}
