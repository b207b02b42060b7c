//! `leaktrace trace --format pprof` on the real kernel against tests/fixtures/leaky.c, read back
//! by the real `go tool pprof`: every leak site with its exact in-use bytes and objects, source
//! lines for `-list`, and freed allocations present in `alloc_space` but absent from
//! `inuse_space`.
mod common;

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{LEAKY_SITES as EXPECTED, leaktrace, wait_with_timeout};


/// Runs `cmd` to completion with a deadline, collecting its output.
fn output_with_deadline(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        // Polling a condition (has it exited?) with a deadline, not sleeping in hope.
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `go`, installed from Debian's golang-go when missing; the reason when it cannot be had.
fn go_tool() -> Result<(), String> {
    let works = || {
        Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works() {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        let o = output_with_deadline(
            Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .args(args),
            Duration::from_secs(900),
        );
        o.status.success()
    };
    let install = ["install", "-y", "--no-install-recommends", "golang-go"];
    if Command::new("apt-get").arg("--version").output().is_err() {
        return Err("go is missing and there is no apt-get to install golang-go".into());
    }
    // The package lists may be stale or absent: update only when the install fails.
    let installed = apt(&install) || (apt(&["update"]) && apt(&install));
    if !installed {
        return Err("go is missing and `apt-get install golang-go` failed".into());
    }
    if works() {
        Ok(())
    } else {
        Err("golang-go installed but `go version` fails".into())
    }
}

/// `go tool pprof ARGS PROFILE`, kept off the network and out of the user's home.
fn pprof(profile: &Path, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pprof-go");
    let dirs: Vec<PathBuf> = ["home", "cache", "path"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let o = output_with_deadline(
        Command::new("go")
            .args(["tool", "pprof"])
            .args(args)
            .arg(profile)
            .env("HOME", &dirs[0])
            .env("GOCACHE", &dirs[1])
            .env("GOPATH", &dirs[2])
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env_remove("PPROF_BINARY_PATH"),
        common::TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("$ go tool pprof {}\n{stdout}{stderr}", args.join(" "));
    assert!(
        o.status.success(),
        "go tool pprof {args:?} failed: {stderr}"
    );
    stdout
}

/// Function name -> cum value from `go tool pprof -top -unit=B` (plain numbers, a `B` after
/// them). Cum, not flat: where a site's stack goes on into the C library (mmap), the library's
/// frame holds the flat value.
fn top_cum(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut in_table = false;
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first() == Some(&"flat") {
            in_table = true;
            continue;
        }
        if !in_table || cols.len() < 6 {
            continue;
        }
        let value = |s: &str| s.trim_end_matches('B').parse::<u64>();
        let cum = value(cols[3]).unwrap_or_else(|e| panic!("cum column of {line:?}: {e}"));
        out.insert(cols[5..].join(" "), cum);
    }
    assert!(in_table, "no -top table in:\n{text}");
    out
}

#[test]
fn go_tool_pprof_reads_every_site() {
    require_kernel!();
    if let Err(why) = go_tool() {
        eprintln!("SKIPPED {}: {why}", module_path!());
        return;
    }
    let leaky = common::fixture("leaky", &[]);
    let profile = Path::new(env!("CARGO_TARGET_TMPDIR")).join("leaky.pb.gz");
    let _ = std::fs::remove_file(&profile);
    let mut lt = leaktrace()
        .args(["trace", "--min-age", "0s", "--format", "pprof", "-o"])
        .arg(&profile)
        .arg("--")
        .arg(&leaky)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Launch mode: leaktrace ends when the fixture has exited.
    let st = wait_with_timeout(&mut lt);
    assert!(st.success(), "leaktrace exited with {st}");
    let gz = std::fs::read(&profile).expect("profile written");
    assert_eq!(&gz[..2], b"\x1f\x8b", "gzip-compressed");

    // `-unit=B`: plain byte counts, not "7.81kB". pprof appends that unit to counts as well.
    let top = |index: &str| {
        let index = format!("-sample_index={index}");
        let args = [
            "-top",
            "-nodecount=1000",
            "-nodefraction=0",
            "-unit=B",
            &index,
        ];
        top_cum(&pprof(&profile, &args))
    };
    let inuse_space = top("inuse_space");
    let inuse_objects = top("inuse_objects");
    for (site, count, bytes) in EXPECTED {
        assert_eq!(
            inuse_space.get(*site),
            Some(&(2 * bytes)),
            "{site} inuse_space: {inuse_space:#?}"
        );
        assert_eq!(
            inuse_objects.get(*site),
            Some(&(2 * count)),
            "{site} inuse_objects: {inuse_objects:#?}"
        );
    }
    assert!(
        !inuse_space.contains_key("pair_malloc_free"),
        "freed blocks in use: {inuse_space:#?}"
    );
    assert!(
        !inuse_space.contains_key("munmap_pair"),
        "unmapped region in use: {inuse_space:#?}"
    );

    // Everything allocated, freed or not.
    let alloc_space = top("alloc_space");
    assert_eq!(
        alloc_space.get("pair_malloc_free"),
        Some(&(2 * 5 * 777)),
        "{alloc_space:#?}"
    );
    assert_eq!(
        alloc_space.get("leak_malloc"),
        Some(&(2 * 4000)),
        "{alloc_space:#?}"
    );

    // Source lines from the DWARF line info leaktrace put in the profile.
    let list = pprof(
        &profile,
        &[
            "-list=^leak_malloc$",
            "-sample_index=inuse_space",
            "-unit=B",
        ],
    );
    let line = list
        .lines()
        .find(|l| l.contains("malloc(1000)"))
        .unwrap_or_else(|| panic!("no source line with malloc(1000) in:\n{list}"));
    assert!(
        line.contains("8000B"),
        "leaked bytes on the malloc(1000) line: {line:?}"
    );

    // The labels select a process.
    let tags = pprof(&profile, &["-tags"]);
    assert!(
        tags.contains("comm") && tags.contains("leaky"),
        "comm label: {tags}"
    );
    assert!(tags.contains("pid"), "pid label: {tags}");
}
