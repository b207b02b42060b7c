//! `leaktrace oom` on the real kernel: a fixture leaking inside a 64 MiB memory cgroup until the
//! OOM killer ends it, with and without tracking; a threshold snapshot; and bad input.
mod common;
#[path = "common/cgroup.rs"]
mod cgroup;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use cgroup::{Cgroup, LIMIT, start_watcher};
use common::{Lines, leaktrace, wait_with_timeout};

fn report_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every report of `dir` with the given reason, parsed.
fn reports(dir: &Path, reason: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            if v["reason"] == reason {
                out.push(v);
            }
        }
    }
    out
}

fn check_victim(r: &serde_json::Value, pid: u32, cg: &Cgroup) {
    assert_eq!(r["reason"], "oom_kill");
    let v = &r["victim"];
    assert_eq!(v["pid"], pid);
    assert_eq!(v["comm"], "oomleak");
    let anon = v["anon_rss_kb"].as_u64().unwrap() * 1024;
    assert!(anon > LIMIT * 3 / 4 && anon <= LIMIT + (4 << 20), "anon rss {anon} vs limit {LIMIT}");
    assert_eq!(v["cgroup"], cg.name(), "{r:#}");
    assert_eq!(r["memcg"]["path"], cg.name(), "{r:#}");
    assert_eq!(r["memcg"]["limit_bytes"], LIMIT);
    assert_eq!(r["oom_scope"], "cgroup");
    assert!(r["top_consumers"].as_array().is_some_and(|c| !c.is_empty()));
}

#[test]
fn tracked_victim_report_has_its_leaking_stack() {
    require_kernel!();
    let cg = match Cgroup::new("tracked") {
        Ok(c) => c,
        Err(why) => return eprintln!("SKIPPED tracked_victim_report_has_its_leaking_stack: {why}"),
    };
    let exe = common::fixture("oomleak", &[]);
    let dir = report_dir("oom-tracked");
    let (mut lt, _out, _err) = start_watcher(&dir, &["--once", "--track-comm", "oomleak"]);
    let mut fx = cg.spawn(&exe, &[]);
    let pid = fx.id();
    let st = wait_with_timeout(&mut lt);
    assert!(st.success(), "leaktrace oom exited with {st}");
    wait_with_timeout(&mut fx);

    let rs = reports(&dir, "oom_kill");
    assert_eq!(rs.len(), 1, "one report per kill");
    let r = &rs[0];
    check_victim(r, pid, &cg);
    assert_eq!(r["tracked"], true);
    // The flight recorder: the leaking function holds the memory.
    let top = &r["stacks"][0];
    let site = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["module"].as_str().is_some_and(|m| m.ends_with("/oomleak")))
        .and_then(|f| f["function"].as_str());
    assert_eq!(site, Some("leak_chunk"), "top stack: {top}");
    assert!(top["bytes"].as_u64().unwrap() >= 16 << 20, "{top}");
    assert!(r["rss_trend"]["class"].is_string());
    // Both files exist, private, in a private directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(name.contains(&format!("-{pid}-oomleak.")), "{name}");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "a .json and a .txt");
}

#[test]
fn untracked_victim_still_gets_a_report() {
    require_kernel!();
    let cg = match Cgroup::new("untracked") {
        Ok(c) => c,
        Err(why) => return eprintln!("SKIPPED untracked_victim_still_gets_a_report: {why}"),
    };
    let exe = common::fixture("oomleak", &[]);
    let dir = report_dir("oom-untracked");
    let (mut lt, _out, _err) = start_watcher(&dir, &["--once"]);
    let mut fx = cg.spawn(&exe, &[]);
    let pid = fx.id();
    assert!(wait_with_timeout(&mut lt).success());
    wait_with_timeout(&mut fx);
    let rs = reports(&dir, "oom_kill");
    assert_eq!(rs.len(), 1);
    check_victim(&rs[0], pid, &cg);
    assert_eq!(rs[0]["tracked"], false);
    assert_eq!(rs[0]["stacks"].as_array().unwrap().len(), 0);
}

