//! The OOM forensic report: its model (the JSON schema), its text rendering, and writing both
//! files atomically (temporary file, then rename) with mode 0600, so that a storm of kills leaves
//! one whole report each and never a half-written one.
use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    config::Format,
    procinfo::{Consumer, Memcg, ProcSnapshot},
    report::{StackReport, human_bytes, text},
    trend::{Sample, Trend},
};

#[derive(Debug, Clone, Serialize, Default)]
pub struct Victim {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Option<Vec<String>>,
    pub uid: Option<u32>,
    /// The memory cgroup path (v1 memory hierarchy, else the unified one).
    pub cgroup: Option<String>,
    pub oom_score_adj: Option<i64>,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OomReport {
    /// "oom_kill" or "threshold".
    pub reason: &'static str,
    /// What crossed, for "threshold" reports.
    pub threshold: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub victim: Victim,
    /// Victim fields the kernel's tracepoint does not have (or, for threshold reports, that
    /// /proc did not give).
    pub missing_fields: Vec<String>,
    /// "cgroup", "global" or "unknown", and why.
    pub oom_scope: &'static str,
    pub oom_scope_reason: String,
    pub memcg: Option<Memcg>,
    /// What /proc/PID/status and smaps_rollup still showed, and what could not be read.
    pub proc: ProcSnapshot,
    /// Whether leaktrace was tracking the process (then `stacks` and `rss_history` are filled).
    pub tracked: bool,
    pub rss_history: Vec<Sample>,
    pub rss_trend: Option<Trend>,
    pub top_consumers: Vec<Consumer>,
    /// Outstanding allocations at the moment of the report, largest first (all ages).
    pub stacks: Vec<StackReport>,
    pub lost_events: u64,
    pub stack_errors: u64,
}

/// Writes `DIR/NAME.json` and `DIR/NAME.txt`, each through a temporary file and a rename; with
/// `--format pprof|folded|svg` also the victim's stacks as `NAME.pb.gz|.folded|.svg`.
pub fn write(dir: &Path, name: &str, r: &OomReport, format: Format) -> std::io::Result<PathBuf> {
    let json = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
    let mut txt = Vec::new();
    render_text(r, &mut txt)?;
    let json_path = dir.join(format!("{name}.json"));
    atomic_write(&json_path, &json)?;
    atomic_write(&dir.join(format!("{name}.txt")), &txt)?;
    let ext = match format {
        Format::Pprof => Some("pb.gz"),
        Format::Folded => Some("folded"),
        Format::Svg => Some("svg"),
        Format::Text | Format::Json => None,
    };
    if let Some(ext) = ext {
        let mut buf = Vec::new();
        crate::report::render(format, &r.as_report(), &mut buf)?;
        atomic_write(&dir.join(format!("{name}.{ext}")), &buf)?;
    }
    Ok(json_path)
}

impl OomReport {
    /// The victim's stacks as the common report model, for pprof, folded and SVG.
    pub fn as_report(&self) -> crate::report::Report {
        let p = crate::report::ProcessReport {
            pid: self.victim.pid,
            comm: self.victim.comm.clone(),
            exited: self.reason == "oom_kill",
            leaked_bytes: self.stacks.iter().map(|s| s.bytes).sum(),
            leaked_count: self.stacks.iter().map(|s| s.count).sum(),
            outstanding_bytes: self.stacks.iter().map(|s| s.bytes).sum(),
            outstanding_count: self.stacks.iter().map(|s| s.count).sum(),
            allocations: 0,
            frees: 0,
            stacks_total: self.stacks.len(),
            stacks: self.stacks.clone(),
            loader_bytes: 0,
            mappings: Vec::new(),
        };
        crate::report::Report {
            report: "final",
            time: self.time.clone(),
            elapsed_ms: 0,
            min_age_ms: 0,
            leaked_bytes: p.leaked_bytes,
            leaked_count: p.leaked_count,
            processes: vec![p],
            lost_events: self.lost_events,
            stack_errors: self.stack_errors,
            missed_returns: 0,
            malformed_events: 0,
            symbolization_failures: 0,
            sampled_set_full: 0,
            events: 0,
            group_by: crate::config::GroupBy::Stack,
            sample_rate: None,
        }
    }
}

fn atomic_write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A file-name-safe comm.
pub fn safe_name(comm: &str) -> String {
    let s: String = comm
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    if s.is_empty() { "unknown".into() } else { s }
}

fn kb(v: Option<u64>) -> String {
    v.map(|k| human_bytes(k * 1024)).unwrap_or_else(|| "?".into())
}

pub fn render_text(r: &OomReport, out: &mut dyn Write) -> std::io::Result<()> {
    let v = &r.victim;
    let what = if r.reason == "oom_kill" { "OOM kill of" } else { "Threshold snapshot of" };
    writeln!(out, "{what} pid {} ({}) at {}", v.pid, v.comm, r.time)?;
    if let Some(t) = &r.threshold {
        writeln!(out, "  crossed: {t}")?;
    }
    writeln!(out, "  scope: {} ({})", r.oom_scope, r.oom_scope_reason)?;
    if let Some(c) = &v.cmdline {
        writeln!(out, "  command: {}", c.join(" "))?;
    }
    writeln!(
        out,
        "  uid {}, oom_score_adj {}",
        v.uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into()),
        v.oom_score_adj.map(|u| u.to_string()).unwrap_or_else(|| "?".into())
    )?;
    writeln!(
        out,
        "  memory: total-vm {}, anon-rss {}, file-rss {}, shmem-rss {}, page tables {}",
        kb(v.total_vm_kb),
        kb(v.anon_rss_kb),
        kb(v.file_rss_kb),
        kb(v.shmem_rss_kb),
        kb(v.pgtables_kb)
    )?;
    match &r.memcg {
        // Usage is read after the kill freed the victim's memory; the peak shows the squeeze.
        Some(m) => writeln!(
            out,
            "  memory cgroup (v{}): {} limit {}, peak usage {}, usage now {}",
            m.version,
            m.path,
            m.limit_bytes.map(human_bytes).unwrap_or_else(|| "none".into()),
            m.max_usage_bytes.map(human_bytes).unwrap_or_else(|| "?".into()),
            m.usage_bytes.map(human_bytes).unwrap_or_else(|| "?".into())
        )?,
        None => writeln!(out, "  memory cgroup: {}", v.cgroup.as_deref().unwrap_or("unknown"))?,
    }
    if let Some(t) = &r.rss_trend {
        writeln!(out, "  RSS trend: {:?}: {}", t.class, t.explanation)?;
    }
    if !r.rss_history.is_empty() {
        let h: Vec<String> = r
            .rss_history
            .iter()
            .map(|s| format!("{:.1}s {}", s.t_ms as f64 / 1000.0, human_bytes(s.rss_bytes)))
            .collect();
        writeln!(out, "  RSS history: {}", h.join(", "))?;
    }
    writeln!(out, "  top memory consumers at that moment:")?;
    for c in &r.top_consumers {
        writeln!(out, "    {:>8} {:<16} {}", c.pid, c.comm, human_bytes(c.rss_bytes))?;
    }
    if r.tracked {
        writeln!(out, "  stacks holding memory:")?;
        if r.stacks.is_empty() {
            writeln!(out, "    (none outstanding)")?;
        }
        for (i, s) in r.stacks.iter().enumerate() {
            text::stack(out, i + 1, s)?;
        }
    } else {
        writeln!(
            out,
            "  stacks: not tracked (start leaktrace oom with --track-comm {} to record them)",
            v.comm
        )?;
    }
    if !r.missing_fields.is_empty() {
        writeln!(out, "  not reported by this kernel: {}", r.missing_fields.join(", "))?;
    }
    if !r.proc.unavailable.is_empty() {
        writeln!(out, "  could not read: {}", r.proc.unavailable.join("; "))?;
    }
    writeln!(out, "  lost events: {}  stack errors: {}", r.lost_events, r.stack_errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe() {
        assert_eq!(safe_name("a/b c"), "a_b_c");
        assert_eq!(safe_name(""), "unknown");
        assert_eq!(safe_name("kworker-1.x"), "kworker-1.x");
    }

    #[test]
    fn writes_both_files_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("leaktrace-oom-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = OomReport {
            reason: "oom_kill",
            threshold: None,
            time: "2026-11-23T00:00:00.000Z".into(),
            victim: Victim {
                pid: 7,
                comm: "x".into(),
                ..Victim::default()
            },
            missing_fields: vec![],
            oom_scope: "unknown",
            oom_scope_reason: String::new(),
            memcg: None,
            proc: ProcSnapshot::default(),
            tracked: false,
            rss_history: vec![],
            rss_trend: None,
            top_consumers: vec![],
            stacks: vec![],
            lost_events: 0,
            stack_errors: 0,
        };
        let p = write(&dir, "n", &r, Format::Folded).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["victim"]["pid"], 7);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(dir.join("n.txt").exists());
        assert!(dir.join("n.folded").exists());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
