//! The one way leaktrace writes its reports: to standard output, to an `-o` target, or into a
//! report directory (`oom --dir`). Owns opening the target safely, committing each report whole,
//! file modes and owners, and telling "the reader went away" apart from a failure. It does not
//! render: callers hand it a renderer writing into memory, so that a report is only written once
//! it is complete, and a renderer's error is never mistaken for an I/O one (or the reverse).
//!
//! Design, and why:
//! - **Nothing is written through a link we do not trust.** The last component of an `-o` path is
//!   looked at without following it: a symbolic link is refused (root writing `-o /tmp/r.txt`
//!   must not overwrite what a user pointed `/tmp/r.txt` at; `fs.protected_symlinks` may be 0),
//!   except a root-owned link in a directory only root can write, such as `/dev/stdout`. The
//!   directory the operator names is resolved once and every later operation is relative to its
//!   descriptor, so no component can be swapped between a check and a use.
//! - **A regular file is replaced, never truncated.** Each document goes to a temporary created
//!   `O_EXCL | O_NOFOLLOW` in the same directory under an unpredictable name
//!   (`.NAME.<random>.tmp`, never a user's `x.tmp`), mode 0600 set with `fchmod` whatever the
//!   umask, given to the directory's owner with `fchown` on the open file when root writes into
//!   another user's directory, `fsync`ed, then renamed over the target. Until the first report of
//!   a run is complete, the previous run's file is untouched: a SIGKILL, a crash or a full disk
//!   leaves it whole.
//! - **Append formats (text, JSON Lines, folded) append whole reports.** The first report of a run
//!   replaces the file as above; each later one is rendered in memory, then appended with one
//!   positioned write to the descriptor of the file we created (never reopened by path). If that
//!   write fails (a full disk), the file is cut back to its previous length, so it never ends in
//!   half a report. Copy-on-write (rewrite old contents + new report, then rename) would also
//!   close the window of a SIGKILL landing inside that one `write()`, but it costs the whole file
//!   per report, so a long `--interval` run is quadratic. Measured on the development VM (virtio
//!   disk, ext4; `copy_file_range` + one 2 KiB report + `fsync` + rename, against one
//!   positioned 2 KiB write): 17 ms vs 13 µs per report with a 1 MiB file, 63 ms vs 11 µs at
//!   10 MiB, 653 ms vs 11 µs at 100 MiB. A day of 1 s text reports reaches ~170 MB: copy-on-write
//!   could no longer keep up with its own interval. Appending costs each report once. A SIGKILL
//!   between reports, where a tracer spends its life, leaves every previous report whole.
//! - **Other targets are written in place**: a FIFO, a terminal or `/dev/null` (and
//!   `/dev/stdout` through its trusted link) cannot be renamed over and need not be. A FIFO is
//!   opened non-blocking: with no reader, the open fails at once (exit 2, "start the reader
//!   first") instead of hanging before the probes are attached with SIGINT and SIGTERM unheard.
//!   Once open, it blocks like standard output does (a slow reader slows the tracer; the ring
//!   counts what is lost meanwhile). A block device or a directory is refused.
//! - **A reader that goes away is not an error** (`| head`, a closed FIFO): `EPIPE` ends
//!   `trace`, `audit` and `diff` quietly with exit 0, in every format; the `oom` watcher stops
//!   only its notice lines and keeps watching. A standard descriptor that is closed at start
//!   (`>&-`) is pointed at /dev/null before anything else is opened, so that no file, map or
//!   ring the tracer opens can land on descriptor 1 and receive a report.
use std::{
    ffi::{CString, OsStr, OsString},
    fs::File,
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{FileExt, MetadataExt},
        },
    },
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// The mode of every file leaktrace writes: reports name processes, their command lines, their
/// code. Only their owner reads them.
pub const FILE_MODE: u32 = 0o600;

/// How successive documents of one run combine in a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Text, JSON Lines, folded: each report follows the previous ones.
    Append,
    /// SVG, pprof, an audit: each report is the whole file.
    Replace,
}

