//! `cargo xtask soak`: trace the churn fixture for a long while (10 minutes by default) and check
//! that leaktrace neither grows nor loses events: its VmRSS is sampled every few seconds, and the
//! maximum over minutes 2 to the end must stay within 1.05x the RSS at minute 2 (the first two
//! minutes are warm-up: the ring, the stack table and the allocator's arenas fill); the final
//! report's `lost_events` must be 0. Not run in CI: it takes the minutes it measures.
//!
//! Owns the soak plan and its verdicts; children and /proc are `harness`'s.

use std::{
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    build,
    harness::{Fixture, Tracer, compile_churn, procfs},
    workspace,
};

/// How often leaktrace's RSS is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The end of the warm-up: RSS at this point is the baseline.
const WARM_UP: Duration = Duration::from_secs(120);
/// The largest growth over the baseline that passes.
const MAX_GROWTH: f64 = 1.05;
/// Churn threads, live blocks per thread: the bench's churn, one thread (2 cores, one left to
/// leaktrace).
const THREADS: &str = "1";
const SLOTS: &str = "4096";
/// More pairs than any soak does: the churn runs until it is killed.
const ENDLESS_OPS: &str = "1000000000000";

pub fn run(minutes: u64) -> Result<ExitCode> {
    build::run()?;
    let churn = compile_churn()?;
    let leaktrace = build::leaktrace_binary();
    let report = workspace::target_dir().join("soak").join("report.json");
    std::fs::create_dir_all(report.parent().expect("a file in a directory"))?;
    let length = Duration::from_secs(minutes * 60);
    eprintln!(
        "xtask: soak: {minutes} min of churn ({THREADS} thread, {SLOTS} live blocks) under full \
         tracking; leaktrace's VmRSS every {}s",
        SAMPLE_EVERY.as_secs()
    );

    let mut fixture = Fixture::start(&churn, &[THREADS.into(), ENDLESS_OPS.into(), SLOTS.into()])?;
    let tracer = Tracer::attach(&leaktrace, fixture.pid, &[], &report)?;
    let pid = tracer.pid();
    fixture.go()?;
    let start = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut next = start;
    while start.elapsed() < length {
        next += SAMPLE_EVERY;
        thread::sleep(next.saturating_duration_since(Instant::now()));
        let at = start.elapsed();
        let rss = procfs::memory(pid)?.rss_kib;
        if samples.last().is_none_or(|(t, _)| t.as_secs() / 60 != at.as_secs() / 60) {
            eprintln!("xtask: soak: {:>5.1} min: VmRSS {rss} KiB", at.as_secs_f64() / 60.0);
        }
        samples.push((at, rss));
    }
    let (timing, final_report) = tracer.interrupt()?;
    // The churn never ends by itself; dropping the fixture kills it.
    drop(fixture);

    let verdict = Verdict::of(&samples, final_report.lost);
    print!("{}", verdict.render(minutes, samples.len(), timing.exited));
    if let Some(events) = final_report.events {
        let rate = events as f64 / start.elapsed().as_secs_f64();
        println!("| events taken in | {events} ({rate:.0}/s) | | |");
    }
    Ok(if verdict.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The soak's figures and whether they meet the targets.
struct Verdict {
    /// RSS (KiB) of the last sample at or before the end of the warm-up.
    baseline: Option<u64>,
    /// The largest RSS (KiB) after the warm-up, and when.
    peak: Option<(Duration, u64)>,
    first: Option<u64>,
    last: Option<u64>,
    lost: Option<u64>,
}

impl Verdict {
    fn of(samples: &[(Duration, u64)], lost: Option<u64>) -> Self {
        let baseline = samples
            .iter()
            .take_while(|(t, _)| *t <= WARM_UP)
            .last()
            .map(|&(_, rss)| rss);
        let peak = samples
            .iter()
            .filter(|(t, _)| *t >= WARM_UP)
            .max_by_key(|(_, rss)| *rss)
            .copied();
        Verdict {
            baseline,
            peak,
            first: samples.first().map(|s| s.1),
            last: samples.last().map(|s| s.1),
            lost,
        }
    }

    fn growth_ok(&self) -> Option<bool> {
        let (base, (_, peak)) = (self.baseline?, self.peak?);
        Some(peak as f64 <= base as f64 * MAX_GROWTH)
    }

    fn passed(&self) -> bool {
        self.growth_ok() == Some(true) && self.lost == Some(0)
    }

    fn render(&self, minutes: u64, samples: usize, exit: Duration) -> String {
        let kib = |v: Option<u64>| v.map_or("n/a".to_owned(), |k| format!("{k} KiB"));
        let word = |ok: Option<bool>| match ok {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let mut out = format!(
            "\nleaktrace soak: {minutes} min of churn under full tracking, {samples} VmRSS samples \
             every {}s\n\n| figure | measured | target | verdict |\n|---|---|---|---|\n",
            SAMPLE_EVERY.as_secs()
        );
        let target = self
            .baseline
            .map_or("n/a".to_owned(), |b| format!("<= {:.0} KiB (1.05x)", b as f64 * MAX_GROWTH));
        out += &format!("| VmRSS at minute 2 | {} | | |\n", kib(self.baseline));
        out += &format!(
            "| max VmRSS, minutes 2-{minutes} | {}{} | {target} | {} |\n",
            kib(self.peak.map(|p| p.1)),
            self.peak
                .map_or(String::new(), |(t, _)| format!(" at {:.1} min", t.as_secs_f64() / 60.0)),
            word(self.growth_ok()),
        );
        out += &format!(
            "| VmRSS first / last sample | {} / {} | | |\n",
            kib(self.first),
            kib(self.last)
        );
        out += &format!(
            "| lost events (final report) | {} | 0 | {} |\n",
            self.lost.map_or("n/a".to_owned(), |l| l.to_string()),
            word(self.lost.map(|l| l == 0)),
        );
        out += &format!("| exit after SIGINT | {} ms | | |\n", exit.as_millis());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(min: f64, rss: u64) -> (Duration, u64) {
        (Duration::from_secs_f64(min * 60.0), rss)
    }

    #[test]
    fn baseline_is_minute_two_and_peak_comes_after() {
        let s = [at(0.5, 900), at(1.9, 1000), at(2.0, 1000), at(3.0, 1040), at(9.0, 1030)];
        let v = Verdict::of(&s, Some(0));
        assert_eq!(v.baseline, Some(1000));
        assert_eq!(v.peak.map(|p| p.1), Some(1040));
        assert!(v.passed());
        let v = Verdict::of(&[at(2.0, 1000), at(5.0, 1051)], Some(0));
        assert_eq!(v.growth_ok(), Some(false));
        assert!(!Verdict::of(&[at(2.0, 1000), at(5.0, 1000)], Some(3)).passed());
    }
}
