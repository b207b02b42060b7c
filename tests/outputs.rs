//! Output formats on real traces: a flame graph of the fixture's leaks, growth between interval
//! reports, `leaktrace diff` of two saved reports, and `--group-by function`.
mod common;

use std::{io::Write, path::Path, process::Stdio};

use common::{Lines, last_report, leaktrace, wait_with_timeout};

fn tmp(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// Traces the leaky fixture in launch mode into `out` with extra options.
fn trace_leaky(out: &Path, extra: &[&str]) {
    let leaky = common::fixture("leaky", &[]);
    let mut lt = leaktrace()
        .arg("trace")
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg("--")
        .arg(&leaky)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_with_timeout(&mut lt).success());
}

#[test]
fn flame_graph_shows_the_leak_sites() {
    require_kernel!();
    let out = tmp("leaky.svg");
    trace_leaky(&out, &["--min-age", "0s", "--format", "svg"]);
    let text = std::fs::read_to_string(&out).unwrap();
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, opts).expect("well-formed SVG");
    let titles: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text())
        .collect();
    for site in ["leak_malloc", "leak_calloc", "leak_mmap", "leak_big_malloc", "leak_memalign"] {
        assert!(titles.iter().any(|t| t.starts_with(site)), "{site} not in {titles:?}");
    }
    assert!(!titles.iter().any(|t| t.starts_with("pair_malloc_free")));
}

#[test]
fn group_by_function_merges_threads() {
    require_kernel!();
    let out = tmp("grouped.json");
    trace_leaky(&out, &["--min-age", "0s", "--top", "100", "--group-by", "function", "--format", "json"]);
    let r = last_report(&out);
    assert_eq!(r["group_by"], "function");
    let stacks = r["processes"][0]["stacks"].as_array().unwrap();
    // The two threads' stacks of one site are one group, with one frame.
    let malloc: Vec<_> = stacks.iter().filter(|s| s["frames"][0]["function"] == "leak_malloc").collect();
    assert_eq!(malloc.len(), 1, "{stacks:#?}");
    assert_eq!((malloc[0]["count"].as_u64(), malloc[0]["bytes"].as_u64()), (Some(8), Some(8000)));
    assert_eq!(malloc[0]["frames"].as_array().unwrap().len(), 1);
}

#[test]
fn interval_reports_show_growth() {
    require_kernel!();
    let leaky = common::fixture("leaky", &[]);
    let mut fx = std::process::Command::new(&leaky)
        .arg("wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let fx_out = Lines::new(fx.stdout.take().unwrap());
    fx_out.wait_for("ready pid=");
    let out = tmp("interval.json");
    let _ = std::fs::remove_file(&out);
    let mut lt = leaktrace()
        .args(["trace", "-p", &fx.id().to_string(), "--min-age", "0s", "--top", "100"])
        .args(["--interval", "100ms", "--format", "json", "-o"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Lines::new(lt.stderr.take().unwrap());
    err.wait_for("tracing pid");
    let reports = |min: usize| -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + common::TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let v: Vec<serde_json::Value> =
                text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            if v.len() >= min {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "fewer than {min} reports");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // One report before the leaks, then the leaks, then two more reports.
    let before = reports(1).len();
    let mut stdin = fx.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    fx_out.wait_for("done");
    let all = reports(before + 3);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGINT) };
    assert!(wait_with_timeout(&mut lt).success());
    drop(stdin);
    wait_with_timeout(&mut fx);

    let site = |r: &serde_json::Value| -> Option<serde_json::Value> {
        r["processes"][0]["stacks"]
            .as_array()?
            .iter()
            .find(|s| s["frames"].to_string().contains("leak_big_malloc"))
            .cloned()
    };
    let first_seen = all.iter().position(|r| site(r).is_some()).expect("the site appears");
    let s = site(&all[first_seen]).unwrap();
    let g = &s["growth"];
    // It appeared all at once: everything is growth since the previous and the first report.
    assert_eq!(g["bytes_since_previous"], s["bytes"], "{s}");
    assert_eq!(g["bytes_since_first"], s["bytes"]);
    let later = site(&all[first_seen + 1]).expect("still there");
    assert_eq!(later["growth"]["bytes_since_previous"], 0, "{later}");
    assert_eq!(later["growth"]["bytes_since_first"], later["bytes"]);
}

#[test]
fn diff_of_two_saved_reports() {
    require_kernel!();
    let old = tmp("diff-old.json");
    let new = tmp("diff-new.json");
    // The same program: nothing old enough in the first, everything in the second.
    trace_leaky(&old, &["--min-age", "1h", "--format", "json"]);
    trace_leaky(&new, &["--min-age", "0s", "--top", "100", "--format", "json"]);
    let out = leaktrace()
        .arg("diff")
        .arg(&old)
        .arg(&new)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &d["processes"][0];
    assert_eq!(p["matched_by"], "comm");
    let grew: Vec<_> = p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["frames"].to_string().contains("\"leak_malloc\""))
        .collect();
    let total: i64 = grew.iter().map(|s| s["bytes_delta"].as_i64().unwrap()).sum();
    assert_eq!(total, 8000);
    // Text form, and unrelated files.
    let text = leaktrace().arg("diff").arg(&old).arg(&new).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("leak_big_malloc"));
    let other = tmp("diff-other.json");
    std::fs::write(&other, r#"{"processes":[{"pid":1,"comm":"other","leaked_bytes":0,"outstanding_bytes":0,"stacks":[]}]}"#).unwrap();
    let bad = leaktrace().arg("diff").arg(&old).arg(&other).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("share no process"));
}

#[test]
fn svg_to_a_terminal_is_refused() {
    // `script` gives leaktrace a terminal as stdout.
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED svg_to_a_terminal_is_refused: script (util-linux) is missing");
        return;
    }
    let cmd = format!("{} trace --format svg -p 1", env!("CARGO_BIN_EXE_leaktrace"));
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not for a terminal") && text.contains("-o report.svg"), "{text}");
    assert_eq!(out.status.code(), Some(2), "{text}");
}
