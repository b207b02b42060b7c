//! `leaktrace oom`: a long-running watcher that writes a forensic report for every OOM kill
//! (`oom/mark_victim`), and for tracked processes also a flight recorder of their outstanding
//! allocation stacks and RSS history, plus threshold snapshots before a kill. A report that
//! cannot be written (a full disk) is held in memory and retried; the watcher goes on. Tracing
//! itself is the `Session`'s; /proc and cgroup reading is `procinfo`'s; the report model is
//! `report`'s; the queue of unwritten reports is `held`'s; decoding renames is `rename`'s.
mod held;
mod kills;
mod rename;
pub mod report;

use std::{
    collections::HashMap,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};

use crate::{
    aggregate::Pid,
    allocator,
    config::{Format, OomConfig},
    error::{Error, Result},
    escape,
    procinfo::{self, CgroupPaths, ProcSnapshot},
    report::stack_reports,
    probes::Scope,
    session::{Session, Watch},
    target,
    tpformat::Layout,
    trace::now_ns,
    trend::{self, History, Sample},
    units,
};
use held::{Change, Held, MAX_HELD};
use report::{OomReport, Victim};

/// RSS samples kept per tracked process: ten minutes at one a second.
const HISTORY: usize = 600;
/// Stacks in a report.
const TOP_STACKS: usize = 20;
/// How long a process that just exec'd may take to map its allocator before we give up on it.
const ATTACH_GRACE: Duration = Duration::from_secs(2);
/// Processes whose name matched but that could not be tracked, kept with the reason (for the
/// report if one is killed) while they live; at most this many.
const MAX_UNTRACKED: usize = 4096;

struct Tracked {
    comm: String,
    since: Instant,
    history: History,
    /// What /proc said when tracking began: the fallback when the victim's entry is already gone.
    snapshot: ProcSnapshot,
    rss_armed: bool,
    memcg_armed: bool,
}

struct Watcher<'a> {
    cfg: &'a OomConfig,
    layout: Layout,
    session: Session,
    tracked: HashMap<u32, Tracked>,
    /// Processes that exec'd with a tracked name but have not mapped an allocator yet.
    pending: HashMap<u32, (String, Instant)>,
    /// Why a process with a tracked name is not tracked (no allocator, attach failed).
    untracked: HashMap<u32, String>,
    /// Processes with a tracked name left untracked because `--max-targets` were tracked.
    over_max_targets: u64,
    /// `task/task_rename`'s layout, when tracking by name on a kernel that has it.
    rename_layout: Option<Layout>,
    /// Reports waiting for the directory to take them.
    held: Held<Unwritten>,
    /// Every memory cgroup's oom_kill counter: names the cgroup of a victim gone too fast.
    kills: kills::KillCounts,
    reports: usize,
    done: bool,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

