//! Is the datadir a fuse-ibd mount, and what do the `innodb_page_server_*` variables say?

use std::path::{Path, PathBuf};

use crate::status::{host_port, Status};

/// fuse-ibd mounts with file system name `fuse-ibd:<cache-dir>` and subtype `fuse-ibd`; the
/// kernel shows the type as `fuse` (fusermount3 drops the subtype) or `fuse.fuse-ibd`.
fn is_fuse_ibd(m: &MountEntry) -> bool {
    m.fstype == "fuse.fuse-ibd" || (m.fstype.starts_with("fuse") && m.source.starts_with("fuse-ibd:"))
}

pub fn status_path(datadir: &Path) -> PathBuf {
    datadir.join(".fuse-ibd").join("status")
}

/// What the datadir is.
#[derive(Debug)]
pub enum Probe {
    /// A fuse-ibd mount on the datadir itself, with its status snapshot.
    FuseIbd(Status),
    /// Anything else, and why it does not count as a fuse-ibd mount.
    Other(String),
}

/// A line of `/proc/self/mountinfo`: mount point, file system type and source.
#[derive(Debug, PartialEq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Parses `/proc/<pid>/mountinfo` (proc(5)): field 5 is the mount point (octal escapes for
/// space, tab, newline and backslash); after ` - ` come the type and the source.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = unescape(before.split(' ').nth(4)?);
            let mut after = after.split(' ');
            let fstype = after.next()?.to_string();
            let source = unescape(after.next().unwrap_or(""));
            Some(MountEntry {
                mount_point: mount_point.into(),
                fstype,
                source,
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount `path` lives on: the longest mount point containing it; the later of equal ones
/// (a later mount on the same point hides the earlier).
pub fn containing_mount<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
}

/// Looks at the datadir: its mount (from `mountinfo`) and the mount's status file.
pub fn probe(datadir: &Path, mountinfo: &str) -> Probe {
    let mounts = parse_mountinfo(mountinfo);
    let Some(mount) = containing_mount(&mounts, datadir) else {
        return Probe::Other(format!(
            "no mount in /proc/self/mountinfo contains {}",
            datadir.display()
        ));
    };
    if !is_fuse_ibd(mount) {
        return Probe::Other(format!(
            "{} is on {} ({}), mounted at {}, not on a fuse-ibd mount",
            datadir.display(),
            mount.fstype,
            mount.source,
            mount.mount_point.display()
        ));
    }
    if mount.mount_point != datadir {
        return Probe::Other(format!(
            "{} is a directory inside the fuse-ibd mount {}; fuse-ibd must be mounted on the \
             datadir itself",
            datadir.display(),
            mount.mount_point.display()
        ));
    }
    let path = status_path(datadir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            return Probe::Other(format!(
                "{} is a fuse-ibd mount but {} cannot be read ({e}); is its daemon still running?",
                datadir.display(),
                path.display()
            ))
        }
    };
    let status = Status::parse(&text);
    match status.text("datadir") {
        Some(d) if Path::new(d) == datadir => Probe::FuseIbd(status),
        other => Probe::Other(format!(
            "{} names datadir {:?}, not {}",
            path.display(),
            other.unwrap_or(""),
            datadir.display()
        )),
    }
}

/// The variables as given at startup (command line or option file).
#[derive(Debug, Default, Clone)]
pub struct Requested {
    pub enabled: bool,
    pub address: Option<String>,
    pub port: i32,
}

/// The variables as the plugin shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub enabled: bool,
    pub address: String,
    pub port: i32,
    /// The datadir is a fuse-ibd mount (with or without a page server).
    pub mounted: bool,
    /// What to tell the operator in the error log when all is well.
    pub note: String,
}

