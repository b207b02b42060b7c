//! Loading the eBPF object and attaching its programs: the only module that speaks aya's program
//! and map API, so that an aya upgrade changes one file. Owns the attach order (releasing probes
//! before allocating ones) and the scoping of uprobes to the traced processes.
use std::{collections::HashMap as StdHashMap, num::NonZeroU32};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
};
use leaktrace_common::{SAMPLE_DRAWS, counter, names};

use crate::{
    allocator::{AllocFn, AllocatorLib, ProbePoint},
    error::{Error, Result},
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));

/// Sizes of the kernel-side maps (every cap is an option).
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub ring_bytes: u32,
}

/// What the programs do besides their scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Byte-sampling rate; 0 tracks every allocation.
    pub sample_rate: u64,
    /// Capacity of the sampled-block set (its overflow is counted).
    pub max_sampled: u32,
    /// Seed of the sampling draws (tests); None: from the clock.
    pub sample_seed: Option<u64>,
    /// Every program returns at once: the cost of the probes alone (benchmarks).
    pub empty: bool,
    /// Keep in-flight allocator calls in the overflow map only, never the per-thread array
    /// (tests of the path that colliding thread ids take).
    pub overflow_only: bool,
}

/// Which processes the programs report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Those added with `add_target`.
    Targets,
    /// Every process but leaktrace (`audit --all`).
    All,
}

/// Summed per-CPU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub lost: u64,
    pub stack_errors: u64,
    pub missed_returns: u64,
    pub pending_full: u64,
    pub hits: u64,
    pub sampled_full: u64,
}

pub struct Probes {
    bpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    targets: HashMap<MapData, u32, u32>,
    ring: Option<RingBuf<MapData>>,
    attached: usize,
    /// Uprobe links per traced pid, detached when the process is forgotten so that a
    /// long-running watcher does not accumulate perf events of dead processes.
    links: StdHashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// Libraries (device, inode) probed for every process.
    probed: std::collections::HashSet<(u64, u64)>,
    exec_attached: bool,
}

fn bpf_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Bpf(format!("{what}: {e}"))
}

