//! `leaktrace trace`: validate targets, load and attach the probes, then run the event loop that
//! drains the ring buffer into the aggregator and prints reports (on an interval, and a final one
//! on Ctrl-C, SIGTERM, --duration or when every target has exited).
use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep_until},
};

use crate::{
    aggregate::Pid,
    allocator::{self, AllocatorLib},
    config::{Format, Target, TraceConfig},
    error::{Error, Result},
    report::{self, Report},
    probes::Scope,
    session::Session,
    target,
};

/// How often the ring is drained when no wakeup came (the probes wake userspace only when a
/// quarter of the ring is full).
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// A launched command, held before `exec` until the probes are armed.
struct Held {
    pid: u32,
    release: std::fs::File,
}

/// What the launched child did since the last look.
enum ChildState {
    Running,
    /// Stopped at exit with its memory still mapped: snapshot now, then `resume`.
    Exiting,
    Exited,
}

impl Held {
    /// Seizes the child (before it execs) so that it stops at exit before its memory goes: a
    /// command that runs for a few milliseconds can otherwise be gone, maps and all, before the
    /// first drain, and its stacks could not be symbolized. Only the exit is traced.
    fn seize(pid: u32) -> bool {
        // SAFETY: ptrace on our own child; no memory is passed.
        unsafe {
            libc::ptrace(
                libc::PTRACE_SEIZE,
                pid as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                libc::PTRACE_O_TRACEEXIT as usize as *mut libc::c_void,
            ) == 0
        }
    }

    fn poll(pid: u32) -> ChildState {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG | libc::__WALL) };
        if r == 0 {
            return ChildState::Running;
        }
        if r < 0 || libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return ChildState::Exited;
        }
        if libc::WIFSTOPPED(status) && status >> 8 == (libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8)) {
            return ChildState::Exiting;
        }
        // Any other stop is a signal on its way to the child: pass it on (a group-stop's
        // SIGSTOP included; the child then stops as it would untraced).
        let sig = if libc::WIFSTOPPED(status) && status >> 16 == 0 { libc::WSTOPSIG(status) } else { 0 };
        Self::resume(pid, sig);
        ChildState::Running
    }

    fn resume(pid: u32, sig: i32) {
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
}

pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub async fn run(cfg: TraceConfig) -> Result<()> {
    // First, so that a signal sent once we announce the attach ends the trace with a report
    // instead of killing it.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    target::check_environment()?;
    let mut out = Output::open(&cfg)?;
    let metrics = crate::session::start_metrics(cfg.metrics_addr).await?;

    // Targets and their allocators, all checked before anything is loaded.
    let mut plan: Vec<(u32, String, Vec<AllocatorLib>)> = Vec::new();
    let mut held = None;
    match &cfg.target {
        Target::Pids(pids) => {
            for &pid in pids {
                let p = target::check_pid(pid)?;
                let libs = allocator::find_allocators(pid)?;
                if libs.is_empty() {
                    return Err(Error::NoAllocator { pid, comm: p.comm });
                }
                plan.push((pid, p.comm, libs));
            }
        }
        Target::Launch(cmd) => {
            let (h, libs, comm) = launch(cmd)?;
            plan.push((h.pid, comm, libs));
            held = Some(h);
        }
    }

    let mut session = Session::new(cfg.ring_size, cfg.min_age, Scope::Targets, cfg.tuning)?;
    session.probes.attach_tracepoints()?;
    for (pid, comm, libs) in &plan {
        let n = session.track(*pid, comm, libs)?;
        let libs: Vec<_> = libs.iter().map(|l| l.path.display().to_string()).collect();
        eprintln!("leaktrace: tracing pid {pid} ({comm}): {n} probes on {}", libs.join(", "));
    }

    let ring = session.probes.take_ring().ok_or_else(|| Error::Bpf("no ring".into()))?;
    // SAFETY: the ring buffer owns its descriptor and lives inside the AsyncFd until both drop.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| Error::Io(e.into()))?;
    let mut child = None;
    if let Some(Held { pid, release }) = held {
        drop(release); // EOF on the pipe lets the child exec.
        child = Some(pid);
    }

    let mut state = Loop {
        session,
        growth: report::GrowthTracker::default(),
        cfg: &cfg,
        start: Instant::now(),
        status: std::io::stderr().is_terminal(),
        last_events: 0,
    };
    let mut drain_tick = interval(DRAIN_EVERY);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut status_tick = interval(Duration::from_secs(1));
    let mut report_tick = interval(cfg.interval.unwrap_or(FOREVER));
    report_tick.tick().await;
    let deadline = tokio::time::Instant::now() + cfg.duration.unwrap_or(FOREVER);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                state.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                state.drain(ring.get_mut());
                if let Some(pid) = child {
                    match Held::poll(pid) {
                        ChildState::Running => {}
                        ChildState::Exiting => {
                            // Its last stacks are in the ring; its maps are still there.
                            state.drain(ring.get_mut());
                            state.session.sym.track(pid);
                            Held::resume(pid, 0);
                        }
                        ChildState::Exited => {
                            // Its exit event is in the ring before the parent can reap it.
                            state.drain(ring.get_mut());
                            state.session.agg.exit(Pid(pid), now_ns());
                            child = None;
                        }
                    }
                }
            }
            _ = status_tick.tick() => {
                state.session.reap_vanished(now_ns());
                state.status_line();
                if let Some((m, _)) = &metrics {
                    let lost = state.session.counters().lost;
                    m.update(&state.session.metric_samples(now_ns()), lost);
                }
            }
            _ = report_tick.tick() => {
                state.drain(ring.get_mut());
                let r = state.report(false);
                if !state.emit(&r, &mut out)? { return Ok(()); }
            }
            _ = sleep_until(deadline) => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        if state.session.agg.tracked().next().is_none() {
            break;
        }
    }
    state.drain(ring.get_mut());
    if let Some(pid) = child {
        // Leaving before the command ended (--duration, a signal): it is not left running
        // unwatched, as `perf record -- cmd` does not either.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        // Its trace-stops (the SIGTERM itself, then its exit) are let through until it is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Held::poll(pid) {
                ChildState::Exited => break,
                ChildState::Exiting => Held::resume(pid, 0),
                ChildState::Running if Instant::now() > deadline => {
                    // SAFETY: as above; it ignored SIGTERM.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                ChildState::Running => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    let r = state.report(true);
    state.emit(&r, &mut out)?;
    Ok(())
}

/// Long enough to never fire: "no interval", "no duration".
const FOREVER: Duration = Duration::from_secs(3600 * 24 * 365 * 10);

struct Loop<'a> {
    session: Session,
    growth: report::GrowthTracker,
    cfg: &'a TraceConfig,
    start: Instant,
    status: bool,
    last_events: u64,
}

impl Loop<'_> {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        // `trace` attaches no OOM tracepoint, and the session handles execs itself.
        while self.session.drain(ring).is_some() {}
    }

    fn status_line(&mut self) {
        if !self.status {
            return;
        }
        let c = self.session.counters();
        let (count, bytes) = self.session.agg.total_outstanding();
        let rate = self.session.agg.events - self.last_events;
        self.last_events = self.session.agg.events;
        eprint!(
            "\r\x1b[Kleaktrace: {rate} events/s, {count} outstanding ({}), lost {}",
            report::human_bytes(bytes),
            c.lost
        );
    }

    fn report(&mut self, is_final: bool) -> Report {
        let s = &mut self.session;
        let ctx = report::Context {
            stacks: &s.stacks,
            comms: &s.comms,
            counters: s.probes.counters(),
            malformed: s.malformed,
            elapsed: self.start.elapsed(),
            min_age: self.cfg.min_age,
            // A flame graph, folded file or profile holds every stack; --top is for reading.
            top: if matches!(self.cfg.format, Format::Text | Format::Json) {
                self.cfg.top
            } else {
                usize::MAX
            },
            is_final,
            group_by: self.cfg.group_by,
            for_pprof: self.cfg.format == Format::Pprof,
            sample_rate: Some(self.cfg.tuning.sample_rate).filter(|&r| r > 0),
        };
        let mut r = report::build(&mut s.agg, &mut s.sym, &ctx, now_ns());
        if self.cfg.interval.is_some() {
            self.growth.apply(&mut r);
        }
        r
    }

    /// Writes a report; false when the reader went away (`| head`), which ends quietly.
    fn emit(&mut self, r: &Report, out: &mut Output) -> Result<bool> {
        if self.status {
            eprint!("\r\x1b[K");
        }
        match out.write(self.cfg.format, r) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(Error::Output {
                path: self
                    .cfg
                    .output
                    .clone()
                    .unwrap_or_else(|| "standard output".into()),
                source: e,
            }),
        }
    }
}