pub async fn run(cfg: OomConfig) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    target::check_environment()?;
    let layout = Layout::load("oom", "mark_victim").map_err(|e| {
        Error::Usage(format!(
            "the tracepoint oom/mark_victim is missing ({e}): this kernel cannot report OOM kills"
        ))
    })?;
    prepare_dir(&cfg.dir)?;
    let metrics = crate::session::start_metrics(cfg.metrics_addr).await?;
    // Each process once (a repeat or a thread of it would attach its probes again).
    let explicit = target::resolve_pids(&cfg.track_pids, cfg.max_targets, "--track-pid")?;

    let mut session = Session::new(
        cfg.ring_size,
        Duration::ZERO,
        Scope::Targets,
        crate::probes::Tuning {
            max_sampled: 1,
            ..Default::default()
        },
    )?;
    session.probes.attach_tracepoints()?;
    session.probes.attach_oom()?;
    let mut rename_layout = None;
    if !cfg.track_comms.is_empty() {
        session.probes.attach_exec()?;
        // A process may take a tracked name after it started: prctl(PR_SET_NAME).
        match Layout::load("task", "task_rename") {
            Ok(l) => {
                session.probes.attach_rename()?;
                rename_layout = Some(l);
            }
            Err(e) => eprintln!(
                "leaktrace: the tracepoint task/task_rename is missing ({e}): a process that \
                 renames itself to a --track-comm name will not be tracked"
            ),
        }
    }
    let mut w = Watcher {
        cfg: &cfg,
        layout,
        session,
        tracked: HashMap::new(),
        pending: HashMap::new(),
        untracked: HashMap::new(),
        over_max_targets: 0,
        rename_layout,
        held: Held::new(MAX_HELD),
        kills: kills::KillCounts::read(),
        reports: 0,
        done: false,
        metrics: metrics.as_ref().map(|(m, _)| m.clone()),
    };
    for p in explicit {
        let libs = allocator::find_allocators(p.pid)?;
        if libs.is_empty() {
            return Err(Error::NoAllocator {
                pid: p.pid,
                comm: p.comm,
            });
        }
        w.track(p.pid, &p.comm, &libs)?;
    }
    for (pid, comm) in processes_named(&cfg.track_comms) {
        w.pending.insert(pid, (comm, Instant::now()));
    }
    w.attach_pending();
    let matched = w.tracked.len();
    for name in &cfg.track_comms {
        if !w.tracked.values().any(|t| procinfo::comm_matches(name, &t.comm)) {
            eprintln!(
                "leaktrace: no process named {name} yet; it will be tracked when it starts or takes that name"
            );
        }
    }
    eprintln!(
        "leaktrace: watching for OOM kills; reports go to {}; tracking {matched} processes",
        cfg.dir.display()
    );

    let ring = w.session.probes.take_ring().ok_or_else(|| Error::Bpf("no ring".into()))?;
    // SAFETY: the ring buffer owns its descriptor and lives inside the AsyncFd until both drop.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| Error::Io(e.into()))?;
    let mut drain_tick = interval(Duration::from_millis(10));
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sample_tick = interval(Duration::from_secs(1));
    sample_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // With --once, the watcher ends once its report is out, not while it is held in memory.
    while !(w.done && w.held.is_empty()) {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                w.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                w.drain(ring.get_mut())?;
                w.attach_pending();
            }
            _ = sample_tick.tick() => {
                w.sample();
                w.flush_held();
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    w.flush_held();
    if !w.held.is_empty() {
        // Nothing lost silently: the caller exits 1 with this line.
        return Err(Error::Io(std::io::Error::other(format!(
            "cannot write {}: {} OOM report(s) held in memory are lost at exit",
            cfg.dir.display(),
            w.held.len()
        ))));
    }
    Ok(())
}

/// A report waiting to be written, with its file name.
struct Unwritten {
    name: String,
    report: OomReport,
}

/// Makes sure `--dir` is a private directory of root's before anything is traced: created 0700
/// when missing; an existing one is used as it is (never chmodded: `--dir /tmp` must not lock
/// everyone out of /tmp) or refused when it is a symbolic link, someone else's, or writable by
/// others, since reports hold command lines and whoever can write there can plant or swap files.
fn prepare_dir(dir: &Path) -> Result<()> {
    let bad = |why: String| Error::Usage(format!("--dir {}: {why}", dir.display()));
    let mut created = false;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(bad("is a symbolic link: give the directory itself".into()));
        }
        Ok(m) if !m.is_dir() => return Err(bad("not a directory: give a directory for reports".into())),
        Ok(_) => {}
        Err(_) => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| bad(format!("cannot create it: {e}")))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => created = true,
                // Made meanwhile by someone else: checked below like any existing directory.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(bad(format!("cannot create it: {e}"))),
            }
        }
    }
    let d = crate::sink::Dir::open(dir, false).map_err(|e| bad(e.to_string()))?;
    if created {
        // Ours, just made: 0700 whatever the umask took off.
        d.chmod(0o700).map_err(|e| bad(format!("cannot set its mode: {e}")))?;
    }
    let m = d.metadata().map_err(|e| bad(e.to_string()))?;
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(bad(format!(
            "owned by uid {}, not by uid {me} (leaktrace): reports hold command lines; give a directory of yours such as /var/lib/leaktrace/oom",
            m.uid()
        )));
    }
    let mode = m.permissions().mode() & 0o7777;
    let writers = if mode & 0o002 != 0 {
        "others".to_string()
    } else if mode & 0o020 != 0 && m.gid() != 0 {
        format!("group {}", m.gid())
    } else {
        String::new()
    };
    if !writers.is_empty() {
        return Err(bad(format!(
            "writable by {writers} (mode {mode:04o}): they could plant or replace reports there; give a private directory such as /var/lib/leaktrace/oom"
        )));
    }
    d.probe(std::ffi::OsStr::new(".leaktrace-write-test"))
        .map_err(|e| bad(format!("cannot write there: {e}")))?;
    Ok(())
}


