//! Where everything lives under the home directory (`ibdctl --home DIR`, default `./.ibd-local`).
//!
//! ```text
//! DIR/state.json                     projects, computes, services (crate::store)
//! DIR/ibdctl.lock                    held by the one ibdctl operation that changes things
//! DIR/control-plane.{pid,addr}       `ibdctl serve`
//! DIR/services/<name>/               data of pageserver-lite and walsync
//! DIR/services/<name>.{pid,addr}
//! DIR/logs/<name>.log                control plane and services
//! DIR/computes/<name>/datadir        the fuse-ibd mount: MariaDB's datadir
//! DIR/computes/<name>/cache          fuse-ibd's local cache
//! DIR/computes/<name>/tmp            mariadbd's tmpdir (outside the mount: mariadbd empties it)
//! DIR/computes/<name>/run/           my.cnf, mysqld.sock, mariadbd.pid, fuse-ibd.pid
//! DIR/computes/<name>/logs/          mariadbd.err, fuse-ibd.log, install.log
//! ```
//!
//! The service and compute paths are those `scripts/up.sh` used before ibdctl existed, so a home it
//! created is taken over with its processes still running.

use std::path::{Path, PathBuf};

use crate::error::{CtlError, Result};

/// The longest path a Unix socket may have (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `root` made absolute (it ends up in configs and command lines of detached processes).
    pub fn new(root: &Path) -> Result<Self> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| CtlError::io("cannot read the current directory", e))?
                .join(root)
        };
        // Normalize `.` and `..` without requiring the directory to exist yet.
        let mut clean = PathBuf::new();
        for part in root.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    clean.pop();
                }
                other => clean.push(other),
            }
        }
        Ok(Self { root: clean })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("ibdctl.lock")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn control_pid(&self) -> PathBuf {
        self.root.join("control-plane.pid")
    }

    pub fn control_addr(&self) -> PathBuf {
        self.root.join("control-plane.addr")
    }

    pub fn control_log(&self) -> PathBuf {
        self.logs_dir().join("control-plane.log")
    }

    pub fn service_data(&self, name: &str) -> PathBuf {
        self.root.join("services").join(name)
    }

    pub fn service_pid(&self, name: &str) -> PathBuf {
        self.root.join("services").join(format!("{name}.pid"))
    }

    pub fn service_addr(&self, name: &str) -> PathBuf {
        self.root.join("services").join(format!("{name}.addr"))
    }

    pub fn service_log(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }

    pub fn computes_dir(&self) -> PathBuf {
        self.root.join("computes")
    }

    pub fn compute(&self, name: &str) -> ComputePaths {
        ComputePaths::new(self.computes_dir().join(name))
    }
}

/// The files of one compute.
#[derive(Debug, Clone)]
pub struct ComputePaths {
    pub root: PathBuf,
    pub datadir: PathBuf,
    pub cache: PathBuf,
    pub tmp: PathBuf,
    pub run: PathBuf,
    pub logs: PathBuf,
    pub my_cnf: PathBuf,
    pub socket: PathBuf,
    pub mariadbd_pid: PathBuf,
    pub fuse_pid: PathBuf,
    pub mariadbd_log: PathBuf,
    pub fuse_log: PathBuf,
    pub install_log: PathBuf,
}

impl ComputePaths {
    fn new(root: PathBuf) -> Self {
        let run = root.join("run");
        let logs = root.join("logs");
        Self {
            datadir: root.join("datadir"),
            cache: root.join("cache"),
            tmp: root.join("tmp"),
            my_cnf: run.join("my.cnf"),
            socket: run.join("mysqld.sock"),
            mariadbd_pid: run.join("mariadbd.pid"),
            fuse_pid: run.join("fuse-ibd.pid"),
            mariadbd_log: logs.join("mariadbd.err"),
            fuse_log: logs.join("fuse-ibd.log"),
            install_log: logs.join("install.log"),
            run,
            logs,
            root,
        }
    }

    /// Refuses a home so deep that the server's socket path would not fit in `sun_path`.
    pub fn check_socket_path(&self) -> Result<()> {
        let len = self.socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(CtlError::BadRequest(format!(
                "the socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket allows: use a shorter --home",
                self.socket.display()
            )));
        }
        Ok(())
    }

    /// The directories of the compute's local disk that a fresh start deletes. The logs stay: they
    /// are the operator's record of what happened, not state of the node.
    pub fn local_disk(&self) -> [&Path; 4] {
        [&self.datadir, &self.cache, &self.tmp, &self.run]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_homes_become_absolute_and_clean() {
        let cwd = std::env::current_dir().unwrap();
        let home = Home::new(Path::new("./a/../.ibd-local")).unwrap();
        assert_eq!(home.root(), cwd.join(".ibd-local"));
        let home = Home::new(Path::new("/srv/x/./y/..")).unwrap();
        assert_eq!(home.root(), Path::new("/srv/x"));
    }

    #[test]
    fn compute_paths_keep_the_layout_of_scripts_up_sh() {
        let home = Home::new(Path::new("/h")).unwrap();
        let c = home.compute("main");
        assert_eq!(c.datadir, Path::new("/h/computes/main/datadir"));
        assert_eq!(c.cache, Path::new("/h/computes/main/cache"));
        assert_eq!(c.socket, Path::new("/h/computes/main/run/mysqld.sock"));
        assert_eq!(c.fuse_pid, Path::new("/h/computes/main/run/fuse-ibd.pid"));
        assert_eq!(home.service_pid("walsync"), Path::new("/h/services/walsync.pid"));
        assert!(!c.local_disk().contains(&c.logs.as_path()));
    }

    #[test]
    fn socket_paths_longer_than_sun_path_are_refused() {
        assert!(Home::new(Path::new("/h"))
            .unwrap()
            .compute("main")
            .check_socket_path()
            .is_ok());
        let deep = format!("/{}", "d".repeat(90));
        let err = Home::new(Path::new(&deep))
            .unwrap()
            .compute("main")
            .check_socket_path()
            .unwrap_err();
        assert!(err.to_string().contains("use a shorter --home"), "{err}");
    }
}
