//! Checking what the user asked to trace before touching the kernel: that each PID is a live,
//! user-space process other than leaktrace (a thread id stands for its process), that the list
//! holds each process once and no more of them than `--max-targets`, and that this machine can
//! run the probes at all.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// PF_KTHREAD from include/linux/sched.h.
const PF_KTHREAD: u32 = 0x0020_0000;

/// Default of `--max-targets`: each target gets its own probes (about 20), attached and later
/// detached one by one, so a long list costs minutes and leaves breakpoints behind for as long.
pub const DEFAULT_MAX_TARGETS: usize = 256;

#[derive(Debug, Clone)]
pub struct Process {
    /// The process (thread-group) id.
    pub pid: u32,
    pub comm: String,
    /// The id that was given, when it named one of the process's threads rather than the process.
    pub thread: Option<u32>,
}

/// The parts of `/proc/PID/stat` used here, read as bytes: the name between the parentheses is
/// whatever the process set (it may hold `)`, newlines or invalid UTF-8).
struct Stat {
    comm: String,
    state: u8,
    flags: u32,
}

fn stat(pid: u32) -> Option<Stat> {
    // Read whole here and in `tgid`: the kernel bounds both files (a name of 15 bytes; status's
    // longest line, Groups, by NGROUPS_MAX), whatever the process does.
    let raw = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let open = raw.iter().position(|&b| b == b'(')?;
    let close = raw.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(raw.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(raw.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // state ppid pgrp session tty_nr tpgid flags
    let state = *fields.next()?.as_bytes().first()?;
    let flags = fields.nth(5)?.parse().ok()?;
    Some(Stat { comm, state, flags })
}

/// The thread-group id of `tid` from `/proc/TID/status` (a thread's /proc entry exists, unlisted).
pub(crate) fn tgid(tid: u32) -> Option<u32> {
    let raw = std::fs::read(format!("/proc/{tid}/status")).ok()?;
    raw.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Tgid:"))
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

/// Validates one PID given on the command line; a thread id is resolved to its process.
pub fn check_pid(pid: u32) -> Result<Process> {
    let given = pid;
    let pid = tgid(given).ok_or(Error::NoSuchProcess { pid: given })?;
    if pid == std::process::id() {
        return Err(Error::SelfTrace { pid });
    }
    let stat = stat(pid).ok_or(Error::NoSuchProcess { pid })?;
    let comm = stat.comm;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(Error::KernelThread { pid, comm });
    }
    if stat.state == b'Z' || stat.state == b'X' {
        return Err(Error::Zombie { pid, comm });
    }
    Ok(Process {
        pid,
        comm,
        thread: (given != pid).then_some(given),
    })
}

/// The line said on stderr when `option` (`-p`, `--track-pid`) named one of a process's threads:
/// that the process is `verb` ("tracing", "auditing") instead. None for a process named by its own PID.
pub fn thread_note(p: &Process, option: &str, verb: &str) -> Option<String> {
    let tid = p.thread?;
    Some(format!(
        "leaktrace: {option} {tid} is a thread of process {} ({}): {verb} process {}",
        p.pid,
        crate::escape::text(&p.comm),
        p.pid
    ))
}

/// Checks an explicit list of PIDs (`option`: trace's `-p`, oom's `--track-pid`, repeatable):
/// each process once, whether named by its PID, again, or by one of its threads (said on
/// stderr), and no more than `max` processes.
pub fn resolve_pids(pids: &[u32], max: usize, option: &str) -> Result<Vec<Process>> {
    let mut given = std::collections::HashSet::new();
    let mut out: Vec<Process> = Vec::new();
    // In the order given, each id looked at once (200 copies of one PID cost one look).
    for &pid in pids {
        if !given.insert(pid) {
            continue;
        }
        let p = check_pid(pid)?;
        if let Some(note) = thread_note(&p, option, "tracing") {
            eprintln!("{note}");
        }
        if !out.iter().any(|o| o.pid == p.pid) {
            out.push(p);
        }
    }
    if out.len() > max {
        return Err(Error::Usage(format!(
            "{option}: {} processes given, more than --max-targets {max}: give fewer, or raise --max-targets",
            out.len()
        )));
    }
    Ok(out)
}

/// Whether `pid` is gone or a zombie: what makes attaching to it fail.
pub fn has_exited(pid: u32) -> bool {
    stat(pid).is_none_or(|s| s.state == b'Z' || s.state == b'X')
}

/// The sysfs root, overridable (LEAKTRACE_SYSFS) so that tests can show what happens on a
/// kernel without BTF or uprobes.
fn sysfs() -> PathBuf {
    std::env::var_os("LEAKTRACE_SYSFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys"))
}

/// Root, BTF and the uprobe PMU; mounts tracefs when it is missing (tracepoints need it).
pub fn check_environment() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    let sys = sysfs();
    for (what, rel) in [
        ("BTF", "kernel/btf/vmlinux"),
        ("uprobe support", "bus/event_source/devices/uprobe"),
    ] {
        let path = sys.join(rel);
        if !path.exists() {
            return Err(Error::MissingKernelFeature { what, path });
        }
    }
    mount_if_missing(Path::new("/sys/kernel/tracing"), "tracefs")?;
    Ok(())
}

fn mount_if_missing(dir: &Path, fstype: &str) -> Result<()> {
    if dir.join("events").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", fstype, fstype])
        .arg(dir)
        .status()?;
    if !status.success() {
        return Err(Error::MissingKernelFeature {
            what: "tracefs",
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_note_only_for_a_thread_and_escapes_its_comm() {
        let mut p = Process { pid: 10, comm: "w\x1b[2J\nx".into(), thread: None };
        assert_eq!(thread_note(&p, "-p", "tracing"), None);
        p.thread = Some(12);
        assert_eq!(
            thread_note(&p, "-p", "auditing").unwrap(),
            "leaktrace: -p 12 is a thread of process 10 (w\\e[2J\\nx): auditing process 10"
        );
    }

    #[test]
    fn tgid_of_this_thread_is_this_process() {
        assert_eq!(tgid(std::process::id()), Some(std::process::id()));
    }
}
