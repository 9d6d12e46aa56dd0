//! The core every front end uses: `ibdctl up/down/status` and the commands of the CLI, and the
//! HTTP API of `ibdctl serve`. It keeps the durable state ([`crate::store`]), starts and stops the
//! processes, and supervises them ([`Control::supervise_once`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ibd_api::{HttpClient, RetryPolicy};

use crate::binaries::{Binaries, FUSE_IBD, IBDCTL, PAGESERVER, WALSYNC};
use crate::error::{CtlError, Result};
use crate::home::Home;
use crate::model::{CreateCompute, CreateProject, RunState, ServiceStatus, StackStatus};
use crate::prereq;
use crate::process::{self, Reaper};
use crate::progress::Reporter;
use crate::store::{self, Desired, OpLock, Project, State};

/// The project, timeline and compute `ibdctl up` brings up.
pub const DEFAULT_PROJECT: &str = "main";
pub const DEFAULT_COMPUTE: &str = "main";

pub const DEFAULT_API_PORT: u16 = 8080;
pub const DEFAULT_PAGESERVER_PORT: u16 = 8081;
pub const DEFAULT_WALSYNC_PORT: u16 = 8082;
pub const DEFAULT_MARIADB_PORT: u16 = 3307;
pub const DEFAULT_METRICS_PORT: u16 = 9091;

/// `PAGE_SERVER_URL` and `SAFEKEEPER_URL`: services that run elsewhere; computes use them unless
/// their config names others, and ibdctl starts no service of its own for them.
#[derive(Debug, Clone, Default)]
pub struct EnvUrls {
    pub page_server_url: Option<String>,
    pub safekeeper_url: Option<String>,
}

impl EnvUrls {
    pub fn from_env() -> Self {
        let get = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
        Self {
            page_server_url: get("PAGE_SERVER_URL"),
            safekeeper_url: get("SAFEKEEPER_URL"),
        }
    }

    pub(crate) fn for_service(&self, name: &str) -> Option<(&'static str, &str)> {
        match name {
            PAGESERVER => self.page_server_url.as_deref().map(|u| ("PAGE_SERVER_URL", u)),
            WALSYNC => self.safekeeper_url.as_deref().map(|u| ("SAFEKEEPER_URL", u)),
            _ => None,
        }
    }
}

/// What `ibdctl up` does besides the defaults.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub api_port: u16,
    pub pageserver_port: u16,
    pub walsync_port: u16,
    pub mariadb_port: u16,
    pub metrics_port: u16,
    /// Start the control plane (`ibdctl serve`) too.
    pub control_plane: bool,
    /// Install missing system packages with apt-get (else name them and stop).
    pub install: bool,
    /// Extra `[mariadbd]` lines for the default compute.
    pub extra_config: Vec<String>,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            api_port: DEFAULT_API_PORT,
            pageserver_port: DEFAULT_PAGESERVER_PORT,
            walsync_port: DEFAULT_WALSYNC_PORT,
            mariadb_port: DEFAULT_MARIADB_PORT,
            metrics_port: DEFAULT_METRICS_PORT,
            control_plane: true,
            install: true,
            extra_config: Vec::new(),
        }
    }
}

/// What `up` brought up, for the connection lines.
#[derive(Debug, Clone)]
pub struct UpReport {
    pub compute: crate::model::ComputeStatus,
    pub pageserver_url: String,
    pub walsync_url: String,
    pub control_plane_url: Option<String>,
}

/// The supervisor's memory of failed restarts, so a compute that cannot start is retried with
/// growing pauses instead of in a tight loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub failures: u32,
    pub next: Instant,
}

pub struct Control {
    pub(crate) home: Home,
    pub(crate) bins: Binaries,
    pub(crate) out: Reporter,
    pub(crate) reaper: Reaper,
    pub(crate) env: EnvUrls,
    pub(crate) backoff: Mutex<HashMap<String, Backoff>>,
}

