//! leaktrace: an eBPF memory-leak tracer. The binary is a thin shell around this library.

/// Every notice and warning of the library goes to stderr through this, which shadows std's
/// `eprintln!` in every module below (macros are in scope textually). std's panics when stderr
/// cannot be written: with `leaktrace ... 2>&1 | head -1`, stderr is a closed pipe, and the next
/// notice would end the run with a panic (exit 101) instead of its report and exit code. A line
/// that cannot be written has no one to be said to, so it is dropped. (Unit tests keep std's,
/// whose output the test harness captures.)
#[cfg(not(test))]
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// `eprint!` likewise (the status line on a terminal, which may hang up).
#[cfg(not(test))]
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod aggregate;
pub mod allocator;
pub mod audit;
pub mod cli_error;
pub mod config;
pub mod diff;
pub mod error;
pub mod escape;
pub mod intake;
pub mod launch;
pub mod maps;
pub mod mapwatch;
pub mod metrics;
pub mod oom;
pub mod procinfo;
pub mod probes;
pub mod prologue;
pub mod report;
pub mod saved;
#[cfg(test)]
mod fuzz_tests;
pub mod sampling;
pub mod stacks;
pub mod symbolize;
pub mod target;
pub mod trace;
pub mod tpformat;
pub mod trend;
pub mod units;
pub mod session;
pub mod sink;