/// A victim killed and reaped while the watcher was stopped (so its /proc entry is gone, and a
/// zombie's would say "/" anyway): the report still names its memory cgroup, from the cgroup's
/// oom_kill counter, and says how it knows.
#[test]
fn a_victim_gone_before_the_watcher_looks_is_still_placed_in_its_cgroup() {
    require_kernel!();
    let cg = match Cgroup::new("gone") {
        Ok(c) => c,
        Err(why) => return eprintln!("SKIPPED a_victim_gone_before_the_watcher_looks: {why}"),
    };
    let exe = common::fixture("oomleak", &[]);
    let dir = report_dir("oom-gone");
    let (mut lt, _out, _err) = start_watcher(&dir, &["--once"]);
    // SAFETY: signals to our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGSTOP) };
    let mut fx = cg.spawn(&exe, &[]);
    let pid = fx.id();
    wait_with_timeout(&mut fx);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the victim is reaped");
    unsafe { libc::kill(lt.id() as i32, libc::SIGCONT) };
    assert!(wait_with_timeout(&mut lt).success());
    let rs = reports(&dir, "oom_kill");
    assert_eq!(rs.len(), 1);
    let r = &rs[0];
    assert_eq!(r["victim"]["pid"], pid);
    assert_eq!(r["victim"]["cgroup"], cg.name(), "{r:#}");
    assert_eq!(r["memcg"]["limit_bytes"], LIMIT, "{r:#}");
    assert_eq!(r["oom_scope"], "cgroup", "{r:#}");
    let said = r["proc"]["unavailable"].to_string();
    assert!(said.contains("oom_kill counter rose"), "{said}");
}

#[test]
fn threshold_snapshot_before_any_kill() {
    require_kernel!();
    let exe = common::fixture("oomleak", &[]);
    let dir = report_dir("oom-threshold");
    let (mut lt, _out, err) = start_watcher(&dir, &["--track-comm", "oomleak", "--snapshot-rss", "16MiB"]);
    // Grows to 32 MiB, then holds: crosses 16 MiB once.
    let mut fx = Command::new(&exe).arg("32").stdout(Stdio::piped()).spawn().unwrap();
    let fx_out = Lines::new(fx.stdout.take().unwrap());
    fx_out.wait_for("plateau");
    err.wait_for(&format!("tracking pid {}", fx.id()));
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let r = loop {
        if let Some(r) = reports(&dir, "threshold").pop() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no threshold report");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    fx.kill().unwrap();
    wait_with_timeout(&mut fx);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGTERM) };
    assert!(wait_with_timeout(&mut lt).success());
    assert_eq!(r["victim"]["pid"], fx.id());
    assert!(r["threshold"].as_str().unwrap().contains("--snapshot-rss"));
    assert_eq!(r["tracked"], true);
    assert!(r["stacks"][0]["frames"].to_string().contains("leak_chunk"), "{}", r["stacks"]);
    assert_eq!(reports(&dir, "threshold").len(), 1, "once per crossing");
}

fn usage_error(args: &[&str], env: Option<(&str, &str)>, needle: &str) {
    let mut cmd = leaktrace();
    cmd.arg("oom").args(args);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

#[test]
fn bad_input() {
    require_kernel!();
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    usage_error(&["--dir", file.to_str().unwrap()], None, "not a directory");
    usage_error(&["--dir", "/proc/1"], None, "cannot write there");
    let d = report_dir("oom-bad");
    let d = d.to_str().unwrap();
    usage_error(&["--dir", d, "--snapshot-rss", "12parsecs"], None, "--snapshot-rss");
    usage_error(&["--dir", d, "--snapshot-memcg", "150"], None, "--snapshot-memcg");
    let fake = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-tracefs");
    std::fs::create_dir_all(&fake).unwrap();
    usage_error(
        &["--dir", d],
        Some(("LEAKTRACE_TRACEFS", fake.to_str().unwrap())),
        "oom/mark_victim is missing",
    );
}
