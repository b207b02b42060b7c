//! `leaktrace trace` on the real kernel against tests/fixtures/leaky.c: every allocation API's
//! site with its exact count and bytes, in launch mode and attached by PID, and what must not be
//! reported (freed pairs, failed calloc, unmapped regions, blocks allocated before attach and
//! freed after, the allocator's own mmaps).
mod common;

use std::{io::Write, process::Stdio};

use common::{
    LEAKY_SITES as EXPECTED, Lines, last_report, leaktrace, sites,
    wait_with_timeout,
};


fn check_sites(report: &serde_json::Value) {
    let got = sites(report, "/leaky");
    common::check_leaky_sites(report, &got, true);
    // glibc reserves 64 MiB per thread arena with mmap inside malloc: never a leak of its own.
    for p in report["processes"].as_array().unwrap() {
        for s in p["stacks"].as_array().unwrap() {
            assert!(s["bytes"].as_u64().unwrap() < 32 << 20, "allocator mmap counted: {s}");
        }
    }
}

/// Launches the leaky fixture under `leaktrace trace` with `extra` options and returns the final
/// JSON report, written to `name` in the test directory.
fn launch_leaky(name: &str, extra: &[&str]) -> serde_json::Value {
    let leaky = common::fixture("leaky", &[]);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let mut lt = leaktrace()
        .args(["trace", "--min-age", "0s", "--top", "1000", "--format", "json", "-o"])
        .arg(&out)
        .args(extra)
        .arg("--")
        .arg(&leaky)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The command exits by itself; leaktrace ends when its target has exited.
    let st = wait_with_timeout(&mut lt);
    assert!(st.success(), "leaktrace exited with {st}");
    last_report(&out)
}

