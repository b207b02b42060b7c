//! Sampling and scale, as behaviour (no timing): at 2,000,000 outstanding blocks every one is
//! counted; byte sampling gives estimates within their statistical error, still finds a rare
//! big block exactly, and frees of unsampled blocks cost no events.
mod common;

use std::process::Stdio;

use common::{last_report, leaktrace, wait_with_timeout};

/// (count, bytes) per site function, with --group-by function.
fn by_function(r: &serde_json::Value) -> std::collections::BTreeMap<String, (u64, u64)> {
    r["processes"][0]["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let f = s["frames"][0]["function"].as_str().unwrap_or("??").to_string();
            (f, (s["count"].as_u64().unwrap(), s["bytes"].as_u64().unwrap()))
        })
        .collect()
}

fn run(name: &str, extra: &[&str], args: &[&str]) -> serde_json::Value {
    let hold = common::fixture("hold", &[]);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let mut lt = leaktrace()
        .args(["trace", "--min-age", "0s", "--group-by", "function", "--top", "50"])
        .args(["--format", "json", "-o"])
        .arg(&out)
        .args(extra)
        .arg("--")
        .arg(&hold)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_with_timeout(&mut lt).success());
    last_report(&out)
}

#[test]
fn two_million_outstanding_are_counted_exactly() {
    require_kernel!();
    let r = run("hold2m.json", &[], &["2000000"]);
    assert_eq!(r["lost_events"], 0, "lost events break exactness");
    let sites = by_function(&r);
    assert_eq!(sites.get("hold_block"), Some(&(2_000_000, 32_000_000)), "{sites:#?}");
}

#[test]
fn byte_sampling_is_unbiased_and_finds_rare_big_blocks() {
    require_kernel!();
    const RATE: f64 = 65536.0;
    let r = run("sampled.json", &["--sample-rate", "64KiB"], &["0", "sample"]);
    assert_eq!(r["sample_rate"], 65536);
    let sites = by_function(&r);
    // 20000 blocks of 1000 B, each sampled with p = 1 - exp(-1000/rate); the estimate k/p of a
    // binomial k has standard deviation sqrt(n (1-p) / p).
    let n = 20000.0;
    let p = 1.0 - (-1000.0 / RATE).exp();
    let sd = (n * (1.0 - p) / p).sqrt();
    let (count, bytes) = sites.get("leak_small").copied().unwrap_or((0, 0));
    assert!(
        (count as f64 - n).abs() < 4.0 * sd,
        "leak_small estimated {count} blocks, true 20000, sd {sd:.0}"
    );
    assert!((bytes as f64 - 1000.0 * count as f64).abs() <= 1000.0, "{bytes} vs {count}");
    // A block far larger than the rate is sampled with certainty and weighs 1.
    assert_eq!(sites.get("leak_rare_big"), Some(&(1, 8 << 20)), "{sites:#?}");
    // Freed pairs are not outstanding, sampled or not.
    assert!(!sites.contains_key("churn_pair"), "{sites:#?}");
    // 60000 allocator calls, but only sampled ones (about 2 x 300) and their frees are events:
    // frees of unsampled blocks stay in the kernel.
    let events = r["events"].as_u64().unwrap();
    assert!(events < 5000, "{events} events with sampling");
}

/// Each CPU's countdown starts at a random draw: a small leak under a huge rate is then almost
/// never sampled. (Starting at 0 sampled the first allocation on every CPU for certain, and its
/// weight, about rate / size, turned a 48 KB process into an estimate of about 1 GiB.)
#[test]
fn the_first_allocation_on_a_cpu_is_not_sampled_for_certain() {
    require_kernel!();
    const RATE: u64 = 1 << 30;
    let mut estimates = Vec::new();
    for i in 0..3 {
        // 2000 x 16 B held, plus a 16 KB array: about 48 KB allocated in all.
        let r = run(&format!("first{i}.json"), &["--sample-rate", "1GiB"], &["2000"]);
        let total: u64 = by_function(&r).values().map(|&(_, bytes)| bytes).sum();
        estimates.push(total);
    }
    // A sample of anything is estimated at about the rate; allocating 48 KB, a run samples
    // something with probability about 5e-5. One such run in three is tolerated, not more.
    let big = estimates.iter().filter(|&&e| e >= RATE / 2).count();
    assert!(big <= 1, "estimates {estimates:?} of a 48 KB process at a 1 GiB rate");
}
