//! The traced process's life as leaktrace follows it, on the real kernel: a library unloaded
//! (dlclose) after leaking is still named in the report, an exec drops the old image's blocks
//! and renames the process, and idle metrics connections cannot starve symbolization of file
//! descriptors (when something else does, the failure is warned about and counted).
mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Lines, TIMEOUT, fixture, leaktrace, wait_with_timeout};

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// A fixture speaking the ready/line protocol: started, its pid read from "ready pid=N".
struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines,
    pid: u32,
}

impl Target {
    fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fixture");
        let out = Lines::new(child.stdout.take().unwrap());
        let pid = out
            .wait_for("ready pid=")
            .trim_start_matches("ready pid=")
            .parse()
            .expect("pid");
        let stdin = child.stdin.take();
        Target { child, stdin, out, pid }
    }

    /// Sends one line and waits for the fixture's answer.
    fn step(&mut self, answer: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"\n").and_then(|()| stdin.flush()).expect("write to fixture");
        self.out.wait_for(answer);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// leaktrace tracing one pid with a JSON report file and a metrics endpoint on a port the
/// kernel picks. Its stderr goes to a file, read whole once it has exited.
struct Tracer {
    child: Child,
    stderr: PathBuf,
    metrics: SocketAddr,
    report: PathBuf,
}

