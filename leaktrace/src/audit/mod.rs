//! `leaktrace audit`: a bounded sweep that traces processes for a window, samples their RSS every
//! second, and ranks them by leak rate. Owns discovery (which allocator libraries the targets
//! map, opened through /proc/PID/map_files so that other mount namespaces and any file name
//! work), which chosen processes are skipped and why (one failing process never ends the audit)
//! and the `--max-targets` cap, the window loop and the exit code; the report model and
//! baseline comparison are in `report`.
pub mod report;

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep_until},
};

use crate::{
    aggregate::Pid,
    allocator::{self, AllocatorLib},
    config::{AuditConfig, Format, Selection},
    error::{Error, Result},
    probes::Scope,
    procinfo,
    session::{Session, Watch},
    sink::{Mode, Sink},
    target,
    trace::now_ns,
    trend::{History, Sample},
};

/// Exit status when a process leaks faster than `--fail-above`.
pub const EXIT_ABOVE: i32 = 1;
/// How often `--all` looks for libraries it has not probed yet (containers started meanwhile).
const RESCAN: Duration = Duration::from_secs(5);

/// What we know of one audited process; kept after it exits.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    /// The command line was longer than leaktrace reads: `cmdline` ends early.
    pub cmdline_truncated: bool,
    pub history: History,
    pub exited: bool,
}

/// A probed library: where it is and how many audited processes map it.
#[derive(Debug, Clone)]
pub struct LibInfo {
    pub path: String,
    pub processes: usize,
}

struct Audit<'a> {
    cfg: &'a AuditConfig,
    session: Session,
    start: Instant,
    procs: HashMap<u32, ProcInfo>,
    /// Probed libraries by (device, inode): the same file seen through two paths (or two mount
    /// namespaces) is probed once.
    libs: HashMap<(u64, u64), LibInfo>,
    /// ELF inspections by (device, inode), including files that are not allocators.
    inspected: HashMap<(u64, u64), Option<AllocatorLib>>,
    /// `--comm` / `--cgroup` processes that exec'd during the audit, waiting for their allocator.
    pending: HashMap<u32, Instant>,
    /// What exited processes left, kept for the report.
    exited: Vec<crate::aggregate::ExitedProcess>,
    /// Chosen processes that could not be traced, with the reason.
    skipped: Vec<report::SkippedProcess>,
    /// Processes found by --comm/--cgroup that the --max-targets cap left out.
    over_cap: HashSet<u32>,
}

