//! Developer commands for leaktrace, run as `cargo xtask <command>`: prepare a machine, build,
//! run a demonstration trace, run the tests. Each command lives in its own module; this file
//! only parses the command line and turns the outcome into an exit code.

mod bench;
mod build;
mod demo;
mod harness;
mod process;
mod setup;
mod soak;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Developer commands for leaktrace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks to build and run leaktrace (needs root; idempotent).
    Setup,
    /// Set up, then build the release leaktrace binary (which builds the eBPF object).
    Build,
    /// Build, then trace a small leaking C program and print leaktrace's report.
    Demo {
        /// How long to trace, in seconds (at least 2). Allocations still live and older than
        /// half of that, at most 3 s, are reported.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..))]
        seconds: u64,
    },
    /// Build, then measure leaktrace's overhead, attach time, memory and report time against
    /// the targets, on the churn fixture (a few minutes; `--quick` for a smoke test).
    Bench {
        /// Fewer rounds and smaller sizes: checks that the benchmark runs, measures little.
        #[arg(long)]
        quick: bool,
    },
    /// Build, then trace the churn fixture for a long while (10 minutes by default) and check that
    /// leaktrace's memory stays flat and that no event is lost. Not run in CI.
    Soak {
        /// How long to trace, in minutes (at least 3: the first two are the warm-up).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..))]
        minutes: u64,
    },
    /// Build, then run the whole workspace's tests serially (they attach real probes).
    ///
    /// Arguments after `--` go to `cargo test`; a second `--` separates arguments for the
    /// test binaries, e.g. `cargo xtask test -- -p leaktrace -- --nocapture`.
    Test {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Build => build::run().map(|()| ExitCode::SUCCESS),
        Command::Demo { seconds } => demo::run(seconds),
        Command::Bench { quick } => bench::run(quick),
        Command::Soak { minutes } => soak::run(minutes),
        Command::Test { args } => test::run(&args),
    };
    outcome.unwrap_or_else(|err| {
        // Every error is built as "<step> failed: <reason>".
        eprintln!("xtask: {err:#}");
        ExitCode::FAILURE
    })
}
