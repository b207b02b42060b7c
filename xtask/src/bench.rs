//! `cargo xtask bench`: measure leaktrace against the targets of its performance issue, in one run
//! whose every figure is printed. The workload is `tests/fixtures/churn.c`: malloc/free churn on
//! 1 and 2 threads, run untraced, under full tracking, under byte sampling and under the empty
//! probes (the same probes with programs that return at once: the floor), interleaved round by
//! round so that drift on the machine hits every mode alike; medians are reported. Then the fixture
//! holds 2,000,000 and 1,000,000 blocks to measure the tracer's memory and its report.
//!
//! Owns the measurement and its table. Building is `build`'s job, running children `process`'s;
//! the in-process aggregation benchmark is `cargo bench -p leaktrace --bench aggregate`.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ExitCode, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{build, process, workspace};

/// Bytes between samples under `--sample-rate` (the issue's 512 KiB).
const SAMPLE_RATE: &str = "524288";
/// Live blocks each churn thread keeps.
const SLOTS: u64 = 4096;
/// Untraced runs do this many times the pairs of a traced run, so that they too last long
/// enough (about a second) for a steady rate; the working set is the same, so is the rate.
const UNTRACED_SCALE: u64 = 20;
/// Thread counts measured; the machine has 2 cores.
const THREADS: [u64; 2] = [1, 2];
/// How long a child may take to print its ready line (it does so before any measured work), and
/// leaktrace its attach line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Generous bounds for the measured phases; reaching one means something is broken.
const WORK_TIMEOUT: Duration = Duration::from_secs(600);
/// The tracer's own CPU time must stop moving this long before its memory is read.
const SETTLE: Duration = Duration::from_millis(500);

/// How much work one run does.
struct Plan {
    quick: bool,
    rounds: usize,
    ops_per_thread: u64,
    /// Blocks held for the memory measurement, and for the report measurement.
    held_large: u64,
    held_report: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rounds: 1,
                ops_per_thread: 50_000,
                held_large: 200_000,
                held_report: 100_000,
            }
        } else {
            Self {
                quick,
                rounds: 3,
                ops_per_thread: 500_000,
                held_large: 2_000_000,
                held_report: 1_000_000,
            }
        }
    }
}

pub fn run(quick: bool) -> Result<ExitCode> {
    build::run()?;
    let churn = compile_churn()?;
    let leaktrace = build::leaktrace_binary();
    let plan = Plan::new(quick);
    let modes = available_modes(&leaktrace);
    let out_dir = workspace::target_dir().join("bench");
    let bench = Bench {
        churn: &churn,
        leaktrace: &leaktrace,
        report: out_dir.join("report.json"),
    };
    eprintln!(
        "xtask: bench: {} round(s) of {} ops per thread, {} slots per thread; modes: {}",
        plan.rounds,
        plan.ops_per_thread,
        SLOTS,
        modes
            .iter()
            .map(|mode| mode.label())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Other work on this machine distorts every figure: the load is shown with the table.
    let load_before = procfs::load_average();
    let mut churns: BTreeMap<(u64, Mode), Vec<ChurnRun>> = BTreeMap::new();
    for round in 1..=plan.rounds {
        for threads in THREADS {
            for &mode in &modes {
                let run = bench.churn(mode, threads, plan.ops_per_thread)?;
                eprintln!(
                    "xtask: bench: round {round}/{}, {threads} thread(s), {}: {}",
                    plan.rounds,
                    mode.label(),
                    run.describe()
                );
                churns.entry((threads, mode)).or_default().push(run);
            }
        }
    }
    let large = bench.hold(plan.held_large)?;
    let report = bench.hold(plan.held_report)?;

    let table = Table {
        plan: &plan,
        modes: &modes,
        churns: &churns,
        large: &large,
        report: &report,
        load: [load_before, procfs::load_average()],
    };
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

fn compile_churn() -> Result<PathBuf> {
    let step = "compiling the churn fixture";
    let dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&dir)
        .map_err(|err| process::failed(step, format!("cannot create {}: {err}", dir.display())))?;
    let executable = dir.join("churn");
    eprintln!("xtask: bench: compiling tests/fixtures/churn.c");
    process::run(
        step,
        process::command("gcc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&executable)
            .arg("tests/fixtures/churn.c"),
    )?;
    Ok(executable)
}

/// How the churn is observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Untraced,
    Full,
    Sampled,
    /// `--empty-probes`: the probes of full tracking, doing nothing.
    Floor,
    /// `--empty-probes --sample-rate`: the probes of sampling, doing nothing.
    SampledFloor,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Full => "full tracking",
            Mode::Sampled => "sampled",
            Mode::Floor => "empty probes",
            Mode::SampledFloor => "empty probes, sampled",
        }
    }

    /// leaktrace's arguments for this mode, `None` when untraced.
    fn flags(self) -> Option<&'static [&'static str]> {
        match self {
            Mode::Untraced => None,
            Mode::Full => Some(&[]),
            Mode::Sampled => Some(&["--sample-rate", SAMPLE_RATE]),
            Mode::Floor => Some(&["--empty-probes"]),
            Mode::SampledFloor => Some(&["--empty-probes", "--sample-rate", SAMPLE_RATE]),
        }
    }
}

