//! What the core answers and takes: the status report of `ibdctl status --json` and
//! `GET /api/v1/status`, and the request bodies of the HTTP API.

use serde::{Deserialize, Serialize};

use crate::store::{ComputeConfig, Desired, Project};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
    /// Should run (or left a pid file behind) but its process is gone.
    Crashed,
    /// Not ours: named by `PAGE_SERVER_URL`/`SAFEKEEPER_URL`, and answering.
    External,
    /// Not ours and not answering.
    Unreachable,
}

impl RunState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Stopped => "stopped",
            RunState::Crashed => "crashed",
            RunState::External => "external",
            RunState::Unreachable => "unreachable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackStatus {
    pub home: String,
    pub control_plane: ServiceStatus,
    /// pageserver-lite and walsync.
    pub services: Vec<ServiceStatus>,
    pub projects: Vec<Project>,
    pub computes: Vec<ComputeStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: RunState,
    pub pid: Option<u32>,
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeStatus {
    pub name: String,
    pub project: String,
    pub timeline: String,
    pub desired: Desired,
    pub state: RunState,
    /// MariaDB answered `SELECT 1` just now.
    pub answering: bool,
    pub mariadbd_pid: Option<u32>,
    pub fuse_ibd_pid: Option<u32>,
    pub mounted: bool,
    pub port: u16,
    pub socket: String,
    /// The client command line for the socket, and one over TCP.
    pub connect: String,
    pub connect_tcp: String,
    pub datadir: String,
    pub metrics_url: String,
    /// The services this compute uses (its config, else the stack's).
    pub page_server_url: Option<String>,
    pub safekeeper_url: Option<String>,
    pub config: ComputeConfig,
    pub restarts: u32,
    pub last_crash: Option<String>,
    pub last_error: Option<String>,
    /// What is wrong right now, one line each.
    pub problems: Vec<String>,
}

/// `POST /api/v1/projects`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub id: String,
    /// Default: the project id.
    #[serde(default)]
    pub timeline: Option<String>,
}

/// `POST /api/v1/projects/<id>/compute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCompute {
    /// Default: the project id, or `<project>-<n>` if that is taken.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub config: ComputeConfig,
    /// Start it right away (default); the answer comes once MariaDB answers.
    #[serde(default = "yes")]
    pub start: bool,
}

impl Default for CreateCompute {
    fn default() -> Self {
        Self {
            name: None,
            config: ComputeConfig::default(),
            start: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// `POST .../compute/<name>/start`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartCompute {
    /// Delete the compute's whole local disk first: it comes back from the storage services.
    #[serde(default)]
    pub fresh: bool,
}

/// `POST .../compute/<name>/stop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopCompute {
    /// SIGKILL mariadbd and fuse-ibd (a crash) instead of a clean shutdown.
    #[serde(default)]
    pub kill: bool,
}
