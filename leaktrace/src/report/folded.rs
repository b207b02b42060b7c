//! Folded stacks (Brendan Gregg's format, read by flamegraph.pl, inferno and speedscope): one line
//! per stack, the process then its frames root-first joined by `;`, weighted by surviving bytes.
use std::io::Write;

use super::{Frame, Report};
use crate::escape;

/// A frame's name in folded output: its function, else module+address; escaped by
/// [`escape::folded_frame`] (no `;`, space, newline or other control character inside).
pub fn frame_name(f: &Frame) -> String {
    let name = match &f.function {
        Some(func) => func.clone(),
        None => match &f.module {
            Some(m) => format!("{}+{}", m.rsplit('/').next().unwrap_or(m), f.address),
            None => f.address.clone(),
        },
    };
    escape::folded_frame(&name).into_owned()
}

/// The root frame naming the process: `comm_(pid)`.
fn process_name(comm: &str, pid: u32) -> String {
    format!("{}_({pid})", escape::folded_frame(comm))
}

/// The folded lines of a report (without trailing newlines), heaviest first.
pub fn lines(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for p in &r.processes {
        for s in p.stacks.iter().filter(|s| s.bytes > 0) {
            let mut parts = vec![process_name(&p.comm, p.pid)];
            parts.extend(s.frames.iter().rev().map(frame_name));
            out.push(format!("{} {}", parts.join(";"), s.bytes));
        }
    }
    out
}

pub fn render(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for l in lines(r) {
        writeln!(out, "{l}")?;
    }
    Ok(())
}
