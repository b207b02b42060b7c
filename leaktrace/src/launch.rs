//! Launch mode's command: starting `leaktrace trace -- CMD` so that it is traced from its first
//! allocation. Owns the fork, the signal state and death signal the command starts with, holding
//! it (stopped at its exec, or before it when it cannot be ptraced) while the probes are armed,
//! finding the allocators of the program that actually runs (the interpreter of a `#!` script),
//! and the trace-stops it makes until it is gone. The event loop around it is `trace`'s.
use std::{
    ffi::{CString, OsString},
    fs::File,
    io::{self, Read},
    os::{fd::FromRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
};

use crate::{
    allocator::{self, AllocatorError, AllocatorLib},
    error::{Error, Result},
};

/// The last signal number the kernel knows (`_NSIG`).
const NSIG: i32 = 64;

/// The kernel's `struct sigaction` (x86-64): the raw system call is used because glibc refuses
/// to touch the two real-time signals it reserves for itself (32, 33), which a parent may still
/// have left ignored.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Signals that whoever started leaktrace left ignored (`nohup` ignores SIGHUP, a shell ignores
/// SIGINT in its background jobs): the command inherits those ignores, as it would run without
/// leaktrace. Everything else starts at its default, whatever leaktrace's runtime did: Rust
/// ignores SIGPIPE before `main` (so its inherited state cannot be known: it starts at the
/// default, as nearly every parent leaves it), tokio installs handlers.
#[derive(Debug, Clone, Copy, Default)]
pub struct InheritedSignals {
    /// Bit `n - 1` for signal `n`.
    ignored: u64,
}

impl InheritedSignals {
    /// Reads the ignored signals; call before installing any handler.
    pub fn capture() -> Self {
        let mut ignored = 0;
        for sig in 1..=NSIG {
            if sig == libc::SIGPIPE || sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = KernelSigaction::default();
            // SAFETY: a query only: no new action, `old` is a valid kernel_sigaction.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    std::ptr::null::<KernelSigaction>(),
                    &mut old as *mut KernelSigaction,
                    8usize,
                )
            };
            if r == 0 && old.handler == libc::SIG_IGN {
                ignored |= 1 << (sig - 1);
            }
        }
        InheritedSignals { ignored }
    }
}

/// A launched command, held until the probes are armed.
pub struct Held {
    pub pid: u32,
    /// What holds it; None once released.
    gate: Option<Gate>,
    /// The read end of a close-on-exec pipe: EOF when the exec succeeded, else the child
    /// writes its errno.
    exec_status: File,
    command: String,
}

enum Gate {
    /// Stopped by ptrace at its exec (PTRACE_EVENT_EXEC): the new program is mapped, nothing
    /// of it has run.
    ExecStop,
    /// Blocked before exec reading a pipe, until this end is closed (when it cannot be
    /// ptraced).
    Pipe(File),
}

/// What the launched child did since the last look.
pub enum ChildState {
    Running,
    /// Stopped at exit with its memory still mapped: snapshot now, then `resume`.
    Exiting,
    Exited,
}

/// The held command, the allocators to probe in it and its name.
pub struct Launched {
    pub held: Held,
    pub libs: Vec<AllocatorLib>,
    pub comm: String,
}

impl Held {
    /// Seizes the child (before it execs) so that it stops at its exec, where the probes are
    /// armed, and at its exit before its memory goes: a command that runs for a few
    /// milliseconds can otherwise be gone, maps and all, before the first drain, and its
    /// stacks could not be symbolized.
    fn seize(pid: u32) -> bool {
        let options = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC;
        // SAFETY: ptrace on our own child; no memory is passed.
        unsafe {
            libc::ptrace(
                libc::PTRACE_SEIZE,
                pid as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                options as usize as *mut libc::c_void,
            ) == 0
        }
    }