fn processes_named(names: &[String]) -> Vec<(u32, String)> {
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let comm = procinfo::comm(pid)?;
            names.iter().any(|n| procinfo::comm_matches(n, &comm)).then_some((pid, comm))
        })
        .collect()
}

impl Watcher<'_> {
    fn track(&mut self, pid: u32, comm: &str, libs: &[allocator::AllocatorLib]) -> Result<()> {
        let n = self.session.track(pid, comm, libs)?;
        eprintln!("leaktrace: tracking pid {pid} ({}): {n} probes", escape::text(comm));
        let mut history = History::new(HISTORY);
        if let Some(rss) = procinfo::rss_bytes(pid) {
            history.push(Sample { t_ms: 0, rss_bytes: rss });
        }
        self.tracked.insert(
            pid,
            Tracked {
                comm: comm.to_string(),
                since: Instant::now(),
                history,
                snapshot: procinfo::snapshot(pid),
                rss_armed: true,
                memcg_armed: true,
            },
        );
        Ok(())
    }

    /// Attaches to processes that exec'd with a tracked name once their allocator is mapped.
    fn attach_pending(&mut self) {
        let pids: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pids {
            let Some((comm, since)) = self.pending.get(&pid).cloned() else { continue };
            if self.tracked.contains_key(&pid) || target::check_pid(pid).is_err() {
                self.pending.remove(&pid);
                continue;
            }
            if self.tracked.len() >= self.cfg.max_targets {
                self.pending.remove(&pid);
                self.over_max_targets += 1;
                eprintln!(
                    "leaktrace: warning: --max-targets {}: not tracking pid {pid} ({}); {} more \
                     process{} with a tracked name left untracked so far (raise --max-targets to \
                     track them)",
                    self.cfg.max_targets,
                    escape::text(&comm),
                    self.over_max_targets,
                    if self.over_max_targets == 1 { "" } else { "es" }
                );
                self.note_untracked(
                    pid,
                    format!("--max-targets {} processes were already tracked", self.cfg.max_targets),
                );
                continue;
            }
            match allocator::find_allocators(pid) {
                Ok(libs) if !libs.is_empty() => {
                    self.pending.remove(&pid);
                    if let Err(e) = self.track(pid, &comm, &libs) {
                        eprintln!(
                            "leaktrace: cannot track pid {pid} ({}): {}",
                            escape::text(&comm),
                            escape::text(&e.to_string())
                        );
                        self.note_untracked(pid, format!("attaching to it failed: {e}"));
                    }
                }
                _ if since.elapsed() > ATTACH_GRACE => {
                    self.pending.remove(&pid);
                    eprintln!(
                        "leaktrace: pid {pid} ({}) maps no recognizable allocator; not tracking it",
                        escape::text(&comm)
                    );
                    self.note_untracked(pid, "it maps no recognizable allocator".into());
                }
                _ => {}
            }
        }
    }

    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Result<()> {
        while let Some(watch) = self.session.drain(ring) {
            match watch {
                Watch::OomVictim(raw) => self.on_oom(&raw),
                Watch::Exec { pid, comm } => {
                    if self.cfg.track_comms.iter().any(|n| procinfo::comm_matches(n, &comm)) {
                        self.untracked.remove(&pid);
                        self.pending.insert(pid, (comm, Instant::now()));
                        self.attach_pending();
                    }
                }
                Watch::Rename { raw, pid, tid } => self.on_rename(&raw, pid, tid),
            }
            if self.done {
                return Ok(());
            }
        }
        // Tracked processes that exited normally are forgotten without noise.
        self.session.agg.take_exited();
        let gone: Vec<u32> = self
            .tracked
            .keys()
            .copied()
            .filter(|p| !self.session.agg.is_tracked(Pid(*p)))
            .collect();
        for pid in gone {
            self.tracked.remove(&pid);
            self.session.forget(pid);
        }
        Ok(())
    }

    /// Once a second: RSS samples and threshold snapshots for tracked processes.
    fn sample(&mut self) {
        if let Some(m) = &self.metrics {
            m.update(&self.session.metric_samples(now_ns()), self.session.counters().lost);
        }
        for pid in self.session.reap_vanished(now_ns()) {
            self.tracked.remove(&pid.0);
            self.session.forget(pid.0);
        }
        self.untracked.retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
        let pids: Vec<u32> = self.tracked.keys().copied().collect();
        for pid in pids {
            let Some(rss) = procinfo::rss_bytes(pid) else { continue };
            let Some(t) = self.tracked.get_mut(&pid) else { continue };
            t.history.push(Sample {
                t_ms: t.since.elapsed().as_millis() as u64,
                rss_bytes: rss,
            });
            let mut crossed = None;
            if let Some(limit) = self.cfg.snapshot_rss {
                if rss >= limit && t.rss_armed {
                    t.rss_armed = false;
                    crossed = Some(format!(
                        "RSS {} >= --snapshot-rss {}",
                        crate::report::human_bytes(rss),
                        crate::report::human_bytes(limit)
                    ));
                } else if rss < limit {
                    t.rss_armed = true;
                }
            }
            if let Some(pct) = self.cfg.snapshot_memcg {
                let m = t.snapshot.cgroup.as_ref().and_then(procinfo::memcg);
                if let Some((usage, limit)) = m.and_then(|m| Some((m.usage_bytes?, m.limit_bytes?))) {
                    let used = usage as f64 * 100.0 / limit.max(1) as f64;
                    if used >= pct && t.memcg_armed {
                        t.memcg_armed = false;
                        crossed.get_or_insert(format!(
                            "memory cgroup at {used:.1}% of its limit >= --snapshot-memcg {pct}%"
                        ));
                    } else if used < pct {
                        t.memcg_armed = true;
                    }
                }
            }
            if let Some(why) = crossed {
                let proc = procinfo::snapshot(pid);
                let victim = victim_from_proc(pid, &proc);
                self.write_report("threshold", Some(why), victim, Vec::new(), proc);
            }
        }
    }

    /// A task took a new name: a process that takes a tracked one is tracked from now on.
    fn on_rename(&mut self, raw: &[u8], cur_pid: u32, cur_tid: u32) {
        let Some(layout) = &self.rename_layout else { return };
        let Some(r) = rename::Rename::decode(layout, raw, cur_pid, cur_tid) else {
            self.session.malformed += 1;
            return;
        };
        if !self.cfg.track_comms.iter().any(|n| procinfo::comm_matches(n, &r.comm)) {
            return;
        }
        let Some(pid) = r.pid else {
            eprintln!(
                "leaktrace: thread {} took the name {} but exited before its process was known; not tracking it",
                r.tid,
                escape::text(&r.comm)
            );
            return;
        };
        if pid == std::process::id() || self.tracked.contains_key(&pid) {
            return;
        }
        self.untracked.remove(&pid);
        self.pending.entry(pid).or_insert((r.comm, Instant::now()));
        self.attach_pending();
    }

    fn note_untracked(&mut self, pid: u32, why: String) {
        if self.untracked.len() < MAX_UNTRACKED {
            self.untracked.insert(pid, why);
        }
    }

    fn on_oom(&mut self, raw: &[u8]) {
        let l = &self.layout;
        let Some(pid) = l.int(raw, "pid").and_then(|p| u32::try_from(p).ok()) else {
            self.session.malformed += 1;
            return;
        };
        // First, before the victim's /proc entry goes.
        let mut proc = procinfo::snapshot(pid);
        // Every kill moves the record on, whether or not this one needs it.
        let charged = self.kills.rose();
        if !kills::is_known(proc.cgroup.as_ref())
            && let Some(c) = charged
        {
            proc.unavailable.push(
                "cgroup: the victim had exited; its memory cgroup is the one whose oom_kill \
                 counter rose"
                    .into(),
            );
            proc.cgroup = Some(c);
        }
        let kb = |name| l.int(raw, name).and_then(|v| u64::try_from(v).ok());
        let mut missing = Vec::new();
        for f in [
            "comm",
            "total_vm",
            "anon_rss",
            "file_rss",
            "shmem_rss",
            "uid",
            "pgtables",
            "oom_score_adj",
        ] {
            if l.field(f).is_none() {
                missing.push(f.to_string());
            }
        }
        let victim = Victim {
            pid,
            comm: l.string(raw, "comm").unwrap_or_default(),
            cmdline: None,
            uid: l.int(raw, "uid").and_then(|u| u32::try_from(u).ok()),
            cgroup: None,
            oom_score_adj: l.int(raw, "oom_score_adj"),
            total_vm_kb: kb("total_vm"),
            anon_rss_kb: kb("anon_rss"),
            file_rss_kb: kb("file_rss"),
            shmem_rss_kb: kb("shmem_rss"),
            pgtables_kb: kb("pgtables"),
        };
        if let Some(m) = &self.metrics {
            m.oom_kill(&victim.comm);
        }
        self.write_report("oom_kill", None, victim, missing, proc);
        if self.cfg.once {
            self.done = true;
        }
    }

    fn write_report(
        &mut self,
        reason: &'static str,
        threshold: Option<String>,
        mut victim: Victim,
        missing: Vec<String>,
        mut proc: ProcSnapshot,
    ) {
        let pid = victim.pid;
        let tracked = self.tracked.get(&pid);
        // What /proc no longer shows, the snapshot taken when tracking began still knows.
        if let Some(t) = tracked {
            if proc.cmdline.is_none() {
                proc.cmdline = t.snapshot.cmdline.clone();
            }
            if !kills::is_known(proc.cgroup.as_ref()) {
                proc.cgroup = t.snapshot.cgroup.clone();
            }
            if victim.comm.is_empty() {
                victim.comm = t.comm.clone();
            }
        }
        victim.cmdline = proc.cmdline.clone();
        victim.cgroup = proc.cgroup.as_ref().and_then(cgroup_display);
        let memcg = proc.cgroup.as_ref().and_then(procinfo::memcg);
        let (scope, scope_reason) = procinfo::oom_scope(memcg.as_ref());
        let (rss_history, rss_trend, stacks) = match tracked {
            Some(t) => {
                let h = t.history.samples();
                let trend = trend::classify(&h);
                let survivors = self.session.agg.survivors(Pid(pid), now_ns());
                let stacks = stack_reports(
                    pid,
                    &survivors,
                    TOP_STACKS,
                    &mut self.session.sym,
                    &self.session.stacks,
                );
                (h, Some(trend), stacks)
            }
            None => (Vec::new(), None, Vec::new()),
        };
        let untracked_reason = match tracked {
            Some(_) => None,
            None => {
                let known = self.untracked.get(&pid).cloned().or_else(|| {
                    self.pending
                        .contains_key(&pid)
                        .then(|| "it had not mapped its allocator yet".to_string())
                });
                Some(untracked_reason(&victim.comm, &self.cfg.track_comms, known.as_deref()))
            }
        };
        let counters = self.session.counters();
        let (time, file_time) = units::utc_timestamp(SystemTime::now());
        let r = OomReport {
            reason,
            threshold,
            time,
            victim,
            missing_fields: missing,
            oom_scope: scope,
            oom_scope_reason: scope_reason,
            memcg,
            proc,
            tracked: tracked.is_some(),
            untracked_reason,
            rss_history,
            rss_trend,
            top_consumers: procinfo::top_consumers(10),
            stacks,
            lost_events: counters.lost,
            stack_errors: counters.stack_errors,
            dropped_reports: 0,
        };
        let name = format!("{file_time}-{pid}-{}", report::safe_name(&r.victim.comm));
        if let Err(u) = self.held.push(Unwritten { name, report: r }) {
            let v = &u.report.victim;
            eprintln!(
                "leaktrace: dropped the report of the {} of pid {} ({}): {} reports are already \
                 held in memory while {} cannot be written ({} dropped so far)",
                u.report.reason,
                v.pid,
                escape::text(&v.comm),
                self.held.len(),
                self.cfg.dir.display(),
                self.held.dropped()
            );
            return;
        }
        self.flush_held();
        if self.held.failing() {
            // The newest held report is this one: say at once that the kill happened.
            if let Some(u) = self.held.last() {
                self.print_line(&u.report, None);
            }
        }
    }

    /// Writes the held reports, in order, until one fails; logs an outage once, and its end.
    fn flush_held(&mut self) {
        let dir = self.cfg.dir.clone();
        let format = self.cfg.format;
        let mut written = Vec::new();
        let change = self.held.flush(
            |u, dropped| {
                u.report.dropped_reports = dropped;
                report::write(&dir, &u.name, &u.report, format)
            },
            |u, path| written.push((u, path)),
        );
        match change {
            Some(Change::Failing(e)) => eprintln!(
                "leaktrace: cannot write OOM reports to {}: {e}; keeping them in memory (up to \
                 {MAX_HELD}) and retrying every second",
                dir.display()
            ),
            Some(Change::Recovered { written }) => eprintln!(
                "leaktrace: {} can be written again: wrote {written} held report(s)",
                dir.display()
            ),
            None => {}
        }
        for (u, path) in written {
            self.reports += 1;
            self.print_line(&u.report, Some(&path));
        }
    }

    /// The line on stdout for a report: where it was written, or that it is held in memory.
    fn print_line(&self, r: &OomReport, path: Option<&PathBuf>) {
        use crate::sink::{Delivery, Mode, Sink};
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        // The files are the watcher's output; this line is a notice. A reader that went away
        // (`| head -1`, a restarted log collector) ends the lines, never the watching.
        static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
        if STDOUT_GONE.load(Relaxed) {
            return;
        }
        let v = &r.victim;
        let dest = match path {
            Some(p) => escape::text(&p.to_string_lossy()).into_owned(),
            None => format!("held in memory ({} held): {} cannot be written yet", self.held.len(), self.cfg.dir.display()),
        };
        let line = match self.cfg.format {
            Format::Json => serde_json::json!({
                "reason": r.reason, "time": r.time, "pid": v.pid, "comm": v.comm,
                "anon_rss_kb": v.anon_rss_kb, "cgroup": v.cgroup, "oom_scope": r.oom_scope,
                "report": path, "held": path.is_none(),
            })
            .to_string(),
            _ => format!(
                "leaktrace: {} pid {} ({}) anon-rss {} cgroup {} ({}) -> {}",
                r.reason,
                v.pid,
                escape::text(&v.comm),
                v.anon_rss_kb
                    .map(|k| crate::report::human_bytes(k * 1024))
                    .unwrap_or_else(|| "?".into()),
                escape::text(v.cgroup.as_deref().unwrap_or("?")),
                r.oom_scope,
                dest
            ),
        };
        match Sink::stdout(Mode::Append).write(format!("{line}\n").as_bytes()) {
            Ok(Delivery::Written) => {}
            Ok(Delivery::ReaderGone) => {
                STDOUT_GONE.store(true, Relaxed);
                eprintln!(
                    "leaktrace: standard output was closed: no more report lines there; reports are still written to {}",
                    self.cfg.dir.display()
                );
            }
            Err(e) => eprintln!("leaktrace: warning: {e}"),
        }
    }
}

