//! The output sink on the real binary (issue #11 items 1, 3, 11, 12, 15, 26, 27): symlinks at the
//! target, predictable temporaries, modes under any umask, files in another user's directory,
//! SIGKILL between reports, closed pipes, FIFOs without a reader, and `oom --dir` checks.
mod common;

use std::{
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::{
            fs::{MetadataExt, PermissionsExt},
            process::CommandExt,
        },
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use common::{Lines, leaktrace, wait_with_timeout};

/// A fresh, empty directory for one test.
fn fresh_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sink").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `leaktrace trace ARGS -- hold 10`: a launched fixture that holds 10 blocks and exits.
fn trace_hold(args: &[&str], out: &Path) -> Command {
    let hold = common::fixture("hold", &[]);
    let mut c = leaktrace();
    c.arg("trace")
        .args(["--min-age", "0s"])
        .args(args)
        .arg("-o")
        .arg(out)
        .arg("--")
        .arg(hold)
        .arg("10");
    c.stdout(Stdio::null());
    c
}

/// Waits for a child at most `limit`; None if it is still running.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        // Polling a condition (has it exited?) with a deadline.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` for at most `limit` (then sends `then`, if given, and waits as long again; then
/// kills it): its exit status, None if it had to be killed, and all it wrote on stderr.
fn run_at_most(mut cmd: Command, limit: Duration, then: Option<i32>) -> (Option<ExitStatus>, String) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut st = wait_at_most(&mut child, limit);
    if let (None, Some(sig)) = (st, then) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        st = wait_at_most(&mut child, limit);
    }
    if st.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (st, reader.join().unwrap())
}

/// `sleep 60`, once its loader has mapped the C library (right after exec it has not yet, and
/// leaktrace would find no allocator to probe).
fn sleeper() -> Child {
    let child = Command::new("sleep").arg("60").spawn().unwrap();
    let maps = format!("/proc/{}/maps", child.id());
    let deadline = Instant::now() + common::TIMEOUT;
    while !std::fs::read_to_string(&maps).unwrap_or_default().contains("libc") {
        assert!(Instant::now() < deadline, "sleep never mapped libc");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// A pipe whose read end is already closed: every write gets EPIPE.
fn closed_pipe() -> Stdio {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-int array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just returned by pipe2 and are owned here.
    unsafe {
        libc::close(fds[0]);
        Stdio::from(OwnedFd::from_raw_fd(fds[1]))
    }
}

#[test]
fn symlink_at_the_output_leaves_its_target_alone() {
    require_kernel!();
    let d = fresh_dir("symlink");
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    let link = d.join("report.json");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    // Planted by a user in a directory everyone can write, as /tmp.
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = trace_hold(&["--format", "json"], &link)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious\n",
        "the symlink was followed; {err}"
    );
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn svg_temporary_is_not_predictable() {
    require_kernel!();
    let d = fresh_dir("tmpname");
    let mine = d.join("x.tmp");
    std::fs::write(&mine, b"a user's file\n").unwrap();
    let out = d.join("x.svg");
    let mut lt = trace_hold(&["--format", "svg"], &out).spawn().unwrap();
    assert!(wait_with_timeout(&mut lt).success());
    assert_eq!(std::fs::read(&mine).unwrap(), b"a user's file\n", "x.tmp was destroyed");
    assert!(std::fs::read_to_string(&out).unwrap().contains("<svg"));
    let names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "temporaries left behind: {names:?}");
}

#[test]
fn outputs_are_0600_under_umask_000() {
    require_kernel!();
    let d = fresh_dir("umask");
    for (format, name) in [("text", "r.txt"), ("json", "r.json"), ("svg", "r.svg")] {
        let out = d.join(name);
        let mut c = trace_hold(&["--format", format], &out);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0);
                Ok(())
            })
        };
        let mut lt = c.spawn().unwrap();
        assert!(wait_with_timeout(&mut lt).success());
        assert_eq!(mode(&out), 0o600, "{format}");
    }
    // Audit reports hold every audited process's command line (item 26).
    let mut fx = sleeper();
    let out = d.join("audit.json");
    let mut c = leaktrace();
    c.args([
        "audit",
        "-p",
        &fx.id().to_string(),
        "--duration",
        "1s",
        "--min-age",
        "0s",
        "--format",
        "json",
        "-o",
    ])
    .arg(&out);
    // SAFETY: as above.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    };
    let st = c.stdout(Stdio::null()).status().unwrap();
    let _ = fx.kill();
    let _ = fx.wait();
    assert!(st.success(), "{st}");
    serde_json::from_slice::<serde_json::Value>(&std::fs::read(&out).unwrap()).expect("valid JSON");
    assert_eq!(mode(&out), 0o600, "audit");
}

