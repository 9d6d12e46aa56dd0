//! Inode numbers for the names under the mount. An inode records its parent and name, so the
//! rename of a directory is one update, and a path is rebuilt by walking up to the root.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

pub const ROOT_INO: u64 = 1;
/// `.fuse-ibd/` and `.fuse-ibd/status`: virtual, answered by the daemon itself.
pub const CONTROL_DIR_INO: u64 = 2;
pub const STATUS_FILE_INO: u64 = 3;
const FIRST_DYNAMIC_INO: u64 = 16;

#[derive(Debug)]
struct Node {
    parent: u64,
    name: OsString,
}

#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, OsString), u64>,
    next: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self {
            nodes: HashMap::new(),
            by_name: HashMap::new(),
            next: FIRST_DYNAMIC_INO,
        }
    }
}

impl InodeTable {
    /// The inode of `parent/name`, assigning a new number on first sight.
    pub fn get_or_insert(&mut self, parent: u64, name: &OsStr) -> u64 {
        if let Some(&ino) = self.by_name.get(&(parent, name.to_os_string())) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_os_string(),
            },
        );
        self.by_name.insert((parent, name.to_os_string()), ino);
        ino
    }

    /// Path of `ino` relative to the root, or `None` for an unknown (or unlinked) inode.
    pub fn relative_path(&self, ino: u64) -> Option<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let node = self.nodes.get(&cur)?;
            parts.push(node.name.as_os_str());
            cur = node.parent;
        }
        Some(parts.iter().rev().collect())
    }

    pub fn name(&self, ino: u64) -> Option<&OsStr> {
        self.nodes.get(&ino).map(|n| n.name.as_os_str())
    }

    /// Forgets `parent/name` (after unlink or rmdir). Open handles keep working on their fd.
    pub fn remove(&mut self, parent: u64, name: &OsStr) {
        if let Some(ino) = self.by_name.remove(&(parent, name.to_os_string())) {
            self.nodes.remove(&ino);
        }
    }

    /// Moves `parent/name` to `new_parent/new_name`, replacing whatever was there.
    pub fn rename(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        self.remove(new_parent, new_name);
        if let Some(ino) = self.by_name.remove(&(parent, name.to_os_string())) {
            self.nodes.insert(
                ino,
                Node {
                    parent: new_parent,
                    name: new_name.to_os_string(),
                },
            );
            self.by_name.insert((new_parent, new_name.to_os_string()), ino);
        }
    }

    /// Swaps two names (`RENAME_EXCHANGE`).
    pub fn exchange(&mut self, a: (u64, &OsStr), b: (u64, &OsStr)) {
        let ia = self.by_name.remove(&(a.0, a.1.to_os_string()));
        let ib = self.by_name.remove(&(b.0, b.1.to_os_string()));
        for (ino, (parent, name)) in [(ia, b), (ib, a)] {
            if let Some(ino) = ino {
                self.nodes.insert(
                    ino,
                    Node {
                        parent,
                        name: name.to_os_string(),
                    },
                );
                self.by_name.insert((parent, name.to_os_string()), ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_of_parents() {
        let mut t = InodeTable::default();
        let d = t.get_or_insert(ROOT_INO, OsStr::new("db"));
        let f = t.get_or_insert(d, OsStr::new("t.ibd"));
        assert_eq!(t.relative_path(f).unwrap(), PathBuf::from("db/t.ibd"));
        assert_eq!(t.get_or_insert(d, OsStr::new("t.ibd")), f);
        t.rename(ROOT_INO, OsStr::new("db"), ROOT_INO, OsStr::new("db2"));
        assert_eq!(t.relative_path(f).unwrap(), PathBuf::from("db2/t.ibd"));
        t.remove(d, OsStr::new("t.ibd"));
        assert_eq!(t.relative_path(f), None);
        assert_eq!(t.relative_path(ROOT_INO).unwrap(), PathBuf::new());
    }

    #[test]
    fn exchange_swaps_names() {
        let mut t = InodeTable::default();
        let a = t.get_or_insert(ROOT_INO, OsStr::new("a"));
        let b = t.get_or_insert(ROOT_INO, OsStr::new("b"));
        t.exchange((ROOT_INO, OsStr::new("a")), (ROOT_INO, OsStr::new("b")));
        assert_eq!(t.name(a), Some(OsStr::new("b")));
        assert_eq!(t.name(b), Some(OsStr::new("a")));
    }
}
