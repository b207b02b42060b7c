//! `cargo xtask bench`: measure leaktrace against the targets of its performance issue, in one run
//! whose every figure is printed. The workload is `tests/fixtures/churn.c`: malloc/free churn on
//! 1 and 2 threads, run untraced, under full tracking, under byte sampling and under the empty
//! probes (the same probes with programs that return at once: the floor), interleaved round by
//! round so that drift on the machine hits every mode alike; medians are reported. Then the fixture
//! holds 2,000,000 and 1,000,000 blocks to measure the tracer's memory and its report.
//!
//! Owns the measurement and its table. Building is `build`'s job, running children `process`'s
//! and `harness`'s;
//! the in-process aggregation benchmark is `cargo bench -p leaktrace --bench aggregate`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    build,
    harness::{
        Fixture, Guard, Lines, ReportTiming, START_TIMEOUT, Tracer, WORK_TIMEOUT, compile_churn,
        procfs, procfs::MapMemory,
    },
    process, workspace,
};

/// Bytes between samples under `--sample-rate` (the issue's 512 KiB).
const SAMPLE_RATE: &str = "524288";
/// Live blocks each churn thread keeps.
const SLOTS: u64 = 4096;
/// Untraced runs do this many times the pairs of a traced run, so that they too last long
/// enough (about a second) for a steady rate; the working set is the same, so is the rate.
const UNTRACED_SCALE: u64 = 20;
/// Thread counts measured; the machine has 2 cores.
const THREADS: [u64; 2] = [1, 2];

/// How much work one run does.
struct Plan {
    quick: bool,
    rounds: usize,
    ops_per_thread: u64,
    /// Blocks held for the memory measurement, and for the report measurement.
    held_large: u64,
    held_report: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rounds: 1,
                ops_per_thread: 50_000,
                held_large: 200_000,
                held_report: 100_000,
            }
        } else {
            Self {
                quick,
                rounds: 3,
                ops_per_thread: 500_000,
                held_large: 2_000_000,
                held_report: 1_000_000,
            }
        }
    }
}

pub fn run(quick: bool) -> Result<ExitCode> {
    build::run()?;
    let churn = compile_churn()?;
    let leaktrace = build::leaktrace_binary();
    let plan = Plan::new(quick);
    let modes = available_modes(&leaktrace);
    let out_dir = workspace::target_dir().join("bench");
    let bench = Bench {
        churn: &churn,
        leaktrace: &leaktrace,
        report: out_dir.join("report.json"),
    };
    eprintln!(
        "xtask: bench: {} round(s) of {} ops per thread, {} slots per thread; modes: {}",
        plan.rounds,
        plan.ops_per_thread,
        SLOTS,
        modes
            .iter()
            .map(|mode| mode.label())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Other work on this machine distorts every figure: the load is shown with the table.
    let load_before = procfs::load_average();
    let mut churns: BTreeMap<(u64, Mode), Vec<ChurnRun>> = BTreeMap::new();
    for round in 1..=plan.rounds {
        for threads in THREADS {
            for &mode in &modes {
                let run = bench.churn(mode, threads, plan.ops_per_thread)?;
                eprintln!(
                    "xtask: bench: round {round}/{}, {threads} thread(s), {}: {}",
                    plan.rounds,
                    mode.label(),
                    run.describe()
                );
                churns.entry((threads, mode)).or_default().push(run);
            }
        }
    }
    let large = bench.hold(plan.held_large)?;
    let report = bench.hold(plan.held_report)?;
    let teardowns = TEARDOWN_TARGETS
        .iter()
        .map(|&targets| bench.teardown(targets))
        .collect::<Result<Vec<_>>>()?;

    let table = Table {
        plan: &plan,
        modes: &modes,
        churns: &churns,
        large: &large,
        report: &report,
        teardowns: &teardowns,
        load: [load_before, procfs::load_average()],
    };
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// How the churn is observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Untraced,
    Full,
    Sampled,
    /// `--empty-probes`: the probes of full tracking, doing nothing.
    Floor,
    /// `--empty-probes --sample-rate`: the probes of sampling, doing nothing.
    SampledFloor,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Full => "full tracking",
            Mode::Sampled => "sampled",
            Mode::Floor => "empty probes",
            Mode::SampledFloor => "empty probes, sampled",
        }
    }

    /// leaktrace's arguments for this mode, `None` when untraced.
    fn flags(self) -> Option<&'static [&'static str]> {
        match self {
            Mode::Untraced => None,
            Mode::Full => Some(&[]),
            Mode::Sampled => Some(&["--sample-rate", SAMPLE_RATE]),
            Mode::Floor => Some(&["--empty-probes"]),
            Mode::SampledFloor => Some(&["--empty-probes", "--sample-rate", SAMPLE_RATE]),
        }
    }
}