impl Tracer {
    fn start(pid: u32, report: &str) -> Self {
        let report = tmp(report);
        let _ = std::fs::remove_file(&report);
        let stderr = report.with_extension("stderr");
        let child = leaktrace()
            .args(["trace", "-p", &pid.to_string(), "--min-age", "0s", "--top", "1000"])
            .args(["--metrics-addr", "127.0.0.1:0", "--format", "json", "-o"])
            .arg(&report)
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start leaktrace");
        // Polling the file for a line, with a deadline.
        let deadline = Instant::now() + TIMEOUT;
        let text = loop {
            let text = std::fs::read_to_string(&stderr).unwrap_or_default();
            if text.contains("tracing pid") {
                break text;
            }
            assert!(Instant::now() < deadline, "leaktrace did not attach: {text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let metrics = text
            .split("metrics on http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in {text:?}"));
        Tracer { child, stderr, metrics, report }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the metrics show at least `bytes` outstanding for `pid`: the blocks have been
    /// drained from the ring and their stacks interned (metrics are updated after a drain).
    fn wait_outstanding(&self, pid: u32, bytes: u64) {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = None;
        while Instant::now() < deadline {
            last = scrape(self.metrics, "leaktrace_outstanding_bytes", pid);
            if last.is_some_and(|v| v >= bytes) {
                return;
            }
            // Polling a condition with a deadline: the metrics are refreshed once a second.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("pid {pid}: outstanding bytes {last:?}, never {bytes} within {TIMEOUT:?}");
    }

    /// SIGINT, then the final report and everything leaktrace said on stderr.
    fn finish(mut self) -> (serde_json::Value, Vec<String>) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let st = wait_with_timeout(&mut self.child);
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let stderr: Vec<String> = text.lines().map(str::to_owned).collect();
        assert!(st.success(), "leaktrace failed: {st:?}; stderr: {stderr:#?}");
        (common::last_report(&self.report), stderr)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `family{pid="PID",...}` from one scrape, if the endpoint answered.
fn scrape(addr: SocketAddr, family: &str, pid: u32) -> Option<u64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let label = format!("pid=\"{pid}\"");
    text.lines()
        .filter(|l| l.strip_prefix(family).is_some_and(|r| r.starts_with('{')) && l.contains(&label))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// The frames (function, module) of the stacks of `bytes` bytes in a report.
fn frames_of(report: &serde_json::Value, bytes: u64) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in report["processes"].as_array().expect("processes[]") {
        for s in p["stacks"].as_array().expect("stacks[]") {
            if s["bytes"].as_u64() != Some(bytes) {
                continue;
            }
            let frames = s["frames"].as_array().expect("frames[]");
            out.push(
                frames
                    .iter()
                    .map(|f| {
                        let str = |k: &str| f[k].as_str().unwrap_or("??").to_string();
                        (str("function"), str("module"))
                    })
                    .collect(),
            );
        }
    }
    out
}

fn compile_plugin(name: &str, define: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/plugin.c");
    let out = tmp(name);
    let st = Command::new("gcc")
        .args(["-g", "-O0", "-fno-omit-frame-pointer", "-shared", "-fPIC", "-w"])
        .arg(define)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc failed for {}", src.display());
    out
}

#[test]
fn a_dlclosed_library_is_still_named() {
    require_kernel!();
    let lib_a = compile_plugin("libplugin_a.so", "-DPLUGIN_A");
    let lib_b = compile_plugin("libplugin_b.so", "-DPLUGIN_B");
    let exe = fixture("dlplugin", &["-ldl"]);
    let mut target = Target::start(Command::new(&exe).arg(&lib_a).arg(&lib_b));
    let tracer = Tracer::start(target.pid, "dlclose.json");

    target.step("leaked a");
    tracer.wait_outstanding(target.pid, 300_000);
    // Library B is new to the tracer: it re-reads the maps, where library A is gone.
    target.step("leaked b");
    tracer.wait_outstanding(target.pid, 700_000);
    let (report, _) = tracer.finish();

    for (bytes, lib) in [(300_000, "libplugin_a.so"), (400_000, "libplugin_b.so")] {
        let stacks = frames_of(&report, bytes);
        assert_eq!(stacks.len(), 1, "one stack of {bytes} B expected: {report:#}");
        let site = stacks[0].iter().find(|(f, _)| f == "leak_in_plugin");
        assert!(
            site.is_some_and(|(_, m)| m.ends_with(lib)),
            "the {bytes} B leak is not named leak_in_plugin in {lib}: {:?}",
            stacks[0]
        );
    }
}

#[test]
fn a_library_unloaded_at_once_is_still_named() {
    require_kernel!();
    let lib_a = compile_plugin("libplugin_a.so", "-DPLUGIN_A");
    let lib_b = compile_plugin("libplugin_b.so", "-DPLUGIN_B");
    let exe = fixture("dlplugin", &["-ldl"]);
    // dlclose right after the leak: the library is gone before leaktrace drains the ring.
    let mut target = Target::start(Command::new(&exe).arg(&lib_a).arg(&lib_b).arg("now"));
    let tracer = Tracer::start(target.pid, "dlclose-now.json");
    target.step("leaked a");
    tracer.wait_outstanding(target.pid, 300_000);
    let (report, stderr) = tracer.finish();
    let stacks = frames_of(&report, 300_000);
    assert_eq!(stacks.len(), 1, "one stack of 300000 B expected: {report:#}");
    assert!(
        stacks[0].iter().any(|(f, m)| f == "leak_in_plugin" && m.ends_with("libplugin_a.so")),
        "the leak is not named leak_in_plugin in libplugin_a.so: {:?}; stderr: {stderr:#?}",
        stacks[0]
    );
}

#[test]
fn exec_drops_the_old_image_and_takes_the_new_name() {
    require_kernel!();
    let exe = fixture("execer", &[]);
    // The exec'd image: the same program under another name, which becomes the comm.
    let next = tmp("exec-next");
    std::fs::copy(&exe, &next).expect("copy the fixture");
    let mut target = Target::start(Command::new(&exe).arg("before").arg(&next));
    let tracer = Tracer::start(target.pid, "exec.json");
    target.step("leaked before");
    tracer.wait_outstanding(target.pid, 111_111);
    target.step("leaked after");
    tracer.wait_outstanding(target.pid, 222_222);
    let (report, _) = tracer.finish();

    let procs = report["processes"].as_array().expect("processes[]");
    let p = procs
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(target.pid)))
        .unwrap_or_else(|| panic!("pid {} missing: {report:#}", target.pid));
    assert_eq!(p["comm"].as_str(), Some("exec-next"), "{p:#}");
    assert!(
        frames_of(&report, 111_111).is_empty(),
        "the block of the image before exec is reported: {report:#}"
    );
    let after = frames_of(&report, 222_222);
    assert_eq!(after.len(), 1, "the leak after exec is not reported once: {report:#}");
    assert!(
        after[0].iter().any(|(f, m)| f == "leak_after_exec" && m.ends_with("exec-next")),
        "{:?}",
        after[0]
    );
}

/// leaktrace's open file descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Pending connections in the accept queue of the listening socket on `port` (for a listening
/// socket, /proc/net/tcp's rx_queue is its accept backlog).
fn accept_backlog(port: u16) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{port:04X}");
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // local_address rem_address st tx_queue:rx_queue; state 0A is LISTEN.
        (f.get(1)?.ends_with(&local) && *f.get(3)? == "0A")
            .then(|| u64::from_str_radix(f.get(4)?.split_once(':')?.1, 16).ok())
            .flatten()
    })
}

