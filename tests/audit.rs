//! `leaktrace audit` on the real kernel against fixtures with known behaviour: one leaking at an
//! exact rate (tests/fixtures/rate_leaker.c), a cache that fills and frees (tidal.c) and a steady
//! process (stable.c). Asserts the ranking, the measured rate against the fixture's known rate,
//! the RSS trend of each, the leak site, the exit code of --fail-above, a process in another mount
//! namespace with its own copy of libc, baseline comparison, and bad input.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
};

use serde_json::Value;

use common::{Lines, leaktrace};

/// rate_leaker's default: 10 blocks of 64 KiB a second.
const LEAK_RATE: f64 = 10.0 * 65536.0;
/// stable's pool, allocated before it prints "ready".
const POOL: u64 = 4 << 20;

/// Fixture processes, killed and reaped on drop so that a failing assertion leaks none.
#[derive(Default)]
struct Fixtures(Vec<Child>);

impl Fixtures {
    /// Starts tests/fixtures/NAME.c and returns its PID once it printed "ready pid=".
    fn start(&mut self, name: &str) -> u32 {
        self.spawn(Command::new(common::fixture(name, &[])))
    }

    /// Spawns `cmd` (which ends up exec'ing a fixture) and returns the PID it reports as ready.
    fn spawn(&mut self, mut cmd: Command) -> u32 {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn fixture");
        let lines = Lines::new(child.stdout.take().unwrap());
        self.0.push(child);
        let ready = lines.wait_for("ready pid=");
        ready.trim_start_matches("ready pid=").trim().parse().expect("a PID")
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tmp(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// Runs `leaktrace audit ARGS...` (the groups joined) to completion; returns its status and stderr.
/// Full tracking (`--sample-rate 0`): the rates are compared with known ones within 10%.
fn audit(args: &[&[&str]]) -> (ExitStatus, String) {
    common::status_and_stderr(leaktrace().args(["audit", "--sample-rate", "0"]).args(args.concat()))
}

/// The options that write the report as JSON to `out`.
fn json(out: &Path) -> [&str; 4] {
    ["--format", "json", "-o", out.to_str().unwrap()]
}

/// An audit written with `--format json -o FILE`: one document.
fn report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read report");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

fn process(report: &Value, pid: u32) -> &Value {
    report["processes"]
        .as_array()
        .expect("processes[]")
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not in the report: {report}"))
}

fn rate(p: &Value) -> f64 {
    p["leak_rate_bytes_per_s"].as_f64().expect("leak_rate_bytes_per_s")
}

/// The stack's site: its first frame in the fixture executable.
fn site<'a>(stack: &'a Value, module_suffix: &str) -> Option<&'a str> {
    stack["frames"]
        .as_array()
        .expect("frames[]")
        .iter()
        .find(|f| f["module"].as_str().is_some_and(|m| m.ends_with(module_suffix)))
        .and_then(|f| f["function"].as_str())
}

/// The leaker's rate, its top stack at `leak_block`, and the numbers behind the rate agree.
fn check_leaker(report: &Value, p: &Value, expected_rate: f64) {
    let got = rate(p);
    assert!(
        (got - expected_rate).abs() <= 0.1 * expected_rate,
        "leak rate {got} B/s, fixture leaks {expected_rate} B/s: {p}"
    );
    assert_eq!(p["exited"], false);
    let top = &p["stacks"][0];
    assert_eq!(site(top, "/rate_leaker"), Some("leak_block"), "top stack: {top}");
    assert_eq!(top["bytes"], top["count"].as_u64().unwrap() * 65536, "{top}");
    // leak rate = leaked bytes / (duration - min-age).
    let window =
        report["duration_s"].as_f64().unwrap() - report["min_age_ms"].as_f64().unwrap() / 1000.0;
    let leaked = p["leaked_bytes"].as_f64().unwrap();
    assert!((leaked / window - got).abs() <= 0.02 * got, "{leaked} B over {window} s vs {got}");
}

#[test]
fn ranks_leaker_first_with_its_rate_and_classifies_rss_trends() {
    require_kernel!();
    let mut fx = Fixtures::default();
    let leaker = fx.start("rate_leaker");
    let tidal = fx.start("tidal");
    let stable = fx.start("stable");
    let out = tmp("audit-three.json");
    let (l, t, s) = (leaker.to_string(), tidal.to_string(), stable.to_string());
    let (st, err) = audit(&[
        &["-p", &l, "-p", &t, "-p", &s],
        &["--duration", "8s", "--min-age", "3s"],
        &json(&out),
    ]);
    assert_eq!(st.code(), Some(0), "no --fail-above: exit 0; stderr: {err}");
    let r = report(&out);
    assert_eq!(r["min_age_ms"], 3000);
    assert_eq!(r["baseline_file"], Value::Null);
    assert_eq!(r["lost_events"], 0);
    assert_eq!(r["stack_errors"], 0);

    let procs = r["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 3, "{procs:#?}");
    assert_eq!(procs[0]["pid"], leaker, "the leaker ranks first: {procs:#?}");
    assert!(procs.windows(2).all(|w| rate(&w[0]) >= rate(&w[1])), "ordered by rate: {procs:#?}");

    let p = process(&r, leaker);
    assert_eq!(p["comm"], "rate_leaker");
    assert!(p["exe"].as_str().is_some_and(|e| e.ends_with("/rate_leaker")), "{}", p["exe"]);
    check_leaker(&r, p, LEAK_RATE);
    assert_eq!(p["rss_trend"], "growing", "{}", p["rss"]);
    assert_eq!(p["rss"]["class"], "growing");
    assert!(p["rss_slope_bytes_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(p["baseline"], Value::Null);

    // The cache frees every block within 1.6 s: nothing outlives --min-age.
    let t = process(&r, tidal);
    assert_eq!(t["rss_trend"], "tidal", "{}", t["rss"]);
    assert_eq!(rate(t), 0.0, "{t}");
    assert_eq!(t["leaked_bytes"], 0);

    // The pool was allocated before the audit attached: not made during the window.
    let s = process(&r, stable);
    assert_eq!(s["rss_trend"], "flat", "{}", s["rss"]);
    assert_eq!(rate(s), 0.0, "{s}");
    assert_eq!(s["leaked_bytes"], 0);
    assert!(s["outstanding_bytes"].as_u64().unwrap() < POOL, "pool counted: {s}");

    // Freed or young blocks are never reported as leaks; every old block is leak_block's.
    let min_age = r["min_age_ms"].as_u64().unwrap();
    for p in procs {
        for stack in p["stacks"].as_array().unwrap() {
            let s = ["/rate_leaker", "/tidal", "/stable"].iter().find_map(|m| site(stack, m));
            let old = stack["oldest_age_ms"].as_u64().unwrap() >= min_age;
            if let Some(s) = s.filter(|_| old) {
                assert_eq!(s, "leak_block", "pid {}: {stack}", p["pid"]);
            }
        }
    }
}

#[test]
fn fail_above_sets_the_exit_code() {
    require_kernel!();
    let mut fx = Fixtures::default();
    let pid = fx.start("rate_leaker").to_string();
    let window = ["--duration", "4s", "--min-age", "1s", "-p", &pid];
    let out = tmp("audit-fail-above.json");
    let (st, err) = audit(&[&window, &["--fail-above", "320KiB/s"], &json(&out)]);
    assert_eq!(st.code(), Some(1), "640 KiB/s is above 320KiB/s; stderr: {err}");
    // The report is written all the same.
    let r = report(&out);
    check_leaker(&r, process(&r, pid.parse().unwrap()), LEAK_RATE);
    let (st, err) = audit(&[&window, &["--fail-above", "2MiB/s"]]);
    assert_eq!(st.code(), Some(0), "640 KiB/s is below 2MiB/s; stderr: {err}");
}

/// The path libc.so.6 is mapped from in this test binary, if any.
fn system_libc() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libc.so.6"))
        .map(str::to_string)
}

#[test]
fn another_mount_namespace_with_its_own_libc() {
    require_kernel!();
    let name = module_path!();
    if Command::new("unshare").arg("--version").output().is_err() {
        return eprintln!("SKIPPED {name}: unshare (util-linux) is missing");
    }
    if !Command::new("unshare").args(["-m", "true"]).status().is_ok_and(|s| s.success()) {
        return eprintln!("SKIPPED {name}: `unshare -m` cannot create a mount namespace here");
    }
    let Some(libc) = system_libc() else {
        return eprintln!("SKIPPED {name}: this test binary maps no libc.so.6 to copy");
    };
    // Mounted on inside the new namespace only: from here it stays an empty directory.
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("audit-mntns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = format!("{}/libc.so.6", dir.display());
    let leaker = common::fixture("rate_leaker", &[]);
    let mut fx = Fixtures::default();
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c"])
        .arg(r#"mount -t tmpfs none "$1" && cp "$2" "$1/libc.so.6" && LD_LIBRARY_PATH="$1" exec "$3""#)
        .arg("sh")
        .args([dir.as_os_str(), libc.as_ref(), leaker.as_os_str()]);
    let pid = fx.spawn(cmd);

    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mapped: Vec<&str> = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
    assert!(mapped.contains(&copy.as_str()), "{pid} does not map {copy}: {maps}");
    assert!(!mapped.contains(&libc.as_str()), "{pid} maps the system {libc}: {maps}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the tmpfs leaked out of its namespace"
    );

    let out = tmp("audit-mntns.json");
    let p = pid.to_string();
    let (st, err) = audit(&[&["-p", &p, "--duration", "5s", "--min-age", "1s"], &json(&out)]);
    drop(fx);
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(st.code(), Some(0), "stderr: {err}");
    let r = report(&out);
    let libs: Vec<&str> = r["libraries"]
        .as_array()
        .expect("libraries[]")
        .iter()
        .filter_map(|l| l["path"].as_str())
        .collect();
    assert!(libs.contains(&copy.as_str()), "{copy} not among the probed libraries: {libs:?}");
    check_leaker(&r, process(&r, pid), LEAK_RATE);
}

#[test]
fn baseline_shows_growth() {
    require_kernel!();
    let mut fx = Fixtures::default();
    let pid = fx.start("rate_leaker");
    let first = tmp("audit-baseline-1.json");
    let second = tmp("audit-baseline-2.json");
    let p = pid.to_string();
    let (st, err) = audit(&[&["-p", &p, "--duration", "3s", "--min-age", "1s"], &json(&first)]);
    assert_eq!(st.code(), Some(0), "stderr: {err}");
    // A longer second window over the same steady leak: more outstanding, the same rate.
    let (st, err) = audit(&[
        &["-p", &p, "--duration", "5s", "--min-age", "1s"],
        &["--baseline", first.to_str().unwrap()],
        &json(&second),
    ]);
    assert_eq!(st.code(), Some(0), "stderr: {err}");
    let r = report(&second);
    let file = r["baseline_file"].as_str().expect("baseline_file");
    assert!(file.ends_with("audit-baseline-1.json"), "{file}");
    let p = process(&r, pid);
    check_leaker(&r, p, LEAK_RATE);
    let b = &p["baseline"];
    assert_eq!(b["matched_pid"], pid, "matched by exe and cmdline: {b}");
    assert!(b["outstanding_bytes_delta"].as_i64().is_some_and(|d| d > 0), "{b}");
    let rate_delta =
        b["leak_rate_delta_bytes_per_s"].as_f64().expect("leak_rate_delta_bytes_per_s");
    assert!(rate_delta.abs() <= 0.2 * LEAK_RATE, "same steady leak, rate delta {rate_delta}");
    let top = &p["stacks"][0];
    assert_eq!(site(top, "/rate_leaker"), Some("leak_block"));
    assert!(top["baseline_delta_bytes"].as_i64().is_some_and(|d| d > 0), "{top}");
}

/// Exit 2, exactly one stderr line containing every needle, no panic.
fn assert_usage_error(args: &[&[&str]], needles: &[&str]) {
    let (st, err) = audit(args);
    assert_eq!(st.code(), Some(2), "{args:?}: stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line expected: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in {err:?}");
    }
}

#[test]
fn bad_input() {
    require_kernel!();
    let mut fx = Fixtures::default();
    let stable = fx.start("stable").to_string();
    // Short windows throughout, so that a check that is missing costs seconds, not minutes.
    let short = ["--duration", "2s", "--min-age", "1s"];

    let missing = (4_000_000..4_194_304)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
        .to_string();
    assert_usage_error(&[&short, &["-p", &missing]], &[&missing, "does not exist"]);
    // At most 15 characters, so that it is a possible comm (TASK_COMM_LEN) that matches nothing.
    let nomatch = ["nosuchname-xyz", "matches no process"];
    assert_usage_error(&[&short, &["--comm", "nosuchname-xyz"]], &nomatch);
    assert_usage_error(&[&short, &["--cgroup", "/no/such/cgroup"]], &["/no/such/cgroup", "cgroup"]);
    let not_audit = tmp("audit-not-a-report.json");
    std::fs::write(&not_audit, br#"{"x":1}"#).unwrap();
    let baseline = ["--baseline", not_audit.to_str().unwrap()];
    assert_usage_error(&[&short, &["-p", &stable], &baseline], &["not an audit"]);
    let zero = ["-p", &stable, "--duration", "0s"];
    assert_usage_error(&[&zero], &["--duration", "more than zero"]);
    let inverted = ["-p", &stable, "--duration", "2s", "--min-age", "5s"];
    assert_usage_error(&[&inverted], &["longer than --min-age"]);
    let parsecs = ["-p", &stable, "--fail-above", "12parsecs"];
    assert_usage_error(&[&short, &parsecs], &["--fail-above", "12parsecs"]);

    // One name that matches and one that does not: audit what matches, warn about the rest.
    let out = tmp("audit-comm-warning.json");
    let comms = ["--comm", "nosuchname-xyz", "--comm", "stable"];
    let (st, err) = audit(&[&short, &comms, &json(&out)]);
    assert_eq!(st.code(), Some(0), "stderr: {err}");
    assert!(err.lines().any(|l| l.contains("nosuchname-xyz")), "no warning naming it: {err}");
    process(&report(&out), stable.parse().unwrap());
}