/// The modes this leaktrace build supports: `--empty-probes` is hidden from `--help`, so each
/// mode's flags are tried in front of `--help`, which clap rejects when a flag is unknown.
fn available_modes(leaktrace: &Path) -> Vec<Mode> {
    let all = [
        Mode::Untraced,
        Mode::Full,
        Mode::Sampled,
        Mode::Floor,
        Mode::SampledFloor,
    ];
    all.into_iter()
        .filter(|mode| {
            let flags = mode.flags().unwrap_or_default();
            let known = process::command(leaktrace)
                .arg("trace")
                .args(flags)
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|exit| exit.success());
            if !known {
                eprintln!(
                    "xtask: bench: this leaktrace lacks `{}`; {} is not measured",
                    flags.join(" "),
                    mode.label()
                );
            }
            known
        })
        .collect()
}

/// One churn run's figures.
struct ChurnRun {
    ops_per_s: f64,
    /// Traced runs only: from spawning leaktrace to its "tracing pid" line.
    attach: Option<Duration>,
    lost: Option<u64>,
}

impl ChurnRun {
    fn describe(&self) -> String {
        let mut text = format!("{} ops/s", thousands(self.ops_per_s.round() as u64));
        if let Some(attach) = self.attach {
            text += &format!(", attach {}", millis(attach));
        }
        if let Some(lost) = self.lost {
            text += &format!(", {lost} lost");
        }
        text
    }
}

/// What the held-blocks runs measured.
struct Held {
    blocks: u64,
    outstanding: Option<u64>,
    lost: Option<u64>,
    memory: procfs::Memory,
    maps: MapMemory,
    timing: ReportTiming,
}

impl Held {
    /// What tracing costs in memory: leaktrace's resident memory, except its mapping of the
    /// ring buffer (mapped twice, for wrap-around, so VmRSS counts it twice), plus the kernel
    /// memory of its maps (the ring included, once).
    fn tracer_bytes(&self) -> u64 {
        (self.memory.rss_kib - self.memory.bpf_mapped_kib) * 1024 + self.maps.bytes
    }
}

struct Bench<'a> {
    churn: &'a Path,
    leaktrace: &'a Path,
    /// Where each traced run's final JSON report goes; read, then overwritten by the next run.
    report: PathBuf,
}

impl Bench<'_> {
    fn churn(&self, mode: Mode, threads: u64, ops: u64) -> Result<ChurnRun> {
        let ops = match mode {
            Mode::Untraced => ops * UNTRACED_SCALE,
            _ => ops,
        };
        let mut fixture = Fixture::start(
            self.churn,
            &[threads.to_string(), ops.to_string(), SLOTS.to_string()],
        )?;
        let tracer = match mode.flags() {
            Some(flags) => Some(Tracer::attach(
                self.leaktrace,
                fixture.pid,
                flags,
                &self.report,
            )?),
            None => None,
        };
        fixture.go()?;
        let ops_per_s = fixture.expect("an `ops_per_s=<N>` line", |line| {
            line.strip_prefix("ops_per_s=")?.parse::<f64>().ok()
        })?;
        fixture.finish()?;
        let (attach, lost) = match tracer {
            // The target has exited: leaktrace writes its final report and exits by itself.
            Some(tracer) => {
                let attach = tracer.attach;
                let report = tracer.wait_report()?;
                (Some(attach), report.lost)
            }
            None => (None, None),
        };
        Ok(ChurnRun {
            ops_per_s,
            attach,
            lost,
        })
    }

    fn hold(&self, blocks: u64) -> Result<Held> {
        eprintln!(
            "xtask: bench: {} blocks held under full tracking",
            thousands(blocks)
        );
        let mut fixture = Fixture::start(self.churn, &["hold".to_owned(), blocks.to_string()])?;
        let tracer = Tracer::attach(self.leaktrace, fixture.pid, &[], &self.report)?;
        fixture.go()?;
        fixture.expect("a `held` line", |line| (line == "held").then_some(()))?;
        let pid = tracer.pid();
        procfs::wait_idle(pid)?;
        let memory = procfs::memory(pid)?;
        let maps = procfs::bpf_map_memory(pid)?;
        let (timing, report) = tracer.interrupt()?;
        fixture.finish()?;
        let held = Held {
            blocks,
            outstanding: report.outstanding,
            lost: report.lost,
            memory,
            maps,
            timing,
        };
        eprintln!(
            "xtask: bench: {} held: {} outstanding, {} lost; leaktrace VmRSS {}, BPF maps {}; \
             report written {} ({} CPU), exit {} ({} CPU) after SIGINT",
            thousands(blocks),
            opt(held.outstanding),
            opt(held.lost),
            mib(held.memory.rss_kib * 1024),
            mib(held.maps.bytes),
            millis(held.timing.written),
            millis(held.timing.written_cpu),
            millis(held.timing.exited),
            millis(held.timing.exited_cpu),
        );
        Ok(held)
    }
}


