//! The eBPF programs are the binary target; this empty library lets the userspace crate name
//! the package as a build dependency (so Cargo rebuilds it when the programs change).
#![no_std]
