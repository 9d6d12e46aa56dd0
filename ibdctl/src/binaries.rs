//! The workspace binaries a stack runs (`pageserver-lite`, `walsync`, `fuse-ibd`, and `ibdctl`
//! itself for the control plane), found next to the running `ibdctl`. Only a missing one is
//! built, with cargo, when the source tree ibdctl was built from is still there.

use std::path::{Path, PathBuf};

use crate::error::{CtlError, Result};
use crate::prereq::find_tool;
use crate::progress::Reporter;

pub const PAGESERVER: &str = "pageserver-lite";
pub const WALSYNC: &str = "walsync";
pub const FUSE_IBD: &str = "fuse-ibd";
pub const IBDCTL: &str = "ibdctl";

#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The directory of the running executable (`target/release` after `cargo build --release`).
    pub fn next_to_current_exe() -> Result<Self> {
        let exe =
            std::env::current_exe().map_err(|e| CtlError::io("cannot find the ibdctl executable", e))?;
        let dir = exe
            .parent()
            .ok_or_else(|| CtlError::Failed(format!("{} has no directory", exe.display())))?;
        Ok(Self::in_dir(dir))
    }

    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Builds those of `names` that are missing (nothing if all are there).
    pub async fn ensure(&self, names: &[&str], reporter: Reporter) -> Result<()> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !self.path(n).is_file())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let packages: Vec<String> = missing.iter().map(|n| format!("-p {n}")).collect();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("/"));
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .or_else(|| find_tool("cargo"));
        let (Some(cargo), true) = (cargo, workspace.join("Cargo.toml").is_file()) else {
            return Err(CtlError::Missing(format!(
                "{} not found next to ibdctl in {}: build them (cargo build --release {}) or install them beside ibdctl",
                missing.join(", "),
                self.dir.display(),
                packages.join(" ")
            )));
        };
        let profile = match self.dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => "release".to_string(),
        };
        let target_dir = self.dir.parent().unwrap_or(&self.dir);
        reporter.say(format!(
            "building {} (cargo build --profile {profile} in {}; the first build takes a few minutes)",
            missing.join(", "),
            workspace.display()
        ));
        let status = tokio::process::Command::new(&cargo)
            .args(["build", "--locked", "--profile", &profile])
            .args(missing.iter().flat_map(|n| ["-p", n]))
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(workspace)
            .stdin(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| CtlError::io(format!("cannot run {}", cargo.display()), e))?;
        let still: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|n| !self.path(n).is_file())
            .collect();
        if !status.success() || !still.is_empty() {
            return Err(CtlError::Failed(format!(
                "cargo build of {} failed ({status}): see its output above",
                missing.join(", ")
            )));
        }
        Ok(())
    }
}
