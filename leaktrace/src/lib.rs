//! leaktrace: an eBPF memory-leak tracer. The binary is a thin shell around this library.
pub mod aggregate;
pub mod allocator;
pub mod config;
pub mod error;
pub mod intake;
pub mod probes;
pub mod prologue;
pub mod report;
pub mod stacks;
pub mod symbolize;
pub mod target;
pub mod trace;