#[test]
fn a_file_in_another_users_directory_is_theirs() {
    require_kernel!();
    let d = fresh_dir("chown");
    std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    for (format, name) in [("json", "r.json"), ("svg", "r.svg")] {
        let out = d.join(name);
        let mut lt = trace_hold(&["--format", format], &out).spawn().unwrap();
        assert!(wait_with_timeout(&mut lt).success());
        let m = std::fs::metadata(&out).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{format}");
        assert_eq!(m.mode() & 0o777, 0o600, "{format}");
    }
}

/// Starts a long-lived traced process and `trace -p` on it with `args`, writing to `out`.
fn trace_running(args: &[&str], out: &Path) -> (Child, Child) {
    let fx = sleeper();
    let mut lt = leaktrace()
        .args(["trace", "-p", &fx.id().to_string(), "--min-age", "0s"])
        .args(args)
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Lines::new(lt.stderr.take().unwrap());
    err.wait_for("tracing pid");
    (fx, lt)
}

fn sigkill(mut c: Child) {
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn sigkill_keeps_the_previous_report() {
    require_kernel!();
    let d = fresh_dir("sigkill");
    let out = d.join("r.json");
    let previous = "{\"report\":\"final\",\"from\":\"the previous run\"}\n";
    std::fs::write(&out, previous).unwrap();
    // Killed before its first report: the previous run's report is still there.
    let (fx, lt) = trace_running(&["--format", "json"], &out);
    sigkill(lt);
    sigkill(fx);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), previous, "truncated at start");

    // Killed between interval reports: every line is a whole report.
    let (fx, lt) = trace_running(&["--format", "json", "--interval", "100ms"], &out);
    let deadline = Instant::now() + common::TIMEOUT;
    let count = |text: &str| text.lines().filter(|l| l.contains("\"interval\"")).count();
    while count(&std::fs::read_to_string(&out).unwrap_or_default()) < 2 {
        assert!(Instant::now() < deadline, "no interval reports");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigkill(lt);
    sigkill(fx);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("previous run"), "the new run replaces the old report");
    assert!(count(&text) >= 2, "{text}");
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn a_full_disk_keeps_the_previous_report() {
    require_kernel!();
    let d = fresh_dir("full");
    // SAFETY: plain mount syscall on a directory of ours.
    let mounted = unsafe {
        libc::mount(
            c"leaktrace-test".as_ptr(),
            std::ffi::CString::new(d.to_str().unwrap()).unwrap().as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=64k".as_ptr().cast(),
        )
    } == 0;
    if !mounted {
        eprintln!(
            "SKIPPED a_full_disk_keeps_the_previous_report: cannot mount a tmpfs: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let p = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
            // SAFETY: unmounting the tmpfs mounted above.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _guard = Unmount(d.clone());
    let out = d.join("r.json");
    let previous = "{\"from\":\"the previous run\"}\n";
    std::fs::write(&out, previous).unwrap();
    // Fill the rest of it.
    let filler = d.join("filler");
    let _ = std::fs::write(&filler, vec![b'x'; 64 << 10]);
    let o = trace_hold(&["--format", "json", "--top", "1000"], &out)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), previous);
    let names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "temporaries left behind: {names:?}");

    // Interval reports until the disk fills: the file ends with a whole report, never part of one.
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&filler).unwrap();
    std::fs::write(&filler, vec![b'x'; 48 << 10]).unwrap();
    let fx = sleeper();
    let mut c = leaktrace();
    c.args(["trace", "-p", &fx.id().to_string(), "--min-age", "0s", "--interval", "20ms", "--format", "json", "-o"])
        .arg(&out);
    let (st, err) = run_at_most(c, common::TIMEOUT, None);
    sigkill(fx);
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{err}");
    assert!(err.contains("No space left"), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.lines().count() >= 1 && text.ends_with('\n'), "{text}");
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
}