/// Idle targets traced at once for the teardown figures (19 probes each with glibc).
const TEARDOWN_TARGETS: [usize; 2] = [1, 4];

/// How leaktrace lets go of its targets, with `probes` uprobes attached.
struct Teardown {
    targets: usize,
    probes: u64,
    /// From SIGINT: the final report written, then leaktrace exited (probes detached).
    interrupted: ReportTiming,
    /// From SIGKILL until leaktrace is a zombie: the kernel closes the dead tracer's
    /// descriptors, detaching one probe after another, while the targets run with live
    /// breakpoints.
    killed: Duration,
}

impl Bench<'_> {
    /// Traces `targets` idle churn fixtures twice: once ended by SIGINT, once by SIGKILL.
    fn teardown(&self, targets: usize) -> Result<Teardown> {
        eprintln!("xtask: bench: teardown with {targets} traced process(es)");
        let fixtures = (0..targets)
            .map(|_| Fixture::start(self.churn, &["hold".to_owned(), "1".to_owned()]))
            .collect::<Result<Vec<_>>>()?;
        let pids: Vec<u32> = fixtures.iter().map(|f| f.pid).collect();
        let (probes, tracer) = self.attach_all(&pids)?;
        let (interrupted, _) = tracer.interrupt()?;
        let (_, mut tracer) = self.attach_all(&pids)?;
        let pid = tracer.pid();
        let killed_at = Instant::now();
        tracer
            .child
            .0
            .kill()
            .map_err(|err| process::failed("killing leaktrace", err))?;
        let killed = loop {
            if procfs::stat(pid)?.state == 'Z' {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > WORK_TIMEOUT {
                return Err(process::failed(
                    "leaktrace's teardown",
                    format!("not gone within {WORK_TIMEOUT:?} of SIGKILL"),
                ));
            }
            thread::sleep(Duration::from_millis(1));
        };
        drop(tracer);
        drop(fixtures);
        let t = Teardown {
            targets,
            probes,
            interrupted,
            killed,
        };
        eprintln!(
            "xtask: bench: {targets} process(es), {probes} probes: report {} and exit {} after \
             SIGINT; gone {} after SIGKILL",
            millis(t.interrupted.written),
            millis(t.interrupted.exited),
            millis(t.killed)
        );
        Ok(t)
    }

    /// leaktrace tracing `pids`, once it has said how many probes it attached to each.
    fn attach_all(&self, pids: &[u32]) -> Result<(u64, Tracer)> {
        let _ = std::fs::remove_file(&self.report);
        let mut cmd = process::command(self.leaktrace);
        cmd.args(["trace", "--min-age", "0s", "--format", "json", "-o"])
            .arg(&self.report);
        for pid in pids {
            cmd.args(["-p", &pid.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = Guard::spawn("leaktrace", &mut cmd)?;
        let stderr = Lines::read("leaktrace", child.0.stderr.take().expect("stderr is piped"));
        let mut probes = 0;
        let mut attached = spawned;
        for _ in pids {
            // "leaktrace: tracing pid P (comm): N probes on ..."
            let (at, n) = stderr.expect("its `tracing pid` lines", START_TIMEOUT, |line| {
                let rest = line.strip_prefix("leaktrace: tracing pid")?;
                rest.split_once("): ")?.1.split_once(" probes")?.0.parse::<u64>().ok()
            })?;
            probes += n;
            attached = at;
        }
        let tracer = Tracer {
            child,
            stderr,
            attach: attached.duration_since(spawned),
            report: self.report.clone(),
        };
        Ok((probes, tracer))
    }
}

/// The teardown rows: exit after SIGINT, and probes live after SIGKILL, per number of probes.
fn teardown_rows(out: &mut String, teardowns: &[Teardown]) {
    *out += "\n| teardown | final report after SIGINT | exit after SIGINT | probes live after SIGKILL |\n";
    *out += "|---|---|---|---|\n";
    for t in teardowns {
        *out += &format!(
            "| {} process(es), {} uprobes | {} | {} | {} |\n",
            t.targets,
            t.probes,
            millis(t.interrupted.written),
            millis(t.interrupted.exited),
            millis(t.killed),
        );
    }
}

/// The printed result: one table of churn figures, one of held-block figures, each figure next
/// to its target and an honest verdict.
struct Table<'a> {
    plan: &'a Plan,
    modes: &'a [Mode],
    churns: &'a BTreeMap<(u64, Mode), Vec<ChurnRun>>,
    large: &'a Held,
    report: &'a Held,
    teardowns: &'a [Teardown],
    /// The 1-minute load average before and after the measurements.
    load: [Option<f64>; 2],
}

/// The issue's targets.
const MAX_FLOOR_RATIO: f64 = 1.2;
const MAX_ATTACH: Duration = Duration::from_millis(50);
const MAX_TRACER_MEMORY: u64 = 100 << 20;
const MAX_REPORT_CPU: Duration = Duration::from_millis(100);

impl Table<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        let title = if self.plan.quick {
            "leaktrace bench (--quick: a smoke test; sizes below the targets' are marked n/a)"
        } else {
            "leaktrace bench"
        };
        out += &format!(
            "\n{title}: churn of {} malloc/free pairs per thread over {SLOTS} live 16-4096 B \
             blocks ({UNTRACED_SCALE}x that untraced), median of {} interleaved round(s); ",
            thousands(self.plan.ops_per_thread),
            self.plan.rounds
        );
        let [before, after] = self
            .load
            .map(|load| load.map_or("?".to_owned(), |l| format!("{l:.2}")));
        out += &format!("1-minute load average {before} before, {after} after\n\n");
        out += "| figure | 1 thread | 2 threads | target | verdict |\n";
        out += "|---|---|---|---|---|\n";
        self.row(
            &mut out,
            "untraced ops/s",
            |t| {
                self.ops(t, Mode::Untraced)
                    .map(|v| thousands(v.round() as u64))
            },
            "",
            |_| None,
        );
        for mode in [Mode::Full, Mode::Sampled, Mode::Floor, Mode::SampledFloor] {
            self.row(
                &mut out,
                &format!("slowdown, {}", mode.label()),
                |t| self.slowdown(t, mode).map(ratio),
                "",
                |_| None,
            );
        }
        for (mode, floor, name) in [
            (Mode::Full, Mode::Floor, "full tracking / floor"),
            (Mode::Sampled, Mode::SampledFloor, "sampled / its floor"),
        ] {
            let over = |t| Some(self.ops(t, floor)? / self.ops(t, mode)?);
            self.row(
                &mut out,
                name,
                |t| over(t).map(ratio),
                &format!("<= {MAX_FLOOR_RATIO}x"),
                |t| over(t).map(|r| r <= MAX_FLOOR_RATIO),
            );
        }
        let attach = |t| {
            let runs = self.churns.get(&(t, Mode::Full))?;
            median(
                runs.iter()
                    .filter_map(|run| run.attach)
                    .map(|d| d.as_secs_f64()),
            )
            .map(Duration::from_secs_f64)
        };
        self.row(
            &mut out,
            "attach to a running PID (full tracking, median)",
            |t| attach(t).map(millis),
            &format!("<= {}", millis(MAX_ATTACH)),
            |t| attach(t).map(|d| d <= MAX_ATTACH),
        );
        for &mode in self.modes.iter().filter(|&&m| m != Mode::Untraced) {
            let lost = |t| -> Option<Vec<u64>> {
                self.churns
                    .get(&(t, mode))?
                    .iter()
                    .map(|run| run.lost)
                    .collect()
            };
            self.row(
                &mut out,
                &format!("lost events, {} (each run)", mode.label()),
                |t| lost(t).map(|l| l.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ")),
                "0 at 2 threads",
                |t| {
                    (t == 2)
                        .then(|| lost(t).map(|l| l.iter().all(|&n| n == 0)))
                        .flatten()
                },
            );
        }

        let (large, report) = (self.large, self.report);
        let full_size = !self.plan.quick;
        out += "\n| figure | measured | target | verdict |\n|---|---|---|---|\n";
        let exact = large.outstanding == Some(large.blocks);
        out += &format!(
            "| outstanding_count with {} blocks held | {} ({}), {} lost | exactly {} | {} |\n",
            thousands(large.blocks),
            opt(large.outstanding.map(thousands)),
            match large.outstanding {
                Some(n) => format!("{:+}", n as i128 - large.blocks as i128),
                None => "no report".to_owned(),
            },
            opt(large.lost),
            thousands(large.blocks),
            verdict(full_size.then_some(exact)),
        );
        let memory = large.tracer_bytes();
        out += &format!(
            "| leaktrace memory at {} held: RSS + BPF maps | {} | <= {} | {} |\n",
            thousands(large.blocks),
            mib(memory),
            mib(MAX_TRACER_MEMORY),
            verdict(full_size.then_some(memory <= MAX_TRACER_MEMORY)),
        );
        out += &format!(
            "| ... of which VmRSS (peak VmHWM), less the ring mapped in it | {} ({}), less {} | | |\n",
            mib(large.memory.rss_kib * 1024),
            mib(large.memory.peak_rss_kib * 1024),
            mib(large.memory.bpf_mapped_kib * 1024),
        );
        out += &format!(
            "| ... of which BPF maps (memlock, {} maps) | {} | | |\n",
            large.maps.maps,
            mib(large.maps.bytes),
        );
        // The target is the report at the smaller size; the larger is shown for scale.
        let report_met = full_size.then_some(report.timing.written_cpu <= MAX_REPORT_CPU);
        let report_target = format!("<= {} CPU", millis(MAX_REPORT_CPU));
        report_rows(&mut out, report, &report_target, verdict(report_met));
        report_rows(&mut out, large, "", "");
        teardown_rows(&mut out, self.teardowns);
        out
    }

    /// One churn row: a cell per thread count, and the verdict of every measured cell.
    fn row(
        &self,
        out: &mut String,
        name: &str,
        cell: impl Fn(u64) -> Option<String>,
        target: &str,
        meets: impl Fn(u64) -> Option<bool>,
    ) {
        let cells: Vec<String> = THREADS
            .iter()
            .map(|&t| cell(t).unwrap_or_else(|| "not measured".to_owned()))
            .collect();
        let verdicts: Vec<(u64, bool)> = THREADS
            .iter()
            .filter_map(|&t| Some((t, meets(t)?)))
            .collect();
        let verdict = match verdicts.as_slice() {
            [] if target.is_empty() => String::new(),
            [] => "not measured".to_owned(),
            all if all.iter().all(|&(_, ok)| ok) => "met".to_owned(),
            all if all.iter().all(|&(_, ok)| !ok) => "missed".to_owned(),
            mixed => mixed
                .iter()
                .map(|&(t, ok)| format!("{t}T {}", if ok { "met" } else { "missed" }))
                .collect::<Vec<_>>()
                .join(", "),
        };
        *out += &format!(
            "| {name} | {} | {} | {target} | {verdict} |\n",
            cells[0], cells[1]
        );
    }

    fn ops(&self, threads: u64, mode: Mode) -> Option<f64> {
        median(
            self.churns
                .get(&(threads, mode))?
                .iter()
                .map(|run| run.ops_per_s),
        )
    }

    fn slowdown(&self, threads: u64, mode: Mode) -> Option<f64> {
        Some(self.ops(threads, Mode::Untraced)? / self.ops(threads, mode)?)
    }
}

/// The final report's timing rows for one held-blocks run.
fn report_rows(out: &mut String, held: &Held, target: &str, verdict: &str) {
    let (t, n) = (&held.timing, thousands(held.blocks));
    *out += &format!(
        "| final report at {n} held: SIGINT to report written, leaktrace CPU (wall) \
         | {} ({}) | {target} | {verdict} |\n",
        millis(t.written_cpu),
        millis(t.written),
    );
    *out += &format!(
        "| final report at {n} held: SIGINT to exit, leaktrace CPU (wall) | {} ({}) | | |\n",
        millis(t.exited_cpu),
        millis(t.exited),
    );
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "n/a (quick)",
    }
}

fn ratio(value: f64) -> String {
    format!("{value:.2}x")
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn opt(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// 1234567 as "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Report, json_number};

    #[test]
    fn numbers_are_found_in_leaktrace_json() {
        let doc = r#"{"report":"final","processes":[{"pid":7,"outstanding_count":2000003,"x":1}],"lost_events":0,"outstanding_count":9}"#;
        let report = Report::parse(doc);
        assert_eq!(report.outstanding, Some(2_000_003));
        assert_eq!(report.lost, Some(0));
        assert_eq!(json_number(doc, "missing"), None);
    }

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
