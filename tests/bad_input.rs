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
    // `true` exits at once and stays a zombie until this test reaps it: a shell parent
    // (`true & exec sleep`) may reap it itself before the exec, which left nothing to find.
    let mut z = Command::new("true").spawn().unwrap();
    let zpid = z.id();
    let stat = format!("/proc/{zpid}/stat");
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while !std::fs::read_to_string(&stat).unwrap().contains(") Z ") {
        assert!(std::time::Instant::now() < deadline, "{zpid} never became a zombie");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = run(leaktrace().args(["trace", "-p", &zpid.to_string()]));
    z.wait().unwrap();
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

/// Bad command lines of every kind clap or the validators refuse: one stderr line naming the
/// option (or the word) at fault, exit 2. Nothing here gets past validation, so no probe is
/// ever attached (PID 1 is only a placeholder).
#[test]
fn every_bad_command_line_is_one_line_naming_the_option() {
    let table: &[(&[&str], &[&str])] = &[
        (&["trace", "--bogus", "-p", "1"], &["--bogus"]),
        (&["trace", "-p", "1", "--min-age"], &["--min-age", "value"]),
        (&["trace", "-p"], &["-p"]),
        (&["trace", "-p", "1", "--format", "xml"], &["--format", "xml", "json"]),
        (&["diff", "a.json", "b.json", "--format", "yaml"], &["--format", "yaml"]),
        (&["oom", "--dir", "/tmp/x", "--format", "csv"], &["--format", "csv"]),
        (&[], &["subcommand", "trace"]),
        (&["frobnicate"], &["frobnicate", "subcommand"]),
        (&["diff", "a.json", "b.json", "c.json"], &["c.json"]),
        (&["diff", "a.json"], &["<NEW>"]),
        (&["oom"], &["--dir"]),
        (&["trace", "-p", "1", "--format", "json", "--format", "text"], &["--format"]),
        (&["trace", "-p", "1", "--top", "-1"], &["--top", "-1"]),
        (&["trace", "-p", "1", "--top", "many"], &["--top", "many"]),
        (&["trace", "-p", "1", "--max-sampled", "-3"], &["--max-sampled"]),
        (&["trace", "-p", "1", "--group-by", "file"], &["--group-by", "file"]),
        (&["trace", "-p", "1", "--min-age", "-1s"], &["--min-age", "must not be negative"]),
        (&["trace", "-p", "1", "--min-age", "soon"], &["--min-age", "soon"]),
        (&["trace", "-p", "1", "--duration", "-5s"], &["--duration", "must not be negative"]),
        (&["trace", "-p", "1", "--duration", "junk"], &["--duration", "junk"]),
        (&["trace", "-p", "1", "--interval", "-1m"], &["--interval", "must not be negative"]),
        (&["trace", "-p", "1", "--interval", "1parsec"], &["--interval", "1parsec"]),
        (&["trace", "-p", "1", "--sample-rate", "-1"], &["--sample-rate", "must not be negative"]),
        (&["trace", "-p", "1", "--sample-rate", "lots"], &["--sample-rate", "lots"]),
        (&["trace", "-p", "1", "--sample-rate", "1TiB"], &["--sample-rate", "1GiB"]),
        (
            &["trace", "-p", "1", "--sample-rate", "18446744073709551615"],
            &["--sample-rate", "1GiB"],
        ),
        (&["trace", "-p", "1", "--ring-size", "-8MiB"], &["--ring-size", "must not be negative"]),
        (&["trace", "-p", "1", "--ring-size", "big"], &["--ring-size", "big"]),
        (&["trace", "-p", "1", "--ring-size", "3000"], &["--ring-size", "power of two"]),
        (&["trace", "-p", "1", "--ring-size", "3MiB"], &["--ring-size", "power of two"]),
        (&["trace", "-p", "-4"], &["-4", "PID"]),
        (
            &["trace", "-p", "1", "--min-age", "1h", "--duration", "1s"],
            &["--duration", "--min-age"],
        ),
        (&["audit", "--duration", "-1s"], &["--duration", "must not be negative"]),
        (&["audit", "--min-age", "-10s"], &["--min-age", "must not be negative"]),
        (&["audit", "--min-age", "old"], &["--min-age", "old"]),
        (&["audit", "--fail-above", "-1MiB/s"], &["--fail-above", "-1MiB/s"]),
        (&["audit", "--fail-above", "fast"], &["--fail-above", "fast"]),
        (&["audit", "--sample-rate", "-512KiB"], &["--sample-rate", "must not be negative"]),
        (&["audit", "--sample-rate", "2GiB"], &["--sample-rate", "1GiB"]),
        (&["audit", "--ring-size", "-1"], &["--ring-size", "must not be negative"]),
        (&["audit", "--ring-size", "4GiB"], &["--ring-size"]),
        (&["audit", "--max-input-size", "-1"], &["--max-input-size", "must not be negative"]),
        (&["audit", "--max-input-size", "huge"], &["--max-input-size", "huge"]),
        (&["diff", "--max-input-size", "-1", "a", "b"], &["--max-input-size", "must not be negative"]),
        (&["diff", "--max-input-size", "0", "a", "b"], &["--max-input-size", "more than zero"]),
        (&["oom", "--dir", "/tmp/x", "--snapshot-rss", "-1G"], &["--snapshot-rss", "must not be negative"]),
        (&["oom", "--dir", "/tmp/x", "--snapshot-rss", "big"], &["--snapshot-rss", "big"]),
        (&["oom", "--dir", "/tmp/x", "--snapshot-memcg", "-5"], &["--snapshot-memcg", "-5"]),
        (&["oom", "--dir", "/tmp/x", "--ring-size", "-1"], &["--ring-size", "must not be negative"]),
        (&["oom", "--dir", "/tmp/x", "--ring-size", "1000"], &["--ring-size", "power of two"]),
        (&["oom", "--dir", "/tmp/x", "--track-pid", "-2"], &["-2", "PID"]),
    ];
    let mut failures = Vec::new();
    for (args, needles) in table {
        let out = run(leaktrace().args(*args));
        let err = String::from_utf8_lossy(&out.stderr);
        let ok = out.status.code() == Some(2)
            && !err.contains("panicked")
            && err.lines().count() == 1
            && err.starts_with("leaktrace: ")
            && needles.iter().all(|n| err.contains(n));
        if !ok {
            failures.push(format!("{args:?} -> {:?}: {err:?}", out.status.code()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), table.len(), failures.join("\n"));
}

#[test]
fn help_and_version_still_print_on_stdout() {
    for args in [&["--help"][..], &["trace", "--help"], &["help", "audit"], &["--version"]] {
        let out = run(leaktrace().args(args));
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}
