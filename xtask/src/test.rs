//! `cargo xtask test`: set up, build, then run every test in the workspace one at a time. The
//! integration tests attach real probes to the kernel, so running them in parallel would let one
//! test's probes see another's allocations.

use std::process::ExitCode;

use anyhow::Result;

use crate::{build, process};

/// `args` are what followed `--` on our command line: arguments for `cargo test`, then
/// optionally `--` and arguments for the test binaries.
pub fn run(args: &[String]) -> Result<ExitCode> {
    build::run()?;
    let (cargo_args, harness_args) = match args.iter().position(|arg| arg == "--") {
        Some(split) => (&args[..split], &args[split + 1..]),
        None => (args, &[][..]),
    };
    let mut cmd = process::cargo();
    cmd.arg("test");
    // Cargo ignores `-p` next to `--workspace`; a chosen package should narrow the run.
    if !cargo_args.iter().any(|arg| names_package(arg)) {
        cmd.arg("--workspace");
    }
    cmd.arg("--release")
        .args(cargo_args)
        .args(["--", "--test-threads=1"])
        .args(harness_args);
    eprintln!("xtask: running tests: {}", process::show(&cmd));
    let exit = process::status("cargo test", &mut cmd)?;
    if exit.success() {
        eprintln!("xtask: tests passed");
    } else {
        eprintln!(
            "xtask: tests failed: cargo test {}",
            process::describe(exit)
        );
    }
    Ok(process::exit_code(exit))
}

fn names_package(arg: &str) -> bool {
    arg == "--package" || arg.starts_with("--package=") || arg.starts_with("-p")
}

#[cfg(test)]
mod tests {
    use super::names_package;

    #[test]
    fn package_selection_is_recognised_in_every_spelling() {
        for arg in ["-p", "-pleaktrace", "--package", "--package=leaktrace"] {
            assert!(names_package(arg), "{arg}");
        }
        for arg in ["--profile", "leaktrace", "--lib", "-P"] {
            assert!(!names_package(arg), "{arg}");
        }
    }
}