/// The modes this leaktrace build supports: `--empty-probes` is hidden from `--help`, so each
/// mode's flags are tried in front of `--help`, which clap rejects when a flag is unknown.
fn available_modes(leaktrace: &Path) -> Vec<Mode> {
    let all = [
        Mode::Untraced,
        Mode::Full,
        Mode::Sampled,
        Mode::Floor,
        Mode::SampledFloor,
    ];
    all.into_iter()
        .filter(|mode| {
            let flags = mode.flags().unwrap_or_default();
            let known = process::command(leaktrace)
                .arg("trace")
                .args(flags)
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|exit| exit.success());
            if !known {
                eprintln!(
                    "xtask: bench: this leaktrace lacks `{}`; {} is not measured",
                    flags.join(" "),
                    mode.label()
                );
            }
            known
        })
        .collect()
}

/// One churn run's figures.
struct ChurnRun {
    ops_per_s: f64,
    /// Traced runs only: from spawning leaktrace to its "tracing pid" line.
    attach: Option<Duration>,
    lost: Option<u64>,
}

impl ChurnRun {
    fn describe(&self) -> String {
        let mut text = format!("{} ops/s", thousands(self.ops_per_s.round() as u64));
        if let Some(attach) = self.attach {
            text += &format!(", attach {}", millis(attach));
        }
        if let Some(lost) = self.lost {
            text += &format!(", {lost} lost");
        }
        text
    }
}

/// What the held-blocks runs measured.
struct Held {
    blocks: u64,
    outstanding: Option<u64>,
    lost: Option<u64>,
    memory: procfs::Memory,
    maps: MapMemory,
    timing: ReportTiming,
}

impl Held {
    /// What tracing costs in memory: leaktrace's resident memory, except its mapping of the
    /// ring buffer (mapped twice, for wrap-around, so VmRSS counts it twice), plus the kernel
    /// memory of its maps (the ring included, once).
    fn tracer_bytes(&self) -> u64 {
        (self.memory.rss_kib - self.memory.bpf_mapped_kib) * 1024 + self.maps.bytes
    }
}

/// The final report, from the SIGINT that asks for it: when the report file was complete, when
/// leaktrace had exited (it detaches its probes first), and leaktrace's CPU time at each.
struct ReportTiming {
    written: Duration,
    written_cpu: Duration,
    exited: Duration,
    exited_cpu: Duration,
}

struct Bench<'a> {
    churn: &'a Path,
    leaktrace: &'a Path,
    /// Where each traced run's final JSON report goes; read, then overwritten by the next run.
    report: PathBuf,
}

