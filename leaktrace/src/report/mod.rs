//! The report model: what every output format renders. Built from the aggregator's survivors,
//! the stack cache and the symbolizer; rendering lives in one file per format.
pub mod folded;
pub mod json;
pub mod pprof;
pub mod svg;
pub mod text;

/// Renders `r` in `format`: the one place every command goes through.
pub fn render(format: crate::config::Format, r: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use crate::config::Format;
    match format {
        Format::Text => text::render(r, out),
        Format::Json => json::render(r, out),
        Format::Folded => folded::render(r, out),
        Format::Svg => svg::render(r, out),
        Format::Pprof => pprof::render(r, out),
    }
}

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{Aggregator, BlockKind, Pid, ProcStats, StackSummary, StackTotal},
    config::GroupBy,
    probes::Counters,
    stacks::StackTable,
    symbolize::Symbolizer,
};

/// One symbolized frame. `function`, `file`, `line` are null when unknown; `module` is the
/// mapped file the address lies in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Frame {
    pub address: String,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
    pub inlined: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StackReport {
    /// "heap" (malloc family) or "mmap" (anonymous mapping).
    pub kind: &'static str,
    pub bytes: u64,
    pub count: u64,
    pub oldest_age_ms: u64,
    /// leaktrace's id for this stack within one run; null when the kernel could not take the
    /// stack (counted in `stack_errors`), or for a group (`--group-by function|line`).
    pub stack_id: Option<u32>,
    /// Every allocation this stack made since attach, freed or not (pprof's alloc_*).
    pub alloc_count: u64,
    pub alloc_bytes: u64,
    /// With --interval: change of `bytes`/`count` since the previous report and since the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<Growth>,
    pub frames: Vec<Frame>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Growth {
    pub bytes_since_previous: i64,
    pub count_since_previous: i64,
    /// Since the first report of the run.
    pub bytes_since_first: i64,
    pub count_since_first: i64,
}

/// A file mapped executable by the process: what pprof's mappings need.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MappingReport {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
    /// GNU build ID, hex.
    pub build_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    /// True when the process exited; this is its last report.
    pub exited: bool,
    /// Survivors older than min-age.
    pub leaked_bytes: u64,
    pub leaked_count: u64,
    /// Every live block, young ones included.
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub allocations: u64,
    pub frees: u64,
    /// Number of distinct leaking stacks (or groups, with --group-by) before --top.
    pub stacks_total: usize,
    pub stacks: Vec<StackReport>,
    /// Anonymous mappings the dynamic loader made for itself (segment zero-fill, its own
    /// malloc, TLS): held, but no leak of the program's; not listed in `stacks`.
    pub loader_bytes: u64,
    /// Executable mappings (filled for pprof output only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<MappingReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// "interval" or "final".
    pub report: &'static str,
    /// When the report was made (RFC 3339, UTC).
    pub time: String,
    pub elapsed_ms: u64,
    pub min_age_ms: u64,
    pub processes: Vec<ProcessReport>,
    pub lost_events: u64,
    pub stack_errors: u64,
    pub missed_returns: u64,
    pub malformed_events: u64,
    /// Sampled blocks the kernel could not remember (their frees are not seen): raise
    /// --max-sampled.
    pub sampled_set_full: u64,
    /// True when the figures cannot be trusted (see the reason): blocks freed after the sampled
    /// set filled are counted as leaks.
    pub estimate_unreliable: bool,
    pub estimate_unreliable_reason: Option<String>,
    /// Events taken in since the start.
    pub events: u64,
    pub leaked_bytes: u64,
    pub leaked_count: u64,
    /// "stack", "function" or "line".
    pub group_by: GroupBy,
    /// Byte-sampling rate (null: every allocation is traced).
    pub sample_rate: Option<u64>,
    /// Addresses shown as ?? because their file could not be read (out of file descriptors,
    /// say); each cause was warned about once on stderr. Absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub symbolization_failures: u64,
    /// The kernel's records of executable mappings dropped because their ring was full: a
    /// library unloaded right after leaking may then show as ??. Absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub mapping_records_lost: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Inputs needed to build a report besides the aggregator.
pub struct Context<'a> {
    pub stacks: &'a StackTable,
    pub comms: &'a HashMap<u32, String>,
    pub counters: Counters,
    pub malformed: u64,
    pub elapsed: Duration,
    pub min_age: Duration,
    pub top: usize,
    pub is_final: bool,
    pub group_by: GroupBy,
    /// Also list stacks whose blocks were all freed (pprof's alloc_* samples), and mappings.
    pub for_pprof: bool,
    /// Byte-sampling rate (None: every allocation); figures are scaled estimates then.
    pub sample_rate: Option<u64>,
}