/// What became of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Written,
    /// The reader closed its end (EPIPE): stop writing and end quietly.
    ReaderGone,
}

/// Where a command's reports go.
pub struct Sink {
    /// For messages: the path as given, or "standard output".
    name: PathBuf,
    mode: Mode,
    target: Target,
}

enum Target {
    Stdout,
    /// A FIFO, a character device, or what a trusted link points at.
    InPlace(File),
    Regular {
        dir: Dir,
        name: OsString,
        /// The file this run created and how long it is, once the first report is in.
        current: Option<(File, u64)>,
        /// A descriptor held in reserve (`/dev/null`) and given up just before a temporary is
        /// created: a tracer whose descriptors ran out (idle metrics clients, many targets)
        /// still writes its report.
        spare: Option<File>,
    },
}

impl Sink {
    pub fn stdout(mode: Mode) -> Sink {
        Sink {
            name: "standard output".into(),
            mode,
            target: Target::Stdout,
        }
    }

    /// Standard output, or the `-o` path, checked now so that a bad target fails before
    /// anything is attached.
    pub fn to(path: Option<&Path>, mode: Mode) -> Result<Sink> {
        match path {
            None => Ok(Sink::stdout(mode)),
            Some(p) => Sink::open(p, mode),
        }
    }

    pub fn open(path: &Path, mode: Mode) -> Result<Sink> {
        let err = |source| Error::Output {
            path: path.to_path_buf(),
            source,
        };
        let name = match path.file_name() {
            Some(n) if !path.as_os_str().as_bytes().ends_with(b"/") => n.to_os_string(),
            _ => return Err(err(refusal("is not a file name: give a file to write the report to"))),
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = Dir::open(parent, true).map_err(err)?;
        let target = match dir.lstat(&name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e)),
            Ok(st) => Some(st),
        };
        let target = match target.map(|st| (st.st_mode & libc::S_IFMT, st)) {
            None | Some((libc::S_IFREG, _)) => {
                // Can we write there at all? Better to know before the trace than after it.
                dir.probe(&name).map_err(err)?;
                Target::Regular {
                    dir,
                    name,
                    current: None,
                    spare: File::open("/dev/null").ok(),
                }
            }
            Some((libc::S_IFLNK, link)) if dir.trusted_link(&link) => {
                Target::InPlace(dir.open_in_place(&name, true).map_err(err)?)
            }
            Some((libc::S_IFLNK, _)) => {
                let to = std::fs::read_link(path)
                    .map(|t| format!(" (to {})", t.display()))
                    .unwrap_or_default();
                return Err(err(refusal(&format!(
                    "is a symbolic link{to}: leaktrace does not write through links; give the path of the file itself"
                ))));
            }
            Some((libc::S_IFDIR, _)) => return Err(err(refusal("is a directory: give a file name"))),
            Some((libc::S_IFBLK, _)) => {
                return Err(err(refusal(
                    "is a block device: leaktrace does not write reports over disks",
                )));
            }
            Some(_) => Target::InPlace(dir.open_in_place(&name, false).map_err(err)?),
        };
        Ok(Sink {
            name: path.to_path_buf(),
            mode,
            target,
        })
    }

    /// Renders a document into memory, then commits it whole.
    pub fn emit(&mut self, render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> Result<Delivery> {
        let mut buf = Vec::new();
        render(&mut buf).map_err(|source| Error::Output {
            path: self.name.clone(),
            source,
        })?;
        self.write(&buf)
    }

    /// Commits one complete document.
    pub fn write(&mut self, doc: &[u8]) -> Result<Delivery> {
        let res = match &mut self.target {
            Target::Stdout => {
                let mut o = io::stdout().lock();
                o.write_all(doc).and_then(|()| o.flush())
            }
            Target::InPlace(f) => f.write_all(doc),
            Target::Regular {
                dir,
                name,
                current,
                spare,
            } => match (self.mode, current.as_mut()) {
                (Mode::Append, Some((f, len))) => append(f, len, doc),
                _ => {
                    drop(spare.take());
                    let done = dir.replace(name, doc).map(|f| *current = Some((f, doc.len() as u64)));
                    *spare = File::open("/dev/null").ok();
                    done
                }
            },
        };
        match res {
            Ok(()) => Ok(Delivery::Written),
            Err(e) if reader_gone(&e) => Ok(Delivery::ReaderGone),
            Err(source) => Err(Error::Output {
                path: self.name.clone(),
                source,
            }),
        }
    }
}