/// Derives the variables from the mount, or says why the server must not run with them.
pub fn settle(requested: &Requested, probe: &Probe, datadir: &Path) -> Result<Settled, String> {
    let datadir = datadir.display();
    let status = match probe {
        Probe::FuseIbd(status) => status,
        Probe::Other(why) => {
            if requested.enabled {
                return Err(format!(
                    "innodb_page_server_enabled=ON, but the datadir is not a fuse-ibd mount: \
                     {why}. Mount it first (fuse-ibd mount --datadir {datadir} --cache-dir DIR \
                     --pageserver URL --walsync URL --timeline ID) or, to run on local disk, set \
                     innodb_page_server_enabled=OFF."
                ));
            }
            if let Some(expected) = expectation(requested) {
                return Err(format!(
                    "{expected} was set, but the datadir is not a fuse-ibd mount: {why}."
                ));
            }
            return Ok(Settled {
                enabled: false,
                address: String::new(),
                port: 0,
                mounted: false,
                note: format!(
                    "datadir {datadir} is not a fuse-ibd mount ({why}): pages stay on local \
                     disk, innodb_page_server_enabled=OFF and Page_server_* read 0"
                ),
            });
        }
    };
    let Some(url) = status.text("pageserver_url") else {
        if requested.enabled || expectation(requested).is_some() {
            return Err(format!(
                "the datadir {datadir} is a fuse-ibd mount that ships pages to no page server \
                 (it was mounted without --pageserver), but innodb_page_server_enabled=ON or an \
                 innodb_page_server address/port was set. Remount it with --pageserver URL."
            ));
        }
        return Ok(Settled {
            enabled: false,
            address: String::new(),
            port: 0,
            mounted: true,
            note: format!(
                "datadir {datadir} is a fuse-ibd mount without a page server (mounted without \
                 --pageserver): innodb_page_server_enabled=OFF"
            ),
        });
    };
    let (address, port) = host_port(url).map(|(h, p)| (h, i32::from(p))).ok_or_else(|| {
        format!("the fuse-ibd mount on {datadir} reports a page server URL {url:?} without a host")
    })?;
    if let Some(want) = requested.address.as_deref().filter(|a| !a.is_empty()) {
        if want != address {
            return Err(format!(
                "innodb_page_server_address={want}, but the fuse-ibd mount on {datadir} ships \
                 pages to {url}. The mount decides where pages go: remount with --pageserver \
                 pointing at {want}, or remove innodb_page_server_address from the configuration."
            ));
        }
    }
    if requested.port != 0 && requested.port != port {
        return Err(format!(
            "innodb_page_server_port={}, but the fuse-ibd mount on {datadir} ships pages to \
             {url}. The mount decides where pages go: remount with --pageserver on port {}, or \
             remove innodb_page_server_port from the configuration.",
            requested.port, requested.port
        ));
    }
    let wal = status.text("walsync_url").unwrap_or("none (redo stays local)");
    let timeline = status.text("timeline").unwrap_or("-");
    Ok(Settled {
        enabled: true,
        address,
        port,
        mounted: true,
        note: format!(
            "datadir {datadir} is a fuse-ibd mount: page server {url}, WAL service {wal}, \
             timeline {timeline}"
        ),
    })
}

