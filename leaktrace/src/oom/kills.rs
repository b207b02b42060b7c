//! Which memory cgroup an OOM kill was charged to, for a victim that exited before its
//! `/proc/PID/cgroup` could be read. Owns a record of every memory cgroup's `oom_kill` counter;
//! reading the victim's own files is `procinfo`'s.
//!
//! The kernel moves an exiting task to the root of every hierarchy (`/proc/PID/cgroup` of a
//! zombie says "/"), and a victim of a cgroup OOM is often gone within milliseconds of
//! `oom/mark_victim`. The `oom_kill` counter of its memory cgroup stays: the kernel adds one to
//! the victim's cgroup and every ancestor below the root (v1 `memory.oom_control`, v2
//! `memory.events`) at each kill. So the deepest cgroup whose counter rose since the previous
//! kill is the victim's. Counters are read once at start and again at each kill, never on a
//! timer: only kills change them.
use std::{collections::HashMap, path::PathBuf};

use crate::procinfo::{self, CgroupMount};

/// Cgroup directories visited at most per read: a machine with more is read partially, and
/// the report says so.
const MAX_CGROUPS: usize = 100_000;

/// The `oom_kill` counter of every memory cgroup, by its path in the hierarchy.
#[derive(Debug, Default)]
pub struct KillCounts {
    counts: HashMap<String, u64>,
    /// v1 when the memory controller is mounted as v1 (hybrid systems), else 2.
    version: u8,
}

impl KillCounts {
    /// Reads every memory cgroup's counter; an empty record where no hierarchy is found.
    pub fn read() -> KillCounts {
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return KillCounts::default();
        };
        let mounts = procinfo::parse_mountinfo(&text);
        let (mount, version, file) = match (mounts.memory_v1.first(), mounts.unified.first()) {
            (Some(m), _) => (m, 1, "memory.oom_control"),
            (None, Some(m)) => (m, 2, "memory.events"),
            (None, None) => return KillCounts::default(),
        };
        KillCounts {
            counts: walk(mount, file),
            version,
        }
    }

    /// The deepest cgroup whose counter rose since the last call (or since `read`), as
    /// `/proc/PID/cgroup` would have named it; the record is brought up to date either way.
    pub fn rose(&mut self) -> Option<procinfo::CgroupPaths> {
        let now = KillCounts::read();
        let rose = now
            .counts
            .iter()
            .filter(|&(path, &n)| path != "/" && n > self.counts.get(path).copied().unwrap_or(0))
            .map(|(path, _)| path.clone())
            .max_by_key(|p| (p.matches('/').count(), p.clone()));
        let version = now.version;
        *self = now;
        let path = rose?;
        Some(if version == 1 {
            procinfo::CgroupPaths {
                memory_v1: Some(path),
                unified: None,
            }
        } else {
            procinfo::CgroupPaths {
                memory_v1: None,
                unified: Some(path),
            }
        })
    }
}

/// Every cgroup directory below `mount` with its counter, breadth first, at most
/// `MAX_CGROUPS`; paths are the hierarchy's ("/a/b"), as /proc/PID/cgroup prints them.
fn walk(mount: &CgroupMount, file: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let mut queue: Vec<(PathBuf, String)> = vec![(mount.mount_point.clone(), mount.root.clone())];
    while let Some((dir, path)) = queue.pop() {
        if out.len() >= MAX_CGROUPS {
            break;
        }
        if let Some(n) = procinfo::keyed_file(&dir.join(file), "oom_kill") {
            out.insert(path.clone(), n);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = e.file_name().to_string_lossy().into_owned();
                queue.push((e.path(), join(&path, &name)));
            }
        }
    }
    out
}

fn join(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `/proc/PID/cgroup` of the victim named a memory cgroup at all: "/" (a task that
/// exited has been moved to the root) or nothing means it came too late.
pub fn is_known(c: Option<&procinfo::CgroupPaths>) -> bool {
    let named = |p: &Option<String>| p.as_deref().is_some_and(|p| p != "/");
    c.is_some_and(|c| named(&c.memory_v1) || named(&c.unified))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn paths_join_as_proc_prints_them() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }

    #[test]
    fn a_root_or_missing_path_is_not_known() {
        let c = |v1: Option<&str>, v2: Option<&str>| procinfo::CgroupPaths {
            memory_v1: v1.map(String::from),
            unified: v2.map(String::from),
        };
        assert!(!is_known(None));
        assert!(!is_known(Some(&c(Some("/"), Some("/")))));
        assert!(!is_known(Some(&c(None, None))));
        assert!(is_known(Some(&c(Some("/x"), None))));
        assert!(is_known(Some(&c(None, Some("/user.slice")))));
    }

    /// A real kill is the real-kernel tests' (tests/oom.rs); here: a fresh v1 cgroup appears
    /// in the record with its counter, and nothing rose between two reads without a kill.
    #[test]
    fn the_record_holds_real_cgroups_and_nothing_rises_without_a_kill() {
        if !Path::new("/sys/fs/cgroup/memory").is_dir() {
            return eprintln!("SKIPPED the_record_holds_real_cgroups: no v1 memory hierarchy");
        }
        let name = format!("leaktrace-kills-{}", std::process::id());
        let cg = Path::new("/sys/fs/cgroup/memory").join(&name);
        if std::fs::create_dir(&cg).is_err() {
            return eprintln!("SKIPPED the_record_holds_real_cgroups: cannot create a cgroup (not root?)");
        }
        let mut k = KillCounts::read();
        let seen = k.counts.get(&format!("/{name}")).copied();
        assert_eq!(k.rose(), None);
        let _ = std::fs::remove_dir(&cg);
        assert_eq!(seen, Some(0), "{:?}", k.counts.keys().take(5).collect::<Vec<_>>());
    }
}
