//! What the stack needs from the machine, checked before anything starts; missing packages are
//! installed with apt-get when allowed (as `scripts/setup.sh` does), or named exactly.

use std::path::{Path, PathBuf};

use crate::error::{CtlError, Result};
use crate::progress::Reporter;

/// Tools a compute needs, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("mariadbd", "mariadb-server"),
    ("mariadb-install-db", "mariadb-server"),
    ("mariadb", "mariadb-client"),
    ("mariadb-admin", "mariadb-client"),
    ("fusermount3", "fuse3"),
];

/// `name` in `PATH` (and the sbin directories, which a non-root `PATH` often lacks).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// The path of tool `name`, or what to install to get it. Commands run by this path, so a tool
/// found in an sbin directory missing from `PATH` runs too.
pub fn tool(name: &str) -> Result<PathBuf> {
    find_tool(name).ok_or_else(|| {
        let package = TOOLS.iter().find(|(t, _)| *t == name).map_or(name, |(_, p)| *p);
        CtlError::Missing(format!("{name} not found: apt-get install {package}"))
    })
}

/// The missing tools as `(tool, package)`.
pub fn missing_tools() -> Vec<(&'static str, &'static str)> {
    TOOLS
        .iter()
        .copied()
        .filter(|(tool, _)| find_tool(tool).is_none())
        .collect()
}

fn packages<'a>(missing: &[(&str, &'a str)]) -> Vec<&'a str> {
    let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// "mariadbd, mariadb-install-db (mariadb-server), fusermount3 (fuse3)".
fn describe(missing: &[(&str, &str)]) -> String {
    packages(missing)
        .iter()
        .map(|pkg| {
            let tools: Vec<&str> = missing
                .iter()
                .filter(|(_, p)| p == pkg)
                .map(|(t, _)| *t)
                .collect();
            format!("{} ({pkg})", tools.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Mounting a FUSE datadir (with `allow_other`) and running `mariadbd` as its owner need root.
pub fn require_root(what: &str) -> Result<()> {
    if is_root() {
        Ok(())
    } else {
        Err(CtlError::Missing(format!(
            "{what} needs root: fuse-ibd mounts the datadir for mariadbd, which runs as root here; run it with sudo"
        )))
    }
}

/// Checks `/dev/fuse` and the tools; installs missing packages with apt-get if `install`.
pub async fn ensure(reporter: Reporter, install: bool) -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        return Err(CtlError::Missing(
            "/dev/fuse is missing: load the fuse module (modprobe fuse), or run where FUSE is available"
                .into(),
        ));
    }
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        packages(&missing).join(" ")
    );
    if !install {
        return Err(CtlError::Missing(format!(
            "missing: {}: install them with `{command}` (or scripts/setup.sh)",
            describe(&missing)
        )));
    }
    if !is_root() || find_tool("apt-get").is_none() {
        return Err(CtlError::Missing(format!(
            "missing: {}: install them as root with `{command}`",
            describe(&missing)
        )));
    }
    reporter.say(format!(
        "installing {} (apt-get; this takes a minute or two)",
        packages(&missing).join(" ")
    ));
    apt_get(&["update", "-qq"]).await?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages(&missing));
    apt_get(&args).await?;
    let still = missing_tools();
    if !still.is_empty() {
        return Err(CtlError::Missing(format!(
            "apt-get installed the packages but {} is still missing",
            describe(&still)
        )));
    }
    reporter.say("installed");
    Ok(())
}

async fn apt_get(args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| CtlError::io("cannot run apt-get", e))?;
    if !out.status.success() {
        return Err(CtlError::Failed(format!(
            "apt-get {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_named_with_their_package_once() {
        let missing = [
            ("mariadbd", "mariadb-server"),
            ("mariadb-install-db", "mariadb-server"),
            ("fusermount3", "fuse3"),
        ];
        assert_eq!(packages(&missing), ["fuse3", "mariadb-server"]);
        assert_eq!(
            describe(&missing),
            "fusermount3 (fuse3), mariadbd, mariadb-install-db (mariadb-server)"
        );
    }

    #[test]
    fn tools_are_found_in_sbin_too() {
        assert!(find_tool("sh").is_some());
        assert!(find_tool("no-such-tool-here").is_none());
        assert_eq!(tool("sh").unwrap(), find_tool("sh").unwrap());
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        // Every tool of the table maps to its package; an unknown one to itself.
        for (name, package) in TOOLS {
            if find_tool(name).is_none() {
                assert!(tool(name)
                    .unwrap_err()
                    .to_string()
                    .ends_with(&format!("apt-get install {package}")));
            }
        }
        let err = tool("no-such-tool-here").unwrap_err().to_string();
        assert_eq!(
            err,
            "no-such-tool-here not found: apt-get install no-such-tool-here"
        );
    }
}