/// EPIPE: whoever read our output closed it.
pub fn reader_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// Appends a whole document at `len`, or leaves the file as it was.
fn append(f: &File, len: &mut u64, doc: &[u8]) -> io::Result<()> {
    match f.write_all_at(doc, *len) {
        Ok(()) => {
            *len += doc.len() as u64;
            Ok(())
        }
        Err(e) => {
            // A full disk: cut the partial report off, so the file ends with a whole one.
            let _ = f.set_len(*len);
            Err(e)
        }
    }
}

fn refusal(why: &str) -> io::Error {
    io::Error::other(why.to_string())
}

/// Points a closed standard descriptor (0, 1, 2) at /dev/null, before anything else opens a
/// file that would take its number. Call first thing in `main`.
pub fn guard_std_fds() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD on a descriptor number only queries it.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a constant path; open returns the lowest free descriptor, this one.
            let got = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if got != fd && got >= 0 {
                // SAFETY: a descriptor we just opened and did not need.
                unsafe { libc::close(got) };
            }
        }
    }
}

/// A directory held open: every file in it is created, renamed and checked relative to this
/// descriptor.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

impl Dir {
    /// Opens a directory; with `follow` false, refuses one whose last component is a symbolic
    /// link (ELOOP, said in words).
    pub fn open(path: &Path, follow: bool) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | if follow { 0 } else { libc::O_NOFOLLOW };
        // SAFETY: a valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) if !follow => refusal("is a symbolic link: give the real directory"),
                _ => e,
            });
        }
        Ok(Dir {
            // SAFETY: a descriptor we just opened and own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's own metadata (of the descriptor, not of its path).
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        // Borrow the descriptor as a File without taking it.
        let f = std::mem::ManuallyDrop::new(
            // SAFETY: the descriptor stays open in self; ManuallyDrop keeps File from closing it.
            unsafe { File::from_raw_fd(self.fd.as_raw_fd()) },
        );
        f.metadata()
    }

    /// Sets the directory's mode (for a directory we just created).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        // SAFETY: our descriptor.
        cvt(unsafe { libc::fchmod(self.fd.as_raw_fd(), mode) }).map(drop)
    }

    fn lstat(&self, name: &OsStr) -> io::Result<libc::stat> {
        let c = cstr(name)?;
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: our descriptor, a valid C string, a valid out-pointer.
        cvt(unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(st)
    }

    /// A link only root could have made, where only root can write (`/dev/stdout`,
    /// `/proc/self/fd/1`): following it is the operator's intent, not a user's trap.
    fn trusted_link(&self, link: &libc::stat) -> bool {
        // SAFETY: no preconditions.
        let me = unsafe { libc::geteuid() };
        self.metadata().is_ok_and(|d| {
            (d.uid() == 0 || d.uid() == me) && d.mode() & 0o022 == 0 && (link.st_uid == 0 || link.st_uid == me)
        })
    }

    /// Opens a FIFO or device for writing in place; never blocks on a FIFO without a reader.
    fn open_in_place(&self, name: &OsStr, follow: bool) -> io::Result<File> {
        let c = cstr(name)?;
        let flags = libc::O_WRONLY
            | libc::O_NONBLOCK
            | libc::O_NOCTTY
            | libc::O_CLOEXEC
            | if follow { 0 } else { libc::O_NOFOLLOW };
        // SAFETY: our descriptor, a valid C string.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENXIO) => refusal(
                    "has no reader (a FIFO nobody has open for reading, or a socket): start the reader first \
                     (e.g. `cat FIFO &`), or write to a regular file",
                ),
                _ => e,
            });
        }
        // SAFETY: a descriptor we just opened and own.
        let f = unsafe { File::from_raw_fd(fd) };
        let m = f.metadata()?;
        let kind = m.mode() & libc::S_IFMT;
        if kind == libc::S_IFDIR || kind == libc::S_IFBLK {
            return Err(refusal("leads to a directory or a block device: give a file"));
        }
        // From here on it behaves as standard output does: writes wait for a slow reader. A
        // regular file reached through a trusted link (`-o /dev/stdout > f`) is appended to.
        let extra = if kind == libc::S_IFREG { libc::O_APPEND } else { 0 };
        // SAFETY: F_GETFL/F_SETFL on our descriptor.
        unsafe {
            let fl = cvt(libc::fcntl(fd, libc::F_GETFL))?;
            cvt(libc::fcntl(fd, libc::F_SETFL, (fl & !libc::O_NONBLOCK) | extra))?;
        }
        Ok(f)
    }

    /// Creates a new, empty temporary for `name` here: O_EXCL, never following a link, under a
    /// name nobody can guess, mode 0600, owned like the directory when root writes into
    /// another user's directory.
    fn create_tmp(&self, name: &OsStr) -> io::Result<(File, CString)> {
        // Keep the temporary's name within NAME_MAX however long the target's is.
        let stem = &name.as_bytes()[..name.len().min(200)];
        for _ in 0..16 {
            let mut tmp = b".".to_vec();
            tmp.extend_from_slice(stem);
            tmp.extend_from_slice(format!(".{:016x}.tmp", random_u64()).as_bytes());
            let c =
                CString::new(tmp).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: our descriptor, a valid C string.
            let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, FILE_MODE as libc::c_uint) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EEXIST) {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: a descriptor we just opened and own.
            let f = unsafe { File::from_raw_fd(fd) };
            if let Err(e) = self.own(&f) {
                self.unlink(&c);
                return Err(e);
            }
            return Ok((f, c));
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "cannot find a free temporary file name",
        ))
    }

    /// Mode 0600 whatever the umask; the directory owner's when root writes in their directory.
    fn own(&self, f: &File) -> io::Result<()> {
        // SAFETY: our descriptor.
        cvt(unsafe { libc::fchmod(f.as_raw_fd(), FILE_MODE) })?;
        let d = self.metadata()?;
        // SAFETY: no preconditions.
        let me = unsafe { libc::geteuid() };
        if me == 0 && d.uid() != 0 {
            // SAFETY: our descriptor: the open file, never a path that could be swapped.
            cvt(unsafe { libc::fchown(f.as_raw_fd(), d.uid(), d.gid()) })?;
        }
        Ok(())
    }

    fn unlink(&self, tmp: &CString) {
        // SAFETY: our descriptor, a valid C string.
        unsafe { libc::unlinkat(self.fd.as_raw_fd(), tmp.as_ptr(), 0) };
    }

    /// Removes `name` here (never following a link to elsewhere).
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: our descriptor, a valid C string.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// Checks that a file can be created here (then removes it).
    pub fn probe(&self, name: &OsStr) -> io::Result<()> {
        let (_f, tmp) = self.create_tmp(name)?;
        self.unlink(&tmp);
        Ok(())
    }

    /// Replaces `name` with `data` atomically (temporary, fsync, rename) and returns the new file,
    /// open for writing. On failure `name` is untouched and no temporary is left.
    pub fn replace(&self, name: &OsStr, data: &[u8]) -> io::Result<File> {
        let (mut f, tmp) = self.create_tmp(name)?;
        let target = cstr(name)?;
        let done = f.write_all(data).and_then(|()| f.sync_all()).and_then(|()| {
            // SAFETY: our descriptor both sides, valid C strings.
            cvt(unsafe { libc::renameat(self.fd.as_raw_fd(), tmp.as_ptr(), self.fd.as_raw_fd(), target.as_ptr()) })
                .map(drop)
        });
        if let Err(e) = done {
            self.unlink(&tmp);
            return Err(e);
        }
        // The rename itself survives a power cut once the directory is synced; a failure here
        // loses nothing that a SIGKILL would not.
        // SAFETY: our descriptor.
        unsafe { libc::fsync(self.fd.as_raw_fd()) };
        Ok(f)
    }
}

