//! Shared helpers of the integration tests: building C fixtures, running leaktrace, waiting on
//! conditions with deadlines, and reading reports by leak site.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    sync::mpsc,
    time::{Duration, Instant},
};

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The leak sites of tests/fixtures/leaky.c, (function, count, bytes) per run of its leak set
/// (it runs the set on two threads).
pub const LEAKY_SITES: &[(&str, u64, u64)] = &[
    ("leak_malloc", 4, 4 * 1000),
    ("leak_calloc", 3, 3 * 1024),
    ("leak_realloc_chain", 1, 5000),
    ("leak_mmap", 1, 12288),
    ("leak_posix_memalign", 2, 2 * 2048),
    ("leak_aligned_alloc", 2, 2 * 4096),
    ("leak_memalign", 2, 2 * 3000),
    ("leak_big_malloc", 1, 262144),
];

/// What leaky.c allocates and frees (or never gets): never reported.
pub const LEAKY_ABSENT: &[&str] = &["pair_malloc_free", "calloc_overflow", "munmap_pair", "pre_attach_alloc"];

pub fn leaktrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leaktrace"))
}

/// Why the real-kernel tests cannot run here, if they cannot. They print it and return: a
/// visible skip, never a silent pass.
pub fn kernel_skip_reason() -> Option<String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to load eBPF programs".into());
    }
    for p in ["/sys/kernel/btf/vmlinux", "/sys/bus/event_source/devices/uprobe"] {
        if !Path::new(p).exists() {
            return Some(format!("kernel lacks {p}"));
        }
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        return Some("gcc is missing (cargo xtask setup installs it)".into());
    }
    None
}

#[macro_export]
macro_rules! require_kernel {
    () => {
        if let Some(why) = common::kernel_skip_reason() {
            eprintln!("SKIPPED {}: {why}", module_path!());
            return;
        }
    };
}

/// Compiles tests/fixtures/NAME.c (once per test binary) and returns the executable.
pub fn fixture(name: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/{name}.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let fresh = out
        .metadata()
        .and_then(|o| Ok(o.modified()? >= src.metadata()?.modified()?))
        .unwrap_or(false);
    if !fresh {
        let st = Command::new("gcc")
            .args(["-g", "-O0", "-fno-omit-frame-pointer", "-pthread", "-w", "-o"])
            .arg(&out)
            .arg(&src)
            .args(extra)
            .status()
            .expect("run gcc");
        assert!(st.success(), "gcc failed for {}", src.display());
    }
    out
}

/// Lines of a child's pipe, readable with a deadline.
pub struct Lines(mpsc::Receiver<String>);

impl Lines {
    pub fn new(r: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The first line containing `needle`, or a panic naming what was seen instead.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("no line containing {needle:?} within {TIMEOUT:?}; saw: {seen:#?}");
    }

    pub fn rest(&self) -> Vec<String> {
        self.0.try_iter().collect()
    }
}

/// Waits for a child with a deadline; kills it and panics on timeout.
pub fn wait_with_timeout(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {TIMEOUT:?}", child.id());
        }
        // Polling a condition (has it exited?) with a deadline, not sleeping in hope.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (count, bytes) per leak site: the first frame in `module_suffix` names the site.
pub fn sites(report: &serde_json::Value, module_suffix: &str) -> BTreeMap<String, (u64, u64)> {
    sites_by(report, |f| f["module"].as_str().is_some_and(|m| m.ends_with(module_suffix)))
}

/// (count, bytes) per leak site: the first frame that `in_fixture` accepts names it.
pub fn sites_by(
    report: &serde_json::Value,
    in_fixture: impl Fn(&serde_json::Value) -> bool,
) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for p in report["processes"].as_array().expect("processes[]") {
        for s in p["stacks"].as_array().expect("stacks[]") {
            let site = s["frames"]
                .as_array()
                .expect("frames[]")
                .iter()
                .find(|f| in_fixture(f))
                .and_then(|f| f["function"].as_str())
                .unwrap_or("<outside fixture>")
                .to_string();
            let e = out.entry(site).or_insert((0, 0));
            e.0 += s["count"].as_u64().expect("count");
            e.1 += s["bytes"].as_u64().expect("bytes");
        }
    }
    out
}

/// Starts `exe wait` (leaky.c, or a copy of it) and returns it after its "ready pid=" line; it
/// runs until its stdin closes.
pub fn start_waiting(exe: &Path) -> (Child, Lines) {
    let mut fx = Command::new(exe)
        .arg("wait")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::new(fx.stdout.take().unwrap());
    lines.wait_for("ready pid=");
    (fx, lines)
}

/// Runs `cmd` (leaktrace) to its end with stdout discarded: its exit status and stderr, which
/// must hold no panic.
pub fn status_and_stderr(cmd: &mut Command) -> (ExitStatus, String) {
    let mut lt = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = lt.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let st = wait_with_timeout(&mut lt);
    let err = reader.join().unwrap();
    assert!(!err.contains("panicked"), "panic: {err}");
    (st, err)
}

/// The last JSON document of a JSON Lines file.
pub fn last_report(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("read report");
    let last = text.lines().last().expect("a report line");
    serde_json::from_str(last).expect("valid JSON")
}

/// Asserts leaky.c's sites in `got` (from `sites`/`sites_by`): each expected site twice (it runs
/// its leak set on two threads), no absent one, with `only_expected` no other site inside the
/// fixture, and nothing lost.
pub fn check_leaky_sites(
    report: &serde_json::Value,
    got: &BTreeMap<String, (u64, u64)>,
    only_expected: bool,
) {
    for (site, count, bytes) in LEAKY_SITES {
        assert_eq!(
            got.get(*site),
            Some(&(2 * count, 2 * bytes)),
            "site {site}: (count, bytes); all sites: {got:#?}"
        );
    }
    for site in LEAKY_ABSENT {
        assert!(!got.contains_key(*site), "{site} must not be reported: {got:#?}");
    }
    if only_expected {
        let unexpected: BTreeMap<_, _> = got
            .iter()
            .filter(|(s, _)| *s != "<outside fixture>" && !LEAKY_SITES.iter().any(|e| e.0 == s.as_str()))
            .collect();
        assert!(unexpected.is_empty(), "unexpected sites: {unexpected:#?}");
    }
    assert_eq!(report["lost_events"], 0);
    assert_eq!(report["stack_errors"], 0);
}
