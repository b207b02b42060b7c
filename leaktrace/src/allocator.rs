//! Finding the malloc-family functions a process can call, and where to probe them.
//!
//! This module owns two questions: which files mapped into a process define an
//! allocator (a `malloc` *and* a `free`), and, for each such file, the file offsets of
//! its allocation functions and of the instruction to attach a uprobe at (chosen by
//! [`crate::prologue`]). It reads ELF files, and the mappings [`crate::maps`] gives; it does
//! not attach probes, symbolize stacks, or decide which processes to trace.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use object::{Architecture, Object, ObjectSegment, ObjectSymbol, ReadRef, SymbolFlags, SymbolKind};
use crate::maps::{self, MapsError};
use crate::prologue::{MAX_PROLOGUE_BYTES, choose_probe_offset};

/// How much of a function is searched for branches back into its prologue.
const MAX_FUNCTION_BYTES: u64 = 64 << 10;

/// An allocation or deallocation function leaktrace probes, by its C name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllocFn {
    Malloc,
    Calloc,
    Realloc,
    Reallocarray,
    PosixMemalign,
    AlignedAlloc,
    Memalign,
    Valloc,
    Pvalloc,
    Free,
    /// Not an allocator, but it maps thread stacks (kept in glibc's cache after the thread
    /// ends) and allocates thread control blocks: probed like an allocator call in flight, so
    /// that this runtime-internal memory is not reported as the program's leak.
    PthreadCreate,
}

impl AllocFn {
    /// Functions probed only to hide what the runtime allocates inside them.
    pub const INTERNAL: [AllocFn; 1] = [AllocFn::PthreadCreate];

    /// Every function, in the order points are reported.
    pub const ALL: [AllocFn; 10] = [
        AllocFn::Malloc,
        AllocFn::Calloc,
        AllocFn::Realloc,
        AllocFn::Reallocarray,
        AllocFn::PosixMemalign,
        AllocFn::AlignedAlloc,
        AllocFn::Memalign,
        AllocFn::Valloc,
        AllocFn::Pvalloc,
        AllocFn::Free,
    ];

    /// The exported symbol name, without any ELF version suffix.
    pub fn symbol(&self) -> &'static str {
        match self {
            AllocFn::Malloc => "malloc",
            AllocFn::Calloc => "calloc",
            AllocFn::Realloc => "realloc",
            AllocFn::Reallocarray => "reallocarray",
            AllocFn::PosixMemalign => "posix_memalign",
            AllocFn::AlignedAlloc => "aligned_alloc",
            AllocFn::Memalign => "memalign",
            AllocFn::Valloc => "valloc",
            AllocFn::Pvalloc => "pvalloc",
            AllocFn::Free => "free",
            AllocFn::PthreadCreate => "pthread_create",
        }
    }

    /// The arguments its entry probe reads, by index (0 is `rdi`): the probe may be placed
    /// only where they are still in some register. Must match the entry programs in
    /// `leaktrace-ebpf`.
    pub fn arguments(&self) -> &'static [usize] {
        match self {
            AllocFn::Malloc | AllocFn::Valloc | AllocFn::Pvalloc | AllocFn::Free => &[0],
            AllocFn::Calloc | AllocFn::Realloc => &[0, 1],
            AllocFn::Reallocarray => &[0, 1, 2],
            AllocFn::PosixMemalign => &[0, 2],
            AllocFn::AlignedAlloc | AllocFn::Memalign => &[1],
            AllocFn::PthreadCreate => &[],
        }
    }

    /// The function exported under `name`, if it is one of ours.
    pub fn from_symbol(name: &str) -> Option<AllocFn> {
        AllocFn::ALL
            .into_iter()
            .chain(AllocFn::INTERNAL)
            .find(|f| f.symbol() == name)
    }
}

impl fmt::Display for AllocFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// One function entry in a file, and where to attach to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePoint {
    /// Every name exported at this address, e.g. glibc's `aligned_alloc` and `memalign`
    /// are one function. One probe serves them all; the caller decides how to treat the
    /// arguments, which these aliases share.
    pub funcs: Vec<AllocFn>,
    /// File offset of the function's first instruction.
    pub symbol_offset: u64,
    /// File offset to attach at: `symbol_offset` plus the prologue choice.
    pub probe_offset: u64,
    /// Whether the kernel emulates the instruction at `probe_offset` (cheap) rather than
    /// single-stepping it.
    pub emulated: bool,
    /// The instruction at `probe_offset`, for log messages.
    pub instruction: String,
    /// Where the arguments are at `probe_offset`, the uprobe's attach cookie (see
    /// [`crate::prologue::ProbeSite::cookie`]); 0 when they are in their usual registers.
    pub cookie: u64,
}

