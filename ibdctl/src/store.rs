//! The durable state of the control plane: one JSON file, replaced atomically (write a temporary
//! file, fsync it, rename it over the old one, fsync the directory), so a crash leaves either the
//! old or the new state, never a torn one. Reads need no lock; every change happens under the
//! [`OpLock`], which also serializes the CLI and a running `ibdctl serve`.
//!
//! A JSON file is enough here: the state is a few projects and computes, changed by hand or by an
//! API call, never in a hot path, and an operator can read it.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{CtlError, Result};

const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub projects: BTreeMap<String, Project>,
    #[serde(default)]
    pub computes: BTreeMap<String, Compute>,
    /// The stack's pageserver and walsync, by name (`pageserver-lite`, `walsync`).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    /// The timeline on pageserver-lite and walsync that holds the project's database.
    pub timeline: String,
    pub created_at: u64,
    /// `mariadb-install-db` has created the database on the timeline: never run it again.
    #[serde(default)]
    pub initialized: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compute {
    pub name: String,
    pub project: String,
    pub config: ComputeConfig,
    /// What the operator asked for last; a supervisor restarts a `running` compute that crashed.
    pub desired: Desired,
    /// MariaDB's TCP port (127.0.0.1), kept across restarts so the connection line stays valid.
    pub port: u16,
    /// fuse-ibd's Prometheus `/metrics` port.
    pub metrics_port: u16,
    pub created_at: u64,
    /// Crashes the supervisor found (and restarted), with the last one described.
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub last_crash: Option<String>,
    /// The last failed (re)start by the supervisor, cleared by a successful start.
    #[serde(default)]
    pub last_error: Option<String>,
    /// It ran when `ibdctl down` stopped the stack: the next `ibdctl up` starts it again.
    #[serde(default)]
    pub resume_on_up: bool,
}

/// A compute's configuration as the API takes it: `{"config": {...}}` of
/// `POST /api/v1/projects/<id>/compute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeConfig {
    /// The MariaDB server binary (no containers run here: a compute is a stock `mariadbd` on a
    /// fuse-ibd mount); default `mariadbd` from `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Default: the stack's pageserver-lite (or `PAGE_SERVER_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_server_url: Option<String>,
    /// Default: the stack's walsync (or `SAFEKEEPER_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safekeeper_url: Option<String>,
    /// MariaDB's TCP port; default the first free one from 3307.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Extra lines for the `[mariadbd]` section of the generated my.cnf (plugins, buffer sizes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_config: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub url: String,
    /// Started and supervised by ibdctl (false: `PAGE_SERVER_URL`/`SAFEKEEPER_URL` named one
    /// that runs elsewhere).
    pub managed: bool,
}

impl State {
    /// The state in `path`, or an empty one if there is none yet.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    version: STATE_VERSION,
                    ..Self::default()
                })
            }
            Err(e) => return Err(CtlError::path("read", path, e)),
        };
        let state: State = serde_json::from_slice(&text).map_err(|e| {
            CtlError::Failed(format!(
                "{} is not a valid ibdctl state file ({e}): fix it or move it away",
                path.display()
            ))
        })?;
        if state.version > STATE_VERSION {
            return Err(CtlError::Failed(format!(
                "{} was written by a newer ibdctl (state version {}, this one knows {STATE_VERSION})",
                path.display(),
                state.version
            )));
        }
        Ok(state)
    }

    /// Replaces the state in `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut copy = self.clone();
        copy.version = STATE_VERSION;
        let mut text = serde_json::to_vec_pretty(&copy).expect("the state always serializes");
        text.push(b'\n');
        write_atomically(path, &text)
    }

    pub fn project(&self, id: &str) -> Result<&Project> {
        self.projects
            .get(id)
            .ok_or_else(|| CtlError::NotFound(format!("no project {id:?} (ibdctl project list)")))
    }

    pub fn compute(&self, name: &str) -> Result<&Compute> {
        self.computes
            .get(name)
            .ok_or_else(|| CtlError::NotFound(format!("no compute {name:?} (ibdctl compute list)")))
    }

    pub fn compute_mut(&mut self, name: &str) -> Result<&mut Compute> {
        self.computes
            .get_mut(name)
            .ok_or_else(|| CtlError::NotFound(format!("no compute {name:?} (ibdctl compute list)")))
    }

    /// Ports given to computes (TCP and metrics), so a new compute does not take one of them.
    pub fn compute_ports(&self) -> Vec<u16> {
        self.computes
            .values()
            .flat_map(|c| [c.port, c.metrics_port])
            .collect()
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| CtlError::path("create", dir, e))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CtlError::path("write", path, e)
    })
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Project ids, timeline ids and compute names: they become directory names and timeline ids
/// (walsync takes `[A-Za-z0-9_-]{1,64}`); 32 characters keep socket paths short.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(CtlError::BadRequest(format!(
            "invalid {what} {id:?}: use 1 to 32 letters, digits, '_' or '-' (not starting with '-')"
        )))
    }
}