/// Where reports go. Text, JSON and folded reports are appended; a pprof profile or an SVG is a
/// whole document, so with -o each report replaces the file (atomically).
enum Output {
    Stdout,
    Append(std::io::BufWriter<std::fs::File>),
    Replace(std::path::PathBuf),
}

impl Output {
    fn open(cfg: &TraceConfig) -> Result<Self> {
        let Some(path) = &cfg.output else {
            return Ok(Output::Stdout);
        };
        let err = |source| Error::Output {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::create(path).map_err(err)?;
        Ok(if cfg.format.needs_file() {
            Output::Replace(path.clone())
        } else {
            Output::Append(std::io::BufWriter::new(file))
        })
    }

    fn write(&mut self, format: Format, r: &Report) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut o = std::io::stdout().lock();
                report::render(format, r, &mut o)?;
                o.flush()
            }
            Output::Append(w) => {
                report::render(format, r, w)?;
                w.flush()
            }
            Output::Replace(path) => {
                let tmp = path.with_extension("tmp");
                let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
                report::render(format, r, &mut f)?;
                f.flush()?;
                drop(f);
                std::fs::rename(&tmp, path)
            }
        }
    }
}

/// Starts `cmd` stopped before exec (blocked reading a pipe), so that the probes are armed before
/// its first allocation. The allocator libraries are the ones the command will map: the
/// executable itself when it defines malloc, and the C library this system's loader provides
/// (the one leaktrace maps too).
///
/// A raw fork rather than `Command`: `Command::spawn` waits for the exec to happen, which here
/// waits for us. The child only calls `read`, `execv` and `_exit` on data prepared before the
/// fork, so it allocates nothing that the probes could mistake for the command's.
fn launch(cmd: &[String]) -> Result<(Held, Vec<AllocatorLib>, String)> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let program = &cmd[0];
    let spawn_err = |source| Error::Spawn {
        command: program.clone(),
        source,
    };
    let resolved = which::which(program).map_err(|e| {
        spawn_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{e} (give a path or a command on PATH)"),
        ))
    })?;
    let mut libs: Vec<AllocatorLib> = Vec::new();
    if let Some(lib) = allocator::inspect_elf(&resolved, &resolved)? {
        libs.push(lib);
    }
    for lib in allocator::find_allocators(std::process::id())? {
        if !libs.iter().any(|l| l.path == lib.path) {
            libs.push(lib);
        }
    }
    let comm: String = resolved
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    let nul = |_| spawn_err(std::io::Error::other("argument contains a NUL byte"));
    let c_prog = CString::new(resolved.as_os_str().as_bytes()).map_err(nul)?;
    let c_args = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(nul))
        .collect::<Result<Vec<_>>>()?;
    let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(spawn_err(std::io::Error::last_os_error()));
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: the child runs only async-signal-safe calls on memory prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(spawn_err(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        unsafe {
            libc::close(wr);
            let mut b = 0u8;
            // Returns on EOF, when leaktrace closes its end after attaching (or dies).
            while libc::read(rd, (&mut b as *mut u8).cast(), 1) < 0 {}
            libc::execv(c_prog.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    // SAFETY: rd is our copy of the read end; wr is an open descriptor we own from here on.
    unsafe { libc::close(rd) };
    let release = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(wr) };
    let held = Held {
        pid: pid as u32,
        release,
    };
    if !Held::seize(held.pid) {
        eprintln!(
            "leaktrace: warning: cannot ptrace the command ({}): if it exits within milliseconds, \
             its stacks may stay unsymbolized",
            std::io::Error::last_os_error()
        );
    }
    if libs.is_empty() {
        return Err(Error::NoAllocator { pid: held.pid, comm });
    }
    Ok((held, libs, comm))
}