fn expectation(requested: &Requested) -> Option<String> {
    match (
        requested.address.as_deref().filter(|a| !a.is_empty()),
        requested.port,
    ) {
        (Some(a), 0) => Some(format!("innodb_page_server_address={a}")),
        (Some(a), p) => Some(format!(
            "innodb_page_server_address={a} and innodb_page_server_port={p}"
        )),
        (None, 0) => None,
        (None, p) => Some(format!("innodb_page_server_port={p}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /tmp rw,nosuid shared:20 - tmpfs tmpfs rw
90 40 0:50 / /tmp/x/data\\040dir rw,noatime shared:60 - fuse.fuse-ibd fuse-ibd:/tmp/x rw,user_id=0
91 40 0:51 / /tmp/y rw shared:61 - fuse.bindfs bindfs rw
93 40 0:53 / /tmp/z rw,noatime shared:62 - fuse fuse-ibd:/tmp/z\\040cache rw,user_id=0
94 40 0:54 / /tmp/w rw shared:63 - fuse other:/x rw
";

    #[test]
    fn mountinfo_is_parsed_with_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 6);
        assert_eq!(m[2].mount_point, Path::new("/tmp/x/data dir"));
        assert_eq!(m[2].fstype, "fuse.fuse-ibd");
        assert_eq!(m[4].source, "fuse-ibd:/tmp/z cache");
        let fuse_ibd: Vec<bool> = m.iter().map(is_fuse_ibd).collect();
        assert_eq!(fuse_ibd, [false, false, true, false, true, false]);
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn the_longest_and_latest_mount_point_wins() {
        let m = parse_mountinfo(MOUNTINFO);
        let on = |p: &str| containing_mount(&m, Path::new(p)).unwrap().fstype.clone();
        assert_eq!(on("/var/lib/mysql"), "ext4");
        assert_eq!(on("/tmp/x"), "tmpfs");
        assert_eq!(on("/tmp/x/data dir"), "fuse.fuse-ibd");
        assert_eq!(on("/tmp/yy"), "tmpfs", "components, not string prefixes");
        let shadowed = format!("{MOUNTINFO}92 40 0:52 / /tmp/y rw - ext4 /dev/sdb rw\n");
        let m = parse_mountinfo(&shadowed);
        assert_eq!(
            containing_mount(&m, Path::new("/tmp/y/d")).unwrap().fstype,
            "ext4"
        );
    }

    #[test]
    fn a_plain_disk_is_not_a_mount_and_says_which_file_system_it_is() {
        let Probe::Other(why) = probe(Path::new("/var/lib/mysql"), MOUNTINFO) else {
            panic!("not a mount")
        };
        assert!(
            why.contains("ext4") && why.contains("not on a fuse-ibd mount"),
            "{why}"
        );
        let Probe::Other(why) = probe(Path::new("/tmp/y"), MOUNTINFO) else {
            panic!("bindfs is not fuse-ibd")
        };
        assert!(why.contains("fuse.bindfs"), "{why}");
        let Probe::Other(why) = probe(Path::new("/tmp/w"), MOUNTINFO) else {
            panic!("another FUSE file system is not fuse-ibd")
        };
        assert!(why.contains("is on fuse (other:/x), mounted at /tmp/w"), "{why}");
        let Probe::Other(why) = probe(Path::new("/tmp/x/data dir/sub"), MOUNTINFO) else {
            panic!("a subdirectory is not the datadir")
        };
        assert!(why.contains("inside the fuse-ibd mount"), "{why}");
    }

    #[test]
    fn a_real_local_directory_probes_as_other() {
        let dir = tempfile::tempdir().unwrap();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let datadir = dir.path().canonicalize().unwrap();
        assert!(matches!(probe(&datadir, &mountinfo), Probe::Other(_)));
    }

    fn mount(status: &str) -> Probe {
        Probe::FuseIbd(Status::parse(status))
    }

    const SHIPPING: &str = "datadir=/d\npageserver_url=http://127.0.0.1:8081\n\
        walsync_url=http://127.0.0.1:8082\ntimeline=main\n";

    #[test]
    fn the_variables_reflect_the_mount() {
        let d = Path::new("/d");
        let s = settle(&Requested::default(), &mount(SHIPPING), d).unwrap();
        assert_eq!(
            (s.enabled, s.address.as_str(), s.port, s.mounted),
            (true, "127.0.0.1", 8081, true)
        );
        assert!(s.note.contains("timeline main"), "{}", s.note);
        let on = Requested {
            enabled: true,
            address: Some("127.0.0.1".into()),
            port: 8081,
        };
        assert_eq!(settle(&on, &mount(SHIPPING), d).unwrap(), s);

        let local = settle(&Requested::default(), &mount("datadir=/d\n"), d).unwrap();
        assert_eq!((local.enabled, local.port, local.mounted), (false, 0, true));
        let plain = settle(&Requested::default(), &Probe::Other("ext4".into()), d).unwrap();
        assert_eq!(
            (plain.enabled, plain.address.as_str(), plain.mounted),
            (false, "", false)
        );
    }

    #[test]
    fn enabled_on_anything_but_a_shipping_mount_is_refused_with_the_reason() {
        let d = Path::new("/var/lib/mysql");
        let on = Requested {
            enabled: true,
            ..Requested::default()
        };
        let why = "/var/lib/mysql is on ext4 (/dev/sda1), mounted at /, not on a fuse-ibd mount";
        let err = settle(&on, &Probe::Other(why.into()), d).unwrap_err();
        assert!(
            err.contains("innodb_page_server_enabled=ON") && err.contains(why),
            "{err}"
        );
        assert!(err.contains("fuse-ibd mount --datadir /var/lib/mysql"), "{err}");
        let err = settle(&on, &mount("datadir=/var/lib/mysql\n"), d).unwrap_err();
        assert!(err.contains("without --pageserver"), "{err}");
    }

    #[test]
    fn an_address_or_port_other_than_the_mounts_is_refused() {
        let d = Path::new("/d");
        let addr = Requested {
            address: Some("10.0.0.9".into()),
            ..Requested::default()
        };
        let err = settle(&addr, &mount(SHIPPING), d).unwrap_err();
        assert!(
            err.contains("innodb_page_server_address=10.0.0.9") && err.contains("http://127.0.0.1:8081"),
            "{err}"
        );
        let port = Requested {
            port: 9999,
            ..Requested::default()
        };
        assert!(settle(&port, &mount(SHIPPING), d)
            .unwrap_err()
            .contains("innodb_page_server_port=9999"));
        let err = settle(&port, &Probe::Other("ext4".into()), d).unwrap_err();
        assert!(err.contains("not a fuse-ibd mount"), "{err}");
    }
}
