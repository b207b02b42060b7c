//! `leaktrace trace`: validate targets, load and attach the probes, then run the event loop that
//! drains the ring buffer into the aggregator and prints reports (on an interval, and a final one
//! on Ctrl-C, SIGTERM, --duration or when every target has exited).
use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep_until},
};

use crate::{
    aggregate::Pid,
    allocator::{self, AllocatorLib},
    launch::{self, ChildState, Held},
    config::{Format, Target, TraceConfig},
    error::{Error, Result},
    report::{self, Report},
    probes::Scope,
    session::Session,
    sink::{Delivery, Mode, Sink},
    target,
};

/// How often the ring is drained when no wakeup came (the probes wake userspace only when a
/// quarter of the ring is full).
const DRAIN_EVERY: Duration = Duration::from_millis(10);

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
    // Before our own handlers replace them: the ignores a launched command inherits.
    let inherited = launch::InheritedSignals::capture();
    // First, so that a signal sent once we announce the attach ends the trace with a report
    // instead of killing it.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    target::check_environment()?;
    // A pprof profile or an SVG is a whole document: each report replaces the file.
    let mode = if cfg.format.needs_file() { Mode::Replace } else { Mode::Append };
    let mut out = Sink::to(cfg.output.as_deref(), mode)?;
    let metrics = crate::session::start_metrics(cfg.metrics_addr).await?;

    // Targets and their allocators, all checked before anything is loaded.
    let mut plan: Vec<(u32, String, Vec<AllocatorLib>)> = Vec::new();
    let mut held = None;
    match &cfg.target {
        Target::Pids(pids) => {
            for p in target::resolve_pids(pids, cfg.max_targets, "-p")? {
                let libs = allocator::find_allocators(p.pid).map_err(|e| attach_error(p.pid, e.into()))?;
                if libs.is_empty() {
                    return Err(Error::NoAllocator { pid: p.pid, comm: p.comm });
                }
                plan.push((p.pid, p.comm, libs));
            }
        }
        Target::Launch(cmd) => {
            let l = launch::launch(cmd, inherited)?;
            plan.push((l.held.pid, l.comm, l.libs));
            held = Some(l.held);
        }
    }

    let mut session = Session::new(cfg.ring_size, cfg.min_age, Scope::Targets, cfg.tuning)?;
    session.probes.attach_tracepoints()?;
    // Between targets, a pending SIGINT/SIGTERM stops the attaching: with many targets it takes
    // seconds, and the signal must not wait for it. What is attached is then reported.
    let mut interrupted = false;
    for (pid, comm, libs) in &plan {
        if signalled(&mut sigint, &mut sigterm).await {
            interrupted = true;
            break;
        }
        let n = session.track(*pid, comm, libs).map_err(|e| attach_error(*pid, e))?;
        let libs: Vec<_> = libs.iter().map(|l| l.path.display().to_string()).collect();
        let libs: Vec<_> = libs.iter().map(|l| crate::escape::text(l)).collect();
        eprintln!(
            "leaktrace: tracing pid {pid} ({}): {n} probes on {}",
            crate::escape::text(comm),
            libs.join(", ")
        );
    }

    let ring = session.probes.take_ring().ok_or_else(|| Error::Bpf("no ring".into()))?;
    // SAFETY: the ring buffer owns its descriptor and lives inside the AsyncFd until both drop.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| Error::Io(e.into()))?;
    let mut child = None;
    if let Some(h) = held {
        child = Some(h.release()?);
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
        // Interrupted while attaching: straight to the final report.
        if interrupted {
            break;
        }
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

/// Whether SIGINT or SIGTERM is pending, without waiting: yielding lets the runtime take in the
/// signals that arrived meanwhile (its driver runs before a yielded task is polled again).
pub async fn signalled(sigint: &mut Signal, sigterm: &mut Signal) -> bool {
    tokio::select! {
        biased;
        _ = sigint.recv() => true,
        _ = sigterm.recv() => true,
        _ = tokio::task::yield_now() => false,
    }
}

/// An attach (or the reading of the maps before it) that failed because the target exited
/// meanwhile is said so: aya's own error names the scope and a library path that is gone too.
pub fn attach_error(pid: u32, e: Error) -> Error {
    match e {
        Error::Attach { .. } | Error::Bpf(_) | Error::Allocator(_) if target::has_exited(pid) => {
            Error::ExitedWhileAttaching { pid }
        }
        e => e,
    }
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
    fn emit(&mut self, r: &Report, out: &mut Sink) -> Result<bool> {
        if self.status {
            eprint!("\r\x1b[K");
        }
        let format = self.cfg.format;
        Ok(out.emit(|buf| report::render(format, r, buf))? == Delivery::Written)
    }
}
