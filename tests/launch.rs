//! Launch mode (`leaktrace trace -- CMD`) as the command sees it: its signal state, its
//! arguments byte for byte, a shebang script traced through the interpreter that really runs,
//! and its end when leaktrace is killed.
mod common;

use std::{
    os::unix::{ffi::OsStrExt, fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Lines, TIMEOUT, last_report, leaktrace, wait_with_timeout};

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// `leaktrace trace -o OUT -- ARGS...`, reports to a file so that stdout is the command's.
fn traced(out: &str, args: &[&std::ffi::OsStr]) -> Command {
    let mut c = leaktrace();
    c.args(["trace", "--min-age", "0s", "--format", "json", "-o"])
        .arg(tmp(out))
        .arg("--")
        .args(args);
    c
}

/// Bit of `sig` in a /proc/PID/status signal set.
fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

fn status_set(stdout: &str, field: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} line in {stdout:?}"));
    u64::from_str_radix(line[field.len()..].trim(), 16).expect("hex signal set")
}

/// The command starts with default dispositions and an empty mask, whatever leaktrace's runtime
/// did to its own (Rust ignores SIGPIPE), and whatever mask leaktrace was started with; a signal
/// ignored by whoever started leaktrace (nohup's SIGHUP) stays ignored, as it would for the
/// command run directly.
#[test]
fn the_command_gets_default_signals_and_an_empty_mask() {
    require_kernel!();
    let fx = common::fixture("launchee", &[]);
    let mut c = traced("signals.json", &[fx.as_os_str(), "signals".as_ref()]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = c.stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "leaktrace exited with {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        status_set(&stdout, "SigBlk:"),
        0,
        "blocked signals in the command: {stdout}"
    );
    // What leaktrace inherits: this test's own ignores (whatever its environment left ignored;
    // SIGPIPE is Rust's own doing, as in leaktrace) and the SIGHUP set above.
    let ours = status_set(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        "SigIgn:",
    );
    let inherited = (ours & !bit(libc::SIGPIPE)) | bit(libc::SIGHUP);
    assert_eq!(
        status_set(&stdout, "SigIgn:"),
        inherited,
        "ignored signals in the command (only the inherited ones may be): {stdout}"
    );
}

/// `yes | head -1` ends quietly: `yes` dies of SIGPIPE instead of complaining of a broken pipe.
#[test]
fn a_pipeline_in_the_command_ends_by_sigpipe() {
    require_kernel!();
    let out = traced(
        "pipe.json",
        &["sh".as_ref(), "-c".as_ref(), "yes | head -1".as_ref()],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "leaktrace exited with {}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "y\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

/// Arguments reach the command byte for byte, invalid UTF-8 and all.
#[test]
fn arguments_reach_the_command_byte_exact() {
    require_kernel!();
    let fx = common::fixture("launchee", &[]);
    let args: [&[u8]; 4] = [b"\xff\xfe not utf-8", "é".as_bytes(), b"plain", b""];
    let mut argv = vec![fx.as_os_str(), "args".as_ref()];
    argv.extend(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)));
    let out = traced("args.json", &argv).output().unwrap();
    assert!(
        out.status.success(),
        "leaktrace exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let want: String = args
        .iter()
        .map(|a| {
            let hex: String = a.iter().map(|b| format!("{b:02x}")).collect();
            format!("arg {}\n", if hex.is_empty() { "-".into() } else { hex })
        })
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

/// A script runs under its `#!` interpreter; the probes must be on that interpreter's
/// allocator (here the interpreter's own malloc, which the C library's never sees), found from
/// what the kernel actually executed. A script may itself name a script as its interpreter.
#[test]
fn a_shebang_script_is_traced_through_its_interpreter() {
    require_kernel!();
    let interp = common::fixture("interp", &[]);
    let script = tmp("leaky-script");
    std::fs::write(
        &script,
        format!("#!{}\nthis line is for the interpreter\n", interp.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nested = tmp("nested-script");
    std::fs::write(&nested, format!("#!{}\n", script.display())).unwrap();
    std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o755)).unwrap();

    for (name, out) in [(&script, "script.json"), (&nested, "nested.json")] {
        let o = traced(out, &[name.as_os_str()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "leaktrace exited with {}: {stderr}",
            o.status
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout), "interpreted\n");
        let report = last_report(&tmp(out));
        let sites = common::sites(&report, "interp");
        assert_eq!(
            sites.get("interp_leak_a"),
            Some(&(3, 3 * 777)),
            "{name:?}: {sites:#?}"
        );
        assert_eq!(
            sites.get("interp_leak_b"),
            Some(&(1, 5555)),
            "{name:?}: {sites:#?}"
        );
        assert!(!sites.contains_key("interp_churn"), "{name:?}: {sites:#?}");
        // The process is named as the kernel names it: after the script.
        let comm = name.file_name().unwrap().to_str().unwrap();
        assert_eq!(report["processes"][0]["comm"], comm, "{stderr}");
    }
}

/// A script whose interpreter is missing cannot start: one line saying so, exit 2.
#[test]
fn a_script_with_a_missing_interpreter_is_an_error() {
    require_kernel!();
    let script = tmp("orphan-script");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = traced("orphan.json", &[script.as_os_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot start") && stderr.contains("interpreter"),
        "{stderr}"
    );
}

/// Whether `pid` is gone (or a zombie nobody reaps: dead all the same).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised comm.
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// If leaktrace is SIGKILLed, the command it launched dies with it instead of running on
/// untraced.
#[test]
fn the_command_dies_with_leaktrace() {
    require_kernel!();
    let fx = common::fixture("launchee", &[]);
    let mut lt = traced("killed.json", &[fx.as_os_str(), "sleep".as_ref()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Lines::new(lt.stdout.take().unwrap());
    let pid: u32 = lines.wait_for("pid ")["pid ".len()..]
        .trim()
        .parse()
        .unwrap();
    lines.wait_for("ready");
    lt.kill().unwrap();
    wait_with_timeout(&mut lt);
    let deadline = Instant::now() + TIMEOUT;
    while !dead(pid) && Instant::now() < deadline {
        // Polling a condition with a deadline.
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = !dead(pid);
    if survived {
        // SAFETY: signalling the fixture this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(
        !survived,
        "the launched command (pid {pid}) outlived leaktrace's SIGKILL"
    );
}
