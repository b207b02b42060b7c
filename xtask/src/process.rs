//! Running child programs: the `PATH` they see, how a failure is worded, and how an exit status
//! becomes xtask's own exit code. Owns no knowledge of what the programs are for.

use std::{
    env,
    ffi::OsString,
    io,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
    sync::OnceLock,
};

use anyhow::{Result, anyhow};

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`), where rustup's proxies and bpf-linker live.
pub fn cargo_bin_dir() -> PathBuf {
    let cargo_home = env::var_os("CARGO_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    cargo_home.join("bin")
}

/// Our `PATH` with the cargo bin directory moved to the front. First, not merely present: Debian's
/// `/usr/bin/cargo` must not shadow rustup's `cargo` proxy (it does not understand `+stable`),
/// and the bpf-linker that setup checked must be the one rustc finds.
fn child_path() -> &'static OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let first = cargo_bin_dir();
        let rest = env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(first.clone())
            .chain(env::split_paths(&rest).filter(|dir| *dir != first));
        env::join_paths(dirs).unwrap_or(rest)
    })
}

/// A command for `program`, run from the repository root with the `PATH` above.
pub fn command(program: impl Into<OsString>) -> Command {
    let mut cmd = Command::new(program.into());
    cmd.env("PATH", child_path())
        .current_dir(crate::workspace::root());
    cmd
}

/// The cargo that runs xtask (Cargo sets `CARGO` for `cargo run`), so a nested build uses the
/// same toolchain; plain `cargo` otherwise.
pub fn cargo() -> Command {
    command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Run `cmd` to completion with inherited stdio and return its status; only failing to start is
/// an error, attributed to `step`.
pub fn status(step: &str, cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().map_err(|err| {
        failed(
            step,
            format!("cannot run `{}`: {}", show(cmd), start_error(err)),
        )
    })
}

/// Run `cmd` with inherited stdio; a non-zero exit is a failure of `step`.
pub fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let exit = status(step, cmd)?;
    if exit.success() {
        Ok(())
    } else {
        Err(failed(step, format!("`{}` {}", show(cmd), describe(exit))))
    }
}

/// The error for a failed step, worded as main prints it: "<step> failed: <reason>".
pub fn failed(step: &str, reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{step} failed: {reason}")
}

/// The command line, for messages, with the program by name only (`CARGO` is a long path).
pub fn show(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    std::iter::once(program.file_name().unwrap_or(program.as_os_str()))
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// "exited with status 3" or "was killed by signal 9".
pub fn describe(exit: ExitStatus) -> String {
    match (exit.code(), exit.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {exit}"),
    }
}

/// A child's status as our exit code, the way a shell reports it (128 + signal when killed).
pub fn exit_code(exit: ExitStatus) -> ExitCode {
    let code = match (exit.code(), exit.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn start_error(err: io::Error) -> String {
    if err.kind() == io::ErrorKind::NotFound {
        "no such program".to_owned()
    } else {
        err.to_string()
    }
}