/// A file that defines an allocator, as mapped by one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatorLib {
    /// The path as the target process sees it (from `/proc/PID/maps`; any bytes).
    pub path: PathBuf,
    /// The mapped file itself, `/proc/PID/map_files/START-END`: the exact file, in whatever
    /// mount namespace, whatever its name; valid while the process maps it.
    pub open_path: PathBuf,
    /// One entry per distinct function address, ordered by [`AllocFn::ALL`].
    pub points: Vec<ProbePoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot parse {} as an ELF file: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: object::Error,
    },
    #[error("{} is built for {arch}; leaktrace can only probe x86-64 code", path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error(
        "cannot read the code of {symbol} (address {address:#x}) in {}: no loadable segment holds it; the file may be truncated or corrupt",
        path.display()
    )]
    CodeNotFound {
        path: PathBuf,
        symbol: AllocFn,
        address: u64,
    },
}

impl AllocatorError {
    /// True when the file simply is not an ELF file we can use, as opposed to one we
    /// could not read. `find_allocators` skips such mappings instead of failing.
    pub fn is_not_elf(&self) -> bool {
        matches!(
            self,
            AllocatorError::Parse { .. } | AllocatorError::UnsupportedArchitecture { .. }
        )
    }
}

/// The most read of a file that cannot be memory-mapped.
const UNMAPPABLE_CAP: u64 = 64 << 20;

/// At most `cap` bytes of `file`; a longer file is an error rather than a shortened ELF.
fn read_unmappable(file: impl std::io::Read, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    file.take(cap + 1).read_to_end(&mut data)?;
    if data.len() as u64 > cap {
        return Err(std::io::Error::other(format!(
            "cannot be memory-mapped and is larger than {} MiB: not an executable or library",
            cap >> 20
        )));
    }
    Ok(data)
}

/// Looks for the malloc-family functions defined in the ELF file at `open_path`.
///
/// `path_as_seen` is only recorded in the result. Returns `Ok(None)` when the file does
/// not define both `malloc` and `free`, so it is not an allocator.
///
/// Both the dynamic symbol table and `.symtab` (present in unstripped and static
/// binaries) are searched; only defined functions count, never imports. GNU indirect
/// functions are left out, since their address is the resolver, not the function.
pub fn inspect_elf(
    path_as_seen: &Path,
    open_path: &Path,
) -> Result<Option<AllocatorLib>, AllocatorError> {
    let file = File::open(open_path).map_err(|source| AllocatorError::Open {
        path: open_path.to_path_buf(),
        source,
    })?;
    // Mapped, not read: executables can be huge and only their symbol tables and a few
    // prologues are looked at. (Reading through object's ReadCache instead costs a 256-byte
    // read(2) per symbol name: 2,500 of them for glibc, a third of the attach time.)
    // SAFETY: the mapping is private and read-only; a file truncated under us while we parse
    // it would fault, which is also what every loader and symbolizer reading it risks.
    let map = unsafe { memmap2::Mmap::map(&file) };
    // Files that cannot be mapped (special files) are read, up to a cap: no executable or
    // library is such a file, so one that is large is not worth reading on.
    let read;
    let data: &[u8] = match &map {
        Ok(map) => map,
        Err(_) => {
            read = read_unmappable(&file, UNMAPPABLE_CAP).map_err(|source| AllocatorError::Open {
                path: open_path.to_path_buf(),
                source,
            })?;
            &read
        }
    };
    let elf = object::File::parse(data).map_err(|source| AllocatorError::Parse {
        path: open_path.to_path_buf(),
        source,
    })?;
    if elf.architecture() != Architecture::X86_64 {
        return Err(AllocatorError::UnsupportedArchitecture {
            path: open_path.to_path_buf(),
            arch: format!("{:?}", elf.architecture()),
        });
    }

    // address -> (functions there, size of the symbol when known)
    let mut by_address: BTreeMap<u64, (Vec<AllocFn>, u64)> = BTreeMap::new();
    for symbol in elf.dynamic_symbols().chain(elf.symbols()) {
        if !symbol.is_definition() || symbol.kind() != SymbolKind::Text || is_ifunc(&symbol) {
            continue;
        }
        let Some(func) = symbol.name().ok().and_then(AllocFn::from_symbol) else {
            continue;
        };
        let entry = by_address
            .entry(symbol.address())
            .or_insert_with(|| (Vec::new(), 0));
        if !entry.0.contains(&func) {
            entry.0.push(func);
        }
        entry.1 = entry.1.max(symbol.size());
    }

    let defines = |wanted: AllocFn| {
        by_address
            .values()
            .any(|(funcs, _)| funcs.contains(&wanted))
    };
    if !defines(AllocFn::Malloc) || !defines(AllocFn::Free) {
        return Ok(None);
    }

    let mut points = Vec::with_capacity(by_address.len());
    for (address, (mut funcs, size)) in by_address {
        funcs.sort();
        let first = funcs.first().copied().unwrap_or(AllocFn::Malloc);
        let not_found = || AllocatorError::CodeNotFound {
            path: open_path.to_path_buf(),
            symbol: first,
            address,
        };
        let (symbol_offset, bytes_in_file) = file_offset(&elf, address).ok_or_else(not_found)?;
        // The whole function when its size is known, so that branches back into the
        // prologue are seen (capped: allocator entry points are small).
        let len = bytes_in_file.min(if size > 0 {
            size.min(MAX_FUNCTION_BYTES)
        } else {
            MAX_PROLOGUE_BYTES as u64
        });
        let code = usize::try_from(symbol_offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(start, len)| data.get(start..start.checked_add(len)?))
            .ok_or_else(not_found)?;
        // Aliases share one probe: it must keep what any of them reads.
        let mut arguments: Vec<usize> = funcs.iter().flat_map(|f| f.arguments()).copied().collect();
        arguments.sort_unstable();
        arguments.dedup();
        let site = choose_probe_offset(code, &arguments);
        points.push(ProbePoint {
            funcs,
            symbol_offset,
            probe_offset: symbol_offset + site.offset,
            emulated: site.emulated,
            instruction: site.instruction,
            cookie: site.cookie,
        });
    }
    points.sort_by_key(|p| p.funcs.first().copied());

    Ok(Some(AllocatorLib {
        path: path_as_seen.to_path_buf(),
        open_path: open_path.to_path_buf(),
        points,
    }))
}