/// The exclusive lock of one changing operation on a home (an flock on `ibdctl.lock`, released
/// when dropped or when the process dies). The holder's pid is written into the file so a waiter
/// can say whom it waits for.
pub struct OpLock {
    _file: std::fs::File,
}

impl OpLock {
    /// Waits for the lock, saying once (through `waiting`) who holds it if that takes a moment.
    pub async fn acquire(path: &Path, waiting: impl Fn(String)) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CtlError::path("create", dir, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| CtlError::path("open", path, e))?;
        let started = std::time::Instant::now();
        let mut told = false;
        loop {
            // SAFETY: flock on a file descriptor we own; LOCK_NB never blocks.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(CtlError::path("lock", path, err));
            }
            if !told && started.elapsed() > Duration::from_secs(1) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let _ = file.rewind();
                waiting(format!(
                    "waiting for another ibdctl operation on this home to finish (pid {})",
                    holder.trim()
                ));
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = file.set_len(0);
        let _ = file.write_all(std::process::id().to_string().as_bytes());
        let _ = file.rewind();
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let mut state = State {
            version: STATE_VERSION,
            ..State::default()
        };
        state.projects.insert(
            "main".into(),
            Project {
                id: "main".into(),
                timeline: "main".into(),
                created_at: 1,
                initialized: true,
            },
        );
        state.computes.insert(
            "main".into(),
            Compute {
                name: "main".into(),
                project: "main".into(),
                config: ComputeConfig {
                    extra_config: vec!["plugin_load_add=x".into()],
                    ..ComputeConfig::default()
                },
                desired: Desired::Running,
                port: 3307,
                metrics_port: 9091,
                created_at: 2,
                restarts: 0,
                last_crash: None,
                last_error: None,
                resume_on_up: false,
            },
        );
        state
    }

    #[test]
    fn a_missing_file_is_an_empty_state_and_a_saved_one_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert_eq!(State::load(&path).unwrap().projects.len(), 0);
        let state = sample();
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_damaged_or_newer_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{\"version\": 1, \"projects\": ").unwrap();
        let err = State::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid ibdctl state file"), "{err}");
        std::fs::write(&path, b"{\"version\": 99}").unwrap();
        let err = State::load(&path).unwrap_err().to_string();
        assert!(err.contains("newer ibdctl"), "{err}");
    }

    #[test]
    fn unknown_config_fields_are_refused() {
        let err = serde_json::from_str::<ComputeConfig>(r#"{"page_server_ur": "http://x:1"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let config: ComputeConfig = serde_json::from_str(
            r#"{"image": "mariadbd", "page_server_url": "http://127.0.0.1:8081", "safekeeper_url": "http://127.0.0.1:8082"}"#,
        )
        .unwrap();
        assert_eq!(config.page_server_url.as_deref(), Some("http://127.0.0.1:8081"));
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["main", "p-1", "a_b", "X9"] {
            validate_id("project id", ok).unwrap();
        }
        for bad in ["", "-x", "a/b", "a.b", "a b", &"x".repeat(33)] {
            assert!(validate_id("project id", bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ibdctl.lock");
        let first = OpLock::acquire(&path, |_| {}).await.unwrap();
        let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let second = {
            let (path, told) = (path.clone(), told.clone());
            tokio::spawn(async move {
                OpLock::acquire(&path, move |m| told.lock().unwrap().push(m))
                    .await
                    .unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(
            !second.is_finished(),
            "the second holder got the lock while the first held it"
        );
        let message = told.lock().unwrap().join("");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("lock released on drop")
            .unwrap();
    }
}
