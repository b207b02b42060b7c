//! A tracing session: the loaded probes, the aggregator, the stack table and the symbolizer,
//! and the drain that feeds ring records to them. Shared by `trace` and `oom`; what to print and
//! when is theirs.
//!
//! It also owns what an exec does to a traced process: the old image's blocks went with its
//! address space (they are dropped, not reported: they are no leak of the new program), its
//! name and mappings change, and a new executable that is its own allocator gets probes. The
//! C library's probes stay: they are per process and per file, and the new image maps the same
//! file.
use std::{collections::HashMap, path::Path, time::Duration};

use aya::maps::{MapData, RingBuf};
use leaktrace_common::{COMM_LEN, EventKind, MAX_FRAMES};

use crate::{
    aggregate::{Aggregator, Pid},
    allocator::{AllocFn, AllocatorLib},
    error::Result,
    intake,
    probes::{Counters, MapSizes, Probes, Scope, Tuning},
    stacks::StackTable,
    symbolize::Symbolizer,
};

/// Records that the caller handles itself, returned by `drain` in ring order.
#[derive(Debug, Clone)]
pub enum Watch {
    /// The raw `oom/mark_victim` record.
    OomVictim(Vec<u8>),
    Exec { pid: u32, comm: String },
    /// The raw `task/task_rename` record, and the renaming (current) task: `pid` its process,
    /// `tid` its thread.
    Rename { raw: Vec<u8>, pid: u32, tid: u32 },
}

pub struct Session {
    pub agg: Aggregator,
    pub sym: Symbolizer,
    pub probes: Probes,
    pub stacks: StackTable,
    pub comms: HashMap<u32, String>,
    pub malformed: u64,
    /// The allocator files (device, inode) probed for each traced process.
    probed: HashMap<u32, Vec<(u64, u64)>>,
    frames: [u64; MAX_FRAMES],
}

impl Session {
    pub fn new(ring_bytes: u32, min_age: Duration, scope: Scope, tuning: Tuning) -> Result<Self> {
        let mut agg = Aggregator::new(min_age);
        agg.set_track_all(scope == Scope::All);
        agg.set_sample_rate(tuning.sample_rate);
        let mut sym = Symbolizer::new();
        sym.watch_mappings();
        Ok(Session {
            agg,
            sym,
            probes: Probes::load(MapSizes { ring_bytes }, scope, tuning)?,
            stacks: StackTable::default(),
            comms: HashMap::new(),
            malformed: 0,
            probed: HashMap::new(),
            frames: [0; MAX_FRAMES],
        })
    }

    /// Starts tracing `pid` through `libs`; returns the number of probes attached.
    pub fn track(&mut self, pid: u32, comm: &str, libs: &[AllocatorLib]) -> Result<usize> {
        // Before the target's first event: an exec must be seen as soon as it happens.
        self.probes.attach_exec()?;
        self.probes.add_target(pid)?;
        self.agg.track(Pid(pid));
        self.comms.insert(pid, comm.to_string());
        let mut n = 0;
        for lib in libs {
            n += self.probes.attach_allocator(lib, pid)?;
            if let Some(id) = file_id(&lib.open_path) {
                self.probed.entry(pid).or_default().push(id);
            }
            warn_single_stepped(lib);
        }
        self.sym.track(pid);
        Ok(n)
    }

    /// `pid` exec'd a new image named `comm`.
    fn exec(&mut self, pid: u32, comm: String) {
        self.agg.restart(Pid(pid));
        self.comms.insert(pid, comm);
        self.sym.reset(pid);
        // The new executable, when it defines malloc itself (statically linked, say): it is
        // mapped already, the libraries it loads are not yet. Known by (device, inode): the
        // path launch mode probed may be a symlink to it.
        let open = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
        let (Ok(exe), Some(id)) = (std::fs::read_link(&open), file_id(&open)) else { return };
        let probed = self.probed.entry(pid).or_default();
        if probed.contains(&id) {
            return;
        }
        match crate::allocator::inspect_elf(&exe, &open) {
            Ok(Some(lib)) => match self.probes.attach_allocator(&lib, pid) {
                Ok(_) => probed.push(id),
                Err(e) => exec_warning(pid, &e),
            },
            Ok(None) => {}
            Err(e) => exec_warning(pid, &e),
        }
    }

    /// Stops tracing `pid` and detaches its probes.
    pub fn forget(&mut self, pid: u32) {
        self.probes.forget(pid);
        self.probed.remove(&pid);
        self.agg.exit(Pid(pid), 0);
        self.sym.forget(pid);
        self.comms.remove(&pid);
    }