fn is_ifunc<'data, S: ObjectSymbol<'data>>(symbol: &S) -> bool {
    match symbol.flags() {
        SymbolFlags::Elf { st_info, .. } => st_info & 0xf == object::elf::STT_GNU_IFUNC,
        _ => false,
    }
}

/// Maps a virtual address to its file offset through the loadable segment holding it,
/// as the kernel's uprobe API wants file offsets. Also returns how many bytes of the
/// segment's file image follow it. Segments rather than sections, because stripped
/// files may lack section headers but a loadable file always has program headers.
fn file_offset<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
    address: u64,
) -> Option<(u64, u64)> {
    elf.segments().find_map(|segment| {
        let (offset, file_size) = segment.file_range();
        let delta = address.checked_sub(segment.address())?;
        (delta < file_size).then(|| (offset + delta, file_size - delta))
    })
}

/// Finds the allocators mapped executable into process `pid`, in the order of
/// `/proc/PID/maps` (so the program itself, if it defines its own `malloc`, comes
/// first, as it does for static binaries).
///
/// Each file is opened through the process's `map_files` link, so a path that is not valid
/// UTF-8, holds a newline or lives in another mount namespace is no obstacle. Mappings of
/// deleted files (e.g. a library upgraded under a running process) and files that are not
/// x86-64 ELF are skipped; failing to open a mapped file is an error, because silently
/// missing the process's libc would report nothing.
pub fn find_allocators(pid: u32) -> Result<Vec<AllocatorLib>, AllocatorError> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut found = Vec::new();
    for map in maps::read(pid)? {
        let Some(path) = map.file() else { continue };
        if !map.exec || map.is_deleted() || seen.iter().any(|s| s == path) {
            continue;
        }
        seen.push(path.to_path_buf());
        match inspect_elf(path, &map.map_file(pid)) {
            Ok(Some(lib)) => found.push(lib),
            Ok(None) => {}
            Err(e) if e.is_not_elf() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmappable_file_is_read_up_to_its_cap() {
        assert_eq!(read_unmappable(&b"\x7fELF"[..], 4).unwrap(), b"\x7fELF");
        let err = read_unmappable(std::io::repeat(0), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    }

    /// The libc this test binary runs with, as named in our own maps.
    fn own_libc() -> PathBuf {
        let maps = maps::read(std::process::id()).unwrap_or_default();
        maps.iter()
            .filter_map(|m| m.file())
            .find(|path| path.ends_with("libc.so.6"))
            .map(Path::to_path_buf)
            .unwrap_or_else(|| panic!("this test binary maps no libc.so.6: {maps:#?}"))
    }

    fn point(lib: &AllocatorLib, func: AllocFn) -> &ProbePoint {
        lib.points
            .iter()
            .find(|p| p.funcs.contains(&func))
            .unwrap_or_else(|| {
                panic!(
                    "{func} not found in {}: {:#?}",
                    lib.path.display(),
                    lib.points
                )
            })
    }

    /// File offset of the code `name` resolves to in this process, independently of
    /// our ELF reading: dlsym for the address, our own maps for the file offset.
    fn loaded_file_offset(name: &str) -> u64 {
        let c_name = std::ffi::CString::new(name).unwrap_or_default();
        // SAFETY: dlsym with a NUL-terminated name only looks the symbol up.
        let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c_name.as_ptr()) } as u64;
        assert_ne!(address, 0, "dlsym({name}) failed");
        for m in maps::read(std::process::id()).unwrap_or_default() {
            if (m.start..m.end).contains(&address) {
                return address - m.start + m.offset;
            }
        }
        panic!("{name} at {address:#x} is in no mapping");
    }

    #[test]
    fn finds_every_function_in_the_system_libc() {
        let path = own_libc();
        let lib = inspect_elf(&path, &path)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{} is not an allocator?", path.display()));

        for func in AllocFn::ALL {
            let p = point(&lib, func);
            assert_eq!(
                p.symbol_offset,
                loaded_file_offset(func.symbol()),
                "{func} in {}",
                path.display()
            );
            assert!(p.probe_offset >= p.symbol_offset && p.probe_offset < p.symbol_offset + 64);
        }

        let aligned = point(&lib, AllocFn::AlignedAlloc);
        assert_eq!(
            aligned.funcs,
            vec![AllocFn::AlignedAlloc, AllocFn::Memalign]
        );
        let allocators = lib
            .points
            .iter()
            .filter(|p| p.funcs.iter().all(|f| AllocFn::ALL.contains(f)))
            .count();
        assert_eq!(allocators, AllocFn::ALL.len() - 1, "each address once: {:#?}", lib.points);
        // glibc 2.34+ has pthread_create in libc itself (both symbol versions at one address).
        let pc = point(&lib, AllocFn::PthreadCreate);
        assert_eq!(pc.symbol_offset, loaded_file_offset("pthread_create"));
    }

    #[test]
    fn glibc_2_36_free_is_probed_at_its_emulated_je() {
        let path = own_libc();
        let Ok(Some(lib)) = inspect_elf(&path, &path) else {
            panic!("cannot inspect {}", path.display());
        };
        let free = point(&lib, AllocFn::Free);
        // SAFETY: glibc returns a static NUL-terminated string.
        let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        if version.to_bytes() != b"2.36" {
            eprintln!("skipped: free's prologue was checked on glibc 2.36, this is {version:?}");
            return;
        }
        assert_eq!(free.probe_offset, free.symbol_offset + 3, "{free:?}");
        assert!(free.emulated, "{free:?}");
        assert!(free.instruction.starts_with("je "), "{free:?}");
    }

    #[test]
    fn libm_is_not_an_allocator() {
        let libc = own_libc();
        let libm = libc.with_file_name("libm.so.6");
        assert!(libm.exists(), "{} should exist beside libc", libm.display());
        let result = inspect_elf(&libm, &libm).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result, None);
    }

    #[test]
    fn errors_name_the_file() {
        let missing = Path::new("/nonexistent/libc.so.6");
        let err = inspect_elf(missing, missing).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("cannot open /nonexistent/libc.so.6: ")),
            "{err:?}"
        );
        let not_elf = Path::new("/proc/self/maps");
        let err = inspect_elf(not_elf, not_elf).err();
        assert!(
            err.as_ref().is_some_and(AllocatorError::is_not_elf),
            "{err:?}"
        );
    }

    #[test]
    fn finds_libc_in_this_process() {
        let pid = std::process::id();
        let libs = find_allocators(pid).unwrap_or_else(|e| panic!("{e}"));
        let libc = own_libc();
        let lib = libs
            .iter()
            .find(|l| l.path == libc)
            .unwrap_or_else(|| panic!("no {} in {libs:#?}", libc.display()));
        assert!(lib.open_path.starts_with(format!("/proc/{pid}/map_files/")), "{lib:?}");
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (std::fs::metadata(&lib.open_path), std::fs::metadata(&libc));
        let id = |m: std::io::Result<std::fs::Metadata>| m.map(|m| (m.dev(), m.ino())).ok();
        assert_eq!(id(a), id(b));
    }

    #[test]
    fn missing_process_is_named() {
        // PIDs are at most 2^22 on Linux, so this one cannot exist.
        let err = find_allocators(u32::MAX).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e
                    .starts_with("cannot read /proc/4294967295/maps: No such file or directory")),
            "{err:?}"
        );
    }

    #[test]
    fn symbols_round_trip() {
        for func in AllocFn::ALL {
            assert_eq!(AllocFn::from_symbol(func.symbol()), Some(func));
        }
        assert_eq!(AllocFn::from_symbol("malloc@@GLIBC_2.2.5"), None);
    }
}