#[test]
fn launch_mode_reports_every_site_exactly() {
    require_kernel!();
    let report = launch_leaky("launch.json", &[]);
    assert_eq!(report["report"], "final");
    let procs = report["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0]["exited"], true);
    assert_eq!(procs[0]["comm"], "leaky");
    check_sites(&report);
    // Nothing but the fixture's sites: the runtime's thread stack and TLS (inside
    // pthread_create) and the loader's own mappings are not the program's leaks.
    let expected: u64 = EXPECTED.iter().map(|e| 2 * e.2).sum();
    assert_eq!(procs[0]["leaked_bytes"], expected, "{:#}", procs[0]["stacks"]);
    assert!(procs[0]["loader_bytes"].as_u64().unwrap() > 0, "launch mode sees the loader");
    // Frames carry file and line from DWARF.
    let text = report.to_string();
    assert!(text.contains("leaky.c"), "no source file in frames");
}

/// Allocator calls in flight live in a per-thread array slot; a thread whose slot another holds
/// (ids equal modulo the slot count: possible where pid_max exceeds it) falls back to a map.
/// With every call forced onto that fallback the report must be as exact.
#[test]
fn the_in_flight_fallback_map_is_exact_too() {
    require_kernel!();
    let report = launch_leaky("overflow.json", &["--pending-overflow-only"]);
    check_sites(&report);
    assert_eq!(report["missed_returns"], 0, "{report:#}");
    let expected: u64 = EXPECTED.iter().map(|e| 2 * e.2).sum();
    assert_eq!(report["processes"][0]["leaked_bytes"], expected);
}

#[test]
fn pid_mode_reports_sites_and_ignores_blocks_from_before_attach() {
    require_kernel!();
    let leaky = common::fixture("leaky", &[]);
    let mut fx = std::process::Command::new(&leaky)
        .arg("wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let fx_out = Lines::new(fx.stdout.take().unwrap());
    let ready = fx_out.wait_for("ready pid=");
    let pid: u32 = ready.trim_start_matches("ready pid=").parse().unwrap();
    assert_eq!(pid, fx.id());

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pid.json");
    let mut lt = leaktrace()
        .args(["trace", "-p", &pid.to_string(), "--min-age", "0s", "--top", "1000"])
        .args(["--format", "json", "-o"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lt_err = Lines::new(lt.stderr.take().unwrap());
    lt_err.wait_for(&format!("tracing pid {pid}"));

    // Attached: the fixture frees its pre-attach blocks, then leaks.
    let mut stdin = fx.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    fx_out.wait_for("done");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGINT) };
    let st = wait_with_timeout(&mut lt);
    assert!(st.success(), "leaktrace exited with {st}; stderr: {:?}", lt_err.rest());
    drop(stdin);
    wait_with_timeout(&mut fx);

    let report = last_report(&out);
    let procs = report["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0]["pid"], pid);
    assert_eq!(procs[0]["exited"], false);
    check_sites(&report);
    // The 555-byte blocks were allocated before attach and freed after: unknown frees, ignored.
    assert!(!report.to_string().contains("pre_attach_alloc"));
}

#[test]
fn min_age_hides_young_blocks() {
    require_kernel!();
    let leaky = common::fixture("leaky", &[]);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("minage.json");
    let mut lt = leaktrace()
        .args(["trace", "--min-age", "1h", "--format", "json", "-o"])
        .arg(&out)
        .arg("--")
        .arg(&leaky)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_with_timeout(&mut lt).success());
    let report = last_report(&out);
    let p = &report["processes"][0];
    assert_eq!(p["stacks"].as_array().unwrap().len(), 0);
    assert_eq!(p["leaked_bytes"], 0);
    // Outstanding still counts them: young is not freed.
    assert!(p["outstanding_bytes"].as_u64().unwrap() >= 2 * 262144);
}

/// Starts `leaky wait` and returns it with its stdout lines, after its "ready" line.
fn start_waiting_fixture() -> (std::process::Child, Lines) {
    common::start_waiting(&common::fixture("leaky", &[]))
}

#[test]
fn two_pids_at_once_with_interval_reports_and_sigterm() {
    require_kernel!();
    let (mut a, a_out) = start_waiting_fixture();
    let (mut b, b_out) = start_waiting_fixture();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("two.json");
    let mut lt = leaktrace()
        .args(["trace", "-p", &a.id().to_string(), "-p", &b.id().to_string()])
        .args(["--min-age", "0s", "--top", "1000", "--interval", "100ms"])
        .args(["--format", "json", "-o"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lt_err = Lines::new(lt.stderr.take().unwrap());
    lt_err.wait_for(&format!("tracing pid {}", a.id()));
    lt_err.wait_for(&format!("tracing pid {}", b.id()));
    let mut a_in = a.stdin.take().unwrap();
    let mut b_in = b.stdin.take().unwrap();
    a_in.write_all(b"go\n").unwrap();
    b_in.write_all(b"go\n").unwrap();
    a_out.wait_for("done");
    b_out.wait_for("done");
    // Wait until an interval report written after both finished shows both leaking.
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let seen = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        if seen.into_iter().any(|r| {
            r["report"] == "interval"
                && r["processes"].as_array().is_some_and(|p| {
                    p.len() == 2 && p.iter().all(|p| p["leaked_bytes"].as_u64() > Some(262144))
                })
        }) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no interval report: {text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGTERM) };
    assert!(wait_with_timeout(&mut lt).success());
    drop((a_in, b_in));
    wait_with_timeout(&mut a);
    wait_with_timeout(&mut b);

    let report = last_report(&out);
    assert_eq!(report["report"], "final");
    let procs = report["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 2);
    // Both processes use the same addresses; keyed by (pid, address) they do not collide.
    for p in procs {
        let one = serde_json::json!({ "processes": [p] });
        let got = sites(&one, "/leaky");
        for (site, count, bytes) in EXPECTED {
            assert_eq!(got.get(*site), Some(&(2 * count, 2 * bytes)), "pid {}: {site}", p["pid"]);
        }
    }
}