    pub fn poll(pid: u32) -> ChildState {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG | libc::__WALL) };
        if r == 0 {
            return ChildState::Running;
        }
        if r < 0 || libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return ChildState::Exited;
        }
        if libc::WIFSTOPPED(status)
            && status >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8))
        {
            return ChildState::Exiting;
        }
        // Any other stop is a signal on its way to the child: pass it on (a group-stop's
        // SIGSTOP included; the child then stops as it would untraced).
        let sig = if libc::WIFSTOPPED(status) && status >> 16 == 0 {
            libc::WSTOPSIG(status)
        } else {
            0
        };
        Self::resume(pid, sig);
        ChildState::Running
    }

    pub fn resume(pid: u32, sig: i32) {
        // SAFETY: ptrace on our own stopped child.
        unsafe {
            libc::ptrace(
                libc::PTRACE_CONT,
                pid as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                sig as usize as *mut libc::c_void,
            );
        }
    }

    /// Lets the command run, now that its probes are armed; returns its pid.
    pub fn release(mut self) -> Result<u32> {
        match self.gate.take() {
            Some(Gate::ExecStop) => {
                // Later execs need no stop.
                // SAFETY: ptrace on our own stopped child; no memory is passed.
                unsafe {
                    libc::ptrace(
                        libc::PTRACE_SETOPTIONS,
                        self.pid as libc::pid_t,
                        std::ptr::null_mut::<libc::c_void>(),
                        libc::PTRACE_O_TRACEEXIT as usize as *mut libc::c_void,
                    );
                }
                Self::resume(self.pid, 0);
            }
            Some(Gate::Pipe(release)) => {
                drop(release); // EOF on the pipe lets the child exec.
                if let Err(e) = exec_result(&mut self.exec_status) {
                    reap(self.pid);
                    return Err(Error::Spawn {
                        command: self.command.clone(),
                        source: e,
                    });
                }
            }
            None => {}
        }
        Ok(self.pid)
    }

    /// Waits for the stop at the exec the child was just let to make.
    fn wait_exec_stop(&mut self) -> io::Result<()> {
        exec_result(&mut self.exec_status)?;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            let r = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::__WALL) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.gate = None; // Nothing left to hold or reap.
                return Err(io::Error::other("it ended before its program started"));
            }
            if status >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXEC << 8)) {
                return Ok(());
            }
            // A signal on its way to it, or its exit stop (killed before the exec): let it go.
            let sig = if status >> 16 == 0 {
                libc::WSTOPSIG(status)
            } else {
                0
            };
            Self::resume(self.pid, sig);
        }
    }
}

impl Drop for Held {
    /// A command never released (leaktrace failed before arming its probes) must not run
    /// untraced: it is killed where it waits.
    fn drop(&mut self) {
        if self.gate.is_some() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            reap(self.pid);
        }
    }
}

/// Waits for a child that was sent SIGKILL (or whose exec failed) to be gone, letting its
/// trace-stops through.
fn reap(pid: u32) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::__WALL) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return;
        }
        Held::resume(pid, 0);
    }
}

