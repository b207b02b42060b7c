//! Turning user addresses into function, file and line. Owns the per-process record of
//! executable mappings and a per-process cache of resolved addresses; the DWARF/ELF work itself
//! is blazesym's.
//!
//! The record is taken while the process lives and only ever grows: a re-read (when an address
//! falls outside it) adds what is new and drops nothing, so a library unloaded (dlclose) after
//! leaking, or the maps of a process that has exited, still name the code. Each address of a
//! new stack is pinned to the mapping it fell in when the stack was first seen, so that a range
//! reused by a library loaded later does not rename it. The files themselves are opened at
//! report time: through /proc/PID/map_files (the exact file mapped) or /proc/PID/root while the
//! process lives, by path after. Where perf events can be opened, the kernel's mapping records
//! ([`crate::mapwatch`]) are added to the record before each drain, so a library unloaded
//! before leaktrace could read /proc/PID/maps is known too.
//!
//! A lookup that fails (the file cannot be opened or read, say for lack of file descriptors) is
//! not cached, is counted ([`Symbolizer::failures`], reported as `symbolization_failures`), and
//! is warned about on stderr once per cause.
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze, source::Elf, source::Source};

use crate::{
    mapwatch::{MapRecord, MapWatch},
    report::{Frame, MappingReport},
};

/// How often an address outside the record may trigger a re-read of a live process's maps at
/// report time (a stack whose library was loaded after its last re-read).
const MISS_REREAD_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    /// The path as the process sees it (for display).
    path: String,
    /// A path we can open while the process lives: its /proc/PID/map_files link.
    open: PathBuf,
}

#[derive(Debug, Default)]
struct ProcSyms {
    /// Every executable mapping seen, oldest first; one seen again moves to the end.
    maps: Vec<Arc<Mapping>>,
    /// The mapping each address of an interned stack fell in when the stack was first seen.
    pins: HashMap<u64, Arc<Mapping>>,
    cache: HashMap<u64, Vec<Frame>>,
    /// Whether the code before an address ends with a call, for addresses whose file was read.
    after_call: HashMap<u64, bool>,
    last_miss_reread: Option<Instant>,
}

impl ProcSyms {
    /// Adds the mappings of a fresh read; those already known move to the end (newest), so
    /// that a lookup prefers what is mapped now over what was mapped there before.
    fn merge(&mut self, fresh: Vec<Mapping>) {
        for m in fresh {
            match self.maps.iter().position(|o| **o == m) {
                Some(i) => {
                    let known = self.maps.remove(i);
                    self.maps.push(known);
                }
                None => self.maps.push(Arc::new(m)),
            }
        }
    }

    /// The mapping of `addr`: the one pinned for it, else the newest that contains it.
    fn lookup(&self, addr: u64) -> Option<&Arc<Mapping>> {
        self.pins.get(&addr).or_else(|| find(&self.maps, addr))
    }
}

