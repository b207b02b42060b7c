//! The report model: what every output format renders. Built from the aggregator's survivors,
//! the stack cache and the symbolizer; rendering lives in one file per format.
pub mod json;
pub mod text;

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{Aggregator, BlockKind, Pid, ProcStats, StackSummary},
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
    /// stack (counted in `stack_errors`).
    pub stack_id: Option<u32>,
    pub frames: Vec<Frame>,
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
    /// Number of distinct leaking stacks (before --top).
    pub stacks_total: usize,
    pub stacks: Vec<StackReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// "interval" or "final".
    pub report: &'static str,
    pub elapsed_ms: u64,
    pub min_age_ms: u64,
    pub processes: Vec<ProcessReport>,
    pub lost_events: u64,
    pub stack_errors: u64,
    pub missed_returns: u64,
    pub malformed_events: u64,
    pub leaked_bytes: u64,
    pub leaked_count: u64,
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
}

pub fn build(
    agg: &mut Aggregator,
    sym: &mut Symbolizer,
    ctx: &Context<'_>,
    now_ns: u64,
) -> Report {
    let mut processes = Vec::new();
    for e in agg.take_exited() {
        processes.push(process_report(e.pid, e.stats, &e.stacks, true, sym, ctx));
        sym.forget(e.pid.0);
    }
    let mut live: Vec<Pid> = agg.tracked().collect();
    live.sort();
    for pid in live {
        let stacks = agg.survivors(pid, now_ns);
        let stats = agg.stats(pid).unwrap_or_default();
        processes.push(process_report(pid, stats, &stacks, false, sym, ctx));
    }
    Report {
        report: if ctx.is_final { "final" } else { "interval" },
        elapsed_ms: ctx.elapsed.as_millis() as u64,
        min_age_ms: ctx.min_age.as_millis() as u64,
        leaked_bytes: processes.iter().map(|p| p.leaked_bytes).sum(),
        leaked_count: processes.iter().map(|p| p.leaked_count).sum(),
        processes,
        lost_events: ctx.counters.lost,
        stack_errors: ctx.counters.stack_errors,
        missed_returns: ctx.counters.missed_returns + ctx.counters.pending_full,
        malformed_events: ctx.malformed,
    }
}

fn process_report(
    pid: Pid,
    stats: ProcStats,
    stacks: &[StackSummary],
    exited: bool,
    sym: &mut Symbolizer,
    ctx: &Context<'_>,
) -> ProcessReport {
    ProcessReport {
        pid: pid.0,
        comm: ctx.comms.get(&pid.0).cloned().unwrap_or_default(),
        exited,
        leaked_bytes: stacks.iter().map(|s| s.bytes).sum(),
        leaked_count: stacks.iter().map(|s| s.count).sum(),
        outstanding_bytes: stats.outstanding_bytes,
        outstanding_count: stats.outstanding_count,
        allocations: stats.allocs,
        frees: stats.frees,
        stacks_total: stacks.len(),
        stacks: stack_reports(pid.0, stacks, ctx.top, sym, ctx.stacks),
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
    StackReport {
        kind: match s.kind {
            BlockKind::Heap => "heap",
            BlockKind::Mmap => "mmap",
        },
        bytes: s.bytes,
        count: s.count,
        oldest_age_ms: s.oldest_age.as_millis() as u64,
        stack_id: u32::try_from(s.stack.0).ok(),
        frames: addrs.iter().flat_map(|a| sym.symbolize(pid, *a)).collect(),
    }
}

pub use crate::units::human_bytes;