pub fn build(
    agg: &mut Aggregator,
    sym: &mut Symbolizer,
    ctx: &Context<'_>,
    now_ns: u64,
) -> Report {
    let mut processes = Vec::new();
    for e in agg.take_exited() {
        processes.push(process_report(e.pid, e.stats, &e.stacks, &e.totals, true, sym, ctx));
        sym.forget(e.pid.0);
    }
    let mut live: Vec<Pid> = agg.tracked().collect();
    live.sort();
    for pid in live {
        let stacks = agg.survivors(pid, now_ns);
        let totals = agg.stack_totals(pid);
        let stats = agg.stats(pid).unwrap_or_default();
        processes.push(process_report(pid, stats, &stacks, &totals, false, sym, ctx));
    }
    Report {
        report: if ctx.is_final { "final" } else { "interval" },
        time: crate::units::utc_timestamp(std::time::SystemTime::now()).0,
        group_by: ctx.group_by,
        sample_rate: ctx.sample_rate,
        sampled_set_full: ctx.counters.sampled_full,
        estimate_unreliable: ctx.counters.sampled_full > 0,
        estimate_unreliable_reason: unreliable_reason(ctx.counters.sampled_full),
        events: agg.events,
        elapsed_ms: ctx.elapsed.as_millis() as u64,
        min_age_ms: ctx.min_age.as_millis() as u64,
        leaked_bytes: processes.iter().map(|p| p.leaked_bytes).sum(),
        leaked_count: processes.iter().map(|p| p.leaked_count).sum(),
        processes,
        lost_events: ctx.counters.lost,
        stack_errors: ctx.counters.stack_errors,
        missed_returns: ctx.counters.missed_returns + ctx.counters.pending_full,
        malformed_events: ctx.malformed,
        symbolization_failures: sym.failures(),
        mapping_records_lost: sym.mapping_records_lost(),
    }
}

/// Why the figures cannot be trusted when the kernel's sampled set overflowed `sampled_full`
/// times: a sampled block it could not remember is reported, but its free is never seen.
pub fn unreliable_reason(sampled_full: u64) -> Option<String> {
    (sampled_full > 0).then(|| {
        format!(
            "the sampled set was full {sampled_full} times: frees of those blocks were not seen, \
             so freed blocks are counted as leaks (raise --max-sampled)"
        )
    })
}