/// Why a victim's stacks are missing and what to do: the advice to add `--track-comm` only when
/// it was not given for that name.
fn untracked_reason(comm: &str, track_comms: &[String], known: Option<&str>) -> String {
    if let Some(name) = track_comms.iter().find(|n| procinfo::comm_matches(n, comm)) {
        let why = known.unwrap_or(
            "leaktrace had not attached to it when it was killed (it took that name, or mapped \
             its allocator, only moments before)",
        );
        return format!("--track-comm {name} matched it, but {why}");
    }
    if track_comms.is_empty() {
        format!("start leaktrace oom with --track-comm {comm} to record them")
    } else {
        format!(
            "its name is not among the --track-comm names ({}); add --track-comm {comm} to record them",
            track_comms.join(", ")
        )
    }
}

fn cgroup_display(c: &CgroupPaths) -> Option<String> {
    c.memory_v1.clone().or_else(|| c.unified.clone())
}

/// Victim facts from /proc, for threshold snapshots (no tracepoint record then).
fn victim_from_proc(pid: u32, proc: &ProcSnapshot) -> Victim {
    let kb = |key: &str| {
        proc.status
            .get(key)
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Victim {
        pid,
        comm: procinfo::comm(pid).unwrap_or_default(),
        cmdline: None,
        uid: std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid()),
        cgroup: None,
        oom_score_adj: std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        total_vm_kb: kb("VmSize"),
        anon_rss_kb: kb("RssAnon"),
        file_rss_kb: kb("RssFile"),
        shmem_rss_kb: kb("RssShmem"),
        pgtables_kb: kb("VmPTE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_never_repeats_the_option_given() {
        let given = vec!["myservice".to_string()];
        let a = untracked_reason("myservice", &given, None);
        assert!(!a.contains("add --track-comm") && !a.contains("start leaktrace"), "{a}");
        assert!(a.contains("matched it, but"), "{a}");
        let a = untracked_reason("myservice", &given, Some("it maps no recognizable allocator"));
        assert!(a.ends_with("but it maps no recognizable allocator"), "{a}");
        // A long name matches the kernel's 15-byte truncation, and is not advised again either.
        let long = vec!["a-very-long-service-name".to_string()];
        assert!(untracked_reason("a-very-long-ser", &long, None).contains("matched it"));
        // Other names: advise what is missing.
        let a = untracked_reason("other", &given, None);
        assert!(a.contains("not among the --track-comm names (myservice); add --track-comm other"), "{a}");
        let a = untracked_reason("other", &[], None);
        assert_eq!(a, "start leaktrace oom with --track-comm other to record them");
    }
}
