//! The one reader of `/proc/PID/maps` in leaktrace. It parses the file as bytes, since a mapped
//! file's path is whatever bytes its name holds (invalid UTF-8 included), and gives each mapping's
//! `/proc/PID/map_files/START-END` link, through which the exact file the process mapped is
//! opened: no path lookup in our mount namespace or the target's, no race with a rename.
//!
//! It does not decide what a mapping is for (allocators, symbolization): its callers do.
use std::{
    ffi::OsString,
    io,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

/// Suffix the kernel appends to the path of a mapped file that was unlinked.
const DELETED: &[u8] = b" (deleted)";

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    /// Offset of `start` in the mapped file.
    pub offset: u64,
    /// (major, minor) of the file's device.
    pub dev: (u32, u32),
    pub inode: u64,
    pub name: MapName,
}

/// What a mapping maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapName {
    /// Anonymous memory.
    Anonymous,
    /// `[heap]`, `[stack]`, `[vdso]`, `[anon:NAME]` and the like, as written.
    Pseudo(String),
    /// A file, by the path the process sees it at (its mount namespace and root).
    File {
        path: PathBuf,
        /// The file was unlinked after it was mapped.
        deleted: bool,
    },
}

impl Mapping {
    /// The file this mapping maps, if any (deleted files included).
    pub fn file(&self) -> Option<&Path> {
        match &self.name {
            MapName::File { path, .. } => Some(path),
            _ => None,
        }
    }

    pub fn is_deleted(&self) -> bool {
        matches!(self.name, MapName::File { deleted: true, .. })
    }

    /// The magic link to the mapped file itself: opening it opens what the process mapped,
    /// whatever its name and wherever it lives (needs root, as leaktrace does).
    pub fn map_file(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", self.start, self.end))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "cannot read /proc/{pid}/maps: {source} (is process {pid} still running, and may this user trace it?)"
    )]
    Read { pid: u32, source: io::Error },
    #[error("cannot parse /proc/{pid}/maps, line {line}: {why}")]
    Parse { pid: u32, line: usize, why: &'static str },
    #[error(
        "/proc/{pid}/maps is larger than {} MiB: process {pid} maps more than leaktrace reads \
         (its mappings and their paths are the process's own choice)",
        MAX_MAPS_BYTES >> 20
    )]
    TooLarge { pid: u32 },
}

/// The most of a maps file read. A line is at most ~4,200 bytes (a path is at most PATH_MAX), so
/// the kernel's `vm.max_map_count` (65,530 by default, raised by root for some databases) bounds
/// the file only to hundreds of MiB, and a process choosing long paths gets there; real processes
/// with 260,000 mappings of ordinary paths stay near 25 MiB.
pub const MAX_MAPS_BYTES: u64 = 64 << 20;

/// Reads and parses `/proc/PID/maps`.
pub fn read(pid: u32) -> Result<Vec<Mapping>, MapsError> {
    let file = std::fs::File::open(format!("/proc/{pid}/maps")).map_err(|source| MapsError::Read { pid, source })?;
    read_from(file, pid, MAX_MAPS_BYTES)
}

/// Reads at most `cap` bytes of a maps file and parses them; a longer file is an error, never
/// a silently shortened list of mappings.
fn read_from(file: impl io::Read, pid: u32, cap: u64) -> Result<Vec<Mapping>, MapsError> {
    let mut data = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, cap + 1), &mut data)
        .map_err(|source| MapsError::Read { pid, source })?;
    if data.len() as u64 > cap {
        return Err(MapsError::TooLarge { pid });
    }
    parse(&data).map_err(|(line, why)| MapsError::Parse { pid, line, why })
}

/// Parses the text of a maps file; on failure, the 1-based line and what is wrong with it.
pub fn parse(data: &[u8]) -> Result<Vec<Mapping>, (usize, &'static str)> {
    data.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| parse_line(line).map_err(|why| (i + 1, why)))
        .collect()
}

