//! `cargo xtask build`: set up, then build the release `leaktrace` binary. The eBPF object is
//! not built here: leaktrace's own build script does that (aya-build), with bpf-linker found
//! through the `PATH` that `process` hands down.

use std::path::PathBuf;

use anyhow::Result;

use crate::{process, setup, workspace};

pub fn run() -> Result<()> {
    setup::run()?;
    eprintln!("xtask: building leaktrace (release)");
    process::run(
        "cargo build",
        process::cargo().args(["build", "--release", "-p", "leaktrace"]),
    )?;
    eprintln!("xtask: built {}", workspace::display(&leaktrace_binary()));
    Ok(())
}

/// Where `run` leaves the binary.
pub fn leaktrace_binary() -> PathBuf {
    workspace::target_dir().join("release").join("leaktrace")
}