#[test]
fn closed_stdout_exits_0_in_every_format() {
    require_kernel!();
    let hold = common::fixture("hold", &[]);
    for format in ["text", "json", "folded"] {
        let out = leaktrace()
            .args(["trace", "--min-age", "0s", "--format", format, "--"])
            .arg(&hold)
            .arg("10")
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{format}: {err}");
        assert!(!err.contains("Broken pipe"), "{format}: {err}");
    }
}

#[test]
fn diff_json_to_a_closed_pipe_exits_0() {
    let d = fresh_dir("diff");
    let a = d.join("a.json");
    std::fs::write(&a, r#"{"processes":[{"pid":1,"comm":"x","leaked_bytes":0,"outstanding_bytes":0,"stacks":[]}]}"#).unwrap();
    for format in ["text", "json"] {
        let out = leaktrace()
            .arg("diff")
            .arg(&a)
            .arg(&a)
            .args(["--format", format])
            .stdout(closed_pipe())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{format}: {err}");
        assert!(err.is_empty(), "{format}: {err}");
    }
}

/// `leaktrace ... 2>&1 | head -1`: stderr is the closed pipe too. A notice or the error line that
/// cannot be written must not turn the exit code into a panic's 101.
#[test]
fn closed_stderr_keeps_the_exit_code() {
    let out = leaktrace()
        .args(["diff", "/nonexistent/a.json", "/nonexistent/b.json"])
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "diff of missing files");
    require_kernel!();
    let hold = common::fixture("hold", &[]);
    let out = leaktrace()
        .args(["trace", "--min-age", "0s", "--"])
        .arg(&hold)
        .arg("10")
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "trace");
}

#[test]
fn fifo_without_a_reader_does_not_hang() {
    require_kernel!();
    let d = fresh_dir("fifo");
    let fifo = d.join("p");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut fx = sleeper();
    let mut c = leaktrace();
    c.args(["trace", "-p", &fx.id().to_string(), "-o"]).arg(&fifo);
    // It should refuse at once; should it not, SIGTERM must still end it promptly.
    let (st, text) = run_at_most(c, Duration::from_secs(10), Some(libc::SIGTERM));
    let _ = fx.kill();
    let _ = fx.wait();
    let st = st.unwrap_or_else(|| panic!("blocked on a FIFO without a reader, deaf to SIGTERM: {text}"));
    assert_eq!(st.code(), Some(2), "{text}");
    assert!(text.contains("no reader"), "{text}");
}

#[test]
fn fifo_with_a_reader_gets_the_report() {
    require_kernel!();
    let d = fresh_dir("fifo-reader");
    let fifo = d.join("p");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // The reader: our own read end, open before leaktrace starts (a non-blocking open for
    // reading never waits for a writer).
    // SAFETY: a valid path.
    let rd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert!(rd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just opened and owned here.
    let mut rd = unsafe { std::fs::File::from_raw_fd(rd) };
    let mut lt = trace_hold(&["--format", "json"], &fifo).spawn().unwrap();
    assert!(wait_with_timeout(&mut lt).success());
    // The report (a few KB, within the pipe's buffer) waits in the FIFO.
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut rd, &mut got);
    let v: serde_json::Value = serde_json::from_slice(&got).expect("a JSON report through the FIFO");
    assert_eq!(v["report"], "final");
    // Written in place, never renamed over.
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &std::fs::symlink_metadata(&fifo).unwrap().file_type()
    ));
}