/// `START-END PERMS OFFSET MAJOR:MINOR INODE [spaces PATH]`, as `show_map_vma` writes it
/// (fs/proc/task_mmu.c, Linux 6.x): the path is the rest of the line after the padding and may
/// hold spaces; a newline in it is written `\012` (seq_path's escape set is "\n" only).
fn parse_line(line: &[u8]) -> Result<Mapping, &'static str> {
    let mut rest = line;
    let mut field = |what: &'static str| -> Result<&[u8], &'static str> {
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let (f, r) = rest.split_at(end);
        rest = r.strip_prefix(b" ").unwrap_or(r);
        if f.is_empty() { Err(what) } else { Ok(f) }
    };
    let range = field("no address range")?;
    let perms = field("no permissions")?;
    let offset = field("no offset")?;
    let dev = field("no device")?;
    let inode = field("no inode")?;

    let (start, end) = split_once(range, b'-').ok_or("address range without '-'")?;
    let (start, end) = (hex(start).ok_or("bad start address")?, hex(end).ok_or("bad end address")?);
    if end < start {
        return Err("address range ends before it starts");
    }
    let [r, w, x, s] = <[u8; 4]>::try_from(perms).map_err(|_| "permissions are not 4 characters")?;
    let flag = |c: u8, set: u8| match c {
        b'-' => Ok(false),
        c if c == set => Ok(true),
        _ => Err("unknown permission character"),
    };
    let (major, minor) = split_once(dev, b':').ok_or("device without ':'")?;
    let to_u32 = |v: u64| u32::try_from(v).map_err(|_| "device number too large");
    let dev = (
        to_u32(hex(major).ok_or("bad device major")?)?,
        to_u32(hex(minor).ok_or("bad device minor")?)?,
    );
    let inode = decimal(inode).ok_or("bad inode")?;

    let name = rest.trim_ascii_start();
    let name = if name.is_empty() {
        MapName::Anonymous
    } else if name.first() == Some(&b'/') {
        let (name, deleted) = match name.strip_suffix(DELETED) {
            Some(n) => (n, true),
            None => (name, false),
        };
        MapName::File {
            path: PathBuf::from(OsString::from_vec(unescape(name))),
            deleted,
        }
    } else {
        MapName::Pseudo(String::from_utf8_lossy(name).into_owned())
    };
    Ok(Mapping {
        start,
        end,
        read: flag(r, b'r')?,
        write: flag(w, b'w')?,
        exec: flag(x, b'x')?,
        shared: match s {
            b's' => true,
            b'p' => false,
            _ => return Err("unknown sharing character"),
        },
        offset: hex(offset).ok_or("bad offset")?,
        dev,
        inode,
        name,
    })
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Undoes the kernel's `\012` escape of a newline. A name that holds the four bytes `\012`
/// itself reads back as a newline: the file is still opened through map_files, so only the
/// displayed name can be wrong in that case.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(b"\\012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    const SAMPLE: &[u8] = b"\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1048602                    /usr/bin/cat
55d0c0a02000-55d0c0a07000 r-xp 00002000 fd:01 1048602                    /usr/bin/cat
55d0c1b8e000-55d0c1baf000 rw-p 00000000 00:00 0                          [heap]
7f3e1c000000-7f3e1c021000 rw-p 00000000 00:00 0 
7f3e1e028000-7f3e1e17d000 r-xp 00028000 fd:01 1050364                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f3e1e200000-7f3e1e201000 r-xs 00000000 00:05 77                         /tmp/my lib\\012with newline\xff.so (deleted)
7ffd5d5e0000-7ffd5d601000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_every_kind_of_line() {
        let maps = parse(SAMPLE).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(maps.len(), 8);
        assert_eq!(maps[1].start, 0x55d0c0a02000);
        assert_eq!(maps[1].end, 0x55d0c0a07000);
        assert!(maps[1].read && !maps[1].write && maps[1].exec && !maps[1].shared);
        assert_eq!(maps[1].offset, 0x2000);
        assert_eq!(maps[1].dev, (0xfd, 1));
        assert_eq!(maps[1].inode, 1048602);
        assert_eq!(maps[1].file(), Some(Path::new("/usr/bin/cat")));
        assert_eq!(maps[2].name, MapName::Pseudo("[heap]".into()));
        assert_eq!(maps[3].name, MapName::Anonymous);
        let odd = &maps[5];
        assert!(odd.shared && odd.is_deleted());
        assert_eq!(
            odd.file().map(|p| p.as_os_str().as_bytes()),
            Some(&b"/tmp/my lib\nwith newline\xff.so"[..])
        );
        assert_eq!(maps[7].end, 0xffffffffff601000);
        assert_eq!(
            maps[1].map_file(42),
            Path::new("/proc/42/map_files/55d0c0a02000-55d0c0a07000")
        );
    }

    #[test]
    fn trailing_spaces_of_a_name_are_kept() {
        let maps = parse(b"1000-2000 r-xp 00000000 08:01 5 /a b  \n").unwrap_or_default();
        assert_eq!(maps[0].file(), Some(Path::new("/a b  ")));
    }

    #[test]
    fn a_maps_file_over_the_cap_is_an_error_not_a_shorter_list() {
        let line = b"7f0000000000-7f0000001000 r-xp 00000000 08:01 42 /usr/lib/libc.so.6\n";
        let data = line.repeat(4);
        let fits = read_from(&data[..], 7, data.len() as u64).unwrap();
        assert_eq!(fits.len(), 4);
        let err = read_from(&data[..], 7, data.len() as u64 - 1).unwrap_err();
        assert!(matches!(err, MapsError::TooLarge { pid: 7 }), "{err}");
        assert!(err.to_string().starts_with("/proc/7/maps is larger than 64 MiB"), "{err}");
    }

    #[test]
    fn malformed_lines_are_errors_with_their_number() {
        for (bad, why) in [
            (&b"1000-2000 r-xp 0 08:01 5 /x\nzzzz r-xp 0 08:01 5\n"[..], "address range without '-'"),
            (b"1000-2000 r-xp 0 08:01 5 /x\nzzzz\n", "no permissions"),
            (b"1000-2000 r-xp 0 08:01 5 /x\n1000-g000 r-xp 0 08:01 5 /x\n", "bad end address"),
            (b"1000-2000 r-xp 0 08:01 5 /x\n2000-1000 r-xp 0 08:01 5 /x\n", "address range ends before it starts"),
            (b"1000-2000 r-xp 0 08:01 5 /x\n1000-2000 rwxpq 0 08:01 5\n", "permissions are not 4 characters"),
            (b"1000-2000 r-xp 0 08:01 5 /x\n1000-2000 r-xp 0 0801 5\n", "device without ':'"),
            (b"1000-2000 r-xp 0 08:01 5 /x\n1000-2000 r-xp 0 08:01\n", "no inode"),
        ] {
            assert_eq!(parse(bad), Err((2, why)), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn reads_our_own_maps_and_opens_through_map_files() {
        let pid = std::process::id();
        let maps = read(pid).unwrap_or_else(|e| panic!("{e}"));
        let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
        let own = maps
            .iter()
            .find(|m| m.exec && m.file() == Some(exe.as_path()))
            .unwrap_or_else(|| panic!("{} not in {maps:#?}", exe.display()));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let a = std::fs::metadata(own.map_file(pid)).unwrap_or_else(|e| panic!("{e}"));
            let b = std::fs::metadata(&exe).unwrap_or_else(|e| panic!("{e}"));
            use std::os::unix::fs::MetadataExt;
            assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
        }
        let err = read(u32::MAX).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("cannot read /proc/4294967295/maps: No such file"), "{err}");
    }

    /// A small xorshift generator: the robustness test is reproducible from its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random bytes, and valid lines mutated byte by byte, never panic the parser; a valid line
    /// with a random byte name reads back with that name.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alphabet = b"0123456789abcdefx-: /\\\n\x00\xffrwps[]";
        for _ in 0..20_000 {
            let len = rng.below(120);
            let junk: Vec<u8> = if rng.below(2) == 0 {
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect()
            };
            let _ = parse(&junk);
            let mut line = SAMPLE.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(line.len());
                line[i] = rng.next() as u8;
            }
            let _ = parse(&line);
        }
        for _ in 0..2_000 {
            let name: Vec<u8> = (0..1 + rng.below(40))
                .map(|_| rng.next() as u8)
                .filter(|&b| b != b'\n' && b != b'\\')
                .collect();
            let mut path = b"/d/".to_vec();
            path.extend(&name);
            let mut text = b"1000-2000 r-xp 00000000 08:01 7    ".to_vec();
            text.extend(&path);
            text.push(b'\n');
            let maps = parse(&text).unwrap_or_else(|e| panic!("{e:?} for {text:?}"));
            let want = path.strip_suffix(DELETED).unwrap_or(&path);
            assert_eq!(maps[0].file().map(|p| p.as_os_str().as_bytes()), Some(want));
        }
    }
}
