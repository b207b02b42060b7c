//! Folded stacks (Brendan Gregg's format, read by flamegraph.pl, inferno and speedscope): one line
//! per stack, the process then its frames root-first joined by `;`, weighted by surviving bytes.
use std::io::Write;

use super::{Frame, Report};

/// A frame's name in folded output: function (with `:line` if known), else module+address.
/// `;` and spaces would break the format, so they are replaced.
pub fn frame_name(f: &Frame) -> String {
    let name = match (&f.function, f.line) {
        (Some(func), _) => func.clone(),
        (None, _) => match &f.module {
            Some(m) => format!("{}+{}", m.rsplit('/').next().unwrap_or(m), f.address),
            None => f.address.clone(),
        },
    };
    name.replace([';', ' '], "_")
}

/// The folded lines of a report (without trailing newlines), heaviest first.
pub fn lines(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for p in &r.processes {
        for s in p.stacks.iter().filter(|s| s.bytes > 0) {
            let mut parts = vec![format!("{} ({})", p.comm, p.pid).replace([';', ' '], "_")];
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