impl Probes {
    pub fn load(sizes: MapSizes, scope: Scope, tuning: Tuning) -> Result<Self> {
        let wakeup = u64::from(sizes.ring_bytes / 4);
        let all = u32::from(scope == Scope::All);
        let me = std::process::id();
        let empty = u32::from(tuning.empty);
        let inflight_on = u32::from(!tuning.overflow_only);
        // The kernel allocates a hash map's bucket array up front even without preallocated
        // entries: 16 MiB and 14 ms of attach time for the default 1M sampled blocks, wasted
        // when nothing is sampled; so are the sampling draws.
        let sampled_entries = if tuning.sample_rate > 0 {
            tuning.max_sampled.max(1)
        } else {
            1
        };
        let draws = if tuning.sample_rate > 0 { SAMPLE_DRAWS } else { 1 };
        let mut bpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS, sizes.ring_bytes)
            .map_max_entries(names::SAMPLED, sampled_entries)
            .map_max_entries(names::DRAWS, draws)
            .override_global(names::WAKEUP_BYTES, &wakeup, true)
            .override_global(names::TRACE_ALL, &all, true)
            .override_global(names::SELF_TGID, &me, true)
            .override_global(names::SAMPLE_RATE, &tuning.sample_rate, true)
            .override_global(names::EMPTY, &empty, true)
            .override_global(names::INFLIGHT_ON, &inflight_on, true)
            .load(EBPF_OBJECT)
            .map_err(|e| bpf_err("loading the eBPF object", e))?;
        let take = |bpf: &mut Ebpf, name: &str| {
            bpf.take_map(name)
                .ok_or_else(|| Error::Bpf(format!("map {name} missing from the eBPF object")))
        };
        let ring = RingBuf::try_from(take(&mut bpf, names::EVENTS)?)
            .map_err(|e| bpf_err("ring buffer", e))?;
        let counters = PerCpuArray::try_from(take(&mut bpf, names::COUNTERS)?)
            .map_err(|e| bpf_err("counters", e))?;
        let targets = HashMap::try_from(take(&mut bpf, names::TARGETS)?)
            .map_err(|e| bpf_err("targets", e))?;
        let mut p = Probes {
            bpf,
            counters,
            targets,
            ring: Some(ring),
            attached: 0,
            links: StdHashMap::new(),
            probed: Default::default(),
            exec_attached: false,
        };
        if tuning.sample_rate > 0 {
            let mut draws: Array<&mut MapData, u64> = Array::try_from(
                p.bpf
                    .map_mut(names::DRAWS)
                    .ok_or_else(|| Error::Bpf("map DRAWS missing".into()))?,
            )
            .map_err(|e| bpf_err("draws", e))?;
            let seed = tuning.sample_seed.unwrap_or_else(crate::sampling::clock_seed);
            let pool = crate::sampling::exponential_draws(tuning.sample_rate, SAMPLE_DRAWS, seed);
            for (i, d) in pool.into_iter().enumerate() {
                draws.set(i as u32, d, 0).map_err(|e| bpf_err("draws", e))?;
            }
        }
        for name in UPROBES.iter().chain(URETPROBES) {
            p.uprobe(name)?.load().map_err(|e| bpf_err(name, e))?;
        }
        for (name, _, _) in TRACEPOINTS.iter().chain(WATCH_TRACEPOINTS) {
            p.tracepoint(name)?.load().map_err(|e| bpf_err(name, e))?;
        }
        Ok(p)
    }

    /// The ring buffer, to be polled by the caller (taken once).
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Lets the programs report events of `pid`.
    pub fn add_target(&mut self, pid: u32) -> Result<()> {
        self.targets
            .insert(pid, 1, 0)
            .map_err(|e| bpf_err(&format!("adding pid {pid} to the target map"), e))
    }

    /// Attaches the syscall and exit tracepoints, releasing ones first: an mmap seen before its
    /// munmap probe was live could otherwise be reported as a leak.
    pub fn attach_tracepoints(&mut self) -> Result<()> {
        for (prog, category, event) in TRACEPOINTS {
            self.attach_tracepoint(prog, category, event)?;
        }
        Ok(())
    }

    fn attach_tracepoint(&mut self, prog: &str, category: &str, event: &str) -> Result<()> {
        self.tracepoint(prog)?
            .attach(category, event)
            .map_err(|e| Error::Attach {
                program: prog.to_string(),
                target: format!("tracepoint {category}/{event}"),
                reason: e.to_string(),
            })?;
        self.attached += 1;
        Ok(())
    }

    /// Attaches the system-wide OOM-kill tracepoint.
    pub fn attach_oom(&mut self) -> Result<()> {
        self.attach_watch("oom_mark_victim")
    }

    /// Attaches the system-wide exec tracepoint (to track processes started later by name, and
    /// to see a traced process exec); once, however often it is asked for.
    pub fn attach_exec(&mut self) -> Result<()> {
        if !self.exec_attached {
            self.attach_watch("process_exec")?;
            self.exec_attached = true;
        }
        Ok(())
    }

    /// Attaches the system-wide rename tracepoint (to track processes that take a name later).
    pub fn attach_rename(&mut self) -> Result<()> {
        self.attach_watch("task_rename")
    }

    fn attach_watch(&mut self, prog: &str) -> Result<()> {
        let Some((_, category, event)) = WATCH_TRACEPOINTS.iter().find(|t| t.0 == prog) else {
            return Err(Error::Bpf(format!("unknown tracepoint program {prog}")));
        };
        self.attach_tracepoint(prog, category, event)
    }

    pub fn is_probed(&self, lib: (u64, u64)) -> bool {
        self.probed.contains(&lib)
    }

    pub fn mark_probed(&mut self, lib: (u64, u64)) {
        self.probed.insert(lib);
    }

    /// Stops reporting `pid` and detaches its uprobes, on a thread of their own: detaching
    /// takes ~100 ms a probe, which the caller's event loop (a watcher forgetting an exited
    /// process) must not wait for.
    pub fn forget(&mut self, pid: u32) {
        let _ = self.targets.remove(&pid);
        let ids = self.links.remove(&pid).unwrap_or_default();
        let links = self.take_links(ids);
        // A closure that cannot run is dropped here, and the links detach on this thread.
        let _ = std::thread::Builder::new()
            .name("leaktrace-detach".into())
            .spawn(move || detach_all(links));
    }

    /// The links, owned: dropping one detaches it.
    fn take_links(&mut self, ids: Vec<(&'static str, UProbeLinkId)>) -> Vec<UProbeLink> {
        ids.into_iter()
            .filter_map(|(prog, id)| self.uprobe(prog).ok()?.take_link(id).ok())
            .collect()
    }

    /// Attaches the allocator probes of `lib` for `pid` only. `free` and `realloc` go first so
    /// that a block allocated before attach and released after it is never seen half-way (bcc's
    /// memleak reported such blocks as leaks).
    pub fn attach_allocator(&mut self, lib: &AllocatorLib, pid: u32) -> Result<usize> {
        let pid_nz = NonZeroU32::new(pid).ok_or_else(|| Error::Usage("pid 0".into()))?;
        self.attach_allocator_scoped(lib, UProbeScope::OneProcess(pid_nz), pid)
    }

    /// Attaches the allocator probes of `lib` for every process that maps it (one set of probes
    /// per library, whatever the number of processes).
    pub fn attach_allocator_all(&mut self, lib: &AllocatorLib) -> Result<usize> {
        self.attach_allocator_scoped(lib, UProbeScope::AllProcesses, 0)
    }

    fn attach_allocator_scoped(
        &mut self,
        lib: &AllocatorLib,
        scope: UProbeScope,
        owner: u32,
    ) -> Result<usize> {
        let mut points: Vec<&ProbePoint> = lib.points.iter().collect();
        points.sort_by_key(|p| attach_rank(p.funcs.first().copied()));
        let mut n = 0;
        for point in points {
            let Some(&func) = point.funcs.first() else { continue };
            // The return probe first: a call whose entry is seen then always has its return
            // seen. The other way round, a call entering between the two attaches would stay
            // "in flight" for good, and its thread's later calls would count as nested in it and
            // never be reported. A return seen without its entry (a call under way at attach)
            // is counted in missed_returns and ignored.
            if func != AllocFn::Free {
                self.attach_uprobe("alloc_return", point, lib, scope, owner)?;
                n += 1;
            }
            self.attach_uprobe(entry_program(func), point, lib, scope, owner)?;
            n += 1;
        }
        self.attached += n;
        Ok(n)
    }

    fn attach_uprobe(
        &mut self,
        prog: &'static str,
        point: &ProbePoint,
        lib: &AllocatorLib,
        scope: UProbeScope,
        owner: u32,
    ) -> Result<()> {
        let target = lib.open_path.clone();
        let link = self
            .uprobe(prog)?
            .attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(point.probe_offset),
                    // Where the probe point's arguments are, when a prologue moved them.
                    cookie: (point.cookie != 0).then_some(point.cookie),
                },
                &target,
                scope,
            )
            .map_err(|e| Error::Attach {
                program: prog.to_string(),
                target: format!("{}+{:#x} ({})", lib.path.display(), point.probe_offset, scope_name(scope)),
                reason: error_chain(&e),
            })?;
        self.links.entry(owner).or_default().push((prog, link));
        Ok(())
    }

    fn uprobe(&mut self, name: &str) -> Result<&mut UProbe> {
        self.bpf
            .program_mut(name)
            .ok_or_else(|| Error::Bpf(format!("program {name} missing")))?
            .try_into()
            .map_err(|e| bpf_err(name, e))
    }

    fn tracepoint(&mut self, name: &str) -> Result<&mut TracePoint> {
        self.bpf
            .program_mut(name)
            .ok_or_else(|| Error::Bpf(format!("program {name} missing")))?
            .try_into()
            .map_err(|e| bpf_err(name, e))
    }

    pub fn counters(&self) -> Counters {
        let sum = |slot: u32| -> u64 {
            self.counters
                .get(&slot, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        Counters {
            lost: sum(counter::LOST),
            stack_errors: sum(counter::STACK_ERRORS),
            missed_returns: sum(counter::MISSED_RETURNS),
            pending_full: sum(counter::PENDING_FULL),
            hits: sum(counter::HITS),
            sampled_full: sum(counter::SAMPLED_FULL),
        }
    }
}

/// The scope of a uprobe as a user reads it (aya's Debug form is `OneProcess(1234)`).
fn scope_name(scope: UProbeScope) -> String {
    match scope {
        UProbeScope::OneProcess(pid) => format!("process {pid}"),
        UProbeScope::AllProcesses => "every process".into(),
        _ => "leaktrace itself".into(),
    }
}

impl Drop for Probes {
    /// Detaches every uprobe at once rather than one after another as the programs drop.
    fn drop(&mut self) {
        let ids: Vec<_> = self.links.drain().flat_map(|(_, l)| l).collect();
        let links = self.take_links(ids);
        detach_all(links);
    }
}

/// At most this many threads detach links at once.
const DETACH_THREADS: usize = 32;

/// Detaches `links` from several threads at once. Releasing a perf-event uprobe waits for
/// tracepoint grace periods (`tracepoint_synchronize_unregister`), ~100 ms each here, and the
/// kernel does it under its `event_mutex`: the waits do not overlap, so this gains only the
/// work around them (2.6 s to 2.1 s for 19 probes, measured); a multi-uprobe link (one
/// unregistration for many probes) needs programs loaded with that attach type, which aya
/// 0.14 cannot do. A share whose thread cannot be started is detached on this one.
fn detach_all(mut links: Vec<UProbeLink>) {
    if links.len() <= 1 {
        return;
    }
    let per_thread = links.len().div_ceil(DETACH_THREADS);
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let share: Vec<UProbeLink> = links.drain(..per_thread.min(links.len())).collect();
            // A closure that cannot run is dropped here, and its share with it.
            let _ = std::thread::Builder::new()
                .name("leaktrace-detach".into())
                .spawn_scoped(scope, move || drop(share));
        }
    });
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