impl Bench<'_> {
    fn churn(&self, mode: Mode, threads: u64, ops: u64) -> Result<ChurnRun> {
        let ops = match mode {
            Mode::Untraced => ops * UNTRACED_SCALE,
            _ => ops,
        };
        let mut fixture = Fixture::start(
            self.churn,
            &[threads.to_string(), ops.to_string(), SLOTS.to_string()],
        )?;
        let tracer = match mode.flags() {
            Some(flags) => Some(Tracer::attach(
                self.leaktrace,
                fixture.pid,
                flags,
                &self.report,
            )?),
            None => None,
        };
        fixture.go()?;
        let ops_per_s = fixture.expect("an `ops_per_s=<N>` line", |line| {
            line.strip_prefix("ops_per_s=")?.parse::<f64>().ok()
        })?;
        fixture.finish()?;
        let (attach, lost) = match tracer {
            // The target has exited: leaktrace writes its final report and exits by itself.
            Some(tracer) => {
                let attach = tracer.attach;
                let report = tracer.wait_report()?;
                (Some(attach), report.lost)
            }
            None => (None, None),
        };
        Ok(ChurnRun {
            ops_per_s,
            attach,
            lost,
        })
    }

    fn hold(&self, blocks: u64) -> Result<Held> {
        eprintln!(
            "xtask: bench: {} blocks held under full tracking",
            thousands(blocks)
        );
        let mut fixture = Fixture::start(self.churn, &["hold".to_owned(), blocks.to_string()])?;
        let tracer = Tracer::attach(self.leaktrace, fixture.pid, &[], &self.report)?;
        fixture.go()?;
        fixture.expect("a `held` line", |line| (line == "held").then_some(()))?;
        let pid = tracer.pid();
        procfs::wait_idle(pid)?;
        let memory = procfs::memory(pid)?;
        let maps = procfs::bpf_map_memory(pid)?;
        let (timing, report) = tracer.interrupt()?;
        fixture.finish()?;
        let held = Held {
            blocks,
            outstanding: report.outstanding,
            lost: report.lost,
            memory,
            maps,
            timing,
        };
        eprintln!(
            "xtask: bench: {} held: {} outstanding, {} lost; leaktrace VmRSS {}, BPF maps {}; \
             report written {} ({} CPU), exit {} ({} CPU) after SIGINT",
            thousands(blocks),
            opt(held.outstanding),
            opt(held.lost),
            mib(held.memory.rss_kib * 1024),
            mib(held.maps.bytes),
            millis(held.timing.written),
            millis(held.timing.written_cpu),
            millis(held.timing.exited),
            millis(held.timing.exited_cpu),
        );
        Ok(held)
    }
}

/// The churn fixture, started and waiting at its ready line. Dropping it kills it.
struct Fixture {
    child: Guard,
    pid: u32,
    stdin: Option<ChildStdin>,
    stdout: Lines,
}

impl Fixture {
    fn start(executable: &Path, args: &[String]) -> Result<Self> {
        let mut cmd = process::command(executable);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Guard::spawn("churn", &mut cmd)?;
        let stdin = child.0.stdin.take();
        let stdout = Lines::read("churn", child.0.stdout.take().expect("stdout is piped"));
        let (_, pid) = stdout.expect("a `ready pid=<PID>` line", START_TIMEOUT, |line| {
            line.strip_prefix("ready pid=")?.parse().ok()
        })?;
        Ok(Self {
            child,
            pid,
            stdin,
            stdout,
        })
    }

    /// Starts the measured work.
    fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().expect("go is sent once, before finish");
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .map_err(|err| process::failed("starting the churn", err))
    }

    fn expect<T>(&self, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T> {
        Ok(self.stdout.expect(what, WORK_TIMEOUT, parse)?.1)
    }

    /// Closes its input (a holding fixture exits on that) and waits for it to exit.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let exit = self.child.wait_within(WORK_TIMEOUT)?;
        self.stdout.forward_rest();
        if exit.success() {
            Ok(())
        } else {
            Err(process::failed("the churn", process::describe(exit)))
        }
    }
}

/// leaktrace tracing one PID, its final report going to a JSON file.
struct Tracer {
    child: Guard,
    stderr: Lines,
    attach: Duration,
    report: PathBuf,
}

