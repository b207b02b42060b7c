//! The library's error type. Every variant names the thing that failed and, where the user can
//! act, what to do; `exit_code` maps each to the documented exit status.
use std::path::PathBuf;

use thiserror::Error;

use crate::allocator::AllocatorError;

/// Exit status for bad input or an unusable environment (documented in the README).
pub const EXIT_USAGE: i32 = 2;
/// Exit status for a failure while tracing.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("process {pid} does not exist: check the PID with `ps -p {pid}`")]
    NoSuchProcess { pid: u32 },
    #[error("process {pid} ({comm}) is a kernel thread: kernel threads have no user-space heap to trace")]
    KernelThread { pid: u32, comm: String },
    #[error("process {pid} ({comm}) is a zombie (exited, not yet reaped): there is nothing left to trace")]
    Zombie { pid: u32, comm: String },
    #[error("process {pid} is leaktrace itself: pass the PID of the program to trace")]
    SelfTrace { pid: u32 },
    #[error(
        "process {pid} ({comm}) maps no recognizable allocator (no library defining malloc and free): \
         is it statically linked without symbols, or does it use its own allocator?"
    )]
    NoAllocator { pid: u32, comm: String },
    #[error("process {pid} exited while attaching: there is nothing left to trace")]
    ExitedWhileAttaching { pid: u32 },
    #[error("leaktrace must run as root (it loads eBPF programs): run it with sudo")]
    NotRoot,
    #[error("this kernel lacks {what} ({path} is missing): leaktrace needs a kernel with {what}")]
    MissingKernelFeature { what: &'static str, path: PathBuf },
    #[error(transparent)]
    Allocator(#[from] AllocatorError),
    #[error("cannot start `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Output { path: PathBuf, source: std::io::Error },
    #[error("eBPF: {0}")]
    Bpf(String),
    #[error("cannot attach {program} to {target}: {reason}")]
    Attach { program: String, target: String, reason: String },
    #[error("malformed event record: {0}")]
    Decode(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_)
            | Error::NoSuchProcess { .. }
            | Error::KernelThread { .. }
            | Error::Zombie { .. }
            | Error::ExitedWhileAttaching { .. }
            | Error::SelfTrace { .. }
            | Error::NoAllocator { .. }
            | Error::NotRoot
            | Error::MissingKernelFeature { .. }
            | Error::Spawn { .. }
            | Error::Allocator(_)
            | Error::Output { .. } => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
