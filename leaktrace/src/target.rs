//! Checking what the user asked to trace before touching the kernel: that each PID is a live,
//! user-space process other than leaktrace, and that this machine can run the probes at all.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// PF_KTHREAD from include/linux/sched.h.
const PF_KTHREAD: u32 = 0x0020_0000;

#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

/// Validates one PID given on the command line.
pub fn check_pid(pid: u32) -> Result<Process> {
    if pid == std::process::id() {
        return Err(Error::SelfTrace { pid });
    }
    let proc = procfs::process::Process::new(pid as i32).map_err(|_| Error::NoSuchProcess { pid })?;
    let stat = proc.stat().map_err(|_| Error::NoSuchProcess { pid })?;
    let comm = stat.comm.clone();
    if stat.flags & PF_KTHREAD != 0 {
        return Err(Error::KernelThread { pid, comm });
    }
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(Error::Zombie { pid, comm });
    }
    Ok(Process { pid, comm })
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