/// Sets leaktrace's RLIMIT_NOFILE to `limit`.
fn set_fd_limit(pid: u32, limit: usize) {
    let lim = libc::rlimit { rlim_cur: limit as u64, rlim_max: limit as u64 };
    // SAFETY: valid pointer to an rlimit; a null old-limit pointer is allowed.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Opens `n` idle connections to the metrics endpoint (they send nothing), then waits until
/// leaktrace has taken them off the accept queue or has run out of descriptors trying.
fn idle_connections(t: &Tracer, n: usize, limit: usize) -> Vec<TcpStream> {
    // Room for our own end of each connection.
    let mut ours = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointers to rlimits.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours);
        ours.rlim_cur = ours.rlim_max.min(4096);
        libc::setrlimit(libc::RLIMIT_NOFILE, &ours);
    }
    // Without a cap, leaktrace stops accepting when out of descriptors and connecting can
    // time out: the connections made so far are the point.
    let conns: Vec<TcpStream> = (0..n)
        .map_while(|_| TcpStream::connect_timeout(&t.metrics, Duration::from_secs(2)).ok())
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let backlog = accept_backlog(t.metrics.port());
        let fds = open_fds(t.pid());
        if backlog == Some(0) || fds >= limit {
            return conns;
        }
        assert!(Instant::now() < deadline, "backlog {backlog:?}, {fds} fds of {limit}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A leak through the dlplugin fixture's first library, traced, seen in the metrics.
fn traced_leak(report: &str) -> (Target, Tracer) {
    let lib_a = compile_plugin("libplugin_a.so", "-DPLUGIN_A");
    let lib_b = compile_plugin("libplugin_b.so", "-DPLUGIN_B");
    let exe = fixture("dlplugin", &["-ldl"]);
    let mut target = Target::start(Command::new(&exe).arg(&lib_a).arg(&lib_b));
    let tracer = Tracer::start(target.pid, report);
    target.step("leaked a");
    tracer.wait_outstanding(target.pid, 300_000);
    (target, tracer)
}

#[test]
fn idle_metrics_connections_do_not_starve_symbolization() {
    require_kernel!();
    let (_target, tracer) = traced_leak("idle.json");
    // Room for what leaktrace holds now, the metrics connections it accepts (64) and the few
    // files symbolization opens; far fewer than the idle connections.
    let limit = open_fds(tracer.pid()) + 64 + 32;
    set_fd_limit(tracer.pid(), limit);
    let _conns = idle_connections(&tracer, 300, limit);
    let (report, stderr) = tracer.finish();
    let stacks = frames_of(&report, 300_000);
    assert_eq!(stacks.len(), 1, "{report:#}");
    assert!(
        stacks[0].iter().any(|(f, m)| f == "leak_in_plugin" && m.ends_with("libplugin_a.so")),
        "not symbolized: {:?}; stderr: {stderr:#?}",
        stacks[0]
    );
    assert!(
        stderr.iter().any(|l| l.contains("metrics") && l.contains("refus")),
        "no warning about refused metrics connections: {stderr:#?}"
    );
}

#[test]
fn a_symbolization_failure_is_warned_about_and_counted() {
    require_kernel!();
    let (_target, tracer) = traced_leak("starved.json");
    // No room left once a few connections are open: opening the library to symbolize fails.
    let limit = open_fds(tracer.pid()) + 4;
    set_fd_limit(tracer.pid(), limit);
    let _conns = idle_connections(&tracer, 16, limit);
    let (report, stderr) = tracer.finish();
    let failures = report["symbolization_failures"].as_u64();
    assert!(failures.is_some_and(|n| n > 0), "no failure counted: {report:#}");
    let warnings: Vec<_> = stderr.iter().filter(|l| l.contains("cannot symbolize")).collect();
    assert_eq!(warnings.len(), 1, "one warning per cause expected: {stderr:#?}");
    assert!(warnings[0].contains("open files"), "{warnings:?}");
}
