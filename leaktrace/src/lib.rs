//! leaktrace: an eBPF memory-leak tracer. The binary is a thin shell around this library.
pub mod aggregate;
pub mod allocator;
pub mod audit;
pub mod cli_error;
pub mod config;
pub mod diff;
pub mod error;
pub mod intake;
pub mod metrics;
pub mod oom;
pub mod procinfo;
pub mod probes;
pub mod prologue;
pub mod report;
pub mod saved;
#[cfg(test)]
mod fuzz_tests;
pub mod stacks;
pub mod symbolize;
pub mod target;
pub mod trace;
pub mod tpformat;
pub mod trend;
pub mod units;
pub mod session;