fn oom_refuses(dir: &Path, needle: &str) {
    let mut c = leaktrace();
    c.arg("oom").arg("--dir").arg(dir);
    let (st, err) = run_at_most(c, Duration::from_secs(10), None);
    let st = st.unwrap_or_else(|| panic!("{} was accepted: {err}", dir.display()));
    assert_eq!(st.code(), Some(2), "{}: {err}", dir.display());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

#[test]
fn oom_dir_is_checked_and_never_chmodded() {
    require_kernel!();
    let d = fresh_dir("oomdir");
    // A symlink to a private directory: refused, and its target keeps its mode.
    let real = d.join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = d.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    oom_refuses(&link, "symbolic link");
    assert_eq!(mode(&real), 0o755);
    // Writable by others (like /tmp): refused, mode untouched.
    let open = d.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    oom_refuses(&open, "writable by others");
    assert_eq!(mode(&open), 0o777);
    // Another user's.
    let theirs = d.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
    oom_refuses(&theirs, "owned by uid 65534");
    assert_eq!(mode(&theirs), 0o755);
    // A root directory that is fine as it is: used, and left 0755.
    let mut lt = leaktrace()
        .args(["oom", "--dir"])
        .arg(&real)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Lines::new(lt.stderr.take().unwrap());
    err.wait_for("watching for OOM kills");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGTERM) };
    assert!(wait_with_timeout(&mut lt).success());
    assert_eq!(mode(&real), 0o755, "an existing directory was chmodded");
    // A missing one is created private, whatever the umask.
    let new = d.join("new");
    let mut c = leaktrace();
    c.args(["oom", "--dir"])
        .arg(&new)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: umask is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    };
    let mut lt = c.spawn().unwrap();
    let err = Lines::new(lt.stderr.take().unwrap());
    err.wait_for("watching for OOM kills");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGTERM) };
    assert!(wait_with_timeout(&mut lt).success());
    assert_eq!(mode(&new), 0o700);
}

#[test]
fn oom_watcher_survives_a_closed_stdout() {
    require_kernel!();
    let root = Path::new("/sys/fs/cgroup/memory");
    if !root.join("memory.limit_in_bytes").exists() {
        eprintln!("SKIPPED oom_watcher_survives_a_closed_stdout: no cgroup v1 memory controller");
        return;
    }
    let cg = root.join(format!("leaktrace-test-sink-{}", std::process::id()));
    let _ = std::fs::create_dir(&cg);
    std::fs::write(cg.join("memory.limit_in_bytes"), (64u64 << 20).to_string()).unwrap();
    let d = fresh_dir("oom-closed");
    let dir = d.join("reports");
    let mut lt = leaktrace()
        .args(["oom", "--once", "--dir"])
        .arg(&dir)
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Lines::new(lt.stderr.take().unwrap());
    err.wait_for("watching for OOM kills");
    let exe = common::fixture("oomleak", &[]);
    let mut fx = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {}",
            cg.display(),
            exe.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let st = wait_with_timeout(&mut lt);
    wait_with_timeout(&mut fx);
    let deadline = Instant::now() + common::TIMEOUT;
    while std::fs::remove_dir(&cg).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = err.rest().join("\n");
    assert_eq!(st.code(), Some(0), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    let json = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"));
    assert_eq!(json.count(), 1, "the report is written");
}

#[test]
fn dev_stdout_is_written_in_place() {
    require_kernel!();
    // /dev/stdout is a root-owned link in a root-only directory: followed, never renamed over
    // (a rename would replace the link itself with a regular file, for every program).
    for (format, marker) in [("json", "\"report\":\"final\""), ("svg", "<svg")] {
        let out = trace_hold(&["--format", format], Path::new("/dev/stdout"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{format}: {err}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(marker), "{format}: {err}");
        assert!(std::fs::symlink_metadata("/dev/stdout").unwrap().file_type().is_symlink());
    }
}
