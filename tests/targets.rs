//! What leaktrace traces when given PIDs: a thread id is its process, repeated PIDs are one target,
//! `--max-targets` caps a run, SIGINT ends a long attach, a process whose executable path holds a
//! newline and invalid UTF-8 is traced exactly, an audit goes on past a process that fails, and a
//! process that exits while probes are attached is named. Real kernel, real fixtures
//! (tests/fixtures/targets.c: a process with a long-lived second thread; leaky.c; nomalloc.c).
mod common;

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    io::Write,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use common::{Lines, last_report, leaktrace, wait_with_timeout};
use serde_json::Value;

/// A running tests/fixtures/targets.c (or a copy of it): killed and reaped on drop.
struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines,
    pid: u32,
    tid: u32,
}

impl Fixture {
    fn start_at(exe: &Path) -> Fixture {
        let mut child = Command::new(exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fixture");
        let out = Lines::new(child.stdout.take().unwrap());
        let ready = out.wait_for("ready pid=");
        let field = |name: &str| -> u32 {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {ready:?}"))
        };
        let (pid, tid) = (field("pid="), field("tid="));
        assert_eq!(pid, child.id());
        assert_ne!(pid, tid);
        Fixture {
            stdin: child.stdin.take(),
            child,
            out,
            pid,
            tid,
        }
    }

    fn start() -> Fixture {
        Self::start_at(&common::fixture("targets", &[]))
    }

    /// Lets it leak (3 x 1111 B from leak_main, 2 x 2222 B from leak_worker) and waits for it.
    fn leak(&mut self) {
        self.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        self.out.wait_for("done");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tmp(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// Starts `leaktrace ARGS` with stderr read line by line.
fn spawn(args: &[&str]) -> (Child, Lines) {
    let mut lt = leaktrace()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Lines::new(lt.stderr.take().unwrap());
    (lt, err)
}

/// Runs `leaktrace ARGS` to completion: its status and stderr.
fn run(args: &[&str]) -> (ExitStatus, String) {
    common::status_and_stderr(leaktrace().args(args))
}

fn sigint(child: &Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

/// (count, bytes) per function of the fixture named in the frames' module.
fn sites_in(report: &Value, module_has: &str) -> BTreeMap<String, (u64, u64)> {
    common::sites_by(report, |f| f["module"].as_str().is_some_and(|m| m.contains(module_has)))
}

fn check_fixture_sites(report: &Value, pid: u32) {
    let procs = report["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "one process: {report:#}");
    assert_eq!(procs[0]["pid"], pid);
    let got = sites_in(report, "/targets");
    assert_eq!(got.get("leak_main"), Some(&(3, 3 * 1111)), "{got:#?}");
    assert_eq!(got.get("leak_worker"), Some(&(2, 2 * 2222)), "{got:#?}");
}

/// Item 6: `-p TID` traces the thread's whole process and says so.
#[test]
fn thread_id_is_traced_as_its_process() {
    require_kernel!();
    let mut fx = Fixture::start();
    let out = tmp("tid.json");
    let tid = fx.tid.to_string();
    let (mut lt, err) = spawn(&[
        "trace", "-p", &tid, "--min-age", "0s", "--format", "json", "-o", out.to_str().unwrap(),
    ]);
    let note = err.wait_for(&format!("-p {tid} is a thread"));
    assert_eq!(
        note,
        format!(
            "leaktrace: -p {tid} is a thread of process {} (targets): tracing process {}",
            fx.pid, fx.pid
        )
    );
    err.wait_for(&format!("tracing pid {}", fx.pid));
    fx.leak();
    sigint(&lt);
    let st = wait_with_timeout(&mut lt);
    assert!(st.success(), "{st}: {:?}", err.rest());
    check_fixture_sites(&last_report(&out), fx.pid);
}

/// Item 8: the same PID many times, and a thread of it, are one target with one set of probes.
#[test]
fn repeated_pids_and_threads_are_one_target() {
    require_kernel!();
    let mut fx = Fixture::start();
    let out = tmp("dedup.json");
    let (pid, tid) = (fx.pid.to_string(), fx.tid.to_string());
    let mut args = vec!["trace", "--min-age", "0s", "--format", "json"];
    args.extend(["-o", out.to_str().unwrap()]);
    for _ in 0..5 {
        args.extend(["-p", &pid]);
    }
    args.extend(["-p", &tid]);
    let (mut lt, err) = spawn(&args);
    let line = err.wait_for(&format!("tracing pid {pid}"));
    fx.leak();
    sigint(&lt);
    let st = wait_with_timeout(&mut lt);
    let rest = err.rest();
    assert!(st.success(), "{st}: {rest:?}");
    assert!(
        !rest.iter().any(|l| l.contains("tracing pid")),
        "attached more than once: {line} then {rest:#?}"
    );
    // Counted once: not once per repetition.
    check_fixture_sites(&last_report(&out), fx.pid);
}

/// Item 8: more distinct targets than --max-targets is refused, naming the option, for trace and
/// for audit.
#[test]
fn max_targets_refuses_longer_pid_lists() {
    require_kernel!();
    let fxs: Vec<Fixture> = (0..3).map(|_| Fixture::start()).collect();
    let pids: Vec<String> = fxs.iter().map(|f| f.pid.to_string()).collect();
    for cmd in [&["trace"][..], &["audit", "--duration", "2s", "--min-age", "1s"][..]] {
        let mut args: Vec<&str> = cmd.to_vec();
        args.extend(["--max-targets", "2"]);
        for p in &pids {
            args.extend(["-p", p]);
        }
        let (st, err) = run(&args);
        assert_eq!(st.code(), Some(2), "{cmd:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("3 processes") && err.contains("--max-targets 2"),
            "{cmd:?}: {err}"
        );
        assert!(!err.contains("unexpected argument"), "{err}");
    }
}

/// Item 8: an audit of processes found by name stops at --max-targets and reports how many it
/// left out.
#[test]
fn audit_reports_what_max_targets_left_out() {
    require_kernel!();
    // A name of our own, so that no other process matches --comm.
    let comm = format!("ltcap{}", std::process::id() % 100_000);
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&comm);
    std::fs::copy(common::fixture("targets", &[]), &exe).unwrap();
    let _fxs: Vec<Fixture> = (0..3).map(|_| Fixture::start_at(&exe)).collect();
    let out = tmp("cap.json");
    let (st, err) = run(&[
        "audit", "--comm", &comm, "--max-targets", "2", "--duration", "1s", "--min-age", "0s",
        "--format", "json", "-o", out.to_str().unwrap(),
    ]);
    assert!(st.success(), "{st}: {err}");
    assert!(err.contains("--max-targets 2: 1 more process"), "{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["processes"].as_array().unwrap().len(), 2, "{r:#}");
    assert_eq!(r["over_max_targets"], 1, "{r:#}");
}

/// Item 8: SIGINT sent while many targets are being attached ends the run without attaching the
/// rest; the final report still comes.
#[test]
fn sigint_during_a_long_attach_ends_the_run() {
    require_kernel!();
    const N: usize = 12;
    let fxs: Vec<Fixture> = (0..N).map(|_| Fixture::start()).collect();
    let pids: Vec<String> = fxs.iter().map(|f| f.pid.to_string()).collect();
    let out = tmp("sigint.json");
    let mut args = vec!["trace", "--format", "json", "-o", out.to_str().unwrap()];
    for p in &pids {
        args.extend(["-p", p]);
    }
    let (mut lt, err) = spawn(&args);
    err.wait_for("tracing pid");
    sigint(&lt);
    // Detaching what was attached takes ~0.1-0.2 s a probe, serially (issue #11 item 21, a
    // benchmark figure): a deadline above common::TIMEOUT, for a loaded machine.
    let deadline = Instant::now() + 3 * common::TIMEOUT;
    let st = loop {
        if let Some(st) = lt.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = lt.kill();
            panic!("leaktrace did not exit within {:?} of SIGINT", 3 * common::TIMEOUT);
        }
        // Polling a condition (has it exited?) with a deadline.
        std::thread::sleep(Duration::from_millis(20));
    };
    let attached = 1 + err.rest().iter().filter(|l| l.contains("tracing pid")).count();
    assert!(st.success(), "{st}");
    assert!(attached < N, "all {N} targets were attached after SIGINT");
    let r = last_report(&out);
    assert_eq!(r["report"], "final");
}


/// leaky.c copied to `lt<NL>bad<FF>` (a newline and a byte that is not UTF-8) in a fresh directory.
fn hostile_copy_of_leaky() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-path");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join(OsStr::from_bytes(b"lt\nbad\xff"));
    std::fs::copy(common::fixture("leaky", &[]), &exe).unwrap();
    exe
}

/// Item 13: a process whose executable path holds a newline and invalid UTF-8 is traced with
/// the exact sites.
#[test]
fn hostile_executable_path_is_traced_exactly() {
    require_kernel!();
    let exe = hostile_copy_of_leaky();
    let (mut fx, fx_out) = common::start_waiting(&exe);
    let pid = fx.id().to_string();
    let out = tmp("hostile.json");
    let (mut lt, err) = spawn(&[
        "trace", "-p", &pid, "--min-age", "0s", "--top", "1000", "--format", "json", "-o",
        out.to_str().unwrap(),
    ]);
    err.wait_for(&format!("tracing pid {pid}"));
    fx.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    fx_out.wait_for("done");
    sigint(&lt);
    let st = wait_with_timeout(&mut lt);
    assert!(st.success(), "{st}: {:?}", err.rest());
    let _ = fx.kill();
    let _ = fx.wait();
    let report = last_report(&out);
    // However a renderer escapes the module's path, "bad" stays in it.
    let got = sites_in(&report, "bad");
    for (site, count, bytes) in common::LEAKY_SITES {
        assert_eq!(got.get(*site), Some(&(2 * count, 2 * bytes)), "{site}: {got:#?}");
    }
}

/// Item 13: `audit -p good -p bad` where bad cannot be traced (no allocator) reports good, and
/// names bad with its reason on stderr and in the JSON; a hostile path is audited too.
#[test]
fn audit_goes_on_past_a_process_that_fails() {
    require_kernel!();
    let good = Fixture::start();
    let hostile = hostile_copy_of_leaky();
    let (mut hostile_fx, _h_out) = common::start_waiting(&hostile);
    let nomalloc = common::fixture("nomalloc", &["-nostdlib", "-static"]);
    let mut bad = Command::new(&nomalloc).stdout(Stdio::piped()).spawn().unwrap();
    let bad_out = Lines::new(bad.stdout.take().unwrap());
    bad_out.wait_for("ready");
    let out = tmp("skip.json");
    let (g, b, h) = (good.pid.to_string(), bad.id().to_string(), hostile_fx.id().to_string());
    let (st, err) = run(&[
        "audit", "-p", &g, "-p", &b, "-p", &h, "--duration", "1s", "--min-age", "0s", "--format",
        "json", "-o", out.to_str().unwrap(),
    ]);
    let _ = bad.kill();
    let _ = bad.wait();
    let _ = hostile_fx.kill();
    let _ = hostile_fx.wait();
    assert!(st.success(), "{st}: {err}");
    let line = err
        .lines()
        .find(|l| l.contains(&format!("skipping process {b}")))
        .unwrap_or_else(|| panic!("no skip line: {err}"));
    assert!(line.contains("no recognizable allocator"), "{line}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let mut pids: Vec<u64> = r["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    pids.sort_unstable();
    let mut want = vec![u64::from(good.pid), u64::from(hostile_fx.id())];
    want.sort_unstable();
    assert_eq!(pids, want, "{r:#}");
    let skipped = r["skipped"].as_array().expect("skipped[]");
    assert_eq!(skipped.len(), 1, "{r:#}");
    assert_eq!(skipped[0]["pid"], bad.id());
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("no recognizable allocator"),
        "{r:#}"
    );
}

/// Whether `pid` has a BPF map open: leaktrace has resolved its targets and is loading its
/// programs, which comes before any probe is attached.
fn loading_bpf(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .any(|l| l.as_os_str().as_bytes().starts_with(b"anon_inode:bpf-map"))
        })
        .unwrap_or(false)
}

/// Waits until leaktrace is loading its programs, stops it, kills and reaps the target, and lets
/// leaktrace go on: the target is gone between being chosen and being attached.
fn end_target_while_loading(lt: &Child, fx: &mut Fixture) {
    let deadline = Instant::now() + common::TIMEOUT;
    while !loading_bpf(lt.id()) {
        assert!(Instant::now() < deadline, "leaktrace never loaded its programs");
        // Polling a condition with a deadline.
        std::thread::sleep(Duration::from_micros(200));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGSTOP) };
    let _ = fx.child.kill();
    let _ = fx.child.wait();
    // SAFETY: as above.
    unsafe { libc::kill(lt.id() as i32, libc::SIGCONT) };
}

/// Item 16: a target that exits after leaktrace resolved it but before its probes are attached
/// gives exit 2 and "process N exited while attaching". Leaktrace is stopped (SIGSTOP) once it is
/// loading its programs, the target is killed and reaped, and leaktrace is let go on.
#[test]
fn process_exiting_while_attaching_is_named() {
    require_kernel!();
    for attempt in 1..=5 {
        let mut fx = Fixture::start();
        let pid = fx.pid;
        let (mut lt, err) = spawn(&["trace", "-p", &pid.to_string()]);
        end_target_while_loading(&lt, &mut fx);
        let st = wait_with_timeout(&mut lt);
        let lines = err.rest();
        if lines.iter().any(|l| l.contains("tracing pid")) {
            eprintln!("attempt {attempt}: attached before it was stopped; again");
            continue;
        }
        assert_eq!(st.code(), Some(2), "{lines:#?}");
        let msg = format!("leaktrace: process {pid} exited while attaching");
        assert!(lines.iter().any(|l| l.starts_with(&msg)), "{lines:#?}");
        assert!(!lines.iter().any(|l| l.contains("OneProcess")), "{lines:#?}");
        return;
    }
    panic!("never stopped leaktrace between resolving and attaching in 5 attempts");
}

/// Item 16 in an audit: a chosen process that exits while the probes are attached is skipped with
/// that reason, and the others are audited.
#[test]
fn audit_skips_a_process_exiting_while_attaching() {
    require_kernel!();
    let good = Fixture::start();
    for attempt in 1..=5 {
        let mut fx = Fixture::start();
        let pid = fx.pid;
        let out = tmp("exiting.json");
        let mut lt = leaktrace()
            .args(["audit", "-p", &good.pid.to_string(), "-p", &pid.to_string()])
            .args(["--duration", "1s", "--min-age", "0s", "--format", "json", "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = Lines::new(lt.stderr.take().unwrap());
        end_target_while_loading(&lt, &mut fx);
        let st = wait_with_timeout(&mut lt);
        let lines = err.rest();
        assert!(st.success(), "{st}: {lines:#?}");
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let audited: Vec<u64> = r["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect();
        if audited.contains(&u64::from(pid)) {
            eprintln!("attempt {attempt}: attached before it was stopped; again");
            continue;
        }
        assert_eq!(audited, [u64::from(good.pid)], "{r:#}");
        let msg = format!("process {pid} exited while attaching");
        assert_eq!(r["skipped"][0]["pid"], pid, "{r:#}");
        assert!(r["skipped"][0]["reason"].as_str().unwrap().starts_with(&msg), "{r:#}");
        assert!(lines.iter().any(|l| l.contains(&msg)), "{lines:#?}");
        return;
    }
    panic!("never stopped leaktrace between choosing and attaching in 5 attempts");
}
