//! Binaries as they are shipped, beyond the dynamically linked glibc program: the leaky fixture
//! under mimalloc (probed on emulated instructions, never single-stepped), chrooted with its own
//! copy of libc and the loader (traced by PID, with symbols), and linked statically (chains that
//! end at the program's entry, without junk frames past it).
mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{Lines, last_report, leaktrace, sites, wait_with_timeout};


const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// tests/fixtures/leaky.c built as `name` with `flags` (common::fixture keeps one build per
/// fixture name; these are variants of it).
fn leaky_variant(name: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/leaky.c");
    let out = tmp(name);
    let st = Command::new("gcc")
        .args(["-g", "-O0", "-fno-omit-frame-pointer", "-pthread", "-w", "-o"])
        .arg(&out)
        .arg(&src)
        .args(flags)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc failed for {name} ({flags:?})");
    out
}

/// The sites of the fixture named by its file name `exe_name`: exact counts and bytes, the
/// freed and failed ones absent, nothing lost.
fn check_sites(report: &serde_json::Value, exe_name: &str) {
    common::check_leaky_sites(report, &sites(report, &format!("/{exe_name}")), true);
}

/// As `check_sites`, for a static executable, which holds libc too: a site is the first frame
/// in the fixture's source file. The runtime's own allocations (the static loader's) are let be.
fn check_static_sites(report: &serde_json::Value) {
    let got = common::sites_by(report, |f| f["file"].as_str().is_some_and(|m| m.ends_with("/leaky.c")));
    common::check_leaky_sites(report, &got, false);
}

/// Every frame of every stack, as (function, module).
fn frames(report: &serde_json::Value) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in report["processes"].as_array().expect("processes[]") {
        for s in p["stacks"].as_array().expect("stacks[]") {
            let chain = s["frames"]
                .as_array()
                .expect("frames[]")
                .iter()
                .map(|f| {
                    (
                        f["function"].as_str().unwrap_or("").to_string(),
                        f["module"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            out.push(chain);
        }
    }
    out
}

/// Launches `exe` under `leaktrace trace`; returns the final JSON report and leaktrace's stderr.
fn launch(exe: &Path, report_name: &str) -> (serde_json::Value, String) {
    let out = tmp(report_name);
    let lt = leaktrace()
        .args(["trace", "--min-age", "0s", "--top", "1000", "--format", "json", "-o"])
        .arg(&out)
        .arg("--")
        .arg(exe)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = lt.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "leaktrace exited with {}; stderr: {stderr}", output.status);
    (last_report(&out), stderr)
}

/// Starts `cmd` (the leaky fixture with `wait`, however run), traces it by PID through its
/// leak set and returns the final JSON report and leaktrace's stderr.
fn trace_by_pid(mut cmd: Command, report_name: &str) -> (serde_json::Value, Vec<String>) {
    let mut fx = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let fx_out = Lines::new(fx.stdout.take().unwrap());
    let ready = fx_out.wait_for("ready pid=");
    let pid: u32 = ready.trim_start_matches("ready pid=").parse().unwrap();

    let out = tmp(report_name);
    // To a file rather than a pipe: the warnings of attach come before "tracing pid", and all
    // of them are wanted.
    let err_path = tmp(&format!("{report_name}.stderr"));
    let err_file = std::fs::File::create(&err_path).unwrap();
    let mut lt = leaktrace()
        .args(["trace", "-p", &pid.to_string(), "--min-age", "0s", "--top", "1000"])
        .args(["--format", "json", "-o"])
        .arg(&out)
        .stderr(err_file)
        .spawn()
        .unwrap();
    let stderr_text = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while !stderr_text().contains(&format!("tracing pid {pid}")) {
        let exited = lt.try_wait().unwrap();
        assert!(
            exited.is_none() && std::time::Instant::now() < deadline,
            "leaktrace did not attach ({exited:?}): {}",
            stderr_text()
        );
        // Polling a condition (has it attached?) with a deadline.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Attached: the fixture frees its pre-attach blocks, then leaks.
    let mut stdin = fx.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    fx_out.wait_for("done");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGINT) };
    let st = wait_with_timeout(&mut lt);
    let stderr: Vec<String> = stderr_text().lines().map(str::to_string).collect();
    assert!(st.success(), "leaktrace exited with {st}; stderr: {stderr:?}");
    drop(stdin);
    wait_with_timeout(&mut fx);
    (last_report(&out), stderr)
}

#[test]
fn mimalloc_is_traced_exactly_without_single_stepping() {
    require_kernel!();
    if !Path::new(MIMALLOC).exists() {
        eprintln!("SKIPPED mimalloc: {MIMALLOC} is missing (cargo xtask setup installs libmimalloc2.0)");
        return;
    }
    // Linked before libc, so mimalloc's malloc family is the one the program calls. By PID:
    // launch mode probes only the executable and the C library.
    let exe = leaky_variant("leaky_mimalloc", &["-Wl,--no-as-needed", MIMALLOC]);
    let mut cmd = Command::new(&exe);
    cmd.arg("wait");
    let (report, stderr) = trace_by_pid(cmd, "mimalloc.json");
    assert!(
        stderr.iter().any(|l| l.contains("libmimalloc.so")),
        "mimalloc not probed: {stderr:?}"
    );
    // Exact sites also show mimalloc's functions were probed: its malloc never calls glibc's.
    check_sites(&report, "leaky_mimalloc");
    let stepped: Vec<_> = stderr.iter().filter(|l| l.contains("single-steps")).collect();
    assert!(stepped.is_empty(), "hot mimalloc functions single-stepped: {stepped:#?}");
}

/// Copies `from` to `root` + `to`, creating directories.
fn install(root: &Path, from: &Path, to: &str) {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), dest.display()));
}