const UPROBES: &[&str] = &[
    "malloc_enter",
    "calloc_enter",
    "realloc_enter",
    "reallocarray_enter",
    "posix_memalign_enter",
    "memalign_enter",
    "valloc_enter",
    "free_enter_probe",
    "internal_enter",
];
const URETPROBES: &[&str] = &["alloc_return"];

/// (program, category, event), in attach order: releasing before allocating, exit last.
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("munmap_enter", "syscalls", "sys_enter_munmap"),
    ("munmap_exit", "syscalls", "sys_exit_munmap"),
    ("mremap_enter", "syscalls", "sys_enter_mremap"),
    ("mremap_exit", "syscalls", "sys_exit_mremap"),
    ("mmap_enter", "syscalls", "sys_enter_mmap"),
    ("mmap_exit", "syscalls", "sys_exit_mmap"),
    ("process_exit", "sched", "sched_process_exit"),
];

/// Attached only by the OOM watcher, system-wide.
const WATCH_TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("oom_mark_victim", "oom", "mark_victim"),
    ("process_exec", "sched", "sched_process_exec"),
    ("task_rename", "task", "task_rename"),
];

fn entry_program(f: AllocFn) -> &'static str {
    match f {
        AllocFn::Malloc => "malloc_enter",
        AllocFn::Calloc => "calloc_enter",
        AllocFn::Realloc => "realloc_enter",
        AllocFn::Reallocarray => "reallocarray_enter",
        AllocFn::PosixMemalign => "posix_memalign_enter",
        AllocFn::AlignedAlloc | AllocFn::Memalign => "memalign_enter",
        AllocFn::Valloc | AllocFn::Pvalloc => "valloc_enter",
        AllocFn::Free => "free_enter_probe",
        AllocFn::PthreadCreate => "internal_enter",
    }
}

fn attach_rank(f: Option<AllocFn>) -> u8 {
    match f {
        Some(AllocFn::Free) => 0,
        Some(AllocFn::Realloc) | Some(AllocFn::Reallocarray) => 1,
        _ => 2,
    }
}
