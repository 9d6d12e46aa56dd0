//! The stack's storage services (pageserver-lite, walsync) and the control plane process, as
//! detached processes with pid and address files.

use std::process::Command;
use std::time::Duration;

use crate::binaries::IBDCTL;
use crate::control::{healthz, read_addr, url_port, Control};
use crate::error::{CtlError, Result};
use crate::model::{RunState, ServiceStatus};
use crate::ports;
use crate::process::{self, running};
use crate::store::{ServiceRecord, State};

/// How long a starting service may take to answer `/healthz`.
const SERVICE_START: Duration = Duration::from_secs(60);

impl Control {
    /// Makes sure service `name` answers and returns its URL: the one named in the environment
    /// (not ours to start), ours if it already runs, else ours started on `preferred` (or the
    /// next free port).
    pub(crate) async fn ensure_service(
        &self,
        state: &mut State,
        name: &str,
        preferred: u16,
        avoid: &[u16],
    ) -> Result<String> {
        if let Some((var, url)) = self.env.for_service(name) {
            healthz(url).await.map_err(|e| {
                CtlError::Failed(format!(
                    "{var}={url} does not answer ({e}): start {name} there, or unset {var} to let ibdctl run one"
                ))
            })?;
            self.out.say(format!("using {name} at {url} ({var})"));
            state.services.insert(
                name.into(),
                ServiceRecord {
                    url: url.into(),
                    managed: false,
                },
            );
            return Ok(url.into());
        }
        let pid_file = self.home.service_pid(name);
        if let Some(pid) = running(&pid_file, name) {
            let url = read_addr(&self.home.service_addr(name))
                .or_else(|| state.services.get(name).map(|r| r.url.clone()))
                .ok_or_else(|| {
                    CtlError::Failed(format!(
                        "{name} runs (pid {pid}) but its address is unknown: stop it (kill {pid}) and run up again"
                    ))
                })?;
            // It may be starting (a pageserver loads its index first): give it a moment.
            let mut ticker = self.out.ticker(Duration::from_secs(5));
            while let Err(e) = healthz(&url).await {
                if ticker.elapsed() > SERVICE_START || running(&pid_file, name).is_none() {
                    return Err(CtlError::Failed(format!(
                        "{name} runs (pid {pid}) but does not answer at {url} ({e}): see `ibdctl logs {name}`, or stop it (kill {pid}) and run up again"
                    )));
                }
                ticker.tick(|s| format!("waiting for {name} (pid {pid}) to answer ({s} s)"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.out.say(format!("{name} already runs (pid {pid}, {url})"));
            state.services.insert(
                name.into(),
                ServiceRecord {
                    url: url.clone(),
                    managed: true,
                },
            );
            return Ok(url);
        }
        if let Some(pid) = process::read_pid(&pid_file) {
            self.out.warn(format!(
                "{name} (pid {pid}) had stopped without `ibdctl down`: starting it again (its log: ibdctl logs {name})"
            ));
        }
        let (port, moved) = ports::pick(preferred, name, avoid)?;
        if let Some(moved) = moved {
            self.out.say(moved);
        }
        let data = self.home.service_data(name);
        let addr_file = self.home.service_addr(name);
        process::remove_file(&addr_file);
        std::fs::create_dir_all(&data).map_err(|e| CtlError::path("create", &data, e))?;
        self.out.say(format!("starting {name} on 127.0.0.1:{port}"));
        let mut cmd = Command::new(self.bins.path(name));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--addr-file")
            .arg(&addr_file);
        let url = format!("http://127.0.0.1:{port}");
        self.start_detached(
            name,
            name,
            &mut cmd,
            &self.home.service_log(name),
            Some(&pid_file),
            SERVICE_START,
            || async { healthz(&url).await.is_ok() },
        )
        .await?;
        state.services.insert(
            name.into(),
            ServiceRecord {
                url: url.clone(),
                managed: true,
            },
        );
        Ok(url)
    }

    /// Stops our service `name` if it runs (SIGTERM: it finishes in-flight requests).
    pub(crate) async fn stop_service(&self, name: &str) {
        let pid_file = self.home.service_pid(name);
        if let Some(pid) = running(&pid_file, name) {
            self.out.say(format!("stopping {name} (pid {pid})"));
            if process::terminate(pid, name, libc::SIGTERM, Duration::from_secs(30)).await {
                self.out
                    .warn(format!("{name} did not stop within 30 s: killed it"));
            }
        }
        process::remove_file(&pid_file);
        process::remove_file(&self.home.service_addr(name));
    }

    pub(crate) async fn service_status(&self, state: &State, name: &str) -> ServiceStatus {
        let record = state.services.get(name);
        if let Some(record) = record.filter(|r| !r.managed) {
            let state = match healthz(&record.url).await {
                Ok(()) => RunState::External,
                Err(_) => RunState::Unreachable,
            };
            return ServiceStatus {
                name: name.into(),
                state,
                pid: None,
                url: Some(record.url.clone()),
            };
        }
        let pid_file = self.home.service_pid(name);
        let pid = running(&pid_file, name);
        let state = match pid {
            Some(_) => RunState::Running,
            None if pid_file.exists() => RunState::Crashed,
            None => RunState::Stopped,
        };
        let url = read_addr(&self.home.service_addr(name)).or_else(|| record.map(|r| r.url.clone()));
        ServiceStatus {
            name: name.into(),
            state,
            pid,
            url,
        }
    }

    /// Restarts our service `name` if its process is gone while its pid file says it should run
    /// (the supervisor). Same port as before if it is still free.
    pub(crate) async fn restart_service_if_crashed(&self, state: &mut State, name: &str) -> Result<bool> {
        let Some(record) = state.services.get(name).filter(|r| r.managed).cloned() else {
            return Ok(false);
        };
        let pid_file = self.home.service_pid(name);
        let Some(pid) = process::read_pid(&pid_file) else {
            return Ok(false);
        };
        if running(&pid_file, name).is_some() {
            return Ok(false);
        }
        self.out
            .warn(format!("{name} (pid {pid}) is gone: restarting it"));
        let port = url_port(&record.url).unwrap_or(0);
        let avoid = state.compute_ports();
        self.ensure_service(state, name, port, &avoid).await?;
        Ok(true)
    }

    /// Starts `ibdctl serve` for this home, detached, unless it already runs; returns its URL.
    pub(crate) async fn ensure_control_plane(&self, preferred: u16, avoid: &[u16]) -> Result<String> {
        let pid_file = self.home.control_pid();
        let addr_file = self.home.control_addr();
        if let Some(pid) = running(&pid_file, IBDCTL) {
            if let Some(url) = read_addr(&addr_file) {
                if healthz(&url).await.is_ok() {
                    self.out
                        .say(format!("the control plane already runs (pid {pid}, {url})"));
                    return Ok(url);
                }
            }
            return Err(CtlError::Failed(format!(
                "the control plane runs (pid {pid}) but does not answer: see `ibdctl logs control-plane`, or stop it (kill {pid})"
            )));
        }
        let (port, moved) = ports::pick(preferred, "the control plane", avoid)?;
        if let Some(moved) = moved {
            self.out.say(moved);
        }
        process::remove_file(&addr_file);
        self.out.say(format!(
            "starting the control plane (ibdctl serve) on 127.0.0.1:{port}"
        ));
        let mut cmd = Command::new(self.bins.path(IBDCTL));
        cmd.arg("--home")
            .arg(self.home.root())
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        // It writes its own pid file (it may also be started by hand) and its address file.
        let addr_file = &addr_file;
        self.start_detached(
            "the control plane",
            IBDCTL,
            &mut cmd,
            &self.home.control_log(),
            None,
            SERVICE_START,
            move || async move {
                match read_addr(addr_file) {
                    Some(url) => healthz(&url).await.is_ok(),
                    None => false,
                }
            },
        )
        .await?;
        read_addr(addr_file)
            .ok_or_else(|| CtlError::Failed("the control plane's address file vanished".into()))
    }

    /// Stops this home's control plane if it runs.
    pub(crate) async fn stop_control_plane(&self) {
        let pid_file = self.home.control_pid();
        if let Some(pid) = running(&pid_file, IBDCTL) {
            if pid == std::process::id() {
                return;
            }
            self.out.say(format!("stopping the control plane (pid {pid})"));
            if process::terminate(pid, IBDCTL, libc::SIGTERM, Duration::from_secs(30)).await {
                self.out
                    .warn("the control plane did not stop within 30 s: killed it");
            }
        }
        process::remove_file(&pid_file);
        process::remove_file(&self.home.control_addr());
    }
}