pub struct Symbolizer {
    blaze: Blaze,
    procs: HashMap<u32, ProcSyms>,
    build_ids: HashMap<String, Option<String>>,
    failures: u64,
    /// Causes already warned about (the innermost error's text).
    warned: HashSet<String>,
    watch: Option<MapWatch>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            blaze: Blaze::new(),
            procs: HashMap::new(),
            build_ids: HashMap::new(),
            failures: 0,
            warned: HashSet::new(),
            watch: None,
        }
    }

    /// Also takes the kernel's records of executable mappings as they are made (see
    /// [`crate::mapwatch`]); without perf events, /proc/PID/maps alone is read.
    pub fn watch_mappings(&mut self) {
        self.watch = MapWatch::open();
    }

    /// Adds the mappings recorded since the last call to the records of tracked processes.
    /// Called before each drain of the event ring, so that a stack's library is known before
    /// the stack is.
    pub fn absorb_mappings(&mut self) {
        let (Some(watch), procs) = (self.watch.as_mut(), &mut self.procs) else { return };
        let lost_before = watch.lost;
        watch.drain(|r: MapRecord| {
            if let Some(p) = procs.get_mut(&r.pid) {
                p.merge(vec![Mapping {
                    start: r.start,
                    end: r.start.saturating_add(r.len),
                    offset: r.pgoff,
                    open: PathBuf::from(format!("/proc/{}/root{}", r.pid, r.path)),
                    path: r.path,
                }]);
            }
        });
        if lost_before == 0 && watch.lost > 0 {
            eprintln!(
                "leaktrace: warning: the kernel dropped {} mapping records (their ring was \
                 full); a library unloaded right after leaking may show as ?? (counted in \
                 mapping_records_lost)",
                watch.lost
            );
        }
    }

    /// The kernel's mapping records lost to a full ring since the start (0 without a watcher).
    pub fn mapping_records_lost(&self) -> u64 {
        self.watch.as_ref().map_or(0, |w| w.lost)
    }

    /// Addresses that could not be symbolized because a file could not be read (not those
    /// that no symbol covers).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Adds the executable mappings of `pid` to its record (call while it is alive).
    pub fn track(&mut self, pid: u32) {
        match read_maps(pid) {
            Ok(maps) => self.procs.entry(pid).or_default().merge(maps),
            // Gone: what was recorded stays.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.procs.entry(pid).or_default();
            }
            Err(e) => {
                self.procs.entry(pid).or_default();
                self.fail(&format!("pid {pid}: cannot read /proc/{pid}/maps"), &e);
            }
        }
    }

    /// Starts `pid`'s record afresh: after an exec its old mappings and cached frames belong
    /// to an address space that is gone.
    pub fn reset(&mut self, pid: u32) {
        self.procs.remove(&pid);
        self.track(pid);
    }

    /// Called when a new stack arrives, while the process is still alive: re-reads the
    /// mappings when one of `addrs` is outside the record (a library loaded since), then pins
    /// each address to its mapping.
    pub fn note_addresses(&mut self, pid: u32, addrs: &[u64]) {
        let known = |s: &Self| {
            s.procs
                .get(&pid)
                .is_some_and(|p| addrs.iter().all(|a| p.lookup(*a).is_some()))
        };
        if !known(self) {
            // Mapped since the last drain of the records, or no records: re-read.
            self.absorb_mappings();
            if !known(self) {
                self.track(pid);
            }
        }
        let Some(p) = self.procs.get_mut(&pid) else { return };
        for &a in addrs {
            if !p.pins.contains_key(&a)
                && let Some(m) = find(&p.maps, a)
            {
                let m = m.clone();
                p.pins.insert(a, m);
            }
        }
    }

    /// The executable mappings of `pid` with their build IDs (read once per file). Where a
    /// range was mapped more than once, the newest mapping is listed.
    pub fn mappings(&mut self, pid: u32) -> Vec<MappingReport> {
        let mut maps: Vec<Arc<Mapping>> = Vec::new();
        for m in self.procs.get(&pid).map(|p| p.maps.as_slice()).unwrap_or_default().iter().rev() {
            if !maps.iter().any(|o| o.start < m.end && m.start < o.end) {
                maps.push(m.clone());
            }
        }
        maps.sort_by_key(|m| m.start);
        maps.iter()
            .map(|m| {
                let build_id = self
                    .build_ids
                    .entry(m.path.clone())
                    .or_insert_with(|| build_id(&m.open).or_else(|| build_id(Path::new(&m.path))))
                    .clone();
                MappingReport {
                    start: m.start,
                    end: m.end,
                    offset: m.offset,
                    path: m.path.clone(),
                    build_id,
                }
            })
            .collect()
    }

    /// Forgets a process (after its last report).
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// Whether `addr` is a return address in `pid`'s code: inside an executable file mapping
    /// and right after a call instruction. Used to vet the caller word taken at an mmap syscall.
    pub fn is_return_address(&mut self, pid: u32, addr: u64) -> bool {
        self.after_call(pid, addr) == Some(true)
    }

    /// Cuts a frame-pointer chain (`addrs[0]` the innermost address) at its first return
    /// address that cannot be one: above any user address, or in an executable file mapping
    /// but not right after a call instruction. A walk goes there when it continues past a
    /// frame whose rbp is not a frame pointer (a static glibc's `__libc_start_call_main`, built
    /// without them), and every frame after that is junk too. An address whose code cannot be
    /// read (no file mapping known: JIT code, or the file is gone) is kept. Returns how many
    /// frames were cut.
    pub fn cut_junk_frames(&mut self, pid: u32, addrs: &mut Vec<u64>) -> usize {
        // x86-64 user space ends below 2^47, or 2^56 with 5-level page tables.
        const USER_END: u64 = 1 << 56;
        let junk = (1..addrs.len()).find(|&i| {
            let addr = addrs[i];
            addr >= USER_END || self.after_call(pid, addr) == Some(false)
        });
        let Some(at) = junk else { return 0 };
        let cut = addrs.len() - at;
        addrs.truncate(at);
        cut
    }

    /// Whether the instruction before `addr` is a call, in the file mapped there (the mapping
    /// pinned for it, else the newest); `None` when no file mapping holds it or the file cannot
    /// be read.
    fn after_call(&mut self, pid: u32, addr: u64) -> Option<bool> {
        let p = self.procs.get_mut(&pid)?;
        if let Some(known) = p.after_call.get(&addr) {
            return Some(*known);
        }
        let m = p.lookup(addr)?.clone();
        let off = addr - m.start + m.offset;
        let verdict = if off < 7 {
            false
        } else {
            let mut buf = [0u8; 7];
            File::open(&m.open)
                .or_else(|_| File::open(&m.path))
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(off - 7))?;
                    f.read_exact(&mut buf)
                })
                .ok()?;
            follows_call(&buf)
        };
        p.after_call.insert(addr, verdict);
        Some(verdict)
    }

    /// Frames for one address, innermost (inlined) first.
    pub fn symbolize(&mut self, pid: u32, addr: u64) -> Vec<Frame> {
        if let Some(f) = self.procs.get(&pid).and_then(|p| p.cache.get(&addr)) {
            return f.clone();
        }
        let (frames, settled) = self.resolve(pid, addr);
        if settled {
            self.procs.entry(pid).or_default().cache.insert(addr, frames.clone());
        }
        frames
    }

    /// The frames of `addr`, and whether they are final (false after a failure that may pass,
    /// so that a later report tries again).
    fn resolve(&mut self, pid: u32, addr: u64) -> (Vec<Frame>, bool) {
        let unknown = |module: Option<String>| {
            vec![Frame {
                address: format!("{addr:#x}"),
                module,
                ..Frame::default()
            }]
        };
        let mut m = self.procs.get(&pid).and_then(|p| p.lookup(addr)).cloned();
        if m.is_none() && self.may_reread(pid) {
            self.track(pid);
            m = self.procs.get(&pid).and_then(|p| p.lookup(addr)).cloned();
        }
        let Some(m) = m else {
            return (unknown(None), true);
        };
        // A return address points after the call; look up the call itself.
        let file_off = addr.saturating_sub(1) - m.start + m.offset;
        let path = if m.open.exists() { m.open.clone() } else { PathBuf::from(&m.path) };
        let src = Source::Elf(Elf::new(path));
        let sym = match self.blaze.symbolize_single(&src, Input::FileOffset(file_off)) {
            Ok(Symbolized::Sym(sym)) => sym,
            Ok(_) => return (unknown(Some(m.path.clone())), true),
            Err(e) => {
                self.fail(&format!("cannot symbolize addresses in {}", m.path), &e);
                return (unknown(Some(m.path.clone())), false);
            }
        };
        let mut frames = Vec::new();
        for inl in sym.inlined.iter().rev() {
            let (file, line) = inl
                .code_info
                .as_ref()
                .map(|c| (Some(c.to_path().display().to_string()), c.line))
                .unwrap_or((None, None));
            frames.push(Frame {
                address: format!("{addr:#x}"),
                function: Some(inl.name.to_string()),
                file,
                line,
                module: Some(m.path.clone()),
                inlined: true,
            });
        }
        let (file, line) = sym
            .code_info
            .as_ref()
            .map(|c| (Some(c.to_path().display().to_string()), c.line))
            .unwrap_or((None, None));
        frames.push(Frame {
            address: format!("{addr:#x}"),
            function: Some(sym.name.to_string()),
            file,
            line,
            module: Some(m.path.clone()),
            inlined: false,
        });
        (frames, true)
    }

    /// Whether an address outside `pid`'s record may re-read its maps now: it is alive and
    /// was not re-read for a miss within [`MISS_REREAD_EVERY`].
    fn may_reread(&mut self, pid: u32) -> bool {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return false;
        }
        let p = self.procs.entry(pid).or_default();
        if p.last_miss_reread.is_some_and(|t| t.elapsed() < MISS_REREAD_EVERY) {
            return false;
        }
        p.last_miss_reread = Some(Instant::now());
        true
    }

    /// Counts a failure and warns once per cause (the innermost error: "Too many open files"
    /// and the like), naming the first thing it hit.
    fn fail(&mut self, what: &str, e: &(dyn std::error::Error + 'static)) {
        self.failures += 1;
        let mut cause = e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        if self.warned.insert(cause.to_string()) {
            eprintln!("{}", failure_warning(what, e));
        }
    }
}

