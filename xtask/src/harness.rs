//! Running the bench and soak workloads: the churn fixture and a leaktrace tracing it as child
//! processes (killed if left behind), their output read line by line with deadlines, and the
//! figures read about them from /proc. Owns no measurement plan and no table; `bench` and `soak`
//! do.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{process, workspace};

/// How long a child may take to print its ready line (it does so before any measured work), and
/// leaktrace its attach line.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Generous bounds for the measured phases; reaching one means something is broken.
pub(crate) const WORK_TIMEOUT: Duration = Duration::from_secs(600);
/// The tracer's own CPU time must stop moving this long before its memory is read.
pub(crate) const SETTLE: Duration = Duration::from_millis(500);

pub(crate) fn compile_churn() -> Result<PathBuf> {
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

/// The final report, from the SIGINT that asks for it: when the report file was complete, when
/// leaktrace had exited (it detaches its probes first), and leaktrace's CPU time at each.
pub(crate) struct ReportTiming {
    pub(crate) written: Duration,
    pub(crate) written_cpu: Duration,
    pub(crate) exited: Duration,
    pub(crate) exited_cpu: Duration,
}

/// The churn fixture, started and waiting at its ready line. Dropping it kills it.
pub(crate) struct Fixture {
    pub(crate) child: Guard,
    pub(crate) pid: u32,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Lines,
}

impl Fixture {
    pub(crate) fn start(executable: &Path, args: &[String]) -> Result<Self> {
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
    pub(crate) fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().expect("go is sent once, before finish");
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .map_err(|err| process::failed("starting the churn", err))
    }

    pub(crate) fn expect<T>(&self, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T> {
        Ok(self.stdout.expect(what, WORK_TIMEOUT, parse)?.1)
    }

    /// Closes its input (a holding fixture exits on that) and waits for it to exit.
    pub(crate) fn finish(mut self) -> Result<()> {
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
pub(crate) struct Tracer {
    pub(crate) child: Guard,
    pub(crate) stderr: Lines,
    pub(crate) attach: Duration,
    pub(crate) report: PathBuf,
}

impl Tracer {
    pub(crate) fn attach(leaktrace: &Path, pid: u32, flags: &[&str], report: &Path) -> Result<Self> {
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits for leaktrace to exit on its own (its target has exited) and reads its report.
    pub(crate) fn wait_report(mut self) -> Result<Report> {
        let exit = self.child.wait_within(WORK_TIMEOUT)?;
        self.finish(exit)
    }

    /// Sends SIGINT, as Ctrl-C would, and times the final report. Polls every millisecond for
    /// the report file to end in a newline (it is empty until the final report) and for
    /// leaktrace to become a zombie: exited but not reaped, so that its CPU time is still in
    /// /proc.
    pub(crate) fn interrupt(mut self) -> Result<(ReportTiming, Report)> {
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

    pub(crate) fn finish(self, exit: ExitStatus) -> Result<Report> {
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
pub(crate) struct Report {
    pub(crate) lost: Option<u64>,
    /// Events taken in since the start.
    pub(crate) events: Option<u64>,
    /// `processes[0].outstanding_count`.
    pub(crate) outstanding: Option<u64>,
}

impl Report {
    /// xtask has no JSON parser, and needs two numbers: `lost_events` is a top-level key of
    /// leaktrace's report, and the first `outstanding_count` after `"processes":` is the first
    /// process's.
    pub(crate) fn parse(text: &str) -> Self {
        let processes = text.find("\"processes\":").map_or("", |at| &text[at..]);
        Self {
            lost: json_number(text, "lost_events"),
            events: json_number(text, "events"),
            outstanding: json_number(processes, "outstanding_count"),
        }
    }
}

/// The unsigned number after the first `"key":` in `text`.
pub(crate) fn json_number(text: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let rest = text[text.find(&pattern)? + pattern.len()..].trim_start();
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Whether a JSON report file holds a whole document (JSON reports end with a newline).
pub(crate) fn complete(path: &Path) -> bool {
    fs::read(path).is_ok_and(|bytes| bytes.last() == Some(&b'\n'))
}

/// Sends SIGINT to `pid`: leaktrace then writes its final report and exits.
pub(crate) fn send_sigint(pid: u32) -> Result<()> {
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
pub(crate) struct Guard(pub(crate) Child, &'static str);

impl Guard {
    pub(crate) fn spawn(name: &'static str, cmd: &mut std::process::Command) -> Result<Self> {
        cmd.spawn().map(|child| Self(child, name)).map_err(|err| {
            process::failed(
                &format!("starting {name}"),
                format!("cannot run `{}`: {err}", process::show(cmd)),
            )
        })
    }

    pub(crate) fn wait_within(&mut self, timeout: Duration) -> Result<ExitStatus> {
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
pub(crate) struct Lines {
    source: &'static str,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Lines {
    pub(crate) fn read(source: &'static str, output: impl Read + Send + 'static) -> Self {
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
    pub(crate) fn expect<T>(
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
    pub(crate) fn forward_rest(&self) {
        while let Ok((_, line)) = self.lines.try_recv() {
            self.forward(&line);
        }
    }

    pub(crate) fn forward(&self, line: &str) {
        if line.starts_with(&format!("{}:", self.source)) {
            eprintln!("{line}");
        } else {
            eprintln!("{}: {line}", self.source);
        }
    }
}

/// Reading another process's figures from /proc.
pub(crate) mod procfs {
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

    pub(crate) fn read(path: &str) -> Result<String> {
        fs::read_to_string(path)
            .map_err(|err| process::failed("reading /proc", format!("{path}: {err}")))
    }
}