fn process_report(
    pid: Pid,
    stats: ProcStats,
    stacks: &[StackSummary],
    totals: &[StackTotal],
    exited: bool,
    sym: &mut Symbolizer,
    ctx: &Context<'_>,
) -> ProcessReport {
    let mut summaries = stacks.to_vec();
    if ctx.for_pprof {
        // Stacks whose blocks were all freed still carry alloc_* samples.
        for t in totals {
            if !summaries.iter().any(|s| s.stack == t.stack && s.kind == t.kind) {
                summaries.push(StackSummary {
                    stack: t.stack,
                    kind: t.kind,
                    caller: 0,
                    count: 0,
                    bytes: 0,
                    oldest_age: Duration::ZERO,
                });
            }
        }
    }
    let grouped = ctx.group_by != GroupBy::Stack;
    // Grouping needs every stack's frames before --top applies; pprof wants them all.
    let limit = if grouped || ctx.for_pprof { usize::MAX } else { ctx.top };
    let reports = stack_reports(pid.0, &summaries, usize::MAX, sym, ctx.stacks);
    let (mut loader_bytes, mut loader_count) = (0, 0);
    let mut kept = Vec::with_capacity(reports.len());
    for (r, s) in reports.into_iter().zip(&summaries) {
        if is_loader_mapping(&r) {
            loader_bytes += r.bytes;
            loader_count += r.count;
        } else {
            kept.push((r, s));
        }
    }
    // Counted before --top cuts the list, for the "N more stacks" hint.
    let stacks_kept = kept.iter().filter(|(r, _)| r.count > 0).count();
    kept.truncate(limit);
    let mut reports: Vec<StackReport> = Vec::with_capacity(kept.len());
    for (mut r, s) in kept {
        if let Some(t) = totals.iter().find(|t| t.stack == s.stack && t.kind == s.kind) {
            r.alloc_count = t.alloc_count;
            r.alloc_bytes = t.alloc_bytes;
        }
        reports.push(r);
    }
    if grouped {
        reports = group(reports, ctx.group_by);
    }
    let stacks_total = if grouped {
        reports.iter().filter(|r| r.count > 0).count()
    } else {
        stacks_kept
    };
    if !ctx.for_pprof {
        reports.retain(|r| r.count > 0);
        reports.truncate(ctx.top);
    }
    ProcessReport {
        pid: pid.0,
        comm: ctx.comms.get(&pid.0).cloned().unwrap_or_default(),
        exited,
        leaked_bytes: stacks.iter().map(|s| s.bytes).sum::<u64>() - loader_bytes,
        leaked_count: stacks.iter().map(|s| s.count).sum::<u64>() - loader_count,
        outstanding_bytes: stats.outstanding_bytes,
        outstanding_count: stats.outstanding_count,
        allocations: stats.allocs,
        frees: stats.frees,
        stacks_total,
        stacks: reports,
        loader_bytes,
        mappings: if ctx.for_pprof { sym.mappings(pid.0) } else { Vec::new() },
    }
}

/// An anonymous mapping whose syscall was made by the dynamic loader's own mmap (ld.so has its
/// own copy; the program's go through libc's).
fn is_loader_mapping(r: &StackReport) -> bool {
    r.kind == "mmap"
        && r.frames.first().and_then(|f| f.module.as_deref()).is_some_and(|m| {
            m.rsplit('/').next().unwrap_or(m).starts_with("ld-linux")
        })
}

/// The frame a stack is charged to in grouped views: the first one outside the C library and
/// the dynamic loader (the code that called malloc, strdup or mmap), else the innermost.
pub fn site_frame(frames: &[Frame]) -> Option<&Frame> {
    let runtime = |f: &&Frame| {
        f.module.as_deref().is_some_and(|m| {
            let base = m.rsplit('/').next().unwrap_or(m);
            base.starts_with("libc.so") || base.starts_with("libc-") || base.starts_with("ld-linux")
        })
    };
    frames.iter().find(|f| !runtime(f)).or(frames.first())
}

/// Merges stacks that share a site function (or function and line), as pprof's `top` does.
fn group(reports: Vec<StackReport>, by: GroupBy) -> Vec<StackReport> {
    let mut groups: Vec<(String, StackReport)> = Vec::new();
    for r in reports {
        let site = site_frame(&r.frames).cloned().unwrap_or_default();
        let name = site.function.clone().unwrap_or_else(|| site.address.clone());
        let key = match by {
            GroupBy::Line => format!(
                "{name} {}:{}",
                site.file.as_deref().unwrap_or("?"),
                site.line.unwrap_or(0)
            ),
            _ => name,
        };
        let mut site = site;
        if by == GroupBy::Function {
            site.line = None;
        }
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => {
                g.bytes += r.bytes;
                g.count += r.count;
                g.alloc_bytes += r.alloc_bytes;
                g.alloc_count += r.alloc_count;
                g.oldest_age_ms = g.oldest_age_ms.max(r.oldest_age_ms);
                if g.kind != r.kind {
                    g.kind = "mixed";
                }
            }
            None => groups.push((
                key,
                StackReport {
                    stack_id: None,
                    frames: vec![site],
                    growth: None,
                    ..r
                },
            )),
        }
    }
    let mut out: Vec<StackReport> = groups.into_iter().map(|(_, g)| g).collect();
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.alloc_bytes.cmp(&a.alloc_bytes)));
    out
}