/// The warning for a symbolization failure. `what` names a module path the traced process
/// chose, and the error may embed it again: the whole line is escaped.
fn failure_warning(what: &str, e: &(dyn std::error::Error + 'static)) -> String {
    format!(
        "leaktrace: warning: {}; such frames show as ?? (counted in symbolization_failures)",
        crate::escape::text(&format!("{what}: {}", error_chain(e)))
    )
}

/// An error and its sources on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The GNU build ID of an ELF file, hex.
fn build_id(path: &Path) -> Option<String> {
    use object::{Object, read::ReadCache};
    let file = File::open(path).ok()?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let id = elf.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// The newest mapping that contains `addr`.
fn find(maps: &[Arc<Mapping>], addr: u64) -> Option<&Arc<Mapping>> {
    maps.iter().rev().find(|m| m.start <= addr && addr < m.end)
}

/// True when the 7 bytes before a return address end with a call: `call rel32` (E8) or an
/// indirect `call r/m64` (FF /2) of 2, 3 or 6 bytes.
fn follows_call(b: &[u8; 7]) -> bool {
    let ff2 = |op: u8, modrm: u8| op == 0xff && (modrm >> 3) & 7 == 2;
    b[2] == 0xe8 || ff2(b[5], b[6]) || ff2(b[4], b[5]) || ff2(b[1], b[2])
}

/// The executable file mappings of `pid`, each opened through its map_files link (the exact
/// file, whatever its name).
fn read_maps(pid: u32) -> std::io::Result<Vec<Mapping>> {
    let maps = crate::maps::read(pid).map_err(|e| match e {
        crate::maps::MapsError::Read { source, .. } => source,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
    })?;
    Ok(maps
        .into_iter()
        .filter(|m| m.exec)
        .filter_map(|m| {
            let path = m.file()?.to_string_lossy().into_owned();
            Some(Mapping {
                start: m.start,
                end: m.end,
                offset: m.offset,
                open: m.map_file(pid),
                path,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_warning_escapes_the_module_path_and_the_error() {
        let e = std::io::Error::other("/tmp/lib\x1b]0;owned\x07.so: bad ELF\nforged line");
        let w = failure_warning("cannot symbolize addresses in /tmp/lib\x1b[2J.so", &e);
        assert!(!w.chars().any(|c| c.is_control()), "{w:?}");
        assert!(w.contains("/tmp/lib\\e[2J.so"), "{w}");
        assert!(w.contains("bad ELF\\nforged line"), "{w}");
    }

    #[inline(never)]
    #[unsafe(no_mangle)]
    extern "C" fn leaktrace_symbolize_probe() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn symbolizes_own_function() {
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        s.track(pid);
        // +1: symbolize() looks up addr-1 as for a return address.
        let addr = leaktrace_symbolize_probe as *const () as u64 + 1;
        let frames = s.symbolize(pid, addr);
        let f = frames.last().unwrap();
        assert_eq!(f.function.as_deref(), Some("leaktrace_symbolize_probe"));
        // Release test builds carry no DWARF; the integration tests check file and line on a
        // fixture built with -g.
        if cfg!(debug_assertions) {
            assert!(f.file.as_deref().unwrap_or("").ends_with("symbolize.rs"), "{f:?}");
            assert!(f.line.is_some());
        }
    }

    #[test]
    fn unknown_address_keeps_the_address() {
        let mut s = Symbolizer::new();
        s.track(std::process::id());
        let f = s.symbolize(std::process::id(), 0x10);
        assert_eq!(f[0].address, "0x10");
        assert!(f[0].function.is_none());
    }

    #[test]
    fn chains_are_cut_at_an_address_no_user_code_has() {
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        s.track(pid);
        // 0x10 is in no file mapping: nothing to check it against, kept. The next is junk a
        // frame-pointer walk read from a stack slot that held no return address.
        let mut chain = vec![0x1000, 0x10, 0xbe55_2274_c085_4800, 0x401000];
        assert_eq!(s.cut_junk_frames(pid, &mut chain), 2);
        assert_eq!(chain, [0x1000, 0x10]);
        // The innermost address is where the probe fired, not a return address: never cut.
        let mut chain = vec![u64::MAX];
        assert_eq!(s.cut_junk_frames(pid, &mut chain), 0);
    }

    #[test]
    fn a_return_address_into_own_code_must_follow_a_call() {
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        s.track(pid);
        // The first byte of a function follows padding or the previous function's end: the
        // bytes before it are this test's own code, so check them rather than assume.
        let start = leaktrace_symbolize_probe as *const () as u64;
        // SAFETY: reading 7 bytes of this binary's own mapped code.
        let before: [u8; 7] = unsafe { std::ptr::read_unaligned((start - 7) as *const [u8; 7]) };
        let mut chain = vec![0x1000, start];
        let cut = s.cut_junk_frames(pid, &mut chain);
        assert_eq!(cut == 0, follows_call(&before), "{before:x?}");
    }

    #[test]
    fn mappings_carry_build_ids() {
        let mut s = Symbolizer::new();
        s.track(std::process::id());
        let maps = s.mappings(std::process::id());
        let libc = maps.iter().find(|m| m.path.contains("libc.so")).expect("libc mapped");
        assert_eq!(libc.build_id.as_ref().map(|b| b.len()), Some(40), "{libc:?}");
    }

    #[test]
    fn unloaded_mappings_are_kept_and_pins_survive_reuse() {
        let m = |start: u64, path: &str| Mapping {
            start,
            end: start + 0x1000,
            offset: 0,
            path: path.into(),
            open: PathBuf::from(path),
        };
        let mut p = ProcSyms::default();
        p.merge(vec![m(0x1000, "/a.so"), m(0x8000, "/exe")]);
        let a = find(&p.maps, 0x1800).unwrap().clone();
        p.pins.insert(0x1800, a);
        // a.so unloaded, b.so loaded where it was: the record keeps both.
        p.merge(vec![m(0x1000, "/b.so"), m(0x8000, "/exe")]);
        assert_eq!(p.maps.len(), 3);
        assert_eq!(p.lookup(0x1800).unwrap().path, "/a.so", "pinned");
        assert_eq!(p.lookup(0x1900).unwrap().path, "/b.so", "newest");
        // a.so loaded again at the same place: it is the newest again.
        p.merge(vec![m(0x1000, "/a.so")]);
        assert_eq!(p.maps.len(), 3);
        assert_eq!(p.lookup(0x1900).unwrap().path, "/a.so");
    }

    #[test]
    fn call_detection() {
        assert!(follows_call(&[0, 0, 0xe8, 1, 2, 3, 4]));
        assert!(follows_call(&[0, 0, 0, 0, 0, 0xff, 0xd0])); // call rax
        assert!(follows_call(&[0, 0xff, 0x15, 1, 2, 3, 4])); // call [rip+x]
        assert!(!follows_call(&[0; 7]));
    }
}
