//! Bad input and unusable environments: each gets one clear line on stderr naming the problem
//! and what to do, exit code 2, and no panic.
mod common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use common::{Lines, leaktrace, wait_with_timeout};

fn run(cmd: &mut Command) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.wait_with_output().unwrap()
}

/// Exit 2, exactly one stderr line containing every needle, no panic.
fn assert_usage_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

#[test]
fn unparsable_duration() {
    let out = run(leaktrace().args(["trace", "--min-age", "5parsecs", "-p", "1"]));
    assert_usage_error(&out, &["--min-age", "5parsecs", "ms, s, m or h"]);
    let out = run(leaktrace().args(["trace", "--duration", "10", "-p", "1"]));
    assert_usage_error(&out, &["--duration", "add a unit"]);
    let out = run(leaktrace().args(["trace", "--interval", "0s", "-p", "1"]));
    assert_usage_error(&out, &["--interval", "more than zero"]);
}

#[test]
fn invalid_pid_and_nothing_to_trace() {
    let out = run(leaktrace().args(["trace", "-p", "abc"]));
    assert_usage_error(&out, &["invalid PID 'abc'"]);
    let out = run(leaktrace().args(["trace"]));
    assert_usage_error(&out, &["nothing to trace"]);
}

#[test]
fn not_root() {
    if unsafe { libc::geteuid() } != 0 {
        let out = run(leaktrace().args(["trace", "-p", "1"]));
        assert_usage_error(&out, &["must run as root"]);
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED not_root: setpriv (util-linux) is missing");
        return;
    }
    let out = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_leaktrace"))
        .args(["trace", "-p", "1"]));
    assert_usage_error(&out, &["must run as root", "sudo"]);
}

#[test]
fn kernel_without_btf_or_uprobes() {
    require_kernel!();
    let fake = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-sys");
    let _ = std::fs::remove_dir_all(&fake);
    std::fs::create_dir_all(&fake).unwrap();
    let out = run(leaktrace().env("LEAKTRACE_SYSFS", &fake).args(["trace", "-p", "1"]));
    assert_usage_error(&out, &["lacks BTF", "vmlinux"]);
    std::fs::create_dir_all(fake.join("kernel/btf")).unwrap();
    std::fs::write(fake.join("kernel/btf/vmlinux"), b"").unwrap();
    let out = run(leaktrace().env("LEAKTRACE_SYSFS", &fake).args(["trace", "-p", "1"]));
    assert_usage_error(&out, &["lacks uprobe support"]);
}

#[test]
fn missing_pid() {
    require_kernel!();
    let pid = (4_000_000..4_194_304)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let out = run(leaktrace().args(["trace", "-p", &pid.to_string()]));
    assert_usage_error(&out, &[&format!("process {pid} does not exist")]);
}

#[test]
fn kernel_thread() {
    require_kernel!();
    // PID 2 is kthreadd.
    let out = run(leaktrace().args(["trace", "-p", "2"]));
    assert_usage_error(&out, &["process 2", "kernel thread"]);
}

#[test]
fn own_pid() {
    require_kernel!();
    // `exec` keeps the shell's PID, so leaktrace is handed its own.
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "exec {} trace -p $$",
        env!("CARGO_BIN_EXE_leaktrace")
    )));
    assert_usage_error(&out, &["is leaktrace itself"]);
}

#[test]
fn zombie() {
    require_kernel!();
    // `true` exits at once; the shell execs into sleep, which never reaps it.
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg("true & echo $!; exec sleep 60")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(parent.stdout.take().unwrap());
    let zpid: u32 = lines.wait_for("").trim().parse().unwrap();
    let stat = format!("/proc/{zpid}/stat");
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while !std::fs::read_to_string(&stat).unwrap_or_default().contains(") Z ") {
        assert!(std::time::Instant::now() < deadline, "{zpid} never became a zombie");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = run(leaktrace().args(["trace", "-p", &zpid.to_string()]));
    parent.kill().unwrap();
    wait_with_timeout(&mut parent);
    assert_usage_error(&out, &[&format!("process {zpid}"), "zombie"]);
}

#[test]
fn process_without_allocator() {
    require_kernel!();
    let exe = common::fixture("nomalloc", &["-nostdlib", "-static"]);
    let mut fx = Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap();
    Lines::new(fx.stdout.take().unwrap()).wait_for("ready");
    let out = run(leaktrace().args(["trace", "-p", &fx.id().to_string()]));
    fx.kill().unwrap();
    wait_with_timeout(&mut fx);
    assert_usage_error(&out, &["no recognizable allocator"]);
}

#[test]
fn launch_of_missing_command() {
    require_kernel!();
    let out = run(leaktrace().args(["trace", "--", "/nonexistent/prog"]));
    assert_usage_error(&out, &["cannot start `/nonexistent/prog`"]);
}

#[test]
fn closed_stdout_exits_quietly() {
    require_kernel!();
    let leaky = common::fixture("leaky", &[]);
    let mut lt = leaktrace()
        .args(["trace", "--min-age", "0s", "--"])
        .arg(&leaky)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(lt.stdout.take()); // the reader is gone, as with `| head -0`
    let err = Lines::new(lt.stderr.take().unwrap());
    let st = wait_with_timeout(&mut lt);
    let rest = err.rest().join("\n");
    assert_eq!(st.code(), Some(0), "stderr: {rest}");
    assert!(!rest.contains("panicked") && !rest.contains("Broken pipe"), "{rest}");
}

#[test]
fn unwritable_output() {
    require_kernel!();
    let out = run(leaktrace().args(["trace", "-o", "/nonexistent-dir/report.json", "-p", "1"]));
    assert_usage_error(&out, &["cannot write /nonexistent-dir/report.json"]);
}