impl Tracer {
    fn attach(leaktrace: &Path, pid: u32, flags: &[&str], report: &Path) -> Result<Self> {
        // A stale report must not pass for this run's.
        let _ = fs::remove_file(report);
        let mut cmd = process::command(leaktrace);
        cmd.args(["trace", "-p", &pid.to_string(), "--min-age", "0s"])
            .args(["--format", "json", "-o"])
            .arg(report)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = Guard::spawn("leaktrace", &mut cmd)?;
        let stderr = Lines::read("leaktrace", child.0.stderr.take().expect("stderr is piped"));
        // Stamped by the reader thread when the line arrived, not when we look at it.
        let (attached, ()) = stderr.expect("its `tracing pid` line", START_TIMEOUT, |line| {
            line.starts_with("leaktrace: tracing pid").then_some(())
        })?;
        Ok(Self {
            child,
            stderr,
            attach: attached.duration_since(spawned),
            report: report.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits for leaktrace to exit on its own (its target has exited) and reads its report.
    fn wait_report(mut self) -> Result<Report> {
        let exit = self.child.wait_within(WORK_TIMEOUT)?;
        self.finish(exit)
    }

    /// Sends SIGINT, as Ctrl-C would, and times the final report. Polls every millisecond for
    /// the report file to end in a newline (it is empty until the final report) and for
    /// leaktrace to become a zombie: exited but not reaped, so that its CPU time is still in
    /// /proc.
    fn interrupt(mut self) -> Result<(ReportTiming, Report)> {
        let pid = self.pid();
        let cpu_before = procfs::stat(pid)?.cpu;
        let interrupted = Instant::now();
        send_sigint(pid)?;
        let mut written = None;
        let (exited, stat) = loop {
            let stat = procfs::stat(pid)?;
            if written.is_none() && complete(&self.report) {
                written = Some((interrupted.elapsed(), stat.cpu));
            }
            if stat.state == 'Z' {
                break (interrupted.elapsed(), stat);
            }
            if interrupted.elapsed() > WORK_TIMEOUT {
                return Err(process::failed(
                    "leaktrace's final report",
                    format!("no exit within {WORK_TIMEOUT:?} of SIGINT"),
                ));
            }
            thread::sleep(Duration::from_millis(1));
        };
        // A report written just before the exit can be seen only after it.
        let (written, written_cpu) = written.unwrap_or((exited, stat.cpu));
        let timing = ReportTiming {
            written,
            written_cpu: written_cpu.saturating_sub(cpu_before),
            exited,
            exited_cpu: stat.cpu.saturating_sub(cpu_before),
        };
        let exit = self.child.wait_within(WORK_TIMEOUT)?;
        Ok((timing, self.finish(exit)?))
    }

    fn finish(self, exit: ExitStatus) -> Result<Report> {
        self.stderr.forward_rest();
        if !exit.success() {
            return Err(process::failed("leaktrace", process::describe(exit)));
        }
        let text = fs::read_to_string(&self.report).map_err(|err| {
            process::failed(
                "reading leaktrace's report",
                format!("{}: {err}", self.report.display()),
            )
        })?;
        Ok(Report::parse(&text))
    }
}

/// The figures taken from leaktrace's final JSON report.
struct Report {
    lost: Option<u64>,
    /// `processes[0].outstanding_count`.
    outstanding: Option<u64>,
}

impl Report {
    /// xtask has no JSON parser, and needs two numbers: `lost_events` is a top-level key of
    /// leaktrace's report, and the first `outstanding_count` after `"processes":` is the first
    /// process's.
    fn parse(text: &str) -> Self {
        let processes = text.find("\"processes\":").map_or("", |at| &text[at..]);
        Self {
            lost: json_number(text, "lost_events"),
            outstanding: json_number(processes, "outstanding_count"),
        }
    }
}

/// The unsigned number after the first `"key":` in `text`.
fn json_number(text: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let rest = text[text.find(&pattern)? + pattern.len()..].trim_start();
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Whether a JSON report file holds a whole document (JSON reports end with a newline).
fn complete(path: &Path) -> bool {
    fs::read(path).is_ok_and(|bytes| bytes.last() == Some(&b'\n'))
}

/// Sends SIGINT to `pid`: leaktrace then writes its final report and exits.
fn send_sigint(pid: u32) -> Result<()> {
    // SAFETY: this is libc's `int kill(pid_t, int)` (std links libc already); it touches no
    // memory of ours, so calling it is safe.
    unsafe extern "C" {
        safe fn kill(pid: i32, signal: i32) -> i32;
    }
    const SIGINT: i32 = 2;
    // The PID names our unreaped child, so it cannot have been reused.
    let pid = i32::try_from(pid).expect("Linux PIDs fit in i32");
    if kill(pid, SIGINT) == 0 {
        Ok(())
    } else {
        Err(process::failed(
            "interrupting leaktrace",
            std::io::Error::last_os_error(),
        ))
    }
}

/// A child process that is killed (SIGKILL) and reaped if it is still running when dropped, so
/// that no early return leaves a fixture or a tracer behind.
struct Guard(Child, &'static str);

impl Guard {
    fn spawn(name: &'static str, cmd: &mut std::process::Command) -> Result<Self> {
        cmd.spawn().map(|child| Self(child, name)).map_err(|err| {
            process::failed(
                &format!("starting {name}"),
                format!("cannot run `{}`: {err}", process::show(cmd)),
            )
        })
    }

    fn wait_within(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self
                .0
                .try_wait()
                .map_err(|err| process::failed(&format!("waiting for {}", self.1), err))?;
            if let Some(exit) = done {
                return Ok(exit);
            }
            if Instant::now() > deadline {
                return Err(process::failed(
                    &format!("waiting for {}", self.1),
                    format!("still running after {timeout:?}"),
                ));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // Already failing; a second failure here would only hide the first.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A child's output read line by line on its own thread, each line stamped when it arrived, so
/// that waiting for a line can time out and the stamp is not delayed by the waiter.
struct Lines {
    source: &'static str,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Lines {
    fn read(source: &'static str, output: impl Read + Send + 'static) -> Self {
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Self { source, lines }
    }

    /// The first line `parse` accepts, and when it arrived; lines before it go to our stderr.
    fn expect<T>(
        &self,
        what: &str,
        timeout: Duration,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<(Instant, T)> {
        let step = format!("waiting for {}", self.source);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self.lines.recv_timeout(left).map_err(|err| {
                let reason = match err {
                    mpsc::RecvTimeoutError::Timeout => format!("no {what} within {timeout:?}"),
                    mpsc::RecvTimeoutError::Disconnected => {
                        format!("it closed its output without printing {what}")
                    }
                };
                process::failed(&step, reason)
            })?;
            match parse(&line) {
                Some(value) => return Ok((at, value)),
                None => self.forward(&line),
            }
        }
    }

    /// Passes on what the child printed after the lines we waited for (it has exited).
    fn forward_rest(&self) {
        while let Ok((_, line)) = self.lines.try_recv() {
            self.forward(&line);
        }
    }

    fn forward(&self, line: &str) {
        if line.starts_with(&format!("{}:", self.source)) {
            eprintln!("{line}");
        } else {
            eprintln!("{}: {line}", self.source);
        }
    }
}

/// Reading another process's figures from /proc.
mod procfs {
    use std::{fs, thread, time::Duration, time::Instant};

    use anyhow::Result;

    use super::SETTLE;
    use crate::process;

    /// Clock ticks per second of /proc's CPU times: USER_HZ, 100 on x86-64 (a fixed ABI).
    const TICKS_PER_SECOND: u64 = 100;

    pub struct Stat {
        pub state: char,
        /// User plus system time of the whole process, in 10 ms steps.
        pub cpu: Duration,
    }

    /// `/proc/PID/stat`; still readable while the process is a zombie.
    pub fn stat(pid: u32) -> Result<Stat> {
        let path = format!("/proc/{pid}/stat");
        let text = read(&path)?;
        // "pid (comm) state ppid ..."; comm may hold spaces and parentheses, the last ')' ends it.
        let fields: Vec<&str> = text
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).copied();
        // Fields 3 (state), 14 (utime) and 15 (stime) in proc(5)'s numbering.
        let state = field(0).and_then(|s| s.chars().next());
        let ticks = field(11)
            .zip(field(12))
            .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?));
        match (state, ticks) {
            (Some(state), Some(ticks)) => Ok(Stat {
                state,
                cpu: Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND),
            }),
            _ => Err(process::failed(
                "reading leaktrace's CPU time",
                format!("{path}: unexpected contents"),
            )),
        }
    }

    pub struct Memory {
        pub rss_kib: u64,
        pub peak_rss_kib: u64,
        /// The part of VmRSS that is BPF maps mapped into the process (the ring buffer).
        pub bpf_mapped_kib: u64,
    }

    /// VmRSS and VmHWM from `/proc/PID/status`, and the resident size of its BPF map mappings
    /// from `/proc/PID/smaps`.
    pub fn memory(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let text = read(&path)?;
        let kib = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| {
                    process::failed("reading leaktrace's RSS", format!("{path}: no {key}"))
                })
        };
        let smaps = read(&format!("/proc/{pid}/smaps"))?;
        // A mapping's header ("start-end perms offset dev inode [path]") is followed by
        // "Key: value kB" lines; keys end with ':', headers' first fields do not.
        let mut in_map = false;
        let mut bpf_mapped_kib = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if !first.ends_with(':') {
                in_map = line.ends_with("anon_inode:bpf-map");
            } else if in_map && first == "Rss:" {
                bpf_mapped_kib += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(Memory {
            rss_kib: kib("VmRSS:")?,
            peak_rss_kib: kib("VmHWM:")?,
            bpf_mapped_kib,
        })
    }

    pub struct MapMemory {
        pub bytes: u64,
        pub maps: usize,
    }

    /// The kernel memory of the BPF maps `pid` holds open: the `memlock` of each distinct map
    /// (by `map_id`) among its file descriptors.
    pub fn bpf_map_memory(pid: u32) -> Result<MapMemory> {
        let dir = format!("/proc/{pid}/fd");
        let entries = fs::read_dir(&dir)
            .map_err(|err| process::failed("listing leaktrace's files", format!("{dir}: {err}")))?;
        let mut seen = std::collections::BTreeMap::new();
        for entry in entries.flatten() {
            let is_map = fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-map");
            if !is_map {
                continue;
            }
            let fd = entry.file_name();
            // The descriptor may close between the listing and this read: skip it then.
            let Ok(info) =
                fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
            else {
                continue;
            };
            let value = |key: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let (Some(id), Some(memlock)) = (value("map_id:"), value("memlock:")) {
                seen.insert(id, memlock);
            }
        }
        Ok(MapMemory {
            bytes: seen.values().sum(),
            maps: seen.len(),
        })
    }

    /// Returns once `pid` has used no CPU for [`SETTLE`]: it has drained what was sent to it.
    pub fn wait_idle(pid: u32) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = stat(pid)?.cpu;
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < SETTLE && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            let now = stat(pid)?.cpu;
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        Ok(())
    }

    /// The 1-minute load average, from `/proc/loadavg`.
    pub fn load_average() -> Option<f64> {
        fs::read_to_string("/proc/loadavg")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn read(path: &str) -> Result<String> {
        fs::read_to_string(path)
            .map_err(|err| process::failed("reading /proc", format!("{path}: {err}")))
    }
}

use procfs::MapMemory;

/// The printed result: one table of churn figures, one of held-block figures, each figure next
/// to its target and an honest verdict.
struct Table<'a> {
    plan: &'a Plan,
    modes: &'a [Mode],
    churns: &'a BTreeMap<(u64, Mode), Vec<ChurnRun>>,
    large: &'a Held,
    report: &'a Held,
    /// The 1-minute load average before and after the measurements.
    load: [Option<f64>; 2],
}

/// The issue's targets.
const MAX_FLOOR_RATIO: f64 = 1.2;
const MAX_ATTACH: Duration = Duration::from_millis(50);
const MAX_TRACER_MEMORY: u64 = 100 << 20;
const MAX_REPORT_CPU: Duration = Duration::from_millis(100);

impl Table<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        let title = if self.plan.quick {
            "leaktrace bench (--quick: a smoke test; sizes below the targets' are marked n/a)"
        } else {
            "leaktrace bench"
        };
        out += &format!(
            "\n{title}: churn of {} malloc/free pairs per thread over {SLOTS} live 16-4096 B \
             blocks ({UNTRACED_SCALE}x that untraced), median of {} interleaved round(s); ",
            thousands(self.plan.ops_per_thread),
            self.plan.rounds
        );
        let [before, after] = self
            .load
            .map(|load| load.map_or("?".to_owned(), |l| format!("{l:.2}")));
        out += &format!("1-minute load average {before} before, {after} after\n\n");
        out += "| figure | 1 thread | 2 threads | target | verdict |\n";
        out += "|---|---|---|---|---|\n";
        self.row(
            &mut out,
            "untraced ops/s",
            |t| {
                self.ops(t, Mode::Untraced)
                    .map(|v| thousands(v.round() as u64))
            },
            "",
            |_| None,
        );
        for mode in [Mode::Full, Mode::Sampled, Mode::Floor, Mode::SampledFloor] {
            self.row(
                &mut out,
                &format!("slowdown, {}", mode.label()),
                |t| self.slowdown(t, mode).map(ratio),
                "",
                |_| None,
            );
        }
        for (mode, floor, name) in [
            (Mode::Full, Mode::Floor, "full tracking / floor"),
            (Mode::Sampled, Mode::SampledFloor, "sampled / its floor"),
        ] {
            let over = |t| Some(self.ops(t, floor)? / self.ops(t, mode)?);
            self.row(
                &mut out,
                name,
                |t| over(t).map(ratio),
                &format!("<= {MAX_FLOOR_RATIO}x"),
                |t| over(t).map(|r| r <= MAX_FLOOR_RATIO),
            );
        }
        let attach = |t| {
            let runs = self.churns.get(&(t, Mode::Full))?;
            median(
                runs.iter()
                    .filter_map(|run| run.attach)
                    .map(|d| d.as_secs_f64()),
            )
            .map(Duration::from_secs_f64)
        };
        self.row(
            &mut out,
            "attach to a running PID (full tracking, median)",
            |t| attach(t).map(millis),
            &format!("<= {}", millis(MAX_ATTACH)),
            |t| attach(t).map(|d| d <= MAX_ATTACH),
        );
        for &mode in self.modes.iter().filter(|&&m| m != Mode::Untraced) {
            let lost = |t| -> Option<Vec<u64>> {
                self.churns
                    .get(&(t, mode))?
                    .iter()
                    .map(|run| run.lost)
                    .collect()
            };
            self.row(
                &mut out,
                &format!("lost events, {} (each run)", mode.label()),
                |t| lost(t).map(|l| l.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ")),
                "0 at 2 threads",
                |t| {
                    (t == 2)
                        .then(|| lost(t).map(|l| l.iter().all(|&n| n == 0)))
                        .flatten()
                },
            );
        }

        let (large, report) = (self.large, self.report);
        let full_size = !self.plan.quick;
        out += "\n| figure | measured | target | verdict |\n|---|---|---|---|\n";
        let exact = large.outstanding == Some(large.blocks);
        out += &format!(
            "| outstanding_count with {} blocks held | {} ({}), {} lost | exactly {} | {} |\n",
            thousands(large.blocks),
            opt(large.outstanding.map(thousands)),
            match large.outstanding {
                Some(n) => format!("{:+}", n as i128 - large.blocks as i128),
                None => "no report".to_owned(),
            },
            opt(large.lost),
            thousands(large.blocks),
            verdict(full_size.then_some(exact)),
        );
        let memory = large.tracer_bytes();
        out += &format!(
            "| leaktrace memory at {} held: RSS + BPF maps | {} | <= {} | {} |\n",
            thousands(large.blocks),
            mib(memory),
            mib(MAX_TRACER_MEMORY),
            verdict(full_size.then_some(memory <= MAX_TRACER_MEMORY)),
        );
        out += &format!(
            "| ... of which VmRSS (peak VmHWM), less the ring mapped in it | {} ({}), less {} | | |\n",
            mib(large.memory.rss_kib * 1024),
            mib(large.memory.peak_rss_kib * 1024),
            mib(large.memory.bpf_mapped_kib * 1024),
        );
        out += &format!(
            "| ... of which BPF maps (memlock, {} maps) | {} | | |\n",
            large.maps.maps,
            mib(large.maps.bytes),
        );
        // The target is the report at the smaller size; the larger is shown for scale.
        let report_met = full_size.then_some(report.timing.written_cpu <= MAX_REPORT_CPU);
        let report_target = format!("<= {} CPU", millis(MAX_REPORT_CPU));
        report_rows(&mut out, report, &report_target, verdict(report_met));
        report_rows(&mut out, large, "", "");
        out
    }

    /// One churn row: a cell per thread count, and the verdict of every measured cell.
    fn row(
        &self,
        out: &mut String,
        name: &str,
        cell: impl Fn(u64) -> Option<String>,
        target: &str,
        meets: impl Fn(u64) -> Option<bool>,
    ) {
        let cells: Vec<String> = THREADS
            .iter()
            .map(|&t| cell(t).unwrap_or_else(|| "not measured".to_owned()))
            .collect();
        let verdicts: Vec<(u64, bool)> = THREADS
            .iter()
            .filter_map(|&t| Some((t, meets(t)?)))
            .collect();
        let verdict = match verdicts.as_slice() {
            [] if target.is_empty() => String::new(),
            [] => "not measured".to_owned(),
            all if all.iter().all(|&(_, ok)| ok) => "met".to_owned(),
            all if all.iter().all(|&(_, ok)| !ok) => "missed".to_owned(),
            mixed => mixed
                .iter()
                .map(|&(t, ok)| format!("{t}T {}", if ok { "met" } else { "missed" }))
                .collect::<Vec<_>>()
                .join(", "),
        };
        *out += &format!(
            "| {name} | {} | {} | {target} | {verdict} |\n",
            cells[0], cells[1]
        );
    }

    fn ops(&self, threads: u64, mode: Mode) -> Option<f64> {
        median(
            self.churns
                .get(&(threads, mode))?
                .iter()
                .map(|run| run.ops_per_s),
        )
    }

    fn slowdown(&self, threads: u64, mode: Mode) -> Option<f64> {
        Some(self.ops(threads, Mode::Untraced)? / self.ops(threads, mode)?)
    }
}

/// The final report's timing rows for one held-blocks run.
fn report_rows(out: &mut String, held: &Held, target: &str, verdict: &str) {
    let (t, n) = (&held.timing, thousands(held.blocks));
    *out += &format!(
        "| final report at {n} held: SIGINT to report written, leaktrace CPU (wall) \
         | {} ({}) | {target} | {verdict} |\n",
        millis(t.written_cpu),
        millis(t.written),
    );
    *out += &format!(
        "| final report at {n} held: SIGINT to exit, leaktrace CPU (wall) | {} ({}) | | |\n",
        millis(t.exited_cpu),
        millis(t.exited),
    );
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "n/a (quick)",
    }
}

fn ratio(value: f64) -> String {
    format!("{value:.2}x")
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn opt(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// 1234567 as "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_in_leaktrace_json() {
        let doc = r#"{"report":"final","processes":[{"pid":7,"outstanding_count":2000003,"x":1}],"lost_events":0,"outstanding_count":9}"#;
        let report = Report::parse(doc);
        assert_eq!(report.outstanding, Some(2_000_003));
        assert_eq!(report.lost, Some(0));
        assert_eq!(json_number(doc, "missing"), None);
    }

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