/// Identity of a stack (or group) across reports of one run, and across runs for `diff`: its
/// kind and the functions (or addresses) of its frames.
pub fn signature(s: &StackReport) -> String {
    let mut sig = String::from(s.kind);
    for f in &s.frames {
        sig.push(';');
        match (&f.function, f.line) {
            (Some(func), Some(line)) => sig.push_str(&format!("{func}:{line}")),
            (Some(func), None) => sig.push_str(func),
            _ => sig.push_str(f.module.as_deref().unwrap_or(&f.address)),
        }
    }
    sig
}

/// Per-process stack totals remembered between interval reports: the previous report's, and the
/// first report's (a stack absent from a report counts as zero there).
#[derive(Debug, Default)]
pub struct GrowthTracker {
    first: Option<HashMap<(u32, String), (u64, u64)>>,
    previous: HashMap<(u32, String), (u64, u64)>,
}

impl GrowthTracker {
    /// Fills `growth` on every stack of `r` and remembers this report's values.
    pub fn apply(&mut self, r: &mut Report) {
        let mut now = HashMap::new();
        for p in &mut r.processes {
            for s in &mut p.stacks {
                let key = (p.pid, signature(s));
                let delta = |base: Option<&(u64, u64)>| {
                    let (b, c) = base.copied().unwrap_or((0, 0));
                    (s.bytes as i64 - b as i64, s.count as i64 - c as i64)
                };
                let (bp, cp) = delta(self.previous.get(&key));
                let (bf, cf) = delta(self.first.as_ref().and_then(|f| f.get(&key)));
                s.growth = Some(Growth {
                    bytes_since_previous: bp,
                    count_since_previous: cp,
                    bytes_since_first: bf,
                    count_since_first: cf,
                });
                now.insert(key, (s.bytes, s.count));
            }
        }
        if self.first.is_none() {
            self.first = Some(now.clone());
        }
        self.previous = now;
    }
}

/// The `top` largest of `stacks`, symbolized: the form every command's JSON uses for stacks.
pub fn stack_reports(
    pid: u32,
    stacks: &[StackSummary],
    top: usize,
    sym: &mut Symbolizer,
    table: &StackTable,
) -> Vec<StackReport> {
    stacks
        .iter()
        .take(top)
        .map(|s| stack_report(pid, s, sym, table))
        .collect()
}

fn stack_report(pid: u32, s: &StackSummary, sym: &mut Symbolizer, table: &StackTable) -> StackReport {
    let mut addrs: Vec<u64> = table.get(s.stack).map(<[u64]>::to_vec).unwrap_or_default();
    // The frame-pointer walk from inside libc's mmap wrapper skips the wrapper's caller; the
    // word at the stack pointer is that caller when it follows a call instruction.
    if s.kind == BlockKind::Mmap
        && s.caller != 0
        && addrs.get(1) != Some(&s.caller)
        && sym.is_return_address(pid, s.caller)
    {
        let at = addrs.len().min(1);
        addrs.insert(at, s.caller);
    }
    sym.cut_junk_frames(pid, &mut addrs);
    StackReport {
        kind: match s.kind {
            BlockKind::Heap => "heap",
            BlockKind::Mmap => "mmap",
        },
        bytes: s.bytes,
        count: s.count,
        oldest_age_ms: s.oldest_age.as_millis() as u64,
        stack_id: u32::try_from(s.stack.0).ok(),
        alloc_count: 0,
        alloc_bytes: 0,
        growth: None,
        frames: addrs.iter().flat_map(|a| sym.symbolize(pid, *a)).collect(),
    }
}

pub use crate::units::human_bytes;
