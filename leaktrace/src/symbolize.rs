//! Turning user addresses into function, file and line. Owns the per-process snapshot of
//! executable mappings (taken while the process lives, refreshed when an address falls outside
//! it, kept after exit so that an exited process can still be symbolized) and a per-process cache
//! of resolved addresses. The DWARF/ELF work itself is blazesym's.
use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze, source::Elf, source::Source};

use crate::report::{Frame, MappingReport};

#[derive(Debug, Clone)]
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
    maps: Vec<Mapping>,
    cache: HashMap<u64, Vec<Frame>>,
}

pub struct Symbolizer {
    blaze: Blaze,
    procs: HashMap<u32, ProcSyms>,
    build_ids: HashMap<String, Option<String>>,
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
        }
    }

    /// Snapshots the executable mappings of `pid` (call while it is alive).
    pub fn track(&mut self, pid: u32) {
        let maps = read_maps(pid);
        let p = self.procs.entry(pid).or_default();
        if !maps.is_empty() {
            p.maps = maps;
        }
    }

    /// Re-reads the mappings when one of `addrs` is outside the snapshot (a library loaded after
    /// attach). Called when a new stack arrives, while the process is still alive.
    pub fn note_addresses(&mut self, pid: u32, addrs: &[u64]) {
        let known = self
            .procs
            .get(&pid)
            .is_some_and(|p| addrs.iter().all(|a| find(&p.maps, *a).is_some()));
        if !known {
            self.track(pid);
        }
    }

    /// The executable mappings of `pid` with their build IDs (read once per file).
    pub fn mappings(&mut self, pid: u32) -> Vec<MappingReport> {
        let maps = self.procs.get(&pid).map(|p| p.maps.clone()).unwrap_or_default();
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
    pub fn is_return_address(&self, pid: u32, addr: u64) -> bool {
        let Some(m) = self.procs.get(&pid).and_then(|p| find(&p.maps, addr)) else {
            return false;
        };
        let off = addr - m.start + m.offset;
        if off < 7 {
            return false;
        }
        let mut buf = [0u8; 7];
        let ok = File::open(&m.open)
            .or_else(|_| File::open(&m.path))
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(off - 7))?;
                f.read_exact(&mut buf)
            })
            .is_ok();
        ok && follows_call(&buf)
    }

    /// Frames for one address, innermost (inlined) first.
    pub fn symbolize(&mut self, pid: u32, addr: u64) -> Vec<Frame> {
        if let Some(f) = self.procs.get(&pid).and_then(|p| p.cache.get(&addr)) {
            return f.clone();
        }
        let frames = self.resolve(pid, addr);
        self.procs
            .entry(pid)
            .or_default()
            .cache
            .insert(addr, frames.clone());
        frames
    }

    fn resolve(&self, pid: u32, addr: u64) -> Vec<Frame> {
        let unknown = |module: Option<String>| {
            vec![Frame {
                address: format!("{addr:#x}"),
                module,
                ..Frame::default()
            }]
        };
        let Some(m) = self.procs.get(&pid).and_then(|p| find(&p.maps, addr)) else {
            return unknown(None);
        };
        // A return address points after the call; look up the call itself.
        let file_off = addr.saturating_sub(1) - m.start + m.offset;
        let path = if m.open.exists() { m.open.clone() } else { PathBuf::from(&m.path) };
        let src = Source::Elf(Elf::new(path));
        let sym = match self.blaze.symbolize_single(&src, Input::FileOffset(file_off)) {
            Ok(Symbolized::Sym(sym)) => sym,
            _ => return unknown(Some(m.path.clone())),
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
        frames
    }
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

fn find(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    maps.iter().find(|m| m.start <= addr && addr < m.end)
}

/// True when the 7 bytes before a return address end with a call: `call rel32` (E8) or an
/// indirect `call r/m64` (FF /2) of 2, 3 or 6 bytes.
fn follows_call(b: &[u8; 7]) -> bool {
    let ff2 = |op: u8, modrm: u8| op == 0xff && (modrm >> 3) & 7 == 2;
    b[2] == 0xe8 || ff2(b[5], b[6]) || ff2(b[4], b[5]) || ff2(b[1], b[2])
}

/// The executable file mappings of `pid`, each opened through its map_files link (the exact
/// file, whatever its name).
fn read_maps(pid: u32) -> Vec<Mapping> {
    let Ok(maps) = crate::maps::read(pid) else {
        return Vec::new();
    };
    maps.into_iter()
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn mappings_carry_build_ids() {
        let mut s = Symbolizer::new();
        s.track(std::process::id());
        let maps = s.mappings(std::process::id());
        let libc = maps.iter().find(|m| m.path.contains("libc.so")).expect("libc mapped");
        assert_eq!(libc.build_id.as_ref().map(|b| b.len()), Some(40), "{libc:?}");
    }

    #[test]
    fn call_detection() {
        assert!(follows_call(&[0, 0, 0xe8, 1, 2, 3, 4]));
        assert!(follows_call(&[0, 0, 0, 0, 0, 0xff, 0xd0])); // call rax
        assert!(follows_call(&[0, 0xff, 0x15, 1, 2, 3, 4])); // call [rip+x]
        assert!(!follows_call(&[0; 7]));
    }
}