    /// Applies ring records until the ring is empty (None) or a record the caller must handle
    /// comes up (Some), so that the caller sees it before anything that follows it, e.g. an OOM
    /// victim's report is built before its exit event drops its allocations.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Option<Watch> {
        // Mappings first: a library mapped, leaked through and unloaded since the last drain
        // is named by its record only.
        self.sym.absorb_mappings();
        while let Some(item) = ring.next() {
            let d = match intake::decode(&item, &mut self.frames) {
                Ok(d) => d,
                Err(_) => {
                    self.malformed += 1;
                    continue;
                }
            };
            let ev = d.event;
            match EventKind::from_u32(ev.kind) {
                Some(EventKind::OomVictim) => return Some(Watch::OomVictim(d.raw.to_vec())),
                Some(EventKind::Rename) => {
                    return Some(Watch::Rename {
                        raw: d.raw.to_vec(),
                        pid: ev.pid,
                        tid: ev.tid,
                    });
                }
                Some(EventKind::Exec) => {
                    let raw = &d.raw[..d.raw.len().min(COMM_LEN)];
                    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
                    let comm = String::from_utf8_lossy(&raw[..end]).into_owned();
                    // In ring order: what follows is the new image's.
                    if self.agg.is_tracked(Pid(ev.pid)) {
                        self.exec(ev.pid, comm.clone());
                    }
                    return Some(Watch::Exec { pid: ev.pid, comm });
                }
                _ => {}
            }
            // A zero return address ends a frame-pointer chain; what follows it is not a frame.
            let n = self.frames[..d.frames].iter().position(|&a| a == 0).unwrap_or(d.frames);
            let frames = &self.frames[..n];
            let (stack, new) = self.stacks.intern(frames);
            if new {
                // A new stack may lie in a library loaded since attach: refresh the process's
                // mappings now, while it is alive.
                self.sym.note_addresses(ev.pid, frames);
            }
            self.agg.apply(&ev, stack);
        }
        None
    }

    /// Processes whose exit event was lost are still noticed: /proc says they are gone.
    pub fn reap_vanished(&mut self, now_ns: u64) -> Vec<Pid> {
        let gone: Vec<Pid> = self
            .agg
            .tracked()
            .filter(|p| !Path::new(&format!("/proc/{}", p.0)).exists())
            .collect();
        for p in &gone {
            self.agg.exit(*p, now_ns);
        }
        gone
    }

    pub fn counters(&self) -> Counters {
        self.probes.counters()
    }

    /// Per-process figures for the metrics endpoint.
    pub fn metric_samples(&self, now_ns: u64) -> Vec<crate::metrics::ProcessSample> {
        self.agg
            .tracked()
            .map(|pid| {
                let stats = self.agg.stats(pid).unwrap_or_default();
                let suspects = self.agg.survivors(pid, now_ns);
                crate::metrics::ProcessSample {
                    pid: pid.0,
                    comm: self.comms.get(&pid.0).cloned().unwrap_or_default(),
                    outstanding_bytes: stats.outstanding_bytes,
                    outstanding_count: stats.outstanding_count,
                    suspect_bytes: suspects.iter().map(|s| s.bytes).sum(),
                    suspect_count: suspects.iter().map(|s| s.count).sum(),
                    allocations: stats.allocs,
                    frees: stats.frees,
                }
            })
            .collect()
    }
}

/// Starts the metrics endpoint when asked for; "address in use" and the like are bad input.
pub async fn start_metrics(
    addr: Option<std::net::SocketAddr>,
) -> crate::error::Result<Option<(std::sync::Arc<crate::metrics::Metrics>, crate::metrics::ServerHandle)>> {
    let Some(addr) = addr else { return Ok(None) };
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(crate::metrics::DEFAULT_MAX_PROCESSES));
    let handle = crate::metrics::serve(addr, metrics.clone()).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "address already in use: pick another port, or stop what listens there"
        } else {
            "cannot listen there"
        };
        crate::error::Error::Usage(format!("--metrics-addr {addr}: {hint} ({e})"))
    })?;
    eprintln!("leaktrace: metrics on http://{}/metrics", handle.local_addr());
    Ok(Some((metrics, handle)))
}

/// A file's (device, inode), following symlinks (and /proc's magic links).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// Warns about hot allocator entry points the kernel must single-step; rare ones (reallocarray
/// and the like) are not worth a warning.
fn warn_single_stepped(lib: &AllocatorLib) {
    let hot = |f: &AllocFn| {
        matches!(
            f,
            AllocFn::Free | AllocFn::Malloc | AllocFn::Calloc | AllocFn::Realloc
        )
    };
    for p in lib.points.iter().filter(|p| !p.emulated && p.funcs.iter().any(hot)) {
        let names: Vec<_> = p.funcs.iter().map(|f| f.symbol()).collect();
        eprintln!(
            "leaktrace: warning: {} in {} is probed at offset {:#x} (`{}`), which the kernel \
             single-steps (~10 µs per call instead of ~1 µs)",
            names.join("/"),
            crate::escape::text(&lib.path.to_string_lossy()),
            p.probe_offset - p.symbol_offset,
            p.instruction
        );
    }
}

/// A failure to probe the program a traced process exec'd: the error names that program's path,
/// which the process chose.
fn exec_warning(pid: u32, e: &dyn std::fmt::Display) {
    eprintln!("leaktrace: warning: pid {pid} after exec: {}", crate::escape::text(&e.to_string()));
}