/// Ok once the exec succeeded (the close-on-exec pipe reads EOF), else the child's errno.
fn exec_result(status: &mut File) -> io::Result<()> {
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < errno.len() {
        match status.read(&mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if got == 0 {
        return Ok(());
    }
    let errno = i32::from_ne_bytes(errno);
    let e = io::Error::from_raw_os_error(errno);
    // The program was found on the way in, so these are about what it needs to run.
    let hint = match errno {
        libc::ENOENT => " (is its #! interpreter, or its ELF loader, missing?)",
        libc::ENOEXEC => " (not a program this kernel runs, and no #! line)",
        _ => "",
    };
    Err(io::Error::new(e.kind(), format!("{e}{hint}")))
}

fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors, owned from here on.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Starts `cmd` held until the probes are armed, and finds the allocators it will use: the
/// executable that actually runs (for a `#!` script, its interpreter: what the kernel executed)
/// when it defines malloc itself, and the C library this system's loader provides (the one
/// leaktrace maps too).
///
/// A raw fork rather than `Command`: `Command::spawn` waits for the exec to happen, which here
/// waits for us. The child only makes async-signal-safe calls on data prepared before the fork,
/// so it allocates nothing that the probes could mistake for the command's.
///
/// The command dies with leaktrace (PR_SET_PDEATHSIG, SIGKILL): when leaktrace is killed,
/// its probes go with it, and a command left running would be an untraced one nobody asked
/// for. SIGKILL rather than SIGTERM because the death signal is the last word, with nobody left
/// to escalate: a command that catches or ignores SIGTERM (a shell waiting for its children, a
/// server draining) would keep running. (A leaktrace that ends normally sends SIGTERM first,
/// then SIGKILL after 5 s.) The death signal follows the thread that forked, not the process:
/// this must run on the main thread, which lives as long as leaktrace (`trace` runs on a
/// current-thread tokio runtime, in `block_on` on the main thread); it is checked.
pub fn launch(cmd: &[OsString], signals: InheritedSignals) -> Result<Launched> {
    let program = cmd
        .first()
        .ok_or_else(|| Error::Usage("no command to launch".into()))?;
    let command = program.to_string_lossy().into_owned();
    let spawn_err = |source| Error::Spawn {
        command: command.clone(),
        source,
    };
    let resolved = which::which(program).map_err(|e| {
        spawn_err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{e} (give a path or a command on PATH)"),
        ))
    })?;
    let nul = |_| spawn_err(io::Error::other("argument contains a NUL byte"));
    let c_prog = CString::new(resolved.as_os_str().as_bytes()).map_err(nul)?;
    let c_args = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(nul))
        .collect::<Result<Vec<_>>>()?;
    let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    // SAFETY: no preconditions.
    let (me, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    if me != tid {
        return Err(spawn_err(io::Error::other(
            "internal error: launch mode must fork from the main thread (the command's death \
             signal follows the forking thread)",
        )));
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        ..Default::default()
    };
    let ignore = KernelSigaction {
        handler: libc::SIG_IGN,
        ..Default::default()
    };
    let empty_mask = 0u64;
    let (release_rd, release_wr) = pipe().map_err(spawn_err)?;
    let (status_rd, status_wr) = pipe().map_err(spawn_err)?;
    // SAFETY: the child runs only async-signal-safe calls on memory prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(spawn_err(io::Error::last_os_error()));
    }
    if pid == 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: async-signal-safe calls only, on data prepared before the fork.
        unsafe {
            for sig in 1..=NSIG {
                if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                    continue;
                }
                let act = if signals.ignored & (1 << (sig - 1)) != 0 {
                    &ignore
                } else {
                    &default
                };
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    act as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &empty_mask as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            );
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            // Leaktrace died before the death signal was armed: it will never come.
            if libc::getppid() != me {
                libc::_exit(127);
            }
            libc::close(release_wr.as_raw_fd());
            let mut b = 0u8;
            // Returns on EOF, when leaktrace closes its end (or dies).
            while libc::read(release_rd.as_raw_fd(), (&mut b as *mut u8).cast(), 1) < 0 {}
            libc::execv(c_prog.as_ptr(), argv.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(status_wr.as_raw_fd(), (&errno as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    drop((release_rd, status_wr));
    let mut held = Held {
        pid: pid as u32,
        gate: Some(Gate::Pipe(release_wr)),
        exec_status: status_rd,
        command: command.clone(),
    };
    let (libs, comm) = if Held::seize(held.pid) {
        // Let it exec now (closing the pipe), and look at what runs at its exec stop.
        held.gate = Some(Gate::ExecStop);
        held.wait_exec_stop().map_err(spawn_err)?;
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let path = std::fs::read_link(&exe).unwrap_or_else(|_| resolved.clone());
        let mut libs: Vec<AllocatorLib> =
            allocator::inspect_elf(&path, &exe)?.into_iter().collect();
        add_own_libc(&mut libs)?;
        let comm = crate::procinfo::comm(pid as u32).unwrap_or_else(|| basename(&resolved));
        (libs, comm)
    } else {
        eprintln!(
            "leaktrace: warning: cannot ptrace the command ({}): if it exits within milliseconds, \
             its stacks may stay unsymbolized",
            io::Error::last_os_error()
        );
        let mut libs = Vec::new();
        match allocator::inspect_elf(&resolved, &resolved) {
            Ok(lib) => libs.extend(lib),
            Err(AllocatorError::Parse { .. }) => eprintln!(
                "leaktrace: warning: {} is not an ELF executable (a #! script?): without ptrace \
                 the program that runs it cannot be seen before it starts; only the C library's \
                 allocator is probed",
                crate::escape::text(&resolved.to_string_lossy())
            ),
            Err(e) => return Err(e.into()),
        }
        add_own_libc(&mut libs)?;
        (libs, basename(&resolved))
    };
    if libs.is_empty() {
        return Err(Error::NoAllocator {
            pid: held.pid,
            comm,
        });
    }
    Ok(Launched { held, libs, comm })
}

/// The allocators leaktrace itself maps: the C library the command's loader will map too.
fn add_own_libc(libs: &mut Vec<AllocatorLib>) -> Result<()> {
    for lib in allocator::find_allocators(std::process::id())? {
        if !libs.iter().any(|l| l.path == lib.path) {
            libs.push(lib);
        }
    }
    Ok(())
}

/// A process name as the kernel makes it from a path: its last component, 15 bytes at most.
fn basename(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default()
}