impl Control {
    pub fn new(home: Home, bins: Binaries, out: Reporter, env: EnvUrls) -> Self {
        Self {
            home,
            bins,
            out,
            reaper: Reaper::default(),
            env,
            backoff: Mutex::default(),
        }
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    pub fn reporter(&self) -> Reporter {
        self.out
    }

    pub fn state(&self) -> Result<State> {
        State::load(&self.home.state_file())
    }

    pub(crate) fn save(&self, state: &State) -> Result<()> {
        state.save(&self.home.state_file())
    }

    /// The lock every changing operation holds (shared with other ibdctl processes on this home).
    pub(crate) async fn lock(&self) -> Result<OpLock> {
        let out = self.out;
        OpLock::acquire(&self.home.lock_file(), move |m| out.say(m)).await
    }

    /// Brings up the whole stack: services, the default project and compute, the control plane.
    pub async fn up(&self, opts: &UpOptions) -> Result<UpReport> {
        prereq::require_root("ibdctl up")?;
        prereq::ensure(self.out, opts.install).await?;
        let mut needed = vec![FUSE_IBD];
        for service in [PAGESERVER, WALSYNC] {
            if self.env.for_service(service).is_none() {
                needed.push(service);
            }
        }
        self.bins.ensure(&needed, self.out).await?;
        if opts.control_plane {
            self.bins.ensure(&[IBDCTL], self.out).await?;
        }
        let lock = self.lock().await?;
        let mut state = self.state()?;
        let promised = [opts.api_port, opts.pageserver_port, opts.walsync_port];
        let avoid = |state: &State, own: u16| -> Vec<u16> {
            let mut ports: Vec<u16> = promised.iter().copied().filter(|&p| p != own).collect();
            ports.extend(state.compute_ports());
            ports
        };
        let avoid_ps = avoid(&state, opts.pageserver_port);
        let pageserver_url = self
            .ensure_service(&mut state, PAGESERVER, opts.pageserver_port, &avoid_ps)
            .await?;
        let avoid_wal = avoid(&state, opts.walsync_port);
        let walsync_url = self
            .ensure_service(&mut state, WALSYNC, opts.walsync_port, &avoid_wal)
            .await?;
        self.save(&state)?;

        if !state.projects.contains_key(DEFAULT_PROJECT) {
            self.create_project_locked(
                &mut state,
                &CreateProject {
                    id: DEFAULT_PROJECT.into(),
                    timeline: None,
                },
            )?;
        }
        match state.computes.get_mut(DEFAULT_COMPUTE) {
            None => {
                let mut req = CreateCompute {
                    name: Some(DEFAULT_COMPUTE.into()),
                    start: false,
                    ..CreateCompute::default()
                };
                req.config.extra_config = opts.extra_config.clone();
                let service_ports = promised.to_vec();
                self.create_compute_locked(
                    &mut state,
                    DEFAULT_PROJECT,
                    &req,
                    (opts.mariadb_port, opts.metrics_port),
                    &service_ports,
                )?;
            }
            Some(compute)
                if !opts.extra_config.is_empty() && compute.config.extra_config != opts.extra_config =>
            {
                crate::mycnf::validate_extra(&opts.extra_config)?;
                compute.config.extra_config = opts.extra_config.clone();
                self.out.say(format!(
                    "compute {DEFAULT_COMPUTE}: extra config updated (applies when mariadbd starts)"
                ));
                self.save(&state)?;
            }
            Some(_) => {}
        }
        self.start_compute_locked(&mut state, DEFAULT_COMPUTE, false)
            .await?;
        self.save(&state)?;
        let others: Vec<String> = state
            .computes
            .values()
            .filter(|c| c.name != DEFAULT_COMPUTE && (c.desired == Desired::Running || c.resume_on_up))
            .map(|c| c.name.clone())
            .collect();
        for name in others {
            if let Err(e) = self.start_compute_locked(&mut state, &name, false).await {
                self.out.warn(format!("compute {name} did not start: {e}"));
            }
            self.save(&state)?;
        }
        drop(lock);

        let control_plane_url = if opts.control_plane {
            let avoid = avoid(&state, opts.api_port);
            Some(self.ensure_control_plane(opts.api_port, &avoid).await?)
        } else {
            None
        };
        let compute = self.compute_status(DEFAULT_COMPUTE).await?;
        Ok(UpReport {
            compute,
            pageserver_url,
            walsync_url,
            control_plane_url,
        })
    }

    /// Stops everything: the control plane first (it would restart what is stopped), every
    /// compute cleanly, then the services. The state stays: `up` brings back what was running.
    pub async fn down(&self) -> Result<()> {
        prereq::require_root("ibdctl down")?;
        self.stop_control_plane().await;
        let _lock = self.lock().await?;
        let mut state = self.state()?;
        for compute in state.computes.values_mut() {
            if compute.desired == Desired::Running {
                compute.desired = Desired::Stopped;
                compute.resume_on_up = true;
            }
        }
        self.save(&state)?;
        let mut failures = Vec::new();
        for name in self.compute_names_on_disk(&state) {
            let compute = state.computes.get(&name);
            if let Err(e) = self.stop_processes(&name, compute, false).await {
                failures.push(format!("compute {name}: {e}"));
            }
        }
        for name in [WALSYNC, PAGESERVER] {
            self.stop_service(name).await;
        }
        if !failures.is_empty() {
            return Err(CtlError::Failed(failures.join("; ")));
        }
        self.out.say(format!(
            "down: nothing of the stack runs; its state stays in {} (`ibdctl up` brings it back)",
            self.home.root().display()
        ));
        Ok(())
    }

    /// Every compute in the state, and any directory under `computes/` (a home `scripts/up.sh`
    /// made before ibdctl kept state).
    fn compute_names_on_disk(&self, state: &State) -> Vec<String> {
        let mut names: Vec<String> = state.computes.keys().cloned().collect();
        if let Ok(entries) = std::fs::read_dir(self.home.computes_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    pub async fn status(&self) -> Result<StackStatus> {
        let state = self.state()?;
        let control_plane = self.control_plane_status();
        let mut services = Vec::new();
        for name in [PAGESERVER, WALSYNC] {
            services.push(self.service_status(&state, name).await);
        }
        let mut computes = Vec::new();
        for name in state.computes.keys() {
            computes.push(self.compute_status_in(&state, name).await?);
        }
        Ok(StackStatus {
            home: self.home.root().display().to_string(),
            control_plane,
            services,
            projects: state.projects.values().cloned().collect(),
            computes,
        })
    }

    fn control_plane_status(&self) -> ServiceStatus {
        let pid_file = self.home.control_pid();
        let pid = process::running(&pid_file, IBDCTL);
        let state = match pid {
            Some(_) => RunState::Running,
            None if pid_file.exists() => RunState::Crashed,
            None => RunState::Stopped,
        };
        let url = pid.and_then(|_| read_addr(&self.home.control_addr()));
        ServiceStatus {
            name: "control-plane".into(),
            state,
            pid,
            url,
        }
    }

    // ---- projects

    pub async fn create_project(&self, req: &CreateProject) -> Result<Project> {
        let _lock = self.lock().await?;
        let mut state = self.state()?;
        let project = self.create_project_locked(&mut state, req)?;
        self.save(&state)?;
        Ok(project)
    }

    fn create_project_locked(&self, state: &mut State, req: &CreateProject) -> Result<Project> {
        store::validate_id("project id", &req.id)?;
        let timeline = req.timeline.clone().unwrap_or_else(|| req.id.clone());
        store::validate_id("timeline id", &timeline)?;
        if state.projects.contains_key(&req.id) {
            return Err(CtlError::Conflict(format!("project {:?} exists", req.id)));
        }
        if let Some(other) = state.projects.values().find(|p| p.timeline == timeline) {
            return Err(CtlError::Conflict(format!(
                "timeline {timeline:?} belongs to project {:?}: give this project another timeline",
                other.id
            )));
        }
        let project = Project {
            id: req.id.clone(),
            timeline: timeline.clone(),
            created_at: store::now(),
            initialized: false,
        };
        state.projects.insert(req.id.clone(), project.clone());
        self.out
            .say(format!("created project {} (timeline {timeline})", req.id));
        Ok(project)
    }

    pub fn list_projects(&self) -> Result<Vec<Project>> {
        Ok(self.state()?.projects.into_values().collect())
    }

    pub fn project(&self, id: &str) -> Result<Project> {
        self.state()?.project(id).cloned()
    }

    /// Deletes a project without computes. Its timeline's data stays in the storage services.
    pub async fn delete_project(&self, id: &str) -> Result<()> {
        let _lock = self.lock().await?;
        let mut state = self.state()?;
        state.project(id)?;
        let computes: Vec<&str> = state
            .computes
            .values()
            .filter(|c| c.project == id)
            .map(|c| c.name.as_str())
            .collect();
        if !computes.is_empty() {
            return Err(CtlError::Conflict(format!(
                "project {id:?} still has computes ({}): delete them first",
                computes.join(", ")
            )));
        }
        state.projects.remove(id);
        self.save(&state)?;
        self.out.say(format!(
            "deleted project {id} (its timeline stays in pageserver-lite and walsync)"
        ));
        Ok(())
    }
}

impl Control {
    /// Starts `cmd` detached (output appended to `log`, its pid written to `pid_file`) and waits
    /// until `ready` holds, with a progress line every few seconds showing the log's last line.
    /// If it exits first or is not ready within `timeout`, it is stopped, its pid file removed,
    /// and the error ends with its log.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_detached<F, Fut>(
        &self,
        what: &str,
        comm: &str,
        cmd: &mut std::process::Command,
        log: &std::path::Path,
        pid_file: Option<&std::path::Path>,
        timeout: Duration,
        mut ready: F,
    ) -> Result<u32>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut child = process::spawn_detached(cmd, log)?;
        let pid = child.id();
        if let Some(pid_file) = pid_file {
            process::write_pid(pid_file, pid)?;
        }
        let mut ticker = self.out.ticker(Duration::from_secs(5));
        let failure = loop {
            if ready().await {
                self.reaper.adopt(child);
                return Ok(pid);
            }
            if let Ok(Some(status)) = child.try_wait() {
                break format!("{what} exited at start ({status})");
            }
            if ticker.elapsed() > timeout {
                process::terminate(pid, comm, libc::SIGTERM, Duration::from_secs(10)).await;
                break format!("{what} (pid {pid}) was not ready within {timeout:?} (stopped it)");
            }
            ticker.tick(|s| format!("waiting for {what} ({s} s): {}", process::tail(log, 1)));
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.reaper.adopt(child);
        if let Some(pid_file) = pid_file {
            process::remove_file(pid_file);
        }
        Err(CtlError::Failed(format!(
            "{failure}; its log ({}) ends with:\n{}",
            log.display(),
            process::tail(log, 20)
        )))
    }
}

/// `http://<addr>` from an address file a service wrote.
pub(crate) fn read_addr(path: &std::path::Path) -> Option<String> {
    let addr = std::fs::read_to_string(path).ok()?;
    let addr = addr.trim();
    (!addr.is_empty()).then(|| format!("http://{addr}"))
}

/// Whether `url` answers `GET /healthz` within a couple of seconds.
pub(crate) async fn healthz(url: &str) -> std::result::Result<(), String> {
    let client = HttpClient::new(url, RetryPolicy::none()).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(3), client.get_bytes("/healthz")).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{url} did not answer /healthz within 3 s")),
    }
}

