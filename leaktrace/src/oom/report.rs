//! The OOM forensic report: its model (the JSON schema), its text rendering, and writing its
//! files through the sink (each: unpredictable temporary, fsync, rename; mode 0600) as one set,
//! all or nothing, so that a storm of kills or a full disk leaves one whole report each and never
//! a partial one.
use std::{
    ffi::OsStr,
    io::Write,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    config::Format,
    escape,
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
    /// When not tracked: why, and what to do about it (never the option already given).
    pub untracked_reason: Option<String>,
    pub rss_history: Vec<Sample>,
    pub rss_trend: Option<Trend>,
    pub top_consumers: Vec<Consumer>,
    /// Outstanding allocations at the moment of the report, largest first (all ages).
    pub stacks: Vec<StackReport>,
    pub lost_events: u64,
    pub stack_errors: u64,
    /// Reports of other kills dropped, since the watcher started, because the report directory
    /// could not be written and too many were already held in memory.
    pub dropped_reports: u64,
}

/// Writes `DIR/NAME.json` and `DIR/NAME.txt`, each through a temporary file and a rename; with
/// `--format pprof|folded|svg` also the victim's stacks as `NAME.pb.gz|.folded|.svg`. All or
/// nothing: when one file cannot be written, what this attempt wrote is removed and the error
/// returned, so that the caller can retry the whole set. The `.json` is renamed into place last:
/// a reader that sees it sees the whole set.
pub fn write(dir: &Path, name: &str, r: &OomReport, format: Format) -> std::io::Result<PathBuf> {
    let json = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
    let mut txt = Vec::new();
    render_text(r, &mut txt)?;
    let ext = match format {
        Format::Pprof => Some("pb.gz"),
        Format::Folded => Some("folded"),
        Format::Svg => Some("svg"),
        Format::Text | Format::Json => None,
    };
    let mut files = Vec::new();
    if let Some(ext) = ext {
        let mut buf = Vec::new();
        crate::report::render(format, &r.as_report(), &mut buf)?;
        files.push((format!("{name}.{ext}"), buf));
    }
    files.push((format!("{name}.txt"), txt));
    let json_name = format!("{name}.json");
    files.push((json_name.clone(), json));
    // Held open for every file: a directory swapped for a link meanwhile is not followed.
    let d = crate::sink::Dir::open(dir, false)?;
    let mut written: Vec<&OsStr> = Vec::new();
    for (file, data) in &files {
        // A failed replace leaves no temporary; the files this attempt already wrote go too.
        if let Err(e) = d.replace(OsStr::new(file), data) {
            for w in &written {
                let _ = d.remove(w);
            }
            return Err(e);
        }
        written.push(OsStr::new(file));
    }
    Ok(dir.join(json_name))
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
            mapping_records_lost: 0,
            sampled_set_full: 0,
            estimate_unreliable: false,
            estimate_unreliable_reason: None,
            events: 0,
            group_by: crate::config::GroupBy::Stack,
            sample_rate: None,
        }
    }
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
    writeln!(out, "{what} pid {} ({}) at {}", v.pid, escape::text(&v.comm), r.time)?;
    if let Some(t) = &r.threshold {
        writeln!(out, "  crossed: {t}")?;
    }
    writeln!(out, "  scope: {} ({})", r.oom_scope, escape::text(&r.oom_scope_reason))?;
    if let Some(c) = &v.cmdline {
        let args: Vec<_> = c.iter().map(|a| escape::text(a)).collect();
        writeln!(out, "  command: {}", args.join(" "))?;
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
            escape::text(&m.path),
            m.limit_bytes.map(human_bytes).unwrap_or_else(|| "none".into()),
            m.max_usage_bytes.map(human_bytes).unwrap_or_else(|| "?".into()),
            m.usage_bytes.map(human_bytes).unwrap_or_else(|| "?".into())
        )?,
        None => writeln!(
            out,
            "  memory cgroup: {}",
            escape::text(v.cgroup.as_deref().unwrap_or("unknown"))
        )?,
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
        writeln!(out, "    {:>8} {:<16} {}", c.pid, escape::text(&c.comm), human_bytes(c.rss_bytes))?;
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
        let why = r.untracked_reason.as_deref().unwrap_or("leaktrace was not tracking it");
        writeln!(out, "  stacks: not tracked: {}", escape::text(why))?;
    }
    if !r.missing_fields.is_empty() {
        writeln!(out, "  not reported by this kernel: {}", r.missing_fields.join(", "))?;
    }
    if !r.proc.unavailable.is_empty() {
        writeln!(out, "  could not read: {}", escape::text(&r.proc.unavailable.join("; ")))?;
    }
    if r.dropped_reports > 0 {
        writeln!(
            out,
            "  reports of other kills dropped (directory not writable, too many held): {}",
            r.dropped_reports
        )?;
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

    fn sample() -> OomReport {
        OomReport {
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
            untracked_reason: Some("start leaktrace oom with --track-comm x to record them".into()),
            rss_history: vec![],
            rss_trend: None,
            top_consumers: vec![],
            stacks: vec![],
            lost_events: 0,
            stack_errors: 0,
            dropped_reports: 0,
        }
    }

    #[test]
    fn writes_both_files_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("leaktrace-oom-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = sample();
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

    #[test]
    fn a_failed_write_leaves_no_part_of_the_set() {
        let dir = std::env::temp_dir().join(format!("leaktrace-oom-partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The .json cannot be renamed into place (a non-empty directory holds its name), after
        // the .folded and the .txt were written.
        std::fs::create_dir_all(dir.join("n.json/x")).unwrap();
        let mut r = sample();
        r.dropped_reports = 3;
        assert!(write(&dir, "n", &r, Format::Folded).is_err());
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        left.sort();
        assert_eq!(left, vec!["n.json".to_string()], "only what was there before");
        std::fs::remove_dir_all(dir.join("n.json")).unwrap();
        write(&dir, "n", &r, Format::Text).unwrap();
        let txt = std::fs::read_to_string(dir.join("n.txt")).unwrap();
        assert!(txt.contains("not tracked: start leaktrace oom with --track-comm x"), "{txt}");
        assert!(txt.contains("dropped (directory not writable, too many held): 3"), "{txt}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