#[test]
fn a_chrooted_process_is_traced_by_pid_with_symbols() {
    require_kernel!();
    let exe = leaky_variant("leaky_chroot", &[]);
    let root = tmp("chroot-root");
    let _ = std::fs::remove_dir_all(&root);
    // Its own copies: inside the root the files live at the usual paths; from outside, at
    // paths under `root` that the process's /proc/PID/maps shows as they are in its root.
    install(&root, &exe, "/fixture");
    install(&root, Path::new("/lib/x86_64-linux-gnu/libc.so.6"), "/lib/x86_64-linux-gnu/libc.so.6");
    install(&root, Path::new("/lib64/ld-linux-x86-64.so.2"), "/lib64/ld-linux-x86-64.so.2");

    let mut cmd = Command::new("chroot");
    cmd.arg(&root).args(["/fixture", "wait"]);
    let (report, _) = trace_by_pid(cmd, "chroot.json");
    // The module is named as the process sees it: /fixture.
    check_sites(&report, "fixture");
    // Symbols all the way up: main on the main thread's chains, and libc's frames named.
    let chains = frames(&report);
    assert!(
        chains.iter().any(|c| c.iter().any(|f| f.0 == "main")),
        "no chain reaches main: {chains:#?}"
    );
    let libc_frames: Vec<_> = chains.concat().into_iter().filter(|f| f.1.ends_with("libc.so.6")).collect();
    assert!(!libc_frames.is_empty() && libc_frames.iter().all(|f| !f.0.is_empty()), "{libc_frames:#?}");
}

#[test]
fn a_static_binary_s_chains_end_at_its_entry() {
    require_kernel!();
    if !Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists() {
        eprintln!("SKIPPED static: libc.a is missing (package libc6-dev)");
        return;
    }
    let exe = leaky_variant("leaky_static", &["-static"]);
    let (report, _) = launch(&exe, "static.json");
    check_static_sites(&report);
    let chains = frames(&report);
    let fixture_chains: Vec<_> = chains
        .iter()
        .filter(|c| c.iter().any(|f| f.0.starts_with("leak_")))
        .collect();
    assert!(!fixture_chains.is_empty(), "{chains:#?}");
    for chain in &fixture_chains {
        for (function, module) in *chain {
            assert!(
                !function.is_empty() && function != "register_tm_clones",
                "junk frame ({function:?} in {module:?}) in {chain:#?}"
            );
        }
        // The walk ends where the thread's frame pointers do: in the C library's start of the
        // main thread (built without frame pointers, so the last it can see is main's caller),
        // or in start_thread.
        let last = chain.last().map(|f| f.0.as_str()).unwrap_or("");
        assert!(
            ["__libc_start_call_main", "__libc_start_main", "_start", "start_thread"].contains(&last),
            "chain ends in {last:?}: {chain:#?}"
        );
    }
}