/// Runs the audit; returns the exit code (0, or 1 when something leaks above --fail-above).
pub async fn run(cfg: AuditConfig) -> Result<i32> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    target::check_environment()?;
    let baseline = cfg
        .baseline
        .as_deref()
        .map(|p| report::load_baseline(p, cfg.max_input_size))
        .transpose()?;
    // Checked now, written once at the end: 0600, as the report holds every command line.
    let mut out = Sink::to(cfg.output.as_deref(), Mode::Replace)?;
    let scope = match cfg.selection {
        Selection::All => Scope::All,
        Selection::Chosen { .. } => Scope::Targets,
    };
    let initial = initial_targets(&cfg.selection, cfg.max_targets)?;
    let mut a = Audit {
        cfg: &cfg,
        session: Session::new(cfg.ring_size, cfg.min_age, scope, cfg.tuning)?,
        start: Instant::now(),
        procs: HashMap::new(),
        libs: HashMap::new(),
        inspected: HashMap::new(),
        pending: HashMap::new(),
        exited: Vec::new(),
        skipped: Vec::new(),
        over_cap: HashSet::new(),
    };
    a.session.probes.attach_tracepoints()?;
    if let Selection::Chosen { comms, cgroups, .. } = &cfg.selection
        && (!comms.is_empty() || !cgroups.is_empty())
    {
        a.session.probes.attach_exec()?;
    }
    // Every chosen process is tried; one that fails is skipped with its reason, and the audit goes
    // on with the others. A pending SIGINT/SIGTERM stops the attaching (it can take seconds).
    let mut interrupted = false;
    let mut failed: Vec<(u32, Error)> = initial.failed;
    for pid in initial.pids.iter().chain(&initial.found) {
        if crate::trace::signalled(&mut sigint, &mut sigterm).await {
            interrupted = true;
            break;
        }
        if scope == Scope::Targets && a.at_cap() {
            a.over_cap.insert(*pid);
            continue;
        }
        match a.add(*pid) {
            // It was there when the targets were chosen, before the programs were loaded.
            Err(_) if scope == Scope::Targets && target::has_exited(*pid) => {
                failed.push((*pid, Error::ExitedWhileAttaching { pid: *pid }));
            }
            Err(e) if scope == Scope::Targets => failed.push((*pid, e)),
            // --all: kernel threads and processes gone meanwhile are no news.
            _ => {}
        }
    }
    if scope == Scope::Targets && a.procs.is_empty() && !interrupted {
        // Nothing left to audit: the reason, on one line.
        return Err(match failed.len() {
            1 => failed.remove(0).1,
            _ => Error::Usage(format!(
                "nothing to audit: {}",
                failed.iter().map(|(p, e)| format!("process {p}: {e}")).collect::<Vec<_>>().join("; ")
            )),
        });
    }
    for (pid, e) in failed {
        a.skip(pid, &e);
    }
    if !a.over_cap.is_empty() {
        eprintln!(
            "leaktrace: warning: --max-targets {}: {} more process{} matching --comm/--cgroup not \
             audited (raise --max-targets to audit them)",
            cfg.max_targets,
            a.over_cap.len(),
            if a.over_cap.len() == 1 { "" } else { "es" }
        );
    }
    if scope == Scope::All {
        a.rescan_all();
    }
    eprintln!(
        "leaktrace: auditing {} processes for {:.1}s ({} allocator libraries probed)",
        a.procs.len(),
        cfg.duration.as_secs_f64(),
        a.libs.len()
    );
    a.start = Instant::now();
    a.sample();

    let ring = a.session.probes.take_ring().ok_or_else(|| Error::Bpf("no ring".into()))?;
    // SAFETY: the ring buffer owns its descriptor and lives inside the AsyncFd until both drop.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| Error::Io(e.into()))?;
    let mut drain_tick = interval(Duration::from_millis(10));
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sample_tick = interval(Duration::from_secs(1));
    sample_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    sample_tick.tick().await;
    let mut rescan_tick = interval(RESCAN);
    rescan_tick.tick().await;
    let deadline = tokio::time::Instant::now() + cfg.duration;
    loop {
        // Interrupted while attaching: straight to the final report.
        if interrupted {
            break;
        }
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                a.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                a.drain(ring.get_mut());
                a.attach_pending();
            }
            _ = sample_tick.tick() => a.sample(),
            _ = rescan_tick.tick(), if scope == Scope::All => a.rescan_all(),
            _ = sleep_until(deadline) => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    a.drain(ring.get_mut());
    a.sample();
    let mut r = a.report(baseline.as_ref());
    r.skipped = std::mem::take(&mut a.skipped);
    r.over_max_targets = a.over_cap.len() as u64;
    let above = cfg
        .fail_above
        .is_some_and(|limit| r.processes.iter().any(|p| p.leak_rate_bytes_per_s > limit));
    // A reader gone away (`| head`) is not a failure: the exit code still says what was found.
    out.emit(|out| match cfg.format {
        Format::Json => serde_json::to_writer_pretty(&mut *out, &r)
            .map_err(std::io::Error::other)
            .and_then(|_| out.write_all(b"\n")),
        Format::Text => report::render_text(&r, cfg.fail_above, out),
        other => crate::report::render(other, &r.as_report(), out),
    })?;
    Ok(if above { EXIT_ABOVE } else { 0 })
}