/// Unpredictable bits for temporary names (getrandom; never blocks once the pool is ready,
/// which it is long before anyone runs leaktrace).
fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: writes at most 8 bytes into v.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n != 8 {
        // Never seen on Linux ≥ 3.17; O_EXCL keeps even a guessable name safe, only less so.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        v = t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32);
    }
    v
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("leaktrace-sink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn append_replaces_the_old_file_then_appends_whole_reports() {
        let d = dir("append");
        let p = d.join("r.txt");
        std::fs::write(&p, "old run\n").unwrap();
        let mut s = Sink::open(&p, Mode::Append).unwrap();
        // Opening changes nothing; the first report replaces, the next ones append.
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old run\n");
        assert_eq!(s.write(b"one\n").unwrap(), Delivery::Written);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\n");
        s.emit(|b| b.write_all(b"two\n")).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(entries(&d), ["r.txt"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn replace_keeps_only_the_last_document() {
        let d = dir("replace");
        let p = d.join("r.svg");
        std::fs::write(d.join("r.tmp"), "a user's").unwrap();
        let mut s = Sink::open(&p, Mode::Replace).unwrap();
        s.write(b"<svg>1</svg>").unwrap();
        s.write(b"<svg>2</svg>").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "<svg>2</svg>");
        assert_eq!(std::fs::read_to_string(d.join("r.tmp")).unwrap(), "a user's");
        assert_eq!(entries(&d), ["r.svg", "r.tmp"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_render_writes_nothing() {
        let d = dir("render");
        let p = d.join("r.json");
        std::fs::write(&p, "previous").unwrap();
        let mut s = Sink::open(&p, Mode::Append).unwrap();
        let e = s
            .emit(|b| {
                b.write_all(b"{\"half\":")?;
                Err(io::Error::other("renderer failed"))
            })
            .unwrap_err();
        assert!(e.to_string().contains("renderer failed"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "previous");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_untrusted_links_directories_and_readerless_fifos() {
        let d = dir("refuse");
        std::fs::write(d.join("victim"), "precious").unwrap();
        std::os::unix::fs::symlink(d.join("victim"), d.join("link")).unwrap();
        // This directory is ours and 0755: to root a link in it is trusted, so make it look
        // like a user's sticky /tmp instead.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = Sink::open(&d.join("link"), Mode::Append).err().unwrap();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(e.exit_code(), crate::error::EXIT_USAGE);
        let e = Sink::open(Path::new(&format!("{}/", d.display())), Mode::Append)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a file name"), "{e}");
        std::fs::create_dir(d.join("sub")).unwrap();
        let e = Sink::open(&d.join("sub"), Mode::Append).err().unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let fifo = CString::new(d.join("p").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = Sink::open(&d.join("p"), Mode::Append).err().unwrap();
        assert!(e.to_string().contains("no reader"), "{e}");
        assert_eq!(std::fs::read_to_string(d.join("victim")).unwrap(), "precious");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn devices_are_written_in_place() {
        let mut s = Sink::open(Path::new("/dev/null"), Mode::Replace).unwrap();
        assert_eq!(s.write(b"x").unwrap(), Delivery::Written);
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    }

    #[test]
    fn a_pipe_without_reader_is_reader_gone() {
        let mut fds = [0i32; 2];
        // SAFETY: a valid 2-int array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: descriptors just returned by pipe2.
        let w = unsafe {
            libc::close(fds[0]);
            File::from_raw_fd(fds[1])
        };
        let mut s = Sink {
            name: "pipe".into(),
            mode: Mode::Append,
            target: Target::InPlace(w),
        };
        // Rust ignores SIGPIPE in its programs and test harness: EPIPE comes back as an error.
        assert_eq!(s.write(b"x\n").unwrap(), Delivery::ReaderGone);
    }

    #[test]
    fn temporary_names_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
