//! What the OOM test files share: a v1 memory cgroup with a 64 MiB limit (a fixture run inside
//! it is OOM-killed once it leaks past the limit) and the watcher's start. Included with
//! `#[path]` by the OOM test files.
#![allow(dead_code)]
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::common::{Lines, leaktrace};

pub const LIMIT: u64 = 64 << 20;

/// Starts `leaktrace oom --dir DIR EXTRA...` and waits until it watches; (child, stdout, stderr).
pub fn start_watcher(dir: &Path, extra: &[&str]) -> (Child, Lines, Lines) {
    let mut lt = leaktrace()
        .args(["oom", "--dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::new(lt.stdout.take().unwrap());
    let err = Lines::new(lt.stderr.take().unwrap());
    err.wait_for("watching for OOM kills");
    (lt, out, err)
}

/// The cgroup, removed (its processes killed first) on drop.
pub struct Cgroup(PathBuf);

impl Cgroup {
    pub fn new(tag: &str) -> Result<Self, String> {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !root.join("memory.limit_in_bytes").exists() {
            return Err(
                "the cgroup v1 memory controller is not mounted at /sys/fs/cgroup/memory".into(),
            );
        }
        let dir = root.join(format!("leaktrace-test-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        std::fs::write(dir.join("memory.limit_in_bytes"), LIMIT.to_string())
            .map_err(|e| format!("cannot set the limit: {e}"))?;
        Ok(Cgroup(dir))
    }

    pub fn name(&self) -> String {
        format!("/{}", self.0.file_name().unwrap().to_string_lossy())
    }

    /// Runs `exe args` inside the cgroup (the shell joins it, then execs), stdin and stdout piped.
    pub fn spawn(&self, exe: &Path, args: &[&str]) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {} {}",
                self.0.display(),
                exe.display(),
                args.join(" ")
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for p in pids.lines().filter_map(|l| l.parse::<i32>().ok()) {
                // SAFETY: killing a test process we put there.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let deadline = std::time::Instant::now() + super::common::TIMEOUT;
        while std::fs::remove_dir(&self.0).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