/// The port of `http://host:port`.
pub(crate) fn url_port(url: &str) -> Option<u16> {
    url.trim_end_matches('/').rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_ports_are_parsed() {
        assert_eq!(url_port("http://127.0.0.1:8081"), Some(8081));
        assert_eq!(url_port("http://127.0.0.1:8081/"), Some(8081));
        assert_eq!(url_port("http://localhost"), None);
    }

    #[test]
    fn environment_urls_name_external_services() {
        let env = EnvUrls {
            page_server_url: Some("http://10.0.0.1:8081".into()),
            safekeeper_url: None,
        };
        assert_eq!(
            env.for_service(PAGESERVER),
            Some(("PAGE_SERVER_URL", "http://10.0.0.1:8081"))
        );
        assert_eq!(env.for_service(WALSYNC), None);
    }

    fn control(dir: &std::path::Path) -> Control {
        Control::new(
            Home::new(dir).unwrap(),
            Binaries::in_dir(dir),
            Reporter::Log,
            EnvUrls::default(),
        )
    }

    #[tokio::test]
    async fn projects_are_created_listed_and_deleted_durably() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = control(dir.path());
        let p = ctl
            .create_project(&CreateProject {
                id: "shop".into(),
                timeline: None,
            })
            .await
            .unwrap();
        assert_eq!(
            (p.id.as_str(), p.timeline.as_str(), p.initialized),
            ("shop", "shop", false)
        );
        let err = ctl
            .create_project(&CreateProject {
                id: "shop".into(),
                timeline: None,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CtlError::Conflict(_)), "{err}");
        let err = ctl
            .create_project(&CreateProject {
                id: "other".into(),
                timeline: Some("shop".into()),
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("belongs to project"), "{err}");
        let err = ctl
            .create_project(&CreateProject {
                id: "a/b".into(),
                timeline: None,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CtlError::BadRequest(_)), "{err}");
        // Another Control on the same home (a restarted control plane) sees it.
        let again = control(dir.path());
        assert_eq!(again.list_projects().unwrap(), vec![p]);
        again.delete_project("shop").await.unwrap();
        assert!(ctl.list_projects().unwrap().is_empty());
        assert!(matches!(
            ctl.delete_project("shop").await.unwrap_err(),
            CtlError::NotFound(_)
        ));
    }
}