/// The processes chosen at the start.
#[derive(Default)]
struct Initial {
    /// Given with -p (each process once, threads resolved to their process).
    pids: Vec<u32>,
    /// Found by --comm or --cgroup (or every process, with --all), not given with -p.
    found: Vec<u32>,
    /// -p ids that name no traceable process, with the reason.
    failed: Vec<(u32, Error)>,
}

/// The processes chosen at the start; an error when nothing at all matches, or when more
/// processes are given with -p than `max_targets`.
fn initial_targets(sel: &Selection, max_targets: usize) -> Result<Initial> {
    let me = std::process::id();
    let Selection::Chosen {
        pids,
        comms,
        cgroups,
    } = sel
    else {
        return Ok(Initial {
            found: all_pids().into_iter().filter(|&p| p != me).collect(),
            ..Initial::default()
        });
    };
    let mut init = Initial::default();
    let mut seen = HashSet::new();
    for &given in pids {
        if !seen.insert(given) {
            continue;
        }
        match target::check_pid(given) {
            Ok(p) => {
                if let Some(note) = target::thread_note(&p, "-p", "auditing") {
                    eprintln!("{note}");
                }
                if !init.pids.contains(&p.pid) {
                    init.pids.push(p.pid);
                }
            }
            Err(e) => init.failed.push((given, e)),
        }
    }
    if init.pids.len() > max_targets {
        return Err(Error::Usage(format!(
            "-p: {} processes given, more than --max-targets {max_targets}: give fewer, or raise --max-targets",
            init.pids.len()
        )));
    }
    let mut set: Vec<u32> = Vec::new();
    let mut unmatched = Vec::new();
    for name in comms {
        let found: Vec<u32> = all_pids()
            .into_iter()
            .filter(|&p| p != me && procinfo::comm(p).is_some_and(|c| procinfo::comm_matches(name, &c)))
            .collect();
        if found.is_empty() {
            unmatched.push(format!("--comm {name} matches no process"));
        }
        set.extend(found);
    }
    for cg in cgroups {
        if !cgroup_exists(cg) {
            return Err(Error::Usage(format!(
                "--cgroup {cg}: no such cgroup in the memory (v1) or unified (v2) hierarchy; \
                 give its path as /proc/PID/cgroup shows it"
            )));
        }
        let found: Vec<u32> = all_pids()
            .into_iter()
            .filter(|&p| p != me && in_cgroup(p, cg))
            .collect();
        if found.is_empty() {
            unmatched.push(format!("--cgroup {cg} has no process"));
        }
        set.extend(found);
    }
    set.sort_unstable();
    set.dedup();
    set.retain(|p| !init.pids.contains(p));
    init.found = set;
    if init.pids.is_empty() && init.failed.is_empty() && init.found.is_empty() {
        return Err(Error::Usage(format!(
            "{}: nothing to audit (check the names with `pgrep -l NAME`)",
            unmatched.join("; ")
        )));
    }
    for u in unmatched {
        eprintln!("leaktrace: warning: {u}");
    }
    Ok(init)
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn normalize_cgroup(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/".into() } else if t.starts_with('/') { t.into() } else { format!("/{t}") }
}

fn in_cgroup(pid: u32, cg: &str) -> bool {
    let want = normalize_cgroup(cg);
    procinfo::cgroup_paths(pid).is_ok_and(|c| {
        c.memory_v1.as_deref().map(normalize_cgroup) == Some(want.clone())
            || c.unified.as_deref().map(normalize_cgroup) == Some(want.clone())
    })
}

fn cgroup_exists(cg: &str) -> bool {
    let rel = normalize_cgroup(cg);
    let rel = rel.trim_start_matches('/');
    ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .any(|root| Path::new(root).join(rel).is_dir())
}

impl Audit<'_> {
    /// Adds `pid` to the audit: its facts, and in chosen mode its own probes. An error says why
    /// it cannot be audited; what was attached for it by then is detached.
    fn add(&mut self, pid: u32) -> Result<()> {
        if self.procs.contains_key(&pid) || pid == std::process::id() {
            return Ok(());
        }
        let p = target::check_pid(pid)?;
        let pid = p.pid;
        let libs = self.libs_of(pid)?;
        if matches!(self.cfg.selection, Selection::Chosen { .. }) {
            if libs.is_empty() {
                return Err(Error::NoAllocator { pid, comm: p.comm });
            }
            let owned: Vec<AllocatorLib> = libs.iter().map(|(_, l)| l.clone()).collect();
            if let Err(e) = self.session.track(pid, &p.comm, &owned) {
                self.session.forget(pid);
                return Err(crate::trace::attach_error(pid, e));
            }
        }
        for (key, lib) in &libs {
            self.libs
                .entry(*key)
                .or_insert_with(|| LibInfo {
                    path: lib.path.display().to_string(),
                    processes: 0,
                })
                .processes += 1;
        }
        // Only what the report shows: a full snapshot would also walk every mapping
        // (smaps_rollup) of each audited process.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let (cmdline, cmdline_truncated) = procinfo::cmdline(pid).unwrap_or_default();
        self.procs.insert(
            pid,
            ProcInfo {
                comm: p.comm,
                exe: exe.map(|e| e.to_string_lossy().into_owned()),
                cmdline: cmdline.unwrap_or_default(),
                cmdline_truncated,
                history: History::new(3600),
                exited: false,
            },
        );
        Ok(())
    }

    /// A chosen process that cannot be audited: said on stderr and kept for the report.
    fn skip(&mut self, pid: u32, e: &Error) {
        eprintln!("leaktrace: skipping process {pid}: {}", crate::escape::text(&e.to_string()));
        self.skipped.push(report::SkippedProcess {
            pid,
            reason: e.to_string(),
        });
    }

    /// Whether --max-targets processes are audited already (chosen mode only).
    fn at_cap(&self) -> bool {
        self.procs.len() >= self.cfg.max_targets
    }

    /// The allocator libraries `pid` maps, keyed by (device, inode), inspected once each. Each
    /// is opened through this process's map_files link (the cached one may belong to a process
    /// that has gone since).
    fn libs_of(&mut self, pid: u32) -> Result<Vec<((u64, u64), AllocatorLib)>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for m in crate::maps::read(pid).map_err(allocator::AllocatorError::from)? {
            let Some(path) = m.file() else { continue };
            if !m.exec || m.is_deleted() {
                continue;
            }
            let open = m.map_file(pid);
            let Ok(meta) = std::fs::metadata(&open) else { continue };
            let key = (meta.dev(), meta.ino());
            if !seen.insert(key) {
                continue;
            }
            let lib = match self.inspected.get_mut(&key) {
                Some(lib) => lib,
                None => match allocator::inspect_elf(path, &open) {
                    Ok(lib) => self.inspected.entry(key).or_insert(lib),
                    Err(e) if e.is_not_elf() => self.inspected.entry(key).or_insert(None),
                    Err(e) => return Err(e.into()),
                },
            };
            if let Some(lib) = lib {
                lib.path = path.to_path_buf();
                lib.open_path = open;
                out.push((key, lib.clone()));
            }
        }
        Ok(out)
    }

    /// `--all`: probes every allocator library any process maps that is not probed yet.
    fn rescan_all(&mut self) {
        let me = std::process::id();
        for pid in all_pids().into_iter().filter(|&p| p != me) {
            if !self.procs.contains_key(&pid) {
                // Kernel threads, processes gone meanwhile: not chosen, nothing to report.
                let _ = self.add(pid);
            }
        }
        let keys: Vec<(u64, u64)> = self.libs.keys().copied().collect();
        for key in keys {
            if self.session.probes.is_probed(key) {
                continue;
            }
            let Some(Some(lib)) = self.inspected.get(&key).cloned() else { continue };
            match self.session.probes.attach_allocator_all(&lib) {
                Ok(_) => self.session.probes.mark_probed(key),
                Err(e) => eprintln!("leaktrace: warning: {}", crate::escape::text(&e.to_string())),
            }
        }
    }

    /// Processes that exec'd a chosen name or into a chosen cgroup: added once their allocator is
    /// mapped (tried for 2 s), skipped with a reason when attaching fails, counted when the
    /// --max-targets cap is reached.
    fn attach_pending(&mut self) {
        let pids: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pids {
            let since = self.pending[&pid];
            if self.procs.contains_key(&pid) {
                self.pending.remove(&pid);
                continue;
            }
            if self.at_cap() {
                self.pending.remove(&pid);
                if self.over_cap.insert(pid) && self.over_cap.len() == 1 {
                    eprintln!(
                        "leaktrace: warning: --max-targets {} reached: processes started later are \
                         counted in the report, not audited",
                        self.cfg.max_targets
                    );
                }
                continue;
            }
            match self.add(pid) {
                Ok(()) => {
                    self.pending.remove(&pid);
                }
                // Still loading, or gone already: nothing to say.
                Err(Error::NoAllocator { .. }) if since.elapsed() <= Duration::from_secs(2) => {}
                Err(
                    Error::NoAllocator { .. }
                    | Error::NoSuchProcess { .. }
                    | Error::Zombie { .. }
                    | Error::ExitedWhileAttaching { .. },
                ) => {
                    self.pending.remove(&pid);
                }
                Err(e) => {
                    self.pending.remove(&pid);
                    self.skip(pid, &e);
                }
            }
        }
    }

    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) {
        while let Some(w) = self.session.drain(ring) {
            if let Watch::Exec { pid, comm } = w
                && let Selection::Chosen { comms, cgroups, .. } = &self.cfg.selection
            {
                let wanted = comms.iter().any(|n| procinfo::comm_matches(n, &comm))
                    || cgroups.iter().any(|c| in_cgroup(pid, c));
                if wanted {
                    self.pending.insert(pid, Instant::now());
                }
            }
        }
        for e in self.session.agg.take_exited() {
            if let Some(p) = self.procs.get_mut(&e.pid.0) {
                p.exited = true;
            }
            self.exited.push(e);
        }
    }

    /// Once a second: RSS of every audited process still alive.
    fn sample(&mut self) {
        let t_ms = self.start.elapsed().as_millis() as u64;
        for (pid, p) in self.procs.iter_mut().filter(|(_, p)| !p.exited) {
            match procinfo::rss_bytes(*pid) {
                Some(rss) => p.history.push(Sample { t_ms, rss_bytes: rss }),
                None => p.exited = true,
            }
        }
        let gone = self.session.reap_vanished(now_ns());
        for pid in gone {
            if let Some(p) = self.procs.get_mut(&pid.0) {
                p.exited = true;
            }
        }
    }

    fn report(&mut self, baseline: Option<&report::Baseline>) -> report::AuditReport {
        let elapsed = self.start.elapsed();
        let now = now_ns();
        let mut exited: HashMap<u32, crate::aggregate::ExitedProcess> = self
            .session
            .agg
            .take_exited()
            .into_iter()
            .chain(std::mem::take(&mut self.exited))
            .map(|e| (e.pid.0, e))
            .collect();
        let mut inputs = Vec::new();
        for (pid, info) in &self.procs {
            let (stacks, stats) = match exited.remove(pid) {
                Some(e) => (e.stacks, e.stats),
                None => (
                    self.session.agg.survivors(Pid(*pid), now),
                    self.session.agg.stats(Pid(*pid)).unwrap_or_default(),
                ),
            };
            inputs.push(report::ProcInput {
                pid: *pid,
                info: info.clone(),
                stacks,
                stats,
            });
        }
        let counters = self.session.counters();
        report::build(report::BuildInput {
            procs: inputs,
            session: &mut self.session,
            elapsed,
            min_age: self.cfg.min_age,
            top: self.cfg.top,
            libs: self.libs.values().cloned().collect(),
            counters,
            baseline,
            baseline_file: self.cfg.baseline.clone(),
            time: SystemTime::now(),
            sample_rate: self.cfg.tuning.sample_rate,
        })
    }
}
