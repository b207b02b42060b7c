//! `cargo xtask demo`: build leaktrace and the leaking fixture `tests/fixtures/demo.c`, start the
//! fixture, wait for it to say it is ready, trace it by PID for a few seconds and let leaktrace's
//! report reach the terminal. Owns the fixture's lifetime: it is stopped on every path out.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, ExitCode, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::Result;

use crate::{build, process, workspace};

/// How long the fixture may take to print its ready line; it does so before any real work.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(seconds: u64) -> Result<ExitCode> {
    build::run()?;
    let executable = compile()?;
    let demo = Demo::start(&executable)?;
    let pid = demo.wait_ready()?;

    // Older than this at the end of the trace counts as leaked. It must stay below the trace's
    // length, or nothing allocated during the trace could qualify.
    let min_age = (seconds / 2).min(3);
    let leaktrace = build::leaktrace_binary();
    let mut trace = process::command(&leaktrace);
    trace.args(["trace", "-p", &pid.to_string()]).args([
        "--duration".to_owned(),
        format!("{seconds}s"),
        "--min-age".to_owned(),
        format!("{min_age}s"),
    ]);
    let args: Vec<_> = trace.get_args().map(|arg| arg.to_string_lossy()).collect();
    eprintln!(
        "xtask: tracing the demo program by PID: {} {}",
        workspace::display(&leaktrace),
        args.join(" ")
    );
    let exit = process::status("leaktrace", &mut trace)?;
    demo.stop()?;
    if !exit.success() {
        eprintln!("xtask: leaktrace {}", process::describe(exit));
    }
    Ok(process::exit_code(exit))
}

fn compile() -> Result<PathBuf> {
    let step = "compiling the demo program";
    let dir = workspace::target_dir().join("demo");
    fs::create_dir_all(&dir)
        .map_err(|err| process::failed(step, format!("cannot create {}: {err}", dir.display())))?;
    let executable = dir.join("leaky-demo");
    eprintln!("xtask: compiling tests/fixtures/demo.c");
    process::run(
        step,
        process::command("gcc")
            .args(["-g", "-O1", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&executable)
            .arg("tests/fixtures/demo.c"),
    )?;
    Ok(executable)
}

/// The running fixture. Dropping it stops it, so an early return cannot leave it behind.
struct Demo {
    child: Option<Child>,
    ready: mpsc::Receiver<u32>,
}

impl Demo {
    fn start(executable: &Path) -> Result<Self> {
        let step = "starting the demo program";
        let mut child = process::command(executable)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|err| {
                process::failed(step, format!("cannot run {}: {err}", executable.display()))
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (ready_tx, ready) = mpsc::channel();
        thread::spawn(move || watch_stdout(stdout, ready_tx));
        Ok(Self {
            child: Some(child),
            ready,
        })
    }

    /// The PID from the fixture's `ready pid=<PID>` line.
    fn wait_ready(&self) -> Result<u32> {
        self.ready.recv_timeout(READY_TIMEOUT).map_err(|err| {
            let reason = match err {
                mpsc::RecvTimeoutError::Timeout => {
                    format!("no `ready pid=<PID>` line within {READY_TIMEOUT:?}")
                }
                mpsc::RecvTimeoutError::Disconnected => {
                    "it closed its output without printing `ready pid=<PID>`".to_owned()
                }
            };
            process::failed("starting the demo program", reason)
        })
    }

    /// SIGTERM (the fixture exits at once on it), then reap it.
    fn stop(mut self) -> Result<()> {
        let child = self.child.take().expect("stopped once");
        terminate(child).map_err(|err| process::failed("stopping the demo program", err))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // Already failing; a second failure here would only hide the first.
            let _ = terminate(child);
        }
    }
}

/// Reads the fixture's stdout on its own thread, so waiting for the ready line can time out.
/// Sends the PID once; every other line goes to our stderr, where the user can see it.
fn watch_stdout(stdout: ChildStdout, ready: mpsc::Sender<u32>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        match line
            .strip_prefix("ready pid=")
            .map(|pid| pid.trim().parse())
        {
            Some(Ok(pid)) => {
                // The receiver is gone only if xtask already gave up; nothing left to tell.
                let _ = ready.send(pid);
            }
            _ => eprintln!("demo: {line}"),
        }
    }
}

fn terminate(mut child: Child) -> std::io::Result<()> {
    // SAFETY: this is libc's `int kill(pid_t, int)` (std links libc already); it touches no
    // memory of ours, so calling it is safe.
    unsafe extern "C" {
        safe fn kill(pid: i32, signal: i32) -> i32;
    }
    const SIGTERM: i32 = 15;
    // The PID still names our child: it is not reaped (and so not reusable) until `wait` below.
    let pid = i32::try_from(child.id()).expect("Linux PIDs fit in i32");
    if kill(pid, SIGTERM) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    child.wait().map(drop)
}
