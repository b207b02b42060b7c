//! The audit report: ranking by leak rate, per-process RSS trend and top stacks, the audit's own
//! cost, and growth against a baseline audit (tracemalloc's `compare_to`, across days: processes
//! are matched by executable and command line since PIDs change, stacks by their frames'
//! functions).
use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::{LibInfo, ProcInfo};
use crate::{
    aggregate::{ProcStats, StackSummary},
    error::{Error, Result},
    escape,
    probes::Counters,
    report::{StackReport, human_bytes, stack_reports, text},
    session::Session,
    trend::{self, Trend, TrendClass},
    units,
};

#[derive(Debug, Clone, Serialize)]
pub struct BaselineDelta {
    pub matched_pid: u64,
    /// i128: the difference of two u64s never wraps.
    pub outstanding_bytes_delta: i128,
    pub leak_rate_delta_bytes_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditStack {
    #[serde(flatten)]
    pub stack: StackReport,
    /// Growth of this stack's surviving bytes since the baseline (null: not in the baseline).
    pub baseline_delta_bytes: Option<i128>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditProcess {
    pub rank: usize,
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    /// The command line was longer than leaktrace reads (256 KiB): `cmdline` ends early.
    /// Absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cmdline_truncated: bool,
    pub exited: bool,
    /// Surviving bytes older than min-age at the end, per second of the window in which they
    /// could have been allocated (duration − min-age).
    pub leak_rate_bytes_per_s: f64,
    pub leaked_bytes: u64,
    pub leaked_count: u64,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub allocations: u64,
    pub frees: u64,
    pub rss_trend: TrendClass,
    pub rss_slope_bytes_per_s: f64,
    pub rss: Trend,
    pub stacks: Vec<AuditStack>,
    pub baseline: Option<BaselineDelta>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Library {
    pub path: String,
    pub processes: usize,
}

/// A chosen process the audit could not trace, and why.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedProcess {
    pub pid: u32,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub time: String,
    pub duration_s: f64,
    pub min_age_ms: u64,
    /// Byte-sampling rate (null: every allocation traced); figures are scaled estimates then.
    pub sample_rate: Option<u64>,
    pub processes: Vec<AuditProcess>,
    pub libraries: Vec<Library>,
    pub lost_events: u64,
    pub stack_errors: u64,
    /// Sampled blocks the kernel could not remember (their frees are not seen): raise
    /// --max-sampled.
    pub sampled_set_full: u64,
    /// True when the figures cannot be trusted (see the reason), as in trace's report.
    pub estimate_unreliable: bool,
    pub estimate_unreliable_reason: Option<String>,
    pub probe_hits: u64,
    pub events: u64,
    pub cpu_time_ms: u64,
    pub baseline_file: Option<PathBuf>,
    /// Chosen processes that could not be traced (gone, no allocator, attach failed...).
    pub skipped: Vec<SkippedProcess>,
    /// Processes matching --comm/--cgroup left out because --max-targets was reached.
    pub over_max_targets: u64,
}

pub struct ProcInput {
    pub pid: u32,
    pub info: ProcInfo,
    pub stacks: Vec<StackSummary>,
    pub stats: ProcStats,
}

pub struct BuildInput<'a> {
    pub procs: Vec<ProcInput>,
    pub session: &'a mut Session,
    pub elapsed: Duration,
    pub min_age: Duration,
    pub top: usize,
    pub libs: Vec<LibInfo>,
    pub counters: Counters,
    pub baseline: Option<&'a Baseline>,
    pub baseline_file: Option<PathBuf>,
    pub time: SystemTime,
    pub sample_rate: u64,
}

pub fn build(b: BuildInput<'_>) -> AuditReport {
    let window = (b.elapsed.saturating_sub(b.min_age)).as_secs_f64().max(1e-3);
    let mut processes: Vec<AuditProcess> = b
        .procs
        .into_iter()
        .map(|p| {
            let leaked_bytes: u64 = p.stacks.iter().map(|s| s.bytes).sum();
            let rss = trend::classify(&p.info.history.samples());
            let stacks = stack_reports(p.pid, &p.stacks, b.top, &mut b.session.sym, &b.session.stacks)
                .into_iter()
                .map(|stack| AuditStack {
                    stack,
                    baseline_delta_bytes: None,
                })
                .collect();
            AuditProcess {
                rank: 0,
                pid: p.pid,
                comm: p.info.comm,
                exe: p.info.exe,
                cmdline: p.info.cmdline,
                cmdline_truncated: p.info.cmdline_truncated,
                exited: p.info.exited,
                leak_rate_bytes_per_s: leaked_bytes as f64 / window,
                leaked_bytes,
                leaked_count: p.stacks.iter().map(|s| s.count).sum(),
                outstanding_bytes: p.stats.outstanding_bytes,
                outstanding_count: p.stats.outstanding_count,
                allocations: p.stats.allocs,
                frees: p.stats.frees,
                rss_trend: rss.class,
                rss_slope_bytes_per_s: rss.slope_bytes_per_s,
                rss,
                stacks,
                baseline: None,
            }
        })
        .collect();
    processes.sort_by(|a, b| {
        b.leak_rate_bytes_per_s
            .total_cmp(&a.leak_rate_bytes_per_s)
            .then(b.outstanding_bytes.cmp(&a.outstanding_bytes))
            .then(a.pid.cmp(&b.pid))
    });
    for (i, p) in processes.iter_mut().enumerate() {
        p.rank = i + 1;
        if let Some(base) = b.baseline {
            base.compare(p);
        }
    }
    let mut libraries: Vec<Library> = b
        .libs
        .into_iter()
        .map(|l| Library {
            path: l.path,
            processes: l.processes,
        })
        .collect();
    libraries.sort_by(|a, b| a.path.cmp(&b.path));
    AuditReport {
        time: units::utc_timestamp(b.time).0,
        duration_s: b.elapsed.as_secs_f64(),
        min_age_ms: b.min_age.as_millis() as u64,
        sample_rate: Some(b.sample_rate).filter(|&r| r > 0),
        processes,
        libraries,
        lost_events: b.counters.lost,
        stack_errors: b.counters.stack_errors,
        sampled_set_full: b.counters.sampled_full,
        estimate_unreliable: b.counters.sampled_full > 0,
        estimate_unreliable_reason: crate::report::unreliable_reason(b.counters.sampled_full),
        probe_hits: b.counters.hits,
        events: b.session.agg.events,
        cpu_time_ms: own_cpu_time().as_millis() as u64,
        baseline_file: b.baseline_file,
        skipped: Vec::new(),
        over_max_targets: 0,
    }
}

impl AuditReport {
    /// The audit as the common report model, for the pprof, folded and SVG renderers.
    pub fn as_report(&self) -> crate::report::Report {
        let processes: Vec<crate::report::ProcessReport> = self
            .processes
            .iter()
            .map(|p| crate::report::ProcessReport {
                pid: p.pid,
                comm: p.comm.clone(),
                exited: p.exited,
                leaked_bytes: p.leaked_bytes,
                leaked_count: p.leaked_count,
                outstanding_bytes: p.outstanding_bytes,
                outstanding_count: p.outstanding_count,
                allocations: p.allocations,
                frees: p.frees,
                stacks_total: p.stacks.len(),
                stacks: p.stacks.iter().map(|s| s.stack.clone()).collect(),
                loader_bytes: 0,
                mappings: Vec::new(),
            })
            .collect();
        crate::report::Report {
            report: "final",
            time: self.time.clone(),
            elapsed_ms: (self.duration_s * 1000.0) as u64,
            min_age_ms: self.min_age_ms,
            leaked_bytes: processes.iter().map(|p| p.leaked_bytes).sum(),
            leaked_count: processes.iter().map(|p| p.leaked_count).sum(),
            processes,
            lost_events: self.lost_events,
            stack_errors: self.stack_errors,
            missed_returns: 0,
            malformed_events: 0,
            sampled_set_full: self.sampled_set_full,
            estimate_unreliable: self.estimate_unreliable,
            estimate_unreliable_reason: self.estimate_unreliable_reason.clone(),
            symbolization_failures: 0,
            mapping_records_lost: 0,
            events: 0,
            group_by: crate::config::GroupBy::Stack,
            sample_rate: self.sample_rate,
        }
    }
}

fn own_cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A stack's identity across runs: its functions (addresses change with ASLR).
fn signature(frames: &[crate::report::Frame]) -> String {
    frames
        .iter()
        .map(|f| f.function.clone().unwrap_or_else(|| f.module.clone().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(";")
}

/// An earlier audit, indexed for matching.
pub struct Baseline {
    procs: HashMap<(String, Vec<String>), BaseProc>,
}

struct BaseProc {
    pid: u64,
    outstanding_bytes: u64,
    leak_rate: f64,
    stacks: HashMap<String, u64>,
}

/// Reads an earlier audit's JSON (at most `limit` bytes, typed: see `saved`); anything else is
/// refused with a clear message.
pub fn load_baseline(path: &Path, limit: u64) -> Result<Baseline> {
    let not_audit = |why: &str| {
        Error::Usage(format!(
            "--baseline {}: not an audit report ({why}): give a file written by \
             `leaktrace audit --format json`",
            path.display()
        ))
    };
    let report = crate::saved::load(path, limit).map_err(|e| match e {
        crate::saved::SavedError::NotAReport { why, .. } => not_audit(&why),
        e => Error::Usage(format!("--baseline {e}")),
    })?;
    if !report.is_audit() {
        return Err(not_audit("no duration_s"));
    }
    let mut out = HashMap::new();
    for p in report.processes {
        let stacks = p.stacks.iter().map(|s| (signature(&s.frames), s.bytes)).collect();
        out.insert(
            (p.exe.unwrap_or_default(), p.cmdline.unwrap_or_default()),
            BaseProc {
                pid: u64::from(p.pid),
                outstanding_bytes: p.outstanding_bytes,
                leak_rate: p.leak_rate_bytes_per_s.unwrap_or(0.0),
                stacks,
            },
        );
    }
    Ok(Baseline { procs: out })
}

impl Baseline {
    fn compare(&self, p: &mut AuditProcess) {
        let key = (p.exe.clone().unwrap_or_default(), p.cmdline.clone());
        let Some(b) = self.procs.get(&key) else { return };
        p.baseline = Some(BaselineDelta {
            matched_pid: b.pid,
            outstanding_bytes_delta: i128::from(p.outstanding_bytes)
                - i128::from(b.outstanding_bytes),
            leak_rate_delta_bytes_per_s: p.leak_rate_bytes_per_s - b.leak_rate,
        });
        for s in &mut p.stacks {
            s.baseline_delta_bytes = b
                .stacks
                .get(&signature(&s.stack.frames))
                .map(|old| i128::from(s.stack.bytes) - i128::from(*old));
        }
    }
}

fn rate(r: f64) -> String {
    format!("{}/s", human_bytes(r.max(0.0) as u64))
}

/// How many processes the text shows (JSON has them all).
const TEXT_PROCESSES: usize = 20;

pub fn render_text(r: &AuditReport, fail_above: Option<f64>, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "leaktrace audit at {}: {} processes over {:.1}s, min age {:.1}s",
        r.time,
        r.processes.len(),
        r.duration_s,
        r.min_age_ms as f64 / 1000.0
    )?;
    writeln!(
        out,
        "cost: {} probe hits, {} events, {} lost, {} stack errors, {} sampled set full, {} ms CPU",
        r.probe_hits, r.events, r.lost_events, r.stack_errors, r.sampled_set_full, r.cpu_time_ms
    )?;
    if let Some(why) = &r.estimate_unreliable_reason {
        writeln!(out, "warning: estimates unreliable: {why}")?;
    }
    for s in &r.skipped {
        writeln!(out, "skipped process {}: {}", s.pid, crate::escape::text(&s.reason))?;
    }
    if r.over_max_targets > 0 {
        writeln!(out, "not audited: {} more matching processes (over --max-targets)", r.over_max_targets)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>4} {:>8}  {:<16} {:>12} {:>12}  rss trend",
        "rank", "pid", "comm", "leak rate", "outstanding"
    )?;
    for p in r.processes.iter().take(TEXT_PROCESSES) {
        let flag = if fail_above.is_some_and(|l| p.leak_rate_bytes_per_s > l) { " !" } else { "" };
        let base = p
            .baseline
            .as_ref()
            .map(|b| format!(", {:+} B since baseline", b.outstanding_bytes_delta))
            .unwrap_or_default();
        writeln!(
            out,
            "{:>4} {:>8}  {:<16} {:>12} {:>12}  {:?} ({}){}{}{}",
            p.rank,
            p.pid,
            escape::text(&p.comm),
            rate(p.leak_rate_bytes_per_s),
            human_bytes(p.outstanding_bytes),
            p.rss_trend,
            if p.rss_slope_bytes_per_s >= 0.0 {
                format!("+{}", rate(p.rss_slope_bytes_per_s))
            } else {
                format!("-{}", rate(-p.rss_slope_bytes_per_s))
            },
            if p.exited { ", exited" } else { "" },
            base,
            flag
        )?;
    }
    if r.processes.len() > TEXT_PROCESSES {
        writeln!(out, "  ... {} more in --format json", r.processes.len() - TEXT_PROCESSES)?;
    }
    for p in r.processes.iter().filter(|p| p.leaked_bytes > 0).take(3) {
        writeln!(out)?;
        writeln!(out, "{} ({}): leaking stacks", escape::text(&p.comm), p.pid)?;
        for (i, s) in p.stacks.iter().enumerate() {
            text::stack(out, i + 1, &s.stack)?;
        }
    }
    Ok(())
}
