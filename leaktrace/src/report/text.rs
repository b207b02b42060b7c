//! Text rendering for people: per process, the leaking stacks largest first, then the counters
//! that say whether anything was lost. Names the traced process chose (comm, symbols, files,
//! modules) go through [`escape::text`]: one line each, no control character reaches the reader.
use std::io::Write;

use super::{Report, StackReport, human_bytes};
use crate::escape;

pub fn render(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let title = if r.report == "final" { "final report" } else { "report" };
    writeln!(
        out,
        "leaktrace {title} after {:.1}s: {} in {} blocks older than {:.1}s",
        r.elapsed_ms as f64 / 1000.0,
        human_bytes(r.leaked_bytes),
        r.leaked_count,
        r.min_age_ms as f64 / 1000.0
    )?;
    if let Some(why) = &r.estimate_unreliable_reason {
        writeln!(out, "warning: estimates unreliable: {why}")?;
    }
    for p in &r.processes {
        writeln!(out)?;
        writeln!(
            out,
            "PID {} ({}){}: {} in {} blocks leaked; {} in {} blocks outstanding; {} allocations, {} frees",
            p.pid,
            escape::text(&p.comm),
            if p.exited { ", exited" } else { "" },
            human_bytes(p.leaked_bytes),
            p.leaked_count,
            human_bytes(p.outstanding_bytes),
            p.outstanding_count,
            p.allocations,
            p.frees
        )?;
        for (i, s) in p.stacks.iter().enumerate() {
            stack(out, i + 1, s)?;
        }
        if p.loader_bytes > 0 {
            writeln!(
                out,
                "  (not listed: {} of the dynamic loader's own mappings)",
                human_bytes(p.loader_bytes)
            )?;
        }
        if p.stacks_total > p.stacks.len() {
            writeln!(
                out,
                "  ... {} more stacks (raise --top to see them)",
                p.stacks_total - p.stacks.len()
            )?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "lost events: {}  stack errors: {}  missed returns: {}  malformed events: {}  \
         sampled set full: {}",
        r.lost_events, r.stack_errors, r.missed_returns, r.malformed_events, r.sampled_set_full
    )?;
    if r.symbolization_failures > 0 {
        writeln!(
            out,
            "symbolization failures: {} (frames shown as ??; see the warning above)",
            r.symbolization_failures
        )?;
    }
    if r.mapping_records_lost > 0 {
        writeln!(
            out,
            "mapping records lost: {} (a library unloaded right after leaking may show as ??)",
            r.mapping_records_lost
        )?;
    }
    Ok(())
}

pub fn stack(out: &mut dyn Write, n: usize, s: &StackReport) -> std::io::Result<()> {
    writeln!(
        out,
        "  #{n} {} in {} {} blocks, oldest {:.1}s",
        human_bytes(s.bytes),
        s.count,
        s.kind,
        s.oldest_age_ms as f64 / 1000.0
    )?;
    if s.frames.is_empty() {
        writeln!(out, "      [stack unavailable]")?;
    }
    for f in &s.frames {
        let func = escape::text(f.function.as_deref().unwrap_or("??"));
        let loc = match (&f.file, f.line) {
            (Some(file), Some(line)) => format!("{}:{line}", escape::text(file)),
            (Some(file), None) => escape::text(file).into_owned(),
            _ => escape::text(f.module.as_deref().unwrap_or(&f.address)).into_owned(),
        };
        let inl = if f.inlined { " (inlined)" } else { "" };
        writeln!(out, "      {func}{inl}  {loc}")?;
    }
    Ok(())
}
