//! The reports' honesty on the real kernel (issue #11 items 10 and 25): a full sampled set is a
//! warning and an unreliable estimate, and `--top 0` says how many stacks it hides.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use common::leaktrace;

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// Runs `hold 0 sample` (20000 leaked and 20000 freed 1000 B blocks) sampled at 64 KiB with a
/// sampled set of 16: the set fills with leaked blocks, so later sampled blocks' frees are not
/// seen and they show as leaks.
fn full_sampled_set(format: &str, out: &Path) -> String {
    let hold = common::fixture("hold", &[]);
    let o = leaktrace()
        .args(["trace", "--min-age", "0s", "--sample-rate", "64KiB", "--max-sampled", "16"])
        .args(["--format", format, "-o"])
        .arg(out)
        .arg("--")
        .arg(&hold)
        .args(["0", "sample"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn a_full_sampled_set_is_a_warning_and_an_unreliable_estimate() {
    require_kernel!();
    let text = full_sampled_set("text", &tmp("fullset.txt"));
    let warning = text
        .lines()
        .find(|l| l.contains("warning") && l.contains("--max-sampled"))
        .unwrap_or_else(|| panic!("no warning about the full sampled set: {text}"));
    assert!(warning.contains("unreliable"), "{warning}");
    let footer = text.lines().last().unwrap();
    let full: u64 = footer
        .split("sampled set full: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("footer lacks the sampled set: {footer}"));
    assert!(full > 0, "{footer}");

    let path = tmp("fullset.json");
    full_sampled_set("json", &path);
    let r = common::last_report(&path);
    assert!(r["sampled_set_full"].as_u64() > Some(0), "{r:#}");
    assert_eq!(r["estimate_unreliable"], true, "{r:#}");
    let why = r["estimate_unreliable_reason"].as_str().unwrap_or_default();
    assert!(why.contains("--max-sampled"), "{why}");
}

#[test]
fn top_zero_says_how_many_stacks_it_hides() {
    require_kernel!();
    let leaky = common::fixture("leaky", &[]);
    let o = leaktrace()
        .args(["trace", "--min-age", "0s", "--top", "0", "--"])
        .arg(&leaky)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains("  #1 "), "--top 0 lists no stack: {text}");
    let hint = text
        .lines()
        .find(|l| l.contains("more stacks (raise --top to see them)"))
        .unwrap_or_else(|| panic!("no hint: {text}"));
    let n: usize = hint.trim().trim_start_matches("... ").split(' ').next().unwrap().parse().unwrap();
    assert!(n >= 8, "{hint}");
    let footer = text.lines().last().unwrap();
    assert!(footer.contains("sampled set full: 0"), "{footer}");
}
