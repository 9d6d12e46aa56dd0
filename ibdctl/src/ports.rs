//! Port selection: every component has a default port; a port that is taken moves to the next
//! free one, with a message naming who holds it.

use std::net::{Ipv4Addr, TcpListener};

use crate::error::{CtlError, Result};

/// How far past the preferred port to look for a free one.
const SEARCH: u16 = 100;

/// Whether nothing listens on `127.0.0.1:port` (a listener on the wildcard address counts).
pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A port for `what`: `preferred` if free, else the first free one after it that is not in
/// `avoid` (ports promised to components not started yet). The message says why it moved.
pub fn pick(preferred: u16, what: &str, avoid: &[u16]) -> Result<(u16, Option<String>)> {
    pick_with(preferred, what, avoid, is_free)
}

fn pick_with(
    preferred: u16,
    what: &str,
    avoid: &[u16],
    free: impl Fn(u16) -> bool,
) -> Result<(u16, Option<String>)> {
    let usable = |p: u16| !avoid.contains(&p) && free(p);
    if usable(preferred) {
        return Ok((preferred, None));
    }
    let why = if avoid.contains(&preferred) {
        "is given to another component of this stack".to_string()
    } else {
        match holder(preferred) {
            Some(who) => format!("is taken by {who}"),
            None => "is taken by another process".to_string(),
        }
    };
    let moved = (1..=SEARCH)
        .filter_map(|d| preferred.checked_add(d))
        .find(|&p| usable(p))
        .ok_or_else(|| {
            CtlError::Failed(format!(
                "port {preferred} for {what} {why}, and so are the {SEARCH} after it: free one or pick another port"
            ))
        })?;
    Ok((
        moved,
        Some(format!("port {preferred} {why}: {what} uses {moved} instead")),
    ))
}

/// The process listening on TCP `port`, as "pid N (name)", found through `/proc/net/tcp*` and
/// the processes' socket descriptors (only visible for processes we may inspect).
pub fn holder(port: u16) -> Option<String> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let target = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()));
        if holds {
            let comm = std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid} ({})", comm.trim()));
        }
    }
    None
}

/// The inode of the socket listening on `port` in a `/proc/net/tcp` table.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    const LISTEN: &str = "0A";
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        (local_port == port && fields.get(3) == Some(&LISTEN)).then(|| fields.get(9)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_preferred_port_is_kept() {
        let (port, moved) = pick_with(8081, "walsync", &[], |_| true).unwrap();
        assert_eq!((port, moved), (8081, None));
    }

    #[test]
    fn a_taken_port_moves_to_the_next_free_one_with_a_message() {
        let (port, moved) = pick_with(8081, "pageserver-lite", &[8083], |p| p > 8082).unwrap();
        assert_eq!(
            port, 8084,
            "8081 and 8082 taken, 8083 promised to another component"
        );
        let moved = moved.unwrap();
        assert!(moved.starts_with("port 8081 is taken"), "{moved}");
        assert!(moved.ends_with("pageserver-lite uses 8084 instead"), "{moved}");
        let err = pick_with(8081, "walsync", &[], |_| false).unwrap_err();
        assert!(err.to_string().contains("free one or pick another port"), "{err}");
    }

    #[test]
    fn a_real_listener_is_seen_and_named() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!is_free(port));
        let who = holder(port).expect("our own listening socket is found");
        assert!(who.starts_with(&format!("pid {} (", std::process::id())), "{who}");
        let (moved, message) = pick(port, "the control plane", &[]).unwrap();
        assert_ne!(moved, port);
        assert!(message.unwrap().contains(&who));
        drop(listener);
        assert!(is_free(port));
    }

    #[test]
    fn the_listening_inode_is_read_from_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n   1: 0100007F:1F92 0100007F:9999 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inode(table, 8081), Some(4242));
        assert_eq!(listening_inode(table, 8082), None, "established, not listening");
    }
}
