//! Where things are in this repository: its root and Cargo's target directory. Owns paths only;
//! running anything is `process`'s job.

use std::{
    env,
    path::{Path, PathBuf},
};

/// The repository root (the workspace directory), found from where xtask was compiled so that
/// `cargo xtask` works from any subdirectory.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (a relative one is taken from the root,
/// where xtask runs cargo), otherwise `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// `path` relative to the root when it is inside it, for shorter messages.
pub fn display(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}
