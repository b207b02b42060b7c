//! `leaktrace diff OLD.json NEW.json`: growth between two saved reports (`trace` JSON, whose last
//! line is used, or `audit` JSON), per process and per stack. Processes are matched by executable
//! and command line when the reports have them (audits), else by name, since PIDs change across
//! runs; stacks by their kind and frames' functions, since addresses change with ASLR.
use std::{collections::BTreeMap, io::Write, path::Path};

use serde::Serialize;

use crate::{
    config::Format,
    error::{Error, Result},
    report::{Frame, human_bytes},
    saved,
};

/// Deltas are `i128`: the difference of two `u64`s always fits, so no report, however odd,
/// makes a delta wrap around.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StackDiff {
    pub kind: String,
    pub old_bytes: u64,
    pub new_bytes: u64,
    pub bytes_delta: i128,
    pub old_count: u64,
    pub new_count: u64,
    pub count_delta: i128,
    pub frames: Vec<Frame>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcessDiff {
    /// What matched the two processes: "exe+cmdline" or "comm".
    pub matched_by: &'static str,
    pub comm: String,
    pub old_pid: Option<u64>,
    pub new_pid: Option<u64>,
    pub leaked_bytes_delta: i128,
    /// Largest growth first; stacks present in only one report count as 0 in the other.
    pub stacks: Vec<StackDiff>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Diff {
    pub old: String,
    pub new: String,
    pub processes: Vec<ProcessDiff>,
}

#[derive(Debug, Default)]
struct Proc {
    comm: String,
    pid: Option<u64>,
    exe_cmdline: Option<String>,
    leaked_bytes: u64,
    stacks: BTreeMap<String, (String, u64, u64, Vec<Frame>)>,
}

/// Reads a trace (JSON Lines: the last report) or audit report, at most `limit` bytes.
fn load(path: &Path, limit: u64) -> Result<Vec<Proc>> {
    let report = saved::load(path, limit).map_err(|e| Error::Usage(e.to_string()))?;
    let mut out = Vec::new();
    for (i, p) in report.processes.into_iter().enumerate() {
        let mut proc = Proc {
            comm: p.comm,
            pid: Some(u64::from(p.pid)),
            leaked_bytes: p.leaked_bytes,
            ..Proc::default()
        };
        if let Some(exe) = p.exe {
            let cmdline = p.cmdline.unwrap_or_default();
            proc.exe_cmdline = Some(format!("{exe}\0{}", cmdline.join("\0")));
        }
        for s in p.stacks {
            let sig = signature(&s.kind, &s.frames);
            let e = proc.stacks.entry(sig).or_insert((s.kind, 0, 0, s.frames));
            // Stacks that differ only in addresses are summed; a sum past u64 is no real report.
            match (e.1.checked_add(s.bytes), e.2.checked_add(s.count)) {
                (Some(b), Some(c)) => (e.1, e.2) = (b, c),
                _ => {
                    return Err(Error::Usage(format!(
                        "{}: field processes[{i}].stacks: the stacks of one function sum to more \
                         than 2^64 bytes or blocks: the file is not a real report",
                        path.display()
                    )));
                }
            }
        }
        out.push(proc);
    }
    Ok(out)
}

fn signature(kind: &str, frames: &[Frame]) -> String {
    let mut sig = kind.to_string();
    for f in frames {
        sig.push(';');
        sig.push_str(f.function.as_deref().or(f.module.as_deref()).unwrap_or(&f.address));
    }
    sig
}

/// Compares two saved reports, each read up to `max_input` bytes.
pub fn diff(old_path: &Path, new_path: &Path, max_input: u64) -> Result<Diff> {
    let old = load(old_path, max_input)?;
    let new = load(new_path, max_input)?;
    let mut processes = Vec::new();
    for n in &new {
        let by_exe = n.exe_cmdline.as_ref().and_then(|k| {
            old.iter().find(|o| o.exe_cmdline.as_ref() == Some(k)).map(|o| (o, "exe+cmdline"))
        });
        let Some((o, matched_by)) =
            by_exe.or_else(|| old.iter().find(|o| o.comm == n.comm).map(|o| (o, "comm")))
        else {
            continue;
        };
        let mut stacks: Vec<StackDiff> = Vec::new();
        let sigs: std::collections::BTreeSet<&String> = o.stacks.keys().chain(n.stacks.keys()).collect();
        for sig in sigs {
            let (ok, ob, oc, of) = o.stacks.get(sig).cloned().unwrap_or_default();
            let (nk, nb, nc, nf) = n.stacks.get(sig).cloned().unwrap_or_default();
            stacks.push(StackDiff {
                kind: if nk.is_empty() { ok } else { nk },
                old_bytes: ob,
                new_bytes: nb,
                bytes_delta: i128::from(nb) - i128::from(ob),
                old_count: oc,
                new_count: nc,
                count_delta: i128::from(nc) - i128::from(oc),
                frames: if nf.is_empty() { of } else { nf },
            });
        }
        stacks.sort_by(|a, b| b.bytes_delta.cmp(&a.bytes_delta).then(a.frames.len().cmp(&b.frames.len())));
        processes.push(ProcessDiff {
            matched_by,
            comm: n.comm.clone(),
            old_pid: o.pid,
            new_pid: n.pid,
            leaked_bytes_delta: i128::from(n.leaked_bytes) - i128::from(o.leaked_bytes),
            stacks,
        });
    }
    if processes.is_empty() {
        return Err(Error::Usage(format!(
            "{} and {} share no process (by executable and command line, or by name): \
             are they reports of the same program?",
            old_path.display(),
            new_path.display()
        )));
    }
    Ok(Diff {
        old: old_path.display().to_string(),
        new: new_path.display().to_string(),
        processes,
    })
}

fn signed(b: i128) -> String {
    // |new - old| of two u64s fits a u64.
    let s = human_bytes(u64::try_from(b.unsigned_abs()).unwrap_or(u64::MAX));
    if b < 0 { format!("-{s}") } else { format!("+{s}") }
}

pub fn render(d: &Diff, format: Format, out: &mut dyn Write) -> std::io::Result<()> {
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, d).map_err(std::io::Error::other)?;
        return writeln!(out);
    }
    writeln!(out, "leaktrace diff {} -> {}", d.old, d.new)?;
    for p in &d.processes {
        writeln!(out)?;
        writeln!(
            out,
            "{} (pid {} -> {}, matched by {}): leaked {}",
            crate::escape::text(&p.comm),
            p.old_pid.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
            p.new_pid.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
            p.matched_by,
            signed(p.leaked_bytes_delta)
        )?;
        for s in p.stacks.iter().filter(|s| s.bytes_delta != 0).take(10) {
            let site = crate::report::site_frame(&s.frames)
                .and_then(|f| f.function.clone())
                .unwrap_or_else(|| "??".into());
            writeln!(
                out,
                "  {:>12} {:>+6} blocks  {} -> {}  {} ({})",
                signed(s.bytes_delta),
                s.count_delta,
                human_bytes(s.old_bytes),
                human_bytes(s.new_bytes),
                crate::escape::text(&site),
                s.kind
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, v: serde_json::Value) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("leaktrace-diff-{}-{name}", std::process::id()));
        std::fs::write(&p, v.to_string()).unwrap();
        p
    }

    fn stack(func: &str, bytes: u64, count: u64) -> serde_json::Value {
        serde_json::json!({"kind": "heap", "bytes": bytes, "count": count,
            "frames": [{"address": "0x1", "function": func, "file": null, "line": null,
                        "module": "/bin/x", "inlined": false}]})
    }

    #[test]
    fn growth_per_stack_matched_by_name_across_pids() {
        let old = write("old", serde_json::json!({"processes": [{"pid": 1, "comm": "svc",
            "leaked_bytes": 100, "outstanding_bytes": 100, "stacks": [stack("a", 100, 1), stack("gone", 50, 1)]}]}));
        let new = write("new", serde_json::json!({"processes": [{"pid": 2, "comm": "svc",
            "leaked_bytes": 400, "outstanding_bytes": 400, "stacks": [stack("a", 300, 3), stack("b", 100, 1)]}]}));
        let d = diff(&old, &new, saved::DEFAULT_MAX_INPUT).unwrap();
        let p = &d.processes[0];
        assert_eq!((p.matched_by, p.old_pid, p.new_pid, p.leaked_bytes_delta), ("comm", Some(1), Some(2), 300));
        let a = p.stacks.iter().find(|s| s.frames[0].function.as_deref() == Some("a")).unwrap();
        assert_eq!((a.bytes_delta, a.count_delta), (200, 2));
        assert_eq!(p.stacks[0].frames[0].function.as_deref(), Some("a"), "largest growth first");
        let gone = p.stacks.iter().find(|s| s.frames[0].function.as_deref() == Some("gone")).unwrap();
        assert_eq!(gone.bytes_delta, -50);
        let mut text = Vec::new();
        render(&d, Format::Text, &mut text).unwrap();
        assert!(String::from_utf8(text).unwrap().contains("+200 B"));
    }

    #[test]
    fn unrelated_and_foreign_files_are_refused() {
        let a = write("a", serde_json::json!({"processes": [{"pid": 1, "comm": "one",
            "leaked_bytes": 0, "outstanding_bytes": 0, "stacks": []}]}));
        let b = write("b", serde_json::json!({"processes": [{"pid": 2, "comm": "two",
            "leaked_bytes": 0, "outstanding_bytes": 0, "stacks": []}]}));
        assert!(diff(&a, &b, saved::DEFAULT_MAX_INPUT).unwrap_err().to_string().contains("share no process"));
        let c = write("c", serde_json::json!({"x": 1}));
        let e = diff(&a, &c, saved::DEFAULT_MAX_INPUT).unwrap_err().to_string();
        assert!(e.contains("missing field `processes`"), "{e}");
    }
}
